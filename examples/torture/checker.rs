//! The checker: the records of a run against the faults that were injected, one
//! function per kind of violation.
//!
//! **Epochs**: a restart without persistence forgets the fence counters, the fenced
//! resource and the counter, which all live in the run's Redis. Tokens must rise across
//! it all the same (a lost fence counter restarts above the server clock); the resource
//! and the counter are checked per epoch between such restarts. A critical section that
//! spans one (acquired before the kill, ended after) is "tainted": it holds a lock the
//! new server never granted, so its writes count as possibly stale and its refused
//! write is no violation.
//!
//! **Failover windows** (`--topology sentinel`): from a failover fault until the group
//! is whole again (every Sentinel names the new master, the old one replicates it), two
//! servers may act as master: the old one still takes writes after `SENTINEL FAILOVER`
//! until the Sentinels demote it, and a client that has not heard of the switch still
//! locks there. Replication is asynchronous, so a lock the old master granted may be
//! missing on the new one (after a `kill -9`, its last writes). Either way two holders
//! can overlap, and the crate's promise is that one of them is *told*: the holder whose
//! lock the surviving master lacks. By grant order (fencing tokens, which follow the
//! one clock every server here shares) that may be the *second* holder (granted by the
//! old master after the new one granted the first), so inside a window an overlap, a
//! duplicate token or a refused write is allowed when a holder granted in the window
//! was told it lost the lock, first or second. Outside windows, and on the single
//! topology (no windows), the rules are those above. Nothing else is relaxed: fencing
//! tokens must rise across failovers (each new master's `max(counter, TIME)` follows
//! the clock even when its counter is stale), and the counters and the fenced resource
//! live on a server no fault touches, so they are checked over the whole run.
//!
//! **On a cluster** (`--topology cluster`) a failover window covers only the locks whose
//! slot the failed master served: the other masters go on alone, and their locks keep
//! the strict rules. A **reshard** (a slot moved key by key while its lock is used)
//! opens no window: at every moment one node serves each key (`MIGRATE` moves it
//! atomically, and a node that lacks it redirects), so nothing is excused there.
//!
//! **Read-write locks and semaphores** (`--lock rwlock|semaphore`) have no fencing
//! tokens: the token checks give way to a writer's exclusion and the permit count
//! (`shared.rs`), by the same epochs and windows; the counter is a writer's.

mod shared;

use std::collections::HashMap;

use super::config::{Config, LockKind};
use super::controller::{Events, FailoverEvent, ReshardEvent, RestartEvent, Snapshot};
use super::record::{Rec, SetState, Unlock, WriteState};
use super::report::{
    DUPLICATE_TOKEN, FENCING_ORDER, LOST_UPDATE, OVERLAP, REFUSED_WHILE_HELD, RELEASED_AFTER_STOP, RELEASED_AFTER_WIPE,
    Report, STALE_ACCEPTED, TOKEN_MARGIN_US,
};

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn describe(r: &Rec) -> String {
    format!(
        "lock-{} {:?} worker {} thread {} token {} [{:.3} ms .. {:.3} ms] lost={} unlock={:?} recovery={:?}",
        r.lock,
        r.role,
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

/// The epochs of a run: the restarts without persistence that separate them.
struct Epochs<'a> {
    wipes: Vec<&'a RestartEvent>,
}

impl<'a> Epochs<'a> {
    fn new(events: &'a Events) -> Epochs<'a> {
        Epochs { wipes: events.restarts.iter().filter(|r| !r.persistent).collect() }
    }

    /// The epoch of a lock that `lock()` returned at `t`: one returned after the new
    /// server was spawned came from it (an old grant would have had to take longer
    /// than the 700 ms the server stays down to return).
    fn at(&self, t: u64) -> usize {
        self.wipes.iter().filter(|w| w.spawn_ns <= t).count()
    }

    /// Acquired before a wipe (nothing is acquired while Redis is down, so a guard that
    /// arrived before the new server was spawned came from the old one) and used after.
    fn tainted(&self, r: &Rec) -> bool {
        self.wipes.iter().any(|w| r.asked < w.kill_ns && r.start < w.spawn_ns && r.end >= w.kill_ns)
    }

    /// The epoch of the server that applied a write sent at `sent` and acknowledged at
    /// `ack`: after every kill before it was sent, before every kill after the reply.
    /// `None` when it may have reached either side of a restart.
    fn applied_in(&self, sent: u64, ack: u64) -> Option<usize> {
        let after = self.wipes.iter().filter(|w| w.kill_ns <= sent).count();
        let maybe_after = self.wipes.iter().filter(|w| w.kill_ns < ack).count();
        (after == maybe_after).then_some(after)
    }
}

/// The failovers of a run, in which two servers may have granted the same lock.
struct Windows<'a> {
    failovers: &'a [FailoverEvent],
}

impl Windows<'_> {
    /// `lock()` was waiting at some point of a failover window of its lock's master:
    /// asked before the group was whole again (a demoted master grants nothing after
    /// that), returned after the fault. Only such a holder may have been granted by a
    /// master on its way out.
    fn granted_in(&self, r: &Rec) -> bool {
        self.failovers.iter().any(|f| f.locks.contains(&r.lock) && r.asked < f.settled_ns && r.start > f.fault_ns)
    }

    /// A holder granted in a failover window that was told it lost the lock: what
    /// excuses the other side of a clash with it.
    fn excuses(&self, r: &Rec) -> bool {
        r.lost() && self.granted_in(r)
    }
}

/// Checks the records of a run against the faults that were injected: every kind of
/// violation is counted (0 included), the first ones described.
pub fn check(cfg: &Config, records: &[Rec], events: &Events, last: &Snapshot) -> Report {
    let mut report = Report::new(cfg, records, events);
    let epochs = Epochs::new(events);
    let windows = Windows { failovers: &events.failovers };
    report.epochs = epochs.wipes.len() + 1;
    count_survivors(&mut report, records, events);
    released_after_wipe(&mut report, records, &epochs);
    released_after_stop(&mut report, records, events);
    for k in 0..cfg.locks {
        let mut mine: Vec<&Rec> = records.iter().filter(|r| r.lock == k).collect();
        mine.sort_by_key(|r| r.start);
        report.most_at_once.push(shared::most_at_once(&mine));
        match cfg.lock {
            LockKind::Mutex => {
                overlaps(&mut report, &mine, &epochs, &windows);
                fencing_order(&mut report, &mine, &epochs, &windows, &events.reshards);
                duplicate_tokens(&mut report, &mine, &windows);
                stale_writes_accepted(&mut report, &mine, &epochs);
                refused_while_held(&mut report, &mine, &epochs, &windows);
            }
            LockKind::RwLock => shared::writer_exclusion(&mut report, &mine, &windows),
            LockKind::Semaphore => shared::permit_count(&mut report, &mine, cfg.permits as usize, &windows),
        }
    }
    // A semaphore's holders do not write the counter.
    if cfg.lock != LockKind::Semaphore {
        lost_updates(&mut report, cfg, records, &epochs, last);
    }
    report
}

/// Guards alive across a restart of each kind, and how each learned its fate.
fn count_survivors(report: &mut Report, records: &[Rec], events: &Events) {
    for (persistent, survivors) in [(false, &mut report.survivors_restart), (true, &mut report.survivors_restart_aof)] {
        for r in records {
            if events.restarts.iter().any(|e| e.persistent == persistent && r.start < e.kill_ns && r.end > e.up_ns) {
                survivors.add(r);
            }
        }
    }
}

/// **Released after restart**: a guard whose lock a restart without persistence forgot
/// was released normally (its release must find the lock gone).
fn released_after_wipe(report: &mut Report, records: &[Rec], epochs: &Epochs<'_>) {
    for r in records {
        if r.unlock == Unlock::Ok && epochs.wipes.iter().any(|w| r.start < w.kill_ns && r.end > w.up_ns) {
            report.violation(
                RELEASED_AFTER_WIPE,
                format!("{} released normally after a restart that forgot its lock", describe(r)),
            );
        }
    }
}

/// **Released after a stop**: a critical section under way when its worker was
/// SIGSTOPped (for longer than the lease, so no renewal could keep it) was released
/// normally after the SIGCONT, and its guard never said it was lost: its release must
/// have found the lease gone (or not been confirmed, an error). Also counts the
/// sections a stop caught, and how many of them were told.
fn released_after_stop(report: &mut Report, records: &[Rec], events: &Events) {
    for r in records {
        if !events.stops.iter().any(|s| s.worker == r.worker && r.start < s.stop_ns && r.end > s.stop_ns) {
            continue;
        }
        report.caught_in_stop += 1;
        if r.unlock == Unlock::Ok && !r.lost() {
            report.violation(
                RELEASED_AFTER_STOP,
                format!("{} released normally after its worker was stopped past the lease", describe(r)),
            );
        }
    }
}

/// **Overlap**: two critical sections on one lock whose intervals ([lock returned, last
/// operation done]) intersect are a violation unless the *first* holder's guard
/// reported its lease lost (watchdog, `is_held`, or `unlock` returning `LockLost`).
/// "First" is the order in which Redis granted the lock: by epoch, then by fencing
/// token, not the start timestamps (a worker stopped between Redis granting it the lock
/// and `lock()` returning starts *after* holders that came later). A later holder that
/// overlaps a first one that kept its lock broke exclusion, even if it lost its own
/// lease afterwards, except when it was granted in a failover window and told (see the
/// module's docs). `mine`: one lock's records, by start.
fn overlaps(report: &mut Report, mine: &[&Rec], epochs: &Epochs<'_>, windows: &Windows<'_>) {
    for (i, a) in mine.iter().enumerate() {
        for b in &mine[i + 1..] {
            if b.start >= a.end {
                break;
            }
            let (first, second) =
                if (epochs.at(b.start), b.token) < (epochs.at(a.start), a.token) { (b, a) } else { (a, b) };
            if first.lost() {
                report.overlaps_after_loss += 1;
            } else if windows.excuses(second) {
                report.overlaps_in_failover += 1;
            } else {
                report.violation(
                    OVERLAP,
                    format!("{} overlaps {} (the first holder kept its lock)", describe(second), describe(first)),
                );
            }
        }
    }
}

/// **Fencing order**: per lock, over the whole run (every epoch, so across restarts
/// without persistence, failovers and reshards too), the tokens of holders that kept
/// their lock, ordered by start, rise strictly. Also records how much they rose across
/// each such restart, failover and move of the lock's slot.
fn fencing_order(
    report: &mut Report,
    mine: &[&Rec],
    epochs: &Epochs<'_>,
    windows: &Windows<'_>,
    reshards: &[ReshardEvent],
) {
    let kept: Vec<&Rec> = mine.iter().copied().filter(|r| !r.lost()).collect();
    for w in kept.windows(2) {
        if w[1].token <= w[0].token {
            let across = if epochs.at(w[0].start) == epochs.at(w[1].start) {
                ""
            } else {
                " (across a restart without persistence)"
            };
            report.violation(FENCING_ORDER, format!("{} started after {}{across}", describe(w[1]), describe(w[0])));
        }
    }
    for (i, w) in epochs.wipes.iter().enumerate() {
        let before = kept.iter().rfind(|r| r.start < w.spawn_ns);
        let after = kept.iter().find(|r| r.start >= w.spawn_ns && epochs.at(r.start) == i + 1);
        if let (Some(b), Some(a)) = (before, after) {
            report.rises_across_wipes.push(a.token as i128 - b.token as i128);
        }
    }
    for f in windows.failovers.iter().filter(|f| mine.first().is_some_and(|r| f.locks.contains(&r.lock))) {
        let before = kept.iter().rfind(|r| r.start < f.fault_ns);
        // The first block taken after the fault (tokens follow the server clock in µs).
        let after = kept.iter().find(|r| r.token > f.fault_ns / 1000 + TOKEN_MARGIN_US);
        if let (Some(b), Some(a)) = (before, after) {
            report.rises_across_failovers.push(a.token as i128 - b.token as i128);
        }
    }
    for m in reshards.iter().filter(|m| mine.first().is_some_and(|r| m.locks.contains(&r.lock))) {
        let before = kept.iter().rfind(|r| r.start < m.start_ns);
        let after = kept.iter().find(|r| r.start > m.end_ns);
        if let (Some(b), Some(a)) = (before, after) {
            report.rises_across_reshards.push(a.token as i128 - b.token as i128);
        }
    }
}

/// **Duplicate token**: no token of a lock is issued twice, lost holders' included,
/// except by two masters in a failover window (one clock, so the same microsecond
/// gives the same token) when one holder was granted there and told.
fn duplicate_tokens(report: &mut Report, mine: &[&Rec], windows: &Windows<'_>) {
    let mut seen: HashMap<u64, &Rec> = HashMap::new();
    for r in mine {
        if let Some(prev) = seen.insert(r.token, r) {
            if windows.excuses(prev) || windows.excuses(r) {
                report.clashes_in_failover += 1;
            } else {
                report.violation(DUPLICATE_TOKEN, format!("{} and {}", describe(prev), describe(r)));
            }
        }
    }
}

/// **Stale write accepted**: an accepted fenced write whose token is lower than one the
/// resource had already accepted in the same epoch (that write acknowledged before this
/// one was sent); a write is placed in the epoch whose server applied it, and one that
/// may have reached either side of a restart is left out.
fn stale_writes_accepted(report: &mut Report, mine: &[&Rec], epochs: &Epochs<'_>) {
    for epoch in 0..=epochs.wipes.len() {
        let mut accepted: Vec<&Rec> = mine
            .iter()
            .copied()
            .filter(|r| r.write == WriteState::Accepted && epochs.applied_in(r.wr_sent, r.wr_ack) == Some(epoch))
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
}

/// **Refused while held**: the resource refused the write of an untainted holder that
/// kept its lock (a higher token existed while it held the lock), unless that token's
/// holder was granted in a failover window and told it lost the lock.
fn refused_while_held(report: &mut Report, mine: &[&Rec], epochs: &Epochs<'_>, windows: &Windows<'_>) {
    for r in mine.iter().filter(|r| r.write == WriteState::Refused && !r.lost() && !epochs.tainted(r)) {
        if mine.iter().any(|t| t.token == r.wr_top && windows.excuses(t)) {
            report.clashes_in_failover += 1;
            continue;
        }
        report.violation(
            REFUSED_WHILE_HELD,
            format!("{} was refused (resource had seen token {})", describe(r), r.wr_top),
        );
    }
}

/// **Counter (lost updates)**: per lock and epoch, the counter read at the epoch's end
/// is compared with I = the increments (acknowledged `SET`s before that reading) of
/// holders that kept their lock. Extra increments are fine and expected (a SIGKILLed
/// worker's last `SET`, a `SET` whose reply was lost, a tainted `SET`), so only a
/// counter *lower* than I can show lost updates. But a holder that lost its lease
/// (SIGSTOP, pause, restart) may legitimately write back a stale value, erasing at most
/// the increments applied between its `GET` and its `SET`; the allowance is the number
/// of counted increments whose `SET` window intersects such a stale [GET, SET] window.
/// Violation: counter < I - allowance. A killed worker cannot erase anything: it is
/// killed while it holds a valid lease (faults come one at a time), so its last `SET`
/// can only add.
fn lost_updates(report: &mut Report, cfg: &Config, records: &[Rec], epochs: &Epochs<'_>, last: &Snapshot) {
    for epoch in 0..=epochs.wipes.len() {
        let snap = if epoch < epochs.wipes.len() { epochs.wipes[epoch].before.as_ref() } else { Some(last) };
        let Some(snap) = snap else { continue };
        let mut row = Vec::new();
        for k in 0..cfg.locks {
            let counted: Vec<&Rec> = records
                .iter()
                .filter(|r| {
                    r.lock == k
                        && !epochs.tainted(r)
                        && !r.lost()
                        && epochs.at(r.start) == epoch
                        && r.set == SetState::Acked
                        && r.set_ack < snap.sent_ns
                })
                .collect();
            let stale = records.iter().filter(|r| {
                r.lock == k && (r.lost() || epochs.tainted(r)) && matches!(r.set, SetState::Acked | SetState::Unknown)
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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::config::{Fault, Topology, WorkerCommand};
    use super::super::controller::FailoverKind;
    use super::super::record::{Recovery, Role};
    use super::super::report::{TOO_MANY_HOLDERS, WRITER_OVERLAP};
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
            topology: Topology::Single,
            lock: LockKind::Mutex,
            permits: 3,
            reads: 80,
        }
    }

    /// A clean critical section on lock 0 from `start` to `start + 100` (ns), with an
    /// acknowledged counter increment and an accepted fenced write.
    fn section(token: u64, start: u64) -> Rec {
        Rec {
            worker: 0,
            thread: 0,
            lock: 0,
            role: Role::Mutex,
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
            released: start + 110,
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

    /// Two holders of lock 0 at once: the first (token 1, [5_000, 5_100]) kept its
    /// lock; the second (token 2, asked at 5_040, [5_050, 5_150]) was told it lost it
    /// when `second_told`; a failover window from `window.0` to `window.1` of the master
    /// of lock 0.
    fn clash(second_told: bool, window: Option<(u64, u64)>) -> Report {
        clash_on(second_told, window, vec![0])
    }

    /// [`clash`], the failed master serving `locks`.
    fn clash_on(second_told: bool, window: Option<(u64, u64)>, locks: Vec<usize>) -> Report {
        let mut second = section(2, 5_050);
        if second_told {
            second.unlock = Unlock::Lost;
        }
        let failovers = window.map(|(fault_ns, settled_ns)| FailoverEvent {
            kind: FailoverKind::Graceful,
            from: 1,
            to: 2,
            fault_ns,
            named_ns: fault_ns + 1,
            settled_ns,
            locks: locks.clone(),
        });
        let events = Events { failovers: failovers.into_iter().collect(), ..Events::default() };
        let mut cfg = config();
        cfg.topology = Topology::Sentinel;
        cfg.faults = vec![Fault::Failover];
        check(&cfg, &[section(1, 5_000), second], &events, &Snapshot { sent_ns: 9_000, values: vec![Some(2)] })
    }

    #[test]
    fn a_holder_granted_in_a_failover_window_and_told_excuses_the_overlap() {
        let report = clash(true, Some((4_000, 6_000)));
        assert_eq!(report.violation_count(), 0, "{report}");
        assert_eq!(report.overlaps_in_failover, 1, "{report}");
    }

    #[test]
    fn an_overlap_is_a_violation_outside_a_failover_window_or_when_nobody_was_told() {
        for (second_told, window) in [
            (true, None),
            // The second holder's lock() returned before the fault: granted before it.
            (true, Some((5_060, 6_000))),
            // It asked after the group was whole again.
            (true, Some((4_000, 5_030))),
            (false, Some((4_000, 6_000))),
        ] {
            let report = clash(second_told, window);
            assert_eq!(report.violations[OVERLAP], 1, "told {second_told}, window {window:?}:\n{report}");
        }
    }

    #[test]
    fn a_cluster_failover_excuses_nothing_on_the_locks_of_other_masters() {
        // The master of lock 1 failed over; lock 0's master went on alone.
        let report = clash_on(true, Some((4_000, 6_000)), vec![1]);
        assert_eq!(report.violations[OVERLAP], 1, "{report}");
        assert_eq!(report.overlaps_in_failover, 0, "{report}");
    }

    /// Sections of a read-write lock or semaphore (`lock`), no fault: each `(role,
    /// asked, start, lost)` lasts 100 ns from `start`.
    fn shared(lock: LockKind, permits: u32, sections: &[(Role, u64, u64, bool)]) -> Report {
        let records: Vec<Rec> = sections
            .iter()
            .map(|&(role, asked, start, lost)| {
                let mut r = section(0, start);
                (r.role, r.asked, r.set, r.write) = (role, asked, SetState::NotSent, WriteState::NotSent);
                r.lost_at_end = lost;
                r
            })
            .collect();
        let cfg = Config { lock, permits, ..config() };
        check(&cfg, &records, &Events::default(), &Snapshot { sent_ns: 9_000, values: vec![Some(0)] })
    }

    #[test]
    fn readers_share_a_read_write_lock_and_a_writer_overlapping_anyone_is_a_violation() {
        let (r, w) = (Role::Reader, Role::Writer);
        let readers = shared(LockKind::RwLock, 0, &[(r, 900, 1_000, false), (r, 950, 1_050, false)]);
        assert_eq!(readers.violation_count(), 0, "{readers}");
        assert_eq!(readers.most_at_once, vec![2], "{readers}");
        for other in [r, w] {
            let report = shared(LockKind::RwLock, 0, &[(other, 900, 1_000, false), (w, 950, 1_050, false)]);
            assert_eq!(report.violations[WRITER_OVERLAP], 1, "{other:?} and a writer:\n{report}");
        }
    }

    #[test]
    fn an_overlap_is_excused_only_for_a_holder_told_it_lost_that_may_have_come_first() {
        let (r, w) = (Role::Reader, Role::Writer);
        // The reader lost its lease and asked before the writer returned: its lease ran
        // out, then the writer was granted.
        let report = shared(LockKind::RwLock, 0, &[(r, 900, 1_000, true), (w, 950, 1_050, false)]);
        assert_eq!(report.violation_count(), 0, "{report}");
        assert_eq!(report.overlaps_after_loss, 1, "{report}");
        // The writer was told, but it asked only after the reader held the lock: granted
        // second, while the reader kept it.
        let report = shared(LockKind::RwLock, 0, &[(r, 900, 1_000, false), (w, 1_010, 1_050, true)]);
        assert_eq!(report.violations[WRITER_OVERLAP], 1, "{report}");
    }

    #[test]
    fn more_holders_than_permits_at_once_is_a_violation_unless_one_that_came_first_was_told() {
        let p = Role::Permit;
        let three = [(p, 900, 1_000, false), (p, 900, 1_010, false), (p, 900, 1_020, false)];
        assert_eq!(shared(LockKind::Semaphore, 3, &three).violation_count(), 0);
        let mut four = three.to_vec();
        four.push((p, 1_025, 1_030, false));
        let report = shared(LockKind::Semaphore, 3, &four);
        assert_eq!(report.violations[TOO_MANY_HOLDERS], 1, "{report}");
        assert_eq!(report.most_at_once, vec![4], "{report}");
        // The first permit's holder was told: its lease ran out before the fourth came.
        four[0].3 = true;
        let report = shared(LockKind::Semaphore, 3, &four);
        assert_eq!(report.violation_count(), 0, "{report}");
    }

    #[test]
    fn a_section_stopped_past_its_lease_and_released_normally_is_a_violation() {
        use super::super::controller::StopEvent;
        use super::super::report::RELEASED_AFTER_STOP;
        let events =
            Events { stops: vec![StopEvent { worker: 0, stop_ns: 1_050, cont_ns: 5_000 }], ..Events::default() };
        let mut caught = section(1, 1_000);
        caught.end = 5_010;
        let last = Snapshot { sent_ns: 9_000, values: vec![Some(1)] };
        let report = check(&config(), std::slice::from_ref(&caught), &events, &last);
        assert_eq!(report.violations[RELEASED_AFTER_STOP], 1, "{report}");
        assert_eq!(report.caught_in_stop, 1, "{report}");
        caught.unlock = Unlock::Lost;
        let report = check(&config(), &[caught], &events, &last);
        assert_eq!(report.violation_count(), 0, "told at release:\n{report}");
    }
}
