//! Integration test of the frame deadline (spec §2.7, §16.4) against slowloris clients, on a real
//! `ternd` and both I/O engines: a thousand connections that trickle bytes (into their `Hello`,
//! into a frame after `Hello`, into a WebSocket upgrade request) are all closed at the frame
//! time-out, long before the idle time-out, while an ordinary client is served meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use tern_protocol::frames::Hello;
use tern_protocol::{Body, Frame, FrameDecoder};

on_both_engines!(trickling_connections_are_closed_on_time);

/// Trickling connections of each kind.
const NO_HELLO: usize = 400;
const AFTER_HELLO: usize = 400;
const WS_UPGRADE: usize = 200;
/// The frame time-out the server runs with, and the idle time-out far beyond it.
const FRAME_TIMEOUT_MS: u64 = 1_000;
const IDLE_TIMEOUT_MS: &str = "20000";
/// How often each trickling connection sends its next byte.
const TRICKLE_TICK: Duration = Duration::from_millis(100);
/// The most ticks the trickle runs: the server must have closed everything by then.
const TRICKLE_TICKS_MAX: usize = 80;

/// One trickling connection.
struct Trickler {
    stream: TcpStream,
    /// The bytes it sends, one per tick, cycling; none of them completes what it started.
    script: Vec<u8>,
    sent: usize,
    started: Option<Instant>,
    closed: Option<Instant>,
}

impl Trickler {
    fn new(stream: TcpStream, script: Vec<u8>) -> Trickler {
        stream.set_nonblocking(true).unwrap();
        Trickler {
            stream,
            script,
            sent: 0,
            started: None,
            closed: None,
        }
    }

    /// Sends the next byte and notes whether the server has closed.
    fn tick(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let byte = [self.script[self.sent % self.script.len()]];
        match self.stream.write(&byte) {
            Ok(_) => {
                self.sent += 1;
                self.started.get_or_insert(now);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.closed = Some(now),
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break self.closed = Some(now),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break self.closed = Some(now),
            }
        }
    }
}

/// A frame header announcing `length` bytes after the length field, followed by filler: sent a
/// byte a tick, it never completes.
fn endless_frame(frame_type: u16, length: u32) -> Vec<u8> {
    let mut bytes = length.to_be_bytes().to_vec();
    bytes.extend(frame_type.to_be_bytes());
    bytes.extend(1u32.to_be_bytes());
    bytes.resize(length as usize, 0);
    bytes
}

fn hello_bytes() -> BytesMut {
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        client_name: "slow".into(),
    };
    Frame::new(1, hello).to_bytes().unwrap()
}

/// Connects, completes `Hello` (blocking, with a time-out) and returns the stream.
fn after_hello(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(EVENT_WAIT)).unwrap();
    stream.write_all(&hello_bytes()).unwrap();
    let mut inbox = BytesMut::new();
    let decoder = FrameDecoder::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(frame) = decoder.decode(&mut inbox).unwrap() {
            assert!(matches!(frame.body, Body::Welcome(_)), "{frame:?}");
            return stream;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before Welcome");
        inbox.extend_from_slice(&buf[..n]);
    }
}

/// Lets this process hold a thousand sockets even where the soft open files limit is 1,024.
fn raise_open_files_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if soft < 4096 {
            let _ = rlimit::Resource::NOFILE.set(hard.min(8192), hard);
        }
    }
}

// Proves the frame deadline: 400 connections that trickle their `Hello`, 400 that trickle a frame
// after `Hello` and 200 that trickle a WebSocket upgrade, a byte every 100 ms each, are all closed
// between 1 s (the frame time-out) and 5 s, far before the 20 s idle time-out that any byte used
// to reset; meanwhile an ordinary client registers and gets every one of its sends acknowledged.
async fn trickling_connections_are_closed_on_time(engine: &'static str) {
    raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let frame_timeout = FRAME_TIMEOUT_MS.to_string();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &[
            "--frame-timeout-ms",
            &frame_timeout,
            "--heartbeat-interval-ms",
            "10000",
            "--idle-timeout-ms",
            IDLE_TIMEOUT_MS,
        ],
    );
    let mut tricklers = Vec::with_capacity(NO_HELLO + AFTER_HELLO + WS_UPGRADE);
    for _ in 0..AFTER_HELLO {
        // A Ping announcing 100,000 bytes of body.
        tricklers.push(Trickler::new(
            after_hello(server.addr),
            endless_frame(0x0002, 100_000),
        ));
    }
    for _ in 0..NO_HELLO {
        let stream = TcpStream::connect(server.addr).unwrap();
        let mut trickler = Trickler::new(stream, endless_frame(0x0001, 1_000));
        trickler.started = Some(Instant::now());
        tricklers.push(trickler);
    }
    let mut upgrade = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: ".to_vec();
    upgrade.resize(4_000, b'a');
    for _ in 0..WS_UPGRADE {
        let stream = TcpStream::connect(server.ws_addr).unwrap();
        let mut trickler = Trickler::new(stream, upgrade.clone());
        trickler.started = Some(Instant::now());
        tricklers.push(trickler);
    }

    let normal = async {
        let (alice, _) = server.register("alice").await;
        let (_bob, bob) = server.register("bob").await;
        let conv = alice.open_direct(bob.user_id).await.unwrap();
        for n in 0..20 {
            let sent = tokio::time::timeout(
                EVENT_WAIT,
                alice.send(conv.conversation_id, cmid(3, n), "served meanwhile"),
            )
            .await
            .expect("a Sent within the wait");
            sent.unwrap();
        }
        alice
    };
    let trickle = async {
        let mut tick = tokio::time::interval(TRICKLE_TICK);
        for _ in 0..TRICKLE_TICKS_MAX {
            tick.tick().await;
            let now = Instant::now();
            for trickler in &mut tricklers {
                trickler.tick(now);
            }
            if tricklers.iter().all(|t| t.closed.is_some()) {
                break;
            }
        }
    };
    let (alice, ()) = tokio::join!(normal, trickle);

    let frame_timeout = Duration::from_millis(FRAME_TIMEOUT_MS);
    for (n, trickler) in tricklers.iter().enumerate() {
        let closed = trickler
            .closed
            .unwrap_or_else(|| panic!("trickler {n} still open"));
        let held = closed - trickler.started.expect("started");
        assert!(
            held >= frame_timeout - TRICKLE_TICK && held < Duration::from_secs(5),
            "trickler {n} held {held:?}"
        );
    }
    // The ordinary client is still connected and served.
    assert_eq!(alice.ping(11).await.unwrap(), 11);
}
