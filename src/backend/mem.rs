//! An in-memory backend for the waiting protocol's unit tests: Redis's side of the
//! scripts for one client, with no server. It can be told to fail attempts (an outage),
//! how many replicas acknowledge (`wait_replicas`), and whether it
//! [`grants`](Backend::grants).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Attempt, AttemptArgs, Backend, Capability, Listen, ReleaseArgs, Released, Renewal, Replicas};
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::keys::LockKeys;

struct Lock {
    owner: String,
    expires: Instant,
    waited: bool,
}

pub(crate) struct MemBackend {
    locks: Mutex<HashMap<String, Lock>>,
    fences: Mutex<HashMap<String, u64>>,
    /// Fail this many attempts with a connection error first.
    pub fail_attempts: AtomicU32,
    /// Replicas that acknowledge each write (all, unless set).
    pub acks: AtomicU32,
    grants: bool,
    /// Vouches for each lease less this much (as Redlock does for clock drift).
    pub drift_ms: u64,
    /// The longest lease it accepts.
    pub max_lease: Option<Duration>,
    /// Refuses every `Capability`, as Redlock does.
    pub quorum_like: bool,
    /// The subscriber connection it offers waiting threads (`Backend::line`).
    pub line: Option<std::sync::Arc<dyn Listen>>,
}

impl Default for MemBackend {
    fn default() -> Self {
        MemBackend::new(true)
    }
}

impl MemBackend {
    /// A backend that hands the lock to a waiter on release (`grants`), or one that
    /// only deletes it and lets the waiters compete (as Redlock will).
    pub fn new(grants: bool) -> MemBackend {
        MemBackend {
            locks: Mutex::default(),
            fences: Mutex::default(),
            fail_attempts: AtomicU32::new(0),
            acks: AtomicU32::new(u32::MAX),
            grants,
            drift_ms: 0,
            max_lease: None,
            quorum_like: false,
            line: None,
        }
    }

    /// The error a write `replicas` asks for gets, if too few acknowledge it.
    fn short(&self, keys: &LockKeys, replicas: Option<Replicas>) -> Option<Error> {
        let (r, got) = (replicas?, self.acks.load(Ordering::SeqCst));
        (got < r.count).then(|| Error::ReplicasNotAcknowledged {
            key: keys.key.clone(),
            wanted: r.count,
            got,
            timeout: Duration::from_millis(r.timeout_ms),
        })
    }

    fn take_fence(&self, keys: &LockKeys, span: u64) -> u64 {
        let mut f = self.fences.lock().unwrap();
        let v = f.entry(keys.key.clone()).or_default();
        *v += span;
        *v - span + 1
    }
}

fn conn_error() -> Error {
    Error::Connection(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down")))
}

impl Backend for MemBackend {
    fn grants(&self) -> bool {
        self.grants
    }

    fn attempt(&self, keys: &LockKeys, a: AttemptArgs<'_>) -> Result<Attempt> {
        if self.fail_attempts.load(Ordering::SeqCst) > 0 {
            self.fail_attempts.fetch_sub(1, Ordering::SeqCst);
            return Err(conn_error());
        }
        let mut locks = self.locks.lock().unwrap();
        let now = Instant::now();
        if let Some(l) = locks.get_mut(&keys.key).filter(|l| l.expires > now) {
            if l.owner == a.token {
                return Ok(Attempt::Acquired { fence: 0 });
            }
            l.waited |= a.will_wait;
            return Ok(Attempt::Held { remaining: Some(l.expires - now) });
        }
        let fence = if a.fence_span > 0 { self.take_fence(keys, a.fence_span) } else { 0 };
        if let Some(why) = self.short(keys, a.replicas) {
            // Acquired, then released again: as if it never was.
            return Err(why);
        }
        let expires = now + Duration::from_millis(a.lease_ms);
        locks.insert(keys.key.clone(), Lock { owner: a.token.into(), expires, waited: false });
        Ok(Attempt::Acquired { fence })
    }

    fn release(&self, keys: &LockKeys, a: ReleaseArgs<'_>) -> Result<Released> {
        assert!(self.grants || a.handoff.is_none(), "a handoff asked of a backend that cannot grant");
        let mut locks = self.locks.lock().unwrap();
        match locks.get_mut(&keys.key) {
            Some(l) if l.owner == a.token && l.expires > Instant::now() => {
                // One client: nobody else waits, so there is no turn to count.
                if let Some(t) = a.handoff {
                    if self.short(keys, t.replicas).is_some() {
                        locks.remove(&keys.key);
                        return Ok(Released::Unacknowledged);
                    }
                    l.owner = t.token.clone();
                    l.expires = Instant::now() + Duration::from_millis(t.lease_ms);
                    let fence = if t.fencing { self.take_fence(keys, a.fence_span) } else { 0 };
                    return Ok(Released::Handed { fence, turn: 0 });
                }
                locks.remove(&keys.key);
                Ok(Released::Deleted)
            }
            _ => Ok(Released::NotOwner),
        }
    }

    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
        let mut locks = self.locks.lock().unwrap();
        Ok(items
            .iter()
            .map(|(k, t, ms)| match locks.get_mut(&k.key) {
                Some(l) if l.owner == *t && l.expires > Instant::now() => {
                    l.expires = Instant::now() + Duration::from_millis(*ms);
                    Ok(true)
                }
                _ => Ok(false),
            })
            .collect())
    }

    fn extend_acknowledged(&self, keys: &LockKeys, token: &str, lease_ms: u64, replicas: Replicas) -> Result<bool> {
        let owned = self.extend(&[(keys, token, lease_ms)])?.remove(0)?;
        match self.short(keys, Some(replicas)) {
            Some(why) if owned => Err(why),
            _ => Ok(owned),
        }
    }

    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        let locks = self.locks.lock().unwrap();
        Ok(locks.get(&keys.key).filter(|l| l.expires > Instant::now()).map(|l| Holder {
            token: l.owner.clone(),
            remaining_lease: Some(l.expires - Instant::now()),
            contended: l.waited,
            client_id: None,
            waiting_clients: Vec::new(),
        }))
    }

    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        Ok(self.locks.lock().unwrap().remove(&keys.key).is_some())
    }

    fn leave(&self, _: &LockKeys) -> Result<()> {
        Ok(())
    }

    fn vouched_ms(&self, lease_ms: u64) -> u64 {
        lease_ms.saturating_sub(self.drift_ms)
    }

    fn max_lease(&self) -> Option<Duration> {
        self.max_lease
    }

    fn refuses(&self, _: Capability) -> Option<&'static str> {
        self.quorum_like.then_some("a quorum of independent masters cannot offer it")
    }
    fn line(&self) -> Option<&dyn Listen> {
        self.line.as_deref()
    }
}

/// A backend a test keeps a handle on (to change `acks` or `fail_attempts` while the
/// core uses it).
impl<B: Backend> Backend for std::sync::Arc<B> {
    fn grants(&self) -> bool {
        (**self).grants()
    }
    fn attempt(&self, keys: &LockKeys, a: AttemptArgs<'_>) -> Result<Attempt> {
        (**self).attempt(keys, a)
    }
    fn release(&self, keys: &LockKeys, a: ReleaseArgs<'_>) -> Result<Released> {
        (**self).release(keys, a)
    }
    fn leave(&self, keys: &LockKeys) -> Result<()> {
        (**self).leave(keys)
    }
    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
        (**self).extend(items)
    }
    fn extend_acknowledged(&self, keys: &LockKeys, token: &str, lease_ms: u64, replicas: Replicas) -> Result<bool> {
        (**self).extend_acknowledged(keys, token, lease_ms, replicas)
    }
    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        (**self).holder(keys)
    }
    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        (**self).force_unlock(keys)
    }
    fn vouched_ms(&self, lease_ms: u64) -> u64 {
        (**self).vouched_ms(lease_ms)
    }
    fn max_lease(&self) -> Option<Duration> {
        (**self).max_lease()
    }
    fn refuses(&self, c: Capability) -> Option<&'static str> {
        (**self).refuses(c)
    }
    fn line(&self) -> Option<&dyn Listen> {
        (**self).line()
    }
}
