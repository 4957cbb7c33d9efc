//! A core's committer: the thread that writes the core's batches, so the core never waits for the
//! disk.
//!
//! The core hands over each sealed batch ([`Commit`]) and goes on serving; the committer writes
//! the batches in order (with `--fsync`, syncing the log each time), puts each answer on a channel
//! and wakes the core, which then releases or voids what waited on that batch
//! ([`Shard::handle_committed`](crate::core::Shard::handle_committed)).
//!
//! After a failure every later batch of the same epoch is refused unwritten: it was built on the
//! failed one. The core bumps its epoch when it learns of the failure, so what it builds from then
//! on is written again, and the server recovers by itself once the disk has room.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use tokio::sync::Notify;

use crate::core::{Commit, COMMITS_IN_FLIGHT_MAX};
use crate::metrics::Metrics;
use crate::store::backend::Backend;
use crate::store::StoreError;

/// The committer's answer for one batch.
pub(crate) struct Committed {
    pub(crate) id: u64,
    pub(crate) result: Result<(), StoreError>,
}

/// One core's committer thread and its two channels.
pub(crate) struct Committer {
    batches: Option<Sender<Commit>>,
    pub(crate) answers: Receiver<Committed>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts core `core`'s committer; it wakes the core through `wake` after each answer.
    pub(crate) fn start(
        core: usize,
        backend: Arc<dyn Backend>,
        fsync: bool,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> std::io::Result<Committer> {
        // The core never has more than COMMITS_IN_FLIGHT_MAX batches out, so neither channel
        // ever blocks its sender.
        let (batches, rx) = bounded::<Commit>(COMMITS_IN_FLIGHT_MAX);
        let (tx, answers) = bounded::<Committed>(COMMITS_IN_FLIGHT_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("ternd-commit-{core}"))
            .spawn(move || {
                let mut failed_epoch = None;
                for commit in rx {
                    let result = if failed_epoch.is_some_and(|e| commit.epoch <= e) {
                        Err(StoreError::Io("an earlier batch failed".into()))
                    } else {
                        let writes = commit.batch.len();
                        let started = Instant::now();
                        let result = backend.write(&commit.batch, fsync);
                        let core_metrics = metrics.core(core);
                        match &result {
                            Ok(()) => {
                                core_metrics.commit(writes, started.elapsed().as_micros() as u64);
                                core_metrics.storage_failing.store(false, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed_epoch = Some(commit.epoch);
                                core_metrics.storage_failing.store(true, Ordering::Relaxed);
                                core_metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(core, error = %e, writes, "commit failed");
                            }
                        }
                        result
                    };
                    if tx
                        .send(Committed {
                            id: commit.id,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                    wake.notify_one();
                }
            })?;
        Ok(Committer {
            batches: Some(batches),
            answers,
            thread: Some(thread),
        })
    }

    /// Hands a batch over. The shard's in-flight bound keeps the channel from filling.
    pub(crate) fn submit(&self, commit: Commit) {
        if let Some(batches) = &self.batches {
            // Only fails once the thread is gone, which ends the process first (panic hook).
            let _ = batches.send(commit);
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the batches it holds.
        self.batches.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
