//! [`LockClientBuilder`]: every option with its default, the checks before any I/O,
//! and the builds (one server, Sentinel, Cluster; Redlock's in `redlock.rs`).

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use super::{ClientInner, LockClient};
use crate::backend::{self, Deployment};
use crate::error::{Error, Result};
use crate::keys::{redact_url, validate_prefix};
use crate::options::MAX_LEASE;
use crate::stats::Counters;
use crate::tls::TlsOptions;
use crate::wait::{self, Core, Registry};

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
    master: backend::MasterLogin,
    /// Certificates as given; its `Debug` shows whether each is set, not its bytes.
    tls: TlsOptions,
    /// `redlock_max_lease`, `redlock_master_timeout` (see `redlock.rs`).
    pub(super) redlock: backend::redlock::Settings,
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
            master: backend::MasterLogin::default(),
            tls: TlsOptions::default(),
            redlock: backend::redlock::Settings {
                max_lease: Duration::from_secs(30),
                master_timeout: Duration::from_millis(50),
            },
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

    /// How long [`Mutex::lock`](crate::Mutex::lock) keeps retrying through Redis errors (with backoff)
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
    ///
    /// The same bound applies to a [`Semaphore`](crate::Semaphore)'s permits and a
    /// [`RwLock`](crate::RwLock)'s write lock, which pass between threads of a client
    /// in memory; `0` also stops readers from joining a read share of their client,
    /// and makes every waiting thread of theirs its own entry in the lock's queue in
    /// Redis (FIFO by thread across the fleet, a round trip per acquisition and
    /// release).
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

    /// With [`build_sentinel`](Self::build_sentinel): the ACL user to log in to the
    /// master with (the Sentinels' own credentials go in their URLs). Defaults to none
    /// (the `default` user).
    pub fn master_username(mut self, username: impl Into<String>) -> Self {
        self.master.username = Some(username.into());
        self
    }

    /// With [`build_sentinel`](Self::build_sentinel): the password to log in to the
    /// master with (never shown in `Debug`, errors or logs). Defaults to none.
    pub fn master_password(mut self, password: impl Into<String>) -> Self {
        self.master.password = Some(password.into());
        self
    }

    /// With [`build_sentinel`](Self::build_sentinel): the database number on the
    /// master. Defaults to 0.
    pub fn master_db(mut self, db: i64) -> Self {
        self.master.db = db;
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
            ("redlock_max_lease", self.redlock.max_lease, false),
            ("redlock_master_timeout", self.redlock.master_timeout, false),
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
        self.start(Deployment::Single { url }, redact_url(url), true)
    }

    /// Builds a client for the master that Sentinels monitor as `master_name`, and
    /// checks that one of `sentinels` names a master that answers.
    ///
    /// The master is asked for from the Sentinels in turn (any one that answers, each
    /// within `connect_timeout` and `read_timeout`), confirmed with `ROLE`, and looked
    /// up again when a connection to it fails, when it answers `READONLY` (a master
    /// demoted by a failover: that connection is dropped), and when a Sentinel
    /// announces `+switch-master` (one thread per client listens to one Sentinel at a
    /// time). Credentials for the Sentinels go in their URLs; for the master, see
    /// [`master_username`](Self::master_username),
    /// [`master_password`](Self::master_password) and [`master_db`](Self::master_db).
    /// With `rediss://` Sentinel URLs, the master is reached over TLS too.
    ///
    /// When the server changes (a failover, or a restart: its `run_id` changes), every
    /// lock the client holds is checked at once: those the new master lacks are marked
    /// lost ([`MutexGuard::is_lost`](crate::MutexGuard::is_lost)), and none is handed
    /// to another thread in memory until Redis confirmed it again. Replication is
    /// asynchronous: a lock acquired just before the master failed may be missing on
    /// the replica that takes over, so that another client can acquire it too, and
    /// the first holder learns it within a moment; see
    /// [`MutexOptions::wait_replicas`](crate::MutexOptions) to make that rarer.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build); [`Error::InvalidOption`] when `sentinels` is empty
    /// or `master_name` is; [`Error::Connection`] naming each Sentinel and what it said
    /// when none names a reachable master.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use redis_mutex::LockClient;
    ///
    /// let client = LockClient::builder()
    ///     .master_password("secret")
    ///     .build_sentinel("mymaster", &["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/"])?;
    /// let _guard = client.mutex("nightly-report").lock()?;
    /// # Ok::<(), redis_mutex::Error>(())
    /// ```
    pub fn build_sentinel<S: AsRef<str>>(self, master_name: &str, sentinels: &[S]) -> Result<LockClient> {
        let urls: Vec<String> = sentinels.iter().map(|s| s.as_ref().to_owned()).collect();
        let shown = format!(
            "Sentinel master {master_name:?} ({})",
            urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(", ")
        );
        let master = self.master.clone();
        self.start(Deployment::Sentinel { master_name, sentinels: &urls, master: &master }, shown, true)
    }

    /// Builds a client for a Redis Cluster, from the URLs of any of its nodes (seeds),
    /// and checks that one of them answers with the cluster's slot map.
    ///
    /// Everything else (mutexes, options, stats, `wait_replicas`) works as on one
    /// server. All of a lock's keys share the hash tag `{name}`, so each of its scripts
    /// runs on the master that serves that slot, which the client finds in its slot map
    /// (`CLUSTER SLOTS`, asked of the known masters, then the seeds, each within the
    /// connect and read timeouts). A `MOVED` reply (a failover, a resharding) corrects
    /// the map and the request goes on to the node it names; an `ASK` reply (a slot
    /// being migrated) is followed once with `ASKING`. Renewals go in one pipeline per
    /// master. Wake-ups are published by the scripts to per-client channels, which the
    /// cluster delivers to every node; the notifier subscribes on one master (the next
    /// one when that fails), so a client holds one pool per master it uses and one
    /// subscriber connection. Credentials and TLS come from the first seed's URL; the
    /// database is 0 (a cluster has no other).
    ///
    /// A master that fails loses the locks it had not yet replicated: their holders
    /// are told at their next renewal or release on the new master (see
    /// [`MutexGuard::is_lost`](crate::MutexGuard::is_lost)).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build); [`Error::InvalidOption`] without seeds;
    /// [`Error::InvalidUrl`] for a URL that does not parse, is a Unix socket, or names
    /// a database other than 0.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use redis_mutex::LockClient;
    ///
    /// let client = LockClient::builder().build_cluster(&["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"])?;
    /// let _guard = client.mutex("nightly-report").lock()?;
    /// # Ok::<(), redis_mutex::Error>(())
    /// ```
    pub fn build_cluster<S: AsRef<str>>(self, seeds: &[S]) -> Result<LockClient> {
        let seeds: Vec<String> = seeds.iter().map(|s| s.as_ref().to_owned()).collect();
        let shown = format!("cluster ({})", seeds.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(", "));
        self.start(Deployment::Cluster { seeds: &seeds }, shown, true)
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
        self.start(Deployment::Single { url }, redact_url(url), false)
    }

    /// `shown`: where the locks live, without credentials, for `Debug` and logs.
    pub(super) fn start(self, deployment: Deployment<'_>, shown: String, check: bool) -> Result<LockClient> {
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
        let backend = backend::open(deployment, options, registry.clone(), stats.clone(), check)?;
        let settings = wait::Settings {
            max_sleep: self.recheck_interval,
            outage_tolerance: self.outage_tolerance,
            handoff_limit: self.handoff_limit,
        };
        let core = Arc::new(Core::new(backend, registry, stats, settings)?);
        log::debug!("redis-mutex: client {client_id} for {shown} (prefix {})", self.key_prefix);
        Ok(LockClient {
            inner: Arc::new(ClientInner {
                core,
                prefix: self.key_prefix,
                client_id,
                url: shown,
                pool_max_size: self.pool_max_size,
                reentrant: StdMutex::default(),
            }),
        })
    }
}
