//! [`Replicated`]: a master and its replicas, without Sentinels.

use crate::group::{self, FORM_TIMEOUT, info_field, query};
use crate::{RedisServer, ServerBuilder};

/// A master and `replicas` replicas of it (`--replicaof`), returned once every
/// replica's link is up and the master counts every one as connected: what Redis's
/// `WAIT` needs to be answered. Stop, pause or restart any of them, then
/// [`wait_until_in_sync`](Self::wait_until_in_sync) to have them back.
///
/// ```no_run
/// use redis_mutex_harness::Replicated;
///
/// let group = Replicated::start(1);
/// let url = group.master().url();   // for a client
/// group.replicas()[0].pause();      // WAIT now falls short
/// group.replicas()[0].resume();
/// group.wait_until_in_sync();
/// ```
pub struct Replicated {
    master: RedisServer,
    replicas: Vec<RedisServer>,
}

impl Replicated {
    /// Starts the master and its replicas and waits until they are in sync. Panics
    /// (with the logs) when they are not within a minute, or as
    /// [`RedisServer::start`] does.
    pub fn start(replicas: usize) -> Replicated {
        // Replicas sync at once, not after the default 5 s wait for more of them.
        let data = ServerBuilder::default().args(&["--repl-diskless-sync-delay", "0"]);
        let master = data.start();
        let port = master.port().to_string();
        let replicas = (0..replicas).map(|_| data.clone().args(&["--replicaof", "127.0.0.1", &port]).start()).collect();
        let group = Replicated { master, replicas };
        group.wait_until_in_sync();
        group
    }

    /// The master.
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// The replicas.
    pub fn replicas(&self) -> &[RedisServer] {
        &self.replicas
    }

    /// [`replicas`](Self::replicas), to stop or restart them.
    pub fn replicas_mut(&mut self) -> &mut [RedisServer] {
        &mut self.replicas
    }

    /// Waits until the master lists every replica as online, and every replica's link
    /// is up and has applied everything the master had written when the call began
    /// (after a replica was restarted or resumed). Panics, with the logs, after a
    /// minute.
    pub fn wait_until_in_sync(&self) {
        let all: Vec<&RedisServer> = std::iter::once(&self.master).chain(&self.replicas).collect();
        let offset = |server: &RedisServer, field: &str| -> Result<u64, String> {
            let info: String = query(server, redis::cmd("INFO").arg("replication"))?;
            if server.port() != self.master.port() && info_field(&info, "master_link_status") != Some("up") {
                return Err(format!("replica on port {} has no link to the master", server.port()));
            }
            let online = (0..self.replicas.len())
                .filter(|i| info_field(&info, &format!("slave{i}")).is_some_and(|s| s.contains("state=online")))
                .count();
            if server.port() == self.master.port() && online != self.replicas.len() {
                return Err(format!("the master lists {online} of {} replicas online", self.replicas.len()));
            }
            info_field(&info, field).and_then(|v| v.parse().ok()).ok_or_else(|| format!("no {field} in {info}"))
        };
        let mut written = None;
        group::wait_until(FORM_TIMEOUT, "the replicas to be in sync", &all, || {
            let written = match written {
                Some(w) => w,
                None => *written.insert(offset(&self.master, "master_repl_offset")?),
            };
            for r in &self.replicas {
                let applied = offset(r, "slave_repl_offset")?;
                if applied < written {
                    return Err(format!("replica on port {} is at offset {applied} of {written}", r.port()));
                }
            }
            Ok(())
        });
    }
}
