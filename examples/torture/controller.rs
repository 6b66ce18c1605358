//! The run: the server, the fleet of workers, the faults injected into both, and the
//! records collected for the checker. The cluster topology's side is in `cluster.rs`,
//! Redlock's in `redlock.rs`.

mod cluster;
mod holders;
mod redlock;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex_harness::{Cluster, Masters, RedisServer, SentinelGroup, XorShift, process_stopped, wall_clock_ns};

use super::checker::check;
use super::config::{Config, Fault, Topology};
use super::fleet::Fleet;
use super::record::{self, Rec, Summary, Totals};
use super::report::{Report, WorkerOutcome};
use super::worker::{LockTarget, counter_key};

/// When set, the run's directory (records, worker stderr, server log) is kept; it is
/// kept anyway when the run fails.
pub const KEEP_ENV: &str = "TORTURE_KEEP_DIR";
/// Connect, read and write timeout of the controller's own connections (faults are
/// injected while Redis may be away).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The name the Sentinels monitor the master under (`--topology sentinel`).
const MASTER_NAME: &str = "torture";
/// How long a failover gets to complete (the new master named by every Sentinel, the
/// old one a replica of it in sync): Sentinel turns a demoted master that still says
/// it is one into a replica only after about 10 s.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

/// Each lock's counter (`None`: absent).
fn counters(server: &RedisServer, locks: usize) -> Result<Vec<Option<i64>>, String> {
    let mut con = server.try_admin_conn(ADMIN_TIMEOUT).map_err(|e| e.to_string())?;
    (0..locks).map(|k| redis::cmd("GET").arg(counter_key(k)).query(&mut con).map_err(|e| e.to_string())).collect()
}

/// `CLIENT KILL TYPE kind` (this connection spared), or with `sentinels_spared` each
/// such connection but the Sentinels' (named `sentinel-...`): a Sentinel whose link
/// to the master is cut counts the time since the master's last answer, and with
/// down-after as short as its PING period (1 s) that fails the master over at once.
fn kill_clients(con: &mut redis::Connection, kind: &str, sentinels_spared: bool) -> redis::RedisResult<i64> {
    if !sentinels_spared {
        // SKIPME (default yes) spares this admin connection.
        return redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind).query(con);
    }
    let me: i64 = redis::cmd("CLIENT").arg("ID").query(con)?;
    let list: String = redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg(kind).query(con)?;
    let mut killed = 0;
    for line in list.lines() {
        let field = |name: &str| line.split(' ').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
        let Some(id) = field("id").and_then(|id| id.parse::<i64>().ok()) else { continue };
        if id != me && !field("name").is_some_and(|n| n.starts_with("sentinel-")) {
            killed += redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query::<i64>(con)?;
        }
    }
    Ok(killed)
}

/// The servers of a run.
enum Servers {
    /// One server: the locks, the counters and the fenced resource.
    Single(RedisServer),
    /// The locks on a Sentinel group's master; the counters and the fenced resource on
    /// `data`, which no fault touches. The protected resource is not the lock service
    /// (as in production): the checks on it stay whole across failovers, where a copy
    /// on the master would lose its last writes to asynchronous replication, and a
    /// worker would have to follow the master for its data too.
    Sentinel { group: Box<SentinelGroup>, data: RedisServer },
    /// The locks on a cluster (three masters with a replica each), lock `k`'s slot
    /// `slots[k]` (placed on master `k % 3` at the start); the counters and the fenced
    /// resource on `data`, as for Sentinel.
    Cluster { cluster: Box<Cluster>, slots: Vec<u16>, data: RedisServer },
    /// The locks on five independent masters (Redlock); the counters and the fenced
    /// resource on `data`, as for Sentinel.
    Redlock { masters: Masters, data: RedisServer },
}

impl Servers {
    /// Starts the servers of `topology` in `dir`, where they keep their logs; `locks`
    /// lock names.
    fn start(topology: Topology, dir: &Path, locks: usize) -> Result<Servers, String> {
        let data = || {
            let data_dir = dir.join("data");
            fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            RedisServer::builder().dir(data_dir).try_start().map_err(|e| e.to_string())
        };
        match topology {
            // AOF, `appendfsync always`: what restart-aof restarts from.
            Topology::Single => RedisServer::builder()
                .dir(dir)
                .args(&["--appendonly", "yes", "--appendfsync", "always"])
                .try_start()
                .map(Servers::Single)
                .map_err(|e| e.to_string()),
            Topology::Sentinel => {
                let data = data()?;
                // Without persistence: a killed master's data matters only until the
                // Sentinels make it a replica of the new one, which resyncs it. (The
                // harness panics, with the logs, when the group does not form.)
                let group = SentinelGroup::start_with(MASTER_NAME, 1, 3, &RedisServer::builder().dir(dir));
                Ok(Servers::Sentinel { group: Box::new(group), data })
            }
            Topology::Cluster => {
                let data = data()?;
                // Without persistence, as for Sentinel (the harness panics, with the
                // logs, when the cluster does not form).
                let (cluster, slots) = cluster::start(dir, locks)?;
                Ok(Servers::Cluster { cluster: Box::new(cluster), slots, data })
            }
            Topology::Redlock => {
                let data = data()?;
                // Without persistence (the harness panics, with the log, when a master
                // does not start).
                Ok(Servers::Redlock { masters: redlock::start(dir), data })
            }
        }
    }

    /// The server the locks are on now (`None`: no Sentinel names one that the group
    /// started; on a cluster, each lock's slot has its own).
    fn locks(&self) -> Option<&RedisServer> {
        match self {
            Servers::Single(server) => Some(server),
            Servers::Sentinel { group, .. } => group.current_master(),
            Servers::Cluster { .. } | Servers::Redlock { .. } => None,
        }
    }

    /// The server of the counters and the fenced resource.
    fn data(&self) -> &RedisServer {
        match self {
            Servers::Single(server)
            | Servers::Sentinel { data: server, .. }
            | Servers::Cluster { data: server, .. }
            | Servers::Redlock { data: server, .. } => server,
        }
    }

    fn target(&self) -> LockTarget {
        match self {
            Servers::Single(server) => LockTarget::Url(server.url()),
            Servers::Sentinel { group, .. } => {
                LockTarget::Sentinel { master: MASTER_NAME.into(), sentinels: group.sentinel_urls() }
            }
            Servers::Cluster { cluster, .. } => LockTarget::Cluster { seeds: cluster.urls() },
            Servers::Redlock { masters, .. } => LockTarget::Redlock { masters: masters.urls() },
        }
    }

    /// The last lines of every server's log, for a failed run.
    fn log_tail(&self, lines: usize) -> String {
        match self {
            Servers::Single(server) => server.log_tail(lines),
            Servers::Sentinel { group, data } => std::iter::once(group.master())
                .chain(group.replicas())
                .chain(group.sentinels())
                .chain([data])
                .map(|s| format!("---- port {} ----\n{}", s.port(), s.log_tail(lines / 2)))
                .collect::<Vec<_>>()
                .join("\n"),
            Servers::Cluster { cluster, data, .. } => cluster
                .nodes()
                .iter()
                .chain([data])
                .map(|s| format!("---- port {} ----\n{}", s.port(), s.log_tail(lines / 2)))
                .collect::<Vec<_>>()
                .join("\n"),
            Servers::Redlock { masters, data } => masters
                .iter()
                .chain([data])
                .map(|s| format!("---- port {} ----\n{}", s.port(), s.log_tail(lines / 2)))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// What each Sentinel of `group` names as master.
fn named_by_each(group: &SentinelGroup) -> Vec<Result<u16, String>> {
    let ask = |s: &RedisServer| {
        let mut con = s.try_admin_conn(ADMIN_TIMEOUT)?;
        redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER_NAME).query::<(String, u16)>(&mut con)
    };
    group.sentinels().iter().map(|s| ask(s).map(|(_, port)| port).map_err(|e| e.to_string())).collect()
}

/// The port every Sentinel of `group` names as master, when they agree.
fn named_by_all(group: &SentinelGroup) -> Option<u16> {
    let each = named_by_each(group);
    let first = each.first()?.clone().ok()?;
    each.iter().all(|p| p.as_ref() == Ok(&first)).then_some(first)
}

/// The master or replica of `group` on `port`.
fn data_server_mut(group: &mut SentinelGroup, port: u16) -> Option<&mut RedisServer> {
    if group.master().port() == port {
        return Some(group.master_mut());
    }
    group.replicas_mut().iter_mut().find(|r| r.port() == port)
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

/// What started a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverKind {
    /// The `failover` fault (`SENTINEL FAILOVER`), or `cluster-failover` (`CLUSTER
    /// FAILOVER` on a replica).
    Graceful,
    /// The `failover-kill` or `cluster-failover-kill` fault: SIGKILL of the master.
    Kill,
    /// No fault: the Sentinels (or the cluster's nodes) failed the master over on their
    /// own (it missed their PINGs for longer than they wait: a starved machine, a cut
    /// link, a master they had just switched to).
    Unplanned,
}

impl FailoverKind {
    pub const ALL: [FailoverKind; 3] = [FailoverKind::Graceful, FailoverKind::Kill, FailoverKind::Unplanned];
}

impl fmt::Display for FailoverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailoverKind::Graceful => "failover",
            FailoverKind::Kill => "failover-kill",
            FailoverKind::Unplanned => "unplanned failover",
        })
    }
}

/// A failover of the Sentinel group's master, or of a cluster's master.
#[derive(Debug, Clone)]
pub struct FailoverEvent {
    pub kind: FailoverKind,
    /// The old master's port and the new one's.
    pub from: u16,
    pub to: u16,
    /// Just before the fault; for an unplanned failover, the last time the controller
    /// saw the Sentinels name the old master.
    pub fault_ns: u64,
    /// Every Sentinel named the new master.
    pub named_ns: u64,
    /// The group was whole again: the old master a replica of the new one, in sync.
    /// Until then two servers may take writes as master (the old one for a while after
    /// `SENTINEL FAILOVER`).
    pub settled_ns: u64,
    /// The locks on the master that failed over (every lock on a Sentinel group; on a
    /// cluster, those whose slot it served).
    pub locks: Vec<usize>,
}

/// A slot moved from one cluster master to another (the `reshard` fault).
#[derive(Debug, Clone)]
pub struct ReshardEvent {
    pub slot: u16,
    /// The locks in it.
    pub locks: Vec<usize>,
    /// The old master's port and the new one's.
    pub from: u16,
    pub to: u16,
    /// Whether the lock was held, and waited for, when the move began.
    pub held: bool,
    pub waited: bool,
    /// Keys migrated (the lock's hash and its fencing counter, when they exist).
    pub moved: usize,
    /// `IMPORTING` set; every master told the slot's new owner.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A fault on Redlock masters (`master-kill`, `master-stop`, `majority-stop`).
#[derive(Debug, Clone)]
pub struct MasterEvent {
    pub fault: Fault,
    /// The masters' ports.
    pub masters: Vec<u16>,
    /// The kill or SIGSTOP.
    pub start_ns: u64,
    /// Up again (empty) after a kill, SIGCONT after a stop.
    pub end_ns: u64,
}

#[derive(Debug, Default)]
pub struct Events {
    pub injected: BTreeMap<Fault, u32>,
    pub stops: Vec<StopEvent>,
    pub restarts: Vec<RestartEvent>,
    pub failovers: Vec<FailoverEvent>,
    pub reshards: Vec<ReshardEvent>,
    pub masters: Vec<MasterEvent>,
    pub notes: Vec<String>,
}

struct Controller {
    cfg: Config,
    servers: Servers,
    fleet: Fleet,
    rng: XorShift,
    events: Events,
    end: Instant,
    /// No fault starts after this (their consequences are over before the end).
    faults_until: Instant,
    t0: Instant,
    /// On a Sentinel group: the master the Sentinels named when the controller last
    /// looked, and when.
    master_seen: Option<(u16, u64)>,
    /// On a cluster: the port of the master serving each lock's slot when the
    /// controller last looked, and when.
    owners_seen: Option<(Vec<u16>, u64)>,
    /// On a cluster: when each node that was a replica was last promoted.
    elections: BTreeMap<u16, Instant>,
}

impl Controller {
    fn note(&mut self, what: String) {
        self.events.notes.push(format!("t={:.1}s {what}", self.t0.elapsed().as_secs_f64()));
    }

    /// Injects `fault`; `false` when it could not be (no holder to stop, a failover
    /// the Sentinels did not carry out, ...).
    fn inject(&mut self, fault: Fault) -> Result<bool, String> {
        let done = match fault {
            Fault::Kill => self.kill_worker()?,
            Fault::Stop => self.stop_holder(),
            Fault::ClientKillNormal | Fault::ClientKillPubsub if self.cfg.topology == Topology::Cluster => {
                self.cluster_kill_clients(if fault == Fault::ClientKillNormal { "normal" } else { "pubsub" })?
            }
            Fault::ClientKillNormal | Fault::ClientKillPubsub => {
                let kind = if fault == Fault::ClientKillNormal { "normal" } else { "pubsub" };
                let sentinels_spared = self.cfg.topology == Topology::Sentinel;
                // On Redlock, one master's: each has its own connections and subscribers.
                let server = match self.cfg.topology {
                    Topology::Redlock => self.random_master().and_then(|i| self.master(i))?,
                    _ => self.lock_server()?,
                };
                let port = server.port();
                let killed =
                    server.try_admin_conn(ADMIN_TIMEOUT).and_then(|mut c| kill_clients(&mut c, kind, sentinels_spared));
                match killed {
                    Ok(n) => {
                        self.note(format!("CLIENT KILL TYPE {kind} on port {port}: {n} connections"));
                        true
                    }
                    Err(e) => {
                        self.note(format!("CLIENT KILL TYPE {kind} failed: {e}"));
                        false
                    }
                }
            }
            Fault::Pause => {
                // On a Sentinel group, shorter than the Sentinels wait (1 s): a master
                // that answers no PING for longer is failed over, which the failover
                // faults are for. (`WRITE` mode is no way around it: a Sentinel's PING
                // waits behind its paused `PUBLISH` on the same connection.) On a
                // cluster, the master of a lock's slot: a pause holds no PING of the
                // cluster bus, and 2 s is well under the node timeout (5 s) anyway.
                // On Redlock, one master (a minority).
                let ms = if self.cfg.topology == Topology::Sentinel { 700 } else { 2000 };
                let server = match self.cfg.topology {
                    Topology::Cluster => self.lock_master()?,
                    Topology::Redlock => self.random_master().and_then(|i| self.master(i))?,
                    Topology::Single | Topology::Sentinel => self.lock_server()?,
                };
                let port = server.port();
                let ok = server
                    .try_admin_conn(ADMIN_TIMEOUT)
                    .and_then(|mut c| redis::cmd("CLIENT").arg("PAUSE").arg(ms).query::<()>(&mut c))
                    .is_ok();
                self.note(format!("CLIENT PAUSE {ms} on port {port} (ok: {ok})"));
                thread::sleep(Duration::from_millis(ms + 100));
                ok
            }
            Fault::Restart | Fault::RestartAof => self.restart(fault == Fault::RestartAof)?,
            Fault::Failover => self.failover(FailoverKind::Graceful)?,
            Fault::FailoverKill => self.failover(FailoverKind::Kill)?,
            Fault::ClusterFailover => self.cluster_failover(FailoverKind::Graceful)?,
            Fault::ClusterFailoverKill => self.cluster_failover(FailoverKind::Kill)?,
            Fault::Reshard => self.reshard()?,
            Fault::MasterKill => self.master_kill()?,
            Fault::MasterStop | Fault::MajorityStop => self.freeze_masters(fault)?,
        };
        if done {
            *self.events.injected.entry(fault).or_default() += 1;
        }
        Ok(done)
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
    /// The stop counts only when it held: every thread of the worker seen stopped
    /// (`/proc`) from just after the signal until the SIGCONT, looked at every 50 ms. One
    /// that did not take, or that ended early, is noted and not counted: the checker
    /// would take the sections the worker ran meanwhile for ones frozen past their lease.
    fn stop_holder(&mut self) -> bool {
        for _ in 0..50 {
            let Some(target) = self.find_holder() else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            let pid = self.fleet.pid(target);
            let signalled = self.fleet.signal(target, "-STOP");
            if !signalled || !until_stopped(pid, Duration::from_secs(1)) {
                self.note(format!("stop: worker {target} (pid {pid}) did not stop (kill said {signalled}); again"));
                self.fleet.signal(target, "-CONT");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            let stop_ns = wall_clock_ns();
            let held = stayed_stopped(pid, Duration::from_millis(50));
            let client = self.fleet.client_id(target);
            let holds = client.is_some_and(|c| (0..self.cfg.locks).any(|k| self.lock_clients(k).contains(&c)));
            if !holds {
                // It released between our look and the signal; try again.
                self.fleet.signal(target, "-CONT");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            let held = held && stayed_stopped(pid, self.cfg.lease * 3 / 2 + Duration::from_secs(1));
            let cont_ns = wall_clock_ns();
            self.fleet.signal(target, "-CONT");
            let frozen = Duration::from_nanos(cont_ns - stop_ns);
            if !held {
                // Not counted (no event): the checker would hold the worker's sections
                // meanwhile to a stop that did not happen.
                self.note(format!(
                    "stop: worker {target} (pid {pid}) ran again before its SIGCONT, {frozen:.1?} after its SIGSTOP; \
                     not counted"
                ));
                return false;
            }
            self.events.stops.push(StopEvent { worker: target, stop_ns, cont_ns });
            self.note(format!("SIGSTOP worker {target} (holding a lock), SIGCONT after {frozen:.1?}"));
            return true;
        }
        self.note("stop: found no worker holding a lock in 50 tries".into());
        false
    }

    /// The server the locks are on now.
    fn lock_server(&self) -> Result<&RedisServer, String> {
        self.servers.locks().ok_or_else(|| "no Sentinel names a master the run started".to_string())
    }

    fn find_holder(&mut self) -> Option<usize> {
        let running = self.fleet.running();
        let first = self.rng.below(self.cfg.locks as u64) as usize;
        for k in (0..self.cfg.locks).map(|j| (first + j) % self.cfg.locks) {
            let holders = self.lock_clients(k);
            for &i in &running {
                if self.fleet.client_id(i).is_some_and(|c| holders.contains(&c)) {
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
            Some(Snapshot { sent_ns, values: counters(self.servers.data(), self.cfg.locks)? })
        };
        let Servers::Single(server) = &mut self.servers else {
            return Err("restarts are single-topology faults".into());
        };
        server.stop();
        let kill_ns = wall_clock_ns();
        if !persistent {
            // The same server without its data: a restart without persistence.
            let _ = fs::remove_dir_all(server.dir().join("appendonlydir"));
        }
        thread::sleep(Duration::from_millis(700));
        let spawn_ns = wall_clock_ns();
        server.try_restart().map_err(|e| e.to_string())?;
        let up_ns = wall_clock_ns();
        self.events.restarts.push(RestartEvent { persistent, kill_ns, spawn_ns, up_ns, before });
        let how = if persistent { "from its AOF" } else { "without its data" };
        self.note(format!("redis-server restarted {how}, down {:.1?}", Duration::from_nanos(up_ns - kill_ns)));
        // Let the consequences (lost leases, reconnects) play out before the next fault.
        thread::sleep(self.cfg.lease);
        Ok(true)
    }

    /// `SENTINEL FAILOVER`, or (`Kill`) a SIGKILL of the master, which is started again
    /// only after every Sentinel names the new one (a Sentinel that still named it would
    /// send a client there, and a restarted master says it is one until the Sentinels
    /// turn it into a replica). Returns once the group is whole again, so that faults
    /// stay one at a time and the next failover has a replica to promote.
    fn failover(&mut self, kind: FailoverKind) -> Result<bool, String> {
        let Servers::Sentinel { group, .. } = &mut self.servers else {
            return Err("failovers are sentinel-topology faults".into());
        };
        let from = match group.formed() {
            Ok(port) => port,
            Err(e) => {
                self.note(format!("no {kind}: the group is not whole ({e})"));
                return Ok(false);
            }
        };
        let fault_ns = wall_clock_ns();
        if kind == FailoverKind::Kill {
            data_server_mut(group, from).ok_or("the master is not a server the run started")?.stop();
        } else {
            let asked = group.sentinels()[0]
                .try_admin_conn(ADMIN_TIMEOUT)
                .and_then(|mut c| redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME).query::<()>(&mut c));
            if let Err(e) = asked {
                self.note(format!("SENTINEL FAILOVER refused: {e}"));
                return Ok(false);
            }
        }
        self.follow_failover(kind, from, fault_ns)?;
        Ok(true)
    }

    /// Waits until every Sentinel names a master other than `from` (starting `from`
    /// again if it was killed), then until the group is whole again, and records the
    /// failover. A failover that does not happen (`SENTINEL FAILOVER` aborted, say) is
    /// noted; a killed master is started again all the same (its locks forgotten: a
    /// restart without persistence, which the checker's first-holder rule covers).
    fn follow_failover(&mut self, kind: FailoverKind, from: u16, fault_ns: u64) -> Result<(), String> {
        let Servers::Sentinel { group, .. } = &mut self.servers else { unreachable!("a Sentinel group failed over") };
        // A graceful failover names the new master within about a second, or never.
        let limit =
            Instant::now() + if kind == FailoverKind::Graceful { Duration::from_secs(20) } else { FAILOVER_LIMIT };
        let mut named = None;
        while named.is_none() && Instant::now() < limit {
            named = named_by_all(group).filter(|p| *p != from);
            thread::sleep(Duration::from_millis(10));
        }
        let named_ns = wall_clock_ns();
        let old = data_server_mut(group, from).ok_or("the old master is not a server the run started")?;
        if !old.is_running() {
            // Not at once: a Sentinel that has just switched PINGs the new master a
            // PING period (1 s, as long as down-after here) later, may count it down
            // before the reply, and right after a kill the other Sentinels' stale
            // "down" answers make that a failover, which would promote this server
            // back. With no replica to promote, it comes to nothing.
            thread::sleep(Duration::from_secs(2));
            // Empty: a replica keeps the last snapshot its master sent it, which would
            // come back seconds old.
            for stale in ["dump.rdb", "appendonlydir"] {
                let path = old.dir().join(stale);
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
            old.try_restart().map_err(|e| e.to_string())?;
        }
        let limit = Instant::now() + FAILOVER_LIMIT;
        let mut formed = group.formed();
        while formed.is_err() && Instant::now() < limit {
            thread::sleep(Duration::from_millis(20));
            formed = group.formed();
        }
        let settled_ns = wall_clock_ns();
        let secs = |ns: u64| (ns - fault_ns) as f64 / 1e9;
        let outcome = match &formed {
            Ok(_) => format!("whole again after {:.1} s", secs(settled_ns)),
            Err(e) => format!("NOT whole after {:.1} s: {e}", secs(settled_ns)),
        };
        let Some(to) = named else {
            self.master_seen = formed.ok().map(|port| (port, settled_ns));
            let each = named_by_each(group);
            self.note(format!(
                "{kind} (master on port {from}): no other master named (the Sentinels: {each:?}); {outcome}"
            ));
            if kind == FailoverKind::Kill {
                let locks = (0..self.cfg.locks).collect();
                self.events.failovers.push(FailoverEvent {
                    kind,
                    from,
                    to: from,
                    fault_ns,
                    named_ns,
                    settled_ns,
                    locks,
                });
            }
            return Ok(());
        };
        let locks: Vec<usize> = (0..self.cfg.locks).collect();
        self.events.failovers.push(FailoverEvent {
            kind,
            from,
            to,
            fault_ns,
            named_ns,
            settled_ns,
            locks: locks.clone(),
        });
        self.note(format!(
            "{kind} (master on port {from}): every Sentinel named port {to} after {:.1} s; {outcome}",
            secs(named_ns)
        ));
        match formed {
            // The Sentinels failed the new master over again meanwhile: with down-after
            // as short as their PING period (1 s), a Sentinel that has just switched
            // can find the new master silent for that long and start another failover
            // (seen: one second after the switch, promoting the killed master back).
            Ok(now) if now != to => {
                self.events.failovers.push(FailoverEvent {
                    kind: FailoverKind::Unplanned,
                    from: to,
                    to: now,
                    fault_ns: named_ns,
                    named_ns: settled_ns,
                    settled_ns,
                    locks,
                });
                self.note(format!("unplanned failover (master on port {to}) meanwhile: port {now} is master now"));
                self.master_seen = Some((now, settled_ns));
            }
            _ => self.master_seen = Some((to, settled_ns)),
        }
        Ok(())
    }

    /// On a Sentinel group: a master the Sentinels no longer name since the controller
    /// last looked was failed over without a fault. It is recorded as a failover (its
    /// window from that last look on) and waited out like one.
    fn watch_master(&mut self) -> Result<(), String> {
        let (Servers::Sentinel { group, .. }, Some((seen, seen_ns))) = (&self.servers, self.master_seen) else {
            return Ok(());
        };
        // The Sentinels disagree (or one does not answer) while a failover goes on.
        let limit = Instant::now() + FAILOVER_LIMIT;
        let mut named = named_by_all(group);
        while named.is_none() && Instant::now() < limit {
            thread::sleep(Duration::from_millis(10));
            named = named_by_all(group);
        }
        if named == Some(seen) {
            self.master_seen = Some((seen, wall_clock_ns()));
            return Ok(());
        }
        self.follow_failover(FailoverKind::Unplanned, seen, seen_ns)
    }
}

/// Waits up to `limit` for every thread of process `pid` to show stopped.
fn until_stopped(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if process_stopped(pid) == Some(true) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Watches process `pid` for `span`, every 50 ms: `false` as soon as one of its threads
/// is seen not stopped (something let it run, or it is gone).
fn stayed_stopped(pid: u32, span: Duration) -> bool {
    let end = Instant::now() + span;
    loop {
        if process_stopped(pid) != Some(true) {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
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
    // Notes count from here; records are in wall-clock ns.
    let started_ns = wall_clock_ns();
    // On tmpfs when there is one: `appendfsync always` on a disk costs milliseconds per
    // write and would make locks sit idle. A SIGKILLed redis-server loses nothing that
    // it wrote on either: the restart-aof fault kills the process, not the machine.
    let mut builder = tempfile::Builder::new();
    builder.prefix("redis-mutex-torture-");
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { builder.tempdir_in(shm) } else { builder.tempdir() }
        .or_else(|_| builder.tempdir())
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    if let Some(f) = cfg.faults.iter().find(|f| !f.applies_to(cfg.topology)) {
        return Err(format!("the {f} fault does not apply to --topology {}", cfg.topology));
    }
    if let Some(why) = cfg.lock.refused_on(cfg.topology) {
        return Err(why);
    }
    let servers = Servers::start(cfg.topology, dir.path(), cfg.locks)?;
    if cfg.topology == Topology::Redlock {
        // Masters just started sit out for `redlock_max_lease` (the lease, and a second
        // for Redis's rounding of its uptime): workers would start with errors.
        thread::sleep(cfg.lease + Duration::from_millis(1500));
    }
    let end_ns = wall_clock_ns() + cfg.secs * 1_000_000_000;
    let end = Instant::now() + Duration::from_secs(cfg.secs);
    let fleet = Fleet {
        cfg: cfg.clone(),
        dir: dir.path().to_owned(),
        target: servers.target(),
        data_url: servers.data().url(),
        end_ns,
        procs: Vec::new(),
    };
    // Faults stop early enough for their consequences to be over before the end.
    let faults_until = end.checked_sub(cfg.lease * 2 + Duration::from_secs(1)).unwrap_or(end);
    let mut c = Controller {
        cfg: cfg.clone(),
        servers,
        fleet,
        rng: XorShift::new(cfg.seed),
        events: Events::default(),
        end,
        faults_until,
        t0: started,
        master_seen: None,
        owners_seen: None,
        elections: BTreeMap::new(),
    };
    c.note(format!("t=0 is wall-clock {started_ns} ns (the records' clock)"));
    match &c.servers {
        Servers::Sentinel { group, .. } => c.master_seen = Some((group.master().port(), wall_clock_ns())),
        Servers::Cluster { .. } => c.owners_seen = Some((c.owners_now(FAILOVER_LIMIT)?, wall_clock_ns())),
        Servers::Single(_) | Servers::Redlock { .. } => {}
    }
    for _ in 0..cfg.procs {
        c.fleet.spawn()?;
    }

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
        c.watch_master()?;
        c.watch_owners()?;
        if !c.inject(fault)? && !plan.is_empty() {
            // Again at the end of this round (the next round has every kind anyway).
            plan.insert(0, fault);
        }
    }
    thread::sleep(end.saturating_duration_since(Instant::now()));

    // Threads stop taking locks at the end; one in recovery may need up to 4 leases.
    c.fleet.wait_all(Instant::now() + cfg.lease * 4 + Duration::from_secs(10));
    c.watch_master()?;
    c.watch_owners()?;
    let last = Snapshot { sent_ns: wall_clock_ns(), values: counters(c.servers.data(), cfg.locks)? };

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
        report.server_log_tail = c.servers.log_tail(30);
    }
    drop(c);
    // A self-test fails on purpose: nothing to look into.
    if (!report.is_ok() && !cfg.no_exclusion) || std::env::var_os(KEEP_ENV).is_some() {
        // Records, worker stderr and the server log, for a post-mortem.
        report.kept_dir = Some(dir.keep());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{stayed_stopped, until_stopped};
    use std::process::Command;
    use std::thread;
    use std::time::{Duration, Instant};

    fn kill(sig: &str, pid: u32) {
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    }

    #[test]
    fn a_stop_is_seen_to_hold_and_a_process_let_run_early_is_caught() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("`sleep` runs");
        let pid = child.id();
        assert!(!until_stopped(pid, Duration::from_millis(100)), "a running process is not stopped");
        kill("-STOP", pid);
        assert!(until_stopped(pid, Duration::from_secs(1)));
        assert!(stayed_stopped(pid, Duration::from_millis(300)), "nothing let it run");
        // Something else SIGCONTs it half-way: seen within a look or two.
        let started = Instant::now();
        let cont = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            kill("-CONT", pid);
        });
        assert!(!stayed_stopped(pid, Duration::from_secs(5)), "a process that ran again must be caught");
        assert!(started.elapsed() < Duration::from_secs(2), "caught at its next look: {:?}", started.elapsed());
        cont.join().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!stayed_stopped(pid, Duration::from_millis(100)), "a process that is gone is not stopped");
    }
}
