//! The deterministic simulator: every core of a server in one thread, driven by a seeded
//! scheduler, with a virtual clock, in-memory storage that fails on purpose, and crashes.
//!
//! A run builds a world of `cores` shards over one [`MemBackend`] (behind a [`FaultyBackend`]),
//! registers a few users with one or two devices each, opens direct conversations and groups
//! between them, then takes a few thousand steps. Each step the seeded [`Rng`] picks one thing to
//! happen:
//!
//! - the committer answers a core's oldest batch (durable, failed, or refused for a full disk;
//!   the runtime's committer writes several cores' batches at once, which is one of these orders);
//! - a reader answers one of the reads the cores handed out (`Sync` and `History` pages,
//!   `Download`s), any one of them, from what is durable by then, or fails it (the cores hand
//!   them out while their memory-only reads miss, which steps turn on and off);
//! - one piece of mail moves from one core to another (FIFO per pair of cores, as the real
//!   mailboxes are, but any pair may go first, so mail is delayed and reordered across pairs;
//!   only mail a core sent itself goes before anything that comes after it, as in the runtime);
//! - a core ends its loop turn (so turns batch any number of requests);
//! - a device sends a message (new, or again under the same `client_msg_id`), syncs, acks, marks
//!   read, reads a page of history, renames a group, removes a member from a group it owns or adds one back, or drops its
//!   connection and resumes;
//! - the clock moves on and every core ticks (fan-out retries);
//! - the disk fills or frees, or the whole server crashes and restarts from what is durable.
//!
//! Then the faults stop, the world runs until quiet, every device catches up, and [`World::check`]
//! asserts the delivery invariants: every acknowledged message is in every member's log exactly
//! once, and in no log of a user who was not a member when it was sent (membership is known from
//! the changes' requests and replies: a message whose send overlaps a change of that user's
//! membership may go either way, but never twice); `seq` and `user_seq` are gapless; no request on a live connection is left unanswered;
//! watermarks only move forward; no device is handed an update or a message twice, or misses one;
//! a history page holds consecutive messages, each as it is durable.
//!
//! The same seed replays the same run: `TERN_SIM_SEED=N cargo test -p tern-server --lib sim::`
//! runs one seed, `TERN_SIM_SEEDS=N` runs N seeds from 1 (CI runs a few hundred).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tern_protocol::frames::{
    self, Ack, AddMembers, CreateGroup, MarkRead, OpenDirect, RemoveMember, RenameGroup, Send, Sync,
};
use tern_protocol::types::{ConversationKind, ReceiptKind, Role};
use tern_protocol::{Body, ErrorCode, Frame, Update, UpdateKind};

use crate::config::Config;
use crate::core::accounts::token_hash;
use crate::core::mail::{AdoptAuth, ConnRef, Mail};
use crate::core::reads::{Read, ReadState, READS_IN_FLIGHT_MAX, READ_ON_CORE_ENTRIES_MAX};
use crate::core::{name_owner, owner, Commit, ConnId, Output, Shard, TICK_MS};
use crate::metrics::Metrics;
use crate::store::backend::{Backend, Faults, FaultyBackend, MemBackend};
use crate::store::records::{UpdateRecord, UserRecord};
use crate::store::{Store, StoreError, RANGE_READ_MAX};

/// A small, fast, seedable generator (SplitMix64): enough for scheduling, not for secrets.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True `per_mille` times in a thousand.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// The shape of a run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) cores: usize,
    pub(crate) users: usize,
    pub(crate) steps: usize,
    /// Commits that fail, per thousand.
    pub(crate) commit_failures_per_mille: u64,
    /// Steps that crash the server, per hundred thousand.
    pub(crate) crashes_per_100k: u64,
    /// Steps that fill (or free) the disk, per hundred thousand.
    pub(crate) disk_full_per_100k: u64,
    /// Reads that fail, per thousand.
    pub(crate) read_failures_per_mille: u64,
    /// Steps that turn reads from memory on (or off), per hundred thousand: while on, the cores
    /// read what they need from memory themselves; while off, readers do.
    pub(crate) memory_flips_per_100k: u64,
    /// Every core reads on its own thread, as with no readers (else readers run the reads).
    pub(crate) reads_on_core: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cores: 3,
            users: 5,
            steps: 3000,
            commit_failures_per_mille: 20,
            crashes_per_100k: 30,
            disk_full_per_100k: 40,
            read_failures_per_mille: 20,
            memory_flips_per_100k: 100,
            reads_on_core: false,
        }
    }
}

/// What a device asked and has not been answered yet.
#[derive(Debug, Clone)]
enum Asked {
    Auth,
    Send {
        conversation_id: u64,
        cmid: [u8; 16],
    },
    Sync,
    /// A page of a conversation's history.
    History(u64),
    /// A membership change, by its index in [`World::changes`].
    Members(usize),
    Other,
}

/// A group as its owner's app knows it.
#[derive(Debug)]
struct Group {
    conversation_id: u64,
    /// The owner (a user index), who makes every membership change.
    owner: usize,
    /// The other users ever in it.
    others: Vec<usize>,
    /// Those of them removed by the last change answered `Ok`.
    out: HashSet<usize>,
    /// A change is under way.
    busy: bool,
    /// Users whose last change's outcome is unknown (its reply was lost, or an error): the next
    /// change adds them, which settles it (adding a member is a no-op).
    unknown: HashSet<usize>,
}

/// A membership change, with the steps it was asked and answered at.
#[derive(Debug)]
struct Change {
    conversation_id: u64,
    user: usize,
    added: bool,
    asked: u64,
    /// `Some` once answered `Ok`.
    answered: Option<u64>,
    /// Answered with an error or never: it may or may not have happened.
    uncertain: bool,
}

/// One device of a user, as a client library would be, with what it has seen.
#[derive(Debug, Default)]
struct Device {
    user: usize,
    device_id: u32,
    token: [u8; 32],
    /// Its connection: the core and the connection's id there.
    conn: Option<(usize, ConnId)>,
    authenticated: bool,
    next_request: u32,
    asked: HashMap<u32, Asked>,
    /// The highest `user_seq` processed.
    cursor: u64,
    /// Whether a sync is under way on this connection.
    syncing: bool,
    /// Whether the connection is live: a page with `has_more = false` came.
    live: bool,
    /// Messages handed to this device, by (conversation, seq).
    messages: HashSet<(u64, u64)>,
    /// Every message update handed to this device: (user_seq, (conversation, seq)).
    slots: Vec<(u64, Shown)>,
    /// Sends not yet acknowledged: (conversation, idempotency key).
    outbox: Vec<(u64, [u8; 16])>,
    /// The newest watermark seen, by (conversation, user, kind).
    watermarks: HashMap<(u64, u64, u8), u64>,
}

/// What a device was shown under a `user_seq`, to hold against the log at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Message(u64, u64),
    /// (conversation, user, kind, up to seq)
    Receipt(u64, u64, u8, u64),
    Skipped,
    /// Any other kind.
    Other,
}

impl Shown {
    /// Whether the log's entry at the same `user_seq` says the same (a `Skipped` there stands in
    /// for whatever a crash lost).
    fn agrees(self, logged: Option<&UpdateRecord>) -> bool {
        match (self, logged) {
            (_, Some(UpdateRecord::Skipped)) => true,
            (
                Shown::Message(c, s),
                Some(UpdateRecord::Message {
                    conversation_id,
                    seq,
                    ..
                }),
            ) => c == *conversation_id && s == *seq,
            (
                Shown::Receipt(c, u, k, up_to),
                Some(UpdateRecord::Receipt {
                    conversation_id,
                    user_id,
                    kind,
                    up_to_seq,
                    ..
                }),
            ) => c == *conversation_id && u == *user_id && k == *kind && up_to == *up_to_seq,
            (
                Shown::Other,
                Some(
                    UpdateRecord::GroupCreated { .. }
                    | UpdateRecord::MembersAdded { .. }
                    | UpdateRecord::MemberRemoved { .. }
                    | UpdateRecord::GroupRenamed { .. }
                    | UpdateRecord::RoleChanged { .. }
                    | UpdateRecord::DeviceListChanged { .. },
                ),
            ) => true,
            _ => false,
        }
    }
}

/// A user of the simulated server.
#[derive(Debug)]
struct User {
    name: String,
    user_id: u64,
    conversations: Vec<u64>,
    /// The groups among them.
    groups: Vec<u64>,
}

/// A whole server in one thread.
pub(crate) struct World {
    options: Options,
    rng: Rng,
    now_ms: u64,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
    store: Store,
    shards: Vec<Shard>,
    /// Mail between cores, FIFO per (from, to).
    links: BTreeMap<(usize, usize), VecDeque<Mail>>,
    /// Batches each core handed to the committer, oldest first.
    commits: Vec<VecDeque<Commit>>,
    /// Per core: the committer refuses batches of this epoch and older.
    failed_epoch: Vec<Option<u64>>,
    /// Reads the cores handed to readers, by core, not yet answered; answered in any order.
    reads: Vec<(usize, Read)>,
    /// Settling leaves the reads out unanswered (tests that answer them late).
    hold_reads: bool,
    users: Vec<User>,
    devices: Vec<Device>,
    /// Registration connections waiting for `UserCreated`, by (core, conn): the device.
    registering: HashMap<(usize, ConnId), usize>,
    next_conn: ConnId,
    next_cmid: u64,
    /// Every acknowledged send: (conversation, seq) by idempotency key.
    acknowledged: HashMap<[u8; 16], (u64, u64)>,
    /// The step counter: when things were asked and answered.
    clock: u64,
    /// For each send, the step it was first asked at and the step its `Sent` came.
    send_steps: HashMap<[u8; 16], (u64, Option<u64>)>,
    /// Groups with their owners.
    groups: Vec<Group>,
    /// Membership changes asked for, in order.
    changes: Vec<Change>,
    /// Invariant violations seen during the run.
    violations: Vec<String>,
    /// Replies to other requests, by device, for tests that look at them.
    replies: Vec<(usize, Body)>,
    /// The cores' budget of messages kept for `Ack`s: a third of the seeds set it to a few
    /// entries, so that users lose what they kept and their `Ack`s read the log.
    unacked_budget: usize,
    /// What happened, counted, for the report.
    pub(crate) stats: Stats,
}

/// Counts of what a run did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) commits: u64,
    pub(crate) failed_commits: u64,
    pub(crate) crashes: u64,
    pub(crate) disk_full: u64,
    pub(crate) sends: u64,
    pub(crate) acknowledged: u64,
    pub(crate) reconnects: u64,
    /// Updates a device was handed again and ignored, as the spec lets the server do.
    pub(crate) repeats: u64,
    pub(crate) group_changes: u64,
    /// Members removed from a group and added back, answered `Ok`.
    pub(crate) removed: u64,
    pub(crate) added_back: u64,
    /// Updates devices were shown before they were durable.
    pub(crate) shown_early: u64,
    /// Messages a device was shown again under a new `user_seq`, after a crash lost the first.
    pub(crate) shown_again: u64,
    /// Syncs whose page said the device's cursor ran ahead of the log.
    pub(crate) cursors_reset: u64,
    /// `Skipped` updates in the logs at the end.
    pub(crate) skipped: u64,
    /// Messages recovery delivered again, and those it found in every recipient's log.
    pub(crate) recovery_resumed: u64,
    pub(crate) recovery_held: u64,
    /// Reads a reader answered, and those it failed on purpose.
    pub(crate) reads: u64,
    pub(crate) failed_reads: u64,
    /// History pages devices were answered.
    pub(crate) history_pages: u64,
    /// Times reads from memory were turned on or off.
    pub(crate) memory_flips: u64,
}

impl World {
    pub(crate) fn new(seed: u64, options: Options) -> World {
        World::with_config(seed, options, Config::default())
    }

    /// A world whose server runs with `config` (its cores and send limits set by the options).
    pub(crate) fn with_config(seed: u64, options: Options, config: Config) -> World {
        let config = Arc::new(Config {
            cores: options.cores,
            send_rate_per_connection: 0,
            send_rate_per_user: 0,
            ..config
        });
        let memory: Arc<dyn Backend> = Arc::new(MemBackend::new());
        let faults = Arc::new(Faults::default());
        // Reads miss memory and go to readers, until a step says otherwise.
        faults.set_uncached(true);
        let store = Store::with_backend(
            Arc::new(FaultyBackend::new(memory, Arc::clone(&faults))),
            false,
        );
        let metrics = Arc::new(Metrics::new(options.cores));
        let mut world = World {
            options,
            rng: Rng::new(seed),
            now_ms: 1_700_000_000_000,
            config,
            metrics,
            faults,
            store,
            shards: Vec::new(),
            links: BTreeMap::new(),
            commits: (0..options.cores).map(|_| VecDeque::new()).collect(),
            failed_epoch: vec![None; options.cores],
            reads: Vec::new(),
            hold_reads: false,
            users: Vec::new(),
            devices: Vec::new(),
            registering: HashMap::new(),
            next_conn: 0,
            next_cmid: 0,
            acknowledged: HashMap::new(),
            clock: 0,
            send_steps: HashMap::new(),
            groups: Vec::new(),
            changes: Vec::new(),
            violations: Vec::new(),
            replies: Vec::new(),
            unacked_budget: match seed % 3 {
                0 => (seed / 3 % 5) as usize,
                _ => crate::core::UNACKED_KEPT_PER_CORE,
            },
            stats: Stats::default(),
        };
        world.boot();
        world
    }

    /// Starts every core from what is durable, as `ternd` does after a crash.
    fn boot(&mut self) {
        self.shards = (0..self.options.cores)
            .map(|core| {
                let high_water = self.store.id_high_water(core as u16).unwrap_or(0);
                Shard::new(
                    core,
                    self.options.cores,
                    Arc::clone(&self.config),
                    self.store.clone(),
                    high_water,
                    Arc::clone(&self.metrics),
                )
            })
            .collect();
        for core in 0..self.options.cores {
            let now = self.now_ms;
            let shard = &mut self.shards[core];
            // One of each per share, so a checkpoint of the few users here spans turns too.
            shard.chat.set_share_min(1);
            shard.unacked_budget = self.unacked_budget;
            if self.options.reads_on_core {
                shard.reads = ReadState::on_core();
            }
            let found = shard
                .recover_fanouts(now)
                .expect("memory reads do not fail");
            self.stats.recovery_resumed += found.resumed as u64;
            self.stats.recovery_held += found.held as u64;
            shard
                .recover_push_jobs(now)
                .expect("memory reads do not fail");
        }
    }

    fn conn_id(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    // ------------------------------------------------------------------ setup

    /// Registers every user with one or two devices, and gives each pair of users a direct
    /// conversation and every three users a group.
    fn setup(&mut self) {
        for index in 0..self.options.users {
            let name = format!("user{index}");
            self.users.push(User {
                name: name.clone(),
                user_id: 0,
                conversations: Vec::new(),
                groups: Vec::new(),
            });
            let device = self.devices.len();
            self.devices.push(Device {
                user: index,
                ..Device::default()
            });
            let core = name_owner(&name, self.options.cores);
            let conn = self.conn_id();
            self.registering.insert((core, conn), device);
            let user = UserRecord {
                username: name.clone(),
                created_at: 0,
                password_salt: [0; 16],
                password_iterations: 1,
                password_hash: [0; 32],
                hide_last_seen: false,
            };
            let mail = Mail::CreateUser {
                origin: ConnRef { core, conn },
                user: Box::new(user),
                device_name: "phone".into(),
            };
            self.shards[core].handle_mail(self.now_ms, mail);
        }
        self.settle();
        // A second device for every other user, by login.
        for index in (0..self.options.users).step_by(2) {
            let device = self.devices.len();
            self.devices.push(Device {
                user: index,
                ..Device::default()
            });
            self.authenticate(device, true);
        }
        self.settle();
        for a in 0..self.options.users {
            for b in a + 1..self.options.users {
                let peer = self.users[b].user_id;
                let open = OpenDirect {
                    user_id: peer,
                    encrypted: false,
                };
                self.request(self.first_device(a), open.into());
            }
        }
        for first in (0..self.options.users.saturating_sub(2)).step_by(3) {
            let members = (first + 1..first + 3)
                .map(|u| self.users[u].user_id)
                .collect();
            let create = CreateGroup {
                name: format!("group{first}"),
                members,
                encrypted: false,
            };
            self.request(self.first_device(first), create.into());
        }
        self.settle();
        for index in 0..self.options.users {
            let user_id = self.users[index].user_id;
            let mut conversations = Vec::new();
            let mut after = 0;
            loop {
                let page = self
                    .store
                    .user_conversations(user_id, after, RANGE_READ_MAX)
                    .expect("memory reads do not fail");
                let Some(&last) = page.last() else { break };
                conversations.extend(page);
                after = last;
            }
            let groups = conversations
                .iter()
                .copied()
                .filter(|c| {
                    self.store
                        .conversation(*c)
                        .ok()
                        .flatten()
                        .is_some_and(|r| r.kind == ConversationKind::Group as u8)
                })
                .collect();
            self.users[index].conversations = conversations;
            self.users[index].groups = groups;
        }
        for index in 0..self.options.users {
            for &conversation_id in &self.users[index].groups {
                let Ok(Some(record)) = self.store.conversation(conversation_id) else {
                    continue;
                };
                let owner_id = self.users[index].user_id;
                let owns = record
                    .members
                    .iter()
                    .any(|m| m.user_id == owner_id && m.role == Role::Owner as u8);
                if !owns {
                    continue;
                }
                let others = record
                    .members
                    .iter()
                    .filter(|m| m.user_id != owner_id)
                    .filter_map(|m| self.users.iter().position(|u| u.user_id == m.user_id))
                    .collect();
                self.groups.push(Group {
                    conversation_id,
                    owner: index,
                    others,
                    out: HashSet::new(),
                    busy: false,
                    unknown: HashSet::new(),
                });
            }
        }
    }

    fn first_device(&self, user: usize) -> usize {
        self.devices
            .iter()
            .position(|d| d.user == user)
            .expect("every user has a device")
    }

    /// Runs without faults until nothing is in flight.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.step_quietly() {
                return;
            }
        }
        self.violation("the world did not settle".into());
    }

    /// One step of delivery with no faults and no device actions; false when nothing was left.
    fn step_quietly(&mut self) -> bool {
        self.clock += 1;
        for core in 0..self.options.cores {
            self.end_turn(core);
        }
        let mut moved = false;
        for core in 0..self.options.cores {
            if !self.commits[core].is_empty() {
                self.commit(core, false);
                moved = true;
            }
        }
        let links: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for link in links {
            self.deliver_mail(link);
            moved = true;
        }
        while !self.hold_reads && !self.reads.is_empty() {
            self.answer_read(0, false);
            moved = true;
        }
        moved
    }

    // ------------------------------------------------------------------ devices

    /// Opens a connection for a device and authenticates it: a new device (login) or a resume.
    fn authenticate(&mut self, device: usize, new_device: bool) {
        let user = self.devices[device].user;
        let user_id = self.users[user].user_id;
        let core = owner(user_id, self.options.cores);
        let conn = self.conn_id();
        let request_id = self.next_request(device);
        let d = &mut self.devices[device];
        d.conn = Some((core, conn));
        d.authenticated = false;
        d.syncing = false;
        d.live = false;
        self.forget_asked(device);
        let d = &mut self.devices[device];
        d.asked.insert(request_id, Asked::Auth);
        let auth = if new_device {
            let token = [device as u8 + 1; 32];
            d.token = token;
            AdoptAuth::NewDevice {
                user_id,
                username: self.users[user].name.clone(),
                device_name: format!("device{device}"),
                token,
                token_hash: token_hash(&token),
            }
        } else {
            AdoptAuth::Resume {
                user_id,
                device_id: d.device_id,
                token_hash: token_hash(&d.token),
            }
        };
        self.shards[core].adopt(self.now_ms, conn, request_id, auth);
    }

    fn next_request(&mut self, device: usize) -> u32 {
        let d = &mut self.devices[device];
        d.next_request += 1;
        d.next_request
    }

    /// Sends a request on a device's connection, if it has an authenticated one.
    fn request(&mut self, device: usize, body: Body) {
        let asked = match &body {
            Body::Send(send) => Asked::Send {
                conversation_id: send.conversation_id,
                cmid: send.client_msg_id,
            },
            Body::Sync(_) => Asked::Sync,
            _ => Asked::Other,
        };
        self.request_as(device, body, asked);
    }

    /// As [`World::request`], remembering the request as `asked`; false when there was no
    /// authenticated connection to send it on.
    fn request_as(&mut self, device: usize, body: Body, asked: Asked) -> bool {
        let Some((core, conn)) = self.devices[device].conn else {
            return false;
        };
        if !self.devices[device].authenticated {
            return false;
        }
        let request_id = self.next_request(device);
        self.devices[device].asked.insert(request_id, asked);
        self.shards[core].handle_request(self.now_ms, conn, request_id, body);
        true
    }

    /// A device's outstanding requests are dropped with its connection: membership changes among
    /// them have an unknown outcome.
    fn forget_asked(&mut self, device: usize) {
        let asked = std::mem::take(&mut self.devices[device].asked);
        for asked in asked.into_values() {
            if let Asked::Members(change) = asked {
                self.change_unknown(change);
            }
        }
    }

    fn change_unknown(&mut self, change: usize) {
        self.changes[change].uncertain = true;
        let Change {
            conversation_id,
            user,
            ..
        } = self.changes[change];
        if let Some(g) = self
            .groups
            .iter_mut()
            .find(|g| g.conversation_id == conversation_id)
        {
            g.busy = false;
            g.unknown.insert(user);
        }
        // Perhaps still a member: the user's app keeps the group (a send may get NOT_FOUND).
        let u = &mut self.users[user];
        if !u.conversations.contains(&conversation_id) {
            u.conversations.push(conversation_id);
            u.groups.push(conversation_id);
        }
    }

    fn disconnect(&mut self, device: usize) {
        if let Some((core, conn)) = self.devices[device].conn.take() {
            self.shards[core].connection_closed(self.now_ms, conn);
        }
        let d = &mut self.devices[device];
        d.authenticated = false;
        d.syncing = false;
        d.live = false;
        self.forget_asked(device);
    }

    /// An `Ack` is a notification: it has request id 0 and no reply.
    fn ack(&mut self, device: usize) {
        let (Some((core, conn)), true) = (
            self.devices[device].conn,
            self.devices[device].authenticated,
        ) else {
            return;
        };
        let up_to = self.devices[device].cursor;
        self.shards[core].handle_request(self.now_ms, conn, 0, Ack { up_to }.into());
    }

    fn sync(&mut self, device: usize) {
        if self.devices[device].syncing {
            return;
        }
        let since = self.devices[device].cursor;
        self.request(device, Sync { since, limit: 7 }.into());
        self.devices[device].syncing = self.devices[device].authenticated;
    }

    /// A device does something an app would.
    fn act(&mut self, device: usize) {
        let connected = self.devices[device].conn.is_some();
        if !connected {
            self.authenticate(device, false);
            self.stats.reconnects += 1;
            return;
        }
        if !self.devices[device].authenticated {
            return;
        }
        match self.rng.below(10) {
            0..=3 => self.send_new(device),
            4 => self.retry_outbox(device),
            5 => self.sync(device),
            6 => self.ack(device),
            7 => self.mark_read(device),
            8 => self.disconnect(device),
            _ if self.rng.chance(300) => self.rename_group(device),
            _ if self.rng.chance(400) => self.history(device),
            _ if self.rng.chance(700) => self.change_members(device),
            _ => self.retry_outbox(device),
        }
    }

    fn send_new(&mut self, device: usize) {
        let user = self.devices[device].user;
        let conversations = &self.users[user].conversations;
        if conversations.is_empty() {
            return;
        }
        let conversation_id = conversations[self.rng.below(conversations.len())];
        self.next_cmid += 1;
        let mut cmid = [0u8; 16];
        cmid[..8].copy_from_slice(&self.next_cmid.to_be_bytes());
        self.devices[device].outbox.push((conversation_id, cmid));
        self.send_steps.insert(cmid, (self.clock, None));
        self.stats.sends += 1;
        self.send(device, conversation_id, cmid);
    }

    fn send(&mut self, device: usize, conversation_id: u64, cmid: [u8; 16]) {
        let body = format!(
            "m{}",
            u64::from_be_bytes(cmid[..8].try_into().unwrap_or([0; 8]))
        );
        let send = Send {
            conversation_id,
            client_msg_id: cmid,
            body,
            attachments: Vec::new(),
        };
        self.request(device, send.into());
    }

    /// Sends the oldest unacknowledged message again, under its idempotency key. Now and then it
    /// does so while the first try is still unanswered, as an app whose request timed out would:
    /// the first try may still be in the pending batch or in one not yet durable.
    fn retry_outbox(&mut self, device: usize) {
        let Some(&(conversation_id, cmid)) = self.devices[device].outbox.first() else {
            return;
        };
        let waiting = self.devices[device]
            .asked
            .values()
            .any(|a| matches!(a, Asked::Send { cmid: c, .. } if *c == cmid));
        if !waiting || self.rng.chance(250) {
            self.send(device, conversation_id, cmid);
        }
    }

    /// A group change: every member's log gets it, in the group's order.
    fn rename_group(&mut self, device: usize) {
        let groups = &self.users[self.devices[device].user].groups;
        if groups.is_empty() {
            return;
        }
        let conversation_id = groups[self.rng.below(groups.len())];
        let name = format!("renamed{}", self.rng.below(1000));
        self.stats.group_changes += 1;
        self.request(
            device,
            RenameGroup {
                conversation_id,
                name,
            }
            .into(),
        );
    }

    /// The owner of a group removes one of its members, or adds back one it removed.
    fn change_members(&mut self, device: usize) {
        let user = self.devices[device].user;
        let mine: Vec<usize> = (0..self.groups.len())
            .filter(|&g| {
                let g = &self.groups[g];
                g.owner == user && !g.busy && !g.others.is_empty()
            })
            .collect();
        if mine.is_empty() {
            return;
        }
        let g = mine[self.rng.below(mine.len())];
        let member = self.groups[g].others[self.rng.below(self.groups[g].others.len())];
        let added =
            self.groups[g].out.contains(&member) || self.groups[g].unknown.contains(&member);
        let conversation_id = self.groups[g].conversation_id;
        let user_id = self.users[member].user_id;
        let body: Body = if added {
            AddMembers {
                conversation_id,
                members: vec![user_id],
            }
            .into()
        } else {
            RemoveMember {
                conversation_id,
                user_id,
            }
            .into()
        };
        let change = self.changes.len();
        self.changes.push(Change {
            conversation_id,
            user: member,
            added,
            asked: self.clock,
            answered: None,
            uncertain: false,
        });
        if self.request_as(device, body, Asked::Members(change)) {
            self.groups[g].busy = true;
            self.stats.group_changes += 1;
        } else {
            self.changes.pop();
        }
    }

    /// A membership change was answered `Ok`.
    fn on_changed(&mut self, change: usize) {
        self.changes[change].answered = Some(self.clock);
        match self.changes[change].added {
            true => self.stats.added_back += 1,
            false => self.stats.removed += 1,
        }
        let Change {
            conversation_id,
            user,
            added,
            ..
        } = self.changes[change];
        if let Some(g) = self
            .groups
            .iter_mut()
            .find(|g| g.conversation_id == conversation_id)
        {
            g.busy = false;
            g.unknown.remove(&user);
            if added {
                g.out.remove(&user);
            } else {
                g.out.insert(user);
            }
        }
        let u = &mut self.users[user];
        u.conversations.retain(|c| *c != conversation_id);
        u.groups.retain(|c| *c != conversation_id);
        if added {
            u.conversations.push(conversation_id);
            u.groups.push(conversation_id);
        }
    }

    /// Whether a membership change of `user` in `conversation_id` was asked for.
    fn membership_changed(&self, conversation_id: u64, user: usize) -> bool {
        self.changes
            .iter()
            .any(|c| c.conversation_id == conversation_id && c.user == user)
    }

    /// How many times a message sent between steps `sent` and `acked` may be in the log of
    /// `user`, whose membership of `conversation_id` changed: `Some(n)` exactly, or `None` when a
    /// change overlaps the send or an earlier one's outcome is unknown (then zero or one).
    ///
    /// Changes reach the group's core in the order they were asked (one owner, whose core's mail
    /// to the group's core is FIFO), so a change whose outcome is unknown took effect, if at all,
    /// before the next one: a later change answered `Ok` settles the membership again.
    fn expected_copies(
        &self,
        conversation_id: u64,
        user: usize,
        sent: u64,
        acked: u64,
    ) -> Option<usize> {
        let mut member = Some(true);
        for c in self
            .changes
            .iter()
            .filter(|c| c.conversation_id == conversation_id && c.user == user)
        {
            if c.asked > acked {
                break;
            }
            match c.answered {
                _ if c.uncertain => member = None,
                Some(answered) if answered < sent => member = Some(c.added),
                _ => return None,
            }
        }
        member.map(usize::from)
    }

    /// A page of one of the user's conversations: the newest messages, or those after a seq.
    fn history(&mut self, device: usize) {
        let user = self.devices[device].user;
        let conversations = &self.users[user].conversations;
        if conversations.is_empty() {
            return;
        }
        let conversation_id = conversations[self.rng.below(conversations.len())];
        let after = self.rng.chance(500).then(|| self.rng.below(8) as u64);
        let history = frames::History {
            conversation_id,
            before: 0,
            limit: 1 + self.rng.below(6) as u32,
            after,
        };
        self.request_as(device, history.into(), Asked::History(conversation_id));
    }

    /// A history page holds consecutive messages of its conversation, each as it is durable.
    fn on_history_page(&mut self, device: usize, conversation_id: u64, page: frames::HistoryPage) {
        self.stats.history_pages += 1;
        if page.conversation_id != conversation_id {
            self.violation(format!(
                "device {device}: a history page of another conversation"
            ));
        }
        for (i, message) in page.messages.iter().enumerate() {
            if i > 0 && message.seq != page.messages[i - 1].seq + 1 {
                let what = format!("device {device}: history seqs not consecutive: {page:?}");
                self.violation(what);
                return;
            }
            let durable = self
                .store
                .message(conversation_id, message.seq)
                .expect("memory reads do not fail");
            if durable.is_none_or(|m| m.message_id != message.message_id) {
                let what =
                    format!("device {device}: history shows a message not durable: {message:?}");
                self.violation(what);
            }
        }
    }

    fn mark_read(&mut self, device: usize) {
        let mut seen: Vec<(u64, u64)> = self.devices[device].messages.iter().copied().collect();
        seen.sort_unstable();
        let Some(&(conversation_id, _)) = seen.get(self.rng.below(seen.len().max(1))) else {
            return;
        };
        // Now and then "mark all read", as apps do when a conversation is opened.
        let up_to_seq = if self.rng.chance(250) {
            u64::MAX
        } else {
            seen.iter()
                .filter(|(c, _)| *c == conversation_id)
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0)
        };
        self.request(
            device,
            MarkRead {
                conversation_id,
                up_to_seq,
            }
            .into(),
        );
    }

    /// A frame reaches the device that owns `(core, conn)`.
    fn on_frame(&mut self, core: usize, conn: ConnId, frame: Frame) {
        let Some(device) = self
            .devices
            .iter()
            .position(|d| d.conn == Some((core, conn)))
        else {
            return;
        };
        if frame.request_id == 0 {
            if let Body::UpdateEvent(event) = frame.body {
                if !self.devices[device].live {
                    let what = format!("device {device}: a live event before its sync finished");
                    self.violation(what);
                }
                self.on_update(device, event.update);
            }
            return;
        }
        let Some(asked) = self.devices[device].asked.remove(&frame.request_id) else {
            let what = format!("device {device}: a reply to no request: {:?}", frame.body);
            self.violation(what);
            return;
        };
        match (asked, frame.body) {
            (_, Body::Authenticated(auth)) => {
                let d = &mut self.devices[device];
                d.authenticated = true;
                d.device_id = auth.device_id;
                self.users[d.user].user_id = auth.user_id;
                self.sync(device);
            }
            (Asked::Sync, Body::SyncPage(page)) => {
                let d = &mut self.devices[device];
                d.syncing = false;
                // The cursor runs ahead of the log (spec §17.4): a crash lost updates shown to
                // this device before they were durable.
                if page.head < d.cursor {
                    d.cursor = page.head;
                    self.stats.cursors_reset += 1;
                }
                for update in page.updates {
                    self.on_update(device, update);
                }
                if page.has_more {
                    self.sync(device);
                } else {
                    self.devices[device].live = true;
                }
            }
            (
                Asked::Send {
                    conversation_id,
                    cmid,
                },
                Body::Sent(sent),
            ) => self.on_sent(device, conversation_id, cmid, &sent),
            (Asked::Members(change), Body::Ok(_)) => self.on_changed(change),
            (Asked::Members(change), _) => self.change_unknown(change),
            (
                Asked::Send {
                    conversation_id,
                    cmid,
                },
                Body::Error(error),
            ) if error.code == ErrorCode::NOT_FOUND => {
                // Sent to a group the user was removed from: the app gives the message up.
                let user = self.devices[device].user;
                if !self.membership_changed(conversation_id, user) {
                    let what = format!("device {device}: Send refused NOT_FOUND as a member");
                    self.violation(what);
                }
                self.devices[device].outbox.retain(|(_, c)| *c != cmid);
            }
            (Asked::Sync, Body::Error(_)) => self.devices[device].syncing = false,
            (Asked::History(conversation_id), Body::HistoryPage(page)) => {
                self.on_history_page(device, conversation_id, page)
            }
            // Not authenticated after all: the device connects again later.
            (Asked::Auth, Body::Error(_)) => self.disconnect(device),
            (_, Body::Error(error)) if error.code == ErrorCode::INTERNAL => {}
            (_, Body::Error(error)) if self.devices[device].conn.is_none() => {
                let _ = error;
            }
            (Asked::Other, body) => self.replies.push((device, body)),
            (_, Body::Error(error))
                if !matches!(error.code, ErrorCode::NOT_FOUND | ErrorCode::RATE_LIMITED) =>
            {
                let what = format!("device {device}: unexpected error {error:?}");
                self.violation(what);
            }
            _ => {}
        }
    }

    fn on_sent(
        &mut self,
        device: usize,
        conversation_id: u64,
        cmid: [u8; 16],
        sent: &frames::Sent,
    ) {
        if sent.conversation_id != conversation_id || sent.client_msg_id != cmid {
            self.violation(format!("device {device}: Sent for another send: {sent:?}"));
        }
        let stored = (sent.conversation_id, sent.seq);
        match self.acknowledged.insert(cmid, stored) {
            Some(earlier) if earlier != stored => self.violation(format!(
                "send {cmid:?} acknowledged as {earlier:?} and then {stored:?}"
            )),
            Some(_) => {}
            None => self.stats.acknowledged += 1,
        }
        if let Some((_, answered)) = self.send_steps.get_mut(&cmid) {
            answered.get_or_insert(self.clock);
        }
        self.devices[device].outbox.retain(|(_, c)| *c != cmid);
    }

    /// An update reaches a device. Updates are delivered at least once (spec §17.3): one at or
    /// below the cursor is a repeat the device ignores; one past the cursor + 1 is a gap, which the
    /// server never makes.
    fn on_update(&mut self, device: usize, update: Update) {
        let d = &mut self.devices[device];
        if update.user_seq <= d.cursor {
            self.stats.repeats += 1;
            return;
        }
        if update.user_seq != d.cursor + 1 {
            let what = format!(
                "device {device}: update {} after {} (a gap)",
                update.user_seq, d.cursor
            );
            self.violations.push(what);
            return;
        }
        d.cursor = update.user_seq;
        // [`World::check`] holds every update a device was shown to the log.
        let shown = match &update.kind {
            UpdateKind::Message(m) => Shown::Message(m.conversation_id, m.seq),
            UpdateKind::Receipt(r) => {
                Shown::Receipt(r.conversation_id, r.user_id, r.kind as u8, r.up_to_seq)
            }
            UpdateKind::Skipped(_) => Shown::Skipped,
            _ => Shown::Other,
        };
        d.slots.push((update.user_seq, shown));
        match update.kind {
            // A message may come again under a new `user_seq` only when a crash lost the update
            // that first showed it.
            UpdateKind::Message(message)
                if !d.messages.insert((message.conversation_id, message.seq)) =>
            {
                self.stats.shown_again += 1;
            }
            UpdateKind::Receipt(receipt) => {
                let key = (receipt.conversation_id, receipt.user_id, receipt.kind as u8);
                let before = d.watermarks.insert(key, receipt.up_to_seq).unwrap_or(0);
                if receipt.up_to_seq < before {
                    let what = format!(
                        "device {device}: watermark {key:?} went back from {before} to {}",
                        receipt.up_to_seq
                    );
                    self.violations.push(what);
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ the server side

    /// A core ends its turn: frames go to devices, mail onto links, the batch to its committer.
    fn end_turn(&mut self, core: usize) {
        let turn = self.shards[core].end_turn();
        for (to, mail) in turn.mail {
            self.links.entry((core, to)).or_default().push_back(mail);
        }
        if let Some(commit) = turn.commit {
            self.commits[core].push_back(commit);
        }
        self.reads
            .extend(turn.reads.into_iter().map(|read| (core, read)));
        for output in turn.outputs {
            match output {
                Output::Frame { conn, frame } => self.on_frame(core, conn, frame),
                Output::Update {
                    conn,
                    user_seq,
                    event,
                } => match event.to_frame(user_seq) {
                    Ok(frame) => self.on_frame(core, conn, frame),
                    Err(e) => self.violation(format!("an update event does not decode: {e}")),
                },
                Output::Close { conn, .. } => {
                    if let Some(device) = self
                        .devices
                        .iter()
                        .position(|d| d.conn == Some((core, conn)))
                    {
                        self.disconnect(device);
                    }
                }
            }
        }
    }

    /// The committer of `core` answers its oldest batch.
    fn commit(&mut self, core: usize, faults: bool) {
        let Some(commit) = self.commits[core].pop_front() else {
            return;
        };
        let result = if self.failed_epoch[core].is_some_and(|e| commit.epoch <= e) {
            Err(StoreError::Io("an earlier batch failed".into()))
        } else {
            if faults && self.rng.chance(self.options.commit_failures_per_mille) {
                self.faults.fail_next_writes(1);
            }
            let result = self.store.backend().write(&commit.batch, false);
            self.stats.commits += 1;
            if result.is_err() {
                self.stats.failed_commits += 1;
                self.failed_epoch[core] = Some(commit.epoch);
            }
            result
        };
        self.shards[core].handle_committed(commit.id, result);
    }

    /// A reader answers read `index` of those out: it reads what is durable now, or fails.
    fn answer_read(&mut self, index: usize, faults: bool) {
        let (core, read) = self.reads.remove(index);
        let result = if faults && self.rng.chance(self.options.read_failures_per_mille) {
            self.stats.failed_reads += 1;
            Err(StoreError::Io("a read failed on purpose".into()))
        } else {
            read.job.run(&self.store)
        };
        self.stats.reads += 1;
        self.shards[core].handle_read(read.id, result);
    }

    fn deliver_mail(&mut self, link: (usize, usize)) {
        let (from, to) = link;
        if from != to {
            // A core handles the mail it sent itself before any mail that comes after it (see
            // `CoreCtx::post`).
            while self.links.get(&(to, to)).is_some_and(|q| !q.is_empty()) {
                self.deliver_mail((to, to));
            }
        }
        let Some(mail) = self.links.get_mut(&link).and_then(VecDeque::pop_front) else {
            return;
        };
        match mail {
            Mail::UserCreated { origin, result } => {
                let Some(device) = self.registering.remove(&(origin.core, origin.conn)) else {
                    return;
                };
                match result {
                    Ok((user_id, _, _)) => {
                        let user = self.devices[device].user;
                        self.users[user].user_id = user_id;
                        self.authenticate(device, true);
                    }
                    Err(code) => self.violation(format!("registration refused: {code:?}")),
                }
            }
            mail => self.shards[to].handle_mail(self.now_ms, mail),
        }
    }

    /// Everything not durable is lost; every core starts again from the store.
    fn crash(&mut self) {
        self.stats.crashes += 1;
        self.links.clear();
        self.reads.clear();
        for queue in &mut self.commits {
            queue.clear();
        }
        self.failed_epoch = vec![None; self.options.cores];
        for device in 0..self.devices.len() {
            let d = &mut self.devices[device];
            d.conn = None;
            d.authenticated = false;
            d.syncing = false;
            d.live = false;
            self.forget_asked(device);
        }
        self.boot();
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        for shard in &mut self.shards {
            shard.tick(self.now_ms);
        }
    }

    // ------------------------------------------------------------------ the run

    /// One random step.
    fn step(&mut self) {
        self.clock += 1;
        let cores = self.options.cores;
        match self.rng.below(100) {
            0..=16 => {
                let core = self.rng.below(cores);
                self.commit(core, true);
            }
            17..=19 => {
                if !self.reads.is_empty() {
                    let index = self.rng.below(self.reads.len());
                    self.answer_read(index, true);
                }
            }
            20..=44 => {
                let links: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                if !links.is_empty() {
                    let link = links[self.rng.below(links.len())];
                    self.deliver_mail(link);
                }
            }
            45..=64 => {
                let core = self.rng.below(cores);
                self.end_turn(core);
            }
            65..=89 => {
                let device = self.rng.below(self.devices.len());
                self.act(device);
            }
            _ => {
                let ms = 1 + self.rng.below(TICK_MS as usize * 2) as u64;
                self.tick(ms);
            }
        }
        if self.rng.next() % 100_000 < self.options.crashes_per_100k {
            self.crash();
        }
        if self.rng.next() % 100_000 < self.options.disk_full_per_100k {
            let full = self.stats.disk_full.is_multiple_of(2);
            self.faults.set_no_space(full);
            self.stats.disk_full += 1;
        }
        if self.rng.next() % 100_000 < self.options.memory_flips_per_100k {
            let in_memory = self.stats.memory_flips.is_multiple_of(2);
            self.faults.set_uncached(!in_memory);
            self.stats.memory_flips += 1;
        }
    }

    /// The faults stop; every device reconnects, sends what its outbox holds and catches up.
    fn quiesce(&mut self) {
        self.faults.set_no_space(false);
        for _ in 0..200 {
            for device in 0..self.devices.len() {
                if self.devices[device].conn.is_none() {
                    self.authenticate(device, false);
                }
                self.retry_outbox(device);
                self.sync(device);
            }
            self.settle();
            // Past the longest fan-out back-off, so every retry has fired.
            self.tick(TICK_MS * 20);
            self.settle();
            let done = self.devices.iter().all(|d| {
                d.outbox.is_empty() && d.authenticated && d.asked.is_empty() && !d.syncing
            });
            let fanned_out = self.shards.iter().all(|s| s.fanouts_pending() == 0);
            let quiet = self.shards.iter().all(Shard::idle) && self.reads.is_empty();
            if done && fanned_out && quiet && !self.links_busy() {
                // One more sync round: each device catches up to its head.
                for device in 0..self.devices.len() {
                    self.sync(device);
                }
                self.settle();
                return;
            }
        }
        self.violation("devices never caught up after the faults stopped".into());
    }

    fn links_busy(&self) -> bool {
        self.links.values().any(|q| !q.is_empty())
    }

    /// Runs the whole scenario and returns the violations found.
    pub(crate) fn run(&mut self) -> Vec<String> {
        self.setup();
        for _ in 0..self.options.steps {
            self.step();
        }
        self.quiesce();
        self.check();
        std::mem::take(&mut self.violations)
    }

    // ------------------------------------------------------------------ invariants

    fn log(&self, user_id: u64) -> Vec<(u64, UpdateRecord)> {
        let mut log = Vec::new();
        let mut since = 0;
        loop {
            let page = self
                .store
                .updates_after(user_id, since, RANGE_READ_MAX)
                .expect("memory reads do not fail");
            let Some(&(last, _)) = page.last() else { break };
            log.extend(page);
            since = last;
        }
        log
    }

    /// In a direct conversation, a receipt from the peer comes after the message it covers in
    /// the user's log (when the log holds it): both come from cores that delivered them in causal
    /// order. (In a group the members' logs fill in parallel, so this is not promised there.)
    fn check_receipts_follow_messages(&mut self, user: usize, log: &[(u64, UpdateRecord)]) {
        let user_id = self.users[user].user_id;
        let mut at: HashMap<(u64, u64), usize> = HashMap::new();
        for (i, (_, record)) in log.iter().enumerate() {
            if let UpdateRecord::Message {
                conversation_id,
                seq,
                ..
            } = *record
            {
                at.entry((conversation_id, seq)).or_insert(i);
            }
        }
        for (i, (user_seq, record)) in log.iter().enumerate() {
            let UpdateRecord::Receipt {
                conversation_id,
                user_id: reader,
                up_to_seq,
                ..
            } = *record
            else {
                continue;
            };
            let direct = !self
                .groups
                .iter()
                .any(|g| g.conversation_id == conversation_id);
            let later = at
                .get(&(conversation_id, up_to_seq))
                .is_some_and(|&m| m > i);
            if reader != user_id && direct && later {
                self.violation(format!(
                    "user {user_id}: the receipt of {reader} up to {conversation_id}/{up_to_seq} \
                     is at {user_seq}, before that message"
                ));
            }
        }
    }

    /// The delivery invariants, over what is durable and what each device saw.
    fn check(&mut self) {
        for core in 0..self.shards.len() {
            let shard = &self.shards[core];
            let room: usize = shard.users.values().map(|s| s.kept_room()).sum();
            let most = shard.unacked_budget + crate::core::UNACKED_KEPT_MAX;
            if room != shard.unacked_room || room > most {
                let what = format!(
                    "core {core} has room for {room} messages kept for acks, counts {}, budget {}",
                    shard.unacked_room, shard.unacked_budget
                );
                self.violation(what);
            }
        }
        self.stats.shown_early = (0..self.options.cores)
            .map(|core| {
                let metrics = self.metrics.core(core);
                metrics.updates_shown_early.get()
            })
            .sum();
        let mut messages_in: HashMap<u64, Vec<u64>> = HashMap::new();
        for user in 0..self.users.len() {
            let user_id = self.users[user].user_id;
            let log = self.log(user_id);
            for (i, (user_seq, _)) in log.iter().enumerate() {
                if *user_seq != i as u64 + 1 {
                    self.violation(format!("user {user_id}: user_seq {user_seq} at {i}"));
                    break;
                }
            }
            self.check_receipts_follow_messages(user, &log);
            let mut seen = HashSet::new();
            for (_, record) in &log {
                if let UpdateRecord::Skipped = record {
                    self.stats.skipped += 1;
                }
                if let UpdateRecord::Message {
                    conversation_id,
                    seq,
                    ..
                } = *record
                {
                    if !seen.insert((conversation_id, seq)) {
                        let what = format!("user {user_id}: {conversation_id}/{seq} logged twice");
                        self.violation(what);
                    }
                }
            }
            for device in self.devices.iter().filter(|d| d.user == user) {
                // What a device was shown under a `user_seq` is what the log holds there, or a
                // `Skipped` left by a crash.
                for (user_seq, shown) in &device.slots {
                    let logged = log.get(*user_seq as usize - 1).map(|(_, record)| record);
                    if !shown.agrees(logged) {
                        self.violations.push(format!(
                            "a device of user {user_id} was shown {shown:?} as {user_seq}, \
                             where the log has {logged:?}"
                        ));
                    }
                }
                if device.cursor != log.len() as u64 {
                    let what = format!(
                        "a device of user {user_id} is at {} of {}",
                        device.cursor,
                        log.len()
                    );
                    self.violations.push(what);
                }
                // A device may keep a message its log lacks in one case: it was shown before its
                // log entry was durable, a crash lost the entry, and the user left the group
                // before fan-out recovery delivered it again (recovery delivers to members).
                let mut extra: Vec<_> = device
                    .messages
                    .difference(&seen)
                    .filter(|(conversation_id, _)| !self.membership_changed(*conversation_id, user))
                    .collect();
                extra.sort_unstable();
                let mut missed: Vec<_> = seen.difference(&device.messages).collect();
                missed.sort_unstable();
                if !missed.is_empty() || !extra.is_empty() {
                    self.violations.push(format!(
                        "a device of user {user_id} missed messages {missed:?} \
                         (and has {extra:?} the log lacks)"
                    ));
                }
            }
            for (conversation_id, seq) in seen {
                messages_in.entry(conversation_id).or_default().push(seq);
            }
        }
        let mut message_ids = HashSet::new();
        let conversations: HashSet<u64> = self
            .users
            .iter()
            .flat_map(|u| u.conversations.iter().copied())
            .collect();
        for conversation_id in conversations {
            let last = self
                .store
                .last_seq(conversation_id)
                .expect("memory reads do not fail");
            let record = self
                .store
                .conversation(conversation_id)
                .expect("memory reads do not fail");
            if record.is_none() {
                self.violation(format!("conversation {conversation_id} is missing"));
                continue;
            }
            for seq in 1..=last {
                let message = self.store.message(conversation_id, seq);
                let Ok(Some(message)) = message else {
                    self.violation(format!("{conversation_id}/{seq}: a gap in seq"));
                    continue;
                };
                // Ids are never issued twice, crashes included: each is at or below the
                // high-water mark its core persisted with it.
                let id = message.message_id;
                let core =
                    (id >> crate::ids::ID_COUNTER_BITS) & ((1 << crate::ids::ID_CORE_BITS) - 1);
                let high_water = self.store.id_high_water(core as u16).unwrap_or(0);
                if id > high_water {
                    self.violation(format!(
                        "message id {id} is above its core's high-water mark"
                    ));
                }
                if !message_ids.insert(id) {
                    self.violation(format!("message id {id} was issued twice"));
                }
            }
        }
        // Every acknowledged message is durable and in each member's log, once.
        let mut acknowledged: Vec<([u8; 16], (u64, u64))> =
            self.acknowledged.iter().map(|(k, v)| (*k, *v)).collect();
        acknowledged.sort_unstable_by_key(|(_, v)| *v);
        // Copies of each message in each user's log, by (user, conversation, seq): every log is
        // read once, not once per acknowledged message.
        let mut logged: HashMap<(u64, u64, u64), usize> = HashMap::new();
        for user in &self.users {
            for (_, record) in self.log(user.user_id) {
                if let UpdateRecord::Message {
                    conversation_id,
                    seq,
                    ..
                } = record
                {
                    *logged
                        .entry((user.user_id, conversation_id, seq))
                        .or_default() += 1;
                }
            }
        }
        let copies = |user_id: u64, conversation_id: u64, seq: u64| {
            logged
                .get(&(user_id, conversation_id, seq))
                .copied()
                .unwrap_or(0)
        };
        for (cmid, (conversation_id, seq)) in acknowledged {
            let Ok(Some(record)) = self.store.conversation(conversation_id) else {
                continue;
            };
            let (sent, acked) = match self.send_steps.get(&cmid) {
                Some(&(sent, Some(acked))) => (sent, acked),
                _ => (0, u64::MAX),
            };
            // Users whose membership changed: as many copies as membership at the send says.
            for user in 0..self.users.len() {
                if !self.membership_changed(conversation_id, user) {
                    continue;
                }
                let user_id = self.users[user].user_id;
                let copies = copies(user_id, conversation_id, seq);
                let ok = match self.expected_copies(conversation_id, user, sent, acked) {
                    Some(n) => copies == n,
                    None => copies <= 1,
                };
                if !ok {
                    let what = format!(
                        "acknowledged {conversation_id}/{seq} is {copies} times in the log of \
                         {user_id}, whose membership changed"
                    );
                    self.violation(what);
                }
            }
            for member in &record.members {
                let changed = self
                    .users
                    .iter()
                    .position(|u| u.user_id == member.user_id)
                    .is_some_and(|u| self.membership_changed(conversation_id, u));
                if changed {
                    continue;
                }
                let copies = copies(member.user_id, conversation_id, seq);
                if copies != 1 {
                    let what = format!(
                        "acknowledged {conversation_id}/{seq} is {copies} times in the log of {}",
                        member.user_id
                    );
                    self.violation(what);
                }
            }
        }
        // Watermarks are never behind what devices were told.
        for device in 0..self.devices.len() {
            let marks: Vec<((u64, u64, u8), u64)> = self.devices[device]
                .watermarks
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect();
            for ((conversation_id, user_id, kind), up_to) in marks {
                let stored = self
                    .store
                    .receipt(conversation_id, user_id)
                    .expect("memory reads do not fail");
                let mark = if kind == ReceiptKind::Read as u8 {
                    stored.read_seq
                } else {
                    stored.delivered_seq
                };
                if mark < up_to {
                    let what = format!(
                        "watermark {conversation_id}/{user_id}/{kind} stored {mark}, shown {up_to}"
                    );
                    self.violation(what);
                }
            }
        }
    }
}

/// Runs one seed and panics with its violations, naming the seed to replay.
pub(crate) fn run_seed(seed: u64, options: Options) -> Stats {
    let mut world = World::new(seed, options);
    let violations = world.run();
    assert!(
        violations.is_empty(),
        "seed {seed} broke {} invariants (replay: TERN_SIM_SEED={seed}):\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    world.stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::frames::{
        Download, GetMedia, ListDevices, RegisterPushToken, UploadBegin, UploadChunk, UploadFinish,
    };
    use tern_protocol::types::PushPlatform;

    /// A quiet world: no faults, no random steps, set up and settled.
    fn quiet(users: usize, config: Config) -> World {
        let options = Options {
            cores: 2,
            users,
            steps: 0,
            commit_failures_per_mille: 0,
            crashes_per_100k: 0,
            disk_full_per_100k: 0,
            read_failures_per_mille: 0,
            memory_flips_per_100k: 0,
            reads_on_core: false,
        };
        let mut world = World::with_config(1, options, config);
        world.setup();
        world.quiesce();
        world
    }

    /// A conversation of user `user` that `peer` (a user id) is a member of.
    fn conversation_with(world: &World, user: usize, peer: u64) -> u64 {
        *world.users[user]
            .conversations
            .iter()
            .find(|c| {
                world
                    .store
                    .conversation(**c)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.has_member(peer))
            })
            .expect("a conversation with the peer")
    }

    /// Sends a request from a device, lets the world settle, and returns the reply.
    fn ask(world: &mut World, device: usize, body: Body) -> Body {
        world.replies.clear();
        world.request(device, body);
        world.settle();
        let (_, reply) = world.replies.pop().expect("a reply");
        reply
    }

    /// Uploads `data` from `device` in one chunk; the upload's id.
    fn upload(world: &mut World, device: usize, data: Vec<u8>) -> u64 {
        let sha256: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &data)
            .as_ref()
            .try_into()
            .expect("32 bytes");
        let begin = UploadBegin {
            size: data.len() as u64,
            mime: "text/plain".into(),
            sha256,
        };
        let Body::UploadState(info) = ask(world, device, begin.into()) else {
            panic!("UploadBegin answers UploadState");
        };
        let media_id = info.media_id;
        let chunk = UploadChunk {
            media_id,
            offset: 0,
            data,
        };
        ask(world, device, chunk.into());
        ask(world, device, UploadFinish { media_id }.into());
        media_id
    }

    // Proves a `Download` of a complete upload is read by a reader, and that one whose read comes
    // back after the upload was discarded (its chunks perhaps half read) is answered `NOT_FOUND`,
    // not with what the read found.
    #[test]
    fn a_download_read_after_its_upload_was_discarded_finds_nothing() {
        let config = Config::default();
        let wait = config.media_unreferenced_ttl_ms + 2 * config.media_sweep_interval_ms;
        let mut world = quiet(2, config);
        let data = b"hello, world".to_vec();
        let media_id = upload(&mut world, 0, data.clone());
        let download = Download {
            media_id,
            offset: 0,
            length: 1 << 16,
        };
        let reads = world.stats.reads;
        match ask(&mut world, 0, download.clone().into()) {
            Body::MediaData(got) => assert_eq!(got.data, data),
            other => panic!("Download answered {other:?}"),
        }
        assert_eq!(
            world.stats.reads,
            reads + 1,
            "the download was not read by a reader"
        );
        world.hold_reads = true;
        world.replies.clear();
        world.request(0, download.into());
        let (core, _) = world.devices[0].conn.expect("connected");
        world.end_turn(core);
        assert_eq!(world.reads.len(), 1, "the download's read did not go out");
        // The sweep discards the upload while the read is out.
        world.tick(wait);
        world.settle();
        world.hold_reads = false;
        world.answer_read(0, false);
        world.end_turn(core);
        match world.replies.pop() {
            Some((0, Body::Error(error))) => assert_eq!(error.code, ErrorCode::NOT_FOUND),
            other => panic!("a download of a discarded upload answered {other:?}"),
        }
    }

    // Proves, on the virtual clock, that a completed upload no message attaches is kept through
    // its time to live and discarded by the first sweep after it: a day passes in no time.
    #[test]
    fn unattached_uploads_expire_on_the_virtual_clock() {
        let config = Config::default();
        let (ttl, sweep) = (
            config.media_unreferenced_ttl_ms,
            config.media_sweep_interval_ms,
        );
        let mut world = quiet(2, config);
        let media_id = upload(&mut world, 0, b"hello, world".to_vec());
        let exists = |world: &mut World| {
            matches!(
                ask(world, 0, GetMedia { media_id }.into()),
                Body::MediaInfo(_)
            )
        };
        assert!(exists(&mut world));
        // Ticks every minute until just before the time to live: kept.
        let step = sweep.min(ttl / 4);
        let mut waited = 0;
        while waited + step < ttl {
            world.tick(step);
            world.settle();
            waited += step;
        }
        assert!(exists(&mut world), "kept within its time to live");
        world.tick(step + sweep);
        world.settle();
        assert!(!exists(&mut world), "discarded after its time to live");
    }

    // Proves, on the virtual clock, that a `Resume` rewrites the device's `last_active_at` only
    // once the value is a minute old, so that reconnecting often does not rewrite the record.
    #[test]
    fn resume_refreshes_last_active_at_at_most_once_a_minute() {
        let mut world = quiet(1, Config::default());
        let last_active = |world: &mut World| {
            let Body::Devices(list) = ask(world, 0, ListDevices {}.into()) else {
                panic!("ListDevices answers Devices");
            };
            list.devices[0].last_active_at
        };
        let reconnect = |world: &mut World, after_ms: u64| {
            world.disconnect(0);
            world.tick(after_ms);
            world.authenticate(0, false);
            world.settle();
            assert!(world.devices[0].authenticated, "the resume succeeds");
        };
        let first = last_active(&mut world);
        reconnect(&mut world, 30_000);
        assert_eq!(last_active(&mut world), first, "kept within the minute");
        reconnect(&mut world, 30_000);
        assert_eq!(last_active(&mut world), world.now_ms, "written after it");
        assert!(world.now_ms >= first + 60_000);
    }

    /// How many of the conversation's messages the user's log holds (copies counted).
    fn messages_in_log(world: &World, user_id: u64, conversation: u64) -> usize {
        world
            .log(user_id)
            .iter()
            .filter(|(_, r)| {
                matches!(r, UpdateRecord::Message { conversation_id, .. } if *conversation_id == conversation)
            })
            .count()
    }

    /// Runs without faults until the first `Deliver` to `user_id` goes out, and drops it; false
    /// if none went out.
    fn lose_delivery_to(world: &mut World, user_id: u64) -> bool {
        for _ in 0..1_000 {
            // Mail goes out as a turn ends: catch the delivery before it is handed over.
            for core in 0..world.options.cores {
                world.end_turn(core);
            }
            for queue in world.links.values_mut() {
                for mail in queue.iter_mut() {
                    if let Mail::Deliver { users, .. } = mail {
                        if let Some(at) = users.iter().position(|u| *u == user_id) {
                            users.remove(at);
                            return true;
                        }
                    }
                }
            }
            if !world.step_quietly() {
                break;
            }
        }
        false
    }

    // Proves that recovery after a crash delivers a message whose fan-out was cut short to the
    // members it was sent to, not to the members the group has by then: a member removed after
    // the send gets it, a member added after it does not.
    #[test]
    fn recovery_delivers_to_the_members_a_message_was_sent_to() {
        let mut world = quiet(4, Config::default());
        let group = world.users[0].groups[0];
        let (removed, added) = (world.users[1].user_id, world.users[3].user_id);
        let copies = |world: &World, user_id: u64| messages_in_log(world, user_id, group);
        assert_eq!(copies(&world, removed), 0);
        world.send(0, group, [3; 16]);
        assert!(
            lose_delivery_to(&mut world, removed),
            "the delivery went out"
        );
        world.settle();
        assert!(
            world.acknowledged.contains_key(&[3; 16]),
            "the send is durable"
        );
        assert_eq!(copies(&world, removed), 0, "lost on its way");
        let remove = RemoveMember {
            conversation_id: group,
            user_id: removed,
        };
        assert!(matches!(ask(&mut world, 0, remove.into()), Body::Ok(_)));
        let add = AddMembers {
            conversation_id: group,
            members: vec![added],
        };
        assert!(matches!(ask(&mut world, 0, add.into()), Body::Ok(_)));
        // Before the fan-out is retried: only recovery delivers it again.
        world.crash();
        world.settle();
        assert_eq!(copies(&world, removed), 1, "the removed member was sent it");
        assert_eq!(copies(&world, added), 0, "the added member joined after it");
    }

    // Proves that recovery does not deliver again what every recipient's log holds: after a
    // crash before any checkpoint moved the fan-out progress, messages all members hold are
    // counted as held, and one whose delivery to a member was lost goes again to that member
    // alone. Each member's log then holds each message once.
    #[test]
    fn recovery_skips_messages_every_recipient_holds() {
        let mut world = quiet(4, Config::default());
        let group = world.users[0].groups[0];
        let members: Vec<u64> = world
            .store
            .conversation(group)
            .unwrap()
            .unwrap()
            .members
            .iter()
            .map(|m| m.user_id)
            .collect();
        assert!(members.len() >= 3, "a group of at least three");
        let copies = |world: &World, user_id: u64| messages_in_log(world, user_id, group);
        let before: Vec<usize> = members.iter().map(|&u| copies(&world, u)).collect();
        for i in 0..5u8 {
            world.send(0, group, [40 + i; 16]);
            world.settle();
        }
        let last = members[members.len() - 1];
        world.send(0, group, [50; 16]);
        assert!(lose_delivery_to(&mut world, last), "the delivery went out");
        world.settle();
        assert!(
            world.acknowledged.contains_key(&[50; 16]),
            "the send is durable"
        );
        // Settling moves no clock: no checkpoint has written the fan-out progress.
        world.crash();
        assert_eq!(world.stats.recovery_held, 5, "held by every recipient");
        assert_eq!(
            world.stats.recovery_resumed, 1,
            "lost on its way to one member"
        );
        // Devices reconnect and catch up, and every fan-out retry has had its time.
        world.quiesce();
        for (at, &user_id) in members.iter().enumerate() {
            assert_eq!(
                copies(&world, user_id),
                before[at] + 6,
                "member {user_id} holds each message once"
            );
        }
        world.check();
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    // Proves, on the virtual clock, that a delivery lost on its way to a member's core is made
    // again while the server runs, once the member's core has confirmed nothing for the retry
    // wait: the message reaches the member's log with no restart.
    // Proves a direct conversation lives on its lower member's core, so that member's messages
    // never cross cores, with members spread over both cores.
    #[test]
    fn direct_conversations_live_on_their_lower_members_core() {
        let world = quiet(6, Config::default());
        let mut directs = 0;
        let mut spread = 0;
        for user in &world.users {
            for &conversation_id in &user.conversations {
                let record = world.store.conversation(conversation_id).unwrap().unwrap();
                if record.kind != ConversationKind::Direct as u8 {
                    continue;
                }
                let lo = record.members.iter().map(|m| m.user_id).min().unwrap();
                let hi = record.members.iter().map(|m| m.user_id).max().unwrap();
                assert_eq!(
                    crate::core::owner(conversation_id, 2),
                    crate::core::owner(lo, 2),
                    "conversation {conversation_id} of {lo} and {hi}"
                );
                directs += 1;
                spread += usize::from(crate::core::owner(lo, 2) != crate::core::owner(hi, 2));
            }
        }
        // Each of the 15 pairs is seen from both members.
        assert_eq!(directs, 30);
        assert!(spread > 0, "no pair has its members on different cores");
    }

    // A checkpoint is written a share at a time on the virtual clock, not all in one batch: after
    // its first share some users' stored fan-out watermarks still lag their logs, and within
    // the spread every one has caught up.
    #[test]
    fn a_checkpoint_is_written_in_shares_on_the_virtual_clock() {
        use crate::core::chat::{CHECKPOINT_MS, CHECKPOINT_SHARE_EVERY_MS};
        let mut world = quiet(6, Config::default());
        let under_way = |world: &World| {
            world
                .shards
                .iter()
                .any(|s| s.chat.checkpoint_share_due_ms().is_some())
        };
        // Users whose stored watermark of some conversation is below the newest seq of it in
        // their log.
        let lagging = |world: &World| {
            world
                .users
                .iter()
                .filter(|user| {
                    let mut newest: HashMap<u64, u64> = HashMap::new();
                    for (_, record) in world.log(user.user_id) {
                        if let UpdateRecord::Message {
                            conversation_id,
                            seq,
                            ..
                        } = record
                        {
                            let n = newest.entry(conversation_id).or_default();
                            *n = (*n).max(seq);
                        }
                    }
                    newest.iter().any(|(&conversation_id, &seq)| {
                        let stored = world.store.fanout_mark(user.user_id, conversation_id);
                        stored.expect("memory reads do not fail") < seq
                    })
                })
                .count()
        };
        // Whatever checkpoint setting up began ends first.
        for _ in 0..200 {
            if !under_way(&world) {
                break;
            }
            world.tick(CHECKPOINT_SHARE_EVERY_MS);
            world.settle();
        }
        assert!(!under_way(&world), "the first checkpoint ended");
        for device in 0..world.users.len() {
            let conversations = world.users[device].conversations.clone();
            for (i, conversation_id) in conversations.into_iter().enumerate() {
                world.send(
                    device,
                    conversation_id,
                    [
                        device as u8 + 1,
                        i as u8 + 1,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        9,
                    ],
                );
            }
        }
        world.settle();
        let before = lagging(&world);
        assert_eq!(before, world.users.len(), "every user has news");
        world.tick(CHECKPOINT_MS);
        world.settle();
        assert!(under_way(&world), "a checkpoint began");
        let after_one = lagging(&world);
        assert!(
            after_one > 0 && after_one < before,
            "the first share wrote some users, not all: {after_one} of {before} lag"
        );
        let mut shares = 1;
        while under_way(&world) && shares < 50 {
            world.tick(CHECKPOINT_SHARE_EVERY_MS);
            world.settle();
            shares += 1;
        }
        assert!(!under_way(&world), "the checkpoint ended within the spread");
        assert_eq!(lagging(&world), 0, "every watermark was written");
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    #[test]
    fn a_lost_delivery_is_made_again_on_the_virtual_clock() {
        let mut world = quiet(2, Config::default());
        let peer = world.users[1].user_id;
        let conversation_id = conversation_with(&world, 0, peer);
        let messages = |world: &World| {
            world
                .log(peer)
                .iter()
                .filter(|(_, r)| matches!(r, UpdateRecord::Message { conversation_id: c, .. } if *c == conversation_id))
                .count()
        };
        let before = messages(&world);
        world.send(0, conversation_id, [7; 16]);
        assert!(
            lose_delivery_to(&mut world, peer),
            "the delivery to the peer went out"
        );
        world.settle();
        assert_eq!(messages(&world), before, "lost on its way");
        world.tick(crate::core::chat::FANOUT_RETRY_MS);
        world.settle();
        world.tick(TICK_MS);
        world.settle();
        assert_eq!(messages(&world), before + 1, "delivered again");
    }

    // Proves that in a direct conversation a "mark all read" reads no further than the caller's
    // log holds (protocol §10.8): with the delivery of a new message to the peer lost on its way,
    // the peer's `MarkRead` up to `u64::MAX` stops at the message before it, so no receipt for the
    // new message can reach the sender's log before the message does (§17.2).
    #[test]
    fn mark_all_read_in_a_direct_conversation_stops_at_the_callers_log() {
        let mut world = quiet(2, Config::default());
        let peer = world.users[1].user_id;
        let conversation_id = conversation_with(&world, 0, peer);
        let sender = world.first_device(0);
        world.send(sender, conversation_id, [7; 16]);
        world.settle();
        world.send(sender, conversation_id, [8; 16]);
        assert!(
            lose_delivery_to(&mut world, peer),
            "the delivery to the peer went out"
        );
        world.settle();
        let last = world.store.last_seq(conversation_id).unwrap();
        let reader = world.first_device(1);
        let mark = MarkRead {
            conversation_id,
            up_to_seq: u64::MAX,
        };
        let reply = ask(&mut world, reader, mark.into());
        assert!(matches!(reply, Body::Ok(_)), "{reply:?}");
        let read = world.store.receipt(conversation_id, peer).unwrap().read_seq;
        assert_eq!(
            read,
            last - 1,
            "read up to the newest message in the reader's log"
        );
    }

    // Proves an `Ack` is capped at the head as `SyncPage.head` counts it (protocol §10.5), updates
    // shown before they were durable included, also when the recipient has more unacknowledged
    // messages than the core keeps for acks: the delivered receipt covers the newest message the
    // device was shown while its log entry still waited for its commit.
    #[test]
    fn an_ack_covers_updates_shown_before_they_were_durable_when_far_behind() {
        let mut world = quiet(4, Config::default());
        // A sender and a peer whose conversation lives on another core than the peer.
        let (user, peer_user, conversation_id) = (0..4)
            .flat_map(|a| (0..4).map(move |b| (a, b)))
            .filter(|(a, b)| a != b)
            .find_map(|(a, b)| {
                let peer = world.users[b].user_id;
                world.users[a].conversations.iter().find_map(|&c| {
                    let record = world.store.conversation(c).ok().flatten()?;
                    let direct = record.kind == ConversationKind::Direct as u8;
                    let apart = world.shards[0].owner(c) != world.shards[0].owner(peer);
                    (direct && apart && record.has_member(peer)).then_some((a, b, c))
                })
            })
            .expect("a direct conversation apart from one member's core");
        let peer = world.users[peer_user].user_id;
        let peer_core = world.shards[0].owner(peer);
        let sender = world.first_device(user);
        let reader = world.first_device(peer_user);
        for n in 0..crate::core::UNACKED_KEPT_MAX as u64 + 8 {
            let mut cmid = [0u8; 16];
            cmid[..8].copy_from_slice(&(n + 1).to_be_bytes());
            world.send(sender, conversation_id, cmid);
            world.settle();
        }
        // One more, shown to the reader while the peer's core never gets its commit answered.
        world.send(sender, conversation_id, [0xff; 16]);
        let last = world.store.last_seq(conversation_id).unwrap() + 1;
        for _ in 0..100 {
            for core in 0..world.options.cores {
                world.end_turn(core);
                if core != peer_core {
                    world.commit(core, false);
                }
            }
            let links: Vec<(usize, usize)> = world.links.keys().copied().collect();
            for link in links {
                world.deliver_mail(link);
            }
        }
        assert_eq!(
            world.store.last_seq(conversation_id).unwrap(),
            last,
            "the message was stored"
        );
        assert!(
            !world.commits[peer_core].is_empty(),
            "the peer's commit is still in flight"
        );
        let head = world.devices[reader].cursor;
        assert_eq!(
            head,
            world.log(peer).len() as u64 + 1,
            "the reader was shown the message before its log entry was durable"
        );
        world.ack(reader);
        world.settle();
        let delivered = delivered_to(&world, world.users[user].user_id, peer, conversation_id);
        assert_eq!(
            delivered,
            Some(last),
            "delivered up to the newest message shown"
        );
        world.check();
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    // Proves, on the virtual clock, that messages to a user with no device online queue one push
    // job, due when the coalescing window ends, however many arrive within the window, and that
    // the next window after the job is done gets a job of its own.
    #[test]
    fn push_jobs_coalesce_on_the_virtual_clock() {
        let config = Config {
            push_gateway_url: Some("http://127.0.0.1:9/_matrix/push/v1/notify".into()),
            ..Config::default()
        };
        let coalesce = config.push_coalesce_ms;
        let mut world = quiet(2, config);
        let register = RegisterPushToken {
            platform: PushPlatform::Fcm,
            app_id: "chat.tern.test".into(),
            token: "device-token".into(),
        };
        let bob = world.first_device(1);
        ask(&mut world, bob, register.into());
        for device in 0..world.devices.len() {
            if world.devices[device].user == 1 {
                world.disconnect(device);
            }
        }
        world.settle();
        let alice = world.first_device(0);
        let direct = world.users[0].conversations[0];
        let bob_id = world.users[1].user_id;
        let started = world.now_ms;
        for _ in 0..3 {
            world.next_cmid += 1;
            let mut cmid = [0u8; 16];
            cmid[..8].copy_from_slice(&world.next_cmid.to_be_bytes());
            world.send(alice, direct, cmid);
            world.settle();
            world.tick(coalesce / 4);
        }
        world.settle();
        let jobs = world
            .store
            .due_push_jobs(u64::MAX, 100)
            .expect("memory reads do not fail");
        let bobs: Vec<u64> = jobs
            .iter()
            .filter(|((_, user), _)| *user == bob_id)
            .map(|((due, _), _)| *due)
            .collect();
        assert_eq!(
            bobs,
            [started + coalesce],
            "one job, due when the window ends"
        );
    }

    // Proves that a recipient is shown a message before its log entry is durable, and what a
    // restart then does: after a clean shutdown (reservations closed) the log goes on with no
    // `Skipped`; after a crash the numbers a device may have seen become `Skipped` and nothing
    // else, and the device ends up with every message once.
    #[test]
    fn messages_are_shown_after_one_commit_and_a_crash_leaves_skipped_numbers() {
        // A clean shutdown, the peer going offline, and neither.
        for (clean, offline) in [(true, false), (false, true), (false, false)] {
            let mut world = quiet(2, Config::default());
            let peer = world.users[1].user_id;
            let conversation_id = conversation_with(&world, 0, peer);
            let shown_early = |world: &World| -> u64 {
                (0..world.options.cores)
                    .map(|core| {
                        let metrics = world.metrics.core(core);
                        metrics.updates_shown_early.get()
                    })
                    .sum()
            };
            let before = shown_early(&world);
            for n in 0..4u8 {
                world.send(0, conversation_id, [n + 1; 16]);
                world.settle();
            }
            assert!(shown_early(&world) > before, "nothing was shown early");
            if clean {
                for core in 0..world.options.cores {
                    world.shards[core].close_reservations();
                }
                world.settle();
            }
            if offline {
                for device in 0..world.devices.len() {
                    if world.devices[device].user == 1 {
                        world.disconnect(device);
                    }
                }
                world.settle();
            }
            world.crash();
            world.quiesce();
            world.send(0, conversation_id, [9; 16]);
            world.quiesce();
            let skipped = world
                .log(peer)
                .iter()
                .filter(|(_, r)| matches!(r, UpdateRecord::Skipped))
                .count();
            if clean || offline {
                assert_eq!(skipped, 0, "a closed reservation left skipped numbers");
            } else {
                assert!(skipped > 0, "a crash left no skipped numbers");
            }
            world.check();
            assert!(world.violations.is_empty(), "{:?}", world.violations);
        }
    }

    /// User 1 (the peer) goes offline on every device and user 0 sends them three messages: the
    /// peer's id, the conversation and one of the peer's devices, now behind its log.
    fn peer_offline_behind(world: &mut World) -> (u64, u64, usize) {
        let peer = world.users[1].user_id;
        let conversation_id = conversation_with(world, 0, peer);
        let devices: Vec<usize> = (0..world.devices.len())
            .filter(|d| world.devices[*d].user == 1)
            .collect();
        for &d in &devices {
            world.disconnect(d);
        }
        world.settle();
        for n in 0..3u8 {
            world.send(0, conversation_id, [n + 1; 16]);
            world.settle();
        }
        let device = devices[0];
        let head = world.log(peer).last().map_or(0, |(user_seq, _)| *user_seq);
        assert!(head > world.devices[device].cursor, "nothing to sync");
        (peer, conversation_id, device)
    }

    /// The newest seq of `conversation_id` whose delivered receipt from `reader` is in `user_id`'s
    /// log.
    fn delivered_to(world: &World, user_id: u64, reader: u64, conversation_id: u64) -> Option<u64> {
        world
            .log(user_id)
            .iter()
            .filter_map(|(_, r)| match *r {
                UpdateRecord::Receipt {
                    conversation_id: c,
                    user_id,
                    kind,
                    up_to_seq,
                    ..
                } if c == conversation_id
                    && user_id == reader
                    && kind == ReceiptKind::Delivered as u8 =>
                {
                    Some(up_to_seq)
                }
                _ => None,
            })
            .max()
    }

    /// Updates `Ack`s read back from logs on the cores, over all cores.
    fn ack_updates_read(world: &World) -> u64 {
        (0..world.options.cores)
            .map(|core| world.metrics.core(core).ack_updates_read.get())
            .sum()
    }

    // Proves that the `Ack` of a device back from offline finds the messages its `Sync` pages
    // brought in what the pages kept, however many pages it covers and with a live message after
    // them, and reads back on the core only the updates the device took before it went away and
    // never acknowledged; and that with no room to keep pages it reads back all it covers, with
    // the same receipts.
    #[test]
    fn an_ack_after_sync_pages_reads_no_log_back() {
        let mut world = quiet(3, Config::default());
        let (peer, conversation_id, device) = peer_offline_behind(&mut world);
        let sender = world.users[0].user_id;
        // The live message comes in another conversation, so each receipt shows its own source.
        let other = world.users[2].user_id;
        let other_conversation = *world.users[2]
            .conversations
            .iter()
            .find(|&&c| {
                c != conversation_id
                    && world
                        .store
                        .conversation(c)
                        .ok()
                        .flatten()
                        .is_some_and(|r| r.has_member(peer))
            })
            .expect("another conversation with the peer");
        // Enough for three of the device's pages of seven.
        for n in 3..15u8 {
            world.send(0, conversation_id, [n + 1; 16]);
            world.settle();
        }
        let round = |world: &mut World, paged: [u8; 16], live: [u8; 16], room: bool| {
            let (_, last_paged) = world.acknowledged[&paged];
            let reads = ack_updates_read(world);
            // The device took updates before it went away that it never acknowledged.
            let cursor = world.devices[device].cursor;
            let acked = world.shards[owner(peer, 2)].users[&peer].acked;
            assert!(
                !room || cursor > acked,
                "nothing unacknowledged from before"
            );
            let pages = world.metrics.core(owner(peer, 2)).delivered_sync.get();
            world.authenticate(device, false);
            world.quiesce();
            assert!(world.devices[device].live, "the device did not catch up");
            assert!(
                world.metrics.core(owner(peer, 2)).delivered_sync.get() >= pages + 14,
                "the device did not sync several pages"
            );
            // One more message, shown live.
            let sent_by = world
                .devices
                .iter()
                .position(|d| d.user == 2)
                .expect("a device of the third user");
            world.send(sent_by, other_conversation, live);
            world.quiesce();
            let (_, last_live) = world.acknowledged[&live];
            assert_ne!(
                delivered_to(world, sender, peer, conversation_id),
                Some(last_paged)
            );
            // One `Ack` for all the pages and the live message, as a client acknowledging on a
            // timer sends.
            world.ack(device);
            world.quiesce();
            // With room, only those are read back; without, all the `Ack` covers.
            let read_back = ack_updates_read(world) - reads;
            match room {
                true => assert_eq!(read_back, cursor - acked),
                false => assert_eq!(read_back, world.devices[device].cursor - acked),
            }
            assert_eq!(
                delivered_to(world, sender, peer, conversation_id),
                Some(last_paged),
                "the sender of the paged messages was not told of their delivery"
            );
            assert_eq!(
                delivered_to(world, other, peer, other_conversation),
                Some(last_live),
                "the sender of the live message was not told of its delivery"
            );
        };
        round(&mut world, [15; 16], [0xEE; 16], true);
        // Again with no room to keep anything for acks: the `Ack` reads the log back.
        world.disconnect(device);
        world.settle();
        for n in 15..30u8 {
            world.send(0, conversation_id, [n + 1; 16]);
            world.settle();
        }
        for shard in world.shards.iter_mut() {
            shard.unacked_budget = 0;
        }
        round(&mut world, [30; 16], [0xEF; 16], false);
        world.check();
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    // Proves that past the reads a core may have out, the next ones wait for a reader, in order,
    // instead of being read on the core, and go out as answers come back; and that one whose
    // connection closed while it waited is dropped, never read.
    #[test]
    fn reads_past_the_bound_wait_for_a_reader() {
        let mut world = quiet(48, Config::default());
        world.hold_reads = true;
        // Nothing is found in memory: every read goes to a reader.
        world.faults.set_uncached(true);
        let core = 0;
        let devices: Vec<usize> = (0..world.devices.len())
            .filter(|&d| {
                world.devices[d].authenticated
                    && world.devices[d].conn.is_some_and(|(c, _)| c == core)
            })
            .collect();
        assert!(devices.len() > READS_IN_FLIGHT_MAX + 2, "too few devices");
        world.replies.clear();
        let reads = world.stats.reads;
        for &d in &devices {
            // The whole log, which is not empty (the setup opened conversations).
            let sync = Sync { since: 0, limit: 0 };
            assert!(world.request_as(d, sync.into(), Asked::Other));
        }
        world.end_turn(core);
        assert_eq!(world.reads.len(), READS_IN_FLIGHT_MAX);
        assert!(world.replies.is_empty(), "a page was read on the core");
        // One that waits goes away.
        let gone = devices[READS_IN_FLIGHT_MAX + 1];
        world.disconnect(gone);
        let mut answered = 0;
        while !world.reads.is_empty() {
            world.answer_read(0, false);
            world.end_turn(core);
            answered += 1;
            assert!(world.reads.len() <= READS_IN_FLIGHT_MAX);
        }
        assert_eq!(
            answered,
            devices.len() - 1,
            "the gone device's read went out"
        );
        assert_eq!(world.stats.reads - reads, answered as u64);
        let mut paged: Vec<usize> = world
            .replies
            .iter()
            .filter(|(_, body)| matches!(body, Body::SyncPage(_)))
            .map(|(d, _)| *d)
            .collect();
        paged.sort_unstable();
        let expected: Vec<usize> = devices.iter().copied().filter(|&d| d != gone).collect();
        assert_eq!(paged, expected);
        world.check();
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    // Proves a small `Sync` whose reads find everything in memory is answered on the core, with
    // nothing handed to a reader, and that a large one goes to a reader all the same.
    #[test]
    fn a_sync_found_in_memory_is_answered_on_the_core() {
        let mut world = quiet(2, Config::default());
        let (peer, conversation_id, device) = peer_offline_behind(&mut world);
        let head = world.log(peer).last().map_or(0, |(user_seq, _)| *user_seq);
        world.faults.set_uncached(false);
        let reads = world.stats.reads;
        world.authenticate(device, false);
        let started = world.clock;
        while world.devices[device].syncing || !world.devices[device].live {
            world.settle();
            for core in 0..world.options.cores {
                world.end_turn(core);
            }
            assert!(world.clock < started + 10_000, "the sync never ended");
        }
        assert_eq!(world.devices[device].cursor, head);
        assert_eq!(world.stats.reads, reads, "a read went to a reader");
        assert!(world.reads.is_empty());
        // A page larger than the core builds itself goes to a reader, in memory or not.
        world.disconnect(device);
        world.settle();
        for n in 0..READ_ON_CORE_ENTRIES_MAX as u64 + 1 {
            let mut cmid = [0xAB; 16];
            cmid[..8].copy_from_slice(&n.to_be_bytes());
            world.send(0, conversation_id, cmid);
            world.settle();
        }
        world.authenticate(device, false);
        world.quiesce();
        assert_eq!(
            world.stats.reads, reads,
            "the device pages in sevens, on the core"
        );
        // An app asks for the server's largest page.
        world.replies.clear();
        let whole = Sync { since: 0, limit: 0 };
        assert!(world.request_as(device, whole.into(), Asked::Other));
        world.settle();
        match world.replies.pop() {
            Some((_, Body::SyncPage(page))) => {
                assert!(page.updates.len() > READ_ON_CORE_ENTRIES_MAX)
            }
            other => panic!("Sync answered {other:?}"),
        }
        assert!(
            world.stats.reads > reads,
            "a large page was built on the core"
        );
        world.check();
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    // Proves a `Sync` page whose read comes back after the log grew ends at the head it was read
    // to and says there is more, so the device asks again and catches up without a gap; and that
    // a read whose connection closed meanwhile sends nothing.
    #[test]
    fn a_sync_read_that_comes_back_late_ends_where_it_was_read() {
        let mut world = quiet(2, Config::default());
        let (peer, conversation_id, device) = peer_offline_behind(&mut world);
        let head_then = world.log(peer).last().map_or(0, |(user_seq, _)| *user_seq);
        world.hold_reads = true;
        world.authenticate(device, false);
        world.settle();
        // The sync was asked in the last step; its read goes out as its core's turn ends.
        world.end_turn(owner(peer, world.options.cores));
        assert_eq!(
            world.reads.len(),
            1,
            "the sync's read did not go to a reader"
        );
        assert!(world.devices[device].syncing);
        // The log grows while the read is out.
        for n in 3..6u8 {
            world.send(0, conversation_id, [n + 1; 16]);
            world.settle();
        }
        let head_now = world.log(peer).last().map_or(0, |(user_seq, _)| *user_seq);
        assert!(head_now > head_then);
        let (core, _) = world.reads[0];
        world.answer_read(0, false);
        world.end_turn(core);
        let d = &world.devices[device];
        assert_eq!(
            d.cursor, head_then,
            "the page did not end at the head it was read to"
        );
        assert!(
            !d.live,
            "a page that ended early turned the connection live"
        );
        assert!(d.syncing, "the device did not ask for the rest");
        world.end_turn(core);
        assert_eq!(world.reads.len(), 1, "the next page's read did not go out");
        // The device goes away while that read is out: its answer sends nothing.
        let delivered = world.metrics.core(core).delivered_sync.get();
        world.disconnect(device);
        world.answer_read(0, false);
        world.end_turn(core);
        assert_eq!(world.metrics.core(core).delivered_sync.get(), delivered);
        world.hold_reads = false;
        world.quiesce();
        assert_eq!(world.devices[device].cursor, head_now);
        world.check();
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    fn seeds() -> std::ops::RangeInclusive<u64> {
        if let Some(seed) = std::env::var("TERN_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return seed..=seed;
        }
        let count = std::env::var("TERN_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        1..=count
    }

    // Proves the delivery invariants hold across hundreds of seeded runs with commit failures,
    // full disks, crashes and reordered mail, and that the runs really met those faults.
    #[test]
    fn delivery_invariants_hold_under_faults() {
        let mut total = Stats::default();
        for seed in seeds() {
            // One run in five reads on the cores, as `ternd` does when its readers are busy.
            let options = Options {
                reads_on_core: seed % 5 == 0,
                ..Options::default()
            };
            let stats = run_seed(seed, options);
            total.commits += stats.commits;
            total.sends += stats.sends;
            total.repeats += stats.repeats;
            total.group_changes += stats.group_changes;
            total.removed += stats.removed;
            total.added_back += stats.added_back;
            total.failed_commits += stats.failed_commits;
            total.crashes += stats.crashes;
            total.disk_full += stats.disk_full;
            total.acknowledged += stats.acknowledged;
            total.reconnects += stats.reconnects;
            total.shown_early += stats.shown_early;
            total.shown_again += stats.shown_again;
            total.cursors_reset += stats.cursors_reset;
            total.skipped += stats.skipped;
            total.recovery_resumed += stats.recovery_resumed;
            total.recovery_held += stats.recovery_held;
            total.reads += stats.reads;
            total.failed_reads += stats.failed_reads;
            total.history_pages += stats.history_pages;
            total.memory_flips += stats.memory_flips;
        }
        println!("{total:?}");
        if seeds().count() >= 50 {
            assert!(total.failed_commits > 0, "{total:?}");
            assert!(total.crashes > 0, "{total:?}");
            assert!(total.disk_full > 0, "{total:?}");
            assert!(total.acknowledged > 1000, "{total:?}");
            assert!(total.group_changes > 0, "{total:?}");
            assert!(total.removed > 0 && total.added_back > 0, "{total:?}");
            // Crashes left fan-outs for recovery, both unfinished and finished but not recorded.
            assert!(total.recovery_resumed > 0, "{total:?}");
            assert!(total.recovery_held > 0, "{total:?}");
            // Syncs went to readers, whose answers came late and out of order, and some failed.
            assert!(total.reads > 100 && total.failed_reads > 0, "{total:?}");
            assert!(total.history_pages > 100, "{total:?}");
            assert!(total.memory_flips > 0, "{total:?}");
        }
    }

    // Proves a seed replays exactly: two runs of one seed do the same things.
    #[test]
    fn a_seed_replays_the_same_run() {
        let a = run_seed(7, Options::default());
        let b = run_seed(7, Options::default());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
