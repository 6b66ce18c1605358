//! Outages: a stopped, restarted or paused Redis. Deadlines end retries with an error,
//! `lock()` rides out an outage shorter than its tolerance and reports a longer one,
//! and waiters keep making progress once the server is back. An acquisition whose reply
//! was lost (the script ran, the caller timed out) is released as soon as Redis answers
//! again, instead of holding the lock for a lease nobody renews.

mod support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions};
use support::{FaultProxy, RedisServer};

fn client(server: &RedisServer, tolerance: Duration) -> LockClient {
    LockClient::builder()
        .outage_tolerance(tolerance)
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_secs(1))
        .pool_timeout(Duration::from_secs(1))
        .build(&server.url())
        .unwrap()
}

#[test]
fn try_lock_for_during_an_outage_errs_at_its_deadline() {
    let mut server = RedisServer::start();
    let c = client(&server, Duration::from_secs(60));
    let m = c.mutex("outage");
    server.stop();
    let t = Instant::now();
    let err = m.try_lock_for(Duration::from_secs(3)).unwrap_err();
    let took = t.elapsed();
    assert!(err.is_transient(), "an outage is a transient error: {err}");
    assert!(took >= Duration::from_secs(3), "retried until the deadline, returned after {took:?}");
    assert!(took < Duration::from_secs(5), "no longer than the deadline plus one bounded attempt: {took:?}");
}

#[test]
fn lock_rides_out_an_outage_shorter_than_its_tolerance() {
    let mut server = RedisServer::start();
    let c = client(&server, Duration::from_secs(20));
    let m = c.mutex("recover");
    drop(m.lock().unwrap()); // the pool has a connection the restart will break
    server.stop();
    let t = Instant::now();
    let waiter = thread::spawn(move || m.lock().map(|g| g.token().to_owned()));
    thread::sleep(Duration::from_secs(2));
    server.restart();
    let token = waiter.join().unwrap().expect("lock() recovers once Redis is back");
    assert!(t.elapsed() < Duration::from_secs(10), "recovered soon after the restart: {:?}", t.elapsed());
    assert!(!token.is_empty());
}

#[test]
fn lock_reports_an_outage_longer_than_its_tolerance() {
    let mut server = RedisServer::start();
    let c = client(&server, Duration::from_secs(2));
    let m = c.mutex("gone");
    server.stop();
    let t = Instant::now();
    let err = m.lock().unwrap_err();
    let took = t.elapsed();
    assert!(err.is_transient(), "{err}");
    assert!(took >= Duration::from_secs(2), "kept retrying for the tolerance: {took:?}");
    assert!(took < Duration::from_secs(5), "gave up soon after it: {took:?}");
    assert!(err.to_string().contains("cannot reach Redis"), "says what went wrong: {err}");
}

#[test]
fn waiters_make_progress_after_a_restart_that_lost_every_lock() {
    let mut server = RedisServer::start();
    let holder = client(&server, Duration::from_secs(20));
    let waiters = client(&server, Duration::from_secs(20));
    // Subscribed before the restart: a notifier whose first subscription comes after
    // it has nothing to subscribe *again* (CI saw that twice: no reconnect counted).
    support::wait_until(Duration::from_secs(10), "the notifier to subscribe", || waiters.is_notifier_connected());
    let held = holder.mutex("restart").lock().unwrap();
    let m = waiters.mutex("restart");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || {
                let g = m.lock().unwrap();
                thread::sleep(Duration::from_millis(5));
                drop(g);
            })
        })
        .collect();
    while m.waiting_threads() < 4 {
        thread::sleep(Duration::from_millis(10));
    }
    // A restart without persistence forgets the lock; nobody releases it.
    server.restart();
    let t = Instant::now();
    for th in threads {
        th.join().unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(10), "waiters acquired after the restart: {:?}", t.elapsed());
    let s = waiters.stats();
    assert_eq!(s.acquisitions, 4);
    // The waiters may all get in (their time bound) before the notifier, which looks at
    // an idle connection every 250 ms and retries with a backoff, has subscribed again.
    support::wait_until(Duration::from_secs(10), "the notifier to subscribe again", || {
        waiters.stats().notifier_reconnects >= 1
    });
    // The old holder finds out at its next use.
    assert!(held.unlock().unwrap_err().is_lock_lost());
}

#[test]
fn a_paused_server_delays_but_does_not_break_the_lock() {
    let server = RedisServer::start();
    let a = client(&server, Duration::from_secs(20));
    let b = client(&server, Duration::from_secs(20));
    let held = a.mutex_with("pause", MutexOptions::default().lease(Duration::from_secs(10))).lock().unwrap();
    let m = b.mutex("pause");
    let waiter = thread::spawn(move || m.lock().map(|g| g.token().to_owned()));
    thread::sleep(Duration::from_millis(300));
    server.pause();
    thread::sleep(Duration::from_secs(2));
    server.resume();
    // The holder may have seen errors while Redis was stopped, but it still owns the lock.
    assert!(held.is_held().unwrap());
    let token = held.token().to_owned();
    held.unlock().unwrap();
    let got = waiter.join().unwrap().unwrap();
    assert_ne!(got, token);
}

#[test]
fn client_pause_holds_commands_without_errors() {
    let server = RedisServer::start();
    let c = Arc::new(client(&server, Duration::from_secs(20)));
    let m = c.mutex("client-pause");
    drop(m.lock().unwrap());
    let mut admin = server.conn();
    redis::cmd("CLIENT").arg("PAUSE").arg(700).query::<()>(&mut admin).unwrap();
    let t = Instant::now();
    let g = m.lock().expect("a pause shorter than the read timeout is only a delay");
    assert!(t.elapsed() >= Duration::from_millis(500), "the lock waited for the pause: {:?}", t.elapsed());
    g.unlock().unwrap();
}

/// The owner token Redis lists for `key`, if any.
fn owner(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg("o").query::<Option<String>>(&mut server.conn()).unwrap().filter(|o| !o.is_empty())
}

/// A client talking to `server` through `proxy`, with a short read timeout so that a
/// lost reply is an error quickly.
fn through(proxy: &FaultProxy, builder: redis_mutex::LockClientBuilder) -> LockClient {
    builder
        .read_timeout(Duration::from_millis(300))
        .outage_tolerance(Duration::from_secs(1))
        .pool_timeout(Duration::from_secs(1))
        .build(&proxy.url())
        .unwrap()
}

#[test]
fn a_try_lock_whose_reply_was_lost_is_released_once_redis_answers() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let a = through(&proxy, LockClient::builder());
    let m = a.mutex("orphan"); // 30 s lease
    let key = m.key().unwrap().to_owned();
    drop(m.lock().unwrap()); // scripts loaded, a pooled connection
    proxy.drop_replies(true);
    let err = m.try_lock().expect_err("the reply never comes");
    assert!(err.is_transient(), "{err}");
    let orphan = owner(&server, &key).expect("the script ran: Redis lists an owner nobody knows of");
    proxy.drop_replies(false);
    // Another client gets the lock once `a` has cleaned up, long before the 30 s lease.
    let b = LockClient::open(&server.url()).unwrap();
    let t = Instant::now();
    let g = b.mutex("orphan").try_lock_for(Duration::from_secs(10)).unwrap();
    let waited = t.elapsed();
    assert!(g.is_some(), "the orphaned acquisition ({orphan}) still held the lock after {waited:?}");
    assert!(waited < Duration::from_secs(5), "released soon after Redis answered again: {waited:?}");
}

#[test]
fn a_handoff_whose_reply_was_lost_is_released_when_the_waiter_gives_up() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    // Every release goes through Redis and hands the lock to the waiting thread there.
    let a = through(&proxy, LockClient::builder().handoff_limit(0));
    let m = a.mutex("orphan");
    let key = m.key().unwrap().to_owned();
    drop(m.lock().unwrap()); // scripts loaded
    let held = m.lock().unwrap();
    let waiter = {
        let m = m.clone();
        thread::spawn(move || m.try_lock_for(Duration::from_millis(1500)).map(|g| g.is_some()))
    };
    support::wait_until(Duration::from_secs(5), "the waiter to queue", || m.waiting_threads() == 1);
    thread::sleep(Duration::from_millis(100)); // its attempt found the lock held
    let holder = held.token().to_owned();
    proxy.drop_replies(true);
    assert!(held.unlock().is_err(), "the release's reply is lost");
    let outcome = waiter.join().unwrap();
    assert!(!matches!(outcome, Ok(true)), "the waiter never heard it was handed the lock: {outcome:?}");
    let orphan = owner(&server, &key).expect("the release handed the lock to the waiter's token in Redis");
    assert_ne!(orphan, holder);
    proxy.drop_replies(false);
    let b = LockClient::open(&server.url()).unwrap();
    let t = Instant::now();
    let g = b.mutex("orphan").try_lock_for(Duration::from_secs(10)).unwrap();
    let waited = t.elapsed();
    assert!(g.is_some(), "the handed-over lock of a waiter that gave up was never released ({waited:?})");
    assert!(waited < Duration::from_secs(5), "released soon after Redis answered again: {waited:?}");
}
