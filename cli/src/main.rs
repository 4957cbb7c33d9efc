//! `tern`: the Tern terminal client.
//!
//! Two faces over one network layer. Without a subcommand (or with `tern chat`) it is an
//! interactive client in the terminal; with one it is a scripting tool that does one thing and
//! prints the result as text or, with `--json`, as JSON.
//!
//! # Layout
//!
//! - `cli.rs`: the command line (clap derive).
//! - `commands.rs`: the scripting subcommands and their text and JSON output.
//! - `config.rs`: the config file (server, session token, known user names), mode 0600.
//! - `net.rs`: every request to the server, and the worker the interactive client talks to through
//!   channels; the only module that holds a connection (the others see protocol types, and
//!   `error.rs` wraps the client library's error).
//! - `app.rs`: the interactive client's state machine: keys and network reports in, requests out.
//!   No terminal, no sockets, no clock: it is tested on its own, in `app/tests.rs`.
//! - `ui.rs`: draws an [`app::App`] with ratatui.
//! - `tui.rs`: the interactive client's loop: terminal set-up, keys, ticks, the worker.
//! - `format.rs`: timestamps, ages and sizes as text.
//! - `error.rs`: [`error::CliError`] and the exit codes.
//!
//! # Data flow of the interactive client
//!
//! ```text
//!  keys (crossterm) ─┐                 ┌─► ui::draw (ratatui)
//!  ticks ────────────┼─► App::handle_* ┤
//!  net::NetEvent ────┘                 └─► net::Request ─► worker tasks ─► tern_client::Client
//! ```

#![forbid(unsafe_code)]

mod app;
mod cli;
mod commands;
mod config;
mod error;
mod format;
mod net;
mod tui;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::Context;
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tern: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if json {
                let body = serde_json::json!({
                    "error": error.report(),
                    "code": error.server_code(),
                    "exit": error.exit_code(),
                });
                eprintln!("{body}");
            } else {
                eprintln!("tern: {}", error.report());
            }
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let config_path = match cli.config {
        Some(path) => path,
        None => config::default_path()?,
    };
    let mut ctx = Context::load(config_path, cli.server)?;
    let command = cli.command.unwrap_or(Command::Chat);
    if matches!(command, Command::Chat) {
        return tui::run(&mut ctx).await;
    }
    let result = commands::run(command, &mut ctx).await;
    // Names learned and sessions created are kept even when a later step failed.
    ctx.save()?;
    let report = result?;
    if cli.json {
        println!("{}", report.json);
    } else if !report.text.is_empty() {
        println!("{}", report.text);
    }
    Ok(())
}
