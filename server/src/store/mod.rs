//! The RocksDB store: one database, one column family per kind of record.
//!
//! # Schema
//!
//! Keys are fixed-width big-endian ([`keys`]), so byte order is numeric order; values are
//! [`records`] (a version byte and a validated rkyv archive) unless noted.
//!
//! | column family  | key                                   | value                                   | written by            |
//! |----------------|---------------------------------------|-----------------------------------------|-----------------------|
//! | `meta`         | `"idgen"` ++ core (u16)               | id high-water mark (u64)                | that core             |
//! | `users`        | user_id                               | [`records::UserRecord`]                 | name's owner core     |
//! | `usernames`    | username bytes                        | user_id (u64)                           | name's owner core     |
//! | `devices`      | (user_id, device_id u32)              | [`records::DeviceRecord`]               | user's owner core     |
//! | `sessions`     | SHA-256 of the token                  | (user_id, device_id) as a device key    | user's owner core     |
//! | `conversations`| conversation_id                       | [`records::ConversationRecord`]         | creator, then owner   |
//! | `direct`       | (user_lo, user_hi)                    | conversation_id (u64)                   | `user_lo`'s owner core|
//! | `user_convs`   | (user_id, conversation_id)            | empty: the user's conversation list     | creator core          |
//! | `messages`     | (conversation_id, seq)                | [`records::MessageRecord`]              | conversation's owner  |
//! | `fanout`       | conversation_id                       | seq up to which every member's log holds the messages (u64), then, after a membership change while fan-out was unfinished, the seq up to which the recipients are fixed (u64): a row only while fan-out may be unfinished | conversation's owner |
//! | `fanout`       | (conversation_id, seq)                | the members (u64s) still to confirm a message when the conversation's membership changed | conversation's owner |
//! | `updates`      | (user_id, user_seq)                   | [`records::UpdateRecord`], or a run of the entries from that `user_seq` on that one commit wrote ([`runs`]) | user's owner core |
//! | `fanout_marks` | (user_id, conversation_id)            | highest seq in the user's log (u64), as of the user's checkpoint; (user_id, 0): the `user_seq` that checkpoint covers; (user_id, 1): the user's reservation, the `user_seq` up to which updates may be shown before they are durable and the run that reserved it (two u64s) | user's owner core |
//! | `receipts`     | (conversation_id, user_id)            | [`records::ReceiptRecord`]              | user's owner core     |
//! | `idempotency`  | (user_id, device_id, client_msg_id)   | [`records::IdempotencyRecord`]; expires by compaction filter | conversation's owner |
//! | `presence`     | user_id                               | [`records::PresenceRecord`]             | user's owner core     |
//! | `push_outbox`  | (due_ms, user_id)                     | [`records::PushJobRecord`]              | owner core queues, push worker sends |
//! | `media`        | media_id                              | [`records::MediaRecord`]                | uploader's owner core |
//! | `media_chunks` | (media_id, offset)                    | the chunk's bytes, in blob files        | uploader's owner core |
//! | `media_refs`   | (media_id, conversation_id)           | empty: a message there attaches it      | conversation's owner  |
//! | `encrypted_convs` | conversation_id                    | empty: the conversation is encrypted end to end; never removed | creator core |
//! | `device_keys`  | (user_id, device_id)                  | [`records::DeviceKeysRecord`]: identity and fallback key | user's owner core |
//! | `one_time_keys`| (user_id, device_id, key_id u64)      | the key (32 bytes) then its signature (64 bytes) | user's owner core |
//! | `to_device`    | (user_id, device_id, seq u64)         | [`records::ToDeviceRecord`]; seq 0: the last seq assigned (u64), kept when the queue empties | recipient's owner core |
//! | `key_backup`   | (user_id, entry_id 32 bytes)          | the client's encrypted entry, opaque     | user's owner core     |
//!
//! Every record has one writing core, so no two cores ever race on a key: that is what lets each
//! core commit its own write batch without locks. A conversation's `last_seq` is the key of its
//! newest message and a user's head `user_seq` the key of their newest update; owner cores cache
//! both in memory.
//!
//! # Durability
//!
//! The write-ahead log is always on: a committed batch survives `kill -9`. With `fsync`, every
//! commit also syncs the log, so it survives power loss.

pub(crate) mod backend;
pub(crate) mod e2e;
pub(crate) mod keys;
pub(crate) mod overlay;
pub(crate) mod records;
pub(crate) mod rocks;
pub(crate) mod runs;

use std::path::Path;
use std::sync::Arc;

#[cfg(test)]
use backend::MemBackend;
use backend::{Backend, Rows, Slice};
use overlay::Overlay;
use records::*;

/// Column family names, in the order they are created.
pub(crate) static COLUMN_FAMILIES: &[&str] = &[
    CF_META,
    CF_USERS,
    CF_USERNAMES,
    CF_DEVICES,
    CF_SESSIONS,
    CF_CONVERSATIONS,
    CF_DIRECT,
    CF_USER_CONVS,
    CF_MESSAGES,
    CF_FANOUT,
    CF_UPDATES,
    CF_FANOUT_MARKS,
    CF_RECEIPTS,
    CF_IDEMPOTENCY,
    CF_PRESENCE,
    CF_PUSH_OUTBOX,
    CF_MEDIA,
    CF_MEDIA_CHUNKS,
    CF_MEDIA_REFS,
    CF_ENCRYPTED_CONVS,
    CF_DEVICE_KEYS,
    CF_ONE_TIME_KEYS,
    CF_TO_DEVICE,
    CF_KEY_BACKUP,
];

// Statics, not consts: each name is then one address everywhere, which is what `Batch::order`
// compares before the names themselves. A const may be copied into each codegen unit, and then
// most comparisons of two writes to one column family read both names.
static CF_META: &str = "meta";
static CF_USERS: &str = "users";
static CF_USERNAMES: &str = "usernames";
static CF_DEVICES: &str = "devices";
static CF_SESSIONS: &str = "sessions";
static CF_CONVERSATIONS: &str = "conversations";
static CF_DIRECT: &str = "direct";
static CF_USER_CONVS: &str = "user_convs";
static CF_MESSAGES: &str = "messages";
static CF_FANOUT: &str = "fanout";
static CF_UPDATES: &str = "updates";
static CF_FANOUT_MARKS: &str = "fanout_marks";
static CF_RECEIPTS: &str = "receipts";
static CF_IDEMPOTENCY: &str = "idempotency";
static CF_PRESENCE: &str = "presence";
static CF_PUSH_OUTBOX: &str = "push_outbox";
static CF_MEDIA: &str = "media";
static CF_MEDIA_CHUNKS: &str = "media_chunks";
static CF_MEDIA_REFS: &str = "media_refs";
static CF_ENCRYPTED_CONVS: &str = "encrypted_convs";
static CF_DEVICE_KEYS: &str = "device_keys";
static CF_ONE_TIME_KEYS: &str = "one_time_keys";
static CF_TO_DEVICE: &str = "to_device";
static CF_KEY_BACKUP: &str = "key_backup";

/// A row of `fanout` and its key.
pub(crate) type KeyedFanoutRow = (Box<[u8]>, FanoutRow);

/// A row of `fanout`, as [`Store::fanout_rows`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FanoutRow {
    /// The conversation's fan-out is done up to `done`, and may be unfinished after. Up to
    /// `fixed` (when it is above `done`) only the messages with a [`FanoutRow::Recipients`] row
    /// are unfinished, and only to its members: their membership changed since they were sent.
    Open {
        conversation_id: u64,
        done: u64,
        fixed: u64,
    },
    /// A message whose fan-out was unfinished when its conversation's membership changed: the
    /// members (of those it was sent to) still to confirm it then.
    Recipients {
        conversation_id: u64,
        seq: u64,
        members: Vec<u64>,
    },
    /// A row of the format before 0.2, one per message with no value: done up to `seq - 1`.
    Legacy { conversation_id: u64, seq: u64 },
}

/// A queued push job and its (due_ms, user_id) key.
pub(crate) type DuePushJob = ((u64, u64), PushJobRecord);

/// Most records one range read returns; callers page past it.
pub(crate) const RANGE_READ_MAX: usize = 1000;

/// Pairs of an update log [`Store::updates_after`] reads first; each further read takes four
/// times as many, up to the entries still wanted.
const UPDATE_PAIRS_FIRST: usize = 8;

/// Chunks of an upload [`Store::read_media`] reads first (two hold any range of at most one
/// chunk's size); each further read takes four times as many.
const MEDIA_CHUNKS_FIRST: usize = 2;

/// A storage failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk is full: writes fail until there is room again.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The engine reported an error (I/O, corruption it detected).
    #[error("storage: {0}")]
    Io(String),
    /// A stored value failed validation.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A record could not be encoded.
    #[error("encoding a record: {0}")]
    Encode(String),
    /// A read of a memory-only view ([`Store::memory_only`]) needed the device.
    #[error("not in memory")]
    NotCached,
}

/// The database, shared by every core: typed reads and commits over a [`Backend`].
///
/// A core's own copy ([`Store::for_core`]) also reads the batches it handed to its committer and
/// that are not durable yet, through its [`Overlay`].
#[derive(Clone)]
pub(crate) struct Store {
    backend: Arc<dyn Backend>,
    fsync: bool,
    overlay: Option<Arc<Overlay>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("fsync", &self.fsync)
            .field("overlay", &self.overlay.is_some())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the RocksDB database in `path`.
    /// Idempotency records older than `idempotency_retention_ms` are dropped by compaction; the
    /// update logs' memtables are `update_log_memtable_mib` MiB each.
    pub(crate) fn open(
        path: &Path,
        fsync: bool,
        idempotency_retention_ms: u64,
        update_log_memtable_mib: u32,
    ) -> Result<Store, StoreError> {
        let backend =
            rocks::RocksBackend::open(path, idempotency_retention_ms, update_log_memtable_mib)?;
        Ok(Store::with_backend(Arc::new(backend), fsync))
    }

    /// A store over any backend.
    pub(crate) fn with_backend(backend: Arc<dyn Backend>, fsync: bool) -> Store {
        Store {
            backend,
            fsync,
            overlay: None,
        }
    }

    /// An empty store in memory.
    #[cfg(test)]
    pub(crate) fn in_memory() -> Store {
        Store::with_backend(Arc::new(MemBackend::new()), false)
    }

    /// The same database, as one core sees it: with an overlay of its own staged batches.
    pub(crate) fn for_core(&self) -> Store {
        Store {
            backend: Arc::clone(&self.backend),
            fsync: self.fsync,
            overlay: Some(Arc::new(Overlay::new())),
        }
    }

    /// What is durable, read from memory only: a read that would need the device fails with
    /// [`StoreError::NotCached`] instead (RocksDB: memtables and block cache).
    pub(crate) fn memory_only(&self) -> Store {
        Store {
            backend: self
                .backend
                .memory_only()
                .unwrap_or_else(|| Arc::clone(&self.backend)),
            fsync: self.fsync,
            overlay: None,
        }
    }

    /// The backend, for a committer.
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend)
    }

    /// Whether commits sync the log to the disk.
    pub(crate) fn fsync(&self) -> bool {
        self.fsync
    }

    /// This core's staged batches.
    pub(crate) fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_deref()
    }

    /// Commits a batch here and now; with `fsync`, waits for the log to reach the disk. (Cores
    /// hand their batches to a committer instead.)
    pub(crate) fn commit(&self, mut batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.sort();
        self.backend.write(&batch, self.fsync)
    }

    /// The engine's figures worth watching, summed over column families.
    pub(crate) fn properties(&self) -> Vec<(&'static str, u64)> {
        self.backend.properties()
    }

    /// Flushes memtables and the log; used at shutdown.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Slice<'_>>, StoreError> {
        match &self.overlay {
            Some(overlay) => overlay.get(&*self.backend, cf, key),
            None => self.backend.get(cf, key),
        }
    }

    fn get_record<T>(&self, cf: &'static str, key: &[u8]) -> Result<Option<T>, StoreError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
            > + rkyv::Deserialize<T, rkyv::rancor::Strategy<rkyv::de::Pool, rkyv::rancor::Error>>,
    {
        self.get(cf, key)?.map(|v| decode::<T>(&v)).transpose()
    }

    /// Key-value pairs of `cf` whose keys start with `prefix` and are at or after `from`, ascending,
    /// at most `limit`.
    fn scan(
        &self,
        cf: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        match &self.overlay {
            Some(overlay) => overlay.scan(&*self.backend, cf, prefix, from, limit),
            None => self.backend.scan(cf, prefix, from, limit),
        }
    }

    /// As [`Store::scan`], descending from just below `before`.
    fn scan_back(
        &self,
        cf: &'static str,
        prefix: &[u8],
        before: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        match &self.overlay {
            Some(overlay) => overlay.scan_back(&*self.backend, cf, prefix, before, limit),
            None => self.backend.scan_back(cf, prefix, before, limit),
        }
    }

    // ------------------------------------------------------------------ reads

    /// The id high-water mark a core persisted.
    pub(crate) fn id_high_water(&self, core: u16) -> Result<u64, StoreError> {
        Ok(self
            .get(CF_META, &meta_idgen_key(core))?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }

    /// A user's account.
    pub(crate) fn user(&self, user_id: u64) -> Result<Option<UserRecord>, StoreError> {
        self.get_record(CF_USERS, &keys::user(user_id))
    }

    /// The user with this username.
    pub(crate) fn user_id_by_name(&self, username: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get(CF_USERNAMES, username.as_bytes())?
            .and_then(|v| keys::u64_value(&v)))
    }

    /// One device.
    pub(crate) fn device(
        &self,
        user_id: u64,
        device_id: u32,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.get_record(CF_DEVICES, &keys::device(user_id, device_id))
    }

    /// Every device of a user, revoked ones included, by id.
    pub(crate) fn devices(&self, user_id: u64) -> Result<Vec<(u32, DeviceRecord)>, StoreError> {
        let prefix = keys::user(user_id);
        self.scan(CF_DEVICES, &prefix, &prefix, RANGE_READ_MAX)?
            .into_iter()
            .map(|(k, v)| {
                let id = keys::device_id_of(&k)
                    .ok_or_else(|| StoreError::Corrupt("device key".into()))?;
                Ok((id, decode::<DeviceRecord>(&v)?))
            })
            .collect()
    }

    /// The (user, device) a token hash belongs to.
    pub(crate) fn session(&self, token_hash: &[u8; 32]) -> Result<Option<(u64, u32)>, StoreError> {
        Ok(self
            .get(CF_SESSIONS, token_hash)?
            .and_then(|v| Some((keys::u64_value(&v)?, keys::device_id_of(&v)?))))
    }

    /// A conversation.
    pub(crate) fn conversation(
        &self,
        conversation_id: u64,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.get_record(CF_CONVERSATIONS, &keys::conversation(conversation_id))
    }

    /// The direct conversation of two users (`lo < hi`).
    pub(crate) fn direct(&self, lo: u64, hi: u64) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get(CF_DIRECT, &keys::pair(lo, hi))?
            .and_then(|v| keys::u64_value(&v)))
    }

    /// The user's conversation ids above `after`, ascending, at most `limit`.
    pub(crate) fn user_conversations(
        &self,
        user_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let rows = self.scan(
            CF_USER_CONVS,
            &keys::user(user_id),
            &keys::pair(user_id, from),
            limit,
        )?;
        Ok(rows
            .iter()
            .filter_map(|(k, _)| keys::pair_second(k))
            .collect())
    }

    /// One message.
    pub(crate) fn message(
        &self,
        conversation_id: u64,
        seq: u64,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.get_record(CF_MESSAGES, &keys::pair(conversation_id, seq))
    }

    /// The messages at `keys` (conversation, seq), sorted and distinct, read together; in their
    /// order.
    pub(crate) fn messages_at(
        &self,
        keys: &[(u64, u64)],
    ) -> Result<Vec<Option<MessageRecord>>, StoreError> {
        let keys: Vec<[u8; 16]> = keys
            .iter()
            .map(|&(conversation_id, seq)| keys::pair(conversation_id, seq))
            .collect();
        let keys: Vec<&[u8]> = keys.iter().map(|key| &key[..]).collect();
        let values = match &self.overlay {
            Some(overlay) => overlay.get_many(&*self.backend, CF_MESSAGES, &keys)?,
            None => self.backend.multi_get(CF_MESSAGES, &keys)?,
        };
        values
            .into_iter()
            .map(|value| value.map(|v| decode::<MessageRecord>(&v)).transpose())
            .collect()
    }

    /// Messages with `seq < before`, the newest `limit` of them, in ascending order.
    pub(crate) fn messages_before(
        &self,
        conversation_id: u64,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, MessageRecord)>, StoreError> {
        let prefix = keys::conversation(conversation_id);
        let mut rows = self.scan_back(
            CF_MESSAGES,
            &prefix,
            &keys::pair(conversation_id, before),
            limit,
        )?;
        rows.reverse();
        rows.into_iter()
            .map(|(k, v)| {
                let seq = keys::pair_second(&k)
                    .ok_or_else(|| StoreError::Corrupt("message key".into()))?;
                Ok((seq, decode::<MessageRecord>(&v)?))
            })
            .collect()
    }

    /// The seq of the conversation's newest message, 0 when it has none.
    pub(crate) fn last_seq(&self, conversation_id: u64) -> Result<u64, StoreError> {
        let prefix = keys::conversation(conversation_id);
        let rows = self.scan_back(
            CF_MESSAGES,
            &prefix,
            &keys::pair(conversation_id, u64::MAX),
            1,
        )?;
        Ok(rows
            .first()
            .and_then(|(k, _)| keys::pair_second(k))
            .unwrap_or(0))
    }

    /// Updates of a user with `user_seq > since`, ascending, at most `limit`.
    pub(crate) fn updates_after(
        &self,
        user_id: u64,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, UpdateRecord)>, StoreError> {
        let Some(from) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        let limit = limit.min(RANGE_READ_MAX);
        let prefix = keys::user(user_id);
        let start = keys::pair(user_id, from);
        let mut out = Vec::new();
        let take = |out: &mut Vec<(u64, UpdateRecord)>, key: &[u8], value: &[u8]| {
            runs::for_each_entry(key, value, |seq, entry| {
                if seq >= from && out.len() < limit {
                    out.push((seq, decode::<UpdateRecord>(entry)?));
                }
                Ok(out.len() < limit)
            })?;
            Ok::<_, StoreError>(out.len() < limit)
        };
        // Pairs are read a few at a time, more each time: a pair may be a run of hundreds of
        // entries, and reading as many pairs as entries wanted (which is always enough) copied
        // a hundred times what a page of a log written in long runs needed.
        let mut pairs = UPDATE_PAIRS_FIRST.min(limit);
        let mut rows = self.scan(CF_UPDATES, &prefix, &start, pairs)?;
        // Unless a pair starts at `from`, the pair before it may be a run that reaches past it.
        if rows.first().is_none_or(|(key, _)| key[..] != start[..]) {
            for (key, value) in self.scan_back(CF_UPDATES, &prefix, &start, 1)? {
                if value.first() == Some(&runs::RUN_MARK) && !take(&mut out, &key, &value)? {
                    return Ok(out);
                }
            }
        }
        loop {
            let complete = rows.len() < pairs;
            let mut next = None;
            for (key, value) in rows {
                if !take(&mut out, &key, &value)? {
                    return Ok(out);
                }
                next = keys::pair_second(&key).and_then(|seq| seq.checked_add(1));
            }
            let Some(next) = next.filter(|_| !complete) else {
                return Ok(out);
            };
            // Each pair holds at least one entry.
            pairs = (pairs * 4).min(limit - out.len());
            rows = self.scan(CF_UPDATES, &prefix, &keys::pair(user_id, next), pairs)?;
        }
    }

    /// The user's newest `user_seq`, 0 when the log is empty.
    pub(crate) fn last_user_seq(&self, user_id: u64) -> Result<u64, StoreError> {
        let rows = self.scan_back(
            CF_UPDATES,
            &keys::user(user_id),
            &keys::pair(user_id, u64::MAX),
            1,
        )?;
        match rows.first() {
            Some((key, value)) => runs::last_seq(key, value),
            None => Ok(0),
        }
    }

    /// A user's presence record.
    pub(crate) fn presence(&self, user_id: u64) -> Result<Option<PresenceRecord>, StoreError> {
        self.get_record(CF_PRESENCE, &keys::user(user_id))
    }

    /// A user's watermarks in a conversation.
    pub(crate) fn receipt(
        &self,
        conversation_id: u64,
        user_id: u64,
    ) -> Result<ReceiptRecord, StoreError> {
        Ok(self
            .get_record(CF_RECEIPTS, &keys::pair(conversation_id, user_id))?
            .unwrap_or_default())
    }

    /// The durable result of an earlier `Send` with this idempotency key
    /// ([`keys::idempotency`]), read from the backend past the overlay. Only for a caller that
    /// keeps every idempotency record of its staged batches itself and has looked there first.
    pub(crate) fn durable_idempotency(
        &self,
        key: &[u8; 28],
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.backend
            .get(CF_IDEMPOTENCY, key)?
            .map(|v| decode::<IdempotencyRecord>(&v))
            .transpose()
    }

    /// The highest seq of a conversation already in a user's log.
    pub(crate) fn fanout_mark(
        &self,
        user_id: u64,
        conversation_id: u64,
    ) -> Result<u64, StoreError> {
        Ok(self
            .get(CF_FANOUT_MARKS, &keys::pair(user_id, conversation_id))?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }

    /// The `user_seq` up to which a user's stored fan-out watermarks cover the log (0: none).
    pub(crate) fn marks_upto(&self, user_id: u64) -> Result<u64, StoreError> {
        self.fanout_mark(user_id, 0)
    }

    /// A user's reservation: the `user_seq` up to which their owner core may show updates before
    /// they are durable, and the run that reserved it; `(0, 0)` for none.
    pub(crate) fn reservation(&self, user_id: u64) -> Result<(u64, u64), StoreError> {
        let value = self.get(CF_FANOUT_MARKS, &keys::pair(user_id, RESERVATION_KEY))?;
        Ok(value
            .and_then(|v| Some((keys::pair_first(&v)?, keys::pair_second(&v)?)))
            .unwrap_or((0, 0)))
    }

    /// Rows of `fanout` at or after the key `from`, ascending, at most `limit`: each with its key.
    pub(crate) fn fanout_rows(
        &self,
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyedFanoutRow>, StoreError> {
        let rows = self.scan(CF_FANOUT, &[], from, limit)?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let conversation_id = keys::pair_first(&k)?;
                let row = match keys::pair_second(&k) {
                    Some(seq) if v.is_empty() => FanoutRow::Legacy {
                        conversation_id,
                        seq,
                    },
                    Some(seq) => FanoutRow::Recipients {
                        conversation_id,
                        seq,
                        members: v.chunks_exact(8).filter_map(keys::u64_value).collect(),
                    },
                    None => FanoutRow::Open {
                        conversation_id,
                        done: keys::u64_value(&v)?,
                        fixed: v.get(8..).and_then(keys::u64_value).unwrap_or(0),
                    },
                };
                Some((k, row))
            })
            .collect())
    }

    /// Push jobs due at or before `now_ms` with their (due_ms, user_id) keys, soonest first, at most
    /// `limit`.
    pub(crate) fn due_push_jobs(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DuePushJob>, StoreError> {
        let rows = self.scan(CF_PUSH_OUTBOX, &[], &[], limit)?;
        let mut out = Vec::new();
        for (k, v) in rows {
            let (Some(due), Some(user)) = (keys::pair_first(&k), keys::pair_second(&k)) else {
                continue;
            };
            if due > now_ms {
                break;
            }
            out.push(((due, user), decode::<PushJobRecord>(&v)?));
        }
        Ok(out)
    }

    /// Every queued push job's user, for a core to learn at start which users already have one.
    pub(crate) fn push_job_users(&self) -> Result<Vec<u64>, StoreError> {
        let mut users = Vec::new();
        let mut from = keys::pair(0, 0).to_vec();
        loop {
            let rows = self.scan(CF_PUSH_OUTBOX, &[], &from, RANGE_READ_MAX)?;
            let Some((last, _)) = rows.last() else { break };
            users.extend(rows.iter().filter_map(|(k, _)| keys::pair_second(k)));
            from = last.to_vec();
            from.push(0);
            if rows.len() < RANGE_READ_MAX {
                break;
            }
        }
        Ok(users)
    }

    /// An upload's record.
    pub(crate) fn media(&self, media_id: u64) -> Result<Option<MediaRecord>, StoreError> {
        self.get_record(CF_MEDIA, &keys::conversation(media_id))
    }

    /// Upload records with ids above `after`, ascending, at most `limit` (for the expiry sweep).
    pub(crate) fn media_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, MediaRecord)>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.scan(CF_MEDIA, &[], &keys::conversation(from), limit)?
            .into_iter()
            .map(|(k, v)| {
                let id =
                    keys::u64_value(&k).ok_or_else(|| StoreError::Corrupt("media key".into()))?;
                Ok((id, decode::<MediaRecord>(&v)?))
            })
            .collect()
    }

    /// The conversations whose messages attach a media item, at most `limit`.
    pub(crate) fn media_refs(&self, media_id: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let prefix = keys::conversation(media_id);
        let rows = self.scan(CF_MEDIA_REFS, &prefix, &prefix, limit)?;
        Ok(rows
            .iter()
            .filter_map(|(k, _)| keys::pair_second(k))
            .collect())
    }

    /// Appends the bytes `[offset, offset + length)` of an upload to `out` (fewer at its end).
    pub(crate) fn read_media(
        &self,
        media_id: u64,
        offset: u64,
        length: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let prefix = keys::conversation(media_id);
        // The chunk that holds `offset` starts at or before it.
        let start = self
            .scan_back(
                CF_MEDIA_CHUNKS,
                &prefix,
                &keys::pair(media_id, offset.saturating_add(1)),
                1,
            )?
            .first()
            .and_then(|(k, _)| keys::pair_second(k))
            .unwrap_or(0);
        let mut from = keys::pair(media_id, start).to_vec();
        // Chunks are read a few at a time, more each time, as the update logs' pairs are: read a
        // thousand at a time, every `Download` of 256 KiB copied the rest of the upload out of
        // RocksDB, up to 250 MiB.
        let mut chunks = MEDIA_CHUNKS_FIRST;
        while out.len() < length {
            let rows = self.scan(CF_MEDIA_CHUNKS, &prefix, &from, chunks)?;
            let Some((last, _)) = rows.last() else { break };
            for (k, data) in &rows {
                let chunk_start =
                    keys::pair_second(k).ok_or_else(|| StoreError::Corrupt("chunk key".into()))?;
                let skip = offset.saturating_sub(chunk_start).min(data.len() as u64) as usize;
                let want = length - out.len();
                out.extend_from_slice(&data[skip..(skip + want).min(data.len())]);
                if out.len() >= length {
                    break;
                }
            }
            from = last.to_vec();
            from.push(0);
            if rows.len() < chunks {
                break;
            }
            chunks = (chunks * 4).min(RANGE_READ_MAX);
        }
        Ok(())
    }

    /// A new, empty batch.
    pub(crate) fn batch(&self) -> Batch {
        Batch::default()
    }
}

/// Writes collected during one loop turn of a core, committed together (group commit).
///
/// The writes are kept in the order made and handed to RocksDB sorted by column family and key
/// (a stable sort, so writes to one key keep their order and the outcome is the same). A turn's
/// writes come from many users and conversations interleaved; sorted, each memtable insert starts
/// its skip-list search where the previous one ended instead of at the top.
#[derive(Default)]
pub(crate) struct Batch {
    /// The writes, in the order made.
    ops: Vec<Op>,
    /// The keys and values of `ops`, end to end.
    bytes: Vec<u8>,
    /// Whether a range delete is among `ops`: then they are written in the order made, as a range
    /// delete does not commute with writes to keys inside its range.
    ranged: bool,
    /// Whether `ops` are sorted by column family and key ([`Batch::sort`]).
    sorted: bool,
    /// The last update-log entry put and where its value is in `bytes`: a message's entries for
    /// all its members are equal, so each is encoded once per batch and copied.
    last_update: Option<(UpdateRecord, usize, usize)>,
}

/// Sorts a batch's sort keys (column family's rank, key head, index) as `sort_unstable` would.
///
/// A group message's fan-out puts many entries per member into one batch: each member's in the
/// order made, and so in key order. Grouped by family and the key's first 8 bytes (the member, the
/// conversation), only the groups need a comparison sort, and a group in order only a check. Where
/// the groups are not much fewer than the writes, grouping would only add work, and the keys are
/// sorted as they are.
fn sort_order(order: &mut Vec<(u8, u128, u32)>) {
    if order.len() < GROUPED_SORT_FROM || !sort_grouped(order) {
        order.sort_unstable();
    }
}

/// Batches with fewer writes are always sorted directly: grouping them costs more than it saves.
const GROUPED_SORT_FROM: usize = 512;

/// The writes [`sort_grouped`] looks at before it decides whether to go on: if half of them
/// started groups of their own (one-to-one traffic), it stops there and the batch is sorted
/// directly.
const GROUPED_SORT_PROBE: usize = 256;

/// [`sort_order`] by groups; `false`, with `order` untouched, once there are a quarter as many
/// groups as writes, or half as many among the first [`GROUPED_SORT_PROBE`].
fn sort_grouped(order: &mut Vec<(u8, u128, u32)>) -> bool {
    let most = order.len() / 4;
    let mut ids: crate::core::HashMap<(u8, u64), u32> =
        crate::core::HashMap::with_capacity_and_hasher(GROUPED_SORT_PROBE / 2, Default::default());
    // Each group's key and size, in the order first seen; and each write's group.
    let mut groups: Vec<((u8, u64), u32)> = Vec::new();
    let mut group_of: Vec<u32> = Vec::with_capacity(order.len());
    for (seen, &(rank, head, _)) in order.iter().enumerate() {
        if seen == GROUPED_SORT_PROBE && groups.len() > GROUPED_SORT_PROBE / 2 {
            return false;
        }
        let key = (rank, (head >> 64) as u64);
        let next = groups.len() as u32;
        let id = *ids.entry(key).or_insert(next);
        if id == next {
            if groups.len() == most {
                return false;
            }
            groups.push((key, 0));
        }
        groups[id as usize].1 += 1;
        group_of.push(id);
    }
    let mut by_key: Vec<u32> = (0..groups.len() as u32).collect();
    by_key.sort_unstable_by_key(|&g| groups[g as usize].0);
    // Where each group's next write goes: the groups laid end to end in key order.
    let mut next_at = vec![0u32; groups.len()];
    let mut at = 0;
    for &g in &by_key {
        next_at[g as usize] = at;
        at += groups[g as usize].1;
    }
    let mut sorted = vec![(0, 0, 0); order.len()];
    for (&item, &g) in order.iter().zip(&group_of) {
        let slot = &mut next_at[g as usize];
        sorted[*slot as usize] = item;
        *slot += 1;
    }
    // A group holds its writes in the order made (ascending index), so it is sorted once their
    // heads ascend; otherwise it is sorted by itself.
    let mut from = 0;
    for &g in &by_key {
        let to = from + groups[g as usize].1 as usize;
        let group = &mut sorted[from..to];
        if !group.windows(2).all(|w| w[0] <= w[1]) {
            group.sort_unstable();
        }
        from = to;
    }
    *order = sorted;
    true
}

/// One write of a [`Batch`]: its key is `bytes[at..at + key_len]`, and its value (the range end of
/// a range delete) follows for `value_len` bytes.
#[derive(Clone, Copy, Debug)]
struct Op {
    cf: &'static str,
    kind: OpKind,
    /// The key's first 16 bytes, zero-padded, as a number: most keys differ there, so sorting
    /// compares these and reads the keys themselves only on a tie.
    head: u128,
    at: usize,
    key_len: usize,
    value_len: usize,
}

impl Op {
    fn head(key: &[u8]) -> u128 {
        let mut head = [0u8; 16];
        let n = key.len().min(16);
        head[..n].copy_from_slice(&key[..n]);
        u128::from_be_bytes(head)
    }
}

/// Where a column family's name falls among all of them in byte order, remembered for the last
/// name asked about (a batch's writes come in runs of one family).
#[derive(Default)]
struct CfRanks {
    last: Option<(&'static str, u8)>,
}

impl CfRanks {
    fn rank(&mut self, cf: &'static str) -> u8 {
        if let Some((name, rank)) = self.last {
            if std::ptr::eq(name, cf) {
                return rank;
            }
        }
        static RANKS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let ranks = RANKS.get_or_init(|| {
            COLUMN_FAMILIES
                .iter()
                .map(|cf| COLUMN_FAMILIES.iter().filter(|name| *name < cf).count() as u8)
                .collect()
        });
        let i = COLUMN_FAMILIES
            .iter()
            .position(|name| *name == cf)
            .unwrap_or_else(|| panic!("{cf} is not a column family"));
        let rank = ranks[i];
        self.last = Some((cf, rank));
        rank
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Put,
    Delete,
    DeleteRange,
}

impl Batch {
    /// Whether nothing was written.
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// How many writes it holds.
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    fn push(&mut self, cf: &'static str, kind: OpKind, key: &[u8], value: &[u8]) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.push_op(cf, kind, at, key.len(), value.len());
    }

    /// Records the write whose key (and value) were appended to `bytes` from `at`.
    fn push_op(
        &mut self,
        cf: &'static str,
        kind: OpKind,
        at: usize,
        key_len: usize,
        value_len: usize,
    ) {
        self.sorted = false;
        let head = Op::head(&self.bytes[at..at + key_len]);
        self.ops.push(Op {
            cf,
            kind,
            head,
            at,
            key_len,
            value_len,
        });
    }

    /// An empty batch with room for as much as this one holds: a core's batches are much alike
    /// from one turn to the next, and one that held little makes the next one small again.
    pub(crate) fn next_like(&self) -> Batch {
        Batch {
            ops: Vec::with_capacity(self.ops.len()),
            bytes: Vec::with_capacity(self.bytes.len()),
            ..Batch::default()
        }
    }

    /// How `op` orders against a write to `key` (whose [`Op::head`] is `head`) of `cf`: by column
    /// family, then key. The names of one family are one static string, so they are told apart by
    /// address before by content; and a head that differs orders two keys as the keys themselves
    /// would (zero padding sorts a shorter key first, as a prefix does), so most comparisons read
    /// neither name nor key.
    fn order(&self, op: &Op, cf: &'static str, head: u128, key: &[u8]) -> std::cmp::Ordering {
        let by_cf = if std::ptr::eq(op.cf, cf) {
            std::cmp::Ordering::Equal
        } else {
            op.cf.cmp(cf)
        };
        by_cf
            .then(op.head.cmp(&head))
            .then_with(|| self.key(op).cmp(key))
    }

    fn key(&self, op: &Op) -> &[u8] {
        &self.bytes[op.at..op.at + op.key_len]
    }

    fn value(&self, op: &Op) -> &[u8] {
        let from = op.at + op.key_len;
        &self.bytes[from..from + op.value_len]
    }

    fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.push(cf, OpKind::Put, key, value);
    }

    fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.push(cf, OpKind::Delete, key, &[]);
    }

    fn delete_range(&mut self, cf: &'static str, from: &[u8], to: &[u8]) {
        self.ranged = true;
        self.push(cf, OpKind::DeleteRange, from, to);
    }

    /// Sorts the writes by column family and key, unless a range delete keeps them in the order
    /// made. Writes to one key keep their order (the sort is stable), so the outcome is the same.
    pub(crate) fn sort(&mut self) {
        if self.ranged || self.sorted {
            return;
        }
        // Sorted as small keys, (column family's rank, head, index), and only then are the writes
        // gathered: most comparisons are two integers, and each write moves once. The index is the
        // order made, so this is the order of a stable sort. Writes whose family and head tie are
        // put in order by their whole keys afterwards: keys longer than 16 bytes, or one key a
        // zero-padded prefix of another.
        let mut ranks = CfRanks::default();
        let mut order: Vec<(u8, u128, u32)> = self
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| (ranks.rank(op.cf), op.head, i as u32))
            .collect();
        sort_order(&mut order);
        let mut start = 0;
        while start < order.len() {
            let (rank, head, _) = order[start];
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|&&(r, h, _)| r == rank && h == head)
                    .count();
            if end - start > 1 {
                order[start..end].sort_unstable_by(|a, b| {
                    let key = |i: u32| self.key(&self.ops[i as usize]);
                    key(a.2).cmp(key(b.2)).then(a.2.cmp(&b.2))
                });
            }
            start = end;
        }
        self.ops = order
            .iter()
            .map(|&(_, _, i)| self.ops[i as usize])
            .collect();
        self.sorted = true;
    }

    /// The last write this batch makes to `key` of `cf`: `Some(Some(value))` a put, `Some(None)` a
    /// delete (or a range delete over it), `None` none. A binary search once sorted.
    pub(crate) fn lookup(&self, cf: &'static str, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.sorted {
            let head = Op::head(key);
            let after = self
                .ops
                .partition_point(|op| self.order(op, cf, head, key).is_le());
            let op = self.ops[..after].last()?;
            if op.cf != cf || self.key(op) != key {
                return None;
            }
            return Some((op.kind == OpKind::Put).then(|| self.value(op)));
        }
        self.ops.iter().rev().find_map(|op| {
            if op.cf != cf {
                return None;
            }
            match op.kind {
                OpKind::Put if self.key(op) == key => Some(Some(self.value(op))),
                OpKind::Delete if self.key(op) == key => Some(None),
                OpKind::DeleteRange if self.key(op) <= key && key < self.value(op) => Some(None),
                _ => None,
            }
        })
    }

    /// The writes to `cf` that touch keys in `[from, to)`, in the order made. A sorted batch (which
    /// holds no range delete) is searched for `from` and read only up to `to`, so a read of one
    /// user's log touches that log's writes, not the rest of a large batch.
    pub(crate) fn ops_in<'a>(
        &'a self,
        cf: &'static str,
        from: &'a [u8],
        to: &'a [u8],
    ) -> impl Iterator<Item = (OpKind, &'a [u8], &'a [u8])> + 'a {
        let start = if self.sorted {
            let head = Op::head(from);
            self.ops
                .partition_point(|op| self.order(op, cf, head, from).is_lt())
        } else {
            0
        };
        self.ops[start..]
            .iter()
            .take_while(move |op| !self.sorted || (op.cf == cf && self.key(op) < to))
            .filter(move |op| {
                op.cf == cf
                    && self.key(op) < to
                    && (self.key(op) >= from
                        || (op.kind == OpKind::DeleteRange && self.value(op) > from))
            })
            .map(|op| (op.kind, self.key(op), self.value(op)))
    }

    /// The writes in order: column family, kind, key, and value (a range delete's end).
    pub(crate) fn ops(&self) -> impl Iterator<Item = (&'static str, OpKind, &[u8], &[u8])> + '_ {
        self.ops
            .iter()
            .map(|op| (op.cf, op.kind, self.key(op), self.value(op)))
    }

    /// Bytes of keys and values held.
    pub(crate) fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    fn put_record<T>(&mut self, cf: &'static str, key: &[u8], value: &T) -> Result<(), StoreError>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(key);
        match records::encode_into(value, &mut self.bytes) {
            Ok(value_len) => {
                self.push_op(cf, OpKind::Put, at, key.len(), value_len);
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(at);
                Err(e)
            }
        }
    }

    pub(crate) fn put_id_high_water(&mut self, core: u16, high_water: u64) {
        self.put(CF_META, &meta_idgen_key(core), &high_water.to_be_bytes());
    }

    pub(crate) fn put_user(&mut self, user_id: u64, user: &UserRecord) -> Result<(), StoreError> {
        self.put(CF_USERNAMES, user.username.as_bytes(), &keys::user(user_id));
        self.put_record(CF_USERS, &keys::user(user_id), user)
    }

    pub(crate) fn put_device(
        &mut self,
        user_id: u64,
        device_id: u32,
        device: &DeviceRecord,
    ) -> Result<(), StoreError> {
        self.put_record(CF_DEVICES, &keys::device(user_id, device_id), device)
    }

    pub(crate) fn put_session(&mut self, token_hash: &[u8; 32], user_id: u64, device_id: u32) {
        self.put(CF_SESSIONS, token_hash, &keys::device(user_id, device_id));
    }

    pub(crate) fn delete_session(&mut self, token_hash: &[u8; 32]) {
        self.delete(CF_SESSIONS, token_hash);
    }

    pub(crate) fn put_conversation(
        &mut self,
        conversation_id: u64,
        conversation: &ConversationRecord,
    ) -> Result<(), StoreError> {
        self.put_record(
            CF_CONVERSATIONS,
            &keys::conversation(conversation_id),
            conversation,
        )
    }

    pub(crate) fn put_direct(&mut self, lo: u64, hi: u64, conversation_id: u64) {
        self.put(
            CF_DIRECT,
            &keys::pair(lo, hi),
            &keys::conversation(conversation_id),
        );
    }

    pub(crate) fn put_user_conversation(&mut self, user_id: u64, conversation_id: u64) {
        self.put(CF_USER_CONVS, &keys::pair(user_id, conversation_id), &[]);
    }

    pub(crate) fn put_push_job(
        &mut self,
        due_ms: u64,
        job: &PushJobRecord,
    ) -> Result<(), StoreError> {
        self.put_record(CF_PUSH_OUTBOX, &keys::pair(due_ms, job.user_id), job)
    }

    pub(crate) fn delete_push_job(&mut self, due_ms: u64, user_id: u64) {
        self.delete(CF_PUSH_OUTBOX, &keys::pair(due_ms, user_id));
    }

    pub(crate) fn put_media(
        &mut self,
        media_id: u64,
        record: &MediaRecord,
    ) -> Result<(), StoreError> {
        self.put_record(CF_MEDIA, &keys::conversation(media_id), record)
    }

    pub(crate) fn put_media_chunk(&mut self, media_id: u64, offset: u64, data: &[u8]) {
        self.put(CF_MEDIA_CHUNKS, &keys::pair(media_id, offset), data);
    }

    /// Deletes an upload: its record and every chunk.
    pub(crate) fn delete_media(&mut self, media_id: u64) {
        self.delete(CF_MEDIA, &keys::conversation(media_id));
        self.delete_range(
            CF_MEDIA_CHUNKS,
            &keys::pair(media_id, 0),
            &keys::pair(media_id.saturating_add(1), 0),
        );
    }

    pub(crate) fn put_media_ref(&mut self, media_id: u64, conversation_id: u64) {
        self.put(CF_MEDIA_REFS, &keys::pair(media_id, conversation_id), &[]);
    }

    pub(crate) fn put_presence(
        &mut self,
        user_id: u64,
        record: &PresenceRecord,
    ) -> Result<(), StoreError> {
        self.put_record(CF_PRESENCE, &keys::user(user_id), record)
    }

    pub(crate) fn delete_user_conversation(&mut self, user_id: u64, conversation_id: u64) {
        self.delete(CF_USER_CONVS, &keys::pair(user_id, conversation_id));
    }

    pub(crate) fn put_message(
        &mut self,
        conversation_id: u64,
        seq: u64,
        message: &MessageRecord,
    ) -> Result<(), StoreError> {
        self.put_record(CF_MESSAGES, &keys::pair(conversation_id, seq), message)
    }

    /// Records that the conversation's fan-out is done up to `done` and may be unfinished after;
    /// up to `fixed`, if it is above `done`, only for the messages given recipients by
    /// [`Batch::put_fanout_recipients`].
    pub(crate) fn put_fanout_open(&mut self, conversation_id: u64, done: u64, fixed: u64) {
        let key = keys::conversation(conversation_id);
        if fixed > done {
            self.put(CF_FANOUT, &key, &keys::pair(done, fixed));
        } else {
            self.put(CF_FANOUT, &key, &done.to_be_bytes());
        }
    }

    /// Records the members (not empty) still to confirm a message when its conversation's
    /// membership changed: whom recovery delivers it to.
    pub(crate) fn put_fanout_recipients(
        &mut self,
        conversation_id: u64,
        seq: u64,
        members: &[u64],
    ) {
        debug_assert!(
            !members.is_empty(),
            "an empty value is a row of the old format"
        );
        let value: Vec<u8> = members.iter().flat_map(|m| m.to_be_bytes()).collect();
        self.put(CF_FANOUT, &keys::pair(conversation_id, seq), &value);
    }

    /// Removes a row of `fanout` by its key (the conversation's, or an older format's).
    pub(crate) fn delete_fanout_row(&mut self, key: &[u8]) {
        self.delete(CF_FANOUT, key);
    }

    /// Records the `user_seq` up to which the user's stored fan-out watermarks cover the log.
    pub(crate) fn put_marks_upto(&mut self, user_id: u64, user_seq: u64) {
        self.put_fanout_mark(user_id, 0, user_seq);
    }

    pub(crate) fn put_update(
        &mut self,
        user_id: u64,
        user_seq: u64,
        update: &UpdateRecord,
    ) -> Result<(), StoreError> {
        let key = keys::pair(user_id, user_seq);
        if let Some((last, from, len)) = &self.last_update {
            if last == update {
                let (from, len) = (*from, *len);
                let at = self.bytes.len();
                self.bytes.extend_from_slice(&key);
                self.bytes.extend_from_within(from..from + len);
                self.push_op(CF_UPDATES, OpKind::Put, at, key.len(), len);
                return Ok(());
            }
        }
        self.put_record(CF_UPDATES, &key, update)?;
        let op = self.ops.last().expect("just put");
        self.last_update = Some((update.clone(), op.at + op.key_len, op.value_len));
        Ok(())
    }

    pub(crate) fn put_fanout_mark(&mut self, user_id: u64, conversation_id: u64, seq: u64) {
        self.put(
            CF_FANOUT_MARKS,
            &keys::pair(user_id, conversation_id),
            &seq.to_be_bytes(),
        );
    }

    /// See [`Store::reservation`].
    pub(crate) fn put_reservation(&mut self, user_id: u64, up_to: u64, run: u64) {
        self.put(
            CF_FANOUT_MARKS,
            &keys::pair(user_id, RESERVATION_KEY),
            &keys::pair(up_to, run),
        );
    }

    pub(crate) fn put_receipt(
        &mut self,
        conversation_id: u64,
        user_id: u64,
        receipt: &ReceiptRecord,
    ) -> Result<(), StoreError> {
        self.put_record(CF_RECEIPTS, &keys::pair(conversation_id, user_id), receipt)
    }

    pub(crate) fn put_idempotency(
        &mut self,
        user_id: u64,
        device_id: u32,
        client_msg_id: &[u8; 16],
        record: &IdempotencyRecord,
    ) -> Result<(), StoreError> {
        self.put_record(
            CF_IDEMPOTENCY,
            &keys::idempotency(user_id, device_id, client_msg_id),
            record,
        )
    }
}

/// The `fanout_marks` key (user_id, 1) holds a user's reservation; no conversation has id 1 (ids
/// start with a timestamp), and (user_id, 0) is the checkpoint's `user_seq`.
const RESERVATION_KEY: u64 = 1;

fn meta_idgen_key(core: u16) -> [u8; 7] {
    let mut key = *b"idgen\0\0";
    key[5..].copy_from_slice(&core.to_be_bytes());
    key
}

/// The smallest key above every key starting with `prefix` (for iterator upper bounds); an empty
/// or all-0xFF prefix has none, and gets a bound above any key this schema writes.
fn prefix_upper_bound(prefix: &[u8]) -> Vec<u8> {
    let mut bound = prefix.to_vec();
    while let Some(last) = bound.pop() {
        if last < 0xff {
            bound.push(last + 1);
            return bound;
        }
    }
    vec![0xff; 64]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UPDATE_LOG_MEMTABLE_MIB_DEFAULT;

    /// Every backend the store runs on, each as a fresh store: RocksDB in a temp dir, memory, and
    /// a core's view with a staged batch of unrelated keys over it (so reads merge through the
    /// overlay).
    fn stores() -> Vec<(Option<tempfile::TempDir>, Store)> {
        let dir = tempfile::tempdir().unwrap();
        let rocks = Store::open(dir.path(), false, 1000, UPDATE_LOG_MEMTABLE_MIB_DEFAULT).unwrap();
        let staged = Store::in_memory().for_core();
        let mut batch = staged.batch();
        batch.put_user_conversation(u64::MAX, 1);
        batch.sort();
        staged.overlay().unwrap().stage(1, Arc::new(batch));
        vec![
            (Some(dir), rocks),
            (None, Store::in_memory()),
            (None, staged),
        ]
    }

    fn fanout_rows(store: &Store) -> Vec<FanoutRow> {
        let rows = store.fanout_rows(&[], 10).unwrap();
        rows.into_iter().map(|(_, row)| row).collect()
    }

    // Proves every kind of `fanout` row reads back as written, in key order: a conversation's row
    // with and without fixed recipients, a message's recipients, and a row of the old format.
    #[test]
    fn fanout_rows_read_back_as_written() {
        for (_dir, store) in stores() {
            let mut batch = store.batch();
            batch.put_fanout_open(4, 9, 12);
            batch.put_fanout_recipients(4, 11, &[7, u64::MAX]);
            batch.put_fanout_open(6, 3, 3);
            batch.put(CF_FANOUT, &keys::pair(8, 5), &[]);
            store.commit(batch).unwrap();
            assert_eq!(
                fanout_rows(&store),
                [
                    FanoutRow::Open {
                        conversation_id: 4,
                        done: 9,
                        fixed: 12
                    },
                    FanoutRow::Recipients {
                        conversation_id: 4,
                        seq: 11,
                        members: vec![7, u64::MAX]
                    },
                    FanoutRow::Open {
                        conversation_id: 6,
                        done: 3,
                        fixed: 0
                    },
                    FanoutRow::Legacy {
                        conversation_id: 8,
                        seq: 5
                    },
                ]
            );
        }
    }

    // Proves a batch, written sorted by key, keeps the outcome of the order its writes were made in:
    // a put then a delete of one key leaves nothing, a delete then a put leaves the put, the last
    // of several puts wins, and a range delete removes what was put inside its range before it.
    #[test]
    fn sorted_batches_keep_the_order_of_writes_to_one_key() {
        for (_dir, store) in stores() {
            let mut batch = store.batch();
            batch.put_fanout_open(5, 1, 0);
            batch.delete_fanout_row(&keys::conversation(5));
            batch.delete_fanout_row(&keys::conversation(3));
            batch.put_fanout_open(3, 7, 0);
            batch.put_fanout_open(1, 2, 0);
            batch.put_id_high_water(0, 10);
            batch.put_id_high_water(0, 30);
            batch.put_id_high_water(0, 20);
            store.commit(batch).unwrap();
            let open = fanout_rows(&store);
            let open_row = |conversation_id, done| FanoutRow::Open {
                conversation_id,
                done,
                fixed: 0,
            };
            assert_eq!(open, [open_row(1, 2), open_row(3, 7)]);
            assert_eq!(store.id_high_water(0).unwrap(), 20);

            let mut batch = store.batch();
            batch.put_media_chunk(8, 0, b"old");
            batch.delete_media(8);
            batch.put_media_chunk(9, 0, b"kept");
            store.commit(batch).unwrap();
            let mut out = Vec::new();
            store.read_media(8, 0, 3, &mut out).unwrap();
            assert!(out.is_empty(), "{out:?}");
            store.read_media(9, 0, 4, &mut out).unwrap();
            assert_eq!(out, b"kept");
        }
    }

    // Proves a sorted batch orders its writes as a stable sort by column family and key bytes
    // would, for keys that tie on their first 16 bytes, are prefixes of each other or are short.
    #[test]
    fn sorted_batches_order_keys_as_their_bytes() {
        let mut rng = crate::sim::Rng::new(7);
        let store = Store::in_memory();
        for _ in 0..50 {
            let mut batch = store.batch();
            let mut made = Vec::new();
            for i in 0..200u32 {
                let cf = [CF_UPDATES, CF_MESSAGES, CF_IDEMPOTENCY][rng.below(3)];
                // Few distinct bytes and lengths around 16, so heads tie and keys nest.
                let len = [0, 1, 8, 15, 16, 17, 24, 28][rng.below(8)];
                let key: Vec<u8> = (0..len).map(|_| rng.below(3) as u8).collect();
                batch.put(cf, &key, &i.to_be_bytes());
                made.push((cf, key, i));
            }
            batch.sort();
            made.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let sorted: Vec<_> = batch
                .ops()
                .map(|(cf, _, key, value)| {
                    (
                        cf,
                        key.to_vec(),
                        u32::from_be_bytes(value.try_into().unwrap()),
                    )
                })
                .collect();
            assert_eq!(sorted, made);
        }
    }

    // Proves the sort by groups orders a batch's sort keys exactly as a plain sort does, for a
    // fan-out's pattern (each member's entries in order, members interleaved) with groups of
    // another family out of order; and that it leaves a batch of mostly distinct groups untouched,
    // for the plain sort.
    #[test]
    fn grouped_sort_orders_as_a_plain_sort() {
        let mut rng = crate::sim::Rng::new(11);
        for round in 0..60 {
            let members = 1 + rng.below(60) as u64;
            let mut next_seq = vec![100u64; members as usize];
            let mut order = Vec::new();
            while order.len() < GROUPED_SORT_FROM + rng.below(3000) {
                let index = order.len() as u32;
                let pick = rng.below(20);
                let (rank, head) = if pick < 14 {
                    // A fan-out entry: (member, user_seq), each member's ascending.
                    let member = rng.below(members as usize);
                    next_seq[member] += 1;
                    (
                        5u8,
                        (u128::from(member as u64 * 7919) << 64) | u128::from(next_seq[member]),
                    )
                } else if pick < 19 {
                    // Few keys of another family, often out of order within their group.
                    let hi = rng.below(1 + round % 4) as u64;
                    (2u8, (u128::from(hi) << 64) | rng.below(50) as u128)
                } else {
                    // Keys that differ in their first 8 bytes: a group each.
                    (3u8, u128::from(rng.below(1 << 20) as u64) << 64)
                };
                order.push((rank, head, index));
            }
            let distinct = round % 10 == 9;
            if distinct {
                for (_, head, index) in order.iter_mut() {
                    *head = u128::from(*index) << 64;
                }
            }
            let mut expected = order.clone();
            expected.sort_unstable();
            let mut grouped = order.clone();
            assert_eq!(sort_grouped(&mut grouped), !distinct, "round {round}");
            assert_eq!(&grouped, if distinct { &order } else { &expected });
            sort_order(&mut order);
            assert_eq!(order, expected, "round {round}");
        }
    }

    // Proves update-log entries read back as put when equal ones are copied from the first: for
    // many members, between other writes, and after a different entry.
    #[test]
    fn repeated_update_entries_read_back_as_put() {
        let message = |seq| UpdateRecord::Message {
            conversation_id: 7,
            seq,
            sender: 1,
        };
        let receipt = UpdateRecord::Receipt {
            conversation_id: 7,
            user_id: 2,
            kind: 1,
            up_to_seq: 1,
            ts: 5,
        };
        for (_dir, store) in stores() {
            let mut batch = store.batch();
            let mut made: Vec<(u64, UpdateRecord)> = Vec::new();
            for user in 1..=20u64 {
                let update = match user {
                    5 => receipt.clone(),
                    6..=9 => message(2),
                    _ => message(1),
                };
                batch.put_update(user, 1, &update).unwrap();
                batch.put_fanout_mark(user, 7, 1);
                made.push((user, update));
            }
            store.commit(batch).unwrap();
            for (user, update) in made {
                assert_eq!(
                    store.updates_after(user, 0, 10).unwrap(),
                    [(1, update)],
                    "user {user}"
                );
            }
        }
    }

    /// Asserts that user 2's log read after `since`, at most `limit`, is what `expected` holds
    /// there.
    fn assert_reads_after(
        store: &Store,
        expected: &[(u64, UpdateRecord)],
        since: u64,
        limit: usize,
    ) {
        let want: Vec<_> = expected
            .iter()
            .filter(|(seq, _)| *seq > since)
            .take(limit)
            .cloned()
            .collect();
        let got = store.updates_after(2, since, limit).unwrap();
        assert_eq!(got, want, "since {since} limit {limit}");
    }

    // Proves the entries one commit adds to a log are stored as one run and read back entry by
    // entry from any `user_seq`, across runs, single entries and entries still staged, and from
    // the files after a reopen.
    #[test]
    fn a_commit_packs_each_log_into_runs() {
        let entry = |user: u64, seq: u64| UpdateRecord::Message {
            conversation_id: 9,
            seq,
            sender: user,
        };
        for (dir, store) in stores() {
            let keys_before = store.properties()[0].1;
            let mut expected = Vec::new();
            // Three commits: runs of 1, 5 and 300 entries for user 2 (300 > RUN_ENTRIES_MAX),
            // interleaved with user 3's, and one run written from two batches of one group.
            let mut next = 1;
            for len in [1u64, 5, 300] {
                let mut batch = store.batch();
                for seq in next..next + len {
                    batch.put_update(2, seq, &entry(2, seq)).unwrap();
                    batch.put_update(3, seq, &entry(3, seq)).unwrap();
                    expected.push((seq, entry(2, seq)));
                }
                batch.put_fanout_mark(2, 9 + len, next);
                batch.sort();
                store.commit(batch).unwrap();
                next += len;
            }
            let (mut a, mut b) = (store.batch(), store.batch());
            for seq in next..next + 4 {
                let half = if seq < next + 2 { &mut a } else { &mut b };
                half.put_update(2, seq, &entry(2, seq)).unwrap();
                expected.push((seq, entry(2, seq)));
            }
            store.backend.write_group(&[&a, &b], false).unwrap();
            next += 4;
            let head = next - 1;
            if store.overlay().is_none() {
                // 1 + 1 + 2 (300 entries) + 1 pairs for user 2, 1 + 1 + 2 for user 3, 3 marks.
                assert_eq!(store.properties()[0].1 - keys_before, 12, "pairs stored");
            }
            let check = |store: &Store| {
                for since in 0..=head {
                    for limit in [1, 3, 7, 1000] {
                        assert_reads_after(store, &expected, since, limit);
                    }
                }
                assert_eq!(store.last_user_seq(2).unwrap(), head);
                assert_eq!(store.last_user_seq(3).unwrap(), 306);
                assert_eq!(store.updates_after(3, 306, 10).unwrap(), []);
                assert_eq!(store.updates_after(4, 0, 10).unwrap(), []);
            };
            check(&store);
            if let Some(dir) = dir {
                // Runs read the same from the files as from the memtables.
                drop(store);
                let store =
                    Store::open(dir.path(), false, 1000, UPDATE_LOG_MEMTABLE_MIB_DEFAULT).unwrap();
                store.backend.flush().unwrap();
                check(&store);
            }
        }
    }

    // Proves a log of many pairs (runs of 1 to 4 entries, beside another user's) reads the same
    // from any `user_seq` with any limit, across the reads of more pairs each that a page takes.
    #[test]
    fn a_log_of_many_pairs_reads_on_past_its_first_pairs() {
        let entry = |user: u64, seq: u64| UpdateRecord::Message {
            conversation_id: 9,
            seq,
            sender: user,
        };
        for (_dir, store) in stores() {
            let mut expected = Vec::new();
            let mut next = 1;
            for commit in 0..60u64 {
                let mut batch = store.batch();
                for seq in next..next + 1 + commit % 4 {
                    batch.put_update(2, seq, &entry(2, seq)).unwrap();
                    batch.put_update(3, seq, &entry(3, seq)).unwrap();
                    expected.push((seq, entry(2, seq)));
                }
                batch.sort();
                store.commit(batch).unwrap();
                next = expected.len() as u64 + 1;
            }
            let head = next - 1;
            for since in (0..=head).step_by(7).chain([head - 1, head]) {
                for limit in [1, 8, 9, 40, 41, 150, 1000] {
                    assert_reads_after(&store, &expected, since, limit);
                }
            }
        }
    }

    // Proves an upload of many chunks of uneven sizes reads back exactly from any offset, for
    // lengths within one chunk and across many (the reads of more chunks each that takes).
    #[test]
    fn media_reads_back_any_range_of_many_chunks() {
        for (_dir, store) in stores() {
            let mut whole = Vec::new();
            let mut batch = store.batch();
            for chunk in 0..40u64 {
                let data: Vec<u8> = (0..1 + chunk * 7 % 50)
                    .map(|i| (chunk * 31 + i) as u8)
                    .collect();
                batch.put_media_chunk(5, whole.len() as u64, &data);
                whole.extend_from_slice(&data);
            }
            // Another upload's chunks right after it.
            batch.put_media_chunk(6, 0, &[0xee; 10]);
            batch.sort();
            store.commit(batch).unwrap();
            for offset in (0..whole.len()).step_by(13).chain([whole.len() - 1]) {
                for length in [1, 30, 100, 400, whole.len()] {
                    let mut out = Vec::new();
                    store
                        .read_media(5, offset as u64, length, &mut out)
                        .unwrap();
                    let end = (offset + length).min(whole.len());
                    assert_eq!(out, whole[offset..end], "offset {offset} length {length}");
                }
            }
        }
    }

    // Proves range reads return exactly one owner's records, in numeric order, paged correctly.
    #[test]
    fn updates_are_scanned_per_user_in_order() {
        for (_dir, store) in stores() {
            let mut batch = store.batch();
            for (user, seqs) in [(1u64, 1..=3u64), (2, 1..=300), (3, 1..=2)] {
                for seq in seqs {
                    let update = UpdateRecord::Message {
                        conversation_id: 9,
                        seq,
                        sender: user,
                    };
                    batch.put_update(user, seq, &update).unwrap();
                }
            }
            store.commit(batch).unwrap();
            let page = store.updates_after(2, 255, 10).unwrap();
            let seqs: Vec<u64> = page.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, (256..=265).collect::<Vec<_>>());
            assert_eq!(store.updates_after(2, 299, 10).unwrap().len(), 1);
            assert_eq!(store.updates_after(2, 300, 10).unwrap().len(), 0);
            assert_eq!(store.last_user_seq(2).unwrap(), 300);
            assert_eq!(store.last_user_seq(1).unwrap(), 3);
            assert_eq!(store.last_user_seq(4).unwrap(), 0);
        }
    }

    // Proves history paging reads backwards from `before` and returns ascending order.
    #[test]
    fn messages_before_pages_backwards() {
        for (_dir, store) in stores() {
            let mut batch = store.batch();
            for seq in 1..=50u64 {
                let message = MessageRecord {
                    message_id: seq,
                    sender: 1,
                    sender_device: 1,
                    ts: seq,
                    client_msg_id: [0; 16],
                    body: format!("m{seq}"),
                    attachments: vec![],
                };
                batch.put_message(7, seq, &message).unwrap();
            }
            store.commit(batch).unwrap();
            let page = store.messages_before(7, 21, 5).unwrap();
            assert_eq!(
                page.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                vec![16, 17, 18, 19, 20]
            );
            assert_eq!(store.messages_before(7, u64::MAX, 2).unwrap()[1].0, 50);
            assert_eq!(store.last_seq(7).unwrap(), 50);
            assert_eq!(store.last_seq(8).unwrap(), 0);
            assert!(store.messages_before(7, 1, 5).unwrap().is_empty());
        }
    }

    // Proves records, sessions and the reopened database keep what was committed.
    #[test]
    fn committed_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store =
                Store::open(dir.path(), true, 1000, UPDATE_LOG_MEMTABLE_MIB_DEFAULT).unwrap();
            let mut batch = store.batch();
            let user = UserRecord {
                username: "alice".into(),
                created_at: 1,
                password_salt: [1; 16],
                password_iterations: 1000,
                password_hash: [2; 32],
                hide_last_seen: false,
            };
            batch.put_user(42, &user).unwrap();
            batch.put_session(&[5; 32], 42, 3);
            batch.put_id_high_water(1, 777);
            store.commit(batch).unwrap();
        }
        let store = Store::open(dir.path(), false, 1000, UPDATE_LOG_MEMTABLE_MIB_DEFAULT).unwrap();
        assert_eq!(store.user_id_by_name("alice").unwrap(), Some(42));
        assert_eq!(store.user(42).unwrap().unwrap().username, "alice");
        assert_eq!(store.session(&[5; 32]).unwrap(), Some((42, 3)));
        assert_eq!(store.id_high_water(1).unwrap(), 777);
        assert_eq!(store.id_high_water(0).unwrap(), 0);
    }

    // Proves RocksDB's memory-only view reads what the memtables and the block cache hold, and
    // answers `NotCached` (never a short or empty answer) for what only the table files hold:
    // after a reopen, until a full read has brought the blocks in. Its multi-get reads key by key:
    // RocksDB's own read the table file at the block-cache tier.
    #[test]
    fn the_memory_only_view_misses_what_only_the_table_files_hold() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |seq: u64| UpdateRecord::Message {
            conversation_id: 9,
            seq,
            sender: 3,
        };
        let message = MessageRecord {
            message_id: 77,
            sender: 3,
            sender_device: 1,
            ts: 5,
            client_msg_id: [1; 16],
            body: "kept on disk".into(),
            attachments: Vec::new(),
        };
        {
            let store = Store::open(dir.path(), false, 1000, 16).unwrap();
            let mut batch = store.batch();
            for seq in 1..=50 {
                batch.put_update(2, seq, &entry(seq)).unwrap();
            }
            batch.put_message(9, 1, &message).unwrap();
            batch.put_media_chunk(5, 0, &[3; 8192]);
            batch.sort();
            store.commit(batch).unwrap();
            // Into table files; the next open starts with empty memtables and caches.
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), false, 1000, 16).unwrap();
        let memory = store.memory_only();
        assert!(matches!(
            memory.updates_after(2, 0, 100),
            Err(StoreError::NotCached)
        ));
        assert!(matches!(
            memory.messages_at(&[(9, 1)]),
            Err(StoreError::NotCached)
        ));
        assert!(matches!(memory.message(9, 1), Err(StoreError::NotCached)));
        // Media chunks live in blob files with a cache of their own: in memory once read.
        let mut bytes = Vec::new();
        let missed = memory.read_media(5, 0, 8192, &mut bytes);
        assert!(matches!(missed, Err(StoreError::NotCached)));
        bytes.clear();
        store.read_media(5, 0, 8192, &mut bytes).unwrap();
        assert_eq!(bytes, vec![3; 8192]);
        bytes.clear();
        memory.read_media(5, 0, 8192, &mut bytes).unwrap();
        assert_eq!(bytes, vec![3; 8192]);
        let log = store.updates_after(2, 0, 100).unwrap();
        assert_eq!(log.len(), 50);
        assert_eq!(store.message(9, 1).unwrap(), Some(message.clone()));
        // The full reads brought the blocks into the cache: now they are in memory.
        assert_eq!(memory.updates_after(2, 0, 100).unwrap(), log);
        assert_eq!(memory.messages_at(&[(9, 1)]).unwrap(), vec![Some(message)]);
        // What a later commit wrote is in the memtable.
        let mut batch = store.batch();
        batch.put_update(4, 1, &entry(1)).unwrap();
        store.commit(batch).unwrap();
        assert_eq!(memory.updates_after(4, 0, 10).unwrap(), vec![(1, entry(1))]);
    }

    // Proves the write-ahead log stays near its bound while a column family is written once
    // and then never: that family's memtable would otherwise keep every log file after its write,
    // and a restart would replay them all.
    #[test]
    fn the_write_ahead_log_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // The smallest update-log memtables: a bound of 64 MiB.
        let mib = 16;
        let bound = rocks::wal_max_bytes(mib);
        let store = Store::open(dir.path(), false, 1000, mib).unwrap();
        let mut batch = store.batch();
        batch.put(CF_USERS, b"written once", b"and never again");
        store.commit(batch).unwrap();
        let wal_bytes = || -> u64 {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        };
        // Four times the bound into the update logs, in 64 KiB entries.
        let value = vec![7u8; 64 << 10];
        let mut most = 0;
        for i in 0..(4 * bound / (64 << 10)) {
            let mut batch = store.batch();
            batch.put(CF_UPDATES, &i.to_be_bytes(), &value);
            store.commit(batch).unwrap();
            if i % 64 == 0 {
                most = most.max(wal_bytes());
            }
        }
        // Past the bound RocksDB flushes the family holding the oldest file; the log may run a
        // memtable or two over while that flush and the files' deletion finish.
        assert!(
            most <= bound + (32 << 20),
            "the write-ahead log reached {} MiB",
            most >> 20
        );
        assert_eq!(
            store.get(CF_USERS, b"written once").unwrap().as_deref(),
            Some(&b"and never again"[..])
        );
    }

    // Proves the upper bound helper handles carries and all-0xFF prefixes.
    #[test]
    fn prefix_upper_bounds() {
        assert_eq!(prefix_upper_bound(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_upper_bound(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_upper_bound(&[0xff]).len(), 64);
    }

    // Proves the compaction filter drops idempotency records past the retention and keeps newer
    // ones.
    #[test]
    fn idempotency_records_expire_in_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(
            rocks::RocksBackend::open(dir.path(), 1000, UPDATE_LOG_MEMTABLE_MIB_DEFAULT).unwrap(),
        );
        let store = Store::with_backend(Arc::clone(&backend) as Arc<dyn Backend>, false);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut batch = store.batch();
        let old = IdempotencyRecord {
            conversation_id: 1,
            seq: 1,
            message_id: 1,
            ts: now - 60_000,
        };
        let fresh = IdempotencyRecord {
            conversation_id: 1,
            seq: 2,
            message_id: 2,
            ts: now,
        };
        batch.put_idempotency(1, 1, &[1; 16], &old).unwrap();
        batch.put_idempotency(1, 1, &[2; 16], &fresh).unwrap();
        store.commit(batch).unwrap();
        store.flush().unwrap();
        backend.compact(CF_IDEMPOTENCY);
        let key = |id| keys::idempotency(1, 1, &[id; 16]);
        assert_eq!(store.durable_idempotency(&key(1)).unwrap(), None);
        assert_eq!(store.durable_idempotency(&key(2)).unwrap(), Some(fresh));
    }

    fn update(seq: u64) -> UpdateRecord {
        UpdateRecord::Message {
            conversation_id: 9,
            seq,
            sender: 1,
        }
    }

    fn seqs(rows: &[(u64, UpdateRecord)]) -> Vec<u64> {
        rows.iter().map(|(s, _)| *s).collect()
    }

    // Proves a core reads its own staged writes merged with the committed ones, in order, in both
    // directions and across pages; that a staged delete hides a committed key; that the committed
    // view sees none of it; and that settling or discarding leaves exactly the backend's truth.
    #[test]
    fn staged_batches_are_read_through_the_overlay() {
        let shared = Store::in_memory();
        let core = shared.for_core();
        let overlay = core.overlay().unwrap();
        let mut batch = shared.batch();
        for seq in (1..=10).step_by(2) {
            batch.put_update(1, seq, &update(seq)).unwrap();
        }
        batch.put_session(&[1; 32], 1, 1);
        shared.commit(batch).unwrap();

        let mut staged = shared.batch();
        for seq in (2..=10).step_by(2) {
            staged.put_update(1, seq, &update(seq)).unwrap();
        }
        staged.put_update(1, 11, &update(11)).unwrap();
        // Other users' logs, on both sides of user 1's keys in the sorted batch.
        staged.put_update(0, 1, &update(1)).unwrap();
        staged.put_update(2, 1, &update(1)).unwrap();
        staged.delete_session(&[1; 32]);
        staged.put_session(&[2; 32], 1, 2);
        staged.sort();
        let staged = Arc::new(staged);
        overlay.stage(1, Arc::clone(&staged));

        assert_eq!(
            seqs(&core.updates_after(1, 0, 100).unwrap()),
            (1..=11).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&core.updates_after(1, 3, 4).unwrap()), [4, 5, 6, 7]);
        assert_eq!(seqs(&core.updates_after(0, 0, 100).unwrap()), [1]);
        assert_eq!(seqs(&core.updates_after(2, 0, 100).unwrap()), [1]);
        assert_eq!(core.last_user_seq(1).unwrap(), 11);
        assert_eq!(core.session(&[1; 32]).unwrap(), None);
        assert_eq!(core.session(&[2; 32]).unwrap(), Some((1, 2)));
        assert_eq!(shared.last_user_seq(1).unwrap(), 9);
        assert_eq!(shared.session(&[1; 32]).unwrap(), Some((1, 1)));

        // Committed by the committer, then settled: the backend answers alone, the same way.
        shared.backend().write(&staged, false).unwrap();
        overlay.settle(1);
        assert!(overlay.is_empty());
        assert_eq!(
            seqs(&core.updates_after(1, 0, 100).unwrap()),
            (1..=11).collect::<Vec<_>>()
        );
        assert_eq!(core.session(&[1; 32]).unwrap(), None);

        // A batch that failed: discarded, as if never made.
        let mut doomed = shared.batch();
        doomed.put_update(1, 12, &update(12)).unwrap();
        doomed.sort();
        overlay.stage(2, Arc::new(doomed));
        assert_eq!(core.last_user_seq(1).unwrap(), 12);
        overlay.discard();
        assert_eq!(core.last_user_seq(1).unwrap(), 11);
    }

    // Proves a staged range delete hides committed keys inside its range from point reads and
    // scans, and that a write staged after it inside the range is seen.
    #[test]
    fn staged_range_deletes_hide_committed_keys() {
        let shared = Store::in_memory();
        let core = shared.for_core();
        let mut batch = shared.batch();
        batch.put_media_chunk(8, 0, b"abc");
        batch.put_media_chunk(8, 3, b"def");
        shared.commit(batch).unwrap();
        let mut staged = shared.batch();
        staged.delete_media(8);
        staged.put_media_chunk(8, 0, b"xyz");
        staged.sort();
        core.overlay().unwrap().stage(1, Arc::new(staged));
        let mut out = Vec::new();
        core.read_media(8, 0, 6, &mut out).unwrap();
        assert_eq!(out, b"xyz");
        out.clear();
        shared.read_media(8, 0, 6, &mut out).unwrap();
        assert_eq!(out, b"abcdef");
    }

    // Proves the fault-injecting backend fails exactly the writes it is told to, with the error
    // kinds a real disk gives, writes nothing of a failed batch, and works again afterwards.
    #[test]
    fn faulty_backend_fails_writes_on_demand() {
        let faults = Arc::new(backend::Faults::default());
        let memory: Arc<dyn Backend> = Arc::new(MemBackend::new());
        let store = Store::with_backend(
            Arc::new(backend::FaultyBackend::new(
                Arc::clone(&memory),
                Arc::clone(&faults),
            )),
            false,
        );
        let put = |seq| {
            let mut batch = store.batch();
            batch.put_update(1, seq, &update(seq)).unwrap();
            store.commit(batch)
        };
        put(1).unwrap();
        faults.fail_next_writes(2);
        assert!(matches!(put(2), Err(StoreError::Io(_))));
        assert!(matches!(put(2), Err(StoreError::Io(_))));
        put(2).unwrap();
        faults.set_no_space(true);
        assert!(matches!(put(3), Err(StoreError::NoSpace(_))));
        assert_eq!(store.last_user_seq(1).unwrap(), 2);
        faults.set_no_space(false);
        put(3).unwrap();
        assert_eq!(store.last_user_seq(1).unwrap(), 3);
        assert_eq!(faults.refused(), 3);
    }
}
