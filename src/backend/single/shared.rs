//! Read-write locks and semaphores on one server (and so on a Sentinel master or a
//! cluster's slot owner: every script's keys share the lock's hash tag): the scripts
//! `lua/shared*.lua`, the calls that run them and their replies. Renewals are in the
//! watchdog's batches (`Scripts::extend`, which picks `shared_extend.lua` by the keys'
//! kind).

use std::time::Duration;

use redis::{Script, ScriptInvocation, Value};

use super::SingleServer;
use crate::backend::{LocalGrants, SharedArgs, SharedAttempt, SharedBackend, SharedLeave, Side};
use crate::error::{Error, Result};
use crate::keys::LockKeys;

/// The scripts, hashed once (`EVALSHA`, reloaded on `NOSCRIPT` by redis-rs's `invoke`).
pub(crate) struct SharedScripts {
    acquire: Script,
    release: Script,
    leave: Script,
    read: Script,
}

/// `shared.lua`'s helpers before `body`.
macro_rules! with_helpers {
    ($body:literal) => {
        Script::new(concat!(include_str!("lua/shared.lua"), include_str!($body)))
    };
}

impl SharedScripts {
    pub fn new() -> SharedScripts {
        SharedScripts {
            acquire: with_helpers!("lua/shared_acquire.lua"),
            release: with_helpers!("lua/shared_release.lua"),
            leave: with_helpers!("lua/shared_leave.lua"),
            read: Script::new(include_str!("lua/shared_read.lua")),
        }
    }
}

fn unexpected(operation: &'static str, v: &Value) -> Error {
    Error::UnexpectedReply { operation, reply: format!("{v:?}") }
}

fn ints(v: &Value, operation: &'static str) -> Result<Vec<i64>> {
    let Value::Array(items) = v else { return Err(unexpected(operation, v)) };
    items.iter().map(|i| if let Value::Int(n) = i { Ok(*n) } else { Err(unexpected(operation, v)) }).collect()
}

/// A reply `{int..., token...}`: its first `head` integers, and the tokens after them
/// (grants to the caller's own client).
fn with_grants(v: &Value, head: usize, operation: &'static str) -> Result<(Vec<i64>, Vec<String>)> {
    let Value::Array(items) = v else { return Err(unexpected(operation, v)) };
    let (ints, tokens) = items.split_at(head.min(items.len()));
    let ints = ints.iter().map(|i| if let Value::Int(n) = i { Ok(*n) } else { Err(unexpected(operation, v)) });
    let tokens = tokens.iter().map(|t| match t {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| unexpected(operation, v)),
        _ => Err(unexpected(operation, v)),
    });
    Ok((ints.collect::<Result<_>>()?, tokens.collect::<Result<_>>()?))
}

/// The permit count `n` stored in Redis, as a `u32` (anything else is not ours).
fn count(n: i64, v: &Value) -> Result<u32> {
    u32::try_from(n).map_err(|_| unexpected("semaphore", v))
}

impl SingleServer {
    /// `script` on the lock's keys with the arguments `args` adds, on the server that
    /// holds them.
    fn run_shared(
        &self,
        keys: &LockKeys,
        script: &Script,
        deadline: Option<std::time::Instant>,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<Value> {
        let mut inv = script.prepare_invoke();
        inv.key(&keys.key).key(&keys.state);
        args(&mut inv);
        self.server.route.on_key(&keys.key, deadline, |c| inv.invoke::<Value>(c))
    }

    /// What a script about `keys` that may grant the lock needs to tell the grantees:
    /// the grant's lease, the channel prefix that addresses a client, the command that
    /// publishes.
    fn grant_args(&self, keys: &LockKeys) -> (u64, std::borrow::Cow<'_, str>, &'static str) {
        let channels = &self.server.channels;
        (self.server.grant_ms, channels.clients_of(&keys.name), channels.publish())
    }
}

impl SharedBackend for SingleServer {
    fn attempt(&self, keys: &LockKeys, a: SharedArgs<'_>) -> Result<(SharedAttempt, LocalGrants)> {
        if a.will_wait {
            self.server.listen_for(keys, a.deadline)?;
        }
        let (grant_ms, channels, publish) = self.grant_args(keys);
        let side = if a.side == Side::Exclusive { "w" } else { "r" };
        let will_wait = if a.will_wait { "1" } else { "0" };
        let v = self.run_shared(keys, &self.server.shared.acquire, a.deadline, |inv| {
            inv.arg(a.token).arg(a.lease_ms).arg(side).arg(a.permits).arg(&self.server.client_id);
            inv.arg(will_wait).arg(a.entry_ms).arg(grant_ms).arg(&*channels).arg(&*keys.name).arg(publish);
        })?;
        let (head, tokens) = with_grants(&v, 3, "acquire")?;
        let others_queued = head.get(2) == Some(&1);
        let grants = LocalGrants { tokens, lease_ms: grant_ms, others_queued };
        match head.as_slice() {
            [1, _, _] => Ok((SharedAttempt::Acquired, grants)),
            [0, ms, _] => {
                Ok((SharedAttempt::Waiting { remaining: u64::try_from(*ms).ok().map(Duration::from_millis) }, grants))
            }
            [-1, n] => {
                Err(Error::PermitsMismatch { key: keys.key.clone(), permits: a.permits, in_use: count(*n, &v)? })
            }
            _ => Err(unexpected("acquire", &v)),
        }
    }

    fn release(&self, keys: &LockKeys, token: &str) -> Result<(bool, LocalGrants)> {
        let (grant_ms, channels, publish) = self.grant_args(keys);
        let v = self.run_shared(keys, &self.server.shared.release, None, |inv| {
            inv.arg(token).arg(grant_ms).arg(&*channels).arg(&*keys.name).arg(&self.server.client_id).arg(publish);
        })?;
        let (head, tokens) = with_grants(&v, 2, "release")?;
        match head.as_slice() {
            [n @ (0 | 1), o] => Ok((*n == 1, LocalGrants { tokens, lease_ms: grant_ms, others_queued: *o == 1 })),
            _ => Err(unexpected("release", &v)),
        }
    }

    fn leave(&self, keys: &LockKeys, token: &str) -> Result<(SharedLeave, LocalGrants)> {
        let (grant_ms, channels, publish) = self.grant_args(keys);
        let v = self.run_shared(keys, &self.server.shared.leave, None, |inv| {
            inv.arg(token).arg(grant_ms).arg(&*channels).arg(&*keys.name).arg(&self.server.client_id).arg(publish);
        })?;
        let (head, tokens) = with_grants(&v, 2, "leave")?;
        let (outcome, o) = match head.as_slice() {
            [0, o] => (SharedLeave::Gone, o),
            [1, o] => (SharedLeave::Left, o),
            [2, o] => (SharedLeave::ReleasedGrant, o),
            _ => return Err(unexpected("leave", &v)),
        };
        Ok((outcome, LocalGrants { tokens, lease_ms: grant_ms, others_queued: *o == 1 }))
    }

    fn holds(&self, keys: &LockKeys, token: &str) -> Result<bool> {
        let v = self.run_shared(keys, &self.server.shared.read, None, |inv| {
            inv.arg(token);
        })?;
        match ints(&v, "holds")?.as_slice() {
            [holds, ..] => Ok(*holds == 1),
            _ => Err(unexpected("holds", &v)),
        }
    }

    fn available(&self, keys: &LockKeys, permits: u32) -> Result<u32> {
        let v = self.run_shared(keys, &self.server.shared.read, None, |inv| {
            inv.arg("");
        })?;
        match ints(&v, "available")?.as_slice() {
            [_, live, n, queued] => {
                let (live, n) = (u32::try_from(*live).unwrap_or(u32::MAX), count(*n, &v)?);
                if n > 0 && n != permits && (live > 0 || *queued == 1) {
                    return Err(Error::PermitsMismatch { key: keys.key.clone(), permits, in_use: n });
                }
                Ok(permits.saturating_sub(live))
            }
            _ => Err(unexpected("available", &v)),
        }
    }
}
