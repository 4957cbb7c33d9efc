//! Rate limits: token buckets that refill with time, and the named limits this server applies.
//!
//! A bucket holds up to `burst` tokens and gains `per_second` of them each second; an action takes
//! one. Buckets count in thousandths of a token so that refills between close calls are not lost
//! to rounding. Time is an argument, like everywhere in `core/`.

/// `Send`s per second one connection keeps, by default (`--send-rate-per-connection`). Every `Send`
/// bucket holds [`SEND_BURST_SECONDS`] seconds' worth of tokens.
pub(crate) const SENDS_PER_CONNECTION_PER_SECOND: u32 = 50;
/// `Send`s per second one user keeps over all their devices, by default (`--send-rate-per-user`).
pub(crate) const SENDS_PER_USER_PER_SECOND: u32 = 100;
/// A `Send` bucket's burst, in seconds of its rate: bursts of 100 for 50/s.
pub(crate) const SEND_BURST_SECONDS: u32 = 2;
/// `Typing` indicators one connection may send at once, over all its conversations.
pub(crate) const TYPING_PER_CONNECTION_BURST: u32 = 10;
/// `Typing` indicators per second one connection keeps.
pub(crate) const TYPING_PER_CONNECTION_PER_SECOND: u32 = 5;
/// `Typing` indicators one user may send at once, over all their devices.
pub(crate) const TYPING_PER_USER_BURST: u32 = 20;
/// `Typing` indicators per second one user keeps.
pub(crate) const TYPING_PER_USER_PER_SECOND: u32 = 10;
/// `SubscribePresence` requests one user may make at once, over all their devices.
pub(crate) const PRESENCE_SUBSCRIBES_PER_USER_BURST: u32 = 40;
/// `SubscribePresence` requests per second one user keeps.
pub(crate) const PRESENCE_SUBSCRIBES_PER_USER_PER_SECOND: u32 = 4;
/// `SubscribePresence` requests one connection may make at once.
pub(crate) const PRESENCE_SUBSCRIBES_PER_CONNECTION_BURST: u32 = 20;
/// `SubscribePresence` requests per second one connection keeps.
pub(crate) const PRESENCE_SUBSCRIBES_PER_CONNECTION_PER_SECOND: u32 = 2;

const MILLI: u64 = 1000;

/// A token bucket. A rate of 0 makes a bucket that never runs out (a limit switched off).
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    burst_milli: u64,
    per_second: u64,
    level_milli: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(burst: u32, per_second: u32, now_ms: u64) -> TokenBucket {
        assert!(burst > 0 || per_second == 0);
        let burst_milli = u64::from(burst) * MILLI;
        TokenBucket {
            burst_milli,
            per_second: u64::from(per_second),
            level_milli: burst_milli,
            last_ms: now_ms,
        }
    }

    /// Takes one token, or says in how many milliseconds one will be there.
    pub(crate) fn take(&mut self, now_ms: u64) -> Result<(), u32> {
        if self.per_second == 0 {
            return Ok(());
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // per_second tokens a second = per_second milli-tokens a millisecond.
        self.level_milli =
            (self.level_milli + elapsed.saturating_mul(self.per_second)).min(self.burst_milli);
        self.last_ms = self.last_ms.max(now_ms);
        if self.level_milli >= MILLI {
            self.level_milli -= MILLI;
            Ok(())
        } else {
            let missing = MILLI - self.level_milli;
            Err(missing.div_ceil(self.per_second).min(u64::from(u32::MAX)) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a bucket with a rate of 0 never refuses.
    #[test]
    fn rate_zero_is_unlimited() {
        let mut bucket = TokenBucket::new(0, 0, 1_000);
        for _ in 0..10_000 {
            assert_eq!(bucket.take(1_000), Ok(()));
        }
    }

    // Proves a bucket allows its burst at once, then refuses with the time to wait, then refills
    // at its rate and never above its burst.
    #[test]
    fn burst_then_rate() {
        let mut bucket = TokenBucket::new(3, 10, 1_000);
        for _ in 0..3 {
            assert_eq!(bucket.take(1_000), Ok(()));
        }
        assert_eq!(bucket.take(1_000), Err(100));
        assert_eq!(bucket.take(1_050), Err(50));
        assert_eq!(bucket.take(1_100), Ok(()));
        let mut idle = bucket.clone();
        for _ in 0..3 {
            assert_eq!(idle.take(100_000), Ok(()));
        }
        assert!(
            idle.take(100_000).is_err(),
            "an idle bucket refills only up to its burst"
        );
    }
}
