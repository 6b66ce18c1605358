//! The in-process fast path of read-write locks and semaphores, on the fake backend
//! of `shared_tests`: a permit passes in memory to a waiting thread of the same
//! client (at most `handoff_limit` times), only one waiting thread per class asks
//! Redis and its entry passes on with a handoff, readers join a read share while no
//! writer waits and within the join window, a lost share is lost for every reader of
//! it, and `handoff_limit(0)` keeps every thread asking Redis.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::shared::JOIN_WINDOW;
use super::shared_tests::{Fake, PERMIT, WithShared, sem_keys};
use super::*;
use crate::backend::mem::MemBackend;
use crate::keys::Kind;

const READ: SharedWant = SharedWant { side: Side::Shared, permits: 0, lease_ms: 60_000, auto_renew: true };
const WRITE: SharedWant = SharedWant { side: Side::Exclusive, ..READ };

fn rw_keys() -> LockKeys {
    LockKeys::shared("t", "catalog", Kind::RwLock).unwrap()
}

fn core_over(fake: &Arc<Fake>, handoff_limit: u32) -> Arc<Core> {
    let settings =
        Settings { max_sleep: Duration::from_secs(60), outage_tolerance: Duration::from_millis(300), handoff_limit };
    let registry = Registry::new();
    ReleaseSink::set_listening(&*registry, true);
    let backend = WithShared { mem: MemBackend::default(), fake: fake.clone() };
    Arc::new(Core::new(Arc::new(backend), registry, Arc::new(Counters::default()), settings).unwrap())
}

fn until(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `n` threads that each acquire with `want` and send their hold.
fn waiters(core: &Arc<Core>, keys: LockKeys, want: SharedWant, n: usize) -> mpsc::Receiver<Hold> {
    let (tx, rx) = mpsc::channel();
    for _ in 0..n {
        let (core, keys, tx) = (core.clone(), keys.clone(), tx.clone());
        std::thread::spawn(move || tx.send(core.acquire_shared(&keys, want).unwrap()).unwrap());
    }
    rx
}

#[test]
fn a_permit_passes_in_memory_and_only_one_waiting_thread_asks_redis() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 8);
    fake.free.store(true, Ordering::SeqCst);
    let first = core.acquire_shared(&sem_keys(), PERMIT).unwrap();
    let rx = waiters(&core, sem_keys(), PERMIT, 3);
    until("3 waiting threads", || core.waiting_shared(&sem_keys()) == 3);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fake.attempts.load(Ordering::SeqCst), 2, "one waiting thread represents the client in Redis");
    assert_eq!(fake.queued.lock().unwrap().len(), 1);
    let mut hold = first;
    for _ in 0..3 {
        core.release_shared(&hold.tenure).unwrap();
        hold = rx.recv_timeout(Duration::from_secs(10)).expect("a waiter got the permit");
    }
    // Two passed in memory (the representative's entry moved on with the first);
    // the last waiter was the representative alone: the release went to Redis, which
    // granted it the permit.
    let s = core.stats();
    assert_eq!((s.local_handoffs, s.handoffs, s.grants, s.permit_acquisitions), (2, 2, 1, 4), "{s:?}");
    assert_eq!(fake.releases.load(Ordering::SeqCst), 1);
    assert_eq!(fake.attempts.load(Ordering::SeqCst), 2, "no waiter asked Redis after the first");
    assert_eq!(*fake.holders.lock().unwrap(), vec![hold.tenure.token.clone()]);
    assert_eq!(core.renewing(), 1, "one tenure renewed throughout");
    core.release_shared(&hold.tenure).unwrap();
    assert!(fake.holders.lock().unwrap().is_empty() && fake.queued.lock().unwrap().is_empty());
}

#[test]
fn a_tenure_passes_in_memory_at_most_handoff_limit_times() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 8);
    fake.free.store(true, Ordering::SeqCst);
    let hold = core.acquire_shared(&sem_keys(), PERMIT).unwrap();
    for _ in 0..7 {
        hold.tenure.count_local_handoff();
    }
    let rx = waiters(&core, sem_keys(), PERMIT, 3);
    until("3 waiting threads", || core.waiting_shared(&sem_keys()) == 3);
    core.release_shared(&hold.tenure).unwrap();
    let next = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((next.tenure.token.as_str(), next.tenure.local_handoffs()), (hold.tenure.token.as_str(), 8));
    assert_eq!(fake.releases.load(Ordering::SeqCst), 0, "the 8th handoff was in memory");
    core.release_shared(&next.tenure).unwrap();
    let after = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(fake.releases.load(Ordering::SeqCst), 1, "the 9th went through Redis (owner-checked)");
    assert_ne!(after.tenure.token, hold.tenure.token, "a new tenure, granted by Redis");
}

#[test]
fn readers_join_a_read_share_of_their_client_and_the_last_one_releases_it() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 8);
    fake.free.store(true, Ordering::SeqCst);
    let r1 = core.acquire_shared(&rw_keys(), READ).unwrap();
    let r2 = core.acquire_shared(&rw_keys(), READ).unwrap();
    let r3 = core.try_acquire_shared(&rw_keys(), READ).unwrap().expect("a try joins too");
    assert!(Arc::ptr_eq(&r1.tenure, &r2.tenure) && Arc::ptr_eq(&r1.tenure, &r3.tenure));
    let s = core.stats();
    assert_eq!((fake.attempts.load(Ordering::SeqCst), s.read_joins, s.read_acquisitions), (1, 2, 3));
    core.release_shared(&r1.tenure).unwrap();
    core.release_shared(&r3.tenure).unwrap();
    assert_eq!(fake.releases.load(Ordering::SeqCst), 0, "another reader still shares it");
    core.release_shared(&r2.tenure).unwrap();
    assert_eq!(fake.releases.load(Ordering::SeqCst), 1, "the last reader released it in Redis");
    assert_eq!(core.renewing(), 0);
}

#[test]
fn no_reader_joins_while_a_writer_of_the_client_waits() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 8);
    fake.free.store(true, Ordering::SeqCst);
    let r1 = core.acquire_shared(&rw_keys(), READ).unwrap();
    let writer = waiters(&core, rw_keys(), WRITE, 1);
    until("the writer to queue", || fake.queued.lock().unwrap().len() == 1);
    let reader = waiters(&core, rw_keys(), READ, 1);
    until("the reader to queue behind it", || fake.queued.lock().unwrap().len() == 2);
    assert_eq!(core.stats().read_joins, 0);
    core.release_shared(&r1.tenure).unwrap();
    let w = writer.recv_timeout(Duration::from_secs(10)).expect("the writer got in first");
    assert!(reader.recv_timeout(Duration::from_millis(50)).is_err());
    core.release_shared(&w.tenure).unwrap();
    reader.recv_timeout(Duration::from_secs(10)).expect("then the reader");
}

#[test]
fn readers_join_only_within_the_window_of_a_request_that_found_no_one_queued() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 8);
    fake.free.store(true, Ordering::SeqCst);
    let r1 = core.acquire_shared(&rw_keys(), READ).unwrap();
    std::thread::sleep(JOIN_WINDOW + Duration::from_millis(10));
    assert!(core.try_acquire_shared(&rw_keys(), READ).unwrap().is_none(), "asked Redis, which said no");
    assert_eq!((fake.attempts.load(Ordering::SeqCst), core.stats().read_joins), (2, 0));
    core.release_shared(&r1.tenure).unwrap();
}

#[test]
fn a_lost_read_share_is_lost_for_every_reader_of_the_client() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 8);
    fake.free.store(true, Ordering::SeqCst);
    let r1 = core.acquire_shared(&rw_keys(), READ).unwrap();
    let r2 = core.acquire_shared(&rw_keys(), READ).unwrap();
    fake.holders.lock().unwrap().clear();
    assert!(!core.is_held(&r1.tenure).unwrap());
    assert!(r2.tenure.is_lost(), "the joined reader sees the loss too");
    assert!(matches!(core.release_shared(&r2.tenure), Err(Error::LockLost { .. })));
    assert!(matches!(core.release_shared(&r1.tenure), Err(Error::LockLost { .. })));
    assert_eq!(core.stats().leases_lost, 1);
}

#[test]
fn with_handoff_limit_0_every_waiting_thread_asks_redis_and_nothing_passes_in_memory() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 0);
    fake.free.store(true, Ordering::SeqCst);
    let first = core.acquire_shared(&sem_keys(), PERMIT).unwrap();
    let rx = waiters(&core, sem_keys(), PERMIT, 3);
    until("3 queued threads", || fake.queued.lock().unwrap().len() == 3);
    core.release_shared(&first.tenure).unwrap();
    let next = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_ne!(next.tenure.token, first.tenure.token);
    assert_eq!((core.stats().local_handoffs, fake.releases.load(Ordering::SeqCst)), (0, 1));
    fake.free.store(true, Ordering::SeqCst);
    let r1 = core.acquire_shared(&rw_keys(), READ).unwrap();
    fake.free.store(true, Ordering::SeqCst);
    let r2 = core.acquire_shared(&rw_keys(), READ).unwrap();
    assert!(!Arc::ptr_eq(&r1.tenure, &r2.tenure), "no join");
}

#[test]
fn a_reader_leaving_a_share_that_is_not_fresh_asks_redis_whether_it_held() {
    let fake = Arc::new(Fake::default());
    let core = core_over(&fake, 8);
    fake.free.store(true, Ordering::SeqCst);
    let (r1, r2, r3) = (
        core.acquire_shared(&rw_keys(), READ).unwrap(),
        core.acquire_shared(&rw_keys(), READ).unwrap(),
        core.acquire_shared(&rw_keys(), READ).unwrap(),
    );
    // As after a stall past the lease: no longer fresh, and Redis still has it.
    r1.tenure.recheck(crate::clock::Stamp::now());
    core.release_shared(&r1.tenure).unwrap();
    // Now Redis has let it go: the next reader to leave is told.
    fake.holders.lock().unwrap().clear();
    assert!(matches!(core.release_shared(&r2.tenure), Err(Error::LockLost { .. })));
    assert!(r3.tenure.is_lost(), "and every reader of the share");
    assert!(matches!(core.release_shared(&r3.tenure), Err(Error::LockLost { .. })));
}
