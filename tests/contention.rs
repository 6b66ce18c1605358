//! Proves the waiting protocol under contention: no lost wake-ups, no starvation, one
//! subscriber per client and a polling fallback while pub/sub is down. Quiet idle
//! waiters: `idle.rs`; handoffs inside one client: `handoff.rs`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions, Stats};
use support::{RedisServer, connected_with, contend, wait_until, while_all_busy};

// ---- helpers ----

fn connected(server: &RedisServer) -> LockClient {
    connected_with(server, LockClient::builder())
}

/// Names of the server's connections (`CLIENT LIST [TYPE kind]`), unnamed ones as "".
fn client_names(con: &mut redis::Connection, kind: Option<&str>) -> Vec<String> {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("LIST");
    if let Some(kind) = kind {
        cmd.arg("TYPE").arg(kind);
    }
    let list: String = cmd.query(con).expect("CLIENT LIST");
    list.lines()
        .map(|line| line.split(' ').find_map(|field| field.strip_prefix("name=")).unwrap_or_default().to_owned())
        .collect()
}

/// The connections of `client` (named `redis-mutex:<id>` or `redis-mutex:<id>:<role>`).
fn connections_of<'a>(names: &'a [String], client: &LockClient) -> Vec<&'a str> {
    let own = format!("redis-mutex:{}", client.id());
    names.iter().map(String::as_str).filter(|n| *n == own || n.starts_with(&format!("{own}:"))).collect()
}

/// Acquire attempts Redis has run so far. Client stats count an attempt before it is
/// sent; this counts it once it has reached Redis (and marked the holder).
fn attempts_run(server: &RedisServer) -> u64 {
    server.command_calls("evalsha")
}

/// Wake-ups by notification and by timeout, summed over `stats`.
fn wakeups(stats: &[Stats]) -> (u64, u64) {
    let notified = stats.iter().map(|s| s.wakeups_notified).sum();
    let timeout = stats.iter().map(|s| s.wakeups_timeout).sum();
    (notified, timeout)
}

// ---- 1. no lost wake-ups ----

#[test]
fn no_lost_wakeups_under_contention() {
    const CLIENTS: usize = 2;
    const THREADS: usize = 8;
    const ROUNDS: usize = 300;
    let server = RedisServer::start();
    let clients: Vec<LockClient> = (0..CLIENTS).map(|_| connected(&server)).collect();
    let started = Instant::now();
    let seen = contend(&clients, THREADS, ROUNDS, "hot");
    let elapsed = started.elapsed();
    let stats: Vec<Stats> = clients.iter().map(LockClient::stats).collect();
    let (acquired, longest, order) = (seen.order.len(), seen.longest, seen.order);
    let (notified, timeout) = wakeups(&stats);
    let both = while_all_busy(&order, CLIENTS, THREADS * ROUNDS);
    let streak = both.chunk_by(|a, b| a == b).map(<[usize]>::len).max().unwrap_or(0);
    let both = both.len();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    println!("{acquired} acquisitions in {elapsed:?}; longest wait {longest:?}");
    println!(
        "the lock changed clients {switches} times; while both had work, the longest run of one client \
         was {streak} acquisitions (of the first {both})"
    );
    println!("wake-ups: {notified} notified, {timeout} by timeout; stats: {stats:#?}");

    assert_eq!(acquired, CLIENTS * THREADS * ROUNDS);
    assert_eq!(stats.iter().map(|s| s.acquisitions).sum::<u64>(), (CLIENTS * THREADS * ROUNDS) as u64);
    assert_eq!(seen.overlaps, 0, "two holders at once");
    // The waiting path must actually have been exercised for the ratio to mean anything.
    let contended: u64 = stats.iter().map(|s| s.contended_acquisitions).sum();
    assert!(contended * 4 >= acquired as u64, "only {contended} of {acquired} acquisitions waited");
    assert!(
        notified * 100 >= (notified + timeout) * 99,
        "only {notified} of {} wake-ups were notifications (need 99%)",
        notified + timeout
    );
    assert!(
        longest <= Duration::from_secs(2),
        "a lock() call waited {longest:?} (limit 2 s); one client held the lock up to {streak} times in a row"
    );
}

// ---- 2. no starvation ----

#[test]
fn no_thread_starves() {
    const THREADS: usize = 8;
    const RUN: Duration = Duration::from_secs(5);
    const HOLD: Duration = Duration::from_micros(100);
    let server = RedisServer::start();
    let client = connected(&server);
    let stop = AtomicBool::new(false);
    let start = Barrier::new(THREADS + 1);
    let counts: Vec<u64> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (client, stop, start) = (&client, &stop, &start);
                s.spawn(move || {
                    let m = client.mutex("shared");
                    let mut n = 0u64;
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let guard = m.lock().expect("lock");
                        let t = Instant::now();
                        while t.elapsed() < HOLD {
                            std::hint::spin_loop();
                        }
                        guard.unlock().expect("unlock");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        start.wait();
        thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: u64 = counts.iter().sum();
    let shares: Vec<String> = counts.iter().map(|c| format!("{:.1}%", *c as f64 * 100.0 / total as f64)).collect();
    println!("{total} acquisitions in {RUN:?} by {THREADS} threads: {counts:?} = {shares:?}");
    println!("stats: {:#?}", client.stats());
    assert!(total >= THREADS as u64 * 20, "too few acquisitions to judge fairness: {counts:?}");
    for (i, c) in counts.iter().enumerate() {
        assert!(c * 20 >= total, "thread {i} got {c} of {total} acquisitions (< 5%): {counts:?} = {shares:?}");
    }
}

// ---- 3. one subscriber per client, bounded connections ----

#[test]
fn many_waiters_share_one_subscriber_and_the_pool() {
    const LOCKS: usize = 64;
    const POOL: u32 = 8;
    let server = RedisServer::start();
    let waiters = connected_with(&server, LockClient::builder().pool_max_size(POOL));
    let holder = connected(&server);
    let long = MutexOptions::default().lease(Duration::from_secs(60));
    let held: Vec<_> = (0..LOCKS)
        .map(|i| holder.mutex_with(&format!("slot-{i}"), long.clone()).try_lock().unwrap().expect("free lock"))
        .collect();

    // Sample the waiting client's connections for as long as anything happens.
    let stop_sampling = AtomicBool::new(false);
    let samples = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let before = waiters.stats();
    let run_before = attempts_run(&server);
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut con = server.conn();
            while !stop_sampling.load(Ordering::SeqCst) {
                let names = client_names(&mut con, None);
                most.fetch_max(connections_of(&names, &waiters).len(), Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(10));
            }
        });
        for i in 0..LOCKS {
            let (m, tx) = (waiters.mutex(&format!("slot-{i}")), tx.clone());
            s.spawn(move || {
                let guard = m.lock().expect("lock");
                let owns = m.holder().unwrap().is_some_and(|h| h.token == guard.token());
                tx.send((i, owns)).unwrap();
                guard.unlock().expect("unlock");
            });
        }
        drop(tx);
        wait_until(Duration::from_secs(20), "64 waiters to make their first attempt", || {
            attempts_run(&server) - run_before >= LOCKS as u64
        });
        let mut con = server.conn();
        let notifier = format!("redis-mutex:{}:notifier", waiters.id());
        for _ in 0..5 {
            let pubsub = client_names(&mut con, Some("pubsub"));
            assert_eq!(connections_of(&pubsub, &waiters), [notifier.as_str()], "pub/sub connections: {pubsub:?}");
            assert_eq!(pubsub.len(), 2, "one subscriber per client: {pubsub:?}");
            let all = client_names(&mut con, None);
            let own = connections_of(&all, &waiters);
            assert!(own.len() <= POOL as usize + 1, "{} connections while waiting: {own:?}", own.len());
            assert_eq!(waiters.stats().acquisitions, before.acquisitions, "nobody acquires while held");
            thread::sleep(Duration::from_millis(100));
        }

        drop(held);
        let mut got = [false; LOCKS];
        for _ in 0..LOCKS {
            let (i, owns) =
                rx.recv_timeout(Duration::from_secs(15)).expect("every waiter acquires soon after the release");
            assert!(owns, "waiter {i}'s guard does not own its key");
            assert!(!got[i], "waiter {i} reported twice");
            got[i] = true;
        }
        assert!(got.iter().all(|g| *g));
        stop_sampling.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
    });
    let d = waiters.stats().since(&before);
    let most = most.load(Ordering::SeqCst);
    println!(
        "{} samples; at most {most} connections of the waiting client; stats {d:#?}",
        samples.load(Ordering::SeqCst)
    );
    assert!(most <= POOL as usize + 1, "the waiting client had {most} connections (pool {POOL} + notifier)");
    assert_eq!(d.acquisitions, LOCKS as u64);
    assert_eq!(d.wakeups_timeout, 0, "every waiter was woken by the release message");
    assert!(d.wakeups_notified >= LOCKS as u64);
}

// ---- 4. fallback when pub/sub is cut ----

/// Threads of `client` each lock `name` once, check that their guard owns the key, and
/// release. Returns a receiver of (thread, owns) per acquisition.
fn spawn_waiters<'s>(
    s: &'s thread::Scope<'s, '_>,
    client: &'s LockClient,
    name: &str,
    n: usize,
    inside: &'s AtomicBool,
) -> mpsc::Receiver<(usize, bool)> {
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let (m, tx) = (client.mutex(name), tx.clone());
        s.spawn(move || {
            let guard = m.lock().expect("lock");
            let alone = !inside.swap(true, Ordering::SeqCst);
            let owns = m.holder().unwrap().is_some_and(|h| h.token == guard.token());
            thread::sleep(Duration::from_millis(2));
            inside.store(false, Ordering::SeqCst);
            guard.unlock().expect("unlock");
            tx.send((i, alone && owns)).unwrap();
        });
    }
    rx
}

#[test]
fn waiters_survive_a_pubsub_outage() {
    const N: usize = 8;
    let server = RedisServer::start();
    let a = connected(&server);
    let b = connected(&server);
    // The holder's lease is long: waiters that miss the release could only outwait it.
    let long = MutexOptions::default().lease(Duration::from_secs(60));
    let bm = b.mutex_with("outage", long);
    let am = a.mutex("outage");
    let inside = AtomicBool::new(false);
    let mut admin = server.conn();

    let before = a.stats();
    let held = bm.try_lock().unwrap().expect("free lock");
    let run_before = attempts_run(&server);
    thread::scope(|s| {
        let rx = spawn_waiters(s, &a, "outage", N, &inside);
        // Only the first waiter of a client asks Redis; the others queue behind it.
        wait_until(Duration::from_secs(10), "8 waiters queued, the first having found the lock held", || {
            am.waiting_threads() == N && attempts_run(&server) > run_before
        });
        let killed: u64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut admin).unwrap();
        assert!(killed >= 2, "killed {killed} pub/sub connections, expected both notifiers");
        // Released while the notifiers are down (reconnecting takes at least 50 ms):
        // nobody hears this release message.
        held.unlock().unwrap();
        let released_at = Instant::now();
        let subscribed: u64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut admin).unwrap();
        println!("notifiers subscribed right after the release: {subscribed}");
        for _ in 0..N {
            let (i, ok) = rx.recv_timeout(Duration::from_secs(15)).expect("every waiter acquires after the outage");
            assert!(ok, "waiter {i} did not hold the lock alone");
        }
        println!("all {N} waiters acquired {:?} after the release", released_at.elapsed());
    });
    wait_until(Duration::from_secs(5), "the notifier to subscribe again", || a.is_notifier_connected());
    let d = a.stats().since(&before);
    println!("during the outage: {d:#?}");
    assert!(d.notifier_reconnects >= 1, "{d:#?}");
    assert_eq!(d.acquisitions, N as u64);
    assert_eq!(d.contended_acquisitions, N as u64, "all waited through the outage");

    // Pub/sub is back: wake-ups are notifications again.
    let before = a.stats();
    let held = bm.try_lock().unwrap().expect("free lock");
    let run_before = attempts_run(&server);
    thread::scope(|s| {
        let rx = spawn_waiters(s, &a, "outage", N, &inside);
        wait_until(Duration::from_secs(10), "8 waiters to find the lock held", || {
            am.waiting_threads() == N && attempts_run(&server) > run_before
        });
        held.unlock().unwrap();
        for _ in 0..N {
            let (i, ok) = rx.recv_timeout(Duration::from_secs(15)).expect("every waiter acquires after the release");
            assert!(ok, "waiter {i} did not hold the lock alone");
        }
    });
    let d = a.stats().since(&before);
    println!("after the reconnect: {d:#?}");
    assert_eq!(d.acquisitions, N as u64);
    assert_eq!(d.contended_acquisitions, N as u64);
    assert!(d.wakeups_notified >= N as u64, "{d:#?}");
    assert_eq!(d.wakeups_timeout, 0, "{d:#?}");
    assert_eq!(d.notifier_reconnects, 0, "{d:#?}");
}
