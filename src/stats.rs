use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a client's counters, from [`LockClient::stats`](crate::LockClient::stats).
///
/// Counters only grow; [`since`](Stats::since) gives the counts of an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Locks acquired (by any of `lock`, `try_lock*`), handoffs included.
    pub acquisitions: u64,
    /// Acquisitions that had to wait: the first attempt found the lock held.
    pub contended_acquisitions: u64,
    /// Acquire attempts sent to Redis (one round trip each).
    pub attempts: u64,
    /// Locks released by this client (explicitly or on drop), handoffs included.
    pub releases: u64,
    /// Releases that handed the lock straight to a waiting thread of this client.
    pub handoffs: u64,
    /// Of those, handoffs without a round trip: the lock stayed this client's in Redis
    /// (same owner token, lease renewed by the watchdog) and passed between threads.
    pub local_handoffs: u64,
    /// Sleeps ended by a wake-up: a release message, a local release or a handoff.
    pub wakeups_notified: u64,
    /// Sleeps ended by their time bound (remaining lease, polling fallback, deadline).
    pub wakeups_timeout: u64,
    /// Times the notifier lost its pub/sub connection and subscribed again.
    pub notifier_reconnects: u64,
    /// Lease renewals sent by the watchdog.
    pub renewals: u64,
    /// Guards found to have lost their lock (by the watchdog or on use).
    pub leases_lost: u64,
    /// Locks released by the client on its own because the reply to the request that
    /// acquired them was lost (the caller got an error instead of a guard).
    pub orphans_released: u64,
    /// Pub/sub messages this client's notifier received (release notices addressed to
    /// it, and broadcasts): what a release costs the fleet in messages.
    pub messages_received: u64,
    /// Of `messages_received`, those a waiting thread read from the subscriber
    /// connection itself: one thread wake-up less than when the notifier thread reads
    /// and wakes the waiter (see `ARCHITECTURE.md`, "A waiter reads its own messages").
    pub messages_read_by_waiters: u64,
    /// Acquisitions granted by another client's release, which made a waiting thread of
    /// this client the owner in the same step: no attempt of its own. (Read-write locks
    /// and semaphores: grants by any release, this client's own included.)
    pub grants: u64,
    /// Read locks of [`RwLock`](crate::RwLock)s acquired (also counted in
    /// `acquisitions`).
    pub read_acquisitions: u64,
    /// Write locks of [`RwLock`](crate::RwLock)s acquired (also counted in
    /// `acquisitions`).
    pub write_acquisitions: u64,
    /// [`Semaphore`](crate::Semaphore) permits acquired (also counted in
    /// `acquisitions`).
    pub permit_acquisitions: u64,
    /// Read locks that joined a read share this client already held, in memory (no
    /// round trip; also counted in `read_acquisitions`).
    pub read_joins: u64,
}

impl Stats {
    /// The counts between `earlier` (a snapshot of the same client) and this one.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn run() -> redis_mutex::Result<()> {
    /// # let client = redis_mutex::LockClient::builder().build_unchecked("redis://127.0.0.1:1/")?;
    /// let before = client.stats();
    /// // ... work ...
    /// let during = client.stats().since(&before);
    /// assert_eq!(during.acquisitions, 0);
    /// # Ok(()) }
    /// # run().unwrap();
    /// ```
    pub fn since(&self, earlier: &Stats) -> Stats {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Stats {
            acquisitions: d(self.acquisitions, earlier.acquisitions),
            contended_acquisitions: d(self.contended_acquisitions, earlier.contended_acquisitions),
            attempts: d(self.attempts, earlier.attempts),
            releases: d(self.releases, earlier.releases),
            handoffs: d(self.handoffs, earlier.handoffs),
            local_handoffs: d(self.local_handoffs, earlier.local_handoffs),
            wakeups_notified: d(self.wakeups_notified, earlier.wakeups_notified),
            wakeups_timeout: d(self.wakeups_timeout, earlier.wakeups_timeout),
            notifier_reconnects: d(self.notifier_reconnects, earlier.notifier_reconnects),
            renewals: d(self.renewals, earlier.renewals),
            leases_lost: d(self.leases_lost, earlier.leases_lost),
            orphans_released: d(self.orphans_released, earlier.orphans_released),
            messages_received: d(self.messages_received, earlier.messages_received),
            messages_read_by_waiters: d(self.messages_read_by_waiters, earlier.messages_read_by_waiters),
            grants: d(self.grants, earlier.grants),
            read_acquisitions: d(self.read_acquisitions, earlier.read_acquisitions),
            write_acquisitions: d(self.write_acquisitions, earlier.write_acquisitions),
            permit_acquisitions: d(self.permit_acquisitions, earlier.permit_acquisitions),
            read_joins: d(self.read_joins, earlier.read_joins),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub acquisitions: AtomicU64,
    pub contended_acquisitions: AtomicU64,
    pub attempts: AtomicU64,
    pub releases: AtomicU64,
    pub handoffs: AtomicU64,
    pub local_handoffs: AtomicU64,
    pub wakeups_notified: AtomicU64,
    pub wakeups_timeout: AtomicU64,
    pub notifier_reconnects: AtomicU64,
    pub renewals: AtomicU64,
    pub leases_lost: AtomicU64,
    pub orphans_released: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_read_by_waiters: AtomicU64,
    pub grants: AtomicU64,
    pub read_acquisitions: AtomicU64,
    pub write_acquisitions: AtomicU64,
    pub permit_acquisitions: AtomicU64,
    pub read_joins: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            acquisitions: g(&self.acquisitions),
            contended_acquisitions: g(&self.contended_acquisitions),
            attempts: g(&self.attempts),
            releases: g(&self.releases),
            handoffs: g(&self.handoffs),
            local_handoffs: g(&self.local_handoffs),
            wakeups_notified: g(&self.wakeups_notified),
            wakeups_timeout: g(&self.wakeups_timeout),
            notifier_reconnects: g(&self.notifier_reconnects),
            renewals: g(&self.renewals),
            leases_lost: g(&self.leases_lost),
            orphans_released: g(&self.orphans_released),
            messages_received: g(&self.messages_received),
            messages_read_by_waiters: g(&self.messages_read_by_waiters),
            grants: g(&self.grants),
            read_acquisitions: g(&self.read_acquisitions),
            write_acquisitions: g(&self.write_acquisitions),
            permit_acquisitions: g(&self.permit_acquisitions),
            read_joins: g(&self.read_joins),
        }
    }
}
