/**
 * Media against a real ternd: an upload of several chunks and its download come back byte for byte,
 * with progress reported along the way, and attached to a message it reaches the other member.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, afterEach, before, describe, test } from "node:test";

import { TernError } from "../src/index.js";
import { Ternd, closeAll, nextEvent, register } from "./support/ternd.js";

describe("media", () => {
  let server: Ternd;
  before(async () => {
    server = await Ternd.start();
  });
  afterEach(closeAll);
  after(async () => {
    await server.dispose();
  });

  // Proves upload and download are byte-identical across chunk boundaries, that progress climbs to
  // the total, and that the attachment travels with a message to the other member.
  test("upload and download, byte for byte, with progress", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId);
    // Three chunks of 256 KiB and a bit: the last chunk is short.
    const data = new Uint8Array(randomBytes(3 * 256 * 1024 + 12_345));
    const sentProgress: number[] = [];
    const attachment = await alice.upload(data, {
      mime: "application/octet-stream",
      name: "blob.bin",
      onProgress: (sent, total) => {
        assert.equal(total, data.length);
        sentProgress.push(sent);
      },
    });
    assert.equal(attachment.size, BigInt(data.length));
    assert.equal(attachment.mime, "application/octet-stream");
    assert.equal(attachment.name, "blob.bin");
    assert.deepEqual(sentProgress, [0, 262_144, 524_288, 786_432, data.length]);

    const arrives = nextEvent(bob, "message", (m) => m.conversationId === direct.conversationId);
    await alice.send(direct.conversationId, "", { attachments: [attachment] });
    const message = await arrives;
    assert.equal(message.text, "");
    assert.equal(message.attachments.length, 1);
    const received = message.attachments[0];
    assert.ok(received !== undefined);
    assert.equal(received.mediaId, attachment.mediaId);

    const gotProgress: number[] = [];
    const copy = await bob.download(received.mediaId, { onProgress: (got, total) => {
      assert.equal(total, data.length);
      gotProgress.push(got);
    } });
    assert.deepEqual(copy, data);
    assert.equal(gotProgress[0], 0);
    assert.equal(gotProgress.at(-1), data.length);
    assert.deepEqual(gotProgress, [...gotProgress].sort((a, b) => a - b));

    const stranger = await register(server, "mallory");
    await assert.rejects(stranger.download(received.mediaId), (e: unknown) => e instanceof TernError && e.code === "NOT_FOUND");
  });

  // Proves an empty upload and an empty message without attachments are refused before the wire.
  test("empty uploads and empty messages are refused", async () => {
    const alice = await register(server, "alice");
    await assert.rejects(alice.upload(new Uint8Array(0), { mime: "text/plain" }), (e: unknown) => e instanceof TernError && e.code === "INVALID_ARGUMENT");
    await assert.rejects(alice.send(1n, ""), (e: unknown) => e instanceof TernError && e.code === "INVALID_ARGUMENT");
    assert.equal(alice.pendingOutbox(), 0);
  });
});
