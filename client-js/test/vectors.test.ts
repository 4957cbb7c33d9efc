/**
 * The codec against every golden vector of `spec/vectors/` (spec Appendix A and the vectors'
 * README): valid frames decode to the manifest's value and re-encode to the same bytes, invalid
 * inputs fail with the stated error (its wire code, whether it closes, its field and its values),
 * incomplete inputs ask for more bytes. Plus the README's two further checks, and every frame of the
 * spec's worked example (§18).
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";

import {
  DecodeError,
  type Frame,
  FrameDecoder,
  decodeFrame,
  encodeFrame,
  specFieldName,
} from "../src/codec/index.js";
import { type Json, parseJson } from "./support/json.js";
import { repoRoot } from "./support/paths.js";

const VECTORS = join(repoRoot(), "spec", "vectors");

interface Entry {
  name: string;
  file: string;
  kind: "valid" | "invalid" | "incomplete";
  size: bigint;
  hex?: string;
  frame?: Json;
  reencodes?: boolean;
  error?: {
    name: string;
    code: bigint;
    code_name: string;
    closes_connection: boolean;
    request_id: bigint | null;
    field: string | null;
    detail: { [key: string]: bigint };
  };
}

const manifest = parseJson(readFileSync(join(VECTORS, "manifest.json"), "utf8")) as unknown as {
  protocol_version: bigint;
  vectors: Entry[];
};

function bytesOf(entry: Entry): Uint8Array {
  const bytes = new Uint8Array(readFileSync(join(VECTORS, entry.file)));
  assert.equal(BigInt(bytes.length), entry.size, `${entry.name}: size`);
  if (entry.hex !== undefined) {
    assert.equal(Buffer.from(bytes).toString("hex"), entry.hex, `${entry.name}: hex`);
  }
  return bytes;
}

/** Keys whose string values are enums, written in the manifest as the spec's capitalised names. */
const ENUM_KEYS = new Set(["role", "kind", "platform"]);

/**
 * Keys of the flags appended to version-1 bodies (spec §19.7): the manifest leaves them out when
 * false (serde's `skip_serializing_if`), as the bytes do.
 */
const APPENDED_FLAGS = new Set(["encrypted"]);

/**
 * A decoded value in the manifest's form (serde's defaults over the Rust types): snake_case keys,
 * tagged bodies as `{"Name": {fields}}`, byte arrays as lists of numbers, every integer a bigint,
 * appended flags only when true.
 */
function toManifest(value: unknown, key = ""): Json {
  if (value === null) {
    return null;
  }
  if (typeof value === "bigint") {
    return value;
  }
  if (typeof value === "number") {
    assert.ok(Number.isSafeInteger(value), `${key}: ${value} is not an exact integer`);
    return BigInt(value);
  }
  if (typeof value === "boolean") {
    return value;
  }
  if (typeof value === "string") {
    return ENUM_KEYS.has(key) ? value.charAt(0).toUpperCase() + value.slice(1) : value;
  }
  if (value instanceof Uint8Array) {
    return Array.from(value, (b) => BigInt(b));
  }
  if (Array.isArray(value)) {
    return value.map((item) => toManifest(item, key));
  }
  if (typeof value === "object") {
    const { type, ...rest } = value as { type?: unknown };
    const fields: { [k: string]: Json } = {};
    for (const [k, v] of Object.entries(type === undefined ? value : rest)) {
      const name = specFieldName(k);
      if (APPENDED_FLAGS.has(name) && v === false) {
        continue;
      }
      fields[name] = toManifest(v, name);
    }
    return typeof type === "string" ? { [type]: fields } : fields;
  }
  throw new Error(`${key}: cannot put ${typeof value} in the manifest's form`);
}

/** Asserts that every `u64` of a frame came out as a bigint: spot-checked through its JSON form. */
function decodedAs(frame: Frame, expected: Json, name: string): void {
  assert.deepEqual(toManifest(frame), expected, `${name}: decoded value`);
}

const entries = manifest.vectors;

describe("golden vectors", () => {
  test("the manifest is for protocol version 1 and lists every kind", () => {
    assert.equal(manifest.protocol_version, 1n);
    const kinds = new Set(entries.map((e) => e.kind));
    assert.deepEqual([...kinds].sort(), ["incomplete", "invalid", "valid"]);
  });

  describe("valid: decode to the manifest's frame and re-encode to the same bytes", () => {
    for (const entry of entries.filter((e) => e.kind === "valid")) {
      test(entry.name, () => {
        const bytes = bytesOf(entry);
        const frame = decodeFrame(bytes);
        decodedAs(frame, entry.frame ?? null, entry.name);
        const again = encodeFrame(frame);
        if (entry.reencodes === true) {
          assert.deepEqual(again, bytes, `${entry.name}: re-encoding`);
        } else {
          // The file carries a newer version's extension bytes, which a reader ignores: the
          // re-encoding is shorter and decodes to the same value.
          assert.ok(again.length < bytes.length, `${entry.name}: re-encoding drops the extension`);
          decodedAs(decodeFrame(again), entry.frame ?? null, entry.name);
        }
      });
    }
  });

  describe("invalid: fail with the stated error", () => {
    for (const entry of entries.filter((e) => e.kind === "invalid")) {
      test(entry.name, () => {
        const bytes = bytesOf(entry);
        const expected = entry.error;
        assert.ok(expected !== undefined);
        const error = catchDecode(() => decodeFrame(bytes));
        assert.equal(error.kind, expected.name, `${entry.name}: error`);
        assert.equal(BigInt(error.code), expected.code, `${entry.name}: wire code`);
        assert.equal(error.codeName, expected.code_name, `${entry.name}: wire code name`);
        assert.equal(error.closesConnection, expected.closes_connection, `${entry.name}: closes`);
        assert.equal(error.field, expected.field, `${entry.name}: field`);
        assert.equal(
          error.requestId === null ? null : BigInt(error.requestId),
          expected.request_id,
          `${entry.name}: request id`,
        );
        assert.deepEqual(toManifest(error.detail), expected.detail, `${entry.name}: detail`);
      });
    }
  });

  describe("incomplete: the incremental decoder asks for more and consumes nothing", () => {
    for (const entry of entries.filter((e) => e.kind === "incomplete")) {
      test(entry.name, () => {
        const bytes = bytesOf(entry);
        const decoder = new FrameDecoder();
        decoder.push(bytes);
        assert.equal(decoder.next(), null);
        assert.equal(decoder.buffered, bytes.length);
        // Asked again with nothing new, it still waits.
        assert.equal(decoder.next(), null);
      });
    }
  });

  test("every valid file fed one byte at a time decodes as when whole", () => {
    for (const entry of entries.filter((e) => e.kind === "valid")) {
      const bytes = bytesOf(entry);
      const decoder = new FrameDecoder();
      const frames: Frame[] = [];
      for (let i = 0; i < bytes.length; i++) {
        decoder.push(bytes.subarray(i, i + 1));
        const frame = decoder.next();
        if (frame !== null) {
          assert.equal(i, bytes.length - 1, `${entry.name}: a frame before its last byte`);
          frames.push(frame);
        }
      }
      assert.equal(frames.length, 1, entry.name);
      assert.deepEqual(frames[0], decodeFrame(bytes), entry.name);
      assert.equal(decoder.buffered, 0);
    }
  });

  test("all valid files back to back in one buffer decode in order", () => {
    const valid = entries.filter((e) => e.kind === "valid");
    const decoder = new FrameDecoder();
    for (const entry of valid) {
      decoder.push(bytesOf(entry));
    }
    for (const entry of valid) {
      const frame = decoder.next();
      assert.ok(frame !== null, entry.name);
      decodedAs(frame, entry.frame ?? null, entry.name);
    }
    assert.equal(decoder.next(), null);
    assert.equal(decoder.buffered, 0);
  });

  test("errors keep the stream in step: a frame after a non-fatal error still decodes", () => {
    const ping = bytesOf(entries.find((e) => e.name === "ping") as Entry);
    for (const entry of entries.filter((e) => e.kind === "invalid")) {
      const bytes = bytesOf(entry);
      const decoder = new FrameDecoder();
      decoder.push(bytes);
      decoder.push(ping);
      if (entry.name === "trailing_byte") {
        // Decoded as a stream, the whole frame comes out and the stray byte starts the next one.
        assert.ok(decoder.next() !== null);
        assert.equal(decoder.buffered, 1 + ping.length);
        continue;
      }
      const error = catchDecode(() => decoder.next());
      if (error.closesConnection) {
        assert.equal(decoder.buffered, bytes.length + ping.length, `${entry.name}: nothing consumed`);
        assert.equal(catchDecode(() => decoder.next()).kind, error.kind, entry.name);
      } else {
        assert.equal(decoder.buffered, ping.length, `${entry.name}: the frame consumed`);
        const next = decoder.next();
        assert.deepEqual(next, decodeFrame(ping), `${entry.name}: the next frame`);
      }
    }
  });

  test("a length field above the limit is refused before the body arrives", () => {
    for (const name of ["length_above_max", "length_u32_max"]) {
      const bytes = bytesOf(entries.find((e) => e.name === name) as Entry);
      const decoder = new FrameDecoder();
      decoder.push(bytes.subarray(0, 4));
      assert.equal(catchDecode(() => decoder.next()).kind, "FrameTooLarge", name);
    }
  });

  test("a receiver's smaller frame limit is enforced from the length field", () => {
    const decoder = new FrameDecoder(64);
    const send = bytesOf(entries.find((e) => e.name === "send") as Entry);
    assert.ok(send.length > 64);
    decoder.push(send.subarray(0, 4));
    const error = catchDecode(() => decoder.next());
    assert.equal(error.kind, "FrameTooLarge");
    assert.deepEqual(error.detail, { frame_bytes: send.length, max: 64 });
  });
});

describe("the spec's worked example (§18)", () => {
  const spec = readFileSync(join(repoRoot(), "spec", "protocol.md"), "utf8");
  const example = spec.slice(spec.indexOf("## 18. Worked example"), spec.indexOf("## Appendix A"));
  const blocks = [...example.matchAll(/```hex\n([0-9a-f \n]+)```/g)].map((m) =>
    Uint8Array.from(Buffer.from((m[1] ?? "").replace(/\s+/g, ""), "hex")),
  );

  test("has its 22 frames", () => {
    assert.equal(blocks.length, 22);
  });

  test("every frame decodes and re-encodes byte for byte", () => {
    for (const [i, bytes] of blocks.entries()) {
      const frame = decodeFrame(bytes);
      assert.deepEqual(encodeFrame(frame), bytes, `frame ${i + 1} (${frame.body.type})`);
    }
  });

  test("the values the text names come out exact", () => {
    const event = decodeFrame(blocks[9] as Uint8Array);
    assert.equal(event.body.type, "UpdateEvent");
    if (event.body.type === "UpdateEvent" && event.body.update.kind.type === "Message") {
      // Above 2^53: a double would round it.
      assert.equal(event.body.update.kind.messageId, 7_412_281_454_761_082_881n);
      assert.equal(event.body.update.kind.body, "Hi Bob! 👋");
    } else {
      assert.fail("frame 10 is a Message update");
    }
  });
});

function catchDecode(run: () => unknown): DecodeError {
  try {
    run();
  } catch (error) {
    if (error instanceof DecodeError) {
      return error;
    }
    throw error;
  }
  assert.fail("decoding succeeded where it must fail");
}
