//! The watchdog: one `redis-mutex-watchdog` thread per client renews every live guard
//! with `auto_renew` at a third of its lease, all due guards in one pipelined batch.
//! A renewal that finds another owner (or no key) marks the guard lost; one that
//! fails on a connection error is retried until the lease would have run out, and
//! then marks the guard lost too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::keys::LockKeys;
use crate::stats::bump;
use crate::sync::lock;
use crate::wait::Core;

/// Longest the thread sleeps without looking at the table.
const IDLE: Duration = Duration::from_secs(1);

/// Most renewals sent in one pipeline.
pub(crate) const BATCH: usize = 512;

/// The lease state of one guard, shared by the guard and the watchdog.
#[derive(Debug)]
pub(crate) struct Lease {
    pub keys: LockKeys,
    pub token: String,
    /// The fencing token Redis issued with this tenure, with fencing: the first of a
    /// block of `handoff_limit + 1`, the rest of which go to in-process handoffs.
    pub fence_base: Option<u64>,
    lease_ms: AtomicU64,
    /// In-process handoffs of this tenure so far (see `Core::hand_over_locally`).
    local_handoffs: AtomicU32,
    lost: AtomicBool,
    released: AtomicBool,
    /// When Redis last confirmed the lease (acquisition or renewal), and when to retry
    /// after a failed renewal.
    times: Mutex<(Instant, Option<Instant>)>,
}

impl Lease {
    pub fn new(keys: LockKeys, token: String, lease_ms: u64, confirmed: Instant, fence_base: Option<u64>) -> Lease {
        Lease {
            keys,
            token,
            fence_base,
            lease_ms: AtomicU64::new(lease_ms),
            local_handoffs: AtomicU32::new(0),
            lost: AtomicBool::new(false),
            released: AtomicBool::new(false),
            times: Mutex::new((confirmed, None)),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the lease lost; `true` the first time (so it is counted and logged once).
    pub fn mark_lost(&self, core: &Core, why: &str) -> bool {
        if self.lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        bump(&core.stats.leases_lost);
        log::warn!("redis-mutex: lost lock {}: {why}", self.keys.key);
        true
    }

    /// Redis confirmed ownership for `lease_ms` from `at`.
    pub fn confirmed(&self, at: Instant, lease_ms: u64) {
        self.lease_ms.store(lease_ms, Ordering::Release);
        *lock(&self.times) = (at, None);
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms())
    }

    /// In-process handoffs of this tenure so far.
    pub fn local_handoffs(&self) -> u32 {
        self.local_handoffs.load(Ordering::Acquire)
    }

    /// Counts one more in-process handoff; returns how many there have been.
    pub fn count_local_handoff(&self) -> u32 {
        self.local_handoffs.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether Redis confirmed this lease less than a renewal period (lease/3) before
    /// `now`, with no renewal failed since. Past that, the lock may have been lost
    /// (lease ran out while the process stalled, Redis restarted) without the watchdog
    /// knowing yet, so it is not handed on without asking Redis.
    pub fn is_fresh(&self, now: Instant) -> bool {
        let (confirmed, retry) = *lock(&self.times);
        retry.is_none() && now < confirmed + self.lease() / 3
    }

    /// The lease length, as last granted or extended.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms.load(Ordering::Acquire)
    }

    /// When the next renewal is due.
    fn due(&self) -> Instant {
        self.schedule().0
    }

    /// When the next renewal is due, and how much earlier it may join a batch: a
    /// scheduled renewal may go half-way early, a retry after a failed one not at all
    /// (its delay is shorter than that window, so a server that fails fast would
    /// otherwise be retried in a tight loop until the lease runs out).
    fn schedule(&self) -> (Instant, Duration) {
        let (confirmed, retry) = *lock(&self.times);
        match retry {
            Some(at) => (at, Duration::ZERO),
            None => (confirmed + self.lease() / 3, self.lease() / 6),
        }
    }
}

#[derive(Default)]
struct Shared {
    leases: Mutex<HashMap<u64, Arc<Lease>>>,
    /// When the thread next looks at the table unless woken (`None`: it is working).
    sleeping_until: Mutex<Option<Instant>>,
}

type Table = Arc<Shared>;

/// The client's handle on its watchdog. Dropping it stops the thread.
pub(crate) struct Watchdog {
    table: Table,
    next_id: AtomicU64,
    wake: Sender<()>,
}

impl Watchdog {
    pub fn spawn(core: Arc<Core>) -> std::io::Result<(Watchdog, JoinHandle<()>)> {
        let table: Table = Arc::default();
        let (wake, rx) = crossbeam_channel::bounded(1);
        let t = table.clone();
        let handle =
            std::thread::Builder::new().name("redis-mutex-watchdog".into()).spawn(move || run(&core, &t, &rx))?;
        Ok((Watchdog { table, next_id: AtomicU64::new(0), wake }, handle))
    }

    /// Starts renewing `lease`; returns the id to stop with.
    pub fn register(&self, lease: Arc<Lease>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let due = lease.due();
        lock(&self.table.leases).insert(id, lease);
        // Wake the thread only if it would sleep past this lease's first renewal: a
        // wake-up per acquisition would cost a context switch on the hot path.
        if lock(&self.table.sleeping_until).is_some_and(|until| due < until) {
            let _ = self.wake.try_send(());
        }
        id
    }

    /// Stops renewing; after this returns, no renewal of this lease is started.
    pub fn deregister(&self, id: u64, lease: &Lease) {
        lease.released.store(true, Ordering::Release);
        lock(&self.table.leases).remove(&id);
    }

    /// Guards being renewed.
    pub fn len(&self) -> usize {
        lock(&self.table.leases).len()
    }
}

fn run(core: &Core, table: &Table, wake: &Receiver<()>) {
    log::debug!("redis-mutex: watchdog started");
    loop {
        let now = Instant::now();
        // Renew whatever is at least half-way to due, so guards taken at different
        // moments share a batch instead of a round trip each.
        let (batch, next_due): (Vec<(u64, Arc<Lease>)>, Option<Instant>) = {
            let t = lock(&table.leases);
            let mut batch = Vec::new();
            let mut next_due: Option<Instant> = None;
            for (id, lease) in t.iter() {
                let (due, early) = lease.schedule();
                if due <= now + early {
                    batch.push((*id, lease.clone()));
                } else {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                }
            }
            (batch, next_due)
        };
        for chunk in batch.chunks(BATCH) {
            renew(core, table, chunk);
        }
        if !batch.is_empty() {
            continue;
        }
        // Never asleep for long: a new guard due later than this needs no wake-up,
        // which keeps the thread off the acquisition path for leases ≥ 3 × IDLE.
        let wait_until = next_due.unwrap_or(now + IDLE).min(now + IDLE);
        *lock(&table.sleeping_until) = Some(wait_until);
        // A lease registered between the scan and here is covered: it saw this time.
        if next_due_changed(table, wait_until) {
            *lock(&table.sleeping_until) = None;
            continue;
        }
        let woke = wake.recv_deadline(wait_until);
        *lock(&table.sleeping_until) = None;
        match woke {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                log::debug!("redis-mutex: watchdog stopped");
                return;
            }
        }
    }
}

/// Whether a lease registered while the thread was not yet asleep is due before `until`.
fn next_due_changed(table: &Table, until: Instant) -> bool {
    lock(&table.leases).values().any(|l| l.due() < until)
}

fn renew(core: &Core, table: &Table, chunk: &[(u64, Arc<Lease>)]) {
    let sent = Instant::now();
    let items: Vec<(&LockKeys, &str, u64)> =
        chunk.iter().map(|(_, l)| (&l.keys, l.token.as_str(), l.lease_ms.load(Ordering::Acquire))).collect();
    match core.backend.extend(&items) {
        Ok(owned) => {
            let mut gone = Vec::new();
            for (i, ((id, lease), (_, _, lease_ms))) in chunk.iter().zip(&items).enumerate() {
                // `extend` answers one flag per item; a short answer counts as not owned.
                if owned.get(i).copied().unwrap_or(false) {
                    bump(&core.stats.renewals);
                    lease.confirmed(sent, *lease_ms);
                } else {
                    // A guard released while this renewal was in flight lost nothing.
                    if !lease.released.load(Ordering::Acquire) {
                        lease.mark_lost(
                            core,
                            "a renewal found another owner or no lock (lease ran out or force-unlocked)",
                        );
                    }
                    gone.push(*id);
                }
            }
            if !gone.is_empty() {
                let mut t = lock(&table.leases);
                for id in gone {
                    t.remove(&id);
                }
            }
        }
        Err(e) => {
            let mut gone = Vec::new();
            for (id, lease) in chunk {
                let (confirmed, _) = *lock(&lease.times);
                if sent >= confirmed + lease.lease() {
                    lease.mark_lost(core, &format!("renewals failed until the lease ran out ({e})"));
                    gone.push(*id);
                } else {
                    let retry = sent + (lease.lease() / 10).clamp(Duration::from_millis(1), Duration::from_millis(250));
                    lock(&lease.times).1 = Some(retry);
                }
            }
            log::debug!("redis-mutex: renewal of {} leases failed, retrying: {e}", chunk.len());
            let mut t = lock(&table.leases);
            for id in gone {
                t.remove(&id);
            }
        }
    }
}
