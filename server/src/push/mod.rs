//! The push worker: sends queued notifications to a push gateway that speaks the Matrix Push
//! Gateway API (`POST /_matrix/push/v1/notify`), such as Sygnal, which reaches APNs and FCM.
//!
//! It runs on its own thread with a plain tokio runtime and an HTTP client (reqwest over rustls
//! with the ring provider), away from the core threads. It takes due jobs from `push_outbox` in
//! order, reads what to say at that moment (the user's newest message and its conversation's
//! unread count), and posts one notification naming every device of the user that has a pushkey.
//! A failed post is retried with exponential back-off until the job is older than the maximum age;
//! pushkeys the gateway lists as `rejected` are reported to the user's core, which removes them.
//! Bodies are left out unless `push_include_preview` is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::config::Config;
use crate::core::mail::Mail;
use crate::metrics::Metrics;
use crate::runtime::mailbox::Mailboxes;
use crate::store::records::{PushJobRecord, UpdateRecord};
use crate::store::{Store, StoreError};

/// Jobs taken from the outbox per round.
const JOBS_PER_ROUND_MAX: usize = 64;
/// How often the worker looks for due jobs when it found none.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// First retry delay; it doubles per failure.
const RETRY_BASE_MS: u64 = 500;
/// Longest retry delay.
const RETRY_MAX_MS: u64 = 60_000;
/// Recent log entries searched for the message a notification is about.
const RECENT_UPDATES_MAX: u64 = 32;

/// A running push worker.
pub(crate) struct PushWorker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl PushWorker {
    /// Starts the worker thread when a gateway is configured.
    pub(crate) fn start(
        config: Arc<Config>,
        store: Store,
        mailboxes: Mailboxes,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<PushWorker>> {
        let Some(url) = config.push_gateway_url.clone() else {
            return Ok(None);
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ternd-push".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the push worker");
                        return;
                    }
                };
                let worker = Worker {
                    config,
                    store,
                    mailboxes,
                    url,
                    stop: flag,
                    metrics,
                };
                runtime.block_on(worker.run());
            })?;
        Ok(Some(PushWorker { stop, thread }))
    }

    /// Stops the worker after the post in progress.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

struct Worker {
    config: Arc<Config>,
    store: Store,
    mailboxes: Mailboxes,
    url: String,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a post to the gateway came to.
enum Outcome {
    Delivered { rejected: Vec<String> },
    Failed(String),
}

impl Worker {
    async fn run(self) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_millis(self.config.push_timeout_ms))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the push gateway client");
                return;
            }
        };
        tracing::info!(url = %self.url, "push worker started");
        while !self.stop.load(Ordering::Acquire) {
            match self.round(&client).await {
                Ok(0) => tokio::time::sleep(IDLE_POLL).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "push worker storage error");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }

    /// Sends every due job once; returns how many it handled.
    async fn round(&self, client: &reqwest::Client) -> Result<usize, StoreError> {
        let now = now_ms();
        let jobs = self.store.due_push_jobs(now, JOBS_PER_ROUND_MAX)?;
        for &((due, user_id), job) in &jobs {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            self.handle_job(client, due, user_id, job).await?;
        }
        Ok(jobs.len())
    }

    async fn handle_job(
        &self,
        client: &reqwest::Client,
        due: u64,
        user_id: u64,
        job: PushJobRecord,
    ) -> Result<(), StoreError> {
        let read_at = now_ms();
        let body = self.notification(user_id)?;
        let mut batch = self.store.batch();
        batch.delete_push_job(due, user_id);
        let Some(body) = body else {
            // No device with a pushkey, or nothing to say.
            self.store.commit(batch)?;
            self.mail(
                user_id,
                Mail::PushDone {
                    user_id,
                    read_at_ms: read_at,
                },
            );
            return Ok(());
        };
        match self.post(client, &body).await {
            Outcome::Delivered { rejected } => {
                self.metrics.push.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(user_id, "push sent");
                self.store.commit(batch)?;
                for pushkey in rejected {
                    self.metrics.push.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(user_id, "push gateway rejected a pushkey");
                    self.mail(user_id, Mail::PushRejected { user_id, pushkey });
                }
                self.mail(
                    user_id,
                    Mail::PushDone {
                        user_id,
                        read_at_ms: read_at,
                    },
                );
            }
            Outcome::Failed(why) => {
                self.metrics.push.failed.fetch_add(1, Ordering::Relaxed);
                let now = now_ms();
                if now.saturating_sub(job.queued_at) > self.config.push_max_age_ms {
                    self.metrics.push.expired.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(user_id, %why, "push dropped after the maximum age");
                    self.store.commit(batch)?;
                    self.mail(
                        user_id,
                        Mail::PushDone {
                            user_id,
                            read_at_ms: read_at,
                        },
                    );
                } else {
                    let attempts = job.attempts.saturating_add(1);
                    let delay = RETRY_BASE_MS
                        .saturating_mul(1 << attempts.min(16))
                        .min(RETRY_MAX_MS);
                    tracing::warn!(user_id, attempts, delay_ms = delay, %why, "push failed; retrying");
                    batch.put_push_job(now + delay, &PushJobRecord { attempts, ..job })?;
                    self.store.commit(batch)?;
                }
            }
        }
        Ok(())
    }

    /// The notification to post for a user, or `None` when no device of theirs has a pushkey.
    fn notification(&self, user_id: u64) -> Result<Option<serde_json::Value>, StoreError> {
        let devices: Vec<serde_json::Value> = self
            .store
            .devices(user_id)?
            .into_iter()
            .filter(|(_, d)| !d.revoked)
            .filter_map(|(_, d)| d.push)
            .map(|p| json!({ "app_id": p.app_id, "pushkey": p.pushkey, "data": {} }))
            .collect();
        if devices.is_empty() {
            return Ok(None);
        }
        let head = self.store.last_user_seq(user_id)?;
        let recent = self.store.updates_after(
            user_id,
            head.saturating_sub(RECENT_UPDATES_MAX),
            RECENT_UPDATES_MAX as usize,
        )?;
        let newest = recent.iter().rev().find_map(|(_, u)| match *u {
            UpdateRecord::Message {
                conversation_id,
                seq,
                sender,
            } if sender != user_id => Some((conversation_id, seq, sender)),
            _ => None,
        });
        let Some((conversation_id, seq, sender)) = newest else {
            return Ok(None);
        };
        let Some(message) = self.store.message(conversation_id, seq)? else {
            return Ok(None);
        };
        let sender_name = self
            .store
            .user(sender)?
            .map(|u| u.username)
            .unwrap_or_default();
        let room_name = self
            .store
            .conversation(conversation_id)?
            .map(|c| c.name)
            .unwrap_or_default();
        let read = self.store.receipt(conversation_id, user_id)?.read_seq;
        let unread = self.store.last_seq(conversation_id)?.saturating_sub(read);
        let mut notification = json!({
            "event_id": message.message_id.to_string(),
            "room_id": conversation_id.to_string(),
            "type": "m.room.message",
            "sender": sender_name,
            "prio": "high",
            "counts": { "unread": unread },
            "devices": devices,
        });
        if !room_name.is_empty() {
            notification["room_name"] = json!(room_name);
        }
        // Never a word of an encrypted conversation, whatever the setting (spec §19.7).
        let encrypted = self.store.conversation_encrypted(conversation_id)?;
        if encrypted {
            notification["type"] = json!("m.room.encrypted");
        }
        if self.config.push_include_preview && !encrypted {
            let preview: String = message.body.chars().take(200).collect();
            notification["content"] = json!({ "msgtype": "m.text", "body": preview });
        }
        Ok(Some(json!({ "notification": notification })))
    }

    async fn post(&self, client: &reqwest::Client, body: &serde_json::Value) -> Outcome {
        let bytes = match serde_json::to_vec(body) {
            Ok(bytes) => bytes,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let response = client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if !response.status().is_success() {
            return Outcome::Failed(format!("gateway answered {}", response.status()));
        }
        let answer: serde_json::Value =
            match response.bytes().await.map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(v)) => v,
                Ok(Err(_)) => serde_json::Value::Null,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
        let rejected = answer["rejected"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Outcome::Delivered { rejected }
    }

    /// Sends mail to the user's owner core, waiting briefly while its mailbox is full.
    fn mail(&self, user_id: u64, mail: Mail) {
        let core = crate::core::owner(user_id, self.config.cores);
        let mut batch = vec![mail.into()];
        for _ in 0..100 {
            match self.mailboxes.send(core, batch) {
                Ok(()) => return,
                Err(back) => {
                    batch = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        tracing::error!(user_id, "core mailbox stayed full; a push report was lost");
    }
}
