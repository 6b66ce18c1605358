//! A server that turns out to be another one (a failover, a restart: see
//! `ReleaseSink::server_changed`), against the in-memory backend: every held lock is
//! checked at once, none is handed on in memory until confirmed again, and a lock
//! acquired by a request in flight across the change is rechecked too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tests::{UNRENEWED, WANT, counter, gated, keys, mem_core, waiting_thread};
use super::*;
use crate::backend::mem::MemBackend;
use crate::backend::{Attempt, AttemptArgs, ReleaseArgs, Released, Renewal};
use crate::holder::Holder;

#[test]
fn a_changed_server_stops_local_handoffs_until_redis_confirms_the_lease_again() {
    let (backend, entered, open) = gated(true, 0);
    let core = Arc::new(mem_core(backend));
    let h = core.lock(&keys(), WANT).unwrap();
    assert!(h.tenure.is_fresh(Stamp::now()), "just acquired");
    crate::backend::ReleaseSink::server_changed(&*core.registry);
    // The watchdog renews it at once (not in 20 s), and until that is confirmed the
    // lease is not handed on in memory.
    entered.recv_timeout(Duration::from_secs(5)).expect("renewed at once after the server changed");
    assert!(!h.tenure.is_fresh(Stamp::now()), "fresh while unconfirmed on the new server");
    let waiter = waiting_thread(&core, WANT);
    assert!(!core.hand_over_locally(&h.tenure), "handed on before the new server confirmed it");
    open.send(()).unwrap();
    let t = Instant::now();
    while !h.tenure.is_fresh(Stamp::now()) {
        assert!(t.elapsed() < Duration::from_secs(5), "confirmed again");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(core.hand_over_locally(&h.tenure));
    assert!(Arc::ptr_eq(&waiter.join().unwrap().tenure, &h.tenure));
}

#[test]
fn a_changed_server_marks_unrenewed_locks_it_lacks_lost() {
    let core = mem_core(MemBackend::default());
    let kept = core.lock(&keys(), UNRENEWED).unwrap();
    let other = LockKeys::new("t", "other").unwrap();
    let gone = core.lock(&other, UNRENEWED).unwrap();
    // The new server lacks `other`.
    core.force_unlock(&other).unwrap();
    crate::backend::ReleaseSink::server_changed(&*core.registry);
    let t = Instant::now();
    while !gone.tenure.is_lost() {
        assert!(t.elapsed() < Duration::from_secs(5), "checked at once");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!kept.tenure.is_lost());
}

/// A backend whose server turns out to be another one while an attempt is in flight.
struct ChangesDuringAttempt {
    mem: MemBackend,
    registry: std::sync::OnceLock<Arc<Registry>>,
}

impl Backend for ChangesDuringAttempt {
    fn grants(&self) -> bool {
        true
    }
    fn attempt(&self, keys: &LockKeys, args: AttemptArgs<'_>) -> Result<Attempt> {
        let out = self.mem.attempt(keys, args);
        if let Some(r) = self.registry.get() {
            crate::backend::ReleaseSink::server_changed(&**r);
        }
        out
    }
    fn release(&self, keys: &LockKeys, args: ReleaseArgs<'_>) -> Result<Released> {
        self.mem.release(keys, args)
    }
    fn leave(&self, keys: &LockKeys) -> Result<()> {
        self.mem.leave(keys)
    }
    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
        self.mem.extend(items)
    }
    fn extend_acknowledged(
        &self,
        keys: &LockKeys,
        token: &str,
        lease_ms: u64,
        replicas: crate::backend::Replicas,
    ) -> Result<bool> {
        self.mem.extend_acknowledged(keys, token, lease_ms, replicas)
    }
    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        self.mem.holder(keys)
    }
    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        self.mem.force_unlock(keys)
    }
}

#[test]
fn a_lock_acquired_across_a_server_change_is_confirmed_before_it_is_handed_on() {
    let settings =
        Settings { max_sleep: Duration::from_secs(60), outage_tolerance: Duration::from_millis(300), handoff_limit: 8 };
    let registry = Registry::new();
    crate::backend::ReleaseSink::set_listening(&*registry, true);
    let backend = Arc::new(ChangesDuringAttempt { mem: MemBackend::default(), registry: Default::default() });
    let _ = backend.registry.set(registry.clone());
    let core = Core::new(backend, registry, Arc::new(Counters::default()), settings).unwrap();
    let renewals = counter(&core, |c| &c.renewals);
    // The attempt was sent to the old server and answered after the change (and after
    // the check of every held lock, which could not see this one yet).
    let h = core.try_lock(&keys(), WANT).unwrap().unwrap();
    let t = Instant::now();
    while counter(&core, |c| &c.renewals) == renewals {
        assert!(t.elapsed() < Duration::from_secs(5), "renewed at once (its lease is 60 s)");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(h.tenure.is_fresh(Stamp::now()), "confirmed by the renewal");
}
