//! Presence, last seen and typing: ephemeral state that is never logged or synced.
//!
//! A user's online state lives on their owner core T, which sees every one of their sessions come
//! and go. A subscription is kept on T as (subscriber core, connection); T answers a new
//! subscription with the current presence and then sends every change. The subscriber's core
//! collects the answers of all the cores a `SubscribePresence` named before it replies
//! `PresenceList`, and folds changes that arrive meanwhile into that list, so no `PresenceEvent`
//! ever overtakes the list that started its subscription.
//!
//! Typing goes through the conversation's core, which checks membership and passes a
//! `TypingEvent` to every other member's core for their live connections.

use super::{HashMap, HashSet};

use tern_protocol::frames::{
    Ok as OkFrame, PresenceEvent, PresenceList, SetPrivacy, SubscribePresence, Typing, TypingEvent,
    UnsubscribePresence,
};
use tern_protocol::types::Presence;
use tern_protocol::ErrorCode;

use super::mail::{ConnRef, Mail};
use super::{Action, ConnId, Shard};
use crate::store::{StoreError, RANGE_READ_MAX};

/// Users one connection may follow.
pub(crate) const PRESENCE_SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1024;
/// Shortest interval between two `Typing` of one connection in one conversation.
pub(crate) const TYPING_INTERVAL_MS_MIN: u64 = 500;

/// A `SubscribePresence` waiting for the owner cores of its users.
#[derive(Debug)]
struct PendingList {
    conn: ConnId,
    request_id: u32,
    order: Vec<u64>,
    got: HashMap<u64, Presence>,
}

/// Presence bookkeeping of one core.
#[derive(Debug, Default)]
pub(crate) struct PresenceState {
    /// Users this core owns → connections (anywhere) subscribed to them.
    subscribers: HashMap<u64, HashSet<ConnRef>>,
    /// Subscription lists being collected, by (connection, request id).
    pending: HashMap<(ConnId, u32), PendingList>,
    /// Per connection of this core: users it follows, and when it last sent Typing per conversation.
    follows: HashMap<ConnId, HashSet<u64>>,
    typing: HashMap<(ConnId, u64), u64>,
}

impl Shard {
    /// The presence of a user this core owns, as others see it.
    fn presence_of(&self, user_id: u64) -> Result<Presence, StoreError> {
        let online = self.online.contains_key(&user_id);
        let record = self.store.presence(user_id)?;
        let last_seen = match (online, record) {
            (false, Some(r)) if !r.hide_last_seen && r.last_seen > 0 => Some(r.last_seen),
            _ => None,
        };
        Ok(Presence {
            user_id,
            online,
            last_seen,
        })
    }

    /// Whether two users share a conversation (or are the same user).
    fn share_conversation(&self, a: u64, b: u64) -> Result<bool, StoreError> {
        if a == b {
            return Ok(true);
        }
        if self.store.direct(a.min(b), a.max(b))?.is_some() {
            return Ok(true);
        }
        let mine: HashSet<u64> = self
            .store
            .user_conversations(a, 0, RANGE_READ_MAX)?
            .into_iter()
            .collect();
        Ok(self
            .store
            .user_conversations(b, 0, RANGE_READ_MAX)?
            .iter()
            .any(|c| mine.contains(c)))
    }

    pub(crate) fn handle_subscribe_presence(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        subscribe: SubscribePresence,
    ) -> Result<(), StoreError> {
        if let Err(retry_after_ms) =
            self.take_token(now_ms, conn, user_id, Action::SubscribePresence)
        {
            self.reply_rate_limited(conn, request_id, retry_after_ms, "subscribing too fast");
            return Ok(());
        }
        let follows = self.presence.follows.get(&conn).map_or(0, HashSet::len);
        if follows + subscribe.users.len() > PRESENCE_SUBSCRIPTIONS_PER_CONNECTION_MAX {
            let message = format!(
                "a connection follows at most {PRESENCE_SUBSCRIPTIONS_PER_CONNECTION_MAX} users"
            );
            self.reply_error(conn, request_id, ErrorCode::LIMIT_EXCEEDED, message);
            return Ok(());
        }
        for &target in &subscribe.users {
            if self.store.user(target)?.is_none() || !self.share_conversation(user_id, target)? {
                self.reply_error(
                    conn,
                    request_id,
                    ErrorCode::FORBIDDEN,
                    format!("no shared conversation with {target}"),
                );
                return Ok(());
            }
        }
        if subscribe.users.is_empty() {
            self.reply(
                conn,
                request_id,
                PresenceList {
                    presences: Vec::new(),
                },
            );
            return Ok(());
        }
        let subscriber = ConnRef {
            core: self.core,
            conn,
        };
        self.presence
            .follows
            .entry(conn)
            .or_default()
            .extend(subscribe.users.iter().copied());
        let pending = PendingList {
            conn,
            request_id,
            order: subscribe.users.clone(),
            got: HashMap::default(),
        };
        self.presence.pending.insert((conn, request_id), pending);
        let unique: HashSet<u64> = subscribe.users.into_iter().collect();
        for target in unique {
            self.mail_now(
                self.owner(target),
                Mail::Subscribe {
                    target,
                    subscriber,
                    request_id,
                },
            );
        }
        Ok(())
    }

    /// On the target's core: records the subscription and answers with the current presence.
    pub(crate) fn handle_mail_subscribe(
        &mut self,
        target: u64,
        subscriber: ConnRef,
        request_id: u32,
    ) -> Result<(), StoreError> {
        self.presence
            .subscribers
            .entry(target)
            .or_default()
            .insert(subscriber);
        let presence = self.presence_of(target)?;
        self.mail_now(
            subscriber.core,
            Mail::PresenceNow {
                subscriber,
                request_id,
                presence,
            },
        );
        Ok(())
    }

    /// On the subscriber's core: one answer of a pending `SubscribePresence`.
    pub(crate) fn handle_presence_now(
        &mut self,
        conn: ConnId,
        request_id: u32,
        presence: Presence,
    ) {
        let Some(pending) = self.presence.pending.get_mut(&(conn, request_id)) else {
            return;
        };
        pending.got.insert(presence.user_id, presence);
        if pending.order.iter().all(|u| pending.got.contains_key(u)) {
            if let Some(pending) = self.presence.pending.remove(&(conn, request_id)) {
                let presences = pending
                    .order
                    .iter()
                    .filter_map(|u| pending.got.get(u).cloned())
                    .collect();
                self.reply(pending.conn, pending.request_id, PresenceList { presences });
            }
        }
    }

    /// On the subscriber's core: a followed user's presence changed.
    pub(crate) fn handle_presence_changed(&mut self, conn: ConnId, presence: Presence) {
        if !self
            .presence
            .follows
            .get(&conn)
            .is_some_and(|f| f.contains(&presence.user_id))
        {
            return;
        }
        // A list still being collected for this user takes the news instead of an event.
        let mut folded = false;
        for pending in self
            .presence
            .pending
            .values_mut()
            .filter(|p| p.conn == conn)
        {
            if let Some(entry) = pending.got.get_mut(&presence.user_id) {
                *entry = presence.clone();
                folded = true;
            }
        }
        if !folded {
            self.event(conn, PresenceEvent { presence });
        }
    }

    pub(crate) fn handle_unsubscribe_presence(
        &mut self,
        conn: ConnId,
        request_id: u32,
        unsubscribe: UnsubscribePresence,
    ) {
        self.unfollow(conn, &unsubscribe.users);
        self.reply(conn, request_id, OkFrame {});
    }

    fn unfollow(&mut self, conn: ConnId, users: &[u64]) {
        let Some(follows) = self.presence.follows.get_mut(&conn) else {
            return;
        };
        let ended: Vec<u64> = users
            .iter()
            .copied()
            .filter(|t| follows.remove(t))
            .collect();
        let subscriber = ConnRef {
            core: self.core,
            conn,
        };
        for target in ended {
            self.mail_now(self.owner(target), Mail::Unsubscribe { target, subscriber });
        }
    }

    /// On the target's core: a subscription ended.
    pub(crate) fn handle_mail_unsubscribe(&mut self, target: u64, subscriber: ConnRef) {
        if let Some(subscribers) = self.presence.subscribers.get_mut(&target) {
            subscribers.remove(&subscriber);
            if subscribers.is_empty() {
                self.presence.subscribers.remove(&target);
            }
        }
    }

    /// A connection of this core closed: its subscriptions and typing state end with it.
    pub(crate) fn presence_connection_closed(&mut self, conn: ConnId) {
        let follows: Vec<u64> = self
            .presence
            .follows
            .get(&conn)
            .map(|f| f.iter().copied().collect())
            .unwrap_or_default();
        self.unfollow(conn, &follows);
        self.presence.follows.remove(&conn);
        self.presence.pending.retain(|(c, _), _| *c != conn);
        self.presence.typing.retain(|(c, _), _| *c != conn);
    }

    /// A user this core owns came online or went offline: store last seen and tell subscribers.
    pub(crate) fn presence_changed(
        &mut self,
        now_ms: u64,
        user_id: u64,
        online: bool,
    ) -> Result<(), StoreError> {
        let mut record = self.store.presence(user_id)?.unwrap_or_default();
        if !online {
            record.last_seen = now_ms;
            self.batch.put_presence(user_id, &record)?;
        }
        let Some(subscribers) = self.presence.subscribers.get(&user_id) else {
            return Ok(());
        };
        let subscribers: Vec<ConnRef> = subscribers.iter().copied().collect();
        let last_seen = (!online && !record.hide_last_seen).then_some(now_ms);
        let presence = Presence {
            user_id,
            online,
            last_seen,
        };
        for subscriber in subscribers {
            let mail = Mail::PresenceChanged {
                subscriber,
                presence: presence.clone(),
            };
            self.mail_after_commit(subscriber.core, mail);
        }
        Ok(())
    }

    pub(crate) fn handle_set_privacy(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        set: SetPrivacy,
    ) -> Result<(), StoreError> {
        let mut record = self.store.presence(user_id)?.unwrap_or_default();
        record.hide_last_seen = set.hide_last_seen;
        self.batch.put_presence(user_id, &record)?;
        self.reply_after_commit(conn, request_id, OkFrame {});
        Ok(())
    }

    pub(crate) fn handle_typing(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        typing: Typing,
    ) {
        let key = (conn, typing.conversation_id);
        // Only starts are spaced out: a stop right after a start (a quick message) is fine.
        let last_start = self.presence.typing.get(&key).filter(|_| typing.active);
        if let Some(last) = last_start {
            let since = now_ms.saturating_sub(*last);
            if since < TYPING_INTERVAL_MS_MIN {
                let retry_after_ms = (TYPING_INTERVAL_MS_MIN - since) as u32;
                let message = "typing starts come at most twice a second per conversation";
                self.reply_rate_limited(conn, request_id, retry_after_ms, message);
                return;
            }
        }
        if let Err(retry_after_ms) = self.take_token(now_ms, conn, user_id, Action::Typing) {
            let message = "typing indicators too fast";
            self.reply_rate_limited(conn, request_id, retry_after_ms, message);
            return;
        }
        if typing.active {
            self.presence.typing.insert(key, now_ms);
        }
        let origin = ConnRef {
            core: self.core,
            conn,
        };
        let core = self.owner(typing.conversation_id);
        let mail = Mail::Typing {
            origin,
            request_id,
            user_id,
            conversation_id: typing.conversation_id,
            active: typing.active,
        };
        self.mail_now(core, mail);
    }

    /// On the conversation's core: checks membership and passes the indicator to the others.
    pub(crate) fn handle_mail_typing(
        &mut self,
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        conversation_id: u64,
        active: bool,
    ) -> Result<(), StoreError> {
        let record = self
            .cached_conversation(conversation_id)?
            .filter(|r| r.has_member(user_id));
        let Some(record) = record else {
            self.mail_now(
                origin.core,
                Mail::Reply {
                    origin,
                    request_id,
                    result: Err(ErrorCode::NOT_FOUND),
                },
            );
            return Ok(());
        };
        let event = TypingEvent {
            conversation_id,
            user_id,
            active,
        };
        for member in record.members.iter().filter(|m| m.user_id != user_id) {
            let mail = Mail::TypingTo {
                to_user: member.user_id,
                event: event.clone(),
            };
            self.mail_now(self.owner(member.user_id), mail);
        }
        Ok(())
    }

    /// On a member's core: shows a typing indicator on the member's live connections.
    pub(crate) fn handle_typing_to(&mut self, to_user: u64, event: TypingEvent) {
        let live: Vec<ConnId> = self.live_sessions(to_user).collect();
        for conn in live {
            self.event(conn, event.clone());
        }
    }
}
