/**
 * What a {@link Session} keeps across restarts of the app: the device's session token, the sync
 * cursor, and the outbox of sends the server has not confirmed.
 *
 * An app picks where it lives by giving the session a {@link Storage}: {@link MemoryStorage} keeps it
 * for the life of the page or process (tests, bots), `IndexedDbStorage` in a browser's IndexedDB, and
 * `FileStorage` (from `@tern/client/node`) in one JSON file. Any other store works by implementing
 * the interface.
 *
 * Every method must be durable when its promise resolves, as durable as the store promises: the
 * session treats a send as queued only once `pushOutbox` resolved, and acknowledges updates to the
 * server only up to a cursor `saveCursor` recorded. The session calls the methods one at a time, in
 * order, never two at once.
 *
 * @module
 */

import { fromHex, toHex } from "./util.js";

/** The identity a session resumes with. */
export interface StoredSession {
  /** The user. */
  userId: bigint;
  /** This device. */
  deviceId: number;
  /** The user's name. */
  username: string;
  /** The device's 32-byte token: a secret, whoever has it is this device (spec §5). */
  token: Uint8Array;
}

/**
 * A send the server has not confirmed yet. It is retried with the same `clientMsgId`, which the
 * server uses to store it at most once (spec §10.1).
 */
export interface PendingSend {
  /** The 16-byte idempotency key. */
  clientMsgId: Uint8Array;
  /** The conversation. */
  conversationId: bigint;
  /** The text. */
  body: string;
  /** Media ids of completed uploads. */
  attachments: bigint[];
  /** When it was queued (ms since the epoch, the client's clock). */
  queuedAt: number;
}

/** Everything a {@link Storage} holds. */
export interface StoredState {
  /** The session to resume, or null when logged out. */
  session: StoredSession | null;
  /** The `user_seq` of the last update the session processed: the next sync starts after it. */
  cursor: bigint;
  /** Unconfirmed sends, oldest first. */
  outbox: PendingSend[];
}

/** Where a session keeps its state; see the module's docs for what each method promises. */
export interface Storage {
  /** Everything stored; an empty state (no session, cursor 0, no outbox) when nothing is. */
  load(): Promise<StoredState>;
  /** Replaces the session (null after a logout or a revoked token). */
  saveSession(session: StoredSession | null): Promise<void>;
  /** Records the cursor. */
  saveCursor(cursor: bigint): Promise<void>;
  /** Appends a send to the outbox. */
  pushOutbox(send: PendingSend): Promise<void>;
  /** Removes a send from the outbox (confirmed, or refused for good); absent ids are ignored. */
  removeOutbox(clientMsgId: Uint8Array): Promise<void>;
  /** Forgets everything: session, cursor and outbox. */
  clear(): Promise<void>;
}

/** An empty state. */
export function emptyState(): StoredState {
  return { session: null, cursor: 0n, outbox: [] };
}

/** A deep copy of a state, so that a store never hands out its own objects. */
export function copyState(state: StoredState): StoredState {
  return {
    session: state.session === null ? null : { ...state.session, token: state.session.token.slice() },
    cursor: state.cursor,
    outbox: state.outbox.map(copySend),
  };
}

function copySend(send: PendingSend): PendingSend {
  return { ...send, clientMsgId: send.clientMsgId.slice(), attachments: [...send.attachments] };
}

/** State kept in memory only: gone when the page or the process ends. */
export class MemoryStorage implements Storage {
  private state: StoredState;

  /** A store that starts empty, or with `initial`. */
  constructor(initial: StoredState = emptyState()) {
    this.state = copyState(initial);
  }

  async load(): Promise<StoredState> {
    return copyState(this.state);
  }

  async saveSession(session: StoredSession | null): Promise<void> {
    this.state.session = session === null ? null : { ...session, token: session.token.slice() };
  }

  async saveCursor(cursor: bigint): Promise<void> {
    this.state.cursor = cursor;
  }

  async pushOutbox(send: PendingSend): Promise<void> {
    this.state.outbox.push(copySend(send));
  }

  async removeOutbox(clientMsgId: Uint8Array): Promise<void> {
    const id = toHex(clientMsgId);
    this.state.outbox = this.state.outbox.filter((s) => toHex(s.clientMsgId) !== id);
  }

  async clear(): Promise<void> {
    this.state = emptyState();
  }
}

/** The JSON form of a state: bigints as decimal strings, bytes as hex. Version 1. */
export interface StateJson {
  version: 1;
  session: { userId: string; deviceId: number; username: string; token: string } | null;
  cursor: string;
  outbox: { clientMsgId: string; conversationId: string; body: string; attachments: string[]; queuedAt: number }[];
}

/** A state in its JSON form. */
export function stateToJson(state: StoredState): StateJson {
  const s = state.session;
  return {
    version: 1,
    session: s === null ? null : { userId: s.userId.toString(), deviceId: s.deviceId, username: s.username, token: toHex(s.token) },
    cursor: state.cursor.toString(),
    outbox: state.outbox.map((p) => ({
      clientMsgId: toHex(p.clientMsgId),
      conversationId: p.conversationId.toString(),
      body: p.body,
      attachments: p.attachments.map((a) => a.toString()),
      queuedAt: p.queuedAt,
    })),
  };
}

/** A state from its JSON form; throws when the JSON is not one. */
export function stateFromJson(json: unknown): StoredState {
  const j = json as StateJson;
  if (typeof j !== "object" || j === null || j.version !== 1 || !Array.isArray(j.outbox)) {
    throw new Error("not a stored Tern session state (version 1)");
  }
  return {
    session:
      j.session === null
        ? null
        : { userId: BigInt(j.session.userId), deviceId: j.session.deviceId, username: j.session.username, token: fromHex(j.session.token) },
    cursor: BigInt(j.cursor),
    outbox: j.outbox.map((p) => ({
      clientMsgId: fromHex(p.clientMsgId),
      conversationId: BigInt(p.conversationId),
      body: p.body,
      attachments: p.attachments.map((a) => BigInt(a)),
      queuedAt: p.queuedAt,
    })),
  };
}
