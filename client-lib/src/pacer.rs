//! [`Pacer`]: how many sends a session may have in flight, so that the server's send rate limit
//! slows the outbox down without reordering it.
//!
//! The server stores two sends of one connection in the order it receives them, so a pipelined
//! outbox stays in order, except when the server refuses one (`RATE_LIMITED`) and accepts a later
//! one that arrives after its bucket refilled: the later message would then be stored first. The
//! pacer prevents that by pipelining only while it believes the server's bucket has room:
//!
//! - It keeps its own estimate of the server's per-connection bucket (the rate and burst in
//!   [`SessionOptions`](crate::SessionOptions); `ternd`'s defaults unless told otherwise), taking a
//!   token for every send it starts. While the estimate holds more than a small margin, sends are
//!   pipelined up to the window; below that the outbox goes stop-and-wait: one send in flight, the
//!   next only after its answer, which keeps the order whatever the server decides.
//! - After a refusal it holds every send for the `retry_after_ms` the server named, then goes on
//!   stop-and-wait for [`CAREFUL_AFTER_REFUSAL`], since its estimate was evidently wrong (another
//!   device of the user, or a server with lower limits).
//!
//! It never delays a send when nothing is in flight: the server's answer, not the estimate, decides
//! when the outbox must wait. Sans-IO: time is an argument.

use std::time::{Duration, Instant};

/// How long the outbox stays stop-and-wait after the server refused a send.
pub(crate) const CAREFUL_AFTER_REFUSAL: Duration = Duration::from_secs(10);

/// Tokens the estimate keeps in reserve before pipelining another send: room for sends that arrive
/// at the server closer together than they left the client.
const MARGIN_TOKENS: u64 = 2;

/// The wait after a refusal that named none (`retry_after_ms` 0).
const RETRY_WITHOUT_ESTIMATE: Duration = Duration::from_millis(50);

const MILLI: u64 = 1000;

/// The send window: see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Most sends in flight at once.
    window: usize,
    /// The estimated bucket, in thousandths of a send; `None` when the server has no limit.
    bucket: Option<Bucket>,
    /// No send starts before this.
    hold_until: Option<Instant>,
    /// One send in flight at a time until this.
    careful_until: Option<Instant>,
}

#[derive(Debug)]
struct Bucket {
    burst_milli: u64,
    per_second: u64,
    level_milli: u64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let gained = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(self.per_second);
        if gained > 0 {
            self.level_milli = self
                .level_milli
                .saturating_add(gained)
                .min(self.burst_milli);
            self.last = now;
        }
    }
}

impl Pacer {
    /// A pacer for a new connection: a full bucket of `burst` sends refilling at `per_second`
    /// (`per_second == 0`: the server has no limit), at most `window` in flight.
    pub(crate) fn new(window: usize, burst: u32, per_second: u32, now: Instant) -> Pacer {
        let bucket = (per_second > 0).then(|| Bucket {
            burst_milli: u64::from(burst.max(1)) * MILLI,
            per_second: u64::from(per_second),
            level_milli: u64::from(burst.max(1)) * MILLI,
            last: now,
        });
        Pacer {
            window: window.max(1),
            bucket,
            hold_until: None,
            careful_until: None,
        }
    }

    /// Whether another send may start now, with `in_flight` sends awaiting their answer.
    pub(crate) fn may_send(&mut self, now: Instant, in_flight: usize) -> bool {
        if self.hold_until.is_some_and(|until| now < until) {
            return false;
        }
        if in_flight == 0 {
            return true;
        }
        if in_flight >= self.window || self.careful_until.is_some_and(|until| now < until) {
            return false;
        }
        match &mut self.bucket {
            None => true,
            Some(bucket) => {
                bucket.refill(now);
                bucket.level_milli >= (MARGIN_TOKENS + 1) * MILLI
            }
        }
    }

    /// A send started: it takes a token from the estimate.
    pub(crate) fn started(&mut self, now: Instant) {
        if let Some(bucket) = &mut self.bucket {
            bucket.refill(now);
            bucket.level_milli = bucket.level_milli.saturating_sub(MILLI);
        }
    }

    /// The server refused a send (`RATE_LIMITED`, or a transient failure) and asked for `retry_after`
    /// (zero: no estimate).
    pub(crate) fn refused(&mut self, now: Instant, retry_after: Duration) {
        let wait = if retry_after.is_zero() {
            RETRY_WITHOUT_ESTIMATE
        } else {
            retry_after
        };
        let until = now + wait;
        self.hold_until = Some(self.hold_until.map_or(until, |held| held.max(until)));
        self.careful_until = Some(until + CAREFUL_AFTER_REFUSAL);
        if let Some(bucket) = &mut self.bucket {
            bucket.level_milli = 0;
            bucket.last = now;
        }
    }

    /// When a held outbox may go on, if it is held at `now`.
    pub(crate) fn held_until(&self, now: Instant) -> Option<Instant> {
        self.hold_until.filter(|until| now < *until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts sends while the pacer allows, with none of them answered; returns how many.
    fn pipelined(pacer: &mut Pacer, now: Instant) -> usize {
        let mut in_flight = 0;
        while in_flight < 1000 && pacer.may_send(now, in_flight) {
            pacer.started(now);
            in_flight += 1;
        }
        in_flight
    }

    // Proves sends are pipelined up to the window while the estimated bucket has room, and that
    // one send may always start when none is in flight.
    #[test]
    fn pipelines_within_window_and_bucket() {
        let now = Instant::now();
        let mut pacer = Pacer::new(32, 100, 50, now);
        // Each round: sends started until the pacer says stop, then all of them answered.
        let rounds: Vec<usize> = (0..6).map(|_| pipelined(&mut pacer, now)).collect();
        // 100 tokens: three full windows, then the margin stops pipelining; past the estimate,
        // stop-and-wait, one at a time.
        assert_eq!(rounds, [32, 32, 32, 2, 1, 1]);
        // A second refills 50 tokens.
        let later = now + Duration::from_secs(1);
        assert_eq!(pipelined(&mut pacer, later), 32);
    }

    // Proves a server without a limit gets the full window always.
    #[test]
    fn no_limit_means_full_window() {
        let now = Instant::now();
        let mut pacer = Pacer::new(8, 0, 0, now);
        for _ in 0..100 {
            assert_eq!(pipelined(&mut pacer, now), 8);
        }
    }

    // Proves a refusal holds every send for the time the server named, then allows one at a
    // time until the careful period ends.
    #[test]
    fn refusal_holds_then_goes_one_at_a_time() {
        let now = Instant::now();
        let mut pacer = Pacer::new(32, 0, 0, now);
        pacer.refused(now, Duration::from_millis(40));
        assert_eq!(pacer.held_until(now), Some(now + Duration::from_millis(40)));
        assert!(!pacer.may_send(now, 0));
        assert!(!pacer.may_send(now + Duration::from_millis(39), 0));
        let after = now + Duration::from_millis(40);
        assert_eq!(pacer.held_until(after), None);
        assert!(pacer.may_send(after, 0));
        assert!(!pacer.may_send(after, 1));
        let calm = after + CAREFUL_AFTER_REFUSAL;
        assert_eq!(pipelined(&mut pacer, calm), 32);
        // A refusal without an estimate still waits a little.
        pacer.refused(calm, Duration::ZERO);
        assert!(!pacer.may_send(calm, 0));
        assert!(pacer.may_send(calm + RETRY_WITHOUT_ESTIMATE, 0));
    }

    // Proves two refusals hold until the later of their waits.
    #[test]
    fn holds_keep_the_latest() {
        let now = Instant::now();
        let mut pacer = Pacer::new(4, 100, 50, now);
        pacer.refused(now, Duration::from_millis(100));
        pacer.refused(now + Duration::from_millis(10), Duration::from_millis(20));
        assert_eq!(
            pacer.held_until(now + Duration::from_millis(50)),
            Some(now + Duration::from_millis(100))
        );
    }
}
