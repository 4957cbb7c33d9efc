//! [`ClientError`] as the other languages see it: one exception (Kotlin `ClientException`, Swift
//! and Python `ClientError`) with a subclass per variant, and [`ErrorCode`], the server's error
//! codes as a plain enum.
//!
//! The library's own error holds values no other language can hold (an `io::Error`, a decode
//! error); here every variant carries plain fields instead, with the cause chain flattened into
//! `detail`. A server error keeps its code both as [`ErrorCode`] (to match on) and as the raw
//! number (so a code newer than these bindings is not lost).

use std::error::Error as _;

use tern_protocol::ErrorCode as WireCode;

/// Everything that can go wrong in a call.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request: wrong credentials, not a member, a limit, ...
    #[error("the server replied {code:?} ({code_value}): {detail}")]
    Server {
        /// What went wrong ([`ErrorCode::Unknown`] for a code these bindings do not know).
        code: ErrorCode,
        /// The code's number on the wire.
        code_value: u16,
        /// The server's explanation, for logs; never parse it.
        detail: String,
        /// For `RATE_LIMITED`, how long to wait before trying again; otherwise 0.
        retry_after_ms: u32,
    },
    /// Connecting, reading or writing the socket failed, or a file could not be read or written.
    #[error("I/O failed: {detail}")]
    Io {
        /// What failed, with its causes.
        detail: String,
    },
    /// No answer arrived in time. The connection stays open; a send stays queued.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The connection or the session is closed.
    #[error("the connection or session is closed")]
    Closed,
    /// The server sent bytes this client cannot decode.
    #[error("the server sent a frame this client cannot decode: {detail}")]
    Protocol {
        /// The decode error.
        detail: String,
    },
    /// The request cannot be encoded (a field above its limit); nothing was sent.
    #[error("the request cannot be encoded: {detail}")]
    Encode {
        /// Which field and limit.
        detail: String,
    },
    /// The server answered with a frame type the request does not expect.
    #[error("expected a {expected} reply, got {got}")]
    UnexpectedReply {
        /// The frame type the call expects.
        expected: String,
        /// The frame type that arrived.
        got: String,
    },
    /// The server chose a protocol version this client does not speak.
    #[error("the server chose protocol version {version}, which this client does not speak")]
    UnsupportedVersion {
        /// The version the server chose.
        version: u16,
    },
    /// The call cannot be made this way (for example resuming with no stored session).
    #[error("usage: {detail}")]
    Usage {
        /// Why not.
        detail: String,
    },
    /// The session's storage could not be opened, read or written.
    #[error("storage: {detail}")]
    Storage {
        /// What failed, with its causes.
        detail: String,
    },
    /// A failure inside the bindings (the runtime could not start, a task panicked).
    #[error("internal error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
}

/// The server's error codes (`spec/protocol.md`, error codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ErrorCode {
    /// The frame's body could not be decoded.
    Malformed,
    /// A frame's length is above the negotiated maximum.
    FrameTooLarge,
    /// A frame's length is below the minimum.
    FrameTooSmall,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The first frame was not `Hello`.
    HelloRequired,
    /// A frame type the server does not take.
    UnknownType,
    /// The request needs an authenticated session.
    NotAuthenticated,
    /// Already authenticated.
    AlreadyAuthenticated,
    /// A field is above its limit.
    LimitExceeded,
    /// A field is not acceptable (an empty name, a password too short, a zero id).
    InvalidArgument,
    /// The username exists already.
    UsernameTaken,
    /// Wrong username or password, or a token that no longer works.
    BadCredentials,
    /// The user, conversation, device or media does not exist or is not visible.
    NotFound,
    /// Not allowed: not a member, not an admin, no shared conversation.
    Forbidden,
    /// Too many requests; see `retry_after_ms`.
    RateLimited,
    /// The user has the most devices allowed.
    TooManyDevices,
    /// The group has the most members allowed.
    GroupFull,
    /// The request conflicts with the state it acts on.
    Conflict,
    /// An upload's bytes do not match its SHA-256.
    ChecksumMismatch,
    /// An upload is above the server's media size limit.
    MediaTooLarge,
    /// The client read its events too slowly.
    SlowConsumer,
    /// Nothing arrived within the idle time-out.
    HeartbeatTimeout,
    /// This device was revoked.
    DeviceRevoked,
    /// The server cannot take the connection now.
    Unavailable,
    /// The server failed; the request may be retried.
    Internal,
    /// A plaintext `Send` to an end-to-end encrypted conversation.
    EncryptionRequired,
    /// A code these bindings do not know (see `code_value`).
    Unknown,
}

impl ErrorCode {
    /// The enum value of a wire code.
    pub(crate) fn from_wire(code: WireCode) -> ErrorCode {
        const TABLE: [(WireCode, ErrorCode); 26] = [
            (WireCode::MALFORMED, ErrorCode::Malformed),
            (WireCode::FRAME_TOO_LARGE, ErrorCode::FrameTooLarge),
            (WireCode::FRAME_TOO_SMALL, ErrorCode::FrameTooSmall),
            (WireCode::UNSUPPORTED_VERSION, ErrorCode::UnsupportedVersion),
            (WireCode::HELLO_REQUIRED, ErrorCode::HelloRequired),
            (WireCode::UNKNOWN_TYPE, ErrorCode::UnknownType),
            (WireCode::NOT_AUTHENTICATED, ErrorCode::NotAuthenticated),
            (
                WireCode::ALREADY_AUTHENTICATED,
                ErrorCode::AlreadyAuthenticated,
            ),
            (WireCode::LIMIT_EXCEEDED, ErrorCode::LimitExceeded),
            (WireCode::INVALID_ARGUMENT, ErrorCode::InvalidArgument),
            (WireCode::USERNAME_TAKEN, ErrorCode::UsernameTaken),
            (WireCode::BAD_CREDENTIALS, ErrorCode::BadCredentials),
            (WireCode::NOT_FOUND, ErrorCode::NotFound),
            (WireCode::FORBIDDEN, ErrorCode::Forbidden),
            (WireCode::RATE_LIMITED, ErrorCode::RateLimited),
            (WireCode::TOO_MANY_DEVICES, ErrorCode::TooManyDevices),
            (WireCode::GROUP_FULL, ErrorCode::GroupFull),
            (WireCode::CONFLICT, ErrorCode::Conflict),
            (WireCode::CHECKSUM_MISMATCH, ErrorCode::ChecksumMismatch),
            (WireCode::MEDIA_TOO_LARGE, ErrorCode::MediaTooLarge),
            (WireCode::SLOW_CONSUMER, ErrorCode::SlowConsumer),
            (WireCode::HEARTBEAT_TIMEOUT, ErrorCode::HeartbeatTimeout),
            (WireCode::DEVICE_REVOKED, ErrorCode::DeviceRevoked),
            (WireCode::UNAVAILABLE, ErrorCode::Unavailable),
            (WireCode::INTERNAL, ErrorCode::Internal),
            (WireCode::ENCRYPTION_REQUIRED, ErrorCode::EncryptionRequired),
        ];
        TABLE
            .iter()
            .find(|(wire, _)| *wire == code)
            .map_or(ErrorCode::Unknown, |(_, ours)| *ours)
    }
}

impl ClientError {
    /// The server's code, when this is a server error.
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn io(detail: impl Into<String>) -> ClientError {
        ClientError::Io {
            detail: detail.into(),
        }
    }

    pub(crate) fn internal(detail: impl Into<String>) -> ClientError {
        ClientError::Internal {
            detail: detail.into(),
        }
    }
}

/// An error and its causes on one line: `"a: b: c"`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    // Bounded: cause chains are short, and a cycle would be a bug in the error types.
    for _ in 0..16 {
        let Some(cause) = source else { break };
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<tern_client::ClientError> for ClientError {
    fn from(error: tern_client::ClientError) -> ClientError {
        use tern_client::ClientError as E;
        match error {
            E::Server {
                code,
                message,
                retry_after_ms,
            } => ClientError::Server {
                code: ErrorCode::from_wire(code),
                code_value: code.0,
                detail: message,
                retry_after_ms,
            },
            E::Timeout => ClientError::Timeout,
            E::Closed => ClientError::Closed,
            E::UnexpectedReply { expected, got } => ClientError::UnexpectedReply {
                expected: expected.to_owned(),
                got: got.to_owned(),
            },
            E::UnsupportedVersion { version } => ClientError::UnsupportedVersion { version },
            E::Usage { frame, reason } => ClientError::Usage {
                detail: format!("{frame}: {reason}"),
            },
            ref e @ E::Protocol(_) => ClientError::Protocol {
                detail: source_chain(e),
            },
            ref e @ E::Encode(_) => ClientError::Encode {
                detail: source_chain(e),
            },
            ref e @ E::Io(_) => ClientError::io(source_chain(e)),
            // The library may add variants; they reach the app with their text.
            other => ClientError::internal(chain(&other)),
        }
    }
}

/// The causes of an error, without its own message (which only names the layer).
fn source_chain(error: &tern_client::ClientError) -> String {
    match error.source() {
        Some(source) => chain(source),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every code the protocol defines has its own enum value, and the table is in step
    // with the protocol's list (a new code there fails here until it is added).
    #[test]
    fn every_wire_code_maps_to_its_own_value() {
        let mut seen = Vec::new();
        for code in WireCode::ALL {
            let ours = ErrorCode::from_wire(*code);
            assert_ne!(ours, ErrorCode::Unknown, "{code}");
            assert!(!seen.contains(&ours), "{code} maps to {ours:?} twice");
            seen.push(ours);
        }
        assert_eq!(ErrorCode::from_wire(WireCode(999)), ErrorCode::Unknown);
    }

    // Proves a server error keeps its code, number, message and retry hint.
    #[test]
    fn server_errors_keep_their_fields() {
        let error = ClientError::from(tern_client::ClientError::Server {
            code: WireCode::RATE_LIMITED,
            message: "slow down".into(),
            retry_after_ms: 250,
        });
        match error {
            ClientError::Server {
                code,
                code_value,
                detail,
                retry_after_ms,
            } => {
                assert_eq!(code, ErrorCode::RateLimited);
                assert_eq!(code_value, WireCode::RATE_LIMITED.0);
                assert_eq!(detail, "slow down");
                assert_eq!(retry_after_ms, 250);
            }
            other => panic!("{other:?}"),
        }
    }

    // Proves an I/O error's cause reaches the detail.
    #[test]
    fn io_errors_carry_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused here");
        let error = ClientError::from(tern_client::ClientError::Io(io));
        match error {
            ClientError::Io { detail } => assert!(detail.contains("refused here"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}
