//! Time-ordered 64-bit ids for users, devices' owners, conversations and messages.
//!
//! An id is `ms (42 bits) | core (10 bits) | counter (12 bits)`, where `ms` counts milliseconds
//! since 2025-01-01 UTC. Ids from one core strictly increase; ids from different cores never
//! collide because the core is part of the id. A core persists its newest id in every commit that
//! uses one, and starts above it after a restart, so a clock that steps back cannot reuse an id.
//! The generator never reads the clock itself: `now_ms` is an argument.

/// 2025-01-01T00:00:00Z in Unix milliseconds: the ids' epoch.
pub(crate) const ID_EPOCH_MS: u64 = 1_735_689_600_000;
/// Bits of the core number inside an id.
pub(crate) const ID_CORE_BITS: u32 = 10;
/// Bits of the per-millisecond counter inside an id.
pub(crate) const ID_COUNTER_BITS: u32 = 12;
/// Most cores the id layout can tell apart.
pub(crate) const CORES_MAX: usize = 1 << ID_CORE_BITS;

const COUNTER_MASK: u64 = (1 << ID_COUNTER_BITS) - 1;
const TIME_SHIFT: u32 = ID_CORE_BITS + ID_COUNTER_BITS;

/// One core's id generator.
#[derive(Debug)]
pub(crate) struct IdGen {
    core: u64,
    /// The last id issued (or the persisted high-water mark at start).
    last: u64,
}

impl IdGen {
    /// A generator for `core` that issues only ids above `high_water`.
    pub(crate) fn new(core: usize, high_water: u64) -> IdGen {
        assert!(core < CORES_MAX, "core {core} does not fit in an id");
        IdGen {
            core: core as u64,
            last: high_water,
        }
    }

    /// The next id: from the clock when it has moved on, else one above the last.
    pub(crate) fn next(&mut self, now_ms: u64) -> u64 {
        let ms = now_ms.saturating_sub(ID_EPOCH_MS);
        let from_clock = (ms << TIME_SHIFT) | (self.core << ID_COUNTER_BITS);
        let id = if from_clock > self.last {
            from_clock
        } else {
            // Same millisecond (or the clock stepped back): bump the counter; when it is full,
            // move to the next millisecond's slot of this core. Still unique and ordered.
            if self.last & COUNTER_MASK < COUNTER_MASK {
                self.last + 1
            } else {
                (((self.last >> TIME_SHIFT) + 1) << TIME_SHIFT) | (self.core << ID_COUNTER_BITS)
            }
        };
        debug_assert!(id > self.last);
        debug_assert_eq!(
            (id >> ID_COUNTER_BITS) & ((1 << ID_CORE_BITS) - 1),
            self.core
        );
        self.last = id;
        id
    }

    /// The newest id issued, to persist as the high-water mark.
    pub(crate) fn high_water(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves ids strictly increase within a millisecond, across the counter overflow, and when the
    // clock steps backwards; and that they carry their core.
    #[test]
    fn ids_are_monotonic_and_carry_their_core() {
        let now = ID_EPOCH_MS + 1_000_000;
        let mut ids = IdGen::new(5, 0);
        let mut last = 0;
        for _ in 0..10_000 {
            let id = ids.next(now);
            assert!(id > last);
            assert_eq!((id >> ID_COUNTER_BITS) & 1023, 5);
            last = id;
        }
        let stepped_back = ids.next(now - 5_000);
        assert!(stepped_back > last);
        let later = ids.next(now + 10_000);
        assert_eq!(
            (later >> (ID_CORE_BITS + ID_COUNTER_BITS)) + ID_EPOCH_MS,
            now + 10_000
        );
    }

    // Proves two cores never issue the same id for the same clock reading.
    #[test]
    fn cores_do_not_collide() {
        let now = ID_EPOCH_MS + 42;
        let mut a = IdGen::new(0, 0);
        let mut b = IdGen::new(1, 0);
        let from_a: std::collections::HashSet<u64> = (0..5000).map(|_| a.next(now)).collect();
        assert!((0..5000)
            .map(|_| b.next(now))
            .all(|id| !from_a.contains(&id)));
    }

    // Proves a restarted generator starts above the persisted high-water mark.
    #[test]
    fn restart_respects_high_water() {
        let mut before = IdGen::new(2, 0);
        let now = ID_EPOCH_MS + 99;
        for _ in 0..100 {
            before.next(now);
        }
        let mut after = IdGen::new(2, before.high_water());
        assert!(after.next(now - 50) > before.high_water());
    }
}
