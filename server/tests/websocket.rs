//! Integration tests of the WebSocket listener (spec §2.11), on a real `ternd` and both I/O
//! engines: chat between WebSocket clients and with a TCP client, sessions migrating to their
//! owner core, `wss://`, the upgrade's refusals (a foreign Origin, no subprotocol), the close codes
//! of a text message, an oversized message and a frame split or joined across messages, and the
//! idle time-out that WebSocket pings do not hold off.
//!
//! The client is `tokio-tungstenite`, an independent implementation of RFC 6455, carrying frames
//! encoded by the protocol crate; every message the server sends is checked to hold exactly one
//! frame.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tern_protocol::frames::{self, Hello};
use tern_protocol::{Body, ErrorCode, Frame, FrameDecoder, UpdateKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

on_both_engines!(
    ws_clients_chat_with_each_other_and_tcp,
    wss_sessions_chat,
    origins_are_checked,
    subprotocol_is_required,
    text_message_is_closed_1003,
    oversized_message_is_closed_1009,
    split_and_joined_frames_are_closed_1007,
    ws_pings_do_not_hold_off_the_idle_time_out,
);

/// A WebSocket client speaking frames, one per binary message.
struct WsClient<S> {
    ws: WebSocketStream<S>,
    events: VecDeque<Frame>,
    next_id: u32,
    pongs: usize,
}

/// Opens a WebSocket over `stream` with the given extra request headers.
async fn open<S>(
    stream: S,
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<WebSocketStream<S>, tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let (ws, _response) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(ws)
}

const TERN: (&str, &str) = ("Sec-WebSocket-Protocol", "tern.v1");

async fn ws_connect(server: &Ternd) -> WsClient<TcpStream> {
    let tcp = TcpStream::connect(server.ws_addr).await.unwrap();
    let url = format!("ws://{}/", server.ws_addr);
    let ws = open(tcp, &url, &[TERN]).await.expect("upgrade");
    WsClient::hello(ws).await
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    async fn hello(ws: WebSocketStream<S>) -> WsClient<S> {
        let mut client = WsClient {
            ws,
            events: VecDeque::new(),
            next_id: 0,
            pongs: 0,
        };
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            client_name: "ws-test".into(),
        };
        let reply = client.request(hello).await;
        assert!(matches!(reply, Body::Welcome(_)), "{reply:?}");
        client
    }

    async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// Sends a request and returns its reply; events that arrive first are kept.
    async fn request(&mut self, body: impl Into<Body>) -> Body {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = Frame::new(id, body).to_bytes().unwrap();
        self.send_raw(Message::Binary(bytes.freeze())).await;
        loop {
            let frame = self.read_frame().await.expect("a reply, not a close");
            if frame.request_id == id {
                return frame.body;
            }
            self.events.push_back(frame);
        }
    }

    async fn next_event(&mut self) -> Frame {
        if let Some(frame) = self.events.pop_front() {
            return frame;
        }
        self.read_frame().await.expect("an event, not a close")
    }

    /// The next frame, or the server's Close (`Err`, with its code).
    async fn read_frame(&mut self) -> Result<Frame, Option<CloseCode>> {
        tokio::time::timeout(EVENT_WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Binary(data))) => return Ok(one_frame(&data)),
                    Some(Ok(Message::Pong(_))) => self.pongs += 1,
                    Some(Ok(Message::Close(close))) => return Err(close.map(|c| c.code)),
                    Some(Ok(other)) => panic!("unexpected message {other:?}"),
                    Some(Err(e)) => panic!("WebSocket error: {e}"),
                    None => return Err(None),
                }
            }
        })
        .await
        .expect("a message within the wait")
    }

    /// Reads until the server closes; returns the frames before and the Close's code.
    async fn until_close(&mut self) -> (Vec<Frame>, Option<CloseCode>) {
        let mut frames = Vec::new();
        loop {
            match self.read_frame().await {
                Ok(frame) => frames.push(frame),
                Err(code) => return (frames, code),
            }
        }
    }
}

/// Decodes a server message, which must hold exactly one frame.
fn one_frame(data: &[u8]) -> Frame {
    let mut buf = BytesMut::from(data);
    let frame = FrameDecoder::new()
        .decode(&mut buf)
        .unwrap()
        .expect("a whole frame");
    assert!(buf.is_empty(), "a message with more than one frame");
    frame
}

async fn register<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WsClient<S>,
    username: &str,
) -> frames::Authenticated {
    let reply = client
        .request(frames::Register {
            username: username.into(),
            password: "password123".into(),
            device_name: "browser".into(),
        })
        .await;
    let Body::Authenticated(auth) = reply else {
        panic!("register {username}: {reply:?}");
    };
    let page = client.request(frames::Sync { since: 0, limit: 0 }).await;
    assert!(matches!(page, Body::SyncPage(_)), "{page:?}");
    auth
}

async fn send_to<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WsClient<S>,
    to: u64,
    body: &str,
    tag: u64,
) {
    let reply = client
        .request(frames::OpenDirect {
            user_id: to,
            encrypted: false,
        })
        .await;
    let Body::Conversation(conv) = reply else {
        panic!("open direct: {reply:?}");
    };
    let send = frames::Send {
        conversation_id: conv.conversation.conversation_id,
        client_msg_id: cmid(9, tag),
        body: body.into(),
        attachments: Vec::new(),
    };
    let reply = client.request(send).await;
    assert!(matches!(reply, Body::Sent(_)), "{reply:?}");
}

async fn expect_message<S: AsyncRead + AsyncWrite + Unpin>(client: &mut WsClient<S>, body: &str) {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        assert!(Instant::now() < deadline, "never got {body:?}");
        let frame = client.next_event().await;
        if let Body::UpdateEvent(event) = frame.body {
            if let UpdateKind::Message(message) = event.update.kind {
                if message.body == body {
                    return;
                }
            }
        }
    }
}

// Proves six WebSocket clients register (which moves each session, with its WebSocket state, to
// its user's owner core: with 2 cores about half of them move) and chat in a ring, each receiving
// the previous one's message live; that a TCP client and a WebSocket client chat both ways; that a
// WebSocket Ping is answered with a Pong; and that the metrics count ws connections and upgrades.
async fn ws_clients_chat_with_each_other_and_tcp(engine: &'static str) {
    let server = Ternd::start(engine);
    let mut clients = Vec::new();
    let mut users = Vec::new();
    for n in 0..6 {
        let mut client = ws_connect(&server).await;
        users.push(register(&mut client, &format!("web{n}")).await.user_id);
        clients.push(client);
    }
    for n in 0..6 {
        let to = users[(n + 1) % 6];
        send_to(&mut clients[n], to, &format!("over ws from {n}"), n as u64).await;
    }
    for (n, client) in clients.iter_mut().enumerate() {
        expect_message(client, &format!("over ws from {}", (n + 5) % 6)).await;
    }

    let (tcp, tcp_auth) = server.register("native").await;
    sync_all(&tcp, 0).await;
    send_to(&mut clients[0], tcp_auth.user_id, "from the browser", 100).await;
    assert_eq!(next_message(&tcp).await.body, "from the browser");
    let conv = tcp.open_direct(users[0]).await.unwrap();
    tcp.send(conv.conversation_id, cmid(1, 1), "from the app")
        .await
        .unwrap();
    expect_message(&mut clients[0], "from the app").await;

    clients[1]
        .send_raw(Message::Ping(vec![1, 2, 3].into()))
        .await;
    let reply = clients[1].request(frames::Ping { nonce: 7 }).await;
    assert!(matches!(reply, Body::Pong(frames::Pong { nonce: 7 })));
    assert_eq!(clients[1].pongs, 1, "the WebSocket Ping was answered first");

    let metrics = get(server.metrics_addr, "/metrics").await.1;
    let ws_open = sum_labelled(&metrics, "tern_transport_connections", "ws");
    assert_eq!(ws_open, 6, "{metrics}");
    let upgrades = sum_labelled(&metrics, "tern_transport_handshakes_total", "ws");
    assert_eq!(upgrades, 6);
    assert_eq!(
        sum_labelled(&metrics, "tern_transport_connections", "tcp"),
        1
    );
}

/// The sum over cores of a per-transport metric for one transport.
fn sum_labelled(metrics: &str, name: &str, transport: &str) -> u64 {
    let label = format!("transport=\"{transport}\"}}");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn tls_config(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

// Proves `wss://`: with TLS configured the WebSocket listener speaks TLS (the same certificate as
// the TLS port), and two wss clients, migrating to their owner cores with TLS and WebSocket state
// together, chat; plain `ws://` on that port is refused.
async fn wss_sessions_chat(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &["--tls-self-signed", "--tls-listen", "127.0.0.1:0"],
    );
    let config = tls_config(&dir.path().join("tls/self-signed.pem"));
    let url = format!("wss://localhost:{}/", server.ws_addr.port());
    let mut clients = Vec::new();
    let mut users = Vec::new();
    for n in 0..4 {
        let tcp = TcpStream::connect(server.ws_addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(Arc::clone(&config))
            .connect(name, tcp)
            .await
            .unwrap();
        let ws = open(tls, &url, &[TERN]).await.expect("wss upgrade");
        let mut client = WsClient::hello(ws).await;
        users.push(register(&mut client, &format!("secure{n}")).await.user_id);
        clients.push(client);
    }
    for n in 0..4 {
        let to = users[(n + 1) % 4];
        send_to(&mut clients[n], to, &format!("over wss from {n}"), n as u64).await;
    }
    for (n, client) in clients.iter_mut().enumerate() {
        expect_message(client, &format!("over wss from {}", (n + 3) % 4)).await;
    }
    let metrics = get(server.metrics_addr, "/metrics").await.1;
    assert_eq!(
        sum_labelled(&metrics, "tern_transport_connections", "wss"),
        4
    );

    let tcp = TcpStream::connect(server.ws_addr).await.unwrap();
    let plain = open(tcp, &format!("ws://{}/", server.ws_addr), &[TERN]).await;
    assert!(plain.is_err(), "plain ws:// on the wss port");
}

fn http_status(result: Result<WebSocketStream<TcpStream>, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("not an HTTP refusal: {e}"),
        Ok(_) => panic!("upgraded"),
    }
}

// Proves the Origin allow-list: by default a local development page and a client with no Origin
// are upgraded while a foreign page gets 403; `--ws-allowed-origins` replaces the list, so the
// listed origin is upgraded and localhost is now refused; refusals count as failed upgrades.
async fn origins_are_checked(engine: &'static str) {
    let server = Ternd::start(engine);
    let url = format!("ws://{}/", server.ws_addr);
    let connect = |origin: Option<&'static str>| {
        let url = url.clone();
        let addr = server.ws_addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            match origin {
                Some(origin) => open(tcp, &url, &[TERN, ("Origin", origin)]).await,
                None => open(tcp, &url, &[TERN]).await,
            }
        }
    };
    assert!(connect(Some("http://localhost:5173")).await.is_ok());
    assert!(connect(None).await.is_ok());
    assert_eq!(
        http_status(connect(Some("https://evil.example")).await),
        403
    );
    let failures = sum_labelled(
        &get(server.metrics_addr, "/metrics").await.1,
        "tern_transport_handshake_failures_total",
        "ws",
    );
    assert_eq!(failures, 1);

    let dir = tempfile::tempdir().unwrap();
    let listed = Ternd::start_in(
        engine,
        dir.path(),
        &["--ws-allowed-origins", "https://chat.example.com"],
    );
    let url = format!("ws://{}/", listed.ws_addr);
    let tcp = TcpStream::connect(listed.ws_addr).await.unwrap();
    let ok = open(tcp, &url, &[TERN, ("Origin", "https://chat.example.com")]).await;
    WsClient::hello(ok.expect("the listed origin")).await;
    let tcp = TcpStream::connect(listed.ws_addr).await.unwrap();
    let refused = open(tcp, &url, &[TERN, ("Origin", "http://localhost:5173")]).await;
    assert_eq!(http_status(refused), 403);
}

// Proves a client that does not offer the subprotocol `tern.v1` gets 400 and no upgrade, even when
// it offers others.
async fn subprotocol_is_required(engine: &'static str) {
    let server = Ternd::start(engine);
    let url = format!("ws://{}/", server.ws_addr);
    let tcp = TcpStream::connect(server.ws_addr).await.unwrap();
    assert_eq!(http_status(open(tcp, &url, &[]).await), 400);
    let tcp = TcpStream::connect(server.ws_addr).await.unwrap();
    let other = [("Sec-WebSocket-Protocol", "chat, tern.v2")];
    assert_eq!(http_status(open(tcp, &url, &other).await), 400);
}

// Proves a text message closes the connection with 1003, after a session that was working.
async fn text_message_is_closed_1003(engine: &'static str) {
    let server = Ternd::start(engine);
    let mut client = ws_connect(&server).await;
    client.send_raw(Message::Text("hello".into())).await;
    let (frames, code) = client.until_close().await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, Some(CloseCode::Unsupported));
}

// Proves a message above the largest frame is refused: one whose frame announces 2 MiB is closed
// with 1009 at once, and a 1 MiB + 1 byte message gets the connection closed (with 1009 when the
// Close arrives before the reset the unread rest causes).
async fn oversized_message_is_closed_1009(engine: &'static str) {
    let server = Ternd::start(engine);
    let mut client = ws_connect(&server).await;
    let mut announced = (2u32 << 20).to_be_bytes().to_vec();
    announced.extend([0, 2, 0, 0, 0, 1]);
    client.send_raw(Message::Binary(announced.into())).await;
    assert_eq!(client.until_close().await.1, Some(CloseCode::Size));

    let mut client = ws_connect(&server).await;
    let big = vec![0u8; (1 << 20) + 1];
    let _ = client.ws.send(Message::Binary(big.into())).await;
    let next = tokio::time::timeout(EVENT_WAIT, client.ws.next())
        .await
        .expect("closed within the wait");
    let closed = match next {
        Some(Ok(Message::Close(close))) => close.map(|c| c.code),
        Some(Ok(other)) => panic!("unexpected {other:?}"),
        Some(Err(_)) | None => None,
    };
    assert!(matches!(closed, None | Some(CloseCode::Size)), "{closed:?}");
}

// Proves a frame split over two messages, and two frames joined in one message, are each closed
// with 1007, while a frame sent as two fragments of one message is fine.
async fn split_and_joined_frames_are_closed_1007(engine: &'static str) {
    let server = Ternd::start(engine);
    let ping = Frame::new(5, frames::Ping { nonce: 5 })
        .to_bytes()
        .unwrap()
        .freeze();

    let mut client = ws_connect(&server).await;
    let fragments = [
        Message::Frame(tungstenite::protocol::frame::Frame::message(
            ping[..3].to_vec(),
            tungstenite::protocol::frame::coding::OpCode::Data(
                tungstenite::protocol::frame::coding::Data::Binary,
            ),
            false,
        )),
        Message::Frame(tungstenite::protocol::frame::Frame::message(
            ping[3..].to_vec(),
            tungstenite::protocol::frame::coding::OpCode::Data(
                tungstenite::protocol::frame::coding::Data::Continue,
            ),
            true,
        )),
    ];
    for fragment in fragments {
        client.send_raw(fragment).await;
    }
    let pong = client.read_frame().await.expect("a Pong");
    assert!(matches!(pong.body, Body::Pong(frames::Pong { nonce: 5 })));

    client.send_raw(Message::Binary(ping.slice(..8))).await;
    client.send_raw(Message::Binary(ping.slice(8..))).await;
    assert_eq!(client.until_close().await.1, Some(CloseCode::Invalid));

    let mut client = ws_connect(&server).await;
    let mut joined = ping.to_vec();
    joined.extend_from_slice(&ping);
    client.send_raw(Message::Binary(joined.into())).await;
    assert_eq!(client.until_close().await.1, Some(CloseCode::Invalid));
}

// Proves WebSocket pings do not count as activity: a client that sends only WebSocket Pings (each
// answered) is closed at the idle time-out with `HEARTBEAT_TIMEOUT`, then Close 1000.
async fn ws_pings_do_not_hold_off_the_idle_time_out(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &["--heartbeat-interval-ms", "200", "--idle-timeout-ms", "500"],
    );
    let mut client = ws_connect(&server).await;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // Bounded: the server must close long before 100 pings have gone out.
    for _ in 0..100 {
        tick.tick().await;
        if client.ws.send(Message::Ping(vec![9].into())).await.is_err() {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(40), client.ws.next()).await;
        match next {
            Ok(Some(Ok(Message::Pong(_)))) | Err(_) => {}
            Ok(Some(Ok(Message::Binary(data)))) => {
                let frame = one_frame(&data);
                let Body::Error(error) = frame.body else {
                    panic!("{frame:?}");
                };
                assert_eq!(error.code, ErrorCode::HEARTBEAT_TIMEOUT);
                let (_, code) = client.until_close().await;
                assert_eq!(code, Some(CloseCode::Normal));
                let waited = started.elapsed();
                assert!(waited >= Duration::from_millis(450), "{waited:?}");
                assert!(waited < Duration::from_secs(4), "{waited:?}");
                return;
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    panic!("never closed by the idle time-out");
}
