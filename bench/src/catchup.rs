//! W5, catch-up: a device that was offline while `n` messages arrived connects, resumes and syncs
//! its whole log, acknowledging each page as a client does. Measures the time from the first
//! `Sync` to the last page and the messages per second.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use serde::Serialize;
use tern_protocol::frames::{Ack, OpenDirect, Ping, Send, Sync, SyncPage};
use tern_protocol::{Body, Frame, UpdateKind};
use tokio::io::AsyncWriteExt;

use crate::conn::{SetupConn, RPC_TIMEOUT};
use crate::stats::{now_ns, per_sec, Latency, SharedHistogram};
use crate::storm::register_users;
use crate::target::{device_read_bytes, histogram_buckets, metrics_text, round_ms, Spawned};
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
    /// The device's sync.
    #[serde(flatten)]
    pub(crate) sync: Catchup,
    /// Every send answered without error and the sync ended.
    pub(crate) completed: bool,
    /// Synced messages equal sent ones.
    pub(crate) delivered_equals_sent: bool,
    /// The same catch-up again after a restart, with every cache cold (when the harness started
    /// `ternd` itself).
    pub(crate) cold: Option<W5Cold>,
    /// The device that caught up: its resume token.
    #[serde(skip)]
    pub(crate) receiver_token: [u8; 32],
    /// A sender's resume token.
    #[serde(skip)]
    pub(crate) sender_token: [u8; 32],
}

/// What one sync of the device's whole log received and took.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Catchup {
    /// Message updates received.
    pub(crate) synced_messages: u64,
    /// All updates received.
    pub(crate) synced_updates: u64,
    /// `SyncPage`s.
    pub(crate) pages: u64,
    /// First `Sync` to the last page.
    pub(crate) sync_s: f64,
    /// Messages caught up per second.
    pub(crate) messages_per_s: f64,
    /// The longest a page took, from its `Sync` to its arrival.
    pub(crate) slowest_page_ms: f64,
}

/// W5 after a restart: the server killed and started again on its data, the data directory's
/// files dropped from the page cache, and the device syncing its whole log again. Its reads go to
/// RocksDB's tables and through them to the device, on the core thread that handles the `Sync`,
/// so how long a read's frames held a core is how long those reads stalled it.
#[derive(Debug, Default, Serialize)]
pub(crate) struct W5Cold {
    /// From the kill to the restarted server's `listening` line: RocksDB replaying its
    /// write-ahead log, then each core's recovery of fan-outs the kill cut short.
    pub(crate) restart_ms: f64,
    /// Files of the data directory dropped from the page cache before the sync.
    pub(crate) files_evicted: u64,
    /// The device's connection and `Resume` before the sync, to its `Authenticated`: the first
    /// request after the restart.
    pub(crate) resume_ms: f64,
    /// The same for a sender's device right after it.
    pub(crate) second_resume_ms: f64,
    /// The device's sync.
    #[serde(flatten)]
    pub(crate) sync: Catchup,
    /// Bytes `ternd` had read from the device during the sync (`/proc/<pid>/io`).
    pub(crate) device_read_bytes: Option<u64>,
    /// How long the core threads were busy at a stretch handling what connections read (the
    /// `Sync`s) during the sync: `ternd`'s `tern_core_frames_microseconds`.
    pub(crate) reads: Option<Stretches>,
    /// The same for their loop turns (`tern_core_turn_microseconds`).
    pub(crate) turns: Option<Stretches>,
    /// How long the sync's store reads took on `ternd`'s reader threads, off the cores
    /// (`tern_core_store_reads_microseconds`; none from a `ternd` without them).
    pub(crate) store_reads: Option<Stretches>,
    /// `Ping`s other connections sent during the sync, one at a time (see [`ping_beside`]), and
    /// their round trips: what a core held by the sync's reads costs everyone else on it.
    pub(crate) pings: u64,
    pub(crate) ping_p99_ms: f64,
    pub(crate) ping_max_ms: f64,
}

/// Stretches of a core thread's time from the difference of two scrapes of one of `ternd`'s
/// latency histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Stretches {
    /// How many.
    pub(crate) count: u64,
    /// Of those, the ones longer than 1 ms.
    pub(crate) over_1ms: u64,
    /// The upper bound of the histogram bucket holding the longest, in µs (`None` past the last
    /// bound, 50 ms).
    pub(crate) longest_at_most_us: Option<u64>,
}

impl W5Report {
    /// One line for the table.
    pub(crate) fn summary(&self) -> String {
        let mut line = format!(
            "W5 catch-up: {} messages synced in {:.3} s = {:.0} messages/s ({} pages, the slowest {:.1} ms); filled at {:.0} sends/s",
            self.sync.synced_messages,
            self.sync.sync_s,
            self.sync.messages_per_s,
            self.sync.pages,
            self.sync.slowest_page_ms,
            self.send_per_s
        );
        if let Some(cold) = self.cold_summary() {
            line.push('\n');
            line.push_str(&cold);
        }
        line
    }

    /// The line of the catch-up after a restart, if it ran.
    fn cold_summary(&self) -> Option<String> {
        self.cold.as_ref().map(|c| {
            format!(
                "W5 after a restart ({:.0} ms to serve), caches cold: {} messages in {:.3} s = {:.0} messages/s (the slowest page {:.1} ms), {} read from the device, longest handling of a read {}, longest store read off the cores {}; {} Pings beside it, p99 {:.2} ms, max {:.2} ms",
                c.restart_ms,
                c.sync.synced_messages,
                c.sync.sync_s,
                c.sync.messages_per_s,
                c.sync.slowest_page_ms,
                c.device_read_bytes
                    .map_or("? bytes".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                longest(c.reads),
                longest(c.store_reads),
                c.pings,
                c.ping_p99_ms,
                c.ping_max_ms,
            )
        })
    }
}

/// The longest of some stretches, as the summary gives it.
fn longest(stretches: Option<Stretches>) -> String {
    match stretches {
        None => "?".into(),
        Some(Stretches {
            longest_at_most_us: None,
            ..
        }) => "over 50 ms".into(),
        Some(Stretches {
            longest_at_most_us: Some(us),
            ..
        }) => format!("≤ {:.1} ms", us as f64 / 1000.0),
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

    r.sync = sync_all(&mut resume(addr, receiver.token).await?).await?;
    r.receiver_token = receiver.token;
    r.sender_token = senders_acc.first().map_or([0; 32], |a| a.token);
    r.completed = errors == 0 && sent == args.catchup as u64;
    r.delivered_equals_sent = r.sync.synced_messages == sent;
    if !args.quiet {
        eprintln!("  {}", r.summary());
    }
    Ok(r)
}

/// A connection of the device of `token`, resumed.
async fn resume(addr: SocketAddr, token: [u8; 32]) -> io::Result<SetupConn> {
    let (mut c, _) = SetupConn::open(addr, None).await?;
    c.resume(token).await?;
    Ok(c)
}

/// Syncs the device's whole log from the start, acknowledging each page as a client does.
async fn sync_all(c: &mut SetupConn) -> io::Result<Catchup> {
    let start = now_ns();
    let mut s = Catchup::default();
    let mut slowest_ns = 0;
    let mut since = 0u64;
    loop {
        let asked = now_ns();
        let reply = c.rpc(Sync { since, limit: 0 }).await?;
        slowest_ns = slowest_ns.max(now_ns() - asked);
        let Body::SyncPage(SyncPage {
            updates, has_more, ..
        }) = reply
        else {
            return Err(io::Error::other(format!("Sync answered {reply:?}")));
        };
        s.pages += 1;
        s.synced_updates += updates.len() as u64;
        s.synced_messages += updates
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
    let secs = (now_ns() - start) as f64 / 1e9;
    s.sync_s = round_ms(secs);
    s.messages_per_s = per_sec(s.synced_messages, secs);
    s.slowest_page_ms = round_ms(slowest_ns as f64 / 1e6);
    Ok(s)
}

/// W5's catch-up again on `server`, restarted with cold caches (see [`W5Cold`]). The server's
/// addresses change with the restart.
pub(crate) async fn cold(
    args: &RunArgs,
    server: &mut Spawned,
    w5: &mut W5Report,
) -> io::Result<()> {
    let killed = now_ns();
    server.restart()?;
    let restart_ms = round_ms((now_ns() - killed) as f64 / 1e6);
    let files_evicted = server.evict_data_from_page_cache()?;
    let pid = server.pid();
    // The resumes are timed on their own; the histograms' and the device's window holds the
    // sync alone.
    let asked = now_ns();
    let mut c = resume(server.addr, w5.receiver_token).await?;
    let resume_ms = round_ms((now_ns() - asked) as f64 / 1e6);
    let asked = now_ns();
    drop(resume(server.addr, w5.sender_token).await?);
    let second_resume_ms = round_ms((now_ns() - asked) as f64 / 1e6);
    let mut pingers = Vec::with_capacity(PINGERS);
    for _ in 0..PINGERS {
        pingers.push(SetupConn::open(server.addr, None).await?.0);
    }
    let before = scrape_stretches(server.metrics).await;
    let read_before = device_read_bytes(pid);
    let done = std::cell::Cell::new(false);
    let (sync, pings) = tokio::join!(
        async {
            let sync = sync_all(&mut c).await;
            done.set(true);
            sync
        },
        ping_beside(&mut pingers, &done)
    );
    let (sync, pings) = (sync?, Latency::of(&pings?));
    let read_after = device_read_bytes(pid);
    let after = scrape_stretches(server.metrics).await;
    let stretches = |i: usize| {
        before
            .as_ref()
            .zip(after.as_ref())
            .and_then(|(b, a)| stretches(b[i].as_ref()?, a[i].as_ref()?))
    };
    let cold = W5Cold {
        restart_ms,
        files_evicted,
        resume_ms,
        second_resume_ms,
        sync,
        device_read_bytes: read_before
            .zip(read_after)
            .map(|(b, a)| a.saturating_sub(b)),
        reads: stretches(0),
        turns: stretches(1),
        store_reads: stretches(2),
        pings: pings.count,
        ping_p99_ms: round_ms(pings.p99_us as f64 / 1e3),
        ping_max_ms: round_ms(pings.max_us as f64 / 1e3),
    };
    w5.delivered_equals_sent &= cold.sync.synced_messages == w5.sent;
    w5.cold = Some(cold);
    if let (false, Some(line)) = (args.quiet, w5.cold_summary()) {
        eprintln!("  {line}");
    }
    Ok(())
}

/// Connections that send `Ping`s during the cold sync. Before they authenticate they stay on the
/// core that accepted them, so several of them are on each core.
const PINGERS: usize = 8;
/// At most this many `Ping`s beside one sync.
const PINGS_MAX: usize = 200_000;

/// Sends `Ping`s on `pingers` in turn, one at a time, until `done`, and returns their round trips.
async fn ping_beside(
    pingers: &mut [SetupConn],
    done: &std::cell::Cell<bool>,
) -> io::Result<Histogram<u64>> {
    let rtts = SharedHistogram::new();
    for nonce in 0..PINGS_MAX as u64 {
        if done.get() {
            break;
        }
        let c = &mut pingers[nonce as usize % pingers.len()];
        let asked = now_ns();
        let reply = c.rpc(Ping { nonce }).await?;
        rtts.record_ns(0, now_ns() - asked);
        if !matches!(reply, Body::Pong(ref p) if p.nonce == nonce) {
            return Err(io::Error::other(format!("Ping answered {reply:?}")));
        }
        // Light next to the sync: the timer rounds this up to about a millisecond.
        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
    }
    Ok(rtts.take())
}

/// `ternd`'s histograms of the frames of one read, of loop turns and of the store reads off the
/// cores, in that order, from one scrape (each `None` if `ternd` has no such histogram).
async fn scrape_stretches(metrics: Option<SocketAddr>) -> Option<[Option<Vec<(f64, f64)>>; 3]> {
    let text = metrics_text(metrics?).await?;
    Some([
        histogram_buckets(&text, "tern_core_frames_microseconds"),
        histogram_buckets(&text, "tern_core_turn_microseconds"),
        histogram_buckets(&text, "tern_core_store_reads_microseconds"),
    ])
}

/// The stretches between two scrapes of a cumulative latency histogram in µs.
fn stretches(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<Stretches> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|&(bound, count)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, (count - was).max(0.0) as u64)
        })
        .collect();
    let count = delta.last()?.1;
    let within_1ms = delta
        .iter()
        .find(|(bound, _)| *bound == 1000.0)
        .map_or(0, |(_, c)| *c);
    let longest_at_most_us = delta
        .iter()
        .find(|(_, c)| *c == count)
        .map(|(bound, _)| *bound)
        .filter(|bound| bound.is_finite())
        .map(|bound| bound as u64);
    Some(Stretches {
        count,
        over_1ms: count - within_1ms,
        longest_at_most_us,
    })
}

#[cfg(test)]
mod tests {
    use super::{stretches, Stretches};

    #[test]
    fn stretches_come_from_the_difference_of_two_scrapes() {
        // Cumulative counts at the bounds 500 µs, 1 ms, 2.5 ms and past the last.
        let scrape = |counts: [f64; 4]| -> Vec<(f64, f64)> {
            [500.0, 1000.0, 2500.0, f64::INFINITY]
                .into_iter()
                .zip(counts)
                .collect()
        };
        let before = scrape([10.0, 10.0, 12.0, 12.0]);
        let after = scrape([15.0, 18.0, 21.0, 21.0]);
        // 9 stretches: 5 up to 500 µs, 3 up to 1 ms, 1 up to 2.5 ms.
        let expected = Stretches {
            count: 9,
            over_1ms: 1,
            longest_at_most_us: Some(2500),
        };
        assert_eq!(stretches(&before, &after), Some(expected));
        // One more past the last bound.
        let past = scrape([15.0, 18.0, 21.0, 22.0]);
        let expected = Stretches {
            count: 10,
            over_1ms: 2,
            longest_at_most_us: None,
        };
        assert_eq!(stretches(&before, &past), Some(expected));
        assert_eq!(stretches(&before, &[]), None);
    }
}
