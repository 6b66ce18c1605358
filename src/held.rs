//! What the guards of read-write locks and semaphores share: one lease of one token
//! in Redis (a reader, the writer, or a permit), renewed by the watchdog, released on
//! drop; and the checks their handles make before any I/O.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Stamp;
use crate::error::{Error, Result};
use crate::keys::{Kind, LockKeys};
use crate::options::{MAX_LEASE, MutexOptions};
use crate::wait::{Core, Hold, SharedWant, Side, Tenure};

/// A handle's keys and what each acquisition asks, once checked (a name or option that
/// cannot be used is reported by every acquiring call, before any I/O).
pub(crate) fn checked(
    prefix: &str,
    name: &str,
    kind: Kind,
    options: &MutexOptions,
    permits: u32,
) -> Result<(LockKeys, SharedWant)> {
    let keys = LockKeys::shared(prefix, name, kind)?;
    let lease_ms = options.lease_ms()?;
    let what = if kind == Kind::RwLock { "a RwLock" } else { "a Semaphore" };
    if options.get_fencing() {
        return Err(Error::InvalidOption {
            option: "fencing",
            reason: format!(
                "{what} issues no fencing tokens (readers and permits are many at once); use a Mutex with \
                 fencing for a resource that checks them"
            ),
        });
    }
    if options.get_wait_replicas().is_some() {
        return Err(Error::InvalidOption {
            option: "wait_replicas",
            reason: format!("{what} does not wait for replicas (only a Mutex does); leave the option out"),
        });
    }
    if kind == Kind::Semaphore && permits == 0 {
        return Err(Error::InvalidOption {
            option: "permits",
            reason: "a semaphore of 0 permits could never be acquired; give at least 1".to_owned(),
        });
    }
    let want = SharedWant { side: Side::Shared, permits, lease_ms, auto_renew: options.get_auto_renew() };
    Ok((keys, want))
}

/// One reader, writer or permit held in Redis. Dropping it releases it.
pub(crate) struct Held {
    core: Arc<Core>,
    tenure: Arc<Tenure>,
    released: bool,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("key", &self.tenure.keys.key)
            .field("token", &self.tenure.token)
            .field("lost", &self.tenure.is_lost())
            .finish()
    }
}

impl Held {
    pub fn new(core: Arc<Core>, hold: Hold) -> Held {
        Held { core, tenure: hold.tenure, released: false }
    }

    pub fn token(&self) -> &str {
        &self.tenure.token
    }

    pub fn is_lost(&self) -> bool {
        self.tenure.is_lost()
    }

    pub fn remaining_lease(&self) -> Duration {
        self.tenure.confirmed_remaining(Stamp::now())
    }

    pub fn is_held(&self) -> Result<bool> {
        self.core.is_held(&self.tenure)
    }

    pub fn extend(&self, lease: Duration) -> Result<()> {
        if lease < Duration::from_millis(1) || lease > MAX_LEASE {
            return Err(Error::InvalidOption {
                option: "lease",
                reason: format!("{lease:?} is outside 1 ms ..= {MAX_LEASE:?}"),
            });
        }
        self.core.extend(&self.tenure, lease.as_millis() as u64)
    }

    pub fn unlock(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        self.core.release_shared(&self.tenure)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::warn!("redis-mutex: releasing {} on drop failed: {e}", self.tenure.keys.key);
        }
    }
}
