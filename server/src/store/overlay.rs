//! The writes a core handed to its committer and that are not durable yet, laid over the backend
//! so the core reads its own writes.
//!
//! A core does not wait for its commit: it hands the batch to its committer and goes on serving.
//! The next turn may read a record that batch wrote (a device whose cursor moved, a conversation
//! just created), so the core's [`Store`](super::Store) consults this overlay first. The overlay
//! holds the sealed batches themselves, shared with the committer and sorted by key, so staging
//! copies nothing and a point read is a binary search per batch in flight (there are at most
//! two). Batches leave when durable ([`Overlay::settle`]); if one fails, it and every later one
//! fail together and the whole overlay is dropped ([`Overlay::discard`]).
//!
//! Only the owning core touches its overlay, so its lock is never contended.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::backend::{Backend, Rows, Slice};
use super::{prefix_upper_bound, Batch, OpKind, StoreError, RANGE_READ_MAX};

/// Staged batches of one core, oldest first.
#[derive(Default)]
pub(crate) struct Overlay {
    staged: Mutex<VecDeque<(u64, Arc<Batch>)>>,
}

/// The newest staged write to `key` of `cf`, if a staged batch wrote it: `Some(None)` for a
/// delete.
fn staged_write<'a>(
    staged: &VecDeque<(u64, Arc<Batch>)>,
    cf: &'static str,
    key: &[u8],
) -> Option<Option<Slice<'a>>> {
    staged.iter().rev().find_map(|(_, batch)| {
        batch
            .lookup(cf, key)
            .map(|write| write.map(|v| Slice::Shared(Arc::from(v))))
    })
}

/// A key range `[from, to)`.
type KeyRange = (Box<[u8]>, Box<[u8]>);

/// The staged view of a key range: each key's newest staged write (`None`: deleted), and the
/// ranges staged range deletes cover.
struct RangeView {
    rows: BTreeMap<Box<[u8]>, Option<Box<[u8]>>>,
    deleted: Vec<KeyRange>,
}

impl RangeView {
    fn hides(&self, key: &[u8]) -> bool {
        self.deleted
            .iter()
            .any(|(from, to)| **from <= *key && *key < **to)
    }
}

impl Overlay {
    pub(crate) fn new() -> Overlay {
        Overlay::default()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(u64, Arc<Batch>)>> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether nothing is staged.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Lays a batch handed to the committer over the backend. It must be sorted
    /// ([`Batch::sort`]) unless it holds a range delete.
    pub(crate) fn stage(&self, batch_id: u64, batch: Arc<Batch>) {
        let mut staged = self.lock();
        debug_assert!(
            staged.back().is_none_or(|(last, _)| *last < batch_id),
            "batches are staged in order"
        );
        staged.push_back((batch_id, batch));
    }

    /// A staged batch is durable: its writes are the backend's now. Batches settle in order.
    pub(crate) fn settle(&self, batch_id: u64) {
        let mut staged = self.lock();
        while staged.front().is_some_and(|(id, _)| *id <= batch_id) {
            staged.pop_front();
        }
    }

    /// Every staged batch failed: forget them all.
    pub(crate) fn discard(&self) {
        self.lock().clear();
    }

    /// A point read through the overlay.
    pub(crate) fn get<'a>(
        &self,
        backend: &'a dyn Backend,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<Slice<'a>>, StoreError> {
        if let Some(staged) = staged_write(&self.lock(), cf, key) {
            return Ok(staged);
        }
        backend.get(cf, key)
    }

    /// [`Overlay::get`] for many keys of `cf`, sorted and distinct: those no staged batch wrote
    /// are read from `backend` together.
    pub(crate) fn get_many<'a>(
        &self,
        backend: &'a dyn Backend,
        cf: &'static str,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Slice<'a>>>, StoreError> {
        let mut out: Vec<Option<Option<Slice<'a>>>> = Vec::with_capacity(keys.len());
        {
            let staged = self.lock();
            out.extend(keys.iter().map(|key| staged_write(&staged, cf, key)));
        }
        let unstaged: Vec<&[u8]> = keys
            .iter()
            .zip(&out)
            .filter(|(_, staged)| staged.is_none())
            .map(|(key, _)| *key)
            .collect();
        let mut read = backend.multi_get(cf, &unstaged)?.into_iter();
        Ok(out
            .into_iter()
            .map(|staged| staged.unwrap_or_else(|| read.next().flatten()))
            .collect())
    }

    /// The staged writes to keys of `cf` in `[lo, hi)`, newest winning.
    fn view(&self, cf: &'static str, lo: &[u8], hi: &[u8]) -> Option<RangeView> {
        let staged = self.lock();
        if staged.is_empty() {
            return None;
        }
        let mut view = RangeView {
            rows: BTreeMap::new(),
            deleted: Vec::new(),
        };
        for (_, batch) in staged.iter() {
            for (kind, key, value) in batch.ops_in(cf, lo, hi) {
                match kind {
                    OpKind::DeleteRange => {
                        let (from, to) = (key.max(lo), value.min(hi));
                        if from < to {
                            view.rows.retain(|k, _| !(from <= &**k && &**k < to));
                            view.deleted.push((from.into(), to.into()));
                        }
                    }
                    OpKind::Put => {
                        view.rows.insert(key.into(), Some(value.into()));
                    }
                    OpKind::Delete => {
                        view.rows.insert(key.into(), None);
                    }
                }
            }
        }
        Some(view)
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
        let Some(view) = self.view(cf, from, &prefix_upper_bound(prefix)) else {
            return backend.scan(cf, prefix, from, limit);
        };
        let mut staged = view
            .rows
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .peekable();
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
                while let Some((k, v)) = staged.next_if(|(k, _)| k[..] < key[..]) {
                    push_staged(&mut out, k, v);
                }
                if let Some((k, v)) = staged.next_if(|(k, _)| k[..] == key[..]) {
                    push_staged(&mut out, k, v);
                } else if !view.hides(&key) {
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
        let view = (before > prefix)
            .then(|| self.view(cf, prefix, before))
            .flatten();
        let Some(view) = view else {
            return backend.scan_back(cf, prefix, before, limit);
        };
        let mut staged = view.rows.iter().rev().peekable();
        let mut out = Rows::with_capacity(limit);
        let mut cursor = before.to_vec();
        loop {
            let page = backend.scan_back(cf, prefix, &cursor, limit)?;
            let exhausted = page.len() < limit;
            if let Some((last, _)) = page.last() {
                cursor = last.to_vec();
            }
            for (key, value) in page {
                while let Some((k, v)) = staged.next_if(|(k, _)| k[..] > key[..]) {
                    push_staged(&mut out, k, v);
                }
                if let Some((k, v)) = staged.next_if(|(k, _)| k[..] == key[..]) {
                    push_staged(&mut out, k, v);
                } else if !view.hides(&key) {
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

fn push_staged(out: &mut Rows, key: &[u8], value: &Option<Box<[u8]>>) {
    if let Some(value) = value {
        out.push((key.into(), value.clone()));
    }
}
