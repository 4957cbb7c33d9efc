/**
 * The values the session API hands to the app: messages, attachments, conversations, presence, and
 * the events of {@link SessionEvents}. Ids, sequence numbers, sizes and timestamps are `bigint`
 * (the protocol's `u64`), never `number`.
 *
 * @module
 */

import type * as wire from "./codec/index.js";
import type { TernError } from "./errors.js";

export type {
  BackupEntry,
  BackupPage,
  ClaimedKey,
  ConversationKind,
  DeviceAddress,
  DeviceKeys,
  KeyCounts,
  Member,
  ReceiptKind,
  Role,
  ServerLimits,
  SignedKey,
  ToDeviceMessage,
  ToDeviceOut,
  ToDevicePage,
  UserDeviceKeys,
} from "./codec/index.js";

/** A media item attached to a message (spec §6.5). */
export interface Attachment {
  /** The media, for {@link Session.download}. */
  mediaId: bigint;
  /** Its size in bytes. */
  size: bigint;
  /** Its media type, such as `image/jpeg`. */
  mime: string;
  /** A file name the uploader gave; known to the uploading client only (not sent on the wire). */
  name?: string;
}

/** A stored message. */
export interface Message {
  /** The conversation it belongs to. */
  conversationId: bigint;
  /** Its position in the conversation: 1, 2, 3, … without gaps, the same for every member. */
  seq: bigint;
  /** Its server-wide id: compare it for equality only; order messages by `seq`. */
  messageId: bigint;
  /** The user who sent it. */
  sender: bigint;
  /** The sender's device it came from. */
  senderDevice: number;
  /** When the server stored it (ms since the epoch, the server's clock). */
  sentAt: bigint;
  /** The body as UTF-8 bytes. */
  body: Uint8Array;
  /** The body as text (always present for protocol version 1, whose bodies are UTF-8 text). */
  text?: string;
  /** Attached media. */
  attachments: Attachment[];
  /** The sending device's idempotency key. */
  clientMsgId: Uint8Array;
}

/** Everything about one conversation, as the caller sees it (spec §6.7). */
export interface ConversationInfo extends wire.ConversationInfo {
  /**
   * Whether it is encrypted end to end (spec §19.7): then the server takes only encrypted bodies
   * (`megolm.v1:…`) in it and refuses any other with `ENCRYPTION_REQUIRED`. Always set on what the
   * session returns; optional so that values an app builds itself need not name it (absent is
   * false).
   */
  encrypted?: boolean;
}

/**
 * One line of the caller's conversation list (spec §6.8). It does not say whether the conversation
 * is encrypted: {@link ConversationInfo} does.
 */
export interface ConversationSummary {
  conversationId: bigint;
  kind: wire.ConversationKind;
  /** The group's name; empty for a direct conversation. */
  name: string;
  /** For a direct conversation, the other member; 0n for a group. */
  peer: bigint;
  /** The `seq` of its newest message; 0n when it has none. */
  lastSeq: bigint;
  /** The caller's read watermark. */
  readSeq: bigint;
  /** Messages from other members above `readSeq`. */
  unread: bigint;
  /** The newest message, or null. */
  lastMessage: Message | null;
}

/** A user's presence (spec §6.9). */
export interface Presence {
  userId: bigint;
  /** Whether at least one of their devices is connected. */
  online: boolean;
  /** When their last connection ended (ms); null while online, when never seen, or when hidden. */
  lastSeen: bigint | null;
}

/** The connection state of a session. */
export type SessionState = "connecting" | "online" | "offline";

/** What changed about a conversation, in a `conversation` event. */
export type ConversationChange =
  /** A group was created with the user in it. */
  | "created"
  /** Members were added (the user may be one of them). */
  | "membersAdded"
  /** A member left or was removed (the user may be the one). */
  | "memberRemoved"
  /** A group was renamed. */
  | "renamed"
  /** A member's role changed. */
  | "roleChanged"
  /** A message arrived in a conversation this session had not seen yet (a new direct one, say). */
  | "discovered";

/** The events of a {@link Session}, by name: subscribe with `session.on(name, fn)`. */
export interface SessionEvents {
  /** A message was stored in one of the user's conversations (the user's own included). */
  message: Message;
  /** A delivered or read watermark moved (spec §17.6). */
  receipt: { conversationId: bigint; userId: bigint; kind: wire.ReceiptKind; upToSeq: bigint; ts: bigint };
  /** Someone started or stopped typing; a start ends by itself after 10 s without a repeat. */
  typing: { conversationId: bigint; userId: bigint; typing: boolean };
  /** A followed user's presence changed (see {@link Session.subscribePresence}). */
  presence: Presence;
  /** A conversation was created or changed: fetch it again with {@link Session.getConversation}. */
  conversation: { conversationId: bigint; change: ConversationChange; actor: bigint | null; userId: bigint | null };
  /** The connection state changed; `error` says why it is not online. */
  state: { state: SessionState; error?: TernError };
  /** The number of unconfirmed sends changed. */
  outbox: { pending: number };
  /** The server stored a queued message (also after a reload, when no promise waits for it). */
  sent: { clientMsgId: Uint8Array; conversationId: bigint; seq: bigint; messageId: bigint; sentAt: bigint };
  /** The server refused a queued message for good; it left the outbox. */
  sendFailed: { clientMsgId: Uint8Array; conversationId: bigint; error: TernError };
  /**
   * A user's devices changed (spec §19.5): one published its identity keys for the first time, or
   * one that had was revoked. Fetch their keys again with {@link Session.getDeviceKeys}.
   */
  deviceListChanged: { userId: bigint; ts: bigint };
  /**
   * A to-device message for this device (spec §19.4.4), on a connection made to-device live by a
   * {@link Session.toDeviceSync} page with `hasMore` false. Acknowledge what was processed with
   * {@link Session.toDeviceAck}.
   */
  toDevice: wire.ToDeviceMessage;
  /** A claim took one of this device's keys (spec §19.3.4): top the one-time keys up when low. */
  keyCount: wire.KeyCounts;
  /** The server is going away; the session reconnects after the delay it named. */
  goAway: { reconnectAfterMs: number; message: string };
  /**
   * The server no longer accepts this device (revoked, or logged out elsewhere): the session
   * stopped and the stored session was forgotten. The outbox and the cursor stay, for a new login
   * of the same user.
   */
  loggedOut: { error: TernError };
}
