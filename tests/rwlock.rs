//! Proves the read-write lock: readers share and a writer excludes everyone, within a
//! process and across processes (2 processes × 4 reader threads hold together; no
//! write interval overlaps any other interval); a writer behind a continuous stream
//! of readers gets in within the stated bound (writer preference); a writer's release
//! wakes the queued readers together, by notification; idle waiters send nothing.
//! The last two use a client with `handoff_limit(0)` (every waiting thread its own
//! entry in Redis); `shared_fast.rs` proves the in-process fast path.
//!
//! Other processes are this test binary run again (`child_entry`, selected by the
//! `REDIS_MUTEX_CHILD` environment variable); they report on stdout.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_mutex::{Error, LockClient, MutexOptions};
use support::child::{ChildProcess, say};
use support::{RedisServer, connected_with, poll_until, wait_until, writer_waits};

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

const SHARED: &str = "shared-catalog";
const READERS_IN: &str = "test:readers-in";
const STREAM: &str = "stream-catalog";
const STOP: &str = "test:stop";
const INTERVALS: &str = "intervals-catalog";

// ---- the child side ----

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Some((role, url)) = support::child::role() else { return };
    match role.as_str() {
        "readers-together" => child_readers_together(&url),
        "reader-stream" => child_reader_stream(&url),
        "intervals" => child_intervals(&url),
        other => panic!("unknown child role {other:?}"),
    }
}

/// 4 threads each take a read lock, count themselves in, and hold it until 8 readers
/// (this process's and the other's) are in at once, or 20 s passed.
fn child_readers_together(url: &str) {
    let client = LockClient::open(url).unwrap();
    let redis = redis::Client::open(url).unwrap();
    say("CHILD-READY");
    let together = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (rw, redis) = (client.rw_lock(SHARED), redis.clone());
                s.spawn(move || {
                    let mut con = redis.get_connection().unwrap();
                    let guard = rw.read().unwrap();
                    let _: i64 = redis::cmd("INCR").arg(READERS_IN).query(&mut con).unwrap();
                    let all = poll_until(Duration::from_secs(20), || {
                        redis::cmd("GET").arg(READERS_IN).query::<i64>(&mut con).unwrap() >= 8
                    });
                    guard.unlock().unwrap();
                    all
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).filter(|&all| all).count()
    });
    say(&format!("CHILD-TOGETHER {together}"));
}

/// 4 threads read in a loop (20 ms inside, no pause between) until the stop key is set.
fn child_reader_stream(url: &str) {
    let client = LockClient::open(url).unwrap();
    let redis = redis::Client::open(url).unwrap();
    say("CHILD-READY");
    let reads = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (rw, redis) = (client.rw_lock(STREAM), redis.clone());
                s.spawn(move || {
                    let mut con = redis.get_connection().unwrap();
                    let mut reads = 0;
                    while !redis::cmd("EXISTS").arg(STOP).query::<bool>(&mut con).unwrap() {
                        let guard = rw.read().unwrap();
                        thread::sleep(Duration::from_millis(20));
                        guard.unlock().unwrap();
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    say(&format!("CHILD-READS {reads}"));
}

/// 4 threads, each 30 rounds: thread 0 writes, the others read (a few ms inside);
/// every critical section is reported as `CHILD-IV <w|r> <start ns> <end ns>`.
fn child_intervals(url: &str) {
    let client = LockClient::open(url).unwrap();
    say("CHILD-READY");
    let lines = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let rw = client.rw_lock(INTERVALS);
                s.spawn(move || {
                    let mut lines = Vec::new();
                    for i in 0..30u64 {
                        let (kind, start, end) = if t == 0 {
                            let g = rw.write().unwrap();
                            let start = wall_ns();
                            thread::sleep(Duration::from_millis(2));
                            let end = wall_ns();
                            g.unlock().unwrap();
                            ('w', start, end)
                        } else {
                            let g = rw.read().unwrap();
                            let start = wall_ns();
                            thread::sleep(Duration::from_millis(1 + i % 4));
                            let end = wall_ns();
                            g.unlock().unwrap();
                            ('r', start, end)
                        };
                        lines.push(format!("CHILD-IV {kind} {start} {end}"));
                    }
                    lines
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

// ---- the parent side ----

#[test]
fn readers_share_and_a_writer_excludes_everyone() {
    let server = RedisServer::start();
    let (a, b) = (connected(&server), connected(&server));
    let (ra, rb) = (a.rw_lock("doc"), b.rw_lock("doc"));
    let r1 = ra.read().unwrap();
    let r2 = rb.try_read().unwrap().expect("readers share");
    assert!(rb.try_write().unwrap().is_none(), "a writer waits for the readers");
    drop(r1);
    assert!(ra.try_write().unwrap().is_none(), "one reader is enough to keep a writer out");
    r2.unlock().unwrap();
    let w = ra.try_write().unwrap().expect("free");
    assert!(rb.try_read().unwrap().is_none(), "a writer keeps readers out");
    assert!(rb.try_write().unwrap().is_none(), "and other writers");
    assert!(w.is_held().unwrap() && !w.is_lost());
    w.unlock().unwrap();
    let r = rb.try_read().unwrap().expect("free again");
    r.unlock().unwrap();
    // A mutex, a read-write lock and a semaphore of one name are separate locks.
    let _m = a.mutex("doc").lock().unwrap();
    let _p = a.semaphore("doc", 1).acquire().unwrap();
    let _w = ra.try_write().unwrap().expect("not excluded by the mutex or the semaphore");
    let s = a.stats();
    assert_eq!((s.read_acquisitions, s.write_acquisitions, s.permit_acquisitions), (1, 2, 1));
}

/// The guards may be handed to another thread (the API promises `Send`).
const _: () = {
    const fn send<T: Send>() {}
    send::<redis_mutex::RwLockReadGuard>();
    send::<redis_mutex::RwLockWriteGuard>();
    send::<redis_mutex::SemaphorePermit>();
    send::<redis_mutex::RwLock>();
    send::<redis_mutex::Semaphore>();
};

#[test]
fn options_a_read_write_lock_cannot_honour_are_refused_before_any_io() {
    let client = LockClient::builder().build_unchecked("redis://127.0.0.1:1/").unwrap();
    let fenced = client.rw_lock_with("x", MutexOptions::default().fencing(true));
    assert!(matches!(fenced.try_write(), Err(Error::InvalidOption { option: "fencing", .. })));
    let replicated = client.rw_lock_with("x", MutexOptions::default().wait_replicas(1, Duration::from_millis(10)));
    assert!(matches!(replicated.read(), Err(Error::InvalidOption { option: "wait_replicas", .. })));
    assert!(matches!(client.rw_lock("").try_read(), Err(Error::InvalidName { .. })));
}

#[test]
fn readers_of_two_processes_hold_together() {
    let server = RedisServer::start();
    let mut children: Vec<_> = (0..2).map(|_| ChildProcess::spawn("readers-together", &server.url())).collect();
    for c in &mut children {
        c.expect_line("CHILD-READY", Duration::from_secs(30));
    }
    for c in &mut children {
        let together: usize = c.expect_line("CHILD-TOGETHER", Duration::from_secs(60)).parse().unwrap();
        assert_eq!(together, 4, "every reader of the child saw all 8 readers inside at once");
    }
}

/// Critical sections `(writer?, start, end)` in wall-clock ns, from every child.
fn collect_intervals(children: &mut [ChildProcess]) -> Vec<(bool, u128, u128)> {
    let mut all = Vec::new();
    for c in children.iter_mut() {
        loop {
            let line = c.lines.recv_timeout(Duration::from_secs(120)).expect("a child reports");
            c.seen.push(line.clone());
            if line.contains("CHILD-DONE") {
                break;
            }
            if let Some(at) = line.find("CHILD-IV ") {
                let f: Vec<&str> = line[at + 9..].split(' ').collect();
                all.push((f[0] == "w", f[1].parse().unwrap(), f[2].parse().unwrap()));
            }
        }
    }
    all
}

#[test]
fn a_writer_never_overlaps_anyone_across_processes() {
    let server = RedisServer::start();
    let mut children: Vec<_> = (0..2).map(|_| ChildProcess::spawn("intervals", &server.url())).collect();
    for c in &mut children {
        c.expect_line("CHILD-READY", Duration::from_secs(30));
    }
    let all = collect_intervals(&mut children);
    assert_eq!(all.len(), 2 * 4 * 30, "every critical section reported");
    let mut overlapping_readers = 0;
    for (i, &(w, s, e)) in all.iter().enumerate() {
        for &(w2, s2, e2) in &all[i + 1..] {
            if s < e2 && s2 < e {
                assert!(!w && !w2, "a write section overlaps another section: {:?} and {:?}", (w, s, e), (w2, s2, e2));
                overlapping_readers += 1;
            }
        }
    }
    // The check can see overlaps: readers did overlap.
    assert!(overlapping_readers > 0, "readers never overlapped: the checker saw nothing to check");
}

#[test]
fn a_writer_behind_a_stream_of_readers_gets_in_within_the_bound() {
    let server = RedisServer::start();
    let mut children: Vec<_> = (0..2).map(|_| ChildProcess::spawn("reader-stream", &server.url())).collect();
    for c in &mut children {
        c.expect_line("CHILD-READY", Duration::from_secs(30));
    }
    let client = connected(&server);
    let rw = client.rw_lock(STREAM);
    // The stream is on: readers hold it continuously (8 threads, 20 ms each, no pause).
    wait_until(Duration::from_secs(10), "the readers to stream", || rw.try_write().unwrap().is_none());
    thread::sleep(Duration::from_millis(300));
    let waits = writer_waits(&rw);
    let _: () = redis::cmd("SET").arg(STOP).arg(1).query(&mut server.conn()).unwrap();
    let mut reads = 0;
    for c in &mut children {
        reads += c.expect_line("CHILD-READS", Duration::from_secs(30)).parse::<u64>().unwrap();
    }
    // The bound: the readers holding when the writer queued finish (20 ms each), then
    // the last one's release grants it. A round trip or two more, on a busy machine.
    let worst = *waits.iter().max().unwrap();
    println!("writer waits behind the reader stream: {waits:?}; readers read {reads} times");
    assert!(worst < Duration::from_millis(500), "a writer waited {worst:?} behind readers of 20 ms: {waits:?}");
    assert!(reads > 50, "the readers streamed: {reads}");
}

#[test]
fn a_writer_s_release_wakes_the_queued_readers_together_by_notification() {
    let server = RedisServer::start();
    let (a, b) = (connected(&server), per_thread(&server));
    let w = a.rw_lock("board").write().unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(7));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (rw, inside, all_in, start) = (b.rw_lock("board"), inside.clone(), all_in.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let g = rw.read().unwrap();
                inside.fetch_add(1, Ordering::SeqCst);
                if poll_until(Duration::from_secs(10), || inside.load(Ordering::SeqCst) == 6) {
                    all_in.store(true, Ordering::SeqCst);
                }
                g.unlock().unwrap();
            })
        })
        .collect();
    start.wait();
    let rw = b.rw_lock("board");
    // Queued, and each reader's first attempt made (a thread counts as waiting before
    // its attempt is sent).
    wait_until(Duration::from_secs(10), "6 readers to queue", || rw.waiting_threads() == 6 && b.stats().attempts >= 6);
    let quiet = b.stats();
    thread::sleep(Duration::from_millis(200));
    let before = b.stats();
    assert_eq!(before.since(&quiet).attempts, 0, "queued readers do not poll");
    w.unlock().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert!(all_in.load(Ordering::SeqCst), "the 6 readers held the lock together");
    let s = b.stats().since(&before);
    assert_eq!(s.read_acquisitions, 6);
    assert_eq!(s.wakeups_timeout, 0, "no reader was woken by its time bound");
    assert!(s.wakeups_notified >= 6, "every reader was woken by the release: {s:?}");
    assert_eq!(s.grants, 6, "each was granted the lock by the release, no attempt of its own: {s:?}");
    assert_eq!(s.attempts, 0, "{s:?}");
}

#[test]
fn idle_waiters_send_nothing() {
    let server = RedisServer::start();
    let (a, b) = (connected(&server), per_thread(&server));
    let r = a.rw_lock("idle").read().unwrap();
    let w = a.rw_lock("idle2").write().unwrap();
    // Writers wait behind a reader, readers and writers behind a writer.
    let waiters: Vec<_> = (0..20)
        .map(|i| {
            let b = b.clone();
            thread::spawn(move || match i % 3 {
                0 => drop(b.rw_lock("idle").write().unwrap()),
                1 => drop(b.rw_lock("idle2").read().unwrap()),
                _ => drop(b.rw_lock("idle2").write().unwrap()),
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "20 waiters to queue", || {
        b.rw_lock("idle").waiting_threads() + b.rw_lock("idle2").waiting_threads() == 20 && b.stats().attempts >= 20
    });
    thread::sleep(Duration::from_millis(200));
    let calls = server.total_calls();
    let before = b.stats();
    thread::sleep(Duration::from_secs(2));
    let sent = server.total_calls() - calls;
    assert!(sent <= 2, "20 idle waiters made Redis run {sent} commands in 2 s");
    assert_eq!(b.stats().since(&before).attempts, 0);
    drop(r);
    drop(w);
    for t in waiters {
        t.join().unwrap();
    }
    let s = b.stats().since(&before);
    assert_eq!(s.acquisitions, 20);
    assert_eq!(s.wakeups_timeout, 0, "woken by notification only: {s:?}");
}
