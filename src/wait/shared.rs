//! Waiting for read-write locks and semaphores, on the same machinery as the mutex:
//! leases renewed by the watchdog, lost-lease detection, waiters that sleep on a
//! wake-up slot until a message or the shortest lease they saw, polling only while
//! release messages are not heard, no spinning.
//!
//! Each waiting thread that asks Redis is its own entry in the lock's FIFO queue in
//! Redis, under the token it will hold the lock with; a release grants the lock to the
//! waiters at the head of the queue that it lets in (see `backend::shared`), and their
//! threads return without a request of their own when the grant is fresh.
//!
//! In-process fast path (off with `handoff_limit(0)`): a permit or the write lock
//! passes in memory to the first waiting thread of this client that waits for the
//! same (as a mutex's tenure does: fresh, renewed, at most `handoff_limit` times, then
//! through Redis, which serves the fleet's queue first), and a reader joins a read
//! share this client holds while no writer waits here and the last request found no
//! other client's thread queued less than [`JOIN_WINDOW`] ago. Then only one waiting
//! thread per class and lock asks Redis (see `tickets`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::deadline::{Deadline, Forever};
use super::orphans::Orphans;
use super::registry::{Registry, Woken};
use super::tickets::{Class, TicketHandle, Turn};
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

/// How long after a request that found no other client's thread queued this client's
/// readers may still join its read shares in memory: once a writer of another client
/// queued, new readers of this client stop coming in within this (the writer's bound
/// grows by it; a writer of this client stops them at once).
pub(crate) const JOIN_WINDOW: Duration = Duration::from_millis(5);

/// What passes between threads of one client in memory.
fn class_of(keys: &LockKeys, side: Side) -> Class {
    match (keys.kind, side) {
        (Kind::Semaphore, _) => Class::Permit,
        (_, Side::Shared) => Class::Reader,
        (_, Side::Exclusive) => Class::Writer,
    }
}

/// The backend's read-write locks and semaphores, or why it has none.
pub(super) fn shared_of(backend: &dyn Backend) -> Result<&dyn SharedBackend> {
    backend.shared().map_err(|reason| Error::Unsupported { what: "read-write locks and semaphores", reason })
}

/// Hands out what a request (sent at `sent`) granted to threads of this client (not
/// announced on its channel, see `LocalGrants`), notes whether it found another
/// client's thread queued (returned too), and after a failed request that may have
/// run, wakes every thread of the client waiting for the lock, so that each finds out
/// by its next attempt. A grant to a token no thread waits under any more (its thread
/// gave up and could not leave the queue) is released as an orphan.
pub(super) fn hand_out<T>(
    registry: &Registry,
    orphans: &Orphans,
    keys: &LockKeys,
    sent: Stamp,
    outcome: Result<(T, LocalGrants)>,
) -> Result<(T, bool)> {
    match outcome {
        Ok((value, grants)) => {
            registry.tickets().note_queue(&keys.key, sent, grants.others_queued);
            for token in grants.tokens {
                if !registry.tickets().grant(&token, grants.lease_ms) {
                    orphans.add(keys, &token, grants.lease_ms);
                }
            }
            Ok((value, grants.others_queued))
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

    /// Whether threads of this client pass permits and write locks in memory and join
    /// read shares (`handoff_limit` above 0).
    fn fast(&self) -> bool {
        self.settings.handoff_limit > 0
    }

    /// A reader joins a read share of this client, when it may (`Tickets::join`).
    fn join(&self, keys: &LockKeys, want: SharedWant, waiting: Option<&TicketHandle>) -> Option<Hold> {
        if !(self.fast() && want.auto_renew && class_of(keys, want.side) == Class::Reader) {
            return None;
        }
        let tenure = self.registry.tickets().join(&keys.key, waiting, want.lease_ms, JOIN_WINDOW)?;
        bump(&self.stats.read_joins);
        log::trace!("redis-mutex: joined a read share of {}", keys.key);
        Some(Hold { tenure, fence: None })
    }

    /// A read share acquired through Redis, which later readers may join; `clear`:
    /// the request that acquired it was sent then and found no other client queued.
    fn add_read(&self, keys: &LockKeys, want: SharedWant, hold: &Hold, clear: Option<Stamp>) {
        if self.fast() && want.auto_renew && class_of(keys, want.side) == Class::Reader {
            let tickets = self.registry.tickets();
            tickets.add_read(&keys.key, &hold.tenure);
            if let Some(sent) = clear {
                tickets.note_queue(&keys.key, sent, false);
            }
        }
    }

    /// One attempt, no waiting, no queueing (a reader may join a read share).
    pub fn try_acquire_shared(&self, keys: &LockKeys, want: SharedWant) -> Result<Option<Hold>> {
        let backend = shared_of(&*self.backend)?;
        if let Some(hold) = self.join(keys, want, None) {
            self.count_shared(keys, want, false);
            return Ok(Some(hold));
        }
        let token = new_token();
        bump(&self.stats.attempts);
        let sent = Stamp::now();
        let attempt = backend.attempt(keys, self.shared_args(&token, want, false, None));
        match hand_out(&self.registry, &self.orphans, keys, sent, attempt) {
            Ok((SharedAttempt::Acquired, others)) => {
                self.count_shared(keys, want, false);
                log::debug!("redis-mutex: acquired {} at once", keys.key);
                let hold = self.shared_hold(keys, want, token, sent);
                self.add_read(keys, want, &hold, (!others).then_some(sent));
                Ok(Some(hold))
            }
            Ok((SharedAttempt::Waiting { .. }, _)) => Ok(None),
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
        let t = Arc::new(Tenure::new(keys.clone(), token, want.lease_ms, sent, None, 0).on_side(want.side));
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
        let tenure = Tenure::new(keys.clone(), token.to_owned(), want.lease_ms, sent, None, 0).on_side(want.side);
        let tenure = Arc::new(tenure);
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
        let done = |hold: Hold, how: &str, slept: bool| {
            self.count_shared(keys, want, slept);
            log::debug!("redis-mutex: acquired {} ({how}) after {:?}", keys.key, started.elapsed());
            Ok(D::acquired(hold))
        };
        if let Some(hold) = self.join(keys, want, None) {
            return done(hold, "joined", false);
        }
        let class = class_of(keys, want.side);
        // Before the first attempt: a grant heard before the thread sleeps is kept.
        let ticket = self.registry.tickets().register(
            &new_token(),
            keys.key.as_str().into(),
            class,
            want.lease_ms,
            want.auto_renew,
        );
        let mut backoff = Backoff::new();
        let mut outage_since: Option<Instant> = None;
        let mut slept = false;
        // A thread that takes the lock otherwise than under its token (handed a tenure,
        // joining a share): a grant to its token that nobody took is released by the
        // watchdog (an orphan).
        let close = |ticket: TicketHandle| {
            let closed = ticket.close();
            if let Some(ms) = closed.granted {
                self.orphans.add(keys, &closed.token, ms);
            }
        };
        // Leaving without the lock: out of the queue, and a grant made meanwhile passed
        // on; unless a thread of this client handed it a tenure meanwhile.
        let give_up = |ticket: TicketHandle, ended: std::result::Result<D::Passed, Error>| {
            // `leave` releases a grant to its token, if any (only a sent token has one).
            let closed = ticket.close();
            if let Some(tenure) = closed.handed {
                return done(Hold { tenure, fence: None }, "handed", true);
            }
            if closed.sent {
                self.leave_shared(backend, keys, &closed.token, want.lease_ms);
            }
            Ok(D::passed(ended?))
        };
        loop {
            if let Some(tenure) = ticket.take_handed() {
                close(ticket);
                return done(Hold { tenure, fence: None }, "handed in memory", slept);
            }
            if let Some(grant_ms) = ticket.take_grant() {
                let taken = match ticket.queued_at() {
                    Some(sent) => self.take_shared_grant(keys, want, &ticket.token(), sent, grant_ms),
                    None => Ok(None),
                };
                match taken {
                    Ok(Some(hold)) => {
                        drop(ticket);
                        self.add_read(keys, want, &hold, None);
                        return done(hold, "granted", slept);
                    }
                    // It ran out untaken: the attempt below queues anew.
                    Ok(None) => ticket.attempted(None),
                    // The attempt below finds out whether it holds.
                    Err(e) if e.is_transient() => ticket.attempted(None),
                    Err(e) => {
                        ticket.attempted(None);
                        return give_up(ticket, Err(e));
                    }
                }
            }
            if let Some(hold) = self.join(keys, want, Some(&ticket)) {
                close(ticket);
                return done(hold, "joined", slept);
            }
            let failure = match ticket.turn(!self.fast()) {
                // Another thread of this client asks Redis for the class; this one
                // waits for a handoff, a read share or its turn, which wake it.
                Turn::Wait(until) => {
                    Ok(until.map_or(self.settings.max_sleep, |u| u.saturating_duration_since(Instant::now())))
                }
                Turn::Attempt => {
                    bump(&self.stats.attempts);
                    let sent = Stamp::now();
                    let token = ticket.token();
                    let attempt = backend.attempt(keys, self.shared_args(&token, want, true, deadline.at()));
                    match hand_out(&self.registry, &self.orphans, keys, sent, attempt) {
                        Ok((SharedAttempt::Acquired, others)) => {
                            // Still busy: nothing was handed to it meanwhile.
                            drop(ticket);
                            let hold = self.shared_hold(keys, want, token, sent);
                            self.add_read(keys, want, &hold, (!others).then_some(sent));
                            return done(hold, "attempt", slept);
                        }
                        Ok((SharedAttempt::Waiting { remaining }, _)) => {
                            outage_since = None;
                            let bound = self.sleep_bound(remaining, &mut backoff);
                            ticket.attempted(Some((sent, later(Instant::now(), bound))));
                            Ok(bound)
                        }
                        Err(e) if e.is_transient() => {
                            ticket.attempted(None);
                            let since = *outage_since.get_or_insert_with(Instant::now);
                            if deadline.at().is_none() && since.elapsed() >= self.settings.outage_tolerance {
                                return give_up(ticket, Err(e));
                            }
                            log::debug!("redis-mutex: attempt on {} failed, will retry: {e}", keys.key);
                            Err((backoff.next_delay(), e))
                        }
                        Err(e) => {
                            ticket.attempted(None);
                            return give_up(ticket, Err(e));
                        }
                    }
                }
            };
            let (bound, failure) = match failure {
                Ok(bound) => (bound, None),
                Err((bound, e)) => (bound, Some(e)),
            };
            let now = Instant::now();
            if let Some(passed) = deadline.passed_at(now) {
                return give_up(ticket, failure.map_or(Ok(passed), Err));
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
        let sent = Stamp::now();
        match hand_out(&self.registry, &self.orphans, keys, sent, backend.leave(keys, token)) {
            Ok((SharedLeave::ReleasedGrant, _)) => {
                log::debug!("redis-mutex: passed on a grant of {} on leaving", keys.key)
            }
            Ok((SharedLeave::Left | SharedLeave::Gone, _)) => {}
            Err(e) => {
                log::debug!("redis-mutex: could not leave the queue of {}: {e}", keys.key);
                self.orphans.add(keys, token, lease_ms);
            }
        }
    }

    /// Hands a permit or the write lock to the first waiting thread of this client
    /// that waits for the same, in memory: the tenure (token, lease in Redis, watchdog
    /// entry) passes to it. Under the same conditions as a mutex's tenure
    /// (`Tenure::may_pass_on`): at most `handoff_limit` times, then the release goes
    /// through Redis, which grants the lock to the head of the fleet's queue first.
    fn hand_over_shared(&self, tenure: &Arc<Tenure>, class: Class) -> bool {
        if class == Class::Reader
            || !tenure.may_pass_on(tenure.local_handoffs(), self.settings.handoff_limit, Stamp::now())
            || !self.registry.tickets().hand_over(&tenure.keys.key, tenure, class)
        {
            return false;
        }
        bump(&self.stats.releases);
        bump(&self.stats.handoffs);
        bump(&self.stats.local_handoffs);
        log::trace!("redis-mutex: handed {} to a waiting thread, keeping the tenure", tenure.keys.key);
        true
    }

    /// Releases a reader, writer or permit, owner-checked: a reader that shares its
    /// read share with others of this client just leaves it; a permit or write lock
    /// passes to a waiting thread of this client in memory when it may; else its
    /// renewal stops first, and the release grants the lock to the waiters it lets in.
    ///
    /// # Errors
    ///
    /// `LockLost` when the lease was found lost or had run out in Redis; Redis
    /// failures (the lease then ends by itself).
    pub fn release_shared(&self, tenure: &Arc<Tenure>) -> Result<()> {
        let lost = || Error::LockLost { key: tenure.keys.key.clone() };
        let class = class_of(&tenure.keys, tenure.side);
        if class == Class::Reader && !self.registry.tickets().leave_read(&tenure.keys.key, tenure) {
            // Other readers of this client hold it: the last of them releases it. This
            // one is told whether the share held throughout: when Redis has not
            // confirmed it within a renewal period (the process stalled, or renewals
            // fail), Redis is asked, as a release through Redis would.
            bump(&self.stats.releases);
            if !tenure.is_lost() && !tenure.is_fresh(Stamp::now()) && !still_holds(&*self.backend, tenure)? {
                tenure.mark_lost(&self.stats, &self.registry, "Redis no longer lists this read share");
            }
            return if tenure.is_lost() { Err(lost()) } else { Ok(()) };
        }
        if self.hand_over_shared(tenure, class) {
            return Ok(());
        }
        self.watchdog.deregister(tenure);
        if tenure.is_lost() {
            return Err(lost());
        }
        let sent = Stamp::now();
        let released = shared_of(&*self.backend)?.release(&tenure.keys, &tenure.token);
        match hand_out(&self.registry, &self.orphans, &tenure.keys, sent, released) {
            Ok((true, _)) => {
                bump(&self.stats.releases);
                log::debug!("redis-mutex: released {}", tenure.keys.key);
                Ok(())
            }
            Ok((false, _)) => {
                tenure.mark_lost(&self.stats, &self.registry, "the release found its lease run out");
                Err(lost())
            }
            Err(e) => Err(e),
        }
    }
}
