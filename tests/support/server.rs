//! Real `redis-server` processes for integration tests.
//!
//! Modelled on the `redis-test` crate's `server.rs` from redis-rs: every
//! [`RedisServer`] is its own `redis-server` child process listening on a free
//! port of 127.0.0.1, with its working directory and log file in a private
//! temporary directory. Startup waits (retrying on connection refusal) until
//! the server answers `PING`; the process is killed and reaped on drop.
//! The child's stdout/stderr go to a file next to the log (not the console);
//! both are included in startup-failure panics and printed when a server is
//! dropped during a panic.
//! Servers are independent of each other, so tests in one binary can run in
//! parallel, each with its own server.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;
use tempfile::TempDir;

const REDIS_SERVER: &str = "redis-server";
const NOT_FOUND_MSG: &str = "redis-server not found on PATH: install it with \
     `apt-get update && apt-get install -y redis-server` (Debian/Ubuntu) or \
     `brew install redis` (macOS)";
/// How long a freshly spawned server gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Timeouts of a single readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many free ports `start` tries before giving up.
const START_ATTEMPTS: usize = 5;
/// How long `restart` keeps retrying when its port is still in use.
const RESTART_BIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect/read/write timeout of the harness's own connections.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout of [`RedisServer::conn`].
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of log printed when a server is dropped during a panic.
const LOG_TAIL_LINES: usize = 100;
/// Commands the harness itself sends (`info`, `reset_stats`); not counted by
/// [`RedisServer::total_calls`].
const HARNESS_COMMANDS: &[&str] = &["info", "config|resetstat"];

/// The port a spawned server wanted was already taken.
struct AddrInUse;

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
    password: Option<String>,
    dir: TempDir,
    /// Set once a harness panic message already contains the log, so that
    /// `Drop` does not print it a second time.
    log_shown: AtomicBool,
}

impl RedisServer {
    /// Starts a server with the default settings (no persistence, no
    /// password) and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with `extra_args` appended to the harness's own
    /// arguments (`--port`, `--bind 127.0.0.1`, `--save ""`, `--dir`,
    /// `--logfile`, `--daemonize no`, `--protected-mode no`), e.g.
    /// `&["--appendonly", "yes", "--appendfsync", "always"]` or
    /// `&["--requirepass", "s3cret"]`. Waits until it answers `PING`.
    ///
    /// If `--requirepass PW` is among the arguments, the harness's own
    /// connections ([`admin_conn`](Self::admin_conn), [`info`](Self::info),
    /// ...) authenticate with `PW`; [`client`](Self::client) and
    /// [`conn`](Self::conn) never do.
    ///
    /// Panics if `redis-server` is not on `PATH`, or if the server exits or
    /// does not become ready (the panic message includes its log).
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let password = extra_args
            .windows(2)
            .rev()
            .find(|w| w[0].eq_ignore_ascii_case("--requirepass"))
            .map(|w| w[1].clone())
            .filter(|pw| !pw.is_empty());
        let dir = tempfile::Builder::new()
            .prefix("redis-mutex-test-")
            .tempdir()
            .expect("failed to create a temporary directory for redis-server");
        let mut server =
            RedisServer { child: None, port: 0, extra_args, password, dir, log_shown: AtomicBool::new(false) };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            if let Ok(child) = server.launch() {
                server.child = Some(child);
                server.reset_stats();
                return server;
            }
            // Lost a race for the port with someone else: try another one.
        }
        server.log_shown.store(true, Ordering::Relaxed);
        panic!(
            "redis-server could not bind a free port in {START_ATTEMPTS} attempts; log:\n{}",
            server.log_tail(LOG_TAIL_LINES)
        );
    }

    /// The TCP port the server listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/` (no credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/", self.port)
    }

    /// The `--requirepass` value passed to [`start_with`](Self::start_with), if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A client for [`url`](Self::url) (unauthenticated).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("harness URL is valid")
    }

    /// A fresh, unauthenticated connection for test assertions, e.g.
    /// `redis::cmd("GET").arg(k).query::<Option<String>>(&mut server.conn())`.
    /// Panics (with the server log) if the server cannot be reached.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(CONN_TIMEOUT)
            .unwrap_or_else(|e| self.fail(&format!("could not connect: {e}")))
    }

    /// A fresh connection as used by the harness itself: authenticated when
    /// the server has a password, does not send `CLIENT SETINFO`, and has
    /// 10 s connect/read/write timeouts (so it cannot hang on a paused server).
    pub fn admin_conn(&self) -> redis::Connection {
        self.try_admin_conn(ADMIN_TIMEOUT)
            .unwrap_or_else(|e| self.fail(&format!("could not open admin connection: {e}")))
    }

    /// The temporary directory used as the server's `--dir`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Everything the server (all its incarnations) has logged so far.
    pub fn log(&self) -> String {
        read_from(&self.log_path(), 0)
    }

    /// Path of the file that receives the process's stdout/stderr (normally
    /// empty; `redis-server` reports command-line/config errors there,
    /// before it opens its log file).
    pub fn stdio_path(&self) -> PathBuf {
        self.dir.path().join("redis.stdio")
    }

    /// Whether the server process is currently running (not [`stop`](Self::stop)ped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Process id of the running server. Panics if it is stopped.
    pub fn pid(&self) -> u32 {
        match &self.child {
            Some(child) => child.id(),
            None => panic!("redis-server on port {} is not running", self.port),
        }
    }

    /// Kills the server (SIGKILL) and reaps it. No-op if already stopped.
    /// Nothing is persisted unless AOF with `appendfsync always` was enabled.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same directory and
    /// arguments (stopping it first if it is running), and waits until it
    /// answers `PING`. Retries for up to 5 s while the port is still in use.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + RESTART_BIND_TIMEOUT;
        loop {
            if let Ok(child) = self.launch() {
                self.child = Some(child);
                self.reset_stats();
                return;
            }
            if Instant::now() >= deadline {
                self.log_shown.store(true, Ordering::Relaxed);
                panic!(
                    "redis-server could not re-bind port {} within {RESTART_BIND_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the server process (SIGSTOP): connections stay open but
    /// nothing is answered until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Unfreezes a [`pause`](Self::pause)d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Output of `INFO <section>` (on a fresh admin connection).
    pub fn info(&self, section: &str) -> String {
        let mut con = self.admin_conn();
        redis::cmd("INFO")
            .arg(section)
            .query::<String>(&mut con)
            .unwrap_or_else(|e| self.fail(&format!("INFO {section} failed: {e}")))
    }

    /// `calls` of every command in `INFO commandstats`, keyed by the name
    /// after `cmdstat_` (lower case; subcommands look like `client|setinfo`).
    pub fn command_stats(&self) -> BTreeMap<String, u64> {
        parse_commandstats(&self.info("commandstats"))
    }

    /// How many times `cmd_name` (case-insensitive, e.g. `"evalsha"`,
    /// `"set"`, `"client|setinfo"`) was executed since the last stats reset;
    /// 0 if never.
    pub fn command_calls(&self, cmd_name: &str) -> u64 {
        self.command_stats().get(&cmd_name.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// Sum of `calls` over all commands since the last stats reset, except
    /// the harness's own bookkeeping commands (`info`, `config|resetstat`).
    /// Note: on a password-protected server every harness query also sends
    /// one `AUTH`, which is counted.
    pub fn total_calls(&self) -> u64 {
        self.command_stats()
            .iter()
            .filter(|(name, _)| !HARNESS_COMMANDS.contains(&name.as_str()))
            .map(|(_, calls)| calls)
            .sum()
    }

    /// `CONFIG RESETSTAT`. Also done automatically once the server is ready
    /// after [`start`](Self::start)/[`restart`](Self::restart), so the
    /// readiness `PING` is not counted.
    pub fn reset_stats(&self) {
        let mut con = self.admin_conn();
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut con)
            .unwrap_or_else(|e| self.fail(&format!("CONFIG RESETSTAT failed: {e}")));
    }

    // ---- internals ----

    /// Spawns `redis-server` on `self.port` and waits until it answers.
    /// `Err(AddrInUse)` if it exited because the port was taken; panics on
    /// any other failure.
    fn launch(&self) -> Result<Child, AddrInUse> {
        let log_path = self.log_path();
        let stdio_path = self.stdio_path();
        let offsets = (file_len(&log_path), file_len(&stdio_path));
        let stdio = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .expect("failed to create the redis-server stdio file");
        let stdio_clone = stdio.try_clone().expect("failed to clone the redis-server stdio file");
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log_path)
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(stdio_clone)
            .stderr(stdio);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("{NOT_FOUND_MSG}"),
            Err(e) => panic!("failed to spawn {REDIS_SERVER}: {e}"),
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let log = self.output_since(offsets);
                    if log.contains("Address already in use") {
                        return Err(AddrInUse);
                    }
                    self.log_shown.store(true, Ordering::Relaxed);
                    panic!("redis-server on port {} exited during startup ({status}); log:\n{log}", self.port);
                }
                Err(e) => {
                    kill_and_reap(&mut child);
                    panic!("failed to poll redis-server on port {}: {e}", self.port);
                }
            }
            let last_err = match self.probe(child.id()) {
                Ok(()) => return Ok(child),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                self.log_shown.store(true, Ordering::Relaxed);
                panic!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?} \
                     (last error: {last_err}); log:\n{}",
                    self.port,
                    self.output_since(offsets)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// One readiness probe: `PING` must answer `PONG`, and the answering
    /// server must be our child (not another process that won the port).
    fn probe(&self, pid: u32) -> Result<(), String> {
        let mut con = self.try_admin_conn(PROBE_TIMEOUT).map_err(|e| e.to_string())?;
        let pong: String = redis::cmd("PING").query(&mut con).map_err(|e| e.to_string())?;
        if pong != "PONG" {
            return Err(format!("PING answered {pong:?}"));
        }
        let info: String = redis::cmd("INFO").arg("server").query(&mut con).map_err(|e| e.to_string())?;
        let server_pid =
            info.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|p| p.trim().parse::<u32>().ok());
        if server_pid != Some(pid) {
            return Err(format!("port {} is served by pid {server_pid:?}, not by our child {pid}", self.port));
        }
        Ok(())
    }

    fn try_admin_conn(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        let info = self.url().into_connection_info()?;
        let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
        if let Some(pw) = &self.password {
            settings = settings.set_password(pw);
        }
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let con = client.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }

    /// Log file and stdout/stderr written since the given `(log, stdio)`
    /// offsets, i.e. by the latest incarnation.
    fn output_since(&self, (log_offset, stdio_offset): (u64, u64)) -> String {
        with_stdio(read_from(&self.log_path(), log_offset), &read_from(&self.stdio_path(), stdio_offset))
    }

    /// The last `lines` lines of the log file, plus any stdout/stderr output.
    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        with_stdio(tail, &read_from(&self.stdio_path(), 0))
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([sig, pid.as_str()])
            .status()
            .unwrap_or_else(|e| panic!("failed to run `kill {sig} {pid}`: {e}"));
        assert!(status.success(), "`kill {sig} {pid}` failed: {status}");
    }

    fn fail(&self, what: &str) -> ! {
        self.log_shown.store(true, Ordering::Relaxed);
        panic!(
            "redis-server on port {}: {what}; log (last {LOG_TAIL_LINES} lines):\n{}",
            self.port,
            self.log_tail(LOG_TAIL_LINES)
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if thread::panicking() && !self.log_shown.load(Ordering::Relaxed) {
            eprintln!(
                "---- redis-server on port {} log (last {LOG_TAIL_LINES} lines) ----\n{}\n\
                 ---- end of redis-server on port {} log ----",
                self.port,
                self.log_tail(LOG_TAIL_LINES),
                self.port
            );
        }
        self.stop();
        // `self.dir` (TempDir) removes the directory when dropped after this.
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("failed to find a free port on 127.0.0.1")
        .port()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Contents of `path` from byte `offset` on ("" if missing).
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn with_stdio(mut log: String, stdio: &str) -> String {
    if !stdio.trim().is_empty() {
        log.push_str("\n---- redis-server stdout/stderr ----\n");
        log.push_str(stdio.trim_end());
    }
    log
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_ascii_lowercase(), calls))
        })
        .collect()
}
