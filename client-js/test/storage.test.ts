/**
 * The storages against one contract: what is saved loads back exactly (bigints above 2^53, token
 * bytes, the outbox in order), removals remove, clear clears, and a new instance on the same place
 * sees the same state. `IndexedDbStorage` runs on `fake-indexeddb` here (the browser tests run it on
 * the real one); `FileStorage` also shows that it writes atomically.
 */

import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";

import { IDBFactory } from "fake-indexeddb";

import { IndexedDbStorage, MemoryStorage, type PendingSend, type Storage } from "../src/index.js";
import { FileStorage } from "../src/node.js";

const BIG = 18_446_744_073_709_551_615n; // u64::MAX, far above 2^53

function pending(n: number): PendingSend {
  return {
    clientMsgId: Uint8Array.from({ length: 16 }, (_, i) => (i * 7 + n) & 0xff),
    conversationId: BIG - BigInt(n),
    body: `message ${n} 👋`,
    attachments: [BigInt(n), BIG],
    queuedAt: 1_767_225_600_000 + n,
  };
}

/** The contract every storage keeps; `reopen` gives a new instance on the same place. */
function contract(name: string, make: () => Promise<{ storage: Storage; reopen: () => Storage }>): void {
  describe(name, () => {
    // Proves an empty store loads as the empty state.
    test("starts empty", async () => {
      const { storage } = await make();
      assert.deepEqual(await storage.load(), { session: null, cursor: 0n, outbox: [] });
    });

    // Proves every field survives exactly, in a new instance too, and the outbox keeps its order.
    test("keeps the session, the cursor and the outbox exactly", async () => {
      const { storage, reopen } = await make();
      const session = { userId: BIG, deviceId: 4_000_000_000, username: "alice", token: Uint8Array.from({ length: 32 }, (_, i) => 255 - i) };
      await storage.saveSession(session);
      await storage.saveCursor(BIG - 1n);
      for (const n of [1, 2, 3]) {
        await storage.pushOutbox(pending(n));
      }
      await storage.removeOutbox(pending(2).clientMsgId);
      await storage.removeOutbox(Uint8Array.from({ length: 16 }, () => 0xee));
      const expected = { session, cursor: BIG - 1n, outbox: [pending(1), pending(3)] };
      assert.deepEqual(await storage.load(), expected);
      assert.deepEqual(await reopen().load(), expected);
    });

    // Proves a loaded state is a copy: changing it changes nothing stored.
    test("hands out copies", async () => {
      const { storage } = await make();
      await storage.pushOutbox(pending(1));
      const loaded = await storage.load();
      loaded.outbox[0]?.clientMsgId.fill(0);
      loaded.outbox.pop();
      assert.deepEqual((await storage.load()).outbox, [pending(1)]);
    });

    // Proves clear forgets everything, and a null session is stored as none.
    test("clears", async () => {
      const { storage, reopen } = await make();
      await storage.saveSession({ userId: 1n, deviceId: 1, username: "bob", token: new Uint8Array(32) });
      await storage.saveCursor(5n);
      await storage.pushOutbox(pending(1));
      await storage.saveSession(null);
      assert.equal((await storage.load()).session, null);
      await storage.clear();
      assert.deepEqual(await reopen().load(), { session: null, cursor: 0n, outbox: [] });
    });
  });
}

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) {
    await rm(dir, { recursive: true, force: true });
  }
});

contract("MemoryStorage", async () => {
  const storage = new MemoryStorage();
  return { storage, reopen: () => storage };
});

contract("FileStorage", async () => {
  const dir = await mkdtemp(join(tmpdir(), "tern-js-file-"));
  dirs.push(dir);
  const path = join(dir, "nested", "state.json");
  return { storage: new FileStorage(path), reopen: () => new FileStorage(path) };
});

let databases = 0;
contract("IndexedDbStorage", async () => {
  const factory = new IDBFactory() as unknown as globalThis.IDBFactory;
  databases++;
  const name = `tern-test-${databases}`;
  return { storage: new IndexedDbStorage(name, factory), reopen: () => new IndexedDbStorage(name, factory) };
});

describe("FileStorage on disk", () => {
  // Proves each write replaces the file whole (no temporary files left behind) with readable JSON,
  // and that writes asked for at once land in order.
  test("writes whole files, in order", async () => {
    const dir = await mkdtemp(join(tmpdir(), "tern-js-file-"));
    dirs.push(dir);
    const path = join(dir, "state.json");
    const storage = new FileStorage(path);
    await Promise.all([1, 2, 3, 4, 5].map((n) => storage.pushOutbox(pending(n))));
    await storage.saveCursor(BIG);
    assert.deepEqual(await readdir(dir), ["state.json"]);
    const json = JSON.parse(await readFile(path, "utf8")) as { cursor: string; outbox: { body: string }[] };
    assert.equal(json.cursor, BIG.toString());
    assert.deepEqual(json.outbox.map((s) => s.body), [1, 2, 3, 4, 5].map((n) => `message ${n} 👋`));
  });
});
