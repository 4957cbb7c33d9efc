/**
 * A real `ternd` for the tests: started on loopback with port 0 (or a given WebSocket port, to come
 * back on the same address after a restart) in a temporary data directory, with cheap password
 * hashing, and stopped (or killed) by the test. The binary is `$TERND_BIN`, or
 * `$CARGO_TARGET_DIR/debug/ternd` (CI builds the workspace there first).
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import WebSocket from "ws";

import { type SessionEvents, type SessionOptions, type Storage, MemoryStorage, Session } from "../../src/index.js";

/** How long ternd may take to print its `listening` line, in ms. */
const START_TIMEOUT_MS = 30_000;
/** How long ternd may take to exit after a signal, in ms (its graceful shutdown is at most 10 s). */
const EXIT_TIMEOUT_MS = 20_000;
/** Lines of ternd's log kept for a failing test's report. */
const LOG_LINES_MAX = 200;

/** The ternd binary the tests run. */
export function terndBinary(): string {
  const explicit = process.env["TERND_BIN"];
  if (explicit !== undefined && explicit !== "") {
    return explicit;
  }
  const target = process.env["CARGO_TARGET_DIR"] ?? join(homedir(), ".cache", "tern", "target");
  return join(target, "debug", "ternd");
}

/** One running (or stopped) ternd with its data directory. */
export class Ternd {
  readonly dataDir: string;
  /** The WebSocket port: the same across restarts. */
  wsPort = 0;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private readonly extraArgs: string[];
  private readonly ownsDir: boolean;
  readonly log: string[] = [];

  private constructor(dataDir: string, extraArgs: string[], ownsDir: boolean) {
    this.dataDir = dataDir;
    this.extraArgs = extraArgs;
    this.ownsDir = ownsDir;
  }

  /** Starts a ternd in a new temporary data directory. */
  static async start(extraArgs: string[] = []): Promise<Ternd> {
    const dir = await mkdtemp(join(tmpdir(), "tern-js-"));
    const server = new Ternd(dir, extraArgs, true);
    await server.launch();
    return server;
  }

  /** The WebSocket address. */
  get url(): string {
    return `ws://127.0.0.1:${this.wsPort}/`;
  }

  /** Whether the process runs. */
  get running(): boolean {
    return this.child !== null;
  }

  /** Starts the process again on the same data directory and WebSocket port. */
  async restart(): Promise<void> {
    if (this.child !== null) {
      throw new Error("ternd is still running");
    }
    await this.launch();
  }

  /** Sends `signal` and waits for the process to exit. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child === null) {
      return;
    }
    child.kill(signal);
    await withTimeout(this.exited, EXIT_TIMEOUT_MS, `ternd did not exit after ${signal}`);
  }

  /** Kills the process and removes the data directory. */
  async dispose(): Promise<void> {
    await this.kill("SIGKILL");
    if (this.ownsDir) {
      await rm(this.dataDir, { recursive: true, force: true });
    }
  }

  private async launch(): Promise<void> {
    const binary = terndBinary();
    if (!existsSync(binary)) {
      throw new Error(`no ternd at ${binary}: set TERND_BIN, or build the workspace first`);
    }
    const args = [
      "--data-dir",
      this.dataDir,
      "--listen",
      "127.0.0.1:0",
      "--ws-listen",
      `127.0.0.1:${this.wsPort}`,
      "--metrics-listen",
      "127.0.0.1:0",
      "--password-iterations",
      "1000",
      ...this.extraArgs,
    ];
    const child = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
    this.child = child;
    this.exited = new Promise<void>((resolve) => {
      child.once("exit", () => {
        this.child = null;
        resolve();
      });
    });
    const keep = (line: string): void => {
      this.log.push(line);
      if (this.log.length > LOG_LINES_MAX) {
        this.log.shift();
      }
    };
    createInterface({ input: child.stderr! }).on("line", keep);
    const listening = new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on("line", (line) => {
        keep(line);
        if (line.startsWith("listening ")) {
          resolve(line);
        }
      });
      child.once("exit", (code, signal) => reject(new Error(`ternd exited (${code ?? signal}) before listening:\n${this.log.join("\n")}`)));
    });
    const line = await withTimeout(listening, START_TIMEOUT_MS, "ternd printed no listening line");
    const ws = /\bws=(\S+)/.exec(line)?.[1];
    const port = ws === undefined ? NaN : Number(ws.slice(ws.lastIndexOf(":") + 1));
    if (!Number.isInteger(port) || port <= 0) {
      throw new Error(`no WebSocket address in: ${line}`);
    }
    this.wsPort = port;
  }
}

/** Resolves with `promise`, or rejects after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

let names = 0;

/** A username no other test of this process uses. */
export function uniqueName(prefix: string): string {
  names++;
  return `${prefix}_${process.pid}_${names}`;
}

/** The options of a session against `server`, with the `ws` package and quick reconnects. */
export function sessionOptions(server: Ternd, auth: SessionOptions["auth"], storage: Storage = new MemoryStorage()): SessionOptions {
  return {
    url: server.url,
    storage,
    auth,
    WebSocket: WebSocket as unknown as SessionOptions["WebSocket"] & object,
    deviceName: "node tests",
    reconnectMinMs: 50,
    reconnectMaxMs: 500,
    requestTimeoutMs: 10_000,
  };
}

/** Sessions the tests started and have not closed: {@link closeAll} closes them. */
const started = new Set<Session>();

/** Starts a session and keeps it for {@link closeAll}. */
export async function start(options: SessionOptions): Promise<Session> {
  const session = await Session.start(options);
  started.add(session);
  return session;
}

/** Closes every session {@link start} started (run it after each test, so none outlives one). */
export async function closeAll(): Promise<void> {
  const sessions = [...started];
  started.clear();
  await Promise.all(sessions.map((s) => s.close()));
}

/** Registers a new user and returns their session, online. */
export async function register(server: Ternd, prefix: string, storage: Storage = new MemoryStorage()): Promise<Session> {
  const username = uniqueName(prefix);
  const session = await start(sessionOptions(server, { kind: "register", username, password: "correct horse battery" }, storage));
  await online(session);
  return session;
}

/** Waits until `session` is online (caught up and live). */
export async function online(session: Session, ms = 15_000): Promise<void> {
  if (session.state === "online") {
    return;
  }
  await nextEvent(session, "state", (e) => e.state === "online", ms);
}

/** The next event of `type` on `session` that `matches`, within `ms`. Subscribe before causing it. */
export function nextEvent<K extends keyof SessionEvents>(
  session: Session,
  type: K,
  matches: (e: SessionEvents[K]) => boolean = () => true,
  ms = 15_000,
): Promise<SessionEvents[K]> {
  let off = (): void => {};
  const found = new Promise<SessionEvents[K]>((resolve) => {
    off = session.on(type, (e) => {
      if (matches(e)) {
        off();
        resolve(e);
      }
    });
  });
  return withTimeout(found, ms, `a ${String(type)} event`).finally(off);
}

/** Every event of `type` on `session` from now on, in an array that fills as they come. */
export function collect<K extends keyof SessionEvents>(
  session: Session,
  type: K,
): SessionEvents[K][] {
  const seen: SessionEvents[K][] = [];
  session.on(type, (e) => seen.push(e));
  return seen;
}

/** Waits until `condition()` holds, polling, for at most `ms`. */
export async function waitUntil(condition: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  // Bounded by the deadline.
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting until ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
