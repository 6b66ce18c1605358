use std::time::Duration;

use crate::error::{Error, Result};

/// The longest lease accepted: 2^40 ms, about 34 years. Longer leases would overflow
/// Redis's expiry arithmetic.
pub const MAX_LEASE: Duration = Duration::from_millis(1 << 40);

/// How each acquisition of a [`Mutex`](crate::Mutex) behaves.
///
/// ```
/// use redis_mutex::MutexOptions;
/// use std::time::Duration;
///
/// let opts = MutexOptions::default().lease(Duration::from_secs(10)).fencing(true);
/// assert_eq!(opts.get_lease(), Duration::from_secs(10));
/// assert!(opts.get_auto_renew());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutexOptions {
    lease: Duration,
    auto_renew: bool,
    fencing: bool,
    wait_replicas: Option<(u32, Duration)>,
}

impl Default for MutexOptions {
    fn default() -> Self {
        MutexOptions { lease: Duration::from_secs(30), auto_renew: true, fencing: false, wait_replicas: None }
    }
}

/// What [`MutexOptions::wait_replicas`] asks of the server once checked: `WAIT count
/// timeout_ms` after each write that gives the lock to someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replicas {
    pub count: u32,
    pub timeout_ms: u64,
}

impl MutexOptions {
    /// The lease (time to live) of each acquisition: if the holder neither releases
    /// nor renews within it, Redis drops the lock and another client may take it.
    /// With `auto_renew` on, the client renews it every `lease / 3` while the guard lives.
    ///
    /// Must be at least 1 ms and at most [`MAX_LEASE`]; anything else makes locking
    /// return [`Error::InvalidOption`]. Defaults to 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Whether the client's watchdog thread keeps the lease alive while the guard
    /// lives. Turn it off when the lease is an upper bound on the critical section.
    /// Defaults to `true`.
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = on;
        self
    }

    /// Whether each acquisition gets a fencing token
    /// ([`MutexGuard::fencing_token`](crate::MutexGuard::fencing_token)): a number that
    /// rises strictly with every acquisition of this lock name. Not by one: an
    /// acquisition through Redis takes a block of `handoff_limit + 1` tokens and hands
    /// the rest, in order, to the threads of its client the lock passes to without a
    /// round trip; the next acquisition through Redis starts above the block. One
    /// never-expiring counter key per lock name.
    ///
    /// Tokens never go backwards, even when the counter is lost (evicted, forgotten by
    /// a restart without persistence) or stale: every block is taken as
    /// `counter = max(counter, server clock in µs) + block`, so tokens are about the
    /// server's time in µs since 1970 (about 1.8e15). This assumes that the Redis
    /// server's clock moves forward (across restarts and failovers too) and that
    /// tokens are taken slower than one per µs on average, blocks counted whole (a
    /// block per acquisition through Redis): otherwise the counter runs ahead of the
    /// clock, and a lost counter would restart below it. Tokens stay exact until the
    /// year 2255 (2^53 µs); past 2^53 locking with fencing returns an error rather than
    /// a token that could repeat. Defaults to `false`.
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// Returns a lock only once `replicas` replicas of the Redis master have
    /// acknowledged it, waiting at most `timeout` for them (Redis's `WAIT`, sent in the
    /// same round trip as the script that acquired).
    ///
    /// It applies wherever this client is given the lock through Redis: an acquire
    /// attempt, a handoff from another thread of the client through Redis, a grant
    /// from another client's release (that release announces the grant only once its
    /// own `WAIT` succeeded, or the grantee confirms it with one), and
    /// [`MutexGuard::extend`](crate::MutexGuard::extend). When fewer replicas
    /// acknowledge in time, an acquisition is released again and the call returns
    /// [`Error::ReplicasNotAcknowledged`], which is transient: `lock()` and
    /// `try_lock_for` retry it (within the client's outage tolerance or the
    /// deadline), `try_lock` returns it. An `extend` that falls short keeps the lock
    /// with the lease it had. The watchdog's renewals do not wait. In-process handoffs
    /// between threads of the client do not either: the lock does not change in
    /// Redis, it stays under the acknowledged acquisition.
    ///
    /// What it buys: an acknowledged acquisition is on `replicas` replicas, so it
    /// survives a failover to one of them. What it does not: it is not consensus. A
    /// failover to a replica that did not acknowledge (or one promoted before it
    /// caught up with later renewals) can still lose the lock, and Redis replication
    /// stays asynchronous after the `WAIT`.
    ///
    /// `replicas` must be at least 1 and `timeout` at least 1 ms (Redis's `WAIT 0`
    /// would wait forever) and shorter than the lease; anything else makes locking
    /// return [`Error::InvalidOption`]. Keep `timeout` well under the client's
    /// `reservation_timeout` (1 s by default): a grant to another client waits for it
    /// before it is announced. Each attempt waits up to `timeout` while fewer replicas
    /// answer, also one that finds the lock held. Off by default.
    ///
    /// ```
    /// use redis_mutex::MutexOptions;
    /// use std::time::Duration;
    ///
    /// let opts = MutexOptions::default().wait_replicas(1, Duration::from_millis(100));
    /// assert_eq!(opts.get_wait_replicas(), Some((1, Duration::from_millis(100))));
    /// ```
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = Some((replicas, timeout));
        self
    }

    /// The configured lease.
    pub fn get_lease(&self) -> Duration {
        self.lease
    }

    /// Whether auto-renewal is on.
    pub fn get_auto_renew(&self) -> bool {
        self.auto_renew
    }

    /// Whether fencing tokens are issued.
    pub fn get_fencing(&self) -> bool {
        self.fencing
    }

    /// The replicas to wait for and how long, if [`wait_replicas`](Self::wait_replicas)
    /// was set.
    pub fn get_wait_replicas(&self) -> Option<(u32, Duration)> {
        self.wait_replicas
    }

    /// What `wait_replicas` asks, once checked against the lease (`lease_ms`, checked).
    pub(crate) fn replicas(&self, lease_ms: u64) -> Result<Option<Replicas>> {
        let Some((count, timeout)) = self.wait_replicas else { return Ok(None) };
        let invalid = |reason: String| Err(Error::InvalidOption { option: "wait_replicas", reason });
        if count == 0 {
            return invalid(
                "0 replicas: WAIT would prove nothing; leave wait_replicas out to not wait for replicas".to_owned(),
            );
        }
        if timeout < Duration::from_millis(1) {
            return invalid(format!(
                "a timeout of {timeout:?}: Redis's WAIT counts in whole ms, and WAIT 0 waits forever \
                 for replicas that may never answer; give at least 1 ms"
            ));
        }
        if timeout.as_millis() >= u128::from(lease_ms) {
            return invalid(format!(
                "the timeout {timeout:?} must be shorter than the lease ({lease_ms} ms): the lock could \
                 run out while its acquisition waits for the replicas"
            ));
        }
        Ok(Some(Replicas { count, timeout_ms: timeout.as_millis() as u64 }))
    }

    /// The lease in whole milliseconds, once checked.
    pub(crate) fn lease_ms(&self) -> Result<u64> {
        if self.lease < Duration::from_millis(1) {
            return Err(Error::InvalidOption {
                option: "lease",
                reason: format!("{:?} is shorter than Redis's 1 ms resolution", self.lease),
            });
        }
        if self.lease > MAX_LEASE {
            return Err(Error::InvalidOption {
                option: "lease",
                reason: format!("{:?} is longer than the maximum of {MAX_LEASE:?}", self.lease),
            });
        }
        Ok(self.lease.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_bounds() {
        let ms = |d| MutexOptions::default().lease(d).lease_ms();
        assert!(matches!(ms(Duration::ZERO), Err(Error::InvalidOption { option: "lease", .. })));
        assert!(matches!(ms(Duration::from_micros(999)), Err(Error::InvalidOption { .. })));
        assert!(matches!(ms(Duration::MAX), Err(Error::InvalidOption { .. })));
        assert_eq!(ms(Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(ms(MAX_LEASE).unwrap(), 1 << 40);
    }

    #[test]
    fn wait_replicas_needs_a_replica_a_timeout_and_room_in_the_lease() {
        let replicas = |n, t| MutexOptions::default().wait_replicas(n, t).replicas(30_000);
        let refused =
            |r: Result<Option<Replicas>>| matches!(r, Err(Error::InvalidOption { option: "wait_replicas", .. }));
        assert_eq!(MutexOptions::default().replicas(30_000).unwrap(), None);
        assert!(refused(replicas(0, Duration::from_millis(100))));
        assert!(refused(replicas(1, Duration::ZERO)), "WAIT with timeout 0 blocks forever");
        assert!(refused(replicas(1, Duration::from_micros(999))));
        assert!(refused(replicas(1, Duration::from_secs(30))));
        assert!(refused(replicas(1, Duration::MAX)));
        assert_eq!(replicas(2, Duration::from_micros(100_900)).unwrap(), Some(Replicas { count: 2, timeout_ms: 100 }));
    }
}
