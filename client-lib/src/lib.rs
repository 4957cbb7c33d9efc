//! The Tern client library: an async (tokio) connection to a Tern server with request/reply
//! correlation and a typed event stream. It is the core the native SDKs and the `tern` terminal
//! client build on, and what the server's integration tests use as real clients.
//!
//! The wire format is [`tern_protocol`]'s (re-exported as [`protocol`]); this crate adds the
//! socket, the background tasks and the bookkeeping that matches replies to requests. Its public
//! API uses plain types (`std::time::Duration`, protocol structs) so that bindings for other
//! languages can wrap it without knowing the runtime.
//!
//! # Layout
//!
//! - `client.rs`: [`Client`]: connect and handshake, `request`, `notify`, events, `close`.
//! - `requests.rs`: the typed helpers on [`Client`] (`register`, `send`, `sync`, ...).
//! - `connection.rs`: the table of waiting requests, the handshake, the reader and writer tasks.
//! - `event.rs`: [`Event`], what the server sends unasked.
//! - `options.rs`: [`ConnectOptions`] and its defaults.
//! - `error.rs`: [`ClientError`].
//!
//! Reconnecting, TLS, local storage and end-to-end encryption come later, as additions: the
//! reader and writer tasks are generic over the stream, and the options, error and event enums are
//! `#[non_exhaustive]`.
//!
//! # Data flow
//!
//! ```text
//!  request() ─ encode, register id ─► outgoing queue ─► writer task ─► socket
//!      ▲                               (bounded)         (batches writes)
//!      │ oneshot, by request id
//!  reader task ◄─ FrameDecoder ◄─ socket
//!      │ events, errors nobody waits for
//!      ▼
//!  event queue (bounded) ─► next_event() / wait_for_event()
//! ```
//!
//! Every request gets a fresh non-zero request id and a waiter in a shared table; the reader task
//! hands each reply to the waiter with its id, so replies may arrive in any order, interleaved with
//! events. A request that times out removes its waiter and the connection stays usable. When the
//! connection ends, every waiting request fails with [`ClientError::Closed`] (or the
//! [`ClientError::Protocol`] error that ended it) and [`Client::next_event`] returns `None` once the
//! events received before are drained.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tern_client::{Client, ClientError, ConnectOptions, Event};
//!
//! async fn hello_world() -> Result<(), ClientError> {
//!     let client = Client::connect("127.0.0.1:7400", ConnectOptions::new("example/1.0")).await?;
//!     let me = client.register("alice", "correct horse", "laptop").await?;
//!     let bob = client.lookup_user("bob").await?;
//!     let chat = client.open_direct(bob.user_id).await?;
//!     client.send(chat.conversation_id, [7; 16], "hi Bob").await?;
//!
//!     // Catch up, which also turns on live updates, then wait for Bob's answer.
//!     let page = client.sync(0, 0).await?;
//!     let answer = client
//!         .wait_for_event(|event| matches!(event, Event::Update(_)), Duration::from_secs(30))
//!         .await?;
//!     println!("{} has {} updates, then {answer:?}", me.username, page.updates.len());
//!     client.close().await;
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]

mod client;
mod connection;
mod error;
mod event;
mod options;
mod requests;
mod session;
mod storage;
mod tls;

pub use client::Client;
pub use error::ClientError;
pub use event::Event;
pub use options::{ConnectOptions, EVENT_BUFFER_DEFAULT_EVENTS, REQUEST_TIMEOUT_DEFAULT_MS};
pub use session::{Credentials, Session, SessionEvent, SessionOptions};
pub use storage::{
    FileStorage, MemoryStorage, PendingSend, Storage, StorageError, StoredSession, StoredState,
};
pub use tern_protocol as protocol;
pub use tls::TlsOptions;
