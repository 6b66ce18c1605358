//! Torture run: many processes and threads fight over a few locks while faults are
//! injected, and a checker looks for any sign that mutual exclusion broke.
//!
//! ```text
//! cargo run --release --example torture -- --procs 3 --threads 3 --secs 60 --locks 2 \
//!     [--faults all|none|kill,stop,clientkill,pause,restart,restart-aof] [--seed N] [--lease-ms 2000]
//! ```
//!
//! It starts its own `redis-server` (AOF on, `appendfsync always`) on a free port in a
//! temporary directory (on `/dev/shm` when there is one: fsync on a disk would make the
//! locks sit idle), then `--procs` worker processes (this program again, with
//! `--worker`) of `--threads` threads each, for `--secs` seconds, over `--locks` lock
//! names, every lock with `fencing(true)`, `auto_renew` and a short lease (2 s) so that
//! faults matter. Exit status 0 when the checker found no violation, 1 otherwise. A
//! failed run keeps its directory (records, worker stderr, server log) and says where;
//! `TORTURE_KEEP_DIR=1` keeps it always. `--no-exclusion` is the checker's self-test:
//! worker processes lock private names, so the run must fail.
//!
//! A 10-minute soak:
//!
//! ```text
//! cargo run --release --example torture -- --procs 4 --threads 4 --secs 600 --locks 3 --faults all
//! ```
//!
//! or through the test harness (same program, run in-process by `tests/torture.rs`):
//! `TORTURE_SECS=600 cargo test --release --test torture -- --nocapture`.
//!
//! # What each worker thread does
//!
//! `try_lock_until` one of the locks (bounded by the end of the run), then inside the
//! critical section: a non-atomic read-modify-write of a per-lock counter (`GET`, a
//! short sleep that widens the race window, `SET n+1`, on a plain connection), a
//! fenced write (a Lua script that refuses a token lower than the highest it accepted),
//! and one record line (lock, worker, thread, token, times in wall-clock ns, outcomes)
//! written unbuffered to the worker's file, so a SIGKILLed worker's records survive up
//! to its death. A Redis error inside the critical section makes the thread hold on to
//! its guard until the watchdog had a chance to renew it (or to find it lost), then ask
//! Redis (`is_held`) before going on; a lost guard ends the critical section.
//!
//! # Faults (one at a time, at random gaps)
//!
//! `kill` SIGKILLs a worker and starts a replacement; `stop` SIGSTOPs a worker that
//! holds a lock for longer than the lease, then SIGCONTs it (its guard must report lost,
//! and the fenced resource must refuse its stale write); `clientkill` runs
//! `CLIENT KILL TYPE normal` and `CLIENT KILL TYPE pubsub`; `pause` runs
//! `CLIENT PAUSE 2000`; `restart-aof` kills Redis and starts it again on the same port
//! from its AOF (locks and fence counters survive); `restart` does the same after
//! deleting the AOF, i.e. a restart without persistence (every lock, fence counter and
//! resource is forgotten; guards that outlive it must be marked lost).
//!
//! # The checker
//!
//! See [`check`]: overlapping critical sections, fencing-token order, stale fenced writes
//! that were accepted, and lost counter updates, with the accounting explained there.
//! Fencing tokens must rise across restarts without persistence too (the fence counter
//! is lost, but the next one follows the server clock); the fenced resource and the
//! counter, which live in the same Redis, are wiped by such a restart and are checked
//! within each "epoch" between them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_mutex::{LockClient, MutexGuard, MutexOptions};

/// When set, the run's directory (records, worker stderr, server log) is kept; it is
/// kept anyway when the run fails.
pub const KEEP_ENV: &str = "TORTURE_KEEP_DIR";
/// Set (to the worker's parameters) in the environment of a worker process.
pub const WORKER_ENV: &str = "REDIS_MUTEX_TORTURE_WORKER";
const KEY_PREFIX: &str = "torture";
/// Separates the fields of [`WORKER_ENV`].
const SEP: char = '\u{1f}';

/// The fenced resource: accepts a write only if its token is at least the highest token
/// it accepted before (equal: the same holder retrying). Returns {1, previous highest}
/// when accepted, {0, highest} when refused.
const FENCED_WRITE: &str = r"
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
if tonumber(ARGV[1]) < top then
  return {0, top}
end
redis.call('HSET', KEYS[1], 'top', ARGV[1], 'data', ARGV[2])
return {1, top}
";

fn lock_name(k: usize) -> String {
    format!("lock-{k}")
}

fn lock_key(k: usize) -> String {
    format!("{KEY_PREFIX}:{{lock-{k}}}")
}

fn counter_key(k: usize) -> String {
    format!("torture-data:{{lock-{k}}}:counter")
}

fn resource_key(k: usize) -> String {
    format!("torture-data:{{lock-{k}}}:resource")
}

/// Wall-clock nanoseconds: the one clock every process on this machine shares.
fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// xorshift64*: enough randomness for choosing locks, gaps and victims.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

/// A kind of fault the controller injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL a worker process; a replacement is started.
    Kill,
    /// SIGSTOP a worker that holds a lock for longer than the lease, then SIGCONT.
    Stop,
    /// `CLIENT KILL TYPE normal`.
    ClientKillNormal,
    /// `CLIENT KILL TYPE pubsub`.
    ClientKillPubsub,
    /// `CLIENT PAUSE 2000`.
    Pause,
    /// Redis killed and restarted without its data (no persistence).
    Restart,
    /// Redis killed and restarted from its AOF (`appendfsync always`).
    RestartAof,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 7] = [
        Fault::Kill,
        Fault::Stop,
        Fault::ClientKillNormal,
        Fault::ClientKillPubsub,
        Fault::Pause,
        Fault::Restart,
        Fault::RestartAof,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::ClientKillNormal => "clientkill-normal",
            Fault::ClientKillPubsub => "clientkill-pubsub",
            Fault::Pause => "pause",
            Fault::Restart => "restart",
            Fault::RestartAof => "restart-aof",
        }
    }

    /// Parses `all`, `none` or a comma-separated list (`clientkill` means both kinds).
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        match s {
            "all" => return Ok(Fault::ALL.to_vec()),
            "none" | "" => return Ok(Vec::new()),
            _ => {}
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            match part {
                "clientkill" => out.extend([Fault::ClientKillNormal, Fault::ClientKillPubsub]),
                _ => out.push(
                    *Fault::ALL.iter().find(|f| f.name() == part).ok_or_else(|| format!("unknown fault {part:?}"))?,
                ),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to start one worker process: `program args...` with [`WORKER_ENV`] set.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before anything else (e.g. `--worker`).
    pub args: Vec<String>,
}

/// One torture run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker processes alive at any time.
    pub procs: usize,
    /// Threads per worker.
    pub threads: usize,
    /// Length of the run.
    pub secs: u64,
    /// Lock names the threads pick from.
    pub locks: usize,
    /// Faults to inject (each at least once when the run is long enough).
    pub faults: Vec<Fault>,
    /// Seed of every random choice (workers derive theirs from it).
    pub seed: u64,
    /// Lease of every acquisition (renewed by the watchdog at a third of it).
    pub lease: Duration,
    /// How to start a worker.
    pub worker: WorkerCommand,
    /// Checker self-test: each worker process locks a private name instead of the shared
    /// one, so processes do not exclude each other and the checker must report it.
    pub no_exclusion: bool,
}

impl Config {
    /// Parses the command line (everything after the program name).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let program = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut cfg = Config {
            procs: 3,
            threads: 3,
            secs: 30,
            locks: 2,
            faults: Fault::ALL.to_vec(),
            seed: now_ns(),
            lease: Duration::from_secs(2),
            worker: WorkerCommand { program, args: vec!["--worker".into()] },
            no_exclusion: false,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--procs" => cfg.procs = num(value()?)? as usize,
                "--threads" => cfg.threads = num(value()?)? as usize,
                "--secs" => cfg.secs = num(value()?)?,
                "--locks" => cfg.locks = num(value()?)? as usize,
                "--seed" => cfg.seed = num(value()?)?,
                "--lease-ms" => cfg.lease = Duration::from_millis(num(value()?)?),
                "--faults" => cfg.faults = Fault::parse_list(&value()?)?,
                "--no-exclusion" => cfg.no_exclusion = true,
                "-h" | "--help" => return Err(usage()),
                other => return Err(format!("unknown argument {other:?}\n{}", usage())),
            }
        }
        if cfg.procs == 0 || cfg.threads == 0 || cfg.locks == 0 || cfg.secs == 0 {
            return Err("--procs, --threads, --locks and --secs must be at least 1".into());
        }
        if cfg.lease < Duration::from_millis(300) {
            return Err("--lease-ms must be at least 300".into());
        }
        Ok(cfg)
    }
}

fn usage() -> String {
    "usage: torture --procs P --threads T --secs S --locks K \
     [--faults all|none|kill,stop,clientkill,pause,restart,restart-aof] [--seed N] [--lease-ms MS] \
     [--no-exclusion (checker self-test: must report violations)]"
        .into()
}

// ---------------------------------------------------------------------------------
// Records: what a worker thread writes per critical section
// ---------------------------------------------------------------------------------

/// The plain `SET` of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetState {
    NotSent,
    Acked,
    /// Failed: it may or may not have been applied.
    Unknown,
}

/// The fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    NotSent,
    Accepted,
    Refused,
    Unknown,
}

/// What a thread learned after a Redis error inside its critical section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// No error.
    None,
    /// `is_held()` confirmed the lock is still ours.
    Held,
    /// The watchdog had marked the guard lost (`is_lost()`) by then.
    WatchdogLost,
    /// `is_held()` said another owner or no lock.
    NotHeld,
    /// Redis never answered `is_held()`; the thread stopped using the guard.
    Unconfirmed,
    /// The lock was confirmed ours, but the retried operation failed again; the thread
    /// stopped using the guard (not a lost lease).
    GaveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unlock {
    Ok,
    Lost,
    Error,
}

/// One critical section. Times are wall-clock ns (0: did not happen).
#[derive(Debug, Clone)]
struct Rec {
    worker: usize,
    thread: usize,
    lock: usize,
    token: u64,
    /// `try_lock_until` called.
    asked: u64,
    /// `try_lock_until` returned the guard.
    start: u64,
    /// Last operation done, before `unlock`.
    end: u64,
    get_sent: u64,
    set_sent: u64,
    /// Acknowledged, or (for `SetState::Unknown`) when the failure was seen.
    set_ack: u64,
    set: SetState,
    wr_sent: u64,
    wr_ack: u64,
    write: WriteState,
    /// Highest token the resource had seen, as its reply said.
    wr_top: u64,
    /// `is_lost()` just before the fenced write.
    lost_before_write: bool,
    recovery: Recovery,
    /// `is_lost()` just before `unlock`.
    lost_at_end: bool,
    unlock: Unlock,
}

impl Rec {
    fn to_line(&self) -> String {
        let set = match self.set {
            SetState::NotSent => 'n',
            SetState::Acked => 'a',
            SetState::Unknown => 'u',
        };
        let write = match self.write {
            WriteState::NotSent => 'n',
            WriteState::Accepted => 'a',
            WriteState::Refused => 'r',
            WriteState::Unknown => 'u',
        };
        let recovery = match self.recovery {
            Recovery::None => '-',
            Recovery::Held => 'k',
            Recovery::WatchdogLost => 'w',
            Recovery::NotHeld => 'h',
            Recovery::Unconfirmed => 'e',
            Recovery::GaveUp => 'g',
        };
        let unlock = match self.unlock {
            Unlock::Ok => 'o',
            Unlock::Lost => 'l',
            Unlock::Error => 'e',
        };
        format!(
            "R {} {} {} {} {} {} {} {} {} {} {set} {} {} {write} {} {} {recovery} {} {unlock}\n",
            self.worker,
            self.thread,
            self.lock,
            self.token,
            self.asked,
            self.start,
            self.end,
            self.get_sent,
            self.set_sent,
            self.set_ack,
            self.wr_sent,
            self.wr_ack,
            self.wr_top,
            u8::from(self.lost_before_write),
            u8::from(self.lost_at_end),
        )
    }

    fn parse(line: &str) -> Option<Rec> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 20 || f[0] != "R" {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok();
        let c = |i: usize| f[i].chars().next();
        Some(Rec {
            worker: n(1)? as usize,
            thread: n(2)? as usize,
            lock: n(3)? as usize,
            token: n(4)?,
            asked: n(5)?,
            start: n(6)?,
            end: n(7)?,
            get_sent: n(8)?,
            set_sent: n(9)?,
            set_ack: n(10)?,
            set: match c(11)? {
                'n' => SetState::NotSent,
                'a' => SetState::Acked,
                'u' => SetState::Unknown,
                _ => return None,
            },
            wr_sent: n(12)?,
            wr_ack: n(13)?,
            write: match c(14)? {
                'n' => WriteState::NotSent,
                'a' => WriteState::Accepted,
                'r' => WriteState::Refused,
                'u' => WriteState::Unknown,
                _ => return None,
            },
            wr_top: n(15)?,
            lost_before_write: n(16)? == 1,
            recovery: match c(17)? {
                '-' => Recovery::None,
                'k' => Recovery::Held,
                'w' => Recovery::WatchdogLost,
                'h' => Recovery::NotHeld,
                'e' => Recovery::Unconfirmed,
                'g' => Recovery::GaveUp,
                _ => return None,
            },
            lost_at_end: n(18)? == 1,
            unlock: match c(19)? {
                'o' => Unlock::Ok,
                'l' => Unlock::Lost,
                'e' => Unlock::Error,
                _ => return None,
            },
        })
    }

    /// The guard was reported lost (by the watchdog, `is_held`, or `unlock`), or the
    /// thread could not confirm it and stopped using it.
    fn lost(&self) -> bool {
        self.lost_at_end
            || self.unlock == Unlock::Lost
            || matches!(self.recovery, Recovery::WatchdogLost | Recovery::NotHeld | Recovery::Unconfirmed)
    }
}

/// Per-thread counters, summed into the worker's summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    acquisitions: u64,
    lock_timeouts: u64,
    lock_errors: u64,
    cs_errors: u64,
    unlock_errors: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.acquisitions += o.acquisitions;
        self.lock_timeouts += o.lock_timeouts;
        self.lock_errors += o.lock_errors;
        self.cs_errors += o.cs_errors;
        self.unlock_errors += o.unlock_errors;
    }
}

// ---------------------------------------------------------------------------------
// Worker process
// ---------------------------------------------------------------------------------

#[derive(Clone)]
struct WorkerSpec {
    idx: usize,
    url: String,
    threads: usize,
    locks: usize,
    lease_ms: u64,
    end_ns: u64,
    seed: u64,
    no_exclusion: bool,
    out: PathBuf,
}

impl WorkerSpec {
    fn encode(&self) -> String {
        [
            self.idx.to_string(),
            self.url.clone(),
            self.threads.to_string(),
            self.locks.to_string(),
            self.lease_ms.to_string(),
            self.end_ns.to_string(),
            self.seed.to_string(),
            u8::from(self.no_exclusion).to_string(),
            self.out.display().to_string(),
        ]
        .join(&SEP.to_string())
    }

    fn decode(s: &str) -> Result<WorkerSpec, String> {
        let f: Vec<&str> = s.split(SEP).collect();
        let [idx, url, threads, locks, lease_ms, end_ns, seed, no_exclusion, out] = f.as_slice() else {
            return Err(format!("malformed {WORKER_ENV}"));
        };
        let n = |v: &str| v.parse::<u64>().map_err(|e| format!("malformed {WORKER_ENV}: {e}"));
        Ok(WorkerSpec {
            idx: n(idx)? as usize,
            url: (*url).to_owned(),
            threads: n(threads)? as usize,
            locks: n(locks)? as usize,
            lease_ms: n(lease_ms)?,
            end_ns: n(end_ns)?,
            seed: n(seed)?,
            no_exclusion: *no_exclusion == "1",
            out: PathBuf::from(out),
        })
    }
}

/// If this process was started as a worker (its environment has [`WORKER_ENV`]), runs
/// the worker and returns its exit code; otherwise `None`.
pub fn worker_entry() -> Option<i32> {
    let spec = std::env::var(WORKER_ENV).ok()?;
    Some(match WorkerSpec::decode(&spec).and_then(|s| worker_main(&s)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("torture worker: {e}");
            2
        }
    })
}

/// What every thread of a worker shares.
struct Ctx {
    spec: WorkerSpec,
    mutexes: Vec<redis_mutex::Mutex>,
    redis: redis::Client,
    fenced: redis::Script,
    lease: Duration,
    end: Instant,
    out: StdMutex<File>,
}

impl Ctx {
    fn emit(&self, line: &str) {
        // One unbuffered write per line: a SIGKILL loses at most the line being formed.
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).write_all(line.as_bytes());
    }
}

/// One thread's state.
struct ThreadCtx {
    thread: usize,
    rng: Rng,
    con: Option<redis::Connection>,
    totals: Totals,
    logged: u32,
}

impl ThreadCtx {
    fn log(&mut self, worker: usize, what: &str, e: &dyn fmt::Display) {
        // Enough to diagnose; errors during an outage come by the hundred.
        if self.logged < 20 {
            self.logged += 1;
            eprintln!("[{}] worker {worker} thread {}: {what}: {e}", now_ns(), self.thread);
        }
    }
}

fn worker_main(spec: &WorkerSpec) -> Result<(), String> {
    // Unchecked: a replacement worker may start while Redis is briefly away.
    let client = LockClient::builder()
        .key_prefix(KEY_PREFIX)
        .build_unchecked(&spec.url)
        .map_err(|e| format!("cannot build the client: {e}"))?;
    let lease = Duration::from_millis(spec.lease_ms);
    let options = MutexOptions::default().lease(lease).auto_renew(true).fencing(true);
    let out = File::create(&spec.out).map_err(|e| format!("cannot create {}: {e}", spec.out.display()))?;
    let until_end = Duration::from_nanos(spec.end_ns.saturating_sub(now_ns()));
    let ctx = Arc::new(Ctx {
        mutexes: (0..spec.locks)
            .map(|k| {
                let name =
                    if spec.no_exclusion { format!("{}-private-{}", lock_name(k), spec.idx) } else { lock_name(k) };
                client.mutex_with(&name, options.clone())
            })
            .collect(),
        redis: redis::Client::open(spec.url.as_str()).map_err(|e| e.to_string())?,
        fenced: redis::Script::new(FENCED_WRITE),
        lease,
        end: Instant::now() + until_end,
        out: StdMutex::new(out),
        spec: spec.clone(),
    });
    ctx.emit(&format!("H {} {} {}\n", spec.idx, std::process::id(), client.id()));
    let handles: Vec<_> = (0..spec.threads)
        .map(|t| {
            let ctx = ctx.clone();
            let seed = spec.seed.wrapping_add(t as u64 * 7919);
            thread::Builder::new()
                .name(format!("torture-{t}"))
                .spawn(move || thread_main(&ctx, t, seed))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut totals = Totals::default();
    for h in handles {
        totals.add(&h.join().map_err(|_| "a worker thread panicked".to_string())?);
    }
    let s = client.stats();
    ctx.emit(&format!(
        "S {} {} {} {} {} {} {} {} {} {}\n",
        totals.acquisitions,
        totals.lock_timeouts,
        totals.lock_errors,
        totals.cs_errors,
        totals.unlock_errors,
        s.notifier_reconnects,
        s.leases_lost,
        s.renewals,
        s.handoffs,
        s.local_handoffs,
    ));
    Ok(())
}

fn thread_main(ctx: &Ctx, thread: usize, seed: u64) -> Totals {
    let mut tc = ThreadCtx { thread, rng: Rng::new(seed), con: None, totals: Totals::default(), logged: 0 };
    let mut backoff = Duration::from_millis(20);
    while Instant::now() < ctx.end {
        let k = tc.rng.below(ctx.mutexes.len() as u64) as usize;
        let asked = now_ns();
        let deadline = (Instant::now() + Duration::from_secs(3)).min(ctx.end);
        match ctx.mutexes[k].try_lock_until(deadline) {
            Ok(Some(guard)) => {
                backoff = Duration::from_millis(20);
                tc.totals.acquisitions += 1;
                let rec = critical_section(ctx, &mut tc, k, guard, asked);
                ctx.emit(&rec.to_line());
            }
            Ok(None) => tc.totals.lock_timeouts += 1,
            Err(e) => {
                // An outage is not a violation: count it, back off, go on.
                tc.totals.lock_errors += 1;
                tc.log(ctx.spec.idx, "lock", &e);
                thread::sleep(backoff.min(ctx.end.saturating_duration_since(Instant::now())));
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
        thread::sleep(Duration::from_micros(tc.rng.below(1000)));
    }
    tc.totals
}

fn connection<'a>(ctx: &Ctx, slot: &'a mut Option<redis::Connection>) -> redis::RedisResult<&'a mut redis::Connection> {
    if slot.is_none() {
        let con = ctx.redis.get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(3)))?;
        con.set_write_timeout(Some(Duration::from_secs(3)))?;
        *slot = Some(con);
    }
    Ok(slot.as_mut().expect("just connected"))
}

/// Runs one Redis operation of the critical section. On an error, holds on to the
/// guard until it knows whether the lock is still ours ([`recover`]), then retries once
/// if it is. `None` when the operation did not succeed; `rec.recovery` says why.
fn guarded<T>(
    ctx: &Ctx,
    tc: &mut ThreadCtx,
    guard: &MutexGuard,
    rec: &mut Rec,
    mut op: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
) -> Option<T> {
    if !matches!(rec.recovery, Recovery::None | Recovery::Held) {
        return None;
    }
    for attempt in 0..2 {
        match connection(ctx, &mut tc.con).and_then(&mut op) {
            Ok(v) => return Some(v),
            Err(e) => {
                tc.totals.cs_errors += 1;
                tc.con = None;
                tc.log(ctx.spec.idx, "inside the critical section", &e);
                if attempt == 1 {
                    // Still failing although the lock is ours: give the rest up.
                    rec.recovery = Recovery::GaveUp;
                    return None;
                }
                rec.recovery = recover(ctx, tc, guard);
                if rec.recovery != Recovery::Held {
                    return None;
                }
            }
        }
    }
    None
}

/// After a Redis error inside the critical section. When Redis answers at once (the
/// connection was killed, the server is fine) asks it whether the lock is still ours.
/// Otherwise Redis was away, perhaps restarted without its data: waits until the
/// watchdog marks the guard lost, or until Redis has answered for half a lease (the
/// watchdog renews every lease/3, so by then it has tried this guard), then asks.
fn recover(ctx: &Ctx, tc: &mut ThreadCtx, guard: &MutexGuard) -> Recovery {
    let ping = |tc: &mut ThreadCtx| connection(ctx, &mut tc.con).and_then(|c| redis::cmd("PING").query::<String>(c));
    if !guard.is_lost() && ping(tc).is_ok() {
        return ask(guard);
    }
    let started = Instant::now();
    let mut answering_since: Option<Instant> = None;
    loop {
        if guard.is_lost() {
            return Recovery::WatchdogLost;
        }
        if started.elapsed() >= ctx.lease * 4 {
            break;
        }
        if ping(tc).is_err() {
            tc.con = None;
            answering_since = None;
        } else if answering_since.get_or_insert_with(Instant::now).elapsed() >= ctx.lease / 2 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    ask(guard)
}

fn ask(guard: &MutexGuard) -> Recovery {
    match guard.is_held() {
        Ok(true) => Recovery::Held,
        Ok(false) => Recovery::NotHeld,
        Err(_) => Recovery::Unconfirmed,
    }
}

fn critical_section(ctx: &Ctx, tc: &mut ThreadCtx, k: usize, guard: MutexGuard, asked: u64) -> Rec {
    let mut rec = Rec {
        worker: ctx.spec.idx,
        thread: tc.thread,
        lock: k,
        token: guard.fencing_token().unwrap_or(0),
        asked,
        start: now_ns(),
        end: 0,
        get_sent: 0,
        set_sent: 0,
        set_ack: 0,
        set: SetState::NotSent,
        wr_sent: 0,
        wr_ack: 0,
        write: WriteState::NotSent,
        wr_top: 0,
        lost_before_write: false,
        recovery: Recovery::None,
        lost_at_end: false,
        unlock: Unlock::Ok,
    };
    let counter = counter_key(k);

    // A read-modify-write that only mutual exclusion keeps correct.
    rec.get_sent = now_ns();
    let read = guarded(ctx, tc, &guard, &mut rec, |c| redis::cmd("GET").arg(&counter).query::<Option<i64>>(c));
    if let Some(value) = read {
        thread::sleep(Duration::from_micros(500 + tc.rng.below(4000)));
        rec.set_sent = now_ns();
        rec.set = SetState::Unknown;
        let next = value.unwrap_or(0) + 1;
        if guarded(ctx, tc, &guard, &mut rec, |c| redis::cmd("SET").arg(&counter).arg(next).query::<()>(c)).is_some() {
            rec.set = SetState::Acked;
        }
        rec.set_ack = now_ns();
    }

    // The fenced write is made even when the guard already knows it is lost: the
    // resource, not the holder, must refuse a stale token.
    if matches!(rec.recovery, Recovery::None | Recovery::Held) {
        rec.lost_before_write = guard.is_lost();
        let (resource, token) = (resource_key(k), rec.token);
        let data = format!("{}:{}:{}", ctx.spec.idx, tc.thread, rec.start);
        rec.wr_sent = now_ns();
        rec.write = WriteState::Unknown;
        let reply = guarded(ctx, tc, &guard, &mut rec, |c| {
            ctx.fenced.key(&resource).arg(token).arg(&data).invoke::<(i64, u64)>(c)
        });
        rec.wr_ack = now_ns();
        if let Some((accepted, top)) = reply {
            rec.write = if accepted == 1 { WriteState::Accepted } else { WriteState::Refused };
            rec.wr_top = top;
        }
    }

    rec.end = now_ns();
    rec.lost_at_end = guard.is_lost();
    rec.unlock = match guard.unlock() {
        Ok(()) => Unlock::Ok,
        Err(e) if e.is_lock_lost() => Unlock::Lost,
        Err(e) => {
            tc.totals.unlock_errors += 1;
            tc.log(ctx.spec.idx, "unlock", &e);
            Unlock::Error
        }
    };
    rec
}

// ---------------------------------------------------------------------------------
// Redis server
// ---------------------------------------------------------------------------------

const NOT_FOUND: &str = "redis-server not found on PATH: install it with \
     `apt-get update && apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)";

/// The run's `redis-server`: AOF with `appendfsync always`, so a restart from the AOF
/// keeps every acknowledged write. Killed on drop.
struct Server {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

enum LaunchError {
    AddrInUse,
    Other(String),
}

impl Server {
    fn start(dir: &Path) -> Result<Server, String> {
        let mut server = Server { dir: dir.to_owned(), port: 0, child: None };
        for _ in 0..5 {
            server.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?
                .port();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(LaunchError::AddrInUse) => continue,
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err("redis-server could not bind a free port in 5 attempts".into())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        let stdio = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.stdio"))
            .map_err(|e| LaunchError::Other(e.to_string()))?;
        let log_len = fs::metadata(self.dir.join("redis.log")).map_or(0, |m| m.len()) as usize;
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(stdio.try_clone().map_err(|e| LaunchError::Other(e.to_string()))?)
            .stderr(stdio)
            .spawn()
            .map_err(|e| {
                LaunchError::Other(if e.kind() == std::io::ErrorKind::NotFound {
                    NOT_FOUND.into()
                } else {
                    format!("cannot start redis-server: {e}")
                })
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                let new = log.get(log_len..).unwrap_or_default();
                if new.contains("Address already in use") {
                    return Err(LaunchError::AddrInUse);
                }
                return Err(LaunchError::Other(format!("redis-server exited ({status}):\n{new}")));
            }
            if self.ping().is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Other(format!("redis-server did not answer:\n{}", self.log_tail())));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// An admin connection (1 s connect, 3 s read/write timeouts).
    fn admin(&self) -> redis::RedisResult<redis::Connection> {
        let con = redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))?;
        con.set_read_timeout(Some(Duration::from_secs(3)))?;
        con.set_write_timeout(Some(Duration::from_secs(3)))?;
        Ok(con)
    }

    /// `PING` answers `PONG` (not `LOADING`).
    fn ping(&self) -> redis::RedisResult<()> {
        let pong: String = redis::cmd("PING").query(&mut self.admin()?)?;
        if pong == "PONG" { Ok(()) } else { Err(redis::RedisError::from((redis::ErrorKind::Io, "no PONG"))) }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (retrying while the port is still taken).
    fn relaunch(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(LaunchError::AddrInUse) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(LaunchError::AddrInUse) => return Err(format!("port {} stayed in use", self.port)),
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
    }

    /// Each lock's counter (`None`: absent).
    fn counters(&self, locks: usize) -> Result<Vec<Option<i64>>, String> {
        let mut con = self.admin().map_err(|e| e.to_string())?;
        (0..locks).map(|k| redis::cmd("GET").arg(counter_key(k)).query(&mut con).map_err(|e| e.to_string())).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------
// Worker processes, seen from the controller
// ---------------------------------------------------------------------------------

struct Proc {
    idx: usize,
    child: Child,
    rec: PathBuf,
    err: PathBuf,
    killed: bool,
    status: Option<ExitStatus>,
    client_id: Option<String>,
}

struct Fleet {
    cfg: Config,
    dir: PathBuf,
    url: String,
    end_ns: u64,
    procs: Vec<Proc>,
}

impl Fleet {
    fn spawn(&mut self) -> Result<(), String> {
        let idx = self.procs.len();
        let rec = self.dir.join(format!("worker-{idx}.rec"));
        let err = self.dir.join(format!("worker-{idx}.stderr"));
        let spec = WorkerSpec {
            idx,
            url: self.url.clone(),
            threads: self.cfg.threads,
            locks: self.cfg.locks,
            lease_ms: self.cfg.lease.as_millis() as u64,
            end_ns: self.end_ns,
            seed: self.cfg.seed.wrapping_add(1 + idx as u64 * 104_729),
            no_exclusion: self.cfg.no_exclusion,
            out: rec.clone(),
        };
        let out = File::create(self.dir.join(format!("worker-{idx}.stdout"))).map_err(|e| e.to_string())?;
        let child = Command::new(&self.cfg.worker.program)
            .args(&self.cfg.worker.args)
            .env(WORKER_ENV, spec.encode())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(File::create(&err).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start a worker ({}): {e}", self.cfg.worker.program.display()))?;
        self.procs.push(Proc { idx, child, rec, err, killed: false, status: None, client_id: None });
        Ok(())
    }

    /// Indices of workers that run (not killed, not exited).
    fn running(&mut self) -> Vec<usize> {
        for p in &mut self.procs {
            if p.status.is_none() && !p.killed {
                p.status = p.child.try_wait().ok().flatten();
            }
        }
        self.procs.iter().filter(|p| p.status.is_none() && !p.killed).map(|p| p.idx).collect()
    }

    /// The crate's client id of worker `i` (from its record file's header).
    fn client_id(&mut self, i: usize) -> Option<String> {
        let p = &mut self.procs[i];
        if p.client_id.is_none() {
            let text = fs::read_to_string(&p.rec).ok()?;
            let header = text.lines().next()?;
            p.client_id = header.split_whitespace().nth(3).map(str::to_owned);
        }
        p.client_id.clone()
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].child.id().to_string();
        let _ = Command::new("kill").args([sig, pid.as_str()]).status();
    }

    /// Waits for every worker until `deadline`; kills those still running then.
    fn wait_all(&mut self, deadline: Instant) {
        while !self.running().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        for p in &mut self.procs {
            if p.status.is_none() && !p.killed {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.status.is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------

/// A worker stopped with SIGSTOP while it held a lock.
#[derive(Debug, Clone)]
struct StopEvent {
    worker: usize,
    stop_ns: u64,
    cont_ns: u64,
}

/// Each lock's counter at a moment.
#[derive(Debug, Clone)]
struct Snapshot {
    /// When the reading started: every write acknowledged before is included.
    sent_ns: u64,
    values: Vec<Option<i64>>,
}

#[derive(Debug, Clone)]
struct RestartEvent {
    persistent: bool,
    kill_ns: u64,
    /// Just before the new server was started: nothing can be granted earlier. (It
    /// grants locks before the controller sees it answer, so `up_ns` is too late to
    /// mark an epoch.)
    spawn_ns: u64,
    up_ns: u64,
    /// Counters just before a restart without persistence.
    before: Option<Snapshot>,
}

#[derive(Debug, Default)]
struct Events {
    injected: BTreeMap<Fault, u32>,
    stops: Vec<StopEvent>,
    restarts: Vec<RestartEvent>,
    notes: Vec<String>,
}

struct Controller {
    cfg: Config,
    server: Server,
    fleet: Fleet,
    rng: Rng,
    events: Events,
    end: Instant,
    t0: Instant,
}

impl Controller {
    fn note(&mut self, what: String) {
        self.events.notes.push(format!("t={:.1}s {what}", self.t0.elapsed().as_secs_f64()));
    }

    fn inject(&mut self, fault: Fault) -> Result<(), String> {
        let done = match fault {
            Fault::Kill => self.kill_worker()?,
            Fault::Stop => self.stop_holder(),
            Fault::ClientKillNormal | Fault::ClientKillPubsub => {
                let kind = if fault == Fault::ClientKillNormal { "normal" } else { "pubsub" };
                // SKIPME (default yes) spares this admin connection.
                let killed = self
                    .server
                    .admin()
                    .and_then(|mut c| redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind).query::<i64>(&mut c));
                match killed {
                    Ok(n) => {
                        self.note(format!("CLIENT KILL TYPE {kind}: {n} connections"));
                        true
                    }
                    Err(e) => {
                        self.note(format!("CLIENT KILL TYPE {kind} failed: {e}"));
                        false
                    }
                }
            }
            Fault::Pause => {
                let ok = self
                    .server
                    .admin()
                    .and_then(|mut c| redis::cmd("CLIENT").arg("PAUSE").arg(2000).query::<()>(&mut c))
                    .is_ok();
                self.note(format!("CLIENT PAUSE 2000 (ok: {ok})"));
                thread::sleep(Duration::from_millis(2100));
                ok
            }
            Fault::Restart | Fault::RestartAof => self.restart(fault == Fault::RestartAof)?,
        };
        if done {
            *self.events.injected.entry(fault).or_default() += 1;
        }
        Ok(())
    }

    fn kill_worker(&mut self) -> Result<bool, String> {
        let running = self.fleet.running();
        if running.is_empty() {
            return Ok(false);
        }
        let i = running[self.rng.below(running.len() as u64) as usize];
        let p = &mut self.fleet.procs[i];
        let _ = p.child.kill();
        p.status = p.child.wait().ok();
        p.killed = true;
        self.note(format!("SIGKILL worker {i}"));
        // Keep the fleet at full strength while there is time left to use it.
        if self.end.saturating_duration_since(Instant::now()) > Duration::from_secs(3) {
            self.fleet.spawn()?;
        }
        Ok(true)
    }

    /// SIGSTOPs a worker that holds a lock (checked in Redis after the stop, so the
    /// stopped worker cannot have released it), for 1.5 leases + 1 s, then SIGCONTs it.
    fn stop_holder(&mut self) -> bool {
        for _ in 0..50 {
            let Some(target) = self.find_holder() else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            self.fleet.signal(target, "-STOP");
            let stop_ns = now_ns();
            thread::sleep(Duration::from_millis(50));
            let client = self.fleet.client_id(target);
            let holds = client.is_some() && (0..self.cfg.locks).any(|k| self.lock_client(k) == client);
            if !holds {
                // It released between our look and the signal; try again.
                self.fleet.signal(target, "-CONT");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            thread::sleep(self.cfg.lease * 3 / 2 + Duration::from_secs(1));
            self.fleet.signal(target, "-CONT");
            self.events.stops.push(StopEvent { worker: target, stop_ns, cont_ns: now_ns() });
            self.note(format!(
                "SIGSTOP worker {target} (holding a lock), SIGCONT after {:.1?}",
                Duration::from_nanos(now_ns() - stop_ns)
            ));
            return true;
        }
        self.note("stop: found no worker holding a lock in 50 tries".into());
        false
    }

    /// The client id in lock `k`'s hash (`c`), if someone holds it.
    fn lock_client(&self, k: usize) -> Option<String> {
        let mut con = self.server.admin().ok()?;
        redis::cmd("HGET").arg(lock_key(k)).arg("c").query::<Option<String>>(&mut con).ok().flatten()
    }

    fn find_holder(&mut self) -> Option<usize> {
        let running = self.fleet.running();
        let first = self.rng.below(self.cfg.locks as u64) as usize;
        for k in (0..self.cfg.locks).map(|j| (first + j) % self.cfg.locks) {
            let Some(holder) = self.lock_client(k) else { continue };
            for &i in &running {
                if self.fleet.client_id(i).as_deref() == Some(holder.as_str()) {
                    return Some(i);
                }
            }
        }
        None
    }

    fn restart(&mut self, persistent: bool) -> Result<bool, String> {
        let before = if persistent {
            None
        } else {
            let sent_ns = now_ns();
            Some(Snapshot { sent_ns, values: self.server.counters(self.cfg.locks)? })
        };
        self.server.kill();
        let kill_ns = now_ns();
        if !persistent {
            // The same server without its data: a restart without persistence.
            let _ = fs::remove_dir_all(self.server.dir.join("appendonlydir"));
        }
        thread::sleep(Duration::from_millis(700));
        let spawn_ns = now_ns();
        self.server.relaunch()?;
        let up_ns = now_ns();
        self.events.restarts.push(RestartEvent { persistent, kill_ns, spawn_ns, up_ns, before });
        let how = if persistent { "from its AOF" } else { "without its data" };
        self.note(format!("redis-server restarted {how}, down {:.1?}", Duration::from_nanos(up_ns - kill_ns)));
        // Let the consequences (lost leases, reconnects) play out before the next fault.
        thread::sleep(self.cfg.lease);
        Ok(true)
    }
}

/// Runs the whole torture: server, workers, faults, checks.
///
/// # Errors
///
/// Setup failures (no `redis-server`, no temporary directory, a worker that cannot be
/// started); violations are in the [`Report`], not errors.
pub fn run(cfg: &Config) -> Result<Report, String> {
    let started = Instant::now();
    // On tmpfs when there is one: `appendfsync always` on a disk costs milliseconds per
    // write and would make locks sit idle. A SIGKILLed redis-server loses nothing that
    // it wrote on either: the restart-aof fault kills the process, not the machine.
    let mut builder = tempfile::Builder::new();
    builder.prefix("redis-mutex-torture-");
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { builder.tempdir_in(shm) } else { builder.tempdir() }
        .or_else(|_| builder.tempdir())
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let server = Server::start(dir.path())?;
    let end_ns = now_ns() + cfg.secs * 1_000_000_000;
    let end = Instant::now() + Duration::from_secs(cfg.secs);
    let fleet = Fleet { cfg: cfg.clone(), dir: dir.path().to_owned(), url: server.url(), end_ns, procs: Vec::new() };
    let mut c = Controller {
        cfg: cfg.clone(),
        server,
        fleet,
        rng: Rng::new(cfg.seed),
        events: Events::default(),
        end,
        t0: started,
    };
    for _ in 0..cfg.procs {
        c.fleet.spawn()?;
    }

    // Faults stop early enough for their consequences to be over before the end.
    let faults_until = end.checked_sub(cfg.lease * 2 + Duration::from_secs(1)).unwrap_or(end);
    thread::sleep(Duration::from_millis(1500).min(faults_until.saturating_duration_since(Instant::now())));
    let mut plan: Vec<Fault> = Vec::new();
    while !cfg.faults.is_empty() {
        let gap = c.rng.millis(500, 1500);
        if Instant::now() + gap >= faults_until {
            break;
        }
        thread::sleep(gap);
        if plan.is_empty() {
            // Every kind once per round, in random order.
            plan = cfg.faults.clone();
            for i in (1..plan.len()).rev() {
                plan.swap(i, c.rng.below(i as u64 + 1) as usize);
            }
        }
        let fault = plan.pop().expect("refilled above");
        c.inject(fault)?;
    }
    thread::sleep(end.saturating_duration_since(Instant::now()));

    // Threads stop taking locks at the end; one in recovery may need up to 4 leases.
    c.fleet.wait_all(Instant::now() + cfg.lease * 4 + Duration::from_secs(10));
    let last = Snapshot { sent_ns: now_ns(), values: c.server.counters(cfg.locks)? };

    let mut workers = WorkerOutcome::default();
    let mut records = Vec::new();
    for p in &c.fleet.procs {
        workers.started += 1;
        let text = fs::read_to_string(&p.rec).unwrap_or_default();
        let mut summary = None;
        for line in text.lines() {
            match line.split_whitespace().next() {
                Some("R") => match Rec::parse(line) {
                    Some(r) => records.push(r),
                    None => workers.unparsed += 1,
                },
                Some("S") => summary = Some(line.to_owned()),
                _ => {}
            }
        }
        if let Some(s) = &summary {
            let n: Vec<u64> = s.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
            if let [acq, timeouts, lock_err, cs_err, unlock_err, reconnects, lost, renewals, handoffs, local] = n[..] {
                workers.totals.add(&Totals {
                    acquisitions: acq,
                    lock_timeouts: timeouts,
                    lock_errors: lock_err,
                    cs_errors: cs_err,
                    unlock_errors: unlock_err,
                });
                workers.notifier_reconnects += reconnects;
                workers.stats_leases_lost += lost;
                workers.renewals += renewals;
                workers.handoffs += handoffs;
                workers.local_handoffs += local;
            }
        }
        if p.killed {
            workers.killed += 1;
        } else if p.status.is_some_and(|s| s.success()) && summary.is_some() {
            workers.finished += 1;
        } else {
            let stderr = fs::read_to_string(&p.err).unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            workers.failures.push(format!(
                "worker {} did not finish cleanly (status {:?}, summary written: {}); stderr tail: {:?}",
                p.idx,
                p.status,
                summary.is_some(),
                tail
            ));
        }
    }

    let mut report = check(cfg, &records, &c.events, &last);
    report.workers = workers;
    report.elapsed = started.elapsed();
    if !report.is_ok() && !cfg.no_exclusion {
        report.server_log_tail = c.server.log_tail();
    }
    drop(c);
    // A self-test fails on purpose: nothing to look into.
    if (!report.is_ok() && !cfg.no_exclusion) || std::env::var_os(KEEP_ENV).is_some() {
        // Records, worker stderr and the server log, for a post-mortem.
        report.kept_dir = Some(dir.keep());
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------

/// How the worker processes fared.
#[derive(Debug, Default, Clone)]
pub struct WorkerOutcome {
    /// Worker processes started (replacements included).
    pub started: usize,
    /// Killed by the `kill` fault.
    pub killed: usize,
    /// Exited with status 0 after writing their summary.
    pub finished: usize,
    /// Every other worker, with what went wrong.
    pub failures: Vec<String>,
    /// Record lines that did not parse (a SIGKILL while writing).
    pub unparsed: usize,
    totals: Totals,
    notifier_reconnects: u64,
    stats_leases_lost: u64,
    renewals: u64,
    handoffs: u64,
    /// Of those, in-process handoffs without a round trip.
    pub local_handoffs: u64,
}

/// Guards alive across restarts of one kind, and how they ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Survivors {
    /// Guards acquired before a restart and still in use after it.
    pub total: usize,
    /// Marked lost by the watchdog (`is_lost()`) before the thread asked Redis.
    pub watchdog: usize,
    /// Found lost by `is_held()`.
    pub is_held: usize,
    /// Found lost only by `unlock()`.
    pub at_release: usize,
    /// Never confirmed either way (Redis did not answer).
    pub unconfirmed: usize,
    /// Still held: renewed across the restart and released normally.
    pub kept: usize,
}

/// The outcome of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Critical sections recorded and checked.
    pub acquisitions: usize,
    /// Per lock.
    pub per_lock: Vec<usize>,
    /// Faults injected, per kind.
    pub faults: BTreeMap<Fault, u32>,
    /// Violations per kind (every kind listed, 0 included).
    pub violations: BTreeMap<&'static str, usize>,
    /// The first violations, described.
    pub examples: Vec<String>,
    /// Critical sections whose guard reported its lease lost.
    pub lost_leases: usize,
    /// ... of which were in a worker while it was SIGSTOPped.
    pub lost_in_stop: usize,
    /// SIGSTOPs of a lock holder.
    pub stops: usize,
    /// Overlapping critical sections where the earlier holder had lost its lease
    /// (allowed: that is what leases and fencing are for).
    pub overlaps_after_loss: usize,
    /// Fenced writes the resource refused (stale tokens).
    pub stale_writes_refused: usize,
    /// Fenced writes by holders whose guard already said `is_lost()`.
    pub writes_after_is_lost: usize,
    /// Longest `try_lock_until` that succeeded.
    pub max_wait: Duration,
    /// Epochs between restarts without persistence (fencing order is checked across
    /// them, the fenced resource and the counter within each).
    pub epochs: usize,
    /// Per lock and restart without persistence: the first token after it (of a holder
    /// that kept its lock) less the last one before it. Must be positive.
    pub rises_across_wipes: Vec<i128>,
    /// Guards alive across a restart without persistence.
    pub survivors_restart: Survivors,
    /// Guards alive across a restart from the AOF.
    pub survivors_restart_aof: Survivors,
    /// Per epoch and lock: (counter, increments by holders that kept the lock, allowance).
    pub counters: Vec<Vec<(i64, usize, usize)>>,
    /// The worker processes.
    pub workers: WorkerOutcome,
    /// Controller notes (what a fault did).
    pub notes: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The server's log tail, when something failed.
    pub server_log_tail: String,
    /// The run's directory, when kept (see [`KEEP_ENV`]).
    pub kept_dir: Option<PathBuf>,
    config: String,
}

impl Report {
    /// Every violation found.
    pub fn violation_count(&self) -> usize {
        self.violations.values().sum()
    }

    /// No violation and every worker that was not killed finished.
    pub fn is_ok(&self) -> bool {
        self.violation_count() == 0 && self.workers.failures.is_empty()
    }

    /// Faults injected of `kind`.
    pub fn injected(&self, kind: Fault) -> u32 {
        self.faults.get(&kind).copied().unwrap_or(0)
    }

    fn violation(&mut self, kind: &'static str, what: String) {
        *self.violations.entry(kind).or_default() += 1;
        if self.examples.len() < 20 {
            self.examples.push(format!("{kind}: {what}"));
        }
    }
}

const OVERLAP: &str = "overlap";
const FENCING_ORDER: &str = "fencing-order";
const DUPLICATE_TOKEN: &str = "duplicate-token";
const STALE_ACCEPTED: &str = "stale-write-accepted";
const REFUSED_WHILE_HELD: &str = "refused-while-held";
const LOST_UPDATE: &str = "counter-lost-update";
const RELEASED_AFTER_WIPE: &str = "released-after-restart";

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn describe(r: &Rec) -> String {
    format!(
        "lock-{} worker {} thread {} token {} [{:.3} ms .. {:.3} ms] lost={} unlock={:?} recovery={:?}",
        r.lock,
        r.worker,
        r.thread,
        r.token,
        ms(r.start % 1_000_000_000_000),
        ms(r.end % 1_000_000_000_000),
        r.lost(),
        r.unlock,
        r.recovery
    )
}

/// Checks the records of a run against the faults that were injected.
///
/// - **Overlap**: two critical sections on one lock whose intervals ([lock returned,
///   last operation done]) intersect are a violation unless the *first* holder's guard
///   reported its lease lost (watchdog, `is_held`, or `unlock` returning `LockLost`).
///   "First" is the order in which Redis granted the lock: by epoch, then by fencing
///   token. A later holder that overlaps a first one that kept its lock broke exclusion,
///   even if it lost its own lease afterwards.
/// - **Epochs**: a restart without persistence forgets the fence counters, the fenced
///   resource and the counter, which all live in the run's Redis. Tokens must rise
///   across it all the same (a lost fence counter restarts above the server clock);
///   the resource and the counter are checked per epoch between such restarts. A
///   critical section that spans one (acquired before the kill, ended after) is
///   "tainted": it holds a lock the new server never granted, so its writes count as
///   possibly stale and its refused write is no violation.
/// - **Fencing order**: per lock, over the whole run (every epoch), the tokens of
///   holders that kept their lock, ordered by start, rise strictly; no token is issued
///   twice, lost holders' included.
/// - **Stale write accepted**: an accepted fenced write whose token is lower than one
///   the resource had already accepted in the same epoch (that write acknowledged before
///   this one was sent); a write is placed in the epoch whose server applied it, and one
///   that may have reached either side of a restart is left out. **Refused while held**:
///   the resource refused the write of an untainted holder that kept its lock (a higher
///   token existed while it held the lock).
/// - **Counter (lost updates)**: per lock and epoch, the counter read at the epoch's
///   end is compared with I = the increments (acknowledged `SET`s before that reading)
///   of holders that kept their lock. Extra increments are fine and expected (a SIGKILLed
///   worker's last `SET`, a `SET` whose reply was lost, a tainted `SET`), so only a counter
///   *lower* than I can show lost updates. But a holder that lost its lease (SIGSTOP,
///   pause, restart) may legitimately write back a stale value, erasing at most the
///   increments applied between its `GET` and its `SET`; the allowance is the number of
///   counted increments whose `SET` window intersects such a stale [GET, SET] window.
///   Violation: counter < I - allowance. A killed worker cannot erase anything: it is
///   killed while it holds a valid lease (faults come one at a time), so its last `SET`
///   can only add.
fn check(cfg: &Config, records: &[Rec], events: &Events, last: &Snapshot) -> Report {
    let mut report = Report {
        acquisitions: records.len(),
        faults: events.injected.clone(),
        notes: events.notes.clone(),
        stops: events.stops.len(),
        config: format!(
            "{}{} procs x {} threads, {} s, {} locks, lease {:?}, seed {}, faults: {}",
            if cfg.no_exclusion { "CHECKER SELF-TEST (no exclusion between processes), " } else { "" },
            cfg.procs,
            cfg.threads,
            cfg.secs,
            cfg.locks,
            cfg.lease,
            cfg.seed,
            if cfg.faults.is_empty() {
                "none".into()
            } else {
                cfg.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
            }
        ),
        ..Report::default()
    };
    for kind in
        [OVERLAP, FENCING_ORDER, DUPLICATE_TOKEN, STALE_ACCEPTED, REFUSED_WHILE_HELD, LOST_UPDATE, RELEASED_AFTER_WIPE]
    {
        report.violations.insert(kind, 0);
    }
    report.per_lock = (0..cfg.locks).map(|k| records.iter().filter(|r| r.lock == k).count()).collect();
    report.max_wait = Duration::from_nanos(records.iter().map(|r| r.start.saturating_sub(r.asked)).max().unwrap_or(0));
    report.lost_leases = records.iter().filter(|r| r.lost()).count();
    report.stale_writes_refused = records.iter().filter(|r| r.write == WriteState::Refused).count();
    report.writes_after_is_lost = records.iter().filter(|r| r.lost_before_write).count();
    report.lost_in_stop = records
        .iter()
        .filter(|r| {
            r.lost() && events.stops.iter().any(|s| s.worker == r.worker && r.asked < s.cont_ns && r.end > s.stop_ns)
        })
        .count();

    // Epoch boundaries: restarts without persistence. A lock that `lock()` returned
    // after the new server was spawned came from it (an old grant would have had to
    // take longer than the 700 ms the server stays down to return).
    let wipes: Vec<&RestartEvent> = events.restarts.iter().filter(|r| !r.persistent).collect();
    report.epochs = wipes.len() + 1;
    let epoch_at = |t: u64| wipes.iter().filter(|w| w.spawn_ns <= t).count();
    // Acquired before a wipe (nothing is acquired while Redis is down, so a guard that
    // arrived before the new server was spawned came from the old one) and used after.
    let tainted = |r: &Rec| wipes.iter().any(|w| r.asked < w.kill_ns && r.start < w.spawn_ns && r.end >= w.kill_ns);
    // The epoch of the server that applied a write sent at `sent` and acknowledged at
    // `ack`: after every kill before it was sent, before every kill after the reply.
    let applied_in = |sent: u64, ack: u64| {
        let (after, maybe_after) =
            (wipes.iter().filter(|w| w.kill_ns <= sent).count(), wipes.iter().filter(|w| w.kill_ns < ack).count());
        (after == maybe_after).then_some(after)
    };

    for (persistent, survivors) in [(false, &mut report.survivors_restart), (true, &mut report.survivors_restart_aof)] {
        for r in records {
            if !events.restarts.iter().any(|e| e.persistent == persistent && r.start < e.kill_ns && r.end > e.up_ns) {
                continue;
            }
            survivors.total += 1;
            match (r.recovery, r.lost_at_end, r.unlock) {
                (Recovery::WatchdogLost, ..) | (Recovery::None, true, _) => survivors.watchdog += 1,
                (Recovery::NotHeld, ..) => survivors.is_held += 1,
                (Recovery::Unconfirmed, ..) => survivors.unconfirmed += 1,
                (_, _, Unlock::Lost) => survivors.at_release += 1,
                (_, _, Unlock::Ok) => survivors.kept += 1,
                (_, _, Unlock::Error) => survivors.unconfirmed += 1,
            }
        }
    }
    for r in records {
        if r.unlock == Unlock::Ok && wipes.iter().any(|w| r.start < w.kill_ns && r.end > w.up_ns) {
            report.violation(
                RELEASED_AFTER_WIPE,
                format!("{} released normally after a restart that forgot its lock", describe(r)),
            );
        }
    }

    for k in 0..cfg.locks {
        let mut mine: Vec<&Rec> = records.iter().filter(|r| r.lock == k).collect();
        mine.sort_by_key(|r| r.start);

        // Overlapping critical sections. Which holder came first is Redis's order (epoch,
        // then token), not the start timestamps: a worker stopped between Redis granting
        // it the lock and `lock()` returning starts *after* holders that came later.
        for (i, a) in mine.iter().enumerate() {
            for b in &mine[i + 1..] {
                if b.start >= a.end {
                    break;
                }
                let (first, second) =
                    if (epoch_at(b.start), b.token) < (epoch_at(a.start), a.token) { (b, a) } else { (a, b) };
                if first.lost() {
                    report.overlaps_after_loss += 1;
                } else {
                    report.violation(
                        OVERLAP,
                        format!("{} overlaps {} (the first holder kept its lock)", describe(second), describe(first)),
                    );
                }
            }
        }

        // Tokens: strictly rising among holders that kept the lock, across restarts
        // without persistence too; never reused.
        let kept: Vec<&Rec> = mine.iter().copied().filter(|r| !r.lost()).collect();
        for w in kept.windows(2) {
            if w[1].token <= w[0].token {
                let across = if epoch_at(w[0].start) == epoch_at(w[1].start) {
                    ""
                } else {
                    " (across a restart without persistence)"
                };
                report.violation(FENCING_ORDER, format!("{} started after {}{across}", describe(w[1]), describe(w[0])));
            }
        }
        for (i, w) in wipes.iter().enumerate() {
            let before = kept.iter().rfind(|r| r.start < w.spawn_ns);
            let after = kept.iter().find(|r| r.start >= w.spawn_ns && epoch_at(r.start) == i + 1);
            if let (Some(b), Some(a)) = (before, after) {
                report.rises_across_wipes.push(a.token as i128 - b.token as i128);
            }
        }
        let mut seen: HashMap<u64, &Rec> = HashMap::new();
        for r in &mine {
            if let Some(prev) = seen.insert(r.token, r) {
                report.violation(DUPLICATE_TOKEN, format!("{} and {}", describe(prev), describe(r)));
            }
        }

        for epoch in 0..=wipes.len() {
            // Accepted stale writes: was a higher token accepted before this write, by
            // the same incarnation of the resource?
            let mut accepted: Vec<&Rec> = mine
                .iter()
                .copied()
                .filter(|r| r.write == WriteState::Accepted && applied_in(r.wr_sent, r.wr_ack) == Some(epoch))
                .collect();
            accepted.sort_by_key(|r| r.wr_ack);
            let mut max_before = Vec::with_capacity(accepted.len());
            let mut running = 0;
            for r in &accepted {
                running = running.max(r.token);
                max_before.push(running);
            }
            for r in &accepted {
                let n = accepted.partition_point(|x| x.wr_ack < r.wr_sent);
                if n > 0 && max_before[n - 1] > r.token {
                    report.violation(
                        STALE_ACCEPTED,
                        format!("{} was accepted after token {} had been", describe(r), max_before[n - 1]),
                    );
                }
            }
        }
        for r in mine.iter().filter(|r| r.write == WriteState::Refused && !r.lost() && !tainted(r)) {
            report.violation(
                REFUSED_WHILE_HELD,
                format!("{} was refused (resource had seen token {})", describe(r), r.wr_top),
            );
        }
    }

    // Lost updates, per epoch: see the doc comment above.
    for epoch in 0..=wipes.len() {
        let snap = if epoch < wipes.len() { wipes[epoch].before.as_ref() } else { Some(last) };
        let Some(snap) = snap else { continue };
        let mut row = Vec::new();
        for k in 0..cfg.locks {
            let counted: Vec<&Rec> = records
                .iter()
                .filter(|r| {
                    r.lock == k
                        && !tainted(r)
                        && !r.lost()
                        && epoch_at(r.start) == epoch
                        && r.set == SetState::Acked
                        && r.set_ack < snap.sent_ns
                })
                .collect();
            let stale = records.iter().filter(|r| {
                r.lock == k && (r.lost() || tainted(r)) && matches!(r.set, SetState::Acked | SetState::Unknown)
            });
            let allowance: usize = stale
                .map(|s| counted.iter().filter(|c| c.set_sent < s.set_ack && c.set_ack > s.get_sent).count())
                .sum();
            let value = snap.values.get(k).copied().flatten().unwrap_or(0);
            if value < counted.len() as i64 - allowance as i64 {
                report.violation(
                    LOST_UPDATE,
                    format!(
                        "epoch {epoch} lock-{k}: counter {value} < {} increments by holders that kept the lock \
                         (allowance for stale writes {allowance})",
                        counted.len()
                    ),
                );
            }
            row.push((value, counted.len(), allowance));
        }
        report.counters.push(row);
    }
    report
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.workers;
        writeln!(f, "torture: {} ({:.1?})", self.config, self.elapsed)?;
        writeln!(
            f,
            "acquisitions checked: {} (per lock {:?}); max wait {:.2?}; lock timeouts {}, errors: lock {}, \
             in critical section {}, release {}",
            self.acquisitions,
            self.per_lock,
            self.max_wait,
            w.totals.lock_timeouts,
            w.totals.lock_errors,
            w.totals.cs_errors,
            w.totals.unlock_errors
        )?;
        let faults: Vec<String> = Fault::ALL.iter().map(|k| format!("{k} {}", self.injected(*k))).collect();
        writeln!(f, "faults injected: {}", faults.join(", "))?;
        writeln!(
            f,
            "lost leases reported: {} ({} in workers while SIGSTOPped, {} stops of a holder; client stats: {}); \
             overlaps after a lost lease (allowed): {}; stale fenced writes refused: {}; writes by guards already \
             is_lost(): {}",
            self.lost_leases,
            self.lost_in_stop,
            self.stops,
            w.stats_leases_lost,
            self.overlaps_after_loss,
            self.stale_writes_refused,
            self.writes_after_is_lost
        )?;
        for (name, s) in
            [("restart (no persistence)", &self.survivors_restart), ("restart-aof", &self.survivors_restart_aof)]
        {
            writeln!(
                f,
                "guards alive across {name}: {} -> marked lost by the watchdog {}, by is_held {}, at release {}, \
                 unconfirmed {}, kept {}",
                s.total, s.watchdog, s.is_held, s.at_release, s.unconfirmed, s.kept
            )?;
        }
        let rises = match (self.rises_across_wipes.iter().min(), self.rises_across_wipes.iter().max()) {
            (Some(lo), Some(hi)) => {
                format!("{} first tokens after one checked, rise {lo}..{hi}", self.rises_across_wipes.len())
            }
            _ => "no token on both sides of one".into(),
        };
        writeln!(
            f,
            "fencing order checked across {} epoch(s) (restarts without persistence lose the fence counter; \
             tokens must rise all the same: {rises}); the fenced resource and the counter, wiped by such a \
             restart, within each",
            self.epochs
        )?;
        for (e, row) in self.counters.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(k, (v, n, a))| format!("lock-{k} {v} vs {n} counted (drift {:+}, allowance {a})", v - *n as i64))
                .collect();
            writeln!(f, "counters, epoch {e}: {}", cells.join("; "))?;
        }
        writeln!(
            f,
            "workers: started {}, killed {}, finished {}, failed {}; notifier reconnects {}, renewals {}, handoffs {} \
             (without a round trip {})",
            w.started,
            w.killed,
            w.finished,
            w.failures.len(),
            w.notifier_reconnects,
            w.renewals,
            w.handoffs,
            w.local_handoffs
        )?;
        let v: Vec<String> = self.violations.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "violations: {} ({})", self.violation_count(), v.join(", "))?;
        for e in &self.examples {
            writeln!(f, "  {e}")?;
        }
        for e in &w.failures {
            writeln!(f, "  {e}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if let Some(dir) = &self.kept_dir {
            writeln!(f, "records, worker stderr and server log kept in {}", dir.display())?;
        }
        if !self.server_log_tail.is_empty() {
            writeln!(f, "redis-server log tail:\n{}", self.server_log_tail)?;
        }
        Ok(())
    }
}

fn main() {
    if std::env::args().any(|a| a == "--worker") {
        std::process::exit(worker_entry().unwrap_or_else(|| {
            eprintln!("--worker is for worker processes started by the torture run ({WORKER_ENV} is not set)");
            2
        }));
    }
    let cfg = match Config::from_args(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(&cfg) {
        Ok(report) => {
            println!("{report}");
            std::process::exit(if report.is_ok() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("torture: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            procs: 1,
            threads: 1,
            secs: 1,
            locks: 1,
            faults: vec![Fault::Restart],
            seed: 1,
            lease: Duration::from_secs(2),
            worker: WorkerCommand { program: PathBuf::new(), args: Vec::new() },
            no_exclusion: false,
        }
    }

    /// A clean critical section on lock 0 from `start` to `start + 100` (ns), with an
    /// acknowledged counter increment and an accepted fenced write.
    fn section(token: u64, start: u64) -> Rec {
        Rec {
            worker: 0,
            thread: 0,
            lock: 0,
            token,
            asked: start - 10,
            start,
            end: start + 100,
            get_sent: start + 10,
            set_sent: start + 20,
            set_ack: start + 30,
            set: SetState::Acked,
            wr_sent: start + 40,
            wr_ack: start + 50,
            write: WriteState::Accepted,
            wr_top: 0,
            lost_before_write: false,
            recovery: Recovery::None,
            lost_at_end: false,
            unlock: Unlock::Ok,
        }
    }

    /// Three sections, a restart without persistence, two more sections with `after`'s
    /// tokens (the fenced resource and the counter were wiped: the writes are accepted).
    fn history(after: [u64; 2]) -> Report {
        let mut records: Vec<Rec> = [(1, 1_000), (2, 2_000), (3, 3_000)].map(|(t, s)| section(t, s)).to_vec();
        records.extend([section(after[0], 5_000), section(after[1], 6_000)]);
        let events = Events {
            restarts: vec![RestartEvent {
                persistent: false,
                kill_ns: 4_000,
                spawn_ns: 4_500,
                up_ns: 4_600,
                before: Some(Snapshot { sent_ns: 3_900, values: vec![Some(3)] }),
            }],
            ..Events::default()
        };
        check(&config(), &records, &events, &Snapshot { sent_ns: 9_000, values: vec![Some(2)] })
    }

    #[test]
    fn tokens_that_keep_rising_across_a_restart_without_persistence_pass() {
        let report = history([4, 5]);
        assert_eq!(report.violation_count(), 0, "{report}");
    }

    #[test]
    fn a_fence_counter_reset_by_a_restart_without_persistence_is_a_violation() {
        // What INCRBY did when the restart forgot the counter: tokens start from 1 again.
        let report = history([1, 2]);
        assert_eq!(report.violations[FENCING_ORDER], 1, "the drop from 3 to 1:\n{report}");
        assert_eq!(report.violations[DUPLICATE_TOKEN], 2, "tokens 1 and 2 handed out twice:\n{report}");
    }
}
