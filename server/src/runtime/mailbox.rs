//! Mailboxes between cores: a bounded crossbeam queue of mail batches plus a wake-up per core.
//!
//! A core collects the mail of one loop turn per destination and sends each destination one batch
//! and one wake-up, so the cost of waking a core is paid once per turn, not once per message.

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

/// One core's receiving end.
pub(crate) struct Inbox {
    pub(crate) rx: Receiver<Vec<Letter>>,
    pub(crate) wake: Arc<Notify>,
}

/// One core's sending end: its queue and its wake-up.
type Outlet = (Sender<Vec<Letter>>, Arc<Notify>);

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
            senders.push((tx, Arc::clone(&wake)));
            inboxes.push(Inbox { rx, wake });
        }
        (
            Mailboxes {
                senders: Arc::new(senders),
            },
            inboxes,
        )
    }

    /// Sends one batch to a core and wakes it. A full mailbox hands the batch back.
    pub(crate) fn send(&self, core: usize, batch: Vec<Letter>) -> Result<(), Vec<Letter>> {
        let Some((tx, wake)) = self.senders.get(core) else {
            return Err(batch);
        };
        match tx.try_send(batch) {
            Ok(()) => {
                wake.notify_one();
                Ok(())
            }
            Err(TrySendError::Full(batch)) | Err(TrySendError::Disconnected(batch)) => Err(batch),
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
        for (_, wake) in self.senders.iter() {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Mailboxes;

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
