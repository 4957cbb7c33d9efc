//! Integration tests of the client library's `Session` against a real `ternd`: connections cut in
//! the middle of a burst of sends (by a proxy, and by killing the server), catching up after a
//! reconnection, an outbox that survives the app in a file, and TLS.
//!
//! The proxy in front of `ternd` is the test's way to break connections: it forwards bytes both
//! ways, and on command cuts every connection, refuses new ones, or points at a new server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tern_client::{
    Client, ClientError, ConnectOptions, Credentials, FileStorage, MemoryStorage, PendingSend,
    Session, SessionEvent, SessionOptions, Storage, TlsOptions,
};
use tern_protocol::types::ConversationInfo;
use tern_protocol::UpdateKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

on_both_engines!(
    proxy_cuts_mid_burst_lose_and_duplicate_nothing,
    server_killed_mid_burst_loses_and_duplicates_nothing,
    updates_missed_while_away_arrive_once,
    a_crashed_apps_outbox_is_sent_once,
    sessions_over_tls,
    rate_limited_burst_is_slowed_not_dropped,
);

/// How long a test waits for the session to settle.
const SETTLE: Duration = Duration::from_secs(30);

/// A TCP proxy on loopback that can cut, refuse and retarget connections.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    target: SocketAddr,
    refusing: bool,
    next: u64,
    links: HashMap<u64, JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState {
            target,
            refusing: false,
            next: 0,
            links: HashMap::new(),
        }));
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut state = shared.lock().unwrap();
                if state.refusing {
                    continue; // dropped: the client sees the connection close at once
                }
                let target = state.target;
                let link = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
                state.next += 1;
                let id = state.next;
                state.links.insert(id, link);
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// Connections accepted so far.
    fn connections(&self) -> u64 {
        self.state.lock().unwrap().next
    }

    /// Cuts every open connection.
    fn cut_all(&self) {
        for (_, link) in self.state.lock().unwrap().links.drain() {
            link.abort();
        }
    }

    /// Refuses (or accepts again) new connections.
    fn refuse(&self, refusing: bool) {
        self.state.lock().unwrap().refusing = refusing;
    }

    /// Sends new connections to another server.
    fn retarget(&self, target: SocketAddr) {
        self.state.lock().unwrap().target = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

fn fast_reconnect() -> SessionOptions {
    SessionOptions::new("sdk-test")
        .with_reconnect(Duration::from_millis(20), Duration::from_millis(200))
}

/// [`fast_reconnect`] for a server started with [`NO_RATE_LIMITS`]: sends are always pipelined.
fn unlimited() -> SessionOptions {
    fast_reconnect().with_send_rate(0, 0)
}

/// Starts a session registering alice, and opens her direct conversation with `peer`.
async fn alice_with(
    addr: String,
    storage: Arc<dyn Storage>,
    options: SessionOptions,
    peer: u64,
) -> (Session, ConversationInfo) {
    let alice = Session::start(addr, register("alice"), storage, options)
        .await
        .unwrap();
    let conv = alice
        .client()
        .await
        .unwrap()
        .open_direct(peer)
        .await
        .unwrap();
    (alice, conv)
}

fn register(username: &str) -> Credentials {
    Credentials::Register {
        username: username.into(),
        password: "password123".into(),
        device_name: "sdk".into(),
    }
}

/// The bodies of a conversation's whole history, oldest first, read by `client`.
async fn history_bodies(client: &Client, conversation_id: u64) -> Vec<String> {
    let mut pages = Vec::new();
    let mut before = 0;
    loop {
        let page = client.history(conversation_id, before, 0).await.unwrap();
        let first = page.messages.first().map(|m| m.seq);
        let more = page.has_more;
        pages.push(page.messages);
        match first {
            Some(first) if more => before = first,
            _ => break,
        }
    }
    pages.into_iter().rev().flatten().map(|m| m.body).collect()
}

/// Reads the session's events until its outbox is empty (or the wait ends); returns the `Sent`
/// events seen, by body order of arrival, and calls `on_sent` with the running count.
async fn drain_until_sent(
    session: &Session,
    mut on_sent: impl FnMut(usize),
) -> Vec<tern_protocol::frames::Sent> {
    let deadline = Instant::now() + SETTLE;
    let mut sent = Vec::new();
    while session.outbox_len() > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox still holds {} sends",
            session.outbox_len()
        );
        if let Some(SessionEvent::Sent(s)) =
            session.next_event_within(Duration::from_millis(100)).await
        {
            sent.push(s);
            on_sent(sent.len());
        }
    }
    // The confirmations of the last sends may still be queued for the app.
    while let Some(event) = session.next_event_within(Duration::from_millis(200)).await {
        if let SessionEvent::Sent(s) = event {
            sent.push(s);
        }
    }
    sent
}

/// Queues `n` messages `m0`, `m1`, ... from `session` to `conversation_id`.
fn queue_burst(session: &Session, conversation_id: u64, n: usize) {
    for i in 0..n {
        session
            .queue_send(conversation_id, &format!("m{i}"))
            .unwrap();
    }
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

// Proves that with the connection cut three times while 400 sends are in flight, every message
// is stored exactly once and in order, every send is confirmed once, and the outbox empties.
async fn proxy_cuts_mid_burst_lose_and_duplicate_nothing(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(engine, dir.path(), &NO_RATE_LIMITS);
    let proxy = Proxy::start(server.addr).await;
    let (bob, bob_auth) = server.register("bob").await;
    let storage = Arc::new(MemoryStorage::new());
    let (alice, conv) = alice_with(
        proxy.addr.to_string(),
        storage.clone(),
        unlimited(),
        bob_auth.user_id,
    )
    .await;
    queue_burst(&alice, conv.conversation_id, 400);
    let sent = drain_until_sent(&alice, |count| {
        if [40, 150, 260].contains(&count) {
            proxy.cut_all();
        }
    })
    .await;
    assert_eq!(sent.len(), 400, "every send confirmed once");
    assert!(proxy.connections() >= 4, "three cuts, three reconnections");
    assert_eq!(
        history_bodies(&bob, conv.conversation_id).await,
        expected(400)
    );
    assert!(storage.load().unwrap().outbox.is_empty());
    alice.close().await;
}

// Proves that with the server killed (SIGKILL) in the middle of a burst and restarted on the same
// data, the session reconnects and every message is stored exactly once, in order.
async fn server_killed_mid_burst_loses_and_duplicates_nothing(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ternd::start_in(engine, dir.path(), &NO_RATE_LIMITS);
    let proxy = Proxy::start(server.addr).await;
    let (_bob, bob_auth) = server.register("bob").await;
    let (alice, conv) = alice_with(
        proxy.addr.to_string(),
        Arc::new(MemoryStorage::new()),
        unlimited(),
        bob_auth.user_id,
    )
    .await;
    queue_burst(&alice, conv.conversation_id, 300);
    let mut restarted = None;
    let sent = drain_until_sent(&alice, |count| {
        if count == 100 {
            server.kill9();
            let again = Ternd::start_in(engine, dir.path(), &NO_RATE_LIMITS);
            proxy.retarget(again.addr);
            proxy.cut_all();
            restarted = Some(again);
        }
    })
    .await;
    assert_eq!(sent.len(), 300);
    let server = restarted.expect("the server was restarted");
    let (bob, _) = server.login("bob", "reader").await;
    assert_eq!(
        history_bodies(&bob, conv.conversation_id).await,
        expected(300)
    );
    alice.close().await;
}

// Proves updates that arrive while a session is away come to the app once each, in order, after
// it reconnects and resumes, followed by live ones.
async fn updates_missed_while_away_arrive_once(engine: &'static str) {
    let server = Ternd::start(engine);
    let proxy = Proxy::start(server.addr).await;
    let (alice, _) = server.register("alice").await;
    let bob = Session::start(
        proxy.addr.to_string(),
        register("bob"),
        Arc::new(MemoryStorage::new()),
        fast_reconnect(),
    )
    .await
    .unwrap();
    assert!(matches!(
        bob.next_event_within(EVENT_WAIT).await,
        Some(SessionEvent::Connected { resumed: false })
    ));
    let bob_id = bob
        .client()
        .await
        .unwrap()
        .lookup_user("bob")
        .await
        .unwrap()
        .user_id;
    let conv = alice.open_direct(bob_id).await.unwrap();

    proxy.refuse(true);
    proxy.cut_all();
    let away = bob.next_event_within(EVENT_WAIT).await;
    assert!(
        matches!(away, Some(SessionEvent::Disconnected { .. })),
        "{away:?}"
    );
    for n in 1..=5u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), &format!("away {n}"))
            .await
            .unwrap();
    }
    proxy.refuse(false);

    let mut bodies = Vec::new();
    let mut resumed = false;
    let mut sent_live = false;
    let deadline = Instant::now() + EVENT_WAIT;
    while bodies.len() < 6 && Instant::now() < deadline {
        if bodies.len() == 5 && !sent_live {
            // Caught up: the next message arrives live.
            alice
                .send(conv.conversation_id, cmid(1, 6), "live 6")
                .await
                .unwrap();
            sent_live = true;
        }
        match bob.next_event_within(Duration::from_millis(200)).await {
            Some(SessionEvent::Connected { resumed: r }) => resumed = r,
            Some(SessionEvent::Update(u)) => {
                if let UpdateKind::Message(m) = u.kind {
                    bodies.push(m.body);
                }
            }
            _ => {}
        }
    }
    assert!(resumed, "the session resumed with its token");
    let want: Vec<String> = (1..=5)
        .map(|n| format!("away {n}"))
        .chain(["live 6".to_owned()])
        .collect();
    assert_eq!(bodies, want);
    // Nothing more: no update came twice.
    while let Some(event) = bob.next_event_within(Duration::from_millis(300)).await {
        assert!(
            !matches!(event, SessionEvent::Update(_)),
            "a duplicate: {event:?}"
        );
    }
    bob.close().await;
}

// Proves an app that crashed with sends in its file outbox (one of them already stored by the
// server, its confirmation lost) sends them on its next start, each stored once.
async fn a_crashed_apps_outbox_is_sent_once(engine: &'static str) {
    let server = Ternd::start(engine);
    let (bob, bob_auth) = server.register("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.json");

    let storage = Arc::new(FileStorage::open(&path).unwrap());
    let (first, conv) = alice_with(
        server.addr.to_string(),
        storage.clone(),
        fast_reconnect(),
        bob_auth.user_id,
    )
    .await;
    let conversation_id = conv.conversation_id;
    let stored = first.send(conversation_id, "already stored").await.unwrap();
    first.close().await;
    drop(first);
    // The crash: the confirmed send is back in the outbox, and two more never went out.
    let unconfirmed = |id: [u8; 16], body: &str| PendingSend {
        client_msg_id: id,
        conversation_id,
        body: body.into(),
        attachments: Vec::new(),
    };
    storage
        .push_outbox(&unconfirmed(stored.client_msg_id, "already stored"))
        .unwrap();
    storage
        .push_outbox(&unconfirmed([1; 16], "pending 1"))
        .unwrap();
    storage
        .push_outbox(&unconfirmed([2; 16], "pending 2"))
        .unwrap();
    drop(storage);

    let storage = Arc::new(FileStorage::open(&path).unwrap());
    assert_eq!(storage.load().unwrap().outbox.len(), 3);
    let second = Session::start(
        server.addr.to_string(),
        Credentials::Stored,
        storage.clone(),
        fast_reconnect(),
    )
    .await
    .unwrap();
    let sent = drain_until_sent(&second, |_| {}).await;
    assert_eq!(sent.len(), 3);
    let again = sent
        .iter()
        .find(|s| s.client_msg_id == stored.client_msg_id)
        .unwrap();
    assert_eq!(
        again.seq, stored.seq,
        "the stored one is confirmed, not stored again"
    );
    assert_eq!(
        history_bodies(&bob, conversation_id).await,
        ["already stored", "pending 1", "pending 2"]
    );
    assert!(FileStorage::open(&path)
        .unwrap()
        .load()
        .unwrap()
        .outbox
        .is_empty());
    second.close().await;
}

// Proves a session over TLS trusting the development certificate works end to end, and that a
// client trusting only the public web roots refuses that certificate.
async fn sessions_over_tls(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(
        engine,
        dir.path(),
        &["--tls-listen", "127.0.0.1:0", "--tls-self-signed"],
    );
    let tls_addr = server.tls_addr.unwrap();
    let pem = dir.path().join("tls/self-signed.pem");
    let (bob, bob_auth) = server.register("bob").await;

    let tls = TlsOptions::new("localhost")
        .with_root_pem_file(&pem)
        .unwrap();
    let options = fast_reconnect().with_tls(tls);
    let (alice, conv) = alice_with(
        tls_addr.to_string(),
        Arc::new(MemoryStorage::new()),
        options,
        bob_auth.user_id,
    )
    .await;
    alice.send(conv.conversation_id, "over tls").await.unwrap();
    assert_eq!(
        history_bodies(&bob, conv.conversation_id).await,
        ["over tls"]
    );
    alice.close().await;

    let untrusting = TlsOptions::new("localhost");
    let refused = Client::connect_tls(tls_addr, &untrusting, ConnectOptions::default()).await;
    assert!(matches!(refused, Err(ClientError::Io(_))), "{refused:?}");
}

// Proves that with the server's default send limits (bursts of 100, then 50 a second per
// connection) a burst of 250 sends is slowed down, not dropped: every message is stored exactly
// once and in order, and the outbox empties.
async fn rate_limited_burst_is_slowed_not_dropped(engine: &'static str) {
    let server = Ternd::start(engine);
    let (bob, bob_auth) = server.register("bob").await;
    let (alice, conv) = alice_with(
        server.addr.to_string(),
        Arc::new(MemoryStorage::new()),
        fast_reconnect(),
        bob_auth.user_id,
    )
    .await;
    let started = Instant::now();
    queue_burst(&alice, conv.conversation_id, 250);
    let sent = drain_until_sent(&alice, |_| {}).await;
    assert_eq!(sent.len(), 250, "every send confirmed once");
    // 150 sends past the burst at 50 a second take about 3 s: the limit was met, not avoided.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        history_bodies(&bob, conv.conversation_id).await,
        expected(250)
    );
    alice.close().await;
}
