//! Fuzz target `roundtrip`: builds a `Frame` from the input with `arbitrary`, encodes it, and
//! checks that the bytes decode back to the same frame (or that a refused frame left the buffer
//! untouched). It reaches the encoder and every body type's decoder with well-formed input, which
//! the `decode` target, starting from raw bytes, reaches less often.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_protocol::{Frame, FrameDecoder};

fuzz_target!(|frame: Frame| {
    // A prefix already in the buffer: encoding appends after it, and a refusal leaves it alone.
    let prefix = [0xa5u8; 3];
    let mut buf = BytesMut::from(&prefix[..]);
    match frame.encode(&mut buf) {
        Ok(n) => {
            assert_eq!(buf.len(), prefix.len() + n);
            let wire = buf.split_off(prefix.len());
            let decoded = FrameDecoder::new().decode_exact(&wire);
            assert_eq!(decoded.as_ref(), Ok(&frame), "encoded {wire:02x?}");
        }
        Err(_) => assert_eq!(&buf[..], &prefix[..]),
    }
});
