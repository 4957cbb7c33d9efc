//! Integration tests of accounts, one-to-one chat, sync, history, receipts and bad input, against a
//! real `ternd` process over real sockets with a real RocksDB in a temporary directory. Every test
//! runs once per I/O engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use bytes::BytesMut;
use common::*;
use tern_client::{ClientError, Event};
use tern_protocol::frames::{Hello, Ping, Send};
use tern_protocol::types::ReceiptKind;
use tern_protocol::{Body, ErrorCode, Frame, FrameDecoder, UpdateKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_engines!(
    register_login_resume,
    one_to_one_both_online,
    offline_recipient_syncs_later,
    every_device_gets_every_message,
    idempotent_resend_after_dropped_connection,
    history_paging,
    delivered_and_read_receipts,
    acks_deliver_in_steps_online_offline_and_far_behind,
    a_reply_reads_what_came_before,
    get_users_names_ids,
    bad_input_gets_the_spec_error,
    revoked_device_is_closed,
    idle_connection_times_out,
    device_limit_and_logout,
    slow_consumer_is_closed_and_loses_nothing,
    a_device_that_reads_late_gets_every_frame_once_in_order,
    closing_connection_that_reads_nothing_is_dropped,
    graceful_shutdown_sends_goaway_and_keeps_data,
);

fn server_code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

// Proves accounts work end to end: register issues a token, login makes a second device, resume
// with the token restores the first device, and wrong credentials or a taken name are refused.
async fn register_login_resume(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, auth) = server.register("alice").await;
    let token = auth.token.expect("register returns a token");
    assert_eq!(auth.username, "alice");

    let (_second, login) = server.login("alice", "laptop").await;
    assert_eq!(login.user_id, auth.user_id);
    assert_ne!(login.device_id, auth.device_id);
    assert!(login.token.is_some());

    let resumed = server.client().await.resume(token).await.expect("resume");
    assert_eq!(
        (resumed.user_id, resumed.device_id),
        (auth.user_id, auth.device_id)
    );
    assert!(resumed.token.is_none());

    let client = server.client().await;
    assert_eq!(
        server_code(client.login("alice", "wrong password", "x").await),
        ErrorCode::BAD_CREDENTIALS
    );
    assert_eq!(
        server_code(client.login("nobody", "password123", "x").await),
        ErrorCode::BAD_CREDENTIALS
    );
    assert_eq!(
        server_code(client.resume([9; 32]).await),
        ErrorCode::BAD_CREDENTIALS
    );
    assert_eq!(
        server_code(client.register("alice", "password123", "x").await),
        ErrorCode::USERNAME_TAKEN
    );
    assert_eq!(
        server_code(client.register("Alice!", "password123", "x").await),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(
        server_code(client.register("carol", "short", "x").await),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(
        server_code(alice.register("bob", "password123", "x").await),
        ErrorCode::ALREADY_AUTHENTICATED
    );

    let devices = alice.list_devices().await.expect("devices");
    assert_eq!(devices.len(), 2);
    assert!(devices
        .iter()
        .any(|d| d.current && d.device_id == auth.device_id));
    let bob = server.register("bob").await.1;
    assert_eq!(
        alice.lookup_user("bob").await.expect("lookup").user_id,
        bob.user_id
    );
    assert_eq!(
        server_code(alice.lookup_user("nobody").await),
        ErrorCode::NOT_FOUND
    );
}

// Proves a message from one online user reaches the other live, with gapless seqs, and that the
// sender's own device receives the same update.
async fn one_to_one_both_online(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let conv = alice
        .open_direct(bob_auth.user_id)
        .await
        .expect("open direct");
    let again = bob.open_direct(
        conv.members
            .iter()
            .map(|m| m.user_id)
            .find(|u| *u != bob_auth.user_id)
            .unwrap(),
    );
    assert_eq!(
        again.await.expect("same conversation").conversation_id,
        conv.conversation_id
    );
    sync_all(&alice, 0).await;
    sync_all(&bob, 0).await;

    for n in 1..=3u64 {
        let sent = alice
            .send(conv.conversation_id, cmid(1, n), &format!("hello {n}"))
            .await
            .expect("send");
        assert_eq!(sent.seq, n);
        let received = next_message(&bob).await;
        assert_eq!(
            (received.seq, received.body.as_str()),
            (n, format!("hello {n}").as_str())
        );
        assert_eq!(received.message_id, sent.message_id);
        let echoed = next_message(&alice).await;
        assert_eq!(echoed.seq, n);
    }
}

// Proves messages sent while the recipient is offline are all there, in order, when it syncs.
async fn offline_recipient_syncs_later(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let token = bob_auth.token.unwrap();
    bob.close().await;
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    for n in 1..=20u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), &format!("m{n}"))
            .await
            .unwrap();
    }
    let bob = server.client().await;
    bob.resume(token).await.unwrap();
    let updates = sync_until(&bob, 20).await;
    let expected: Vec<String> = (1..=20).map(|n| format!("m{n}")).collect();
    assert_eq!(bodies(&updates), expected);
    let seqs: Vec<u64> = updates.iter().map(|u| u.user_seq).collect();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<_>>(),
        "user_seq is gapless from 1"
    );
    // A second sync from the end returns nothing more.
    assert!(bob.sync(20, 0).await.unwrap().updates.is_empty());
}

// Proves all three devices of the recipient get a message, and the sender's other device gets a
// copy of what its first device sent.
async fn every_device_gets_every_message(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice1, _) = server.register("alice").await;
    let (alice2, _) = server.login("alice", "tablet").await;
    let (bob1, bob) = server.register("bob").await;
    let (bob2, _) = server.login("bob", "laptop").await;
    let (bob3, _) = server.login("bob", "watch").await;
    for client in [&alice1, &alice2, &bob1, &bob2, &bob3] {
        sync_all(client, 0).await;
    }
    let conv = alice1.open_direct(bob.user_id).await.unwrap();
    alice1
        .send(conv.conversation_id, cmid(1, 1), "to every device")
        .await
        .unwrap();
    for client in [&bob1, &bob2, &bob3, &alice2] {
        assert_eq!(next_message(client).await.body, "to every device");
    }
}

// Proves Send is idempotent: a resend with the same key after the connection dropped (once after
// the ack was read, once before) returns the original ack and stores nothing twice.
async fn idempotent_resend_after_dropped_connection(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, auth) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let token = auth.token.unwrap();
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    let first = alice
        .send(conv.conversation_id, cmid(1, 1), "once")
        .await
        .unwrap();
    alice.close().await;

    // A raw connection that sends the next message and drops before reading the ack.
    let mut raw = RawConn::connect(server.addr).await;
    raw.hello().await;
    raw.send(Frame::new(2, tern_protocol::frames::Resume { token }))
        .await;
    raw.expect(|b| matches!(b, Body::Authenticated(_))).await;
    let send = Send {
        conversation_id: conv.conversation_id,
        client_msg_id: cmid(1, 2),
        body: "twice?".into(),
        attachments: vec![],
    };
    raw.send(Frame::new(3, send)).await;
    drop(raw);

    let alice = server.client().await;
    alice.resume(token).await.unwrap();
    let again = alice
        .send(conv.conversation_id, cmid(1, 1), "once")
        .await
        .unwrap();
    assert_eq!((again.seq, again.message_id), (first.seq, first.message_id));
    let retry = alice
        .send(conv.conversation_id, cmid(1, 2), "twice?")
        .await
        .unwrap();
    assert_eq!(retry.seq, 2);
    let history = alice.history(conv.conversation_id, 0, 0).await.unwrap();
    let bodies: Vec<&str> = history.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["once", "twice?"]);
    let other = alice
        .open_direct(server.register("carol").await.1.user_id)
        .await
        .unwrap();
    let code = server_code(
        alice
            .send(other.conversation_id, cmid(1, 1), "reused key")
            .await,
    );
    assert_eq!(code, ErrorCode::CONFLICT);
}

// Proves History pages backwards from `before`, oldest first within a page, with has_more.
async fn history_paging(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    for n in 1..=25u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), &format!("m{n}"))
            .await
            .unwrap();
    }
    let seqs = |page: &tern_protocol::frames::HistoryPage| {
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>()
    };
    let page = alice.history(conv.conversation_id, 0, 10).await.unwrap();
    assert_eq!(seqs(&page), (16..=25).collect::<Vec<_>>());
    assert!(page.has_more);
    let page = alice.history(conv.conversation_id, 16, 10).await.unwrap();
    assert_eq!(seqs(&page), (6..=15).collect::<Vec<_>>());
    let page = alice.history(conv.conversation_id, 6, 10).await.unwrap();
    assert_eq!(seqs(&page), (1..=5).collect::<Vec<_>>());
    assert!(!page.has_more);
    assert_eq!(page.messages[0].body, "m1");
}

// Proves delivered receipts follow the recipient's Ack and read receipts follow MarkRead, and that
// unread counts follow the read watermark.
async fn delivered_and_read_receipts(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    sync_all(&alice, 0).await;
    for n in 1..=3u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), &format!("m{n}"))
            .await
            .unwrap();
    }
    let updates = sync_until(&bob, 3).await;
    let last = updates.last().unwrap().user_seq;
    let unread = bob
        .get_conversation(conv.conversation_id)
        .await
        .unwrap()
        .unread;
    assert_eq!(unread, 3);
    bob.ack(last).await.unwrap();
    let receipt = wait_receipt(&alice, ReceiptKind::Delivered).await;
    assert_eq!((receipt.user_id, receipt.up_to_seq), (bob_auth.user_id, 3));

    bob.mark_read(conv.conversation_id, 2).await.unwrap();
    let receipt = wait_receipt(&alice, ReceiptKind::Read).await;
    assert_eq!((receipt.user_id, receipt.up_to_seq), (bob_auth.user_id, 2));
    let info = bob.get_conversation(conv.conversation_id).await.unwrap();
    assert_eq!((info.read_seq, info.unread), (2, 1));
    let list = bob.list_conversations(0, 0).await.unwrap();
    assert_eq!(list.conversations.len(), 1);
    assert_eq!(list.conversations[0].unread, 1);
    assert_eq!(
        list.conversations[0].last_message.as_ref().unwrap().body,
        "m3"
    );
}

// Proves an `Ack` moves each sender's delivered watermark exactly to the newest of their messages
// it covers: in steps, for two senders at once, after more messages than the server keeps in
// memory for acks (4,096 per user), and for messages that arrived while the recipient was offline.
async fn acks_deliver_in_steps_online_offline_and_far_behind(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(engine, dir.path(), &NO_RATE_LIMITS);
    // Alice and Bob leave the live updates of `FAR` messages unread for a while.
    const FAR: usize = 4_200;
    let roomy = || async {
        let options = tern_client::ConnectOptions::default().with_event_buffer(8_192);
        tern_client::Client::connect(server.addr, options)
            .await
            .unwrap()
    };
    let alice = roomy().await;
    alice
        .register("alice", "password123", "phone")
        .await
        .unwrap();
    let (carol, _) = server.register("carol").await;
    let bob = roomy().await;
    let bob_auth = bob.register("bob", "password123", "phone").await.unwrap();
    let token = bob_auth.token.unwrap();
    for client in [&alice, &carol, &bob] {
        sync_all(client, 0).await;
    }
    let with_alice = alice.open_direct(bob_auth.user_id).await.unwrap();
    let with_carol = carol.open_direct(bob_auth.user_id).await.unwrap();
    let (a, c) = (with_alice.conversation_id, with_carol.conversation_id);
    let mut seqs = Vec::new();
    for (n, client, conv) in [
        (1, &alice, a),
        (2, &alice, a),
        (3, &alice, a),
        (4, &carol, c),
        (5, &carol, c),
    ] {
        seqs.push(client.send(conv, cmid(1, n), "hi").await.unwrap().seq);
    }
    assert_eq!(seqs, [1, 2, 3, 1, 2]);
    let updates = sync_until(&bob, 5).await;
    let log: Vec<u64> = updates.iter().map(|u| u.user_seq).collect();
    let messages: Vec<&tern_protocol::Update> = updates
        .iter()
        .filter(|u| matches!(u.kind, UpdateKind::Message(_)))
        .collect();
    assert_eq!(messages.len(), 5, "{log:?}");
    bob.ack(messages[1].user_seq).await.unwrap();
    let receipt = wait_receipt(&alice, ReceiptKind::Delivered).await;
    assert_eq!((receipt.user_id, receipt.up_to_seq), (bob_auth.user_id, 2));
    bob.ack(messages[4].user_seq).await.unwrap();
    let receipt = wait_receipt(&alice, ReceiptKind::Delivered).await;
    assert_eq!(receipt.up_to_seq, 3);
    let receipt = wait_receipt(&carol, ReceiptKind::Delivered).await;
    assert_eq!((receipt.user_id, receipt.up_to_seq), (bob_auth.user_id, 2));

    // Far behind: more messages than are kept for acks, acknowledged at once.
    for n in 1..=FAR as u64 {
        alice
            .send(with_alice.conversation_id, cmid(2, n), "more")
            .await
            .unwrap();
    }
    // Each message reaches bob's log a commit after its `Sent`: wait until all are there.
    let head = sync_until(&bob, 5 + FAR).await.last().unwrap().user_seq;
    bob.ack(head).await.unwrap();
    let receipt = wait_receipt(&alice, ReceiptKind::Delivered).await;
    assert_eq!(receipt.up_to_seq, 3 + FAR as u64);

    // Offline: bob's device comes back, syncs what it missed and acknowledges it.
    bob.close().await;
    for n in 1..=5u64 {
        alice
            .send(with_alice.conversation_id, cmid(3, n), "later")
            .await
            .unwrap();
    }
    let bob = server.client().await;
    bob.resume(token).await.unwrap();
    let missed: Vec<_> = sync_until(&bob, 5 + FAR + 5)
        .await
        .into_iter()
        .filter(|u| u.user_seq > head)
        .collect();
    assert_eq!(missed.len(), 5);
    bob.ack(missed[4].user_seq).await.unwrap();
    let receipt = wait_receipt(&alice, ReceiptKind::Delivered).await;
    assert_eq!(receipt.up_to_seq, 3 + FAR as u64 + 5);
    // Carol's watermark did not move: nothing of hers was acknowledged since.
    carol.ping(7).await.unwrap();
    assert!(carol
        .wait_for_event(
            |e| matches!(e, Event::Update(u) if matches!(u.kind, UpdateKind::Receipt(_))),
            std::time::Duration::from_millis(300),
        )
        .await
        .is_err());
}

// Proves that replying reads the conversation: Alice gets Bob's read receipt up to his reply, Bob's
// unread count drops to 0, and a second reply with nothing new to read sends no receipt.
async fn a_reply_reads_what_came_before(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    let conv = conv.conversation_id;
    sync_all(&alice, 0).await;
    for n in 1..=2u64 {
        alice
            .send(conv, cmid(1, n), &format!("m{n}"))
            .await
            .unwrap();
    }
    assert_eq!(bob.get_conversation(conv).await.unwrap().unread, 2);
    bob.send(conv, cmid(2, 1), "reply").await.unwrap();
    let receipt = wait_receipt(&alice, ReceiptKind::Read).await;
    assert_eq!((receipt.user_id, receipt.up_to_seq), (bob_auth.user_id, 3));
    assert_eq!(bob.get_conversation(conv).await.unwrap().unread, 0);

    bob.send(conv, cmid(2, 2), "and more").await.unwrap();
    assert_eq!(next_message(&alice).await.body, "and more");
    // Bob's own devices get his receipts in the same commit as his own copy of the message, so
    // once his log holds "and more" it holds every receipt that reply caused: only the first.
    let reads_in_bobs_log = || async {
        let log = sync_all(&bob, 0).await;
        let has_reply = bodies(&log).iter().any(|b| b == "and more");
        let reads = log
            .iter()
            .filter(|u| matches!(&u.kind, UpdateKind::Receipt(r) if r.kind == ReceiptKind::Read))
            .count();
        (has_reply, reads)
    };
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    let mut seen = reads_in_bobs_log().await;
    while !seen.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        seen = reads_in_bobs_log().await;
    }
    assert_eq!(
        seen,
        (true, 1),
        "one read receipt, for the first reply only"
    );
}

// Proves GetUsers names the users that exist, in the order asked, leaving unknown ids out.
async fn get_users_names_ids(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, alice_auth) = server.register("alice").await;
    let (_bob, bob_auth) = server.register("bob").await;
    let users = alice
        .get_users(vec![
            bob_auth.user_id,
            1,
            alice_auth.user_id,
            bob_auth.user_id,
        ])
        .await
        .unwrap();
    let named: Vec<(u64, &str)> = users
        .iter()
        .map(|u| (u.user_id, u.username.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            (bob_auth.user_id, "bob"),
            (alice_auth.user_id, "alice"),
            (bob_auth.user_id, "bob")
        ]
    );
    assert!(alice.get_users(Vec::new()).await.unwrap().is_empty());
}

async fn wait_receipt(
    client: &tern_client::Client,
    kind: ReceiptKind,
) -> tern_protocol::update::Receipt {
    let event = client
        .wait_for_event(
            |e| matches!(e, Event::Update(u) if matches!(&u.kind, UpdateKind::Receipt(r) if r.kind == kind)),
            EVENT_WAIT,
        )
        .await
        .expect("a receipt");
    match event {
        Event::Update(u) => match u.kind {
            UpdateKind::Receipt(r) => r,
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
}

/// A raw socket speaking frames, for input `tern-client` would never send.
struct RawConn {
    stream: tokio::net::TcpStream,
    inbox: BytesMut,
}

impl RawConn {
    async fn connect(addr: std::net::SocketAddr) -> RawConn {
        RawConn {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            inbox: BytesMut::new(),
        }
    }

    async fn send(&mut self, frame: Frame) {
        self.stream
            .write_all(&frame.to_bytes().unwrap())
            .await
            .unwrap();
    }

    async fn hello(&mut self) {
        self.send(Frame::new(
            1,
            Hello {
                min_version: 1,
                max_version: 1,
                client_name: "raw".into(),
            },
        ))
        .await;
        self.expect(|b| matches!(b, Body::Welcome(_))).await;
    }

    /// The next frame, or `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        let decoder = FrameDecoder::new();
        loop {
            if let Some(frame) = decoder
                .decode(&mut self.inbox)
                .expect("server frames decode")
            {
                return Some(frame);
            }
            let read =
                tokio::time::timeout(EVENT_WAIT, self.stream.read_buf(&mut self.inbox)).await;
            match read.expect("the server answers in time") {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn expect(&mut self, want: impl Fn(&Body) -> bool) -> Frame {
        let frame = self.next().await.expect("a frame before close");
        assert!(want(&frame.body), "unexpected frame {frame:?}");
        frame
    }

    async fn expect_error(&mut self, code: ErrorCode) -> Frame {
        self.expect(|b| matches!(b, Body::Error(e) if e.code == code))
            .await
    }

    async fn expect_closed(&mut self) {
        assert!(
            self.next().await.is_none(),
            "the server should close the connection"
        );
    }
}

// Proves each kind of bad input gets the spec's error (and a close where the spec says so), and
// that the server keeps serving other clients throughout.
async fn bad_input_gets_the_spec_error(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (_carol, _) = server.register("carol").await;
    let (_bob, bob) = server.register("bob").await;

    // Garbage first: an HTTP request reads as an absurd frame length.
    let mut raw = RawConn::connect(server.addr).await;
    raw.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    raw.expect_error(ErrorCode::FRAME_TOO_LARGE).await;
    raw.expect_closed().await;

    // A valid frame that is not Hello.
    let mut raw = RawConn::connect(server.addr).await;
    raw.send(Frame::new(1, Ping { nonce: 1 })).await;
    raw.expect_error(ErrorCode::HELLO_REQUIRED).await;
    raw.expect_closed().await;

    // An over-limit length after Hello.
    let mut raw = RawConn::connect(server.addr).await;
    raw.hello().await;
    raw.stream
        .write_all(&[0x00, 0x20, 0x00, 0x00, 0x00, 0x02])
        .await
        .unwrap();
    raw.expect_error(ErrorCode::FRAME_TOO_LARGE).await;
    raw.expect_closed().await;

    // A request before authentication: an error, and the connection stays usable.
    let mut raw = RawConn::connect(server.addr).await;
    raw.hello().await;
    let send = Send {
        conversation_id: 1,
        client_msg_id: [0; 16],
        body: "hi".into(),
        attachments: vec![],
    };
    raw.send(Frame::new(5, send)).await;
    let error = raw.expect_error(ErrorCode::NOT_AUTHENTICATED).await;
    assert_eq!(error.request_id, 5);
    raw.send(Frame::new(6, Ping { nonce: 77 })).await;
    raw.expect(|b| matches!(b, Body::Pong(p) if p.nonce == 77))
        .await;

    // A malformed body (bad UTF-8) keeps the connection; an unknown type too.
    let mut bytes = Frame::new(
        7,
        tern_protocol::frames::LookupUser {
            username: "ab".into(),
        },
    )
    .to_bytes()
    .unwrap();
    let len = bytes.len();
    bytes[len - 1] = 0xff;
    raw.stream.write_all(&bytes).await.unwrap();
    raw.expect_error(ErrorCode::MALFORMED).await;
    raw.stream
        .write_all(&[0, 0, 0, 6, 0x3f, 0xff, 0, 0, 0, 8])
        .await
        .unwrap();
    let error = raw.expect_error(ErrorCode::UNKNOWN_TYPE).await;
    assert_eq!(error.request_id, 8);

    // A conversation the user is not in.
    let carol_conv = {
        let (carol, _) = server.login("carol", "second").await;
        carol.open_direct(bob.user_id).await.unwrap()
    };
    assert_eq!(
        server_code(
            alice
                .send(carol_conv.conversation_id, cmid(9, 1), "intrude")
                .await
        ),
        ErrorCode::NOT_FOUND
    );
    assert_eq!(
        server_code(alice.history(carol_conv.conversation_id, 0, 10).await),
        ErrorCode::NOT_FOUND
    );
    assert_eq!(
        server_code(alice.mark_read(carol_conv.conversation_id, 1).await),
        ErrorCode::NOT_FOUND
    );

    // Everyone else is still served.
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    assert_eq!(
        alice
            .send(conv.conversation_id, cmid(9, 2), "still here")
            .await
            .unwrap()
            .seq,
        1
    );
    assert_eq!(alice.ping(5).await.unwrap(), 5);
}

// Proves revoking a device closes its connection with DEVICE_REVOKED and its token stops working.
async fn revoked_device_is_closed(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (laptop, laptop_auth) = server.login("alice", "laptop").await;
    alice.revoke_device(laptop_auth.device_id).await.unwrap();
    let event = laptop
        .wait_for_event(
            |e| matches!(e, Event::Error(err) if err.code == ErrorCode::DEVICE_REVOKED),
            EVENT_WAIT,
        )
        .await;
    assert!(
        event.is_ok(),
        "the revoked device hears why it is closed: {event:?}"
    );
    let code = server_code(
        server
            .client()
            .await
            .resume(laptop_auth.token.unwrap())
            .await,
    );
    assert_eq!(code, ErrorCode::BAD_CREDENTIALS);
    assert_eq!(alice.list_devices().await.unwrap().len(), 1);
}

// Proves a connection that sends nothing within the idle time-out gets HEARTBEAT_TIMEOUT and is
// closed, while one that pings stays open.
async fn idle_connection_times_out(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--heartbeat-interval-ms", "200", "--idle-timeout-ms", "600"];
    let server = Ternd::start_in(engine, dir.path(), &flags);
    let mut silent = RawConn::connect(server.addr).await;
    silent.hello().await;
    let mut pinging = RawConn::connect(server.addr).await;
    pinging.hello().await;
    let started = std::time::Instant::now();
    for nonce in 0..6u64 {
        pinging
            .send(Frame::new(10 + nonce as u32, Ping { nonce }))
            .await;
        pinging
            .expect(|b| matches!(b, Body::Pong(p) if p.nonce == nonce))
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let error = silent.expect_error(ErrorCode::HEARTBEAT_TIMEOUT).await;
    assert_eq!(error.request_id, 0);
    silent.expect_closed().await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(600));
    pinging.send(Frame::new(99, Ping { nonce: 99 })).await;
    pinging
        .expect(|b| matches!(b, Body::Pong(p) if p.nonce == 99))
        .await;
}

/// Alice, her direct conversation with bob, bob's token, and bob's device live on a raw
/// connection (resumed and synced), for tests of a client that stops reading.
async fn alice_and_a_raw_bob(
    server: &Ternd,
) -> (
    tern_client::Client,
    tern_protocol::types::ConversationInfo,
    tern_protocol::types::Token,
    RawConn,
) {
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let token = bob_auth.token.unwrap();
    bob.close().await;
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    let mut raw = RawConn::connect(server.addr).await;
    raw.hello().await;
    raw.send(Frame::new(2, tern_protocol::frames::Resume { token }))
        .await;
    raw.expect(|b| matches!(b, Body::Authenticated(_))).await;
    raw.send(Frame::new(
        3,
        tern_protocol::frames::Sync { since: 0, limit: 0 },
    ))
    .await;
    raw.expect(|b| matches!(b, Body::SyncPage(p) if !p.has_more))
        .await;
    (alice, conv, token, raw)
}

// Proves a device that stops reading is closed with SLOW_CONSUMER once its outbound queue is full,
// and that it loses nothing: every message is in its log when it syncs again.
async fn slow_consumer_is_closed_and_loses_nothing(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &["--outbound-queue-bytes-max", "1048576"],
    );
    // Bob's device goes live on a raw connection, then stops reading.
    let (alice, conv, token, mut raw) = alice_and_a_raw_bob(&server).await;
    let body = "x".repeat(99_000);
    let messages = 100u64;
    for n in 1..=messages {
        alice
            .send(conv.conversation_id, cmid(1, n), &body)
            .await
            .unwrap();
    }
    // Reading now drains what the kernel buffered, then the server's error, then the close.
    let mut saw_slow_consumer = false;
    while let Some(frame) = raw.next().await {
        if let Body::Error(e) = &frame.body {
            assert_eq!((e.code, frame.request_id), (ErrorCode::SLOW_CONSUMER, 0));
            saw_slow_consumer = true;
        }
    }
    assert!(
        saw_slow_consumer,
        "the slow device is told why it is closed"
    );

    let bob = server.client().await;
    bob.resume(token).await.unwrap();
    let updates = sync_until(&bob, messages as usize).await;
    assert_eq!(bodies(&updates).len() as u64, messages, "nothing is lost");
}

// Proves frames that the socket does not take at once are all written later, once each and in
// order: the core's flusher sends queued frames to the socket as far as it takes them, and a
// writer sends the rest after. Bob's device reads nothing while Alice sends him far more than the
// kernel's socket buffers hold (about 30 MB), then reads it all.
async fn a_device_that_reads_late_gets_every_frame_once_in_order(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &[
            "--outbound-queue-bytes-max",
            "67108864",
            "--send-rate-per-connection",
            "0",
            "--send-rate-per-user",
            "0",
        ],
    );
    let (alice, conv, _, mut raw) = alice_and_a_raw_bob(&server).await;
    let messages = 300u64;
    let body = |n: u64| format!("{n:05}{}", "x".repeat(99_000));
    for n in 1..=messages {
        alice
            .send(conv.conversation_id, cmid(1, n), &body(n))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut last_user_seq = 0;
    while (seen.len() as u64) < messages {
        let frame = raw.next().await.expect("every message before a close");
        let Body::UpdateEvent(event) = frame.body else {
            panic!("unexpected frame {frame:?}");
        };
        assert_eq!(
            event.update.user_seq,
            last_user_seq + 1,
            "no gap, no repeat"
        );
        last_user_seq = event.update.user_seq;
        if let UpdateKind::Message(m) = event.update.kind {
            seen.push(m.body[..5].parse::<u64>().unwrap());
        }
    }
    assert_eq!(
        seen,
        (1..=messages).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

// Proves a connection closed while its client reads nothing (here a slow consumer that stops
// reading for good) does not hold the server's socket beyond the frame time-out: the writer that
// cannot flush is cut off, and the connection is gone from the server's count while the client
// still reads nothing.
async fn closing_connection_that_reads_nothing_is_dropped(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &[
            "--outbound-queue-bytes-max",
            "1048576",
            "--frame-timeout-ms",
            "1000",
        ],
    );
    let (alice, conv, _, mut raw) = alice_and_a_raw_bob(&server).await;
    let connections = || async {
        let (_, metrics) = get(server.metrics_addr, "/metrics").await;
        total(&metrics, "tern_connections")
    };
    assert_eq!(connections().await, 2);
    let body = "x".repeat(99_000);
    for n in 1..=100u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), &body)
            .await
            .unwrap();
    }
    // Bob's queue overflowed and his connection is closing; he still reads nothing.
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    while connections().await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "a closing connection whose client reads nothing is still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // What the kernel had buffered for him, then the end of the stream.
    while raw.next().await.is_some() {}
    alice.ping(1).await.unwrap();
}

// Proves SIGTERM sends GoAway to connected clients, exits cleanly, and that everything
// acknowledged before is there after a restart.
async fn graceful_shutdown_sends_goaway_and_keeps_data(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ternd::start_in(engine, dir.path(), &["--shutdown-timeout-ms", "2000"]);
    let (alice, auth) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    for n in 1..=10u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), &format!("m{n}"))
            .await
            .unwrap();
    }
    let status = server.terminate();
    assert!(
        status.success(),
        "ternd exits cleanly on SIGTERM: {status:?}"
    );
    let goaway = alice
        .wait_for_event(|e| matches!(e, Event::GoAway(_)), EVENT_WAIT)
        .await;
    assert!(goaway.is_ok(), "clients hear GoAway: {goaway:?}");

    let server = Ternd::start_in(engine, dir.path(), &[]);
    let alice = server.client().await;
    alice.resume(auth.token.unwrap()).await.unwrap();
    let history = alice.history(conv.conversation_id, 0, 0).await.unwrap();
    assert_eq!(history.messages.len(), 10);
}

// Proves the per-user device limit refuses one login too many, and that Logout answers Ok, closes
// the connection and revokes the token, which frees a device slot.
async fn device_limit_and_logout(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(engine, dir.path(), &["--devices-per-user-max", "2"]);
    let (_phone, _) = server.register("alice").await;
    let (laptop, laptop_auth) = server.login("alice", "laptop").await;
    let third = server.client().await;
    let code = server_code(third.login("alice", "password123", "tablet").await);
    assert_eq!(code, ErrorCode::TOO_MANY_DEVICES);

    laptop.logout().await.unwrap();
    let closed = laptop
        .wait_for_event(
            |e| matches!(e, Event::Error(err) if err.code == ErrorCode::DEVICE_REVOKED),
            EVENT_WAIT,
        )
        .await;
    assert!(closed.is_ok(), "logout closes the connection: {closed:?}");
    let code = server_code(
        server
            .client()
            .await
            .resume(laptop_auth.token.unwrap())
            .await,
    );
    assert_eq!(code, ErrorCode::BAD_CREDENTIALS);
    third.login("alice", "password123", "tablet").await.unwrap();
}
