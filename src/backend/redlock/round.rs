//! A round: one request to every master at once, and the replies that come back in
//! time. The caller never waits longer than the per-master timeout, and not even that
//! once a quorum of masters has answered without an error: the rest then get as long
//! again as the round has taken so far (a master a little slower than the others still
//! counts; a stopped one does not hold every round up).
//!
//! Where the request allows ([`Direct`]), the caller writes it itself on an idle
//! pooled connection of every master, then reads the replies one after another, each
//! within what is left of the round: no thread hop. A master without an idle
//! connection, one that failed or timed out lately (`Master::slow`), and a request the
//! caller could not complete (`NOSCRIPT`, a dropped connection) go through the
//! master's worker, whose replies come through a channel.
//!
//! A reply that comes after the caller has stopped listening is the job's to deal
//! with: an acquisition's job releases a vote that came too late for a round that
//! failed, or for one whose lock was released meanwhile ([`Ballot`]); a connection
//! whose reply the caller stopped waiting for goes to the master's worker
//! ([`Direct::unread`]), or is closed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redis::{RedisError, Value};

use super::master::{Job, Master};
use crate::backend::single::{Lent, Pool};
use crate::clock::later;
use crate::error::Result;
use crate::sync::lock;

/// One slot per master: its reply, or `None` when it did not answer in time.
pub(super) type Replies<T> = Vec<Option<Result<T>>>;

/// Where a job sends its reply: the master's index and what it got.
pub(super) type Reply<T> = Sender<(usize, Result<T>)>;

/// Sends `make(i, reply)` to every master `i` and collects the replies until each
/// master answered, `timeout` passed, or a grace period after `quorum` of the masters
/// that `count` answered with a reply that `settles` (one that can make up the
/// quorum the caller looks for: a vote, a release; not "not here").
pub(super) fn run<T: Send + 'static>(
    masters: &[Arc<Master>],
    count: &[bool],
    timeout: Duration,
    quorum: usize,
    settles: impl Fn(&T) -> bool,
    direct: Option<&dyn Direct<T>>,
    make: impl Fn(usize, Reply<T>) -> Job,
) -> Replies<T> {
    run_ballot(masters, count, timeout, quorum, settles, direct, make).0
}

/// A request the caller can send on an idle pooled connection and read itself.
pub(super) trait Direct<T> {
    /// Master `i`'s request, packed.
    fn packed(&self, i: usize) -> &[u8];

    /// What master `i`'s reply means (`Err`: an error reply, `NOSCRIPT` excepted: the
    /// master's worker then runs the request, loading the script).
    fn reply(&self, i: usize, reply: std::result::Result<Value, RedisError>) -> Result<T>;

    /// How long the caller waits for the first replies, until a quorum answered,
    /// before it gives a master that has not answered to its worker (`unread`) and
    /// reads the next one; `None`: until the round's deadline. Only for a
    /// request that can be asked again (the worker asks again: the reply to the first
    /// one is lost).
    fn patience(&self) -> Option<Duration> {
        None
    }

    /// A job for master `i`'s worker with a connection whose reply the round did not
    /// wait for any longer: its read timed out, and the reply is lost (redis-rs skips
    /// it when it comes). `None` (the default): the connection is closed.
    fn unread(&self, i: usize, con: Lent, reply: &Reply<T>) -> Option<Job> {
        let _ = (i, con, reply);
        None
    }
}

/// A request packed per master, whose replies `parse` reads; a connection whose reply
/// was not read is closed.
pub(super) struct Packed<'a, T> {
    pub packed: Vec<Vec<u8>>,
    /// The lock's key, for errors.
    pub key: &'a str,
    pub parse: fn(Value) -> redis::RedisResult<T>,
}

impl<T> Direct<T> for Packed<'_, T> {
    fn packed(&self, i: usize) -> &[u8] {
        &self.packed[i]
    }

    fn reply(&self, _: usize, reply: std::result::Result<Value, RedisError>) -> Result<T> {
        reply.and_then(self.parse).map_err(|e| crate::error::Error::from_redis(e, Some(self.key)))
    }
}

/// The replies of a round as they come, and until when it listens.
struct Count<'a, T> {
    replies: Replies<T>,
    count: &'a [bool],
    answered: usize,
    succeeded: usize,
    /// Counting masters that answered without an error.
    counted_answers: usize,
    started: Instant,
    /// Time the caller spent waiting for masters that did not answer in time, while
    /// the others' replies waited to be read.
    stalled: Duration,
    until: Instant,
    quorum: usize,
}

impl<T> Count<'_, T> {
    fn add(&mut self, i: usize, r: Result<T>, settles: &dyn Fn(&T) -> bool) {
        let ok = r.as_ref().is_ok_and(settles) && self.count[i];
        let first = self.replies[i].is_none();
        let answer = r.is_ok() && self.count[i];
        self.replies[i] = Some(r);
        if first {
            self.answered += 1;
            self.succeeded += usize::from(ok);
            self.counted_answers += usize::from(answer);
        }
        // Errors do not start it, nor masters that sit out, nor replies that cannot
        // make up the quorum: a master that fails (or says "not here") fast must not
        // cut short the wait for one that is merely slow. But once a quorum of
        // counting masters answered and even the silent ones could not make up the
        // quorum (the lock is held by another, a lease was not extended, the lock is
        // gone), the outcome is known: waiting for a stopped master would hold every
        // such round up for the whole timeout.
        let silent = self.count.iter().zip(&self.replies).filter(|(c, r)| **c && r.is_none()).count();
        let decided = (ok && self.succeeded == self.quorum)
            || (first && self.counted_answers >= self.quorum && self.succeeded + silent < self.quorum);
        if decided {
            // As long again as it took so far, for the slower ones.
            let grace = self.started.elapsed().saturating_sub(self.stalled).max(Duration::from_millis(1));
            self.until = self.until.min(later(Instant::now(), grace));
        }
    }
}

fn collect<T>(rx: &Receiver<(usize, Result<T>)>, c: &mut Count<'_, T>, settles: &dyn Fn(&T) -> bool) {
    while c.answered < c.count.len() {
        match rx.recv_deadline(c.until) {
            Ok((i, r)) => c.add(i, r, settles),
            Err(_) => break,
        }
    }
}

/// Where an acquisition round stands, shared with its jobs so that a vote arriving
/// after the round was decided is dealt with: kept for a round that won (another
/// master holding the lock for its owner), released for one that lost, and not even
/// asked for once the round is over (a job still waiting for a busy worker).
#[derive(Debug, Default)]
pub(super) struct Ballot {
    phase: Mutex<Phase>,
    /// A lost round whose votes may have made a majority on the masters: taking them
    /// back tells the clients that queued on them.
    loud: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    #[default]
    Counting,
    Won,
    Lost,
    /// A round that won, whose lock was released since: a vote that comes after is
    /// released by its job, on the connection it came on (the holder's release, sent
    /// on another connection, may have reached that master first).
    Released,
}

impl Ballot {
    /// Whether the round is still counting votes.
    pub fn counting(&self) -> bool {
        self.phase() == Phase::Counting
    }

    /// Where the round stands.
    pub fn phase(&self) -> Phase {
        *lock(&self.phase)
    }

    /// Delivers `reply` while the round counts; otherwise returns the phase it ended
    /// in (and the reply back), for the job to deal with.
    pub fn deliver<T>(&self, tx: &Reply<T>, i: usize, reply: Result<T>) -> Option<(Phase, Result<T>)> {
        let phase = lock(&self.phase);
        match *phase {
            Phase::Counting => {
                let _ = tx.send((i, reply));
                None
            }
            done => Some((done, reply)),
        }
    }

    /// Ends the count. Replies delivered before this are the caller's to read (see
    /// [`late`]); later ones are the jobs'. `loud`: see [`Ballot::loud`].
    pub fn close(&self, phase: Phase, loud: bool) {
        self.loud.store(loud, std::sync::atomic::Ordering::Release);
        *lock(&self.phase) = phase;
    }

    /// The lock a won round took is being released: votes still to come are the
    /// jobs' to release.
    pub fn released(&self) {
        let mut phase = lock(&self.phase);
        if *phase == Phase::Won {
            *phase = Phase::Released;
        }
    }

    /// Whether a lost round's votes may have made a majority (their take-back tells
    /// the clients queued on them).
    pub fn loud(&self) -> bool {
        self.loud.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Replies delivered after the round stopped listening but before its ballot closed.
pub(super) fn late<T>(rx: &Receiver<(usize, Result<T>)>) -> Vec<(usize, Result<T>)> {
    rx.try_iter().collect()
}

/// [`run`], for an acquisition: the caller keeps the receiving end, to read the late
/// replies once it has closed the ballot.
pub(super) fn run_ballot<T: Send + 'static>(
    masters: &[Arc<Master>],
    count: &[bool],
    timeout: Duration,
    quorum: usize,
    settles: impl Fn(&T) -> bool,
    direct: Option<&dyn Direct<T>>,
    make: impl Fn(usize, Reply<T>) -> Job,
) -> (Replies<T>, Receiver<(usize, Result<T>)>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let started = Instant::now();
    let mut c = Count {
        replies: (0..count.len()).map(|_| None).collect(),
        count,
        answered: 0,
        succeeded: 0,
        counted_answers: 0,
        started,
        stalled: Duration::ZERO,
        until: later(started, timeout),
        quorum,
    };
    let mut sent = Vec::new();
    for (i, master) in masters.iter().enumerate() {
        let con = direct.filter(|_| !master.slow()).and_then(|d| send(master.pool(), d.packed(i)));
        match con {
            Some(con) => sent.push((i, con)),
            None => master.submit(make(i, tx.clone())),
        }
    }
    if let Some(d) = direct {
        let patience = d.patience().map(|p| later(started, p));
        for (i, mut con) in sent {
            let until = patience.filter(|_| c.succeeded < quorum).map_or(c.until, |p| p.min(c.until));
            let now = Instant::now();
            // Past the end (the caller was not scheduled, or waited for another
            // master), a reply already there is still read: 1 ms at most.
            match con.recv(until.saturating_duration_since(now)) {
                Err(e) if e.is_timeout() => {
                    // The others' replies came meanwhile: not part of the grace.
                    c.stalled += now.elapsed();
                    masters[i].set_slow(true);
                    if let Some(job) = d.unread(i, con, &tx) {
                        masters[i].submit(job);
                    }
                }
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    masters[i].submit(make(i, tx.clone()));
                }
                Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
                    // The pool's retries on a fresh connection, on the worker.
                    con.discard();
                    masters[i].submit(make(i, tx.clone()));
                }
                reply => c.add(i, d.reply(i, reply), &settles),
            }
        }
    }
    drop(tx);
    collect(&rx, &mut c, &settles);
    for (master, reply) in masters.iter().zip(&c.replies) {
        if reply.is_some() {
            // It answered in time (itself, or its worker).
            master.set_slow(false);
        }
    }
    (c.replies, rx)
}

/// Sends `packed` on an idle connection of `pool`, if it has one (a connection that
/// fails is closed; the worker retries on a fresh one).
fn send(pool: &Pool, packed: &[u8]) -> Option<Lent> {
    let mut con = pool.try_idle()?;
    match con.send(packed) {
        Ok(()) => Some(con),
        Err(_) => {
            con.discard();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_mutex_error() -> crate::error::Error {
        crate::error::Error::Connection(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
    }

    /// The replies of five counting masters (quorum 3) a round collects from `rx` by
    /// `until`, those that settle being `settles`'.
    fn collected(
        rx: &Receiver<(usize, Result<usize>)>,
        started: Instant,
        until: Instant,
        settles: &dyn Fn(&usize) -> bool,
    ) -> Replies<usize> {
        let mut c = Count {
            replies: (0..5).map(|_| None).collect(),
            count: &[true; 5],
            answered: 0,
            succeeded: 0,
            counted_answers: 0,
            started,
            stalled: Duration::ZERO,
            until,
            quorum: 3,
        };
        collect(rx, &mut c, settles);
        c.replies
    }

    fn counted(rx: &Receiver<(usize, Result<usize>)>, started: Instant, until: Instant) -> Replies<usize> {
        collected(rx, started, until, &|_| true)
    }

    #[test]
    fn collecting_stops_when_all_answered_or_soon_after_a_quorum() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send((4, Err(redis_mutex_error()))).unwrap();
        for i in 0..3 {
            tx.send((i, Ok(i))).unwrap();
        }
        let started = Instant::now();
        let far = started + Duration::from_secs(60);
        // Three of five answered at once, one failed; the last never answers: not
        // 60 s, the grace.
        let r = counted(&rx, started, far);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(r.iter().filter(|r| r.is_some()).count(), 4);
        // Below a quorum of successes (errors do not count): the whole timeout.
        tx.send((0, Ok(0))).unwrap();
        tx.send((1, Err(redis_mutex_error()))).unwrap();
        tx.send((2, Err(redis_mutex_error()))).unwrap();
        let started = Instant::now();
        let r = counted(&rx, started, started + Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(r.iter().filter(|r| r.is_some()).count(), 3);
    }

    #[test]
    fn collecting_stops_soon_after_a_quorum_answered_that_no_master_left_can_turn() {
        // Four of five answered at once, none with a reply that settles ("held by
        // another", "not extended"): even the fifth could not make a quorum, so the
        // round does not wait for it (a stopped master held every contended round for
        // the whole timeout).
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 1..5 {
            tx.send((i, Ok(0))).unwrap();
        }
        let started = Instant::now();
        let replies = collected(&rx, started, started + Duration::from_secs(10), &|v| *v > 0);
        assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
        assert_eq!(replies.iter().filter(|r| r.is_some()).count(), 4);
        // Two that settle and two that do not: the fifth could still make a quorum.
        for (i, v) in [(1, 1), (2, 1), (3, 0), (4, 0)] {
            tx.send((i, Ok(v))).unwrap();
        }
        let started = Instant::now();
        collected(&rx, started, started + Duration::from_millis(300), &|v| *v > 0);
        assert!(started.elapsed() >= Duration::from_millis(300), "the fifth could still decide it");
        // Errors are no answer: with two failed fast and two that do not settle, a
        // merely slow fifth is waited for (no quorum answered).
        tx.send((1, Err(redis_mutex_error()))).unwrap();
        tx.send((2, Err(redis_mutex_error()))).unwrap();
        tx.send((3, Ok(0))).unwrap();
        tx.send((4, Ok(0))).unwrap();
        let started = Instant::now();
        collected(&rx, started, started + Duration::from_millis(300), &|v| *v > 0);
        assert!(started.elapsed() >= Duration::from_millis(300), "two errors are not answers");
    }

    #[test]
    fn a_ballot_hands_late_replies_back_with_how_the_round_ended() {
        let (tx, rx) = crossbeam_channel::unbounded::<(usize, Result<u8>)>();
        let ballot = Ballot::default();
        assert!(ballot.deliver(&tx, 0, Ok(1)).is_none());
        ballot.close(Phase::Lost, false);
        assert!(!ballot.counting());
        assert!(matches!(ballot.deliver(&tx, 1, Ok(2)), Some((Phase::Lost, Ok(2)))));
        assert_eq!(late(&rx).len(), 1, "only the one delivered while counting");
    }
}
