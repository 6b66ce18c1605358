use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use crate::backend::{self, Deployment};
use crate::error::{Error, Result};
use crate::keys::{redact_url, validate_prefix};
use crate::mutex::Mutex;
use crate::options::{MAX_LEASE, MutexOptions};
use crate::reentrant::{ReentrantMutex, ReentrantState};
use crate::stats::{Counters, Stats};
use crate::sync::lock;
use crate::tls::TlsOptions;
use crate::wait::{self, Core, Registry};

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
    /// [`Error::InvalidUrl`] for a URL that does not parse; [`Error::Connection`] when
    /// nothing answers; [`Error::Auth`] when the server rejects the credentials.
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

/// Configures a [`LockClient`]. Every option has a documented default.
///
/// Every duration option must be at most [`MAX_LEASE`](crate::MAX_LEASE) (about 34
/// years; `Duration::MAX` is refused, not taken to mean "forever"), and all but
/// `outage_tolerance` longer than zero: `build` returns [`Error::InvalidOption`]
/// naming the option otherwise.
///
/// ```no_run
/// use redis_mutex::LockClient;
/// use std::time::Duration;
///
/// let client = LockClient::builder()
///     .key_prefix("billing")
///     .pool_max_size(16)
///     .read_timeout(Duration::from_secs(1))
///     .build("redis://127.0.0.1:6379/")?;
/// # Ok::<(), redis_mutex::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LockClientBuilder {
    key_prefix: String,
    pool_max_size: u32,
    pool_timeout: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    outage_tolerance: Duration,
    recheck_interval: Duration,
    ping_interval: Duration,
    handoff_limit: u32,
    reservation_timeout: Duration,
    /// Certificates as given; its `Debug` shows whether each is set, not its bytes.
    tls: TlsOptions,
}

impl Default for LockClientBuilder {
    fn default() -> Self {
        LockClientBuilder {
            key_prefix: "redis-mutex".into(),
            pool_max_size: 8,
            pool_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(3),
            outage_tolerance: Duration::from_secs(30),
            recheck_interval: Duration::from_secs(60),
            ping_interval: Duration::from_secs(5),
            handoff_limit: 8,
            reservation_timeout: Duration::from_secs(1),
            tls: TlsOptions::default(),
        }
    }
}

impl LockClientBuilder {
    /// The prefix of every key and channel: lock `name` lives at `<prefix>:{<name>}`.
    /// Clients that should exclude each other must share it. No glob characters
    /// (`* ? [ ] \`) or braces. Defaults to `"redis-mutex"`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Most pooled connections. Waiting threads hold none while they sleep, so this
    /// bounds concurrent *attempts*, not waiters. Defaults to 8.
    pub fn pool_max_size(mut self, n: u32) -> Self {
        self.pool_max_size = n;
        self
    }

    /// How long an operation waits for a pooled connection. Defaults to 5 s.
    pub fn pool_timeout(mut self, d: Duration) -> Self {
        self.pool_timeout = d;
        self
    }

    /// TCP connect (and handshake) timeout of every connection. Defaults to 2 s.
    ///
    /// Over TLS it bounds the TLS handshake too. When a server accepts the connection
    /// but does not answer the handshake, the last quarter of this timeout (at most
    /// 250 ms) is spent finding out whether a plain-TCP Redis listens there, so that
    /// the error can say so ([`Error::Tls`]) rather than report a timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Read timeout of every connection: a server that does not answer within it is
    /// treated as unreachable. Defaults to 3 s.
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }

    /// Write timeout of every connection. Defaults to 3 s.
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// How long [`Mutex::lock`] keeps retrying through Redis errors (with backoff)
    /// before returning the last one. Calls with a deadline retry until the deadline
    /// instead. Defaults to 30 s.
    pub fn outage_tolerance(mut self, d: Duration) -> Self {
        self.outage_tolerance = d;
        self
    }

    /// The longest a waiter sleeps without asking Redis while release messages are
    /// being heard. Sleeps also end when the holder's lease would run out. A safety
    /// net: releases wake waiters by message. Defaults to 60 s.
    pub fn recheck_interval(mut self, d: Duration) -> Self {
        self.recheck_interval = d;
        self
    }

    /// After this long without a message, the notifier PINGs its connection to find
    /// out whether it is still alive. Defaults to 5 s.
    pub fn ping_interval(mut self, d: Duration) -> Self {
        self.ping_interval = d;
        self
    }

    /// A release hands the lock straight to a waiting thread of the same client:
    /// without a round trip while Redis confirmed the lease within its renewal period
    /// (the lock stays this client's in Redis), else through Redis (one round trip).
    /// At most this many handoffs without a round trip follow each other; then a
    /// release through Redis checks that the lock is still ours and, while threads of
    /// *other* clients wait, passes it to the client that has waited longest. So this
    /// also bounds how many of this client's threads can take over a lock Redis lost
    /// (restart without persistence, force-unlock) before one is told. `0` sends every
    /// release through Redis and lets a waiting client go first. Defaults to 8.
    pub fn handoff_limit(mut self, n: u32) -> Self {
        self.handoff_limit = n;
        self
    }

    /// When a release grants the lock to the client that has waited longest (making it
    /// the owner, and telling it so), the grant lasts this long until that client takes
    /// it: its notifier hands it to one of its waiting threads, which returns at once
    /// and renews it to the lease it asked for. Only if that client has gone away
    /// (crashed, or stopped) does this matter: the grant then runs out, and the next
    /// waiting client, told when to look again, takes the lock; so a crashed waiting
    /// process costs the others about this long, not a lease. The other clients this
    /// client waits behind use their own values. Defaults to 1 s.
    pub fn reservation_timeout(mut self, d: Duration) -> Self {
        self.reservation_timeout = d;
        self
    }

    /// Trusts the CA certificate(s) in `pem` (PEM, one or more `-----BEGIN
    /// CERTIFICATE-----` blocks) for `rediss://` URLs, instead of the system's roots:
    /// the server's certificate must be signed by one of them, for the host name or IP
    /// address in the URL. Needs a `rediss://` URL and the `tls` feature (on by
    /// default). Defaults to the system's roots.
    ///
    /// `build` checks the PEM before any I/O: [`Error::InvalidOption`] naming
    /// `tls_root_cert` when it holds no certificate or does not parse. The bytes
    /// never appear in `Debug` output, errors or logs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use redis_mutex::LockClient;
    ///
    /// let client = LockClient::builder()
    ///     .tls_root_cert(std::fs::read("ca.crt")?)
    ///     .build("rediss://redis.internal:6380/")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_cert = Some(pem.into());
        self
    }

    /// Mutual TLS: the certificate chain (`cert_pem`, the client's own certificate
    /// first) and its private key (`key_pem`: unencrypted PKCS#8 `PRIVATE KEY`, or
    /// `RSA PRIVATE KEY` / `EC PRIVATE KEY`) this client presents to a server that asks
    /// for one (`tls-auth-clients yes`). Needs a `rediss://` URL and the `tls` feature
    /// (on by default). Defaults to none.
    ///
    /// `build` checks, before any I/O, that both parse and that the key belongs to the
    /// certificate: [`Error::InvalidOption`] naming `tls_client_cert` otherwise. The
    /// key never appears in `Debug` output, errors or logs.
    pub fn tls_client_cert(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls.client_cert = Some((cert_pem.into(), key_pem.into()));
        self
    }

    fn check(&self) -> Result<()> {
        validate_prefix(&self.key_prefix)?;
        self.tls.check()?;
        if self.pool_max_size == 0 {
            return Err(Error::InvalidOption { option: "pool_max_size", reason: "must be at least 1".into() });
        }
        for (option, d, zero_ok) in [
            ("pool_timeout", self.pool_timeout, false),
            ("connect_timeout", self.connect_timeout, false),
            ("read_timeout", self.read_timeout, false),
            ("write_timeout", self.write_timeout, false),
            ("outage_tolerance", self.outage_tolerance, true),
            ("recheck_interval", self.recheck_interval, false),
            ("ping_interval", self.ping_interval, false),
            ("reservation_timeout", self.reservation_timeout, false),
        ] {
            if d.is_zero() && !zero_ok {
                return Err(Error::InvalidOption { option, reason: "must be longer than zero".into() });
            }
            // Every duration is added to a clock somewhere (and some are sent to Redis
            // as milliseconds): one limit that neither overflows.
            if d > MAX_LEASE {
                return Err(Error::InvalidOption {
                    option,
                    reason: format!("{d:?} is longer than the maximum of {MAX_LEASE:?} (about 34 years)"),
                });
            }
        }
        Ok(())
    }

    /// Builds the client and checks, with one connection and a `PING`, that the server
    /// answers and accepts the credentials.
    ///
    /// On the same connection it reads the settings locks depend on, and logs what is
    /// at risk: a `maxmemory-policy` other than `noeviction` is a warning (Redis may
    /// evict a held lock), a server without AOF a note at info level (a restart forgets
    /// every lock). It asks with `INFO`; a server that refuses (an ACL without `+info`, a
    /// managed Redis without the command) is noted as "could not check", and never
    /// fails the build.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] / [`Error::InvalidUrl`] before any I/O;
    /// [`Error::Connection`] when nothing answers in time; [`Error::Auth`] when the
    /// credentials are refused.
    pub fn build(self, url: &str) -> Result<LockClient> {
        self.start(url, true)
    }

    /// Builds the client without contacting the server: connection problems show up
    /// on first use, and the notifier keeps trying to subscribe in the background.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] / [`Error::InvalidUrl`]; [`Error::Spawn`] when a
    /// background thread cannot be started.
    ///
    /// # Examples
    ///
    /// Options and the URL are checked before anything else, so this runs anywhere:
    ///
    /// ```
    /// use redis_mutex::{Error, LockClient};
    ///
    /// let err = LockClient::builder().key_prefix("app*").build_unchecked("redis://127.0.0.1:1/").unwrap_err();
    /// assert!(matches!(err, Error::InvalidOption { option: "key_prefix", .. }));
    /// let err = LockClient::builder().build_unchecked("not a url").unwrap_err();
    /// assert!(matches!(err, Error::InvalidUrl { .. }));
    /// let client = LockClient::builder().build_unchecked("redis://127.0.0.1:1/")?; // no I/O
    /// assert_eq!(client.key_prefix(), "redis-mutex");
    /// # Ok::<(), Error>(())
    /// ```
    pub fn build_unchecked(self, url: &str) -> Result<LockClient> {
        self.start(url, false)
    }

    fn start(self, url: &str, check: bool) -> Result<LockClient> {
        self.check()?;
        let client_id = uuid::Uuid::new_v4().simple().to_string();
        let registry = Registry::new();
        let stats = Arc::new(Counters::default());
        let options = backend::Options {
            client_id: client_id.clone(),
            prefix: self.key_prefix.clone(),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            pool_max_size: self.pool_max_size,
            pool_timeout: self.pool_timeout,
            reservation: self.reservation_timeout,
            ping_interval: self.ping_interval,
            tls: self.tls.clone(),
        };
        let backend = backend::open(Deployment::Single { url }, options, registry.clone(), stats.clone(), check)?;
        let settings = wait::Settings {
            max_sleep: self.recheck_interval,
            outage_tolerance: self.outage_tolerance,
            handoff_limit: self.handoff_limit,
        };
        let core = Arc::new(Core::new(backend, registry, stats, settings)?);
        log::debug!("redis-mutex: client {client_id} for {} (prefix {})", redact_url(url), self.key_prefix);
        Ok(LockClient {
            inner: Arc::new(ClientInner {
                core,
                prefix: self.key_prefix,
                client_id,
                url: redact_url(url),
                pool_max_size: self.pool_max_size,
                reentrant: StdMutex::default(),
            }),
        })
    }
}
