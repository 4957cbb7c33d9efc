//! Measurements: the clock every timestamp is taken from, shared latency histograms and the
//! summaries the reports carry.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's first call; the time base of every send stamp.
pub(crate) fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, with 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// A latency histogram that many tasks record into: a few shards, each behind its own lock, so
/// two threads rarely meet.
#[derive(Debug)]
pub(crate) struct SharedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl SharedHistogram {
    /// An empty histogram.
    pub(crate) fn new() -> SharedHistogram {
        SharedHistogram {
            shards: (0..16).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records one latency in nanoseconds, into the shard `key` picks.
    pub(crate) fn record_ns(&self, key: usize, ns: u64) {
        let us = (ns / 1000).clamp(1, 600_000_000);
        let mut h = self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us);
    }

    /// Everything recorded since the last call, which empties the histogram.
    pub(crate) fn take(&self) -> Histogram<u64> {
        let mut total = new_histogram();
        for shard in &self.shards {
            let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
            let _ = total.add(&*h);
            h.reset();
        }
        total
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) count: u64,
    /// Mean.
    pub(crate) mean_us: f64,
    /// Median.
    pub(crate) p50_us: u64,
    /// 90th percentile.
    pub(crate) p90_us: u64,
    /// 99th percentile.
    pub(crate) p99_us: u64,
    /// 99.9th percentile.
    pub(crate) p999_us: u64,
    /// Largest sample.
    pub(crate) max_us: u64,
}

impl Latency {
    /// The summary of a histogram in microseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// `p50/p99/max` in milliseconds, for tables.
    pub(crate) fn short(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!(
            "{:.2}/{:.2}/{:.1} ms",
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0
        )
    }
}

/// A rate with its unit, rounded for reading.
pub(crate) fn per_sec(count: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    (count as f64 / secs).round()
}
