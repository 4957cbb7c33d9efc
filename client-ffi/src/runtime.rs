//! The tokio runtime the bindings own, and [`run`], which every async export goes through.
//!
//! Foreign languages poll Rust futures from their own executors (Kotlin coroutines, Swift tasks,
//! Python's asyncio loop), none of which is a tokio runtime, while the client library needs one
//! for its sockets and timers. So each call is spawned on this crate's runtime and the foreign
//! side awaits only the task's handle, which any executor can poll. No tokio type crosses the
//! boundary.
//!
//! Cancellation: when the foreign side cancels a call (a coroutine cancelled, a Swift task
//! cancelled, an asyncio task cancelled), the future it held is dropped, which aborts the task.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::error::ClientError;

/// Worker threads of the runtime. Chat traffic is I/O bound; two threads keep a slow callback
/// into the app (a progress callback, say) from stalling every connection.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The runtime, started on first use and kept for the life of the process.
fn runtime() -> Result<&'static Runtime, ClientError> {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("tern-ffi")
            .enable_all()
            .build()
            .map_err(|e| format!("the runtime could not start: {e}"))
    });
    runtime
        .as_ref()
        .map_err(|detail| ClientError::internal(detail.clone()))
}

/// Aborts the task when the awaiting future is dropped before it finished.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `future` on the bindings' runtime and waits for its result, from any executor.
pub(crate) async fn run<F, T>(future: F) -> Result<T, ClientError>
where
    F: Future<Output = Result<T, ClientError>> + Send + 'static,
    T: Send + 'static,
{
    let mut task = AbortOnDrop(runtime()?.spawn(future));
    match (&mut task.0).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(ClientError::internal("a task of the bindings panicked")),
        Err(_) => Err(ClientError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a call runs on the bindings' runtime even when awaited outside any tokio runtime
    // (as a foreign executor does), and that its result comes back.
    #[test]
    fn run_works_from_a_foreign_executor() {
        let result = futures_lite_block_on(run(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            Ok::<_, ClientError>(42)
        }));
        assert_eq!(result.ok(), Some(42));
    }

    // Proves a panic in a call becomes an error instead of unwinding into the foreign caller.
    #[test]
    fn a_panicking_call_becomes_an_error() {
        let result: Result<(), ClientError> = futures_lite_block_on(run(async {
            panic!("boom");
        }));
        assert!(matches!(result, Err(ClientError::Internal { .. })));
    }

    /// A minimal executor that is not tokio: polls on this thread, parking between wake-ups.
    fn futures_lite_block_on<F: Future>(future: F) -> F::Output {
        use std::sync::Arc;
        use std::task::{Context, Poll, Wake, Waker};

        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        // Bounded: a minute of wake-ups at most.
        for _ in 0..600 {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            std::thread::park_timeout(std::time::Duration::from_millis(100));
        }
        panic!("the future did not finish within a minute");
    }
}
