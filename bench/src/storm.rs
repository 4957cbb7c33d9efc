//! W3, the connection storm: new connections that authenticate, as fast as the server takes them.
//! A resume is connect, `Hello`, `Resume` (the reconnect of a device that has a token); a login is
//! connect, `Hello`, `Login` (a password check, PBKDF2 on the server). Each connection closes with
//! a reset right after `Authenticated`, so no `TIME_WAIT` piles up on the client.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::conn::SetupConn;
use crate::fleet::{for_each_concurrent, Account};
use crate::stats::{now_ns, per_sec, Latency, SharedHistogram};
use crate::target::{round_ms, CpuSample, Spawned};
use crate::RunArgs;

/// One kind of storm.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct StormResult {
    /// Connections attempted.
    pub(crate) attempted: u64,
    /// Connections that authenticated.
    pub(crate) ok: u64,
    /// Connections that failed.
    pub(crate) errors: u64,
    /// The first error seen, if any.
    pub(crate) first_error: Option<String>,
    /// Connections in flight at once.
    pub(crate) concurrency: usize,
    /// Wall time.
    pub(crate) duration_s: f64,
    /// Authenticated connections per second.
    pub(crate) per_s: f64,
    /// Connect to `Authenticated`.
    pub(crate) latency: Latency,
    /// CPU seconds the server used meanwhile.
    pub(crate) server_cpu_s: Option<f64>,
    /// CPU seconds this process used meanwhile.
    pub(crate) bench_cpu_s: Option<f64>,
    /// CPU seconds the whole machine was busy meanwhile.
    pub(crate) machine_busy_cpu_s: Option<f64>,
}

/// W3's report.
#[derive(Debug, Serialize)]
pub(crate) struct W3Report {
    /// Resumes.
    pub(crate) resumes: StormResult,
    /// Password logins.
    pub(crate) logins: StormResult,
    /// The same resumes against the null server, when it ran.
    pub(crate) null_resumes: Option<StormResult>,
    /// ternd's resumes per second over the null server's.
    pub(crate) resume_ratio_to_null: Option<f64>,
    /// PBKDF2 iterations of the server the logins ran against.
    pub(crate) login_iterations: Option<u32>,
    /// Every attempt authenticated.
    pub(crate) completed: bool,
}

impl W3Report {
    /// One line for the table.
    pub(crate) fn summary(&self) -> String {
        format!(
            "W3 resumes: {} of {} in {:.2} s = {:.0}/s (latency {}; null server {}); logins at {} iterations: {} in {:.2} s = {:.1}/s (latency {})",
            self.resumes.ok,
            self.resumes.attempted,
            self.resumes.duration_s,
            self.resumes.per_s,
            self.resumes.latency.short(),
            self.null_resumes
                .as_ref()
                .map_or("-".into(), |n| format!("{:.0}/s", n.per_s)),
            self.login_iterations.map_or("the server's".into(), |i| i.to_string()),
            self.logins.ok,
            self.logins.duration_s,
            self.logins.per_s,
            self.logins.latency.short(),
        )
    }
}

/// The `i`-th source address of `count`: 127.0.0.2, 127.0.0.3, …
pub(crate) fn source(i: usize, count: u8) -> Option<IpAddr> {
    (count > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % count as usize) as u8)))
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    Resume,
    Login,
}

#[allow(clippy::too_many_arguments)]
async fn storm(
    addr: SocketAddr,
    pid: Option<u32>,
    accounts: Arc<Vec<Account>>,
    auth: Auth,
    count: usize,
    concurrency: usize,
    time_limit: Duration,
    sources: u8,
) -> StormResult {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let attempted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let hist = Arc::new(SharedHistogram::new());
    let cpu_before = CpuSample::now(pid);
    let start = now_ns();
    let deadline = start + time_limit.as_nanos() as u64;
    let (ok2, errors2, attempted2, hist2, fe2, stop2) = (
        ok.clone(),
        errors.clone(),
        attempted.clone(),
        hist.clone(),
        first_error.clone(),
        stop.clone(),
    );
    let _ = for_each_concurrent(count, concurrency, move |i| {
        let (ok, errors, attempted, hist, first_error, accounts, stop) = (
            ok2.clone(),
            errors2.clone(),
            attempted2.clone(),
            hist2.clone(),
            fe2.clone(),
            accounts.clone(),
            stop2.clone(),
        );
        async move {
            if stop.load(Ordering::Relaxed) || now_ns() >= deadline || accounts.is_empty() {
                stop.store(true, Ordering::Relaxed);
                return Ok(());
            }
            attempted.fetch_add(1, Ordering::Relaxed);
            let account = &accounts[i % accounts.len()];
            let t0 = now_ns();
            let result = async {
                let (mut c, _) = SetupConn::open(addr, source(i, sources)).await?;
                match auth {
                    Auth::Resume => c.resume(account.token).await?,
                    Auth::Login => c.login(&account.username).await?,
                };
                let _ = c.stream.set_zero_linger();
                io::Result::Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    hist.record_ns(i, now_ns() - t0);
                }
                Err(e) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| e.to_string());
                }
            }
            Ok(())
        }
    })
    .await;
    let secs = (now_ns() - start) as f64 / 1e9;
    let cpu = CpuSample::now(pid).since(&cpu_before);
    let ok = ok.load(Ordering::Relaxed);
    let first_error = first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    StormResult {
        attempted: attempted.load(Ordering::Relaxed),
        ok,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        concurrency,
        duration_s: round_ms(secs),
        per_s: per_sec(ok, secs),
        latency: Latency::of(&hist.take()),
        server_cpu_s: cpu.server.map(round_ms),
        bench_cpu_s: cpu.bench.map(round_ms),
        machine_busy_cpu_s: cpu.busy.map(round_ms),
    }
}

/// Registers `n` users named `{prefix}{i}` with at most `concurrency` at a time.
pub(crate) async fn register_users(
    addr: SocketAddr,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> io::Result<Vec<Account>> {
    let slots: Arc<std::sync::Mutex<Vec<Option<Account>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; n]));
    let (s2, prefix) = (slots.clone(), prefix.to_owned());
    for_each_concurrent(n, concurrency, move |i| {
        let slots = s2.clone();
        let username = format!("{prefix}{i}");
        async move {
            let (mut c, _) = SetupConn::open(addr, None).await?;
            let auth = c.register(&username).await?;
            slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Account {
                username,
                user_id: auth.user_id,
                token: auth.token.unwrap_or_default(),
            });
            Ok(())
        }
    })
    .await?;
    let accounts = slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
        .filter_map(Option::take)
        .collect();
    Ok(accounts)
}

/// Runs W3.
pub(crate) async fn run(
    args: &RunArgs,
    addr: SocketAddr,
    fleet_accounts: &[Account],
    prefix: &str,
    spawned: bool,
    pid: Option<u32>,
) -> io::Result<W3Report> {
    let accounts = if fleet_accounts.len() >= args.storm_concurrency {
        fleet_accounts.to_vec()
    } else {
        let n = (args.storm_concurrency * 2).max(16);
        register_users(addr, &format!("{prefix}s"), n, args.setup_concurrency).await?
    };
    let accounts = Arc::new(accounts);
    let resumes = storm(
        addr,
        pid,
        accounts.clone(),
        Auth::Resume,
        args.resumes,
        args.storm_concurrency,
        Duration::from_secs(300),
        args.source_addrs,
    )
    .await;
    if !args.quiet {
        eprintln!(
            "  resumes: {} in {:.2} s = {:.0}/s",
            resumes.ok, resumes.duration_s, resumes.per_s
        );
    }

    // Logins: against a second ternd that hashes with `--login-iterations` when this run started
    // ternd itself, so the main one can register its users cheaply.
    let time_limit = Duration::from_millis(args.login_ms);
    let (logins, login_iterations) = if spawned {
        let path = crate::target::find_ternd(args.ternd.as_deref())?;
        let server = Spawned::ternd(&path, &args.ternd_flags(args.login_iterations))?;
        // Each user takes at most 60 logins (ternd allows 64 devices here).
        let users = args.logins.div_ceil(60).max(2);
        let login_accounts =
            Arc::new(register_users(server.addr, &format!("{prefix}l"), users, users).await?);
        let r = storm(
            server.addr,
            Some(server.pid()),
            login_accounts,
            Auth::Login,
            args.logins,
            (2 * args.cores).max(2),
            time_limit,
            0,
        )
        .await;
        drop(server);
        (r, Some(args.login_iterations))
    } else {
        let r = storm(
            addr,
            pid,
            accounts.clone(),
            Auth::Login,
            args.logins.min(accounts.len() * 8),
            4,
            time_limit,
            0,
        )
        .await;
        (r, None)
    };
    if !args.quiet {
        eprintln!(
            "  logins: {} in {:.2} s = {:.1}/s",
            logins.ok, logins.duration_s, logins.per_s
        );
    }
    let completed = resumes.ok == resumes.attempted
        && resumes.ok > 0
        && logins.ok == logins.attempted
        && logins.ok > 0;
    Ok(W3Report {
        resumes,
        logins,
        null_resumes: None,
        resume_ratio_to_null: None,
        login_iterations,
        completed,
    })
}

/// The resume storm against the null server, for reference.
pub(crate) async fn null_resumes(
    args: &RunArgs,
    addr: SocketAddr,
    pid: Option<u32>,
    prefix: &str,
) -> io::Result<StormResult> {
    let n = (args.storm_concurrency * 2).max(16);
    let accounts =
        Arc::new(register_users(addr, &format!("{prefix}n"), n, args.setup_concurrency).await?);
    Ok(storm(
        addr,
        pid,
        accounts,
        Auth::Resume,
        args.resumes,
        args.storm_concurrency,
        Duration::from_secs(300),
        args.source_addrs,
    )
    .await)
}

impl W3Report {
    /// Adds the null server's resumes.
    pub(crate) fn set_null(&mut self, null: StormResult) {
        self.resume_ratio_to_null =
            (null.per_s > 0.0).then(|| round_ms(self.resumes.per_s / null.per_s));
        self.null_resumes = Some(null);
    }
}
