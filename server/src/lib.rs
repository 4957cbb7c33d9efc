//! `ternd`, the Tern chat server, as a library (the binary is a thin `main`).
//!
//! # Layout
//!
//! - [`config`]: defaults, the TOML file and the flags, resolved into one [`config::Config`].
//! - `runtime/`: the only place with threads, sockets, io_uring/epoll and timers. It starts one
//!   pinned thread per core, accepts connections, moves each authenticated connection to its user's
//!   owner core, and runs each core's loop turns. `runtime/tls.rs` puts rustls (sans-IO) between a
//!   socket and the codec, so TLS works the same on both engines and migrates with the socket.
//! - `core/`: per-core chat logic ([`core`]'s `Shard`): accounts, the message path, sync, history
//!   and receipts. Sans-IO: frames, mail, commit results and the time come in as values; frames,
//!   mail and sealed batches of writes go out. It holds no socket, thread, clock or database handle
//!   of its own: storage is a `Store` over the `store::backend::Backend` seam.
//! - `store/`: the schema (column families, key encodings, rkyv records), write batches, the
//!   RocksDB backend, in-memory and fault-injecting backends, and the overlay through which a core
//!   reads the batches it handed to its committer before they are durable.
//! - `runtime/committer.rs`: the committer thread, which writes the batches of every core (each
//!   core's in order, those waiting together in one write) and hands back each result.
//! - `sim` (tests only): the deterministic simulator of the core.
//! - `ids`: time-ordered 64-bit ids.
//!
//! # Data flow of a message
//!
//! A device's `Send` reaches its user's owner core, which forwards it to the conversation's owner
//! core. That core assigns the next `seq` and puts the message and its idempotency record in its
//! write batch. At the end of the loop turn the batch is sealed and handed to the core's committer;
//! the core keeps serving meanwhile. Once the committer says the batch is durable, the core
//! releases what waited on it: `Sent` goes back to the sender's core, and the message goes to every
//! member's owner core (one mail per core, naming the members it owns), which appends it to each
//! member's update log (one write each), pushes it to the member's live devices at once (see the
//! notes below) and, once the entries are durable in turn, confirms to the conversation's core
//! (again one mail for them all). `core/chat.rs` tells the
//! whole story, crash recovery and the checkpoints included; `core/mod.rs` the commit protocol.
//!
//! # Design notes of core v2, and why
//!
//! - **Mail between cores is bounded by the work it carries.** A turn takes at most
//!   `TURN_WORK_MAX` of mail from its inbox (a delivery counts once per member), and a mailbox
//!   takes no more once it holds `MAILBOX_WORK_MAX` (`runtime/`); what it refuses waits in the
//!   sending core, whose connections stop reading once that reaches its own bound. Bounded in
//!   batches alone, a mailbox held seconds of deliveries in W2 and a turn could drain one for
//!   seconds, so senders were acknowledged far ahead of what members were given, until fan-out
//!   retries piled onto the queues. `tern_mail_held` and `tern_mail_backlogs_total` show it.
//! - **The commit is off the core thread.** A core seals one batch per loop turn and hands it to
//!   the committer thread; at most two are in flight per core, past which the pending batch grows
//!   (a larger group commit). With `--fsync` no core thread waits for an fsync. One committer
//!   serves every core and writes all the batches waiting, from any core, in one write: RocksDB
//!   writes one group at a time anyway, so a committer per core (as we had first) only took turns
//!   in its write group, each hand-over a wake-up. The shared one made W2 about 6 to 17 % faster
//!   and W1's open loop at 10,000 sends/s a fifth cheaper (`bench/RESULTS.md`). A failed write
//!   fails every batch in it, which the cores handle as any failed commit. We kept one RocksDB
//!   instance: a WAL per core would also split the column families' memtables and compaction, for
//!   a gain we did not measure.
//! - **A message is encoded once per core for all its members.** Its live event frame is encoded
//!   once (`tern_protocol::UpdateEventBytes`, into a block many events share) and copied into each
//!   connection's queue with that member's `user_seq` written in; its update-log entry, the same
//!   for every member, is encoded once per batch and copied. Sealed batches are sorted on a 16-byte
//!   key head before the keys themselves; one of 512 writes or more by groups of family and first 8
//!   key bytes (a member's entries come in key order, so only the groups need a comparison sort).
//!   In W2 with groups of 100 this took CPU per delivery down by about a sixth
//!   (`bench/RESULTS.md`).
//! - **No locked instruction per delivery where one thread owns the data.** A locked
//!   read-modify-write (`fetch_add`, an `Arc` or `Bytes` count) waits until every store before it
//!   has reached the cache, and the hot path's stores go to freshly written batches and frames:
//!   in W2 the instructions right after the counters' increments held about 9 % of `ternd`'s samples,
//!   more where the committer wrote the same cache line. Each counter now has one writer and is
//!   updated by a plain load and store (`metrics::Counter`), a core's commit counters (the
//!   committer's) sit on cache lines of their own, and a live update's encoded event is shared
//!   between connections by `Rc`, on the core's thread. In alternating pairs W2 gained 5–7 % and
//!   W1's closed loop about a tenth (`bench/RESULTS.md`).
//! - **A direct conversation lives on its lower member's core.** Its id is drawn until it hashes
//!   to that core (the core that creates it), so that member's messages never cross cores and the
//!   other member's cross fewer times; placement stays a pure function of the id, so a restart
//!   with another `--cores` still finds every owner. W1's closed loop gained 3 to 15 %.
//! - **A core reads its own writes while they are in flight** through an overlay of the sealed
//!   batches (sorted; a binary search per batch, and a range read goes no further than its range:
//!   walking the rest of the batch took a fifth of W2's CPU once members fell behind), but
//!   clients are only ever shown what is durable: `Sync` and `History` read the committed view,
//!   and a user's `head` moves only when the batch holding an entry is durable. The one read
//!   every `Send` makes, its idempotency key, skips the overlay: the chat state keeps the records
//!   of sends in batches not yet durable, and a miss there goes straight to the backend.
//! - **A failed commit voids its batch and every later one** (they were built on it): waiting
//!   replies become `INTERNAL`, requests from other cores are answered the same way, caches reload
//!   from what is durable, appends to logs that came as mail are made again in their order, and
//!   void deliveries go out again at once, ahead of what the replay causes and of the
//!   conversation's later messages, because a member's fan-out watermark (the highest seq of a
//!   conversation in the log) is what makes a delivery idempotent. Fan-outs not confirmed in time
//!   are delivered again while the server runs.
//! - **Mail a core sends itself skips its mailbox** and is handled first next turn, and recovery
//!   at start appends to the logs of its own core's members before it handles any mail. Together
//!   with FIFO mailboxes this keeps causal order in a direct conversation (its core is one
//!   member's): the peer's receipt for a message, sent once the peer's log holds it, never
//!   reaches the other member's log before the message (protocol §17.2); for that, a `MarkRead`
//!   there reads no further than the caller's own log. The simulator checks it on every run; it
//!   found the four ways the receipt overtook the message: a descheduled or full-mailboxed send
//!   to self, recovery's deliveries waiting for a commit, void deliveries waiting for a retry,
//!   and a "mark all read" taken up to the conversation's newest message.
//! - **Recovery delivers a message to the members it was sent to.** When a group's membership
//!   changes while some of its messages are not yet in every member's log, the change's batch
//!   records, for each of those, the members still to confirm it; recovery after a crash
//!   delivers those messages only to them, and later ones to the members it finds. Without this
//!   a member added after a send could be given the message, and one removed could miss it.
//!   Recovery first reads each recipient's log back from their checkpoint, once, and skips what
//!   every recipient holds already: the fan-out progress lags by up to a checkpoint's interval,
//!   and delivering all of that again held the cores before they served (`core/chat.rs`).
//! - **Four writes per one-to-one message.** Fan-out progress, fan-out watermarks and a sender's
//!   own read watermark are written by a checkpoint once a second, in small shares spread over
//!   half a second so no batch holds it all, and rebuilt at start from the checkpoint and the log
//!   after it (`core/chat.rs`); a core's id high-water mark is written once per batch. Counted in
//!   W1 at 20,000 messages/s, where devices acknowledge what they get: per message 1 `messages`,
//!   1 `idempotency`, 2.7 `updates` (the two members' entries and the receipts that
//!   acknowledgements cause), 0.4 `receipts` (delivered watermarks) and 0.3 of checkpoints.
//! - **A log's entries from one commit are one pair on disk.** The committer packs the entries a
//!   group commit adds to one user's log, consecutive `user_seq`s, into one RocksDB pair, a *run*
//!   (`store/runs.rs`); reads unpack it. Batches, the overlay and the core still see one entry
//!   per `user_seq`. In W2 (groups of 100) a commit adds about six entries to each member's log,
//!   so the update logs hold an eighth of the keys they did, and the flushes and compactions
//!   that took a third of `ternd`'s CPU take a tenth. With column family names compared by
//!   address (`store/mod.rs`), W2 delivered 31–61 % more per second in four alternating pairs,
//!   at 26–46 % less CPU per delivery (`bench/RESULTS.md`).
//! - **A recipient is shown a message after one commit**, its conversation's. The member's core
//!   appends the delivery to the member's log and pushes it to their live devices in the same
//!   turn, before that entry is durable, under a `user_seq` it promises never to give to anything
//!   else (`Shard::append`):
//!   - a failed commit stages the entries it had shown again, under the same numbers, ahead of
//!     anything new (`Shard::stage_shown_again`); the replayed mail finds them staged;
//!   - a crash can lose them, so an online user keeps a durable *reservation* ahead of their log
//!     (32 numbers, written once per 16 entries), and an entry is shown early only within it. It
//!     is closed at the log's end when the user goes offline and at a clean shutdown. On the
//!     first load after a restart, numbers between the log's end and a reservation of an
//!     earlier run become `Skipped` updates (spec §10.9.9): nothing else ever takes a number a
//!     device may have seen, and fan-out recovery delivers the messages again under new numbers
//!     (devices recognise them by `message_id`);
//!   - only what came as mail from a durable source is shown early (deliveries, and receipts or
//!     group changes another core sent after its commit; a failed commit stages those again and
//!     skips their replayed mail once each), and only when every entry before it in the log is
//!     durable or was shown the same way, so live updates stay in order and gapless. What a core
//!     appends for its own requests waits for its commit.
//!
//!   The simulator checks that whatever a device was shown under a `user_seq` is what the log
//!   holds there in the end, or `Skipped`; without the restaging or without the `Skipped` fill,
//!   seeds fail.
//! - **`Sync`, `History` and `Download` read off the core; every page stays short.** A request
//!   is handled as its connection reads it, between loop turns, so a store read that goes to the
//!   device holds every connection of the core (`tern_core_frames_microseconds` shows how long).
//!   A `Sync` page's reads of what is durable (the log up to the head and the messages it names),
//!   a `History` page's read of a conversation's messages and a `Download`'s read of a complete
//!   upload go to two reader threads as a `Read` the turn hands out (`core/reads.rs`,
//!   `runtime/reader.rs`); the answer comes back like a commit's, and the core adds what was
//!   shown before it was durable and replies (a `Download` whose upload was discarded meanwhile
//!   gets `NOT_FOUND`). Entries below a head are never rewritten, so a late answer is still
//!   true; if the head moved meanwhile, the page ends at the old one and says there is more.
//!   A core has at most 16 reads out; the next wait in its queue (up to 4,096, then it reads
//!   itself), so a storm of devices reconnecting at once waits for the readers, not the core.
//!   - A small read (at most 64 entries: a device back after a short while, an app's page of
//!     history) is first tried on the core against a memory-only view (RocksDB's memtables and
//!     block cache, `Store::memory_only`); only a miss goes to a reader. A large page goes to a
//!     reader even when it is in memory: built on the core, it held the core up to 5–10 ms.
//!     A `Download` is tried in memory too: media chunks are in blob files, with a cache of
//!     their own (64 MiB) that keeps the chunks read lately.
//!   - Measured by W5 after W1 and W2 with the data dropped from the page cache
//!     (`bench/README.md`), the cold sync held a core at most 0.25–1 ms at a stretch, against
//!     10–50 ms with the reads on the core; the readers' longest read took 5–10 ms
//!     (`tern_core_store_reads_microseconds`).
//!   - The `Ack` of those pages reads nothing back. An `Ack` turns the messages from others it
//!     covers into delivered receipts; a user's state keeps them while a device is live
//!     (`UserState::unacked`), but a device back from offline was not. The core now keeps the
//!     messages from others of the pages it sends such a device (`UserState::paged`, consecutive
//!     pages added up, within the same budget), so the `Ack` reads back on the core only what
//!     the device took before it last went away and never acknowledged
//!     (`tern_core_ack_updates_read_total`).
//!   - The simulator answers reads late, in any order, or fails them, turns memory hits on and
//!     off, and checks that a history page shows only what is durable.
//!   - The pages stay short because a page reads the log a few pairs at a time (a pair is often
//!     a run of a hundred entries; reading as many pairs as entries wanted copied up to a hundred
//!     times what the page kept) and the messages it refers to with one sorted multi-get: the
//!     slowest cold page took 12–13 ms before, and pages took half as long again on average
//!     (`bench/RESULTS.md`). A `Download` reads an upload's chunks the same way: reading a
//!     thousand at a time, each 256 KiB download copied the rest of the upload, and W6's
//!     downloads ran at a ninth of their speed now.
//! - **The simulator is the main test of this logic** (`sim.rs`): the same core code, all shards
//!   in one thread, faults on a seeded schedule; it found the ordering and checkpoint bugs that the
//!   real-socket tests had not, and each is fixed.

//! # Choices beyond the design notes, and why
//!
//! - **Accepting and idle waiting go through tokio's reactor on both engines.** tokio-uring offers
//!   no readiness poll, and an in-flight io_uring read per idle connection would pin a buffer to
//!   every idle connection. So a uring connection waits for readiness through the reactor that
//!   tokio-uring runs anyway, borrows a pooled buffer, and submits the read only when data is
//!   there; reads themselves are io_uring operations. So are writes, except that the frames of
//!   the core's turns go to a plain TCP socket with a direct `send` first, as on epoll, and only
//!   what it did not take is written by an io_uring operation (see the next point). Accept is
//!   readiness-driven too, which keeps it cancel-safe for shutdown.
//! - **One task per connection, and a writer only while there is something to write.** The
//!   connection's task decodes and handles frames synchronously and, between reads, waits only for
//!   readiness (polled directly: tokio's `readable()` future alone is 152 bytes); registration,
//!   login, closing and migration run as boxed futures, so their state is not carried by every idle
//!   connection. A writer task runs only while frames wait that the core's flusher did not send
//!   (the connection's own replies, what a socket did not take, frames on TLS and WebSocket
//!   links), and ends once the queue is empty. An idle connection's future is 312 bytes, with no writer, no timer
//!   and no buffer: W4 went from 3.6 to 1.7 KiB per idle connection. The frames of the core's
//!   turns go out through one flusher task per core, straight to plain TCP sockets: a writer
//!   spawned per connection for each burst cost about 7 % of the core threads' time in W1's open
//!   loop, where a connection rarely gets two frames in one turn.
//! - **Time limits are checked on the core's tick, not by timers**: the idle, `Hello` and frame
//!   deadlines live in the connection's handle, and so does the bound on closing: a client that
//!   reads nothing of what a closing connection still has to write is cut off at the frame
//!   time-out.
//! - **The conversation's core checks idempotency**, not the sender's core: all sends to a
//!   conversation pass through its core, so the check and the write of the idempotency record sit
//!   in one place and one batch, with no window between them.
//! - **Direct conversations are created by the owner core of the lower user id**, so two users
//!   opening their conversation at the same moment on different cores get the same one.
//! - **Message `ts` is the conversation core's clock at storage time**; ids are time-ordered per
//!   core and never reused, even when the clock steps back (see `ids`).
//! - **A panic ends the process** (the binary installs a hook): a dead core thread would leave its
//!   users unserved while the server looked alive; the write-ahead log keeps what was acknowledged.

pub mod config;
mod core;
mod ids;
mod metrics;
mod push;
mod runtime;
#[cfg(test)]
mod sim;
mod store;

pub use config::Config;
pub use runtime::{Server, StartError};
