//! Redis's own counters around a run: `INFO commandstats`, `stats` and `cpu`.

use std::collections::BTreeMap;

/// Commands that reach a benchmark's server only from inside Lua scripts: those of
/// redis-mutex's scripts, rlock's release/renew, redisson's lock/unlock, and the
/// owner-checked release of redlock and the polling loops (`SPUBLISH`: redis-mutex's
/// scripts on a cluster, whose clients send `SSUBSCRIBE` themselves). `SET` is not here: rlock,
/// redlock and the polling loops send it themselves (rlock's script SET is its
/// multi-key path, unused here).
const SCRIPT_ONLY: &[&str] = &[
    "hmget", "hset", "hget", "hexists", "exists", "pexpire", "pttl", "incr", "del", "get", "publish", "spublish",
    "type", "hincrby", "hdel", "hlen", "time",
];

/// The same for sorted sets: redis-mutex's read-write lock and semaphore scripts, and
/// rlock's read-write lock scripts, use them; nothing in the benchmarks sends them.
const SCRIPT_ONLY_ZSET: &[&str] = &["zadd", "zrem", "zscore", "zcard", "zrange", "zcount", "zremrangebyscore"];

/// Server-side counters at one moment (or, after [`delta`](Snap::delta), over a run).
#[derive(Clone, Debug, Default)]
pub struct Snap {
    /// Commands received from clients (script-internal calls left out).
    pub top: f64,
    /// Every `INFO commandstats` call, script-internal ones included.
    pub all: f64,
    /// PING calls.
    pub pings: f64,
    /// `total_connections_received`.
    pub conns: f64,
    /// Redis CPU seconds (user + sys).
    pub cpu: f64,
    /// Calls of each command.
    pub each: BTreeMap<String, f64>,
    /// CPU microseconds each command's calls took (`usec` of `INFO commandstats`; a
    /// script's includes the commands it called, which are listed too).
    pub usec: BTreeMap<String, f64>,
}

/// Whether `command` (an `INFO commandstats` name) reaches a benchmark's server only
/// from inside Lua scripts (see `SCRIPT_ONLY`).
pub fn script_only(command: &str) -> bool {
    SCRIPT_ONLY.contains(&command)
}

impl Snap {
    /// Reads `INFO commandstats`, `stats` and `cpu`; the benchmark's own `INFO` and
    /// `CONFIG` calls are left out.
    pub fn take(con: &mut redis::Connection) -> Snap {
        let mut s = Snap::default();
        for l in info(con, "commandstats").lines() {
            let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            if name == "info" || name.starts_with("config") {
                continue;
            }
            let field = |name: &str| -> f64 {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            };
            let n = field("calls");
            s.usec.insert(name.to_owned(), field("usec"));
            s.all += n;
            if !SCRIPT_ONLY.contains(&name) && !SCRIPT_ONLY_ZSET.contains(&name) {
                s.top += n;
            }
            if name == "ping" {
                s.pings += n;
            }
            s.each.insert(name.to_owned(), n);
        }
        s.conns = info_field(&info(con, "stats"), "total_connections_received");
        let cpu = info(con, "cpu");
        s.cpu = info_field(&cpu, "used_cpu_sys") + info_field(&cpu, "used_cpu_user");
        s
    }

    /// `later - self`, less `own_pings` PINGs the benchmark sent itself.
    pub fn delta(&self, later: &Snap, own_pings: f64) -> Snap {
        let mut each: BTreeMap<String, f64> =
            later.each.iter().map(|(k, v)| (k.clone(), v - self.each.get(k).copied().unwrap_or(0.0))).collect();
        if let Some(p) = each.get_mut("ping") {
            *p -= own_pings;
        }
        let usec = later.usec.iter().map(|(k, v)| (k.clone(), v - self.usec.get(k).copied().unwrap_or(0.0))).collect();
        Snap {
            top: later.top - self.top - own_pings,
            all: later.all - self.all - own_pings,
            pings: later.pings - self.pings - own_pings,
            conns: later.conns - self.conns,
            cpu: later.cpu - self.cpu,
            each,
            usec,
        }
    }

    /// The sum of several servers' counters (a cluster's nodes).
    pub fn sum(snaps: &[Snap]) -> Snap {
        let mut total = Snap::default();
        for s in snaps {
            total.top += s.top;
            total.all += s.all;
            total.pings += s.pings;
            total.conns += s.conns;
            total.cpu += s.cpu;
            for (k, v) in &s.each {
                *total.each.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &s.usec {
                *total.usec.entry(k.clone()).or_default() += v;
            }
        }
        total
    }
}

fn info(con: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).unwrap()
}

fn info_field(text: &str, field: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `redis_version` of the server behind `con`.
pub fn server_version(con: &mut redis::Connection) -> String {
    let s = info(con, "server");
    s.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_owned()
}
