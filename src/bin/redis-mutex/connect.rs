//! From the connection options to a `LockClient`: one server (`--url`, `$REDIS_URL`,
//! the default), a master found through Sentinel (`--sentinel` with the Sentinels'
//! `--url`s), a cluster (`--cluster` with its nodes' `--url`s), or Redlock masters
//! (`--redlock` with a `--url` each); TLS certificates
//! (`--tls-ca`, `--tls-cert`, `--tls-key`) for `rediss://` URLs.

use redis_mutex::{LockClient, LockClientBuilder};

use crate::args::Connection;
use crate::exit::Failure;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";
const URL_ENV: &str = "REDIS_URL";
const MASTER_PASSWORD_ENV: &str = "REDIS_MUTEX_MASTER_PASSWORD";

/// Connects (the library checks the server with a `PING` within its connect and read
/// timeouts, 2 s and 3 s), or says what went wrong and where the URL came from, never
/// showing a password.
pub fn client(c: &Connection) -> Result<LockClient, Failure> {
    // One command at a time, and the watchdog's renewals: two pooled connections are
    // plenty, and a release retried on each of them stays short when Redis hangs.
    let mut builder = LockClient::builder().pool_max_size(2);
    if let Some(prefix) = &c.prefix {
        builder = builder.key_prefix(prefix);
    }
    if let Some(ca) = &c.tls_ca {
        builder = builder.tls_root_cert(read(ca, "--tls-ca")?);
    }
    if let (Some(cert), Some(key)) = (&c.tls_cert, &c.tls_key) {
        builder = builder.tls_client_cert(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
    }
    match &c.sentinel {
        None if c.cluster => cluster(c, builder),
        None if c.redlock => redlock(c, builder),
        None => single(c, builder),
        Some(master) => sentinel(c, master, builder),
    }
}

/// The contents of a certificate or key file (not shown in any message).
fn read(path: &std::path::Path, option: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::usage(format!("cannot read {option} {}: {e}", path.display())))
}

fn redlock(c: &Connection, builder: LockClientBuilder) -> Result<LockClient, Failure> {
    if c.urls.len() < 3 {
        return Err(Failure::usage("--redlock needs the masters' addresses: give --url for each (3, 5, ...)"));
    }
    builder.build_redlock(&c.urls).map_err(|e| Failure::from_error("locking with Redlock on the masters of --url", &e))
}

fn cluster(c: &Connection, builder: LockClientBuilder) -> Result<LockClient, Failure> {
    if c.urls.is_empty() {
        return Err(Failure::usage("--cluster needs the addresses of some of its nodes: give --url for each"));
    }
    builder.build_cluster(&c.urls).map_err(|e| Failure::from_error("connecting to the cluster of --url", &e))
}

fn single(c: &Connection, builder: LockClientBuilder) -> Result<LockClient, Failure> {
    let (url, from) = match c.urls.as_slice() {
        [url] => (url.clone(), "the Redis of --url".to_owned()),
        [] => match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => (url, format!("the Redis of ${URL_ENV}")),
            _ => (DEFAULT_URL.to_owned(), format!("{DEFAULT_URL} (the default: set --url or ${URL_ENV})")),
        },
        _ => {
            return Err(Failure::usage(
                "several --url are for --sentinel (one per Sentinel); give one Redis URL, or add --sentinel MASTER",
            ));
        }
    };
    builder.build(&url).map_err(|e| Failure::from_error(&format!("connecting to {from}"), &e))
}

fn sentinel(c: &Connection, master: &str, mut builder: LockClientBuilder) -> Result<LockClient, Failure> {
    if c.urls.is_empty() {
        return Err(Failure::usage("--sentinel needs the Sentinels' addresses: give --url once for each Sentinel"));
    }
    if let Some(user) = &c.master_user {
        builder = builder.master_username(user);
    }
    if let Some(db) = c.master_db {
        builder = builder.master_db(db);
    }
    if let Some(password) = std::env::var_os(MASTER_PASSWORD_ENV).filter(|p| !p.is_empty()) {
        let Some(password) = password.to_str() else {
            return Err(Failure::usage(format!("${MASTER_PASSWORD_ENV} is not valid UTF-8")));
        };
        builder = builder.master_password(password);
    }
    builder
        .build_sentinel(master, &c.urls)
        .map_err(|e| Failure::from_error(&format!("finding master {master:?} through the Sentinels of --url"), &e))
}
