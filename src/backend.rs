//! The seam between the waiting protocol and a Redis deployment.
//!
//! A backend supplies the three scripted operations on one lock plus a few reads; the
//! waiting logic in `wait.rs` is written against this trait only, so it is tested
//! with an in-memory backend (`wait::tests`) and later serves Sentinel, Cluster and
//! Redlock backends unchanged. Release notifications reach the waiter registry from
//! the backend's own notifier (for a single server, `notifier.rs`).

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::keys::LockKeys;
use crate::registry::HandoffTarget;

/// One acquire attempt's request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptArgs<'a> {
    pub token: &'a str,
    pub lease_ms: u64,
    pub fencing: bool,
    /// Mark the holder as waited-for, so its release publishes. `try_lock` doesn't.
    pub will_wait: bool,
    /// The caller's deadline: no wait for a pooled connection outlasts it.
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Acquired; the fence value is 0 without fencing.
    Acquired { fence: u64 },
    /// Someone else holds it, for at most this much longer (`None`: no expiry set).
    Held { remaining: Option<Duration> },
    /// Reserved for other clients for at most this much longer, after this client
    /// released it to everyone (see `LockClientBuilder::fairness_window`).
    Reserved { remaining: Option<Duration> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Deleted; `published` when a waiter had marked it and a release message went out
    /// with this client's id (its own notifier ignores it).
    Deleted { published: bool },
    /// Ownership passed to the handoff target.
    Handed { fence: u64 },
    /// Released to the other clients (reserved against this one for a moment),
    /// because they waited through the handoff limit.
    ReservedForOthers,
    /// The caller was not the owner (lease ran out, force-unlocked, handed on).
    NotOwner,
}

/// The current holder, as far as Redis knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder's owner token.
    pub token: String,
    /// Lease left, or `None` if the key has no expiry (someone removed it by hand).
    pub remaining_lease: Option<Duration>,
    /// Whether someone tried to take the lock while this holder had it.
    pub contended: bool,
}

pub(crate) trait Backend: Send + Sync + 'static {
    fn attempt(&self, keys: &LockKeys, args: AttemptArgs<'_>) -> Result<Attempt>;
    fn release(&self, keys: &LockKeys, token: &str, handoff: Option<&HandoffTarget>) -> Result<Released>;
    /// Extends every `(keys, token, lease_ms)` whose token still owns its lock, in as
    /// few round trips as the backend allows; `true` per item that is still owned.
    fn extend(&self, items: &[(&LockKeys, &str, u64)]) -> Result<Vec<bool>>;
    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>>;
    /// Deletes the lock whoever holds it and wakes every client's waiters.
    fn force_unlock(&self, keys: &LockKeys) -> Result<bool>;
}
