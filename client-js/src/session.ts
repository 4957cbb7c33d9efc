/**
 * {@link Session}: a logged-in device that stays connected, with the semantics of the Rust
 * `tern-client` session (spec §17).
 *
 * # How it works
 *
 * One loop owns the connection. It connects (WebSocket, `Hello`), authenticates (`Resume` with the
 * stored token; `Register` or `Login` the first time, then stores the token), syncs from the stored
 * cursor to the head (`Sync` pages, each acknowledged with `Ack` once the cursor is stored), and then
 * serves the live connection until it ends: live updates are handed to the app in `user_seq` order
 * (anything at or below the cursor is a repeat and dropped; a jump past it is a gap, filled by
 * another `Sync`), queued sends go out oldest first (pipelined while the server's send limit leaves
 * room, see `pacer.ts`), the connection pings at the server's heartbeat interval, and the cursor is
 * stored and acknowledged in batches. When the connection ends, the loop waits (exponential
 * back-off with jitter, or the delay a `GoAway` named) and starts over; every send not yet confirmed
 * goes out again with its `client_msg_id`, which the server stores at most once.
 *
 * The outbox lives in the {@link Storage}: a send is stored before it is sent, and leaves the storage
 * only once the server confirmed it (`Sent`, or the message showing up in the user's own log) or
 * refused it for good. So a page reload or a crash loses no message, and repeats none.
 *
 * @module
 */

import {
  BACKUP_ENTRIES_PER_REQUEST_MAX,
  BACKUP_ENTRY_ID_BYTES,
  BODY_CHARS_MAX,
  type BackupEntry,
  type BackupPage,
  type Body,
  type BodyOf,
  type ClaimedKey,
  type Conversation as WireConversation,
  type DeviceAddress,
  type DeviceKeys,
  FRAME_HEADER_BYTES,
  KEY_CLAIMS_MAX,
  KEY_QUERY_USERS_MAX,
  type KeyCounts,
  type SignedKey,
  TO_DEVICE_MESSAGES_PER_REQUEST_MAX,
  type ToDeviceOut,
  type ToDevicePage,
  type UserDeviceKeys,
  type FrameName,
  MEDIA_CHUNK_BYTES_MAX,
  PRESENCE_USERS_MAX,
  type ServerLimits,
  type Update,
  USERS_PER_REQUEST_MAX,
  decodeUtf8,
  encodeFrame,
  EncodeError,
  ATTACHMENTS_PER_MESSAGE_MAX,
  ERROR_CODES,
  type Message as WireMessage,
  type ConversationSummary as WireConversationSummary,
} from "./codec/index.js";
import { Connection, type WebSocketCtor } from "./connection.js";
import { Emitter } from "./emitter.js";
import { TernError } from "./errors.js";
import type {
  Attachment,
  ConversationInfo,
  ConversationSummary,
  Message,
  Presence,
  SessionEvents,
  SessionState,
} from "./model.js";
import { Pacer } from "./pacer.js";
import type { PendingSend, Storage, StoredSession, StoredState } from "./storage.js";
import { type Deferred, Signal, bytesEqual, deferred, delay, newClientMsgId, randomFraction, sha256, toHex } from "./util.js";

/** How a session authenticates. */
export type SessionAuth =
  /** Create an account and its first device, or log in as a new device of an existing account. */
  | { kind: "register" | "login"; username: string; password: string }
  /** Resume the device stored in the storage; fails with `NO_SESSION` when there is none. */
  | { kind: "resume" };

/** Settings of a {@link Session}. Only `url`, `storage` and `auth` are required. */
export interface SessionOptions {
  /** The server's WebSocket address: `ws://host:7402/`, or `wss://` with TLS. */
  url: string;
  /** Where the session keeps its token, cursor and outbox. */
  storage: Storage;
  /** How to authenticate. */
  auth: SessionAuth;
  /** A name for this device, shown by the user's device list (at most 64 bytes). */
  deviceName?: string;
  /** The WebSocket constructor; defaults to the global `WebSocket` (pass `ws`'s in Node.js 20). */
  WebSocket?: WebSocketCtor;
  /** The client software's name and version, for the server's logs. Default: `tern-js/0.1.0`. */
  clientName?: string;
  /** How long a request waits for its reply (and for a connection), in ms. Default: 10,000. */
  requestTimeoutMs?: number;
  /** How long connecting and the handshake may take, in ms. Default: 10,000. */
  connectTimeoutMs?: number;
  /** The first wait before reconnecting, in ms; waits double from it, with jitter. Default: 200. */
  reconnectMinMs?: number;
  /** The longest wait before reconnecting, in ms. Default: 30,000. */
  reconnectMaxMs?: number;
  /** Sends in flight at once while the server's send limit leaves room (at most 192). Default: 32. */
  sendsInFlight?: number;
  /** The server's send burst per connection, as far as the session knows. Default: 100 (`ternd`'s). */
  sendBurst?: number;
  /** The server's sustained sends per second per connection; 0: no limit. Default: 50 (`ternd`'s). */
  sendsPerSecond?: number;
}

/** The result of a send: where the server stored the message. */
export interface SendResult {
  /** The message's position in its conversation. */
  seq: bigint;
  /** The message's server-wide id. */
  messageId: bigint;
  /** When the server stored it (ms since the epoch). */
  sentAt: bigint;
  /** The message's idempotency key. */
  clientMsgId: Uint8Array;
}

const CLIENT_NAME_DEFAULT = "tern-js/0.1.0";
const REQUEST_TIMEOUT_DEFAULT_MS = 10_000;
const CONNECT_TIMEOUT_DEFAULT_MS = 10_000;
const RECONNECT_MIN_DEFAULT_MS = 200;
const RECONNECT_MAX_DEFAULT_MS = 30_000;
/** Sends in flight at most: the protocol allows 256 requests in flight, shared with the app's. */
const SENDS_IN_FLIGHT_MAX = 192;
/** How long after an update the cursor is stored and acknowledged, at most, in ms. */
const ACK_DELAY_MS = 200;
/** The wait before retrying a send the server could not take just then, in ms. */
const TRANSIENT_RETRY_MS = 500;
/** How long a connection may stay open after `GoAway` before the session closes it, in ms. */
const GO_AWAY_CLOSE_MAX_MS = 15_000;
/** A typing start ends by itself after this long without a repeat (spec §12.6), in ms. */
const TYPING_EXPIRY_MS = 10_000;
/** A repeated typing start within this long is not sent again (spec §12.5 asks for ~5 s), in ms. */
const TYPING_REPEAT_MS = 3_000;
/** Upload or download chunks in flight at once. */
const MEDIA_WINDOW_CHUNKS = 4;
/** Times a read or a media transfer is tried again after its connection dropped. */
const RETRIES_ON_DISCONNECT = 4;
/** Sync pages in one catch-up, at most: a log of 1,000 updates a page reaches far beyond. */
const SYNC_PAGES_MAX = 1_000_000;
/** Conversation pages in one listing, at most. */
const CONVERSATION_PAGES_MAX = 100_000;

/** One connection attempt's connection, where its events go, and the promise of its end. */
interface Attempt {
  conn: Connection;
  events: EventRouter;
  ended: Promise<TernError>;
}

/**
 * Where a connection's events go. A connection made before its session exists (the first
 * `Register` or `Login`) holds them until the session takes over.
 */
class EventRouter {
  private target: ((body: Body) => void) | null = null;
  private readonly early: Body[] = [];

  /** Hands an event on, or holds it. */
  deliver(body: Body): void {
    if (this.target === null) {
      this.early.push(body);
    } else {
      this.target(body);
    }
  }

  /** Sends every event, the held ones first, to `target`. */
  attach(target: (body: Body) => void): void {
    this.target = target;
    for (const body of this.early.splice(0)) {
      target(body);
    }
  }
}

/** What opening a connection needs from the options. */
type OpenOptions = Pick<SessionOptions, "url" | "clientName" | "connectTimeoutMs" | "requestTimeoutMs">;

/**
 * A connection-keeping, persisting session of one device. Create it with {@link Session.start}.
 * See the module's docs for how it works.
 */
export class Session {
  /** The user. */
  readonly userId: bigint;
  /** This device. */
  readonly deviceId: number;
  /** The user's name. */
  readonly username: string;

  private readonly options: Required<Omit<SessionOptions, "deviceName" | "WebSocket" | "auth">> & {
    deviceName: string;
    WebSocket: WebSocketCtor;
  };
  private readonly storage: Storage;
  private readonly token: Uint8Array;
  private readonly emitter = new Emitter<SessionEvents>([
    "message",
    "receipt",
    "conversation",
    "deviceListChanged",
    "toDevice",
    "sent",
    "sendFailed",
    "loggedOut",
  ]);
  private readonly stop = new Signal();
  private loop: Promise<void> = Promise.resolve();
  private currentState: SessionState = "connecting";

  /** The authenticated connection, or null between connections. */
  private conn: Connection | null = null;
  private live = false;
  private goAway = false;
  private generation = 0;
  private readonly connWaiters = new Set<() => void>();
  /** Set when the server revoked this device; the loop stops instead of reconnecting. */
  private revoked: TernError | null = null;
  private loggingOut = false;

  /** The `user_seq` of the last update handed to the app. */
  private cursor: bigint;
  /** The cursor the storage holds. */
  private storedCursor: bigint;
  /** The cursor acknowledged on the current connection. */
  private ackedCursor = 0n;
  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  private syncing = false;
  private resync = false;

  private readonly outbox: PendingSend[];
  private readonly inFlight = new Set<string>();
  private readonly waiters = new Map<string, Deferred<SendResult>>();
  private pacer: Pacer;
  private pumpTimer: ReturnType<typeof setTimeout> | undefined;
  /** Storage writes run one after the other, in the order asked for. */
  private storageQueue: Promise<unknown> = Promise.resolve();

  private readonly presenceSubscriptions = new Set<bigint>();
  private readonly typingExpiry = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly typingSentAt = new Map<bigint, number>();
  private readonly knownConversations = new Set<bigint>();

  private constructor(options: SessionOptions, WebSocket: WebSocketCtor, state: StoredState, session: StoredSession) {
    this.options = {
      url: options.url,
      storage: options.storage,
      deviceName: options.deviceName ?? "",
      WebSocket,
      clientName: options.clientName ?? CLIENT_NAME_DEFAULT,
      requestTimeoutMs: options.requestTimeoutMs ?? REQUEST_TIMEOUT_DEFAULT_MS,
      connectTimeoutMs: options.connectTimeoutMs ?? CONNECT_TIMEOUT_DEFAULT_MS,
      reconnectMinMs: options.reconnectMinMs ?? RECONNECT_MIN_DEFAULT_MS,
      reconnectMaxMs: Math.max(options.reconnectMaxMs ?? RECONNECT_MAX_DEFAULT_MS, options.reconnectMinMs ?? RECONNECT_MIN_DEFAULT_MS),
      sendsInFlight: Math.min(options.sendsInFlight ?? 32, SENDS_IN_FLIGHT_MAX),
      sendBurst: options.sendBurst ?? 100,
      sendsPerSecond: options.sendsPerSecond ?? 50,
    };
    this.storage = options.storage;
    this.userId = session.userId;
    this.deviceId = session.deviceId;
    this.username = session.username;
    this.token = session.token;
    this.cursor = state.cursor;
    this.storedCursor = state.cursor;
    this.outbox = state.outbox;
    this.pacer = this.newPacer();
  }

  /**
   * Connects, authenticates and starts syncing.
   *
   * With `register` or `login` it resolves once the server accepted the credentials (and the new
   * device's token is stored), and rejects with the server's error otherwise (`BAD_CREDENTIALS`,
   * `USERNAME_TAKEN`, `INVALID_ARGUMENT`, ...) or `NETWORK` when the server cannot be reached. A
   * stored session of another user is forgotten first; one of the same user keeps its cursor and
   * outbox.
   *
   * With `resume` it uses the stored session: it resolves once the device is authenticated, or,
   * when the server cannot be reached, after that first attempt failed (the session is then
   * offline and keeps reconnecting; the outbox waits). It rejects with `NO_SESSION` when nothing is
   * stored, and with `BAD_CREDENTIALS` when the server no longer accepts the token (the stored
   * session is then forgotten).
   *
   * Attach listeners right away: messages, receipts and conversation changes that arrive before a
   * listener of their type exists are held for it (see {@link Session.on}).
   */
  static async start(options: SessionOptions): Promise<Session> {
    const WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (WebSocket === undefined) {
      throw new TernError("NETWORK", "no WebSocket: pass the constructor of the `ws` package as `WebSocket` in Node.js");
    }
    let state = await options.storage.load();
    const auth = options.auth;
    if (auth.kind === "resume") {
      const stored = state.session;
      if (stored === null) {
        throw new TernError("NO_SESSION", "the storage holds no session to resume");
      }
      const session = new Session(options, WebSocket, state, stored);
      await session.begin(null);
      return session;
    }
    const username = auth.username.toLowerCase();
    if (state.session !== null && state.session.username !== username) {
      await options.storage.clear();
      state = await options.storage.load();
    }
    const attempt = await Session.connectFresh(options, WebSocket, { ...auth, username });
    const stored = attempt.session;
    try {
      await options.storage.saveSession(stored);
    } catch (error) {
      attempt.attempt.conn.close();
      throw error;
    }
    const session = new Session(options, WebSocket, state, stored);
    await session.begin(attempt);
    return session;
  }

  /** The connection state now. */
  get state(): SessionState {
    return this.currentState;
  }

  /** The server's limits, from the current connection's `Welcome`; null while not connected. */
  get limits(): ServerLimits | null {
    return this.conn?.welcome.limits ?? null;
  }

  /** The stored cursor: the `user_seq` of the last update processed and stored. */
  get storedSyncCursor(): bigint {
    return this.storedCursor;
  }

  /**
   * Calls `fn` for every event of `type`; returns a function that unsubscribes it.
   *
   * `message`, `receipt`, `conversation`, `deviceListChanged`, `toDevice`, `sent`, `sendFailed` and
   * `loggedOut` events that happen while their type has no listener are held (up to 10,000 of each
   * type) and given to the first listener, right after it subscribes; the other types describe the
   * present and are dropped.
   */
  on<K extends keyof SessionEvents>(type: K, fn: (e: SessionEvents[K]) => void): () => void {
    return this.emitter.on(type, fn);
  }

  /**
   * Sends a message: stores it in the outbox, sends it when connected, and resolves once the
   * server stored it (`Sent`). While offline it waits in the outbox (which survives a reload; a
   * later session sends it and reports it with a `sent` event). Rejects with the server's error
   * when the server refuses it for good (`NOT_FOUND` for a conversation the user is not in,
   * `LIMIT_EXCEEDED`, `ENCRYPTION_REQUIRED` for a body that is not an encrypted body in an
   * encrypted conversation, ...), which also removes it from the outbox, or with `CLOSED` when the session
   * is closed first (the message stays in the outbox).
   *
   * A `Uint8Array` body must be UTF-8: protocol version 1 carries text.
   */
  async send(conversationId: bigint, body: string | Uint8Array, opts: { attachments?: Attachment[] } = {}): Promise<SendResult> {
    this.checkOpen();
    const text = typeof body === "string" ? body : decodeUtf8(body);
    if (text === null) {
      throw new TernError("INVALID_ARGUMENT", "the body is not valid UTF-8");
    }
    const attachments = (opts.attachments ?? []).map((a) => a.mediaId);
    const pending: PendingSend = { clientMsgId: newClientMsgId(), conversationId, body: text, attachments, queuedAt: Date.now() };
    this.checkSendable(pending);
    const id = toHex(pending.clientMsgId);
    const waiter = deferred<SendResult>();
    this.waiters.set(id, waiter);
    try {
      await this.store(() => this.storage.pushOutbox(pending));
    } catch (error) {
      this.waiters.delete(id);
      throw error;
    }
    this.outbox.push(pending);
    this.emitter.emit("outbox", { pending: this.outbox.length });
    this.pump();
    return waiter.promise;
  }

  /** Messages queued and not yet confirmed or refused. */
  pendingOutbox(): number {
    return this.outbox.length;
  }

  /**
   * The queued messages themselves, oldest first (copies): what an app shows as "sending" after a
   * reload. Each leaves with a `sent` or `sendFailed` event carrying its `clientMsgId`.
   */
  pendingMessages(): PendingSend[] {
    return this.outbox.map((s) => ({ ...s, clientMsgId: s.clientMsgId.slice(), attachments: [...s.attachments] }));
  }

  /**
   * Finds the direct conversation with a user, creating it if there is none. With `encrypted`, one
   * that does not exist yet is created encrypted end to end (spec §19.7); an existing one keeps
   * what it is, which `encrypted` of the result tells.
   */
  async openDirect(userId: bigint, opts: { encrypted?: boolean } = {}): Promise<ConversationInfo> {
    const body = { type: "OpenDirect" as const, userId, encrypted: opts.encrypted === true };
    const reply = await this.retrying(() => this.call(body, "Conversation"));
    this.knownConversations.add(reply.conversation.conversationId);
    return toConversationInfo(reply);
  }

  /** Finds a user by exact username (lower-cased first). Rejects with `NOT_FOUND` when none has it. */
  async lookupUser(username: string): Promise<{ userId: bigint; username: string }> {
    const reply = await this.retrying(() => this.call({ type: "LookupUser", username: username.toLowerCase() }, "UserInfo"));
    return { userId: reply.userId, username: reply.username };
  }

  /** The names of users by id; ids of no user are left out. */
  async getUsers(ids: bigint[]): Promise<Map<bigint, string>> {
    const unique = [...new Set(ids)];
    const names = new Map<bigint, string>();
    for (let i = 0; i < unique.length; i += USERS_PER_REQUEST_MAX) {
      const userIds = unique.slice(i, i + USERS_PER_REQUEST_MAX);
      const reply = await this.retrying(() => this.call({ type: "GetUsers", userIds }, "Users"));
      for (const user of reply.users) {
        names.set(user.userId, user.username);
      }
    }
    return names;
  }

  /** Every conversation of the user, in ascending id, paging through all of them. */
  async listConversations(): Promise<ConversationSummary[]> {
    const out: ConversationSummary[] = [];
    let after = 0n;
    for (let page = 0; page < CONVERSATION_PAGES_MAX; page++) {
      const reply = await this.retrying(() => this.call({ type: "ListConversations", after, limit: 0 }, "Conversations"));
      for (const summary of reply.conversations) {
        this.knownConversations.add(summary.conversationId);
        out.push(toSummary(summary));
      }
      const last = reply.conversations.at(-1);
      if (!reply.hasMore || last === undefined || last.conversationId <= after) {
        return out;
      }
      after = last.conversationId;
    }
    return out;
  }

  /** One conversation of the user. Rejects with `NOT_FOUND` when the user is not a member. */
  async getConversation(id: bigint): Promise<ConversationInfo> {
    const reply = await this.retrying(() => this.call({ type: "GetConversation", conversationId: id }, "Conversation"));
    this.knownConversations.add(id);
    return toConversationInfo(reply);
  }

  /**
   * A page of a conversation's messages in ascending `seq`: the newest ones with `seq < before`
   * (all the newest when `before` is absent). `hasMore` says whether older ones exist; ask again
   * with `before` = the first `seq` of this page.
   */
  async history(conversationId: bigint, opts: { before?: bigint; limit?: number } = {}): Promise<{ messages: Message[]; hasMore: boolean }> {
    const body = { type: "History" as const, conversationId, before: opts.before ?? 0n, limit: opts.limit ?? 0 };
    const reply = await this.retrying(() => this.call(body, "HistoryPage"));
    return { messages: reply.messages.map(toMessage), hasMore: reply.hasMore };
  }

  /**
   * A page of a conversation's messages read forwards (revision 1.1, spec §10.6): the oldest ones
   * with `seq > after` (0: from the first message), in ascending `seq`. `hasMore` says whether
   * newer ones exist; ask again with `after` = the last `seq` of this page. For jumping to a search
   * hit, a quoted message or the first unread one. Rejects with `UNSUPPORTED` when the server is
   * older than 1.1 (its reply does not echo `after`, so it paged backwards).
   */
  async historyAfter(conversationId: bigint, after: bigint, opts: { limit?: number } = {}): Promise<{ messages: Message[]; hasMore: boolean }> {
    const body = { type: "History" as const, conversationId, before: 0n, limit: opts.limit ?? 0, after };
    const reply = await this.retrying(() => this.call(body, "HistoryPage"));
    if (reply.after !== after) {
      throw new TernError("UNSUPPORTED", "the server does not page history forwards (it is older than revision 1.1)");
    }
    return { messages: reply.messages.map(toMessage), hasMore: reply.hasMore };
  }

  /** Marks every message up to `upToSeq` read; the other members get read receipts. */
  async markRead(conversationId: bigint, upToSeq: bigint): Promise<void> {
    await this.retrying(() => this.call({ type: "MarkRead", conversationId, upToSeq }, "Ok"));
  }

  /**
   * Says the user started (`true`) or stopped (`false`) typing. Call it as often as keys are
   * pressed: a start is sent again only after 3 s, as the spec asks (§12.5). Dropped while offline.
   */
  typing(conversationId: bigint, typing: boolean): void {
    const conn = this.usableNow();
    if (conn === null) {
      return;
    }
    const now = Date.now();
    const last = this.typingSentAt.get(conversationId);
    if (typing) {
      if (last !== undefined && now - last < TYPING_REPEAT_MS) {
        return;
      }
      this.typingSentAt.set(conversationId, now);
    } else {
      if (last === undefined) {
        return;
      }
      this.typingSentAt.delete(conversationId);
    }
    try {
      conn.notify({ type: "Typing", conversationId, active: typing });
    } catch {
      // The connection just ended: typing is ephemeral, nothing to retry.
    }
  }

  /**
   * Follows users' presence: resolves with their presence now, and `presence` events follow each
   * change. Each must share a conversation with the user (`FORBIDDEN` otherwise). The session
   * follows them again after every reconnect.
   */
  async subscribePresence(userIds: bigint[]): Promise<Presence[]> {
    const out: Presence[] = [];
    const unique = [...new Set(userIds)];
    for (let i = 0; i < unique.length; i += PRESENCE_USERS_MAX) {
      const users = unique.slice(i, i + PRESENCE_USERS_MAX);
      const reply = await this.retrying(() => this.call({ type: "SubscribePresence", users }, "PresenceList"));
      for (const user of users) {
        this.presenceSubscriptions.add(user);
      }
      out.push(...reply.presences);
    }
    return out;
  }

  /** Stops following users' presence. */
  async unsubscribePresence(userIds: bigint[]): Promise<void> {
    const unique = [...new Set(userIds)];
    for (const user of unique) {
      this.presenceSubscriptions.delete(user);
    }
    for (let i = 0; i < unique.length; i += PRESENCE_USERS_MAX) {
      const users = unique.slice(i, i + PRESENCE_USERS_MAX);
      await this.retrying(() => this.call({ type: "UnsubscribePresence", users }, "Ok"));
    }
  }

  /**
   * Creates a group with the user as its owner and `memberIds` as members; with `encrypted`, the
   * group is encrypted end to end for its whole life (spec §19.7).
   */
  async createGroup(name: string, memberIds: bigint[], opts: { encrypted?: boolean } = {}): Promise<ConversationInfo> {
    const body = { type: "CreateGroup" as const, name, members: memberIds, encrypted: opts.encrypted === true };
    const reply = await this.call(body, "Conversation");
    this.knownConversations.add(reply.conversation.conversationId);
    return toConversationInfo(reply);
  }

  /** Adds members to a group (admins and the owner only). */
  async addMembers(id: bigint, userIds: bigint[]): Promise<void> {
    await this.retrying(() => this.call({ type: "AddMembers", conversationId: id, members: userIds }, "Ok"));
  }

  /** Removes a member from a group (admins and the owner; only the owner removes an admin). */
  async removeMember(id: bigint, userId: bigint): Promise<void> {
    await this.call({ type: "RemoveMember", conversationId: id, userId }, "Ok");
  }

  /** Leaves a group. */
  async leaveGroup(id: bigint): Promise<void> {
    await this.call({ type: "LeaveGroup", conversationId: id }, "Ok");
  }

  /** Renames a group (any member). */
  async renameGroup(id: bigint, name: string): Promise<void> {
    await this.retrying(() => this.call({ type: "RenameGroup", conversationId: id, name }, "Ok"));
  }

  /** Changes a member's role (the owner only); `"owner"` transfers ownership. */
  async setRole(id: bigint, userId: bigint, role: "member" | "admin" | "owner"): Promise<void> {
    await this.call({ type: "SetRole", conversationId: id, userId, role }, "Ok");
  }

  // ---- End-to-end encryption: the key directory, to-device messages, the key backup (spec §19) ----
  //
  // These carry keys and payloads made elsewhere: signing, Olm and Megolm are the job of a
  // cryptography library (the Rust client library does all of it with vodozemac).

  /**
   * Publishes this device's keys (spec §19.3.1) and resolves with its counts in the directory.
   * `identity` is required with the first keys a device publishes (its `deviceId` this device's,
   * signed over `identitySignedBytes`); each one-time and fallback key is signed over
   * `keySignedBytes`. With nothing in it, it just asks for the counts. Rejects with
   * `INVALID_ARGUMENT` when a signature does not verify, `CONFLICT` when the identity keys differ
   * from those published before, `LIMIT_EXCEEDED` past 100 one-time keys.
   */
  async publishKeys(keys: { identity?: DeviceKeys; oneTimeKeys?: SignedKey[]; fallbackKey?: SignedKey } = {}): Promise<KeyCounts> {
    const body = {
      type: "PublishKeys" as const,
      identity: keys.identity ?? null,
      oneTimeKeys: keys.oneTimeKeys ?? [],
      fallbackKey: keys.fallbackKey ?? null,
    };
    const reply = await this.retrying(() => this.call(body, "KeysPublished"));
    return { oneTimeKeysLeft: reply.oneTimeKeysLeft, fallbackKeyUsed: reply.fallbackKeyUsed };
  }

  /**
   * The devices and identity keys of users (spec §19.3.2), one entry per user who exists, in the
   * order asked (repeats asked once). Check each device's signature before trusting it: the server
   * is not trusted.
   */
  async getDeviceKeys(userIds: bigint[]): Promise<UserDeviceKeys[]> {
    const unique = [...new Set(userIds)];
    const out: UserDeviceKeys[] = [];
    for (let i = 0; i < unique.length; i += KEY_QUERY_USERS_MAX) {
      const body = { type: "GetDeviceKeys" as const, userIds: unique.slice(i, i + KEY_QUERY_USERS_MAX) };
      const reply = await this.retrying(() => this.call(body, "DeviceKeysList"));
      out.push(...reply.users);
    }
    return out;
  }

  /**
   * Takes one key of each device named (spec §19.3.3): a one-time key, removed from the directory,
   * or the device's fallback key (`fallback` true) when it has none left. Devices that are revoked,
   * unknown or have published no key are left out. Not retried after a dropped connection, since
   * a retry would take further keys.
   */
  async claimKeys(devices: DeviceAddress[]): Promise<ClaimedKey[]> {
    const out: ClaimedKey[] = [];
    for (let i = 0; i < devices.length; i += KEY_CLAIMS_MAX) {
      const reply = await this.call({ type: "ClaimKeys", devices: devices.slice(i, i + KEY_CLAIMS_MAX) }, "ClaimedKeys");
      out.push(...reply.keys);
    }
    return out;
  }

  /**
   * Queues payloads for devices (spec §19.4.1), in as many requests as the frame size and the
   * 256-message limit need, and resolves with the recipients for which nothing was queued (no such
   * device, a revoked one, or a full queue). A retry after a dropped connection may queue a
   * message twice, which recipients ignore.
   */
  async sendToDevice(messages: ToDeviceOut[]): Promise<DeviceAddress[]> {
    if (messages.length === 0) {
      throw new TernError("INVALID_ARGUMENT", "no to-device message to send");
    }
    const frameBytesMax = (await this.usableConnection()).frameBytesMax;
    const undelivered: DeviceAddress[] = [];
    for (const batch of toDeviceBatches(messages, frameBytesMax)) {
      const reply = await this.retrying(() => this.call({ type: "SendToDevice", messages: batch }, "ToDeviceSent"));
      undelivered.push(...reply.undelivered);
    }
    return undelivered;
  }

  /**
   * Acknowledges this device's to-device messages up to `since` (the server deletes them) and
   * resolves with those after it, up to `limit` (0: the server's 100), and this device's key
   * counts (spec §19.4.2). A page with `hasMore` false makes the current connection to-device
   * live: new messages then arrive as `toDevice` events. A new connection is not: after each
   * reconnect (a `state` event with `online`), call this again from the last `seq` processed.
   */
  async toDeviceSync(since = 0n, limit = 0): Promise<ToDevicePage> {
    const page = await this.retrying(() => this.call({ type: "ToDeviceSync", since, limit }, "ToDevicePage"));
    return { messages: page.messages, hasMore: page.hasMore, oneTimeKeysLeft: page.oneTimeKeysLeft, fallbackKeyUsed: page.fallbackKeyUsed };
  }

  /**
   * Says this device processed its to-device messages up to `upTo` (spec §19.4.3), so the server
   * deletes them. A notification: dropped while offline, when the next `toDeviceSync` acknowledges.
   */
  toDeviceAck(upTo: bigint): void {
    const conn = this.usableNow();
    if (conn === null) {
      return;
    }
    try {
      conn.notify({ type: "ToDeviceAck", upTo });
    } catch {
      // The connection just ended: the next toDeviceSync acknowledges.
    }
  }

  /**
   * Stores encrypted key backup entries (spec §19.6), replacing any with the same `entryId`.
   * Rejects with `INVALID_ARGUMENT` for an all-zero id, `LIMIT_EXCEEDED` past the server's limit.
   */
  async putBackup(entries: BackupEntry[]): Promise<void> {
    for (let i = 0; i < entries.length; i += BACKUP_ENTRIES_PER_REQUEST_MAX) {
      const batch = entries.slice(i, i + BACKUP_ENTRIES_PER_REQUEST_MAX);
      await this.retrying(() => this.call({ type: "PutBackup", entries: batch }, "Ok"));
    }
  }

  /**
   * A page of the user's key backup entries in ascending `entryId` (spec §19.6): those with an id
   * above `after` (from the start when absent), at most `limit` (0: the server's 256). When
   * `hasMore`, ask again with `after` = the last id of this page.
   */
  async getBackup(opts: { after?: Uint8Array; limit?: number } = {}): Promise<BackupPage> {
    const body = { type: "GetBackup" as const, after: opts.after ?? new Uint8Array(BACKUP_ENTRY_ID_BYTES), limit: opts.limit ?? 0 };
    const reply = await this.retrying(() => this.call(body, "BackupPage"));
    return { entries: reply.entries, hasMore: reply.hasMore };
  }

  /** Deletes every key backup entry of the user (spec §19.6). */
  async deleteBackup(): Promise<void> {
    await this.retrying(() => this.call({ type: "DeleteBackup" }, "Ok"));
  }

  /**
   * Uploads media: its SHA-256 first, then chunks of the server's chunk size, a few in flight at
   * once, then the check. `onProgress` is called with the bytes the server confirmed. An upload cut
   * by a dropped connection resumes where the server left off. Attach the result to a message with
   * {@link Session.send} within the server's time limit (`ternd`: 24 hours).
   */
  async upload(data: Uint8Array, opts: { mime: string; name?: string; onProgress?: (sent: number, total: number) => void }): Promise<Attachment> {
    const total = data.length;
    if (total === 0) {
      throw new TernError("INVALID_ARGUMENT", "an upload needs at least one byte");
    }
    const digest = await sha256(data);
    const begin = await this.call({ type: "UploadBegin", size: BigInt(total), mime: opts.mime, sha256: digest }, "UploadState");
    const mediaId = begin.mediaId;
    let received = Number(begin.received);
    opts.onProgress?.(received, total);
    for (let attempt = 0; received < total; attempt++) {
      try {
        received = await this.uploadFrom(mediaId, data, received, opts.onProgress);
      } catch (error) {
        if (!isDisconnect(error) || attempt >= RETRIES_ON_DISCONNECT) {
          throw error;
        }
        // The connection dropped mid-upload: ask the next one how much the server holds.
        const state = await this.retrying(() => this.call({ type: "UploadStatus", mediaId }, "UploadState"));
        received = Number(state.received);
      }
    }
    const info = await this.retrying(() => this.call({ type: "UploadFinish", mediaId }, "MediaInfo"));
    const attachment: Attachment = { mediaId, size: info.size, mime: info.mime };
    if (opts.name !== undefined) {
      attachment.name = opts.name;
    }
    return attachment;
  }

  /**
   * Downloads a whole media item, a few chunks in flight at once, and checks it against its
   * SHA-256 (`CHECKSUM_MISMATCH` otherwise). `onProgress` is called with the bytes received.
   */
  async download(mediaId: bigint, opts: { onProgress?: (got: number, total: number) => void } = {}): Promise<Uint8Array> {
    const info = await this.retrying(() => this.call({ type: "GetMedia", mediaId }, "MediaInfo"));
    if (!info.complete) {
      throw new TernError("CONFLICT", `media ${mediaId} is not complete`);
    }
    const total = Number(info.size);
    const out = new Uint8Array(total);
    let got = 0;
    opts.onProgress?.(got, total);
    for (let attempt = 0; got < total; attempt++) {
      try {
        got = await this.downloadFrom(mediaId, out, got, opts.onProgress);
      } catch (error) {
        if (!isDisconnect(error) || attempt >= RETRIES_ON_DISCONNECT) {
          throw error;
        }
      }
    }
    if (!bytesEqual(await sha256(out), info.sha256)) {
      throw new TernError("CHECKSUM_MISMATCH", `media ${mediaId} does not match its SHA-256`);
    }
    return out;
  }

  /**
   * Logs this device out: the server revokes its token, and the storage is cleared (session,
   * cursor and outbox). The session then stops.
   */
  async logout(): Promise<void> {
    this.checkOpen();
    this.loggingOut = true;
    try {
      await this.call({ type: "Logout" }, "Ok");
    } catch (error) {
      this.loggingOut = false;
      throw error;
    }
    await this.shutdown(new TernError("CLOSED", "logged out"), true);
  }

  /**
   * Stops the session: stores and acknowledges the cursor, closes the connection and stops
   * reconnecting. Unconfirmed sends stay in the storage for the next session; their promises
   * reject with `CLOSED`.
   */
  async close(): Promise<void> {
    await this.shutdown(new TernError("CLOSED", "the session was closed"), false);
  }

  // ---- The connection loop ----

  /** Starts the loop, with the first connection if one is made already. */
  private async begin(first: { attempt: Attempt } | null): Promise<void> {
    let attempt = first?.attempt ?? null;
    if (attempt === null) {
      this.setState("connecting");
      try {
        attempt = await this.connectResume();
      } catch (error) {
        if (isLoggedOut(error)) {
          await this.storage.saveSession(null);
          throw error;
        }
        this.setState("offline", asTernError(error));
      }
    }
    this.loop = this.run(attempt).catch((error: unknown) => {
      // Not expected: every step of the loop handles its own failures. Stop rather than spin.
      this.stopEverything(asTernError(error));
    });
  }

  private async run(first: Attempt | null): Promise<void> {
    // Failed attempts since the last connection that reached the live state.
    let failures = first === null ? 1 : 0;
    let attempt = first;
    // Bounded by the stop signal: every turn either serves a connection or waits.
    while (!this.stop.aborted) {
      if (attempt === null) {
        if (failures > 0 && !(await delay(this.backoff(failures), this.stop))) {
          break;
        }
        this.setState("connecting");
        try {
          attempt = await this.connectResume();
        } catch (error) {
          if (isLoggedOut(error)) {
            await this.loggedOut(asTernError(error));
            break;
          }
          failures++;
          this.setState("offline", asTernError(error));
          continue;
        }
      }
      const reachedLive = await this.serve(attempt);
      attempt = null;
      if (this.revoked !== null) {
        if (!this.loggingOut) {
          await this.loggedOut(this.revoked);
        }
        break;
      }
      if (this.stop.aborted) {
        break;
      }
      failures = reachedLive ? 1 : failures + 1;
      if (this.goAway) {
        // The server is going away: come back after the delay it named plus a random part of up
        // to as much again (up to a second when it named none), so clients do not return together.
        const after = this.goAwayAfterMs;
        const spread = after === 0 ? 1000 : after;
        if (!(await delay(after + spread * randomFraction(), this.stop))) {
          break;
        }
        failures = 0;
      }
    }
  }

  private goAwayAfterMs = 0;
  private goAwayTimer: ReturnType<typeof setTimeout> | undefined;

  /** Serves one authenticated connection until it ends; true when it reached the live state. */
  private async serve(attempt: Attempt): Promise<boolean> {
    const conn = attempt.conn;
    this.generation++;
    this.conn = conn;
    attempt.events.attach((body) => this.onEvent(conn, body));
    this.live = false;
    this.goAway = false;
    this.ackedCursor = 0n;
    this.inFlight.clear();
    this.pacer = this.newPacer();
    for (const wake of [...this.connWaiters]) {
      wake();
    }
    let reachedLive = false;
    try {
      await this.catchUp(conn);
      if (!conn.closed) {
        this.live = true;
        reachedLive = true;
        this.setState("online");
        this.pump();
        void this.resubscribePresence(conn);
      }
    } catch (error) {
      conn.close(asTernError(error));
    }
    const reason = await attempt.ended;
    clearTimeout(this.goAwayTimer);
    this.conn = null;
    this.live = false;
    clearTimeout(this.pumpTimer);
    this.inFlight.clear();
    this.typingSentAt.clear();
    if (!this.stop.aborted) {
      this.setState("offline", reason);
    }
    return reachedLive;
  }

  private static async connectFresh(
    options: SessionOptions,
    WebSocket: WebSocketCtor,
    auth: { kind: "register" | "login"; username: string; password: string },
  ): Promise<{ attempt: Attempt; session: StoredSession }> {
    const attempt = await Session.open(options, WebSocket);
    try {
      const body: Body = {
        type: auth.kind === "register" ? "Register" : "Login",
        username: auth.username,
        password: auth.password,
        deviceName: options.deviceName ?? "",
      };
      const reply = expect(await attempt.conn.request(body), "Authenticated");
      if (reply.token === null) {
        throw new TernError("PROTOCOL", "the server issued no token for a new device");
      }
      return { attempt, session: { userId: reply.userId, deviceId: reply.deviceId, username: reply.username, token: reply.token } };
    } catch (error) {
      attempt.conn.close();
      throw error;
    }
  }

  private async connectResume(): Promise<Attempt> {
    const attempt = await Session.open(this.options, this.options.WebSocket);
    try {
      expect(await attempt.conn.request({ type: "Resume", token: this.token }), "Authenticated");
    } catch (error) {
      attempt.conn.close();
      throw error;
    }
    return attempt;
  }

  private static async open(options: OpenOptions, WebSocket: WebSocketCtor): Promise<Attempt> {
    const ended = deferred<TernError>();
    const events = new EventRouter();
    const conn = await Connection.open(
      {
        url: options.url,
        WebSocket,
        clientName: options.clientName ?? CLIENT_NAME_DEFAULT,
        connectTimeoutMs: options.connectTimeoutMs ?? CONNECT_TIMEOUT_DEFAULT_MS,
        requestTimeoutMs: options.requestTimeoutMs ?? REQUEST_TIMEOUT_DEFAULT_MS,
      },
      { onEvent: (body) => events.deliver(body), onClose: (reason) => ended.resolve(reason) },
    );
    return { conn, events, ended: ended.promise };
  }

  private backoff(failures: number): number {
    // The minimum doubling per failure up to the maximum, then a random point in its upper half.
    const doubled = this.options.reconnectMinMs * 2 ** Math.min(Math.max(failures - 1, 0), 20);
    const ceiling = Math.max(this.options.reconnectMinMs, Math.min(doubled, this.options.reconnectMaxMs));
    return ceiling * (0.5 + randomFraction() / 2);
  }

  private newPacer(): Pacer {
    return new Pacer(this.options.sendsInFlight, this.options.sendBurst, this.options.sendsPerSecond, Date.now());
  }

  // ---- Sync ----

  /** Syncs from the cursor to the head, handing each update to the app. */
  private async catchUp(conn: Connection): Promise<void> {
    if (this.syncing) {
      this.resync = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.resync = false;
        for (let pages = 0; pages < SYNC_PAGES_MAX; pages++) {
          const since = this.cursor;
          const page = expect(await conn.request({ type: "Sync", since, limit: 0 }), "SyncPage");
          if (page.head < since) {
            // The cursor runs ahead of the log (a restored backup, say): follow the log (§17.4).
            this.cursor = page.head;
            this.storedCursor = -1n;
          }
          for (const update of page.updates) {
            this.deliver(update);
          }
          await this.flush(conn);
          if (!page.hasMore) {
            break;
          }
          if (this.cursor === since) {
            throw new TernError("PROTOCOL", "a sync page moved the cursor nowhere");
          }
        }
      } while (this.resync && !conn.closed);
    } finally {
      this.syncing = false;
    }
  }

  /** A live update: handed to the app, or a gap that another sync fills. */
  private onUpdate(conn: Connection, update: Update): void {
    if (update.userSeq <= this.cursor) {
      return;
    }
    if (update.userSeq > this.cursor + 1n) {
      // Something between the cursor and this update did not arrive: fetch it.
      this.catchUp(conn).catch((error: unknown) => conn.close(asTernError(error)));
      return;
    }
    this.deliver(update);
    this.scheduleFlush();
  }

  /** Hands one update to the app, unless it did before. */
  private deliver(update: Update): void {
    if (update.userSeq <= this.cursor) {
      return;
    }
    this.cursor = update.userSeq;
    const kind = update.kind;
    switch (kind.type) {
      case "Message": {
        if (!this.knownConversations.has(kind.conversationId)) {
          this.knownConversations.add(kind.conversationId);
          this.emitter.emit("conversation", { conversationId: kind.conversationId, change: "discovered", actor: kind.sender, userId: null });
        }
        if (kind.sender === this.userId && kind.senderDevice === this.deviceId) {
          // A message of this device in the log is stored, even if its Sent was lost (§17.3).
          void this.finish(toHex(kind.clientMsgId), { seq: kind.seq, messageId: kind.messageId, sentAt: kind.ts, clientMsgId: kind.clientMsgId });
        }
        this.emitter.emit("message", toMessage(kind));
        return;
      }
      case "Receipt":
        this.emitter.emit("receipt", { conversationId: kind.conversationId, userId: kind.userId, kind: kind.kind, upToSeq: kind.upToSeq, ts: kind.ts });
        return;
      case "GroupCreated":
        this.knownConversations.add(kind.conversationId);
        this.emitter.emit("conversation", { conversationId: kind.conversationId, change: "created", actor: kind.actor, userId: null });
        return;
      case "MembersAdded":
        this.emitter.emit("conversation", { conversationId: kind.conversationId, change: "membersAdded", actor: kind.actor, userId: null });
        return;
      case "MemberRemoved":
        this.emitter.emit("conversation", { conversationId: kind.conversationId, change: "memberRemoved", actor: kind.actor, userId: kind.userId });
        return;
      case "GroupRenamed":
        this.emitter.emit("conversation", { conversationId: kind.conversationId, change: "renamed", actor: kind.actor, userId: null });
        return;
      case "RoleChanged":
        this.emitter.emit("conversation", { conversationId: kind.conversationId, change: "roleChanged", actor: kind.actor, userId: kind.userId });
        return;
      case "DeviceListChanged":
        this.emitter.emit("deviceListChanged", { userId: kind.userId, ts: kind.ts });
        return;
      case "Skipped":
        // A user_seq that carries nothing (spec §10.9.9): the cursor passes it, nothing is shown.
        return;
      case "Unknown":
        // A newer kind: skipped, but its user_seq counts (spec §4, rule 4).
        return;
    }
  }

  private scheduleFlush(): void {
    if (this.flushTimer !== undefined) {
      return;
    }
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      const conn = this.conn;
      this.flush(conn).catch(() => {
        // A failed store leaves the cursor for the next flush; the updates would be handed out
        // again after a crash, never lost.
      });
    }, ACK_DELAY_MS);
  }

  /** Stores the cursor of what the app was given, then acknowledges it on `conn`. */
  private async flush(conn: Connection | null): Promise<void> {
    const target = this.cursor;
    if (target !== this.storedCursor) {
      await this.store(() => this.storage.saveCursor(target));
      this.storedCursor = target;
    }
    const stored = this.storedCursor;
    // After GoAway the server performs nothing more on this connection; the next one acknowledges.
    if (conn !== null && !conn.closed && !this.goAway && stored > this.ackedCursor) {
      try {
        conn.notify({ type: "Ack", upTo: stored });
        this.ackedCursor = stored;
      } catch {
        // The connection just ended: the next one acknowledges after its sync.
      }
    }
  }

  // ---- Events ----

  private onEvent(conn: Connection, body: Body): void {
    if (conn !== this.conn) {
      return;
    }
    switch (body.type) {
      case "UpdateEvent":
        this.onUpdate(conn, body.update);
        return;
      case "PresenceEvent":
        this.emitter.emit("presence", body.presence);
        return;
      case "TypingEvent":
        this.onTyping(body.conversationId, body.userId, body.active);
        return;
      case "ToDeviceEvent":
        this.emitter.emit("toDevice", body.message);
        return;
      case "KeyCountEvent":
        this.emitter.emit("keyCount", { oneTimeKeysLeft: body.oneTimeKeysLeft, fallbackKeyUsed: body.fallbackKeyUsed });
        return;
      case "GoAway": {
        // The server answers what it has read, then closes; new sends and requests wait for the
        // next connection, which starts after the delay it named.
        this.goAway = true;
        this.goAwayAfterMs = body.reconnectAfterMs;
        this.emitter.emit("goAway", { reconnectAfterMs: body.reconnectAfterMs, message: body.message });
        clearTimeout(this.goAwayTimer);
        this.goAwayTimer = setTimeout(
          () => conn.close(new TernError("DISCONNECTED", "the server did not close after GoAway")),
          GO_AWAY_CLOSE_MAX_MS,
        );
        return;
      }
      case "Error":
        if (body.code === ERROR_CODES.DEVICE_REVOKED) {
          this.revoked = TernError.fromServer(body);
        }
        // Other connection-level errors are followed by the server closing the connection, and
        // late errors of notifications (a Typing that was rate limited) need nothing.
        return;
      default:
        return;
    }
  }

  private onTyping(conversationId: bigint, userId: bigint, active: boolean): void {
    const key = `${conversationId}:${userId}`;
    clearTimeout(this.typingExpiry.get(key));
    this.typingExpiry.delete(key);
    if (active) {
      this.typingExpiry.set(
        key,
        setTimeout(() => {
          this.typingExpiry.delete(key);
          this.emitter.emit("typing", { conversationId, userId, typing: false });
        }, TYPING_EXPIRY_MS),
      );
    }
    this.emitter.emit("typing", { conversationId, userId, typing: active });
  }

  private async resubscribePresence(conn: Connection): Promise<void> {
    const users = [...this.presenceSubscriptions];
    for (let i = 0; i < users.length && !conn.closed; i += PRESENCE_USERS_MAX) {
      try {
        const reply = expect(await conn.request({ type: "SubscribePresence", users: users.slice(i, i + PRESENCE_USERS_MAX) }), "PresenceList");
        for (const presence of reply.presences) {
          this.emitter.emit("presence", presence);
        }
      } catch {
        // A user who no longer shares a conversation makes the whole request FORBIDDEN; the app
        // subscribes again to what it still wants.
      }
    }
  }

  // ---- The outbox ----

  /** Starts sends from the outbox, oldest first, as far as the pacer allows. */
  private pump(): void {
    const conn = this.conn;
    if (conn === null || conn.closed || !this.live || this.goAway || this.stop.aborted) {
      return;
    }
    // Bounded: every turn starts a send and adds it to `inFlight`, which the pacer caps.
    for (;;) {
      const now = Date.now();
      if (!this.pacer.maySend(now, this.inFlight.size)) {
        const until = this.pacer.heldUntil(now);
        if (until !== null) {
          clearTimeout(this.pumpTimer);
          this.pumpTimer = setTimeout(() => this.pump(), until - now);
        }
        return;
      }
      const next = this.outbox.find((s) => !this.inFlight.has(toHex(s.clientMsgId)));
      if (next === undefined) {
        return;
      }
      this.startSend(conn, next);
    }
  }

  private startSend(conn: Connection, send: PendingSend): void {
    const id = toHex(send.clientMsgId);
    this.inFlight.add(id);
    this.pacer.started(Date.now());
    const generation = this.generation;
    conn
      .request({ type: "Send", conversationId: send.conversationId, clientMsgId: send.clientMsgId, body: send.body, attachments: send.attachments })
      .then(
        (reply) => {
          const sent = expect(reply, "Sent");
          return this.onSendResult(generation, id, { seq: sent.seq, messageId: sent.messageId, sentAt: sent.ts, clientMsgId: sent.clientMsgId });
        },
        (error: unknown) => this.onSendResult(generation, id, asTernError(error)),
      )
      .catch((error: unknown) => this.onSendResult(generation, id, asTernError(error)));
  }

  private async onSendResult(generation: number, id: string, result: SendResult | TernError): Promise<void> {
    const current = generation === this.generation;
    if (!(result instanceof TernError)) {
      if (current) {
        this.inFlight.delete(id);
      }
      await this.finish(id, result);
      this.pump();
      return;
    }
    if (!current) {
      // An earlier connection's failed attempt says nothing: the send went out again since.
      return;
    }
    this.inFlight.delete(id);
    const error = result;
    if (error.code === "RATE_LIMITED") {
      // Every send waits, then this one goes out again before any later one.
      this.pacer.refused(Date.now(), error.retryAfterMs);
    } else if (error.code === "UNAVAILABLE" || error.code === "INTERNAL") {
      this.pacer.refused(Date.now(), TRANSIENT_RETRY_MS);
    } else if (error.wireCode !== null || error.code === "LIMIT_EXCEEDED" || error.code === "INVALID_ARGUMENT") {
      // Refused for good (not a member, too long, ...): out of the outbox.
      await this.finish(id, error);
    }
    // TIMEOUT, DISCONNECTED: the send goes out again, on this connection or the next.
    this.pump();
  }

  /** A send is done: out of the outbox and the storage, its waiter and the app told. */
  private async finish(id: string, result: SendResult | TernError): Promise<void> {
    const index = this.outbox.findIndex((s) => toHex(s.clientMsgId) === id);
    if (index < 0) {
      return;
    }
    const [send] = this.outbox.splice(index, 1);
    if (send === undefined) {
      return;
    }
    this.inFlight.delete(id);
    try {
      await this.store(() => this.storage.removeOutbox(send.clientMsgId));
    } catch {
      // Still stored: a later session sends it again under the same key, and the server answers
      // with the original Sent.
    }
    this.emitter.emit("outbox", { pending: this.outbox.length });
    const waiter = this.waiters.get(id);
    this.waiters.delete(id);
    if (result instanceof TernError) {
      this.emitter.emit("sendFailed", { clientMsgId: send.clientMsgId, conversationId: send.conversationId, error: result });
      waiter?.reject(result);
    } else {
      this.emitter.emit("sent", { clientMsgId: send.clientMsgId, conversationId: send.conversationId, seq: result.seq, messageId: result.messageId, sentAt: result.sentAt });
      waiter?.resolve(result);
    }
  }

  /** Refuses at once what the server would refuse for good: an empty or too long message. */
  private checkSendable(send: PendingSend): void {
    // 0 is never a valid id (spec §5).
    if (send.conversationId <= 0n || send.attachments.some((id) => id <= 0n)) {
      throw new TernError("INVALID_ARGUMENT", "0 is not a conversation or media id");
    }
    if (send.body === "" && send.attachments.length === 0) {
      throw new TernError("INVALID_ARGUMENT", "a message needs a body or an attachment");
    }
    if (send.attachments.length > ATTACHMENTS_PER_MESSAGE_MAX) {
      throw new TernError("LIMIT_EXCEEDED", `at most ${ATTACHMENTS_PER_MESSAGE_MAX} attachments`);
    }
    const announced = this.limits?.bodyCharsMax ?? BODY_CHARS_MAX;
    const max = announced > 0 ? Math.min(announced, BODY_CHARS_MAX) : BODY_CHARS_MAX;
    let chars = 0;
    for (const _ of send.body) {
      chars++;
    }
    if (chars > max) {
      throw new TernError("LIMIT_EXCEEDED", `the body has ${chars} characters, at most ${max}`);
    }
    try {
      encodeFrame({ requestId: 1, body: { type: "Send", ...send } });
    } catch (error) {
      throw error instanceof EncodeError ? TernError.fromEncode(error) : error;
    }
  }

  // ---- Media ----

  private chunkBytes(conn: Connection): number {
    const announced = conn.welcome.limits.mediaChunkBytesMax;
    const byLimit = announced > 0 ? Math.min(announced, MEDIA_CHUNK_BYTES_MAX) : MEDIA_CHUNK_BYTES_MAX;
    // An UploadChunk adds a media id, an offset and a length prefix to the frame header.
    return Math.max(1, Math.min(byLimit, conn.frameBytesMax - FRAME_HEADER_BYTES - 20));
  }

  /** Sends the chunks from `offset` on one connection; returns the bytes the server confirmed. */
  private async uploadFrom(mediaId: bigint, data: Uint8Array, offset: number, onProgress?: (sent: number, total: number) => void): Promise<number> {
    const conn = await this.usableConnection();
    const chunk = this.chunkBytes(conn);
    const window: Promise<Settled<Body>>[] = [];
    let next = offset;
    let confirmed = offset;
    // Bounded by the data: every turn awaits one chunk's answer, and at most the window is open.
    while (confirmed < data.length) {
      while (window.length < MEDIA_WINDOW_CHUNKS && next < data.length) {
        const end = Math.min(next + chunk, data.length);
        window.push(settle(conn.request({ type: "UploadChunk", mediaId, offset: BigInt(next), data: data.subarray(next, end) })));
        next = end;
      }
      const first = window.shift();
      if (first === undefined) {
        throw new TernError("PROTOCOL", "the upload stalled");
      }
      const result = await first;
      if (!result.ok) {
        // The chunks after it fail too (settled, so nothing is left unhandled).
        throw result.error;
      }
      const state = expect(result.value, "UploadState");
      confirmed = Number(state.received);
      onProgress?.(confirmed, data.length);
    }
    return confirmed;
  }

  /** Reads the bytes from `offset` on one connection into `out`; returns how many are in. */
  private async downloadFrom(mediaId: bigint, out: Uint8Array, offset: number, onProgress?: (got: number, total: number) => void): Promise<number> {
    const conn = await this.usableConnection();
    const chunk = this.chunkBytes(conn);
    const window: Promise<Settled<Body>>[] = [];
    let next = offset;
    let got = offset;
    while (got < out.length) {
      while (window.length < MEDIA_WINDOW_CHUNKS && next < out.length) {
        const length = Math.min(chunk, out.length - next);
        window.push(settle(conn.request({ type: "Download", mediaId, offset: BigInt(next), length })));
        next += length;
      }
      const first = window.shift();
      if (first === undefined) {
        throw new TernError("PROTOCOL", "the download stalled");
      }
      const result = await first;
      if (!result.ok) {
        throw result.error;
      }
      const data = expect(result.value, "MediaData");
      if (Number(data.offset) !== got || data.data.length === 0 || got + data.data.length > out.length) {
        throw new TernError("PROTOCOL", `media ${mediaId}: a chunk at ${data.offset} of ${data.data.length} bytes, expected one at ${got}`);
      }
      out.set(data.data, got);
      got += data.data.length;
      onProgress?.(got, out.length);
    }
    return got;
  }

  // ---- Requests ----

  /** Sends a request on the current connection (waiting for one) and checks the reply's type. */
  private async call<K extends FrameName>(body: Body, expected: K): Promise<BodyOf<K>> {
    const conn = await this.usableConnection();
    return expect(await conn.request(body), expected);
  }

  /** Runs `fn` again when its connection dropped before the answer, a few times at most. */
  private async retrying<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (error) {
        if (!isDisconnect(error) || attempt >= RETRIES_ON_DISCONNECT || this.stop.aborted) {
          throw error;
        }
      }
    }
  }

  private usableNow(): Connection | null {
    const conn = this.conn;
    return conn !== null && !conn.closed && !this.goAway && !this.stop.aborted ? conn : null;
  }

  /** The current connection, waiting for one up to the request time-out. */
  private async usableConnection(): Promise<Connection> {
    const deadline = Date.now() + this.options.requestTimeoutMs;
    // Bounded by the deadline: every turn waits for a new connection or the time-out.
    for (;;) {
      this.checkOpen();
      const conn = this.usableNow();
      if (conn !== null) {
        return conn;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new TernError("NETWORK", `not connected to ${this.options.url} within ${this.options.requestTimeoutMs} ms`);
      }
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.connWaiters.delete(wake);
          off();
          resolve();
        };
        const timer = setTimeout(wake, left);
        const off = this.stop.onAbort(wake);
        this.connWaiters.add(wake);
      });
    }
  }

  private checkOpen(): void {
    if (this.stop.aborted) {
      throw new TernError("CLOSED", "the session is closed");
    }
  }

  /** Runs storage operations one at a time, in order. */
  private store<T>(op: () => Promise<T>): Promise<T> {
    const result = this.storageQueue.then(op);
    this.storageQueue = result.catch(() => undefined);
    return result;
  }

  private setState(state: SessionState, error?: TernError): void {
    if (state === this.currentState && error === undefined) {
      return;
    }
    this.currentState = state;
    this.emitter.emit("state", error === undefined ? { state } : { state, error });
  }

  // ---- Stopping ----

  private async loggedOut(error: TernError): Promise<void> {
    try {
      // The outbox and the cursor stay: a new login of the same user sends and syncs on from them.
      await this.store(() => this.storage.saveSession(null));
    } catch {
      // The token no longer works anyway; a later resume fails with BAD_CREDENTIALS.
    }
    this.emitter.emit("loggedOut", { error });
    this.stopEverything(error);
  }

  private async shutdown(reason: TernError, clear: boolean): Promise<void> {
    if (this.stop.aborted) {
      await this.loop;
      return;
    }
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const conn = this.conn;
    try {
      if (clear) {
        await this.store(() => this.storage.clear());
      } else {
        await this.flush(conn);
      }
    } catch {
      // Closing goes on: the cursor is stored by the next session, which may hand out the last
      // few updates again.
    }
    this.stopEverything(reason);
    conn?.close(reason);
    await this.loop;
    await this.storageQueue;
  }

  private stopEverything(reason: TernError): void {
    this.stop.fire();
    this.conn?.close(reason);
    clearTimeout(this.pumpTimer);
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    for (const timer of this.typingExpiry.values()) {
      clearTimeout(timer);
    }
    this.typingExpiry.clear();
    for (const waiter of this.waiters.values()) {
      waiter.reject(reason);
    }
    this.waiters.clear();
    this.setState("offline", reason);
  }
}

type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };

function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then(
    (value) => ({ ok: true, value }),
    (error: unknown) => ({ ok: false, error }),
  );
}

/** Checks a reply's type. */
function expect<K extends FrameName>(reply: Body, expected: K): BodyOf<K> {
  if (reply.type !== expected) {
    throw new TernError("PROTOCOL", `expected ${expected}, the server answered ${reply.type}`);
  }
  return reply as BodyOf<K>;
}

function asTernError(error: unknown): TernError {
  return error instanceof TernError ? error : new TernError("PROTOCOL", String(error), { cause: error });
}

function isDisconnect(error: unknown): boolean {
  return error instanceof TernError && error.code === "DISCONNECTED";
}

/** Whether an error means the device may not go on: its token or credentials are not accepted. */
function isLoggedOut(error: unknown): boolean {
  return error instanceof TernError && (error.code === "BAD_CREDENTIALS" || error.code === "DEVICE_REVOKED");
}

/** A wire message as the app sees it. */
function toMessage(m: WireMessage): Message {
  return {
    conversationId: m.conversationId,
    seq: m.seq,
    messageId: m.messageId,
    sender: m.sender,
    senderDevice: m.senderDevice,
    sentAt: m.ts,
    body: new TextEncoder().encode(m.body),
    text: m.body,
    attachments: m.attachments.map((a) => ({ mediaId: a.mediaId, size: a.size, mime: a.mime })),
    clientMsgId: m.clientMsgId,
  };
}

/** A `Conversation` reply as the app sees it: the conversation, and whether it is encrypted. */
function toConversationInfo(reply: WireConversation): ConversationInfo {
  return { ...reply.conversation, encrypted: reply.encrypted };
}

/**
 * To-device messages cut into `SendToDevice` bodies of at most 256 messages and `frameBytesMax`
 * bytes each (a frame header and a count, then per message its address, a length and the
 * payload). A message too large for a frame of its own goes alone, for the encoder to refuse.
 */
function toDeviceBatches(messages: ToDeviceOut[], frameBytesMax: number): ToDeviceOut[][] {
  const batches: ToDeviceOut[][] = [];
  let batch: ToDeviceOut[] = [];
  let size = FRAME_HEADER_BYTES + 4;
  for (const message of messages) {
    const bytes = 12 + 4 + message.payload.length;
    if (batch.length > 0 && (batch.length === TO_DEVICE_MESSAGES_PER_REQUEST_MAX || size + bytes > frameBytesMax)) {
      batches.push(batch);
      batch = [];
      size = FRAME_HEADER_BYTES + 4;
    }
    batch.push(message);
    size += bytes;
  }
  batches.push(batch);
  return batches;
}

function toSummary(s: WireConversationSummary): ConversationSummary {
  return { ...s, lastMessage: s.lastMessage === null ? null : toMessage(s.lastMessage) };
}

