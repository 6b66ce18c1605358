//! Proves a client runs one `redis-mutex-watchdog` and one `redis-mutex-notifier`
//! thread however many guards it holds, and that both end once the client and every
//! guard made from it are dropped.
//!
//! Counts this process's threads in `/proc/self/task`, so no other test in this
//! binary may create clients while it runs: tests here take `SERIAL`.

mod support;
use support::RedisServer;

use std::fs;
use std::sync::Mutex as StdMutex;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexGuard, MutexOptions};

static SERIAL: StdMutex<()> = StdMutex::new(());

/// How long a thread may take to start, or to end once told to.
const SOON: Duration = Duration::from_secs(2);

/// Linux keeps 15 bytes of a thread's name: "redis-mutex-wat", "redis-mutex-not".
const WATCHDOG: &str = "redis-mutex-watchdog";
const NOTIFIER: &str = "redis-mutex-notifier";

/// The names (as the kernel keeps them) of this process's threads.
fn thread_names() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .expect("/proc/self/task (Linux only)")
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .collect()
}

fn count(name: &str) -> usize {
    let kept = &name[..name.len().min(15)];
    thread_names().iter().filter(|n| *n == kept).count()
}

/// Threads of the clients' r2d2 pools (`r2d2-worker-N`).
fn pool_threads() -> usize {
    thread_names().iter().filter(|n| n.starts_with("r2d2-worker")).count()
}

/// Polls the pool thread count until `done` holds (at most `SOON`); returns the last count.
fn pool_threads_until(done: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + SOON;
    loop {
        let n = pool_threads();
        if done(n) || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `count(name) == want`, for at most `limit`. Also when threads start:
/// a new thread names itself a moment after it exists.
fn settles_at(name: &str, want: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if count(name) == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_watchdog_and_one_notifier_per_client_however_many_guards() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = RedisServer::start();
    assert_eq!((count(WATCHDOG), count(NOTIFIER)), (0, 0), "threads left over: {:?}", thread_names());

    let client = LockClient::open(&server.url()).unwrap();
    let started = |want| settles_at(WATCHDOG, want, SOON) && settles_at(NOTIFIER, want, SOON);
    assert!(started(1), "threads: {:?}", thread_names());
    // Pool threads name themselves a moment after they start: wait until the count is
    // non-zero and has not changed for 200 ms.
    let mut per_client = pool_threads_until(|n| n > 0);
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(200) {
        thread::sleep(Duration::from_millis(20));
        let n = pool_threads();
        if n != per_client {
            (per_client, stable_since) = (n, Instant::now());
        }
    }
    assert!(per_client > 0, "no r2d2 pool threads seen: {:?}", thread_names());

    // Each client has its own pair.
    let second = LockClient::open(&server.url()).unwrap();
    assert!(started(2), "threads: {:?}", thread_names());
    assert_eq!(pool_threads_until(|n| n >= 2 * per_client), 2 * per_client, "threads: {:?}", thread_names());
    drop(second);
    assert!(settles_at(WATCHDOG, 1, SOON), "a dropped client's watchdog lives on");
    assert_eq!(
        pool_threads_until(|n| n <= per_client),
        per_client,
        "a dropped client's pool threads live on: {:?}",
        thread_names()
    );
    assert!(settles_at(NOTIFIER, 1, SOON), "a dropped client's notifier lives on");

    let before_guards = thread_names().len();
    let lease = MutexOptions::default().lease(Duration::from_millis(1500));
    let guards: Vec<MutexGuard> = (0..1000)
        .map(|i| client.mutex_with(&format!("threads-{i}"), lease.clone()).try_lock().unwrap().expect("a free lock"))
        .collect();
    assert_eq!(client.renewing_count(), 1000);
    assert_eq!((count(WATCHDOG), count(NOTIFIER)), (1, 1), "threads: {:?}", thread_names());
    assert_eq!(thread_names().len(), before_guards, "holding guards started threads: {:?}", thread_names());

    // The guards keep the client alive: its watchdog must go on renewing them.
    drop(client);
    let client = guards[0].mutex().client();
    let renewed = client.stats().renewals;
    let deadline = Instant::now() + Duration::from_secs(3);
    while client.stats().renewals < renewed + 1000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(client.stats().renewals >= renewed + 1000, "guards were not renewed after the client handle was dropped");
    assert_eq!(count(WATCHDOG), 1);
    assert!(guards.iter().all(|g| !g.is_lost()));

    drop(guards);
    assert!(settles_at(WATCHDOG, 0, SOON), "threads: {:?}", thread_names());
    assert!(settles_at(NOTIFIER, 0, SOON), "threads: {:?}", thread_names());
    assert_eq!(pool_threads_until(|n| n == 0), 0, "pool threads outlive their client: {:?}", thread_names());
}
