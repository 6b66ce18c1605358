//! Counting the masters' replies to a round: the Redlock decisions, apart from the I/O
//! so that they are tested without servers. Only the masters that count for a quorum
//! (up for at least `redlock_max_lease`, see `master::Boot`) are counted; the quorum is
//! a majority of all masters, counting or not.

use std::collections::HashMap;
use std::time::Duration;

use super::round::Replies;
use super::scripts::Vote;
use crate::backend::Released;
use crate::error::Error;
use crate::holder::Holder;

/// Who took part in a round, for the error when too few did.
#[derive(Debug)]
pub(super) struct Turnout {
    masters: usize,
    quorum: usize,
    /// Masters that answered (without an error), counting or not.
    answered: usize,
    /// Of those, the ones that sit out.
    sitting_out: usize,
    last_error: Option<Error>,
    /// An error that waiting does not cure (refused credentials, a key of another
    /// type), from any master.
    lasting: Option<Error>,
}

impl Turnout {
    pub fn of<T>(replies: &Replies<T>, counts: &[bool], quorum: usize) -> Turnout {
        let mut t =
            Turnout { masters: replies.len(), quorum, answered: 0, sitting_out: 0, last_error: None, lasting: None };
        for (reply, counts) in replies.iter().zip(counts) {
            match reply {
                Some(Ok(_)) => {
                    t.answered += 1;
                    if !counts {
                        t.sitting_out += 1;
                    }
                }
                Some(Err(e)) if !e.is_transient() => t.lasting = Some(e.clone()),
                Some(Err(e)) => t.last_error = Some(e.clone()),
                None => {}
            }
        }
        t
    }

    /// Masters that answered and count.
    pub fn counted(&self) -> usize {
        self.answered - self.sitting_out
    }

    /// Why nothing could be decided: an error that lasts, if a master gave one, else
    /// `Error::NoQuorum`.
    pub fn error(self) -> Error {
        if let Some(e) = self.lasting {
            return e;
        }
        let last_error = self.last_error.map(Box::new).or_else(|| {
            (self.answered < self.masters).then(|| {
                Box::new(Error::Connection(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no reply within redlock_master_timeout",
                ))))
            })
        });
        Error::NoQuorum {
            masters: self.masters,
            needed: self.quorum,
            answered: self.answered,
            sitting_out: self.sitting_out,
            last_error,
        }
    }
}

/// How an acquisition round came out.
#[derive(Debug)]
pub(super) enum Count {
    /// A quorum of counting masters voted for the caller: `voters` (with the fencing
    /// token each gave), whose maximum is the acquisition's.
    Won { voters: Vec<(usize, u64)> },
    /// Another owner holds the lock on a quorum of counting masters with the votes
    /// of one of its rounds, for at least this long on each (`None`: no expiry).
    /// Votes of one round on a quorum mean that round won, or that its owner takes
    /// them back telling the clients queued on them (it counted them, or did not
    /// hear from the masters in time: see `acquire::attempt`). Votes of several
    /// rounds of the same call (a round's take-back not there yet while the next
    /// round's votes are) may be taken back silently, as a split's are: a waiter that
    /// counted them as a holder slept until they ran out.
    Held { remaining: Option<Duration> },
    /// Enough masters answered, but no owner has a quorum: attempts met (or a lock
    /// is being released): look again soon.
    Split,
    /// Too few counting masters answered.
    Failed(Error),
}

/// Counts an acquisition round. Also returns the masters where the caller may hold a
/// vote (granted, or an error on an open connection: the request may have run),
/// to release when the round did not win.
pub(super) fn attempt(replies: &Replies<Vote>, counts: &[bool], quorum: usize) -> (Count, Vec<usize>) {
    let mut voters = Vec::new();
    let mut maybe_ours = Vec::new();
    // By owner and round: one owner's votes from different rounds are no quorum (see
    // `Count::Held`).
    let mut holders: HashMap<(&str, u64), (usize, Option<Duration>)> = HashMap::new();
    for (i, (reply, counts)) in replies.iter().zip(counts).enumerate() {
        match reply {
            Some(Ok(Vote::Granted { fence })) => {
                maybe_ours.push(i);
                if *counts {
                    voters.push((i, *fence));
                }
            }
            Some(Ok(Vote::Held { remaining, owner, round })) if *counts => {
                let h = holders.entry((owner.as_str(), *round)).or_insert((0, *remaining));
                h.0 += 1;
                // The shortest lease seen: expiry is announced by nobody.
                h.1 = match (h.1, *remaining) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Some(Err(Error::Connection(e))) if !e.is_connection_refusal() => maybe_ours.push(i),
            _ => {}
        }
    }
    if voters.len() >= quorum {
        return (Count::Won { voters }, maybe_ours);
    }
    let turnout = Turnout::of(replies, counts, quorum);
    let count = if let Some((_, remaining)) = holders.values().find(|(n, _)| *n >= quorum) {
        Count::Held { remaining: *remaining }
    } else if turnout.counted() >= quorum {
        Count::Split
    } else {
        Count::Failed(turnout.error())
    };
    (count, maybe_ours)
}

/// Counts one lease's extend replies (`Ok(true)`: extended on that master): held on
/// a quorum, lost when even the masters that did not answer could not make one up,
/// else undecided (`Err`, transient: the watchdog retries).
pub(super) fn extend(replies: &Replies<bool>, counts: &[bool], quorum: usize) -> Result<bool, Error> {
    let mut extended = 0;
    let mut unknown = 0;
    for (reply, counts) in replies.iter().zip(counts) {
        match reply {
            Some(Ok(true)) if *counts => extended += 1,
            Some(Ok(_)) | Some(Err(Error::WrongType { .. })) => {}
            Some(Err(_)) | None if *counts => unknown += 1,
            _ => {}
        }
    }
    if extended >= quorum {
        Ok(true)
    } else if extended + unknown < quorum {
        Ok(false)
    } else {
        Err(Turnout::of(replies, counts, quorum).error())
    }
}

/// Counts a holder's release (`Ok(true)`: released on that master).
pub(super) fn release(replies: &Replies<bool>, counts: &[bool], quorum: usize) -> Result<Released, Error> {
    match extend(replies, counts, quorum)? {
        true => Ok(Released::Deleted),
        false => Ok(Released::NotOwner),
    }
}

/// The holder of a lock: the owner on a quorum of counting masters, with the shortest
/// lease left among them; `None` when no owner has a quorum.
pub(super) fn holder(
    replies: &Replies<Option<Holder>>,
    counts: &[bool],
    quorum: usize,
) -> Result<Option<Holder>, Error> {
    let turnout = Turnout::of(replies, counts, quorum);
    let mut owners: HashMap<&str, Vec<&Holder>> = HashMap::new();
    for (reply, counts) in replies.iter().zip(counts) {
        if let (Some(Ok(Some(h))), true) = (reply, counts) {
            owners.entry(h.token.as_str()).or_default().push(h);
        }
    }
    if let Some(found) = owners.values().find(|hs| hs.len() >= quorum) {
        let mut holder = found[0].clone();
        // `None` is no expiry: the shortest is among the others.
        holder.remaining_lease = found.iter().filter_map(|h| h.remaining_lease).min();
        holder.contended = found.iter().any(|h| h.contended);
        return Ok(Some(holder));
    }
    if turnout.counted() >= quorum { Ok(None) } else { Err(turnout.error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(fence: u64) -> Option<Result<Vote, Error>> {
        Some(Ok(Vote::Granted { fence }))
    }
    fn held(owner: &str, ms: u64) -> Option<Result<Vote, Error>> {
        held_in(owner, 1, ms)
    }
    fn held_in(owner: &str, round: u64, ms: u64) -> Option<Result<Vote, Error>> {
        Some(Ok(Vote::Held { remaining: Some(Duration::from_millis(ms)), owner: owner.into(), round }))
    }
    fn down() -> Option<Result<Vote, Error>> {
        Some(Err(Error::Connection(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))))
    }
    const ALL: [bool; 5] = [true; 5];

    #[test]
    fn a_quorum_of_votes_wins_and_every_vote_is_ours_to_release() {
        let (count, ours) = attempt(&vec![granted(5), granted(9), held("x", 10), granted(7), None], &ALL, 3);
        let Count::Won { voters } = count else { panic!("{count:?}") };
        assert_eq!(voters, [(0, 5), (1, 9), (3, 7)]);
        assert_eq!(ours, [0, 1, 3]);
    }

    #[test]
    fn a_master_that_sits_out_gives_no_vote() {
        let counts = [true, true, false, true, true];
        let (count, ours) = attempt(&vec![granted(1), granted(1), granted(1), None, None], &counts, 3);
        assert!(matches!(count, Count::Failed(Error::NoQuorum { answered: 3, sitting_out: 1, .. })), "{count:?}");
        assert_eq!(ours, [0, 1, 2], "its vote is released too");
        // With another master answering, three count: no owner has a quorum.
        let (count, _) = attempt(&vec![granted(1), granted(1), granted(1), held("x", 10), None], &counts, 3);
        assert!(matches!(count, Count::Split), "{count:?}");
    }

    #[test]
    fn another_owner_with_a_quorum_holds_it_for_the_shortest_lease_seen() {
        let replies = vec![held("x", 900), held("x", 300), granted(1), held("x", 500), held("y", 5)];
        let (count, ours) = attempt(&replies, &ALL, 3);
        assert!(matches!(count, Count::Held { remaining: Some(d) } if d == Duration::from_millis(300)), "{count:?}");
        assert_eq!(ours, [2]);
    }

    #[test]
    fn one_owners_votes_from_different_rounds_are_a_split_not_a_holder() {
        let replies = vec![held_in("x", 7, 900), held_in("x", 7, 900), held_in("x", 8, 900), granted(1), None];
        let (count, _) = attempt(&replies, &ALL, 3);
        assert!(matches!(count, Count::Split), "{count:?}");
        let replies =
            vec![held_in("x", 8, 900), held_in("x", 7, 900), held_in("x", 8, 900), held_in("x", 8, 400), None];
        let (count, _) = attempt(&replies, &ALL, 3);
        assert!(matches!(count, Count::Held { remaining: Some(d) } if d == Duration::from_millis(400)), "{count:?}");
    }

    #[test]
    fn no_owner_with_a_quorum_is_a_split_and_too_few_answers_an_error() {
        let (count, _) = attempt(&vec![granted(1), granted(1), held("x", 9), held("x", 9), held("y", 9)], &ALL, 3);
        assert!(matches!(count, Count::Split), "{count:?}");
        let (count, _) = attempt(&vec![granted(1), down(), down(), None, held("x", 9)], &ALL, 3);
        assert!(matches!(count, Count::Failed(Error::NoQuorum { answered: 2, needed: 3, .. })), "{count:?}");
        let auth = Some(Err(Error::Auth(redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "no")))));
        let (count, _) = attempt(&vec![auth.clone(), auth.clone(), auth, None, None], &ALL, 3);
        assert!(matches!(count, Count::Failed(Error::Auth(_))), "an error that lasts: {count:?}");
    }

    #[test]
    fn an_extend_is_lost_only_when_the_silent_masters_could_not_make_up_a_quorum() {
        let ok = |b| Some(Ok(b));
        assert!(extend(&vec![ok(true), ok(true), ok(true), None, None], &ALL, 3).unwrap());
        assert!(!extend(&vec![ok(true), ok(false), ok(false), ok(false), None], &ALL, 3).unwrap());
        assert!(matches!(
            extend(&vec![ok(true), ok(true), ok(false), None, None], &ALL, 3),
            Err(Error::NoQuorum { .. })
        ));
        let counts = [true, true, false, false, false];
        assert!(!extend(&vec![ok(true), ok(true), ok(true), ok(true), ok(true)], &counts, 3).unwrap(), "2 count");
    }
}
