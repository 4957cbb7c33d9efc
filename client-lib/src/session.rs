//! [`Session`]: a logged-in device that stays connected. It reconnects with back-off, resumes by
//! token, catches up from its stored cursor, and retries unconfirmed sends with their original
//! `client_msg_id`, so the app sees every update once and every message is stored once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tern_protocol::frames::{Sent, TypingEvent};
use tern_protocol::types::{ClientMsgId, ConversationId, MediaId, Presence};
use tern_protocol::{Body, ErrorCode, Update, UpdateKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::error::ClientError;
use crate::event::Event;
use crate::options::ConnectOptions;
use crate::pacer::Pacer;
use crate::storage::{PendingSend, Storage, StoredSession};
use crate::tls::TlsOptions;

/// How often the session acknowledges what the app has taken (`Ack`), at most.
const ACK_INTERVAL: Duration = Duration::from_millis(200);

/// The wait before retrying a send the server could not take just then (`UNAVAILABLE`,
/// `INTERNAL`).
const TRANSIENT_RETRY: Duration = Duration::from_millis(500);

/// Updates the app may take before the stored cursor follows, when more are waiting: the most an
/// app that crashes sees again.
const COMMIT_EVERY_UPDATES: u64 = 100;

/// Sends in flight at most, whatever [`SessionOptions::sends_in_flight`] says: the protocol lets a
/// connection have 256 requests in flight, and the app's own requests share them.
const SENDS_IN_FLIGHT_MAX: usize = 192;

/// How a session authenticates when its storage holds no session yet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// Only resume the stored session; fail if there is none.
    Stored,
    /// Create an account and its first device.
    Register {
        /// The new user's name.
        username: String,
        /// The password.
        password: String,
        /// A name for this device.
        device_name: String,
    },
    /// Log in as a new device of an existing account.
    Login {
        /// The user's name.
        username: String,
        /// The password.
        password: String,
        /// A name for this device.
        device_name: String,
    },
}

/// Settings of a [`Session`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Settings of each connection (client name, request time-out, buffers).
    pub connect: ConnectOptions,
    /// TLS, or `None` for plain TCP.
    pub tls: Option<TlsOptions>,
    /// The first wait before reconnecting. Default: 200 ms.
    pub reconnect_min: Duration,
    /// The longest wait before reconnecting; waits double up to it, with jitter. Default: 30 s.
    pub reconnect_max: Duration,
    /// Sends in flight at once, while the server's send limit leaves room (at most 192).
    /// Default: 32.
    pub sends_in_flight: usize,
    /// The server's send burst per connection, as far as the session knows: it pipelines sends
    /// only while its estimate of the server's bucket has room, and sends one at a time beyond, so
    /// that a send the server refuses (`RATE_LIMITED`) is never overtaken by a later one. Default:
    /// 100, `ternd`'s.
    pub send_burst: u32,
    /// The server's sustained sends per second per connection, as far as the session knows; 0
    /// when the server has no limit (always pipeline). Default: 50, `ternd`'s.
    pub sends_per_second: u32,
    /// How long [`Session::send`] waits for the server's confirmation before returning
    /// [`ClientError::Timeout`]; the message stays queued and is confirmed later by
    /// [`SessionEvent::Sent`]. Default: 60 s.
    pub send_timeout: Duration,
    /// Events buffered for the app. Default: 4096.
    pub event_buffer: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            connect: ConnectOptions::default(),
            tls: None,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            sends_in_flight: 32,
            send_burst: 100,
            sends_per_second: 50,
            send_timeout: Duration::from_secs(60),
            event_buffer: 4096,
        }
    }
}

impl SessionOptions {
    /// The defaults, with this client name.
    pub fn new(client_name: impl Into<String>) -> SessionOptions {
        SessionOptions {
            connect: ConnectOptions::new(client_name),
            ..SessionOptions::default()
        }
    }

    /// Connects over TLS.
    pub fn with_tls(mut self, tls: TlsOptions) -> SessionOptions {
        self.tls = Some(tls);
        self
    }

    /// Sets the server's send limit as the session assumes it ([`SessionOptions::send_burst`],
    /// [`SessionOptions::sends_per_second`]; a rate of 0: no limit).
    pub fn with_send_rate(mut self, burst: u32, per_second: u32) -> SessionOptions {
        self.send_burst = burst;
        self.sends_per_second = per_second;
        self
    }

    /// Sets the reconnect back-off bounds.
    pub fn with_reconnect(mut self, min: Duration, max: Duration) -> SessionOptions {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }
}

/// What a session tells the app.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionEvent {
    /// Authenticated and caught up; live updates follow. `resumed` is false for the first
    /// Register or Login of this device.
    Connected {
        /// Whether the stored token was used.
        resumed: bool,
    },
    /// The connection ended; the session is reconnecting.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// The session waits `delay`, then makes connection attempt `attempt` (1 after a connection
    /// that was live, counting up while attempts fail).
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// How long until it starts.
        delay: Duration,
    },
    /// An entry of the user's update log, each exactly once, in `user_seq` order. `Skipped`
    /// entries, which carry nothing, are not among them: the cursor passes over them.
    Update(Update),
    /// The server stored a queued message.
    Sent(Sent),
    /// The server refused a queued message for good (not a member, the body too long, ...); it
    /// left the outbox.
    SendFailed {
        /// The message's key.
        client_msg_id: ClientMsgId,
        /// The server's answer.
        error: ClientError,
    },
    /// A followed user's presence changed.
    Presence(Presence),
    /// Someone is typing (or stopped).
    Typing(TypingEvent),
    /// The server no longer accepts this device (its token was revoked, or the credentials are
    /// wrong). The session stopped and the stored session was cleared.
    LoggedOut {
        /// The server's answer.
        error: ClientError,
    },
}

/// A connection-keeping, persisting session of one device.
///
/// # How it works
///
/// One background task (the driver) owns the connection. It loops: connect (TCP or TLS), Resume
/// with the stored token (or Register/Login the first time, then store the token), Sync from the
/// cursor to the head, then serve: live updates go to the app in `user_seq` order (anything at or
/// below the cursor is a duplicate and dropped; a jump past it means a gap, filled by another Sync),
/// sends go out in outbox order with up to [`SessionOptions::sends_in_flight`] in flight, Pings keep
/// the connection alive at the interval the server asked for, and the cursor is acknowledged. When
/// the connection ends, the driver waits (exponential back-off with jitter) and starts over; every
/// send not yet confirmed goes out again with its `client_msg_id`, which the server stores at most
/// once.
///
/// The outbox is written to the [`Storage`] before the app is told: a send is in the outbox
/// before [`Session::queue_send`] returns. The stored cursor follows the updates the app took with
/// [`Session::next_event`]: once no more wait, or every 100 while they keep coming. After a crash
/// of the app, updates after the stored cursor are delivered again (the app may see the last few
/// again across a crash, never lose one; message ids tell them apart).
pub struct Session {
    shared: Arc<Shared>,
    events: tokio::sync::Mutex<mpsc::Receiver<SessionEvent>>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    options: SessionOptions,
    commands: mpsc::UnboundedSender<Command>,
    waiters: Mutex<HashMap<ClientMsgId, oneshot::Sender<Result<Sent, ClientError>>>>,
    client: watch::Receiver<Option<Arc<Client>>>,
    outbox_len: AtomicUsize,
    /// The stored cursor: every update up to it was taken by the app.
    committed: AtomicU64,
    /// The `user_seq` of the last update the app took, and how many it took since the last
    /// commit.
    taken: Mutex<(u64, u64)>,
    stopped: AtomicBool,
    rng: SystemRandom,
}

enum Command {
    Queue(PendingSend),
    Close(oneshot::Sender<()>),
}

impl Session {
    /// Starts a session of the server at `addr` (`"host:port"`), keeping its state in `storage`.
    ///
    /// Returns once the first connection is authenticated and caught up, so that wrong credentials
    /// or an unreachable server show up here; later disconnections are repaired in the background.
    /// A session stored in `storage` is resumed whatever `credentials` say.
    pub async fn start(
        addr: impl Into<String>,
        credentials: Credentials,
        storage: Arc<dyn Storage>,
        options: SessionOptions,
    ) -> Result<Session, ClientError> {
        let state = storage
            .load()
            .map_err(|e| ClientError::Io(std::io::Error::other(e)))?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (client_tx, client_rx) = watch::channel(None);
        let (events_tx, events) = mpsc::channel(options.event_buffer.max(1));
        let shared = Arc::new(Shared {
            storage,
            options,
            commands,
            waiters: Mutex::new(HashMap::new()),
            client: client_rx,
            outbox_len: AtomicUsize::new(state.outbox.len()),
            committed: AtomicU64::new(state.cursor),
            taken: Mutex::new((state.cursor, 0)),
            stopped: AtomicBool::new(false),
            rng: SystemRandom::new(),
        });
        let mut driver = Driver {
            shared: Arc::clone(&shared),
            addr: addr.into(),
            credentials,
            session: state.session,
            cursor: state.cursor,
            outbox: state.outbox.into(),
            in_flight: HashSet::new(),
            generation: 0,
            pacer: Pacer::new(1, 0, 0, Instant::now()),
            live: false,
            go_away: None,
            events: events_tx,
            client_tx,
            commands: commands_rx,
            results: mpsc::unbounded_channel(),
        };
        // The first connection runs here, so its failure is the caller's error.
        let first = driver.connect_and_authenticate().await?;
        let handle = tokio::spawn(async move { driver.run(Some(first)).await });
        Ok(Session {
            shared,
            events: tokio::sync::Mutex::new(events),
            driver: Mutex::new(Some(handle)),
        })
    }

    /// Queues a message and waits until the server stored it (its `Sent`), across reconnections,
    /// for up to [`SessionOptions::send_timeout`]. On time-out the message stays queued.
    pub async fn send(
        &self,
        conversation_id: ConversationId,
        body: &str,
    ) -> Result<Sent, ClientError> {
        self.send_with_attachments(conversation_id, body, Vec::new())
            .await
    }

    /// [`Session::send`] with attached media.
    pub async fn send_with_attachments(
        &self,
        conversation_id: ConversationId,
        body: &str,
        attachments: Vec<MediaId>,
    ) -> Result<Sent, ClientError> {
        let (tx, rx) = oneshot::channel();
        let client_msg_id = self.new_client_msg_id()?;
        self.lock_waiters().insert(client_msg_id, tx);
        let queued = self.queue(PendingSend {
            client_msg_id,
            conversation_id,
            body: body.to_owned(),
            attachments,
        });
        if let Err(e) = queued {
            self.lock_waiters().remove(&client_msg_id);
            return Err(e);
        }
        let outcome = tokio::time::timeout(self.shared.options.send_timeout, rx).await;
        self.lock_waiters().remove(&client_msg_id);
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Queues a message without waiting: it is in the outbox (and the storage) when this returns,
    /// and [`SessionEvent::Sent`] (or [`SessionEvent::SendFailed`]) reports the outcome. Returns the
    /// message's `client_msg_id`.
    pub fn queue_send(
        &self,
        conversation_id: ConversationId,
        body: &str,
    ) -> Result<ClientMsgId, ClientError> {
        let client_msg_id = self.new_client_msg_id()?;
        self.queue(PendingSend {
            client_msg_id,
            conversation_id,
            body: body.to_owned(),
            attachments: Vec::new(),
        })?;
        Ok(client_msg_id)
    }

    fn queue(&self, send: PendingSend) -> Result<(), ClientError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        self.shared
            .storage
            .push_outbox(&send)
            .map_err(|e| ClientError::Io(std::io::Error::other(e)))?;
        self.shared.outbox_len.fetch_add(1, Ordering::AcqRel);
        self.shared
            .commands
            .send(Command::Queue(send))
            .map_err(|_| ClientError::Closed)
    }

    fn new_client_msg_id(&self) -> Result<ClientMsgId, ClientError> {
        let mut id = [0u8; 16];
        self.shared
            .rng
            .fill(&mut id)
            .map_err(|_| ClientError::Io(std::io::Error::other("no randomness")))?;
        Ok(id)
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ClientMsgId, oneshot::Sender<Result<Sent, ClientError>>>>
    {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The next event; `None` once the session has stopped and every event was returned.
    ///
    /// Asking for the next event says the app is done with the update it took before: the stored
    /// cursor follows once no more events wait, or every 100 updates while they keep coming, and
    /// the server is told (`Ack`, which also sends delivered receipts). So an app that crashes sees
    /// at most the last 100 updates it took again, and never misses one; message ids tell repeats
    /// apart. [`Session::close`] stores the cursor of everything taken.
    ///
    /// A `Skipped` update (spec §10.9.9) is taken here without being returned: the app has
    /// nothing to show for it, and the stored cursor and the `Ack` cover it like any other.
    pub async fn next_event(&self) -> Option<SessionEvent> {
        let mut events = self.events.lock().await;
        // Every turn takes one event from the queue; only a `Skipped` update brings another turn.
        loop {
            self.commit(events.is_empty());
            let event = events.recv().await;
            if let Some(SessionEvent::Update(update)) = &event {
                {
                    let mut taken = self.lock_taken();
                    *taken = (update.user_seq, taken.1 + 1);
                }
                if matches!(update.kind, UpdateKind::Skipped(_)) {
                    continue;
                }
            }
            return event;
        }
    }

    /// Stores the cursor of the updates the app took: now when `all`, else once enough wait.
    /// A storage failure leaves it for the next call (the updates would be shown again after a
    /// crash, not lost).
    fn commit(&self, all: bool) {
        let mut taken = self.lock_taken();
        let (seq, count) = *taken;
        if seq <= self.shared.committed.load(Ordering::Acquire)
            || (!all && count < COMMIT_EVERY_UPDATES)
        {
            return;
        }
        if self.shared.storage.save_cursor(seq).is_ok() {
            self.shared.committed.store(seq, Ordering::Release);
            taken.1 = 0;
        }
    }

    fn lock_taken(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.shared
            .taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The next event within `timeout`, or `None`.
    pub async fn next_event_within(&self, timeout: Duration) -> Option<SessionEvent> {
        tokio::time::timeout(timeout, self.next_event())
            .await
            .ok()
            .flatten()
    }

    /// The current connection, waiting for one up to the request time-out. Use it for every other
    /// request ([`Client::history`], [`Client::create_group`], [`Client::upload`], ...); sends
    /// should go through the session, which retries them.
    pub async fn client(&self) -> Result<Arc<Client>, ClientError> {
        let mut watch = self.shared.client.clone();
        let wait = async move {
            let client = watch
                .wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                .await
                .map_err(|_| ClientError::Closed)?;
            client.clone().ok_or(ClientError::Closed)
        };
        match tokio::time::timeout(self.shared.options.connect.request_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Messages queued and not yet confirmed or refused.
    pub fn outbox_len(&self) -> usize {
        self.shared.outbox_len.load(Ordering::Acquire)
    }

    /// The stored cursor: the `user_seq` of the last update the app took that the storage has
    /// recorded (see [`Session::next_event`]). A new session on the same storage starts after it.
    pub fn cursor(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    /// Stops the session: stores the cursor of every update taken, closes the connection cleanly
    /// and ends the background task. Unconfirmed sends stay in the storage for the next session;
    /// events not taken yet are dropped (the updates among them come again in the next session,
    /// as the cursor does not cover them).
    pub async fn close(&self) {
        self.commit(true);
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Close(tx)).is_ok() {
            // The driver may be waiting for room in the event queue: make room while it stops.
            let mut events = self.events.try_lock().ok();
            tokio::pin!(rx);
            loop {
                let drained = {
                    let drain = async {
                        match events.as_mut() {
                            Some(events) => events.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = &mut rx => None,
                        event = drain => Some(event.is_some()),
                    }
                };
                match drained {
                    None => break,
                    Some(true) => {}
                    Some(false) => events = None,
                }
            }
        }
        let driver = self
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(driver) = driver {
            let _ = driver.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(driver) = self
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            driver.abort();
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cursor", &self.cursor())
            .field("outbox_len", &self.outbox_len())
            .finish_non_exhaustive()
    }
}

/// The result of one send attempt: the connection generation, the key, the outcome.
type SendResult = (u64, ClientMsgId, Result<Sent, ClientError>);

/// Why serving a connection stopped.
enum Stop {
    /// The connection ended or failed; reconnect.
    Lost(String),
    /// The app closed the session.
    Closed(oneshot::Sender<()>),
    /// The session cannot go on (storage failed, or the app dropped the session).
    Fatal,
}

struct Driver {
    shared: Arc<Shared>,
    addr: String,
    credentials: Credentials,
    session: Option<StoredSession>,
    /// The `user_seq` of the last update put in the app's queue: everything at or below it is a
    /// duplicate. (The stored cursor, `Shared::committed`, trails it until the app takes them.)
    cursor: u64,
    outbox: VecDeque<PendingSend>,
    in_flight: HashSet<ClientMsgId>,
    /// Counts connections, so results of an earlier one are told apart.
    generation: u64,
    /// The send window of the current connection.
    pacer: Pacer,
    /// Whether the current connection reached the live state (caught up).
    live: bool,
    /// Set when the server sent `GoAway`: its `reconnect_after_ms`. No sends start after it.
    go_away: Option<u32>,
    events: mpsc::Sender<SessionEvent>,
    client_tx: watch::Sender<Option<Arc<Client>>>,
    commands: mpsc::UnboundedReceiver<Command>,
    results: (
        mpsc::UnboundedSender<SendResult>,
        mpsc::UnboundedReceiver<SendResult>,
    ),
}

/// A connected, authenticated client, and whether it resumed.
struct Connected {
    client: Arc<Client>,
    resumed: bool,
}

impl Driver {
    async fn run(&mut self, mut first: Option<Connected>) {
        // Failed attempts since the last connection that reached the live state.
        let mut failures: u32 = 0;
        loop {
            let connected = match first.take() {
                Some(connected) => connected,
                None => match self.connect_and_authenticate().await {
                    Ok(connected) => connected,
                    Err(error) if is_logged_out(&error) => {
                        let _ = self.shared.storage.save_session(None);
                        let _ = self.events.send(SessionEvent::LoggedOut { error }).await;
                        break;
                    }
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        let wait = self.backoff(failures);
                        match self.pause(failures, wait).await {
                            Some(Stop::Closed(done)) => {
                                let _ = done.send(());
                                break;
                            }
                            Some(_) => break,
                            None => continue,
                        }
                    }
                },
            };
            let client = Arc::clone(&connected.client);
            self.generation += 1;
            self.in_flight.clear();
            let _ = self.client_tx.send(Some(Arc::clone(&client)));
            let stop = self.serve(&client, connected.resumed).await;
            let _ = self.client_tx.send(None);
            match stop {
                Stop::Lost(reason) => {
                    // No graceful close: the connection failed, or the server is closing it.
                    client.abort();
                    let event = SessionEvent::Disconnected { reason };
                    if self.events.send(event).await.is_err() {
                        break;
                    }
                    // The back-off starts over after a connection that reached the live state.
                    failures = if self.live {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                    let wait = match self.go_away {
                        Some(after_ms) => go_away_wait(after_ms, &self.shared.rng),
                        None => self.backoff(failures),
                    };
                    match self.pause(failures, wait).await {
                        Some(Stop::Closed(done)) => {
                            let _ = done.send(());
                            break;
                        }
                        Some(_) => break,
                        None => {}
                    }
                }
                Stop::Closed(done) => {
                    client.close().await;
                    let _ = done.send(());
                    break;
                }
                Stop::Fatal => {
                    client.abort();
                    break;
                }
            }
        }
        self.shared.stopped.store(true, Ordering::Release);
        // Whoever still waits for a send learns the session is gone; the send stays stored.
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff(
            self.shared.options.reconnect_min,
            self.shared.options.reconnect_max,
            failures,
            &self.shared.rng,
        )
    }

    /// Tells the app, then waits `wait` before the next attempt, still taking the app's commands.
    async fn pause(&mut self, attempt: u32, wait: Duration) -> Option<Stop> {
        let event = SessionEvent::Reconnecting {
            attempt,
            delay: wait,
        };
        if self.events.send(event).await.is_err() {
            return Some(Stop::Fatal);
        }
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return None,
                command = self.commands.recv() => match command {
                    Some(Command::Queue(send)) => self.outbox.push_back(send),
                    Some(Command::Close(done)) => return Some(Stop::Closed(done)),
                    None => return Some(Stop::Fatal),
                },
            }
        }
    }

    async fn connect_and_authenticate(&mut self) -> Result<Connected, ClientError> {
        let options = self.shared.options.connect.clone();
        let client = match &self.shared.options.tls {
            Some(tls) => Client::connect_tls(self.addr.as_str(), tls, options).await?,
            None => Client::connect(self.addr.as_str(), options).await?,
        };
        let (auth, resumed) = match (&self.session, &self.credentials) {
            (Some(stored), _) => (client.resume(stored.token).await?, true),
            (
                None,
                Credentials::Register {
                    username,
                    password,
                    device_name,
                },
            ) => (
                client.register(username, password, device_name).await?,
                false,
            ),
            (
                None,
                Credentials::Login {
                    username,
                    password,
                    device_name,
                },
            ) => (client.login(username, password, device_name).await?, false),
            (None, Credentials::Stored) => {
                return Err(ClientError::Usage {
                    frame: "Resume",
                    reason: "the storage holds no session to resume",
                })
            }
        };
        if let Some(token) = auth.token {
            let stored = StoredSession {
                user_id: auth.user_id,
                device_id: auth.device_id,
                username: auth.username,
                token,
            };
            self.shared
                .storage
                .save_session(Some(&stored))
                .map_err(|e| ClientError::Io(std::io::Error::other(e)))?;
            self.session = Some(stored);
        }
        Ok(Connected {
            client: Arc::new(client),
            resumed,
        })
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, client: &Arc<Client>, resumed: bool) -> Stop {
        self.live = false;
        self.go_away = None;
        let options = &self.shared.options;
        self.pacer = Pacer::new(
            options.sends_in_flight.min(SENDS_IN_FLIGHT_MAX),
            options.send_burst,
            options.sends_per_second,
            Instant::now(),
        );
        if let Err(stop) = self.catch_up(client).await {
            return stop;
        }
        if self
            .events
            .send(SessionEvent::Connected { resumed })
            .await
            .is_err()
        {
            return Stop::Fatal;
        }
        self.live = true;
        // The server asks for a Ping when nothing else was sent for this long; pinging on this
        // beat whatever else goes on is simpler and costs one small frame.
        let heartbeat = client.welcome().limits.heartbeat_interval_ms.max(100);
        let mut ping = tokio::time::interval(Duration::from_millis(u64::from(heartbeat)));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let (dead_tx, mut dead_rx) = mpsc::channel::<ClientError>(1);
        let mut nonce: u64 = 0;
        let mut ack = tokio::time::interval(ACK_INTERVAL);
        let mut acked = self.shared.committed.load(Ordering::Acquire);
        loop {
            // Whatever happened last (an answer, a new send, the end of a hold), start what may start.
            self.fill_window(client).await;
            let held = self.pacer.held_until(Instant::now());
            let resume_sends = async move {
                match held {
                    Some(until) => tokio::time::sleep_until(until.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = client.next_event() => {
                    let Some(event) = event else {
                        return Stop::Lost("the connection closed".into());
                    };
                    if let Err(stop) = self.handle_event(client, event).await {
                        return stop;
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Queue(send)) => self.outbox.push_back(send),
                    Some(Command::Close(done)) => return Stop::Closed(done),
                    None => return Stop::Fatal,
                },
                Some((generation, id, result)) = self.results.1.recv() => {
                    if let Err(stop) = self.handle_result(generation, id, result).await {
                        return stop;
                    }
                }
                () = resume_sends => {}
                _ = ping.tick() => {
                    nonce = nonce.wrapping_add(1);
                    let client = Arc::clone(client);
                    let dead = dead_tx.clone();
                    tokio::spawn(async move {
                        // No Pong within the request time-out: the connection is dead even if
                        // the socket does not know it yet (a lost network, a silent middlebox).
                        // A closed connection ends next_event by itself.
                        if let Err(error @ ClientError::Timeout) = client.ping(nonce).await {
                            let _ = dead.try_send(error);
                        }
                    });
                }
                Some(error) = dead_rx.recv() => {
                    return Stop::Lost(format!("no answer to a ping: {error}"));
                }
                _ = ack.tick() => {
                    // Acknowledge what the app has taken (and so stored), not what is queued.
                    let committed = self.shared.committed.load(Ordering::Acquire);
                    if committed > acked && client.ack(committed).await.is_ok() {
                        acked = committed;
                    }
                }
            }
        }
    }

    /// Syncs from the cursor to the head, handing each update to the app; live updates follow.
    async fn catch_up(&mut self, client: &Client) -> Result<(), Stop> {
        // Bounded by the log: every page moves the cursor, or the loop ends.
        loop {
            let page = client
                .sync(self.cursor, 0)
                .await
                .map_err(|e| Stop::Lost(format!("sync failed: {e}")))?;
            let before = self.cursor;
            for update in page.updates {
                self.deliver(update).await?;
            }
            if !page.has_more {
                return Ok(());
            }
            if self.cursor == before {
                return Err(Stop::Lost("sync made no progress".into()));
            }
        }
    }

    /// Puts an update in the app's queue, unless it was queued before.
    async fn deliver(&mut self, update: Update) -> Result<(), Stop> {
        if update.user_seq <= self.cursor {
            return Ok(());
        }
        let seq = update.user_seq;
        if self
            .events
            .send(SessionEvent::Update(update))
            .await
            .is_err()
        {
            return Err(Stop::Fatal);
        }
        self.cursor = seq;
        Ok(())
    }

    async fn handle_event(&mut self, client: &Client, event: Event) -> Result<(), Stop> {
        let forward = match event {
            Event::Update(update) if update.user_seq > self.cursor + 1 => {
                // Something between the cursor and this update did not arrive: fetch it.
                return self.catch_up(client).await;
            }
            Event::Update(update) => return self.deliver(update).await,
            Event::Presence(presence) => SessionEvent::Presence(presence),
            Event::Typing(typing) => SessionEvent::Typing(typing),
            Event::GoAway(go_away) => {
                // The server answers what it has read, then closes; new sends wait for the next
                // connection, which starts after the delay it named.
                self.go_away = Some(go_away.reconnect_after_ms);
                return Ok(());
            }
            // The connection closes after a connection-level error; next_event ends and the
            // driver reconnects.
            Event::Error(_) => return Ok(()),
            // Only a connection that asked with `ToDeviceSync` gets these, and the session never
            // does: the crypto machine reads its device's queue on a client of its own.
            Event::ToDevice(_) | Event::KeyCount(_) => return Ok(()),
        };
        self.events.send(forward).await.map_err(|_| Stop::Fatal)
    }

    /// Starts sends from the outbox, oldest first, as far as the pacer allows.
    async fn fill_window(&mut self, client: &Arc<Client>) {
        if self.go_away.is_some() {
            return;
        }
        // Bounded: every turn starts a send and adds it to `in_flight`, which the pacer caps.
        loop {
            if !self.pacer.may_send(Instant::now(), self.in_flight.len()) {
                return;
            }
            let next = self
                .outbox
                .iter()
                .find(|s| !self.in_flight.contains(&s.client_msg_id))
                .cloned();
            let Some(send) = next else {
                return;
            };
            self.start_send(client, send).await;
        }
    }

    /// Sends one message: queued on the connection now, in outbox order, its reply awaited by a
    /// task of its own.
    async fn start_send(&mut self, client: &Arc<Client>, send: PendingSend) {
        self.in_flight.insert(send.client_msg_id);
        self.pacer.started(Instant::now());
        let results = self.results.0.clone();
        let generation = self.generation;
        let id = send.client_msg_id;
        let frame = tern_protocol::frames::Send {
            conversation_id: send.conversation_id,
            client_msg_id: send.client_msg_id,
            body: send.body,
            attachments: send.attachments,
        };
        match client.request_in_order(frame).await {
            Ok(reply) => {
                tokio::spawn(async move {
                    let result = reply.await.and_then(|reply| expect_reply!(reply, Sent));
                    let _ = results.send((generation, id, result));
                });
            }
            Err(e) => {
                let _ = results.send((generation, id, Err(e)));
            }
        }
    }

    async fn handle_result(
        &mut self,
        generation: u64,
        id: ClientMsgId,
        result: Result<Sent, ClientError>,
    ) -> Result<(), Stop> {
        let current = generation == self.generation;
        match result {
            Ok(sent) => {
                if current {
                    self.in_flight.remove(&id);
                }
                self.finish(id, Ok(sent)).await?;
            }
            // Results of an earlier connection's failed attempts say nothing: the send went out
            // again on this one.
            Err(_) if !current => {}
            // Refused for now: every send waits, then this one goes out again before any later
            // one (it is the oldest not in flight), one at a time for a while.
            Err(ClientError::Server {
                code: ErrorCode::RATE_LIMITED,
                retry_after_ms,
                ..
            }) => {
                self.in_flight.remove(&id);
                let wait = Duration::from_millis(u64::from(retry_after_ms));
                self.pacer.refused(Instant::now(), wait);
            }
            Err(error) if is_transient(&error) => {
                self.in_flight.remove(&id);
                self.pacer.refused(Instant::now(), TRANSIENT_RETRY);
            }
            Err(error @ ClientError::Server { .. })
            | Err(error @ ClientError::Encode(_))
            | Err(error @ ClientError::UnexpectedReply { .. }) => {
                self.in_flight.remove(&id);
                self.finish(id, Err(error)).await?;
            }
            Err(ClientError::Timeout) => {
                // The connection may be slow rather than gone: ask again, the key keeps it once.
                // (A dead connection is found by the Ping that gets no answer.)
                self.in_flight.remove(&id);
            }
            // The connection failed: the send goes out again after reconnecting.
            Err(_) => {
                self.in_flight.remove(&id);
            }
        }
        Ok(())
    }

    /// A send is done: out of the outbox and the storage, its waiter and the app told.
    async fn finish(
        &mut self,
        id: ClientMsgId,
        result: Result<Sent, ClientError>,
    ) -> Result<(), Stop> {
        let before = self.outbox.len();
        self.outbox.retain(|s| s.client_msg_id != id);
        if self.outbox.len() == before {
            // Already finished (a late duplicate answer).
            return Ok(());
        }
        self.shared
            .storage
            .remove_outbox(&id)
            .map_err(|_| Stop::Fatal)?;
        self.shared.outbox_len.fetch_sub(1, Ordering::AcqRel);
        let waiter = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let event = match &result {
            Ok(sent) => SessionEvent::Sent(sent.clone()),
            Err(e) => SessionEvent::SendFailed {
                client_msg_id: id,
                error: copy_error(e),
            },
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
        self.events.send(event).await.map_err(|_| Stop::Fatal)
    }
}

/// The wait after a `GoAway`: the delay the server named plus a random part of up to as much
/// again (up to a second when it named none), so clients do not all come back at once (§2.9).
fn go_away_wait(after_ms: u32, rng: &SystemRandom) -> Duration {
    let after = Duration::from_millis(u64::from(after_ms));
    let spread = if after.is_zero() {
        Duration::from_secs(1)
    } else {
        after
    };
    after + spread.mul_f64(random_fraction(rng))
}

/// Whether an error from the server means the device may not go on.
fn is_logged_out(error: &ClientError) -> bool {
    matches!(
        error.server_code(),
        Some(ErrorCode::BAD_CREDENTIALS | ErrorCode::USERNAME_TAKEN)
    ) || matches!(error, ClientError::Usage { .. })
}

/// Server errors worth retrying on the same or the next connection.
fn is_transient(error: &ClientError) -> bool {
    matches!(
        error.server_code(),
        Some(ErrorCode::RATE_LIMITED | ErrorCode::UNAVAILABLE | ErrorCode::INTERNAL)
    )
}

/// A copy of an error for the event (the waiter gets the original).
fn copy_error(error: &ClientError) -> ClientError {
    match error {
        ClientError::Server {
            code,
            message,
            retry_after_ms,
        } => ClientError::Server {
            code: *code,
            message: message.clone(),
            retry_after_ms: *retry_after_ms,
        },
        other => ClientError::Io(std::io::Error::other(other.to_string())),
    }
}

/// The wait before reconnect attempt `failures` (1, 2, ...): `min` doubling up to `max`, then a
/// random point in its upper half, so clients cut off together do not come back together.
fn backoff(min: Duration, max: Duration, failures: u32, rng: &SystemRandom) -> Duration {
    let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let ceiling = doubled.min(max).max(min);
    ceiling.mul_f64(0.5 + random_fraction(rng) / 2.0)
}

/// A random number in `[0, 1]` (1 when the system has no randomness to give).
fn random_fraction(rng: &SystemRandom) -> f64 {
    let mut random = [0u8; 4];
    match rng.fill(&mut random) {
        Ok(()) => f64::from(u32::from_be_bytes(random)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the back-off doubles from the minimum, stays within the maximum, and keeps to the
    // upper half of each step.
    #[test]
    fn backoff_doubles_within_bounds() {
        let rng = SystemRandom::new();
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for failures in 1..40 {
            let step = min.saturating_mul(1 << (failures - 1).min(20)).min(max);
            for _ in 0..20 {
                let wait = backoff(min, max, failures, &rng);
                assert!(wait >= step / 2 && wait <= step, "{failures}: {wait:?}");
            }
        }
        assert!(backoff(min, max, 30, &rng) >= max / 2);
    }

    // A session can be shared between tasks.
    #[test]
    fn session_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Session>();
        assert_send_sync::<SessionEvent>();
    }
}
