//! What a backend may limit (see `Backend::vouched_ms`, `max_lease`, `refuses`), on the
//! in-memory backend set up as Redlock limits it.

use std::time::Duration;

use super::tests::{WANT, keys, mem_core};
use super::*;
use crate::backend::Capability;
use crate::backend::mem::MemBackend;
use crate::options::Replicas;

fn quorum_like() -> MemBackend {
    let mut b = MemBackend::new(false);
    b.drift_ms = 100;
    b.max_lease = Some(Duration::from_secs(10));
    b.quorum_like = true;
    b
}

#[test]
fn a_lease_counts_for_what_the_backend_vouches_for_at_acquisition_and_renewal() {
    let core = mem_core(quorum_like());
    let want = Want { lease_ms: 1_000, ..WANT };
    let hold = core.try_lock(&keys(), want).unwrap().unwrap();
    let left = hold.tenure.confirmed_remaining(Stamp::now());
    assert!(left <= Duration::from_millis(900) && left > Duration::from_millis(800), "{left:?}");
    core.extend(&hold.tenure, 2_000).unwrap();
    let left = hold.tenure.confirmed_remaining(Stamp::now());
    assert!(left <= Duration::from_millis(1_900) && left > Duration::from_millis(1_800), "{left:?}");
}

#[test]
fn what_the_backend_cannot_keep_is_refused_before_any_attempt() {
    let core = mem_core(quorum_like());
    let replicas = Want { replicas: Some(Replicas { count: 1, timeout_ms: 100 }), lease_ms: 1_000, ..WANT };
    assert!(matches!(core.check(&replicas), Err(Error::InvalidOption { option: "wait_replicas", .. })));
    assert!(matches!(
        core.check(&Want { lease_ms: 10_001, ..WANT }),
        Err(Error::InvalidOption { option: "lease", .. })
    ));
    core.check(&Want { lease_ms: 10_000, ..WANT }).unwrap();
    assert_eq!(core.stats().attempts, 0);
    let single = mem_core(MemBackend::default());
    single.check(&replicas).unwrap();
    single.check(&Want { lease_ms: 1 << 40, ..WANT }).unwrap();
}

#[test]
fn a_quorum_backend_can_say_no_to_what_needs_one_server() {
    assert!(quorum_like().refuses(Capability::WaitReplicas).is_some());
    assert!(MemBackend::default().refuses(Capability::WaitReplicas).is_none());
}
