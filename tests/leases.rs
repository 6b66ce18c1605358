//! Proves leases: renewal keeps a lock for as long as the guard lives, a lease that
//! runs out (or is force-unlocked, or forgotten by a restarted Redis) is detected and
//! reported as `LockLost`, refused renewals are retried at a bounded rate until the
//! lease runs out, dropped guards are never renewed, one pipelined batch per period
//! renews 1,000 guards. A foreign key on one lock costs only that lock its lease, and
//! no waiting thread, first in line or not, sleeps past the holder's lease. Fencing
//! tokens: `fencing.rs`.

mod support;
use support::RedisServer;

use std::sync::{Mutex as StdMutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{Error, LockClient, MutexGuard, MutexOptions};

fn client(server: &RedisServer) -> LockClient {
    LockClient::open(&server.url()).expect("client connects")
}

fn opts(lease_ms: u64, auto_renew: bool) -> MutexOptions {
    MutexOptions::default().lease(Duration::from_millis(lease_ms)).auto_renew(auto_renew)
}

/// Polls `cond` every 10 ms until it holds (`true`) or `deadline` passes (`false`).
fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn within(limit: Duration) -> Instant {
    Instant::now() + limit
}

/// A numeric field of `INFO <section>`.
fn info_u64(server: &RedisServer, section: &str, field: &str) -> u64 {
    let info = server.info(section);
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO {section}:\n{info}"))
}

fn assert_lock_lost<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(e) if e.is_lock_lost() => {}
        other => panic!("{what}: expected Err(LockLost), got {other:?}"),
    }
}

#[test]
fn a_renewed_lease_outlives_itself_and_the_next_waiter_is_woken_at_release() {
    let server = RedisServer::start();
    let (a, b, c) = (client(&server), client(&server), client(&server));
    let lease = opts(1000, true);
    let guard = a.mutex_with("renewed", lease.clone()).lock().unwrap();
    let held_since = Instant::now();

    // A waiter in another client, blocked in lock() for the whole hold.
    let (acquired_tx, acquired_rx) = mpsc::channel();
    let waiter_mutex = c.mutex_with("renewed", lease.clone());
    let waiter = thread::spawn(move || {
        let g = waiter_mutex.lock().unwrap();
        acquired_tx.send(Instant::now()).unwrap();
        g.unlock().unwrap();
    });

    // A third client polls try_lock every ~100 ms for 5 s: never gets the lock.
    let poller = b.mutex_with("renewed", lease);
    let mut polls = 0;
    while held_since.elapsed() < Duration::from_secs(5) {
        let got = poller.try_lock().unwrap();
        assert!(got.is_none(), "another client acquired a renewed lock after {:?}", held_since.elapsed());
        polls += 1;
        thread::sleep(Duration::from_millis(100));
    }
    assert!(polls >= 25, "only {polls} polls in 5 s");
    assert!(!guard.is_lost());
    assert!(guard.is_held().unwrap(), "the holder lost its lock after {:?}", held_since.elapsed());
    assert!(a.stats().renewals >= 10, "5 s at a 1 s lease needs ~15 renewals: {:?}", a.stats());
    assert_eq!(acquired_rx.try_recv(), Err(mpsc::TryRecvError::Empty), "the waiter got a held lock");
    assert_eq!(c.mutex("renewed").waiting_threads(), 1);

    // The waiter wakes by itself whenever the holder's lease could have run out (about
    // every 0.7-1 s). Release just after such a wake-up, so that a wake-up by timeout
    // cannot pass for the release's notification: the next one is >= 0.5 s away.
    let timeouts = c.stats().wakeups_timeout;
    assert!(
        wait_until(within(Duration::from_secs(3)), || c.stats().wakeups_timeout > timeouts),
        "a waiter bounded by a 1 s lease never woke by itself"
    );
    thread::sleep(Duration::from_millis(100));
    let before = c.stats();
    let released_at = Instant::now();
    drop(guard);

    let acquired_at =
        acquired_rx.recv_timeout(Duration::from_secs(5)).expect("the waiter did not get the released lock");
    waiter.join().unwrap();
    let latency = acquired_at.saturating_duration_since(released_at);
    let after = c.stats();
    assert!(latency < Duration::from_millis(500), "the waiter got the lock {latency:?} after the release");
    assert_eq!(
        after.wakeups_notified - before.wakeups_notified,
        1,
        "the waiter must be woken by the release's notification: before {before:?}, after {after:?}"
    );
    assert_eq!(after.wakeups_timeout, before.wakeups_timeout, "no wake-up by timeout after the release");
    assert_eq!(a.stats().leases_lost, 0);
}

#[test]
fn an_unrenewed_lease_runs_out_and_the_stale_unlock_reports_lock_lost() {
    let server = RedisServer::start();
    let (a, b) = (client(&server), client(&server));
    let started = Instant::now();
    let stale = a.mutex_with("expiring", opts(1000, false)).lock().unwrap();
    assert_eq!(a.renewing_count(), 0, "auto_renew(false) must not register with the watchdog");

    let fresh = b
        .mutex("expiring")
        .try_lock_for(Duration::from_secs(10))
        .unwrap()
        .expect("another client must get the lock once the 1 s lease ran out");
    let waited = started.elapsed();
    // Redis's expiry is millisecond-grained, hence 990 ms rather than 1 s.
    assert!(waited >= Duration::from_millis(990), "the lease ended early: acquired after {waited:?}");
    assert!(waited < Duration::from_secs(2), "the next holder got the lock only after {waited:?}");

    assert_lock_lost(stale.unlock(), "unlocking an expired guard");
    assert_eq!(a.stats().leases_lost, 1);

    let holder = b.mutex("expiring").holder().unwrap().expect("the new holder's lock must survive");
    assert_eq!(holder.token, fresh.token(), "the stale unlock touched the new holder's key");
    let left = holder.remaining_lease.expect("the new holder's lease");
    assert!(left > Duration::from_secs(25), "the new holder's 30 s lease was changed: {left:?} left");
    assert!(fresh.is_held().unwrap());
    fresh.unlock().unwrap();
}

#[test]
fn a_force_unlocked_guard_is_marked_lost_within_a_renewal_period() {
    let server = RedisServer::start();
    let (a, b) = (client(&server), client(&server));
    let lease = Duration::from_secs(3);
    let guard = a.mutex_with("forced", opts(3000, true)).lock().unwrap();
    assert_eq!(a.renewing_count(), 1);

    assert!(b.mutex("forced").force_unlock().unwrap(), "there was a lock to delete");
    let forced_at = Instant::now();
    // Someone else takes the lock at once; the old guard must not disturb it.
    let usurper = b.mutex("forced").try_lock().unwrap().expect("the force-unlocked lock is free");

    let limit = lease / 3 + Duration::from_secs(1);
    assert!(
        wait_until(forced_at + limit, || guard.is_lost()),
        "the guard was not marked lost within {limit:?} of force_unlock"
    );
    assert_eq!(a.stats().leases_lost, 1);
    assert_eq!(a.renewing_count(), 0, "a lost guard is no longer renewed");

    assert_lock_lost(guard.extend(Duration::from_secs(3)), "extending a lost guard");
    assert_lock_lost(guard.unlock(), "unlocking a lost guard");
    assert_eq!(a.stats().leases_lost, 1, "a loss is counted once");

    let holder = b.mutex("forced").holder().unwrap().expect("the usurper still holds the lock");
    assert_eq!(holder.token, usurper.token());
    assert!(holder.remaining_lease.unwrap() > Duration::from_secs(25), "extend touched the new holder's key");
    usurper.unlock().unwrap();
}

#[test]
fn dropped_guards_are_never_renewed() {
    let server = RedisServer::start();
    let client = client(&server);
    let lease = opts(600, true);
    let period = Duration::from_millis(200);

    // Control: a guard held for a few periods is renewed, and the PEXPIRE inside the
    // renewal script shows in the server's command statistics.
    let guard = client.mutex_with("control", lease.clone()).lock().unwrap();
    let pexpires = server.command_calls("pexpire");
    assert!(
        wait_until(within(Duration::from_secs(5)), || server.command_calls("pexpire") >= pexpires + 2),
        "a held guard was not renewed"
    );
    drop(guard);

    // Churn: 1,000 guards taken and dropped (some unlocked explicitly) from 4 threads.
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let m = client.mutex_with(&format!("churn-{t}"), lease.clone());
            thread::spawn(move || {
                for i in 0..250 {
                    let g = m.lock().unwrap();
                    if i % 2 == 0 {
                        drop(g);
                    } else {
                        g.unlock().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(client.renewing_count(), 0, "dropped guards are still registered for renewal");

    let (pexpire0, evalsha0, stats0) =
        (server.command_calls("pexpire"), server.command_calls("evalsha"), client.stats());
    // Two renewal periods are enough to see a stray renewal; wait longer to be sure.
    thread::sleep(5 * period);
    let stats1 = client.stats();
    assert_eq!(server.command_calls("pexpire") - pexpire0, 0, "a dropped guard's lease was extended");
    assert_eq!(server.command_calls("evalsha") - evalsha0, 0, "scripts ran with no guard alive");
    assert_eq!(stats1.renewals, stats0.renewals);
    assert_eq!(client.renewing_count(), 0);
    assert_eq!(stats1.acquisitions, 1001);
    assert_eq!(stats1.releases, 1001);
    assert_eq!(stats1.leases_lost, 0, "a guard dropped mid-renewal was reported lost");
}

#[test]
fn a_thousand_guards_are_renewed_in_one_batch_per_period() {
    let server = RedisServer::start();
    let client = client(&server);
    let lease = opts(1500, true);
    let period = Duration::from_millis(500);
    let guards: Vec<MutexGuard> = (0..1000)
        .map(|i| client.mutex_with(&format!("many-{i}"), lease.clone()).try_lock().unwrap().expect("a free lock"))
        .collect();
    assert_eq!(client.renewing_count(), 1000);

    // Guards taken at different moments fall into step within a period or two.
    thread::sleep(2 * period);
    // Every round trip needs at least one write by the server; a round trip per
    // renewal would need 1,000 writes per period. A batch of up to 512 renewals is one
    // pipeline: a few reads and writes of 16 KB each.
    let (writes0, stats0, t0) = (info_u64(&server, "stats", "total_writes_processed"), client.stats(), Instant::now());
    thread::sleep(6 * period);
    let (writes1, stats1, window) =
        (info_u64(&server, "stats", "total_writes_processed"), client.stats(), t0.elapsed());

    let periods = window.as_secs_f64() / period.as_secs_f64();
    let renewals = stats1.renewals - stats0.renewals;
    let per_period = renewals as f64 / periods;
    assert!(
        (700.0..=1300.0).contains(&per_period),
        "{renewals} renewals in {window:?} = {per_period:.0} per {period:?}, expected about 1,000"
    );
    let writes = writes1 - writes0;
    assert!(
        (writes as f64) <= 32.0 * periods,
        "{writes} server writes (an upper bound on round trips) in {periods:.1} periods for {renewals} renewals"
    );

    assert!(guards.iter().all(|g| !g.is_lost()), "a renewed guard was marked lost");
    let mut pipe = redis::pipe();
    for g in &guards {
        pipe.cmd("HGET").arg(g.mutex().key().unwrap()).arg("o");
    }
    let owners: Vec<Option<String>> = pipe.query(&mut server.conn()).unwrap();
    for (g, owner) in guards.iter().zip(&owners) {
        assert_eq!(owner.as_deref(), Some(g.token()), "{} is no longer held by its guard", g.mutex().name());
    }
    assert_eq!(stats1.leases_lost, 0);
}

#[test]
fn a_guard_forgotten_by_a_restarted_redis_is_marked_lost() {
    let mut server = RedisServer::start();
    let client = client(&server);
    let period = Duration::from_secs(1);
    let guard = client.mutex_with("restarted", opts(3000, true)).lock().unwrap();
    assert!(wait_until(within(Duration::from_secs(5)), || client.stats().renewals >= 1), "never renewed");
    assert!(!guard.is_lost());

    server.restart();
    let limit = 3 * period;
    assert!(
        wait_until(within(limit), || guard.is_lost()),
        "the guard was not marked lost within {limit:?} of the server coming back"
    );
    assert_eq!(client.stats().leases_lost, 1);
    assert_eq!(client.renewing_count(), 0);

    // The lock is free for others, and the lost guard does not release theirs.
    let other = LockClient::open(&server.url()).unwrap();
    let new_guard = other.mutex("restarted").try_lock().unwrap().expect("the restarted server has no lock");
    assert_lock_lost(guard.unlock(), "unlocking a guard lost to a restart");
    assert!(new_guard.is_held().unwrap());
}

#[test]
fn a_failing_renewal_is_retried_at_a_bounded_rate_until_the_lease_runs_out() {
    let server = RedisServer::start();
    let client = client(&server);
    let lease = Duration::from_secs(3);
    let started = Instant::now();
    let guard = client.mutex_with("refused", opts(3000, true)).lock().unwrap();
    // From now on the server refuses every renewal at once (NOPERM), as fast as it can.
    let mut admin = server.admin_conn();
    redis::cmd("ACL").arg("SETUSER").arg("default").arg("-evalsha").query::<()>(&mut admin).unwrap();
    let refused = || {
        let info = server.info("errorstats");
        let count = info.lines().find_map(|l| l.strip_prefix("errorstat_NOPERM:count="));
        count.map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };

    assert!(wait_until(within(2 * lease), || guard.is_lost()), "renewals failed for {:?}", 2 * lease);
    let lost_after = started.elapsed();
    // The lease may still be valid in Redis until it runs out: no earlier alarm.
    assert!(
        lost_after >= lease - Duration::from_millis(50),
        "marked lost after {lost_after:?}, before its lease ran out"
    );
    assert!(lost_after <= lease + Duration::from_secs(1), "marked lost only after {lost_after:?}");
    assert_eq!(client.stats().leases_lost, 1);
    // Retries come every lease / 10 (at most 250 ms), not back to back.
    let attempts = refused();
    assert!((2..=20).contains(&attempts), "{attempts} renewals refused in {lost_after:?}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(refused(), attempts, "a lost guard was renewed again");
}

#[test]
fn a_foreign_key_on_one_lock_costs_only_that_lock_its_renewal() {
    let server = RedisServer::start();
    let a = client(&server);
    let lease = opts(1500, true);
    // Taken together, so that their renewals share one pipelined batch.
    let ga = a.mutex_with("a", lease.clone()).lock().unwrap();
    let gb = a.mutex_with("b", lease.clone()).lock().unwrap();
    let key_a = ga.mutex().key().unwrap().to_owned();
    redis::cmd("SET").arg(&key_a).arg("x").query::<()>(&mut server.conn()).unwrap();
    // Three lease lengths: `b` must have been renewed throughout.
    let other = client(&server);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(4500) {
        assert!(!gb.is_lost(), "b was marked lost after {:?} because a's key was overwritten", t.elapsed());
        assert!(
            other.mutex_with("b", lease.clone()).try_lock().unwrap().is_none(),
            "another client acquired b after {:?}",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(gb.is_held().unwrap());
    assert!(ga.is_lost(), "a's renewal found a value of another type where its lock was");
    assert!(a.stats().renewals >= 4, "{:#?}", a.stats());
    gb.unlock().unwrap();
}

/// Acquires `name` in `threads` threads started `gap` apart, each waiting at most
/// `deadline`, on unrenewed leases of `lease` that are never released (as by a holder
/// that hangs, then crashes): each lock is free again only when its lease runs out, and
/// nothing announces that. Returns who acquired, in order, with when.
fn leases_that_run_out(
    server: &RedisServer,
    threads: usize,
    gap: Duration,
    lease: Duration,
    deadline: Duration,
    builder: redis_mutex::LockClientBuilder,
) -> Vec<(usize, Duration)> {
    let c = support::connected_with(server, builder);
    let m = c.mutex_with("expiring", MutexOptions::default().lease(lease).auto_renew(false));
    let order = StdMutex::new(Vec::new());
    let t0 = Instant::now();
    thread::scope(|s| {
        for i in 0..threads {
            let (m, order) = (&m, &order);
            s.spawn(move || {
                if let Some(g) = m.try_lock_for(deadline).unwrap() {
                    order.lock().unwrap().push((i, t0.elapsed()));
                    std::mem::forget(g);
                }
            });
            thread::sleep(gap);
        }
    });
    order.into_inner().unwrap()
}

#[test]
fn no_waiter_sleeps_past_the_holders_lease() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(500);
    let got = leases_that_run_out(
        &server,
        8,
        Duration::from_millis(100),
        lease,
        Duration::from_secs(10),
        LockClient::builder(),
    );
    println!("acquired (thread, at): {got:?}");
    let who: Vec<usize> = got.iter().map(|g| g.0).collect();
    assert_eq!(who, (0..8).collect::<Vec<_>>(), "every waiter acquired, in the order it came");
    // Each lease runs out 500 ms after it was taken: 8 of them take about 4 s.
    let last = got.last().unwrap().1;
    assert!(last < Duration::from_secs(6), "the last waiter acquired at {last:?}");
    for w in got.windows(2) {
        let gap = w[1].1.saturating_sub(w[0].1);
        assert!(gap < lease * 2, "{} acquired {gap:?} after {} (lease {lease:?})", w[1].0, w[0].0);
    }
}

#[test]
fn a_waiter_behind_a_handed_over_holder_wakes_when_that_lease_runs_out() {
    let server = RedisServer::start();
    let c = support::connected_with(&server, LockClient::builder());
    let lease = Duration::from_millis(400);
    let m = c.mutex_with("handed", MutexOptions::default().lease(lease).auto_renew(false));
    let first = m.lock().unwrap();
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    let spawn = |i: usize| {
        let (m, tx) = (m.clone(), tx.clone());
        thread::spawn(move || {
            if let Some(g) = m.try_lock_for(Duration::from_secs(10)).unwrap() {
                tx.send((i, t0.elapsed())).unwrap();
                std::mem::forget(g); // hangs, then its lease runs out
            }
        })
    };
    let second = spawn(1);
    support::wait_until(Duration::from_secs(5), "the second thread to wait", || m.waiting_threads() == 1);
    let third = spawn(2);
    support::wait_until(Duration::from_secs(5), "the third thread to wait", || m.waiting_threads() == 2);
    thread::sleep(Duration::from_millis(50));
    first.unlock().unwrap(); // hands the lock to the second thread
    let (who, handed_at) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(who, 1);
    let next = rx.recv_timeout(Duration::from_secs(12)).expect("the third thread acquires");
    second.join().unwrap();
    third.join().unwrap();
    let after = next.1.saturating_sub(handed_at);
    assert!(after < lease * 3, "the third thread acquired {after:?} after the second got a {lease:?} lease");
}
