//! The fleet: many connected, live users that send to each other. W1 (one-to-one) and W2 (groups)
//! both run on it, in closed loop (a window of unanswered sends per connection) or open loop (a
//! fixed offered rate, spread over the connections by a few generator tasks).
//!
//! Every `Send` carries its send time in its `client_msg_id` (bytes 0..8, nanoseconds on this
//! process's clock), so the `Sent` reply gives the ack latency and the `Message` update at each
//! recipient gives the end-to-end latency, with no per-message bookkeeping.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use tern_protocol::frames::{Ack, CreateGroup, OpenDirect, Send};
use tern_protocol::{Body, ErrorCode, Frame, FrameDecoder, UpdateKind};
use tokio::io::AsyncReadExt;

use crate::conn::{writer, Outbox, SetupConn};
use crate::stats::{now_ns, per_sec, Latency, SharedHistogram};
use crate::target::{round_ms, scrape_metrics, CpuSample};
use crate::transport::ReadHalf;

/// CPU time used so far and the server's metrics, at one instant.
type Resources = (CpuSample, Option<BTreeMap<String, f64>>);

/// What the fleet sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Random direct conversations of the sender's.
    Direct,
    /// The sender's group of the given slot (see [`Fleet::group_sizes`]).
    Group(usize),
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Direct => 0,
            Mode::Group(i) => 1 + i as u8,
        }
    }
}

/// Counters and histograms every connection of the fleet records into.
#[derive(Debug)]
struct Shared {
    mode: AtomicU8,
    closed_loop: AtomicBool,
    sending: AtomicBool,
    deadline_ns: AtomicU64,
    body: String,
    ack_every: u64,
    max_in_flight: u32,
    issued: AtomicU64,
    skipped: AtomicU64,
    sent_ok: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    delivered: AtomicU64,
    own_echoes: AtomicU64,
    other_updates: AtomicU64,
    closed_conns: AtomicU64,
    e2e: SharedHistogram,
    ack: SharedHistogram,
}

#[derive(Debug)]
struct Member {
    idx: u32,
    user_id: u64,
    out: Arc<Outbox>,
    direct: Vec<u64>,
    groups: Vec<u64>,
    counter: AtomicU32,
    in_flight: AtomicU32,
}

/// One user of the fleet, for workloads that need its credentials.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    /// The username.
    pub(crate) username: String,
    /// The user id.
    pub(crate) user_id: u64,
    /// The device's resume token.
    pub(crate) token: [u8; 32],
}

/// Connected, live users.
#[derive(Debug)]
pub(crate) struct Fleet {
    members: Vec<Arc<Member>>,
    shared: Arc<Shared>,
    /// The users, in order.
    pub(crate) accounts: Vec<Account>,
    /// The group size of each group slot.
    pub(crate) group_sizes: Vec<usize>,
    /// The server's process, for its CPU time.
    pub(crate) server_pid: Option<u32>,
    /// The server's metrics address, for its counters.
    pub(crate) server_metrics: Option<SocketAddr>,
}

/// Fleet options.
#[derive(Clone, Debug)]
pub(crate) struct FleetOptions {
    /// Users (one connection each).
    pub(crate) users: usize,
    /// Direct conversations each user opens (each user also gets those others open with it).
    pub(crate) peers: usize,
    /// Group sizes; for each, the users are split into disjoint groups of that size.
    pub(crate) group_sizes: Vec<usize>,
    /// Message body size in bytes.
    pub(crate) body_bytes: usize,
    /// Acknowledge live updates every this many (0: never).
    pub(crate) ack_every: u64,
    /// Parallel setup connections.
    pub(crate) setup_concurrency: usize,
    /// Connect over WebSocket (to the WebSocket listener's address) instead of TCP.
    pub(crate) websocket: bool,
    /// Username prefix, unique per run.
    pub(crate) prefix: String,
}

/// The outcome of one load phase.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct PhaseResult {
    /// What ran.
    pub(crate) name: String,
    /// `closed` or `open`.
    pub(crate) loop_kind: String,
    /// Offered sends per second (open loop).
    pub(crate) offered_rate: Option<f64>,
    /// Unanswered sends per connection (closed loop).
    pub(crate) window: Option<u32>,
    /// Connections sending.
    pub(crate) senders: usize,
    /// Deliveries each message makes (recipients other than the sender).
    pub(crate) fanout: u64,
    /// Seconds of sending.
    pub(crate) duration_s: f64,
    /// Sends written.
    pub(crate) sends_issued: u64,
    /// Sends not written because their connection already had the most unanswered ones.
    pub(crate) sends_skipped: u64,
    /// `Sent` replies.
    pub(crate) sent: u64,
    /// `Error` replies.
    pub(crate) errors: u64,
    /// Of those, `RATE_LIMITED`.
    pub(crate) rate_limited: u64,
    /// Message updates at recipients (the sender's own echo not counted).
    pub(crate) delivered: u64,
    /// `sent × fanout`.
    pub(crate) expected_deliveries: u64,
    /// Expected deliveries that never arrived.
    pub(crate) lost: u64,
    /// Sends answered per second during the sending window.
    pub(crate) sent_per_s: f64,
    /// Deliveries per second during the sending window.
    pub(crate) delivered_per_s: f64,
    /// Send to delivery at the recipient.
    pub(crate) e2e_latency: Latency,
    /// Send to `Sent`.
    pub(crate) ack_latency: Latency,
    /// CPU seconds the server used during the phase (sending and draining).
    pub(crate) server_cpu_s: Option<f64>,
    /// CPU seconds this process used during the phase.
    pub(crate) bench_cpu_s: Option<f64>,
    /// CPU seconds the whole machine spent busy during the phase.
    pub(crate) machine_busy_cpu_s: Option<f64>,
    /// Of those, what neither the server nor this process used (other processes, interrupts).
    pub(crate) other_cpu_s: Option<f64>,
    /// Server CPU microseconds per delivery.
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    /// The same, by the server's thread names (trailing numbers left out: `ternd-core`,
    /// `ternd-commit`, `rocksdb:high` for memtable flushes, `rocksdb:low` for compactions).
    pub(crate) server_cpu_us_per_delivery_by_thread: Option<BTreeMap<String, f64>>,
    /// The change of each server metric over the phase (summed over labels).
    pub(crate) server_metrics_delta: Option<BTreeMap<String, f64>>,
    /// Connections that closed during the phase.
    pub(crate) connections_closed: u64,
    /// Every send answered and every delivery arrived.
    pub(crate) complete: bool,
}

fn stamp_of(cmid: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&cmid[..8]);
    u64::from_be_bytes(b)
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

impl Member {
    fn target(&self, mode: u8, rnd: u64) -> u64 {
        match mode {
            0 if !self.direct.is_empty() => self.direct[(rnd % self.direct.len() as u64) as usize],
            0 => 0,
            g => self.groups.get(g as usize - 1).copied().unwrap_or(0),
        }
    }

    /// Queues one `Send` stamped `stamp`; false when the member has nothing to send to or too
    /// many sends unanswered.
    fn send(&self, sh: &Shared, stamp: u64, rnd: u64) -> bool {
        let conversation_id = self.target(sh.mode.load(Ordering::Relaxed), rnd);
        if conversation_id == 0 || self.out.is_closed() {
            return false;
        }
        if self.in_flight.load(Ordering::Relaxed) >= sh.max_in_flight {
            sh.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut client_msg_id = [0u8; 16];
        client_msg_id[..8].copy_from_slice(&stamp.to_be_bytes());
        client_msg_id[8..12].copy_from_slice(&self.idx.to_be_bytes());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        client_msg_id[12..].copy_from_slice(&n.to_be_bytes());
        self.out.push(&Frame::new(
            self.out.request_id(),
            Send {
                conversation_id,
                client_msg_id,
                body: sh.body.clone(),
                attachments: Vec::new(),
            },
        ));
        sh.issued.fetch_add(1, Ordering::Relaxed);
        true
    }
}

async fn reader(m: Arc<Member>, sh: Arc<Shared>, mut r: ReadHalf, mut rbuf: BytesMut) {
    let decoder = FrameDecoder::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(m.idx) << 17 | 1);
    let mut max_seq = 0u64;
    let mut acked = 0u64;
    let key = m.idx as usize;
    'read: loop {
        loop {
            let frame = match decoder.decode(&mut rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let now = now_ns();
            match frame.body {
                Body::Sent(s) => {
                    m.in_flight.fetch_sub(1, Ordering::Relaxed);
                    sh.sent_ok.fetch_add(1, Ordering::Relaxed);
                    sh.ack
                        .record_ns(key, now.saturating_sub(stamp_of(&s.client_msg_id)));
                    if sh.closed_loop.load(Ordering::Relaxed)
                        && sh.sending.load(Ordering::Relaxed)
                        && now < sh.deadline_ns.load(Ordering::Relaxed)
                    {
                        m.send(&sh, now, xorshift(&mut rng));
                    }
                }
                Body::UpdateEvent(e) => {
                    max_seq = max_seq.max(e.update.user_seq);
                    match e.update.kind {
                        UpdateKind::Message(msg) if msg.sender != m.user_id => {
                            sh.delivered.fetch_add(1, Ordering::Relaxed);
                            sh.e2e
                                .record_ns(key, now.saturating_sub(stamp_of(&msg.client_msg_id)));
                        }
                        UpdateKind::Message(_) => {
                            sh.own_echoes.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            sh.other_updates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if sh.ack_every > 0 && max_seq - acked >= sh.ack_every {
                        acked = max_seq;
                        m.out
                            .push(&Frame::new(m.out.request_id(), Ack { up_to: max_seq }));
                    }
                }
                Body::Error(e) => {
                    // Only sends are in flight on a live fleet connection (acks succeed silently).
                    if frame.request_id != 0 {
                        m.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                    sh.errors.fetch_add(1, Ordering::Relaxed);
                    if e.code == ErrorCode::RATE_LIMITED {
                        sh.rate_limited.fetch_add(1, Ordering::Relaxed);
                    }
                    if e.code.closes_connection() {
                        eprintln!("connection {} closed by the server: {e:?}", m.idx);
                    }
                }
                _ => {}
            }
        }
        if rbuf.capacity() - rbuf.len() < 2048 {
            rbuf.reserve(32 * 1024);
        }
        match r.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sh.closed_conns.fetch_add(1, Ordering::Relaxed);
    m.out.close();
}

/// Runs `f` on every index in `0..n` with at most `concurrency` at a time.
pub(crate) async fn for_each_concurrent<F, Fut>(
    n: usize,
    concurrency: usize,
    f: F,
) -> io::Result<()>
where
    F: Fn(usize) -> Fut + std::marker::Send + Sync + 'static,
    Fut: std::future::Future<Output = io::Result<()>> + std::marker::Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut tasks: Vec<tokio::task::JoinHandle<io::Result<()>>> = Vec::new();
    for _ in 0..concurrency.max(1).min(n.max(1)) {
        let next = next.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                f(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(io::Error::other)??;
    }
    Ok(())
}

fn take_slot<T>(slots: &Mutex<Vec<Option<T>>>, i: usize) -> io::Result<T> {
    slots.lock().unwrap_or_else(|e| e.into_inner())[i]
        .take()
        .ok_or_else(|| io::Error::other("setup slot empty"))
}

fn put_slot<T>(slots: &Mutex<Vec<Option<T>>>, i: usize, v: T) {
    slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(v);
}

impl Fleet {
    /// Registers `users` users, opens their conversations and groups, syncs them live and starts
    /// their readers and writers.
    pub(crate) async fn setup(addr: SocketAddr, o: &FleetOptions) -> io::Result<Fleet> {
        let n = o.users;
        let conns: Arc<Mutex<Vec<Option<SetupConn>>>> =
            Arc::new(Mutex::new((0..n).map(|_| None).collect()));
        let accounts: Arc<Mutex<Vec<Option<Account>>>> =
            Arc::new(Mutex::new((0..n).map(|_| None).collect()));
        {
            let (conns, accounts, prefix) = (conns.clone(), accounts.clone(), o.prefix.clone());
            let websocket = o.websocket;
            for_each_concurrent(n, o.setup_concurrency, move |i| {
                let (conns, accounts) = (conns.clone(), accounts.clone());
                let username = format!("{prefix}{i}");
                async move {
                    let (mut c, _) = SetupConn::open_on(addr, None, websocket).await?;
                    let auth = c.register(&username).await?;
                    let token = auth.token.unwrap_or_default();
                    put_slot(&conns, i, c);
                    put_slot(
                        &accounts,
                        i,
                        Account {
                            username,
                            user_id: auth.user_id,
                            token,
                        },
                    );
                    Ok(())
                }
            })
            .await?;
        }
        let accounts: Vec<Account> = accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .map(|a| {
                a.take()
                    .ok_or_else(|| io::Error::other("a user was not set up"))
            })
            .collect::<io::Result<_>>()?;
        let ids: Arc<Vec<u64>> = Arc::new(accounts.iter().map(|a| a.user_id).collect());

        // Direct conversations: user i opens one with each of the next `peers` users.
        let direct: Arc<Mutex<HashMap<usize, Vec<u64>>>> = Arc::default();
        {
            let (conns, ids, direct, peers) = (conns.clone(), ids.clone(), direct.clone(), o.peers);
            for_each_concurrent(n, o.setup_concurrency, move |i| {
                let (conns, ids, direct) = (conns.clone(), ids.clone(), direct.clone());
                async move {
                    let mut c = take_slot(&conns, i)?;
                    for k in 1..=peers.min(n.saturating_sub(1)) {
                        let j = (i + k) % n;
                        let reply = c
                            .rpc(OpenDirect {
                                user_id: ids[j],
                                encrypted: false,
                            })
                            .await?;
                        let Body::Conversation(conv) = reply else {
                            return Err(io::Error::other(format!("OpenDirect: {reply:?}")));
                        };
                        let cid = conv.conversation.conversation_id;
                        let mut d = direct.lock().unwrap_or_else(|e| e.into_inner());
                        d.entry(i).or_default().push(cid);
                        d.entry(j).or_default().push(cid);
                    }
                    put_slot(&conns, i, c);
                    Ok(())
                }
            })
            .await?;
        }

        // Groups: for each size, disjoint groups of consecutive users; the first one creates it.
        let mut groups: Vec<Vec<u64>> = vec![vec![0; o.group_sizes.len()]; n];
        for (slot, &size) in o.group_sizes.iter().enumerate() {
            if size < 2 || size > n {
                continue;
            }
            let created: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
            let count = n / size;
            {
                let (conns, ids, created) = (conns.clone(), ids.clone(), created.clone());
                for_each_concurrent(count, o.setup_concurrency, move |g| {
                    let (conns, ids, created) = (conns.clone(), ids.clone(), created.clone());
                    async move {
                        let first = g * size;
                        let mut c = take_slot(&conns, first)?;
                        let reply = c
                            .rpc(CreateGroup {
                                name: format!("bench {size} #{g}"),
                                members: ids[first + 1..first + size].to_vec(),
                                encrypted: false,
                            })
                            .await?;
                        let Body::Conversation(conv) = reply else {
                            return Err(io::Error::other(format!("CreateGroup: {reply:?}")));
                        };
                        put_slot(&conns, first, c);
                        created
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((g, conv.conversation.conversation_id));
                        Ok(())
                    }
                })
                .await?;
            }
            for &(g, cid) in created.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                for member in groups.iter_mut().skip(g * size).take(size) {
                    member[slot] = cid;
                }
            }
        }

        // Live: sync every connection to the end of its log.
        {
            let conns = conns.clone();
            for_each_concurrent(n, o.setup_concurrency, move |i| {
                let conns = conns.clone();
                async move {
                    let mut c = take_slot(&conns, i)?;
                    c.sync_all(0).await?;
                    put_slot(&conns, i, c);
                    Ok(())
                }
            })
            .await?;
        }

        let shared = Arc::new(Shared {
            mode: AtomicU8::new(0),
            closed_loop: AtomicBool::new(false),
            sending: AtomicBool::new(false),
            deadline_ns: AtomicU64::new(0),
            body: "x".repeat(o.body_bytes.max(1)),
            ack_every: o.ack_every,
            max_in_flight: 240,
            issued: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            sent_ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            own_echoes: AtomicU64::new(0),
            other_updates: AtomicU64::new(0),
            closed_conns: AtomicU64::new(0),
            e2e: SharedHistogram::new(),
            ack: SharedHistogram::new(),
        });
        let mut direct = std::mem::take(&mut *direct.lock().unwrap_or_else(|e| e.into_inner()));
        let mut members = Vec::with_capacity(n);
        for (i, account) in accounts.iter().enumerate() {
            let c = take_slot(&conns, i)?;
            let out = Outbox::new(c.next_request_id());
            let (r, w) = c.stream.into_split();
            let m = Arc::new(Member {
                idx: i as u32,
                user_id: account.user_id,
                out: out.clone(),
                direct: direct.remove(&i).unwrap_or_default(),
                groups: std::mem::take(&mut groups[i]),
                counter: AtomicU32::new(0),
                in_flight: AtomicU32::new(0),
            });
            tokio::spawn(writer(out, w));
            tokio::spawn(reader(m.clone(), shared.clone(), r, c.rbuf));
            members.push(m);
        }
        Ok(Fleet {
            members,
            shared,
            accounts,
            group_sizes: o.group_sizes.clone(),
            server_pid: None,
            server_metrics: None,
        })
    }

    /// Closes every connection.
    pub(crate) async fn shutdown(self) {
        for m in &self.members {
            m.out.close();
        }
        let deadline = now_ns() + 5_000_000_000;
        while self.shared.closed_conns.load(Ordering::Relaxed) < self.members.len() as u64
            && now_ns() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn fanout(&self, mode: Mode) -> u64 {
        match mode {
            Mode::Direct => 1,
            Mode::Group(slot) => self.group_sizes[slot] as u64 - 1,
        }
    }

    fn senders(&self, mode: Mode) -> Vec<Arc<Member>> {
        let code = mode.code();
        self.members
            .iter()
            .filter(|m| m.target(code, 0) != 0)
            .cloned()
            .collect()
    }

    /// Closed loop: every sender keeps `window` sends unanswered for `duration`.
    pub(crate) async fn closed_loop(
        &self,
        name: &str,
        mode: Mode,
        window: u32,
        duration: Duration,
        drain: Duration,
        progress: bool,
    ) -> PhaseResult {
        let sh = &self.shared;
        let (senders, res_before, before) = self.begin(mode, true).await;
        let start = now_ns();
        sh.deadline_ns
            .store(start + duration.as_nanos() as u64, Ordering::Relaxed);
        sh.sending.store(true, Ordering::Relaxed);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..window {
            for m in &senders {
                m.send(sh, now_ns(), xorshift(&mut rng));
            }
        }
        self.watch(name, start, duration, progress).await;
        sh.sending.store(false, Ordering::Relaxed);
        sh.closed_loop.store(false, Ordering::Relaxed);
        let mut r = self
            .end(name, mode, (before, res_before), start, drain)
            .await;
        r.loop_kind = "closed".into();
        r.window = Some(window);
        r.senders = senders.len();
        r
    }

    /// Starts a phase: the senders of `mode`, and the counters and resources to measure from.
    async fn begin(
        &self,
        mode: Mode,
        closed_loop: bool,
    ) -> (Vec<Arc<Member>>, Resources, [u64; 8]) {
        let senders = self.senders(mode);
        let res_before = self.resources().await;
        let before = self.snapshot();
        self.shared.mode.store(mode.code(), Ordering::Relaxed);
        self.shared
            .closed_loop
            .store(closed_loop, Ordering::Relaxed);
        (senders, res_before, before)
    }

    /// Ends a phase: waits for what is in flight and measures against `(counters, resources)`.
    async fn end(
        &self,
        name: &str,
        mode: Mode,
        (before, res_before): ([u64; 8], Resources),
        start: u64,
        drain: Duration,
    ) -> PhaseResult {
        let mut r = self.finish(name, mode, before, start, drain).await;
        self.add_resources(&mut r, res_before).await;
        r
    }

    /// Open loop: `rate` sends per second in total for `duration`, spread evenly over the senders
    /// by `lanes` generator tasks. A send is stamped with the time it was due when its generator
    /// fell more than 2 ms behind, so a stalled server shows up in the latencies instead of
    /// slowing the offered load (no coordinated omission).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open_loop(
        &self,
        name: &str,
        mode: Mode,
        rate: f64,
        duration: Duration,
        drain: Duration,
        lanes: usize,
        progress: bool,
    ) -> PhaseResult {
        let sh = &self.shared;
        let (senders, res_before, before) = self.begin(mode, false).await;
        sh.sending.store(true, Ordering::Relaxed);
        let start = now_ns();
        let lanes = lanes.clamp(1, senders.len().max(1));
        let lane_rate = rate / lanes as f64;
        let dur_ns = duration.as_nanos() as u64;
        let mut tasks = Vec::new();
        for lane in 0..lanes {
            let mine: Vec<Arc<Member>> =
                senders.iter().skip(lane).step_by(lanes).cloned().collect();
            let sh = sh.clone();
            tasks.push(tokio::spawn(async move {
                if mine.is_empty() {
                    return;
                }
                let total = (lane_rate * dur_ns as f64 / 1e9) as u64;
                let mut issued = 0u64;
                let mut rr = 0usize;
                let mut rng = 0x853C_49E6_748F_EA9Bu64 ^ (lane as u64 + 1);
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while issued < total {
                    tick.tick().await;
                    let now = now_ns();
                    let elapsed = now.saturating_sub(start);
                    let due = ((lane_rate * elapsed as f64 / 1e9) as u64).min(total);
                    while issued < due {
                        let intended = start + ((issued + 1) as f64 * 1e9 / lane_rate) as u64;
                        let stamp = if now.saturating_sub(intended) > 2_000_000 {
                            intended
                        } else {
                            now
                        };
                        mine[rr % mine.len()].send(&sh, stamp, xorshift(&mut rng));
                        rr += 1;
                        issued += 1;
                    }
                }
            }));
        }
        let watch = self.watch(name, start, duration, progress);
        let ((), ()) = tokio::join!(watch, async {
            for t in tasks {
                let _ = t.await;
            }
        });
        sh.sending.store(false, Ordering::Relaxed);
        let mut r = self
            .end(name, mode, (before, res_before), start, drain)
            .await;
        r.loop_kind = "open".into();
        r.offered_rate = Some(rate.round());
        r.senders = senders.len();
        r
    }

    async fn resources(&self) -> Resources {
        let metrics = match self.server_metrics {
            Some(a) => scrape_metrics(a).await,
            None => None,
        };
        (CpuSample::now(self.server_pid), metrics)
    }

    fn snapshot(&self) -> [u64; 8] {
        let sh = &self.shared;
        let _ = sh.e2e.take();
        let _ = sh.ack.take();
        [
            sh.issued.load(Ordering::Relaxed),
            sh.sent_ok.load(Ordering::Relaxed),
            sh.errors.load(Ordering::Relaxed),
            sh.rate_limited.load(Ordering::Relaxed),
            sh.delivered.load(Ordering::Relaxed),
            sh.closed_conns.load(Ordering::Relaxed),
            sh.skipped.load(Ordering::Relaxed),
            0,
        ]
    }

    async fn add_resources(&self, r: &mut PhaseResult, before: Resources) {
        let after = self.resources().await;
        let used = after.0.since(&before.0);
        if let Some(server) = used.server {
            r.server_cpu_s = Some(round_ms(server));
            if r.delivered > 0 {
                r.server_cpu_us_per_delivery = Some(round_ms(server * 1e6 / r.delivered as f64));
            }
        }
        if let (Some(threads), true) = (&used.server_threads, r.delivered > 0) {
            let per_delivery = |seconds: f64| round_ms(seconds * 1e6 / r.delivered as f64);
            r.server_cpu_us_per_delivery_by_thread = Some(
                threads
                    .iter()
                    .map(|(name, &seconds)| (name.clone(), per_delivery(seconds)))
                    .collect(),
            );
        }
        r.bench_cpu_s = used.bench.map(round_ms);
        if let Some(busy) = used.busy {
            r.machine_busy_cpu_s = Some(round_ms(busy));
            r.other_cpu_s = Some(round_ms(
                (busy - r.server_cpu_s.unwrap_or(0.0) - r.bench_cpu_s.unwrap_or(0.0)).max(0.0),
            ));
        }
        if let (Some(a), Some(b)) = (before.1, after.1) {
            r.server_metrics_delta = Some(
                b.iter()
                    .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
                    .collect(),
            );
        }
    }

    async fn watch(&self, name: &str, start: u64, duration: Duration, progress: bool) {
        let sh = &self.shared;
        let end = start + duration.as_nanos() as u64;
        let (mut last_t, mut last_s, mut last_d) = (
            start,
            sh.sent_ok.load(Ordering::Relaxed),
            sh.delivered.load(Ordering::Relaxed),
        );
        loop {
            let now = now_ns();
            if now >= end {
                return;
            }
            let step = (end - now).min(1_000_000_000);
            tokio::time::sleep(Duration::from_nanos(step)).await;
            if progress {
                let now = now_ns();
                let (s, d) = (
                    sh.sent_ok.load(Ordering::Relaxed),
                    sh.delivered.load(Ordering::Relaxed),
                );
                let secs = (now - last_t) as f64 / 1e9;
                eprintln!(
                    "  [{name}] {:5.1}s  sent {:>9.0}/s  delivered {:>9.0}/s  errors {}",
                    (now - start) as f64 / 1e9,
                    per_sec(s - last_s, secs),
                    per_sec(d - last_d, secs),
                    sh.errors.load(Ordering::Relaxed),
                );
                (last_t, last_s, last_d) = (now, s, d);
            }
        }
    }

    async fn finish(
        &self,
        name: &str,
        mode: Mode,
        before: [u64; 8],
        start: u64,
        drain: Duration,
    ) -> PhaseResult {
        let sh = &self.shared;
        let end = now_ns();
        let secs = (end - start) as f64 / 1e9;
        let sent_at_end = sh.sent_ok.load(Ordering::Relaxed) - before[1];
        let delivered_at_end = sh.delivered.load(Ordering::Relaxed) - before[4];
        let fanout = self.fanout(mode);
        let drain_end = end + drain.as_nanos() as u64;
        loop {
            let issued = sh.issued.load(Ordering::Relaxed) - before[0];
            let answered = sh.sent_ok.load(Ordering::Relaxed) - before[1]
                + sh.errors.load(Ordering::Relaxed)
                - before[2];
            let sent = sh.sent_ok.load(Ordering::Relaxed) - before[1];
            let delivered = sh.delivered.load(Ordering::Relaxed) - before[4];
            if (answered >= issued && delivered >= sent * fanout) || now_ns() >= drain_end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let issued = sh.issued.load(Ordering::Relaxed) - before[0];
        let sent = sh.sent_ok.load(Ordering::Relaxed) - before[1];
        let errors = sh.errors.load(Ordering::Relaxed) - before[2];
        let delivered = sh.delivered.load(Ordering::Relaxed) - before[4];
        let expected = sent * fanout;
        let lost = expected.saturating_sub(delivered);
        PhaseResult {
            name: name.into(),
            fanout,
            duration_s: round_ms(secs),
            sends_issued: issued,
            sends_skipped: sh.skipped.load(Ordering::Relaxed) - before[6],
            sent,
            errors,
            rate_limited: sh.rate_limited.load(Ordering::Relaxed) - before[3],
            delivered,
            expected_deliveries: expected,
            lost,
            sent_per_s: per_sec(sent_at_end, secs),
            delivered_per_s: per_sec(delivered_at_end, secs),
            e2e_latency: Latency::of(&sh.e2e.take()),
            ack_latency: Latency::of(&sh.ack.take()),
            connections_closed: sh.closed_conns.load(Ordering::Relaxed) - before[5],
            complete: sent + errors == issued && lost == 0 && errors == 0,
            ..PhaseResult::default()
        }
    }
}
