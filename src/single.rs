//! The single-server backend: the Redis protocol of DESIGN §2 over an r2d2 pool.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionLike, RedisError, Script, Value};

use crate::backend::{Attempt, AttemptArgs, Backend, Holder, ReleaseArgs, Released};
use crate::error::{Error, Result};
use crate::keys::LockKeys;
use crate::sync::lock;

/// Connection settings shared by the pool and the notifier's connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings {
    pub client: redis::Client,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `CLIENT SETNAME` of pooled connections (`redis-mutex:<client id>`); the notifier
    /// appends `:notifier`. Lets operators and tests tell a client's connections apart.
    pub name: String,
}

impl ConnectSettings {
    /// A connection with every timeout set: nothing blocks forever on a dead socket.
    pub fn connect(&self, role: &str) -> std::result::Result<Connection, RedisError> {
        let mut con = self.client.get_connection_with_timeout(self.connect_timeout)?;
        con.set_read_timeout(Some(self.read_timeout))?;
        con.set_write_timeout(Some(self.write_timeout))?;
        redis::cmd("CLIENT").arg("SETNAME").arg(format!("{}{role}", self.name)).query::<()>(&mut con)?;
        Ok(con)
    }
}

/// r2d2 manager that sets our timeouts (redis-rs's own manager connects without any).
#[derive(Debug)]
pub(crate) struct Manager(pub ConnectSettings);

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = RedisError;

    fn connect(&self) -> std::result::Result<Connection, RedisError> {
        self.0.connect("")
    }

    fn is_valid(&self, con: &mut Connection) -> std::result::Result<(), RedisError> {
        redis::cmd("PING").query(con)
    }

    fn has_broken(&self, con: &mut Connection) -> bool {
        !con.is_open()
    }
}

struct Scripts {
    acquire: Script,
    release: Script,
    extend: Script,
    force_unlock: Script,
    leave: Script,
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
}

/// The shortest wait for a pooled connection, even close to a caller's deadline: many
/// waiters sharing a deadline make their last attempts together.
const MIN_POOL_WAIT: Duration = Duration::from_millis(100);

pub(crate) struct SingleServer {
    pool: r2d2::Pool<Manager>,
    pool_timeout: Duration,
    last_connect_error: LastConnectError,
    /// Opens the direct connection that checks an unreachable server.
    probe: ConnectSettings,
    scripts: Scripts,
    client_id: String,
    reservation_ms: u64,
}

/// The reply `{a, b}` of our scripts.
fn pair(v: &Value, operation: &'static str) -> Result<(i64, i64)> {
    match ints(v, operation)?.as_slice() {
        [a, b] => Ok((*a, *b)),
        _ => Err(Error::UnexpectedReply { operation, reply: format!("{v:?}") }),
    }
}

/// A reply that is an array of integers.
fn ints(v: &Value, operation: &'static str) -> Result<Vec<i64>> {
    let unexpected = || Error::UnexpectedReply { operation, reply: format!("{v:?}") };
    let Value::Array(items) = v else { return Err(unexpected()) };
    items.iter().map(|i| if let Value::Int(n) = i { Ok(*n) } else { Err(unexpected()) }).collect()
}

fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

impl SingleServer {
    pub fn new(
        settings: ConnectSettings,
        max_size: u32,
        pool_timeout: Duration,
        client_id: String,
        reservation: Duration,
    ) -> Self {
        let last_connect_error = LastConnectError::default();
        let pool = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            // A PING per check-out would double the round trips of every operation;
            // a dead connection fails on use instead, and the operation is retried.
            .test_on_check_out(false)
            .connection_timeout(pool_timeout)
            // No reaper: its job keeps r2d2's worker threads alive ~30 s past the
            // client. Idle connections stay open (at most `max_size`); broken ones are
            // dropped on return.
            .idle_timeout(None)
            .max_lifetime(None)
            // Failures reach the caller as errors (r2d2 would log every retry).
            .error_handler(Box::new(last_connect_error.clone()))
            .build_unchecked(Manager(settings.clone()));
        SingleServer {
            pool,
            pool_timeout,
            last_connect_error,
            probe: settings,
            scripts: Scripts {
                acquire: Script::new(concat!(
                    include_str!("lua/queue.lua"),
                    include_str!("lua/fence.lua"),
                    include_str!("lua/acquire.lua")
                )),
                release: Script::new(concat!(
                    include_str!("lua/queue.lua"),
                    include_str!("lua/fence.lua"),
                    include_str!("lua/release.lua")
                )),
                leave: Script::new(concat!(include_str!("lua/queue.lua"), include_str!("lua/leave.lua"))),
                extend: Script::new(include_str!("lua/extend.lua")),
                force_unlock: Script::new(include_str!("lua/force_unlock.lua")),
            },
            client_id,
            reservation_ms: reservation.as_millis().max(1) as u64,
        }
    }

    /// A pool that gave up: an unreachable server or refused credentials if it failed to
    /// connect meanwhile, else a busy pool.
    fn pool_error(&self, _: r2d2::Error, waited: Duration) -> Error {
        match self.last_connect_error.recent(waited + Duration::from_millis(10)) {
            Some(e) => Error::from_redis(e, None),
            None => Error::PoolTimeout { waited, last_error: None },
        }
    }

    /// Runs `op` on a pooled connection. A connection the server dropped while it sat
    /// in the pool (restart, `CLIENT KILL`) fails on first use; `op` is retried until it
    /// reaches a live one. Acquire and extend are safe to repeat; a repeated release that
    /// finds the lock gone reports it lost (see `release`).
    fn with_conn<T>(
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
            if let Some(e) = self.last_connect_error.recent(self.pool_timeout)
                && self.pool.state().idle_connections == 0
            {
                match self.probe.connect(":probe") {
                    Ok(_) => log::debug!("redis-mutex: Redis answers again (after: {e})"),
                    Err(e) => return Err(Error::from_redis(e, None)),
                }
            }
            let wait = deadline.map_or(self.pool_timeout, |d| {
                d.saturating_duration_since(started).clamp(MIN_POOL_WAIT.min(self.pool_timeout), self.pool_timeout)
            });
            let mut con = self.pool.get_timeout(wait).map_err(|e| self.pool_error(e, started.elapsed()))?;
            match op(&mut con) {
                Ok(v) => return Ok(v),
                Err(e)
                    if retries <= self.pool.max_size()
                        && (e.is_connection_dropped() || e.is_io_error())
                        && !e.is_timeout() =>
                {
                    log::debug!("redis-mutex: retrying on a fresh connection after: {e}");
                    retries += 1;
                }
                Err(e) => return Err(Error::from_redis(e, key)),
            }
        }
    }
}

impl Backend for SingleServer {
    fn attempt(&self, keys: &LockKeys, a: AttemptArgs<'_>) -> Result<Attempt> {
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.key(&keys.key)
            .key(&keys.fence)
            .arg(a.token)
            .arg(a.lease_ms)
            .arg(a.fence_span)
            .arg(&self.client_id)
            .arg(flag(a.will_wait));
        let v = self.with_conn(Some(&keys.key), a.deadline, |c| inv.invoke::<Value>(c))?;
        match pair(&v, "acquire")? {
            (1, fence) => Ok(Attempt::Acquired { fence: fence.max(0) as u64 }),
            (0, pttl) => Ok(Attempt::Held { remaining: u64::try_from(pttl).ok().map(Duration::from_millis) }),
            (2, pttl) => Ok(Attempt::Reserved { remaining: u64::try_from(pttl).ok().map(Duration::from_millis) }),
            _ => Err(Error::UnexpectedReply { operation: "acquire", reply: format!("{v:?}") }),
        }
    }

    fn release(&self, keys: &LockKeys, a: ReleaseArgs<'_>) -> Result<Released> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&keys.key).key(&keys.fence).arg(a.token).arg(&self.client_id);
        match a.handoff {
            Some(t) => inv.arg(&t.token).arg(t.lease_ms).arg(if t.fencing { a.fence_span } else { 0 }),
            None => inv.arg("").arg(0).arg(0),
        };
        inv.arg(a.limit).arg(self.reservation_ms).arg(a.lease_ms).arg(a.local_handoffs);
        let v = self.with_conn(Some(&keys.key), None, |c| inv.invoke::<Value>(c))?;
        let unexpected = || Error::UnexpectedReply { operation: "release", reply: format!("{v:?}") };
        match ints(&v, "release")?.as_slice() {
            // After a retry this may also mean the first try ran before its connection
            // broke. Reporting a loss that did not happen is the safe mistake; the
            // other would hide a lease that ran out.
            [0, _] => Ok(Released::NotOwner),
            [1, _] => Ok(Released::Deleted),
            [2, fence, turn] => Ok(Released::Handed {
                fence: (*fence).max(0) as u64,
                turn: u32::try_from(*turn).map_err(|_| unexpected())?,
            }),
            [3, _] => Ok(Released::Passed),
            _ => Err(unexpected()),
        }
    }

    fn extend(&self, items: &[(&LockKeys, &str, u64)]) -> Result<Vec<Result<bool>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let hash = self.scripts.extend.get_hash().to_owned();
        let mut pipe = redis::pipe();
        // Each reply on its own: one lock's error (WRONGTYPE where someone wrote over
        // its key) must not fail the renewal of the others in the batch.
        pipe.ignore_errors();
        for (keys, token, lease_ms) in items {
            pipe.cmd("EVALSHA").arg(&hash).arg(1).arg(&keys.key).arg(*token).arg(*lease_ms);
        }
        type Replies = Vec<redis::RedisResult<i64>>;
        let no_script = |r: &Replies| {
            r.iter().any(|r| {
                r.as_ref().is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
            })
        };
        let run = |c: &mut Connection| {
            let replies = pipe.query::<Replies>(c)?;
            if no_script(&replies) {
                // Extending again is harmless: each item checks its token.
                self.scripts.extend.load(c)?;
                return pipe.query::<Replies>(c);
            }
            Ok(replies)
        };
        let replies = self.with_conn(None, None, run)?;
        Ok(replies
            .into_iter()
            .zip(items)
            .map(|(r, (keys, ..))| r.map(|n| n == 1).map_err(|e| Error::from_redis(e, Some(&keys.key))))
            .collect())
    }

    fn leave(&self, keys: &LockKeys) -> Result<()> {
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.key(&keys.key).arg(&self.client_id).arg(self.reservation_ms);
        let outcome: i64 = self.with_conn(Some(&keys.key), None, |c| inv.invoke::<i64>(c))?;
        log::debug!("redis-mutex: left the queue of {} ({outcome})", keys.key);
        Ok(())
    }

    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&keys.key).arg("o").arg("w").arg("q").cmd("PTTL").arg(&keys.key);
        type Fields = (Option<String>, Option<String>, Option<String>);
        let (fields, pttl) = self.with_conn(Some(&keys.key), None, |c| pipe.query::<(Fields, i64)>(c))?;
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        let contended = set(&fields.1) || set(&fields.2);
        // A lock passed to a waiting client is free (`o` empty) until that client takes it.
        Ok(fields.0.filter(|t| !t.is_empty()).map(|token| Holder {
            token,
            remaining_lease: u64::try_from(pttl).ok().map(Duration::from_millis),
            contended,
        }))
    }

    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        let mut inv = self.scripts.force_unlock.prepare_invoke();
        inv.key(&keys.key);
        let deleted: i64 = self.with_conn(Some(&keys.key), None, |c| inv.invoke::<i64>(c))?;
        Ok(deleted == 1)
    }
}
