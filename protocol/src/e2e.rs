//! End-to-end encryption (spec §19): the key directory's structures, to-device messages, backup
//! entries, and the payload formats clients exchange through the server without it reading them
//! (Megolm and Olm envelopes, room keys, encrypted attachments).
//!
//! The server sees the structures of the first part; the payload formats of the second part are
//! only ever encoded and decoded by clients, but they are part of the protocol all the same, so
//! that clients written apart interoperate. The cryptography itself is not here: this crate only
//! lays out the bytes that vodozemac (Olm, Megolm) and AES-256-GCM produce and consume. What a
//! device signs is here too ([`identity_signed_bytes`], [`key_signed_bytes`]), so the server and
//! every client check signatures over the same bytes.

use crate::codec::{Reader, Wire, Writer};
use crate::error::{DecodeError, EncodeError};
use crate::limits::*;
use crate::types::{ConversationId, DeviceId, MediaId, TimestampMs, UserId};
use crate::wire_struct;

/// An Ed25519 signature: 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Signature(pub [u8; 64]);

impl Default for Signature {
    fn default() -> Self {
        Signature([0; 64])
    }
}

impl core::fmt::Debug for Signature {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Signature(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

impl Wire for Signature {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.raw(&self.0);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok(Signature(r.wire(field)?))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serde derives stop at 32-byte arrays; a signature is written as its 64 numbers.
        s.collect_seq(self.0.iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <Vec<u8>>::deserialize(d)?;
        let array: [u8; 64] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))?;
        Ok(Signature(array))
    }
}

// ---------------------------------------------------------------- the key directory

wire_struct! {
    /// A device's published identity: its Curve25519 and Ed25519 keys, signed with the latter.
    pub struct DeviceKeys {
        /// The device.
        pub device_id: DeviceId => wire,
        /// Its Curve25519 identity key (key agreement).
        pub curve25519: [u8; 32] => wire,
        /// Its Ed25519 identity key (signatures).
        pub ed25519: [u8; 32] => wire,
        /// Ed25519 over [`identity_signed_bytes`].
        pub signature: Signature => wire,
    }
}

wire_struct! {
    /// One user's devices that have published identity keys and are not revoked.
    pub struct UserDeviceKeys {
        /// The user.
        pub user_id: UserId => wire,
        /// The devices, in ascending id.
        pub devices: Vec<DeviceKeys> => list(DEVICES_PER_USER_MAX),
    }
}

wire_struct! {
    /// A one-time or fallback key, signed with the device's Ed25519 key.
    pub struct SignedKey {
        /// The key's id, unique among the device's keys.
        pub key_id: u64 => wire,
        /// The Curve25519 public key.
        pub key: [u8; 32] => wire,
        /// Ed25519 over [`key_signed_bytes`].
        pub signature: Signature => wire,
    }
}

wire_struct! {
    /// One device of one user.
    pub struct DeviceAddress {
        /// The user.
        pub user_id: UserId => wire,
        /// The device.
        pub device_id: DeviceId => wire,
    }
}

wire_struct! {
    /// A key taken from the directory for a device.
    pub struct ClaimedKey {
        /// Whose device.
        pub user_id: UserId => wire,
        /// The device.
        pub device_id: DeviceId => wire,
        /// A one-time key (now removed), or the fallback key.
        pub key: SignedKey => wire,
        /// Whether `key` is the fallback key: the device had no one-time key left.
        pub fallback: bool => wire,
    }
}

// ---------------------------------------------------------------- to-device messages

wire_struct! {
    /// A payload in a device's queue.
    pub struct ToDeviceMessage {
        /// Its position in the recipient device's queue: gapless from 1.
        pub seq: u64 => wire,
        /// The sending user.
        pub sender: UserId => wire,
        /// The sending device.
        pub sender_device: DeviceId => wire,
        /// When the server queued it.
        pub ts: TimestampMs => wire,
        /// Opaque to the server: an [`OlmEnvelope`] between clients of this version.
        pub payload: Vec<u8> => bytes(TO_DEVICE_PAYLOAD_BYTES_MAX),
    }
}

wire_struct! {
    /// A payload to queue for one device.
    pub struct ToDeviceOut {
        /// The recipient device.
        pub to: DeviceAddress => wire,
        /// The payload.
        pub payload: Vec<u8> => bytes(TO_DEVICE_PAYLOAD_BYTES_MAX),
    }
}

wire_struct! {
    /// One encrypted entry of a user's key backup.
    pub struct BackupEntry {
        /// Its id (the Megolm session's id); not all zero.
        pub entry_id: [u8; 32] => wire,
        /// A [`BackupData`], encoded.
        pub data: Vec<u8> => bytes(BACKUP_ENTRY_BYTES_MAX),
    }
}

// ---------------------------------------------------------------- signatures

/// The context that starts the bytes an identity signature covers.
pub const IDENTITY_SIGNATURE_CONTEXT: &[u8] = b"TERN-DEVICE-V1";
/// The context that starts the bytes a one-time or fallback key signature covers.
pub const KEY_SIGNATURE_CONTEXT: &[u8] = b"TERN-KEY-V1";

/// The bytes a device signs to publish its identity keys.
pub fn identity_signed_bytes(user_id: UserId, keys: &DeviceKeys) -> Vec<u8> {
    let mut out = Vec::with_capacity(IDENTITY_SIGNATURE_CONTEXT.len() + 12 + 64);
    out.extend_from_slice(IDENTITY_SIGNATURE_CONTEXT);
    out.extend_from_slice(&user_id.to_be_bytes());
    out.extend_from_slice(&keys.device_id.to_be_bytes());
    out.extend_from_slice(&keys.curve25519);
    out.extend_from_slice(&keys.ed25519);
    out
}

/// The bytes a device signs to publish a one-time or fallback key.
pub fn key_signed_bytes(user_id: UserId, device_id: DeviceId, key: &SignedKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_SIGNATURE_CONTEXT.len() + 20 + 32);
    out.extend_from_slice(KEY_SIGNATURE_CONTEXT);
    out.extend_from_slice(&user_id.to_be_bytes());
    out.extend_from_slice(&device_id.to_be_bytes());
    out.extend_from_slice(&key.key_id.to_be_bytes());
    out.extend_from_slice(&key.key);
    out
}

// ---------------------------------------------------------------- the encrypted body

/// What starts the body of every message in an encrypted conversation.
pub const ENCRYPTED_BODY_PREFIX: &str = "megolm.v1:";

/// Whether a message body is an encrypted body as the server checks it (§19.7): the prefix, then
/// standard base64 with padding, at least one 4-character group. The server cannot tell
/// ciphertext from other bytes; this check keeps plaintext out by mistake or by an old client.
pub fn is_encrypted_body(body: &str) -> bool {
    let Some(rest) = body.strip_prefix(ENCRYPTED_BODY_PREFIX) else {
        return false;
    };
    let bytes = rest.as_bytes();
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return false;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding > 2 {
        return false;
    }
    bytes[..bytes.len() - padding]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

// ---------------------------------------------------------------- payload formats (clients only)

/// The version byte of every payload format of this chapter.
pub const PAYLOAD_VERSION: u8 = 1;

wire_struct! {
    /// What `megolm.v1:` is followed by (in base64) in an encrypted body.
    pub struct MegolmEnvelope {
        /// [`PAYLOAD_VERSION`].
        pub version: u8 => wire,
        /// The Megolm session: its ratchet's Ed25519 public key.
        pub session_id: [u8; 32] => wire,
        /// A Megolm message in the Olm library's binary format.
        pub ciphertext: Vec<u8> => bytes(MEGOLM_CIPHERTEXT_BYTES_MAX),
    }
}

wire_struct! {
    /// An attachment's key and description, inside a [`RoomContent`].
    pub struct EncryptedFile {
        /// The upload (of the ciphertext and its tag).
        pub media_id: MediaId => wire,
        /// The plaintext's size in bytes.
        pub size: u64 => wire,
        /// The plaintext's media type.
        pub mime: String => str(MIME_BYTES_MAX),
        /// A file name; may be empty.
        pub name: String => str(255),
        /// The AES-256-GCM key.
        pub key: [u8; 32] => wire,
        /// The GCM nonce.
        pub nonce: [u8; 12] => wire,
        /// SHA-256 of the uploaded bytes.
        pub sha256: [u8; 32] => wire,
    }
}

wire_struct! {
    /// The plaintext of a Megolm message.
    pub struct RoomContent {
        /// [`PAYLOAD_VERSION`].
        pub version: u8 => wire,
        /// The conversation it was sent to; a message that arrives elsewhere is dropped.
        pub conversation_id: ConversationId => wire,
        /// The text.
        pub text: String => str(ENCRYPTED_TEXT_BYTES_MAX),
        /// The attachments.
        pub attachments: Vec<EncryptedFile> => list(ATTACHMENTS_PER_MESSAGE_MAX),
    }
}

wire_struct! {
    /// A to-device payload between clients of this version: one Olm message.
    pub struct OlmEnvelope {
        /// [`PAYLOAD_VERSION`].
        pub version: u8 => wire,
        /// The sending device's Curve25519 identity key.
        pub sender_key: [u8; 32] => wire,
        /// 0: a pre-key message, 1: a normal message.
        pub message_type: u8 => wire,
        /// The Olm message's bytes.
        pub ciphertext: Vec<u8> => bytes(OLM_CIPHERTEXT_BYTES_MAX),
    }
}

/// [`ToDeviceContent::kind`]: a room key.
pub const CONTENT_ROOM_KEY: u8 = 1;
/// [`ToDeviceContent::kind`]: forwarded room keys.
pub const CONTENT_FORWARDED_ROOM_KEYS: u8 = 2;

wire_struct! {
    /// The plaintext of an Olm to-device message, binding it to both ends.
    pub struct ToDeviceContent {
        /// [`PAYLOAD_VERSION`].
        pub version: u8 => wire,
        /// The sending user.
        pub sender: UserId => wire,
        /// The sending device.
        pub sender_device: DeviceId => wire,
        /// Its Ed25519 identity key.
        pub sender_ed25519: [u8; 32] => wire,
        /// The receiving user.
        pub recipient: UserId => wire,
        /// The receiving device.
        pub recipient_device: DeviceId => wire,
        /// Its Ed25519 identity key.
        pub recipient_ed25519: [u8; 32] => wire,
        /// [`CONTENT_ROOM_KEY`] or [`CONTENT_FORWARDED_ROOM_KEYS`].
        pub kind: u8 => wire,
        /// A [`RoomKey`] or a [`ForwardedRoomKeys`], encoded.
        pub body: Vec<u8> => bytes(TO_DEVICE_CONTENT_BYTES_MAX),
    }
}

wire_struct! {
    /// A device's outbound Megolm session for a conversation.
    pub struct RoomKey {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// The session.
        pub session_id: [u8; 32] => wire,
        /// The session key (vodozemac `SessionKey::to_bytes`).
        pub session_key: Vec<u8> => bytes(SESSION_KEY_BYTES_MAX),
    }
}

wire_struct! {
    /// A session passed on by another device of the same user.
    pub struct ForwardedRoomKey {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// The user whose device created the session.
        pub sender: UserId => wire,
        /// That device.
        pub sender_device: DeviceId => wire,
        /// The session.
        pub session_id: [u8; 32] => wire,
        /// The exported session key (vodozemac `ExportedSessionKey::to_bytes`).
        pub session_key: Vec<u8> => bytes(SESSION_KEY_BYTES_MAX),
    }
}

wire_struct! {
    /// Sessions passed on to another device of the same user.
    pub struct ForwardedRoomKeys {
        /// The sessions.
        pub keys: Vec<ForwardedRoomKey> => list(FORWARDED_KEYS_MAX),
    }
}

wire_struct! {
    /// The data of a backup entry: a [`ForwardedRoomKey`] under the backup key.
    pub struct BackupData {
        /// [`PAYLOAD_VERSION`].
        pub version: u8 => wire,
        /// The AES-256-GCM nonce.
        pub nonce: [u8; 12] => wire,
        /// The ciphertext and its tag; `entry_id` is the associated data.
        pub ciphertext: Vec<u8> => bytes(BACKUP_CIPHERTEXT_BYTES_MAX),
    }
}

/// Encodes a payload structure on its own (not in a frame).
pub fn to_bytes<T: Wire>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut buf = bytes::BytesMut::new();
    value.encode(&mut Writer::new(&mut buf))?;
    Ok(buf.to_vec())
}

/// Decodes a payload structure from bytes that hold it alone; bytes after it are ignored, as in a
/// frame body.
pub fn from_bytes<T: Wire>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    T::decode(&mut Reader::new(bytes), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the server's check accepts exactly a prefix and well-formed padded base64.
    #[test]
    fn encrypted_bodies_are_told_from_plaintext() {
        assert!(is_encrypted_body("megolm.v1:QUJD"));
        assert!(is_encrypted_body("megolm.v1:QUI="));
        assert!(is_encrypted_body("megolm.v1:QQ=="));
        assert!(is_encrypted_body("megolm.v1:ab+/AB12"));
        for plain in [
            "",
            "hello",
            "megolm.v1:",
            "megolm.v1:QUJ",
            "megolm.v1:Q===",
            "megolm.v1:QU=D",
            "megolm.v1:hi there",
            "megolm.v2:QUJD",
            "MEGOLM.V1:QUJD",
        ] {
            assert!(!is_encrypted_body(plain), "{plain:?}");
        }
    }

    // Proves payload structures round-trip alone, and a truncated one is an error, not a panic.
    #[test]
    fn payloads_round_trip() {
        let content = RoomContent {
            version: PAYLOAD_VERSION,
            conversation_id: 7,
            text: "hi".into(),
            attachments: vec![EncryptedFile {
                media_id: 3,
                size: 10,
                mime: "image/png".into(),
                name: "a.png".into(),
                key: [1; 32],
                nonce: [2; 12],
                sha256: [3; 32],
            }],
        };
        let bytes = to_bytes(&content).unwrap();
        assert_eq!(
            from_bytes::<RoomContent>(&bytes, "content").unwrap(),
            content
        );
        assert!(from_bytes::<RoomContent>(&bytes[..bytes.len() - 1], "content").is_err());
    }

    // Proves the signed bytes are the context and the fields big-endian, as §19.2 lists them.
    #[test]
    fn signed_bytes_follow_the_spec() {
        let keys = DeviceKeys {
            device_id: 2,
            curve25519: [0xc0; 32],
            ed25519: [0xed; 32],
            signature: Signature::default(),
        };
        let bytes = identity_signed_bytes(1, &keys);
        assert_eq!(&bytes[..14], b"TERN-DEVICE-V1");
        assert_eq!(&bytes[14..26], &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(bytes.len(), 14 + 12 + 64);
        let key = SignedKey {
            key_id: 5,
            key: [9; 32],
            signature: Signature::default(),
        };
        let bytes = key_signed_bytes(1, 2, &key);
        assert_eq!(&bytes[..11], b"TERN-KEY-V1");
        assert_eq!(bytes.len(), 11 + 20 + 32);
    }
}
