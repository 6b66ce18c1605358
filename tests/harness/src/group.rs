//! What the launchers of server groups share: waiting for a condition that several
//! servers must reach, and reading `INFO` fields.

use std::thread;
use std::time::{Duration, Instant};

use crate::RedisServer;

/// How long a group gets to form (replication links, Sentinels finding each other,
/// cluster gossip) on a loaded machine.
pub(crate) const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Ok`; after `limit`, panics with its last reason and
/// the log tail of every server in `servers`.
pub(crate) fn wait_until(
    limit: Duration,
    what: &str,
    servers: &[&RedisServer],
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + limit;
    loop {
        let reason = match check() {
            Ok(()) => return,
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = servers
                .iter()
                .map(|s| {
                    s.log_shown.store(true, std::sync::atomic::Ordering::Relaxed);
                    format!("---- redis-server on port {} ----\n{}", s.port(), s.log_tail(30))
                })
                .collect();
            panic!("timed out after {limit:?} waiting for {what}: {reason}\n{}", logs.join("\n"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `field` in `INFO` text (`field:value` lines).
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
}

/// `cmd` on a fresh admin connection, as text for a reason to wait.
pub(crate) fn query<T: redis::FromRedisValue>(server: &RedisServer, cmd: &redis::Cmd) -> Result<T, String> {
    let mut con = server.try_admin_conn(Duration::from_secs(5)).map_err(|e| format!("port {}: {e}", server.port()))?;
    cmd.query(&mut con).map_err(|e| format!("port {}: {e}", server.port()))
}
