//! Proves the semaphore: never more holders than permits across processes (2
//! processes × 8 threads, interval overlap count); a permit held by a process killed
//! with SIGKILL comes back within its lease and a renewal period; a forgotten permit
//! without auto-renewal comes back after its lease; a waiter killed at the head of the
//! queue costs the others about the reservation timeout; permits go to waiters in FIFO
//! order across clients; a release wakes one waiter, by notification; idle waiters
//! send nothing; clients that disagree on the count get a clear error. The tests of
//! the queue in Redis use clients with `handoff_limit(0)` (every waiting thread its own
//! entry, nothing passed in memory); `shared_fast.rs` proves the in-process fast path.
//!
//! Other processes are this test binary run again (`child_entry`, selected by the
//! `REDIS_MUTEX_CHILD` environment variable); they report on stdout.

mod support;

use std::io::Read;
use std::sync::{Arc, Mutex as StdMutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_mutex::{Error, LockClient, MutexOptions};
use support::child::{ChildProcess, say};
use support::{RedisServer, connected_with, wait_until};

fn connected(server: &RedisServer) -> LockClient {
    connected_with(server, LockClient::builder())
}

/// A client whose every waiting thread queues in Redis (no in-process fast path).
fn per_thread(server: &RedisServer) -> LockClient {
    connected_with(server, LockClient::builder().handoff_limit(0))
}

fn wall_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

const CAPPED: &str = "capped";
const KILLED: &str = "killed";
const KILLED_LEASE: Duration = Duration::from_secs(2);

// ---- the child side ----

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Some((role, url)) = support::child::role() else { return };
    match role.as_str() {
        "permit-intervals" => child_permit_intervals(&url),
        "permit-hold" => child_permit_hold(&url),
        "permit-queue" => child_permit_queue(&url),
        other => panic!("unknown child role {other:?}"),
    }
}

/// 8 threads, 15 rounds each: a permit of a semaphore of 3, a few ms inside; every
/// critical section reported as `CHILD-IV <start ns> <end ns>`.
fn child_permit_intervals(url: &str) {
    let client = LockClient::open(url).unwrap();
    say("CHILD-READY");
    let lines = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let sem = client.semaphore(CAPPED, 3);
                s.spawn(move || {
                    (0..15u64)
                        .map(|i| {
                            let p = sem.acquire().unwrap();
                            let start = wall_ns();
                            thread::sleep(Duration::from_millis(2 + (i + t) % 4));
                            let end = wall_ns();
                            p.unlock().unwrap();
                            format!("CHILD-IV {start} {end}")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for l in lines {
        say(&l);
    }
    say("CHILD-DONE");
}

/// Takes the only permit with a short, renewed lease and keeps it until killed (or
/// its stdin closes, so it cannot outlive a parent that died).
fn child_permit_hold(url: &str) {
    let client = LockClient::open(url).unwrap();
    let sem = client.semaphore_with(KILLED, 1, MutexOptions::default().lease(KILLED_LEASE));
    let permit = sem.acquire().unwrap();
    say(&format!("CHILD-HOLDS {}", permit.token()));
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(permit);
}

/// Waits for the only permit of `QUEUED_SEM` (queueing in Redis) until killed, or
/// until its stdin closes.
fn child_permit_queue(url: &str) {
    let client = LockClient::open(url).unwrap();
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    say("CHILD-QUEUEING");
    let p = client.semaphore(QUEUED_SEM, 1).acquire().unwrap();
    say(&format!("CHILD-HOLDS {}", p.token()));
}

const QUEUED_SEM: &str = "queued-sem";

// ---- the parent side ----

#[test]
fn never_more_holders_than_permits_across_processes() {
    let server = RedisServer::start();
    let mut children: Vec<_> = (0..2).map(|_| ChildProcess::spawn("permit-intervals", &server.url())).collect();
    for c in &mut children {
        c.expect_line("CHILD-READY", Duration::from_secs(30));
    }
    let mut events = Vec::new();
    for c in &mut children {
        loop {
            let line = c.lines.recv_timeout(Duration::from_secs(120)).expect("a child reports");
            if line.contains("CHILD-DONE") {
                break;
            }
            if let Some(at) = line.find("CHILD-IV ") {
                let (s, e) = line[at + 9..].split_once(' ').unwrap();
                // Ends before starts at the same instant: touching sections do not overlap.
                events.push((s.parse::<u128>().unwrap(), 1i32));
                events.push((e.parse::<u128>().unwrap(), -1i32));
            }
        }
    }
    assert_eq!(events.len(), 2 * 2 * 8 * 15, "every critical section reported");
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut inside, mut most) = (0, 0);
    for (_, d) in events {
        inside += d;
        most = most.max(inside);
    }
    assert!(most <= 3, "{most} holders at once of a semaphore of 3");
    assert_eq!(most, 3, "the permits were all in use at times (the check can see holders together)");
}

#[test]
fn a_killed_holder_s_permit_comes_back_within_its_lease_and_a_renewal_period() {
    let server = RedisServer::start();
    let mut holder = ChildProcess::spawn("permit-hold", &server.url());
    holder.expect_line("CHILD-HOLDS", Duration::from_secs(30));
    let client = connected(&server);
    let sem = client.semaphore_with(KILLED, 1, MutexOptions::default().lease(KILLED_LEASE));
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let sem = sem.clone();
        thread::spawn(move || {
            let p = sem.acquire().unwrap();
            tx.send(Instant::now()).unwrap();
            p.unlock().unwrap();
        })
    };
    // The holder renews: past its lease, the waiter still waits.
    assert!(rx.recv_timeout(KILLED_LEASE + Duration::from_millis(700)).is_err(), "the permit is renewed");
    holder.signal("-KILL");
    let killed = Instant::now();
    let acquired = rx.recv_timeout(Duration::from_secs(10)).expect("the permit came back");
    let after = acquired.duration_since(killed);
    println!("permit came back {after:?} after kill -9 (lease {KILLED_LEASE:?})");
    assert!(after <= KILLED_LEASE + KILLED_LEASE / 3, "came back {after:?} after the kill");
    waiter.join().unwrap();
}

#[test]
fn a_forgotten_permit_without_auto_renew_comes_back_after_its_lease() {
    let server = RedisServer::start();
    let client = connected(&server);
    let lease = Duration::from_secs(1);
    let sem = client.semaphore_with("forgotten", 1, MutexOptions::default().lease(lease).auto_renew(false));
    let taken = Instant::now();
    std::mem::forget(sem.acquire().unwrap());
    assert!(sem.try_acquire().unwrap().is_none(), "held by the forgotten permit");
    let p = sem.acquire().unwrap();
    let after = taken.elapsed();
    println!("a forgotten permit came back after {after:?} (lease {lease:?})");
    assert!(after >= lease - Duration::from_millis(50), "not before its lease ran out: {after:?}");
    assert!(after <= lease + Duration::from_millis(500), "soon after its lease ran out: {after:?}");
    p.unlock().unwrap();
}

#[test]
fn permits_are_counted_and_renewed() {
    let server = RedisServer::start();
    let client = connected(&server);
    let sem = client.semaphore_with("three", 3, MutexOptions::default().lease(Duration::from_millis(600)));
    let held: Vec<_> = (0..3).map(|_| sem.try_acquire().unwrap().expect("a free permit")).collect();
    assert!(sem.try_acquire().unwrap().is_none(), "3 of 3 held");
    assert_eq!(sem.available().unwrap(), 0);
    // Renewed past their lease.
    thread::sleep(Duration::from_millis(1000));
    for p in &held {
        assert!(p.is_held().unwrap() && !p.is_lost(), "renewed");
    }
    held[0].extend(Duration::from_secs(5)).unwrap();
    let mut held = held.into_iter();
    held.next().unwrap().unlock().unwrap();
    assert_eq!(sem.available().unwrap(), 1);
    let again = sem.try_acquire().unwrap().expect("the returned permit");
    assert!(client.stats().renewals >= 3, "{:?}", client.stats());
    drop((again, held));
    assert_eq!(sem.available().unwrap(), 3);
}

#[test]
fn clients_that_disagree_on_the_count_get_a_clear_error() {
    let server = RedisServer::start();
    let (a, b) = (connected(&server), connected(&server));
    let three = a.semaphore("pool", 3);
    let p = three.acquire().unwrap();
    let five = b.semaphore("pool", 5);
    for result in [five.acquire().map(drop), five.try_acquire().map(drop), five.available().map(drop)] {
        let err = result.expect_err("a count of 5 where 3 is in use");
        assert!(matches!(err, Error::PermitsMismatch { permits: 5, in_use: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("in use with 3 permits"), "{err}");
    }
    assert_eq!(three.available().unwrap(), 2);
    p.unlock().unwrap();
    // Idle, the count may change.
    let p = five.acquire().unwrap();
    assert_eq!(five.available().unwrap(), 4);
    assert!(matches!(three.try_acquire(), Err(Error::PermitsMismatch { permits: 3, in_use: 5, .. })));
    p.unlock().unwrap();
}

/// The tokens queued for the semaphore `name` (default prefix), in order.
fn queued(server: &RedisServer, name: &str) -> usize {
    let q: Option<String> =
        redis::cmd("HGET").arg(format!("redis-mutex:{{{name}}}:sem:s")).arg("q").query(&mut server.conn()).unwrap();
    q.map_or(0, |q| q.split_whitespace().count())
}

#[test]
fn permits_go_to_waiters_in_fifo_order_across_clients() {
    let server = RedisServer::start();
    let clients = [per_thread(&server), per_thread(&server)];
    let holder = clients[0].semaphore("fifo", 1).acquire().unwrap();
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..6 {
        let (sem, order) = (clients[i % 2].semaphore("fifo", 1), order.clone());
        waiters.push(thread::spawn(move || {
            let p = sem.acquire().unwrap();
            order.lock().unwrap().push(i);
            thread::sleep(Duration::from_millis(10));
            p.unlock().unwrap();
        }));
        wait_until(Duration::from_secs(10), "the waiter to queue", || queued(&server, "fifo") == i + 1);
    }
    // A newcomer does not jump the queue either.
    assert!(clients[1].semaphore("fifo", 1).try_acquire().unwrap().is_none());
    holder.unlock().unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5], "permits in the order the waiters queued");
}

#[test]
fn idle_waiters_send_nothing_and_a_release_wakes_one_by_notification() {
    let server = RedisServer::start();
    let (a, b) = (connected(&server), per_thread(&server));
    let held: Vec<_> = (0..2).map(|_| a.semaphore("quiet", 2).acquire().unwrap()).collect();
    let (tx, rx) = mpsc::channel();
    let go = Arc::new(StdMutex::new(()));
    let gate = go.lock().unwrap();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let (sem, tx, go) = (b.semaphore("quiet", 2), tx.clone(), go.clone());
            thread::spawn(move || {
                let p = sem.acquire().unwrap();
                tx.send(()).unwrap();
                drop(go.lock().unwrap());
                p.unlock().unwrap();
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "10 waiters to queue", || queued(&server, "quiet") == 10);
    thread::sleep(Duration::from_millis(200));
    let (calls, before) = (server.total_calls(), b.stats());
    thread::sleep(Duration::from_secs(2));
    let sent = server.total_calls() - calls;
    assert!(sent <= 2, "10 idle waiters made Redis run {sent} commands in 2 s");
    let mut held = held.into_iter();
    drop(held.next());
    rx.recv_timeout(Duration::from_secs(5)).expect("a waiter got the permit");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "one permit, one waiter");
    let s = b.stats().since(&before);
    assert_eq!((s.wakeups_notified, s.permit_acquisitions, s.attempts), (1, 1, 0), "one woken, granted: {s:?}");
    drop(held.next());
    drop(gate);
    for w in waiters {
        w.join().unwrap();
    }
    let s = b.stats().since(&before);
    assert_eq!(s.permit_acquisitions, 10);
    assert_eq!(s.wakeups_timeout, 0, "woken by notification only: {s:?}");
    assert_eq!(a.semaphore("quiet", 2).available().unwrap(), 2);
}

#[test]
fn grants_to_threads_of_the_releasing_client_cost_no_message() {
    let server = RedisServer::start();
    let client = per_thread(&server);
    let sem = client.semaphore("local", 1);
    let held = sem.acquire().unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let sem = sem.clone();
            thread::spawn(move || {
                let p = sem.acquire().unwrap();
                thread::sleep(Duration::from_millis(5));
                p.unlock().unwrap();
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "4 waiters to queue", || queued(&server, "local") == 4);
    let before = client.stats();
    held.unlock().unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    let s = client.stats().since(&before);
    assert_eq!((s.permit_acquisitions, s.grants, s.attempts), (4, 4, 0), "each granted by a release: {s:?}");
    assert_eq!(s.messages_received, 0, "woken by the releasing thread, not by a message: {s:?}");
    assert_eq!(s.wakeups_timeout, 0, "{s:?}");
}

#[test]
fn a_killed_waiter_at_the_head_costs_the_queue_about_the_reservation_timeout() {
    let server = RedisServer::start();
    let reservation = Duration::from_millis(500);
    let client = connected_with(&server, LockClient::builder().reservation_timeout(reservation));
    let sem = client.semaphore(QUEUED_SEM, 1);
    let held = sem.acquire().unwrap();
    let mut child = ChildProcess::spawn("permit-queue", &server.url());
    child.expect_line("CHILD-QUEUEING", Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the child to queue", || queued(&server, QUEUED_SEM) == 1);
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let sem = sem.clone();
        thread::spawn(move || {
            let p = sem.acquire().unwrap();
            tx.send(Instant::now()).unwrap();
            p.unlock().unwrap();
        })
    };
    wait_until(Duration::from_secs(10), "the waiter to queue behind it", || queued(&server, QUEUED_SEM) == 2);
    child.signal("-KILL");
    child.wait(Duration::from_secs(10));
    // The release grants the permit to the dead child, and tells the waiter behind it
    // to look again when that grant would run out untaken.
    let released = Instant::now();
    held.unlock().unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("the waiter got the permit");
    let after = got.duration_since(released);
    println!("the waiter behind a killed one got the permit {after:?} after the release");
    assert!(after >= reservation, "not before the dead child's grant ran out: {after:?}");
    assert!(after < reservation * 3, "about a reservation timeout, not a lease (30 s): {after:?}");
    waiter.join().unwrap();
}
