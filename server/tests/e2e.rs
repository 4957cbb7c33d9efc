//! Integration tests of end-to-end encryption's server side (spec §19) against a real `ternd` on
//! both I/O engines: the key directory (signatures checked, one-time keys claimed once each, the
//! fallback key when they run out, counts reaching the device), to-device queues (offline and
//! live delivery, acknowledgement, unknown devices, a full queue), encrypted conversations
//! (plaintext refused, the flags on the wire), device list changes in the logs of those who share
//! a conversation, and the key backup. The payloads here are stand-in bytes: the server never
//! reads them, and the client library's tests do the real cryptography.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tern_client::{Client, ClientError, Event};
use tern_protocol::e2e::*;
use tern_protocol::frames::{self, PublishKeys};
use tern_protocol::{Body, ErrorCode, UpdateKind};

on_both_engines!(
    key_directory,
    to_device_queues,
    encrypted_conversations,
    device_list_changes,
    key_backup,
    keys_and_queues_survive_kill9
);

/// A device's signing key, as a client would hold it.
struct Signer {
    pair: Ed25519KeyPair,
    user_id: u64,
    device_id: u32,
}

impl Signer {
    fn new(user_id: u64, device_id: u32) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Signer {
            pair,
            user_id,
            device_id,
        }
    }

    fn ed25519(&self) -> [u8; 32] {
        self.pair.public_key().as_ref().try_into().unwrap()
    }

    fn identity(&self, curve: u8) -> DeviceKeys {
        let mut keys = DeviceKeys {
            device_id: self.device_id,
            curve25519: [curve; 32],
            ed25519: self.ed25519(),
            signature: Signature::default(),
        };
        let sig = self.pair.sign(&identity_signed_bytes(self.user_id, &keys));
        keys.signature = Signature(sig.as_ref().try_into().unwrap());
        keys
    }

    fn key(&self, key_id: u64) -> SignedKey {
        let mut key = SignedKey {
            key_id,
            key: [key_id as u8; 32],
            signature: Signature::default(),
        };
        let sig = self
            .pair
            .sign(&key_signed_bytes(self.user_id, self.device_id, &key));
        key.signature = Signature(sig.as_ref().try_into().unwrap());
        key
    }
}

async fn call(client: &Client, body: impl Into<Body>) -> Result<Body, ErrorCode> {
    client.request(body).await.map_err(|e| match e {
        ClientError::Server { code, .. } => code,
        other => panic!("not a server error: {other:?}"),
    })
}

async fn publish(client: &Client, publish: PublishKeys) -> Result<(u32, bool), ErrorCode> {
    match call(client, publish).await? {
        Body::KeysPublished(k) => Ok((k.one_time_keys_left, k.fallback_key_used)),
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn claim(client: &Client, devices: &[(u64, u32)]) -> Vec<ClaimedKey> {
    let devices = devices
        .iter()
        .map(|&(user_id, device_id)| DeviceAddress { user_id, device_id })
        .collect();
    match call(client, frames::ClaimKeys { devices }).await.unwrap() {
        Body::ClaimedKeys(c) => c.keys,
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn send_to(client: &Client, to: &[(u64, u32)], payload: &[u8]) -> Vec<DeviceAddress> {
    let messages = to
        .iter()
        .map(|&(user_id, device_id)| ToDeviceOut {
            to: DeviceAddress { user_id, device_id },
            payload: payload.to_vec(),
        })
        .collect();
    match call(client, frames::SendToDevice { messages })
        .await
        .unwrap()
    {
        Body::ToDeviceSent(s) => s.undelivered,
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn to_device_sync(client: &Client, since: u64) -> frames::ToDevicePage {
    match call(client, frames::ToDeviceSync { since, limit: 0 })
        .await
        .unwrap()
    {
        Body::ToDevicePage(p) => p,
        other => panic!("unexpected reply {other:?}"),
    }
}

// Proves the directory checks signatures and that identity keys never change; that claims hand out
// each one-time key once, lowest id first, then the fallback key (marked used); that the owner
// device hears its count after each claim; that other users see the device's identity; and that a
// device holds at most 100 one-time keys.
async fn key_directory(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, a) = server.register("alice").await;
    let (bob, b) = server.register("bob").await;
    let signer = Signer::new(a.user_id, a.device_id);

    let with_keys = PublishKeys {
        identity: Some(Box::new(signer.identity(1))),
        one_time_keys: vec![signer.key(3), signer.key(1), signer.key(2)],
        fallback_key: Some(Box::new(signer.key(99))),
    };
    let mut forged = with_keys.clone();
    forged.one_time_keys[0].signature.0[0] ^= 1;
    assert_eq!(
        publish(&alice, forged).await,
        Err(ErrorCode::INVALID_ARGUMENT)
    );
    let keys_first = PublishKeys {
        identity: None,
        one_time_keys: vec![signer.key(5)],
        fallback_key: None,
    };
    assert_eq!(
        publish(&alice, keys_first).await,
        Err(ErrorCode::INVALID_ARGUMENT)
    );
    assert_eq!(publish(&alice, with_keys).await, Ok((3, false)));
    let changed = PublishKeys {
        identity: Some(Box::new(signer.identity(2))),
        ..PublishKeys::default()
    };
    assert_eq!(publish(&alice, changed).await, Err(ErrorCode::CONFLICT));

    let listed = match call(
        &bob,
        frames::GetDeviceKeys {
            user_ids: vec![a.user_id, 999_999],
        },
    )
    .await
    .unwrap()
    {
        Body::DeviceKeysList(l) => l.users,
        other => panic!("unexpected reply {other:?}"),
    };
    assert_eq!(listed.len(), 1, "users who do not exist are left out");
    assert_eq!(listed[0].devices, vec![signer.identity(1)]);

    let mut handed = Vec::new();
    for _ in 0..4 {
        let keys = claim(&bob, &[(a.user_id, a.device_id), (b.user_id, b.device_id)]).await;
        assert_eq!(keys.len(), 1, "bob's device has published nothing");
        handed.push((keys[0].key.key_id, keys[0].fallback));
        let event = alice
            .wait_for_event(|e| matches!(e, Event::KeyCount(_)), EVENT_WAIT)
            .await
            .unwrap();
        let Event::KeyCount(count) = event else {
            unreachable!()
        };
        assert_eq!(count.one_time_keys_left, 3 - handed.len().min(3) as u32);
    }
    assert_eq!(handed, [(1, false), (2, false), (3, false), (99, true)]);
    assert_eq!(publish(&alice, PublishKeys::default()).await, Ok((0, true)));

    let many = PublishKeys {
        one_time_keys: (100..201).map(|id| signer.key(id)).collect::<Vec<_>>()[..100].to_vec(),
        ..PublishKeys::default()
    };
    assert_eq!(publish(&alice, many).await, Ok((100, true)));
    let one_more = PublishKeys {
        one_time_keys: vec![signer.key(500)],
        ..PublishKeys::default()
    };
    assert_eq!(
        publish(&alice, one_more).await,
        Err(ErrorCode::LIMIT_EXCEEDED)
    );
}

// Proves a to-device message waits in the device's queue until it syncs, that a to-device live
// connection gets new ones as events, that acknowledged messages are gone for good while numbering
// goes on, that unknown devices come back as undelivered, and that a full queue refuses more.
async fn to_device_queues(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, a) = server.register("alice").await;
    let (bob, b) = server.register("bob").await;

    let undelivered = send_to(&bob, &[(a.user_id, a.device_id), (a.user_id, 77)], b"one").await;
    assert_eq!(
        undelivered,
        vec![DeviceAddress {
            user_id: a.user_id,
            device_id: 77
        }]
    );
    let page = to_device_sync(&alice, 0).await;
    assert!(!page.has_more);
    assert_eq!(page.messages.len(), 1);
    let first = &page.messages[0];
    assert_eq!(
        (first.seq, first.sender, first.sender_device),
        (1, b.user_id, b.device_id)
    );
    assert_eq!(first.payload, b"one");

    assert!(send_to(&bob, &[(a.user_id, a.device_id)], b"two")
        .await
        .is_empty());
    let event = alice
        .wait_for_event(|e| matches!(e, Event::ToDevice(_)), EVENT_WAIT)
        .await
        .unwrap();
    let Event::ToDevice(live) = event else {
        unreachable!()
    };
    assert_eq!((live.seq, live.payload.as_slice()), (2, &b"two"[..]));
    alice
        .notify(frames::ToDeviceAck { up_to: 2 })
        .await
        .unwrap();

    // A fresh connection of the same device: nothing is left, and the next message is seq 3.
    let again = server.client().await;
    let token = a.token.unwrap();
    again.resume(token).await.unwrap();
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    loop {
        let page = to_device_sync(&again, 0).await;
        if page.messages.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the ack never landed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(send_to(&bob, &[(a.user_id, a.device_id)], b"three")
        .await
        .is_empty());
    let page = to_device_sync(&again, 2).await;
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);

    // Fill the queue: 1,000 messages in all, then the device is undelivered.
    let target = [(a.user_id, a.device_id)];
    let mut queued = 1;
    while queued < 1000 {
        let batch = (1000 - queued).min(250);
        let messages = (0..batch)
            .map(|_| ToDeviceOut {
                to: DeviceAddress {
                    user_id: a.user_id,
                    device_id: a.device_id,
                },
                payload: vec![7; 16],
            })
            .collect();
        match call(&bob, frames::SendToDevice { messages }).await.unwrap() {
            Body::ToDeviceSent(s) => assert!(s.undelivered.is_empty()),
            other => panic!("unexpected reply {other:?}"),
        }
        queued += batch;
    }
    assert_eq!(send_to(&bob, &target, b"full").await.len(), 1);
    assert_eq!(
        call(&bob, frames::SendToDevice { messages: vec![] })
            .await
            .err(),
        Some(ErrorCode::INVALID_ARGUMENT)
    );
}

// Proves an encrypted conversation says so in every frame that carries the flag, refuses
// plaintext from members (and still answers NOT_FOUND to others), accepts encrypted bodies, and
// that a plain conversation takes both.
async fn encrypted_conversations(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, b) = server.register("bob").await;
    let (carol, c) = server.register("carol").await;
    sync_all(&bob, 0).await;

    let (direct, encrypted) = alice.open_direct_encrypted(b.user_id).await.unwrap();
    assert!(encrypted);
    let again = match call(
        &bob,
        frames::GetConversation {
            conversation_id: direct.conversation_id,
        },
    )
    .await
    .unwrap()
    {
        Body::Conversation(c) => c,
        other => panic!("unexpected reply {other:?}"),
    };
    assert!(again.encrypted);
    let plain = alice.send(direct.conversation_id, [1; 16], "hello").await;
    assert_eq!(
        plain.err().and_then(|e| e.server_code()),
        Some(ErrorCode::ENCRYPTION_REQUIRED)
    );
    let sealed = "megolm.v1:AQIDBAUGBwg=";
    alice
        .send(direct.conversation_id, [2; 16], sealed)
        .await
        .unwrap();
    let message = next_message(&bob).await;
    assert_eq!(message.body, sealed);
    let outsider = carol.send(direct.conversation_id, [3; 16], "hi").await;
    assert_eq!(
        outsider.err().and_then(|e| e.server_code()),
        Some(ErrorCode::NOT_FOUND)
    );

    let group = alice
        .create_encrypted_group("secret", vec![b.user_id, c.user_id])
        .await
        .unwrap();
    // The group is durable on alice's core; carol's log gets it a commit later on hers.
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    loop {
        let created = sync_all(&carol, 0).await;
        let flagged = created.iter().any(|u| {
            matches!(&u.kind, UpdateKind::GroupCreated(g)
                if g.conversation_id == group.conversation_id && g.encrypted)
        });
        if flagged {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{created:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let refused = carol.send(group.conversation_id, [4; 16], "").await;
    assert!(refused.is_err());

    let (open, encrypted) = carol.open_direct_encrypted(b.user_id).await.unwrap();
    assert!(encrypted);
    let plain_direct = carol.open_direct(999_999).await;
    assert!(plain_direct.is_err());
    let unencrypted = alice.create_group("plain", vec![c.user_id]).await.unwrap();
    alice
        .send(unencrypted.conversation_id, [5; 16], "plain is fine")
        .await
        .unwrap();
    alice
        .send(unencrypted.conversation_id, [6; 16], sealed)
        .await
        .unwrap();
    assert_ne!(open.conversation_id, 0);
}

fn device_list_changes_of(updates: &[tern_protocol::Update], user_id: u64) -> usize {
    updates
        .iter()
        .filter(|u| matches!(&u.kind, UpdateKind::DeviceListChanged(d) if d.user_id == user_id))
        .count()
}

// Proves a device publishing its identity for the first time, and its revocation, reach the logs
// of the user and of those who share a conversation with them, and nobody else's; and that a
// revoked device's keys leave the directory.
async fn device_list_changes(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, a) = server.register("alice").await;
    let (bob, b) = server.register("bob").await;
    let (carol, _) = server.register("carol").await;
    alice.open_direct(b.user_id).await.unwrap();

    let (phone, p) = server.login("alice", "phone").await;
    let signer = Signer::new(a.user_id, p.device_id);
    let keys = PublishKeys {
        identity: Some(Box::new(signer.identity(9))),
        ..PublishKeys::default()
    };
    publish(&phone, keys.clone()).await.unwrap();
    publish(&phone, keys).await.unwrap();

    let deadline = std::time::Instant::now() + EVENT_WAIT;
    loop {
        let seen = device_list_changes_of(&sync_all(&bob, 0).await, a.user_id);
        if seen == 1 {
            break;
        }
        assert!(seen < 1, "republishing the same identity is no change");
        assert!(std::time::Instant::now() < deadline, "bob never heard");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        device_list_changes_of(&sync_all(&alice, 0).await, a.user_id),
        1
    );

    alice.revoke_device(p.device_id).await.unwrap();
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    while device_list_changes_of(&sync_all(&bob, 0).await, a.user_id) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "bob never heard of the revocation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        device_list_changes_of(&sync_all(&carol, 0).await, a.user_id),
        0
    );
    let listed = match call(
        &carol,
        frames::GetDeviceKeys {
            user_ids: vec![a.user_id],
        },
    )
    .await
    .unwrap()
    {
        Body::DeviceKeysList(l) => l.users,
        other => panic!("unexpected reply {other:?}"),
    };
    assert!(listed[0].devices.is_empty());
    assert!(claim(&carol, &[(a.user_id, p.device_id)]).await.is_empty());
}

async fn get(client: &Client, after: [u8; 32], limit: u32) -> frames::BackupPage {
    match call(client, frames::GetBackup { after, limit })
        .await
        .unwrap()
    {
        Body::BackupPage(p) => p,
        other => panic!("unexpected reply {other:?}"),
    }
}

// Proves backup entries are stored, replaced by id, paged in id order, refused with a zero id and
// deleted whole, and that one user never reads another's.
async fn key_backup(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;
    let entry = |id: u8, data: &[u8]| BackupEntry {
        entry_id: [id; 32],
        data: data.to_vec(),
    };
    let put = |entries: Vec<BackupEntry>| frames::PutBackup { entries };
    call(
        &alice,
        put(vec![entry(3, b"c"), entry(1, b"a"), entry(2, b"b")]),
    )
    .await
    .unwrap();
    call(&alice, put(vec![entry(2, b"B")])).await.unwrap();
    assert_eq!(
        call(&alice, put(vec![entry(0, b"zero")])).await.err(),
        Some(ErrorCode::INVALID_ARGUMENT)
    );
    let page = get(&alice, [0; 32], 2).await;
    assert!(page.has_more);
    assert_eq!(page.entries, vec![entry(1, b"a"), entry(2, b"B")]);
    let page = get(&alice, [2; 32], 0).await;
    assert!(!page.has_more);
    assert_eq!(page.entries, vec![entry(3, b"c")]);
    assert!(get(&bob, [0; 32], 0).await.entries.is_empty());
    call(&alice, frames::DeleteBackup {}).await.unwrap();
    assert!(get(&alice, [0; 32], 0).await.entries.is_empty());
}

// Proves what the directory and the queues acknowledged survives `kill -9`: a claimed one-time key
// is never handed out again, a queued to-device message is delivered after the restart, and an
// acknowledged one stays gone while numbering goes on from where it was.
async fn keys_and_queues_survive_kill9(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ternd::start_in(engine, dir.path(), &[]);
    let (alice, a) = server.register("alice").await;
    let (bob, b) = server.register("bob").await;
    let signer = Signer::new(a.user_id, a.device_id);
    let keys = PublishKeys {
        identity: Some(Box::new(signer.identity(1))),
        one_time_keys: vec![signer.key(1), signer.key(2)],
        fallback_key: None,
    };
    publish(&alice, keys).await.unwrap();
    let first = claim(&bob, &[(a.user_id, a.device_id)]).await;
    assert_eq!(first[0].key.key_id, 1);
    assert!(send_to(&bob, &[(a.user_id, a.device_id)], b"one")
        .await
        .is_empty());
    let page = to_device_sync(&alice, 0).await;
    assert_eq!(page.messages.len(), 1);
    alice
        .notify(frames::ToDeviceAck { up_to: 1 })
        .await
        .unwrap();
    assert!(send_to(&bob, &[(a.user_id, a.device_id)], b"two")
        .await
        .is_empty());
    // The ack is a notification: wait until a fresh page no longer holds seq 1.
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    while to_device_sync(&alice, 0).await.messages[0].seq == 1 {
        assert!(std::time::Instant::now() < deadline, "the ack never landed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop((alice, bob));
    server.kill9();

    let server = Ternd::start_in(engine, dir.path(), &[]);
    let alice = server.client().await;
    alice.resume(a.token.unwrap()).await.unwrap();
    let bob = server.client().await;
    bob.resume(b.token.unwrap()).await.unwrap();
    let second = claim(&bob, &[(a.user_id, a.device_id)]).await;
    assert_eq!(
        second[0].key.key_id, 2,
        "key 1 was handed out before the crash"
    );
    let page = to_device_sync(&alice, 0).await;
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2]);
    assert_eq!(page.messages[0].payload, b"two");
    assert!(send_to(&bob, &[(a.user_id, a.device_id)], b"three")
        .await
        .is_empty());
    let page = to_device_sync(&alice, 2).await;
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
}
