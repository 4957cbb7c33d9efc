//! Test support: a real `ternd` process on a loopback port with its own temporary data directory,
//! and helpers to connect `tern-client` clients to it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod gateway;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_client::{Client, ConnectOptions, Event};
use tern_protocol::frames::Authenticated;
use tern_protocol::{Update, UpdateKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Defines each scenario `name(engine)` as two tests, `epoll::name` and `uring::name`, so every
/// integration test runs on both I/O engines.
#[allow(unused_macros)]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("epoll").await
                }
            )*
        }
        mod uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("uring").await
                }
            )*
        }
    };
}

/// The I/O engines every integration test runs on.
pub const ENGINES: [&str; 2] = ["epoll", "uring"];

/// How long a test waits for any one event before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// A `ternd` child process.
pub struct Ternd {
    child: Child,
    /// The plain TCP address; `0.0.0.0:0` under `--tls-only`, where nothing listens for it.
    pub addr: SocketAddr,
    /// The TLS address, when TLS is on.
    pub tls_addr: Option<SocketAddr>,
    /// The WebSocket address (`wss://` when TLS is on).
    pub ws_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub engine: &'static str,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Ternd {
    /// Starts `ternd` on a fresh temporary data directory.
    pub fn start(engine: &'static str) -> Ternd {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().to_owned();
        let mut ternd = Ternd::start_in(engine, &path, &[]);
        ternd._temp = Some(temp);
        ternd
    }

    /// Starts `ternd` on an existing data directory, with extra flags.
    pub fn start_in(engine: &'static str, data_dir: &Path, extra: &[&str]) -> Ternd {
        Ternd::start_limited(engine, data_dir, extra, None)
    }

    /// As [`Ternd::start_in`], with the open files limit (soft and hard) set to `open_files`.
    pub fn start_limited(
        engine: &'static str,
        data_dir: &Path,
        extra: &[&str],
        open_files: Option<u32>,
    ) -> Ternd {
        let mut command = match open_files {
            None => Command::new(env!("CARGO_BIN_EXE_ternd")),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_ternd"));
                sh
            }
        };
        let mut child = command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "2",
                "--io-engine",
                engine,
            ])
            .args([
                "--password-iterations",
                "1000",
                "--metrics-listen",
                "127.0.0.1:0",
                "--ws-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ternd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ternd's first line");
        let field = |name: &str| -> Option<SocketAddr> {
            let value = line.split_whitespace().find_map(|f| f.strip_prefix(name))?;
            (value != "off").then(|| value.parse().expect("an address"))
        };
        let unexpected = || panic!("unexpected first line from ternd: {line:?}");
        assert!(line.contains("tcp="), "{line:?}");
        let addr = field("tcp=").unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let metrics_addr = field("metrics=").unwrap_or_else(unexpected);
        let ws_addr = field("ws=").unwrap_or_else(unexpected);
        Ternd {
            child,
            addr,
            tls_addr: field("tls="),
            ws_addr,
            metrics_addr,
            engine,
            data_dir: data_dir.to_owned(),
            _temp: None,
        }
    }

    /// A connected (not yet authenticated) client.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr, ConnectOptions::default())
            .await
            .expect("connect")
    }

    /// A client registered as a new user, with its `Authenticated` reply.
    pub async fn register(&self, username: &str) -> (Client, Authenticated) {
        let client = self.client().await;
        let auth = client
            .register(username, "password123", "test device")
            .await
            .expect("register");
        (client, auth)
    }

    /// A client logged in as a new device of an existing user.
    pub async fn login(&self, username: &str, device: &str) -> (Client, Authenticated) {
        let client = self.client().await;
        let auth = client
            .login(username, "password123", device)
            .await
            .expect("login");
        (client, auth)
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks for a graceful shutdown (SIGTERM) and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait for ternd")
    }
}

impl Drop for Ternd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Syncs from `since` until caught up (which also turns on live updates), returning every update.
pub async fn sync_all(client: &Client, since: u64) -> Vec<Update> {
    let mut updates = Vec::new();
    let mut since = since;
    loop {
        let page = client.sync(since, 0).await.expect("sync");
        if let Some(last) = page.updates.last() {
            since = last.user_seq;
        }
        updates.extend(page.updates);
        if !page.has_more {
            return updates;
        }
    }
}

/// Syncs from 0 until the log holds at least `messages` messages, and returns it whole.
///
/// A `Sent` means the message is durable in its conversation; each member's log gets it a commit
/// later, on the member's core. So a test that syncs a recipient right after a `Send` waits here
/// for that commit, polling within a bounded time.
pub async fn sync_until(client: &Client, messages: usize) -> Vec<Update> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let updates = sync_all(client, 0).await;
        if bodies(&updates).len() >= messages {
            return updates;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log holds {} messages, not {messages}",
            bodies(&updates).len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// The message bodies among updates, in order.
pub fn bodies(updates: &[Update]) -> Vec<String> {
    updates
        .iter()
        .filter_map(|u| match &u.kind {
            UpdateKind::Message(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect()
}

/// Waits for the next live message update and returns it.
pub async fn next_message(client: &Client) -> tern_protocol::types::Message {
    next_message_after(client, 0).await
}

/// Waits for the next live message update past the cursor `after` and returns it, skipping
/// those at or below it as a client does: a device that went live during an earlier `Sync` may
/// get as an event an update the next `Sync` also returned.
pub async fn next_message_after(client: &Client, after: u64) -> tern_protocol::types::Message {
    let event = client
        .wait_for_event(
            |e| {
                matches!(
                    e,
                    Event::Update(Update {
                        user_seq,
                        kind: UpdateKind::Message(_),
                    }) if *user_seq > after
                )
            },
            EVENT_WAIT,
        )
        .await
        .expect("a message event");
    match event {
        Event::Update(Update {
            kind: UpdateKind::Message(m),
            ..
        }) => m,
        other => panic!("unexpected event {other:?}"),
    }
}

/// A distinct idempotency key per (tag, n).
pub fn cmid(tag: u8, n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = tag;
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// One HTTP GET; returns the status line and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: ternd\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(EVENT_WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The sum of a metric over its labels (every core).
pub fn total(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Flags that lift the send rate limits, so bursts are not slowed down.
pub const NO_RATE_LIMITS: [&str; 4] = [
    "--send-rate-per-connection",
    "0",
    "--send-rate-per-user",
    "0",
];
