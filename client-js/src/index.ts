/**
 * `@tern/client`: the TypeScript SDK of Tern, for browsers and Node.js.
 *
 * - {@link Session}: a logged-in device that stays connected over WebSocket: it reconnects with
 *   back-off, resumes, catches up from its stored cursor, and retries its outbox under the same
 *   `client_msg_id`, so every message is stored once and every update reaches the app once.
 * - Storages: {@link MemoryStorage}, {@link IndexedDbStorage} (browsers), and `FileStorage` from
 *   `@tern/client/node` (Node.js).
 * - End-to-end encryption's server side (spec §19): the key directory, to-device messages and the
 *   key backup, as {@link Session} methods and events. Keys, signatures and Olm and Megolm
 *   encryption are made elsewhere (the Rust client library does them); this package carries them.
 * - `wire`: the protocol codec, written from `spec/protocol.md` and checked against its golden
 *   vectors, for those who want the frames themselves.
 *
 * @packageDocumentation
 */

export { Session, type SendResult, type SessionAuth, type SessionOptions } from "./session.js";
export { TernError, type ClientErrorCode, type TernErrorCode } from "./errors.js";
export type {
  Attachment,
  BackupEntry,
  BackupPage,
  ClaimedKey,
  ConversationChange,
  ConversationInfo,
  ConversationKind,
  ConversationSummary,
  DeviceAddress,
  DeviceKeys,
  KeyCounts,
  Member,
  Message,
  Presence,
  ReceiptKind,
  Role,
  ServerLimits,
  SessionEvents,
  SessionState,
  SignedKey,
  ToDeviceMessage,
  ToDeviceOut,
  ToDevicePage,
  UserDeviceKeys,
} from "./model.js";
export { identitySignedBytes, keySignedBytes } from "./codec/e2e.js";
export { MemoryStorage, type PendingSend, type Storage, type StoredSession, type StoredState } from "./storage.js";
export { IndexedDbStorage } from "./indexeddb.js";
export { SUBPROTOCOL, type WebSocketCtor } from "./connection.js";
export * as wire from "./codec/index.js";
