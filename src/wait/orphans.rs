//! Acquisitions nobody knows of: a request that may have made a token the owner in
//! Redis, but whose reply was lost (a read timeout after the script ran, a broken
//! connection), so the caller got an error and nobody renews or releases the lock.
//! Left alone, such a lock would be held for a whole lease. The client remembers the
//! token and releases it, owner-checked, as soon as Redis answers again; the watchdog
//! thread does it (`Core::release_orphans`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::clock::later;
use crate::keys::LockKeys;
use crate::sync::lock;

/// Most tokens remembered at once: each failed request adds one, and during a long
/// outage with many `try_lock` calls the list must not grow without bound. Past it the
/// oldest is forgotten (its lock then ends with its lease, as before).
const MAX: usize = 10_000;

/// A token that may own its lock without anyone knowing.
#[derive(Debug)]
pub(crate) struct Orphan {
    pub keys: LockKeys,
    pub token: String,
    pub lease_ms: u64,
    /// After this the lease has run out anyway: nothing left to release.
    expires: Instant,
    next_try: Instant,
    backoff: Backoff,
}

impl Orphan {
    /// Schedules another try after a failed one; `false` once the lease is over.
    pub fn retry(&mut self, now: Instant) -> bool {
        self.next_try = later(now, self.backoff.next_delay().max(Duration::from_millis(20)));
        self.next_try < self.expires
    }
}

/// The tokens to release.
#[derive(Debug, Default)]
pub(crate) struct Orphans {
    list: Mutex<Vec<Orphan>>,
}

impl Orphans {
    /// Remembers that `token` may own `keys`'s lock for up to `lease_ms` from now.
    pub fn add(&self, keys: &LockKeys, token: &str, lease_ms: u64) {
        let now = Instant::now();
        let orphan = Orphan {
            keys: keys.clone(),
            token: token.to_owned(),
            lease_ms,
            expires: later(now, Duration::from_millis(lease_ms)),
            next_try: now,
            backoff: Backoff::new(),
        };
        let mut list = lock(&self.list);
        if list.len() >= MAX {
            let forgotten = list.remove(0);
            log::warn!(
                "redis-mutex: too many acquisitions with lost replies; {} stays locked until its lease ends",
                forgotten.keys.key
            );
        }
        log::debug!("redis-mutex: the reply to an acquisition of {} was lost; will release it", keys.key);
        list.push(orphan);
    }

    /// Takes out the tokens due for a try at `now` (those whose lease is over are
    /// dropped).
    pub fn due(&self, now: Instant) -> Vec<Orphan> {
        let mut list = lock(&self.list);
        list.retain(|o| o.expires > now);
        let (due, rest) = std::mem::take(&mut *list).into_iter().partition(|o| o.next_try <= now);
        *list = rest;
        due
    }

    /// Puts back a token whose release failed (see [`Orphan::retry`]).
    pub fn put_back(&self, orphan: Orphan) {
        lock(&self.list).push(orphan);
    }

    /// When the next try is due, if any token is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        lock(&self.list).iter().map(|o| o.next_try).min()
    }

    /// Tokens remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.list).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> LockKeys {
        LockKeys::new("t", "job").unwrap()
    }

    #[test]
    fn an_orphan_is_due_at_once_then_after_a_backoff_until_its_lease_ends() {
        let o = Orphans::default();
        o.add(&keys(), "tok", 60_000);
        let now = Instant::now();
        let mut due = o.due(now);
        assert_eq!(due.len(), 1);
        assert_eq!(o.next_due(), None);
        let mut orphan = due.pop().unwrap();
        assert!(orphan.retry(now));
        o.put_back(orphan);
        assert!(o.due(now).is_empty(), "not again at once");
        assert!(o.next_due().unwrap() > now);
        assert_eq!(o.due(now + Duration::from_secs(1)).len(), 1);
    }

    #[test]
    fn an_orphan_whose_lease_is_over_is_forgotten() {
        let o = Orphans::default();
        o.add(&keys(), "tok", 1);
        assert!(o.due(Instant::now() + Duration::from_millis(5)).is_empty());
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn the_list_is_bounded() {
        let o = Orphans::default();
        for i in 0..MAX + 5 {
            o.add(&keys(), &i.to_string(), 60_000);
        }
        assert_eq!(o.len(), MAX);
    }
}
