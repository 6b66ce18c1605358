//! Read-write locks and semaphores (issue 18): redis-mutex's `RwLock` against rlock's
//! read-write lock (90% reads, 8 threads and 4 processes × 4 threads), and its
//! `Semaphore` against a naive `INCR`/`DECR` + 1 ms polling semaphore (n = 4, 16
//! threads). The same harness measurement as the mutex workloads (`bench::measure`:
//! lock → 100 µs busy hold → unlock, in a tight loop or with 0.5–1.5 ms asleep outside
//! the lock: see [`plan`]), one `Prim` per process, one `PrimWorker` per thread.
//! Targets: ≥ 3× the peer's acq/s, and every thread within 10% of its fair share.
//! Each workload also runs redis-mutex with `handoff_limit(0)` (`…-rt`: every
//! acquisition and release a round trip, as before the in-process fast path), so the
//! fast path is measured against what it replaced in the same run.

use std::error::Error;
use std::path::Path;
use std::thread;
use std::time::Duration;

use redis_mutex::{LockClient, RwLockReadGuard, RwLockWriteGuard, SemaphorePermit};
use redis_mutex_harness::XorShift;
use redis_mutex_harness::bench::{self, Contender, Measured, Subject};

use crate::report::{t, times_check, verdict};

/// The read-write lock's name (redis-mutex's keys are `redis-mutex:{bench-rw}:rw...`).
const RW: &str = "bench-rw";
/// The semaphore's name, and its permits.
const SEM: &str = "bench-sem";
pub const PERMITS: u32 = 4;
/// One acquisition in this many is a write.
const WRITE_ONE_IN: u64 = 10;

/// What runs, named on the command line of a worker process as [`PrimImpl::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimImpl {
    RwRedisMutex,
    /// `handoff_limit(0)`: no in-process fast path.
    RwRedisMutexRt,
    RwRlock,
    SemRedisMutex,
    SemRedisMutexRt,
    SemNaive,
}

impl PrimImpl {
    pub fn name(self) -> &'static str {
        match self {
            PrimImpl::RwRedisMutex => "rw:redis-mutex",
            PrimImpl::RwRedisMutexRt => "rw:redis-mutex-rt",
            PrimImpl::RwRlock => "rw:rlock",
            PrimImpl::SemRedisMutex => "sem:redis-mutex",
            PrimImpl::SemRedisMutexRt => "sem:redis-mutex-rt",
            PrimImpl::SemNaive => "sem:naive",
        }
    }

    pub fn from_name(name: &str) -> Option<PrimImpl> {
        [
            PrimImpl::RwRedisMutex,
            PrimImpl::RwRedisMutexRt,
            PrimImpl::RwRlock,
            PrimImpl::SemRedisMutex,
            PrimImpl::SemRedisMutexRt,
            PrimImpl::SemNaive,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// The Redis keys it writes (deleted before each run).
    fn keys(self) -> Vec<String> {
        match self {
            PrimImpl::RwRedisMutex | PrimImpl::RwRedisMutexRt => {
                vec![format!("redis-mutex:{{{RW}}}:rw"), format!("redis-mutex:{{{RW}}}:rw:s")]
            }
            PrimImpl::RwRlock => vec![format!("{RW}:rlock")],
            PrimImpl::SemRedisMutex | PrimImpl::SemRedisMutexRt => {
                vec![format!("redis-mutex:{{{SEM}}}:sem"), format!("redis-mutex:{{{SEM}}}:sem:s")]
            }
            PrimImpl::SemNaive => vec![format!("{SEM}:naive")],
        }
    }
}

/// The per-process object.
#[derive(Clone)]
pub enum Prim {
    RedisMutex(PrimImpl, LockClient),
    Rlock(rlock::sync_lock::RLock),
    Naive(String),
}

impl Prim {
    pub fn new(imp: PrimImpl, url: &str) -> Prim {
        match imp {
            // Client defaults (lease 30 s renewed by the watchdog, pool_max_size 8).
            PrimImpl::RwRedisMutex | PrimImpl::SemRedisMutex => {
                Prim::RedisMutex(imp, LockClient::open(url).expect("redis-mutex client"))
            }
            PrimImpl::RwRedisMutexRt | PrimImpl::SemRedisMutexRt => {
                let client = LockClient::builder().handoff_limit(0).build(url).expect("redis-mutex client");
                Prim::RedisMutex(imp, client)
            }
            // Default AcquireOptions: TTL 10 s, retry every 100 ms, auto renewal.
            PrimImpl::RwRlock => Prim::Rlock(rlock::sync_lock::RLock::new(url).expect("rlock manager")),
            PrimImpl::SemNaive => Prim::Naive(url.to_owned()),
        }
    }
}

pub enum PrimWorker {
    Rw {
        rw: redis_mutex::RwLock,
        rng: XorShift,
        r: Option<RwLockReadGuard>,
        w: Option<RwLockWriteGuard>,
    },
    Rlock {
        rl: rlock::sync_lock::RLock,
        rng: XorShift,
        r: Option<rlock::sync_lock::RReadLockGuard>,
        w: Option<rlock::sync_lock::RWriteLockGuard>,
    },
    Sem {
        sem: redis_mutex::Semaphore,
        p: Option<SemaphorePermit>,
    },
    Naive {
        con: redis::Connection,
        key: String,
        held: bool,
        sent: u64,
    },
}

impl Subject for Prim {
    type Contender = PrimWorker;

    fn contender(&self, id: u32) -> PrimWorker {
        let rng = XorShift::new(redis_mutex_harness::wall_clock_ns() ^ (u64::from(id) << 32) ^ 0x9e37);
        match self {
            Prim::RedisMutex(PrimImpl::SemRedisMutex | PrimImpl::SemRedisMutexRt, c) => {
                PrimWorker::Sem { sem: c.semaphore(SEM, PERMITS), p: None }
            }
            Prim::RedisMutex(_, c) => PrimWorker::Rw { rw: c.rw_lock(RW), rng, r: None, w: None },
            Prim::Rlock(rl) => PrimWorker::Rlock { rl: rl.clone(), rng, r: None, w: None },
            Prim::Naive(url) => PrimWorker::Naive {
                con: redis::Client::open(url.as_str()).unwrap().get_connection().expect("naive connection"),
                key: format!("{SEM}:naive"),
                held: false,
                sent: 0,
            },
        }
    }

    /// redis-mutex's round trips: attempts, releases sent to Redis (not those passed in
    /// memory, nor a joined reader's, which leaves the share to the last one), renewals.
    fn round_trips(&self) -> Option<u64> {
        match self {
            Prim::RedisMutex(_, c) => {
                let s = c.stats();
                Some(s.attempts + s.releases - s.local_handoffs - s.read_joins + s.renewals)
            }
            _ => None,
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        match self {
            Prim::RedisMutex(_, c) => {
                let s = c.stats();
                vec![(crate::peers::GRANTS, s.grants), (LOCAL, s.local_handoffs + s.read_joins)]
            }
            _ => Vec::new(),
        }
    }
}

impl Contender for PrimWorker {
    fn acquire(&mut self) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match self {
            PrimWorker::Rw { rw, rng, r, w } => {
                if rng.between(0, WRITE_ONE_IN - 1) == 0 {
                    *w = Some(rw.write().map_err(|x| e(&x))?);
                } else {
                    *r = Some(rw.read().map_err(|x| e(&x))?);
                }
            }
            PrimWorker::Rlock { rl, rng, r, w } => {
                let key = format!("{RW}:rlock");
                if rng.between(0, WRITE_ONE_IN - 1) == 0 {
                    *w = Some(rl.acquire_write(&key).map_err(|x| e(&x))?);
                } else {
                    *r = Some(rl.acquire_read(&key).map_err(|x| e(&x))?);
                }
            }
            PrimWorker::Sem { sem, p } => *p = Some(sem.acquire().map_err(|x| e(&x))?),
            // What a blog post shows: take a count, give it back and sleep 1 ms if over.
            PrimWorker::Naive { con, key, held, sent } => loop {
                *sent += 1;
                let n: i64 = redis::cmd("INCR").arg(&*key).query(con).map_err(|x| e(&x))?;
                if n <= i64::from(PERMITS) {
                    *held = true;
                    return Ok(());
                }
                *sent += 1;
                let _: i64 = redis::cmd("DECR").arg(&*key).query(con).map_err(|x| e(&x))?;
                thread::sleep(Duration::from_millis(1));
            },
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match self {
            PrimWorker::Rw { r, w, .. } => {
                if let Some(g) = r.take() {
                    g.unlock().map_err(|x| e(&x))?;
                }
                if let Some(g) = w.take() {
                    g.unlock().map_err(|x| e(&x))?;
                }
            }
            // Explicit release(), as for rlock's mutex in the other workloads.
            PrimWorker::Rlock { r, w, .. } => {
                if let Some(mut g) = r.take() {
                    g.release().map_err(|x| e(&x))?;
                }
                if let Some(mut g) = w.take() {
                    g.release().map_err(|x| e(&x))?;
                }
            }
            PrimWorker::Sem { p, .. } => {
                if let Some(p) = p.take() {
                    p.unlock().map_err(|x| e(&x))?;
                }
            }
            PrimWorker::Naive { con, key, held, sent } => {
                if std::mem::take(held) {
                    *sent += 1;
                    let _: i64 = redis::cmd("DECR").arg(&*key).query(con).map_err(|x| e(&x))?;
                }
            }
        }
        Ok(())
    }

    fn sent(&self) -> Option<u64> {
        match self {
            PrimWorker::Naive { sent, .. } => Some(*sent),
            _ => None,
        }
    }
}

/// Acquisitions without a request: permits and write locks passed in memory, read
/// shares joined.
const LOCAL: &str = "local";

/// One run of one implementation.
pub struct PrimRow {
    pub workload: &'static str,
    pub imp: PrimImpl,
    pub procs: u32,
    pub threads: u32,
    pub m: Measured,
}

/// One workload: its name, processes, threads, whether threads sleep 0.5–1.5 ms
/// outside the lock (as W2/W3 do), and `[ours, ours without the fast path, the peer]`.
pub type Plan = (&'static str, u32, u32, bool, [PrimImpl; 3]);

/// The runs, shaped as the mutex workloads are: with `rw`, RW1 (8 threads, tight
/// loop), RW2 (8 threads, with the sleep outside) and RW3 (4 processes × 4 threads,
/// with the sleep); with `sem`, SEM1 (16 threads, tight loop) and SEM2 (16 threads,
/// with the sleep).
pub fn plan(rw: bool, sem: bool) -> Vec<Plan> {
    let pair = [PrimImpl::RwRedisMutex, PrimImpl::RwRedisMutexRt, PrimImpl::RwRlock];
    let sems = [PrimImpl::SemRedisMutex, PrimImpl::SemRedisMutexRt, PrimImpl::SemNaive];
    let mut plan = Vec::new();
    if rw {
        plan.extend([("RW1", 1, 8, false, pair), ("RW2", 1, 8, true, pair), ("RW3", 4, 4, true, pair)]);
    }
    if sem {
        plan.extend([("SEM1", 1, 16, false, sems), ("SEM2", 1, 16, true, sems)]);
    }
    plan
}

/// Runs one; `Err` when a worker process failed (the reason).
pub fn run(
    imp: PrimImpl,
    url: &str,
    admin: &mut redis::Connection,
    (procs, threads, think): (u32, u32, bool),
    secs: f64,
) -> Result<Measured, String> {
    let run = bench::Run {
        url,
        keys: imp.keys(),
        procs,
        threads,
        secs,
        think,
        child_args: vec![imp.name().to_owned(), url.to_owned()],
        locks: 1,
    };
    bench::try_measure(&run, admin, || Prim::new(imp, url))
}

pub fn header() -> String {
    format!(
        "{:<4} {:<8} {:<18} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7}",
        "wl",
        "shape",
        "impl",
        "acq/s",
        "wait p50",
        "wait p99",
        "wait max",
        "min/max sh",
        "cmd/a",
        "rt/a",
        "rCPU/a",
        "grants",
        "local",
        "errors"
    )
}

pub fn line(r: &PrimRow) -> String {
    let m = &r.m;
    let shape = if r.procs == 1 { format!("{} thr", r.threads) } else { format!("{}p×{}t", r.procs, r.threads) };
    let per_acq =
        |name| m.counter(name).map_or("-".to_owned(), |g| format!("{:.2}", g as f64 / m.acquisitions.max(1) as f64));
    let (grants, local) = (per_acq(crate::peers::GRANTS), per_acq(LOCAL));
    format!(
        "{:<4} {:<8} {:<18} {:>9.0} {:>9} {:>9} {:>9} {:>4.2}/{:<4.2} {:>6.1} {:>6.1} {:>7} {:>7} {:>7} {:>7}",
        r.workload,
        shape,
        r.imp.name(),
        m.acq_per_s,
        t(m.wait.0),
        t(m.wait.1),
        t(m.wait.2),
        m.min_share,
        m.max_share,
        m.cmds_per_acq,
        m.rt_per_acq,
        t(m.rcpu_us),
        grants,
        local,
        m.errors
    )
}

/// The targets: ≥ 3× the peer's acq/s in each workload, and every thread of
/// redis-mutex within 10% of its fair share (0.90 ≤ share ≤ 1.10).
pub fn targets(rows: &[PrimRow]) -> Vec<String> {
    let mut out = Vec::new();
    for (wl, procs, threads, _, [ours, before, peer]) in plan(true, true) {
        let find =
            |imp| rows.iter().find(|r| r.workload == wl && r.procs == procs && r.threads == threads && r.imp == imp);
        let shape = if procs == 1 { format!("{wl} {threads} thr") } else { format!("{wl} {procs}p×{threads}t") };
        if let (Some(o), Some(p)) = (find(ours), find(peer)) {
            out.push(times_check(&shape, 3.0, peer.name(), o.m.acq_per_s, p.m.acq_per_s));
        }
        if let (Some(o), Some(b)) = (find(ours), find(before)) {
            out.push(format!(
                "INFO {shape}: {} {:.0} acq/s vs {:.0} without the fast path ({}): {:.1}×",
                ours.name(),
                o.m.acq_per_s,
                b.m.acq_per_s,
                before.name(),
                o.m.acq_per_s / b.m.acq_per_s
            ));
        }
        if let Some(o) = find(ours) {
            let fair = o.m.min_share >= 0.9 && o.m.max_share <= 1.1;
            out.push(format!(
                "{} {shape}: every thread of {} within 10% of its fair share: min {:.2}, max {:.2}",
                verdict(fair),
                ours.name(),
                o.m.min_share,
                o.m.max_share
            ));
        }
    }
    out
}

/// One run per line, figures unrounded (`shared.csv` beside `results.csv`).
#[derive(serde::Serialize)]
struct CsvRow<'a> {
    workload: &'a str,
    imp: &'a str,
    procs: u32,
    threads: u32,
    acquisitions: u64,
    acq_per_s: f64,
    wait_p50_us: f64,
    wait_p99_us: f64,
    wait_max_us: f64,
    min_share: f64,
    max_share: f64,
    round_trips_per_acq: f64,
    redis_cpu_us_per_acq: f64,
    proc_cpu_us_per_acq: f64,
    ping_p50_us: f64,
    grants_per_acq: Option<f64>,
    local_per_acq: Option<f64>,
    errors: u64,
}

pub fn write_csv(path: &Path, rows: &[PrimRow]) -> Result<(), Box<dyn Error>> {
    let mut out = csv::Writer::from_path(path)?;
    for r in rows {
        let m = &r.m;
        out.serialize(CsvRow {
            workload: r.workload,
            imp: r.imp.name(),
            procs: r.procs,
            threads: r.threads,
            acquisitions: m.acquisitions,
            acq_per_s: m.acq_per_s,
            wait_p50_us: m.wait.0,
            wait_p99_us: m.wait.1,
            wait_max_us: m.wait.2,
            min_share: m.min_share,
            max_share: m.max_share,
            round_trips_per_acq: m.rt_per_acq,
            redis_cpu_us_per_acq: m.rcpu_us,
            proc_cpu_us_per_acq: m.pcpu_us,
            ping_p50_us: m.ping_us,
            grants_per_acq: m.counter(crate::peers::GRANTS).map(|g| g as f64 / m.acquisitions.max(1) as f64),
            local_per_acq: m.counter(LOCAL).map(|g| g as f64 / m.acquisitions.max(1) as f64),
            errors: m.errors,
        })?;
    }
    out.flush()?;
    Ok(())
}
