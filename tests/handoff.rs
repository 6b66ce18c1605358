//! Proves how a release hands the lock to a waiting thread of the same client: without
//! a round trip while Redis confirms the holder's lease (same Redis tenure, a fencing
//! token that still rises, no command sent), through Redis every `handoff_limit`
//! handoffs or when that is configured, and that a tenure Redis forgot is noticed
//! within a renewal period and at most `handoff_limit` handoffs.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex as StdMutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions, Stats};
use support::{RedisServer, connected_with, wait_until};

/// Acquire attempts (and every other script) Redis has run so far.
fn scripts_run(server: &RedisServer) -> u64 {
    server.command_calls("evalsha")
}

/// The fence counter of lock `name`: the last token handed out.
fn fence_counter(server: &RedisServer, name: &str) -> u64 {
    redis::cmd("GET").arg(format!("redis-mutex:{{{name}}}:fence")).query(&mut server.conn()).unwrap()
}

/// What [`hand_over`] saw.
struct Handover {
    first_token: String,
    first_fence: Option<u64>,
    token: String,
    fence: Option<u64>,
    /// Scripts Redis ran between the release and the waiter's return from `lock()`.
    scripts: u64,
    /// The client's counters then, less those before.
    stats: Stats,
}

/// One thread holds `m`'s lock, another waits for it; the holder releases and the
/// waiter reports what it got before doing anything else. Leaves the lock free.
fn hand_over(server: &RedisServer, client: &LockClient, m: &redis_mutex::Mutex) -> Handover {
    // Load the scripts, so that no NOSCRIPT retry is counted below.
    client.mutex("warm-up").lock().unwrap().unlock().unwrap();
    let before = client.stats();
    let first = m.lock().unwrap();
    let run_before = scripts_run(server);
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let waiter = m.clone();
        s.spawn(move || {
            let guard = waiter.lock().unwrap();
            tx.send((guard.token().to_owned(), guard.fencing_token())).unwrap();
            go_rx.recv().unwrap();
            let holder = waiter.holder().unwrap().expect("someone holds it");
            assert_eq!(holder.token, guard.token(), "Redis lists the handed-over guard as the owner");
            let lease = holder.remaining_lease.expect("a lease");
            assert!(lease > Duration::from_secs(20), "a 30 s lease, renewed or new: {lease:?}");
            assert!(guard.is_held().unwrap());
            guard.unlock().unwrap();
        });
        wait_until(Duration::from_secs(10), "the waiter to find the lock held", || {
            m.waiting_threads() == 1 && scripts_run(server) > run_before
        });
        let (first_token, first_fence) = (first.token().to_owned(), first.fencing_token());
        let at_release = scripts_run(server);
        first.unlock().unwrap();
        let (token, fence) = rx.recv_timeout(Duration::from_secs(10)).expect("the waiter acquires");
        let scripts = scripts_run(server) - at_release;
        let stats = client.stats().since(&before);
        go_tx.send(()).unwrap();
        Handover { first_token, first_fence, token, fence, scripts, stats }
    })
}

#[test]
fn a_release_hands_the_lock_to_a_waiting_thread_without_a_round_trip() {
    let server = RedisServer::start();
    let client = connected_with(&server, LockClient::builder());
    let m = client.mutex_with("baton", MutexOptions::default().fencing(true));
    let h = hand_over(&server, &client, &m);
    let s = h.stats;
    assert_eq!(h.scripts, 0, "nothing was sent to Redis between the release and the waiter's return");
    assert_eq!((s.local_handoffs, s.handoffs, s.releases), (1, 1, 1), "{s:#?}");
    assert_eq!((s.attempts, s.wakeups_notified, s.wakeups_timeout), (2, 1, 0), "{s:#?}");
    assert_eq!(h.token, h.first_token, "the lock stayed in the same Redis tenure");
    let first = h.first_fence.expect("fencing is on");
    assert_eq!(h.fence, Some(first + 1), "a handoff is an acquisition: the next token of the tenure's block");
    assert!(!m.is_locked().unwrap(), "the handed-over guard released the lock");
    assert_eq!(fence_counter(&server, "baton"), first + 8, "the first tenure's block was f..=f+8 (handoff_limit 8)");
    // The next acquisition through Redis takes its tokens above the whole block.
    let next = m.lock().unwrap().fencing_token().unwrap();
    assert!(next > first + 8, "{next} is not above the first tenure's block {first}..={}", first + 8);
}

#[test]
fn handoff_limit_zero_hands_over_through_redis() {
    let server = RedisServer::start();
    let client = connected_with(&server, LockClient::builder().handoff_limit(0));
    let m = client.mutex_with("baton", MutexOptions::default().fencing(true));
    let h = hand_over(&server, &client, &m);
    let s = h.stats;
    assert_eq!((s.local_handoffs, s.handoffs, s.releases), (0, 1, 1), "{s:#?}");
    assert_eq!(h.scripts, 1, "one round trip: the release that handed it over");
    assert_ne!(h.token, h.first_token, "a new tenure under the waiter's own token");
    let fence = h.fence.expect("fencing is on");
    assert!(fence > h.first_fence.expect("fencing is on"), "the fencing token rises");
    assert_eq!(fence_counter(&server, "baton"), fence, "blocks of one token without in-process handoffs");
}

#[test]
fn every_tenure_goes_back_to_redis_after_handoff_limit_handoffs() {
    let server = RedisServer::start();
    let limit = 3;
    let client = connected_with(&server, LockClient::builder().handoff_limit(limit));
    let m = client.mutex_with("loop", MutexOptions::default().fencing(true));
    let stop = AtomicBool::new(false);
    let fences = StdMutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let g = m.lock().unwrap();
                    fences.lock().unwrap().push(g.fencing_token().unwrap());
                    thread::sleep(Duration::from_micros(200));
                    g.unlock().unwrap();
                }
            });
        }
        thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
    });
    let s = client.stats();
    println!("{s:#?}");
    // Tenures started through Redis: every acquisition that was not a local handoff.
    let tenures = s.acquisitions - s.local_handoffs;
    assert!(s.local_handoffs > s.acquisitions / 2, "in-process contention is served locally: {s:#?}");
    assert!(s.local_handoffs <= u64::from(limit) * tenures, "at most {limit} local handoffs per tenure: {s:#?}");
    // Fencing tokens rise strictly in the order the lock was taken.
    let fences = fences.into_inner().unwrap();
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
}

/// Another owner takes the lock from under a chain of in-process handoffs (as after a
/// restart without persistence, or a force-unlock and someone else's attempt): the
/// tenure's guards find out within a renewal period (lease/3) and at most
/// `handoff_limit` handoffs, and the chain's threads then wait for the other owner.
#[test]
fn a_tenure_redis_forgot_is_noticed_within_a_renewal_period() {
    let server = RedisServer::start();
    let limit = 8;
    let a = connected_with(&server, LockClient::builder().handoff_limit(limit));
    let lease = Duration::from_millis(900);
    let ma = a.mutex_with("shared", MutexOptions::default().lease(lease));
    let key = ma.key().unwrap().to_owned();
    let intruder = Duration::from_millis(1500);
    let stop = AtomicBool::new(false);
    // (start, end, reported lost) of every critical section of client A.
    let sections = StdMutex::new(Vec::new());
    let t0 = Instant::now();
    let (b_start, b_end) = thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let g = ma.lock().unwrap();
                    let start = t0.elapsed();
                    thread::sleep(Duration::from_millis(20));
                    let end = t0.elapsed();
                    let lost = g.is_lost() | g.unlock().is_err_and(|e| e.is_lock_lost());
                    sections.lock().unwrap().push((start, end, lost));
                }
            });
        }
        thread::sleep(Duration::from_millis(500));
        // The intruder's lock, written over A's while A holds it.
        let take = redis::Script::new(
            "if redis.call('HGET', KEYS[1], 'o') then \
               redis.call('HSET', KEYS[1], 'o', 'intruder', 'c', 'intruder') \
               redis.call('PEXPIRE', KEYS[1], ARGV[1]) return 1 end return 0",
        );
        let mut con = server.conn();
        let taken_at = loop {
            let at = t0.elapsed();
            if take.key(&key).arg(intruder.as_millis() as u64).invoke::<i64>(&mut con).unwrap() == 1 {
                break at;
            }
        };
        thread::sleep(intruder + Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (taken_at, taken_at + intruder)
    });
    let sections = sections.into_inner().unwrap();
    let after = sections.iter().filter(|(start, ..)| *start > b_end).count();
    assert!(after > 0, "client A's threads go on after the intruder's lease: {sections:?}");
    let unaware: Vec<_> =
        sections.iter().filter(|(start, end, lost)| *start < b_end && *end > b_start && !lost).collect();
    println!("intruder held {b_start:?}..{b_end:?}; A's sections overlapping it without being told: {unaware:?}");
    assert!(unaware.len() <= limit as usize, "at most handoff_limit unaware handoffs: {unaware:?}");
    let bound = b_start + lease / 3 + Duration::from_millis(500);
    assert!(
        unaware.iter().all(|(start, ..)| *start < bound),
        "no unaware holder starts later than a renewal period (+ slack) after the intruder came: {unaware:?}"
    );
    assert!(a.stats().leases_lost >= 1, "the watchdog or a release noticed: {:#?}", a.stats());
}
