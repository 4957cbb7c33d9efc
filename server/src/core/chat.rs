//! The message path, sync, history and receipts.
//!
//! 1. `Send` arrives at the sender's core S, which forwards it to the conversation's core C.
//! 2. C checks membership and the idempotency key, assigns `seq` (gapless) and a message id, and
//!    puts the message and its idempotency record into its batch (plus, when the conversation's
//!    fan-out was finished, a row saying it may not be: see "Fan-out progress" below).
//! 3. After C's commit, S acknowledges `Sent` (durable) and every member's core M gets `Deliver`
//!    (one per core, naming the members it owns).
//! 4. M appends the message to the member's update log unless its per-(user, conversation)
//!    watermark shows it is there already, and pushes it to live devices at once when it may
//!    ([`Shard::append`]: in order, within the user's reservation), else after its commit. Once
//!    the entry is durable, M confirms to C.
//! 5. While the server runs, C re-delivers to the members that have not confirmed within
//!    [`FANOUT_RETRY_MS`] (a member's commit failed, say), doubling the wait each time. Not while
//!    every core those members live on has confirmed something within that time, though: such a
//!    core is working through its mail in order, and the delivery is queued, not lost. Delivering
//!    again then would only add to its queue (under load it did, for a third of the messages in
//!    W2); a delivery still unconfirmed after [`FANOUT_RETRY_MAX_MS`] goes out again regardless.
//!
//! # Fan-out progress, without writes per message
//!
//! A one-to-one message costs four writes: the message, its idempotency record, and one entry in
//! each member's log. What recovery needs besides is kept in memory and written by a checkpoint
//! that begins every [`CHECKPOINT_MS`], not per message. A checkpoint is written in shares, one
//! every [`CHECKPOINT_SHARE_EVERY_MS`] over [`CHECKPOINT_SPREAD_MS`] (a few open conversations,
//! users and read watermarks each, [`Shard::checkpoint_share`]): written at once it was tens of
//! thousands of writes in one batch, and every message on the core waited behind it. Each user's
//! watermarks go in one share with the `user_seq` they cover, so each user's checkpoint is whole.
//!
//! - C keeps a row in `fanout` for each conversation whose fan-out may be unfinished, holding the
//!   seq up to which every member confirmed. The row is written with the first message after the
//!   fan-out was finished, moved forward by checkpoints, and deleted by the checkpoint that finds
//!   nothing pending. At start C re-delivers every message above each row, in order, to the
//!   members whose logs do not hold it (each member's log is read back once to tell).
//! - M's fan-out watermarks (per member and conversation, the highest seq in the log) are written
//!   by checkpoints, with the `user_seq` they cover. A watermark M does not hold in memory is read
//!   back as the stored one raised by the log entries after that `user_seq`.
//! - When a group's membership changes while its fan-out is unfinished, recovery must not deliver
//!   the unfinished messages to the members it finds then: one added since would get a message
//!   sent before they joined, one removed would miss it. So the change's batch puts a row
//!   (conversation, seq) for each of them, naming the members still to confirm it, and marks in
//!   the conversation's row the seq up to which recipients are fixed ([`Shard::fix_recipients`]).
//!   At start C delivers a message up to that seq only if it has such a row, and only to its
//!   members; above it, to the members. A failed commit writes those rows again; a message that
//!   takes a seq a failed commit voided lowers the fixed seq below it. The rows go once fan-out
//!   passes them.
//! - A sender's own read watermark, moved by each message they send, is written by checkpoints
//!   too; after a crash it may lag by up to a checkpoint (their unread count then shows their own
//!   newest messages until they next read). Moves that announce a receipt are written with it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use tern_protocol::frames::{
    Ack, Conversation, Conversations, History, HistoryPage, ListConversations, MarkRead,
    Ok as OkFrame, OpenDirect, Send, Sent, Sync, SyncPage,
};
use tern_protocol::limits::{
    CONVERSATIONS_PAGE_MAX, FRAME_BYTES_MAX, HISTORY_PAGE_MESSAGES_MAX, SYNC_PAGE_UPDATES_MAX,
};
use tern_protocol::types::{
    ConversationInfo, ConversationKind, ConversationSummary, Member, Message, ReceiptKind, Role,
};
use tern_protocol::update::Receipt;
use tern_protocol::{ErrorCode, Update, UpdateKind};

use super::mail::{ConnRef, Mail};
use super::{owner, reads, ConnId, Shard};
use crate::store::keys;
use crate::store::records::{
    ConversationRecord, IdempotencyRecord, MemberRecord, MessageRecord, ReceiptRecord, UpdateRecord,
};
use crate::store::{FanoutRow, Store, StoreError, RANGE_READ_MAX};

/// Bytes a page may fill, leaving room for its own fields inside the frame.
const PAGE_BYTES_MAX: usize = FRAME_BYTES_MAX as usize - 4096;
/// Updates an `Ack` scans for delivered receipts before it stops (the rest get none).
const ACK_SCAN_UPDATES_MAX: usize = 10 * RANGE_READ_MAX;

/// Up to this many members, a message's deliveries are split by core by scanning the members
/// once per core found (see [`Shard::send_deliveries`]), which needs no counts per core.
const DELIVER_SCAN_MEMBERS_MAX: usize = 8;

/// How often a core begins a checkpoint of its fan-out progress and watermarks
/// ([`Shard::start_checkpoint`]).
pub(crate) const CHECKPOINT_MS: u64 = 1000;
/// Over how long a checkpoint is written, and how often a share of it.
const CHECKPOINT_SPREAD_MS: u64 = 500;
pub(crate) const CHECKPOINT_SHARE_EVERY_MS: u64 = 10;
/// The fewest users, conversations and read watermarks a share writes of each.
const CHECKPOINT_SHARE_MIN: usize = 16;

/// How long a conversation's core waits for a member's confirmation before it delivers again.
///
/// A delivery is not lost in a running server: mail between cores is never dropped, and a member's
/// core whose commit fails makes the void appends again itself. Delivering again is the safety net
/// behind that, so it waits well beyond the confirmation times of a loaded server (W2's p99 is
/// about a second), where early retries only lengthened the queues they waited in.
pub(crate) const FANOUT_RETRY_MS: u64 = 5_000;
/// The longest wait between two deliveries of one message to one member.
pub(crate) const FANOUT_RETRY_MAX_MS: u64 = 60_000;
/// Fan-outs one tick retries at most; the rest wait for the next tick.
const FANOUT_RETRIES_PER_TICK_MAX: usize = 256;

/// Conversations a core keeps in memory before it starts over.
const CACHED_CONVERSATIONS_MAX: usize = 1 << 18;

/// Ids drawn at most for a new direct conversation to land on its lower member's core; with `n`
/// cores, one draw in `n` does.
const DIRECT_ID_DRAWS_MAX: usize = 64;

/// Watermarks (fan-out and receipt) a core keeps in memory before it starts over.
const CACHED_WATERMARKS_MAX: usize = 1 << 20;

/// A conversation this core owns.
#[derive(Debug)]
struct ConvState {
    record: Rc<ConversationRecord>,
    /// The newest seq assigned, committed or pending.
    last_seq: u64,
}

/// Chat bookkeeping of one core.
#[derive(Debug, Default)]
pub(crate) struct ChatState {
    convs: HashMap<u64, ConvState>,
    /// Sends stored in the pending batch, by idempotency key.
    pending_sends: HashMap<[u8; 28], IdempotencyRecord>,
    /// Sends stored in batches handed to the committer and not yet durable, by batch id, oldest
    /// first. With `pending_sends` they hold every idempotency record not yet in the backend, so
    /// a `Send` looks there and then in the backend, never in the overlay's staged batches.
    sends_in_flight: VecDeque<(u64, HashMap<[u8; 28], IdempotencyRecord>)>,
    /// The map of the last durable batch's sends, emptied, for the next pending batch: batches
    /// hold much the same number, so `pending_sends` keeps its room instead of regrowing.
    spare_sends: HashMap<[u8; 28], IdempotencyRecord>,
    /// Direct conversations created in the pending batch, by (lo, hi).
    pending_direct: HashMap<(u64, u64), u64>,
    /// Members still to confirm each message's fan-out, by (conversation, seq).
    fanouts: BTreeMap<(u64, u64), Fanout>,
    /// When each core last confirmed a delivery of this core's, by core (one entry per core).
    confirmed_ms: Vec<u64>,
    /// Fan-outs of messages in the batch being built, forgotten if it fails.
    new_fanouts: Vec<(u64, u64)>,
    /// Conversations with a `fanout` row, and the seq it says is done (`u64::MAX`: unknown after a
    /// failed commit; the next checkpoint writes it).
    open: HashMap<u64, u64>,
    /// Conversations whose membership changed while their fan-out was unfinished: the seq up to
    /// which the unfinished messages have their recipients in `fanout` (see the module docs).
    fixed: HashMap<u64, u64>,
    /// Those recipients rows, by (conversation, seq), written or being written: each is deleted
    /// once the conversation's row says fan-out is done past it.
    pinned: BTreeSet<(u64, u64)>,
    /// Read watermarks moved by the owner's own messages, written by the next checkpoint.
    lazy_receipts: HashSet<(u64, u64)>,
    /// Fan-out watermarks a checkpoint put in the batch being built: dirty again if it fails.
    marks_written: Vec<(u64, u64)>,
    /// Users whose dirty watermarks are every one that moved since their durable checkpoint.
    /// Others (after a start or a failed commit) have their log read back from that checkpoint's
    /// `user_seq` before the next one, so it never covers a watermark it did not write.
    tracked: HashSet<u64>,
    /// When the last checkpoint began.
    last_checkpoint_ms: u64,
    /// The checkpoint under way, if any.
    round: Option<Round>,
    /// The fewest users, conversations and read watermarks a share writes of each.
    share_min: usize,
    /// Fan-out watermarks of users this core owns: the highest seq in their log, by conversation.
    marks: HashMap<(u64, u64), u64>,
    /// Watermarks of users this core owns.
    receipts: HashMap<(u64, u64), ReceiptRecord>,
    /// Fan-out watermarks that moved since they were last written, by user and conversation
    /// (ordered, so a checkpoint writes them a share of users at a time).
    dirty_marks: BTreeSet<(u64, u64)>,
    /// Receipt watermarks changed in this turn, written once each when the turn's batch is
    /// committed however often they moved.
    dirty_receipts: HashSet<(u64, u64)>,
    /// Messages delivered in this turn, so pushing them to live devices reads nothing back; emptied
    /// once the turn's pushes are out.
    fresh: HashMap<(u64, u64), Arc<MessageRecord>>,
    /// Updates (deliveries, and appends that came as `Mail::Append`) staged again after a failed
    /// commit, by user, whose replayed mail must not append them twice. Only ever those shown
    /// early, so few.
    restaged: Vec<(u64, UpdateRecord)>,
}

/// A checkpoint under way. It is written in shares, one every [`CHECKPOINT_SHARE_EVERY_MS`] over
/// [`CHECKPOINT_SPREAD_MS`]: written at once, a checkpoint took tens of thousands of writes in one
/// batch, and every message on the core waited behind it for tens of milliseconds.
#[derive(Debug)]
struct Round {
    /// The lowest user whose fan-out watermarks it has yet to write (it writes each user's that
    /// moved before it reached them).
    next_user: u64,
    users_per_share: usize,
    /// The open conversations whose fan-out progress it has yet to write.
    open: Vec<u64>,
    open_per_share: usize,
    /// The owners' read watermarks it has yet to write (those moved before it began).
    receipts: Vec<(u64, u64)>,
    receipts_per_share: usize,
    /// When the next share is due.
    next_share_ms: u64,
}

/// A message's fan-out that not every member confirmed yet.
#[derive(Debug)]
struct Fanout {
    /// The members whose logs may not hold it yet, in ascending order.
    pending: Vec<u64>,
    /// When to deliver to them again.
    due_ms: u64,
    /// How long to wait after that.
    backoff_ms: u64,
    /// When it was first delivered.
    since_ms: u64,
    /// Its last delivery was void (this core's batch failed): the message, which
    /// [`Shard::resend_voided`] delivers again before anything else.
    resend: Option<(Arc<MessageRecord>, Option<[u64; 2]>)>,
}

/// What [`Shard::recover_fanouts`] found above the conversations' fan-out progress.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveredFanouts {
    /// Messages delivered again, to the recipients whose logs did not hold them.
    pub(crate) resumed: usize,
    /// Messages every recipient's log held already: not delivered again.
    pub(crate) held: usize,
    /// Recipients whose logs were read back from their checkpoint to tell.
    pub(crate) members_read: usize,
}

/// Recovery's running state: the counts so far, each recipient's log as read back, and the
/// watermarks worked out from them.
#[derive(Default)]
struct Recovery {
    found: RecoveredFanouts,
    /// Per user, the highest seq of each conversation in their log after their checkpoint.
    logs: HashMap<u64, BTreeMap<u64, u64>>,
    /// Per (user, conversation), the highest seq the user's log holds.
    marks: HashMap<(u64, u64), u64>,
}

/// A message to append to members' logs (`Mail::Deliver` without the members and the message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deliver {
    pub(crate) conversation_id: u64,
    pub(crate) seq: u64,
    pub(crate) sender: u64,
    pub(crate) from_core: usize,
    /// The two members of a direct conversation; `None` in a group.
    pub(crate) direct: Option<[u64; 2]>,
}

impl ChatState {
    /// When the next share of the checkpoint under way is due, if one is.
    pub(crate) fn checkpoint_share_due_ms(&self) -> Option<u64> {
        self.round.as_ref().map(|r| r.next_share_ms)
    }

    /// The next share is due `CHECKPOINT_SHARE_EVERY_MS` after `now_ms`.
    pub(crate) fn checkpoint_share_written(&mut self, now_ms: u64) {
        if let Some(round) = self.round.as_mut() {
            round.next_share_ms = now_ms + CHECKPOINT_SHARE_EVERY_MS;
        }
    }

    /// Makes each share write at least `min` of each (the simulator's few users then span many).
    #[cfg(test)]
    pub(crate) fn set_share_min(&mut self, min: usize) {
        self.share_min = min;
    }

    /// The pending batch was handed to the committer as batch `id`.
    pub(crate) fn committed(&mut self, id: u64) {
        if !self.pending_sends.is_empty() {
            let spare = std::mem::take(&mut self.spare_sends);
            let sends = std::mem::replace(&mut self.pending_sends, spare);
            self.sends_in_flight.push_back((id, sends));
        }
        self.pending_direct.clear();
    }

    /// Batch `id` and every earlier one are durable: their sends' records are the backend's.
    pub(crate) fn settled(&mut self, id: u64) {
        while self
            .sends_in_flight
            .front()
            .is_some_and(|(batch, _)| *batch <= id)
        {
            if let Some((_, mut sends)) = self.sends_in_flight.pop_front() {
                sends.clear();
                self.spare_sends = sends;
            }
        }
    }

    /// The record of a send stored in the pending batch or in one not yet durable.
    fn staged_send(&self, key: &[u8; 28]) -> Option<IdempotencyRecord> {
        self.pending_sends.get(key).copied().or_else(|| {
            self.sends_in_flight
                .iter()
                .rev()
                .find_map(|(_, sends)| sends.get(key).copied())
        })
    }

    /// The oldest message of the conversation whose fan-out some member has not confirmed.
    fn first_unfinished(&self, conversation_id: u64) -> Option<u64> {
        self.fanouts
            .range((conversation_id, 0)..=(conversation_id, u64::MAX))
            .next()
            .map(|((_, seq), _)| *seq)
    }

    /// The fan-outs begun since the last call: they belong to the batch being sealed.
    pub(crate) fn take_new_fanouts(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.new_fanouts)
    }

    /// A batch failed: the fan-outs it began are of messages that were never stored.
    pub(crate) fn drop_fanouts(&mut self, keys: &[(u64, u64)]) {
        for key in keys {
            self.fanouts.remove(key);
        }
    }

    /// A batch failed that held a delivery of a stored message: deliver it again, ahead of the
    /// conversation's later messages (members' logs take a conversation's messages in order).
    pub(crate) fn void_delivery(&mut self, mail: &Mail) {
        if let Mail::Deliver {
            conversation_id,
            seq,
            message,
            direct,
            ..
        } = mail
        {
            if let Some(fanout) = self.fanouts.get_mut(&(*conversation_id, *seq)) {
                fanout.resend = Some((Arc::clone(message), *direct));
            }
        }
    }

    /// The messages delivered since the last call, for pushing them once their batch is durable.
    pub(crate) fn take_fresh(&mut self) -> HashMap<(u64, u64), Arc<MessageRecord>> {
        std::mem::take(&mut self.fresh)
    }

    /// Drops a sixteenth of each cache that outgrew its bound: gradually, so no turn stalls
    /// reloading everything. Watermarks not yet written stay.
    pub(crate) fn trim(&mut self) {
        evict_share(&mut self.convs, CACHED_CONVERSATIONS_MAX, |_| false);
        let dirty = &self.dirty_marks;
        evict_share(&mut self.marks, CACHED_WATERMARKS_MAX, |k| {
            dirty.contains(k)
        });
        let (dirty, lazy) = (&self.dirty_receipts, &self.lazy_receipts);
        evict_share(&mut self.receipts, CACHED_WATERMARKS_MAX, |k| {
            dirty.contains(k) || lazy.contains(k)
        });
    }

    /// The bookkeeping of a core among `cores`.
    pub(crate) fn new(cores: usize) -> ChatState {
        ChatState {
            confirmed_ms: vec![0; cores],
            share_min: CHECKPOINT_SHARE_MIN,
            ..ChatState::default()
        }
    }

    /// The pending batch was lost: drop every cache so it reloads from the store. Fan-outs still
    /// pending are kept; their conversations' rows are written again by the next checkpoint.
    pub(crate) fn forget(&mut self) {
        let open = self
            .fanouts
            .keys()
            .map(|(conversation_id, _)| (*conversation_id, u64::MAX))
            .collect();
        // Which fan-out watermarks moved since the last durable checkpoint must survive: the
        // next checkpoint writes them (read back from the log) with the `user_seq` they cover.
        *self = ChatState {
            fanouts: std::mem::take(&mut self.fanouts),
            // Confirmations count from here on, as at start.
            confirmed_ms: vec![0; self.confirmed_ms.len()],
            dirty_marks: std::mem::take(&mut self.dirty_marks),
            open,
            // Rewritten by `Shard::fix_recipients_again`: the failed batch may have held them.
            fixed: std::mem::take(&mut self.fixed),
            pinned: std::mem::take(&mut self.pinned),
            last_checkpoint_ms: self.last_checkpoint_ms,
            share_min: self.share_min,
            ..ChatState::default()
        };
    }

    /// After the replay of a failed commit, every restaged delivery and append was met again.
    pub(crate) fn forget_restaged(&mut self) {
        debug_assert!(
            self.restaged.is_empty(),
            "a restaged update was not replayed"
        );
        self.restaged.clear();
    }

    /// Whether an append of `update` to `user_id`'s log was staged again after a failed commit
    /// (and so must not be appended twice); each staged one answers once.
    pub(crate) fn take_restaged(&mut self, user_id: u64, update: &UpdateRecord) -> bool {
        match self
            .restaged
            .iter()
            .position(|(u, r)| *u == user_id && r == update)
        {
            Some(at) => {
                self.restaged.remove(at);
                true
            }
            None => false,
        }
    }

    /// The fan-out watermarks a checkpoint wrote since the last call: they belong to the batch
    /// being sealed.
    pub(crate) fn take_marks_written(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.marks_written)
    }

    /// A batch failed that held a checkpoint's fan-out watermarks: they are dirty again.
    pub(crate) fn unwrite_marks(&mut self, keys: Vec<(u64, u64)>) {
        self.dirty_marks.extend(keys);
    }
}

/// The users with dirty fan-out watermarks from `from` on, each once, in order.
fn dirty_users(dirty: &BTreeSet<(u64, u64)>, from: u64) -> impl Iterator<Item = u64> + '_ {
    let mut last = None;
    dirty
        .range((from, 0)..)
        .map(|&(user_id, _)| user_id)
        .filter(move |&user_id| last.replace(user_id) != Some(user_id))
}

/// Removes a sixteenth of the bound's worth of entries from a map that outgrew it, but none that
/// `keep` says to keep.
pub(crate) fn evict_share<K: Copy + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    keep: impl Fn(&K) -> bool,
) {
    if map.len() <= max {
        return;
    }
    let doomed: Vec<K> = map
        .keys()
        .copied()
        .filter(|k| !keep(k))
        .take(max / 16 + 1)
        .collect();
    for key in doomed {
        map.remove(&key);
    }
}

fn approx_message_bytes(message: &MessageRecord) -> usize {
    96 + message.body.len() + message.attachments.len() * 300
}

impl Shard {
    fn conv_state(&mut self, conversation_id: u64) -> Result<Option<&mut ConvState>, StoreError> {
        if !self.chat.convs.contains_key(&conversation_id) {
            let Some(record) = self.store.conversation(conversation_id)? else {
                return Ok(None);
            };
            let last_seq = self.store.last_seq(conversation_id)?;
            self.chat.convs.insert(
                conversation_id,
                ConvState {
                    record: Rc::new(record),
                    last_seq,
                },
            );
        }
        Ok(self.chat.convs.get_mut(&conversation_id))
    }

    /// A conversation this core owns, from its cache (loading it once).
    pub(crate) fn cached_conversation(
        &mut self,
        conversation_id: u64,
    ) -> Result<Option<Rc<ConversationRecord>>, StoreError> {
        Ok(self
            .conv_state(conversation_id)?
            .map(|c| Rc::clone(&c.record)))
    }

    /// Replaces the cached record of a conversation this core owns (after it wrote a new one).
    pub(crate) fn set_cached_conversation(
        &mut self,
        conversation_id: u64,
        record: ConversationRecord,
    ) {
        if let Some(conv) = self.chat.convs.get_mut(&conversation_id) {
            conv.record = Rc::new(record);
        }
    }

    /// On the sender's core: checks what it can and forwards to the conversation's core.
    pub(crate) fn handle_send(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        send: Send,
    ) -> Result<(), StoreError> {
        if send.body.is_empty() && send.attachments.is_empty() {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::INVALID_ARGUMENT,
                "a message needs a body or an attachment",
            );
            return Ok(());
        }
        if self.refuse_plaintext(conn, request_id, user_id, &send)? {
            return Ok(());
        }
        if !send.attachments.is_empty() && !self.claim_attachments(user_id, &send.attachments)? {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::NOT_FOUND,
                "an attachment is not a completed upload of yours",
            );
            return Ok(());
        }
        let origin = ConnRef {
            core: self.core,
            conn,
        };
        let core = self.owner(send.conversation_id);
        self.mail_now(
            core,
            Mail::Send {
                origin,
                request_id,
                user_id,
                device_id,
                send: Box::new(send),
            },
        );
        Ok(())
    }

    /// On the conversation's core: stores the message (or finds the earlier identical send).
    pub(crate) fn handle_conversation_send(
        &mut self,
        now_ms: u64,
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        send: Send,
    ) -> Result<(), StoreError> {
        let conversation_id = send.conversation_id;
        let refuse = |shard: &mut Shard, code| {
            shard.mail_now(
                origin.core,
                Mail::SendDone {
                    origin,
                    request_id,
                    result: Err(code),
                },
            );
        };
        let is_member = self
            .conv_state(conversation_id)?
            .is_some_and(|c| c.record.has_member(user_id));
        if !is_member {
            refuse(self, ErrorCode::NOT_FOUND);
            return Ok(());
        }
        let key = keys::idempotency(user_id, device_id, &send.client_msg_id);
        let earlier = match self.chat.staged_send(&key) {
            Some(record) => Some(record),
            None => self.store.durable_idempotency(&key)?,
        };
        if let Some(earlier) = earlier {
            if earlier.conversation_id != conversation_id {
                refuse(self, ErrorCode::CONFLICT);
                return Ok(());
            }
            let sent = Sent {
                conversation_id,
                client_msg_id: send.client_msg_id,
                seq: earlier.seq,
                message_id: earlier.message_id,
                ts: earlier.ts,
            };
            self.mail_after_commit(
                origin.core,
                Mail::SendDone {
                    origin,
                    request_id,
                    result: Ok(sent),
                },
            );
            return Ok(());
        }
        let message_id = self.next_id(now_ms);
        let Some(conv) = self.conv_state(conversation_id)? else {
            return Ok(());
        };
        conv.last_seq += 1;
        let seq = conv.last_seq;
        let members: Vec<u64> = conv.record.members.iter().map(|m| m.user_id).collect();
        let direct = direct_members(&conv.record);
        let record = IdempotencyRecord {
            conversation_id,
            seq,
            message_id,
            ts: now_ms,
        };
        let message = MessageRecord {
            message_id,
            sender: user_id,
            sender_device: device_id,
            ts: now_ms,
            client_msg_id: send.client_msg_id,
            body: send.body,
            attachments: send.attachments,
        };
        self.batch.put_message(conversation_id, seq, &message)?;
        for &media_id in &message.attachments {
            self.batch.put_media_ref(media_id, conversation_id);
        }
        self.metrics.core(self.core).messages_stored.add(1);
        self.batch
            .put_idempotency(user_id, device_id, &message.client_msg_id, &record)?;
        self.chat.pending_sends.insert(key, record);
        let client_msg_id = message.client_msg_id;
        let sent = Sent {
            conversation_id,
            client_msg_id,
            seq,
            message_id,
            ts: now_ms,
        };
        self.mail_after_commit(
            origin.core,
            Mail::SendDone {
                origin,
                request_id,
                result: Ok(sent),
            },
        );
        self.fan_out(
            now_ms,
            conversation_id,
            seq,
            Arc::new(message),
            &members,
            direct,
        );
        // The message is in the batch being built: if that fails, so does its fan-out.
        self.chat.new_fanouts.push((conversation_id, seq));
        let reused = self
            .chat
            .fixed
            .get(&conversation_id)
            .is_some_and(|&fixed| fixed >= seq);
        if reused {
            // A failed commit voided the message that had this seq: this one goes to the members
            // of now, so the recipients fixed before stop below it.
            self.chat.fixed.insert(conversation_id, seq - 1);
        }
        if reused || !self.chat.open.contains_key(&conversation_id) {
            let done = self.fanout_done(conversation_id, seq);
            self.write_open(conversation_id, done);
        }
        Ok(())
    }

    /// Puts the conversation's `fanout` row, done up to `done`, into the batch, and deletes the
    /// recipients rows it passes.
    fn write_open(&mut self, conversation_id: u64, done: u64) {
        let fixed = self.unpin_through(conversation_id, done);
        self.batch.put_fanout_open(conversation_id, done, fixed);
        self.chat.open.insert(conversation_id, done);
    }

    /// Deletes the conversation's `fanout` rows: its fan-out is finished.
    fn close_open(&mut self, conversation_id: u64) {
        self.batch
            .delete_fanout_row(&keys::conversation(conversation_id));
        self.unpin_through(conversation_id, u64::MAX);
        self.chat.open.remove(&conversation_id);
    }

    /// Deletes the conversation's recipients rows up to `done`. Returns the seq up to which
    /// recipients stay fixed above it (0: none).
    fn unpin_through(&mut self, conversation_id: u64, done: u64) -> u64 {
        let passed: Vec<(u64, u64)> = self
            .chat
            .pinned
            .range((conversation_id, 0)..=(conversation_id, done))
            .copied()
            .collect();
        for key in passed {
            self.batch.delete_fanout_row(&keys::pair(key.0, key.1));
            self.chat.pinned.remove(&key);
        }
        match self.chat.fixed.get(&conversation_id) {
            Some(&fixed) if fixed > done => fixed,
            Some(_) => {
                self.chat.fixed.remove(&conversation_id);
                0
            }
            None => 0,
        }
    }

    /// Before a group's membership changes: its messages whose fan-out is unfinished keep the
    /// recipients they were sent to, should recovery after a crash deliver them again (which
    /// otherwise delivers to the members it finds). See the module docs.
    pub(crate) fn fix_recipients(&mut self, conversation_id: u64) -> Result<(), StoreError> {
        let Some(conv) = self.conv_state(conversation_id)? else {
            return Ok(());
        };
        let last_seq = conv.last_seq;
        self.fix_recipients_up_to(conversation_id, last_seq);
        Ok(())
    }

    /// After a failed commit: writes again the recipients rows it may have held, and the rows of
    /// their conversations.
    pub(crate) fn fix_recipients_again(&mut self) {
        let mut fixed: Vec<(u64, u64)> = self.chat.fixed.iter().map(|(c, f)| (*c, *f)).collect();
        // The same order every run (the simulator replays seeds).
        fixed.sort_unstable();
        for (conversation_id, up_to) in fixed {
            self.fix_recipients_up_to(conversation_id, up_to);
        }
    }

    /// Puts a recipients row for each unfinished message up to `up_to` into the batch, and the
    /// conversation's row saying recipients are fixed that far.
    fn fix_recipients_up_to(&mut self, conversation_id: u64, up_to: u64) {
        let unfinished: Vec<(u64, Vec<u64>)> = self
            .chat
            .fanouts
            .range((conversation_id, 0)..=(conversation_id, up_to))
            .map(|(&(_, seq), fanout)| (seq, fanout.pending.clone()))
            .collect();
        let Some(first) = self.chat.first_unfinished(conversation_id) else {
            // Nothing unfinished, so nothing for recovery to deliver.
            self.close_open(conversation_id);
            return;
        };
        for (seq, members) in unfinished {
            if !members.is_empty() {
                self.batch
                    .put_fanout_recipients(conversation_id, seq, &members);
                self.chat.pinned.insert((conversation_id, seq));
            }
        }
        let fixed = self.chat.fixed.entry(conversation_id).or_insert(0);
        *fixed = (*fixed).max(up_to);
        self.write_open(conversation_id, first - 1);
    }

    /// The seq up to which every member confirmed the conversation's fan-out (`last_seq` when
    /// nothing is pending).
    fn fanout_done(&self, conversation_id: u64, last_seq: u64) -> u64 {
        self.chat
            .first_unfinished(conversation_id)
            .map_or(last_seq, |seq| seq - 1)
    }

    /// Sends `Deliver` to every member's core once the message is durable.
    fn fan_out(
        &mut self,
        now_ms: u64,
        conversation_id: u64,
        seq: u64,
        message: Arc<MessageRecord>,
        members: &[u64],
        direct: Option<[u64; 2]>,
    ) {
        let mut pending = members.to_vec();
        pending.sort_unstable();
        let fanout = Fanout {
            pending,
            due_ms: now_ms + FANOUT_RETRY_MS,
            backoff_ms: FANOUT_RETRY_MS,
            since_ms: now_ms,
            resend: None,
        };
        self.chat.fanouts.insert((conversation_id, seq), fanout);
        self.send_deliveries(conversation_id, seq, &message, members, direct);
    }

    /// Sends `Deliver` for one message to the members' cores. A member's log must take a
    /// conversation's messages in `seq` order, since its fan-out watermark (the highest seq it
    /// holds) is what makes deliveries idempotent: void deliveries go out again before anything
    /// else ([`Shard::resend_voided`]).
    fn send_deliveries(
        &mut self,
        conversation_id: u64,
        seq: u64,
        message: &Arc<MessageRecord>,
        members: &[u64],
        direct: Option<[u64; 2]>,
    ) {
        let deliver = |shard: &mut Self, core: usize, users: Vec<u64>| {
            let mail = Mail::Deliver {
                users,
                conversation_id,
                seq,
                sender: message.sender,
                from_core: shard.core,
                message: Arc::clone(message),
                direct,
            };
            shard.mail_after_commit(core, mail);
        };
        // Each core's members go in a list of its own, allocated once: a direct conversation's
        // found by scanning its members, a group's after counting them per core.
        if members.len() <= DELIVER_SCAN_MEMBERS_MAX {
            for (i, &user_id) in members.iter().enumerate() {
                let core = self.owner(user_id);
                if members[..i].iter().any(|&m| self.owner(m) == core) {
                    continue;
                }
                let users = members[i..]
                    .iter()
                    .copied()
                    .filter(|&m| self.owner(m) == core)
                    .collect();
                deliver(self, core, users);
            }
            return;
        }
        let mut counts = vec![0usize; self.cores];
        for &user_id in members {
            counts[self.owner(user_id)] += 1;
        }
        let mut by_core: Vec<Vec<u64>> = counts.iter().map(|&n| Vec::with_capacity(n)).collect();
        for &user_id in members {
            by_core[self.owner(user_id)].push(user_id);
        }
        for (core, users) in by_core.into_iter().enumerate() {
            if !users.is_empty() {
                deliver(self, core, users);
            }
        }
    }

    /// After a failed commit: delivers again at once (held for the next batch) the stored
    /// messages whose delivery it voided, oldest first. Waiting for the retry left a gap in which
    /// a member's core could act on its own copy, and a receipt it sent could then reach another
    /// member's log before the message did.
    pub(crate) fn resend_voided(&mut self) {
        let voided: Vec<(u64, u64)> = self
            .chat
            .fanouts
            .iter()
            .filter(|(_, f)| f.resend.is_some())
            .map(|(key, _)| *key)
            .collect();
        for (conversation_id, seq) in voided {
            let Some(fanout) = self.chat.fanouts.get_mut(&(conversation_id, seq)) else {
                continue;
            };
            let Some((message, direct)) = fanout.resend.take() else {
                continue;
            };
            let pending = fanout.pending.clone();
            self.send_deliveries(conversation_id, seq, &message, &pending, direct);
        }
    }

    /// Delivers again the messages some member has not confirmed in time. Call it every
    /// [`FANOUT_RETRY_MS`] or so; it reads the store only for the messages it retries.
    pub(crate) fn retry_fanouts(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        let mut due: Vec<(u64, u64)> = self
            .chat
            .fanouts
            .iter()
            .filter(|(_, f)| f.due_ms <= now_ms)
            .map(|(key, _)| *key)
            .collect();
        // Oldest first, and the same order every run (the simulator replays seeds).
        due.sort_unstable();
        due.truncate(FANOUT_RETRIES_PER_TICK_MAX);
        for &(conversation_id, seq) in &due {
            let cores = self.cores;
            let Some(fanout) = self.chat.fanouts.get_mut(&(conversation_id, seq)) else {
                continue;
            };
            let progressing = fanout.pending.iter().all(|&user_id| {
                self.chat
                    .confirmed_ms
                    .get(owner(user_id, cores))
                    .is_some_and(|&at| at + FANOUT_RETRY_MS > now_ms)
            });
            if progressing && now_ms < fanout.since_ms + FANOUT_RETRY_MAX_MS {
                // Queued behind other mail on cores that are confirming: look again later.
                fanout.due_ms = now_ms + FANOUT_RETRY_MS;
                continue;
            }
            let message = self.store.message(conversation_id, seq)?;
            let direct = self
                .cached_conversation(conversation_id)?
                .map(|c| direct_members(&c));
            let Some(fanout) = self.chat.fanouts.get_mut(&(conversation_id, seq)) else {
                continue;
            };
            fanout.due_ms = now_ms + fanout.backoff_ms;
            fanout.backoff_ms = (fanout.backoff_ms * 2).min(FANOUT_RETRY_MAX_MS);
            let (Some(message), Some(direct)) = (message, direct) else {
                // Still in the batch being built: its own delivery is on the way.
                continue;
            };
            let members = fanout.pending.clone();
            tracing::debug!(
                conversation_id,
                seq,
                members = members.len(),
                "fan-out retried"
            );
            self.metrics.core(self.core).fanout_retries.add(1);
            self.send_deliveries(conversation_id, seq, &Arc::new(message), &members, direct);
        }
        Ok(due.len())
    }

    /// At start: re-delivers, in order, every message above each conversation's `fanout` row (up
    /// to where its recipients are fixed, only those with recipients, and to them) to the
    /// recipients whose logs do not hold it yet. Rows of the format before 0.2 (one per message)
    /// are replaced by the conversation's row.
    ///
    /// Fan-out progress is written by checkpoints, so after a crash the rows lag by up to a
    /// checkpoint's interval of traffic, nearly all of it in every recipient's log already.
    /// Delivering all of that again held the cores before they served (W5: 16,000 to 49,000
    /// messages, after a sync that had read every one of them), and the first `Resume`s behind
    /// the deliveries' turns. Each recipient's log is read back from their checkpoint once
    /// instead ([`Shard::held_mark`]), and what every recipient holds is not delivered again.
    pub(crate) fn recover_fanouts(&mut self, now_ms: u64) -> Result<RecoveredFanouts, StoreError> {
        let mut from: Vec<u8> = Vec::new();
        // (done, fixed) by conversation, and the recipients rows.
        let mut open: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut recipients: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
        loop {
            let page = self.store.fanout_rows(&from, RANGE_READ_MAX)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            from = last.to_vec();
            from.push(0);
            let full = page.len() == RANGE_READ_MAX;
            for (key, row) in page {
                let (conversation_id, done, fixed) = match row {
                    FanoutRow::Open {
                        conversation_id,
                        done,
                        fixed,
                    } => (conversation_id, done, fixed),
                    FanoutRow::Legacy {
                        conversation_id,
                        seq,
                    } => {
                        if self.owner(conversation_id) == self.core {
                            self.batch.delete_fanout_row(&key);
                        }
                        (conversation_id, seq.saturating_sub(1), 0)
                    }
                    FanoutRow::Recipients {
                        conversation_id,
                        seq,
                        members,
                    } => {
                        if self.owner(conversation_id) == self.core {
                            recipients.insert((conversation_id, seq), members);
                        }
                        continue;
                    }
                };
                if self.owner(conversation_id) != self.core {
                    continue;
                }
                let entry = open.entry(conversation_id).or_insert((done, fixed));
                *entry = (entry.0.min(done), entry.1.max(fixed));
            }
            if !full {
                break;
            }
        }
        for &(conversation_id, seq) in recipients.keys() {
            if open.contains_key(&conversation_id) {
                // Deleted by the conversation's row once fan-out passes it (below, if it has).
                self.chat.pinned.insert((conversation_id, seq));
            } else {
                self.batch
                    .delete_fanout_row(&keys::pair(conversation_id, seq));
            }
        }
        let mut recovery = Recovery::default();
        for (conversation_id, (done, fixed)) in open {
            if fixed > done {
                self.chat.fixed.insert(conversation_id, fixed);
            }
            self.write_open(conversation_id, done);
            let Some(conv) = self.conv_state(conversation_id)? else {
                continue;
            };
            let members: Vec<u64> = conv.record.members.iter().map(|m| m.user_id).collect();
            let direct = direct_members(&conv.record);
            let last_seq = conv.last_seq;
            for seq in done + 1..=last_seq {
                let all = if seq <= fixed {
                    // Sent before the membership changed: to whom it was sent, if unfinished.
                    match recipients.get(&(conversation_id, seq)) {
                        Some(to) => to.as_slice(),
                        None => continue,
                    }
                } else {
                    members.as_slice()
                };
                let mut to = Vec::with_capacity(all.len());
                for &user_id in all {
                    if self.held_mark(&mut recovery, user_id, conversation_id)? < seq {
                        to.push(user_id);
                    }
                }
                if to.is_empty() {
                    recovery.found.held += 1;
                    continue;
                }
                let Some(message) = self.store.message(conversation_id, seq)? else {
                    continue;
                };
                self.fan_out(now_ms, conversation_id, seq, Arc::new(message), &to, direct);
                recovery.found.resumed += 1;
            }
        }
        // The members on this core get their copies now, in order, before any mail: another
        // core may act on its own copy (a receipt, say) as soon as it has it, and in a direct
        // conversation that must reach this member's log after the message (protocol §17.2).
        let (own, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.mail_after_commit)
            .into_iter()
            .partition(|(core, mail)| *core == self.core && matches!(mail, Mail::Deliver { .. }));
        self.mail_after_commit = others;
        for (_, mail) in own {
            self.handle_mail(now_ms, mail);
        }
        Ok(RecoveredFanouts {
            members_read: recovery.logs.len(),
            ..recovery.found
        })
    }

    /// During recovery: the highest seq of the conversation that the user's log holds (0: none),
    /// read as [`Shard::fanout_mark`] would but kept in `recovery`, not in the shard's cache,
    /// since the user may live on another core. Each user's log is read back from their
    /// checkpoint once per recovery.
    ///
    /// A log holds a conversation's messages in seq order, so a recipient whose log holds a seq
    /// holds every one before it that was sent to them: a delivery of those would be a duplicate
    /// their core drops. Another core's appends that are not yet written are not seen; the
    /// message then goes to that member again, and their core drops it as it always has.
    fn held_mark(
        &self,
        recovery: &mut Recovery,
        user_id: u64,
        conversation_id: u64,
    ) -> Result<u64, StoreError> {
        if let Some(&mark) = recovery.marks.get(&(user_id, conversation_id)) {
            return Ok(mark);
        }
        if let std::collections::hash_map::Entry::Vacant(log) = recovery.logs.entry(user_id) {
            log.insert(self.highest_since_checkpoint(user_id)?);
        }
        let since_checkpoint = recovery.logs[&user_id]
            .get(&conversation_id)
            .copied()
            .unwrap_or(0);
        let mark = self.mark_from(user_id, conversation_id, since_checkpoint)?;
        recovery.marks.insert((user_id, conversation_id), mark);
        Ok(mark)
    }

    /// A fan-out watermark as stored by the last checkpoint, raised by the highest seq the log
    /// holds after the `user_seq` that checkpoint covers.
    fn mark_from(
        &self,
        user_id: u64,
        conversation_id: u64,
        since_checkpoint: u64,
    ) -> Result<u64, StoreError> {
        Ok(self
            .store
            .fanout_mark(user_id, conversation_id)?
            .max(since_checkpoint))
    }

    /// Writes a whole checkpoint into the pending batch at once (at shutdown).
    pub(crate) fn checkpoint(&mut self, now_ms: u64) -> Result<(), StoreError> {
        self.start_checkpoint(now_ms);
        self.checkpoint_share(true)
    }

    /// Begins a checkpoint (see the module docs). What it covers is written a share at a time by
    /// [`Shard::checkpoint_share`], spread over [`CHECKPOINT_SPREAD_MS`].
    pub(crate) fn start_checkpoint(&mut self, now_ms: u64) {
        self.chat.last_checkpoint_ms = now_ms;
        let users = dirty_users(&self.chat.dirty_marks, 0).count();
        let open: Vec<u64> = self.chat.open.keys().copied().collect();
        let receipts: Vec<(u64, u64)> = self.chat.lazy_receipts.iter().copied().collect();
        let shares = (CHECKPOINT_SPREAD_MS / CHECKPOINT_SHARE_EVERY_MS) as usize;
        let min = self.chat.share_min.max(1);
        self.chat.round = Some(Round {
            next_user: 0,
            users_per_share: users.div_ceil(shares).max(min),
            open_per_share: open.len().div_ceil(shares).max(min),
            receipts_per_share: receipts.len().div_ceil(shares).max(min),
            open,
            receipts,
            next_share_ms: now_ms,
        });
    }

    /// Writes the next share of the checkpoint under way into the pending batch (all that is
    /// left if `whole`): the fan-out progress of some open conversations, the fan-out watermarks
    /// that moved of some users, each user's with the `user_seq` they cover, and some of the read
    /// watermarks the owners' own messages moved. The checkpoint ends with the share that
    /// leaves nothing for the next.
    pub(crate) fn checkpoint_share(&mut self, whole: bool) -> Result<(), StoreError> {
        let Some(round) = self.chat.round.as_mut() else {
            return Ok(());
        };
        let cut = |all: usize, per_share: usize| {
            if whole {
                0
            } else {
                all.saturating_sub(per_share)
            }
        };
        let open = round
            .open
            .split_off(cut(round.open.len(), round.open_per_share));
        let receipts = round
            .receipts
            .split_off(cut(round.receipts.len(), round.receipts_per_share));
        let users_max = if whole {
            usize::MAX
        } else {
            round.users_per_share
        };
        let users: Vec<u64> = dirty_users(&self.chat.dirty_marks, round.next_user)
            .take(users_max)
            .collect();
        if let Some(&last) = users.last() {
            round.next_user = last.saturating_add(1);
        }
        let users_done = users.last() == Some(&u64::MAX)
            || dirty_users(&self.chat.dirty_marks, round.next_user)
                .next()
                .is_none();
        if users_done && round.open.is_empty() && round.receipts.is_empty() {
            self.chat.round = None;
        }
        for conversation_id in open {
            let Some(&written) = self.chat.open.get(&conversation_id) else {
                continue;
            };
            match self.chat.first_unfinished(conversation_id) {
                None => self.close_open(conversation_id),
                Some(seq) if seq - 1 != written => self.write_open(conversation_id, seq - 1),
                Some(_) => {}
            }
        }
        let mut result = Ok(());
        for user_id in users {
            if let Err(e) = self.checkpoint_user(user_id) {
                result = Err(e);
            }
        }
        for key in receipts {
            // One written since with a receipt is gone from the set.
            if !self.chat.lazy_receipts.remove(&key) {
                continue;
            }
            if let Some(receipt) = self.chat.receipts.get(&key) {
                self.batch.put_receipt(key.0, key.1, receipt)?;
            }
        }
        result
    }

    /// Writes one user's fan-out watermarks that moved since their durable checkpoint, with the
    /// `user_seq` they cover. On a failed read they stay dirty, and the user's log is read back
    /// before the next try.
    fn checkpoint_user(&mut self, user_id: u64) -> Result<(), StoreError> {
        let mut conversations: Vec<u64> = self
            .chat
            .dirty_marks
            .range((user_id, 0)..=(user_id, u64::MAX))
            .map(|(_, c)| *c)
            .collect();
        for conversation_id in &conversations {
            self.chat.dirty_marks.remove(&(user_id, *conversation_id));
        }
        let written = self.checkpoint_user_marks(user_id, &mut conversations);
        if written.is_err() {
            self.chat.tracked.remove(&user_id);
            self.chat
                .dirty_marks
                .extend(conversations.iter().map(|c| (user_id, *c)));
        }
        written
    }

    fn checkpoint_user_marks(
        &mut self,
        user_id: u64,
        conversations: &mut Vec<u64>,
    ) -> Result<(), StoreError> {
        if !self.chat.tracked.contains(&user_id) {
            // One read-back of the log finds the conversations and their watermarks both.
            let highest = self.highest_since_checkpoint(user_id)?;
            conversations.extend(highest.keys());
            conversations.sort_unstable();
            conversations.dedup();
            self.cache_marks(user_id, highest)?;
        }
        let mut marks = Vec::with_capacity(conversations.len());
        for &conversation_id in conversations.iter() {
            // Not cached after a failed commit: read back from the log.
            marks.push((conversation_id, self.fanout_mark(user_id, conversation_id)?));
        }
        let upto = self.user_state(user_id)?.next_seq;
        self.chat.tracked.insert(user_id);
        for (conversation_id, seq) in marks {
            self.chat.marks_written.push((user_id, conversation_id));
            self.batch.put_fanout_mark(user_id, conversation_id, seq);
        }
        self.batch.put_marks_upto(user_id, upto);
        Ok(())
    }

    /// The highest seq of each conversation in the message entries of a user's log after the
    /// `user_seq` the stored fan-out watermarks cover.
    fn highest_since_checkpoint(&self, user_id: u64) -> Result<BTreeMap<u64, u64>, StoreError> {
        let mut highest = BTreeMap::new();
        let mut cursor = self.store.marks_upto(user_id)?;
        loop {
            let rows = self.store.updates_after(user_id, cursor, RANGE_READ_MAX)?;
            let Some(&(last, _)) = rows.last() else { break };
            for (_, record) in &rows {
                if let UpdateRecord::Message {
                    conversation_id,
                    seq,
                    ..
                } = *record
                {
                    let entry = highest.entry(conversation_id).or_insert(0);
                    *entry = (*entry).max(seq);
                }
            }
            cursor = last;
            if rows.len() < RANGE_READ_MAX {
                break;
            }
        }
        Ok(highest)
    }

    /// Caches the fan-out watermark of each conversation in `highest` (what
    /// [`Shard::highest_since_checkpoint`] found) that is not cached yet: the checkpoint's, raised
    /// by the log after it. A cached watermark is kept up to date as the log grows: it stays.
    fn cache_marks(&mut self, user_id: u64, highest: BTreeMap<u64, u64>) -> Result<(), StoreError> {
        for (conversation_id, seq) in highest {
            if self.chat.marks.contains_key(&(user_id, conversation_id)) {
                continue;
            }
            let mark = self.mark_from(user_id, conversation_id, seq)?;
            self.chat.marks.insert((user_id, conversation_id), mark);
        }
        Ok(())
    }

    /// Whether a checkpoint is due.
    pub(crate) fn checkpoint_due(&self, now_ms: u64) -> bool {
        self.chat.round.is_none() && now_ms >= self.chat.last_checkpoint_ms + CHECKPOINT_MS
    }

    /// Fan-outs not yet confirmed by every member (for the simulator's checks).
    #[cfg(test)]
    pub(crate) fn fanouts_pending(&self) -> usize {
        self.chat.fanouts.len()
    }

    /// A member's fan-out watermark for a conversation: the highest seq of it in the log. Read
    /// back as the checkpoint's, raised by the log entries after the `user_seq` it covers.
    ///
    /// That read-back yields the watermarks of every conversation in those entries, and all of
    /// them not cached yet are: after a restart, recovery's deliveries asked for a member's
    /// conversations one by one, and each read the member's log back from its checkpoint (a
    /// hundred thousand entries in W5), holding the core for tens of milliseconds each time.
    fn fanout_mark(&mut self, user_id: u64, conversation_id: u64) -> Result<u64, StoreError> {
        if let Some(mark) = self.chat.marks.get(&(user_id, conversation_id)) {
            return Ok(*mark);
        }
        let mut highest = self.highest_since_checkpoint(user_id)?;
        highest.entry(conversation_id).or_insert(0);
        self.cache_marks(user_id, highest)?;
        Ok(self
            .chat
            .marks
            .get(&(user_id, conversation_id))
            .copied()
            .unwrap_or(0))
    }

    /// On the members' core: appends the message to each member's log unless it is there
    /// already, and confirms to the conversation's core once for all whose logs hold it.
    pub(crate) fn handle_deliveries(
        &mut self,
        now_ms: u64,
        users: &[u64],
        deliver: Deliver,
        message: &Arc<MessageRecord>,
    ) -> Result<(), StoreError> {
        let mut confirmed = Vec::with_capacity(users.len());
        let mut failed = None;
        for &user_id in users {
            match self.handle_deliver(now_ms, user_id, deliver, message) {
                Ok(()) => confirmed.push(user_id),
                // Not confirmed: the conversation's core delivers it again.
                Err(e) => failed = Some(e),
            }
        }
        if !confirmed.is_empty() {
            self.mail_after_commit(
                deliver.from_core,
                Mail::Delivered {
                    conversation_id: deliver.conversation_id,
                    seq: deliver.seq,
                    users: confirmed,
                },
            );
        }
        failed.map_or(Ok(()), Err)
    }

    /// On a member's core: appends the message to the member's log unless it is there already.
    fn handle_deliver(
        &mut self,
        now_ms: u64,
        user_id: u64,
        deliver: Deliver,
        message: &Arc<MessageRecord>,
    ) -> Result<(), StoreError> {
        let Deliver {
            conversation_id,
            seq,
            sender,
            direct,
            ..
        } = deliver;
        let mark = self.fanout_mark(user_id, conversation_id)?;
        // Staged again after a failed commit, under the number it was shown with: only the rest
        // of the work is left to do.
        let update = UpdateRecord::Message {
            conversation_id,
            seq,
            sender,
        };
        let restaged = self.chat.take_restaged(user_id, &update);
        if seq > mark || restaged {
            if !restaged {
                self.chat
                    .fresh
                    .entry((conversation_id, seq))
                    .or_insert_with(|| Arc::clone(message));
                self.append(user_id, &update, true)?;
                self.chat.marks.insert((user_id, conversation_id), seq);
                self.chat.dirty_marks.insert((user_id, conversation_id));
            }
            if sender == user_id {
                // What a user sent, they have read; and in a direct conversation, replying reads
                // what came before it, so when the peer's messages were unread the peer gets a read
                // receipt, as from MarkRead. (In groups that would be a receipt to every member
                // for every message; members' clients send MarkRead instead.)
                let read_before = self.receipt(conversation_id, user_id)?.read_seq;
                let key = (conversation_id, user_id);
                let was_dirty = self.chat.dirty_receipts.contains(&key);
                self.move_watermark(conversation_id, user_id, ReceiptKind::Read, seq)?;
                let announce_to = direct.filter(|_| read_before + 1 < seq);
                if !was_dirty && announce_to.is_none() && self.chat.dirty_receipts.remove(&key) {
                    // Announced to nobody: the checkpoint writes it.
                    self.chat.lazy_receipts.insert(key);
                }
                if let Some(members) = announce_to {
                    self.announce_read(now_ms, conversation_id, user_id, seq, &members)?;
                }
            } else {
                self.queue_push(now_ms, user_id)?;
            }
        }
        Ok(())
    }

    /// On the conversation's core: more members' logs hold the message (members of one core,
    /// which sent the confirmation).
    pub(crate) fn handle_delivered(&mut self, conversation_id: u64, seq: u64, users: &[u64]) {
        if let Some(&user_id) = users.first() {
            let core = self.owner(user_id);
            if let Some(at) = self.chat.confirmed_ms.get_mut(core) {
                *at = (*at).max(self.last_now_ms);
            }
        }
        let key = (conversation_id, seq);
        let Some(fanout) = self.chat.fanouts.get_mut(&key) else {
            return;
        };
        for user_id in users {
            if let Ok(at) = fanout.pending.binary_search(user_id) {
                fanout.pending.remove(at);
            }
        }
        if fanout.pending.is_empty() {
            // The conversation's row moves on at the next checkpoint.
            self.chat.fanouts.remove(&key);
        }
    }

    /// Appends an update to the log of a user this core owns; pushed to live devices after commit.
    pub(crate) fn append_update(
        &mut self,
        user_id: u64,
        update: &UpdateRecord,
    ) -> Result<u64, StoreError> {
        self.append(user_id, update, false)
    }

    /// Appends an update to a user's log. A delivered message (`early`) is shown to the user's
    /// live devices at once, before the batch is durable, when three things hold:
    ///
    /// - every update before it in the log is durable or was shown the same way, so updates are
    ///   shown in order and without gaps;
    /// - it is within the user's durable reservation of this run (see [`Shard::user_state`]), so
    ///   a crash cannot give its number to something else;
    /// - it came as mail whose source is durable (a delivery, whose message is durable on its
    ///   conversation's core, or an append another core sent after its commit), which a failed
    ///   commit stages again under the same number ([`Shard::stage_shown_again`]).
    ///
    /// So a recipient sees a message after one commit, its conversation's, not two.
    pub(crate) fn append(
        &mut self,
        user_id: u64,
        update: &UpdateRecord,
        early: bool,
    ) -> Result<u64, StoreError> {
        let online = self.online.contains_key(&user_id);
        // Taken before the state is borrowed: a reservation below carries it.
        let run = online.then(|| self.run_id());
        let room = self.unacked_room < self.unacked_budget;
        let state = self.user_state(user_id)?;
        state.next_seq += 1;
        let user_seq = state.next_seq;
        let shown =
            early && online && user_seq == state.shown_head() + 1 && user_seq <= state.reserved;
        if shown {
            state.shown = user_seq;
            state.early.push((user_seq, update.clone()));
        }
        // An online user keeps a reservation ahead of their log.
        let reserve = run
            .filter(|_| state.reserving < user_seq + super::RESERVATION_AHEAD / 2)
            .map(|run| {
                state.reserving = user_seq + super::RESERVATION_AHEAD;
                (state.reserving, run)
            });
        let grown = state.keep_unacked(user_id, online, room, user_seq, update);
        self.unacked_room = self.unacked_room.saturating_add_signed(grown);
        self.batch.put_update(user_id, user_seq, update)?;
        if let Some((up_to, run)) = reserve {
            self.batch.put_reservation(user_id, up_to, run);
            self.reservations.push((user_id, up_to));
        }
        self.metrics.core(self.core).updates_appended.add(1);
        if shown {
            self.show_now(user_id, user_seq, update);
        } else {
            self.push_after_commit(user_id, user_seq, update.clone());
        }
        Ok(user_seq)
    }

    /// After a failed commit: stages again, under the same numbers, the updates of a user that were
    /// shown before they were durable. They come first in the log after what is durable (an update
    /// is shown only when all before it are durable or shown), and their reservation is durable.
    /// The replayed deliveries find them staged and only do the rest of their work.
    pub(crate) fn stage_shown_again(
        &mut self,
        user_id: u64,
        updates: Vec<(u64, UpdateRecord)>,
    ) -> Result<(), StoreError> {
        let online = self.online.contains_key(&user_id);
        let core = self.core;
        for (user_seq, update) in updates {
            let room = self.unacked_room < self.unacked_budget;
            let state = self.user_state(user_id)?;
            if user_seq <= state.next_seq {
                continue;
            }
            if user_seq != state.next_seq + 1 {
                tracing::error!(
                    core,
                    user_id,
                    user_seq,
                    next = state.next_seq + 1,
                    "an update shown early is not next in the log"
                );
                debug_assert!(false, "an update shown early is not next in the log");
                return Ok(());
            }
            state.next_seq = user_seq;
            state.shown = user_seq;
            state.early.push((user_seq, update.clone()));
            let grown = state.keep_unacked(user_id, online, room, user_seq, &update);
            self.unacked_room = self.unacked_room.saturating_add_signed(grown);
            if let UpdateRecord::Message {
                conversation_id,
                seq,
                ..
            } = update
            {
                self.chat.marks.insert((user_id, conversation_id), seq);
                self.chat.dirty_marks.insert((user_id, conversation_id));
            }
            self.chat.restaged.push((user_id, update.clone()));
            self.batch.put_update(user_id, user_seq, &update)?;
            self.shown.push((user_id, user_seq));
        }
        Ok(())
    }

    /// Pushes an update appended in this turn to the user's live sessions now.
    fn show_now(&mut self, user_id: u64, user_seq: u64, update: &UpdateRecord) {
        // Taken and put back, not collected apart: this runs once per delivery.
        let mut outputs = std::mem::take(&mut self.outputs);
        let mut events = std::mem::take(&mut self.shown_events);
        self.push_live(
            user_id,
            user_seq,
            update,
            &self.chat.fresh,
            &mut events,
            &mut outputs,
        );
        self.shown_events = events;
        self.outputs = outputs;
        self.shown.push((user_id, user_seq));
        self.metrics.core(self.core).updates_shown_early.add(1);
    }

    /// Appends a receipt to a user's log.
    pub(crate) fn append_receipt(
        &mut self,
        to_user: u64,
        conversation_id: u64,
        user_id: u64,
        kind: u8,
        up_to_seq: u64,
        ts: u64,
    ) -> Result<(), StoreError> {
        let update = UpdateRecord::Receipt {
            conversation_id,
            user_id,
            kind,
            up_to_seq,
            ts,
        };
        self.append_update(to_user, &update).map(|_| ())
    }

    fn receipt(&mut self, conversation_id: u64, user_id: u64) -> Result<ReceiptRecord, StoreError> {
        if let Some(r) = self.chat.receipts.get(&(conversation_id, user_id)) {
            return Ok(*r);
        }
        let r = self.store.receipt(conversation_id, user_id)?;
        self.chat.receipts.insert((conversation_id, user_id), r);
        Ok(r)
    }

    /// Moves a watermark of a user this core owns forwards; returns whether it moved.
    fn move_watermark(
        &mut self,
        conversation_id: u64,
        user_id: u64,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let mut receipt = self.receipt(conversation_id, user_id)?;
        let mark = match kind {
            ReceiptKind::Delivered => &mut receipt.delivered_seq,
            ReceiptKind::Read => &mut receipt.read_seq,
        };
        if seq <= *mark {
            return Ok(false);
        }
        *mark = seq;
        if kind == ReceiptKind::Read {
            receipt.delivered_seq = receipt.delivered_seq.max(seq);
        }
        self.chat
            .receipts
            .insert((conversation_id, user_id), receipt);
        self.chat.dirty_receipts.insert((conversation_id, user_id));
        Ok(true)
    }

    /// Puts the receipt watermarks that moved in this turn into the batch, once each (fan-out
    /// watermarks wait for the checkpoint).
    pub(crate) fn write_watermarks(&mut self) -> Result<(), StoreError> {
        for (conversation_id, user_id) in std::mem::take(&mut self.chat.dirty_receipts) {
            self.chat.lazy_receipts.remove(&(conversation_id, user_id));
            if let Some(receipt) = self.chat.receipts.get(&(conversation_id, user_id)) {
                self.batch.put_receipt(conversation_id, user_id, receipt)?;
            }
        }
        Ok(())
    }

    /// Builds the wire form of a stored update. `known` gives the message of a (conversation,
    /// seq) the caller has at hand (just delivered, or read with others), which is then not read
    /// back.
    pub(crate) fn materialize_record(
        &self,
        user_seq: u64,
        record: &UpdateRecord,
        known: impl FnOnce(u64, u64) -> Option<MessageRecord>,
    ) -> Result<Option<(Update, usize)>, StoreError> {
        let (kind, bytes) = match *record {
            UpdateRecord::Message {
                conversation_id,
                seq,
                ..
            } => {
                let stored = match known(conversation_id, seq) {
                    Some(known) => known,
                    None => match self.store.message(conversation_id, seq)? {
                        Some(stored) => stored,
                        None => {
                            tracing::error!(
                                conversation_id,
                                seq,
                                "update points at a missing message"
                            );
                            return Ok(None);
                        }
                    },
                };
                let bytes = approx_message_bytes(&stored);
                (
                    UpdateKind::Message(wire_message(&self.store, conversation_id, seq, stored)),
                    bytes,
                )
            }
            UpdateRecord::Receipt {
                conversation_id,
                user_id,
                kind,
                up_to_seq,
                ts,
            } => {
                let kind = ReceiptKind::from_u8(kind).unwrap_or(ReceiptKind::Delivered);
                (
                    UpdateKind::Receipt(Receipt {
                        conversation_id,
                        user_id,
                        kind,
                        up_to_seq,
                        ts,
                    }),
                    64,
                )
            }
            UpdateRecord::Skipped => (UpdateKind::Skipped(tern_protocol::update::Skipped {}), 16),
            UpdateRecord::DeviceListChanged { user_id, ts } => (
                UpdateKind::DeviceListChanged(tern_protocol::update::DeviceListChanged {
                    user_id,
                    ts,
                }),
                32,
            ),
            ref group => {
                let mut kind = super::groups::wire_group_update(group);
                self.complete_update(&mut kind)?;
                (kind, 64 + 9 * group_members_len(group))
            }
        };
        Ok(Some((Update { user_seq, kind }, bytes)))
    }

    pub(crate) fn handle_sync(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        sync: Sync,
    ) -> Result<(), StoreError> {
        let max = self.config.sync_page_updates_max.min(SYNC_PAGE_UPDATES_MAX) as usize;
        let limit = if sync.limit == 0 {
            max
        } else {
            (sync.limit as usize).min(max)
        };
        let head = self.user_state(user_id)?.head;
        // What is durable is read here if it is all in memory, else off the core's thread, where
        // a read that goes to the device holds no connection but this one (`core/reads.rs`).
        let job = reads::ReadJob::Log {
            user_id,
            since: sync.since,
            head,
            limit,
        };
        self.read_and_reply(conn, request_id, user_id, job)
    }

    /// Replies to a `Sync` with the page that starts with `read`, the log as it was durable up to
    /// `head`; the updates shown before they were durable follow it from memory if the page
    /// reaches `head` and `head` is still the log's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_sync_page(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        since: u64,
        limit: usize,
        head: u64,
        read: reads::LogRead,
    ) -> Result<(), StoreError> {
        let reads::LogRead {
            mut rows,
            mut messages,
        } = read;
        let state = self.user_state(user_id)?;
        let shown_head = state.shown_head();
        if state.head == head
            && rows.len() < limit
            && rows.last().is_none_or(|(last, _)| *last == head)
        {
            // Updates shown before they were durable come after the durable ones, from memory
            // (their messages are read through this core's staged writes below). If the head
            // moved since the read went out, the page ends where the read did: there is more.
            let room = limit - rows.len();
            rows.extend(
                state
                    .early
                    .iter()
                    .filter(|(user_seq, _)| *user_seq > since.max(head))
                    .take(room)
                    .cloned(),
            );
        }
        let mut updates = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        let mut last = since;
        for (user_seq, record) in &rows {
            let Some((update, size)) =
                self.materialize_record(*user_seq, record, |c, s| messages.remove(&(c, s)))?
            else {
                // Unreadable entries are skipped (and logged), never allowed to stall the cursor.
                last = *user_seq;
                continue;
            };
            if !updates.is_empty() && bytes + size > PAGE_BYTES_MAX {
                break;
            }
            bytes += size;
            last = *user_seq;
            updates.push(update);
        }
        let has_more = last.max(since) < shown_head;
        // The page's `Ack` finds its messages here, not by reading the log back on the core.
        let room = self.unacked_room < self.unacked_budget;
        let state = self.user_state(user_id)?;
        let grown = state.keep_paged(
            user_id,
            room,
            since,
            last,
            rows.iter().map(|(user_seq, record)| (*user_seq, record)),
        );
        self.unacked_room = self.unacked_room.saturating_add_signed(grown);
        self.metrics
            .core(self.core)
            .delivered_sync
            .add(updates.len() as u64);
        if !has_more {
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.live = true;
            }
        }
        self.reply(
            conn,
            request_id,
            SyncPage {
                updates,
                has_more,
                head: shown_head,
            },
        );
        Ok(())
    }

    pub(crate) fn handle_ack(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        user_id: u64,
        device_id: u32,
        ack: Ack,
    ) -> Result<(), StoreError> {
        let state = self.user_state(user_id)?;
        // Updates shown before they were durable may be acknowledged: they keep their numbers
        // (spec §10.5: the cap is the head as `SyncPage.head` counts it).
        let up_to = ack.up_to.min(state.shown_head());
        let previously_acked = state.acked;
        state.acked = state.acked.max(up_to);
        if let Some(mut device) = self.store.device(user_id, device_id)? {
            if up_to > device.cursor {
                device.cursor = up_to;
                device.last_active_at = now_ms;
                self.batch.put_device(user_id, device_id, &device)?;
            }
        } else {
            self.close(
                conn,
                ErrorCode::DEVICE_REVOKED,
                "this device was signed out",
            );
        }
        if up_to > previously_acked {
            self.emit_delivered(now_ms, user_id, previously_acked, up_to)?;
        }
        Ok(())
    }

    /// The user's devices received updates `(from, to]`: moves delivered watermarks and tells senders.
    fn emit_delivered(
        &mut self,
        now_ms: u64,
        user_id: u64,
        from: u64,
        to: u64,
    ) -> Result<(), StoreError> {
        let mut newest: BTreeMap<u64, (u64, BTreeSet<u64>)> = BTreeMap::new();
        let mut note = |conversation_id: u64, seq: u64, sender: u64| {
            let entry = newest.entry(conversation_id).or_default();
            entry.0 = entry.0.max(seq);
            entry.1.insert(sender);
        };
        let state = self.user_state(user_id)?;
        // `unacked` holds every message from others above `unacked_from`. Below it, the `Sync`
        // pages these updates came in may have been kept, from the device's cursor on: only what
        // lies below them (updates the device took before it last went away, unacknowledged) is
        // read back from the log.
        let kept = from >= state.unacked_from;
        let (span, gave) = match kept {
            true => (None, 0),
            false => state.take_paged(from, to, |message| {
                note(message.conversation_id, message.seq, message.sender)
            }),
        };
        let read_to = match span {
            _ if kept => from,
            Some((start, reach)) if reach >= to || reach >= state.unacked_from => start,
            _ => to,
        };
        // `unacked` is in user_seq order: everything up to `to` is acknowledged now.
        let grown = state.take_acked(to, |message| {
            if read_to < to && message.user_seq > from {
                note(message.conversation_id, message.seq, message.sender);
            }
        });
        state.unacked_from = state.unacked_from.max(to);
        self.unacked_room = self
            .unacked_room
            .saturating_add_signed(grown)
            .saturating_add_signed(gave);
        // A log entry noted: a message from someone else.
        let mut note_entry = |record: &UpdateRecord| {
            if let UpdateRecord::Message {
                conversation_id,
                seq,
                sender,
            } = *record
            {
                if sender != user_id {
                    note(conversation_id, seq, sender);
                }
            }
        };
        // What neither kept is read back from the log.
        let mut cursor = from;
        let mut scanned = 0;
        let mut read_back = 0;
        while cursor < read_to && scanned < ACK_SCAN_UPDATES_MAX {
            let rows = self.store.updates_after(user_id, cursor, RANGE_READ_MAX)?;
            let Some(&(last, _)) = rows.last() else { break };
            for (user_seq, record) in &rows {
                if *user_seq > read_to {
                    break;
                }
                read_back += 1;
                note_entry(record);
            }
            scanned += rows.len();
            cursor = last;
        }
        self.metrics.core(self.core).ack_updates_read.add(read_back);
        if read_to > from {
            // Updates shown before they were durable may not be readable yet (the pending batch
            // holds them): they are in memory, above the durable head. One noted twice (staged,
            // so also read above) changes nothing.
            let state = self.user_state(user_id)?;
            for (user_seq, record) in &state.early {
                if from < *user_seq && *user_seq <= read_to {
                    note_entry(record);
                }
            }
        }
        for (conversation_id, (seq, senders)) in newest {
            if !self.move_watermark(conversation_id, user_id, ReceiptKind::Delivered, seq)? {
                continue;
            }
            for sender in senders {
                let kind = ReceiptKind::Delivered as u8;
                let update = UpdateRecord::Receipt {
                    conversation_id,
                    user_id,
                    kind,
                    up_to_seq: seq,
                    ts: now_ms,
                };
                let mail = Mail::Append {
                    to_user: sender,
                    update,
                };
                self.mail_after_commit(self.owner(sender), mail);
            }
        }
        Ok(())
    }

    /// The conversation, if `user_id` is a member (otherwise `NOT_FOUND` was replied).
    fn member_conversation(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        conversation_id: u64,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let record = self
            .store
            .conversation(conversation_id)?
            .filter(|c| c.has_member(user_id));
        if record.is_none() {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::NOT_FOUND,
                "no such conversation",
            );
        }
        Ok(record)
    }

    pub(crate) fn handle_history(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        history: History,
    ) -> Result<(), StoreError> {
        let conversation_id = history.conversation_id;
        if self
            .member_conversation(conn, request_id, user_id, conversation_id)?
            .is_none()
        {
            return Ok(());
        }
        let max = self
            .config
            .history_page_messages_max
            .min(HISTORY_PAGE_MESSAGES_MAX) as usize;
        let limit = if history.limit == 0 {
            max
        } else {
            (history.limit as usize).min(max)
        };
        let before = if history.before == 0 {
            u64::MAX
        } else {
            history.before
        };
        let job = reads::ReadJob::History {
            conversation_id,
            before,
            after: history.after,
            limit,
        };
        // Read as a `Sync` page is (`core/reads.rs`).
        self.read_and_reply(conn, request_id, user_id, job)
    }

    /// Replies to a `History` with the page read.
    pub(crate) fn send_history_page(
        &mut self,
        conn: ConnId,
        request_id: u32,
        conversation_id: u64,
        after: Option<u64>,
        read: reads::HistoryRead,
    ) {
        let messages = read
            .rows
            .into_iter()
            .map(|(seq, m)| wire_message(&self.store, conversation_id, seq, m))
            .collect();
        self.reply(
            conn,
            request_id,
            HistoryPage {
                conversation_id,
                messages,
                has_more: read.has_more,
                // Echoed so the client knows the page was read forwards (spec §4.1, §10.7).
                after,
            },
        );
    }
}

/// A `History` page of what is durable: the newest messages below `before` (`after` absent) or
/// the oldest above `after`, at most `limit` and what fits in a frame.
pub(crate) fn read_history(
    store: &Store,
    conversation_id: u64,
    before: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<reads::HistoryRead, StoreError> {
    let (rows, has_more) = match after {
        None => history_backwards(store, conversation_id, before, limit)?,
        Some(after) => history_forwards(store, conversation_id, after, before, limit)?,
    };
    Ok(reads::HistoryRead { rows, has_more })
}

/// The newest messages with `seq < before`, at most `limit` and what fits in a frame, oldest
/// first; and whether older ones exist. Only what is durable: a message whose batch may still
/// fail is never shown.
fn history_backwards(
    store: &Store,
    conversation_id: u64,
    before: u64,
    limit: usize,
) -> Result<(Vec<(u64, MessageRecord)>, bool), StoreError> {
    let mut rows = store.messages_before(conversation_id, before, limit)?;
    // Keep the newest messages that fit in one frame.
    let keep = fitting(rows.iter().rev().map(|(_, message)| message));
    let rows = rows.split_off(rows.len() - keep);
    let has_more = rows.first().is_some_and(|(seq, _)| *seq > 1);
    Ok((rows, has_more))
}

/// How many of `messages`, taken in order, fit in a page's frame (at least one).
fn fitting<'a>(messages: impl Iterator<Item = &'a MessageRecord>) -> usize {
    let mut bytes = 0;
    let mut keep = 0;
    for message in messages {
        let size = approx_message_bytes(message);
        if keep > 0 && bytes + size > PAGE_BYTES_MAX {
            break;
        }
        bytes += size;
        keep += 1;
    }
    keep
}

/// The oldest messages with `after < seq < before`, at most `limit` and what fits in a frame,
/// oldest first; and whether newer ones in that range exist. Only what is durable.
fn history_forwards(
    store: &Store,
    conversation_id: u64,
    after: u64,
    before: u64,
    limit: usize,
) -> Result<(Vec<(u64, MessageRecord)>, bool), StoreError> {
    let Some(first) = after.checked_add(1) else {
        return Ok((Vec::new(), false));
    };
    // Seqs are gapless, so the range `first..end` holds at most `limit` messages, and the
    // newest `limit` below `end` (one backward scan) include every one of them.
    let end = before.min(first.saturating_add(limit as u64));
    if end <= first {
        return Ok((Vec::new(), false));
    }
    let mut rows = store.messages_before(conversation_id, end, limit)?;
    rows.retain(|(seq, _)| *seq > after);
    // Keep the oldest messages that fit in one frame.
    rows.truncate(fitting(rows.iter().map(|(_, message)| message)));
    // An empty page means nothing is left in range; saying so also keeps a client from asking
    // again with the same `after` for ever.
    let has_more = match rows.last() {
        Some((last, _)) => {
            let newest = store.last_seq(conversation_id)?;
            *last < newest.min(before - 1)
        }
        None => false,
    };
    Ok((rows, has_more))
}

impl Shard {
    pub(crate) fn handle_mark_read(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        mark: MarkRead,
    ) -> Result<(), StoreError> {
        let conversation_id = mark.conversation_id;
        let Some(record) = self.member_conversation(conn, request_id, user_id, conversation_id)?
        else {
            return Ok(());
        };
        let newest = if record.kind == ConversationKind::Direct as u8 {
            // In a direct conversation, no further than the caller's log holds: the peer's log
            // then holds the message, or takes it before this receipt (protocol §17.2).
            self.fanout_mark(user_id, conversation_id)?
        } else {
            // A member may read what came before they joined, which their log lacks.
            self.store.last_seq(conversation_id)?
        };
        let up_to = mark.up_to_seq.min(newest);
        if self.move_watermark(conversation_id, user_id, ReceiptKind::Read, up_to)? {
            let members: Vec<u64> = record.members.iter().map(|m| m.user_id).collect();
            self.announce_read(now_ms, conversation_id, user_id, up_to, &members)?;
        }
        self.reply_after_commit(conn, request_id, OkFrame {});
        Ok(())
    }

    /// Tells a reader's own devices and the other members that `user_id` read up to `up_to`.
    fn announce_read(
        &mut self,
        now_ms: u64,
        conversation_id: u64,
        user_id: u64,
        up_to: u64,
        members: &[u64],
    ) -> Result<(), StoreError> {
        let kind = ReceiptKind::Read as u8;
        // The reader's own devices learn it too, so every device shows the same unread count.
        self.append_receipt(user_id, conversation_id, user_id, kind, up_to, now_ms)?;
        for &member in members.iter().filter(|&&m| m != user_id) {
            let update = UpdateRecord::Receipt {
                conversation_id,
                user_id,
                kind,
                up_to_seq: up_to,
                ts: now_ms,
            };
            let mail = Mail::Append {
                to_user: member,
                update,
            };
            self.mail_after_commit(self.owner(member), mail);
        }
        Ok(())
    }

    pub(crate) fn handle_open_direct(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        open: OpenDirect,
    ) -> Result<(), StoreError> {
        let peer = open.user_id;
        // 0 is never a user's id (§5): asking for it is a malformed request, not a missing user.
        if peer == user_id || peer == 0 {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::INVALID_ARGUMENT,
                "a direct conversation needs another user",
            );
            return Ok(());
        }
        if self.store.user(peer)?.is_none() {
            self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such user");
            return Ok(());
        }
        let origin = ConnRef {
            core: self.core,
            conn,
        };
        let core = self.owner(user_id.min(peer));
        self.mail_now(
            core,
            Mail::OpenDirect {
                origin,
                request_id,
                user_id,
                peer,
                encrypted: open.encrypted,
            },
        );
        Ok(())
    }

    /// On the lower user's core: finds or creates the pair's direct conversation.
    pub(crate) fn handle_mail_open_direct(
        &mut self,
        now_ms: u64,
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        peer: u64,
        encrypted: bool,
    ) -> Result<(), StoreError> {
        let (lo, hi) = (user_id.min(peer), user_id.max(peer));
        let existing = match self.chat.pending_direct.get(&(lo, hi)) {
            Some(id) => Some(*id),
            None => self.store.direct(lo, hi)?,
        };
        let conversation_id = match existing {
            Some(id) => id,
            None => {
                let id = self.direct_conversation_id(now_ms);
                let members = vec![
                    MemberRecord {
                        user_id: lo,
                        role: Role::Member as u8,
                    },
                    MemberRecord {
                        user_id: hi,
                        role: Role::Member as u8,
                    },
                ];
                let record = ConversationRecord {
                    kind: ConversationKind::Direct as u8,
                    name: String::new(),
                    created_at: now_ms,
                    members,
                };
                self.batch.put_conversation(id, &record)?;
                self.batch.put_direct(lo, hi, id);
                self.batch.put_user_conversation(lo, id);
                self.batch.put_user_conversation(hi, id);
                if encrypted {
                    self.batch.put_conversation_encrypted(id);
                }
                self.chat.pending_direct.insert((lo, hi), id);
                id
            }
        };
        self.mail_after_commit(
            origin.core,
            Mail::DirectOpened {
                origin,
                request_id,
                result: Ok(conversation_id),
            },
        );
        Ok(())
    }

    /// A new direct conversation's id, drawn so that this core, the lower member's, owns the
    /// conversation: the lower member's messages then stay on one core, and the other member's
    /// cross cores fewer times. Ids are unique and time-ordered however many are drawn; after
    /// [`DIRECT_ID_DRAWS_MAX`] the last one is taken wherever it lands.
    fn direct_conversation_id(&mut self, now_ms: u64) -> u64 {
        let mut id = self.next_id(now_ms);
        for _ in 1..DIRECT_ID_DRAWS_MAX {
            if self.owner(id) == self.core {
                break;
            }
            id = self.next_id(now_ms);
        }
        id
    }

    /// Replies with a conversation's state as `user_id` sees it.
    pub(crate) fn reply_conversation(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        conversation_id: u64,
    ) -> Result<(), StoreError> {
        let Some(record) = self.member_conversation(conn, request_id, user_id, conversation_id)?
        else {
            return Ok(());
        };
        let last_seq = self.store.last_seq(conversation_id)?;
        let read_seq = self.receipt(conversation_id, user_id)?.read_seq;
        let conversation = ConversationInfo {
            conversation_id,
            kind: ConversationKind::from_u8(record.kind).unwrap_or_default(),
            name: record.name,
            created_at: record.created_at,
            last_seq,
            read_seq,
            unread: last_seq.saturating_sub(read_seq),
            members: record
                .members
                .iter()
                .map(|m| Member {
                    user_id: m.user_id,
                    role: Role::from_u8(m.role).unwrap_or_default(),
                })
                .collect(),
        };
        let encrypted = self.conversation_encrypted(conversation_id)?;
        self.reply(
            conn,
            request_id,
            Conversation {
                conversation,
                encrypted,
            },
        );
        Ok(())
    }

    pub(crate) fn handle_list_conversations(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        list: ListConversations,
    ) -> Result<(), StoreError> {
        let max = CONVERSATIONS_PAGE_MAX as usize;
        let limit = if list.limit == 0 {
            max
        } else {
            (list.limit as usize).min(max)
        };
        let ids = self
            .store
            .user_conversations(user_id, list.after, limit + 1)?;
        let mut has_more = ids.len() > limit;
        let mut conversations = Vec::with_capacity(limit);
        let mut bytes = 0;
        for conversation_id in ids.into_iter().take(limit) {
            let Some(record) = self.store.conversation(conversation_id)? else {
                continue;
            };
            let last_seq = self.store.last_seq(conversation_id)?;
            let read_seq = self.receipt(conversation_id, user_id)?.read_seq;
            let last_message = match last_seq {
                0 => None,
                seq => self.store.message(conversation_id, seq)?,
            };
            bytes += last_message.as_ref().map_or(128, approx_message_bytes);
            if !conversations.is_empty() && bytes > PAGE_BYTES_MAX {
                // Cut short by the frame size: the rest follow on the next page (§11.5).
                has_more = true;
                break;
            }
            let kind = ConversationKind::from_u8(record.kind).unwrap_or_default();
            let peer = match kind {
                ConversationKind::Direct => record
                    .members
                    .iter()
                    .map(|m| m.user_id)
                    .find(|u| *u != user_id)
                    .unwrap_or(0),
                ConversationKind::Group => 0,
            };
            conversations.push(ConversationSummary {
                conversation_id,
                kind,
                name: record.name,
                peer,
                last_seq,
                read_seq,
                unread: last_seq.saturating_sub(read_seq),
                last_message: last_message
                    .map(|m| wire_message(&self.store, conversation_id, last_seq, m)),
            });
        }
        self.reply(
            conn,
            request_id,
            Conversations {
                conversations,
                has_more,
            },
        );
        Ok(())
    }
}

fn group_members_len(record: &UpdateRecord) -> usize {
    match record {
        UpdateRecord::GroupCreated { members, .. } => members.len(),
        UpdateRecord::MembersAdded { members, .. } => members.len(),
        _ => 0,
    }
}

/// The wire form of a stored message.
fn wire_message(
    store: &crate::store::Store,
    conversation_id: u64,
    seq: u64,
    stored: MessageRecord,
) -> Message {
    Message {
        conversation_id,
        seq,
        message_id: stored.message_id,
        sender: stored.sender,
        sender_device: stored.sender_device,
        ts: stored.ts,
        client_msg_id: stored.client_msg_id,
        attachments: super::media::attachments(store, &stored.attachments),
        body: stored.body,
    }
}

/// The two members of a direct conversation, which deliveries carry so that a reply's read
/// receipt needs no read of the conversation on the member's core; `None` for a group.
fn direct_members(record: &ConversationRecord) -> Option<[u64; 2]> {
    match record.members.as_slice() {
        [a, b] if record.kind == ConversationKind::Direct as u8 => Some([a.user_id, b.user_id]),
        _ => None,
    }
}
