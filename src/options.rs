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
}

impl Default for MutexOptions {
    fn default() -> Self {
        MutexOptions { lease: Duration::from_secs(30), auto_renew: true, fencing: false }
    }
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
}
