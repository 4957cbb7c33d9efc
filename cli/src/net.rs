//! Everything `tern` says to the server, in one place.
//!
//! [`Net`] wraps one [`tern_client::Client`] connection and offers the operations the scripting
//! commands and the interactive client need, in the client's vocabulary: users by name, a whole
//! conversation list rather than pages, a file upload rather than chunks. Nothing else in this crate
//! holds a connection or makes a request (`error.rs` only wraps the library's error type), so moving
//! to a reconnecting session later changes this file alone.
//!
//! The interactive client does not call [`Net`] from its drawing loop: [`spawn_worker`] runs the
//! requests on tasks of their own and reports every outcome as a [`NetEvent`] on a channel, next to
//! the server's own events, so the loop never waits for the network.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tern_client::protocol::frames::{self, Authenticated, HistoryPage, MediaInfo, Sent, UserInfo};
use tern_client::protocol::limits::{PRESENCE_USERS_MAX, USERS_PER_REQUEST_MAX};
use tern_client::protocol::types::Message;
use tern_client::protocol::types::{
    ClientMsgId, ConversationId, ConversationInfo, ConversationSummary, DeviceId, DeviceInfo,
    MediaId, Presence, Role, Token, UserId,
};
use tern_client::protocol::UpdateKind;
use tern_client::protocol::{ErrorCode, Update};
use tern_client::TlsOptions;
use tern_client::{Client, ClientError, ConnectOptions, Crypto, CryptoError, Event, FileStorage};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::CliError;

/// The client name sent in `Hello`.
const CLIENT_NAME: &str = concat!("tern/", env!("CARGO_PKG_VERSION"));

/// Most conversation pages one listing reads (200 conversations each).
const CONVERSATION_PAGES_MAX: usize = 1_000;

/// Most sync pages read while catching up before the interactive client jumps to the log's head.
const SYNC_PAGES_MAX: usize = 1_000;

/// The shortest heartbeat interval this client keeps, whatever the server announces.
const HEARTBEAT_INTERVAL_MIN_MS: u32 = 100;

/// Requests the interactive client may have queued for the worker; more are refused.
const ACTIONS_QUEUED_MAX: usize = 256;

/// Reports from the worker the UI has not drawn yet before the worker waits.
const NET_EVENTS_QUEUED_MAX: usize = 1_024;

/// How an interactive or scripted session authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A new account.
    Register {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
    /// A new device of an existing account.
    Login {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
    /// An existing device, by its token.
    Resume(Token),
}

/// The TLS settings for `host:port`: its host name, and the extra trusted certificate in
/// `TERN_TLS_CA` if set.
fn tls_options(addr: &str) -> Result<TlsOptions, ClientError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tls = TlsOptions::new(host);
    match std::env::var_os("TERN_TLS_CA") {
        Some(path) => tls.with_root_pem_file(path),
        None => Ok(tls),
    }
}

/// One connection to the server.
#[derive(Debug)]
pub(crate) struct Net {
    client: Client,
}

impl Net {
    /// Connects and does the handshake.
    ///
    /// `server` is `host:port` for plain TCP, or `tls://host:port` for TLS, where the certificate
    /// must name `host` and chain to a public root or to the PEM file named by `TERN_TLS_CA`.
    pub(crate) async fn connect(server: &str) -> Result<Net, CliError> {
        let error = |source| CliError::Connect {
            server: server.to_owned(),
            source,
        };
        let options = ConnectOptions::new(CLIENT_NAME);
        let client = match server.strip_prefix("tls://") {
            Some(addr) => {
                let tls = tls_options(addr).map_err(error)?;
                Client::connect_tls(addr, &tls, options).await
            }
            None => Client::connect(server, options).await,
        };
        Ok(Net {
            client: client.map_err(error)?,
        })
    }

    /// Authenticates this connection.
    pub(crate) async fn authenticate(
        &self,
        credentials: &Credentials,
        device_name: &str,
    ) -> Result<Authenticated, CliError> {
        let reply = match credentials {
            Credentials::Register { username, password } => {
                self.client.register(username, password, device_name).await
            }
            Credentials::Login { username, password } => {
                self.client.login(username, password, device_name).await
            }
            Credentials::Resume(token) => self.client.resume(*token).await,
        };
        reply.map_err(|error| match error.server_code() {
            Some(ErrorCode::BAD_CREDENTIALS) if matches!(credentials, Credentials::Resume(_)) => {
                CliError::SessionExpired
            }
            _ => CliError::from(error),
        })
    }

    /// Revokes this device.
    pub(crate) async fn logout(&self) -> Result<(), CliError> {
        Ok(self.client.logout().await?)
    }

    /// The account's devices.
    pub(crate) async fn devices(&self) -> Result<Vec<DeviceInfo>, CliError> {
        Ok(self.client.list_devices().await?)
    }

    /// Revokes one of the account's devices.
    pub(crate) async fn revoke_device(&self, device_id: DeviceId) -> Result<(), CliError> {
        Ok(self.client.revoke_device(device_id).await?)
    }

    /// The names of users by id, any number of them (asked 256 at a time); ids of no user are
    /// left out.
    pub(crate) async fn users(&self, user_ids: &[UserId]) -> Result<Vec<UserInfo>, CliError> {
        let mut users = Vec::with_capacity(user_ids.len());
        for chunk in user_ids.chunks(USERS_PER_REQUEST_MAX as usize) {
            users.extend(self.client.get_users(chunk.to_vec()).await?);
        }
        Ok(users)
    }

    /// Finds a user by name.
    pub(crate) async fn lookup_user(&self, username: &str) -> Result<UserInfo, CliError> {
        self.client
            .lookup_user(username)
            .await
            .map_err(|error| match error.server_code() {
                Some(ErrorCode::NOT_FOUND) => CliError::UnknownUser {
                    username: username.to_owned(),
                    source: error,
                },
                _ => CliError::from(error),
            })
    }

    /// Finds or creates the direct conversation with a user.
    pub(crate) async fn open_direct(&self, user_id: UserId) -> Result<ConversationInfo, CliError> {
        Ok(self.client.open_direct(user_id).await?)
    }

    /// Finds the direct conversation with a user, creating it encrypted end to end if there is
    /// none.
    pub(crate) async fn open_direct_encrypted(
        &self,
        user_id: UserId,
    ) -> Result<ConversationInfo, CliError> {
        Ok(self.client.open_direct_encrypted(user_id).await?.0)
    }

    /// Whether a conversation is encrypted end to end.
    pub(crate) async fn is_encrypted(
        &self,
        conversation_id: ConversationId,
    ) -> Result<bool, CliError> {
        let reply = self
            .client
            .request(frames::GetConversation { conversation_id })
            .await?;
        Ok(matches!(reply, tern_client::protocol::Body::Conversation(c) if c.encrypted))
    }

    /// Whether the account keeps a key backup on the server (one with at least one entry).
    pub(crate) async fn has_backup(&self) -> Result<bool, CliError> {
        let reply = self
            .client
            .request(frames::GetBackup {
                after: [0; 32],
                limit: 1,
            })
            .await?;
        match reply {
            tern_client::protocol::Body::BackupPage(page) => Ok(!page.entries.is_empty()),
            _ => Err(CliError::Crypto(
                "the server did not answer GetBackup with a BackupPage".to_owned(),
            )),
        }
    }

    /// The connection, for the end-to-end encryption machine.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// One conversation with its members.
    pub(crate) async fn conversation(
        &self,
        conversation_id: ConversationId,
    ) -> Result<ConversationInfo, CliError> {
        Ok(self.client.get_conversation(conversation_id).await?)
    }

    /// Every conversation of the user, in ascending id.
    pub(crate) async fn conversations(&self) -> Result<Vec<ConversationSummary>, CliError> {
        let mut all = Vec::new();
        let mut after = 0;
        for _ in 0..CONVERSATION_PAGES_MAX {
            let page = self.client.list_conversations(after, 0).await?;
            after = page
                .conversations
                .last()
                .map_or(after, |last| last.conversation_id);
            all.extend(page.conversations);
            if !page.has_more {
                break;
            }
        }
        Ok(all)
    }

    /// Sends a message, with the attachments of completed uploads.
    pub(crate) async fn send(
        &self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: &str,
        attachments: Vec<MediaId>,
    ) -> Result<Sent, CliError> {
        Ok(self
            .client
            .send_with_attachments(conversation_id, client_msg_id, body, attachments)
            .await?)
    }

    /// A page of messages with `seq < before` (0: the newest).
    pub(crate) async fn history(
        &self,
        conversation_id: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, CliError> {
        Ok(self.client.history(conversation_id, before, limit).await?)
    }

    /// The oldest messages with a seq above `after`, read forwards.
    pub(crate) async fn history_after(
        &self,
        conversation_id: ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, CliError> {
        Ok(self
            .client
            .history_after(conversation_id, after, limit)
            .await?)
    }

    /// Moves the read watermark.
    pub(crate) async fn mark_read(
        &self,
        conversation_id: ConversationId,
        up_to_seq: u64,
    ) -> Result<(), CliError> {
        Ok(self.client.mark_read(conversation_id, up_to_seq).await?)
    }

    /// Says the user started or stopped typing.
    pub(crate) async fn typing(
        &self,
        conversation_id: ConversationId,
        active: bool,
    ) -> Result<(), CliError> {
        Ok(self.client.typing(conversation_id, active).await?)
    }

    /// Subscribes to users' presence and returns it as it is now.
    pub(crate) async fn subscribe_presence(
        &self,
        users: &[UserId],
    ) -> Result<Vec<Presence>, CliError> {
        let mut all = Vec::new();
        for chunk in users.chunks(PRESENCE_USERS_MAX as usize) {
            all.extend(self.client.subscribe_presence(chunk.to_vec()).await?);
        }
        Ok(all)
    }

    /// Creates a group with these other members.
    pub(crate) async fn create_group(
        &self,
        name: &str,
        members: Vec<UserId>,
    ) -> Result<ConversationInfo, CliError> {
        Ok(self.client.create_group(name, members).await?)
    }

    /// Creates a group encrypted end to end.
    pub(crate) async fn create_encrypted_group(
        &self,
        name: &str,
        members: Vec<UserId>,
    ) -> Result<ConversationInfo, CliError> {
        Ok(self.client.create_encrypted_group(name, members).await?)
    }

    /// Adds members to a group.
    pub(crate) async fn add_members(
        &self,
        conversation_id: ConversationId,
        members: Vec<UserId>,
    ) -> Result<(), CliError> {
        Ok(self.client.add_members(conversation_id, members).await?)
    }

    /// Removes a member from a group.
    pub(crate) async fn remove_member(
        &self,
        conversation_id: ConversationId,
        user_id: UserId,
    ) -> Result<(), CliError> {
        Ok(self.client.remove_member(conversation_id, user_id).await?)
    }

    /// Leaves a group.
    pub(crate) async fn leave_group(
        &self,
        conversation_id: ConversationId,
    ) -> Result<(), CliError> {
        Ok(self.client.leave_group(conversation_id).await?)
    }

    /// Renames a group.
    pub(crate) async fn rename_group(
        &self,
        conversation_id: ConversationId,
        name: &str,
    ) -> Result<(), CliError> {
        Ok(self.client.rename_group(conversation_id, name).await?)
    }

    /// Changes a member's role.
    pub(crate) async fn set_role(
        &self,
        conversation_id: ConversationId,
        user_id: UserId,
        role: Role,
    ) -> Result<(), CliError> {
        Ok(self.client.set_role(conversation_id, user_id, role).await?)
    }

    /// Uploads a file in chunks and completes it. The file is read twice, a chunk at a time: once
    /// for its SHA-256, which `UploadBegin` declares, then to send it; the server checks the sum.
    pub(crate) async fn upload(&self, path: &Path, mime: &str) -> Result<MediaInfo, CliError> {
        let file_error = |source| CliError::File {
            path: path.to_owned(),
            source,
        };
        let chunk_bytes = (self.client.welcome().limits.media_chunk_bytes_max as usize).max(1);
        let mut buf = vec![0; chunk_bytes];
        let mut file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        loop {
            let n = fill(&mut file, &mut buf).await.map_err(file_error)?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            size += n as u64;
        }
        if size == 0 {
            return Err(CliError::Usage(format!(
                "{}: an empty file cannot be sent",
                path.display()
            )));
        }
        let mut sha256 = [0; 32];
        sha256.copy_from_slice(digest.finish().as_ref());
        let state = self.client.upload_begin(size, mime, sha256).await?;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(file_error)?;
        let mut offset = 0u64;
        while offset < size {
            let n = fill(&mut file, &mut buf).await.map_err(file_error)?;
            if n == 0 {
                // The file shrank since it was hashed; finishing reports the mismatch.
                break;
            }
            offset = self
                .client
                .upload_chunk(state.media_id, offset, buf[..n].to_vec())
                .await?
                .received;
        }
        Ok(self.client.upload_finish(state.media_id).await?)
    }

    /// Metadata of a media item.
    pub(crate) async fn media_info(&self, media_id: MediaId) -> Result<MediaInfo, CliError> {
        Ok(self.client.get_media(media_id).await?)
    }

    /// Downloads a media item into a file, a chunk at a time, written atomically: into a
    /// temporary file next to it, checked against the SHA-256 the server holds, synced, then renamed
    /// over the target. On any failure the temporary file is removed and the target is untouched.
    pub(crate) async fn download(
        &self,
        media_id: MediaId,
        out: &Path,
    ) -> Result<MediaInfo, CliError> {
        let info = self.media_info(media_id).await?;
        let temp = temp_path(out);
        let result = self.download_into(&info, &temp, out).await;
        match result {
            Ok(()) => Ok(info),
            Err(error) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(error)
            }
        }
    }

    async fn download_into(
        &self,
        info: &MediaInfo,
        temp: &Path,
        out: &Path,
    ) -> Result<(), CliError> {
        let file_error = |source| CliError::File {
            path: out.to_owned(),
            source,
        };
        let chunk_bytes = self.client.welcome().limits.media_chunk_bytes_max.max(1);
        let mut file = tokio::fs::File::create(temp).await.map_err(file_error)?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut received = 0u64;
        while received < info.size {
            let chunk = self
                .client
                .download_range(info.media_id, received, chunk_bytes)
                .await?;
            if chunk.data.is_empty() {
                break;
            }
            digest.update(&chunk.data);
            file.write_all(&chunk.data).await.map_err(file_error)?;
            received += chunk.data.len() as u64;
        }
        if received != info.size || digest.finish().as_ref() != info.sha256 {
            return Err(CliError::Corrupt {
                media_id: info.media_id,
            });
        }
        file.sync_all().await.map_err(file_error)?;
        drop(file);
        tokio::fs::rename(temp, out).await.map_err(file_error)
    }

    /// A page of the user's update log after `since`.
    pub(crate) async fn sync_page(&self, since: u64) -> Result<frames::SyncPage, CliError> {
        Ok(self.client.sync(since, 0).await?)
    }

    /// Tells the server the device processed every update up to `up_to`.
    pub(crate) async fn ack(&self, up_to: u64) -> Result<(), CliError> {
        Ok(self.client.ack(up_to).await?)
    }

    /// Sends a heartbeat; the server closes connections that stay silent past its idle time-out.
    pub(crate) async fn ping(&self, nonce: u64) -> Result<(), CliError> {
        self.client.ping(nonce).await?;
        Ok(())
    }

    /// How often the server wants a heartbeat from an otherwise silent client.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        let ms = self.client.welcome().limits.heartbeat_interval_ms;
        Duration::from_millis(u64::from(ms.max(HEARTBEAT_INTERVAL_MIN_MS)))
    }

    /// The next event from the server; `None` once the connection is closed.
    pub(crate) async fn next_event(&self) -> Option<Event> {
        self.client.next_event().await
    }

    /// Closes the connection cleanly.
    pub(crate) async fn close(&self) {
        self.client.close().await;
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
async fn fill(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Random bytes from the system's generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], CliError> {
    use ring::rand::SecureRandom;
    let mut out = [0; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CliError::Usage("the system random generator failed".to_owned()))?;
    Ok(out)
}

/// A sibling of `path` to write before renaming over it.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

// ---------------------------------------------------------------- the interactive client's worker

/// What the interactive client asks of the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Connect, authenticate, list conversations, catch up with the log and go live.
    Start(Credentials),
    /// Learn the names of users the screen shows by id.
    Names(Vec<UserId>),
    /// Open (or create) the direct conversation with a user.
    OpenDirect {
        /// Their username.
        username: String,
    },
    /// Fetch a conversation and its newest messages.
    LoadConversation(ConversationId),
    /// Fetch older messages.
    History {
        /// The conversation.
        conversation_id: ConversationId,
        /// Only messages below this `seq`.
        before: u64,
    },
    /// Send a message, with an optional file to upload and attach first.
    Send {
        /// The conversation.
        conversation_id: ConversationId,
        /// The idempotency key.
        client_msg_id: ClientMsgId,
        /// The text.
        body: String,
        /// A file to attach.
        file: Option<PathBuf>,
    },
    /// Move the read watermark.
    MarkRead {
        /// The conversation.
        conversation_id: ConversationId,
        /// Up to this `seq`.
        up_to_seq: u64,
    },
    /// Typing started or stopped.
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Started or stopped.
        active: bool,
    },
    /// Acknowledge updates.
    Ack(u64),
    /// Sync again from a cursor (after a gap).
    Resync(u64),
    /// Follow users' presence.
    SubscribePresence(Vec<UserId>),
    /// Create a group with members named by username.
    CreateGroup {
        /// Its name.
        name: String,
        /// Usernames of the other members.
        members: Vec<String>,
    },
    /// Add a member to a group.
    AddMember {
        /// The group.
        conversation_id: ConversationId,
        /// Their username.
        username: String,
    },
    /// Remove a member from a group.
    RemoveMember {
        /// The group.
        conversation_id: ConversationId,
        /// Their username.
        username: String,
    },
    /// Leave a group.
    LeaveGroup(ConversationId),
    /// Rename a group.
    RenameGroup {
        /// The group.
        conversation_id: ConversationId,
        /// Its new name.
        name: String,
    },
    /// Download a media item into a file.
    SaveMedia {
        /// The media.
        media_id: MediaId,
        /// Where to write it.
        path: PathBuf,
    },
    /// Start a key backup under a new recovery key and upload every room key.
    EnableBackup,
    /// Import the room keys of the account's key backup.
    RestoreBackup {
        /// The recovery key, as the user typed it.
        recovery_key: String,
    },
}

impl Request {
    /// Whether the request moves much data or waits on pages, and so runs on its own task.
    fn is_slow(&self) -> bool {
        match self {
            Request::Send { file, .. } => file.is_some(),
            Request::SaveMedia { .. }
            | Request::EnableBackup
            | Request::RestoreBackup { .. }
            | Request::History { .. }
            | Request::LoadConversation(_)
            | Request::Resync(_) => true,
            _ => false,
        }
    }
}

/// How many conversations of the list, newest first, are asked at start whether they are encrypted
/// (one `GetConversation` each); others are marked once opened.
const ENCRYPTION_CHECKS_MAX: usize = 100;

/// What the worker reports back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NetEvent {
    /// The connection is authenticated.
    Authenticated(Authenticated),
    /// Connecting or authenticating failed.
    AuthFailed {
        /// Why, for the person.
        reason: String,
        /// Whether the server answered (a refusal), rather than could not be reached.
        refused: bool,
    },
    /// The conversation list.
    Conversations(Vec<ConversationSummary>),
    /// A page of the update log while catching up (`live == false`) or one live update.
    Updates {
        /// The updates, in `user_seq` order.
        updates: Vec<Update>,
        /// Whether they are live (new since the client started) rather than a replay.
        live: bool,
    },
    /// Catching up stopped short of a very long log and skipped to its head: updates up to it
    /// will not come.
    SkippedTo(u64),
    /// A user's name is known.
    User(UserInfo),
    /// A conversation's state, opened or fetched; `open` asks the UI to show it.
    Conversation {
        /// Its state.
        info: ConversationInfo,
        /// Whether the user asked to open it.
        open: bool,
    },
    /// A page of history.
    History(HistoryPage),
    /// A message was stored.
    Sent(Sent),
    /// Sending a message failed.
    SendFailed {
        /// Its idempotency key.
        client_msg_id: ClientMsgId,
        /// Why.
        reason: String,
    },
    /// Presence of one or more users.
    Presence(Vec<Presence>),
    /// Someone typing.
    Typing(frames::TypingEvent),
    /// These conversations are end-to-end encrypted (the list marks them).
    Encrypted(Vec<ConversationId>),
    /// A key backup was started.
    BackupEnabled(BackupEnabled),
    /// Room keys were imported from the key backup: how many were new to this device.
    BackupRestored(usize),
    /// Something to tell the user.
    Notice(String),
    /// Something that failed.
    Error(String),
    /// The connection is gone.
    Disconnected(String),
}

/// The worker's two ends as the UI holds them.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Where the UI sends requests.
    pub(crate) requests: mpsc::Sender<Request>,
    /// Where the UI reads reports.
    pub(crate) events: mpsc::Receiver<NetEvent>,
}

/// Starts the worker for a server and device name. It waits for [`Request::Start`] before it
/// connects.
pub(crate) fn spawn_worker(server: String, device_name: String, crypto_dir: PathBuf) -> Worker {
    let (requests_tx, requests_rx) = mpsc::channel(ACTIONS_QUEUED_MAX);
    let (events_tx, events_rx) = mpsc::channel(NET_EVENTS_QUEUED_MAX);
    tokio::spawn(run_worker(
        server,
        device_name,
        crypto_dir,
        requests_rx,
        events_tx,
    ));
    Worker {
        requests: requests_tx,
        events: events_rx,
    }
}

async fn run_worker(
    server: String,
    device_name: String,
    crypto_dir: PathBuf,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<NetEvent>,
) {
    let (net, crypto) = loop {
        let Some(request) = requests.recv().await else {
            return;
        };
        let Request::Start(credentials) = request else {
            continue;
        };
        match start(&server, &credentials, &device_name, &crypto_dir, &events).await {
            Ok((net, crypto)) => break (Arc::new(net), crypto.map(Arc::new)),
            Err(error) => {
                let refused = error.server_code().is_some();
                let reason = error.report();
                let _ = events.send(NetEvent::AuthFailed { reason, refused }).await;
            }
        }
    };
    let pump = tokio::spawn(pump_events(
        Arc::clone(&net),
        events.clone(),
        crypto.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat(Arc::clone(&net)));
    // Requests whose order matters (messages to one conversation, read marks, typing) go through
    // one task, one after the other; transfers and page loads run on their own so a large upload
    // does not hold up the chat.
    let (ordered_tx, mut ordered_rx) = mpsc::channel::<Request>(ACTIONS_QUEUED_MAX);
    let ordered = {
        let net = Arc::clone(&net);
        let events = events.clone();
        let crypto = crypto.clone();
        tokio::spawn(async move {
            while let Some(request) = ordered_rx.recv().await {
                handle_reporting(&net, crypto.as_deref(), request, &events).await;
            }
        })
    };
    while let Some(request) = requests.recv().await {
        if request.is_slow() {
            let net = Arc::clone(&net);
            let events = events.clone();
            let crypto = crypto.clone();
            tokio::spawn(async move {
                handle_reporting(&net, crypto.as_deref(), request, &events).await
            });
        } else if ordered_tx.send(request).await.is_err() {
            break;
        }
    }
    drop(ordered_tx);
    let _ = ordered.await;
    heartbeat.abort();
    net.close().await;
    pump.abort();
}

/// Pings at the server's heartbeat interval until the connection closes.
async fn heartbeat(net: Arc<Net>) {
    let mut ticker = tokio::time::interval(net.heartbeat_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    loop {
        ticker.tick().await;
        nonce = nonce.wrapping_add(1);
        if net.ping(nonce).await.is_err() && net.client.is_closed() {
            return;
        }
    }
}

/// Carries out a request, reporting a failure as an error line.
async fn handle_reporting(
    net: &Net,
    crypto: Option<&Crypto>,
    request: Request,
    events: &mpsc::Sender<NetEvent>,
) {
    if let Err(error) = handle(net, crypto, request, events).await {
        let _ = events.send(NetEvent::Error(error.to_string())).await;
    }
}

/// Where a device keeps its end-to-end encryption state: beside the config file.
pub(crate) fn crypto_path(config_dir: &Path, user_id: UserId, device_id: DeviceId) -> PathBuf {
    config_dir.join(format!("e2e-{user_id}-{device_id}.json"))
}

/// The device's end-to-end encryption: loaded, its keys published, the keys sent to it taken
/// in (which also turns on live to-device messages for the connection).
pub(crate) async fn open_crypto(
    net: &Net,
    config_dir: &Path,
    user_id: UserId,
    device_id: DeviceId,
) -> Result<Crypto, CliError> {
    let path = crypto_path(config_dir, user_id, device_id);
    let storage = FileStorage::open(&path).map_err(|e| CliError::Crypto(e.to_string()))?;
    let crypto = Crypto::load_or_create(user_id, device_id, Arc::new(storage))?;
    crypto.publish_keys(net.client()).await?;
    crypto.receive_to_device(net.client()).await?;
    Ok(crypto)
}

/// What enabling a key backup gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BackupEnabled {
    /// The recovery key, in groups of four hexadecimal digits: shown to the user once.
    pub(crate) recovery_key: String,
    /// Whether an earlier backup of the account was deleted (its recovery key no longer works).
    pub(crate) replaced: bool,
}

/// What a recovery key looks like, for a person who typed something else.
pub(crate) const RECOVERY_KEY_FORMAT: &str =
    "a recovery key is the 64 hexadecimal digits the backup was enabled with (spaces between the \
     groups of four are allowed)";

/// Whether `text` is laid out as a recovery key: 64 hexadecimal digits, with any whitespace.
pub(crate) fn is_recovery_key(text: &str) -> bool {
    let mut digits = 0;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        if !c.is_ascii_hexdigit() {
            return false;
        }
        digits += 1;
    }
    digits == 64
}

/// The machine, or why there is none: the interactive client runs without one when it could not
/// be set up, and says why when it starts.
fn crypto_or_off(crypto: Option<&Crypto>) -> Result<&Crypto, CliError> {
    crypto.ok_or_else(|| {
        CliError::Crypto("not set up on this device, so it has no key backup".to_owned())
    })
}

/// Starts a key backup under a new recovery key, replacing any earlier one of the account, and
/// uploads every room key this device holds.
pub(crate) async fn enable_backup(net: &Net, crypto: &Crypto) -> Result<BackupEnabled, CliError> {
    let replaced = net.has_backup().await?;
    let recovery_key = crypto.enable_backup(net.client()).await?;
    Ok(BackupEnabled {
        recovery_key,
        replaced,
    })
}

/// Imports the room keys of the account's key backup with its recovery key, and keeps backing up
/// to it; returns how many keys were new to this device.
pub(crate) async fn restore_backup(
    net: &Net,
    crypto: &Crypto,
    recovery_key: &str,
) -> Result<usize, CliError> {
    if !is_recovery_key(recovery_key) {
        return Err(CliError::Usage(RECOVERY_KEY_FORMAT.to_owned()));
    }
    if !net.has_backup().await? {
        return Err(CliError::Crypto(
            "this account has no key backup: enable one on a device that holds the keys".to_owned(),
        ));
    }
    crypto
        .restore_backup(net.client(), recovery_key)
        .await
        .map_err(|error| match error {
            CryptoError::BadRecoveryKey => CliError::Crypto(
                "wrong recovery key: it does not open this account's key backup".to_owned(),
            ),
            other => CliError::from(other),
        })
}

/// Uploads the room keys not yet in the key backup, when the device keeps one (nothing
/// otherwise); returns how many.
pub(crate) async fn back_up_keys(net: &Net, crypto: &Crypto) -> Result<usize, CliError> {
    Ok(crypto.upload_backup(net.client()).await?)
}

/// [`back_up_keys`], a failure reported as an error line; the next upload catches up.
async fn back_up_reporting(net: &Net, crypto: Option<&Crypto>, events: &mpsc::Sender<NetEvent>) {
    let Some(crypto) = crypto else {
        return;
    };
    if let Err(error) = back_up_keys(net, crypto).await {
        let text = format!("the key backup was not updated: {}", error.report());
        let _ = events.send(NetEvent::Error(text)).await;
    }
}

/// Replaces an encrypted message's body by its text, marked with a lock, or by why it cannot be
/// read. A key may still be on its way: the device's queue is read once more before giving up.
async fn open_message(net: &Net, crypto: Option<&Crypto>, message: &mut Message) {
    if !tern_client::protocol::e2e::is_encrypted_body(&message.body) {
        return;
    }
    let Some(crypto) = crypto else {
        message.body = "🔒 [encrypted: this device has no keys]".to_owned();
        return;
    };
    let mut opened = crypto.decrypt(message).await;
    if matches!(opened, Err(CryptoError::UnknownSession))
        && crypto.receive_to_device(net.client()).await.is_ok()
    {
        // A key that fails to reach the backup now goes with the next upload.
        let _ = back_up_keys(net, crypto).await;
        opened = crypto.decrypt(message).await;
    }
    message.body = match opened {
        Ok(opened) => {
            let files: Vec<String> = opened
                .attachments
                .iter()
                .map(|f| format!("{} ({} bytes)", f.name, f.size))
                .collect();
            if files.is_empty() {
                format!("🔒 {}", opened.text)
            } else {
                format!("🔒 {} [files: {}]", opened.text, files.join(", "))
            }
        }
        Err(e) => format!("🔒 [cannot decrypt: {e}]"),
    };
}

/// Opens the encrypted messages among updates.
async fn open_updates(net: &Net, crypto: Option<&Crypto>, updates: &mut [Update]) {
    for update in updates {
        if let UpdateKind::Message(message) = &mut update.kind {
            open_message(net, crypto, message).await;
        }
    }
}

/// Connects, authenticates, and sends the conversation list and the catch-up pages.
async fn start(
    server: &str,
    credentials: &Credentials,
    device_name: &str,
    crypto_dir: &Path,
    events: &mpsc::Sender<NetEvent>,
) -> Result<(Net, Option<Crypto>), CliError> {
    let net = Net::connect(server).await?;
    let auth = net.authenticate(credentials, device_name).await?;
    let (user_id, device_id) = (auth.user_id, auth.device_id);
    let _ = events.send(NetEvent::Authenticated(auth)).await;
    let crypto = match open_crypto(&net, crypto_dir, user_id, device_id).await {
        Ok(crypto) => Some(crypto),
        Err(error) => {
            let notice = format!("end-to-end encryption is off: {}", error.report());
            let _ = events.send(NetEvent::Notice(notice)).await;
            None
        }
    };
    let mut conversations = net.conversations().await?;
    for summary in &mut conversations {
        if let Some(message) = summary.last_message.as_mut() {
            open_message(&net, crypto.as_ref(), message).await;
        }
    }
    let listed: Vec<ConversationId> = conversations.iter().map(|c| c.conversation_id).collect();
    let _ = events.send(NetEvent::Conversations(conversations)).await;
    // The list's summaries do not say which conversations are encrypted: ask for the newest ones.
    let mut encrypted = Vec::new();
    for conversation_id in listed.into_iter().take(ENCRYPTION_CHECKS_MAX) {
        if net.is_encrypted(conversation_id).await? {
            encrypted.push(conversation_id);
        }
    }
    if !encrypted.is_empty() {
        let _ = events.send(NetEvent::Encrypted(encrypted)).await;
    }
    catch_up(&net, crypto.as_ref(), 0, events).await?;
    back_up_reporting(&net, crypto.as_ref(), events).await;
    Ok((net, crypto))
}

/// Reads the update log from `since` until the connection is live, reporting each page.
async fn catch_up(
    net: &Net,
    crypto: Option<&Crypto>,
    mut since: u64,
    events: &mpsc::Sender<NetEvent>,
) -> Result<(), CliError> {
    for _ in 0..SYNC_PAGES_MAX {
        let mut page = net.sync_page(since).await?;
        open_updates(net, crypto, &mut page.updates).await;
        if let Some(last) = page.updates.last() {
            since = last.user_seq;
        }
        let _ = events
            .send(NetEvent::Updates {
                updates: page.updates,
                live: false,
            })
            .await;
        net.ack(since).await?;
        if !page.has_more {
            return Ok(());
        }
    }
    // A log longer than the bound: skip to its head and go live from there; History fills in
    // the messages shown, and receipts older than the head are not replayed.
    let head = net.sync_page(u64::MAX).await?.head;
    let _ = events.send(NetEvent::SkippedTo(head)).await;
    let mut page = net.sync_page(head).await?;
    open_updates(net, crypto, &mut page.updates).await;
    let _ = events
        .send(NetEvent::Updates {
            updates: page.updates,
            live: false,
        })
        .await;
    net.ack(head).await
}

/// Forwards the server's events to the UI, opening encrypted messages, taking room keys in, and
/// warning when a peer's devices change.
async fn pump_events(net: Arc<Net>, events: mpsc::Sender<NetEvent>, crypto: Option<Arc<Crypto>>) {
    while let Some(event) = net.next_event().await {
        if let Some(crypto) = crypto.as_deref() {
            match crypto.handle_event(net.client(), &event).await {
                Ok(true) => {
                    if matches!(event, Event::ToDevice(_)) {
                        back_up_reporting(&net, Some(crypto), &events).await;
                    }
                    continue;
                }
                Ok(false) => {}
                Err(error) => {
                    let text = format!("end-to-end encryption: {error}");
                    if events.send(NetEvent::Error(text)).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        let report = match event {
            Event::Update(mut update) => {
                if let (Some(crypto), UpdateKind::DeviceListChanged(_)) =
                    (crypto.as_deref(), &update.kind)
                {
                    let _ = crypto.handle_update(net.client(), &update).await;
                    for changed in crypto.take_device_changes().await {
                        let name = match net.users(&[changed]).await {
                            Ok(users) => users
                                .first()
                                .map_or_else(|| format!("#{changed}"), |u| u.username.clone()),
                            Err(_) => format!("#{changed}"),
                        };
                        let warning = format!(
                            "⚠ {name}'s devices changed: check them with `tern verify {name}`"
                        );
                        let _ = events.send(NetEvent::Notice(warning)).await;
                    }
                }
                open_updates(&net, crypto.as_deref(), std::slice::from_mut(&mut update)).await;
                NetEvent::Updates {
                    updates: vec![update],
                    live: true,
                }
            }
            Event::Presence(presence) => NetEvent::Presence(vec![presence]),
            Event::Typing(typing) => NetEvent::Typing(typing),
            Event::GoAway(go_away) => {
                NetEvent::Disconnected(format!("the server is going away: {}", go_away.message))
            }
            Event::Error(error) => {
                NetEvent::Error(format!("{}: {}", error.code.name(), error.message))
            }
            _ => continue,
        };
        if events.send(report).await.is_err() {
            return;
        }
    }
    let _ = events
        .send(NetEvent::Disconnected("the connection closed".to_owned()))
        .await;
}

/// Carries out one request of the UI.
async fn handle(
    net: &Net,
    crypto: Option<&Crypto>,
    request: Request,
    events: &mpsc::Sender<NetEvent>,
) -> Result<(), CliError> {
    let report = match request {
        Request::Start(_) => return Ok(()),
        Request::OpenDirect { username } => {
            let user = net.lookup_user(&username).await?;
            let info = net.open_direct(user.user_id).await?;
            let _ = events.send(NetEvent::User(user)).await;
            tell_if_encrypted(net, info.conversation_id, events).await?;
            NetEvent::Conversation { info, open: true }
        }
        Request::LoadConversation(conversation_id) => {
            let info = net.conversation(conversation_id).await?;
            let _ = events
                .send(NetEvent::Conversation { info, open: false })
                .await;
            tell_if_encrypted(net, conversation_id, events).await?;
            let mut page = net.history(conversation_id, 0, 0).await?;
            for message in &mut page.messages {
                open_message(net, crypto, message).await;
            }
            NetEvent::History(page)
        }
        Request::History {
            conversation_id,
            before,
        } => {
            let mut page = net.history(conversation_id, before, 0).await?;
            for message in &mut page.messages {
                open_message(net, crypto, message).await;
            }
            NetEvent::History(page)
        }
        Request::Send {
            conversation_id,
            client_msg_id,
            body,
            file,
        } => match send_with_file(net, crypto, conversation_id, client_msg_id, &body, file).await {
            Ok(sent) => {
                // An encrypted message may have started a new room key.
                back_up_reporting(net, crypto, events).await;
                NetEvent::Sent(sent)
            }
            Err(error) => NetEvent::SendFailed {
                client_msg_id,
                reason: error.to_string(),
            },
        },
        Request::MarkRead {
            conversation_id,
            up_to_seq,
        } => {
            net.mark_read(conversation_id, up_to_seq).await?;
            return Ok(());
        }
        Request::Typing {
            conversation_id,
            active,
        } => {
            net.typing(conversation_id, active).await?;
            return Ok(());
        }
        Request::Ack(up_to) => {
            net.ack(up_to).await?;
            return Ok(());
        }
        Request::Resync(since) => {
            catch_up(net, crypto, since, events).await?;
            return Ok(());
        }
        Request::SubscribePresence(users) => {
            NetEvent::Presence(net.subscribe_presence(&users).await?)
        }
        Request::Names(ids) => {
            for user in net.users(&ids).await? {
                let _ = events.send(NetEvent::User(user)).await;
            }
            return Ok(());
        }
        Request::CreateGroup { name, members } => {
            let mut ids = Vec::with_capacity(members.len());
            for username in &members {
                let user = net.lookup_user(username).await?;
                ids.push(user.user_id);
                let _ = events.send(NetEvent::User(user)).await;
            }
            let info = net.create_group(&name, ids).await?;
            NetEvent::Conversation { info, open: true }
        }
        Request::AddMember {
            conversation_id,
            username,
        } => {
            let user = net.lookup_user(&username).await?;
            net.add_members(conversation_id, vec![user.user_id]).await?;
            let _ = events.send(NetEvent::User(user)).await;
            NetEvent::Notice(format!("added {username}"))
        }
        Request::RemoveMember {
            conversation_id,
            username,
        } => {
            let user = net.lookup_user(&username).await?;
            net.remove_member(conversation_id, user.user_id).await?;
            NetEvent::Notice(format!("removed {username}"))
        }
        Request::LeaveGroup(conversation_id) => {
            net.leave_group(conversation_id).await?;
            NetEvent::Notice("you left the group".to_owned())
        }
        Request::RenameGroup {
            conversation_id,
            name,
        } => {
            net.rename_group(conversation_id, &name).await?;
            NetEvent::Notice(format!("renamed the group to {name}"))
        }
        Request::SaveMedia { media_id, path } => {
            let info = net.download(media_id, &path).await?;
            NetEvent::Notice(format!("saved {} bytes to {}", info.size, path.display()))
        }
        Request::EnableBackup => {
            NetEvent::BackupEnabled(enable_backup(net, crypto_or_off(crypto)?).await?)
        }
        Request::RestoreBackup { recovery_key } => NetEvent::BackupRestored(
            restore_backup(net, crypto_or_off(crypto)?, &recovery_key).await?,
        ),
    };
    let _ = events.send(report).await;
    Ok(())
}

/// Tells the person that a conversation is end-to-end encrypted.
async fn tell_if_encrypted(
    net: &Net,
    conversation_id: ConversationId,
    events: &mpsc::Sender<NetEvent>,
) -> Result<(), CliError> {
    if net.is_encrypted(conversation_id).await? {
        let _ = events
            .send(NetEvent::Encrypted(vec![conversation_id]))
            .await;
        let notice = "🔒 this conversation is end-to-end encrypted".to_owned();
        let _ = events.send(NetEvent::Notice(notice)).await;
    }
    Ok(())
}

async fn send_with_file(
    net: &Net,
    crypto: Option<&Crypto>,
    conversation_id: ConversationId,
    client_msg_id: ClientMsgId,
    body: &str,
    file: Option<PathBuf>,
) -> Result<Sent, CliError> {
    if net.is_encrypted(conversation_id).await? {
        let crypto = crypto.ok_or_else(|| {
            CliError::Crypto("this conversation is encrypted and this device has no keys".into())
        })?;
        let mut attachments = Vec::new();
        if let Some(path) = file {
            let data = tokio::fs::read(&path)
                .await
                .map_err(|source| CliError::File {
                    path: path.clone(),
                    source,
                })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let file = crypto
                .encrypt_attachment(net.client(), &data, &guess_mime(&path), &name)
                .await?;
            attachments.push(file);
        }
        return Ok(crypto
            .send(
                net.client(),
                conversation_id,
                client_msg_id,
                body,
                attachments,
            )
            .await?);
    }
    let mut attachments = Vec::new();
    if let Some(path) = file {
        let info = net.upload(&path, &guess_mime(&path)).await?;
        attachments.push(info.media_id);
    }
    net.send(conversation_id, client_msg_id, body, attachments)
        .await
}

/// A media type from a file's extension; `application/octet-stream` when unknown.
pub(crate) fn guess_mime(path: &Path) -> String {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let mime = match extension.as_str() {
        "txt" | "md" | "log" => "text/plain",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    };
    mime.to_owned()
}
