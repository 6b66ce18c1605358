//! [`LockClient`] (this file) and its builder ([`LockClientBuilder`], `builder.rs`).

mod builder;
mod redlock;

pub use builder::LockClientBuilder;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, Weak};

use crate::error::Result;
use crate::mutex::Mutex;
use crate::options::MutexOptions;
use crate::reentrant::{ReentrantMutex, ReentrantState};
use crate::rwlock::RwLock;
use crate::semaphore::Semaphore;
use crate::stats::Stats;
use crate::sync::lock;
use crate::wait::Core;

/// A connection to one Redis deployment, from which [`Mutex`] handles are made.
///
/// Holds an r2d2 pool of connections, one pub/sub connection owned by the
/// `redis-mutex-notifier` thread (waiters sleep until it hears a release), and the
/// `redis-mutex-watchdog` thread that renews leases. Cloning is cheap and shares all
/// of it; make one per process and Redis deployment. The threads and connections end
/// once the last clone, [`Mutex`] and guard made from it are dropped.
///
/// # Examples
///
/// ```no_run
/// use redis_mutex::LockClient;
///
/// let client = LockClient::open("redis://127.0.0.1:6379/")?;
/// let m = client.mutex("invoice:42");
/// let guard = m.lock()?;
/// // ... only one holder in the whole fleet runs this ...
/// drop(guard);
/// # Ok::<(), redis_mutex::Error>(())
/// ```
#[derive(Clone)]
pub struct LockClient {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    core: Arc<Core>,
    prefix: String,
    client_id: String,
    url: String,
    pool_max_size: u32,
    reentrant: StdMutex<HashMap<String, Weak<ReentrantState>>>,
}

impl fmt::Debug for LockClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockClient")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.prefix)
            .field("pool_max_size", &self.inner.pool_max_size)
            .field("client_id", &self.inner.client_id)
            .finish()
    }
}

impl LockClient {
    /// Connects with default options. Shorthand for `LockClient::builder().build(url)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl) for a URL that does not parse;
    /// [`Error::Connection`](crate::Error::Connection) when nothing answers;
    /// [`Error::Auth`](crate::Error::Auth) when the server rejects the credentials.
    pub fn open(url: &str) -> Result<LockClient> {
        LockClient::builder().build(url)
    }

    /// A builder with every option at its default.
    pub fn builder() -> LockClientBuilder {
        LockClientBuilder::default()
    }

    /// A lock named `name` with default [`MutexOptions`] (30 s lease, renewed while
    /// held). Cheap: no I/O. An invalid name is reported by the first locking call.
    ///
    /// # Examples
    ///
    /// A name is checked before anything is sent (so this runs without a server):
    ///
    /// ```
    /// use redis_mutex::{Error, LockClient};
    ///
    /// let client = LockClient::builder().build_unchecked("redis://127.0.0.1:1/")?;
    /// let m = client.mutex("job{42}"); // braces delimit the Cluster hash tag
    /// assert!(matches!(m.try_lock(), Err(Error::InvalidName { .. })));
    /// assert!(matches!(m.lock(), Err(Error::InvalidName { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn mutex(&self, name: &str) -> Mutex {
        self.mutex_with(name, MutexOptions::default())
    }

    /// A lock named `name` with the given options. Cheap: no I/O. An invalid name or
    /// option is reported by the first locking call, before any I/O.
    pub fn mutex_with(&self, name: &str, options: MutexOptions) -> Mutex {
        Mutex::new(self.clone(), self.inner.core.clone(), &self.inner.prefix, name, options)
    }

    /// A lock that the thread holding it may lock again without waiting (a hold count
    /// per thread); other threads and processes wait. All handles for `name` from this
    /// client share the hold count.
    pub fn reentrant_mutex(&self, name: &str) -> ReentrantMutex {
        self.reentrant_mutex_with(name, MutexOptions::default())
    }

    /// [`reentrant_mutex`](Self::reentrant_mutex) with options. When a handle for
    /// `name` already exists, it is shared, with the options it was made with.
    pub fn reentrant_mutex_with(&self, name: &str, options: MutexOptions) -> ReentrantMutex {
        let mut map = lock(&self.inner.reentrant);
        if let Some(state) = map.get(name).and_then(Weak::upgrade) {
            return ReentrantMutex::from_state(state);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let m = ReentrantMutex::new(self.mutex_with(name, options));
        map.insert(name.to_owned(), m.downgrade());
        m
    }

    /// A read-write lock named `name` with default [`MutexOptions`] (each reader's and
    /// writer's lease 30 s, renewed while held). Cheap: no I/O. An invalid name is
    /// reported by the first locking call. See [`RwLock`] for its guarantees.
    ///
    /// # Examples
    ///
    /// ```
    /// use redis_mutex::{Error, LockClient};
    ///
    /// let client = LockClient::builder().build_unchecked("redis://127.0.0.1:1/")?;
    /// assert!(matches!(client.rw_lock("a{b}").try_read(), Err(Error::InvalidName { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn rw_lock(&self, name: &str) -> RwLock {
        self.rw_lock_with(name, MutexOptions::default())
    }

    /// [`rw_lock`](Self::rw_lock) with options: the lease and `auto_renew` of each
    /// reader and writer. `fencing` and `wait_replicas` are refused by the first
    /// locking call ([`Error::InvalidOption`](crate::Error::InvalidOption)).
    pub fn rw_lock_with(&self, name: &str, options: MutexOptions) -> RwLock {
        RwLock::new(self.clone(), self.inner.core.clone(), &self.inner.prefix, name, options)
    }

    /// A semaphore named `name` of `permits` permits, with default [`MutexOptions`]
    /// (each permit's lease 30 s, renewed while held). Cheap: no I/O. An invalid name
    /// or a count of 0 is reported by the first call. Every client must use the same
    /// count for a name; see [`Semaphore`] for its guarantees.
    ///
    /// # Examples
    ///
    /// ```
    /// use redis_mutex::{Error, LockClient};
    ///
    /// let client = LockClient::builder().build_unchecked("redis://127.0.0.1:1/")?;
    /// let none = client.semaphore("partner-api", 0);
    /// assert!(matches!(none.try_acquire(), Err(Error::InvalidOption { option: "permits", .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn semaphore(&self, name: &str, permits: u32) -> Semaphore {
        self.semaphore_with(name, permits, MutexOptions::default())
    }

    /// [`semaphore`](Self::semaphore) with options: the lease and `auto_renew` of each
    /// permit. `fencing` and `wait_replicas` are refused by the first call
    /// ([`Error::InvalidOption`](crate::Error::InvalidOption)).
    pub fn semaphore_with(&self, name: &str, permits: u32, options: MutexOptions) -> Semaphore {
        Semaphore::new(self.clone(), self.inner.core.clone(), &self.inner.prefix, name, permits, options)
    }

    /// A snapshot of this client's counters.
    pub fn stats(&self) -> Stats {
        self.inner.core.stats()
    }

    /// The key prefix of every lock of this client.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// This client's id: the payload of its release messages, which its own notifier
    /// ignores. Its connections are named `redis-mutex:<id>` in `CLIENT LIST` (the
    /// notifier's `redis-mutex:<id>:notifier`).
    pub fn id(&self) -> &str {
        &self.inner.client_id
    }

    /// Whether the notifier is subscribed right now. While it is not, waiters poll
    /// Redis with backoff.
    pub fn is_notifier_connected(&self) -> bool {
        self.inner.core.is_listening()
    }

    /// How many leases the watchdog is renewing right now (one per tenure: guards that
    /// took the lock over from each other in memory share one).
    pub fn renewing_count(&self) -> usize {
        self.inner.core.renewing()
    }

    /// The same as [`renewing_count`](Self::renewing_count).
    #[deprecated(since = "0.2.0", note = "a count: use `renewing_count`")]
    pub fn renewing(&self) -> usize {
        self.renewing_count()
    }
}
