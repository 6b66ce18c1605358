//! Running a command: exit codes, conflicts, runs of one name never overlapping,
//! renewal past the lease, stdin and stdout, the environment.

use std::io::Write;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::LockClient;

use crate::support::{RedisServer, wait_until};
use crate::*;

#[test]
fn exit_codes_pass_through_and_a_signal_is_128_plus_its_number() {
    let server = RedisServer::start();
    for (script, want) in [("exit 0", 0), ("exit 42", 42), ("kill -TERM $$", 143), ("kill -KILL $$", 137)] {
        let o = output(run_sh(&mut cli(&server.url()), &[], "codes", script, &[]));
        assert_eq!(code(&o), want, "{script}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{script}");
        assert!(!locked(&server, "codes"), "{script}: the lock is released after the command");
    }
    for (program, want, says) in [("no-such-command-here", 127, "cannot run"), ("/", 126, "cannot run")] {
        let o = output(cli(&server.url()).args(["run", "codes", "--", program]));
        assert_eq!(code(&o), want, "{program}");
        assert!(one_line(&o).contains(says), "{program}: {}", stderr(&o));
        assert!(!locked(&server, "codes"));
    }
}

#[test]
fn a_lock_held_elsewhere_is_the_conflict_code_and_nothing_runs() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ran = file(&dir, "ran");
    let holder = LockClient::open(&server.url()).unwrap();
    let guard = holder.mutex("busy").lock().unwrap();

    let o = output(run_sh(&mut cli(&server.url()), &["--no-wait"], "busy", "touch \"$1\"", &[&ran]));
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(one_line(&o).contains("held elsewhere"), "{}", stderr(&o));

    let t = Instant::now();
    let options = ["--wait", "500ms", "--conflict-exit-code", "9"];
    let o = output(run_sh(&mut cli(&server.url()), &options, "busy", "touch \"$1\"", &[&ran]));
    let waited = t.elapsed();
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(one_line(&o).contains("--wait 500ms"), "{}", stderr(&o));
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(5), "gave up after {waited:?}");
    assert!(!ran.exists(), "the command ran without the lock");

    guard.unlock().unwrap();
    let o = output(run_sh(&mut cli(&server.url()), &["--no-wait"], "busy", "touch \"$1\"", &[&ran]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(ran.exists(), "the command did not run once the lock was free");
}

#[test]
fn concurrent_runs_of_one_name_never_overlap() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = file(&dir, "log");
    let script = r#"echo "$1 start $(date +%s%N)" >> "$2"; sleep 0.2; echo "$1 end $(date +%s%N)" >> "$2""#;
    let runs: Vec<Child> = (0..4)
        .map(|i| {
            let mut c = cli(&server.url());
            c.args(["run", "shared", "--", "sh", "-c", script, "sh", &i.to_string()]).arg(&log);
            spawn(&mut c)
        })
        .collect();
    for run in runs {
        let (o, _) = finish(run, Duration::from_secs(30));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let mut spans: Vec<(u128, u128)> = (0..4)
        .map(|i| {
            let at = |what: &str| -> u128 {
                let prefix = format!("{i} {what} ");
                let line = read(&log).lines().find(|l| l.starts_with(&prefix)).map(str::to_owned);
                line.unwrap_or_else(|| panic!("run {i} wrote no {what}: {}", read(&log)))[prefix.len()..]
                    .parse()
                    .unwrap()
            };
            (at("start"), at("end"))
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 > w[0].1, "two commands ran at once: {spans:?}");
    }
}

#[test]
fn a_command_running_three_leases_keeps_the_lock_and_others_wait() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (started, ended, second) = (file(&dir, "started"), file(&dir, "ended"), file(&dir, "second"));
    let short = ["--lease", "2s", "--kill-grace", "500ms"];
    let script = r#"date +%s%N > "$1"; sleep 6; date +%s%N > "$2""#;
    let first = spawn(run_sh(&mut cli(&server.url()), &short, "long", script, &[&started, &ended]));
    wait_until(Duration::from_secs(10), "the first command to start", || started.exists());
    let mut waiting =
        spawn(run_sh(&mut cli(&server.url()), &["--wait", "30s"], "long", r#"date +%s%N > "$1""#, &[&second]));

    // Past two leases of 2 s: only renewals keep the first run's lock.
    thread::sleep(Duration::from_millis(4500));
    let o = output(run_sh(&mut cli(&server.url()), &["--no-wait"], "long", "true", &[]));
    assert_eq!(code(&o), 1, "the lock was free while the first command ran: {}", stderr(&o));
    assert!(is_running(&mut waiting), "the second run did not wait");

    let (o, _) = finish(first, Duration::from_secs(15));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let (o, _) = finish(waiting, Duration::from_secs(15));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stamps(&second)[0] > stamps(&ended)[0], "the second command started before the first ended");
}

#[test]
fn stdin_and_stdout_pass_through() {
    let server = RedisServer::start();
    let mut c = cli(&server.url());
    c.args(["run", "piped", "--", "tr", "a-z", "A-Z"]).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"hello from stdin\n").unwrap();
    let (o, _) = finish(child, Duration::from_secs(10));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "HELLO FROM STDIN\n");
}

#[test]
fn the_environment_names_the_lock_and_fencing_tokens_rise() {
    let server = RedisServer::start();
    let print = r#"echo "$REDIS_MUTEX_NAME|$REDIS_MUTEX_TOKEN|${REDIS_MUTEX_FENCING_TOKEN-unset}""#;
    let seen = |fencing: bool| -> Vec<String> {
        let mut c = cli(&server.url());
        c.env("REDIS_MUTEX_FENCING_TOKEN", "1"); // an outer run's, to be replaced or removed
        let o = output(run_sh(&mut c, if fencing { &["--fencing"] } else { &[] }, "env:job", print, &[]));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap().trim().split('|').map(str::to_owned).collect()
    };
    let (first, second) = (seen(true), seen(true));
    assert_eq!((first[0].as_str(), first[1].len()), ("env:job", 36), "{first:?}");
    assert_ne!(first[1], second[1], "each run has its own token");
    let fence = |v: &[String]| v[2].parse::<u64>().unwrap_or_else(|_| panic!("a fencing token: {v:?}"));
    assert!(fence(&second) > fence(&first), "{first:?} then {second:?}");
    assert_eq!(seen(false)[2], "unset", "without --fencing there is no fencing token");
}
