// The app's own view of the SDK's values: a message with its text and a time in ms, and one
// conversation shape merged from summaries (no members), full infos (no last message) and live
// updates. Keeping the conversion in one file means the rest of the app never cares which SDK call
// a value came from.

import type { Attachment, ConversationInfo, ConversationKind, ConversationSummary, Message, Role } from "@tern/client";

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

export type { ConversationKind, Role };

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

export function fromMessage(m: Message): ChatMessage {
  return {
    conversationId: m.conversationId,
    seq: m.seq,
    messageId: m.messageId,
    sender: m.sender,
    tsMs: Number(m.sentAt),
    text: m.text ?? utf8.decode(m.body),
    attachments: [...m.attachments],
  };
}

export function fromSummary(s: ConversationSummary): ChatConversation {
  const last = s.lastMessage ? fromMessage(s.lastMessage) : null;
  return {
    id: s.conversationId,
    kind: s.kind,
    name: s.name,
    peer: s.peer,
    members: null,
    lastSeq: s.lastSeq,
    readSeq: s.readSeq,
    unread: Number(s.unread),
    lastMessage: last,
    activityMs: last ? last.tsMs : 0,
  };
}

export function fromInfo(info: ConversationInfo, me: bigint): ChatConversation {
  const members = info.members.map((m) => ({ userId: m.userId, role: m.role }));
  const peer = info.kind === "direct" ? (members.find((m) => m.userId !== me)?.userId ?? me) : 0n;
  return {
    id: info.conversationId,
    kind: info.kind,
    name: info.name,
    peer,
    members,
    lastSeq: info.lastSeq,
    readSeq: info.readSeq,
    unread: Number(info.unread),
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
