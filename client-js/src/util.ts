/**
 * Small helpers shared by the session and the storages: hex, randomness, SHA-256, and a timer that
 * can be cancelled. Everything here uses only what browsers and Node.js 20 both provide.
 *
 * @module
 */

/** Lower-case hex of bytes. */
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const byte of bytes) {
    out += byte.toString(16).padStart(2, "0");
  }
  return out;
}

/** Bytes of lower-case or upper-case hex; throws on anything else. */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new Error("not hex");
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  return out;
}

/** `n` bytes from the platform's cryptographic random source. */
export function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  globalThis.crypto.getRandomValues(out);
  return out;
}

/** A uniformly random number in [0, 1), from the cryptographic source. */
export function randomFraction(): number {
  const word = new Uint32Array(1);
  globalThis.crypto.getRandomValues(word);
  return (word[0] ?? 0) / 0x1_0000_0000;
}

/** A new `client_msg_id`: the 16 bytes of a random UUIDv4 (spec §5). */
export function newClientMsgId(): Uint8Array {
  const id = randomBytes(16);
  id[6] = ((id[6] ?? 0) & 0x0f) | 0x40;
  id[8] = ((id[8] ?? 0) & 0x3f) | 0x80;
  return id;
}

/** The SHA-256 of `data` (Web Crypto, in browsers and Node.js alike). */
export async function sha256(data: Uint8Array): Promise<Uint8Array> {
  // A copy into a plain ArrayBuffer: digest does not take views of shared buffers.
  const digest = await globalThis.crypto.subtle.digest("SHA-256", data.slice());
  return new Uint8Array(digest);
}

/** Whether two byte arrays hold the same bytes. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) {
    return false;
  }
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) {
      return false;
    }
  }
  return true;
}

/** A promise with its resolve and reject functions outside it. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

/** A new {@link Deferred}. */
export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Resolves after `ms`, or at once (false) when `signal` fires first; true when the time passed. */
export function delay(ms: number, signal?: { readonly aborted: boolean; onAbort(fn: () => void): () => void }): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) {
      resolve(false);
      return;
    }
    let off = (): void => {};
    const timer = setTimeout(() => {
      off();
      resolve(true);
    }, Math.max(0, ms));
    if (signal !== undefined) {
      off = signal.onAbort(() => {
        clearTimeout(timer);
        resolve(false);
      });
    }
  });
}

/** A one-shot signal: fire it once, and every waiter wakes. */
export class Signal {
  private fired = false;
  private readonly waiters = new Set<() => void>();

  /** Whether it has fired. */
  get aborted(): boolean {
    return this.fired;
  }

  /** Fires it; later calls do nothing. */
  fire(): void {
    if (this.fired) {
      return;
    }
    this.fired = true;
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const waiter of waiters) {
      waiter();
    }
  }

  /** Calls `fn` when it fires (at once if it has); returns a function that cancels the call. */
  onAbort(fn: () => void): () => void {
    if (this.fired) {
      fn();
      return () => {};
    }
    this.waiters.add(fn);
    return () => {
      this.waiters.delete(fn);
    };
  }
}
