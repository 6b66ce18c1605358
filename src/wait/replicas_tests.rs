//! `wait_replicas` in the protocol, against the in-memory backend told how many
//! replicas acknowledge: nothing too few acknowledged is relied on, and the shortfall
//! is a transient error that `lock` retries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::tests::{WANT, keys, mem_core};
use super::*;
use crate::backend::mem::MemBackend;

const ONE: Replicas = Replicas { count: 1, timeout_ms: 10 };
const ACKED: Want = Want { replicas: Some(ONE), ..WANT };

fn core_and_backend() -> (Arc<Core>, Arc<MemBackend>) {
    let backend = Arc::new(MemBackend::default());
    (Arc::new(mem_core(backend.clone())), backend)
}

/// Spins until `cond` holds; panics with `what` after 10 s.
fn until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn not_acknowledged(r: Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(Error::ReplicasNotAcknowledged { wanted: 1, got: 0, .. }))
}

#[test]
fn an_acquisition_too_few_replicas_acknowledge_is_a_transient_error_and_not_held() {
    let (core, backend) = core_and_backend();
    backend.acks.store(0, Ordering::SeqCst);
    let err = core.try_lock(&keys(), ACKED).map(|h| h.is_some());
    assert!(not_acknowledged(err.clone()), "{err:?}");
    assert!(err.unwrap_err().is_transient());
    assert_eq!(core.holder(&keys()).unwrap(), None);
    assert_eq!(core.stats().acquisitions, 0);
    backend.acks.store(1, Ordering::SeqCst);
    assert!(core.try_lock(&keys(), ACKED).unwrap().is_some());
}

#[test]
fn lock_retries_a_shortfall_within_its_outage_tolerance() {
    let (core, backend) = core_and_backend();
    backend.acks.store(0, Ordering::SeqCst);
    let t = Instant::now();
    assert!(not_acknowledged(core.lock(&keys(), ACKED).map(|_| ())));
    assert!(t.elapsed() >= Duration::from_millis(300), "retried for the tolerance: {:?}", t.elapsed());
    assert!(core.stats().attempts > 2, "{:?}", core.stats());

    let restore = {
        let backend = backend.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            backend.acks.store(1, Ordering::SeqCst);
        })
    };
    core.lock(&keys(), ACKED).expect("acknowledged once the replica is back");
    restore.join().unwrap();
}

#[test]
fn a_handoff_too_few_replicas_acknowledge_is_undone_and_the_waiter_asks_itself() {
    let (core, backend) = core_and_backend();
    // Not renewed: its release goes through the backend, handing the lock over there.
    let first = core.try_lock(&keys(), Want { auto_renew: false, ..ACKED }).unwrap().unwrap();
    let waiter = {
        let c = core.clone();
        std::thread::spawn(move || c.lock_until(&keys(), ACKED, Instant::now() + Duration::from_secs(10)))
    };
    until("the waiter to attempt", || core.waiting("job") > 0 && core.stats().attempts >= 2);
    backend.acks.store(0, Ordering::SeqCst);
    core.release(&first.tenure).expect("the releaser's own release went through");
    assert_eq!(core.stats().handoffs, 0, "not counted as handed over");
    // The waiter asks itself, and keeps asking while the replicas fall short.
    let attempts = core.stats().attempts;
    until("the waiter to attempt again", || core.stats().attempts >= attempts + 2);
    assert_eq!(core.holder(&keys()).unwrap(), None, "nobody holds it on the strength of too few replicas");
    backend.acks.store(1, Ordering::SeqCst);
    let second = waiter.join().unwrap().unwrap().expect("the waiter gets it by its own attempt");
    assert_eq!(core.holder(&keys()).unwrap().unwrap().token, second.tenure.token);
}

#[test]
fn an_extend_too_few_replicas_acknowledge_keeps_the_lock_and_the_lease_it_had() {
    let (core, backend) = core_and_backend();
    let h = core.try_lock(&keys(), ACKED).unwrap().unwrap();
    backend.acks.store(0, Ordering::SeqCst);
    assert!(not_acknowledged(core.extend(&h.tenure, 120_000)));
    assert_eq!(h.tenure.lease_ms(), WANT.lease_ms, "renewals keep the lease it had");
    assert!(!h.tenure.is_lost());
    assert_eq!(core.holder(&keys()).unwrap().unwrap().token, h.tenure.token, "still held");
    backend.acks.store(1, Ordering::SeqCst);
    core.extend(&h.tenure, 120_000).unwrap();
    assert_eq!(h.tenure.lease_ms(), 120_000);
}

#[test]
fn only_a_tenure_acknowledged_alike_is_handed_on_in_memory() {
    let (core, _) = core_and_backend();
    let first = core.try_lock(&keys(), WANT).unwrap().unwrap();
    let waiter = {
        let c = core.clone();
        std::thread::spawn(move || c.lock(&keys(), ACKED).unwrap())
    };
    until("the waiter to attempt", || core.waiting("job") > 0 && core.stats().attempts >= 2);
    core.release(&first.tenure).unwrap();
    let second = waiter.join().unwrap();
    assert!(!Arc::ptr_eq(&second.tenure, &first.tenure), "an unacknowledged tenure is not passed on");
    assert_eq!(core.stats().local_handoffs, 0);
    assert_eq!(second.tenure.replicas, Some(ONE));
}

/// Another client's grant of the lock, owned in the backend by `token`, delivered to
/// this client's first waiter as its notifier would, with `acks` replicas said to have
/// acknowledged it.
fn grant(core: &Core, backend: &MemBackend, token: &str, acks: u32) {
    let args = AttemptArgs {
        token,
        lease_ms: 1_000,
        fence_span: 0,
        will_wait: false,
        mark: 0,
        deadline: None,
        replicas: None,
    };
    let saved = backend.acks.swap(u32::MAX, Ordering::SeqCst);
    backend.release(&keys(), ReleaseArgs::plain("holder", 0)).unwrap();
    assert!(matches!(backend.attempt(&keys(), args), Ok(Attempt::Acquired { .. })));
    backend.acks.store(saved, Ordering::SeqCst);
    let mark = core.registry.queueing(&keys().name, Stamp::now());
    let granted = Granted { token: token.to_owned(), fence: 0, lease_ms: 1_000, mark, acks };
    assert!(core.registry.granted("job", granted), "a thread waits");
}

#[test]
fn a_grant_is_relied_on_only_once_the_waiter_s_own_lease_is_acknowledged() {
    // What the releaser's replicas acknowledged (`acks`) is the grant's short lease: a
    // failover soon after would lose it. So the waiter always confirms its own lease
    // with a WAIT, and when that falls short, the grant is released again.
    for (acks, replicas_up) in [(1, true), (1, false), (0, false)] {
        let (core, backend) = core_and_backend();
        // Held by another client ("holder"), and waited for here.
        let held = AttemptArgs {
            token: "holder",
            lease_ms: 60_000,
            fence_span: 0,
            will_wait: false,
            mark: 0,
            deadline: None,
            replicas: None,
        };
        backend.attempt(&keys(), held).unwrap();
        let waiter = {
            let c = core.clone();
            std::thread::spawn(move || c.lock_until(&keys(), ACKED, Instant::now() + Duration::from_millis(500)))
        };
        // Its attempt reached the backend (the count goes up before it is sent): the
        // holder's lock says someone waited.
        until("the waiter to attempt", || {
            core.waiting("job") > 0 && backend.holder(&keys()).unwrap().is_some_and(|h| h.contended)
        });
        if !replicas_up {
            backend.acks.store(0, Ordering::SeqCst);
        }
        grant(&core, &backend, "granted", acks);
        let got = waiter.join().unwrap();
        if replicas_up {
            let hold = got.unwrap().expect("taken once its own lease was acknowledged");
            assert_eq!(hold.tenure.token, "granted");
            assert_eq!(core.stats().grants, 1);
        } else {
            assert!(not_acknowledged(got.map(|h| h.is_some())), "acks {acks}: confirmed with a WAIT, which fell short");
            assert_eq!(core.holder(&keys()).unwrap(), None, "the grant was released again");
            assert_eq!(core.stats().grants, 0);
        }
    }
}
