//! Contention measurement, shared by `benches/handoff.rs` and the peer benchmark
//! (`benches/peers`): threads (and worker processes) loop lock → 100 µs busy hold →
//! unlock (→ 0.5–1.5 ms sleep outside the lock, with `think`), recording wall-clock
//! times per acquisition; Redis's `INFO commandstats` / `cpu` / `stats` are read before
//! and after, and the loopback `PING` round trip is measured during the same run.
//!
//! A program measures a lock by implementing [`Subject`] (what a process sets up: a
//! client, a manager) and [`Contender`] (one thread's handle), then calls [`measure`].
//! Worker processes are the program itself, re-run as `PROGRAM --child ARGS... THREADS
//! SECS ID_BASE THINK`; its `main` hands such a run to [`child_main`]. Every process
//! sets up first; the measured interval (Redis's counters, the PING, the workers)
//! starts when all are ready.

mod procs;
mod snap;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::{XorShift, process_cpu, wall_clock_ns};
pub use procs::child_main;
pub use snap::{Snap, script_only, server_version};

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

    /// Counters of the subject's own, as `(name, count so far)` of the whole process
    /// (redis-mutex: pub/sub messages received, grants); a run reports what each grew
    /// by over the measured interval, per process ([`Measured::counters`]).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
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
    /// Per process: what each of [`Subject::counters`] grew by during the run.
    pub counters: Vec<BTreeMap<String, u64>>,
}

impl Part {
    fn add(&mut self, other: Part) {
        self.counters.extend(other.counters);
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
/// start at `id_base`. Errors are counted, and the thread goes on after 1 ms. `gate`
/// is called once every thread has its handle; the run starts when it returns.
pub fn run_workers<S: Subject>(
    subject: &S,
    threads: u32,
    secs: f64,
    id_base: u32,
    think: bool,
    gate: impl FnOnce(),
) -> Part {
    // Passed twice: every handle made; the gate passed.
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let mut part = Part::default();
    let mut start = (0.0, Vec::new());
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
        barrier.wait();
        gate();
        start = (cpu_seconds(), subject.counters());
        barrier.wait();
        for h in handles {
            part.add(h.join().expect("worker thread panicked"));
        }
    });
    if let Some(rt) = subject.round_trips() {
        part.sent = Some(rt);
    }
    part.cpu = cpu_seconds() - start.0;
    let before: BTreeMap<_, _> = start.1.into_iter().collect();
    let grew = subject
        .counters()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.saturating_sub(before.get(k).copied().unwrap_or(0))));
    part.counters = vec![grew.collect()];
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
    /// Lock names the threads spread over: thread `id` uses the lock `id % locks` (1:
    /// all the same). Handoffs are paired within each lock.
    pub locks: u32,
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
    /// Largest per-thread share of acquisitions × thread count.
    pub max_share: f64,
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
    /// Per process (in the order started): what each of [`Subject::counters`] grew by
    /// during the run.
    pub counters: Vec<BTreeMap<String, u64>>,
    /// Per server measured (one, or each node of a cluster, in the order given to
    /// [`try_measure_all`]): its share of the figures above.
    pub servers: Vec<ServerPart>,
}

/// One server's part of a run, per acquisition of the whole run.
#[derive(Debug, Clone, Default)]
pub struct ServerPart {
    /// Its CPU (µs).
    pub cpu_us: f64,
    /// Per command (`INFO commandstats` names): calls, and the CPU they took (µs; a
    /// script's time includes the commands it called, which are listed too).
    pub commands: BTreeMap<String, (f64, f64)>,
}

impl ServerPart {
    fn new(d: &Snap, n: f64) -> ServerPart {
        ServerPart {
            cpu_us: d.cpu * 1e6 / n,
            commands: d
                .each
                .iter()
                .map(|(k, c)| (k.clone(), (c / n, d.usec.get(k).copied().unwrap_or(0.0) / n)))
                .collect(),
        }
    }

    /// CPU spent outside any command a client sent (µs per acquisition): reading and
    /// writing sockets, the event loop, a cluster's bus (a `PUBLISH` forwarded from
    /// another node is no command here).
    pub fn outside_commands_us(&self) -> f64 {
        let in_commands: f64 = self.commands.iter().filter(|(k, _)| !script_only(k)).map(|(_, (_, usec))| usec).sum();
        self.cpu_us - in_commands
    }
}

impl Measured {
    /// Counter `name` summed over the processes; `None` when the subject keeps none.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters.iter().map(|c| c.get(name).copied()).sum()
    }
}

/// Time for the worker processes' background connections (a notifier's
/// subscription) to settle between the last process's `ready` and the start.
const SETTLE: Duration = Duration::from_millis(250);

/// Measures one run: `local()` sets the lock up in this process when `run.procs` is 1;
/// otherwise worker processes do (see [`child_main`]). `admin` is a connection of the
/// benchmark's own to the run's Redis. Panics where [`try_measure`] returns an error.
pub fn measure<S: Subject>(run: &Run<'_>, admin: &mut redis::Connection, local: impl FnOnce() -> S) -> Measured {
    try_measure(run, admin, local).unwrap_or_else(|e| panic!("{e}"))
}

/// [`measure`], with an error instead of a panic when a worker process fails, or does
/// not get ready or finish in time (every worker process is then killed).
pub fn try_measure<S: Subject>(
    run: &Run<'_>,
    admin: &mut redis::Connection,
    local: impl FnOnce() -> S,
) -> Result<Measured, String> {
    try_measure_all(run, std::slice::from_mut(admin), local)
}

/// [`try_measure`] on several servers (a cluster's nodes): Redis's counters and CPU are
/// summed over `admins`, one connection to each, and kept per server
/// ([`Measured::servers`]). `run.keys` are deleted through the first, and `run.url`
/// (where the PING goes) must be the first's server.
pub fn try_measure_all<S: Subject>(
    run: &Run<'_>,
    admins: &mut [redis::Connection],
    local: impl FnOnce() -> S,
) -> Result<Measured, String> {
    assert!(!admins.is_empty(), "a run is measured on at least one server");
    if !run.keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&run.keys).query(&mut admins[0]).unwrap();
    }
    // The PING connection is opened before the first snapshot: only its PINGs are ours.
    let ping_con = redis::Client::open(run.url).unwrap().get_connection().unwrap();
    let mut watch = None;
    let part = if run.procs == 1 {
        run_workers(&local(), run.threads, run.secs, 0, run.think, || {
            watch = Some(Watch::start(admins, ping_con, run.secs));
        })
    } else {
        let mut children = procs::Children::start(&run.child_args, run.procs, run.threads, run.secs, run.think)?;
        thread::sleep(SETTLE);
        watch = Some(Watch::start(admins, ping_con, run.secs));
        children.go();
        let part = children.finish(run.secs);
        if part.is_err() {
            let _ = watch.take().map(|w| w.pinger.join());
        }
        part?
    };
    let Watch { before, pinger } = watch.expect("the run started");
    let mut rtts = pinger.join().unwrap();
    // The PINGs went to the first server.
    let each: Vec<Snap> = before
        .iter()
        .zip(admins.iter_mut())
        .enumerate()
        .map(|(i, (b, admin))| b.delta(&Snap::take(admin), if i == 0 { rtts.len() as f64 } else { 0.0 }))
        .collect();
    rtts.sort_unstable();
    let mut m = summarize(run, part, &Snap::sum(&each), pct(&rtts, 0.5));
    let n = m.acquisitions as f64;
    m.servers = each.iter().map(|d| ServerPart::new(d, n)).collect();
    Ok(m)
}

/// The start of a measured interval: Redis's counters, and the thread measuring the
/// loopback PING every 5 ms until the interval's end.
struct Watch {
    /// Per server.
    before: Vec<Snap>,
    pinger: thread::JoinHandle<Vec<u64>>,
}

impl Watch {
    fn start(admins: &mut [redis::Connection], mut ping_con: redis::Connection, secs: f64) -> Watch {
        let before = admins.iter_mut().map(Snap::take).collect();
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
        Watch { before, pinger }
    }
}

fn summarize(run: &Run<'_>, part: Part, d: &Snap, ping_us: f64) -> Measured {
    let mut recs = part.recs;
    recs.sort_by_key(|r| r.got);
    let n = recs.len() as f64;
    let span = match (recs.first(), recs.last()) {
        (Some(f), Some(l)) => (l.released - f.asked) as f64 / 1e9,
        _ => run.secs,
    };
    // A handoff: the next holder of the same lock was already waiting when the previous
    // one released.
    let mut handoff_ns: Vec<u64> = Vec::new();
    for lock in 0..run.locks.max(1) {
        let mine: Vec<&Rec> = recs.iter().filter(|r| r.thread % run.locks.max(1) == lock).collect();
        handoff_ns.extend(
            mine.windows(2).filter(|w| w[1].asked < w[0].released).map(|w| w[1].got.saturating_sub(w[0].released)),
        );
    }
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
    let share = |c: Option<&u64>| if n > 0.0 { *c.unwrap() as f64 / n * total_threads } else { 0.0 };
    let (min_share, max_share) = (share(per_thread.values().min()), share(per_thread.values().max()));
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
        max_share,
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
        counters: part.counters,
        servers: Vec::new(),
    }
}

/// Sorted nanoseconds → percentile `p` (0..=1) in µs; NaN when empty.
pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
}
