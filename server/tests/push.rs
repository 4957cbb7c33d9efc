//! Integration tests of push notifications: a real `ternd` posts to a real HTTP server inside the
//! test, on loopback, that implements the Matrix Push Gateway endpoint. They cover delivery with
//! coalescing, retries while the gateway is down, removal of rejected pushkeys, and jobs that
//! survive a restart of `ternd`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use common::gateway::*;
use common::*;
use tern_client::Client;
use tokio::net::TcpListener;

on_both_engines!(
    offline_user_gets_one_coalesced_notification,
    gateway_down_then_up_is_retried,
    rejected_pushkey_is_removed,
    queued_jobs_survive_a_restart,
    preview_is_included_only_when_asked,
);

fn pushkeys(notification: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = notification["notification"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pushkey"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

/// Alice, online, and Bob, offline with one device per pushkey; Alice's client and their
/// conversation.
async fn alice_and_offline_bob(server: &Ternd, keys: &[&str]) -> (Client, u64) {
    let (alice, _) = server.register("alice").await;
    let (first, bob) = server.register("bob").await;
    let mut devices = vec![first];
    for i in 1..keys.len() {
        devices.push(server.login("bob", &format!("device {i}")).await.0);
    }
    for (device, key) in devices.iter().zip(keys) {
        register_token(device, key).await;
    }
    for device in devices {
        device.close().await;
    }
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    (alice, conv.conversation_id)
}

// Proves an offline user's device gets one notification for messages sent within the coalescing
// window, naming its pushkey, the sender and the unread count, and no message text by default.
async fn offline_user_gets_one_coalesced_notification(engine: &'static str) {
    let (addr, listener) = reserve().await;
    let mut gateway = Gateway::start(listener, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_pushing(engine, dir.path(), addr, "2000", &[]);
    let (alice, conversation_id) = alice_and_offline_bob(&server, &["bob-phone"]).await;
    for n in 1..=3u64 {
        alice
            .send(conversation_id, cmid(1, n), "secret text")
            .await
            .unwrap();
    }
    let pushed = gateway.next().await;
    let notification = &pushed["notification"];
    assert_eq!(pushkeys(&pushed), ["bob-phone"]);
    assert_eq!(notification["devices"][0]["app_id"], "chat.tern.test");
    assert_eq!(notification["sender"], "alice");
    assert_eq!(notification["room_id"], conversation_id.to_string());
    assert_eq!(notification["counts"]["unread"], 3);
    assert!(
        notification.get("content").is_none(),
        "no message text without --push-include-preview"
    );
    assert!(
        gateway.received.try_recv().is_err(),
        "three messages, one notification"
    );
}

// Proves jobs are retried while the gateway is unreachable and delivered once it is back.
async fn gateway_down_then_up_is_retried(engine: &'static str) {
    // The port is free for a while: on an address no other test binds, so none takes it.
    let ip = if engine == "epoll" {
        "127.0.0.71"
    } else {
        "127.0.0.72"
    };
    let (addr, listener) = reserve_on(ip).await;
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let server = start_pushing(engine, dir.path(), addr, "50", &[]);
    let (alice, conversation_id) = alice_and_offline_bob(&server, &["bob-phone"]).await;
    alice
        .send(conversation_id, cmid(1, 1), "are you there?")
        .await
        .unwrap();
    // The first attempts find nothing listening; the gateway comes up a little later.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut gateway = Gateway::start(TcpListener::bind(addr).await.unwrap(), &[]).await;
    assert_eq!(pushkeys(&gateway.next().await), ["bob-phone"]);
}

// Proves a pushkey the gateway rejects is removed from its device, so later notifications name
// only the devices that still have a valid one.
async fn rejected_pushkey_is_removed(engine: &'static str) {
    let (addr, listener) = reserve().await;
    let mut gateway = Gateway::start(listener, &["stale-key"]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_pushing(engine, dir.path(), addr, "50", &[]);
    let (alice, conversation_id) = alice_and_offline_bob(&server, &["stale-key", "good-key"]).await;
    alice
        .send(conversation_id, cmid(1, 1), "one")
        .await
        .unwrap();
    assert_eq!(pushkeys(&gateway.next().await), ["good-key", "stale-key"]);
    alice
        .send(conversation_id, cmid(1, 2), "two")
        .await
        .unwrap();
    assert_eq!(pushkeys(&gateway.next().await), ["good-key"]);
}

// Proves a job queued before a shutdown is delivered by the next run of ternd.
async fn queued_jobs_survive_a_restart(engine: &'static str) {
    let (addr, listener) = reserve().await;
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_pushing(engine, dir.path(), addr, "50", &[]);
    let (alice, conversation_id) = alice_and_offline_bob(&server, &["bob-phone"]).await;
    alice
        .send(conversation_id, cmid(1, 1), "while you were out")
        .await
        .unwrap();
    assert!(server.terminate().success());

    let mut gateway = Gateway::start(TcpListener::bind(addr).await.unwrap(), &[]).await;
    let _server = start_pushing(engine, dir.path(), addr, "50", &[]);
    assert_eq!(pushkeys(&gateway.next().await), ["bob-phone"]);
}

// Proves --push-include-preview puts the start of the text in the notification.
async fn preview_is_included_only_when_asked(engine: &'static str) {
    let (addr, listener) = reserve().await;
    let mut gateway = Gateway::start(listener, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_pushing(engine, dir.path(), addr, "50", &["--push-include-preview"]);
    let (alice, conversation_id) = alice_and_offline_bob(&server, &["bob-phone"]).await;
    alice
        .send(conversation_id, cmid(1, 1), "lunch at noon?")
        .await
        .unwrap();
    let pushed = gateway.next().await;
    assert_eq!(pushed["notification"]["content"]["body"], "lunch at noon?");
}
