//! The readers: a few threads that run the cores' reads of what is durable
//! ([`Read`](crate::core::reads::Read)), so a read that goes to the device holds no core.
//!
//! A core hands each read over through its [`Reader`] and goes on serving. Any reader thread takes
//! it, runs it on the store without any core's staged writes, puts the answer on its core's
//! channel and wakes the core, which sends the page from it
//! ([`Shard::handle_read`](crate::core::Shard::handle_read)). Answers come back in any order.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use tokio::sync::Notify;

use crate::core::reads::{Read, ReadDone, READS_IN_FLIGHT_MAX};
use crate::store::{Store, StoreError};

/// A reader's answer for one read.
pub(crate) struct ReadAnswer {
    pub(crate) id: u64,
    pub(crate) result: Result<ReadDone, StoreError>,
    /// How long the read took on the reader, in microseconds.
    pub(crate) micros: u64,
}

/// One core's way to the reader threads.
pub(crate) struct Reader {
    core: usize,
    reads: Sender<(usize, Read)>,
    pub(crate) answers: Receiver<ReadAnswer>,
}

impl Reader {
    /// Hands a read over. The shard's in-flight bound keeps the channels from filling.
    pub(crate) fn submit(&self, read: Read) {
        // Only fails once every reader thread is gone, which ends the process first (panic hook).
        let _ = self.reads.send((self.core, read));
    }
}

/// Starts `threads` reader threads over `store` (what is durable) for as many cores as `wakes`
/// names; they wake core `i` through `wakes[i]` after each answer. The threads end once every
/// [`Reader`] is dropped.
pub(crate) fn start(
    store: Store,
    threads: usize,
    wakes: Vec<Arc<Notify>>,
) -> std::io::Result<(Vec<Reader>, Vec<JoinHandle<()>>)> {
    let cores = wakes.len();
    // No core has more than READS_IN_FLIGHT_MAX reads out, so no channel ever blocks its sender.
    let (reads, rx) = bounded::<(usize, Read)>(READS_IN_FLIGHT_MAX * cores);
    let (answer_tx, answer_rx): (Vec<_>, Vec<_>) = (0..cores)
        .map(|_| bounded::<ReadAnswer>(READS_IN_FLIGHT_MAX))
        .unzip();
    let answer_tx = Arc::new(answer_tx);
    let wakes = Arc::new(wakes);
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let rx = rx.clone();
        let store = store.clone();
        let answer_tx = Arc::clone(&answer_tx);
        let wakes = Arc::clone(&wakes);
        let handle = std::thread::Builder::new()
            .name(format!("ternd-read-{i}"))
            .spawn(move || {
                while let Ok((core, read)) = rx.recv() {
                    let started = Instant::now();
                    let result = read.job.run(&store);
                    let micros = started.elapsed().as_micros() as u64;
                    let answer = ReadAnswer {
                        id: read.id,
                        result,
                        micros,
                    };
                    // A core that has ended takes no answers; the others still do.
                    if answer_tx[core].send(answer).is_ok() {
                        wakes[core].notify_one();
                    }
                }
            })?;
        handles.push(handle);
    }
    let readers = answer_rx
        .into_iter()
        .enumerate()
        .map(|(core, answers)| Reader {
            core,
            reads: reads.clone(),
            answers,
        })
        .collect();
    Ok((readers, handles))
}
