// How times, sizes and names are written; the clock is an argument, so these run at any hour.

import assert from "node:assert/strict";
import { test } from "node:test";
import { bytes, fileNameFor, initials, isImage, lastSeen, listTime, nameList } from "../../src/format.ts";

test("sizes are written in the unit that fits", () => {
  assert.equal(bytes(0), "0 B");
  assert.equal(bytes(1023), "1023 B");
  assert.equal(bytes(1536), "1.5 KB");
  assert.equal(bytes(200 * 1024), "200 KB");
  assert.equal(bytes(5 * 1024 * 1024 + 1), "5.0 MB");
});

test("last seen is relative while recent", () => {
  const now = new Date(2026, 0, 10, 15, 0, 0).getTime();
  assert.equal(lastSeen(now - 10_000, now), "last seen just now");
  assert.equal(lastSeen(now - 5 * 60_000, now), "last seen 5 min ago");
  assert.match(lastSeen(new Date(2026, 0, 10, 9, 5).getTime(), now), /^last seen today at /);
  assert.match(lastSeen(new Date(2026, 0, 9, 9, 5).getTime(), now), /^last seen yesterday at /);
  assert.match(lastSeen(new Date(2025, 11, 1).getTime(), now), /^last seen /);
});

test("the list shows a time today and Yesterday for yesterday", () => {
  const now = new Date(2026, 0, 10, 15, 0, 0).getTime();
  assert.equal(listTime(new Date(2026, 0, 9, 23, 0).getTime(), now), "Yesterday");
  assert.notEqual(listTime(new Date(2026, 0, 10, 1, 0).getTime(), now), "Yesterday");
});

test("initials and name lists", () => {
  assert.equal(initials("alice"), "A");
  assert.equal(initials("bob_smith"), "BS");
  assert.equal(initials(""), "?");
  assert.equal(nameList(["ann"]), "ann");
  assert.equal(nameList(["ann", "bo"]), "ann and bo");
  assert.equal(nameList(["ann", "bo", "cy"]), "ann, bo and cy");
  assert.equal(nameList(["ann", "bo", "cy", "di", "ed"]), "ann, bo and 3 others");
});

test("a download is named by the message text when that is a file name, else by its type", () => {
  assert.equal(fileNameFor("report.pdf", "application/pdf", 0), "report.pdf");
  assert.equal(fileNameFor("look at this", "image/png", 0), "attachment-1.png");
  assert.equal(fileNameFor("../etc/passwd.txt", "text/plain", 1), "attachment-2.txt");
  assert.equal(fileNameFor("", "application/x-unknown", 0), "attachment-1.bin");
  assert.equal(isImage("image/png"), true);
  assert.equal(isImage("image/svg+xml"), false, "SVG is not shown inline: it can carry script");
});
