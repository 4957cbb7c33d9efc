//! The Tern client library: the core the native SDKs wrap, and what the `tern` terminal client
//! and the server's integration tests use.
//!
//! Two levels:
//!
//! - [`Session`]: a logged-in device that stays connected. It reconnects with exponential back-off
//!   and jitter, resumes with its token, catches up from its cursor, keeps the connection alive with
//!   Pings, and keeps an outbox: every message is retried with its original `client_msg_id` until
//!   the server confirms it, so a dropped connection, a killed server or a crashed app loses
//!   nothing and stores nothing twice. Its state lives in a [`Storage`]: [`MemoryStorage`],
//!   [`FileStorage`], or the app's own implementation.
//! - [`Client`]: one connection, over TCP or TLS ([`TlsOptions`]), with request/reply correlation,
//!   request time-outs, a typed event stream ([`Event`]) and one typed helper per request of the
//!   protocol. A session hands out its current client ([`Session::client`]) for everything but
//!   sends.
//!
//! The wire format is [`tern_protocol`]'s (re-exported as [`protocol`]). The public API uses plain
//! types (`std::time::Duration`, protocol structs, `Arc`), not the runtime's, so bindings for other
//! languages can wrap it; it needs a tokio runtime to run on.
//!
//! # Layout
//!
//! - `session.rs`: [`Session`], its options, events and the driver task behind it.
//! - `storage.rs`: the [`Storage`] trait and its two implementations.
//! - `client.rs`: [`Client`]: connect (TCP or TLS) and handshake, `request`, `notify`, events.
//! - `requests.rs`: the typed helpers on [`Client`] (`register`, `send`, `sync`, `create_group`,
//!   `upload`, ...).
//! - `connection.rs`: the table of waiting requests, the handshake, the reader and writer tasks.
//! - `crypto.rs`: [`Crypto`], end-to-end encryption (Olm and Megolm from vodozemac): keys,
//!   room keys, encrypted messages and attachments, history on new devices, the key backup.
//! - `tls.rs`: [`TlsOptions`] and the rustls connector (ring provider, TLS 1.3 and 1.2).
//! - `event.rs`, `options.rs`, `error.rs`: [`Event`], [`ConnectOptions`], [`ClientError`].
//!
//! # Data flow
//!
//! ```text
//!  Session::send ─► Storage outbox ─► driver ─► Client::request (in outbox order) ─► socket
//!        ▲                              │  ▲
//!        └── Sent / SendFailed ◄────────┘  └── reconnect, Resume, Sync from the cursor
//!  Session::next_event ◄── Update (each user_seq once, in order), Presence, Typing, Connected, ...
//!                           (a Skipped update is passed over: it carries nothing)
//!
//!  Client::request ─ register id ─► writer task ─► socket ─► server
//!  reader task ─ FrameDecoder ─► reply to its waiter, or an Event to the event queue
//! ```
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use tern_client::{Credentials, FileStorage, Session, SessionEvent, SessionOptions};
//!
//! async fn chat() -> Result<(), Box<dyn std::error::Error>> {
//!     let storage = Arc::new(FileStorage::open("alice.json")?);
//!     let credentials = Credentials::Login {
//!         username: "alice".into(),
//!         password: "correct horse".into(),
//!         device_name: "laptop".into(),
//!     };
//!     let session =
//!         Session::start("127.0.0.1:7400", credentials, storage, SessionOptions::new("demo/1.0"))
//!             .await?;
//!     let client = session.client().await?;
//!     let bob = client.lookup_user("bob").await?;
//!     let chat = client.open_direct(bob.user_id).await?;
//!     session.send(chat.conversation_id, "hi Bob").await?;
//!     while let Some(event) = session.next_event().await {
//!         if let SessionEvent::Update(update) = event {
//!             println!("update {}: {:?}", update.user_seq, update.kind);
//!         }
//!     }
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]

mod client;
mod connection;
pub mod crypto;
mod error;
mod event;
mod options;
mod pacer;
#[macro_use]
mod requests;
mod session;
mod storage;
mod tls;

pub use client::Client;
pub use crypto::{Crypto, CryptoError};
pub use error::ClientError;
pub use event::Event;
pub use options::{ConnectOptions, EVENT_BUFFER_DEFAULT_EVENTS, REQUEST_TIMEOUT_DEFAULT_MS};
pub use session::{Credentials, Session, SessionEvent, SessionOptions};
pub use storage::{
    FileStorage, MemoryStorage, PendingSend, Storage, StorageError, StoredSession, StoredState,
};
pub use tern_protocol as protocol;
pub use tls::TlsOptions;
