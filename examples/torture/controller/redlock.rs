//! The Redlock topology, from the controller's side: five independent masters, who
//! holds a lock (the client id a quorum of them names), and the faults only Redlock
//! has (`master-kill`, `master-stop`, `majority-stop`), plus where `pause` and
//! `clientkill` land (one master).
//!
//! **A minority at a time.** Faults come one at a time, and each returns only once its
//! master is back and counts: a master killed and started again (empty, as without
//! persistence) sits out of quorums until its uptime reaches `redlock_max_lease`, which
//! the workers set to the run's lease, so `master-kill` waits that long (and 1.5 s more:
//! the crate subtracts a second from Redis's uptime) after the restart; `pause` and
//! `clientkill` touch one master. So at most one master of five is away at any moment.
//! `majority-stop` is the one exception, on purpose: three masters frozen at once for a
//! lease, where nobody can acquire or renew and every holder whose lease runs out
//! meanwhile must be told.

use std::thread;
use std::time::Duration;

use redis_mutex_harness::{Masters, RedisServer, wall_clock_ns};

use super::super::config::Fault;
use super::super::worker::lock_key;
use super::{Controller, MasterEvent, Servers};

/// Independent masters (Redlock's usual five).
pub const MASTERS: usize = 5;
/// How many must agree: N/2 + 1.
pub const QUORUM: usize = MASTERS / 2 + 1;
/// Timeout of the controller's reads of who holds a lock: a frozen master must not hold
/// up the `stop` fault's look for 3 s.
const LOOK_TIMEOUT: Duration = Duration::from_millis(300);

/// Starts the masters in subdirectories `master-N` of `dir`, without persistence: a
/// killed master comes back empty, which is the case `redlock_max_lease` is for.
pub fn start(dir: &std::path::Path) -> Masters {
    Masters::start_with(MASTERS, &RedisServer::builder().dir(dir))
}

impl Controller {
    fn masters(&self) -> Result<&Masters, String> {
        match &self.servers {
            Servers::Redlock { masters, .. } => Ok(masters),
            _ => Err("Redlock faults need --topology redlock".into()),
        }
    }

    fn masters_mut(&mut self) -> Result<&mut Masters, String> {
        match &mut self.servers {
            Servers::Redlock { masters, .. } => Ok(masters),
            _ => Err("Redlock faults need --topology redlock".into()),
        }
    }

    /// A random master (for `pause`, `clientkill` and the master faults).
    pub(super) fn random_master(&mut self) -> Result<usize, String> {
        let i = self.rng.below(MASTERS as u64) as usize;
        self.masters()?;
        Ok(i)
    }

    /// The server of master `i`.
    pub(super) fn master(&self, i: usize) -> Result<&RedisServer, String> {
        Ok(&self.masters()?[i])
    }

    /// The client id a quorum of masters names in lock `k`'s hash (`c`): the client
    /// that holds it. `None` when nobody holds it on a quorum (free, or a split vote).
    pub(super) fn redlock_holder(&self, k: usize) -> Option<String> {
        let masters = self.masters().ok()?;
        let mut seen: Vec<(String, usize)> = Vec::new();
        for m in masters.iter().filter(|m| m.is_running()) {
            let mut con = m.try_admin_conn(LOOK_TIMEOUT).ok()?;
            let Ok(Some(c)) = redis::cmd("HGET").arg(lock_key(k)).arg("c").query::<Option<String>>(&mut con) else {
                continue;
            };
            match seen.iter_mut().find(|(id, _)| *id == c) {
                Some((_, n)) => *n += 1,
                None => seen.push((c, 1)),
            }
        }
        seen.into_iter().find(|(_, n)| *n >= QUORUM).map(|(id, _)| id)
    }

    /// `master-kill`: SIGKILLs a master and starts it again 0.7 s later without its data
    /// (there is none to keep: no persistence), then waits until it counts again
    /// (`redlock_max_lease` = the lease, plus the second the crate allows for Redis's
    /// rounding of the uptime, plus a margin) so that faults never take a majority away.
    pub(super) fn master_kill(&mut self) -> Result<bool, String> {
        let i = self.random_master()?;
        let lease = self.cfg.lease;
        let server = &mut self.masters_mut()?[i];
        let port = server.port();
        let start_ns = wall_clock_ns();
        server.stop();
        thread::sleep(Duration::from_millis(700));
        server.try_restart().map_err(|e| e.to_string())?;
        let up_ns = wall_clock_ns();
        self.note(format!(
            "master-kill: master {i} (port {port}) SIGKILLed, up again empty after {:.1?}; it sits out for the lease",
            Duration::from_nanos(up_ns - start_ns)
        ));
        thread::sleep(lease + Duration::from_millis(1500));
        self.events.masters.push(MasterEvent {
            fault: Fault::MasterKill,
            masters: vec![port],
            start_ns,
            end_ns: up_ns,
        });
        Ok(true)
    }

    /// `master-stop` (one master) and `majority-stop` (a quorum of them): SIGSTOP, then
    /// SIGCONT after `frozen`; then a lease for the consequences (lost leases, notifier
    /// reconnects) to play out before the next fault.
    pub(super) fn freeze_masters(&mut self, fault: Fault) -> Result<bool, String> {
        let (count, frozen) = match fault {
            Fault::MajorityStop => (QUORUM, self.cfg.lease),
            _ => (1, self.cfg.lease * 3 / 2),
        };
        // `count` distinct masters, at random.
        let mut chosen: Vec<usize> = (0..MASTERS).collect();
        for j in 0..count {
            let pick = j + self.rng.below((MASTERS - j) as u64) as usize;
            chosen.swap(j, pick);
        }
        chosen.truncate(count);
        chosen.sort_unstable();
        let masters = self.masters()?;
        let ports: Vec<u16> = chosen.iter().map(|&i| masters[i].port()).collect();
        let start_ns = wall_clock_ns();
        for &i in &chosen {
            masters[i].pause();
        }
        thread::sleep(frozen);
        for &i in &chosen {
            masters[i].resume();
        }
        let end_ns = wall_clock_ns();
        self.note(format!(
            "{fault}: masters {chosen:?} (ports {ports:?}) SIGSTOPped, SIGCONT after {:.1?}",
            Duration::from_nanos(end_ns - start_ns)
        ));
        self.events.masters.push(MasterEvent { fault, masters: ports, start_ns, end_ns });
        thread::sleep(self.cfg.lease);
        Ok(true)
    }
}
