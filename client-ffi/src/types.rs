//! The protocol's values as records and enums of the bindings, and their conversions.
//!
//! They mirror `tern_protocol`'s types field for field, with three changes for the other
//! languages: ids stay `u64` (Kotlin `ULong`, Swift `UInt64`, Python `int`: none loses a bit);
//! byte arrays that are keys or digests (a `client_msg_id`, a SHA-256) become lower-case hex
//! strings, which compare by value in every language (a Kotlin `ByteArray` does not); and an
//! update's kind is one enum whose variants carry their fields directly.

use tern_protocol::frames::{self, HistoryPage as WireHistoryPage, MediaInfo as WireMediaInfo};
use tern_protocol::types as wire;
use tern_protocol::update::UpdateKind as WireUpdateKind;

/// Who this session is.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Account {
    /// The user.
    pub user_id: u64,
    /// This device.
    pub device_id: u32,
    /// The user's name.
    pub username: String,
}

/// A user's id and name.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct UserInfo {
    /// The user.
    pub user_id: u64,
    /// Their name.
    pub username: String,
}

/// A member's role in a group; in direct conversations both are `Member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Role {
    /// May send, read, leave and rename.
    Member,
    /// May also add and remove members.
    Admin,
    /// The creator; may also make and unmake admins.
    Owner,
}

/// Direct (two users) or group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ConversationKind {
    /// Exactly two members.
    Direct,
    /// A named group with roles.
    Group,
}

/// Which watermark a receipt moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ReceiptKind {
    /// Some device of the user received the messages.
    Delivered,
    /// The user read them.
    Read,
}

/// The push service a device token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum PushPlatform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
    /// Any other service the push gateway knows by app id.
    Other,
}

/// A member of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// The member.
    pub user_id: u64,
    /// Their role.
    pub role: Role,
}

/// Media attached to a message.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Attachment {
    /// For `download` and `get_media`.
    pub media_id: u64,
    /// Size in bytes.
    pub size: u64,
    /// Media type, such as `image/jpeg`.
    pub mime: String,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// Its conversation.
    pub conversation_id: u64,
    /// Its position in the conversation: gapless from 1, the same order for every member.
    pub seq: u64,
    /// Its server-wide id, ordered by creation time.
    pub message_id: u64,
    /// Who sent it.
    pub sender: u64,
    /// From which of the sender's devices.
    pub sender_device: u32,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The sending device's idempotency key, 32 hex digits.
    pub client_msg_id: String,
    /// The text.
    pub body: String,
    /// Attached media.
    pub attachments: Vec<Attachment>,
}

/// The server's confirmation that it stored a message.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SentMessage {
    /// The conversation.
    pub conversation_id: u64,
    /// The message's idempotency key, 32 hex digits.
    pub client_msg_id: String,
    /// Its position in the conversation.
    pub seq: u64,
    /// Its server-wide id.
    pub message_id: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub ts: u64,
}

/// Everything about one conversation.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ConversationInfo {
    /// The conversation.
    pub conversation_id: u64,
    /// Direct or group.
    pub kind: ConversationKind,
    /// The group's name; empty for direct conversations.
    pub name: String,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// The `seq` of its newest message (0: none).
    pub last_seq: u64,
    /// The caller's read watermark.
    pub read_seq: u64,
    /// Messages from others above the read watermark.
    pub unread: u64,
    /// Every member with their role.
    pub members: Vec<Member>,
}

/// One line of the conversation list.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation_id: u64,
    /// Direct or group.
    pub kind: ConversationKind,
    /// The group's name; empty for direct conversations.
    pub name: String,
    /// For a direct conversation the other member; 0 for groups.
    pub peer: u64,
    /// The `seq` of its newest message.
    pub last_seq: u64,
    /// The caller's read watermark.
    pub read_seq: u64,
    /// Messages from others above the read watermark.
    pub unread: u64,
    /// The newest message, if any.
    pub last_message: Option<Message>,
}

/// A page of the conversation list.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ConversationsPage {
    /// Conversations in ascending id.
    pub conversations: Vec<ConversationSummary>,
    /// Whether more follow (ask again with `after` = the last id).
    pub has_more: bool,
}

/// A page of a conversation's messages, in ascending `seq`.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    /// The conversation.
    pub conversation_id: u64,
    /// The messages.
    pub messages: Vec<Message>,
    /// Whether older messages exist (ask again with `before` = the first `seq`).
    pub has_more: bool,
}

/// A user's presence.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Presence {
    /// The user.
    pub user_id: u64,
    /// Whether a device of theirs is connected.
    pub online: bool,
    /// When their last device disconnected (ms since the epoch); absent while online, when never
    /// seen, or when hidden.
    pub last_seen: Option<u64>,
}

/// One of the user's devices.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct DeviceInfo {
    /// The device.
    pub device_id: u32,
    /// The name given at register or login.
    pub name: String,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// When it last had a connection open.
    pub last_active_at: u64,
    /// Whether it is connected now.
    pub online: bool,
    /// Whether it is the device asking.
    pub current: bool,
}

/// A media item.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MediaInfo {
    /// Its id, to attach to a message or download.
    pub media_id: u64,
    /// Who uploaded it.
    pub uploader: u64,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub mime: String,
    /// SHA-256 of the bytes, 64 hex digits.
    pub sha256: String,
    /// When the upload began (ms since the epoch).
    pub created_at: u64,
    /// Whether the upload finished.
    pub complete: bool,
}

/// What an entry of the user's update log says happened.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum UpdateKind {
    /// A message was stored in one of the user's conversations (their own included).
    NewMessage {
        /// The message.
        message: Message,
    },
    /// A delivered or read watermark moved.
    Receipt {
        /// The conversation.
        conversation_id: u64,
        /// Whose watermark moved.
        user_id: u64,
        /// Delivered or read.
        kind: ReceiptKind,
        /// Every message with `seq <= up_to_seq` is covered.
        up_to_seq: u64,
        /// When it moved.
        ts: u64,
    },
    /// A group was created with the user in it.
    GroupCreated {
        /// The group.
        conversation_id: u64,
        /// Its creator.
        actor: u64,
        /// When.
        ts: u64,
        /// Its name.
        name: String,
        /// Its members, the creator included.
        members: Vec<Member>,
    },
    /// Members were added to a group.
    MembersAdded {
        /// The group.
        conversation_id: u64,
        /// Who added them.
        actor: u64,
        /// When.
        ts: u64,
        /// The users added.
        members: Vec<u64>,
    },
    /// A member left (`actor == user_id`) or was removed.
    MemberRemoved {
        /// The group.
        conversation_id: u64,
        /// Who removed them.
        actor: u64,
        /// When.
        ts: u64,
        /// Who is no longer a member.
        user_id: u64,
    },
    /// A group was renamed.
    GroupRenamed {
        /// The group.
        conversation_id: u64,
        /// Who renamed it.
        actor: u64,
        /// When.
        ts: u64,
        /// The new name.
        name: String,
    },
    /// A member's role changed.
    RoleChanged {
        /// The group.
        conversation_id: u64,
        /// Who changed it.
        actor: u64,
        /// When.
        ts: u64,
        /// Whose role.
        user_id: u64,
        /// The new role.
        role: Role,
    },
    /// A kind these bindings do not know; skip it.
    Unknown {
        /// The kind's code.
        code: u16,
        /// Its raw body.
        body: Vec<u8>,
    },
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

impl From<wire::Role> for Role {
    fn from(role: wire::Role) -> Role {
        match role {
            wire::Role::Member => Role::Member,
            wire::Role::Admin => Role::Admin,
            wire::Role::Owner => Role::Owner,
        }
    }
}

impl From<Role> for wire::Role {
    fn from(role: Role) -> wire::Role {
        match role {
            Role::Member => wire::Role::Member,
            Role::Admin => wire::Role::Admin,
            Role::Owner => wire::Role::Owner,
        }
    }
}

impl From<wire::ConversationKind> for ConversationKind {
    fn from(kind: wire::ConversationKind) -> ConversationKind {
        match kind {
            wire::ConversationKind::Direct => ConversationKind::Direct,
            wire::ConversationKind::Group => ConversationKind::Group,
        }
    }
}

impl From<wire::ReceiptKind> for ReceiptKind {
    fn from(kind: wire::ReceiptKind) -> ReceiptKind {
        match kind {
            wire::ReceiptKind::Delivered => ReceiptKind::Delivered,
            wire::ReceiptKind::Read => ReceiptKind::Read,
        }
    }
}

impl From<PushPlatform> for wire::PushPlatform {
    fn from(platform: PushPlatform) -> wire::PushPlatform {
        match platform {
            PushPlatform::Apns => wire::PushPlatform::Apns,
            PushPlatform::Fcm => wire::PushPlatform::Fcm,
            PushPlatform::Other => wire::PushPlatform::Other,
        }
    }
}

impl From<wire::Member> for Member {
    fn from(member: wire::Member) -> Member {
        Member {
            user_id: member.user_id,
            role: member.role.into(),
        }
    }
}

impl From<wire::Attachment> for Attachment {
    fn from(attachment: wire::Attachment) -> Attachment {
        Attachment {
            media_id: attachment.media_id,
            size: attachment.size,
            mime: attachment.mime,
        }
    }
}

impl From<wire::Message> for Message {
    fn from(message: wire::Message) -> Message {
        Message {
            conversation_id: message.conversation_id,
            seq: message.seq,
            message_id: message.message_id,
            sender: message.sender,
            sender_device: message.sender_device,
            ts: message.ts,
            client_msg_id: hex(&message.client_msg_id),
            body: message.body,
            attachments: message.attachments.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<frames::Sent> for SentMessage {
    fn from(sent: frames::Sent) -> SentMessage {
        SentMessage {
            conversation_id: sent.conversation_id,
            client_msg_id: hex(&sent.client_msg_id),
            seq: sent.seq,
            message_id: sent.message_id,
            ts: sent.ts,
        }
    }
}

impl From<wire::ConversationInfo> for ConversationInfo {
    fn from(info: wire::ConversationInfo) -> ConversationInfo {
        ConversationInfo {
            conversation_id: info.conversation_id,
            kind: info.kind.into(),
            name: info.name,
            created_at: info.created_at,
            last_seq: info.last_seq,
            read_seq: info.read_seq,
            unread: info.unread,
            members: info.members.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<wire::ConversationSummary> for ConversationSummary {
    fn from(summary: wire::ConversationSummary) -> ConversationSummary {
        ConversationSummary {
            conversation_id: summary.conversation_id,
            kind: summary.kind.into(),
            name: summary.name,
            peer: summary.peer,
            last_seq: summary.last_seq,
            read_seq: summary.read_seq,
            unread: summary.unread,
            last_message: summary.last_message.map(Into::into),
        }
    }
}

impl From<frames::Conversations> for ConversationsPage {
    fn from(page: frames::Conversations) -> ConversationsPage {
        ConversationsPage {
            conversations: page.conversations.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }
    }
}

impl From<WireHistoryPage> for HistoryPage {
    fn from(page: WireHistoryPage) -> HistoryPage {
        HistoryPage {
            conversation_id: page.conversation_id,
            messages: page.messages.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }
    }
}

impl From<wire::Presence> for Presence {
    fn from(presence: wire::Presence) -> Presence {
        Presence {
            user_id: presence.user_id,
            online: presence.online,
            last_seen: presence.last_seen,
        }
    }
}

impl From<wire::DeviceInfo> for DeviceInfo {
    fn from(device: wire::DeviceInfo) -> DeviceInfo {
        DeviceInfo {
            device_id: device.device_id,
            name: device.name,
            created_at: device.created_at,
            last_active_at: device.last_active_at,
            online: device.online,
            current: device.current,
        }
    }
}

impl From<frames::UserInfo> for UserInfo {
    fn from(user: frames::UserInfo) -> UserInfo {
        UserInfo {
            user_id: user.user_id,
            username: user.username,
        }
    }
}

impl From<WireMediaInfo> for MediaInfo {
    fn from(info: WireMediaInfo) -> MediaInfo {
        MediaInfo {
            media_id: info.media_id,
            uploader: info.uploader,
            size: info.size,
            mime: info.mime,
            sha256: hex(&info.sha256),
            created_at: info.created_at,
            complete: info.complete,
        }
    }
}

impl From<WireUpdateKind> for UpdateKind {
    fn from(kind: WireUpdateKind) -> UpdateKind {
        match kind {
            WireUpdateKind::Message(message) => UpdateKind::NewMessage {
                message: message.into(),
            },
            WireUpdateKind::Receipt(r) => UpdateKind::Receipt {
                conversation_id: r.conversation_id,
                user_id: r.user_id,
                kind: r.kind.into(),
                up_to_seq: r.up_to_seq,
                ts: r.ts,
            },
            WireUpdateKind::GroupCreated(g) => UpdateKind::GroupCreated {
                conversation_id: g.conversation_id,
                actor: g.actor,
                ts: g.ts,
                name: g.name,
                members: g.members.into_iter().map(Into::into).collect(),
            },
            WireUpdateKind::MembersAdded(m) => UpdateKind::MembersAdded {
                conversation_id: m.conversation_id,
                actor: m.actor,
                ts: m.ts,
                members: m.members,
            },
            WireUpdateKind::MemberRemoved(m) => UpdateKind::MemberRemoved {
                conversation_id: m.conversation_id,
                actor: m.actor,
                ts: m.ts,
                user_id: m.user_id,
            },
            WireUpdateKind::GroupRenamed(g) => UpdateKind::GroupRenamed {
                conversation_id: g.conversation_id,
                actor: g.actor,
                ts: g.ts,
                name: g.name,
            },
            WireUpdateKind::RoleChanged(r) => UpdateKind::RoleChanged {
                conversation_id: r.conversation_id,
                actor: r.actor,
                ts: r.ts,
                user_id: r.user_id,
                role: r.role.into(),
            },
            WireUpdateKind::Unknown(u) => UpdateKind::Unknown {
                code: u.kind,
                body: u.body,
            },
            // A kind the protocol crate added after these bindings: skipped like an unknown one.
            other => UpdateKind::Unknown {
                code: other.code(),
                body: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves hex is lower-case, two digits a byte, leading zeros kept.
    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    // Proves ids keep all 64 bits through the conversion.
    #[test]
    fn ids_keep_every_bit() {
        let message = Message::from(wire::Message {
            conversation_id: u64::MAX,
            seq: u64::MAX - 1,
            message_id: 1 << 63,
            sender: u64::MAX - 2,
            ..wire::Message::default()
        });
        assert_eq!(message.conversation_id, u64::MAX);
        assert_eq!(message.seq, u64::MAX - 1);
        assert_eq!(message.message_id, 1 << 63);
        assert_eq!(message.sender, u64::MAX - 2);
        assert_eq!(message.client_msg_id, "0".repeat(32));
    }
}
