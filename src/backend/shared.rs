//! The seam for read-write locks and semaphores: what a backend that can hold their
//! state on one master offers ([`SharedBackend`]), reached through
//! [`Backend::shared`](super::Backend::shared).
//!
//! Both are one protocol: *holders* with a lease each (the readers of a read-write lock,
//! the permits of a semaphore, each under its own token), at most one *writer*, and a
//! FIFO *queue* of waiting threads, fleet-wide, one entry per waiting thread (its
//! token). A release or an attempt that finds room *grants* the lock to the waiters at
//! the head of the queue in the same step (a writer alone, or every reader up to the
//! next writer, or as many as there are free permits) with a short lease, and tells
//! their clients; the waiting thread returns without a request of its own.
//! Renewals go through [`Backend::extend`](super::Backend::extend), which tells the
//! primitives apart by their keys' [`Kind`](crate::keys::Kind).

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::keys::LockKeys;

/// What an acquisition wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A reader of a read-write lock, or a permit of a semaphore: shares the lock with
    /// others of its side, up to `permits`.
    Shared,
    /// A writer of a read-write lock: alone.
    Exclusive,
}

/// One attempt's request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedArgs<'a> {
    pub token: &'a str,
    pub lease_ms: u64,
    pub side: Side,
    /// A semaphore's permit count (checked against the one it is in use with); 0 for a
    /// read-write lock (readers are not counted).
    pub permits: u32,
    /// Queue the caller if it is not admitted at once. `try_*` do not.
    pub will_wait: bool,
    /// How long the caller's queue entry lasts without another attempt of its (longer
    /// than the caller sleeps between attempts): a waiter that vanished leaves the
    /// queue by itself.
    pub entry_ms: u64,
    /// The caller's deadline: no wait for a pooled connection outlasts it.
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedAttempt {
    /// The caller holds it now, with the lease it asked for.
    Acquired,
    /// Not admitted (queued with `will_wait`). Something ends by itself within
    /// `remaining` at the latest: the first holder's lease, or a grant to a waiter
    /// ahead that may not be taken (`None`: nothing ends by itself).
    Waiting { remaining: Option<Duration> },
}

/// What became of a waiter that left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedLeave {
    /// It was not queued (any more).
    Gone,
    /// It was queued, and left.
    Left,
    /// The lock had been granted to it meanwhile: released again (passed on).
    ReleasedGrant,
}

/// Grants a request made to waiting threads of the caller's own client. They are not
/// announced on its channel: the caller wakes them itself, so a release inside one
/// process costs no message (and no hop through the subscriber thread). When the reply
/// is lost, the caller wakes every thread of the client waiting for the lock, and
/// each finds out by its next attempt. Also what the request saw of the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LocalGrants {
    pub tokens: Vec<String>,
    /// The grants' short lease (`reservation_timeout`).
    pub lease_ms: u64,
    /// A thread of another client was queued when the request ran: this client's
    /// readers stop joining its read shares in memory (writer preference).
    pub others_queued: bool,
}

/// Read-write locks and semaphores on a backend that keeps them on one master.
pub(crate) trait SharedBackend: Send + Sync {
    /// One attempt: acquires if admitted now (no writer, nobody queued ahead, a permit
    /// free), else queues the caller with `will_wait`. Grants to the waiters it finds
    /// admissible at the head of the queue first (an expired holder frees room, which
    /// nothing announces).
    ///
    /// # Errors
    ///
    /// `Error::PermitsMismatch` when the semaphore is in use with another count.
    fn attempt(&self, keys: &LockKeys, args: SharedArgs<'_>) -> Result<(SharedAttempt, LocalGrants)>;
    /// Releases what `token` holds (a reader, the writer, a permit) and grants to the
    /// waiters it lets in; `false` when `token` held nothing (its lease ran out).
    fn release(&self, keys: &LockKeys, token: &str) -> Result<(bool, LocalGrants)>;
    /// The waiter `token` gives up: out of the queue, and a grant made to it meanwhile
    /// is released (passed on).
    fn leave(&self, keys: &LockKeys, token: &str) -> Result<(SharedLeave, LocalGrants)>;
    /// Whether `token` holds the lock now (its lease not run out).
    fn holds(&self, keys: &LockKeys, token: &str) -> Result<bool>;
    /// A semaphore's free permits now (`permits` minus the permits held).
    ///
    /// # Errors
    ///
    /// `Error::PermitsMismatch` as for [`attempt`](Self::attempt).
    fn available(&self, keys: &LockKeys, permits: u32) -> Result<u32>;
}
