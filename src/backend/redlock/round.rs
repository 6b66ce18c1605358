//! A round: one request to every master at once, each on the master's own worker, and
//! the replies that come back in time. The caller never waits longer than the
//! per-master timeout, and not even that once a quorum of masters has answered
//! without an error: the rest then get as long again as the round has taken so far (a master a little slower
//! than the others still counts; a stopped one does not hold every round up).
//!
//! A reply that comes after the caller has stopped listening is the job's to deal
//! with: an acquisition's job releases a vote that came too late for a round that
//! failed ([`Ballot`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::master::{Job, Master};
use crate::clock::later;
use crate::error::Result;
use crate::sync::lock;

/// One slot per master: its reply, or `None` when it did not answer in time.
pub(super) type Replies<T> = Vec<Option<Result<T>>>;

/// Where a job sends its reply: the master's index and what it got.
pub(super) type Reply<T> = Sender<(usize, Result<T>)>;

/// Sends `make(i, reply)` to every master `i` and collects the replies until each
/// master answered, `timeout` passed, or a grace period after `quorum` of the masters
/// that `count` answered without an error.
pub(super) fn run<T: Send + 'static>(
    masters: &[Arc<Master>],
    count: &[bool],
    timeout: Duration,
    quorum: usize,
    make: impl Fn(usize, Reply<T>) -> Job,
) -> Replies<T> {
    run_ballot(masters, count, timeout, quorum, make).0
}

fn collect<T>(
    rx: &Receiver<(usize, Result<T>)>,
    count: &[bool],
    started: Instant,
    deadline: Instant,
    quorum: usize,
) -> Replies<T> {
    let n = count.len();
    let mut replies: Replies<T> = (0..n).map(|_| None).collect();
    let (mut answered, mut succeeded) = (0, 0);
    let mut until = deadline;
    while answered < n {
        match rx.recv_deadline(until) {
            Ok((i, r)) => {
                let ok = r.is_ok() && count[i];
                if replies[i].replace(r).is_none() {
                    answered += 1;
                    succeeded += usize::from(ok);
                }
                // Errors do not start it, nor masters that sit out: a master that fails
                // fast must not cut short the wait for one that is merely slow.
                if ok && succeeded == quorum {
                    // As long again as it took so far, for the slower ones.
                    let grace = started.elapsed().max(Duration::from_millis(1));
                    until = until.min(later(Instant::now(), grace));
                }
            }
            Err(_) => break,
        }
    }
    replies
}

/// Where an acquisition round stands, shared with its jobs so that a vote arriving
/// after the round was decided is dealt with: kept for a round that won (another
/// master holding the lock for its owner), released for one that lost, and not even
/// asked for once the round is over (a job still waiting for a busy worker).
#[derive(Debug, Default)]
pub(super) struct Ballot {
    phase: Mutex<Phase>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    #[default]
    Counting,
    Won,
    Lost,
}

impl Ballot {
    /// Whether the round is still counting votes.
    pub fn counting(&self) -> bool {
        *lock(&self.phase) == Phase::Counting
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
    /// [`late`]); later ones are the jobs'.
    pub fn close(&self, phase: Phase) {
        *lock(&self.phase) = phase;
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
    make: impl Fn(usize, Reply<T>) -> Job,
) -> (Replies<T>, Receiver<(usize, Result<T>)>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let started = Instant::now();
    for (i, master) in masters.iter().enumerate() {
        master.submit(make(i, tx.clone()));
    }
    drop(tx);
    let replies = collect(&rx, count, started, later(started, timeout), quorum);
    (replies, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_mutex_error() -> crate::error::Error {
        crate::error::Error::Connection(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
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
        let r = collect::<usize>(&rx, &[true; 5], started, far, 3);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(r.iter().filter(|r| r.is_some()).count(), 4);
        // Below a quorum of successes (errors do not count): the whole timeout.
        tx.send((0, Ok(0))).unwrap();
        tx.send((1, Err(redis_mutex_error()))).unwrap();
        tx.send((2, Err(redis_mutex_error()))).unwrap();
        let started = Instant::now();
        let r = collect::<usize>(&rx, &[true; 5], started, started + Duration::from_millis(30), 3);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(r.iter().filter(|r| r.is_some()).count(), 3);
    }

    #[test]
    fn a_ballot_hands_late_replies_back_with_how_the_round_ended() {
        let (tx, rx) = crossbeam_channel::unbounded::<(usize, Result<u8>)>();
        let ballot = Ballot::default();
        assert!(ballot.deliver(&tx, 0, Ok(1)).is_none());
        ballot.close(Phase::Lost);
        assert!(!ballot.counting());
        assert!(matches!(ballot.deliver(&tx, 1, Ok(2)), Some((Phase::Lost, Ok(2)))));
        assert_eq!(late(&rx).len(), 1, "only the one delivered while counting");
    }
}
