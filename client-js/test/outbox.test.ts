/**
 * The outbox against a real ternd that goes away: a message sent while the server is down waits in
 * the outbox, survives the app closing (a page reload), and is stored exactly once when the server
 * is back; a send whose `Sent` was lost is retried under the same `client_msg_id` and not stored
 * twice.
 */

import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, test } from "node:test";

import { MemoryStorage, type Session, TernError } from "../src/index.js";
import { FileStorage } from "../src/node.js";
import { Ternd, closeAll, collect, nextEvent, online, register, sessionOptions, start, waitUntil } from "./support/ternd.js";

/** Every message of a conversation, oldest first (at most a few pages here). */
async function allMessages(session: Session, conversationId: bigint): Promise<string[]> {
  const texts: string[] = [];
  let before: bigint | undefined;
  for (let page = 0; page < 100; page++) {
    const { messages, hasMore } = await session.history(conversationId, before === undefined ? {} : { before });
    texts.unshift(...messages.map((m) => m.text ?? ""));
    if (!hasMore || messages.length === 0) {
      return texts;
    }
    before = messages[0]?.seq;
  }
  return texts;
}

describe("outbox", () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    await closeAll();
    for (const step of cleanup.splice(0)) {
      await step();
    }
  });

  // Proves a send made while the server is down waits in the outbox and is stored exactly once
  // when the server comes back on the same data directory and port.
  test("a message sent while the server is down is delivered once it is back", async () => {
    const server = await Ternd.start();
    cleanup.push(() => server.dispose());
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId);
    const bobSees = collect(bob, "message");
    const aliceOffline = nextEvent(alice, "state", (e) => e.state === "offline");
    await server.kill("SIGKILL");
    await aliceOffline;

    const sending = alice.send(direct.conversationId, "sent while the server was down");
    await waitUntil(() => alice.pendingOutbox() === 1, "the message is in the outbox");
    await server.restart();
    const sent = await sending;
    assert.equal(sent.seq, 1n);
    assert.equal(alice.pendingOutbox(), 0);
    await waitUntil(() => bobSees.length >= 1, "bob has the message");
    assert.deepEqual(bobSees.map((m) => m.text), ["sent while the server was down"]);
    assert.deepEqual(await allMessages(bob, direct.conversationId), ["sent while the server was down"]);
  });

  // Proves the outbox survives the app closing while offline: a new session on the same file
  // sends it after the server is back, reports it with a `sent` event, and it is stored once.
  test("the outbox survives a reload and is delivered exactly once", async () => {
    const server = await Ternd.start();
    const dir = await mkdtemp(join(tmpdir(), "tern-js-store-"));
    cleanup.push(() => server.dispose(), () => rm(dir, { recursive: true, force: true }));
    const file = join(dir, "alice.json");
    const alice = await register(server, "alice", new FileStorage(file));
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId);
    const firstArrives = nextEvent(bob, "message", (m) => m.text === "before the outage");
    await alice.send(direct.conversationId, "before the outage");
    await firstArrives;
    const bobSees = collect(bob, "message");

    const aliceOffline = nextEvent(alice, "state", (e) => e.state === "offline");
    await server.kill("SIGKILL");
    await aliceOffline;
    const sending = alice.send(direct.conversationId, "queued, then the page reloaded");
    await waitUntil(() => alice.pendingOutbox() === 1, "the message is in the outbox");
    await alice.close();
    await assert.rejects(sending, (e: unknown) => e instanceof TernError && e.code === "CLOSED");
    const onDisk = JSON.parse(await readFile(file, "utf8")) as { outbox: { body: string }[] };
    assert.deepEqual(onDisk.outbox.map((s) => s.body), ["queued, then the page reloaded"]);

    await server.restart();
    const reloaded = await start(sessionOptions(server, { kind: "resume" }, new FileStorage(file)));
    assert.equal(reloaded.pendingOutbox(), 1);
    assert.deepEqual(reloaded.pendingMessages().map((p) => p.body), ["queued, then the page reloaded"]);
    const sent = await nextEvent(reloaded, "sent");
    assert.equal(sent.seq, 2n);
    await waitUntil(() => reloaded.pendingOutbox() === 0, "the outbox is empty");
    await waitUntil(() => bobSees.length >= 1, "bob has the message");
    assert.deepEqual(bobSees.map((m) => m.text), ["queued, then the page reloaded"]);
    assert.deepEqual(await allMessages(bob, direct.conversationId), ["before the outage", "queued, then the page reloaded"]);
    const after = JSON.parse(await readFile(file, "utf8")) as { outbox: unknown[] };
    assert.deepEqual(after.outbox, []);
  });

  // Proves a send retried after its Sent was lost (it is still in the stored outbox) gets the
  // original message back from the server, under the same client_msg_id, and is not stored twice.
  test("a retried send is stored once", async () => {
    const server = await Ternd.start();
    cleanup.push(() => server.dispose());
    const storage = new MemoryStorage();
    const alice = await register(server, "alice", storage);
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId);
    const first = await alice.send(direct.conversationId, "only once");
    await alice.close();
    // As if the Sent had never arrived: the message is still in the stored outbox.
    await storage.pushOutbox({ clientMsgId: first.clientMsgId, conversationId: direct.conversationId, body: "only once", attachments: [], queuedAt: Date.now() });

    const again = await start(sessionOptions(server, { kind: "resume" }, storage));
    const sent = await nextEvent(again, "sent");
    assert.equal(sent.messageId, first.messageId);
    assert.equal(sent.seq, first.seq);
    await online(again);
    assert.equal((await storage.load()).outbox.length, 0);
    assert.deepEqual(await allMessages(bob, direct.conversationId), ["only once"]);
  });
});
