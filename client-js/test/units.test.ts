/**
 * Unit tests of the parts with no server: the encoder's refusals, u64 values beyond 2^53, the
 * exact JSON reader the vector tests rely on, the send pacer, and the emitter's holding of events.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { EncodeError, FRAME_BYTES_MAX, decodeFrame, encodeFrame } from "../src/codec/index.js";
import { Emitter } from "../src/emitter.js";
import { CAREFUL_AFTER_REFUSAL_MS, Pacer } from "../src/pacer.js";
import { parseJson } from "./support/json.js";

function refusal(run: () => unknown): EncodeError {
  try {
    run();
  } catch (error) {
    if (error instanceof EncodeError) {
      return error;
    }
    throw error;
  }
  assert.fail("encoding succeeded where it must fail");
}

describe("encoder", () => {
  // Proves u64 values round-trip exactly at the top of their range, where doubles cannot.
  test("u64 values beyond 2^53 round-trip exactly", () => {
    for (const nonce of [2n ** 53n + 1n, 2n ** 64n - 1n, 0n]) {
      const frame = decodeFrame(encodeFrame({ requestId: 7, body: { type: "Ping", nonce } }));
      assert.deepEqual(frame, { requestId: 7, body: { type: "Ping", nonce } });
    }
  });

  // Proves the encoder refuses values outside their types rather than wrapping them.
  test("refuses numbers outside their type", () => {
    assert.equal(refusal(() => encodeFrame({ requestId: 1, body: { type: "Ping", nonce: 2n ** 64n } })).kind, "OutOfRange");
    assert.equal(refusal(() => encodeFrame({ requestId: 1, body: { type: "Ping", nonce: -1n } })).kind, "OutOfRange");
    assert.equal(refusal(() => encodeFrame({ requestId: 2 ** 32, body: { type: "Ping", nonce: 1n } })).kind, "OutOfRange");
    const asNumber = { type: "Ping", nonce: 5 } as unknown as { type: "Ping"; nonce: bigint };
    assert.equal(refusal(() => encodeFrame({ requestId: 1, body: asNumber })).field, "nonce");
  });

  // Proves limits are enforced when writing: bytes for strings, characters for text, items for
  // lists, the frame size, and exact sizes for fixed arrays.
  test("refuses values above their limits", () => {
    const lookup = refusal(() => encodeFrame({ requestId: 1, body: { type: "LookupUser", username: "a".repeat(33) } }));
    assert.deepEqual([lookup.kind, lookup.field], ["TooLong", "username"]);
    const send = (body: string, attachments: bigint[] = []) =>
      encodeFrame({ requestId: 1, body: { type: "Send", conversationId: 1n, clientMsgId: new Uint8Array(16), body, attachments } });
    // 100,000 four-byte characters fit; one more does not.
    assert.ok(send("👋".repeat(100_000)).length > 400_000);
    assert.deepEqual([refusal(() => send("é".repeat(100_001))).kind, refusal(() => send("é".repeat(100_001))).field], ["TooManyChars", "body"]);
    assert.equal(refusal(() => send("x", Array.from({ length: 17 }, (_, i) => BigInt(i)))).kind, "TooManyItems");
    const resume = refusal(() => encodeFrame({ requestId: 1, body: { type: "Resume", token: new Uint8Array(31) } }));
    assert.equal(resume.kind, "WrongSize");
    const small = refusal(() => encodeFrame({ requestId: 1, body: { type: "Ping", nonce: 1n } }, 17));
    assert.equal(small.kind, "FrameTooLarge");
    assert.ok(FRAME_BYTES_MAX === 1_048_576);
  });

  // Proves an unpaired surrogate is refused rather than silently replaced by U+FFFD.
  test("refuses strings that are not Unicode scalar values", () => {
    const error = refusal(() => encodeFrame({ requestId: 1, body: { type: "LookupUser", username: "ab\ud800" } }));
    assert.equal(error.kind, "InvalidString");
    // A leading U+FEFF is an ordinary character and survives.
    const bom = decodeFrame(encodeFrame({ requestId: 1, body: { type: "LookupUser", username: "\ufeffabc" } }));
    assert.deepEqual(bom.body, { type: "LookupUser", username: "\ufeffabc" });
  });
});

describe("exact JSON", () => {
  // Proves the manifest reader keeps integers exact and reads strings and nesting right.
  test("keeps big integers and escapes", () => {
    const value = parseJson('{"a": 18446744073709551615, "b": [-1, 0, true, null], "c": "\\u00e9\\ud83d\\udc4b\\n"}');
    assert.deepEqual(value, { a: 18_446_744_073_709_551_615n, b: [-1n, 0n, true, null], c: "é👋\n" });
    assert.throws(() => parseJson("1.5"), SyntaxError);
    assert.throws(() => parseJson('{"a": 1} x'), SyntaxError);
  });
});

describe("pacer", () => {
  /** Starts sends while the pacer allows, none answered; returns how many. */
  function pipelined(pacer: Pacer, now: number): number {
    let inFlight = 0;
    while (inFlight < 1000 && pacer.maySend(now, inFlight)) {
      pacer.started(now);
      inFlight++;
    }
    return inFlight;
  }

  // Proves sends are pipelined up to the window while the estimated bucket has room, then go
  // one at a time, and that a second refills the bucket.
  test("pipelines within the window and the bucket", () => {
    const pacer = new Pacer(32, 100, 50, 0);
    const rounds = Array.from({ length: 6 }, () => pipelined(pacer, 0));
    assert.deepEqual(rounds, [32, 32, 32, 2, 1, 1]);
    assert.equal(pipelined(pacer, 1000), 32);
  });

  // Proves a refusal holds every send for the time named, then allows one at a time until the
  // careful period ends.
  test("a refusal holds, then goes one at a time", () => {
    const pacer = new Pacer(32, 0, 0, 0);
    pacer.refused(0, 40);
    assert.equal(pacer.heldUntil(0), 40);
    assert.equal(pacer.maySend(39, 0), false);
    assert.equal(pacer.heldUntil(40), null);
    assert.equal(pacer.maySend(40, 0), true);
    assert.equal(pacer.maySend(40, 1), false);
    assert.equal(pipelined(pacer, 40 + CAREFUL_AFTER_REFUSAL_MS), 32);
  });
});

describe("emitter", () => {
  // Proves events of a holding type wait for their first listener and come in order, before later
  // ones; other types are dropped without a listener.
  test("holds log events until a listener comes", async () => {
    const emitter = new Emitter<{ message: number; typing: number }>(["message"]);
    emitter.emit("message", 1);
    emitter.emit("message", 2);
    emitter.emit("typing", 1);
    const messages: number[] = [];
    const typing: number[] = [];
    emitter.on("message", (n) => messages.push(n));
    emitter.on("typing", (n) => typing.push(n));
    emitter.emit("message", 3);
    assert.deepEqual(messages, []);
    await Promise.resolve();
    assert.deepEqual(messages, [1, 2, 3]);
    emitter.emit("message", 4);
    assert.deepEqual(messages, [1, 2, 3, 4]);
    assert.deepEqual(typing, []);
  });

  // Proves unsubscribing stops the calls.
  test("unsubscribes", () => {
    const emitter = new Emitter<{ state: string }>([]);
    const seen: string[] = [];
    const off = emitter.on("state", (s) => seen.push(s));
    emitter.emit("state", "a");
    off();
    emitter.emit("state", "b");
    assert.deepEqual(seen, ["a"]);
  });
});
