//! The blocking pool: a few threads for CPU-heavy work (password hashing) that must never run on
//! a core thread, where it would stall every connection of that core.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender, TrySendError};

/// Jobs waiting for a blocking thread before new ones are refused.
pub(crate) const BLOCKING_QUEUE_JOBS_MAX: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs from one bounded queue.
pub(crate) struct BlockingPool {
    tx: Sender<Job>,
}

/// The pool's queue is full.
#[derive(Debug)]
pub(crate) struct PoolBusy;

impl BlockingPool {
    /// Starts `threads` threads.
    pub(crate) fn start(threads: usize) -> std::io::Result<(BlockingPool, Vec<JoinHandle<()>>)> {
        let (tx, rx) = bounded::<Job>(BLOCKING_QUEUE_JOBS_MAX);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ternd-blocking-{i}"))
                .spawn(move || {
                    // Ends when every sender is gone.
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
            handles.push(handle);
        }
        Ok((BlockingPool { tx }, handles))
    }

    /// Runs `f` on a pool thread and waits for its result without blocking the caller's thread.
    pub(crate) async fn run<F, R>(&self, f: F) -> Result<R, PoolBusy>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done_tx.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => done_rx.await.map_err(|_| PoolBusy),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(PoolBusy),
        }
    }
}

impl Clone for BlockingPool {
    fn clone(&self) -> Self {
        BlockingPool {
            tx: self.tx.clone(),
        }
    }
}
