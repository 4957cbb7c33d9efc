//! Connections as the benchmark drives them: an [`Outbox`] (a write buffer drained by one writer
//! task, so frames queued together leave in one `write`), and the request/reply helpers used while
//! setting a workload up.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tern_protocol::frames::{Authenticated, Hello, Login, Register, Resume, Sync, SyncPage};
use tern_protocol::limits::PROTOCOL_VERSION;
use tern_protocol::{Body, Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::transport::{Stream, WriteHalf};

/// How long a setup request may wait for its reply.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connect may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames waiting to be written to one connection.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buf: Mutex<BytesMut>,
    notify: Notify,
    closed: AtomicBool,
    next_request: AtomicU32,
}

impl Outbox {
    /// An empty outbox whose request ids continue after `first_request_id`.
    pub(crate) fn new(first_request_id: u32) -> Arc<Outbox> {
        let out = Outbox::default();
        out.next_request.store(first_request_id, Ordering::Relaxed);
        Arc::new(out)
    }

    /// The next request id of the connection (never 0).
    pub(crate) fn request_id(&self) -> u32 {
        loop {
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, BytesMut> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an encoded frame and wakes the writer.
    pub(crate) fn push(&self, frame: &Frame) {
        {
            let mut buf = self.lock();
            // Every frame the benchmark builds is far below the frame limit.
            let _ = frame.encode(&mut buf);
        }
        self.notify.notify_one();
    }

    /// Queues bytes that are already encoded frames and wakes the writer.
    pub(crate) fn push_bytes(&self, bytes: &[u8]) {
        self.lock().extend_from_slice(bytes);
        self.notify.notify_one();
    }

    /// Whether the connection has been closed (by either side).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Asks the writer to flush and shut the write side down.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

/// Writes whatever the outbox holds, batching everything queued since the last write.
pub(crate) async fn writer(out: Arc<Outbox>, mut w: WriteHalf) {
    let mut local = BytesMut::new();
    loop {
        out.notify.notified().await;
        loop {
            {
                let mut buf = out.lock();
                if buf.is_empty() {
                    break;
                }
                std::mem::swap(&mut *buf, &mut local);
            }
            if w.write_all(&local).await.is_err() || w.flush().await.is_err() {
                out.closed.store(true, Ordering::Relaxed);
                return;
            }
            local.clear();
            if local.capacity() > 1 << 20 {
                local = BytesMut::new();
            }
        }
        if out.is_closed() {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// Connects to `addr`, from `source` when given (any port), with Nagle off.
pub(crate) async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// A connection in its setup phase: requests are answered one at a time.
#[derive(Debug)]
pub(crate) struct SetupConn {
    /// The connection, TCP or WebSocket.
    pub(crate) stream: Stream,
    /// Bytes read and not yet decoded.
    pub(crate) rbuf: BytesMut,
    next_request: u32,
    decoder: FrameDecoder,
}

impl SetupConn {
    /// Connects over TCP and says `Hello`; returns the connection and the server's `Welcome`.
    pub(crate) async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> io::Result<(SetupConn, tern_protocol::frames::Welcome)> {
        SetupConn::open_on(addr, source, false).await
    }

    /// As [`SetupConn::open`], over WebSocket when `websocket` (`addr` is then the WebSocket
    /// listener's).
    pub(crate) async fn open_on(
        addr: SocketAddr,
        source: Option<IpAddr>,
        websocket: bool,
    ) -> io::Result<(SetupConn, tern_protocol::frames::Welcome)> {
        let tcp = connect(addr, source).await?;
        let stream = match websocket {
            true => Stream::websocket(tcp, addr).await?,
            false => Stream::tcp(tcp),
        };
        let mut conn = SetupConn {
            stream,
            rbuf: BytesMut::with_capacity(512),
            next_request: 1,
            decoder: FrameDecoder::new(),
        };
        let reply = conn
            .rpc(Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                client_name: "tern-bench".into(),
            })
            .await?;
        match reply {
            Body::Welcome(w) => Ok((conn, w)),
            other_reply => Err(other(format!("Hello answered {other_reply:?}"))),
        }
    }

    /// The request id the next request will carry; later ids are free for an [`Outbox`].
    pub(crate) fn next_request_id(&self) -> u32 {
        self.next_request
    }

    /// Writes a frame without waiting for anything.
    pub(crate) async fn send(&mut self, body: impl Into<Body>) -> io::Result<u32> {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        let bytes = Frame::new(id, body)
            .to_bytes()
            .map_err(|e| other(e.to_string()))?;
        self.stream.write_all(&bytes).await?;
        self.stream.flush().await?;
        Ok(id)
    }

    /// Reads the next frame.
    pub(crate) async fn read_frame(&mut self) -> io::Result<Frame> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(other(format!("undecodable frame: {e:?}"))),
            }
            if self.rbuf.capacity() - self.rbuf.len() < 256 {
                self.rbuf.reserve(4096);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends a request and returns its reply's body, skipping events.
    pub(crate) async fn rpc(&mut self, body: impl Into<Body>) -> io::Result<Body> {
        let id = self.send(body).await?;
        let wait = async {
            loop {
                let frame = self.read_frame().await?;
                if frame.request_id == id {
                    return Ok(frame.body);
                }
            }
        };
        tokio::time::timeout(RPC_TIMEOUT, wait)
            .await
            .map_err(|_| other("no reply within the time-out".into()))?
    }

    /// Registers a new user.
    pub(crate) async fn register(&mut self, username: &str) -> io::Result<Authenticated> {
        let reply = self
            .rpc(Register {
                username: username.into(),
                password: PASSWORD.into(),
                device_name: "bench".into(),
            })
            .await?;
        authenticated(reply, "Register")
    }

    /// Logs in as a new device of an existing user.
    pub(crate) async fn login(&mut self, username: &str) -> io::Result<Authenticated> {
        let reply = self
            .rpc(Login {
                username: username.into(),
                password: PASSWORD.into(),
                device_name: "bench".into(),
            })
            .await?;
        authenticated(reply, "Login")
    }

    /// Resumes a device by token.
    pub(crate) async fn resume(&mut self, token: [u8; 32]) -> io::Result<Authenticated> {
        let reply = self.rpc(Resume { token }).await?;
        authenticated(reply, "Resume")
    }

    /// Syncs from `since` until caught up, which turns live updates on. Returns the updates seen
    /// and the last `user_seq`.
    pub(crate) async fn sync_all(&mut self, since: u64) -> io::Result<(u64, u64)> {
        let mut since = since;
        let mut count = 0u64;
        loop {
            let reply = self.rpc(Sync { since, limit: 0 }).await?;
            let Body::SyncPage(SyncPage {
                updates, has_more, ..
            }) = reply
            else {
                return Err(other(format!("Sync answered {reply:?}")));
            };
            count += updates.len() as u64;
            if let Some(last) = updates.last() {
                since = last.user_seq;
            }
            if !has_more {
                return Ok((count, since));
            }
        }
    }
}

/// The password of every benchmark user.
pub(crate) const PASSWORD: &str = "bench-password-1";

fn authenticated(reply: Body, what: &str) -> io::Result<Authenticated> {
    match reply {
        Body::Authenticated(a) => Ok(a),
        other_reply => Err(other(format!("{what} answered {other_reply:?}"))),
    }
}
