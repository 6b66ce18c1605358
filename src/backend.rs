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
    /// With fencing, the fencing tokens one acquisition takes (the first is its own,
    /// the rest go to in-process handoffs, see `wait::Core::hand_over_locally`); 0
    /// without fencing.
    pub fence_span: u64,
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
    /// Free, but reserved for another waiting client for at most this much longer
    /// (see `LockClientBuilder::reservation_timeout`).
    Reserved { remaining: Option<Duration> },
}

/// One release's request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReleaseArgs<'a> {
    pub token: &'a str,
    /// The releasing tenure's lease: a lock passed to another client keeps its queue
    /// that long.
    pub lease_ms: u64,
    /// In-process handoffs the releasing tenure made: they count towards this client's
    /// turn (see `handoff_limit`).
    pub local_handoffs: u32,
    /// A client's turn while others wait: at most this many handoffs after its first
    /// acquisition, then the lock passes to the client that has waited longest.
    pub limit: u32,
    /// With fencing, the fencing tokens a handoff takes (see `AttemptArgs::fence_span`).
    pub fence_span: u64,
    /// A waiting thread of this client to hand the lock to.
    pub handoff: Option<&'a HandoffTarget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Deleted: no other client was queued for it.
    Deleted,
    /// Ownership passed to the handoff target. `turn`: the acquisitions of this
    /// client's turn before it (0 when no other client waits).
    Handed { fence: u64, turn: u32 },
    /// Reserved for the client that has waited longest, which was told to take it;
    /// this client queues behind the others if it was given a handoff target.
    Passed,
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
    /// Whether someone is waiting for the lock (a thread of the holder's client, or
    /// another client queued for it).
    pub contended: bool,
}

pub(crate) trait Backend: Send + Sync + 'static {
    fn attempt(&self, keys: &LockKeys, args: AttemptArgs<'_>) -> Result<Attempt>;
    /// Releases the caller's lock: hands it to `handoff` (a waiter of this client)
    /// unless another client is queued and this client's turn is over, else passes it
    /// to the first queued client, else deletes it.
    fn release(&self, keys: &LockKeys, args: ReleaseArgs<'_>) -> Result<Released>;
    /// This client has no waiter left for the lock: take it out of the lock's queue of
    /// waiting clients, passing on a reservation made for it.
    fn leave(&self, keys: &LockKeys) -> Result<()>;
    /// Extends every `(keys, token, lease_ms)` whose token still owns its lock, in as
    /// few round trips as the backend allows. The outer error fails the whole batch
    /// (connection); per item, `true` when still owned and extended, `false` when not
    /// owned, or that item's own error (e.g. `WrongType`: its key was overwritten),
    /// which leaves the other items unharmed.
    fn extend(&self, items: &[(&LockKeys, &str, u64)]) -> Result<Vec<Result<bool>>>;
    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>>;
    /// Deletes the lock whoever holds it and wakes every client's waiters.
    fn force_unlock(&self, keys: &LockKeys) -> Result<bool>;
}
