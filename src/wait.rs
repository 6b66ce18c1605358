//! The waiting protocol (DESIGN §3), independent of how Redis is deployed.
//!
//! `acquire` registers the thread as a waiter, then loops: attempt; on "held", sleep on
//! the waiter's wake-up slot for at most min(remaining lease + jitter, `max_sleep`,
//! deadline), or a jittered exponential backoff while the notifier is disconnected or
//! Redis fails. `release` hands the lock to the first local waiter when there is one
//! (one round trip, the woken thread already owns it), otherwise deletes it and wakes
//! one local waiter directly; other clients hear the release message.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::{Attempt, AttemptArgs, Backend, ReleaseArgs, Released};
use crate::clock::{Stamp, later};
use crate::error::{Error, Result};
use crate::keys::LockKeys;
use crate::orphans::Orphans;
use crate::registry::{Grant, HandoffTarget, Leave, Registry, Tenure, WaitHandle, Woken};
use crate::stats::{Counters, bump};
use crate::watchdog::Lease;

/// What every lock of one client shares for waiting.
pub(crate) struct Core {
    pub backend: Box<dyn Backend>,
    pub registry: Arc<Registry>,
    pub stats: Arc<Counters>,
    /// Whether release messages are being heard (the notifier is subscribed).
    pub notifier_up: Arc<AtomicBool>,
    /// Longest sleep between checks while the notifier is up.
    pub max_sleep: Duration,
    /// How long `lock()` (no deadline) keeps retrying through Redis errors.
    pub outage_tolerance: Duration,
    /// In-process handoffs per tenure, and handoffs per turn of this client while
    /// other clients wait (see `LockClientBuilder::handoff_limit`).
    pub handoff_limit: u32,
    /// Acquisitions whose reply was lost, to release once Redis answers again.
    pub orphans: Orphans,
}

/// A lock now held.
#[derive(Debug)]
pub(crate) struct Acquired {
    pub token: String,
    pub fence: u64,
    /// No later than the moment Redis started the lease (when the acquiring request
    /// was sent): leases are timed from here, erring early.
    pub at: Stamp,
    /// The previous holder's tenure, when it was handed over without a round trip:
    /// the guard takes over its lease and watchdog registration (and `token` is its).
    pub tenure: Option<Tenure>,
    /// Handoffs of this client's turn before this acquisition (see `Released::Handed`).
    pub turn: u32,
}

/// The settings of one acquisition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    pub lease_ms: u64,
    pub fencing: bool,
    pub auto_renew: bool,
}

pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
}

/// A uniformly random duration in `[0, max]` (xorshift; jitter needs no better).
pub(crate) fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let r = RNG.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    Duration::from_nanos(r % (nanos + 1))
}

/// Jittered exponential backoff: 2 ms doubling to 256 ms, each step drawn from
/// [step/2, step].
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(2);
    const MAX: Duration = Duration::from_millis(256);

    pub fn new() -> Self {
        Backoff { step: Self::FIRST }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(Self::MAX);
        step / 2 + jitter(step / 2)
    }
}

impl Core {
    /// One attempt, no waiting, no mark on the holder.
    pub fn try_once(&self, keys: &LockKeys, want: Want) -> Result<Option<Acquired>> {
        let token = new_token();
        bump(&self.stats.attempts);
        let at = Stamp::now();
        let args = AttemptArgs {
            token: &token,
            lease_ms: want.lease_ms,
            fence_span: self.fence_span(want.fencing),
            will_wait: false,
            deadline: None,
        };
        match self.backend.attempt(keys, args) {
            Ok(Attempt::Acquired { fence }) => {
                bump(&self.stats.acquisitions);
                log::debug!("redis-mutex: acquired {} at once", keys.key);
                Ok(Some(Acquired { token, fence, at, tenure: None, turn: 0 }))
            }
            Ok(Attempt::Held { .. } | Attempt::Reserved { .. }) => Ok(None),
            Err(e) => {
                if may_have_run(&e) {
                    self.orphans.add(keys, &token, want.lease_ms);
                }
                Err(e)
            }
        }
    }

    /// How long to sleep after finding the lock held.
    fn sleep_bound(&self, remaining: Option<Duration>, backoff: &mut Backoff) -> Duration {
        // The holder's lease is the latest moment it can matter: expiry publishes nothing.
        let lease_bound = remaining.map(|r| {
            r.saturating_add(Duration::from_millis(1)).saturating_add(jitter((r / 10).min(Duration::from_millis(50))))
        });
        if self.notifier_up.load(Ordering::Acquire) {
            lease_bound.unwrap_or(self.max_sleep).min(self.max_sleep)
        } else {
            let poll = backoff.next_delay();
            lease_bound.map_or(poll, |b| b.min(poll))
        }
    }

    /// Waits for the lock until `deadline` (`None`: no deadline). `Ok(None)` only when
    /// the deadline passed with the lock held elsewhere.
    #[cold]
    pub fn acquire(&self, keys: &LockKeys, want: Want, deadline: Option<Instant>) -> Result<Option<Acquired>> {
        let started = Instant::now();
        let token = new_token();
        let waiter = self.registry.register(
            keys.name.clone(),
            HandoffTarget {
                token: token.clone(),
                lease_ms: want.lease_ms,
                fencing: want.fencing,
                auto_renew: want.auto_renew,
            },
        );
        let mut backoff = Backoff::new();
        let mut outage_since: Option<Instant> = None;
        // Whether it had to wait (slept at least once): a contended acquisition.
        let mut slept = false;
        // Whether an attempt failed in a way that may have run it: Redis may then list
        // this token as the owner although nobody heard so.
        let mut maybe_ran = false;
        let done = |grant: Grant, tenure: Option<Tenure>, how: &str, slept: bool| {
            bump(&self.stats.acquisitions);
            if slept {
                bump(&self.stats.contended_acquisitions);
            }
            log::debug!("redis-mutex: acquired {} ({how}) after {:?}", keys.key, started.elapsed());
            let token = tenure.as_ref().map_or_else(|| token.clone(), |t| t.lease.token.clone());
            Ok(Some(Acquired { token, fence: grant.fence, at: grant.at, tenure, turn: grant.turn }))
        };
        // Leaving without the lock, unless a releaser handed it over meanwhile.
        let give_up = |waiter: WaitHandle, slept: bool, maybe_ran: bool, outcome: Result<Option<Acquired>>| {
            let maybe_owner = maybe_ran || waiter.maybe_handed();
            match waiter.leave_with_tenure() {
                (Leave::Granted(grant), tenure) => done(grant, tenure, "handed", slept),
                (Leave::Left, _) => {
                    if maybe_owner {
                        self.orphans.add(keys, &token, want.lease_ms);
                    }
                    if matches!(outcome, Ok(None)) {
                        self.leave_queue(keys);
                    }
                    outcome
                }
            }
        };
        loop {
            if let Some(grant) = waiter.granted() {
                return done(grant, waiter.take_tenure(), "handed", slept);
            }
            // Behind another waiter of this client, an attempt can only fail: the lock
            // reaches us by handoff from the waiters ahead, and the first of them
            // wakes us if it leaves. So only the first waiter talks to Redis. The flag
            // goes up before the check, so a first waiter leaving in between sees it.
            waiter.rely_on_first(true);
            let (bound, failure) = if !waiter.is_first() {
                // Every way forward from here wakes us (a grant, the first leaving), so
                // no polling, even while the notifier is down.
                (self.max_sleep, None)
            } else {
                waiter.rely_on_first(false);
                bump(&self.stats.attempts);
                let args = AttemptArgs {
                    token: &token,
                    lease_ms: want.lease_ms,
                    fence_span: self.fence_span(want.fencing),
                    will_wait: true,
                    deadline,
                };
                let sent = Stamp::now();
                match self.backend.attempt(keys, args) {
                    Ok(Attempt::Acquired { fence }) => {
                        waiter.finish();
                        return done(Grant { fence, at: sent, turn: 0 }, None, "attempt", slept);
                    }
                    // Held, or reserved for another client: this client is queued in
                    // the lock now, and is told when its turn comes (or re-checks
                    // when the holder's lease or the reservation would end).
                    Ok(Attempt::Held { remaining } | Attempt::Reserved { remaining }) => {
                        outage_since = None;
                        (self.sleep_bound(remaining, &mut backoff), None)
                    }
                    Err(e) if e.is_transient() => {
                        maybe_ran |= may_have_run(&e);
                        let since = *outage_since.get_or_insert_with(Instant::now);
                        if deadline.is_none() && since.elapsed() >= self.outage_tolerance {
                            return give_up(waiter, slept, maybe_ran, Err(e));
                        }
                        log::debug!("redis-mutex: attempt on {} failed, will retry: {e}", keys.key);
                        (backoff.next_delay(), Some(e))
                    }
                    Err(e) => {
                        maybe_ran |= may_have_run(&e);
                        return give_up(waiter, slept, maybe_ran, Err(e));
                    }
                }
            };
            let now = Instant::now();
            let mut until = later(now, bound);
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return give_up(waiter, slept, maybe_ran, failure.map_or(Ok(None), Err));
                }
                until = until.min(deadline);
            }
            slept = true;
            match waiter.sleep_until(until) {
                Woken::Notified => {
                    bump(&self.stats.wakeups_notified);
                    log::trace!("redis-mutex: waiter on {} woken by notification", keys.key);
                }
                Woken::TimedOut => {
                    bump(&self.stats.wakeups_timeout);
                    log::trace!("redis-mutex: waiter on {} woken by timeout", keys.key);
                }
            }
        }
    }

    /// The last local waiter of `keys` gave up: unless another has come meanwhile, this
    /// client leaves the lock's queue of waiting clients (passing on a reservation made
    /// for it). A waiter that came meanwhile is woken to queue again.
    pub fn leave_queue(&self, keys: &LockKeys) {
        if self.registry.waiting(&keys.name) > 0 {
            return;
        }
        if let Err(e) = self.backend.leave(keys) {
            // Then a reservation for this client goes unused until it ends; the others'
            // sleeps are bounded by the lease.
            log::debug!("redis-mutex: could not leave the queue of {}: {e}", keys.key);
        }
        self.registry.notify(&keys.name);
    }

    /// The fencing tokens one acquisition through Redis takes (0 without fencing): its
    /// own, and one for each in-process handoff of its tenure. Tokens still rise
    /// strictly in the order the lock is granted: every later acquisition through
    /// Redis takes its block above this one.
    fn fence_span(&self, fencing: bool) -> u64 {
        if fencing { u64::from(self.handoff_limit) + 1 } else { 0 }
    }

    /// Hands the lock `lease` holds to the first waiting thread of this client without
    /// a round trip: the lock stays this client's in Redis under the same token, and the
    /// waiter takes over the lease and its renewal (`renewing`). Only
    /// - between acquisitions alike (same lease and fencing, renewed by the watchdog);
    /// - while Redis confirmed the lease within its renewal period (`Lease::is_fresh`):
    ///   a process that stalled past its lease, or lost touch with Redis, asks Redis
    ///   before anyone else relies on the lock;
    /// - at most `handoff_limit` times per tenure, and per turn of this client counted
    ///   on from the tenure's `turn_base`: then a release through Redis notices a lost
    ///   lock and lets a queued client have its turn.
    ///
    /// With fencing, the k-th handoff gets the tenure's fencing token + k, from the
    /// block its acquisition took (see `fence_span`). `false` when it did not hand over
    /// (the caller then releases through Redis).
    pub fn hand_over_locally(&self, keys: &LockKeys, lease: &Arc<Lease>, renewing: u64) -> bool {
        let turn = lease.turn_base.saturating_add(lease.local_handoffs());
        if turn >= self.handoff_limit || lease.is_lost() || !lease.is_fresh(Stamp::now()) {
            return false;
        }
        let Some(claim) = self.registry.claim_first(&keys.name) else { return false };
        let t = claim.target();
        if t.fencing != lease.fence_base.is_some() || !t.auto_renew || t.lease_ms != lease.lease_ms() {
            return false;
        }
        let k = lease.count_local_handoff();
        let fence = lease.fence_base.map_or(0, |base| base + u64::from(k));
        claim.grant_tenure(Tenure { lease: lease.clone(), renewing }, fence);
        bump(&self.stats.releases);
        bump(&self.stats.handoffs);
        bump(&self.stats.local_handoffs);
        log::trace!("redis-mutex: handed {} to a waiting thread, keeping the tenure", keys.key);
        true
    }

    /// Releases the lock `token` holds (its lease `lease_ms`), handing it to a waiting
    /// thread of this client when there is one and no other client's turn has come.
    /// `local_handoffs`: the in-process handoffs of the releasing tenure, which count
    /// towards this client's turn.
    pub fn release(&self, keys: &LockKeys, token: &str, lease_ms: u64, local_handoffs: u32) -> Result<()> {
        self.release_through_redis(keys, token, lease_ms, local_handoffs)?;
        bump(&self.stats.releases);
        Ok(())
    }

    fn release_through_redis(&self, keys: &LockKeys, token: &str, lease_ms: u64, local_handoffs: u32) -> Result<()> {
        let claim = self.registry.claim_first(&keys.name);
        let sent = Stamp::now();
        let args = ReleaseArgs {
            token,
            lease_ms,
            local_handoffs,
            limit: self.handoff_limit,
            fence_span: self.fence_span(true),
            handoff: claim.as_ref().map(|c| c.target()),
        };
        match self.backend.release(keys, args) {
            Ok(Released::Handed { fence, turn }) => {
                bump(&self.stats.handoffs);
                if let Some(claim) = claim {
                    claim.grant(Grant { fence, at: sent, turn });
                }
                log::debug!("redis-mutex: handed {} to a waiting thread", keys.key);
                Ok(())
            }
            Ok(Released::Passed) => {
                // The next client in the queue was told to take it. With a claim, the
                // script queued this client behind the others: its turn is announced the
                // same way. Without one, a waiter that registered after `claim_first`
                // (expecting a handoff, so not queued) must attempt, to queue.
                if claim.is_none() {
                    self.registry.notify(&keys.name);
                }
                log::debug!("redis-mutex: passed {} to the next waiting client", keys.key);
                Ok(())
            }
            Ok(Released::Deleted) => {
                drop(claim);
                // A waiter that registered after the claim found nobody attempts now.
                self.registry.notify(&keys.name);
                log::debug!("redis-mutex: released {}", keys.key);
                Ok(())
            }
            Ok(Released::NotOwner) => {
                drop(claim);
                self.registry.notify(&keys.name);
                Err(Error::LockLost { key: keys.key.clone() })
            }
            Err(e) => {
                if let Some(claim) = claim {
                    // Redis may have handed it the lock all the same: if it gives up
                    // without asking Redis again, its token is released as an orphan.
                    claim.maybe_handed();
                }
                self.registry.notify(&keys.name);
                Err(e)
            }
        }
    }

    /// Sets `lease` to `lease_ms` from now, if its token still owns the lock. One
    /// request at a time per lease (a renewal in flight is waited for), so that no
    /// late reply can make the client believe in a longer lease than Redis was last
    /// told.
    pub fn extend(&self, lease: &Lease, lease_ms: u64) -> Result<()> {
        let _one_at_a_time = lease.requests();
        if lease.is_lost() {
            return Err(Error::LockLost { key: lease.keys.key.clone() });
        }
        let sent = Stamp::now();
        let reply = self.backend.extend(&[(&lease.keys, &lease.token, lease_ms)]);
        match reply.map(|r| r.into_iter().next().unwrap_or(Ok(false))) {
            Ok(Ok(true)) => {
                lease.set_lease_ms(lease_ms);
                lease.confirmed(sent, lease_ms);
                Ok(())
            }
            Ok(Ok(false)) => {
                lease.mark_lost(self, "extend found another owner or no lock");
                Err(Error::LockLost { key: lease.keys.key.clone() })
            }
            Ok(Err(Error::WrongType { .. })) => {
                lease.mark_lost(self, "extend found a value of another type where the lock was");
                Err(Error::LockLost { key: lease.keys.key.clone() })
            }
            Ok(Err(e)) | Err(e) => {
                lease.maybe_applied(sent, lease_ms);
                Err(e)
            }
        }
    }

    /// Releases the acquisitions whose reply was lost and whose time has come (see
    /// `Orphans`). Returns when the next one is due.
    pub fn release_orphans(&self) -> Option<Instant> {
        for mut orphan in self.orphans.due(Instant::now()) {
            match self.release_through_redis(&orphan.keys, &orphan.token, orphan.lease_ms, 0) {
                Ok(()) => {
                    bump(&self.stats.orphans_released);
                    log::info!("redis-mutex: released {}, acquired by a request whose reply was lost", orphan.keys.key);
                }
                // Never acquired, or its lease ran out: nothing to do.
                Err(Error::LockLost { .. }) => {}
                Err(e) if e.is_transient() && orphan.retry(Instant::now()) => self.orphans.put_back(orphan),
                Err(e) => log::debug!("redis-mutex: gave up releasing {} after a lost reply: {e}", orphan.keys.key),
            }
        }
        self.orphans.next_due()
    }
}

/// Whether a failed request may have reached Redis and run: an error on a connection
/// that was open (a timeout, a reset), as opposed to a refused connection or a refusal
/// by the server.
fn may_have_run(e: &Error) -> bool {
    matches!(e, Error::Connection(e) if !e.is_connection_refusal())
}

#[cfg(test)]
pub(crate) mod tests {
    //! The protocol against an in-memory backend: no server needed.
    use super::*;
    use crate::backend::Holder;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    struct Lock {
        owner: String,
        expires: Instant,
        waited: bool,
        handoffs: u32,
    }

    /// Redis's side of the scripts, in memory, for one client.
    #[derive(Default)]
    pub(crate) struct MemBackend {
        locks: Mutex<HashMap<String, Lock>>,
        fences: Mutex<HashMap<String, u64>>,
        /// Fail this many attempts with a connection error first.
        pub fail_attempts: AtomicU32,
    }

    fn conn_error() -> Error {
        Error::Connection(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down")))
    }

    impl Backend for MemBackend {
        fn attempt(&self, keys: &LockKeys, a: AttemptArgs<'_>) -> Result<Attempt> {
            if self.fail_attempts.load(Ordering::SeqCst) > 0 {
                self.fail_attempts.fetch_sub(1, Ordering::SeqCst);
                return Err(conn_error());
            }
            let mut locks = self.locks.lock().unwrap();
            let now = Instant::now();
            if let Some(l) = locks.get_mut(&keys.key).filter(|l| l.expires > now) {
                if l.owner == a.token {
                    return Ok(Attempt::Acquired { fence: 0 });
                }
                l.waited |= a.will_wait;
                return Ok(Attempt::Held { remaining: Some(l.expires - now) });
            }
            let fence = if a.fence_span > 0 {
                let mut f = self.fences.lock().unwrap();
                let v = f.entry(keys.key.clone()).or_default();
                *v += a.fence_span;
                *v - a.fence_span + 1
            } else {
                0
            };
            let expires = now + Duration::from_millis(a.lease_ms);
            locks.insert(keys.key.clone(), Lock { owner: a.token.into(), expires, waited: false, handoffs: 0 });
            Ok(Attempt::Acquired { fence })
        }

        fn release(&self, keys: &LockKeys, a: ReleaseArgs<'_>) -> Result<Released> {
            let mut locks = self.locks.lock().unwrap();
            match locks.get_mut(&keys.key) {
                Some(l) if l.owner == a.token && l.expires > Instant::now() => {
                    // One client: nobody else waits, so there is no turn to count.
                    if let Some(t) = a.handoff {
                        l.owner = t.token.clone();
                        l.expires = Instant::now() + Duration::from_millis(t.lease_ms);
                        l.handoffs += 1;
                        let mut fence = 0;
                        if t.fencing {
                            let mut f = self.fences.lock().unwrap();
                            let v = f.entry(keys.key.clone()).or_default();
                            *v += a.fence_span;
                            fence = *v - a.fence_span + 1;
                        }
                        return Ok(Released::Handed { fence, turn: 0 });
                    }
                    locks.remove(&keys.key);
                    Ok(Released::Deleted)
                }
                _ => Ok(Released::NotOwner),
            }
        }

        fn extend(&self, items: &[(&LockKeys, &str, u64)]) -> Result<Vec<Result<bool>>> {
            let mut locks = self.locks.lock().unwrap();
            Ok(items
                .iter()
                .map(|(k, t, ms)| match locks.get_mut(&k.key) {
                    Some(l) if l.owner == *t && l.expires > Instant::now() => {
                        l.expires = Instant::now() + Duration::from_millis(*ms);
                        Ok(true)
                    }
                    _ => Ok(false),
                })
                .collect())
        }

        fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
            let locks = self.locks.lock().unwrap();
            Ok(locks.get(&keys.key).filter(|l| l.expires > Instant::now()).map(|l| Holder {
                token: l.owner.clone(),
                remaining_lease: Some(l.expires - Instant::now()),
                contended: l.waited,
            }))
        }

        fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
            Ok(self.locks.lock().unwrap().remove(&keys.key).is_some())
        }

        fn leave(&self, _: &LockKeys) -> Result<()> {
            Ok(())
        }
    }

    pub(crate) fn mem_core(backend: impl Backend) -> Core {
        Core {
            backend: Box::new(backend),
            registry: Registry::new(),
            stats: Arc::new(Counters::default()),
            notifier_up: Arc::new(AtomicBool::new(true)),
            max_sleep: Duration::from_secs(60),
            outage_tolerance: Duration::from_millis(300),
            handoff_limit: 8,
            orphans: Orphans::default(),
        }
    }

    pub(crate) const WANT: Want = Want { lease_ms: 60_000, fencing: false, auto_renew: true };

    pub(crate) fn keys() -> LockKeys {
        LockKeys::new("t", "job").unwrap()
    }

    #[test]
    fn jitter_and_backoff_stay_in_bounds() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_millis(5)) <= Duration::from_millis(5));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(1) && delays[0] <= Duration::from_millis(2));
        assert!(delays.iter().all(|d| *d <= Backoff::MAX));
        assert!(delays[11] >= Backoff::MAX / 2);
    }

    #[test]
    fn try_once_does_not_wait() {
        let core = mem_core(MemBackend::default());
        let a = core.try_once(&keys(), WANT).unwrap().unwrap();
        assert!(core.try_once(&keys(), WANT).unwrap().is_none());
        core.release(&keys(), &a.token, WANT.lease_ms, 0).unwrap();
        assert!(core.try_once(&keys(), WANT).unwrap().is_some());
    }

    #[test]
    fn a_release_hands_the_lock_to_the_waiting_thread() {
        let core = Arc::new(mem_core(MemBackend::default()));
        let first = core.try_once(&keys(), WANT).unwrap().unwrap();
        let c = core.clone();
        let waiter = std::thread::spawn(move || c.acquire(&keys(), WANT, None).unwrap().unwrap());
        while core.registry.waiting("job") == 0 {
            std::thread::yield_now();
        }
        // Let the waiter's attempt fail and put it to sleep on its slot.
        while core.stats.attempts.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        core.release(&keys(), &first.token, WANT.lease_ms, 0).unwrap();
        let second = waiter.join().unwrap();
        let s = core.stats.snapshot();
        assert_eq!(s.handoffs, 1);
        assert_eq!(s.wakeups_timeout, 0, "woken by the handoff, not by its 60 s lease bound");
        assert_eq!(core.backend.holder(&keys()).unwrap().unwrap().token, second.token);
    }

    #[test]
    fn threads_of_one_client_share_the_lock_fairly() {
        let core = Arc::new(mem_core(MemBackend::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (core, stop) = (core.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let g = core.acquire(&keys(), WANT, None).unwrap().unwrap();
                        n += 1;
                        core.release(&keys(), &g.token, WANT.lease_ms, 0).unwrap();
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let counts: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let total: u32 = counts.iter().sum();
        assert!(total > 100, "{counts:?}");
        // Under heavy load a lone runnable thread may re-take a lock nobody waits for
        // yet; FIFO handoff still keeps every thread well above starvation.
        for c in &counts {
            assert!(*c * 20 >= total, "a thread got under 5% of {total}: {counts:?}");
        }
    }

    #[test]
    fn a_deadline_gives_none_in_time() {
        let core = mem_core(MemBackend::default());
        let _held = core.try_once(&keys(), WANT).unwrap().unwrap();
        let t = Instant::now();
        let got = core.acquire(&keys(), WANT, Some(t + Duration::from_millis(100))).unwrap();
        assert!(got.is_none());
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(350), "{waited:?}");
        assert_eq!(core.registry.waiting("job"), 0);
    }

    #[test]
    fn an_expired_holder_is_outwaited_without_notification() {
        let core = mem_core(MemBackend::default());
        core.try_once(&keys(), Want { lease_ms: 50, fencing: false, auto_renew: true }).unwrap().unwrap();
        let t = Instant::now();
        assert!(core.acquire(&keys(), WANT, None).unwrap().is_some());
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        assert!(core.stats.snapshot().wakeups_timeout >= 1);
    }

    #[test]
    fn outages_are_retried_then_reported() {
        let backend = MemBackend::default();
        backend.fail_attempts.store(3, Ordering::SeqCst);
        let core = mem_core(backend);
        assert!(core.acquire(&keys(), WANT, None).unwrap().is_some(), "recovers within tolerance");

        let backend = MemBackend::default();
        backend.fail_attempts.store(u32::MAX, Ordering::SeqCst);
        let core = mem_core(backend);
        let t = Instant::now();
        let err = core.acquire(&keys(), WANT, None).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(t.elapsed() >= Duration::from_millis(300), "gave up after the tolerance");
        let t = Instant::now();
        let err = core.acquire(&keys(), WANT, Some(t + Duration::from_millis(100))).unwrap_err();
        assert!(err.is_transient());
        assert!(t.elapsed() < Duration::from_millis(300), "a deadline ends retries: {:?}", t.elapsed());
        assert_eq!(core.registry.waiting("job"), 0);
    }

    /// The tenure of `a`, as a guard holds it (confirmed `age` ago).
    pub(crate) fn tenure_of(a: &Acquired, want: Want, age: Duration) -> Arc<Lease> {
        let fence = want.fencing.then_some(a.fence);
        let mut at = Stamp::now();
        at.mono -= age;
        at.wall -= age;
        Arc::new(Lease::new(keys(), a.token.clone(), want.lease_ms, at, fence, 0))
    }

    /// A thread waiting (asleep, after its failed attempt) for the lock with `want`.
    fn waiting_thread(core: &Arc<Core>, want: Want) -> std::thread::JoinHandle<Option<Acquired>> {
        let attempts = core.stats.attempts.load(Ordering::SeqCst);
        let c = core.clone();
        let t = std::thread::spawn(move || c.acquire(&keys(), want, None).unwrap());
        while core.stats.attempts.load(Ordering::SeqCst) == attempts || core.registry.waiting("job") == 0 {
            std::thread::yield_now();
        }
        t
    }

    #[test]
    fn a_local_handoff_passes_the_tenure_without_asking_the_backend() {
        let core = Arc::new(mem_core(MemBackend::default()));
        let first = core.try_once(&keys(), WANT).unwrap().unwrap();
        let lease = tenure_of(&first, WANT, Duration::ZERO);
        let waiter = waiting_thread(&core, WANT);
        let attempts = core.stats.attempts.load(Ordering::SeqCst);
        assert!(core.hand_over_locally(&keys(), &lease, 7));
        let second = waiter.join().unwrap().expect("handed over");
        let tenure = second.tenure.expect("the tenure came with it");
        assert!(Arc::ptr_eq(&tenure.lease, &lease), "the same lease, renewed by the same watchdog entry");
        assert_eq!(tenure.renewing, 7);
        assert_eq!(second.token, first.token, "Redis still lists the tenure's token");
        assert_eq!(core.backend.holder(&keys()).unwrap().unwrap().token, first.token);
        let s = core.stats.snapshot();
        assert_eq!((s.local_handoffs, s.handoffs, s.releases), (1, 1, 1));
        assert_eq!(s.attempts, attempts, "no attempt after the handoff");
        assert_eq!(s.wakeups_timeout, 0);
        assert_eq!(lease.local_handoffs(), 1);
    }

    #[test]
    fn local_handoffs_stop_at_the_limit() {
        let core = Arc::new(mem_core(MemBackend::default()));
        let first = core.try_once(&keys(), WANT).unwrap().unwrap();
        let lease = tenure_of(&first, WANT, Duration::ZERO);
        for _ in 0..core.handoff_limit {
            let waiter = waiting_thread(&core, WANT);
            assert!(core.hand_over_locally(&keys(), &lease, 0));
            assert!(waiter.join().unwrap().unwrap().tenure.is_some());
        }
        let waiter = waiting_thread(&core, WANT);
        assert!(!core.hand_over_locally(&keys(), &lease, 0), "the limit sends the next release to Redis");
        assert_eq!(core.registry.waiting("job"), 1, "the waiter is queued again, unharmed");
        core.release(&keys(), &first.token, WANT.lease_ms, core.handoff_limit).unwrap();
        let last = waiter.join().unwrap().unwrap();
        assert!(last.tenure.is_none(), "a handoff through the backend starts a new tenure");
        assert_ne!(last.token, first.token);
    }

    #[test]
    fn a_lease_not_confirmed_lately_is_not_handed_on() {
        let core = Arc::new(mem_core(MemBackend::default()));
        let first = core.try_once(&keys(), WANT).unwrap().unwrap();
        // Confirmed a renewal period ago: the process may have stalled past its lease,
        // or Redis may have forgotten it, without the watchdog knowing yet.
        let stale = tenure_of(&first, WANT, Duration::from_millis(WANT.lease_ms / 3));
        let waiter = waiting_thread(&core, WANT);
        assert!(!core.hand_over_locally(&keys(), &stale, 0));
        let lost = tenure_of(&first, WANT, Duration::ZERO);
        lost.mark_lost(&core, "test");
        assert!(!core.hand_over_locally(&keys(), &lost, 0));
        assert_eq!(core.stats.snapshot().local_handoffs, 0);
        core.release(&keys(), &first.token, WANT.lease_ms, 0).unwrap();
        assert!(waiter.join().unwrap().unwrap().tenure.is_none());
    }

    #[test]
    fn only_acquisitions_alike_share_a_tenure() {
        let core = Arc::new(mem_core(MemBackend::default()));
        for other in
            [Want { lease_ms: 1_000, ..WANT }, Want { fencing: true, ..WANT }, Want { auto_renew: false, ..WANT }]
        {
            let holder = core.try_once(&keys(), WANT).unwrap().unwrap();
            let lease = tenure_of(&holder, WANT, Duration::ZERO);
            let waiter = waiting_thread(&core, other);
            assert!(!core.hand_over_locally(&keys(), &lease, 0), "{other:?}");
            core.release(&keys(), &holder.token, WANT.lease_ms, 0).unwrap();
            let g = waiter.join().unwrap().unwrap();
            assert!(g.tenure.is_none(), "{other:?}: its own tenure, through the backend");
            core.release(&keys(), &g.token, other.lease_ms, 0).unwrap();
        }
        assert_eq!(core.stats.snapshot().local_handoffs, 0);
    }

    #[test]
    fn fencing_tokens_of_local_handoffs_rise_inside_their_block() {
        let core = Arc::new(mem_core(MemBackend::default()));
        let fenced = Want { fencing: true, ..WANT };
        let first = core.try_once(&keys(), fenced).unwrap().unwrap();
        assert_eq!(first.fence, 1);
        let lease = tenure_of(&first, fenced, Duration::ZERO);
        let mut fences = vec![first.fence];
        for _ in 0..core.handoff_limit {
            let waiter = waiting_thread(&core, fenced);
            assert!(core.hand_over_locally(&keys(), &lease, 0));
            fences.push(waiter.join().unwrap().unwrap().fence);
        }
        core.release(&keys(), &first.token, fenced.lease_ms, core.handoff_limit).unwrap();
        let next = core.try_once(&keys(), fenced).unwrap().unwrap();
        fences.push(next.fence);
        let span = u64::from(core.handoff_limit) + 1;
        assert_eq!(fences, (1..=span + 1).collect::<Vec<_>>(), "the next acquisition starts the next block");
    }

    #[test]
    fn releasing_a_lock_no_longer_owned_reports_lock_lost() {
        let core = mem_core(MemBackend::default());
        let a = core.try_once(&keys(), WANT).unwrap().unwrap();
        core.backend.force_unlock(&keys()).unwrap();
        assert!(core.release(&keys(), &a.token, WANT.lease_ms, 0).unwrap_err().is_lock_lost());
    }
}
