//! A Matrix push gateway on loopback for the push tests, and how to start `ternd` pushing to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_client::Client;
use tern_protocol::frames::RegisterPushToken;
use tern_protocol::types::PushPlatform;
use tern_protocol::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Ternd;

/// How long a test waits for the gateway to be called.
pub const PUSH_WAIT: Duration = Duration::from_secs(30);

/// A push gateway on loopback: records every notification, rejects the pushkeys it is told to.
pub struct Gateway {
    /// Every notification the gateway got, in order.
    pub received: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Gateway {
    pub async fn start(listener: TcpListener, reject: &[&str]) -> Gateway {
        let (tx, received) = mpsc::unbounded_channel();
        let reject: Arc<Vec<String>> = Arc::new(reject.iter().map(|s| (*s).to_owned()).collect());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, tx.clone(), Arc::clone(&reject)));
            }
        });
        Gateway { received }
    }

    pub async fn next(&mut self) -> serde_json::Value {
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

pub fn notify_url(addr: SocketAddr) -> String {
    format!("http://{addr}/_matrix/push/v1/notify")
}

/// A loopback address nothing listens on yet (the listener is returned for later use).
pub async fn reserve() -> (SocketAddr, TcpListener) {
    reserve_on("127.0.0.1").await
}

/// A free port on the loopback address `ip`. A test that frees its port and binds it again later
/// takes an address of its own, so that no other test is given the port meanwhile.
pub async fn reserve_on(ip: &str) -> (SocketAddr, TcpListener) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    (listener.local_addr().unwrap(), listener)
}

pub async fn register_token(client: &Client, token: &str) {
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

/// `ternd` pushing to the gateway at `addr`, with a coalescing window and other flags.
pub fn start_pushing(
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
