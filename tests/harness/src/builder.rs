//! [`ServerBuilder`]: how a [`RedisServer`] starts.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use tempfile::TempDir;

use crate::launch::Launch;
use crate::server::{LOG_TAIL_LINES, RedisServer};
use crate::tls::TlsFiles;
use crate::{ports, tls};

/// How many free ports `start` tries before giving up.
const START_ATTEMPTS: usize = 5;

/// How to start a [`RedisServer`]: extra arguments, its directory, TLS. Cheap to
/// clone; one builder can start many servers (each in its own temporary directory).
///
/// ```no_run
/// use redis_mutex_harness::RedisServer;
///
/// let server = RedisServer::builder().args(&["--appendonly", "yes"]).start();
/// let tls = RedisServer::builder().tls().start(); // rediss://, certificates in tls.tls()
/// ```
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    args: Vec<String>,
    dir: Option<PathBuf>,
    tls: Option<ClientCerts>,
    /// Certificates to serve TLS with, shared with other servers (else made anew).
    tls_files: Option<TlsFiles>,
    role: Role,
}

/// Whether a TLS server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientCerts {
    NotAsked,
    Required,
}

#[derive(Debug, Clone, Default)]
pub(crate) enum Role {
    #[default]
    Plain,
    /// `--cluster-enabled yes`, on a port whose bus port (+10000) is free too.
    ClusterNode,
    /// `redis-server sentinel.conf --sentinel`, with this configuration.
    Sentinel(String),
}

impl ServerBuilder {
    /// Appends one argument to `redis-server`'s command line (after the harness's
    /// own, so it can override them).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments, e.g. `&["--appendonly", "yes"]` or `&["--requirepass",
    /// "pw"]` (the harness's own connections then authenticate with it).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs the server in `dir` (which must exist) instead of a temporary directory.
    /// The directory and what the server wrote there (log, AOF) stay after the server
    /// is dropped: for a program that keeps its run's files for a post-mortem.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Serves TLS only (`--port 0 --tls-port PORT`), with a CA, a server certificate
    /// for `127.0.0.1` and `localhost`, and a client certificate made by `openssl` in
    /// the server's directory ([`RedisServer::tls`]). Clients are not asked for a
    /// certificate; see [`mutual_tls`](Self::mutual_tls). [`RedisServer::url`] is then
    /// `rediss://`; the harness's own connections and [`RedisServer::conn`] use a Unix
    /// socket in the server's directory. Starting fails, saying how to install it,
    /// when `openssl` is not on `PATH`.
    pub fn tls(mut self) -> Self {
        self.tls = Some(ClientCerts::NotAsked);
        self
    }

    /// [`tls`](Self::tls), and clients must present a certificate signed by the CA
    /// (`--tls-auth-clients yes`): [`TlsFiles::client_cert`](crate::TlsFiles).
    pub fn mutual_tls(mut self) -> Self {
        self.tls = Some(ClientCerts::Required);
        self
    }

    /// [`tls`](Self::tls), with these certificates instead of new ones: servers that
    /// must trust each other (a master, its replicas with `--tls-replication yes`, the
    /// Sentinels watching them) share one CA ([`TlsFiles::generate`]).
    pub fn tls_with(mut self, files: TlsFiles) -> Self {
        self.tls = Some(ClientCerts::NotAsked);
        self.tls_files = Some(files);
        self
    }

    pub(crate) fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    pub(crate) fn given_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// One server of a group started from this builder: with a directory, in its
    /// subdirectory `name` (created; it stays, for a post-mortem), else as is. Panics
    /// when the subdirectory cannot be created.
    pub(crate) fn in_subdir(&self, name: &str) -> ServerBuilder {
        let mut builder = self.clone();
        if let Some(parent) = &self.dir {
            let dir = parent.join(name);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            builder.dir = Some(dir);
        }
        builder
    }

    pub(crate) fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The certificates given with [`tls_with`](Self::tls_with).
    pub(crate) fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls_files.as_ref()
    }

    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self.role, Role::Sentinel(_))
    }

    pub(crate) fn is_cluster_node(&self) -> bool {
        matches!(self.role, Role::ClusterNode)
    }

    pub(crate) fn extra_args(&self) -> &[String] {
        &self.args
    }

    pub(crate) fn clients_need_certs(&self) -> bool {
        self.tls == Some(ClientCerts::Required)
    }

    /// Starts the server and waits until it answers `PING` (a TLS server: on its Unix
    /// socket; a Sentinel: as a Sentinel).
    ///
    /// Panics if `redis-server` (or, for TLS, `openssl`) is not on `PATH`, saying how
    /// to install it, or if the server exits or does not become ready (the message
    /// includes its log).
    pub fn start(&self) -> RedisServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), returning the error instead of panicking: for
    /// programs (examples, benchmarks) that report it themselves.
    pub fn try_start(&self) -> Result<RedisServer, StartError> {
        let password = self
            .args
            .windows(2)
            .rev()
            .find(|w| w[0].eq_ignore_ascii_case("--requirepass"))
            .map(|w| w[1].clone())
            .filter(|pw| !pw.is_empty());
        let dir = match &self.dir {
            Some(dir) => Dir::Given(dir.clone()),
            None => Dir::Temp(
                tempfile::Builder::new()
                    .prefix("redis-mutex-test-")
                    .tempdir()
                    .map_err(|e| StartError(format!("cannot create a temporary directory for redis-server: {e}")))?,
            ),
        };
        if let Role::Sentinel(config) = &self.role {
            let path = dir.path().join("sentinel.conf");
            fs::write(&path, config).map_err(|e| StartError(format!("cannot write {}: {e}", path.display())))?;
        }
        let tls = match (self.tls, &self.tls_files) {
            (Some(_), Some(files)) => Some(files.clone()),
            (Some(_), None) => Some(tls::generate(dir.path()).map_err(StartError)?),
            (None, _) => None,
        };
        let mut server = RedisServer {
            child: None,
            port: 0,
            setup: self.clone(),
            password,
            dir,
            tls,
            log_shown: AtomicBool::new(false),
        };
        for _ in 0..START_ATTEMPTS {
            let port = if self.is_cluster_node() { ports::free_cluster_port() } else { ports::free_port() };
            server.port = port.map_err(|e| StartError(format!("cannot find a free port on 127.0.0.1: {e}")))?;
            match server.launch() {
                Ok(child) => {
                    server.child = Some(child);
                    server.after_launch()?;
                    return Ok(server);
                }
                // Lost a race for the port with someone else: try another one.
                Err(Launch::AddrInUse) => {}
                Err(Launch::Failed(message)) => return Err(server.error(message)),
            }
        }
        Err(server.error(format!(
            "redis-server could not bind a free port in {START_ATTEMPTS} attempts; log:\n{}",
            server.log_tail(LOG_TAIL_LINES)
        )))
    }
}

/// A server that could not start; the message says why (and holds its log, or how to
/// install a missing program).
#[derive(Debug)]
pub struct StartError(pub(crate) String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A server's `--dir`.
pub(crate) enum Dir {
    /// Removed when the server is dropped.
    Temp(TempDir),
    /// The caller's ([`ServerBuilder::dir`]): kept.
    Given(PathBuf),
}

impl Dir {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Dir::Temp(dir) => dir.path(),
            Dir::Given(dir) => dir,
        }
    }
}
