//! Which waiting thread reads the backend's subscriber connection itself (see
//! `backend::Listen` and ARCHITECTURE.md, "A waiter reads its own messages"): the
//! first waiter of a lock no tenure of its client holds. [`Holding`] counts those
//! tenures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Core;
use super::registry::{WaitHandle, Woken};
use crate::keys::LockKeys;
use crate::sync::lock;

/// Per lock name, the mutex tenures alive in this client.
#[derive(Default)]
pub(crate) struct Holding(Mutex<HashMap<Arc<str>, usize>>);

impl Holding {
    /// Counts a tenure of `name` alive until the mark is dropped (with the tenure).
    pub fn mark(self: &Arc<Self>, name: &Arc<str>) -> HeldHere {
        *lock(&self.0).entry(name.clone()).or_default() += 1;
        HeldHere { holding: self.clone(), name: name.clone() }
    }

    /// Whether a tenure of `name` is alive in this client.
    pub fn any(&self, name: &str) -> bool {
        lock(&self.0).contains_key(name)
    }
}

/// A tenure of this client alive (see [`Holding::mark`]).
pub(crate) struct HeldHere {
    holding: Arc<Holding>,
    name: Arc<str>,
}

impl std::fmt::Debug for HeldHere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HeldHere").field(&self.name).finish()
    }
}

impl Drop for HeldHere {
    fn drop(&mut self) {
        let mut held = lock(&self.holding.0);
        if let Some(n) = held.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.name);
            }
        }
    }
}

impl Core {
    /// The first waiter of `keys` reads the backend's subscriber connection itself
    /// while it sleeps, when it can: the message that ends its wait wakes it directly,
    /// not the subscriber's thread first. Only while no tenure of the lock lives in
    /// this client: a thread of its own may then release it to this one in memory,
    /// which wakes it on its slot, not on the connection it reads. `None`: it sleeps on
    /// its slot.
    pub(super) fn listen(&self, waiter: &WaitHandle, keys: &LockKeys, until: Instant) -> Option<Woken> {
        let line = self.backend.line()?;
        if self.holding.any(&keys.name) {
            return None;
        }
        waiter.listen_until(line, until)
    }
}
