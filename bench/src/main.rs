//! `tern-bench`: the Tern benchmark harness.
//!
//! It drives a `ternd` (one it starts on a temporary data directory, or one already running) with
//! five workloads, measures the same messaging workloads against its own null server (the Tern
//! framing with routing only) in the same run, prints a table and writes a JSON report. See
//! `bench/README.md`.

#![forbid(unsafe_code)]

mod catchup;
mod conn;
mod fleet;
mod idle;
mod media;
mod null_server;
mod report;
mod stats;
mod storm;
mod target;
mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fleet::{Fleet, FleetOptions, Mode, PhaseResult};
use crate::report::{Report, W1Report, W2Group, W2Report};
use crate::target::{find_ternd, Environment, Spawned};

/// The Tern benchmark harness.
#[derive(Debug, Parser)]
#[command(name = "tern-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the null server: the Tern framing with no storage and no logic beyond routing.
    NullServer {
        /// Address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1:7500")]
        listen: SocketAddr,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

/// Options of a benchmark run.
#[derive(Clone, Debug, Args)]
pub(crate) struct RunArgs {
    /// A running ternd to test, instead of starting one.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The process id of the ternd at `--addr`, for W4's memory figures.
    #[arg(long)]
    pid: Option<u32>,
    /// The metrics address of the ternd at `--addr`, for its counters in the report.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// The WebSocket address of the ternd at `--addr`, for W1 and W4 over WebSocket.
    #[arg(long)]
    ws_addr: Option<SocketAddr>,
    /// Skip W1 and W4 over WebSocket.
    #[arg(long)]
    no_ws: bool,
    /// The ternd binary to start [default: `ternd` next to this executable].
    #[arg(long)]
    ternd: Option<PathBuf>,
    /// I/O engine of the started ternd: auto, epoll or uring.
    #[arg(long, default_value = "auto")]
    io_engine: String,
    /// Start ternd with `--fsync`.
    #[arg(long)]
    fsync: bool,
    /// Core threads of the started ternd.
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// PBKDF2 iterations of the started ternd (W3 measures logins at `--login-iterations` on a
    /// second ternd).
    #[arg(long, default_value_t = 1000)]
    password_iterations: u32,
    /// Extra flags for the started ternd (repeat for each word).
    #[arg(long = "ternd-arg", allow_hyphen_values = true)]
    ternd_args: Vec<String>,
    /// Workloads to run, comma-separated: w1,w2,w3,w4,w5,w6.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4,w5,w6")]
    workloads: Vec<String>,
    /// Skip the null-server reference.
    #[arg(long)]
    no_null: bool,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Worker threads of the null server.
    #[arg(long, default_value_t = 2)]
    null_threads: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "tern-bench-results.json")]
    out: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,

    /// W1/W2: connected users (one connection each).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// W1: direct conversations each user opens (with the next users in order).
    #[arg(long, default_value_t = 4)]
    peers: usize,
    /// W1/W2: message body size in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// W1/W2: acknowledge live updates every this many (0: never).
    #[arg(long, default_value_t = 256)]
    ack_every: u64,
    /// W1: length of each load phase, ms.
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    /// W1: unanswered sends per connection in closed loop.
    #[arg(long, default_value_t = 16)]
    window: u32,
    /// W1: offered rates of the open-loop steps (sends/s); default: fractions of the closed-loop rate.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// W1: open-loop steps as fractions of the closed-loop rate, when `--rates` is not given.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.5,0.75,0.9")]
    rate_fractions: Vec<f64>,
    /// W1: open-loop generator tasks.
    #[arg(long, default_value_t = 4)]
    lanes: usize,
    /// Longest wait for in-flight sends and deliveries after a phase, ms.
    #[arg(long, default_value_t = 15_000)]
    drain_ms: u64,
    /// W2: group sizes.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    group_sizes: Vec<usize>,
    /// W2: unanswered sends per connection.
    #[arg(long, default_value_t = 1)]
    group_window: u32,

    /// W3: resumes to perform.
    #[arg(long, default_value_t = 20_000)]
    resumes: usize,
    /// W3: connections in flight at once.
    #[arg(long, default_value_t = 64)]
    storm_concurrency: usize,
    /// W3: most password logins to perform.
    #[arg(long, default_value_t = 200)]
    logins: usize,
    /// W3: longest time spent on logins, ms.
    #[arg(long, default_value_t = 8_000)]
    login_ms: u64,
    /// W3: PBKDF2 iterations of the ternd the logins run against (a second ternd when this one is
    /// started here; the main ternd's setting otherwise).
    #[arg(long, default_value_t = 600_000)]
    login_iterations: u32,

    /// W4: idle authenticated connections.
    #[arg(long, default_value_t = 50_000)]
    idle: usize,
    /// W4: connections per user (each user's device resumed this many times).
    #[arg(long, default_value_t = 10)]
    idle_per_user: usize,
    /// W4: source addresses 127.0.0.2, 127.0.0.3, … the connections are spread over.
    #[arg(long, default_value_t = 8)]
    source_addrs: u8,
    /// W4: how long the connections are held once all are open, ms.
    #[arg(long, default_value_t = 5_000)]
    idle_hold_ms: u64,

    /// W5: messages the offline device catches up on.
    #[arg(long, default_value_t = 100_000)]
    catchup: usize,
    /// W5: users sending them (one direct conversation each with the offline user).
    #[arg(long, default_value_t = 4)]
    catchup_senders: usize,

    /// W6: size of the attachment downloaded beside the chat, MiB.
    #[arg(long, default_value_t = 50)]
    media_mib: u64,
    /// W6: chat messages in each phase (alone, then beside the download).
    #[arg(long, default_value_t = 300)]
    media_messages: usize,
    /// W6: pause between one message's `Sent` and the next `Send`, ms.
    #[arg(long, default_value_t = 5)]
    media_interval_ms: u64,

    /// The whole run stops, failing, after this many seconds.
    #[arg(long, default_value_t = 3600)]
    time_limit_s: u64,

    /// Parallel connections while setting up users.
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
}

impl RunArgs {
    fn wants(&self, w: &str) -> bool {
        self.workloads.iter().any(|x| x.eq_ignore_ascii_case(w))
    }

    fn fleet_options(&self, prefix: &str) -> FleetOptions {
        FleetOptions {
            users: self.users,
            peers: self.peers,
            group_sizes: if self.wants("w2") {
                self.group_sizes.clone()
            } else {
                Vec::new()
            },
            body_bytes: self.body_bytes,
            ack_every: self.ack_every,
            setup_concurrency: self.setup_concurrency,
            websocket: false,
            prefix: prefix.into(),
        }
    }

    /// Starts another `ternd` like the first, on an empty data directory of its own.
    fn fresh_ternd(&self) -> std::io::Result<Spawned> {
        Spawned::ternd(
            &find_ternd(self.ternd.as_deref())?,
            &self.ternd_flags(self.password_iterations),
        )
    }

    /// Sets up W1's and W2's users on the server at `addr`, whose process and metrics address
    /// the phases report on.
    async fn fleet(
        &self,
        addr: SocketAddr,
        pid: Option<u32>,
        metrics: Option<SocketAddr>,
        prefix: &str,
    ) -> std::io::Result<Fleet> {
        say(self, &format!("setting up {} users", self.users));
        let mut fleet = Fleet::setup(addr, &self.fleet_options(prefix)).await?;
        fleet.server_pid = pid;
        fleet.server_metrics = metrics;
        Ok(fleet)
    }

    fn ternd_flags(&self, iterations: u32) -> Vec<String> {
        let mut f: Vec<String> = [
            "--cores",
            &self.cores.to_string(),
            "--io-engine",
            &self.io_engine,
            "--password-iterations",
            &iterations.to_string(),
            "--send-rate-per-connection",
            "0",
            "--send-rate-per-user",
            "0",
            "--devices-per-user-max",
            "64",
            "--group-members-max",
            &self
                .group_sizes
                .iter()
                .copied()
                .max()
                .unwrap_or(100)
                .max(2)
                .to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.fsync {
            f.push("--fsync".into());
        }
        f.extend(self.ternd_args.iter().cloned());
        f
    }
}

fn raise_nofile() {
    // As root the hard limit may go up to fs.nr_open; otherwise the soft limit up to the hard one.
    let want = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
}

/// The allocator `ternd` uses, so that the null server and the load generator are measured
/// beside it on equal terms.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    let threads = match &cli.command {
        Some(Command::NullServer { threads, .. }) => *threads,
        None => cli.run.threads,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::NullServer { listen, .. }) => rt.block_on(null_server::serve(listen)),
        None => {
            let limit = Duration::from_secs(cli.run.time_limit_s);
            rt.block_on(async move {
                tokio::time::timeout(limit, run(cli.run))
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("the run hit --time-limit-s")))
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn say(args: &RunArgs, msg: &str) {
    if !args.quiet {
        eprintln!("{msg}");
    }
}

async fn run(args: RunArgs) -> std::io::Result<()> {
    let engine = if args.addr.is_some() {
        "external".to_string()
    } else {
        args.io_engine.clone()
    };
    let mut report = Report::new(Environment::probe(&engine, args.fsync));
    let prefix = format!("b{}x", report.environment.started_unix % 1_000_000_000);
    let mut server = None;
    let mut ws_addr = args.ws_addr;
    let mut addr = match args.addr {
        Some(a) => a,
        None => {
            let path = find_ternd(args.ternd.as_deref())?;
            let flags = args.ternd_flags(args.password_iterations);
            report.ternd_flags = flags.clone();
            report.ternd_binary = std::fs::metadata(&path).ok().map(|m| {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                format!(
                    "{} ({} bytes, modified {modified})",
                    path.display(),
                    m.len()
                )
            });
            let s = Spawned::ternd(&path, &flags)?;
            say(
                &args,
                &format!("started {} at {} (pid {})", path.display(), s.addr, s.pid()),
            );
            let a = s.addr;
            report.metrics = s.metrics.map(|m| m.to_string());
            ws_addr = s.ws;
            server = Some(s);
            a
        }
    };
    report.target = addr.to_string();
    let mut pid = server.as_ref().map(|s| s.pid()).or(args.pid);
    let drain = Duration::from_millis(args.drain_ms);
    let duration = Duration::from_millis(args.duration_ms);
    let progress = !args.quiet;

    let mut accounts = Vec::new();
    if args.wants("w1") || args.wants("w2") {
        let metrics = server
            .as_ref()
            .and_then(|s| s.metrics)
            .or(args.metrics_addr);
        let mut fleet = args.fleet(addr, pid, metrics, &prefix).await?;
        let mut w2_fresh_server = false;
        if args.wants("w1") {
            say(&args, "W1 one-to-one, closed loop");
            let closed = w1_closed(&fleet, &args, "W1 closed").await;
            let rates: Vec<f64> = if args.rates.is_empty() {
                args.rate_fractions
                    .iter()
                    .map(|f| (f * closed.sent_per_s).round())
                    .filter(|r| *r >= 1.0)
                    .collect()
            } else {
                args.rates.clone()
            };
            let open = w1_open(&fleet, &args, &rates, "").await;
            let mut w1 = W1Report::new(&args, closed, open);
            if let (Some(ws), false) = (ws_addr, args.no_ws) {
                // The reference for the WebSocket loop runs right before it: after the open-loop
                // steps the database is bigger, with compaction due, than in the first closed
                // loop, and comparing with that one measured the steps more than the transport.
                say(&args, "W1 one-to-one, closed loop again, beside WebSocket");
                let tcp = w1_closed(&fleet, &args, "W1 closed (tcp, before ws)").await;
                say(&args, "W1 one-to-one over WebSocket, closed loop");
                let mut options = args.fleet_options(&format!("{prefix}w"));
                options.websocket = true;
                options.group_sizes.clear();
                let mut ws_fleet = Fleet::setup(ws, &options).await?;
                ws_fleet.server_pid = fleet.server_pid;
                ws_fleet.server_metrics = fleet.server_metrics;
                let r = w1_closed(&ws_fleet, &args, "W1 closed (ws)").await;
                ws_fleet.shutdown().await;
                w1.set_ws(tcp, r);
            }
            report.w1 = Some(w1);
        }
        if args.wants("w2") && args.wants("w1") && server.is_some() {
            // W2 on a ternd of its own when started here, as W4: W1's loops leave compaction
            // due, which W2 would pay for, so that its figure would depend on W1's speed.
            fleet.shutdown().await;
            if let Some(s) = server.as_mut() {
                s.stop();
            }
            let s = args.fresh_ternd()?;
            say(
                &args,
                &format!(
                    "started a fresh ternd for W2 at {} (pid {})",
                    s.addr,
                    s.pid()
                ),
            );
            (addr, pid, ws_addr) = (s.addr, Some(s.pid()), s.ws);
            fleet = args
                .fleet(addr, pid, s.metrics, &format!("{prefix}g"))
                .await?;
            server = Some(s);
            w2_fresh_server = true;
        }
        if args.wants("w2") {
            let mut groups = Vec::new();
            for (slot, &size) in fleet.group_sizes.clone().iter().enumerate() {
                if size < 2 || size > args.users {
                    continue;
                }
                say(&args, &format!("W2 groups of {size}, closed loop"));
                let r = fleet
                    .closed_loop(
                        &format!("W2 groups of {size}"),
                        Mode::Group(slot),
                        args.group_window,
                        duration,
                        drain,
                        progress,
                    )
                    .await;
                groups.push(W2Group::new(size, r));
            }
            report.w2 = Some(W2Report {
                fresh_server: w2_fresh_server,
                groups,
            });
        }
        accounts = fleet.accounts.clone();
        fleet.shutdown().await;
    }
    if args.wants("w3") {
        say(&args, "W3 connection storm");
        let w3 = storm::run(&args, addr, &accounts, &prefix, server.is_some(), pid).await?;
        report.w3 = Some(w3);
    }
    if args.wants("w5") {
        say(&args, &format!("W5 catch-up of {} messages", args.catchup));
        let mut w5 = catchup::run(&args, addr, &prefix).await?;
        if let Some(s) = server.as_mut() {
            say(&args, "W5 again after a restart, caches cold");
            catchup::cold(&args, s, &mut w5).await?;
            (addr, pid) = (s.addr, Some(s.pid()));
        }
        report.w5 = Some(w5);
    }
    if args.wants("w6") {
        say(
            &args,
            &format!("W6 chat beside a {} MiB download", args.media_mib),
        );
        report.w6 = Some(media::run(&args, addr, &prefix).await?);
    }
    if args.wants("w4") {
        let server_was_started = server.is_some();
        say(&args, &format!("W4 {} idle connections", args.idle));
        // On a ternd of its own when started here, so memory freed by the earlier workloads
        // cannot hide what the connections cost.
        let fresh = match server.take() {
            Some(mut s) => {
                s.stop();
                Some(args.fresh_ternd()?)
            }
            None => None,
        };
        let (w4_addr, w4_pid) = fresh
            .as_ref()
            .map_or((addr, pid), |s| (s.addr, Some(s.pid())));
        let mut w4 = idle::run(&args, w4_addr, w4_pid, &prefix, None).await?;
        w4.fresh_server = fresh.is_some();
        let w4_ws_addr = fresh.as_ref().map_or(ws_addr, |s| s.ws);
        drop(fresh);
        if let (Some(_), false) = (w4_ws_addr, args.no_ws) {
            say(
                &args,
                &format!("W4 {} idle connections over WebSocket", args.idle),
            );
            // A fresh ternd again, so both transports start from the same memory.
            let again = match server_was_started {
                true => Some(args.fresh_ternd()?),
                false => None,
            };
            let (addr, pid, ws) = again
                .as_ref()
                .map_or((addr, pid, w4_ws_addr), |s| (s.addr, Some(s.pid()), s.ws));
            let mut ws_report = idle::run(&args, addr, pid, &format!("{prefix}v"), ws).await?;
            ws_report.fresh_server = again.is_some();
            if let (Some(a), Some(b)) = (
                w4.rss_per_connection_bytes,
                ws_report.rss_per_connection_bytes,
            ) {
                report.w4_ws_extra_bytes_per_connection = Some((b - a).round());
            }
            report.w4_ws = Some(ws_report);
        }
        report.w4 = Some(w4);
    }
    if let Some(mut s) = server.take() {
        s.stop();
    }

    if !args.no_null && (args.wants("w1") || args.wants("w2") || args.wants("w3")) {
        say(&args, "null server reference");
        let null = Spawned::null_server(args.null_threads)?;
        if let Some(w3) = report.w3.as_mut() {
            let r = storm::null_resumes(&args, null.addr, Some(null.pid()), &prefix).await?;
            say(&args, &format!("  null server resumes: {:.0}/s", r.per_s));
            w3.set_null(r);
        }
        if !(args.wants("w1") || args.wants("w2")) {
            return finish(&args, report);
        }
        let mut fleet = Fleet::setup(null.addr, &args.fleet_options(&prefix)).await?;
        fleet.server_pid = Some(null.pid());
        if let Some(w1) = report.w1.as_mut() {
            let r = fleet
                .closed_loop(
                    "W1 closed (null)",
                    Mode::Direct,
                    args.window,
                    duration,
                    drain,
                    progress,
                )
                .await;
            w1.set_null(r);
            // The same open-loop steps: whether their latency is the server's or the machine's.
            let rates: Vec<f64> = w1.open.iter().filter_map(|p| p.offered_rate).collect();
            w1.set_null_open(w1_open(&fleet, &args, &rates, " (null)").await);
        }
        if let Some(w2) = report.w2.as_mut() {
            for g in w2.groups.iter_mut() {
                let Some(slot) = fleet.group_sizes.iter().position(|&s| s == g.size) else {
                    continue;
                };
                let r = fleet
                    .closed_loop(
                        &format!("W2 groups of {} (null)", g.size),
                        Mode::Group(slot),
                        args.group_window,
                        duration,
                        drain,
                        progress,
                    )
                    .await;
                g.set_null(r);
            }
        }
        fleet.shutdown().await;
    }

    finish(&args, report)
}

/// W1's closed loop over the fleet's transport.
async fn w1_closed(fleet: &Fleet, args: &RunArgs, name: &str) -> PhaseResult {
    let duration = Duration::from_millis(args.duration_ms);
    let drain = Duration::from_millis(args.drain_ms);
    fleet
        .closed_loop(
            name,
            Mode::Direct,
            args.window,
            duration,
            drain,
            !args.quiet,
        )
        .await
}

/// W1's open-loop steps at `rates`, each phase named with `suffix`.
async fn w1_open(fleet: &Fleet, args: &RunArgs, rates: &[f64], suffix: &str) -> Vec<PhaseResult> {
    let duration = Duration::from_millis(args.duration_ms);
    let drain = Duration::from_millis(args.drain_ms);
    let mut open = Vec::new();
    for &rate in rates {
        say(
            args,
            &format!("W1 one-to-one, open loop at {rate} sends/s{suffix}"),
        );
        open.push(
            fleet
                .open_loop(
                    &format!("W1 open {rate}/s{suffix}"),
                    Mode::Direct,
                    rate,
                    duration,
                    drain,
                    args.lanes,
                    !args.quiet,
                )
                .await,
        );
    }
    open
}

fn finish(args: &RunArgs, mut report: Report) -> std::io::Result<()> {
    report.finish();
    println!("{}", report.table());
    let json = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(&args.out, json + "\n")?;
    say(args, &format!("report written to {}", args.out.display()));
    Ok(())
}
