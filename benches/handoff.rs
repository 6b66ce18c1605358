//! Contention and handoff figures (DESIGN §7): this crate against a pure polling wait
//! at 1 ms and at 100 ms, on a loopback `redis-server` the benchmark starts, with the
//! loopback PING round trip measured while each workload runs.
//!
//! Workload, like a worker pool: each thread loops lock → 100 µs busy hold → unlock →
//! 0.5–1.5 ms sleep outside the lock; 8 threads in 1 process, and 4 processes × 4
//! threads. `cargo bench --bench handoff` (about 1 minute); `BENCH_SECS` sets each
//! run's length (default 10), `BENCH_ONLY=1p|4p` runs one setup, `HANDOFF_LIMIT` sets
//! the client option of that name (default 8).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_mutex::LockClient;

mod common;

const HOLD: Duration = Duration::from_micros(100);
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

/// One acquisition: wall-clock nanoseconds (comparable across processes on one host).
#[derive(Clone, Copy)]
struct Rec {
    thread: u32,
    asked: u64,
    got: u64,
    released: u64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Process CPU time (user + system) from /proc/self/stat, in seconds.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// The naive recipe: SET NX PX, sleep, retry; owner-checked DEL.
struct Poller {
    con: redis::Connection,
    interval: Duration,
    release: redis::Script,
    commands: u64,
}

impl Poller {
    fn lock(&mut self, token: &str) {
        loop {
            self.commands += 1;
            let ok: Option<String> =
                redis::cmd("SET").arg(LOCK).arg(token).arg("NX").arg("PX").arg(30_000).query(&mut self.con).unwrap();
            if ok.is_some() {
                return;
            }
            thread::sleep(self.interval);
        }
    }
    fn unlock(&mut self, token: &str) {
        self.commands += 1;
        let _: i64 = self.release.key(LOCK).arg(token).invoke(&mut self.con).unwrap();
    }
}

/// Runs `threads` workers in this process for `secs`; returns records, client commands
/// sent and process CPU seconds.
fn run_workers(strategy: Strategy, url: &str, threads: u32, secs: f64, id_base: u32) -> (Vec<Rec>, u64, f64) {
    let handoff_limit = std::env::var("HANDOFF_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let client = LockClient::builder().pool_max_size(threads.max(2)).handoff_limit(handoff_limit).build(url).unwrap();
    let barrier = Arc::new(Barrier::new(threads as usize));
    let cpu0 = process_cpu();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (client, barrier, url) = (client.clone(), barrier.clone(), url.to_owned());
            thread::spawn(move || {
                let mut seed = (now_ns() ^ ((id_base + t) as u64 * 0x9E37_79B9_7F4A_7C15)) | 1;
                let mut recs = Vec::new();
                let m = client.mutex(LOCK);
                let mut poller = match strategy {
                    Strategy::Poll(ms) => Some(Poller {
                        con: redis::Client::open(url.as_str()).unwrap().get_connection().unwrap(),
                        interval: Duration::from_millis(ms),
                        release: redis::Script::new(
                            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                        ),
                        commands: 0,
                    }),
                    Strategy::Crate => None,
                };
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let token = format!("{}-{t}", id_base);
                while Instant::now() < end {
                    let asked = now_ns();
                    let got;
                    let released;
                    match poller.as_mut() {
                        Some(p) => {
                            p.lock(&token);
                            got = now_ns();
                            spin(HOLD);
                            released = now_ns();
                            p.unlock(&token);
                        }
                        None => {
                            let g = m.lock().unwrap();
                            got = now_ns();
                            spin(HOLD);
                            released = now_ns();
                            drop(g);
                        }
                    }
                    recs.push(Rec { thread: id_base + t, asked, got, released });
                    thread::sleep(Duration::from_micros(500 + xorshift(&mut seed) % 1000));
                }
                (recs, poller.map_or(0, |p| p.commands))
            })
        })
        .collect();
    let mut recs = Vec::new();
    let mut commands = 0;
    for h in handles {
        let (r, c) = h.join().unwrap();
        recs.extend(r);
        commands += c;
    }
    if strategy == Strategy::Crate {
        let s = client.stats();
        commands = s.attempts + s.releases - s.local_handoffs + s.renewals;
    }
    (recs, commands, process_cpu() - cpu0)
}

fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg(section).query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Commands that reach this benchmark's server only from inside Lua scripts (ours,
/// and the pollers' owner-checked release).
const SCRIPT_ONLY: &[&str] =
    &["hmget", "hset", "hget", "hexists", "exists", "pexpire", "pttl", "incr", "del", "get", "publish"];

/// (commands received from clients, all calls including script-internal ones), from
/// `INFO commandstats`, leaving out the benchmark's own INFO and PING.
fn calls(con: &mut redis::Connection) -> (f64, f64, std::collections::BTreeMap<String, f64>) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    let (mut top, mut all, mut each) = (0.0, 0.0, std::collections::BTreeMap::new());
    for l in info.lines() {
        let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        if name == "info" || name == "ping" || name.starts_with("config") {
            continue;
        }
        let n: f64 =
            rest.split("calls=").nth(1).and_then(|v| v.split(',').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        all += n;
        each.insert(name.to_owned(), n);
        if !SCRIPT_ONLY.contains(&name) {
            top += n;
        }
    }
    (top, all, each)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
}

struct Row {
    label: String,
    acq_per_s: f64,
    handoff: (f64, f64),
    wait: (f64, f64, f64),
    min_share: f64,
    round_trips: f64,
    redis_cmds: f64,
    redis_calls: f64,
    redis_cpu_us: f64,
    proc_cpu_us: f64,
    ping_us: f64,
}

fn scenario(strategy: Strategy, url: &str, procs: u32, threads: u32, secs: f64) -> Row {
    let mut admin = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("DEL").arg(LOCK).arg(format!("redis-mutex:{{{LOCK}}}")).query(&mut admin).unwrap();
    let calls0 = calls(&mut admin);
    let rcpu0 = info_field(&mut admin, "cpu", "used_cpu_sys") + info_field(&mut admin, "cpu", "used_cpu_user");

    // PING round trips measured on their own connection while the workload runs.
    let ping_url = url.to_owned();
    let pinger = thread::spawn(move || {
        let mut con = redis::Client::open(ping_url.as_str()).unwrap().get_connection().unwrap();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut rtts = Vec::new();
        while Instant::now() < end {
            let t = Instant::now();
            let _: () = redis::cmd("PING").query(&mut con).unwrap();
            rtts.push(t.elapsed().as_nanos() as u64);
            thread::sleep(Duration::from_millis(5));
        }
        rtts
    });

    let (recs, commands, proc_cpu) = if procs == 1 {
        run_workers(strategy, url, threads, secs, 0)
    } else {
        let exe = std::env::current_exe().unwrap();
        let children: Vec<Child> = (0..procs)
            .map(|p| {
                Command::new(&exe)
                    .args(["--child", &strategy.arg(), url, &threads.to_string(), &secs.to_string()])
                    .arg(((p + 1) * 1000).to_string())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut recs = Vec::new();
        let (mut commands, mut cpu) = (0, 0.0);
        for mut c in children {
            for line in BufReader::new(c.stdout.take().unwrap()).lines() {
                let line = line.unwrap();
                let v: Vec<&str> = line.split_whitespace().collect();
                match v.as_slice() {
                    ["rec", t, a, g, r] => recs.push(Rec {
                        thread: t.parse().unwrap(),
                        asked: a.parse().unwrap(),
                        got: g.parse().unwrap(),
                        released: r.parse().unwrap(),
                    }),
                    ["total", cmds, c] => {
                        commands += cmds.parse::<u64>().unwrap();
                        cpu += c.parse::<f64>().unwrap();
                    }
                    _ => {}
                }
            }
            assert!(c.wait().unwrap().success(), "a worker process failed");
        }
        (recs, commands, cpu)
    };
    let mut rtts = pinger.join().unwrap();
    let calls1 = calls(&mut admin);
    let (top_calls, all_calls) = (calls1.0 - calls0.0, calls1.1 - calls0.1);
    if std::env::var_os("BENCH_BREAKDOWN").is_some() {
        let n = recs.len() as f64;
        let each: Vec<String> = calls1
            .2
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", (v - calls0.2.get(k).copied().unwrap_or(0.0)) / n))
            .collect();
        eprintln!("[{} p={procs}] calls per acquisition: {}", strategy.name(), each.join(", "));
    }
    let rcpu = info_field(&mut admin, "cpu", "used_cpu_sys") + info_field(&mut admin, "cpu", "used_cpu_user") - rcpu0;

    let mut recs = recs;
    recs.sort_by_key(|r| r.got);
    let n = recs.len() as f64;
    let span = (recs.last().unwrap().released - recs.first().unwrap().asked) as f64 / 1e9;
    // A handoff: the next holder was already waiting when the previous one released.
    let mut handoffs: Vec<u64> = recs
        .windows(2)
        .filter(|w| w[1].asked < w[0].released)
        .map(|w| w[1].got.saturating_sub(w[0].released))
        .collect();
    handoffs.sort();
    let mut waits: Vec<u64> = recs.iter().map(|r| r.got - r.asked).collect();
    waits.sort();
    let mut per_thread = std::collections::HashMap::new();
    for r in &recs {
        *per_thread.entry(r.thread).or_insert(0u64) += 1;
    }
    let min_share = *per_thread.values().min().unwrap() as f64 / n;
    rtts.sort();
    Row {
        label: format!(
            "{} {}",
            strategy.name(),
            if procs == 1 { format!("{threads} thr") } else { format!("{procs}p×{threads}t") }
        ),
        acq_per_s: n / span,
        handoff: (pct(&handoffs, 0.5), pct(&handoffs, 0.99)),
        wait: (pct(&waits, 0.5), pct(&waits, 0.99), pct(&waits, 1.0)),
        min_share: min_share * (procs * threads) as f64,
        round_trips: commands as f64 / n,
        redis_cmds: top_calls / n,
        redis_calls: all_calls / n,
        redis_cpu_us: rcpu * 1e6 / n,
        proc_cpu_us: proc_cpu * 1e6 / n,
        ping_us: pct(&rtts, 0.5),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (strategy, url) = (Strategy::parse(&args[2]), &args[3]);
        let (threads, secs, base): (u32, f64, u32) =
            (args[4].parse().unwrap(), args[5].parse().unwrap(), args[6].parse().unwrap());
        let (recs, commands, cpu) = run_workers(strategy, url, threads, secs, base);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for r in recs {
            writeln!(out, "rec {} {} {} {}", r.thread, r.asked, r.got, r.released).unwrap();
        }
        writeln!(out, "total {commands} {cpu}").unwrap();
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10.0);
    let server = common::start_server();
    let url = server.url.clone();
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
    let mut rows = Vec::new();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (procs, threads) in [(1, 8), (4, 4)] {
        if (only == "1p" && procs != 1) || (only == "4p" && procs != 4) {
            continue;
        }
        for strategy in [Strategy::Crate, Strategy::Poll(1), Strategy::Poll(100)] {
            if std::env::var("BENCH_STRATEGY").is_ok_and(|s| s != strategy.arg()) {
                continue;
            }
            let r = scenario(strategy, &url, procs, threads, secs);
            println!(
                "{:<26} {:>9.0} {:>8.0}/{:<8.0} {:>8.0}/{:>8.0}/{:>8.0} {:>9.2} {:>7.2} {:>6.2} {:>6.2} {:>9.1} {:>9.1} {:>8.0}",
                r.label,
                r.acq_per_s,
                r.handoff.0,
                r.handoff.1,
                r.wait.0,
                r.wait.1,
                r.wait.2,
                r.min_share,
                r.round_trips,
                r.redis_cmds,
                r.redis_calls,
                r.redis_cpu_us,
                r.proc_cpu_us,
                r.ping_us
            );
            rows.push(r);
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
        let (ours, p1, p100) = (&chunk[0], &chunk[1], &chunk[2]);
        println!(
            "targets [{}]: handoff p50 {:.0} µs ≤ 3× PING {:.0} µs: {}; acq/s ≥ 3× poll-100ms ({:.0}): {}; acq/s ≥ poll-1ms ({:.0}): {}; fewer commands/acq than poll-1ms ({:.2} < {:.2}): {} (all calls incl. script-internal: {:.2} vs {:.2})",
            ours.label,
            ours.handoff.0,
            ours.ping_us,
            ours.handoff.0 <= 3.0 * ours.ping_us,
            p100.acq_per_s,
            ours.acq_per_s >= 3.0 * p100.acq_per_s,
            p1.acq_per_s,
            ours.acq_per_s >= p1.acq_per_s,
            ours.redis_cmds,
            p1.redis_cmds,
            ours.redis_cmds < p1.redis_cmds,
            ours.redis_calls,
            p1.redis_calls
        );
    }
}
