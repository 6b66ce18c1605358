//! The single-server backend: the Redis protocol of DESIGN §2 on one server, over an
//! r2d2 pool (`connection`), with the scripts in `scripts` and `lua/`, and the
//! subscriber thread in `notifier`.

mod connection;
pub(crate) mod dispatch;
pub(crate) mod line;
pub(crate) mod notifier;
mod replicas;
mod route;
mod shared;
pub(crate) use self::connection::{ConnectSettings, Lent, OnConnect, Pool, Target, check as check_server};
use self::route::Route;
pub(crate) mod scripts;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use redis::{Connection, Value};

use self::line::Line;
use self::notifier::NotifierConfig;
use self::scripts::{Releaser, Scripts};
use self::shared::SharedScripts;
use super::cluster::{ShardConfig, Shards};
use super::sentinel;
use super::{
    Attempt, AttemptArgs, Backend, Listen, Options, ReleaseArgs, ReleaseSink, Released, Renewal, Replicas,
    SharedBackend,
};
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::keys::{Channels, LockKeys};
use crate::stats::Counters;

/// One Redis server. Dropping it stops its notifier thread; the pool closes with the
/// last of the two.
pub(crate) struct SingleServer {
    server: Arc<Server>,
    /// The notifier's connection, which waiting threads may read (none with sharded
    /// wake-ups).
    line: Option<Arc<Line>>,
    /// Dropping it stops the notifier thread.
    _notifier_stop: Sender<()>,
}

/// What the backend and its notifier share.
struct Server {
    route: Route,
    scripts: Scripts,
    /// Those of read-write locks and semaphores.
    shared: SharedScripts,
    client_id: String,
    channels: Channels,
    /// How long a lock granted to a waiting client is its before it takes it.
    grant_ms: u64,
    /// The pooled connections' read timeout, which a `WAIT` lengthens (`replicas`).
    read_timeout: Duration,
    /// On a cluster (without TLS), the per-lock sharded subscriptions that replace the
    /// notifier (see `backend::cluster::shards`).
    shards: OnceLock<Arc<Shards>>,
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
            on_connect: None,
        };
        if check {
            connection::check(&settings, shown)?;
        }
        // Channels are server-wide, keys per database: the database is in their names.
        // On a cluster, per lock and sharded, but for TLS (the subscriber connections of
        // `cluster::link` are plain TCP): classic, through the one notifier.
        let sharded = match &settings.target {
            Target::Cluster(nodes) => {
                let tls = matches!(nodes.template().addr(), redis::ConnectionAddr::TcpTls { .. });
                (!tls).then(|| nodes.clone())
            }
            _ => None,
        };
        let channels = match &sharded {
            Some(_) => Channels::sharded(&options.prefix, &options.client_id),
            None => Channels::new(&options.prefix, settings.target.redis_settings().db(), &options.client_id),
        };
        let server = Arc::new(Server {
            route: match &settings.target {
                Target::Cluster(nodes) => Route::Cluster(nodes.clone()),
                _ => Route::One(Box::new(Pool::new(settings.clone(), options.pool_max_size, options.pool_timeout))),
            },
            scripts: Scripts::new(),
            shared: SharedScripts::new(),
            client_id: options.client_id.clone(),
            channels: channels.clone(),
            grant_ms: options.reservation.as_millis().max(1) as u64,
            read_timeout: options.read_timeout,
            shards: OnceLock::new(),
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
            // Weak: the sharded subscriptions that call it belong to the server.
            let (server, sink, prefix) = (Arc::downgrade(&server), sink.clone(), options.prefix.clone());
            // A lock granted to this client after its last waiter left: release it
            // (owner-checked: it goes to the next waiting client), then let a waiter
            // that came meanwhile attempt.
            Box::new(move |name: &str, token: &str| {
                if let (Ok(keys), Some(server)) = (LockKeys::new(&prefix, name), server.upgrade()) {
                    match server.release(&keys, &ReleaseArgs::plain(token, server.grant_ms)) {
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
        if let Some(nodes) = sharded {
            let cfg = ShardConfig {
                channels,
                connect: settings,
                grant_ms: server.grant_ms,
                ping_after: options.ping_interval,
            };
            let shards = Shards::new(nodes, cfg, notifier::Shared { sink, stats, unclaimed }, stopped);
            let _ = server.shards.set(shards);
            return Ok(SingleServer { server, line: None, _notifier_stop: stop });
        }
        let shared = notifier::Shared { sink, stats, unclaimed };
        let line = Line::new(shared, server.grant_ms, options.ping_interval, settings.target.clone(), true);
        notifier::spawn(
            NotifierConfig {
                connect: settings,
                channels,
                prefix: options.prefix.clone(),
                ping_after: options.ping_interval,
            },
            line.clone(),
            stopped,
        )
        .map_err(|e| Error::spawn("redis-mutex-notifier", e))?;
        Ok(SingleServer { server, line: Some(line), _notifier_stop: stop })
    }
}

impl Server {
    /// On a cluster with sharded wake-ups: subscribes to the lock's channel on its
    /// slot's master before a request after which this client may wait for a message
    /// about it (see `cluster::shards`).
    fn listen_for(&self, keys: &LockKeys, deadline: Option<Instant>) -> Result<()> {
        match self.shards.get() {
            Some(shards) => shards.ensure(&keys.name, &keys.key, deadline),
            None => Ok(()),
        }
    }

    /// Whether messages about the lock reach this client now (always, but with sharded
    /// wake-ups before the lock's channel is subscribed).
    fn listening_for(&self, keys: &LockKeys) -> bool {
        self.shards.get().is_none_or(|shards| shards.is_subscribed(&keys.name))
    }

    fn attempt(&self, keys: &LockKeys, a: &AttemptArgs<'_>) -> Result<Attempt> {
        if let Some(r) = a.replicas {
            return self.attempt_acknowledged(keys, a, r);
        }
        let inv = self.scripts.attempt(keys, a, &self.client_id);
        let v = self.route.on_key(&keys.key, a.deadline, |c| inv.invoke::<Value>(c))?;
        Scripts::attempt_reply(&v)
    }

    fn leave(&self, keys: &LockKeys) -> Result<()> {
        let inv = self.scripts.leave(keys, &self.client_id);
        let outcome: i64 = self.route.on_key(&keys.key, None, |c| inv.invoke::<i64>(c))?;
        log::debug!("redis-mutex: left the queue of {} ({outcome})", keys.key);
        Ok(())
    }

    fn release(&self, keys: &LockKeys, a: &ReleaseArgs<'_>) -> Result<Released> {
        if a.handoff.is_some() {
            // The release may queue this client again behind another (its waiter may
            // never have attempted itself): the grant that ends that wait is a message.
            self.listen_for(keys, None)?;
        }
        if a.replicas.is_some() || a.handoff.is_some_and(|t| t.replicas.is_some()) {
            return self.release_acknowledged(keys, a);
        }
        // Used only if the release grants the lock to another client.
        let grant_token = uuid::Uuid::new_v4().to_string();
        let clients = self.channels.clients_of(&keys.name);
        let inv = self.scripts.release(keys, a, &self.releaser(&grant_token, &clients), false);
        let v = self.route.on_key(&keys.key, None, |c| inv.invoke::<Value>(c))?;
        Scripts::release_reply(&v)
    }

    /// Extends `items`, all on one server, in one pipeline. An item whose slot moved
    /// (a cluster's `MOVED` or `ASK`) is extended on its own, following the redirect.
    fn extend_batch(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
        let Some((first, ..)) = items.first() else { return Ok(Vec::new()) };
        let pipe = self.scripts.extend(items);
        let replies = self.route.on_batch(&first.key, |c: &mut Connection| self.scripts.run_extend(&pipe, c))?;
        Ok(replies
            .into_iter()
            .zip(items)
            .map(|(r, (keys, token, lease_ms))| match r {
                Ok(n) => Ok(n == 1),
                Err(e) if e.redirect_node().is_some() => {
                    let call = self.scripts.extend_one(keys, token, *lease_ms);
                    self.route.on_key(&keys.key, None, |c| call.invoke::<i64>(c)).map(|n| n == 1)
                }
                Err(e) => Err(Error::from_redis(e, Some(&keys.key))),
            })
            .collect())
    }

    /// This client as the releaser, with the owner token a grant would get and the
    /// channel prefix that addresses clients about the lock (`Channels::clients_of`).
    fn releaser<'a>(&'a self, grant_token: &'a str, clients: &'a str) -> Releaser<'a> {
        Releaser {
            client_id: &self.client_id,
            clients,
            publish: self.channels.publish(),
            grant_token,
            grant_ms: self.grant_ms,
        }
    }
}

impl Backend for SingleServer {
    fn grants(&self) -> bool {
        true
    }

    fn line(&self) -> Option<&dyn Listen> {
        self.line.as_deref().map(|l| l as &dyn Listen)
    }

    /// One master holds all of a lock's state, so read-write locks and semaphores are
    /// bounded here (and on Sentinel and Cluster, which route to that master).
    fn shared(&self) -> std::result::Result<&dyn SharedBackend, &'static str> {
        Ok(self)
    }

    fn attempt(&self, keys: &LockKeys, a: AttemptArgs<'_>) -> Result<Attempt> {
        let s = &self.server;
        if a.will_wait && !s.listening_for(keys) {
            // Not subscribed to the lock's channel yet (a cluster's sharded wake-ups): a
            // first try that queues nothing, so that an uncontended lock costs no
            // subscription, and only then the subscription and the attempt that queues.
            let first = s.attempt(keys, &AttemptArgs { will_wait: false, ..a })?;
            if let Attempt::Acquired { .. } = first {
                return Ok(first);
            }
            s.listen_for(keys, a.deadline)?;
        }
        s.attempt(keys, &a)
    }

    fn release(&self, keys: &LockKeys, a: ReleaseArgs<'_>) -> Result<Released> {
        self.server.release(keys, &a)
    }

    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
        let s = &self.server;
        let mut out: Vec<Option<Result<bool>>> = vec![None; items.len()];
        // One pipeline per server (one in all on a single server).
        for group in s.route.by_server(items)? {
            let batch: Vec<Renewal<'_>> = group.iter().map(|&i| items[i]).collect();
            for (i, r) in group.iter().zip(s.extend_batch(&batch)?) {
                out[*i] = Some(r);
            }
        }
        Ok(out.into_iter().map(|r| r.unwrap_or(Ok(false))).collect())
    }

    fn extend_acknowledged(&self, keys: &LockKeys, token: &str, lease_ms: u64, replicas: Replicas) -> Result<bool> {
        self.server.extend_acknowledged(keys, token, lease_ms, replicas)
    }

    fn leave(&self, keys: &LockKeys) -> Result<()> {
        self.server.leave(keys)
    }

    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        let pipe = Scripts::holder(keys);
        let (fields, pttl) =
            self.server.route.on_key(&keys.key, None, |c| pipe.query::<(scripts::HolderFields, i64)>(c))?;
        Ok(Scripts::holder_reply(fields, pttl))
    }

    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        let inv = self.server.scripts.force_unlock(keys, &self.server.channels);
        let deleted: i64 = self.server.route.on_key(&keys.key, None, |c| inv.invoke::<i64>(c))?;
        Ok(deleted == 1)
    }
}
