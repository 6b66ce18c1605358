//! What a backend cannot keep, refused before any I/O (see `Backend::max_lease`,
//! `Backend::refuses`).

use super::{Core, Want};
use crate::backend::Capability;
use crate::error::{Error, Result};

impl Core {
    /// Refuses, before any I/O, what the backend cannot keep: a lease longer than it
    /// accepts (`redlock_max_lease`), `wait_replicas` where there are no replicas to
    /// wait for (Redlock's masters are independent).
    pub fn check(&self, want: &Want) -> Result<()> {
        self.check_lease(want.lease_ms)?;
        if want.replicas.is_some()
            && let Some(why) = self.backend.refuses(Capability::WaitReplicas)
        {
            return Err(Error::InvalidOption { option: "wait_replicas", reason: why.to_owned() });
        }
        Ok(())
    }

    /// Refuses a lease longer than the backend accepts.
    pub fn check_lease(&self, lease_ms: u64) -> Result<()> {
        match self.backend.max_lease() {
            Some(max) if u128::from(lease_ms) > max.as_millis() => Err(Error::InvalidOption {
                option: "lease",
                reason: format!(
                    "{lease_ms} ms is longer than the client's redlock_max_lease ({max:?}): a master that \
                     restarted sits out of quorums for that long, which must outlast every lease"
                ),
            }),
            _ => Ok(()),
        }
    }
}
