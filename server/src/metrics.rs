//! Metrics and health: counters the cores and the push worker update with relaxed atomics, and a
//! small HTTP endpoint (its own thread, loopback by default) that serves them in the Prometheus text
//! format at `/metrics`, and `/healthz`.
//!
//! Counters are per core where the hot path touches them, and each has one writer: a core's
//! counters are written by its thread, their commit counters by the committer, each part on cache
//! lines of its own. So an increment is a plain load and store ([`Counter`]), never a locked
//! instruction on a line another thread writes; the endpoint adds nothing to any hot path beyond
//! those increments.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tern_protocol::ErrorCode;

/// Buckets of every histogram, besides `+Inf`.
const HISTOGRAM_BUCKETS: usize = 9;
/// Upper bounds of the commit latency and loop turn histograms, in microseconds.
const LATENCY_BUCKETS_US: [u64; HISTOGRAM_BUCKETS] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];
/// Upper bounds of the group-commit batch size histogram's buckets, in writes.
const COMMIT_BATCH_BUCKETS: [u64; HISTOGRAM_BUCKETS] = [1, 2, 4, 8, 16, 64, 256, 1_024, 4_096];
/// Error codes counted one by one; higher ones share the last slot.
const ERROR_CODES_COUNTED: usize = 32;
/// Bytes of an HTTP request the endpoint reads at most.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long the endpoint waits for a request's bytes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The transports a connection may come in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp = 0,
    Tls = 1,
    Ws = 2,
    Wss = 3,
}

impl Transport {
    /// Every transport, in index order.
    pub(crate) const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];

    /// The `transport` label.
    pub(crate) fn label(self) -> &'static str {
        ["tcp", "tls", "ws", "wss"][self as usize]
    }
}

/// Counters kept per transport (see [`Transport`]).
pub(crate) type PerTransport = [Counter; Transport::ALL.len()];

/// A counter (or gauge) that one thread writes and the endpoint reads. An update is a relaxed load
/// and store, which x86 does without a locked instruction: the locked increments of the hot
/// path's counters were about a tenth of `ternd`'s samples in W2, each waiting for the stores
/// before it and for a cache line the committer had written. With a second writer an update
/// could be lost (never torn), so each counter belongs to one thread (see [`CoreMetrics`]).
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        self.set(self.get().wrapping_add(n));
    }

    pub(crate) fn sub(&self, n: u64) {
        self.set(self.get().wrapping_sub(n));
    }

    pub(crate) fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram of one thread's observations: how many, their sum, and how many fell in each
/// bucket of the bounds it is recorded and rendered with.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    count: Counter,
    sum: Counter,
    buckets: [Counter; HISTOGRAM_BUCKETS],
}

impl Histogram {
    fn record(&self, bounds: &[u64; HISTOGRAM_BUCKETS], value: u64) {
        self.count.add(1);
        self.sum.add(value);
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            self.buckets[i].add(1);
        }
    }
}

/// One core's counters, written by the core's thread alone, except [`CoreMetrics::committer`].
/// Aligned so that no two cores' counters share a cache line (nor the adjacent line, which x86
/// fetches in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CoreMetrics {
    pub(crate) connections: Counter,
    /// Open connections by transport.
    pub(crate) transport_connections: PerTransport,
    /// Connections ready to speak the protocol by transport: accepted (TCP), past the TLS
    /// handshake, past the WebSocket upgrade.
    pub(crate) transport_handshakes: PerTransport,
    /// Connections that failed or timed out before that, by transport.
    pub(crate) transport_handshake_failures: PerTransport,
    pub(crate) tls_handshakes: Counter,
    pub(crate) tls_handshake_failures: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) messages_stored: Counter,
    pub(crate) updates_appended: Counter,
    /// Updates shown to devices before their batch was durable (one commit, not two).
    pub(crate) updates_shown_early: Counter,
    /// Messages delivered again to members that had not confirmed them in time.
    pub(crate) fanout_retries: Counter,
    /// Work of the mail this core holds for other cores' full mailboxes (a delivery counts once
    /// per member).
    pub(crate) mail_held: Counter,
    /// Times that mail reached its bound, so this core's connections stopped reading.
    pub(crate) mail_backlogs: Counter,
    /// Loop turns of the core thread by duration in microseconds: how long the core was busy at
    /// a stretch with mail and the commits' results.
    pub(crate) turns: Histogram,
    /// The frames of one read of a connection by how long the core took to handle them, in
    /// microseconds: requests are handled as they are read, between loop turns, so a store read
    /// that goes to disk for a `Sync` or a `History` shows up here.
    pub(crate) frames: Histogram,
    /// The core's reads that reader threads ran (`Sync` and `History` pages, `Download`s), by how
    /// long they took in microseconds; recorded by the core as their answers come back.
    pub(crate) reads: Histogram,
    /// Those reads the core found all in memory and did itself.
    pub(crate) reads_in_memory: Counter,
    /// Updates `Ack`s read back from the user's log on the core, to find the messages they cover.
    pub(crate) ack_updates_read: Counter,
    /// Updates handed to devices as live events.
    pub(crate) delivered_live: Counter,
    /// Updates handed to devices in sync pages.
    pub(crate) delivered_sync: Counter,
    pub(crate) errors: [Counter; ERROR_CODES_COUNTED],
    /// Set while the core's thread runs its loop.
    pub(crate) alive: AtomicBool,
    /// The core's commits, which the committer thread counts.
    pub(crate) committer: CommitMetrics,
}

/// One core's commit counters, written by the committer thread alone, on cache lines of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CommitMetrics {
    /// Group commits by latency in microseconds.
    pub(crate) latency: Histogram,
    /// Group commits by writes.
    pub(crate) writes: Histogram,
    /// Set while the core's last commit failed (a full disk, an I/O error).
    pub(crate) storage_failing: AtomicBool,
    /// Commits that failed.
    pub(crate) storage_errors: Counter,
}

impl CoreMetrics {
    /// Counts an error frame sent.
    pub(crate) fn error(&self, code: ErrorCode) {
        let slot = (code.0 as usize).min(ERROR_CODES_COUNTED - 1);
        self.errors[slot].add(1);
    }

    /// Counts a loop turn of the core thread that took `micros`.
    pub(crate) fn turn(&self, micros: u64) {
        self.turns.record(&LATENCY_BUCKETS_US, micros);
    }

    /// Counts the frames of one read, handled in `micros`.
    pub(crate) fn frames_handled(&self, micros: u64) {
        self.frames.record(&LATENCY_BUCKETS_US, micros);
    }

    /// Counts a read a reader ran for this core in `micros`.
    pub(crate) fn read_done(&self, micros: u64) {
        self.reads.record(&LATENCY_BUCKETS_US, micros);
    }
}

impl CommitMetrics {
    /// Counts a group commit of `writes` writes that took `micros`.
    pub(crate) fn commit(&self, writes: usize, micros: u64) {
        self.latency.record(&LATENCY_BUCKETS_US, micros);
        self.writes.record(&COMMIT_BATCH_BUCKETS, writes as u64);
    }
}

/// Push outcomes.
#[derive(Debug, Default)]
pub(crate) struct PushMetrics {
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// Every counter of the server.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) cores: Vec<CoreMetrics>,
    pub(crate) push: PushMetrics,
}

impl Metrics {
    pub(crate) fn new(cores: usize) -> Metrics {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            push: PushMetrics::default(),
        }
    }

    /// The counters of one core.
    pub(crate) fn core(&self, core: usize) -> &CoreMetrics {
        &self.cores[core]
    }

    /// Whether every core's loop is running.
    pub(crate) fn healthy(&self) -> bool {
        self.cores.iter().all(|c| c.alive.load(Ordering::Relaxed))
    }

    /// Whether every core's last commit succeeded.
    pub(crate) fn storage_healthy(&self) -> bool {
        self.cores
            .iter()
            .all(|c| !c.committer.storage_failing.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition of every counter, plus the database gauges given.
    pub(crate) fn render(&self, database: &[(&str, u64)]) -> String {
        let mut out = String::new();
        let per_core = |out: &mut String,
                        name: &str,
                        kind: &str,
                        help: &str,
                        get: &dyn Fn(&CoreMetrics) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (core, m) in self.cores.iter().enumerate() {
                let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", get(m));
            }
        };
        let load = |a: &Counter| a.get();
        per_core(
            &mut out,
            "tern_connections",
            "gauge",
            "Open connections.",
            &|m| load(&m.connections),
        );
        let per_transport =
            |out: &mut String,
             name: &str,
             kind: &str,
             help: &str,
             get: &dyn Fn(&CoreMetrics) -> &PerTransport| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (core, m) in self.cores.iter().enumerate() {
                    for t in Transport::ALL {
                        let value = get(m)[t as usize].get();
                        let label = t.label();
                        let _ = writeln!(
                            out,
                            "{name}{{core=\"{core}\",transport=\"{label}\"}} {value}"
                        );
                    }
                }
            };
        per_transport(
            &mut out,
            "tern_transport_connections",
            "gauge",
            "Open connections by transport (tcp, tls, ws, wss).",
            &|m| &m.transport_connections,
        );
        per_transport(
            &mut out,
            "tern_transport_handshakes_total",
            "counter",
            "Connections ready for Hello by transport: accepted, past TLS, past the WebSocket upgrade.",
            &|m| &m.transport_handshakes,
        );
        per_transport(
            &mut out,
            "tern_transport_handshake_failures_total",
            "counter",
            "Connections closed before they were ready for Hello, by transport.",
            &|m| &m.transport_handshake_failures,
        );
        per_core(
            &mut out,
            "tern_tls_handshakes_total",
            "counter",
            "TLS handshakes completed.",
            &|m| load(&m.tls_handshakes),
        );
        per_core(
            &mut out,
            "tern_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
            &|m| load(&m.tls_handshake_failures),
        );
        per_core(
            &mut out,
            "tern_frames_in_total",
            "counter",
            "Frames read from clients.",
            &|m| load(&m.frames_in),
        );
        per_core(
            &mut out,
            "tern_frames_out_total",
            "counter",
            "Frames queued to clients.",
            &|m| load(&m.frames_out),
        );
        per_core(
            &mut out,
            "tern_messages_stored_total",
            "counter",
            "Messages stored (acknowledged as sent).",
            &|m| load(&m.messages_stored),
        );
        per_core(
            &mut out,
            "tern_storage_errors_total",
            "counter",
            "Group commits that failed (a full disk, an I/O error).",
            &|m| load(&m.committer.storage_errors),
        );
        per_core(
            &mut out,
            "tern_storage_failing",
            "gauge",
            "1 while the core's last group commit failed.",
            &|m| u64::from(m.committer.storage_failing.load(Ordering::Relaxed)),
        );
        per_core(
            &mut out,
            "tern_updates_appended_total",
            "counter",
            "Entries appended to update logs.",
            &|m| load(&m.updates_appended),
        );
        per_core(
            &mut out,
            "tern_updates_shown_early_total",
            "counter",
            "Log entries shown to devices before they were durable (their message was).",
            &|m| load(&m.updates_shown_early),
        );
        per_core(
            &mut out,
            "tern_fanout_retries_total",
            "counter",
            "Messages delivered again to members that had not confirmed them in time.",
            &|m| load(&m.fanout_retries),
        );
        per_core(
            &mut out,
            "tern_mail_held",
            "gauge",
            "Mail held for other cores' full mailboxes, in deliveries (one per member) and other mail.",
            &|m| load(&m.mail_held),
        );
        per_core(
            &mut out,
            "tern_mail_backlogs_total",
            "counter",
            "Times the mail held for full mailboxes reached its bound and connections stopped reading.",
            &|m| load(&m.mail_backlogs),
        );
        per_core(
            &mut out,
            "tern_core_reads_in_memory_total",
            "counter",
            "Store reads of Sync and History pages and Downloads a core found all in memory and did itself (the rest go to the reader threads).",
            &|m| load(&m.reads_in_memory),
        );
        per_core(
            &mut out,
            "tern_core_ack_updates_read_total",
            "counter",
            "Updates Acks read back from the user's log on the core: those they cover that were neither kept since the device went live nor in the Sync pages just sent.",
            &|m| load(&m.ack_updates_read),
        );
        per_core(
            &mut out,
            "tern_commit_writes_total",
            "counter",
            "Writes in group commits.",
            &|m| load(&m.committer.writes.sum),
        );
        let histogram = |out: &mut String,
                         name: &str,
                         help: &str,
                         bounds: &[u64; HISTOGRAM_BUCKETS],
                         get: &dyn Fn(&CoreMetrics) -> &Histogram| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (core, m) in self.cores.iter().enumerate() {
                let h = get(m);
                let mut cumulative = 0;
                for (bound, bucket) in bounds.iter().zip(&h.buckets) {
                    cumulative += load(bucket);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{core=\"{core}\",le=\"{bound}\"}} {cumulative}"
                    );
                }
                let count = load(&h.count);
                let _ = writeln!(out, "{name}_bucket{{core=\"{core}\",le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "{name}_sum{{core=\"{core}\"}} {}", load(&h.sum));
                let _ = writeln!(out, "{name}_count{{core=\"{core}\"}} {count}");
            }
        };
        histogram(
            &mut out,
            "tern_commit_latency_microseconds",
            "Group commit latency.",
            &LATENCY_BUCKETS_US,
            &|m| &m.committer.latency,
        );
        histogram(
            &mut out,
            "tern_core_turn_microseconds",
            "Loop turns of a core thread: how long it was busy at a stretch.",
            &LATENCY_BUCKETS_US,
            &|m| &m.turns,
        );
        histogram(
            &mut out,
            "tern_core_frames_microseconds",
            "The frames of one read of a connection, by how long the core thread took to handle them.",
            &LATENCY_BUCKETS_US,
            &|m| &m.frames,
        );
        histogram(
            &mut out,
            "tern_core_store_reads_microseconds",
            "Store reads a core handed to the reader threads (Sync and History pages, Downloads), by how long they took there.",
            &LATENCY_BUCKETS_US,
            &|m| &m.reads,
        );
        histogram(
            &mut out,
            "tern_commit_batch_writes",
            "Writes per group commit.",
            &COMMIT_BATCH_BUCKETS,
            &|m| &m.committer.writes,
        );
        let name = "tern_updates_delivered_total";
        let _ = writeln!(
            out,
            "# HELP {name} Updates handed to devices, live or in sync pages.\n# TYPE {name} counter"
        );
        for (core, m) in self.cores.iter().enumerate() {
            for (via, value) in [("live", &m.delivered_live), ("sync", &m.delivered_sync)] {
                let _ = writeln!(
                    out,
                    "{name}{{core=\"{core}\",via=\"{via}\"}} {}",
                    load(value)
                );
            }
        }
        let name = "tern_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Error frames sent, by code.\n# TYPE {name} counter"
        );
        for code in ErrorCode::ALL {
            let total: u64 = self
                .cores
                .iter()
                .map(|m| load(&m.errors[(code.0 as usize).min(ERROR_CODES_COUNTED - 1)]))
                .sum();
            let _ = writeln!(out, "{name}{{code=\"{}\"}} {total}", code.name());
        }
        for (name, value, help) in [
            (
                "tern_push_sent_total",
                &self.push.sent,
                "Notifications the push gateway accepted.",
            ),
            (
                "tern_push_failed_total",
                &self.push.failed,
                "Posts to the push gateway that failed.",
            ),
            (
                "tern_push_expired_total",
                &self.push.expired,
                "Notifications dropped after the maximum age.",
            ),
            (
                "tern_push_rejected_total",
                &self.push.rejected,
                "Pushkeys the gateway rejected.",
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        for (property, value) in database {
            let name = format!(
                "tern_{}",
                property
                    .trim_start_matches("rocksdb.")
                    .replace(['.', '-'], "_")
            );
            let _ = writeln!(
                out,
                "# HELP {name} RocksDB property {property}.\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// A running metrics endpoint.
pub(crate) struct MetricsServer {
    pub(crate) local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl MetricsServer {
    /// Serves `/metrics` and `/healthz` on `addr` from a thread of its own.
    pub(crate) fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        database: impl Fn() -> Vec<(&'static str, u64)> + Send + 'static,
    ) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ternd-metrics".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = serve(stream, &metrics, &database) {
                                tracing::debug!(error = %e, "metrics request failed");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(MetricsServer {
            local_addr,
            stop,
            thread,
        })
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

fn serve(
    mut stream: TcpStream,
    metrics: &Metrics,
    database: &impl Fn() -> Vec<(&'static str, u64)>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_BYTES_MAX {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => ("200 OK", metrics.render(&database())),
        "/healthz" if !metrics.healthy() => (
            "503 Service Unavailable",
            "a core is not running\n".to_owned(),
        ),
        "/healthz" if !metrics.storage_healthy() => {
            ("503 Service Unavailable", "storage is failing\n".to_owned())
        }
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
