//! Spawning one `redis-server` incarnation and waiting until it is ready.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::server::RedisServer;

const REDIS_SERVER: &str = "redis-server";
pub(crate) const NOT_FOUND_MSG: &str = "redis-server not found on PATH: install it with \
     `apt-get update && apt-get install -y redis-server` (Debian/Ubuntu) or \
     `brew install redis` (macOS)";
/// How long a freshly spawned server gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Timeouts of a single readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// `cluster-node-timeout` of cluster nodes: failover tests wait for it, and a loaded
/// 2-core machine must not miss it by accident.
const CLUSTER_NODE_TIMEOUT_MS: &str = "5000";

/// Why one launch did not give a ready server.
pub(crate) enum Launch {
    /// The port was already taken (another one may work).
    AddrInUse,
    /// Anything else, described with the server's output.
    Failed(String),
}

/// The Unix socket of a TLS server (the harness's way in: it has no TLS client).
pub(crate) fn socket_path(dir: &Path) -> PathBuf {
    dir.join("redis.sock")
}

impl RedisServer {
    /// Spawns `redis-server` on `self.port` and waits until it answers.
    pub(crate) fn launch(&self) -> Result<Child, Launch> {
        let log_path = self.log_path();
        let stdio_path = self.stdio_path();
        let offsets = (file_len(&log_path), file_len(&stdio_path));
        let failed = |what: &str, e: io::Error| Launch::Failed(format!("{what} ({}): {e}", stdio_path.display()));
        let stdio = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .map_err(|e| failed("cannot create the redis-server stdio file", e))?;
        let stdio_clone = stdio.try_clone().map_err(|e| failed("cannot clone the redis-server stdio file", e))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(stdio_clone).stderr(stdio);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Launch::Failed(NOT_FOUND_MSG.into())),
            Err(e) => return Err(Launch::Failed(format!("failed to spawn {REDIS_SERVER}: {e}"))),
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let log = self.output_since(offsets);
                    if log.contains("Address already in use") {
                        return Err(Launch::AddrInUse);
                    }
                    return Err(Launch::Failed(format!(
                        "redis-server on port {} exited during startup ({status}); log:\n{log}",
                        self.port
                    )));
                }
                Err(e) => {
                    kill_and_reap(&mut child);
                    return Err(Launch::Failed(format!("failed to poll redis-server on port {}: {e}", self.port)));
                }
            }
            let last_err = match self.probe(child.id()) {
                Ok(()) => return Ok(child),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                return Err(Launch::Failed(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?} \
                     (last error: {last_err}); log:\n{}",
                    self.port,
                    self.output_since(offsets)
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// `redis-server [sentinel.conf] --port ... [role and TLS arguments] [extra args]`.
    fn command(&self) -> Command {
        let dir = self.dir();
        let mut cmd = Command::new(REDIS_SERVER);
        if self.setup.is_sentinel() {
            // The configuration file comes first; Sentinel rewrites it (its state).
            cmd.arg(dir.join("sentinel.conf"));
        }
        match &self.tls {
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.server_cert)
                    .arg("--tls-key-file")
                    .arg(&tls.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca_cert)
                    .args(["--tls-auth-clients", if self.setup.clients_need_certs() { "yes" } else { "no" }])
                    .arg("--unixsocket")
                    .arg(socket_path(dir))
                    .args(["--unixsocketperm", "700"]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--daemonize", "no", "--protected-mode", "no"]);
        if self.setup.is_cluster_node() {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", CLUSTER_NODE_TIMEOUT_MS])
                // Replicas sync at once, not after the default 5 s wait for more.
                .args(["--repl-diskless-sync-delay", "0"]);
        }
        if self.setup.is_sentinel() {
            cmd.arg("--sentinel");
        }
        cmd.args(self.setup.extra_args());
        cmd
    }

    /// One readiness probe: `PING` must answer `PONG`, and the answering server must
    /// be our child (not another process that won the port).
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

    /// Log file and stdout/stderr written since the given `(log, stdio)` offsets,
    /// i.e. by the latest incarnation.
    fn output_since(&self, (log_offset, stdio_offset): (u64, u64)) -> String {
        with_stdio(read_from(&self.log_path(), log_offset), &read_from(&self.stdio_path(), stdio_offset))
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Contents of `path` from byte `offset` on ("" if missing).
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

pub(crate) fn with_stdio(mut log: String, stdio: &str) -> String {
    if !stdio.trim().is_empty() {
        log.push_str("\n---- redis-server stdout/stderr ----\n");
        log.push_str(stdio.trim_end());
    }
    log
}

pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
