//! Mailboxes between cores: a bounded crossbeam queue of mail batches plus a wake-up per core.
//!
//! A core collects the mail of one loop turn per destination and sends each destination one batch
//! and one wake-up, so the cost of waking a core is paid once per turn, not once per message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tokio::sync::Notify;

use bytes::BytesMut;

use crate::core::mail::{AdoptAuth, Mail};

/// What travels between cores: the core's mail, or a connection moving to its user's core. The
/// socket and its TLS and WebSocket state never enter the core: the runtime routes them itself.
#[derive(Debug)]
pub(crate) enum Letter {
    Mail(Mail),
    Adopt(Box<Adoption>),
}

impl Letter {
    /// How much work handling it is, in units of one simple mail: a delivery counts once per
    /// member it goes to.
    pub(crate) fn work(&self) -> usize {
        match self {
            Letter::Mail(Mail::Deliver { users, .. }) => users.len().max(1),
            _ => 1,
        }
    }
}

impl From<Mail> for Letter {
    fn from(mail: Mail) -> Letter {
        Letter::Mail(mail)
    }
}

/// A connection handed to another core: the socket, the bytes read past the auth request, and
/// what the new core must do before it answers.
#[derive(Debug)]
pub(crate) struct Adoption {
    pub(crate) socket: std::net::TcpStream,
    /// The TLS session, for a connection that came in on the TLS listener.
    pub(crate) tls: Option<Box<rustls::ServerConnection>>,
    /// The WebSocket state, for a connection that came in on the WebSocket listener.
    pub(crate) ws: Option<Box<super::ws::WsState>>,
    pub(crate) buffered: BytesMut,
    pub(crate) request_id: u32,
    pub(crate) auth: AdoptAuth,
}

/// Batches a mailbox holds before senders must wait a turn.
pub(crate) const MAILBOX_BATCHES_MAX: usize = 4096;

/// Work ([`Letter::work`]) a mailbox holds before senders must wait a turn. Bounding the count of
/// batches alone let a mailbox hold seconds of deliveries in W2 (a batch can hold thousands), so
/// senders were acknowledged far faster than members were given the messages.
pub(crate) const MAILBOX_WORK_MAX: usize = 16_384;

/// One core's receiving end.
pub(crate) struct Inbox {
    /// Batches, each with its work, counted once by the sender.
    rx: Receiver<(Vec<Letter>, usize)>,
    /// The work of the batches in `rx`.
    queued: Arc<AtomicUsize>,
    pub(crate) wake: Arc<Notify>,
}

impl Inbox {
    /// The next batch, if any, and its work.
    pub(crate) fn take(&self) -> Option<(Vec<Letter>, usize)> {
        let (batch, work) = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(work, Ordering::AcqRel);
        Some((batch, work))
    }

    /// Whether mail is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// One core's sending end: its queue, the work queued in it, and its wake-up.
type Outlet = (Sender<(Vec<Letter>, usize)>, Arc<AtomicUsize>, Arc<Notify>);

/// Every core's sending end, shared by all cores.
#[derive(Clone)]
pub(crate) struct Mailboxes {
    senders: Arc<Vec<Outlet>>,
}

impl Mailboxes {
    /// Mailboxes for `cores` cores, and each core's inbox.
    pub(crate) fn new(cores: usize) -> (Mailboxes, Vec<Inbox>) {
        let mut senders = Vec::with_capacity(cores);
        let mut inboxes = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (tx, rx) = bounded(MAILBOX_BATCHES_MAX);
            let wake = Arc::new(Notify::new());
            let queued = Arc::new(AtomicUsize::new(0));
            senders.push((tx, Arc::clone(&queued), Arc::clone(&wake)));
            inboxes.push(Inbox { rx, queued, wake });
        }
        (
            Mailboxes {
                senders: Arc::new(senders),
            },
            inboxes,
        )
    }

    /// Sends one batch to a core and wakes it. A full mailbox (in batches, or in work once it
    /// holds any) hands the batch back.
    pub(crate) fn send(&self, core: usize, batch: Vec<Letter>) -> Result<(), Vec<Letter>> {
        let Some((tx, queued, wake)) = self.senders.get(core) else {
            return Err(batch);
        };
        let work = batch.iter().map(Letter::work).sum();
        let before = queued.fetch_add(work, Ordering::AcqRel);
        if before > 0 && before + work > MAILBOX_WORK_MAX {
            queued.fetch_sub(work, Ordering::AcqRel);
            // Wake it anyway: it may be waiting for the mail that makes room.
            wake.notify_one();
            return Err(batch);
        }
        match tx.try_send((batch, work)) {
            Ok(()) => {
                wake.notify_one();
                Ok(())
            }
            Err(TrySendError::Full((batch, _))) | Err(TrySendError::Disconnected((batch, _))) => {
                queued.fetch_sub(work, Ordering::AcqRel);
                Err(batch)
            }
        }
    }

    /// Sends `fresh` batches after the `held` ones (batches full mailboxes handed back earlier),
    /// keeping each core's mail in the order it was sent: once a core's mailbox refuses a batch,
    /// every later batch for that core is held too, even if its mailbox took mail again meanwhile
    /// (its core drains it from another thread). A member's log takes a conversation's messages
    /// only in `seq` order, so mail that overtook other mail to the same core could lose one.
    pub(crate) fn send_in_order<T>(
        held: &mut Vec<(usize, Vec<T>)>,
        fresh: impl IntoIterator<Item = (usize, Vec<T>)>,
        mut send: impl FnMut(usize, Vec<T>) -> Result<(), Vec<T>>,
    ) {
        let mut blocked: Vec<usize> = Vec::new();
        let earlier = std::mem::take(held);
        for (core, batch) in earlier.into_iter().chain(fresh) {
            if batch.is_empty() {
                continue;
            }
            if blocked.contains(&core) {
                held.push((core, batch));
                continue;
            }
            if let Err(batch) = send(core, batch) {
                blocked.push(core);
                held.push((core, batch));
            }
        }
    }

    /// Wakes every core (used for shutdown).
    pub(crate) fn wake_all(&self) {
        for (_, _, wake) in self.senders.iter() {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Letter, Mailboxes, MAILBOX_WORK_MAX};
    use crate::core::mail::Mail;

    fn confirmations(count: usize) -> Vec<Letter> {
        (0..count)
            .map(|n| {
                Letter::Mail(Mail::Delivered {
                    conversation_id: 1,
                    seq: n as u64 + 1,
                    users: vec![7],
                })
            })
            .collect()
    }

    // Proves a mailbox is bounded by the work it holds, not only by its count of batches: one
    // batch of a whole bound's work is taken into an empty mailbox, the next is handed back until
    // the core took the first, and then it is taken.
    #[test]
    fn a_mailbox_refuses_mail_beyond_its_work_until_its_core_takes_some() {
        let (mailboxes, inboxes) = Mailboxes::new(1);
        assert!(mailboxes.send(0, confirmations(MAILBOX_WORK_MAX)).is_ok());
        let refused = mailboxes.send(0, confirmations(1));
        assert!(matches!(&refused, Err(batch) if batch.len() == 1), "full");
        let (batch, work) = inboxes[0].take().expect("the first batch");
        assert_eq!((batch.len(), work), (MAILBOX_WORK_MAX, MAILBOX_WORK_MAX));
        assert!(mailboxes.send(0, confirmations(1)).is_ok(), "room again");
        assert_eq!(inboxes[0].take().map(|(_, work)| work), Some(1));
        assert!(inboxes[0].is_empty());
    }

    // Proves mail to a core keeps its order when that core's mailbox refuses a batch and then
    // takes mail again within the same attempt (its core drained it meanwhile): the later batches
    // for that core stay held behind the refused one, while other cores' mail goes out.
    #[test]
    fn a_refused_batch_holds_back_later_mail_to_the_same_core() {
        let mut held = vec![(1, vec!["a"]), (1, vec!["b"]), (2, vec!["x"])];
        let mut sent: Vec<(usize, Vec<&str>)> = Vec::new();
        let mut refusals = 1;
        Mailboxes::send_in_order(
            &mut held,
            [(1, vec!["c"]), (2, vec!["y"])],
            |core, batch| {
                if core == 1 && refusals > 0 {
                    // Full now; room again for the next try.
                    refusals -= 1;
                    return Err(batch);
                }
                sent.push((core, batch));
                Ok(())
            },
        );
        assert_eq!(sent, [(2, vec!["x"]), (2, vec!["y"])]);
        assert_eq!(held, [(1, vec!["a"]), (1, vec!["b"]), (1, vec!["c"])]);

        // The next attempt sends them, in order.
        let mut sent: Vec<(usize, Vec<&str>)> = Vec::new();
        Mailboxes::send_in_order(&mut held, [], |core, batch| {
            sent.push((core, batch));
            Ok(())
        });
        assert!(held.is_empty());
        assert_eq!(sent, [(1, vec!["a"]), (1, vec!["b"]), (1, vec!["c"])]);
    }
}
