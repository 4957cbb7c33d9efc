//! The `ternd` binary: parse the configuration, set up logging, start the server, and shut it down
//! gracefully on SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use tern_server::config::{Cli, LogFormat};
use tern_server::{Config, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // A panic is a bug. A core thread that died would leave its users unserved while the process
    // looks alive, so any panic ends the whole process; the write-ahead log keeps what was
    // acknowledged, and a supervisor restarts it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let config = match Config::resolve(Cli::parse()) {
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
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "ternd cannot start");
            return ExitCode::FAILURE;
        }
    };
    // One machine-readable line on stdout, for scripts and tests that start ternd on port 0.
    println!(
        "listening tcp={} metrics={}",
        server.local_addr, server.metrics_addr
    );
    if let Err(e) = wait_for_signal() {
        tracing::error!(error = %e, "cannot wait for signals; shutting down");
    }
    tracing::info!("shutting down");
    server.shutdown();
    ExitCode::SUCCESS
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
