//! A tenure: this client's hold on one lock in Redis, under one owner token, shared by
//! the guards that take it over in memory (in-process handoffs) and by the watchdog
//! that renews it. It knows the lease Redis was last told (see [`Tenure::requests`]),
//! whether it was found lost, and how many handoffs it made.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{ReleaseSink, Replicas, Side};
use crate::clock::{Stamp, later};
use crate::error::Error;
use crate::keys::LockKeys;
use crate::stats::{Counters, bump};
use crate::sync::{lock, try_lock};
use crate::wait::listen::HeldHere;
use crate::wait::registry::Registry;

/// One Redis tenure of a lock, shared by its guards and the watchdog.
///
/// Requests that set the lease in Redis (renewals, `extend`) go one at a time
/// ([`Lease::requests`]), so Redis applies them in the order they were sent and each
/// reply confirms exactly the request it answers: the client's view of the lease is
/// never longer than what Redis was last told. A request whose outcome is unknown
/// (an error) may still have been applied, so it can only shorten that view.
#[derive(Debug)]
pub(crate) struct Tenure {
    pub keys: LockKeys,
    pub token: String,
    /// The fencing token Redis issued with this tenure, with fencing: the first of a
    /// block of `handoff_limit + 1`, the rest of which go to in-process handoffs.
    pub fence_base: Option<u64>,
    /// Acquisitions of this client's current turn before this tenure began (0 unless
    /// another client waited when Redis handed the lock over): in-process handoffs
    /// count on from here, so a turn stays bounded across tenures.
    pub turn_base: u32,
    /// Replicas that acknowledged its acquisition and must acknowledge an `extend`
    /// (`wait_replicas`); only a waiter that asks the same takes it over in memory.
    pub replicas: Option<Replicas>,
    /// What a read-write lock's or semaphore's tenure is: a reader or a permit
    /// (`Shared`), or a writer; a mutex's is `Exclusive`.
    pub side: Side,
    /// In-process handoffs of this tenure so far (see `Core::hand_over_locally`).
    local_handoffs: AtomicU32,
    lost: AtomicBool,
    released: AtomicBool,
    state: Mutex<LeaseState>,
    /// Held for the whole round trip of a request that sets the lease in Redis.
    requests: Mutex<()>,
    /// The watchdog's id for this tenure while it renews it (`auto_renew`).
    renewing: Mutex<Option<u64>>,
    /// Counts it in the registry as a tenure of its lock alive in this client (a
    /// mutex's), until it is dropped.
    _held_here: Option<HeldHere>,
}

#[derive(Debug)]
struct LeaseState {
    /// The lease renewals ask for: the acquisition's, or the last one `extend` set.
    lease_ms: u64,
    /// When the last request Redis confirmed was sent, and the lease it set: Redis's
    /// expiry is no earlier than `confirmed + confirmed_ms`.
    confirmed: Stamp,
    confirmed_ms: u64,
    /// After a failed renewal: when to retry, and why it failed.
    retry: Option<Instant>,
    failure: Option<String>,
}

impl Tenure {
    pub fn new(
        keys: LockKeys,
        token: String,
        lease_ms: u64,
        confirmed: Stamp,
        fence_base: Option<u64>,
        turn_base: u32,
    ) -> Tenure {
        Tenure {
            keys,
            token,
            fence_base,
            turn_base,
            replicas: None,
            side: Side::Exclusive,
            local_handoffs: AtomicU32::new(0),
            lost: AtomicBool::new(false),
            released: AtomicBool::new(false),
            state: Mutex::new(LeaseState { lease_ms, confirmed, confirmed_ms: lease_ms, retry: None, failure: None }),
            requests: Mutex::new(()),
            renewing: Mutex::new(None),
            _held_here: None,
        }
    }

    /// The tenure, counted alive in this client's registry while it lives (`mark`).
    pub fn counted(self, mark: HeldHere) -> Tenure {
        Tenure { _held_here: Some(mark), ..self }
    }

    /// The tenure of an acquisition `replicas` acknowledged (see [`Tenure::replicas`]).
    pub fn acknowledged_by(self, replicas: Option<Replicas>) -> Tenure {
        Tenure { replicas, ..self }
    }

    /// The tenure of a read-write lock's or semaphore's acquisition on `side`.
    pub fn on_side(self, side: Side) -> Tenure {
        Tenure { side, ..self }
    }

    /// Whether it may pass to another thread in memory now, after `turn` acquisitions
    /// of its client's turn (at most `limit`): not lost, renewed by the watchdog, and
    /// confirmed by Redis within its renewal period (`is_fresh`).
    pub fn may_pass_on(&self, turn: u32, limit: u32, now: Stamp) -> bool {
        turn < limit && !self.is_lost() && self.is_renewed() && self.is_fresh(now)
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the lease lost; `true` the first time (so it is counted and logged once).
    /// The first waiting thread of the lock in this client is woken: the lock may be
    /// free, and a thread queued behind this holder relies on its release to wake.
    pub fn mark_lost(&self, stats: &Counters, registry: &Registry, why: &str) -> bool {
        if self.lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        bump(&stats.leases_lost);
        log::warn!("redis-mutex: lost lock {}: {why}", self.keys.key);
        // (A read-write lock's or semaphore's waiters sleep no longer than the leases
        // they saw, and each finds out for itself.)
        if !self.keys.is_shared() {
            registry.wake_first(&self.keys.name);
        }
        true
    }

    /// Whether the guards are done with it (released, or handed back to Redis): a
    /// renewal in flight that then finds the lock gone lost nothing.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    pub fn set_released(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// The watchdog's id for this tenure: set when it starts renewing it, taken when
    /// the release stops that.
    pub fn renewing(&self) -> &Mutex<Option<u64>> {
        &self.renewing
    }

    /// Whether the watchdog renews it (only a renewed tenure is handed on in memory:
    /// the thread that takes it over relies on the renewal).
    pub fn is_renewed(&self) -> bool {
        lock(&self.renewing).is_some()
    }

    /// The request lock, if no request is in flight (see [`requests`](Self::requests)).
    pub fn try_requests(&self) -> Option<MutexGuard<'_, ()>> {
        try_lock(&self.requests)
    }

    /// Waits until no other request on this lease is in flight; hold the guard until
    /// the reply is handled.
    pub fn requests(&self) -> MutexGuard<'_, ()> {
        lock(&self.requests)
    }

    /// Redis confirmed a request sent at `sent` that set the lease to `lease_ms`.
    pub fn confirmed(&self, sent: Stamp, lease_ms: u64) {
        let mut st = lock(&self.state);
        st.confirmed = sent;
        st.confirmed_ms = lease_ms;
        st.retry = None;
        st.failure = None;
    }

    /// A request sent at `sent` that set the lease to `lease_ms` failed: Redis may have
    /// applied it anyway, so the lease may now end as early as `sent + lease_ms`.
    pub fn maybe_applied(&self, sent: Stamp, lease_ms: u64) {
        let mut st = lock(&self.state);
        let end = |at: Stamp, ms: u64| later(at.mono, Duration::from_millis(ms));
        if end(sent, lease_ms) < end(st.confirmed, st.confirmed_ms) {
            st.confirmed = sent;
            st.confirmed_ms = lease_ms;
        }
    }

    /// The server may have lost this lease (it is another one now): renew it at once,
    /// and hand it on in memory only once Redis confirmed it again.
    pub fn recheck(&self, now: Stamp) {
        lock(&self.state).retry = Some(now.mono);
    }

    /// Later renewals ask for `lease_ms` (after a successful `extend`).
    pub fn set_lease_ms(&self, lease_ms: u64) {
        lock(&self.state).lease_ms = lease_ms;
    }

    /// In-process handoffs of this tenure so far.
    pub fn local_handoffs(&self) -> u32 {
        self.local_handoffs.load(Ordering::Acquire)
    }

    /// Counts one more in-process handoff; returns how many there have been.
    pub fn count_local_handoff(&self) -> u32 {
        self.local_handoffs.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether Redis confirmed this lease less than a renewal period (a third of the
    /// lease it set) before `now`, with no renewal failed since. Past that, the lock
    /// may have been lost (lease ran out while the process stalled or the machine was
    /// suspended, Redis restarted) without the watchdog knowing yet, so it is not
    /// handed on without asking Redis. Elapsed time counts a suspend (see `clock`).
    pub fn is_fresh(&self, now: Stamp) -> bool {
        let st = lock(&self.state);
        st.retry.is_none() && st.confirmed.elapsed_at(now) < Duration::from_millis(st.confirmed_ms) / 3
    }

    /// At least how long the lease lasts in Redis from `now`: the last request Redis
    /// confirmed was sent no later than it ran, so Redis keeps the lock at least until
    /// `confirmed + confirmed_ms`. Zero once that has passed (a suspend counts).
    pub fn confirmed_remaining(&self, now: Stamp) -> Duration {
        let st = lock(&self.state);
        Duration::from_millis(st.confirmed_ms).saturating_sub(st.confirmed.elapsed_at(now))
    }

    /// The lease length renewals ask for.
    pub fn lease_ms(&self) -> u64 {
        lock(&self.state).lease_ms
    }

    /// How long from `now` until the next renewal is due, and how much earlier it may
    /// join a batch: a scheduled renewal may go half-way early, a retry after a failed
    /// one not at all (its delay is shorter than that window, so a server that fails
    /// fast would otherwise be retried in a tight loop until the lease runs out).
    pub fn schedule(&self, now: Stamp) -> (Duration, Duration) {
        let st = lock(&self.state);
        match st.retry {
            Some(at) => (at.saturating_duration_since(now.mono), Duration::ZERO),
            None => {
                let period = Duration::from_millis(st.confirmed_ms) / 3;
                (period.saturating_sub(st.confirmed.elapsed_at(now)), period / 2)
            }
        }
    }

    /// A renewal sent at `sent` failed (`why`): retry soon, or give the lease up as lost
    /// once it would have run out. `true` when lost.
    pub fn renewal_failed(
        &self,
        stats: &Counters,
        registry: &Registry,
        sent: Stamp,
        lease_ms: u64,
        why: &Error,
    ) -> bool {
        self.maybe_applied(sent, lease_ms);
        let mut st = lock(&self.state);
        if st.confirmed.elapsed_at(sent) >= Duration::from_millis(st.confirmed_ms) {
            drop(st);
            self.mark_lost(stats, registry, &format!("renewals failed until the lease ran out ({why})"));
            return true;
        }
        let step = (Duration::from_millis(lease_ms) / 10).clamp(Duration::from_millis(1), Duration::from_millis(250));
        st.retry = Some(later(sent.mono, step));
        st.failure = Some(why.to_string());
        false
    }

    /// A lease whose renewals kept failing and whose time is up by `now`: marked lost
    /// with the last failure as the cause (a renewal sent now would only find the key
    /// gone and blame "another owner"). `true` when lost.
    pub fn ran_out_unrenewed(&self, stats: &Counters, registry: &Registry, now: Stamp) -> bool {
        let st = lock(&self.state);
        let Some(failure) = st.failure.clone() else { return false };
        if st.confirmed.elapsed_at(now) < Duration::from_millis(st.confirmed_ms) {
            return false;
        }
        drop(st);
        self.mark_lost(stats, registry, &format!("renewals failed until the lease ran out ({failure})"));
        true
    }
}
