//! The wait loop of read-write locks and semaphores against a fake backend (no
//! server): grants taken without a request while fresh and confirmed first when not,
//! a grant that ran out waited past, a waiter that gives up leaves the queue, and a
//! backend without them refuses them.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::tests::mem_core;
use super::*;
use crate::backend::mem::MemBackend;
use crate::backend::{
    Attempt, AttemptArgs, LocalGrants, ReleaseArgs, Released, Renewal, SharedArgs, SharedAttempt, SharedBackend,
    SharedLeave,
};
use crate::holder::Holder;
use crate::keys::Kind;

/// Redis's side of a semaphore of one permit, as far as these tests need it: a
/// waiter is queued until the test grants it the permit (`grant_first`).
#[derive(Default)]
pub(super) struct Fake {
    pub free: AtomicBool,
    pub attempts: AtomicU32,
    pub releases: AtomicU32,
    pub leaves: AtomicU32,
    pub extends: AtomicU32,
    pub holders: StdMutex<Vec<String>>,
    pub queued: StdMutex<Vec<String>>,
}

impl Fake {
    pub fn holds(&self, token: &str) -> bool {
        self.holders.lock().unwrap().iter().any(|t| t == token)
    }

    /// A release grants the permit to the first queued waiter (of this client: the
    /// fake has one client), and tells the caller.
    fn drop_holder(&self, token: &str) -> (bool, LocalGrants) {
        let mut h = self.holders.lock().unwrap();
        let before = h.len();
        h.retain(|t| t != token);
        let released = h.len() < before;
        drop(h);
        let tokens =
            if released && !self.queued.lock().unwrap().is_empty() { vec![self.grant_first()] } else { vec![] };
        (released, LocalGrants { tokens, lease_ms: 3_000, others_queued: false })
    }

    /// What a release does: the first queued waiter holds the permit now.
    pub fn grant_first(&self) -> String {
        let token = self.queued.lock().unwrap().remove(0);
        self.holders.lock().unwrap().push(token.clone());
        token
    }
}

impl SharedBackend for Fake {
    fn attempt(&self, _: &LockKeys, a: SharedArgs<'_>) -> Result<(SharedAttempt, LocalGrants)> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.holds(a.token) || self.free.swap(false, Ordering::SeqCst) {
            self.holders.lock().unwrap().push(a.token.to_owned());
            return Ok((SharedAttempt::Acquired, LocalGrants::default()));
        }
        let mut q = self.queued.lock().unwrap();
        if a.will_wait && !q.iter().any(|t| t == a.token) {
            q.push(a.token.to_owned());
        }
        Ok((SharedAttempt::Waiting { remaining: Some(Duration::from_secs(60)) }, LocalGrants::default()))
    }
    fn release(&self, _: &LockKeys, token: &str) -> Result<(bool, LocalGrants)> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        Ok(self.drop_holder(token))
    }
    fn leave(&self, _: &LockKeys, token: &str) -> Result<(SharedLeave, LocalGrants)> {
        self.leaves.fetch_add(1, Ordering::SeqCst);
        let (released, grants) = self.drop_holder(token);
        if released {
            return Ok((SharedLeave::ReleasedGrant, grants));
        }
        let mut q = self.queued.lock().unwrap();
        let before = q.len();
        q.retain(|t| t != token);
        Ok((if q.len() < before { SharedLeave::Left } else { SharedLeave::Gone }, LocalGrants::default()))
    }
    fn holds(&self, _: &LockKeys, token: &str) -> Result<bool> {
        Ok(Fake::holds(self, token))
    }
    fn available(&self, _: &LockKeys, permits: u32) -> Result<u32> {
        Ok(permits.saturating_sub(self.holders.lock().unwrap().len() as u32))
    }
}

/// The in-memory backend for mutexes, the fake for the rest.
pub(super) struct WithShared {
    pub mem: MemBackend,
    pub fake: Arc<Fake>,
}

impl Backend for WithShared {
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
        Ok(items
            .iter()
            .map(|(_, token, _)| {
                self.fake.extends.fetch_add(1, Ordering::SeqCst);
                Ok(self.fake.holds(token))
            })
            .collect())
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
    fn shared(&self) -> std::result::Result<&dyn SharedBackend, &'static str> {
        Ok(&*self.fake)
    }
}

pub(super) const PERMIT: SharedWant = SharedWant { side: Side::Shared, permits: 1, lease_ms: 60_000, auto_renew: true };

pub(super) fn sem_keys() -> LockKeys {
    LockKeys::shared("t", "pool", Kind::Semaphore).unwrap()
}

/// A core over the fake, and a thread waiting (queued) for a permit with `want`.
fn waiting(want: SharedWant) -> (Arc<Core>, Arc<Fake>, std::thread::JoinHandle<Result<Hold>>) {
    let fake = Arc::new(Fake::default());
    let core = Arc::new(mem_core(WithShared { mem: MemBackend::default(), fake: fake.clone() }));
    let c = core.clone();
    let t = std::thread::spawn(move || c.acquire_shared(&sem_keys(), want));
    while fake.queued.lock().unwrap().is_empty() {
        std::thread::yield_now();
    }
    (core, fake, t)
}

#[test]
fn a_backend_without_them_refuses_them() {
    let core = mem_core(MemBackend::default());
    let err = core.try_acquire_shared(&sem_keys(), PERMIT).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("quorum"), "{err}");
    assert!(matches!(core.acquire_shared(&sem_keys(), PERMIT), Err(Error::Unsupported { .. })));
    assert!(matches!(core.available(&sem_keys(), 1), Err(Error::Unsupported { .. })));
}

#[test]
fn a_fresh_grant_is_taken_without_a_request() {
    let (core, fake, t) = waiting(PERMIT);
    let token = fake.grant_first();
    assert!(ReleaseSink::granted_ticket(&*core.registry, &token, 3_000));
    let hold = t.join().unwrap().unwrap();
    assert_eq!(hold.tenure.token, token);
    assert_eq!(fake.attempts.load(Ordering::SeqCst), 1, "only the attempt that queued it");
    assert_eq!(fake.extends.load(Ordering::SeqCst), 0, "the watchdog extends it later");
    assert_eq!(core.renewing(), 1);
    let s = core.stats();
    assert_eq!((s.grants, s.permit_acquisitions, s.contended_acquisitions, s.wakeups_notified), (1, 1, 1, 1));
    core.release_shared(&hold.tenure).unwrap();
    assert!(fake.holders.lock().unwrap().is_empty());
}

#[test]
fn a_grant_that_is_not_fresh_is_confirmed_first() {
    let (core, fake, t) = waiting(PERMIT);
    std::thread::sleep(Duration::from_millis(5));
    // A 3 ms grant, timed from the attempt that queued the waiter 5 ms ago.
    let token = fake.grant_first();
    assert!(ReleaseSink::granted_ticket(&*core.registry, &token, 3));
    let hold = t.join().unwrap().unwrap();
    assert_eq!(fake.extends.load(Ordering::SeqCst), 1, "extended to its lease before returning");
    assert!(hold.tenure.confirmed_remaining(crate::clock::Stamp::now()) > Duration::from_secs(50));
    // Without auto_renew, even a fresh grant is confirmed first.
    let (core, fake, t) = waiting(SharedWant { auto_renew: false, ..PERMIT });
    let token = fake.grant_first();
    assert!(ReleaseSink::granted_ticket(&*core.registry, &token, 3_000));
    t.join().unwrap().unwrap();
    assert_eq!(fake.extends.load(Ordering::SeqCst), 1);
}

#[test]
fn a_grant_that_ran_out_before_it_was_taken_is_waited_past() {
    let (core, fake, t) = waiting(PERMIT);
    std::thread::sleep(Duration::from_millis(5));
    // Told of a grant that Redis no longer has (it ran out): the extend finds nothing,
    // the waiter queues again and gets the permit by its next attempt.
    let token = fake.queued.lock().unwrap()[0].clone();
    fake.free.store(true, Ordering::SeqCst);
    assert!(ReleaseSink::granted_ticket(&*core.registry, &token, 1));
    let hold = t.join().unwrap().unwrap();
    assert_eq!(hold.tenure.token, token);
    assert_eq!((fake.extends.load(Ordering::SeqCst), fake.attempts.load(Ordering::SeqCst)), (1, 2));
    assert_eq!(core.stats().grants, 0);
}

#[test]
fn a_release_wakes_the_thread_of_its_own_client_it_granted_the_lock_to() {
    let (core, fake, t) = waiting(PERMIT);
    // Another thread of the client holds the permit and releases it: the release
    // grants it to the waiter, which is woken by the releasing thread (no message).
    fake.holders.lock().unwrap().push("held".into());
    let holder = Arc::new(Tenure::new(sem_keys(), "held".into(), 60_000, crate::clock::Stamp::now(), None, 0));
    core.release_shared(&holder).unwrap();
    let hold = t.join().unwrap().unwrap();
    assert_eq!(*fake.holders.lock().unwrap(), vec![hold.tenure.token.clone()]);
    assert_eq!((core.stats().grants, fake.attempts.load(Ordering::SeqCst)), (1, 1));
}

#[test]
fn a_waiter_whose_deadline_passes_leaves_the_queue() {
    let fake = Arc::new(Fake::default());
    let core = mem_core(WithShared { mem: MemBackend::default(), fake: fake.clone() });
    let deadline = Instant::now() + Duration::from_millis(50);
    assert!(core.acquire_shared_until(&sem_keys(), PERMIT, deadline).unwrap().is_none());
    assert!(Instant::now() >= deadline);
    assert_eq!(fake.leaves.load(Ordering::SeqCst), 1);
    assert!(fake.queued.lock().unwrap().is_empty(), "out of the queue");
    assert_eq!(core.waiting_shared(&sem_keys()), 0);
    assert!(!ReleaseSink::has_ticket(&*core.registry, "anything"));
    // A try never queues.
    assert!(core.try_acquire_shared(&sem_keys(), PERMIT).unwrap().is_none());
    assert!(fake.queued.lock().unwrap().is_empty());
}
