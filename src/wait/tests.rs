//! The protocol against the in-memory backend: no server needed. Each behaviour that
//! depends on whether the backend grants is run both ways.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::*;
use crate::backend::mem::MemBackend;
use crate::backend::{Attempt, AttemptArgs, Capability, ReleaseArgs, Released, Renewal};
use crate::holder::Holder;

pub(crate) fn mem_core(backend: impl Backend) -> Core {
    let settings =
        Settings { max_sleep: Duration::from_secs(60), outage_tolerance: Duration::from_millis(300), handoff_limit: 8 };
    let registry = Registry::new();
    crate::backend::ReleaseSink::set_listening(&*registry, true);
    Core::new(Arc::new(backend), registry, Arc::new(Counters::default()), settings).unwrap()
}

pub(crate) const WANT: Want = Want { lease_ms: 60_000, fencing: false, auto_renew: true, replicas: None };

/// Not renewed: never handed on in memory, so its release goes through the backend.
pub(super) const UNRENEWED: Want = Want { auto_renew: false, ..WANT };

pub(crate) fn keys() -> LockKeys {
    LockKeys::new("t", "job").unwrap()
}

pub(super) fn counter(core: &Core, c: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
    c(&core.stats).load(Ordering::SeqCst)
}

/// A thread waiting (asleep, after its failed attempt) for the lock with `want`.
pub(super) fn waiting_thread(core: &Arc<Core>, want: Want) -> std::thread::JoinHandle<Hold> {
    let attempts = counter(core, |c| &c.attempts);
    let c = core.clone();
    let t = std::thread::spawn(move || c.lock(&keys(), want).unwrap());
    while counter(core, |c| &c.attempts) == attempts || core.waiting("job") == 0 {
        std::thread::yield_now();
    }
    t
}

/// A tenure of the lock `h` holds, confirmed `age` ago, marked as renewed (as a guard's
/// with `auto_renew`) without a watchdog renewing it.
fn tenure_of(h: &Hold, want: Want, age: Duration) -> Arc<Tenure> {
    let mut at = Stamp::now();
    at.mono -= age;
    at.wall -= age;
    let t = Arc::new(Tenure::new(keys(), h.tenure.token.clone(), want.lease_ms, at, h.fence, 0));
    *crate::sync::lock(t.renewing()) = Some(u64::MAX);
    t
}

#[test]
fn try_lock_does_not_wait() {
    let core = mem_core(MemBackend::default());
    let a = core.try_lock(&keys(), WANT).unwrap().unwrap();
    assert!(core.try_lock(&keys(), WANT).unwrap().is_none());
    core.release(&a.tenure).unwrap();
    assert!(core.try_lock(&keys(), WANT).unwrap().is_some());
}

#[test]
fn a_release_hands_the_lock_to_the_waiting_thread() {
    let core = Arc::new(mem_core(MemBackend::default()));
    let first = core.try_lock(&keys(), UNRENEWED).unwrap().unwrap();
    let waiter = waiting_thread(&core, WANT);
    core.release(&first.tenure).unwrap();
    let second = waiter.join().unwrap();
    let s = core.stats();
    assert_eq!((s.handoffs, s.local_handoffs), (1, 0), "through the backend: the holder was not renewed");
    assert_eq!(s.wakeups_timeout, 0, "woken by the handoff, not by its 60 s lease bound");
    assert_eq!(s.attempts, 2, "the waiter did not ask again");
    assert_eq!(core.holder(&keys()).unwrap().unwrap().token, second.tenure.token);
}

#[test]
fn a_backend_that_cannot_grant_wakes_the_waiter_to_compete() {
    let core = Arc::new(mem_core(MemBackend::new(false)));
    let first = core.try_lock(&keys(), UNRENEWED).unwrap().unwrap();
    let waiter = waiting_thread(&core, WANT);
    core.release(&first.tenure).unwrap();
    let second = waiter.join().unwrap();
    let s = core.stats();
    assert_eq!(s.handoffs, 0, "nothing handed over");
    assert_eq!(s.attempts, 3, "the woken waiter attempted and won");
    assert_eq!((s.wakeups_notified, s.wakeups_timeout), (1, 0), "woken by the release, not by a timeout");
    assert_eq!(core.holder(&keys()).unwrap().unwrap().token, second.tenure.token);
}

#[test]
fn threads_of_one_client_share_the_lock_fairly() {
    for grants in [true, false] {
        let core = Arc::new(mem_core(MemBackend::new(grants)));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (core, stop) = (core.clone(), stop.clone());
                // Half the threads unrenewed: their releases go through the backend.
                let want = if i % 2 == 0 { WANT } else { UNRENEWED };
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let g = core.lock(&keys(), want).unwrap();
                        n += 1;
                        core.release(&g.tenure).unwrap();
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let counts: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let total: u32 = counts.iter().sum();
        assert!(total > 100, "grants {grants}: {counts:?}");
        // Under heavy load a lone runnable thread may re-take a lock nobody waits for
        // yet; FIFO handoff still keeps every thread well above starvation.
        for c in &counts {
            assert!(*c * 20 >= total, "grants {grants}: a thread got under 5% of {total}: {counts:?}");
        }
    }
}

#[test]
fn a_deadline_gives_none_in_time() {
    let core = mem_core(MemBackend::default());
    let _held = core.try_lock(&keys(), WANT).unwrap().unwrap();
    let t = Instant::now();
    let got = core.lock_until(&keys(), WANT, t + Duration::from_millis(100)).unwrap();
    assert!(got.is_none());
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(350), "{waited:?}");
    assert_eq!(core.waiting("job"), 0);
}

#[test]
fn an_expired_holder_is_outwaited_without_notification() {
    let core = mem_core(MemBackend::default());
    core.try_lock(&keys(), Want { lease_ms: 50, ..UNRENEWED }).unwrap().unwrap();
    let t = Instant::now();
    core.lock(&keys(), WANT).unwrap();
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    assert!(core.stats().wakeups_timeout >= 1);
}

#[test]
fn outages_are_retried_then_reported() {
    let backend = MemBackend::default();
    backend.fail_attempts.store(3, Ordering::SeqCst);
    let core = mem_core(backend);
    core.lock(&keys(), WANT).expect("recovers within tolerance");

    let backend = MemBackend::default();
    backend.fail_attempts.store(u32::MAX, Ordering::SeqCst);
    let core = mem_core(backend);
    let t = Instant::now();
    let err = core.lock(&keys(), WANT).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300), "gave up after the tolerance");
    let t = Instant::now();
    let err = core.lock_until(&keys(), WANT, t + Duration::from_millis(100)).unwrap_err();
    assert!(err.is_transient());
    assert!(t.elapsed() < Duration::from_millis(300), "a deadline ends retries: {:?}", t.elapsed());
    assert_eq!(core.waiting("job"), 0);
}

#[test]
fn a_local_handoff_passes_the_tenure_without_asking_the_backend() {
    for grants in [true, false] {
        let core = Arc::new(mem_core(MemBackend::new(grants)));
        let first = core.try_lock(&keys(), WANT).unwrap().unwrap();
        let waiter = waiting_thread(&core, WANT);
        let attempts = core.stats().attempts;
        core.release(&first.tenure).unwrap();
        let second = waiter.join().unwrap();
        assert!(Arc::ptr_eq(&second.tenure, &first.tenure), "the same tenure, renewed by the same watchdog entry");
        assert_eq!(core.holder(&keys()).unwrap().unwrap().token, first.tenure.token, "Redis still lists its token");
        let s = core.stats();
        assert_eq!((s.local_handoffs, s.handoffs, s.releases), (1, 1, 1), "grants {grants}");
        assert_eq!(s.attempts, attempts, "no attempt after the handoff");
        assert_eq!(s.wakeups_timeout, 0);
        assert_eq!(first.tenure.local_handoffs(), 1);
        assert_eq!(core.renewing(), 1, "one tenure renewed");
    }
}

#[test]
fn local_handoffs_stop_at_the_limit() {
    let core = Arc::new(mem_core(MemBackend::default()));
    let first = core.try_lock(&keys(), WANT).unwrap().unwrap();
    let limit = core.settings.handoff_limit;
    for _ in 0..limit {
        let waiter = waiting_thread(&core, WANT);
        assert!(core.hand_over_locally(&first.tenure));
        assert!(Arc::ptr_eq(&waiter.join().unwrap().tenure, &first.tenure));
    }
    let waiter = waiting_thread(&core, WANT);
    assert!(!core.hand_over_locally(&first.tenure), "the limit sends the next release to Redis");
    assert_eq!(core.waiting("job"), 1, "the waiter is queued again, unharmed");
    core.release(&first.tenure).unwrap();
    let last = waiter.join().unwrap();
    assert!(!Arc::ptr_eq(&last.tenure, &first.tenure), "a handoff through the backend starts a new tenure");
    assert_ne!(last.tenure.token, first.tenure.token);
    assert_eq!(core.renewing(), 1, "the old tenure's renewal stopped, the new one's started");
}

#[test]
fn a_lease_not_confirmed_lately_is_not_handed_on() {
    let core = Arc::new(mem_core(MemBackend::default()));
    let first = core.try_lock(&keys(), WANT).unwrap().unwrap();
    // Confirmed a renewal period ago: the process may have stalled past its lease,
    // or Redis may have forgotten it, without the watchdog knowing yet.
    let stale = tenure_of(&first, WANT, Duration::from_millis(WANT.lease_ms / 3));
    let waiter = waiting_thread(&core, WANT);
    assert!(!core.hand_over_locally(&stale));
    let lost = tenure_of(&first, WANT, Duration::ZERO);
    lost.mark_lost(&core.stats, &core.registry, "test");
    assert!(!core.hand_over_locally(&lost));
    assert_eq!(core.stats().local_handoffs, 0);
    first.tenure.confirmed(Stamp::now() - Duration::from_secs(30), WANT.lease_ms);
    core.release(&first.tenure).unwrap();
    assert!(!Arc::ptr_eq(&waiter.join().unwrap().tenure, &first.tenure));
}

impl std::ops::Sub<Duration> for Stamp {
    type Output = Stamp;
    fn sub(self, d: Duration) -> Stamp {
        Stamp { mono: self.mono - d, wall: self.wall - d }
    }
}

#[test]
fn only_acquisitions_alike_share_a_tenure() {
    let core = Arc::new(mem_core(MemBackend::default()));
    for other in [Want { lease_ms: 1_000, ..WANT }, Want { fencing: true, ..WANT }, UNRENEWED] {
        let holder = core.try_lock(&keys(), WANT).unwrap().unwrap();
        let waiter = waiting_thread(&core, other);
        assert!(!core.hand_over_locally(&holder.tenure), "{other:?}");
        core.release(&holder.tenure).unwrap();
        let g = waiter.join().unwrap();
        assert!(!Arc::ptr_eq(&g.tenure, &holder.tenure), "{other:?}: its own tenure, through the backend");
        core.release(&g.tenure).unwrap();
    }
    assert_eq!(core.stats().local_handoffs, 0);
}

#[test]
fn fencing_tokens_of_local_handoffs_rise_inside_their_block() {
    let core = Arc::new(mem_core(MemBackend::default()));
    let fenced = Want { fencing: true, ..WANT };
    let first = core.try_lock(&keys(), fenced).unwrap().unwrap();
    assert_eq!(first.fence, Some(1));
    let mut fences = vec![1];
    for _ in 0..core.settings.handoff_limit {
        let waiter = waiting_thread(&core, fenced);
        assert!(core.hand_over_locally(&first.tenure));
        fences.push(waiter.join().unwrap().fence.unwrap());
    }
    core.release(&first.tenure).unwrap();
    let next = core.try_lock(&keys(), fenced).unwrap().unwrap();
    fences.push(next.fence.unwrap());
    let span = u64::from(core.settings.handoff_limit) + 1;
    assert_eq!(fences, (1..=span + 1).collect::<Vec<_>>(), "the next acquisition starts the next block");
}

#[test]
fn releasing_a_lock_no_longer_owned_reports_lock_lost() {
    let core = mem_core(MemBackend::default());
    let a = core.try_lock(&keys(), WANT).unwrap().unwrap();
    core.force_unlock(&keys()).unwrap();
    assert!(core.release(&a.tenure).unwrap_err().is_lock_lost());
    assert!(a.tenure.is_lost());
}

// ---- the watchdog and the lease view ------------------------------------------

/// A backend whose renewals from the watchdog thread wait at a gate (and, with
/// `panics`, whose first renewals panic); everything else is `MemBackend`'s.
pub(super) struct Gated {
    mem: MemBackend,
    entered: Sender<()>,
    gate: Receiver<()>,
    gated: bool,
    panics: AtomicU32,
}

pub(super) fn gated(gated: bool, panics: u32) -> (Gated, Receiver<()>, Sender<()>) {
    let (entered, entered_rx) = crossbeam_channel::unbounded();
    let (open, gate) = crossbeam_channel::unbounded();
    (Gated { mem: MemBackend::default(), entered, gate, gated, panics: AtomicU32::new(panics) }, entered_rx, open)
}

impl Backend for Gated {
    fn grants(&self) -> bool {
        true
    }
    fn attempt(&self, keys: &LockKeys, args: AttemptArgs<'_>) -> Result<Attempt> {
        self.mem.attempt(keys, args)
    }
    fn release(&self, keys: &LockKeys, args: ReleaseArgs<'_>) -> Result<Released> {
        self.mem.release(keys, args)
    }
    fn leave(&self, keys: &LockKeys) -> Result<()> {
        self.mem.leave(keys)
    }
    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
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
    fn extend_acknowledged(&self, keys: &LockKeys, token: &str, lease_ms: u64, r: Replicas) -> Result<bool> {
        self.mem.extend_acknowledged(keys, token, lease_ms, r)
    }
    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        self.mem.holder(keys)
    }
    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        self.mem.force_unlock(keys)
    }
    fn vouched_ms(&self, lease_ms: u64) -> u64 {
        self.mem.vouched_ms(lease_ms)
    }
    fn max_lease(&self) -> Option<Duration> {
        self.mem.max_lease()
    }
    fn refuses(&self, c: Capability) -> Option<&'static str> {
        self.mem.refuses(c)
    }
}

/// `at` moved on by `d` on both clocks.
fn plus(at: Stamp, d: Duration) -> Stamp {
    Stamp { mono: at.mono + d, wall: at.wall + d }
}

/// A lock held with `want`, its tenure confirmed 30 s ago: the watchdog renews it at
/// once (60 s lease).
fn due_for_renewal(core: &Core) -> Arc<Tenure> {
    let h = core.try_lock(&keys(), UNRENEWED).unwrap().unwrap();
    h.tenure.confirmed(Stamp::now() - Duration::from_secs(30), WANT.lease_ms);
    core.watchdog.register(&h.tenure);
    h.tenure
}

#[test]
fn a_late_renewal_reply_never_lengthens_a_lease_extend_shortened() {
    let (backend, entered, open) = gated(true, 0);
    let core = Arc::new(mem_core(backend));
    let tenure = due_for_renewal(&core);
    entered.recv_timeout(Duration::from_secs(5)).expect("the renewal is in flight");
    // The holder shortens its lease while the renewal (60 s) is in flight.
    let extend = {
        let (core, tenure) = (core.clone(), tenure.clone());
        std::thread::spawn(move || core.extend(&tenure, 1_000))
    };
    std::thread::sleep(Duration::from_millis(50));
    open.send(()).unwrap();
    let extended_by = Stamp::now();
    extend.join().unwrap().unwrap();
    let t = Instant::now();
    while core.stats().renewals == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the renewal's reply was handled");
        std::thread::sleep(Duration::from_millis(1));
    }
    let done = Stamp::now();
    assert_eq!(tenure.lease_ms(), 1_000, "renewals now ask for the shorter lease");
    // Redis was last told 1 s, so the client's view ends at most 1 s after the
    // extend was sent: a third of it later, the lease is no longer fresh.
    assert!(tenure.is_fresh(done), "confirmed just now");
    assert!(
        !tenure.is_fresh(plus(extended_by, Duration::from_millis(400))),
        "a late 60 s renewal reply overwrote the 1 s extend"
    );
}

#[test]
fn a_suspended_machine_does_not_keep_a_lease_fresh() {
    let core = mem_core(MemBackend::default());
    let h = core.try_lock(&keys(), WANT).unwrap().unwrap();
    let confirmed = Stamp::now();
    let tenure = Tenure::new(keys(), h.tenure.token.clone(), WANT.lease_ms, confirmed, None, 0);
    assert!(tenure.is_fresh(plus(confirmed, Duration::from_secs(1))));
    // Resumed after a 10 min suspend: CLOCK_MONOTONIC moved 1 ms, the wall clock
    // (and Redis's clock, which expired the 60 s lease) 10 min.
    let resumed =
        Stamp { mono: confirmed.mono + Duration::from_millis(1), wall: confirmed.wall + Duration::from_secs(600) };
    assert!(!tenure.is_fresh(resumed), "a lease Redis let expire during the suspend looks fresh");
    let (until_due, _) = tenure.schedule(resumed);
    assert_eq!(until_due, Duration::ZERO, "its renewal is due at once, and will find it lost");
}

#[test]
fn the_remaining_lease_runs_down_from_the_last_confirmation_and_counts_a_suspend() {
    let core = mem_core(MemBackend::default());
    let h = core.try_lock(&keys(), WANT).unwrap().unwrap();
    let lease = Duration::from_millis(WANT.lease_ms);
    let confirmed = Stamp::now();
    let tenure = Tenure::new(keys(), h.tenure.token.clone(), WANT.lease_ms, confirmed, None, 0);
    assert_eq!(tenure.confirmed_remaining(plus(confirmed, Duration::from_secs(20))), lease - Duration::from_secs(20));
    let suspended =
        Stamp { mono: confirmed.mono + Duration::from_millis(1), wall: confirmed.wall + Duration::from_secs(50) };
    assert_eq!(tenure.confirmed_remaining(suspended), lease - Duration::from_secs(50));
    assert_eq!(tenure.confirmed_remaining(plus(confirmed, lease * 2)), Duration::ZERO);
    // A renewal that failed leaves the count where the last confirmed one put it.
    let later = plus(confirmed, Duration::from_secs(30));
    tenure.maybe_applied(later, WANT.lease_ms);
    assert_eq!(tenure.confirmed_remaining(later), lease - Duration::from_secs(30));
    tenure.confirmed(later, WANT.lease_ms);
    assert_eq!(tenure.confirmed_remaining(later), lease);
}

#[test]
fn the_watchdog_survives_a_panic_in_a_renewal() {
    let (backend, _, _) = gated(false, 1);
    let core = mem_core(backend);
    let tenure = due_for_renewal(&core);
    let t = Instant::now();
    while core.stats().renewals == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "no renewal after the panicking one");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!tenure.is_lost());
    assert!(tenure.is_fresh(Stamp::now()), "renewed after the panic");
}
