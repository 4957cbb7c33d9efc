//! A fake Tern server for the client's tests: a TCP listener on 127.0.0.1 whose connections the
//! test drives frame by frame with the protocol crate's encoder and decoder.
//!
//! A scripted peer rather than a real server, because these tests prove the client's own behaviour
//! (correlation, time-outs, closing) and need to produce what a correct server never would:
//! replies out of order, unknown frame types, oversized frames, a connection dropped mid-request.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tern_client::protocol::frames::{Hello, Welcome};
use tern_client::protocol::limits::{FRAME_BYTES_MAX, PROTOCOL_VERSION};
use tern_client::protocol::types::ServerLimits;
use tern_client::protocol::{Body, Frame, FrameDecoder};
use tern_client::{Client, ConnectOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every wait in the tests is bounded by this, so a bug fails a test instead of hanging it.
pub(crate) const TEST_WAIT_MS: u64 = 10_000;

/// Awaits `work`, panicking if it takes longer than [`TEST_WAIT_MS`].
pub(crate) async fn within<F: Future>(work: F) -> F::Output {
    tokio::time::timeout(Duration::from_millis(TEST_WAIT_MS), work)
        .await
        .expect("the test waited too long")
}

/// A listener on an ephemeral port of 127.0.0.1.
pub(crate) struct FakeServer {
    listener: TcpListener,
    pub(crate) addr: SocketAddr,
}

impl FakeServer {
    pub(crate) async fn bind() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a port on 127.0.0.1");
        let addr = listener.local_addr().expect("the listener's address");
        FakeServer { listener, addr }
    }

    /// Accepts the next connection.
    pub(crate) async fn accept(&self) -> Peer {
        let (stream, _) = self.listener.accept().await.expect("accept");
        Peer {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(),
        }
    }
}

/// The server's end of one connection.
pub(crate) struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Peer {
    /// The next frame from the client, or `None` once the client has closed its side.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("a valid frame from the client")
            {
                return Some(frame);
            }
            if self.stream.read_buf(&mut self.buf).await.expect("read") == 0 {
                assert!(self.buf.is_empty(), "the client closed mid-frame");
                return None;
            }
        }
    }

    /// The next frame, which must exist.
    pub(crate) async fn expect_frame(&mut self) -> Frame {
        self.recv().await.expect("the client closed the connection")
    }

    pub(crate) async fn send(&mut self, request_id: u32, body: impl Into<Body>) {
        let bytes = Frame::new(request_id, body).to_bytes().expect("encode");
        self.send_raw(&bytes).await;
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads the client's `Hello`, answers it with [`welcome`] and returns the `Hello`'s frame.
    pub(crate) async fn handshake(&mut self) -> Frame {
        let hello = self.expect_frame().await;
        assert!(matches!(hello.body, Body::Hello(_)), "got {hello:?}");
        self.send(hello.request_id, welcome()).await;
        hello
    }
}

/// The `Welcome` the fake server sends: realistic limits, a fixed clock.
pub(crate) fn welcome() -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        server_name: "fake-ternd/0".into(),
        server_time_ms: 1_700_000_000_000,
        limits: ServerLimits {
            frame_bytes_max: FRAME_BYTES_MAX,
            body_chars_max: 100_000,
            group_members_max: 100,
            devices_per_user_max: 10,
            sync_page_updates_max: 500,
            history_page_messages_max: 100,
            media_chunk_bytes_max: 256 * 1024,
            media_bytes_max: 100 * 1024 * 1024,
            heartbeat_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
        },
    }
}

/// The client's `Hello` body from its frame.
pub(crate) fn hello_of(frame: &Frame) -> &Hello {
    match &frame.body {
        Body::Hello(hello) => hello,
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// Connects a client to a fresh fake server and completes the handshake.
pub(crate) async fn connected(options: ConnectOptions) -> (Client, Peer, FakeServer) {
    let server = FakeServer::bind().await;
    let (client, peer) = within(async {
        tokio::join!(Client::connect(server.addr, options), async {
            let mut peer = server.accept().await;
            peer.handshake().await;
            peer
        })
    })
    .await;
    (client.expect("connect"), peer, server)
}

/// Options for tests: a fixed client name, the defaults otherwise.
pub(crate) fn options() -> ConnectOptions {
    ConnectOptions::new("tern-client-tests/0")
}
