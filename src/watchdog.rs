//! The watchdog: one `redis-mutex-watchdog` thread per client renews every live guard
//! with `auto_renew` at a third of its lease, all due guards in one pipelined batch.
//! A renewal that finds another owner (or no key) marks the guard lost; one that
//! fails on a connection error is retried until the lease would have run out, and
//! then marks the guard lost too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::clock::{Stamp, later};
use crate::error::Error;
use crate::keys::LockKeys;
use crate::stats::bump;
use crate::sync::{lock, try_lock};
use crate::wait::Core;

/// Longest the thread sleeps without looking at the table.
const IDLE: Duration = Duration::from_secs(1);

/// Most renewals sent in one pipeline.
pub(crate) const BATCH: usize = 512;

/// The lease state of one guard (one Redis tenure), shared by its guards and the
/// watchdog.
///
/// Requests that set the lease in Redis (renewals, `extend`) go one at a time
/// ([`Lease::requests`]), so Redis applies them in the order they were sent and each
/// reply confirms exactly the request it answers: the client's view of the lease is
/// never longer than what Redis was last told. A request whose outcome is unknown
/// (an error) may still have been applied, so it can only shorten that view.
#[derive(Debug)]
pub(crate) struct Lease {
    pub keys: LockKeys,
    pub token: String,
    /// The fencing token Redis issued with this tenure, with fencing: the first of a
    /// block of `handoff_limit + 1`, the rest of which go to in-process handoffs.
    pub fence_base: Option<u64>,
    /// Acquisitions of this client's current turn before this tenure began (0 unless
    /// another client waited when Redis handed the lock over): in-process handoffs
    /// count on from here, so a turn stays bounded across tenures.
    pub turn_base: u32,
    /// In-process handoffs of this tenure so far (see `Core::hand_over_locally`).
    local_handoffs: AtomicU32,
    lost: AtomicBool,
    released: AtomicBool,
    state: Mutex<LeaseState>,
    /// Held for the whole round trip of a request that sets the lease in Redis.
    requests: Mutex<()>,
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

impl Lease {
    pub fn new(
        keys: LockKeys,
        token: String,
        lease_ms: u64,
        confirmed: Stamp,
        fence_base: Option<u64>,
        turn_base: u32,
    ) -> Lease {
        Lease {
            keys,
            token,
            fence_base,
            turn_base,
            local_handoffs: AtomicU32::new(0),
            lost: AtomicBool::new(false),
            released: AtomicBool::new(false),
            state: Mutex::new(LeaseState { lease_ms, confirmed, confirmed_ms: lease_ms, retry: None, failure: None }),
            requests: Mutex::new(()),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the lease lost; `true` the first time (so it is counted and logged once).
    /// The first waiting thread of the lock in this client is woken: the lock may be
    /// free, and a thread queued behind this holder relies on its release to wake.
    pub fn mark_lost(&self, core: &Core, why: &str) -> bool {
        if self.lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        bump(&core.stats.leases_lost);
        log::warn!("redis-mutex: lost lock {}: {why}", self.keys.key);
        core.registry.notify(&self.keys.name);
        true
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

    /// The lease length renewals ask for.
    pub fn lease_ms(&self) -> u64 {
        lock(&self.state).lease_ms
    }

    /// How long from `now` until the next renewal is due, and how much earlier it may
    /// join a batch: a scheduled renewal may go half-way early, a retry after a failed
    /// one not at all (its delay is shorter than that window, so a server that fails
    /// fast would otherwise be retried in a tight loop until the lease runs out).
    fn schedule(&self, now: Stamp) -> (Duration, Duration) {
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
    fn renewal_failed(&self, core: &Core, sent: Stamp, lease_ms: u64, why: &Error) -> bool {
        self.maybe_applied(sent, lease_ms);
        let mut st = lock(&self.state);
        if st.confirmed.elapsed_at(sent) >= Duration::from_millis(st.confirmed_ms) {
            drop(st);
            self.mark_lost(core, &format!("renewals failed until the lease ran out ({why})"));
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
    fn ran_out_unrenewed(&self, core: &Core, now: Stamp) -> bool {
        let st = lock(&self.state);
        let Some(failure) = st.failure.clone() else { return false };
        if st.confirmed.elapsed_at(now) < Duration::from_millis(st.confirmed_ms) {
            return false;
        }
        drop(st);
        self.mark_lost(core, &format!("renewals failed until the lease ran out ({failure})"));
        true
    }
}

#[derive(Default)]
struct Shared {
    leases: Mutex<HashMap<u64, Arc<Lease>>>,
    /// When the thread next looks at the table unless woken (`None`: it is working).
    sleeping_until: Mutex<Option<Instant>>,
}

type Table = Arc<Shared>;

/// The client's handle on its watchdog. Dropping it stops the thread.
pub(crate) struct Watchdog {
    table: Table,
    next_id: AtomicU64,
    wake: Sender<()>,
}

impl Watchdog {
    pub fn spawn(core: Arc<Core>) -> std::io::Result<(Watchdog, JoinHandle<()>)> {
        let table: Table = Arc::default();
        let (wake, rx) = crossbeam_channel::bounded(1);
        let t = table.clone();
        let handle =
            std::thread::Builder::new().name("redis-mutex-watchdog".into()).spawn(move || run(&core, &t, &rx))?;
        Ok((Watchdog { table, next_id: AtomicU64::new(0), wake }, handle))
    }

    /// Starts renewing `lease`; returns the id to stop with.
    pub fn register(&self, lease: Arc<Lease>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Stamp::now();
        let due = later(now.mono, lease.schedule(now).0);
        lock(&self.table.leases).insert(id, lease);
        // Wake the thread only if it would sleep past this lease's first renewal: a
        // wake-up per acquisition would cost a context switch on the hot path.
        if lock(&self.table.sleeping_until).is_some_and(|until| due < until) {
            let _ = self.wake.try_send(());
        }
        id
    }

    /// Stops renewing; after this returns, no renewal of this lease is started.
    pub fn deregister(&self, id: u64, lease: &Lease) {
        lease.released.store(true, Ordering::Release);
        lock(&self.table.leases).remove(&id);
    }

    /// Guards being renewed.
    pub fn len(&self) -> usize {
        lock(&self.table.leases).len()
    }
}

fn run(core: &Core, table: &Table, wake: &Receiver<()>) {
    log::debug!("redis-mutex: watchdog started");
    loop {
        // A panic in one pass (a bug) must not stop every renewal of the client.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pass(core, table)));
        let wait_until = match pass {
            Ok(Pass::Again) => continue,
            Ok(Pass::Sleep(until)) => until,
            Err(panic) => {
                log::error!("redis-mutex: watchdog pass panicked ({}); resuming", panic_message(&panic));
                later(Instant::now(), Duration::from_millis(100))
            }
        };
        *lock(&table.sleeping_until) = Some(wait_until);
        // A lease registered between the scan and here is covered: it saw this time.
        if next_due_changed(table, wait_until) {
            *lock(&table.sleeping_until) = None;
            continue;
        }
        let woke = wake.recv_deadline(wait_until);
        *lock(&table.sleeping_until) = None;
        match woke {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                log::debug!("redis-mutex: watchdog stopped");
                return;
            }
        }
    }
}

/// What the watchdog does after a pass.
enum Pass {
    /// It sent renewals: look again at once (more may be due).
    Again,
    /// Nothing was due: sleep until then unless woken.
    Sleep(Instant),
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

/// How long to wait before looking at a lease again whose extend is in flight.
const BUSY: Duration = Duration::from_millis(10);

fn pass(core: &Core, table: &Table) -> Pass {
    let orphans_due = core.release_orphans();
    let now = Stamp::now();
    // Renew whatever is at least half-way to due, so guards taken at different
    // moments share a batch instead of a round trip each. A lease whose `extend` is
    // in flight waits for it: that reply confirms it.
    let (batch, next_due): (Vec<(u64, Arc<Lease>)>, Option<Instant>) = {
        let mut t = lock(&table.leases);
        t.retain(|_, lease| !lease.ran_out_unrenewed(core, now));
        let mut batch = Vec::new();
        let mut next_due: Option<Instant> = None;
        for (id, lease) in t.iter() {
            let (until, early) = lease.schedule(now);
            let due = if until > early {
                later(now.mono, until)
            } else if try_lock(&lease.requests).is_some() {
                batch.push((*id, lease.clone()));
                continue;
            } else {
                later(now.mono, BUSY)
            };
            next_due = Some(next_due.map_or(due, |d| d.min(due)));
        }
        (batch, next_due)
    };
    for chunk in batch.chunks(BATCH) {
        renew(core, table, chunk);
    }
    if !batch.is_empty() {
        return Pass::Again;
    }
    // Never asleep for long: a new guard due later than this needs no wake-up,
    // which keeps the thread off the acquisition path for leases ≥ 3 × IDLE.
    let idle = later(now.mono, IDLE);
    Pass::Sleep([next_due, orphans_due].into_iter().flatten().fold(idle, Instant::min))
}

/// Whether a lease registered while the thread was not yet asleep is due before `until`.
fn next_due_changed(table: &Table, until: Instant) -> bool {
    let now = Stamp::now();
    lock(&table.leases).values().any(|l| later(now.mono, l.schedule(now).0) < until)
}

fn renew(core: &Core, table: &Table, chunk: &[(u64, Arc<Lease>)]) {
    // One request at a time per lease; one whose `extend` went out meanwhile is left
    // to that extend's reply.
    let held: Vec<_> = chunk.iter().filter_map(|(id, l)| try_lock(&l.requests).map(|g| (*id, l, g))).collect();
    if held.is_empty() {
        return;
    }
    let items: Vec<(&LockKeys, &str, u64)> =
        held.iter().map(|(_, l, _)| (&l.keys, l.token.as_str(), l.lease_ms())).collect();
    let sent = Stamp::now();
    let replies = core.backend.extend(&items);
    if let Err(e) = &replies {
        log::debug!("redis-mutex: renewal of {} leases failed, retrying: {e}", items.len());
    }
    let mut gone = Vec::new();
    for (i, ((id, lease, _), (_, _, lease_ms))) in held.iter().zip(&items).enumerate() {
        let reply = match &replies {
            // `extend` answers one result per item; a short answer counts as not owned.
            Ok(each) => each.get(i).cloned().unwrap_or(Ok(false)),
            Err(e) => Err(e.clone()),
        };
        match reply {
            Ok(true) => {
                bump(&core.stats.renewals);
                lease.confirmed(sent, *lease_ms);
            }
            // A guard released while this renewal was in flight lost nothing.
            Ok(false) if lease.released.load(Ordering::Acquire) => gone.push(*id),
            Ok(false) => {
                lease.mark_lost(core, "a renewal found another owner or no lock (lease ran out or force-unlocked)");
                gone.push(*id);
            }
            Err(Error::WrongType { .. }) => {
                // The hash that was the lock is gone: someone wrote over its key.
                if !lease.released.load(Ordering::Acquire) {
                    lease.mark_lost(
                        core,
                        "its key now holds a value of another type, written by something else; \
                         use another lock name or key prefix",
                    );
                }
                gone.push(*id);
            }
            Err(e) => {
                if replies.is_ok() {
                    log::debug!("redis-mutex: renewal of {} failed, retrying: {e}", lease.keys.key);
                }
                if lease.renewal_failed(core, sent, *lease_ms, &e) {
                    gone.push(*id);
                }
            }
        }
    }
    if !gone.is_empty() {
        let mut t = lock(&table.leases);
        for id in gone {
            t.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Attempt, AttemptArgs, Backend, Holder, ReleaseArgs, Released};
    use crate::error::Result;
    use crate::wait::tests::{MemBackend, WANT, keys, mem_core, tenure_of};
    use crossbeam_channel::Receiver;
    use std::sync::atomic::AtomicU32;

    /// A backend whose renewals from the watchdog thread wait at a gate (and, with
    /// `panics`, whose first renewals panic); everything else is `MemBackend`'s.
    struct Gated {
        mem: MemBackend,
        entered: Sender<()>,
        gate: Receiver<()>,
        gated: bool,
        panics: AtomicU32,
    }

    fn gated(gated: bool, panics: u32) -> (Gated, Receiver<()>, Sender<()>) {
        let (entered, entered_rx) = crossbeam_channel::unbounded();
        let (open, gate) = crossbeam_channel::unbounded();
        (Gated { mem: MemBackend::default(), entered, gate, gated, panics: AtomicU32::new(panics) }, entered_rx, open)
    }

    impl Backend for Gated {
        fn attempt(&self, keys: &LockKeys, args: AttemptArgs<'_>) -> Result<Attempt> {
            self.mem.attempt(keys, args)
        }
        fn release(&self, keys: &LockKeys, args: ReleaseArgs<'_>) -> Result<Released> {
            self.mem.release(keys, args)
        }
        fn leave(&self, keys: &LockKeys) -> Result<()> {
            self.mem.leave(keys)
        }
        fn extend(&self, items: &[(&LockKeys, &str, u64)]) -> Result<Vec<Result<bool>>> {
            if std::thread::current().name() == Some("redis-mutex-watchdog") {
                if self.panics.load(Ordering::SeqCst) > 0 {
                    self.panics.fetch_sub(1, Ordering::SeqCst);
                    panic!("a bug in a renewal");
                }
                if self.gated {
                    let _ = self.entered.send(());
                    let _ = self.gate.recv();
                }
            }
            self.mem.extend(items)
        }
        fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
            self.mem.holder(keys)
        }
        fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
            self.mem.force_unlock(keys)
        }
    }

    /// `at` moved on by `d` on both clocks.
    fn plus(at: Stamp, d: Duration) -> Stamp {
        Stamp { mono: at.mono + d, wall: at.wall + d }
    }

    #[test]
    fn a_late_renewal_reply_never_lengthens_a_lease_extend_shortened() {
        let (backend, entered, open) = gated(true, 0);
        let core = Arc::new(mem_core(backend));
        let a = core.try_once(&keys(), WANT).unwrap().unwrap();
        // Confirmed long ago: the watchdog renews it at once (60 s lease).
        let lease = tenure_of(&a, WANT, Duration::from_secs(30));
        let (watchdog, thread) = Watchdog::spawn(core.clone()).unwrap();
        watchdog.register(lease.clone());
        entered.recv_timeout(Duration::from_secs(5)).expect("the renewal is in flight");
        // The holder shortens its lease while the renewal (60 s) is in flight.
        let extend = {
            let (core, lease) = (core.clone(), lease.clone());
            std::thread::spawn(move || core.extend(&lease, 1_000))
        };
        std::thread::sleep(Duration::from_millis(50));
        open.send(()).unwrap();
        let extended_by = Stamp::now();
        extend.join().unwrap().unwrap();
        let t = Instant::now();
        while core.stats.renewals.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "the renewal's reply was handled");
            std::thread::sleep(Duration::from_millis(1));
        }
        let done = Stamp::now();
        assert_eq!(lease.lease_ms(), 1_000, "renewals now ask for the shorter lease");
        // Redis was last told 1 s, so the client's view ends at most 1 s after the
        // extend was sent: a third of it later, the lease is no longer fresh.
        assert!(lease.is_fresh(done), "confirmed just now");
        assert!(
            !lease.is_fresh(plus(extended_by, Duration::from_millis(400))),
            "a late 60 s renewal reply overwrote the 1 s extend"
        );
        drop(watchdog);
        thread.join().unwrap();
    }

    #[test]
    fn a_suspended_machine_does_not_keep_a_lease_fresh() {
        let core = mem_core(MemBackend::default());
        let a = core.try_once(&keys(), WANT).unwrap().unwrap();
        let confirmed = Stamp::now();
        let lease = Lease::new(keys(), a.token, WANT.lease_ms, confirmed, None, 0);
        assert!(lease.is_fresh(plus(confirmed, Duration::from_secs(1))));
        // Resumed after a 10 min suspend: CLOCK_MONOTONIC moved 1 ms, the wall clock
        // (and Redis's clock, which expired the 60 s lease) 10 min.
        let resumed =
            Stamp { mono: confirmed.mono + Duration::from_millis(1), wall: confirmed.wall + Duration::from_secs(600) };
        assert!(!lease.is_fresh(resumed), "a lease Redis let expire during the suspend looks fresh");
        let (until_due, _) = lease.schedule(resumed);
        assert_eq!(until_due, Duration::ZERO, "its renewal is due at once, and will find it lost");
    }

    #[test]
    fn the_watchdog_survives_a_panic_in_a_renewal() {
        let (backend, _, _) = gated(false, 1);
        let core = Arc::new(mem_core(backend));
        let a = core.try_once(&keys(), WANT).unwrap().unwrap();
        let lease = tenure_of(&a, WANT, Duration::from_secs(30));
        let (watchdog, thread) = Watchdog::spawn(core.clone()).unwrap();
        watchdog.register(lease.clone());
        let t = Instant::now();
        while core.stats.renewals.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "no renewal after the panicking one");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!lease.is_lost());
        assert!(lease.is_fresh(Stamp::now()), "renewed after the panic");
        drop(watchdog);
        thread.join().expect("the thread ended normally");
    }
}
