//! What an operator sees: `status`, connection failures, help and usage errors, and
//! the deployments: Sentinel, TLS, Cluster.

use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions};
use redis_mutex_harness::SentinelGroup;

use crate::support::{FaultProxy, RedisServer, wait_until};
use crate::*;

#[test]
fn status_shows_the_holder_its_lease_and_the_clients_waiting() {
    let server = RedisServer::start();
    let status = |name: &str, json: bool| -> String {
        let o = output(bare().args(["--url", &server.url(), "status", name]).args(json.then_some("--json")));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(status("report", false).contains(": free"), "{}", status("report", false));
    assert!(status("report", true).contains(r#""held":false,"token":null"#));
    assert!(status("we\"ird", true).starts_with(r#"{"name":"we\"ird","key":"redis-mutex:{we\"ird}""#));

    let (a, b) = (LockClient::open(&server.url()).unwrap(), LockClient::open(&server.url()).unwrap());
    let m = a.mutex_with("report", MutexOptions::default().lease(Duration::from_secs(30)));
    let guard = m.lock().unwrap();
    let waiter = {
        let b = b.clone();
        thread::spawn(move || drop(b.mutex("report").lock().unwrap()))
    };
    wait_until(Duration::from_secs(10), "the other client to queue", || {
        m.holder().unwrap().is_some_and(|h| !h.waiting_clients.is_empty())
    });

    let text = status("report", false);
    for part in [": held", guard.token(), "lease left", a.id(), &format!("first in line first: {}", b.id())] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    let json = status("report", true);
    for part in [
        r#""held":true"#.to_owned(),
        format!(r#""token":"{}""#, guard.token()),
        format!(r#""client_id":"{}""#, a.id()),
        format!(r#""contended":true,"waiting_clients":["{}"]"#, b.id()),
    ] {
        assert!(json.contains(&part), "{part} in {json}");
    }
    let lease_ms: u64 =
        json.split(r#""lease_left_ms":"#).nth(1).and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
    assert!((20_000..=30_000).contains(&lease_ms), "{json}");

    drop(guard);
    waiter.join().unwrap();
}

#[test]
fn connection_failures_are_one_line_with_their_codes_and_never_show_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "right-word"]);
    let silent = FaultProxy::start(server.port());
    silent.blackhole(true);
    let dir = tempfile::tempdir().unwrap();
    let ran = file(&dir, "ran");
    let secret = "s3cret-word";
    let refused = format!("redis://:{secret}@127.0.0.1:1/"); // a privileged port nobody listens on
    let wrong = format!("redis://:{secret}@127.0.0.1:{}/", server.port());
    let unparsable = format!("redis://:{secret}@127.0.0.1:port/");
    let cases = [
        (refused.as_str(), 69, "cannot reach Redis"),
        (&wrong, 77, "refused the credentials"),
        (&unparsable, 64, "invalid Redis URL"),
        ("no url at all", 64, "invalid Redis URL"),
    ];
    for (url, want, says) in cases {
        for via_env in [false, true] {
            for status in [false, true] {
                let mut c = bare();
                if via_env {
                    c.env("REDIS_URL", url)
                } else {
                    c.args(["--url", url])
                };
                if status {
                    c.args(["status", "job"])
                } else {
                    run_sh(&mut c, &[], "job", "touch \"$1\"", &[&ran])
                };
                let t = Instant::now();
                let o = output(&mut c);
                let case = format!("{url} (env {via_env}, status {status})");
                assert_eq!(code(&o), want, "{case}: {}", stderr(&o));
                let line = one_line(&o);
                assert!(line.contains(says) && !line.contains(secret), "{case}: {line}");
                assert!(line.contains(if via_env { "$REDIS_URL" } else { "--url" }), "{case}: {line}");
                assert!(t.elapsed() < Duration::from_secs(5), "{case}: took {:?}", t.elapsed());
            }
        }
    }
    // A server that accepts connections and never answers: the connect and read
    // timeouts (2 s, 3 s) bound it.
    let t = Instant::now();
    let o = output(run_sh(&mut cli(&silent.url()), &[], "job", "touch \"$1\"", &[&ran]));
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(one_line(&o).contains("cannot reach Redis"), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(!ran.exists(), "the command ran without a lock");
}

#[test]
fn help_and_usage_errors() {
    let o = output(bare().arg("--help"));
    assert_eq!(code(&o), 0);
    let help = String::from_utf8_lossy(&o.stdout);
    for part in ["crontab", "*/5 * * * *", "128+N", "75 ", "64 ", "69 ", "77 ", "--conflict-exit-code"] {
        assert!(help.contains(part), "{part:?} in --help");
    }
    let o = output(bare().args(["run", "--help"]));
    let help = String::from_utf8_lossy(&o.stdout);
    for part in ["SIGKILL after --kill-grace", "REDIS_MUTEX_FENCING_TOKEN", "kill grace + 0.5 s", "process group"] {
        assert!(help.contains(part), "{part:?} in run --help");
    }
    for (args, says) in [
        (&["run", "--lease", "5s", "--kill-grace", "5s", "job", "--", "true"][..], "--lease 5s is too short"),
        (&["run", "--wait", "5", "job", "--", "true"], "no unit"),
        (&["run", "job"], "<CMD>"),
        (&["run", "--no-wait", "--wait", "1s", "job", "--", "true"], "cannot be used with"),
        (&["--url", "redis://a/", "--url", "redis://b/", "status", "job"], "--sentinel"),
        (&[], "run, status or unlock"),
    ] {
        let o = output(bare().args(args));
        assert_eq!(code(&o), 64, "{args:?}: {}", stderr(&o));
        assert!(one_line(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn run_and_status_through_sentinel() {
    let group = SentinelGroup::start("cli-master", 0, 1);
    let sentinel = &group.sentinel_urls()[0];
    let via = |args: &[&str]| output(bare().args(["--sentinel", "cli-master", "--url", sentinel]).args(args));
    let o = via(&["run", "failover-safe", "--", "sh", "-c", "echo $REDIS_MUTEX_NAME"]);
    assert_eq!((code(&o), String::from_utf8_lossy(&o.stdout).as_ref()), (0, "failover-safe\n"), "{}", stderr(&o));
    let o = via(&["status", "failover-safe"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": free"));
    let o = output(bare().args(["--sentinel", "no-such-master", "--url", sentinel, "status", "failover-safe"]));
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(one_line(&o).contains("no-such-master"), "{}", stderr(&o));
}

#[test]
fn run_over_tls_with_a_ca_and_a_client_certificate() {
    let server = RedisServer::builder().mutual_tls().start();
    let tls = server.tls().expect("a TLS server");
    let url = server.url();
    let with_certs = |args: &[&str]| {
        let mut c = cli(&url);
        c.arg("--tls-ca")
            .arg(&tls.ca_cert)
            .arg("--tls-cert")
            .arg(&tls.client_cert)
            .arg("--tls-key")
            .arg(&tls.client_key);
        output(c.args(args))
    };
    let o = with_certs(&["run", "tls-job", "--", "sh", "-c", "echo $REDIS_MUTEX_NAME"]);
    assert_eq!((code(&o), String::from_utf8_lossy(&o.stdout).as_ref()), (0, "tls-job\n"), "{}", stderr(&o));
    // Without the client certificate the server refuses: a TLS error, one line.
    let o = output(cli(&url).arg("--tls-ca").arg(&tls.ca_cert).args(["status", "tls-job"]));
    assert_ne!(code(&o), 0);
    assert!(one_line(&o).to_lowercase().contains("certificate"), "{}", stderr(&o));
    let o = output(cli(&url).args(["--tls-ca", "/no/such/ca.pem", "status", "tls-job"]));
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(one_line(&o).contains("--tls-ca"), "{}", stderr(&o));
}

#[test]
fn run_and_status_on_a_cluster() {
    let cluster = redis_mutex_harness::Cluster::start(3, 0);
    let urls = cluster.urls();
    let on_cluster = |args: &[&str]| {
        let mut c = bare();
        c.arg("--cluster");
        for u in &urls {
            c.arg("--url").arg(u);
        }
        output(c.args(args))
    };
    for name in ["a", "b", "c", "d"] {
        let o = on_cluster(&["run", name, "--", "sh", "-c", "echo $REDIS_MUTEX_NAME"]);
        assert_eq!((code(&o), String::from_utf8_lossy(&o.stdout).trim()), (0, name), "{}", stderr(&o));
    }
    let o = on_cluster(&["status", "a"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": free"));
    let o = output(bare().args(["--cluster", "status", "a"]));
    assert_eq!(code(&o), 64, "{}", stderr(&o));
}

#[test]
fn run_and_status_with_redlock() {
    let masters = redis_mutex_harness::Masters::start(3);
    let urls = masters.urls();
    let with = |args: &[&str]| {
        let mut c = bare();
        c.arg("--redlock");
        for u in &urls {
            c.arg("--url").arg(u);
        }
        output(c.args(args))
    };
    let o = with(&["run", "quorum-job", "--", "sh", "-c", "echo $REDIS_MUTEX_NAME"]);
    assert_eq!((code(&o), String::from_utf8_lossy(&o.stdout).trim()), (0, "quorum-job"), "{}", stderr(&o));
    let o = output(bare().args(["--redlock", "--url", &urls[0], "status", "quorum-job"]));
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(one_line(&o).contains("--redlock"), "{}", stderr(&o));
}
