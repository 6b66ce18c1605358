//! The waiting threads of read-write locks and semaphores, by token.
//!
//! Unlike a mutex's waiters (a FIFO per name inside the client, the client queued in
//! Redis), each of these waiters is its own entry in the lock's queue in Redis, under
//! the token it will hold the lock with; a grant names that token. So the notifier
//! delivers by token: a grant marks the ticket granted and wakes its thread, a
//! look-again notice wakes it. A ticket's wake-up slot is a `bounded(1)` channel, as a
//! mutex waiter's: a wake-up that comes while the thread is busy is kept, not lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::registry::Woken;
use crate::keys::hash_tag;
use crate::sync::lock;

#[derive(Default)]
pub(crate) struct Tickets {
    map: Mutex<HashMap<String, Arc<Ticket>>>,
}

struct Ticket {
    name: Arc<str>,
    /// Set by a grant: the grant's lease (ms), which the thread extends.
    granted: Mutex<Option<u64>>,
    tx: Sender<()>,
    rx: Receiver<()>,
}

/// A registered waiting thread. Dropping it unregisters it.
pub(crate) struct TicketHandle {
    tickets: Arc<Tickets>,
    token: String,
    ticket: Arc<Ticket>,
}

impl Tickets {
    /// Registers the thread that waits for `name` under `token`, before its first
    /// attempt: a grant that comes before it sleeps is kept.
    pub fn register(self: &Arc<Self>, token: &str, name: Arc<str>) -> TicketHandle {
        let (tx, rx) = bounded(1);
        let ticket = Arc::new(Ticket { name, granted: Mutex::new(None), tx, rx });
        lock(&self.map).insert(token.to_owned(), ticket.clone());
        TicketHandle { tickets: self.clone(), token: token.to_owned(), ticket }
    }

    /// The lock was granted to `token` with a lease of `lease_ms`: marks it and wakes
    /// its thread. `false` when no thread waits under `token`.
    pub fn grant(&self, token: &str, lease_ms: u64) -> bool {
        let map = lock(&self.map);
        let Some(t) = map.get(token) else { return false };
        *lock(&t.granted) = Some(lease_ms);
        let _ = t.tx.try_send(());
        true
    }

    /// Wakes the thread waiting under `token`; `false` when none does.
    pub fn wake(&self, token: &str) -> bool {
        let map = lock(&self.map);
        let Some(t) = map.get(token) else { return false };
        let _ = t.tx.try_send(());
        true
    }

    /// Wakes every thread waiting for the lock `key` (a reply that may have granted
    /// some of them the lock was lost): each attempts, and finds out.
    pub fn wake_key(&self, key: &str) {
        for t in lock(&self.map).values().filter(|t| &*t.name == key) {
            let _ = t.tx.try_send(());
        }
    }

    pub fn contains(&self, token: &str) -> bool {
        lock(&self.map).contains_key(token)
    }

    /// Wakes every waiting thread once (messages may have been missed).
    pub fn wake_all(&self) -> usize {
        let map = lock(&self.map);
        for t in map.values() {
            let _ = t.tx.try_send(());
        }
        map.len()
    }

    /// Threads waiting for a lock whose keys have the hash tag `{name}` (a read-write
    /// lock or a semaphore named `name`).
    pub fn waiting_tagged(&self, name: &str) -> usize {
        lock(&self.map).values().filter(|t| hash_tag(&t.name) == Some(name)).count()
    }

    /// Wakes every thread waiting for a lock whose keys have the hash tag `{name}`.
    pub fn wake_tagged(&self, name: &str) {
        for t in lock(&self.map).values().filter(|t| hash_tag(&t.name) == Some(name)) {
            let _ = t.tx.try_send(());
        }
    }

    /// Threads waiting for `name`.
    pub fn waiting(&self, name: &str) -> usize {
        lock(&self.map).values().filter(|t| &*t.name == name).count()
    }
}

impl TicketHandle {
    /// The lease of a grant this thread was told of (and forgets it).
    pub fn take_grant(&self) -> Option<u64> {
        lock(&self.ticket.granted).take()
    }

    /// Sleeps until woken or `until`.
    pub fn sleep_until(&self, until: Instant) -> Woken {
        match self.ticket.rx.recv_deadline(until) {
            Ok(()) => Woken::Notified,
            // The ticket holds a sender too, so the channel never disconnects.
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Woken::TimedOut,
        }
    }
}

impl Drop for TicketHandle {
    fn drop(&mut self) {
        lock(&self.tickets.map).remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_grant_reaches_its_ticket_only_and_is_kept_until_taken() {
        let tickets = Arc::new(Tickets::default());
        let a = tickets.register("a", "x".into());
        let b = tickets.register("b", "x".into());
        assert_eq!(tickets.waiting("x"), 2);
        assert!(tickets.grant("a", 1000));
        assert!(!tickets.grant("c", 1000), "nobody waits under c");
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(b.sleep_until(soon), Woken::TimedOut, "b was not woken");
        assert_eq!(a.sleep_until(soon), Woken::Notified, "the wake-up came before the sleep and was kept");
        assert_eq!((a.take_grant(), a.take_grant(), b.take_grant()), (Some(1000), None, None));
        drop(a);
        assert!(!tickets.contains("a") && tickets.contains("b"));
        assert_eq!(tickets.wake_all(), 1);
    }

    #[test]
    fn tickets_are_found_by_the_lock_name_in_their_key_s_hash_tag() {
        let tickets = Arc::new(Tickets::default());
        let rw = tickets.register("a", "p:{job}:rw".into());
        let _sem = tickets.register("b", "p:{job}:sem".into());
        let _other = tickets.register("c", "p:{job2}:sem".into());
        assert_eq!(
            (tickets.waiting_tagged("job"), tickets.waiting_tagged("jo"), tickets.waiting_tagged("x")),
            (2, 0, 0)
        );
        tickets.wake_tagged("job2");
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(rw.sleep_until(soon), Woken::TimedOut, "another name's wake-up");
        tickets.wake_tagged("job");
        assert_eq!(rw.sleep_until(soon), Woken::Notified);
    }
}
