//! `ternd`, the Tern chat server, as a library (the binary is a thin `main`).
//!
//! # Layout
//!
//! - [`config`]: defaults, the TOML file and the flags, resolved into one [`config::Config`].
//! - `runtime/`: the only place with threads, sockets, io_uring/epoll and timers. It starts one
//!   pinned thread per core, accepts connections, moves each authenticated connection to its user's
//!   owner core, and runs each core's loop turns.
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

pub mod config;
mod core;
mod ids;
mod runtime;
mod store;

pub use config::Config;
pub use runtime::{Server, StartError};
