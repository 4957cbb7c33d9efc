/**
 * Chat between live sessions over a real ternd: messages, delivered and read receipts, typing,
 * presence, a group of three, history, and the lookups an app shows names with.
 */

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { TernError } from "../src/index.js";
import { Ternd, closeAll, collect, nextEvent, register, waitUntil } from "./support/ternd.js";

describe("chat", () => {
  let server: Ternd;
  before(async () => {
    server = await Ternd.start();
  });
  afterEach(closeAll);
  after(async () => {
    await server.dispose();
  });

  // Proves a message reaches the other side as a `message` event, that the sender's promise
  // resolves with its seq, and that the sender sees delivered and then read receipts.
  test("two sessions chat, with delivered and read receipts", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const found = await alice.lookupUser(bob.username);
    assert.equal(found.userId, bob.userId);
    const direct = await alice.openDirect(bob.userId);
    assert.equal(direct.kind, "direct");
    assert.deepEqual(direct.members.map((m) => m.userId).sort(), [alice.userId, bob.userId].sort());

    const arrives = nextEvent(bob, "message", (m) => m.text === "Hi Bob! 👋");
    const delivered = nextEvent(alice, "receipt", (r) => r.kind === "delivered" && r.userId === bob.userId);
    const sent = await alice.send(direct.conversationId, "Hi Bob! 👋");
    assert.equal(sent.seq, 1n);
    const message = await arrives;
    assert.equal(message.conversationId, direct.conversationId);
    assert.equal(message.sender, alice.userId);
    assert.equal(message.seq, 1n);
    assert.equal(message.messageId, sent.messageId);
    assert.deepEqual(message.body, new TextEncoder().encode("Hi Bob! 👋"));
    assert.equal((await delivered).upToSeq, 1n);

    const read = nextEvent(alice, "receipt", (r) => r.kind === "read" && r.userId === bob.userId);
    await bob.markRead(direct.conversationId, message.seq);
    const receipt = await read;
    assert.equal(receipt.conversationId, direct.conversationId);
    assert.equal(receipt.upToSeq, 1n);
    assert.equal(alice.pendingOutbox(), 0);
  });

  // Proves typing reaches the other member and stops, and that repeated starts are not re-sent.
  test("typing", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId);
    const events = collect(bob, "typing");
    const started = nextEvent(bob, "typing", (e) => e.typing);
    alice.typing(direct.conversationId, true);
    alice.typing(direct.conversationId, true);
    const start = await started;
    assert.deepEqual(start, { conversationId: direct.conversationId, userId: alice.userId, typing: true });
    const stopped = nextEvent(bob, "typing", (e) => !e.typing);
    alice.typing(direct.conversationId, false);
    await stopped;
    // The second start within 3 s was not sent: one start, one stop.
    assert.deepEqual(events.map((e) => e.typing), [true, false]);
  });

  // Proves presence: the subscription answers the state now, and changes arrive as events.
  test("presence", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    await alice.openDirect(bob.userId);
    const [now] = await alice.subscribePresence([bob.userId]);
    assert.deepEqual(now, { userId: bob.userId, online: true, lastSeen: null });
    const offline = nextEvent(alice, "presence", (p) => p.userId === bob.userId && !p.online);
    await bob.close();
    const gone = await offline;
    assert.ok(gone.lastSeen !== null && gone.lastSeen > 0n);
    const stranger = await register(server, "mallory");
    await assert.rejects(alice.subscribePresence([stranger.userId]), (e: unknown) => e instanceof TernError && e.code === "FORBIDDEN");
  });

  // Proves a group of three: created with a GroupCreated for everyone, a message reaches both other
  // members, renames and membership changes arrive as conversation events.
  test("a group of three", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const carol = await register(server, "carol");
    const bobCreated = nextEvent(bob, "conversation", (c) => c.change === "created");
    const carolCreated = nextEvent(carol, "conversation", (c) => c.change === "created");
    const group = await alice.createGroup("Climbing crew 🧗", [bob.userId, carol.userId]);
    assert.equal(group.kind, "group");
    assert.equal(group.name, "Climbing crew 🧗");
    assert.equal(group.members.length, 3);
    assert.equal(group.members.find((m) => m.userId === alice.userId)?.role, "owner");
    assert.equal((await bobCreated).conversationId, group.conversationId);
    assert.equal((await carolCreated).conversationId, group.conversationId);

    const toBob = nextEvent(bob, "message", (m) => m.conversationId === group.conversationId);
    const toCarol = nextEvent(carol, "message", (m) => m.conversationId === group.conversationId);
    await alice.send(group.conversationId, "Saturday at 9?");
    assert.equal((await toBob).text, "Saturday at 9?");
    assert.equal((await toCarol).sender, alice.userId);

    const renamed = nextEvent(carol, "conversation", (c) => c.change === "renamed");
    await bob.renameGroup(group.conversationId, "Climbing crew (Saturdays)");
    assert.equal((await renamed).actor, bob.userId);
    assert.equal((await carol.getConversation(group.conversationId)).name, "Climbing crew (Saturdays)");

    const removed = nextEvent(carol, "conversation", (c) => c.change === "memberRemoved");
    await alice.removeMember(group.conversationId, bob.userId);
    assert.equal((await removed).userId, bob.userId);
    await assert.rejects(bob.send(group.conversationId, "still here?"), (e: unknown) => e instanceof TernError && e.code === "NOT_FOUND");
    assert.equal(bob.pendingOutbox(), 0);

    const summaries = await carol.listConversations();
    const line = summaries.find((s) => s.conversationId === group.conversationId);
    assert.equal(line?.lastMessage?.text, "Saturday at 9?");
    assert.equal(line?.unread, 1n);
    const names = await carol.getUsers([alice.userId, bob.userId, 999_999_999n]);
    assert.deepEqual([...names.entries()].sort(), [[alice.userId, alice.username], [bob.userId, bob.username]].sort());
  });

  // Proves history pages backwards and forwards in ascending seq with has_more, and that pipelined
  // sends keep their order.
  test("history pages back, and forwards, through pipelined sends", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId);
    const texts = Array.from({ length: 25 }, (_, i) => `message ${i + 1}`);
    const results = await Promise.all(texts.map((t) => alice.send(direct.conversationId, t)));
    assert.deepEqual(results.map((r) => r.seq), texts.map((_, i) => BigInt(i + 1)));
    const newest = await bob.history(direct.conversationId, { limit: 10 });
    assert.equal(newest.hasMore, true);
    assert.deepEqual(newest.messages.map((m) => m.text), texts.slice(15));
    const older = await bob.history(direct.conversationId, { before: newest.messages[0]?.seq ?? 0n, limit: 20 });
    assert.equal(older.hasMore, false);
    assert.deepEqual(older.messages.map((m) => m.text), texts.slice(0, 15));
    await waitUntil(() => alice.pendingOutbox() === 0, "the outbox is empty");
    // Forwards from a message in the middle (revision 1.1), up to the newest.
    const from8 = await bob.historyAfter(direct.conversationId, 8n, { limit: 10 });
    assert.equal(from8.hasMore, true);
    assert.deepEqual(from8.messages.map((m) => m.text), texts.slice(8, 18));
    const rest = await bob.historyAfter(direct.conversationId, from8.messages.at(-1)?.seq ?? 0n, { limit: 10 });
    assert.equal(rest.hasMore, false);
    assert.deepEqual(rest.messages.map((m) => m.text), texts.slice(18));
    const fromStart = await bob.historyAfter(direct.conversationId, 0n, { limit: 3 });
    assert.deepEqual(fromStart.messages.map((m) => m.text), texts.slice(0, 3));
  });

  // Proves a burst beyond the server's send limit (ternd: 100 at once, then 50 a second) is paced,
  // not reordered or lost: every message is stored, in the order it was sent.
  test("a burst above the send limit keeps its order", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId);
    const texts = Array.from({ length: 160 }, (_, i) => `burst ${i + 1}`);
    const results = await Promise.all(texts.map((t) => alice.send(direct.conversationId, t)));
    assert.deepEqual(results.map((r) => r.seq), texts.map((_, i) => BigInt(i + 1)));
    const newest = await bob.history(direct.conversationId, { limit: 200 });
    assert.deepEqual(newest.messages.map((m) => m.text), texts);
  });
});
