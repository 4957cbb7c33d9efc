//! [`Event`]: what the server says without being asked, as the application receives it.
//!
//! The reader task turns every event frame (`0x8000..=0xFFFF`) and every `Error` that answers no
//! waiting request into an [`Event`] and queues it for [`Client::next_event`](crate::Client::next_event).
//! Event types this version does not know are dropped by the decoder before they get here, which is
//! what the protocol's type ranges are for: a newer server may add events without breaking older
//! clients. For the same reason [`Event`] is `#[non_exhaustive]`: a newer client library may add
//! variants.

use tern_protocol::frames::{self, GoAway, TypingEvent};
use tern_protocol::types::Presence;
use tern_protocol::{Body, Update};

/// Something the server sent on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A live entry of the user's update log (`UpdateEvent`): a message, a receipt, a membership
    /// change. Live updates start once a `Sync` reply says `has_more == false`.
    Update(Update),
    /// A subscribed user's presence changed (`PresenceEvent`).
    Presence(Presence),
    /// Someone started or stopped typing in one of the user's conversations (`TypingEvent`).
    Typing(TypingEvent),
    /// The server is going away: finish what is in flight and reconnect after the delay it names.
    GoAway(GoAway),
    /// A to-device message for this device (`ToDeviceEvent`), once `ToDeviceSync` has caught up.
    ToDevice(tern_protocol::e2e::ToDeviceMessage),
    /// A claim took one of this device's keys (`KeyCountEvent`): top the one-time keys up.
    KeyCount(frames::KeyCountEvent),
    /// An `Error` that answers no waiting request: a connection-level error (request id 0, often
    /// followed by the server closing the connection), a notification (`Ack`, `Typing`) that
    /// failed, or the late failure of a request that had already timed out.
    Error(frames::Error),
}

impl Event {
    /// The event a frame body stands for, if it is one.
    ///
    /// `Error` bodies are always events here; the reader only asks once it knows the error answers
    /// no waiting request.
    pub(crate) fn from_body(body: Body) -> Option<Event> {
        match body {
            Body::UpdateEvent(event) => Some(Event::Update(event.update)),
            Body::PresenceEvent(event) => Some(Event::Presence(event.presence)),
            Body::TypingEvent(event) => Some(Event::Typing(event)),
            Body::GoAway(go_away) => Some(Event::GoAway(go_away)),
            Body::ToDeviceEvent(event) => Some(Event::ToDevice(event.message)),
            Body::KeyCountEvent(event) => Some(Event::KeyCount(event)),
            Body::Error(error) => Some(Event::Error(error)),
            _ => None,
        }
    }
}
