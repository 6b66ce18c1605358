//! Security: a Redis ACL user limited to the crate's keys, channel pattern and commands
//! can use every feature (and needs each permission it is given); a missing permission
//! is an `Error::Auth` that says what to fix. Passwords never appear in `Debug` output,
//! error messages or log records: `secrets.rs`.

mod support;
use support::RedisServer;
use support::logs::{capture_logs, captured};

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{Error, LockClient, MutexOptions};

/// Distinctive, so that any leak is found by a plain substring search.
const PASSWORD: &str = "s3cr3t-Pa55";

/// The ACL the README recommends for the default key prefix `redis-mutex`, before the
/// commands: lock hashes and fence counters live under `redis-mutex:`, and so do the
/// channels (`redis-mutex:<db>:c:<client id>`, `redis-mutex:<db>:all`) the notifier
/// subscribes to and the scripts publish on.
const KEY_AND_CHANNEL_RULES: &[&str] =
    &["on", "resetkeys", "~redis-mutex:*", "resetchannels", "&redis-mutex:*", "-@all"];

/// Every command the crate sends, its scripts' inner commands included. Each one is
/// needed: `every_permission_in_the_recommended_acl_is_needed` takes each away in turn.
/// (`select`: redis-rs sends it when connecting to a database other than 0, which is why
/// these tests use database 1; `info`: `build()` reads the eviction policy and AOF
/// setting with it, and only logs that it could not check when refused.)
const COMMANDS: &[&str] = &[
    "ping",
    "select",
    "client|setname",
    "info",
    "evalsha",
    "script|load",
    "subscribe",
    "hmget",
    "hset",
    "del",
    "pexpire",
    "pttl",
    "time",
    "get",
    "set",
    "publish",
    "type",
];

/// What read-write locks and semaphores need beyond `COMMANDS`: their scripts' inner
/// commands on the holders zset and the state hash. Each one is needed:
/// `every_permission_read_write_locks_and_semaphores_add_is_needed`.
const SHARED_COMMANDS: &[&str] = &["zadd", "zrem", "zscore", "zcard", "zrange", "zcount", "zremrangebyscore", "hdel"];

// ---- helpers ---------------------------------------------------------------------

/// `(major, minor)` of the server.
fn server_version(server: &RedisServer) -> (u32, u32) {
    let info = server.info("server");
    let v = info.lines().find_map(|l| l.strip_prefix("redis_version:")).expect("INFO has redis_version");
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The recommended rules, without the command `without`.
fn rules(server: &RedisServer, without: Option<&str>) -> Vec<String> {
    let mut rules: Vec<String> = KEY_AND_CHANNEL_RULES.iter().map(|r| r.to_string()).collect();
    rules.extend(COMMANDS.iter().filter(|c| Some(**c) != without).map(|c| format!("+{c}")));
    // redis-rs sends CLIENT SETINFO when it connects (and ignores a refusal); Redis 7.0
    // has no such command and cannot name it in an ACL.
    if server_version(server) >= (7, 2) {
        rules.push("+client|setinfo".into());
    }
    rules
}

fn set_user(server: &RedisServer, user: &str, rules: &[String]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(user).arg("reset").arg(format!(">{PASSWORD}")).arg(rules);
    cmd.query::<()>(&mut server.admin_conn()).unwrap_or_else(|e| panic!("ACL SETUSER {user} {rules:?}: {e}"));
}

/// A URL for `user` on database 1: redis-rs sends `SELECT` only for a database other
/// than 0, so with `/0` (or none) the ACL's `+select` would go untested.
fn user_url(server: &RedisServer, user: &str) -> String {
    format!("redis://{user}:{PASSWORD}@127.0.0.1:{}/1", server.port())
}

/// Takes `command` away from `user`, whose connections are open: Redis checks a
/// connection's user at every command, so they are refused from now on.
fn revoke(server: &RedisServer, user: &str, command: &str) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(user).arg(format!("-{command}"));
    cmd.query::<()>(&mut server.admin_conn()).unwrap_or_else(|e| panic!("ACL SETUSER {user} -{command}: {e}"));
}

/// Asserts that `err` is the `Error::Auth` of a refused permission, not retried as an
/// outage, whose message points at the ACL to fix.
#[track_caller]
fn assert_acl_refusal(what: &str, err: &Error) {
    assert!(matches!(err, Error::Auth(_)), "{what}: expected Error::Auth, got {err:?}");
    assert!(!err.is_transient(), "{what}: {err}");
    let msg = err.to_string();
    for advice in ["README", "ACL LOG"] {
        assert!(msg.contains(advice), "{what}: the message must say what to fix ({advice}): {msg}");
    }
    assert!(!msg.contains(PASSWORD), "{msg}");
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// `ACL LOG`: one map per entry (`reason`, `context`, `object`, `username`, ...).
fn acl_log(server: &RedisServer) -> Vec<BTreeMap<String, String>> {
    let log: redis::Value = redis::cmd("ACL").arg("LOG").arg(1000).query(&mut server.admin_conn()).unwrap();
    let redis::Value::Array(entries) = log else { panic!("ACL LOG answered {log:?}") };
    entries
        .iter()
        .map(|e| match e {
            redis::Value::Array(fields) => fields.chunks(2).map(|kv| (text(&kv[0]), text(&kv[1]))).collect(),
            other => panic!("ACL LOG entry {other:?}"),
        })
        .collect()
}

/// What one pass over every feature saw.
#[derive(Debug, Default)]
struct Outcome {
    notifiers_up: bool,
    tokens: Vec<u64>,
    waiter_waited: Duration,
    waiter_woken_by_message: u64,
    waiter_woken_by_timeout: u64,
    extended_lease_left: Option<Duration>,
    held_after_renewals: bool,
    renewals: u64,
    forced: bool,
    held_after_force: bool,
    unlock_after_force_is_lost: bool,
    reentrant_holds: usize,
}

/// Uses every feature with two clients on `url`, on lock names ending in `tag`: lock, a waiter in the other client
/// woken by pub/sub, extend, `is_held`, watchdog renewals, `force_unlock`, fencing, the
/// re-entrant lock. Stops at the first error (every wait is bounded).
fn exercise(url: &str, tag: &str) -> Result<Outcome, String> {
    fn e(what: &'static str) -> impl Fn(Error) -> String {
        move |err| format!("{what}: {err}")
    }
    let none = |what: &str| format!("{what}: still held by someone else");
    let mut out = Outcome::default();
    let a = LockClient::open(url).map_err(e("open"))?;
    let b = LockClient::open(url).map_err(e("open"))?;
    out.notifiers_up =
        support::poll_until(Duration::from_secs(3), || a.is_notifier_connected() && b.is_notifier_connected());
    let fenced = MutexOptions::default().fencing(true);
    let job = format!("job-{tag}");
    let (ma, mb) = (a.mutex_with(&job, fenced.clone()), b.mutex_with(&job, fenced.clone()));

    let first = ma.try_lock_for(Duration::from_secs(5)).map_err(e("lock"))?.ok_or_else(|| none("lock"))?;
    out.tokens.extend(first.fencing_token());
    thread::scope(|s| -> Result<(), String> {
        let waiter = s.spawn(|| {
            let t = Instant::now();
            let g = mb.try_lock_for(Duration::from_secs(6));
            (t.elapsed(), g.map(|g| g.map(|g| (g.fencing_token(), g.unlock()))))
        });
        // The waiter has marked the holder (its release will publish) and sleeps.
        let marked = support::poll_until(Duration::from_secs(5), || {
            mb.waiting_threads() == 1 && ma.holder().ok().flatten().is_some_and(|h| h.contended)
        });
        first.extend(Duration::from_secs(20)).map_err(e("extend"))?;
        out.extended_lease_left = ma.holder().map_err(e("holder"))?.and_then(|h| h.remaining_lease);
        if !first.is_held().map_err(e("is_held"))? {
            return Err("is_held: false for the holder".into());
        }
        first.unlock().map_err(e("unlock"))?;
        let (waited, got) = waiter.join().expect("waiter thread");
        let (token, unlocked) = got.map_err(e("waiter lock"))?.ok_or_else(|| none("waiter lock"))?;
        unlocked.map_err(e("waiter unlock"))?;
        out.tokens.extend(token);
        out.waiter_waited = waited;
        let stats = b.stats();
        (out.waiter_woken_by_message, out.waiter_woken_by_timeout) = (stats.wakeups_notified, stats.wakeups_timeout);
        if !marked {
            return Err("the waiter never marked the holder".into());
        }
        Ok(())
    })?;

    // The watchdog renews a short lease (one EVALSHA pipeline per round).
    let short = a.mutex_with(&format!("short-{tag}"), fenced.clone().lease(Duration::from_millis(600)));
    let g = short.try_lock_for(Duration::from_secs(5)).map_err(e("lock short"))?.ok_or_else(|| none("lock short"))?;
    thread::sleep(Duration::from_millis(1500));
    out.held_after_renewals = !g.is_lost() && g.is_held().map_err(e("is_held short"))?;
    out.renewals = a.stats().renewals;
    g.unlock().map_err(e("unlock short"))?;

    // An operator's force_unlock, from the other client.
    let g = ma.try_lock_for(Duration::from_secs(5)).map_err(e("lock"))?.ok_or_else(|| none("lock"))?;
    out.tokens.extend(g.fencing_token());
    out.forced = mb.force_unlock().map_err(e("force_unlock"))?;
    out.held_after_force = g.is_held().map_err(e("is_held after force"))?;
    out.unlock_after_force_is_lost = g.unlock().is_err_and(|e| e.is_lock_lost());

    let r = a.reentrant_mutex(&format!("again-{tag}"));
    let outer = r.lock().map_err(e("reentrant lock"))?;
    let inner = r.lock().map_err(e("reentrant lock again"))?;
    out.reentrant_holds = inner.hold_count();
    drop(inner);
    drop(outer);
    Ok(out)
}

/// The recommended rules with those of read-write locks and semaphores, without the
/// command `without`.
fn shared_rules(server: &RedisServer, without: Option<&str>) -> Vec<String> {
    let mut rules = rules(server, without);
    rules.extend(SHARED_COMMANDS.iter().filter(|c| Some(**c) != without).map(|c| format!("+{c}")));
    rules
}

/// Uses a read-write lock and a semaphore with two clients on `url`: a reader, a writer
/// in the other client let in by the reader's release (and releasing, which clears the
/// writer), a permit, `available`, a waiter woken by the permit's release, renewals.
/// Stops at the first error (every wait is bounded).
fn exercise_shared(url: &str, tag: &str) -> Result<(), String> {
    fn e(what: &'static str) -> impl Fn(Error) -> String {
        move |err| format!("{what}: {err}")
    }
    let none = |what: &str| format!("{what}: still held by someone else");
    let a = LockClient::open(url).map_err(e("open"))?;
    let b = LockClient::open(url).map_err(e("open"))?;
    support::poll_until(Duration::from_secs(3), || a.is_notifier_connected() && b.is_notifier_connected());
    let (ra, rb) = (a.rw_lock(&format!("rw-{tag}")), b.rw_lock(&format!("rw-{tag}")));
    let (sa, sb) = (a.semaphore(&format!("sem-{tag}"), 1), b.semaphore(&format!("sem-{tag}"), 1));
    let r = ra.try_read_for(Duration::from_secs(5)).map_err(e("read"))?.ok_or_else(|| none("read"))?;
    let p = sa.try_acquire_for(Duration::from_secs(5)).map_err(e("acquire"))?.ok_or_else(|| none("acquire"))?;
    if sa.available().map_err(e("available"))? != 0 {
        return Err("available: a permit free while held".into());
    }
    thread::scope(|s| -> Result<(), String> {
        let writer = s.spawn(|| rb.try_write_for(Duration::from_secs(6)).map(|w| w.map(|w| w.unlock())));
        let waiter = s.spawn(|| sb.try_acquire_for(Duration::from_secs(6)).map(|p| p.map(|p| p.unlock())));
        support::poll_until(Duration::from_secs(5), || rb.waiting_threads() == 1 && sb.waiting_threads() == 1);
        thread::sleep(Duration::from_millis(100));
        r.unlock().map_err(e("read unlock"))?;
        p.unlock().map_err(e("permit unlock"))?;
        let w = writer.join().expect("writer").map_err(e("write"))?.ok_or_else(|| none("write"))?;
        w.map_err(e("write unlock"))?;
        let p = waiter.join().expect("waiter").map_err(e("waiter"))?.ok_or_else(|| none("waiter"))?;
        p.map_err(e("waiter unlock"))
    })?;
    let short = MutexOptions::default().lease(Duration::from_millis(600));
    let p = a.semaphore_with(&format!("short-{tag}"), 2, short).try_acquire().map_err(e("short"))?;
    let p = p.ok_or_else(|| none("short"))?;
    thread::sleep(Duration::from_millis(1500));
    if p.is_lost() || !p.is_held().map_err(e("is_held"))? {
        return Err("the permit was not renewed".into());
    }
    p.unlock().map_err(e("unlock short"))
}

// ---- tests -----------------------------------------------------------------------

#[test]
fn acl_user_with_the_readme_s_rules_can_use_read_write_locks_and_semaphores() {
    let server = RedisServer::start();
    set_user(&server, "locker", &shared_rules(&server, None));
    exercise_shared(&user_url(&server, "locker"), "locker")
        .unwrap_or_else(|e| panic!("{e}\nACL LOG: {:?}", acl_log(&server)));
    thread::sleep(Duration::from_millis(500));
    let refused = acl_log(&server);
    assert!(refused.is_empty(), "the ACL refused: {refused:#?}");
}

#[test]
fn every_permission_read_write_locks_and_semaphores_add_is_needed() {
    let server = RedisServer::start();
    let users: Vec<(String, &str)> = SHARED_COMMANDS.iter().map(|c| (format!("without-{c}"), *c)).collect();
    for (user, command) in &users {
        set_user(&server, user, &shared_rules(&server, Some(command)));
    }
    thread::scope(|s| {
        for (user, _) in &users {
            let url = user_url(&server, user);
            s.spawn(move || {
                let _ = exercise_shared(&url, user);
            });
        }
    });
    for (user, command) in &users {
        let refused = support::poll_until(Duration::from_secs(3), || {
            acl_log(&server)
                .iter()
                .any(|e| e.get("username") == Some(user) && e.get("object").map(String::as_str) == Some(command))
        });
        assert!(
            refused,
            "without +{command}, nothing was refused: is it still needed? ACL LOG: {:#?}",
            acl_log(&server)
        );
    }
}

#[test]
fn acl_user_limited_to_the_crate_can_use_every_feature() {
    let server = RedisServer::start();
    set_user(&server, "locker", &rules(&server, None));

    let out = exercise(&user_url(&server, "locker"), "locker")
        .unwrap_or_else(|e| panic!("{e}\nACL LOG: {:?}", acl_log(&server)));

    assert!(out.notifiers_up, "the notifiers must subscribe under the ACL: {out:?}");
    assert!(out.waiter_waited < Duration::from_secs(5), "the waiter must get the lock on release: {out:?}");
    assert!(out.waiter_woken_by_message >= 1, "the waiter must be woken by the release message: {out:?}");
    assert_eq!(out.waiter_woken_by_timeout, 0, "a 30 s lease: no timeout could wake it: {out:?}");
    assert!(out.extended_lease_left.is_some_and(|d| d > Duration::from_secs(10)), "extend: {out:?}");
    assert!(out.held_after_renewals && out.renewals >= 1, "the watchdog must renew: {out:?}");
    assert!(out.forced && !out.held_after_force && out.unlock_after_force_is_lost, "force_unlock: {out:?}");
    assert_eq!(out.tokens.len(), 3, "{out:?}");
    assert!(out.tokens.windows(2).all(|w| w[0] < w[1]), "fencing tokens must rise: {out:?}");
    assert_eq!(out.reentrant_holds, 2, "{out:?}");
    // Nothing was refused, not even what the crate or redis-rs would shrug off (wait
    // for the clients' connections to close).
    thread::sleep(Duration::from_millis(500));
    let refused = acl_log(&server);
    assert!(refused.is_empty(), "the ACL refused: {refused:#?}");
}

#[test]
fn every_permission_in_the_recommended_acl_is_needed() {
    let server = RedisServer::start();
    let users: Vec<(String, &str)> =
        COMMANDS.iter().map(|c| (format!("without-{}", c.replace('|', "-")), *c)).collect();
    for (user, command) in &users {
        set_user(&server, user, &rules(&server, Some(command)));
    }
    // The script cache is server-wide: the user without SCRIPT LOAD goes first, alone,
    // on an empty cache. The others then run all at once.
    redis::cmd("SCRIPT").arg("FLUSH").query::<()>(&mut server.admin_conn()).unwrap();
    let (loader, others) = users.split_at(COMMANDS.iter().position(|c| *c == "script|load").unwrap());
    let _ = exercise(&user_url(&server, &others[0].0), &others[0].0);
    thread::scope(|s| {
        for (user, _) in loader.iter().chain(&others[1..]) {
            let url = user_url(&server, user);
            s.spawn(move || {
                let _ = exercise(&url, user);
            });
        }
    });
    for (user, command) in &users {
        let refused = support::poll_until(Duration::from_secs(3), || {
            acl_log(&server)
                .iter()
                .any(|e| e.get("username") == Some(user) && e.get("object").map(String::as_str) == Some(command))
        });
        assert!(
            refused,
            "without +{command}, nothing was refused: is it still needed? ACL LOG: {:#?}",
            acl_log(&server)
        );
    }
}

#[test]
fn a_missing_permission_is_an_auth_error_that_names_the_acl() {
    let server = RedisServer::start();
    set_user(&server, "no-evalsha", &rules(&server, Some("evalsha")));
    let mut no_keys = rules(&server, None);
    no_keys[2] = "~someone-else:*".into();
    set_user(&server, "no-keys", &no_keys);

    for user in ["no-evalsha", "no-keys"] {
        // Connecting only needs PING and CLIENT SETNAME, which both users have.
        let client = LockClient::open(&user_url(&server, user)).expect("connect");
        let m = client.mutex("job");
        let t = Instant::now();
        let err = m.lock().expect_err("the ACL refuses the acquire script");
        assert!(t.elapsed() < Duration::from_secs(5), "a refusal is not an outage to wait out: {:?}", t.elapsed());
        assert!(matches!(err, Error::Auth(_)), "{user}: expected Error::Auth, got {err:?}");
        assert!(!err.is_transient(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("no permissions") && msg.contains("ACL"),
            "{user}: the message must say what to fix: {msg}"
        );
        assert!(!msg.contains(PASSWORD), "{msg}");
        assert!(matches!(m.try_lock(), Err(Error::Auth(_))), "try_lock too");
    }
}

#[test]
fn a_refused_select_when_connecting_is_an_auth_error() {
    let server = RedisServer::start();
    set_user(&server, "no-select", &rules(&server, Some("select")));
    let url = user_url(&server, "no-select");

    let err = LockClient::open(&url).expect_err("SELECT 1 is refused");
    assert_acl_refusal("open", &err);
    assert!(err.to_string().contains("'select'"), "the message names the command: {err}");

    // Without the check in `build`, the pool meets the refusal when it connects.
    let client = LockClient::builder().pool_timeout(Duration::from_secs(1)).build_unchecked(&url).unwrap();
    let err = client.mutex("job").try_lock().expect_err("SELECT 1 is refused");
    assert_acl_refusal("try_lock through the pool", &err);
    let t = Instant::now();
    let err = client.mutex("job").lock().expect_err("SELECT 1 is refused");
    assert_acl_refusal("lock through the pool", &err);
    assert!(t.elapsed() < Duration::from_secs(3), "a refusal is not an outage to wait out: {:?}", t.elapsed());
}

#[test]
fn a_command_refused_inside_a_script_is_an_auth_error() {
    let server = RedisServer::start();
    // Without `+time`, a plain lock works and a fenced one is refused inside the
    // acquire script (the fence counter follows the server clock), after its own
    // `EVALSHA` (and the keys) passed the ACL.
    set_user(&server, "no-time", &rules(&server, Some("time")));
    let client = LockClient::open(&user_url(&server, "no-time")).expect("connect");
    let plain = client.mutex("plain").try_lock().expect("a lock without fencing needs no TIME").expect("free");
    plain.unlock().unwrap();
    let fenced = client.mutex_with("fenced", MutexOptions::default().fencing(true));
    let err = fenced.try_lock().expect_err("TIME is refused");
    assert_acl_refusal("try_lock with fencing", &err);
    let t = Instant::now();
    let err = fenced.lock().expect_err("TIME is refused");
    assert_acl_refusal("lock with fencing", &err);
    assert!(t.elapsed() < Duration::from_secs(3), "a refusal is not an outage to wait out: {:?}", t.elapsed());
}

#[test]
fn a_refusal_inside_holder_s_pipeline_is_an_auth_error() {
    let server = RedisServer::start();
    // `holder` sends HMGET and PTTL in one pipeline; only PTTL (not the first) is refused.
    set_user(&server, "no-pttl", &rules(&server, Some("pttl")));
    let client = LockClient::open(&user_url(&server, "no-pttl")).expect("connect");
    let err = client.mutex("job").holder().expect_err("PTTL is refused");
    assert_acl_refusal("holder", &err);
}

#[test]
fn a_refusal_inside_the_renewal_pipeline_is_an_auth_error() {
    let server = RedisServer::start();
    // `extend` sends `EVALSHA extend` in a pipeline (the watchdog batches many); its
    // HMGET is refused inside the script once the user loses `+hmget`.
    set_user(&server, "loses-hmget", &rules(&server, None));
    let client = LockClient::open(&user_url(&server, "loses-hmget")).expect("connect");
    let guard = client.mutex("job").lock().unwrap();
    revoke(&server, "loses-hmget", "hmget");
    let err = guard.extend(Duration::from_secs(60)).expect_err("HMGET is refused");
    assert_acl_refusal("extend", &err);
}

#[test]
fn refused_renewals_are_reported_as_acl_refusals() {
    capture_logs();
    let server = RedisServer::start();
    set_user(&server, "loses-pexpire", &rules(&server, None));
    let client = LockClient::open(&user_url(&server, "loses-pexpire")).expect("connect");
    let m = client.mutex_with("renewed", MutexOptions::default().lease(Duration::from_millis(600)));
    let guard = m.lock().unwrap();
    // The watchdog's batched renewals are refused inside the extend script (PEXPIRE)
    // until the lease runs out. Each failure is logged: it must say what to fix.
    let logs_before = captured().len();
    revoke(&server, "loses-pexpire", "pexpire");
    assert!(support::poll_until(Duration::from_secs(3), || guard.is_lost()), "the lease must run out unrenewed");
    let records = captured().split_off(logs_before);
    let failed: Vec<&String> =
        records.iter().filter(|l| l.contains("renewal of redis-mutex:{renewed}") && l.contains("failed")).collect();
    assert!(!failed.is_empty(), "the refused renewals must be logged");
    for record in &failed {
        assert!(
            record.contains("ACL LOG") && record.contains("README"),
            "a refused renewal must be reported as an ACL refusal: {record}"
        );
    }
    // Other tests of this binary log at the same time: this lock's records only.
    let lost: Vec<&String> = records.iter().filter(|l| l.contains("lost lock redis-mutex:{renewed}")).collect();
    assert_eq!(lost.len(), 1, "one warning for the lost lease: {lost:#?}");
    assert!(lost[0].contains("ACL LOG"), "the lost lease names the refusal as its cause: {}", lost[0]);
}

#[test]
fn a_channel_rule_that_refuses_the_notifier_is_reported_and_locking_still_makes_progress() {
    capture_logs();
    let server = RedisServer::start();
    // A natural mistake, the rule of earlier versions: `&redis-mutex:{*}` covers no
    // channel the notifier subscribes to, so Redis refuses the subscription (and
    // redis-rs drops the reply).
    let rules: Vec<String> = rules(&server, None)
        .into_iter()
        .map(|r| if r == "&redis-mutex:*" { "&redis-mutex:{*}".into() } else { r })
        .collect();
    set_user(&server, "wrong-channels", &rules);
    let url = user_url(&server, "wrong-channels");
    let (a, b) = (LockClient::open(&url).unwrap(), LockClient::open(&url).unwrap());
    thread::sleep(Duration::from_millis(500));
    assert!(!a.is_notifier_connected(), "a refused SUBSCRIBE must not count as subscribed");

    // Waiters then poll Redis. A release that grants the lock to the waiting client
    // cannot tell it (the channel is refused too): the release says so, as an ACL
    // refusal, and the waiter still gets the lock once the grant runs out (1 s), not
    // when the lease (30 s) would have.
    let g = a.mutex("job").lock().unwrap();
    let mb = b.mutex("job");
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let t = Instant::now();
            let got = mb.try_lock_for(Duration::from_secs(10)).unwrap().is_some();
            (got, t.elapsed())
        });
        thread::sleep(Duration::from_millis(300));
        let released = g.unlock();
        assert!(matches!(released, Err(Error::Auth(_))), "the refused grant message is reported: {released:?}");
        let (got, waited) = waiter.join().unwrap();
        assert!(got && waited < Duration::from_secs(3), "got {got} after {waited:?} (lease is 30 s)");
    });
    let warned = captured().iter().any(|l| l.starts_with("WARN") && l.contains("&redis-mutex:*"));
    assert!(warned, "a warning must name the channel rule to add: {:#?}", captured());
}
