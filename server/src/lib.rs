//! `ternd`, the Tern chat server, as a library (the binary is a thin `main`).
//!
//! # Layout
//!
//! - [`config`]: defaults, the TOML file and the flags, resolved into one [`config::Config`].
//! - `runtime/`: the only place with threads, sockets, io_uring/epoll and timers. It starts one
//!   pinned thread per core, accepts connections, moves each authenticated connection to its user's
//!   owner core, and runs each core's loop turns. `runtime/tls.rs` puts rustls (sans-IO) between a
//!   socket and the codec, so TLS works the same on both engines and migrates with the socket.
//! - `core/`: per-core chat logic ([`core`]'s `Shard`): accounts, the message path, sync, history
//!   and receipts. Sans-IO: frames, mail and the time come in as values; frames and mail go out.
//! - `store/`: the RocksDB schema (column families, key encodings, rkyv records) and group commit.
//! - `ids`: time-ordered 64-bit ids.
//!
//! # Data flow of a message
//!
//! A device's `Send` reaches its user's owner core, which forwards it to the conversation's owner
//! core. That core assigns the next `seq`, puts the message in its write batch and, once the batch
//! is committed, acknowledges `Sent` and sends the message to every member's owner core, which
//! appends it to the member's update log and pushes it to the member's live devices. `core/chat.rs`
//! tells the whole story, crash recovery included.

//! # Choices beyond the design notes, and why
//!
//! - **Accepting and idle waiting go through tokio's reactor on both engines.** tokio-uring offers
//!   no readiness poll, and an in-flight io_uring read per idle connection would pin a buffer to
//!   every idle connection. So a uring connection waits for readiness through the reactor that
//!   tokio-uring runs anyway, borrows a pooled buffer, and submits the read only when data is
//!   there; reads and writes themselves are io_uring operations. Accept is readiness-driven too,
//!   which keeps it cancel-safe for shutdown.
//! - **The conversation's core checks idempotency**, not the sender's core: all sends to a
//!   conversation pass through its core, so the check and the write of the idempotency record sit
//!   in one place and one batch, with no window between them.
//! - **Direct conversations are created by the owner core of the lower user id**, so two users
//!   opening their conversation at the same moment on different cores get the same one.
//! - **Message `ts` is the conversation core's clock at storage time**; ids are time-ordered per
//!   core and never reused, even when the clock steps back (see `ids`).
//! - **A panic ends the process** (the binary installs a hook): a dead core thread would leave its
//!   users unserved while the server looked alive; the write-ahead log keeps what was acknowledged.

pub mod config;
mod core;
mod ids;
mod metrics;
mod push;
mod runtime;
#[cfg(test)]
mod sim;
mod store;

pub use config::Config;
pub use runtime::{Server, StartError};
