//! Mail: the messages cores send each other through their mailboxes.
//!
//! This enum is the seam between cores: everything one core asks of another is a variant here, a
//! plain value with no references into the sender's state, and no socket: a connection moving to
//! its user's core travels beside the mail, in the runtime's envelope (`runtime::mailbox::Letter`). Running across several machines later
//! means carrying these over a broker instead of an in-process queue.

use tern_protocol::e2e::{ClaimedKey, DeviceAddress, ToDeviceOut};
use tern_protocol::frames::Sent;
use tern_protocol::ErrorCode;

use super::ConnId;
use crate::store::records::{UpdateRecord, UserRecord};
use tern_protocol::frames::TypingEvent;
use tern_protocol::types::{Presence, Role};
use tern_protocol::Body;

/// A connection somewhere: its core and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnRef {
    pub(crate) core: usize,
    pub(crate) conn: ConnId,
}

/// What a migrating connection asks its new core to finish.
#[derive(Debug)]
pub(crate) enum AdoptAuth {
    /// Password checked (login) or account created (register): create a device and a token.
    NewDevice {
        user_id: u64,
        username: String,
        device_name: String,
        token: [u8; 32],
        token_hash: [u8; 32],
    },
    /// Token looked up: re-check the device and resume it.
    Resume {
        user_id: u64,
        device_id: u32,
        token_hash: [u8; 32],
    },
}

/// A request from one core to another, or a reply.
#[derive(Debug)]
pub(crate) enum Mail {
    /// To the username's owner core: create the account unless the name is taken.
    CreateUser {
        origin: ConnRef,
        user: Box<UserRecord>,
        device_name: String,
    },
    /// Back to the origin: the account exists now (or `Err` with why not).
    UserCreated {
        origin: ConnRef,
        result: Result<(u64, String, String), ErrorCode>,
    },
    /// To the conversation's owner core: store a message.
    Send {
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        send: Box<tern_protocol::frames::Send>,
    },
    /// Back to the sender's core: the message is durable (or `Err`).
    SendDone {
        origin: ConnRef,
        request_id: u32,
        result: Result<Sent, ErrorCode>,
    },
    /// To the owner core of members: append a message to each member's update log. One mail
    /// per core and message, however many of the members that core owns.
    Deliver {
        /// The members, in the order the conversation's core lists them.
        users: Vec<u64>,
        conversation_id: u64,
        seq: u64,
        sender: u64,
        from_core: usize,
        /// The stored message, so live devices get it without reading it back.
        message: std::sync::Arc<crate::store::records::MessageRecord>,
        /// The two members of a direct conversation (replying there sends a read receipt);
        /// `None` in a group.
        direct: Option<[u64; 2]>,
    },
    /// Back to the conversation's owner: these members' logs hold the message.
    Delivered {
        conversation_id: u64,
        seq: u64,
        users: Vec<u64>,
    },
    /// To a user's owner core: append an entry (a receipt, a group change) to the user's log.
    Append { to_user: u64, update: UpdateRecord },
    /// To a group's owner core: change the group.
    GroupChange {
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        conversation_id: u64,
        change: GroupChange,
    },
    /// Back to the origin: the answer to a request another core carried out. The body is boxed
    /// because it is the largest payload of any mail: unboxed, every mail would be as large.
    Reply {
        origin: ConnRef,
        request_id: u32,
        result: Result<Box<Body>, ErrorCode>,
    },
    /// To a user's owner core: subscribe a connection to the user's presence.
    Subscribe {
        target: u64,
        subscriber: ConnRef,
        request_id: u32,
    },
    /// To a user's owner core: end a subscription.
    Unsubscribe { target: u64, subscriber: ConnRef },
    /// Back to the subscriber: the presence at the time of subscribing.
    PresenceNow {
        subscriber: ConnRef,
        request_id: u32,
        presence: Presence,
    },
    /// To a subscriber: a followed user's presence changed.
    PresenceChanged {
        subscriber: ConnRef,
        presence: Presence,
    },
    /// To a conversation's core: a member is typing.
    Typing {
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        conversation_id: u64,
        active: bool,
    },
    /// To a member's core: show a typing indicator on the member's live connections.
    TypingTo { to_user: u64, event: TypingEvent },
    /// From the push worker to a user's core: the user's job is done; it read what to say at
    /// `read_at_ms`.
    PushDone { user_id: u64, read_at_ms: u64 },
    /// From the push worker to a user's core: the gateway rejected this pushkey.
    PushRejected { user_id: u64, pushkey: String },
    /// To the owner core of the lower user id: find or create the pair's direct conversation.
    OpenDirect {
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        peer: u64,
        /// Create it encrypted end to end (if it does not exist yet).
        encrypted: bool,
    },
    /// Back to the origin: the direct conversation's id (or `Err`).
    DirectOpened {
        origin: ConnRef,
        request_id: u32,
        result: Result<u64, ErrorCode>,
    },
    /// To the owner core of the recipients: queue to-device messages (part `gather` of a
    /// `SendToDevice`).
    ToDevice {
        origin: ConnRef,
        request_id: u32,
        gather: u64,
        sender: u64,
        sender_device: u32,
        messages: Vec<ToDeviceOut>,
    },
    /// Back to the origin: the part is queued and durable, but for these recipients (or `Err`).
    ToDeviceQueued {
        origin: ConnRef,
        request_id: u32,
        gather: u64,
        result: Result<Vec<DeviceAddress>, ErrorCode>,
    },
    /// To the owner core of the devices' users: claim one key of each (part `gather` of a
    /// `ClaimKeys`).
    ClaimKeys {
        origin: ConnRef,
        request_id: u32,
        gather: u64,
        devices: Vec<DeviceAddress>,
    },
    /// Back to the origin: the keys, removed durably (or `Err`).
    KeysClaimed {
        origin: ConnRef,
        request_id: u32,
        gather: u64,
        result: Result<Vec<ClaimedKey>, ErrorCode>,
    },
}

/// A change to a group, carried out by the group's owner core.
#[derive(Debug)]
pub(crate) enum GroupChange {
    /// Add these users as members.
    Add(Vec<u64>),
    /// Remove this member.
    Remove(u64),
    /// The caller leaves.
    Leave,
    /// A new name.
    Rename(String),
    /// A member gets a role.
    SetRole(u64, Role),
}

/// What to send instead of `mail` when the batch it waited on failed: a request's origin gets
/// `code`, an answer becomes `code`, and an effect of the void batch is dropped (`None`).
pub(crate) fn refusal(mail: Mail, code: ErrorCode) -> Option<Mail> {
    let reply = |origin: ConnRef, request_id: u32| Mail::Reply {
        origin,
        request_id,
        result: Err(code),
    };
    match mail {
        Mail::SendDone {
            origin, request_id, ..
        } => Some(Mail::SendDone {
            origin,
            request_id,
            result: Err(code),
        }),
        Mail::UserCreated { origin, .. } => Some(Mail::UserCreated {
            origin,
            result: Err(code),
        }),
        Mail::DirectOpened {
            origin, request_id, ..
        } => Some(Mail::DirectOpened {
            origin,
            request_id,
            result: Err(code),
        }),
        Mail::ToDevice {
            origin,
            request_id,
            gather,
            ..
        }
        | Mail::ToDeviceQueued {
            origin,
            request_id,
            gather,
            ..
        } => Some(Mail::ToDeviceQueued {
            origin,
            request_id,
            gather,
            result: Err(code),
        }),
        Mail::ClaimKeys {
            origin,
            request_id,
            gather,
            ..
        }
        | Mail::KeysClaimed {
            origin,
            request_id,
            gather,
            ..
        } => Some(Mail::KeysClaimed {
            origin,
            request_id,
            gather,
            result: Err(code),
        }),
        Mail::Reply {
            origin, request_id, ..
        }
        | Mail::Send {
            origin, request_id, ..
        }
        | Mail::GroupChange {
            origin, request_id, ..
        }
        | Mail::Typing {
            origin, request_id, ..
        }
        | Mail::OpenDirect {
            origin, request_id, ..
        } => Some(reply(origin, request_id)),
        Mail::Subscribe {
            subscriber,
            request_id,
            ..
        } => Some(reply(subscriber, request_id)),
        Mail::CreateUser { origin, .. } => Some(Mail::UserCreated {
            origin,
            result: Err(code),
        }),
        // Presence is not stored: the answer stands.
        mail @ Mail::PresenceNow { .. } => Some(mail),
        Mail::Deliver { .. }
        | Mail::Delivered { .. }
        | Mail::Append { .. }
        | Mail::Unsubscribe { .. }
        | Mail::PresenceChanged { .. }
        | Mail::TypingTo { .. }
        | Mail::PushDone { .. }
        | Mail::PushRejected { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mail is moved through every core's queues several times per message; past 128 bytes each
    /// move is a `memcpy` call rather than a few inlined copies.
    #[test]
    fn mail_stays_small() {
        assert!(
            std::mem::size_of::<Mail>() <= 96,
            "Mail is {} bytes",
            std::mem::size_of::<Mail>()
        );
    }
}
