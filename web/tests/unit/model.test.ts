// The conversion of the SDK's values into the app's, and the merging of history pages with live
// messages: every message once, in seq order.

import assert from "node:assert/strict";
import { test } from "node:test";
import { type ChatMessage, fromInfo, fromMessage, fromSummary, insertBySeq, prependPage } from "../../src/model.ts";

function msg(seq: bigint, text = `m${seq}`): ChatMessage {
  return { conversationId: 1n, seq, messageId: 100n + seq, sender: 2n, tsMs: 1000 * Number(seq), text, attachments: [] };
}

test("a message's text comes from its text, or else from its UTF-8 body", () => {
  const base = {
    conversationId: 1n,
    seq: 1n,
    messageId: 5n,
    sender: 2n,
    senderDevice: 1,
    sentAt: 1767225612345n,
    body: new TextEncoder().encode("Hi Bob! 👋"),
    attachments: [],
    clientMsgId: new Uint8Array(16),
  };
  const withText = fromMessage({ ...base, text: "Hi Bob! 👋" });
  assert.equal(withText.text, "Hi Bob! 👋");
  assert.equal(withText.tsMs, 1767225612345);
  assert.deepEqual(fromMessage(base), withText);
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

test("a direct conversation's peer is the member who is not the user; a group has none", () => {
  const group = fromInfo(
    {
      conversationId: 7n,
      kind: "group",
      name: "Trip",
      createdAt: 10n,
      lastSeq: 4n,
      readSeq: 2n,
      unread: 2n,
      members: [
        { userId: 1n, role: "owner" },
        { userId: 2n, role: "admin" },
      ],
    },
    1n,
  );
  assert.equal(group.peer, 0n);
  assert.equal(group.unread, 2);
  assert.deepEqual(group.members?.map((m) => m.role), ["owner", "admin"]);
  const direct = fromInfo(
    {
      conversationId: 8n,
      kind: "direct",
      name: "",
      createdAt: 10n,
      lastSeq: 0n,
      readSeq: 0n,
      unread: 0n,
      members: [
        { userId: 1n, role: "member" },
        { userId: 4n, role: "member" },
      ],
    },
    1n,
  );
  assert.equal(direct.peer, 4n);
  const summary = fromSummary({ conversationId: 8n, kind: "direct", name: "", peer: 4n, lastSeq: 0n, readSeq: 0n, unread: 0n, lastMessage: null });
  assert.equal(summary.lastMessage, null);
  assert.equal(summary.peer, 4n);
});
