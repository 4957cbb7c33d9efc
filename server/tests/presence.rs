//! Integration tests of presence, last seen and typing against a real `ternd` on both I/O
//! engines: online and offline transitions (clean close and idle time-out), who may subscribe, the
//! last-seen privacy setting, and typing indicators that are seen live but never stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use tern_client::{Client, ClientError, Event};
use tern_protocol::frames::{Hello, Resume, SetPrivacy, SubscribePresence};
use tern_protocol::types::Presence;
use tern_protocol::{Body, ErrorCode, Frame, UpdateKind};
use tokio::io::AsyncWriteExt;

on_both_engines!(
    online_offline_and_dead_connections,
    only_contacts_may_subscribe,
    hidden_last_seen,
    typing_is_live_only
);

async fn subscribe(client: &Client, users: Vec<u64>) -> Result<Vec<Presence>, ClientError> {
    match client.request(SubscribePresence { users }).await? {
        Body::PresenceList(list) => Ok(list.presences),
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn next_presence(client: &Client, user_id: u64, online: bool) -> Presence {
    let event = client
        .wait_for_event(
            |e| matches!(e, Event::Presence(p) if p.user_id == user_id && p.online == online),
            EVENT_WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("presence online={online} of {user_id}: {e:?}"));
    match event {
        Event::Presence(p) => p,
        other => panic!("unexpected {other:?}"),
    }
}

// Proves a subscriber sees a contact come online, go offline with a last-seen time after a clean
// close, and go offline again when a connection dies silently (the idle time-out finds it).
async fn online_offline_and_dead_connections(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &["--heartbeat-interval-ms", "200", "--idle-timeout-ms", "800"],
    );
    let (alice, _) = server.register("alice").await;
    let alice = std::sync::Arc::new(alice);
    // Alice keeps her connection alive as a real client does: a Ping every heartbeat interval.
    let pinger = {
        let alice = std::sync::Arc::clone(&alice);
        tokio::spawn(async move {
            for nonce in 0..200u64 {
                if alice.ping(nonce).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let (bob, bob_auth) = server.register("bob").await;
    let token = bob_auth.token.unwrap();
    alice.open_direct(bob_auth.user_id).await.unwrap();
    bob.close().await;

    // The server learns of the close a moment after the client has closed: ask until it has.
    let mut list = subscribe(&alice, vec![bob_auth.user_id]).await.unwrap();
    for _ in 0..100 {
        if !list[0].online && list[0].last_seen.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        list = subscribe(&alice, vec![bob_auth.user_id]).await.unwrap();
    }
    assert!(!list[0].online);
    let first_seen = list[0].last_seen.expect("bob was seen when he closed");

    let bob = server.client().await;
    bob.resume(token).await.unwrap();
    assert!(next_presence(&alice, bob_auth.user_id, true)
        .await
        .last_seen
        .is_none());
    bob.close().await;
    let offline = next_presence(&alice, bob_auth.user_id, false).await;
    assert!(offline.last_seen.unwrap() >= first_seen);

    // A connection that goes silent without closing: only the idle time-out notices.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let hello = Frame::new(
        1,
        Hello {
            min_version: 1,
            max_version: 1,
            client_name: "silent".into(),
        },
    );
    silent.write_all(&hello.to_bytes().unwrap()).await.unwrap();
    silent
        .write_all(&Frame::new(2, Resume { token }).to_bytes().unwrap())
        .await
        .unwrap();
    next_presence(&alice, bob_auth.user_id, true).await;
    next_presence(&alice, bob_auth.user_id, false).await;
    drop(silent);
    pinger.abort();
}

// Proves only users who share a conversation may subscribe to each other.
async fn only_contacts_may_subscribe(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, alice_auth) = server.register("alice").await;
    let (mallory, _) = server.register("mallory").await;
    let refused = subscribe(&mallory, vec![alice_auth.user_id]).await;
    assert_eq!(
        refused.err().and_then(|e| e.server_code()),
        Some(ErrorCode::FORBIDDEN)
    );
    let unknown = subscribe(&mallory, vec![12345]).await;
    assert_eq!(
        unknown.err().and_then(|e| e.server_code()),
        Some(ErrorCode::FORBIDDEN)
    );
    let own = subscribe(&alice, vec![alice_auth.user_id]).await.unwrap();
    assert!(own[0].online);
}

// Proves a user who hides last seen shows as offline without a time.
async fn hidden_last_seen(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    alice.open_direct(bob_auth.user_id).await.unwrap();
    match bob
        .request(SetPrivacy {
            hide_last_seen: true,
        })
        .await
        .unwrap()
    {
        Body::Ok(_) => {}
        other => panic!("unexpected {other:?}"),
    }
    let list = subscribe(&alice, vec![bob_auth.user_id]).await.unwrap();
    assert!(list[0].online);
    bob.close().await;
    let offline = next_presence(&alice, bob_auth.user_id, false).await;
    assert_eq!(offline.last_seen, None);
}

// Proves typing reaches the other member live, not the typist's own devices, that a stop may
// follow a start at once but a second start may not, and that it never appears in sync or history.
async fn typing_is_live_only(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (alice2, _) = server.login("alice", "tablet").await;
    let (bob, bob_auth) = server.register("bob").await;
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    for client in [&alice, &alice2, &bob] {
        sync_all(client, 0).await;
    }
    alice.typing(conv.conversation_id, true).await.unwrap();
    let seen = bob
        .wait_for_event(|e| matches!(e, Event::Typing(t) if t.active), EVENT_WAIT)
        .await;
    assert!(seen.is_ok(), "bob sees alice typing: {seen:?}");
    // A stop right after the start passes; a second start at once is refused.
    alice.typing(conv.conversation_id, false).await.unwrap();
    let stopped = bob
        .wait_for_event(|e| matches!(e, Event::Typing(t) if !t.active), EVENT_WAIT)
        .await;
    assert!(stopped.is_ok(), "bob sees alice stop: {stopped:?}");
    alice.typing(conv.conversation_id, true).await.unwrap();
    let limited = alice
        .wait_for_event(
            |e| matches!(e, Event::Error(err) if err.code == ErrorCode::RATE_LIMITED && err.retry_after_ms > 0),
            EVENT_WAIT,
        )
        .await;
    assert!(
        limited.is_ok(),
        "a second start at once is refused: {limited:?}"
    );
    alice
        .send(conv.conversation_id, cmid(1, 1), "done typing")
        .await
        .unwrap();
    next_message(&alice2).await;
    assert!(
        alice2.try_next_event().is_none(),
        "the typist's own devices see no indicator"
    );
    let updates = sync_all(&bob, 0).await;
    assert!(
        updates
            .iter()
            .all(|u| matches!(u.kind, UpdateKind::Message(_))),
        "typing is not in the log"
    );
    let history = bob.history(conv.conversation_id, 0, 0).await.unwrap();
    assert_eq!(history.messages.len(), 1);
}
