//! What one wake-up message costs a Redis Cluster: classic `PUBLISH` (which the
//! cluster forwards to every node over its bus) against sharded `SPUBLISH` (delivered
//! by the slot's master only), with the subscriber on another node and on the same
//! node, summed over all nodes. The measurement behind the choice recorded in
//! ARCHITECTURE.md ("Redis Cluster").
//!
//! `cargo run --release --example cluster_pubsub_cost -- [MESSAGES]` (default 20000);
//! starts its own clusters (3 masters, then 3 masters + 3 replicas).

use std::time::{Duration, Instant};

use redis_mutex_harness::{Cluster, RedisServer};

/// Total CPU seconds (user + sys) of a node, and its network bytes out.
fn usage(node: &RedisServer) -> (f64, u64) {
    let cpu = node.info("cpu");
    let field = |info: &str, name: &str| -> f64 {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok()).unwrap_or(0.0)
    };
    let stats = node.info("stats");
    (field(&cpu, "used_cpu_sys") + field(&cpu, "used_cpu_user"), field(&stats, "total_net_output_bytes") as u64)
}

fn total(cluster: &Cluster) -> (f64, u64) {
    cluster.nodes().iter().map(usage).fold((0.0, 0), |(c, b), (c2, b2)| (c + c2, b + b2))
}

fn node_of_slot(cluster: &Cluster, channel: &str) -> usize {
    let mut con = cluster.nodes()[0].admin_conn();
    let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel).query(&mut con).unwrap();
    let per = 16384 / cluster.masters() as u16 + 1;
    usize::from(slot / per)
}

fn measure(cluster: &Cluster, sharded: bool, same_node: bool, n: usize) -> (f64, f64) {
    let channel = "redis-mutex:0:c:{client}";
    let owner = node_of_slot(cluster, channel);
    let sub_node = if same_node { owner } else { (owner + 1) % cluster.masters() };
    // redis-rs's sync `PubSub` has no `SSUBSCRIBE`: raw commands, then read pushes.
    let mut sub = cluster.nodes()[sub_node].conn();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    redis::cmd(if sharded { "SSUBSCRIBE" } else { "SUBSCRIBE" }).arg(channel).query::<redis::Value>(&mut sub).unwrap();
    let mut publisher = cluster.nodes()[owner].conn();
    std::thread::sleep(Duration::from_millis(200));
    let (cpu0, bytes0) = total(cluster);
    let t = Instant::now();
    for i in 0..n {
        let cmd = if sharded { "SPUBLISH" } else { "PUBLISH" };
        redis::cmd(cmd).arg(channel).arg(format!("!token {i} 1 0 name")).query::<()>(&mut publisher).unwrap();
        sub.recv_response().unwrap();
    }
    let took = t.elapsed();
    let (cpu1, bytes1) = total(cluster);
    let _ = took;
    ((cpu1 - cpu0) * 1e6 / n as f64, (bytes1 - bytes0) as f64 / n as f64)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    println!("{n} messages each; CPU µs and bytes out per message, summed over every node");
    for replicas in [0, 1] {
        let cluster = Cluster::start(3, replicas);
        println!("3 masters, {replicas} replica(s) each ({} nodes):", cluster.nodes().len());
        for (name, sharded, same) in [
            ("PUBLISH, subscriber on another node", false, false),
            ("PUBLISH, subscriber on the slot's master", false, true),
            ("SPUBLISH, subscriber on the slot's master", true, true),
        ] {
            let (cpu, bytes) = measure(&cluster, sharded, same, n);
            println!("  {name:<44} {cpu:>6.1} µs CPU  {bytes:>6.0} bytes");
        }
    }
}
