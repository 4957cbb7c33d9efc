//! W4, idle connections: many authenticated, live (synced) connections that only ping, spread over
//! several source addresses so the client's ephemeral ports do not run out. Measures `ternd`'s
//! resident memory per connection (`VmRSS` from `/proc/<pid>/status`, before and after) and the
//! kernel's TCP socket memory (`/proc/net/sockstat`, both ends of every connection counted).
//!
//! Connections send `Ping` at the `heartbeat_interval_ms` the server announces in `Welcome`, as a
//! client should, so the server's idle time-out never closes them.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tern_protocol::frames::Ping;
use tern_protocol::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::conn::SetupConn;
use crate::fleet::for_each_concurrent;
use crate::stats::now_ns;
use crate::storm::{register_users, source};
use crate::target::{rss_bytes, slab_bytes, tcp_sockstat};
use crate::transport::Stream;
use crate::RunArgs;

/// W4's report.
#[derive(Debug, Default, Serialize)]
pub(crate) struct W4Report {
    /// The transport: `tcp` or `ws`.
    pub(crate) transport: &'static str,
    /// Whether W4 ran on a ternd started for it alone.
    pub(crate) fresh_server: bool,
    /// Connections asked for.
    pub(crate) requested: usize,
    /// Why fewer were opened, if they were.
    pub(crate) note: Option<String>,
    /// Connections opened.
    pub(crate) connections: usize,
    /// Connections that authenticated and synced.
    pub(crate) established: u64,
    /// Connections that failed to set up.
    pub(crate) failed: u64,
    /// The first setup error, if any.
    pub(crate) first_error: Option<String>,
    /// Connections per user.
    pub(crate) per_user: usize,
    /// Source addresses used.
    pub(crate) source_addrs: u8,
    /// The ping interval the connections kept (the server's announced heartbeat interval).
    pub(crate) ping_interval_ms: u64,
    /// Time to open them all.
    pub(crate) setup_s: f64,
    /// Connections opened per second during setup.
    pub(crate) setup_per_s: f64,
    /// ternd's resident memory before.
    pub(crate) rss_before_bytes: Option<u64>,
    /// ternd's resident memory with every connection open.
    pub(crate) rss_after_bytes: Option<u64>,
    /// ternd's resident memory at the end of the hold.
    pub(crate) rss_end_bytes: Option<u64>,
    /// (after − before) / established.
    pub(crate) rss_per_connection_bytes: Option<f64>,
    /// TCP sockets in use before (both ends, every process).
    pub(crate) tcp_sockets_before: Option<u64>,
    /// TCP sockets in use after.
    pub(crate) tcp_sockets_after: Option<u64>,
    /// Kernel TCP memory before, bytes.
    pub(crate) tcp_mem_before_bytes: Option<u64>,
    /// Kernel TCP memory after, bytes.
    pub(crate) tcp_mem_after_bytes: Option<u64>,
    /// (after − before) / established: both socket ends of a connection.
    pub(crate) tcp_mem_per_connection_bytes: Option<f64>,
    /// Kernel slab memory before, bytes (socket structures; system-wide, so noisy).
    pub(crate) slab_before_bytes: Option<u64>,
    /// Kernel slab memory after, bytes.
    pub(crate) slab_after_bytes: Option<u64>,
    /// (after − before) / established: both socket ends of a connection.
    pub(crate) slab_per_connection_bytes: Option<f64>,
    /// Seconds the connections were held idle.
    pub(crate) hold_s: f64,
    /// Connections the server closed while they were held.
    pub(crate) closed_during_hold: u64,
    /// Every connection was established and survived the hold.
    pub(crate) completed: bool,
}

impl W4Report {
    /// One line for the table.
    pub(crate) fn summary(&self) -> String {
        let kib = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2} KiB", b / 1024.0));
        format!(
            "W4 idle ({}): {} of {} connections ({} per user, {} source addresses) opened in {:.1} s; ternd RSS per connection {}; kernel TCP buffer memory per connection {}, kernel slab per connection (both ends) {}; {} closed during a {:.0} s hold",
            self.transport,
            self.established,
            self.connections,
            self.per_user,
            self.source_addrs,
            self.setup_s,
            kib(self.rss_per_connection_bytes),
            kib(self.tcp_mem_per_connection_bytes),
            kib(self.slab_per_connection_bytes),
            self.closed_during_hold,
            self.hold_s,
        )
    }
}

async fn idle(
    mut stream: Stream,
    ping_every: Duration,
    mut stop: watch::Receiver<bool>,
    closed: Arc<AtomicU64>,
) {
    let mut buf = [0u8; 64];
    let mut ping = Vec::new();
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    if !*stop.borrow() {
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
            () = tokio::time::sleep(ping_every) => {
                if ping.is_empty() {
                    if let Ok(b) = Frame::new(0x7FFF_0000, Ping { nonce: 1 }).to_bytes() {
                        ping = b.to_vec();
                    }
                }
                let _ = stream.write_all(&ping).await;
                let _ = stream.flush().await;
            }
            _ = stop.changed() => return,
        }
    }
}

/// Runs W4.
pub(crate) async fn run(
    args: &RunArgs,
    addr: SocketAddr,
    pid: Option<u32>,
    prefix: &str,
    websocket: Option<SocketAddr>,
) -> io::Result<W4Report> {
    // Each connection costs a descriptor here and one in ternd (which inherits this limit when
    // started here). ternd keeps 1,024 for itself and splits the rest evenly between its cores,
    // but users land on cores by a hash of their id, not evenly: keep a tenth spare.
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let cap = usize::try_from(nofile.saturating_sub(1024) / 10 * 9).unwrap_or(usize::MAX);
    let n = args.idle.min(cap);
    let note = (n < args.idle).then(|| {
        format!(
            "capped from {} to {n}: the open files limit is {nofile} and cannot be raised here (raising the hard limit needs CAP_SYS_RESOURCE)",
            args.idle
        )
    });
    if let Some(note) = &note {
        eprintln!("  W4: {note}");
    }
    let per_user = args.idle_per_user.max(1);
    let users = n.div_ceil(per_user);
    let accounts =
        Arc::new(register_users(addr, &format!("{prefix}i"), users, args.setup_concurrency).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut r = W4Report {
        transport: if websocket.is_some() { "ws" } else { "tcp" },
        requested: args.idle,
        note,
        connections: n,
        per_user,
        source_addrs: args.source_addrs,
        rss_before_bytes: pid.and_then(rss_bytes),
        ..W4Report::default()
    };
    if let Some((sockets, mem)) = tcp_sockstat() {
        r.tcp_sockets_before = Some(sockets);
        r.tcp_mem_before_bytes = Some(mem);
    }
    r.slab_before_bytes = slab_bytes();
    let (stop_tx, stop_rx) = watch::channel(false);
    let established = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let ping_ms = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = now_ns();
    let last_progress = Arc::new(AtomicU64::new(start));
    {
        let (est, failed, closed, ping_ms, first_error, accounts, sources, quiet, last) = (
            established.clone(),
            failed.clone(),
            closed.clone(),
            ping_ms.clone(),
            first_error.clone(),
            accounts.clone(),
            args.source_addrs,
            args.quiet,
            last_progress.clone(),
        );
        let _ = for_each_concurrent(n, args.setup_concurrency, move |i| {
            let (est, failed, closed, ping_ms, first_error, accounts, stop, last) = (
                est.clone(),
                failed.clone(),
                closed.clone(),
                ping_ms.clone(),
                first_error.clone(),
                accounts.clone(),
                stop_rx.clone(),
                last.clone(),
            );
            async move {
                let result = async {
                    let account = accounts
                        .get(i / per_user)
                        .ok_or_else(|| io::Error::other("no account"))?;
                    let (to, ws) = websocket.map_or((addr, false), |ws| (ws, true));
                    let (mut c, welcome) = SetupConn::open_on(to, source(i, sources), ws).await?;
                    c.resume(account.token).await?;
                    c.sync_all(0).await?;
                    let every = u64::from(welcome.limits.heartbeat_interval_ms).max(1000);
                    ping_ms.store(every, Ordering::Relaxed);
                    tokio::spawn(idle(c.stream, Duration::from_millis(every), stop, closed));
                    io::Result::Ok(())
                }
                .await;
                match result {
                    Ok(()) => {
                        let e = est.fetch_add(1, Ordering::Relaxed) + 1;
                        let now = now_ns();
                        let prev = last.load(Ordering::Relaxed);
                        if !quiet
                            && now - prev > 1_000_000_000
                            && last
                                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                                .is_ok()
                        {
                            eprintln!("  [W4] {e} connections open");
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("connection {i}: {e}"));
                    }
                }
                Ok(())
            }
        })
        .await;
    }
    let setup_secs = (now_ns() - start) as f64 / 1e9;
    r.established = established.load(Ordering::Relaxed);
    r.failed = failed.load(Ordering::Relaxed);
    r.first_error = first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    r.setup_s = (setup_secs * 100.0).round() / 100.0;
    r.setup_per_s = crate::stats::per_sec(r.established, setup_secs);
    r.ping_interval_ms = ping_ms.load(Ordering::Relaxed);
    // Let the server settle (connections migrate to their owner cores) before measuring.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    r.rss_after_bytes = pid.and_then(rss_bytes);
    if let Some((sockets, mem)) = tcp_sockstat() {
        r.tcp_sockets_after = Some(sockets);
        r.tcp_mem_after_bytes = Some(mem);
    }
    r.slab_after_bytes = slab_bytes();
    let hold = Duration::from_millis(args.idle_hold_ms);
    tokio::time::sleep(hold).await;
    r.hold_s = hold.as_secs_f64();
    r.rss_end_bytes = pid.and_then(rss_bytes);
    r.closed_during_hold = closed.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    if r.established > 0 {
        let n = r.established as f64;
        if let (Some(a), Some(b)) = (r.rss_before_bytes, r.rss_after_bytes) {
            r.rss_per_connection_bytes = Some(((b as f64 - a as f64) / n).round());
        }
        if let (Some(a), Some(b)) = (r.slab_before_bytes, r.slab_after_bytes) {
            r.slab_per_connection_bytes = Some(((b as f64 - a as f64) / n).round());
        }
        if let (Some(a), Some(b)) = (r.tcp_mem_before_bytes, r.tcp_mem_after_bytes) {
            r.tcp_mem_per_connection_bytes = Some(((b as f64 - a as f64) / n).round());
        }
    }
    r.completed = r.established == n as u64 && r.closed_during_hold == 0;
    if !args.quiet {
        eprintln!("  {}", r.summary());
    }
    // Give the tasks a moment to close their sockets before the next phase.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(r)
}
