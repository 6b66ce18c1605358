//! The `redis-mutex` command (feature `cli`), run as the built binary against real
//! servers: exit codes, runs of one name never overlapping, renewal, the command
//! stopped when the lock is lost or Redis becomes unreachable (before its lease can
//! run out), signals passed on, stdin, the environment, `status`, `unlock --force`,
//! connection failures.
//!
//! Run alone: `cargo test --features cli --test cli`. The commands run by the tests are
//! `sh` scripts that end by themselves within a minute, so a failed test leaves
//! nothing running for long.
#![cfg(feature = "cli")]

mod support;

// By behaviour, in tests/cli/ (a folder without main.rs: not test targets of their own).
#[path = "cli/operating.rs"]
mod operating;
#[path = "cli/running.rs"]
mod running;
#[path = "cli/stopping.rs"]
mod stopping;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis_mutex::LockClient;
use support::{RedisServer, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_redis-mutex");

/// `redis-mutex --url <url>`, with none of the variables it reads inherited.
fn cli(url: &str) -> Command {
    let mut c = bare();
    c.arg("--url").arg(url);
    c
}

fn bare() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("REDIS_URL").env_remove("REDIS_MUTEX_MASTER_PASSWORD").env_remove("REDIS_MUTEX_FENCING_TOKEN");
    c.stdin(Stdio::null());
    c
}

/// `run [options] NAME -- sh -c SCRIPT sh ARGS...`.
fn run_sh<'a>(c: &'a mut Command, options: &[&str], name: &str, script: &str, args: &[&Path]) -> &'a mut Command {
    c.arg("run").args(options).args([name, "--", "sh", "-c", script, "sh"]).args(args)
}

fn output(c: &mut Command) -> Output {
    c.output().expect("redis-mutex starts")
}

fn spawn(c: &mut Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("redis-mutex starts")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or_else(|| panic!("redis-mutex was killed: {o:?}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The single line redis-mutex printed on stderr.
fn one_line(o: &Output) -> String {
    let e = stderr(o);
    assert_eq!(e.lines().count(), 1, "one line on stderr: {e:?}");
    assert!(e.starts_with("redis-mutex: ") && e.ends_with('\n'), "{e:?}");
    e
}

/// Waits at most `limit` for `child` to exit; kills it and fails past that.
fn finish(mut child: Child, limit: Duration) -> (Output, Duration) {
    let t = Instant::now();
    if !poll_until(limit, || child.try_wait().unwrap().is_some()) {
        // Not its output: a command it left behind may hold the pipes open.
        let _ = child.kill();
        panic!("redis-mutex still running after {limit:?}: {:?}", child.wait());
    }
    let waited = t.elapsed();
    (child.wait_with_output().unwrap(), waited)
}

fn is_running(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

fn locked(server: &RedisServer, name: &str) -> bool {
    LockClient::open(&server.url()).unwrap().mutex(name).is_locked().unwrap()
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(") ").next().is_some_and(|rest| !rest.starts_with('Z')))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Nanosecond timestamps (`date +%s%N`), one per line.
fn stamps(path: &Path) -> Vec<u128> {
    read(path).lines().map(|l| l.trim().parse().unwrap_or_else(|_| panic!("a timestamp: {l:?}"))).collect()
}

fn file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
