use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::LockClient;
use crate::error::Result;
use crate::held::{Held, checked};
use crate::keys::{Kind, LockKeys};
use crate::options::MutexOptions;
use crate::wait::{Core, SharedWant};

/// A named counting semaphore shared by every client that uses the same Redis and key
/// prefix: at most `permits` holders at once across the fleet.
///
/// A cheap handle (`Clone + Send + Sync`), made by [`LockClient::semaphore`].
/// Acquiring returns a [`SemaphorePermit`]; dropping it returns the permit. It is a lock
/// of its own: a [`Mutex`](crate::Mutex) or [`RwLock`](crate::RwLock) of the same name
/// does not count against it.
///
/// # Guarantees
///
/// - **At most `permits` holders** at once, while leases hold (see Limits).
/// - **Each permit has an owner and a lease**: a token of its own and a lease kept by
///   the Redis server's clock (no client clock is stored), renewed by the client's
///   watchdog while the permit lives (`auto_renew`, on by default). A holder that
///   crashes gives its permit back when its lease runs out (within a lease and a
///   renewal period of its last renewal); one that forgets its permit
///   (`mem::forget`) without `auto_renew` gives it back after its lease.
/// - **FIFO, bounded like the mutex's handoffs**: a permit released while a thread of
///   the same client waits passes to the longest-waiting one in memory (no round
///   trip; the permit's token and lease stay in Redis, renewed by the watchdog), at
///   most `handoff_limit` times in a row (see
///   [`LockClientBuilder::handoff_limit`](crate::LockClientBuilder::handoff_limit));
///   then its release goes through Redis, which gives it to the head of the fleet's
///   queue, where each client with waiting threads has an entry (FIFO by client, as
///   the mutex's turns). With `handoff_limit(0)` every waiting thread is its own entry
///   (FIFO by thread across the fleet). A release through Redis wakes one waiter: it
///   grants the permit to the head of the queue and tells its client; the thread
///   returns without a request of its own when the grant is fresh.
/// - **One count per name**: two clients that disagree on `permits` for a name in use
///   get [`Error::PermitsMismatch`](crate::Error::PermitsMismatch), not a silently
///   larger limit. The count is stored while a permit is held or a thread waits, and
///   may change once the semaphore is idle.
/// - **Waiting costs nothing while nothing changes**: waiting threads sleep until a
///   grant, or until the shortest lease they saw would end, never polling while the
///   client's subscriber is connected.
///
/// # Limits
///
/// - Leases and pauses as for [`Mutex`](crate::Mutex): a holder that stalls past its
///   lease loses its permit while it still runs, and another may take it. No fencing
///   tokens, and no [`wait_replicas`](MutexOptions::wait_replicas) (refused with
///   [`Error::InvalidOption`](crate::Error::InvalidOption)).
/// - Acquisitions and releases that do not pass in memory are a round trip each.
/// - A waiting thread asks Redis again once per lease it saw end (about every two
///   thirds of a lease while the holders renew), even when idle.
/// - A waiting process that crashes holds the queue up by at most the client's
///   `reservation_timeout` (the grant made to it runs out untaken).
/// - Only where one master holds the semaphore's state: one server, TLS, Sentinel,
///   Cluster. A Redlock client refuses it
///   ([`Error::Unsupported`](crate::Error::Unsupported)): a quorum cannot bound a
///   semaphore (with 2 permits and 5 masters, three holders can each own a different
///   majority).
///
/// # Examples
///
/// ```no_run
/// use redis_mutex::LockClient;
///
/// let client = LockClient::open("redis://127.0.0.1:6379/")?;
/// let partner = client.semaphore("partner-api", 10);   // at most 10 calls at once, fleet-wide
/// let permit = partner.acquire()?;
/// // ... call the partner's API ...
/// drop(permit);
/// # Ok::<(), redis_mutex::Error>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<SemInner>,
}

struct SemInner {
    core: Arc<Core>,
    client: LockClient,
    name: String,
    permits: u32,
    options: MutexOptions,
    /// The keys and what each acquisition asks for, or why the name, count or options
    /// are unusable (reported on use, before any I/O).
    checked: Result<(LockKeys, SharedWant)>,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.inner.name)
            .field("permits", &self.inner.permits)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Semaphore {
    pub(crate) fn new(
        client: LockClient,
        core: Arc<Core>,
        prefix: &str,
        name: &str,
        permits: u32,
        options: MutexOptions,
    ) -> Semaphore {
        let checked = checked(prefix, name, Kind::Semaphore, &options, permits);
        Semaphore { inner: Arc::new(SemInner { core, client, name: name.to_owned(), permits, options, checked }) }
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How many permits it has.
    pub fn permits(&self) -> u32 {
        self.inner.permits
    }

    /// The options each acquisition uses (its lease and `auto_renew`).
    pub fn options(&self) -> &MutexOptions {
        &self.inner.options
    }

    /// The client this semaphore belongs to.
    pub fn client(&self) -> &LockClient {
        &self.inner.client
    }

    fn want(&self) -> Result<(&LockKeys, SharedWant)> {
        let (keys, want) = self.inner.checked.as_ref().map_err(Clone::clone)?;
        Ok((keys, *want))
    }

    fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    fn permit(&self, hold: crate::wait::Hold) -> SemaphorePermit {
        SemaphorePermit { semaphore: self.clone(), held: Held::new(self.core().clone(), hold) }
    }

    /// Blocks until this thread holds a permit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) /
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) (0 permits, fencing,
    /// `wait_replicas`) before any I/O;
    /// [`Error::PermitsMismatch`](crate::Error::PermitsMismatch) when the semaphore is
    /// in use with another count; [`Error::Unsupported`](crate::Error::Unsupported) on
    /// a Redlock client; Redis failures after retrying for the client's
    /// `outage_tolerance`; [`Error::WrongType`](crate::Error::WrongType) when something
    /// else wrote a key of another type where it lives.
    pub fn acquire(&self) -> Result<SemaphorePermit> {
        let (keys, want) = self.want()?;
        Ok(self.permit(self.core().acquire_shared(keys, want)?))
    }

    /// One attempt: a permit if one is free and nobody waits for it, else `Ok(None)`
    /// (this call does not queue).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), without retries.
    pub fn try_acquire(&self) -> Result<Option<SemaphorePermit>> {
        let (keys, want) = self.want()?;
        Ok(self.core().try_acquire_shared(keys, want)?.map(|h| self.permit(h)))
    }

    /// Waits at most `timeout` for a permit; `Ok(None)` if none came. A timeout too
    /// large to represent waits without deadline.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire); Redis failures are retried until the deadline.
    pub fn try_acquire_for(&self, timeout: Duration) -> Result<Option<SemaphorePermit>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.try_acquire_until(deadline),
            None => self.acquire().map(Some),
        }
    }

    /// Waits until `deadline` at the latest for a permit. A deadline in the past makes
    /// exactly one attempt.
    ///
    /// # Errors
    ///
    /// As [`try_acquire_for`](Self::try_acquire_for).
    pub fn try_acquire_until(&self, deadline: Instant) -> Result<Option<SemaphorePermit>> {
        let (keys, want) = self.want()?;
        Ok(self.core().acquire_shared_until(keys, want, deadline)?.map(|h| self.permit(h)))
    }

    /// The permits free now (one round trip): `permits` minus those held. A permit
    /// just granted to a waiting thread counts as held. Threads may be waiting even
    /// when some are free (a grant on its way).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), without retries.
    pub fn available(&self) -> Result<u32> {
        let (keys, want) = self.want()?;
        self.core().available(keys, want.permits)
    }

    /// Threads of this client waiting for a permit right now.
    pub fn waiting_threads(&self) -> usize {
        self.inner.checked.as_ref().map_or(0, |(keys, _)| self.core().waiting_shared(keys))
    }
}

/// A permit of a [`Semaphore`]. Dropping it returns the permit (one round trip, or none
/// when it passes to a waiting thread of the same client), which goes to the
/// longest-waiting thread.
///
/// `Send`: a worker may hand it to another thread. Its own lease, renewed by the
/// client's watchdog while it lives (`auto_renew`).
#[must_use = "if unused the permit will immediately be returned"]
pub struct SemaphorePermit {
    semaphore: Semaphore,
    held: Held,
}

impl fmt::Debug for SemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").field("name", &self.semaphore.name()).field("held", &self.held).finish()
    }
}

impl SemaphorePermit {
    /// The semaphore this permit belongs to.
    pub fn semaphore(&self) -> &Semaphore {
        &self.semaphore
    }

    /// The owner token (a UUID v4 string) of this permit in Redis.
    pub fn token(&self) -> &str {
        self.held.token()
    }

    /// `true` once the watchdog (or [`extend`](Self::extend)) found that this permit's
    /// lease ran out (the process stalled, or renewals failed until it did): another
    /// thread may hold the permit now. Local and free; [`is_held`](Self::is_held) asks
    /// Redis.
    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Asks Redis whether this permit is still held (one round trip); marks it lost if
    /// not.
    ///
    /// # Errors
    ///
    /// Redis failures.
    pub fn is_held(&self) -> Result<bool> {
        self.held.is_held()
    }

    /// At least how long Redis keeps this permit from now, by what it last confirmed.
    /// Zero once passed. Local and free.
    pub fn remaining_lease(&self) -> Duration {
        self.held.remaining_lease()
    }

    /// Sets this permit's lease to `lease` from now, if it is still held; with
    /// `auto_renew`, later renewals use it too.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`](crate::Error::LockLost) if it is no longer held;
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) for a lease under 1 ms or
    /// over [`MAX_LEASE`](crate::MAX_LEASE); Redis failures.
    pub fn extend(&self, lease: Duration) -> Result<()> {
        self.held.extend(lease)
    }

    /// Returns the permit now, reporting what went wrong.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`](crate::Error::LockLost) if its lease had run out; Redis
    /// failures (the lease then ends by itself).
    pub fn unlock(self) -> Result<()> {
        self.held.unlock()
    }
}
