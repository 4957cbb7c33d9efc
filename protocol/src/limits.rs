//! Every limit of protocol v1, as named constants with the unit last.
//!
//! These are the protocol's hard maxima: the decoder rejects anything above them whatever the
//! server's configuration says. A server may announce smaller values in `Welcome` (its configured
//! group size, say); it never announces larger ones. Relations between limits are checked below at
//! compile time, so a change that would let a valid field overflow a frame does not build.

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes of the length field that starts every frame.
pub const FRAME_LENGTH_BYTES: u32 = 4;
/// Bytes after the length field that every frame has: type (2) and request id (4).
pub const FRAME_HEADER_AFTER_LENGTH_BYTES: u32 = 6;
/// Bytes of the whole frame header: length, type and request id.
pub const FRAME_HEADER_BYTES: u32 = FRAME_LENGTH_BYTES + FRAME_HEADER_AFTER_LENGTH_BYTES;
/// Largest frame, length field included: 1 MiB.
pub const FRAME_BYTES_MAX: u32 = 1024 * 1024;

/// Requests one connection may have waiting for their replies; past it, `RATE_LIMITED`.
pub const REQUESTS_IN_FLIGHT_MAX: u32 = 256;

/// Usernames: at most 32 bytes (the server also requires 3..=32 characters of `a-z0-9_.-`).
pub const USERNAME_BYTES_MAX: u32 = 32;
/// Passwords: at most 1024 bytes (the server also requires at least 8).
pub const PASSWORD_BYTES_MAX: u32 = 1024;
/// Device names, chosen by the client at register or login.
pub const DEVICE_NAME_BYTES_MAX: u32 = 64;
/// The client's and server's software names in `Hello` and `Welcome`.
pub const SOFTWARE_NAME_BYTES_MAX: u32 = 64;
/// Resume tokens are exactly this many random bytes.
pub const TOKEN_BYTES: usize = 32;
/// Client-chosen idempotency keys for `Send` are exactly this many bytes.
pub const CLIENT_MSG_ID_BYTES: usize = 16;

/// Message bodies: at most 100,000 characters (Unicode scalar values), so at most 400,000 bytes.
pub const BODY_CHARS_MAX: u32 = 100_000;
/// Attachments referenced by one message.
pub const ATTACHMENTS_PER_MESSAGE_MAX: u32 = 16;
/// Group names.
pub const GROUP_NAME_BYTES_MAX: u32 = 128;
/// The hard maximum of members in a group; servers default to 100 and announce theirs in `Welcome`.
pub const GROUP_MEMBERS_MAX: u32 = 1000;
/// Devices one user may have; servers default to 10 and announce theirs in `Welcome`.
pub const DEVICES_PER_USER_MAX: u32 = 64;

/// Updates in one `SyncPage`.
pub const SYNC_PAGE_UPDATES_MAX: u32 = 1000;
/// Messages in one `HistoryPage`.
pub const HISTORY_PAGE_MESSAGES_MAX: u32 = 200;
/// Conversations in one `Conversations` page.
pub const CONVERSATIONS_PAGE_MAX: u32 = 200;
/// Users named in one `SubscribePresence` or `UnsubscribePresence`.
pub const PRESENCE_USERS_MAX: u32 = 256;
/// Users named in one `GetUsers`, and so in its `Users` reply.
pub const USERS_PER_REQUEST_MAX: u32 = 256;

/// Media type strings, such as `image/jpeg`.
pub const MIME_BYTES_MAX: u32 = 255;
/// Bytes of data in one `UploadChunk` or `MediaData`.
pub const MEDIA_CHUNK_BYTES_MAX: u32 = 256 * 1024;
/// Push application ids, such as `com.example.chat.ios`.
pub const PUSH_APP_ID_BYTES_MAX: u32 = 255;
/// Push tokens (APNs tokens are 32 bytes hex-encoded; FCM tokens are about 160 characters).
pub const PUSH_TOKEN_BYTES_MAX: u32 = 4096;
/// The human-readable text of an `Error` or `GoAway`.
pub const ERROR_MESSAGE_BYTES_MAX: u32 = 1024;

/// The largest body of a `Send`, with every field at its limit.
pub const SEND_BODY_BYTES_MAX: u32 =
    8 + CLIENT_MSG_ID_BYTES as u32 + 4 + BODY_CHARS_MAX * 4 + 4 + ATTACHMENTS_PER_MESSAGE_MAX * 8;
/// The largest `Message` structure: ids, sender, time, body and attachment descriptions.
pub const MESSAGE_BYTES_MAX: u32 = 8 * 3
    + 4
    + 8
    + 8
    + CLIENT_MSG_ID_BYTES as u32
    + 4
    + BODY_CHARS_MAX * 4
    + 4
    + ATTACHMENTS_PER_MESSAGE_MAX * (8 + 8 + 4 + MIME_BYTES_MAX);

// A largest message must fit in a frame on its own, inside a `Send`, an update event, a sync page,
// a history page and a conversation summary; every one of those adds less than 256 bytes around it
// (a conversation summary's group name alone may take 132).
const _: () = assert!(FRAME_HEADER_BYTES + SEND_BODY_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_HEADER_BYTES + 256 + MESSAGE_BYTES_MAX <= FRAME_BYTES_MAX);
// A full chunk fits in `UploadChunk` and `MediaData` (media id, offset, length prefix).
const _: () = assert!(FRAME_HEADER_BYTES + 8 + 8 + 4 + MEDIA_CHUNK_BYTES_MAX <= FRAME_BYTES_MAX);
// A full group fits in a `Conversation` reply (9 bytes a member) with room to spare.
const _: () = assert!(FRAME_HEADER_BYTES + 1024 + GROUP_MEMBERS_MAX * 9 <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_HEADER_AFTER_LENGTH_BYTES == 2 + 4);
