//! The Redlock build of [`LockClientBuilder`] and its options.

use std::time::Duration;

use super::{LockClient, LockClientBuilder};
use crate::backend::Deployment;
use crate::error::Result;
use crate::keys::redact_url;

impl LockClientBuilder {
    /// With [`build_redlock`](Self::build_redlock): the longest lease a lock may have,
    /// and how long a master that (re)started sits out of quorums.
    ///
    /// A master restarted without persistence has forgotten the locks it held, and the
    /// client cannot tell (a client started after the restart has nothing to compare
    /// with). So a master counts for no quorum until its `INFO` uptime reaches this:
    /// by then every lock it may have held has run out. Leases (in
    /// [`MutexOptions::lease`](crate::MutexOptions::lease) and
    /// [`MutexGuard::extend`](crate::MutexGuard::extend)) longer than this are refused
    /// with [`Error::InvalidOption`](crate::Error::InvalidOption). It also applies to
    /// masters just started: a new deployment takes locks once a majority of its
    /// masters have been up this long. Defaults to 30 s (the default lease).
    pub fn redlock_max_lease(mut self, d: Duration) -> Self {
        self.redlock.max_lease = d;
        self
    }

    /// With [`build_redlock`](Self::build_redlock): how long a request waits for each
    /// master's reply. The masters are asked at once; a master slower than this does
    /// not count for that request, and does not hold it up once a majority answered
    /// (the others get as long again as the request had taken). Keep it far below the
    /// lease: an acquisition is returned only while its validity (lease − time taken −
    /// drift) is positive. Defaults to 50 ms.
    pub fn redlock_master_timeout(mut self, d: Duration) -> Self {
        self.redlock.master_timeout = d;
        self
    }

    /// Builds a Redlock client over independent masters (no replication between them):
    /// a lock is held while a majority of them hold it for its owner. Checks that a
    /// majority answers and accepts the credentials.
    ///
    /// Mutexes, guards, options, renewal, fencing and stats are those of one server:
    ///
    /// - **Acquiring** asks every master at once (each within
    ///   [`redlock_master_timeout`](Self::redlock_master_timeout)). The lock is held
    ///   when a majority (N/2 + 1) of the masters that count granted it and its
    ///   *validity* is still positive: lease − time the request took − drift, where
    ///   drift = 1% of the lease + 2 ms allows for the masters' clocks running faster
    ///   than the client's. Otherwise everything granted is released again, and the
    ///   thread waits. The lease a guard counts on is the validity.
    /// - **Renewals and `extend`** go to every master (the watchdog's in one pipeline
    ///   per master) and hold while a majority extended within the validity; a guard
    ///   whose majority is gone is marked lost.
    /// - **Waiting**: one subscriber per master; the release of the holder names the
    ///   next waiting client (the next after the releaser's in the order of client
    ///   ids, on every master alike) and tells it alone; for 20 ms only it may take a
    ///   master's vote, so waiting clients take turns, one attempt each. Nothing is
    ///   granted as on one server (each master would grant to its own first waiter):
    ///   a name is no vote, and one not used lapses. Sleeps are bounded by the
    ///   shortest remaining lease seen.
    /// - **Fencing tokens** never go backwards: each master takes its own as on one
    ///   server (`max(counter, clock in µs) + block`), the acquisition's is the
    ///   maximum over the majority, and it is written back to them before the guard is
    ///   returned (one more round trip).
    /// - A master restarted less than [`redlock_max_lease`](Self::redlock_max_lease)
    ///   ago sits out.
    /// - With fewer than a majority answering, `lock()` retries for the outage
    ///   tolerance and `try_lock_for` until its deadline, then return
    ///   [`Error::NoQuorum`](crate::Error::NoQuorum).
    ///
    /// [`MutexOptions::wait_replicas`](crate::MutexOptions::wait_replicas) is refused
    /// ([`Error::InvalidOption`](crate::Error::InvalidOption)): the masters have no
    /// replicas. [`is_notifier_connected`](LockClient::is_notifier_connected) is true
    /// while a majority of the masters' subscribers are. Credentials and TLS come from
    /// each URL (TLS with the builder's certificates); the ACL needs `+info` (the
    /// uptime). The crate docs ("Redlock") say what it guarantees and what not.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build); [`Error::InvalidOption`](crate::Error::InvalidOption)
    /// for an even number of masters, fewer than 3, or one named twice;
    /// [`Error::NoQuorum`](crate::Error::NoQuorum) when fewer than a majority answer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use redis_mutex::{LockClient, MutexOptions};
    /// use std::time::Duration;
    ///
    /// let client = LockClient::builder()
    ///     .redlock_max_lease(Duration::from_secs(60))
    ///     .build_redlock(&["redis://a:6379/", "redis://b:6379/", "redis://c:6379/", "redis://d:6379/", "redis://e:6379/"])?;
    /// let report = client.mutex_with("report", MutexOptions::default().fencing(true));
    /// let guard = report.lock()?;
    /// println!("fencing token {:?}", guard.fencing_token());
    /// # Ok::<(), redis_mutex::Error>(())
    /// ```
    pub fn build_redlock<S: AsRef<str>>(self, masters: &[S]) -> Result<LockClient> {
        let urls: Vec<String> = masters.iter().map(|s| s.as_ref().to_owned()).collect();
        let shown = format!("Redlock ({})", urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(", "));
        let settings = self.redlock;
        self.start(Deployment::Redlock { masters: &urls, settings }, shown, true)
    }
}
