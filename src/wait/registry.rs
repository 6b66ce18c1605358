//! The local waiter registry: lock name → FIFO of this client's waiting threads.
//!
//! A waiter registers *before* its first acquire attempt, so a release that lands
//! between a failed attempt and the sleep still finds it. Each waiter has a wake-up
//! slot (a `bounded(1)` channel: wake-ups coalesce, none is lost while the waiter is
//! busy). A release heard of wakes the first waiter only; a waiter that leaves holding
//! an unconsumed wake-up passes it on.
//!
//! A releasing thread of this client can *claim* the first waiter and hand the lock
//! straight to it (see `Core::release`). While claimed, the waiter cannot leave: a
//! waiter whose deadline passes waits for the claim's outcome, which is bounded by the
//! releaser's round trip.
//!
//! The registry is the backend's [`ReleaseSink`]: the backend's subscriber delivers
//! what it hears here, by lock name.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::tenure::Tenure;
use super::tickets::Tickets;
use crate::backend::{Granted, HandoffTarget, Listen, ReleaseSink};
use crate::clock::Stamp;
use crate::sync::lock;

/// What a waiter was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The fencing token (0 without fencing).
    pub fence: u64,
    /// No later than Redis started the lease: when the handing release was sent, or,
    /// for a grant from another client, when this client's request that queued it was.
    pub at: Stamp,
    /// Handoffs of this client's turn before this one (see `Released::Handed`).
    pub turn: u32,
    /// The registry's count of server changes when the request behind `at` was sent:
    /// a lease confirmed by the server before a change is not relied on after it.
    pub epoch: u64,
    /// Granted by another client's release: the owner token Redis lists, the short
    /// lease the grant has until the waiter extends it, and the replicas that
    /// acknowledged it.
    pub from_another_client: Option<Granted>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Queued,
    /// A releaser is handing the lock to this waiter; `leaving` once the waiter wants out.
    Claimed {
        leaving: bool,
    },
    /// The lock was handed over.
    Granted(Grant),
}

struct Waiter {
    id: u64,
    name: Arc<str>,
    target: HandoffTarget,
    state: Mutex<State>,
    /// Sleeping without a time bound of its own, relying on the first waiter (see
    /// `Core::wait`): it must be woken if it becomes first.
    relies_on_first: AtomicBool,
    /// A release through Redis that would have handed the lock to this waiter failed:
    /// Redis may list its token as the owner although nobody told it.
    maybe_handed: AtomicBool,
    /// Set with `Granted` by an in-process handoff that kept the Redis tenure.
    tenure: Mutex<Option<Arc<Tenure>>>,
    tx: Sender<()>,
    rx: Receiver<()>,
}

/// Why a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    Notified,
    TimedOut,
}

/// What became of a waiter that asked to leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leave {
    Left,
    /// It was handed the lock before it could leave: it holds it now.
    Granted(Grant),
}

/// A registered waiter, owned by its thread. Dropping it leaves the queue.
pub(crate) struct WaitHandle {
    registry: Arc<Registry>,
    waiter: Arc<Waiter>,
    done: bool,
}

/// A waiter claimed by a releaser. Dropping it without [`Claim::grant`] puts the
/// waiter back in the queue, so a failed or panicking release never strands it.
pub(crate) struct Claim {
    registry: Arc<Registry>,
    waiter: Arc<Waiter>,
    settled: bool,
}

#[derive(Default)]
pub(crate) struct Registry {
    queues: Mutex<HashMap<Arc<str>, VecDeque<Arc<Waiter>>>>,
    /// The waiters in `queues`, all names.
    queued: AtomicUsize,
    next_id: AtomicU64,
    /// Whether the backend's subscriber hears release messages now.
    listening: AtomicBool,
    /// Per lock name, since when this client may be queued for it in Redis (the
    /// earliest request that queued it, since it last got the lock or left), and that
    /// queueing's mark: a grant from another client that echoes the mark is timed from
    /// here.
    queued_since: Mutex<HashMap<Arc<str>, (Stamp, u64, u64)>>,
    next_mark: AtomicU64,
    /// How many times the server turned out to be another one (see
    /// `ReleaseSink::server_changed`); the watchdog checks every held lock when it
    /// moves.
    server_changes: AtomicU64,
    /// Wakes the watchdog (set once it runs).
    on_server_change: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The waiting threads of read-write locks and semaphores, by token.
    tickets: Arc<Tickets>,
}

impl ReleaseSink for Registry {
    fn granted(&self, name: &str, grant: Granted) -> bool {
        let mut queues = lock(&self.queues);
        let Some(waiter) = queues.get(name).and_then(|q| q.iter().find(|w| *lock(&w.state) == State::Queued)).cloned()
        else {
            return false;
        };
        // A grant of another queueing (heard late) or of none on record cannot be
        // timed: as old as its lease, so the waiter confirms it with Redis first.
        let (at, epoch) = match lock(&self.queued_since).remove(name) {
            Some((since, mark, epoch)) if mark == grant.mark => (since, epoch),
            _ => (Stamp::now().earlier(Duration::from_millis(grant.lease_ms)), self.server_changes()),
        };
        let fence = grant.fence;
        let grant = Grant { fence, at, turn: 0, epoch, from_another_client: Some(grant) };
        *lock(&waiter.state) = State::Granted(grant);
        self.remove_holder(&mut queues, &waiter);
        let _ = waiter.tx.try_send(());
        true
    }

    /// Wakes the first waiter of `name`. Returns whether there was one.
    fn wake_first(&self, name: &str) -> bool {
        let queues = lock(&self.queues);
        let first = queues.get(name).and_then(|q| q.front());
        if let Some(w) = first {
            let _ = w.tx.try_send(());
        }
        first.is_some()
    }

    fn wake_all(&self) {
        Registry::wake_all(self);
    }

    fn has_waiters(&self, name: &str) -> bool {
        self.waiting(name) > 0
    }

    fn waiting_threads(&self) -> usize {
        self.queued.load(Ordering::Acquire) + self.tickets.waiting_total()
    }

    fn waits_for(&self, name: &str) -> bool {
        self.waiting(name) > 0 || self.tickets.waiting_tagged(name) > 0
    }

    fn recheck(&self, name: &str) {
        self.wake_first(name);
        self.tickets.wake_tagged(name);
    }

    fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Release);
    }

    fn server_changed(&self) {
        self.server_changes.fetch_add(1, Ordering::AcqRel);
        if let Some(wake) = self.on_server_change.get() {
            wake();
        }
    }

    fn granted_ticket(&self, token: &str, lease_ms: u64) -> bool {
        self.tickets.grant(token, lease_ms)
    }

    fn wake_ticket(&self, token: &str) -> bool {
        self.tickets.wake(token)
    }

    fn has_ticket(&self, token: &str) -> bool {
        self.tickets.contains(token)
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// How many times the server turned out to be another one.
    pub fn server_changes(&self) -> u64 {
        self.server_changes.load(Ordering::Acquire)
    }

    /// `wake` runs whenever the server turns out to be another one (once set).
    pub fn on_server_change(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_server_change.set(Box::new(wake));
    }

    pub fn register(self: &Arc<Self>, name: Arc<str>, target: HandoffTarget) -> WaitHandle {
        let (tx, rx) = bounded(1);
        let waiter = Arc::new(Waiter {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.clone(),
            target,
            state: Mutex::new(State::Queued),
            relies_on_first: AtomicBool::new(false),
            maybe_handed: AtomicBool::new(false),
            tenure: Mutex::new(None),
            tx,
            rx,
        });
        lock(&self.queues).entry(name).or_default().push_back(waiter.clone());
        self.queued.fetch_add(1, Ordering::AcqRel);
        WaitHandle { registry: self.clone(), waiter, done: false }
    }

    /// A request that may queue this client for `name` in Redis is being sent at `at`;
    /// returns the mark to queue with (the one on record while this client may still
    /// be queued, so the earliest time stays with it).
    pub fn queueing(&self, name: &Arc<str>, at: Stamp) -> u64 {
        let mut since = lock(&self.queued_since);
        let epoch = self.server_changes();
        since.entry(name.clone()).or_insert_with(|| (at, self.next_mark.fetch_add(1, Ordering::Relaxed) + 1, epoch)).1
    }

    /// This client is no longer queued for `name` (it got the lock, or left).
    pub fn dequeued(&self, name: &str) {
        lock(&self.queued_since).remove(name);
    }

    /// Whether release messages are heard now (else waiters poll).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// The waiting threads of read-write locks and semaphores.
    pub fn tickets(&self) -> &Arc<Tickets> {
        &self.tickets
    }

    /// Wakes every waiter once (after the notifier reconnects: messages may be lost).
    pub fn wake_all(&self) -> usize {
        let queues = lock(&self.queues);
        let mut n = self.tickets.wake_all();
        for w in queues.values().flatten() {
            let _ = w.tx.try_send(());
            n += 1;
        }
        n
    }

    /// Number of threads of this client waiting for `name`.
    pub fn waiting(&self, name: &str) -> usize {
        lock(&self.queues).get(name).map_or(0, VecDeque::len)
    }

    /// Claims the first queued (not already claimed) waiter of `name` for a handoff.
    pub fn claim_first(self: &Arc<Self>, name: &str) -> Option<Claim> {
        let queues = lock(&self.queues);
        let waiter = queues.get(name)?.iter().find(|w| {
            let mut st = lock(&w.state);
            if *st == State::Queued {
                *st = State::Claimed { leaving: false };
                true
            } else {
                false
            }
        })?;
        Some(Claim { registry: self.clone(), waiter: waiter.clone(), settled: false })
    }

    fn remove(&self, queues: &mut HashMap<Arc<str>, VecDeque<Arc<Waiter>>>, waiter: &Waiter) {
        if let Some(q) = queues.get_mut(&waiter.name) {
            let before = q.len();
            q.retain(|w| w.id != waiter.id);
            self.queued.fetch_sub(before - q.len(), Ordering::AcqRel);
            if q.is_empty() {
                queues.remove(&waiter.name);
            }
        }
    }

    /// Removes `waiter`, which now holds the lock. The waiter behind it, if it sleeps
    /// relying on the first (no time bound of its own), counts on the holder's release
    /// to wake it. A holder whose lease is renewed always releases or is found lost
    /// (which wakes the first waiter too); one with `auto_renew` off may just let its
    /// lease run out, which nobody announces: then the next waiter is woken now, to
    /// ask Redis and sleep no longer than that lease.
    fn remove_holder(&self, queues: &mut HashMap<Arc<str>, VecDeque<Arc<Waiter>>>, waiter: &Waiter) {
        let was_first = queues.get(&waiter.name).and_then(|q| q.front()).is_some_and(|w| w.id == waiter.id);
        self.remove(queues, waiter);
        if was_first
            && !waiter.target.auto_renew
            && let Some(next) = queues.get(&waiter.name).and_then(|q| q.front())
            && next.relies_on_first.load(Ordering::Acquire)
        {
            let _ = next.tx.try_send(());
        }
    }
}

impl Claim {
    pub fn target(&self) -> &HandoffTarget {
        &self.waiter.target
    }

    /// The waiter takes over `tenure` (with fencing token `fence`, 0 without): the lock
    /// stays this client's in Redis, under the same token and lease, and passes to the
    /// waiter without a round trip.
    pub fn grant_tenure(self, tenure: Arc<Tenure>, fence: u64) {
        *lock(&self.waiter.tenure) = Some(tenure);
        let epoch = self.registry.server_changes();
        self.grant(Grant { fence, at: Stamp::now(), turn: 0, epoch, from_another_client: None });
    }

    /// The waiter now owns the lock: take it out of the queue and wake it.
    pub fn grant(mut self, grant: Grant) {
        self.settled = true;
        let mut queues = lock(&self.registry.queues);
        *lock(&self.waiter.state) = State::Granted(grant);
        self.registry.remove_holder(&mut queues, &self.waiter);
        let _ = self.waiter.tx.try_send(());
    }

    /// The release that was to hand the lock to this waiter failed: Redis may have
    /// handed it over all the same.
    pub fn maybe_handed(&self) {
        self.waiter.maybe_handed.store(true, Ordering::Release);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let _queues = lock(&self.registry.queues);
        let mut st = lock(&self.waiter.state);
        if let State::Claimed { leaving } = *st {
            *st = State::Queued;
            if leaving {
                let _ = self.waiter.tx.try_send(());
            }
        }
    }
}

impl WaitHandle {
    /// Marks whether this waiter's next sleep relies on the first waiter to wake it.
    pub fn rely_on_first(&self, on: bool) {
        self.waiter.relies_on_first.store(on, Ordering::Release);
    }

    /// Whether this is the first waiter of its name.
    pub fn is_first(&self) -> bool {
        let queues = lock(&self.registry.queues);
        queues.get(&self.waiter.name).and_then(|q| q.front()).is_some_and(|w| w.id == self.waiter.id)
    }

    /// What a releaser handed this waiter, if it did.
    pub fn granted(&self) -> Option<Grant> {
        match &*lock(&self.waiter.state) {
            State::Granted(grant) => Some(grant.clone()),
            _ => None,
        }
    }

    /// Whether a failed release may have handed this waiter the lock in Redis.
    pub fn maybe_handed(&self) -> bool {
        self.waiter.maybe_handed.load(Ordering::Acquire)
    }

    /// Reads `line` until woken or `until` (see [`Listen`]); `None` when it could not
    /// take the line, or left it early: the caller sleeps on its slot instead.
    pub fn listen_until(&self, line: &dyn Listen, until: Instant) -> Option<Woken> {
        if !line.listen_until(until, &|| !self.waiter.rx.is_empty()) {
            return None;
        }
        if self.waiter.rx.try_recv().is_ok() {
            Some(Woken::Notified)
        } else if Instant::now() >= until {
            Some(Woken::TimedOut)
        } else {
            None
        }
    }

    /// Sleeps until woken or `until`.
    pub fn sleep_until(&self, until: Instant) -> Woken {
        match self.waiter.rx.recv_deadline(until) {
            Ok(()) => Woken::Notified,
            Err(RecvTimeoutError::Timeout) => Woken::TimedOut,
            // The handle owns a sender too, so the channel never disconnects.
            Err(RecvTimeoutError::Disconnected) => Woken::TimedOut,
        }
    }

    /// The tenure handed over with the grant, if the handoff kept it (see
    /// [`Claim::grant_tenure`]). Whoever takes it must release or keep renewing it.
    pub fn take_tenure(&self) -> Option<Arc<Tenure>> {
        lock(&self.waiter.tenure).take()
    }

    /// Leaves the queue (see [`leave`](Self::leave)), returning the tenure too if the
    /// lock was handed over with one meanwhile.
    pub fn leave_with_tenure(self) -> (Leave, Option<Arc<Tenure>>) {
        let waiter = self.waiter.clone();
        let left = self.leave();
        let tenure = lock(&waiter.tenure).take();
        (left, tenure)
    }

    /// The waiter acquired the lock itself: leave the queue (see `remove_holder` for
    /// what the waiter behind it is told).
    pub fn finish(mut self) {
        self.done = true;
        let mut queues = lock(&self.registry.queues);
        self.registry.remove_holder(&mut queues, &self.waiter);
    }

    /// Leaves the queue. If a releaser is handing the lock over right now, waits for
    /// the outcome: the caller may come out holding the lock.
    pub fn leave(mut self) -> Leave {
        loop {
            {
                let mut queues = lock(&self.registry.queues);
                let mut st = lock(&self.waiter.state);
                match &*st {
                    State::Granted(grant) => {
                        self.done = true;
                        return Leave::Granted(grant.clone());
                    }
                    State::Queued => {
                        drop(st);
                        self.done = true;
                        let was_first = queues
                            .get(&self.waiter.name)
                            .and_then(|q| q.front())
                            .is_some_and(|w| w.id == self.waiter.id);
                        self.registry.remove(&mut queues, &self.waiter);
                        // A wake-up this waiter never used belongs to the next one; and
                        // a first waiter that leaves hands its watch to the next, if that
                        // one sleeps relying on it.
                        let unused = self.waiter.rx.try_recv().is_ok();
                        if let Some(next) = queues.get(&self.waiter.name).and_then(|q| q.front())
                            && (unused || (was_first && next.relies_on_first.load(Ordering::Acquire)))
                        {
                            let _ = next.tx.try_send(());
                        }
                        return Leave::Left;
                    }
                    State::Claimed { .. } => *st = State::Claimed { leaving: true },
                }
            }
            // Bounded by the releaser's round trip; it always settles its claim.
            let _ = self.waiter.rx.recv();
        }
    }
}

impl Drop for WaitHandle {
    fn drop(&mut self) {
        if !self.done {
            let mut queues = lock(&self.registry.queues);
            self.registry.remove(&mut queues, &self.waiter);
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
