//! End-to-end encryption (spec §19): a device's [`Crypto`] machine.
//!
//! The cryptography is vodozemac's, Matrix's audited implementation: an Olm account per device
//! (identity keys, one-time keys, a fallback key), Olm sessions between devices, and Megolm
//! sessions for conversations. Attachments and the key backup are AES-256-GCM, and the backup key
//! is HKDF-SHA256 of the recovery key, both from ring. Nothing here is a hand-made primitive or
//! ratchet: this module lays out the bytes of the spec's payload formats around what those
//! libraries produce, and decides who gets which key.
//!
//! # What it does
//!
//! - [`Crypto::publish_keys`] publishes the device's identity and tops its one-time keys up to
//!   [`ONE_TIME_KEYS_TARGET`] (and a fresh fallback key once the old one was used).
//! - [`Crypto::encrypt`] encrypts a message for a conversation with the device's outbound Megolm
//!   session there, first sharing that session's key (through Olm, as to-device messages) with
//!   every device of every member, the user's own other devices included, that does not have it.
//!   The session is replaced when a device that had it is gone (revoked, or its user left), so a
//!   revoked device gets no key for what follows; and after [`MESSAGES_PER_SESSION_MAX`] messages.
//! - [`Crypto::receive_to_device`] and [`Crypto::handle_to_device`] take room keys in.
//! - [`Crypto::decrypt`] opens a message; a tampered one is [`CryptoError::Decryption`].
//! - [`Crypto::share_history_with`] forwards every key this device holds to another device of the
//!   same user (a new phone), and [`Crypto::enable_backup`] / [`Crypto::restore_backup`] keep them
//!   on the server under a recovery key, for when no other device is online.
//! - [`Crypto::encrypt_attachment`] / [`Crypto::decrypt_attachment`], fingerprints and
//!   [`Crypto::safety_number`].
//!
//! # State
//!
//! The machine keeps everything in the app's [`Storage`] ([`Storage::save_crypto`]), written
//! before anything that depends on it leaves the device: a Megolm ratchet is saved before the
//! message it encrypted is returned, one-time keys before they are published, received keys
//! before the to-device messages that carried them are acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tern_protocol::e2e::*;
use tern_protocol::frames::{self, ToDevicePage};
use tern_protocol::limits::{FORWARDED_KEYS_MAX, KEY_QUERY_USERS_MAX};
use tern_protocol::types::{ConversationId, DeviceId, Message, UserId};
use tern_protocol::{Body, Update, UpdateKind};
use tokio::sync::Mutex;
use vodozemac::megolm::{
    ExportedSessionKey, GroupSession, GroupSessionPickle, InboundGroupSession,
    InboundGroupSessionPickle, MegolmMessage, SessionConfig as MegolmConfig, SessionKey,
};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use crate::{Client, ClientError, Event, Storage, StorageError};

/// One-time keys a device keeps published.
pub const ONE_TIME_KEYS_TARGET: u32 = 50;
/// Messages one outbound Megolm session encrypts before it is replaced.
pub const MESSAGES_PER_SESSION_MAX: u32 = 100;
/// To-device messages one `SendToDevice` carries (each room key is well under a kilobyte).
const TO_DEVICE_BATCH_MAX: usize = 128;
/// Backup entries one `PutBackup` carries.
const BACKUP_BATCH_MAX: usize = 256;
/// Pages of to-device messages or backup entries one call reads at most.
const PAGES_MAX: usize = 10_000;

/// Why end-to-end encryption failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A request to the server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The state could not be stored.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The body is not an encrypted body (`megolm.v1:` and base64).
    #[error("not an encrypted message")]
    NotEncrypted,
    /// A payload is not laid out as the spec says.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// No key for the message's session has arrived (yet): receive to-device messages, ask
    /// another device of the user to share history, or restore the backup.
    #[error("no key for this message's session")]
    UnknownSession,
    /// The message names a sender or conversation other than the session's.
    #[error("the message does not come from where its session says")]
    WrongSender,
    /// The ciphertext was altered or is not for this key: nothing is shown.
    #[error("decryption failed: {0}")]
    Decryption(String),
    /// A device's keys are not signed as they should be.
    #[error("bad signature on the keys of user {user_id} device {device_id}")]
    BadSignature {
        /// The user.
        user_id: UserId,
        /// The device.
        device_id: DeviceId,
    },
    /// The saved state could not be read back.
    #[error("crypto state: {0}")]
    State(String),
    /// A recovery key is not 64 hexadecimal digits, or is not the backup's.
    #[error("wrong or malformed recovery key")]
    BadRecoveryKey,
    /// The user has no such device with published keys.
    #[error("no device {0} with published keys")]
    UnknownDevice(DeviceId),
    /// The downloaded attachment does not match its hash, or its tag fails.
    #[error("attachment does not match its key and hash")]
    Attachment,
}

/// A device as the key directory lists it, its signature checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownDevice {
    /// The user.
    pub user_id: UserId,
    /// The device.
    pub device_id: DeviceId,
    /// Its Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Its Ed25519 identity key: what its fingerprint shows.
    pub ed25519: [u8; 32],
}

impl KnownDevice {
    /// The device's fingerprint (§19.8).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.ed25519)
    }
}

/// A decrypted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrypted {
    /// The text.
    pub text: String,
    /// The attachments, with their keys.
    pub attachments: Vec<EncryptedFile>,
}

/// A device's fingerprint: its Ed25519 key in unpadded base64, in groups of four (§19.8).
pub fn fingerprint(ed25519: &[u8; 32]) -> String {
    let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(ed25519);
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The safety number of two users from their devices' Ed25519 keys (§19.8): six groups of five
/// digits, the same whichever side computes it.
pub fn safety_number(a: (UserId, &[[u8; 32]]), b: (UserId, &[[u8; 32]])) -> String {
    let side = |(user_id, keys): (UserId, &[[u8; 32]])| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"TERN-SAFETY-V1");
        ctx.update(&user_id.to_be_bytes());
        for key in keys {
            ctx.update(key);
        }
        ctx.finish()
    };
    let (ha, hb) = (side(a), side(b));
    let (lo, hi) = if ha.as_ref() <= hb.as_ref() {
        (ha, hb)
    } else {
        (hb, ha)
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(lo.as_ref());
    ctx.update(hi.as_ref());
    let s = ctx.finish();
    s.as_ref()[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The encrypted body that carries a Megolm envelope (§19.9.1).
pub fn encode_body(envelope: &MegolmEnvelope) -> Result<String, CryptoError> {
    let bytes = to_bytes(envelope).map_err(|_| CryptoError::Malformed("message"))?;
    Ok(format!(
        "{ENCRYPTED_BODY_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The Megolm envelope of an encrypted body.
pub fn decode_body(body: &str) -> Result<MegolmEnvelope, CryptoError> {
    let encoded = body
        .strip_prefix(ENCRYPTED_BODY_PREFIX)
        .ok_or(CryptoError::NotEncrypted)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| CryptoError::NotEncrypted)?;
    from_bytes(&bytes, "envelope").map_err(|_| CryptoError::Malformed("envelope"))
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The system's randomness failing is no state a chat app can go on from.
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(&mut out)
        .expect("the system's random number generator");
    out
}

fn b64_32(text: &str) -> Result<[u8; 32], CryptoError> {
    vodozemac::base64_decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::Malformed("session id"))
}

fn aead(key: &[u8; 32]) -> Result<LessSafeKey, CryptoError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Malformed("key"))
}

fn seal(
    key: &[u8; 32],
    nonce: [u8; 12],
    aad: &[u8],
    data: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    aead(key)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
        .map_err(|_| CryptoError::Malformed("plaintext"))
}

fn open(
    key: &[u8; 32],
    nonce: [u8; 12],
    aad: &[u8],
    data: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let len = aead(key)?
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
        .map_err(|_| CryptoError::Attachment)?
        .len();
    data.truncate(len);
    Ok(())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// The backup key of a recovery key (§19.9.4).
fn backup_key(recovery: &[u8; 32]) -> [u8; 32] {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(recovery);
    // 32 bytes is far below HKDF-SHA256's limit, so expanding cannot fail.
    if let Ok(okm) = prk.expand(&[b"TERN-BACKUP-V1"], Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// A recovery key as the user sees it: 64 hexadecimal digits in groups of four.
pub fn format_recovery_key(key: &[u8; 32]) -> String {
    key.chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_recovery_key(text: &str) -> Result<[u8; 32], CryptoError> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() != 64 {
        return Err(CryptoError::BadRecoveryKey);
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).map_err(|_| CryptoError::BadRecoveryKey)?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| CryptoError::BadRecoveryKey)?;
    }
    Ok(out)
}

fn key_id(id: vodozemac::KeyId) -> u64 {
    let bytes = vodozemac::base64_decode(id.to_base64()).unwrap_or_default();
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// An outbound Megolm session and the devices that have its key.
struct Outbound {
    session: GroupSession,
    shared_with: BTreeSet<(UserId, DeviceId)>,
    messages: u32,
}

/// An inbound Megolm session: who created it, for which conversation.
struct Inbound {
    conversation_id: ConversationId,
    sender: UserId,
    sender_device: DeviceId,
    session: InboundGroupSession,
}

/// What is stored.
#[derive(Serialize, Deserialize)]
struct SavedState {
    user_id: UserId,
    device_id: DeviceId,
    account: AccountPickle,
    olm: Vec<([u8; 32], Vec<SessionPickle>)>,
    outbound: Vec<SavedOutbound>,
    inbound: Vec<SavedInbound>,
    devices: Vec<KnownDevice>,
    to_device_cursor: u64,
    backup_key: Option<[u8; 32]>,
    backed_up: Vec<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
struct SavedOutbound {
    conversation_id: ConversationId,
    session: GroupSessionPickle,
    shared_with: Vec<(UserId, DeviceId)>,
    messages: u32,
}

#[derive(Serialize, Deserialize)]
struct SavedInbound {
    conversation_id: ConversationId,
    sender: UserId,
    sender_device: DeviceId,
    session: InboundGroupSessionPickle,
}

/// The machine's state, behind [`Crypto`]'s lock.
struct Machine {
    user_id: UserId,
    device_id: DeviceId,
    account: Account,
    /// Olm sessions by the other device's Curve25519 key, the one to send with last.
    olm: HashMap<[u8; 32], Vec<Session>>,
    outbound: HashMap<ConversationId, Outbound>,
    /// Inbound Megolm sessions by session id.
    inbound: HashMap<[u8; 32], Inbound>,
    /// Devices by user, as last fetched.
    devices: HashMap<UserId, Vec<KnownDevice>>,
    to_device_cursor: u64,
    backup_key: Option<[u8; 32]>,
    backed_up: BTreeSet<[u8; 32]>,
    /// Users whose devices changed since the app last asked ([`Crypto::take_device_changes`]).
    changed: BTreeSet<UserId>,
    /// Whether a pre-key message used a one-time key: publish more.
    top_up: bool,
}

/// A device's end-to-end encryption: see the module docs.
pub struct Crypto {
    storage: Arc<dyn Storage>,
    machine: Mutex<Machine>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto").finish_non_exhaustive()
    }
}

impl Crypto {
    /// The machine of device `device_id` of `user_id`: loaded from `storage`, or a new Olm
    /// account when it holds none for this device.
    pub fn load_or_create(
        user_id: UserId,
        device_id: DeviceId,
        storage: Arc<dyn Storage>,
    ) -> Result<Crypto, CryptoError> {
        let stored = storage.load()?.crypto;
        let machine = match stored {
            Some(text) => {
                let saved: SavedState =
                    serde_json::from_str(&text).map_err(|e| CryptoError::State(e.to_string()))?;
                if saved.user_id == user_id && saved.device_id == device_id {
                    Some(Machine::from_saved(saved))
                } else {
                    None
                }
            }
            None => None,
        };
        let machine = match machine {
            Some(m) => m,
            None => {
                let m = Machine::new(user_id, device_id);
                storage.save_crypto(&m.save()?)?;
                m
            }
        };
        Ok(Crypto {
            storage,
            machine: Mutex::new(machine),
        })
    }

    async fn save(&self, machine: &Machine) -> Result<(), CryptoError> {
        self.storage.save_crypto(&machine.save()?)?;
        Ok(())
    }

    /// This device's identity keys, as other devices see them.
    pub async fn own_device(&self) -> KnownDevice {
        self.machine.lock().await.own_device()
    }

    /// Publishes the device's identity and tops its one-time keys (and fallback key) up.
    pub async fn publish_keys(&self, client: &Client) -> Result<(), CryptoError> {
        let mut m = self.machine.lock().await;
        self.publish_locked(client, &mut m).await
    }

    async fn publish_locked(&self, client: &Client, m: &mut Machine) -> Result<(), CryptoError> {
        let identity = m.identity();
        let counts = client
            .request(frames::PublishKeys {
                identity: Some(Box::new(identity)),
                ..frames::PublishKeys::default()
            })
            .await?;
        let Body::KeysPublished(counts) = counts else {
            return Err(CryptoError::Malformed("reply to PublishKeys"));
        };
        let missing = ONE_TIME_KEYS_TARGET.saturating_sub(counts.one_time_keys_left);
        if missing > 0 {
            m.account.generate_one_time_keys(missing as usize);
        }
        if counts.fallback_key_used {
            m.account.generate_fallback_key();
        }
        // The private halves are stored before the public ones leave the device.
        self.save(m).await?;
        let (one_time_keys, fallback_key) = m.unpublished_keys();
        if !one_time_keys.is_empty() || fallback_key.is_some() {
            let reply = client
                .request(frames::PublishKeys {
                    identity: None,
                    one_time_keys,
                    fallback_key: fallback_key.map(Box::new),
                })
                .await?;
            if !matches!(reply, Body::KeysPublished(_)) {
                return Err(CryptoError::Malformed("reply to PublishKeys"));
            }
        }
        m.account.mark_keys_as_published();
        m.top_up = false;
        self.save(m).await
    }

    /// The devices of users, fetched from the directory now (signatures checked); remembers
    /// which users' devices changed since the last fetch.
    pub async fn devices(
        &self,
        client: &Client,
        users: &[UserId],
    ) -> Result<Vec<KnownDevice>, CryptoError> {
        let mut m = self.machine.lock().await;
        let devices = m.fetch_devices(client, users).await?;
        self.save(&m).await?;
        Ok(devices)
    }

    /// The users whose devices changed (added, revoked) since the last call: show a warning.
    pub async fn take_device_changes(&self) -> Vec<UserId> {
        let mut m = self.machine.lock().await;
        std::mem::take(&mut m.changed).into_iter().collect()
    }

    /// Looks at an update: a `DeviceListChanged` refreshes that user's devices (so a change is
    /// noticed and [`Crypto::take_device_changes`] reports it). Returns whether it was one.
    pub async fn handle_update(
        &self,
        client: &Client,
        update: &Update,
    ) -> Result<bool, CryptoError> {
        let UpdateKind::DeviceListChanged(change) = &update.kind else {
            return Ok(false);
        };
        self.devices(client, &[change.user_id]).await?;
        Ok(true)
    }

    /// The safety number of the user and `other` (§19.8), from their devices now.
    pub async fn safety_number(
        &self,
        client: &Client,
        other: UserId,
    ) -> Result<String, CryptoError> {
        let me = self.machine.lock().await.user_id;
        let devices = self.devices(client, &[me, other]).await?;
        let keys = |user: UserId| -> Vec<[u8; 32]> {
            let mut mine: Vec<&KnownDevice> =
                devices.iter().filter(|d| d.user_id == user).collect();
            mine.sort_by_key(|d| d.device_id);
            mine.iter().map(|d| d.ed25519).collect()
        };
        let (a, b) = (keys(me), keys(other));
        Ok(safety_number((me, &a), (other, &b)))
    }

    // ------------------------------------------------------------------ sending

    /// Encrypts `text` and `attachments` for a conversation: the body to send (§19.9.1). Shares
    /// the conversation's room key first with every device of every member that lacks it.
    pub async fn encrypt(
        &self,
        client: &Client,
        conversation_id: ConversationId,
        text: &str,
        attachments: Vec<EncryptedFile>,
    ) -> Result<String, CryptoError> {
        let conversation = client.get_conversation(conversation_id).await?;
        let members: Vec<UserId> = conversation.members.iter().map(|m| m.user_id).collect();
        let mut m = self.machine.lock().await;
        let mut users = members;
        if !users.contains(&m.user_id) {
            users.push(m.user_id);
        }
        let devices = m.fetch_devices(client, &users).await?;
        let me = (m.user_id, m.device_id);
        let recipients: Vec<KnownDevice> = devices
            .into_iter()
            .filter(|d| (d.user_id, d.device_id) != me)
            .collect();
        let present: BTreeSet<(UserId, DeviceId)> = recipients
            .iter()
            .map(|d| (d.user_id, d.device_id))
            .collect();
        let rotate = match m.outbound.get(&conversation_id) {
            None => true,
            Some(out) => {
                out.messages >= MESSAGES_PER_SESSION_MAX
                    || out.shared_with.iter().any(|d| !present.contains(d))
            }
        };
        if rotate {
            m.new_outbound(conversation_id);
            self.save(&m).await?;
        }
        let lacking: Vec<KnownDevice> = {
            let out = m
                .outbound
                .get(&conversation_id)
                .ok_or(CryptoError::State("outbound session".into()))?;
            recipients
                .into_iter()
                .filter(|d| !out.shared_with.contains(&(d.user_id, d.device_id)))
                .collect()
        };
        if !lacking.is_empty() {
            self.share_room_key(client, &mut m, conversation_id, &lacking)
                .await?;
        }
        let content = RoomContent {
            version: PAYLOAD_VERSION,
            conversation_id,
            text: text.to_owned(),
            attachments,
        };
        let plaintext = to_bytes(&content).map_err(|_| CryptoError::Malformed("message"))?;
        let out = m
            .outbound
            .get_mut(&conversation_id)
            .ok_or(CryptoError::State("outbound session".into()))?;
        let session_id = b64_32(&out.session.session_id())?;
        let ciphertext = out.session.encrypt(&plaintext).to_bytes();
        out.messages += 1;
        let body = encode_body(&MegolmEnvelope {
            version: PAYLOAD_VERSION,
            session_id,
            ciphertext,
        })?;
        // The ratchet moved: stored before the message can leave.
        self.save(&m).await?;
        Ok(body)
    }

    /// Encrypts and sends a message (see [`Crypto::encrypt`]); its attachments' media ids go in
    /// the `Send` so that the members may download them.
    pub async fn send(
        &self,
        client: &Client,
        conversation_id: ConversationId,
        client_msg_id: [u8; 16],
        text: &str,
        attachments: Vec<EncryptedFile>,
    ) -> Result<frames::Sent, CryptoError> {
        let media: Vec<u64> = attachments.iter().map(|a| a.media_id).collect();
        let body = self
            .encrypt(client, conversation_id, text, attachments)
            .await?;
        Ok(client
            .send_with_attachments(conversation_id, client_msg_id, &body, media)
            .await?)
    }

    async fn share_room_key(
        &self,
        client: &Client,
        m: &mut Machine,
        conversation_id: ConversationId,
        devices: &[KnownDevice],
    ) -> Result<(), CryptoError> {
        let (session_id, session_key) = {
            let out = m
                .outbound
                .get(&conversation_id)
                .ok_or(CryptoError::State("outbound session".into()))?;
            (
                b64_32(&out.session.session_id())?,
                out.session.session_key().to_bytes(),
            )
        };
        let body = to_bytes(&RoomKey {
            conversation_id,
            session_id,
            session_key,
        })
        .map_err(|_| CryptoError::Malformed("room key"))?;
        let delivered = self
            .send_olm(client, m, devices, CONTENT_ROOM_KEY, &body)
            .await?;
        if let Some(out) = m.outbound.get_mut(&conversation_id) {
            out.shared_with.extend(delivered);
        }
        self.save(m).await
    }

    /// Olm-encrypts one content for each device (starting sessions where needed) and sends them;
    /// returns the devices whose messages the server queued.
    async fn send_olm(
        &self,
        client: &Client,
        m: &mut Machine,
        devices: &[KnownDevice],
        kind: u8,
        body: &[u8],
    ) -> Result<Vec<(UserId, DeviceId)>, CryptoError> {
        m.ensure_olm_sessions(client, devices).await?;
        let mut outgoing = Vec::new();
        for device in devices {
            let Some(payload) = m.olm_encrypt(device, kind, body)? else {
                continue;
            };
            outgoing.push(ToDeviceOut {
                to: DeviceAddress {
                    user_id: device.user_id,
                    device_id: device.device_id,
                },
                payload,
            });
        }
        // The Olm ratchets moved: stored before the messages leave.
        self.save(m).await?;
        let mut delivered = Vec::new();
        for chunk in outgoing.chunks(TO_DEVICE_BATCH_MAX) {
            let reply = client
                .request(frames::SendToDevice {
                    messages: chunk.to_vec(),
                })
                .await?;
            let Body::ToDeviceSent(sent) = reply else {
                return Err(CryptoError::Malformed("reply to SendToDevice"));
            };
            let undelivered: BTreeSet<(UserId, DeviceId)> = sent
                .undelivered
                .iter()
                .map(|d| (d.user_id, d.device_id))
                .collect();
            delivered.extend(
                chunk
                    .iter()
                    .map(|o| (o.to.user_id, o.to.device_id))
                    .filter(|d| !undelivered.contains(d)),
            );
        }
        Ok(delivered)
    }

    // ------------------------------------------------------------------ receiving

    /// Opens an encrypted message.
    pub async fn decrypt(&self, message: &Message) -> Result<Decrypted, CryptoError> {
        let envelope = decode_body(&message.body)?;
        let megolm = MegolmMessage::from_bytes(&envelope.ciphertext)
            .map_err(|e| CryptoError::Decryption(e.to_string()))?;
        let mut m = self.machine.lock().await;
        let inbound = m
            .inbound
            .get_mut(&envelope.session_id)
            .ok_or(CryptoError::UnknownSession)?;
        if inbound.sender != message.sender
            || inbound.sender_device != message.sender_device
            || inbound.conversation_id != message.conversation_id
        {
            return Err(CryptoError::WrongSender);
        }
        let plaintext = inbound
            .session
            .decrypt(&megolm)
            .map_err(|e| CryptoError::Decryption(e.to_string()))?
            .plaintext;
        let content: RoomContent =
            from_bytes(&plaintext, "content").map_err(|_| CryptoError::Malformed("content"))?;
        if content.conversation_id != message.conversation_id {
            return Err(CryptoError::WrongSender);
        }
        Ok(Decrypted {
            text: content.text,
            attachments: content.attachments,
        })
    }

    /// Reads the device's to-device queue to its end, takes in the keys it carries, and
    /// acknowledges them once stored. Returns how many messages it read.
    ///
    /// This makes the connection to-device live: from then on the server sends each new
    /// to-device message as an [`Event::ToDevice`], which the app passes to
    /// [`Crypto::handle_event`] (and must read, like every event, or the connection stalls once
    /// its event buffer is full).
    pub async fn receive_to_device(&self, client: &Client) -> Result<usize, CryptoError> {
        let mut m = self.machine.lock().await;
        let mut read = 0;
        for _ in 0..PAGES_MAX {
            let reply = client
                .request(frames::ToDeviceSync {
                    since: m.to_device_cursor,
                    limit: 0,
                })
                .await?;
            let Body::ToDevicePage(ToDevicePage {
                messages,
                has_more,
                one_time_keys_left,
                ..
            }) = reply
            else {
                return Err(CryptoError::Malformed("reply to ToDeviceSync"));
            };
            for message in &messages {
                m.take_in(client, message).await;
                m.to_device_cursor = m.to_device_cursor.max(message.seq);
            }
            read += messages.len();
            self.save(&m).await?;
            if one_time_keys_left < ONE_TIME_KEYS_TARGET / 2 {
                m.top_up = true;
            }
            if !has_more {
                break;
            }
        }
        // What was read is stored: the next ToDeviceSync would delete it; say so now.
        client
            .notify(frames::ToDeviceAck {
                up_to: m.to_device_cursor,
            })
            .await?;
        if m.top_up {
            self.publish_locked(client, &mut m).await?;
        }
        Ok(read)
    }

    /// Takes in one live to-device message and acknowledges it once stored.
    pub async fn handle_to_device(
        &self,
        client: &Client,
        message: &ToDeviceMessage,
    ) -> Result<(), CryptoError> {
        let mut m = self.machine.lock().await;
        if message.seq > m.to_device_cursor {
            m.take_in(client, message).await;
            m.to_device_cursor = message.seq;
            self.save(&m).await?;
        }
        client
            .notify(frames::ToDeviceAck {
                up_to: m.to_device_cursor,
            })
            .await?;
        if m.top_up {
            self.publish_locked(client, &mut m).await?;
        }
        Ok(())
    }

    /// Handles an event that concerns encryption (a to-device message, a key count); returns
    /// whether it was one.
    pub async fn handle_event(&self, client: &Client, event: &Event) -> Result<bool, CryptoError> {
        match event {
            Event::ToDevice(message) => self.handle_to_device(client, message).await.map(|()| true),
            Event::KeyCount(count) => {
                if count.one_time_keys_left < ONE_TIME_KEYS_TARGET / 2 || count.fallback_key_used {
                    self.publish_keys(client).await?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    // ------------------------------------------------------------------ history on new devices

    /// Forwards every room key this device holds to another device of the same user (after the
    /// user compared its fingerprint), so it can read earlier messages. Returns how many.
    pub async fn share_history_with(
        &self,
        client: &Client,
        device_id: DeviceId,
    ) -> Result<usize, CryptoError> {
        let mut m = self.machine.lock().await;
        let me = m.user_id;
        let devices = m.fetch_devices(client, &[me]).await?;
        let Some(device) = devices.into_iter().find(|d| d.device_id == device_id) else {
            return Err(CryptoError::UnknownDevice(device_id));
        };
        let keys = m.exported_keys();
        for chunk in keys.chunks(FORWARDED_KEYS_MAX as usize) {
            let body = to_bytes(&ForwardedRoomKeys {
                keys: chunk.to_vec(),
            })
            .map_err(|_| CryptoError::Malformed("forwarded keys"))?;
            self.send_olm(
                client,
                &mut m,
                std::slice::from_ref(&device),
                CONTENT_FORWARDED_ROOM_KEYS,
                &body,
            )
            .await?;
        }
        Ok(keys.len())
    }

    /// Starts a key backup under a new recovery key (deleting any older backup) and uploads every
    /// room key. Returns the recovery key to show the user once.
    pub async fn enable_backup(&self, client: &Client) -> Result<String, CryptoError> {
        let recovery: [u8; 32] = random();
        {
            let mut m = self.machine.lock().await;
            m.backup_key = Some(backup_key(&recovery));
            m.backed_up.clear();
            self.save(&m).await?;
        }
        match client.request(frames::DeleteBackup {}).await? {
            Body::Ok(_) => {}
            _ => return Err(CryptoError::Malformed("reply to DeleteBackup")),
        }
        self.upload_backup(client).await?;
        Ok(format_recovery_key(&recovery))
    }

    /// Uploads the room keys not yet in the backup (when a backup is enabled). Returns how many.
    pub async fn upload_backup(&self, client: &Client) -> Result<usize, CryptoError> {
        let mut m = self.machine.lock().await;
        let Some(key) = m.backup_key else {
            return Ok(0);
        };
        let fresh: Vec<ForwardedRoomKey> = m
            .exported_keys()
            .into_iter()
            .filter(|k| !m.backed_up.contains(&k.session_id))
            .collect();
        for chunk in fresh.chunks(BACKUP_BATCH_MAX) {
            let mut entries = Vec::with_capacity(chunk.len());
            for k in chunk {
                let mut data = to_bytes(k).map_err(|_| CryptoError::Malformed("backup"))?;
                let nonce: [u8; 12] = random();
                seal(&key, nonce, &k.session_id, &mut data)?;
                let entry = BackupData {
                    version: PAYLOAD_VERSION,
                    nonce,
                    ciphertext: data,
                };
                entries.push(BackupEntry {
                    entry_id: k.session_id,
                    data: to_bytes(&entry).map_err(|_| CryptoError::Malformed("backup"))?,
                });
            }
            match client.request(frames::PutBackup { entries }).await? {
                Body::Ok(_) => {}
                _ => return Err(CryptoError::Malformed("reply to PutBackup")),
            }
            m.backed_up.extend(chunk.iter().map(|k| k.session_id));
            self.save(&m).await?;
        }
        Ok(fresh.len())
    }

    /// Restores room keys from the backup with the user's recovery key, and keeps backing up to
    /// it. Returns how many keys it imported.
    pub async fn restore_backup(
        &self,
        client: &Client,
        recovery_key: &str,
    ) -> Result<usize, CryptoError> {
        let key = backup_key(&parse_recovery_key(recovery_key)?);
        let mut m = self.machine.lock().await;
        let mut after = [0u8; 32];
        let mut imported = 0;
        let mut opened = 0;
        let mut seen = 0;
        for _ in 0..PAGES_MAX {
            let reply = client
                .request(frames::GetBackup { after, limit: 0 })
                .await?;
            let Body::BackupPage(page) = reply else {
                return Err(CryptoError::Malformed("reply to GetBackup"));
            };
            for entry in &page.entries {
                seen += 1;
                after = entry.entry_id;
                let Ok(data) = from_bytes::<BackupData>(&entry.data, "backup") else {
                    continue;
                };
                let mut plaintext = data.ciphertext;
                if open(&key, data.nonce, &entry.entry_id, &mut plaintext).is_err() {
                    continue;
                }
                opened += 1;
                let Ok(forwarded) = from_bytes::<ForwardedRoomKey>(&plaintext, "backup") else {
                    continue;
                };
                if m.import(&forwarded) {
                    imported += 1;
                }
                m.backed_up.insert(entry.entry_id);
            }
            if !page.has_more {
                break;
            }
        }
        if seen > 0 && opened == 0 {
            return Err(CryptoError::BadRecoveryKey);
        }
        m.backup_key = Some(key);
        self.save(&m).await?;
        Ok(imported)
    }

    // ------------------------------------------------------------------ attachments

    /// Encrypts a file (AES-256-GCM, a fresh key), uploads the ciphertext as
    /// `application/octet-stream`, and returns its description for the message (§19.9.3).
    pub async fn encrypt_attachment(
        &self,
        client: &Client,
        data: &[u8],
        mime: &str,
        name: &str,
    ) -> Result<EncryptedFile, CryptoError> {
        let key: [u8; 32] = random();
        let nonce: [u8; 12] = random();
        let mut sealed = data.to_vec();
        seal(&key, nonce, &[], &mut sealed)?;
        let sha256 = sha256(&sealed);
        let info = client.upload(&sealed, "application/octet-stream").await?;
        Ok(EncryptedFile {
            media_id: info.media_id,
            size: data.len() as u64,
            mime: mime.to_owned(),
            name: name.to_owned(),
            key,
            nonce,
            sha256,
        })
    }

    /// Downloads an encrypted attachment, checks its hash and decrypts it.
    pub async fn decrypt_attachment(
        &self,
        client: &Client,
        file: &EncryptedFile,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut data = client.download(file.media_id).await?;
        if sha256(&data) != file.sha256 {
            return Err(CryptoError::Attachment);
        }
        open(&file.key, file.nonce, &[], &mut data)?;
        if data.len() as u64 != file.size {
            return Err(CryptoError::Attachment);
        }
        Ok(data)
    }
}

impl Machine {
    fn new(user_id: UserId, device_id: DeviceId) -> Machine {
        Machine {
            user_id,
            device_id,
            account: Account::new(),
            olm: HashMap::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            devices: HashMap::new(),
            to_device_cursor: 0,
            backup_key: None,
            backed_up: BTreeSet::new(),
            changed: BTreeSet::new(),
            top_up: false,
        }
    }

    fn from_saved(saved: SavedState) -> Machine {
        let mut devices: HashMap<UserId, Vec<KnownDevice>> = HashMap::new();
        for d in saved.devices {
            devices.entry(d.user_id).or_default().push(d);
        }
        Machine {
            user_id: saved.user_id,
            device_id: saved.device_id,
            account: Account::from_pickle(saved.account),
            olm: saved
                .olm
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().map(Session::from_pickle).collect()))
                .collect(),
            outbound: saved
                .outbound
                .into_iter()
                .map(|o| {
                    (
                        o.conversation_id,
                        Outbound {
                            session: GroupSession::from_pickle(o.session),
                            shared_with: o.shared_with.into_iter().collect(),
                            messages: o.messages,
                        },
                    )
                })
                .collect(),
            inbound: saved
                .inbound
                .into_iter()
                .filter_map(|i| {
                    let session = InboundGroupSession::from_pickle(i.session);
                    let id = b64_32(&session.session_id()).ok()?;
                    Some((
                        id,
                        Inbound {
                            conversation_id: i.conversation_id,
                            sender: i.sender,
                            sender_device: i.sender_device,
                            session,
                        },
                    ))
                })
                .collect(),
            devices,
            to_device_cursor: saved.to_device_cursor,
            backup_key: saved.backup_key,
            backed_up: saved.backed_up.into_iter().collect(),
            changed: BTreeSet::new(),
            top_up: false,
        }
    }

    fn save(&self) -> Result<String, CryptoError> {
        let saved = SavedState {
            user_id: self.user_id,
            device_id: self.device_id,
            account: self.account.pickle(),
            olm: self
                .olm
                .iter()
                .map(|(k, v)| (*k, v.iter().map(Session::pickle).collect()))
                .collect(),
            outbound: self
                .outbound
                .iter()
                .map(|(c, o)| SavedOutbound {
                    conversation_id: *c,
                    session: o.session.pickle(),
                    shared_with: o.shared_with.iter().copied().collect(),
                    messages: o.messages,
                })
                .collect(),
            inbound: self
                .inbound
                .values()
                .map(|i| SavedInbound {
                    conversation_id: i.conversation_id,
                    sender: i.sender,
                    sender_device: i.sender_device,
                    session: i.session.pickle(),
                })
                .collect(),
            devices: self.devices.values().flatten().cloned().collect(),
            to_device_cursor: self.to_device_cursor,
            backup_key: self.backup_key,
            backed_up: self.backed_up.iter().copied().collect(),
        };
        serde_json::to_string(&saved).map_err(|e| CryptoError::State(e.to_string()))
    }

    fn own_device(&self) -> KnownDevice {
        KnownDevice {
            user_id: self.user_id,
            device_id: self.device_id,
            curve25519: self.account.curve25519_key().to_bytes(),
            ed25519: *self.account.ed25519_key().as_bytes(),
        }
    }

    fn identity(&self) -> DeviceKeys {
        let own = self.own_device();
        let mut keys = DeviceKeys {
            device_id: self.device_id,
            curve25519: own.curve25519,
            ed25519: own.ed25519,
            signature: Signature::default(),
        };
        let signature = self
            .account
            .sign(identity_signed_bytes(self.user_id, &keys));
        keys.signature = Signature(signature.to_bytes());
        keys
    }

    fn signed(&self, key_id: u64, key: Curve25519PublicKey) -> SignedKey {
        let mut signed = SignedKey {
            key_id,
            key: key.to_bytes(),
            signature: Signature::default(),
        };
        let signature = self
            .account
            .sign(key_signed_bytes(self.user_id, self.device_id, &signed));
        signed.signature = Signature(signature.to_bytes());
        signed
    }

    /// The one-time keys and fallback key not yet published, signed.
    fn unpublished_keys(&self) -> (Vec<SignedKey>, Option<SignedKey>) {
        let one_time = self
            .account
            .one_time_keys()
            .into_iter()
            .map(|(id, key)| self.signed(key_id(id), key))
            .collect();
        let fallback = self
            .account
            .fallback_key()
            .into_iter()
            .next()
            .map(|(id, key)| self.signed(key_id(id), key));
        (one_time, fallback)
    }

    /// Fetches users' devices from the directory, keeps those whose identity signature checks,
    /// and notes the users whose devices changed.
    async fn fetch_devices(
        &mut self,
        client: &Client,
        users: &[UserId],
    ) -> Result<Vec<KnownDevice>, CryptoError> {
        let mut out = Vec::new();
        for chunk in users.chunks(KEY_QUERY_USERS_MAX as usize) {
            let reply = client
                .request(frames::GetDeviceKeys {
                    user_ids: chunk.to_vec(),
                })
                .await?;
            let Body::DeviceKeysList(list) = reply else {
                return Err(CryptoError::Malformed("reply to GetDeviceKeys"));
            };
            for user in list.users {
                let devices: Vec<KnownDevice> = user
                    .devices
                    .iter()
                    .filter(|d| {
                        let key = Ed25519PublicKey::from_slice(&d.ed25519);
                        let signature = Ed25519Signature::from_slice(&d.signature.0);
                        match (key, signature) {
                            (Ok(key), Ok(signature)) => key
                                .verify(&identity_signed_bytes(user.user_id, d), &signature)
                                .is_ok(),
                            _ => false,
                        }
                    })
                    .map(|d| KnownDevice {
                        user_id: user.user_id,
                        device_id: d.device_id,
                        curve25519: d.curve25519,
                        ed25519: d.ed25519,
                    })
                    .collect();
                if let Some(before) = self.devices.get(&user.user_id) {
                    if before != &devices {
                        self.changed.insert(user.user_id);
                    }
                }
                out.extend(devices.iter().cloned());
                self.devices.insert(user.user_id, devices);
            }
        }
        Ok(out)
    }

    /// Starts Olm sessions with the devices that have none, from keys claimed now.
    async fn ensure_olm_sessions(
        &mut self,
        client: &Client,
        devices: &[KnownDevice],
    ) -> Result<(), CryptoError> {
        let missing: Vec<&KnownDevice> = devices
            .iter()
            .filter(|d| self.olm.get(&d.curve25519).is_none_or(Vec::is_empty))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for chunk in missing.chunks(tern_protocol::limits::KEY_CLAIMS_MAX as usize) {
            let reply = client
                .request(frames::ClaimKeys {
                    devices: chunk
                        .iter()
                        .map(|d| DeviceAddress {
                            user_id: d.user_id,
                            device_id: d.device_id,
                        })
                        .collect(),
                })
                .await?;
            let Body::ClaimedKeys(claimed) = reply else {
                return Err(CryptoError::Malformed("reply to ClaimKeys"));
            };
            for key in claimed.keys {
                let Some(device) = chunk
                    .iter()
                    .find(|d| d.user_id == key.user_id && d.device_id == key.device_id)
                else {
                    continue;
                };
                let signed = key_signed_bytes(key.user_id, key.device_id, &key.key);
                let good = Ed25519PublicKey::from_slice(&device.ed25519)
                    .ok()
                    .zip(Ed25519Signature::from_slice(&key.key.signature.0).ok())
                    .is_some_and(|(k, s)| k.verify(&signed, &s).is_ok());
                if !good {
                    return Err(CryptoError::BadSignature {
                        user_id: key.user_id,
                        device_id: key.device_id,
                    });
                }
                let session = self
                    .account
                    .create_outbound_session(
                        SessionConfig::version_1(),
                        Curve25519PublicKey::from_bytes(device.curve25519),
                        Curve25519PublicKey::from_bytes(key.key.key),
                    )
                    .map_err(|e| CryptoError::Decryption(e.to_string()))?;
                self.olm.entry(device.curve25519).or_default().push(session);
            }
        }
        Ok(())
    }

    /// One Olm to-device payload for `device`, or `None` without a session with it.
    fn olm_encrypt(
        &mut self,
        device: &KnownDevice,
        kind: u8,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, CryptoError> {
        let own = self.own_device();
        let content = ToDeviceContent {
            version: PAYLOAD_VERSION,
            sender: self.user_id,
            sender_device: self.device_id,
            sender_ed25519: own.ed25519,
            recipient: device.user_id,
            recipient_device: device.device_id,
            recipient_ed25519: device.ed25519,
            kind,
            body: body.to_vec(),
        };
        let plaintext = to_bytes(&content).map_err(|_| CryptoError::Malformed("content"))?;
        let Some(session) = self
            .olm
            .get_mut(&device.curve25519)
            .and_then(|s| s.last_mut())
        else {
            return Ok(None);
        };
        let message = session
            .encrypt(&plaintext)
            .map_err(|e| CryptoError::Decryption(e.to_string()))?;
        let (message_type, ciphertext) = message.to_parts();
        let envelope = OlmEnvelope {
            version: PAYLOAD_VERSION,
            sender_key: own.curve25519,
            message_type: message_type as u8,
            ciphertext,
        };
        to_bytes(&envelope)
            .map(Some)
            .map_err(|_| CryptoError::Malformed("to-device payload"))
    }

    /// A new outbound session for a conversation, and its inbound twin so this device reads
    /// its own messages.
    fn new_outbound(&mut self, conversation_id: ConversationId) {
        let session = GroupSession::new(MegolmConfig::version_1());
        let inbound = InboundGroupSession::new(&session.session_key(), MegolmConfig::version_1());
        if let Ok(id) = b64_32(&session.session_id()) {
            self.inbound.insert(
                id,
                Inbound {
                    conversation_id,
                    sender: self.user_id,
                    sender_device: self.device_id,
                    session: inbound,
                },
            );
        }
        self.outbound.insert(
            conversation_id,
            Outbound {
                session,
                shared_with: BTreeSet::new(),
                messages: 0,
            },
        );
    }

    /// Every inbound session, exported at the first index this device knows.
    fn exported_keys(&self) -> Vec<ForwardedRoomKey> {
        self.inbound
            .iter()
            .map(|(id, i)| ForwardedRoomKey {
                conversation_id: i.conversation_id,
                sender: i.sender,
                sender_device: i.sender_device,
                session_id: *id,
                session_key: i.session.export_at_first_known_index().to_bytes(),
            })
            .collect()
    }

    /// Imports a forwarded or restored session unless this device already has it; returns
    /// whether it was new.
    fn import(&mut self, key: &ForwardedRoomKey) -> bool {
        if self.inbound.contains_key(&key.session_id) {
            return false;
        }
        let Ok(exported) = ExportedSessionKey::from_bytes(&key.session_key) else {
            return false;
        };
        let session = InboundGroupSession::import(&exported, MegolmConfig::version_1());
        if b64_32(&session.session_id()).ok() != Some(key.session_id) {
            return false;
        }
        self.inbound.insert(
            key.session_id,
            Inbound {
                conversation_id: key.conversation_id,
                sender: key.sender,
                sender_device: key.sender_device,
                session,
            },
        );
        true
    }

    /// Takes in one to-device message. A message that fails (not for this device, a forged
    /// sender, a replay) is dropped: it cannot be read again, and later ones must not wait.
    async fn take_in(&mut self, client: &Client, message: &ToDeviceMessage) {
        if let Err(error) = self.try_take_in(client, message).await {
            // There is no logger in the library; a dropped message is what the app sees as an
            // UnknownSession later.
            let _ = error;
        }
    }

    async fn try_take_in(
        &mut self,
        client: &Client,
        message: &ToDeviceMessage,
    ) -> Result<(), CryptoError> {
        let envelope: OlmEnvelope = from_bytes(&message.payload, "payload")
            .map_err(|_| CryptoError::Malformed("to-device payload"))?;
        let olm = OlmMessage::from_parts(envelope.message_type as usize, &envelope.ciphertext)
            .map_err(|e| CryptoError::Decryption(e.to_string()))?;
        let plaintext = self.olm_decrypt(envelope.sender_key, &olm)?;
        let content: ToDeviceContent =
            from_bytes(&plaintext, "content").map_err(|_| CryptoError::Malformed("content"))?;
        let own = self.own_device();
        if content.recipient != self.user_id
            || content.recipient_device != self.device_id
            || content.recipient_ed25519 != own.ed25519
            || content.sender != message.sender
            || content.sender_device != message.sender_device
        {
            return Err(CryptoError::WrongSender);
        }
        let known = |m: &Machine| {
            m.devices
                .get(&message.sender)
                .and_then(|ds| ds.iter().find(|d| d.device_id == message.sender_device))
                .cloned()
        };
        let sender = match known(self) {
            Some(d) => Some(d),
            None => {
                self.fetch_devices(client, &[message.sender]).await?;
                known(self)
            }
        };
        let Some(sender) = sender else {
            return Err(CryptoError::WrongSender);
        };
        if sender.curve25519 != envelope.sender_key || sender.ed25519 != content.sender_ed25519 {
            return Err(CryptoError::WrongSender);
        }
        match content.kind {
            CONTENT_ROOM_KEY => {
                let key: RoomKey = from_bytes(&content.body, "room key")
                    .map_err(|_| CryptoError::Malformed("room key"))?;
                let session_key = SessionKey::from_bytes(&key.session_key)
                    .map_err(|e| CryptoError::Decryption(e.to_string()))?;
                let session = InboundGroupSession::new(&session_key, MegolmConfig::version_1());
                if b64_32(&session.session_id())? != key.session_id {
                    return Err(CryptoError::Malformed("room key"));
                }
                self.inbound.entry(key.session_id).or_insert(Inbound {
                    conversation_id: key.conversation_id,
                    sender: message.sender,
                    sender_device: message.sender_device,
                    session,
                });
            }
            CONTENT_FORWARDED_ROOM_KEYS if message.sender == self.user_id => {
                let keys: ForwardedRoomKeys = from_bytes(&content.body, "forwarded keys")
                    .map_err(|_| CryptoError::Malformed("forwarded keys"))?;
                for key in &keys.keys {
                    self.import(key);
                }
            }
            _ => return Err(CryptoError::WrongSender),
        }
        Ok(())
    }

    fn olm_decrypt(
        &mut self,
        sender_key: [u8; 32],
        message: &OlmMessage,
    ) -> Result<Vec<u8>, CryptoError> {
        let sessions = self.olm.entry(sender_key).or_default();
        for (i, session) in sessions.iter_mut().enumerate().rev() {
            if let OlmMessage::PreKey(pre) = message {
                if pre.session_id() != session.session_id() {
                    continue;
                }
            }
            if let Ok(plaintext) = session.decrypt(message) {
                // The session that answered is the one to send with next.
                let used = sessions.remove(i);
                sessions.push(used);
                return Ok(plaintext);
            }
        }
        let OlmMessage::PreKey(pre) = message else {
            return Err(CryptoError::Decryption(
                "no Olm session for this message".into(),
            ));
        };
        let created = self
            .account
            .create_inbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(sender_key),
                pre,
            )
            .map_err(|e| CryptoError::Decryption(e.to_string()))?;
        self.olm
            .entry(sender_key)
            .or_default()
            .push(created.session);
        self.top_up = true;
        Ok(created.plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the safety number is the same from both sides, six groups of five digits, and
    // changes with any device key.
    #[test]
    fn safety_numbers_are_symmetric() {
        let a = [[1u8; 32], [2; 32]];
        let b = [[3u8; 32]];
        let one = safety_number((1, &a), (2, &b));
        assert_eq!(one, safety_number((2, &b), (1, &a)));
        assert_eq!(one.len(), 6 * 5 + 5);
        assert!(one
            .split(' ')
            .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
        assert_ne!(one, safety_number((1, &a[..1]), (2, &b)));
    }

    // Proves recovery keys round-trip through their text form and malformed ones are refused.
    #[test]
    fn recovery_keys_round_trip() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8 * 7);
        let text = format_recovery_key(&key);
        assert_eq!(parse_recovery_key(&text).unwrap(), key);
        assert!(parse_recovery_key("abcd").is_err());
        assert!(parse_recovery_key(&text.replace('0', "g")).is_err());
    }

    // Proves a backup entry sealed under one key opens under it only, and tampering is caught.
    #[test]
    fn sealing_is_authenticated() {
        let key = backup_key(&[9; 32]);
        let mut data = b"room key".to_vec();
        seal(&key, [1; 12], b"id", &mut data).unwrap();
        let mut copy = data.clone();
        open(&key, [1; 12], b"id", &mut copy).unwrap();
        assert_eq!(copy, b"room key");
        let mut wrong = data.clone();
        assert!(open(&backup_key(&[8; 32]), [1; 12], b"id", &mut wrong).is_err());
        let mut tampered = data;
        tampered[0] ^= 1;
        assert!(open(&key, [1; 12], b"id", &mut tampered).is_err());
    }

    // Proves fingerprints are four-character groups of the unpadded base64 of the key.
    #[test]
    fn fingerprints_group_by_four() {
        let f = fingerprint(&[0; 32]);
        assert_eq!(f.split(' ').count(), 11);
        assert!(f.starts_with("AAAA AAAA"));
    }
}
