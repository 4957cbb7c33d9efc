//! [`ClientError`], the one error type of the client library.
//!
//! Every fallible call returns it, so an application (or a test) matches on one enum whatever
//! layer failed: the socket, the encoder, the server's answer or the clock. The enum is
//! `#[non_exhaustive]` so that reconnecting, TLS and storage can add their own variants later
//! without breaking callers.
//!
//! Display messages describe this layer only; the underlying I/O, encode or decode error is the
//! [`source`](std::error::Error::source), as the Rust error-handling guidelines recommend, so an
//! error reporter prints each cause once.

use std::io;

use tern_protocol::frames;
use tern_protocol::{EncodeError, ErrorCode, FrameError};

/// Everything that can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing the socket failed.
    #[error("connection I/O failed")]
    Io(#[from] io::Error),

    /// The server answered with an `Error` frame.
    #[error("server replied {code}: {message}")]
    Server {
        /// What went wrong; [`ErrorCode::closes_connection`] says whether the server hangs up after it.
        code: ErrorCode,
        /// The server's explanation, for logs; never parse it.
        message: String,
        /// For `RATE_LIMITED`, how long to wait before trying again; otherwise 0.
        retry_after_ms: u32,
    },

    /// No answer arrived within the request time-out (or the time-out given to a wait).
    ///
    /// The connection stays open; a reply that arrives later is dropped.
    #[error("timed out waiting for the server")]
    Timeout,

    /// The connection is closed: by the server, by a failed read or write, or by
    /// [`Client::close`](crate::Client::close). Requests still waiting fail with this, and so does
    /// every call made afterwards.
    #[error("the connection is closed")]
    Closed,

    /// The server sent bytes this client cannot decode.
    ///
    /// When the error is fatal ([`FrameError`]'s `error.closes_connection()`: a bad frame length),
    /// the stream is out of step, so the connection was closed and every later call fails with this
    /// error too. Otherwise (a malformed reply body) only the request the frame answered fails.
    #[error("the server sent a frame this client cannot decode")]
    Protocol(#[source] FrameError),

    /// The request could not be encoded: a field above its limit, or a frame larger than the
    /// server accepts. Nothing was sent.
    #[error("the request cannot be encoded")]
    Encode(#[from] EncodeError),

    /// The server answered with a frame type the request does not expect.
    #[error("expected a {expected} reply, got {got}")]
    UnexpectedReply {
        /// The frame type the call expects.
        expected: &'static str,
        /// The frame type that arrived.
        got: &'static str,
    },

    /// The server's `Welcome` chose a protocol version this client did not offer.
    #[error("the server chose protocol version {version}, which this client does not speak")]
    UnsupportedVersion {
        /// The version the server chose.
        version: u16,
    },

    /// The server does not implement what the call needs: it predates the protocol revision
    /// that added it (spec §4.1), and its reply shows that it ignored the request's new field.
    #[error("the server does not support {what}")]
    Unsupported {
        /// What the server lacks.
        what: &'static str,
    },

    /// The frame cannot be sent this way: a notification given to
    /// [`Client::request`](crate::Client::request), a request given to
    /// [`Client::notify`](crate::Client::notify), or a frame only servers send. Nothing was sent.
    #[error("{frame} cannot be sent this way: {reason}")]
    Usage {
        /// The frame type's name.
        frame: &'static str,
        /// Why not.
        reason: &'static str,
    },
}

impl ClientError {
    /// The error an `Error` frame from the server stands for.
    pub fn from_server(error: frames::Error) -> ClientError {
        ClientError::Server {
            code: error.code,
            message: error.message,
            retry_after_ms: error.retry_after_ms,
        }
    }

    /// The server's error code, when this is a [`ClientError::Server`].
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}
