//! Read-write locks and semaphores on a real local Redis Cluster (3 masters): every
//! script's keys in the lock's slot, waiters woken across nodes by notification,
//! renewals on each master.

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use redis_mutex::{LockClient, MutexOptions};
use redis_mutex_harness::Cluster;
use support::wait_until;

fn client(cluster: &Cluster) -> LockClient {
    let c = LockClient::builder().key_prefix("c").build_cluster(&cluster.urls()).expect("client connects");
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || c.is_notifier_connected());
    c
}

#[test]
fn read_write_locks_and_semaphores_work_on_a_cluster() {
    let cluster = Cluster::start(3, 0);
    let (a, b) = (client(&cluster), client(&cluster));
    let before = b.stats();
    // Names spread over the masters.
    for i in 0..6 {
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
        assert_eq!(sem.available().unwrap(), 0);
        drop(held);
        rx.recv_timeout(Duration::from_secs(5)).expect("a release woke the waiter");
        waiter.join().unwrap();
    }
    let s = b.stats().since(&before);
    assert_eq!(s.wakeups_timeout, 0, "every wake-up by notification across nodes: {s:?}");
    assert_eq!((s.write_acquisitions, s.permit_acquisitions), (6, 12), "{s:?}");
    assert_eq!(s.grants, 12, "granted by the releases: {s:?}");

    // Renewals reach each lock's master.
    let short = MutexOptions::default().lease(Duration::from_millis(600));
    let held: Vec<_> = (0..6)
        .map(|i| {
            (
                a.rw_lock_with(&format!("r{i}"), short.clone()).read().unwrap(),
                a.semaphore_with(&format!("s{i}"), 1, short.clone()).acquire().unwrap(),
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    for (r, p) in &held {
        assert!(r.is_held().unwrap() && p.is_held().unwrap(), "renewed on its master");
    }
}
