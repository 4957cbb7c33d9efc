/**
 * Node.js-only parts of the SDK, imported as `@tern/client/node` so that browser bundles never see
 * `node:fs`: {@link FileStorage}, a {@link Storage} in one JSON file.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";

import {
  type PendingSend,
  type Storage,
  type StoredSession,
  type StoredState,
  copyState,
  emptyState,
  stateFromJson,
  stateToJson,
} from "./storage.js";
import { toHex } from "./util.js";

/**
 * A {@link Storage} in one JSON file, rewritten whole and atomically on every change: written to a
 * temporary file beside it, flushed to disk (`fsync`), then renamed over the old one, so that a
 * crash leaves either the old state or the new one, never a torn file. The folder is created when
 * missing. One `FileStorage` (one session) per file.
 */
export class FileStorage implements Storage {
  private readonly path: string;
  private state: StoredState | null = null;
  /** Writes run one after the other, in the order they were asked for. */
  private writes: Promise<void> = Promise.resolve();

  /** A store in the file at `path`. */
  constructor(path: string) {
    this.path = path;
  }

  async load(): Promise<StoredState> {
    return copyState(await this.current());
  }

  saveSession(session: StoredSession | null): Promise<void> {
    return this.change((state) => {
      state.session = session === null ? null : { ...session, token: session.token.slice() };
    });
  }

  saveCursor(cursor: bigint): Promise<void> {
    return this.change((state) => {
      state.cursor = cursor;
    });
  }

  pushOutbox(send: PendingSend): Promise<void> {
    return this.change((state) => {
      state.outbox.push({ ...send, clientMsgId: send.clientMsgId.slice(), attachments: [...send.attachments] });
    });
  }

  removeOutbox(clientMsgId: Uint8Array): Promise<void> {
    const id = toHex(clientMsgId);
    return this.change((state) => {
      state.outbox = state.outbox.filter((s) => toHex(s.clientMsgId) !== id);
    });
  }

  clear(): Promise<void> {
    return this.change((state) => {
      Object.assign(state, emptyState());
    });
  }

  private async current(): Promise<StoredState> {
    if (this.state === null) {
      let text: string | null = null;
      try {
        text = await readFile(this.path, "utf8");
      } catch (error) {
        if ((error as { code?: string }).code !== "ENOENT") {
          throw error;
        }
      }
      this.state = text === null ? emptyState() : stateFromJson(JSON.parse(text));
    }
    return this.state;
  }

  private change(apply: (state: StoredState) => void): Promise<void> {
    const write = this.writes.then(async () => {
      const state = await this.current();
      apply(state);
      await this.writeAtomically(JSON.stringify(stateToJson(state)));
    });
    // A failed write fails its caller; later writes still run (and write the whole state again).
    this.writes = write.catch(() => undefined);
    return write;
  }

  private async writeAtomically(text: string): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true });
    const temporary = `${this.path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      const file = await open(temporary, "w", 0o600);
      try {
        await file.writeFile(text, "utf8");
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(temporary, this.path);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
  }
}

export type { PendingSend, Storage, StoredSession, StoredState } from "./storage.js";
