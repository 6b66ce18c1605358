//! Which waiting thread reads the subscriber connection itself (`Core::listen`): the
//! first waiter of a lock no tenure of its client holds, and no other, since a release
//! by a thread of its own client wakes it on its slot, which a reader does not watch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::tests::{WANT, keys, mem_core, waiting_thread};
use crate::backend::mem::MemBackend;
use crate::backend::{Attempt, AttemptArgs, Backend, Listen, ReleaseArgs, ReleaseSink};

/// A line that counts the threads that would read it, and lets none (they sleep on
/// their slots).
#[derive(Default)]
struct Counting {
    calls: AtomicU32,
}

impl Listen for Counting {
    fn listen_until(&self, _: Instant, _: &dyn Fn() -> bool) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst);
        false
    }
}

fn until(what: &str, done: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn only_a_waiter_no_thread_of_its_client_can_release_to_reads_the_line() {
    let line = Arc::new(Counting::default());
    let mut mem = MemBackend::default();
    mem.line = Some(line.clone());
    let mem = Arc::new(mem);
    let core = Arc::new(mem_core(mem.clone()));
    let calls = || line.calls.load(Ordering::SeqCst);

    // Another client holds it: the waiter reads (here: would read, then sleeps).
    let other = AttemptArgs {
        token: "another client",
        lease_ms: 60_000,
        fence_span: 0,
        will_wait: false,
        mark: 0,
        deadline: None,
        replicas: None,
    };
    assert_eq!(mem.attempt(&keys(), other).unwrap(), Attempt::Acquired { fence: 0 });
    let first = waiting_thread(&core, WANT);
    until("the waiter to ask for the line", || calls() >= 1);
    assert!(!core.holding.any("job"));
    mem.release(&keys(), ReleaseArgs::plain("another client", 60_000)).unwrap();
    core.registry.wake_first("job");
    let held = first.join().unwrap();
    assert!(core.holding.any("job"), "its tenure counts while it lives");

    // A thread of this client holds it: the waiter sleeps on its slot, where the
    // release in memory wakes it.
    let before = calls();
    let second = waiting_thread(&core, WANT);
    std::thread::sleep(Duration::from_millis(100));
    core.release(&held.tenure).unwrap();
    drop(held);
    let held = second.join().unwrap();
    assert_eq!(calls(), before, "a waiter a thread of its own client may release to must not read the line");
    assert_eq!(core.stats().local_handoffs, 1);

    core.release(&held.tenure).unwrap();
    drop(held);
    until("the last tenure to end", || !core.holding.any("job"));
}
