//! Read-write locks and semaphores on every single-master deployment: a real local Redis
//! Cluster (3 masters: every script's keys in the lock's slot, waiters woken across
//! nodes by notification, renewals on each master), a TLS server, and a master found
//! through Sentinel.

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use redis_mutex::{LockClient, MutexOptions};
use redis_mutex_harness::{Cluster, SentinelGroup};
use support::{RedisServer, wait_until};

fn client(cluster: &Cluster) -> LockClient {
    let c = LockClient::builder().key_prefix("c").build_cluster(&cluster.urls()).expect("client connects");
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || c.is_notifier_connected());
    c
}

/// Both primitives between two clients of one deployment, on `names`: readers share, a
/// queued writer is let in by the last reader's release, a permit's release wakes the
/// waiter, all by notification; then leases (readers, a writer, permits) are renewed.
fn exercise(a: &LockClient, b: &LockClient, names: usize) {
    let before = b.stats();
    for i in 0..names {
        let name = format!("catalog{i}");
        let r = a.rw_lock(&name).read().unwrap();
        let r2 = b.rw_lock(&name).try_read().unwrap().expect("readers share");
        assert!(b.rw_lock(&name).try_write().unwrap().is_none(), "a writer waits for readers");
        let (tx, rx) = mpsc::channel();
        let writer = {
            let rw = b.rw_lock(&name);
            thread::spawn(move || {
                let w = rw.write().unwrap();
                tx.send(()).unwrap();
                w.unlock().unwrap();
            })
        };
        wait_until(Duration::from_secs(5), "the writer to queue", || b.rw_lock(&name).waiting_threads() == 1);
        thread::sleep(Duration::from_millis(20));
        assert!(a.rw_lock(&name).try_read().unwrap().is_none(), "a new reader queues behind the writer");
        r2.unlock().unwrap();
        thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "one reader still holds it");
        r.unlock().unwrap();
        rx.recv_timeout(Duration::from_secs(5)).expect("the last reader's release let the writer in");
        writer.join().unwrap();

        let sem = a.semaphore(&name, 2);
        let held = [sem.acquire().unwrap(), b.semaphore(&name, 2).acquire().unwrap()];
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let sem = b.semaphore(&name, 2);
            thread::spawn(move || {
                let p = sem.acquire().unwrap();
                tx.send(()).unwrap();
                p.unlock().unwrap();
            })
        };
        wait_until(Duration::from_secs(5), "the waiter to queue", || b.semaphore(&name, 2).waiting_threads() == 1);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(sem.available().unwrap(), 0);
        drop(held);
        rx.recv_timeout(Duration::from_secs(5)).expect("a release woke the waiter");
        waiter.join().unwrap();
    }
    let s = b.stats().since(&before);
    assert_eq!(s.wakeups_timeout, 0, "every wake-up by notification: {s:?}");
    let n = names as u64;
    assert_eq!((s.write_acquisitions, s.permit_acquisitions), (n, 2 * n), "{s:?}");
    assert_eq!(s.grants, 2 * n, "granted by the releases: {s:?}");

    // Renewals reach each lock's server: readers, writers and permits outlive a short lease.
    let short = MutexOptions::default().lease(Duration::from_millis(600));
    let held: Vec<_> = (0..names)
        .map(|i| {
            let r = a.rw_lock_with(&format!("r{i}"), short.clone()).read().unwrap();
            let w = a.rw_lock_with(&format!("w{i}"), short.clone()).write().unwrap();
            let p = a.semaphore_with(&format!("s{i}"), 1, short.clone()).acquire().unwrap();
            (r, w, p)
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    for (r, w, p) in &held {
        assert!(r.is_held().unwrap() && w.is_held().unwrap() && p.is_held().unwrap(), "renewed");
    }
}

#[test]
fn read_write_locks_and_semaphores_work_on_a_cluster() {
    let cluster = Cluster::start(3, 0);
    let (a, b) = (client(&cluster), client(&cluster));
    // Names spread over the three masters.
    exercise(&a, &b, 6);
}

#[test]
fn read_write_locks_and_semaphores_work_over_tls() {
    let server = RedisServer::builder().tls().start();
    let ca = std::fs::read(&server.tls().expect("a TLS server").ca_cert).unwrap();
    let connect = || {
        let c = LockClient::builder().tls_root_cert(ca.clone()).build(&server.url()).expect("client connects");
        wait_until(Duration::from_secs(10), "the notifier to subscribe", || c.is_notifier_connected());
        c
    };
    exercise(&connect(), &connect(), 1);
}

#[test]
fn read_write_locks_and_semaphores_work_through_sentinel() {
    let group = SentinelGroup::start("locks", 0, 1);
    let connect = || {
        let c = LockClient::builder().build_sentinel(group.master_name(), &group.sentinel_urls()).expect("connects");
        wait_until(Duration::from_secs(10), "the notifier to subscribe", || c.is_notifier_connected());
        c
    };
    exercise(&connect(), &connect(), 1);
}
