//! Updates: the entries of a user's update log, delivered by `Sync` pages and `UpdateEvent`s.
//!
//! An update is `user_seq` (u64), `kind` (u16), `length` (u32) and `length` bytes of body. The
//! length lets an old client skip a kind it does not know (it still advances its cursor past it) and
//! lets a newer version append fields to a known kind's body, which older readers ignore.

use crate::codec::{Reader, Wire, Writer};
use crate::error::{DecodeError, EncodeError};
use crate::limits::*;
use crate::types::*;
use crate::wire_struct;

/// One entry of a user's update log.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Update {
    /// The entry's position in the user's log: gapless from 1.
    pub user_seq: u64,
    /// What happened.
    pub kind: UpdateKind,
}

wire_struct! {
    /// A watermark moved: delivered (some device of `user_id` acknowledged) or read (`MarkRead`).
    /// The sender of the messages sees it; so do `user_id`'s own other devices.
    pub struct Receipt {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// Whose watermark moved.
        pub user_id: UserId => wire,
        /// Delivered or read.
        pub kind: ReceiptKind => wire,
        /// The new watermark: every message with `seq <= up_to_seq` is covered.
        pub up_to_seq: u64 => wire,
        /// When it moved.
        pub ts: TimestampMs => wire,
    }
}

wire_struct! {
    /// A group was created with the caller in it.
    pub struct GroupCreated {
        /// The new group.
        pub conversation_id: ConversationId => wire,
        /// Who created it (its owner).
        pub actor: UserId => wire,
        /// When.
        pub ts: TimestampMs => wire,
        /// Its name.
        pub name: String => str(GROUP_NAME_BYTES_MAX),
        /// Its members, the creator included, with their roles.
        pub members: Vec<Member> => list(GROUP_MEMBERS_MAX),
        /// Whether the group is encrypted end to end (§19.7). Appended to the version-1 body:
        /// written only when true, read as false from a body that ends before it.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "crate::codec::is_false"))]
        pub encrypted: bool => tail_flag,
    }
}

wire_struct! {
    /// Members were added to a group (the new members receive `GroupCreated`-style state through
    /// this update too, and fetch the rest with `GetConversation`).
    pub struct MembersAdded {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// Who added them.
        pub actor: UserId => wire,
        /// When.
        pub ts: TimestampMs => wire,
        /// The users added, each with role `Member`.
        pub members: Vec<UserId> => list(GROUP_MEMBERS_MAX),
    }
}

wire_struct! {
    /// A member left (`actor == user_id`) or was removed from a group.
    pub struct MemberRemoved {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// Who removed them, or the member themself when they left.
        pub actor: UserId => wire,
        /// When.
        pub ts: TimestampMs => wire,
        /// Who is no longer a member.
        pub user_id: UserId => wire,
    }
}

wire_struct! {
    /// A group was renamed.
    pub struct GroupRenamed {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// Who renamed it.
        pub actor: UserId => wire,
        /// When.
        pub ts: TimestampMs => wire,
        /// The new name.
        pub name: String => str(GROUP_NAME_BYTES_MAX),
    }
}

wire_struct! {
    /// A member's role changed.
    pub struct RoleChanged {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// Who changed it.
        pub actor: UserId => wire,
        /// When.
        pub ts: TimestampMs => wire,
        /// The member whose role changed.
        pub user_id: UserId => wire,
        /// The new role.
        pub role: Role => wire,
    }
}

wire_struct! {
    /// A user's devices changed: one published its identity keys for the first time, or was
    /// revoked. Fetch their keys again (§19.5).
    pub struct DeviceListChanged {
        /// Whose devices changed.
        pub user_id: UserId => wire,
        /// When.
        pub ts: TimestampMs => wire,
    }
}

wire_struct! {
    /// A `user_seq` that carries nothing (§10.9.9, revision 1.2): a crash lost the update the server
    /// had announced under it before it was durable, and what that update carried comes again under
    /// a new `user_seq`. The body is empty. Advance the cursor past it, acknowledge it, and show
    /// nothing.
    pub struct Skipped {}
}

/// An update of a kind this version does not define, kept as bytes so it can be skipped (and its
/// `user_seq` acknowledged) by an older client.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UnknownUpdate {
    /// The kind code, not one of this version's.
    pub kind: u16,
    /// The raw body.
    pub body: Vec<u8>,
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for UnknownUpdate {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        // Only codes above every known kind, so the value round-trips as unknown.
        let kind = u.int_in_range(0x0100..=u16::MAX)?;
        Ok(UnknownUpdate {
            kind,
            body: u.arbitrary()?,
        })
    }
}

macro_rules! update_kinds {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, )*) => {
        /// What an update says happened.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[non_exhaustive]
        pub enum UpdateKind {
            $( $(#[$doc])* $name($name), )*
            /// A kind this version does not know.
            Unknown(UnknownUpdate),
        }

        impl UpdateKind {
            /// The kind's wire code.
            pub fn code(&self) -> u16 {
                match self {
                    $( UpdateKind::$name(_) => $code, )*
                    UpdateKind::Unknown(u) => u.kind,
                }
            }

            fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
                match self {
                    $( UpdateKind::$name(v) => v.encode(w), )*
                    UpdateKind::Unknown(u) => {
                        w.raw(&u.body);
                        Ok(())
                    }
                }
            }

            fn decode_body(kind: u16, body: &[u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(body);
                // Bytes after the fields a kind defines are a newer version's additions: ignored.
                Ok(match kind {
                    $( $code => UpdateKind::$name(r.wire(stringify!($name))?), )*
                    _ => UpdateKind::Unknown(UnknownUpdate { kind, body: body.to_vec() }),
                })
            }
        }
    };
}

update_kinds! {
    /// A message was stored in one of the user's conversations (their own sends included).
    Message = 1,
    /// A delivered or read watermark moved.
    Receipt = 2,
    /// A group was created with the user in it.
    GroupCreated = 3,
    /// Members were added to a group the user is in (or the user was added).
    MembersAdded = 4,
    /// A member left or was removed (possibly the user).
    MemberRemoved = 5,
    /// A group was renamed.
    GroupRenamed = 6,
    /// A member's role changed.
    RoleChanged = 7,
    /// A user's devices changed (§19.5).
    DeviceListChanged = 8,
    /// A `user_seq` that carries nothing: its update was lost in a crash and comes again later.
    Skipped = 9,
}

impl Default for UpdateKind {
    fn default() -> Self {
        UpdateKind::Message(Message::default())
    }
}

impl Wire for Update {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        self.user_seq.encode(w)?;
        self.kind.code().encode(w)?;
        w.length_prefixed("update", FRAME_BYTES_MAX, |body| {
            self.kind.encode_body(body)
        })
    }

    fn decode(r: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        let user_seq = r.wire("user_seq")?;
        let kind: u16 = r.wire("kind")?;
        let body = r.bytes_borrowed("update", FRAME_BYTES_MAX)?;
        Ok(Update {
            user_seq,
            kind: UpdateKind::decode_body(kind, body)?,
        })
    }
}
