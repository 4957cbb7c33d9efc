/**
 * Frames on the wire (spec §2.2): the encoder, the decoder of one whole frame, and the incremental
 * decoder of a byte stream.
 *
 * The decoders make the checks of spec §2.2 in its order: the length field first (below 6:
 * FrameTooSmall; above the maximum: FrameTooLarge, both before any byte of the body is awaited),
 * then the type, then the body field by field. A length error consumes nothing and closes the
 * connection; any later error consumes the whole frame, so the next one stays readable.
 *
 * @module
 */

import { DecodeError, EncodeError } from "./errors.js";
import { type Body, type BodyMap, FRAME_NAMES, FRAME_TYPES, type Frame, type FrameName } from "./frames.js";
import {
  FRAME_BYTES_MAX,
  FRAME_HEADER_AFTER_LENGTH_BYTES,
  FRAME_HEADER_BYTES,
  FRAME_LENGTH_BYTES,
} from "./limits.js";
import { type Codec, Reader, Writer } from "./primitives.js";

/**
 * Encodes a frame: length, type, request id, body. Throws {@link EncodeError} for a field above its
 * limit, or a frame above `maxFrameBytes` (the length field included; at most 1 MiB).
 */
export function encodeFrame(frame: Frame, maxFrameBytes: number = FRAME_BYTES_MAX): Uint8Array {
  const max = Math.min(maxFrameBytes, FRAME_BYTES_MAX);
  const entry = FRAME_TYPES[frame.body.type] as readonly [number, Codec<BodyMap[FrameName]>] | undefined;
  if (entry === undefined) {
    throw new EncodeError("InvalidEnum", null, `${String(frame.body.type)} is not a frame type`);
  }
  const [type, codec] = entry;
  const w = new Writer();
  w.u32(0, "length"); // Patched below, once the body's size is known.
  w.u16(type, "type");
  w.u32(frame.requestId, "request_id");
  codec.write(w, frame.body, frame.body.type);
  if (w.length > max) {
    throw new EncodeError("FrameTooLarge", null, `${w.length} bytes, at most ${max}`);
  }
  w.patchU32(0, w.length - FRAME_LENGTH_BYTES);
  return w.finish();
}

/**
 * The size of the frame that starts `buf` (length field included), or null when fewer than 4 bytes
 * are there. Throws the fatal {@link DecodeError}s (FrameTooSmall, FrameTooLarge) from the length
 * field alone.
 */
export function frameSize(buf: Uint8Array, maxFrameBytes: number = FRAME_BYTES_MAX): number | null {
  if (buf.length < FRAME_LENGTH_BYTES) {
    return null;
  }
  const length = new DataView(buf.buffer, buf.byteOffset, FRAME_LENGTH_BYTES).getUint32(0);
  if (length < FRAME_HEADER_AFTER_LENGTH_BYTES) {
    throw new DecodeError("FrameTooSmall", null, { length });
  }
  const frameBytes = length + FRAME_LENGTH_BYTES;
  const max = Math.min(maxFrameBytes, FRAME_BYTES_MAX);
  if (frameBytes > max) {
    throw new DecodeError("FrameTooLarge", null, { frame_bytes: frameBytes, max });
  }
  return frameBytes;
}

/** Decodes the type and body of a frame whose bytes (all `frameBytes` of them) are in `frame`. */
function decodeWhole(frame: Uint8Array): Frame {
  const header = new DataView(frame.buffer, frame.byteOffset, FRAME_HEADER_BYTES);
  const type = header.getUint16(FRAME_LENGTH_BYTES);
  const requestId = header.getUint32(FRAME_LENGTH_BYTES + 2);
  const name = FRAME_NAMES.get(type);
  if (name === undefined) {
    throw new DecodeError("UnknownType", null, { frame_type: type }, requestId, type);
  }
  const codec = FRAME_TYPES[name][1] as Codec<BodyMap[FrameName]>;
  try {
    // Bytes after the last field the type defines are a newer version's additions (spec §4).
    const fields = codec.read(new Reader(frame.subarray(FRAME_HEADER_BYTES)), name);
    return { requestId, body: { type: name, ...fields } as Body };
  } catch (error) {
    if (error instanceof DecodeError) {
      throw error.withHeader(requestId, type);
    }
    throw error;
  }
}

/**
 * Decodes exactly one whole frame, such as one WebSocket message (spec §2.11.2).
 *
 * Throws {@link DecodeError}: bytes missing at the end read as Truncated in field `"frame"`, bytes
 * after the frame as Truncated in field `"trailing"`.
 */
export function decodeFrame(bytes: Uint8Array, maxFrameBytes: number = FRAME_BYTES_MAX): Frame {
  const size = frameSize(bytes, maxFrameBytes);
  if (size === null || bytes.length < size) {
    throw new DecodeError("Truncated", "frame");
  }
  const frame = decodeWhole(bytes.subarray(0, size));
  if (bytes.length > size) {
    throw new DecodeError("Truncated", "trailing");
  }
  return frame;
}

/**
 * Cuts a byte stream into frames and decodes them: push bytes as they arrive, then call
 * {@link FrameDecoder.next} until it returns null (it needs more bytes).
 *
 * `next` throws a {@link DecodeError} for a frame that does not decode. When the error's
 * `closesConnection` is false the frame was consumed and `next` can be called again; when it is
 * true (a bad length field) nothing was consumed, the stream is out of step, and every later call
 * throws the same error.
 */
export class FrameDecoder {
  private readonly maxFrameBytes: number;
  /** Holds the unconsumed bytes at `start..end`; grows by doubling, compacts before growing. */
  private buf: Uint8Array = new Uint8Array(0);
  private start = 0;
  private end = 0;

  /** A decoder of frames up to `maxFrameBytes` (the length field included; at most 1 MiB). */
  constructor(maxFrameBytes: number = FRAME_BYTES_MAX) {
    this.maxFrameBytes = Math.min(maxFrameBytes, FRAME_BYTES_MAX);
  }

  /** Bytes received and not yet consumed. */
  get buffered(): number {
    return this.end - this.start;
  }

  /** Appends bytes received. */
  push(chunk: Uint8Array): void {
    if (this.end + chunk.length > this.buf.length) {
      const pending = this.buffered;
      let capacity = Math.max(this.buf.length, 1024);
      while (capacity < pending + chunk.length) {
        capacity *= 2;
      }
      if (capacity === this.buf.length) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const grown = new Uint8Array(capacity);
        grown.set(this.buf.subarray(this.start, this.end));
        this.buf = grown;
      }
      this.start = 0;
      this.end = pending;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** The next whole frame, or null when more bytes are needed; throws {@link DecodeError}. */
  next(): Frame | null {
    const pending = this.buf.subarray(this.start, this.end);
    const size = frameSize(pending, this.maxFrameBytes);
    if (size === null || pending.length < size) {
      return null;
    }
    // The frame is consumed now whatever its body holds, so the stream stays in step (spec §2.2).
    // Decoding copies every value out, so the buffer may be reused afterwards.
    this.start += size;
    return decodeWhole(pending.subarray(0, size));
  }
}
