//! [`Session`]: a logged-in device that stays connected, as the other languages see it, with its
//! start options ([`Credentials`], [`SessionOptions`], [`TlsOptions`]) and its events
//! ([`SessionEvent`]).
//!
//! It wraps `tern_client::Session` with a [`FileStorage`] at a path the app chooses, so the token,
//! the sync cursor and the outbox survive restarts of the app. Sends go through the session (it
//! retries them with their idempotency key across reconnections); every other request goes to the
//! session's current connection. Every async method runs on the bindings' runtime
//! (`runtime.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tern_client::{Client, FileStorage, Storage};

use crate::error::{chain, ClientError, ErrorCode};
use crate::runtime::run;
use crate::types::{
    hex, Account, ConversationInfo, ConversationsPage, DeviceInfo, HistoryPage, Presence,
    PushPlatform, Role, SentMessage, UpdateKind, UserInfo,
};

/// How a session authenticates when its storage holds no session yet. A stored session is
/// resumed whatever this says.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Credentials {
    /// Only resume the stored session; fail if there is none.
    Stored,
    /// Create an account and its first device.
    Register {
        /// The new user's name.
        username: String,
        /// The password.
        password: String,
        /// A name for this device.
        device_name: String,
    },
    /// Log in as a new device of an existing account.
    Login {
        /// The user's name.
        username: String,
        /// The password.
        password: String,
        /// A name for this device.
        device_name: String,
    },
}

/// How the server's certificate is checked on a TLS connection.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TlsOptions {
    /// The name the certificate must carry: a DNS name or an IP address.
    pub server_name: String,
    /// Extra trusted certificates, PEM text (each may hold several).
    #[uniffi(default = [])]
    pub roots_pem: Vec<String>,
    /// Extra trusted certificates, PEM files (such as a development server's
    /// `<data-dir>/tls/self-signed.pem`).
    #[uniffi(default = [])]
    pub root_pem_files: Vec<String>,
    /// Whether the public web roots (Mozilla's list) are trusted too.
    #[uniffi(default = true)]
    pub web_roots: bool,
}

/// Settings of a session. Durations are in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SessionOptions {
    /// The app's name and version, sent to the server for its logs (at most 64 bytes).
    pub client_name: String,
    /// TLS, or none for plain TCP.
    #[uniffi(default = None)]
    pub tls: Option<TlsOptions>,
    /// How long a request waits for its reply.
    #[uniffi(default = 10000)]
    pub request_timeout_ms: u64,
    /// The first wait before reconnecting.
    #[uniffi(default = 200)]
    pub reconnect_min_ms: u64,
    /// The longest wait before reconnecting; waits double up to it, with jitter.
    #[uniffi(default = 30000)]
    pub reconnect_max_ms: u64,
    /// How long `send` waits for the server's confirmation; the message stays queued after.
    #[uniffi(default = 60000)]
    pub send_timeout_ms: u64,
}

/// What a session tells the app, in order.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum SessionEvent {
    /// Authenticated and caught up; live updates follow.
    Connected {
        /// Whether the stored session was resumed (false for the first register or login).
        resumed: bool,
    },
    /// The connection ended; the session reconnects by itself.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// The session waits `delay_ms`, then makes connection attempt `attempt`.
    Reconnecting {
        /// The attempt about to be made (1 after a live connection).
        attempt: u32,
        /// How long until it starts.
        delay_ms: u64,
    },
    /// An entry of the user's update log: each exactly once, in `user_seq` order.
    Update {
        /// Its position in the user's log, gapless from 1.
        user_seq: u64,
        /// What happened.
        kind: UpdateKind,
    },
    /// The server stored a queued message.
    Sent {
        /// The confirmation.
        sent: SentMessage,
    },
    /// The server refused a queued message for good; it left the outbox.
    SendFailed {
        /// The message's idempotency key.
        client_msg_id: String,
        /// The server's code, if the server refused it.
        code: Option<ErrorCode>,
        /// Why.
        detail: String,
    },
    /// A followed user's presence changed.
    PresenceChanged {
        /// Their presence now.
        presence: Presence,
    },
    /// Someone started or stopped typing.
    Typing {
        /// Where.
        conversation_id: u64,
        /// Who.
        user_id: u64,
        /// Started (true) or stopped.
        active: bool,
    },
    /// The server no longer accepts this device; the session stopped and its stored session was
    /// cleared.
    LoggedOut {
        /// The server's code, if the server said so.
        code: Option<ErrorCode>,
        /// Why.
        detail: String,
    },
}

impl SessionEvent {
    /// The event for a library event, or `None` for one the bindings do not pass on.
    fn from_library(event: tern_client::SessionEvent) -> Option<SessionEvent> {
        use tern_client::SessionEvent as E;
        Some(match event {
            E::Connected { resumed } => SessionEvent::Connected { resumed },
            E::Disconnected { reason } => SessionEvent::Disconnected { reason },
            E::Reconnecting { attempt, delay } => SessionEvent::Reconnecting {
                attempt,
                delay_ms: millis(delay),
            },
            E::Update(update) => SessionEvent::Update {
                user_seq: update.user_seq,
                kind: update.kind.into(),
            },
            E::Sent(sent) => SessionEvent::Sent { sent: sent.into() },
            E::SendFailed {
                client_msg_id,
                error,
            } => {
                let error = ClientError::from(error);
                SessionEvent::SendFailed {
                    client_msg_id: hex(&client_msg_id),
                    code: error.code(),
                    detail: error.to_string(),
                }
            }
            E::Presence(presence) => SessionEvent::PresenceChanged {
                presence: presence.into(),
            },
            E::Typing(typing) => SessionEvent::Typing {
                conversation_id: typing.conversation_id,
                user_id: typing.user_id,
                active: typing.active,
            },
            E::LoggedOut { error } => {
                let error = ClientError::from(error);
                SessionEvent::LoggedOut {
                    code: error.code(),
                    detail: error.to_string(),
                }
            }
            _ => return None,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl TlsOptions {
    fn to_library(&self) -> Result<tern_client::TlsOptions, ClientError> {
        let mut tls = tern_client::TlsOptions::new(self.server_name.clone());
        for pem in &self.roots_pem {
            tls = tls.with_root_pem(pem.as_bytes());
        }
        for path in &self.root_pem_files {
            tls = tls
                .with_root_pem_file(path)
                .map_err(|e| ClientError::io(format!("{path}: {}", chain(&e))))?;
        }
        if !self.web_roots {
            tls = tls.without_web_roots();
        }
        Ok(tls)
    }
}

impl SessionOptions {
    fn to_library(&self) -> Result<tern_client::SessionOptions, ClientError> {
        let mut options = tern_client::SessionOptions::new(self.client_name.clone())
            .with_reconnect(
                Duration::from_millis(self.reconnect_min_ms),
                Duration::from_millis(self.reconnect_max_ms),
            );
        options.connect.request_timeout = Duration::from_millis(self.request_timeout_ms.max(1));
        options.send_timeout = Duration::from_millis(self.send_timeout_ms.max(1));
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.to_library()?);
        }
        Ok(options)
    }
}

impl Credentials {
    fn to_library(&self) -> tern_client::Credentials {
        match self.clone() {
            Credentials::Stored => tern_client::Credentials::Stored,
            Credentials::Register {
                username,
                password,
                device_name,
            } => tern_client::Credentials::Register {
                username,
                password,
                device_name,
            },
            Credentials::Login {
                username,
                password,
                device_name,
            } => tern_client::Credentials::Login {
                username,
                password,
                device_name,
            },
        }
    }
}

/// A connection-keeping, persisting session of one device.
///
/// Start it with [`Session::start`]; it returns once the first connection is authenticated and
/// caught up, so wrong credentials or an unreachable server fail there. After that it reconnects
/// by itself, resumes with its stored token, and delivers every update of the user's log once, in
/// order, through [`Session::next_event`]. Messages sent with [`Session::send`] are stored in the
/// outbox first and retried until the server confirms them, so none is lost or stored twice.
#[derive(uniffi::Object)]
pub struct Session {
    inner: Arc<tern_client::Session>,
    account: Account,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Runs `call` with the session's current connection, on the runtime.
    async fn with_client<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tern_client::ClientError>> + Send,
        T: Send + 'static,
    {
        let session = Arc::clone(&self.inner);
        run(async move {
            let client = session.client().await?;
            Ok(call(client).await?)
        })
        .await
    }

    /// The library's session, for calls that run on the runtime (the media helpers).
    pub(crate) fn library(&self) -> Arc<tern_client::Session> {
        Arc::clone(&self.inner)
    }
}

#[uniffi::export]
impl Session {
    /// Starts a session of the server at `server` (`"host:port"`), keeping its state in the file
    /// at `storage_path` (created if missing, mode 0600; it holds the device's token).
    #[uniffi::constructor]
    pub async fn start(
        server: String,
        credentials: Credentials,
        storage_path: String,
        options: SessionOptions,
    ) -> Result<Arc<Session>, ClientError> {
        let credentials = credentials.to_library();
        let options = options.to_library()?;
        run(async move {
            let storage = Arc::new(
                FileStorage::open(&storage_path)
                    .map_err(|e| ClientError::Storage { detail: chain(&e) })?,
            );
            let session = tern_client::Session::start(
                server,
                credentials,
                Arc::clone(&storage) as Arc<dyn Storage>,
                options,
            )
            .await?;
            let stored = storage
                .load()
                .map_err(|e| ClientError::Storage { detail: chain(&e) })?
                .session
                .ok_or_else(|| ClientError::internal("the session was not stored"))?;
            Ok(Arc::new(Session {
                inner: Arc::new(session),
                account: Account {
                    user_id: stored.user_id,
                    device_id: stored.device_id,
                    username: stored.username,
                },
            }))
        })
        .await
    }

    /// Who this session is.
    pub fn account(&self) -> Account {
        self.account.clone()
    }

    /// Stops the session: stores the cursor of every update taken, closes the connection and
    /// ends the background task. Unconfirmed sends stay stored for the next session.
    pub async fn stop(&self) {
        let session = Arc::clone(&self.inner);
        // A failure here means the runtime is gone, which leaves nothing to stop.
        let _ = run(async move {
            session.close().await;
            Ok(())
        })
        .await;
    }

    /// The next event, or none once the session has stopped and every event was returned.
    ///
    /// Asking for the next event says the app is done with the one before: the stored cursor
    /// follows, so after a crash the app sees at most the last few updates again (message ids
    /// tell them apart) and never misses one. Cancelling this call may drop the event it was
    /// about to return; to wait with a limit, use [`Session::next_event_within`].
    pub async fn next_event(&self) -> Option<SessionEvent> {
        self.next_event_until(None).await
    }

    /// The next event within `timeout_ms`, or none. The time-out never drops an event.
    pub async fn next_event_within(&self, timeout_ms: u64) -> Option<SessionEvent> {
        self.next_event_until(Some(Duration::from_millis(timeout_ms)))
            .await
    }

    /// Queues a message and waits until the server stored it, across reconnections, for up to
    /// the send time-out (then it fails with `Timeout` and the message stays queued).
    pub async fn send(
        &self,
        conversation_id: u64,
        body: String,
    ) -> Result<SentMessage, ClientError> {
        self.send_with_attachments(conversation_id, body, Vec::new())
            .await
    }

    /// [`Session::send`] with the media ids of finished uploads attached.
    pub async fn send_with_attachments(
        &self,
        conversation_id: u64,
        body: String,
        attachments: Vec<u64>,
    ) -> Result<SentMessage, ClientError> {
        let session = Arc::clone(&self.inner);
        run(async move {
            let sent = session
                .send_with_attachments(conversation_id, &body, attachments)
                .await?;
            Ok(sent.into())
        })
        .await
    }

    /// Queues a message without waiting: it is stored in the outbox when this returns, and a
    /// `Sent` (or `SendFailed`) event reports the outcome. Returns its idempotency key.
    pub fn queue_send(&self, conversation_id: u64, body: String) -> Result<String, ClientError> {
        let id = self.inner.queue_send(conversation_id, &body)?;
        Ok(hex(&id))
    }

    /// Messages queued and not yet confirmed or refused.
    pub fn outbox_len(&self) -> u64 {
        self.inner.outbox_len() as u64
    }

    /// The stored cursor: the `user_seq` of the last update the app took that is stored.
    pub fn cursor(&self) -> u64 {
        self.inner.cursor()
    }

    /// Finds a user by name.
    pub async fn lookup_user(&self, username: String) -> Result<UserInfo, ClientError> {
        self.with_client(move |c| async move { c.lookup_user(&username).await.map(Into::into) })
            .await
    }

    /// The names of users by id (at most 256), in the order asked; unknown ids are left out.
    pub async fn get_users(&self, user_ids: Vec<u64>) -> Result<Vec<UserInfo>, ClientError> {
        self.with_client(move |c| async move {
            let users = c.get_users(user_ids).await?;
            Ok(users.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Finds or creates the direct conversation with another user.
    pub async fn open_direct(&self, user_id: u64) -> Result<ConversationInfo, ClientError> {
        self.with_client(move |c| async move { c.open_direct(user_id).await.map(Into::into) })
            .await
    }

    /// One conversation the user is in.
    pub async fn get_conversation(
        &self,
        conversation_id: u64,
    ) -> Result<ConversationInfo, ClientError> {
        self.with_client(move |c| async move {
            c.get_conversation(conversation_id).await.map(Into::into)
        })
        .await
    }

    /// A page of the user's conversations with ids above `after` (0: the first page); a `limit`
    /// of 0 asks for the server's maximum.
    pub async fn list_conversations(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<ConversationsPage, ClientError> {
        self.with_client(move |c| async move {
            c.list_conversations(after, limit).await.map(Into::into)
        })
        .await
    }

    /// A page of a conversation's messages with `seq < before` (0: the newest), in ascending
    /// `seq`; a `limit` of 0 asks for the server's maximum.
    pub async fn history(
        &self,
        conversation_id: u64,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        self.with_client(move |c| async move {
            c.history(conversation_id, before, limit)
                .await
                .map(Into::into)
        })
        .await
    }

    /// Moves the user's read watermark up to `up_to_seq`; the senders get a read receipt.
    pub async fn mark_read(&self, conversation_id: u64, up_to_seq: u64) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.mark_read(conversation_id, up_to_seq).await })
            .await
    }

    /// Tells the other members the user started (true) or stopped typing.
    pub async fn typing(&self, conversation_id: u64, active: bool) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.typing(conversation_id, active).await })
            .await
    }

    /// Creates a group with the caller as owner and `members` as its other members.
    pub async fn create_group(
        &self,
        name: String,
        members: Vec<u64>,
    ) -> Result<ConversationInfo, ClientError> {
        self.with_client(
            move |c| async move { c.create_group(&name, members).await.map(Into::into) },
        )
        .await
    }

    /// Adds members to a group (owner or admin only).
    pub async fn add_members(
        &self,
        conversation_id: u64,
        members: Vec<u64>,
    ) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.add_members(conversation_id, members).await })
            .await
    }

    /// Removes a member from a group (owner or admin only).
    pub async fn remove_member(
        &self,
        conversation_id: u64,
        user_id: u64,
    ) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.remove_member(conversation_id, user_id).await })
            .await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, conversation_id: u64) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.leave_group(conversation_id).await })
            .await
    }

    /// Renames a group.
    pub async fn rename_group(
        &self,
        conversation_id: u64,
        name: String,
    ) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.rename_group(conversation_id, &name).await })
            .await
    }

    /// Makes a member an admin or a plain member again (owner only).
    pub async fn set_role(
        &self,
        conversation_id: u64,
        user_id: u64,
        role: Role,
    ) -> Result<(), ClientError> {
        self.with_client(
            move |c| async move { c.set_role(conversation_id, user_id, role.into()).await },
        )
        .await
    }

    /// Follows users' presence: returns it now, then `PresenceChanged` events on every change.
    /// Only users who share a conversation with the caller may be followed.
    pub async fn subscribe_presence(&self, users: Vec<u64>) -> Result<Vec<Presence>, ClientError> {
        self.with_client(move |c| async move {
            let list = c.subscribe_presence(users).await?;
            Ok(list.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Stops following users' presence.
    pub async fn unsubscribe_presence(&self, users: Vec<u64>) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.unsubscribe_presence(users).await })
            .await
    }

    /// Hides (or shows again) the user's last-seen time from others.
    pub async fn set_privacy(&self, hide_last_seen: bool) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.set_privacy(hide_last_seen).await })
            .await
    }

    /// The user's devices.
    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.with_client(move |c| async move {
            let devices = c.list_devices().await?;
            Ok(devices.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Revokes one of the user's devices: its token stops working and its connections close.
    pub async fn revoke_device(&self, device_id: u32) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.revoke_device(device_id).await })
            .await
    }

    /// Registers this device's push token, used while it has no connection.
    pub async fn register_push_token(
        &self,
        platform: PushPlatform,
        app_id: String,
        token: String,
    ) -> Result<(), ClientError> {
        self.with_client(move |c| async move {
            c.register_push_token(platform.into(), &app_id, &token)
                .await
        })
        .await
    }

    /// Removes this device's push token.
    pub async fn unregister_push_token(&self) -> Result<(), ClientError> {
        self.with_client(move |c| async move { c.unregister_push_token().await })
            .await
    }
}

impl Session {
    async fn next_event_until(&self, timeout: Option<Duration>) -> Option<SessionEvent> {
        let session = Arc::clone(&self.inner);
        let next = run(async move {
            // Bounded: each turn takes one event from the session's queue, and only events the
            // bindings do not pass on (none today) make it turn again.
            loop {
                let event = match timeout {
                    Some(timeout) => session.next_event_within(timeout).await,
                    None => session.next_event().await,
                };
                let Some(event) = event else {
                    return Ok(None);
                };
                if let Some(event) = SessionEvent::from_library(event) {
                    return Ok(Some(event));
                }
            }
        })
        .await;
        next.ok().flatten()
    }
}
