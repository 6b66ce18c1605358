use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::keys::LockKeys;
use crate::mutex::Mutex;
use crate::options::MAX_LEASE;
use crate::wait::{Acquired, Want};
use crate::watchdog::Lease;

/// Proof that this process holds a [`Mutex`]. Dropping it releases the lock.
///
/// `Send`: a worker may hand it to another thread. Drop releases with one round trip;
/// a release that fails is logged with `warn!` (it never panics), and the lock then
/// ends with its lease. Call [`unlock`](Self::unlock) to see the error instead.
#[must_use = "if unused the Mutex will immediately unlock"]
pub struct MutexGuard {
    mutex: Mutex,
    lease: Arc<Lease>,
    fence: Option<u64>,
    /// The watchdog's id for this lease, while it renews it.
    renewing: Option<u64>,
    released: bool,
}

impl fmt::Debug for MutexGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("name", &self.mutex.name())
            .field("token", &self.lease.token)
            .field("fencing_token", &self.fence)
            .field("lost", &self.lease.is_lost())
            .finish()
    }
}

impl MutexGuard {
    pub(crate) fn new(mutex: Mutex, keys: LockKeys, a: Acquired, want: Want) -> MutexGuard {
        let fence = want.fencing.then_some(a.fence);
        if let Some(tenure) = a.tenure {
            // Handed over inside the process: the same Redis tenure, already renewed.
            return MutexGuard { fence, mutex, lease: tenure.lease, renewing: Some(tenure.renewing), released: false };
        }
        // Timed from when the acquiring request was sent: no later than Redis started
        // the lease, so renewals and lost-lease detection err on the early side.
        let lease = Arc::new(Lease::new(keys, a.token, want.lease_ms, a.at, fence, a.turn));
        let client = &mutex.client().inner;
        let renewing = want.auto_renew.then(|| client.watchdog.register(lease.clone()));
        MutexGuard { fence, mutex, lease, renewing, released: false }
    }

    /// The lock this guard holds.
    pub fn mutex(&self) -> &Mutex {
        &self.mutex
    }

    /// The owner token (a UUID v4 string) Redis stores for this lock while this guard
    /// holds it. A fresh one per acquisition through Redis; a handoff between threads
    /// of one client without a round trip keeps the previous holder's (the lock never
    /// left this client in Redis). Use [`fencing_token`](Self::fencing_token) for a
    /// number unique to each acquisition.
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The fencing token of this acquisition, when the lock was made with
    /// [`MutexOptions::fencing`](crate::MutexOptions::fencing): it rises strictly with
    /// every acquisition of this lock name. Pass it with each write to the protected
    /// resource and have the resource refuse a token lower than the highest it has
    /// seen; see `examples/fencing.rs`.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fence
    }

    /// `true` once the watchdog (or [`extend`](Self::extend)) found that the lock
    /// is no longer this guard's: its lease ran out or it was force-unlocked. Local and
    /// free; [`is_held`](Self::is_held) asks Redis.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Asks Redis whether this guard still owns the lock (one round trip).
    ///
    /// # Errors
    ///
    /// Redis failures.
    pub fn is_held(&self) -> Result<bool> {
        let held = self.mutex.holder()?.is_some_and(|h| h.token == self.lease.token);
        if !held {
            self.lease.mark_lost(self.core(), "Redis no longer lists this guard as the owner");
        }
        Ok(held)
    }

    /// Sets the lease to `lease` from now, if this guard still owns the lock. With
    /// `auto_renew`, later renewals use this lease too.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the lock is no longer ours (nothing is changed in Redis);
    /// [`Error::InvalidOption`] for a lease under 1 ms or over
    /// [`MAX_LEASE`](crate::MAX_LEASE); Redis failures.
    pub fn extend(&self, lease: Duration) -> Result<()> {
        if lease < Duration::from_millis(1) || lease > MAX_LEASE {
            return Err(Error::InvalidOption {
                option: "lease",
                reason: format!("{lease:?} is outside 1 ms ..= {MAX_LEASE:?}"),
            });
        }
        self.core().extend(&self.lease, lease.as_millis() as u64)
    }

    /// Releases the lock now, reporting what went wrong.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the lock was no longer ours (whoever holds it now keeps
    /// it); Redis failures (the lock then ends with its lease).
    pub fn unlock(mut self) -> Result<()> {
        self.release()
    }

    fn core(&self) -> &crate::wait::Core {
        &self.mutex.client().inner.core
    }

    fn lost_error(&self) -> Error {
        Error::LockLost { key: self.lease.keys.key.clone() }
    }

    fn check_not_lost(&self) -> Result<()> {
        if self.lease.is_lost() { Err(self.lost_error()) } else { Ok(()) }
    }

    fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        // A waiting thread of this client takes over the tenure, renewal included.
        if let Some(id) = self.renewing
            && self.core().hand_over_locally(&self.lease.keys, &self.lease, id)
        {
            self.renewing = None;
            return Ok(());
        }
        // No renewal may start once the release is on its way.
        if let Some(id) = self.renewing.take() {
            self.mutex.client().inner.watchdog.deregister(id, &self.lease);
        }
        self.check_not_lost()?;
        let lease = &self.lease;
        let result = self.core().release(&lease.keys, &lease.token, lease.lease_ms(), lease.local_handoffs());
        if let Err(Error::LockLost { .. }) = &result {
            self.lease.mark_lost(self.core(), "the release found another owner or no lock");
        }
        result
    }
}

impl Drop for MutexGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::warn!("redis-mutex: releasing {} on drop failed: {e}", self.lease.keys.key);
        }
    }
}
