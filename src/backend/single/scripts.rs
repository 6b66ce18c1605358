//! The Lua scripts of DESIGN §2 (`lua/`), the calls that run them and the replies they
//! give: the Redis protocol of one lock, apart from the connections it runs on. The
//! floor of `benches/micro.rs` builds its calls here too, so that a script change
//! cannot leave it sending stale arguments.

use std::time::Duration;

use redis::{Pipeline, Script, ScriptInvocation, Value};

use crate::backend::{Attempt, AttemptArgs, ReleaseArgs, Released, Renewal};
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::keys::LockKeys;

/// The scripts, hashed once (`EVALSHA`, reloaded on `NOSCRIPT` by redis-rs's
/// `invoke`).
pub(crate) struct Scripts {
    acquire: Script,
    release: Script,
    extend: Script,
    force_unlock: Script,
    leave: Script,
}

/// The reply `{a, b}` of our scripts.
fn pair(v: &Value, operation: &'static str) -> Result<(i64, i64)> {
    match ints(v, operation)?.as_slice() {
        [a, b] => Ok((*a, *b)),
        _ => Err(unexpected(operation, v)),
    }
}

/// A reply that is an array of integers.
fn ints(v: &Value, operation: &'static str) -> Result<Vec<i64>> {
    let Value::Array(items) = v else { return Err(unexpected(operation, v)) };
    items.iter().map(|i| if let Value::Int(n) = i { Ok(*n) } else { Err(unexpected(operation, v)) }).collect()
}

fn unexpected(operation: &'static str, v: &Value) -> Error {
    Error::UnexpectedReply { operation, reply: format!("{v:?}") }
}

fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

fn millis(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            acquire: Script::new(concat!(
                include_str!("lua/queue.lua"),
                include_str!("lua/fence.lua"),
                include_str!("lua/acquire.lua")
            )),
            release: Script::new(concat!(
                include_str!("lua/queue.lua"),
                include_str!("lua/fence.lua"),
                include_str!("lua/release.lua")
            )),
            leave: Script::new(concat!(include_str!("lua/queue.lua"), include_str!("lua/leave.lua"))),
            extend: Script::new(include_str!("lua/extend.lua")),
            force_unlock: Script::new(include_str!("lua/force_unlock.lua")),
        }
    }

    /// `acquire.lua` for one attempt by client `client_id`.
    pub fn attempt(&self, keys: &LockKeys, a: &AttemptArgs<'_>, client_id: &str) -> ScriptInvocation<'_> {
        let mut inv = self.acquire.prepare_invoke();
        inv.key(&keys.key)
            .key(&keys.fence)
            .arg(a.token)
            .arg(a.lease_ms)
            .arg(a.fence_span)
            .arg(client_id)
            .arg(flag(a.will_wait));
        inv
    }

    pub fn attempt_reply(v: &Value) -> Result<Attempt> {
        match pair(v, "acquire")? {
            (1, fence) => Ok(Attempt::Acquired { fence: fence.max(0) as u64 }),
            (0, pttl) => Ok(Attempt::Held { remaining: millis(pttl) }),
            (2, pttl) => Ok(Attempt::Reserved { remaining: millis(pttl) }),
            _ => Err(unexpected("acquire", v)),
        }
    }

    /// `release.lua` for one release by client `client_id`, whose passes reserve the
    /// lock for `reservation_ms`.
    pub fn release(
        &self,
        keys: &LockKeys,
        a: &ReleaseArgs<'_>,
        client_id: &str,
        reservation_ms: u64,
    ) -> ScriptInvocation<'_> {
        let mut inv = self.release.prepare_invoke();
        inv.key(&keys.key).key(&keys.fence).arg(a.token).arg(client_id);
        match a.handoff {
            Some(t) => inv.arg(&t.token).arg(t.lease_ms).arg(if t.fencing { a.fence_span } else { 0 }),
            None => inv.arg("").arg(0).arg(0),
        };
        inv.arg(a.limit).arg(reservation_ms).arg(a.lease_ms).arg(a.local_handoffs);
        inv
    }

    pub fn release_reply(v: &Value) -> Result<Released> {
        match ints(v, "release")?.as_slice() {
            // After a retry this may also mean the first try ran before its connection
            // broke. Reporting a loss that did not happen is the safe mistake; the
            // other would hide a lease that ran out.
            [0, _] => Ok(Released::NotOwner),
            [1, _] => Ok(Released::Deleted),
            [2, fence, turn] => Ok(Released::Handed {
                fence: (*fence).max(0) as u64,
                turn: u32::try_from(*turn).map_err(|_| unexpected("release", v))?,
            }),
            [3, _] => Ok(Released::Passed),
            _ => Err(unexpected("release", v)),
        }
    }

    /// `leave.lua` for client `client_id`.
    pub fn leave(&self, keys: &LockKeys, client_id: &str, reservation_ms: u64) -> ScriptInvocation<'_> {
        let mut inv = self.leave.prepare_invoke();
        inv.key(&keys.key).arg(client_id).arg(reservation_ms);
        inv
    }

    /// One pipeline of `extend.lua` calls, whose replies are read one by one: one lock's
    /// error (WRONGTYPE where someone wrote over its key) must not fail the renewal of
    /// the others in the batch.
    pub fn extend(&self, items: &[Renewal<'_>]) -> Pipeline {
        let hash = self.extend.get_hash();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (keys, token, lease_ms) in items {
            pipe.cmd("EVALSHA").arg(hash).arg(1).arg(&keys.key).arg(*token).arg(*lease_ms);
        }
        pipe
    }

    /// Loads `extend.lua` (after a `NOSCRIPT` in its pipeline).
    pub fn load_extend(&self, con: &mut redis::Connection) -> redis::RedisResult<String> {
        self.extend.load(con)
    }

    pub fn force_unlock(&self, keys: &LockKeys) -> ScriptInvocation<'_> {
        let mut inv = self.force_unlock.prepare_invoke();
        inv.key(&keys.key);
        inv
    }

    /// `holder` is two reads in one pipeline, no script.
    pub fn holder(keys: &LockKeys) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&keys.key).arg("o").arg("w").arg("q").cmd("PTTL").arg(&keys.key);
        pipe
    }

    pub fn holder_reply(fields: (Option<String>, Option<String>, Option<String>), pttl: i64) -> Option<Holder> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        let contended = set(&fields.1) || set(&fields.2);
        // A lock passed to a waiting client is free (`o` empty) until that client takes it.
        fields.0.filter(|t| !t.is_empty()).map(|token| Holder { token, remaining_lease: millis(pttl), contended })
    }
}
