//! [`ConnectOptions`]: what a caller may choose about a connection, with defaults that suit a
//! chat app.
//!
//! The struct is `#[non_exhaustive]`, so TLS, reconnect and storage settings can be added later
//! without breaking callers: start from [`ConnectOptions::new`] (or `default()`) and change what you
//! need with the `with_*` methods or by assigning fields. Durations are `std::time::Duration`, not a
//! runtime's type, so SDKs for other languages can pass them through as plain values.

use std::time::Duration;

use tern_protocol::limits::FRAME_BYTES_MAX;

/// How long a request waits for its reply by default, in milliseconds.
pub const REQUEST_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// How many events are buffered for the application by default.
pub const EVENT_BUFFER_DEFAULT_EVENTS: usize = 1024;

/// Settings for [`Client::connect`](crate::Client::connect).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The client software's name and version, sent in `Hello` for the server's logs
    /// (`"tern-ios/2.3.1"`; at most 64 bytes). Default: `"tern-client/<crate version>"`.
    pub client_name: String,

    /// How long a request waits for its reply before failing with
    /// [`ClientError::Timeout`](crate::ClientError::Timeout). It also bounds connecting (TCP and
    /// the `Hello`/`Welcome` handshake together), queueing a notification, and the graceful part of
    /// [`Client::close`](crate::Client::close). Default: 10 seconds.
    pub request_timeout: Duration,

    /// How many received events wait for [`Client::next_event`](crate::Client::next_event) before
    /// the client stops reading the socket (at least 1; default 1024).
    ///
    /// A full buffer holds back everything behind it on the connection, replies included, and the
    /// server eventually closes a client that does not keep up (`SLOW_CONSUMER`). An application
    /// that does not care about events should still drain them.
    pub event_buffer: usize,

    /// The largest frame this client accepts from the server, length field included. A frame
    /// announcing more closes the connection with
    /// [`ClientError::Protocol`](crate::ClientError::Protocol) before any of it is buffered.
    /// Clamped to the protocol's 1 MiB maximum. Default: that maximum.
    pub max_frame_bytes: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            client_name: concat!("tern-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_DEFAULT_MS),
            event_buffer: EVENT_BUFFER_DEFAULT_EVENTS,
            max_frame_bytes: FRAME_BYTES_MAX,
        }
    }
}

impl ConnectOptions {
    /// The defaults, with this client name.
    pub fn new(client_name: impl Into<String>) -> Self {
        ConnectOptions {
            client_name: client_name.into(),
            ..ConnectOptions::default()
        }
    }

    /// Sets [`ConnectOptions::request_timeout`].
    pub fn with_request_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = request_timeout;
        self
    }

    /// Sets [`ConnectOptions::event_buffer`].
    pub fn with_event_buffer(mut self, event_buffer: usize) -> Self {
        self.event_buffer = event_buffer;
        self
    }

    /// Sets [`ConnectOptions::max_frame_bytes`].
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: u32) -> Self {
        self.max_frame_bytes = max_frame_bytes;
        self
    }
}
