//! A worker process: threads that lock, do a critical section that only mutual
//! exclusion keeps correct, and write a record of it. The kinds of lock are in
//! `locks.rs`.

mod locks;

use std::fmt;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::LockClient;
use redis_mutex_harness::{XorShift, wall_clock_ns};

use super::config::LockKind;
use super::record::{self, Rec, Recovery, Role, SetState, Summary, Totals, Unlock, WriteState};
use locks::{Guard, Handle};

/// Set (to the worker's parameters) in the environment of a worker process.
pub const WORKER_ENV: &str = "REDIS_MUTEX_TORTURE_WORKER";
pub const KEY_PREFIX: &str = "torture";
/// Separates the fields of [`WORKER_ENV`].
const SEP: char = '\u{1f}';
/// Separates the parts of a [`LockTarget`] inside its field.
const PART: char = '\u{1e}';

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

pub fn lock_key(k: usize) -> String {
    format!("{KEY_PREFIX}:{{lock-{k}}}")
}

pub fn counter_key(k: usize) -> String {
    format!("torture-data:{{lock-{k}}}:counter")
}

fn resource_key(k: usize) -> String {
    format!("torture-data:{{lock-{k}}}:resource")
}

/// Where a worker leaves the client id of a read-write lock's or semaphore's owner token
/// (on the data server, for a few leases): the controller's way to tell which worker
/// holds one of many shares (the `stop` fault).
pub fn owner_key(token: &str) -> String {
    format!("torture-data:owner:{token}")
}

/// Where a worker's client finds the locks.
#[derive(Debug, Clone)]
pub enum LockTarget {
    /// One server.
    Url(String),
    /// The master the Sentinels at `sentinels` monitor as `master`.
    Sentinel { master: String, sentinels: Vec<String> },
    /// The cluster of which `seeds` are nodes.
    Cluster { seeds: Vec<String> },
    /// Independent masters (Redlock).
    Redlock { masters: Vec<String> },
}

impl LockTarget {
    fn encode(&self) -> String {
        let parts: Vec<&str> = match self {
            LockTarget::Url(url) => vec!["url", url],
            LockTarget::Sentinel { master, sentinels } => {
                ["sentinel", master.as_str()].into_iter().chain(sentinels.iter().map(String::as_str)).collect()
            }
            LockTarget::Cluster { seeds } => {
                std::iter::once("cluster").chain(seeds.iter().map(String::as_str)).collect()
            }
            LockTarget::Redlock { masters } => {
                std::iter::once("redlock").chain(masters.iter().map(String::as_str)).collect()
            }
        };
        parts.join(&PART.to_string())
    }

    fn decode(s: &str) -> Result<LockTarget, String> {
        let parts: Vec<&str> = s.split(PART).collect();
        match parts.as_slice() {
            ["url", url] => Ok(LockTarget::Url((*url).to_owned())),
            ["sentinel", master, sentinels @ ..] if !sentinels.is_empty() => Ok(LockTarget::Sentinel {
                master: (*master).to_owned(),
                sentinels: sentinels.iter().map(|u| (*u).to_owned()).collect(),
            }),
            ["cluster", seeds @ ..] if !seeds.is_empty() => {
                Ok(LockTarget::Cluster { seeds: seeds.iter().map(|u| (*u).to_owned()).collect() })
            }
            ["redlock", masters @ ..] if !masters.is_empty() => {
                Ok(LockTarget::Redlock { masters: masters.iter().map(|u| (*u).to_owned()).collect() })
            }
            _ => Err(format!("malformed lock target in {WORKER_ENV}")),
        }
    }

    /// A client for the locks. A Sentinel, cluster or Redlock client is built checked
    /// (it must find the master, the slot map, a majority of the masters), and retried
    /// until `end`: a replacement worker may start while the master is down (or a
    /// cluster node it asks, or masters are frozen). On Redlock, `redlock_max_lease` is
    /// the run's `lease`: a master killed and started again sits out only that long.
    fn client(&self, lease: Duration, end: Instant) -> Result<LockClient, String> {
        let builder = LockClient::builder().key_prefix(KEY_PREFIX);
        let build = || match self {
            LockTarget::Url(url) => builder.clone().build_unchecked(url),
            LockTarget::Sentinel { master, sentinels } => builder.clone().build_sentinel(master, sentinels),
            LockTarget::Cluster { seeds } => builder.clone().build_cluster(seeds),
            LockTarget::Redlock { masters } => builder.clone().redlock_max_lease(lease).build_redlock(masters),
        };
        if let LockTarget::Url(_) = self {
            return build().map_err(|e| format!("cannot build the client: {e}"));
        }
        loop {
            match build() {
                Err(e) if Instant::now() < end => {
                    eprintln!("[{}] no master yet: {e}", wall_clock_ns());
                    thread::sleep(Duration::from_millis(200));
                }
                built => break built,
            }
        }
        .map_err(|e| format!("cannot build the client: {e}"))
    }
}

#[derive(Clone)]
pub struct WorkerSpec {
    pub idx: usize,
    pub target: LockTarget,
    /// The server of the counters and the fenced resource.
    pub data_url: String,
    pub threads: usize,
    pub locks: usize,
    pub lock: LockKind,
    pub permits: u32,
    pub reads: u32,
    pub lease_ms: u64,
    pub end_ns: u64,
    pub seed: u64,
    pub no_exclusion: bool,
    pub out: PathBuf,
}

impl WorkerSpec {
    pub fn encode(&self) -> String {
        [
            self.idx.to_string(),
            self.target.encode(),
            self.data_url.clone(),
            self.threads.to_string(),
            self.locks.to_string(),
            self.lock.name().to_owned(),
            self.permits.to_string(),
            self.reads.to_string(),
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
        let [idx, target, data_url, threads, locks, lock, permits, reads, lease_ms, end_ns, seed, no_exclusion, out] =
            f.as_slice()
        else {
            return Err(format!("malformed {WORKER_ENV}"));
        };
        let lock = [LockKind::Mutex, LockKind::RwLock, LockKind::Semaphore]
            .into_iter()
            .find(|k| k.name() == *lock)
            .ok_or_else(|| format!("malformed {WORKER_ENV}: lock kind {lock:?}"))?;
        let n = |v: &str| v.parse::<u64>().map_err(|e| format!("malformed {WORKER_ENV}: {e}"));
        Ok(WorkerSpec {
            idx: n(idx)? as usize,
            target: LockTarget::decode(target)?,
            data_url: (*data_url).to_owned(),
            threads: n(threads)? as usize,
            locks: n(locks)? as usize,
            lock,
            permits: n(permits)? as u32,
            reads: n(reads)? as u32,
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
    locks: Vec<Handle>,
    /// This worker's client id (what [`owner_key`] maps tokens to).
    client_id: String,
    redis: redis::Client,
    fenced: redis::Script,
    lease: Duration,
    end: Instant,
    out: StdMutex<File>,
}

impl Ctx {
    fn record(&self, rec: &Rec) {
        // One unbuffered write per row: a SIGKILL loses at most the row being formed.
        let _ = record::write_row(&mut self.out.lock().unwrap_or_else(|e| e.into_inner()), rec);
    }
}

/// One thread's state.
struct ThreadCtx {
    thread: usize,
    rng: XorShift,
    con: Option<redis::Connection>,
    totals: Totals,
    logged: u32,
}

impl ThreadCtx {
    fn log(&mut self, worker: usize, what: &str, e: &dyn fmt::Display) {
        // Enough to diagnose; errors during an outage come by the hundred.
        if self.logged < 20 {
            self.logged += 1;
            eprintln!("[{}] worker {worker} thread {}: {what}: {e}", wall_clock_ns(), self.thread);
        }
    }
}

/// Set to a level (`debug`, `trace`) in the controller's environment, the crate's log
/// at that level goes to each worker's stderr (`worker-N.stderr`), each line with the
/// wall clock in ns (the records' clock): for a post-mortem of a kept run.
pub const LOG_ENV: &str = "TORTURE_LOG";

/// Writes the crate's log records to stderr, stamped with the wall clock in ns.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("redis_mutex")
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {} {:?} {}", wall_clock_ns(), r.level(), thread::current().name(), r.args());
        }
    }

    fn flush(&self) {}
}

fn worker_main(spec: &WorkerSpec) -> Result<(), String> {
    if let Some(level) = std::env::var(LOG_ENV).ok().and_then(|l| l.parse::<log::LevelFilter>().ok())
        && log::set_logger(&StderrLog).is_ok()
    {
        log::set_max_level(level);
    }
    let until_end = Duration::from_nanos(spec.end_ns.saturating_sub(wall_clock_ns()));
    // Unchecked on one server: a replacement worker may start while Redis is briefly away.
    let lease = Duration::from_millis(spec.lease_ms);
    let client = spec.target.client(lease, Instant::now() + until_end)?;
    let out = File::create(&spec.out).map_err(|e| format!("cannot create {}: {e}", spec.out.display()))?;
    let ctx = Arc::new(Ctx {
        locks: (0..spec.locks)
            .map(|k| {
                let name =
                    if spec.no_exclusion { format!("{}-private-{}", lock_name(k), spec.idx) } else { lock_name(k) };
                Handle::new(&client, spec.lock, &name, lease, spec.permits)
            })
            .collect(),
        client_id: client.id().to_string(),
        redis: redis::Client::open(spec.data_url.as_str()).map_err(|e| e.to_string())?,
        fenced: redis::Script::new(FENCED_WRITE),
        lease,
        end: Instant::now() + until_end,
        out: StdMutex::new(out),
        spec: spec.clone(),
    });
    let id_path = record::id_path(&spec.out);
    fs::write(&id_path, client.id()).map_err(|e| format!("cannot write {}: {e}", id_path.display()))?;
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
    let summary = Summary {
        acquisitions: totals.acquisitions,
        lock_timeouts: totals.lock_timeouts,
        lock_errors: totals.lock_errors,
        cs_errors: totals.cs_errors,
        unlock_errors: totals.unlock_errors,
        notifier_reconnects: s.notifier_reconnects,
        leases_lost: s.leases_lost,
        renewals: s.renewals,
        handoffs: s.handoffs,
        local_handoffs: s.local_handoffs,
        grants: s.grants,
    };
    let path = record::summary_path(&spec.out);
    File::create(&path)
        .and_then(|mut f| record::write_row(&mut f, &summary))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn thread_main(ctx: &Ctx, thread: usize, seed: u64) -> Totals {
    let mut tc = ThreadCtx { thread, rng: XorShift::new(seed), con: None, totals: Totals::default(), logged: 0 };
    let mut backoff = Duration::from_millis(20);
    while Instant::now() < ctx.end {
        let k = tc.rng.below(ctx.locks.len() as u64) as usize;
        let role = match ctx.spec.lock {
            LockKind::Mutex => Role::Mutex,
            LockKind::RwLock if tc.rng.below(100) < u64::from(ctx.spec.reads) => Role::Reader,
            LockKind::RwLock => Role::Writer,
            LockKind::Semaphore => Role::Permit,
        };
        let asked = wall_clock_ns();
        let deadline = (Instant::now() + Duration::from_secs(3)).min(ctx.end);
        match ctx.locks[k].acquire_until(role, deadline) {
            Ok(Some(guard)) => {
                backoff = Duration::from_millis(20);
                tc.totals.acquisitions += 1;
                let rec = critical_section(ctx, &mut tc, k, guard, asked);
                ctx.record(&rec);
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
    guard: &Guard,
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
fn recover(ctx: &Ctx, tc: &mut ThreadCtx, guard: &Guard) -> Recovery {
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

fn ask(guard: &Guard) -> Recovery {
    match guard.is_held() {
        Ok(true) => Recovery::Held,
        Ok(false) => Recovery::NotHeld,
        Err(_) => Recovery::Unconfirmed,
    }
}

/// The critical section: a mutex's or a writer's read-modify-write of the lock's
/// counter (and a mutex's fenced write); a reader's or a permit's read of the counter
/// and a pause as long (many of them hold at once).
fn critical_section(ctx: &Ctx, tc: &mut ThreadCtx, k: usize, guard: Guard, asked: u64) -> Rec {
    let mut rec = Rec {
        worker: ctx.spec.idx,
        thread: tc.thread,
        lock: k,
        role: guard.role(),
        token: guard.fencing_token(),
        asked,
        start: wall_clock_ns(),
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
        released: 0,
    };
    let counter = counter_key(k);
    if rec.role != Role::Mutex {
        announce_owner(ctx, tc, &guard);
    }

    // A read-modify-write that only mutual exclusion keeps correct.
    rec.get_sent = wall_clock_ns();
    let read = guarded(ctx, tc, &guard, &mut rec, |c| redis::cmd("GET").arg(&counter).query::<Option<i64>>(c));
    if matches!(rec.role, Role::Reader | Role::Permit) {
        // Shares: no write to the counter, whose update only exclusion keeps correct.
        thread::sleep(Duration::from_micros(500 + tc.rng.below(4000)));
    } else if let Some(value) = read {
        thread::sleep(Duration::from_micros(500 + tc.rng.below(4000)));
        rec.set_sent = wall_clock_ns();
        rec.set = SetState::Unknown;
        let next = value.unwrap_or(0) + 1;
        if guarded(ctx, tc, &guard, &mut rec, |c| redis::cmd("SET").arg(&counter).arg(next).query::<()>(c)).is_some() {
            rec.set = SetState::Acked;
        }
        rec.set_ack = wall_clock_ns();
    }

    // The fenced write is made even when the guard already knows it is lost: the
    // resource, not the holder, must refuse a stale token. (A mutex's: the other kinds
    // have no token.)
    if rec.role == Role::Mutex && matches!(rec.recovery, Recovery::None | Recovery::Held) {
        rec.lost_before_write = guard.is_lost();
        let (resource, token) = (resource_key(k), rec.token);
        let data = format!("{}:{}:{}", ctx.spec.idx, tc.thread, rec.start);
        rec.wr_sent = wall_clock_ns();
        rec.write = WriteState::Unknown;
        let reply = guarded(ctx, tc, &guard, &mut rec, |c| {
            ctx.fenced.key(&resource).arg(token).arg(&data).invoke::<(i64, u64)>(c)
        });
        rec.wr_ack = wall_clock_ns();
        if let Some((accepted, top)) = reply {
            rec.write = if accepted == 1 { WriteState::Accepted } else { WriteState::Refused };
            rec.wr_top = top;
        }
    }

    rec.end = wall_clock_ns();
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
    rec.released = wall_clock_ns();
    rec
}

/// Leaves this worker's client id under the guard's owner token on the data server, for
/// a few leases (errors ignored: the `stop` fault then only finds another holder).
fn announce_owner(ctx: &Ctx, tc: &mut ThreadCtx, guard: &Guard) {
    let ttl = ctx.lease.as_millis() as u64 * 5;
    let set = |c: &mut redis::Connection| {
        redis::cmd("SET").arg(owner_key(guard.token())).arg(&ctx.client_id).arg("PX").arg(ttl).query::<()>(c)
    };
    if connection(ctx, &mut tc.con).and_then(set).is_err() {
        tc.con = None;
    }
}
