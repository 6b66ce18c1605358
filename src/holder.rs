//! What Redis knows of a lock's current holder ([`Mutex::holder`](crate::Mutex::holder)).

use std::time::Duration;

/// The current holder of a lock, as far as Redis knows: for diagnostics and operators'
/// tools, not for deciding who may enter (use the guard for that).
///
/// New fields may be added: match it with `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's owner token (see [`MutexGuard::token`](crate::MutexGuard::token)).
    pub token: String,
    /// Lease left, or `None` if the key has no expiry (someone removed it by hand).
    pub remaining_lease: Option<Duration>,
    /// Whether someone is waiting for the lock (a thread of the holder's client, or
    /// another client queued for it).
    pub contended: bool,
    /// The id of the holder's client ([`LockClient::id`](crate::LockClient::id)), or
    /// `None` when the lock does not say (written by hand, or by another backend).
    /// Its connections are named `redis-mutex:<id>` in `CLIENT LIST`, which shows
    /// their addresses.
    pub client_id: Option<String>,
    /// The ids of the *other* clients queued for the lock, the longest-waiting first:
    /// the order in which they will get it. Waiting threads of the holder's own client
    /// are not listed (the lock reaches them inside that client); `contended` is
    /// `true` for them too.
    pub waiting_clients: Vec<String>,
}
