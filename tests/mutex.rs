//! Proves the core mutex behaviour against a real Redis: mutual exclusion across
//! clients and threads, `try_lock*` timing, lease expiry, `extend`, `is_held` /
//! `is_locked` / `force_unlock`, release on drop, fencing tokens, and that nothing is
//! left behind in Redis.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions, Stats};
use support::RedisServer;

/// The default key prefix; every key the crate writes starts with it.
const PREFIX: &str = "redis-mutex:";

fn open(server: &RedisServer) -> LockClient {
    let client = LockClient::open(&server.url()).expect("open a client on the test server");
    // Waiters only hear releases once the notifier is subscribed; without this, a
    // test that counts notified wake-ups would race the client's start-up.
    wait_until("the notifier subscribes", Duration::from_secs(10), || client.is_notifier_connected());
    client
}

/// Polls `cond` every 5 ms; panics if it is still false after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Every key under the crate's prefix except the (intentionally permanent) fence
/// counters.
fn lock_keys(server: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{PREFIX}*")).query(&mut server.conn()).expect("KEYS on the test server");
    keys.retain(|k| !k.ends_with(":fence"));
    keys.sort();
    keys
}

fn assert_nothing_left(server: &RedisServer) {
    assert_eq!(lock_keys(server), Vec::<String>::new(), "lock keys left behind in Redis");
}

fn sum(stats: &[Stats], field: impl Fn(&Stats) -> u64) -> u64 {
    stats.iter().map(field).sum()
}

#[test]
fn two_clients_and_sixteen_threads_never_overlap() {
    const CLIENTS: usize = 2;
    const THREADS: usize = 8;
    const ROUNDS: usize = 200;
    const TOTAL: u64 = (CLIENTS * THREADS * ROUNDS) as u64;
    let server = RedisServer::start();
    let clients: Vec<LockClient> = (0..CLIENTS).map(|_| open(&server)).collect();
    let start = Arc::new(Barrier::new(CLIENTS * THREADS));

    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for _ in 0..THREADS {
            let m = client.mutex("counter");
            // The protected resource is reached through its own connection, not the
            // crate's, like any real resource the lock guards.
            let mut con = server.conn();
            let start = start.clone();
            workers.push(thread::spawn(move || {
                start.wait();
                let mut spans = Vec::with_capacity(ROUNDS);
                for _ in 0..ROUNDS {
                    let guard = m.lock().expect("lock() under contention");
                    let entered = Instant::now();
                    // Read-modify-write in two round trips: any overlap loses updates.
                    let n: Option<u64> = redis::cmd("GET").arg("counter").query(&mut con).unwrap();
                    redis::cmd("SET").arg("counter").arg(n.unwrap_or(0) + 1).query::<()>(&mut con).unwrap();
                    let left = Instant::now();
                    drop(guard);
                    spans.push((entered, left, c));
                }
                spans
            }));
        }
    }
    let mut spans: Vec<(Instant, Instant, usize)> =
        workers.into_iter().flat_map(|w| w.join().expect("worker thread panicked")).collect();

    let count: u64 = redis::cmd("GET").arg("counter").query(&mut server.conn()).unwrap();
    assert_eq!(count, TOTAL, "lost updates: the critical sections overlapped");

    assert_eq!(spans.len() as u64, TOTAL);
    spans.sort_by_key(|s| s.0);
    for pair in spans.windows(2) {
        let ((_, left, c0), (entered, _, c1)) = (pair[0], pair[1]);
        assert!(left <= entered, "critical sections overlap by {:?} (client {c0} then client {c1})", left - entered);
    }
    // The sections above only prove something across processes if both clients
    // really took turns.
    let switches = spans.windows(2).filter(|p| p[0].2 != p[1].2).count();
    assert!(switches > 0, "one client did all its work before the other started");

    let stats: Vec<Stats> = clients.iter().map(LockClient::stats).collect();
    assert_eq!(sum(&stats, |s| s.acquisitions), TOTAL, "{stats:?}");
    assert_eq!(sum(&stats, |s| s.releases), TOTAL, "{stats:?}");
    assert!(sum(&stats, |s| s.handoffs) > 0, "no release handed the lock to a waiting thread: {stats:?}");
    assert!(sum(&stats, |s| s.wakeups_notified) > 0, "no waiter was woken by a release: {stats:?}");

    drop(clients);
    assert_nothing_left(&server);
}

#[test]
fn try_lock_and_try_lock_for_give_up_while_another_client_holds() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let (ma, mb) = (a.mutex("job"), b.mutex("job"));

    let held = ma.try_lock().unwrap().expect("a free lock is acquired at once");
    assert!(mb.try_lock().unwrap().is_none(), "try_lock must not take a held lock");

    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let got = mb.try_lock_for(timeout).unwrap();
    let waited = started.elapsed();
    assert!(got.is_none(), "try_lock_for must not take a held lock");
    assert!(
        waited >= timeout && waited <= timeout + Duration::from_millis(250),
        "try_lock_for({timeout:?}) gave up after {waited:?}"
    );
    assert!(held.is_held().unwrap(), "the holder keeps the lock");
    held.unlock().unwrap();
    assert_nothing_left(&server);
}

#[test]
fn try_lock_for_succeeds_as_soon_as_the_holder_releases() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let (ma, mb) = (a.mutex("job"), b.mutex("job"));
    let held = ma.lock().unwrap();
    let before = b.stats();

    let started = Instant::now();
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        // Release only once the waiter has marked the lock, so the waiter is surely
        // asleep on it (not about to find it free at its first attempt).
        wait_until("the waiter marks the lock", Duration::from_secs(5), || {
            ma.holder().unwrap().is_some_and(|h| h.contended)
        });
        let released_at = Instant::now();
        held.unlock().expect("the holder's release");
        released_at
    });
    let got = mb.try_lock_for(Duration::from_secs(5)).unwrap();
    let got_at = Instant::now();
    let released_at = releaser.join().unwrap();

    let guard = got.expect("the lock is taken once the holder releases it");
    assert!(got_at >= released_at, "acquired before the holder released");
    let waited = got_at - started;
    assert!(waited < Duration::from_secs(2), "took {waited:?} to notice a release (deadline 5 s)");
    let after = b.stats();
    assert!(after.wakeups_notified > before.wakeups_notified, "not woken by the release: {after:?}");
    assert_eq!(after.wakeups_timeout, before.wakeups_timeout, "a sleep ran out instead: {after:?}");
    assert!(guard.is_held().unwrap());
    drop(guard);
    assert_nothing_left(&server);
}

#[test]
fn an_expired_lease_lets_another_client_in_and_the_old_guard_learns_it_lost() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let short = MutexOptions::default().lease(Duration::from_secs(1)).auto_renew(false);
    let ma = a.mutex_with("report", short);
    let mb = b.mutex("report");

    let a_started = Instant::now();
    let ga = ma.lock().unwrap();
    let gb = mb.lock().expect("B gets the lock once A's lease runs out");
    let waited = a_started.elapsed();
    assert!(waited >= Duration::from_millis(900), "B got the lock {waited:?} after A took a 1 s lease");
    assert!(waited < Duration::from_secs(3), "B waited {waited:?} for a 1 s lease to run out");

    let err = ga.unlock().expect_err("A's lease ran out: unlock must say so");
    assert!(err.is_lock_lost(), "expected LockLost, got {err:?}");
    assert!(!err.to_string().is_empty());
    // A's failed unlock must not have touched B's lock.
    let holder = mb.holder().unwrap().expect("B still holds the lock");
    assert_eq!(holder.token, gb.token());
    assert!(gb.is_held().unwrap());
    assert!(!gb.is_lost());
    assert_eq!(a.stats().leases_lost, 1);
    drop(gb);
    assert_nothing_left(&server);
}

#[test]
fn extend_keeps_the_lock_past_its_original_lease() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let short = MutexOptions::default().lease(Duration::from_secs(1)).auto_renew(false);
    let ma = a.mutex_with("batch", short);
    let mb = b.mutex("batch");

    let guard = ma.lock().unwrap();
    guard.extend(Duration::from_secs(5)).unwrap();
    let lease = ma.holder().unwrap().expect("held").remaining_lease.expect("the lock has a lease");
    assert!(lease > Duration::from_secs(3), "extend(5 s) left a lease of {lease:?}");

    // Past the original 1 s lease, the lock is still A's.
    thread::sleep(Duration::from_millis(1500));
    assert!(mb.try_lock().unwrap().is_none(), "the lock expired despite extend");
    assert!(guard.is_held().unwrap());
    guard.unlock().expect("unlock of an extended lock");
    assert!(!mb.is_locked().unwrap());
    assert_nothing_left(&server);
}

#[test]
fn holder_names_its_client_and_the_clients_queued_in_order() {
    let server = RedisServer::start();
    let (a, b, c) = (open(&server), open(&server), open(&server));
    let lease = Duration::from_secs(30);
    let ma = a.mutex_with("queue", MutexOptions::default().lease(lease));
    let guard = ma.lock().unwrap();
    let left = guard.remaining_lease();
    assert!(left <= lease && left > lease - Duration::from_secs(5), "remaining lease {left:?} of {lease:?}");
    let holder = ma.holder().unwrap().expect("held");
    assert_eq!((holder.client_id.as_deref(), holder.waiting_clients.len()), (Some(a.id()), 0));

    let waiters: Vec<_> = [b.clone(), c.clone()]
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let t = thread::spawn(move || drop(client.mutex("queue").lock().unwrap()));
            wait_until("the client queues", Duration::from_secs(5), || {
                ma.holder().unwrap().is_some_and(|h| h.waiting_clients.len() == i + 1)
            });
            t
        })
        .collect();
    let holder = ma.holder().unwrap().expect("held");
    assert_eq!(holder.waiting_clients, [b.id(), c.id()], "longest-waiting first");
    assert!(holder.contended);
    drop(guard);
    waiters.into_iter().for_each(|t| t.join().unwrap());
    assert_nothing_left(&server);
}

#[test]
fn is_held_and_is_locked_follow_force_unlock() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let (ma, mb) = (a.mutex("stuck"), b.mutex("stuck"));

    assert!(!mb.is_locked().unwrap());
    assert!(!mb.force_unlock().unwrap(), "force_unlock of a free lock deletes nothing");
    let guard = ma.lock().unwrap();
    assert!(guard.is_held().unwrap());
    assert!(ma.is_locked().unwrap() && mb.is_locked().unwrap());
    assert_eq!(lock_keys(&server), vec![format!("{PREFIX}{{stuck}}")], "the lock is where the docs say");

    assert!(mb.force_unlock().unwrap(), "force_unlock of a held lock deletes it");
    assert!(!guard.is_held().unwrap(), "the guard must see it lost the lock");
    assert!(guard.is_lost());
    assert!(!ma.is_locked().unwrap());
    assert!(!mb.force_unlock().unwrap(), "nothing left to force-unlock");
    let err = guard.unlock().expect_err("unlocking a force-unlocked lock");
    assert!(err.is_lock_lost(), "{err:?}");
    assert_nothing_left(&server);

    // Only the queue of waiting clients is left (a grant nobody took ran out): nobody
    // held it, though the key goes all the same.
    let key = format!("{PREFIX}{{stuck}}");
    redis::cmd("HSET").arg(&key).arg("q").arg("gone:0:1").query::<()>(&mut server.conn()).unwrap();
    assert!(!mb.force_unlock().unwrap(), "a queue without a holder: nothing was held");
    assert_nothing_left(&server);
}

#[test]
fn force_unlock_wakes_a_waiter_in_another_client() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let (ma, mb) = (a.mutex("stuck"), b.mutex("stuck"));
    let held = ma.lock().unwrap(); // 30 s lease, renewed: only force_unlock frees it
    let before = b.stats();

    let started = Instant::now();
    let waiter = thread::spawn(move || {
        let guard = mb.lock().expect("the waiter's lock()");
        (Instant::now(), guard)
    });
    wait_until("the waiter marks the lock", Duration::from_secs(5), || {
        ma.holder().unwrap().is_some_and(|h| h.contended)
    });
    let forced_at = Instant::now();
    assert!(ma.force_unlock().unwrap());
    let (got_at, guard) = waiter.join().unwrap();

    assert!(got_at >= forced_at);
    let waited = got_at - started;
    assert!(waited < Duration::from_secs(5), "the waiter took {waited:?} (holder's lease: 30 s)");
    let after = b.stats();
    assert!(after.wakeups_notified > before.wakeups_notified, "not woken by force_unlock: {after:?}");
    assert!(guard.is_held().unwrap());
    assert!(!held.is_held().unwrap());
    drop(guard);
    drop(held); // its release finds the lock gone and only logs that
    assert_nothing_left(&server);
}

#[test]
fn dropping_a_guard_releases_and_unlock_returns_ok() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let (ma, mb) = (a.mutex("drop"), b.mutex("drop"));

    let guard = ma.lock().unwrap();
    assert!(mb.is_locked().unwrap());
    drop(guard);
    assert!(!mb.is_locked().unwrap(), "drop must release the lock");
    let guard = mb.try_lock().unwrap().expect("another client takes the released lock");
    assert!(guard.unlock().is_ok(), "explicit unlock of a held lock");
    assert!(!ma.is_locked().unwrap());
    assert_eq!(a.stats().releases, 1);
    assert_eq!(b.stats().releases, 1);
    assert_nothing_left(&server);
}

#[test]
fn fencing_tokens_rise_across_acquisitions_and_are_absent_without_fencing() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    let fenced = MutexOptions::default().fencing(true);

    let first = a.mutex_with("ledger", fenced.clone()).lock().unwrap();
    let t1 = first.fencing_token().expect("fencing on: a token");
    drop(first);
    let second = b.mutex_with("ledger", fenced).lock().unwrap();
    let t2 = second.fencing_token().expect("fencing on: a token");
    assert!(t2 > t1, "fencing tokens must rise: {t1} then {t2}");
    drop(second);

    let plain = a.mutex("ledger").lock().unwrap();
    assert_eq!(plain.fencing_token(), None);
    drop(plain);
    assert_nothing_left(&server);
    // The counter outlives the locks, so tokens keep rising across idle periods.
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("{PREFIX}*")).query(&mut server.conn()).unwrap();
    keys.sort();
    assert_eq!(keys, vec![format!("{PREFIX}{{ledger}}:fence")]);
}

#[test]
fn nothing_is_left_in_redis_after_clients_and_guards_are_dropped() {
    let server = RedisServer::start();
    let (a, b) = (open(&server), open(&server));
    {
        let held: Vec<_> = ["one", "two", "three"].iter().map(|n| a.mutex(n).lock().unwrap()).collect();
        let timed_out = b.mutex("one").try_lock_for(Duration::from_millis(50)).unwrap();
        assert!(timed_out.is_none());
        assert_eq!(lock_keys(&server).len(), 3, "held locks are visible, so the check below can fail");
        let waiter = {
            let m = b.mutex("two");
            thread::spawn(move || m.lock().map(|g| g.token().to_owned()))
        };
        let c = a.clone();
        let same_client_waiter = thread::spawn(move || c.mutex("three").lock().map(|g| g.token().to_owned()));
        wait_until("both waiters queue", Duration::from_secs(5), || {
            b.mutex("two").waiting_threads() == 1 && a.mutex("three").waiting_threads() == 1
        });
        drop(held);
        waiter.join().unwrap().expect("cross-client waiter");
        same_client_waiter.join().unwrap().expect("same-client waiter (handed the lock)");
    }
    drop((a, b));
    assert_nothing_left(&server);
}
