//! Typed helpers on [`Client`]: one method per request, each building the frame, calling
//! [`Client::request`] (or [`Client::notify`]) and checking the reply's type.
//!
//! They exist so applications and tests say `client.send(conversation, id, "hi")` rather than
//! building frames and matching on [`Body`]. A reply of another type than the request's means the
//! server and client disagree about the protocol, and fails with
//! [`ClientError::UnexpectedReply`]. Requests without a helper yet (groups, presence, push, media)
//! go through [`Client::request`] directly; helpers for them are additions, not changes.

use tern_protocol::frames::{
    self, Authenticated, Conversations, HistoryPage, Sent, SyncPage, UserInfo,
};
use tern_protocol::types::{
    ClientMsgId, ConversationId, ConversationInfo, DeviceId, DeviceInfo, Token, UserId,
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

    /// Finds or creates the direct conversation with another user.
    pub async fn open_direct(&self, user_id: UserId) -> Result<ConversationInfo, ClientError> {
        let reply = self.request(frames::OpenDirect { user_id }).await?;
        expect_reply!(reply, Conversation).map(|reply| reply.conversation)
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
        let reply = self
            .request(frames::Send {
                conversation_id,
                client_msg_id,
                body: body.to_owned(),
                attachments: Vec::new(),
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
    /// `seq`; a `limit` of 0 asks for the server's maximum.
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
            })
            .await?;
        expect_reply!(reply, HistoryPage)
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
}
