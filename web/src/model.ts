// The app's own view of the SDK's values: one message shape for live events, history pages and a
// conversation's last message, and one conversation shape for summaries and full infos. Keeping the
// conversion in one file means the rest of the app never cares which SDK call a value came from.

import type { Attachment, ConversationInfo, ConversationSummary, Message, SessionEvents } from "@tern/client";

/** A message as the app shows it. `seq` orders it in its conversation; it is never 0. */
export interface ChatMessage {
  conversationId: bigint;
  seq: bigint;
  messageId: bigint;
  sender: bigint;
  /** When the server stored it, in milliseconds since the epoch. */
  tsMs: number;
  text: string;
  attachments: Attachment[];
}

export type ConversationKind = "direct" | "group";

/** What the app knows of a role; the SDK's enum value is mapped by `roleOf`. */
export type Role = "member" | "admin" | "owner";

export interface ChatMember {
  userId: bigint;
  role: Role;
}

/** One conversation of the signed-in user, merged from summaries, infos and live updates. */
export interface ChatConversation {
  id: bigint;
  kind: ConversationKind;
  /** The group's name; empty for a direct conversation, which is shown by the peer's name. */
  name: string;
  /** The other member of a direct conversation; 0n for a group. */
  peer: bigint;
  /** Every member with their role, once known (summaries do not carry them). */
  members: ChatMember[] | null;
  lastSeq: bigint;
  readSeq: bigint;
  unread: number;
  lastMessage: ChatMessage | null;
  /** For ordering the list: the newest message's time, or when the app first saw it. */
  activityMs: number;
}

const utf8 = new TextDecoder();

type LiveMessage = SessionEvents["message"];

/** The text of a message, whichever shape the SDK gave it in. */
function textOf(m: { body: unknown; text?: unknown }): string {
  if (typeof m.text === "string") return m.text;
  if (typeof m.body === "string") return m.body;
  if (m.body instanceof Uint8Array) return utf8.decode(m.body);
  return "";
}

function tsOf(m: { ts?: unknown; sentAt?: unknown }): number {
  const t = m.sentAt ?? m.ts;
  if (typeof t === "bigint") return Number(t);
  if (typeof t === "number") return t;
  if (t instanceof Date) return t.getTime();
  return Date.now();
}

export function fromMessage(m: Message | LiveMessage): ChatMessage {
  const loose = m as unknown as { body: unknown; text?: unknown; ts?: unknown; sentAt?: unknown };
  return {
    conversationId: m.conversationId,
    seq: m.seq,
    messageId: m.messageId,
    sender: m.sender,
    tsMs: tsOf(loose),
    text: textOf(loose),
    attachments: [...(m.attachments ?? [])],
  };
}

/** Maps the SDK's kind, as the spec's number (1 direct, 2 group) or as a name, to the app's. */
export function kindOf(kind: unknown): ConversationKind {
  if (kind === 2 || kind === "group" || kind === "Group") return "group";
  return "direct";
}

/** Maps the SDK's role, as the spec's number (1 member, 2 admin, 3 owner) or as a name. */
export function roleOf(role: unknown): Role {
  if (role === 3 || role === "owner" || role === "Owner") return "owner";
  if (role === 2 || role === "admin" || role === "Admin") return "admin";
  return "member";
}

function count(n: bigint | number): number {
  return typeof n === "bigint" ? Number(n) : n;
}

export function fromSummary(s: ConversationSummary): ChatConversation {
  const last = s.lastMessage ? fromMessage(s.lastMessage) : null;
  return {
    id: s.conversationId,
    kind: kindOf(s.kind),
    name: s.name,
    peer: s.peer,
    members: null,
    lastSeq: s.lastSeq,
    readSeq: s.readSeq,
    unread: count(s.unread),
    lastMessage: last,
    activityMs: last ? last.tsMs : 0,
  };
}

export function fromInfo(info: ConversationInfo, me: bigint): ChatConversation {
  const members = info.members.map((m) => ({ userId: m.userId, role: roleOf(m.role) }));
  const kind = kindOf(info.kind);
  const peer = kind === "direct" ? (members.find((m) => m.userId !== me)?.userId ?? me) : 0n;
  return {
    id: info.conversationId,
    kind,
    name: info.name,
    peer,
    members,
    lastSeq: info.lastSeq,
    readSeq: info.readSeq,
    unread: count(info.unread),
    lastMessage: null,
    activityMs: Number(info.createdAt),
  };
}

/** Inserts a message into a list sorted by `seq`, replacing one with the same `seq`. */
export function insertBySeq(list: ChatMessage[], m: ChatMessage): ChatMessage[] {
  let i = list.length;
  while (i > 0 && list[i - 1].seq > m.seq) i--;
  if (i > 0 && list[i - 1].seq === m.seq) {
    const copy = list.slice();
    copy[i - 1] = m;
    return copy;
  }
  return [...list.slice(0, i), m, ...list.slice(i)];
}

/** Merges an older page (ascending `seq`) in front of a list, dropping any overlap. */
export function prependPage(list: ChatMessage[], page: ChatMessage[]): ChatMessage[] {
  const first = list.length > 0 ? list[0].seq : null;
  const older = first === null ? page : page.filter((m) => m.seq < first);
  let out = [...older, ...list];
  if (first === null) return out;
  for (const m of page) if (m.seq >= first) out = insertBySeq(out, m);
  return out;
}
