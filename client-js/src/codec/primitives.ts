/**
 * The primitive encodings of spec §3, and combinators that build a structure's codec from its fields.
 *
 * A {@link Codec} reads a value from a {@link Reader} and writes one to a {@link Writer}. Every read
 * makes the spec's checks in the spec's order, and checks a length or count against its limit
 * before it looks at, copies or allocates the bytes behind it, so a hostile length costs nothing.
 * Every write refuses a value above its limit rather than truncating it (spec §3.11).
 *
 * `u64` values are `bigint`; `u8`, `u16` and `u32` are `number`. Options are `null` when absent.
 *
 * @module
 */

import { DecodeError, EncodeError } from "./errors.js";
import { U32_MAX, U64_MAX } from "./limits.js";

/** Reads fields from one frame body (or one update body), front to back. */
export class Reader {
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private pos = 0;

  /** A reader of `bytes`, from their start. */
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Bytes not read yet. After the last known field these are a newer version's additions. */
  remaining(): number {
    return this.bytes.length - this.pos;
  }

  /** The next `n` bytes, as a view into the input; Truncated if fewer remain. */
  take(n: number, field: string): Uint8Array {
    if (n > this.remaining()) {
      throw new DecodeError("Truncated", field);
    }
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A `u8`. */
  u8(field: string): number {
    this.need(1, field);
    const value = this.view.getUint8(this.pos);
    this.pos += 1;
    return value;
  }

  /** A big-endian `u16`. */
  u16(field: string): number {
    this.need(2, field);
    const value = this.view.getUint16(this.pos);
    this.pos += 2;
    return value;
  }

  /** A big-endian `u32`. */
  u32(field: string): number {
    this.need(4, field);
    const value = this.view.getUint32(this.pos);
    this.pos += 4;
    return value;
  }

  /** A big-endian `u64`, as a bigint. */
  u64(field: string): bigint {
    this.need(8, field);
    const value = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return value;
  }

  private need(n: number, field: string): void {
    if (n > this.remaining()) {
      throw new DecodeError("Truncated", field);
    }
  }
}

/** Writes fields into a growing buffer. */
export class Writer {
  private buf: Uint8Array;
  private view: DataView;
  private len = 0;

  /** An empty writer with room for `capacity` bytes before it grows. */
  constructor(capacity = 256) {
    this.buf = new Uint8Array(Math.max(16, capacity));
    this.view = new DataView(this.buf.buffer);
  }

  /** Bytes written so far. */
  get length(): number {
    return this.len;
  }

  /** A copy of the bytes written. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  /** Appends a `u8`. */
  u8(value: number, field: string): void {
    checkInteger(value, 0xff, field);
    this.reserve(1);
    this.view.setUint8(this.len, value);
    this.len += 1;
  }

  /** Appends a big-endian `u16`. */
  u16(value: number, field: string): void {
    checkInteger(value, 0xffff, field);
    this.reserve(2);
    this.view.setUint16(this.len, value);
    this.len += 2;
  }

  /** Appends a big-endian `u32`. */
  u32(value: number, field: string): void {
    checkInteger(value, U32_MAX, field);
    this.reserve(4);
    this.view.setUint32(this.len, value);
    this.len += 4;
  }

  /** Appends a big-endian `u64`. */
  u64(value: bigint, field: string): void {
    if (typeof value !== "bigint" || value < 0n || value > U64_MAX) {
      throw new EncodeError("OutOfRange", field, `${String(value)} is not a u64 (a bigint)`);
    }
    this.reserve(8);
    this.view.setBigUint64(this.len, value);
    this.len += 8;
  }

  /** Appends bytes as they are. */
  raw(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  /** Overwrites the `u32` at `offset` (a length written before its value was known). */
  patchU32(offset: number, value: number): void {
    this.view.setUint32(offset, value);
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) {
      return;
    }
    let capacity = this.buf.length * 2;
    while (capacity < this.len + n) {
      capacity *= 2;
    }
    const grown = new Uint8Array(capacity);
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }
}

function checkInteger(value: number, max: number, field: string): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new EncodeError("OutOfRange", field, `${String(value)} is not an integer in 0..${max}`);
  }
}

/** How one type of value is read and written. `field` names the field, for errors. */
export interface Codec<T> {
  /** Reads one value; throws {@link DecodeError}. */
  read(r: Reader, field: string): T;
  /** Writes one value; throws {@link EncodeError}. */
  write(w: Writer, value: T, field: string): void;
}

/** `u8` (spec §3.1). */
export const u8: Codec<number> = {
  read: (r, field) => r.u8(field),
  write: (w, value, field) => w.u8(value, field),
};

/** `u16` (spec §3.1). */
export const u16: Codec<number> = {
  read: (r, field) => r.u16(field),
  write: (w, value, field) => w.u16(value, field),
};

/** `u32` (spec §3.1). */
export const u32: Codec<number> = {
  read: (r, field) => r.u32(field),
  write: (w, value, field) => w.u32(value, field),
};

/** `u64` (spec §3.1), as a bigint. */
export const u64: Codec<bigint> = {
  read: (r, field) => r.u64(field),
  write: (w, value, field) => w.u64(value, field),
};

/** `bool` (spec §3.2): `00` or `01`, anything else is InvalidBool. */
export const bool: Codec<boolean> = {
  read(r, field) {
    const value = r.u8(field);
    if (value > 1) {
      throw new DecodeError("InvalidBool", field, { value });
    }
    return value === 1;
  },
  write(w, value, field) {
    w.u8(value ? 1 : 0, field);
  },
};

/**
 * A `bool` appended to a version-1 body (spec §19.7): written only when true, and read as false
 * from a body that ends before it. Absent (`undefined`) is written as false.
 */
export const tailFlag: Codec<boolean> = {
  read(r, field) {
    return r.remaining() === 0 ? false : bool.read(r, field);
  },
  write(w, value: boolean | undefined, field) {
    if (value === true) {
      w.u8(1, field);
    } else if (value !== false && value !== undefined) {
      throw new EncodeError("OutOfRange", field, `${String(value)} is not a boolean`);
    }
  },
};

/** `byte[n]` (spec §3.3): exactly `n` raw bytes, copied out of the input. */
export function fixed(n: number): Codec<Uint8Array> {
  return {
    read: (r, field) => r.take(n, field).slice(),
    write(w, value, field) {
      if (!(value instanceof Uint8Array) || value.length !== n) {
        throw new EncodeError("WrongSize", field, `expected exactly ${n} bytes`);
      }
      w.raw(value);
    },
  };
}

/** A strict UTF-8 decoder: rejects what is not valid UTF-8 and keeps a leading U+FEFF (spec §3.4). */
const UTF8_DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const UTF8_ENCODER = new TextEncoder();

/** Decodes strict UTF-8; null when `bytes` are not valid UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string | null {
  try {
    return UTF8_DECODER.decode(bytes);
  } catch {
    return null;
  }
}

/**
 * Encodes a string as UTF-8; throws when it holds an unpaired surrogate (which would otherwise be
 * replaced by U+FFFD: the encoder never repairs a value).
 */
export function encodeUtf8(value: string, field: string | null = null): Uint8Array {
  if (typeof value !== "string") {
    throw new EncodeError("InvalidString", field, "not a string");
  }
  if (!isWellFormed(value)) {
    throw new EncodeError("InvalidString", field, "an unpaired UTF-16 surrogate");
  }
  return UTF8_ENCODER.encode(value);
}

/** Whether a string has no unpaired surrogate, so that it is a sequence of Unicode scalar values. */
function isWellFormed(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = value.charCodeAt(i + 1);
      if (!(next >= 0xdc00 && next <= 0xdfff)) {
        return false;
      }
      i++;
    } else if (unit >= 0xdc00 && unit <= 0xdfff) {
      return false;
    }
  }
  return true;
}

/** The characters (Unicode scalar values) of valid UTF-8: the bytes that are not `10xxxxxx`. */
export function utf8Chars(bytes: Uint8Array): number {
  let continuation = 0;
  for (const byte of bytes) {
    if ((byte & 0xc0) === 0x80) {
      continuation++;
    }
  }
  return bytes.length - continuation;
}

/** The body of a length-prefixed field (spec §3.4, §3.6): the limit is checked before the bytes. */
function lengthPrefixed(r: Reader, field: string, max: number): Uint8Array {
  const len = r.u32(field);
  if (len > max) {
    throw new DecodeError("TooLong", field, { len, max });
  }
  return r.take(len, field);
}

/** `string` with a limit in bytes (spec §3.4). */
export function str(maxBytes: number): Codec<string> {
  return {
    read(r, field) {
      const value = decodeUtf8(lengthPrefixed(r, field, maxBytes));
      if (value === null) {
        throw new DecodeError("InvalidUtf8", field);
      }
      return value;
    },
    write(w, value, field) {
      const bytes = encodeUtf8(value, field);
      if (bytes.length > maxBytes) {
        throw new EncodeError("TooLong", field, `${bytes.length} bytes, at most ${maxBytes}`);
      }
      w.u32(bytes.length, field);
      w.raw(bytes);
    },
  };
}

/** `text` with a limit in characters (spec §3.5). */
export function text(maxChars: number): Codec<string> {
  return {
    read(r, field) {
      const len = r.u32(field);
      // No character takes more than 4 bytes, so a longer body is refused before anything else.
      if (len > maxChars * 4) {
        throw new DecodeError("TooManyChars", field, { max: maxChars });
      }
      const bytes = r.take(len, field);
      const value = decodeUtf8(bytes);
      if (value === null) {
        throw new DecodeError("InvalidUtf8", field);
      }
      if (utf8Chars(bytes) > maxChars) {
        throw new DecodeError("TooManyChars", field, { max: maxChars });
      }
      return value;
    },
    write(w, value, field) {
      const bytes = encodeUtf8(value, field);
      const chars = utf8Chars(bytes);
      if (chars > maxChars) {
        throw new EncodeError("TooManyChars", field, `${chars} characters, at most ${maxChars}`);
      }
      w.u32(bytes.length, field);
      w.raw(bytes);
    },
  };
}

/** `bytes` with a limit in bytes (spec §3.6), copied out of the input. */
export function bytes(maxBytes: number): Codec<Uint8Array> {
  return {
    read: (r, field) => lengthPrefixed(r, field, maxBytes).slice(),
    write(w, value, field) {
      if (!(value instanceof Uint8Array)) {
        throw new EncodeError("WrongSize", field, "not a Uint8Array");
      }
      if (value.length > maxBytes) {
        throw new EncodeError("TooLong", field, `${value.length} bytes, at most ${maxBytes}`);
      }
      w.u32(value.length, field);
      w.raw(value);
    },
  };
}

/** `option<T>` (spec §3.7): `null` when absent. */
export function option<T>(inner: Codec<T>): Codec<T | null> {
  return {
    read(r, field) {
      const tag = r.u8(field);
      if (tag === 0) {
        return null;
      }
      if (tag !== 1) {
        throw new DecodeError("InvalidOptionTag", field, { value: tag });
      }
      return inner.read(r, field);
    },
    write(w, value, field) {
      if (value === null || value === undefined) {
        w.u8(0, field);
      } else {
        w.u8(1, field);
        inner.write(w, value, field);
      }
    },
  };
}

/**
 * `appended option<T>` (spec §3.7, §4.1): an option a revision added as the last field of a body.
 * Absent (`undefined`, so the key is left out) when the body ends where it would start, as every
 * body of an older sender does; otherwise read as {@link option}, where the tag `00` is absent too.
 * Written as nothing at all when absent, so a frame that does not use it is the older revision's.
 */
export function appendedOption<T>(inner: Codec<T>): Codec<T | undefined> {
  const tagged = option(inner);
  return {
    read(r, field) {
      if (r.remaining() === 0) {
        return undefined;
      }
      return tagged.read(r, field) ?? undefined;
    },
    write(w, value, field) {
      if (value !== null && value !== undefined) {
        tagged.write(w, value, field);
      }
    },
  };
}

/** `list<T>` with a limit in items (spec §3.8). */
export function list<T>(item: Codec<T>, maxItems: number): Codec<T[]> {
  return {
    read(r, field) {
      const count = r.u32(field);
      if (count > maxItems) {
        throw new DecodeError("TooManyItems", field, { count, max: maxItems });
      }
      // Every item takes at least one byte: a count above the bytes left cannot be satisfied, and
      // refusing it here means nothing is allocated for a hostile count.
      if (count > r.remaining()) {
        throw new DecodeError("Truncated", field);
      }
      const items: T[] = [];
      for (let i = 0; i < count; i++) {
        items.push(item.read(r, field));
      }
      return items;
    },
    write(w, value, field) {
      if (!Array.isArray(value)) {
        throw new EncodeError("TooManyItems", field, "not an array");
      }
      if (value.length > maxItems) {
        throw new EncodeError("TooManyItems", field, `${value.length} items, at most ${maxItems}`);
      }
      w.u32(value.length, field);
      for (const v of value) {
        item.write(w, v, field);
      }
    },
  };
}

/** An enum (spec §3.9): one byte per name, as `values` gives them. No enum defines 0. */
export function enumeration<N extends string>(values: Readonly<Record<N, number>>): Codec<N> {
  const names = new Map<number, N>();
  for (const [name, value] of Object.entries(values) as [N, number][]) {
    names.set(value, name);
  }
  return {
    read(r, field) {
      const value = r.u8(field);
      const name = names.get(value);
      if (name === undefined) {
        throw new DecodeError("InvalidEnum", field, { value });
      }
      return name;
    },
    write(w, value, field) {
      const byte = Object.prototype.hasOwnProperty.call(values, value) ? values[value] : undefined;
      if (byte === undefined) {
        throw new EncodeError("InvalidEnum", field, `${String(value)} is not one of ${[...names.values()].join(", ")}`);
      }
      w.u8(byte, field);
    },
  };
}

/** The spec's snake_case name of a camelCase field (`clientMsgId` is `client_msg_id`). */
export function specFieldName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** The codecs of a structure's fields, in wire order (the object's key order). */
export type Fields<T> = { readonly [K in keyof T]-?: Codec<T[K]> };

/**
 * A structure (spec §3.10): its fields in the order `fields` lists them, with no prefix. Errors name
 * each field by its spec name.
 */
export function struct<T>(fields: Fields<T>): Codec<T> {
  const entries = (Object.keys(fields) as (keyof T & string)[]).map(
    (key) => [key, specFieldName(key), fields[key]] as const,
  );
  return {
    read(r) {
      const out: Partial<T> = {};
      for (const [key, name, codec] of entries) {
        const value = codec.read(r, name);
        // An absent appended field leaves its key out.
        if (value !== undefined) {
          out[key] = value;
        }
      }
      return out as T;
    },
    write(w, value) {
      for (const [key, name, codec] of entries) {
        codec.write(w, value[key], name);
      }
    },
  };
}
