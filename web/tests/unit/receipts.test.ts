// What the ticks of one's own messages show, from the watermarks receipts carry (spec §17.6), and
// that the book survives its round trip through localStorage's JSON.

import assert from "node:assert/strict";
import { test } from "node:test";
import { ReceiptBook } from "../../src/receipts.ts";

test("a message is sent, then delivered, then read as the other member's watermarks pass it", () => {
  const book = new ReceiptBook();
  assert.equal(book.tick(7n, 3n, [2n]), "sent");
  book.apply(7n, 2n, "delivered", 2n);
  assert.equal(book.tick(7n, 3n, [2n]), "sent", "a watermark below the message covers nothing");
  book.apply(7n, 2n, "delivered", 3n);
  assert.equal(book.tick(7n, 3n, [2n]), "delivered");
  book.apply(7n, 2n, "read", 5n);
  assert.equal(book.tick(7n, 3n, [2n]), "read");
  assert.equal(book.tick(7n, 6n, [2n]), "sent");
});

test("a read receipt implies delivery, and no receipt lowers a watermark", () => {
  const book = new ReceiptBook();
  assert.equal(book.apply(1n, 2n, "read", 4n), true);
  assert.equal(book.tick(1n, 4n, [2n]), "read");
  assert.equal(book.apply(1n, 2n, "delivered", 1n), false, "an older receipt changes nothing");
  assert.equal(book.apply(1n, 2n, "read", 3n), false);
  assert.equal(book.tick(1n, 4n, [2n]), "read");
});

test("in a group a message is delivered or read when every other member's watermark covers it", () => {
  const book = new ReceiptBook();
  book.apply(9n, 2n, "read", 10n);
  assert.equal(book.tick(9n, 10n, [2n, 3n]), "sent");
  book.apply(9n, 3n, "delivered", 10n);
  assert.equal(book.tick(9n, 10n, [2n, 3n]), "delivered");
  book.apply(9n, 3n, "read", 12n);
  assert.equal(book.tick(9n, 10n, [2n, 3n]), "read");
});

test("a conversation with nobody else shows sent", () => {
  assert.equal(new ReceiptBook().tick(1n, 1n, []), "sent");
});

test("the book round-trips through JSON, and damaged entries are skipped", () => {
  const book = new ReceiptBook();
  book.apply(18446744073709551615n, 2n, "delivered", 7n);
  book.apply(18446744073709551615n, 3n, "read", 9n);
  const again = ReceiptBook.fromJSON(JSON.parse(JSON.stringify(book.toJSON())));
  assert.equal(again.tick(18446744073709551615n, 7n, [2n]), "delivered");
  assert.equal(again.tick(18446744073709551615n, 9n, [3n]), "read");
  const damaged = ReceiptBook.fromJSON({ "1": { "2": ["x", "1"], "3": ["4", "4"] }, "z": 5 });
  assert.equal(damaged.tick(1n, 4n, [3n]), "read");
  assert.equal(damaged.tick(1n, 1n, [2n]), "sent");
  assert.equal(ReceiptBook.fromJSON(null).tick(1n, 1n, [2n]), "sent");
});
