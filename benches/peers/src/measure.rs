//! Measurement, generalized from the main crate's `benches/handoff.rs`: wall-clock
//! records per acquisition, handoffs, `INFO commandstats` / `INFO cpu` / `INFO stats`
//! deltas, the loopback PING measured during the run, and worker processes started by
//! re-executing this program.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::peers::{Impl, Lease, Shared};

pub const HOLD: Duration = Duration::from_micros(100);

/// One acquisition: wall-clock nanoseconds (comparable across processes on one host).
#[derive(Clone, Copy)]
pub struct Rec {
    pub thread: u32,
    pub asked: u64,
    pub got: u64,
    pub released: u64,
}

pub fn now_ns() -> u64 {
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

/// Process CPU time (user + system, all threads) from /proc/self/stat, in seconds.
pub fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// What the workers of one process produced.
pub struct Part {
    pub recs: Vec<Rec>,
    /// Client-side round trips, when the implementation tells (see `Shared::round_trips`).
    pub sent: Option<u64>,
    pub cpu: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Runs `threads` workers of `imp` in this process for `secs`: lock → 100 µs busy hold
/// → unlock, and with `think` a 0.5–1.5 ms sleep outside the lock.
pub fn run_workers(imp: Impl, url: &str, threads: u32, secs: f64, id_base: u32, think: bool) -> Part {
    let shared = Shared::new(imp, url, threads);
    let barrier = Arc::new(Barrier::new(threads as usize));
    let cpu0 = process_cpu();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (shared, barrier) = (shared.clone(), barrier.clone());
            let id = id_base + t;
            thread::spawn(move || {
                let mut seed = (now_ns() ^ (id as u64 * 0x9E37_79B9_7F4A_7C15)) | 1;
                let mut w = shared.worker(imp, format!("{}-{id}", std::process::id()));
                let (mut recs, mut errors, mut first_error) = (Vec::new(), 0u64, None);
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    let asked = now_ns();
                    if let Err(e) = w.acquire(Lease::Default) {
                        errors += 1;
                        first_error.get_or_insert(e);
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let got = now_ns();
                    spin(HOLD);
                    let released = now_ns();
                    if let Err(e) = w.release() {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                    recs.push(Rec { thread: id, asked, got, released });
                    if think {
                        thread::sleep(Duration::from_micros(500 + xorshift(&mut seed) % 1000));
                    }
                }
                (recs, w.sent(), errors, first_error)
            })
        })
        .collect();
    let mut part = Part { recs: Vec::new(), sent: None, cpu: 0.0, errors: 0, first_error: None };
    for h in handles {
        let (r, s, e, fe) = h.join().expect("worker thread panicked");
        part.recs.extend(r);
        part.sent = match (part.sent, s) {
            (a, None) => a,
            (a, Some(s)) => Some(a.unwrap_or(0) + s),
        };
        part.errors += e;
        if part.first_error.is_none() {
            part.first_error = fe;
        }
    }
    if let Some(rt) = shared.round_trips() {
        part.sent = Some(rt);
    }
    part.cpu = process_cpu() - cpu0;
    part
}

/// The `--child` entry point: runs workers, prints records and totals on stdout.
pub fn child_main(args: &[String]) {
    let imp = Impl::parse(&args[0]).expect("implementation");
    let url = &args[1];
    let (threads, secs, base): (u32, f64, u32) =
        (args[2].parse().unwrap(), args[3].parse().unwrap(), args[4].parse().unwrap());
    let think = args[5] == "1";
    let part = run_workers(imp, url, threads, secs, base, think);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in part.recs {
        writeln!(out, "rec {} {} {} {}", r.thread, r.asked, r.got, r.released).unwrap();
    }
    let sent = part.sent.map_or("-".to_string(), |s| s.to_string());
    writeln!(out, "total {sent} {} {}", part.cpu, part.errors).unwrap();
    if let Some(e) = part.first_error {
        writeln!(out, "error {}", e.replace('\n', " ")).unwrap();
    }
}

fn run_children(imp: Impl, url: &str, procs: u32, threads: u32, secs: f64, think: bool) -> Part {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<Child> = (0..procs)
        .map(|p| {
            Command::new(&exe)
                .arg("--child")
                .args([imp.name(), url, &threads.to_string(), &secs.to_string(), &((p + 1) * 1000).to_string()])
                .arg(if think { "1" } else { "0" })
                .stdout(Stdio::piped())
                .spawn()
                .expect("cannot start a worker process")
        })
        .collect();
    let mut part = Part { recs: Vec::new(), sent: Some(0), cpu: 0.0, errors: 0, first_error: None };
    for mut c in children {
        for line in BufReader::new(c.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(e) = line.strip_prefix("error ") {
                part.first_error.get_or_insert(e.to_owned());
                continue;
            }
            let v: Vec<&str> = line.split_whitespace().collect();
            match v.as_slice() {
                ["rec", t, a, g, r] => part.recs.push(Rec {
                    thread: t.parse().unwrap(),
                    asked: a.parse().unwrap(),
                    got: g.parse().unwrap(),
                    released: r.parse().unwrap(),
                }),
                ["total", sent, cpu, errors] => {
                    part.sent = match (part.sent, sent.parse::<u64>()) {
                        (Some(a), Ok(s)) => Some(a + s),
                        _ => None,
                    };
                    part.cpu += cpu.parse::<f64>().unwrap();
                    part.errors += errors.parse::<u64>().unwrap();
                }
                _ => {}
            }
        }
        assert!(c.wait().unwrap().success(), "a worker process failed");
    }
    part
}

fn info(con: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).unwrap()
}

fn info_field(text: &str, field: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Commands that reach this benchmark's server only from inside Lua scripts: those of
/// redis-mutex's scripts, rlock's release/renew, redisson's lock/unlock, and the
/// owner-checked release of redlock and the naive loop. `SET` is not here: rlock,
/// redlock and the naive loop send it themselves (rlock's script SET is its
/// multi-key path, unused here).
const SCRIPT_ONLY: &[&str] = &[
    "hmget", "hset", "hget", "hexists", "exists", "pexpire", "pttl", "incr", "del", "get", "publish", "type",
    "hincrby", "hdel", "hlen", "time",
];

/// Server-side counters at one moment.
#[derive(Clone, Copy, Default)]
pub struct Snap {
    /// Commands received from clients (script-internal calls left out).
    pub top: f64,
    /// Every `INFO commandstats` call, script-internal ones included.
    pub all: f64,
    /// PING calls (to subtract the benchmark's own).
    pub pings: f64,
    /// `total_connections_received`.
    pub conns: f64,
    /// Redis CPU seconds (user + sys).
    pub cpu: f64,
}

impl Snap {
    pub fn take(con: &mut redis::Connection) -> Snap {
        let stats = info(con, "commandstats");
        let mut s = Snap::default();
        for l in stats.lines() {
            let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            if name == "info" || name.starts_with("config") {
                continue; // the benchmark's own
            }
            let n: f64 = rest
                .split("calls=")
                .nth(1)
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            s.all += n;
            if !SCRIPT_ONLY.contains(&name) {
                s.top += n;
            }
            if name == "ping" {
                s.pings += n;
            }
        }
        s.conns = info_field(&info(con, "stats"), "total_connections_received");
        let cpu = info(con, "cpu");
        s.cpu = info_field(&cpu, "used_cpu_sys") + info_field(&cpu, "used_cpu_user");
        s
    }

    /// `later - self`, less `own_pings` PINGs and `own_conns` connections of the benchmark.
    pub fn delta(&self, later: &Snap, own_pings: f64, own_conns: f64) -> Snap {
        Snap {
            top: later.top - self.top - own_pings,
            all: later.all - self.all - own_pings,
            pings: later.pings - self.pings - own_pings,
            conns: later.conns - self.conns - own_conns,
            cpu: later.cpu - self.cpu,
        }
    }
}

/// Sorted nanoseconds → percentile in µs.
pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
}

/// One W1/W2/W3 run of one implementation.
pub struct Row {
    pub workload: &'static str,
    pub imp: Impl,
    pub procs: u32,
    pub threads: u32,
    pub secs: f64,
    pub acquisitions: u64,
    pub acq_per_s: f64,
    pub handoffs: usize,
    /// µs.
    pub handoff: (f64, f64),
    /// µs: p50, p99, max.
    pub wait: (f64, f64, f64),
    pub min_share: f64,
    pub rt_per_acq: f64,
    /// "client" (counted by the client) or "server" (commands received: these crates
    /// send one command per round trip, no pipelining).
    pub rt_source: &'static str,
    pub cmds_per_acq: f64,
    pub calls_per_acq: f64,
    pub conns_per_acq: f64,
    pub rcpu_us: f64,
    pub pcpu_us: f64,
    pub ping_us: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Handoff latencies, ns, sorted (for the CDF plot).
    pub handoff_ns: Vec<u64>,
}

impl Row {
    pub fn label(&self) -> String {
        if self.procs == 1 { format!("{} thr", self.threads) } else { format!("{}p×{}t", self.procs, self.threads) }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn scenario(
    workload: &'static str,
    imp: Impl,
    url: &str,
    admin: &mut redis::Connection,
    procs: u32,
    threads: u32,
    secs: f64,
    think: bool,
) -> Row {
    let keys = imp.keys();
    let _: () = redis::cmd("DEL").arg(&keys).query(admin).unwrap();
    // The PING connection is opened before the first snapshot: only its PINGs are ours.
    let mut ping_con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let before = Snap::take(admin);
    let pinger = thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut rtts = Vec::new();
        while Instant::now() < end {
            let t = Instant::now();
            let _: () = redis::cmd("PING").query(&mut ping_con).unwrap();
            rtts.push(t.elapsed().as_nanos() as u64);
            thread::sleep(Duration::from_millis(5));
        }
        rtts
    });
    let part = if procs == 1 {
        run_workers(imp, url, threads, secs, 0, think)
    } else {
        run_children(imp, url, procs, threads, secs, think)
    };
    let mut rtts = pinger.join().unwrap();
    let after = Snap::take(admin);
    let d = before.delta(&after, rtts.len() as f64, 0.0);

    let mut recs = part.recs;
    recs.sort_by_key(|r| r.got);
    let n = recs.len() as f64;
    let span = match (recs.first(), recs.last()) {
        (Some(f), Some(l)) => (l.released - f.asked) as f64 / 1e9,
        _ => secs,
    };
    // A handoff: the next holder was already waiting when the previous one released.
    let mut handoff_ns: Vec<u64> = recs
        .windows(2)
        .filter(|w| w[1].asked < w[0].released)
        .map(|w| w[1].got.saturating_sub(w[0].released))
        .collect();
    handoff_ns.sort_unstable();
    let mut waits: Vec<u64> = recs.iter().map(|r| r.got - r.asked).collect();
    waits.sort_unstable();
    // Every thread counts, also one that never got the lock.
    let mut per_thread: BTreeMap<u32, u64> = BTreeMap::new();
    for p in 0..procs {
        let base = if procs == 1 { 0 } else { (p + 1) * 1000 };
        for t in 0..threads {
            per_thread.insert(base + t, 0);
        }
    }
    for r in &recs {
        *per_thread.entry(r.thread).or_insert(0) += 1;
    }
    let total_threads = (procs * threads) as f64;
    let min_share = if n > 0.0 { *per_thread.values().min().unwrap() as f64 / n * total_threads } else { 0.0 };
    rtts.sort_unstable();
    let (rt, rt_source) = match part.sent {
        Some(s) => (s as f64, "client"),
        None => (d.top, "server"),
    };
    Row {
        workload,
        imp,
        procs,
        threads,
        secs,
        acquisitions: recs.len() as u64,
        acq_per_s: n / span,
        handoffs: handoff_ns.len(),
        handoff: (pct(&handoff_ns, 0.5), pct(&handoff_ns, 0.99)),
        wait: (pct(&waits, 0.5), pct(&waits, 0.99), pct(&waits, 1.0)),
        min_share,
        rt_per_acq: rt / n,
        rt_source,
        cmds_per_acq: d.top / n,
        calls_per_acq: d.all / n,
        conns_per_acq: d.conns / n,
        rcpu_us: d.cpu * 1e6 / n,
        pcpu_us: part.cpu * 1e6 / n,
        ping_us: pct(&rtts, 0.5),
        errors: part.errors,
        first_error: part.first_error,
        handoff_ns,
    }
}

/// W4: 64 threads wait on a lock another client holds with a 60 s lease.
pub struct W4Row {
    pub imp: Impl,
    pub waiters: u32,
    pub window_s: f64,
    pub calls_per_s: f64,
    pub cmds_per_s: f64,
    pub pings_per_s: f64,
    pub conns_per_s: f64,
    /// ms of CPU per second of wall time (1000 = one core busy).
    pub rcpu_ms_per_s: f64,
    pub pcpu_ms_per_s: f64,
    /// Waiters that got the lock before the holder released it (should be 0).
    pub acquired_early: usize,
    /// From the holder's release until the last waiter got the lock, s.
    pub drain_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub const W4_WAITERS: u32 = 64;
/// Time for the waiters' first attempts to settle before the window opens.
pub const W4_SETTLE: Duration = Duration::from_secs(1);

pub fn w4(imp: Impl, url: &str, admin: &mut redis::Connection, window: f64) -> W4Row {
    let _: () = redis::cmd("DEL").arg(imp.keys()).query(admin).unwrap();
    // The holder: another client (connection, pool) of the same implementation.
    let holder_shared = Shared::new(imp, url, 1);
    let mut holder = holder_shared.worker(imp, "w4-holder".into());
    holder.acquire(Lease::Fixed60s).expect("W4 holder");

    let shared = Shared::new(imp, url, W4_WAITERS);
    let barrier = Arc::new(Barrier::new(W4_WAITERS as usize + 1));
    let handles: Vec<_> = (0..W4_WAITERS)
        .map(|t| {
            let (shared, barrier) = (shared.clone(), barrier.clone());
            thread::spawn(move || {
                let mut w = shared.worker(imp, format!("{}-w4-{t}", std::process::id()));
                barrier.wait();
                let mut errors = 0u64;
                let mut first_error = None;
                // Errors are retried, but not forever: a broken peer must not hang the run.
                let give_up = Instant::now() + W4_SETTLE + Duration::from_secs_f64(window) + Duration::from_secs(120);
                let got = loop {
                    match w.acquire(Lease::Default) {
                        Ok(()) => break now_ns(),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            if Instant::now() > give_up {
                                return (u64::MAX, errors, first_error);
                            }
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                };
                if let Err(e) = w.release() {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
                (got, errors, first_error)
            })
        })
        .collect();
    barrier.wait();
    thread::sleep(W4_SETTLE);
    let (before, cpu0, t0) = (Snap::take(admin), process_cpu(), Instant::now());
    thread::sleep(Duration::from_secs_f64(window));
    let (after, cpu1, elapsed) = (Snap::take(admin), process_cpu(), t0.elapsed().as_secs_f64());
    let released_at = now_ns();
    let release_err = holder.release().err();
    let mut row = W4Row {
        imp,
        waiters: W4_WAITERS,
        window_s: elapsed,
        calls_per_s: 0.0,
        cmds_per_s: 0.0,
        pings_per_s: 0.0,
        conns_per_s: 0.0,
        rcpu_ms_per_s: 0.0,
        pcpu_ms_per_s: (cpu1 - cpu0) * 1e3 / elapsed,
        acquired_early: 0,
        drain_s: 0.0,
        errors: 0,
        first_error: release_err,
    };
    let d = before.delta(&after, 0.0, 0.0);
    row.calls_per_s = d.all / elapsed;
    row.cmds_per_s = d.top / elapsed;
    row.pings_per_s = d.pings / elapsed;
    row.conns_per_s = d.conns / elapsed;
    row.rcpu_ms_per_s = d.cpu * 1e3 / elapsed;
    let mut last = released_at;
    for h in handles {
        let (got, errors, fe) = h.join().expect("W4 waiter panicked");
        if got == u64::MAX {
            continue; // gave up after errors (counted in `errors`)
        }
        if got < released_at {
            row.acquired_early += 1;
        }
        last = last.max(got);
        row.errors += errors;
        if row.first_error.is_none() {
            row.first_error = fe;
        }
    }
    row.drain_s = (last - released_at) as f64 / 1e9;
    row
}

/// The server process and its temp dir (removed when dropped).
pub struct Server(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_server() -> (String, Server) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        // 64 waiters with redisson's pool, plus rlock/redlock connection churn.
        .args(["--maxclients", "10000"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it with `apt-get install -y redis-server`");
    let url = format!("redis://127.0.0.1:{port}/");
    let server = Server(child, dir);
    for _ in 0..400 {
        if redis::Client::open(url.as_str()).unwrap().get_connection().is_ok() {
            return (url, server);
        }
        thread::sleep(Duration::from_millis(25));
    }
    drop(server);
    panic!("redis-server did not start");
}

pub fn server_version(con: &mut redis::Connection) -> String {
    let s = info(con, "server");
    s.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_owned()
}
