//! Property tests of the encoder and the incremental decoder.
//!
//! Frames come from `arbitrary` (the same derives the fuzzer uses), driven by proptest's random
//! bytes, so every frame type and field is reached without a hand-written strategy per type. Three
//! properties: a frame that encodes decodes back to itself, and one that does not leaves the buffer
//! untouched with an error naming a real limit; any bytes in any chunking decode without panicking,
//! to frames that survive a re-encode; and a length above the limit fails from the header alone.

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tern_protocol::frames::UpdateEvent;
use tern_protocol::limits::*;
use tern_protocol::{
    DecodeError, EncodeError, Frame, FrameDecoder, Update, UpdateEventBytes, UpdateKind,
};

/// Every limit an `EncodeError::FieldTooLong` may name.
const FIELD_LIMITS: &[u32] = &[
    USERNAME_BYTES_MAX,
    PASSWORD_BYTES_MAX,
    DEVICE_NAME_BYTES_MAX,
    SOFTWARE_NAME_BYTES_MAX,
    BODY_CHARS_MAX,
    ATTACHMENTS_PER_MESSAGE_MAX,
    GROUP_NAME_BYTES_MAX,
    GROUP_MEMBERS_MAX,
    DEVICES_PER_USER_MAX,
    SYNC_PAGE_UPDATES_MAX,
    HISTORY_PAGE_MESSAGES_MAX,
    CONVERSATIONS_PAGE_MAX,
    PRESENCE_USERS_MAX,
    MIME_BYTES_MAX,
    MEDIA_CHUNK_BYTES_MAX,
    PUSH_APP_ID_BYTES_MAX,
    PUSH_TOKEN_BYTES_MAX,
    ERROR_MESSAGE_BYTES_MAX,
    FRAME_BYTES_MAX,
];

/// A frame built from raw bytes, or `None` when `arbitrary` cannot build one from them.
fn frame_from(raw: &[u8]) -> Option<Frame> {
    Frame::arbitrary(&mut Unstructured::new(raw)).ok()
}

/// Reshapes raw bytes so `arbitrary` also reaches the limits. From uniform bytes it builds short
/// strings (a random byte ends valid UTF-8 half the time) and short lists (each item continues
/// with probability 1/2), so no limit is ever hit. `mode` 1 makes every byte ASCII, so strings run
/// as long as `arbitrary` asks for; mode 2 also makes every byte odd, so lists continue until the
/// input runs out. Mode 0 leaves the bytes as they are.
fn shape(mut raw: Vec<u8>, mode: u8) -> Vec<u8> {
    for b in &mut raw {
        match mode {
            1 => *b &= 0x7f,
            2 => *b = (*b & 0x7f) | 1,
            _ => {}
        }
    }
    raw
}

/// Several frames from one run of raw bytes.
fn frames_from(raw: &[u8]) -> Vec<Frame> {
    let mut u = Unstructured::new(raw);
    let mut frames = Vec::new();
    while !u.is_empty() && frames.len() < 8 {
        match Frame::arbitrary(&mut u) {
            Ok(frame) => frames.push(frame),
            Err(_) => break,
        }
    }
    frames
}

/// Whether an encode error names a real field and one of the protocol's limits, and is really above it.
fn names_a_real_limit(err: &EncodeError) -> bool {
    match err {
        EncodeError::FieldTooLong { field, len, max } => {
            !field.is_empty() && FIELD_LIMITS.contains(max) && *len > *max as usize
        }
        EncodeError::FrameTooLarge { frame_bytes, max } => {
            *max == FRAME_BYTES_MAX && *frame_bytes > FRAME_BYTES_MAX as usize
        }
        _ => false,
    }
}

/// Encodes a decoded frame and decodes it again; it must come back equal. (Bytes are not compared:
/// a frame read with extension bytes re-encodes without them.)
fn reencodes_to_itself(frame: &Frame, original_len: usize) -> Result<(), TestCaseError> {
    let bytes = frame
        .to_bytes()
        .map_err(|e| TestCaseError::fail(format!("a decoded frame does not encode: {e}")))?;
    prop_assert!(bytes.len() <= original_len);
    let again = FrameDecoder::new()
        .decode_exact(&bytes)
        .map_err(|e| TestCaseError::fail(format!("a re-encoded frame does not decode: {e}")))?;
    prop_assert_eq!(&again, frame);
    Ok(())
}

/// Input for the chunked decoder: encoded frames, possibly corrupted, between runs of random bytes.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        // A run of arbitrary bytes.
        3 => proptest::collection::vec(any::<u8>(), 0..64),
        // Frames encoded from arbitrary values (most are valid).
        4 => proptest::collection::vec(any::<u8>(), 0..2048).prop_map(|raw| {
            let mut buf = BytesMut::new();
            for frame in frames_from(&raw) {
                let _ = frame.encode(&mut buf);
            }
            buf.to_vec()
        }),
        // An encoded frame with one byte overwritten: mostly body errors that keep the stream in step.
        3 => (proptest::collection::vec(any::<u8>(), 0..1024), any::<usize>(), any::<u8>())
            .prop_map(|(raw, at, byte)| {
                let mut buf = BytesMut::new();
                if let Some(frame) = frame_from(&raw) {
                    let _ = frame.encode(&mut buf);
                }
                if !buf.is_empty() {
                    let at = at % buf.len();
                    buf[at] = byte;
                }
                buf.to_vec()
            }),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    // Failures are kept beside this file (`roundtrip.proptest-regressions`) and replayed first.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::with_cases(2_000)
    })]

    // Proves encode and decode are inverse: a frame that encodes decodes to itself and consumes
    // exactly its bytes; a frame that does not encode fails with an error naming a real limit and
    // leaves the buffer exactly as it was.
    #[test]
    fn encode_then_decode_is_identity(
        raw in proptest::collection::vec(any::<u8>(), 0..8192),
        mode in 0u8..3,
        prefix in proptest::collection::vec(any::<u8>(), 0..16),
        suffix in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let Some(frame) = frame_from(&shape(raw, mode)) else { return Ok(()) };
        let mut buf = BytesMut::from(&prefix[..]);
        match frame.encode(&mut buf) {
            Ok(n) => {
                prop_assert_eq!(buf.len(), prefix.len() + n);
                prop_assert!(n <= FRAME_BYTES_MAX as usize);
                let mut wire = buf.split_off(prefix.len());
                prop_assert_eq!(&buf[..], &prefix[..]);
                // Bytes after the frame are left for the next call.
                wire.extend_from_slice(&suffix);
                let decoded = FrameDecoder::new().decode(&mut wire);
                prop_assert_eq!(decoded, Ok(Some(frame.clone())));
                prop_assert_eq!(&wire[..], &suffix[..]);
            }
            Err(err) => {
                prop_assert!(names_a_real_limit(&err), "{:?}", err);
                prop_assert_eq!(&buf[..], &prefix[..]);
            }
        }
    }

    // Proves the decoder is total and chunking-independent: any bytes, fed in any pieces, never
    // panic; every frame decoded re-encodes and decodes to the same value; each call consumes a
    // whole frame or nothing; and a fatal error is reported with nothing consumed.
    #[test]
    fn chunked_decode_never_panics(
        input in stream(),
        chunks in proptest::collection::vec(1usize..512, 1..64),
    ) {
        let decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut rest = &input[..];
        let mut sizes = chunks.iter().cycle();
        'feed: while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                let before = buf.len();
                let frame_len = decoder.frame_len(&buf);
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let len = frame_len.unwrap().unwrap();
                        prop_assert_eq!(buf.len(), before - len);
                        reencodes_to_itself(&frame, len)?;
                    }
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), before);
                        break;
                    }
                    Err(e) if e.error.closes_connection() => {
                        prop_assert_eq!(buf.len(), before);
                        prop_assert_eq!(e.request_id, None);
                        break 'feed;
                    }
                    Err(e) => {
                        let len = frame_len.unwrap().unwrap();
                        prop_assert_eq!(buf.len(), before - len);
                        prop_assert!(e.request_id.is_some());
                    }
                }
            }
        }
    }

    // An update event encoded once and written for a user_seq is byte for byte the frame encoded
    // for that user_seq, and decodes to it.
    #[test]
    fn an_update_event_encoded_once_is_the_frame_for_each_user_seq(
        raw in proptest::collection::vec(any::<u8>(), 0..1024),
        user_seqs in proptest::collection::vec(any::<u64>(), 1..4),
    ) {
        let Ok(kind) = UpdateKind::arbitrary(&mut Unstructured::new(&raw)) else { return Ok(()) };
        let once = UpdateEventBytes::encode(kind.clone());
        for user_seq in user_seqs {
            let frame = Frame::event(UpdateEvent { update: Update { user_seq, kind: kind.clone() } });
            let mut direct = BytesMut::new();
            match (&once, frame.encode(&mut direct)) {
                (Ok(once), Ok(n)) => {
                    let mut written = BytesMut::from(&b"before"[..]);
                    prop_assert_eq!(once.write(user_seq, &mut written), n);
                    prop_assert_eq!(&written[..6], b"before");
                    prop_assert_eq!(&written[6..], &direct[..]);
                    let decoded = once.to_frame(user_seq)
                        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                    prop_assert_eq!(decoded, FrameDecoder::new().decode_exact(&direct)
                        .map_err(|e| TestCaseError::fail(format!("{e}")))?);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, &b),
                (once, direct) => {
                    return Err(TestCaseError::fail(format!("{once:?} against {direct:?}")));
                }
            }
        }
    }

    // Proves a length field above the limit is refused as soon as it is read: with only the length
    // (or any bytes after it) in the buffer, decode fails with FrameTooLarge instead of waiting, is
    // fatal, and consumes nothing. The same holds for a decoder with a smaller announced limit.
    #[test]
    fn oversized_length_fails_before_more_bytes(
        excess in 1u64..=u64::from(u32::MAX - (FRAME_BYTES_MAX - FRAME_LENGTH_BYTES)),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
        smaller in FRAME_HEADER_BYTES..=FRAME_BYTES_MAX,
    ) {
        for decoder in [FrameDecoder::new(), FrameDecoder::with_max_frame_bytes(smaller)] {
            let max = decoder.max_frame_bytes();
            let length = u64::from(max - FRAME_LENGTH_BYTES) + excess;
            let Ok(length) = u32::try_from(length) else { continue };
            let mut buf = BytesMut::from(&length.to_be_bytes()[..]);
            buf.extend_from_slice(&tail);
            let before = buf.clone();
            let err = decoder.decode(&mut buf).unwrap_err();
            prop_assert_eq!(
                &err.error,
                &DecodeError::FrameTooLarge { frame_bytes: u64::from(length) + 4, max }
            );
            prop_assert!(err.error.closes_connection());
            prop_assert_eq!(err.request_id, None);
            prop_assert_eq!(buf, before);
        }
    }
}

// Proves the first property is not vacuous: with the same input shapes, many arbitrary frames
// encode (so decode-equals-encode is really exercised) and many are refused at a limit.
#[test]
fn arbitrary_frames_reach_both_branches() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next_byte = move || {
        // xorshift64: a fixed sequence, so the counts are the same every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    let (mut ok, mut refused) = (0, 0);
    for i in 0..3_000 {
        let len = 64 + usize::from(next_byte()) * 16;
        let raw: Vec<u8> = (0..len).map(|_| next_byte()).collect();
        match frame_from(&shape(raw, (i % 3) as u8)).map(|f| f.to_bytes()) {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => {
                assert!(names_a_real_limit(&e), "{e:?}");
                refused += 1;
            }
            None => {}
        }
    }
    println!("{ok} encoded, {refused} refused");
    assert!(ok >= 1_000, "only {ok} of 3000 arbitrary frames encoded");
    assert!(
        refused >= 300,
        "only {refused} of 3000 arbitrary frames hit a limit"
    );
}
