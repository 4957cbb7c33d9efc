//! Reads off the core's thread: the store reads of a `Sync` page, a `History` page and a
//! `Download`.
//!
//! A core serves every connection it holds from one thread, so a store read that goes to the
//! device holds all of them: a cold `Sync` on a large database held a core 10 to 50 ms at a time.
//! So these reads of what is durable run elsewhere, unless they are small and find everything in
//! memory. The handler first runs a small read ([`READ_ON_CORE_ENTRIES_MAX`]: a device
//! reconnecting after a short while, an app's page of history) on the core against a view that
//! never goes to the device (RocksDB's memtables and block cache); that answers it sooner than a
//! trip to a reader would. Otherwise the handler hands a [`Read`] out with the turn ([`Turn::reads`](super::Turn)), a reader thread
//! runs [`ReadJob::run`] on the durable store, and [`Shard::handle_read`] replies from its answer,
//! on the core, where the updates shown before they were durable are. The core goes on serving in
//! between.
//!
//! What a read sees: a log up to the head the core had when it handed the read out, a
//! conversation's messages, or a complete upload's bytes. None is rewritten once durable, so the
//! answer is still true when it comes back, however late (an upload may be discarded meanwhile:
//! the `Download` is then answered `NOT_FOUND`). If a log's head moved meanwhile, the `Sync` page ends at the old
//! one and says there is more (the spec's `has_more`: "existed when the page was made"), and the
//! device asks again. A connection gone by then gets nothing, and the answer is dropped.
//!
//! At most [`READS_IN_FLIGHT_MAX`] reads of a core are out at once; the next ones wait in the
//! core's queue, in order, and go out as answers come back (a read whose connection closed
//! meanwhile is dropped there). Past [`READS_QUEUED_MAX`] waiting, a page is read on the core. A
//! read that fails answers its request with `INTERNAL` (retryable), as a read on the core did.

use super::chat::read_history;
use super::media::read_media;
use super::{ConnId, HashMap, Shard};
use crate::store::records::{MessageRecord, UpdateRecord};
use crate::store::{Store, StoreError};

/// Reads a core may have handed out and not yet seen answered.
pub(crate) const READS_IN_FLIGHT_MAX: usize = 16;

/// Reads a core keeps waiting for a reader once [`READS_IN_FLIGHT_MAX`] are out: a storm of
/// devices reconnecting at once waits for the readers, and the core goes on serving. Past it a
/// page is read on the core.
pub(crate) const READS_QUEUED_MAX: usize = 4096;

/// Entries (log entries, messages) a read may want and still be tried in memory on the core.
/// Such a page takes the core tens of microseconds, less than the trip to a reader and back; a
/// larger one goes to a reader even when it is in memory, since building it on the core held the
/// core up to 5–10 ms in W5 (`bench/RESULTS.md`).
pub(crate) const READ_ON_CORE_ENTRIES_MAX: usize = 64;

/// A read of what is durable, for a reader: run it, then answer [`Shard::handle_read`] with `id`.
#[derive(Debug)]
pub(crate) struct Read {
    pub(crate) id: u64,
    pub(crate) job: ReadJob,
}

/// What to read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadJob {
    /// A user's log after `since` up to `head`, at most `limit` entries, and the messages they
    /// name (a `Sync` page).
    Log {
        user_id: u64,
        since: u64,
        head: u64,
        limit: usize,
    },
    /// A conversation's messages below `before`, the newest (`after` absent) or the oldest above
    /// `after`, at most `limit` (a `History` page).
    History {
        conversation_id: u64,
        before: u64,
        after: Option<u64>,
        limit: usize,
    },
    /// The bytes `[offset, offset + length)` of a complete upload (a `Download`).
    Media {
        media_id: u64,
        offset: u64,
        length: usize,
    },
}

/// What a read found.
#[derive(Debug)]
pub(crate) enum ReadDone {
    Log(LogRead),
    History(HistoryRead),
    Media(Vec<u8>),
}

/// A page of a log as read: its entries, and the messages they name that were found.
#[derive(Debug)]
pub(crate) struct LogRead {
    pub(crate) rows: Vec<(u64, UpdateRecord)>,
    pub(crate) messages: HashMap<(u64, u64), MessageRecord>,
}

/// A page of a conversation's messages, by seq, and whether there are more in its direction.
#[derive(Debug)]
pub(crate) struct HistoryRead {
    pub(crate) rows: Vec<(u64, MessageRecord)>,
    pub(crate) has_more: bool,
}

impl ReadJob {
    /// Whether the read is small enough to try in memory on the core
    /// ([`READ_ON_CORE_ENTRIES_MAX`]). A download always is: at most 256 KiB, a copy of tens of
    /// microseconds when the store's cache of media chunks holds it.
    fn small(&self) -> bool {
        match *self {
            ReadJob::Log {
                since, head, limit, ..
            } => head.saturating_sub(since).min(limit as u64) <= READ_ON_CORE_ENTRIES_MAX as u64,
            ReadJob::History { limit, .. } => limit <= READ_ON_CORE_ENTRIES_MAX,
            ReadJob::Media { .. } => true,
        }
    }

    /// Runs the read on `store`, which holds what is durable (no core's staged writes).
    pub(crate) fn run(&self, store: &Store) -> Result<ReadDone, StoreError> {
        match *self {
            ReadJob::Log {
                user_id,
                since,
                head,
                limit,
            } => read_log(store, user_id, since, head, limit).map(ReadDone::Log),
            ReadJob::History {
                conversation_id,
                before,
                after,
                limit,
            } => read_history(store, conversation_id, before, after, limit).map(ReadDone::History),
            ReadJob::Media {
                media_id,
                offset,
                length,
            } => read_media(store, media_id, offset, length).map(ReadDone::Media),
        }
    }
}

/// The log's entries in `(since, head]`, at most `limit`, with the messages they name (read
/// together: a read each took most of a page's time).
fn read_log(
    store: &Store,
    user_id: u64,
    since: u64,
    head: u64,
    limit: usize,
) -> Result<LogRead, StoreError> {
    let mut rows = if since >= head {
        Vec::new()
    } else {
        store.updates_after(user_id, since, limit)?
    };
    rows.retain(|(user_seq, _)| *user_seq <= head);
    let mut wanted: Vec<(u64, u64)> = rows
        .iter()
        .filter_map(|(_, record)| match *record {
            UpdateRecord::Message {
                conversation_id,
                seq,
                ..
            } => Some((conversation_id, seq)),
            _ => None,
        })
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let messages = wanted
        .iter()
        .zip(store.messages_at(&wanted)?)
        .filter_map(|(key, message)| Some((*key, message?)))
        .collect();
    Ok(LogRead { rows, messages })
}

/// A request waiting for its read.
#[derive(Debug)]
struct Waiting {
    conn: ConnId,
    request_id: u32,
    user_id: u64,
    job: ReadJob,
}

/// A core's reads out and waiting.
#[derive(Debug, Default)]
pub(crate) struct ReadState {
    /// Every read runs on the core (no reader runs them).
    on_core: bool,
    last_id: u64,
    /// Reads handed out by this turn, for [`Shard::end_turn`].
    out: Vec<Read>,
    /// Reads handed out and not yet answered.
    in_flight: usize,
    /// Reads waiting for one of those to be answered, oldest first.
    queued: std::collections::VecDeque<Read>,
    /// The request of every read handed out or queued, by read id.
    waiting: HashMap<u64, Waiting>,
}

impl ReadState {
    /// A core that runs every read itself.
    #[cfg(test)]
    pub(crate) fn on_core() -> ReadState {
        ReadState {
            on_core: true,
            ..ReadState::default()
        }
    }

    /// The reads handed out since the last call.
    pub(crate) fn take_out(&mut self) -> Vec<Read> {
        std::mem::take(&mut self.out)
    }
}

impl Shard {
    /// Runs a request's read and replies: here if it is small and finds everything in memory,
    /// else on a reader (the reply then comes with [`Shard::handle_read`]), else, with the readers
    /// off or busy, here from the device.
    pub(crate) fn read_and_reply(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        job: ReadJob,
    ) -> Result<(), StoreError> {
        let in_memory = if job.small() {
            job.run(&self.cached)
        } else {
            Err(StoreError::NotCached)
        };
        let done = match in_memory {
            Err(StoreError::NotCached) => {
                if self.read_off_core(conn, request_id, user_id, job) {
                    return Ok(());
                }
                job.run(&self.committed)?
            }
            done => {
                let done = done?;
                self.metrics.core(self.core).reads_in_memory.add(1);
                done
            }
        };
        self.reply_read(conn, request_id, user_id, job, done)
    }

    /// Hands a request's read to a reader, unless readers are off or busy; false then.
    fn read_off_core(&mut self, conn: ConnId, request_id: u32, user_id: u64, job: ReadJob) -> bool {
        let reads = &mut self.reads;
        if reads.on_core || reads.queued.len() >= READS_QUEUED_MAX {
            return false;
        }
        reads.last_id += 1;
        let id = reads.last_id;
        if reads.in_flight < READS_IN_FLIGHT_MAX {
            reads.in_flight += 1;
            reads.out.push(Read { id, job });
        } else {
            reads.queued.push_back(Read { id, job });
        }
        let waiting = Waiting {
            conn,
            request_id,
            user_id,
            job,
        };
        reads.waiting.insert(id, waiting);
        true
    }

    /// A reader's answer to read `id`: the request that waited for it gets its page, or
    /// `INTERNAL` if the read failed. What this produces goes out with the next
    /// [`Shard::end_turn`].
    pub(crate) fn handle_read(&mut self, id: u64, result: Result<ReadDone, StoreError>) {
        // Every answer is of a read that was out: the next one waiting may go.
        self.reads.in_flight = self.reads.in_flight.saturating_sub(1);
        self.send_queued_reads();
        let Some(Waiting {
            conn,
            request_id,
            user_id,
            job,
        }) = self.reads.waiting.remove(&id)
        else {
            return;
        };
        if self.asker_gone(conn, user_id) {
            return;
        }
        let result = result.and_then(|done| self.reply_read(conn, request_id, user_id, job, done));
        if let Err(e) = result {
            tracing::error!(core = self.core, error = %e, "storage error while reading a page");
            self.reply_error(
                conn,
                request_id,
                tern_protocol::ErrorCode::INTERNAL,
                "storage error",
            );
        }
    }

    /// Whether the connection that asked for a read closed (or signed out) since.
    fn asker_gone(&self, conn: ConnId, user_id: u64) -> bool {
        self.session(conn).is_none_or(|s| s.user_id != user_id)
    }

    /// Hands out the queued reads there is room for, dropping those whose connection is gone.
    fn send_queued_reads(&mut self) {
        while self.reads.in_flight < READS_IN_FLIGHT_MAX {
            let Some(read) = self.reads.queued.pop_front() else {
                return;
            };
            let Some(waiting) = self.reads.waiting.get(&read.id) else {
                continue;
            };
            if self.asker_gone(waiting.conn, waiting.user_id) {
                self.reads.waiting.remove(&read.id);
                continue;
            }
            self.reads.in_flight += 1;
            self.reads.out.push(read);
        }
    }

    /// Replies to the request that asked for `job` with what the read found.
    fn reply_read(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        job: ReadJob,
        done: ReadDone,
    ) -> Result<(), StoreError> {
        match (job, done) {
            (
                ReadJob::Log {
                    since, head, limit, ..
                },
                ReadDone::Log(read),
            ) => self.send_sync_page(conn, request_id, user_id, since, limit, head, read),
            (
                ReadJob::History {
                    conversation_id,
                    after,
                    ..
                },
                ReadDone::History(read),
            ) => {
                self.send_history_page(conn, request_id, conversation_id, after, read);
                Ok(())
            }
            (
                ReadJob::Media {
                    media_id, offset, ..
                },
                ReadDone::Media(data),
            ) => self.send_media_data(conn, request_id, media_id, offset, data),
            _ => Err(StoreError::Corrupt(
                "a read answered with another kind".into(),
            )),
        }
    }
}
