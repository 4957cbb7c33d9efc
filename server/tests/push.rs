//! Integration tests of push notifications: a real `ternd` posts to a real HTTP server inside the
//! test, on loopback, that implements the Matrix Push Gateway endpoint. They cover delivery with
//! coalescing, retries while the gateway is down, removal of rejected pushkeys, and jobs that
//! survive a restart of `ternd`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tern_client::Client;
use tern_protocol::frames::RegisterPushToken;
use tern_protocol::types::PushPlatform;
use tern_protocol::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

on_both_engines!(
    offline_user_gets_one_coalesced_notification,
    gateway_down_then_up_is_retried,
    rejected_pushkey_is_removed,
    queued_jobs_survive_a_restart,
    preview_is_included_only_when_asked,
);

/// How long a test waits for the gateway to be called.
const PUSH_WAIT: Duration = Duration::from_secs(30);

/// A push gateway on loopback: records every notification, rejects the pushkeys it is told to.
struct Gateway {
    received: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Gateway {
    async fn start(listener: TcpListener, reject: &[&str]) -> Gateway {
        let (tx, received) = mpsc::unbounded_channel();
        let reject: Arc<Vec<String>> = Arc::new(reject.iter().map(|s| (*s).to_owned()).collect());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, tx.clone(), Arc::clone(&reject)));
            }
        });
        Gateway { received }
    }

    async fn next(&mut self) -> serde_json::Value {
        tokio::time::timeout(PUSH_WAIT, self.received.recv())
            .await
            .expect("the gateway is called in time")
            .expect("the gateway runs")
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
async fn serve(
    mut stream: TcpStream,
    tx: mpsc::UnboundedSender<serde_json::Value>,
    reject: Arc<Vec<String>>,
) {
    let mut buf = Vec::new();
    loop {
        let header_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
        assert!(
            head.starts_with("post /_matrix/push/v1/notify "),
            "unexpected request: {head}"
        );
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while buf.len() < header_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[header_end..header_end + length]).unwrap();
        buf.drain(..header_end + length);
        let rejected: Vec<String> = body["notification"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["pushkey"].as_str())
            .filter(|k| reject.iter().any(|r| r == k))
            .map(str::to_owned)
            .collect();
        let _ = tx.send(body);
        let answer = serde_json::json!({ "rejected": rejected }).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn notify_url(addr: SocketAddr) -> String {
    format!("http://{addr}/_matrix/push/v1/notify")
}

/// A loopback address nothing listens on yet (the listener is returned for later use).
async fn reserve() -> (SocketAddr, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (listener.local_addr().unwrap(), listener)
}

async fn register_token(client: &Client, token: &str) {
    let register = RegisterPushToken {
        platform: PushPlatform::Apns,
        app_id: "chat.tern.test".into(),
        token: token.into(),
    };
    assert!(matches!(
        client.request(register).await.unwrap(),
        Body::Ok(_)
    ));
}

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

/// `ternd` pushing to the gateway at `addr`, with a coalescing window and other flags.
fn start_pushing(
    engine: &'static str,
    dir: &std::path::Path,
    addr: SocketAddr,
    coalesce_ms: &str,
    extra: &[&str],
) -> Ternd {
    let url = notify_url(addr);
    let mut flags = vec![
        "--push-gateway-url",
        url.as_str(),
        "--push-coalesce-ms",
        coalesce_ms,
    ];
    flags.extend_from_slice(extra);
    Ternd::start_in(engine, dir, &flags)
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
    let (addr, listener) = reserve().await;
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
