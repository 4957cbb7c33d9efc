//! The moving parts under [`Client`](crate::Client): the table of requests waiting for replies,
//! the handshake, and the two background tasks that own the socket.
//!
//! A request never touches the socket itself. It registers a oneshot channel under a fresh request
//! id in [`Shared`], queues its encoded frame for the writer task and waits on the channel. The
//! reader task decodes the server's frames and routes each one: a reply to the waiter registered
//! under its request id, an event to the bounded event queue. So any number of requests may be in
//! flight from any number of tasks, replies may come back in any order and interleaved with events,
//! and a caller that gives up (time-out, or dropping the future) leaves nothing behind.
//!
//! Both tasks are generic over the stream's halves, so a TLS stream (later) plugs in where the TCP
//! halves go today.
//!
//! Closing: whichever part notices the end first (the reader: end of stream, an I/O error or a fatal
//! decode error; the writer: an I/O error; the client: `close` or drop) calls [`Shared::shutdown`].
//! It records why (the first reason wins), fails every waiting request with that reason, refuses
//! new ones, and tells both tasks to stop.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use tern_protocol::frames::{Direction, Welcome};
use tern_protocol::{Body, DecodeError, Frame, FrameDecoder, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ClientError;
use crate::event::Event;

/// Bytes asked of the socket per read while the next frame's length is still unknown.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// The writer stops gathering queued frames into one write once the batch holds this many bytes.
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;

/// Frames queued for the writer task; a caller waits for room beyond this.
pub(crate) const OUTGOING_FRAMES_MAX: usize = 256;

/// Why the connection ended, as handed to every request it fails. Unlike [`ClientError`] it is
/// `Clone`, because one reason goes to many waiters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection is closed, by either side.
    Closed,
    /// The server sent a frame that could not be decoded.
    Protocol(FrameError),
}

impl From<Failure> for ClientError {
    fn from(failure: Failure) -> ClientError {
        match failure {
            Failure::Closed => ClientError::Closed,
            Failure::Protocol(error) => ClientError::Protocol(error),
        }
    }
}

/// What a waiting request receives: the reply's body (an `Error` body included), or why none came.
pub(crate) type Reply = Result<Body, Failure>;

/// What the client hands the writer task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// An encoded frame.
    Frame(Bytes),
    /// Write everything queued before this, shut the sending direction down, acknowledge, stop.
    Close(oneshot::Sender<()>),
}

#[derive(Debug)]
struct State {
    /// Requests waiting for a reply, by request id.
    pending: HashMap<u32, oneshot::Sender<Reply>>,
    /// The request id handed out last; ids wrap around and skip 0.
    last_request_id: u32,
    /// Set once the connection is closed: why.
    closed: Option<Failure>,
}

impl State {
    /// The next request id: non-zero, and not one a request is still waiting on.
    ///
    /// The loop ends within `pending.len() + 2` turns, as there are only that many ids to skip.
    fn allocate_request_id(&mut self) -> u32 {
        debug_assert!(self.pending.len() < u32::MAX as usize - 1);
        loop {
            self.last_request_id = self.last_request_id.wrapping_add(1);
            let id = self.last_request_id;
            if id != 0 && !self.pending.contains_key(&id) {
                return id;
            }
        }
    }
}

/// The state the client and its two tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Becomes `true` when both tasks must stop.
    stop: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                last_request_id: 0,
                closed: None,
            }),
            stop: watch::channel(false).0,
        })
    }

    /// Locks the state. Nothing panics while holding the lock, but should that ever change, the
    /// table is still consistent after any single operation on it, so a poisoned lock is used as is.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Allocates a request id and registers a waiter for its reply.
    pub(crate) fn register(&self) -> Result<(u32, oneshot::Receiver<Reply>), Failure> {
        let mut state = self.state();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        let id = state.allocate_request_id();
        let (waiter, reply) = oneshot::channel();
        state.pending.insert(id, waiter);
        Ok((id, reply))
    }

    /// Allocates a request id for a frame that gets no reply on success (`Hello` is answered before
    /// the reader runs; notifications are answered only when they fail).
    pub(crate) fn allocate_request_id(&self) -> Result<u32, Failure> {
        let mut state = self.state();
        match &state.closed {
            Some(reason) => Err(reason.clone()),
            None => Ok(state.allocate_request_id()),
        }
    }

    /// Stops waiting for the reply to `request_id` (the caller gave up, or has its reply).
    pub(crate) fn forget(&self, request_id: u32) {
        self.state().pending.remove(&request_id);
    }

    fn take_waiter(&self, request_id: u32) -> Option<oneshot::Sender<Reply>> {
        if request_id == 0 {
            return None;
        }
        self.state().pending.remove(&request_id)
    }

    /// Whether the connection is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed.is_some()
    }

    /// Why the connection closed ([`Failure::Closed`] while it is still open).
    pub(crate) fn close_reason(&self) -> Failure {
        self.state().closed.clone().unwrap_or(Failure::Closed)
    }

    /// Marks the connection closed (the first reason wins) and fails every waiting request with
    /// that reason. The tasks keep running: `Client::close` still lets the writer flush.
    pub(crate) fn mark_closed(&self, reason: Failure) {
        let (reason, waiters) = {
            let mut state = self.state();
            let reason = state.closed.get_or_insert(reason).clone();
            (reason, std::mem::take(&mut state.pending))
        };
        for waiter in waiters.into_values() {
            // The requester may have stopped waiting; then nobody needs to hear it.
            let _ = waiter.send(Err(reason.clone()));
        }
    }

    /// Marks the connection closed and tells both tasks to stop.
    pub(crate) fn shutdown(&self, reason: Failure) {
        self.mark_closed(reason);
        self.stop.send_replace(true);
    }

    /// A receiver that [`stopped`] waits on.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Routes one frame: a reply to its waiter, an event to the caller (returned).
    fn route(&self, frame: Frame) -> Option<Event> {
        let Frame { request_id, body } = frame;
        match body.direction() {
            Direction::Reply => match self.take_waiter(request_id) {
                Some(waiter) => {
                    // The requester may have stopped waiting; the reply is then dropped.
                    let _ = waiter.send(Ok(body));
                    None
                }
                // An error nobody waits for is news (a failed notification or a connection error);
                // any other reply nobody waits for belongs to a request that gave up.
                None => match body {
                    Body::Error(error) => Some(Event::Error(error)),
                    _ => None,
                },
            },
            Direction::Event => Event::from_body(body),
            // A server never sends requests; there is nobody to tell, so it is dropped.
            Direction::Request => None,
        }
    }

    /// A frame of a known type whose body could not be decoded (the stream is still in step): it
    /// was the reply, so the request it answers fails with the decode error instead of waiting for
    /// its time-out. A bad event is dropped.
    fn fail_request(&self, error: FrameError) {
        let waiter = error.request_id.and_then(|id| self.take_waiter(id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(Err(Failure::Protocol(error)));
        }
    }
}

/// Resolves once both tasks have been told to stop.
pub(crate) async fn stopped(signal: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = signal.wait_for(|stop| *stop).await;
}

/// Why [`read_frame`] failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Frame(FrameError),
}

/// Reads until one whole frame is buffered and decodes it. `Ok(None)`: the stream ended.
///
/// The buffer grows only by what the frame at its front still lacks, once its length field (checked
/// against the limit by [`FrameDecoder::frame_len`]) has arrived, or by one small chunk while the
/// length is unknown, so a hostile length costs nothing.
async fn read_frame<R>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Option<Frame>, ReadError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(ReadError::Frame)? {
            return Ok(Some(frame));
        }
        let missing_bytes = match decoder.frame_len(buf).map_err(ReadError::Frame)? {
            Some(frame_bytes) => frame_bytes.saturating_sub(buf.len()),
            None => READ_CHUNK_BYTES,
        };
        buf.reserve(missing_bytes.max(1));
        if reader.read_buf(buf).await.map_err(ReadError::Io)? == 0 {
            return Ok(None);
        }
    }
}

/// Sends the encoded `Hello` and reads the answer: `Welcome`, or an `Error` (as
/// [`ClientError::Server`]). Frame types this version does not know are skipped. Bytes that arrive
/// after the `Welcome` stay in `buf` for the reader task.
pub(crate) async fn handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    hello: &[u8],
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Welcome, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer.write_all(hello).await?;
    writer.flush().await?;
    loop {
        let frame = match read_frame(reader, buf, decoder).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(ClientError::Closed),
            Err(ReadError::Io(error)) => return Err(ClientError::Io(error)),
            Err(ReadError::Frame(error)) if is_unknown_type(&error) => continue,
            Err(ReadError::Frame(error)) => return Err(ClientError::Protocol(error)),
        };
        return match frame.body {
            Body::Welcome(welcome) => Ok(welcome),
            Body::Error(error) => Err(ClientError::from_server(error)),
            other => Err(ClientError::UnexpectedReply {
                expected: "Welcome",
                got: other.name(),
            }),
        };
    }
}

fn is_unknown_type(error: &FrameError) -> bool {
    matches!(error.error, DecodeError::UnknownType { .. })
}

/// The reader task: decodes frames and routes them until the stream ends, a fatal decode error
/// occurs, the application drops its event queue, or the client says stop. Then it shuts the
/// connection down with the reason.
pub(crate) async fn run_reader<R>(
    mut reader: R,
    mut buf: BytesMut,
    decoder: FrameDecoder,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
) where
    R: AsyncRead + Unpin,
{
    let mut stop = shared.stop_signal();
    let reason = tokio::select! {
        reason = receive(&mut reader, &mut buf, &decoder, &shared, &events) => reason,
        () = stopped(&mut stop) => Failure::Closed,
    };
    shared.shutdown(reason);
}

async fn receive<R>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
    shared: &Shared,
    events: &mpsc::Sender<Event>,
) -> Failure
where
    R: AsyncRead + Unpin,
{
    loop {
        let frame = match read_frame(reader, buf, decoder).await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(ReadError::Io(_)) => return Failure::Closed,
            Err(ReadError::Frame(error)) if error.error.closes_connection() => {
                return Failure::Protocol(error);
            }
            // A type this version does not know: a newer server's addition, skipped whole.
            Err(ReadError::Frame(error)) if is_unknown_type(&error) => continue,
            Err(ReadError::Frame(error)) => {
                shared.fail_request(error);
                continue;
            }
        };
        let Some(event) = shared.route(frame) else {
            continue;
        };
        // Waiting here when the queue is full is the back-pressure `ConnectOptions::event_buffer`
        // documents. An error means the client is gone.
        if events.send(event).await.is_err() {
            return Failure::Closed;
        }
    }
}

/// The writer task: writes queued frames, several per write when they queue up, until told to
/// close (then it shuts the sending direction down and stops), or to stop. A write error shuts the
/// connection down.
pub(crate) async fn run_writer<W>(
    mut writer: W,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
) where
    W: AsyncWrite + Unpin,
{
    let mut stop = shared.stop_signal();
    let result = tokio::select! {
        result = send(&mut writer, &mut outgoing) => result,
        () = stopped(&mut stop) => Ok(()),
    };
    if result.is_err() {
        shared.shutdown(Failure::Closed);
    }
}

async fn send<W>(writer: &mut W, outgoing: &mut mpsc::Receiver<Outgoing>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut batch = BytesMut::new();
    while let Some(first) = outgoing.recv().await {
        let mut close = None;
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Outgoing::Frame(frame) => batch.extend_from_slice(&frame),
                Outgoing::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if batch.len() >= WRITE_BATCH_BYTES_MAX {
                break;
            }
            next = outgoing.try_recv().ok();
        }
        writer.write_all(&batch).await?;
        writer.flush().await?;
        batch.clear();
        if let Some(done) = close {
            writer.shutdown().await?;
            let _ = done.send(());
            return Ok(());
        }
    }
    // Every sender is gone: the client was dropped, and has already said stop.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::frames::{self, Pong};
    use tern_protocol::ErrorCode;

    // Request ids wrap around without ever being 0 or an id a request still waits on.
    #[test]
    fn request_ids_wrap_skipping_zero_and_pending() {
        let shared = Shared::new();
        shared.state().last_request_id = u32::MAX - 2;
        let (waiting, _reply) = shared.register().unwrap();
        assert_eq!(waiting, u32::MAX - 1);
        assert_eq!(shared.allocate_request_id().unwrap(), u32::MAX);
        assert_eq!(shared.allocate_request_id().unwrap(), 1);

        shared.state().last_request_id = u32::MAX - 2;
        assert_eq!(shared.allocate_request_id().unwrap(), u32::MAX);
    }

    // Closing fails every waiter with the first reason and refuses new requests with it.
    #[test]
    fn mark_closed_fails_waiters_with_the_first_reason() {
        let shared = Shared::new();
        let (_, mut reply) = shared.register().unwrap();
        let error = FrameError {
            request_id: None,
            frame_type: None,
            error: DecodeError::FrameTooSmall { length: 1 },
        };
        shared.mark_closed(Failure::Protocol(error.clone()));
        shared.mark_closed(Failure::Closed);
        assert_eq!(
            reply.try_recv().unwrap(),
            Err(Failure::Protocol(error.clone()))
        );
        assert_eq!(shared.register().unwrap_err(), Failure::Protocol(error));
        assert!(shared.is_closed());
    }

    // A reply goes to its waiter; a reply nobody waits for is dropped unless it is an error,
    // which becomes an event; events pass through.
    #[test]
    fn route_sends_replies_to_waiters_and_unclaimed_errors_to_events() {
        let shared = Shared::new();
        let (id, mut reply) = shared.register().unwrap();
        assert_eq!(shared.route(Frame::new(id, Pong { nonce: 1 })), None);
        assert_eq!(reply.try_recv().unwrap(), Ok(Body::Pong(Pong { nonce: 1 })));

        assert_eq!(shared.route(Frame::new(id, Pong { nonce: 2 })), None);
        let error = frames::Error {
            code: ErrorCode::FORBIDDEN,
            retry_after_ms: 0,
            message: "no".into(),
        };
        assert_eq!(
            shared.route(Frame::new(id, error.clone())),
            Some(Event::Error(error))
        );
    }
}
