/**
 * {@link Connection}: one WebSocket connection to a Tern server (spec §2.11), as the session uses it.
 *
 * `open` connects with the subprotocol `tern.v1`, sets `binaryType = "arraybuffer"`, and makes the
 * `Hello`/`Welcome` handshake (spec §2.6) before it returns. After that, {@link Connection.request}
 * sends a request under a fresh request id and resolves with its reply (an `Error` reply rejects
 * with a {@link TernError}), {@link Connection.notify} sends a notification (`Ack`, `Typing`), and
 * everything the server sends on its own (events, and errors that answer no waiting request) goes
 * to `onEvent`. Each binary message carries exactly one frame; the connection pings at the
 * server's heartbeat interval when it has sent nothing else (spec §2.7), and closes itself when a
 * `Ping` gets no `Pong` within the server's idle time-out.
 *
 * @module
 */

import {
  type Body,
  DecodeError,
  EncodeError,
  FRAME_BYTES_MAX,
  type Frame,
  PROTOCOL_VERSION,
  REQUESTS_IN_FLIGHT_MAX,
  type Welcome,
  decodeFrame,
  encodeFrame,
  errorCodeCloses,
  frameType,
  isEventType,
  isReplyType,
} from "./codec/index.js";
import { TernError } from "./errors.js";
import { type Deferred, deferred } from "./util.js";

/** The WebSocket subprotocol of Tern (spec §2.11.1). */
export const SUBPROTOCOL = "tern.v1";

/**
 * A WebSocket constructor: the browser's `WebSocket`, or in Node.js the `WebSocket` of the `ws`
 * package (Node.js 20 has no global one). Anything that behaves like the browser's works.
 */
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => object;

/** The part of the WebSocket API the connection uses, common to browsers and `ws`. */
interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly protocol: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** `WebSocket.OPEN`. */
const OPEN = 1;

/** How a connection reports what the server says on its own, and its end. */
export interface ConnectionHandlers {
  /** An event, or an `Error` that answers no waiting request. */
  onEvent(body: Body): void;
  /** The connection ended (called once); `reason` says why. */
  onClose(reason: TernError): void;
}

/** Settings of one connection. */
export interface ConnectionOptions {
  /** `ws://host:port/` or `wss://host:port/`. */
  url: string;
  /** The WebSocket constructor to use. */
  WebSocket: WebSocketCtor;
  /** The client's software name and version, for the server's logs (at most 64 bytes). */
  clientName: string;
  /** How long the WebSocket upgrade and the `Hello` handshake may take, in ms. */
  connectTimeoutMs: number;
  /** How long a request waits for its reply, in ms. */
  requestTimeoutMs: number;
}

interface Pending {
  deferred: Deferred<Body>;
  timer: ReturnType<typeof setTimeout>;
}

/** One open, handshaken WebSocket connection. */
export class Connection {
  /** The server's `Welcome`: its version, clock and limits. */
  readonly welcome: Welcome;
  private readonly ws: WebSocketLike;
  private readonly options: ConnectionOptions;
  private handlers: ConnectionHandlers;
  private readonly pending = new Map<number, Pending>();
  /** Requests waiting for one of the 256 slots (spec §2.8). */
  private readonly slotWaiters: (() => void)[] = [];
  private nextRequestId = 1;
  private nonce = 0n;
  private heartbeat: ReturnType<typeof setTimeout> | undefined;
  private ended: TernError | null = null;

  private constructor(ws: WebSocketLike, welcome: Welcome, options: ConnectionOptions, handlers: ConnectionHandlers) {
    this.ws = ws;
    this.welcome = welcome;
    this.options = options;
    this.handlers = handlers;
  }

  /**
   * Connects, offers `tern.v1`, sends `Hello` for version 1 and waits for `Welcome`. Rejects with a
   * {@link TernError}: `NETWORK` when the server cannot be reached, `TIMEOUT`, or the server's code.
   */
  static open(options: ConnectionOptions, handlers: ConnectionHandlers): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new options.WebSocket(options.url, SUBPROTOCOL) as WebSocketLike;
      } catch (error) {
        reject(new TernError("NETWORK", `cannot open a WebSocket to ${options.url}: ${String(error)}`, { cause: error }));
        return;
      }
      ws.binaryType = "arraybuffer";
      let settled = false;
      const fail = (error: TernError): void => {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        ws.onopen = ws.onmessage = ws.onerror = null;
        ws.onclose = null;
        try {
          ws.close();
        } catch {
          // Closing a socket that never opened may throw; it is gone either way.
        }
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new TernError("TIMEOUT", `no Welcome from ${options.url} within ${options.connectTimeoutMs} ms`)),
        options.connectTimeoutMs,
      );
      const helloId = 1;
      ws.onerror = () => fail(new TernError("NETWORK", `the WebSocket to ${options.url} failed`));
      ws.onclose = (event) =>
        fail(new TernError("NETWORK", `the WebSocket to ${options.url} closed (${event.code} ${event.reason})`));
      ws.onopen = () => {
        if (ws.protocol !== SUBPROTOCOL) {
          fail(new TernError("PROTOCOL", `the server did not accept the subprotocol ${SUBPROTOCOL}`));
          return;
        }
        const hello = encodeFrame({
          requestId: helloId,
          body: { type: "Hello", minVersion: PROTOCOL_VERSION, maxVersion: PROTOCOL_VERSION, clientName: options.clientName },
        });
        ws.send(hello);
      };
      ws.onmessage = (event) => {
        let frame: Frame;
        try {
          frame = decodeMessage(event.data);
        } catch (error) {
          fail(error instanceof TernError ? error : new TernError("PROTOCOL", String(error)));
          return;
        }
        const body = frame.body;
        if (body.type === "Error" && (frame.requestId === helloId || frame.requestId === 0)) {
          fail(TernError.fromServer(body));
          return;
        }
        if (frame.requestId !== helloId || body.type !== "Welcome") {
          // Nothing but the answer to Hello may come first; anything else is ignored until then.
          return;
        }
        if (body.version !== PROTOCOL_VERSION) {
          fail(new TernError("PROTOCOL", `the server chose version ${body.version}; this client speaks ${PROTOCOL_VERSION}`));
          return;
        }
        settled = true;
        clearTimeout(timer);
        const connection = new Connection(ws, body, options, handlers);
        connection.nextRequestId = helloId + 1;
        connection.attach();
        resolve(connection);
      };
    });
  }

  /** Whether the connection has ended. */
  get closed(): boolean {
    return this.ended !== null;
  }

  /** The largest frame the server accepts, from its `Welcome` (at most 1 MiB). */
  get frameBytesMax(): number {
    const announced = this.welcome.limits.frameBytesMax;
    return announced > 0 ? Math.min(announced, FRAME_BYTES_MAX) : FRAME_BYTES_MAX;
  }

  /**
   * Sends a request and resolves with its reply. Rejects with a {@link TernError}: the server's
   * code for an `Error` reply, `TIMEOUT` after `timeoutMs`, `DISCONNECTED` when the connection ends
   * first, or `LIMIT_EXCEEDED`/`INVALID_ARGUMENT` when a field cannot be encoded.
   */
  async request(body: Body, timeoutMs: number = this.options.requestTimeoutMs): Promise<Body> {
    await this.slot();
    if (this.ended !== null) {
      throw this.disconnected();
    }
    const requestId = this.allocateId();
    let bytes: Uint8Array;
    try {
      bytes = encodeFrame({ requestId, body }, this.frameBytesMax);
    } catch (error) {
      this.releaseSlot();
      throw error instanceof EncodeError ? TernError.fromEncode(error) : error;
    }
    const pending: Pending = {
      deferred: deferred<Body>(),
      timer: setTimeout(() => {
        if (this.pending.get(requestId) === pending) {
          this.pending.delete(requestId);
          this.releaseSlot();
          pending.deferred.reject(new TernError("TIMEOUT", `no answer to ${body.type} within ${timeoutMs} ms`));
        }
      }, timeoutMs),
    };
    this.pending.set(requestId, pending);
    this.write(bytes);
    return pending.deferred.promise;
  }

  /** Sends a notification (`Ack`, `Typing`): no reply unless it fails, which arrives as an event. */
  notify(body: Body): void {
    if (this.ended !== null) {
      throw this.disconnected();
    }
    let bytes: Uint8Array;
    try {
      bytes = encodeFrame({ requestId: this.allocateId(), body }, this.frameBytesMax);
    } catch (error) {
      throw error instanceof EncodeError ? TernError.fromEncode(error) : error;
    }
    this.write(bytes);
  }

  /** Closes the connection (WebSocket code 1000); requests still waiting fail with `reason`. */
  close(reason: TernError = new TernError("CLOSED", "the connection was closed")): void {
    this.end(reason);
  }

  private attach(): void {
    this.ws.onmessage = (event) => this.receive(event.data);
    this.ws.onclose = (event) =>
      this.end(new TernError("DISCONNECTED", `the connection closed (${event.code}${event.reason === "" ? "" : ` ${event.reason}`})`));
    this.ws.onerror = () => this.end(new TernError("DISCONNECTED", "the WebSocket failed"));
    this.armHeartbeat();
  }

  private receive(data: unknown): void {
    let frame: Frame;
    try {
      frame = decodeMessage(data);
    } catch (error) {
      this.undecodable(error);
      return;
    }
    const { requestId, body } = frame;
    if (requestId !== 0) {
      const pending = this.pending.get(requestId);
      if (pending !== undefined && isReplyType(frameTypeOf(body))) {
        this.settle(requestId, pending);
        if (body.type === "Error") {
          pending.deferred.reject(TernError.fromServer(body));
        } else {
          pending.deferred.resolve(body);
        }
        return;
      }
      // A reply to nothing waiting (a request that timed out): only a failure is worth telling.
      if (body.type === "Error") {
        this.handlers.onEvent(body);
      }
      return;
    }
    if (body.type === "Error") {
      this.handlers.onEvent(body);
      if (errorCodeCloses(body.code)) {
        // The server closes after it; a code this client does not know counts as closing too
        // (spec §4, rule 8), so do not wait for the server to do it.
        this.end(TernError.fromServer(body));
      }
      return;
    }
    if (isEventType(frameTypeOf(body))) {
      this.handlers.onEvent(body);
    }
  }

  /** A frame that does not decode: fail its request if one waits; close if the stream is lost. */
  private undecodable(error: unknown): void {
    if (!(error instanceof DecodeError)) {
      this.end(error instanceof TernError ? error : new TernError("PROTOCOL", String(error)));
      return;
    }
    const pending = error.requestId === null ? undefined : this.pending.get(error.requestId);
    if (pending !== undefined && error.requestId !== null) {
      this.settle(error.requestId, pending);
      pending.deferred.reject(TernError.fromDecode(error));
    }
    // A message that is not exactly one frame, or a bad length field, breaks the framing: the
    // connection cannot be trusted any more. An unknown type or a bad body inside a whole frame
    // does not (spec §3.12): the client ignores it and goes on.
    const framing = error.closesConnection || error.field === "frame" || error.field === "trailing";
    if (framing) {
      this.end(TernError.fromDecode(error));
    }
  }

  private settle(requestId: number, pending: Pending): void {
    clearTimeout(pending.timer);
    this.pending.delete(requestId);
    this.releaseSlot();
  }

  private write(bytes: Uint8Array): void {
    if (this.ws.readyState !== OPEN) {
      this.end(new TernError("DISCONNECTED", "the WebSocket is not open"));
      return;
    }
    this.ws.send(bytes);
    this.armHeartbeat();
  }

  /** Pings when nothing was sent for the heartbeat interval; a missing Pong ends the connection. */
  private armHeartbeat(): void {
    if (this.ended !== null) {
      return;
    }
    clearTimeout(this.heartbeat);
    const interval = Math.max(100, this.welcome.limits.heartbeatIntervalMs);
    this.heartbeat = setTimeout(() => {
      this.nonce += 1n;
      const idle = Math.max(interval * 2, this.welcome.limits.idleTimeoutMs);
      this.request({ type: "Ping", nonce: this.nonce }, idle).catch((error: unknown) => {
        if (error instanceof TernError && error.code === "TIMEOUT") {
          this.end(new TernError("DISCONNECTED", `no Pong within ${idle} ms: the connection is dead`));
        }
      });
    }, interval);
  }

  private allocateId(): number {
    // A counter from 1 that wraps to 1 (spec §2.4), skipping ids still waiting for a reply.
    for (let tries = 0; tries <= REQUESTS_IN_FLIGHT_MAX; tries++) {
      const id = this.nextRequestId;
      this.nextRequestId = id >= 0xffff_ffff ? 1 : id + 1;
      if (!this.pending.has(id)) {
        return id;
      }
    }
    throw new TernError("PROTOCOL", "no free request id");
  }

  private async slot(): Promise<void> {
    // Bounded: each turn waits for a reply, a time-out or the end of the connection to free a slot.
    while (this.ended === null && this.pending.size >= REQUESTS_IN_FLIGHT_MAX) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
  }

  private releaseSlot(): void {
    this.slotWaiters.shift()?.();
  }

  private disconnected(): TernError {
    return this.ended ?? new TernError("DISCONNECTED", "the connection closed");
  }

  private end(reason: TernError): void {
    if (this.ended !== null) {
      return;
    }
    this.ended = reason;
    clearTimeout(this.heartbeat);
    this.ws.onmessage = null;
    this.ws.onclose = null;
    this.ws.onerror = null;
    try {
      this.ws.close(1000);
    } catch {
      // Already closing.
    }
    const outcome =
      reason.code === "CLOSED" || reason.code === "DISCONNECTED"
        ? reason
        : new TernError("DISCONNECTED", `the connection closed: ${reason.message}`, { cause: reason });
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.deferred.reject(outcome);
    }
    this.pending.clear();
    for (const waiter of this.slotWaiters.splice(0)) {
      waiter();
    }
    this.handlers.onClose(reason);
  }
}

/** The one frame a WebSocket message carries (spec §2.11.2). */
function decodeMessage(data: unknown): Frame {
  if (!(data instanceof ArrayBuffer)) {
    // The server sends binary messages only; a text message (or a Blob, if binaryType was
    // changed) breaks the protocol.
    throw new TernError("PROTOCOL", "the server sent a message that is not binary");
  }
  return decodeFrame(new Uint8Array(data));
}

/** The type number of a body. */
function frameTypeOf(body: Body): number {
  return frameType(body.type);
}
