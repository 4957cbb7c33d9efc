//! The `ternd` binary: parse the configuration, set up logging, start the server, and shut it down
//! gracefully on SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use tern_server::config::{Cli, LogFormat};
use tern_server::{Config, Server};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's allocator: in W1 it took 9 to 21 % off the CPU per message, and
/// 0.2 KiB off each idle connection (`bench/RESULTS.md`). RocksDB's own allocations stay with
/// glibc.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // A panic is a bug. A core thread that died would leave its users unserved while the process
    // looks alive, so any panic ends the whole process; the write-ahead log keeps what was
    // acknowledged, and a supervisor restarts it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let mut config = match Config::resolve(Cli::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ternd: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Some(open_files) = raise_open_files_limit() {
        cap_connections_per_core(&mut config, open_files);
    }
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "ternd cannot start");
            return ExitCode::FAILURE;
        }
    };
    // One machine-readable line on stdout, for scripts and tests that start ternd on port 0.
    // `tcp=off` with --tls-only; no `tls=` field without TLS; `ws=` last (wss:// with TLS).
    let tcp = server.tcp_addr.map_or("off".to_owned(), |a| a.to_string());
    let (metrics, ws) = (server.metrics_addr, server.ws_addr);
    match server.tls_addr {
        Some(tls) => println!("listening tcp={tcp} tls={tls} metrics={metrics} ws={ws}"),
        None => println!("listening tcp={tcp} metrics={metrics} ws={ws}"),
    }
    if let Err(e) = wait_for_signal() {
        tracing::error!(error = %e, "cannot wait for signals; shutting down");
    }
    tracing::info!("shutting down");
    server.shutdown();
    ExitCode::SUCCESS
}

/// Every connection is a file descriptor, and the usual default of 1,024 (or even 20,000) open files
/// is far below the connections one core serves. The soft limit goes up to the hard one; a process
/// allowed to (root, or `CAP_SYS_RESOURCE`) also lifts the hard limit to the kernel's
/// `fs.nr_open`, at most 1,048,576. Returns the soft limit it leaves, when it can be read.
fn raise_open_files_limit() -> Option<u64> {
    use rlimit::Resource;
    let wanted = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    let lifted = Resource::NOFILE.set(wanted, wanted).is_ok();
    if !lifted {
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!(error = %e, "cannot raise the open files limit");
        }
    }
    let (soft, _) = Resource::NOFILE.get().ok()?;
    tracing::info!(open_files_max = soft, "open files limit");
    Some(soft)
}

/// Open files kept back from connections: RocksDB's files, the listeners, the metrics endpoint,
/// the push worker's sockets, sockets being moved between cores.
const FDS_RESERVED: u64 = 1_024;

/// Past the open files limit, accept(2) fails and the client hears nothing; below it, the
/// connection limit refuses with `UNAVAILABLE`. So the connections per core are capped to what the
/// limit leaves each core, with a note when the default is capped and a warning when a configured
/// value is.
fn cap_connections_per_core(config: &mut Config, open_files: u64) {
    let cores = config.cores.max(1) as u64;
    let fit = (open_files.saturating_sub(FDS_RESERVED) / cores).max(1);
    let fit = usize::try_from(fit).unwrap_or(usize::MAX);
    let configured = config.connections_per_core_max;
    if configured <= fit {
        return;
    }
    config.connections_per_core_max = fit;
    let message = "the open files limit caps the connections per core";
    if configured == Config::default().connections_per_core_max {
        tracing::info!(
            open_files_max = open_files,
            connections_per_core_max = fit,
            "{message}"
        );
    } else {
        tracing::warn!(
            configured,
            open_files_max = open_files,
            connections_per_core_max = fit,
            "{message}"
        );
    }
}

fn wait_for_signal() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
