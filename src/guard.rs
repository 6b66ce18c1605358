use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Stamp;
use crate::error::{Error, Result};
use crate::mutex::Mutex;
use crate::options::MAX_LEASE;
use crate::wait::{Hold, Tenure};

/// Proof that this process holds a [`Mutex`]. Dropping it releases the lock.
///
/// `Send`: a worker may hand it to another thread. Drop releases with one round trip;
/// a release that fails is logged with `warn!` (it never panics), and the lock then
/// ends with its lease. Call [`unlock`](Self::unlock) to see the error instead.
#[must_use = "if unused the Mutex will immediately unlock"]
pub struct MutexGuard {
    mutex: Mutex,
    /// The client's hold on the lock in Redis, shared with the threads it is handed
    /// to in memory.
    tenure: Arc<Tenure>,
    fence: Option<u64>,
    released: bool,
}

impl fmt::Debug for MutexGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("name", &self.mutex.name())
            .field("token", &self.tenure.token)
            .field("fencing_token", &self.fence)
            .field("lost", &self.tenure.is_lost())
            .finish()
    }
}

impl MutexGuard {
    pub(crate) fn new(mutex: Mutex, hold: Hold) -> MutexGuard {
        MutexGuard { mutex, tenure: hold.tenure, fence: hold.fence, released: false }
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
        &self.tenure.token
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
        self.tenure.is_lost()
    }

    /// At least how long the lock stays this guard's in Redis from now, by what Redis
    /// last confirmed: the last request it confirmed (the acquisition, a renewal, an
    /// [`extend`](Self::extend)) was sent at some time T and set a lease L, so Redis
    /// keeps the lock until T + L at the earliest (timed from the sending, which errs
    /// early; a suspend of the machine counts as time passed). Zero once that has
    /// passed. Local and free: no I/O.
    ///
    /// While renewals succeed it stays above about two thirds of the lease; while they
    /// keep failing (Redis unreachable) it runs down, and the guard is marked lost when
    /// it reaches zero. A program that must stop its work before anyone else can hold
    /// the lock watches it: `redis-mutex run` stops its command when this falls to the
    /// command's kill grace. It knows nothing of losses Redis has not reported yet (a
    /// force-unlock, a restart without persistence): see [`is_lost`](Self::is_lost).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use redis_mutex::LockClient;
    /// use std::time::Duration;
    ///
    /// let client = LockClient::open("redis://127.0.0.1:6379/")?;
    /// let guard = client.mutex("nightly-report").lock()?;
    /// while guard.remaining_lease() > Duration::from_secs(5) && !guard.is_lost() {
    ///     // ... one more step of the work ...
    /// #   break;
    /// }
    /// # Ok::<(), redis_mutex::Error>(())
    /// ```
    pub fn remaining_lease(&self) -> Duration {
        self.tenure.confirmed_remaining(Stamp::now())
    }

    /// Asks Redis whether this guard still owns the lock (one round trip).
    ///
    /// # Errors
    ///
    /// Redis failures.
    pub fn is_held(&self) -> Result<bool> {
        self.mutex.core().is_held(&self.tenure)
    }

    /// Sets the lease to `lease` from now, if this guard still owns the lock. With
    /// `auto_renew`, later renewals use this lease too. With
    /// [`MutexOptions::wait_replicas`](crate::MutexOptions::wait_replicas), it returns
    /// once that many replicas acknowledged the new lease.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the lock is no longer ours (nothing is changed in Redis);
    /// [`Error::InvalidOption`] for a lease under 1 ms or over
    /// [`MAX_LEASE`](crate::MAX_LEASE) (on Redlock, over the client's
    /// [`redlock_max_lease`](crate::LockClientBuilder::redlock_max_lease));
    /// [`Error::ReplicasNotAcknowledged`] when too few
    /// replicas acknowledged it (the guard keeps the lock, with the lease it had);
    /// Redis failures.
    pub fn extend(&self, lease: Duration) -> Result<()> {
        if lease < Duration::from_millis(1) || lease > MAX_LEASE {
            return Err(Error::InvalidOption {
                option: "lease",
                reason: format!("{lease:?} is outside 1 ms ..= {MAX_LEASE:?}"),
            });
        }
        let lease_ms = lease.as_millis() as u64;
        self.mutex.core().check_lease(lease_ms)?;
        self.mutex.core().extend(&self.tenure, lease_ms)
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

    fn release(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        self.mutex.core().release(&self.tenure)
    }
}

impl Drop for MutexGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::warn!("redis-mutex: releasing {} on drop failed: {e}", self.tenure.keys.key);
        }
    }
}
