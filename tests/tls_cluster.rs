//! Redis Cluster over TLS: a real local cluster (3 masters) whose nodes serve mutual TLS
//! only (bus and replication too), reached from `rediss://` seeds with the CA and a
//! client certificate. Locks on names over every master, waiters of another client
//! woken by message (the classic notifier: a TLS cluster keeps `PUBLISH`), no overlap
//! under contention from two clients, reentrant mutexes, renewals, and a clear error
//! without the client certificate. Takes about 5 s (4.1–6.1 s measured on a loaded machine).
#![cfg(feature = "tls")]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use redis_mutex::{LockClient, LockClientBuilder, MutexOptions};
use redis_mutex_harness::{Cluster, RedisServer, TlsFiles};
use support::wait_until;

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn trusting(files: &TlsFiles) -> LockClientBuilder {
    LockClient::builder().key_prefix("t").tls_root_cert(read(&files.ca_cert))
}

fn client(cluster: &Cluster, files: &TlsFiles) -> LockClient {
    let urls = cluster.urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")), "{urls:?}");
    let c = trusting(files)
        .tls_client_cert(read(&files.client_cert), read(&files.client_key))
        .build_cluster(&urls)
        .expect("client connects over TLS");
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || c.is_notifier_connected());
    c
}

/// The master (index in `cluster.nodes()`) that holds `key`, asked of every node (the
/// others answer `MOVED`).
fn holder_node(cluster: &Cluster, key: &str) -> usize {
    let on: Vec<usize> = (0..cluster.masters())
        .filter(|&i| matches!(redis::cmd("EXISTS").arg(key).query::<bool>(&mut cluster.nodes()[i].conn()), Ok(true)))
        .collect();
    assert_eq!(on.len(), 1, "{key} on exactly one master: {on:?}");
    on[0]
}

/// Every connection a node has from `client` came over TCP: the node serves no plain
/// TCP (`--port 0`; the harness uses a Unix socket), so each one is TLS. How many.
fn tls_connections(node: &RedisServer, client: &LockClient) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut node.conn()).unwrap();
    let ours: Vec<&str> = list.lines().filter(|l| l.contains(&format!("name=redis-mutex:{}", client.id()))).collect();
    for line in &ours {
        assert!(line.contains(" addr=127.0.0.1:"), "not a TCP (so TLS) connection: {line}");
    }
    ours.len()
}

#[test]
fn mutexes_reentrant_mutexes_and_wake_ups_work_on_a_mutual_tls_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::generate(dir.path()).unwrap();
    let cluster = Cluster::start_with(3, 0, &RedisServer::builder().tls_with(files.clone()).mutual_tls());
    let (a, b) = (client(&cluster, &files), client(&cluster, &files));

    // Locks on names over every master, each on its slot's master.
    let names: Vec<String> = (0..9).map(|i| format!("job{i}")).collect();
    let mut masters = BTreeSet::new();
    for name in &names {
        let g = a.mutex(name).lock().unwrap();
        masters.insert(holder_node(&cluster, &format!("t:{{{name}}}")));
        assert!(b.mutex(name).try_lock().unwrap().is_none(), "{name} is held");
        g.unlock().unwrap();
    }
    assert_eq!(masters.len(), 3, "names on every master: {masters:?}");
    let used: usize = cluster.nodes().iter().map(|n| tls_connections(n, &a)).sum();
    assert!(used >= 3, "a's connections (one per master at least), all TLS: {used}");

    // b waits for what a holds; a's release reaches b's notifier (classic PUBLISH, which
    // the cluster forwards over its TLS bus to every other node).
    let before = b.stats();
    let bus_before = publish_sent(&cluster);
    for name in &names {
        let g = a.mutex(name).lock().unwrap();
        let waiter = {
            let (b, name) = (b.clone(), name.clone());
            thread::spawn(move || b.mutex(&name).lock().map(|g| g.unlock()))
        };
        let m = a.mutex(name);
        wait_until(Duration::from_secs(5), "b to queue", || m.holder().unwrap().is_some_and(|h| h.contended));
        g.unlock().unwrap();
        waiter.join().unwrap().unwrap().unwrap();
    }
    let s = b.stats().since(&before);
    let bus = publish_sent(&cluster) - bus_before;
    println!("b, woken by a's releases: {s:?}\nbus publish messages for {} releases: {bus}", names.len());
    assert!(bus >= 2 * names.len() as u64, "each release's PUBLISH crossed the bus to the 2 other masters: {bus}");
    assert_eq!(s.acquisitions, names.len() as u64, "{s:?}");
    assert_eq!(s.wakeups_timeout, 0, "woken by messages, never by a timeout: {s:?}");
    assert!(s.grants >= names.len() as u64, "granted by a's releases: {s:?}");

    // Reentrant: the holder's thread takes it again, the other client cannot.
    let r = a.reentrant_mutex(&names[0]);
    let (outer, inner) = (r.lock().unwrap(), r.lock().unwrap());
    assert_eq!(inner.hold_count(), 2);
    assert!(b.reentrant_mutex(&names[0]).try_lock().unwrap().is_none(), "held by a");
    drop(inner);
    assert!(b.mutex(&names[0]).try_lock().unwrap().is_none(), "still held once");
    drop(outer);
    b.mutex(&names[0]).try_lock().unwrap().expect("released with the last hold").unlock().unwrap();

    // No overlap: 2 clients x 3 threads, 15 acquisitions each over 3 names (one per
    // master), with short leases that the watchdog renews.
    let short = MutexOptions::default().lease(Duration::from_millis(600));
    let picks: Vec<String> = [0usize, 1, 2]
        .iter()
        .map(|&m| names.iter().find(|n| holder_of_free(&a, &cluster, n) == m).unwrap().clone())
        .collect();
    let inside: Arc<Vec<AtomicBool>> = Arc::new(picks.iter().map(|_| AtomicBool::new(false)).collect());
    let done = Arc::new(AtomicU64::new(0));
    let before = (a.stats(), b.stats());
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let c = if t % 2 == 0 { a.clone() } else { b.clone() };
            let (picks, inside, done, short) = (picks.clone(), inside.clone(), done.clone(), short.clone());
            thread::spawn(move || {
                for i in 0..15 {
                    let k = (t + i) % picks.len();
                    let g = c.mutex_with(&picks[k], short.clone()).lock().unwrap();
                    assert!(!inside[k].swap(true, Ordering::SeqCst), "two holders of {}", picks[k]);
                    thread::sleep(Duration::from_millis(if i == 7 { 700 } else { 2 }));
                    assert!(!g.is_lost(), "renewed past its 600 ms lease");
                    inside[k].store(false, Ordering::SeqCst);
                    g.unlock().unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("no overlap, no error");
    }
    assert_eq!(done.load(Ordering::Relaxed), 90);
    let (sa, sb) = (a.stats().since(&before.0), b.stats().since(&before.1));
    println!("contention, a: {sa:?}\ncontention, b: {sb:?}");
    assert_eq!(sa.leases_lost + sb.leases_lost, 0, "{sa:?} {sb:?}");
    assert!(sa.renewals + sb.renewals > 0, "the 700 ms holds were renewed: {sa:?} {sb:?}");
    assert!(sa.messages_received + sb.messages_received > 0, "woken by the other client's message: {sa:?} {sb:?}");

    // Without the client certificate the nodes refuse it, and the error says what to set.
    let err = trusting(&files).build_cluster(&cluster.urls()).expect_err("a client certificate is required");
    assert!(err.to_string().contains("tls_client_cert"), "{err}");
}

/// The master that serves the free lock `name` (taken and released by `c` to find it).
fn holder_of_free(c: &LockClient, cluster: &Cluster, name: &str) -> usize {
    let g = c.mutex(name).lock().unwrap();
    let node = holder_node(cluster, &format!("t:{{{name}}}"));
    g.unlock().unwrap();
    node
}

/// `PUBLISH` messages the nodes sent over the cluster bus, summed (`CLUSTER INFO`).
fn publish_sent(cluster: &Cluster) -> u64 {
    let field = "cluster_stats_messages_publish_sent:";
    cluster
        .nodes()
        .iter()
        .map(|n| {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut n.conn()).unwrap();
            info.lines().find_map(|l| l.strip_prefix(field)).map_or(0, |v| v.trim().parse().unwrap())
        })
        .sum()
}
