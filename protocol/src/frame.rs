//! The frame envelope: length, type and request id around a body; the encoder and the incremental
//! decoder.
//!
//! ```text
//! +----------------+-------------+-------------------+------------------------+
//! | length: u32 BE | type: u16   | request_id: u32   | body: length - 6 bytes |
//! +----------------+-------------+-------------------+------------------------+
//! ```
//!
//! `length` counts the bytes after itself. [`FrameDecoder::decode`] looks at the length first and
//! rejects one above the limit before a single byte of the body is buffered for it; it returns
//! `Ok(None)` until a whole frame has arrived, and removes exactly one frame from the buffer per
//! success, so the caller can read into the same buffer and call it again.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, EncodeError, FrameError};
use crate::frames::{Body, UpdateEvent};
use crate::limits::*;
use crate::update::{Update, UpdateKind};

/// One frame: a request id and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Frame {
    /// The client's id for a request, echoed by its reply; 0 on events and connection errors.
    pub request_id: u32,
    /// The body.
    pub body: Body,
}

impl Frame {
    /// A frame with this request id and body.
    pub fn new(request_id: u32, body: impl Into<Body>) -> Frame {
        Frame {
            request_id,
            body: body.into(),
        }
    }

    /// An event: request id 0.
    pub fn event(body: impl Into<Body>) -> Frame {
        Frame::new(0, body)
    }

    /// Appends the encoded frame to `dst` and returns its size in bytes.
    ///
    /// On error `dst` is left exactly as it was.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<usize, EncodeError> {
        self.encode_with_max(dst, FRAME_BYTES_MAX)
    }

    /// As [`Frame::encode`], refusing frames above `max_frame_bytes` (a peer's announced limit,
    /// never more than [`FRAME_BYTES_MAX`]).
    pub fn encode_with_max(
        &self,
        dst: &mut BytesMut,
        max_frame_bytes: u32,
    ) -> Result<usize, EncodeError> {
        let max_frame_bytes = max_frame_bytes.min(FRAME_BYTES_MAX);
        let start = dst.len();
        dst.put_u32(0); // Patched below, once the body's size is known.
        dst.put_u16(self.body.frame_type());
        dst.put_u32(self.request_id);
        let written = self.body.encode_fields(&mut Writer::new(dst));
        let frame_bytes = dst.len() - start;
        let result = match written {
            Err(e) => Err(e),
            Ok(()) if frame_bytes > max_frame_bytes as usize => Err(EncodeError::FrameTooLarge {
                frame_bytes,
                max: max_frame_bytes,
            }),
            Ok(()) => Ok(frame_bytes),
        };
        match result {
            Ok(n) => {
                // `n <= max_frame_bytes`, a u32, so the length fits.
                let length = (n - FRAME_LENGTH_BYTES as usize) as u32;
                dst[start..start + 4].copy_from_slice(&length.to_be_bytes());
                Ok(n)
            }
            Err(e) => {
                dst.truncate(start);
                Err(e)
            }
        }
    }

    /// Encodes into a new buffer.
    pub fn to_bytes(&self) -> Result<BytesMut, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf)?;
        Ok(buf)
    }
}

/// An `UpdateEvent` frame encoded once for everyone it goes to. The frames of one message to its
/// members differ only in `user_seq`, the first field of the body, which [`UpdateEventBytes::write`]
/// fills in; the rest (header, kind, the message itself) is copied as encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateEventBytes {
    /// The whole frame, with `user_seq` 0.
    bytes: Bytes,
}

/// Where `user_seq` starts in an `UpdateEvent` frame: right after the header.
const UPDATE_EVENT_USER_SEQ_AT: usize = FRAME_HEADER_BYTES as usize;

impl UpdateEventBytes {
    /// Encodes the event for `kind`.
    pub fn encode(kind: UpdateKind) -> Result<UpdateEventBytes, EncodeError> {
        UpdateEventBytes::encode_in(kind, &mut BytesMut::new())
    }

    /// Encodes the event for `kind` at the end of `arena` and takes it from there, so that many
    /// events share one allocation (see [`BytesMut::split`]). Anything left in `arena` is dropped.
    pub fn encode_in(
        kind: UpdateKind,
        arena: &mut BytesMut,
    ) -> Result<UpdateEventBytes, EncodeError> {
        arena.clear();
        let frame = Frame::event(UpdateEvent {
            update: Update { user_seq: 0, kind },
        });
        frame.encode(arena)?;
        Ok(UpdateEventBytes {
            bytes: arena.split().freeze(),
        })
    }

    /// Appends the frame for `user_seq` to `dst` and returns its size, as [`Frame::encode`] would
    /// for the same update.
    pub fn write(&self, user_seq: u64, dst: &mut BytesMut) -> usize {
        let start = dst.len();
        dst.extend_from_slice(&self.bytes);
        let at = start + UPDATE_EVENT_USER_SEQ_AT;
        dst[at..at + 8].copy_from_slice(&user_seq.to_be_bytes());
        self.bytes.len()
    }

    /// The frame for `user_seq`, decoded.
    pub fn to_frame(&self, user_seq: u64) -> Result<Frame, FrameError> {
        let mut buf = BytesMut::with_capacity(self.bytes.len());
        self.write(user_seq, &mut buf);
        FrameDecoder::new().decode_exact(&buf)
    }
}

/// The incremental frame decoder. It holds only its limit; the bytes live in the caller's buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            max_frame_bytes: FRAME_BYTES_MAX,
        }
    }
}

impl FrameDecoder {
    /// A decoder with the protocol's maximum frame size.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with a smaller maximum frame size (clamped to the protocol maximum, and to at
    /// least the header size).
    pub fn with_max_frame_bytes(max_frame_bytes: u32) -> Self {
        FrameDecoder {
            max_frame_bytes: max_frame_bytes.clamp(FRAME_HEADER_BYTES, FRAME_BYTES_MAX),
        }
    }

    /// The maximum frame size this decoder accepts, length field included.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// The size of the frame at the front of `buf`, once its length field has arrived.
    ///
    /// `Ok(None)`: fewer than 4 bytes are buffered. `Ok(Some(n))`: the whole frame is `n` bytes,
    /// at most the limit, so a reader may reserve `n` bytes. `Err`: the length is out of range and
    /// the connection must close.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = buf.get(..FRAME_LENGTH_BYTES as usize) else {
            return Ok(None);
        };
        let mut length_bytes = [0u8; 4];
        length_bytes.copy_from_slice(prefix);
        let length = u32::from_be_bytes(length_bytes);
        let fatal = |error| FrameError {
            request_id: None,
            frame_type: None,
            error,
        };
        if length < FRAME_HEADER_AFTER_LENGTH_BYTES {
            return Err(fatal(DecodeError::FrameTooSmall { length }));
        }
        let frame_bytes = u64::from(length) + u64::from(FRAME_LENGTH_BYTES);
        if frame_bytes > u64::from(self.max_frame_bytes) {
            return Err(fatal(DecodeError::FrameTooLarge {
                frame_bytes,
                max: self.max_frame_bytes,
            }));
        }
        // At most `FRAME_BYTES_MAX`, so the cast is lossless on every platform Rust supports.
        Ok(Some(frame_bytes as usize))
    }

    /// Takes the first complete frame off `buf`.
    ///
    /// `Ok(None)` means more bytes are needed and nothing was consumed. A body error consumes the
    /// frame (the stream stays in step) and reports its request id; a length error consumes nothing
    /// and is fatal ([`DecodeError::closes_connection`]).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(frame_bytes) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < frame_bytes {
            return Ok(None);
        }
        let mut frame = buf.split_to(frame_bytes);
        frame.advance(FRAME_LENGTH_BYTES as usize);
        let frame_type = frame.get_u16();
        let request_id = frame.get_u32();
        let mut reader = Reader::new(&frame);
        match Body::decode_fields(frame_type, &mut reader) {
            Ok(body) => Ok(Some(Frame { request_id, body })),
            Err(error) => Err(FrameError {
                request_id: Some(request_id),
                frame_type: Some(frame_type),
                error,
            }),
        }
    }

    /// Decodes one complete frame from a slice that holds exactly that frame.
    ///
    /// Bytes missing at the end read as [`DecodeError::Truncated`] naming the field `"frame"`,
    /// and bytes beyond the frame as the same error naming `"trailing"`.
    pub fn decode_exact(&self, bytes: &[u8]) -> Result<Frame, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let truncated = |field| FrameError {
            request_id: None,
            frame_type: None,
            error: DecodeError::Truncated { field },
        };
        let frame = self.decode(&mut buf)?.ok_or_else(|| truncated("frame"))?;
        if buf.is_empty() {
            Ok(frame)
        } else {
            Err(truncated("trailing"))
        }
    }
}
