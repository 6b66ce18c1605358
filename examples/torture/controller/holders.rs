//! Who holds a lock, and whether anyone waits for it, as the servers say, per kind of
//! lock: a mutex names its holder's client in its hash (`c`; on Redlock, the client a
//! quorum of masters names); a read-write lock or semaphore keeps only owner tokens,
//! which the workers map to their client ids on the data server (`owner_key`).

use super::super::config::LockKind;
use super::super::worker::{lock_key, owner_key};
use super::{ADMIN_TIMEOUT, Controller, Servers, cluster};

/// The live owner tokens of a read-write lock or semaphore (readers or permits whose
/// lease has not ended by the server's clock, and the writer), and its queue.
/// KEYS: the holders zset, the state hash (`shared.lua` in the crate). Writes nothing.
const LIVE_TOKENS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
local f = redis.call('HMGET', KEYS[2], 'wo', 'we', 'q')
if f[1] and f[1] ~= '' and tonumber(f[2] or '0') > now then live[#live + 1] = f[1] end
return {live, f[3] or ''}
";

/// Who holds a lock now.
#[derive(Debug, Default)]
pub struct LockState {
    /// The client ids of its holders (one for a mutex; readers and permits many).
    pub clients: Vec<String>,
    /// Someone waits for it (its queue is not empty).
    pub waited: bool,
}

impl Controller {
    /// Lock `k` as its server sees it now; `None` when it cannot be read.
    pub(super) fn lock_state(&self, k: usize) -> Option<LockState> {
        let (tokens, queue): (Vec<String>, String) = match self.cfg.lock {
            LockKind::Mutex => {
                if let Servers::Redlock { .. } = &self.servers {
                    return Some(LockState { clients: self.redlock_holder(k).into_iter().collect(), waited: false });
                }
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(lock_key(k)).arg("c").arg("q");
                let (c, q): (Option<String>, Option<String>) = self.on_lock(k, &cmd)?;
                return Some(LockState { clients: c.into_iter().collect(), waited: q.is_some_and(|q| !q.is_empty()) });
            }
            LockKind::RwLock | LockKind::Semaphore => {
                let holders =
                    format!("{}:{}", lock_key(k), if self.cfg.lock == LockKind::RwLock { "rw" } else { "sem" });
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(LIVE_TOKENS).arg(2).arg(&holders).arg(format!("{holders}:s"));
                self.on_lock(k, &cmd)?
            }
        };
        let waited = !queue.is_empty();
        if tokens.is_empty() {
            return Some(LockState { clients: Vec::new(), waited });
        }
        let mut con = self.servers.data().try_admin_conn(ADMIN_TIMEOUT).ok()?;
        let mut mget = redis::cmd("MGET");
        for t in &tokens {
            mget.arg(owner_key(t));
        }
        let mut clients: Vec<String> =
            mget.query::<Vec<Option<String>>>(&mut con).ok()?.into_iter().flatten().collect();
        clients.sort();
        clients.dedup();
        Some(LockState { clients, waited })
    }

    /// The client ids holding lock `k` now (none when it cannot be read).
    pub(super) fn lock_clients(&self, k: usize) -> Vec<String> {
        self.lock_state(k).map(|s| s.clients).unwrap_or_default()
    }

    /// `cmd` about lock `k`'s keys, on the server that serves them (not on Redlock).
    fn on_lock<T: redis::FromRedisValue>(&self, k: usize, cmd: &redis::Cmd) -> Option<T> {
        match &self.servers {
            Servers::Cluster { cluster, slots, .. } => cluster::on_owner(cluster, slots[k], cmd).ok(),
            _ => cmd.query(&mut self.servers.locks()?.try_admin_conn(ADMIN_TIMEOUT).ok()?).ok(),
        }
    }
}
