/**
 * The structures of end-to-end encryption (spec §19) that travel in frames: the key directory's
 * device keys, signed keys and claimed keys, to-device messages, and key backup entries; and the
 * bytes a device signs to publish its keys (spec §19.2).
 *
 * Only the layout of bytes is here. Making keys, signing, and Olm and Megolm encryption are done
 * by a cryptography library (the Rust client library uses vodozemac): the server sees public keys,
 * signatures and opaque payloads only.
 *
 * @module
 */

import {
  BACKUP_ENTRY_BYTES_MAX,
  BACKUP_ENTRY_ID_BYTES,
  DEVICES_PER_USER_MAX,
  PUBLIC_KEY_BYTES,
  SIGNATURE_BYTES,
  TO_DEVICE_PAYLOAD_BYTES_MAX,
} from "./limits.js";
import { Writer, bool, bytes, fixed, list, struct, u32, u64 } from "./primitives.js";

/** DeviceKeys (spec §19.2, 132 bytes): a device's published identity. */
export interface DeviceKeys {
  /** The device. */
  deviceId: number;
  /** Its Curve25519 identity key (key agreement), 32 bytes. */
  curve25519: Uint8Array;
  /** Its Ed25519 identity key (signatures), 32 bytes. */
  ed25519: Uint8Array;
  /** Ed25519 over {@link identitySignedBytes}, 64 bytes. */
  signature: Uint8Array;
}

export const deviceKeys = struct<DeviceKeys>({
  deviceId: u32,
  curve25519: fixed(PUBLIC_KEY_BYTES),
  ed25519: fixed(PUBLIC_KEY_BYTES),
  signature: fixed(SIGNATURE_BYTES),
});

/** UserDeviceKeys (spec §19.2): one user's devices that published identity keys, not revoked. */
export interface UserDeviceKeys {
  userId: bigint;
  /** In ascending `deviceId`. */
  devices: DeviceKeys[];
}

export const userDeviceKeys = struct<UserDeviceKeys>({
  userId: u64,
  devices: list(deviceKeys, DEVICES_PER_USER_MAX),
});

/** SignedKey (spec §19.2, 104 bytes): a one-time or fallback key. */
export interface SignedKey {
  /** The key's id, chosen by the device, unique among its keys. */
  keyId: bigint;
  /** The Curve25519 public key, 32 bytes. */
  key: Uint8Array;
  /** Ed25519 over {@link keySignedBytes}, 64 bytes. */
  signature: Uint8Array;
}

export const signedKey = struct<SignedKey>({
  keyId: u64,
  key: fixed(PUBLIC_KEY_BYTES),
  signature: fixed(SIGNATURE_BYTES),
});

/** DeviceAddress (spec §19.2, 12 bytes): one device of one user. */
export interface DeviceAddress {
  userId: bigint;
  deviceId: number;
}

export const deviceAddress = struct<DeviceAddress>({ userId: u64, deviceId: u32 });

/** ClaimedKey (spec §19.2, 117 bytes): a key taken from the directory for a device. */
export interface ClaimedKey {
  userId: bigint;
  deviceId: number;
  /** A one-time key, now removed from the directory; or the fallback key. */
  key: SignedKey;
  /** Whether `key` is the device's fallback key (it had no one-time key left). */
  fallback: boolean;
}

export const claimedKey = struct<ClaimedKey>({ userId: u64, deviceId: u32, key: signedKey, fallback: bool });

/** ToDeviceMessage (spec §19.4): a payload in a device's queue. */
export interface ToDeviceMessage {
  /** Its position in the recipient device's queue: 1, 2, 3, … per device. */
  seq: bigint;
  /** The sending user. */
  sender: bigint;
  /** The sending device. */
  senderDevice: number;
  /** When the server queued it (ms). */
  ts: bigint;
  /** Opaque to the server: an Olm envelope between clients (spec §19.9.2). */
  payload: Uint8Array;
}

export const toDeviceMessage = struct<ToDeviceMessage>({
  seq: u64,
  sender: u64,
  senderDevice: u32,
  ts: u64,
  payload: bytes(TO_DEVICE_PAYLOAD_BYTES_MAX),
});

/** ToDeviceOut (spec §19.4): one payload to queue for one device. */
export interface ToDeviceOut {
  to: DeviceAddress;
  payload: Uint8Array;
}

export const toDeviceOut = struct<ToDeviceOut>({ to: deviceAddress, payload: bytes(TO_DEVICE_PAYLOAD_BYTES_MAX) });

/** BackupEntry (spec §19.6): one encrypted entry of a user's key backup. */
export interface BackupEntry {
  /** Its id (the Megolm session's id), 32 bytes, not all zero. */
  entryId: Uint8Array;
  /** The encrypted entry (spec §19.9.4), opaque to the server. */
  data: Uint8Array;
}

export const backupEntry = struct<BackupEntry>({
  entryId: fixed(BACKUP_ENTRY_ID_BYTES),
  data: bytes(BACKUP_ENTRY_BYTES_MAX),
});

/** The ASCII context that starts the bytes an identity signature covers. */
export const IDENTITY_SIGNATURE_CONTEXT = "TERN-DEVICE-V1";
/** The ASCII context that starts the bytes a one-time or fallback key signature covers. */
export const KEY_SIGNATURE_CONTEXT = "TERN-KEY-V1";

/**
 * The bytes a device signs with its Ed25519 key to publish its identity keys (spec §19.2):
 * `TERN-DEVICE-V1`, `user_id`, `device_id`, `curve25519`, `ed25519`. The `signature` field of
 * `keys` is not part of them.
 */
export function identitySignedBytes(userId: bigint, keys: Omit<DeviceKeys, "signature">): Uint8Array {
  const w = new Writer(IDENTITY_SIGNATURE_CONTEXT.length + 12 + 2 * PUBLIC_KEY_BYTES);
  w.raw(new TextEncoder().encode(IDENTITY_SIGNATURE_CONTEXT));
  u64.write(w, userId, "user_id");
  u32.write(w, keys.deviceId, "device_id");
  fixed(PUBLIC_KEY_BYTES).write(w, keys.curve25519, "curve25519");
  fixed(PUBLIC_KEY_BYTES).write(w, keys.ed25519, "ed25519");
  return w.finish();
}

/**
 * The bytes a device signs with its Ed25519 key to publish a one-time or fallback key (spec
 * §19.2): `TERN-KEY-V1`, `user_id`, `device_id`, `key_id`, `key`.
 */
export function keySignedBytes(userId: bigint, deviceId: number, key: Omit<SignedKey, "signature">): Uint8Array {
  const w = new Writer(KEY_SIGNATURE_CONTEXT.length + 20 + PUBLIC_KEY_BYTES);
  w.raw(new TextEncoder().encode(KEY_SIGNATURE_CONTEXT));
  u64.write(w, userId, "user_id");
  u32.write(w, deviceId, "device_id");
  u64.write(w, key.keyId, "key_id");
  fixed(PUBLIC_KEY_BYTES).write(w, key.key, "key");
  return w.finish();
}
