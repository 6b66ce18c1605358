//! Waiting for read-write locks and semaphores, on the same machinery as the mutex:
//! leases renewed by the watchdog, lost-lease detection, waiters that sleep on a
//! wake-up slot until a message or the shortest lease they saw, polling only while
//! release messages are not heard, no spinning.
//!
//! What differs from the mutex, and why: each waiting *thread* is its own entry in the
//! lock's FIFO queue in Redis, under the token it will hold the lock with (a mutex
//! queues clients, and hands the lock on inside a client). Readers and permits are
//! held by many tokens at once, so there is no tenure to hand over in memory; every
//! acquisition and release goes through Redis, and the queue order is the order of
//! first attempts across the fleet. A release grants the lock to the waiters at the
//! head of the queue that it lets in (see `backend::shared`), and their threads
//! return without a request of their own when the grant is fresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::deadline::{Deadline, Forever};
use super::orphans::Orphans;
use super::registry::{Registry, Woken};
use super::{Core, Hold, Tenure, may_have_run, new_token};
use crate::backend::{Backend, LocalGrants, SharedArgs, SharedAttempt, SharedBackend, SharedLeave, Side};
use crate::backoff::Backoff;
use crate::clock::{Stamp, later};
use crate::error::{Error, Result};
use crate::keys::{Kind, LockKeys};
use crate::options::MAX_LEASE;
use crate::stats::bump;

/// What one acquisition of a read-write lock or semaphore asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedWant {
    pub side: Side,
    /// A semaphore's permit count; 0 for a read-write lock.
    pub permits: u32,
    pub lease_ms: u64,
    pub auto_renew: bool,
}

/// The backend's read-write locks and semaphores, or why it has none.
pub(super) fn shared_of(backend: &dyn Backend) -> Result<&dyn SharedBackend> {
    backend.shared().map_err(|reason| Error::Unsupported { what: "read-write locks and semaphores", reason })
}

/// Hands out what a request granted to threads of this client (not announced on its
/// channel, see `LocalGrants`), and after a failed request that may have run, wakes
/// every thread of the client waiting for the lock, so that each finds out by its next
/// attempt. A grant to a token no thread waits under any more (its thread gave up and
/// could not leave the queue) is released as an orphan.
pub(super) fn hand_out<T>(
    registry: &Registry,
    orphans: &Orphans,
    keys: &LockKeys,
    outcome: Result<(T, LocalGrants)>,
) -> Result<T> {
    match outcome {
        Ok((value, grants)) => {
            for token in grants.tokens {
                if !registry.tickets().grant(&token, grants.lease_ms) {
                    orphans.add(keys, &token, grants.lease_ms);
                }
            }
            Ok(value)
        }
        Err(e) => {
            if may_have_run(&e) {
                registry.tickets().wake_key(&keys.key);
            }
            Err(e)
        }
    }
}

/// Whether `tenure` (a reader, writer or permit) still holds its lock in Redis.
pub(super) fn still_holds(backend: &dyn Backend, tenure: &Tenure) -> Result<bool> {
    shared_of(backend)?.holds(&tenure.keys, &tenure.token)
}

impl Core {
    /// How long a waiter's queue entry lasts without another attempt: longer than it
    /// sleeps between attempts (`max_sleep`), with room for slow round trips. A waiter
    /// that vanished leaves the queue by itself after that; when it reaches the head
    /// before, the grant to it runs out after `reservation_timeout`.
    fn entry_ms(&self) -> u64 {
        let sleep = self.settings.max_sleep.min(MAX_LEASE);
        sleep.saturating_add(sleep / 10).saturating_add(Duration::from_secs(5)).as_millis() as u64
    }

    fn shared_args<'a>(
        &self,
        token: &'a str,
        want: SharedWant,
        will_wait: bool,
        deadline: Option<Instant>,
    ) -> SharedArgs<'a> {
        SharedArgs {
            token,
            lease_ms: want.lease_ms,
            side: want.side,
            permits: want.permits,
            will_wait,
            entry_ms: self.entry_ms(),
            deadline,
        }
    }

    /// One attempt, no waiting, no queueing.
    pub fn try_acquire_shared(&self, keys: &LockKeys, want: SharedWant) -> Result<Option<Hold>> {
        let backend = shared_of(&*self.backend)?;
        let token = new_token();
        bump(&self.stats.attempts);
        let sent = Stamp::now();
        let attempt = backend.attempt(keys, self.shared_args(&token, want, false, None));
        match hand_out(&self.registry, &self.orphans, keys, attempt) {
            Ok(SharedAttempt::Acquired) => {
                self.count_shared(keys, want, false);
                log::debug!("redis-mutex: acquired {} at once", keys.key);
                Ok(Some(self.shared_hold(keys, want, token, sent)))
            }
            Ok(SharedAttempt::Waiting { .. }) => Ok(None),
            Err(e) => {
                if may_have_run(&e) {
                    self.orphans.add(keys, &token, want.lease_ms);
                }
                Err(e)
            }
        }
    }

    /// Waits as long as it takes (Redis errors end it after `outage_tolerance`).
    pub fn acquire_shared(&self, keys: &LockKeys, want: SharedWant) -> Result<Hold> {
        self.wait_shared(keys, want, Forever)
    }

    /// Waits until `deadline`; `Ok(None)` when it passed without the lock.
    pub fn acquire_shared_until(&self, keys: &LockKeys, want: SharedWant, deadline: Instant) -> Result<Option<Hold>> {
        self.wait_shared(keys, want, deadline)
    }

    /// Threads of this client waiting for the read-write lock or semaphore `keys`.
    pub fn waiting_shared(&self, keys: &LockKeys) -> usize {
        self.registry.tickets().waiting(&keys.key)
    }

    /// A semaphore's free permits now.
    pub fn available(&self, keys: &LockKeys, permits: u32) -> Result<u32> {
        shared_of(&*self.backend)?.available(keys, permits)
    }

    fn count_shared(&self, keys: &LockKeys, want: SharedWant, contended: bool) {
        bump(&self.stats.acquisitions);
        if contended {
            bump(&self.stats.contended_acquisitions);
        }
        bump(match (keys.kind, want.side) {
            (Kind::Semaphore, _) => &self.stats.permit_acquisitions,
            (_, Side::Exclusive) => &self.stats.write_acquisitions,
            (_, Side::Shared) => &self.stats.read_acquisitions,
        });
    }

    /// The guard's hold: a tenure of its own, timed from `sent` (no later than Redis
    /// set the lease), renewed by the watchdog with `auto_renew`.
    fn shared_hold(&self, keys: &LockKeys, want: SharedWant, token: String, sent: Stamp) -> Hold {
        let t = Arc::new(Tenure::new(keys.clone(), token, want.lease_ms, sent, None, 0));
        self.start_renewing(&t, want);
        Hold { tenure: t, fence: None }
    }

    fn start_renewing(&self, tenure: &Arc<Tenure>, want: SharedWant) {
        if want.auto_renew {
            self.watchdog.register(tenure);
        } else {
            self.watchdog.watch(tenure);
        }
    }

    /// Takes a grant this waiter was told of. It was made after `sent` (the waiter's
    /// last attempt that found the lock taken: an attempt after the grant would have
    /// found it holding), so its short lease (`grant_ms`) is timed from there, erring
    /// early. Fresh (a third of it left) and renewed by the watchdog: returned at once.
    /// Otherwise Redis first extends it to the lease the waiter wants (one round trip;
    /// the watchdog starts renewing it only then); `None` when it ran out meanwhile.
    fn take_shared_grant(
        &self,
        keys: &LockKeys,
        want: SharedWant,
        token: &str,
        sent: Stamp,
        grant_ms: u64,
    ) -> Result<Option<Hold>> {
        let tenure = Arc::new(Tenure::new(keys.clone(), token.to_owned(), want.lease_ms, sent, None, 0));
        tenure.confirmed(sent, grant_ms);
        if !(want.auto_renew && tenure.is_fresh(Stamp::now())) {
            let at = Stamp::now();
            if !self.extend_once(keys, token, want.lease_ms, None)? {
                return Ok(None);
            }
            tenure.confirmed(at, want.lease_ms);
        }
        self.start_renewing(&tenure, want);
        bump(&self.stats.grants);
        Ok(Some(Hold { tenure, fence: None }))
    }

    /// The wait behind `acquire_shared` and `acquire_shared_until`.
    fn wait_shared<D: Deadline>(&self, keys: &LockKeys, want: SharedWant, deadline: D) -> Result<D::Outcome<Hold>> {
        let backend = shared_of(&*self.backend)?;
        let started = Instant::now();
        let token = new_token();
        // Before the first attempt: a grant heard before the thread sleeps is kept.
        let ticket = self.registry.tickets().register(&token, keys.key.as_str().into());
        let mut backoff = Backoff::new();
        let mut outage_since: Option<Instant> = None;
        let mut slept = false;
        // When the last attempt that found the lock taken was sent.
        let mut queued_at: Option<Stamp> = None;
        let done = |hold: Hold, how: &str, slept: bool| {
            self.count_shared(keys, want, slept);
            log::debug!("redis-mutex: acquired {} ({how}) after {:?}", keys.key, started.elapsed());
            Ok(D::acquired(hold))
        };
        // Leaving without the lock: out of the queue, and a grant made meanwhile passed on.
        let give_up = |ended: std::result::Result<D::Passed, Error>| {
            self.leave_shared(backend, keys, &token, want.lease_ms);
            Ok(D::passed(ended?))
        };
        loop {
            if let Some(grant_ms) = ticket.take_grant()
                && let Some(sent) = queued_at
            {
                match self.take_shared_grant(keys, want, &token, sent, grant_ms) {
                    Ok(Some(hold)) => return done(hold, "granted", slept),
                    // It ran out untaken: the attempt below queues anew.
                    Ok(None) => {}
                    // The attempt below finds out whether it holds.
                    Err(e) if e.is_transient() => {}
                    Err(e) => return give_up(Err(e)),
                }
            }
            bump(&self.stats.attempts);
            let sent = Stamp::now();
            let attempt = backend.attempt(keys, self.shared_args(&token, want, true, deadline.at()));
            let failure = match hand_out(&self.registry, &self.orphans, keys, attempt) {
                Ok(SharedAttempt::Acquired) => {
                    let hold = self.shared_hold(keys, want, token.clone(), sent);
                    return done(hold, "attempt", slept);
                }
                Ok(SharedAttempt::Waiting { remaining }) => {
                    queued_at = Some(sent);
                    outage_since = None;
                    Ok(self.sleep_bound(remaining, &mut backoff))
                }
                Err(e) if e.is_transient() => {
                    let since = *outage_since.get_or_insert_with(Instant::now);
                    if deadline.at().is_none() && since.elapsed() >= self.settings.outage_tolerance {
                        return give_up(Err(e));
                    }
                    log::debug!("redis-mutex: attempt on {} failed, will retry: {e}", keys.key);
                    Err((backoff.next_delay(), e))
                }
                Err(e) => return give_up(Err(e)),
            };
            let (bound, failure) = match failure {
                Ok(bound) => (bound, None),
                Err((bound, e)) => (bound, Some(e)),
            };
            let now = Instant::now();
            if let Some(passed) = deadline.passed_at(now) {
                return give_up(failure.map_or(Ok(passed), Err));
            }
            let until = deadline.at().map_or(later(now, bound), |d| later(now, bound).min(d));
            slept = true;
            match ticket.sleep_until(until) {
                Woken::Notified => bump(&self.stats.wakeups_notified),
                Woken::TimedOut => bump(&self.stats.wakeups_timeout),
            }
        }
    }

    /// A waiter gives up: it leaves the queue (a grant made to it meanwhile, or an
    /// acquisition whose reply was lost, is released). When that fails, the token is
    /// released as an orphan by the watchdog; its queue entry ends by itself.
    fn leave_shared(&self, backend: &dyn SharedBackend, keys: &LockKeys, token: &str, lease_ms: u64) {
        match hand_out(&self.registry, &self.orphans, keys, backend.leave(keys, token)) {
            Ok(SharedLeave::ReleasedGrant) => log::debug!("redis-mutex: passed on a grant of {} on leaving", keys.key),
            Ok(SharedLeave::Left | SharedLeave::Gone) => {}
            Err(e) => {
                log::debug!("redis-mutex: could not leave the queue of {}: {e}", keys.key);
                self.orphans.add(keys, token, lease_ms);
            }
        }
    }

    /// Releases a reader, writer or permit, owner-checked: its renewal stops first,
    /// and the release grants the lock to the waiters it lets in.
    ///
    /// # Errors
    ///
    /// `LockLost` when the lease was found lost or had run out in Redis; Redis
    /// failures (the lease then ends by itself).
    pub fn release_shared(&self, tenure: &Arc<Tenure>) -> Result<()> {
        self.watchdog.deregister(tenure);
        let lost = || Error::LockLost { key: tenure.keys.key.clone() };
        if tenure.is_lost() {
            return Err(lost());
        }
        let released = shared_of(&*self.backend)?.release(&tenure.keys, &tenure.token);
        match hand_out(&self.registry, &self.orphans, &tenure.keys, released) {
            Ok(true) => {
                bump(&self.stats.releases);
                log::debug!("redis-mutex: released {}", tenure.keys.key);
                Ok(())
            }
            Ok(false) => {
                tenure.mark_lost(&self.stats, &self.registry, "the release found its lease run out");
                Err(lost())
            }
            Err(e) => Err(e),
        }
    }
}
