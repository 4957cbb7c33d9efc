//! The RocksDB backend: one database, one column family per kind of record.
//!
//! Tuning lives here: bloom filters (not for the update logs, which are only scanned), compression,
//! memtable bloom filters for the keys every `Send` looks up and rarely finds, memtable inserts
//! that start from a hint kept per user or conversation, blob files for media chunks with a cache
//! of their own, and the compaction filter that expires idempotency records.
//!
//! A full disk: a write that fails for want of space puts RocksDB into a stopped state in which
//! every later write fails too. RocksDB's own recovery resumes writing once there is room again:
//! its `SstFileManager` looks every 5 seconds and resumes once the free space reaches the largest
//! memtable (64 MiB, or `--update-log-memtable-mib` when that is larger), so that the first flush
//! fits. The committers simply keep offering batches and report each failure
//! ([`StoreError::NoSpace`]); `server/tests/disk_full.rs` fills a real tmpfs.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBWithThreadMode, Direction,
    ErrorKind, IteratorMode, Options, ReadOptions, ReadTier, SingleThreaded, WriteBatch,
    WriteOptions,
};

use super::backend::{Backend, Rows, Slice};
use super::records::{decode, IdempotencyRecord};
use super::{
    prefix_upper_bound, runs, Batch, OpKind, StoreError, CF_FANOUT_MARKS, CF_IDEMPOTENCY,
    CF_MEDIA_CHUNKS, CF_MESSAGES, CF_UPDATES, COLUMN_FAMILIES, RANGE_READ_MAX,
};

/// Column families are all created at open and never dropped, so the database needs no lock around
/// its handles: "single-threaded" in the binding's terms, which only makes creating and dropping
/// families take `&mut self`. A handle is then a plain reference, where the multi-threaded mode
/// took a read lock and allocated a reference count for every write, read and scan.
type Db = DBWithThreadMode<SingleThreaded>;

/// Options for a read, which goes no further than the memtables and the block cache if
/// `memory_only`.
fn read_options(memory_only: bool) -> ReadOptions {
    let mut read = ReadOptions::default();
    if memory_only {
        read.set_read_tier(ReadTier::BlockCache);
    }
    read
}

/// How often RocksDB rewrites files nothing else compacted, so expiry also reaches idle data.
const PERIODIC_COMPACTION_SECONDS: u64 = 24 * 3600;

/// One RocksDB database, or a view of it that reads from memory only.
pub(crate) struct RocksBackend {
    db: Arc<Db>,
    /// The options of every point read, made once: `get_pinned_cf` makes and frees a fresh set
    /// (two trips through the allocator) on each call, and every `Send` makes one.
    point_read: ReadOptions,
    /// Reads go no further than the memtables and the block cache ([`Backend::memory_only`]).
    memory_only: bool,
}

impl From<rocksdb::Error> for StoreError {
    fn from(error: rocksdb::Error) -> StoreError {
        if error.kind() == ErrorKind::Incomplete {
            // A read of the memory-only view needed the device.
            return StoreError::NotCached;
        }
        let text = error.into_string();
        if text.contains("No space left") || text.contains("NoSpace") {
            StoreError::NoSpace(text)
        } else {
            StoreError::Io(text)
        }
    }
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `path`.
    /// Idempotency records older than `idempotency_retention_ms` are dropped by compaction; the
    /// update logs' memtables are `update_log_memtable_mib` MiB each.
    pub(crate) fn open(
        path: &Path,
        idempotency_retention_ms: u64,
        update_log_memtable_mib: u32,
    ) -> Result<RocksBackend, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        options.set_keep_log_file_num(5);
        // One thread inserts a write group into the memtables, so that it can start each key's
        // search where the last key with the same first 8 bytes went in (see `cf_options`).
        options.set_allow_concurrent_memtable_write(false);
        // RocksDB keeps a write-ahead log file until every column family with writes in it has
        // flushed them, and the families written rarely (users, devices, sessions, fan-out rows)
        // fill their memtables slowly. Unbounded, the log grew to 370-550 MiB in W1's two 10-second
        // phases (57-86 MiB of tables), and a restart after a crash replayed all of it: 3.8-5.2 s
        // (RocksDB's own bound is four times every family's memtables, gigabytes). Past this
        // bound RocksDB flushes the families holding the oldest file. Four update-log memtables,
        // so that the busiest family still fills its own before the bound flushes it.
        options.set_max_total_wal_size(wal_max_bytes(update_log_memtable_mib));
        let descriptors = COLUMN_FAMILIES
            .iter()
            .map(|name| {
                Ok(ColumnFamilyDescriptor::new(
                    *name,
                    cf_options(name, idempotency_retention_ms, update_log_memtable_mib)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let db = Db::open_cf_descriptors(&options, path, descriptors)?;
        Ok(RocksBackend::view(Arc::new(db), false))
    }

    /// A backend over `db`, reading from memory only if `memory_only`.
    fn view(db: Arc<Db>, memory_only: bool) -> RocksBackend {
        RocksBackend {
            db,
            point_read: read_options(memory_only),
            memory_only,
        }
    }

    /// Options for a read of this view.
    fn read_options(&self) -> ReadOptions {
        read_options(self.memory_only)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Every name in COLUMN_FAMILIES is created at open, so the handle always exists.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is created at open"))
    }

    /// Compacts a whole column family now (tests of the compaction filter).
    #[cfg(test)]
    pub(crate) fn compact(&self, name: &str) {
        self.db
            .compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
    }

    /// Adds the writes of `batches` to `out`, update-log entries packed into runs (`runs`).
    fn add_to(&self, out: &mut WriteBatch, batches: &[&Batch]) {
        let mut handle: Option<(&'static str, &ColumnFamily)> = None;
        runs::for_each_write(batches, |name, kind, key, value| {
            let cf = match handle {
                Some((current, cf)) if std::ptr::eq(current, name) => cf,
                _ => {
                    let cf = self.cf(name);
                    handle = Some((name, cf));
                    cf
                }
            };
            match kind {
                OpKind::Put => out.put_cf(cf, key, value),
                OpKind::Delete => out.delete_cf(cf, key),
                OpKind::DeleteRange => out.delete_range_cf(cf, key, value),
            }
        });
    }
}

impl Backend for RocksBackend {
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Slice<'_>>, StoreError> {
        Ok(self
            .db
            .get_pinned_cf_opt(self.cf(cf), key, &self.point_read)?
            .map(Slice::Pinned))
    }

    fn multi_get(
        &self,
        cf: &'static str,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Slice<'_>>>, StoreError> {
        if self.memory_only {
            // RocksDB's multi-get reads the table files even at the block-cache read tier (a
            // store test shows it), so the memory-only view reads key by key.
            return keys.iter().map(|key| self.get(cf, key)).collect();
        }
        // Sorted keys let RocksDB take its view of the family once for them all and search each
        // memtable and table file once for the keys that fall in it.
        self.db
            .batched_multi_get_cf_opt(self.cf(cf), keys.iter().copied(), true, &self.point_read)
            .into_iter()
            .map(|value| Ok(value?.map(Slice::Pinned)))
            .collect()
    }

    fn scan(
        &self,
        cf: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let mut read = self.read_options();
        read.set_iterate_upper_bound(prefix_upper_bound(prefix));
        let iter = self.db.iterator_cf_opt(
            self.cf(cf),
            read,
            IteratorMode::From(from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit.min(RANGE_READ_MAX)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    fn scan_back(
        &self,
        cf: &'static str,
        prefix: &[u8],
        before: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let mut read = self.read_options();
        read.set_iterate_lower_bound(prefix.to_vec());
        read.set_iterate_upper_bound(before.to_vec());
        let iter = self
            .db
            .iterator_cf_opt(self.cf(cf), read, IteratorMode::End);
        let mut out = Vec::new();
        for item in iter.take(limit.min(RANGE_READ_MAX)) {
            out.push(item?);
        }
        Ok(out)
    }

    fn write_group(&self, batches: &[&Batch], sync: bool) -> Result<(), StoreError> {
        let bytes: usize = batches.iter().map(|b| b.bytes_len() + b.len() * 16).sum();
        let mut out = WriteBatch::with_capacity_bytes(bytes + 12);
        self.add_to(&mut out, batches);
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(out, &options)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    fn memory_only(&self) -> Option<Arc<dyn Backend>> {
        Some(Arc::new(RocksBackend::view(Arc::clone(&self.db), true)))
    }

    fn properties(&self) -> Vec<(&'static str, u64)> {
        const PROPERTIES: [&str; 7] = [
            "rocksdb.estimate-num-keys",
            "rocksdb.total-sst-files-size",
            "rocksdb.live-blob-file-size",
            "rocksdb.cur-size-all-mem-tables",
            "rocksdb.estimate-pending-compaction-bytes",
            "rocksdb.num-running-compactions",
            "rocksdb.num-running-flushes",
        ];
        PROPERTIES
            .iter()
            .map(|name| {
                let total = COLUMN_FAMILIES
                    .iter()
                    .filter_map(|cf| {
                        self.db
                            .property_int_value_cf(self.cf(cf), *name)
                            .ok()
                            .flatten()
                    })
                    .sum();
                (*name, total)
            })
            .collect()
    }
}

/// Bytes of media chunks kept in memory after they were read.
const MEDIA_CACHE_BYTES: usize = 64 << 20;

/// The most write-ahead log RocksDB keeps before it flushes the column families holding its
/// oldest file: four update-log memtables.
pub(crate) fn wal_max_bytes(update_log_memtable_mib: u32) -> u64 {
    4 * (u64::from(update_log_memtable_mib) << 20)
}

fn cf_options(
    name: &str,
    idempotency_retention_ms: u64,
    update_log_memtable_mib: u32,
) -> Result<Options, StoreError> {
    // Nearly every key starts with the id of a user or a conversation, and the keys written under
    // one id come in order (a log's next `user_seq`, a conversation's next `seq`). With a hint kept
    // per 8-byte prefix, a memtable insert starts from where that id's last key went in instead of
    // from the top of the skip list, which made W1's closed loop about a tenth faster. The Rust
    // binding has no setter for this option, so it is set by name.
    let mut options = Options::default().get_options_from_string(
        "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.8",
    )?;
    let mut table = BlockBasedOptions::default();
    if name != CF_UPDATES {
        // Update logs are only ever scanned from a user's cursor, never looked up by whole key,
        // so a bloom filter would be built by every flush and compaction and never read.
        table.set_bloom_filter(10.0, false);
    }
    table.set_cache_index_and_filter_blocks(true);
    options.set_block_based_table_factory(&table);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    if name == CF_UPDATES {
        // Every member's entry of every message lands here. Larger memtables make fewer, larger
        // L0 files, so compaction rewrites the young last level less often: 256 MiB made W2
        // about a tenth faster, for up to twice that in memory (`bench/RESULTS.md`).
        options.set_write_buffer_size((update_log_memtable_mib as usize) << 20);
    }
    if name == CF_MESSAGES {
        // Messages are most of the bytes kept forever: the last level packs them with zstd. The
        // other families (members' update logs above all: many small entries, compacted as often
        // as they are written) stay LZ4 there too, which made W2 about a tenth faster.
        options.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    }
    if name == CF_IDEMPOTENCY {
        // Keys are kept at least as long as the spec promises clients (7 days by default), then
        // dropped when compaction passes over them.
        options.set_compaction_filter(
            "tern-idempotency-expiry",
            move |_level: u32, _key: &[u8], value: &[u8]| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                match decode::<IdempotencyRecord>(value) {
                    Ok(record) if now.saturating_sub(record.ts) > idempotency_retention_ms => {
                        rocksdb::compaction_filter::Decision::Remove
                    }
                    _ => rocksdb::compaction_filter::Decision::Keep,
                }
            },
        );
        options.set_periodic_compaction_seconds(PERIODIC_COMPACTION_SECONDS);
    }
    if name == CF_IDEMPOTENCY || name == CF_FANOUT_MARKS {
        // Every Send looks up a key that is almost never there: a memtable bloom filter answers
        // most of those lookups without walking the memtable's skip list.
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.05);
    }
    if name == CF_MEDIA_CHUNKS {
        // Attachments are large and written once: keep them in blob files, out of the LSM tree.
        options.set_enable_blob_files(true);
        options.set_min_blob_size(4096);
        // The chunks read lately stay in memory, in a cache of their own so that attachments do
        // not push the chat's blocks out: an attachment many members fetch soon after it was sent
        // (a photo in a group) is read from the device once, and a download the cache holds is
        // answered on the core (`core/reads.rs`).
        options.set_blob_cache(&rocksdb::Cache::new_lru_cache(MEDIA_CACHE_BYTES));
    }
    Ok(options)
}
