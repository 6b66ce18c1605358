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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::tenure::Tenure;
use crate::backend::{HandoffTarget, ReleaseSink};
use crate::clock::Stamp;
use crate::sync::lock;

/// What a waiter was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The fencing token (0 without fencing).
    pub fence: u64,
    /// When the handing release was sent: the lease is timed from here.
    pub at: Stamp,
    /// Handoffs of this client's turn before this one (see `Released::Handed`).
    pub turn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    next_id: AtomicU64,
    /// Whether the backend's subscriber hears release messages now.
    listening: AtomicBool,
}

impl ReleaseSink for Registry {
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

    fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Release);
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
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
        WaitHandle { registry: self.clone(), waiter, done: false }
    }

    /// Whether release messages are heard now (else waiters poll).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Wakes every waiter once (after the notifier reconnects: messages may be lost).
    pub fn wake_all(&self) -> usize {
        let queues = lock(&self.queues);
        let mut n = 0;
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
            q.retain(|w| w.id != waiter.id);
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
        self.grant(Grant { fence, at: Stamp::now(), turn: 0 });
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
        match *lock(&self.waiter.state) {
            State::Granted(grant) => Some(grant),
            _ => None,
        }
    }

    /// Whether a failed release may have handed this waiter the lock in Redis.
    pub fn maybe_handed(&self) -> bool {
        self.waiter.maybe_handed.load(Ordering::Acquire)
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
                match *st {
                    State::Granted(grant) => {
                        self.done = true;
                        return Leave::Granted(grant);
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn target(t: &str) -> HandoffTarget {
        HandoffTarget { token: t.into(), lease_ms: 1000, fencing: false, auto_renew: true }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(20)
    }

    #[test]
    fn notify_wakes_only_the_first_waiter() {
        let r = Registry::new();
        let a = r.register("x".into(), target("a"));
        let b = r.register("x".into(), target("b"));
        assert!(r.wake_first("x"));
        assert!(!r.wake_first("y"));
        assert_eq!(a.sleep_until(soon()), Woken::Notified);
        assert_eq!(b.sleep_until(soon()), Woken::TimedOut);
    }

    #[test]
    fn wake_ups_coalesce_and_are_kept_while_busy() {
        let r = Registry::new();
        let a = r.register("x".into(), target("a"));
        r.wake_first("x");
        r.wake_first("x");
        assert_eq!(a.sleep_until(soon()), Woken::Notified);
        assert_eq!(a.sleep_until(soon()), Woken::TimedOut);
    }

    #[test]
    fn a_leaving_waiter_passes_its_wake_up_on() {
        let r = Registry::new();
        let a = r.register("x".into(), target("a"));
        let b = r.register("x".into(), target("b"));
        r.wake_first("x");
        assert_eq!(a.leave(), Leave::Left);
        assert_eq!(b.sleep_until(soon()), Woken::Notified);
        assert_eq!(r.waiting("x"), 1);
        b.finish();
        assert_eq!(r.waiting("x"), 0);
        assert!(lock(&r.queues).is_empty(), "empty queues are removed");
    }

    #[test]
    fn a_first_waiter_that_leaves_wakes_the_next_if_it_relies_on_it() {
        let r = Registry::new();
        let a = r.register("x".into(), target("a"));
        let b = r.register("x".into(), target("b"));
        let c = r.register("x".into(), target("c"));
        let d = r.register("x".into(), target("d"));
        assert!(a.is_first() && !b.is_first());
        c.rely_on_first(true);
        assert_eq!(b.leave(), Leave::Left);
        assert_eq!(c.sleep_until(soon()), Woken::TimedOut, "a waiter behind the first leaves quietly");
        assert_eq!(a.leave(), Leave::Left);
        assert!(c.is_first());
        assert_eq!(c.sleep_until(soon()), Woken::Notified, "the new first waiter takes over the watch");
        assert_eq!(c.leave(), Leave::Left);
        assert_eq!(d.sleep_until(soon()), Woken::TimedOut, "a waiter with its own time bound is not woken");
    }

    #[test]
    fn a_finished_waiter_passes_nothing_on() {
        let r = Registry::new();
        let a = r.register("x".into(), target("a"));
        let b = r.register("x".into(), target("b"));
        r.wake_first("x");
        a.finish();
        assert_eq!(b.sleep_until(soon()), Woken::TimedOut);
    }

    #[test]
    fn claims_go_to_the_first_unclaimed_waiter_and_grant_wakes_it() {
        let r = Registry::new();
        let a = r.register("x".into(), target("a"));
        let b = r.register("x".into(), target("b"));
        let c1 = r.claim_first("x").unwrap();
        assert_eq!(c1.target().token, "a");
        let c2 = r.claim_first("x").unwrap();
        assert_eq!(c2.target().token, "b");
        assert!(r.claim_first("x").is_none());
        let grant = Grant { fence: 7, at: Stamp::now(), turn: 0 };
        c1.grant(grant);
        assert_eq!(a.sleep_until(soon()), Woken::Notified);
        assert_eq!(a.granted(), Some(grant));
        assert_eq!(r.waiting("x"), 1);
        drop(c2); // not granted: b is queued again and can be claimed again
        assert_eq!(b.granted(), None);
        assert!(r.claim_first("x").is_some());
    }

    #[test]
    fn a_claimed_waiter_that_leaves_waits_for_the_outcome() {
        let handed = Grant { fence: 3, at: Stamp::now(), turn: 0 };
        for grant in [true, false] {
            let r = Registry::new();
            let a = r.register("x".into(), target("a"));
            let claim = r.claim_first("x").unwrap();
            let releaser = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                if grant {
                    claim.grant(handed);
                }
            });
            let out = a.leave();
            releaser.join().unwrap();
            assert_eq!(out, if grant { Leave::Granted(handed) } else { Leave::Left });
            assert_eq!(r.waiting("x"), 0);
        }
    }

    #[test]
    fn wake_all_reaches_every_waiter() {
        let r = Registry::new();
        let ws: Vec<_> = (0..5).map(|i| r.register(format!("n{}", i % 2).into(), target("t"))).collect();
        assert_eq!(r.wake_all(), 5);
        for w in &ws {
            assert_eq!(w.sleep_until(soon()), Woken::Notified);
        }
        drop(ws);
        assert!(lock(&r.queues).is_empty());
    }
}
