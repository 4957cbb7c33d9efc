//! The interactive client's loop: it owns the terminal and feeds the [`App`] keys, network reports
//! and clock ticks, hands the requests it returns to the network worker, and redraws.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) on every way out: a normal
//! quit, an error, and a panic.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Stdout};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures_util::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::mpsc::error::TrySendError;

use crate::app::App;
use crate::commands::Context;
use crate::error::CliError;
use crate::net::{self, Credentials, NetEvent, Request};
use crate::ui;

/// How often the clock ticks (typing expiry, batched acknowledgements, "last seen" ages).
const TICK_MS: u64 = 250;

/// Runs the interactive client until the user quits.
pub(crate) async fn run(ctx: &mut Context) -> Result<(), CliError> {
    if !io::stdin().is_terminal() || !io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "the interactive client needs a terminal; `tern --help` lists the scripting commands"
                .to_owned(),
        ));
    }
    let server = ctx.server();
    let names: HashMap<_, _> = ctx
        .config
        .users
        .iter()
        .map(|(name, id)| (*id, name.clone()))
        .collect();
    let mut app = App::new(net::random_bytes::<8>()?, names);
    let crypto_dir = ctx
        .config_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut worker = net::spawn_worker(server.clone(), ctx.device_name(None), crypto_dir);
    let mut requests = Vec::new();
    if let Some(session) = &ctx.config.session {
        requests = app.resume(Credentials::Resume(session.token(&ctx.config_path)?));
    }

    let mut terminal = TerminalGuard::enter().map_err(terminal_error)?;
    let mut keys = EventStream::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
    loop {
        // Never wait on the worker here: it may itself be waiting for this loop to read its
        // reports. A full queue (hundreds of requests behind) refuses the request instead.
        let mut refused = Vec::new();
        for request in requests.drain(..) {
            match worker.requests.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(request)) => refused.push(request),
                Err(TrySendError::Closed(_)) => {
                    return Err(CliError::Interactive(
                        "the network worker stopped".to_owned(),
                    ))
                }
            }
        }
        for request in refused {
            requests.extend(app.handle_net(busy(request), now_ms()));
        }
        if app.quit {
            break;
        }
        let now = now_ms();
        terminal
            .terminal
            .draw(|frame| ui::draw(frame, &app, &server, now))
            .map_err(terminal_error)?;
        let more = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(key))) if key.kind != KeyEventKind::Release => {
                    app.handle_key(key, now_ms())
                }
                Some(Ok(_)) => Vec::new(),
                Some(Err(error)) => return Err(terminal_error(error)),
                None => break,
            },
            event = worker.events.recv() => match event {
                Some(event) => {
                    remember(ctx, &server, &event)?;
                    app.handle_net(event, now_ms())
                }
                None => break,
            },
            _ = ticker.tick() => app.tick(now_ms()),
        };
        requests.extend(more);
    }
    drop(terminal);
    ctx.save()?;
    match app.fatal {
        Some(reason) => Err(CliError::Interactive(reason)),
        None => Ok(()),
    }
}

/// Keeps what the config file stores: a new session's token, and names learned.
fn remember(ctx: &mut Context, server: &str, event: &NetEvent) -> Result<(), CliError> {
    match event {
        NetEvent::Authenticated(auth) if auth.token.is_some() => {
            ctx.store_session(server, auth);
            ctx.save()?;
        }
        NetEvent::User(user) if ctx.config.user_id(&user.username) != Some(user.user_id) => {
            ctx.config.remember(&user.username, user.user_id);
            ctx.dirty = true;
        }
        _ => {}
    }
    Ok(())
}

/// What the app hears about a request the worker had no room for.
fn busy(request: Request) -> NetEvent {
    let reason = "too many requests queued; try again".to_owned();
    match request {
        Request::Send { client_msg_id, .. } => NetEvent::SendFailed {
            client_msg_id,
            reason,
        },
        _ => NetEvent::Error(reason),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn terminal_error(source: io::Error) -> CliError {
    CliError::File {
        path: "<terminal>".into(),
        source,
    }
}

/// The terminal in raw mode on the alternate screen, restored when dropped.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn enter() -> io::Result<TerminalGuard> {
        enable_raw_mode()?;
        execute!(io::stdout(), EnterAlternateScreen)?;
        // A panic restores the terminal before its message is printed.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        Ok(TerminalGuard { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
        let _ = self.terminal.show_cursor();
    }
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen);
}
