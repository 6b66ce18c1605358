//! The single-server backend: the Redis protocol of DESIGN §2 on one server, over an
//! r2d2 pool (`connection`), with the scripts in `scripts` and `lua/`, and the
//! subscriber thread in `notifier`.

mod connection;
mod notifier;
pub(crate) use self::connection::Target;
pub(crate) mod scripts;

use std::sync::Arc;

use crossbeam_channel::Sender;
use redis::{Connection, Value};

use self::connection::{ConnectSettings, Pool};
use self::notifier::NotifierConfig;
use self::scripts::{Releaser, Scripts};
use super::sentinel;
use super::{Attempt, AttemptArgs, Backend, Options, ReleaseArgs, ReleaseSink, Released, Renewal};
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::keys::{Channels, LockKeys};
use crate::stats::Counters;

/// One Redis server. Dropping it stops its notifier thread; the pool closes with the
/// last of the two.
pub(crate) struct SingleServer {
    server: Arc<Server>,
    /// Dropping it stops the notifier thread.
    _notifier_stop: Sender<()>,
}

/// What the backend and its notifier share.
struct Server {
    pool: Pool,
    scripts: Scripts,
    client_id: String,
    channels: Channels,
    /// How long a lock granted to a waiting client is its before it takes it.
    grant_ms: u64,
}

impl SingleServer {
    /// Connects to `target` (shown as `shown` in logs; with `check`, a `PING` first,
    /// see `connection::check`) and starts the notifier, which delivers to `sink`, and
    /// for a master found through Sentinel the thread that hears of failovers.
    pub fn open(
        target: Target,
        shown: &str,
        options: Options,
        sink: Arc<dyn ReleaseSink>,
        stats: Arc<Counters>,
        check: bool,
    ) -> Result<SingleServer> {
        let settings = ConnectSettings {
            target,
            name: format!("redis-mutex:{}", options.client_id),
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
            write_timeout: options.write_timeout,
        };
        if check {
            connection::check(&settings, shown)?;
        }
        // Channels are server-wide, keys per database: the database is in their names.
        let db = settings.target.redis_settings().db();
        let channels = Channels::new(&options.prefix, db, &options.client_id);
        let server = Arc::new(Server {
            pool: Pool::new(settings.clone(), options.pool_max_size, options.pool_timeout),
            scripts: Scripts::new(),
            client_id: options.client_id.clone(),
            channels: channels.clone(),
            grant_ms: options.reservation.as_millis().max(1) as u64,
        });
        let (stop, stopped) = crossbeam_channel::bounded(0);
        if let Target::Sentinel(master) = &settings.target {
            // Every held lock is checked the moment this client learns the master
            // moved, not when the notifier subscribes there (its next tick, up to a
            // quarter second later, and a reconnect): the old master may still grant
            // locks after the new one was promoted, and until the check, tenures taken
            // there were handed on in memory as fresh (found by the torture run's
            // Sentinel topology: 4 threads of one process took a lock in memory after
            // another process had it on the new master).
            let sink = sink.clone();
            master.on_move(move || sink.server_changed());
            sentinel::spawn_watcher(master.clone(), options.ping_interval, stopped.clone())
                .map_err(|e| Error::spawn("redis-mutex-sentinel", e))?;
        }
        let unclaimed = {
            let (server, sink, prefix) = (server.clone(), sink.clone(), options.prefix.clone());
            // A lock granted to this client after its last waiter left: release it
            // (owner-checked: it goes to the next waiting client), then let a waiter
            // that came meanwhile attempt.
            Box::new(move |name: &str, token: &str| {
                if let Ok(keys) = LockKeys::new(&prefix, name) {
                    let args = ReleaseArgs {
                        token,
                        lease_ms: server.grant_ms,
                        local_handoffs: 0,
                        limit: 0,
                        fence_span: 0,
                        handoff: None,
                        mark: 0,
                    };
                    match server.release(&keys, &args) {
                        Ok(outcome) => {
                            log::debug!("redis-mutex: passed on an unclaimed grant of {}: {outcome:?}", keys.key)
                        }
                        // It then ends with the grant's short lease; the next waiting
                        // client was told when to look again.
                        Err(e) => log::debug!("redis-mutex: could not pass on an unclaimed grant of {}: {e}", keys.key),
                    }
                }
                sink.wake_first(name);
            })
        };
        notifier::spawn(
            NotifierConfig {
                connect: settings,
                channels,
                prefix: options.prefix.clone(),
                ping_after: options.ping_interval,
                grant_ms: server.grant_ms,
            },
            notifier::Shared { sink, stats, unclaimed },
            stopped,
        )
        .map_err(|e| Error::spawn("redis-mutex-notifier", e))?;
        Ok(SingleServer { server, _notifier_stop: stop })
    }
}

impl Server {
    fn leave(&self, keys: &LockKeys) -> Result<()> {
        let inv = self.scripts.leave(keys, &self.client_id);
        let outcome: i64 = self.pool.with_conn(Some(&keys.key), None, |c| inv.invoke::<i64>(c))?;
        log::debug!("redis-mutex: left the queue of {} ({outcome})", keys.key);
        Ok(())
    }

    fn release(&self, keys: &LockKeys, a: &ReleaseArgs<'_>) -> Result<Released> {
        // Used only if the release grants the lock to another client.
        let grant_token = uuid::Uuid::new_v4().to_string();
        let from = Releaser {
            client_id: &self.client_id,
            channels: &self.channels,
            grant_token: &grant_token,
            grant_ms: self.grant_ms,
        };
        let inv = self.scripts.release(keys, a, &from);
        let v = self.pool.with_conn(Some(&keys.key), None, |c| inv.invoke::<Value>(c))?;
        Scripts::release_reply(&v)
    }
}

impl Backend for SingleServer {
    fn grants(&self) -> bool {
        true
    }

    fn attempt(&self, keys: &LockKeys, a: AttemptArgs<'_>) -> Result<Attempt> {
        let s = &self.server;
        let inv = s.scripts.attempt(keys, &a, &s.client_id);
        let v = s.pool.with_conn(Some(&keys.key), a.deadline, |c| inv.invoke::<Value>(c))?;
        Scripts::attempt_reply(&v)
    }

    fn release(&self, keys: &LockKeys, a: ReleaseArgs<'_>) -> Result<Released> {
        self.server.release(keys, &a)
    }

    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.server;
        let pipe = s.scripts.extend(items);
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
                s.scripts.load_extend(c)?;
                return pipe.query::<Replies>(c);
            }
            Ok(replies)
        };
        let replies = s.pool.with_conn(None, None, run)?;
        Ok(replies
            .into_iter()
            .zip(items)
            .map(|(r, (keys, ..))| r.map(|n| n == 1).map_err(|e| Error::from_redis(e, Some(&keys.key))))
            .collect())
    }

    fn leave(&self, keys: &LockKeys) -> Result<()> {
        self.server.leave(keys)
    }

    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        let pipe = Scripts::holder(keys);
        let (fields, pttl) =
            self.server.pool.with_conn(Some(&keys.key), None, |c| pipe.query::<(scripts::HolderFields, i64)>(c))?;
        Ok(Scripts::holder_reply(fields, pttl))
    }

    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        let inv = self.server.scripts.force_unlock(keys, &self.server.channels);
        let deleted: i64 = self.server.pool.with_conn(Some(&keys.key), None, |c| inv.invoke::<i64>(c))?;
        Ok(deleted == 1)
    }
}
