//! The waiting protocol (DESIGN §3), written against the `Backend` trait only.
//!
//! [`Core`] is what every lock of one client shares. `lock` registers the thread as a
//! waiter in the [`Registry`] before its first attempt, then loops: the first waiter
//! of a name attempts; on "held" it sleeps on its wake-up slot for at most the
//! holder's remaining lease (+ jitter), `recheck_interval` or the deadline, or a
//! jittered backoff while release messages are not heard. `release` makes the whole
//! release decision: hand the tenure to the next waiting thread in memory (no round
//! trip) while its lease is fresh, else release through the backend, which hands the
//! lock to a waiting thread of this client, passes it to the next waiting client, or
//! deletes it. The [`Tenure`] is the client's hold on the lock in Redis; the watchdog
//! renews it.
//!
//! Modules: `registry` (waiters), `release` (the release decision, extend), `check`
//! (what the backend refuses, before any I/O),
//! `deadline` (`lock` without a deadline cannot end without the lock), `tenure` (lease
//! state), `watchdog` (renewal thread), `orphans` (acquisitions whose reply was lost),
//! `shared` and `tickets` (read-write locks and semaphores: their wait loop, and their
//! waiters by token),
//! `tests` (the protocol against the in-memory backend, both a backend that grants
//! and one that does not), `limits_tests` (what a backend limits: the lease it
//! vouches for, the longest lease, what it refuses).

mod check;
mod deadline;
#[cfg(test)]
mod limits_tests;
mod listen;
#[cfg(test)]
mod listen_tests;
mod orphans;
mod registry;
mod release;
#[cfg(test)]
mod replicas_tests;
#[cfg(test)]
mod server_change_tests;
mod shared;
#[cfg(test)]
mod shared_fast_tests;
#[cfg(test)]
mod shared_tests;
mod tenure;
#[cfg(test)]
mod tests;
mod tickets;
mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use self::deadline::{Deadline, Forever};
use self::listen::Holding;
use self::orphans::Orphans;
pub(crate) use self::registry::Registry;
use self::registry::{Grant, Leave, WaitHandle, Woken};
pub(crate) use self::shared::SharedWant;
pub(crate) use self::tenure::Tenure;
use self::watchdog::{Renewer, Watchdog};
pub(crate) use crate::backend::Side;
use crate::backend::{Attempt, AttemptArgs, Backend, Granted, HandoffTarget, ReleaseArgs, ReleaseSink, Replicas};
use crate::backoff::{Backoff, jitter};
use crate::clock::{Stamp, later};
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::keys::LockKeys;
use crate::stats::{Counters, Stats, bump};

/// How a client waits; see `LockClientBuilder` for each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Longest sleep between checks while release messages are heard
    /// (`recheck_interval`).
    pub max_sleep: Duration,
    /// How long `lock()` (no deadline) keeps retrying through Redis errors.
    pub outage_tolerance: Duration,
    /// In-process handoffs per tenure, and handoffs per turn of this client while
    /// other clients wait.
    pub handoff_limit: u32,
}

/// What every lock of one client shares for waiting. Dropping it stops the watchdog.
pub(crate) struct Core {
    backend: Arc<dyn Backend>,
    registry: Arc<Registry>,
    stats: Arc<Counters>,
    watchdog: Watchdog,
    /// Acquisitions whose reply was lost, which the watchdog releases.
    orphans: Arc<Orphans>,
    /// The mutex tenures alive in this client, by lock name.
    holding: Arc<Holding>,
    settings: Settings,
}

/// The settings of one acquisition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    pub lease_ms: u64,
    pub fencing: bool,
    pub auto_renew: bool,
    /// Replicas that must acknowledge it (`wait_replicas`).
    pub replicas: Option<Replicas>,
}

/// A lock held by one guard: the tenure (shared with the threads it is handed to in
/// memory) and this acquisition's fencing token.
#[derive(Debug)]
pub(crate) struct Hold {
    pub tenure: Arc<Tenure>,
    pub fence: Option<u64>,
}

/// How a waiter got the lock.
struct Got {
    grant: Grant,
    /// The previous holder's tenure, when it was handed over without a round trip.
    tenure: Option<Arc<Tenure>>,
}

fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether a failed request may have reached Redis and run: an error on a connection
/// that was open (a timeout, a reset), as opposed to a refused connection or a refusal
/// by the server.
fn may_have_run(e: &Error) -> bool {
    matches!(e, Error::Connection(e) if !e.is_connection_refusal())
}

impl Core {
    /// The core of a client whose locks live in `backend`, which delivers release
    /// messages to `registry`. Starts the watchdog thread.
    pub fn new(
        backend: Arc<dyn Backend>,
        registry: Arc<Registry>,
        stats: Arc<Counters>,
        settings: Settings,
    ) -> Result<Core> {
        let orphans = Arc::new(Orphans::default());
        let watchdog = Watchdog::spawn(Renewer {
            backend: backend.clone(),
            stats: stats.clone(),
            registry: registry.clone(),
            orphans: orphans.clone(),
            handoff_limit: settings.handoff_limit,
        })?;
        registry.on_server_change(watchdog.waker());
        Ok(Core { backend, registry, stats, watchdog, orphans, holding: Arc::default(), settings })
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Whether release messages are heard now (else waiters poll).
    pub fn is_listening(&self) -> bool {
        self.registry.is_listening()
    }

    /// Threads of this client waiting for `name`.
    pub fn waiting(&self, name: &str) -> usize {
        self.registry.waiting(name)
    }

    /// Tenures the watchdog renews now.
    pub fn renewing(&self) -> usize {
        self.watchdog.len()
    }

    pub fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        self.backend.holder(keys)
    }

    pub fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        self.backend.force_unlock(keys)
    }

    /// One attempt, no waiting, no mark on the holder.
    pub fn try_lock(&self, keys: &LockKeys, want: Want) -> Result<Option<Hold>> {
        let token = new_token();
        bump(&self.stats.attempts);
        let at = Stamp::now();
        let epoch = self.registry.server_changes();
        let args = AttemptArgs {
            token: &token,
            lease_ms: want.lease_ms,
            fence_span: self.fence_span(want.fencing),
            will_wait: false,
            deadline: None,
            mark: 0,
            replicas: want.replicas,
        };
        match self.backend.attempt(keys, args) {
            Ok(Attempt::Acquired { fence }) => {
                bump(&self.stats.acquisitions);
                log::debug!("redis-mutex: acquired {} at once", keys.key);
                let grant = Grant { fence, at, turn: 0, epoch, from_another_client: None };
                Ok(Some(self.hold(keys, want, token, Got { grant, tenure: None })))
            }
            Ok(Attempt::Held { .. }) => Ok(None),
            Err(e) => {
                if may_have_run(&e) {
                    self.orphans.add(keys, &token, want.lease_ms);
                }
                Err(e)
            }
        }
    }

    /// Waits for the lock as long as it takes (Redis errors end it after
    /// `outage_tolerance`).
    pub fn lock(&self, keys: &LockKeys, want: Want) -> Result<Hold> {
        self.wait(keys, want, Forever)
    }

    /// Waits for the lock until `deadline`; `Ok(None)` when it passed with the lock
    /// held elsewhere.
    pub fn lock_until(&self, keys: &LockKeys, want: Want, deadline: Instant) -> Result<Option<Hold>> {
        self.wait(keys, want, deadline)
    }

    /// The guard's hold on what a waiter got: the tenure it was handed in memory, or a
    /// new one, renewed by the watchdog with `auto_renew`.
    fn hold(&self, keys: &LockKeys, want: Want, token: String, got: Got) -> Hold {
        let fence = want.fencing.then_some(got.grant.fence);
        let tenure = got.tenure.unwrap_or_else(|| {
            // Timed from when the acquiring request was sent: no later than Redis
            // started the lease, so renewals and lost-lease detection err early.
            let t = Tenure::new(keys.clone(), token, want.lease_ms, got.grant.at, fence, got.grant.turn)
                .acknowledged_by(want.replicas)
                .counted(self.holding.mark(&keys.name));
            // Redis gave a grant a short lease, which renewals lengthen.
            let set = got.grant.from_another_client.as_ref().map_or(want.lease_ms, |g| g.lease_ms);
            t.confirmed(got.grant.at, self.backend.vouched_ms(set));
            if got.grant.epoch != self.registry.server_changes() {
                // Sent to a server that turned out to be another one (a failover, a
                // restart) before the answer came: the check of every held lock
                // missed this one. Renewed at once, and not handed on before.
                t.recheck(Stamp::now());
            }
            let t = Arc::new(t);
            if want.auto_renew {
                self.watchdog.register(&t);
            } else {
                self.watchdog.watch(&t);
            }
            t
        });
        Hold { tenure, fence }
    }

    /// Turns what a waiter got into the guard's hold. A grant from another client is
    /// timed from this client's request that queued it; when that is too old for the
    /// grant's short lease to be fresh (the process may have stalled since, with the
    /// message waiting in its socket), or the waiter does not renew, Redis confirms it
    /// first, with the lease the waiter wants; so does every waiter with
    /// `wait_replicas`: what the releaser's replicas acknowledged is the grant's short
    /// lease (`reservation_timeout`), which a failover soon after would see run out on
    /// the new master; the waiter's own lease must be acknowledged before it returns.
    /// `None`: that grant had run out before it was taken, or too few replicas
    /// acknowledged it (then it was released again, and the waiter's own attempt
    /// reports their shortfall), and the waiter waits on.
    fn take(&self, keys: &LockKeys, want: Want, token: &str, got: Got) -> Result<Option<Hold>> {
        let Some(Granted { token: granted, .. }) = got.grant.from_another_client.clone() else {
            let token = got.tenure.as_ref().map_or_else(|| token.to_owned(), |t| t.token.clone());
            return Ok(Some(self.hold(keys, want, token, got)));
        };
        if want.fencing && got.grant.fence == 0 {
            // Queued by a waiter without fencing, so no fencing token came with it:
            // pass it on (with a fencing block to a waiter of this client, or to the
            // next client) and wait on.
            let args = ReleaseArgs {
                token: &granted,
                lease_ms: want.lease_ms,
                local_handoffs: 0,
                limit: self.settings.handoff_limit,
                fence_span: self.fence_span(true),
                handoff: None,
                mark: 0,
                replicas: None,
            };
            if let Err(e) = self.release_through_backend(keys, args)
                && !e.is_lock_lost()
            {
                self.orphans.add(keys, &granted, want.lease_ms);
            }
            return Ok(None);
        }
        let hold = self.hold(keys, want, granted.clone(), got);
        if want.auto_renew && want.replicas.is_none() && hold.tenure.is_fresh(Stamp::now()) {
            bump(&self.stats.grants);
            return Ok(Some(hold));
        }
        let sent = Stamp::now();
        match self.extend_once(keys, &granted, want.lease_ms, want.replicas) {
            Ok(true) => {
                hold.tenure.set_lease_ms(want.lease_ms);
                hold.tenure.confirmed(sent, self.backend.vouched_ms(want.lease_ms));
                bump(&self.stats.grants);
                Ok(Some(hold))
            }
            Ok(false) | Err(Error::WrongType { .. }) => {
                self.watchdog.deregister(&hold.tenure);
                Ok(None)
            }
            Err(Error::ReplicasNotAcknowledged { .. }) => {
                self.watchdog.deregister(&hold.tenure);
                self.give_back(keys, &granted, want.lease_ms);
                Ok(None)
            }
            Err(e) => {
                self.watchdog.deregister(&hold.tenure);
                self.orphans.add(keys, &granted, want.lease_ms);
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
        let max_sleep = self.settings.max_sleep;
        if self.registry.is_listening() {
            lease_bound.unwrap_or(max_sleep).min(max_sleep)
        } else {
            let poll = backoff.next_delay();
            lease_bound.map_or(poll, |b| b.min(poll))
        }
    }

    /// The wait behind `lock` and `lock_until`: the deadline's type says whether it
    /// can end without the lock.
    fn wait<D: Deadline>(&self, keys: &LockKeys, want: Want, deadline: D) -> Result<D::Outcome<Hold>> {
        let started = Instant::now();
        let token = new_token();
        let target = HandoffTarget {
            token: token.clone(),
            lease_ms: want.lease_ms,
            fencing: want.fencing,
            auto_renew: want.auto_renew,
            replicas: want.replicas,
        };
        let mut waiter = self.registry.register(keys.name.clone(), target.clone());
        let mut backoff = Backoff::new();
        let mut outage_since: Option<Instant> = None;
        // Whether it had to wait (slept at least once): a contended acquisition.
        let mut slept = false;
        // Whether an attempt failed in a way that may have run it: Redis may then list
        // this token as the owner although nobody heard so.
        let mut maybe_ran = false;
        let done = |hold: Hold, how: &str, slept: bool| {
            bump(&self.stats.acquisitions);
            if slept {
                bump(&self.stats.contended_acquisitions);
            }
            log::debug!("redis-mutex: acquired {} ({how}) after {:?}", keys.key, started.elapsed());
            Ok(D::acquired(hold))
        };
        // Leaving without the lock (`passed`: the deadline passed, else `failed`),
        // unless a releaser handed it over meanwhile.
        let give_up =
            |waiter: WaitHandle, slept: bool, maybe_ran: bool, ended: std::result::Result<D::Passed, Error>| {
                let maybe_owner = maybe_ran || waiter.maybe_handed();
                if let (Leave::Granted(grant), tenure) = waiter.leave_with_tenure()
                    && let Some(hold) = self.take(keys, want, &token, Got { grant, tenure })?
                {
                    return done(hold, "handed", slept);
                }
                if maybe_owner {
                    self.orphans.add(keys, &token, want.lease_ms);
                }
                let passed = ended?;
                self.leave_queue(keys);
                Ok(D::passed(passed))
            };
        loop {
            if let Some(grant) = waiter.granted() {
                let got = Got { grant, tenure: waiter.take_tenure() };
                match self.take(keys, want, &token, got)? {
                    Some(hold) => return done(hold, "handed", slept),
                    // A grant that ran out before it was taken: wait on, queued anew.
                    None => {
                        waiter = self.registry.register(keys.name.clone(), target.clone());
                        continue;
                    }
                }
            }
            // Behind another waiter of this client, an attempt can only fail: the lock
            // reaches us by handoff from the waiters ahead, and the first of them
            // wakes us when it stops watching (see `Registry::remove_holder`). So only
            // the first waiter talks to Redis. The flag goes up before the check, so a
            // first waiter leaving in between sees it.
            waiter.rely_on_first(true);
            let first = waiter.is_first();
            let (bound, failure) = if !first {
                // Every way forward from here wakes us (a grant, the first leaving), so
                // no polling, even while the notifier is down.
                (self.settings.max_sleep, None)
            } else {
                waiter.rely_on_first(false);
                bump(&self.stats.attempts);
                let sent = Stamp::now();
                let epoch = self.registry.server_changes();
                let args = AttemptArgs {
                    token: &token,
                    lease_ms: want.lease_ms,
                    fence_span: self.fence_span(want.fencing),
                    will_wait: true,
                    deadline: deadline.at(),
                    mark: self.registry.queueing(&keys.name, sent),
                    replicas: want.replicas,
                };
                match self.backend.attempt(keys, args) {
                    Ok(Attempt::Acquired { fence }) => {
                        waiter.finish();
                        self.registry.dequeued(&keys.name);
                        let grant = Grant { fence, at: sent, turn: 0, epoch, from_another_client: None };
                        let hold = self.hold(keys, want, token.clone(), Got { grant, tenure: None });
                        return done(hold, "attempt", slept);
                    }
                    // Held by another client, or granted to one that has not taken it
                    // yet: this client is queued in the lock now, and is granted it
                    // when its turn comes (or looks again when the holder's lease or
                    // the grant would end).
                    Ok(Attempt::Held { remaining }) => {
                        outage_since = None;
                        (self.sleep_bound(remaining, &mut backoff), None)
                    }
                    Err(e) if e.is_transient() => {
                        maybe_ran |= may_have_run(&e);
                        let since = *outage_since.get_or_insert_with(Instant::now);
                        if deadline.at().is_none() && since.elapsed() >= self.settings.outage_tolerance {
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
            if let Some(passed) = deadline.passed_at(now) {
                return give_up(waiter, slept, maybe_ran, failure.map_or(Ok(passed), Err));
            }
            let until = deadline.at().map_or(later(now, bound), |d| later(now, bound).min(d));
            slept = true;
            let woken = if first { self.listen(&waiter, keys, until) } else { None };
            match woken.unwrap_or_else(|| waiter.sleep_until(until)) {
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
    fn leave_queue(&self, keys: &LockKeys) {
        if self.registry.waiting(&keys.name) > 0 {
            return;
        }
        self.registry.dequeued(&keys.name);
        if let Err(e) = self.backend.leave(keys) {
            // Then a reservation for this client goes unused until it ends; the others'
            // sleeps are bounded by the lease.
            log::debug!("redis-mutex: could not leave the queue of {}: {e}", keys.key);
        }
        self.registry.wake_first(&keys.name);
    }

    /// The fencing tokens one acquisition through Redis takes (0 without fencing): its
    /// own, and one for each in-process handoff of its tenure. Tokens still rise
    /// strictly in the order the lock is granted: every later acquisition through
    /// Redis takes its block above this one.
    fn fence_span(&self, fencing: bool) -> u64 {
        if fencing { u64::from(self.settings.handoff_limit) + 1 } else { 0 }
    }
}
