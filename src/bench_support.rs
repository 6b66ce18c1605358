//! Not part of the API (hidden, no compatibility promise): what `benches/micro.rs`
//! needs to measure the crate against its floor, the same script calls sent by hand
//! on one held connection. Built from the backend's own argument structs and script
//! calls, so that a change to a script or its arguments cannot leave the floor
//! measuring something else.

use crate::backend::single::scripts::{Releaser, Scripts};
use crate::backend::{AttemptArgs, ReleaseArgs};
use crate::keys::{Channels, LockKeys};

/// The calls of one uncontended `lock()` + drop, and of a `try_lock` on a held lock,
/// with a client's default options (30 s lease, no fencing, `handoff_limit` 8,
/// `reservation_timeout` 1 s).
pub struct Floor {
    scripts: Scripts,
    keys: LockKeys,
    client_id: String,
    channels: Channels,
}

impl Floor {
    /// The floor for lock `name` under `prefix`, as client `client_id`.
    ///
    /// # Panics
    ///
    /// On a lock name or prefix the crate refuses.
    pub fn new(prefix: &str, name: &str, client_id: &str) -> Floor {
        let keys = LockKeys::new(prefix, name).expect("a valid lock name");
        let channels = Channels::new(prefix, 0, client_id);
        Floor { scripts: Scripts::new(), keys, client_id: client_id.to_owned(), channels }
    }

    /// The acquire script as `lock()` (`will_wait`) or `try_lock` sends it; `true`
    /// when it acquired.
    pub fn attempt(&self, con: &mut redis::Connection, token: &str, will_wait: bool) -> redis::RedisResult<bool> {
        let args =
            AttemptArgs { token, lease_ms: 30_000, fence_span: 0, will_wait, deadline: None, mark: 1, replicas: None };
        let v = self.scripts.attempt(&self.keys, &args, &self.client_id).invoke(con)?;
        Ok(matches!(Scripts::attempt_reply(&v), Ok(crate::backend::Attempt::Acquired { .. })))
    }

    /// The release script as a guard's drop sends it with nobody waiting; `true` when
    /// it deleted the lock.
    pub fn release(&self, con: &mut redis::Connection, token: &str) -> redis::RedisResult<bool> {
        let args = ReleaseArgs {
            token,
            lease_ms: 30_000,
            local_handoffs: 0,
            limit: 8,
            fence_span: 9,
            handoff: None,
            mark: 0,
            replicas: None,
        };
        // As the backend does: a fresh token per release, for a grant.
        let grant_token = uuid::Uuid::new_v4().to_string();
        let from = Releaser {
            client_id: &self.client_id,
            clients: &self.channels.clients_of(&self.keys.name),
            publish: self.channels.publish(),
            grant_token: &grant_token,
            grant_ms: 1_000,
        };
        let v = self.scripts.release(&self.keys, &args, &from, false).invoke(con)?;
        Ok(matches!(Scripts::release_reply(&v), Ok(crate::backend::Released::Deleted)))
    }
}
