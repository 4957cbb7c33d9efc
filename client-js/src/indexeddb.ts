/**
 * {@link IndexedDbStorage}: a {@link Storage} in the browser's IndexedDB, so that a page reload keeps
 * the session, the cursor and the outbox.
 *
 * One database (named `tern` unless told otherwise) holds two object stores: `state`, with the
 * session under the key `"session"` and the cursor under `"cursor"`, and `outbox`, one record per
 * unconfirmed send keyed by an increasing number (so that it loads oldest first) with an index on
 * the hex of its `clientMsgId`. Values are stored as they are: IndexedDB keeps `bigint` and
 * `Uint8Array` values exactly. Every method is one transaction and resolves when it has committed.
 *
 * @module
 */

import { type PendingSend, type Storage, type StoredSession, type StoredState, emptyState } from "./storage.js";
import { toHex } from "./util.js";

const DB_VERSION = 1;
const STATE = "state";
const OUTBOX = "outbox";
const BY_ID = "byClientMsgId";

interface OutboxRecord {
  id: string;
  send: PendingSend;
}

/** A {@link Storage} in IndexedDB: see the module's docs. */
export class IndexedDbStorage implements Storage {
  private readonly name: string;
  private readonly factory: IDBFactory;
  private db: Promise<IDBDatabase> | null = null;

  /**
   * A store in the database `name`. Use one name per account a page may keep at once. `factory`
   * defaults to the global `indexedDB`.
   */
  constructor(name = "tern", factory?: IDBFactory) {
    const found = factory ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    if (found === undefined) {
      throw new Error("IndexedDbStorage needs IndexedDB (a browser), or an IDBFactory to be given");
    }
    this.name = name;
    this.factory = found;
  }

  async load(): Promise<StoredState> {
    const db = await this.open();
    const tx = db.transaction([STATE, OUTBOX], "readonly");
    const state = tx.objectStore(STATE);
    const [session, cursor, outbox] = await Promise.all([
      request<StoredSession | undefined>(state.get("session")),
      request<bigint | undefined>(state.get("cursor")),
      request<OutboxRecord[]>(tx.objectStore(OUTBOX).getAll()),
    ]);
    return { ...emptyState(), session: session ?? null, cursor: cursor ?? 0n, outbox: outbox.map((r) => r.send) };
  }

  async saveSession(session: StoredSession | null): Promise<void> {
    await this.write([STATE], (tx) => {
      const store = tx.objectStore(STATE);
      if (session === null) {
        store.delete("session");
      } else {
        store.put(session, "session");
      }
    });
  }

  async saveCursor(cursor: bigint): Promise<void> {
    await this.write([STATE], (tx) => {
      tx.objectStore(STATE).put(cursor, "cursor");
    });
  }

  async pushOutbox(send: PendingSend): Promise<void> {
    const record: OutboxRecord = { id: toHex(send.clientMsgId), send };
    await this.write([OUTBOX], (tx) => {
      tx.objectStore(OUTBOX).add(record);
    });
  }

  async removeOutbox(clientMsgId: Uint8Array): Promise<void> {
    const id = toHex(clientMsgId);
    await this.write([OUTBOX], (tx) => {
      const keys = tx.objectStore(OUTBOX).index(BY_ID).getAllKeys(id);
      keys.onsuccess = () => {
        for (const key of keys.result) {
          tx.objectStore(OUTBOX).delete(key);
        }
      };
    });
  }

  async clear(): Promise<void> {
    await this.write([STATE, OUTBOX], (tx) => {
      tx.objectStore(STATE).clear();
      tx.objectStore(OUTBOX).clear();
    });
  }

  /** Closes the database connection; the store opens it again when used. */
  async close(): Promise<void> {
    const db = this.db;
    this.db = null;
    if (db !== null) {
      (await db).close();
    }
  }

  private open(): Promise<IDBDatabase> {
    if (this.db === null) {
      const opening = this.factory.open(this.name, DB_VERSION);
      opening.onupgradeneeded = () => {
        const db = opening.result;
        if (!db.objectStoreNames.contains(STATE)) {
          db.createObjectStore(STATE);
        }
        if (!db.objectStoreNames.contains(OUTBOX)) {
          db.createObjectStore(OUTBOX, { autoIncrement: true }).createIndex(BY_ID, "id", { unique: false });
        }
      };
      this.db = request(opening);
      this.db.catch(() => {
        this.db = null;
      });
    }
    return this.db;
  }

  private async write(stores: string[], fill: (tx: IDBTransaction) => void): Promise<void> {
    const db = await this.open();
    const tx = db.transaction(stores, "readwrite");
    const done = new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
      tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
    });
    fill(tx);
    await done;
  }
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error("IndexedDB request failed"));
  });
}
