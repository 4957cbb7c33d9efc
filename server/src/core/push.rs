//! Push tokens, and the queueing half of push notifications.
//!
//! A device registers a token (pushkey) with its platform and app id. When a message reaches a
//! user none of whose devices is connected, the user's owner core queues a durable job in
//! `push_outbox`, due after the coalescing window, unless a job for that user is already waiting:
//! one notification then stands for every message of the window, since the push worker reads
//! what to say when it sends. The worker (`crate::push`) reports back when a job is done, and
//! which pushkeys the gateway rejected; this core, the one writer of the user's devices, removes
//! those.

use super::HashMap;

use tern_protocol::frames::{Ok as OkFrame, RegisterPushToken};
use tern_protocol::ErrorCode;

use super::{ConnId, Shard};
use crate::store::records::{PushJobRecord, PushTokenRecord};
use crate::store::StoreError;

/// Push bookkeeping of one core.
#[derive(Debug, Default)]
pub(crate) struct PushState {
    /// Users with a job waiting in the outbox → when their newest message arrived.
    waiting: HashMap<u64, u64>,
}

impl Shard {
    pub(crate) fn handle_register_push(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        register: RegisterPushToken,
    ) -> Result<(), StoreError> {
        if register.app_id.is_empty() || register.token.is_empty() {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::INVALID_ARGUMENT,
                "app_id and token must not be empty",
            );
            return Ok(());
        }
        let push = PushTokenRecord {
            platform: register.platform as u8,
            app_id: register.app_id,
            pushkey: register.token,
        };
        self.set_push_token(conn, request_id, user_id, device_id, Some(push))
    }

    /// Sets or clears the current device's token.
    pub(crate) fn set_push_token(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        push: Option<PushTokenRecord>,
    ) -> Result<(), StoreError> {
        let Some(mut device) = self.store.device(user_id, device_id)? else {
            self.close(
                conn,
                ErrorCode::DEVICE_REVOKED,
                "this device was signed out",
            );
            return Ok(());
        };
        device.push = push;
        self.batch.put_device(user_id, device_id, &device)?;
        self.reply_after_commit(conn, request_id, OkFrame {});
        Ok(())
    }

    /// A message reached `user_id`: queues a push when none of their devices is connected.
    pub(crate) fn queue_push(&mut self, now_ms: u64, user_id: u64) -> Result<(), StoreError> {
        if self.config.push_gateway_url.is_none() || self.online.contains_key(&user_id) {
            return Ok(());
        }
        if let Some(newest) = self.push.waiting.get_mut(&user_id) {
            *newest = now_ms;
            return Ok(());
        }
        self.push.waiting.insert(user_id, now_ms);
        let job = PushJobRecord {
            user_id,
            queued_at: now_ms,
            attempts: 0,
        };
        self.batch
            .put_push_job(now_ms + self.config.push_coalesce_ms, &job)
    }

    /// The worker finished a user's job, having read what to say at `read_at_ms`. A message that
    /// arrived after that (or in the same millisecond) gets a job of its own.
    pub(crate) fn handle_push_done(
        &mut self,
        now_ms: u64,
        user_id: u64,
        read_at_ms: u64,
    ) -> Result<(), StoreError> {
        match self.push.waiting.remove(&user_id) {
            // Within the same millisecond the order is unknown: another notification is better
            // than a missed one.
            Some(newest) if newest >= read_at_ms => self.queue_push(now_ms, user_id),
            _ => Ok(()),
        }
    }

    /// The gateway rejected a pushkey: remove it from whichever device of the user holds it.
    pub(crate) fn handle_push_rejected(
        &mut self,
        user_id: u64,
        pushkey: &str,
    ) -> Result<(), StoreError> {
        for (device_id, mut device) in self.store.devices(user_id)? {
            if device.push.as_ref().is_some_and(|p| p.pushkey == pushkey) {
                tracing::info!(
                    user_id,
                    device_id,
                    "removing a pushkey the gateway rejected"
                );
                device.push = None;
                self.batch.put_device(user_id, device_id, &device)?;
            }
        }
        Ok(())
    }

    /// At start: learns which users this core owns already have a job waiting.
    pub(crate) fn recover_push_jobs(&mut self, now_ms: u64) -> Result<(), StoreError> {
        for user_id in self.store.push_job_users()? {
            if self.owner(user_id) == self.core {
                self.push.waiting.insert(user_id, now_ms);
            }
        }
        Ok(())
    }
}
