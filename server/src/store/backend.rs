//! The storage seam: the few operations the store needs from a key-value engine, and two engines
//! besides RocksDB behind them.
//!
//! Every typed read of [`Store`](super::Store) is a point read, a forward range scan or a backward
//! one, and every write is a [`Batch`] applied atomically. That is the whole [`Backend`] trait, so
//! the same store (and the core above it) runs on:
//!
//! - [`RocksBackend`](super::rocks::RocksBackend): the real thing, one RocksDB with a column family
//!   per kind of record;
//! - `MemBackend` (tests and the simulator): ordered maps in memory, for the simulator and for tests of the core that need
//!   no disk. What it holds is exactly what was committed, so dropping everything else (the
//!   shards, the batches in flight) and keeping it is a crash;
//! - `FaultyBackend` (tests and the simulator): any backend with faults switched on from outside
//!   (`Faults`): the next commits fail, or every commit fails with "no space" until there is room
//!   again, or reads of its memory-only view miss as if nothing were in memory.

#[cfg(test)]
use std::collections::BTreeMap;
#[cfg(test)]
use std::ops::Bound;
#[cfg(test)]
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
#[cfg(test)]
use std::sync::RwLock;

use super::{Batch, StoreError};
#[cfg(test)]
use super::{OpKind, COLUMN_FAMILIES, RANGE_READ_MAX};

/// Key-value pairs read by a range scan, in scan order.
pub(crate) type Rows = Vec<(Box<[u8]>, Box<[u8]>)>;

/// A value read by a point read: pinned in RocksDB's block cache or memtable (no copy), or shared
/// with an in-memory map.
pub(crate) enum Slice<'a> {
    Pinned(rocksdb::DBPinnableSlice<'a>),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Slice<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Slice::Pinned(slice) => slice,
            Slice::Shared(bytes) => bytes,
        }
    }
}

/// A key-value engine with column families. Implementations are shared by every core thread and
/// the committers, so they synchronise themselves.
pub(crate) trait Backend: Send + Sync {
    /// The value of `key` in `cf`.
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Slice<'_>>, StoreError>;

    /// The values of `keys` in `cf`, in the order given; `keys` are sorted and distinct. Read
    /// together, which can cost less than a `get` each; by default they are read one by one.
    fn multi_get(
        &self,
        cf: &'static str,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Slice<'_>>>, StoreError> {
        keys.iter().map(|key| self.get(cf, key)).collect()
    }

    /// Pairs of `cf` whose keys start with `prefix` and are at or after `from`, ascending, at most
    /// `limit` (and at most [`RANGE_READ_MAX`]).
    fn scan(
        &self,
        cf: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError>;

    /// Pairs of `cf` whose keys are at or after `prefix` and below `before`, descending, at most
    /// `limit` (and at most [`RANGE_READ_MAX`]).
    fn scan_back(
        &self,
        cf: &'static str,
        prefix: &[u8],
        before: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError>;

    /// Applies every write of several batches, in their order, all or none (a group commit); with
    /// `sync`, durable against power loss before it returns.
    fn write_group(&self, batches: &[&Batch], sync: bool) -> Result<(), StoreError>;

    /// Applies every write of `batch`, as [`Backend::write_group`] does.
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StoreError> {
        self.write_group(&[batch], sync)
    }

    /// Makes everything written so far durable (at shutdown).
    fn flush(&self) -> Result<(), StoreError>;

    /// Figures worth exporting as metrics, by name.
    fn properties(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// A view of the same data whose reads fail with [`StoreError::NotCached`] rather than go to
    /// the device; `None` when every read is in memory anyway.
    fn memory_only(&self) -> Option<Arc<dyn Backend>> {
        None
    }
}

#[cfg(test)]
/// A column family in memory: keys in order, values shared with readers.
type Table = BTreeMap<Box<[u8]>, Arc<[u8]>>;

#[cfg(test)]
/// Ordered maps in memory, one per column family: what was committed, nothing else.
#[derive(Default)]
pub(crate) struct MemBackend {
    tables: RwLock<Vec<Table>>,
}

#[cfg(test)]
impl MemBackend {
    pub(crate) fn new() -> MemBackend {
        MemBackend {
            tables: RwLock::new(COLUMN_FAMILIES.iter().map(|_| Table::new()).collect()),
        }
    }

    fn index(cf: &str) -> usize {
        // Every column family name the store uses is in COLUMN_FAMILIES.
        COLUMN_FAMILIES
            .iter()
            .position(|name| *name == cf)
            .unwrap_or_else(|| panic!("unknown column family {cf}"))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Table>> {
        // A panic while holding the lock ends the process (see the crate docs), so a poisoned
        // lock is never seen by a live server; the simulator wants the data anyway.
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
fn copy_row(key: &[u8], value: &[u8]) -> (Box<[u8]>, Box<[u8]>) {
    (key.into(), value.into())
}

#[cfg(test)]
impl Backend for MemBackend {
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Slice<'_>>, StoreError> {
        Ok(self.read()[Self::index(cf)]
            .get(key)
            .map(|v| Slice::Shared(Arc::clone(v))))
    }

    fn scan(
        &self,
        cf: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let tables = self.read();
        Ok(tables[Self::index(cf)]
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit.min(RANGE_READ_MAX))
            .map(|(k, v)| copy_row(k, v))
            .collect())
    }

    fn scan_back(
        &self,
        cf: &'static str,
        prefix: &[u8],
        before: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        if before <= prefix {
            return Ok(Vec::new());
        }
        let tables = self.read();
        Ok(tables[Self::index(cf)]
            .range::<[u8], _>((Bound::Included(prefix), Bound::Excluded(before)))
            .rev()
            .take(limit.min(RANGE_READ_MAX))
            .map(|(k, v)| copy_row(k, v))
            .collect())
    }

    fn write_group(&self, batches: &[&Batch], _sync: bool) -> Result<(), StoreError> {
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        super::runs::for_each_write(batches, |cf, kind, key, value| {
            let table = &mut tables[Self::index(cf)];
            match kind {
                OpKind::Put => {
                    table.insert(key.into(), value.into());
                }
                OpKind::Delete => {
                    table.remove(key);
                }
                OpKind::DeleteRange => {
                    let doomed: Vec<Box<[u8]>> = table
                        .range::<[u8], _>((Bound::Included(key), Bound::Excluded(value)))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        table.remove(&k);
                    }
                }
            }
        });
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn properties(&self) -> Vec<(&'static str, u64)> {
        let keys = self.read().iter().map(|t| t.len() as u64).sum();
        vec![("rocksdb.estimate-num-keys", keys)]
    }
}

#[cfg(test)]
/// Faults to inject into a [`FaultyBackend`], switched from a test or the simulator.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// The next this many writes fail (an I/O error), then writes work again.
    fail_writes: AtomicU32,
    /// While set, every write fails as on a full disk.
    no_space: AtomicBool,
    /// Writes refused so far.
    refused: AtomicU64,
    /// While set, reads of the memory-only view fail as if the data were not in memory.
    uncached: AtomicBool,
}

#[cfg(test)]
impl Faults {
    /// Makes the next `count` writes fail.
    pub(crate) fn fail_next_writes(&self, count: u32) {
        self.fail_writes.store(count, Ordering::SeqCst);
    }

    /// Fills the disk (`true`) or frees it (`false`).
    pub(crate) fn set_no_space(&self, full: bool) {
        self.no_space.store(full, Ordering::SeqCst);
    }

    /// Makes the memory-only view miss every read (`true`) or find everything (`false`).
    pub(crate) fn set_uncached(&self, uncached: bool) {
        self.uncached.store(uncached, Ordering::SeqCst);
    }

    /// How many writes were refused.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.no_space.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::NoSpace(
                "injected: no space left on device".into(),
            ));
        }
        let taken = self
            .fail_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if taken.is_ok() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Io("injected: write failed".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
/// A backend whose writes fail when its [`Faults`] say so; reads pass through, except those of
/// its memory-only view, which miss while the faults say so.
pub(crate) struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
    /// This is the memory-only view.
    memory_view: bool,
}

#[cfg(test)]
impl FaultyBackend {
    pub(crate) fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> FaultyBackend {
        FaultyBackend {
            inner,
            faults,
            memory_view: false,
        }
    }

    /// A read of the memory-only view misses while the faults say so.
    fn check_read(&self) -> Result<(), StoreError> {
        if self.memory_view && self.faults.uncached.load(Ordering::SeqCst) {
            return Err(StoreError::NotCached);
        }
        Ok(())
    }
}

#[cfg(test)]
impl Backend for FaultyBackend {
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Slice<'_>>, StoreError> {
        self.check_read()?;
        self.inner.get(cf, key)
    }

    fn scan(
        &self,
        cf: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        self.check_read()?;
        self.inner.scan(cf, prefix, from, limit)
    }

    fn scan_back(
        &self,
        cf: &'static str,
        prefix: &[u8],
        before: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        self.check_read()?;
        self.inner.scan_back(cf, prefix, before, limit)
    }

    fn write_group(&self, batches: &[&Batch], sync: bool) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.write_group(batches, sync)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.flush()
    }

    fn properties(&self) -> Vec<(&'static str, u64)> {
        self.inner.properties()
    }

    fn memory_only(&self) -> Option<Arc<dyn Backend>> {
        let inner = self
            .inner
            .memory_only()
            .unwrap_or_else(|| Arc::clone(&self.inner));
        Some(Arc::new(FaultyBackend {
            inner,
            faults: Arc::clone(&self.faults),
            memory_view: true,
        }))
    }
}
