/**
 * {@link TernError}: the one error type the session API throws, with a code an app can switch on.
 *
 * A server's refusal carries the spec's code name (`"BAD_CREDENTIALS"`, `"NOT_FOUND"`, ...; spec
 * §15.1). Failures the client itself detects have codes of their own, listed in
 * {@link ClientErrorCode}.
 *
 * @module
 */

import { DecodeError, EncodeError, type ErrorBody, type ErrorCodeName, errorCodeName } from "./codec/index.js";

/** Codes of failures detected by the client rather than answered by the server. */
export type ClientErrorCode =
  /** The server could not be reached, or no connection came within the request time-out. */
  | "NETWORK"
  /** The connection ended before the request was answered; its outcome is unknown (spec §2.4). */
  | "DISCONNECTED"
  /** No answer within the request time-out. */
  | "TIMEOUT"
  /** The session was closed (or logged out) by the app. */
  | "CLOSED"
  /** The server sent something this client cannot read, or a reply of the wrong type. */
  | "PROTOCOL"
  /** The server is older than the revision a call needs (spec §4.1), e.g. `historyAfter`. */
  | "UNSUPPORTED"
  /** `auth: { kind: "resume" }` with no session in the storage. */
  | "NO_SESSION";

/** Every code a {@link TernError} may carry. */
export type TernErrorCode = ErrorCodeName | "UNKNOWN" | ClientErrorCode;

/** A failed request or session operation. */
export class TernError extends Error {
  /** The spec's error code name (`"BAD_CREDENTIALS"`), or a {@link ClientErrorCode}. */
  readonly code: TernErrorCode;
  /** The wire code when the server answered `Error`, else null. */
  readonly wireCode: number | null;
  /** For `RATE_LIMITED`, how long the server asked to wait, in ms; 0 otherwise. */
  readonly retryAfterMs: number;

  /** An error with `code` and a human-readable `message`. */
  constructor(code: TernErrorCode, message: string, options: { wireCode?: number; retryAfterMs?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TernError";
    this.code = code;
    this.wireCode = options.wireCode ?? null;
    this.retryAfterMs = options.retryAfterMs ?? 0;
  }

  /** The error an `Error` frame from the server stands for. */
  static fromServer(error: ErrorBody): TernError {
    const name = errorCodeName(error.code);
    const text = error.message === "" ? name : `${name}: ${error.message}`;
    return new TernError(name, text, { wireCode: error.code, retryAfterMs: error.retryAfterMs });
  }

  /** An encoder's refusal as the server would answer it: a value above its limit, or not valid. */
  static fromEncode(error: EncodeError): TernError {
    const code = error.kind === "TooLong" || error.kind === "TooManyChars" || error.kind === "TooManyItems" || error.kind === "FrameTooLarge"
      ? "LIMIT_EXCEEDED"
      : "INVALID_ARGUMENT";
    return new TernError(code, error.message, { cause: error });
  }

  /** A frame from the server that does not decode. */
  static fromDecode(error: DecodeError): TernError {
    return new TernError("PROTOCOL", `the server sent a frame that does not decode: ${error.message}`, { cause: error });
  }
}
