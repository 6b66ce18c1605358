//! Operating requirements are checked at `build()`: a `maxmemory-policy` that lets Redis
//! evict locks is a warning naming the risk (also for an ACL user without `CONFIG`, as
//! on managed Redis), a server without AOF is noted, and a server that refuses the
//! check (an ACL without `CONFIG` and `INFO`) still builds, with a note that the
//! settings could not be checked.

mod support;
use support::RedisServer;

use std::sync::Mutex as StdMutex;

use redis_mutex::LockClient;

// ---- a logger that keeps every record -------------------------------------------

static RECORDS: StdMutex<Vec<(log::Level, String)>> = StdMutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        records.push((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Installs the capturing logger (once per test binary: every test's records land in
/// it, so each test looks only at records naming its own server's port).
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Records at `level` or more severe that name `server`'s address.
fn logged(server: &RedisServer, level: log::Level) -> Vec<String> {
    let address = format!("127.0.0.1:{}", server.port());
    let records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    records.iter().filter(|(l, m)| *l <= level && m.contains(&address)).map(|(_, m)| m.clone()).collect()
}

/// Builds a client on `server` (as user `user`, if any) and returns what it logged about
/// the server's settings.
fn build(server: &RedisServer, user: Option<&str>) -> Vec<String> {
    capture_logs();
    let url = match user {
        Some(user) => format!("redis://{user}:pw@127.0.0.1:{}/", server.port()),
        None => server.url(),
    };
    let client = LockClient::open(&url).unwrap_or_else(|e| panic!("build() must not fail because of the check: {e}"));
    // The client works: the check changed nothing.
    client.mutex("job").lock().unwrap().unlock().unwrap();
    logged(server, log::Level::Info)
}

#[test]
fn an_eviction_policy_that_can_take_a_held_lock_is_a_warning_naming_the_risk() {
    for policy in ["allkeys-lru", "volatile-lru"] {
        let server = RedisServer::start_with(&["--maxmemory-policy", policy]);
        build(&server, None);
        let warnings = logged(&server, log::Level::Warn);
        assert!(
            warnings.iter().any(|w| w.contains(policy) && w.contains("evicted") && w.contains("noeviction")),
            "{policy}: a warning must name the policy, the risk and the fix: {warnings:#?}"
        );
    }
}

#[test]
fn the_warning_needs_no_config_permission() {
    // Managed Redis services refuse CONFIG; the README's ACL does not grant it.
    let server = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]);
    let rules = ["reset", "on", ">pw", "~*", "&*", "+@all", "-config"];
    redis::cmd("ACL").arg("SETUSER").arg("no-config").arg(&rules).query::<()>(&mut server.admin_conn()).unwrap();
    build(&server, Some("no-config"));
    let warnings = logged(&server, log::Level::Warn);
    assert!(warnings.iter().any(|w| w.contains("volatile-lru") && w.contains("evicted")), "{warnings:#?}");
}

#[test]
fn noeviction_with_aof_is_not_remarked_on() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction", "--appendonly", "yes"]);
    let said = build(&server, None);
    assert!(said.is_empty(), "nothing to say about a server set as the README asks: {said:#?}");
}

#[test]
fn a_server_without_aof_is_noted_below_warning_level() {
    // The harness's default: no persistence at all.
    let server = RedisServer::start();
    let said = build(&server, None);
    assert!(
        said.iter().any(|m| m.contains("AOF") && m.contains("restart") && m.contains("fencing tokens stay safe")),
        "a note that a restart forgets the locks: {said:#?}"
    );
    assert!(logged(&server, log::Level::Warn).is_empty(), "noeviction, so no warning: {:#?}", said);
}

#[test]
fn a_server_that_refuses_the_check_still_builds_and_says_it_could_not_check() {
    // As with an ACL that grants only what locking needs, or a Redis without INFO.
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let rules = ["reset", "on", ">pw", "~*", "&*", "+@all", "-config", "-info"];
    redis::cmd("ACL").arg("SETUSER").arg("no-info").arg(&rules).query::<()>(&mut server.admin_conn()).unwrap();
    let said = build(&server, Some("no-info"));
    for what in ["maxmemory-policy", "persistence"] {
        assert!(
            said.iter().any(|m| m.contains("could not check") && m.contains(what)),
            "{what}: the check says it could not check: {said:#?}"
        );
    }
    assert!(logged(&server, log::Level::Warn).is_empty(), "a refused check is no warning: {said:#?}");
}
