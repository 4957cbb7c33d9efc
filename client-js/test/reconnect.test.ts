/**
 * Reconnecting against a real ternd: a session that comes back catches up from its stored cursor
 * (exactly what it missed, nothing twice), a live session whose server dies reconnects by itself,
 * a SIGTERM's GoAway is honoured, and pings keep an idle connection open.
 */

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { MemoryStorage } from "../src/index.js";
import { Ternd, closeAll, collect, nextEvent, online, register, sessionOptions, start, waitUntil } from "./support/ternd.js";

describe("reconnecting", () => {
  const servers: Ternd[] = [];
  afterEach(async () => {
    await closeAll();
    for (const server of servers.splice(0)) {
      await server.dispose();
    }
  });

  async function server(args: string[] = []): Promise<Ternd> {
    const s = await Ternd.start(args);
    servers.push(s);
    return s;
  }

  // Proves catch-up from the stored cursor: what bob missed while away arrives, in order, and what
  // he had already seen does not come again.
  test("catch-up from the stored cursor", async () => {
    const s = await server();
    const alice = await register(s, "alice");
    const bobStorage = new MemoryStorage();
    const bob = await register(s, "bob", bobStorage);
    const direct = await alice.openDirect(bob.userId);
    const seen = nextEvent(bob, "message", (m) => m.text === "one");
    await alice.send(direct.conversationId, "one");
    await seen;
    await bob.close();
    const cursor = (await bobStorage.load()).cursor;
    assert.ok(cursor > 0n, "the cursor was stored");

    await alice.send(direct.conversationId, "two");
    await alice.send(direct.conversationId, "three");
    const back = await start(sessionOptions(s, { kind: "resume" }, bobStorage));
    const messages = collect(back, "message");
    await online(back);
    await waitUntil(() => messages.length >= 2, "bob caught up");
    assert.deepEqual(messages.map((m) => m.text), ["two", "three"]);
    assert.deepEqual(messages.map((m) => m.seq), [2n, 3n]);
    await waitUntil(() => back.storedSyncCursor > cursor, "the new cursor is stored");
  });

  // Proves a live session whose server dies goes offline, reconnects when it is back, resumes the
  // same device, and receives what was sent meanwhile.
  test("a live session reconnects after the server restarts", async () => {
    const s = await server();
    const alice = await register(s, "alice");
    const bob = await register(s, "bob");
    const direct = await alice.openDirect(bob.userId);
    const states = collect(bob, "state");
    const bobOffline = nextEvent(bob, "state", (e) => e.state === "offline");
    await s.kill("SIGKILL");
    await bobOffline;
    await s.restart();
    await online(alice);
    const arrives = nextEvent(bob, "message", (m) => m.text === "after the restart");
    await alice.send(direct.conversationId, "after the restart");
    assert.equal((await arrives).sender, alice.userId);
    await online(bob);
    const order = states.map((e) => e.state);
    assert.equal(order[0], "offline");
    assert.ok(order.includes("connecting"));
    assert.equal(order.at(-1), "online");
    assert.ok(states[0]?.error !== undefined, "going offline says why");
  });

  // Proves GoAway is honoured: on SIGTERM the server announces it, the session reconnects to the
  // restarted server and goes on working.
  test("GoAway on SIGTERM, then a reconnect to the restarted server", async () => {
    const s = await server();
    const alice = await register(s, "alice");
    const bob = await register(s, "bob");
    const direct = await alice.openDirect(bob.userId);
    const goAway = nextEvent(alice, "goAway");
    await s.kill("SIGTERM");
    const announced = await goAway;
    assert.ok(announced.reconnectAfterMs >= 0);
    await s.restart();
    await online(alice, 30_000);
    await online(bob, 30_000);
    const arrives = nextEvent(bob, "message", (m) => m.text === "back again");
    await alice.send(direct.conversationId, "back again");
    await arrives;
  });

  // Proves the session pings at the server's heartbeat interval: with a short idle time-out, an
  // idle session stays connected for many time-outs.
  test("pings keep an idle connection open", async () => {
    const s = await server(["--heartbeat-interval-ms", "200", "--idle-timeout-ms", "600"]);
    const alice = await register(s, "alice");
    assert.equal(alice.limits?.heartbeatIntervalMs, 200);
    const states = collect(alice, "state");
    const quiet = Date.now() + 3_000;
    await waitUntil(() => Date.now() > quiet, "five idle time-outs passed", 5_000);
    assert.deepEqual(states, []);
    assert.equal(alice.state, "online");
  });
});
