//! Per-core chat logic: sessions, accounts, conversations, the message path, sync and receipts.
//!
//! A [`Shard`] is one core's state. It never touches sockets, threads, the clock or the disk: the
//! runtime hands it decoded frames, mail, commit results and read results together with the
//! current time, and collects what it produced: frames for connections ([`Output`]), mail for
//! other cores, a batch of writes for the committer ([`Commit`]) and reads for readers.
//!
//! # Commits, in the order the calls come
//!
//! 1. `handle_request`, `handle_mail` and `tick` put writes into the pending [`Batch`] and hold the
//!    replies and mail that must wait until those writes are durable.
//! 2. [`Shard::end_turn`], once per loop turn, seals the batch as a [`Commit`] (group commit) and
//!    returns it with what may go out now. The shard keeps serving while the committer writes: its
//!    store reads its own staged writes through an overlay, and at most
//!    [`COMMITS_IN_FLIGHT_MAX`] batches are in flight (past that the pending batch grows).
//! 3. [`Shard::handle_committed`] takes the committer's answer, in batch order. Durable: what was
//!    held for that batch is released. Failed: that batch and every later one are void, as if
//!    never made; each request that waited on them is answered `INTERNAL` (retryable), on
//!    whichever core it came from, and the caches reload from what is durable.
//!
//! So an acknowledgement always means durable, and no request waits forever.
//!
//! # Reads off the core
//!
//! The reads of what is durable for a `Sync` page, a `History` page or a `Download` run on the
//! core only if they are small and find everything in memory; otherwise they go out with the turn
//! as a [`reads::Read`], a reader runs it and [`Shard::handle_read`] replies from its answer. So a
//! read that goes to the device holds no other connection of the core ([`reads`]).
//!
//! Ownership: a user belongs to core `owner(user_id)`, a conversation to `owner(conversation_id)`.
//! Only the owner core writes a user's devices, update log and watermarks, or a conversation's
//! messages; see the store's schema for who writes what.

pub(crate) mod accounts;
pub(crate) mod chat;
pub(crate) mod groups;
pub(crate) mod keys;
pub(crate) mod limits;
pub(crate) mod mail;
pub(crate) mod media;
pub(crate) mod presence;
pub(crate) mod push;
pub(crate) mod reads;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use tern_protocol::frames::Error as ErrorFrame;
use tern_protocol::{Body, ErrorCode, Frame, Update, UpdateEventBytes};

use crate::config::Config;
use crate::ids::IdGen;
use crate::store::records::{MessageRecord, UpdateRecord};
use crate::store::{Batch, Store, StoreError};
use mail::{GroupChange, Mail};

/// Users whose state a core keeps in memory before it starts over (each entry is tens of bytes).
pub(crate) const CACHED_USERS_MAX: usize = 1 << 20;

/// The hasher of the core's maps: foldhash, several times faster than the standard SipHash on the
/// integer ids these maps are keyed by. The simulator needs a run to replay exactly, so under test
/// it is fixed; in the server it is seeded at random per process, so no client can aim keys at one
/// bucket (and the ids are the server's own, not chosen by clients).
#[cfg(not(test))]
pub(crate) type Hasher = foldhash::fast::RandomState;
#[cfg(test)]
pub(crate) type Hasher = foldhash::fast::FixedState;
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, Hasher>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, Hasher>;

/// How often the runtime calls [`Shard::tick`].
pub(crate) const TICK_MS: u64 = 250;

/// Batches a core may have handed to the committer and not yet seen answered.
pub(crate) const COMMITS_IN_FLIGHT_MAX: usize = 2;

/// A batch for the committer: write it, then answer [`Shard::handle_committed`] with `id`.
pub(crate) struct Commit {
    pub(crate) id: u64,
    /// Batches of an older epoch than the last failure are void: the committer refuses them.
    pub(crate) epoch: u64,
    /// Sorted, and shared with the core's overlay until it is durable.
    pub(crate) batch: Arc<Batch>,
}

/// What a loop turn produced: frames and mail to send now, perhaps a batch to commit, and reads
/// for readers ([`reads`]).
pub(crate) struct Turn {
    pub(crate) outputs: Vec<Output>,
    pub(crate) mail: Vec<(usize, Mail)>,
    pub(crate) commit: Option<Commit>,
    pub(crate) reads: Vec<reads::Read>,
}

/// What waits for one batch in flight.
#[derive(Default)]
struct Held {
    id: u64,
    outputs: Vec<Output>,
    mail: Vec<(usize, Mail)>,
    /// Updates appended in the batch, pushed to live devices once it is durable.
    pushes: Vec<(u64, u64, UpdateRecord)>,
    /// The messages those updates carry, so pushing them reads nothing back.
    fresh: HashMap<(u64, u64), Arc<MessageRecord>>,
    /// Fan-outs of messages stored in the batch.
    fanouts: Vec<(u64, u64)>,
    /// Mail whose effects the batch holds and that no other core sends again (appends to logs).
    replay: Vec<Mail>,
    /// Fan-out watermarks a checkpoint wrote in the batch.
    marks: Vec<(u64, u64)>,
    /// To-device messages queued in the batch, pushed to live devices once it is durable.
    to_device: Vec<(u64, u32, tern_protocol::e2e::ToDeviceMessage)>,
    /// Updates in the batch that were shown before it was durable: heads to move, nothing to push.
    shown: Vec<(u64, u64)>,
    /// Reservations in the batch, by user: usable once it is durable.
    reservations: Vec<(u64, u64)>,
}

/// A connection's id, unique on its core for the life of the process.
pub(crate) type ConnId = u64;

/// The core that owns a user or a conversation id.
pub(crate) fn owner(id: u64, cores: usize) -> usize {
    // A multiplicative hash spreads time-ordered ids (whose low bits are a core and a counter).
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % cores.max(1)
}

/// The core that owns a username (it serialises registrations of that name).
pub(crate) fn name_owner(username: &str, cores: usize) -> usize {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in username.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    owner(hash, cores)
}

/// Something the runtime must do for a connection of this core.
#[derive(Debug)]
pub(crate) enum Output {
    /// Queue a frame.
    Frame { conn: ConnId, frame: Frame },
    /// Queue an update event encoded once for all it goes to, with this connection's `user_seq`.
    /// Shared by counting references on the core's thread: the bytes' own shared handle would
    /// cost two locked instructions per delivery.
    Update {
        conn: ConnId,
        user_seq: u64,
        event: Rc<UpdateEventBytes>,
    },
    /// Send a connection-level error (request id 0) and close.
    Close {
        conn: ConnId,
        code: ErrorCode,
        message: String,
    },
}

/// An authenticated connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) user_id: u64,
    pub(crate) device_id: u32,
    /// Whether `Sync` has caught up, so new updates are pushed as events.
    pub(crate) live: bool,
    /// This connection's `Send` rate.
    pub(crate) sends: limits::TokenBucket,
    /// This connection's `SubscribePresence` rate.
    pub(crate) subscribes: limits::TokenBucket,
    /// This connection's `Typing` rate, over all its conversations.
    pub(crate) typing: limits::TokenBucket,
}

/// The rate-limited actions, for [`Shard::take_token`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Send,
    Typing,
    SubscribePresence,
}

/// In-memory state of a user this core owns.
#[derive(Debug, Default)]
pub(crate) struct UserState {
    /// The newest committed `user_seq`.
    pub(crate) head: u64,
    /// The newest `user_seq` assigned, committed or pending.
    pub(crate) next_seq: u64,
    /// The highest `user_seq` any device acknowledged.
    pub(crate) acked: u64,
    /// The user's `Send` rate over all their devices, once they sent.
    pub(crate) sends: Option<limits::TokenBucket>,
    /// The user's `Typing` rate over all their devices, once they typed.
    pub(crate) typing: Option<limits::TokenBucket>,
    /// The user's `SubscribePresence` rate over all their devices, once they subscribed.
    pub(crate) subscribes: Option<limits::TokenBucket>,
    /// Messages from others in the log above `unacked_from`, oldest first: what an `Ack` needs
    /// to move delivered watermarks without reading the log back. Kept while a device is online,
    /// at most [`UNACKED_KEPT_MAX`], and while the core's room for them is within its budget
    /// ([`Shard::unacked_budget`]).
    pub(crate) unacked: VecDeque<UnackedMessage>,
    /// Every message from others with a `user_seq` above this one is in `unacked`.
    pub(crate) unacked_from: u64,
    /// The messages from others of the `Sync` pages last sent below `unacked_from` (consecutive
    /// pages added up): what the `Ack` of those pages needs, so that it does not read back on the
    /// core what a reader just read (see [`UserState::keep_paged`]).
    pub(crate) paged: Option<Paged>,
    /// The highest `user_seq` shown to devices before it was durable (see [`Shard::append`]).
    pub(crate) shown: u64,
    /// Those updates, above `head` and in order: what a failed commit must stage again under the
    /// same numbers, and what `Sync` pages include.
    pub(crate) early: Vec<(u64, UpdateRecord)>,
    /// The durable reservation of this run: updates up to it may be shown before they are durable.
    pub(crate) reserved: u64,
    /// The newest reservation staged.
    pub(crate) reserving: u64,
}

impl UserState {
    /// The newest `user_seq` devices may have been shown: durable, or shown early.
    pub(crate) fn shown_head(&self) -> u64 {
        self.head.max(self.shown)
    }

    /// Keeps a message from someone else, just put in `user_id`'s log at `user_seq`, for the
    /// next `Ack`, if the user is `online` and the core has `room`. Returns how much room
    /// (capacity, in entries) `unacked` gained or gave back, for the core's count.
    pub(crate) fn keep_unacked(
        &mut self,
        user_id: u64,
        online: bool,
        room: bool,
        user_seq: u64,
        update: &UpdateRecord,
    ) -> isize {
        let UpdateRecord::Message {
            conversation_id,
            seq,
            sender,
        } = *update
        else {
            return 0;
        };
        if sender == user_id {
            return 0;
        }
        let before = self.unacked.capacity() as isize;
        if online && room && self.unacked.len() < UNACKED_KEPT_MAX {
            self.unacked.push_back(UnackedMessage {
                user_seq,
                conversation_id,
                seq,
                sender,
            });
        } else {
            // Offline, too far behind, or the core keeps too many: its next Ack reads the log
            // from here, and the room goes back.
            self.unacked = VecDeque::new();
            self.unacked_from = user_seq;
        }
        self.unacked.capacity() as isize - before
    }

    /// Room (capacity, in entries) of what this state keeps for acks, for the core's count.
    pub(crate) fn kept_room(&self) -> usize {
        self.unacked.capacity() + self.paged.as_ref().map_or(0, |p| p.messages.capacity())
    }

    /// Keeps the messages from others among a `Sync` page's entries `(from, to]`, in order, for
    /// the `Ack` that covers that page, when that `Ack` would not find them in `unacked` and the
    /// core has `room`. A page that continues the one kept before is added to it (a client may
    /// acknowledge several pages at once), up to [`UNACKED_KEPT_MAX`] messages. Returns how much
    /// room this took or gave back.
    pub(crate) fn keep_paged<'a>(
        &mut self,
        user_id: u64,
        room: bool,
        from: u64,
        to: u64,
        entries: impl Iterator<Item = (u64, &'a UpdateRecord)>,
    ) -> isize {
        let before = self.kept_room() as isize;
        if from >= to {
            // An empty page: whatever was kept still stands.
            return 0;
        }
        if !(room && from < self.unacked_from) {
            self.paged = None;
            return self.kept_room() as isize - before;
        }
        let messages: Vec<UnackedMessage> = entries
            .filter(|(user_seq, _)| from < *user_seq && *user_seq <= to)
            .filter_map(|(user_seq, update)| match *update {
                UpdateRecord::Message {
                    conversation_id,
                    seq,
                    sender,
                } if sender != user_id => Some(UnackedMessage {
                    user_seq,
                    conversation_id,
                    seq,
                    sender,
                }),
                _ => None,
            })
            .collect();
        match &mut self.paged {
            Some(paged)
                if paged.to == from
                    && paged.messages.len() + messages.len() <= UNACKED_KEPT_MAX =>
            {
                paged.messages.extend(messages);
                paged.to = to;
            }
            _ => self.paged = Some(Paged { from, to, messages }),
        }
        self.kept_room() as isize - before
    }

    /// The messages from others in `(from, to]` that the pages kept hold, through `each`; what is
    /// left above `to` stays for the next `Ack`. Returns the part of the log the pages covered,
    /// `(start, reach]` with `start` at or above `from` (`None`: they hold nothing of the range),
    /// and how much room this gave back.
    pub(crate) fn take_paged(
        &mut self,
        from: u64,
        to: u64,
        mut each: impl FnMut(&UnackedMessage),
    ) -> (Option<(u64, u64)>, isize) {
        let before = self.kept_room() as isize;
        let span = match self.paged.as_mut() {
            Some(paged) if paged.from < to && from < paged.to => {
                let upto = paged.messages.partition_point(|m| m.user_seq <= to);
                paged
                    .messages
                    .drain(..upto)
                    .filter(|m| m.user_seq > from)
                    .for_each(|m| each(&m));
                let span = (paged.from.max(from), paged.to);
                paged.from = paged.to.min(to);
                Some(span)
            }
            _ => None,
        };
        if self
            .paged
            .as_ref()
            .is_some_and(|p| p.from == p.to || p.to <= to)
        {
            // Used up, or passed: it can serve no later `Ack`.
            self.paged = None;
        }
        (span, self.kept_room() as isize - before)
    }

    /// Takes the kept messages up to `user_seq` `to` out, in order, through `each`. Returns how
    /// much room `unacked` gave back: once mostly empty, it shrinks, so a burst's room does not
    /// stay with a user who went quiet.
    pub(crate) fn take_acked(&mut self, to: u64, mut each: impl FnMut(&UnackedMessage)) -> isize {
        let before = self.unacked.capacity() as isize;
        let acked = self.unacked.partition_point(|m| m.user_seq <= to);
        for message in self.unacked.drain(..acked) {
            each(&message);
        }
        if self.unacked.capacity() > UNACKED_ROOM_MIN
            && self.unacked.len() < self.unacked.capacity() / 4
        {
            self.unacked.shrink_to(self.unacked.len() * 2);
        }
        self.unacked.capacity() as isize - before
    }
}

/// How far ahead of a user's log a reservation reaches, and so how many `Skipped` updates a crash
/// can leave in it at most.
pub(crate) const RESERVATION_AHEAD: u64 = 32;

/// Messages from others a user's state keeps for its next `Ack`; past it, the `Ack` reads the log.
/// A member of busy groups is shown hundreds of messages a second, and under load their `Ack`
/// comes a second or more after the messages it covers: at 1,024, such `Ack`s read the log back,
/// which took a tenth of the core threads' time in W2 (`bench/RESULTS.md`).
pub(crate) const UNACKED_KEPT_MAX: usize = 4 * 1024;

/// Room for entries (capacity) a core gives all its users' `unacked` together, 32 bytes each, so
/// 32 MiB: the bound on that memory, whatever the number of users (one push may pass it by at most
/// [`UNACKED_KEPT_MAX`], when a list doubles). Past it, a user's next message drops what they
/// kept, and their next `Ack` reads the log.
pub(crate) const UNACKED_KEPT_PER_CORE: usize = 1 << 20;

/// Room a user's `unacked` keeps however empty it gets: below it, it is not worth shrinking. Under
/// test it is 4, so the simulator's few messages per user shrink lists too.
const UNACKED_ROOM_MIN: usize = if cfg!(test) { 4 } else { 64 };

/// Bytes of each block that update events are encoded into (see [`Shard::push_live`]). Events
/// live until the turn's frames are queued, so a block is freed soon after it fills.
const EVENT_ARENA_BYTES: usize = 16 * 1024;

/// The messages from others of a `Sync` page, `(from, to]` of the log, in order.
#[derive(Debug)]
pub(crate) struct Paged {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) messages: Vec<UnackedMessage>,
}

/// A message update in a user's log that an `Ack` turns into a delivered receipt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnackedMessage {
    pub(crate) user_seq: u64,
    pub(crate) conversation_id: u64,
    pub(crate) seq: u64,
    pub(crate) sender: u64,
}

// The size [`UNACKED_KEPT_PER_CORE`]'s bound in bytes counts on.
const _: () = assert!(std::mem::size_of::<UnackedMessage>() == 32);

/// One core's state.
pub(crate) struct Shard {
    pub(crate) core: usize,
    pub(crate) cores: usize,
    pub(crate) config: Arc<Config>,
    /// The database as this core sees it: what is durable, with its own staged batches over it.
    pub(crate) store: Store,
    /// What is durable only: what clients may be shown (logs and history).
    pub(crate) committed: Store,
    /// The same, read from memory only: a read that needs the device goes to a reader instead
    /// ([`reads`]).
    pub(crate) cached: Store,
    pub(crate) ids: IdGen,
    /// The id high-water mark the batches handed to the committer carry, so that each batch
    /// writes it once, not once per id.
    ids_sealed: u64,
    pub(crate) batch: Batch,
    /// Batches handed to the committer and not yet answered, oldest first.
    in_flight: VecDeque<Held>,
    /// The id of the newest batch handed out.
    last_batch: u64,
    /// Batches handed out whose answer has not come back, voided ones included.
    unanswered: usize,
    /// Bumped by every failed commit.
    epoch: u64,
    /// The time of the latest input, for work a commit result starts.
    last_now_ms: u64,
    /// When uploads were last swept for expiry (the first sweep is one interval after start).
    last_media_sweep_ms: u64,
    /// Frames to send now, not waiting on the batch.
    outputs: Vec<Output>,
    /// Frames to send once the batch is committed.
    after_commit: Vec<Output>,
    /// Mail to send once the batch is committed, by destination core.
    mail_after_commit: Vec<(usize, Mail)>,
    /// Mail to send now.
    mail_now: Vec<(usize, Mail)>,
    /// Appends handled into the pending batch, replayed if it fails (see [`Held::replay`]).
    replay: Vec<Mail>,
    /// Updates appended in this batch, pushed to live sessions after the commit.
    pushes: Vec<(u64, u64, UpdateRecord)>,
    /// Updates appended in this batch and already shown (see [`Shard::append`]).
    shown: Vec<(u64, u64)>,
    /// Reservations staged in this batch.
    reservations: Vec<(u64, u64)>,
    /// The event frames of messages shown early in this turn, so each is encoded once per turn.
    shown_events: HashMap<(u64, u64), Rc<UpdateEventBytes>>,
    /// Where update events are encoded: blocks of [`EVENT_ARENA_BYTES`] that many share.
    events: RefCell<BytesMut>,
    /// This run's id, which reservations carry: the first id the core issued for one, unique across
    /// runs because the id's high-water mark is in the same batch as the reservation.
    run: Option<u64>,
    pub(crate) sessions: HashMap<ConnId, Session>,
    pub(crate) online: HashMap<u64, Vec<ConnId>>,
    pub(crate) users: HashMap<u64, UserState>,
    /// Room (capacity, in entries) of all of `users`' `unacked` together.
    pub(crate) unacked_room: usize,
    /// No `unacked` grows while `unacked_room` is at this: [`UNACKED_KEPT_PER_CORE`] (the
    /// simulator lowers it).
    pub(crate) unacked_budget: usize,
    pub(crate) chat: chat::ChatState,
    pub(crate) accounts: accounts::AccountState,
    pub(crate) presence: presence::PresenceState,
    pub(crate) push: push::PushState,
    pub(crate) media: media::MediaState,
    pub(crate) keys: keys::KeysState,
    /// Reads handed to readers and the requests waiting for them.
    pub(crate) reads: reads::ReadState,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl Shard {
    /// The state of core `core` of `cores`.
    /// `high_water` is the newest id the core persisted (from [`Store::id_high_water`]).
    pub(crate) fn new(
        core: usize,
        cores: usize,
        config: Arc<Config>,
        store: Store,
        high_water: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Shard {
        let batch = store.batch();
        Shard {
            core,
            cores,
            config,
            committed: store.clone(),
            cached: store.memory_only(),
            store: store.for_core(),
            ids: IdGen::new(core, high_water),
            ids_sealed: high_water,
            batch,
            in_flight: VecDeque::new(),
            last_batch: 0,
            unanswered: 0,
            epoch: 0,
            last_now_ms: 0,
            last_media_sweep_ms: 0,
            outputs: Vec::new(),
            after_commit: Vec::new(),
            mail_after_commit: Vec::new(),
            mail_now: Vec::new(),
            replay: Vec::new(),
            pushes: Vec::new(),
            shown: Vec::new(),
            reservations: Vec::new(),
            shown_events: HashMap::default(),
            events: RefCell::new(BytesMut::new()),
            run: None,
            sessions: HashMap::default(),
            online: HashMap::default(),
            users: HashMap::default(),
            unacked_room: 0,
            unacked_budget: UNACKED_KEPT_PER_CORE,
            chat: chat::ChatState::new(cores),
            accounts: accounts::AccountState::default(),
            presence: presence::PresenceState::default(),
            push: push::PushState::default(),
            media: media::MediaState::default(),
            keys: keys::KeysState::default(),
            reads: reads::ReadState::default(),
            metrics,
        }
    }

    /// The next id. Its high-water mark goes into the batch when the turn ends
    /// ([`Shard::end_turn`]), which is the batch that holds whatever uses the id.
    pub(crate) fn next_id(&mut self, now_ms: u64) -> u64 {
        self.ids.next(now_ms)
    }

    pub(crate) fn owner(&self, id: u64) -> usize {
        owner(id, self.cores)
    }

    /// Whether a connection of this core is authenticated.
    pub(crate) fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions.get(&conn)
    }

    /// Replies now.
    pub(crate) fn reply(&mut self, conn: ConnId, request_id: u32, body: impl Into<Body>) {
        self.outputs.push(Output::Frame {
            conn,
            frame: Frame::new(request_id, body),
        });
    }

    /// Replies once the pending batch is durable.
    pub(crate) fn reply_after_commit(
        &mut self,
        conn: ConnId,
        request_id: u32,
        body: impl Into<Body>,
    ) {
        self.after_commit.push(Output::Frame {
            conn,
            frame: Frame::new(request_id, body),
        });
    }

    /// Sends an error reply now.
    /// Answers `RATE_LIMITED`, saying when to try again.
    pub(crate) fn reply_rate_limited(
        &mut self,
        conn: ConnId,
        request_id: u32,
        retry_after_ms: u32,
        message: &str,
    ) {
        let error = ErrorFrame {
            code: ErrorCode::RATE_LIMITED,
            retry_after_ms,
            message: message.to_owned(),
        };
        self.reply(conn, request_id, error);
    }

    /// Takes a token for `action` from the connection's bucket and the user's, or says in how many
    /// milliseconds to retry.
    pub(crate) fn take_token(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        user_id: u64,
        action: Action,
    ) -> Result<(), u32> {
        if let Some(session) = self.sessions.get_mut(&conn) {
            match action {
                Action::Send => session.sends.take(now_ms)?,
                Action::Typing => session.typing.take(now_ms)?,
                Action::SubscribePresence => session.subscribes.take(now_ms)?,
            }
        }
        let send_rate = self.config.send_rate_per_user;
        let Ok(state) = self.user_state(user_id) else {
            return Ok(());
        };
        let (bucket, burst, rate) = match action {
            Action::Send => (
                &mut state.sends,
                send_rate * limits::SEND_BURST_SECONDS,
                send_rate,
            ),
            Action::Typing => (
                &mut state.typing,
                limits::TYPING_PER_USER_BURST,
                limits::TYPING_PER_USER_PER_SECOND,
            ),
            Action::SubscribePresence => (
                &mut state.subscribes,
                limits::PRESENCE_SUBSCRIBES_PER_USER_BURST,
                limits::PRESENCE_SUBSCRIBES_PER_USER_PER_SECOND,
            ),
        };
        bucket
            .get_or_insert_with(|| limits::TokenBucket::new(burst, rate, now_ms))
            .take(now_ms)
    }

    pub(crate) fn reply_error(
        &mut self,
        conn: ConnId,
        request_id: u32,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        let error = ErrorFrame {
            code,
            retry_after_ms: 0,
            message: message.into(),
        };
        self.reply(conn, request_id, error);
    }

    /// Queues an event for a connection now.
    pub(crate) fn event(&mut self, conn: ConnId, body: impl Into<Body>) {
        self.outputs.push(Output::Frame {
            conn,
            frame: Frame::event(body),
        });
    }

    /// Closes a connection with a connection-level error.
    pub(crate) fn close(&mut self, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
        self.outputs.push(Output::Close {
            conn,
            code,
            message: message.into(),
        });
    }

    /// Releases an output once the pending batch is durable.
    pub(crate) fn after_commit_output(&mut self, output: Output) {
        self.after_commit.push(output);
    }

    /// Sends mail once the pending batch is durable.
    pub(crate) fn mail_after_commit(&mut self, core: usize, mail: Mail) {
        self.mail_after_commit.push((core, mail));
    }

    /// Sends mail now (it does not depend on this core's pending writes).
    pub(crate) fn mail_now(&mut self, core: usize, mail: Mail) {
        self.mail_now.push((core, mail));
    }

    /// Records that an update was appended for `user_id` in this batch, to push after commit.
    pub(crate) fn push_after_commit(&mut self, user_id: u64, user_seq: u64, record: UpdateRecord) {
        self.pushes.push((user_id, user_seq, record));
    }

    /// Loads (once) the state of a user this core owns.
    pub(crate) fn user_state(&mut self, user_id: u64) -> Result<&mut UserState, StoreError> {
        debug_assert_eq!(
            self.owner(user_id),
            self.core,
            "user {user_id} is not owned by core {}",
            self.core
        );
        if !self.users.contains_key(&user_id) {
            // The head is what clients may be shown; new entries go after anything staged.
            let head = self.committed.last_user_seq(user_id)?;
            let mut next_seq = self.store.last_user_seq(user_id)?;
            // A reservation of this run is usable once durable. One of an earlier run that reaches
            // past the log says that updates under those numbers may have been shown and then
            // lost in a crash: the numbers are filled with `Skipped`, so none of them is ever
            // given to another update (the messages come again under new numbers, as fan-out
            // recovery delivers them again).
            let (staged_to, staged_run) = self.store.reservation(user_id)?;
            let this_run = |run: u64| self.run == Some(run);
            // Only a reservation of this run can be staged over a durable one of this run; and
            // one staged to close it (as the user went offline) holds even before it is durable.
            let (reserving, reserved) = if this_run(staged_run) {
                let (durable_to, durable_run) = self.committed.reservation(user_id)?;
                (
                    staged_to,
                    if this_run(durable_run) {
                        durable_to.min(staged_to)
                    } else {
                        0
                    },
                )
            } else {
                (0, 0)
            };
            if staged_run != 0 && !this_run(staged_run) && staged_to > next_seq {
                tracing::info!(
                    core = self.core,
                    user_id,
                    from = next_seq + 1,
                    to = staged_to,
                    "skipping user_seqs a crash may have left shown but not stored"
                );
                for user_seq in next_seq + 1..=staged_to {
                    self.batch
                        .put_update(user_id, user_seq, &UpdateRecord::Skipped)?;
                    self.pushes.push((user_id, user_seq, UpdateRecord::Skipped));
                }
                next_seq = staged_to;
            }
            let acked = self
                .store
                .devices(user_id)?
                .iter()
                .map(|(_, d)| d.cursor)
                .max()
                .unwrap_or(0);
            self.users.insert(
                user_id,
                UserState {
                    head,
                    next_seq,
                    acked,
                    unacked_from: head,
                    reserved,
                    reserving,
                    ..UserState::default()
                },
            );
        }
        // Inserted just above when missing.
        self.users
            .get_mut(&user_id)
            .ok_or_else(|| StoreError::Corrupt("user state".into()))
    }

    /// Adds an authenticated session; the user comes online with their first one.
    pub(crate) fn add_session(&mut self, now_ms: u64, conn: ConnId, user_id: u64, device_id: u32) {
        let rate = self.config.send_rate_per_connection;
        let sends = limits::TokenBucket::new(rate * limits::SEND_BURST_SECONDS, rate, now_ms);
        let subscribes = limits::TokenBucket::new(
            limits::PRESENCE_SUBSCRIBES_PER_CONNECTION_BURST,
            limits::PRESENCE_SUBSCRIBES_PER_CONNECTION_PER_SECOND,
            now_ms,
        );
        let typing = limits::TokenBucket::new(
            limits::TYPING_PER_CONNECTION_BURST,
            limits::TYPING_PER_CONNECTION_PER_SECOND,
            now_ms,
        );
        self.sessions.insert(
            conn,
            Session {
                user_id,
                device_id,
                live: false,
                sends,
                subscribes,
                typing,
            },
        );
        let conns = self.online.entry(user_id).or_default();
        conns.push(conn);
        if conns.len() == 1 {
            if let Err(e) = self.presence_changed(now_ms, user_id, true) {
                tracing::error!(core = self.core, error = %e, "storage error on presence");
            }
        }
    }

    /// Forgets a connection that closed; the user goes offline with their last one.
    pub(crate) fn connection_closed(&mut self, now_ms: u64, conn: ConnId) {
        self.presence_connection_closed(conn);
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        let Some(conns) = self.online.get_mut(&session.user_id) else {
            return;
        };
        conns.retain(|c| *c != conn);
        if conns.is_empty() {
            self.online.remove(&session.user_id);
            if let Some(run) = self.run {
                self.close_reservation(session.user_id, run);
            }
            if let Err(e) = self.presence_changed(now_ms, session.user_id, false) {
                tracing::error!(core = self.core, error = %e, "storage error on presence");
            }
        }
    }

    /// Handles a request on an authenticated connection.
    pub(crate) fn handle_request(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        body: Body,
    ) {
        self.last_now_ms = now_ms;
        let Some(session) = self.sessions.get(&conn) else {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::NOT_AUTHENTICATED,
                "authenticate first",
            );
            return;
        };
        let (user_id, device_id) = (session.user_id, session.device_id);
        let result = match body {
            Body::Send(send) => match self.take_token(now_ms, conn, user_id, Action::Send) {
                Ok(()) => self.handle_send(conn, request_id, user_id, device_id, send),
                Err(retry_after_ms) => {
                    self.reply_rate_limited(conn, request_id, retry_after_ms, "sending too fast");
                    Ok(())
                }
            },
            Body::Sync(sync) => self.handle_sync(conn, request_id, user_id, sync),
            Body::Ack(ack) => self.handle_ack(now_ms, conn, user_id, device_id, ack),
            Body::History(history) => self.handle_history(conn, request_id, user_id, history),
            Body::MarkRead(mark) => self.handle_mark_read(now_ms, conn, request_id, user_id, mark),
            Body::OpenDirect(open) => self.handle_open_direct(conn, request_id, user_id, open),
            Body::GetConversation(get) => {
                self.reply_conversation(conn, request_id, user_id, get.conversation_id)
            }
            Body::ListConversations(list) => {
                self.handle_list_conversations(conn, request_id, user_id, list)
            }
            Body::ListDevices(_) => self.handle_list_devices(conn, request_id, user_id, device_id),
            Body::RevokeDevice(revoke) => {
                self.handle_revoke(conn, request_id, user_id, revoke.device_id)
            }
            Body::Logout(_) => self.handle_logout(conn, request_id, user_id, device_id),
            Body::LookupUser(lookup) => self.handle_lookup(conn, request_id, &lookup.username),
            Body::GetUsers(get) => self.handle_get_users(conn, request_id, &get.user_ids),
            Body::SubscribePresence(s) => {
                self.handle_subscribe_presence(now_ms, conn, request_id, user_id, s)
            }
            Body::UnsubscribePresence(u) => {
                self.handle_unsubscribe_presence(conn, request_id, u);
                Ok(())
            }
            Body::RegisterPushToken(register) => {
                self.handle_register_push(conn, request_id, user_id, device_id, register)
            }
            Body::UnregisterPushToken(_) => {
                self.set_push_token(conn, request_id, user_id, device_id, None)
            }
            Body::UploadBegin(begin) => {
                self.handle_upload_begin(now_ms, conn, request_id, user_id, begin)
            }
            Body::UploadStatus(status) => {
                self.handle_upload_status(conn, request_id, user_id, status)
            }
            Body::UploadChunk(chunk) => {
                self.handle_upload_chunk(now_ms, conn, request_id, user_id, chunk)
            }
            Body::UploadFinish(finish) => {
                self.handle_upload_finish(conn, request_id, user_id, finish)
            }
            Body::GetMedia(get) => self.handle_get_media(conn, request_id, user_id, get),
            Body::Download(download) => self.handle_download(conn, request_id, user_id, download),
            Body::SetPrivacy(set) => self.handle_set_privacy(conn, request_id, user_id, set),
            Body::Typing(typing) => {
                self.handle_typing(now_ms, conn, request_id, user_id, typing);
                Ok(())
            }
            Body::CreateGroup(create) => {
                self.handle_create_group(now_ms, conn, request_id, user_id, create)
            }
            Body::AddMembers(m) => self.forward_group_change(
                conn,
                request_id,
                user_id,
                m.conversation_id,
                GroupChange::Add(m.members),
            ),
            Body::RemoveMember(m) => self.forward_group_change(
                conn,
                request_id,
                user_id,
                m.conversation_id,
                GroupChange::Remove(m.user_id),
            ),
            Body::LeaveGroup(m) => self.forward_group_change(
                conn,
                request_id,
                user_id,
                m.conversation_id,
                GroupChange::Leave,
            ),
            Body::RenameGroup(m) => self.forward_group_change(
                conn,
                request_id,
                user_id,
                m.conversation_id,
                GroupChange::Rename(m.name),
            ),
            Body::SetRole(m) => self.forward_group_change(
                conn,
                request_id,
                user_id,
                m.conversation_id,
                GroupChange::SetRole(m.user_id, m.role),
            ),
            body @ (Body::PublishKeys(_)
            | Body::GetDeviceKeys(_)
            | Body::ClaimKeys(_)
            | Body::SendToDevice(_)
            | Body::ToDeviceSync(_)
            | Body::ToDeviceAck(_)
            | Body::PutBackup(_)
            | Body::GetBackup(_)
            | Body::DeleteBackup(_)) => {
                self.handle_keys_request(now_ms, conn, request_id, user_id, device_id, body)
            }
            other => {
                let message = format!("{} is not available in this server version", other.name());
                self.reply_error(conn, request_id, ErrorCode::UNKNOWN_TYPE, message);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(core = self.core, error = %e, "storage error while handling a request");
            self.reply_error(conn, request_id, ErrorCode::INTERNAL, "storage error");
        }
    }

    /// Handles mail from another core (or this one).
    pub(crate) fn handle_mail(&mut self, now_ms: u64, mail: Mail) {
        self.last_now_ms = now_ms;
        let result = match mail {
            Mail::CreateUser {
                origin,
                user,
                device_name,
            } => self.handle_create_user(now_ms, origin, *user, device_name),
            Mail::Send {
                origin,
                request_id,
                user_id,
                device_id,
                send,
            } => {
                self.handle_conversation_send(now_ms, origin, request_id, user_id, device_id, *send)
            }
            Mail::SendDone {
                origin,
                request_id,
                result,
            } => {
                match result {
                    Ok(sent) => self.reply(origin.conn, request_id, sent),
                    Err(code) => self.reply_error(origin.conn, request_id, code, "send refused"),
                }
                Ok(())
            }
            mail @ (Mail::Deliver { .. } | Mail::Append { .. }) => {
                self.handle_append_mail(now_ms, mail)
            }
            Mail::PushDone {
                user_id,
                read_at_ms,
            } => self.handle_push_done(now_ms, user_id, read_at_ms),
            Mail::PushRejected { user_id, pushkey } => self.handle_push_rejected(user_id, &pushkey),
            Mail::Delivered {
                conversation_id,
                seq,
                users,
            } => {
                self.handle_delivered(conversation_id, seq, &users);
                Ok(())
            }
            Mail::GroupChange {
                origin,
                request_id,
                user_id,
                conversation_id,
                change,
            } => self.apply_group_change(
                now_ms,
                origin,
                request_id,
                user_id,
                conversation_id,
                change,
            ),
            Mail::Subscribe {
                target,
                subscriber,
                request_id,
            } => self.handle_mail_subscribe(target, subscriber, request_id),
            Mail::Unsubscribe { target, subscriber } => {
                self.handle_mail_unsubscribe(target, subscriber);
                Ok(())
            }
            Mail::PresenceNow {
                subscriber,
                request_id,
                presence,
            } => {
                self.handle_presence_now(subscriber.conn, request_id, presence);
                Ok(())
            }
            Mail::PresenceChanged {
                subscriber,
                presence,
            } => {
                self.handle_presence_changed(subscriber.conn, presence);
                Ok(())
            }
            Mail::Typing {
                origin,
                request_id,
                user_id,
                conversation_id,
                active,
            } => self.handle_mail_typing(origin, request_id, user_id, conversation_id, active),
            Mail::TypingTo { to_user, event } => {
                self.handle_typing_to(to_user, event);
                Ok(())
            }
            Mail::Reply {
                origin,
                request_id,
                result,
            } => {
                match result {
                    Ok(body) => self.reply(origin.conn, request_id, *body),
                    Err(code) => self.reply_error(origin.conn, request_id, code, "request refused"),
                }
                Ok(())
            }
            Mail::OpenDirect {
                origin,
                request_id,
                user_id,
                peer,
                encrypted,
            } => self.handle_mail_open_direct(now_ms, origin, request_id, user_id, peer, encrypted),
            Mail::DirectOpened {
                origin,
                request_id,
                result,
            } => match result {
                Ok(conversation_id) => {
                    let user_id = self.sessions.get(&origin.conn).map(|s| s.user_id);
                    match user_id {
                        Some(user_id) => self.reply_conversation(
                            origin.conn,
                            request_id,
                            user_id,
                            conversation_id,
                        ),
                        None => Ok(()),
                    }
                }
                Err(code) => {
                    self.reply_error(
                        origin.conn,
                        request_id,
                        code,
                        "cannot open the conversation",
                    );
                    Ok(())
                }
            },
            mail @ (Mail::ToDevice { .. }
            | Mail::ToDeviceQueued { .. }
            | Mail::ClaimKeys { .. }
            | Mail::KeysClaimed { .. }) => self.handle_keys_mail(now_ms, mail),
            Mail::UserCreated { .. } => {
                debug_assert!(false, "the runtime handles connection mail");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(core = self.core, error = %e, "storage error while handling mail");
        }
    }

    /// Mail whose effect is an append to a log (a delivery, or an entry such as a receipt), which
    /// no other core sends again: handled, then kept as it came (not copied) until the batch
    /// holding its effect is durable, and handled again if that batch fails.
    fn handle_append_mail(&mut self, now_ms: u64, mail: Mail) -> Result<(), StoreError> {
        let result = match &mail {
            Mail::Deliver {
                users,
                conversation_id,
                seq,
                sender,
                from_core,
                message,
                direct,
            } => {
                let deliver = chat::Deliver {
                    conversation_id: *conversation_id,
                    seq: *seq,
                    sender: *sender,
                    from_core: *from_core,
                    direct: *direct,
                };
                self.handle_deliveries(now_ms, users, deliver, message)
            }
            Mail::Append { to_user, update } => {
                if self.chat.take_restaged(*to_user, update) {
                    // Staged again after a failed commit, under the number it was shown with.
                    Ok(())
                } else {
                    // Its source's batch is durable: it may be shown at once, like a delivery.
                    self.append(*to_user, update, true).map(|_| ())
                }
            }
            _ => {
                debug_assert!(false, "not append mail");
                return Ok(());
            }
        };
        self.replay.push(mail);
        result
    }

    /// Ends a loop turn: seals the pending batch for the committer, with what may go out now.
    pub(crate) fn end_turn(&mut self) -> Turn {
        let mut turn = Turn {
            outputs: take_like(&mut self.outputs),
            mail: take_like(&mut self.mail_now),
            commit: None,
            reads: self.reads.take_out(),
        };
        let high_water = self.ids.high_water();
        if high_water > self.ids_sealed {
            self.batch.put_id_high_water(self.core as u16, high_water);
            self.ids_sealed = high_water;
        }
        if let Err(e) = self.write_watermarks() {
            // Nothing of this turn's batch may reach the store without its watermarks.
            tracing::error!(core = self.core, error = %e, "encoding watermarks");
            self.fail_in_flight(&mut turn);
            return turn;
        }
        self.shown_events.clear();
        let waiting = !self.after_commit.is_empty()
            || !self.mail_after_commit.is_empty()
            || !self.pushes.is_empty()
            || !self.shown.is_empty();
        if self.batch.is_empty() {
            if !waiting {
                return turn;
            }
            // Nothing to write: what waits depends on batches in flight, if any, else on nothing.
            let held = self.take_held(0);
            match self.in_flight.back_mut() {
                Some(last) => {
                    last.outputs.extend(held.outputs);
                    last.mail.extend(held.mail);
                    last.pushes.extend(held.pushes);
                    last.fresh.extend(held.fresh);
                    last.fanouts.extend(held.fanouts);
                    last.replay.extend(held.replay);
                    last.marks.extend(held.marks);
                    last.to_device.extend(held.to_device);
                    last.shown.extend(held.shown);
                    last.reservations.extend(held.reservations);
                }
                None => self.release(held, &mut turn.outputs, &mut turn.mail),
            }
            return turn;
        }
        if self.unanswered >= COMMITS_IN_FLIGHT_MAX {
            // The committer is behind: the pending batch grows until it answers.
            return turn;
        }
        self.last_batch += 1;
        self.unanswered += 1;
        let id = self.last_batch;
        let next = self.batch.next_like();
        let mut batch = std::mem::replace(&mut self.batch, next);
        batch.sort();
        let batch = Arc::new(batch);
        if let Some(overlay) = self.store.overlay() {
            overlay.stage(id, Arc::clone(&batch));
        }
        // What the batch holds is readable through the overlay now, so the bookkeeping of
        // not-yet-staged writes starts over, and caches may drop what they hold. Its sends'
        // idempotency records stay with the chat state until it is durable: a `Send` looks them
        // up there and then in the backend, skipping the overlay's search.
        self.chat.committed(id);
        self.accounts_committed();
        self.trim_caches();
        let held = self.take_held(id);
        self.in_flight.push_back(held);
        turn.commit = Some(Commit {
            id,
            epoch: self.epoch,
            batch,
        });
        turn
    }

    /// The committer's answer for batch `id`: release what waited on it, or void it and every
    /// later batch. What this produces goes out with the next [`Shard::end_turn`].
    pub(crate) fn handle_committed(&mut self, id: u64, result: Result<(), StoreError>) {
        self.unanswered = self.unanswered.saturating_sub(1);
        if self.in_flight.front().is_none_or(|held| held.id != id) {
            // A batch already voided by an earlier failure.
            return;
        }
        match result {
            Ok(()) => {
                let Some(held) = self.in_flight.pop_front() else {
                    return;
                };
                if let Some(overlay) = self.store.overlay() {
                    overlay.settle(id);
                }
                self.chat.settled(id);
                let mut outputs = std::mem::take(&mut self.outputs);
                let mut mail = std::mem::take(&mut self.mail_now);
                self.release(held, &mut outputs, &mut mail);
                self.outputs = outputs;
                self.mail_now = mail;
            }
            Err(error) => {
                // The committer logs the failure (once a second at most); this is its echo.
                tracing::debug!(core = self.core, %error, "group commit failed");
                let mut turn = Turn {
                    outputs: std::mem::take(&mut self.outputs),
                    mail: std::mem::take(&mut self.mail_now),
                    commit: None,
                    reads: Vec::new(),
                };
                self.fail_in_flight(&mut turn);
                // The replay in `fail_in_flight` may have produced output of its own (updates
                // shown again): it goes after what came before.
                turn.outputs.append(&mut self.outputs);
                turn.mail.append(&mut self.mail_now);
                self.outputs = turn.outputs;
                self.mail_now = turn.mail;
            }
        }
    }

    /// Periodic work: fan-outs some member has not confirmed in time are delivered again; every
    /// `media_sweep_interval_ms` the uploads nothing will use are discarded; and every
    /// [`chat::CHECKPOINT_MS`] a checkpoint of the fan-out progress and watermarks begins
    /// ([`Shard::start_checkpoint`]), to be written a share at a time by
    /// [`Shard::checkpoint_step`]. Call it every [`TICK_MS`] or so.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        self.last_now_ms = now_ms;
        if let Err(e) = self.retry_fanouts(now_ms) {
            tracing::error!(core = self.core, error = %e, "retrying fan-outs");
        }
        if self.last_media_sweep_ms == 0 {
            self.last_media_sweep_ms = now_ms;
        }
        if now_ms >= self.last_media_sweep_ms + self.config.media_sweep_interval_ms {
            self.last_media_sweep_ms = now_ms;
            match self.expire_media(now_ms) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(core = self.core, uploads = n, "discarding expired uploads")
                }
                Err(e) => {
                    tracing::error!(core = self.core, error = %e, "media expiry sweep failed")
                }
            }
        }
        if self.checkpoint_due(now_ms) {
            self.start_checkpoint(now_ms);
        }
        self.checkpoint_step(now_ms);
    }

    /// Writes the next share of the checkpoint under way into the pending batch, if one is due
    /// and the batch will be sealed this turn (the committer is not behind). Call it before
    /// each turn ends.
    pub(crate) fn checkpoint_step(&mut self, now_ms: u64) {
        if self.checkpoint_step_due_ms().is_none_or(|at| now_ms < at) {
            return;
        }
        self.chat.checkpoint_share_written(now_ms);
        if let Err(e) = self.checkpoint_share(false) {
            tracing::error!(core = self.core, error = %e, "writing a checkpoint");
        }
    }

    /// When the next share of the checkpoint under way is due, if one is and the committer is
    /// not behind (its answer wakes the core): the runtime runs a turn then, work or not.
    pub(crate) fn checkpoint_step_due_ms(&self) -> Option<u64> {
        if self.unanswered >= COMMITS_IN_FLIGHT_MAX {
            return None;
        }
        self.chat.checkpoint_share_due_ms()
    }

    /// Whether batches are in flight or writes pending (shutdown waits for neither).
    pub(crate) fn idle(&self) -> bool {
        self.unanswered == 0 && self.batch.is_empty() && self.after_commit.is_empty()
    }

    fn take_held(&mut self, id: u64) -> Held {
        Held {
            id,
            outputs: take_like(&mut self.after_commit),
            mail: take_like(&mut self.mail_after_commit),
            pushes: take_like(&mut self.pushes),
            fresh: self.chat.take_fresh(),
            fanouts: self.chat.take_new_fanouts(),
            replay: take_like(&mut self.replay),
            marks: self.chat.take_marks_written(),
            to_device: self.keys.take_fresh(),
            shown: take_like(&mut self.shown),
            reservations: std::mem::take(&mut self.reservations),
        }
    }

    fn release(&mut self, held: Held, outputs: &mut Vec<Output>, mail: &mut Vec<(usize, Mail)>) {
        outputs.extend(held.outputs);
        mail.extend(held.mail);
        for (user_id, up_to) in held.reservations {
            if let Some(state) = self.users.get_mut(&user_id) {
                // Never past the newest one staged: a reservation closed since stays closed.
                state.reserved = state.reserved.max(up_to).min(state.reserving);
            }
        }
        for (user_id, user_seq) in held.shown {
            self.advance_head(user_id, user_seq);
        }
        self.release_pushes(held.pushes, &held.fresh, outputs);
        self.release_to_device(held.to_device, outputs);
    }

    /// Drops caches that outgrew their bound, a share at a time. Called when the batch is staged,
    /// so everything they hold is readable from the store and they reload exactly what they forget.
    fn trim_caches(&mut self) {
        if self.users.len() > CACHED_USERS_MAX {
            // Offline users first; no more than a sixteenth per turn, so no turn stalls.
            // Users with updates shown before they were durable stay: a failed commit stages those
            // again from their state.
            let doomed: Vec<u64> = self
                .users
                .iter()
                .filter(|(u, state)| !self.online.contains_key(u) && state.early.is_empty())
                .map(|(u, _)| *u)
                .take(CACHED_USERS_MAX / 16)
                .collect();
            for user in doomed {
                if let Some(state) = self.users.remove(&user) {
                    self.unacked_room = self.unacked_room.saturating_sub(state.kept_room());
                }
            }
        }
        self.chat.trim();
        self.media.trim();
        self.keys.trim();
    }

    /// A failed commit: every batch in flight and the pending one are void. Replies that waited
    /// become `INTERNAL` errors, requests from other cores are answered the same way, effects are
    /// dropped (fan-out is retried by [`Shard::tick`]), and caches reload from what is durable.
    fn fail_in_flight(&mut self, turn: &mut Turn) {
        self.epoch += 1;
        self.batch = self.store.batch();
        // The void batches held the high-water mark: the next batch writes it again.
        self.ids_sealed = 0;
        if let Some(overlay) = self.store.overlay() {
            overlay.discard();
        }
        let pending = self.take_held(0);
        let voided: Vec<Held> = self.in_flight.drain(..).chain([pending]).collect();
        let mut replay = Vec::new();
        let mut marks = Vec::new();
        for held in voided {
            replay.extend(held.replay);
            marks.extend(held.marks);
            self.chat.drop_fanouts(&held.fanouts);
            for output in held.outputs {
                if let Output::Frame { conn, frame } = output {
                    if frame.request_id != 0 {
                        let error = ErrorFrame {
                            code: ErrorCode::INTERNAL,
                            retry_after_ms: 0,
                            message: "storage error; try again".into(),
                        };
                        turn.outputs.push(Output::Frame {
                            conn,
                            frame: Frame::new(frame.request_id, error),
                        });
                    }
                }
            }
            for (core, mail) in held.mail {
                self.chat.void_delivery(&mail);
                if let Some(refusal) = mail::refusal(mail, ErrorCode::INTERNAL) {
                    turn.mail.push((core, refusal));
                }
            }
        }
        // Updates shown before they were durable keep their numbers: they are staged again, ahead
        // of anything new, and the replay below skips their appends.
        let mut shown: Vec<(u64, Vec<(u64, UpdateRecord)>)> = self
            .users
            .iter_mut()
            .filter(|(_, state)| !state.early.is_empty())
            .map(|(user_id, state)| (*user_id, std::mem::take(&mut state.early)))
            .collect();
        // The same order every run (the simulator replays seeds).
        shown.sort_unstable_by_key(|(user_id, _)| *user_id);
        self.users.clear();
        self.unacked_room = 0;
        self.chat.forget();
        self.chat.unwrite_marks(marks);
        self.media.forget();
        self.keys.forget();
        self.accounts = accounts::AccountState::default();
        self.fix_recipients_again();
        for (user_id, updates) in shown {
            if let Err(e) = self.stage_shown_again(user_id, updates) {
                tracing::error!(core = self.core, error = %e, "staging shown updates again");
            }
        }
        // Deliveries of stored messages it voided go out again first: anything the replay below
        // causes must reach other cores after them.
        self.resend_voided();
        // Appends to logs come from other cores once, in order, and a member's fan-out watermark
        // must never pass a message its log lacks: so the void ones are made again, in the order
        // they first came, before any mail that came after them.
        for mail in replay {
            self.handle_mail(self.last_now_ms, mail);
        }
        self.chat.forget_restaged();
    }

    /// Moves a user's head to a durable `user_seq`.
    fn advance_head(&mut self, user_id: u64, user_seq: u64) {
        if let Some(state) = self.users.get_mut(&user_id) {
            state.head = state.head.max(user_seq);
            if state.early.first().is_some_and(|(n, _)| *n <= state.head) {
                let head = state.head;
                state.early.retain(|(n, _)| *n > head);
            }
        }
    }

    /// Closes the reservations of the users this core holds, at a clean shutdown once nothing
    /// more is appended: a reservation that ends at the log's end leaves no `Skipped` after the
    /// restart. (Users who went offline closed theirs then.)
    pub(crate) fn close_reservations(&mut self) {
        let Some(run) = self.run else {
            return;
        };
        let mut open: Vec<u64> = self
            .users
            .iter()
            .filter(|(_, state)| state.reserving > state.next_seq)
            .map(|(user_id, _)| *user_id)
            .collect();
        open.sort_unstable();
        for user_id in open {
            self.close_reservation(user_id, run);
        }
    }

    /// Ends a user's reservation at their log's end: nothing more is shown to them before it is
    /// durable until a new one is. Done when they go offline (only online users are shown updates
    /// early), so a user dropped from the cache later leaves no reservation open.
    fn close_reservation(&mut self, user_id: u64, run: u64) {
        if let Some(state) = self.users.get_mut(&user_id) {
            if state.reserving > state.next_seq {
                state.reserving = state.next_seq;
                state.reserved = state.reserved.min(state.next_seq);
                self.batch.put_reservation(user_id, state.next_seq, run);
            }
        }
    }

    /// This run's id (see [`Shard::run`]).
    pub(crate) fn run_id(&mut self) -> u64 {
        match self.run {
            Some(run) => run,
            None => {
                let run = self.ids.next(self.last_now_ms);
                self.run = Some(run);
                run
            }
        }
    }

    /// The user's connections that are live (their sync caught up). An iterator, not a list: a
    /// fan-out asks this of every member it pushes to.
    pub(crate) fn live_sessions(&self, user_id: u64) -> impl Iterator<Item = ConnId> + '_ {
        self.online
            .get(&user_id)
            .into_iter()
            .flatten()
            .copied()
            .filter(|c| self.sessions.get(c).is_some_and(|s| s.live))
    }

    /// After a commit: moves each touched user's head and pushes new updates to live sessions.
    fn release_pushes(
        &mut self,
        pushes: Vec<(u64, u64, UpdateRecord)>,
        fresh: &HashMap<(u64, u64), Arc<MessageRecord>>,
        outputs: &mut Vec<Output>,
    ) {
        let mut messages: HashMap<(u64, u64), Rc<UpdateEventBytes>> = HashMap::default();
        for (user_id, user_seq, record) in pushes {
            self.advance_head(user_id, user_seq);
            self.push_live(user_id, user_seq, &record, fresh, &mut messages, outputs);
        }
    }

    /// An update's event frame, encoded once for every connection it goes to.
    fn encode_event(&self, update: Update) -> Option<Rc<UpdateEventBytes>> {
        let mut arena = self.events.borrow_mut();
        if arena.capacity() < EVENT_ARENA_BYTES / 8 {
            arena.reserve(EVENT_ARENA_BYTES);
        }
        UpdateEventBytes::encode_in(update.kind, &mut arena)
            .map(Rc::new)
            .inspect_err(
                |e| tracing::error!(core = self.core, error = %e, "encoding an update to push"),
            )
            .ok()
    }

    /// Pushes an update to the user's live sessions. `messages` holds the event frames of
    /// messages already encoded, so a message going to many members is encoded once.
    fn push_live(
        &self,
        user_id: u64,
        user_seq: u64,
        record: &UpdateRecord,
        fresh: &HashMap<(u64, u64), Arc<MessageRecord>>,
        messages: &mut HashMap<(u64, u64), Rc<UpdateEventBytes>>,
        outputs: &mut Vec<Output>,
    ) {
        // One pass over the user's connections: the first is looked at before encoding, so a
        // user with none costs no encoding.
        let mut live = self.live_sessions(user_id).peekable();
        if live.peek().is_none() {
            return;
        }
        // A message goes to many members: its event frame (attachments looked up in the store) is
        // encoded once per batch, and each member's copy differs only in `user_seq`.
        let encoded = match record {
            UpdateRecord::Message {
                conversation_id,
                seq,
                ..
            } => match messages.get(&(*conversation_id, *seq)) {
                Some(event) => Ok(Some(event.clone())),
                None => self
                    .materialize_record(user_seq, record, |c, s| {
                        fresh.get(&(c, s)).map(|m| MessageRecord::clone(m))
                    })
                    .map(|made| {
                        let (update, _) = made?;
                        let event = self.encode_event(update)?;
                        messages.insert((*conversation_id, *seq), event.clone());
                        Some(event)
                    }),
            },
            _ => self
                .materialize_record(user_seq, record, |c, s| {
                    fresh.get(&(c, s)).map(|m| MessageRecord::clone(m))
                })
                .map(|made| made.and_then(|(update, _)| self.encode_event(update))),
        };
        match encoded {
            Ok(Some(event)) => {
                let before = outputs.len();
                outputs.extend(live.map(|conn| Output::Update {
                    conn,
                    user_seq,
                    event: Rc::clone(&event),
                }));
                let pushed = outputs.len() - before;
                self.metrics
                    .core(self.core)
                    .delivered_live
                    .add(pushed as u64);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(core = self.core, error = %e, "reading an update to push")
            }
        }
    }
}

/// Takes what `v` holds and leaves it empty with room for as much: what a batch holds is much
/// like what the one before it held, so the next one is not grown (and copied) from nothing.
fn take_like<T>(v: &mut Vec<T>) -> Vec<T> {
    let room = v.len();
    std::mem::replace(v, Vec::with_capacity(room))
}
