//! What a release message means, and what the notifier does with it: the messages of
//! the client channels (DESIGN §3), parsed, and delivered to the client's
//! [`ReleaseSink`]; the look-again checks they arm. Shared by the single server's
//! notifier (`notifier`) and a cluster's per-node subscribers (`backend::cluster`),
//! whose threads each keep a [`Dispatch`] of their own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::notifier::{Shared, TICK};
use crate::backend::Granted;
use crate::backoff::jitter;
use crate::clock::later;
use crate::stats::bump;

/// A message on this client's channel or the broadcast channel.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    /// `!<token> <fence> <mark> <acks> <name>`: a release granted `name` to this
    /// client, and `acks` replicas acknowledged the grant before it was announced.
    Granted { name: &'a str, token: &'a str, fence: u64, mark: u64, acks: u32 },
    /// `@<ms> <name>`: a release granted `name` to the client ahead of this one; if
    /// nothing more is heard, look again after `ms` (that client may never come).
    LookAgain { name: &'a str, after: Duration },
    /// `*<name>`: look at `name` again now. Broadcast when it was force-unlocked; sent
    /// to this client alone when a grant to it was revoked before it was announced
    /// (too few replicas acknowledged it, see `settle.lua`).
    Forced { name: &'a str },
    /// `-<token> <name>`: the holder under `token` released `name` (Redlock: each
    /// master where this client waited says so, hence the token, by which the copies
    /// are told apart from another release).
    Released { name: &'a str, token: &'a str },
    /// `^<token>,<token>... <name>`: a release (or an attempt) granted the read-write
    /// lock or semaphore `name` to this client's waiting threads with these tokens.
    Admitted { name: &'a str, tokens: &'a str },
    /// `~<ms> <token> <name>`: grants were made to the waiters ahead of the waiting
    /// thread `token`; if nothing more is heard, it looks again after `ms` (a grantee
    /// may never come).
    Recheck { name: &'a str, token: &'a str, after: Duration },
}

impl<'a> Message<'a> {
    /// `None` for anything else (a message of another version, or not ours).
    fn parse(payload: &'a str) -> Option<Message<'a>> {
        let (kind, rest) = payload.split_at_checked(1)?;
        match kind {
            "!" => {
                let (token, rest) = rest.split_once(' ')?;
                let (fence, rest) = rest.split_once(' ')?;
                let (mark, rest) = rest.split_once(' ')?;
                let (acks, name) = rest.split_once(' ')?;
                let (fence, mark, acks) = (fence.parse().ok()?, mark.parse().ok()?, acks.parse().ok()?);
                Some(Message::Granted { name, token, fence, mark, acks })
            }
            "@" => {
                let (ms, name) = rest.split_once(' ')?;
                Some(Message::LookAgain { name, after: Duration::from_millis(ms.parse().ok()?) })
            }
            "*" => Some(Message::Forced { name: rest }),
            "-" => {
                let (token, name) = rest.split_once(' ')?;
                Some(Message::Released { name, token })
            }
            "^" => {
                let (tokens, name) = rest.split_once(' ')?;
                Some(Message::Admitted { name, tokens })
            }
            "~" => {
                let (ms, rest) = rest.split_once(' ')?;
                let (token, name) = rest.split_once(' ')?;
                Some(Message::Recheck { name, token, after: Duration::from_millis(ms.parse().ok()?) })
            }
            _ => None,
        }
    }
}

/// The look-again checks armed by the messages one subscriber heard.
#[derive(Default)]
pub(crate) struct Dispatch {
    /// Locks granted to the client ahead of this one, and when our first waiter should
    /// look again if nothing more is heard: a client that crashed (or stopped) after
    /// joining the queue never takes its grant, and nothing announces that. Under
    /// contention each grant re-arms the check, so it only fires after a quiet spell.
    checks: HashMap<String, Instant>,
    /// The same for the waiting threads of read-write locks and semaphores, by token.
    ticket_checks: HashMap<String, Instant>,
}

impl Dispatch {
    /// When the next check falls due, if one is armed.
    pub fn next_due(&self) -> Option<Instant> {
        self.checks.values().chain(self.ticket_checks.values()).min().copied()
    }

    /// Fires the checks that fell due.
    pub fn tick(&mut self, shared: &Shared) {
        if !self.checks.is_empty() {
            let now = Instant::now();
            self.checks.retain(|name, due| {
                if *due > now {
                    return true;
                }
                let woke = shared.sink.wake_first(name);
                log::debug!("redis-mutex: nothing heard of {name} since the grant ahead; waiter looks again: {woke}");
                false
            });
        }
        if !self.ticket_checks.is_empty() {
            let now = Instant::now();
            self.ticket_checks.retain(|token, due| {
                if *due > now {
                    return true;
                }
                let woke = shared.sink.wake_ticket(token);
                log::debug!(
                    "redis-mutex: nothing heard for waiter {token} since the grants ahead; looks again: {woke}"
                );
                false
            });
        }
    }

    /// Acts on one message's payload. `grant_ms`: how long a grant is this client's
    /// before it takes it.
    pub fn deliver(&mut self, shared: &Shared, grant_ms: u64, payload: &[u8]) {
        bump(&shared.stats.messages_received);
        let (checks, ticket_checks) = (&mut self.checks, &mut self.ticket_checks);
        match std::str::from_utf8(payload).ok().and_then(Message::parse) {
            Some(Message::Granted { name, token, fence, mark, acks }) => {
                checks.remove(name);
                let grant = Granted { token: token.to_owned(), fence, lease_ms: grant_ms, mark, acks };
                if !shared.sink.granted(name, grant) {
                    // Its last waiter left after it queued.
                    (shared.unclaimed)(name, token);
                }
                log::trace!("redis-mutex: {name} granted to this client");
            }
            Some(Message::LookAgain { name, after }) => {
                if shared.sink.has_waiters(name) {
                    let wait = after.saturating_add(TICK).saturating_add(jitter(after / 4));
                    checks.insert(name.to_owned(), later(Instant::now(), wait));
                }
            }
            Some(Message::Forced { name }) => {
                checks.remove(name);
                let woke = shared.sink.wake_first(name);
                log::trace!("redis-mutex: look again at {name} (forced, or a grant revoked); woke a waiter: {woke}");
            }
            Some(Message::Released { name, token }) => {
                let woke = shared.sink.released(name, token);
                log::trace!("redis-mutex: {name} released; woke a waiter: {woke}");
            }
            Some(Message::Admitted { name, tokens }) => {
                for token in tokens.split(',') {
                    ticket_checks.remove(token);
                    // No such waiter: it left (and its leaving released the grant) or
                    // acquired by its own attempt.
                    let taken = shared.sink.granted_ticket(token, grant_ms);
                    log::trace!("redis-mutex: {name} granted to waiter {token} of this client: {taken}");
                }
            }
            Some(Message::Recheck { name, token, after }) => {
                if shared.sink.has_ticket(token) {
                    let wait = after.saturating_add(TICK).saturating_add(jitter(after / 4));
                    ticket_checks.insert(token.to_owned(), later(Instant::now(), wait));
                    log::trace!("redis-mutex: waiter {token} looks again at {name} unless granted first");
                }
            }
            None => log::debug!("redis-mutex: ignored a message the notifier does not know: {payload:?}"),
        }
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn messages_parse_and_names_may_hold_spaces() {
        assert_eq!(
            Message::parse("!tok 17 3 1 job 42"),
            Some(Message::Granted { name: "job 42", token: "tok", fence: 17, mark: 3, acks: 1 })
        );
        assert_eq!(
            Message::parse("@1000 a:b"),
            Some(Message::LookAgain { name: "a:b", after: Duration::from_millis(1000) })
        );
        assert_eq!(Message::parse("*é x"), Some(Message::Forced { name: "é x" }));
        assert_eq!(Message::parse("-tok job 7"), Some(Message::Released { name: "job 7", token: "tok" }));
        assert_eq!(Message::parse("^a,b job 7"), Some(Message::Admitted { name: "job 7", tokens: "a,b" }));
        assert_eq!(
            Message::parse("~1000 tok job 7"),
            Some(Message::Recheck { name: "job 7", token: "tok", after: Duration::from_millis(1000) })
        );
        for bad in [
            "",
            ">x",
            "!tok",
            "!tok x 1 0 job",
            "!tok 1 job",
            "!tok 1 2 x job",
            "@x job",
            "@1000",
            "^a",
            "~x t j",
            "-tok",
        ] {
            assert_eq!(Message::parse(bad), None, "{bad:?}");
        }
    }
}
