//! The registry alone: wake-ups, claims, grants, leaving.

use super::*;
use std::time::Duration;

fn target(t: &str) -> HandoffTarget {
    HandoffTarget { token: t.into(), lease_ms: 1000, fencing: false, auto_renew: true, replicas: None }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_millis(20)
}

#[test]
fn notify_wakes_only_the_first_waiter() {
    let r = Registry::new();
    let a = r.register("x".into(), target("a"));
    let b = r.register("x".into(), target("b"));
    assert!(r.wake_first("x"));
    assert!(!r.wake_first("y"));
    assert_eq!(a.sleep_until(soon()), Woken::Notified);
    assert_eq!(b.sleep_until(soon()), Woken::TimedOut);
}

#[test]
fn wake_ups_coalesce_and_are_kept_while_busy() {
    let r = Registry::new();
    let a = r.register("x".into(), target("a"));
    r.wake_first("x");
    r.wake_first("x");
    assert_eq!(a.sleep_until(soon()), Woken::Notified);
    assert_eq!(a.sleep_until(soon()), Woken::TimedOut);
}

#[test]
fn a_leaving_waiter_passes_its_wake_up_on() {
    let r = Registry::new();
    let a = r.register("x".into(), target("a"));
    let b = r.register("x".into(), target("b"));
    r.wake_first("x");
    assert_eq!(a.leave(), Leave::Left);
    assert_eq!(b.sleep_until(soon()), Woken::Notified);
    assert_eq!(r.waiting("x"), 1);
    b.finish();
    assert_eq!(r.waiting("x"), 0);
    assert!(lock(&r.queues).is_empty(), "empty queues are removed");
}

#[test]
fn a_first_waiter_that_leaves_wakes_the_next_if_it_relies_on_it() {
    let r = Registry::new();
    let a = r.register("x".into(), target("a"));
    let b = r.register("x".into(), target("b"));
    let c = r.register("x".into(), target("c"));
    let d = r.register("x".into(), target("d"));
    assert!(a.is_first() && !b.is_first());
    c.rely_on_first(true);
    assert_eq!(b.leave(), Leave::Left);
    assert_eq!(c.sleep_until(soon()), Woken::TimedOut, "a waiter behind the first leaves quietly");
    assert_eq!(a.leave(), Leave::Left);
    assert!(c.is_first());
    assert_eq!(c.sleep_until(soon()), Woken::Notified, "the new first waiter takes over the watch");
    assert_eq!(c.leave(), Leave::Left);
    assert_eq!(d.sleep_until(soon()), Woken::TimedOut, "a waiter with its own time bound is not woken");
}

#[test]
fn a_finished_waiter_passes_nothing_on() {
    let r = Registry::new();
    let a = r.register("x".into(), target("a"));
    let b = r.register("x".into(), target("b"));
    r.wake_first("x");
    a.finish();
    assert_eq!(b.sleep_until(soon()), Woken::TimedOut);
}

#[test]
fn claims_go_to_the_first_unclaimed_waiter_and_grant_wakes_it() {
    let r = Registry::new();
    let a = r.register("x".into(), target("a"));
    let b = r.register("x".into(), target("b"));
    let c1 = r.claim_first("x").unwrap();
    assert_eq!(c1.target().token, "a");
    let c2 = r.claim_first("x").unwrap();
    assert_eq!(c2.target().token, "b");
    assert!(r.claim_first("x").is_none());
    let grant = Grant { fence: 7, at: Stamp::now(), turn: 0, epoch: 0, from_another_client: None };
    c1.grant(grant.clone());
    assert_eq!(a.sleep_until(soon()), Woken::Notified);
    assert_eq!(a.granted(), Some(grant));
    assert_eq!(r.waiting("x"), 1);
    drop(c2); // not granted: b is queued again and can be claimed again
    assert_eq!(b.granted(), None);
    assert!(r.claim_first("x").is_some());
}

#[test]
fn a_claimed_waiter_that_leaves_waits_for_the_outcome() {
    let handed = Grant { fence: 3, at: Stamp::now(), turn: 0, epoch: 0, from_another_client: None };
    for grant in [true, false] {
        let r = Registry::new();
        let a = r.register("x".into(), target("a"));
        let claim = r.claim_first("x").unwrap();
        let given = handed.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            if grant {
                claim.grant(given);
            }
        });
        let out = a.leave();
        releaser.join().unwrap();
        assert_eq!(out, if grant { Leave::Granted(handed.clone()) } else { Leave::Left });
        assert_eq!(r.waiting("x"), 0);
    }
}

#[test]
fn wake_all_reaches_every_waiter() {
    let r = Registry::new();
    let ws: Vec<_> = (0..5).map(|i| r.register(format!("n{}", i % 2).into(), target("t"))).collect();
    assert_eq!(r.wake_all(), 5);
    for w in &ws {
        assert_eq!(w.sleep_until(soon()), Woken::Notified);
    }
    drop(ws);
    assert!(lock(&r.queues).is_empty());
}
