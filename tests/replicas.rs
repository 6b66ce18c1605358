//! `wait_replicas`: a lock is returned only once the replicas asked for have it (read
//! on the replica when `lock()` returns); when they fall short the call is a transient
//! error, the lock is not left held, `lock()` retries within its outage tolerance, and
//! a grant to another client is revoked instead of announced; invalid settings are
//! refused before any I/O.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{Error, LockClient, MutexOptions};
use support::{RedisServer, connected_with, wait_until};

use redis_mutex_harness::Replicated;

/// Generous: on a loaded machine a healthy replica answers `WAIT` in milliseconds.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// While a replica is stopped, every `WAIT` takes this long.
const SHORT_TIMEOUT: Duration = Duration::from_millis(100);

fn key(name: &str) -> String {
    format!("redis-mutex:{{{name}}}")
}

/// The owner token the server holds for lock `name`, if any.
fn owner(server: &RedisServer, name: &str) -> Option<String> {
    let o: Option<String> = redis::cmd("HGET").arg(key(name)).arg("o").query(&mut server.conn()).unwrap();
    o.filter(|o| !o.is_empty())
}

fn pttl(server: &RedisServer, name: &str) -> i64 {
    redis::cmd("PTTL").arg(key(name)).query(&mut server.conn()).unwrap()
}

fn acked(timeout: Duration) -> MutexOptions {
    MutexOptions::default().wait_replicas(1, timeout)
}

fn is_shortfall(e: &Error, wanted: u32, got: u32) -> bool {
    matches!(e, Error::ReplicasNotAcknowledged { wanted: w, got: g, .. } if (*w, *g) == (wanted, got))
}

#[test]
fn an_acknowledged_lock_is_on_the_replica_when_the_call_returns() {
    let group = Replicated::start(1);
    let replica = &group.replicas()[0];
    let client = connected_with(group.master(), LockClient::builder());

    let g = client.mutex_with("ledger", acked(ACK_TIMEOUT)).lock().unwrap();
    assert_eq!(owner(replica, "ledger").as_deref(), Some(g.token()), "lock() returned before the replica had it");
    let t = client.mutex_with("journal", acked(ACK_TIMEOUT)).try_lock().unwrap().expect("free");
    assert_eq!(owner(replica, "journal").as_deref(), Some(t.token()), "try_lock");
    t.extend(Duration::from_secs(120)).unwrap();
    assert!(pttl(replica, "journal") > 60_000, "extend returned before the replica had the new lease");

    // A handoff through Redis between two threads of the client (not renewed, so not in
    // memory): the waiting thread is returned the lock once the replica has it.
    let unrenewed = acked(ACK_TIMEOUT).auto_renew(false);
    let m = client.mutex_with("ledger2", unrenewed.clone());
    let first = m.lock().unwrap();
    let waiter = thread::spawn(move || m.lock().unwrap());
    wait_until(Duration::from_secs(10), "the thread to wait", || client.mutex("ledger2").waiting_threads() == 1);
    let handoffs = client.stats().handoffs;
    first.unlock().unwrap();
    let second = waiter.join().unwrap();
    assert_eq!(client.stats().handoffs, handoffs + 1, "handed over through Redis");
    assert_eq!(owner(replica, "ledger2").as_deref(), Some(second.token()), "handoff");
    drop((g, second));
}

#[test]
fn with_the_replica_stopped_locking_is_a_transient_error_and_leaves_the_lock_free() {
    let mut group = Replicated::start(1);
    let client = connected_with(group.master(), LockClient::builder().outage_tolerance(Duration::from_millis(500)));
    let m = client.mutex_with("ledger", acked(SHORT_TIMEOUT));

    group.replicas()[0].pause();
    let t = Instant::now();
    let err = m.try_lock().expect_err("the paused replica cannot acknowledge");
    assert!(t.elapsed() < Duration::from_secs(5), "bounded by the WAIT timeout: {:?}", t.elapsed());
    assert!(is_shortfall(&err, 1, 0) && err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("0 of the 1 replicas"), "{err}");
    assert_eq!(owner(group.master(), "ledger"), None, "the lock was left held on the master");
    assert!(!m.is_locked().unwrap());

    let before = client.stats();
    let t = Instant::now();
    let err = m.lock().expect_err("lock() gives up after its outage tolerance");
    let s = client.stats().since(&before);
    assert!(is_shortfall(&err, 1, 0), "{err:?}");
    assert!(t.elapsed() >= Duration::from_millis(500), "retried for the tolerance: {:?}", t.elapsed());
    assert!(s.attempts >= 2, "retried: {s:?}");
    assert_eq!(s.acquisitions, 0);
    assert_eq!(owner(group.master(), "ledger"), None);

    // More replicas than the master has: the same error, saying how many answered
    // (the replica, just resumed on a busy machine, gets a generous timeout).
    group.replicas()[0].resume();
    group.wait_until_in_sync();
    let two = client.mutex_with("ledger", MutexOptions::default().wait_replicas(2, ACK_TIMEOUT));
    let err = two.try_lock().expect_err("one replica cannot make two");
    assert!(is_shortfall(&err, 2, 1) && err.to_string().contains("1 of the 2 replicas"), "{err}");
    assert_eq!(owner(group.master(), "ledger"), None);
    let patient = client.mutex_with("ledger", acked(ACK_TIMEOUT));
    drop(patient.lock().expect("the replica is back"));

    // A replica that is gone (killed), then back.
    group.replicas_mut()[0].stop();
    assert!(is_shortfall(&m.try_lock().expect_err("no replica"), 1, 0));
    assert_eq!(owner(group.master(), "ledger"), None);
    group.replicas_mut()[0].restart();
    group.wait_until_in_sync();
    let g = patient.lock().expect("the replica is back");
    assert_eq!(owner(&group.replicas()[0], "ledger").as_deref(), Some(g.token()));
}

/// A master with a replica, and two clients of it.
fn two_clients() -> (Replicated, LockClient, LockClient) {
    let group = Replicated::start(1);
    let client = || connected_with(group.master(), LockClient::builder());
    let (a, b) = (client(), client());
    (group, a, b)
}

/// `b` waits (in a thread) for `name`, held by another client on `server`; returns
/// once `b` is queued in Redis. The thread answers when it got the lock, and the guard.
fn wait_for(
    server: &RedisServer,
    b: &LockClient,
    name: &str,
    options: MutexOptions,
) -> thread::JoinHandle<(Instant, redis_mutex::MutexGuard)> {
    let m = b.mutex_with(name, options);
    let waiter = thread::spawn(move || {
        let g = m.lock().unwrap();
        (Instant::now(), g)
    });
    wait_until(Duration::from_secs(10), "b to queue", || {
        let q: Option<String> = redis::cmd("HGET").arg(key(name)).arg("q").query(&mut server.conn()).unwrap();
        q.is_some_and(|q| q.contains(b.id()))
    });
    waiter
}

/// Client `b` waits for a lock `a` holds; `a` releases it, which grants it to `b`.
/// With the replica working `b` is granted it, and the replica has it when `b`'s
/// `lock()` returns. With the replica paused `a` revokes the grant instead of
/// announcing it: `b` is told to look again, and takes the lock by its own attempt.
#[test]
fn a_grant_to_another_client_is_announced_only_once_the_replica_has_it() {
    let (group, a, b) = two_clients();
    let options = acked(Duration::from_millis(300));

    let held = a.mutex_with("ledger", options.clone()).lock().unwrap();
    let waiter = wait_for(group.master(), &b, "ledger", options.clone());
    held.unlock().unwrap();
    let (_, granted) = waiter.join().unwrap();
    assert_eq!(b.stats().grants, 1, "b was granted the lock: {:?}", b.stats());
    let on_replica = owner(&group.replicas()[0], "ledger");
    assert_eq!(on_replica.as_deref(), Some(granted.token()), "announced before the replica had it");
    granted.unlock().unwrap();

    // b does not ask for replicas itself, so only a's WAIT stands between it and a
    // grant the replica lacks.
    let held = a.mutex_with("ledger", options.clone()).lock().unwrap();
    let before = b.stats();
    let waiter = wait_for(group.master(), &b, "ledger", MutexOptions::default());
    group.replicas()[0].pause();
    let t = Instant::now();
    held.unlock().expect("a's release goes through; only its grant waits for the replica");
    assert!(t.elapsed() >= Duration::from_millis(300), "the grant waited for the replica: {:?}", t.elapsed());
    let (_, g) = waiter.join().unwrap();
    let s = b.stats().since(&before);
    assert_eq!(s.grants, 0, "b was told it holds a grant the replica did not acknowledge: {s:?}");
    assert_eq!(s.attempts, 2, "b took the lock by its own attempt after the revocation: {s:?}");
    assert_eq!(owner(group.master(), "ledger").as_deref(), Some(g.token()));
    drop(g);
    group.replicas()[0].resume();
}

/// Both ask for the replica, which is paused when `a` releases: `b` is not returned the
/// lock while the replica cannot have it (its own attempts fall short too), and gets
/// it once the replica is back.
#[test]
fn a_client_waiting_for_replicas_gets_the_lock_only_once_the_replica_is_back() {
    let (group, a, b) = two_clients();
    let options = acked(Duration::from_millis(300));
    let held = a.mutex_with("ledger", options.clone()).lock().unwrap();
    let before = b.stats();
    let waiter = wait_for(group.master(), &b, "ledger", options);
    group.replicas()[0].pause();
    held.unlock().unwrap();
    wait_until(Duration::from_secs(10), "b to try again", || b.stats().since(&before).attempts >= 3);
    assert!(!waiter.is_finished(), "b was handed the lock while the replica could not have it");
    let resumed = Instant::now();
    group.replicas()[0].resume();
    let (got_at, g) = waiter.join().unwrap();
    let s = b.stats().since(&before);
    assert!(got_at >= resumed, "b got the lock before the replica was back");
    assert_eq!(s.grants, 0, "the revoked grant was never taken: {s:?}");
    assert_eq!(owner(&group.replicas()[0], "ledger").as_deref(), Some(g.token()));
}

#[test]
fn settings_waitreplicas_cannot_honour_are_refused_before_any_io() {
    let client = LockClient::builder().build_unchecked("redis://127.0.0.1:1/").unwrap();
    for (replicas, timeout, lease) in [
        (0, Duration::from_millis(100), Duration::from_secs(30)),
        (1, Duration::ZERO, Duration::from_secs(30)),
        (1, Duration::from_secs(2), Duration::from_secs(1)),
    ] {
        let m = client.mutex_with("ledger", MutexOptions::default().lease(lease).wait_replicas(replicas, timeout));
        for err in [m.lock().map(drop).unwrap_err(), m.try_lock().map(drop).unwrap_err()] {
            assert!(
                matches!(err, Error::InvalidOption { option: "wait_replicas", .. }),
                "({replicas}, {timeout:?}, lease {lease:?}): {err:?}"
            );
        }
    }
}
