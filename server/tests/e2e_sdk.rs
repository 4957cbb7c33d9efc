//! End-to-end encryption through the client library against a real `ternd`, on both I/O
//! engines: users with several devices chatting in encrypted direct conversations and groups,
//! the server's files holding only ciphertext, a revoked device locked out of what follows, a new
//! device reading old history by key forwarding and from the backup, one-time keys running out,
//! and tampered ciphertext failing clearly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use tern_client::crypto::{decode_body, encode_body, Decrypted};
use tern_client::{Client, Crypto, CryptoError, FileStorage, MemoryStorage};
use tern_protocol::e2e::{DeviceAddress, MegolmEnvelope};
use tern_protocol::frames;
use tern_protocol::types::{ConversationId, Message};
use tern_protocol::Body;

on_both_engines!(
    two_users_two_devices_direct_and_group,
    server_keeps_only_ciphertext,
    revoked_device_reads_nothing_after,
    new_device_reads_old_history,
    one_time_keys_run_out_to_the_fallback,
    tampered_ciphertext_fails_clearly,
    crypto_state_survives_a_restart_of_the_app
);

/// One device: its connection and its crypto machine.
struct Device {
    client: Client,
    crypto: Crypto,
    user_id: u64,
    device_id: u32,
}

impl Device {
    async fn new(client: Client, user_id: u64, device_id: u32) -> Device {
        let storage = Arc::new(MemoryStorage::new());
        let crypto = Crypto::load_or_create(user_id, device_id, storage).unwrap();
        crypto.publish_keys(&client).await.unwrap();
        Device {
            client,
            crypto,
            user_id,
            device_id,
        }
    }

    async fn register(server: &Ternd, name: &str) -> Device {
        let (client, auth) = server.register(name).await;
        Device::new(client, auth.user_id, auth.device_id).await
    }

    async fn login(server: &Ternd, name: &str, device: &str) -> Device {
        let (client, auth) = server.login(name, device).await;
        Device::new(client, auth.user_id, auth.device_id).await
    }

    async fn send(&self, conversation_id: ConversationId, n: u64, text: &str) {
        self.crypto
            .send(
                &self.client,
                conversation_id,
                cmid(self.device_id as u8, n),
                text,
                vec![],
            )
            .await
            .unwrap();
    }

    /// Every message of a conversation, after taking in the keys that arrived.
    async fn history(&self, conversation_id: ConversationId) -> Vec<Message> {
        self.crypto.receive_to_device(&self.client).await.unwrap();
        let page = self.client.history(conversation_id, 0, 0).await.unwrap();
        page.messages
    }

    /// The texts of a conversation, every one decrypted.
    async fn read(&self, conversation_id: ConversationId) -> Vec<String> {
        let mut texts = Vec::new();
        for message in self.history(conversation_id).await {
            let opened = self.crypto.decrypt(&message).await;
            let Decrypted { text, .. } = opened
                .unwrap_or_else(|e| panic!("device {} of {}: {e}", self.device_id, self.user_id));
            texts.push(text);
        }
        texts
    }
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

// Proves two users with two devices each read each other in an encrypted direct conversation,
// every device of every member (the sender's own other device too), and that a group of three
// with five devices works the same; every stored body is an encrypted body.
async fn two_users_two_devices_direct_and_group(engine: &'static str) {
    let server = Ternd::start(engine);
    let a1 = Device::register(&server, "alice").await;
    let a2 = Device::login(&server, "alice", "tablet").await;
    let b1 = Device::register(&server, "bob").await;
    let b2 = Device::login(&server, "bob", "laptop").await;
    let c1 = Device::register(&server, "carol").await;

    let (direct, encrypted) = a1.client.open_direct_encrypted(b1.user_id).await.unwrap();
    assert!(encrypted);
    let direct = direct.conversation_id;
    a1.send(direct, 1, "hi bob").await;
    b2.send(direct, 1, "hi alice, from my laptop").await;
    a2.send(direct, 1, "and from alice's tablet").await;
    let expected = strings(&[
        "hi bob",
        "hi alice, from my laptop",
        "and from alice's tablet",
    ]);
    for device in [&a1, &a2, &b1, &b2] {
        assert_eq!(device.read(direct).await, expected);
    }
    for message in a1.history(direct).await {
        assert!(message.body.starts_with("megolm.v1:"));
    }
    assert!(
        c1.client.history(direct, 0, 0).await.is_err(),
        "carol is no member"
    );

    let group = a1
        .client
        .create_encrypted_group("trio", vec![b1.user_id, c1.user_id])
        .await
        .unwrap()
        .conversation_id;
    c1.send(group, 1, "carol here").await;
    b1.send(group, 2, "bob too").await;
    a2.send(group, 2, "and alice").await;
    let expected = strings(&["carol here", "bob too", "and alice"]);
    for device in [&a1, &a2, &b1, &b2, &c1] {
        assert_eq!(device.read(group).await, expected);
    }
    let changes = a1.crypto.take_device_changes().await;
    assert!(changes.is_empty(), "nobody's devices changed: {changes:?}");
}

/// Whether any file under `dir` contains `needle`.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_owned()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            assert!(files < 100_000, "too many files");
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

// Proves that after the server flushed everything to its files (a graceful stop), its data
// directory (SST, WAL and blob files) holds neither the text nor the attachment of an encrypted
// conversation, while the same check does find a marker sent in a plain conversation; and that
// the attachment decrypts whole for the recipient.
async fn server_keeps_only_ciphertext(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ternd::start_in(engine, dir.path(), &[]);
    let a1 = Device::register(&server, "alice").await;
    let b1 = Device::register(&server, "bob").await;
    let secret = "MARKER-7f3a-secret-text";
    let file_secret = b"MARKER-91c2-secret-attachment".repeat(4096);
    let plain = "MARKER-44d0-plain-text";

    let (direct, _) = a1.client.open_direct_encrypted(b1.user_id).await.unwrap();
    let attachment = a1
        .crypto
        .encrypt_attachment(&a1.client, &file_secret, "text/plain", "secret.txt")
        .await
        .unwrap();
    a1.crypto
        .send(
            &a1.client,
            direct.conversation_id,
            cmid(1, 1),
            secret,
            vec![attachment],
        )
        .await
        .unwrap();
    let carol = server.register("carol").await.0;
    let open = carol.open_direct(a1.user_id).await.unwrap();
    carol
        .send(open.conversation_id, cmid(2, 1), plain)
        .await
        .unwrap();

    let messages = b1.history(direct.conversation_id).await;
    let opened = b1.crypto.decrypt(&messages[0]).await.unwrap();
    assert_eq!(opened.text, secret);
    assert_eq!(opened.attachments.len(), 1);
    let bytes = b1
        .crypto
        .decrypt_attachment(&b1.client, &opened.attachments[0])
        .await
        .unwrap();
    assert_eq!(bytes, file_secret);

    drop((a1, b1, carol));
    assert!(server.terminate().success());
    assert!(
        files_contain(dir.path(), plain.as_bytes()),
        "the search finds plaintext"
    );
    assert!(!files_contain(dir.path(), secret.as_bytes()));
    assert!(!files_contain(dir.path(), &file_secret[..29]));
}

// Proves a device revoked by its user gets no key for what is sent after: holding its old state
// and reading the stored message, it cannot decrypt it, while the user's other device can.
async fn revoked_device_reads_nothing_after(engine: &'static str) {
    let server = Ternd::start(engine);
    let a1 = Device::register(&server, "alice").await;
    let b1 = Device::register(&server, "bob").await;
    let b2 = Device::login(&server, "bob", "stolen phone").await;
    let (direct, _) = a1.client.open_direct_encrypted(b1.user_id).await.unwrap();
    let direct = direct.conversation_id;
    a1.send(direct, 1, "before").await;
    assert_eq!(b2.read(direct).await, strings(&["before"]));

    b1.client.revoke_device(b2.device_id).await.unwrap();
    a1.send(direct, 2, "after").await;
    assert_eq!(b1.read(direct).await, strings(&["before", "after"]));
    let messages = b1.history(direct).await;
    assert!(matches!(
        b2.crypto.decrypt(&messages[1]).await,
        Err(CryptoError::UnknownSession)
    ));
    assert_eq!(
        b2.crypto.decrypt(&messages[0]).await.unwrap().text,
        "before"
    );
}

// Proves a user's new device reads the conversation's earlier messages once another device of
// theirs forwards the keys, and, with no other device online, from the key backup with the
// recovery key (and not with a wrong one).
async fn new_device_reads_old_history(engine: &'static str) {
    let server = Ternd::start(engine);
    let a1 = Device::register(&server, "alice").await;
    let b1 = Device::register(&server, "bob").await;
    let (direct, _) = a1.client.open_direct_encrypted(b1.user_id).await.unwrap();
    let direct = direct.conversation_id;
    a1.send(direct, 1, "one").await;
    b1.send(direct, 1, "two").await;
    a1.send(direct, 2, "three").await;
    let old = strings(&["one", "two", "three"]);
    assert_eq!(a1.read(direct).await, old);

    let a2 = Device::login(&server, "alice", "new phone").await;
    let messages = a2.history(direct).await;
    assert!(matches!(
        a2.crypto.decrypt(&messages[0]).await,
        Err(CryptoError::UnknownSession)
    ));
    let fingerprint = a1
        .crypto
        .devices(&a1.client, &[a1.user_id])
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.device_id == a2.device_id)
        .unwrap()
        .fingerprint();
    assert_eq!(fingerprint, a2.crypto.own_device().await.fingerprint());
    let forwarded = a1
        .crypto
        .share_history_with(&a1.client, a2.device_id)
        .await
        .unwrap();
    assert!(forwarded >= 2, "alice's session and bob's: {forwarded}");
    assert_eq!(a2.read(direct).await, old);

    let recovery = a1.crypto.enable_backup(&a1.client).await.unwrap();
    a1.client.close().await;
    let a3 = Device::login(&server, "alice", "another phone").await;
    let wrong = "0000 ".repeat(16);
    assert!(matches!(
        a3.crypto.restore_backup(&a3.client, &wrong).await,
        Err(CryptoError::BadRecoveryKey)
    ));
    let restored = a3
        .crypto
        .restore_backup(&a3.client, &recovery)
        .await
        .unwrap();
    assert!(restored >= 2);
    assert_eq!(a3.read(direct).await, old);
}

// Proves that once a device's one-time keys are all claimed, a claim gets its fallback key, and
// an Olm session started from it carries a room key the device takes in.
async fn one_time_keys_run_out_to_the_fallback(engine: &'static str) {
    let server = Ternd::start(engine);
    let a1 = Device::register(&server, "alice").await;
    let b1 = Device::register(&server, "bob").await;
    let (mallory, _) = server.register("mallory").await;
    let target = DeviceAddress {
        user_id: b1.user_id,
        device_id: b1.device_id,
    };
    let claim = || frames::ClaimKeys {
        devices: vec![target.clone()],
    };
    let mut fallback = false;
    for _ in 0..=tern_client::crypto::ONE_TIME_KEYS_TARGET {
        let Body::ClaimedKeys(keys) = mallory.request(claim()).await.unwrap() else {
            panic!("not ClaimedKeys");
        };
        fallback = keys.keys[0].fallback;
    }
    assert!(fallback, "the 51st claim is the fallback key");

    let (direct, _) = a1.client.open_direct_encrypted(b1.user_id).await.unwrap();
    a1.send(direct.conversation_id, 1, "through the fallback key")
        .await;
    assert_eq!(
        b1.read(direct.conversation_id).await,
        strings(&["through the fallback key"])
    );
    // Bob took the pre-key message in and topped his keys up: claims get one-time keys again.
    let Body::ClaimedKeys(keys) = mallory.request(claim()).await.unwrap() else {
        panic!("not ClaimedKeys");
    };
    assert!(!keys.keys[0].fallback);
}

// Proves a tampered message, a body that is no envelope, a message moved to another sender and a
// tampered attachment each give a clear error, and nothing panics.
async fn tampered_ciphertext_fails_clearly(engine: &'static str) {
    let server = Ternd::start(engine);
    let a1 = Device::register(&server, "alice").await;
    let b1 = Device::register(&server, "bob").await;
    let (direct, _) = a1.client.open_direct_encrypted(b1.user_id).await.unwrap();
    let direct = direct.conversation_id;
    let file = a1
        .crypto
        .encrypt_attachment(&a1.client, b"attached", "text/plain", "a.txt")
        .await
        .unwrap();
    a1.crypto
        .send(&a1.client, direct, cmid(1, 1), "genuine", vec![file])
        .await
        .unwrap();
    let original = b1.history(direct).await.remove(0);
    let genuine = b1.crypto.decrypt(&original).await.unwrap();
    assert_eq!(genuine.text, "genuine");

    let envelope: MegolmEnvelope = decode_body(&original.body).unwrap();
    for at in [
        0,
        envelope.ciphertext.len() / 2,
        envelope.ciphertext.len() - 1,
    ] {
        let mut bad = envelope.clone();
        bad.ciphertext[at] ^= 0x40;
        let mut message = original.clone();
        message.body = encode_body(&bad).unwrap();
        let result = b1.crypto.decrypt(&message).await;
        assert!(
            matches!(result, Err(CryptoError::Decryption(_))),
            "byte {at}: {result:?}"
        );
    }
    let mut message = original.clone();
    message.body = "megolm.v1:!!!".into();
    assert!(matches!(
        b1.crypto.decrypt(&message).await,
        Err(CryptoError::NotEncrypted)
    ));
    message.body = "megolm.v1:AXNob3J0".into();
    assert!(matches!(
        b1.crypto.decrypt(&message).await,
        Err(CryptoError::Malformed(_))
    ));
    let mut moved = original.clone();
    moved.sender_device += 1;
    assert!(matches!(
        b1.crypto.decrypt(&moved).await,
        Err(CryptoError::WrongSender)
    ));

    let mut tampered = genuine.attachments[0].clone();
    tampered.key[0] ^= 1;
    assert!(matches!(
        b1.crypto.decrypt_attachment(&b1.client, &tampered).await,
        Err(CryptoError::Attachment)
    ));
    let plain = b1
        .crypto
        .decrypt_attachment(&b1.client, &genuine.attachments[0])
        .await
        .unwrap();
    assert_eq!(plain, b"attached");
    assert_eq!(b1.crypto.decrypt(&original).await.unwrap().text, "genuine");
}

// Proves a device's crypto state kept in a file comes back whole when the app starts again: it
// reads what it read before, reads what arrived meanwhile, and sends on its old sessions.
async fn crypto_state_survives_a_restart_of_the_app(engine: &'static str) {
    let server = Ternd::start(engine);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bob.json");
    let a1 = Device::register(&server, "alice").await;
    let (bob, b) = server.register("bob").await;
    let open = |path: &Path| {
        let storage = Arc::new(FileStorage::open(path).unwrap());
        Crypto::load_or_create(b.user_id, b.device_id, storage).unwrap()
    };
    let crypto = open(&path);
    crypto.publish_keys(&bob).await.unwrap();
    let fingerprint = crypto.own_device().await.fingerprint();
    let b1 = Device {
        client: bob,
        crypto,
        user_id: b.user_id,
        device_id: b.device_id,
    };
    let (direct, _) = a1.client.open_direct_encrypted(b.user_id).await.unwrap();
    let direct = direct.conversation_id;
    a1.send(direct, 1, "before the restart").await;
    b1.send(direct, 1, "bob answers").await;
    assert_eq!(
        b1.read(direct).await,
        strings(&["before the restart", "bob answers"])
    );
    a1.send(direct, 2, "while bob is away").await;
    let Device { client, .. } = b1;

    let again = Device {
        crypto: open(&path),
        client,
        user_id: b.user_id,
        device_id: b.device_id,
    };
    assert_eq!(again.crypto.own_device().await.fingerprint(), fingerprint);
    again.send(direct, 2, "bob is back").await;
    let all = strings(&[
        "before the restart",
        "bob answers",
        "while bob is away",
        "bob is back",
    ]);
    assert_eq!(again.read(direct).await, all);
    assert_eq!(a1.read(direct).await, all);
}
