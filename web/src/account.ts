// Which server the app talks to and who is signed in on this browser. The server comes from the
// `server` query parameter, else the last one used, else the local default; the SDK keeps the
// device's token in IndexedDB, and this file keeps only a marker saying a session can be resumed.

import { IndexedDbStorage, Session } from "@tern/client";

export const DEFAULT_SERVER = "ws://127.0.0.1:7402/";
const SERVER_KEY = "tern.web.server";
const ACCOUNT_KEY = "tern.web.account";

export interface SavedAccount {
  server: string;
  username: string;
}

function safeGet(key: string): string | null {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function safeSet(key: string, value: string | null): void {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    // Private mode or storage full: the app still works for this page's life.
  }
}

/** The server to use before anyone signs in. */
export function initialServer(search: string): string {
  const fromQuery = new URLSearchParams(search).get("server");
  if (fromQuery) return fromQuery;
  return safeGet(SERVER_KEY) ?? DEFAULT_SERVER;
}

export function isServerUrl(url: string): boolean {
  try {
    const u = new URL(url);
    return u.protocol === "ws:" || u.protocol === "wss:";
  } catch {
    return false;
  }
}

export function savedAccount(search: string): SavedAccount | null {
  const raw = safeGet(ACCOUNT_KEY);
  if (!raw) return null;
  try {
    const a = JSON.parse(raw) as SavedAccount;
    if (typeof a.server !== "string" || typeof a.username !== "string") return null;
    // A different server named in the address wins: the saved session belongs to the old one.
    const fromQuery = new URLSearchParams(search).get("server");
    if (fromQuery && fromQuery !== a.server) return null;
    return a;
  } catch {
    return null;
  }
}

export function rememberAccount(a: SavedAccount | null): void {
  safeSet(ACCOUNT_KEY, a === null ? null : JSON.stringify(a));
  if (a) safeSet(SERVER_KEY, a.server);
}

/** One IndexedDB database per server, so accounts on two servers never mix. */
function storageFor(server: string): IndexedDbStorage {
  return new IndexedDbStorage(`tern:${server}`);
}

function deviceName(): string {
  const ua = typeof navigator === "undefined" ? "" : navigator.userAgent;
  const browser = /Firefox\//.test(ua)
    ? "Firefox"
    : /Edg\//.test(ua)
      ? "Edge"
      : /Chrom(e|ium)\//.test(ua)
        ? "Chrome"
        : /Safari\//.test(ua)
          ? "Safari"
          : "Browser";
  const os = /Android/.test(ua)
    ? "Android"
    : /iPhone|iPad/.test(ua)
      ? "iOS"
      : /Mac OS X/.test(ua)
        ? "macOS"
        : /Windows/.test(ua)
          ? "Windows"
          : /Linux/.test(ua)
            ? "Linux"
            : "";
  return os ? `${browser} on ${os}` : browser;
}

export type Credentials = { kind: "register" | "login"; username: string; password: string };

export async function signIn(server: string, creds: Credentials): Promise<Session> {
  const session = await Session.start({
    url: server,
    storage: storageFor(server),
    auth: creds,
    deviceName: deviceName(),
  });
  rememberAccount({ server, username: session.username });
  return session;
}

export function resume(server: string): Promise<Session> {
  return Session.start({ url: server, storage: storageFor(server), auth: { kind: "resume" } });
}

/** Error codes that mean the stored session is gone for good, so the user must sign in again. */
const SIGNED_OUT_CODES = new Set(["BAD_CREDENTIALS", "DEVICE_REVOKED", "NO_SESSION"]);

function codeOf(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : "";
}

export function isSignedOut(e: unknown): boolean {
  return SIGNED_OUT_CODES.has(codeOf(e));
}

/** A sentence for an error of the SDK (its codes are the spec's §15.1 names, or the client's own). */
export function describeError(e: unknown): string {
  switch (codeOf(e)) {
    case "BAD_CREDENTIALS":
      return "Wrong username or password.";
    case "USERNAME_TAKEN":
      return "That username is taken.";
    case "TOO_MANY_DEVICES":
      return "This account is signed in on too many devices. Sign out on one of them first.";
    case "INVALID_ARGUMENT":
      return "Usernames have 3 to 32 characters (a–z, 0–9, _ . -) and passwords at least 8.";
    case "NOT_FOUND":
      return "Not found.";
    case "FORBIDDEN":
      return "You are not allowed to do that.";
    case "GROUP_FULL":
      return "The group is full.";
    case "RATE_LIMITED":
      return "Too many attempts; wait a moment and try again.";
    case "NETWORK":
    case "DISCONNECTED":
    case "TIMEOUT":
      return "Cannot reach the server. Check the address and your connection.";
    default:
      return e instanceof Error && e.message ? e.message : "Something went wrong.";
  }
}
