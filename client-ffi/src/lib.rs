//! Bindings of the Tern client library for Kotlin, Swift and Python, through UniFFI: the native
//! SDKs share this one Rust core (sessions that reconnect, resume and keep an outbox; typed
//! requests; media), as matrix-rust-sdk's FFI crate does for its platforms.
//!
//! The crate builds `libtern_ffi` (a `cdylib`) carrying UniFFI's scaffolding and metadata; the
//! `uniffi-bindgen` binary of this crate reads that metadata from the built library and writes
//! the Kotlin, Swift and Python sources (`client-ffi/README.md` has the commands, `.ci/ffi.sh`
//! runs them).
//!
//! # What crosses the boundary
//!
//! - [`Session`] (an object): `start` (register, log in, or resume from the file at a path),
//!   `stop`, `send`, `next_event`, and one method per request of the protocol (conversations,
//!   groups, history, receipts, presence, typing, devices, push tokens, media).
//! - Records and enums ([`types`]): plain values, ids as `u64`, keys and digests as hex text.
//! - [`ClientError`]: one exception per variant in each language, the server's code as
//!   [`ErrorCode`].
//! - [`TransferProgress`]: a callback interface the app implements to follow uploads and
//!   downloads.
//!
//! Every async method is a Kotlin `suspend fun`, a Swift `async` function and a Python coroutine.
//! The tokio runtime lives inside the crate (`runtime.rs`); no tokio type is part of the API.
//!
//! # Layout
//!
//! - `session.rs`: [`Session`], [`Credentials`], [`SessionOptions`], [`TlsOptions`],
//!   [`SessionEvent`].
//! - `media.rs`: upload and download with [`TransferProgress`].
//! - `types.rs`: the records and enums, converted from the protocol's.
//! - `error.rs`: [`ClientError`] and [`ErrorCode`].
//! - `runtime.rs`: the runtime and `run`, which every async export goes through.
//! - `bin/uniffi-bindgen.rs`: the generator.

// UniFFI's scaffolding is `extern "C"` functions that take raw pointers: the one reason this crate
// is not `forbid(unsafe_code)`. The code written here uses no `unsafe` of its own.
#![allow(unsafe_code)]

mod error;
mod media;
mod runtime;
mod session;
pub mod types;

pub use error::{ClientError, ErrorCode};
pub use media::TransferProgress;
pub use session::{Credentials, Session, SessionEvent, SessionOptions, TlsOptions};

uniffi::setup_scaffolding!();
