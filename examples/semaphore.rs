//! A semaphore capping a worker pool's calls to a slow service: 12 workers want to
//! call a partner API that allows 4 calls at once. Every worker takes a permit of the
//! fleet-wide semaphore around each call; a sampler prints how many calls are in
//! flight (and how many workers wait) over time, which never exceeds the permits.
//!
//! `cargo run --release --example semaphore` — uses the Redis at `REDIS_URL`
//! (default `redis://127.0.0.1:6379/`), or starts a throwaway `redis-server` when
//! nothing answers there. Knobs: `WORKERS` (12), `PERMITS` (4), `CALLS` (120). Run it
//! in two terminals against one Redis to see the cap hold across processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::LockClient;
use redis_mutex_harness::RedisServer;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The slow service: 40–120 ms per call. Counts the calls in flight, as the partner
/// would see them.
struct SlowService {
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

impl SlowService {
    fn call(&self, job: usize) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(40 + (job as u64 * 37) % 80));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (workers, permits, calls) = (env_or("WORKERS", 12), env_or("PERMITS", 4) as u32, env_or("CALLS", 120));
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

    let client = LockClient::builder().key_prefix("semaphore-demo").build(&url)?;
    // Every process that calls the partner uses the same name and count.
    let partner = client.semaphore("partner-api", permits);
    let service = Arc::new(SlowService { in_flight: AtomicUsize::new(0), most: AtomicUsize::new(0) });
    let next_job = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    println!("{workers} workers, {calls} calls, at most {permits} at once\n");
    println!("{:>7}  {:>9}  {:>7}", "time", "in flight", "waiting");

    let sampler = {
        let (service, done, partner) = (service.clone(), done.clone(), partner.clone());
        thread::spawn(move || {
            let started = Instant::now();
            while !done.load(Ordering::SeqCst) {
                let n = service.in_flight.load(Ordering::SeqCst);
                let bar = "#".repeat(n);
                println!("{:>6.1}s  {n:>9}  {:>7}  {bar}", started.elapsed().as_secs_f64(), partner.waiting_threads());
                thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (partner, service, next_job) = (partner.clone(), service.clone(), next_job.clone());
            thread::spawn(move || -> Result<(), redis_mutex::Error> {
                loop {
                    let job = next_job.fetch_add(1, Ordering::SeqCst);
                    if job >= calls {
                        return Ok(());
                    }
                    let permit = partner.acquire()?;
                    service.call(job);
                    permit.unlock()?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked")?;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler panicked");

    let s = client.stats();
    println!(
        "\n{calls} calls in {elapsed:.2?}: at most {} in flight (permits: {permits}); {} permits granted by a \
         release without a request of their own, {} waits ended by a message, {} by a timeout",
        service.most.load(Ordering::SeqCst),
        s.grants,
        s.wakeups_notified,
        s.wakeups_timeout
    );
    Ok(())
}
