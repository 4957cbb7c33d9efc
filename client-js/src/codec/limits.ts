/**
 * Every limit of protocol version 1 (spec §16.1), as named constants with the unit last.
 *
 * These are the protocol's hard maxima: the decoder rejects anything above them whatever a server
 * announces, and the encoder refuses to write past them. A server may announce smaller values in
 * `Welcome` (spec §16.2); the session honours those on top of these.
 *
 * @module
 */

/** The protocol version this package speaks. */
export const PROTOCOL_VERSION = 1;
/** Bytes of the length field that starts every frame. */
export const FRAME_LENGTH_BYTES = 4;
/** Bytes after the length field that every frame has: type (2) and request id (4). */
export const FRAME_HEADER_AFTER_LENGTH_BYTES = 6;
/** Bytes of the whole frame header: length, type and request id. */
export const FRAME_HEADER_BYTES = FRAME_LENGTH_BYTES + FRAME_HEADER_AFTER_LENGTH_BYTES;
/** The largest frame, length field included: 1 MiB. */
export const FRAME_BYTES_MAX = 1024 * 1024;
/** Requests one connection may have waiting for their replies (spec §2.8). */
export const REQUESTS_IN_FLIGHT_MAX = 256;
/** Usernames, in bytes. */
export const USERNAME_BYTES_MAX = 32;
/** Passwords, in bytes. */
export const PASSWORD_BYTES_MAX = 1024;
/** Device names, in bytes. */
export const DEVICE_NAME_BYTES_MAX = 64;
/** The client's and the server's software names in `Hello` and `Welcome`, in bytes. */
export const SOFTWARE_NAME_BYTES_MAX = 64;
/** Resume tokens are exactly this many bytes. */
export const TOKEN_BYTES = 32;
/** Idempotency keys of `Send` are exactly this many bytes. */
export const CLIENT_MSG_ID_BYTES = 16;
/** SHA-256 digests of media. */
export const SHA256_BYTES = 32;
/** Message bodies, in characters (Unicode scalar values): at most 400,000 bytes. */
export const BODY_CHARS_MAX = 100_000;
/** Attachments of one message. */
export const ATTACHMENTS_PER_MESSAGE_MAX = 16;
/** Group names, in bytes. */
export const GROUP_NAME_BYTES_MAX = 128;
/** Members of a group (servers default to 100 and announce theirs). */
export const GROUP_MEMBERS_MAX = 1000;
/** Devices of one user, in a `Devices` reply. */
export const DEVICES_PER_USER_MAX = 64;
/** Updates in one `SyncPage`. */
export const SYNC_PAGE_UPDATES_MAX = 1000;
/** Messages in one `HistoryPage`. */
export const HISTORY_PAGE_MESSAGES_MAX = 200;
/** Conversations in one `Conversations` page. */
export const CONVERSATIONS_PAGE_MAX = 200;
/** Users named in one presence request or reply. */
export const PRESENCE_USERS_MAX = 256;
/** Users named in one `GetUsers`, and so in its `Users` reply. */
export const USERS_PER_REQUEST_MAX = 256;
/** Media types such as `image/jpeg`, in bytes. */
export const MIME_BYTES_MAX = 255;
/** Data bytes in one `UploadChunk` or `MediaData`: 256 KiB. */
export const MEDIA_CHUNK_BYTES_MAX = 256 * 1024;
/** Push application ids, in bytes. */
export const PUSH_APP_ID_BYTES_MAX = 255;
/** Push tokens, in bytes. */
export const PUSH_TOKEN_BYTES_MAX = 4096;
/** The text of an `Error` or a `GoAway`, in bytes. */
export const ERROR_MESSAGE_BYTES_MAX = 1024;
/** The body of one update (spec §10.9), in bytes. */
export const UPDATE_BODY_BYTES_MAX = FRAME_BYTES_MAX;
/** One-time keys a device may hold in the key directory, and send in one `PublishKeys` (spec §19.10). */
export const ONE_TIME_KEYS_PER_DEVICE_MAX = 100;
/** Users named in one `GetDeviceKeys`, and so in its `DeviceKeysList` reply. */
export const KEY_QUERY_USERS_MAX = 64;
/** Devices named in one `ClaimKeys`, and keys in its `ClaimedKeys` reply. */
export const KEY_CLAIMS_MAX = 256;
/** Messages in one `SendToDevice`, and recipients in its `ToDeviceSent` reply. */
export const TO_DEVICE_MESSAGES_PER_REQUEST_MAX = 256;
/** One to-device payload, in bytes. */
export const TO_DEVICE_PAYLOAD_BYTES_MAX = 65_536;
/** Messages in one `ToDevicePage`. */
export const TO_DEVICE_PAGE_MESSAGES_MAX = 100;
/** Entries in one `PutBackup` or `BackupPage`. */
export const BACKUP_ENTRIES_PER_REQUEST_MAX = 256;
/** The data of one backup entry, in bytes. */
export const BACKUP_ENTRY_BYTES_MAX = 2048;
/** Backup entry ids (a Megolm session's id). */
export const BACKUP_ENTRY_ID_BYTES = 32;
/** Curve25519 and Ed25519 public keys. */
export const PUBLIC_KEY_BYTES = 32;
/** Ed25519 signatures. */
export const SIGNATURE_BYTES = 64;
/** The largest value of a `u32`. */
export const U32_MAX = 0xffff_ffff;
/** The largest value of a `u64`. */
export const U64_MAX = 0xffff_ffff_ffff_ffffn;
