/**
 * The shared structures and enums of spec §6, and the updates of spec §10.9, with their codecs.
 *
 * Field names are the spec's in camelCase (`client_msg_id` is `clientMsgId`); enum values are the
 * spec's names in lower case (`"admin"`). Ids, sequence numbers, sizes and timestamps that the spec
 * types `u64` are `bigint`.
 *
 * @module
 */

import { DecodeError, EncodeError } from "./errors.js";
import {
  ATTACHMENTS_PER_MESSAGE_MAX,
  BODY_CHARS_MAX,
  CLIENT_MSG_ID_BYTES,
  DEVICE_NAME_BYTES_MAX,
  GROUP_MEMBERS_MAX,
  GROUP_NAME_BYTES_MAX,
  MIME_BYTES_MAX,
  UPDATE_BODY_BYTES_MAX,
  USERNAME_BYTES_MAX,
} from "./limits.js";
import {
  type Codec,
  Reader,
  bool,
  enumeration,
  fixed,
  list,
  option,
  str,
  struct,
  tailFlag,
  text,
  u32,
  u64,
} from "./primitives.js";

/** ConversationKind (spec §6.1). */
export type ConversationKind = "direct" | "group";
/** Role (spec §6.1). */
export type Role = "member" | "admin" | "owner";
/** ReceiptKind (spec §6.1). */
export type ReceiptKind = "delivered" | "read";
/** PushPlatform (spec §6.1). */
export type PushPlatform = "apns" | "fcm" | "other";

/** The wire values of {@link ConversationKind}. */
export const CONVERSATION_KINDS: Readonly<Record<ConversationKind, number>> = { direct: 1, group: 2 };
/** The wire values of {@link Role}. */
export const ROLES: Readonly<Record<Role, number>> = { member: 1, admin: 2, owner: 3 };
/** The wire values of {@link ReceiptKind}. */
export const RECEIPT_KINDS: Readonly<Record<ReceiptKind, number>> = { delivered: 1, read: 2 };
/** The wire values of {@link PushPlatform}. */
export const PUSH_PLATFORMS: Readonly<Record<PushPlatform, number>> = { apns: 1, fcm: 2, other: 3 };

export const conversationKind = enumeration(CONVERSATION_KINDS);
export const role = enumeration(ROLES);
export const receiptKind = enumeration(RECEIPT_KINDS);
export const pushPlatform = enumeration(PUSH_PLATFORMS);

/** ServerLimits (spec §6.2): the limits a server enforces, announced in `Welcome`. */
export interface ServerLimits {
  frameBytesMax: number;
  bodyCharsMax: number;
  groupMembersMax: number;
  devicesPerUserMax: number;
  syncPageUpdatesMax: number;
  historyPageMessagesMax: number;
  mediaChunkBytesMax: number;
  mediaBytesMax: bigint;
  heartbeatIntervalMs: number;
  idleTimeoutMs: number;
}

export const serverLimits = struct<ServerLimits>({
  frameBytesMax: u32,
  bodyCharsMax: u32,
  groupMembersMax: u32,
  devicesPerUserMax: u32,
  syncPageUpdatesMax: u32,
  historyPageMessagesMax: u32,
  mediaChunkBytesMax: u32,
  mediaBytesMax: u64,
  heartbeatIntervalMs: u32,
  idleTimeoutMs: u32,
});

/** DeviceInfo (spec §6.3): one of the caller's devices. */
export interface DeviceInfo {
  deviceId: number;
  name: string;
  createdAt: bigint;
  lastActiveAt: bigint;
  online: boolean;
  current: boolean;
}

export const deviceInfo = struct<DeviceInfo>({
  deviceId: u32,
  name: str(DEVICE_NAME_BYTES_MAX),
  createdAt: u64,
  lastActiveAt: u64,
  online: bool,
  current: bool,
});

/** Member (spec §6.4): a member of a conversation. */
export interface Member {
  userId: bigint;
  role: Role;
}

export const member = struct<Member>({ userId: u64, role });

/** Attachment (spec §6.5): a media item a message references. */
export interface Attachment {
  mediaId: bigint;
  size: bigint;
  mime: string;
}

export const attachment = struct<Attachment>({ mediaId: u64, size: u64, mime: str(MIME_BYTES_MAX) });

/** Message (spec §6.6): a stored message. */
export interface Message {
  conversationId: bigint;
  seq: bigint;
  messageId: bigint;
  sender: bigint;
  senderDevice: number;
  ts: bigint;
  clientMsgId: Uint8Array;
  body: string;
  attachments: Attachment[];
}

export const message = struct<Message>({
  conversationId: u64,
  seq: u64,
  messageId: u64,
  sender: u64,
  senderDevice: u32,
  ts: u64,
  clientMsgId: fixed(CLIENT_MSG_ID_BYTES),
  body: text(BODY_CHARS_MAX),
  attachments: list(attachment, ATTACHMENTS_PER_MESSAGE_MAX),
});

/** ConversationInfo (spec §6.7): everything about one conversation, as the caller sees it. */
export interface ConversationInfo {
  conversationId: bigint;
  kind: ConversationKind;
  name: string;
  createdAt: bigint;
  lastSeq: bigint;
  readSeq: bigint;
  unread: bigint;
  members: Member[];
}

export const conversationInfo = struct<ConversationInfo>({
  conversationId: u64,
  kind: conversationKind,
  name: str(GROUP_NAME_BYTES_MAX),
  createdAt: u64,
  lastSeq: u64,
  readSeq: u64,
  unread: u64,
  members: list(member, GROUP_MEMBERS_MAX),
});

/** ConversationSummary (spec §6.8): one line of the caller's conversation list. */
export interface ConversationSummary {
  conversationId: bigint;
  kind: ConversationKind;
  name: string;
  peer: bigint;
  lastSeq: bigint;
  readSeq: bigint;
  unread: bigint;
  lastMessage: Message | null;
}

export const conversationSummary = struct<ConversationSummary>({
  conversationId: u64,
  kind: conversationKind,
  name: str(GROUP_NAME_BYTES_MAX),
  peer: u64,
  lastSeq: u64,
  readSeq: u64,
  unread: u64,
  lastMessage: option(message),
});

/** Presence (spec §6.9): a user's presence. */
export interface Presence {
  userId: bigint;
  online: boolean;
  lastSeen: bigint | null;
}

export const presence = struct<Presence>({ userId: u64, online: bool, lastSeen: option(u64) });

/** UserInfo (spec §9.8): a user's id and name. */
export interface UserInfo {
  userId: bigint;
  username: string;
}

export const userInfo = struct<UserInfo>({ userId: u64, username: str(USERNAME_BYTES_MAX) });

/** Receipt update (spec §10.9.2): a delivered or read watermark moved. */
export interface Receipt {
  conversationId: bigint;
  userId: bigint;
  kind: ReceiptKind;
  upToSeq: bigint;
  ts: bigint;
}

/** GroupCreated update (spec §10.9.3). */
export interface GroupCreated {
  conversationId: bigint;
  actor: bigint;
  ts: bigint;
  name: string;
  members: Member[];
  /** Whether the group is encrypted end to end (spec §19.7): a flag appended to the body. */
  encrypted: boolean;
}

/** MembersAdded update (spec §10.9.4). */
export interface MembersAdded {
  conversationId: bigint;
  actor: bigint;
  ts: bigint;
  members: bigint[];
}

/** MemberRemoved update (spec §10.9.5). */
export interface MemberRemoved {
  conversationId: bigint;
  actor: bigint;
  ts: bigint;
  userId: bigint;
}

/** GroupRenamed update (spec §10.9.6). */
export interface GroupRenamed {
  conversationId: bigint;
  actor: bigint;
  ts: bigint;
  name: string;
}

/** RoleChanged update (spec §10.9.7). */
export interface RoleChanged {
  conversationId: bigint;
  actor: bigint;
  ts: bigint;
  userId: bigint;
  role: Role;
}

/** DeviceListChanged update (spec §19.5): a user's devices changed; fetch their keys again. */
export interface DeviceListChanged {
  /** Whose devices changed. */
  userId: bigint;
  /** When (ms). */
  ts: bigint;
}

/**
 * Skipped update (spec §10.9.9, revision 1.2): a `user_seq` that carries nothing, written where a
 * crash lost updates the server had announced (what they carried comes again under new numbers).
 * Its body is empty; a client advances its cursor past it and shows nothing.
 */
export type Skipped = Record<never, never>;

/** The update kinds of version 1 (spec §10.9, §19.5), by name. */
export interface UpdateKindMap {
  Message: Message;
  Receipt: Receipt;
  GroupCreated: GroupCreated;
  MembersAdded: MembersAdded;
  MemberRemoved: MemberRemoved;
  GroupRenamed: GroupRenamed;
  RoleChanged: RoleChanged;
  DeviceListChanged: DeviceListChanged;
  Skipped: Skipped;
}

/** The name of an update kind of version 1. */
export type UpdateKindName = keyof UpdateKindMap;

/** An update of a kind this version does not know: skipped, but its `user_seq` counts (spec §4). */
export interface UnknownUpdate {
  type: "Unknown";
  /** The kind's wire code. */
  kind: number;
  /** The update's body, as it came. */
  body: Uint8Array;
}

/** What an update says: one of the kinds, tagged by `type`, or an unknown kind. */
export type UpdateKind =
  | { [K in UpdateKindName]: { type: K } & UpdateKindMap[K] }[UpdateKindName]
  | UnknownUpdate;

/** One entry of a user's update log (spec §10.9). */
export interface Update {
  userSeq: bigint;
  kind: UpdateKind;
}

const UPDATE_KINDS: { readonly [K in UpdateKindName]: readonly [number, Codec<UpdateKindMap[K]>] } = {
  Message: [1, message],
  Receipt: [
    2,
    struct<Receipt>({ conversationId: u64, userId: u64, kind: receiptKind, upToSeq: u64, ts: u64 }),
  ],
  GroupCreated: [
    3,
    struct<GroupCreated>({
      conversationId: u64,
      actor: u64,
      ts: u64,
      name: str(GROUP_NAME_BYTES_MAX),
      members: list(member, GROUP_MEMBERS_MAX),
      encrypted: tailFlag,
    }),
  ],
  MembersAdded: [
    4,
    struct<MembersAdded>({ conversationId: u64, actor: u64, ts: u64, members: list(u64, GROUP_MEMBERS_MAX) }),
  ],
  MemberRemoved: [5, struct<MemberRemoved>({ conversationId: u64, actor: u64, ts: u64, userId: u64 })],
  GroupRenamed: [
    6,
    struct<GroupRenamed>({ conversationId: u64, actor: u64, ts: u64, name: str(GROUP_NAME_BYTES_MAX) }),
  ],
  RoleChanged: [7, struct<RoleChanged>({ conversationId: u64, actor: u64, ts: u64, userId: u64, role })],
  DeviceListChanged: [8, struct<DeviceListChanged>({ userId: u64, ts: u64 })],
  Skipped: [9, struct<Skipped>({})],
};

const UPDATE_KIND_NAMES = new Map<number, UpdateKindName>(
  (Object.entries(UPDATE_KINDS) as [UpdateKindName, readonly [number, unknown]][]).map(([name, [code]]) => [
    code,
    name,
  ]),
);

/** The wire code of an update kind. */
export function updateKindCode(kind: UpdateKind): number {
  return kind.type === "Unknown" ? kind.kind : UPDATE_KINDS[kind.type][0];
}

function readUpdateBody(kindCode: number, body: Uint8Array): UpdateKind {
  const name = UPDATE_KIND_NAMES.get(kindCode);
  if (name === undefined) {
    return { type: "Unknown", kind: kindCode, body: body.slice() };
  }
  // The body is read on its own: a field running past it is Truncated even if the frame goes on,
  // and bytes after the kind's last field are a newer version's additions, ignored.
  const fields = UPDATE_KINDS[name][1].read(new Reader(body), name);
  return { type: name, ...fields } as UpdateKind;
}

/** Update (spec §10.9): `user_seq`, `kind`, then a length-prefixed body. */
export const update: Codec<Update> = {
  read(r) {
    const userSeq = r.u64("user_seq");
    const kindCode = r.u16("kind");
    const len = r.u32("update");
    if (len > UPDATE_BODY_BYTES_MAX) {
      throw new DecodeError("TooLong", "update", { len, max: UPDATE_BODY_BYTES_MAX });
    }
    return { userSeq, kind: readUpdateBody(kindCode, r.take(len, "update")) };
  },
  write(w, value) {
    w.u64(value.userSeq, "user_seq");
    const kind = value.kind;
    w.u16(updateKindCode(kind), "kind");
    const lengthAt = w.length;
    w.u32(0, "update");
    if (kind.type === "Unknown") {
      w.raw(kind.body);
    } else {
      const codec = UPDATE_KINDS[kind.type][1] as Codec<UpdateKind>;
      codec.write(w, kind, kind.type);
    }
    const len = w.length - lengthAt - 4;
    if (len > UPDATE_BODY_BYTES_MAX) {
      throw new EncodeError("TooLong", "update", `${len} bytes, at most ${UPDATE_BODY_BYTES_MAX}`);
    }
    w.patchU32(lengthAt, len);
  },
};
