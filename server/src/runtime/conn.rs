//! One connection: its task, which reads and handles frames, and its outbound queue, whose writer
//! task runs only while there is something to write.
//!
//! The task decodes frames from an inbox buffer that exists only while bytes are pending; an idle
//! connection waits for readiness holding no buffer, and has no writer. Before authentication the
//! connection lives on the core that accepted it and handles `Hello`, `Ping` and the three ways to
//! authenticate itself; once a user is known, the socket and any bytes already read move to the
//! user's owner core, which finishes the authentication and serves the session from then on.
//!
//! Time limits (spec §2.7): the idle time-out runs from the last complete frame, so bytes trickled
//! into a frame do not keep a connection alive; a frame once started must complete within the
//! frame time-out, and `Hello` must arrive within it from the start. Whatever comes first closes
//! the connection with `HEARTBEAT_TIMEOUT`. The deadlines live in the connection's [`ConnHandle`]
//! and the core checks them all on its tick ([`ConnHandle::expired`]), so a read arms no timer
//! and an idle connection's task holds none.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_protocol::frames::{self, Error as ErrorFrame, GoAway, Pong, Welcome};
use tern_protocol::limits::{PROTOCOL_VERSION, REQUESTS_IN_FLIGHT_MAX};
use tern_protocol::types::ServerLimits;
use tern_protocol::{
    Body, EncodeError, ErrorCode, Frame, FrameDecoder, FrameError, UpdateEventBytes,
};

use super::mailbox::{Adoption, Letter};
use super::tls::Link;
use super::CoreCtx;
use crate::core::accounts::{self, token_hash, validate_password, validate_username};
use crate::core::mail::{AdoptAuth, ConnRef, Mail};
use crate::core::{name_owner, ConnId};
use crate::metrics::Metrics;
use crate::store::records::UserRecord;

/// Frames coalesced into one write.
const WRITE_COALESCE_BYTES_MAX: usize = 256 * 1024;

/// The least a connection's outbound buffer starts with when a frame arrives and it has none. It
/// starts with room for what its writer took last time, rounded up to a power of two; one that
/// took a frame or two gets a small buffer, which the allocator hands out from its per-thread
/// cache (4 KiB each time made every quiet connection's frame a trip through the allocator's
/// slow path).
const PENDING_BYTES_MIN: usize = 256;

/// The encoded frames waiting to be written to one connection, end to end in one buffer: each
/// frame is encoded straight into it, and the writer takes it whole.
///
/// The core's turns queue their frames held, and its flusher sends them ([`Outbound::flush`]).
/// The writer is a task that exists only while there is something to write that the flusher did
/// not send: a frame the connection queues itself, what the socket did not take, or anything on
/// a TLS or WebSocket link. It ends once the buffer is empty, so an idle connection has no writer.
pub(crate) struct Outbound {
    metrics: Arc<Metrics>,
    core: usize,
    pending: RefCell<BytesMut>,
    bytes: Cell<usize>,
    bytes_max: usize,
    /// The size of the last buffer the writer took whole: the next one starts with room for as
    /// much, so that a busy connection's buffer is not grown (and copied) anew every turn.
    last_taken: Cell<usize>,
    /// What the writer writes to, and the queue itself, for starting a writer.
    link: Weak<Link>,
    this: Weak<Outbound>,
    /// A writer task is running.
    writing: Cell<bool>,
    /// Frames were held for [`Outbound::flush`], which has not run yet.
    flush_due: Cell<bool>,
    /// No more frames are accepted; the writer flushes and ends.
    closing: Cell<bool>,
    /// When the connection began to close: its client has the frame time-out from then to read
    /// what is left, or the socket is shut down under the writer.
    closing_at: Cell<Option<Instant>>,
    /// Shut the socket down once flushed (a close), rather than hand it on (a migration).
    shutdown_after: Cell<bool>,
    done: tokio::sync::Notify,
    finished: Cell<bool>,
}

impl Outbound {
    fn new(link: &Rc<Link>, bytes_max: usize, metrics: Arc<Metrics>, core: usize) -> Rc<Outbound> {
        Rc::new_cyclic(|this| Outbound {
            metrics,
            core,
            pending: RefCell::new(BytesMut::new()),
            bytes: Cell::new(0),
            bytes_max,
            last_taken: Cell::new(0),
            link: Rc::downgrade(link),
            this: this.clone(),
            writing: Cell::new(false),
            flush_due: Cell::new(false),
            closing: Cell::new(false),
            closing_at: Cell::new(None),
            shutdown_after: Cell::new(true),
            done: tokio::sync::Notify::new(),
            finished: Cell::new(false),
        })
    }

    /// Starts the writer unless it is running.
    fn start_writer(&self) {
        if self.writing.get() {
            return;
        }
        let (Some(link), Some(outbound)) = (self.link.upgrade(), self.this.upgrade()) else {
            return;
        };
        self.writing.set(true);
        tokio::task::spawn_local(writer(link, outbound));
    }

    /// Queues a frame and starts the writer. Past the byte limit the client is too slow: it gets
    /// `SLOW_CONSUMER` and the connection closes (its updates stay in its log for the next `Sync`).
    pub(crate) fn push(&self, frame: &Frame) {
        if self.queue(frame.body.name(), |pending| frame.encode(pending)) {
            self.count(Some(&frame.body));
            self.start_writer();
        }
    }

    /// Queues a frame as [`Outbound::push`] does, but leaves it for [`Outbound::flush`]; true
    /// when this is the first frame held since the last flush, so the caller owes one.
    pub(crate) fn push_held(&self, frame: &Frame) -> bool {
        if self.queue(frame.body.name(), |pending| frame.encode(pending)) {
            self.count(Some(&frame.body));
            return !self.flush_due.replace(true);
        }
        false
    }

    /// Queues an update event encoded once for all it goes to, as [`Outbound::push_held`] would
    /// queue the same event built for this `user_seq`.
    pub(crate) fn push_update_held(&self, event: &UpdateEventBytes, user_seq: u64) -> bool {
        if self.queue("UpdateEvent", |pending| Ok(event.write(user_seq, pending))) {
            self.count(None);
            return !self.flush_due.replace(true);
        }
        false
    }

    /// Sends the frames held for it. On a plain TCP link whose writer is not running, they go to
    /// the socket from this call, as far as it takes them without waiting. A writer task is
    /// started only for what is left, and on TLS and WebSocket links, whose frames are sealed
    /// and framed on the way out. Spawning a writer for each connection with frames, and
    /// polling it, was about 7 % of the core threads' time in W1's open loop.
    pub(crate) fn flush(&self) {
        if !self.flush_due.replace(false) {
            return;
        }
        if self.writing.get() || self.closing.get() {
            // What is running writes the frames after the ones it has, in order.
            self.start_writer();
            return;
        }
        let Some(link) = self.link.upgrade() else {
            return;
        };
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            // A writer took them meanwhile.
            return;
        }
        let written = match link.try_write_plain(&pending) {
            Some(Ok(n)) => n,
            // Would block, failed or not plain TCP: the writer waits, reports or seals.
            Some(Err(_)) | None => 0,
        };
        self.bytes.set(self.bytes.get() - written);
        if written == pending.len() {
            self.last_taken.set(written);
            // As when the writer takes the buffer whole: an idle connection keeps none.
            *pending = BytesMut::new();
            return;
        }
        bytes::Buf::advance(&mut *pending, written);
        drop(pending);
        self.start_writer();
    }

    /// Appends what `encode` writes to the queue, within the byte limit; whether it was queued.
    fn queue(
        &self,
        name: &str,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, EncodeError>,
    ) -> bool {
        if self.closing.get() {
            return false;
        }
        let encoded = {
            let mut pending = self.pending.borrow_mut();
            if pending.capacity() == 0 {
                // The first frame since the last write: room for as much as the writer took last
                // time.
                pending.reserve(
                    self.last_taken
                        .get()
                        .next_power_of_two()
                        .clamp(PENDING_BYTES_MIN, WRITE_COALESCE_BYTES_MAX),
                );
            }
            let start = pending.len();
            match encode(&mut pending) {
                Ok(n) if self.bytes.get() + n > self.bytes_max => {
                    pending.truncate(start);
                    None
                }
                Ok(n) => Some(n),
                Err(e) => {
                    // Nothing of it stays in the buffer.
                    tracing::error!(error = %e, frame = name, "a frame the server built does not encode");
                    return false;
                }
            }
        };
        let Some(n) = encoded else {
            self.close_with(
                ErrorCode::SLOW_CONSUMER,
                "outbound queue full: reconnect and sync",
            );
            return false;
        };
        self.bytes.set(self.bytes.get() + n);
        true
    }

    /// Queues a connection-level error, then closes.
    pub(crate) fn close_with(&self, code: ErrorCode, message: &str) {
        if self.closing.get() {
            return;
        }
        let frame = Frame::event(ErrorFrame {
            code,
            retry_after_ms: 0,
            message: message.to_owned(),
        });
        self.count(Some(&frame.body));
        // Past the byte limit on purpose: the client should learn why it is closed.
        if let Ok(n) = frame.encode(&mut self.pending.borrow_mut()) {
            self.bytes.set(self.bytes.get() + n);
        }
        self.close();
    }

    /// Counts a frame out, and an error frame by its code (`None`: a frame that is no error).
    fn count(&self, body: Option<&Body>) {
        let metrics = self.metrics.core(self.core);
        metrics.frames_out.add(1);
        if let Some(Body::Error(error)) = body {
            metrics.error(error.code);
        }
    }

    /// Stops accepting frames; the writer flushes what is queued, shuts the socket down and ends.
    pub(crate) fn close(&self) {
        self.closing.set(true);
        if self.closing_at.get().is_none() {
            self.closing_at.set(Some(Instant::now()));
        }
        self.start_writer();
    }

    /// Shuts the socket down under a writer that has not flushed within `limit` of the close: its
    /// client does not read, and would otherwise hold the connection open for as long as it likes.
    /// The write then fails and the writer ends.
    fn drop_if_unread(&self, now: Instant, limit: Duration) {
        let Some(since) = self.closing_at.get() else {
            return;
        };
        if self.finished.get() || now < since + limit {
            return;
        }
        if let Some(link) = self.link.upgrade() {
            tracing::debug!("a closing connection's client read nothing within the frame time-out");
            link.shutdown_now();
        }
        // Once: the shut-down socket ends the writer soon after.
        self.closing_at.set(Some(now + limit));
    }

    fn take_chunk(&self) -> Option<Vec<u8>> {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            return None;
        }
        // Up to the limit the buffer itself is handed over, not copied; an idle connection keeps
        // no buffer at all.
        let chunk = if pending.len() <= WRITE_COALESCE_BYTES_MAX {
            self.last_taken.set(pending.len());
            Vec::from(std::mem::take(&mut *pending))
        } else {
            pending.split_to(WRITE_COALESCE_BYTES_MAX).to_vec()
        };
        self.bytes.set(self.bytes.get() - chunk.len());
        Some(chunk)
    }

    async fn finished(&self) {
        while !self.finished.get() {
            self.done.notified().await;
        }
    }
}

/// What the runtime keeps per connection.
pub(crate) struct ConnHandle {
    pub(crate) outbound: Rc<Outbound>,
    /// When the last complete frame arrived.
    pub(crate) last_rx: Cell<Instant>,
    /// Until `Hello` has arrived: when it must have.
    hello_by: Cell<Option<Instant>>,
    /// When the frame partly read began to arrive, while one is.
    frame_started: Cell<Option<Instant>>,
    /// Requests handed to the shard whose replies have not been queued yet.
    pub(crate) in_flight: Cell<u32>,
}

impl ConnHandle {
    /// Which time limit the connection has run out of at `now`, if any: the idle time-out from
    /// the last complete frame, `Hello` within the frame time-out, or a started frame within it.
    pub(crate) fn expired(
        &self,
        now: Instant,
        idle: Duration,
        frame_limit: Duration,
    ) -> Option<&'static str> {
        if self.hello_by.get().is_some_and(|by| now >= by) {
            return Some("no Hello within the frame time-out");
        }
        if self
            .frame_started
            .get()
            .is_some_and(|started| now >= started + frame_limit)
        {
            return Some("a frame did not complete within the frame time-out");
        }
        if now >= self.last_rx.get() + idle {
            return Some("no frame within the idle time-out");
        }
        None
    }
}

/// Closes the connections of a core that ran out of a time limit (called on the core's tick).
pub(crate) fn close_expired(ctx: &CoreCtx) {
    let idle = Duration::from_millis(u64::from(ctx.config.idle_timeout_ms));
    let frame_limit = Duration::from_millis(ctx.config.frame_timeout_ms);
    let now = Instant::now();
    for handle in ctx.conns.borrow().values() {
        if handle.outbound.closing.get() {
            handle.outbound.drop_if_unread(now, frame_limit);
            continue;
        }
        if let Some(why) = handle.expired(now, idle, frame_limit) {
            // The writer flushes the error and shuts the socket down, which ends the read.
            handle
                .outbound
                .close_with(ErrorCode::HEARTBEAT_TIMEOUT, why);
        }
    }
}

/// Writes what is queued, then ends; or, once the connection is closing, flushes, shuts the
/// socket down (unless it migrates) and marks the queue finished.
async fn writer(link: Rc<Link>, outbound: Rc<Outbound>) {
    loop {
        // Without frames, TLS records the reader caused (an alert, a key update) still go out.
        let chunk = outbound
            .take_chunk()
            .or_else(|| link.wants_write().then(Vec::new));
        match chunk {
            Some(chunk) => {
                if let Err(e) = link.write_all(chunk).await {
                    tracing::debug!(error = %e, "write failed; closing");
                    outbound.closing.set(true);
                    *outbound.pending.borrow_mut() = BytesMut::new();
                    outbound.bytes.set(0);
                    break;
                }
            }
            None if outbound.closing.get() => break,
            None => {
                // Nothing left: the next frame queued starts a new writer.
                outbound.writing.set(false);
                return;
            }
        }
    }
    if outbound.shutdown_after.get() {
        // Boxed: it runs once, and its state would otherwise sit in every writer.
        Box::pin(link.shutdown()).await;
    }
    outbound.finished.set(true);
    outbound.done.notify_waiters();
}

/// How a connection starts.
pub(crate) enum Start {
    /// Freshly accepted from `peer` (with any bytes read during a TLS handshake): `Hello` first.
    Accepted {
        peer: std::net::IpAddr,
        buffered: BytesMut,
    },
    /// Migrated from another core with a pending authentication.
    Adopted {
        buffered: BytesMut,
        request_id: u32,
        auth: AdoptAuth,
    },
}

/// What ended a connection's frame loop.
enum End {
    Closed,
    Migrate {
        core: usize,
        request_id: u32,
        auth: AdoptAuth,
    },
}

/// Runs a connection until it closes or migrates: the connection's one task, while it is idle
/// only waiting for the socket to be readable.
///
/// The set-up happens before the future is made, so that what the future keeps for the
/// connection's whole life is the [`Conn`] and the wait in progress, and nothing else.
pub(crate) fn run(ctx: Rc<CoreCtx>, link: Link, start: Start) -> impl Future<Output = ()> {
    let mut conn = Conn::open(ctx, link, start);
    async move {
        let end = conn.serve().await;
        // Boxed: closing and migrating happen once, and their state would otherwise sit in the
        // future for the connection's whole life.
        Box::pin(conn.finish(end)).await;
    }
}

/// What handling frames led to; small, since it is alive while a registration or login waits.
enum Flow {
    /// Go on reading.
    Read,
    End(Box<End>),
    /// A registration, which waits on the password hash pool.
    Register(u32, Box<frames::Register>),
    /// A password login, which waits on the password hash pool.
    Login(u32, Box<frames::Login>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    NeedHello,
    Ready,
}

/// One connection's state, owned by its task.
struct Conn {
    ctx: Rc<CoreCtx>,
    id: ConnId,
    link: Rc<Link>,
    outbound: Rc<Outbound>,
    handle: Rc<ConnHandle>,
    /// Bytes read and not yet decoded into frames; no buffer at all while there are none.
    inbox: BytesMut,
    phase: Phase,
    /// The client's address, known on the core that accepted the connection.
    peer: Option<std::net::IpAddr>,
}

impl Conn {
    /// Registers a connection with its core (and, for one migrated here, hands its pending
    /// authentication to the shard).
    fn open(ctx: Rc<CoreCtx>, link: Link, start: Start) -> Conn {
        let id = ctx.next_conn_id();
        let link = Rc::new(link);
        let outbound = Outbound::new(
            &link,
            ctx.config.outbound_queue_bytes_max,
            Arc::clone(&ctx.metrics),
            ctx.core,
        );
        let accepted = matches!(start, Start::Accepted { .. });
        let now = Instant::now();
        let handle = Rc::new(ConnHandle {
            outbound: Rc::clone(&outbound),
            last_rx: Cell::new(now),
            hello_by: Cell::new(
                accepted.then(|| now + Duration::from_millis(ctx.config.frame_timeout_ms)),
            ),
            frame_started: Cell::new(None),
            in_flight: Cell::new(0),
        });
        ctx.conns.borrow_mut().insert(id, Rc::clone(&handle));
        let metrics = ctx.metrics.core(ctx.core);
        metrics.connections.add(1);
        metrics.transport_connections[link.transport() as usize].add(1);
        let (inbox, phase, peer) = match start {
            Start::Accepted { peer, buffered } => (buffered, Phase::NeedHello, Some(peer)),
            Start::Adopted {
                buffered,
                request_id,
                auth,
            } => {
                ctx.shard
                    .borrow_mut()
                    .adopt(ctx.now_ms(), id, request_id, auth);
                ctx.kick();
                (buffered, Phase::Ready, None)
            }
        };
        Conn {
            ctx,
            id,
            link,
            outbound,
            handle,
            inbox,
            phase,
            peer,
        }
    }

    /// Reads and handles frames until the connection closes or is to migrate.
    async fn serve(&mut self) -> End {
        loop {
            // What stays in this future across its waits is kept small: frames are decoded and
            // handled in `handle_frames`, and the rare large values (an ending, a password) are
            // boxed.
            match self.handle_frames() {
                Flow::Read => {}
                Flow::End(end) => return *end,
                // Boxed: these wait on the password hash pool, and their state would otherwise
                // sit in every idle connection's future.
                Flow::Register(request_id, r) => {
                    match Box::pin(self.register(request_id, *r)).await {
                        Some(end) => return end,
                        None => continue,
                    }
                }
                Flow::Login(request_id, l) => match Box::pin(self.login(request_id, *l)).await {
                    Some(end) => return end,
                    None => continue,
                },
            }
            // Other cores are not taking this core's mail: read nothing more until they do.
            self.ctx.wait_for_mailboxes().await;
            // No timer here: the core's tick closes the connection at its deadline
            // (`close_expired`), and the shut-down socket ends this read.
            let read = self.link.read(&mut self.inbox, &self.ctx.buffers).await;
            if self.link.wants_write() {
                self.outbound.start_writer();
            }
            match read {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Decodes and handles the complete frames in the inbox, up to one that needs to wait.
    fn handle_frames(&mut self) -> Flow {
        let decoder = FrameDecoder::new();
        // When the first frame of this read was decoded.
        let mut first: Option<Instant> = None;
        loop {
            if self.outbound.closing.get() {
                return Flow::End(Box::new(End::Closed));
            }
            match decoder.decode(&mut self.inbox) {
                Ok(Some(frame)) => {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    self.handle.last_rx.set(now);
                    self.ctx.metrics.core(self.ctx.core).frames_in.add(1);
                    match self.handle_frame(frame) {
                        Flow::Read => {}
                        other => return other,
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(end) = self.decode_error(e) {
                        return Flow::End(Box::new(end));
                    }
                }
            }
        }
        let now = first.map(|first| {
            let now = Instant::now();
            self.ctx
                .metrics
                .core(self.ctx.core)
                .frames_handled((now - first).as_micros() as u64);
            now
        });
        if self.inbox.is_empty() {
            // Idle: hold no buffer while waiting.
            self.inbox = BytesMut::new();
            self.handle.frame_started.set(None);
        } else if now.is_some() || self.handle.frame_started.get().is_none() {
            self.handle
                .frame_started
                .set(Some(now.unwrap_or_else(Instant::now)));
        }
        Flow::Read
    }

    /// Unregisters the connection, then lets the writer flush and either shuts the socket down
    /// or hands it, with what was read and not handled, to the core that takes it over.
    async fn finish(self, end: End) {
        let Conn {
            ctx,
            id,
            link,
            outbound,
            inbox,
            ..
        } = self;
        ctx.shard.borrow_mut().connection_closed(ctx.now_ms(), id);
        ctx.kick();
        let migrate = match end {
            End::Closed => None,
            End::Migrate {
                core,
                request_id,
                auth,
            } => Some((core, request_id, auth)),
        };
        outbound.shutdown_after.set(migrate.is_none());
        outbound.close();
        // Still among the core's connections while the writer flushes, so that the tick bounds
        // how long that takes (`drop_if_unread`) and the connection counts against the limit.
        outbound.finished().await;
        ctx.conns.borrow_mut().remove(&id);
        let metrics = ctx.metrics.core(ctx.core);
        metrics.connections.sub(1);
        metrics.transport_connections[link.transport() as usize].sub(1);
        let Some((core, request_id, auth)) = migrate else {
            return;
        };
        let Ok(link) = Rc::try_unwrap(link) else {
            tracing::error!("socket still shared at migration; dropping the connection");
            return;
        };
        match link.into_parts() {
            Ok((socket, tls, ws)) => {
                let adoption = Adoption {
                    socket,
                    tls: tls.map(Box::new),
                    ws,
                    buffered: inbox,
                    request_id,
                    auth,
                };
                ctx.send_mail(core, Letter::Adopt(Box::new(adoption)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection over; dropping it"),
        }
    }

    fn reply(&self, request_id: u32, body: impl Into<Body>) {
        self.outbound.push(&Frame::new(request_id, body));
    }

    fn error(&self, request_id: u32, code: ErrorCode, message: &str) {
        self.reply(
            request_id,
            ErrorFrame {
                code,
                retry_after_ms: 0,
                message: message.to_owned(),
            },
        );
    }

    fn decode_error(&self, e: FrameError) -> Option<End> {
        let code = e.error.code();
        if e.error.closes_connection() {
            self.outbound.close_with(code, &e.to_string());
            return Some(End::Closed);
        }
        if self.phase == Phase::NeedHello {
            self.outbound.close_with(
                ErrorCode::HELLO_REQUIRED,
                "the first frame must be a valid Hello",
            );
            return Some(End::Closed);
        }
        self.error(e.request_id.unwrap_or(0), code, &e.to_string());
        None
    }

    fn handle_frame(&mut self, frame: Frame) -> Flow {
        let Frame { request_id, body } = frame;
        if self.ctx.stopping() {
            // After GoAway, requests read are not performed and get no reply (spec §2.9).
            return Flow::Read;
        }
        if self.phase == Phase::NeedHello {
            let Body::Hello(hello) = body else {
                self.outbound
                    .close_with(ErrorCode::HELLO_REQUIRED, "the first frame must be Hello");
                return Flow::End(Box::new(End::Closed));
            };
            if request_id == 0 {
                self.outbound
                    .close_with(ErrorCode::HELLO_REQUIRED, "the first frame must be Hello");
                return Flow::End(Box::new(End::Closed));
            };
            if hello.min_version > PROTOCOL_VERSION || hello.max_version < PROTOCOL_VERSION {
                let message =
                    format!("this server speaks protocol version {PROTOCOL_VERSION} only");
                self.outbound
                    .close_with(ErrorCode::UNSUPPORTED_VERSION, &message);
                return Flow::End(Box::new(End::Closed));
            }
            self.reply(request_id, self.welcome());
            self.phase = Phase::Ready;
            self.handle.hello_by.set(None);
            return Flow::Read;
        }
        if body.direction() != frames::Direction::Request {
            self.error(
                request_id,
                ErrorCode::UNKNOWN_TYPE,
                "servers accept requests only",
            );
            return Flow::Read;
        }
        if request_id == 0 {
            self.error(
                0,
                ErrorCode::INVALID_ARGUMENT,
                "requests need a non-zero request id",
            );
            return Flow::Read;
        }
        let authenticated = self.ctx.shard.borrow().session(self.id).is_some();
        match body {
            Body::Hello(_) => self.error(
                request_id,
                ErrorCode::INVALID_ARGUMENT,
                "Hello was already received",
            ),
            Body::Ping(ping) => self.reply(request_id, Pong { nonce: ping.nonce }),
            Body::Register(_) | Body::Login(_) | Body::Resume(_) if authenticated => self.error(
                request_id,
                ErrorCode::ALREADY_AUTHENTICATED,
                "this session is already authenticated",
            ),
            Body::Register(r) => return Flow::Register(request_id, Box::new(r)),
            Body::Login(l) => return Flow::Login(request_id, Box::new(l)),
            Body::Resume(r) => {
                return match self.resume(request_id, r) {
                    Some(end) => Flow::End(Box::new(end)),
                    None => Flow::Read,
                }
            }
            _ if !authenticated => self.error(
                request_id,
                ErrorCode::NOT_AUTHENTICATED,
                "authenticate first",
            ),
            body => {
                if !body.is_notification() {
                    let in_flight = self.handle.in_flight.get();
                    if in_flight >= REQUESTS_IN_FLIGHT_MAX {
                        self.error(
                            request_id,
                            ErrorCode::RATE_LIMITED,
                            "too many requests in flight",
                        );
                        return Flow::Read;
                    }
                    self.handle.in_flight.set(in_flight + 1);
                }
                let now = self.ctx.now_ms();
                self.ctx
                    .shard
                    .borrow_mut()
                    .handle_request(now, self.id, request_id, body);
                self.ctx.kick();
            }
        }
        Flow::Read
    }

    fn welcome(&self) -> Welcome {
        let config = &self.ctx.config;
        Welcome {
            version: PROTOCOL_VERSION,
            server_name: concat!("ternd/", env!("CARGO_PKG_VERSION")).to_owned(),
            server_time_ms: self.ctx.now_ms(),
            limits: ServerLimits {
                frame_bytes_max: tern_protocol::limits::FRAME_BYTES_MAX,
                body_chars_max: tern_protocol::limits::BODY_CHARS_MAX,
                group_members_max: config.group_members_max,
                devices_per_user_max: config.devices_per_user_max,
                sync_page_updates_max: config.sync_page_updates_max,
                history_page_messages_max: config.history_page_messages_max,
                media_chunk_bytes_max: tern_protocol::limits::MEDIA_CHUNK_BYTES_MAX,
                media_bytes_max: config.media_bytes_max,
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                idle_timeout_ms: config.idle_timeout_ms,
            },
        }
    }

    async fn register(&mut self, request_id: u32, r: frames::Register) -> Option<End> {
        if let Err(m) = validate_username(&r.username).and_then(|()| validate_password(&r.password))
        {
            self.error(request_id, ErrorCode::INVALID_ARGUMENT, m);
            return None;
        }
        let salt: [u8; 16] = self.ctx.random();
        let iterations = self.ctx.config.password_iterations;
        let password = r.password;
        let hashed = self
            .ctx
            .pool
            .run(move || accounts::hash_password(&password, &salt, iterations))
            .await;
        let Ok(password_hash) = hashed else {
            self.error(
                request_id,
                ErrorCode::RATE_LIMITED,
                "the server is busy; try again",
            );
            return None;
        };
        let user = UserRecord {
            username: r.username,
            created_at: 0,
            password_salt: salt,
            password_iterations: iterations,
            password_hash,
            hide_last_seen: false,
        };
        let core = name_owner(&user.username, self.ctx.cores);
        let origin = ConnRef {
            core: self.ctx.core,
            conn: self.id,
        };
        let outcome = self.ctx.await_user_created(self.id);
        self.ctx.send_mail(
            core,
            Mail::CreateUser {
                origin,
                user: Box::new(user),
                device_name: r.device_name,
            },
        );
        match outcome.await {
            Ok(Ok((user_id, username, device_name))) => {
                Some(self.migrate(request_id, user_id, username, device_name))
            }
            Ok(Err(code)) => {
                self.error(request_id, code, "cannot create this account");
                None
            }
            Err(_) => {
                self.error(
                    request_id,
                    ErrorCode::INTERNAL,
                    "registration was interrupted",
                );
                None
            }
        }
    }

    async fn login(&mut self, request_id: u32, l: frames::Login) -> Option<End> {
        if let Err(retry_after_ms) =
            self.ctx
                .logins
                .check(&l.username, self.peer, self.ctx.now_ms())
        {
            let error = ErrorFrame {
                code: ErrorCode::RATE_LIMITED,
                retry_after_ms,
                message: "too many failed logins; wait before trying again".into(),
            };
            self.reply(request_id, error);
            return None;
        }
        let found = match self.ctx.store.user_id_by_name(&l.username) {
            Ok(Some(user_id)) => self
                .ctx
                .store
                .user(user_id)
                .map(|u| u.map(|u| (user_id, u))),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "reading an account");
                self.error(request_id, ErrorCode::INTERNAL, "storage error");
                return None;
            }
        };
        // Unknown users are checked against a dummy hash too, so timing does not reveal which
        // usernames exist.
        let (user_id, user) = found.unwrap_or_else(|| (0, self.ctx.dummy_user.clone()));
        let password = l.password;
        let checked = self
            .ctx
            .pool
            .run(move || (accounts::verify_password(&password, &user), user))
            .await;
        match checked {
            Ok((true, user)) if user_id != 0 => {
                self.ctx.logins.succeeded(&l.username);
                Some(self.migrate(request_id, user_id, user.username, l.device_name))
            }
            Ok(_) => {
                self.ctx
                    .logins
                    .failed(&l.username, self.peer, self.ctx.now_ms());
                self.error(
                    request_id,
                    ErrorCode::BAD_CREDENTIALS,
                    "wrong username or password",
                );
                None
            }
            Err(_) => {
                self.error(
                    request_id,
                    ErrorCode::RATE_LIMITED,
                    "the server is busy; try again",
                );
                None
            }
        }
    }

    fn resume(&mut self, request_id: u32, r: frames::Resume) -> Option<End> {
        let hash = token_hash(&r.token);
        match self.ctx.store.session(&hash) {
            Ok(Some((user_id, device_id))) => Some(End::Migrate {
                core: self.ctx.owner(user_id),
                request_id,
                auth: AdoptAuth::Resume {
                    user_id,
                    device_id,
                    token_hash: hash,
                },
            }),
            Ok(None) => {
                self.error(
                    request_id,
                    ErrorCode::BAD_CREDENTIALS,
                    "unknown or revoked token",
                );
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a session");
                self.error(request_id, ErrorCode::INTERNAL, "storage error");
                None
            }
        }
    }

    fn migrate(&self, request_id: u32, user_id: u64, username: String, device_name: String) -> End {
        let token: [u8; 32] = self.ctx.random();
        let auth = AdoptAuth::NewDevice {
            user_id,
            username,
            device_name,
            token,
            token_hash: token_hash(&token),
        };
        End::Migrate {
            core: self.ctx.owner(user_id),
            request_id,
            auth,
        }
    }
}

/// Sends `GoAway` on every connection of this core.
pub(crate) fn go_away_all(ctx: &CoreCtx) {
    let frame = Frame::event(GoAway {
        reconnect_after_ms: 1000,
        message: "server shutting down".into(),
    });
    for handle in ctx.conns.borrow().values() {
        handle.outbound.push(&frame);
    }
}
