//! The Lua scripts of DESIGN §2 (`lua/`), the calls that run them and the replies they
//! give: the Redis protocol of one lock, apart from the connections it runs on. The
//! floor of `benches/micro.rs` builds its calls here too, so that a script change
//! cannot leave it sending stale arguments.

use std::time::Duration;

use redis::{Cmd, ConnectionLike, FromRedisValue, Pipeline, RedisResult, Script, ScriptInvocation, ToRedisArgs, Value};

use crate::backend::{Attempt, AttemptArgs, ReleaseArgs, Released, Renewal, Replicas};
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::keys::{Channels, LockKeys};

/// The fields `holder` reads: `o`, `c`, `w`, `q`, `gt`.
pub(crate) type HolderFields = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

/// Who releases: what `release.lua` needs besides the lock and the caller's tenure.
pub(crate) struct Releaser<'a> {
    pub client_id: &'a str,
    /// What the script prefixes to a client id to address it about this lock
    /// ([`Channels::clients_of`]).
    pub clients: &'a str,
    /// The command it publishes with ([`Channels::publish`]).
    pub publish: &'static str,
    /// The owner token a grant to another client would get (fresh per release).
    pub grant_token: &'a str,
    /// How long a grant is the grantee's before it takes it.
    pub grant_ms: u64,
}

/// The scripts, hashed once (`EVALSHA`, reloaded on `NOSCRIPT` by redis-rs's
/// `invoke`, or by [`Call`]).
pub(crate) struct Scripts {
    acquire: Script,
    release: Script,
    extend: Script,
    /// The renewal of a reader, writer or permit (`lua/shared_extend.lua`).
    extend_shared: Script,
    force_unlock: Script,
    leave: Script,
    settle: Script,
}

/// One call of a script that may give someone the lock: `EVALSHA` with its keys and
/// arguments, sent alone or with `WAIT` right behind it on the same connection
/// (`wait_replicas`: Redis refuses `WAIT` inside a script, and `WAIT` counts the
/// acknowledgements of its own connection's writes). redis-rs's `ScriptInvocation`
/// cannot join a pipeline, hence this.
pub(crate) struct Call<'a> {
    script: &'a Script,
    evalsha: Cmd,
}

fn is_no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

impl<'a> Call<'a> {
    fn new(script: &'a Script, keys: &[&str]) -> Call<'a> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(script.get_hash()).arg(keys.len()).arg(keys);
        Call { script, evalsha }
    }

    fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.evalsha.arg(arg);
        self
    }

    /// Sends the call alone; loads the script and sends it again after `NOSCRIPT`, as
    /// redis-rs's `ScriptInvocation::invoke` does.
    pub fn invoke<T: FromRedisValue>(&self, con: &mut dyn ConnectionLike) -> RedisResult<T> {
        match self.evalsha.query(con) {
            Err(e) if is_no_script(&e) => {
                self.script.load(con)?;
                self.evalsha.query(con)
            }
            other => other,
        }
    }

    /// Sends the call and `WAIT replicas.count replicas.timeout_ms` in one round trip:
    /// the script's reply, and how many replicas acknowledged this connection's writes
    /// (or `WAIT`'s own error: the script's reply stands either way). The connection's
    /// read timeout must allow for the `WAIT`.
    pub fn invoke_then_wait(
        &self,
        con: &mut dyn ConnectionLike,
        replicas: Replicas,
    ) -> RedisResult<(Value, RedisResult<u32>)> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().add_command(self.evalsha.clone()).add_command(wait(replicas));
        let mut replies: Vec<RedisResult<Value>> = pipe.query(con)?;
        if replies.first().is_some_and(|r| r.as_ref().is_err_and(is_no_script)) {
            self.script.load(con)?;
            replies = pipe.query(con)?;
        }
        let mut replies = replies.into_iter();
        match (replies.next(), replies.next()) {
            (Some(script), Some(acks)) => {
                Ok((script?, acks.and_then(|v| u32::from_redis_value(v).map_err(Into::into))))
            }
            _ => Err(redis::RedisError::from((redis::ErrorKind::Client, "a pipeline of 2 got fewer replies"))),
        }
    }
}

/// `WAIT count timeout_ms`.
pub(crate) fn wait(replicas: Replicas) -> Cmd {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas.count).arg(replicas.timeout_ms);
    cmd
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
            // The uncontended path of each runs before the queue helpers are defined
            // (see acquire.lua).
            acquire: Script::new(concat!(
                include_str!("lua/fence.lua"),
                include_str!("lua/acquire.lua"),
                include_str!("lua/queue.lua"),
                include_str!("lua/acquire_held.lua")
            )),
            release: Script::new(concat!(
                include_str!("lua/fence.lua"),
                include_str!("lua/release.lua"),
                include_str!("lua/queue.lua"),
                include_str!("lua/release_queued.lua")
            )),
            leave: Script::new(concat!(include_str!("lua/queue.lua"), include_str!("lua/leave.lua"))),
            extend: Script::new(concat!(include_str!("lua/queue.lua"), include_str!("lua/extend.lua"))),
            extend_shared: Script::new(include_str!("lua/shared_extend.lua")),
            force_unlock: Script::new(include_str!("lua/force_unlock.lua")),
            settle: Script::new(concat!(include_str!("lua/queue.lua"), include_str!("lua/settle.lua"))),
        }
    }

    /// `acquire.lua` for one attempt by client `client_id`.
    pub fn attempt(&self, keys: &LockKeys, a: &AttemptArgs<'_>, client_id: &str) -> Call<'_> {
        let mut inv = Call::new(&self.acquire, &[&keys.key, &keys.fence]);
        inv.arg(a.token).arg(a.lease_ms).arg(a.fence_span).arg(client_id).arg(flag(a.will_wait)).arg(a.mark);
        inv
    }

    pub fn attempt_reply(v: &Value) -> Result<Attempt> {
        match pair(v, "acquire")? {
            (1, fence) => Ok(Attempt::Acquired { fence: fence.max(0) as u64 }),
            (0, pttl) => Ok(Attempt::Held { remaining: millis(pttl) }),
            _ => Err(unexpected("acquire", v)),
        }
    }

    /// `release.lua` for one release by client `client_id`. A grant to the next
    /// waiting client (see `Granted`) makes `grant_token` its owner for `grant_ms`
    /// and tells it on its channel (`from.clients` + its id), unless `held_back`:
    /// then [`settle`](Self::settle) announces or revokes it.
    pub fn release(&self, keys: &LockKeys, a: &ReleaseArgs<'_>, from: &Releaser<'_>, held_back: bool) -> Call<'_> {
        let mut inv = Call::new(&self.release, &[&keys.key, &keys.fence]);
        inv.arg(a.token).arg(from.client_id);
        match a.handoff {
            Some(t) => inv.arg(&t.token).arg(t.lease_ms).arg(if t.fencing { a.fence_span } else { 0 }),
            None => inv.arg("").arg(0).arg(0),
        };
        inv.arg(a.limit).arg(from.grant_ms).arg(a.lease_ms).arg(a.local_handoffs);
        inv.arg(from.grant_token).arg(from.clients).arg(&*keys.name).arg(a.mark).arg(flag(held_back));
        inv.arg(from.publish);
        inv
    }

    /// Whether `release.lua` granted the lock and held the announcement back.
    pub fn grant_held_back(v: &Value) -> bool {
        matches!(ints(v, "release").as_deref(), Ok([4, _]))
    }

    /// `settle.lua` for a grant held back: announce it with `acks` (`acknowledged`), or
    /// revoke it.
    pub fn settle(
        &self,
        keys: &LockKeys,
        grant_token: &str,
        acknowledged: Option<u32>,
        channels: &Channels,
    ) -> ScriptInvocation<'_> {
        let mut inv = self.settle.prepare_invoke();
        inv.key(&keys.key).arg(grant_token).arg(flag(acknowledged.is_some())).arg(acknowledged.unwrap_or(0));
        inv.arg(&*channels.clients_of(&keys.name)).arg(&*keys.name).arg(channels.publish());
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
            // 4: its announcement held back, then settled (see `grant_held_back`).
            [3 | 4, _] => Ok(Released::Passed),
            _ => Err(unexpected("release", v)),
        }
    }

    /// `leave.lua` for client `client_id`.
    pub fn leave(&self, keys: &LockKeys, client_id: &str) -> ScriptInvocation<'_> {
        let mut inv = self.leave.prepare_invoke();
        inv.key(&keys.key).arg(client_id);
        inv
    }

    /// One pipeline of `extend.lua` calls, whose replies are read one by one: one lock's
    /// error (WRONGTYPE where someone wrote over its key) must not fail the renewal of
    /// the others in the batch.
    /// A mixed batch renews each lock with its own kind's script: `extend.lua` for a
    /// mutex, `shared_extend.lua` (on the holders zset and the state hash) for a reader,
    /// writer or permit.
    pub fn extend(&self, items: &[Renewal<'_>]) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (keys, token, lease_ms) in items {
            let cmd = pipe.cmd("EVALSHA");
            if keys.is_shared() {
                cmd.arg(self.extend_shared.get_hash()).arg(2).arg(&keys.key).arg(&keys.state);
            } else {
                cmd.arg(self.extend.get_hash()).arg(1).arg(&keys.key);
            }
            cmd.arg(*token).arg(*lease_ms);
        }
        pipe
    }

    /// The renewal of one lease, alone (see [`Call::invoke_then_wait`]).
    pub fn extend_one(&self, keys: &LockKeys, token: &str, lease_ms: u64) -> Call<'_> {
        let mut call = if keys.is_shared() {
            Call::new(&self.extend_shared, &[&keys.key, &keys.state])
        } else {
            Call::new(&self.extend, &[&keys.key])
        };
        call.arg(token).arg(lease_ms);
        call
    }

    /// Runs a pipeline of [`extend`](Self::extend) on `con`, one result per item; after
    /// a `NOSCRIPT` loads the script and runs the whole pipeline again (extending
    /// again is harmless: each item checks its token).
    pub fn run_extend(&self, pipe: &Pipeline, con: &mut redis::Connection) -> RedisResult<Vec<RedisResult<i64>>> {
        let replies = pipe.query::<Vec<RedisResult<i64>>>(con)?;
        if replies.iter().any(|r| r.as_ref().is_err_and(is_no_script)) {
            self.extend_shared.load(con)?;
            self.extend.load(con)?;
            return pipe.query(con);
        }
        Ok(replies)
    }

    /// `force_unlock.lua`, which wakes every client on `channels.all`, or with sharded
    /// channels, each client that waits for the lock on its own.
    pub fn force_unlock(&self, keys: &LockKeys, channels: &Channels) -> ScriptInvocation<'_> {
        let mut inv = self.force_unlock.prepare_invoke();
        inv.key(&keys.key).arg(&channels.all).arg(&*keys.name);
        if channels.is_sharded() {
            inv.arg(channels.publish()).arg(&*channels.clients_of(&keys.name));
        } else {
            inv.arg("").arg("");
        }
        inv
    }

    /// `holder` is two reads in one pipeline, no script.
    pub fn holder(keys: &LockKeys) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&keys.key).arg("o").arg("c").arg("w").arg("q").arg("gt").cmd("PTTL").arg(&keys.key);
        pipe
    }

    pub fn holder_reply(fields: HolderFields, pttl: i64) -> Option<Holder> {
        let (owner, client, waited, queue, grant_ends) = fields;
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        let contended = set(&waited) || set(&queue);
        // A grant to a waiting client ends when PTTL falls to `gt`, sooner than the hash.
        let grant_ends = grant_ends.and_then(|gt| gt.parse::<i64>().ok());
        let remaining = grant_ends.map_or(pttl, |gt| pttl - gt);
        if grant_ends.is_some() && pttl >= 0 && remaining <= 0 {
            return None;
        }
        let client_id = client.filter(|c| !c.is_empty());
        // Entries `<client id>:<span>:<mark>` (queue.lua).
        let waiting_clients = queue
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|e| e.split(':').next().filter(|id| !id.is_empty()).map(str::to_owned))
            .collect();
        owner.filter(|t| !t.is_empty()).map(|token| Holder {
            token,
            remaining_lease: millis(remaining),
            contended,
            client_id,
            waiting_clients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(o: &str, c: &str, w: &str, q: &str, gt: Option<&str>) -> HolderFields {
        let some = |v: &str| Some(v.to_owned());
        (some(o), some(c), some(w), some(q), gt.map(str::to_owned))
    }

    #[test]
    fn a_holder_names_its_client_and_the_queued_clients_in_order() {
        let h = Scripts::holder_reply(fields("tok", "c1", "", "c2:9:4 c3:0:1", None), 5000).unwrap();
        assert_eq!(h.client_id.as_deref(), Some("c1"));
        assert_eq!(h.waiting_clients, ["c2", "c3"]);
        assert!(h.contended);
        assert_eq!(h.remaining_lease, Some(Duration::from_millis(5000)));
    }

    #[test]
    fn a_holder_without_queue_or_client_field_has_none() {
        let h = Scripts::holder_reply((Some("tok".into()), None, Some("1".into()), None, None), -1).unwrap();
        assert_eq!((h.client_id, h.waiting_clients.len(), h.contended), (None, 0, true), "w alone: own threads");
        assert_eq!(h.remaining_lease, None, "no expiry");
        assert!(Scripts::holder_reply(fields("", "c1", "", "c2:0:1", None), 100).is_none(), "free");
        assert!(Scripts::holder_reply(fields("tok", "c1", "", "", Some("900")), 800).is_none(), "grant ran out");
    }
}
