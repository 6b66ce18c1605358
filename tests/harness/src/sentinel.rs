//! [`SentinelGroup`]: a master, its replicas, and the Sentinels that watch it.

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
        assert!(sentinels >= 1, "a Sentinel group needs at least one Sentinel");
        // Replicas sync at once, not after the default 5 s wait for more of them.
        let data = ServerBuilder::default().args(&["--repl-diskless-sync-delay", "0"]);
        let master = data.start();
        let master_port = master.port().to_string();
        let replicas = (0..replicas).map(|_| data.clone().args(&["--replicaof", "127.0.0.1", &master_port]).start());
        let replicas: Vec<RedisServer> = replicas.collect();
        let config = format!(
            "sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {master_name} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {master_name} 1\n",
            quorum = sentinels / 2 + 1
        );
        let sentinel = ServerBuilder::default().role(Role::Sentinel(config));
        let sentinels = (0..sentinels).map(|_| sentinel.start()).collect();
        let group = SentinelGroup { name: master_name.to_owned(), master, replicas, sentinels };
        group.wait_until_formed();
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

    fn wait_until_formed(&self) {
        let all: Vec<&RedisServer> =
            std::iter::once(&self.master).chain(&self.replicas).chain(&self.sentinels).collect();
        group::wait_until(FORM_TIMEOUT, "the replicas to replicate", &all, || {
            for r in &self.replicas {
                let info: String = query(r, redis::cmd("INFO").arg("replication"))?;
                if info_field(&info, "master_link_status") != Some("up") {
                    return Err(format!("replica on port {} is not in sync yet", r.port()));
                }
            }
            Ok(())
        });
        group::wait_until(FORM_TIMEOUT, "the Sentinels to know the group", &all, || {
            for s in &self.sentinels {
                let addr = self.master_addr_from(s)?;
                if addr != ("127.0.0.1".to_owned(), self.master.port()) {
                    return Err(format!("Sentinel on port {} names {addr:?} as master", s.port()));
                }
                let master: Vec<String> = query(s, redis::cmd("SENTINEL").arg("MASTER").arg(&self.name))?;
                let field = |name: &str| master.chunks(2).find(|kv| kv[0] == name).map(|kv| kv[1].clone());
                let (replicas, others) = (self.replicas.len(), self.sentinels.len() - 1);
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
            Ok(())
        });
    }
}
