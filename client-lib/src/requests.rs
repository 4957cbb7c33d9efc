//! Typed helpers on [`Client`]: one method per request, each building the frame, calling
//! [`Client::request`] (or [`Client::notify`]) and checking the reply's type.
//!
//! They exist so applications and tests say `client.send(conversation, id, "hi")` rather than
//! building frames and matching on [`Body`]. A reply of another type than the request's means the
//! server and client disagree about the protocol, and fails with
//! [`ClientError::UnexpectedReply`]. Every request of the protocol has one; media also has
//! whole-file helpers ([`Client::upload`], [`Client::download`]) that do the chunking and checks.

use tern_protocol::frames::{
    self, Authenticated, Conversations, HistoryPage, MediaData, MediaInfo, Sent, SyncPage,
    UploadState, UserInfo,
};
use tern_protocol::limits::MEDIA_CHUNK_BYTES_MAX;
use tern_protocol::types::{
    ClientMsgId, ConversationId, ConversationInfo, DeviceId, DeviceInfo, MediaId, Presence,
    PushPlatform, Role, Token, UserId,
};
use tern_protocol::Body;

use crate::client::Client;
use crate::error::ClientError;

/// Unwraps the reply variant a request expects, or names the one that came instead.
macro_rules! expect_reply {
    ($reply:expr, $variant:ident) => {
        match $reply {
            Body::$variant(value) => Ok(value),
            other => Err(ClientError::UnexpectedReply {
                expected: stringify!($variant),
                got: other.name(),
            }),
        }
    };
}

impl Client {
    /// Creates an account and its first device, and authenticates this connection as that device.
    /// The reply's `token` is the device's resume token: store it, it is never shown again.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Authenticated, ClientError> {
        let reply = self
            .request(frames::Register {
                username: username.to_owned(),
                password: password.to_owned(),
                device_name: device_name.to_owned(),
            })
            .await?;
        expect_reply!(reply, Authenticated)
    }

    /// Logs in with a password, creating a new device, and authenticates this connection as it.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Authenticated, ClientError> {
        let reply = self
            .request(frames::Login {
                username: username.to_owned(),
                password: password.to_owned(),
                device_name: device_name.to_owned(),
            })
            .await?;
        expect_reply!(reply, Authenticated)
    }

    /// Authenticates this connection as an existing device, by the token `register` or `login`
    /// issued to it.
    pub async fn resume(&self, token: Token) -> Result<Authenticated, ClientError> {
        let reply = self.request(frames::Resume { token }).await?;
        expect_reply!(reply, Authenticated)
    }

    /// Revokes this device's token and ends the session; the server closes the connection after
    /// replying.
    pub async fn logout(&self) -> Result<(), ClientError> {
        let reply = self.request(frames::Logout {}).await?;
        expect_reply!(reply, Ok).map(drop)
    }

    /// A heartbeat: returns the nonce the server echoed.
    pub async fn ping(&self, nonce: u64) -> Result<u64, ClientError> {
        let reply = self.request(frames::Ping { nonce }).await?;
        expect_reply!(reply, Pong).map(|pong| pong.nonce)
    }

    /// The user's devices.
    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        let reply = self.request(frames::ListDevices {}).await?;
        expect_reply!(reply, Devices).map(|devices| devices.devices)
    }

    /// Revokes one of the user's devices: its token stops working and its connections close.
    pub async fn revoke_device(&self, device_id: DeviceId) -> Result<(), ClientError> {
        let reply = self.request(frames::RevokeDevice { device_id }).await?;
        expect_reply!(reply, Ok).map(drop)
    }

    /// Finds a user by username.
    pub async fn lookup_user(&self, username: &str) -> Result<UserInfo, ClientError> {
        let reply = self
            .request(frames::LookupUser {
                username: username.to_owned(),
            })
            .await?;
        expect_reply!(reply, UserInfo)
    }

    /// The names of users by id (at most 256 at once), in the order asked; ids of no user are
    /// left out.
    pub async fn get_users(&self, user_ids: Vec<UserId>) -> Result<Vec<UserInfo>, ClientError> {
        let reply = self.request(frames::GetUsers { user_ids }).await?;
        expect_reply!(reply, Users).map(|users| users.users)
    }

    /// Finds or creates the direct conversation with another user.
    pub async fn open_direct(&self, user_id: UserId) -> Result<ConversationInfo, ClientError> {
        let reply = self
            .request(frames::OpenDirect {
                user_id,
                encrypted: false,
            })
            .await?;
        expect_reply!(reply, Conversation).map(|reply| reply.conversation)
    }

    /// Finds the direct conversation with another user, creating it encrypted end to end if there
    /// is none; the flag says whether the one returned is encrypted (one created earlier without
    /// encryption stays so).
    pub async fn open_direct_encrypted(
        &self,
        user_id: UserId,
    ) -> Result<(ConversationInfo, bool), ClientError> {
        let reply = self
            .request(frames::OpenDirect {
                user_id,
                encrypted: true,
            })
            .await?;
        expect_reply!(reply, Conversation).map(|reply| (reply.conversation, reply.encrypted))
    }

    /// One conversation the user is in.
    pub async fn get_conversation(
        &self,
        conversation_id: ConversationId,
    ) -> Result<ConversationInfo, ClientError> {
        let reply = self
            .request(frames::GetConversation { conversation_id })
            .await?;
        expect_reply!(reply, Conversation).map(|reply| reply.conversation)
    }

    /// A page of the user's conversations with ids above `after` (0 for the first page); a `limit`
    /// of 0 asks for the server's maximum.
    pub async fn list_conversations(
        &self,
        after: ConversationId,
        limit: u32,
    ) -> Result<Conversations, ClientError> {
        let reply = self
            .request(frames::ListConversations { after, limit })
            .await?;
        expect_reply!(reply, Conversations)
    }

    /// Sends a text message. `client_msg_id` is the idempotency key: sending again with the same
    /// key (after a time-out, say) returns the first `Sent` instead of storing a second message.
    pub async fn send(
        &self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: &str,
    ) -> Result<Sent, ClientError> {
        self.send_with_attachments(conversation_id, client_msg_id, body, Vec::new())
            .await
    }

    /// Sends a message with the `media_id`s of completed uploads attached, as [`Client::send`].
    pub async fn send_with_attachments(
        &self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: &str,
        attachments: Vec<MediaId>,
    ) -> Result<Sent, ClientError> {
        let reply = self
            .request(frames::Send {
                conversation_id,
                client_msg_id,
                body: body.to_owned(),
                attachments,
            })
            .await?;
        expect_reply!(reply, Sent)
    }

    /// A page of the user's updates after `since` (the device's cursor); a `limit` of 0 asks for
    /// the server's maximum. The page with `has_more == false` also starts live
    /// [`Event::Update`](crate::Event::Update)s on this connection.
    pub async fn sync(&self, since: u64, limit: u32) -> Result<SyncPage, ClientError> {
        let reply = self.request(frames::Sync { since, limit }).await?;
        expect_reply!(reply, SyncPage)
    }

    /// Tells the server this device has processed every update up to `up_to`. A notification:
    /// returns once queued; a failure arrives as [`Event::Error`](crate::Event::Error).
    pub async fn ack(&self, up_to: u64) -> Result<(), ClientError> {
        self.notify(frames::Ack { up_to }).await
    }

    /// Tells the other members the user started (`true`) or stopped typing. A notification, like
    /// [`Client::ack`].
    pub async fn typing(
        &self,
        conversation_id: ConversationId,
        active: bool,
    ) -> Result<(), ClientError> {
        self.notify(frames::Typing {
            conversation_id,
            active,
        })
        .await
    }

    /// A page of a conversation's messages with `seq < before` (0: from the newest), in ascending
    /// `seq`; a `limit` of 0 asks for the server's maximum. Page backwards with `before` = the
    /// first `seq` of the page while `has_more`.
    pub async fn history(
        &self,
        conversation_id: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let reply = self
            .request(frames::History {
                conversation_id,
                before,
                limit,
                after: None,
            })
            .await?;
        expect_reply!(reply, HistoryPage)
    }

    /// A page of a conversation's messages with `seq > after`, read forwards: the oldest ones above
    /// it, in ascending `seq` (`after` = 0 starts at the first message). It reads on from a search
    /// hit, a quoted message or the first unread one (`after` = the conversation's `read_seq`).
    /// Page forwards with `after` = the last `seq` of the page while `has_more`; a `limit` of 0
    /// asks for the server's maximum.
    ///
    /// Forward paging came with protocol revision 1.1. A server older than that answers with a
    /// backward page instead, which this call recognises (its reply does not echo `after`) and
    /// turns into [`ClientError::Unsupported`], so a caller never mistakes the newest messages for
    /// the ones it asked for.
    pub async fn history_after(
        &self,
        conversation_id: ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let reply = self
            .request(frames::History {
                conversation_id,
                before: 0,
                limit,
                after: Some(after),
            })
            .await?;
        let page = expect_reply!(reply, HistoryPage)?;
        if page.after != Some(after) {
            return Err(ClientError::Unsupported {
                what: "forward paging of history (History.after, protocol revision 1.1)",
            });
        }
        Ok(page)
    }

    /// Moves the user's read watermark in a conversation up to `up_to_seq` (never backwards).
    pub async fn mark_read(
        &self,
        conversation_id: ConversationId,
        up_to_seq: u64,
    ) -> Result<(), ClientError> {
        let reply = self
            .request(frames::MarkRead {
                conversation_id,
                up_to_seq,
            })
            .await?;
        expect_reply!(reply, Ok).map(drop)
    }

    /// Sends a request whose reply is `Ok`.
    async fn request_ok(&self, body: impl Into<Body>) -> Result<(), ClientError> {
        let reply = self.request(body).await?;
        expect_reply!(reply, Ok).map(|_| ())
    }

    /// Creates a group with the caller as owner and `members` as its other members.
    pub async fn create_group(
        &self,
        name: &str,
        members: Vec<UserId>,
    ) -> Result<ConversationInfo, ClientError> {
        let name = name.to_owned();
        let reply = self
            .request(frames::CreateGroup {
                name,
                members,
                encrypted: false,
            })
            .await?;
        expect_reply!(reply, Conversation).map(|c| c.conversation)
    }

    /// Creates a group encrypted end to end, with the caller as owner.
    pub async fn create_encrypted_group(
        &self,
        name: &str,
        members: Vec<UserId>,
    ) -> Result<ConversationInfo, ClientError> {
        let name = name.to_owned();
        let reply = self
            .request(frames::CreateGroup {
                name,
                members,
                encrypted: true,
            })
            .await?;
        expect_reply!(reply, Conversation).map(|c| c.conversation)
    }

    /// Adds members to a group (owner or admin only).
    pub async fn add_members(
        &self,
        conversation_id: ConversationId,
        members: Vec<UserId>,
    ) -> Result<(), ClientError> {
        self.request_ok(frames::AddMembers {
            conversation_id,
            members,
        })
        .await
    }

    /// Removes a member from a group (owner or admin only, within the role rules).
    pub async fn remove_member(
        &self,
        conversation_id: ConversationId,
        user_id: UserId,
    ) -> Result<(), ClientError> {
        self.request_ok(frames::RemoveMember {
            conversation_id,
            user_id,
        })
        .await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, conversation_id: ConversationId) -> Result<(), ClientError> {
        self.request_ok(frames::LeaveGroup { conversation_id })
            .await
    }

    /// Renames a group.
    pub async fn rename_group(
        &self,
        conversation_id: ConversationId,
        name: &str,
    ) -> Result<(), ClientError> {
        let name = name.to_owned();
        self.request_ok(frames::RenameGroup {
            conversation_id,
            name,
        })
        .await
    }

    /// Makes a member an admin or a plain member again (owner only).
    pub async fn set_role(
        &self,
        conversation_id: ConversationId,
        user_id: UserId,
        role: Role,
    ) -> Result<(), ClientError> {
        self.request_ok(frames::SetRole {
            conversation_id,
            user_id,
            role,
        })
        .await
    }

    /// Follows users' presence: returns their presence now, then [`Event::Presence`] on every
    /// change. Only users who share a conversation with the caller may be followed.
    ///
    /// [`Event::Presence`]: crate::Event::Presence
    pub async fn subscribe_presence(
        &self,
        users: Vec<UserId>,
    ) -> Result<Vec<Presence>, ClientError> {
        let reply = self.request(frames::SubscribePresence { users }).await?;
        expect_reply!(reply, PresenceList).map(|list| list.presences)
    }

    /// Stops following users' presence.
    pub async fn unsubscribe_presence(&self, users: Vec<UserId>) -> Result<(), ClientError> {
        self.request_ok(frames::UnsubscribePresence { users }).await
    }

    /// Hides (or shows again) the caller's last-seen time from others.
    pub async fn set_privacy(&self, hide_last_seen: bool) -> Result<(), ClientError> {
        self.request_ok(frames::SetPrivacy { hide_last_seen }).await
    }

    /// Registers this device's push token, used while it has no connection.
    pub async fn register_push_token(
        &self,
        platform: PushPlatform,
        app_id: &str,
        token: &str,
    ) -> Result<(), ClientError> {
        self.request_ok(frames::RegisterPushToken {
            platform,
            app_id: app_id.to_owned(),
            token: token.to_owned(),
        })
        .await
    }

    /// Removes this device's push token.
    pub async fn unregister_push_token(&self) -> Result<(), ClientError> {
        self.request_ok(frames::UnregisterPushToken {}).await
    }

    /// Starts an upload of `size` bytes whose SHA-256 is `sha256`.
    pub async fn upload_begin(
        &self,
        size: u64,
        mime: &str,
        sha256: [u8; 32],
    ) -> Result<UploadState, ClientError> {
        let mime = mime.to_owned();
        let reply = self
            .request(frames::UploadBegin { size, mime, sha256 })
            .await?;
        expect_reply!(reply, UploadState)
    }

    /// How much of an unfinished upload the server has, to resume it at `received`.
    pub async fn upload_status(&self, media_id: MediaId) -> Result<UploadState, ClientError> {
        let reply = self.request(frames::UploadStatus { media_id }).await?;
        expect_reply!(reply, UploadState)
    }

    /// Sends the bytes of an upload at `offset` (at most 256 KiB).
    pub async fn upload_chunk(
        &self,
        media_id: MediaId,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<UploadState, ClientError> {
        let reply = self
            .request(frames::UploadChunk {
                media_id,
                offset,
                data,
            })
            .await?;
        expect_reply!(reply, UploadState)
    }

    /// Completes an upload; the server checks the size and the SHA-256.
    pub async fn upload_finish(&self, media_id: MediaId) -> Result<MediaInfo, ClientError> {
        let reply = self.request(frames::UploadFinish { media_id }).await?;
        expect_reply!(reply, MediaInfo)
    }

    /// Describes a media item the caller may read.
    pub async fn get_media(&self, media_id: MediaId) -> Result<MediaInfo, ClientError> {
        let reply = self.request(frames::GetMedia { media_id }).await?;
        expect_reply!(reply, MediaInfo)
    }

    /// Reads up to `length` bytes of a media item from `offset`.
    pub async fn download_range(
        &self,
        media_id: MediaId,
        offset: u64,
        length: u32,
    ) -> Result<MediaData, ClientError> {
        let reply = self
            .request(frames::Download {
                media_id,
                offset,
                length,
            })
            .await?;
        expect_reply!(reply, MediaData)
    }

    /// Uploads `data` whole: begins with its SHA-256, sends it in the largest chunks, finishes.
    /// Attach the returned `media_id` to a message within the server's time limit.
    pub async fn upload(&self, data: &[u8], mime: &str) -> Result<MediaInfo, ClientError> {
        let sha256 = sha256(data);
        let state = self.upload_begin(data.len() as u64, mime, sha256).await?;
        let mut offset = state.received;
        while offset < data.len() as u64 {
            let end = (offset as usize + MEDIA_CHUNK_BYTES_MAX as usize).min(data.len());
            let chunk = data[offset as usize..end].to_vec();
            offset = self
                .upload_chunk(state.media_id, offset, chunk)
                .await?
                .received;
        }
        self.upload_finish(state.media_id).await
    }

    /// Downloads a whole media item and checks it against its SHA-256.
    pub async fn download(&self, media_id: MediaId) -> Result<Vec<u8>, ClientError> {
        let info = self.get_media(media_id).await?;
        let mut data = Vec::with_capacity(info.size.min(1 << 30) as usize);
        while (data.len() as u64) < info.size {
            let part = self
                .download_range(media_id, data.len() as u64, MEDIA_CHUNK_BYTES_MAX)
                .await?;
            if part.data.is_empty() {
                break;
            }
            data.extend_from_slice(&part.data);
        }
        if data.len() as u64 != info.size || sha256(&data) != info.sha256 {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the downloaded bytes do not match the media's size and SHA-256",
            )));
        }
        Ok(data)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
