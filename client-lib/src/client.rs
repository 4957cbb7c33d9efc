//! [`Client`]: one connection to a Tern server, as the application sees it.
//!
//! `connect` opens the socket, does the `Hello`/`Welcome` handshake inline (no task runs until the
//! server has said yes), then starts the reader and writer tasks of `connection.rs`. After
//! that every method takes `&self`, so one client can be shared (`Arc<Client>`) by tasks that
//! send requests while another consumes events. The typed helpers (`register`, `send`, ...) live in
//! `requests.rs`; this file has the generic machinery they call.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_protocol::frames::{Direction, Hello, Welcome};
use tern_protocol::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, PROTOCOL_VERSION};
use tern_protocol::{Body, Frame, FrameDecoder};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::connection::{self, Failure, Outgoing, Shared, OUTGOING_FRAMES_MAX};
use crate::error::ClientError;
use crate::event::Event;
use crate::options::ConnectOptions;
use crate::tls::TlsOptions;

/// A connection to a Tern server: requests with replies, notifications, and a stream of events.
///
/// Needs a tokio runtime with I/O and time enabled (`#[tokio::test]` and `#[tokio::main]` qualify),
/// current-thread or multi-thread. Dropping the client stops its tasks at once and closes the
/// socket, discarding frames not yet written; [`Client::close`] writes them first and closes
/// cleanly.
pub struct Client {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    welcome: Welcome,
    /// The largest frame the server accepts, from its `Welcome`.
    send_frame_bytes_max: u32,
    request_timeout: Duration,
    /// The background tasks, until `close` takes them to wait for their end.
    tasks: Mutex<Option<Tasks>>,
}

#[derive(Debug)]
struct Tasks {
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Removes a request's waiter when the request ends in any way: reply, error, time-out, or the
/// caller dropping the future.
struct PendingGuard<'a> {
    shared: &'a Shared,
    request_id: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.request_id);
    }
}

/// [`PendingGuard`] for a wait that outlives the borrow of the client.
struct OwnedPendingGuard {
    shared: Arc<Shared>,
    request_id: u32,
}

impl Drop for OwnedPendingGuard {
    fn drop(&mut self) {
        self.shared.forget(self.request_id);
    }
}

impl Client {
    /// Connects over TCP (with `TCP_NODELAY`, as chat frames are small and latency matters), sends
    /// `Hello` and waits for the server's `Welcome`.
    ///
    /// `addr` is anything tokio can resolve without blocking the runtime: a `SocketAddr`, a
    /// `"host:port"` string, an `(IpAddr, u16)` pair. (The bound is tokio's `ToSocketAddrs`, which
    /// takes the same plain values as std's, because std's resolves host names by blocking the
    /// thread, and with it every task of a current-thread runtime.) The whole of it is bounded by
    /// [`ConnectOptions::request_timeout`]. An `Error` answer becomes [`ClientError::Server`]
    /// (`UNSUPPORTED_VERSION`, `UNAVAILABLE`, ...).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let request_timeout = options.request_timeout;
        within(request_timeout, async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (reader, writer) = stream.into_split();
            Client::start(reader, writer, options).await
        })
        .await
    }

    /// Connects over TLS: TCP as [`Client::connect`] does, then a TLS handshake checking the
    /// server's certificate as `tls` says, then `Hello`. The TLS handshake counts towards the
    /// request time-out too. A certificate the client does not trust fails with
    /// [`ClientError::Io`].
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        tls: &TlsOptions,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let (connector, name) = tls.connector()?;
        let request_timeout = options.request_timeout;
        within(request_timeout, async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let stream = connector.connect(name, stream).await?;
            let (reader, writer) = tokio::io::split(stream);
            Client::start(reader, writer, options).await
        })
        .await
    }

    /// Does the handshake over a stream's two halves, then starts the reader and writer tasks.
    async fn start<R, W>(
        mut reader: R,
        mut writer: W,
        options: ConnectOptions,
    ) -> Result<Client, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Shared::new();
        let decoder = FrameDecoder::with_max_frame_bytes(options.max_frame_bytes);
        let hello = Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_name: options.client_name,
        };
        let hello = encode(shared.allocate_request_id()?, hello, FRAME_BYTES_MAX)?;
        let mut buf = BytesMut::new();
        let welcome =
            connection::handshake(&mut reader, &mut writer, &hello, &mut buf, &decoder).await?;
        if welcome.version != PROTOCOL_VERSION {
            return Err(ClientError::UnsupportedVersion {
                version: welcome.version,
            });
        }

        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_FRAMES_MAX);
        let (events_tx, events) = mpsc::channel(options.event_buffer.max(1));
        let tasks = Tasks {
            reader: tokio::spawn(connection::run_reader(
                reader,
                buf,
                decoder,
                Arc::clone(&shared),
                events_tx,
            )),
            writer: tokio::spawn(connection::run_writer(
                writer,
                outgoing_rx,
                Arc::clone(&shared),
            )),
        };
        Ok(Client {
            send_frame_bytes_max: welcome
                .limits
                .frame_bytes_max
                .clamp(FRAME_HEADER_BYTES, FRAME_BYTES_MAX),
            shared,
            outgoing,
            events: tokio::sync::Mutex::new(events),
            welcome,
            request_timeout: options.request_timeout,
            tasks: Mutex::new(Some(tasks)),
        })
    }

    /// The server's `Welcome`: the protocol version, the server's name and clock, and the limits
    /// it enforces (largest frame, longest body, page sizes, heartbeat interval).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the connection is closed. Once it is, every call fails with
    /// [`ClientError::Closed`] (or the [`ClientError::Protocol`] error that closed it), while
    /// events received before still come out of [`Client::next_event`].
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Sends a request and waits for its reply, which may arrive in any order relative to other
    /// requests' replies and to events.
    ///
    /// Returns the reply's body; an `Error` reply becomes [`ClientError::Server`]. Fails with
    /// [`ClientError::Timeout`] after [`ConnectOptions::request_timeout`] (the connection stays
    /// usable and a late reply is dropped), and with [`ClientError::Closed`] if the connection
    /// closes first. Notifications (`Ack`, `Typing`) go through [`Client::notify`] instead.
    ///
    /// Cancel-safe in the sense that matters: dropping the future forgets the request, though the
    /// server may already have received and acted on it.
    pub async fn request(&self, body: impl Into<Body>) -> Result<Body, ClientError> {
        let body = body.into();
        check_sendable(&body)?;
        if body.is_notification() {
            return Err(ClientError::Usage {
                frame: body.name(),
                reason: "a notification gets no reply; use notify",
            });
        }
        let (request_id, reply) = self.shared.register()?;
        let _pending = PendingGuard {
            shared: &self.shared,
            request_id,
        };
        let frame = encode(request_id, body, self.send_frame_bytes_max)?;
        let reply = within(self.request_timeout, async {
            self.queue(frame).await?;
            match reply.await {
                Ok(reply) => reply.map_err(ClientError::from),
                // The waiter was dropped unanswered, which only closing does.
                Err(_) => Err(self.closed_error()),
            }
        })
        .await?;
        match reply {
            Body::Error(error) => Err(ClientError::from_server(error)),
            reply => Ok(reply),
        }
    }

    /// Queues a request for writing and returns the wait for its reply, so that a caller issuing
    /// several requests can fix the order they go out in (each is queued when this returns) and
    /// still wait for the replies concurrently. The wait is bounded by the request time-out.
    pub(crate) async fn request_in_order(
        &self,
        body: impl Into<Body>,
    ) -> Result<impl Future<Output = Result<Body, ClientError>> + Send + 'static, ClientError> {
        let body = body.into();
        check_sendable(&body)?;
        let (request_id, reply) = self.shared.register()?;
        let pending = OwnedPendingGuard {
            shared: Arc::clone(&self.shared),
            request_id,
        };
        let frame = encode(request_id, body, self.send_frame_bytes_max)?;
        within(self.request_timeout, self.queue(frame)).await?;
        let timeout = self.request_timeout;
        Ok(async move {
            let reply = within(timeout, async {
                match reply.await {
                    Ok(reply) => reply.map_err(ClientError::from),
                    Err(_) => Err(pending.shared.close_reason().into()),
                }
            })
            .await;
            drop(pending);
            match reply? {
                Body::Error(error) => Err(ClientError::from_server(error)),
                reply => Ok(reply),
            }
        })
    }

    /// Sends a notification (`Ack` or `Typing`) without waiting for anything.
    ///
    /// Returns once the frame is queued for writing. The server answers a notification only when it
    /// fails, and that `Error` arrives as [`Event::Error`].
    pub async fn notify(&self, body: impl Into<Body>) -> Result<(), ClientError> {
        let body = body.into();
        check_sendable(&body)?;
        if !body.is_notification() {
            return Err(ClientError::Usage {
                frame: body.name(),
                reason: "a request gets a reply; use request",
            });
        }
        let request_id = self.shared.allocate_request_id()?;
        let frame = encode(request_id, body, self.send_frame_bytes_max)?;
        within(self.request_timeout, self.queue(frame)).await
    }

    /// Hands an encoded frame to the writer task, waiting while its queue is full.
    async fn queue(&self, frame: Bytes) -> Result<(), ClientError> {
        self.outgoing
            .send(Outgoing::Frame(frame))
            .await
            .map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> ClientError {
        self.shared.close_reason().into()
    }

    /// The next event, waiting for one if none is buffered. `None` once the connection is closed and
    /// every event received before has been returned.
    ///
    /// Cancel-safe: dropping the future loses no event. Concurrent callers take turns.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// The next buffered event, without waiting. `None` when none is buffered (or another task is
    /// inside [`Client::next_event`] right now).
    pub fn try_next_event(&self) -> Option<Event> {
        self.events.try_lock().ok()?.try_recv().ok()
    }

    /// Waits for the first event that `matches` accepts, discarding the events before it.
    ///
    /// Fails with [`ClientError::Timeout`] after `timeout`, and with [`ClientError::Closed`] (or the
    /// error that closed the connection) if the events run out first. Tests use this to wait for
    /// what they expect instead of sleeping.
    pub async fn wait_for_event(
        &self,
        mut matches: impl FnMut(&Event) -> bool,
        timeout: Duration,
    ) -> Result<Event, ClientError> {
        within(timeout, async {
            let mut events = self.events.lock().await;
            while let Some(event) = events.recv().await {
                if matches(&event) {
                    return Ok(event);
                }
            }
            Err(self.closed_error())
        })
        .await
    }

    /// Closes the connection cleanly: fails requests still waiting with [`ClientError::Closed`],
    /// writes every frame queued before the call, shuts the sending direction down, waits (up to
    /// [`ConnectOptions::request_timeout`]) for the server to close its side, then releases the
    /// socket. Events received until then stay available from [`Client::next_event`].
    ///
    /// Calling it again, or after the connection has closed, does nothing.
    pub async fn close(&self) {
        self.shared.mark_closed(Failure::Closed);
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(tasks) = tasks else {
            return;
        };
        let mut stop = self.shared.stop_signal();
        let graceful = async {
            let (done, written) = oneshot::channel();
            if self.outgoing.send(Outgoing::Close(done)).await.is_ok() {
                // An error means the writer failed, which stops the reader too.
                let _ = written.await;
            }
            // The reader stops the connection when the server closes its side.
            connection::stopped(&mut stop).await;
        };
        // Past the time-out the server is not closing its side; stop without it.
        let _ = tokio::time::timeout(self.request_timeout, graceful).await;
        self.shared.shutdown(Failure::Closed);
        // The tasks only end early by panicking, and then there is nothing left to clean up.
        let _ = tasks.reader.await;
        let _ = tasks.writer.await;
    }
}

impl Client {
    /// Closes the connection at once, without the graceful part of [`Client::close`]: for a
    /// connection already known to be dead.
    pub(crate) fn abort(&self) {
        self.shared.shutdown(Failure::Closed);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.abort();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server_name", &self.welcome.server_name)
            .field("version", &self.welcome.version)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Refuses frames only servers send.
fn check_sendable(body: &Body) -> Result<(), ClientError> {
    if body.direction() == Direction::Request {
        Ok(())
    } else {
        Err(ClientError::Usage {
            frame: body.name(),
            reason: "only servers send this frame type",
        })
    }
}

/// Encodes one frame, refusing it above the peer's frame limit.
fn encode(
    request_id: u32,
    body: impl Into<Body>,
    max_frame_bytes: u32,
) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    Frame::new(request_id, body).encode_with_max(&mut buf, max_frame_bytes)?;
    Ok(buf.freeze())
}

/// Runs `work`, failing with [`ClientError::Timeout`] if it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ClientError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    // A client can be shared between tasks (Arc<Client>) and its futures spawned.
    #[test]
    fn client_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<ClientError>();
        assert_send_sync::<Event>();
    }
}
