//! The scripts Redlock runs on each master besides the single-server ones it reuses
//! (`extend`, `force_unlock`, the holder read): an acquire that answers with the
//! owner (and round) it found, a release that grants nothing but names the next
//! waiting client, a leave that passes such a name on, and the fence write-back. Why they differ from the single-server ones is in
//! ARCHITECTURE.md ("Redlock").

use std::time::Duration;

use redis::{Cmd, Connection, FromRedisValue, Script, Value};

use crate::error::{Error, Result};
use crate::keys::LockKeys;

/// What one master said to an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Vote {
    /// It holds the lock for the caller now, with this fencing token (0 without).
    Granted { fence: u64 },
    /// `owner`'s acquisition round `round` holds it here, for this much longer
    /// (`None`: no expiry).
    Held { remaining: Option<Duration>, owner: String, round: u64 },
}

pub(super) struct RedlockScripts {
    acquire: Script,
    release: Script,
    leave: Script,
    raise_fence: Script,
}

/// One acquire's arguments, owned: a job outlives the call that made it.
#[derive(Debug, Clone)]
pub(super) struct AcquireArgs {
    pub token: String,
    pub lease_ms: u64,
    pub fence_span: u64,
    pub client_id: String,
    pub will_wait: bool,
    pub round: u64,
}

/// How long a client named by a release (`nominate.lua`) has the lock to itself on
/// a master: long enough to hear the message and ask every master on a busy machine
/// (W5's handoffs: p99 3 ms), short enough that a client that does not come (it
/// crashed) costs the clients that attempt meanwhile little. A name is no vote: the
/// quorum still decides.
pub(super) const NAMED_MS: u64 = 20;

/// `EVALSHA` of `script` on `keys` (arguments to add).
fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// Runs `cmd` (an [`evalsha`] of `script`), loading the script after `NOSCRIPT`.
fn invoke<T: FromRedisValue>(script: &Script, cmd: &Cmd, con: &mut Connection) -> redis::RedisResult<T> {
    match cmd.query(con) {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load(con)?;
            cmd.query(con)
        }
        other => other,
    }
}

fn unexpected(operation: &'static str, v: &Value) -> Error {
    Error::UnexpectedReply { operation, reply: format!("{v:?}") }
}

impl RedlockScripts {
    pub fn new() -> RedlockScripts {
        RedlockScripts {
            acquire: Script::new(concat!(
                include_str!("../single/lua/queue.lua"),
                include_str!("../single/lua/fence.lua"),
                include_str!("lua/nominate.lua"),
                include_str!("lua/acquire.lua")
            )),
            release: Script::new(concat!(
                include_str!("../single/lua/queue.lua"),
                include_str!("lua/nominate.lua"),
                include_str!("lua/release.lua")
            )),
            leave: Script::new(concat!(
                include_str!("../single/lua/queue.lua"),
                include_str!("lua/nominate.lua"),
                include_str!("lua/leave.lua")
            )),
            raise_fence: Script::new(concat!(
                include_str!("../single/lua/fence.lua"),
                include_str!("lua/raise_fence.lua")
            )),
        }
    }

    /// The acquire (see `acquire.lua`), to send (packed) or [`acquire`](Self::acquire).
    pub fn acquire_cmd(&self, keys: &LockKeys, a: &AcquireArgs) -> Cmd {
        let mut cmd = evalsha(&self.acquire, &[&keys.key, &keys.fence]);
        cmd.arg(&a.token)
            .arg(a.lease_ms)
            .arg(a.fence_span)
            .arg(&a.client_id)
            .arg(if a.will_wait { "1" } else { "0" })
            .arg(a.round);
        cmd
    }

    pub fn acquire(&self, con: &mut Connection, keys: &LockKeys, a: &AcquireArgs) -> redis::RedisResult<Value> {
        invoke(&self.acquire, &self.acquire_cmd(keys, a), con)
    }

    pub fn vote(v: &Value) -> Result<Vote> {
        let Value::Array(items) = v else { return Err(unexpected("acquire", v)) };
        match items.as_slice() {
            [Value::Int(1), Value::Int(fence)] => Ok(Vote::Granted { fence: (*fence).max(0) as u64 }),
            [Value::Int(0), Value::Int(pttl), owner, round] => {
                let owner: String = redis::from_redis_value(owner.clone()).map_err(|_| unexpected("acquire", v))?;
                // Written by the acquire script, as a decimal; anything else (a key
                // written by hand) is no round: 0.
                let round: u64 = redis::from_redis_value::<String>(round.clone())
                    .map_err(|_| unexpected("acquire", v))?
                    .parse()
                    .unwrap_or(0);
                Ok(Vote::Held { remaining: u64::try_from(*pttl).ok().map(Duration::from_millis), owner, round })
            }
            _ => Err(unexpected("acquire", v)),
        }
    }

    /// Releases `token`'s lock on this master: only `round`'s vote (a failed attempt:
    /// the clients that queued on it are told on `channels_prefix`, unless it is
    /// empty) or, with `round` `None`, the holder's (the next waiting client is named
    /// and told: see `nominate.lua`). How many clients were told when it was released
    /// here, `None` when it was not the caller's (see [`released`](Self::released)).
    /// `queued`: with a `round`, whether the caller's client waits on (it stays queued
    /// here); without, whether a thread of it still waits (else it leaves the queue
    /// where it is not the owner).
    #[allow(clippy::too_many_arguments)] // one per script argument, named
    pub fn release(
        &self,
        con: &mut Connection,
        keys: &LockKeys,
        token: &str,
        client_id: &str,
        round: Option<u64>,
        channels_prefix: &str,
        queued: bool,
    ) -> redis::RedisResult<Option<u32>> {
        let cmd = self.release_cmd(keys, token, client_id, round, channels_prefix, queued);
        invoke(&self.release, &cmd, con).map(Self::released)
    }

    /// The release of [`release`](Self::release), to send (packed).
    pub fn release_cmd(
        &self,
        keys: &LockKeys,
        token: &str,
        client_id: &str,
        round: Option<u64>,
        channels_prefix: &str,
        queued: bool,
    ) -> Cmd {
        // ARGV[7]: a take-back's "stay queued", a holder's release's "leave the queue".
        let flag = if queued == round.is_some() { "1" } else { "0" };
        let round = round.map(|r| r.to_string()).unwrap_or_default();
        let mut cmd = evalsha(&self.release, &[&keys.key]);
        cmd.arg(token).arg(client_id).arg(round).arg(channels_prefix).arg(&*keys.name).arg(NAMED_MS).arg(flag);
        cmd
    }

    /// What the release script's reply says: how many clients it told, `None` when
    /// the lock was not the caller's there.
    pub fn released(reply: i64) -> Option<u32> {
        u32::try_from(reply - 1).ok()
    }

    /// This client leaves the queue of `keys` on this master (none of its threads
    /// waits any more), passing a name it was given on to the next waiting client.
    pub fn leave(
        &self,
        con: &mut Connection,
        keys: &LockKeys,
        client_id: &str,
        channels_prefix: &str,
    ) -> redis::RedisResult<()> {
        self.leave
            .key(&keys.key)
            .arg(client_id)
            .arg(channels_prefix)
            .arg(&*keys.name)
            .arg(NAMED_MS)
            .invoke::<i64>(con)
            .map(drop)
    }

    /// Raises this master's fence counter of `keys` to `top`.
    pub fn raise_fence(&self, con: &mut Connection, keys: &LockKeys, top: u64) -> redis::RedisResult<()> {
        self.raise_fence.key(&keys.fence).arg(top).invoke::<i64>(con).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_parse() {
        let ints = |v: &[i64]| Value::Array(v.iter().map(|n| Value::Int(*n)).collect());
        assert_eq!(RedlockScripts::vote(&ints(&[1, 7])).unwrap(), Vote::Granted { fence: 7 });
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let held = Value::Array(vec![Value::Int(0), Value::Int(250), bulk("tok"), bulk("12")]);
        assert_eq!(
            RedlockScripts::vote(&held).unwrap(),
            Vote::Held { remaining: Some(Duration::from_millis(250)), owner: "tok".into(), round: 12 }
        );
        let forever = Value::Array(vec![Value::Int(0), Value::Int(-1), bulk("tok"), bulk("0")]);
        assert!(matches!(RedlockScripts::vote(&forever).unwrap(), Vote::Held { remaining: None, .. }));
        assert!(RedlockScripts::vote(&ints(&[2, 0])).is_err());
    }
}
