use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::LockClient;
use crate::error::Result;
use crate::held::{Held, checked};
use crate::keys::{Kind, LockKeys};
use crate::options::MutexOptions;
use crate::wait::{Core, SharedWant, Side};

/// A named read-write lock shared by every client that uses the same Redis and key
/// prefix: many readers at once, or one writer alone.
///
/// A cheap handle (`Clone + Send + Sync`), made by [`LockClient::rw_lock`]. Locking
/// returns a [`RwLockReadGuard`] or [`RwLockWriteGuard`]; dropping the guard releases
/// it. It is a lock of its own: a [`Mutex`](crate::Mutex) or
/// [`Semaphore`](crate::Semaphore) of the same name does not exclude it.
///
/// # Guarantees
///
/// - **Readers share, a writer excludes everyone**, across threads, processes and
///   machines, while leases hold (see Limits).
/// - **Writer preference, and FIFO.** The waiting threads of the fleet are entries in
///   one queue (one per client and kind while the in-process fast path is on, one per
///   thread with `handoff_limit(0)`), and a client's threads wait in FIFO order behind
///   its entry. Once a writer waits, readers that come after it queue behind it, so a
///   stream of readers cannot starve it: a writer waits only for the holders there when
///   it queued, the entries queued before it, and readers of other clients that joined
///   a read share of theirs within 5 ms of its queueing (readers of its own client
///   stop joining at once). With readers whose critical sections last at most C, and
///   no writer ahead, it gets in within C plus 5 ms, a round trip and a wake-up. A
///   writer's release admits the readers queued behind it together (up to the next
///   writer); the last reader's release admits the writer at the head of the queue.
/// - **In-process fast path**: a reader joins a read share its client already holds
///   (no round trip; the last local reader releases it), and the write lock passes in
///   memory to the next waiting writer of the same client, at most
///   `handoff_limit` times in a row (see [`LockClientBuilder::handoff_limit`](crate::LockClientBuilder::handoff_limit);
///   0 turns both off).
/// - **A lease per reader**: each reader holds its own lease, renewed by the client's
///   watchdog while its guard lives (`auto_renew`, on by default). A crashed reader
///   frees its share when *its* lease runs out, not when the last reader's does.
/// - **Lost leases are told**: a renewal that finds the lease gone marks the guard
///   lost ([`RwLockReadGuard::is_lost`]), and every reader of the client that joined
///   the same read share.
/// - **Waiting costs nothing while nothing changes**: waiting threads sleep until a
///   release grants them the lock (a message to their client; the thread returns
///   without a request of its own when the grant is fresh), or until the shortest
///   lease they saw would end (expiry announces nothing), never polling while the
///   client's subscriber is connected.
///
/// # Limits
///
/// - Leases, pauses and clocks as for [`Mutex`](crate::Mutex): a holder that stalls
///   past its lease loses the lock while it still runs. No fencing tokens, and no
///   [`wait_replicas`](MutexOptions::wait_replicas): both options are refused
///   ([`Error::InvalidOption`](crate::Error::InvalidOption)).
/// - Readers of one client that joined one read share share its lease: `extend` on one
///   extends it for all, and a share lost is lost for all of them.
/// - A waiting thread asks Redis again once per lease it saw end (the holders' renewed
///   leases: about every two thirds of a lease while they hold), even when idle.
/// - A waiting process that crashes holds the queue up by at most the client's
///   `reservation_timeout` (the grant made to it runs out untaken).
/// - Only where one master holds the lock's state: one server, TLS, Sentinel,
///   Cluster. A Redlock client refuses it
///   ([`Error::Unsupported`](crate::Error::Unsupported)).
///
/// # Examples
///
/// ```no_run
/// use redis_mutex::LockClient;
///
/// let client = LockClient::open("redis://127.0.0.1:6379/")?;
/// let catalog = client.rw_lock("catalog");
/// {
///     let _r = catalog.read()?;        // other readers may hold it too
///     // ... read the catalog ...
/// }
/// let w = catalog.write()?;            // waits for the readers; new readers wait for it
/// // ... rewrite the catalog ...
/// w.unlock()?;
/// # Ok::<(), redis_mutex::Error>(())
/// ```
#[derive(Clone)]
pub struct RwLock {
    inner: Arc<RwInner>,
}

struct RwInner {
    core: Arc<Core>,
    client: LockClient,
    name: String,
    options: MutexOptions,
    /// The keys and what each acquisition asks for, or why the name or options are
    /// unusable (reported on use, before any I/O).
    checked: Result<(LockKeys, SharedWant)>,
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock").field("name", &self.inner.name).field("options", &self.inner.options).finish()
    }
}

impl RwLock {
    pub(crate) fn new(client: LockClient, core: Arc<Core>, prefix: &str, name: &str, options: MutexOptions) -> RwLock {
        let checked = checked(prefix, name, Kind::RwLock, &options, 0);
        RwLock { inner: Arc::new(RwInner { core, client, name: name.to_owned(), options, checked }) }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The options each acquisition uses (its lease and `auto_renew`).
    pub fn options(&self) -> &MutexOptions {
        &self.inner.options
    }

    /// The client this lock belongs to.
    pub fn client(&self) -> &LockClient {
        &self.inner.client
    }

    fn want(&self, side: Side) -> Result<(&LockKeys, SharedWant)> {
        let (keys, want) = self.inner.checked.as_ref().map_err(Clone::clone)?;
        Ok((keys, SharedWant { side, ..*want }))
    }

    fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// Blocks until this thread holds a read lock: no writer holds it, and none was
    /// waiting before this call (writer preference).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) /
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) before any I/O;
    /// [`Error::Unsupported`](crate::Error::Unsupported) on a Redlock client; Redis
    /// failures after retrying for the client's `outage_tolerance`;
    /// [`Error::WrongType`](crate::Error::WrongType) when something else wrote a key of
    /// another type where this lock lives.
    pub fn read(&self) -> Result<RwLockReadGuard> {
        let (keys, want) = self.want(Side::Shared)?;
        let hold = self.core().acquire_shared(keys, want)?;
        Ok(RwLockReadGuard { lock: self.clone(), held: Held::new(self.core().clone(), hold) })
    }

    /// Blocks until this thread holds the write lock: no reader and no other writer.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn write(&self) -> Result<RwLockWriteGuard> {
        let (keys, want) = self.want(Side::Exclusive)?;
        let hold = self.core().acquire_shared(keys, want)?;
        Ok(RwLockWriteGuard { lock: self.clone(), held: Held::new(self.core().clone(), hold) })
    }

    /// One attempt at a read lock: `Ok(None)` if a writer holds it or anyone waits
    /// (this call does not queue).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), without retries.
    pub fn try_read(&self) -> Result<Option<RwLockReadGuard>> {
        let (keys, want) = self.want(Side::Shared)?;
        let hold = self.core().try_acquire_shared(keys, want)?;
        Ok(hold.map(|h| RwLockReadGuard { lock: self.clone(), held: Held::new(self.core().clone(), h) }))
    }

    /// One attempt at the write lock: `Ok(None)` if anyone holds it or waits.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), without retries.
    pub fn try_write(&self) -> Result<Option<RwLockWriteGuard>> {
        let (keys, want) = self.want(Side::Exclusive)?;
        let hold = self.core().try_acquire_shared(keys, want)?;
        Ok(hold.map(|h| RwLockWriteGuard { lock: self.clone(), held: Held::new(self.core().clone(), h) }))
    }

    /// Waits at most `timeout` for a read lock; `Ok(None)` if it did not come. A
    /// timeout too large to represent waits without deadline.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read); Redis failures are retried until the deadline.
    pub fn try_read_for(&self, timeout: Duration) -> Result<Option<RwLockReadGuard>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.try_read_until(deadline),
            None => self.read().map(Some),
        }
    }

    /// Waits at most `timeout` for the write lock; `Ok(None)` if it did not come. A
    /// timeout too large to represent waits without deadline.
    ///
    /// # Errors
    ///
    /// As [`try_read_for`](Self::try_read_for).
    pub fn try_write_for(&self, timeout: Duration) -> Result<Option<RwLockWriteGuard>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.try_write_until(deadline),
            None => self.write().map(Some),
        }
    }

    /// Waits until `deadline` at the latest for a read lock. A deadline in the past
    /// makes exactly one attempt.
    ///
    /// # Errors
    ///
    /// As [`try_read_for`](Self::try_read_for).
    pub fn try_read_until(&self, deadline: Instant) -> Result<Option<RwLockReadGuard>> {
        let (keys, want) = self.want(Side::Shared)?;
        let hold = self.core().acquire_shared_until(keys, want, deadline)?;
        Ok(hold.map(|h| RwLockReadGuard { lock: self.clone(), held: Held::new(self.core().clone(), h) }))
    }

    /// Waits until `deadline` at the latest for the write lock. A deadline in the past
    /// makes exactly one attempt.
    ///
    /// # Errors
    ///
    /// As [`try_read_for`](Self::try_read_for).
    pub fn try_write_until(&self, deadline: Instant) -> Result<Option<RwLockWriteGuard>> {
        let (keys, want) = self.want(Side::Exclusive)?;
        let hold = self.core().acquire_shared_until(keys, want, deadline)?;
        Ok(hold.map(|h| RwLockWriteGuard { lock: self.clone(), held: Held::new(self.core().clone(), h) }))
    }

    /// Threads of this client waiting for this lock (to read or write) right now.
    pub fn waiting_threads(&self) -> usize {
        self.inner.checked.as_ref().map_or(0, |(keys, _)| self.core().waiting_shared(keys))
    }
}

macro_rules! guard_methods {
    () => {
        /// The lock this guard holds.
        pub fn rw_lock(&self) -> &RwLock {
            &self.lock
        }

        /// The owner token (a UUID v4 string) of this acquisition in Redis.
        pub fn token(&self) -> &str {
            self.held.token()
        }

        /// `true` once the watchdog (or [`extend`](Self::extend)) found that this
        /// lease is no longer held: it ran out (the process stalled, or renewals
        /// failed until it did). Local and free; [`is_held`](Self::is_held) asks Redis.
        pub fn is_lost(&self) -> bool {
            self.held.is_lost()
        }

        /// Asks Redis whether this guard still holds its lease (one round trip);
        /// marks it lost if not.
        ///
        /// # Errors
        ///
        /// Redis failures.
        pub fn is_held(&self) -> Result<bool> {
            self.held.is_held()
        }

        /// At least how long Redis keeps this lease from now, by what it last
        /// confirmed (timed from the sending of that request, erring early). Zero once
        /// passed. Local and free.
        pub fn remaining_lease(&self) -> Duration {
            self.held.remaining_lease()
        }

        /// Sets this lease to `lease` from now, if it is still held; with
        /// `auto_renew`, later renewals use it too.
        ///
        /// # Errors
        ///
        /// [`Error::LockLost`](crate::Error::LockLost) if it is no longer held;
        /// [`Error::InvalidOption`](crate::Error::InvalidOption) for a lease under 1 ms
        /// or over [`MAX_LEASE`](crate::MAX_LEASE); Redis failures.
        pub fn extend(&self, lease: Duration) -> Result<()> {
            self.held.extend(lease)
        }

        /// Releases it now, reporting what went wrong (dropping the guard releases
        /// too, logging errors with `warn!`).
        ///
        /// # Errors
        ///
        /// [`Error::LockLost`](crate::Error::LockLost) if the lease had run out;
        /// Redis failures (the lease then ends by itself).
        pub fn unlock(self) -> Result<()> {
            self.held.unlock()
        }
    };
}

/// A read lock on a [`RwLock`]: other readers may hold it at the same time, no writer
/// does. Dropping it releases it (one round trip, none while other readers of the
/// same client share its read share).
///
/// `Send`: a worker may hand it to another thread. Its own lease, renewed by the
/// client's watchdog while it lives (`auto_renew`).
#[must_use = "if unused the read lock will immediately unlock"]
pub struct RwLockReadGuard {
    lock: RwLock,
    held: Held,
}

/// The write lock on a [`RwLock`]: no reader and no other writer holds it while this
/// guard does (as long as its lease holds). Dropping it releases it (one round trip,
/// or none when it passes to a waiting writer of the same client) and admits the
/// readers queued behind it together.
///
/// `Send`: a worker may hand it to another thread.
#[must_use = "if unused the write lock will immediately unlock"]
pub struct RwLockWriteGuard {
    lock: RwLock,
    held: Held,
}

impl RwLockReadGuard {
    guard_methods!();
}

impl RwLockWriteGuard {
    guard_methods!();
}

impl fmt::Debug for RwLockReadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLockReadGuard").field("name", &self.lock.name()).field("held", &self.held).finish()
    }
}

impl fmt::Debug for RwLockWriteGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLockWriteGuard").field("name", &self.lock.name()).field("held", &self.held).finish()
    }
}
