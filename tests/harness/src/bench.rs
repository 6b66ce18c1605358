//! Contention measurement, shared by `benches/handoff.rs` and the peer benchmark
//! (`benches/peers`): threads (and worker processes) loop lock → 100 µs busy hold →
//! unlock (→ 0.5–1.5 ms sleep outside the lock, with `think`), recording wall-clock
//! times per acquisition; Redis's `INFO commandstats` / `cpu` / `stats` are read before
//! and after, and the loopback `PING` round trip is measured during the same run.
//!
//! A program measures a lock by implementing [`Subject`] (what a process sets up: a
//! client, a manager) and [`Contender`] (one thread's handle), then calls [`measure`].
//! Worker processes are the program itself, re-run as `PROGRAM --child ARGS... THREADS
//! SECS ID_BASE THINK`; its `main` hands such a run to [`child_main`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::{XorShift, process_cpu, wall_clock_ns};

/// How long each acquisition holds the lock (busy, like real work).
pub const HOLD: Duration = Duration::from_micros(100);

/// A lock under measurement, as one process sets it up (a client, a manager, a URL).
/// Each worker thread gets its own clone.
pub trait Subject: Clone + Send {
    /// One thread's handle on the lock.
    type Contender: Contender;

    /// The handle of thread `id` (unique across the processes of a run).
    fn contender(&self, id: u32) -> Self::Contender;

    /// Client round trips sent so far by the whole process, when the subject counts
    /// them itself (redis-mutex's stats); otherwise the threads' [`Contender::sent`].
    fn round_trips(&self) -> Option<u64> {
        None
    }
}

/// One thread's handle on the lock under measurement.
pub trait Contender {
    /// Blocks until the lock is held.
    fn acquire(&mut self) -> Result<(), String>;

    /// Releases the lock.
    fn release(&mut self) -> Result<(), String>;

    /// Round trips this thread counted itself (a hand-written loop); `None` if it
    /// does not count.
    fn sent(&self) -> Option<u64> {
        None
    }
}

/// One acquisition: wall-clock nanoseconds (comparable across processes on one host).
#[derive(Clone, Copy, Debug)]
pub struct Rec {
    /// The thread's id.
    pub thread: u32,
    /// `acquire` called.
    pub asked: u64,
    /// `acquire` returned.
    pub got: u64,
    /// `release` called.
    pub released: u64,
}

/// What the workers of one process (or of several, summed) produced.
#[derive(Debug, Default)]
pub struct Part {
    /// Every acquisition.
    pub recs: Vec<Rec>,
    /// Client round trips, when the subject or its threads count them.
    pub sent: Option<u64>,
    /// CPU seconds of the worker process(es).
    pub cpu: f64,
    /// Errors returned by `acquire`/`release`.
    pub errors: u64,
    /// The first of them.
    pub first_error: Option<String>,
}

impl Part {
    fn add(&mut self, other: Part) {
        self.recs.extend(other.recs);
        self.sent = match (self.sent, other.sent) {
            (a, None) => a,
            (a, Some(s)) => Some(a.unwrap_or(0) + s),
        };
        self.cpu += other.cpu;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Busy for `d` (a critical section that does work, not a sleep).
pub fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn cpu_seconds() -> f64 {
    process_cpu().map_or(0.0, |d| d.as_secs_f64())
}

/// Runs `threads` workers of `subject` in this process for `secs`: lock → [`HOLD`]
/// busy → unlock, and with `think` a 0.5–1.5 ms sleep outside the lock. Thread ids
/// start at `id_base`. Errors are counted, and the thread goes on after 1 ms.
pub fn run_workers<S: Subject>(subject: &S, threads: u32, secs: f64, id_base: u32, think: bool) -> Part {
    let barrier = Arc::new(Barrier::new(threads as usize));
    let cpu0 = cpu_seconds();
    let mut part = Part::default();
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (subject, barrier) = (subject.clone(), barrier.clone());
                let id = id_base + t;
                s.spawn(move || {
                    let mut rng = XorShift::new(wall_clock_ns() ^ u64::from(id));
                    let mut w = subject.contender(id);
                    let mut part = Part::default();
                    barrier.wait();
                    let end = Instant::now() + Duration::from_secs_f64(secs);
                    while Instant::now() < end {
                        let asked = wall_clock_ns();
                        if let Err(e) = w.acquire() {
                            part.errors += 1;
                            part.first_error.get_or_insert(e);
                            thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        let got = wall_clock_ns();
                        spin(HOLD);
                        let released = wall_clock_ns();
                        if let Err(e) = w.release() {
                            part.errors += 1;
                            part.first_error.get_or_insert(e);
                        }
                        part.recs.push(Rec { thread: id, asked, got, released });
                        if think {
                            thread::sleep(Duration::from_micros(rng.between(500, 1499)));
                        }
                    }
                    part.sent = w.sent();
                    part
                })
            })
            .collect();
        for h in handles {
            part.add(h.join().expect("worker thread panicked"));
        }
    });
    if let Some(rt) = subject.round_trips() {
        part.sent = Some(rt);
    }
    part.cpu = cpu_seconds() - cpu0;
    part
}

/// The `--child` side: `args` is everything after `--child` (the program's own
/// arguments, then `THREADS SECS ID_BASE THINK`); `subject(own_args, threads)` sets the
/// lock up. Runs the workers and prints records and totals on stdout for
/// [`measure`] in the parent.
pub fn child_main<S: Subject>(args: &[String], subject: impl FnOnce(&[String], u32) -> S) {
    let (own, run) = args.split_at(args.len().checked_sub(4).expect("--child ... THREADS SECS ID_BASE THINK"));
    let threads: u32 = run[0].parse().expect("THREADS");
    let (secs, id_base): (f64, u32) = (run[1].parse().expect("SECS"), run[2].parse().expect("ID_BASE"));
    let part = run_workers(&subject(own, threads), threads, secs, id_base, run[3] == "1");
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

/// `procs` worker processes of `threads` threads each (thread ids from 1000, 2000,
/// ...), each this program re-run with `--child child_args...`; what they printed.
fn run_children(child_args: &[String], procs: u32, threads: u32, secs: f64, think: bool) -> Part {
    let exe = std::env::current_exe().expect("this program's path");
    let children: Vec<Child> = (0..procs)
        .map(|p| {
            Command::new(&exe)
                .arg("--child")
                .args(child_args)
                .args([threads.to_string(), secs.to_string(), ((p + 1) * 1000).to_string()])
                .arg(if think { "1" } else { "0" })
                .stdout(Stdio::piped())
                .spawn()
                .expect("cannot start a worker process")
        })
        .collect();
    let mut part = Part { sent: Some(0), ..Part::default() };
    for mut c in children {
        let mut this = Part::default();
        for line in BufReader::new(c.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(e) = line.strip_prefix("error ") {
                this.first_error.get_or_insert(e.to_owned());
                continue;
            }
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["rec", t, a, g, r] => this.recs.push(Rec {
                    thread: t.parse().unwrap(),
                    asked: a.parse().unwrap(),
                    got: g.parse().unwrap(),
                    released: r.parse().unwrap(),
                }),
                ["total", sent, cpu, errors] => {
                    this.sent = sent.parse().ok();
                    this.cpu = cpu.parse().unwrap();
                    this.errors = errors.parse().unwrap();
                }
                _ => {}
            }
        }
        assert!(c.wait().unwrap().success(), "a worker process failed");
        // Round trips are known only if every process counted them.
        let sent = part.sent.zip(this.sent).map(|(a, b)| a + b);
        part.add(this);
        part.sent = sent;
    }
    part
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// Where the lock's Redis is.
    pub url: &'a str,
    /// Keys deleted before the run (the lock's leftovers).
    pub keys: Vec<String>,
    /// Processes: 1 runs the threads here, more re-run this program.
    pub procs: u32,
    /// Threads per process.
    pub threads: u32,
    /// Length of the run.
    pub secs: f64,
    /// Sleep 0.5–1.5 ms outside the lock after each release.
    pub think: bool,
    /// With `procs > 1`: the arguments a worker process gets after `--child`.
    pub child_args: Vec<String>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Acquisitions of all threads.
    pub acquisitions: u64,
    /// Per second, first `acquire` call to last release.
    pub acq_per_s: f64,
    /// Acquisitions whose thread was already waiting when the previous holder released.
    pub handoffs: usize,
    /// Handoff latency p50, p99 (µs): the next holder's return from `acquire` minus the
    /// previous holder's release start.
    pub handoff: (f64, f64),
    /// `acquire` call → return, every acquisition: p50, p99, max (µs).
    pub wait: (f64, f64, f64),
    /// Smallest per-thread share of acquisitions × thread count (1.00 = even; threads
    /// that never got the lock count as 0).
    pub min_share: f64,
    /// Client round trips per acquisition.
    pub rt_per_acq: f64,
    /// `"client"` (counted by the client) or `"server"` (commands Redis received).
    pub rt_source: &'static str,
    /// Commands Redis received from clients per acquisition (script-internal calls and
    /// the benchmark's own `INFO`, `CONFIG` and `PING` left out).
    pub cmds_per_acq: f64,
    /// Every `INFO commandstats` call per acquisition, script-internal ones included.
    pub calls_per_acq: f64,
    /// New TCP connections Redis accepted per acquisition.
    pub conns_per_acq: f64,
    /// Redis server CPU per acquisition (µs).
    pub rcpu_us: f64,
    /// Worker process CPU per acquisition (µs).
    pub pcpu_us: f64,
    /// Loopback `PING` round trip p50 during the run (µs).
    pub ping_us: f64,
    /// Errors returned by `acquire`/`release`.
    pub errors: u64,
    /// The first of them.
    pub first_error: Option<String>,
    /// Handoff latencies, ns, sorted (for a CDF).
    pub handoff_ns: Vec<u64>,
    /// Calls per acquisition of each command (`INFO commandstats` names).
    pub per_command: BTreeMap<String, f64>,
}

/// Measures one run: `local()` sets the lock up in this process when `run.procs` is 1;
/// otherwise worker processes do (see [`child_main`]). `admin` is a connection of the
/// benchmark's own to the run's Redis.
pub fn measure<S: Subject>(run: &Run<'_>, admin: &mut redis::Connection, local: impl FnOnce() -> S) -> Measured {
    if !run.keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&run.keys).query(admin).unwrap();
    }
    // The PING connection is opened before the first snapshot: only its PINGs are ours.
    let mut ping_con = redis::Client::open(run.url).unwrap().get_connection().unwrap();
    let before = Snap::take(admin);
    let secs = run.secs;
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
    let part = if run.procs == 1 {
        run_workers(&local(), run.threads, run.secs, 0, run.think)
    } else {
        run_children(&run.child_args, run.procs, run.threads, run.secs, run.think)
    };
    let mut rtts = pinger.join().unwrap();
    let d = before.delta(&Snap::take(admin), rtts.len() as f64);
    rtts.sort_unstable();
    summarize(run, part, &d, pct(&rtts, 0.5))
}

fn summarize(run: &Run<'_>, part: Part, d: &Snap, ping_us: f64) -> Measured {
    let mut recs = part.recs;
    recs.sort_by_key(|r| r.got);
    let n = recs.len() as f64;
    let span = match (recs.first(), recs.last()) {
        (Some(f), Some(l)) => (l.released - f.asked) as f64 / 1e9,
        _ => run.secs,
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
    for p in 0..run.procs {
        let base = if run.procs == 1 { 0 } else { (p + 1) * 1000 };
        for t in 0..run.threads {
            per_thread.insert(base + t, 0);
        }
    }
    for r in &recs {
        *per_thread.entry(r.thread).or_insert(0) += 1;
    }
    let total_threads = f64::from(run.procs * run.threads);
    let min_share = if n > 0.0 { *per_thread.values().min().unwrap() as f64 / n * total_threads } else { 0.0 };
    let (rt, rt_source) = match part.sent {
        Some(s) => (s as f64, "client"),
        None => (d.top, "server"),
    };
    Measured {
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
        ping_us,
        errors: part.errors,
        first_error: part.first_error,
        handoff_ns,
        per_command: d.each.iter().map(|(k, v)| (k.clone(), v / n)).collect(),
    }
}

/// Sorted nanoseconds → percentile `p` (0..=1) in µs; NaN when empty.
pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
}

/// Commands that reach a benchmark's server only from inside Lua scripts: those of
/// redis-mutex's scripts, rlock's release/renew, redisson's lock/unlock, and the
/// owner-checked release of redlock and the polling loops. `SET` is not here: rlock,
/// redlock and the polling loops send it themselves (rlock's script SET is its
/// multi-key path, unused here).
const SCRIPT_ONLY: &[&str] = &[
    "hmget", "hset", "hget", "hexists", "exists", "pexpire", "pttl", "incr", "del", "get", "publish", "type",
    "hincrby", "hdel", "hlen", "time",
];

/// Server-side counters at one moment (or, after [`delta`](Snap::delta), over a run).
#[derive(Clone, Debug, Default)]
pub struct Snap {
    /// Commands received from clients (script-internal calls left out).
    pub top: f64,
    /// Every `INFO commandstats` call, script-internal ones included.
    pub all: f64,
    /// PING calls.
    pub pings: f64,
    /// `total_connections_received`.
    pub conns: f64,
    /// Redis CPU seconds (user + sys).
    pub cpu: f64,
    /// Calls of each command.
    pub each: BTreeMap<String, f64>,
}

impl Snap {
    /// Reads `INFO commandstats`, `stats` and `cpu`; the benchmark's own `INFO` and
    /// `CONFIG` calls are left out.
    pub fn take(con: &mut redis::Connection) -> Snap {
        let mut s = Snap::default();
        for l in info(con, "commandstats").lines() {
            let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            if name == "info" || name.starts_with("config") {
                continue;
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
            s.each.insert(name.to_owned(), n);
        }
        s.conns = info_field(&info(con, "stats"), "total_connections_received");
        let cpu = info(con, "cpu");
        s.cpu = info_field(&cpu, "used_cpu_sys") + info_field(&cpu, "used_cpu_user");
        s
    }

    /// `later - self`, less `own_pings` PINGs the benchmark sent itself.
    pub fn delta(&self, later: &Snap, own_pings: f64) -> Snap {
        let mut each: BTreeMap<String, f64> =
            later.each.iter().map(|(k, v)| (k.clone(), v - self.each.get(k).copied().unwrap_or(0.0))).collect();
        if let Some(p) = each.get_mut("ping") {
            *p -= own_pings;
        }
        Snap {
            top: later.top - self.top - own_pings,
            all: later.all - self.all - own_pings,
            pings: later.pings - self.pings - own_pings,
            conns: later.conns - self.conns,
            cpu: later.cpu - self.cpu,
            each,
        }
    }
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

/// `redis_version` of the server behind `con`.
pub fn server_version(con: &mut redis::Connection) -> String {
    let s = info(con, "server");
    s.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_owned()
}
