//! Integration tests of the limits against abuse, on a real `ternd` and both I/O engines: the
//! `Send` rate of a connection, back-off after failed logins, connections per core and per user.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use tern_client::{ClientError, Event};
use tern_protocol::{Body, ErrorCode, FrameDecoder};
use tokio::io::AsyncReadExt;

on_both_engines!(
    send_burst_is_rate_limited,
    send_rates_are_settings,
    per_user_limits_span_devices,
    failed_logins_back_off,
    connection_limits,
    open_files_limit_caps_connections,
);

// Proves a burst of sends past the per-connection bucket gets RATE_LIMITED with a retry time, and
// that every send that was accepted is stored exactly once.
async fn send_burst_is_rate_limited(engine: &'static str) {
    let server = Ternd::start(engine);
    let (accepted, limited) = send_burst(&server, 200).await;
    assert!(limited > 0, "200 sends at once exceed the burst of 100");
    assert!(accepted >= 100, "the burst itself is allowed ({accepted})");
}

// Proves the send rates are settings: at 10/s a connection's burst is 20, and at 0 the limits are
// off, so a burst of 600 (past the default per-user burst of 200) is accepted whole.
async fn send_rates_are_settings(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(engine, dir.path(), &["--send-rate-per-connection", "10"]);
    let (accepted, limited) = send_burst(&server, 100).await;
    assert!(
        limited > 0 && (20..60).contains(&accepted),
        "{accepted} accepted"
    );
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(engine, dir.path(), &NO_RATE_LIMITS);
    assert_eq!(send_burst(&server, 600).await, (600, 0));
}

/// Sends `n` messages from a new user to another, 200 at once (below the 256 requests a connection
/// may have in flight); returns how many were accepted and how many refused with RATE_LIMITED,
/// after checking that exactly the accepted ones are stored.
async fn send_burst(server: &Ternd, n: u64) -> (usize, usize) {
    let (alice, _) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let alice = Arc::new(alice);
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    let (mut accepted, mut limited) = (0, 0);
    for wave in (0..n).collect::<Vec<_>>().chunks(200) {
        let (a, l) = send_wave(&alice, conv.conversation_id, wave).await;
        accepted += a;
        limited += l;
    }
    let mut stored = 0;
    let mut before = 0;
    loop {
        let page = alice
            .history(conv.conversation_id, before, 0)
            .await
            .unwrap();
        stored += page.messages.len();
        match page.messages.first() {
            Some(first) if page.has_more => before = first.seq,
            _ => break,
        }
    }
    assert_eq!(stored, accepted);
    (accepted, limited)
}

/// Sends one message per number in `wave`, all at once; returns (accepted, rate-limited).
async fn send_wave(alice: &Arc<tern_client::Client>, conv: u64, wave: &[u64]) -> (usize, usize) {
    let mut tasks = Vec::new();
    for &n in wave {
        let alice = Arc::clone(alice);
        tasks.push(tokio::spawn(async move {
            alice.send(conv, cmid(1, n), "burst").await
        }));
    }
    let (mut accepted, mut limited) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(ClientError::Server {
                code: ErrorCode::RATE_LIMITED,
                retry_after_ms,
                ..
            }) => {
                assert!(retry_after_ms > 0);
                limited += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    (accepted, limited)
}

// Proves the per-user buckets for Typing (bursts of 20) and SubscribePresence (bursts of 40) count
// every device of the user: three connections, each under its own bucket (10 and 20), together
// go past the user's, and the refusals say when to retry.
async fn per_user_limits_span_devices(engine: &'static str) {
    let server = Ternd::start(engine);
    let (first, _) = server.register("alice").await;
    let mut devices = vec![first];
    for n in 1..3 {
        devices.push(server.login("alice", &format!("device {n}")).await.0);
    }
    let mut conversations = Vec::new();
    for n in 0..8 {
        let (_peer, peer) = server.register(&format!("peer{n}")).await;
        let conv = devices[0].open_direct(peer.user_id).await.unwrap();
        conversations.push((conv.conversation_id, peer.user_id));
    }

    // Typing: 3 connections x 8 conversations = 24 indicators, 8 per connection.
    for device in &devices {
        for (conv, _) in &conversations {
            device.typing(*conv, true).await.unwrap();
        }
    }
    let mut limited = 0;
    for device in &devices {
        // The reply to a later request comes after every error for the indicators before it.
        device.list_conversations(0, 0).await.unwrap();
        while let Some(event) = device.try_next_event() {
            if let Event::Error(e) = event {
                assert_eq!(e.code, ErrorCode::RATE_LIMITED, "{e:?}");
                assert!(e.retry_after_ms > 0);
                limited += 1;
            }
        }
    }
    assert!(
        (4..=10).contains(&limited),
        "24 indicators, a user burst of 20: {limited}"
    );

    // SubscribePresence: 3 connections x 15 requests = 45.
    let peer = conversations[0].1;
    let (mut accepted, mut refused) = (0, 0);
    for device in &devices {
        for _ in 0..15 {
            let subscribe = tern_protocol::frames::SubscribePresence { users: vec![peer] };
            match device.request(subscribe).await {
                Ok(Body::PresenceList(_)) => accepted += 1,
                Err(ClientError::Server {
                    code: ErrorCode::RATE_LIMITED,
                    retry_after_ms,
                    ..
                }) if retry_after_ms > 0 => refused += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(
        (40..=42).contains(&accepted),
        "{accepted} accepted, {refused} refused"
    );
}

// Proves five wrong passwords lock the username: even the right password then gets
// RATE_LIMITED with the time left.
async fn failed_logins_back_off(engine: &'static str) {
    let server = Ternd::start(engine);
    server.register("alice").await;
    let client = server.client().await;
    for _ in 0..5 {
        let code = client
            .login("alice", "not the password", "x")
            .await
            .err()
            .and_then(|e| e.server_code());
        assert_eq!(code, Some(ErrorCode::BAD_CREDENTIALS));
    }
    match client.login("alice", "password123", "x").await {
        Err(ClientError::Server {
            code: ErrorCode::RATE_LIMITED,
            retry_after_ms,
            ..
        }) => assert!(retry_after_ms > 0),
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
}

// Proves a core at its connection limit answers UNAVAILABLE and closes, and that a user at the
// per-user connection limit cannot authenticate one more connection.
async fn connection_limits(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--cores",
        "1",
        "--connections-per-core-max",
        "3",
        "--connections-per-user-max",
        "2",
    ];
    let server = Ternd::start_in(engine, dir.path(), &flags);
    let (_first, auth) = server.register("alice").await;
    let token = auth.token.unwrap();
    let second = server.client().await;
    second.resume(token).await.unwrap();
    let third = server.client().await;
    let code = third
        .resume(token)
        .await
        .err()
        .and_then(|e| e.server_code());
    assert_eq!(code, Some(ErrorCode::LIMIT_EXCEEDED));

    // Three connections are open; a fourth is refused before Hello.
    let mut refused = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = bytes::BytesMut::new();
    let read = tokio::time::timeout(EVENT_WAIT, async {
        loop {
            if refused.read_buf(&mut bytes).await.unwrap() == 0 {
                break;
            }
        }
    });
    read.await.expect("the refused connection is closed");
    let frame = FrameDecoder::new()
        .decode(&mut bytes)
        .unwrap()
        .expect("an error frame before the close");
    assert!(matches!(frame.body, Body::Error(e) if e.code == ErrorCode::UNAVAILABLE));
}

// Proves the open files limit caps the connections per core: with 1,100 open files and two cores,
// each core takes (1,100 - 1,024) / 2 = 38, and every connection past that is refused (UNAVAILABLE,
// or reset while it says so) instead of left unanswered by a failing accept(2).
async fn open_files_limit_caps_connections(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_limited(engine, dir.path(), &[], Some(1_100));
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..120 {
        match tern_client::Client::connect(server.addr, tern_client::ConnectOptions::default())
            .await
        {
            Ok(client) => open.push(client),
            Err(e @ ClientError::Server { .. }) => {
                assert_eq!(e.server_code(), Some(ErrorCode::UNAVAILABLE));
                refused += 1;
            }
            Err(ClientError::Io(_)) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (38..=76).contains(&open.len()),
        "{} accepted, {refused} refused",
        open.len()
    );
    assert_eq!(open.len() + refused, 120);
    // The connections it took are served.
    for client in &open {
        client.ping(1).await.unwrap();
    }
}
