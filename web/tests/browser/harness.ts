// What the browser tests run against: a real `ternd` in a temporary data directory, a static server
// for the built app (dist/), and Debian's Chromium driven by playwright-core. Every wait here is a
// poll with a deadline.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { homedir, tmpdir } from "node:os";
import { extname, join, normalize, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { type Browser, chromium } from "playwright-core";

export const WEB_DIR = resolve(fileURLToPath(new URL("../..", import.meta.url)));
export const OUTPUT_DIR = join(WEB_DIR, "test-output");

/** How long `ternd` may take to print its `listening` line. */
const TERND_START_MS_MAX = 30_000;
/** How long `ternd` may take to exit after SIGTERM before it is killed. */
const TERND_STOP_MS_MAX = 15_000;

export function terndBinary(): string {
  if (process.env.TERND_BIN) return process.env.TERND_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache", "tern", "target");
  return join(target, "debug", "ternd");
}

export function chromiumBinary(): string {
  return process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
}

export interface Ternd {
  /** The WebSocket URL the app connects to. */
  wsUrl: string;
  wsPort: number;
  dataDir: string;
  stop(): Promise<void>;
}

/**
 * Starts `ternd` on loopback with every port chosen by the system, or with the given WebSocket port
 * (to restart on the address a client already knows), and waits for its `listening` line.
 */
export async function startTernd(dataDir: string, wsPort = 0): Promise<Ternd> {
  const bin = terndBinary();
  if (!existsSync(bin)) throw new Error(`no ternd at ${bin}: build it, or set TERND_BIN`);
  const args = [
    "--data-dir",
    dataDir,
    "--listen",
    "127.0.0.1:0",
    "--ws-listen",
    `127.0.0.1:${wsPort}`,
    "--metrics-listen",
    "127.0.0.1:0",
    "--password-iterations",
    "1000",
  ];
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  const stderr: string[] = [];
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    stderr.push(chunk);
    if (stderr.length > 200) stderr.shift();
  });
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  const lines = createInterface({ input: child.stdout! });
  const listening = new Promise<string>((done, fail) => {
    lines.on("line", (line) => {
      if (line.startsWith("listening ")) done(line);
    });
    void exited.then((code) => fail(new Error(`ternd exited (${code}) before listening:\n${stderr.join("")}`)));
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`ternd did not listen within ${TERND_START_MS_MAX} ms`)), TERND_START_MS_MAX);
  });
  let line: string;
  try {
    line = await Promise.race([listening, deadline]);
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  } finally {
    clearTimeout(timer);
  }
  const ws = /\bws=(\S+)/.exec(line);
  if (!ws) {
    child.kill("SIGKILL");
    throw new Error(`no ws= in ternd's listening line: ${line}`);
  }
  const port = Number(ws[1].slice(ws[1].lastIndexOf(":") + 1));
  return {
    wsUrl: `ws://127.0.0.1:${port}/`,
    wsPort: port,
    dataDir,
    stop: () => stopChild(child, exited),
  };
}

async function stopChild(child: ChildProcess, exited: Promise<number | null>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((done) => {
    timer = setTimeout(() => done("late"), TERND_STOP_MS_MAX);
  });
  const how = await Promise.race([exited, late]);
  clearTimeout(timer);
  if (how === "late") {
    child.kill("SIGKILL");
    await exited;
  }
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".map": "application/json",
  ".png": "image/png",
  ".ico": "image/x-icon",
};

export interface StaticServer {
  origin: string;
  close(): Promise<void>;
}

/** Serves the built app on 127.0.0.1 (an Origin ternd's default allow-list accepts). */
export async function serveDist(): Promise<StaticServer> {
  const root = join(WEB_DIR, "dist");
  if (!existsSync(join(root, "index.html"))) throw new Error(`no build in ${root}: run npm run build first`);
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    let file = normalize(join(root, path));
    if (!file.startsWith(root) || !existsSync(file) || statSync(file).isDirectory()) file = join(root, "index.html");
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(readFileSync(file));
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const port = (server.address() as AddressInfo).port;
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((done) => {
        server.closeAllConnections();
        server.close(() => done());
      }),
  };
}

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: chromiumBinary(), headless: true, args: CHROMIUM_ARGS });
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export function outputPath(name: string): string {
  mkdirSync(OUTPUT_DIR, { recursive: true });
  return join(OUTPUT_DIR, name);
}

/** Polls `check` until it returns true, failing with `what` after `timeoutMs`. */
export async function waitUntil(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      if (await check()) return;
      last = null;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
