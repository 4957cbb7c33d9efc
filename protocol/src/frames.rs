//! Every frame body of protocol v1, and [`Body`], the enum of them keyed by frame type.
//!
//! Frame types are split in three ranges so a reader can tell direction from the number alone:
//! `0x0001..=0x3FFF` requests (client to server), `0x4000..=0x7FFF` replies (server to client, with
//! the request's id), `0x8000..=0xFFFF` events (server to client, request id 0). Two requests,
//! `Ack` and `Typing`, are notifications: they get no reply unless they fail.

use crate::codec::{Reader, Wire, Writer};
use crate::e2e::*;
use crate::error::{DecodeError, EncodeError, ErrorCode};
use crate::limits::*;
use crate::types::*;
use crate::update::Update;
use crate::wire_struct;

// ---------------------------------------------------------------- session

wire_struct! {
    /// The first frame of every connection: the range of versions the client speaks.
    pub struct Hello {
        /// Lowest version the client speaks.
        pub min_version: u16 => wire,
        /// Highest version the client speaks.
        pub max_version: u16 => wire,
        /// The client software's name and version, for logs (`"tern-ios/2.3.1"`).
        pub client_name: String => str(SOFTWARE_NAME_BYTES_MAX),
    }
}

wire_struct! {
    /// The answer to `Hello`: the version chosen (the highest both speak) and the server's limits.
    pub struct Welcome {
        /// The version for the rest of the connection.
        pub version: u16 => wire,
        /// The server software's name and version.
        pub server_name: String => str(SOFTWARE_NAME_BYTES_MAX),
        /// The server's clock, so a client can correct its own when showing times.
        pub server_time_ms: TimestampMs => wire,
        /// The limits this server enforces.
        pub limits: ServerLimits => wire,
    }
}

wire_struct! {
    /// A heartbeat; the server answers `Pong` with the same nonce.
    pub struct Ping {
        /// Any value; echoed.
        pub nonce: u64 => wire,
    }
}

wire_struct! {
    /// The answer to `Ping`.
    pub struct Pong {
        /// The nonce of the `Ping`.
        pub nonce: u64 => wire,
    }
}

wire_struct! {
    /// The server is shutting down or moving this client: finish in-flight work and reconnect.
    pub struct GoAway {
        /// Wait at least this long before reconnecting (the server spreads reconnects with it).
        pub reconnect_after_ms: u32 => wire,
        /// Why, for logs.
        pub message: String => str(ERROR_MESSAGE_BYTES_MAX),
    }
}

wire_struct! {
    /// A request failed (request id set), or the connection failed (request id 0).
    pub struct Error {
        /// What went wrong; the spec's table says whether the connection closes after it.
        pub code: ErrorCode => wire,
        /// For `RATE_LIMITED`, when to try again; otherwise 0.
        pub retry_after_ms: u32 => wire,
        /// A human-readable explanation, for logs; never parse it.
        pub message: String => str(ERROR_MESSAGE_BYTES_MAX),
    }
}

impl Wire for ErrorCode {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        self.0.encode(w)
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok(ErrorCode(r.wire(field)?))
    }
}

wire_struct! {
    /// A request succeeded and has nothing else to say.
    pub struct Ok {}
}

// ---------------------------------------------------------------- accounts

wire_struct! {
    /// Creates an account and its first device, and authenticates the connection as that device.
    pub struct Register {
        /// 3 to 32 characters of `a-z`, `0-9`, `_`, `.` and `-`; unique.
        pub username: String => str(USERNAME_BYTES_MAX),
        /// At least 8 bytes.
        pub password: String => str(PASSWORD_BYTES_MAX),
        /// A name for the new device (`"Pixel 9"`), shown by `ListDevices`.
        pub device_name: String => str(DEVICE_NAME_BYTES_MAX),
    }
}

wire_struct! {
    /// Authenticates with a password, creating a new device.
    pub struct Login {
        /// The account's username.
        pub username: String => str(USERNAME_BYTES_MAX),
        /// Its password.
        pub password: String => str(PASSWORD_BYTES_MAX),
        /// A name for the new device.
        pub device_name: String => str(DEVICE_NAME_BYTES_MAX),
    }
}

wire_struct! {
    /// Authenticates as an existing device with the token `Register` or `Login` issued to it.
    pub struct Resume {
        /// The device's token.
        pub token: Token => wire,
    }
}

wire_struct! {
    /// The connection is now authenticated as this user and device.
    pub struct Authenticated {
        /// The user.
        pub user_id: UserId => wire,
        /// The device.
        pub device_id: DeviceId => wire,
        /// The user's username.
        pub username: String => str(USERNAME_BYTES_MAX),
        /// The device's resume token: present after `Register` and `Login` (store it; it is never
        /// shown again), absent after `Resume`.
        pub token: Option<Token> => opt,
    }
}

wire_struct! {
    /// Revokes the current device's token and ends the session (the server replies `Ok`, then closes).
    pub struct Logout {}
}

wire_struct! {
    /// Lists the caller's devices.
    pub struct ListDevices {}
}

wire_struct! {
    /// The caller's devices.
    pub struct Devices {
        /// Every device of the caller.
        pub devices: Vec<DeviceInfo> => list(DEVICES_PER_USER_MAX),
    }
}

wire_struct! {
    /// Revokes one of the caller's devices: its token stops working and its connections close.
    pub struct RevokeDevice {
        /// The device to revoke.
        pub device_id: DeviceId => wire,
    }
}

wire_struct! {
    /// Finds a user by username.
    pub struct LookupUser {
        /// The username.
        pub username: String => str(USERNAME_BYTES_MAX),
    }
}

wire_struct! {
    /// A user.
    pub struct UserInfo {
        /// Their id.
        pub user_id: UserId => wire,
        /// Their username.
        pub username: String => str(USERNAME_BYTES_MAX),
    }
}

wire_struct! {
    /// Finds users by id: the names to show for the ids in messages, members and conversations.
    pub struct GetUsers {
        /// The ids.
        pub user_ids: Vec<UserId> => list(USERS_PER_REQUEST_MAX),
    }
}

wire_struct! {
    /// The users of a `GetUsers` that exist, in the order asked.
    pub struct Users {
        /// The users found.
        pub users: Vec<UserInfo> => list(USERS_PER_REQUEST_MAX),
    }
}

// ---------------------------------------------------------------- messages, sync, history

wire_struct! {
    /// Sends a message. Idempotent per (device, `client_msg_id`): a repeat returns the first `Sent`.
    pub struct Send {
        /// The conversation; the caller must be a member.
        pub conversation_id: ConversationId => wire,
        /// The idempotency key.
        pub client_msg_id: ClientMsgId => wire,
        /// The text.
        pub body: String => text(BODY_CHARS_MAX),
        /// Completed uploads of the caller's to attach.
        pub attachments: Vec<MediaId> => list(ATTACHMENTS_PER_MESSAGE_MAX),
    }
}

wire_struct! {
    /// The message is durable: it survives a crash of the server from now on.
    pub struct Sent {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// The idempotency key of the `Send`.
        pub client_msg_id: ClientMsgId => wire,
        /// The message's `seq` in the conversation.
        pub seq: u64 => wire,
        /// The message's id.
        pub message_id: MessageId => wire,
        /// When it was stored.
        pub ts: TimestampMs => wire,
    }
}

wire_struct! {
    /// Asks for the caller's updates after `since`, one page at a time. The reply that has
    /// `has_more == false` also turns on live `UpdateEvent`s for this connection.
    pub struct Sync {
        /// The device's cursor: the highest `user_seq` it has processed (0 for none).
        pub since: u64 => wire,
        /// Most updates wanted; 0 means the server's maximum.
        pub limit: u32 => wire,
    }
}

wire_struct! {
    /// A page of updates in `user_seq` order, every one above the `Sync`'s `since`.
    pub struct SyncPage {
        /// The updates.
        pub updates: Vec<Update> => list(SYNC_PAGE_UPDATES_MAX),
        /// Whether more updates follow: ask again with `since` = the last `user_seq` here.
        pub has_more: bool => wire,
        /// The newest `user_seq` in the caller's log when the page was made.
        pub head: u64 => wire,
    }
}

wire_struct! {
    /// The device has processed every update up to `up_to` and need not be sent them again. Moves
    /// the device's cursor and, for messages, the user's delivered watermark. A notification.
    pub struct Ack {
        /// The highest `user_seq` processed.
        pub up_to: u64 => wire,
    }
}

wire_struct! {
    /// Asks for a page of a conversation's messages, oldest first within the page. Without `after`
    /// it pages backwards from `before` (the newest messages below it); with `after` it pages
    /// forwards (the oldest messages above it), which lets a client read on from a search hit, a
    /// quoted message or the first unread one.
    pub struct History {
        /// The conversation; the caller must be a member.
        pub conversation_id: ConversationId => wire,
        /// Only messages with `seq < before`; 0 means no upper bound (from the newest).
        pub before: u64 => wire,
        /// Most messages wanted; 0 means the server's maximum.
        pub limit: u32 => wire,
        /// Revision 1.1: page forwards, with the messages that have `seq > after` (0: from the
        /// first message). Absent pages backwards, as in 1.0. An appended option: left out of the
        /// body when absent, so such a `History` is byte for byte a 1.0 one.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        pub after: Option<u64> => appended_opt,
    }
}

wire_struct! {
    /// Messages in ascending `seq`: the newest ones below `before`, or with `after`, the oldest
    /// ones above it.
    pub struct HistoryPage {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// The messages.
        pub messages: Vec<Message> => list(HISTORY_PAGE_MESSAGES_MAX),
        /// Whether more messages follow in the direction of paging: older ones (ask again with
        /// `before` = the first `seq` here), or with `after`, newer ones in range (ask again with
        /// `after` = the last `seq` here).
        pub has_more: bool => wire,
        /// Revision 1.1: the request's `after`, present exactly when the page was read forwards.
        /// A server older than 1.1 ignores `after` and pages backwards, and its page lacks this
        /// field: that is how a client tells the two apart.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        pub after: Option<u64> => appended_opt,
    }
}

wire_struct! {
    /// Moves the caller's read watermark (never backwards) and tells the senders.
    pub struct MarkRead {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// Every message with `seq <= up_to_seq` is read.
        pub up_to_seq: u64 => wire,
    }
}

wire_struct! {
    /// The caller started or stopped typing. Ephemeral: never stored or synced. A notification.
    pub struct Typing {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// Started (`true`) or stopped.
        pub active: bool => wire,
    }
}

wire_struct! {
    /// Someone in one of the caller's conversations started or stopped typing.
    pub struct TypingEvent {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
        /// Who.
        pub user_id: UserId => wire,
        /// Started or stopped. Clients expire a `true` after 10 seconds without a repeat.
        pub active: bool => wire,
    }
}

wire_struct! {
    /// A live update, sent once the connection has finished `Sync`.
    pub struct UpdateEvent {
        /// The update.
        pub update: Update => wire,
    }
}

// ---------------------------------------------------------------- conversations and groups

wire_struct! {
    /// Finds or creates the direct conversation between the caller and another user.
    pub struct OpenDirect {
        /// The other user (not the caller).
        pub user_id: UserId => wire,
        /// Create it encrypted end to end, if it does not exist yet (§19.7). Appended to the version-1
        /// body: written only when true, read as false from a body that ends before it.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "crate::codec::is_false"))]
        pub encrypted: bool => tail_flag,
    }
}

wire_struct! {
    /// Asks for one conversation the caller is in.
    pub struct GetConversation {
        /// The conversation.
        pub conversation_id: ConversationId => wire,
    }
}

wire_struct! {
    /// One conversation.
    pub struct Conversation {
        /// Its state.
        pub conversation: ConversationInfo => wire,
        /// Whether the conversation is encrypted end to end (§19.7). Appended to the version-1
        /// body: written only when true, read as false from a body that ends before it.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "crate::codec::is_false"))]
        pub encrypted: bool => tail_flag,
    }
}

wire_struct! {
    /// Asks for the caller's conversations in ascending id order, one page at a time.
    pub struct ListConversations {
        /// Only conversations with an id above this; 0 for the first page.
        pub after: ConversationId => wire,
        /// Most conversations wanted; 0 means the server's maximum.
        pub limit: u32 => wire,
    }
}

wire_struct! {
    /// A page of the caller's conversations.
    pub struct Conversations {
        /// The conversations.
        pub conversations: Vec<ConversationSummary> => list(CONVERSATIONS_PAGE_MAX),
        /// Whether more follow: ask again with `after` = the last id here.
        pub has_more: bool => wire,
    }
}

wire_struct! {
    /// Creates a group owned by the caller.
    pub struct CreateGroup {
        /// Its name (1 to 128 bytes).
        pub name: String => str(GROUP_NAME_BYTES_MAX),
        /// The other initial members (the caller is added as owner).
        pub members: Vec<UserId> => list(GROUP_MEMBERS_MAX),
        /// Create the group encrypted end to end (§19.7). Appended to the version-1
        /// body: written only when true, read as false from a body that ends before it.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "crate::codec::is_false"))]
        pub encrypted: bool => tail_flag,
    }
}

wire_struct! {
    /// Adds members to a group. Admins and the owner only.
    pub struct AddMembers {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// The users to add; ones already members are skipped.
        pub members: Vec<UserId> => list(GROUP_MEMBERS_MAX),
    }
}

wire_struct! {
    /// Removes a member from a group. Admins and the owner only; only the owner removes admins.
    pub struct RemoveMember {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// The member to remove.
        pub user_id: UserId => wire,
    }
}

wire_struct! {
    /// The caller leaves a group. An owner who leaves hands ownership to the longest-standing admin,
    /// or else member.
    pub struct LeaveGroup {
        /// The group.
        pub conversation_id: ConversationId => wire,
    }
}

wire_struct! {
    /// Renames a group. Any member.
    pub struct RenameGroup {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// The new name (1 to 128 bytes).
        pub name: String => str(GROUP_NAME_BYTES_MAX),
    }
}

wire_struct! {
    /// Changes a member's role. The owner only; `Owner` transfers ownership (the caller becomes admin).
    pub struct SetRole {
        /// The group.
        pub conversation_id: ConversationId => wire,
        /// The member.
        pub user_id: UserId => wire,
        /// The new role.
        pub role: Role => wire,
    }
}

// ---------------------------------------------------------------- presence

wire_struct! {
    /// Subscribes to users' presence. Each must share a conversation with the caller.
    pub struct SubscribePresence {
        /// The users.
        pub users: Vec<UserId> => list(PRESENCE_USERS_MAX),
    }
}

wire_struct! {
    /// The current presence of users subscribed to.
    pub struct PresenceList {
        /// One entry per user, in the request's order.
        pub presences: Vec<Presence> => list(PRESENCE_USERS_MAX),
    }
}

wire_struct! {
    /// Ends presence subscriptions on this connection.
    pub struct UnsubscribePresence {
        /// The users.
        pub users: Vec<UserId> => list(PRESENCE_USERS_MAX),
    }
}

wire_struct! {
    /// A subscribed user's presence changed.
    pub struct PresenceEvent {
        /// Their presence now.
        pub presence: Presence => wire,
    }
}

wire_struct! {
    /// Sets whether others see the caller's last-seen time.
    pub struct SetPrivacy {
        /// Hide it (`true`) or show it.
        pub hide_last_seen: bool => wire,
    }
}

// ---------------------------------------------------------------- push

wire_struct! {
    /// Sets the current device's push token, replacing any earlier one.
    pub struct RegisterPushToken {
        /// The push service.
        pub platform: PushPlatform => wire,
        /// The app id the push gateway knows the app by.
        pub app_id: String => str(PUSH_APP_ID_BYTES_MAX),
        /// The token (pushkey).
        pub token: String => str(PUSH_TOKEN_BYTES_MAX),
    }
}

wire_struct! {
    /// Removes the current device's push token.
    pub struct UnregisterPushToken {}
}

// ---------------------------------------------------------------- media

wire_struct! {
    /// Starts an upload.
    pub struct UploadBegin {
        /// Total size in bytes (1 up to the server's `media_bytes_max`).
        pub size: u64 => wire,
        /// Media type.
        pub mime: String => str(MIME_BYTES_MAX),
        /// SHA-256 of the whole content, checked by `UploadFinish`.
        pub sha256: [u8; 32] => wire,
    }
}

wire_struct! {
    /// Asks how much of an unfinished upload the server holds, to resume it.
    pub struct UploadStatus {
        /// The upload.
        pub media_id: MediaId => wire,
    }
}

wire_struct! {
    /// Appends bytes to an upload. `offset` must equal the bytes received so far.
    pub struct UploadChunk {
        /// The upload.
        pub media_id: MediaId => wire,
        /// Where the data goes.
        pub offset: u64 => wire,
        /// At most `media_chunk_bytes_max` bytes.
        pub data: Vec<u8> => bytes(MEDIA_CHUNK_BYTES_MAX),
    }
}

wire_struct! {
    /// An upload's progress.
    pub struct UploadState {
        /// The upload.
        pub media_id: MediaId => wire,
        /// Its total size.
        pub size: u64 => wire,
        /// Bytes received so far: the next chunk's offset.
        pub received: u64 => wire,
    }
}

wire_struct! {
    /// Completes an upload once every byte is in; the server checks the SHA-256.
    pub struct UploadFinish {
        /// The upload.
        pub media_id: MediaId => wire,
    }
}

wire_struct! {
    /// Asks for a media item's metadata.
    pub struct GetMedia {
        /// The media.
        pub media_id: MediaId => wire,
    }
}

wire_struct! {
    /// A media item's metadata.
    pub struct MediaInfo {
        /// The media.
        pub media_id: MediaId => wire,
        /// Who uploaded it.
        pub uploader: UserId => wire,
        /// Size in bytes.
        pub size: u64 => wire,
        /// Media type.
        pub mime: String => str(MIME_BYTES_MAX),
        /// SHA-256 of the content.
        pub sha256: [u8; 32] => wire,
        /// When the upload began.
        pub created_at: TimestampMs => wire,
        /// Whether `UploadFinish` succeeded.
        pub complete: bool => wire,
    }
}

wire_struct! {
    /// Reads a byte range of a completed media item.
    pub struct Download {
        /// The media.
        pub media_id: MediaId => wire,
        /// First byte wanted.
        pub offset: u64 => wire,
        /// Bytes wanted (at most `media_chunk_bytes_max`).
        pub length: u32 => wire,
    }
}

wire_struct! {
    /// A byte range of media: shorter than asked at the end, empty at or past the end.
    pub struct MediaData {
        /// The media.
        pub media_id: MediaId => wire,
        /// Where `data` starts.
        pub offset: u64 => wire,
        /// The bytes.
        pub data: Vec<u8> => bytes(MEDIA_CHUNK_BYTES_MAX),
    }
}

// ---------------------------------------------------------------- end-to-end encryption (§19)

wire_struct! {
    /// Publishes the calling device's identity, one-time and fallback keys; empty, asks the counts.
    pub struct PublishKeys {
        /// The identity keys: required with the first keys, then optional (and unchanged).
        pub identity: Option<Box<DeviceKeys>> => opt,
        /// One-time keys to add.
        pub one_time_keys: Vec<SignedKey> => list(ONE_TIME_KEYS_PER_DEVICE_MAX),
        /// A new fallback key.
        pub fallback_key: Option<Box<SignedKey>> => opt,
    }
}

wire_struct! {
    /// The calling device's keys in the directory.
    pub struct KeysPublished {
        /// One-time keys not yet claimed.
        pub one_time_keys_left: u32 => wire,
        /// Whether the fallback key was handed out since it was published (or there is none).
        pub fallback_key_used: bool => wire,
    }
}

wire_struct! {
    /// Lists users' devices and identity keys.
    pub struct GetDeviceKeys {
        /// The users.
        pub user_ids: Vec<UserId> => list(KEY_QUERY_USERS_MAX),
    }
}

wire_struct! {
    /// The devices of the users of a `GetDeviceKeys` that exist, in the order asked.
    pub struct DeviceKeysList {
        /// One entry per user.
        pub users: Vec<UserDeviceKeys> => list(KEY_QUERY_USERS_MAX),
    }
}

wire_struct! {
    /// Takes one key of each device: a one-time key, or the fallback key when none is left.
    pub struct ClaimKeys {
        /// The devices.
        pub devices: Vec<DeviceAddress> => list(KEY_CLAIMS_MAX),
    }
}

wire_struct! {
    /// The keys claimed, one per device that had one.
    pub struct ClaimedKeys {
        /// The keys.
        pub keys: Vec<ClaimedKey> => list(KEY_CLAIMS_MAX),
    }
}

wire_struct! {
    /// A claim took one of this device's keys.
    pub struct KeyCountEvent {
        /// One-time keys not yet claimed.
        pub one_time_keys_left: u32 => wire,
        /// Whether the fallback key was handed out since it was published (or there is none).
        pub fallback_key_used: bool => wire,
    }
}

wire_struct! {
    /// Queues payloads for devices.
    pub struct SendToDevice {
        /// The messages.
        pub messages: Vec<ToDeviceOut> => list(TO_DEVICE_MESSAGES_PER_REQUEST_MAX),
    }
}

wire_struct! {
    /// Every message of a `SendToDevice` is queued and durable, except for these recipients.
    pub struct ToDeviceSent {
        /// Recipients for which nothing was queued: unknown, revoked, or with a full queue.
        pub undelivered: Vec<DeviceAddress> => list(TO_DEVICE_MESSAGES_PER_REQUEST_MAX),
    }
}

wire_struct! {
    /// Acknowledges to-device messages up to `since` and asks for those after it.
    pub struct ToDeviceSync {
        /// The highest to-device `seq` processed (0 for none).
        pub since: u64 => wire,
        /// Most messages wanted; 0 means the maximum.
        pub limit: u32 => wire,
    }
}

wire_struct! {
    /// A page of the device's to-device messages; with `has_more == false` the connection
    /// receives new ones as `ToDeviceEvent`s.
    pub struct ToDevicePage {
        /// The messages after `since`, ascending.
        pub messages: Vec<ToDeviceMessage> => list(TO_DEVICE_PAGE_MESSAGES_MAX),
        /// Whether more follow.
        pub has_more: bool => wire,
        /// One-time keys of the device not yet claimed.
        pub one_time_keys_left: u32 => wire,
        /// Whether its fallback key was handed out since it was published (or there is none).
        pub fallback_key_used: bool => wire,
    }
}

wire_struct! {
    /// The device processed its to-device messages up to `up_to`: delete them. A notification.
    pub struct ToDeviceAck {
        /// The highest to-device `seq` processed.
        pub up_to: u64 => wire,
    }
}

wire_struct! {
    /// A new to-device message for this device.
    pub struct ToDeviceEvent {
        /// The message.
        pub message: ToDeviceMessage => wire,
    }
}

wire_struct! {
    /// Stores encrypted backup entries, replacing those with the same ids.
    pub struct PutBackup {
        /// The entries.
        pub entries: Vec<BackupEntry> => list(BACKUP_ENTRIES_PER_REQUEST_MAX),
    }
}

wire_struct! {
    /// Pages through the caller's backup entries in ascending id.
    pub struct GetBackup {
        /// Only entries with an id above this (all zero for the first page).
        pub after: [u8; 32] => wire,
        /// Most entries wanted; 0 means the maximum.
        pub limit: u32 => wire,
    }
}

wire_struct! {
    /// A page of backup entries.
    pub struct BackupPage {
        /// The entries.
        pub entries: Vec<BackupEntry> => list(BACKUP_ENTRIES_PER_REQUEST_MAX),
        /// Whether more follow: ask again with `after` = the last id here.
        pub has_more: bool => wire,
    }
}

wire_struct! {
    /// Deletes every backup entry of the caller's.
    pub struct DeleteBackup {}
}

// ---------------------------------------------------------------- the table

/// Which way a frame type travels, from its number's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `0x0001..=0x3FFF`: client to server.
    Request,
    /// `0x4000..=0x7FFF`: server to client, answering a request.
    Reply,
    /// `0x8000..=0xFFFF`: server to client, unprompted.
    Event,
}

impl Direction {
    /// The direction of a frame type number (type 0 is reserved and reads as a request).
    pub fn of(frame_type: u16) -> Direction {
        match frame_type {
            0x0000..=0x3FFF => Direction::Request,
            0x4000..=0x7FFF => Direction::Reply,
            _ => Direction::Event,
        }
    }
}

macro_rules! frames {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, )*) => {
        /// A frame's body: one variant per frame type.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[non_exhaustive]
        pub enum Body {
            $( $(#[$doc])* $name($name), )*
        }

        /// Frame type numbers, by frame name.
        pub mod frame_type {
            $( #[doc = concat!("The type number of `", stringify!($name), "`.")]
               #[allow(non_upper_case_globals)]
               pub const $name: u16 = $code; )*

            /// Every frame type this version defines, with its name, in table order.
            pub const ALL: &[(u16, &str)] = &[$(($code, stringify!($name))),*];
        }

        impl Body {
            /// The frame type number.
            pub fn frame_type(&self) -> u16 {
                match self {
                    $( Body::$name(_) => $code, )*
                }
            }

            /// The frame type's name as the spec writes it.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Body::$name(_) => stringify!($name), )*
                }
            }

            pub(crate) fn encode_fields(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
                match self {
                    $( Body::$name(v) => v.encode(w), )*
                }
            }

            pub(crate) fn decode_fields(frame_type: u16, r: &mut Reader<'_>) -> Result<Body, DecodeError> {
                Ok(match frame_type {
                    $( $code => Body::$name(r.wire(stringify!($name))?), )*
                    _ => return Err(DecodeError::UnknownType { frame_type }),
                })
            }
        }

        $(
            impl From<$name> for Body {
                fn from(v: $name) -> Body {
                    Body::$name(v)
                }
            }
        )*
    };
}

frames! {
    /// Request: open the session.
    Hello = 0x0001,
    /// Request: heartbeat.
    Ping = 0x0002,
    /// Request: create an account.
    Register = 0x0010,
    /// Request: log in with a password.
    Login = 0x0011,
    /// Request: resume with a token.
    Resume = 0x0012,
    /// Request: revoke this device and end the session.
    Logout = 0x0013,
    /// Request: list devices.
    ListDevices = 0x0014,
    /// Request: revoke a device.
    RevokeDevice = 0x0015,
    /// Request: find a user by name.
    LookupUser = 0x0016,
    /// Request: find users by id.
    GetUsers = 0x0017,
    /// Request: send a message.
    Send = 0x0020,
    /// Request: fetch updates.
    Sync = 0x0021,
    /// Notification: acknowledge updates.
    Ack = 0x0022,
    /// Request: page through a conversation's messages.
    History = 0x0023,
    /// Request: move the read watermark.
    MarkRead = 0x0024,
    /// Notification: typing started or stopped.
    Typing = 0x0025,
    /// Request: find or create a direct conversation.
    OpenDirect = 0x0030,
    /// Request: one conversation.
    GetConversation = 0x0031,
    /// Request: page through the caller's conversations.
    ListConversations = 0x0032,
    /// Request: create a group.
    CreateGroup = 0x0033,
    /// Request: add group members.
    AddMembers = 0x0034,
    /// Request: remove a group member.
    RemoveMember = 0x0035,
    /// Request: leave a group.
    LeaveGroup = 0x0036,
    /// Request: rename a group.
    RenameGroup = 0x0037,
    /// Request: change a member's role.
    SetRole = 0x0038,
    /// Request: subscribe to presence.
    SubscribePresence = 0x0040,
    /// Request: unsubscribe from presence.
    UnsubscribePresence = 0x0041,
    /// Request: last-seen privacy.
    SetPrivacy = 0x0042,
    /// Request: set this device's push token.
    RegisterPushToken = 0x0050,
    /// Request: remove this device's push token.
    UnregisterPushToken = 0x0051,
    /// Request: start an upload.
    UploadBegin = 0x0060,
    /// Request: an upload's progress.
    UploadStatus = 0x0061,
    /// Request: upload bytes.
    UploadChunk = 0x0062,
    /// Request: complete an upload.
    UploadFinish = 0x0063,
    /// Request: media metadata.
    GetMedia = 0x0064,
    /// Request: download a byte range.
    Download = 0x0065,
    /// Request: publish this device's keys.
    PublishKeys = 0x0070,
    /// Request: users' device keys.
    GetDeviceKeys = 0x0071,
    /// Request: claim one key per device.
    ClaimKeys = 0x0072,
    /// Request: queue to-device messages.
    SendToDevice = 0x0073,
    /// Request: fetch (and acknowledge) to-device messages.
    ToDeviceSync = 0x0074,
    /// Notification: acknowledge to-device messages.
    ToDeviceAck = 0x0075,
    /// Request: store key backup entries.
    PutBackup = 0x0076,
    /// Request: page through the key backup.
    GetBackup = 0x0077,
    /// Request: delete the key backup.
    DeleteBackup = 0x0078,
    /// Reply: a request failed, or (request id 0) the connection did.
    Error = 0x4000,
    /// Reply: success with nothing to say.
    Ok = 0x4001,
    /// Reply to `Hello`.
    Welcome = 0x4002,
    /// Reply to `Ping`.
    Pong = 0x4003,
    /// Reply to `Register`, `Login`, `Resume`.
    Authenticated = 0x4010,
    /// Reply to `ListDevices`.
    Devices = 0x4011,
    /// Reply to `LookupUser`.
    UserInfo = 0x4012,
    /// Reply to `GetUsers`.
    Users = 0x4013,
    /// Reply to `Send`.
    Sent = 0x4020,
    /// Reply to `Sync`.
    SyncPage = 0x4021,
    /// Reply to `History`.
    HistoryPage = 0x4022,
    /// Reply to `OpenDirect`, `GetConversation`, `CreateGroup`.
    Conversation = 0x4030,
    /// Reply to `ListConversations`.
    Conversations = 0x4031,
    /// Reply to `SubscribePresence`.
    PresenceList = 0x4040,
    /// Reply to `UploadBegin`, `UploadStatus`, `UploadChunk`.
    UploadState = 0x4060,
    /// Reply to `UploadFinish`, `GetMedia`.
    MediaInfo = 0x4061,
    /// Reply to `Download`.
    MediaData = 0x4062,
    /// Reply to `PublishKeys`.
    KeysPublished = 0x4070,
    /// Reply to `GetDeviceKeys`.
    DeviceKeysList = 0x4071,
    /// Reply to `ClaimKeys`.
    ClaimedKeys = 0x4072,
    /// Reply to `SendToDevice`.
    ToDeviceSent = 0x4073,
    /// Reply to `ToDeviceSync`.
    ToDevicePage = 0x4074,
    /// Reply to `GetBackup`.
    BackupPage = 0x4075,
    /// Event: the server is going away.
    GoAway = 0x8000,
    /// Event: a live update.
    UpdateEvent = 0x8001,
    /// Event: a presence change.
    PresenceEvent = 0x8002,
    /// Event: typing.
    TypingEvent = 0x8003,
    /// Event: a to-device message.
    ToDeviceEvent = 0x8004,
    /// Event: a claim took one of this device's keys.
    KeyCountEvent = 0x8005,
}

impl Body {
    /// Which way this frame travels.
    pub fn direction(&self) -> Direction {
        Direction::of(self.frame_type())
    }

    /// Whether this request is a notification: answered only when it fails.
    pub fn is_notification(&self) -> bool {
        matches!(self, Body::Ack(_) | Body::Typing(_) | Body::ToDeviceAck(_))
    }

    /// Whether a client may send this before the session is authenticated.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(
            self,
            Body::Hello(_) | Body::Ping(_) | Body::Register(_) | Body::Login(_) | Body::Resume(_)
        )
    }
}
