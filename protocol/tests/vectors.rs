//! Checks this crate against the golden vectors in `spec/vectors/`, read from disk at run time.
//!
//! Valid vectors must decode to the manifest's frame (and re-encode to the same bytes unless marked
//! otherwise), invalid ones must fail with exactly the manifest's error, incomplete ones must ask for
//! more bytes without consuming any. The manifest must also cover every frame type and every decode
//! error, and list exactly the files that exist, so a vector cannot be added, dropped or edited
//! without this test noticing. `cargo run -p tern-protocol --example gen_vectors` rewrites them.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use bytes::BytesMut;
use serde_json::Value;
use tern_protocol::frames::frame_type;
use tern_protocol::{DecodeError, Frame, FrameDecoder};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("spec")
        .join("vectors")
}

struct Vector {
    name: String,
    kind: String,
    file: String,
    entry: Value,
    bytes: Vec<u8>,
}

fn load() -> Vec<Vector> {
    let dir = vectors_dir();
    let text = fs::read_to_string(dir.join("manifest.json")).expect("spec/vectors/manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    assert_eq!(manifest["protocol_version"], 1);
    let entries = manifest["vectors"].as_array().expect("a vectors array");
    assert!(!entries.is_empty());
    entries
        .iter()
        .map(|entry| {
            let field = |key: &str| {
                entry[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("entry {entry} has no string `{key}`"))
                    .to_owned()
            };
            let file = field("file");
            let bytes = fs::read(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                entry["size"].as_u64(),
                Some(bytes.len() as u64),
                "{file}: size"
            );
            if let Some(hex) = entry.get("hex") {
                assert_eq!(hex.as_str(), Some(to_hex(&bytes).as_str()), "{file}: hex");
            }
            assert!(!field("description").is_empty());
            Vector {
                name: field("name"),
                kind: field("kind"),
                file,
                entry: entry.clone(),
                bytes,
            }
        })
        .collect()
}

fn of_kind<'a>(vectors: &'a [Vector], kind: &'a str) -> impl Iterator<Item = &'a Vector> {
    vectors.iter().filter(move |v| v.kind == kind)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn expected_frame(v: &Vector) -> Frame {
    serde_json::from_value(v.entry["frame"].clone())
        .unwrap_or_else(|e| panic!("{}: manifest frame does not deserialize: {e}", v.name))
}

/// The field name of a variant that has one, and the variant's other values, as the manifest
/// writes them.
fn error_parts(error: &DecodeError) -> (Option<&'static str>, Value) {
    use serde_json::json;
    match error {
        DecodeError::FrameTooLarge { frame_bytes, max } => {
            (None, json!({ "frame_bytes": frame_bytes, "max": max }))
        }
        DecodeError::FrameTooSmall { length } => (None, json!({ "length": length })),
        DecodeError::UnknownType { frame_type } => (None, json!({ "frame_type": frame_type })),
        DecodeError::Truncated { field } | DecodeError::InvalidUtf8 { field } => {
            (Some(*field), json!({}))
        }
        DecodeError::InvalidBool { field, value }
        | DecodeError::InvalidOptionTag { field, value }
        | DecodeError::InvalidEnum { field, value } => (Some(*field), json!({ "value": value })),
        DecodeError::TooLong { field, len, max } => {
            (Some(*field), json!({ "len": len, "max": max }))
        }
        DecodeError::TooManyChars { field, max } => (Some(*field), json!({ "max": max })),
        DecodeError::TooManyItems { field, count, max } => {
            (Some(*field), json!({ "count": count, "max": max }))
        }
        other => panic!("a DecodeError variant this test does not know: {other:?}"),
    }
}

/// One of each variant, so the test can ask every variant for its name.
fn every_decode_error() -> Vec<DecodeError> {
    let field = "f";
    vec![
        DecodeError::FrameTooLarge {
            frame_bytes: 0,
            max: 0,
        },
        DecodeError::FrameTooSmall { length: 0 },
        DecodeError::UnknownType { frame_type: 0 },
        DecodeError::Truncated { field },
        DecodeError::InvalidUtf8 { field },
        DecodeError::InvalidBool { field, value: 2 },
        DecodeError::InvalidOptionTag { field, value: 2 },
        DecodeError::InvalidEnum { field, value: 0 },
        DecodeError::TooLong {
            field,
            len: 0,
            max: 0,
        },
        DecodeError::TooManyChars { field, max: 0 },
        DecodeError::TooManyItems {
            field,
            count: 0,
            max: 0,
        },
    ]
}

// Proves every valid vector decodes to the manifest's frame, and re-encodes to the very same bytes
// unless the manifest says it carries bytes a re-encoding leaves out (a newer version's extension
// bytes, or an appended option written with its absent tag).
#[test]
fn valid_vectors_decode_to_their_frames() {
    let vectors = load();
    let decoder = FrameDecoder::new();
    let mut not_reencoding = 0;
    for v in of_kind(&vectors, "valid") {
        let expected = expected_frame(v);
        let frame = decoder
            .decode_exact(&v.bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(frame, expected, "{}", v.name);
        // The manifest's JSON is exactly what serialising the decoded frame gives.
        assert_eq!(
            serde_json::to_value(&frame).unwrap(),
            v.entry["frame"],
            "{}",
            v.name
        );
        let reencoded = frame.to_bytes().unwrap();
        match v.entry["reencodes"].as_bool() {
            Some(true) => assert_eq!(&reencoded[..], &v.bytes[..], "{}", v.name),
            Some(false) => {
                not_reencoding += 1;
                assert_ne!(&reencoded[..], &v.bytes[..], "{}", v.name);
                // Dropping those bytes only shortens; what is left decodes the same.
                assert!(reencoded.len() < v.bytes.len(), "{}", v.name);
                assert_eq!(decoder.decode_exact(&reencoded).unwrap(), frame);
            }
            None => panic!("{}: valid entry without `reencodes`", v.name),
        }
    }
    assert!(not_reencoding > 0, "no forward-compatibility vector");
}

// Proves every invalid vector fails with exactly the manifest's error: variant, wire code and its
// name, whether the connection closes, the request id, the field and the variant's other values.
#[test]
fn invalid_vectors_fail_as_stated() {
    let vectors = load();
    let decoder = FrameDecoder::new();
    for v in of_kind(&vectors, "invalid") {
        let expected = &v.entry["error"];
        let err = match decoder.decode_exact(&v.bytes) {
            Ok(frame) => panic!("{}: decoded to {frame:?}", v.name),
            Err(e) => e,
        };
        let (field, detail) = error_parts(&err.error);
        let actual = serde_json::json!({
            "name": err.error.name(),
            "code": err.error.code().0,
            "code_name": err.error.code().name(),
            "closes_connection": err.error.closes_connection(),
            "request_id": err.request_id,
            "field": field,
            "detail": detail,
        });
        assert_eq!(&actual, expected, "{}: {}", v.name, err);
    }
}

// Proves every incomplete vector makes the incremental decoder wait (`Ok(None)`) without
// consuming a byte, and that as a whole input it reads as truncated.
#[test]
fn incomplete_vectors_need_more_bytes() {
    let vectors = load();
    let decoder = FrameDecoder::new();
    let mut count = 0;
    for v in of_kind(&vectors, "incomplete") {
        count += 1;
        let mut buf = BytesMut::from(&v.bytes[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None, "{}", v.name);
        assert_eq!(&buf[..], &v.bytes[..], "{}: consumed bytes", v.name);
        let err = decoder.decode_exact(&v.bytes).unwrap_err();
        assert_eq!(err.error, DecodeError::Truncated { field: "frame" });
    }
    assert!(count >= 3);
}

/// Whether a manifest value holds a number a double cannot hold exactly (2^53 or more).
fn holds_big_number(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_u64().is_none_or(|n| n >= 1 << 53),
        Value::Array(items) => items.iter().any(holds_big_number),
        Value::Object(map) => map.values().any(holds_big_number),
        _ => false,
    }
}

// Proves the manifest flags exactly the entries whose numbers need a reader exact beyond 2^53
// (`"big_numbers": true`), that such entries exist, and that serde_json reads them exactly: a
// real server's ids are about 2.5 x 10^17, so every implementation must be tested above 2^53.
#[test]
fn big_numbers_are_flagged_and_exact() {
    let vectors = load();
    let mut flagged = 0;
    for v in &vectors {
        let big = holds_big_number(&v.entry);
        let flag = v.entry.get("big_numbers").and_then(Value::as_bool);
        assert_eq!(flag, big.then_some(true), "{}: big_numbers", v.name);
        flagged += usize::from(big);
    }
    assert!(flagged >= 2, "{flagged} vectors with ids above 2^53");
    let users = vectors
        .iter()
        .find(|v| v.name == "get_users_big_ids")
        .expect("a get_users_big_ids vector");
    match expected_frame(users).body {
        tern_protocol::Body::GetUsers(get) => {
            assert_eq!(get.user_ids[0], (1 << 53) + 1);
            assert_eq!(get.user_ids[2], u64::MAX);
        }
        other => panic!("get_users_big_ids is {other:?}"),
    }
}

// Proves the manifest has a valid vector for every frame type this version defines.
#[test]
fn every_frame_type_has_a_valid_vector() {
    let vectors = load();
    let covered: BTreeSet<u16> = of_kind(&vectors, "valid")
        .map(|v| expected_frame(v).body.frame_type())
        .collect();
    for (code, name) in frame_type::ALL {
        assert!(
            covered.contains(code),
            "no valid vector for {name} (0x{code:04x})"
        );
    }
}

// Proves the manifest has an invalid vector for every DecodeError variant.
#[test]
fn every_decode_error_has_an_invalid_vector() {
    let vectors = load();
    let covered: BTreeSet<&str> = of_kind(&vectors, "invalid")
        .filter_map(|v| v.entry["error"]["name"].as_str())
        .collect();
    for error in every_decode_error() {
        assert!(
            covered.contains(error.name()),
            "no invalid vector for {}",
            error.name()
        );
    }
}

// Proves the manifest and the directories agree: every file is listed, every listed file exists
// under the directory of its kind, and names are unique.
#[test]
fn manifest_lists_exactly_the_files() {
    let vectors = load();
    let dir = vectors_dir();
    let mut on_disk = BTreeSet::new();
    for kind in ["valid", "invalid", "incomplete"] {
        for entry in fs::read_dir(dir.join(kind)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            on_disk.insert(format!("{kind}/{name}"));
        }
    }
    let mut listed = BTreeSet::new();
    let mut names = BTreeSet::new();
    for v in &vectors {
        assert!(
            ["valid", "invalid", "incomplete"].contains(&v.kind.as_str()),
            "{}: kind {}",
            v.name,
            v.kind
        );
        assert_eq!(v.file, format!("{}/{}.bin", v.kind, v.name));
        assert!(listed.insert(v.file.clone()), "{} listed twice", v.file);
        assert!(names.insert(v.name.clone()), "name {} used twice", v.name);
    }
    assert_eq!(listed, on_disk);
}

/// Decodes everything in `buf`, returning the frames and checking each call's contract.
fn drain(decoder: &FrameDecoder, buf: &mut BytesMut, out: &mut Vec<Frame>) {
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return;
            }
            Err(e) => panic!("valid input failed: {e}"),
        }
    }
}

// Proves incremental decoding gives the same frames as whole-input decoding: each valid vector fed
// one byte at a time, and all of them back to back in one buffer, fed whole and one byte at a time.
#[test]
fn valid_vectors_decode_incrementally() {
    let vectors = load();
    let decoder = FrameDecoder::new();
    let valid: Vec<&Vector> = of_kind(&vectors, "valid").collect();
    let expected: Vec<Frame> = valid.iter().map(|v| expected_frame(v)).collect();

    for (v, frame) in valid.iter().zip(&expected) {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for (i, byte) in v.bytes.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            drain(&decoder, &mut buf, &mut got);
            let last = i + 1 == v.bytes.len();
            assert_eq!(got.len(), usize::from(last), "{}: at byte {i}", v.name);
        }
        assert_eq!(got, std::slice::from_ref(frame), "{}", v.name);
        assert!(buf.is_empty());
    }

    let all: Vec<u8> = valid.iter().flat_map(|v| v.bytes.iter().copied()).collect();
    let mut buf = BytesMut::from(&all[..]);
    let mut got = Vec::new();
    drain(&decoder, &mut buf, &mut got);
    assert_eq!(got, expected);
    assert!(buf.is_empty());

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in &all {
        buf.extend_from_slice(&[*byte]);
        drain(&decoder, &mut buf, &mut got);
    }
    assert_eq!(got, expected);
    assert!(buf.is_empty());
}

// Proves a body error leaves the stream in step: after each non-fatal invalid vector, a valid frame
// in the same buffer still decodes; fatal ones consume nothing.
#[test]
fn invalid_vectors_keep_the_stream_in_step() {
    let vectors = load();
    let decoder = FrameDecoder::new();
    let ping = Frame::new(9, tern_protocol::frames::Ping { nonce: 9 });
    for v in of_kind(&vectors, "invalid") {
        let closes = v.entry["error"]["closes_connection"].as_bool().unwrap();
        let mut buf = BytesMut::from(&v.bytes[..]);
        // The trailing-bytes vector is a valid frame followed by a partial one.
        if v.entry["error"]["field"] == "trailing" {
            assert!(decoder.decode(&mut buf).unwrap().is_some());
            assert_eq!(decoder.decode(&mut buf).unwrap(), None);
            continue;
        }
        ping.encode(&mut buf).unwrap();
        let len = buf.len();
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err.error.closes_connection(), closes, "{}", v.name);
        if closes {
            assert_eq!(buf.len(), len, "{}: a fatal error consumed bytes", v.name);
        } else {
            assert_eq!(decoder.decode(&mut buf).unwrap(), Some(ping.clone()));
            assert!(buf.is_empty(), "{}", v.name);
        }
    }
}
