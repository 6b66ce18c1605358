//! Contention and handoff figures (DESIGN §7): this crate against a pure polling wait
//! at 1 ms and at 100 ms, on a loopback `redis-server` the benchmark starts, with the
//! loopback PING round trip measured while each workload runs.
//!
//! Workload, like a worker pool: each thread loops lock → 100 µs busy hold → unlock →
//! 0.5–1.5 ms sleep outside the lock; 8 threads in 1 process, and 4 processes × 4
//! threads. `cargo bench --bench handoff` (about 1 minute); `BENCH_SECS` sets each
//! run's length (default 10), `BENCH_ONLY=1p|4p` runs one setup, `BENCH_STRATEGY`
//! one strategy (`crate`, `poll1`, `poll100`), `HANDOFF_LIMIT` sets the client option of
//! that name (default 8), `BENCH_BREAKDOWN=1` prints Redis calls per acquisition by
//! command.
//!
//! The measurement is the peer benchmark's (`redis_mutex_harness::bench`); this file
//! says only how each strategy locks and what it prints.

use std::thread;
use std::time::Duration;

use redis_mutex::LockClient;
use redis_mutex_harness::RedisServer;
use redis_mutex_harness::bench::{self, Contender, Measured, Subject};

const LOCK: &str = "bench";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Strategy {
    Crate,
    Poll(u64),
}

impl Strategy {
    fn name(self) -> String {
        match self {
            Strategy::Crate => "redis-mutex".into(),
            Strategy::Poll(ms) => format!("poll {ms} ms"),
        }
    }

    fn arg(self) -> String {
        match self {
            Strategy::Crate => "crate".into(),
            Strategy::Poll(ms) => format!("poll{ms}"),
        }
    }

    fn parse(s: &str) -> Strategy {
        match s.strip_prefix("poll") {
            Some(ms) => Strategy::Poll(ms.parse().expect("poll interval")),
            None => Strategy::Crate,
        }
    }
}

/// What one process sets up for a strategy: the crate's client, or the URL the
/// pollers connect to.
#[derive(Clone)]
enum Setup {
    Crate(LockClient),
    Poll { url: String, interval: Duration },
}

impl Setup {
    fn new(strategy: Strategy, url: &str, threads: u32) -> Setup {
        match strategy {
            Strategy::Crate => {
                let limit = std::env::var("HANDOFF_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
                let client = LockClient::builder().pool_max_size(threads.max(2)).handoff_limit(limit).build(url);
                Setup::Crate(client.unwrap())
            }
            Strategy::Poll(ms) => Setup::Poll { url: url.to_owned(), interval: Duration::from_millis(ms) },
        }
    }
}

impl Subject for Setup {
    type Contender = Worker;

    fn contender(&self, id: u32) -> Worker {
        match self {
            Setup::Crate(client) => Worker::Crate(client.mutex(LOCK), None),
            Setup::Poll { url, interval } => Worker::Poll(Poller {
                con: redis::Client::open(url.as_str()).unwrap().get_connection().unwrap(),
                interval: *interval,
                release: redis::Script::new(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                ),
                token: format!("{}-{id}", std::process::id()),
                commands: 0,
            }),
        }
    }

    /// The crate's client counts its round trips (in-process handoffs send nothing).
    fn round_trips(&self) -> Option<u64> {
        match self {
            Setup::Crate(client) => {
                let s = client.stats();
                Some(s.attempts + s.releases - s.local_handoffs + s.renewals)
            }
            Setup::Poll { .. } => None,
        }
    }
}

enum Worker {
    Crate(redis_mutex::Mutex, Option<redis_mutex::MutexGuard>),
    Poll(Poller),
}

/// The naive recipe: SET NX PX, sleep, retry; owner-checked DEL.
struct Poller {
    con: redis::Connection,
    interval: Duration,
    release: redis::Script,
    token: String,
    commands: u64,
}

impl Contender for Worker {
    fn acquire(&mut self) -> Result<(), String> {
        match self {
            Worker::Crate(m, g) => *g = Some(m.lock().map_err(|e| e.to_string())?),
            Worker::Poll(p) => loop {
                p.commands += 1;
                let ok: Option<String> = redis::cmd("SET")
                    .arg(LOCK)
                    .arg(&p.token)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query(&mut p.con)
                    .map_err(|e| e.to_string())?;
                if ok.is_some() {
                    break;
                }
                thread::sleep(p.interval);
            },
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), String> {
        match self {
            Worker::Crate(_, g) => drop(g.take()),
            Worker::Poll(p) => {
                p.commands += 1;
                let _: i64 = p.release.key(LOCK).arg(&p.token).invoke(&mut p.con).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn sent(&self) -> Option<u64> {
        match self {
            Worker::Crate(..) => None,
            Worker::Poll(p) => Some(p.commands),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        // A worker process: `--child STRATEGY URL` and the run's parameters.
        bench::child_main(&args[2..], |own, threads| Setup::new(Strategy::parse(&own[0]), &own[1], threads));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10.0);
    let server = RedisServer::start();
    let url = server.url();
    let mut admin = server.admin_conn();
    println!("loopback redis-server 7 at {url}; {secs} s per run; hold 100 µs, 0.5–1.5 ms between acquisitions");
    println!(
        "{:<26} {:>9} {:>17} {:>26} {:>9} {:>7} {:>6} {:>6} {:>9} {:>9} {:>8}",
        "strategy",
        "acq/s",
        "handoff p50/p99",
        "wait p50/p99/max (µs)",
        "min share",
        "RT/acq",
        "cmds",
        "calls",
        "rCPU µs",
        "pCPU µs",
        "PING µs"
    );
    let mut rows: Vec<(String, Measured)> = Vec::new();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (procs, threads) in [(1, 8), (4, 4)] {
        if (only == "1p" && procs != 1) || (only == "4p" && procs != 4) {
            continue;
        }
        for strategy in [Strategy::Crate, Strategy::Poll(1), Strategy::Poll(100)] {
            if std::env::var("BENCH_STRATEGY").is_ok_and(|s| s != strategy.arg()) {
                continue;
            }
            let run = bench::Run {
                url: &url,
                keys: vec![LOCK.to_owned(), format!("redis-mutex:{{{LOCK}}}")],
                procs,
                threads,
                secs,
                think: true,
                child_args: vec![strategy.arg(), url.clone()],
                locks: 1,
            };
            let r = bench::measure(&run, &mut admin, || Setup::new(strategy, &url, threads));
            let label = format!(
                "{} {}",
                strategy.name(),
                if procs == 1 { format!("{threads} thr") } else { format!("{procs}p×{threads}t") }
            );
            println!(
                "{:<26} {:>9.0} {:>8.0}/{:<8.0} {:>8.0}/{:>8.0}/{:>8.0} {:>9.2} {:>7.2} {:>6.2} {:>6.2} {:>9.1} {:>9.1} {:>8.0}",
                label,
                r.acq_per_s,
                r.handoff.0,
                r.handoff.1,
                r.wait.0,
                r.wait.1,
                r.wait.2,
                r.min_share,
                r.rt_per_acq,
                r.cmds_per_acq,
                r.calls_per_acq,
                r.rcpu_us,
                r.pcpu_us,
                r.ping_us
            );
            if let Some(e) = &r.first_error {
                println!("     {} errors, the first: {e}", r.errors);
            }
            if std::env::var_os("BENCH_BREAKDOWN").is_some() {
                let each: Vec<String> = r.per_command.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
                eprintln!("[{label}] calls per acquisition: {}", each.join(", "));
            }
            rows.push((label, r));
        }
    }
    println!("\nmin share: smallest per-thread share × thread count (1.00 = perfectly even)");
    println!("RT/acq: client round trips per acquisition (lock + release + renewals; the pollers' SETs and releases)");
    println!(
        "cmds: commands Redis received from clients per acquisition; calls: all commandstats calls, script-internal included"
    );
    println!(
        "rCPU / pCPU: Redis server / worker process CPU per acquisition; PING: loopback round trip p50 during the run"
    );
    for chunk in rows.chunks_exact(3) {
        let ((label, ours), (_, p1), (_, p100)) = (&chunk[0], &chunk[1], &chunk[2]);
        println!(
            "targets [{label}]: handoff p50 {:.0} µs ≤ 3× PING {:.0} µs: {}; acq/s ≥ 3× poll-100ms ({:.0}): {}; acq/s ≥ poll-1ms ({:.0}): {}; fewer commands/acq than poll-1ms ({:.2} < {:.2}): {} (all calls incl. script-internal: {:.2} vs {:.2})",
            ours.handoff.0,
            ours.ping_us,
            ours.handoff.0 <= 3.0 * ours.ping_us,
            p100.acq_per_s,
            ours.acq_per_s >= 3.0 * p100.acq_per_s,
            p1.acq_per_s,
            ours.acq_per_s >= p1.acq_per_s,
            ours.cmds_per_acq,
            p1.cmds_per_acq,
            ours.cmds_per_acq < p1.cmds_per_acq,
            ours.calls_per_acq,
            p1.calls_per_acq
        );
    }
}
