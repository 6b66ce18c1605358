//! The two requests that decide whether a lock is held: an acquisition (on every
//! master at once, counted, then with fencing the write-back, then the validity
//! check) and a batch of renewals (one pipeline per master).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{Connection, Value};

use super::master::Job;
use super::round::{self, Ballot, Phase, Reply};
use super::scripts::{AcquireArgs, RedlockScripts, Vote};
use super::tally::{self, Count};
use super::{Redlock, drift_ms};
use crate::backend::single::{Lent, Pool};
use crate::backend::{Attempt, AttemptArgs, Renewal};
use crate::backoff::{Backoff, jitter};
use crate::clock::{Stamp, later};
use crate::error::{Error, Result};
use crate::keys::LockKeys;

/// Whether a master's reply may mean it holds a vote for the caller: it gave one, or
/// the request failed on an open connection (it may have run).
fn may_be_ours(reply: &Result<Vote>) -> bool {
    match reply {
        Ok(Vote::Granted { .. }) => true,
        Err(Error::Connection(e)) => !e.is_connection_refusal(),
        _ => false,
    }
}

/// Takes back this round's vote on one master (round-checked: a later round of the
/// same call that holds the vote now keeps it), telling the clients that queued on it
/// (`tell`: that master's channel prefix): a client that saw this round's votes as a
/// majority sleeps until a release wakes it. A caller that waits on stays queued
/// there, as on the masters where it found the lock held: every master can then name
/// it, and their names agree.
fn take_back(con: &mut Connection, s: &Shared, tell: &str) -> redis::RedisResult<Option<u32>> {
    let a = &s.args;
    s.lua.release(con, &s.keys, &a.token, &a.client_id, Some(a.round), tell, a.will_wait)
}

/// [`take_back`] on a pooled connection.
fn take_back_pooled(pool: &Pool, s: &Shared, tell: &str) {
    if let Err(e) = pool.with_conn(Some(&s.keys.key), None, |c| take_back(c, s, tell)) {
        // It then ends with its lease.
        log::debug!("redis-mutex: could not take back a Redlock vote on {}: {e}", s.keys.key);
    }
}

/// What a round's jobs share: the request, and the ballot that says what a late vote
/// is to become.
struct Shared {
    ballot: Arc<Ballot>,
    args: AcquireArgs,
    keys: LockKeys,
    lua: Arc<RedlockScripts>,
    /// The clients' channel prefix of each master, to tell them on a take-back.
    tells: Vec<String>,
}

impl Shared {
    /// Delivers master `i`'s vote to the round while it counts; after, a vote that may
    /// be ours is kept for a round that won, and taken back for one that lost (loudly
    /// if its votes may have made a majority) or whose lock was released since.
    fn settle(&self, pool: &Pool, tx: &Reply<Vote>, i: usize, vote: Result<Vote>) {
        match self.ballot.deliver(tx, i, vote) {
            Some((Phase::Lost, vote)) if may_be_ours(&vote) => {
                take_back_pooled(pool, self, if self.ballot.loud() { &self.tells[i] } else { "" });
            }
            Some((Phase::Released, vote)) if may_be_ours(&vote) => take_back_pooled(pool, self, &self.tells[i]),
            _ => {}
        }
    }
}

/// The round's request as the caller sends it itself (see `round::Direct`).
struct Direct {
    shared: Arc<Shared>,
    packed: Vec<u8>,
    patience: Duration,
}

impl round::Direct<Vote> for Direct {
    fn packed(&self, _: usize) -> &[u8] {
        &self.packed
    }

    fn reply(&self, _: usize, reply: redis::RedisResult<Value>) -> Result<Vote> {
        reply.map_err(|e| Error::from_redis(e, Some(&self.shared.keys.key))).and_then(|v| RedlockScripts::vote(&v))
    }

    fn patience(&self) -> Option<Duration> {
        Some(self.patience)
    }

    /// The reply is lost (a time-out): the worker asks again on the same connection,
    /// behind the first request (the acquire script takes its own round's vote as its
    /// own), and deals with the vote as with a late one; a round that lost meanwhile
    /// takes back instead of asking again.
    fn unread(&self, i: usize, mut con: Lent, tx: &Reply<Vote>) -> Option<Job> {
        let (s, tx) = (self.shared.clone(), tx.clone());
        Some(Box::new(move |pool: &Pool| {
            if s.ballot.phase() == Phase::Lost {
                let tell = if s.ballot.loud() { s.tells[i].as_str() } else { "" };
                if let Err(e) = con.with(|c| take_back(c, &s, tell)) {
                    con.discard();
                    log::debug!("redis-mutex: could not take back a Redlock vote on {}: {e}", s.keys.key);
                }
                return;
            }
            let vote = con.with(|c| s.lua.acquire(c, &s.keys, &s.args));
            if vote.is_err() {
                con.discard();
            }
            drop(con);
            let vote = vote.map_err(|e| Error::from_redis(e, Some(&s.keys.key))).and_then(|v| RedlockScripts::vote(&v));
            s.settle(pool, &tx, i, vote);
        }))
    }
}

/// How long a round waits for the first replies on its own connections before it
/// gives a master that has not answered to its worker (which asks again): a tenth of
/// `redlock_master_timeout`, at least 10 ms (a stopped master then costs a round that
/// much once, after which it goes through its workers until it answers).
fn patience(timeout: Duration) -> Duration {
    (timeout / 10).max(Duration::from_millis(10)).min(timeout)
}

/// One acquisition: held when a quorum of counting masters voted for it and its
/// validity (lease − time taken − drift) is still positive when it returns; otherwise
/// every vote it may hold is taken back, and it reports the owner with a quorum (the
/// shortest lease seen on its masters bounds the waiter's sleep), a split (look again
/// soon), or too few masters.
pub(super) fn attempt(r: &Redlock, keys: &LockKeys, a: &AttemptArgs<'_>) -> Result<Attempt> {
    let started = Stamp::now();
    let timeout = r.settings.master_timeout;
    let deadline = later(started.mono, timeout);
    let args = AcquireArgs {
        token: a.token.to_owned(),
        lease_ms: a.lease_ms,
        fence_span: a.fence_span,
        client_id: r.client_id.to_string(),
        will_wait: a.will_wait,
        round: r.rounds.fetch_add(1, Ordering::Relaxed) + 1,
    };
    let packed = r.lua.acquire_cmd(keys, &args).get_packed_command();
    let shared = Arc::new(Shared {
        ballot: Arc::default(),
        args,
        keys: keys.clone(),
        lua: r.lua.clone(),
        tells: r.channels.iter().map(|c| c.clients.clone()).collect(),
    });
    let direct = Direct { shared: shared.clone(), packed, patience: patience(timeout) };
    let granted = |v: &Vote| matches!(v, Vote::Granted { .. });
    let (replies, late) =
        round::run_ballot(&r.masters, &r.counting(), timeout, r.quorum, granted, Some(&direct), |i, tx| {
            let s = shared.clone();
            Box::new(move |pool: &Pool| {
                if !s.ballot.counting() {
                    // Decided while this waited for a worker: not worth sending.
                    return;
                }
                let vote = pool
                    .with_conn(Some(&s.keys.key), Some(deadline), |c| s.lua.acquire(c, &s.keys, &s.args))
                    .and_then(|v| RedlockScripts::vote(&v));
                s.settle(pool, &tx, i, vote);
            })
        });
    drop(direct);
    let ballot = &shared.ballot;
    let (count, mut ours) = tally::attempt(&replies, &r.counting(), r.quorum);
    let lost = match count {
        Count::Won { voters } => match won(r, keys, a, &voters, started) {
            Ok(fence) => {
                ballot.close(Phase::Won, false);
                if replies.iter().any(Option::is_none) {
                    // Votes still to come: the release must reach them (see `Phase::Released`).
                    r.unsettled(a.token, ballot.clone());
                }
                return Ok(Attempt::Acquired { fence });
            }
            Err(lost) => lost,
        },
        Count::Held { remaining } => Ok(Attempt::Held { remaining }),
        Count::Split => Ok(Attempt::Held { remaining: Some(look_again(started, a.token)) }),
        Count::Failed(e) => Err(e),
    };
    // Votes that may have made a majority (ours, or unanswered) are taken back loudly:
    // a client that saw them as a holder's sleeps until told. Those of a split are not:
    // the clients it met are looking again soon anyway, and waking them would only
    // make the attempts meet again.
    let silent = replies.iter().filter(|r| r.is_none()).count();
    let loud = ours.len() + silent >= r.quorum;
    ballot.close(Phase::Lost, loud);
    ours.extend(round::late(&late).into_iter().filter(|(_, vote)| may_be_ours(vote)).map(|(i, _)| i));
    for i in ours {
        let s = shared.clone();
        // Not waited for: a later round of this call re-takes a vote still here
        // under its own round, which this release then leaves alone.
        r.masters[i].submit(Box::new(move |pool: &Pool| {
            take_back_pooled(pool, &s, if loud { &s.tells[i] } else { "" });
        }));
    }
    let owners: Vec<&str> = replies
        .iter()
        .filter_map(|reply| match reply {
            Some(Ok(Vote::Held { owner, .. })) => Some(owner.as_str()),
            _ => None,
        })
        .collect();
    r.listeners.seen(&keys.name, &owners);
    lost
}

/// A quorum voted: with fencing, raises the voters' counters to the top of the
/// acquisition's block (the maximum over them), on a quorum of them; then checks the
/// validity. The fencing token, or what the caller is told instead.
fn won(
    r: &Redlock,
    keys: &LockKeys,
    a: &AttemptArgs<'_>,
    voters: &[(usize, u64)],
    started: Stamp,
) -> std::result::Result<u64, Result<Attempt>> {
    let fence = voters.iter().map(|(_, f)| *f).max().unwrap_or(0);
    if a.fence_span > 0 {
        let top = fence + a.fence_span - 1;
        // The voter that gave the maximum has its counter at the top already.
        let behind: Vec<usize> = voters.iter().filter(|(_, f)| *f < fence).map(|(i, _)| *i).collect();
        let (lua, keys2) = (r.lua.clone(), keys.clone());
        let raised = r.on_some(&behind, move |_, c| lua.raise_fence(c, &keys2, top), Some(&keys.key), |_| true, None);
        let at_top = voters.len() - behind.len() + raised.iter().filter(|r| matches!(r, Some(Ok(())))).count();
        if at_top < r.quorum {
            log::debug!("redis-mutex: {}: too few fence counters raised ({at_top}); taking the votes back", keys.key);
            let last_error = raised.into_iter().flatten().find_map(Result::err).map(Box::new);
            return Err(Err(Error::NoQuorum {
                masters: r.masters.len(),
                needed: r.quorum,
                answered: at_top,
                sitting_out: 0,
                last_error,
            }));
        }
    }
    let took = started.elapsed_at(Stamp::now());
    if took.as_millis() >= u128::from(a.lease_ms.saturating_sub(drift_ms(a.lease_ms))) {
        log::debug!(
            "redis-mutex: {}: a quorum voted, but after {took:?} the validity of a {} ms lease had run out; \
             taking the votes back",
            keys.key,
            a.lease_ms
        );
        return Err(Ok(Attempt::Held { remaining: Some(look_again(started, a.token)) }));
    }
    Ok(fence)
}

thread_local! {
    /// The token of the last split on this thread, and how many in a row it met.
    static SPLITS: RefCell<(String, u32)> = const { RefCell::new((String::new(), 0)) };
}

/// After a split (or a quorum that came too late): look again after a random short
/// while, a few times the round's length, so that attempts that met do not meet
/// again; doubled for each split the same call met in a row (up to 256 ms), so that a
/// split that lasts (the remains of a lock that lost its quorum, until its holder
/// finds out) is not asked about in a tight loop.
fn look_again(started: Stamp, token: &str) -> Duration {
    let row = SPLITS.with_borrow_mut(|(last, n)| {
        if last != token {
            *last = token.to_owned();
            *n = 0;
        }
        *n = n.saturating_add(1);
        *n
    });
    let took = started.mono.elapsed().saturating_mul(4).max(Duration::from_millis(2));
    let span = took.saturating_mul(1 << (row - 1).min(8)).min(Backoff::MAX);
    Duration::from_millis(1) + jitter(span)
}

/// Renews every lease of `items` on every master, one pipeline per master: held while
/// a quorum of counting masters extended it within its validity.
pub(super) fn extend(r: &Redlock, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let started = Stamp::now();
    let pipe = Arc::new(r.scripts.extend(items));
    let keys: Arc<Vec<String>> = Arc::new(items.iter().map(|(k, ..)| k.key.clone()).collect());
    let scripts = r.scripts.clone();
    // A master where every lease was extended settles; one where any was not leaves
    // the round waiting for the others.
    let all_extended = |each: &Vec<Result<bool>>| each.iter().all(|e| matches!(e, Ok(true)));
    let replies = r.on_all(
        move |_, c| {
            let each = scripts.run_extend(&pipe, c)?;
            Ok(each
                .into_iter()
                .zip(keys.iter())
                .map(|(reply, key)| reply.map(|n| n == 1).map_err(|e| Error::from_redis(e, Some(key))))
                .collect::<Vec<Result<bool>>>())
        },
        None,
        all_extended,
        None,
    );
    let counts = r.counting();
    let took = started.elapsed_at(Stamp::now());
    Ok(items
        .iter()
        .enumerate()
        .map(|(k, (keys, token, lease_ms))| {
            let per: round::Replies<bool> = replies
                .iter()
                .map(|m| match m {
                    None => None,
                    Some(Err(e)) => Some(Err(e.clone())),
                    Some(Ok(each)) => Some(each.get(k).cloned().unwrap_or(Ok(false))),
                })
                .collect();
            match tally::extend(&per, &counts, r.quorum) {
                Ok(true) if took.as_millis() >= u128::from(lease_ms.saturating_sub(drift_ms(*lease_ms))) => {
                    Err(Error::Connection(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the renewal took {took:?}, longer than the lease's validity"),
                    ))))
                }
                Ok(false) => {
                    // Lost: what is left of it on a minority of masters goes now rather
                    // than at the end of its lease.
                    r.forget(keys, token);
                    Ok(false)
                }
                other => other,
            }
        })
        .collect())
}
