//! W5, catch-up: a device that was offline while `n` messages arrived connects, resumes and syncs
//! its whole log, acknowledging each page as a client does. Measures the time from the first
//! `Sync` to the last page and the messages per second.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use serde::Serialize;
use tern_protocol::frames::{Ack, OpenDirect, Send, Sync, SyncPage};
use tern_protocol::{Body, Frame, UpdateKind};
use tokio::io::AsyncWriteExt;

use crate::conn::{SetupConn, RPC_TIMEOUT};
use crate::stats::{now_ns, per_sec};
use crate::storm::register_users;
use crate::target::round_ms;
use crate::RunArgs;

/// W5's report.
#[derive(Debug, Default, Serialize)]
pub(crate) struct W5Report {
    /// Messages sent to the offline device's user.
    pub(crate) messages: usize,
    /// Users who sent them.
    pub(crate) senders: usize,
    /// `Sent` replies.
    pub(crate) sent: u64,
    /// `Error` replies to the sends.
    pub(crate) send_errors: u64,
    /// Time to send them all.
    pub(crate) send_s: f64,
    /// Sends per second while filling the log.
    pub(crate) send_per_s: f64,
    /// Message updates the device received by syncing.
    pub(crate) synced_messages: u64,
    /// All updates it received.
    pub(crate) synced_updates: u64,
    /// `SyncPage`s.
    pub(crate) pages: u64,
    /// First `Sync` to the last page.
    pub(crate) sync_s: f64,
    /// Messages caught up per second.
    pub(crate) messages_per_s: f64,
    /// Every send answered without error and the sync ended.
    pub(crate) completed: bool,
    /// Synced messages equal sent ones.
    pub(crate) delivered_equals_sent: bool,
}

impl W5Report {
    /// One line for the table.
    pub(crate) fn summary(&self) -> String {
        format!(
            "W5 catch-up: {} messages synced in {:.3} s = {:.0} messages/s ({} pages); filled at {:.0} sends/s",
            self.synced_messages, self.sync_s, self.messages_per_s, self.pages, self.send_per_s
        )
    }
}

/// Sends `n` messages to `conversation_id`, keeping up to `window` unanswered. Returns (sent, errors).
async fn pump(
    c: &mut SetupConn,
    conversation_id: u64,
    n: usize,
    window: usize,
    tag: u8,
) -> io::Result<(u64, u64)> {
    let body = "c".repeat(100);
    let (mut issued, mut in_flight, mut sent, mut errors) = (0usize, 0usize, 0u64, 0u64);
    let mut buf = BytesMut::new();
    let mut next_id = c.next_request_id().max(1000);
    while (sent + errors) < n as u64 {
        if in_flight <= window / 2 && issued < n {
            while in_flight < window && issued < n {
                let mut client_msg_id = [0u8; 16];
                client_msg_id[0] = tag;
                client_msg_id[8..].copy_from_slice(&(issued as u64).to_be_bytes());
                let _ = Frame::new(
                    next_id,
                    Send {
                        conversation_id,
                        client_msg_id,
                        body: body.clone(),
                        attachments: Vec::new(),
                    },
                )
                .encode(&mut buf);
                next_id = next_id.wrapping_add(1).max(1);
                issued += 1;
                in_flight += 1;
            }
            c.stream.write_all(&buf).await?;
            c.stream.flush().await?;
            buf.clear();
        }
        let frame = tokio::time::timeout(RPC_TIMEOUT, c.read_frame())
            .await
            .map_err(|_| io::Error::other("no reply to a send within the time-out"))??;
        match frame.body {
            Body::Sent(_) => {
                sent += 1;
                in_flight -= 1;
            }
            Body::Error(_) if frame.request_id != 0 => {
                errors += 1;
                in_flight -= 1;
            }
            Body::Error(e) => return Err(io::Error::other(format!("connection error {e:?}"))),
            _ => {}
        }
    }
    Ok((sent, errors))
}

/// Runs W5.
pub(crate) async fn run(args: &RunArgs, addr: SocketAddr, prefix: &str) -> io::Result<W5Report> {
    let senders = args.catchup_senders.max(1);
    let accounts = register_users(addr, &format!("{prefix}c"), senders + 1, senders + 1).await?;
    let (receiver, senders_acc) = accounts
        .split_last()
        .ok_or_else(|| io::Error::other("no users"))?;
    let receiver = receiver.clone();
    let mut r = W5Report {
        messages: args.catchup,
        senders,
        ..W5Report::default()
    };
    let start = now_ns();
    let counters = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let mut tasks = Vec::new();
    for (k, a) in senders_acc.iter().enumerate() {
        let share = args.catchup / senders + usize::from(k < args.catchup % senders);
        let (token, peer, counters) = (a.token, receiver.user_id, counters.clone());
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = SetupConn::open(addr, None).await?;
            c.resume(token).await?;
            let reply = c
                .rpc(OpenDirect {
                    user_id: peer,
                    encrypted: false,
                })
                .await?;
            let Body::Conversation(conv) = reply else {
                return Err(io::Error::other(format!("OpenDirect: {reply:?}")));
            };
            let (s, e) = pump(
                &mut c,
                conv.conversation.conversation_id,
                share,
                128,
                k as u8,
            )
            .await?;
            let mut t = counters.lock().unwrap_or_else(|e| e.into_inner());
            t.0 += s;
            t.1 += e;
            io::Result::Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(io::Error::other)??;
    }
    let send_secs = (now_ns() - start) as f64 / 1e9;
    let (sent, errors) = *counters.lock().unwrap_or_else(|e| e.into_inner());
    r.sent = sent;
    r.send_errors = errors;
    r.send_s = round_ms(send_secs);
    r.send_per_s = per_sec(sent, send_secs);
    if !args.quiet {
        eprintln!("  filled the log: {sent} messages in {:.2} s", send_secs);
    }

    let (mut c, _) = SetupConn::open(addr, None).await?;
    c.resume(receiver.token).await?;
    let start = now_ns();
    let mut since = 0u64;
    loop {
        let reply = c.rpc(Sync { since, limit: 0 }).await?;
        let Body::SyncPage(SyncPage {
            updates, has_more, ..
        }) = reply
        else {
            return Err(io::Error::other(format!("Sync answered {reply:?}")));
        };
        r.pages += 1;
        r.synced_updates += updates.len() as u64;
        r.synced_messages += updates
            .iter()
            .filter(|u| matches!(u.kind, UpdateKind::Message(_)))
            .count() as u64;
        if let Some(last) = updates.last() {
            since = last.user_seq;
            c.send(Ack { up_to: since }).await?;
        }
        if !has_more {
            break;
        }
    }
    let sync_secs = (now_ns() - start) as f64 / 1e9;
    r.sync_s = round_ms(sync_secs);
    r.messages_per_s = per_sec(r.synced_messages, sync_secs);
    r.completed = errors == 0 && sent == args.catchup as u64;
    r.delivered_equals_sent = r.synced_messages == sent;
    if !args.quiet {
        eprintln!("  {}", r.summary());
    }
    Ok(r)
}
