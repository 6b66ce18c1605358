//! The outcome of a run, and how it prints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::config::{Config, Fault};
use super::controller::Events;
use super::record::{Rec, Totals, WriteState};

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
    /// The run's directory, when kept (see `KEEP_ENV`).
    pub kept_dir: Option<PathBuf>,
    config: String,
}

impl Report {
    /// A report on `records` before the checks: what the run did, every kind of
    /// violation at 0.
    pub fn new(cfg: &Config, records: &[Rec], events: &Events) -> Report {
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
        for kind in [
            OVERLAP,
            FENCING_ORDER,
            DUPLICATE_TOKEN,
            STALE_ACCEPTED,
            REFUSED_WHILE_HELD,
            LOST_UPDATE,
            RELEASED_AFTER_WIPE,
        ] {
            report.violations.insert(kind, 0);
        }
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
