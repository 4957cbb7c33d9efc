// The web app in a real browser against a real ternd: alice (a desktop window) and bob (a phone)
// register, chat, see each other's ticks, typing and presence, send files and images, make a group,
// scroll back through history, and alice's session and unsent message survive a reload while the
// server is down. Screenshots of each screen at phone and desktop widths go to test-output/.
//
// Needs: `npm run build` (dist/), Chromium at /usr/bin/chromium (or CHROMIUM_BIN) and a ternd
// binary (TERND_BIN, or the cargo target directory's debug build).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { deflateSync } from "node:zlib";
import type { Browser, BrowserContext, Locator, Page } from "playwright-core";
import {
  launchChromium,
  outputPath,
  removeDir,
  serveDist,
  startTernd,
  type StaticServer,
  type Ternd,
  tempDir,
  waitUntil,
} from "./harness.ts";

const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };
/** Reconnecting after the server comes back may wait out the SDK's back-off. */
const RECONNECT_MS_MAX = 60_000;

let ternd: Ternd;
let web: StaticServer;
let browser: Browser;
let dataDir: string;
let aliceCtx: BrowserContext;
let bobCtx: BrowserContext;
let alice: Page;
let bob: Page;
const pageErrors: string[] = [];

function appUrl(): string {
  return `${web.origin}/?server=${encodeURIComponent(ternd.wsUrl)}`;
}

async function newPage(ctx: BrowserContext, who: string): Promise<Page> {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${who}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") console.log(`[${who} ${m.type()}] ${m.text()}`);
  });
  return page;
}

async function register(page: Page, username: string): Promise<void> {
  await page.goto(appUrl());
  await page.getByTestId("auth-mode-register").click();
  await page.getByTestId("auth-username").fill(username);
  await page.getByTestId("auth-password").fill(`${username} has a long password`);
  await page.getByTestId("auth-submit").click();
  await page.getByTestId("me").filter({ hasText: username }).waitFor();
}

function messages(page: Page, text: string): Locator {
  return page.getByTestId("message").filter({ hasText: text });
}

/** The message whose whole text is `text`. */
function messageExactly(page: Page, text: string): Locator {
  const exact = new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
  return page.getByTestId("message").filter({ has: page.getByTestId("message-text").filter({ hasText: exact }) });
}

function conversation(page: Page, title: string): Locator {
  return page.locator(`[data-testid="conversation"][data-title="${title}"]`);
}

/** Opens a conversation from the list, going back to the list first on a phone. */
async function openConversation(page: Page, title: string): Promise<void> {
  const header = page.getByTestId("conversation-title");
  // After a reload the app may reopen the last conversation, which hides the list on a phone:
  // wait until it shows either, rather than look once while it is still drawing.
  await waitUntil(
    "the conversation list or an open conversation",
    async () => (await conversation(page, title).isVisible()) || (await header.isVisible()),
  );
  if ((await header.count()) > 0 && (await header.textContent()) === title) return;
  const back = page.getByTestId("back");
  if ((await back.count()) > 0 && (await back.isVisible())) await back.click();
  await conversation(page, title).click();
  await header.filter({ hasText: title }).waitFor();
}

async function send(page: Page, text: string): Promise<void> {
  const input = page.getByTestId("composer-input");
  await input.fill(text);
  await input.press("Enter");
}

async function tickOf(m: Locator): Promise<string | null> {
  return m.getByTestId("tick").getAttribute("data-tick");
}

/**
 * Records every value a progress bar with this test id shows from now on, however briefly: a
 * local transfer can finish between two polls, but not between two DOM mutations.
 */
async function recordProgress(page: Page, testid: string): Promise<() => Promise<number[]>> {
  // A string, not a function: the TypeScript loader would wrap named functions in a helper that
  // does not exist in the page.
  const key = JSON.stringify(`progress:${testid}`);
  const selector = JSON.stringify(`[data-testid="${testid}"]`);
  await page.evaluate(`(() => {
    const seen = [];
    window[${key}] = seen;
    new MutationObserver(() => {
      for (const el of document.querySelectorAll(${selector})) seen.push(Number(el.getAttribute("aria-valuenow")));
    }).observe(document.body, { subtree: true, childList: true, attributes: true });
  })()`);
  return () => page.evaluate(`window[${key}]`) as Promise<number[]>;
}

/** Saves a screenshot at the phone and the desktop size, putting the page back as it was. */
async function shoot(page: Page, name: string): Promise<void> {
  const was = page.viewportSize() ?? DESKTOP;
  for (const [label, size] of [
    ["phone", PHONE],
    ["desktop", DESKTOP],
  ] as const) {
    await page.setViewportSize(size);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.screenshot({ path: outputPath(`${name}-${label}.png`) });
  }
  await page.setViewportSize(was);
}

/** A small PNG (a colour gradient), made here so the test ships no binary file. */
function png(width: number, height: number): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf: Buffer) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const o = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      rows[o + 1 + x * 3] = Math.round((255 * x) / width);
      rows[o + 2 + x * 3] = Math.round((255 * y) / height);
      rows[o + 3 + x * 3] = 160;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

describe("the web app in Chromium against ternd", () => {
  before(async () => {
    dataDir = tempDir("tern-web-test-");
    ternd = await startTernd(dataDir);
    web = await serveDist();
    browser = await launchChromium();
    aliceCtx = await browser.newContext({ viewport: DESKTOP });
    bobCtx = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
    alice = await newPage(aliceCtx, "alice");
    bob = await newPage(bobCtx, "bob");
  });

  after(async () => {
    await browser?.close();
    await web?.close();
    await ternd?.stop();
    if (dataDir) removeDir(dataDir);
  });

  test("the sign-in screen, then alice and bob register", async () => {
    await alice.goto(appUrl());
    await alice.getByTestId("auth-form").waitFor();
    await shoot(alice, "01-sign-in");
    await register(alice, "alice");
    await register(bob, "bob");
  });

  test("a message appears on the other side, and its tick goes delivered, then read when bob opens it", async () => {
    await alice.getByTestId("new-chat").click();
    await alice.getByTestId("new-chat-username").fill("bob");
    await alice.getByTestId("new-chat-submit").click();
    await alice.getByTestId("conversation-title").filter({ hasText: "bob" }).waitFor();
    await send(alice, "Hi Bob! Lunch at noon?");
    const mine = messages(alice, "Hi Bob! Lunch at noon?");
    await mine.waitFor();
    assert.equal(await mine.count(), 1);

    // Bob has not opened it: it is in his list, unread, with its text; on alice's side, delivered.
    const row = conversation(bob, "alice");
    await row.waitFor();
    await waitUntil("bob's unread count of 1", async () => (await row.getAttribute("data-unread")) === "1");
    assert.match((await row.textContent()) ?? "", /Lunch at noon/);
    await waitUntil("alice's tick to show delivered", async () => (await tickOf(mine)) === "delivered");
    await shoot(bob, "02-list-unread");

    await row.click();
    await messages(bob, "Hi Bob! Lunch at noon?").waitFor();
    await waitUntil("alice's tick to show read", async () => (await tickOf(mine)) === "read");
    await waitUntil("bob's unread count to clear", async () => (await row.getAttribute("data-unread")) === "0");
    // People are shown by name: bob's header names alice, and alice sees bob online.
    await bob.getByTestId("conversation-title").filter({ hasText: "alice" }).waitFor();
    await alice.getByTestId("presence").filter({ hasText: "online" }).waitFor();
    await send(bob, "Sure, see you there 👋");
    await messages(alice, "see you there").waitFor();
    await shoot(alice, "03-conversation");
    await shoot(bob, "04-conversation-bob");
  });

  test("typing shows on the other side and goes away when it stops", async () => {
    const input = bob.getByTestId("composer-input");
    await input.fill("");
    await input.pressSequentially("I'm on my w", { delay: 20 });
    await alice.getByTestId("typing-indicator").waitFor();
    assert.match((await alice.getByTestId("typing-indicator").textContent()) ?? "", /typing/);
    await conversation(alice, "bob").getByTestId("conversation-typing").waitFor();
    await shoot(alice, "05-typing");
    await input.fill("");
    await input.press("Backspace");
    await alice.getByTestId("typing-indicator").waitFor({ state: "detached" });
  });

  test("a file uploads with a progress bar and downloads byte for byte; an image shows inline", async () => {
    const data = randomBytes(900 * 1024);
    const uploadProgress = await recordProgress(alice, "upload-progress");
    const downloadProgress = await recordProgress(bob, "download-progress");
    await alice.getByTestId("file-input").setInputFiles({ name: "notes.bin", mimeType: "application/octet-stream", buffer: data });
    await alice.getByTestId("staged-item").waitFor();
    await waitUntil("the upload to finish", async () => /ready/.test((await alice.getByTestId("staged-item").textContent()) ?? ""));
    const uploaded = await uploadProgress();
    assert.ok(uploaded.some((v) => v > 0 && v < 100), `the upload's progress bar moved: ${uploaded.join(",")}`);
    await alice.getByTestId("send").click();
    const card = bob.getByTestId("attachment").filter({ hasText: "notes.bin" });
    await card.waitFor();
    const downloading = bob.waitForEvent("download");
    await card.getByTestId("attachment-download").click();
    const download = await downloading;
    assert.equal(download.suggestedFilename(), "notes.bin");
    const path = await download.path();
    const got = await readFile(path);
    assert.equal(got.length, data.length);
    assert.ok(got.equals(data), "the downloaded bytes are the uploaded ones");
    const downloaded = await downloadProgress();
    assert.ok(downloaded.some((v) => v > 0 && v < 100), `the download's progress bar moved: ${downloaded.join(",")}`);

    const picture = png(320, 200);
    await alice.getByTestId("composer-input").fill("The view from here");
    await alice.getByTestId("file-input").setInputFiles({ name: "view.png", mimeType: "image/png", buffer: picture });
    await alice.getByTestId("send").click();
    const img = messages(bob, "The view from here").getByTestId("attachment-image");
    await img.waitFor();
    await waitUntil("the image to decode", () => img.evaluate((el) => (el as HTMLImageElement).naturalWidth === 320));
    await messages(alice, "The view from here").getByTestId("attachment-image").waitFor();
    await shoot(bob, "06-attachments");
    await shoot(alice, "07-attachments-alice");
  });

  test("a group: created by alice, seen by bob with its members by name", async () => {
    await alice.getByTestId("new-group").click();
    await alice.getByTestId("group-name").fill("Weekend trip");
    await alice.getByTestId("people-input").fill("bob");
    await alice.getByTestId("people-add").click();
    await alice.getByTestId("picked-person").filter({ hasText: "bob" }).waitFor();
    await shoot(alice, "08-new-group");
    await alice.getByTestId("group-create").click();
    await alice.getByTestId("conversation-title").filter({ hasText: "Weekend trip" }).waitFor();
    await send(alice, "Who brings the tent?");

    await bob.getByTestId("back").click();
    await conversation(bob, "Weekend trip").waitFor();
    await openConversation(bob, "Weekend trip");
    await messages(bob, "Who brings the tent?").waitFor();
    await bob.getByTestId("group-info-toggle").click();
    const members = bob.getByTestId("member");
    await waitUntil("two members listed by name", async () => {
      const names = await members.evaluateAll((els) => els.map((e) => e.getAttribute("data-name")));
      return names.length === 2 && names.includes("alice") && names.includes("bob");
    });
    await shoot(bob, "09-group-info");
    await bob.getByTestId("group-info-toggle").click();
  });

  test("history scrolls back: older messages load when bob scrolls up", async () => {
    const total = 70;
    const input = alice.getByTestId("composer-input");
    for (let i = 1; i <= total; i++) {
      await input.fill(`Packing list item ${i}`);
      await input.press("Enter");
    }
    await messageExactly(alice, `Packing list item ${total}`).waitFor();
    await waitUntil("alice's messages to be confirmed", async () => (await alice.locator('[data-pending="true"]').count()) === 0);

    // A fresh page for bob, so the group's history comes from the server a page at a time.
    await bob.reload();
    await bob.getByTestId("me").waitFor({ state: "attached" });
    await openConversation(bob, "Weekend trip");
    await messageExactly(bob, `Packing list item ${total}`).waitFor();
    const first = messageExactly(bob, "Packing list item 1");
    assert.equal(await bob.getByTestId("message").filter({ hasText: "Who brings the tent?" }).count(), 0, "the first page does not reach the oldest");
    await waitUntil(
      "the oldest message after scrolling up",
      async () => {
        await bob.getByTestId("messages").evaluate((el) => el.scrollTo(0, 0));
        return (await bob.getByTestId("message").filter({ hasText: "Who brings the tent?" }).count()) === 1;
      },
      30_000,
    );
    assert.equal(await first.count(), 1);
    await bob.getByTestId("history-start").waitFor();
    const seqs = await bob
      .getByTestId("message")
      .evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-seq"))));
    assert.deepEqual(
      seqs,
      seqs.slice().sort((a, b) => a - b),
      "messages are in order",
    );
    assert.equal(new Set(seqs).size, seqs.length, "no message twice");
    assert.equal(seqs.length, total + 1);
    await shoot(bob, "10-history");
    // Scrolled up, a button leads back to the newest message.
    await bob.getByTestId("to-newest").click();
    await bob.getByTestId("to-newest").waitFor({ state: "detached" });
    await waitUntil("the newest message in view", async () => {
      const box = await messageExactly(bob, `Packing list item ${total}`).boundingBox();
      return box !== null && box.y + box.height <= PHONE.height;
    });
  });

  test("the group changes: carol is added and sees it, it is renamed for everyone, carol is removed", async (t) => {
    const ctx = await browser.newContext({ viewport: DESKTOP });
    t.after(() => ctx.close());
    const carol = await newPage(ctx, "carol");
    await register(carol, "carol");

    await openConversation(alice, "Weekend trip");
    await alice.getByTestId("group-info-toggle").click();
    await alice.getByTestId("people-input").fill("carol");
    await alice.getByTestId("people-add").click();
    await alice.getByTestId("members-add").click();
    await alice.locator('[data-testid="member"][data-name="carol"]').waitFor();
    await conversation(carol, "Weekend trip").waitFor();

    await alice.getByTestId("group-rename-input").fill("Camping weekend");
    await alice.getByTestId("group-rename").click();
    await conversation(bob, "Camping weekend").waitFor({ state: "attached" });
    await conversation(carol, "Camping weekend").waitFor();
    await alice.getByTestId("conversation-title").filter({ hasText: "Camping weekend" }).waitFor();
    await shoot(alice, "11-group-changed");

    await alice.locator('[data-testid="member"][data-name="carol"]').getByTestId("member-remove").click();
    await alice.locator('[data-testid="member"][data-name="carol"]').waitFor({ state: "detached" });
    await conversation(carol, "Camping weekend").waitFor({ state: "detached" });
    await alice.getByTestId("group-info-toggle").click();
    await ctx.close();
  });

  test("a reload keeps the session, and a message sent while the server is down is delivered once", async () => {
    await openConversation(alice, "bob");
    await openConversation(bob, "alice");
    const port = ternd.wsPort;
    await ternd.stop();
    await alice.getByTestId("connection").waitFor();

    const text = "Sent while the server was down";
    await send(alice, text);
    const echo = messages(alice, text);
    await echo.waitFor();
    assert.equal(await echo.getAttribute("data-pending"), "true");
    await waitUntil(
      "the SDK to hold the message in its outbox",
      async () => (await alice.getByTestId("connection").getAttribute("data-outbox")) === "1",
    );
    await shoot(alice, "12-offline");

    await alice.reload();
    // Still signed in after the reload, with the message still waiting.
    await waitUntil(
      "the app to come back signed in",
      async () => (await alice.getByTestId("resuming").count()) > 0 || (await alice.getByTestId("me").count()) > 0,
    );
    assert.equal(await alice.getByTestId("auth-form").count(), 0, "no sign-in form after a reload");

    ternd = await startTernd(dataDir, port);
    await alice.getByTestId("me").filter({ hasText: "alice" }).waitFor({ timeout: RECONNECT_MS_MAX });
    // Receipts came before the reload, once: the app kept them, so the group's last message still
    // shows read by bob.
    await waitUntil(
      "the group's last message to show read after the reload",
      async () => (await tickOf(conversation(alice, "Camping weekend"))) === "read",
      RECONNECT_MS_MAX,
    );
    await messages(bob, text).waitFor({ timeout: RECONNECT_MS_MAX });
    await waitUntil(
      "alice's copy to be confirmed",
      async () => (await messages(alice, text).count()) === 1 && (await messages(alice, text).getAttribute("data-pending")) === "false",
      RECONNECT_MS_MAX,
    );
    // Exactly once, as the server stores it: bob's history after a reload has one copy.
    await bob.reload();
    await bob.getByTestId("me").waitFor({ state: "attached", timeout: RECONNECT_MS_MAX });
    await openConversation(bob, "alice");
    await messages(bob, text).waitFor({ timeout: RECONNECT_MS_MAX });
    assert.equal(await messages(bob, text).count(), 1);
    await waitUntil("alice's tick to show read", async () => (await tickOf(messages(alice, text))) === "read", RECONNECT_MS_MAX);
    await shoot(alice, "13-after-reload");
  });

  test("bob signs in on a second device: a wrong password is refused, the right one shows his chats", async (t) => {
    const ctx = await browser.newContext({ viewport: DESKTOP });
    t.after(() => ctx.close());
    const page = await newPage(ctx, "bob2");
    await page.goto(appUrl());
    await page.getByTestId("auth-username").fill("bob");
    await page.getByTestId("auth-password").fill("not the password");
    await page.getByTestId("auth-submit").click();
    await page.getByTestId("auth-error").filter({ hasText: "Wrong username or password" }).waitFor();
    await page.getByTestId("auth-password").fill("bob has a long password");
    await page.getByTestId("auth-submit").click();
    await page.getByTestId("me").filter({ hasText: "bob" }).waitFor();
    await conversation(page, "alice").waitFor();
    await conversation(page, "Camping weekend").waitFor();
    await openConversation(page, "alice");
    await messages(page, "Sent while the server was down").waitFor();

    // Signing out forgets the device: a reload shows the sign-in form.
    await page.getByTestId("logout").click();
    await page.getByTestId("auth-form").waitFor();
    await page.reload();
    await page.getByTestId("auth-form").waitFor();
    await ctx.close();
  });

  test("when bob leaves, alice sees when he was last seen", async () => {
    await bobCtx.close();
    await alice.getByTestId("presence").filter({ hasText: /last seen/ }).waitFor({ timeout: RECONNECT_MS_MAX });
    assert.equal(await conversation(alice, "bob").getByTestId("online-dot").count(), 0);
    await shoot(alice, "14-last-seen");
  });

  test("no page threw an uncaught error", () => {
    assert.deepEqual(pageErrors, []);
  });
});
