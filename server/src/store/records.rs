//! Stored records: rkyv archives behind a one-byte format version.
//!
//! A value is `[RECORD_VERSION] ++ rkyv archive`. The archive uses rkyv's `unaligned` format, so it
//! can be validated and read in place from a RocksDB pinned slice at any address; [`access`] does
//! that (zero copy), [`decode`] also deserializes into an owned value. Every read validates the
//! archive, so a corrupt value is an error, never undefined behaviour. A new record layout gets a
//! new version byte and a reader for the old one.
//!
//! In the update logs a value may instead start with `runs::RUN_MARK`: several entries in one pair
//! (`runs`). A build from before runs fails to read such a log (a storage error), so a database this
//! build wrote cannot go back to one.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::StoreError;

/// The format version byte that starts every value written by this build.
pub(crate) const RECORD_VERSION: u8 = 1;

/// An account.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserRecord {
    pub(crate) username: String,
    pub(crate) created_at: u64,
    /// PBKDF2-HMAC-SHA256 parameters and output.
    pub(crate) password_salt: [u8; 16],
    pub(crate) password_iterations: u32,
    pub(crate) password_hash: [u8; 32],
    pub(crate) hide_last_seen: bool,
}

/// One device of a user.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceRecord {
    pub(crate) name: String,
    pub(crate) created_at: u64,
    pub(crate) last_active_at: u64,
    /// SHA-256 of the device's resume token (the token itself is never stored).
    pub(crate) token_hash: [u8; 32],
    /// The highest `user_seq` this device acknowledged.
    pub(crate) cursor: u64,
    pub(crate) revoked: bool,
    /// Where to push notifications for this device, if it registered a token.
    pub(crate) push: Option<PushTokenRecord>,
}

/// A device's push token.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushTokenRecord {
    /// `tern_protocol::types::PushPlatform` as its wire byte.
    pub(crate) platform: u8,
    pub(crate) app_id: String,
    pub(crate) pushkey: String,
}

/// A queued push notification for a user; key (due_ms, user_id) in `push_outbox`. What it says is
/// read when it is sent, so a job stands for every message that arrived while it waited.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PushJobRecord {
    pub(crate) user_id: u64,
    /// When the first message it stands for arrived.
    pub(crate) queued_at: u64,
    /// Failed deliveries so far.
    pub(crate) attempts: u32,
}

/// A member of a conversation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    pub(crate) user_id: u64,
    /// `tern_protocol::types::Role` as its wire byte.
    pub(crate) role: u8,
}

/// A conversation's membership and settings. `last_seq` is not kept here: it is the key of the
/// conversation's newest message, so a message write never rewrites this record.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConversationRecord {
    /// `tern_protocol::types::ConversationKind` as its wire byte.
    pub(crate) kind: u8,
    pub(crate) name: String,
    pub(crate) created_at: u64,
    pub(crate) members: Vec<MemberRecord>,
}

impl ConversationRecord {
    /// Whether `user_id` is a member.
    pub(crate) fn has_member(&self, user_id: u64) -> bool {
        self.members.iter().any(|m| m.user_id == user_id)
    }
}

/// A stored message; its key is (conversation_id, seq).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageRecord {
    pub(crate) message_id: u64,
    pub(crate) sender: u64,
    pub(crate) sender_device: u32,
    pub(crate) ts: u64,
    pub(crate) client_msg_id: [u8; 16],
    pub(crate) body: String,
    pub(crate) attachments: Vec<u64>,
}

/// An entry of a user's update log; its key is (user_id, user_seq). Message entries point at the
/// message rather than copying it, so a group message is stored once however many members it has.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpdateRecord {
    /// A message was stored in one of the user's conversations.
    Message {
        conversation_id: u64,
        seq: u64,
        sender: u64,
    },
    /// A delivered (1) or read (2) watermark of `user_id` moved.
    Receipt {
        conversation_id: u64,
        user_id: u64,
        kind: u8,
        up_to_seq: u64,
        ts: u64,
    },
    /// A group was created with the user in it.
    GroupCreated {
        conversation_id: u64,
        actor: u64,
        ts: u64,
        name: String,
        members: Vec<MemberRecord>,
    },
    /// Users were added to a group.
    MembersAdded {
        conversation_id: u64,
        actor: u64,
        ts: u64,
        members: Vec<u64>,
    },
    /// A member left (`actor == user_id`) or was removed.
    MemberRemoved {
        conversation_id: u64,
        actor: u64,
        ts: u64,
        user_id: u64,
    },
    /// A group was renamed.
    GroupRenamed {
        conversation_id: u64,
        actor: u64,
        ts: u64,
        name: String,
    },
    /// A member's role changed.
    RoleChanged {
        conversation_id: u64,
        actor: u64,
        ts: u64,
        user_id: u64,
        role: u8,
    },
    /// A user's devices changed (a device published its identity keys, or was revoked). Added
    /// last and smaller than the largest variant, so the archived enum keeps its size and every
    /// record written before it reads the same.
    DeviceListChanged { user_id: u64, ts: u64 },
    /// A `user_seq` that carries nothing: the core had shown an update under it that a crash then
    /// lost (see `Shard::user_state`). Added last, like `DeviceListChanged`, so every record
    /// written before it reads the same.
    Skipped,
}

/// A device's published identity keys and fallback key; key (user_id, device_id) in
/// `device_keys`. Its one-time keys are rows of `one_time_keys`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceKeysRecord {
    pub(crate) curve25519: [u8; 32],
    pub(crate) ed25519: [u8; 32],
    pub(crate) signature: [u8; 64],
    pub(crate) fallback: Option<SignedKeyRecord>,
    /// Whether a claim handed the fallback key out since it was published.
    pub(crate) fallback_used: bool,
}

/// A signed one-time or fallback key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignedKeyRecord {
    pub(crate) key_id: u64,
    pub(crate) key: [u8; 32],
    pub(crate) signature: [u8; 64],
}

/// A queued to-device message; key (user_id, device_id, seq) in `to_device`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToDeviceRecord {
    pub(crate) sender: u64,
    pub(crate) sender_device: u32,
    pub(crate) ts: u64,
    pub(crate) payload: Vec<u8>,
}

/// An upload; key media_id. Its bytes are in `media_chunks`, keyed by (media_id, offset).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MediaRecord {
    pub(crate) uploader: u64,
    pub(crate) size: u64,
    pub(crate) mime: String,
    pub(crate) sha256: [u8; 32],
    pub(crate) created_at: u64,
    /// Bytes received so far.
    pub(crate) received: u64,
    /// When the last chunk arrived.
    pub(crate) progressed_at: u64,
    /// Whether `UploadFinish` verified it.
    pub(crate) complete: bool,
    /// Whether a message attached it (set by the uploader's core when the `Send` is accepted).
    pub(crate) referenced: bool,
}

/// A user's presence settings and last-seen time; key user_id.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PresenceRecord {
    /// When the user's last connection ended (0: never).
    pub(crate) last_seen: u64,
    /// Whether others may see `last_seen`.
    pub(crate) hide_last_seen: bool,
}

/// A user's watermarks in one conversation; key (conversation_id, user_id).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReceiptRecord {
    pub(crate) delivered_seq: u64,
    pub(crate) read_seq: u64,
}

/// What a `Send` produced, kept under its idempotency key so a retry gets the same answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdempotencyRecord {
    pub(crate) conversation_id: u64,
    pub(crate) seq: u64,
    pub(crate) message_id: u64,
    pub(crate) ts: u64,
}

/// Encodes a record on its own (see [`encode_into`]).
#[cfg(test)]
pub(crate) fn encode<T>(value: &T) -> Result<Vec<u8>, StoreError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Capacity of the per-thread buffer records are archived in that is kept between records.
const SCRATCH_BYTES_KEPT: usize = 64 * 1024;

thread_local! {
    /// Where records are archived before they are appended: archives are aligned from their own
    /// start, so they cannot be written in place at an arbitrary offset.
    static SCRATCH: std::cell::RefCell<AlignedVec> = std::cell::RefCell::new(AlignedVec::new());
}

/// Appends a record to `out` as its version byte followed by its archive, without a buffer of
/// its own, and returns how many bytes that is. On error `out` is left as it was.
pub(crate) fn encode_into<T>(value: &T, out: &mut Vec<u8>) -> Result<usize, StoreError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    SCRATCH.with(|scratch| {
        let mut buffer = std::mem::take(&mut *scratch.borrow_mut());
        buffer.clear();
        let archive = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, buffer)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        out.push(RECORD_VERSION);
        out.extend_from_slice(&archive);
        let len = 1 + archive.len();
        if archive.capacity() <= SCRATCH_BYTES_KEPT {
            *scratch.borrow_mut() = archive;
        }
        Ok(len)
    })
}

/// Validates a stored value and returns its archive in place.
pub(crate) fn access<T>(value: &[u8]) -> Result<&T::Archived, StoreError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    match value.split_first() {
        Some((&RECORD_VERSION, archive)) => rkyv::access::<T::Archived, rancor::Error>(archive)
            .map_err(|e| StoreError::Corrupt(e.to_string())),
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "unknown record version {version}"
        ))),
        None => Err(StoreError::Corrupt("empty value".to_owned())),
    }
}

/// Validates a stored value and deserializes it.
pub(crate) fn decode<T>(value: &[u8]) -> Result<T, StoreError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
{
    let archived = access::<T>(value)?;
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a record survives encode and decode, and that it is read correctly from an odd
    // address (pinned slices have no alignment guarantee).
    #[test]
    fn round_trip_unaligned() {
        let message = MessageRecord {
            message_id: 7,
            sender: 1,
            sender_device: 2,
            ts: 1_795_000_000_000,
            client_msg_id: [3; 16],
            body: "hello, 世界".to_owned(),
            attachments: vec![9, 10],
        };
        let bytes = encode(&message).unwrap();
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode::<MessageRecord>(&shifted[1..]).unwrap(), message);
        let archived = access::<MessageRecord>(&shifted[1..]).unwrap();
        assert_eq!(archived.body.as_str(), "hello, 世界");
    }

    // Proves a wrong version byte and a damaged archive are errors, not panics.
    #[test]
    fn corrupt_values_are_errors() {
        let mut bytes = encode(&ReceiptRecord {
            delivered_seq: 1,
            read_seq: 2,
        })
        .unwrap();
        bytes[0] = 99;
        assert!(matches!(
            decode::<ReceiptRecord>(&bytes),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<UserRecord>(&[RECORD_VERSION, 1, 2]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<UserRecord>(&[]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
