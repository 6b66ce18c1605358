//! The cluster topology, from the controller's side: which master serves each lock's
//! slot (as the nodes see it in `CLUSTER NODES`), the faults only a cluster has
//! (`cluster-failover`, `cluster-failover-kill`, `reshard`), and failovers the cluster
//! made on its own.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex_harness::{Cluster, RedisServer, wall_clock_ns};

use super::super::worker::lock_key;
use super::holders::LockState;
use super::{ADMIN_TIMEOUT, Controller, FAILOVER_LIMIT, FailoverEvent, FailoverKind, ReshardEvent, Servers};

/// Masters, and replicas per master (one: each master can fail over, and none is left
/// without a replica after a failover, since the old master comes back as one).
pub const MASTERS: usize = 3;
pub const REPLICAS: usize = 1;

/// How long after its last election a replica can be promoted again: Redis starts a
/// replica's next election only 4 node timeouts (5 s in the harness) after the last one
/// began (`auth_retry_time` in `clusterHandleSlaveFailover`); a `CLUSTER FAILOVER`
/// sooner logs "Failover attempt expired" and times out after 5 s, during which the
/// master refuses writes. Counted from the promotion, which follows the election's
/// start: with a second to spare.
const REELECTION_GAP: Duration = Duration::from_secs(21);
/// How long a manual failover may take: Redis gives up after 5 s.
const MANUAL_FAILOVER_LIMIT: Duration = Duration::from_secs(8);
/// About how long a failover by SIGKILL takes: the node timeout (5 s), the replica's
/// election (up to 1.5 s), and the restarted master's resync. One starts only when it
/// can be over before the faults end, so that its consequences are over before the
/// run's end (and a bounded run stays bounded).
const KILL_FAILOVER_TAKES: Duration = Duration::from_secs(10);

/// A node as another one sees it (one line of `CLUSTER NODES`).
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    port: u16,
    master: bool,
    /// Flagged `fail` (not `fail?`: only suspected by this node).
    failed: bool,
    /// A replica's master.
    of: Option<String>,
    /// Slot ranges served, inclusive (a master's).
    slots: Vec<(u16, u16)>,
}

impl Seen {
    fn serves(&self, slot: u16) -> bool {
        self.master && !self.failed && self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

fn query<T: redis::FromRedisValue>(node: &RedisServer, cmd: &redis::Cmd) -> Result<T, String> {
    let mut con = node.try_admin_conn(ADMIN_TIMEOUT).map_err(|e| format!("port {}: {e}", node.port()))?;
    cmd.query(&mut con).map_err(|e| format!("port {}: {e}", node.port()))
}

/// The cluster as `node` sees it.
fn seen_by(node: &RedisServer) -> Result<Vec<Seen>, String> {
    let text: String = query(node, redis::cmd("CLUSTER").arg("NODES"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 8 || f[2].contains("handshake") || f[2].contains("noaddr") {
            continue;
        }
        let Some(port) = f[1].split(['@', ',']).next().and_then(|a| a.rsplit(':').next()?.parse().ok()) else {
            continue;
        };
        let flags: Vec<&str> = f[2].split(',').collect();
        // `[slot->-id]` and `[slot-<-id]`: a migration under way, not served slots.
        let slots = f[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .filter_map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        out.push(Seen {
            id: f[0].to_owned(),
            port,
            master: flags.contains(&"master"),
            failed: flags.contains(&"fail"),
            of: (f[3] != "-").then(|| f[3].to_owned()),
            slots,
        });
    }
    Ok(out)
}

/// The index (in `cluster.nodes()`) of the node on `port`.
fn index_of(cluster: &Cluster, port: u16) -> Option<usize> {
    cluster.nodes().iter().position(|n| n.port() == port)
}

/// The master serving `slot` according to the first running node that answers.
pub fn owner(cluster: &Cluster, slot: u16) -> Result<usize, String> {
    let mut last = "no node runs".to_string();
    for node in cluster.nodes().iter().filter(|n| n.is_running()) {
        match seen_by(node) {
            Ok(seen) => {
                return seen
                    .iter()
                    .find(|s| s.serves(slot))
                    .and_then(|s| index_of(cluster, s.port))
                    .ok_or_else(|| format!("node on port {} names no master for slot {slot}", node.port()));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The master serving `slot` when every running node names the same one, and it runs.
fn agreed_owner(cluster: &Cluster, slot: u16) -> Result<usize, String> {
    let mut named = None;
    for node in cluster.nodes().iter().filter(|n| n.is_running()) {
        let seen = seen_by(node)?;
        let port = seen.iter().find(|s| s.serves(slot)).map(|s| s.port);
        match (named, port) {
            (_, None) => return Err(format!("node on port {} names no master for slot {slot}", node.port())),
            (Some(p), Some(q)) if p != q => return Err(format!("nodes name ports {p} and {q} for slot {slot}")),
            _ => named = port,
        }
    }
    let i = named.and_then(|p| index_of(cluster, p)).ok_or("no node runs")?;
    if cluster.nodes()[i].is_running() { Ok(i) } else { Err(format!("port {} is down", cluster.nodes()[i].port())) }
}

/// The masters serving any slot, as the first running node that answers sees them.
fn masters(cluster: &Cluster) -> Result<Vec<usize>, String> {
    let node = cluster.nodes().iter().find(|n| n.is_running()).ok_or("no node runs")?;
    let seen = seen_by(node)?;
    Ok(seen
        .iter()
        .filter(|s| s.master && !s.failed && !s.slots.is_empty())
        .filter_map(|s| index_of(cluster, s.port))
        .collect())
}

/// A running replica of the master `of`, as that master sees them.
fn replica_of(cluster: &Cluster, of: usize) -> Result<Option<usize>, String> {
    let seen = seen_by(&cluster.nodes()[of])?;
    let id = seen.iter().find(|s| s.port == cluster.nodes()[of].port()).map(|s| s.id.clone()).ok_or("no own line")?;
    Ok(seen
        .iter()
        .filter(|s| s.of.as_deref() == Some(id.as_str()) && !s.failed)
        .filter_map(|s| index_of(cluster, s.port))
        .find(|&i| cluster.nodes()[i].is_running()))
}

/// `cmd` about `key`, on the master of `slot`, following `MOVED` and `ASK`.
pub(super) fn on_owner<T: redis::FromRedisValue>(cluster: &Cluster, slot: u16, cmd: &redis::Cmd) -> Result<T, String> {
    let mut at = owner(cluster, slot)?;
    let mut asking = false;
    for _ in 0..5 {
        let node = &cluster.nodes()[at];
        let mut con = node.try_admin_conn(ADMIN_TIMEOUT).map_err(|e| format!("port {}: {e}", node.port()))?;
        if asking {
            redis::cmd("ASKING").query::<()>(&mut con).map_err(|e| e.to_string())?;
        }
        match cmd.query(&mut con) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let to = e.redirect_node().and_then(|(addr, _)| addr.rsplit(':').next()?.parse::<u16>().ok());
                match to.and_then(|port| index_of(cluster, port)) {
                    Some(i) => {
                        asking = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask);
                        at = i;
                    }
                    None => return Err(format!("port {}: {e}", node.port())),
                }
            }
        }
    }
    Err(format!("redirected more than 5 times for slot {slot}"))
}

/// Runs `cmd` on `node`, retried for a second (a busy node may time out).
fn admin(node: &RedisServer, cmd: &redis::Cmd) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..10 {
        match query::<redis::Value>(node, cmd) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{cmd:?}: {last}"))
}

/// Moves `slot` from master `from` to master `to` as `redis-cli --cluster reshard`
/// does (and `tests/cluster.rs`'s `migrate`): `IMPORTING` on `to`, `MIGRATING` on
/// `from`, the keys one `MIGRATE` at a time, `NODE` on `to`, `from`, then every other
/// master. Paced so that each phase lasts while the workers use the lock: 300 ms with
/// the slot migrating but no key moved (new keys are `ASK`ed to `to`), then 300 ms
/// after each key (a script naming keys on both sides gets `TRYAGAIN`, one whose key
/// moved gets `ASK`). Returns how many keys moved.
fn migrate(cluster: &Cluster, slot: u16, from: usize, to: usize) -> Result<usize, String> {
    let (src, dst) = (&cluster.nodes()[from], &cluster.nodes()[to]);
    let id = |n: &RedisServer| query::<String>(n, redis::cmd("CLUSTER").arg("MYID"));
    let (src_id, dst_id) = (id(src)?, id(dst)?);
    admin(dst, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("IMPORTING").arg(&src_id))?;
    admin(src, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("MIGRATING").arg(&dst_id))?;
    thread::sleep(Duration::from_millis(300));
    let mut moved = 0;
    loop {
        let keys: Vec<String> = query(src, redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100))?;
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let mut m = redis::cmd("MIGRATE");
            m.arg("127.0.0.1").arg(dst.port()).arg("").arg(0).arg(5000).arg("KEYS").arg(&key);
            // "NOKEY": it expired or was deleted meanwhile.
            admin(src, &m)?;
            moved += 1;
            thread::sleep(Duration::from_millis(300));
        }
    }
    let others = (0..cluster.nodes().len()).filter(|&i| i != from && i != to && cluster.nodes()[i].is_running());
    for i in [to, from].into_iter().chain(others) {
        let node = &cluster.nodes()[i];
        let role: String = query(node, redis::cmd("INFO").arg("replication"))?;
        if i == to || i == from || role.contains("role:master") {
            admin(node, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&dst_id))?;
        }
    }
    Ok(moved)
}

impl Controller {
    /// The cluster and each lock's slot; `Err` on another topology.
    fn cluster(&self) -> Result<(&Cluster, &[u16]), String> {
        match &self.servers {
            Servers::Cluster { cluster, slots, .. } => Ok((cluster, slots)),
            _ => Err("cluster faults need --topology cluster".into()),
        }
    }

    /// Lock indexes in random order, those held (and waited for, when `waited`) first;
    /// the first with its holder, `None` when nobody holds any.
    fn held_lock(&mut self, waited: bool) -> Result<Option<usize>, String> {
        let first = self.rng.below(self.cfg.locks as u64) as usize;
        self.cluster()?;
        let states: Vec<(usize, LockState)> = (0..self.cfg.locks)
            .map(|j| (first + j) % self.cfg.locks)
            .filter_map(|k| Some((k, self.lock_state(k)?)))
            .filter(|(_, s)| !s.clients.is_empty())
            .collect();
        let queued = states.iter().find(|(_, s)| s.waited).map(|(k, _)| *k);
        let held = states.first().map(|(k, _)| *k);
        Ok(if waited { queued.or(held) } else { held })
    }

    /// Where each lock's slot is served now (ports), once every running node agrees.
    pub(super) fn owners_now(&self, limit: Duration) -> Result<Vec<u16>, String> {
        let (cluster, slots) = self.cluster()?;
        let until = Instant::now() + limit;
        loop {
            let owners: Result<Vec<u16>, String> =
                slots.iter().map(|&s| agreed_owner(cluster, s).map(|i| cluster.nodes()[i].port())).collect();
            match owners {
                Err(e) if Instant::now() < until => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                done => return done,
            }
        }
    }

    /// `CLUSTER FAILOVER` on a replica of a master that serves a lock (a held one when
    /// there is one), or (`Kill`) a SIGKILL of that master, which is started again
    /// empty once every node names its replica as the slots' master: its `nodes.conf`
    /// says it was master, but the cluster's newer epoch makes it a replica of the node
    /// that took its slots (and until it has heard so, for 2 s after starting, it serves
    /// nothing). Returns once the cluster is ok again (the old master a replica in sync).
    pub(super) fn cluster_failover(&mut self, kind: FailoverKind) -> Result<bool, String> {
        let name = if kind == FailoverKind::Kill { "cluster-failover-kill" } else { "cluster-failover" };
        if let Err(e) = self.cluster()?.0.ok() {
            self.note(format!("no {name}: the cluster is not ok ({e})"));
            return Ok(false);
        }
        // The master of a held lock, unless its replica was promoted too recently to
        // be again; then another lock's, or the one whose replica can be soonest.
        let first = self.rng.below(self.cfg.locks as u64) as usize;
        let held = self.held_lock(false)?;
        let order = held.into_iter().chain((0..self.cfg.locks).map(|j| (first + j) % self.cfg.locks));
        let (cluster, slots) = self.cluster()?;
        let mut candidates: Vec<(usize, usize, usize, Duration)> = Vec::new();
        for k in order {
            let Ok(from) = owner(cluster, slots[k]) else { continue };
            let Ok(Some(replica)) = replica_of(cluster, from) else { continue };
            if candidates.iter().all(|c| c.1 != from) {
                let last = self.elections.get(&cluster.nodes()[replica].port());
                let wait =
                    last.map_or(Duration::ZERO, |t| (*t + REELECTION_GAP).saturating_duration_since(Instant::now()));
                candidates.push((k, from, replica, wait));
            }
        }
        let Some(&(k, from, replica, wait)) =
            candidates.iter().find(|c| c.3.is_zero()).or_else(|| candidates.iter().min_by_key(|c| c.3))
        else {
            self.note(format!("no {name}: no master of a lock has a running replica"));
            return Ok(false);
        };
        let takes = wait + if kind == FailoverKind::Kill { KILL_FAILOVER_TAKES } else { MANUAL_FAILOVER_LIMIT };
        if Instant::now() + takes > self.faults_until {
            let port = cluster.nodes()[replica].port();
            self.note(format!("no {name}: no time left (the replica on port {port} can be elected in {wait:.1?})"));
            return Ok(false);
        }
        if !wait.is_zero() {
            let port = cluster.nodes()[replica].port();
            self.note(format!("{name}: {wait:.1?} until the replica on port {port} can be elected again"));
            thread::sleep(wait);
        }
        let (cluster, slots) = self.cluster()?;
        let locks: Vec<usize> =
            (0..self.cfg.locks).filter(|&j| owner(cluster, slots[j]).is_ok_and(|o| o == from)).collect();
        let (from_port, to_port) = (cluster.nodes()[from].port(), cluster.nodes()[replica].port());
        let slot = slots[k];
        let fault_ns = wall_clock_ns();
        if kind == FailoverKind::Kill {
            let Servers::Cluster { cluster, .. } = &mut self.servers else { unreachable!("checked above") };
            cluster.nodes_mut()[from].stop();
        } else if let Err(e) = query::<()>(&cluster.nodes()[replica], redis::cmd("CLUSTER").arg("FAILOVER")) {
            self.note(format!("CLUSTER FAILOVER refused on port {to_port}: {e}"));
            return Ok(false);
        }
        // A graceful failover is over within a second or two, or never (it times out).
        let limit = if kind == FailoverKind::Graceful { MANUAL_FAILOVER_LIMIT } else { FAILOVER_LIMIT };
        let until = Instant::now() + limit;
        let mut named = agreed_owner(self.cluster()?.0, slot);
        while !named.as_ref().is_ok_and(|&o| o != from) && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
            named = agreed_owner(self.cluster()?.0, slot);
        }
        let named_ns = wall_clock_ns();
        let Servers::Cluster { cluster, .. } = &mut self.servers else { unreachable!("checked above") };
        let old = &mut cluster.nodes_mut()[from];
        if !old.is_running() {
            // Empty (no persistence here, but a replica keeps the last snapshot its
            // master sent it), with its nodes.conf: the cluster's node it was.
            for stale in ["dump.rdb", "appendonlydir"] {
                let path = old.dir().join(stale);
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
            old.try_restart().map_err(|e| e.to_string())?;
        }
        let failed_over = named.as_ref().is_ok_and(|&to| to != from);
        let until = Instant::now() + FAILOVER_LIMIT;
        let settled = loop {
            let cluster = self.cluster()?.0;
            let state = cluster.ok().and_then(|()| {
                let info: String = query(&cluster.nodes()[from], redis::cmd("INFO").arg("replication"))?;
                // Still master when no failover happened (a graceful one timed out).
                if info.contains("role:slave") || !failed_over {
                    Ok(())
                } else {
                    Err(format!("port {from_port} is not a replica"))
                }
            });
            if state.is_ok() || Instant::now() >= until {
                break state;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let settled_ns = wall_clock_ns();
        let secs = |ns: u64| (ns - fault_ns) as f64 / 1e9;
        let outcome = match &settled {
            Ok(()) => format!("ok again after {:.1} s", secs(settled_ns)),
            Err(e) => format!("NOT ok after {:.1} s: {e}", secs(settled_ns)),
        };
        let cluster = self.cluster()?.0;
        match named {
            Ok(to) if to != from => {
                let to = cluster.nodes()[to].port();
                self.elections.insert(to, Instant::now());
                let unexpected = if to == to_port { String::new() } else { format!(" (not port {to_port})") };
                self.events.failovers.push(FailoverEvent {
                    kind,
                    from: from_port,
                    to,
                    fault_ns,
                    named_ns,
                    settled_ns,
                    locks,
                });
                self.note(format!(
                    "{name} (master on port {from_port}): every node named port {to}{unexpected} after {:.1} s; {outcome}",
                    secs(named_ns)
                ));
            }
            other => {
                self.note(format!("{name} (master on port {from_port}): no other master named ({other:?}); {outcome}"));
                if kind == FailoverKind::Kill {
                    // Down and back: what it granted is gone all the same.
                    self.events.failovers.push(FailoverEvent {
                        kind,
                        from: from_port,
                        to: from_port,
                        fault_ns,
                        named_ns,
                        settled_ns,
                        locks,
                    });
                }
            }
        }
        self.owners_seen = Some((self.owners_now(Duration::from_secs(10))?, wall_clock_ns()));
        Ok(failed_over || kind == FailoverKind::Kill)
    }

    /// Moves the slot of a held lock (one that is waited for, when there is one) to
    /// another master while the workers use it, as `redis-cli --cluster reshard` does.
    pub(super) fn reshard(&mut self) -> Result<bool, String> {
        if let Err(e) = self.cluster()?.0.ok() {
            self.note(format!("no reshard: the cluster is not ok ({e})"));
            return Ok(false);
        }
        let mut pick = None;
        for _ in 0..50 {
            pick = self.held_lock(true)?;
            if pick.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let Some(k) = pick else {
            self.note("reshard: found no lock held in 50 tries".into());
            return Ok(false);
        };
        let (cluster, slots) = self.cluster()?;
        let slot = slots[k];
        let from = owner(cluster, slot)?;
        let others: Vec<usize> = masters(cluster)?.into_iter().filter(|&m| m != from).collect();
        if others.is_empty() {
            let port = cluster.nodes()[from].port();
            self.note(format!("no reshard: no master but port {port} serves slots"));
            return Ok(false);
        }
        let to = others[self.rng.below(others.len() as u64) as usize];
        let state = self.lock_state(k).unwrap_or_default();
        let (held, waited) = (!state.clients.is_empty(), state.waited);
        let (cluster, slots) = self.cluster()?;
        let locks: Vec<usize> = (0..self.cfg.locks).filter(|&j| slots[j] == slot).collect();
        let start_ns = wall_clock_ns();
        let moved = migrate(cluster, slot, from, to)?;
        let end_ns = wall_clock_ns();
        let (from, to) = (cluster.nodes()[from].port(), cluster.nodes()[to].port());
        self.events.reshards.push(ReshardEvent { slot, locks, from, to, held, waited, moved, start_ns, end_ns });
        self.note(format!(
            "reshard of slot {slot} (lock-{k}, held {held}, waited for {waited}) from port {from} to {to}: {moved} \
             keys moved in {:.1} s",
            (end_ns - start_ns) as f64 / 1e9
        ));
        self.owners_seen = Some((self.owners_now(Duration::from_secs(10))?, wall_clock_ns()));
        Ok(true)
    }

    /// On a cluster: a lock whose slot another master serves than when the controller
    /// last looked was failed over without a fault (reshards and failovers update what
    /// it saw). It is recorded as a failover of its old master (its window from that
    /// last look on) and waited out.
    pub(super) fn watch_owners(&mut self) -> Result<(), String> {
        let Some((seen, seen_ns)) = self.owners_seen.clone() else { return Ok(()) };
        let now = self.owners_now(FAILOVER_LIMIT)?;
        let named_ns = wall_clock_ns();
        if now == seen {
            self.owners_seen = Some((now, named_ns));
            return Ok(());
        }
        let cluster = self.cluster()?.0;
        let until = Instant::now() + FAILOVER_LIMIT;
        let mut state = cluster.ok();
        while state.is_err() && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
            state = cluster.ok();
        }
        let settled_ns = wall_clock_ns();
        let mut moves: Vec<(u16, u16)> = seen.iter().zip(&now).filter(|(a, b)| a != b).map(|(a, b)| (*a, *b)).collect();
        moves.sort_unstable();
        moves.dedup();
        for (from, to) in moves {
            self.elections.insert(to, Instant::now());
            let locks = (0..self.cfg.locks).filter(|&k| seen[k] == from && now[k] == to).collect();
            self.events.failovers.push(FailoverEvent {
                kind: FailoverKind::Unplanned,
                from,
                to,
                fault_ns: seen_ns,
                named_ns,
                settled_ns,
                locks,
            });
            self.note(format!("unplanned failover: port {to} serves the slots of port {from} now ({state:?})"));
        }
        self.owners_seen = Some((self.owners_now(Duration::from_secs(10))?, wall_clock_ns()));
        Ok(())
    }

    /// `CLIENT KILL TYPE kind` on every running node (the subscriber connection may be
    /// on any master; the cluster bus and replication links are not clients of a type).
    pub(super) fn cluster_kill_clients(&mut self, kind: &str) -> Result<bool, String> {
        let cluster = self.cluster()?.0;
        let mut killed = 0;
        let mut errors = Vec::new();
        for node in cluster.nodes().iter().filter(|n| n.is_running()) {
            match query::<i64>(node, redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind)) {
                Ok(n) => killed += n,
                Err(e) => errors.push(e),
            }
        }
        self.note(format!("CLIENT KILL TYPE {kind} on every node: {killed} connections; errors {errors:?}"));
        Ok(errors.is_empty())
    }

    /// The master of a random lock's slot (for `pause`).
    pub(super) fn lock_master(&mut self) -> Result<&RedisServer, String> {
        let k = self.rng.below(self.cfg.locks as u64) as usize;
        let (cluster, slots) = self.cluster()?;
        Ok(&cluster.nodes()[owner(cluster, slots[k])?])
    }
}

/// Starts the cluster in `dir` (a subdirectory per node) and places lock `k`'s slot on
/// master `k % MASTERS`, so that the locks spread over the masters whatever CRC16
/// makes of their names (`lock-1` and `lock-2` hash to slots of the same master).
/// Returns the cluster and each lock's slot.
pub fn start(dir: &std::path::Path, locks: usize) -> Result<(Cluster, Vec<u16>), String> {
    let cluster = Cluster::start_with(MASTERS, REPLICAS, &RedisServer::builder().dir(dir));
    let first = &cluster.nodes()[0];
    let slots: Vec<u16> = (0..locks)
        .map(|k| query(first, redis::cmd("CLUSTER").arg("KEYSLOT").arg(lock_key(k))))
        .collect::<Result<_, _>>()?;
    // Two locks in one slot (not with names `lock-0` to `lock-99`): the first one's master.
    let place = |slot: u16| slots.iter().position(|&s| s == slot).unwrap_or(0) % MASTERS;
    for &slot in &slots {
        let from = owner(&cluster, slot)?;
        if from != place(slot) {
            migrate(&cluster, slot, from, place(slot))?;
        }
    }
    // Every node must know the new owners before a worker asks one of them.
    let until = Instant::now() + FAILOVER_LIMIT;
    for &slot in &slots {
        while agreed_owner(&cluster, slot).ok() != Some(place(slot)) {
            if Instant::now() >= until {
                return Err(format!("the nodes do not agree that master {} serves slot {slot}", place(slot)));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((cluster, slots))
}
