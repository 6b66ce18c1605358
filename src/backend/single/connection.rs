//! Connections to one server: settings with every timeout, the r2d2 manager, and the
//! pool wrapper that retries on connections the server dropped and tells an outage
//! from a busy pool.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionLike, RedisError};

use crate::backend::cluster::Nodes;
use crate::backend::sentinel::Master;
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::tls;

/// The server the connections go to.
#[derive(Clone)]
pub(crate) enum Target {
    /// One server, always the same (boxed: a TLS client's settings make it large).
    Fixed(Box<redis::Client>),
    /// Whichever server the Sentinels name the master (see `backend::sentinel`).
    Sentinel(Arc<Master>),
    /// A cluster: pooled requests go to each slot's master (`route::Route::Cluster`);
    /// connections made here (the notifier's, the build's check) go to any master.
    Cluster(Arc<Nodes>),
}

impl Target {
    /// A client for the server now, and its generation (which changes when a failover
    /// moves the master: connections of an older generation are dropped).
    pub fn client(&self) -> std::result::Result<(redis::Client, u64), RedisError> {
        match self {
            Target::Fixed(client) => Ok((redis::Client::clone(client), 0)),
            Target::Sentinel(master) => master.client(),
            Target::Cluster(nodes) => Ok((nodes.subscriber()?, 0)),
        }
    }

    /// The generation connections must belong to now.
    pub fn generation(&self) -> u64 {
        match self {
            Target::Fixed(_) | Target::Cluster(_) => 0,
            Target::Sentinel(master) => master.generation(),
        }
    }

    /// A connection of `generation` failed, or its server turned out not to be the
    /// master (`READONLY`): find the master again before the next connection.
    pub fn suspect(&self, generation: u64) {
        match self {
            Target::Sentinel(master) => master.suspect(generation),
            Target::Cluster(nodes) => nodes.subscriber_failed(),
            Target::Fixed(_) => {}
        }
    }

    /// How every connection logs in (database, protocol, credentials).
    pub fn redis_settings(&self) -> &redis::RedisConnectionInfo {
        match self {
            Target::Fixed(client) => client.get_connection_info().redis_settings(),
            Target::Sentinel(master) => master.template().redis_settings(),
            Target::Cluster(nodes) => nodes.template().redis_settings(),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fixed(_) => f.write_str("Fixed"),
            Target::Sentinel(master) => write!(f, "Sentinel({:?})", master.name()),
            Target::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

/// Connection settings shared by the pool, the notifier's connection and every other
/// connection of the client (the build check, the probe of an unreachable server):
/// with a `rediss://` URL, the `Target::Fixed` client holds the TLS settings, so every
/// one is TLS.
#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings {
    pub target: Target,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `CLIENT SETNAME` of pooled connections (`redis-mutex:<client id>`); the notifier
    /// appends `:notifier`. Lets operators and tests tell a client's connections apart.
    pub name: String,
    /// Run on every new connection once it is named; its error fails the connect.
    pub on_connect: Option<OnConnect>,
}

/// What a backend asks of every new connection to a server before it is used: a
/// Redlock master records its uptime (`INFO server`) on each, so that the reply to a
/// request is never counted from a server whose restart nobody has looked at.
#[derive(Clone)]
pub(crate) struct OnConnect(pub Arc<Hook>);

/// What [`OnConnect`] runs.
pub(crate) type Hook = dyn Fn(&mut Connection) -> std::result::Result<(), RedisError> + Send + Sync;

impl std::fmt::Debug for OnConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnConnect")
    }
}

impl ConnectSettings {
    /// A connection with every timeout set: nothing blocks forever on a dead socket.
    pub fn connect(&self, role: &str) -> std::result::Result<Connection, RedisError> {
        self.connect_tagged(role).map(|c| c.con)
    }

    /// [`connect`](Self::connect), with the generation of the server it reached.
    pub fn connect_tagged(&self, role: &str) -> std::result::Result<Tagged, RedisError> {
        let (client, generation) = self.target.client()?;
        let opened = match client.get_connection_info().addr() {
            // Within the same timeout, tells a plain-TCP port from a silent server.
            redis::ConnectionAddr::TcpTls { .. } => tls::connect(&client, self.connect_timeout),
            _ => client.get_connection_with_timeout(self.connect_timeout),
        };
        let opened = opened.and_then(|mut con| {
            con.set_read_timeout(Some(self.read_timeout))?;
            con.set_write_timeout(Some(self.write_timeout))?;
            redis::cmd("CLIENT").arg("SETNAME").arg(format!("{}{role}", self.name)).query::<()>(&mut con)?;
            if let Some(OnConnect(hook)) = &self.on_connect {
                hook(&mut con)?;
            }
            Ok(con)
        });
        match opened {
            Ok(con) => Ok(Tagged { con, generation, discard: false }),
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped() {
                    self.target.suspect(generation);
                }
                Err(e)
            }
        }
    }
}

/// A pooled connection and the generation of the server it reached (see `Target`).
pub(crate) struct Tagged {
    pub con: Connection,
    pub generation: u64,
    /// Not reused: it answered `READONLY` (its server is no longer the master), or a
    /// reply on it was not read (see [`Lent`]).
    pub discard: bool,
}

/// r2d2 manager that sets our timeouts (redis-rs's own manager connects without any).
#[derive(Debug)]
struct Manager(ConnectSettings);

impl r2d2::ManageConnection for Manager {
    type Connection = Tagged;
    type Error = RedisError;

    fn connect(&self) -> std::result::Result<Tagged, RedisError> {
        self.0.connect_tagged("")
    }

    fn is_valid(&self, con: &mut Tagged) -> std::result::Result<(), RedisError> {
        redis::cmd("PING").query(&mut con.con)
    }

    fn has_broken(&self, con: &mut Tagged) -> bool {
        !con.con.is_open() || con.discard || con.generation != self.0.target.generation()
    }
}

/// The pool's last failure to open a connection. r2d2 keeps only its text; we keep the
/// error itself, so an unreachable server and a refused password stay apart.
#[derive(Debug, Default, Clone)]
struct LastConnectError(Arc<StdMutex<Option<(Instant, RedisError)>>>);

impl r2d2::HandleError<RedisError> for LastConnectError {
    fn handle_error(&self, error: RedisError) {
        *lock(&self.0) = Some((Instant::now(), error));
    }
}

impl LastConnectError {
    /// The error, if the pool failed to connect within `recent`.
    fn recent(&self, recent: Duration) -> Option<RedisError> {
        let last = lock(&self.0);
        last.as_ref().filter(|(at, _)| at.elapsed() < recent).map(|(_, e)| e.clone())
    }

    /// The error, if the pool failed to connect since `start`.
    fn since(&self, start: Instant) -> Option<RedisError> {
        let last = lock(&self.0);
        last.as_ref().filter(|(at, _)| *at >= start).map(|(_, e)| e.clone())
    }

    /// The last error, however old, and how long ago it was.
    fn any(&self) -> Option<(Duration, RedisError)> {
        lock(&self.0).as_ref().map(|(at, e)| (at.elapsed(), e.clone()))
    }
}

/// The shortest wait for a pooled connection, even close to a caller's deadline: many
/// waiters sharing a deadline make their last attempts together.
const MIN_POOL_WAIT: Duration = Duration::from_millis(100);

/// How long a checkout waits at a time before looking at why the pool could not
/// connect (see `Pool::checkout`).
const POOL_SLICE: Duration = Duration::from_millis(50);

/// The pool of one client's connections to the server.
pub(crate) struct Pool {
    pool: r2d2::Pool<Manager>,
    timeout: Duration,
    last_connect_error: LastConnectError,
    /// Opens the direct connection that checks an unreachable server.
    probe: ConnectSettings,
}

impl Pool {
    pub fn new(settings: ConnectSettings, max_size: u32, timeout: Duration) -> Pool {
        let last_connect_error = LastConnectError::default();
        let pool = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            // A PING per check-out would double the round trips of every operation;
            // a dead connection fails on use instead, and the operation is retried.
            .test_on_check_out(false)
            .connection_timeout(timeout)
            // No reaper: its job keeps r2d2's worker threads alive ~30 s past the
            // client. Idle connections stay open (at most `max_size`); broken ones are
            // dropped on return.
            .idle_timeout(None)
            .max_lifetime(None)
            // Failures reach the caller as errors (r2d2 would log every retry).
            .error_handler(Box::new(last_connect_error.clone()))
            .build_unchecked(Manager(settings.clone()));
        Pool { pool, timeout, last_connect_error, probe: settings }
    }

    /// A pool that gave up: an unreachable server or refused credentials if it failed to
    /// connect meanwhile, else a busy pool (with the last failure to connect, if any,
    /// for the record).
    fn pool_error(&self, waited: Duration) -> Error {
        match self.last_connect_error.recent(waited + Duration::from_millis(10)) {
            Some(e) => Error::from_redis(e, None),
            None => Error::PoolTimeout {
                waited,
                last_error: self.last_connect_error.any().map(|(ago, e)| format!("{e} ({ago:.1?} ago)")),
            },
        }
    }

    /// A pooled connection within `wait` from `started`. Waits in slices: a connection
    /// the pool failed to open for a reason that waiting does not cure (a certificate
    /// either side refuses, credentials) ends the wait at once with that error,
    /// instead of after the whole pool timeout.
    fn checkout(&self, started: Instant, wait: Duration) -> Result<r2d2::PooledConnection<Manager>> {
        loop {
            let left = wait.saturating_sub(started.elapsed());
            match self.pool.get_timeout(left.min(POOL_SLICE)) {
                Ok(con) => return Ok(con),
                Err(_) if started.elapsed() >= wait => return Err(self.pool_error(started.elapsed())),
                Err(_) => {
                    if let Some(e) = self.last_connect_error.since(started) {
                        let e = Error::from_redis(e, None);
                        if !e.is_transient() {
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// An idle pooled connection to the server the pool now reaches, at once, for a
    /// request the caller sends and reads itself (see [`Lent`]); `None` when none is
    /// idle (opening one, or waiting for one, is [`with_conn`](Self::with_conn)'s).
    pub fn try_idle(&self) -> Option<Lent> {
        let mut con = self.pool.try_get()?;
        if con.generation != self.probe.target.generation() {
            return None;
        }
        con.discard = false;
        Some(Lent { con, read_timeout: self.probe.read_timeout, unsettled: false })
    }

    /// Runs `op` on a pooled connection. A connection the server dropped while it sat
    /// in the pool (restart, `CLIENT KILL`) fails on first use; `op` is retried until it
    /// reaches a live one. Acquire and extend are safe to repeat; a repeated release that
    /// finds the lock gone reports it lost (see `Released::NotOwner`). `key` names the
    /// lock for a `WrongType` error.
    pub fn with_conn<T>(
        &self,
        key: Option<&str>,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        // A server restart or `CLIENT KILL` breaks every idle pooled connection at once,
        // and each fails only on use (then r2d2 discards it): retrying just once could
        // land on another dead one and fail a release although Redis answers. One retry
        // per pooled connection, plus one, always reaches a fresh connection.
        let mut retries = 0;
        loop {
            let started = Instant::now();
            // While Redis is down the pool would wait its whole timeout for a connection
            // it cannot open. When it has none and failed to open one lately, one direct
            // connect tells at once whether the server is back, and if not, why.
            // Our own record first: `pool.state()` takes the lock every checkout takes.
            if let Some(e) = self.last_connect_error.recent(self.timeout)
                && self.pool.state().idle_connections == 0
            {
                match self.probe.connect(":probe") {
                    Ok(_) => log::debug!("redis-mutex: Redis answers again (after: {e})"),
                    Err(e) => return Err(Error::from_redis(e, None)),
                }
            }
            let wait = deadline.map_or(self.timeout, |d| {
                d.saturating_duration_since(started).clamp(MIN_POOL_WAIT.min(self.timeout), self.timeout)
            });
            let mut con = self.checkout(started, wait)?;
            if con.generation != self.probe.target.generation() {
                // Opened to a master that a failover replaced: dropped on return.
                retries += 1;
                continue;
            }
            match op(&mut con.con) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) => {
                    // A master demoted to replica (a failover): this connection is not
                    // used again, and the master is looked up afresh. Nothing ran.
                    con.discard = true;
                    self.probe.target.suspect(con.generation);
                    if retries > self.pool.max_size() {
                        return Err(Error::from_redis(e, key));
                    }
                    log::debug!("redis-mutex: the server answered READONLY (demoted); looking for the master");
                    retries += 1;
                }
                Err(e)
                    if retries <= self.pool.max_size()
                        && (e.is_connection_dropped() || e.is_io_error())
                        && !e.is_timeout() =>
                {
                    self.probe.target.suspect(con.generation);
                    log::debug!("redis-mutex: retrying on a fresh connection after: {e}");
                    retries += 1;
                }
                Err(e) => {
                    if e.is_io_error() || e.is_timeout() {
                        self.probe.target.suspect(con.generation);
                    }
                    return Err(Error::from_redis(e, key));
                }
            }
        }
    }
}

/// A pooled connection whose request the caller sends and reads itself, waiting for
/// the reply no longer than it chooses ([`recv`](Self::recv)). Dropped, it goes back
/// to the pool only in the state it came in (every reply read, the read timeout of the
/// settings); otherwise it is closed.
pub(crate) struct Lent {
    con: r2d2::PooledConnection<Manager>,
    read_timeout: Duration,
    /// A reply is due that was not read (a time-out: redis-rs skips it when it comes),
    /// or the read timeout is not the settings'.
    unsettled: bool,
}

impl Lent {
    /// Sends a packed request (its reply: [`recv`](Self::recv)).
    pub fn send(&mut self, packed: &[u8]) -> std::result::Result<(), RedisError> {
        self.unsettled = true;
        self.con.con.send_packed_command(packed)
    }

    /// The reply, waiting for it at most `wait` (at least 1 ms). After a time-out the
    /// reply is lost: redis-rs skips it when it comes, and the next request's reply is
    /// the next one read (see [`with`](Self::with)).
    pub fn recv(&mut self, wait: Duration) -> std::result::Result<redis::Value, RedisError> {
        self.con.con.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let reply = self.con.con.recv_response()?;
        self.con.con.set_read_timeout(Some(self.read_timeout))?;
        self.unsettled = false;
        reply.extract_error()
    }

    /// Runs `op` (a whole request; a reply lost to a time-out is skipped before its
    /// own) with the settings' read timeout: after it, the connection is as it came.
    pub fn with<T>(
        &mut self,
        op: impl FnOnce(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> std::result::Result<T, RedisError> {
        self.con.con.set_read_timeout(Some(self.read_timeout))?;
        let done = op(&mut self.con.con)?;
        self.unsettled = false;
        Ok(done)
    }

    /// Closed when dropped, not returned to the pool (it failed).
    pub fn discard(&mut self) {
        self.con.discard = true;
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.unsettled {
            self.con.discard = true;
        }
    }
}

/// Checks, with one connection and a `PING`, that the server answers and accepts the
/// credentials, then reads the settings locks depend on and logs what they put at
/// risk (see `log_server_risks`).
pub(crate) fn check(settings: &ConnectSettings, shown_url: &str) -> Result<()> {
    let mut con = settings.connect(":check").map_err(|e| Error::from_redis(e, None))?;
    redis::cmd("PING").query::<()>(&mut con).map_err(|e| Error::from_redis(e, None))?;
    log_server_risks(&mut con, shown_url);
    Ok(())
}

/// Reads the server's `maxmemory-policy` and whether AOF is on, and logs what they put
/// at risk. From `INFO` (its memory and persistence sections), not `CONFIG GET`: managed
/// Redis services often refuse `CONFIG`, and an ACL should not grant it (it reads
/// passwords), while `+info` is safe to grant. Every error is swallowed (a refused or
/// unknown command, a timeout): this only informs, so it must never stop a client that
/// would work.
fn log_server_risks(con: &mut Connection, url: &str) {
    let info = match redis::cmd("INFO").query::<String>(con) {
        Ok(info) => info,
        Err(e) => {
            log::info!(
                "redis-mutex: could not check maxmemory-policy and persistence of {url} ({e}): locks need \
                 noeviction, and AOF to survive a restart"
            );
            return;
        }
    };
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
    match field("maxmemory_policy") {
        Some("noeviction") => {}
        Some(p) => log::warn!(
            "redis-mutex: {url} has maxmemory-policy {p}: locks can be evicted: a holder would lose its lock \
             without knowing until its next renewal, and another client could take it meanwhile; set \
             maxmemory-policy noeviction"
        ),
        None => log::info!("redis-mutex: could not check maxmemory-policy of {url}: locks need noeviction"),
    }
    match field("aof_enabled") {
        Some("1") => {}
        Some(_) => log::info!(
            "redis-mutex: {url} has no AOF: a restart forgets every lock (holders learn it at their next \
             renewal; fencing tokens stay safe). Set appendonly yes to keep locks across restarts"
        ),
        None => log::info!("redis-mutex: could not check persistence of {url}: locks survive a restart with AOF"),
    }
}
