/**
 * End-to-end encryption's server side over a real ternd (spec §19): the key directory (publish,
 * list, claim), to-device messages, the key backup, and encrypted conversations that refuse
 * plaintext. The keys are made and signed with Node's own Ed25519 and X25519, only so that the
 * server, which checks every signature, accepts them: the SDK itself does no cryptography.
 */

import assert from "node:assert/strict";
import { type KeyObject, createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import { after, afterEach, before, describe, test } from "node:test";

import {
  type DeviceKeys,
  type Session,
  type SignedKey,
  TernError,
  identitySignedBytes,
  keySignedBytes,
} from "../src/index.js";
import { Ternd, closeAll, nextEvent, register } from "./support/ternd.js";

/** The raw 32 bytes of an Ed25519 or X25519 public key. */
function rawPublicKey(key: KeyObject): Uint8Array {
  const x = key.export({ format: "jwk" }).x;
  assert.ok(typeof x === "string");
  return new Uint8Array(Buffer.from(x, "base64url"));
}

/** Whether `signature` is a valid Ed25519 signature of `message` by the raw public key `ed25519`. */
function verifies(ed25519: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(ed25519).toString("base64url") }, format: "jwk" });
  return verify(null, message, key, signature);
}

/** A device's keys as a client makes them: an Ed25519 signing key and Curve25519 keys it signs. */
class DeviceKeyring {
  private readonly signing = generateKeyPairSync("ed25519");
  readonly identity: DeviceKeys;

  constructor(
    readonly userId: bigint,
    readonly deviceId: number,
  ) {
    const unsigned = { deviceId, curve25519: rawPublicKey(generateKeyPairSync("x25519").publicKey), ed25519: rawPublicKey(this.signing.publicKey) };
    this.identity = { ...unsigned, signature: this.sign(identitySignedBytes(userId, unsigned)) };
  }

  static of(session: Session): DeviceKeyring {
    return new DeviceKeyring(session.userId, session.deviceId);
  }

  /** A fresh Curve25519 key with id `keyId`, signed. */
  key(keyId: bigint): SignedKey {
    const unsigned = { keyId, key: rawPublicKey(generateKeyPairSync("x25519").publicKey) };
    return { ...unsigned, signature: this.sign(keySignedBytes(this.userId, this.deviceId, unsigned)) };
  }

  private sign(message: Uint8Array): Uint8Array {
    return new Uint8Array(sign(null, message, this.signing.privateKey));
  }
}

function assertRefused(code: string): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof TernError, String(error));
    assert.equal(error.code, code, error.message);
    return true;
  };
}

describe("end-to-end encryption", () => {
  let server: Ternd;
  before(async () => {
    server = await Ternd.start();
  });
  afterEach(closeAll);
  after(async () => {
    await server.dispose();
  });

  // Proves the key directory round trip: bob publishes identity, one-time and fallback keys (and
  // those who share a conversation with him hear his device list changed), alice lists them
  // unchanged and correctly signed, claims one-time keys (bob's count goes down, and bob is told)
  // down to the fallback key, and a to-device message from alice reaches bob's live connection.
  test("publish, list and claim keys, then a to-device message", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    await alice.openDirect(bob.userId);
    const keys = DeviceKeyring.of(bob);
    const oneTimeKeys = [keys.key(1n), keys.key(2n), keys.key(3n)];
    const fallbackKey = keys.key(100n);

    const aliceHears = nextEvent(alice, "deviceListChanged", (e) => e.userId === bob.userId);
    const bobHears = nextEvent(bob, "deviceListChanged", (e) => e.userId === bob.userId);
    const published = await bob.publishKeys({ identity: keys.identity, oneTimeKeys, fallbackKey });
    assert.deepEqual(published, { oneTimeKeysLeft: 3, fallbackKeyUsed: false });
    await aliceHears;
    await bobHears;

    const listed = await alice.getDeviceKeys([bob.userId, 999_999n]);
    assert.equal(listed.length, 1, "a user who does not exist is left out");
    assert.equal(listed[0]?.userId, bob.userId);
    assert.deepEqual(listed[0]?.devices, [keys.identity]);
    const device = listed[0]?.devices[0];
    assert.ok(device !== undefined);
    assert.ok(verifies(device.ed25519, identitySignedBytes(bob.userId, device), device.signature));

    const bobToldCount = nextEvent(bob, "keyCount", (e) => e.oneTimeKeysLeft === 2);
    const address = { userId: bob.userId, deviceId: bob.deviceId };
    const [claimed] = await alice.claimKeys([address, address]);
    assert.ok(claimed !== undefined);
    assert.equal(claimed.fallback, false);
    assert.equal(claimed.userId, bob.userId);
    assert.equal(claimed.deviceId, bob.deviceId);
    assert.deepEqual(claimed.key, oneTimeKeys[0], "the one-time key with the lowest id");
    assert.ok(verifies(device.ed25519, keySignedBytes(bob.userId, bob.deviceId, claimed.key), claimed.key.signature));
    assert.deepEqual(await bobToldCount, { oneTimeKeysLeft: 2, fallbackKeyUsed: false });
    assert.deepEqual(await bob.publishKeys(), { oneTimeKeysLeft: 2, fallbackKeyUsed: false });

    const rest = [...(await alice.claimKeys([address])), ...(await alice.claimKeys([address]))];
    assert.deepEqual(rest.map((k) => [k.key.keyId, k.fallback]), [[2n, false], [3n, false]]);
    const [fallback] = await alice.claimKeys([address]);
    assert.equal(fallback?.fallback, true);
    assert.deepEqual(fallback?.key, fallbackKey);
    assert.deepEqual(await bob.publishKeys(), { oneTimeKeysLeft: 0, fallbackKeyUsed: true });

    // To-device: a message queued before bob asks comes in his first page, which makes his
    // connection live; the next one arrives as an event.
    const queued = new Uint8Array([1, 0xb0, 0xb0, 0, 42]);
    assert.deepEqual(await alice.sendToDevice([{ to: address, payload: queued }]), []);
    const page = await bob.toDeviceSync(0n);
    assert.equal(page.hasMore, false);
    assert.deepEqual([page.oneTimeKeysLeft, page.fallbackKeyUsed], [0, true]);
    assert.deepEqual(
      page.messages.map((m) => [m.seq, m.sender, m.senderDevice, m.payload]),
      [[1n, alice.userId, alice.deviceId, queued]],
    );
    const arrives = nextEvent(bob, "toDevice");
    const payload = new Uint8Array([1, 0xa1, 0x1c, 0xe0, 0, 255]);
    const nowhere = { userId: bob.userId, deviceId: bob.deviceId + 1000 };
    const undelivered = await alice.sendToDevice([{ to: address, payload }, { to: nowhere, payload }]);
    assert.deepEqual(undelivered, [nowhere], "a device that does not exist gets nothing");
    const message = await arrives;
    assert.equal(message.seq, 2n);
    assert.equal(message.sender, alice.userId);
    assert.equal(message.senderDevice, alice.deviceId);
    assert.deepEqual(message.payload, payload);

    // Acknowledged, the message is deleted: a sync from the start no longer returns it (polled,
    // since the acknowledgement is a notification with no reply).
    bob.toDeviceAck(message.seq);
    let left = -1;
    // Bounded: at most 50 syncs, 100 ms apart.
    for (let attempt = 0; attempt < 50 && left !== 0; attempt++) {
      if (attempt > 0) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      left = (await bob.toDeviceSync(0n)).messages.length;
    }
    assert.equal(left, 0, "the acknowledged message is gone");
  });

  // Proves the server checks signatures: a key signed by another key is refused, and nothing of
  // the device is listed.
  test("keys with a bad signature are refused", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const keys = DeviceKeyring.of(bob);
    const forged = { ...keys.identity, signature: DeviceKeyring.of(bob).identity.signature };
    await assert.rejects(bob.publishKeys({ identity: forged }), assertRefused("INVALID_ARGUMENT"));
    const other = new DeviceKeyring(bob.userId, bob.deviceId);
    await assert.rejects(bob.publishKeys({ identity: keys.identity, oneTimeKeys: [other.key(1n)] }), assertRefused("INVALID_ARGUMENT"));
    assert.deepEqual(await alice.getDeviceKeys([bob.userId]), [{ userId: bob.userId, devices: [] }]);
  });

  // Proves an encrypted conversation takes only encrypted bodies: a plaintext Send is refused with
  // ENCRYPTION_REQUIRED and stored nowhere, while an encrypted body is stored and delivered.
  test("a plaintext send into an encrypted conversation is refused with ENCRYPTION_REQUIRED", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const direct = await alice.openDirect(bob.userId, { encrypted: true });
    assert.equal(direct.encrypted, true);
    assert.equal((await bob.getConversation(direct.conversationId)).encrypted, true);
    const again = await alice.openDirect(bob.userId);
    assert.equal(again.conversationId, direct.conversationId);
    assert.equal(again.encrypted, true, "an existing conversation keeps what it is");

    const failed = nextEvent(alice, "sendFailed");
    await assert.rejects(alice.send(direct.conversationId, "hello in the clear"), (error: unknown) => {
      assert.ok(error instanceof TernError);
      assert.equal(error.code, "ENCRYPTION_REQUIRED");
      assert.equal(error.wireCode, 26);
      return true;
    });
    assert.equal((await failed).error.code, "ENCRYPTION_REQUIRED");
    assert.equal(alice.pendingOutbox(), 0, "a refused send leaves the outbox");

    const ciphertext = "megolm.v1:AQIDBA==";
    const arrives = nextEvent(bob, "message", (m) => m.conversationId === direct.conversationId);
    const sent = await alice.send(direct.conversationId, ciphertext);
    assert.equal(sent.seq, 1n, "nothing was stored for the refused send");
    assert.equal((await arrives).text, ciphertext);
    const history = await bob.history(direct.conversationId);
    assert.deepEqual(history.messages.map((m) => m.text), [ciphertext]);
  });

  // Proves the encrypted flag on groups, and that conversations made without it are not encrypted.
  test("encrypted groups, and plain conversations beside them", async () => {
    const alice = await register(server, "alice");
    const bob = await register(server, "bob");
    const carol = await register(server, "carol");
    const created = nextEvent(bob, "conversation", (e) => e.change === "created");
    const group = await alice.createGroup("Secret santa", [bob.userId], { encrypted: true });
    assert.equal(group.encrypted, true);
    const event = await created;
    assert.equal(event.conversationId, group.conversationId);
    assert.equal((await bob.getConversation(group.conversationId)).encrypted, true);
    await assert.rejects(bob.send(group.conversationId, "plaintext"), assertRefused("ENCRYPTION_REQUIRED"));

    const plainGroup = await alice.createGroup("Climbing crew", [carol.userId]);
    assert.equal(plainGroup.encrypted, false);
    const plainDirect = await alice.openDirect(carol.userId);
    assert.equal(plainDirect.encrypted, false);
    assert.equal((await alice.send(plainDirect.conversationId, "plain is fine here")).seq, 1n);
  });

  // Proves the key backup: entries stored, paged in ascending id, replaced by id, deleted; an
  // all-zero id refused.
  test("the key backup", async () => {
    const alice = await register(server, "alice");
    const id = (first: number): Uint8Array => Uint8Array.from({ length: 32 }, (_, i) => (i === 0 ? first : i));
    const entries = [3, 1, 2].map((n) => ({ entryId: id(n), data: new Uint8Array([1, n, 0xff]) }));
    await alice.putBackup(entries);
    await alice.putBackup([{ entryId: id(2), data: new Uint8Array([1, 22]) }]);

    const first = await alice.getBackup({ limit: 2 });
    assert.equal(first.hasMore, true);
    assert.deepEqual(first.entries, [
      { entryId: id(1), data: new Uint8Array([1, 1, 0xff]) },
      { entryId: id(2), data: new Uint8Array([1, 22]) },
    ]);
    const second = await alice.getBackup({ after: id(2) });
    assert.deepEqual(second, { entries: [{ entryId: id(3), data: new Uint8Array([1, 3, 0xff]) }], hasMore: false });

    await assert.rejects(alice.putBackup([{ entryId: new Uint8Array(32), data: new Uint8Array([1]) }]), assertRefused("INVALID_ARGUMENT"));
    await alice.deleteBackup();
    assert.deepEqual(await alice.getBackup(), { entries: [], hasMore: false });
  });
});
