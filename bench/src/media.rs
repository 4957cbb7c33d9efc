//! W6, chat beside a big download: two users chat (one `Send` at a time, each waiting for its
//! `Sent`) while a third downloads a large attachment chunk by chunk, as fast as the server
//! serves it. The chat's acknowledgement latency is measured first alone, then beside the
//! download, in the same run, so the ratio shows what the download costs the chat.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tern_protocol::frames::{Download, OpenDirect, Send, UploadBegin, UploadChunk, UploadFinish};
use tern_protocol::Body;

use crate::conn::SetupConn;
use crate::stats::{now_ns, per_sec, Latency, SharedHistogram};
use crate::storm::register_users;
use crate::target::round_ms;
use crate::RunArgs;

/// W6's report.
#[derive(Debug, Default, Serialize)]
pub(crate) struct W6Report {
    /// Size of the attachment downloaded, bytes.
    pub(crate) media_bytes: u64,
    /// Chat messages sent in each phase.
    pub(crate) messages_per_phase: usize,
    /// Pause between one `Sent` and the next `Send`, ms.
    pub(crate) interval_ms: u64,
    /// `Send` to `Sent` with no download running.
    pub(crate) alone: Latency,
    /// `Send` to `Sent` while the download runs.
    pub(crate) beside_download: Latency,
    /// `beside_download.p99 / alone.p99`.
    pub(crate) p99_ratio: f64,
    /// Bytes downloaded during the second phase (whole passes over the attachment and a part).
    pub(crate) downloaded_bytes: u64,
    /// Download rate during the second phase, MiB/s.
    pub(crate) download_mib_per_s: f64,
    /// Every pass the download finished was byte for byte the upload (checked by SHA-256).
    pub(crate) download_intact: bool,
    /// Every send answered with `Sent`.
    pub(crate) completed: bool,
}

impl W6Report {
    /// One line for the table.
    pub(crate) fn summary(&self) -> String {
        format!(
            "W6 chat beside a {} MiB download: Sent p50/p99/max alone {}, beside it {} (p99 ×{:.2}); download {:.0} MiB/s",
            self.media_bytes >> 20,
            self.alone.short(),
            self.beside_download.short(),
            self.p99_ratio,
            self.download_mib_per_s
        )
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

fn unexpected(what: &str, body: &Body) -> io::Error {
    io::Error::other(format!("{what} answered {body:?}"))
}

/// Uploads `data` in chunks of `chunk` bytes; returns the media id.
async fn upload(c: &mut SetupConn, data: &[u8], chunk: usize) -> io::Result<u64> {
    let begin = UploadBegin {
        size: data.len() as u64,
        mime: "application/octet-stream".into(),
        sha256: sha256(data),
    };
    let media_id = match c.rpc(begin).await? {
        Body::UploadState(s) => s.media_id,
        other => return Err(unexpected("UploadBegin", &other)),
    };
    for (i, part) in data.chunks(chunk).enumerate() {
        let request = UploadChunk {
            media_id,
            offset: (i * chunk) as u64,
            data: part.to_vec(),
        };
        match c.rpc(request).await? {
            Body::UploadState(_) => {}
            other => return Err(unexpected("UploadChunk", &other)),
        }
    }
    match c.rpc(UploadFinish { media_id }).await? {
        Body::MediaInfo(_) => Ok(media_id),
        other => Err(unexpected("UploadFinish", &other)),
    }
}

/// Sends `n` messages one at a time, `interval` apart, recording each `Send` → `Sent`.
async fn chat(
    c: &mut SetupConn,
    conversation_id: u64,
    n: usize,
    interval: Duration,
    tag: u8,
    hist: &SharedHistogram,
) -> io::Result<bool> {
    let mut all_sent = true;
    for i in 0..n {
        let mut client_msg_id = [0u8; 16];
        client_msg_id[0] = tag;
        client_msg_id[8..].copy_from_slice(&(i as u64).to_be_bytes());
        let started = now_ns();
        let reply = c
            .rpc(Send {
                conversation_id,
                client_msg_id,
                body: "still snappy?".into(),
                attachments: Vec::new(),
            })
            .await?;
        hist.record_ns(0, now_ns() - started);
        all_sent &= matches!(reply, Body::Sent(_));
        tokio::time::sleep(interval).await;
    }
    Ok(all_sent)
}

/// Downloads the attachment over and over until `stop` is set; returns (bytes, every finished
/// pass intact).
async fn download_loop(
    mut c: SetupConn,
    media_id: u64,
    size: u64,
    chunk: u32,
    digest: [u8; 32],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> io::Result<(u64, bool)> {
    let (mut total, mut intact) = (0u64, true);
    // Bounded: at most 1,000 passes, and the chat ends the loop long before.
    for _ in 0..1_000 {
        // Hashed chunk by chunk: hashing a whole pass at its end held this task's thread for
        // tens of milliseconds, and the chat's replies waited on it, as if the server were slow.
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut offset = 0u64;
        while offset < size {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok((total, intact));
            }
            let request = Download {
                media_id,
                offset,
                length: chunk,
            };
            match c.rpc(request).await? {
                Body::MediaData(d) if !d.data.is_empty() => {
                    total += d.data.len() as u64;
                    offset += d.data.len() as u64;
                    hash.update(&d.data);
                }
                other => return Err(unexpected("Download", &other)),
            }
        }
        intact &= offset == size && hash.finish().as_ref() == digest;
    }
    Ok((total, intact))
}

/// Runs W6.
pub(crate) async fn run(args: &RunArgs, addr: SocketAddr, prefix: &str) -> io::Result<W6Report> {
    let accounts = register_users(addr, &format!("{prefix}m"), 3, 3).await?;
    let [uploader, sender, peer] = accounts.as_slice() else {
        return Err(io::Error::other("W6 needs three users"));
    };
    let size = (args.media_mib.max(1) as usize) << 20;
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect();
    let digest = sha256(&data);

    let (mut up, welcome) = SetupConn::open(addr, None).await?;
    up.resume(uploader.token).await?;
    let chunk = welcome.limits.media_chunk_bytes_max.clamp(1, 256 * 1024);
    let media_id = upload(&mut up, &data, chunk as usize).await?;
    drop(data);

    let (mut c, _) = SetupConn::open(addr, None).await?;
    c.resume(sender.token).await?;
    let conversation_id = match c
        .rpc(OpenDirect {
            user_id: peer.user_id,
            encrypted: false,
        })
        .await?
    {
        Body::Conversation(conv) => conv.conversation.conversation_id,
        other => return Err(unexpected("OpenDirect", &other)),
    };
    let n = args.media_messages.max(1);
    let interval = Duration::from_millis(args.media_interval_ms);
    let alone = SharedHistogram::new();
    let ok_alone = chat(&mut c, conversation_id, n, interval, 1, &alone).await?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let downloader = tokio::spawn(download_loop(
        up,
        media_id,
        size as u64,
        chunk,
        digest,
        stop.clone(),
    ));
    // Let the download get going before the chat is timed beside it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = now_ns();
    let beside = SharedHistogram::new();
    let ok_beside = chat(&mut c, conversation_id, n, interval, 2, &beside).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let secs = (now_ns() - started) as f64 / 1e9 + 0.2;
    let (downloaded, intact) = downloader.await.map_err(io::Error::other)??;

    let alone = Latency::of(&alone.take());
    let beside_download = Latency::of(&beside.take());
    let r = W6Report {
        media_bytes: size as u64,
        messages_per_phase: n,
        interval_ms: args.media_interval_ms,
        p99_ratio: round_ms(beside_download.p99_us as f64 / alone.p99_us.max(1) as f64),
        alone,
        beside_download,
        downloaded_bytes: downloaded,
        download_mib_per_s: per_sec(downloaded >> 20, secs),
        download_intact: intact,
        completed: ok_alone && ok_beside,
    };
    if !args.quiet {
        eprintln!("  {}", r.summary());
    }
    Ok(r)
}
