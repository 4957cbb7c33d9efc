//! Errors: what the decoder and encoder report, and the error codes that travel in `Error` frames.
//!
//! Every [`DecodeError`] maps to exactly one wire [`ErrorCode`] through [`DecodeError::code`], so a
//! server can answer bad input with the code the spec names without a lookup table of its own.
//! [`DecodeError::closes_connection`] says whether the byte stream is still in step after the error
//! (a bad body inside a well-formed frame) or not (a bad length), in which case the peer must close.

use core::fmt;

/// A wire error code, carried in the `Error` frame.
///
/// This is a plain `u16` newtype rather than an enum so that a client built against this version
/// keeps working when a newer server sends a code it does not know: it still has the number, and
/// [`ErrorCode::name`] answers `"UNKNOWN"`. The spec's table of codes is the list of constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, closes: $closes:literal; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($value); )*

            /// Every code this version defines, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's name as the spec writes it, or `"UNKNOWN"` for a code this version lacks.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $( $value => stringify!($name), )*
                    _ => "UNKNOWN",
                }
            }

            /// Whether the server closes the connection after sending this code.
            ///
            /// Unknown codes are treated as closing, the safe reading for an old client.
            pub fn closes_connection(self) -> bool {
                match self.0 {
                    $( $value => $closes, )*
                    _ => true,
                }
            }
        }
    };
}

error_codes! {
    /// The frame's body could not be decoded: truncated, bad UTF-8, a bad bool or option tag, or an
    /// enum value this version does not define. The frame boundary is intact, so the connection stays.
    MALFORMED = 1, closes: false;
    /// The frame's length field is above the negotiated maximum. The stream cannot be resynchronised.
    FRAME_TOO_LARGE = 2, closes: true;
    /// The frame's length field is below the 6-byte minimum (type and request id).
    FRAME_TOO_SMALL = 3, closes: true;
    /// `Hello` asked for no version this server speaks.
    UNSUPPORTED_VERSION = 4, closes: true;
    /// The first frame on a connection was not `Hello`.
    HELLO_REQUIRED = 5, closes: true;
    /// The frame type is not defined by the negotiated version, or may not be sent in this direction.
    UNKNOWN_TYPE = 6, closes: false;
    /// The request needs an authenticated session and this one is not.
    NOT_AUTHENTICATED = 7, closes: false;
    /// `Register`, `Login` or `Resume` on a session that is already authenticated.
    ALREADY_AUTHENTICATED = 8, closes: false;
    /// A field is above its limit: a string, byte string or list too long, a body over 100,000 characters.
    LIMIT_EXCEEDED = 9, closes: false;
    /// A field is well formed but not acceptable: an empty name, a password too short, a zero id.
    INVALID_ARGUMENT = 10, closes: false;
    /// `Register` named a username that already exists.
    USERNAME_TAKEN = 11, closes: false;
    /// Wrong username or password, or a token that is unknown, expired or revoked.
    BAD_CREDENTIALS = 12, closes: false;
    /// The user, conversation, device or media named does not exist (or is not visible to the caller).
    NOT_FOUND = 13, closes: false;
    /// The caller may not do this: not a member, not an admin, no shared conversation.
    FORBIDDEN = 14, closes: false;
    /// Too many requests; `retry_after_ms` says when to try again.
    RATE_LIMITED = 15, closes: false;
    /// The user already has the maximum number of devices; revoke one first.
    TOO_MANY_DEVICES = 16, closes: false;
    /// The group already has its maximum number of members.
    GROUP_FULL = 17, closes: false;
    /// The request conflicts with the state it acts on: an upload chunk at the wrong offset, an
    /// idempotency key reused for a different conversation.
    CONFLICT = 18, closes: false;
    /// `UploadFinish`: the bytes received do not match the SHA-256 given in `UploadBegin`.
    CHECKSUM_MISMATCH = 19, closes: false;
    /// The upload is above the server's media size limit.
    MEDIA_TOO_LARGE = 20, closes: false;
    /// The client did not read its events fast enough and its outbound queue overflowed. Nothing is
    /// lost: reconnect and `Sync` from the last acknowledged `user_seq`.
    SLOW_CONSUMER = 21, closes: true;
    /// No frame arrived within the idle time-out announced in `Welcome`.
    HEARTBEAT_TIMEOUT = 22, closes: true;
    /// This device was revoked (by `RevokeDevice` or `Logout`); its token no longer works.
    DEVICE_REVOKED = 23, closes: true;
    /// The server is at its connection limit, or otherwise cannot take this connection now.
    UNAVAILABLE = 24, closes: true;
    /// The server failed (storage error, bug). The request may be retried; sends are idempotent.
    INTERNAL = 25, closes: false;
    /// `Send` to an encrypted conversation with a body that is not an encrypted body.
    ENCRYPTION_REQUIRED = 26, closes: false;
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why bytes could not be decoded into a frame.
///
/// `field` names are the spec's field names (for example `"body"`, `"members"`), so an error read in a
/// log points at the exact place in `spec/protocol.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length field is above the maximum frame size. Fatal: the stream is out of step.
    FrameTooLarge {
        /// The frame size the length field declares, length field included.
        frame_bytes: u64,
        /// The maximum frame size, length field included.
        max: u32,
    },
    /// The length field is below the minimum (6: type and request id). Fatal.
    FrameTooSmall {
        /// The value of the length field.
        length: u32,
    },
    /// The frame type is not defined by this version. The frame was skipped whole.
    UnknownType {
        /// The type code that was read.
        frame_type: u16,
    },
    /// The body ended before a field was complete.
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A string field is not valid UTF-8.
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A bool byte other than 0 or 1.
    InvalidBool {
        /// The field being read.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// An option tag other than 0 or 1.
    InvalidOptionTag {
        /// The field being read.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// An enum value this version does not define.
    InvalidEnum {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: u8,
    },
    /// A string or byte string longer than its field's limit, in bytes.
    TooLong {
        /// The field being read.
        field: &'static str,
        /// The declared length in bytes.
        len: u32,
        /// The field's limit in bytes.
        max: u32,
    },
    /// A text field with more characters (Unicode scalar values) than its limit.
    TooManyChars {
        /// The field being read.
        field: &'static str,
        /// The field's limit in characters.
        max: u32,
    },
    /// A list with more items than its field's limit.
    TooManyItems {
        /// The field being read.
        field: &'static str,
        /// The declared item count.
        count: u32,
        /// The field's limit.
        max: u32,
    },
}

impl DecodeError {
    /// The wire error code the spec assigns to this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            DecodeError::FrameTooSmall { .. } => ErrorCode::FRAME_TOO_SMALL,
            DecodeError::UnknownType { .. } => ErrorCode::UNKNOWN_TYPE,
            DecodeError::Truncated { .. }
            | DecodeError::InvalidUtf8 { .. }
            | DecodeError::InvalidBool { .. }
            | DecodeError::InvalidOptionTag { .. }
            | DecodeError::InvalidEnum { .. } => ErrorCode::MALFORMED,
            DecodeError::TooLong { .. }
            | DecodeError::TooManyChars { .. }
            | DecodeError::TooManyItems { .. } => ErrorCode::LIMIT_EXCEEDED,
        }
    }

    /// Whether the byte stream is out of step after this error, so the connection must close.
    pub fn closes_connection(&self) -> bool {
        self.code().closes_connection()
    }

    /// The variant's name, as the golden-vector manifest writes expected errors.
    pub fn name(&self) -> &'static str {
        match self {
            DecodeError::FrameTooLarge { .. } => "FrameTooLarge",
            DecodeError::FrameTooSmall { .. } => "FrameTooSmall",
            DecodeError::UnknownType { .. } => "UnknownType",
            DecodeError::Truncated { .. } => "Truncated",
            DecodeError::InvalidUtf8 { .. } => "InvalidUtf8",
            DecodeError::InvalidBool { .. } => "InvalidBool",
            DecodeError::InvalidOptionTag { .. } => "InvalidOptionTag",
            DecodeError::InvalidEnum { .. } => "InvalidEnum",
            DecodeError::TooLong { .. } => "TooLong",
            DecodeError::TooManyChars { .. } => "TooManyChars",
            DecodeError::TooManyItems { .. } => "TooManyItems",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLarge { frame_bytes, max } => {
                write!(
                    f,
                    "frame of {frame_bytes} bytes is above the {max}-byte limit"
                )
            }
            DecodeError::FrameTooSmall { length } => {
                write!(f, "frame length {length} is below the 6-byte minimum")
            }
            DecodeError::UnknownType { frame_type } => {
                write!(f, "unknown frame type 0x{frame_type:04x}")
            }
            DecodeError::Truncated { field } => write!(f, "body ends inside field `{field}`"),
            DecodeError::InvalidUtf8 { field } => write!(f, "field `{field}` is not valid UTF-8"),
            DecodeError::InvalidBool { field, value } => {
                write!(f, "field `{field}`: bool byte {value} is neither 0 nor 1")
            }
            DecodeError::InvalidOptionTag { field, value } => {
                write!(f, "field `{field}`: option tag {value} is neither 0 nor 1")
            }
            DecodeError::InvalidEnum { field, value } => {
                write!(f, "field `{field}`: value {value} is not defined")
            }
            DecodeError::TooLong { field, len, max } => {
                write!(
                    f,
                    "field `{field}` is {len} bytes, above its {max}-byte limit"
                )
            }
            DecodeError::TooManyChars { field, max } => {
                write!(f, "field `{field}` has more than {max} characters")
            }
            DecodeError::TooManyItems { field, count, max } => {
                write!(
                    f,
                    "field `{field}` has {count} items, above its limit of {max}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A decode error together with what the frame header said, so the server can answer the request
/// that failed (`request_id`) when the stream is still in step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// The request id from the header, when the header was readable.
    pub request_id: Option<u32>,
    /// The frame type from the header, when the header was readable.
    pub frame_type: Option<u16>,
    /// What went wrong.
    pub error: DecodeError,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.frame_type, self.request_id) {
            (Some(t), Some(id)) => write!(f, "frame 0x{t:04x} (request {id}): {}", self.error),
            _ => fmt::Display::fmt(&self.error, f),
        }
    }
}

impl std::error::Error for FrameError {}

/// Why a value could not be encoded. Nothing is written to the buffer when encoding fails.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field is above the limit the decoder enforces; the peer would reject the frame.
    FieldTooLong {
        /// The field's name.
        field: &'static str,
        /// Its size, in the field's unit (bytes, characters or items).
        len: usize,
        /// The field's limit in the same unit.
        max: u32,
    },
    /// The encoded frame would be above the maximum frame size.
    FrameTooLarge {
        /// The encoded size, length field included.
        frame_bytes: usize,
        /// The maximum frame size.
        max: u32,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::FieldTooLong { field, len, max } => {
                write!(
                    f,
                    "field `{field}` has size {len}, above its limit of {max}"
                )
            }
            EncodeError::FrameTooLarge { frame_bytes, max } => {
                write!(
                    f,
                    "encoded frame of {frame_bytes} bytes is above the {max}-byte limit"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}
