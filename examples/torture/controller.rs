//! The run: the server, the fleet of workers, the faults injected into both, and the
//! records collected for the checker.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex_harness::{RedisServer, XorShift, wall_clock_ns};

use super::checker::check;
use super::config::{Config, Fault};
use super::fleet::Fleet;
use super::record::{self, Rec, Summary, Totals};
use super::report::{Report, WorkerOutcome};
use super::worker::{counter_key, lock_key};

/// When set, the run's directory (records, worker stderr, server log) is kept; it is
/// kept anyway when the run fails.
pub const KEEP_ENV: &str = "TORTURE_KEEP_DIR";
/// Connect, read and write timeout of the controller's own connections (faults are
/// injected while Redis may be away).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Each lock's counter (`None`: absent).
fn counters(server: &RedisServer, locks: usize) -> Result<Vec<Option<i64>>, String> {
    let mut con = server.try_admin_conn(ADMIN_TIMEOUT).map_err(|e| e.to_string())?;
    (0..locks).map(|k| redis::cmd("GET").arg(counter_key(k)).query(&mut con).map_err(|e| e.to_string())).collect()
}

/// A worker stopped with SIGSTOP while it held a lock.
#[derive(Debug, Clone)]
pub struct StopEvent {
    pub worker: usize,
    pub stop_ns: u64,
    pub cont_ns: u64,
}

/// Each lock's counter at a moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the reading started: every write acknowledged before is included.
    pub sent_ns: u64,
    pub values: Vec<Option<i64>>,
}

#[derive(Debug, Clone)]
pub struct RestartEvent {
    pub persistent: bool,
    pub kill_ns: u64,
    /// Just before the new server was started: nothing can be granted earlier. (It
    /// grants locks before the controller sees it answer, so `up_ns` is too late to
    /// mark an epoch.)
    pub spawn_ns: u64,
    pub up_ns: u64,
    /// Counters just before a restart without persistence.
    pub before: Option<Snapshot>,
}

#[derive(Debug, Default)]
pub struct Events {
    pub injected: BTreeMap<Fault, u32>,
    pub stops: Vec<StopEvent>,
    pub restarts: Vec<RestartEvent>,
    pub notes: Vec<String>,
}

struct Controller {
    cfg: Config,
    server: RedisServer,
    fleet: Fleet,
    rng: XorShift,
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
                    .try_admin_conn(ADMIN_TIMEOUT)
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
                    .try_admin_conn(ADMIN_TIMEOUT)
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
            let stop_ns = wall_clock_ns();
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
            self.events.stops.push(StopEvent { worker: target, stop_ns, cont_ns: wall_clock_ns() });
            self.note(format!(
                "SIGSTOP worker {target} (holding a lock), SIGCONT after {:.1?}",
                Duration::from_nanos(wall_clock_ns() - stop_ns)
            ));
            return true;
        }
        self.note("stop: found no worker holding a lock in 50 tries".into());
        false
    }

    /// The client id in lock `k`'s hash (`c`), if someone holds it.
    fn lock_client(&self, k: usize) -> Option<String> {
        let mut con = self.server.try_admin_conn(ADMIN_TIMEOUT).ok()?;
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
            let sent_ns = wall_clock_ns();
            Some(Snapshot { sent_ns, values: counters(&self.server, self.cfg.locks)? })
        };
        self.server.stop();
        let kill_ns = wall_clock_ns();
        if !persistent {
            // The same server without its data: a restart without persistence.
            let _ = fs::remove_dir_all(self.server.dir().join("appendonlydir"));
        }
        thread::sleep(Duration::from_millis(700));
        let spawn_ns = wall_clock_ns();
        self.server.try_restart().map_err(|e| e.to_string())?;
        let up_ns = wall_clock_ns();
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
    let server = RedisServer::builder()
        .dir(dir.path())
        .args(&["--appendonly", "yes", "--appendfsync", "always"])
        .try_start()
        .map_err(|e| e.to_string())?;
    let end_ns = wall_clock_ns() + cfg.secs * 1_000_000_000;
    let end = Instant::now() + Duration::from_secs(cfg.secs);
    let fleet = Fleet { cfg: cfg.clone(), dir: dir.path().to_owned(), url: server.url(), end_ns, procs: Vec::new() };
    let mut c = Controller {
        cfg: cfg.clone(),
        server,
        fleet,
        rng: XorShift::new(cfg.seed),
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
        let gap = Duration::from_millis(c.rng.between(500, 1500));
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
    let last = Snapshot { sent_ns: wall_clock_ns(), values: counters(&c.server, cfg.locks)? };

    let mut workers = WorkerOutcome::default();
    let mut records = Vec::new();
    for p in &c.fleet.procs {
        workers.started += 1;
        let (recs, unparsed) = record::read_rows::<Rec>(&p.rec);
        records.extend(recs);
        workers.unparsed += unparsed;
        let summary = record::read_rows::<Summary>(&record::summary_path(&p.rec)).0.pop();
        if let Some(s) = &summary {
            workers.totals.add(&Totals {
                acquisitions: s.acquisitions,
                lock_timeouts: s.lock_timeouts,
                lock_errors: s.lock_errors,
                cs_errors: s.cs_errors,
                unlock_errors: s.unlock_errors,
            });
            workers.notifier_reconnects += s.notifier_reconnects;
            workers.stats_leases_lost += s.leases_lost;
            workers.renewals += s.renewals;
            workers.handoffs += s.handoffs;
            workers.local_handoffs += s.local_handoffs;
            workers.grants += s.grants;
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
        report.server_log_tail = c.server.log_tail(30);
    }
    drop(c);
    // A self-test fails on purpose: nothing to look into.
    if (!report.is_ok() && !cfg.no_exclusion) || std::env::var_os(KEEP_ENV).is_some() {
        // Records, worker stderr and the server log, for a post-mortem.
        report.kept_dir = Some(dir.keep());
    }
    Ok(report)
}
