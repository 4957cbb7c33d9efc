//! Every limit of protocol v1, as named constants with the unit last.
//!
//! These are the protocol's hard maxima: the decoder rejects anything above them whatever the
//! server's configuration says. A server may announce smaller values in `Welcome` (its configured
//! group size, say); it never announces larger ones. Relations between limits are checked below at
//! compile time, so a change that would let a valid field overflow a frame does not build.

/// The protocol version this crate speaks: the number `Hello` and `Welcome` negotiate.
pub const PROTOCOL_VERSION: u16 = 1;
/// The revision of version 1 this crate implements: 1.2. A revision only adds what every reader of
/// the version passes over (fields appended to the end of bodies, new frame types, new update kinds;
/// spec §4.1), so it is not negotiated: a reply says whether the server used an appended field of
/// its request.
pub const PROTOCOL_REVISION: u16 = 2;

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

// ---------------------------------------------------------------- end-to-end encryption (§19)

/// One-time keys a device may hold in the key directory, and send in one `PublishKeys`.
pub const ONE_TIME_KEYS_PER_DEVICE_MAX: u32 = 100;
/// Users named in one `GetDeviceKeys`, and so in its `DeviceKeysList` reply.
pub const KEY_QUERY_USERS_MAX: u32 = 64;
/// Devices named in one `ClaimKeys`, and keys in its `ClaimedKeys` reply.
pub const KEY_CLAIMS_MAX: u32 = 256;
/// Messages in one `SendToDevice`, and recipients in its `ToDeviceSent` reply.
pub const TO_DEVICE_MESSAGES_PER_REQUEST_MAX: u32 = 256;
/// Bytes of one to-device payload.
pub const TO_DEVICE_PAYLOAD_BYTES_MAX: u32 = 65_536;
/// Messages in one `ToDevicePage`.
pub const TO_DEVICE_PAGE_MESSAGES_MAX: u32 = 100;
/// Entries in one `PutBackup` or `BackupPage`.
pub const BACKUP_ENTRIES_PER_REQUEST_MAX: u32 = 256;
/// Bytes of one backup entry's data.
pub const BACKUP_ENTRY_BYTES_MAX: u32 = 2048;
/// Bytes of the text inside an encrypted message (RoomContent), so the encrypted body fits.
pub const ENCRYPTED_TEXT_BYTES_MAX: u32 = 60_000;
/// Bytes of a Megolm message inside a Megolm envelope.
pub const MEGOLM_CIPHERTEXT_BYTES_MAX: u32 = 74_000;
/// Bytes of an Olm message inside an Olm envelope.
pub const OLM_CIPHERTEXT_BYTES_MAX: u32 = 65_000;
/// Bytes of the kind-specific body of a to-device content.
pub const TO_DEVICE_CONTENT_BYTES_MAX: u32 = 64_000;
/// Bytes of an exported or shared Megolm session key.
pub const SESSION_KEY_BYTES_MAX: u32 = 512;
/// Sessions in one `ForwardedRoomKeys`.
pub const FORWARDED_KEYS_MAX: u32 = 200;
/// Bytes of the ciphertext inside a backup entry.
pub const BACKUP_CIPHERTEXT_BYTES_MAX: u32 = 2000;

/// The largest `DeviceKeysList`: users, each with an id, a count and every device's 132 bytes.
pub const DEVICE_KEYS_LIST_BYTES_MAX: u32 =
    4 + KEY_QUERY_USERS_MAX * (8 + 4 + DEVICES_PER_USER_MAX * (4 + 32 + 32 + 64));
/// The largest Megolm envelope: version, session id, length prefix, ciphertext.
pub const MEGOLM_ENVELOPE_BYTES_MAX: u32 = 1 + 32 + 4 + MEGOLM_CIPHERTEXT_BYTES_MAX;
/// The largest RoomContent: version, conversation, text, and 16 attachments at their limits.
pub const ROOM_CONTENT_BYTES_MAX: u32 = 1
    + 8
    + 4
    + ENCRYPTED_TEXT_BYTES_MAX
    + 4
    + ATTACHMENTS_PER_MESSAGE_MAX * (8 + 8 + 4 + MIME_BYTES_MAX + 4 + 255 + 32 + 12 + 32);

// Every key list reply fits in a frame.
const _: () = assert!(FRAME_HEADER_BYTES + DEVICE_KEYS_LIST_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_HEADER_BYTES + 4 + KEY_CLAIMS_MAX * 117 <= FRAME_BYTES_MAX);
// A full backup page fits in a frame (a to-device page is bounded by the frame size as well).
const _: () = assert!(
    FRAME_HEADER_BYTES + 8 + BACKUP_ENTRIES_PER_REQUEST_MAX * (32 + 4 + BACKUP_ENTRY_BYTES_MAX)
        <= FRAME_BYTES_MAX
);
// One largest payload fits in a to-device message, and each layer fits in the one around it.
const _: () = assert!(FRAME_HEADER_BYTES + 64 + TO_DEVICE_PAYLOAD_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(1 + 32 + 1 + 4 + OLM_CIPHERTEXT_BYTES_MAX <= TO_DEVICE_PAYLOAD_BYTES_MAX);
const _: () =
    assert!(4 + FORWARDED_KEYS_MAX * (8 + 8 + 4 + 32 + 4 + 165) <= TO_DEVICE_CONTENT_BYTES_MAX);
const _: () = assert!(1 + 12 + 4 + BACKUP_CIPHERTEXT_BYTES_MAX <= BACKUP_ENTRY_BYTES_MAX);
// A largest RoomContent, Megolm-encrypted (padding, index, MAC and signature add under 256
// bytes), fits in an envelope, and the envelope in base64 behind its prefix fits in a body.
const _: () = assert!(ROOM_CONTENT_BYTES_MAX + 256 <= MEGOLM_CIPHERTEXT_BYTES_MAX);
const _: () = assert!(10 + MEGOLM_ENVELOPE_BYTES_MAX.div_ceil(3) * 4 <= BODY_CHARS_MAX);
