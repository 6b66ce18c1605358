//! The main demo: a pool of std threads processing jobs that contend on a few lock
//! names, as a synchronous service would. Prints acquisitions, wait percentiles and
//! the client's counters.
//!
//! `cargo run --release --example worker_pool` — uses the Redis at `REDIS_URL`
//! (default `redis://127.0.0.1:6379/`), or starts a throwaway `redis-server` when
//! nothing answers there. Knobs: `WORKERS` (8), `JOBS` (2000), `LOCKS` (3).

use std::sync::{Arc, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::LockClient;
use redis_mutex_harness::RedisServer;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (workers, jobs, locks) = (env_or("WORKERS", 8), env_or("JOBS", 2000), env_or("LOCKS", 3).max(1));
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let (url, _server) = match LockClient::open(&url) {
        Ok(_) => (url, None),
        Err(e) => {
            println!("nothing usable at {url} ({e});\nstarting a throwaway redis-server for this run");
            // The test harness's launcher: a free port, a temporary directory, no
            // persistence; the server is killed when `_server` is dropped.
            let server = RedisServer::builder().try_start()?;
            println!("throwaway redis-server at {}", server.url());
            (server.url(), Some(server))
        }
    };

    let client = LockClient::builder().key_prefix("worker-pool-demo").build(&url)?;
    let queue = Arc::new(StdMutex::new((0..jobs).collect::<Vec<_>>()));
    let waits = Arc::new(StdMutex::new(Vec::with_capacity(jobs)));
    println!("{workers} workers, {jobs} jobs, {locks} lock names");

    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (client, queue, waits) = (client.clone(), queue.clone(), waits.clone());
            thread::spawn(move || -> Result<(), redis_mutex::Error> {
                loop {
                    let Some(job) = queue.lock().unwrap().pop() else { return Ok(()) };
                    // Jobs for one account must not run at once anywhere in the fleet.
                    let account = client.mutex(&format!("account:{}", job % locks));
                    let asked = Instant::now();
                    let guard = account.lock()?;
                    waits.lock().unwrap().push(asked.elapsed());
                    let work = Instant::now();
                    while work.elapsed() < Duration::from_micros(200) {
                        std::hint::spin_loop(); // the critical section
                    }
                    drop(guard);
                    thread::sleep(Duration::from_micros(500)); // work outside the lock
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked")?;
    }
    let elapsed = started.elapsed();

    let mut waits = std::mem::take(&mut *waits.lock().unwrap());
    waits.sort();
    let s = client.stats();
    println!("{} acquisitions in {elapsed:.2?} ({:.0}/s)", waits.len(), waits.len() as f64 / elapsed.as_secs_f64());
    println!(
        "wait for the lock: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        percentile(&waits, 1.0)
    );
    println!(
        "contended {}  handoffs {} ({} without a round trip)  woken by notification {}  by timeout {}  \
         attempts/acquisition {:.2}",
        s.contended_acquisitions,
        s.handoffs,
        s.local_handoffs,
        s.wakeups_notified,
        s.wakeups_timeout,
        s.attempts as f64 / s.acquisitions.max(1) as f64
    );
    println!("{s:#?}");
    Ok(())
}
