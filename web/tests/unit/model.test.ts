// The conversion of the SDK's values into the app's, and the merging of history pages with live
// messages: every message once, in seq order.

import assert from "node:assert/strict";
import { test } from "node:test";
import { type ChatMessage, fromInfo, fromMessage, fromSummary, insertBySeq, prependPage } from "../../src/model.ts";

function msg(seq: bigint, text = `m${seq}`): ChatMessage {
  return { conversationId: 1n, seq, messageId: 100n + seq, sender: 2n, tsMs: 1000 * Number(seq), text, attachments: [] };
}

test("a live message's bytes and a history message's string give the same text", () => {
  const live = fromMessage({
    conversationId: 1n,
    seq: 1n,
    messageId: 5n,
    sender: 2n,
    sentAt: 1767225612345n,
    body: new TextEncoder().encode("Hi Bob! 👋"),
    attachments: [],
  } as never);
  assert.equal(live.text, "Hi Bob! 👋");
  assert.equal(live.tsMs, 1767225612345);
  const stored = fromMessage({
    conversationId: 1n,
    seq: 1n,
    messageId: 5n,
    sender: 2n,
    ts: 1767225612345n,
    body: "Hi Bob! 👋",
    attachments: [],
  } as never);
  assert.deepEqual(stored, live);
});

test("insertBySeq keeps seq order and replaces a message it already has", () => {
  let list: ChatMessage[] = [];
  for (const s of [3n, 1n, 2n, 5n, 4n]) list = insertBySeq(list, msg(s));
  assert.deepEqual(list.map((m) => m.seq), [1n, 2n, 3n, 4n, 5n]);
  list = insertBySeq(list, msg(3n, "again"));
  assert.equal(list.length, 5);
  assert.equal(list[2].text, "again");
});

test("an older page goes in front, and its overlap with the loaded messages is not doubled", () => {
  const loaded = [msg(5n), msg(6n), msg(7n)];
  const page = [msg(3n), msg(4n), msg(5n), msg(6n)];
  assert.deepEqual(prependPage(loaded, page).map((m) => m.seq), [3n, 4n, 5n, 6n, 7n]);
  assert.deepEqual(prependPage([], page).map((m) => m.seq), [3n, 4n, 5n, 6n]);
});

test("kinds and roles map from the spec's numbers and from names", () => {
  const info = fromInfo(
    {
      conversationId: 7n,
      kind: 2,
      name: "Trip",
      createdAt: 10n,
      lastSeq: 4n,
      readSeq: 2n,
      unread: 2n,
      members: [
        { userId: 1n, role: 3 },
        { userId: 2n, role: "admin" },
        { userId: 3n, role: 1 },
      ],
    } as never,
    1n,
  );
  assert.equal(info.kind, "group");
  assert.equal(info.peer, 0n);
  assert.deepEqual(info.members?.map((m) => m.role), ["owner", "admin", "member"]);
  assert.equal(info.unread, 2);
  const direct = fromInfo(
    { conversationId: 8n, kind: "direct", name: "", createdAt: 10n, lastSeq: 0n, readSeq: 0n, unread: 0n, members: [{ userId: 1n, role: 1 }, { userId: 4n, role: 1 }] } as never,
    1n,
  );
  assert.equal(direct.kind, "direct");
  assert.equal(direct.peer, 4n);
  const summary = fromSummary({ conversationId: 8n, kind: 1, name: "", peer: 4n, lastSeq: 0n, readSeq: 0n, unread: 0n } as never);
  assert.equal(summary.lastMessage, null);
  assert.equal(summary.peer, 4n);
});
