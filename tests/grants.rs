//! Direct grant across processes: a release makes the next waiting client the owner
//! and tells it, and its thread returns without a request of its own; a grant read late
//! by a process that was stopped is confirmed with Redis, never relied on; a release
//! messages at most two clients however many wait; clients of another database or
//! prefix hear nothing; a waiter that reads its own messages survives the connection
//! breaking under it.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, Stats};
use support::child::{ChildProcess, say};
use support::{RedisServer, connected_with, wait_until};

/// How long a grant is its client's before it takes it, in these tests.
const GRANT: Duration = Duration::from_millis(500);

const GRANTED: &str = "granted";
const GRANTED_KEY: &str = "redis-mutex:{granted}";
/// Threads inside the critical section of `GRANTED`, counted in Redis by both processes.
const INSIDE_KEY: &str = "test:inside";
/// Set when a critical section began while another was inside.
const OVERLAP_KEY: &str = "test:overlap";

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Some((role, url)) = support::child::role() else { return };
    match role.as_str() {
        "grantee" => child_grantee(&url),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Enters the critical section of `GRANTED`, counting itself in Redis: flags an overlap
/// if someone else is inside, and stays `hold` long.
fn critical_section(con: &mut redis::Connection, hold: Duration) {
    let inside: i64 = redis::cmd("INCR").arg(INSIDE_KEY).query(con).unwrap();
    if inside > 1 {
        redis::cmd("SET").arg(OVERLAP_KEY).arg(inside).query::<()>(con).unwrap();
    }
    thread::sleep(hold);
    redis::cmd("DECR").arg(INSIDE_KEY).query::<()>(con).unwrap();
}

/// Waits for `GRANTED`, then holds it 100 ms (counted in Redis) and reports its stats.
fn child_grantee(url: &str) {
    let client = LockClient::builder().reservation_timeout(GRANT).build(url).unwrap();
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    say(&format!("CHILD-ID {}", client.id()));
    let guard = client.mutex(GRANTED).lock().unwrap();
    critical_section(&mut con, Duration::from_millis(100));
    guard.unlock().unwrap();
    let s = client.stats();
    say(&format!("CHILD-DONE grants={} attempts={} {s:?}", s.grants, s.attempts));
}

fn queue(con: &mut redis::Connection, key: &str) -> Vec<String> {
    let q: Option<String> = redis::cmd("HGET").arg(key).arg("q").query(con).unwrap();
    // Entries are `<client id>:<fencing span>:<mark>`.
    q.unwrap_or_default().split_whitespace().map(|e| e.split(':').next().unwrap_or(e).to_owned()).collect()
}

/// The process the lock is granted to is stopped (SIGSTOP) before it reads the grant,
/// and resumed after the grant ran out and another client took the lock. The grant
/// was timed from its request that queued it, so the resumed process sees it is too
/// old to rely on, asks Redis, finds it gone, and waits on: it enters only after the
/// other client left, never while it is inside.
#[test]
fn a_grant_a_stopped_process_reads_late_is_not_relied_on() {
    let server = RedisServer::start();
    let builder = LockClient::builder().reservation_timeout(GRANT);
    let (a, b) = (connected_with(&server, builder.clone()), connected_with(&server, builder));
    let mut con = server.conn();
    let held = a.mutex(GRANTED).lock().unwrap();

    let mut child = ChildProcess::spawn("grantee", &server.url());
    let child_id = child.expect_line("CHILD-ID", Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the child to queue", || queue(&mut con, GRANTED_KEY) == [child_id.clone()]);
    // b queues behind it, and holds the lock 2 s once it has it.
    let entered = std::sync::mpsc::channel();
    let waiter = {
        let (m, url, tx) = (b.mutex(GRANTED), server.url(), entered.0);
        thread::spawn(move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            let guard = m.lock().unwrap();
            tx.send(Instant::now()).unwrap();
            critical_section(&mut con, Duration::from_secs(2));
            guard.unlock().unwrap();
        })
    };
    wait_until(Duration::from_secs(10), "b to queue behind the child", || queue(&mut con, GRANTED_KEY).len() == 2);

    child.signal("-STOP");
    let released = Instant::now();
    drop(held); // granted to the stopped child; b is told to look again
    let b_entered = entered.1.recv_timeout(Duration::from_secs(10)).expect("b gets the lock the child never took");
    assert!(b_entered - released >= GRANT, "b took the child's grant early");
    // The child reads its grant now, while b is inside.
    thread::sleep(Duration::from_millis(300));
    child.signal("-CONT");
    let done = child.expect_line("CHILD-DONE", Duration::from_secs(20));
    waiter.join().unwrap();
    let overlap: Option<i64> = redis::cmd("GET").arg(OVERLAP_KEY).query(&mut con).unwrap();
    println!("child: {done}; b entered {:?} after the release", b_entered - released);
    assert_eq!(overlap, None, "the resumed child entered while b was inside");
    assert!(done.contains("grants=1"), "the child was granted the lock once b left: {done}");
}

/// A waiting client is granted the lock: Redis runs the release script and nothing of
/// the waiter's, and the waiter's thread returns holding it.
#[test]
fn a_waiting_client_is_granted_the_lock_without_a_request_of_its_own() {
    let server = RedisServer::start();
    let (a, b) = (connected_with(&server, LockClient::builder()), connected_with(&server, LockClient::builder()));
    // Load the scripts.
    drop(a.mutex("warm").lock().unwrap());
    let held = a.mutex("job").lock().unwrap();
    let m = b.mutex("job");
    let waiter = thread::spawn(move || m.lock().unwrap());
    wait_until(Duration::from_secs(10), "b to queue", || b.stats().attempts == 1);
    thread::sleep(Duration::from_millis(50));
    let before = server.command_calls("evalsha");
    drop(held);
    let guard = waiter.join().unwrap();
    let scripts = server.command_calls("evalsha") - before;
    let (token, owner) = (guard.token().to_owned(), guard.mutex().holder().unwrap().map(|h| h.token));
    let s = b.stats();
    println!("scripts after the release: {scripts}; b's stats {s:#?}");
    assert_eq!(owner.as_deref(), Some(token.as_str()), "Redis lists the granted token as the owner");
    assert_eq!((s.grants, s.attempts, s.acquisitions), (1, 1, 1), "granted, after its one failed attempt");
    assert_eq!(scripts, 1, "the release alone");
    assert_eq!(s.wakeups_timeout, 0);
    assert_eq!(s.messages_read_by_waiters, 1, "the waiting thread read its grant itself, not the notifier thread");
}

/// Sums a counter over clients.
fn sum(clients: &[LockClient], f: impl Fn(&Stats) -> u64) -> u64 {
    clients.iter().map(|c| f(&c.stats())).sum()
}

/// With 16 clients waiting on one lock, each release reaches at most two of them (the
/// grantee and the next in line), not every client.
#[test]
fn a_release_messages_at_most_two_clients_however_many_wait() {
    const CLIENTS: usize = 16;
    const ROUNDS: u64 = 20;
    let server = RedisServer::start();
    let clients: Vec<LockClient> = (0..CLIENTS).map(|_| connected_with(&server, LockClient::builder())).collect();
    let acquired = AtomicU64::new(0);
    thread::scope(|s| {
        for c in &clients {
            let (m, acquired) = (c.mutex("crowded"), &acquired);
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    let g = m.lock().unwrap();
                    acquired.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(1));
                    g.unlock().unwrap();
                }
            });
        }
    });
    let releases = acquired.load(Ordering::Relaxed);
    let messages = sum(&clients, |s| s.messages_received);
    let grants = sum(&clients, |s| s.grants);
    let read_by_waiters = sum(&clients, |s| s.messages_read_by_waiters);
    println!(
        "{releases} releases, {grants} grants, {messages} messages ({:.2} per release), {read_by_waiters} of them \
         read by the waiting thread itself",
        messages as f64 / releases as f64
    );
    // Each client has one thread: its waiter reads its messages, unless the notifier
    // thread held the line at that moment (its look every 250 ms while none waits).
    assert!(read_by_waiters * 2 >= messages, "{read_by_waiters} of {messages} messages read by waiters");
    assert_eq!(releases, CLIENTS as u64 * ROUNDS);
    assert!(grants * 2 >= releases, "most acquisitions are grants under contention: {grants} of {releases}");
    assert!(messages <= 2 * releases, "{messages} messages for {releases} releases");
}

/// Channels are server-wide, keys per database: a force-unlock on database 1 wakes no
/// waiter on database 0 of the same prefix, and a client of another prefix hears none
/// of either's messages.
#[test]
fn clients_of_another_database_or_prefix_hear_nothing() {
    let server = RedisServer::start();
    let db = |n: u32| format!("redis://127.0.0.1:{}/{n}", server.port());
    let connect = |url: String, prefix: &str| {
        let c = LockClient::builder().key_prefix(prefix).build(&url).unwrap();
        wait_until(Duration::from_secs(10), "the notifier to subscribe", || c.is_notifier_connected());
        c
    };
    let (holder0, waiter0) = (connect(db(0), "redis-mutex"), connect(db(0), "redis-mutex"));
    let (holder1, waiter1) = (connect(db(1), "redis-mutex"), connect(db(1), "redis-mutex"));
    let elsewhere = connect(db(0), "other");
    let held0 = holder0.mutex("job").lock().unwrap();
    let m0 = waiter0.mutex("job");
    let waiting0 = thread::spawn(move || m0.try_lock_for(Duration::from_secs(8)).unwrap().map(|g| g.unlock()));
    wait_until(Duration::from_secs(5), "the db-0 waiter to queue", || waiter0.stats().attempts == 1);
    // On database 1: grants and a force-unlock.
    let held1 = holder1.mutex("job").lock().unwrap();
    let m1 = waiter1.mutex("job");
    let waiting1 = thread::spawn(move || m1.lock().unwrap().unlock());
    wait_until(Duration::from_secs(5), "the db-1 waiter to queue", || waiter1.stats().attempts == 1);
    drop(held1);
    waiting1.join().unwrap().unwrap();
    let _again = holder1.mutex("job").lock().unwrap();
    assert!(holder1.mutex("job").force_unlock().unwrap());
    thread::sleep(Duration::from_millis(300));
    let s0 = waiter0.stats();
    assert_eq!(s0.messages_received, 0, "the db-0 waiter heard db 1: {s0:#?}");
    assert_eq!(s0.wakeups_notified, 0, "the db-0 waiter was woken by db 1: {s0:#?}");
    assert!(waiter1.stats().messages_received >= 1, "db 1's waiter heard its grant");
    // Database 0 then runs as usual.
    drop(held0);
    waiting0.join().unwrap().expect("the db-0 waiter gets the lock").unwrap();
    assert_eq!(waiter0.stats().grants, 1);
    assert_eq!(elsewhere.stats().messages_received, 0, "a client of another prefix heard messages");
}

/// A waiting thread that reads the subscriber connection itself when the server drops
/// that connection leaves it to the notifier thread, which subscribes again, wakes the
/// waiter and, since it waits on, reads for it: the waiter is granted the lock by
/// message, no wake-up by a timeout. The next wait reads the new connection itself.
#[test]
fn a_waiter_whose_connection_breaks_while_it_reads_is_granted_on_the_new_one() {
    let server = RedisServer::start();
    let builder = || LockClient::builder().reservation_timeout(GRANT);
    let (a, b) = (connected_with(&server, builder()), connected_with(&server, builder()));
    let held = b.mutex("job").lock().unwrap();
    let before = a.stats();
    let (tx, rx) = std::sync::mpsc::channel();
    let m = a.mutex("job");
    let waiter = thread::spawn(move || {
        let guard = m.lock().unwrap();
        let owns = m.holder().unwrap().is_some_and(|h| h.token == guard.token());
        tx.send(owns).unwrap();
    });
    wait_until(Duration::from_secs(10), "a to queue", || a.stats().attempts > before.attempts);
    // Its thread reads a's subscriber connection now (nothing of "job" is held in a).
    thread::sleep(Duration::from_millis(100));
    let mut admin = server.conn();
    let list: String = redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub").query(&mut admin).unwrap();
    let name = format!("name=redis-mutex:{}:notifier", a.id());
    let id = list.lines().find(|l| l.split(' ').any(|f| f == name)).and_then(|l| l.strip_prefix("id="));
    let id = id.and_then(|l| l.split(' ').next()).unwrap_or_else(|| panic!("a's notifier in {list}"));
    let killed: u64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query(&mut admin).unwrap();
    assert_eq!(killed, 1);
    let t = Instant::now();
    wait_until(Duration::from_secs(10), "a's notifier to subscribe again", || {
        a.stats().notifier_reconnects > before.notifier_reconnects && a.is_notifier_connected()
    });
    // At once, not at the next keep-alive probe (`ping_interval`, 5 s): the reader saw
    // the connection break and left it to the notifier thread.
    assert!(t.elapsed() < Duration::from_secs(3), "subscribed again after {:?}", t.elapsed());
    thread::sleep(Duration::from_millis(100));
    drop(held);
    assert!(rx.recv_timeout(Duration::from_secs(10)).expect("a's waiter gets the lock"), "and owns it in Redis");
    waiter.join().unwrap();
    let d = a.stats().since(&before);
    println!("a's stats: {d:#?}");
    assert_eq!((d.acquisitions, d.grants), (1, 1), "granted by b's release");
    assert_eq!(d.wakeups_timeout, 0, "{d:#?}");

    // The next wait: its thread reads the new connection.
    let held = b.mutex("job").lock().unwrap();
    let before = a.stats();
    let m = a.mutex("job");
    let waiter = thread::spawn(move || drop(m.lock().unwrap()));
    wait_until(Duration::from_secs(10), "a to queue again", || a.stats().attempts > before.attempts);
    thread::sleep(Duration::from_millis(100));
    drop(held);
    waiter.join().unwrap();
    let d = a.stats().since(&before);
    assert_eq!(d.grants, 1);
    assert_eq!(d.messages_read_by_waiters, 1, "the grant was read by the waiter, on the new connection: {d:#?}");
}
