/**
 * What the decoder and the encoder report, and the error codes that travel in `Error` frames
 * (spec §3.12 and §15.1).
 *
 * Every {@link DecodeError} maps to exactly one wire code, and says whether the byte stream is still
 * in step after it (a bad body inside a well-delimited frame) or not (a bad length field), in which
 * case the connection must close.
 *
 * @module
 */

/**
 * The error codes of protocol version 1 (spec §15.1), by name. `Error.code` is a plain `u16`, so a
 * newer server may send a code missing here: {@link errorCodeName} calls it `"UNKNOWN"`.
 */
export const ERROR_CODES = {
  MALFORMED: 1,
  FRAME_TOO_LARGE: 2,
  FRAME_TOO_SMALL: 3,
  UNSUPPORTED_VERSION: 4,
  HELLO_REQUIRED: 5,
  UNKNOWN_TYPE: 6,
  NOT_AUTHENTICATED: 7,
  ALREADY_AUTHENTICATED: 8,
  LIMIT_EXCEEDED: 9,
  INVALID_ARGUMENT: 10,
  USERNAME_TAKEN: 11,
  BAD_CREDENTIALS: 12,
  NOT_FOUND: 13,
  FORBIDDEN: 14,
  RATE_LIMITED: 15,
  TOO_MANY_DEVICES: 16,
  GROUP_FULL: 17,
  CONFLICT: 18,
  CHECKSUM_MISMATCH: 19,
  MEDIA_TOO_LARGE: 20,
  SLOW_CONSUMER: 21,
  HEARTBEAT_TIMEOUT: 22,
  DEVICE_REVOKED: 23,
  UNAVAILABLE: 24,
  INTERNAL: 25,
  ENCRYPTION_REQUIRED: 26,
} as const;

/** The name of a wire error code, as the spec writes it. */
export type ErrorCodeName = keyof typeof ERROR_CODES;

/** The codes after which the server closes the connection (spec §15.1). */
const CLOSING_CODES: ReadonlySet<number> = new Set([
  ERROR_CODES.FRAME_TOO_LARGE,
  ERROR_CODES.FRAME_TOO_SMALL,
  ERROR_CODES.UNSUPPORTED_VERSION,
  ERROR_CODES.HELLO_REQUIRED,
  ERROR_CODES.SLOW_CONSUMER,
  ERROR_CODES.HEARTBEAT_TIMEOUT,
  ERROR_CODES.DEVICE_REVOKED,
  ERROR_CODES.UNAVAILABLE,
]);

const NAMES_BY_CODE: ReadonlyMap<number, ErrorCodeName> = new Map(
  (Object.entries(ERROR_CODES) as [ErrorCodeName, number][]).map(([name, code]) => [code, name]),
);

/** The spec's name of a wire error code, or `"UNKNOWN"` for one this version does not define. */
export function errorCodeName(code: number): ErrorCodeName | "UNKNOWN" {
  return NAMES_BY_CODE.get(code) ?? "UNKNOWN";
}

/**
 * Whether the server closes the connection after an `Error` with this code. A code this version
 * does not define counts as closing (spec §4, rule 8).
 */
export function errorCodeCloses(code: number): boolean {
  return CLOSING_CODES.has(code) || !NAMES_BY_CODE.has(code);
}

/** The decode errors of spec §3.12. */
export type DecodeErrorKind =
  | "FrameTooSmall"
  | "FrameTooLarge"
  | "UnknownType"
  | "Truncated"
  | "InvalidUtf8"
  | "InvalidBool"
  | "InvalidOptionTag"
  | "InvalidEnum"
  | "TooLong"
  | "TooManyChars"
  | "TooManyItems";

/** The wire code each decode error maps to (spec §3.12). */
const DECODE_ERROR_CODES: Readonly<Record<DecodeErrorKind, ErrorCodeName>> = {
  FrameTooSmall: "FRAME_TOO_SMALL",
  FrameTooLarge: "FRAME_TOO_LARGE",
  UnknownType: "UNKNOWN_TYPE",
  Truncated: "MALFORMED",
  InvalidUtf8: "MALFORMED",
  InvalidBool: "MALFORMED",
  InvalidOptionTag: "MALFORMED",
  InvalidEnum: "MALFORMED",
  TooLong: "LIMIT_EXCEEDED",
  TooManyChars: "LIMIT_EXCEEDED",
  TooManyItems: "LIMIT_EXCEEDED",
};

/** The values a decode error carries besides its kind, named as in the golden vectors' manifest. */
export interface DecodeErrorDetail {
  /** FrameTooLarge: the frame's size, length field included. */
  frame_bytes?: number;
  /** FrameTooLarge, TooLong, TooManyChars, TooManyItems: the limit. */
  max?: number;
  /** FrameTooSmall: the length field. */
  length?: number;
  /** UnknownType: the frame type. */
  frame_type?: number;
  /** InvalidBool, InvalidOptionTag, InvalidEnum: the bad byte. */
  value?: number;
  /** TooLong: the declared length. */
  len?: number;
  /** TooManyItems: the declared count. */
  count?: number;
}

/**
 * Bytes that are not a valid frame: the first check of spec §2.2 and §3 that failed.
 *
 * `closesConnection` says whether the byte stream is out of step (a bad length field): then nothing
 * was consumed and the connection must close. Otherwise the whole frame was consumed and the next
 * one can be read.
 */
export class DecodeError extends Error {
  /** Which check failed. */
  readonly kind: DecodeErrorKind;
  /** The spec's name of the field being read (`"client_name"`), or null for the frame as a whole. */
  readonly field: string | null;
  /** The frame's request id when the header was read and the stream is in step, else null. */
  readonly requestId: number | null;
  /** The frame's type when the header was read, else null. */
  readonly frameType: number | null;
  /** The error's values (limits, lengths, bad bytes). */
  readonly detail: DecodeErrorDetail;

  /** @internal */
  constructor(
    kind: DecodeErrorKind,
    field: string | null,
    detail: DecodeErrorDetail = {},
    requestId: number | null = null,
    frameType: number | null = null,
  ) {
    const where = field === null ? "" : ` in field ${field}`;
    super(`${kind}${where}${describeDetail(detail)}`);
    this.name = "DecodeError";
    this.kind = kind;
    this.field = field;
    this.detail = detail;
    this.requestId = requestId;
    this.frameType = frameType;
  }

  /** The wire code a server answers this error with. */
  get code(): number {
    return ERROR_CODES[this.codeName];
  }

  /** The name of {@link DecodeError.code}. */
  get codeName(): ErrorCodeName {
    return DECODE_ERROR_CODES[this.kind];
  }

  /** Whether the stream is out of step, so that the connection must close. */
  get closesConnection(): boolean {
    return this.kind === "FrameTooSmall" || this.kind === "FrameTooLarge";
  }

  /** The same error, now known to belong to the frame with this header. */
  withHeader(requestId: number, frameType: number): DecodeError {
    return new DecodeError(this.kind, this.field, this.detail, requestId, frameType);
  }
}

function describeDetail(detail: DecodeErrorDetail): string {
  const parts = Object.entries(detail).map(([key, value]) => `${key}=${String(value)}`);
  return parts.length === 0 ? "" : ` (${parts.join(", ")})`;
}

/** Why a value cannot be encoded. */
export type EncodeErrorKind =
  /** A `string` or `bytes` value above its limit in bytes. */
  | "TooLong"
  /** A `text` value above its limit in characters. */
  | "TooManyChars"
  /** A list above its limit in items. */
  | "TooManyItems"
  /** The frame would be larger than the peer accepts. */
  | "FrameTooLarge"
  /** A number outside its type's range, or not an integer. */
  | "OutOfRange"
  /** A fixed-size byte array of the wrong size. */
  | "WrongSize"
  /** A string holding an unpaired UTF-16 surrogate, which UTF-8 cannot carry. */
  | "InvalidString"
  /** A value that is not one of an enum's names. */
  | "InvalidEnum";

/**
 * A value the encoder refuses to write (spec §3.11): it never truncates or repairs a value, and never
 * writes a frame above the peer's maximum.
 */
export class EncodeError extends Error {
  /** Which check failed. */
  readonly kind: EncodeErrorKind;
  /** The spec's name of the field being written, or null for the frame as a whole. */
  readonly field: string | null;

  /** @internal */
  constructor(kind: EncodeErrorKind, field: string | null, message: string) {
    super(field === null ? `${kind}: ${message}` : `${kind} in field ${field}: ${message}`);
    this.name = "EncodeError";
    this.kind = kind;
    this.field = field;
  }
}
