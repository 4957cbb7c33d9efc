//! Structures and enums that appear inside frames: members, messages, conversations, presence,
//! devices and the server's announced limits.
//!
//! Structures inside lists never grow in later versions (their items have no length prefix to skip
//! by); a version that needs more defines a new frame type instead. Enum values outside the lists
//! below decode as `MALFORMED`, and new values only come with a new protocol version.

use crate::limits::*;
use crate::{wire_enum, wire_struct};

/// A user id: server-assigned, never 0, never reused.
pub type UserId = u64;
/// A device id: server-assigned per user, never 0, never reused for that user.
pub type DeviceId = u32;
/// A conversation id (direct or group): server-assigned, never 0.
pub type ConversationId = u64;
/// A message id: unique across the server and ordered by creation time. Clients treat it as opaque.
pub type MessageId = u64;
/// A media id: server-assigned, never 0.
pub type MediaId = u64;
/// Milliseconds since the Unix epoch, UTC.
pub type TimestampMs = u64;
/// The client's idempotency key for a `Send`: 16 bytes, random (a UUIDv4 or v7 is a good choice).
pub type ClientMsgId = [u8; CLIENT_MSG_ID_BYTES];
/// A resume token: 32 random bytes, issued once by `Register` or `Login`.
pub type Token = [u8; TOKEN_BYTES];

wire_enum! {
    /// Whether a conversation is between two users or a group.
    pub enum ConversationKind {
        /// Exactly two members, created by `OpenDirect`; no roles, no name, no membership changes.
        #[default]
        Direct = 1,
        /// A named group with roles, created by `CreateGroup`.
        Group = 2,
    }
}

wire_enum! {
    /// A member's role in a group. In direct conversations both members are `Member`.
    pub enum Role {
        /// May send, read, leave and rename.
        #[default]
        Member = 1,
        /// May also add and remove members (but not the owner or other admins).
        Admin = 2,
        /// The creator: everything an admin may, and also make or unmake admins. One per group.
        Owner = 3,
    }
}

wire_enum! {
    /// Which watermark a receipt moves.
    pub enum ReceiptKind {
        /// At least one device of the user has received (acknowledged) messages up to `up_to_seq`.
        #[default]
        Delivered = 1,
        /// The user has read messages up to `up_to_seq` (`MarkRead`).
        Read = 2,
    }
}

wire_enum! {
    /// The push service a device's token belongs to.
    pub enum PushPlatform {
        /// Apple Push Notification service.
        Apns = 1,
        /// Firebase Cloud Messaging.
        Fcm = 2,
        /// Any other service the push gateway knows by `app_id` (Web Push, a UnifiedPush distributor).
        #[default]
        Other = 3,
    }
}

wire_struct! {
    /// The limits a server enforces, announced in `Welcome`. Each is at most the protocol maximum.
    pub struct ServerLimits {
        /// Largest frame the server accepts, length field included.
        pub frame_bytes_max: u32 => wire,
        /// Longest message body, in characters.
        pub body_chars_max: u32 => wire,
        /// Most members a group may have.
        pub group_members_max: u32 => wire,
        /// Most devices a user may have.
        pub devices_per_user_max: u32 => wire,
        /// Most updates in one `SyncPage`.
        pub sync_page_updates_max: u32 => wire,
        /// Most messages in one `HistoryPage`.
        pub history_page_messages_max: u32 => wire,
        /// Most data bytes in one `UploadChunk` or `MediaData`.
        pub media_chunk_bytes_max: u32 => wire,
        /// Largest media upload, in bytes.
        pub media_bytes_max: u64 => wire,
        /// How often the client should send `Ping` when it has nothing else to send.
        pub heartbeat_interval_ms: u32 => wire,
        /// The server closes a connection that sends nothing for this long.
        pub idle_timeout_ms: u32 => wire,
    }
}

wire_struct! {
    /// One of the caller's devices, as listed by `ListDevices`.
    pub struct DeviceInfo {
        /// The device's id.
        pub device_id: DeviceId => wire,
        /// The name given at register or login.
        pub name: String => str(DEVICE_NAME_BYTES_MAX),
        /// When the device was created.
        pub created_at: TimestampMs => wire,
        /// When the device last authenticated or acknowledged updates (a `Resume` within a
        /// minute of it may leave it as it is).
        pub last_active_at: TimestampMs => wire,
        /// Whether the device has a connection open now.
        pub online: bool => wire,
        /// Whether this is the device asking.
        pub current: bool => wire,
    }
}

wire_struct! {
    /// A member of a conversation and their role.
    pub struct Member {
        /// The member.
        pub user_id: UserId => wire,
        /// Their role.
        pub role: Role => wire,
    }
}

wire_struct! {
    /// A media reference inside a message, filled in by the server from the upload's metadata.
    pub struct Attachment {
        /// The media id, for `GetMedia` and `Download`.
        pub media_id: MediaId => wire,
        /// Size in bytes.
        pub size: u64 => wire,
        /// Media type, such as `image/jpeg`.
        pub mime: String => str(MIME_BYTES_MAX),
    }
}

wire_struct! {
    /// A stored message.
    pub struct Message {
        /// The conversation it belongs to.
        pub conversation_id: ConversationId => wire,
        /// Its position in the conversation: gapless from 1, one order for every member.
        pub seq: u64 => wire,
        /// Its server-wide id.
        pub message_id: MessageId => wire,
        /// Who sent it.
        pub sender: UserId => wire,
        /// From which of the sender's devices.
        pub sender_device: DeviceId => wire,
        /// When the server stored it.
        pub ts: TimestampMs => wire,
        /// The sender device's idempotency key.
        pub client_msg_id: ClientMsgId => wire,
        /// The text; opaque to the server beyond UTF-8 and its length.
        pub body: String => text(BODY_CHARS_MAX),
        /// Attached media.
        pub attachments: Vec<Attachment> => list(ATTACHMENTS_PER_MESSAGE_MAX),
    }
}

wire_struct! {
    /// Everything about one conversation, as `GetConversation`, `OpenDirect` and `CreateGroup` return.
    pub struct ConversationInfo {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// Direct or group.
        pub kind: ConversationKind => wire,
        /// The group's name; empty for direct conversations.
        pub name: String => str(GROUP_NAME_BYTES_MAX),
        /// When it was created.
        pub created_at: TimestampMs => wire,
        /// The `seq` of its newest message (0 when it has none).
        pub last_seq: u64 => wire,
        /// The caller's read watermark.
        pub read_seq: u64 => wire,
        /// Messages from others above the caller's read watermark.
        pub unread: u64 => wire,
        /// Every member with their role.
        pub members: Vec<Member> => list(GROUP_MEMBERS_MAX),
    }
}

wire_struct! {
    /// One line of the caller's conversation list.
    pub struct ConversationSummary {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// Direct or group.
        pub kind: ConversationKind => wire,
        /// The group's name; empty for direct conversations.
        pub name: String => str(GROUP_NAME_BYTES_MAX),
        /// For a direct conversation, the other member; 0 for groups.
        pub peer: UserId => wire,
        /// The `seq` of its newest message.
        pub last_seq: u64 => wire,
        /// The caller's read watermark.
        pub read_seq: u64 => wire,
        /// Messages from others above the caller's read watermark.
        pub unread: u64 => wire,
        /// The newest message, if any.
        pub last_message: Option<Message> => opt,
    }
}

wire_struct! {
    /// A user's presence.
    pub struct Presence {
        /// The user.
        pub user_id: UserId => wire,
        /// Whether at least one of their devices is connected.
        pub online: bool => wire,
        /// When their last device disconnected; absent while online, when never seen, or when the
        /// user hides it.
        pub last_seen: Option<TimestampMs> => opt,
    }
}
