// Delivered and read watermarks of other members, per conversation (spec §17.6), and the tick a
// message of the user's own gets from them. Receipts come once, as updates the SDK consumes, so the
// book is kept in localStorage: after a reload, a message read yesterday still shows as read.

export type Tick = "pending" | "sent" | "delivered" | "read";

interface Marks {
  delivered: bigint;
  read: bigint;
}

/** At most this many conversations are kept; the least recently touched are dropped first. */
const RECEIPT_CONVERSATIONS_MAX = 500;

export class ReceiptBook {
  private readonly marks = new Map<bigint, Map<bigint, Marks>>();

  /** Raises a member's watermark; a receipt never lowers one, and read implies delivered. */
  apply(conversationId: bigint, userId: bigint, kind: "delivered" | "read", upToSeq: bigint): boolean {
    let conv = this.marks.get(conversationId);
    if (!conv) {
      conv = new Map();
      this.marks.set(conversationId, conv);
      this.trim();
    }
    const m = conv.get(userId) ?? { delivered: 0n, read: 0n };
    const next = { ...m };
    if (kind === "read" && upToSeq > next.read) next.read = upToSeq;
    if (upToSeq > next.delivered) next.delivered = upToSeq;
    const changed = next.read !== m.read || next.delivered !== m.delivered;
    if (changed) conv.set(userId, next);
    return changed;
  }

  /**
   * The tick of a message at `seq` sent by the user to a conversation whose other members are
   * `others`: read or delivered once every other member's watermark covers it.
   */
  tick(conversationId: bigint, seq: bigint, others: bigint[]): Tick {
    if (others.length === 0) return "sent";
    const conv = this.marks.get(conversationId);
    let read = true;
    let delivered = true;
    for (const u of others) {
      const m = conv?.get(u);
      if (!m || m.read < seq) read = false;
      if (!m || m.delivered < seq) delivered = false;
    }
    if (read) return "read";
    if (delivered) return "delivered";
    return "sent";
  }

  toJSON(): Record<string, Record<string, [string, string]>> {
    const out: Record<string, Record<string, [string, string]>> = {};
    for (const [c, users] of this.marks) {
      const row: Record<string, [string, string]> = {};
      for (const [u, m] of users) row[u.toString()] = [m.delivered.toString(), m.read.toString()];
      out[c.toString()] = row;
    }
    return out;
  }

  static fromJSON(value: unknown): ReceiptBook {
    const book = new ReceiptBook();
    if (typeof value !== "object" || value === null) return book;
    for (const [c, users] of Object.entries(value as Record<string, unknown>)) {
      if (typeof users !== "object" || users === null) continue;
      for (const [u, pair] of Object.entries(users as Record<string, unknown>)) {
        if (!Array.isArray(pair) || pair.length !== 2) continue;
        try {
          const cid = BigInt(c);
          const uid = BigInt(u);
          book.apply(cid, uid, "delivered", BigInt(String(pair[0])));
          book.apply(cid, uid, "read", BigInt(String(pair[1])));
        } catch {
          // A damaged entry is skipped: at worst a tick shows less than it could.
        }
      }
    }
    return book;
  }

  private trim(): void {
    while (this.marks.size > RECEIPT_CONVERSATIONS_MAX) {
      const oldest = this.marks.keys().next().value;
      if (oldest === undefined) return;
      this.marks.delete(oldest);
    }
  }
}
