//! [`RedisServer`]: one `redis-server` child process.
//!
//! Its stdout/stderr go to a file next to the log (not the console); both are
//! included in startup-failure messages and printed when a server is dropped during
//! a panic. Servers are independent of each other, so tests in one binary can run in
//! parallel, each with its own server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;

use crate::builder::{Dir, ServerBuilder, StartError};
use crate::launch::{self, Launch};
use crate::tls::TlsFiles;

/// How long `restart` keeps retrying when its port is still in use.
const RESTART_BIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect/read/write timeout of the harness's own connections.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout of [`RedisServer::conn`].
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of log printed when a server is dropped during a panic.
pub(crate) const LOG_TAIL_LINES: usize = 100;
/// Commands the harness itself sends (`info`, `reset_stats`); not counted by
/// [`RedisServer::total_calls`].
const HARNESS_COMMANDS: &[&str] = &["info", "config|resetstat"];

/// A `redis-server` child process owned by one test (or benchmark, or example).
pub struct RedisServer {
    pub(crate) child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) setup: ServerBuilder,
    pub(crate) password: Option<String>,
    pub(crate) dir: Dir,
    pub(crate) tls: Option<TlsFiles>,
    /// Set once an error or panic message already contains the log, so that `Drop`
    /// does not print it a second time.
    pub(crate) log_shown: AtomicBool,
}

impl RedisServer {
    /// Starts a server with the default settings (no persistence, no password) and
    /// waits until it answers `PING`.
    ///
    /// Panics if `redis-server` is not on `PATH` (saying how to install it), or if the
    /// server exits or does not become ready (the panic message includes its log).
    pub fn start() -> RedisServer {
        Self::builder().start()
    }

    /// Starts a server with `extra_args` appended to the harness's own arguments
    /// (`--port`, `--bind 127.0.0.1`, `--save ""`, `--dir`, `--logfile`,
    /// `--daemonize no`, `--protected-mode no`), e.g.
    /// `&["--appendonly", "yes", "--appendfsync", "always"]` or
    /// `&["--requirepass", "s3cret"]`. Waits until it answers `PING`.
    ///
    /// If `--requirepass PW` is among the arguments, the harness's own connections
    /// ([`admin_conn`](Self::admin_conn), [`info`](Self::info), ...) authenticate with
    /// `PW`; [`client`](Self::client) and [`conn`](Self::conn) never do.
    ///
    /// Panics as [`start`](Self::start) does.
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        Self::builder().args(extra_args).start()
    }

    /// A [`ServerBuilder`]: extra arguments, a given directory, TLS; then
    /// [`start`](ServerBuilder::start) or [`try_start`](ServerBuilder::try_start).
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The TCP port the server listens on (kept across [`restart`](Self::restart));
    /// its TLS port when it was started with [`ServerBuilder::tls`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/` (no credentials); `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/", self.scheme(), self.port)
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/` (`rediss://` for a TLS server).
    pub fn url_with_password(&self, password: &str) -> String {
        format!("{}://:{password}@127.0.0.1:{}/", self.scheme(), self.port)
    }

    /// The certificates of a TLS server ([`ServerBuilder::tls`]); `None` otherwise.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The `--requirepass` value it was started with, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A client for test assertions (unauthenticated): [`url`](Self::url), or, for a
    /// TLS server, its Unix socket (the harness needs no TLS client of its own).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.plain_url()).expect("harness URL is valid")
    }

    /// A fresh, unauthenticated connection for test assertions, e.g.
    /// `redis::cmd("GET").arg(k).query::<Option<String>>(&mut server.conn())`.
    /// Panics (with the server log) if the server cannot be reached.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(CONN_TIMEOUT)
            .unwrap_or_else(|e| self.fail(&format!("could not connect: {e}")))
    }

    /// A fresh connection as used by the harness itself: authenticated when the
    /// server has a password, does not send `CLIENT SETINFO`, and has 10 s
    /// connect/read/write timeouts (so it cannot hang on a paused server).
    pub fn admin_conn(&self) -> redis::Connection {
        self.try_admin_conn(ADMIN_TIMEOUT)
            .unwrap_or_else(|e| self.fail(&format!("could not open admin connection: {e}")))
    }

    /// [`admin_conn`](Self::admin_conn) with `timeout` for connect, read and write,
    /// returning the error instead of panicking (for fault injection, where the
    /// server may be away).
    pub fn try_admin_conn(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        let info = self.plain_url().into_connection_info()?;
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

    /// The server's `--dir`: a temporary directory, or the one given to
    /// [`ServerBuilder::dir`].
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("redis.log")
    }

    /// Everything the server (all its incarnations) has logged so far.
    pub fn log(&self) -> String {
        launch::read_from(&self.log_path(), 0)
    }

    /// The last `lines` lines of the log file, plus any stdout/stderr output.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        launch::with_stdio(tail, &launch::read_from(&self.stdio_path(), 0))
    }

    /// Path of the file that receives the process's stdout/stderr (normally empty;
    /// `redis-server` reports command-line/config errors there, before it opens its
    /// log file).
    pub fn stdio_path(&self) -> PathBuf {
        self.dir().join("redis.stdio")
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
            launch::kill_and_reap(&mut child);
        }
    }

    /// Starts the server again on the same port, with the same directory and
    /// arguments (stopping it first if it is running), and waits until it answers
    /// `PING`. Retries for up to 5 s while the port is still in use. Panics (with the
    /// log) when it cannot.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// [`restart`](Self::restart), returning the error instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), StartError> {
        self.stop();
        let deadline = Instant::now() + RESTART_BIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(child) => {
                    self.child = Some(child);
                    return self.after_launch();
                }
                Err(Launch::Failed(message)) => return Err(self.error(message)),
                Err(Launch::AddrInUse) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(Launch::AddrInUse) => {
                    return Err(self.error(format!(
                        "redis-server could not re-bind port {} within {RESTART_BIND_TIMEOUT:?}; log:\n{}",
                        self.port,
                        self.log_tail(LOG_TAIL_LINES)
                    )));
                }
            }
        }
    }

    /// Freezes the server process (SIGSTOP): connections stay open but nothing is
    /// answered until [`resume`](Self::resume).
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

    /// `calls` of every command in `INFO commandstats`, keyed by the name after
    /// `cmdstat_` (lower case; subcommands look like `client|setinfo`).
    pub fn command_stats(&self) -> BTreeMap<String, u64> {
        parse_commandstats(&self.info("commandstats"))
    }

    /// How many times `cmd_name` (case-insensitive, e.g. `"evalsha"`, `"set"`,
    /// `"client|setinfo"`) was executed since the last stats reset; 0 if never.
    pub fn command_calls(&self, cmd_name: &str) -> u64 {
        self.command_stats().get(&cmd_name.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// Sum of `calls` over all commands since the last stats reset, except the
    /// harness's own bookkeeping commands (`info`, `config|resetstat`). Note: on a
    /// password-protected server every harness query also sends one `AUTH`, which is
    /// counted.
    pub fn total_calls(&self) -> u64 {
        self.command_stats()
            .iter()
            .filter(|(name, _)| !HARNESS_COMMANDS.contains(&name.as_str()))
            .map(|(_, calls)| calls)
            .sum()
    }

    /// `CONFIG RESETSTAT`. Also done automatically once the server is ready after
    /// [`start`](Self::start)/[`restart`](Self::restart), so the readiness `PING` is
    /// not counted (not for a Sentinel, which has no `CONFIG`).
    pub fn reset_stats(&self) {
        if let Err(e) = self.try_reset_stats() {
            self.fail(&format!("CONFIG RESETSTAT failed: {e}"));
        }
    }

    // ---- internals ----

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "rediss" } else { "redis" }
    }

    /// What the harness and [`client`](Self::client) connect to: the TCP port, or a
    /// TLS server's Unix socket.
    pub(crate) fn plain_url(&self) -> String {
        match &self.tls {
            Some(_) => format!("redis+unix://{}", launch::socket_path(self.dir()).display()),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    fn try_reset_stats(&self) -> redis::RedisResult<()> {
        redis::cmd("CONFIG").arg("RESETSTAT").query(&mut self.try_admin_conn(ADMIN_TIMEOUT)?)
    }

    /// After a successful launch: the stats start at zero (not for a Sentinel).
    pub(crate) fn after_launch(&self) -> Result<(), StartError> {
        if self.setup.is_sentinel() {
            return Ok(());
        }
        self.try_reset_stats().map_err(|e| {
            self.error(format!(
                "redis-server on port {}: CONFIG RESETSTAT failed: {e}; log:\n{}",
                self.port,
                self.log_tail(LOG_TAIL_LINES)
            ))
        })
    }

    /// An error whose message already holds the log (so `Drop` does not repeat it).
    pub(crate) fn error(&self, message: String) -> StartError {
        self.log_shown.store(true, Ordering::Relaxed);
        StartError(message)
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([sig, pid.as_str()])
            .status()
            .unwrap_or_else(|e| panic!("failed to run `kill {sig} {pid}`: {e}"));
        assert!(status.success(), "`kill {sig} {pid}` failed: {status}");
    }

    pub(crate) fn fail(&self, what: &str) -> ! {
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
        // A temporary `self.dir` removes the directory when dropped after this.
    }
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
