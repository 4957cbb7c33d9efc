// The app's state for one signed-in user, fed by a @tern/client Session: the conversation list,
// loaded timelines, local echoes of messages not yet sent, receipts, presence, typing and names.
// Components read its fields and re-render on `subscribe`; every change goes through a method here,
// so the rules (what is unread, which tick a message has, when a read receipt is sent) live in one
// place.

import type { Attachment, Session, SessionEvents } from "@tern/client";
import {
  type ChatConversation,
  type ChatMessage,
  fromInfo,
  fromMessage,
  fromSummary,
  insertBySeq,
  prependPage,
} from "./model";
import { ReceiptBook, type Tick } from "./receipts";

export type Connection = "connecting" | "online" | "offline";

/** A message the user sent that the server has not confirmed yet, shown with a clock. */
export interface PendingMessage {
  localId: string;
  conversationId: bigint;
  text: string;
  attachments: Attachment[];
  createdAtMs: number;
  /**
   * For one from before a reload: the SDK's key of the queued send (hex), whose `sent` or
   * `sendFailed` event ends it. Null for one sent from this page, which its promise ends.
   */
  clientMsgId: string | null;
}

export interface Timeline {
  messages: ChatMessage[];
  hasMore: boolean;
  loaded: boolean;
  loadingOlder: boolean;
  error: string;
}

export interface Transfer {
  got: number;
  total: number;
  url: string;
  error: string;
}

export interface PresenceState {
  online: boolean;
  lastSeenMs: number | null;
}

/** Messages asked for per history page. */
export const HISTORY_PAGE_MESSAGES = 40;
/** A typing indicator ends this long after its last repeat (spec §12.5). */
const TYPING_EXPIRY_MS = 10_000;
/** While the user types, `Typing{active}` is repeated this often (spec §12.5). */
const TYPING_REPEAT_MS = 4_000;
/** Typing starts in one conversation are at least this far apart (ternd takes two a second). */
const TYPING_STARTS_GAP_MS = 600;
/** With no keystroke for this long, the app says the user stopped typing. */
const TYPING_IDLE_MS = 5_000;
/** Users per GetUsers or SubscribePresence request (spec: lists of at most 256). */
const USERS_PER_REQUEST_MAX = 256;
/** A read receipt waits this long for more messages to cover (ms). */
const MARK_READ_DELAY_MS = 250;
/** Groups whose members are fetched with the list, newest first; others when opened. */
const GROUPS_PREFETCHED_MAX = 50;
/** Images up to this size are fetched as soon as they are shown. */
export const IMAGE_AUTOLOAD_BYTES_MAX = 16 * 1024 * 1024;
/** Local echoes kept across reloads; past it the oldest are dropped. */
const PENDING_MAX = 200;
/** Confirmed message ids remembered to tell a live copy of one's own message from a retried one. */
const CONFIRMED_MAX = 512;

function errorText(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

function newLocalId(): string {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** localStorage under one user's prefix; a full or disabled storage only loses what it would keep. */
class Persisted {
  constructor(private readonly prefix: string) {}

  read(key: string): unknown {
    try {
      const raw = localStorage.getItem(this.prefix + key);
      return raw === null ? null : JSON.parse(raw);
    } catch {
      return null;
    }
  }

  write(key: string, value: unknown): void {
    try {
      localStorage.setItem(this.prefix + key, JSON.stringify(value));
    } catch {
      // Storage full or disabled: the value lives in memory only.
    }
  }

  clear(): void {
    try {
      const keys: string[] = [];
      for (let i = 0; i < localStorage.length; i++) {
        const k = localStorage.key(i);
        if (k !== null && k.startsWith(this.prefix)) keys.push(k);
      }
      for (const k of keys) localStorage.removeItem(k);
    } catch {
      // Nothing kept, nothing to clear.
    }
  }
}

function pendingToJSON(p: PendingMessage): unknown {
  return {
    localId: p.localId,
    conversationId: p.conversationId.toString(),
    text: p.text,
    attachments: p.attachments.map((a) => ({ mediaId: a.mediaId.toString(), size: a.size.toString(), mime: a.mime })),
    createdAtMs: p.createdAtMs,
  };
}

function pendingFromJSON(v: unknown): PendingMessage | null {
  try {
    const o = v as Record<string, unknown>;
    const atts = (o.attachments as Record<string, string>[]).map((a) => ({
      ...a,
      mediaId: BigInt(a.mediaId),
      size: BigInt(a.size),
      mime: a.mime,
    }));
    return {
      localId: String(o.localId),
      conversationId: BigInt(String(o.conversationId)),
      text: String(o.text),
      attachments: atts as Attachment[],
      createdAtMs: Number(o.createdAtMs),
      clientMsgId: null,
    };
  } catch {
    return null;
  }
}

function sameIds(a: Attachment[], ids: bigint[]): boolean {
  return a.length === ids.length && a.every((x, i) => x.mediaId === ids[i]);
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (x) => x.toString(16).padStart(2, "0")).join("");
}

function sameAttachments(a: Attachment[], b: Attachment[]): boolean {
  return a.length === b.length && a.every((x, i) => x.mediaId === b[i].mediaId);
}

export class ChatStore {
  readonly me: bigint;
  readonly username: string;

  conversations = new Map<bigint, ChatConversation>();
  listLoaded = false;
  listError = "";
  timelines = new Map<bigint, Timeline>();
  pending: PendingMessage[] = [];
  presence = new Map<bigint, PresenceState>();
  /** Per conversation, who is typing and until when (ms). */
  typing = new Map<bigint, Map<bigint, number>>();
  names = new Map<bigint, string>();
  downloads = new Map<bigint, Transfer>();
  connection: Connection = "connecting";
  connectionError = "";
  outboxPending = 0;
  activeId: bigint | null = null;
  visible = typeof document === "undefined" ? true : document.visibilityState === "visible";
  /** Increases on every change; components compare it to know they must re-render. */
  version = 0;

  private readonly receipts: ReceiptBook;
  private readonly kept: Persisted;
  private readonly listeners = new Set<() => void>();
  private readonly unsubscribe: (() => void)[] = [];
  /** When a typing start was last sent, per conversation (kept across stops, to space starts). */
  private readonly typingStartedAt = new Map<bigint, number>();
  /** Whether a start was sent that no stop has ended yet. */
  private typingActive = false;
  private typingStartTimer: ReturnType<typeof setTimeout> | null = null;
  private typingStopTimer: ReturnType<typeof setTimeout> | null = null;
  private typingConversation: bigint | null = null;
  private typingSweep: ReturnType<typeof setInterval> | null = null;
  private readonly namesAsked = new Set<bigint>();
  private nameFlushQueued = false;
  private readonly presenceSubscribed = new Set<bigint>();
  private readFlush: { id: bigint; upTo: bigint; timer: ReturnType<typeof setTimeout> } | null = null;
  /** Ids of messages whose `Sent` came back, so their live copies do not take another echo. */
  private readonly confirmed = new Set<bigint>();
  private readonly fetching = new Map<bigint, Promise<ChatConversation | null>>();
  private notifyQueued = false;
  private refreshedOnce = false;
  private closed = false;

  constructor(readonly session: Session) {
    this.me = session.userId;
    this.username = session.username;
    this.names.set(this.me, session.username);
    this.kept = new Persisted(`tern.web.${this.me.toString()}.`);
    this.receipts = ReceiptBook.fromJSON(this.kept.read("receipts"));
    this.pending = this.restorePending();
    this.savePending();
    this.outboxPending = session.pendingOutbox();
    this.connection = session.state;
  }

  /**
   * The echoes of messages still in the SDK's outbox after a reload. The outbox is the truth: each
   * of its messages gets the echo kept for it (matched by conversation and text, in order), which
   * knows its attachments' types and sizes, or a new one; kept echoes it no longer holds are gone
   * (sent, or refused, while no page was open).
   */
  private restorePending(): PendingMessage[] {
    const kept: PendingMessage[] = [];
    const saved = this.kept.read("pending");
    if (Array.isArray(saved)) {
      for (const v of saved) {
        const p = pendingFromJSON(v);
        if (p) kept.push(p);
      }
    }
    const out: PendingMessage[] = [];
    for (const q of this.session.pendingMessages()) {
      const i = kept.findIndex((p) => p.conversationId === q.conversationId && p.text === q.body);
      const echo = i >= 0 ? kept.splice(i, 1)[0] : null;
      out.push({
        localId: echo?.localId ?? newLocalId(),
        conversationId: q.conversationId,
        text: q.body,
        attachments:
          echo && sameIds(echo.attachments, q.attachments)
            ? echo.attachments
            : q.attachments.map((mediaId) => ({ mediaId, size: 0n, mime: "application/octet-stream" })),
        createdAtMs: q.queuedAt,
        clientMsgId: hex(q.clientMsgId),
      });
    }
    return out;
  }

  /** Called when the server no longer accepts this device (revoked, or logged out elsewhere). */
  onLoggedOut: (() => void) | null = null;

  // ---- Life cycle -------------------------------------------------------------------------

  /** Listens to the session and loads the conversation list. */
  start(): void {
    const s = this.session;
    this.unsubscribe.push(
      s.on("message", (e) => this.onMessage(e)),
      s.on("receipt", (e) => this.onReceipt(e)),
      s.on("typing", (e) => this.onTyping(e)),
      s.on("presence", (e) => this.onPresence(e)),
      s.on("conversation", (e) => void this.fetchConversation(e.conversationId)),
      s.on("state", (e) => this.onState(e)),
      s.on("outbox", (e) => {
        this.outboxPending = e.pending;
        this.changed();
      }),
      s.on("sent", (e) => this.onSent(e)),
      s.on("sendFailed", (e) => this.onSendFailed(e)),
      s.on("loggedOut", () => this.onLoggedOut?.()),
    );
    void this.refresh();
  }

  /** Stops listening; the session itself is closed by whoever owns it. */
  stop(): void {
    this.flushRead();
    this.closed = true;
    for (const u of this.unsubscribe.splice(0)) u();
    if (this.typingSweep !== null) clearInterval(this.typingSweep);
    if (this.typingStopTimer !== null) clearTimeout(this.typingStopTimer);
    if (this.typingStartTimer !== null) clearTimeout(this.typingStartTimer);
    for (const t of this.downloads.values()) if (t.url) URL.revokeObjectURL(t.url);
    this.listeners.clear();
  }

  /** Forgets what this user's app kept in this browser (on logout). */
  forget(): void {
    this.kept.clear();
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Marks the state changed; listeners run once per microtask however many changes there were. */
  private changed(): void {
    this.version++;
    if (this.notifyQueued || this.closed) return;
    this.notifyQueued = true;
    queueMicrotask(() => {
      this.notifyQueued = false;
      for (const fn of [...this.listeners]) fn();
    });
  }

  /** Reloads the conversation list and the presence of direct peers (at start and on reconnect). */
  async refresh(): Promise<void> {
    try {
      const list = await this.session.listConversations();
      for (const s of list) this.mergeConversation(fromSummary(s));
      this.listLoaded = true;
      this.listError = "";
      this.refreshedOnce = true;
      const people: bigint[] = [];
      for (const c of this.conversations.values()) {
        if (c.kind === "direct") people.push(c.peer);
        if (c.lastMessage) people.push(c.lastMessage.sender);
      }
      this.wantNames(people);
      void this.followPresence(people.filter((u) => u !== this.me));
      // A group's ticks need its members, which the list does not carry: fetch the newest groups'.
      const groups = this.sortedConversations().filter((c) => c.kind === "group" && !c.members);
      for (const g of groups.slice(0, GROUPS_PREFETCHED_MAX)) void this.fetchConversation(g.id);
      if (this.activeId !== null) void this.openConversation(this.activeId);
    } catch (e) {
      this.listError = errorText(e);
    }
    this.changed();
  }

  // ---- Reading state ----------------------------------------------------------------------

  /** A person's name, or "" while it is being fetched; ids are never shown. */
  nameOf(userId: bigint): string {
    const n = this.names.get(userId);
    if (n === undefined) this.wantNames([userId]);
    return n ?? "";
  }

  /** The title of a conversation: the group's name, or the other person's. */
  titleOf(c: ChatConversation): string {
    if (c.kind === "group") return c.name || "Unnamed group";
    return this.nameOf(c.peer);
  }

  sortedConversations(): ChatConversation[] {
    return [...this.conversations.values()].sort((a, b) => b.activityMs - a.activityMs || (b.id > a.id ? 1 : -1));
  }

  /** The other members of a conversation, as far as known. */
  othersIn(c: ChatConversation): bigint[] {
    if (c.members) return c.members.map((m) => m.userId).filter((u) => u !== this.me);
    return c.kind === "direct" ? [c.peer] : [];
  }

  tickOf(m: ChatMessage): Tick {
    const c = this.conversations.get(m.conversationId);
    if (!c) return "sent";
    return this.receipts.tick(m.conversationId, m.seq, this.othersIn(c));
  }

  pendingIn(conversationId: bigint): PendingMessage[] {
    return this.pending.filter((p) => p.conversationId === conversationId);
  }

  typistsIn(conversationId: bigint): bigint[] {
    const now = Date.now();
    const m = this.typing.get(conversationId);
    if (!m) return [];
    return [...m].filter(([, until]) => until > now).map(([u]) => u);
  }

  totalUnread(): number {
    let n = 0;
    for (const c of this.conversations.values()) n += c.unread;
    return n;
  }

  // ---- Conversations ----------------------------------------------------------------------

  private mergeConversation(next: ChatConversation): ChatConversation {
    const prev = this.conversations.get(next.id);
    const merged: ChatConversation = prev
      ? {
          ...prev,
          kind: next.kind,
          name: next.name,
          peer: next.peer !== 0n || next.kind === "group" ? next.peer : prev.peer,
          members: next.members ?? prev.members,
          lastSeq: next.lastSeq > prev.lastSeq ? next.lastSeq : prev.lastSeq,
          readSeq: next.readSeq > prev.readSeq ? next.readSeq : prev.readSeq,
          unread: next.unread,
          lastMessage:
            next.lastMessage && (!prev.lastMessage || next.lastMessage.seq >= prev.lastMessage.seq)
              ? next.lastMessage
              : prev.lastMessage,
          activityMs: Math.max(prev.activityMs, next.activityMs),
        }
      : next;
    if (merged.activityMs === 0) merged.activityMs = Date.now();
    // What this page marked read wins over a count the server made before it heard of it.
    if (merged.readSeq >= merged.lastSeq) merged.unread = 0;
    this.conversations.set(merged.id, merged);
    if (merged.members) this.wantNames(merged.members.map((m) => m.userId));
    else if (merged.kind === "direct") this.wantNames([merged.peer]);
    return merged;
  }

  /** Fetches one conversation's full info (members included) and merges it. */
  fetchConversation(id: bigint): Promise<ChatConversation | null> {
    const inFlight = this.fetching.get(id);
    if (inFlight) return inFlight;
    const p = this.session
      .getConversation(id)
      .then((info) => {
        const c = this.mergeConversation(fromInfo(info, this.me));
        if (c.kind === "direct") void this.followPresence([c.peer]);
        else if (c.id === this.activeId) void this.followPresence(this.othersIn(c));
        this.changed();
        return c;
      })
      .catch((e: unknown) => {
        const code = (e as { code?: unknown }).code;
        if (code === "NOT_FOUND") {
          // No longer a member (removed, or left on another device): the conversation goes away.
          this.conversations.delete(id);
          this.timelines.delete(id);
          if (this.activeId === id) this.activeId = null;
          this.changed();
        }
        return null;
      })
      .finally(() => this.fetching.delete(id));
    this.fetching.set(id, p);
    return p;
  }

  /** Opens a conversation: loads its members and newest messages and marks it read. */
  async openConversation(id: bigint | null): Promise<void> {
    if (this.activeId !== id && this.typingConversation !== null) this.stopTyping();
    this.activeId = id;
    this.changed();
    if (id === null) return;
    const c = await this.fetchConversation(id);
    if (c) void this.followPresence(this.othersIn(c));
    const t = this.timelines.get(id);
    if (!t || !t.loaded) await this.loadNewest(id);
    this.markActiveRead();
  }

  private async loadNewest(id: bigint): Promise<void> {
    const t: Timeline = this.timelines.get(id) ?? {
      messages: [],
      hasMore: false,
      loaded: false,
      loadingOlder: false,
      error: "",
    };
    this.timelines.set(id, t);
    try {
      const page = await this.session.history(id, { limit: HISTORY_PAGE_MESSAGES });
      const msgs = page.messages.map(fromMessage);
      let merged = prependPage(t.messages, msgs);
      for (const m of t.messages) merged = insertBySeq(merged, m);
      this.timelines.set(id, { ...t, messages: merged, hasMore: page.hasMore, loaded: true, error: "" });
      this.wantNames(msgs.map((m) => m.sender));
      for (const m of msgs) this.noteAuthorRead(m);
      const newest = msgs[msgs.length - 1];
      const c = this.conversations.get(id);
      if (newest && c && newest.seq >= c.lastSeq) {
        this.conversations.set(id, { ...c, lastSeq: newest.seq, lastMessage: newest });
      }
    } catch (e) {
      this.timelines.set(id, { ...t, error: errorText(e) });
    }
    this.changed();
  }

  /** Loads the page before the oldest loaded message; returns whether anything was added. */
  async loadOlder(id: bigint): Promise<boolean> {
    const t = this.timelines.get(id);
    if (!t || !t.loaded || !t.hasMore || t.loadingOlder || t.messages.length === 0) return false;
    this.timelines.set(id, { ...t, loadingOlder: true });
    this.changed();
    try {
      const page = await this.session.history(id, { before: t.messages[0].seq, limit: HISTORY_PAGE_MESSAGES });
      const msgs = page.messages.map(fromMessage);
      const now = this.timelines.get(id) ?? t;
      this.timelines.set(id, {
        ...now,
        messages: prependPage(now.messages, msgs),
        hasMore: page.hasMore,
        loadingOlder: false,
      });
      this.wantNames(msgs.map((m) => m.sender));
      this.changed();
      return msgs.length > 0;
    } catch (e) {
      const now = this.timelines.get(id) ?? t;
      this.timelines.set(id, { ...now, loadingOlder: false, error: errorText(e) });
      this.changed();
      return false;
    }
  }

  /** Tells the server the open conversation is read, when the page is visible. */
  markActiveRead(): void {
    const id = this.activeId;
    if (id === null || !this.visible) return;
    const c = this.conversations.get(id);
    if (!c || (c.lastSeq <= c.readSeq && c.unread === 0)) return;
    const upTo = c.lastSeq;
    this.conversations.set(id, { ...c, readSeq: upTo, unread: 0 });
    this.changed();
    if (upTo === 0n) return;
    // Messages arriving in a burst are marked read with one request, for the newest of them.
    if (this.readFlush && this.readFlush.id !== id) this.flushRead();
    this.readFlush = { id, upTo, timer: this.readFlush?.timer ?? setTimeout(() => this.flushRead(), MARK_READ_DELAY_MS) };
  }

  private flushRead(): void {
    const r = this.readFlush;
    if (!r) return;
    clearTimeout(r.timer);
    this.readFlush = null;
    if (!this.closed) this.session.markRead(r.id, r.upTo).catch(() => undefined);
  }

  setVisible(visible: boolean): void {
    this.visible = visible;
    if (visible) this.markActiveRead();
  }

  async startDirect(username: string): Promise<bigint> {
    const user = await this.session.lookupUser(username.trim());
    this.names.set(user.userId, user.username);
    const info = await this.session.openDirect(user.userId);
    const c = this.mergeConversation(fromInfo(info, this.me));
    void this.followPresence([c.peer]);
    this.changed();
    return c.id;
  }

  /** Looks up a username; the name is remembered, so the person is shown by name from then on. */
  async lookup(username: string): Promise<{ userId: bigint; username: string }> {
    const user = await this.session.lookupUser(username.trim());
    this.names.set(user.userId, user.username);
    return user;
  }

  async createGroup(name: string, memberIds: bigint[]): Promise<bigint> {
    const info = await this.session.createGroup(name.trim(), memberIds);
    const c = this.mergeConversation(fromInfo(info, this.me));
    this.changed();
    return c.id;
  }

  async addMembers(id: bigint, userIds: bigint[]): Promise<void> {
    await this.session.addMembers(id, userIds);
    await this.fetchConversation(id);
  }

  async removeMember(id: bigint, userId: bigint): Promise<void> {
    await this.session.removeMember(id, userId);
    await this.fetchConversation(id);
  }

  async renameGroup(id: bigint, name: string): Promise<void> {
    await this.session.renameGroup(id, name.trim());
    await this.fetchConversation(id);
  }

  async leaveGroup(id: bigint): Promise<void> {
    await this.session.leaveGroup(id);
    this.conversations.delete(id);
    this.timelines.delete(id);
    if (this.activeId === id) this.activeId = null;
    this.changed();
  }

  // ---- Sending ----------------------------------------------------------------------------

  /**
   * Sends a message. It shows at once with a clock; the SDK keeps it in its outbox until the server
   * confirms it, across reconnects and reloads, and the app keeps the echo until it comes back.
   */
  send(conversationId: bigint, text: string, attachments: Attachment[] = []): void {
    const p: PendingMessage = {
      localId: newLocalId(),
      conversationId,
      text,
      attachments,
      createdAtMs: Date.now(),
      clientMsgId: null,
    };
    this.pending.push(p);
    while (this.pending.length > PENDING_MAX) this.pending.shift();
    this.savePending();
    this.stopTyping();
    this.changed();
    this.session
      .send(conversationId, text, attachments.length > 0 ? { attachments } : undefined)
      .then((r) => {
        const echo = this.pending.find((x) => x.localId === p.localId);
        this.dropPending(p.localId);
        this.confirmed.add(r.messageId);
        while (this.confirmed.size > CONFIRMED_MAX) this.confirmed.delete(this.confirmed.values().next().value as bigint);
        // A live copy that came first already took the echo's place.
        if (!echo) return;
        const m: ChatMessage = {
          conversationId,
          seq: r.seq,
          messageId: r.messageId,
          sender: this.me,
          tsMs: Date.now(),
          text,
          attachments,
        };
        this.applyMessage(m, false);
      })
      .catch((e: unknown) => {
        if (this.closed) return;
        // The server refused it (not a member any more, too long, ...): it will never be sent.
        this.dropPending(p.localId);
        this.listError = `Message not sent: ${errorText(e)}`;
        this.changed();
      });
  }

  private dropPending(localId: string): void {
    const before = this.pending.length;
    this.pending = this.pending.filter((x) => x.localId !== localId);
    if (this.pending.length !== before) {
      this.savePending();
      this.changed();
    }
  }

  private savePending(): void {
    this.kept.write("pending", this.pending.map(pendingToJSON));
  }

  /**
   * Removes the echo a live copy of the user's own message stands for, when it comes before the
   * send's promise resolves. Echoes from before a reload wait for their exact `sent` event.
   */
  private matchPending(m: ChatMessage): void {
    const i = this.pending.findIndex(
      (p) =>
        p.clientMsgId === null &&
        p.conversationId === m.conversationId &&
        p.text === m.text &&
        sameAttachments(p.attachments, m.attachments),
    );
    if (i >= 0) this.dropPending(this.pending[i].localId);
  }

  clearError(): void {
    this.listError = "";
    this.changed();
  }

  /** Called on each edit of the composer: says "typing" now and then, and "stopped" when idle. */
  composing(conversationId: bigint, hasText: boolean): void {
    if (!hasText) {
      this.stopTyping();
      return;
    }
    if (this.typingConversation !== null && this.typingConversation !== conversationId) this.stopTyping();
    this.typingConversation = conversationId;
    this.startTyping(conversationId);
    if (this.typingStopTimer !== null) clearTimeout(this.typingStopTimer);
    this.typingStopTimer = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  /**
   * Sends a start, repeated every few seconds while the user types. Starts closer together than
   * the server takes (ternd: two a second per conversation) would be dropped, so one that comes
   * too soon after the last (typing again right after sending) waits for its turn instead.
   */
  private startTyping(id: bigint): void {
    const now = Date.now();
    const last = this.typingStartedAt.get(id) ?? 0;
    if (this.typingActive && now - last < TYPING_REPEAT_MS) return;
    const wait = last + TYPING_STARTS_GAP_MS - now;
    if (wait > 0) {
      this.typingStartTimer ??= setTimeout(() => {
        this.typingStartTimer = null;
        if (this.typingConversation === id && !this.closed) this.startTyping(id);
      }, wait);
      return;
    }
    this.session.typing(id, true);
    this.typingStartedAt.set(id, now);
    this.typingActive = true;
  }

  private stopTyping(): void {
    if (this.typingStopTimer !== null) clearTimeout(this.typingStopTimer);
    if (this.typingStartTimer !== null) clearTimeout(this.typingStartTimer);
    this.typingStopTimer = null;
    this.typingStartTimer = null;
    const id = this.typingConversation;
    this.typingConversation = null;
    if (id === null || !this.typingActive) return;
    this.typingActive = false;
    if (!this.closed) this.session.typing(id, false);
  }

  // ---- Media ------------------------------------------------------------------------------

  async upload(file: File, onProgress: (sent: number, total: number) => void): Promise<Attachment> {
    const data = new Uint8Array(await file.arrayBuffer());
    return this.session.upload(data, {
      mime: file.type || "application/octet-stream",
      name: file.name,
      onProgress,
    });
  }

  /** Downloads an attachment once; its progress and then its object URL are in `downloads`. */
  async download(a: Attachment): Promise<Transfer> {
    const existing = this.downloads.get(a.mediaId);
    if (existing && (existing.url || (!existing.error && existing.got < existing.total))) return existing;
    const t: Transfer = { got: 0, total: Number(a.size), url: "", error: "" };
    this.downloads.set(a.mediaId, t);
    this.changed();
    // Re-rendered once per percent, however many chunks a large file has.
    let shownPercent = -1;
    try {
      const bytes = await this.session.download(a.mediaId, {
        onProgress: (got, total) => {
          this.downloads.set(a.mediaId, { ...t, got, total });
          const percent = total > 0 ? Math.floor((got * 100) / total) : 100;
          if (percent !== shownPercent) {
            shownPercent = percent;
            this.changed();
          }
        },
      });
      const blob = new Blob([bytes as BlobPart], { type: a.mime });
      const done: Transfer = { got: bytes.length, total: bytes.length, url: URL.createObjectURL(blob), error: "" };
      this.downloads.set(a.mediaId, done);
      this.changed();
      return done;
    } catch (e) {
      const failed: Transfer = { ...t, error: errorText(e) };
      this.downloads.set(a.mediaId, failed);
      this.changed();
      return failed;
    }
  }

  // ---- Events from the session ------------------------------------------------------------

  private onMessage(e: SessionEvents["message"]): void {
    const m = fromMessage(e);
    if (this.conversations.has(m.conversationId)) {
      this.applyMessage(m, true);
      return;
    }
    // A conversation this app has not seen (a new direct chat, or a group it was added to).
    void this.fetchConversation(m.conversationId).then((c) => {
      if (c) this.applyMessage(m, true);
    });
  }

  private applyMessage(m: ChatMessage, live: boolean): void {
    const c = this.conversations.get(m.conversationId);
    if (!c) return;
    const isNew = m.seq > c.lastSeq;
    const next: ChatConversation = { ...c };
    if (m.seq >= c.lastSeq) {
      next.lastSeq = m.seq;
      next.lastMessage = m;
      next.activityMs = Math.max(c.activityMs, m.tsMs);
    }
    if (m.sender === this.me) {
      // What the user wrote, they have read, and everything before it (spec §17.6).
      if (m.seq > next.readSeq) next.readSeq = m.seq;
      if (next.readSeq >= next.lastSeq) next.unread = 0;
      if (live && !this.confirmed.has(m.messageId)) this.matchPending(m);
    } else {
      this.noteAuthorRead(m);
      this.typing.get(m.conversationId)?.delete(m.sender);
      if (isNew && m.seq > next.readSeq) next.unread += 1;
    }
    this.conversations.set(c.id, next);
    const t = this.timelines.get(c.id);
    if (t?.loaded) {
      const have = t.messages.find((x) => x.seq === m.seq);
      // A live copy replaces the app's own stand-in from `Sent`, which has only an estimated time.
      if (!have || live) this.timelines.set(c.id, { ...t, messages: insertBySeq(t.messages, m) });
    }
    this.wantNames([m.sender]);
    if (this.activeId === c.id) this.markActiveRead();
    this.changed();
  }

  /** A member's own message shows they have read the conversation up to it (spec §17.6). */
  private noteAuthorRead(m: ChatMessage): void {
    if (m.sender !== this.me && this.receipts.apply(m.conversationId, m.sender, "read", m.seq)) this.saveReceipts();
  }

  /** The server stored a message queued before a reload: its echo becomes the message. */
  private onSent(e: SessionEvents["sent"]): void {
    const id = hex(e.clientMsgId);
    const echo = this.pending.find((p) => p.clientMsgId === id);
    if (!echo) return;
    this.dropPending(echo.localId);
    this.confirmed.add(e.messageId);
    const m: ChatMessage = {
      conversationId: e.conversationId,
      seq: e.seq,
      messageId: e.messageId,
      sender: this.me,
      tsMs: Number(e.sentAt),
      text: echo.text,
      attachments: echo.attachments,
    };
    if (this.conversations.has(m.conversationId)) this.applyMessage(m, false);
  }

  /** A queued message from before a reload was refused for good (this page's fail their promise). */
  private onSendFailed(e: SessionEvents["sendFailed"]): void {
    const echo = this.pending.find((p) => p.clientMsgId === hex(e.clientMsgId));
    if (!echo) return;
    this.dropPending(echo.localId);
    this.listError = `Message not sent: ${errorText(e.error)}`;
    this.changed();
  }

  private onReceipt(e: SessionEvents["receipt"]): void {
    if (e.userId === this.me) {
      // The user read this conversation on another device.
      const c = this.conversations.get(e.conversationId);
      if (!c || e.kind !== "read" || e.upToSeq <= c.readSeq) return;
      const caughtUp = e.upToSeq >= c.lastSeq;
      this.conversations.set(c.id, { ...c, readSeq: e.upToSeq, unread: caughtUp ? 0 : c.unread });
      if (!caughtUp) void this.fetchConversation(c.id);
      this.changed();
      return;
    }
    if (this.receipts.apply(e.conversationId, e.userId, e.kind, e.upToSeq)) {
      this.saveReceipts();
      this.changed();
    }
  }

  private saveReceipts(): void {
    this.kept.write("receipts", this.receipts.toJSON());
  }

  private onTyping(e: SessionEvents["typing"]): void {
    if (e.userId === this.me) return;
    let m = this.typing.get(e.conversationId);
    if (!m) {
      m = new Map();
      this.typing.set(e.conversationId, m);
    }
    if (e.typing) {
      m.set(e.userId, Date.now() + TYPING_EXPIRY_MS);
      this.wantNames([e.userId]);
      this.sweepTypingLater();
    } else {
      m.delete(e.userId);
    }
    this.changed();
  }

  /** While anyone is typing, checks once a second for indicators that ran out. */
  private sweepTypingLater(): void {
    if (this.typingSweep !== null) return;
    this.typingSweep = setInterval(() => {
      const now = Date.now();
      let any = false;
      let expired = false;
      for (const m of this.typing.values()) {
        for (const [u, until] of m) {
          if (until <= now) {
            m.delete(u);
            expired = true;
          } else any = true;
        }
      }
      if (expired) this.changed();
      if (!any && this.typingSweep !== null) {
        clearInterval(this.typingSweep);
        this.typingSweep = null;
      }
    }, 1000);
  }

  private onPresence(e: SessionEvents["presence"]): void {
    this.presence.set(e.userId, {
      online: e.online,
      lastSeenMs: e.lastSeen === undefined || e.lastSeen === null ? null : Number(e.lastSeen),
    });
    this.changed();
  }

  private onState(e: SessionEvents["state"]): void {
    const wasOnline = this.connection === "online";
    this.connection = e.state;
    this.connectionError = e.error === undefined ? "" : errorText(e.error);
    // Presence is only known while connected; the SDK follows it again on the next connection and
    // reports it afresh. The list is reloaded then for its unread counts.
    if (e.state !== "online") this.presence.clear();
    else if (!wasOnline && this.refreshedOnce) void this.refresh();
    this.changed();
  }

  // ---- Names and presence -----------------------------------------------------------------

  /** Asks for the names of users not known yet, in one batch per microtask. */
  wantNames(ids: bigint[]): void {
    let added = false;
    for (const id of ids) {
      if (id === 0n || this.names.has(id) || this.namesAsked.has(id)) continue;
      this.namesAsked.add(id);
      added = true;
    }
    if (!added || this.nameFlushQueued) return;
    this.nameFlushQueued = true;
    queueMicrotask(() => void this.flushNames());
  }

  private async flushNames(): Promise<void> {
    this.nameFlushQueued = false;
    const ids = [...this.namesAsked].filter((id) => !this.names.has(id));
    for (let i = 0; i < ids.length; i += USERS_PER_REQUEST_MAX) {
      const chunk = ids.slice(i, i + USERS_PER_REQUEST_MAX);
      try {
        const got = await this.session.getUsers(chunk);
        for (const [id, name] of got) this.names.set(id, name);
        this.changed();
      } catch {
        // Asked again the next time one of them is shown.
        for (const id of chunk) this.namesAsked.delete(id);
      }
    }
  }

  /** Subscribes to the presence of users not followed on this connection yet. */
  async followPresence(ids: bigint[]): Promise<void> {
    const fresh = [...new Set(ids)].filter((u) => u !== 0n && !this.presenceSubscribed.has(u));
    if (fresh.length === 0 || this.connection === "offline") return;
    for (const u of fresh) this.presenceSubscribed.add(u);
    for (let i = 0; i < fresh.length; i += USERS_PER_REQUEST_MAX) {
      const chunk = fresh.slice(i, i + USERS_PER_REQUEST_MAX);
      try {
        const list = await this.session.subscribePresence(chunk);
        for (const p of list) this.onPresence(p);
      } catch {
        for (const u of chunk) this.presenceSubscribed.delete(u);
      }
    }
  }
}
