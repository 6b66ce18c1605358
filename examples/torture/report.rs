//! The outcome of a run, and how it prints. The Redlock masters' faults are in
//! `masters.rs`.

mod masters;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::config::{Config, Fault, LockKind, Topology};
use super::controller::{Events, FailoverEvent, FailoverKind, ReshardEvent};
use super::record::{Rec, Recovery, Role, Totals, Unlock, WriteState};
pub use masters::MasterFigures;

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
    pub totals: Totals,
    pub notifier_reconnects: u64,
    pub stats_leases_lost: u64,
    pub renewals: u64,
    pub handoffs: u64,
    /// Of those, in-process handoffs without a round trip.
    pub local_handoffs: u64,
    /// Acquisitions granted by another process's release.
    pub grants: u64,
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

impl Survivors {
    /// Counts `r`, by how it learned its fate.
    pub fn add(&mut self, r: &Rec) {
        self.total += 1;
        match (r.recovery, r.lost_at_end, r.unlock) {
            (Recovery::WatchdogLost, ..) | (Recovery::None, true, _) => self.watchdog += 1,
            (Recovery::NotHeld, ..) => self.is_held += 1,
            (Recovery::Unconfirmed, ..) => self.unconfirmed += 1,
            (_, _, Unlock::Lost) => self.at_release += 1,
            (_, _, Unlock::Ok) => self.kept += 1,
            (_, _, Unlock::Error) => self.unconfirmed += 1,
        }
    }
}

impl Survivors {
    fn merge(&mut self, o: &Survivors) {
        self.total += o.total;
        self.watchdog += o.watchdog;
        self.is_held += o.is_held;
        self.at_release += o.at_release;
        self.unconfirmed += o.unconfirmed;
        self.kept += o.kept;
    }
}

impl fmt::Display for Survivors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> marked lost by the watchdog {}, by is_held {}, at release {}, unconfirmed {}, kept {}",
            self.total, self.watchdog, self.is_held, self.at_release, self.unconfirmed, self.kept
        )
    }
}

/// Fencing blocks are `max(counter, server clock in µs) + span` (`fence.lua`): a token
/// more than this above the clock at a moment was taken after it.
pub const TOKEN_MARGIN_US: u64 = 100;

/// What one failover did to the workers.
#[derive(Debug, Clone)]
pub struct FailoverFigures {
    pub kind: FailoverKind,
    /// Who names the new master: "every Sentinel", "every node" (of a cluster).
    pub by: &'static str,
    /// The old master's port and the new one's.
    pub from: u16,
    pub to: u16,
    /// The locks on the old master: the figures below are theirs.
    pub locks: Vec<usize>,
    /// From the fault until every Sentinel (or node) named the new master.
    pub named: Duration,
    /// From the fault until the group was whole again (the old master a replica).
    pub settled: Duration,
    /// From the fault until the first `lock()` that returned a fencing block taken
    /// after it (tokens follow the server clock): the first acquisition through Redis
    /// after the fault, not an in-process handoff of an older tenure.
    pub first_acquisition: Option<Duration>,
    /// The longest time in which no `lock()` returned, from the fault until the first
    /// acquisition after the group was whole again.
    pub longest_pause: Duration,
    /// Critical sections granted in the window (asked before the group was whole,
    /// returned after the fault), and how many of those were told they lost the lock.
    pub granted: usize,
    pub granted_lost: usize,
    /// Guards held across the switch: acquired before the fault, released after every
    /// Sentinel named the new master.
    pub across: Survivors,
}

impl FailoverFigures {
    fn new(f: &FailoverEvent, records: &[Rec], topology: Topology) -> FailoverFigures {
        let records: Vec<&Rec> = records.iter().filter(|r| f.locks.contains(&r.lock)).collect();
        let since = |ns: u64| Duration::from_nanos(ns.saturating_sub(f.fault_ns));
        // A read-write lock's or semaphore's acquisitions have no token, and each is a
        // round trip: the first that returned after the fault.
        let after = |r: &&&Rec| match r.role {
            Role::Mutex => r.token > f.fault_ns / 1000 + TOKEN_MARGIN_US,
            _ => r.start > f.fault_ns,
        };
        let first_acquisition = records.iter().filter(after).map(|r| r.start).min().map(since);
        let mut starts: Vec<u64> = records.iter().map(|r| r.start).filter(|s| *s > f.fault_ns).collect();
        starts.sort_unstable();
        let until = starts.partition_point(|s| *s <= f.settled_ns);
        let points = std::iter::once(f.fault_ns).chain(starts.iter().take(until + 1).copied());
        let longest_pause =
            points.clone().zip(points.skip(1)).map(|(a, b)| Duration::from_nanos(b - a)).max().unwrap_or_default();
        let granted: Vec<&Rec> =
            records.iter().copied().filter(|r| r.asked < f.settled_ns && r.start > f.fault_ns).collect();
        let mut across = Survivors::default();
        for r in records.iter().filter(|r| r.start < f.fault_ns && r.released > f.named_ns) {
            across.add(r);
        }
        FailoverFigures {
            kind: f.kind,
            by: if topology == Topology::Cluster { "every node" } else { "every Sentinel" },
            from: f.from,
            to: f.to,
            locks: f.locks.clone(),
            named: since(f.named_ns),
            settled: since(f.settled_ns),
            first_acquisition,
            longest_pause,
            granted: granted.len(),
            granted_lost: granted.iter().filter(|r| r.lost()).count(),
            across,
        }
    }
}

impl fmt::Display for FailoverFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.first_acquisition.map_or("none".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        let locks: Vec<String> = self.locks.iter().map(|k| format!("lock-{k}")).collect();
        write!(
            f,
            "{} {} -> {} ({}): named by {} {:.2} s, whole again {:.1} s, first acquisition through Redis {first}, \
             longest pause {:.2} s; granted meanwhile {} (told lost {}); held across the switch {}",
            self.kind,
            self.from,
            self.to,
            if locks.is_empty() { "no lock".into() } else { locks.join(" ") },
            self.by,
            self.named.as_secs_f64(),
            self.settled.as_secs_f64(),
            self.longest_pause.as_secs_f64(),
            self.granted,
            self.granted_lost,
            self.across
        )
    }
}

/// What one move of a slot (`reshard`) did to the workers of its locks.
#[derive(Debug, Clone)]
pub struct ReshardFigures {
    pub slot: u16,
    pub locks: Vec<usize>,
    pub from: u16,
    pub to: u16,
    /// The lock was held, and waited for, when the move began.
    pub held: bool,
    pub waited: bool,
    /// Keys migrated.
    pub moved: usize,
    /// From `IMPORTING` until every master knew the new owner.
    pub took: Duration,
    /// Acquisitions of its locks that returned during the move, and how many of them
    /// were told they lost the lock (none should: a move loses nothing).
    pub during: usize,
    pub during_lost: usize,
    /// The longest time in which no `lock()` of its locks returned, from the start of
    /// the move until the first acquisition after its end.
    pub longest_pause: Duration,
    /// Critical sections of its locks that overlapped the move, by how they ended.
    pub overlapping: Survivors,
}

impl ReshardFigures {
    fn new(m: &ReshardEvent, records: &[Rec]) -> ReshardFigures {
        let records: Vec<&Rec> = records.iter().filter(|r| m.locks.contains(&r.lock)).collect();
        let during: Vec<&&Rec> = records.iter().filter(|r| r.start > m.start_ns && r.start < m.end_ns).collect();
        let mut starts: Vec<u64> = records.iter().map(|r| r.start).filter(|s| *s > m.start_ns).collect();
        starts.sort_unstable();
        let until = starts.partition_point(|s| *s <= m.end_ns);
        let points = std::iter::once(m.start_ns).chain(starts.iter().take(until + 1).copied());
        let longest_pause =
            points.clone().zip(points.skip(1)).map(|(a, b)| Duration::from_nanos(b - a)).max().unwrap_or_default();
        let mut overlapping = Survivors::default();
        for r in records.iter().filter(|r| r.start < m.end_ns && r.released > m.start_ns) {
            overlapping.add(r);
        }
        ReshardFigures {
            slot: m.slot,
            locks: m.locks.clone(),
            from: m.from,
            to: m.to,
            held: m.held,
            waited: m.waited,
            moved: m.moved,
            took: Duration::from_nanos(m.end_ns - m.start_ns),
            during: during.len(),
            during_lost: during.iter().filter(|r| r.lost()).count(),
            longest_pause,
            overlapping,
        }
    }
}

impl fmt::Display for ReshardFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let locks: Vec<String> = self.locks.iter().map(|k| format!("lock-{k}")).collect();
        write!(
            f,
            "slot {} ({}) {} -> {}: {}{}, {} keys moved in {:.2} s; acquisitions during it {} (told lost {}), longest \
             pause {:.2} s; sections overlapping it {}",
            self.slot,
            locks.join(" "),
            self.from,
            self.to,
            if self.held { "held" } else { "free" },
            if self.waited { " and waited for" } else { "" },
            self.moved,
            self.took.as_secs_f64(),
            self.during,
            self.during_lost,
            self.longest_pause.as_secs_f64(),
            self.overlapping
        )
    }
}

/// The outcome of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Critical sections recorded and checked.
    pub acquisitions: usize,
    /// Per lock.
    pub per_lock: Vec<usize>,
    /// What the run locked.
    pub lock: LockKind,
    /// Critical sections per role (readers and writers of a read-write lock).
    pub by_role: Vec<(Role, usize)>,
    /// Per lock: the most critical sections under way at once (readers sharing it,
    /// permits in use; 1 for a mutex unless holders overlapped).
    pub most_at_once: Vec<usize>,
    /// Per lock: the longest time between two acquisitions (waiters keep progressing).
    pub longest_gap: Vec<Duration>,
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
    /// Critical sections under way in a worker when it was SIGSTOPped (the guard
    /// returned before, the section ended after).
    pub caught_in_stop: usize,
    /// Overlapping critical sections where the earlier holder had lost its lease
    /// (allowed: that is what leases and fencing are for).
    pub overlaps_after_loss: usize,
    /// Overlapping critical sections where the earlier holder kept its lock and the
    /// later one, granted in a failover window, was told it lost it (allowed).
    pub overlaps_in_failover: usize,
    /// Duplicate tokens and refused writes excused the same way.
    pub clashes_in_failover: usize,
    /// Per failover, in order.
    pub failovers: Vec<FailoverFigures>,
    /// Per move of a slot (`reshard`), in order.
    pub reshards: Vec<ReshardFigures>,
    /// Per kind of fault on Redlock masters.
    pub masters: Vec<MasterFigures>,
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
    /// Per lock and failover: the first token of a block taken after it (of a holder
    /// that kept its lock) less the last token before it. Must be positive.
    pub rises_across_failovers: Vec<i128>,
    /// Per move of a slot: the first token of its lock after the move less the last one
    /// before it (holders that kept their lock). Must be positive.
    pub rises_across_reshards: Vec<i128>,
    /// Guards alive across a restart without persistence.
    pub survivors_restart: Survivors,
    /// Guards alive across a restart from the AOF.
    pub survivors_restart_aof: Survivors,
    /// What the workers lock on.
    pub topology: Topology,
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
    /// The run's directory, when kept (see `KEEP_ENV`).
    pub kept_dir: Option<PathBuf>,
    config: String,
}

impl Report {
    /// A report on `records` before the checks: what the run did, every kind of
    /// violation at 0.
    pub fn new(cfg: &Config, records: &[Rec], events: &Events) -> Report {
        let mut report = Report {
            topology: cfg.topology,
            lock: cfg.lock,
            failovers: events.failovers.iter().map(|f| FailoverFigures::new(f, records, cfg.topology)).collect(),
            reshards: events.reshards.iter().map(|m| ReshardFigures::new(m, records)).collect(),
            masters: if cfg.topology == Topology::Redlock {
                [Fault::MasterKill, Fault::MasterStop, Fault::MajorityStop]
                    .into_iter()
                    .map(|kind| MasterFigures::new(kind, &events.masters, records, cfg.locks))
                    .collect()
            } else {
                Vec::new()
            },
            acquisitions: records.len(),
            faults: events.injected.clone(),
            notes: events.notes.clone(),
            stops: events.stops.len(),
            config: format!(
                "{}topology {}, lock {}, {} procs x {} threads, {} s, {} locks, lease {:?}, seed {}, faults: {}",
                if cfg.no_exclusion { "CHECKER SELF-TEST (no exclusion between processes), " } else { "" },
                cfg.topology,
                match cfg.lock {
                    LockKind::Mutex => "mutex".to_string(),
                    LockKind::RwLock => format!("rwlock ({}% reads)", cfg.reads),
                    LockKind::Semaphore => format!("semaphore ({} permits)", cfg.permits),
                },
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
        let kinds: &[&'static str] = match cfg.lock {
            LockKind::Mutex => &[
                OVERLAP,
                FENCING_ORDER,
                DUPLICATE_TOKEN,
                STALE_ACCEPTED,
                REFUSED_WHILE_HELD,
                LOST_UPDATE,
                RELEASED_AFTER_WIPE,
                RELEASED_AFTER_STOP,
            ],
            LockKind::RwLock => &[WRITER_OVERLAP, LOST_UPDATE, RELEASED_AFTER_WIPE, RELEASED_AFTER_STOP],
            LockKind::Semaphore => &[TOO_MANY_HOLDERS, RELEASED_AFTER_WIPE, RELEASED_AFTER_STOP],
        };
        for kind in kinds {
            report.violations.insert(kind, 0);
        }
        report.by_role = [Role::Mutex, Role::Reader, Role::Writer, Role::Permit]
            .into_iter()
            .map(|role| (role, records.iter().filter(|r| r.role == role).count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        report.longest_gap = (0..cfg.locks)
            .map(|k| {
                let mut starts: Vec<u64> = records.iter().filter(|r| r.lock == k).map(|r| r.start).collect();
                starts.sort_unstable();
                let gap = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
                Duration::from_nanos(gap)
            })
            .collect();
        report.per_lock = (0..cfg.locks).map(|k| records.iter().filter(|r| r.lock == k).count()).collect();
        report.max_wait =
            Duration::from_nanos(records.iter().map(|r| r.start.saturating_sub(r.asked)).max().unwrap_or(0));
        report.lost_leases = records.iter().filter(|r| r.lost()).count();
        report.stale_writes_refused = records.iter().filter(|r| r.write == WriteState::Refused).count();
        report.writes_after_is_lost = records.iter().filter(|r| r.lost_before_write).count();
        report.lost_in_stop = records
            .iter()
            .filter(|r| {
                r.lost()
                    && events.stops.iter().any(|s| s.worker == r.worker && r.asked < s.cont_ns && r.end > s.stop_ns)
            })
            .count();
        report
    }

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

    /// The failover lines: per kind a summary, then each failover.
    fn fmt_failovers(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for kind in FailoverKind::ALL {
            let mine: Vec<&FailoverFigures> = self.failovers.iter().filter(|x| x.kind == kind).collect();
            if mine.is_empty() && kind == FailoverKind::Unplanned {
                continue;
            }
            let max =
                |d: fn(&FailoverFigures) -> Duration| mine.iter().map(|x| d(x)).max().unwrap_or_default().as_secs_f64();
            let mut across = Survivors::default();
            for x in &mine {
                across.merge(&x.across);
            }
            let cluster = self.topology == Topology::Cluster;
            writeln!(
                f,
                "{}: {} -> at most: named by {} {:.2} s, whole again {:.1} s, first acquisition through \
                 Redis {:.2} s (none after {}), longest pause {:.2} s; granted meanwhile {} (told lost {}); held \
                 across the switch {across}",
                match (kind, cluster) {
                    (FailoverKind::Graceful, false) => "failover (SENTINEL FAILOVER)",
                    (FailoverKind::Kill, false) => "failover-kill (SIGKILL of the master)",
                    (FailoverKind::Unplanned, false) => "UNPLANNED failover (by the Sentinels, no fault)",
                    (FailoverKind::Graceful, true) => "cluster-failover (CLUSTER FAILOVER on a replica)",
                    (FailoverKind::Kill, true) => "cluster-failover-kill (SIGKILL of a master)",
                    (FailoverKind::Unplanned, true) => "UNPLANNED failover (by the cluster, no fault)",
                },
                mine.len(),
                if cluster { "every node" } else { "every Sentinel" },
                max(|x| x.named),
                max(|x| x.settled),
                max(|x| x.first_acquisition.unwrap_or_default()),
                mine.iter().filter(|x| x.first_acquisition.is_none()).count(),
                max(|x| x.longest_pause),
                mine.iter().map(|x| x.granted).sum::<usize>(),
                mine.iter().map(|x| x.granted_lost).sum::<usize>(),
            )?;
        }
        writeln!(
            f,
            "overlaps excused in failover windows (the later holder granted there and told): {}; duplicate tokens \
             or refused writes excused so: {}",
            self.overlaps_in_failover, self.clashes_in_failover
        )?;
        for x in &self.failovers {
            writeln!(f, "  {x}")?;
        }
        Ok(())
    }

    /// The reshard lines: a summary, then each move.
    fn fmt_reshards(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut overlapping = Survivors::default();
        for m in &self.reshards {
            overlapping.merge(&m.overlapping);
        }
        let max =
            |d: fn(&ReshardFigures) -> Duration| self.reshards.iter().map(d).max().unwrap_or_default().as_secs_f64();
        writeln!(
            f,
            "reshard (a held lock's slot moved, key by key): {} ({} held and waited for) -> at most {:.2} s, longest \
             pause {:.2} s; acquisitions during the moves {} (told lost {}); sections overlapping a move {overlapping}",
            self.reshards.len(),
            self.reshards.iter().filter(|m| m.held && m.waited).count(),
            max(|m| m.took),
            max(|m| m.longest_pause),
            self.reshards.iter().map(|m| m.during).sum::<usize>(),
            self.reshards.iter().map(|m| m.during_lost).sum::<usize>(),
        )?;
        for m in &self.reshards {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }

    pub fn violation(&mut self, kind: &'static str, what: String) {
        *self.violations.entry(kind).or_default() += 1;
        if self.examples.len() < 20 {
            self.examples.push(format!("{kind}: {what}"));
        }
    }
}

pub const OVERLAP: &str = "overlap";
pub const FENCING_ORDER: &str = "fencing-order";
pub const DUPLICATE_TOKEN: &str = "duplicate-token";
pub const STALE_ACCEPTED: &str = "stale-write-accepted";
pub const REFUSED_WHILE_HELD: &str = "refused-while-held";
pub const LOST_UPDATE: &str = "counter-lost-update";
pub const RELEASED_AFTER_WIPE: &str = "released-after-restart";
pub const RELEASED_AFTER_STOP: &str = "released-after-stop";
pub const WRITER_OVERLAP: &str = "writer-overlap";
pub const TOO_MANY_HOLDERS: &str = "too-many-holders";

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
        let faults: Vec<String> =
            Fault::all(self.topology).iter().map(|k| format!("{k} {}", self.injected(*k))).collect();
        let roles: Vec<String> = self.by_role.iter().map(|(r, n)| format!("{r:?} {n}")).collect();
        let gaps: Vec<String> = self.longest_gap.iter().map(|g| format!("{:.2} s", g.as_secs_f64())).collect();
        writeln!(
            f,
            "by role: {}; most holders at once per lock {:?}; longest time without an acquisition per lock [{}]",
            roles.join(", "),
            self.most_at_once,
            gaps.join(", ")
        )?;
        writeln!(f, "faults injected: {}", faults.join(", "))?;
        writeln!(
            f,
            "lost leases reported: {} ({} in workers while SIGSTOPped, {} stops of a holder catching {} sections; \
             client stats: {}); \
             overlaps after a lost lease (allowed): {}; stale fenced writes refused: {}; writes by guards already \
             is_lost(): {}",
            self.lost_leases,
            self.lost_in_stop,
            self.stops,
            self.caught_in_stop,
            w.stats_leases_lost,
            self.overlaps_after_loss,
            self.stale_writes_refused,
            self.writes_after_is_lost
        )?;
        match self.topology {
            Topology::Single => {
                for (name, s) in [
                    ("restart (no persistence)", &self.survivors_restart),
                    ("restart-aof", &self.survivors_restart_aof),
                ] {
                    writeln!(f, "guards alive across {name}: {s}")?;
                }
            }
            Topology::Sentinel | Topology::Cluster => self.fmt_failovers(f)?,
            Topology::Redlock => {
                for m in &self.masters {
                    writeln!(f, "{m}")?;
                }
            }
        }
        if self.topology == Topology::Cluster {
            self.fmt_reshards(f)?;
        }
        let rises = |rises: &[i128]| match (rises.iter().min(), rises.iter().max()) {
            (Some(lo), Some(hi)) => format!("{} first tokens after one checked, rise {lo}..{hi}", rises.len()),
            _ => "no token on both sides of one".into(),
        };
        match (self.lock, self.topology) {
            (LockKind::RwLock, _) => writeln!(
                f,
                "no fencing tokens (a read-write lock has none): a writer's exclusion checked by the intervals of \
                 the critical sections, readers allowed to share; the counter is the writers'"
            )?,
            (LockKind::Semaphore, _) => writeln!(
                f,
                "no fencing tokens (a semaphore has none): the permit count checked by the intervals of the \
                 critical sections"
            )?,
            (_, Topology::Redlock) => writeln!(
                f,
                "fencing order checked over the whole run, across {} fault(s) on masters (a master started again \
                 has lost its fence counter; tokens must rise all the same); the fenced resource and the counters, \
                 on a server no fault touches, over the whole run",
                self.masters.iter().map(|m| m.count).sum::<usize>()
            )?,
            (_, Topology::Single) => writeln!(
                f,
                "fencing order checked across {} epoch(s) (restarts without persistence lose the fence counter; \
                 tokens must rise all the same: {}); the fenced resource and the counter, wiped by such a \
                 restart, within each",
                self.epochs,
                rises(&self.rises_across_wipes)
            )?,
            (_, Topology::Sentinel) => writeln!(
                f,
                "fencing order checked over the whole run, across {} failover(s) (a new master's fence counter \
                 may be stale; tokens must rise all the same: {}); the fenced resource and the counters, on a \
                 server no fault touches, over the whole run",
                self.failovers.len(),
                rises(&self.rises_across_failovers)
            )?,
            (_, Topology::Cluster) => writeln!(
                f,
                "fencing order checked over the whole run, across {} failover(s) (a promoted replica's fence \
                 counter may be stale; tokens must rise all the same: {}) and {} reshard(s) (the counter moves with \
                 its lock: {}); the fenced resource and the counters, on a server no fault touches, over the whole run",
                self.failovers.len(),
                rises(&self.rises_across_failovers),
                self.reshards.len(),
                rises(&self.rises_across_reshards)
            )?,
        }
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
             (without a round trip {}), grants from another process {}",
            w.started,
            w.killed,
            w.finished,
            w.failures.len(),
            w.notifier_reconnects,
            w.renewals,
            w.handoffs,
            w.local_handoffs,
            w.grants
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
