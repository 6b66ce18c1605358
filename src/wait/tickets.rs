//! The waiting threads of read-write locks and semaphores, by token, and this client's
//! side of each such lock: its waiting threads in FIFO order, and the read shares its
//! readers may join.
//!
//! Unlike a mutex's waiters (a FIFO per name inside the client, the client queued in
//! Redis), each of these waiters that asks Redis is its own entry in the lock's queue
//! in Redis, under its token; a grant names that token. So the notifier delivers by
//! token: a grant marks the ticket granted and wakes its thread, a look-again notice
//! wakes it. A ticket's wake-up slot is a `bounded(1)` channel, as a mutex waiter's: a
//! wake-up that comes while the thread is busy is kept, not lost.
//!
//! In-process fast path (see `Core::hand_over_shared`): a permit or a write lock held
//! by this client passes in memory to the first waiting thread of its class, and a
//! reader joins a read share this client holds. Then only one waiting thread of each
//! class per lock needs an entry in Redis (the client's *representative*, which keeps
//! its demand in the fleet's queue); the threads behind it wait for a handoff or for
//! their turn to represent. A handoff to the representative passes its entry (its
//! token, and any grant on it) to the next waiting thread of its class.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::Tenure;
use super::registry::Woken;
use crate::clock::Stamp;
use crate::keys::hash_tag;
use crate::sync::lock;

/// What a waiting thread waits as: tenures pass in memory only within a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Permit,
    Reader,
    Writer,
}

#[derive(Default)]
pub(crate) struct Tickets {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_token: HashMap<String, Arc<Ticket>>,
    locks: HashMap<Arc<str>, Local>,
}

/// This client's side of one read-write lock or semaphore.
#[derive(Default)]
struct Local {
    /// Waiting threads, oldest first.
    fifo: VecDeque<Arc<Ticket>>,
    /// Read shares held here that readers may join, each with its local readers.
    reads: Vec<(Arc<Tenure>, u32)>,
    /// When the last request that found no other client's thread queued was sent.
    clear: Option<Stamp>,
}

struct Ticket {
    name: Arc<str>,
    class: Class,
    lease_ms: u64,
    auto_renew: bool,
    state: Mutex<TicketState>,
    tx: Sender<()>,
    rx: Receiver<()>,
}

#[derive(Default)]
struct TicketState {
    entry: Entry,
    /// Set by a grant: the grant's lease (ms), which the thread extends.
    granted: Option<u64>,
    /// A tenure handed over in memory.
    handed: Option<Arc<Tenure>>,
    /// An attempt is in flight: nothing is handed to it meanwhile.
    busy: bool,
}

/// The token a thread waits under, and what Redis has of it: they move together
/// when a representative's entry passes to another thread.
#[derive(Default)]
struct Entry {
    token: String,
    /// Queued in Redis by an attempt sent then (the time its grant is timed from).
    queued: Option<Stamp>,
    /// When its holder would ask Redis again (its sleep bound when it queued).
    due: Option<Instant>,
    /// Sent to Redis at least once (leaving then takes a request).
    sent: bool,
    /// Passed over from a representative: the thread sleeps until `due` first.
    adopted: Option<Instant>,
}

/// What a waiting thread does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Ask Redis (it is marked busy until `attempted`).
    Attempt,
    /// Wait to be woken, at most until then when given.
    Wait(Option<Instant>),
}

/// A registered waiting thread. Dropping it unregisters it.
pub(crate) struct TicketHandle {
    tickets: Arc<Tickets>,
    ticket: Arc<Ticket>,
    /// Unregistered by `close`.
    closed: bool,
}

impl Ticket {
    fn state(&self) -> std::sync::MutexGuard<'_, TicketState> {
        lock(&self.state)
    }

    fn wake(&self) {
        let _ = self.tx.try_send(());
    }
}

impl Local {
    /// The waiting thread of `class` that should ask Redis when none is queued there.
    fn wake_representative(&self, class: Class) {
        let mine = || self.fifo.iter().filter(|t| t.class == class);
        if mine().any(|t| t.state().entry.queued.is_some()) {
            return;
        }
        if let Some(t) = mine().next() {
            t.wake();
        }
    }
}

impl Tickets {
    /// Registers the thread that waits for `name` under `token`, before its first
    /// attempt: a grant that comes before it sleeps is kept.
    pub fn register(
        self: &Arc<Self>,
        token: &str,
        name: Arc<str>,
        class: Class,
        lease_ms: u64,
        auto_renew: bool,
    ) -> TicketHandle {
        let (tx, rx) = bounded(1);
        let entry = Entry { token: token.to_owned(), ..Entry::default() };
        let state = Mutex::new(TicketState { entry, ..TicketState::default() });
        let ticket = Arc::new(Ticket { name: name.clone(), class, lease_ms, auto_renew, state, tx, rx });
        let mut inner = lock(&self.inner);
        inner.by_token.insert(token.to_owned(), ticket.clone());
        inner.locks.entry(name).or_default().fifo.push_back(ticket.clone());
        TicketHandle { tickets: self.clone(), ticket, closed: false }
    }

    /// The lock was granted to `token` with a lease of `lease_ms`: marks it and wakes
    /// its thread. `false` when no thread waits under `token`.
    pub fn grant(&self, token: &str, lease_ms: u64) -> bool {
        let inner = lock(&self.inner);
        let Some(t) = inner.by_token.get(token) else { return false };
        t.state().granted = Some(lease_ms);
        t.wake();
        true
    }

    /// Wakes the thread waiting under `token`; `false` when none does.
    pub fn wake(&self, token: &str) -> bool {
        let inner = lock(&self.inner);
        let Some(t) = inner.by_token.get(token) else { return false };
        t.wake();
        true
    }

    /// Wakes every thread waiting for the lock `key` (a reply that may have granted
    /// some of them the lock was lost): each attempts, and finds out.
    pub fn wake_key(&self, key: &str) {
        if let Some(l) = lock(&self.inner).locks.get(key) {
            l.fifo.iter().for_each(|t| t.wake());
        }
    }

    pub fn contains(&self, token: &str) -> bool {
        lock(&self.inner).by_token.contains_key(token)
    }

    /// Threads waiting, for any lock.
    pub fn waiting_total(&self) -> usize {
        lock(&self.inner).by_token.len()
    }

    /// Wakes every waiting thread once (messages may have been missed).
    pub fn wake_all(&self) -> usize {
        let inner = lock(&self.inner);
        inner.by_token.values().for_each(|t| t.wake());
        inner.by_token.len()
    }

    /// Threads waiting for a lock whose keys have the hash tag `{name}` (a read-write
    /// lock or a semaphore named `name`).
    pub fn waiting_tagged(&self, name: &str) -> usize {
        let inner = lock(&self.inner);
        inner.locks.iter().filter(|(key, _)| hash_tag(key) == Some(name)).map(|(_, l)| l.fifo.len()).sum()
    }

    /// Wakes every thread waiting for a lock whose keys have the hash tag `{name}` (as
    /// `wake_key` does for one key).
    pub fn wake_tagged(&self, name: &str) {
        let inner = lock(&self.inner);
        for (_, l) in inner.locks.iter().filter(|(key, _)| hash_tag(key) == Some(name)) {
            l.fifo.iter().for_each(|t| t.wake());
        }
    }

    /// Threads waiting for `name`.
    pub fn waiting(&self, name: &str) -> usize {
        lock(&self.inner).locks.get(name).map_or(0, |l| l.fifo.len())
    }

    /// A request about `name` sent at `sent` found another client's thread queued
    /// there (`others`), or none: readers join read shares only within `JOIN_WINDOW`
    /// of such a request that found none.
    pub fn note_queue(&self, name: &str, sent: Stamp, others: bool) {
        let mut inner = lock(&self.inner);
        // Nothing here waits or reads: nothing to join.
        let Some(l) = inner.locks.get_mut(name) else { return };
        l.clear = match l.clear {
            _ if others => None,
            Some(c) if c.mono >= sent.mono => Some(c),
            _ => Some(sent),
        };
    }

    /// A reader of `name` (`waiting`: its ticket, if it waits) joins a read share of
    /// this client, when no writer waits here ahead of it, the last request found no
    /// other client's thread queued less than `window` ago, and a share of the same
    /// lease is fresh and renewed.
    pub fn join(
        &self,
        name: &str,
        waiting: Option<&TicketHandle>,
        lease_ms: u64,
        window: Duration,
    ) -> Option<Arc<Tenure>> {
        let now = Stamp::now();
        let mut inner = lock(&self.inner);
        let l = inner.locks.get_mut(name)?;
        if l.clear.is_none_or(|c| c.elapsed_at(now) >= window) {
            return None;
        }
        if let Some(w) = waiting {
            // Its entry in Redis, or a grant on it, would be left behind.
            let st = w.ticket.state();
            if st.entry.sent || st.granted.is_some() || st.busy {
                return None;
            }
        }
        for t in &l.fifo {
            if waiting.is_some_and(|w| Arc::ptr_eq(t, &w.ticket)) {
                break;
            }
            if t.class == Class::Writer {
                return None;
            }
        }
        let (tenure, readers) = l
            .reads
            .iter_mut()
            .rev()
            .find(|(t, _)| !t.is_lost() && t.is_renewed() && t.lease_ms() == lease_ms && t.is_fresh(now))?;
        *readers += 1;
        Some(tenure.clone())
    }

    /// A read share this client acquired through Redis, which readers may join; the
    /// readers waiting here look again.
    pub fn add_read(&self, name: &str, tenure: &Arc<Tenure>) {
        let mut inner = lock(&self.inner);
        let l = inner.locks.entry(name.into()).or_default();
        l.reads.push((tenure.clone(), 1));
        // Only those that may join it: ahead of every waiting writer, never sent.
        for t in l.fifo.iter().take_while(|t| t.class != Class::Writer) {
            if t.class == Class::Reader && !t.state().entry.sent {
                t.wake();
            }
        }
    }

    /// A reader of `tenure` leaves it: `true` when it was the last one here (then the
    /// share is released through Redis), `false` while other readers share it.
    pub fn leave_read(&self, name: &str, tenure: &Arc<Tenure>) -> bool {
        let mut inner = lock(&self.inner);
        let Some(l) = inner.locks.get_mut(name) else { return true };
        let Some(i) = l.reads.iter().position(|(t, _)| Arc::ptr_eq(t, tenure)) else { return true };
        l.reads[i].1 -= 1;
        if l.reads[i].1 > 0 {
            return false;
        }
        l.reads.swap_remove(i);
        if l.fifo.is_empty() && l.reads.is_empty() {
            inner.locks.remove(name);
        }
        true
    }

    /// Hands `tenure` (a permit or the write lock, of `class`) to the first waiting
    /// thread here, if it waits for the same class and lease, renewed, and nothing else
    /// was given to it. When it is queued in Redis, its entry passes to the next
    /// waiting thread of its class, which keeps the client's place there (none: no
    /// handoff). `false`: not handed (the caller releases through Redis).
    pub fn hand_over(&self, name: &str, tenure: &Arc<Tenure>, class: Class) -> bool {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let Some(l) = inner.locks.get_mut(name) else { return false };
        let Some(first) = l.fifo.front().cloned() else { return false };
        if first.class != class || first.lease_ms != tenure.lease_ms() || !first.auto_renew {
            return false;
        }
        let mut st = first.state();
        let stale = st.entry.sent && st.entry.queued.is_none();
        if st.granted.is_some() || st.handed.is_some() || st.busy || stale {
            return false;
        }
        if st.entry.queued.is_some() {
            let free = |t: &&Arc<Ticket>| {
                let s = t.state();
                t.class == class && s.entry.queued.is_none() && !s.busy && s.granted.is_none() && !s.entry.sent
            };
            let Some(next) = l.fifo.iter().skip(1).find(free).cloned() else { return false };
            let mut ns = next.state();
            std::mem::swap(&mut st.entry, &mut ns.entry);
            ns.entry.adopted = Some(ns.entry.due.unwrap_or_else(Instant::now));
            inner.by_token.insert(ns.entry.token.clone(), next.clone());
            inner.by_token.insert(st.entry.token.clone(), first.clone());
            next.wake();
        }
        // Counted before the thread that takes it can hand it on.
        tenure.count_local_handoff();
        st.handed = Some(tenure.clone());
        drop(st);
        l.fifo.pop_front();
        first.wake();
        // It may have been about to ask Redis for its class: the next one does.
        l.wake_representative(class);
        true
    }
}

impl TicketHandle {
    /// The token it waits under now (a representative's entry may pass to it).
    pub fn token(&self) -> String {
        self.ticket.state().entry.token.clone()
    }

    /// The lease of a grant this thread was told of (and forgets it). It is busy until
    /// `attempted` (or closed): nothing is handed to it while it takes the grant.
    pub fn take_grant(&self) -> Option<u64> {
        let mut st = self.ticket.state();
        let granted = st.granted.take();
        st.busy |= granted.is_some();
        granted
    }

    /// A tenure handed to it in memory.
    pub fn take_handed(&self) -> Option<Arc<Tenure>> {
        self.ticket.state().handed.take()
    }

    /// When the attempt that queued its token was sent.
    pub fn queued_at(&self) -> Option<Stamp> {
        self.ticket.state().entry.queued
    }

    /// Whether it asks Redis now: always in `per_thread` mode (no in-process fast
    /// path) and while it is queued there (its sleep ended, or a look-again); else only
    /// the first waiting thread of its class here, when none of them is queued.
    pub fn turn(&self, per_thread: bool) -> Turn {
        let inner = lock(&self.tickets.inner);
        let mut st = self.ticket.state();
        if let Some(due) = st.entry.adopted.take() {
            return Turn::Wait(Some(due));
        }
        let mine = per_thread || st.entry.queued.is_some() || {
            drop(st);
            let l = inner.locks.get(&self.ticket.name);
            let mut same = l.iter().flat_map(|l| l.fifo.iter()).filter(|t| t.class == self.ticket.class);
            let first = same.next().is_some_and(|t| Arc::ptr_eq(t, &self.ticket));
            st = self.ticket.state();
            first && same.all(|t| t.state().entry.queued.is_none())
        };
        if !mine {
            return Turn::Wait(None);
        }
        st.busy = true;
        st.entry.sent = true;
        Turn::Attempt
    }

    /// Its attempt is back: queued in Redis by it (sent then, asking again at `due`
    /// at the latest), or `None` (unchanged: an error).
    pub fn attempted(&self, queued: Option<(Stamp, Instant)>) {
        let mut st = self.ticket.state();
        st.busy = false;
        if let Some((sent, due)) = queued {
            st.entry.queued = Some(sent);
            st.entry.due = Some(due);
        }
    }

    /// Sleeps until woken or `until`.
    pub fn sleep_until(&self, until: Instant) -> Woken {
        match self.ticket.rx.recv_deadline(until) {
            Ok(()) => Woken::Notified,
            // The ticket holds a sender too, so the channel never disconnects.
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Woken::TimedOut,
        }
    }

    /// Unregisters it: what it was handed meanwhile, whether its token was ever sent
    /// to Redis (then leaving the queue takes a request), and the lease of a grant
    /// made to its token that nobody took (to be released).
    pub fn close(mut self) -> Closed {
        let mut guard = lock(&self.tickets.inner);
        let mut st = self.ticket.state();
        let closed = Closed {
            handed: st.handed.take(),
            token: st.entry.token.clone(),
            sent: st.entry.sent,
            granted: st.granted.take(),
        };
        drop(st);
        self.unregister(&mut guard);
        drop(guard);
        self.closed = true;
        closed
    }

    fn unregister(&self, inner: &mut Inner) {
        let token = self.ticket.state().entry.token.clone();
        if inner.by_token.get(&token).is_some_and(|t| Arc::ptr_eq(t, &self.ticket)) {
            inner.by_token.remove(&token);
        }
        let name = &self.ticket.name;
        let class = self.ticket.class;
        if let Some(l) = inner.locks.get_mut(name) {
            // Who asks Redis next changes only if it was the first of its class or
            // queued there.
            let first = l.fifo.iter().find(|t| t.class == class).is_some_and(|t| Arc::ptr_eq(t, &self.ticket));
            let queued = self.ticket.state().entry.queued.is_some();
            l.fifo.retain(|t| !Arc::ptr_eq(t, &self.ticket));
            if first || queued {
                l.wake_representative(class);
            }
            if l.fifo.is_empty() && l.reads.is_empty() {
                inner.locks.remove(name);
            }
        }
    }
}

impl Drop for TicketHandle {
    fn drop(&mut self) {
        if !self.closed {
            let mut guard = lock(&self.tickets.inner);
            self.unregister(&mut guard);
        }
    }
}

/// What a waiting thread that stops waiting leaves behind (`TicketHandle::close`).
pub(crate) struct Closed {
    pub handed: Option<Arc<Tenure>>,
    pub token: String,
    pub sent: bool,
    pub granted: Option<u64>,
}

#[cfg(test)]
#[path = "tickets_tests.rs"]
mod tests;
