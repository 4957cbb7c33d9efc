//! The committer: one thread that writes every core's batches, so no core waits for the disk.
//!
//! A core hands over each sealed batch ([`Commit`]) through its [`Committer`] and goes on serving.
//! The committer takes every batch waiting when it comes round, from any core, and writes them in
//! one write (with `--fsync`, one sync for them all): a group commit across cores. Each core's
//! batches keep their order, as they arrive through one channel in the order sent. It then puts
//! each answer on its core's channel and wakes the core, which releases or voids what waited on
//! that batch ([`Shard::handle_committed`](crate::core::Shard::handle_committed)).
//!
//! One thread for all cores rather than one per core: RocksDB writes one group at a time anyway,
//! the group's leader inserting every member's batch into the memtables, so committers of their
//! own only took turns, waking each other at every hand-over. In W2 with groups of 100 the shared
//! committer took 7 to 15 % off the CPU per delivery (`bench/RESULTS.md`).
//!
//! A write that fails fails every batch in it. After a failure, every later batch of the same
//! core and epoch is refused unwritten: it was built on the failed one. The core bumps its epoch
//! when it learns of the failure, so what it builds from then on is written again, and the server
//! recovers by itself once the disk has room.
//!
//! A write that comes within [`RETRY_PAUSE`] of a failed one waits for the rest of it. Without the
//! pause a full disk made a hot loop: each failure woke the cores, whose next batches failed at
//! once, tens of thousands of times a second, each logged (`server/tests/disk_full.rs` logged
//! 80,000–250,000 lines). Failures are logged once a second at most, with how many there were.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use tokio::sync::Notify;

use crate::core::{Commit, COMMITS_IN_FLIGHT_MAX};
use crate::metrics::Metrics;
use crate::store::backend::Backend;
use crate::store::{Batch, StoreError};

/// How long after a failed write the next one waits: a full disk is not retried in a hot loop.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Failed writes are logged at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

/// The committer's answer for one batch.
pub(crate) struct Committed {
    pub(crate) id: u64,
    pub(crate) result: Result<(), StoreError>,
}

/// One core's way to the committer thread.
pub(crate) struct Committer {
    core: usize,
    batches: Sender<(usize, Commit)>,
    pub(crate) answers: Receiver<Committed>,
}

impl Committer {
    /// Hands a batch over. The shard's in-flight bound keeps the channels from filling.
    pub(crate) fn submit(&self, commit: Commit) {
        // Only fails once the thread is gone, which ends the process first (panic hook).
        let _ = self.batches.send((self.core, commit));
    }
}

/// Starts the committer thread for as many cores as `wakes` names; it wakes core `i` through
/// `wakes[i]` after each answer. The thread ends once every [`Committer`] is dropped and the
/// batches they handed over are written.
pub(crate) fn start(
    backend: Arc<dyn Backend>,
    fsync: bool,
    metrics: Arc<Metrics>,
    wakes: Vec<Arc<Notify>>,
) -> std::io::Result<(Vec<Committer>, JoinHandle<()>)> {
    let cores = wakes.len();
    // No core has more than COMMITS_IN_FLIGHT_MAX batches out, so no channel ever blocks its
    // sender.
    let (batches, rx) = bounded::<(usize, Commit)>(COMMITS_IN_FLIGHT_MAX * cores);
    let (answer_tx, answer_rx): (Vec<_>, Vec<_>) = (0..cores)
        .map(|_| bounded::<Committed>(COMMITS_IN_FLIGHT_MAX))
        .unzip();
    let thread = std::thread::Builder::new()
        .name("ternd-commit".into())
        .spawn(move || {
            let mut failed_epoch = vec![None; cores];
            let mut failures = Failures::default();
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                group.extend(rx.try_iter());
                let answers = write_group(
                    &*backend,
                    fsync,
                    &metrics,
                    &mut failed_epoch,
                    &mut failures,
                    group,
                );
                for (core, id, result) in answers {
                    if answer_tx[core].send(Committed { id, result }).is_err() {
                        return;
                    }
                    wakes[core].notify_one();
                }
            }
        })?;
    let committers = answer_rx
        .into_iter()
        .enumerate()
        .map(|(core, answers)| Committer {
            core,
            batches: batches.clone(),
            answers,
        })
        .collect();
    Ok((committers, thread))
}

/// Failed writes: when the last one was, and those not logged yet.
#[derive(Default)]
struct Failures {
    last: Option<Instant>,
    logged: Option<Instant>,
    unlogged: u64,
}

/// Writes the batches of `group` that no earlier failure voided, in one write, and returns each
/// batch's answer: (core, batch id, result).
fn write_group(
    backend: &dyn Backend,
    fsync: bool,
    metrics: &Metrics,
    failed_epoch: &mut [Option<u64>],
    failures: &mut Failures,
    group: Vec<(usize, Commit)>,
) -> Vec<(usize, u64, Result<(), StoreError>)> {
    let (void, live): (Vec<_>, Vec<_>) = group
        .into_iter()
        .partition(|(core, commit)| failed_epoch[*core].is_some_and(|e| commit.epoch <= e));
    let mut answers: Vec<_> = void
        .into_iter()
        .map(|(core, commit)| {
            let refused = StoreError::Io("an earlier batch failed".into());
            (core, commit.id, Err(refused))
        })
        .collect();
    if live.is_empty() {
        return answers;
    }
    if let Some(wait) = failures
        .last
        .map(|at| RETRY_PAUSE.saturating_sub(at.elapsed()))
    {
        std::thread::sleep(wait);
    }
    let started = Instant::now();
    let batches: Vec<&Batch> = live.iter().map(|(_, commit)| &*commit.batch).collect();
    let result = backend.write_group(&batches, fsync);
    let micros = started.elapsed().as_micros() as u64;
    match &result {
        Ok(()) => failures.last = None,
        Err(e) => {
            failures.last = Some(Instant::now());
            failures.unlogged += 1;
            if failures
                .logged
                .is_none_or(|at| at.elapsed() >= FAILURE_LOG_EVERY)
            {
                let writes: usize = batches.iter().map(|b| b.len()).sum();
                let failed = std::mem::take(&mut failures.unlogged);
                tracing::error!(error = %e, writes, batches = batches.len(), failed, "commit failed");
                failures.logged = failures.last;
            }
        }
    }
    for (core, commit) in live {
        let core_metrics = &metrics.core(core).committer;
        match &result {
            Ok(()) => {
                core_metrics.commit(commit.batch.len(), micros);
                core_metrics.storage_failing.store(false, Ordering::Relaxed);
            }
            Err(_) => {
                failed_epoch[core] = Some(commit.epoch);
                core_metrics.storage_failing.store(true, Ordering::Relaxed);
                core_metrics.storage_errors.add(1);
            }
        }
        answers.push((core, commit.id, result.clone()));
    }
    answers
}
