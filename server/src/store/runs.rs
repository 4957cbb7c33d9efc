//! Runs: the consecutive entries one commit adds to a user's update log, stored as one pair.
//!
//! A message to a group of 100 adds an entry to each member's log, and a busy group adds several
//! to the same logs within one group commit. Written one pair per entry, every entry costs a
//! write-batch record, a memtable insert, and a key in every flush and compaction after; those
//! per-key costs were most of what W2 spent in storage. So a commit writes the entries it adds to
//! one log, consecutive `user_seq`s, as one pair: a *run*.
//!
//! A run's key is that of its first entry, (user_id, first user_seq). Its value is [`RUN_MARK`]
//! followed, for each entry in `user_seq` order, by the length of the entry's value as an LEB128
//! number and the value itself (`[RECORD_VERSION] ++ archive`, see `records`). A pair whose value
//! starts with the record version byte is a single entry, as every entry was before runs; a run
//! of one entry is still written that way.
//!
//! Runs never overlap, because a log only grows: an entry is written once, under a `user_seq`
//! above every one already written. So the entries at or after a `user_seq` are those of the
//! pairs from its key on, plus the tail of the one pair before it if that is a run reaching past
//! it ([`Store::updates_after`](super::Store::updates_after)).
//!
//! Packing happens where batches become one write ([`for_each_write`]), below the batches and the
//! overlay: a core's batch and what it reads back before the commit hold entries one by one.

use super::{keys, Batch, OpKind, StoreError, CF_UPDATES};

/// The first byte of a run's value; no record starts with it.
pub(crate) const RUN_MARK: u8 = 0xFE;

/// Most entries in one run.
const RUN_ENTRIES_MAX: usize = 256;

/// A run is closed once its value reaches this many bytes.
const RUN_BYTES_MAX: usize = 16 * 1024;

/// Calls `write` for every write of `batches`, in their order, except the update-log entries:
/// those are packed into runs and written after the rest (writes to different column families
/// commute). With a delete in the update logs (none is ever made: history is kept), the update-log
/// writes go out as they were made, in order, unpacked.
pub(crate) fn for_each_write<'a>(
    batches: &[&'a Batch],
    mut write: impl FnMut(&'static str, OpKind, &[u8], &[u8]),
) {
    let mut entries: Vec<(OpKind, &'a [u8], &'a [u8])> =
        Vec::with_capacity(batches.iter().map(|batch| batch.len()).sum());
    let mut packable = true;
    for (cf, kind, key, value) in batches.iter().flat_map(|batch| batch.ops()) {
        if cf == CF_UPDATES {
            packable &= kind == OpKind::Put && key.len() == 16 && value.first() != Some(&RUN_MARK);
            entries.push((kind, key, value));
        } else {
            write(cf, kind, key, value);
        }
    }
    if !packable {
        for (kind, key, value) in entries {
            write(CF_UPDATES, kind, key, value);
        }
        return;
    }
    // Stable: of two writes to one key (never made, see the module docs), the later one is kept.
    entries.sort_by(|a, b| a.1.cmp(b.1));
    entries.dedup_by(|later, earlier| {
        let same = later.1 == earlier.1;
        if same {
            *earlier = *later;
        }
        same
    });
    let mut value = Vec::new();
    let mut rest = &entries[..];
    while let Some(&(_, key, first)) = rest.first() {
        let mut len = 1;
        let mut bytes = first.len();
        while let Some(&(_, next, next_value)) = rest.get(len) {
            if len == RUN_ENTRIES_MAX || bytes >= RUN_BYTES_MAX || !follows(rest[len - 1].1, next) {
                break;
            }
            bytes += next_value.len();
            len += 1;
        }
        if len == 1 {
            write(CF_UPDATES, OpKind::Put, key, first);
        } else {
            value.clear();
            value.push(RUN_MARK);
            for (_, _, entry) in &rest[..len] {
                push_len(&mut value, entry.len());
                value.extend_from_slice(entry);
            }
            write(CF_UPDATES, OpKind::Put, key, &value);
        }
        rest = &rest[len..];
    }
}

/// Whether `next` is the key of the entry right after `key`'s in the same log.
fn follows(key: &[u8], next: &[u8]) -> bool {
    key[..8] == next[..8]
        && keys::pair_second(key)
            .and_then(|seq| seq.checked_add(1))
            .is_some_and(|seq| keys::pair_second(next) == Some(seq))
}

fn push_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_len(value: &[u8], at: &mut usize) -> Result<usize, StoreError> {
    let mut len = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *value
            .get(*at)
            .ok_or_else(|| StoreError::Corrupt("update run: length cut short".into()))?;
        *at += 1;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(len);
        }
    }
    Err(StoreError::Corrupt("update run: length too long".into()))
}

/// Calls `entry` with the `user_seq` and value of each entry a stored pair of an update log holds,
/// in order, until it returns `false`.
pub(crate) fn for_each_entry(
    key: &[u8],
    value: &[u8],
    mut entry: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let first = keys::pair_second(key).ok_or_else(|| StoreError::Corrupt("update key".into()))?;
    if value.first() != Some(&RUN_MARK) {
        entry(first, value)?;
        return Ok(());
    }
    let mut at = 1;
    let mut seq = first;
    while at < value.len() {
        let len = read_len(value, &mut at)?;
        let bytes = value
            .get(at..at.saturating_add(len))
            .ok_or_else(|| StoreError::Corrupt("update run: entry cut short".into()))?;
        at += len;
        if !entry(seq, bytes)? {
            return Ok(());
        }
        seq = seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("update run: user_seq overflows".into()))?;
    }
    if seq == first {
        return Err(StoreError::Corrupt("update run: empty".into()));
    }
    Ok(())
}

/// The `user_seq` of the last entry a stored pair of an update log holds.
pub(crate) fn last_seq(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    let mut last = 0;
    for_each_entry(key, value, |seq, _| {
        last = seq;
        Ok(true)
    })?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves lengths of every size read back as written, and that a cut-short length is an error.
    #[test]
    fn lengths_round_trip() {
        for len in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            1 << 20,
            u32::MAX as usize,
        ] {
            let mut out = Vec::new();
            push_len(&mut out, len);
            let mut at = 0;
            assert_eq!(read_len(&out, &mut at).unwrap(), len);
            assert_eq!(at, out.len());
            if out.len() > 1 {
                let mut at = 0;
                assert!(read_len(&out[..out.len() - 1], &mut at).is_err());
            }
        }
    }

    // Proves a damaged run is an error, not a shorter log.
    #[test]
    fn damaged_runs_are_errors() {
        let key = keys::pair(3, 10);
        let ok = |value: &[u8]| for_each_entry(&key, value, |_, _| Ok(true));
        assert!(ok(&[RUN_MARK, 2, 1, 9, 1, 7]).is_ok());
        assert!(ok(&[RUN_MARK]).is_err());
        assert!(ok(&[RUN_MARK, 3, 1, 9]).is_err());
        assert!(ok(&[RUN_MARK, 0x80]).is_err());
        assert_eq!(last_seq(&key, &[RUN_MARK, 2, 1, 9, 1, 7]).unwrap(), 11);
        assert_eq!(last_seq(&key, &[1, 9]).unwrap(), 10);
    }
}
