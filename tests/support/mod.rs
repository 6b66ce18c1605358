//! Shared helpers for integration tests. The `redis-server` launcher is the
//! harness crate's (`tests/harness`, re-exported here); what is specific to the
//! library's tests (a client whose notifier is subscribed, the contention driver,
//! the reply-losing proxy) lives here.
//!
//! Each integration-test binary includes this module with `mod support;` and
//! uses only a subset of it, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod child;
pub mod logs;
pub mod proxy;

#[allow(unused_imports)] // used by some test binaries only
pub use proxy::FaultProxy;
pub use redis_mutex_harness::RedisServer;

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds (`true`) or `limit` has passed (`false`).
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Polls `cond` every few milliseconds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client built from `builder` whose notifier is subscribed, so that waiters start on
/// the pub/sub path.
pub fn connected_with(server: &RedisServer, builder: redis_mutex::LockClientBuilder) -> redis_mutex::LockClient {
    let client = builder.build(&server.url()).expect("client connects");
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    client
}

/// What [`contend`] saw.
pub struct Contention {
    /// Which client (index into the slice) held the lock, in order.
    pub order: Vec<usize>,
    /// The longest `lock()` call.
    pub longest: Duration,
    /// Times a thread entered while another was inside (must be 0).
    pub overlaps: u64,
    /// What the probe said inside each critical section, in `order`'s order.
    pub probed: Vec<bool>,
}

/// `threads` threads per client each lock `name` `rounds` times with no pause,
/// recording who held it in which order.
pub fn contend(clients: &[redis_mutex::LockClient], threads: usize, rounds: usize, name: &str) -> Contention {
    contend_with(clients, threads, rounds, name, |_, _| redis_mutex::MutexOptions::default(), |_| false)
}

/// [`contend`], with the options of thread `t` of client `c` given by `options(c, t)`,
/// and `probe(c)` run inside each critical section of client `c` (its answers in
/// [`Contention::probed`]).
pub fn contend_with(
    clients: &[redis_mutex::LockClient],
    threads: usize,
    rounds: usize,
    name: &str,
    options: impl Fn(usize, usize) -> redis_mutex::MutexOptions + Sync,
    probe: impl Fn(usize) -> bool + Sync,
) -> Contention {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let inside = AtomicBool::new(false);
    let overlaps = AtomicU64::new(0);
    let start = std::sync::Barrier::new(clients.len() * threads);
    let order = std::sync::Mutex::new(Vec::with_capacity(clients.len() * threads * rounds));
    let longest = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .flat_map(|c| (0..threads).map(move |t| (c, t)))
            .map(|((who, client), t)| {
                let (inside, overlaps, start, order, options, probe) =
                    (&inside, &overlaps, &start, &order, &options, &probe);
                s.spawn(move || {
                    let m = client.mutex_with(name, options(who, t));
                    let mut longest = Duration::ZERO;
                    start.wait();
                    for _ in 0..rounds {
                        let t = Instant::now();
                        let guard = m.lock().expect("lock");
                        longest = longest.max(t.elapsed());
                        if inside.swap(true, Ordering::SeqCst) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        order.lock().unwrap().push((who, probe(who)));
                        inside.store(false, Ordering::SeqCst);
                        guard.unlock().expect("unlock");
                    }
                    longest
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap_or_default()
    });
    let (order, probed) = order.into_inner().unwrap().into_iter().unzip();
    Contention { order, longest, overlaps: overlaps.into_inner(), probed }
}

/// The prefix of `order` during which every one of `clients` still had work left
/// (each did `per_client` acquisitions in all).
pub fn while_all_busy(order: &[usize], clients: usize, per_client: usize) -> &[usize] {
    let mut done = vec![0; clients];
    let end = order
        .iter()
        .position(|&who| {
            done[who] += 1;
            done[who] == per_client
        })
        .map_or(order.len(), |i| i + 1);
    &order[..end]
}

/// Five writes of `rw` (5 ms inside, 100 ms apart), each given 10 s: how long each
/// waited to get in (the writer-preference tests).
pub fn writer_waits(rw: &redis_mutex::RwLock) -> Vec<Duration> {
    let mut waits = Vec::new();
    for _ in 0..5 {
        let asked = Instant::now();
        let w = rw.try_write_for(Duration::from_secs(10)).unwrap().expect("the writer gets in");
        waits.push(asked.elapsed());
        std::thread::sleep(Duration::from_millis(5));
        w.unlock().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    waits
}
