//! A full disk, for real: `ternd` on a small tmpfs that a filler file fills while messages flow.
//!
//! Needs root to mount a tmpfs (CI runs as root). The test fails, rather than skips, where it
//! cannot mount one, so a green run always means the disk really filled.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tern_client::ClientError;
use tern_protocol::ErrorCode;

/// How large the tmpfs is: room for RocksDB's preallocated log and a memtable's flush, and, once
/// the filler is gone, for the 64 MiB RocksDB wants free before it writes again.
const TMPFS_MIB: u64 = 320;
/// How long a `Send` may take to be answered, even while the disk is full.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Most messages sent to fill the disk: RocksDB preallocates its write-ahead log (about 70 MB
/// here), so the disk is full only once that log is.
const SENDS_MAX: u64 = 3000;
/// How long `ternd` may take to write again once there is room (RocksDB looks every 5 s).
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

/// A tmpfs mounted at a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes on the file system.
    fn free_bytes(&self) -> u64 {
        let output = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("run df");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system but for `leave` bytes with one file.
fn fill(tmpfs: &Tmpfs, leave: u64) -> std::path::PathBuf {
    let filler = tmpfs.path().join("filler");
    let size = tmpfs.free_bytes().saturating_sub(leave);
    let status = Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&filler)
        .status()
        .expect("run fallocate");
    assert!(status.success());
    filler
}

// Proves a full disk is handled as the operator and the clients need: every Send is answered
// (acknowledged, or INTERNAL once nothing more fits), /healthz says 503 while commits fail, and
// once there is room again ternd writes by itself, without a restart, with every acknowledged
// message in the recipient's log exactly once.
async fn full_disk_is_answered_and_recovered(engine: &'static str) {
    let tmpfs = Tmpfs::mount(TMPFS_MIB);
    let data = tmpfs.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Ternd::start_in(
        engine,
        &data,
        &[
            "--send-rate-per-connection",
            "0",
            "--send-rate-per-user",
            "0",
        ],
    );
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    let filler = fill(&tmpfs, 4 << 20);

    let body = "x".repeat(90_000);
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 1..=SENDS_MAX {
        let send = alice.send(conv.conversation_id, cmid(1, n), &body);
        match tokio::time::timeout(ANSWER_WITHIN, send).await {
            Err(_) => panic!("send {n} got no answer while the disk filled"),
            Ok(Ok(sent)) => acknowledged.push((n, sent.seq)),
            Ok(Err(ClientError::Server { code, .. })) => {
                assert_eq!(
                    code,
                    ErrorCode::INTERNAL,
                    "a full disk is a retryable error"
                );
                refused = Some(n);
                break;
            }
            Ok(Err(e)) => panic!("send {n}: {e}"),
        }
    }
    let refused = refused.expect("the disk filled up within SENDS_MAX messages of 90 KB");
    let full_since = Instant::now();
    let (status, body_503) = get(server.metrics_addr, "/healthz").await;
    assert!(status.contains("503"), "{status} {body_503}");
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    assert!(metrics.contains("tern_storage_failing{core="), "{metrics}");

    // Room again: the same send, retried under its key, goes through without a restart.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    let sent = loop {
        let send = alice.send(conv.conversation_id, cmid(1, refused), &body);
        match tokio::time::timeout(ANSWER_WITHIN, send).await {
            Err(_) => panic!("a retry got no answer"),
            Ok(Ok(sent)) => break sent,
            Ok(Err(ClientError::Server { code, .. })) if code == ErrorCode::INTERNAL => {
                assert!(
                    started.elapsed() < RECOVER_WITHIN,
                    "ternd did not write again within {RECOVER_WITHIN:?} of the disk having room"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => panic!("retry: {e}"),
        }
    };
    acknowledged.push((refused, sent.seq));
    let (status, _) = get(server.metrics_addr, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    // Failed writes were retried after a pause, not in a hot loop: at most 20 writes a second,
    // each failing a batch or two of each core (tens of thousands a second without the pause).
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    let failed = total(&metrics, "tern_storage_errors_total");
    let bound = 100 * (full_since.elapsed().as_secs() + 1);
    assert!(
        failed <= bound,
        "{failed} failed commits in {:?}",
        full_since.elapsed()
    );

    let log = sync_until(&bob, acknowledged.len()).await;
    let mut seqs: Vec<u64> = log
        .iter()
        .filter_map(|u| match &u.kind {
            tern_protocol::UpdateKind::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    let logged = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), logged, "no message twice in the log");
    let mut expected: Vec<u64> = acknowledged.iter().map(|(_, seq)| *seq).collect();
    expected.sort_unstable();
    assert_eq!(seqs, expected, "every acknowledged message, once, in order");
    drop(server);
}

on_both_engines!(full_disk_is_answered_and_recovered);
