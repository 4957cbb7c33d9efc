//! End-to-end encryption's server side (spec §19): the key directory, to-device queues, the key
//! backup, device list changes and the rule that encrypted conversations take only ciphertext.
//!
//! The server holds no secret here. It keeps what devices publish (identity, one-time and
//! fallback keys, every one signed and checked with ring's Ed25519), hands out one one-time key
//! per claim, queues opaque payloads per device and stores opaque backup entries.
//!
//! Ownership follows the rest of the core: a device's keys, to-device queue and its user's backup
//! are written only by the user's owner core. A request that touches other users' devices
//! (`ClaimKeys`, `SendToDevice`) is split by owner core; each part goes there as mail, is carried
//! out and committed, and comes back; the origin answers once every part is back (a *gather*).
//! So a claimed key is removed durably before it is handed out, and `ToDeviceSent` means every
//! queued message is durable.
//!
//! A to-device queue numbers its messages per device without gaps. Its last seq is kept in the
//! store (row 0 of the device's queue), so numbering goes on after the queue empties. Pages are
//! read from what is durable, up to the queue's head; messages above it go to to-device live
//! connections once their batch is durable ([`Shard::release_to_device`]), as `Sync` does.

use std::collections::BTreeMap;

use ring::signature::{UnparsedPublicKey, ED25519};
use tern_protocol::e2e::{
    identity_signed_bytes, is_encrypted_body, key_signed_bytes, BackupEntry, ClaimedKey,
    DeviceAddress, DeviceKeys, Signature, SignedKey, ToDeviceMessage, ToDeviceOut, UserDeviceKeys,
};
use tern_protocol::frames::{
    BackupPage, ClaimedKeys, DeviceKeysList, KeyCountEvent, KeysPublished, Ok as OkFrame,
    PublishKeys, Send, ToDeviceEvent, ToDevicePage, ToDeviceSent,
};
use tern_protocol::limits::{
    BACKUP_ENTRIES_PER_REQUEST_MAX, DEVICES_PER_USER_MAX, FRAME_BYTES_MAX,
    ONE_TIME_KEYS_PER_DEVICE_MAX, TO_DEVICE_PAGE_MESSAGES_MAX,
};
use tern_protocol::{Body, ErrorCode, Frame, UpdateKind};

use super::mail::{ConnRef, Mail};
use super::{Action, ConnId, HashMap, HashSet, Output, Shard};
use crate::store::records::{DeviceKeysRecord, SignedKeyRecord, ToDeviceRecord, UpdateRecord};
use crate::store::{StoreError, RANGE_READ_MAX};

/// Messages a device's to-device queue holds; past it, senders get the device back as undelivered.
pub(crate) const TO_DEVICE_QUEUE_MESSAGES_MAX: u64 = 1000;
/// Backup entries a user may keep.
pub(crate) const BACKUP_ENTRIES_PER_USER_MAX: usize = 20_000;
/// Devices whose key directory entry a core keeps in memory before it starts over.
const CACHED_KEY_DEVICES_MAX: usize = 1 << 14;
/// Conversations' encrypted flags a core keeps in memory before it starts over.
const CACHED_FLAGS_MAX: usize = 1 << 16;
/// Conversations of a user whose members hear of a device list change.
const DEVICE_LIST_CONVERSATIONS_MAX: usize = 10 * RANGE_READ_MAX;
/// Users told of one device list change, at most.
const DEVICE_LIST_USERS_MAX: usize = 100_000;
/// Bytes of to-device messages or backup entries one page may fill, leaving room for the rest.
const PAGE_BYTES_MAX: usize = FRAME_BYTES_MAX as usize - 4096;

/// A device's key directory entry as the pending batch leaves it.
#[derive(Debug, Default, Clone)]
struct DeviceKeyState {
    identity: Option<DeviceKeysRecord>,
    one_time: BTreeMap<u64, ([u8; 32], [u8; 64])>,
}

impl DeviceKeyState {
    fn counts(&self) -> (u32, bool) {
        let fallback_used = self
            .identity
            .as_ref()
            .is_none_or(|r| r.fallback.is_none() || r.fallback_used);
        (self.one_time.len() as u32, fallback_used)
    }
}

/// A device's to-device queue.
#[derive(Debug, Clone, Copy)]
struct Queue {
    /// The newest seq that is durable and was pushed to live connections.
    head: u64,
    /// The newest seq assigned, durable or pending.
    last: u64,
    /// Every seq up to this one is deleted (acknowledged).
    deleted_through: u64,
}

/// A request waiting for the owner cores of other users.
#[derive(Debug)]
struct Gather {
    conn: ConnId,
    request_id: u32,
    waiting: usize,
    failed: Option<ErrorCode>,
    kind: GatherKind,
}

#[derive(Debug)]
enum GatherKind {
    ToDevice {
        undelivered: Vec<DeviceAddress>,
    },
    Claim {
        order: Vec<DeviceAddress>,
        keys: Vec<ClaimedKey>,
    },
}

/// End-to-end encryption's bookkeeping on one core.
#[derive(Debug, Default)]
pub(crate) struct KeysState {
    devices: HashMap<(u64, u32), DeviceKeyState>,
    queues: HashMap<(u64, u32), Queue>,
    backup_counts: HashMap<u64, usize>,
    /// Connections that finished `ToDeviceSync`: new messages are pushed to them.
    live: HashSet<ConnId>,
    gathers: HashMap<u64, Gather>,
    next_gather: u64,
    /// To-device messages queued in the batch being built, pushed once it is durable.
    fresh: Vec<(u64, u32, ToDeviceMessage)>,
    /// Whether conversations that exist are encrypted (it never changes).
    encrypted: HashMap<u64, bool>,
}

impl KeysState {
    /// The messages queued since the last call, for the batch being sealed.
    pub(crate) fn take_fresh(&mut self) -> Vec<(u64, u32, ToDeviceMessage)> {
        std::mem::take(&mut self.fresh)
    }

    /// A failed commit: what the caches hold may be void; they reload from the store. Live
    /// connections and requests waiting on other cores stay.
    pub(crate) fn forget(&mut self) {
        self.devices.clear();
        self.queues.clear();
        self.backup_counts.clear();
        self.fresh.clear();
    }

    /// Drops caches past their bound (called when the batch is staged, so the store has it all).
    pub(crate) fn trim(&mut self) {
        if self.devices.len() > CACHED_KEY_DEVICES_MAX {
            self.devices.clear();
        }
        if self.queues.len() > CACHED_KEY_DEVICES_MAX {
            // Heads of queues with messages not yet durable must stay: keep those.
            let pending: HashSet<(u64, u32)> =
                self.fresh.iter().map(|(u, d, _)| (*u, *d)).collect();
            self.queues
                .retain(|k, q| pending.contains(k) || q.head != q.last);
        }
        if self.backup_counts.len() > CACHED_KEY_DEVICES_MAX {
            self.backup_counts.clear();
        }
        if self.encrypted.len() > CACHED_FLAGS_MAX {
            self.encrypted.clear();
        }
    }
}

fn verify(ed25519: &[u8; 32], message: &[u8], signature: &Signature) -> bool {
    UnparsedPublicKey::new(&ED25519, ed25519)
        .verify(message, &signature.0)
        .is_ok()
}

fn signed_key(record: &SignedKeyRecord) -> SignedKey {
    SignedKey {
        key_id: record.key_id,
        key: record.key,
        signature: Signature(record.signature),
    }
}

fn approx_bytes(message: &ToDeviceMessage) -> usize {
    64 + message.payload.len()
}

impl Shard {
    /// Handles a request of §19 on an authenticated connection.
    pub(crate) fn handle_keys_request(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        body: Body,
    ) -> Result<(), StoreError> {
        match body {
            Body::PublishKeys(p) => {
                self.handle_publish_keys(now_ms, conn, request_id, user_id, device_id, p)
            }
            Body::GetDeviceKeys(g) => self.handle_get_device_keys(conn, request_id, &g.user_ids),
            Body::ClaimKeys(c) => {
                self.start_claim(conn, request_id, c.devices);
                Ok(())
            }
            Body::SendToDevice(s) => {
                match self.take_token(now_ms, conn, user_id, Action::Send) {
                    Ok(()) => {
                        self.start_to_device(conn, request_id, user_id, device_id, s.messages)
                    }
                    Err(retry_after_ms) => self.reply_rate_limited(
                        conn,
                        request_id,
                        retry_after_ms,
                        "sending too fast",
                    ),
                }
                Ok(())
            }
            Body::ToDeviceSync(s) => {
                self.handle_to_device_sync(conn, request_id, user_id, device_id, s.since, s.limit)
            }
            Body::ToDeviceAck(a) => self.acknowledge_to_device(user_id, device_id, a.up_to),
            Body::PutBackup(p) => self.handle_put_backup(conn, request_id, user_id, p.entries),
            Body::GetBackup(g) => {
                self.handle_get_backup(conn, request_id, user_id, &g.after, g.limit)
            }
            Body::DeleteBackup(_) => {
                self.batch.delete_backup(user_id);
                self.keys.backup_counts.insert(user_id, 0);
                self.reply_after_commit(conn, request_id, OkFrame {});
                Ok(())
            }
            other => {
                debug_assert!(false, "{} is not a key request", other.name());
                Ok(())
            }
        }
    }

    /// Handles mail of §19 (`ToDevice`, `ClaimKeys` and their answers).
    pub(crate) fn handle_keys_mail(&mut self, now_ms: u64, mail: Mail) -> Result<(), StoreError> {
        match mail {
            Mail::ToDevice {
                origin,
                request_id,
                gather,
                sender,
                sender_device,
                messages,
            } => {
                let undelivered = self.queue_to_device(now_ms, sender, sender_device, messages)?;
                self.mail_after_commit(
                    origin.core,
                    Mail::ToDeviceQueued {
                        origin,
                        request_id,
                        gather,
                        result: Ok(undelivered),
                    },
                );
            }
            Mail::ToDeviceQueued { gather, result, .. } => self.gathered(gather, |kind| {
                if let GatherKind::ToDevice { undelivered } = kind {
                    undelivered.extend(result?);
                }
                Ok(())
            }),
            Mail::ClaimKeys {
                origin,
                request_id,
                gather,
                devices,
            } => {
                let keys = self.claim_local(&devices)?;
                self.mail_after_commit(
                    origin.core,
                    Mail::KeysClaimed {
                        origin,
                        request_id,
                        gather,
                        result: Ok(keys),
                    },
                );
            }
            Mail::KeysClaimed { gather, result, .. } => self.gathered(gather, |kind| {
                if let GatherKind::Claim { keys, .. } = kind {
                    keys.extend(result?);
                }
                Ok(())
            }),
            _ => debug_assert!(false, "not key mail"),
        }
        Ok(())
    }

    // ------------------------------------------------------------------ the key directory

    /// A device's directory entry, loaded once.
    fn device_key_state(
        &mut self,
        user_id: u64,
        device_id: u32,
    ) -> Result<&mut DeviceKeyState, StoreError> {
        let key = (user_id, device_id);
        if !self.keys.devices.contains_key(&key) {
            let identity = self.store.device_keys(user_id, device_id)?;
            let one_time = self
                .store
                .one_time_keys(user_id, device_id, ONE_TIME_KEYS_PER_DEVICE_MAX as usize)?
                .into_iter()
                .map(|(id, key, signature)| (id, (key, signature)))
                .collect();
            self.keys
                .devices
                .insert(key, DeviceKeyState { identity, one_time });
        }
        self.keys
            .devices
            .get_mut(&key)
            .ok_or_else(|| StoreError::Corrupt("device key state".into()))
    }

    fn handle_publish_keys(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        publish: PublishKeys,
    ) -> Result<(), StoreError> {
        let state = self.device_key_state(user_id, device_id)?.clone();
        let refuse = |shard: &mut Shard, code, message: &str| {
            shard.reply_error(conn, request_id, code, message);
            Ok(())
        };
        let mut record = state.identity.clone();
        let first_identity = record.is_none() && publish.identity.is_some();
        if let Some(identity) = &publish.identity {
            if identity.device_id != device_id {
                return refuse(
                    self,
                    ErrorCode::INVALID_ARGUMENT,
                    "identity of another device",
                );
            }
            let message = identity_signed_bytes(user_id, identity);
            if !verify(&identity.ed25519, &message, &identity.signature) {
                return refuse(self, ErrorCode::INVALID_ARGUMENT, "bad identity signature");
            }
            match &record {
                Some(r) if r.curve25519 != identity.curve25519 || r.ed25519 != identity.ed25519 => {
                    return refuse(self, ErrorCode::CONFLICT, "identity keys never change");
                }
                Some(_) => {}
                None => {
                    record = Some(DeviceKeysRecord {
                        curve25519: identity.curve25519,
                        ed25519: identity.ed25519,
                        signature: identity.signature.0,
                        fallback: None,
                        fallback_used: false,
                    })
                }
            }
        }
        let Some(mut record) = record else {
            if publish.one_time_keys.is_empty() && publish.fallback_key.is_none() {
                let (left, used) = state.counts();
                self.reply(
                    conn,
                    request_id,
                    KeysPublished {
                        one_time_keys_left: left,
                        fallback_key_used: used,
                    },
                );
                return Ok(());
            }
            return refuse(
                self,
                ErrorCode::INVALID_ARGUMENT,
                "publish identity keys first",
            );
        };
        let all_signed = publish
            .one_time_keys
            .iter()
            .chain(publish.fallback_key.as_deref())
            .all(|k| {
                verify(
                    &record.ed25519,
                    &key_signed_bytes(user_id, device_id, k),
                    &k.signature,
                )
            });
        if !all_signed {
            return refuse(self, ErrorCode::INVALID_ARGUMENT, "bad key signature");
        }
        let added = publish
            .one_time_keys
            .iter()
            .map(|k| k.key_id)
            .collect::<HashSet<u64>>()
            .into_iter()
            .filter(|id| !state.one_time.contains_key(id))
            .count();
        if state.one_time.len() + added > ONE_TIME_KEYS_PER_DEVICE_MAX as usize {
            return refuse(self, ErrorCode::LIMIT_EXCEEDED, "too many one-time keys");
        }
        if let Some(fallback) = &publish.fallback_key {
            record.fallback = Some(SignedKeyRecord {
                key_id: fallback.key_id,
                key: fallback.key,
                signature: fallback.signature.0,
            });
            record.fallback_used = false;
        }
        if first_identity || publish.fallback_key.is_some() {
            self.batch.put_device_keys(user_id, device_id, &record)?;
        }
        let state = self.device_key_state(user_id, device_id)?;
        for k in &publish.one_time_keys {
            state.one_time.insert(k.key_id, (k.key, k.signature.0));
        }
        state.identity = Some(record);
        let (left, used) = state.counts();
        for k in &publish.one_time_keys {
            self.batch
                .put_one_time_key(user_id, device_id, k.key_id, &k.key, &k.signature.0);
        }
        if first_identity {
            self.device_list_changed(now_ms, user_id)?;
        }
        self.reply_after_commit(
            conn,
            request_id,
            KeysPublished {
                one_time_keys_left: left,
                fallback_key_used: used,
            },
        );
        Ok(())
    }

    fn handle_get_device_keys(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_ids: &[u64],
    ) -> Result<(), StoreError> {
        let mut users = Vec::with_capacity(user_ids.len());
        for &user_id in user_ids {
            if self.store.user(user_id)?.is_none() {
                continue;
            }
            let devices = self
                .store
                .user_device_keys(user_id)?
                .into_iter()
                .take(DEVICES_PER_USER_MAX as usize)
                .map(|(device_id, r)| DeviceKeys {
                    device_id,
                    curve25519: r.curve25519,
                    ed25519: r.ed25519,
                    signature: Signature(r.signature),
                })
                .collect();
            users.push(UserDeviceKeys { user_id, devices });
        }
        self.reply(conn, request_id, DeviceKeysList { users });
        Ok(())
    }

    /// A new gather for a request of `conn`.
    fn new_gather(
        &mut self,
        conn: ConnId,
        request_id: u32,
        waiting: usize,
        kind: GatherKind,
    ) -> u64 {
        self.keys.next_gather += 1;
        let id = self.keys.next_gather;
        self.keys.gathers.insert(
            id,
            Gather {
                conn,
                request_id,
                waiting,
                failed: None,
                kind,
            },
        );
        id
    }

    /// One part of a gather is back: `merge` adds it (or fails it); the last part answers.
    fn gathered(&mut self, id: u64, merge: impl FnOnce(&mut GatherKind) -> Result<(), ErrorCode>) {
        let Some(gather) = self.keys.gathers.get_mut(&id) else {
            return;
        };
        if let Err(code) = merge(&mut gather.kind) {
            gather.failed = Some(code);
        }
        gather.waiting = gather.waiting.saturating_sub(1);
        if gather.waiting > 0 {
            return;
        }
        let Some(gather) = self.keys.gathers.remove(&id) else {
            return;
        };
        if let Some(code) = gather.failed {
            self.reply_error(
                gather.conn,
                gather.request_id,
                code,
                "storage error; try again",
            );
            return;
        }
        match gather.kind {
            GatherKind::ToDevice { undelivered } => {
                self.reply(gather.conn, gather.request_id, ToDeviceSent { undelivered })
            }
            GatherKind::Claim { order, keys } => {
                let mut by_device: HashMap<(u64, u32), ClaimedKey> = keys
                    .into_iter()
                    .map(|k| ((k.user_id, k.device_id), k))
                    .collect();
                let keys = order
                    .iter()
                    .filter_map(|d| by_device.remove(&(d.user_id, d.device_id)))
                    .collect();
                self.reply(gather.conn, gather.request_id, ClaimedKeys { keys });
            }
        }
    }

    /// Splits a claim by owner core and sends each part there.
    fn start_claim(&mut self, conn: ConnId, request_id: u32, devices: Vec<DeviceAddress>) {
        let mut seen = HashSet::default();
        let order: Vec<DeviceAddress> = devices
            .into_iter()
            .filter(|d| seen.insert((d.user_id, d.device_id)))
            .collect();
        let mut parts: BTreeMap<usize, Vec<DeviceAddress>> = BTreeMap::new();
        for d in &order {
            parts
                .entry(self.owner(d.user_id))
                .or_default()
                .push(d.clone());
        }
        if parts.is_empty() {
            self.reply(conn, request_id, ClaimedKeys { keys: Vec::new() });
            return;
        }
        let kind = GatherKind::Claim {
            order,
            keys: Vec::new(),
        };
        let gather = self.new_gather(conn, request_id, parts.len(), kind);
        let origin = ConnRef {
            core: self.core,
            conn,
        };
        for (core, devices) in parts {
            self.mail_now(
                core,
                Mail::ClaimKeys {
                    origin,
                    request_id,
                    gather,
                    devices,
                },
            );
        }
    }

    /// On the owner core: takes one key of each device (the lowest one-time key, else the
    /// fallback key) and tells each device's connections its counts once that is durable.
    fn claim_local(&mut self, devices: &[DeviceAddress]) -> Result<Vec<ClaimedKey>, StoreError> {
        let mut claimed = Vec::new();
        for d in devices {
            let (user_id, device_id) = (d.user_id, d.device_id);
            let active = self
                .store
                .device(user_id, device_id)?
                .is_some_and(|r| !r.revoked);
            if !active {
                continue;
            }
            let state = self.device_key_state(user_id, device_id)?;
            let Some(identity) = state.identity.as_mut() else {
                continue;
            };
            let (key, fallback, rewrite) = match state.one_time.pop_first() {
                Some((key_id, (key, signature))) => (
                    SignedKey {
                        key_id,
                        key,
                        signature: Signature(signature),
                    },
                    false,
                    None,
                ),
                None => match identity.fallback {
                    Some(fallback) => {
                        let rewrite = (!identity.fallback_used).then(|| {
                            identity.fallback_used = true;
                            identity.clone()
                        });
                        (signed_key(&fallback), true, rewrite)
                    }
                    None => continue,
                },
            };
            let (left, used) = state.counts();
            if fallback {
                if let Some(record) = rewrite {
                    self.batch.put_device_keys(user_id, device_id, &record)?;
                }
            } else {
                self.batch
                    .delete_one_time_key(user_id, device_id, key.key_id);
            }
            claimed.push(ClaimedKey {
                user_id,
                device_id,
                key,
                fallback,
            });
            for conn in self.device_conns(user_id, device_id) {
                let frame = Frame::event(KeyCountEvent {
                    one_time_keys_left: left,
                    fallback_key_used: used,
                });
                self.after_commit_output(Output::Frame { conn, frame });
            }
        }
        Ok(claimed)
    }

    /// The authenticated connections of one device on this core.
    fn device_conns(&self, user_id: u64, device_id: u32) -> Vec<ConnId> {
        self.online
            .get(&user_id)
            .into_iter()
            .flatten()
            .copied()
            .filter(|c| {
                self.sessions
                    .get(c)
                    .is_some_and(|s| s.device_id == device_id)
            })
            .collect()
    }

    // ------------------------------------------------------------------ to-device messages

    /// Splits messages by the owner core of their recipients and sends each part there.
    fn start_to_device(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        messages: Vec<ToDeviceOut>,
    ) {
        if messages.is_empty() {
            self.reply_error(conn, request_id, ErrorCode::INVALID_ARGUMENT, "no messages");
            return;
        }
        let mut parts: BTreeMap<usize, Vec<ToDeviceOut>> = BTreeMap::new();
        for m in messages {
            parts.entry(self.owner(m.to.user_id)).or_default().push(m);
        }
        let kind = GatherKind::ToDevice {
            undelivered: Vec::new(),
        };
        let gather = self.new_gather(conn, request_id, parts.len(), kind);
        let origin = ConnRef {
            core: self.core,
            conn,
        };
        for (core, messages) in parts {
            self.mail_now(
                core,
                Mail::ToDevice {
                    origin,
                    request_id,
                    gather,
                    sender: user_id,
                    sender_device: device_id,
                    messages,
                },
            );
        }
    }

    /// A device's queue, loaded once.
    fn queue(&mut self, user_id: u64, device_id: u32) -> Result<Queue, StoreError> {
        let key = (user_id, device_id);
        if let Some(queue) = self.keys.queues.get(&key) {
            return Ok(*queue);
        }
        let last = self.store.to_device_last_seq(user_id, device_id)?;
        let head = self.committed.to_device_last_seq(user_id, device_id)?;
        let deleted_through = match self.store.to_device_first_seq(user_id, device_id)? {
            Some(first) => first - 1,
            None => last,
        };
        let queue = Queue {
            head,
            last,
            deleted_through,
        };
        self.keys.queues.insert(key, queue);
        Ok(queue)
    }

    /// On the recipients' owner core: queues each message; returns the recipients it could not.
    fn queue_to_device(
        &mut self,
        now_ms: u64,
        sender: u64,
        sender_device: u32,
        messages: Vec<ToDeviceOut>,
    ) -> Result<Vec<DeviceAddress>, StoreError> {
        let mut undelivered = Vec::new();
        for ToDeviceOut { to, payload } in messages {
            let (user_id, device_id) = (to.user_id, to.device_id);
            let active = self
                .store
                .device(user_id, device_id)?
                .is_some_and(|r| !r.revoked);
            let mut queue = self.queue(user_id, device_id)?;
            if !active || queue.last - queue.deleted_through >= TO_DEVICE_QUEUE_MESSAGES_MAX {
                undelivered.push(to);
                continue;
            }
            queue.last += 1;
            let record = ToDeviceRecord {
                sender,
                sender_device,
                ts: now_ms,
                payload,
            };
            self.batch
                .put_to_device(user_id, device_id, queue.last, &record)?;
            self.keys.queues.insert((user_id, device_id), queue);
            let message = ToDeviceMessage {
                seq: queue.last,
                sender,
                sender_device,
                ts: now_ms,
                payload: record.payload,
            };
            self.keys.fresh.push((user_id, device_id, message));
        }
        Ok(undelivered)
    }

    /// Once a batch is durable: moves the heads of the queues it wrote to and pushes its messages
    /// to the recipients' to-device live connections.
    pub(crate) fn release_to_device(
        &mut self,
        messages: Vec<(u64, u32, ToDeviceMessage)>,
        outputs: &mut Vec<Output>,
    ) {
        for (user_id, device_id, message) in messages {
            if let Some(queue) = self.keys.queues.get_mut(&(user_id, device_id)) {
                queue.head = queue.head.max(message.seq);
            }
            let conns: Vec<ConnId> = self
                .device_conns(user_id, device_id)
                .into_iter()
                .filter(|c| self.keys.live.contains(c))
                .collect();
            for conn in conns {
                let frame = Frame::event(ToDeviceEvent {
                    message: message.clone(),
                });
                outputs.push(Output::Frame { conn, frame });
            }
        }
        let sessions = &self.sessions;
        if self.keys.live.len() > 2 * sessions.len() + 64 {
            self.keys.live.retain(|c| sessions.contains_key(c));
        }
    }

    /// Deletes a device's messages up to `up_to` (never above what it could have been shown).
    fn acknowledge_to_device(
        &mut self,
        user_id: u64,
        device_id: u32,
        up_to: u64,
    ) -> Result<(), StoreError> {
        let mut queue = self.queue(user_id, device_id)?;
        let up_to = up_to.min(queue.head);
        if up_to > queue.deleted_through {
            self.batch
                .delete_to_device_through(user_id, device_id, up_to);
            queue.deleted_through = up_to;
            self.keys.queues.insert((user_id, device_id), queue);
        }
        Ok(())
    }

    fn handle_to_device_sync(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        since: u64,
        limit: u32,
    ) -> Result<(), StoreError> {
        self.acknowledge_to_device(user_id, device_id, since)?;
        let queue = self.queue(user_id, device_id)?;
        let max = TO_DEVICE_PAGE_MESSAGES_MAX as usize;
        let limit = if limit == 0 {
            max
        } else {
            (limit as usize).min(max)
        };
        let rows = if since >= queue.head {
            Vec::new()
        } else {
            self.committed
                .to_device_after(user_id, device_id, since, limit)?
        };
        let mut messages = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        let mut last = since;
        for (seq, record) in rows.into_iter().filter(|(s, _)| *s <= queue.head) {
            let message = ToDeviceMessage {
                seq,
                sender: record.sender,
                sender_device: record.sender_device,
                ts: record.ts,
                payload: record.payload,
            };
            if !messages.is_empty() && bytes + approx_bytes(&message) > PAGE_BYTES_MAX {
                break;
            }
            bytes += approx_bytes(&message);
            last = seq;
            messages.push(message);
        }
        let has_more = last.max(since) < queue.head;
        if !has_more {
            self.keys.live.insert(conn);
        }
        let (left, used) = self.device_key_state(user_id, device_id)?.counts();
        self.reply(
            conn,
            request_id,
            ToDevicePage {
                messages,
                has_more,
                one_time_keys_left: left,
                fallback_key_used: used,
            },
        );
        Ok(())
    }

    // ------------------------------------------------------------------ the key backup

    fn handle_put_backup(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        entries: Vec<BackupEntry>,
    ) -> Result<(), StoreError> {
        if entries.iter().any(|e| e.entry_id == [0; 32]) {
            self.reply_error(conn, request_id, ErrorCode::INVALID_ARGUMENT, "entry id 0");
            return Ok(());
        }
        let count = match self.keys.backup_counts.get(&user_id) {
            Some(count) => *count,
            None => self
                .store
                .backup_count(user_id, BACKUP_ENTRIES_PER_USER_MAX + 1)?,
        };
        let mut fresh = HashSet::default();
        for e in &entries {
            if !self.store.has_backup_entry(user_id, &e.entry_id)? {
                fresh.insert(e.entry_id);
            }
        }
        // Entries written in this turn and not yet staged count again: an overestimate, never less.
        if count + fresh.len() > BACKUP_ENTRIES_PER_USER_MAX {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::LIMIT_EXCEEDED,
                "backup is full",
            );
            return Ok(());
        }
        for e in &entries {
            self.batch.put_backup_entry(user_id, &e.entry_id, &e.data);
        }
        self.keys.backup_counts.insert(user_id, count + fresh.len());
        self.reply_after_commit(conn, request_id, OkFrame {});
        Ok(())
    }

    fn handle_get_backup(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        after: &[u8; 32],
        limit: u32,
    ) -> Result<(), StoreError> {
        let max = BACKUP_ENTRIES_PER_REQUEST_MAX as usize;
        let limit = if limit == 0 {
            max
        } else {
            (limit as usize).min(max)
        };
        // One more than asked says whether more follow.
        let mut rows = self.committed.backup_entries(user_id, after, limit + 1)?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let entries = rows
            .into_iter()
            .map(|(entry_id, data)| BackupEntry { entry_id, data })
            .collect();
        self.reply(conn, request_id, BackupPage { entries, has_more });
        Ok(())
    }

    // ------------------------------------------------------------------ device lists

    /// Appends `DeviceListChanged` to the logs of the user and of everyone who shares a
    /// conversation with them, once the pending batch is durable.
    fn device_list_changed(&mut self, now_ms: u64, user_id: u64) -> Result<(), StoreError> {
        let mut users: Vec<u64> = vec![user_id];
        let mut seen: HashSet<u64> = [user_id].into_iter().collect();
        let mut after = 0;
        let mut scanned = 0;
        'pages: while scanned < DEVICE_LIST_CONVERSATIONS_MAX {
            let page = self
                .store
                .user_conversations(user_id, after, RANGE_READ_MAX)?;
            let Some(&last) = page.last() else { break };
            for conversation_id in &page {
                let Some(record) = self.store.conversation(*conversation_id)? else {
                    continue;
                };
                for member in &record.members {
                    if seen.len() >= DEVICE_LIST_USERS_MAX {
                        tracing::warn!(user_id, "device list change told to the first users only");
                        break 'pages;
                    }
                    if seen.insert(member.user_id) {
                        users.push(member.user_id);
                    }
                }
            }
            scanned += page.len();
            after = last;
            if page.len() < RANGE_READ_MAX {
                break;
            }
        }
        let update = UpdateRecord::DeviceListChanged {
            user_id,
            ts: now_ms,
        };
        for to_user in users {
            let mail = Mail::Append {
                to_user,
                update: update.clone(),
            };
            self.mail_after_commit(self.owner(to_user), mail);
        }
        Ok(())
    }

    /// A device was revoked: its keys and queue go, and if it had published keys, everyone who
    /// may have shared room keys with it hears of it.
    pub(crate) fn keys_device_revoked(
        &mut self,
        user_id: u64,
        device_id: u32,
    ) -> Result<(), StoreError> {
        let had_keys = self
            .device_key_state(user_id, device_id)?
            .identity
            .is_some();
        self.batch.delete_device_e2e(user_id, device_id);
        self.keys
            .devices
            .insert((user_id, device_id), DeviceKeyState::default());
        self.keys.queues.remove(&(user_id, device_id));
        if had_keys {
            self.device_list_changed(self.last_now_ms, user_id)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ encrypted conversations

    /// Whether a conversation that exists is encrypted (`None`: no such conversation), with the
    /// record when it had to be read.
    fn encrypted_flag(&mut self, conversation_id: u64) -> Result<Option<bool>, StoreError> {
        if let Some(flag) = self.keys.encrypted.get(&conversation_id) {
            return Ok(Some(*flag));
        }
        if self.store.conversation(conversation_id)?.is_none() {
            // Not cached: a conversation created with this id later must not read as plain.
            return Ok(None);
        }
        let flag = self.store.conversation_encrypted(conversation_id)?;
        self.keys.encrypted.insert(conversation_id, flag);
        Ok(Some(flag))
    }

    /// On the sender's core: refuses a `Send` with a plaintext body to an encrypted conversation
    /// the sender is a member of (to others the conversation's core answers `NOT_FOUND`).
    /// Returns whether it answered.
    pub(crate) fn refuse_plaintext(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        send: &Send,
    ) -> Result<bool, StoreError> {
        if is_encrypted_body(&send.body) {
            return Ok(false);
        }
        if self.encrypted_flag(send.conversation_id)? != Some(true) {
            return Ok(false);
        }
        let member = self
            .store
            .conversation(send.conversation_id)?
            .is_some_and(|c| c.has_member(user_id));
        if !member {
            return Ok(false);
        }
        self.reply_error(
            conn,
            request_id,
            ErrorCode::ENCRYPTION_REQUIRED,
            "this conversation is encrypted: send an encrypted body",
        );
        Ok(true)
    }

    /// Whether a conversation is encrypted, for the frames that say so.
    pub(crate) fn conversation_encrypted(
        &mut self,
        conversation_id: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.encrypted_flag(conversation_id)?.unwrap_or(false))
    }

    /// Fills in what a stored update leaves to the key directory: a `GroupCreated` says whether
    /// the group is encrypted.
    pub(crate) fn complete_update(&self, kind: &mut UpdateKind) -> Result<(), StoreError> {
        if let UpdateKind::GroupCreated(created) = kind {
            created.encrypted = self.store.conversation_encrypted(created.conversation_id)?;
        }
        Ok(())
    }
}
