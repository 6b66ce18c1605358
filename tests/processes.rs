//! Proves the lock across OS processes: a holder killed with SIGKILL is outwaited within
//! its lease, a queued waiter killed with SIGKILL costs the others about the reservation
//! timeout, and processes contending on one lock keep a non-atomic counter exact.
//!
//! Other processes are this test binary run again (`child_entry`, selected by the
//! `REDIS_MUTEX_CHILD` environment variable); they report on stdout, one
//! `CHILD-...` line per fact.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions};
use support::child::{ChildProcess, say};
use support::{RedisServer, wait_until};

const VANISHING: &str = "vanishing";
const VANISHING_LEASE: Duration = Duration::from_secs(2);

const QUEUED: &str = "queued";
const QUEUED_KEY: &str = "redis-mutex:{queued}";
const RESERVATION: Duration = Duration::from_millis(500);

const COUNTER_LOCK: &str = "counter";
const COUNTER_KEY: &str = "test:counter";
const GO_KEY: &str = "test:go";
const PROCESSES: usize = 4;
const THREADS: usize = 4;
const INCREMENTS: usize = 100;

// ---- the child side ----

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Some((role, url)) = support::child::role() else { return };
    match role.as_str() {
        "hold" => child_hold(&url),
        "increment" => child_increment(&url),
        "queue" => child_queue(&url),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Takes the lock with a short, auto-renewed lease and keeps it until killed. Exits
/// (releasing) if its stdin closes, so it cannot outlive a parent that died.
fn child_hold(url: &str) {
    let client = LockClient::open(url).unwrap();
    let m = client.mutex_with(VANISHING, MutexOptions::default().lease(VANISHING_LEASE).auto_renew(true));
    let guard = m.lock().unwrap();
    say(&format!("CHILD-LOCKED {}", guard.token()));
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(guard);
}

/// Reports its client id, then waits for the lock `QUEUED` (queueing its client) until
/// killed. Exits if its stdin closes, so it cannot outlive a parent that died.
fn child_queue(url: &str) {
    let client = LockClient::builder().reservation_timeout(RESERVATION).build(url).unwrap();
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    say(&format!("CHILD-ID {}", client.id()));
    let guard = client.mutex(QUEUED).lock().unwrap();
    say(&format!("CHILD-LOCKED {}", guard.token()));
}

/// Waits for the start signal, then `THREADS` threads each add 1 to a Redis counter
/// `INCREMENTS` times with GET then SET, under the lock; reports the client's stats.
fn child_increment(url: &str) {
    let client = LockClient::open(url).unwrap();
    let redis = redis::Client::open(url).unwrap();
    let mut con = redis.get_connection().unwrap();
    say("CHILD-READY");
    let go: Option<(String, String)> = redis::cmd("BLPOP").arg(GO_KEY).arg(30).query(&mut con).unwrap();
    assert!(go.is_some(), "no start signal within 30 s");
    thread::scope(|s| {
        for _ in 0..THREADS {
            let m = client.mutex(COUNTER_LOCK);
            let mut con = redis.get_connection().unwrap();
            s.spawn(move || {
                for _ in 0..INCREMENTS {
                    let guard = m.lock().unwrap();
                    let n: i64 =
                        redis::cmd("GET").arg(COUNTER_KEY).query::<Option<i64>>(&mut con).unwrap().unwrap_or(0);
                    // Widen the window a lost update needs.
                    thread::yield_now();
                    redis::cmd("SET").arg(COUNTER_KEY).arg(n + 1).query::<()>(&mut con).unwrap();
                    guard.unlock().unwrap();
                }
            });
        }
    });
    let s = client.stats();
    say(&format!(
        "CHILD-STATS acquisitions={} contended_acquisitions={} attempts={} releases={} handoffs={} \
         wakeups_notified={} wakeups_timeout={} notifier_reconnects={} renewals={} leases_lost={}",
        s.acquisitions,
        s.contended_acquisitions,
        s.attempts,
        s.releases,
        s.handoffs,
        s.wakeups_notified,
        s.wakeups_timeout,
        s.notifier_reconnects,
        s.renewals,
        s.leases_lost
    ));
}

// ---- the parent side ----

// ---- 7. a vanished holder ----

#[test]
fn a_killed_holder_is_outwaited_within_its_lease() {
    let server = RedisServer::start();
    let mut holder = ChildProcess::spawn("hold", &server.url());
    let token = holder.expect_line("CHILD-LOCKED", Duration::from_secs(30));

    let client = LockClient::open(&server.url()).unwrap();
    let m = client.mutex(VANISHING);
    assert_eq!(m.holder().unwrap().expect("held").token, token);
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let m = m.clone();
        thread::spawn(move || {
            let guard = m.lock().expect("lock");
            let acquired_at = Instant::now();
            let owner = m.holder().unwrap().map(|h| h.token);
            tx.send((acquired_at, guard.token().to_owned(), owner)).unwrap();
            guard.unlock().unwrap();
        })
    };
    wait_until(Duration::from_secs(10), "the waiter to queue", || {
        m.waiting_threads() == 1 && client.stats().attempts >= 1
    });

    // The holder renews its 2 s lease: for longer than the lease, it keeps the lock
    // and the waiter keeps waiting.
    let watch_until = Instant::now() + VANISHING_LEASE + Duration::from_millis(500);
    while Instant::now() < watch_until {
        let h = m.holder().unwrap().expect("the renewing holder keeps the lock");
        assert_eq!(h.token, token);
        assert!(rx.try_recv().is_err(), "the waiter acquired while the holder was alive");
        thread::sleep(Duration::from_millis(100));
    }

    let killed_at = Instant::now();
    holder.child.kill().expect("SIGKILL the holder");
    let status = holder.wait(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(9), "the holder died of SIGKILL: {status}");

    let (acquired_at, new_token, owner) =
        rx.recv_timeout(Duration::from_secs(30)).expect("the waiter acquires after the holder dies");
    waiter.join().unwrap();
    let waited = acquired_at - killed_at;
    let s = client.stats();
    println!("acquired {waited:?} after the kill; waiter stats {s:#?}");
    assert!(waited <= VANISHING_LEASE + Duration::from_secs(1), "acquired {waited:?} after the kill");
    assert_ne!(new_token, token);
    assert_eq!(owner.as_deref(), Some(new_token.as_str()), "Redis lists the waiter as the owner");
    assert!(s.wakeups_timeout >= 1, "a killed holder publishes nothing: the lease bound woke the waiter");
}

// ---- 8. mutual exclusion across processes ----

/// A child's `name=value` stats line, by name.
fn parse_stats(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad stats line {line:?}"));
            (k.to_owned(), v.parse().unwrap_or_else(|_| panic!("bad stats line {line:?}")))
        })
        .collect()
}

#[test]
fn processes_keep_a_shared_counter_exact() {
    let server = RedisServer::start();
    let mut children: Vec<ChildProcess> =
        (0..PROCESSES).map(|_| ChildProcess::spawn("increment", &server.url())).collect();
    for c in &mut children {
        c.expect_line("CHILD-READY", Duration::from_secs(30));
    }
    let mut con = server.conn();
    let started = Instant::now();
    redis::cmd("RPUSH").arg(GO_KEY).arg(&["go"; PROCESSES]).query::<()>(&mut con).unwrap();

    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for (i, c) in children.iter_mut().enumerate() {
        let line = c.expect_line("CHILD-STATS", Duration::from_secs(120));
        let status = c.wait(Duration::from_secs(30));
        println!("process {i}: {line}");
        assert!(status.success(), "child {i} failed: {status}");
        let stats = parse_stats(&line);
        assert_eq!(stats["acquisitions"], (THREADS * INCREMENTS) as u64, "process {i}");
        assert_eq!(stats["leases_lost"], 0, "process {i}");
        for (k, v) in stats {
            *total.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    let counter: Option<i64> = redis::cmd("GET").arg(COUNTER_KEY).query(&mut con).unwrap();
    println!("{} increments in {elapsed:?}; all processes: {total:?}", counter.unwrap_or(0));
    assert_eq!(counter, Some((PROCESSES * THREADS * INCREMENTS) as i64), "lost updates: two holders at once");
    assert!(total["contended_acquisitions"] > 0, "the processes never contended");
}

// ---- a vanished waiter ----

/// The lock's queue of waiting clients (field `q`), first in line first.
fn queue(con: &mut redis::Connection) -> Vec<String> {
    let q: Option<String> = redis::cmd("HGET").arg(QUEUED_KEY).arg("q").query(con).unwrap();
    // Entries are `<client id>:<fencing span>:<mark>`.
    q.unwrap_or_default().split_whitespace().map(|e| e.split(':').next().unwrap_or(e).to_owned()).collect()
}

/// A process killed while its client was first in the lock's queue gets the lock
/// reserved when the holder releases, and never takes it. A waiter of another client
/// must get the lock once the reservation (500 ms) is over, woken by its notifier's
/// re-check, not when the holder's lease (30 s) would have run out.
#[test]
fn a_killed_queued_waiter_costs_the_others_about_the_reservation() {
    let server = RedisServer::start();
    let builder = LockClient::builder().reservation_timeout(RESERVATION);
    let a = support::connected_with(&server, builder.clone());
    let b = support::connected_with(&server, builder);
    let mut con = server.conn();
    let guard = a.mutex(QUEUED).lock().unwrap();

    // The child queues first...
    let mut child = ChildProcess::spawn("queue", &server.url());
    let child_id = child.expect_line("CHILD-ID", Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the child to queue", || queue(&mut con) == [child_id.clone()]);

    // ...then b, behind it.
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let m = b.mutex(QUEUED);
        thread::spawn(move || {
            let guard = m.lock().expect("lock");
            let acquired_at = Instant::now();
            let owner = m.holder().unwrap().map(|h| h.token);
            tx.send((acquired_at, guard.token().to_owned(), owner)).unwrap();
            guard.unlock().unwrap();
        })
    };
    wait_until(Duration::from_secs(10), "b to queue behind the child", || queue(&mut con).len() == 2);
    assert_eq!(queue(&mut con), [child_id.clone(), b.id().to_owned()], "the child is first in line, b second");

    child.child.kill().expect("SIGKILL the queued child");
    let status = child.wait(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(9), "the child died of SIGKILL: {status}");
    // Everything it printed, up to the end of its stdout.
    while let Ok(line) = child.lines.recv_timeout(Duration::from_secs(10)) {
        child.seen.push(line);
    }
    assert!(
        !child.seen.iter().any(|l| l.contains("CHILD-LOCKED")),
        "the child acquired while a held the lock: {:?}",
        child.seen
    );
    assert_eq!(queue(&mut con)[0], child_id, "the dead child is still first in line");

    let released = Instant::now();
    drop(guard);
    let (acquired_at, token, owner) = rx.recv_timeout(Duration::from_secs(60)).expect("b acquires after the release");
    waiter.join().unwrap();
    let waited = acquired_at - released;
    let s = b.stats();
    println!("b acquired {waited:?} after the release (reservation {RESERVATION:?}); b's stats {s:#?}");
    assert!(waited >= RESERVATION, "b took the dead child's reservation early ({waited:?})");
    assert!(
        waited <= RESERVATION + Duration::from_secs(2),
        "b waited {waited:?} after the release (reservation {RESERVATION:?}, lease 30 s)"
    );
    assert_eq!(owner.as_deref(), Some(token.as_str()), "Redis lists b as the owner");
    assert_eq!(s.acquisitions, 1);
    assert_eq!(s.wakeups_timeout, 0, "b was woken by its notifier's re-check, not its own lease-bounded sleep");
}
