//! The watchdog: one `redis-mutex-watchdog` thread per client renews every tenure with
//! `auto_renew` at a third of its lease, all due ones in one pipelined batch. A renewal
//! that finds another owner (or no key) marks the tenure lost; one that fails on a
//! connection error is retried until the lease would have run out, and then marks it
//! lost too. The same thread releases the acquisitions whose reply was lost (`orphans`).
//! It works with the backend, the counters and the registry, not with `Core`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::orphans::Orphans;
use super::registry::Registry;
use super::tenure::Tenure;
use crate::backend::{Backend, ReleaseArgs, ReleaseSink, Released, Renewal};
use crate::clock::{Stamp, later};
use crate::error::{Error, Result};
use crate::stats::{Counters, bump};
use crate::sync::{lock, panic_message};

/// Longest the thread sleeps without looking at the table.
const IDLE: Duration = Duration::from_secs(1);

/// Most renewals sent in one pipeline.
pub(crate) const BATCH: usize = 512;

/// How long to wait before looking at a tenure again whose extend is in flight.
const BUSY: Duration = Duration::from_millis(10);

/// What the thread works with.
pub(crate) struct Renewer {
    pub backend: Arc<dyn Backend>,
    pub stats: Arc<Counters>,
    pub registry: Arc<Registry>,
    pub orphans: Arc<Orphans>,
    /// For the release of an orphan: a client's turn (see `ReleaseArgs::limit`).
    pub handoff_limit: u32,
}

#[derive(Default)]
struct Shared {
    tenures: Mutex<HashMap<u64, Arc<Tenure>>>,
    /// Live tenures without `auto_renew`: not renewed, but checked when the server
    /// turns out to be another one.
    unrenewed: Mutex<Vec<Weak<Tenure>>>,
    /// The registry's count of server changes when last looked at.
    server_changes: AtomicU64,
    /// When the thread next looks at the table unless woken (`None`: it is working).
    sleeping_until: Mutex<Option<Instant>>,
}

type Table = Arc<Shared>;

/// The client's handle on its watchdog. Dropping it stops the thread.
pub(crate) struct Watchdog {
    table: Table,
    next_id: AtomicU64,
    /// Dropping the last strong reference stops the thread; others hold weak ones.
    wake: Arc<Sender<()>>,
}

impl Watchdog {
    pub fn spawn(renewer: Renewer) -> Result<Watchdog> {
        let table: Table = Arc::default();
        let (wake, rx) = crossbeam_channel::bounded(1);
        let t = table.clone();
        std::thread::Builder::new()
            .name("redis-mutex-watchdog".into())
            .spawn(move || run(&renewer, &t, &rx))
            .map_err(|e| Error::spawn("redis-mutex-watchdog", e))?;
        Ok(Watchdog { table, next_id: AtomicU64::new(0), wake: Arc::new(wake) })
    }

    /// Wakes the thread, if it still runs, without keeping it alive.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let wake = Arc::downgrade(&self.wake);
        move || {
            if let Some(wake) = wake.upgrade() {
                let _ = wake.try_send(());
            }
        }
    }

    /// Keeps an eye on `tenure`, which is not renewed: it is checked when the server
    /// turns out to be another one.
    pub fn watch(&self, tenure: &Arc<Tenure>) {
        let mut unrenewed = lock(&self.table.unrenewed);
        if unrenewed.len() >= 64 && unrenewed.len().is_power_of_two() {
            unrenewed.retain(|t| t.upgrade().is_some_and(|t| !t.is_released()));
        }
        unrenewed.push(Arc::downgrade(tenure));
    }

    /// Starts renewing `tenure`.
    pub fn register(&self, tenure: &Arc<Tenure>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Stamp::now();
        let due = later(now.mono, tenure.schedule(now).0);
        *lock(tenure.renewing()) = Some(id);
        lock(&self.table.tenures).insert(id, tenure.clone());
        // Wake the thread only if it would sleep past this lease's first renewal: a
        // wake-up per acquisition would cost a context switch on the hot path.
        if lock(&self.table.sleeping_until).is_some_and(|until| due < until) {
            let _ = self.wake.try_send(());
        }
    }

    /// Stops renewing `tenure`, if it was; after this returns, no renewal of it starts.
    pub fn deregister(&self, tenure: &Tenure) {
        tenure.set_released();
        if let Some(id) = lock(tenure.renewing()).take() {
            lock(&self.table.tenures).remove(&id);
        }
    }

    /// Tenures being renewed.
    pub fn len(&self) -> usize {
        lock(&self.table.tenures).len()
    }
}

fn run(r: &Renewer, table: &Table, wake: &Receiver<()>) {
    log::debug!("redis-mutex: watchdog started");
    loop {
        // A panic in one pass (a bug) must not stop every renewal of the client.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pass(r, table)));
        let wait_until = match pass {
            Ok(Pass::Again) => continue,
            Ok(Pass::Sleep(until)) => until,
            Err(panic) => {
                log::error!("redis-mutex: watchdog pass panicked ({}); resuming", panic_message(&panic));
                later(Instant::now(), Duration::from_millis(100))
            }
        };
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

/// What the watchdog does after a pass.
enum Pass {
    /// It sent renewals: look again at once (more may be due).
    Again,
    /// Nothing was due: sleep until then unless woken.
    Sleep(Instant),
}

fn pass(r: &Renewer, table: &Table) -> Pass {
    let orphans_due = release_orphans(r);
    let now = Stamp::now();
    let changes = r.registry.server_changes();
    if table.server_changes.swap(changes, Ordering::AcqRel) != changes {
        recheck_all(r, table, now);
    }
    // Renew whatever is at least half-way to due, so guards taken at different
    // moments share a batch instead of a round trip each. A lease whose `extend` is
    // in flight waits for it: that reply confirms it.
    let (batch, next_due): (Vec<(u64, Arc<Tenure>)>, Option<Instant>) = {
        let mut t = lock(&table.tenures);
        t.retain(|_, tenure| !tenure.ran_out_unrenewed(&r.stats, &r.registry, now));
        let mut batch = Vec::new();
        let mut next_due: Option<Instant> = None;
        for (id, lease) in t.iter() {
            let (until, early) = lease.schedule(now);
            let due = if until > early {
                later(now.mono, until)
            } else if lease.try_requests().is_some() {
                batch.push((*id, lease.clone()));
                continue;
            } else {
                later(now.mono, BUSY)
            };
            next_due = Some(next_due.map_or(due, |d| d.min(due)));
        }
        (batch, next_due)
    };
    for chunk in batch.chunks(BATCH) {
        renew(r, table, chunk);
    }
    if !batch.is_empty() {
        return Pass::Again;
    }
    // Never asleep for long: a new guard due later than this needs no wake-up,
    // which keeps the thread off the acquisition path for leases ≥ 3 × IDLE.
    let idle = later(now.mono, IDLE);
    Pass::Sleep([next_due, orphans_due].into_iter().flatten().fold(idle, Instant::min))
}

/// The server is another one now (failover, restart): every renewed lease is renewed
/// now (none is handed on in memory until that is confirmed), and every lease that is
/// not renewed is checked, so that locks the server lacks are marked lost at once
/// rather than at their next renewal or use.
fn recheck_all(r: &Renewer, table: &Table, now: Stamp) {
    let renewed: Vec<Arc<Tenure>> = lock(&table.tenures).values().cloned().collect();
    for tenure in &renewed {
        tenure.recheck(now);
    }
    let unrenewed: Vec<Arc<Tenure>> = {
        let mut list = lock(&table.unrenewed);
        list.retain(|t| t.upgrade().is_some_and(|t| !t.is_released() && !t.is_lost()));
        list.iter().filter_map(Weak::upgrade).collect()
    };
    log::info!(
        "redis-mutex: checking {} renewed and {} unrenewed locks on the new server",
        renewed.len(),
        unrenewed.len()
    );
    for tenure in unrenewed {
        let holds = if tenure.keys.is_shared() {
            super::shared::still_holds(&*r.backend, &tenure)
        } else {
            r.backend.holder(&tenure.keys).map(|h| h.is_some_and(|h| h.token == tenure.token))
        };
        match holds {
            Ok(true) => {}
            Ok(false) if tenure.is_released() => {}
            Ok(false) => {
                tenure.mark_lost(
                    &r.stats,
                    &r.registry,
                    "the server is another one now (failover or restart) and lacks it",
                );
            }
            Err(e) => log::debug!("redis-mutex: could not check {} on the new server: {e}", tenure.keys.key),
        }
    }
}

/// Whether a lease registered while the thread was not yet asleep is due before `until`.
fn next_due_changed(table: &Table, until: Instant) -> bool {
    let now = Stamp::now();
    lock(&table.tenures).values().any(|l| later(now.mono, l.schedule(now).0) < until)
}

fn renew(r: &Renewer, table: &Table, chunk: &[(u64, Arc<Tenure>)]) {
    // One request at a time per lease; one whose `extend` went out meanwhile is left
    // to that extend's reply.
    let held: Vec<_> = chunk.iter().filter_map(|(id, l)| l.try_requests().map(|g| (*id, l, g))).collect();
    if held.is_empty() {
        return;
    }
    let items: Vec<Renewal<'_>> = held.iter().map(|(_, l, _)| (&l.keys, l.token.as_str(), l.lease_ms())).collect();
    let sent = Stamp::now();
    let replies = r.backend.extend(&items);
    if let Err(e) = &replies {
        log::debug!("redis-mutex: renewal of {} leases failed, retrying: {e}", items.len());
    }
    let mut gone = Vec::new();
    for (i, ((id, lease, _), (_, _, lease_ms))) in held.iter().zip(&items).enumerate() {
        let reply = match &replies {
            // `extend` answers one result per item; a short answer counts as not owned.
            Ok(each) => each.get(i).cloned().unwrap_or(Ok(false)),
            Err(e) => Err(e.clone()),
        };
        match reply {
            Ok(true) => {
                bump(&r.stats.renewals);
                lease.confirmed(sent, r.backend.vouched_ms(*lease_ms));
            }
            // A guard released while this renewal was in flight lost nothing.
            Ok(false) if lease.is_released() => gone.push(*id),
            Ok(false) => {
                let why = "a renewal found another owner or no lock (lease ran out or force-unlocked)";
                lease.mark_lost(&r.stats, &r.registry, why);
                gone.push(*id);
            }
            Err(Error::WrongType { .. }) => {
                // The hash that was the lock is gone: someone wrote over its key.
                if !lease.is_released() {
                    lease.mark_lost(
                        &r.stats,
                        &r.registry,
                        "its key now holds a value of another type, written by something else; \
                         use another lock name or key prefix",
                    );
                }
                gone.push(*id);
            }
            Err(e) => {
                if replies.is_ok() {
                    log::debug!("redis-mutex: renewal of {} failed, retrying: {e}", lease.keys.key);
                }
                if lease.renewal_failed(&r.stats, &r.registry, sent, r.backend.vouched_ms(*lease_ms), &e) {
                    gone.push(*id);
                }
            }
        }
    }
    if !gone.is_empty() {
        let mut t = lock(&table.tenures);
        for id in gone {
            t.remove(&id);
        }
    }
}

/// Releases the acquisitions whose reply was lost and whose time has come (see
/// `Orphans`), owner-checked, with the ordinary release (which passes the lock to the
/// next waiting client, if any); a waiter of this client is woken to try. Returns when
/// the next one is due.
fn release_orphans(r: &Renewer) -> Option<Instant> {
    for mut orphan in r.orphans.due(Instant::now()) {
        let args = ReleaseArgs {
            token: &orphan.token,
            lease_ms: orphan.lease_ms,
            local_handoffs: 0,
            limit: r.handoff_limit,
            fence_span: 0,
            handoff: None,
            mark: 0,
            replicas: None,
        };
        let released = if orphan.keys.is_shared() {
            let sent = Stamp::now();
            let released = super::shared::shared_of(&*r.backend).and_then(|b| b.release(&orphan.keys, &orphan.token));
            super::shared::hand_out(&r.registry, &r.orphans, &orphan.keys, sent, released).map(|(r, _)| r)
        } else {
            r.backend.release(&orphan.keys, args).map(|outcome| outcome != Released::NotOwner)
        };
        match released {
            Ok(false) => {} // never acquired, or its lease ran out
            Ok(true) => {
                bump(&r.stats.orphans_released);
                r.registry.wake_first(&orphan.keys.name);
                log::info!("redis-mutex: released {}, acquired by a request whose reply was lost", orphan.keys.key);
            }
            Err(e) if e.is_transient() && orphan.retry(Instant::now()) => r.orphans.put_back(orphan),
            Err(e) => log::debug!("redis-mutex: gave up releasing {} after a lost reply: {e}", orphan.keys.key),
        }
    }
    r.orphans.next_due()
}
