//! Redis Cluster, on a real local cluster (3 masters, 3 replicas) the harness starts:
//! locks on the master of their slot, wake-ups across nodes, renewals per master, a
//! slot migrated while locks are held and waited for, and failovers.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use redis_mutex::{Error, LockClient, MutexOptions};
use redis_mutex_harness::Cluster;
use support::{poll_until, wait_until};

fn client(cluster: &Cluster) -> LockClient {
    let c = LockClient::builder().key_prefix("c").build_cluster(&cluster.urls()).expect("client connects");
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || c.is_notifier_connected());
    c
}

fn query<T: redis::FromRedisValue>(node: &redis_mutex_harness::RedisServer, cmd: &mut redis::Cmd) -> T {
    cmd.query(&mut node.admin_conn()).unwrap_or_else(|e| panic!("{cmd:?} on port {}: {e}", node.port()))
}

/// The slot of `key`, and the index (in `cluster.nodes()`) of the master serving it.
fn owner(cluster: &Cluster, key: &str) -> (u16, usize) {
    let running = cluster.nodes().iter().find(|n| n.is_running()).expect("a node runs");
    let slot: u16 = query(running, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key));
    let nodes: String = query(running, redis::cmd("CLUSTER").arg("NODES"));
    for line in nodes.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
        for range in &f[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                && (a..=b).contains(&slot)
            {
                return (slot, cluster.nodes().iter().position(|n| n.port() == port).unwrap());
            }
        }
    }
    panic!("no master serves slot {slot}: {nodes}")
}

fn node_id(node: &redis_mutex_harness::RedisServer) -> String {
    query(node, redis::cmd("CLUSTER").arg("MYID"))
}

#[test]
fn locks_live_on_the_master_of_their_slot_and_waiters_are_woken_across_nodes() {
    let cluster = Cluster::start(3, 1);
    let (a, b) = (client(&cluster), client(&cluster));
    // Names on each of the three masters.
    let names: Vec<String> = (0..30).map(|i| format!("job{i}")).collect();
    let mut on = [0; 3];
    for name in &names {
        let g = a.mutex(name).lock().unwrap();
        let key = format!("c:{{{name}}}");
        let (_, node) = owner(&cluster, &key);
        on[node] += 1;
        let owner: Option<String> = query(&cluster.nodes()[node], redis::cmd("HGET").arg(&key).arg("o"));
        assert_eq!(owner.as_deref(), Some(g.token()), "{name} on its slot's master");
        g.unlock().unwrap();
    }
    assert!(on.iter().all(|&n| n > 0), "names on every master: {on:?}");
    // b waits for a lock a holds; a's release (on the lock's master) reaches b's
    // notifier (subscribed on some master) by the cluster's PUBLISH.
    let before = b.stats();
    for name in &names[..6] {
        let g = a.mutex(name).lock().unwrap();
        let waiter = {
            let (b, name) = (b.clone(), name.clone());
            std::thread::spawn(move || b.mutex(&name).lock().map(|g| g.unlock()))
        };
        // Queued in Redis (not only counted: the count goes up before the attempt).
        let m = a.mutex(name);
        wait_until(Duration::from_secs(5), "b to queue", || m.holder().unwrap().is_some_and(|h| h.contended));
        g.unlock().unwrap();
        waiter.join().unwrap().unwrap().unwrap();
    }
    let s = b.stats().since(&before);
    assert_eq!(s.acquisitions, 6);
    assert_eq!(s.wakeups_timeout, 0, "woken by messages, never by a timeout: {s:?}");
    assert!(s.grants >= 6, "granted by a's releases: {s:?}");
}

/// Renewals of locks on three masters keep every one of them, one pipeline per master.
#[test]
fn renewals_keep_locks_on_every_master() {
    let cluster = Cluster::start(3, 0);
    let c = client(&cluster);
    let opts = MutexOptions::default().lease(Duration::from_millis(600));
    let guards: Vec<_> = (0..24).map(|i| c.mutex_with(&format!("r{i}"), opts.clone()).lock().unwrap()).collect();
    let before = c.stats();
    std::thread::sleep(Duration::from_secs(2));
    let s = c.stats().since(&before);
    assert!(guards.iter().all(|g| !g.is_lost()), "{s:?}");
    assert!(s.renewals >= 24 * 3, "each renewed at least every 200 ms: {s:?}");
    for g in guards {
        g.unlock().unwrap();
    }
}

/// Moves `slot` from master `from` to master `to` as `redis-cli --cluster reshard` does,
/// key by key with ASK redirects while it is under way; `between` runs while the slot
/// is half-migrated (some keys moved, others not).
fn migrate(cluster: &Cluster, slot: u16, from: usize, to: usize, between: impl FnOnce()) {
    let (src, dst) = (&cluster.nodes()[from], &cluster.nodes()[to]);
    let (src_id, dst_id) = (node_id(src), node_id(dst));
    query::<()>(dst, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("IMPORTING").arg(&src_id));
    query::<()>(src, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("MIGRATING").arg(&dst_id));
    between();
    loop {
        let keys: Vec<String> = query(src, redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100));
        if keys.is_empty() {
            break;
        }
        let mut m = redis::cmd("MIGRATE");
        m.arg("127.0.0.1").arg(dst.port()).arg("").arg(0).arg(5000).arg("KEYS").arg(&keys);
        query::<()>(src, &mut m);
    }
    for node in cluster.nodes().iter().take(cluster.masters()) {
        query::<()>(node, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&dst_id));
    }
}

#[test]
fn a_slot_migrated_while_locked_and_waited_for_is_followed() {
    let cluster = Cluster::start(3, 0);
    let (a, b) = (client(&cluster), client(&cluster));
    let opts = MutexOptions::default().lease(Duration::from_millis(900)).fencing(true);
    let m = a.mutex_with("moving", opts.clone());
    let g = m.lock().unwrap();
    let first_token = g.fencing_token().unwrap();
    let (slot, from) = owner(&cluster, "c:{moving}");
    let to = (from + 1) % 3;
    let waiter = {
        let (b, opts) = (b.clone(), opts.clone());
        std::thread::spawn(move || {
            let g = b.mutex_with("moving", opts).lock().unwrap();
            let token = g.fencing_token().unwrap();
            g.unlock().unwrap();
            token
        })
    };
    wait_until(Duration::from_secs(5), "b to queue", || b.stats().attempts > 0);
    let move_key = |key: &str| {
        let mut m = redis::cmd("MIGRATE");
        m.arg("127.0.0.1").arg(cluster.nodes()[to].port()).arg("").arg(0).arg(5000).arg("KEYS").arg(key);
        query::<()>(&cluster.nodes()[from], &mut m);
    };
    migrate(&cluster, slot, from, to, || {
        // Half-way: the fencing counter moves first (a script naming both keys gets
        // TRYAGAIN: the waiter's attempts), then the lock, while the slot is still
        // migrating: requests for it get ASK, for longer than the lease, so that
        // renewals that did not follow it would lose the lock.
        move_key("c:{moving}:fence");
        std::thread::sleep(Duration::from_millis(500));
        move_key("c:{moving}");
        std::thread::sleep(Duration::from_millis(1500));
    });
    assert_eq!(owner(&cluster, "c:{moving}").1, to);
    // Renewals followed it: the guard is held after more than its lease.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!g.is_lost(), "renewed on the new master: {:?}", a.stats());
    let owner_now: Option<String> = query(&cluster.nodes()[to], redis::cmd("HGET").arg("c:{moving}").arg("o"));
    assert_eq!(owner_now.as_deref(), Some(g.token()));
    g.unlock().unwrap();
    let token = waiter.join().unwrap();
    assert!(token > first_token, "fencing tokens rise across the migration: {first_token} then {token}");
}

/// Clients × threads locking `names` in a loop until stopped; overlapping sections
/// that were not told lost are counted.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    overlaps: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(clients: &[LockClient], per_client: usize, names: &[&str]) -> Load {
        let (stop, done, overlaps, lost) = (Arc::default(), Arc::default(), Arc::default(), Arc::default());
        let inside: Arc<Vec<StdMutex<Option<bool>>>> = Arc::new(names.iter().map(|_| StdMutex::new(None)).collect());
        let mut threads = Vec::new();
        for c in clients {
            for t in 0..per_client {
                let k = t % names.len();
                let m = c.mutex_with(names[k], MutexOptions::default().lease(Duration::from_secs(3)));
                let (stop, done, overlaps, lost, inside): (
                    Arc<AtomicBool>,
                    Arc<AtomicU64>,
                    Arc<AtomicU64>,
                    Arc<AtomicU64>,
                    _,
                ) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&overlaps), Arc::clone(&lost), inside.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(g)) = m.try_lock_for(Duration::from_secs(2)) else {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        };
                        if inside[k].lock().unwrap().replace(true).is_some() {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::sleep(Duration::from_micros(300));
                        inside[k].lock().unwrap().take();
                        let was_lost = g.is_lost() | matches!(g.unlock(), Err(Error::LockLost { .. }));
                        if was_lost {
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
        }
        Load { stop, done, overlaps, lost, threads }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (self.done.load(Ordering::SeqCst), self.overlaps.load(Ordering::SeqCst), self.lost.load(Ordering::SeqCst))
    }
}

fn failover_under_load(kill: bool) {
    let mut cluster = Cluster::start(3, 1);
    let clients = [client(&cluster), client(&cluster)];
    let names = ["f0", "f1", "f2", "f3"];
    // The failing master serves at least one of the names.
    let (_, victim) = owner(&cluster, "c:{f0}");
    let replica = cluster.masters() + victim;
    let load = Load::start(&clients, 6, &names);
    wait_until(Duration::from_secs(10), "the load to start", || load.done() >= 100);
    let at = Instant::now();
    if kill {
        cluster.nodes_mut()[victim].stop();
    } else {
        query::<()>(&cluster.nodes()[replica], redis::cmd("CLUSTER").arg("FAILOVER"));
    }
    wait_until(Duration::from_secs(40), "the replica to take over", || {
        let info: String = query(&cluster.nodes()[replica], redis::cmd("INFO").arg("replication"));
        info.contains("role:master")
    });
    let took_over = at.elapsed();
    // Locks on the failed master's slots are taken again on its replica.
    let before = load.done();
    let f0 = clients[0].mutex("f0");
    let resumed =
        poll_until(Duration::from_secs(30), || f0.try_lock_for(Duration::from_secs(1)).is_ok_and(|g| g.is_some()));
    assert!(resumed, "f0 could not be locked on the new master");
    wait_until(Duration::from_secs(30), "the load to go on", || load.done() >= before + 100);
    let (done, overlaps, lost) = load.finish();
    eprintln!(
        "{}: replica master after {took_over:?}, f0 locked again {:?} after the fault; {done} sections, {lost} told lost",
        if kill { "kill -9" } else { "CLUSTER FAILOVER" },
        at.elapsed()
    );
    assert_eq!(overlaps, 0, "sections overlapped");
    for c in &clients {
        assert!(poll_until(Duration::from_secs(10), || c.is_notifier_connected()));
    }
}

#[test]
fn a_graceful_cluster_failover_keeps_exclusion_and_waiters_resume() {
    failover_under_load(false);
}

#[test]
fn a_killed_cluster_master_fails_over_and_waiters_resume() {
    failover_under_load(true);
}

#[test]
fn wait_replicas_waits_on_the_owning_master() {
    let cluster = Cluster::start(3, 1);
    let c = client(&cluster);
    let opts = MutexOptions::default().wait_replicas(1, Duration::from_millis(500));
    for i in 0..6 {
        let name = format!("w{i}");
        let g = c.mutex_with(&name, opts.clone()).lock().unwrap();
        let (_, node) = owner(&cluster, &format!("c:{{{name}}}"));
        let replica = &cluster.nodes()[cluster.masters() + node];
        let mut con = replica.admin_conn();
        redis::cmd("READONLY").query::<()>(&mut con).unwrap();
        let on_replica: Option<String> =
            redis::cmd("HGET").arg(format!("c:{{{name}}}")).arg("o").query(&mut con).unwrap();
        assert_eq!(on_replica.as_deref(), Some(g.token()), "acknowledged by {name}'s master's replica");
        g.unlock().unwrap();
    }
}

#[test]
fn bad_seeds_are_refused_before_any_io_and_no_answer_is_a_connection_error() {
    let err = LockClient::builder().build_cluster::<&str>(&[]).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { option: "seeds", .. }), "{err:?}");
    let err = LockClient::builder().build_cluster(&["redis://127.0.0.1:7000/2"]).unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    let t = Instant::now();
    let err = LockClient::builder()
        .connect_timeout(Duration::from_millis(300))
        .build_cluster(&["redis://:pw-secret@127.0.0.1:1/"])
        .unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(!format!("{err:?}").contains("pw-secret"));
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// Subscriber connections of redis-mutex clients on each node, by connection name
/// (`redis-mutex:<client id>:notifier`).
fn subscribers(cluster: &Cluster) -> Vec<std::collections::HashMap<String, usize>> {
    cluster
        .nodes()
        .iter()
        .map(|n| {
            let list: String = query(n, redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"));
            let mut by_client = std::collections::HashMap::new();
            for name in list.lines().filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name="))) {
                if name.starts_with("redis-mutex:") {
                    *by_client.entry(name.to_owned()).or_insert(0) += 1;
                }
            }
            by_client
        })
        .collect()
}

/// 16 names over different slots, 2 clients × 8 threads: no overlap per name, every
/// wake-up by a message (sharded: `SPUBLISH` only, never a classic `PUBLISH`), at most
/// one subscriber connection per node and client (none before anything was waited
/// for), and a waiter that sleeps sends nothing.
#[test]
fn sixteen_names_two_clients_eight_threads_each() {
    let cluster = Cluster::start(3, 1);
    let clients = [client(&cluster), client(&cluster)];
    let before_load: usize = subscribers(&cluster).iter().map(|m| m.values().sum::<usize>()).sum();
    assert_eq!(before_load, 0, "no subscriber connection before a thread waited");
    let names: Vec<String> = (0..16).map(|i| format!("n{i}")).collect();
    let slots: std::collections::HashSet<u16> =
        names.iter().map(|n| owner(&cluster, &format!("c:{{{n}}}")).0).collect();
    assert_eq!(slots.len(), 16);
    let inside: Vec<StdMutex<bool>> = names.iter().map(|_| StdMutex::new(false)).collect();
    let overlaps = AtomicU64::new(0);
    let before: Vec<_> = clients.iter().map(LockClient::stats).collect();
    std::thread::scope(|s| {
        for c in &clients {
            for t in 0..8 {
                let (names, inside, overlaps) = (&names, &inside, &overlaps);
                s.spawn(move || {
                    for round in 0..40 {
                        let k = (t * 3 + round) % names.len();
                        let g = c.mutex(&names[k]).lock().unwrap();
                        if std::mem::replace(&mut *inside[k].lock().unwrap(), true) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::sleep(Duration::from_micros(200));
                        *inside[k].lock().unwrap() = false;
                        g.unlock().unwrap();
                    }
                });
            }
        }
    });
    assert_eq!(overlaps.into_inner(), 0);
    for (c, b) in clients.iter().zip(&before) {
        let s = c.stats().since(b);
        assert_eq!(s.acquisitions, 8 * 40);
        assert_eq!(s.wakeups_timeout, 0, "every wake-up by a message or a handoff: {s:?}");
        assert!(s.messages_received > 0, "{s:?}");
    }
    let masters = &cluster.nodes()[..cluster.masters()];
    let sharded: u64 = masters.iter().map(|n| n.command_calls("spublish")).sum();
    let classic: u64 = masters.iter().map(|n| n.command_calls("publish")).sum();
    assert!(sharded > 0 && classic == 0, "SPUBLISH {sharded}, PUBLISH {classic}");
    let per_node = subscribers(&cluster);
    for (node, by_client) in per_node.iter().enumerate() {
        assert!(by_client.values().all(|&n| n == 1), "node {node}: {by_client:?}");
        assert!(by_client.len() <= 2, "node {node}: {by_client:?}");
    }
    // A subscription is kept while its lock is waited for: one per (client, name).
    let subscribed: u64 = masters.iter().map(|n| n.command_calls("ssubscribe")).sum();
    assert!(subscribed <= 2 * 16, "{subscribed} SSUBSCRIBE for 2 clients and 16 names");
    let total: usize = per_node.iter().map(|m| m.len()).sum();
    assert!((2..=6).contains(&total), "one per client and master at most: {per_node:?}");
    eprintln!("subscriber connections per node: {per_node:?}");
    // Idle waiting: b waits for a lock a holds; nothing is sent meanwhile.
    let g = clients[0].mutex("n0").lock().unwrap();
    let waiter = {
        let b = clients[1].clone();
        std::thread::spawn(move || b.mutex("n0").lock().map(|g| g.unlock()))
    };
    let m = clients[0].mutex("n0");
    wait_until(Duration::from_secs(5), "b to queue", || m.holder().unwrap().is_some_and(|h| h.contended));
    // Replicas' `REPLCONF ACK` (one a second each) are not ours, and neither is the
    // `SUNSUBSCRIBE` of a name the load waited for last more than 10 s ago (`LINGER`:
    // under a loaded machine the load lasts that long).
    let calls = |c: &Cluster| {
        let not_waiting =
            |n: &redis_mutex_harness::RedisServer| n.command_calls("replconf") + n.command_calls("sunsubscribe");
        c.nodes().iter().map(|n| n.total_calls() - not_waiting(n)).sum::<u64>()
    };
    let stats = |c: &Cluster| c.nodes().iter().map(|n| n.command_stats()).collect::<Vec<_>>();
    let (quiet_from, stats_from) = (calls(&cluster), stats(&cluster));
    std::thread::sleep(Duration::from_secs(2));
    let sent = calls(&cluster) - quiet_from;
    // The harness's own INFO/CONFIG are not counted; nothing else runs.
    assert_eq!(sent, 0, "{sent} commands while one waiter slept 2 s: {stats_from:?} then {:?}", stats(&cluster));
    g.unlock().unwrap();
    waiter.join().unwrap().unwrap().unwrap();
}

/// The sharded channels a node has subscribers for (`PUBSUB SHARDCHANNELS`).
fn shard_channels(node: &redis_mutex_harness::RedisServer) -> Vec<String> {
    query(node, redis::cmd("PUBSUB").arg("SHARDCHANNELS"))
}

/// b waits for a lock a holds; its channel is subscribed on the lock's master
/// (`from`) before its attempt. Then `moved` moves the lock's slot to another master
/// while b waits, and returns that master's index: b's channel must follow it there,
/// so that a's release reaches b by a message (a grant), not by a timeout.
fn waiter_follows_its_slot(cluster: &mut Cluster, name: &str, moved: impl FnOnce(&mut Cluster, u16, usize) -> usize) {
    let (a, b) = (client(cluster), client(cluster));
    let g = a.mutex(name).lock().unwrap();
    let key = format!("c:{{{name}}}");
    let (slot, from) = owner(cluster, &key);
    let before = b.stats();
    let waiter = {
        let (b, name) = (b.clone(), name.to_owned());
        std::thread::spawn(move || {
            let g = b.mutex(&name).lock().unwrap();
            let at = Instant::now();
            g.unlock().unwrap();
            at
        })
    };
    let m = a.mutex(name);
    wait_until(Duration::from_secs(5), "b to queue", || m.holder().unwrap().is_some_and(|h| h.contended));
    let channel = |node: &redis_mutex_harness::RedisServer| {
        shard_channels(node).iter().filter(|c| c.starts_with(&format!("c:{{{name}}}:c:"))).count()
    };
    assert_eq!(channel(&cluster.nodes()[from]), 1, "b subscribed on the lock's master before it waited");
    let to = moved(cluster, slot, from);
    wait_until(Duration::from_secs(10), "every node to name the new owner", || owner(cluster, &key).1 == to);
    wait_until(Duration::from_secs(10), "b's channel to follow the slot", || channel(&cluster.nodes()[to]) == 1);
    let released = Instant::now();
    g.unlock().unwrap();
    let took = waiter.join().unwrap().duration_since(released);
    let s = b.stats().since(&before);
    eprintln!("{name}: b had the lock {took:?} after a's release on the new master; {s:?}");
    assert_eq!(s.wakeups_timeout, 0, "woken by messages, never by a timeout: {s:?}");
    assert_eq!(s.grants, 1, "granted by a's release, heard on the new master: {s:?}");
    assert!(took < Duration::from_millis(900), "no wait for a grant to run out: {took:?}");
}

#[test]
fn a_waiter_s_channel_follows_a_resharded_slot_and_hears_the_release() {
    let mut cluster = Cluster::start(3, 0);
    waiter_follows_its_slot(&mut cluster, "resharded", |cluster, slot, from| {
        let to = (from + 1) % 3;
        migrate(cluster, slot, from, to, || {});
        to
    });
}

#[test]
fn a_waiter_s_channel_follows_a_cluster_failover_and_hears_the_release() {
    let mut cluster = Cluster::start(3, 1);
    waiter_follows_its_slot(&mut cluster, "failed-over", |cluster, _, from| {
        let replica = cluster.masters() + from;
        query::<()>(&cluster.nodes()[replica], redis::cmd("CLUSTER").arg("FAILOVER"));
        wait_until(Duration::from_secs(30), "the replica to take over", || {
            let info: String = query(&cluster.nodes()[replica], redis::cmd("INFO").arg("replication"));
            info.contains("role:master")
        });
        replica
    });
}

/// A force unlock tells each client that waits for the lock on its own channel of it
/// (the holder's client and every queued client): a broadcast would reach no sharded
/// subscriber. Nobody waits out the 30 s lease.
#[test]
fn a_force_unlock_wakes_the_waiting_clients_by_message() {
    let cluster = Cluster::start(3, 0);
    let (a, b, c) = (client(&cluster), client(&cluster), client(&cluster));
    let g = a.mutex("forced").lock().unwrap();
    let before = [b.stats(), c.stats()];
    let waiters: Vec<_> = [&b, &c]
        .into_iter()
        .map(|w| {
            let w = w.clone();
            std::thread::spawn(move || w.mutex("forced").lock().map(|g| g.unlock()))
        })
        .collect();
    let m = a.mutex("forced");
    wait_until(Duration::from_secs(5), "b and c to queue", || {
        m.holder().unwrap().is_some_and(|h| h.waiting_clients.len() == 2)
    });
    let forced = Instant::now();
    assert!(m.force_unlock().unwrap());
    for w in waiters {
        w.join().unwrap().unwrap().unwrap();
    }
    assert!(forced.elapsed() < Duration::from_secs(5), "woken at once, not after the lease: {:?}", forced.elapsed());
    for (w, before) in [&b, &c].into_iter().zip(&before) {
        let s = w.stats().since(before);
        assert_eq!(s.wakeups_timeout, 0, "woken by messages: {s:?}");
    }
    assert!(!g.is_held().unwrap());
    drop(g);
}

/// A lock's channel is dropped `LINGER` (10 s) after the last thread of the client that
/// waited for it left, and with it the client's subscriber connection to that node
/// (which had no other channel).
#[test]
fn a_channel_nobody_waits_on_is_dropped_after_a_while_and_its_connection_closed() {
    let cluster = Cluster::start(3, 0);
    let (a, b) = (client(&cluster), client(&cluster));
    let g = a.mutex("lingering").lock().unwrap();
    let node = &cluster.nodes()[owner(&cluster, "c:{lingering}").1];
    let channel = |node: &redis_mutex_harness::RedisServer| {
        shard_channels(node).iter().filter(|c| c.starts_with("c:{lingering}:c:")).count()
    };
    let connections = |node: &redis_mutex_harness::RedisServer| {
        let list: String = query(node, redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"));
        list.lines().filter(|l| l.contains("name=redis-mutex:")).count()
    };
    assert!(b.mutex("lingering").try_lock_for(Duration::from_millis(300)).unwrap().is_none());
    let left = Instant::now();
    assert_eq!((channel(node), connections(node)), (1, 1), "subscribed while it waited");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(channel(node), 1, "kept a while after the waiter left");
    wait_until(Duration::from_secs(20), "the channel and the connection to go", || {
        channel(node) == 0 && connections(node) == 0
    });
    assert!(left.elapsed() >= Duration::from_secs(9), "dropped after {:?}", left.elapsed());
    g.unlock().unwrap();
}
