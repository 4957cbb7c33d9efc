//! Fuzz target `decode`: treats the input as a byte stream from a peer and decodes it twice, once
//! from a buffer holding all of it and once fed in chunks of varying size, as a socket delivers
//! it. Both runs must give the same frames and errors; every frame decoded must re-encode and decode
//! to itself; after a fatal error the stream stops, after a body error it goes on.
//!
//! The input is the stream itself, unchanged, so the seed corpus (the golden vectors) is read as
//! the vectors are. Chunk sizes come from a small generator seeded with the first byte and the
//! length, so they vary with the input without taking bytes away from it.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_protocol::{Frame, FrameDecoder, FrameError};

/// What one call to `decode` gave that consumed something or ended the stream.
#[derive(Debug, PartialEq)]
enum Event {
    Frame(Frame),
    Error(FrameError),
}

/// Calls `decode` until it wants more bytes or fails fatally; returns whether the stream ended.
fn drain(decoder: &FrameDecoder, buf: &mut BytesMut, events: &mut Vec<Event>) -> bool {
    loop {
        let before = buf.len();
        let frame_len = decoder.frame_len(buf);
        match decoder.decode(buf) {
            Ok(Some(frame)) => {
                let len = frame_len.ok().flatten().expect("a frame implies a length");
                assert_eq!(
                    buf.len(),
                    before - len,
                    "a frame consumes exactly its bytes"
                );
                check_reencode(&frame, len);
                events.push(Event::Frame(frame));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "waiting consumes nothing");
                return false;
            }
            Err(e) if e.error.closes_connection() => {
                assert_eq!(buf.len(), before, "a fatal error consumes nothing");
                assert_eq!(e.request_id, None);
                events.push(Event::Error(e));
                return true;
            }
            Err(e) => {
                let len = frame_len
                    .ok()
                    .flatten()
                    .expect("a body error implies a length");
                assert_eq!(buf.len(), before - len, "a body error consumes its frame");
                assert!(e.request_id.is_some());
                events.push(Event::Error(e));
            }
        }
    }
}

/// A decoded frame encodes (it is within every limit), no longer than it arrived (extension bytes
/// are dropped), and decodes to itself.
fn check_reencode(frame: &Frame, original_len: usize) {
    let bytes = frame.to_bytes().expect("a decoded frame encodes");
    assert!(bytes.len() <= original_len);
    let again = FrameDecoder::new()
        .decode_exact(&bytes)
        .expect("a re-encoded frame decodes");
    assert_eq!(&again, frame);
}

fuzz_target!(|data: &[u8]| {
    let decoder = FrameDecoder::new();

    let mut whole = BytesMut::from(data);
    let mut expected = Vec::new();
    drain(&decoder, &mut whole, &mut expected);

    let mut state =
        (u32::from(data.first().copied().unwrap_or(0)) ^ (data.len() as u32).rotate_left(8)) | 1;
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut rest = data;
    let mut ended = false;
    while !rest.is_empty() && !ended {
        // xorshift32; chunks of 1 to 64 bytes, or now and then up to 64 KiB.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = if state.is_multiple_of(8) {
            (state >> 8) as usize % 65_536 + 1
        } else {
            (state >> 8) as usize % 64 + 1
        };
        let n = n.min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        ended = drain(&decoder, &mut buf, &mut events);
    }
    assert_eq!(
        events, expected,
        "chunked decoding differs from whole-buffer decoding"
    );
    if !ended {
        assert_eq!(buf, whole, "both runs leave the same partial frame");
    }
});
