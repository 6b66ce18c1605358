//! The cluster target (`--impls redis-mutex-cluster`, issue 15): a Redis Cluster of 3
//! masters without replicas started beside the plain server, on which redis-mutex runs
//! W2 and W5 (one lock, as every row: all of it on one master, master 1, which
//! carries its messages too: `SPUBLISH` to the waiting clients' per-lock channels,
//! subscribed there) and the spread `W2s`/`W5s` (threads over 3 lock
//! names, one per master; run on the plain server too, so each has a same-workload row
//! of one server). The comparison: acquisitions/s, handoff, Redis CPU per acquisition
//! summed over the nodes and per node, what that CPU went to (`INFO commandstats`'
//! `usec`, and the rest: sockets, the event loop, the bus), and pub/sub messages per
//! release.

use redis_mutex_harness::Cluster;

use crate::Row;
use crate::Target;
use crate::peers::{Impl, SPREAD};
use crate::report::{t, verdict};
use crate::w5::msgs_per_release;

/// Masters of the cluster (no replicas: the target is on 3 masters alone).
pub const MASTERS: usize = 3;

/// The workloads compared, with their processes.
const COMPARED: [(&str, u32); 5] = [("W2", 1), ("W2s", 1), ("W5", 8), ("W5t", 8), ("W5s", 8)];

/// Starts the cluster and checks that the spread names fall on three masters. Its
/// [`Target`]'s URL is every node's URL, comma-separated; the PING goes to the first
/// node, and the benchmark keeps a connection to each.
pub fn start() -> (Cluster, Target) {
    let cluster = Cluster::start(MASTERS, 0);
    let mut first = cluster.nodes()[0].admin_conn();
    let owners: Vec<u16> = SPREAD
        .iter()
        .map(|name| {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(format!("redis-mutex:{{{name}}}"))
                .query(&mut first)
                .expect("CLUSTER KEYSLOT");
            let m = slot as usize * MASTERS / 16384;
            assert!(
                (m * 16384 / MASTERS..(m + 1) * 16384 / MASTERS).contains(&(slot as usize)),
                "the harness gives master {m} the slots of its third"
            );
            cluster.nodes()[m].port()
        })
        .collect();
    assert!(
        owners.iter().enumerate().all(|(i, p)| !owners[..i].contains(p)),
        "the spread names must fall on three masters: {SPREAD:?} on ports {owners:?}"
    );
    let urls = cluster.urls();
    let target = Target {
        url: urls.join(","),
        tls_ca: None,
        ping_url: urls[0].clone(),
        admins: cluster.nodes().iter().map(|n| n.admin_conn()).collect(),
    };
    (cluster, target)
}

/// Empties every node before a run (a key is deleted only on its slot's node).
pub fn flush(target: &mut Target) {
    for admin in &mut target.admins {
        let _: () = redis::cmd("FLUSHALL").query(admin).expect("FLUSHALL");
    }
}

/// Per acquisition: `PUBLISH` and `SPUBLISH` calls (from the scripts, on the node that ran them),
/// CPU in top-level commands (the scripts, with what they called), and CPU outside any
/// command, summed over the servers and per server (µs).
struct Spent {
    publish: f64,
    in_commands: f64,
    outside: Vec<f64>,
}

fn spent(r: &Row) -> Spent {
    let mut s = Spent { publish: 0.0, in_commands: 0.0, outside: Vec::new() };
    for server in &r.servers {
        // Classic on one server, sharded on the cluster.
        for cmd in ["publish", "spublish"] {
            s.publish += server.commands.get(cmd).map_or(0.0, |c| c.0);
        }
        s.in_commands += server.cpu_us - server.outside_commands_us();
        s.outside.push(server.outside_commands_us());
    }
    s
}

fn per_node(values: impl Iterator<Item = f64>) -> String {
    values.map(t).collect::<Vec<_>>().join("/")
}

/// The comparison table, its legend, and the target check of each compared workload.
pub fn print(rows: &[Row]) {
    let find =
        |wl: &str, imp: Impl, procs: u32| rows.iter().find(|r| r.workload == wl && r.imp == imp && r.procs == procs);
    println!(
        "\nRedis Cluster ({MASTERS} masters, no replicas) beside one server, same workloads, same run (issue 15):\n\
         {:<4} {:<10} {:>7} {:>15} {:>15} {:>7} {:>7} {:>9} {:>20} {:>8} {:>20}",
        "wl",
        "target",
        "acq/s",
        "handoff p50/p99",
        "wait p99/max",
        "msg/rel",
        "(S)PUB",
        "rCPU/acq",
        "per node",
        "in cmds",
        "outside cmds"
    );
    let mut checks = Vec::new();
    for (wl, procs) in COMPARED {
        let (Some(one), Some(cl)) = (find(wl, Impl::RedisMutex, procs), find(wl, Impl::RedisMutexCluster, procs))
        else {
            continue;
        };
        for (label, r) in [("1 server", one), ("3 masters", cl)] {
            let s = spent(r);
            println!(
                "{:<4} {:<10} {:>7.0} {:>15} {:>15} {:>7} {:>7.2} {:>9} {:>20} {:>8} {:>20}",
                wl,
                label,
                r.acq_per_s,
                format!("{}/{}", t(r.handoff.0), t(r.handoff.1)),
                format!("{}/{}", t(r.wait.1), t(r.wait.2)),
                msgs_per_release(r).map_or("-".into(), |m| format!("{m:.2}")),
                s.publish,
                t(r.rcpu_us),
                per_node(r.servers.iter().map(|n| n.cpu_us)),
                t(s.in_commands),
                per_node(s.outside.into_iter()),
            );
        }
        checks.push(format!(
            "{} {wl} Redis CPU per acquisition summed over {MASTERS} masters ≤ 1.5× one server's: {} vs 1.5 × {} = {} \
             ({:.2}×)",
            verdict(cl.rcpu_us <= 1.5 * one.rcpu_us),
            t(cl.rcpu_us),
            t(one.rcpu_us),
            t(1.5 * one.rcpu_us),
            cl.rcpu_us / one.rcpu_us
        ));
    }
    println!(
        "W2s/W5s: the threads (processes) spread over 3 lock names, one per master ({SPREAD:?}); W2/W5/W5t: one lock \
         ({:?} on one server,\n\
         \x20 {:?} on the cluster: on master 1, whose waiting clients subscribe to their sharded channels of it there)\n\
         msg/rel: pub/sub messages received by all clients per release; (S)PUB: PUBLISH (one server) or SPUBLISH \
         (cluster) calls per acquisition,\n\
         \x20 from the scripts, on the node that ran them (a classic PUBLISH would cross the bus to every node, a sharded \
         one stays on the slot's master);\n\
         \x20 rCPU/acq: Redis CPU per acquisition, summed over the nodes; per node: each node's;\n\
         \x20 in cmds: CPU in the commands clients sent (INFO commandstats usec: the scripts, with what they called);\n\
         \x20 outside cmds: the rest, per node (reading and writing sockets, the event loop, the cluster bus)",
        SPREAD[0], SPREAD[1]
    );
    if checks.is_empty() {
        println!("skip the cluster targets: no workload ran on both (W2 and W5 do)");
    }
    println!("\ntarget checks (Redis Cluster, issue 15):");
    for c in checks {
        println!("  {c}");
    }
}
