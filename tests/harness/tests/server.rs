//! Proves the server launcher works: real `redis-server` processes start, stop,
//! restart on the same port, honour extra arguments, pause/resume, report command
//! statistics, and run in a directory they are given.

use std::time::Duration;

use redis_mutex_harness::RedisServer;

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

#[test]
fn start_answers_ping() {
    let server = RedisServer::start();
    assert_eq!(ping(&mut server.conn()).unwrap(), "PONG");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}/", server.port()));
    assert!(server.pid() > 0);
    assert!(server.log().contains("Ready to accept connections"));
}

#[test]
fn stop_refuses_connections() {
    let mut server = RedisServer::start();
    server.stop();
    assert!(!server.is_running());
    let err = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .err()
        .expect("connecting to a stopped server must fail");
    assert!(err.is_connection_refusal(), "unexpected error: {err}");
}

#[test]
fn restart_uses_same_port_and_loses_unpersisted_data() {
    let mut server = RedisServer::start();
    let port = server.port();
    let old_pid = server.pid();
    redis::cmd("SET").arg("k").arg("v").query::<()>(&mut server.conn()).unwrap();

    server.restart();

    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), old_pid);
    let mut con = server.conn();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(value, None, "without persistence the key must be gone");
}

#[test]
fn requirepass_rejects_unauthenticated_ping() {
    let server = RedisServer::start_with(&["--requirepass", "pw"]);
    assert_eq!(server.password(), Some("pw"));

    let err = ping(&mut server.conn()).expect_err("unauthenticated PING must fail");
    assert_eq!(err.code(), Some("NOAUTH"), "unexpected error: {err}");

    let authed = redis::Client::open(server.url_with_password("pw")).unwrap();
    assert_eq!(ping(&mut authed.get_connection().unwrap()).unwrap(), "PONG");
    // The harness's own connections authenticate by themselves.
    assert!(server.info("server").contains("redis_version:"));
}

#[test]
fn command_stats_count_calls() {
    let server = RedisServer::start();
    assert_eq!(server.command_calls("set"), 0, "stats start at zero");
    let mut con = server.conn();
    for i in 0..3 {
        redis::cmd("SET").arg("k").arg(i).query::<()>(&mut con).unwrap();
    }
    assert_eq!(server.command_calls("set"), 3);
    assert_eq!(server.command_calls("SET"), 3);
    assert_eq!(server.command_calls("get"), 0);
    assert!(server.total_calls() >= 3);

    server.reset_stats();
    assert_eq!(server.command_calls("set"), 0);
    assert_eq!(server.total_calls(), 0);
}

#[test]
fn pause_and_resume() {
    let server = RedisServer::start();
    let mut con = server.conn();
    con.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    server.pause();
    let err = ping(&mut con).expect_err("a paused server must not answer");
    assert!(err.is_timeout(), "unexpected error: {err}");

    server.resume();
    let mut fresh = server.conn();
    assert_eq!(ping(&mut fresh).unwrap(), "PONG");
}

#[test]
fn a_given_directory_holds_the_log_and_outlives_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::builder().dir(dir.path()).args(&["--appendonly", "yes"]).try_start().unwrap();
    assert_eq!(server.dir(), dir.path());
    redis::cmd("SET").arg("k").arg("v").query::<()>(&mut server.conn()).unwrap();
    server.try_restart().unwrap();
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut server.conn()).unwrap();
    assert_eq!(value.as_deref(), Some("v"), "restarted from its AOF in the same directory");
    drop(server);
    assert!(dir.path().join("redis.log").is_file(), "the log stays in the given directory");
    assert!(dir.path().join("appendonlydir").is_dir());
}
