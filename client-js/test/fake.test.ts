/**
 * The session against a scripted server (the `ws` package's server speaking frames from the codec):
 * the cases a real ternd does not produce on demand. A gap in live updates is filled by another
 * `Sync`, an update of an unknown kind still moves the cursor, a `Skipped` update moves it and shows
 * nothing, frames of unknown types are ignored, and the cursor is acknowledged.
 */

import assert from "node:assert/strict";
import { type AddressInfo } from "node:net";
import { after, afterEach, before, describe, test } from "node:test";

import WebSocket, { WebSocketServer } from "ws";

import { type Frame, type Update, decodeFrame, encodeFrame } from "../src/codec/index.js";
import { MemoryStorage, type Session, type SessionOptions } from "../src/index.js";
import { closeAll, collect, online, start, waitUntil } from "./support/ternd.js";

const LIMITS = {
  frameBytesMax: 1_048_576,
  bodyCharsMax: 100_000,
  groupMembersMax: 100,
  devicesPerUserMax: 10,
  syncPageUpdatesMax: 1000,
  historyPageMessagesMax: 200,
  mediaChunkBytesMax: 262_144,
  mediaBytesMax: 104_857_600n,
  heartbeatIntervalMs: 60_000,
  idleTimeoutMs: 120_000,
};

function message(userSeq: bigint, seq: bigint, text: string): Update {
  return {
    userSeq,
    kind: { type: "Message", conversationId: 7n, seq, messageId: 1000n + seq, sender: 2n, senderDevice: 1, ts: 1_767_225_600_000n, clientMsgId: new Uint8Array(16), body: text, attachments: [] },
  };
}

/** A server that answers the handshake and Resume, and hands every later frame to `onFrame`. */
class ScriptedServer {
  readonly received: Frame[] = [];
  onFrame: (frame: Frame, reply: (frame: Frame) => void) => void = () => {};
  private socket: WebSocket | null = null;
  private readonly wss: WebSocketServer;

  constructor() {
    this.wss = new WebSocketServer({
      host: "127.0.0.1",
      port: 0,
      handleProtocols: (protocols) => (protocols.has("tern.v1") ? "tern.v1" : false),
    });
    this.wss.on("connection", (socket) => {
      this.socket = socket;
      socket.on("message", (data: Buffer) => {
        const frame = decodeFrame(new Uint8Array(data));
        this.received.push(frame);
        const reply = (f: Frame): void => socket.send(encodeFrame(f));
        if (frame.body.type === "Hello") {
          reply({ requestId: frame.requestId, body: { type: "Welcome", version: 1, serverName: "scripted/0", serverTimeMs: 0n, limits: LIMITS } });
        } else if (frame.body.type === "Resume") {
          reply({ requestId: frame.requestId, body: { type: "Authenticated", userId: 1n, deviceId: 1, username: "alice", token: null } });
        } else {
          this.onFrame(frame, reply);
        }
      });
    });
  }

  /** Resolves once the server listens. */
  listening(): Promise<void> {
    return this.wss.address() === null ? new Promise((resolve) => this.wss.once("listening", () => resolve())) : Promise.resolve();
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/`;
  }

  /** Sends raw bytes (or text) to the connected client. */
  push(data: Uint8Array | string): void {
    this.socket?.send(data);
  }

  close(): Promise<void> {
    for (const client of this.wss.clients) {
      client.terminate();
    }
    return new Promise((resolve) => this.wss.close(() => resolve()));
  }
}

describe("against a scripted server", () => {
  let server: ScriptedServer;
  before(async () => {
    server = new ScriptedServer();
    await server.listening();
  });
  afterEach(closeAll);
  after(async () => {
    await server.close();
  });

  // Proves the cursor logic of spec §17.4: a page with an unknown kind moves the cursor past it; a
  // live update past the cursor + 1 triggers a Sync from the cursor, and what that fills in is
  // handed out once, in order; the cursor is acknowledged.
  test("a gap in live updates is filled by a sync", async () => {
    const syncs: bigint[] = [];
    server.onFrame = (frame, reply) => {
      if (frame.body.type !== "Sync") {
        return;
      }
      syncs.push(frame.body.since);
      if (frame.body.since === 0n) {
        const unknown: Update = { userSeq: 2n, kind: { type: "Unknown", kind: 99, body: Uint8Array.of(1, 2, 3) } };
        reply({ requestId: frame.requestId, body: { type: "SyncPage", updates: [message(1n, 1n, "one"), unknown], hasMore: false, head: 2n } });
        // Update 3 is lost on the way; 4 arrives live, and a frame of a type no version defines.
        server.push(encodeFrame({ requestId: 0, body: { type: "UpdateEvent", update: message(4n, 3n, "three") } }));
        const unknownType = encodeFrame({ requestId: 0, body: { type: "Ping", nonce: 1n } });
        unknownType.set([0x7f, 0xff], 4);
        server.push(unknownType);
      } else {
        reply({ requestId: frame.requestId, body: { type: "SyncPage", updates: [message(3n, 2n, "two"), message(4n, 3n, "three")], hasMore: false, head: 4n } });
      }
    };
    const storage = new MemoryStorage({ session: { userId: 1n, deviceId: 1, username: "alice", token: new Uint8Array(32) }, cursor: 0n, outbox: [] });
    const options: SessionOptions = { url: server.url, storage, auth: { kind: "resume" }, WebSocket: WebSocket as unknown as SessionOptions["WebSocket"] & object };
    const session: Session = await start(options);
    const texts = collect(session, "message");
    await online(session);
    await waitUntil(() => texts.length >= 3, "three messages");
    assert.deepEqual(texts.map((m) => m.text), ["one", "two", "three"]);
    assert.deepEqual(syncs, [0n, 2n]);
    await waitUntil(() => server.received.some((f) => f.body.type === "Ack" && f.body.upTo === 4n), "an Ack up to 4");
    assert.equal((await storage.load()).cursor, 4n);
    assert.equal(session.state, "online");
  });

  // Proves a Skipped update (spec §10.9.9) emits nothing, whether in a page between messages or the
  // last one and live, and the cursor is stored and acknowledged past it.
  test("a Skipped update moves the cursor and shows nothing", async () => {
    const skipped = (userSeq: bigint): Update => ({ userSeq, kind: { type: "Skipped" } });
    server.onFrame = (frame, reply) => {
      if (frame.body.type === "Sync") {
        reply({ requestId: frame.requestId, body: { type: "SyncPage", updates: [message(1n, 1n, "one"), skipped(2n), message(3n, 2n, "two")], hasMore: false, head: 3n } });
        server.push(encodeFrame({ requestId: 0, body: { type: "UpdateEvent", update: skipped(4n) } }));
      }
    };
    const storage = new MemoryStorage({ session: { userId: 1n, deviceId: 1, username: "alice", token: new Uint8Array(32) }, cursor: 0n, outbox: [] });
    const options: SessionOptions = { url: server.url, storage, auth: { kind: "resume" }, WebSocket: WebSocket as unknown as SessionOptions["WebSocket"] & object };
    const session = await start(options);
    const texts = collect(session, "message");
    const conversations = collect(session, "conversation");
    const receipts = collect(session, "receipt");
    const deviceLists = collect(session, "deviceListChanged");
    await online(session);
    await waitUntil(() => server.received.some((f) => f.body.type === "Ack" && f.body.upTo === 4n), "an Ack up to 4");
    assert.equal((await storage.load()).cursor, 4n);
    assert.deepEqual(texts.map((m) => m.text), ["one", "two"]);
    assert.deepEqual(conversations.map((c) => c.change), ["discovered"]);
    assert.deepEqual([receipts.length, deviceLists.length], [0, 0]);
  });

  // Proves a message that is not exactly one binary frame (a text message, several frames joined)
  // ends the connection, and the session comes back on a new one and resumes.
  test("a broken message ends the connection and the session comes back", async () => {
    server.onFrame = (frame, reply) => {
      if (frame.body.type === "Sync") {
        reply({ requestId: frame.requestId, body: { type: "SyncPage", updates: [], hasMore: false, head: 4n } });
      }
    };
    const storage = new MemoryStorage({ session: { userId: 1n, deviceId: 1, username: "alice", token: new Uint8Array(32) }, cursor: 4n, outbox: [] });
    const options: SessionOptions = {
      url: server.url,
      storage,
      auth: { kind: "resume" },
      WebSocket: WebSocket as unknown as SessionOptions["WebSocket"] & object,
      reconnectMinMs: 10,
      reconnectMaxMs: 50,
    };
    const session = await start(options);
    await online(session);
    const resumes = (): number => server.received.filter((f) => f.body.type === "Resume").length;
    const before = resumes();
    const states = collect(session, "state");
    server.push("not a frame");
    await waitUntil(() => resumes() === before + 1 && session.state === "online", "a second connection");
    const goAway = encodeFrame({ requestId: 0, body: { type: "GoAway", reconnectAfterMs: 0, message: "" } });
    const joined = new Uint8Array(goAway.length * 2);
    joined.set(goAway);
    joined.set(goAway, goAway.length);
    server.push(joined);
    await waitUntil(() => resumes() === before + 2 && session.state === "online", "a third connection");
    assert.deepEqual(
      states.map((e) => e.state),
      ["offline", "connecting", "online", "offline", "connecting", "online"],
    );
    assert.equal(states[0]?.error?.code, "PROTOCOL");
  });
});
