//! The checks of read-write locks and semaphores (`--lock rwlock|semaphore`), which have
//! no fencing tokens: a writer never overlaps any other holder, and never more holders
//! than permits at once, by the intervals of their critical sections.
//!
//! **Who came first.** Without tokens, the order in which Redis granted two holders is
//! known only as far as their calls tell: holder `a`'s grant came between `a.asked` and
//! `a.start`, so `a` may have been granted before `b` only if `a.asked < b.start`. An
//! overlap is allowed, as for the mutex, only where the holder that may have come first
//! was told it lost its lease (its lease ran out, so Redis could grant again), or where
//! one of them was granted in a failover window and told. Weaker than the mutex's
//! token order (a waiter that asked long ago "may have come first" of many), so it
//! relies on holders being told rarely and only for a reason: the report counts them.

use super::super::record::{Rec, Role};
use super::super::report::{Report, TOO_MANY_HOLDERS, WRITER_OVERLAP};
use super::{Windows, describe};

/// `a` may have been granted before `b`, and was told it lost its lease.
fn lost_first(a: &Rec, b: &Rec) -> bool {
    a.lost() && a.asked < b.start
}

/// **Writer overlap**: a writer's critical section intersects another holder's (reader
/// or writer) of the same lock, and neither may have come first and been told, nor was
/// granted in a failover window and told. Readers may overlap each other. `mine`: one
/// lock's records, by start.
pub(super) fn writer_exclusion(report: &mut Report, mine: &[&Rec], windows: &Windows<'_>) {
    for (i, a) in mine.iter().enumerate() {
        for b in &mine[i + 1..] {
            if b.start >= a.end {
                break;
            }
            if a.role != Role::Writer && b.role != Role::Writer {
                continue;
            }
            if lost_first(a, b) || lost_first(b, a) {
                report.overlaps_after_loss += 1;
            } else if windows.excuses(a) || windows.excuses(b) {
                report.overlaps_in_failover += 1;
            } else {
                report.violation(
                    WRITER_OVERLAP,
                    format!("{} overlaps {} (neither was told it lost the lock)", describe(b), describe(a)),
                );
            }
        }
    }
}

/// **Too many holders**: at the start of a critical section, more sections of the same
/// semaphore are under way than it has permits, not counting those that may have come
/// before the others' latest grant and were told they lost their lease (Redis counted
/// their permit free once it ran out), nor those granted in a failover window and told.
pub(super) fn permit_count(report: &mut Report, mine: &[&Rec], permits: usize, windows: &Windows<'_>) {
    let mut active: Vec<&Rec> = Vec::new();
    for b in mine {
        active.retain(|a| a.end > b.start);
        active.push(b);
        if active.len() <= permits {
            continue;
        }
        let came_first = |a: &Rec| active.iter().any(|c| !std::ptr::eq(*c, a) && lost_first(a, c));
        let excused = active.iter().filter(|a| came_first(a) || windows.excuses(a)).count();
        if active.len() - excused > permits {
            let all: Vec<String> = active.iter().map(|a| describe(a)).collect();
            report.violation(
                TOO_MANY_HOLDERS,
                format!("{} holders of {permits} permits at once: {}", active.len() - excused, all.join("; ")),
            );
        } else {
            report.overlaps_after_loss += 1;
        }
    }
}

/// The most critical sections of one lock under way at once (`mine` by start): readers
/// that shared it, or permits in use.
pub(super) fn most_at_once(mine: &[&Rec]) -> usize {
    let mut active: Vec<u64> = Vec::new();
    let mut most = 0;
    for b in mine {
        active.retain(|end| *end > b.start);
        active.push(b.end);
        most = most.max(active.len());
    }
    most
}
