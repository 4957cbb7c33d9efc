//! End-to-end encryption and push notifications against a real `ternd` and a push gateway on
//! loopback: a notification for an encrypted conversation carries no text, not even with
//! `--push-include-preview`, and the gateway's request never holds what was sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;

use common::gateway::*;
use common::*;
use tern_client::{Crypto, MemoryStorage};

on_both_engines!(encrypted_push_carries_no_text);

// Proves that with previews on, a message of an encrypted conversation reaches the gateway as an
// `m.room.encrypted` notification with no content, and that neither its text nor its ciphertext
// is in the request; while a plain conversation's message still gets its preview (the setting is
// on).
async fn encrypted_push_carries_no_text(engine: &'static str) {
    let (addr, listener) = reserve().await;
    let mut gateway = Gateway::start(listener, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_pushing(engine, dir.path(), addr, "50", &["--push-include-preview"]);
    let (alice, a) = server.register("alice").await;
    let (bob, b) = server.register("bob").await;
    let alice_crypto =
        Crypto::load_or_create(a.user_id, a.device_id, Arc::new(MemoryStorage::new())).unwrap();
    alice_crypto.publish_keys(&alice).await.unwrap();
    let bob_crypto =
        Crypto::load_or_create(b.user_id, b.device_id, Arc::new(MemoryStorage::new())).unwrap();
    bob_crypto.publish_keys(&bob).await.unwrap();
    register_token(&bob, "bob-phone").await;
    bob.close().await;

    let (direct, _) = alice.open_direct_encrypted(b.user_id).await.unwrap();
    let secret = "MARKER-push-5e1b";
    alice_crypto
        .send(&alice, direct.conversation_id, cmid(1, 1), secret, vec![])
        .await
        .unwrap();
    let pushed = gateway.next().await;
    let text = pushed.to_string();
    assert_eq!(pushed["notification"]["type"], "m.room.encrypted");
    assert!(pushed["notification"].get("content").is_none(), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert!(!text.contains("megolm"), "{text}");

    let group = alice.create_group("plain", vec![b.user_id]).await.unwrap();
    alice
        .send(group.conversation_id, cmid(1, 2), "lunch at noon?")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + PUSH_WAIT;
    loop {
        let pushed = gateway.next().await;
        if pushed["notification"]["content"]["body"] == "lunch at noon?" {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
}
