//! [`SentinelGroup`]: a master, its replicas, and the Sentinels that watch it.

use std::fs;
use std::path::Path;

use crate::builder::Role;
use crate::group::{self, FORM_TIMEOUT, info_field, query};
use crate::{RedisServer, ServerBuilder};

/// Sentinels consider the master down after this long without an answer.
const DOWN_AFTER_MS: u32 = 1000;
/// `sentinel failover-timeout`: also how long a failed failover waits to retry.
const FAILOVER_TIMEOUT_MS: u32 = 3000;

/// A master, `replicas` replicas of it and `sentinels` Sentinels (`redis-server
/// sentinel.conf --sentinel`, quorum a majority of them) monitoring it under one
/// name. [`start`](Self::start) returns once the group is formed: every replica
/// replicates, and every Sentinel names the master, sees every replica and every other
/// Sentinel, so a failover can start at once. Down after 1 s without an answer,
/// failover timeout 3 s.
///
/// ```no_run
/// use redis_mutex_harness::SentinelGroup;
///
/// let mut group = SentinelGroup::start("mymaster", 1, 3);
/// let sentinels = group.sentinel_urls();   // for a client that discovers the master
/// group.master_mut().stop();                // a failover follows
/// ```
pub struct SentinelGroup {
    name: String,
    master: RedisServer,
    replicas: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    /// Starts the group and waits until it is formed. Panics (with the logs) when it
    /// does not form within a minute, or as [`RedisServer::start`] does.
    pub fn start(master_name: &str, replicas: usize, sentinels: usize) -> SentinelGroup {
        Self::start_with(master_name, replicas, sentinels, &ServerBuilder::default())
    }

    /// [`start`](Self::start), the master and replicas started from `data` (extra
    /// arguments, e.g. AOF). When `data` names a directory, every server of the group
    /// runs in a subdirectory of it (`master`, `replica-1`, ..., `sentinel-1`, ...),
    /// which stays after the group is dropped: a program's post-mortem keeps every log.
    /// With TLS ([`ServerBuilder::tls_with`]: every server must trust the others, so
    /// they share the certificates), every server of the group, the Sentinels too,
    /// serves TLS only, replicates over TLS (`--tls-replication yes`), and the
    /// Sentinels reach the master and each other over TLS. Panics for
    /// [`ServerBuilder::tls`] (certificates of its own per server).
    pub fn start_with(master_name: &str, replicas: usize, sentinels: usize, data: &ServerBuilder) -> SentinelGroup {
        assert!(sentinels >= 1, "a Sentinel group needs at least one Sentinel");
        let tls = data.tls_files().cloned();
        assert!(
            !data.has_tls() || tls.is_some(),
            "a TLS Sentinel group shares one CA: use ServerBuilder::tls_with(TlsFiles::generate(dir)?), not tls()"
        );
        let tls_replication: &[&str] = if tls.is_some() { &["--tls-replication", "yes"] } else { &[] };
        let parent = data.given_dir().map(Path::to_owned);
        let in_dir = |builder: ServerBuilder, name: String| match &parent {
            Some(parent) => {
                let dir = parent.join(name);
                fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
                builder.dir(dir)
            }
            None => builder,
        };
        // Replicas sync at once, not after the default 5 s wait for more of them.
        let data = data.clone().args(&["--repl-diskless-sync-delay", "0"]).args(tls_replication);
        let master = in_dir(data.clone(), "master".into()).start();
        let master_port = master.port().to_string();
        let replicas = (1..=replicas).map(|i| {
            in_dir(data.clone(), format!("replica-{i}")).args(&["--replicaof", "127.0.0.1", &master_port]).start()
        });
        let replicas: Vec<RedisServer> = replicas.collect();
        let config = format!(
            "sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {master_name} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {master_name} 1\n",
            quorum = sentinels / 2 + 1
        );
        let mut sentinel = ServerBuilder::default().role(Role::Sentinel(config)).args(tls_replication);
        if let Some(files) = tls {
            sentinel = sentinel.tls_with(files);
        }
        let sentinels = (1..=sentinels).map(|i| in_dir(sentinel.clone(), format!("sentinel-{i}")).start()).collect();
        let group = SentinelGroup { name: master_name.to_owned(), master, replicas, sentinels };
        group::wait_until(FORM_TIMEOUT, "the group to form", &group.all(), || match group.formed()? {
            port if port == group.master.port() => Ok(()),
            port => Err(format!("the Sentinels name port {port} as master, not {}", group.master.port())),
        });
        group
    }

    /// The name the Sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.name
    }

    /// The server that was master when the group started (after a failover, ask
    /// [`master_addr`](Self::master_addr) who is).
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// [`master`](Self::master), to stop, pause or restart it.
    pub fn master_mut(&mut self) -> &mut RedisServer {
        &mut self.master
    }

    /// The servers that were replicas when the group started.
    pub fn replicas(&self) -> &[RedisServer] {
        &self.replicas
    }

    /// [`replicas`](Self::replicas), to stop, pause or restart them.
    pub fn replicas_mut(&mut self) -> &mut [RedisServer] {
        &mut self.replicas
    }

    /// The Sentinels.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// [`sentinels`](Self::sentinels), to stop, pause or restart them.
    pub fn sentinels_mut(&mut self) -> &mut [RedisServer] {
        &mut self.sentinels
    }

    /// Every Sentinel's [`url`](RedisServer::url).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The master's address as the first Sentinel that answers names it
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn master_addr(&self) -> Option<(String, u16)> {
        self.sentinels.iter().filter(|s| s.is_running()).find_map(|s| self.master_addr_from(s).ok())
    }

    fn master_addr_from(&self, sentinel: &RedisServer) -> Result<(String, u16), String> {
        let cmd = redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(&self.name).clone();
        let addr: Option<(String, u16)> = query(sentinel, &cmd)?;
        addr.ok_or_else(|| format!("Sentinel on port {} does not know {}", sentinel.port(), self.name))
    }

    /// The master the Sentinels name now, once the group is whole around it: every
    /// running Sentinel names the same master, every other server the group started
    /// replicates it and is in sync, and every Sentinel sees them all as replicas (not
    /// down) and sees every other Sentinel. After a failover this is when the old master
    /// has been turned into a replica of the new one, so that no server but the master
    /// takes writes and another failover can start. `Err` says what is missing.
    pub fn formed(&self) -> Result<u16, String> {
        let running: Vec<&RedisServer> = self.sentinels.iter().filter(|s| s.is_running()).collect();
        let mut named = None;
        for s in &running {
            let (_, port) = self.master_addr_from(s)?;
            match named {
                Some(p) if p != port => return Err(format!("the Sentinels name ports {p} and {port} as master")),
                _ => named = Some(port),
            }
        }
        let port = named.ok_or("no Sentinel is running")?;
        let data: Vec<&RedisServer> = std::iter::once(&self.master).chain(&self.replicas).collect();
        for r in data.iter().filter(|r| r.port() != port) {
            let info: String = query(r, redis::cmd("INFO").arg("replication"))?;
            if info_field(&info, "master_port") != Some(port.to_string().as_str())
                || info_field(&info, "master_link_status") != Some("up")
            {
                return Err(format!("the server on port {} is not an in-sync replica of port {port} yet", r.port()));
            }
        }
        for s in &running {
            let master: Vec<String> = query(s, redis::cmd("SENTINEL").arg("MASTER").arg(&self.name))?;
            let field = |name: &str| master.chunks(2).find(|kv| kv[0] == name).map(|kv| kv[1].clone());
            let (replicas, others) = (data.len() - 1, self.sentinels.len() - 1);
            if field("num-slaves") != Some(replicas.to_string())
                || field("num-other-sentinels") != Some(others.to_string())
            {
                return Err(format!(
                    "Sentinel on port {} sees {:?} replicas and {:?} other Sentinels, not {replicas} and {others}",
                    s.port(),
                    field("num-slaves"),
                    field("num-other-sentinels")
                ));
            }
            let seen: Vec<Vec<String>> = query(s, redis::cmd("SENTINEL").arg("REPLICAS").arg(&self.name))?;
            for replica in &seen {
                let flags = replica.chunks(2).find(|kv| kv[0] == "flags").map(|kv| kv[1].as_str());
                if flags != Some("slave") {
                    return Err(format!("Sentinel on port {} sees a replica with flags {flags:?}", s.port()));
                }
            }
        }
        Ok(port)
    }

    /// The server the Sentinels name as master now ([`master_addr`](Self::master_addr)),
    /// among those the group started.
    pub fn current_master(&self) -> Option<&RedisServer> {
        let (_, port) = self.master_addr()?;
        std::iter::once(&self.master).chain(&self.replicas).find(|s| s.port() == port)
    }

    fn all(&self) -> Vec<&RedisServer> {
        std::iter::once(&self.master).chain(&self.replicas).chain(&self.sentinels).collect()
    }
}
