//! The nodes of a cluster: a pool per master (opened on first use, from the seeds'
//! settings), the slot map, and running an operation on the master that serves a key,
//! following `MOVED` (the map is corrected for that slot, and refreshed soon after)
//! and `ASK` (one `ASKING` + the operation on the node named, during a migration).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionInfo, RedisError};

use super::slots::{Addr, SlotMap, slot, split_addr};
use crate::backend::single::{ConnectSettings, Pool, Target};
use crate::error::{Error, Result};
use crate::sync::lock;

/// Redirects followed for one operation before giving up (a transient error: the
/// cluster is being resharded faster than we can follow).
const MAX_REDIRECTS: usize = 5;

/// Refreshes of the slot map, at most one per this long (unless a slot is unknown).
const REFRESH_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct Nodes {
    /// Credentials, database 0, protocol and TLS of every connection; the address is
    /// each node's.
    template: ConnectionInfo,
    /// Where to ask for the slot map when no known master answers.
    seeds: Vec<(String, u16)>,
    /// `CLIENT SETNAME` and timeouts of each pool's connections.
    name: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    pool_max_size: u32,
    pool_timeout: Duration,
    map: RwLock<SlotMap>,
    pools: Mutex<HashMap<Addr, Arc<Pool>>>,
    /// When the map was last refreshed, and whether it may be out of date (a node did
    /// not answer).
    refresh: Mutex<(Option<Instant>, bool)>,
    /// Which master the notifier subscribes on (an index into `masters`).
    subscriber: std::sync::atomic::AtomicUsize,
}

pub(crate) struct NodeSettings {
    pub template: ConnectionInfo,
    pub seeds: Vec<(String, u16)>,
    pub name: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub pool_max_size: u32,
    pub pool_timeout: Duration,
}

impl Nodes {
    pub fn new(s: NodeSettings) -> Nodes {
        Nodes {
            template: s.template,
            seeds: s.seeds,
            name: s.name,
            connect_timeout: s.connect_timeout,
            read_timeout: s.read_timeout,
            write_timeout: s.write_timeout,
            pool_max_size: s.pool_max_size,
            pool_timeout: s.pool_timeout,
            map: RwLock::new(SlotMap::empty()),
            pools: Mutex::default(),
            refresh: Mutex::new((None, true)),
            subscriber: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The settings every connection is opened with (credentials, protocol, TLS).
    pub fn template(&self) -> &ConnectionInfo {
        &self.template
    }

    /// Connection settings for the node at `addr`.
    pub fn settings_for(&self, addr: &str) -> Option<ConnectSettings> {
        let (host, port) = split_addr(addr)?;
        Some(ConnectSettings {
            target: Target::Fixed(Box::new(crate::backend::client_at(&self.template, host, port))),
            name: self.name.clone(),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            on_connect: None,
        })
    }

    /// The pool of the node at `addr`, opened on first use.
    fn pool(&self, addr: &Addr) -> Result<Arc<Pool>> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(addr) {
            return Ok(p.clone());
        }
        let settings = self
            .settings_for(addr)
            .ok_or_else(|| Error::UnexpectedReply { operation: "cluster node address", reply: addr.to_string() })?;
        let pool = Arc::new(Pool::new(settings, self.pool_max_size, self.pool_timeout));
        pools.insert(addr.clone(), pool.clone());
        Ok(pool)
    }

    /// Every master the map names (the seeds' first answer, before any).
    pub fn masters(&self, deadline: Option<Instant>) -> Result<Vec<Addr>> {
        if self.map.read().unwrap_or_else(|e| e.into_inner()).masters().is_empty() {
            self.refresh(deadline, true)?;
        }
        Ok(self.map.read().unwrap_or_else(|e| e.into_inner()).masters())
    }

    /// The master that serves `slot`, refreshing the map first when it may be out of
    /// date or does not know the slot.
    fn owner(&self, slot: u16, deadline: Option<Instant>) -> Result<Addr> {
        let stale = lock(&self.refresh).1;
        if stale {
            // A failed refresh leaves the old map: its owner may still be right.
            if let Err(e) = self.refresh(deadline, false) {
                log::debug!("redis-mutex: could not refresh the cluster's slot map: {e}");
            }
        }
        if let Some(a) = self.map.read().unwrap_or_else(|e| e.into_inner()).owner(slot) {
            return Ok(a.clone());
        }
        self.refresh(deadline, true)?;
        self.map.read().unwrap_or_else(|e| e.into_inner()).owner(slot).cloned().ok_or_else(|| {
            Error::Redis(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master serves the slot",
                format!("slot {slot} is not served by any master the cluster names"),
            )))
        })
    }

    /// Asks the known masters, then the seeds, for `CLUSTER SLOTS`; the first answer
    /// that parses becomes the map. At most one refresh per `REFRESH_EVERY` unless
    /// `force`; never past `deadline`.
    pub fn refresh(&self, deadline: Option<Instant>, force: bool) -> Result<()> {
        {
            let mut r = lock(&self.refresh);
            if !force && r.0.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return Ok(());
            }
            r.0 = Some(Instant::now());
        }
        let known = self.map.read().unwrap_or_else(|e| e.into_inner()).masters();
        let seeds = self.seeds.iter().map(|(h, p)| Addr::from(format!("{h}:{p}")));
        let mut last_error = None;
        for addr in known.into_iter().chain(seeds) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let Some(settings) = self.settings_for(&addr) else { continue };
            let host = split_addr(&addr).map_or("", |(h, _)| h).to_owned();
            let answer = settings
                .connect(":slots")
                .and_then(|mut c| redis::cmd("CLUSTER").arg("SLOTS").query::<redis::Value>(&mut c));
            match answer {
                Ok(reply) => match SlotMap::from_cluster_slots(&reply, &host) {
                    Some(map) => {
                        *self.map.write().unwrap_or_else(|e| e.into_inner()) = map;
                        lock(&self.refresh).1 = false;
                        return Ok(());
                    }
                    None => {
                        last_error =
                            Some(Error::UnexpectedReply { operation: "CLUSTER SLOTS", reply: format!("{reply:?}") })
                    }
                },
                Err(e) => {
                    let e = Error::from_redis(e, None);
                    if matches!(e, Error::Auth(_)) {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        lock(&self.refresh).1 = true;
        Err(last_error.unwrap_or_else(|| {
            Error::Connection(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no cluster node answered CLUSTER SLOTS before the deadline",
            )))
        }))
    }

    /// The master that serves `key`'s slot (the map refreshed first if it may be out of
    /// date).
    pub fn owner_of(&self, key: &str, deadline: Option<Instant>) -> Result<Addr> {
        self.owner(slot(key), deadline)
    }

    /// The master the map names for `key`'s slot, without asking the cluster.
    pub fn known_owner(&self, key: &str) -> Option<Addr> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).owner(slot(key)).cloned()
    }

    /// A `MOVED` reply said that `addr` serves `slot` now.
    pub fn moved(&self, slot: u16, addr: Addr) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).set(slot, addr);
        self.mark_stale();
    }

    /// The map may be out of date: refresh it before the next operation.
    pub fn mark_stale(&self) {
        lock(&self.refresh).1 = true;
    }

    /// Runs `op` on the master serving `key`, following redirects.
    pub fn on_key<T>(
        &self,
        key: &str,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        let slot = slot(key);
        let mut ask: Option<Addr> = None;
        let mut last = None;
        for _ in 0..MAX_REDIRECTS {
            let (addr, asking) = match ask.take() {
                Some(a) => (a, true),
                None => (self.owner(slot, deadline)?, false),
            };
            let pool = self.pool(&addr)?;
            let outcome = pool.with_conn(Some(key), deadline, |c| {
                if asking {
                    redis::cmd("ASKING").query::<()>(c)?;
                }
                op(c)
            });
            match outcome {
                Err(Error::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {
                    if let Some((to, s)) = e.redirect_node() {
                        self.map.write().unwrap_or_else(|e| e.into_inner()).set(s, Addr::from(to));
                    }
                    self.mark_stale();
                    last = Some(Error::Redis(e));
                }
                Err(Error::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask) => {
                    ask = e.redirect_node().map(|(to, _)| Addr::from(to));
                    last = Some(Error::Redis(e));
                }
                Err(e @ (Error::Connection(_) | Error::PoolTimeout { .. })) => {
                    // The node may be gone (a failover follows): ask again next time.
                    self.mark_stale();
                    return Err(e);
                }
                Err(Error::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown) => {
                    self.mark_stale();
                    return Err(Error::Redis(e));
                }
                other => return other,
            }
        }
        // Redirected in circles: a resharding in progress. Transient.
        Err(last.map_or_else(
            || {
                Error::Redis(RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
                    "redirected",
                )))
            },
            |e| match e {
                Error::Redis(e) => Error::Redis(RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
                    "redirected too many times",
                    e.to_string(),
                ))),
                e => e,
            },
        ))
    }

    /// Runs `op` once on the master the map says serves `key`, following no redirect
    /// (a pipeline about several keys: each item's reply says whether it moved).
    pub fn on_server_of<T>(
        &self,
        key: &str,
        op: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        let addr = self.owner(slot(key), None)?;
        let outcome = self.pool(&addr)?.with_conn(None, None, op);
        if matches!(outcome, Err(Error::Connection(_) | Error::PoolTimeout { .. })) {
            self.mark_stale();
        }
        outcome
    }

    /// A client for the node the notifier subscribes on with classic wake-ups (a TLS
    /// cluster: any node hears every `PUBLISH` of the cluster), and that the build's
    /// check asks: one of the masters, the next one after a failure.
    pub fn subscriber(&self) -> std::result::Result<redis::Client, RedisError> {
        let masters = self.masters(None).map_err(|e| RedisError::from(std::io::Error::other(e.to_string())))?;
        let n = self.subscriber.load(std::sync::atomic::Ordering::Relaxed);
        let addr = masters
            .get(n % masters.len().max(1))
            .ok_or_else(|| RedisError::from(std::io::Error::other("the cluster names no master to subscribe on")))?;
        let (host, port) = split_addr(addr)
            .ok_or_else(|| RedisError::from(std::io::Error::other(format!("not a node address: {addr}"))))?;
        Ok(crate::backend::client_at(&self.template, host, port))
    }

    /// The subscriber's node failed: the next one next time (and the map may be old).
    pub fn subscriber_failed(&self) {
        self.subscriber.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.mark_stale();
    }

    /// Groups the indexes of `keys` by the master that serves them, as far as the map
    /// knows (unknown slots are asked for once).
    pub fn by_master(&self, keys: &[&str], deadline: Option<Instant>) -> Result<Vec<Vec<usize>>> {
        let mut groups: Vec<(Addr, Vec<usize>)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let a = self.owner(slot(k), deadline)?;
            match groups.iter_mut().find(|(g, _)| *g == a) {
                Some((_, v)) => v.push(i),
                None => groups.push((a, vec![i])),
            }
        }
        Ok(groups.into_iter().map(|(_, v)| v).collect())
    }
}
