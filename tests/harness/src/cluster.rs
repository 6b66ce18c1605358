//! [`Cluster`]: a Redis Cluster of masters with replicas, every slot assigned.

use crate::builder::Role;
use crate::group::{self, FORM_TIMEOUT, info_field, query};
use crate::{RedisServer, ServerBuilder};

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// `masters` masters sharing the 16384 slots in even ranges, each with `replicas`
/// replicas: `masters * (1 + replicas)` nodes (`--cluster-enabled yes`,
/// `cluster-node-timeout` 5 s), on ports below 55536 whose bus ports (+10000) were
/// free. Formed by hand with `CLUSTER SET-CONFIG-EPOCH`, `ADDSLOTSRANGE`, `MEET` and
/// `REPLICATE` (no `redis-cli` needed). [`start`](Self::start) returns once every node
/// answers `CLUSTER INFO` with `cluster_state:ok`, knows every node and every replica,
/// and every replica is in sync.
///
/// Nodes `0..masters` are the first masters; node `masters + m * replicas + k` is the
/// `k`-th replica of master `m`.
///
/// ```no_run
/// let mut cluster = redis_mutex_harness::Cluster::start(3, 1);
/// let urls = cluster.urls();          // seed nodes for a cluster client
/// cluster.nodes_mut()[0].stop();      // its replica takes over after the node timeout
/// ```
pub struct Cluster {
    nodes: Vec<RedisServer>,
    masters: usize,
}

impl Cluster {
    /// Starts and forms the cluster. Panics (with the logs) when it does not form
    /// within a minute, or as [`RedisServer::start`] does.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        Self::start_with(masters, replicas, &ServerBuilder::default())
    }

    /// [`start`](Self::start), every node started from `nodes` (extra arguments). When
    /// `nodes` names a directory, node `i` runs in its subdirectory `node-i`, which stays
    /// after the cluster is dropped (with its log and `nodes.conf`): a program's
    /// post-mortem keeps every log.
    ///
    /// With TLS ([`ServerBuilder::tls_with`], and
    /// [`mutual_tls`](ServerBuilder::mutual_tls) after it to ask clients for a
    /// certificate): every node serves TLS only, on its bus too, and replicates over TLS
    /// (`--tls-cluster yes --tls-replication yes`), with the shared certificates; a node
    /// presents the client certificate when it connects to another (`--tls-client-cert-file`).
    /// [`urls`](Self::urls) are then `rediss://`. Panics when TLS is asked with
    /// [`ServerBuilder::tls`] (nodes must share one CA).
    pub fn start_with(masters: usize, replicas: usize, nodes: &ServerBuilder) -> Cluster {
        assert!((1..=SLOTS).contains(&masters), "a cluster needs 1 to {SLOTS} masters");
        let mut builder = nodes.clone().role(Role::ClusterNode);
        if nodes.has_tls() {
            let files = nodes.tls_files().expect(
                "a TLS cluster shares one CA: use ServerBuilder::tls_with(TlsFiles::generate(dir)?), not tls()",
            );
            builder = builder
                .args(&["--tls-cluster", "yes", "--tls-replication", "yes"])
                .arg("--tls-client-cert-file")
                .arg(files.client_cert.display().to_string())
                .arg("--tls-client-key-file")
                .arg(files.client_key.display().to_string());
        }
        let start = |i: usize| builder.in_subdir(&format!("node-{i}")).start();
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas)).map(start).collect();
        let cluster = Cluster { nodes, masters };
        let all: Vec<&RedisServer> = cluster.nodes.iter().collect();
        let run = |node: &RedisServer, cmd: &mut redis::Cmd| {
            query::<()>(node, cmd).unwrap_or_else(|e| node.fail(&format!("{cmd:?} failed: {e}")))
        };
        for (i, node) in cluster.nodes.iter().enumerate() {
            // Distinct epochs from the start, so that no collision has to be resolved.
            run(node, redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1));
        }
        for (m, node) in cluster.nodes[..masters].iter().enumerate() {
            let (first, last) = (m * SLOTS / masters, (m + 1) * SLOTS / masters - 1);
            run(node, redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(first).arg(last));
        }
        for node in &cluster.nodes[1..] {
            run(&cluster.nodes[0], redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(node.port()));
        }
        let total = cluster.nodes.len();
        group::wait_until(FORM_TIMEOUT, "every node to know every other", &all, || {
            for node in &cluster.nodes {
                let nodes: String = query(node, redis::cmd("CLUSTER").arg("NODES"))?;
                let known = nodes.lines().filter(|l| !l.contains("handshake")).count();
                if known != total {
                    return Err(format!("node on port {} knows {known} of {total} nodes", node.port()));
                }
            }
            Ok(())
        });
        let ids: Vec<String> = cluster.nodes[..masters]
            .iter()
            .map(|m| query(m, &redis::cmd("CLUSTER").arg("MYID").clone()).unwrap_or_else(|e| m.fail(&e)))
            .collect();
        for (r, node) in cluster.nodes[masters..].iter().enumerate() {
            run(node, redis::cmd("CLUSTER").arg("REPLICATE").arg(&ids[r / replicas]));
        }
        group::wait_until(FORM_TIMEOUT, "every node to see every replica", &all, || {
            for node in &cluster.nodes {
                let nodes: String = query(node, redis::cmd("CLUSTER").arg("NODES"))?;
                let seen = nodes.lines().filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("slave"))).count();
                if seen != masters * replicas {
                    return Err(format!("node on port {} sees {seen} of {} replicas", node.port(), masters * replicas));
                }
            }
            Ok(())
        });
        cluster.wait_until_ok();
        cluster
    }

    /// Waits until the cluster is [`ok`](Self::ok) (after a failover or a restart,
    /// say). Panics with the logs after a minute.
    pub fn wait_until_ok(&self) {
        let all: Vec<&RedisServer> = self.nodes.iter().collect();
        group::wait_until(FORM_TIMEOUT, "the cluster to be ok", &all, || self.ok());
    }

    /// Whether every running node answers `CLUSTER INFO` with `cluster_state:ok` and
    /// all 16384 slots served, and every running replica is in sync with its master;
    /// `Err` says what is missing.
    pub fn ok(&self) -> Result<(), String> {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let info: String = query(node, redis::cmd("CLUSTER").arg("INFO"))?;
            let (state, slots_ok) = (info_field(&info, "cluster_state"), info_field(&info, "cluster_slots_ok"));
            if state != Some("ok") || slots_ok != Some("16384") {
                return Err(format!("node on port {}: state {state:?}, slots ok {slots_ok:?}", node.port()));
            }
            let replication: String = query(node, redis::cmd("INFO").arg("replication"))?;
            if info_field(&replication, "role") == Some("slave")
                && info_field(&replication, "master_link_status") != Some("up")
            {
                return Err(format!("replica on port {} is not in sync yet", node.port()));
            }
        }
        Ok(())
    }

    /// How many masters it started with (nodes `0..masters()`).
    pub fn masters(&self) -> usize {
        self.masters
    }

    /// Every node, masters first (see the type's docs for the order).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// [`nodes`](Self::nodes), to stop, pause or restart them.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Every node's [`url`](RedisServer::url): seed nodes for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
