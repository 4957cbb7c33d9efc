//! Integration tests of the TLS listener, on a real `ternd` and both I/O engines: sessions over
//! TLS 1.3 and TLS 1.2 that migrate between cores, refusals (an untrusted certificate, plain bytes,
//! a silent client past the handshake time-out), PEM files and TLS-only mode, and `openssl
//! s_client` as an independent client (`tls_s_client.sh`).
//!
//! The client here is tokio-rustls with the protocol crate's codec, so it can pin a TLS version
//! and see every frame; `sdk.rs` covers `tern-client` over TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use tern_protocol::frames::{self, Hello};
use tern_protocol::{Body, Frame, FrameDecoder, UpdateKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio_rustls::TlsConnector;

on_both_engines!(
    tls_sessions_migrate_and_chat,
    untrusted_and_plain_clients_are_refused,
    silent_handshake_times_out,
    pem_files_and_tls_only,
    openssl_s_client,
);

/// A TLS client speaking raw frames.
struct TlsClient {
    stream: TlsStream<TcpStream>,
    inbox: BytesMut,
    decoder: FrameDecoder,
    events: VecDeque<Frame>,
    next_id: u32,
}

/// A rustls client configuration trusting only `ca` (PEM), restricted to one TLS version.
fn client_config(ca: &Path, version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

impl TlsClient {
    async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> std::io::Result<TlsClient> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let stream = TlsConnector::from(config).connect(name, tcp).await?;
        let mut client = TlsClient {
            stream,
            inbox: BytesMut::new(),
            decoder: FrameDecoder::new(),
            events: VecDeque::new(),
            next_id: 0,
        };
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            client_name: "tls-test".into(),
        };
        assert!(matches!(client.request(hello).await, Body::Welcome(_)));
        Ok(client)
    }

    /// Sends a request and returns its reply; events that arrive first are kept.
    async fn request(&mut self, body: impl Into<Body>) -> Body {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = Frame::new(id, body).to_bytes().unwrap();
        self.stream.write_all(&bytes).await.unwrap();
        self.stream.flush().await.unwrap();
        loop {
            let frame = self.read_frame().await;
            if frame.request_id == id {
                return frame.body;
            }
            self.events.push_back(frame);
        }
    }

    /// The next event (a frame with request id 0).
    async fn next_event(&mut self) -> Frame {
        if let Some(frame) = self.events.pop_front() {
            return frame;
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Frame {
        tokio::time::timeout(EVENT_WAIT, async {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.inbox).unwrap() {
                    return frame;
                }
                let n = self.stream.read_buf(&mut self.inbox).await.unwrap();
                assert!(n > 0, "the server closed the connection");
            }
        })
        .await
        .expect("a frame within the wait")
    }
}

async fn register(client: &mut TlsClient, username: &str) -> frames::Authenticated {
    let reply = client
        .request(frames::Register {
            username: username.into(),
            password: "password123".into(),
            device_name: "tls".into(),
        })
        .await;
    match reply {
        Body::Authenticated(auth) => auth,
        other => panic!("register {username}: {other:?}"),
    }
}

fn self_signed_ca(server: &Ternd) -> std::path::PathBuf {
    server.data_dir.join("tls").join("self-signed.pem")
}

fn start_tls(engine: &'static str, dir: &Path, extra: &[&str]) -> Ternd {
    let mut args = vec!["--tls-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Ternd::start_in(engine, dir, &args)
}

// Proves clients on TLS 1.3 and TLS 1.2, checking the certificate by host name and by IP address,
// register (which moves each session to its user's core with its TLS state, with 2 cores for about
// half of them), then chat: each of 6 users sends to the next, who receives it live.
async fn tls_sessions_migrate_and_chat(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_tls(engine, dir.path(), &["--tls-self-signed"]);
    let tls = server.tls_addr.expect("a TLS address");
    let ca = self_signed_ca(&server);
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let mut clients = Vec::new();
    let mut users = Vec::new();
    for n in 0..6 {
        let name = if n % 3 == 0 { "127.0.0.1" } else { "localhost" };
        let config = client_config(&ca, versions[n % 2]);
        let mut client = TlsClient::connect(tls, config, name).await.unwrap();
        let auth = register(&mut client, &format!("user{n}")).await;
        // Live updates from here on.
        let page = client.request(frames::Sync { since: 0, limit: 0 }).await;
        assert!(matches!(page, Body::SyncPage(_)), "{page:?}");
        users.push(auth.user_id);
        clients.push(client);
    }
    for n in 0..6 {
        let to = users[(n + 1) % 6];
        let reply = clients[n]
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
            client_msg_id: cmid(7, n as u64),
            body: format!("over tls from {n}"),
            attachments: Vec::new(),
        };
        let reply = clients[n].request(send).await;
        assert!(matches!(reply, Body::Sent(_)), "{reply:?}");
    }
    for (n, client) in clients.iter_mut().enumerate() {
        let from = (n + 5) % 6;
        let expected = format!("over tls from {from}");
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            assert!(Instant::now() < deadline, "user{n} never got {expected:?}");
            let frame = client.next_event().await;
            if let Body::UpdateEvent(event) = frame.body {
                if let UpdateKind::Message(message) = event.update.kind {
                    if message.body == expected {
                        break;
                    }
                }
            }
        }
    }
}

// Proves a client that does not trust the certificate fails the handshake, and that plain frames
// sent to the TLS port get the connection closed, not an answer; both count as failed handshakes.
async fn untrusted_and_plain_clients_are_refused(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_tls(engine, dir.path(), &["--tls-self-signed"]);
    let tls = server.tls_addr.unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let untrusting = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let refused = TlsClient::connect(tls, Arc::new(untrusting), "localhost").await;
    let error = refused.err().expect("an untrusted certificate must fail");
    assert!(error.to_string().contains("certificate"), "{error}");

    let mut plain = TcpStream::connect(tls).await.unwrap();
    let hello = Frame::new(
        1,
        Hello {
            min_version: 1,
            max_version: 1,
            client_name: "plain".into(),
        },
    );
    plain.write_all(&hello.to_bytes().unwrap()).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(EVENT_WAIT, plain.read_to_end(&mut reply)).await;
    // Closed: at most a TLS alert came back (content type 21), never a frame.
    read.expect("closed within the wait").ok();
    assert!(reply.is_empty() || reply[0] == 21, "{reply:?}");

    let failures = wait_for_metric(&server, "tern_tls_handshake_failures_total", 2).await;
    assert!(failures >= 2, "{failures}");
}

// Proves a client that connects to the TLS port and says nothing is cut at the handshake time-out,
// not at the (much longer) idle time-out.
async fn silent_handshake_times_out(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_tls(
        engine,
        dir.path(),
        &["--tls-self-signed", "--tls-handshake-timeout-ms", "300"],
    );
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(EVENT_WAIT, silent.read_to_end(&mut buf))
        .await
        .expect("closed by the handshake time-out")
        .ok();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

// Proves a certificate and key from PEM files serve TLS, that `--tls-only` leaves no plain
// listener, and that a missing key file stops the start with a message naming it.
async fn pem_files_and_tls_only(engine: &'static str) {
    // The development mode writes a certificate and key; serve them as ordinary PEM files.
    let first = tempfile::tempdir().unwrap();
    let mut dev = start_tls(engine, first.path(), &["--tls-self-signed"]);
    dev.terminate();
    let cert = first.path().join("tls/self-signed.pem");
    let key = first.path().join("tls/self-signed.key");

    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-only",
    ];
    let server = start_tls(engine, dir.path(), &flags);
    assert!(server.addr.ip().is_unspecified(), "no plain TCP listener");
    let config = client_config(&cert, &rustls::version::TLS13);
    let mut client = TlsClient::connect(server.tls_addr.unwrap(), config, "localhost")
        .await
        .unwrap();
    let auth = register(&mut client, "alice").await;
    assert!(auth.user_id > 0);
    drop(server);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ternd"))
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/key.pem"), "{stderr}");
}

// Runs `tls_s_client.sh`: `openssl s_client` over TLS 1.3 and 1.2 gets Welcome, the vector's Pong
// and FRAME_TOO_SMALL, and fails against an untrusted certificate.
async fn openssl_s_client(engine: &'static str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_s_client.sh");
    let run = move || {
        std::process::Command::new("bash")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_ternd"))
            .arg(engine)
            .output()
    };
    let output = tokio::task::spawn_blocking(run).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
}

/// Polls `/metrics` until the sum of `name` over cores reaches `at_least` (or the wait ends), and
/// returns the last sum.
async fn wait_for_metric(server: &Ternd, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let sum = total(&get(server.metrics_addr, "/metrics").await.1, name);
        if sum >= at_least || Instant::now() >= deadline {
            return sum;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
