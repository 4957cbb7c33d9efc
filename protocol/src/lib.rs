//! The Tern chat wire protocol, version 1: every frame type, the encoder and the incremental
//! decoder. `spec/protocol.md` is the same protocol in prose, byte by byte; this crate is its
//! reference implementation and `spec/vectors/` holds golden frames both must agree on.
//!
//! The crate is sans-IO: it has no sockets, no clock and no randomness. Time, ids and tokens come in
//! as values; bytes come in through a caller's [`bytes::BytesMut`] and go out into another.
//!
//! # Layout
//!
//! - [`limits`]: every limit as a named constant, with compile-time checks of how they relate.
//! - [`codec`]: the primitive encodings and the [`codec::Wire`] trait every type implements.
//! - [`types`]: structures used inside frames (messages, members, conversations, presence).
//! - [`update`]: entries of a user's update log, as `Sync` pages and `UpdateEvent`s carry them.
//! - [`frames`]: one struct per frame type and [`Body`], the enum of them.
//! - [`e2e`]: end-to-end encryption: key directory structures, to-device messages, and the
//!   payload formats clients exchange (Megolm and Olm envelopes, room keys, encrypted files).
//! - [`frame`]: the envelope ([`Frame`]), [`Frame::encode`] and [`FrameDecoder`].
//! - [`error`]: decode and encode errors, and the wire [`ErrorCode`]s they map to.
//!
//! # Data flow
//!
//! ```
//! use bytes::BytesMut;
//! use tern_protocol::{Frame, FrameDecoder, frames::Ping};
//!
//! let mut wire = BytesMut::new();
//! Frame::new(7, Ping { nonce: 42 }).encode(&mut wire).unwrap();
//!
//! // Bytes may arrive in any pieces; the decoder waits for a whole frame.
//! let mut inbox = BytesMut::new();
//! let decoder = FrameDecoder::new();
//! inbox.extend_from_slice(&wire[..5]);
//! assert_eq!(decoder.decode(&mut inbox).unwrap(), None);
//! inbox.extend_from_slice(&wire[5..]);
//! let frame = decoder.decode(&mut inbox).unwrap().unwrap();
//! assert_eq!(frame, Frame::new(7, Ping { nonce: 42 }));
//! ```

#![forbid(unsafe_code)]

pub mod codec;
pub mod e2e;
pub mod error;
pub mod frame;
pub mod frames;
pub mod limits;
pub mod types;
pub mod update;

pub use error::{DecodeError, EncodeError, ErrorCode, FrameError};
pub use frame::{Frame, FrameDecoder, UpdateEventBytes};
pub use frames::Body;
pub use update::{Update, UpdateKind};
