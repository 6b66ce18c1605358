//! The queue of waiting clients (field `q` of the lock hash): clients take turns in the
//! order they started waiting, a client that never takes its turn (crashed, stopped)
//! costs the others about `reservation_timeout`, and a client whose waiters gave up
//! leaves the queue or passes its turn on at once. A turn is bounded by `handoff_limit`
//! whatever options the client's threads lock with.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions, Stats};
use support::{RedisServer, connected_with, contend, contend_with, wait_until, while_all_busy};

const KEY: &str = "redis-mutex:{job}";

fn queue(con: &mut redis::Connection) -> Vec<String> {
    let q: Option<String> = redis::cmd("HGET").arg(KEY).arg("q").query(con).unwrap();
    // Entries are `<client id>:<fencing span>:<mark>`.
    q.unwrap_or_default().split_whitespace().map(|e| e.split(':').next().unwrap_or(e).to_owned()).collect()
}

#[test]
fn clients_take_turns_in_the_order_they_queued() {
    const CLIENTS: usize = 4;
    const THREADS: usize = 4;
    const ROUNDS: usize = 150;
    const LIMIT: u32 = 8;
    let server = RedisServer::start();
    let clients: Vec<LockClient> =
        (0..CLIENTS).map(|_| connected_with(&server, LockClient::builder().handoff_limit(LIMIT))).collect();
    let seen = contend(&clients, THREADS, ROUNDS, "job");
    let order = seen.order;
    assert_eq!(order.len(), CLIENTS * THREADS * ROUNDS);
    assert_eq!(seen.overlaps, 0, "two holders at once");
    // While every client still had work (all of its threads loop without pause, so it
    // always had a waiter queued).
    let busy = while_all_busy(&order, CLIENTS, THREADS * ROUNDS);
    let all = busy.len();
    let turns: Vec<(usize, usize)> = busy.chunk_by(|a, b| a == b).map(|t| (t[0], t.len())).collect();
    let streak = turns.iter().map(|t| t.1).max().unwrap();
    // Round robin: in every window of CLIENTS consecutive turns, each client once.
    let windows = turns.windows(CLIENTS).count();
    let rotating = turns
        .windows(CLIENTS)
        .filter(|w| {
            let mut seen = [false; CLIENTS];
            w.iter().all(|t| !std::mem::replace(&mut seen[t.0], true))
        })
        .count();
    let longest = seen.longest;
    let stats: Vec<Stats> = clients.iter().map(LockClient::stats).collect();
    println!(
        "{} turns in the first {all} acquisitions; longest turn {streak}; {rotating} of {windows} windows of \
         {CLIENTS} turns visit every client; longest wait {longest:?}",
        turns.len()
    );
    println!("stats: {stats:#?}");
    assert!(turns.len() >= 40, "too few turns to judge: {}", turns.len());
    assert!(streak <= LIMIT as usize + 1, "one client held the lock {streak} times in a row (limit {LIMIT} + 1)");
    assert!(
        rotating * 10 >= windows * 9,
        "clients did not take turns in queue order: only {rotating} of {windows} windows were a full round"
    );
    assert!(longest <= Duration::from_secs(2), "a lock() call waited {longest:?}");
    let timeouts: u64 = stats.iter().map(|s| s.wakeups_timeout).sum();
    assert_eq!(timeouts, 0, "every wake-up should be a notification: {stats:#?}");
}

/// A client that joined the queue and then vanished (here: an id injected into `q`,
/// as a crashed process leaves it) gets the lock reserved when its turn comes. Nobody
/// tells the others when the reservation ends, so their notifiers look again after
/// `reservation_timeout` without a pass; without that the waiter would sleep until the
/// holder's lease (30 s here) was over.
#[test]
fn a_client_that_never_takes_its_turn_costs_the_others_about_the_reservation() {
    const RESERVATION: Duration = Duration::from_millis(400);
    let server = RedisServer::start();
    let builder = LockClient::builder().reservation_timeout(RESERVATION);
    let (a, b) = (connected_with(&server, builder.clone()), connected_with(&server, builder));
    let mut con = server.conn();
    let guard = a.mutex("job").lock().unwrap();
    let _: () = redis::cmd("HSET").arg(KEY).arg("q").arg("ghost:0:1").query(&mut con).unwrap();
    let waiter = thread::spawn(move || {
        let t = Instant::now();
        let g = b.mutex("job").lock().unwrap();
        (t.elapsed(), g.token().to_owned(), b)
    });
    wait_until(Duration::from_secs(5), "b to queue behind the ghost", || queue(&mut con).len() == 2);
    let released = Instant::now();
    drop(guard);
    let (_, token, b) = waiter.join().unwrap();
    let waited = released.elapsed();
    println!("b acquired {waited:?} after the release; stats {:#?}", b.stats());
    assert!(!token.is_empty());
    assert!(waited >= RESERVATION, "b took the ghost's reservation early ({waited:?})");
    assert!(waited <= Duration::from_secs(3), "b waited {waited:?} (reservation {RESERVATION:?}, lease 30 s)");
    assert_eq!(b.stats().wakeups_timeout, 0, "b was woken by its notifier's check, not its own bound");
}

/// The same, when the client behind the grantee queued while the lock had a short lease
/// left (here the holder's 500 ms, not renewed), as every client does while the lock
/// passes from one to the next: it looks again by the grant's end anyway, so the release
/// sends it no notice (one message per release, not two), and it gets the lock once the
/// grant runs out untaken.
#[test]
fn a_client_that_looks_again_by_the_grant_s_end_is_sent_no_notice_and_gets_the_lock() {
    const RESERVATION: Duration = Duration::from_millis(400);
    let server = RedisServer::start();
    let builder = LockClient::builder().reservation_timeout(RESERVATION);
    let (a, b) = (connected_with(&server, builder.clone()), connected_with(&server, builder));
    let mut con = server.conn();
    let short = MutexOptions::default().lease(Duration::from_millis(500)).auto_renew(false);
    let guard = a.mutex_with("job", short).lock().unwrap();
    let _: () = redis::cmd("HSET").arg(KEY).arg("q").arg("ghost:0:1").query(&mut con).unwrap();
    let waiter = thread::spawn(move || {
        let g = b.mutex("job").lock().unwrap();
        (g.token().to_owned(), b)
    });
    wait_until(Duration::from_secs(5), "b to queue behind the ghost", || queue(&mut con).len() == 2);
    let released = Instant::now();
    guard.unlock().unwrap();
    let (token, b) = waiter.join().unwrap();
    let waited = released.elapsed();
    let s = b.stats();
    println!("b acquired {waited:?} after the release; stats {s:#?}");
    assert!(!token.is_empty());
    assert!(waited >= RESERVATION, "b took the ghost's reservation early ({waited:?})");
    assert!(waited <= Duration::from_secs(3), "b waited {waited:?} (reservation {RESERVATION:?})");
    assert_eq!(s.messages_received, 0, "no notice: b looked again by the grant's end on its own");
}

/// A client whose last waiter gives up leaves the queue; a client whose turn comes
/// while it has no waiter (its waiters left without reaching Redis) passes it on at
/// once. Reservations are long here (10 s), so only those paths explain a quick handoff.
#[test]
fn a_client_without_waiters_leaves_the_queue_or_passes_its_turn_on() {
    let server = RedisServer::start();
    let builder = LockClient::builder().reservation_timeout(Duration::from_secs(10));
    let (a, b, v) = (
        connected_with(&server, builder.clone()),
        connected_with(&server, builder.clone()),
        connected_with(&server, builder),
    );
    let mut con = server.conn();
    let guard = a.mutex("job").lock().unwrap();

    // 1. A waiter that times out takes its client out of the queue.
    assert!(v.mutex("job").try_lock_for(Duration::from_millis(300)).unwrap().is_none());
    assert!(!queue(&mut con).contains(&v.id().to_owned()), "v stayed queued after its waiter gave up");

    // 2. A client queued without a waiter (as after a failed leave) passes its turn on.
    let _: () = redis::cmd("HSET").arg(KEY).arg("q").arg(format!("{}:0:1", v.id())).query(&mut con).unwrap();
    let waiter = thread::spawn(move || {
        let g = b.mutex("job").lock().unwrap();
        drop(g);
        b
    });
    wait_until(Duration::from_secs(5), "b to queue behind v", || queue(&mut con).len() == 2);
    let released = Instant::now();
    drop(guard);
    let b = waiter.join().unwrap();
    let waited = released.elapsed();
    println!("b acquired {waited:?} after the release");
    assert!(waited < Duration::from_secs(3), "v held on to its turn: b waited {waited:?} (reservation 10 s)");
    assert_eq!(b.stats().acquisitions, 1);
    // Nothing left behind.
    wait_until(Duration::from_secs(5), "the lock key to go", || {
        !redis::cmd("EXISTS").arg(KEY).query::<bool>(&mut con).unwrap()
    });
}

/// Threads of one client that lock with different options cannot share a tenure (the
/// lock goes through Redis between them, each time a new tenure): the turn is counted
/// across tenures, so once the other client is queued, it gets the lock within
/// `handoff_limit + 1` acquisitions. (Queued in Redis, as each critical section reads:
/// under load a client's threads can be descheduled between unlock and lock, and then
/// it is not waiting at all.)
#[test]
fn a_turn_is_bounded_whatever_options_the_clients_threads_use() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 100;
    const LIMIT: u32 = 8;
    let server = RedisServer::start();
    let clients: Vec<LockClient> =
        (0..2).map(|_| connected_with(&server, LockClient::builder().handoff_limit(LIMIT))).collect();
    let ids: Vec<String> = clients.iter().map(|c| c.id().to_owned()).collect();
    let con = std::sync::Mutex::new(server.conn());
    // Inside client `who`'s critical section: is the other client queued for the lock?
    let other_queued = |who: usize| {
        let (q, g): (Option<String>, Option<String>) =
            redis::cmd("HMGET").arg(KEY).arg("q").arg("g").query(&mut *con.lock().unwrap()).unwrap();
        let other = &ids[1 - who];
        q.unwrap_or_default().split_whitespace().any(|c| c == other) || g.as_deref() == Some(other.as_str())
    };
    // Client 0's threads take turns between two leases; client 1's all use one.
    let seen = contend_with(
        &clients,
        THREADS,
        ROUNDS,
        "job",
        |c, t| {
            let lease = if c == 0 && t % 2 == 1 { 20 } else { 30 };
            MutexOptions::default().lease(Duration::from_secs(lease))
        },
        other_queued,
    );
    assert_eq!(seen.overlaps, 0, "two holders at once");
    // Runs of one client's acquisitions while the other was queued.
    let marked: Vec<(usize, bool)> = seen.order.iter().copied().zip(seen.probed.iter().copied()).collect();
    let runs: Vec<(usize, usize)> =
        marked.chunk_by(|a, b| a.0 == b.0 && a.1 && b.1).filter(|r| r[0].1).map(|r| (r[0].0, r.len())).collect();
    let longest = |who: usize| runs.iter().filter(|r| r.0 == who).map(|r| r.1).max().unwrap_or(0);
    let switches = seen.order.windows(2).filter(|w| w[0] != w[1]).count();
    println!(
        "{switches} changes of client in {} acquisitions; longest runs while the other was queued: {} and {}",
        seen.order.len(),
        longest(0),
        longest(1)
    );
    assert!(switches >= 20, "too few turns to judge: {switches}");
    for who in 0..2 {
        assert!(
            longest(who) <= LIMIT as usize + 1,
            "client {who} held the lock {} times in a row while the other was queued (limit {LIMIT} + 1)",
            longest(who)
        );
    }
}
