/**
 * {@link Pacer}: how many sends the session may have in flight, so that the server's send rate
 * limit slows the outbox down without reordering it (the same design as `tern-client`'s pacer).
 *
 * The server stores two sends of one connection in the order it receives them, so a pipelined
 * outbox stays in order, except when the server refuses one (`RATE_LIMITED`) and accepts a later
 * one that arrives after its bucket refilled: the later message would be stored first. The pacer
 * prevents that by pipelining only while it believes the server's bucket has room:
 *
 * - It keeps its own estimate of the server's per-connection bucket (`ternd`'s defaults unless told
 *   otherwise), taking a token for every send it starts. While the estimate holds more than a small
 *   margin, sends are pipelined up to the window; below that the outbox goes stop-and-wait: one
 *   send in flight, the next only after its answer, which keeps the order whatever the server does.
 * - After a refusal it holds every send for the `retry_after_ms` the server named, then stays
 *   stop-and-wait for {@link CAREFUL_AFTER_REFUSAL_MS}, since its estimate was evidently wrong.
 *
 * It never delays a send when nothing is in flight. Sans-IO: time is an argument, in ms.
 *
 * @module
 */

/** How long the outbox stays stop-and-wait after the server refused a send, in ms. */
export const CAREFUL_AFTER_REFUSAL_MS = 10_000;

/** Tokens the estimate keeps in reserve before pipelining another send. */
const MARGIN_TOKENS = 2;

/** The wait after a refusal that named none (`retry_after_ms` 0), in ms. */
const RETRY_WITHOUT_ESTIMATE_MS = 50;

interface Bucket {
  burst: number;
  perSecond: number;
  level: number;
  lastMs: number;
}

/** The send window of one connection: see the module's docs. */
export class Pacer {
  private readonly window: number;
  private readonly bucket: Bucket | null;
  private holdUntilMs: number | null = null;
  private carefulUntilMs: number | null = null;

  /**
   * A pacer for a new connection: a full bucket of `burst` sends refilling at `perSecond`
   * (0: the server has no limit), at most `window` in flight.
   */
  constructor(window: number, burst: number, perSecond: number, nowMs: number) {
    this.window = Math.max(1, window);
    this.bucket = perSecond > 0 ? { burst: Math.max(1, burst), perSecond, level: Math.max(1, burst), lastMs: nowMs } : null;
  }

  /** Whether another send may start now, with `inFlight` sends awaiting their answer. */
  maySend(nowMs: number, inFlight: number): boolean {
    if (this.holdUntilMs !== null && nowMs < this.holdUntilMs) {
      return false;
    }
    if (inFlight === 0) {
      return true;
    }
    if (inFlight >= this.window || (this.carefulUntilMs !== null && nowMs < this.carefulUntilMs)) {
      return false;
    }
    if (this.bucket === null) {
      return true;
    }
    this.refill(nowMs);
    return this.bucket.level >= MARGIN_TOKENS + 1;
  }

  /** A send started: it takes a token from the estimate. */
  started(nowMs: number): void {
    if (this.bucket !== null) {
      this.refill(nowMs);
      this.bucket.level = Math.max(0, this.bucket.level - 1);
    }
  }

  /** The server refused a send and asked to wait `retryAfterMs` (0: no estimate). */
  refused(nowMs: number, retryAfterMs: number): void {
    const until = nowMs + (retryAfterMs > 0 ? retryAfterMs : RETRY_WITHOUT_ESTIMATE_MS);
    this.holdUntilMs = this.holdUntilMs === null ? until : Math.max(this.holdUntilMs, until);
    this.carefulUntilMs = until + CAREFUL_AFTER_REFUSAL_MS;
    if (this.bucket !== null) {
      this.bucket.level = 0;
      this.bucket.lastMs = nowMs;
    }
  }

  /** When a held outbox may go on, if it is held at `nowMs`; else null. */
  heldUntil(nowMs: number): number | null {
    return this.holdUntilMs !== null && nowMs < this.holdUntilMs ? this.holdUntilMs : null;
  }

  private refill(nowMs: number): void {
    const bucket = this.bucket;
    if (bucket === null) {
      return;
    }
    const elapsed = Math.max(0, nowMs - bucket.lastMs);
    const gained = (elapsed * bucket.perSecond) / 1000;
    if (gained > 0) {
      bucket.level = Math.min(bucket.burst, bucket.level + gained);
      bucket.lastMs = nowMs;
    }
  }
}
