//! Writes the golden vectors in `spec/vectors/`: one `.bin` file per input and `manifest.json`
//! saying what each one must decode to (a frame, an error, or "need more bytes"). The vectors let
//! another implementation of protocol v1 check itself against this one byte for byte, and
//! `protocol/tests/vectors.rs` checks this crate against the committed files.
//!
//! Run it from anywhere in the workspace; the dev-dependencies turn on the `serde` and `arbitrary`
//! features it needs:
//!
//! ```sh
//! cargo run -p tern-protocol --example gen_vectors
//! ```
//!
//! The output is deterministic: fixed values, no randomness, the same bytes on every run. Valid
//! frames are built as values and encoded by this crate; invalid and incomplete inputs are built
//! byte by byte, and every expected error is written out by hand here and checked against the
//! decoder before anything is written, so a decoder change that alters an outcome stops the
//! generator instead of silently rewriting the expectation. Each valid and invalid vector is also
//! copied into the fuzzer's seed corpus, `protocol/fuzz/corpus/decode/`, under the vector's name.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde_json::{json, Value};
use tern_protocol::frames::{self, frame_type};
use tern_protocol::limits::*;
use tern_protocol::types::*;
use tern_protocol::update::*;
use tern_protocol::{Body, DecodeError, ErrorCode, Frame, FrameDecoder, Update, UpdateKind};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- fixed values

const ALICE: UserId = 1001;
const BOB: UserId = 1002;
const CAROL: UserId = 1003;
const DAVE: UserId = 1004;
const ERIN: UserId = 1005;
const DIRECT_AB: ConversationId = 5001;
const GROUP: ConversationId = 5002;
const MEDIA: MediaId = 9001;
const T0: TimestampMs = 1_795_000_000_000;
/// Message ids stay below 2^53 so that JSON readers that use doubles read them exactly, except in
/// the vectors of [`BIG_NUMBER_VECTORS`].
const MSG0: MessageId = 1_795_000_000_000_000;

/// Ids laid out as `ternd` makes them: milliseconds since 2025-01-01 in the top 42 bits, then a
/// core (10 bits) and a counter (12 bits). 59,270,400,000 ms is 2026-11-18.
const BIG_ID_MS: u64 = 59_270_400_000;
const BIG_USER: UserId = (BIG_ID_MS << 22) | (1 << 12) | 7;
const BIG_CONVERSATION: ConversationId = ((BIG_ID_MS + 5) << 22) | 3;
const BIG_MESSAGE: MessageId = ((BIG_ID_MS + 9) << 22) | (1 << 12);
const BIG_USER_SEQ: u64 = 12;

/// The only vectors whose JSON holds numbers of 2^53 or more; their manifest entries say so with
/// `"big_numbers": true`.
const BIG_NUMBER_VECTORS: &[&str] = &["update_event_message_big_ids", "get_users_big_ids"];

fn client_msg_id() -> ClientMsgId {
    core::array::from_fn(|i| i as u8)
}

fn token() -> Token {
    core::array::from_fn(|i| 0xa0 + i as u8)
}

fn sha256() -> [u8; 32] {
    // A fixed stand-in for the digest of the whole (absent) file; the wire only carries 32 bytes.
    [
        0x3b, 0x8c, 0x1f, 0x6e, 0x52, 0x07, 0xd4, 0x9a, 0x21, 0xe5, 0x70, 0xbb, 0x04, 0x9d, 0x36,
        0xc8, 0x5f, 0xa2, 0x1d, 0x83, 0xe9, 0x47, 0x0b, 0x6c, 0xf1, 0x28, 0x95, 0xda, 0x3e, 0x60,
        0xb7, 0x14,
    ]
}

/// The first 64 bytes of a JPEG file (SOI, APP0/JFIF header, start of a quantisation table).
fn jpeg_head() -> Vec<u8> {
    let mut v = vec![
        0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00, 0x00,
        0x48, 0x00, 0x48, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00,
    ];
    v.extend((0..39u8).map(|i| 3 + i / 2));
    v
}

fn member(user_id: UserId, role: Role) -> Member {
    Member { user_id, role }
}

fn text_message(seq: u64, sender: UserId, body: &str) -> Message {
    Message {
        conversation_id: DIRECT_AB,
        seq,
        message_id: MSG0 + seq,
        sender,
        sender_device: 1,
        ts: T0 + seq * 1_000,
        client_msg_id: client_msg_id(),
        body: body.to_owned(),
        attachments: Vec::new(),
    }
}

/// A message with two attachments and text in several scripts, with emoji of one and of two
/// scalar values (a flag is two regional indicators).
fn rich_message() -> Message {
    Message {
        conversation_id: GROUP,
        seq: 42,
        message_id: MSG0 + 42_000,
        sender: CAROL,
        sender_device: 2,
        ts: T0 + 42_000,
        client_msg_id: client_msg_id(),
        body: "Saw this 🐦 at the lake — 湖の鳥, très joli 🇫🇮".to_owned(),
        attachments: vec![
            Attachment {
                media_id: MEDIA,
                size: 482_133,
                mime: "image/jpeg".to_owned(),
            },
            Attachment {
                media_id: MEDIA + 1,
                size: 1_048_576,
                mime: "video/mp4".to_owned(),
            },
        ],
    }
}

fn group_members() -> Vec<Member> {
    vec![
        member(ALICE, Role::Owner),
        member(BOB, Role::Admin),
        member(CAROL, Role::Member),
    ]
}

fn presence_online() -> Presence {
    Presence {
        user_id: BOB,
        online: true,
        last_seen: None,
    }
}

fn presence_offline() -> Presence {
    Presence {
        user_id: CAROL,
        online: false,
        last_seen: Some(T0 - 3_600_000),
    }
}

fn receipt() -> Receipt {
    Receipt {
        conversation_id: DIRECT_AB,
        user_id: BOB,
        kind: ReceiptKind::Read,
        up_to_seq: 338,
        ts: T0 + 5_000,
    }
}

fn update(user_seq: u64, kind: UpdateKind) -> Update {
    Update { user_seq, kind }
}

/// One update of each kind this version knows, plus one it does not, in `user_seq` order.
fn every_update() -> Vec<Update> {
    vec![
        update(
            1201,
            UpdateKind::Message(text_message(339, BOB, "On my way 🚲")),
        ),
        update(1202, UpdateKind::Receipt(receipt())),
        update(
            1203,
            UpdateKind::GroupCreated(GroupCreated {
                conversation_id: GROUP,
                actor: ALICE,
                ts: T0 + 10_000,
                name: "Climbing crew 🧗".to_owned(),
                members: group_members(),
                encrypted: false,
            }),
        ),
        update(
            1204,
            UpdateKind::MembersAdded(MembersAdded {
                conversation_id: GROUP,
                actor: BOB,
                ts: T0 + 11_000,
                members: vec![DAVE, ERIN],
            }),
        ),
        update(
            1205,
            UpdateKind::MemberRemoved(MemberRemoved {
                conversation_id: GROUP,
                actor: ERIN,
                ts: T0 + 12_000,
                user_id: ERIN,
            }),
        ),
        update(
            1206,
            UpdateKind::GroupRenamed(GroupRenamed {
                conversation_id: GROUP,
                actor: CAROL,
                ts: T0 + 13_000,
                name: "Climbing crew (Saturdays)".to_owned(),
            }),
        ),
        update(
            1207,
            UpdateKind::RoleChanged(RoleChanged {
                conversation_id: GROUP,
                actor: ALICE,
                ts: T0 + 14_000,
                user_id: CAROL,
                role: Role::Admin,
            }),
        ),
        update(1208, unknown_update()),
    ]
}

/// An update of kind 256, which version 1 does not define: a reader keeps it as bytes.
fn unknown_update() -> UpdateKind {
    UpdateKind::Unknown(UnknownUpdate {
        kind: 0x0100,
        body: vec![
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x13, 0x8a, 0x01, 0x02, 0x03,
        ],
    })
}

// ---------------------------------------------------------------- byte building

/// Builds bodies byte by byte, for inputs the encoder refuses to produce.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A length-prefixed byte string (strings, texts and byte fields all look like this).
    fn str(self, v: impl AsRef<[u8]>) -> Self {
        let v = v.as_ref();
        self.u32(v.len() as u32).raw(v)
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

/// A whole frame around `body`: length, type, request id.
fn frame_bytes(frame_type: u16, request_id: u32, body: &[u8]) -> Vec<u8> {
    B::default()
        .u32(FRAME_HEADER_AFTER_LENGTH_BYTES + body.len() as u32)
        .u16(frame_type)
        .u32(request_id)
        .raw(body)
        .done()
}

fn encode(frame: &Frame) -> Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf)?;
    Ok(buf.to_vec())
}

// ---------------------------------------------------------------- the manifest

enum Expect {
    Valid {
        frame: Box<Frame>,
        reencodes: bool,
    },
    Invalid {
        request_id: Option<u32>,
        error: DecodeError,
    },
    Incomplete,
}

struct Vector {
    name: String,
    description: String,
    bytes: Vec<u8>,
    expect: Expect,
}

#[derive(Default)]
struct Vectors(Vec<Vector>);

impl Vectors {
    /// A valid frame, encoded by this crate.
    fn valid(&mut self, name: &str, description: &str, frame: Frame) -> Result<()> {
        let bytes = encode(&frame)?;
        self.push(
            name,
            description,
            bytes,
            Expect::Valid {
                frame: Box::new(frame),
                reencodes: true,
            },
        )
    }

    /// A valid frame given as bytes; `reencodes` says whether encoding `frame` gives them back.
    fn valid_bytes(
        &mut self,
        name: &str,
        description: &str,
        bytes: Vec<u8>,
        frame: Frame,
    ) -> Result<()> {
        let reencodes = encode(&frame)? == bytes;
        self.push(
            name,
            description,
            bytes,
            Expect::Valid {
                frame: Box::new(frame),
                reencodes,
            },
        )
    }

    fn invalid(
        &mut self,
        name: &str,
        description: &str,
        bytes: Vec<u8>,
        request_id: Option<u32>,
        error: DecodeError,
    ) -> Result<()> {
        self.push(
            name,
            description,
            bytes,
            Expect::Invalid { request_id, error },
        )
    }

    fn incomplete(&mut self, name: &str, description: &str, bytes: Vec<u8>) -> Result<()> {
        self.push(name, description, bytes, Expect::Incomplete)
    }

    /// Records a vector after checking that this crate's decoder agrees with the expectation.
    fn push(
        &mut self,
        name: &str,
        description: &str,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<()> {
        let decoder = FrameDecoder::new();
        match &expect {
            Expect::Valid { frame, .. } => {
                let got = decoder.decode_exact(&bytes)?;
                if got != **frame {
                    return Err(format!("{name}: decodes to {got:?}, not {frame:?}").into());
                }
            }
            Expect::Invalid { request_id, error } => match decoder.decode_exact(&bytes) {
                Err(e) if e.request_id == *request_id && e.error == *error => {}
                other => {
                    return Err(format!(
                        "{name}: expected {error:?} (request id {request_id:?}), got {other:?}"
                    )
                    .into())
                }
            },
            Expect::Incomplete => {
                let mut buf = BytesMut::from(&bytes[..]);
                let got = decoder.decode(&mut buf)?;
                if got.is_some() || buf.len() != bytes.len() {
                    return Err(format!("{name}: not incomplete: {got:?}").into());
                }
            }
        }
        self.0.push(Vector {
            name: name.to_owned(),
            description: description.to_owned(),
            bytes,
            expect,
        });
        Ok(())
    }
}

fn kind_dir(expect: &Expect) -> &'static str {
    match expect {
        Expect::Valid { .. } => "valid",
        Expect::Invalid { .. } => "invalid",
        Expect::Incomplete => "incomplete",
    }
}

/// The error's field name, if its variant has one, and its other values.
fn error_parts(error: &DecodeError) -> (Option<&'static str>, Value) {
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
        other => (None, json!({ "unlisted": other.to_string() })),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Entries whose files are at most this many bytes carry them as hex too.
const HEX_BYTES_MAX: usize = 255;

/// An expected error as the manifest writes it; fields in this order.
#[derive(serde::Serialize)]
struct ErrorJson {
    name: &'static str,
    code: u16,
    code_name: &'static str,
    closes_connection: bool,
    request_id: Option<u32>,
    field: Option<&'static str>,
    detail: Value,
}

/// One manifest entry as (key, JSON text) pairs. Values are rendered straight from the typed
/// structures, so a frame's fields appear in wire order.
fn manifest_entry(v: &Vector) -> Result<Vec<(&'static str, String)>> {
    let dir = kind_dir(&v.expect);
    let mut entry = vec![
        ("name", json!(v.name).to_string()),
        ("file", json!(format!("{dir}/{}.bin", v.name)).to_string()),
        ("kind", json!(dir).to_string()),
        ("description", json!(v.description).to_string()),
    ];
    match &v.expect {
        Expect::Valid { frame, reencodes } => {
            entry.push(("frame", serde_json::to_string(frame)?));
            entry.push(("reencodes", json!(reencodes).to_string()));
        }
        Expect::Invalid { request_id, error } => {
            let (field, detail) = error_parts(error);
            let error = ErrorJson {
                name: error.name(),
                code: error.code().0,
                code_name: error.code().name(),
                closes_connection: error.closes_connection(),
                request_id: *request_id,
                field,
                detail,
            };
            entry.push(("error", serde_json::to_string(&error)?));
        }
        Expect::Incomplete => {}
    }
    entry.push(("size", json!(v.bytes.len()).to_string()));
    if v.bytes.len() <= HEX_BYTES_MAX {
        entry.push(("hex", json!(hex(&v.bytes)).to_string()));
    }
    Ok(entry)
}

/// Whether a JSON value holds a number of 2^53 or more, which a reader that parses numbers as
/// doubles (as JavaScript's `JSON.parse` does) would round.
fn holds_big_number(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_u64().is_none_or(|n| n >= 1 << 53),
        Value::Array(items) => items.iter().any(holds_big_number),
        Value::Object(map) => map.values().any(holds_big_number),
        _ => false,
    }
}

/// The manifest, one key per line: nested values (frames, errors) stay on their key's line so a
/// diff shows which vector changed.
fn manifest_json(vectors: &[Vector]) -> Result<String> {
    let mut out = String::from("{\n  \"protocol_version\": ");
    write!(out, "{PROTOCOL_VERSION},\n  \"vectors\": [\n")?;
    for (i, v) in vectors.iter().enumerate() {
        out.push_str("    {\n");
        let mut entry = manifest_entry(v)?;
        let mut big = false;
        for (_, value) in &entry {
            big |= holds_big_number(&serde_json::from_str(value)?);
        }
        // The README promises that only the listed vectors need a reader exact beyond 2^53.
        if big != BIG_NUMBER_VECTORS.contains(&v.name.as_str()) {
            return Err(format!("{}: big numbers {big}, listed {}", v.name, !big).into());
        }
        if big {
            let at = entry
                .iter()
                .position(|(k, _)| *k == "size")
                .unwrap_or(entry.len());
            entry.insert(at, ("big_numbers", "true".to_owned()));
        }
        for (j, (key, value)) in entry.iter().enumerate() {
            let comma = if j + 1 < entry.len() { "," } else { "" };
            writeln!(out, "      {}: {value}{comma}", json!(key))?;
        }
        out.push_str(if i + 1 < vectors.len() {
            "    },\n"
        } else {
            "    }\n"
        });
    }
    out.push_str("  ]\n}\n");
    // The hand-made layout must still be JSON that reads back as written.
    let _: Value = serde_json::from_str(&out)?;
    Ok(out)
}

// ---------------------------------------------------------------- valid

fn valid_vectors(v: &mut Vectors) -> Result<()> {
    // Session.
    let hello = Frame::new(
        1,
        frames::Hello {
            min_version: 1,
            max_version: 1,
            client_name: "tern-ios/2.3.1".to_owned(),
        },
    );
    // Cross-check the encoder against bytes written out by hand.
    let hand = frame_bytes(
        frame_type::Hello,
        1,
        &B::default().u16(1).u16(1).str("tern-ios/2.3.1").done(),
    );
    if encode(&hello)? != hand {
        return Err("Hello: encoder disagrees with the hand-built bytes".into());
    }
    v.valid(
        "hello",
        "Hello for version 1 only, from an iOS client",
        hello,
    )?;
    v.valid(
        "welcome",
        "Welcome: version 1, the server's clock and its default limits",
        Frame::new(
            1,
            frames::Welcome {
                version: 1,
                server_name: "ternd/0.1.0".to_owned(),
                server_time_ms: T0,
                limits: ServerLimits {
                    frame_bytes_max: FRAME_BYTES_MAX,
                    body_chars_max: BODY_CHARS_MAX,
                    group_members_max: 100,
                    devices_per_user_max: 10,
                    sync_page_updates_max: SYNC_PAGE_UPDATES_MAX,
                    history_page_messages_max: HISTORY_PAGE_MESSAGES_MAX,
                    media_chunk_bytes_max: MEDIA_CHUNK_BYTES_MAX,
                    media_bytes_max: 100 * 1024 * 1024,
                    heartbeat_interval_ms: 30_000,
                    idle_timeout_ms: 90_000,
                },
            },
        ),
    )?;
    let ping = Frame::new(
        2,
        frames::Ping {
            nonce: 0x0001_0203_0405_0607,
        },
    );
    let hand = frame_bytes(
        frame_type::Ping,
        2,
        &B::default().u64(0x0001_0203_0405_0607).done(),
    );
    if encode(&ping)? != hand {
        return Err("Ping: encoder disagrees with the hand-built bytes".into());
    }
    v.valid(
        "ping",
        "Ping whose nonce shows the byte order of a u64",
        ping,
    )?;
    v.valid(
        "pong",
        "Pong echoing the Ping's nonce",
        Frame::new(
            2,
            frames::Pong {
                nonce: 0x0001_0203_0405_0607,
            },
        ),
    )?;
    v.valid(
        "ping_request_id_max",
        "Ping with the largest request id, 0xFFFFFFFF",
        Frame::new(u32::MAX, frames::Ping { nonce: 1 }),
    )?;
    v.valid(
        "go_away",
        "GoAway event asking clients to wait 5 s before reconnecting",
        Frame::event(frames::GoAway {
            reconnect_after_ms: 5_000,
            message: "server restarting for an upgrade".to_owned(),
        }),
    )?;
    v.valid(
        "error",
        "Error RATE_LIMITED answering request 17, retry after 1.5 s",
        Frame::new(
            17,
            frames::Error {
                code: ErrorCode::RATE_LIMITED,
                retry_after_ms: 1_500,
                message: "too many requests".to_owned(),
            },
        ),
    )?;
    v.valid(
        "error_connection",
        "connection-level Error (request id 0): HEARTBEAT_TIMEOUT",
        Frame::event(frames::Error {
            code: ErrorCode::HEARTBEAT_TIMEOUT,
            retry_after_ms: 0,
            message: "no frame for 90000 ms".to_owned(),
        }),
    )?;
    v.valid(
        "error_unknown_code",
        "Error with code 999, which version 1 does not define: still decodes, as the number",
        Frame::new(
            18,
            frames::Error {
                code: ErrorCode(999),
                retry_after_ms: 0,
                message: "something only a newer server knows".to_owned(),
            },
        ),
    )?;
    v.valid(
        "ok",
        "Ok answering request 23",
        Frame::new(23, frames::Ok {}),
    )?;

    // Accounts.
    v.valid(
        "register",
        "Register alice with a passphrase and a device name",
        Frame::new(
            3,
            frames::Register {
                username: "alice".to_owned(),
                password: "correct horse battery staple".to_owned(),
                device_name: "Pixel 9".to_owned(),
            },
        ),
    )?;
    v.valid(
        "login",
        "Login as bob from a new laptop",
        Frame::new(
            3,
            frames::Login {
                username: "bob".to_owned(),
                password: "hunter2hunter2".to_owned(),
                device_name: "MacBook Air".to_owned(),
            },
        ),
    )?;
    v.valid(
        "resume",
        "Resume with a 32-byte token (0xa0..0xbf)",
        Frame::new(3, frames::Resume { token: token() }),
    )?;
    v.valid(
        "authenticated",
        "Authenticated after Register: user, device, username and the new token",
        Frame::new(
            3,
            frames::Authenticated {
                user_id: ALICE,
                device_id: 1,
                username: "alice".to_owned(),
                token: Some(token()),
            },
        ),
    )?;
    v.valid(
        "authenticated_no_token",
        "Authenticated after Resume: no token (option tag 0)",
        Frame::new(
            3,
            frames::Authenticated {
                user_id: ALICE,
                device_id: 1,
                username: "alice".to_owned(),
                token: None,
            },
        ),
    )?;
    v.valid(
        "logout",
        "Logout (empty body)",
        Frame::new(90, frames::Logout {}),
    )?;
    v.valid(
        "list_devices",
        "ListDevices (empty body)",
        Frame::new(4, frames::ListDevices {}),
    )?;
    v.valid(
        "devices",
        "Devices: two devices, the asking one online",
        Frame::new(
            4,
            frames::Devices {
                devices: vec![
                    DeviceInfo {
                        device_id: 1,
                        name: "Pixel 9".to_owned(),
                        created_at: T0 - 86_400_000,
                        last_active_at: T0,
                        online: true,
                        current: true,
                    },
                    DeviceInfo {
                        device_id: 2,
                        name: "MacBook Air".to_owned(),
                        created_at: T0 - 3_600_000,
                        last_active_at: T0 - 600_000,
                        online: false,
                        current: false,
                    },
                ],
            },
        ),
    )?;
    v.valid(
        "revoke_device",
        "RevokeDevice 2",
        Frame::new(5, frames::RevokeDevice { device_id: 2 }),
    )?;
    v.valid(
        "lookup_user",
        "LookupUser carol",
        Frame::new(
            6,
            frames::LookupUser {
                username: "carol".to_owned(),
            },
        ),
    )?;
    v.valid(
        "lookup_user_max_username",
        "LookupUser with a username of exactly 32 bytes, the limit",
        Frame::new(
            6,
            frames::LookupUser {
                username: "abcdefghijklmnopqrstuvwxyz_01234".to_owned(),
            },
        ),
    )?;
    v.valid(
        "user_info",
        "UserInfo for carol",
        Frame::new(
            6,
            frames::UserInfo {
                user_id: CAROL,
                username: "carol".to_owned(),
            },
        ),
    )?;
    v.valid(
        "get_users",
        "GetUsers for carol, bob and 1, an id of no user",
        Frame::new(
            7,
            frames::GetUsers {
                user_ids: vec![CAROL, BOB, 1],
            },
        ),
    )?;
    v.valid(
        "users",
        "Users answering it: carol and bob, in the order asked; the unknown id left out",
        Frame::new(
            7,
            frames::Users {
                users: vec![
                    frames::UserInfo {
                        user_id: CAROL,
                        username: "carol".to_owned(),
                    },
                    frames::UserInfo {
                        user_id: BOB,
                        username: "bob".to_owned(),
                    },
                ],
            },
        ),
    )?;

    // Messages, sync, history.
    v.valid(
        "send",
        "Send a short text with one attachment; client_msg_id 0x00..0x0f",
        Frame::new(
            10,
            frames::Send {
                conversation_id: DIRECT_AB,
                client_msg_id: client_msg_id(),
                body: "Hello, Bob! Lunch at noon?".to_owned(),
                attachments: vec![MEDIA],
            },
        ),
    )?;
    // 99,999 ASCII characters and one emoji: 100,000 characters in 100,003 bytes, so a reader
    // that counted bytes instead of characters would reject it.
    let pattern = "The quick brown fox jumps over the lazy dog. ";
    let mut body: String = pattern
        .chars()
        .cycle()
        .take(BODY_CHARS_MAX as usize - 1)
        .collect();
    body.push('🦊');
    v.valid(
        "send_body_max_chars",
        "Send whose body is exactly 100,000 characters (100,003 bytes: it ends in a 4-byte emoji)",
        Frame::new(
            11,
            frames::Send {
                conversation_id: DIRECT_AB,
                client_msg_id: client_msg_id(),
                body,
                attachments: Vec::new(),
            },
        ),
    )?;
    v.valid(
        "sent",
        "Sent: the message is durable as seq 339",
        Frame::new(
            10,
            frames::Sent {
                conversation_id: DIRECT_AB,
                client_msg_id: client_msg_id(),
                seq: 339,
                message_id: MSG0 + 339,
                ts: T0 + 339_000,
            },
        ),
    )?;
    v.valid(
        "sync",
        "Sync from user_seq 1200, at most 500 updates",
        Frame::new(
            12,
            frames::Sync {
                since: 1200,
                limit: 500,
            },
        ),
    )?;
    v.valid(
        "sync_page",
        "SyncPage with one update of every kind 1-7 and one unknown kind (256), more to come",
        Frame::new(
            12,
            frames::SyncPage {
                updates: every_update(),
                has_more: true,
                head: 1300,
            },
        ),
    )?;
    v.valid(
        "sync_page_empty",
        "SyncPage with no updates: the device is up to date",
        Frame::new(
            13,
            frames::SyncPage {
                updates: Vec::new(),
                has_more: false,
                head: 1208,
            },
        ),
    )?;
    v.valid(
        "ack",
        "Ack up to user_seq 1208",
        Frame::new(14, frames::Ack { up_to: 1208 }),
    )?;
    v.valid(
        "history",
        "History: 50 messages before seq 340",
        Frame::new(
            15,
            frames::History {
                conversation_id: DIRECT_AB,
                before: 340,
                limit: 50,
                after: None,
            },
        ),
    )?;
    v.valid(
        "history_after",
        "History (revision 1.1) paging forwards: up to 50 messages after seq 337, the last one read",
        Frame::new(
            15,
            frames::History {
                conversation_id: DIRECT_AB,
                before: 0,
                limit: 50,
                after: Some(337),
            },
        ),
    )?;
    v.valid(
        "history_after_zero",
        "History (revision 1.1) from the first message forwards: after 0, below seq 11",
        Frame::new(
            15,
            frames::History {
                conversation_id: DIRECT_AB,
                before: 11,
                limit: 0,
                after: Some(0),
            },
        ),
    )?;
    v.valid_bytes(
        "history_after_absent_tag",
        "History whose appended after is written with its absent tag 00: paging backwards, re-encoded without the tag",
        frame_bytes(
            frame_type::History,
            15,
            &B::default().u64(DIRECT_AB).u64(340).u32(50).u8(0).done(),
        ),
        Frame::new(
            15,
            frames::History {
                conversation_id: DIRECT_AB,
                before: 340,
                limit: 50,
                after: None,
            },
        ),
    )?;
    v.valid(
        "history_page",
        "HistoryPage: a plain message and one with two attachments and emoji, CJK and accents",
        Frame::new(
            15,
            frames::HistoryPage {
                conversation_id: GROUP,
                messages: vec![
                    text_message(41, ALICE, "Who's in for Saturday?"),
                    rich_message(),
                ],
                has_more: true,
                after: None,
            },
        ),
    )?;
    v.valid(
        "history_page_forward",
        "HistoryPage (revision 1.1) read forwards after seq 337: it echoes after, and newer messages follow",
        Frame::new(
            15,
            frames::HistoryPage {
                conversation_id: DIRECT_AB,
                messages: vec![
                    text_message(338, BOB, "Train was late"),
                    text_message(339, BOB, "Here now"),
                ],
                has_more: true,
                after: Some(337),
            },
        ),
    )?;
    v.valid(
        "mark_read",
        "MarkRead up to seq 338",
        Frame::new(
            16,
            frames::MarkRead {
                conversation_id: DIRECT_AB,
                up_to_seq: 338,
            },
        ),
    )?;
    v.valid(
        "typing",
        "Typing started (a notification)",
        Frame::new(
            17,
            frames::Typing {
                conversation_id: GROUP,
                active: true,
            },
        ),
    )?;
    v.valid(
        "typing_event",
        "TypingEvent: bob started typing in the group",
        Frame::event(frames::TypingEvent {
            conversation_id: GROUP,
            user_id: BOB,
            active: true,
        }),
    )?;
    let names = [
        "update_event_message",
        "update_event_receipt",
        "update_event_group_created",
        "update_event_members_added",
        "update_event_member_removed",
        "update_event_group_renamed",
        "update_event_role_changed",
        "update_event_unknown_kind",
    ];
    for (name, update) in names.iter().zip(every_update()) {
        let description = match &update.kind {
            UpdateKind::Unknown(u) => format!(
                "UpdateEvent of kind {}, unknown to version 1: kept as bytes, user_seq still read",
                u.kind
            ),
            kind => format!(
                "UpdateEvent carrying a {} update (kind {})",
                variant_name(kind),
                kind.code()
            ),
        };
        v.valid(
            name,
            &description,
            Frame::event(frames::UpdateEvent { update }),
        )?;
    }
    v.valid(
        "update_event_rich_message",
        "UpdateEvent carrying a message with attachments and multi-byte text",
        Frame::event(frames::UpdateEvent {
            update: update(1209, UpdateKind::Message(rich_message())),
        }),
    )?;

    // Conversations and groups.
    v.valid(
        "open_direct",
        "OpenDirect with bob",
        Frame::new(
            20,
            frames::OpenDirect {
                user_id: BOB,
                encrypted: false,
            },
        ),
    )?;
    v.valid(
        "get_conversation",
        "GetConversation of the group",
        Frame::new(
            21,
            frames::GetConversation {
                conversation_id: GROUP,
            },
        ),
    )?;
    v.valid(
        "conversation",
        "Conversation: a group with an owner, an admin and a member",
        Frame::new(
            21,
            frames::Conversation {
                conversation: ConversationInfo {
                    conversation_id: GROUP,
                    kind: ConversationKind::Group,
                    name: "Climbing crew 🧗".to_owned(),
                    created_at: T0 + 10_000,
                    last_seq: 42,
                    read_seq: 40,
                    unread: 2,
                    members: group_members(),
                },
                encrypted: false,
            },
        ),
    )?;
    v.valid(
        "list_conversations",
        "ListConversations after id 5000, at most 100",
        Frame::new(
            22,
            frames::ListConversations {
                after: 5000,
                limit: 100,
            },
        ),
    )?;
    v.valid(
        "conversations",
        "Conversations: a direct one with its last message and a group without one",
        Frame::new(
            22,
            frames::Conversations {
                conversations: vec![
                    ConversationSummary {
                        conversation_id: DIRECT_AB,
                        kind: ConversationKind::Direct,
                        name: String::new(),
                        peer: BOB,
                        last_seq: 339,
                        read_seq: 338,
                        unread: 1,
                        last_message: Some(text_message(339, BOB, "On my way 🚲")),
                    },
                    ConversationSummary {
                        conversation_id: GROUP,
                        kind: ConversationKind::Group,
                        name: "Climbing crew 🧗".to_owned(),
                        peer: 0,
                        last_seq: 0,
                        read_seq: 0,
                        unread: 0,
                        last_message: None,
                    },
                ],
                has_more: false,
            },
        ),
    )?;
    v.valid(
        "create_group",
        "CreateGroup with a name holding an emoji and two other members",
        Frame::new(
            23,
            frames::CreateGroup {
                name: "Climbing crew 🧗".to_owned(),
                members: vec![BOB, CAROL],
                encrypted: false,
            },
        ),
    )?;
    v.valid(
        "add_members",
        "AddMembers dave and erin",
        Frame::new(
            24,
            frames::AddMembers {
                conversation_id: GROUP,
                members: vec![DAVE, ERIN],
            },
        ),
    )?;
    v.valid(
        "remove_member",
        "RemoveMember erin",
        Frame::new(
            25,
            frames::RemoveMember {
                conversation_id: GROUP,
                user_id: ERIN,
            },
        ),
    )?;
    v.valid(
        "leave_group",
        "LeaveGroup",
        Frame::new(
            26,
            frames::LeaveGroup {
                conversation_id: GROUP,
            },
        ),
    )?;
    v.valid(
        "rename_group",
        "RenameGroup",
        Frame::new(
            27,
            frames::RenameGroup {
                conversation_id: GROUP,
                name: "Climbing crew (Saturdays)".to_owned(),
            },
        ),
    )?;
    v.valid(
        "set_role",
        "SetRole: make carol an admin",
        Frame::new(
            28,
            frames::SetRole {
                conversation_id: GROUP,
                user_id: CAROL,
                role: Role::Admin,
            },
        ),
    )?;

    // Presence.
    v.valid(
        "subscribe_presence",
        "SubscribePresence to bob and carol",
        Frame::new(
            30,
            frames::SubscribePresence {
                users: vec![BOB, CAROL],
            },
        ),
    )?;
    v.valid(
        "presence_list",
        "PresenceList: bob online (no last_seen), carol offline with last_seen",
        Frame::new(
            30,
            frames::PresenceList {
                presences: vec![presence_online(), presence_offline()],
            },
        ),
    )?;
    v.valid(
        "unsubscribe_presence",
        "UnsubscribePresence from carol",
        Frame::new(31, frames::UnsubscribePresence { users: vec![CAROL] }),
    )?;
    v.valid(
        "presence_event",
        "PresenceEvent: carol went offline, last_seen present",
        Frame::event(frames::PresenceEvent {
            presence: presence_offline(),
        }),
    )?;
    v.valid(
        "presence_event_online",
        "PresenceEvent: bob came online, last_seen absent",
        Frame::event(frames::PresenceEvent {
            presence: presence_online(),
        }),
    )?;
    v.valid(
        "set_privacy",
        "SetPrivacy: hide last seen",
        Frame::new(
            32,
            frames::SetPrivacy {
                hide_last_seen: true,
            },
        ),
    )?;

    // Push.
    v.valid(
        "register_push_token",
        "RegisterPushToken for APNs with a hex-encoded 32-byte token",
        Frame::new(
            40,
            frames::RegisterPushToken {
                platform: PushPlatform::Apns,
                app_id: "chat.tern.ios".to_owned(),
                token: hex(&token()),
            },
        ),
    )?;
    v.valid(
        "unregister_push_token",
        "UnregisterPushToken (empty body)",
        Frame::new(41, frames::UnregisterPushToken {}),
    )?;

    // Media.
    v.valid(
        "upload_begin",
        "UploadBegin of a 482,133-byte JPEG with its SHA-256",
        Frame::new(
            50,
            frames::UploadBegin {
                size: 482_133,
                mime: "image/jpeg".to_owned(),
                sha256: sha256(),
            },
        ),
    )?;
    v.valid(
        "upload_state",
        "UploadState: one 256 KiB chunk of 482,133 bytes received",
        Frame::new(
            51,
            frames::UploadState {
                media_id: MEDIA,
                size: 482_133,
                received: 262_144,
            },
        ),
    )?;
    v.valid(
        "upload_status",
        "UploadStatus of an unfinished upload",
        Frame::new(51, frames::UploadStatus { media_id: MEDIA }),
    )?;
    v.valid(
        "upload_chunk",
        "UploadChunk of 64 bytes at offset 0",
        Frame::new(
            52,
            frames::UploadChunk {
                media_id: MEDIA,
                offset: 0,
                data: jpeg_head(),
            },
        ),
    )?;
    v.valid(
        "upload_finish",
        "UploadFinish",
        Frame::new(53, frames::UploadFinish { media_id: MEDIA }),
    )?;
    v.valid(
        "get_media",
        "GetMedia",
        Frame::new(54, frames::GetMedia { media_id: MEDIA }),
    )?;
    v.valid(
        "media_info",
        "MediaInfo of a completed JPEG upload",
        Frame::new(
            54,
            frames::MediaInfo {
                media_id: MEDIA,
                uploader: CAROL,
                size: 482_133,
                mime: "image/jpeg".to_owned(),
                sha256: sha256(),
                created_at: T0 + 40_000,
                complete: true,
            },
        ),
    )?;
    v.valid(
        "download",
        "Download 256 KiB from offset 0",
        Frame::new(
            55,
            frames::Download {
                media_id: MEDIA,
                offset: 0,
                length: MEDIA_CHUNK_BYTES_MAX,
            },
        ),
    )?;
    v.valid(
        "media_data",
        "MediaData: 64 bytes at offset 0",
        Frame::new(
            55,
            frames::MediaData {
                media_id: MEDIA,
                offset: 0,
                data: jpeg_head(),
            },
        ),
    )?;

    e2e_vectors(v)?;

    // Forward compatibility: bytes after the last known field are a newer version's fields.
    let mut bytes = frame_bytes(
        frame_type::Ping,
        2,
        &B::default().u64(77).raw(&[0xde, 0xad, 0xbe, 0xef]).done(),
    );
    v.valid_bytes(
        "ping_with_extension",
        "Ping followed by 4 bytes of a newer version's fields: ignored, so it re-encodes 4 bytes shorter",
        bytes.clone(),
        Frame::new(2, frames::Ping { nonce: 77 }),
    )?;
    let receipt_body = B::default()
        .u64(DIRECT_AB)
        .u64(BOB)
        .u8(ReceiptKind::Read as u8)
        .u64(338)
        .u64(T0 + 5_000)
        .raw(&[0x01, 0x00, 0x00, 0x00, 0x07])
        .done();
    bytes = frame_bytes(
        frame_type::UpdateEvent,
        0,
        &B::default().u64(1202).u16(2).str(&receipt_body).done(),
    );
    v.valid_bytes(
        "update_event_receipt_with_extension",
        "UpdateEvent whose Receipt body has 5 extra bytes after its fields: ignored, re-encodes shorter",
        bytes,
        Frame::event(frames::UpdateEvent {
            update: update(1202, UpdateKind::Receipt(receipt())),
        }),
    )?;

    // Ids as a server makes them, far above 2^53, and the largest u64 (spec §3.1, §5).
    v.valid(
        "update_event_message_big_ids",
        "UpdateEvent of a message whose ids are as large as a server's (about 2.5 x 10^17, above 2^53)",
        Frame::event(frames::UpdateEvent {
            update: update(
                BIG_USER_SEQ,
                UpdateKind::Message(Message {
                    conversation_id: BIG_CONVERSATION,
                    seq: 1,
                    message_id: BIG_MESSAGE,
                    sender: BIG_USER,
                    sender_device: 1,
                    ts: T0,
                    client_msg_id: client_msg_id(),
                    body: "big ids".to_owned(),
                    attachments: Vec::new(),
                }),
            ),
        }),
    )?;
    v.valid(
        "get_users_big_ids",
        "GetUsers for 2^53 + 1 (the first integer a double cannot hold), a server-made id and 2^64 - 1",
        Frame::new(
            60,
            frames::GetUsers {
                user_ids: vec![(1 << 53) + 1, BIG_USER, u64::MAX],
            },
        ),
    )?;
    Ok(())
}

/// A fixed stand-in for a 32-byte public key: `fill` then its index.
fn key32(fill: u8) -> [u8; 32] {
    core::array::from_fn(|i| fill ^ i as u8)
}

/// A fixed stand-in for a signature (the server checks real ones; the codec carries 64 bytes).
fn sig(fill: u8) -> tern_protocol::e2e::Signature {
    tern_protocol::e2e::Signature(core::array::from_fn(|i| fill ^ i as u8))
}

fn signed_key(key_id: u64, fill: u8) -> tern_protocol::e2e::SignedKey {
    tern_protocol::e2e::SignedKey {
        key_id,
        key: key32(fill),
        signature: sig(fill.wrapping_add(1)),
    }
}

fn alice_device_keys() -> tern_protocol::e2e::DeviceKeys {
    tern_protocol::e2e::DeviceKeys {
        device_id: 1,
        curve25519: key32(0xc0),
        ed25519: key32(0xed),
        signature: sig(0x51),
    }
}

fn to_device_message(seq: u64) -> tern_protocol::e2e::ToDeviceMessage {
    tern_protocol::e2e::ToDeviceMessage {
        seq,
        sender: BOB,
        sender_device: 2,
        ts: T0 + 60_000,
        payload: vec![0x01, 0xb0, 0xb0, 0x00, 0x2a],
    }
}

/// The frames of end-to-end encryption (§19), and the appended `encrypted` flags.
fn e2e_vectors(v: &mut Vectors) -> Result<()> {
    use tern_protocol::e2e::*;
    v.valid(
        "publish_keys",
        "PublishKeys: identity keys, two one-time keys and a fallback key",
        Frame::new(
            60,
            frames::PublishKeys {
                identity: Some(Box::new(alice_device_keys())),
                one_time_keys: vec![signed_key(1, 0x10), signed_key(2, 0x20)],
                fallback_key: Some(Box::new(signed_key(3, 0x30))),
            },
        ),
    )?;
    v.valid(
        "publish_keys_empty",
        "PublishKeys with nothing: asks for the counts",
        Frame::new(61, frames::PublishKeys::default()),
    )?;
    v.valid(
        "keys_published",
        "KeysPublished: 2 one-time keys left, the fallback key unused",
        Frame::new(
            60,
            frames::KeysPublished {
                one_time_keys_left: 2,
                fallback_key_used: false,
            },
        ),
    )?;
    v.valid(
        "get_device_keys",
        "GetDeviceKeys of alice and bob",
        Frame::new(
            62,
            frames::GetDeviceKeys {
                user_ids: vec![ALICE, BOB],
            },
        ),
    )?;
    v.valid(
        "device_keys_list",
        "DeviceKeysList: alice with one device, bob with none published",
        Frame::new(
            62,
            frames::DeviceKeysList {
                users: vec![
                    UserDeviceKeys {
                        user_id: ALICE,
                        devices: vec![alice_device_keys()],
                    },
                    UserDeviceKeys {
                        user_id: BOB,
                        devices: vec![],
                    },
                ],
            },
        ),
    )?;
    v.valid(
        "claim_keys",
        "ClaimKeys for two devices of bob",
        Frame::new(
            63,
            frames::ClaimKeys {
                devices: vec![
                    DeviceAddress {
                        user_id: BOB,
                        device_id: 1,
                    },
                    DeviceAddress {
                        user_id: BOB,
                        device_id: 2,
                    },
                ],
            },
        ),
    )?;
    v.valid(
        "claimed_keys",
        "ClaimedKeys: a one-time key of one device, the fallback key of the other",
        Frame::new(
            63,
            frames::ClaimedKeys {
                keys: vec![
                    ClaimedKey {
                        user_id: BOB,
                        device_id: 1,
                        key: signed_key(7, 0x70),
                        fallback: false,
                    },
                    ClaimedKey {
                        user_id: BOB,
                        device_id: 2,
                        key: signed_key(9, 0x90),
                        fallback: true,
                    },
                ],
            },
        ),
    )?;
    v.valid(
        "key_count_event",
        "KeyCountEvent: 49 one-time keys left",
        Frame::event(frames::KeyCountEvent {
            one_time_keys_left: 49,
            fallback_key_used: false,
        }),
    )?;
    v.valid(
        "send_to_device",
        "SendToDevice: one payload for a device of bob",
        Frame::new(
            64,
            frames::SendToDevice {
                messages: vec![ToDeviceOut {
                    to: DeviceAddress {
                        user_id: BOB,
                        device_id: 1,
                    },
                    payload: vec![0x01, 0xa1, 0x1c, 0xe0],
                }],
            },
        ),
    )?;
    v.valid(
        "to_device_sent",
        "ToDeviceSent: queued for every recipient but one revoked device",
        Frame::new(
            64,
            frames::ToDeviceSent {
                undelivered: vec![DeviceAddress {
                    user_id: BOB,
                    device_id: 3,
                }],
            },
        ),
    )?;
    v.valid(
        "to_device_sync",
        "ToDeviceSync: messages up to 4 processed, at most 100 more",
        Frame::new(
            65,
            frames::ToDeviceSync {
                since: 4,
                limit: 100,
            },
        ),
    )?;
    v.valid(
        "to_device_page",
        "ToDevicePage: one message, no more, 48 one-time keys left",
        Frame::new(
            65,
            frames::ToDevicePage {
                messages: vec![to_device_message(5)],
                has_more: false,
                one_time_keys_left: 48,
                fallback_key_used: false,
            },
        ),
    )?;
    v.valid(
        "to_device_ack",
        "ToDeviceAck up to 5 (a notification)",
        Frame::new(66, frames::ToDeviceAck { up_to: 5 }),
    )?;
    v.valid(
        "to_device_event",
        "ToDeviceEvent: a payload from a device of bob",
        Frame::event(frames::ToDeviceEvent {
            message: to_device_message(6),
        }),
    )?;
    let entry = BackupEntry {
        entry_id: key32(0x5e),
        data: vec![0x01, 0x00, 0xff],
    };
    v.valid(
        "put_backup",
        "PutBackup: one entry",
        Frame::new(
            67,
            frames::PutBackup {
                entries: vec![entry.clone()],
            },
        ),
    )?;
    v.valid(
        "get_backup",
        "GetBackup from the start, at most 256 entries",
        Frame::new(
            68,
            frames::GetBackup {
                after: [0; 32],
                limit: 256,
            },
        ),
    )?;
    v.valid(
        "backup_page",
        "BackupPage: one entry, the last",
        Frame::new(
            68,
            frames::BackupPage {
                entries: vec![entry],
                has_more: false,
            },
        ),
    )?;
    v.valid(
        "delete_backup",
        "DeleteBackup",
        Frame::new(69, frames::DeleteBackup {}),
    )?;
    v.valid(
        "open_direct_encrypted",
        "OpenDirect with bob, encrypted: the appended flag is one byte 01",
        Frame::new(
            70,
            frames::OpenDirect {
                user_id: BOB,
                encrypted: true,
            },
        ),
    )?;
    v.valid(
        "create_group_encrypted",
        "CreateGroup, encrypted",
        Frame::new(
            71,
            frames::CreateGroup {
                name: "Secret santa".to_owned(),
                members: vec![BOB],
                encrypted: true,
            },
        ),
    )?;
    v.valid(
        "conversation_encrypted",
        "Conversation: an encrypted direct conversation",
        Frame::new(
            70,
            frames::Conversation {
                conversation: ConversationInfo {
                    conversation_id: DIRECT_AB,
                    kind: ConversationKind::Direct,
                    name: String::new(),
                    created_at: T0,
                    last_seq: 0,
                    read_seq: 0,
                    unread: 0,
                    members: vec![member(ALICE, Role::Member), member(BOB, Role::Member)],
                },
                encrypted: true,
            },
        ),
    )?;
    v.valid(
        "update_event_group_created_encrypted",
        "UpdateEvent: an encrypted group was created (GroupCreated with the appended flag)",
        Frame::event(frames::UpdateEvent {
            update: update(
                1300,
                UpdateKind::GroupCreated(GroupCreated {
                    conversation_id: GROUP,
                    actor: ALICE,
                    ts: T0 + 70_000,
                    name: "Secret santa".to_owned(),
                    members: vec![member(ALICE, Role::Owner), member(BOB, Role::Member)],
                    encrypted: true,
                }),
            ),
        }),
    )?;
    v.valid(
        "update_event_device_list_changed",
        "UpdateEvent carrying a DeviceListChanged update (kind 8): bob's devices changed",
        Frame::event(frames::UpdateEvent {
            update: update(
                1301,
                UpdateKind::DeviceListChanged(DeviceListChanged {
                    user_id: BOB,
                    ts: T0 + 80_000,
                }),
            ),
        }),
    )?;
    v.valid(
        "update_event_skipped",
        "UpdateEvent carrying a Skipped update (kind 9, revision 1.2): a user_seq with an empty body",
        Frame::event(frames::UpdateEvent {
            update: update(1302, UpdateKind::Skipped(Skipped {})),
        }),
    )?;
    v.valid(
        "send_encrypted_body",
        "Send to an encrypted conversation: the body is megolm.v1: and base64",
        Frame::new(
            72,
            frames::Send {
                conversation_id: DIRECT_AB,
                client_msg_id: client_msg_id(),
                body: "megolm.v1:AQIDBA==".to_owned(),
                attachments: vec![],
            },
        ),
    )?;
    Ok(())
}

fn variant_name(kind: &UpdateKind) -> &'static str {
    match kind {
        UpdateKind::Message(_) => "Message",
        UpdateKind::Receipt(_) => "Receipt",
        UpdateKind::GroupCreated(_) => "GroupCreated",
        UpdateKind::MembersAdded(_) => "MembersAdded",
        UpdateKind::MemberRemoved(_) => "MemberRemoved",
        UpdateKind::GroupRenamed(_) => "GroupRenamed",
        UpdateKind::RoleChanged(_) => "RoleChanged",
        UpdateKind::DeviceListChanged(_) => "DeviceListChanged",
        UpdateKind::Skipped(_) => "Skipped",
        _ => "Unknown",
    }
}

// ---------------------------------------------------------------- invalid

fn invalid_vectors(v: &mut Vectors) -> Result<()> {
    use DecodeError as E;
    let max = FRAME_BYTES_MAX;
    let ping_header = |length: u32| B::default().u32(length).u16(frame_type::Ping).u32(2);

    // The length field.
    v.invalid(
        "length_zero",
        "length field 0: below the 6-byte minimum, fatal",
        B::default().u32(0).done(),
        None,
        E::FrameTooSmall { length: 0 },
    )?;
    v.invalid(
        "length_five",
        "length field 5 followed by 5 bytes: one short of type and request id, fatal",
        B::default()
            .u32(5)
            .u16(frame_type::Ping)
            .raw(&[0, 0, 2])
            .done(),
        None,
        E::FrameTooSmall { length: 5 },
    )?;
    v.invalid(
        "length_above_max",
        "length field 1,048,573: a 1 MiB + 1 byte frame, rejected from the header alone",
        ping_header(max - FRAME_LENGTH_BYTES + 1).done(),
        None,
        E::FrameTooLarge {
            frame_bytes: u64::from(max) + 1,
            max,
        },
    )?;
    v.invalid(
        "length_u32_max",
        "length field 0xFFFFFFFF, rejected from the first 4 bytes",
        B::default().u32(u32::MAX).done(),
        None,
        E::FrameTooLarge {
            frame_bytes: u64::from(u32::MAX) + 4,
            max,
        },
    )?;

    // Frame types.
    v.invalid(
        "unknown_type_0000",
        "frame type 0x0000 (reserved): skipped whole, the connection stays",
        frame_bytes(0x0000, 7, &B::default().u64(1).done()),
        Some(7),
        E::UnknownType { frame_type: 0x0000 },
    )?;
    v.invalid(
        "unknown_type_3fff",
        "frame type 0x3FFF, the last request number, undefined in version 1",
        frame_bytes(0x3fff, 8, &[]),
        Some(8),
        E::UnknownType { frame_type: 0x3fff },
    )?;
    v.invalid(
        "unknown_type_ffff",
        "frame type 0xFFFF, an event number undefined in version 1, with a body",
        frame_bytes(0xffff, 0, &[1, 2, 3, 4]),
        Some(0),
        E::UnknownType { frame_type: 0xffff },
    )?;

    // Truncation inside the body.
    v.invalid(
        "truncated_u64",
        "Ping whose body ends 3 bytes into the 8-byte nonce",
        frame_bytes(frame_type::Ping, 2, &[0x01, 0x02, 0x03]),
        Some(2),
        E::Truncated { field: "nonce" },
    )?;
    v.invalid(
        "truncated_empty_body",
        "Hello with an empty body",
        frame_bytes(frame_type::Hello, 1, &[]),
        Some(1),
        E::Truncated {
            field: "min_version",
        },
    )?;
    v.invalid(
        "truncated_string",
        "Hello whose client_name declares 14 bytes and holds 8",
        frame_bytes(
            frame_type::Hello,
            1,
            &B::default().u16(1).u16(1).u32(14).raw(b"tern-ios").done(),
        ),
        Some(1),
        E::Truncated {
            field: "client_name",
        },
    )?;
    v.invalid(
        "truncated_length_prefix",
        "LookupUser whose body is 2 bytes of a 4-byte string length",
        frame_bytes(frame_type::LookupUser, 6, &[0, 0]),
        Some(6),
        E::Truncated { field: "username" },
    )?;
    v.invalid(
        "truncated_token",
        "Authenticated whose token is present (tag 1) but only 16 of 32 bytes",
        frame_bytes(
            frame_type::Authenticated,
            3,
            &B::default()
                .u64(ALICE)
                .u32(1)
                .str("alice")
                .u8(1)
                .raw(&token()[..16])
                .done(),
        ),
        Some(3),
        E::Truncated { field: "token" },
    )?;
    v.invalid(
        "list_count_above_remaining",
        "AddMembers declaring 10 members with the bytes of 1",
        frame_bytes(
            frame_type::AddMembers,
            24,
            &B::default().u64(GROUP).u32(10).u64(DAVE).done(),
        ),
        Some(24),
        E::Truncated { field: "members" },
    )?;
    v.invalid(
        "update_length_above_remaining",
        "UpdateEvent whose update body declares 40 bytes and holds 8",
        frame_bytes(
            frame_type::UpdateEvent,
            0,
            &B::default().u64(1202).u16(2).u32(40).u64(DIRECT_AB).done(),
        ),
        Some(0),
        E::Truncated { field: "update" },
    )?;
    v.invalid(
        "update_body_too_short",
        "UpdateEvent of kind Receipt whose body ends after user_id (a complete update, short fields)",
        frame_bytes(
            frame_type::UpdateEvent,
            0,
            &B::default()
                .u64(1202)
                .u16(2)
                .str(B::default().u64(DIRECT_AB).u64(BOB).done())
                .done(),
        ),
        Some(0),
        E::Truncated { field: "kind" },
    )?;
    v.invalid(
        "history_after_truncated",
        "History whose appended after has its present tag and 4 of its 8 bytes",
        frame_bytes(
            frame_type::History,
            15,
            &B::default()
                .u64(DIRECT_AB)
                .u64(0)
                .u32(50)
                .u8(1)
                .u32(0)
                .done(),
        ),
        Some(15),
        E::Truncated { field: "after" },
    )?;
    v.invalid(
        "history_after_tag_two",
        "History whose appended after has option tag 2: an appended field is checked like any other",
        frame_bytes(
            frame_type::History,
            15,
            &B::default()
                .u64(DIRECT_AB)
                .u64(0)
                .u32(50)
                .u8(2)
                .u64(337)
                .done(),
        ),
        Some(15),
        E::InvalidOptionTag {
            field: "after",
            value: 2,
        },
    )?;

    // UTF-8.
    let lookup =
        |name: &[u8]| frame_bytes(frame_type::LookupUser, 6, &B::default().str(name).done());
    v.invalid(
        "utf8_overlong",
        "LookupUser whose username holds C0 80, an overlong encoding of NUL",
        lookup(b"al\xc0\x80ce"),
        Some(6),
        E::InvalidUtf8 { field: "username" },
    )?;
    v.invalid(
        "utf8_surrogate",
        "LookupUser whose username holds ED A0 80, the encoding of surrogate U+D800",
        lookup(b"al\xed\xa0\x80ce"),
        Some(6),
        E::InvalidUtf8 { field: "username" },
    )?;
    v.invalid(
        "utf8_bad_continuation",
        "LookupUser whose username holds E2 28 A1: a lead byte followed by a non-continuation",
        lookup(b"al\xe2\x28\xa1ce"),
        Some(6),
        E::InvalidUtf8 { field: "username" },
    )?;
    v.invalid(
        "utf8_cut_sequence",
        "Send whose body ends in F0 9F 98, the first 3 bytes of a 4-byte emoji",
        frame_bytes(
            frame_type::Send,
            10,
            &B::default()
                .u64(DIRECT_AB)
                .raw(&client_msg_id())
                .str(b"hi \xf0\x9f\x98")
                .u32(0)
                .done(),
        ),
        Some(10),
        E::InvalidUtf8 { field: "body" },
    )?;
    v.invalid(
        "utf8_above_max_code_point",
        "Send whose body holds F4 90 80 80, which would be U+110000",
        frame_bytes(
            frame_type::Send,
            10,
            &B::default()
                .u64(DIRECT_AB)
                .raw(&client_msg_id())
                .str(b"\xf4\x90\x80\x80")
                .u32(0)
                .done(),
        ),
        Some(10),
        E::InvalidUtf8 { field: "body" },
    )?;

    // Bools, option tags, enums.
    v.invalid(
        "bool_two",
        "Typing whose active byte is 2",
        frame_bytes(
            frame_type::Typing,
            17,
            &B::default().u64(GROUP).u8(2).done(),
        ),
        Some(17),
        E::InvalidBool {
            field: "active",
            value: 2,
        },
    )?;
    v.invalid(
        "option_tag_two",
        "Authenticated whose token option tag is 2",
        frame_bytes(
            frame_type::Authenticated,
            3,
            &B::default()
                .u64(ALICE)
                .u32(1)
                .str("alice")
                .u8(2)
                .raw(&token())
                .done(),
        ),
        Some(3),
        E::InvalidOptionTag {
            field: "token",
            value: 2,
        },
    )?;
    v.invalid(
        "option_tag_nested",
        "Conversations whose summary's last_message option tag is 0xFF",
        frame_bytes(
            frame_type::Conversations,
            22,
            &B::default()
                .u32(1)
                .u64(DIRECT_AB)
                .u8(ConversationKind::Direct as u8)
                .str("")
                .u64(BOB)
                .u64(339)
                .u64(338)
                .u64(1)
                .u8(0xff)
                .u8(0)
                .done(),
        ),
        Some(22),
        E::InvalidOptionTag {
            field: "last_message",
            value: 0xff,
        },
    )?;
    let set_role = |role: u8| {
        frame_bytes(
            frame_type::SetRole,
            28,
            &B::default().u64(GROUP).u64(CAROL).u8(role).done(),
        )
    };
    v.invalid(
        "role_zero",
        "SetRole with role 0 (roles are 1-3)",
        set_role(0),
        Some(28),
        E::InvalidEnum {
            field: "role",
            value: 0,
        },
    )?;
    v.invalid(
        "role_four",
        "SetRole with role 4 (roles are 1-3)",
        set_role(4),
        Some(28),
        E::InvalidEnum {
            field: "role",
            value: 4,
        },
    )?;
    v.invalid(
        "conversation_kind_three",
        "Conversation whose kind is 3 (kinds are 1-2)",
        frame_bytes(
            frame_type::Conversation,
            21,
            &B::default()
                .u64(GROUP)
                .u8(3)
                .str("Climbing crew")
                .u64(T0)
                .u64(42)
                .u64(40)
                .u64(2)
                .u32(0)
                .done(),
        ),
        Some(21),
        E::InvalidEnum {
            field: "kind",
            value: 3,
        },
    )?;
    v.invalid(
        "push_platform_zero",
        "RegisterPushToken with platform 0 (platforms are 1-3)",
        frame_bytes(
            frame_type::RegisterPushToken,
            40,
            &B::default().u8(0).str("chat.tern.ios").str("abcd").done(),
        ),
        Some(40),
        E::InvalidEnum {
            field: "platform",
            value: 0,
        },
    )?;
    v.invalid(
        "receipt_kind_in_update",
        "UpdateEvent whose Receipt kind is 3 (kinds are 1-2): errors inside updates are errors",
        frame_bytes(
            frame_type::UpdateEvent,
            0,
            &B::default()
                .u64(1202)
                .u16(2)
                .str(
                    B::default()
                        .u64(DIRECT_AB)
                        .u64(BOB)
                        .u8(3)
                        .u64(338)
                        .u64(T0)
                        .done(),
                )
                .done(),
        ),
        Some(0),
        E::InvalidEnum {
            field: "kind",
            value: 3,
        },
    )?;

    // End-to-end encryption: the appended flag is a bool like any other, and payloads have a limit.
    v.invalid(
        "open_direct_encrypted_flag_2",
        "OpenDirect whose appended encrypted flag is 02",
        frame_bytes(
            frame_type::OpenDirect,
            70,
            &B::default().u64(BOB).u8(2).done(),
        ),
        Some(70),
        E::InvalidBool {
            field: "encrypted",
            value: 2,
        },
    )?;
    v.invalid(
        "send_to_device_payload_too_long",
        "SendToDevice whose payload declares 65,537 bytes (the limit is 65,536), holding none",
        frame_bytes(
            frame_type::SendToDevice,
            64,
            &B::default()
                .u32(1)
                .u64(BOB)
                .u32(1)
                .u32(TO_DEVICE_PAYLOAD_BYTES_MAX + 1)
                .done(),
        ),
        Some(64),
        E::TooLong {
            field: "payload",
            len: TO_DEVICE_PAYLOAD_BYTES_MAX + 1,
            max: TO_DEVICE_PAYLOAD_BYTES_MAX,
        },
    )?;

    // Limits.
    v.invalid(
        "username_33_bytes",
        "LookupUser with a 33-byte username, one above the limit",
        lookup(b"abcdefghijklmnopqrstuvwxyz_012345"),
        Some(6),
        E::TooLong {
            field: "username",
            len: 33,
            max: USERNAME_BYTES_MAX,
        },
    )?;
    v.invalid(
        "string_length_u32_max",
        "LookupUser whose username declares 0xFFFFFFFF bytes: the limit is checked before the bytes",
        frame_bytes(frame_type::LookupUser, 6, &B::default().u32(u32::MAX).done()),
        Some(6),
        E::TooLong {
            field: "username",
            len: u32::MAX,
            max: USERNAME_BYTES_MAX,
        },
    )?;
    v.invalid(
        "upload_chunk_too_long",
        "UploadChunk declaring 262,145 data bytes (the limit is 262,144), holding none",
        frame_bytes(
            frame_type::UploadChunk,
            52,
            &B::default()
                .u64(MEDIA)
                .u64(0)
                .u32(MEDIA_CHUNK_BYTES_MAX + 1)
                .done(),
        ),
        Some(52),
        E::TooLong {
            field: "data",
            len: MEDIA_CHUNK_BYTES_MAX + 1,
            max: MEDIA_CHUNK_BYTES_MAX,
        },
    )?;
    v.invalid(
        "update_length_above_frame_max",
        "UpdateEvent whose update body declares 1 MiB + 1 bytes",
        frame_bytes(
            frame_type::UpdateEvent,
            0,
            &B::default()
                .u64(1202)
                .u16(2)
                .u32(FRAME_BYTES_MAX + 1)
                .done(),
        ),
        Some(0),
        E::TooLong {
            field: "update",
            len: FRAME_BYTES_MAX + 1,
            max: FRAME_BYTES_MAX,
        },
    )?;
    let send = |body: &[u8]| {
        frame_bytes(
            frame_type::Send,
            11,
            &B::default()
                .u64(DIRECT_AB)
                .raw(&client_msg_id())
                .str(body)
                .u32(0)
                .done(),
        )
    };
    let body: String = "ab🦊"
        .chars()
        .cycle()
        .take(BODY_CHARS_MAX as usize + 1)
        .collect();
    v.invalid(
        "body_100001_chars",
        &format!(
            "Send whose body is 100,001 characters ({} bytes, under 400,000): counted in characters",
            body.len()
        ),
        send(body.as_bytes()),
        Some(11),
        E::TooManyChars {
            field: "body",
            max: BODY_CHARS_MAX,
        },
    )?;
    v.invalid(
        "body_above_max_bytes",
        "Send whose body is 400,001 bytes of 0xFF: too long for any 100,000 characters, refused before UTF-8 is checked",
        send(&vec![0xff; BODY_CHARS_MAX as usize * 4 + 1]),
        Some(11),
        E::TooManyChars {
            field: "body",
            max: BODY_CHARS_MAX,
        },
    )?;
    v.invalid(
        "body_length_u32_max",
        "Send whose body declares 0xFFFFFFFF bytes and holds none",
        frame_bytes(
            frame_type::Send,
            11,
            &B::default()
                .u64(DIRECT_AB)
                .raw(&client_msg_id())
                .u32(u32::MAX)
                .done(),
        ),
        Some(11),
        E::TooManyChars {
            field: "body",
            max: BODY_CHARS_MAX,
        },
    )?;
    let mut members = B::default().str("Everyone").u32(GROUP_MEMBERS_MAX + 1);
    for i in 0..u64::from(GROUP_MEMBERS_MAX) + 1 {
        members = members.u64(2000 + i);
    }
    v.invalid(
        "list_1001_members",
        "CreateGroup listing 1001 members, every one present: one above the limit",
        frame_bytes(frame_type::CreateGroup, 23, &members.done()),
        Some(23),
        E::TooManyItems {
            field: "members",
            count: GROUP_MEMBERS_MAX + 1,
            max: GROUP_MEMBERS_MAX,
        },
    )?;
    v.invalid(
        "list_count_u32_max",
        "SubscribePresence declaring 0xFFFFFFFF users: the count is checked before the bytes",
        frame_bytes(
            frame_type::SubscribePresence,
            30,
            &B::default().u32(u32::MAX).done(),
        ),
        Some(30),
        E::TooManyItems {
            field: "users",
            count: u32::MAX,
            max: PRESENCE_USERS_MAX,
        },
    )?;
    let mut user_ids = B::default().u32(USERS_PER_REQUEST_MAX + 1);
    for i in 0..u64::from(USERS_PER_REQUEST_MAX) + 1 {
        user_ids = user_ids.u64(3000 + i);
    }
    v.invalid(
        "get_users_257",
        "GetUsers naming 257 users, every one present: one above the limit",
        frame_bytes(frame_type::GetUsers, 31, &user_ids.done()),
        Some(31),
        E::TooManyItems {
            field: "user_ids",
            count: USERS_PER_REQUEST_MAX + 1,
            max: USERS_PER_REQUEST_MAX,
        },
    )?;
    v.invalid(
        "attachments_17",
        "Send with 17 attachments (the limit is 16)",
        frame_bytes(
            frame_type::Send,
            10,
            &(0..17)
                .fold(
                    B::default()
                        .u64(DIRECT_AB)
                        .raw(&client_msg_id())
                        .str("album")
                        .u32(17),
                    |b, i| b.u64(MEDIA + i),
                )
                .done(),
        ),
        Some(10),
        E::TooManyItems {
            field: "attachments",
            count: 17,
            max: ATTACHMENTS_PER_MESSAGE_MAX,
        },
    )?;

    // Whole-input checks.
    let mut trailing = encode(&Frame::new(2, frames::Ping { nonce: 1 }))?;
    trailing.push(0x00);
    v.invalid(
        "trailing_byte",
        "a complete Ping followed by one byte: as a whole input, decode_exact reports trailing bytes",
        trailing,
        None,
        E::Truncated { field: "trailing" },
    )?;
    Ok(())
}

// ---------------------------------------------------------------- incomplete

fn incomplete_vectors(v: &mut Vectors) -> Result<()> {
    let send = encode(&Frame::new(
        10,
        frames::Send {
            conversation_id: DIRECT_AB,
            client_msg_id: client_msg_id(),
            body: "Hello, Bob! Lunch at noon?".to_owned(),
            attachments: vec![MEDIA],
        },
    ))?;
    v.incomplete("empty", "no bytes at all", Vec::new())?;
    v.incomplete(
        "length_3_bytes",
        "3 of the 4 bytes of a length field",
        send[..3].to_vec(),
    )?;
    v.incomplete(
        "length_only",
        "a whole length field and nothing else",
        send[..4].to_vec(),
    )?;
    v.incomplete(
        "header_only",
        "the 10-byte header of a Send, no body",
        send[..FRAME_HEADER_BYTES as usize].to_vec(),
    )?;
    v.incomplete(
        "missing_last_byte",
        "a Send missing its last byte",
        send[..send.len() - 1].to_vec(),
    )?;
    v.incomplete(
        "length_at_max_header_only",
        "the header of a frame of exactly 1 MiB, the largest allowed: the decoder waits for it",
        B::default()
            .u32(FRAME_BYTES_MAX - FRAME_LENGTH_BYTES)
            .u16(frame_type::UploadChunk)
            .u32(52)
            .done(),
    )?;
    Ok(())
}

// ---------------------------------------------------------------- output

/// Checks coverage and name uniqueness, so the manifest's promises hold before it is written.
fn check(vectors: &[Vector]) -> Result<()> {
    let mut names = BTreeSet::new();
    for vector in vectors {
        if !names.insert(vector.name.as_str()) {
            return Err(format!("duplicate vector name {}", vector.name).into());
        }
    }
    let types: BTreeSet<u16> = vectors
        .iter()
        .filter_map(|v| match &v.expect {
            Expect::Valid { frame, .. } => Some(frame.body.frame_type()),
            _ => None,
        })
        .collect();
    for (code, name) in frame_type::ALL {
        if !types.contains(code) {
            return Err(format!("no valid vector for frame type {name}").into());
        }
    }
    Ok(())
}

fn write_dir(root: &Path, dir: &str, vectors: &[Vector]) -> Result<()> {
    let path = root.join(dir);
    fs::create_dir_all(&path)?;
    for entry in fs::read_dir(&path)? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == "bin") {
            fs::remove_file(entry.path())?;
        }
    }
    for v in vectors.iter().filter(|v| kind_dir(&v.expect) == dir) {
        fs::write(path.join(format!("{}.bin", v.name)), &v.bytes)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir
        .parent()
        .ok_or("the crate has no parent directory")?;
    let root = workspace.join("spec").join("vectors");
    let corpus = crate_dir.join("fuzz").join("corpus").join("decode");

    let mut v = Vectors::default();
    valid_vectors(&mut v)?;
    invalid_vectors(&mut v)?;
    incomplete_vectors(&mut v)?;
    check(&v.0)?;

    for dir in ["valid", "invalid", "incomplete"] {
        write_dir(&root, dir, &v.0)?;
    }
    fs::write(root.join("manifest.json"), manifest_json(&v.0)?)?;

    fs::create_dir_all(&corpus)?;
    for vector in
        v.0.iter()
            .filter(|v| !matches!(v.expect, Expect::Incomplete))
    {
        fs::write(corpus.join(&vector.name), &vector.bytes)?;
    }

    let count = |dir| v.0.iter().filter(|x| kind_dir(&x.expect) == dir).count();
    println!(
        "wrote {} vectors to {}: {} valid, {} invalid, {} incomplete",
        v.0.len(),
        root.display(),
        count("valid"),
        count("invalid"),
        count("incomplete"),
    );
    // Every type must be covered; report how the frames spread over the body variants too.
    let bodies: BTreeSet<&str> =
        v.0.iter()
            .filter_map(|x| match &x.expect {
                Expect::Valid { frame, .. } => Some(Body::name(&frame.body)),
                _ => None,
            })
            .collect();
    println!(
        "{} of {} frame types covered",
        bodies.len(),
        frame_type::ALL.len()
    );
    Ok(())
}
