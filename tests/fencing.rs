//! Proves fencing tokens rise strictly in acquisition order, across handoffs too, and
//! stay above every earlier token after their counter was deleted or forgotten by a
//! restart without persistence (the counter follows the server clock), stored as plain
//! integers; past 2^53 locking with fencing is an error, never a token that could
//! repeat.

mod support;
use support::RedisServer;

use std::sync::{Arc, Mutex as StdMutex};
use std::thread;

use redis_mutex::{LockClient, MutexOptions};

fn client(server: &RedisServer) -> LockClient {
    LockClient::open(&server.url()).expect("client connects")
}

/// `clients` × `threads` workers take the lock `per_thread` times each; returns the
/// fencing tokens in acquisition order, and the clients.
fn fenced_acquisitions(
    server: &RedisServer,
    clients: usize,
    threads: usize,
    per_thread: usize,
) -> (Vec<u64>, Vec<LockClient>) {
    let clients: Vec<LockClient> = (0..clients).map(|_| client(server)).collect();
    let order: Arc<StdMutex<Vec<u64>>> = Arc::default();
    let workers: Vec<_> = (0..threads)
        .flat_map(|_| &clients)
        .map(|c| {
            let m = c.mutex_with("fenced", MutexOptions::default().fencing(true));
            let order = order.clone();
            thread::spawn(move || {
                for _ in 0..per_thread {
                    let g = m.lock().unwrap();
                    // The lock serializes these pushes: the Vec's order is the order
                    // of acquisition.
                    order.lock().unwrap().push(g.fencing_token().expect("fencing is on"));
                    g.unlock().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let order = order.lock().unwrap().clone();
    (order, clients)
}

fn assert_strictly_increasing(tokens: &[u64]) {
    for pair in tokens.windows(2) {
        assert!(pair[0] < pair[1], "fencing token {} was followed by {}", pair[0], pair[1]);
    }
    let distinct: std::collections::BTreeSet<u64> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), tokens.len(), "fencing tokens must be distinct");
}

#[test]
fn fencing_tokens_rise_strictly_in_acquisition_order() {
    let server = RedisServer::start();
    let (tokens, clients) = fenced_acquisitions(&server, 4, 1, 250);
    assert_eq!(tokens.len(), 1000);
    assert_strictly_increasing(&tokens);
    for c in &clients {
        assert_eq!(c.stats().acquisitions, 250);
    }
}

#[test]
fn fencing_tokens_rise_strictly_across_handoffs() {
    // Threads of one client hand the lock to each other inside the release script,
    // which issues the next token there.
    let server = RedisServer::start();
    let (tokens, clients) = fenced_acquisitions(&server, 2, 3, 100);
    assert_eq!(tokens.len(), 600);
    assert_strictly_increasing(&tokens);
    let handoffs: u64 = clients.iter().map(|c| c.stats().handoffs).sum();
    assert!(handoffs >= 100, "only {handoffs} of 600 acquisitions were handoffs");
}

/// The fence counter of the lock `fenced_acquisitions` takes.
const FENCE_KEY: &str = "redis-mutex:{fenced}:fence";

/// The server's clock (`TIME`) in µs since the epoch.
fn server_time_us(server: &RedisServer) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    secs * 1_000_000 + micros
}

/// The fence counter as Redis stores it (`None`: absent).
fn counter_text(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(&mut server.conn()).unwrap()
}

/// Every token of `after` is above every token of `before`.
fn assert_all_above(before: &[u64], after: &[u64], what: &str) {
    let top = before.iter().max().expect("tokens before");
    let low = after.iter().min().expect("tokens after");
    assert!(low > top, "{what}: a token ({low}) was handed out again at or below an earlier one ({top})");
}

#[test]
fn fencing_tokens_stay_above_every_earlier_token_after_the_counter_is_deleted() {
    // As when `allkeys-lru` evicts the counter, or someone deletes it.
    let server = RedisServer::start();
    let (before, _) = fenced_acquisitions(&server, 2, 2, 25);
    let deleted: u64 = redis::cmd("DEL").arg(FENCE_KEY).query(&mut server.conn()).unwrap();
    assert_eq!(deleted, 1, "the counter existed");
    let (after, _) = fenced_acquisitions(&server, 2, 2, 25);
    assert_all_above(&before, &after, "after DEL of the counter");
    assert_strictly_increasing(&[before, after].concat());
}

#[test]
fn fencing_tokens_stay_above_every_earlier_token_after_a_restart_without_persistence() {
    let mut server = RedisServer::start();
    let (before, clients) = fenced_acquisitions(&server, 2, 2, 25);
    server.restart();
    assert_eq!(counter_text(&server, FENCE_KEY), None, "the restart (no persistence) forgot the counter");
    // The clients from before the restart, whose pooled connections broke, and a new one.
    let mut after = Vec::new();
    for c in clients.iter().chain([&client(&server)]) {
        let m = c.mutex_with("fenced", MutexOptions::default().fencing(true));
        for _ in 0..5 {
            after.push(m.lock().unwrap().fencing_token().unwrap());
        }
    }
    assert_all_above(&before, &after, "after a restart without persistence");
    assert_strictly_increasing(&[before, after].concat());
}

#[test]
fn fencing_tokens_follow_the_server_clock_and_the_counter_is_stored_as_plain_digits() {
    let server = RedisServer::start();
    let c = client(&server);
    let span = 9; // handoff_limit (8) + 1: the tokens of one tenure.
    let m = c.mutex_with("fenced", MutexOptions::default().fencing(true));
    let take = || m.try_lock().unwrap().expect("the lock is free").fencing_token().unwrap();
    let stored = || {
        let text = counter_text(&server, FENCE_KEY).expect("a counter");
        assert!(text.bytes().all(|b| b.is_ascii_digit()), "the counter is plain digits: {text:?}");
        text.parse::<u64>().unwrap()
    };

    // No counter yet: the tenure's block starts just above the server's clock.
    let t0 = server_time_us(&server);
    let first = take();
    let t1 = server_time_us(&server);
    assert!(t0 < first && first <= t1 + 1, "token {first} is the clock ({t0}..={t1} µs) + 1");
    assert_eq!(stored(), first + span - 1, "the counter is the tenure's last token");

    // A counter behind the clock (an older version's INCRBY count): the clock wins.
    redis::cmd("SET").arg(FENCE_KEY).arg(42).query::<()>(&mut server.conn()).unwrap();
    let t0 = server_time_us(&server);
    let next = take();
    assert!(next > t0 && next > first + span - 1, "token {next} after a counter of 42 (clock {t0} µs)");

    // A counter ahead of the clock, a round number whose default text would be `8e+15`:
    // it goes on from there, exactly.
    let ahead: u64 = 8_000_000_000_000_000;
    redis::cmd("SET").arg(FENCE_KEY).arg(ahead).query::<()>(&mut server.conn()).unwrap();
    assert_eq!(take(), ahead + 1);
    assert_eq!(counter_text(&server, FENCE_KEY).as_deref(), Some("8000000000000009"));
    assert_eq!(take(), ahead + 1 + span);

    // Beyond 2^53 a script's numbers are not exact integers: an error, never a token
    // that could repeat.
    let edge: u64 = (1 << 53) - 5;
    redis::cmd("SET").arg(FENCE_KEY).arg(edge).query::<()>(&mut server.conn()).unwrap();
    let err = m.try_lock().expect_err("no exact token left");
    assert!(err.to_string().contains("2^53"), "the error says why: {err}");
    assert_eq!(stored(), edge, "the counter is left as it was");
}
