//! What the faults on Redlock masters did to the workers, per kind of fault.

use std::fmt;
use std::time::Duration;

use super::super::config::Fault;
use super::super::controller::MasterEvent;
use super::super::record::Rec;
use super::Survivors;

/// The figures of every fault of one kind on Redlock masters.
#[derive(Debug, Clone)]
pub struct MasterFigures {
    pub fault: Fault,
    pub count: usize,
    /// The longest time a master was away (killed until up again, or frozen).
    pub longest_outage: Duration,
    /// The longest time in which no `lock()` returned (any lock), from a fault until
    /// the first acquisition after its master came back.
    pub longest_pause: Duration,
    /// Acquisitions that returned while a master was away, and how many of them were
    /// told they lost the lock.
    pub during: usize,
    pub during_lost: usize,
    /// Critical sections that overlapped a fault, by how they ended.
    pub overlapping: Survivors,
    /// Per lock and fault: the first token after it less the last one before it
    /// (holders that kept their lock). Must be positive.
    pub rises: Vec<i128>,
}

impl MasterFigures {
    /// The figures of the faults of kind `fault` among `events`, on `locks` locks.
    pub fn new(fault: Fault, events: &[MasterEvent], records: &[Rec], locks: usize) -> MasterFigures {
        let mine: Vec<&MasterEvent> = events.iter().filter(|e| e.fault == fault).collect();
        let mut starts: Vec<u64> = records.iter().map(|r| r.start).collect();
        starts.sort_unstable();
        let mut figures = MasterFigures {
            fault,
            count: mine.len(),
            longest_outage: Duration::ZERO,
            longest_pause: Duration::ZERO,
            during: 0,
            during_lost: 0,
            overlapping: Survivors::default(),
            rises: Vec::new(),
        };
        for e in &mine {
            figures.longest_outage = figures.longest_outage.max(Duration::from_nanos(e.end_ns - e.start_ns));
            let after = starts.partition_point(|s| *s <= e.start_ns);
            let until = starts.partition_point(|s| *s <= e.end_ns);
            let points = std::iter::once(e.start_ns).chain(starts[after..].iter().take(until - after + 1).copied());
            let pause = points.clone().zip(points.skip(1)).map(|(a, b)| Duration::from_nanos(b - a)).max();
            figures.longest_pause = figures.longest_pause.max(pause.unwrap_or_default());
            let during: Vec<&Rec> = records.iter().filter(|r| r.start > e.start_ns && r.start < e.end_ns).collect();
            figures.during += during.len();
            figures.during_lost += during.iter().filter(|r| r.lost()).count();
            for r in records.iter().filter(|r| r.start < e.end_ns && r.released > e.start_ns) {
                figures.overlapping.add(r);
            }
            for k in 0..locks {
                let kept = || records.iter().filter(move |r| r.lock == k && !r.lost());
                let before = kept().filter(|r| r.start < e.start_ns).max_by_key(|r| r.start);
                let first = kept().filter(|r| r.start > e.end_ns).min_by_key(|r| r.start);
                if let (Some(b), Some(a)) = (before, first) {
                    figures.rises.push(a.token as i128 - b.token as i128);
                }
            }
        }
        figures
    }
}

impl fmt::Display for MasterFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.fault {
            Fault::MasterKill => "master-kill (SIGKILL of one master, started again empty, sits out a lease)",
            Fault::MasterStop => "master-stop (SIGSTOP of one master for 1.5 leases)",
            Fault::MajorityStop => "majority-stop (SIGSTOP of 3 of the 5 masters for a lease: no quorum)",
            _ => self.fault.name(),
        };
        let rises = match (self.rises.iter().min(), self.rises.iter().max()) {
            (Some(lo), Some(hi)) => format!("{lo}..{hi}"),
            _ => "none on both sides".into(),
        };
        write!(
            f,
            "{what}: {} -> longest outage {:.2} s, longest pause in acquisitions {:.2} s; acquisitions during them {} \
             (told lost {}); sections overlapping them {}; fencing tokens across them rose {rises}",
            self.count,
            self.longest_outage.as_secs_f64(),
            self.longest_pause.as_secs_f64(),
            self.during,
            self.during_lost,
            self.overlapping
        )
    }
}
