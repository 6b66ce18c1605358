//! `wait_replicas` on one server. Redis refuses `WAIT` inside a script, and `WAIT`
//! counts the replicas that acknowledged the writes of its own connection, so it is
//! pipelined right behind the script that gave someone the lock, on the same pooled
//! connection: one round trip. What falls short is undone here, so that a caller
//! never holds a lock on the strength of replicas that did not acknowledge it:
//! - an attempt that acquired: released again (owner-checked, passed on as any
//!   release), and `Error::ReplicasNotAcknowledged` returned;
//! - a release that handed the lock to a waiting thread of this client: released
//!   again from that thread's token (`Released::Unacknowledged`);
//! - a release that granted it to another client: `release.lua` holds the
//!   announcement back; after the `WAIT`, `settle.lua` announces it (with the count of
//!   acknowledgements) or revokes it (the lock is free again, the grantee first in the
//!   queue and told to look again);
//! - an extend: reported; the lock stays held (it was the holder's before).

use std::time::Duration;

use redis::{Connection, RedisResult, Value};

use super::Server;
use super::scripts::{Scripts, wait};
use crate::backend::{Attempt, AttemptArgs, ReleaseArgs, Released, Replicas};
use crate::error::{Error, Result};
use crate::keys::LockKeys;

/// `Ok` when `acks` (`WAIT`'s reply) meets `r`; else what to report.
fn acknowledged(acks: RedisResult<u32>, r: Replicas, key: &str) -> Result<()> {
    match acks {
        Ok(got) if got >= r.count => Ok(()),
        Ok(got) => Err(Error::ReplicasNotAcknowledged {
            key: key.to_owned(),
            wanted: r.count,
            got,
            timeout: Duration::from_millis(r.timeout_ms),
        }),
        Err(e) => Err(Error::from_redis(e, Some(key))),
    }
}

impl Server {
    /// Runs `op` on a pooled connection whose read timeout allows for a `WAIT` of up
    /// to `wait_ms` on top of the usual: a `WAIT` blocks that long before it answers.
    fn with_waiting_conn<T>(
        &self,
        key: &str,
        deadline: Option<std::time::Instant>,
        wait_ms: u64,
        mut op: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T> {
        let patient = self.read_timeout.saturating_add(Duration::from_millis(wait_ms));
        self.route.on_key(key, deadline, |c| {
            c.set_read_timeout(Some(patient))?;
            let out = op(c);
            // A connection whose timeout cannot be set back is broken: its next use
            // fails, and the pool drops it.
            let _ = c.set_read_timeout(Some(self.read_timeout));
            out
        })
    }

    /// `acquire.lua` and `WAIT` in one round trip. An acquisition fewer than
    /// `r.count` replicas acknowledged is released again before the error returns.
    pub(super) fn attempt_acknowledged(&self, keys: &LockKeys, a: &AttemptArgs<'_>, r: Replicas) -> Result<Attempt> {
        let call = self.scripts.attempt(keys, a, &self.client_id);
        let (v, acks) = self.with_waiting_conn(&keys.key, a.deadline, r.timeout_ms, |c| call.invoke_then_wait(c, r))?;
        let attempt = Scripts::attempt_reply(&v)?;
        // A held lock's reply needs no acknowledgement: the `WAIT` only cost time.
        if let Attempt::Acquired { .. } = attempt
            && let Err(why) = acknowledged(acks, r, &keys.key)
        {
            self.give_back(keys, a.token, a.lease_ms)?;
            return Err(why);
        }
        Ok(attempt)
    }

    /// Releases what `token` was just given, owner-checked, as any release does (a
    /// grant to the next client is announced at once: a grantee that wants replicas
    /// confirms it with a `WAIT` of its own).
    fn give_back(&self, keys: &LockKeys, token: &str, lease_ms: u64) -> Result<()> {
        let outcome = self.release(keys, &ReleaseArgs::plain(token, lease_ms))?;
        log::debug!("redis-mutex: released {} again, too few replicas acknowledged it: {outcome:?}", keys.key);
        Ok(())
    }

    /// `release.lua` with `WAIT`: behind the script in the same round trip when the
    /// handoff target asks for replicas; for a grant to another client held back (the
    /// releasing tenure or the target asks for replicas), one more `WAIT` on the same
    /// connection unless the first one already decides it, then `settle.lua`.
    pub(super) fn release_acknowledged(&self, keys: &LockKeys, a: &ReleaseArgs<'_>) -> Result<Released> {
        let for_handoff = a.handoff.and_then(|t| t.replicas);
        let for_grant = a.replicas.or(for_handoff);
        let grant_token = uuid::Uuid::new_v4().to_string();
        let clients = self.channels.clients_of(&keys.name);
        let call = self.scripts.release(keys, a, &self.releaser(&grant_token, &clients), for_grant.is_some());
        let wait_ms = [for_handoff, for_grant].iter().flatten().map(|r| r.timeout_ms).max().unwrap_or(0);
        let (v, handoff_acks, grant_acks) = self.with_waiting_conn(&keys.key, None, wait_ms, |c| {
            let (v, handoff_acks) = match for_handoff {
                Some(r) => call.invoke_then_wait(c, r).map(|(v, acks)| (v, Some(acks)))?,
                None => (call.invoke(c)?, None),
            };
            let grant_acks = match for_grant {
                Some(r) if Scripts::grant_held_back(&v) => {
                    Some(grant_wait(c, r, for_handoff.zip(handoff_acks.clone())))
                }
                _ => None,
            };
            Ok((v, handoff_acks, grant_acks))
        })?;
        let released = Scripts::release_reply(&v)?;
        if let (Some(acks), Some(r)) = (grant_acks, for_grant) {
            let enough = acks.ok().filter(|got| *got >= r.count);
            let settle = self.scripts.settle(keys, &grant_token, enough, &self.channels);
            let settled: i64 = self.route.on_key(&keys.key, None, |c| settle.invoke(c))?;
            log::debug!(
                "redis-mutex: grant of {} {}",
                keys.key,
                match settled {
                    1 => "announced, acknowledged by enough replicas",
                    2 => "revoked: too few replicas acknowledged it",
                    _ => "ran out before it was settled",
                }
            );
        }
        if let (Released::Handed { .. }, Some(target), Some(r), Some(acks)) =
            (released, a.handoff, for_handoff, handoff_acks)
            && let Err(why) = acknowledged(acks, r, &keys.key)
        {
            self.give_back(keys, &target.token, target.lease_ms)?;
            log::debug!("redis-mutex: handoff of {} undone: {why}", keys.key);
            return Ok(Released::Unacknowledged);
        }
        Ok(released)
    }

    /// `extend.lua` and `WAIT` in one round trip: `false` when not owned.
    pub(super) fn extend_acknowledged(&self, keys: &LockKeys, token: &str, lease_ms: u64, r: Replicas) -> Result<bool> {
        let call = self.scripts.extend_one(keys, token, lease_ms);
        let (v, acks) = self.with_waiting_conn(&keys.key, None, r.timeout_ms, |c| call.invoke_then_wait(c, r))?;
        let owned = match v {
            Value::Int(n) => n == 1,
            other => return Err(Error::UnexpectedReply { operation: "extend", reply: format!("{other:?}") }),
        };
        if owned {
            acknowledged(acks, r, &keys.key)?;
        }
        Ok(owned)
    }
}

/// The acknowledgements of a grant held back, which needs `r`: from the `WAIT` already
/// sent behind the release (`sent`) when that decides it (enough replicas, or a
/// timeout at least as long: a shorter `WAIT` would find no more), else from a `WAIT`
/// of its own on the same connection.
fn grant_wait(c: &mut Connection, r: Replicas, sent: Option<(Replicas, RedisResult<u32>)>) -> RedisResult<u32> {
    if let Some((first, Ok(got))) = sent
        && (got >= r.count || first.timeout_ms >= r.timeout_ms)
    {
        return Ok(got);
    }
    wait(r).query(c)
}
