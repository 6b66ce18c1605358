//! The uncontended paths of `acquire.lua` and `release.lua`: a free lock that nobody
//! queues for, and a release by its owner with nobody queued and no grant, return
//! before the queue helpers are defined (each `local function` is a new closure at
//! every call: see ARCHITECTURE "What an uncontended lock costs Redis"). Proves that
//! those paths cost Redis only the commands they need, and that every other state of
//! the lock (a queue, a grant, a stray `w`, an emptied owner, a grant run out) still
//! takes the full path, with the outcome it had before. About 1 s.

mod support;

use std::collections::HashMap;

use redis_mutex::{Error, LockClient, MutexOptions};
use support::RedisServer;

const KEY: &str = "redis-mutex:{job}";

/// Calls per command since the server started, from `INFO commandstats`.
fn calls(con: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let n = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), n))
        })
        .collect()
}

/// The commands run between `before` and `after`, leaving out the test's own
/// `INFO`, with their counts, sorted by name.
fn ran(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort();
    v
}

fn hset(con: &mut redis::Connection, fields: &[&str]) {
    let _: () = redis::cmd("HSET").arg(KEY).arg(fields).query(con).unwrap();
}

fn field(con: &mut redis::Connection, name: &str) -> Option<String> {
    redis::cmd("HGET").arg(KEY).arg(name).query(con).unwrap()
}

#[test]
fn an_uncontended_lock_and_unlock_run_two_scripts_and_five_commands() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let client = LockClient::builder().build(&server.url()).unwrap();
    let mutex = client.mutex("job");
    drop(mutex.lock().unwrap()); // scripts loaded, connections open
    let before = calls(&mut con);
    let guard = mutex.lock().unwrap();
    guard.unlock().unwrap();
    let after = calls(&mut con);
    let expect = [("del", 1), ("evalsha", 2), ("hmget", 2), ("hset", 1), ("pexpire", 1)];
    let expect: Vec<(String, u64)> = expect.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect();
    assert_eq!(ran(&before, &after), expect, "commands of one uncontended lock + unlock");
}

#[test]
fn the_free_path_takes_only_a_lock_that_has_no_owner_queue_or_grant() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let client = LockClient::builder().build(&server.url()).unwrap();
    let fenced = client.mutex_with("job", MutexOptions::default().fencing(true));
    let mutex = client.mutex("job");

    // A `w` left alone: taken, and `w` cleared; with fencing, a token.
    hset(&mut con, &["w", "1"]);
    let g = fenced.try_lock().unwrap().expect("free");
    assert!(g.fencing_token().is_some_and(|t| t > 0));
    assert_eq!(field(&mut con, "w").as_deref(), Some(""), "w cleared");
    assert_eq!(field(&mut con, "o").as_deref(), Some(g.token()));
    let me = field(&mut con, "c").unwrap_or_default();
    assert!(!me.is_empty(), "the owner's client id");
    g.unlock().unwrap();
    let exists: bool = redis::cmd("EXISTS").arg(KEY).query(&mut con).unwrap();
    assert!(!exists, "an uncontended release deletes the lock");

    // Only a queue left, the caller's client in it: taken, the caller's entry dropped.
    hset(&mut con, &["q", &format!("{me}:0:4 other-client:0:7")]);
    let g = mutex.try_lock().unwrap().expect("free");
    assert_eq!(field(&mut con, "q").as_deref(), Some("other-client:0:7"), "own entry dropped");
    drop(g); // granted to the other client
    let _: () = redis::cmd("DEL").arg(KEY).query(&mut con).unwrap();

    // An emptied owner (a revoked grant) with another client queued: taken, the queue
    // kept, `h` reset.
    hset(&mut con, &["o", "", "c", "", "q", "other-client:0:7", "h", "3"]);
    let g = mutex.try_lock().unwrap().expect("free, queue kept");
    assert_eq!(field(&mut con, "q").as_deref(), Some("other-client:0:7"));
    assert_eq!(field(&mut con, "h").as_deref(), Some("0"));
    drop(g);

    // The release granted it to the queued client: not free for this one.
    assert_eq!(field(&mut con, "c").as_deref(), Some("other-client"), "granted to the queued client");
    assert!(mutex.try_lock().unwrap().is_none(), "the grant is the other client's");

    // A grant that ran out (PTTL <= gt): taken, `gt` cleared.
    let _: () = redis::cmd("DEL").arg(KEY).query(&mut con).unwrap();
    hset(&mut con, &["o", "grant-token", "c", "other-client", "gt", "50000"]);
    let _: () = redis::cmd("PEXPIRE").arg(KEY).arg(30_000).query(&mut con).unwrap();
    let g = mutex.try_lock().unwrap().expect("the grant ran out");
    assert_eq!(field(&mut con, "gt").as_deref(), Some(""));
    drop(g);
}

#[test]
fn a_release_deletes_only_a_lock_with_no_queue_and_no_grant_run_out() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let client = LockClient::builder().build(&server.url()).unwrap();
    let mutex = client.mutex("job");

    // Another client queued meanwhile: the release grants, it does not delete.
    let g = mutex.lock().unwrap();
    hset(&mut con, &["q", "other-client:0:7"]);
    g.unlock().unwrap();
    assert_eq!(field(&mut con, "c").as_deref(), Some("other-client"), "granted");
    assert_eq!(field(&mut con, "q").as_deref(), Some(""), "the grantee left the queue");
    let _: () = redis::cmd("DEL").arg(KEY).query(&mut con).unwrap();

    // Emptied queue and grant fields: deleted.
    let g = mutex.lock().unwrap();
    hset(&mut con, &["q", "", "gt", ""]);
    g.unlock().unwrap();
    let exists: bool = redis::cmd("EXISTS").arg(KEY).query(&mut con).unwrap();
    assert!(!exists, "deleted");

    // The holder's own grant ran out before it released (PTTL <= gt): the lease is
    // reported lost and the lock left alone, whoever may have taken it since.
    let g = mutex.lock().unwrap();
    hset(&mut con, &["gt", "50000"]);
    let err = g.unlock().unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
    let exists: bool = redis::cmd("EXISTS").arg(KEY).query(&mut con).unwrap();
    assert!(exists, "not deleted by a holder whose grant ran out");
}
