//! The runtime: threads, I/O engines, sockets, mailboxes, timers and shutdown. The only module
//! that touches io_uring, epoll, sockets or threads; everything it learns it hands to a
//! [`Shard`](crate::core::Shard) as plain values.
//!
//! `ternd` starts one thread per core, pinned to its CPU. Each thread runs a tokio-uring runtime
//! or, where io_uring is unavailable or `--io-engine epoll` says so, a tokio current-thread runtime
//! with a `LocalSet`. On it run: an accept loop on each of the core's own `SO_REUSEPORT` listeners
//! (TCP, TLS, WebSocket); one task per connection ([`conn`]), which first runs the TLS handshake
//! and the WebSocket upgrade ([`ws`]) where its listener has them; the core's driver, which each
//! loop turn drains the mailbox, lets the shard commit its batch (group commit), then queues the
//! released frames and sends the mail; and the core's flusher, which sends the queued frames once
//! the driver lets it run.

pub(crate) mod blocking;
pub(crate) mod committer;
pub(crate) mod conn;
pub(crate) mod guard;
pub(crate) mod mailbox;
pub(crate) mod reader;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod ws;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::{ServerConfig, ServerConnection};
use tokio::sync::{oneshot, Notify};

use crate::config::{Config, IoEngine};
use crate::core::mail::Mail;
use crate::core::{ConnId, HashMap, Output, Shard, TICK_MS};
use crate::metrics::{Metrics, MetricsServer, Transport};
use crate::store::records::UserRecord;
use crate::store::Store;
use blocking::BlockingPool;
use committer::Committer;
use conn::{ConnHandle, Start};
use mailbox::{Inbox, Letter, Mailboxes};
use reader::Reader;
use socket::Socket;
use tern_protocol::frames::Error as ErrorFrame;
use tls::Link;

/// Pending connections in each listener's backlog.
const LISTEN_BACKLOG: i32 = 1024;
/// Threads of the blocking pool (password hashing).
const BLOCKING_THREADS: usize = 2;
/// Reader threads: the cores' reads of what is durable (`Sync` and `History` pages,
/// `Download`s), off their threads.
const READ_THREADS: usize = 2;
/// How long the start waits for every core to serve.
const CORE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries of each core's io_uring submission queue.
const URING_ENTRIES: u32 = 1024;

type UserCreated = Result<(u64, String, String), tern_protocol::ErrorCode>;

/// What every core shares: the shutdown signal.
struct Shared {
    stopping: AtomicBool,
}

/// Mail a core holds for full mailboxes, in work ([`Letter::work`]: a delivery counts once per
/// member), before its connections stop reading: what they would ask of other cores waits in the
/// kernel's socket buffers instead of this core's memory, and senders wait for their `Sent` as
/// long as members wait for the message.
const UNDELIVERED_MAIL_MAX: usize = 1 << 15;

/// Mail a turn takes from its inbox before it ends (a delivery counts once per member): a core
/// whose inbox another core keeps filling would otherwise not end its turn, and so neither commit
/// nor answer anything, for as long as that lasted (seconds, in W2).
const TURN_WORK_MAX: usize = 4096;

/// Moves the backlog state for `held` work of undelivered mail: backlogged at the bound, and
/// drained only below half of it. True when it just drained, so readers waiting on it wake: each
/// drain wakes them, whatever steps `held` took down (it once had to pass through the band
/// between half and the bound in one step, and readers slept for good when it did not).
fn backlog_drained(backlogged: &Cell<bool>, held: usize) -> bool {
    if held >= UNDELIVERED_MAIL_MAX {
        backlogged.set(true);
        false
    } else {
        held < UNDELIVERED_MAIL_MAX / 2 && backlogged.replace(false)
    }
}

/// How often loops check for a shutdown while they wait.
const SHUTDOWN_TICK: Duration = Duration::from_millis(50);

/// One core's runtime state; lives on that core's thread only.
pub(crate) struct CoreCtx {
    pub(crate) core: usize,
    pub(crate) cores: usize,
    pub(crate) uring: bool,
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) shard: RefCell<Shard>,
    /// Writes the shard's batches off this thread.
    committer: Committer,
    /// Runs the shard's reads off this thread.
    reader: Reader,
    pub(crate) conns: RefCell<HashMap<ConnId, Rc<ConnHandle>>>,
    pub(crate) pool: BlockingPool,
    pub(crate) dummy_user: UserRecord,
    pub(crate) buffers: socket::BufferPool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) logins: Arc<guard::LoginGuard>,
    /// TLS handshakes and WebSocket upgrades under way; they count against the connection limit
    /// too.
    handshakes: Cell<usize>,
    next_conn: Cell<ConnId>,
    mailboxes: Mailboxes,
    /// Batches a full mailbox handed back, retried next turn.
    undelivered: RefCell<Vec<(usize, Vec<Letter>)>>,
    /// The connections that turns queued frames for since the last flush.
    flushes: Cell<Vec<Rc<conn::Outbound>>>,
    /// Wakes the [`flusher`].
    flush_wake: Notify,
    /// Mail this core sent itself, handled first next turn (see [`CoreCtx::post`]).
    own: RefCell<Vec<Mail>>,
    /// Whether `undelivered` reached its bound and has not yet shrunk below half of it.
    mail_backlogged: Cell<bool>,
    /// Told when `undelivered` shrank below half its bound, for readers held back by it.
    drained: Notify,
    user_created: RefCell<HashMap<ConnId, oneshot::Sender<UserCreated>>>,
    turn: Notify,
    rng: SystemRandom,
    shared: Arc<Shared>,
}

impl CoreCtx {
    pub(crate) fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        id
    }

    /// The Unix time in milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Random bytes from the operating system.
    pub(crate) fn random<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        if self.rng.fill(&mut out).is_err() {
            // The OS generator does not fail on Linux once booted; refuse to go on without it.
            panic!("the system random number generator failed");
        }
        out
    }

    pub(crate) fn owner(&self, id: u64) -> usize {
        crate::core::owner(id, self.cores)
    }

    /// Whether the server is shutting down (after `GoAway`, new requests are not performed).
    pub(crate) fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Asks the driver for a loop turn.
    pub(crate) fn kick(&self) {
        self.turn.notify_one();
    }

    /// Sends mail to a core now.
    pub(crate) fn send_mail(&self, core: usize, mail: impl Into<Letter>) {
        self.send_letters(vec![(core, vec![mail.into()])]);
        if !self.undelivered.borrow().is_empty() {
            self.kick();
        }
    }

    /// Sends batches of letters to cores, behind any held for the same core, and holds what full
    /// mailboxes refuse ([`Mailboxes::send_in_order`]).
    fn send_letters(&self, fresh: Vec<(usize, Vec<Letter>)>) {
        let mut undelivered = self.undelivered.borrow_mut();
        Mailboxes::send_in_order(&mut undelivered, fresh, |core, batch| {
            self.mailboxes.send(core, batch)
        });
        let held: usize = undelivered
            .iter()
            .flat_map(|(_, b)| b.iter())
            .map(Letter::work)
            .sum();
        let was_backlogged = self.mail_backlogged.get();
        if backlog_drained(&self.mail_backlogged, held) {
            self.drained.notify_waiters();
        }
        let metrics = self.metrics.core(self.core);
        metrics.mail_held.set(held as u64);
        if self.mail_backlogged.get() && !was_backlogged {
            metrics.mail_backlogs.add(1);
        }
    }

    /// Whether the mail held for full mailboxes reached its bound and has not yet drained to half
    /// of it: connections stop reading meanwhile ([`CoreCtx::wait_for_mailboxes`]).
    pub(crate) fn mail_backlogged(&self) -> bool {
        self.mail_backlogged.get()
    }

    /// Waits while the mail held for full mailboxes is at its bound.
    pub(crate) async fn wait_for_mailboxes(&self) {
        loop {
            let drained = self.drained.notified();
            if !self.mail_backlogged() || self.stopping() {
                return;
            }
            drained.await;
        }
    }

    /// Registers interest in a `UserCreated` reply for a connection.
    pub(crate) fn await_user_created(&self, conn: ConnId) -> oneshot::Receiver<UserCreated> {
        let (tx, rx) = oneshot::channel();
        self.user_created.borrow_mut().insert(conn, tx);
        rx
    }

    fn route(self: &Rc<Self>, letter: Letter, now: u64) {
        let mail = match letter {
            Letter::Mail(mail) => mail,
            Letter::Adopt(adoption) => {
                self.adopt(*adoption);
                return;
            }
        };
        match mail {
            Mail::UserCreated { origin, result, .. } => {
                if let Some(tx) = self.user_created.borrow_mut().remove(&origin.conn) {
                    let _ = tx.send(result);
                }
            }
            mail => self.shard.borrow_mut().handle_mail(now, mail),
        }
    }

    /// Runs a connection another core handed over.
    fn adopt(self: &Rc<Self>, adoption: mailbox::Adoption) {
        let socket = match Socket::new(adoption.socket, self.uring) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(error = %e, "cannot adopt a connection");
                return;
            }
        };
        let link = match adoption.tls {
            Some(tls) => Link::tls(socket, *tls),
            None => Link::plain(socket),
        };
        let link = match adoption.ws {
            Some(ws) => link.with_ws(*ws),
            None => link,
        };
        let start = Start::Adopted {
            buffered: adoption.buffered,
            request_id: adoption.request_id,
            auth: adoption.auth,
        };
        tokio::task::spawn_local(conn::run(Rc::clone(self), link, start));
    }

    /// Queues a turn's frames, for [`flusher`] to send.
    fn dispatch(&self, outputs: Vec<Output>) {
        let conns = self.conns.borrow();
        let mut flushes = self.flushes.take();
        for output in outputs {
            match output {
                Output::Frame { conn, frame } => {
                    if let Some(handle) = conns.get(&conn) {
                        if frame.request_id != 0 {
                            handle
                                .in_flight
                                .set(handle.in_flight.get().saturating_sub(1));
                        }
                        if handle.outbound.push_held(&frame) {
                            flushes.push(Rc::clone(&handle.outbound));
                        }
                    }
                }
                Output::Update {
                    conn,
                    user_seq,
                    event,
                } => {
                    if let Some(handle) = conns.get(&conn) {
                        if handle.outbound.push_update_held(&event, user_seq) {
                            flushes.push(Rc::clone(&handle.outbound));
                        }
                    }
                }
                Output::Close {
                    conn,
                    code,
                    message,
                } => {
                    if let Some(handle) = conns.get(&conn) {
                        handle.outbound.close_with(code, &message);
                    }
                }
            }
        }
        if !flushes.is_empty() {
            self.flush_wake.notify_one();
        }
        self.flushes.set(flushes);
    }

    /// Sends the frames queued since the last flush, each connection's together.
    fn flush(&self) {
        let mut flushes = self.flushes.take();
        for outbound in flushes.drain(..) {
            outbound.flush();
        }
        // The list keeps its room for the next turn.
        self.flushes.set(flushes);
    }

    /// Sends a turn's mail. What this core sends itself skips its mailbox: it is handled first
    /// next turn, before any mail another core sends after this. So whatever another core does
    /// on this turn's mail reaches this core after this core's own share of it: a direct
    /// conversation lives on one member's core, and the peer's receipt for a message (sent once
    /// the peer's log holds it) would otherwise overtake the delivery to that member's own log,
    /// should this thread lose its CPU between the two sends or its own mailbox be full.
    fn post(&self, mail: Vec<(usize, Mail)>) {
        let mut counts = vec![0; self.cores];
        for (core, _) in &mail {
            counts[*core] += 1;
        }
        let mut by_core: Vec<Vec<Letter>> = counts.into_iter().map(Vec::with_capacity).collect();
        let mut own = self.own.borrow_mut();
        for (core, m) in mail {
            if core == self.core {
                own.push(m);
            } else {
                by_core[core].push(Letter::Mail(m));
            }
        }
        if !own.is_empty() {
            self.kick();
        }
        drop(own);
        self.send_letters(by_core.into_iter().enumerate().collect());
    }

    /// One loop turn: commit answers and mail in, the batch to the committer, frames and mail
    /// out.
    fn turn(self: &Rc<Self>, inbox: &Inbox) {
        let started = Instant::now();
        self.take_answers();
        self.take_reads();
        let mut clock = TurnClock::default();
        let mut own = std::mem::take(&mut *self.own.borrow_mut());
        for mail in own.drain(..) {
            self.route(Letter::Mail(mail), clock.now_ms(self));
        }
        // Only the end of a turn posts mail to this core: the list keeps its room for the next.
        let mut slot = self.own.borrow_mut();
        if slot.is_empty() {
            *slot = own;
        }
        drop(slot);
        let mut work = 0;
        while work < TURN_WORK_MAX {
            let Some((batch, batch_work)) = inbox.take() else {
                break;
            };
            work += batch_work;
            for letter in batch {
                self.route(letter, clock.now_ms(self));
            }
        }
        if !inbox.is_empty() {
            // The rest is for the next turn, once this one's batch, replies and mail are out.
            self.kick();
        }
        let turn = self.shard.borrow_mut().end_turn();
        if let Some(commit) = turn.commit {
            self.committer.submit(commit);
        }
        for read in turn.reads {
            self.reader.submit(read);
        }
        self.dispatch(turn.outputs);
        self.post(turn.mail);
        self.metrics
            .core(self.core)
            .turn(started.elapsed().as_micros() as u64);
    }

    /// Hands the committer's answers to the shard.
    fn take_answers(&self) {
        while let Ok(answer) = self.committer.answers.try_recv() {
            self.shard
                .borrow_mut()
                .handle_committed(answer.id, answer.result);
        }
    }

    /// Hands the readers' answers to the shard.
    fn take_reads(&self) {
        while let Ok(answer) = self.reader.answers.try_recv() {
            self.metrics.core(self.core).read_done(answer.micros);
            self.shard
                .borrow_mut()
                .handle_read(answer.id, answer.result);
        }
    }

    /// At the end: writes a checkpoint, commits what is left and waits for the committer,
    /// within `deadline`.
    fn settle(self: &Rc<Self>, deadline: Duration) {
        let started = Instant::now();
        let now = self.now_ms();
        if let Err(e) = self.shard.borrow_mut().checkpoint(now) {
            tracing::error!(core = self.core, error = %e, "writing the last checkpoint");
        }
        self.shard.borrow_mut().close_reservations();
        loop {
            let turn = self.shard.borrow_mut().end_turn();
            if let Some(commit) = turn.commit {
                self.committer.submit(commit);
            }
            self.dispatch(turn.outputs);
            self.post(turn.mail);
            self.flush();
            if self.shard.borrow().idle() || started.elapsed() >= deadline {
                return;
            }
            if let Ok(answer) = self.committer.answers.recv_timeout(SHUTDOWN_TICK) {
                self.shard
                    .borrow_mut()
                    .handle_committed(answer.id, answer.result);
            }
        }
    }
}

/// The time a turn hands its mail: read once per [`TurnClock::LETTERS`] letters rather than for
/// each (the clock read was about 1 % of W1's samples), so no letter's time is more than that
/// many letters' work old.
#[derive(Default)]
struct TurnClock {
    now_ms: u64,
    letters: usize,
}

impl TurnClock {
    const LETTERS: usize = 64;

    fn now_ms(&mut self, ctx: &CoreCtx) -> u64 {
        if self.letters.is_multiple_of(Self::LETTERS) {
            self.now_ms = ctx.now_ms();
        }
        self.letters += 1;
        self.now_ms
    }
}

async fn driver(ctx: Rc<CoreCtx>, inbox: Inbox) {
    let deadline = Duration::from_millis(ctx.config.shutdown_timeout_ms);
    let mut shutdown_started: Option<Instant> = None;
    let mut closed_all = false;
    let tick = Duration::from_millis(TICK_MS);
    let mut last_tick = Instant::now();
    loop {
        // While shutting down, also wake on a short tick to watch the deadline; while a
        // checkpoint is under way, when its next share is due.
        let mut wait = if shutdown_started.is_some() {
            SHUTDOWN_TICK
        } else {
            tick
        };
        if let Some(due) = ctx.shard.borrow().checkpoint_step_due_ms() {
            wait = wait.min(Duration::from_millis(due.saturating_sub(ctx.now_ms())));
        }
        tokio::select! {
            _ = inbox.wake.notified() => {}
            _ = ctx.turn.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        let now = ctx.now_ms();
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            ctx.shard.borrow_mut().tick(now);
            conn::close_expired(&ctx);
        }
        ctx.shard.borrow_mut().checkpoint_step(now);
        ctx.turn(&inbox);
        if !ctx.undelivered.borrow().is_empty() {
            // A full mailbox: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(1)).await;
            ctx.kick();
        }
        if !ctx.stopping() {
            continue;
        }
        let started = *shutdown_started.get_or_insert_with(|| {
            conn::go_away_all(&ctx);
            ctx.kick();
            Instant::now()
        });
        // Give clients a tenth of the deadline to read GoAway and get their answers, then close.
        if !closed_all && started.elapsed() >= deadline / 10 {
            for handle in ctx.conns.borrow().values() {
                handle.outbound.close();
            }
            closed_all = true;
        }
        if ctx.conns.borrow().is_empty() || started.elapsed() >= deadline {
            if !ctx.conns.borrow().is_empty() {
                tracing::warn!(
                    core = ctx.core,
                    "shutdown time-out: cutting remaining connections"
                );
            }
            ctx.turn(&inbox);
            ctx.settle(
                deadline
                    .saturating_sub(started.elapsed())
                    .max(SHUTDOWN_TICK),
            );
            return;
        }
    }
}

/// What a listener serves.
#[derive(Clone)]
struct Serves {
    /// TLS first, with this configuration.
    tls: Option<Arc<ServerConfig>>,
    /// A WebSocket upgrade (after TLS, if any).
    ws: bool,
}

impl Serves {
    fn transport(&self) -> Transport {
        match (self.tls.is_some(), self.ws) {
            (false, false) => Transport::Tcp,
            (true, false) => Transport::Tls,
            (false, true) => Transport::Ws,
            (true, true) => Transport::Wss,
        }
    }
}

/// Accepts connections on one listener.
async fn accept_loop(ctx: Rc<CoreCtx>, listener: TcpListener, serves: Serves) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(core = ctx.core, error = %e, "cannot use the listener");
            return;
        }
    };
    let mut last_warned = None;
    let mut failed: u64 = 0;
    loop {
        // Accepting is cancel-safe; the tick lets the loop notice a shutdown.
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
            _ = tokio::time::sleep(SHUTDOWN_TICK) => None,
        };
        if ctx.stopping() {
            return;
        }
        let (stream, peer) = match accepted {
            None => continue,
            Some(Ok((stream, peer))) => (stream, peer),
            Some(Err(e)) => {
                // Out of descriptors or a connection reset before accept: keep serving the rest,
                // and say so at most once a second.
                failed += 1;
                if last_warned.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(core = ctx.core, error = %e, failures = failed, "accept failed");
                    last_warned = Some(Instant::now());
                    failed = 0;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if ctx.conns.borrow().len() + ctx.handshakes.get() >= ctx.config.connections_per_core_max {
            refuse_at_limit(&stream, &serves);
            continue;
        }
        let socket = stream.into_std().and_then(|s| Socket::new(s, ctx.uring));
        match socket {
            Ok(socket) => {
                tokio::task::spawn_local(serve(Rc::clone(&ctx), socket, peer, serves.clone()));
            }
            Err(e) => tracing::warn!(core = ctx.core, error = %e, "cannot set up a connection"),
        }
    }
}

/// Tells a client the server is at its connection limit, best effort: a small answer fits in an
/// empty socket buffer, so one write suffices. A TLS client just sees the close.
fn refuse_at_limit(stream: &tokio::net::TcpStream, serves: &Serves) {
    let bytes = match serves.transport() {
        Transport::Tcp => {
            let error = ErrorFrame {
                code: tern_protocol::ErrorCode::UNAVAILABLE,
                retry_after_ms: 1_000,
                message: "the server is at its connection limit".into(),
            };
            tern_protocol::Frame::event(error)
                .to_bytes()
                .ok()
                .map(Vec::from)
        }
        Transport::Ws => Some(ws::http_response(
            503,
            "Service Unavailable",
            "the server is at its connection limit",
            "Retry-After: 1\r\n",
        )),
        Transport::Tls | Transport::Wss => None,
    };
    if let Some(bytes) = bytes {
        let _ = stream.try_write(&bytes);
    }
}

/// Readies an accepted connection (the TLS handshake and the WebSocket upgrade its listener asks
/// for, each within its time limit), then serves it.
async fn serve(ctx: Rc<CoreCtx>, socket: Socket, peer: SocketAddr, serves: Serves) {
    let transport = serves.transport();
    let link = match &serves.tls {
        None => Link::plain(socket),
        Some(config) => match ServerConnection::new(Arc::clone(config)) {
            Ok(session) => Link::tls(socket, session),
            Err(e) => {
                tracing::warn!(core = ctx.core, error = %e, "cannot start a TLS session");
                return;
            }
        },
    };
    ctx.handshakes.set(ctx.handshakes.get() + 1);
    let ready = ready(&ctx, link, &serves).await;
    ctx.handshakes.set(ctx.handshakes.get() - 1);
    let metrics = ctx.metrics.core(ctx.core);
    match ready {
        Ok((link, buffered)) => {
            metrics.transport_handshakes[transport as usize].add(1);
            if serves.tls.is_some() {
                metrics.tls_handshakes.add(1);
            }
            let start = Start::Accepted {
                peer: peer.ip(),
                buffered,
            };
            // A task of its own, so that the handshake's state is not kept for the connection's
            // whole life.
            tokio::task::spawn_local(conn::run(ctx, link, start));
        }
        Err((link, why)) => {
            metrics.transport_handshake_failures[transport as usize].add(1);
            tracing::debug!(%peer, transport = transport.label(), why, "connection not readied");
            link.shutdown().await;
        }
    }
}

/// Why a connection was not readied, with its link to close.
type NotReady = (Link, String);

/// Runs the TLS handshake and the WebSocket upgrade `serves` asks for. Returns the link and the
/// frame bytes that arrived with them.
async fn ready(ctx: &CoreCtx, link: Link, serves: &Serves) -> Result<(Link, BytesMut), NotReady> {
    let mut buffered = BytesMut::new();
    if serves.tls.is_some() {
        let limit = Duration::from_millis(ctx.config.tls_handshake_timeout_ms);
        let done = tokio::time::timeout(limit, link.handshake(&mut buffered, &ctx.buffers)).await;
        let failed = match done {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("TLS handshake failed: {e}")),
            Err(_) => Some("TLS handshake timed out".to_owned()),
        };
        if let Some(why) = failed {
            ctx.metrics.core(ctx.core).tls_handshake_failures.add(1);
            return Err((link, why));
        }
    }
    if !serves.ws {
        return Ok((link, buffered));
    }
    let limit = Duration::from_millis(ctx.config.frame_timeout_ms);
    let upgraded = tokio::time::timeout(limit, ws_upgrade(ctx, &link, &mut buffered)).await;
    let rest = match upgraded {
        Ok(Ok(rest)) => rest,
        Ok(Err(why)) => return Err((link, why)),
        Err(_) => return Err((link, "WebSocket upgrade timed out".to_owned())),
    };
    let link = link.with_ws(ws::WsState::new());
    let mut inbox = BytesMut::new();
    match link.ws_decode(&rest, &mut inbox) {
        Ok(()) => Ok((link, inbox)),
        Err(e) => Err((link, format!("WebSocket frames after the upgrade: {e}"))),
    }
}

/// Reads the WebSocket upgrade request (after `request`, the bytes already read) and answers it.
/// Returns the bytes that followed the request.
async fn ws_upgrade(
    ctx: &CoreCtx,
    link: &Link,
    request: &mut BytesMut,
) -> Result<BytesMut, String> {
    loop {
        match ws::upgrade(request, &ctx.config.ws_allowed_origins) {
            ws::Upgrade::Incomplete => match link.read_plaintext(request, &ctx.buffers).await {
                Ok(0) => return Err("closed during the WebSocket upgrade".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the WebSocket upgrade: {e}")),
            },
            ws::Upgrade::Refuse { response, status } => {
                let _ = link.write_plaintext(response).await;
                return Err(format!("WebSocket upgrade refused with {status}"));
            }
            ws::Upgrade::Accept { response, consumed } => {
                link.write_plaintext(response)
                    .await
                    .map_err(|e| format!("answering the WebSocket upgrade: {e}"))?;
                return Ok(request.split_off(consumed));
            }
        }
    }
}

async fn core_main(
    ctx: Rc<CoreCtx>,
    listeners: CoreListeners,
    inbox: Inbox,
    ready: std::sync::mpsc::Sender<usize>,
) {
    let now = ctx.now_ms();
    let started = std::time::Instant::now();
    match ctx.shard.borrow_mut().recover_fanouts(now) {
        Ok(found) if found == Default::default() => {}
        Ok(found) => tracing::info!(
            core = ctx.core,
            messages = found.resumed,
            held = found.held,
            logs_read = found.members_read,
            ms = started.elapsed().as_millis() as u64,
            "resuming interrupted fan-outs"
        ),
        Err(e) => tracing::error!(core = ctx.core, error = %e, "cannot scan interrupted fan-outs"),
    }
    let now = ctx.now_ms();
    if let Err(e) = ctx.shard.borrow_mut().recover_push_jobs(now) {
        tracing::error!(core = ctx.core, error = %e, "cannot scan queued push jobs");
    }
    ctx.kick();
    if let Some(listener) = listeners.tcp {
        let serves = Serves {
            tls: None,
            ws: false,
        };
        tokio::task::spawn_local(accept_loop(Rc::clone(&ctx), listener, serves));
    }
    if let Some((listener, config)) = listeners.tls {
        let serves = Serves {
            tls: Some(config),
            ws: false,
        };
        tokio::task::spawn_local(accept_loop(Rc::clone(&ctx), listener, serves));
    }
    if let Some((listener, tls)) = listeners.ws {
        let serves = Serves { tls, ws: true };
        tokio::task::spawn_local(accept_loop(Rc::clone(&ctx), listener, serves));
    }
    // Serving from here on: health says so, and the server's start waits for every core.
    ctx.metrics
        .core(ctx.core)
        .alive
        .store(true, Ordering::Relaxed);
    let _ = ready.send(ctx.core);
    tokio::task::spawn_local(flusher(Rc::clone(&ctx)));
    driver(ctx, inbox).await;
}

/// Sends the frames the core's turns queue, once the driver lets the other tasks run. A driver
/// with more work goes on to its next turn first, so a busy connection's frames of several turns
/// leave in one write: flushing at the end of each turn made W1's closed loop send 2.6 times as
/// many writes per message, and it lost about a tenth of its rate.
///
/// One task for the core, rather than a writer task spawned for each connection with frames: on
/// a plain TCP link the frames go to the socket from here, and a connection's writer starts only
/// for what the socket did not take, or on TLS and WebSocket links.
async fn flusher(ctx: Rc<CoreCtx>) {
    loop {
        ctx.flush_wake.notified().await;
        ctx.flush();
    }
}

/// One core's listeners.
struct CoreListeners {
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, Arc<ServerConfig>)>,
    /// WebSocket, inside TLS when a configuration is given.
    ws: Option<(TcpListener, Option<Arc<ServerConfig>>)>,
}

/// A running server.
pub struct Server {
    /// The address plain TCP clients connect to (none with `--tls-only`).
    pub tcp_addr: Option<SocketAddr>,
    /// The address TLS clients connect to, when TLS is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The address WebSocket clients connect to (`wss://` when TLS is configured).
    pub ws_addr: SocketAddr,
    /// The address of the metrics and health endpoint.
    pub metrics_addr: SocketAddr,
    shared: Arc<Shared>,
    mailboxes: Mailboxes,
    threads: Vec<JoinHandle<()>>,
    /// Ends once every core thread has (their committers dropped, their batches written).
    committer: JoinHandle<()>,
    /// End once every core thread has (their readers dropped).
    readers: Vec<JoinHandle<()>>,
    blocking: Vec<JoinHandle<()>>,
    push: Option<crate::push::PushWorker>,
    metrics_server: MetricsServer,
    store: Store,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error("opening the database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A socket or thread could not be created.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// io_uring was required but is unavailable.
    #[error("io_uring is unavailable: {0}")]
    Uring(std::io::Error),
    /// The TLS certificate or key cannot be used.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

/// Binds `addr` once per core (`SO_REUSEPORT`), the first one deciding a port 0.
fn bind_per_core(addr: SocketAddr, cores: usize) -> std::io::Result<Vec<TcpListener>> {
    let first = bind(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cores {
        listeners.push(bind(addr)?);
    }
    Ok(listeners)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket as RawSocket, Type};
    let socket = RawSocket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Whether this kernel lets us set up an io_uring.
fn uring_available() -> Result<(), std::io::Error> {
    tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop)
}

impl Server {
    /// Opens the database, binds every core's listener and starts the core threads.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let config = Arc::new(config);
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Store::open(
            &config.data_dir,
            config.fsync,
            config.idempotency_retention_ms,
            config.update_log_memtable_mib,
        )?;
        let uring = match config.io_engine {
            IoEngine::Epoll => false,
            IoEngine::Uring => {
                uring_available().map_err(StartError::Uring)?;
                true
            }
            IoEngine::Auto => match uring_available() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring is unavailable; using epoll");
                    false
                }
            },
        };
        let tls_config = tls::server_config(&config)?;
        let mut tcp = match config.tls_only {
            true => Vec::new(),
            false => bind_per_core(config.listen, config.cores)?,
        };
        let mut tls = match &tls_config {
            Some(_) => bind_per_core(config.tls_listen, config.cores)?,
            None => Vec::new(),
        };
        let mut ws = bind_per_core(config.ws_listen, config.cores)?;
        let ws_addr = ws[0].local_addr()?;
        let tcp_addr = tcp.first().map(TcpListener::local_addr).transpose()?;
        let tls_addr = tls.first().map(TcpListener::local_addr).transpose()?;
        let mut listeners = Vec::with_capacity(config.cores);
        for _ in 0..config.cores {
            listeners.push(CoreListeners {
                tcp: tcp.pop(),
                tls: tls.pop().zip(tls_config.clone()),
                ws: ws.pop().map(|l| (l, tls_config.clone())),
            });
        }
        let (mailboxes, inboxes) = Mailboxes::new(config.cores);
        let metrics = Arc::new(Metrics::new(config.cores));
        let logins = Arc::new(guard::LoginGuard::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let database = store.clone();
        let metrics_server =
            MetricsServer::start(config.metrics_listen, Arc::clone(&metrics), move || {
                database.properties()
            })?;
        let metrics_addr = metrics_server.local_addr;
        let (pool, blocking) = BlockingPool::start(BLOCKING_THREADS)?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
        });
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(config.cores);
        let (committers, committer_thread) = committer::start(
            store.backend(),
            store.fsync(),
            Arc::clone(&metrics),
            inboxes
                .iter()
                .map(|inbox| Arc::clone(&inbox.wake))
                .collect(),
        )?;
        let (readers, reader_threads) = reader::start(
            store.clone(),
            READ_THREADS,
            inboxes
                .iter()
                .map(|inbox| Arc::clone(&inbox.wake))
                .collect(),
        )?;
        let cores = listeners
            .into_iter()
            .zip(inboxes)
            .zip(committers)
            .zip(readers);
        for (core, (((listeners, inbox), committer), reader)) in cores.enumerate() {
            let parts = CoreParts {
                core,
                uring,
                config: Arc::clone(&config),
                store: store.clone(),
                high_water: store.id_high_water(core as u16)?,
                metrics: Arc::clone(&metrics),
                logins: Arc::clone(&logins),
                ready: ready_tx.clone(),
                pool: pool.clone(),
                mailboxes: mailboxes.clone(),
                shared: Arc::clone(&shared),
                committer,
                reader,
            };
            let cpu = cpus.get(core % cpus.len().max(1)).copied();
            let thread = std::thread::Builder::new()
                .name(format!("ternd-core-{core}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        core_affinity::set_for_current(cpu);
                    }
                    run_core(parts, listeners, inbox);
                })?;
            threads.push(thread);
        }
        // Listening means serving: wait until every core has recovered and runs its loop.
        drop(ready_tx);
        for _ in 0..config.cores {
            if ready_rx.recv_timeout(CORE_START_TIMEOUT).is_err() {
                shared.stopping.store(true, Ordering::Release);
                mailboxes.wake_all();
                return Err(StartError::Io(std::io::Error::other(
                    "a core thread did not start",
                )));
            }
        }
        let engine = if uring { "io_uring" } else { "epoll" };
        let show = |addr: Option<SocketAddr>| addr.map_or("off".to_owned(), |a| a.to_string());
        tracing::info!(
            tcp = show(tcp_addr),
            tls = show(tls_addr),
            ws = %ws_addr,
            cores = config.cores,
            engine,
            fsync = config.fsync,
            "ternd listening"
        );
        let push = crate::push::PushWorker::start(
            Arc::clone(&config),
            store.clone(),
            mailboxes.clone(),
            Arc::clone(&metrics),
        )?;
        Ok(Server {
            tcp_addr,
            tls_addr,
            ws_addr,
            metrics_addr,
            shared,
            mailboxes,
            threads,
            committer: committer_thread,
            readers: reader_threads,
            blocking,
            push,
            metrics_server,
            store,
        })
    }

    /// Stops accepting, sends `GoAway`, drains, commits, and closes the database. Bounded by the
    /// configured shutdown time-out.
    pub fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.mailboxes.wake_all();
        for thread in self.threads {
            let _ = thread.join();
        }
        let _ = self.committer.join();
        for thread in self.readers {
            let _ = thread.join();
        }
        if let Some(push) = self.push {
            push.stop();
        }
        self.metrics_server.stop();
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing the database at shutdown");
        }
        drop(self.mailboxes);
        drop(self.store);
        for thread in self.blocking {
            let _ = thread.join();
        }
        tracing::info!("ternd stopped");
    }
}

/// What a core thread needs to start.
struct CoreParts {
    core: usize,
    uring: bool,
    config: Arc<Config>,
    store: Store,
    high_water: u64,
    metrics: Arc<Metrics>,
    logins: Arc<guard::LoginGuard>,
    pool: BlockingPool,
    mailboxes: Mailboxes,
    shared: Arc<Shared>,
    /// Told when the core serves.
    ready: std::sync::mpsc::Sender<usize>,
    committer: Committer,
    reader: Reader,
}

fn run_core(parts: CoreParts, listeners: CoreListeners, inbox: Inbox) {
    let committer = parts.committer;
    let dummy_salt = [0u8; 16];
    let config = Arc::clone(&parts.config);
    let shard = Shard::new(
        parts.core,
        config.cores,
        config,
        parts.store.clone(),
        parts.high_water,
        Arc::clone(&parts.metrics),
    );
    let ctx = Rc::new(CoreCtx {
        core: parts.core,
        cores: parts.config.cores,
        uring: parts.uring,
        dummy_user: UserRecord {
            username: String::new(),
            created_at: 0,
            password_salt: dummy_salt,
            password_iterations: parts.config.password_iterations,
            password_hash: [0u8; 32],
            hide_last_seen: false,
        },
        config: parts.config,
        store: parts.store,
        shard: RefCell::new(shard),
        committer,
        reader: parts.reader,
        conns: RefCell::new(HashMap::default()),
        pool: parts.pool,
        buffers: socket::BufferPool::default(),
        metrics: Arc::clone(&parts.metrics),
        logins: Arc::clone(&parts.logins),
        handshakes: Cell::new(0),
        next_conn: Cell::new(0),
        mailboxes: parts.mailboxes,
        undelivered: RefCell::new(Vec::new()),
        own: RefCell::new(Vec::new()),
        flushes: Cell::new(Vec::new()),
        flush_wake: Notify::new(),
        mail_backlogged: Cell::new(false),
        drained: Notify::new(),
        user_created: RefCell::new(HashMap::default()),
        turn: Notify::new(),
        rng: SystemRandom::new(),
        shared: parts.shared,
    });
    let core = ctx.core;
    let main = core_main(Rc::clone(&ctx), listeners, inbox, parts.ready);
    if ctx.uring {
        let mut builder = tokio_uring::builder();
        builder.entries(URING_ENTRIES);
        match tokio_uring::Runtime::new(&builder) {
            Ok(runtime) => runtime.block_on(main),
            Err(e) => tracing::error!(core, error = %e, "cannot start io_uring on this core"),
        }
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match runtime {
            Ok(runtime) => tokio::task::LocalSet::new().block_on(&runtime, main),
            Err(e) => {
                tracing::error!(core, error = %e, "cannot start the epoll runtime on this core")
            }
        }
    }
    ctx.metrics
        .core(ctx.core)
        .alive
        .store(false, Ordering::Relaxed);
    // Commit anything left on this core.
    ctx.settle(Duration::from_millis(ctx.config.shutdown_timeout_ms));
}

#[cfg(test)]
mod tests {
    use super::{backlog_drained, UNDELIVERED_MAIL_MAX};
    use std::cell::Cell;

    // Proves readers held back by undelivered mail are woken once it drains below half the bound,
    // also when it first fell only to between half and the bound (readers that waited then slept
    // for good), and not while it stays above half.
    #[test]
    fn a_backlog_wakes_its_readers_once_it_drains_however_it_got_there() {
        let backlogged = Cell::new(false);
        assert!(!backlog_drained(&backlogged, UNDELIVERED_MAIL_MAX - 1));
        assert!(!backlogged.get(), "below the bound: no backlog");
        assert!(!backlog_drained(&backlogged, UNDELIVERED_MAIL_MAX));
        assert!(backlogged.get(), "at the bound: readers wait");
        assert!(!backlog_drained(&backlogged, UNDELIVERED_MAIL_MAX * 3 / 4));
        assert!(backlogged.get(), "above half: they still wait");
        assert!(backlog_drained(&backlogged, 0), "drained: they are woken");
        assert!(!backlogged.get());
        assert!(!backlog_drained(&backlogged, 0), "woken once");
    }
}
