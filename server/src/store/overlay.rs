//! The writes a core handed to its committer and that are not durable yet, laid over the backend
//! so the core reads its own writes.
//!
//! A core does not wait for its commit: it hands the batch to its committer and goes on serving.
//! The next turn may read a record that batch wrote (a device whose cursor moved, a conversation
//! just created), so the core's [`Store`](super::Store) consults this overlay first. Entries leave
//! when their batch is durable ([`Overlay::settle`]); if a batch fails, it and every later one fail
//! together and the whole overlay is dropped ([`Overlay::discard`]).
//!
//! Only the owning core touches its overlay, so its lock is never contended.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::backend::{Backend, Rows, Slice};
use super::{Batch, OpKind, StoreError, COLUMN_FAMILIES, RANGE_READ_MAX};

/// The newest staged write of a key: the batch that made it, and the value (`None`: deleted).
type Entry = (u64, Option<Arc<[u8]>>);
/// A staged key with its value (`None`: deleted).
type StagedRow = (Box<[u8]>, Option<Arc<[u8]>>);

/// A staged range delete.
struct RangeDelete {
    cf: usize,
    from: Box<[u8]>,
    to: Box<[u8]>,
    batch: u64,
}

/// The keys one staged batch wrote: column family and key.
type Written = Vec<(usize, Box<[u8]>)>;

#[derive(Default)]
struct Inner {
    /// Per column family, the newest staged write of each key.
    tables: Vec<BTreeMap<Box<[u8]>, Entry>>,
    /// Staged range deletes: column family, `[from, to)`, batch.
    ranges: Vec<RangeDelete>,
    /// The keys each staged batch wrote, oldest batch first.
    staged: VecDeque<(u64, Written)>,
}

/// Staged writes of one core.
#[derive(Default)]
pub(crate) struct Overlay {
    inner: Mutex<Inner>,
}

fn index(cf: &str) -> usize {
    COLUMN_FAMILIES
        .iter()
        .position(|name| *name == cf)
        .unwrap_or_else(|| panic!("unknown column family {cf}"))
}

impl Overlay {
    pub(crate) fn new() -> Overlay {
        Overlay {
            inner: Mutex::new(Inner {
                tables: COLUMN_FAMILIES.iter().map(|_| BTreeMap::new()).collect(),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether nothing is staged.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().staged.is_empty()
    }

    /// Lays a batch handed to the committer over the backend.
    pub(crate) fn stage(&self, batch_id: u64, batch: &Batch) {
        let mut inner = self.lock();
        debug_assert!(
            inner.staged.back().is_none_or(|(last, _)| *last < batch_id),
            "batches are staged in order"
        );
        let mut written = Vec::with_capacity(batch.len());
        for (cf, kind, key, value) in batch.ops() {
            let cf = index(cf);
            match kind {
                OpKind::Put => {
                    inner.tables[cf].insert(key.into(), (batch_id, Some(value.into())));
                }
                OpKind::Delete => {
                    inner.tables[cf].insert(key.into(), (batch_id, None));
                }
                OpKind::DeleteRange => {
                    // Staged writes inside the range are superseded by it.
                    let doomed: Vec<Box<[u8]>> = inner.tables[cf]
                        .range::<[u8], _>((Bound::Included(key), Bound::Excluded(value)))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        inner.tables[cf].remove(&k);
                    }
                    inner.ranges.push(RangeDelete {
                        cf,
                        from: key.into(),
                        to: value.into(),
                        batch: batch_id,
                    });
                    continue;
                }
            }
            written.push((cf, key.into()));
        }
        inner.staged.push_back((batch_id, written));
    }

    /// A staged batch is durable: its writes are the backend's now. Batches settle in order.
    pub(crate) fn settle(&self, batch_id: u64) {
        let mut inner = self.lock();
        while inner.staged.front().is_some_and(|(id, _)| *id <= batch_id) {
            let Some((id, keys)) = inner.staged.pop_front() else {
                break;
            };
            for (cf, key) in keys {
                if inner.tables[cf].get(&key).is_some_and(|(b, _)| *b == id) {
                    inner.tables[cf].remove(&key);
                }
            }
        }
        inner.ranges.retain(|r| r.batch > batch_id);
    }

    /// Every staged batch failed: forget them all.
    pub(crate) fn discard(&self) {
        let mut inner = self.lock();
        for table in &mut inner.tables {
            table.clear();
        }
        inner.ranges.clear();
        inner.staged.clear();
    }

    /// A point read through the overlay.
    pub(crate) fn get<'a>(
        &self,
        backend: &'a dyn Backend,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<Slice<'a>>, StoreError> {
        {
            let inner = self.lock();
            if !inner.staged.is_empty() {
                let i = index(cf);
                if let Some((_, value)) = inner.tables[i].get(key) {
                    return Ok(value.as_ref().map(|v| Slice::Shared(Arc::clone(v))));
                }
                if in_ranges(&inner.ranges, i, key) {
                    return Ok(None);
                }
            }
        }
        backend.get(cf, key)
    }

    /// A forward scan (as [`Backend::scan`]) through the overlay.
    pub(crate) fn scan(
        &self,
        backend: &dyn Backend,
        cf: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let limit = limit.min(RANGE_READ_MAX);
        let (staged, ranges) = {
            let inner = self.lock();
            if inner.staged.is_empty() {
                drop(inner);
                return backend.scan(cf, prefix, from, limit);
            }
            let i = index(cf);
            let staged: Vec<StagedRow> = inner.tables[i]
                .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect();
            (staged, ranges_of(&inner.ranges, i))
        };
        let mut staged = staged.into_iter().peekable();
        let mut out = Rows::with_capacity(limit);
        let mut cursor = from.to_vec();
        loop {
            let page = backend.scan(cf, prefix, &cursor, limit)?;
            let exhausted = page.len() < limit;
            if let Some((last, _)) = page.last() {
                cursor = last.to_vec();
                cursor.push(0);
            }
            for (key, value) in page {
                while let Some((k, v)) = staged.next_if(|(k, _)| *k < key) {
                    push_staged(&mut out, k, v);
                }
                if let Some((k, v)) = staged.next_if(|(k, _)| *k == key) {
                    push_staged(&mut out, k, v);
                } else if !ranges.iter().any(|(f, t)| **f <= *key && *key < **t) {
                    out.push((key, value));
                }
                if out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
            if exhausted {
                for (k, v) in staged {
                    push_staged(&mut out, k, v);
                }
                out.truncate(limit);
                return Ok(out);
            }
        }
    }

    /// A backward scan (as [`Backend::scan_back`]) through the overlay.
    pub(crate) fn scan_back(
        &self,
        backend: &dyn Backend,
        cf: &'static str,
        prefix: &[u8],
        before: &[u8],
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let limit = limit.min(RANGE_READ_MAX);
        let (staged, ranges) = {
            let inner = self.lock();
            if inner.staged.is_empty() || before <= prefix {
                drop(inner);
                return backend.scan_back(cf, prefix, before, limit);
            }
            let i = index(cf);
            let staged: Vec<StagedRow> = inner.tables[i]
                .range::<[u8], _>((Bound::Included(prefix), Bound::Excluded(before)))
                .rev()
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect();
            (staged, ranges_of(&inner.ranges, i))
        };
        let mut staged = staged.into_iter().peekable();
        let mut out = Rows::with_capacity(limit);
        let mut cursor = before.to_vec();
        loop {
            let page = backend.scan_back(cf, prefix, &cursor, limit)?;
            let exhausted = page.len() < limit;
            if let Some((last, _)) = page.last() {
                cursor = last.to_vec();
            }
            for (key, value) in page {
                while let Some((k, v)) = staged.next_if(|(k, _)| *k > key) {
                    push_staged(&mut out, k, v);
                }
                if let Some((k, v)) = staged.next_if(|(k, _)| *k == key) {
                    push_staged(&mut out, k, v);
                } else if !ranges.iter().any(|(f, t)| **f <= *key && *key < **t) {
                    out.push((key, value));
                }
                if out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
            if exhausted {
                for (k, v) in staged {
                    push_staged(&mut out, k, v);
                }
                out.truncate(limit);
                return Ok(out);
            }
        }
    }
}

fn push_staged(out: &mut Rows, key: Box<[u8]>, value: Option<Arc<[u8]>>) {
    if let Some(value) = value {
        out.push((key, value.as_ref().into()));
    }
}

fn in_ranges(ranges: &[RangeDelete], cf: usize, key: &[u8]) -> bool {
    ranges
        .iter()
        .any(|r| r.cf == cf && *r.from <= *key && *key < *r.to)
}

type Ranges = Vec<(Box<[u8]>, Box<[u8]>)>;

fn ranges_of(ranges: &[RangeDelete], cf: usize) -> Ranges {
    ranges
        .iter()
        .filter(|r| r.cf == cf)
        .map(|r| (r.from.clone(), r.to.clone()))
        .collect()
}
