/**
 * Accounts against a real ternd: register, log in, resume from the storage, and the errors an app
 * meets (a wrong password, a taken name, nothing stored, a device logged out).
 */

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { MemoryStorage, TernError } from "../src/index.js";
import { Ternd, closeAll, online, register, sessionOptions, start, uniqueName } from "./support/ternd.js";

describe("accounts", () => {
  let server: Ternd;
  before(async () => {
    server = await Ternd.start();
  });
  afterEach(closeAll);
  after(async () => {
    await server.dispose();
  });

  // Proves register creates a user and a device, stores the token, and login adds a second device.
  test("register, then log in as a second device", async () => {
    const username = uniqueName("alice");
    const storage = new MemoryStorage();
    const first = await start(sessionOptions(server, { kind: "register", username, password: "password one" }, storage));
    assert.equal(first.username, username);
    assert.ok(first.userId > 0n);
    assert.equal(first.deviceId, 1);
    await online(first);
    const stored = await storage.load();
    assert.equal(stored.session?.userId, first.userId);
    assert.equal(stored.session?.token.length, 32);
    const second = await start(sessionOptions(server, { kind: "login", username, password: "password one" }));
    assert.equal(second.userId, first.userId);
    assert.equal(second.deviceId, 2);
    await Promise.all([first.close(), second.close()]);
  });

  // Proves a wrong password fails with BAD_CREDENTIALS and a taken name with USERNAME_TAKEN.
  test("a wrong password and a taken username are typed errors", async () => {
    const alice = await register(server, "carol");
    const wrong = start(sessionOptions(server, { kind: "login", username: alice.username, password: "not the password" }));
    await assert.rejects(wrong, (e: unknown) => e instanceof TernError && e.code === "BAD_CREDENTIALS" && e.wireCode === 12);
    const taken = start(sessionOptions(server, { kind: "register", username: alice.username, password: "another one" }));
    await assert.rejects(taken, (e: unknown) => e instanceof TernError && e.code === "USERNAME_TAKEN");
    const nobody = start(sessionOptions(server, { kind: "login", username: uniqueName("nobody"), password: "whatever123" }));
    await assert.rejects(nobody, (e: unknown) => e instanceof TernError && e.code === "BAD_CREDENTIALS");
    await alice.close();
  });

  // Proves a stored session resumes as the same device, and that resume without one is refused.
  test("resume the stored device", async () => {
    const storage = new MemoryStorage();
    const alice = await register(server, "dave", storage);
    await alice.close();
    const again = await start(sessionOptions(server, { kind: "resume" }, storage));
    assert.equal(again.userId, alice.userId);
    assert.equal(again.deviceId, alice.deviceId);
    assert.equal(again.username, alice.username);
    await online(again);
    await again.close();
    const empty = start(sessionOptions(server, { kind: "resume" }, new MemoryStorage()));
    await assert.rejects(empty, (e: unknown) => e instanceof TernError && e.code === "NO_SESSION");
  });

  // Proves logout revokes the token and clears the storage: the device cannot resume again.
  test("logout revokes the device", async () => {
    const storage = new MemoryStorage();
    const alice = await register(server, "erin", storage);
    const token = (await storage.load()).session?.token;
    assert.ok(token !== undefined);
    await alice.logout();
    assert.equal(alice.state, "offline");
    assert.equal((await storage.load()).session, null);
    await assert.rejects(alice.lookupUser(alice.username), (e: unknown) => e instanceof TernError && e.code === "CLOSED");
    const revoked = new MemoryStorage({ session: { userId: alice.userId, deviceId: alice.deviceId, username: alice.username, token }, cursor: 0n, outbox: [] });
    const resumed = start(sessionOptions(server, { kind: "resume" }, revoked));
    await assert.rejects(resumed, (e: unknown) => e instanceof TernError && e.code === "BAD_CREDENTIALS");
    assert.equal((await revoked.load()).session, null);
  });
});
