//! Proves the re-entrant mutex: the holding thread locks again at once and without a
//! round trip, other threads and clients wait until its last hold is dropped, the
//! lock is released in Redis then, and handles for one name share the hold count.

mod support;
use support::RedisServer;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::LockClient;

fn client(server: &RedisServer) -> LockClient {
    LockClient::open(&server.url()).expect("client connects")
}

/// Polls `cond` every 10 ms for at most 5 s.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn nested_locks_count_holds_without_round_trips() {
    let server = RedisServer::start();
    let client = client(&server);
    let m = client.reentrant_mutex("nested");
    assert!(!m.is_held_by_current_thread());

    let first = m.lock().unwrap();
    assert_eq!(first.hold_count(), 1);
    assert!(m.is_held_by_current_thread());
    let scripts = server.command_calls("evalsha");
    let attempts = client.stats().attempts;

    // try_lock first: were nesting broken, lock() would wait for itself forever.
    let second = m.try_lock().unwrap().expect("the holding thread locks again at once");
    let third = m.lock().unwrap();
    let fourth = m.try_lock_for(Duration::from_millis(1)).unwrap().expect("and again");
    assert_eq!(third.hold_count(), 4);
    assert_eq!(first.hold_count(), 4, "every guard sees the thread's hold count");
    assert_eq!(server.command_calls("evalsha"), scripts, "a nested lock talked to Redis");
    assert_eq!(client.stats().attempts, attempts);

    drop(fourth);
    assert_eq!(second.hold_count(), 3);
    drop(second);
    assert_eq!(first.hold_count(), 2);
    drop(third);
    assert_eq!(first.hold_count(), 1);
    assert!(m.mutex().is_locked().unwrap(), "released in Redis while a hold remained");
    drop(first);
    assert!(!m.mutex().is_locked().unwrap(), "not released in Redis after the last hold");
    assert!(!m.is_held_by_current_thread());
    assert_eq!(client.stats().acquisitions, 1);
    assert_eq!(client.stats().releases, 1);
}

#[test]
fn another_thread_waits_until_the_hold_count_returns_to_zero() {
    let server = RedisServer::start();
    let client = client(&server);
    let m = client.reentrant_mutex("threads");
    let outer = m.lock().unwrap();
    let inner = m.lock().unwrap();

    let other = m.clone();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        assert!(other.try_lock().unwrap().is_none(), "another thread got a held lock");
        assert!(!other.is_held_by_current_thread());
        tx.send("tried").unwrap();
        let g = other.lock().unwrap();
        tx.send("locked").unwrap();
        assert_eq!(g.hold_count(), 1, "the new holder starts its own count");
        assert!(other.is_held_by_current_thread());
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("tried"));
    assert!(eventually(|| m.mutex().waiting_threads() == 1), "the other thread is not waiting in lock()");

    drop(inner);
    assert_eq!(outer.hold_count(), 1);
    // Still held: dropping one of two holds must not wake the other thread.
    assert_eq!(rx.recv_timeout(Duration::from_millis(300)), Err(mpsc::RecvTimeoutError::Timeout));
    assert!(m.mutex().is_locked().unwrap());

    drop(outer);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("locked"), "the waiter did not get the released lock");
    waiter.join().unwrap();
    assert!(!m.is_held_by_current_thread());
    assert!(!m.mutex().is_locked().unwrap(), "the other thread's hold was not released");
}

#[test]
fn another_client_waits_until_the_hold_count_returns_to_zero() {
    let server = RedisServer::start();
    let (a, b) = (client(&server), client(&server));
    let mine = a.reentrant_mutex("clients");
    let outer = mine.lock().unwrap();
    let inner = mine.lock().unwrap();

    let theirs = b.reentrant_mutex("clients");
    assert!(theirs.try_lock().unwrap().is_none(), "another client got a held lock");
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let g = theirs.lock().unwrap();
        tx.send(g.hold_count()).unwrap();
    });
    assert!(eventually(|| b.reentrant_mutex("clients").mutex().waiting_threads() == 1));

    drop(inner);
    assert_eq!(rx.recv_timeout(Duration::from_millis(300)), Err(mpsc::RecvTimeoutError::Timeout));
    drop(outer);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1), "the other client did not get the released lock");
    waiter.join().unwrap();
    assert!(!a.mutex("clients").is_locked().unwrap());
    assert!(b.stats().wakeups_notified >= 1, "the other client was not woken by the release: {:?}", b.stats());
}

#[test]
fn handles_for_one_name_share_the_hold_count() {
    let server = RedisServer::start();
    let client = client(&server);
    let first = client.reentrant_mutex("shared");
    let second = client.reentrant_mutex("shared");
    let unrelated = client.reentrant_mutex("unrelated");

    let g1 = first.lock().unwrap();
    let scripts = server.command_calls("evalsha");
    let g2 = second.try_lock().unwrap().expect("the second handle shares the first one's hold");
    assert_eq!(server.command_calls("evalsha"), scripts, "the second handle went to Redis");
    assert_eq!(g1.hold_count(), 2);
    assert_eq!(g2.hold_count(), 2);
    assert!(second.is_held_by_current_thread());
    assert!(!unrelated.is_held_by_current_thread());

    // Even a handle made while the lock is held joins the count.
    let third = client.reentrant_mutex("shared");
    let g3 = third.lock().unwrap();
    assert_eq!(g1.hold_count(), 3);

    drop(g1);
    drop(g3);
    assert!(first.mutex().is_locked().unwrap());
    drop(g2);
    assert!(!second.mutex().is_locked().unwrap());
    assert!(!third.is_held_by_current_thread());
}
