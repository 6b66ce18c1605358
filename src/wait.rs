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

use crate::backend::{Attempt, AttemptArgs, Backend, Released};
use crate::error::{Error, Result};
use crate::keys::LockKeys;
use crate::registry::{HandoffTarget, Leave, Registry, WaitHandle, Woken};
use crate::stats::{Counters, bump};

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
}

/// A lock now held.
#[derive(Debug)]
pub(crate) struct Acquired {
    pub token: String,
    pub fence: u64,
    /// No later than the moment Redis started the lease (when the acquiring request
    /// was sent): leases are timed from here, erring early.
    pub at: Instant,
}

/// The settings of one acquisition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    pub lease_ms: u64,
    pub fencing: bool,
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
        let at = Instant::now();
        let args = AttemptArgs {
            token: &token,
            lease_ms: want.lease_ms,
            fencing: want.fencing,
            will_wait: false,
            deadline: None,
        };
        match self.backend.attempt(keys, args)? {
            Attempt::Acquired { fence } => {
                bump(&self.stats.acquisitions);
                log::debug!("redis-mutex: acquired {} at once", keys.key);
                Ok(Some(Acquired { token, fence, at }))
            }
            Attempt::Held { .. } | Attempt::Reserved { .. } => Ok(None),
        }
    }

    /// How long to sleep after finding the lock held.
    fn sleep_bound(&self, remaining: Option<Duration>, backoff: &mut Backoff) -> Duration {
        // The holder's lease is the latest moment it can matter: expiry publishes nothing.
        let lease_bound =
            remaining.map(|r| r + Duration::from_millis(1) + jitter((r / 10).min(Duration::from_millis(50))));
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
            HandoffTarget { token: token.clone(), lease_ms: want.lease_ms, fencing: want.fencing },
        );
        let mut backoff = Backoff::new();
        let mut outage_since: Option<Instant> = None;
        // Whether it had to wait (slept at least once): a contended acquisition.
        let mut slept = false;
        let done = |fence: u64, at: Instant, how: &str, slept: bool| {
            bump(&self.stats.acquisitions);
            if slept {
                bump(&self.stats.contended_acquisitions);
            }
            log::debug!("redis-mutex: acquired {} ({how}) after {:?}", keys.key, started.elapsed());
            Ok(Some(Acquired { token: token.clone(), fence, at }))
        };
        // Leaving without the lock, unless a releaser handed it over meanwhile.
        let give_up = |waiter: WaitHandle, slept: bool, outcome: Result<Option<Acquired>>| match waiter.leave() {
            Leave::Granted((fence, at)) => done(fence, at, "handed", slept),
            Leave::Left => {
                if matches!(outcome, Ok(None)) {
                    self.leave_queue(keys);
                }
                outcome
            }
        };
        loop {
            if let Some((fence, at)) = waiter.granted() {
                return done(fence, at, "handed", slept);
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
                    fencing: want.fencing,
                    will_wait: true,
                    deadline,
                };
                let sent = Instant::now();
                match self.backend.attempt(keys, args) {
                    Ok(Attempt::Acquired { fence }) => {
                        waiter.finish();
                        return done(fence, sent, "attempt", slept);
                    }
                    // Held, or reserved for another client: this client is queued in
                    // the lock now, and is told when its turn comes (or re-checks
                    // when the holder's lease or the reservation would end).
                    Ok(Attempt::Held { remaining } | Attempt::Reserved { remaining }) => {
                        outage_since = None;
                        (self.sleep_bound(remaining, &mut backoff), None)
                    }
                    Err(e) if e.is_transient() => {
                        let since = *outage_since.get_or_insert_with(Instant::now);
                        if deadline.is_none() && since.elapsed() >= self.outage_tolerance {
                            return give_up(waiter, slept, Err(e));
                        }
                        log::debug!("redis-mutex: attempt on {} failed, will retry: {e}", keys.key);
                        (backoff.next_delay(), Some(e))
                    }
                    Err(e) => return give_up(waiter, slept, Err(e)),
                }
            };
            let now = Instant::now();
            let mut until = now + bound;
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return give_up(waiter, slept, failure.map_or(Ok(None), Err));
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

    /// Releases the lock `token` holds (its lease `lease_ms`), handing it to a waiting
    /// thread of this client when there is one and no other client's turn has come.
    pub fn release(&self, keys: &LockKeys, token: &str, lease_ms: u64) -> Result<()> {
        let claim = self.registry.claim_first(&keys.name);
        let sent = Instant::now();
        let outcome = self.backend.release(keys, token, lease_ms, claim.as_ref().map(|c| c.target()));
        match outcome {
            Ok(Released::Handed { fence }) => {
                bump(&self.stats.releases);
                bump(&self.stats.handoffs);
                if let Some(claim) = claim {
                    claim.grant(fence, sent);
                }
                log::debug!("redis-mutex: handed {} to a waiting thread", keys.key);
                Ok(())
            }
            Ok(Released::Passed) => {
                // The next client in the queue was told to take it. With a claim, the
                // script queued this client behind the others: its turn is announced the
                // same way. Without one, a waiter that registered after `claim_first`
                // (expecting a handoff, so not queued) must attempt, to queue.
                bump(&self.stats.releases);
                if claim.is_none() {
                    self.registry.notify(&keys.name);
                }
                log::debug!("redis-mutex: passed {} to the next waiting client", keys.key);
                Ok(())
            }
            Ok(Released::Deleted) => {
                bump(&self.stats.releases);
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
                drop(claim);
                self.registry.notify(&keys.name);
                Err(e)
            }
        }
    }
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
            let fence = if a.fencing {
                let mut f = self.fences.lock().unwrap();
                let v = f.entry(keys.key.clone()).or_default();
                *v += 1;
                *v
            } else {
                0
            };
            let expires = now + Duration::from_millis(a.lease_ms);
            locks.insert(keys.key.clone(), Lock { owner: a.token.into(), expires, waited: false, handoffs: 0 });
            Ok(Attempt::Acquired { fence })
        }

        fn release(&self, keys: &LockKeys, token: &str, _: u64, handoff: Option<&HandoffTarget>) -> Result<Released> {
            let mut locks = self.locks.lock().unwrap();
            match locks.get_mut(&keys.key) {
                Some(l) if l.owner == token && l.expires > Instant::now() => {
                    if let Some(t) = handoff {
                        l.owner = t.token.clone();
                        l.expires = Instant::now() + Duration::from_millis(t.lease_ms);
                        l.handoffs += 1;
                        return Ok(Released::Handed { fence: 0 });
                    }
                    locks.remove(&keys.key);
                    Ok(Released::Deleted)
                }
                _ => Ok(Released::NotOwner),
            }
        }

        fn extend(&self, items: &[(&LockKeys, &str, u64)]) -> Result<Vec<bool>> {
            let mut locks = self.locks.lock().unwrap();
            Ok(items
                .iter()
                .map(|(k, t, ms)| match locks.get_mut(&k.key) {
                    Some(l) if l.owner == *t && l.expires > Instant::now() => {
                        l.expires = Instant::now() + Duration::from_millis(*ms);
                        true
                    }
                    _ => false,
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

    pub(crate) fn mem_core(backend: MemBackend) -> Core {
        Core {
            backend: Box::new(backend),
            registry: Registry::new(),
            stats: Arc::new(Counters::default()),
            notifier_up: Arc::new(AtomicBool::new(true)),
            max_sleep: Duration::from_secs(60),
            outage_tolerance: Duration::from_millis(300),
        }
    }

    const WANT: Want = Want { lease_ms: 60_000, fencing: false };

    fn keys() -> LockKeys {
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
        core.release(&keys(), &a.token, WANT.lease_ms).unwrap();
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
        core.release(&keys(), &first.token, WANT.lease_ms).unwrap();
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
                        core.release(&keys(), &g.token, WANT.lease_ms).unwrap();
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
        core.try_once(&keys(), Want { lease_ms: 50, fencing: false }).unwrap().unwrap();
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

    #[test]
    fn releasing_a_lock_no_longer_owned_reports_lock_lost() {
        let core = mem_core(MemBackend::default());
        let a = core.try_once(&keys(), WANT).unwrap().unwrap();
        core.backend.force_unlock(&keys()).unwrap();
        assert!(core.release(&keys(), &a.token, WANT.lease_ms).unwrap_err().is_lock_lost());
    }
}
