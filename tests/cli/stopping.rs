//! Stopping the command: when the lock is force-unlocked, when Redis becomes
//! unreachable (before the lease can run out), when redis-mutex gets a signal.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{FaultProxy, RedisServer, poll_until, wait_until};
use crate::*;

#[test]
fn unlock_force_stops_the_command_with_term_then_kill() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (terms, pid, grandchild) = (file(&dir, "terms"), file(&dir, "pid"), file(&dir, "grandchild"));
    // The shell notes SIGTERM and runs on; a command it started ignores SIGTERM. (Its
    // stderr is redis-mutex's: the shell reporting a `sleep` killed is not ours to show.)
    let script = r#"exec 2>/dev/null; trap 'echo TERM >> "$1"' TERM
        (trap '' TERM; exec sleep 60) & echo $! > "$3"
        echo $$ > "$2"
        i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"#;
    let (lease, grace) = (Duration::from_secs(3), Duration::from_secs(1));
    let options = ["--lease", "3s", "--kill-grace", "1s"];
    let run = spawn(run_sh(&mut cli(&server.url()), &options, "forced", script, &[&terms, &pid, &grandchild]));
    wait_until(Duration::from_secs(10), "the command to start", || {
        !read(&pid).is_empty() && !read(&grandchild).is_empty()
    });

    let o = output(bare().args(["unlock", "forced", "--url", &server.url()]));
    assert_eq!(code(&o), 64, "unlock without --force: {}", stderr(&o));
    assert!(one_line(&o).contains("--force"));
    assert!(locked(&server, "forced"), "unlock without --force deleted the lock");

    let t = Instant::now();
    let o = output(bare().args(["unlock", "--force", "forced", "--url", &server.url()]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(one_line(&o).contains("warning: force-unlocked \"forced\""), "{}", stderr(&o));
    let (o, _) = finish(run, Duration::from_secs(15));
    let took = t.elapsed();

    assert_eq!(code(&o), 75, "the exit code says the lock was lost: {}", stderr(&o));
    assert!(one_line(&o).contains("was lost"), "{}", stderr(&o));
    assert!(read(&terms).contains("TERM"), "the command got no SIGTERM");
    // Found at the next renewal (≤ lease/3), then SIGKILL after the grace.
    assert!(took >= grace && took < lease / 3 + grace + Duration::from_millis(1500), "stopped {took:?} after unlock");
    for (what, pid) in [("the command", read(&pid)), ("what it started", read(&grandchild))] {
        let pid = pid.trim().to_owned();
        assert!(poll_until(Duration::from_secs(5), || !alive(&pid)), "{what} ({pid}) survived SIGKILL");
    }

    let o = output(bare().args(["unlock", "--force", "forced", "--url", &server.url()]));
    assert_eq!(code(&o), 0);
    assert!(one_line(&o).contains("was not held"), "{}", stderr(&o));
}

#[test]
fn redis_unreachable_mid_run_stops_the_command_before_its_lease_can_expire() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let dir = tempfile::tempdir().unwrap();
    let (ticks, second) = (file(&dir, "ticks"), file(&dir, "second"));
    let script = r#"i=0; while [ $i -lt 1500 ]; do date +%s%N >> "$1"; sleep 0.02; i=$((i+1)); done"#;
    let options = ["--lease", "2s", "--kill-grace", "500ms"];
    let first = spawn(run_sh(&mut cli(&proxy.url()), &options, "cut-off", script, &[&ticks]));
    wait_until(Duration::from_secs(10), "the first command to run", || stamps(&ticks).len() >= 3);

    proxy.blackhole(true);
    let waiting =
        spawn(run_sh(&mut cli(&server.url()), &["--wait", "30s"], "cut-off", r#"date +%s%N > "$1""#, &[&second]));
    let (o, _) = finish(waiting, Duration::from_secs(30));
    assert_eq!(code(&o), 0, "the second run got the lock once the first one's lease ran out: {}", stderr(&o));
    let (o, took) = finish(first, Duration::from_secs(30));
    let last_tick = *stamps(&ticks).iter().max().unwrap();
    let second_started = stamps(&second)[0];
    assert!(
        last_tick < second_started,
        "the first command still ran {} ms after the second run took the lock: {}",
        (last_tick - second_started) / 1_000_000,
        stderr(&o)
    );
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(one_line(&o).contains("renewals of lock \"cut-off\" keep failing"), "{}", stderr(&o));
    assert!(took < Duration::from_secs(10), "the first run exited {took:?} after the second took the lock");
}

#[test]
fn signals_reach_the_command_and_the_lock_is_released_once_it_exits() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    for signal in ["INT", "TERM", "HUP"] {
        let (got, ready) = (file(&dir, &format!("got-{signal}")), file(&dir, &format!("ready-{signal}")));
        let script = r#"exec 2>/dev/null; on() { echo "$1" > "$2"; sleep 1; exit 3; }
            trap 'on INT "$1"' INT; trap 'on TERM "$1"' TERM; trap 'on HUP "$1"' HUP
            echo ready > "$2"
            i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"#;
        let mut run = spawn(run_sh(&mut cli(&server.url()), &[], "signalled", script, &[&got, &ready]));
        wait_until(Duration::from_secs(10), "the command to start", || read(&ready).contains("ready"));
        let kill = Command::new("kill").args(["-s", signal, &run.id().to_string()]).status().unwrap();
        assert!(kill.success());
        wait_until(Duration::from_secs(10), "the command to get the signal", || !read(&got).is_empty());
        assert_eq!(read(&got).trim(), signal);
        let held = locked(&server, "signalled");
        if is_running(&mut run) {
            assert!(held, "SIG{signal}: the lock was released before the command exited");
        }
        let (o, _) = finish(run, Duration::from_secs(10));
        assert_eq!(code(&o), 3, "SIG{signal}: the command's exit code: {}", stderr(&o));
        assert!(!locked(&server, "signalled"), "SIG{signal}: the lock outlived the command");
    }
}

/// Whether SIGHUP is in the `SigIgn` mask of a `/proc/<pid>/status` text.
fn ignores_hup(status: &str) -> bool {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).expect("a SigIgn line").trim();
    u64::from_str_radix(mask, 16).unwrap() & 1 == 1
}

#[test]
fn a_signal_ignored_at_start_stays_ignored_for_the_command() {
    let server = RedisServer::start();
    let show = ["run", "nohup", "--", "sh", "-c", "cat /proc/$$/status"];
    let mut c = Command::new("nohup");
    c.arg(BIN).args(["--url", &server.url()]).args(show).stdin(Stdio::null()).env_remove("REDIS_URL");
    let o = output(&mut c);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(ignores_hup(&String::from_utf8_lossy(&o.stdout)), "nohup redis-mutex: the command must ignore SIGHUP");
    if !ignores_hup(&fs::read_to_string("/proc/self/status").unwrap()) {
        let o = output(cli(&server.url()).args(show));
        assert!(!ignores_hup(&String::from_utf8_lossy(&o.stdout)), "SIGHUP ignored without nohup");
    }
}
