use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::LockClient;
use crate::error::Result;
use crate::guard::MutexGuard;
use crate::holder::Holder;
use crate::keys::LockKeys;
use crate::options::MutexOptions;
use crate::wait::{Core, Hold, Want};

/// A named lock shared by every client that uses the same Redis and key prefix.
///
/// A cheap handle (`Clone + Send + Sync`), made by [`LockClient::mutex`]. Locking
/// returns a [`MutexGuard`]; dropping the guard releases the lock.
///
/// # Differences from `std::sync::Mutex`
///
/// - The lock protects no data in memory: it names a resource shared across
///   processes and machines.
/// - Ownership is a *lease*. With `auto_renew` (the default) the client renews it while
///   the guard lives; a holder that stalls past its lease (a long GC pause, SIGSTOP, a
///   network partition) loses the lock without knowing until it checks
///   ([`MutexGuard::is_lost`], [`MutexGuard::is_held`]). Use fencing tokens
///   ([`MutexOptions::fencing`]) to make the protected resource reject such a holder.
/// - Locking can fail with an [`Error`](crate::Error) (Redis unreachable, bad name); there is no
///   poisoning.
/// - Locking twice from one thread waits for the first guard, like `std`; see
///   [`LockClient::reentrant_mutex`] for a re-entrant lock.
///
/// # Examples
///
/// ```no_run
/// use redis_mutex::{LockClient, MutexOptions};
/// use std::time::Duration;
///
/// let client = LockClient::open("redis://127.0.0.1:6379/")?;
/// let m = client.mutex_with("report", MutexOptions::default().lease(Duration::from_secs(10)));
/// if let Some(guard) = m.try_lock_for(Duration::from_secs(2))? {
///     // ... exclusive work ...
///     guard.unlock()?;
/// }
/// # Ok::<(), redis_mutex::Error>(())
/// ```
#[derive(Clone)]
pub struct Mutex {
    inner: Arc<MutexInner>,
}

struct MutexInner {
    /// What locking goes through.
    core: Arc<Core>,
    /// For [`Mutex::client`].
    client: LockClient,
    name: String,
    options: MutexOptions,
    /// The keys and what each acquisition asks for, or why the name or options are
    /// unusable (reported on use, before any I/O).
    checked: Result<(LockKeys, Want)>,
}

impl fmt::Debug for Mutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex").field("name", &self.inner.name).field("options", &self.inner.options).finish()
    }
}

impl Mutex {
    pub(crate) fn new(client: LockClient, core: Arc<Core>, prefix: &str, name: &str, options: MutexOptions) -> Mutex {
        let checked = LockKeys::new(prefix, name).and_then(|keys| {
            let lease_ms = options.lease_ms()?;
            let want = Want {
                lease_ms,
                fencing: options.get_fencing(),
                auto_renew: options.get_auto_renew(),
                replicas: options.replicas(lease_ms)?,
            };
            core.check(&want)?;
            Ok((keys, want))
        });
        Mutex { inner: Arc::new(MutexInner { core, client, name: name.to_owned(), options, checked }) }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The options each acquisition uses.
    pub fn options(&self) -> &MutexOptions {
        &self.inner.options
    }

    /// The client this lock belongs to.
    pub fn client(&self) -> &LockClient {
        &self.inner.client
    }

    /// The Redis key of this lock (also its release channel).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) for a name that cannot be used.
    pub fn key(&self) -> Result<&str> {
        Ok(&self.keys()?.key)
    }

    fn keys(&self) -> Result<&LockKeys> {
        self.want().map(|(keys, _)| keys)
    }

    fn want(&self) -> Result<(&LockKeys, Want)> {
        let (keys, want) = self.inner.checked.as_ref().map_err(Clone::clone)?;
        Ok((keys, *want))
    }

    /// Blocks until this thread holds the lock.
    ///
    /// The thread sleeps until a release is announced (or the holder's lease would
    /// run out), without polling Redis; see the crate docs for the protocol.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) / [`Error::InvalidOption`](crate::Error::InvalidOption) before any I/O; Redis failures
    /// after retrying for the client's `outage_tolerance` (among them
    /// [`Error::ReplicasNotAcknowledged`](crate::Error::ReplicasNotAcknowledged) with
    /// [`MutexOptions::wait_replicas`]); [`Error::WrongType`](crate::Error::WrongType) when
    /// something else wrote a key of another type where this lock lives.
    pub fn lock(&self) -> Result<MutexGuard> {
        let (keys, want) = self.want()?;
        Ok(self.guard(self.core().lock(keys, want)?))
    }

    /// One attempt: the guard if the lock was free, `Ok(None)` if someone holds it.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock), without retries.
    pub fn try_lock(&self) -> Result<Option<MutexGuard>> {
        let (keys, want) = self.want()?;
        Ok(self.core().try_lock(keys, want)?.map(|h| self.guard(h)))
    }

    /// Waits at most `timeout` for the lock; `Ok(None)` if it is still held then.
    /// A timeout too large to represent waits without deadline.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock); Redis failures are retried until the deadline.
    pub fn try_lock_for(&self, timeout: Duration) -> Result<Option<MutexGuard>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.try_lock_until(deadline),
            None => self.lock().map(Some),
        }
    }

    /// Waits until `deadline` at the latest; `Ok(None)` if the lock is still held then.
    /// A deadline in the past makes exactly one attempt.
    ///
    /// # Errors
    ///
    /// As [`try_lock_for`](Self::try_lock_for).
    pub fn try_lock_until(&self, deadline: Instant) -> Result<Option<MutexGuard>> {
        let (keys, want) = self.want()?;
        Ok(self.core().lock_until(keys, want, deadline)?.map(|h| self.guard(h)))
    }

    /// Whether anyone holds the lock right now (one round trip). A lock just passed to
    /// a waiting client is not held until that client takes it (a round trip later);
    /// `try_lock` from elsewhere still fails meanwhile.
    ///
    /// # Errors
    ///
    /// Redis failures, without retries.
    pub fn is_locked(&self) -> Result<bool> {
        Ok(self.holder()?.is_some())
    }

    /// The current holder as Redis sees it, for diagnostics: its token, lease left,
    /// and whether someone waits for it. `None` when free, or passed to a waiting client
    /// that has not taken it yet (see [`is_locked`](Self::is_locked)).
    ///
    /// # Errors
    ///
    /// Redis failures, without retries.
    pub fn holder(&self) -> Result<Option<Holder>> {
        self.core().holder(self.keys()?)
    }

    /// Deletes the lock whoever holds it and wakes waiters everywhere. Returns whether
    /// someone held it (a key left holding only the queue of waiting clients, after a
    /// grant nobody took, is deleted too, and returns `false`). The holder's guard notices at its next renewal
    /// ([`MutexGuard::is_lost`]) or use. An operator's tool for a stuck lock, not a
    /// way to unlock: mutual exclusion is broken while the old holder keeps working.
    ///
    /// # Errors
    ///
    /// Redis failures; [`Error::WrongType`](crate::Error::WrongType) if the key is not a lock (left untouched).
    pub fn force_unlock(&self) -> Result<bool> {
        self.core().force_unlock(self.keys()?)
    }

    /// Threads of this client waiting for this lock right now.
    pub fn waiting_threads(&self) -> usize {
        self.core().waiting(&self.inner.name)
    }

    pub(crate) fn core(&self) -> &Core {
        &self.inner.core
    }

    fn guard(&self, hold: Hold) -> MutexGuard {
        MutexGuard::new(self.clone(), hold)
    }
}
