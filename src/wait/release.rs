//! The release decision, and the requests a holder makes of its tenure (`extend`,
//! `is_held`).

use std::sync::Arc;

use super::registry::Grant;
use super::{Core, Tenure};
use crate::backend::{ReleaseArgs, ReleaseSink, Released, Replicas};
use crate::clock::Stamp;
use crate::error::{Error, Result};
use crate::keys::LockKeys;
use crate::stats::bump;

impl Core {
    /// Hands the lock `tenure` holds to the first waiting thread of this client without
    /// a round trip: the lock stays this client's in Redis under the same token, and the
    /// waiter takes over the tenure and its renewal. Only
    /// - between acquisitions alike (same lease and fencing, renewed by the watchdog);
    /// - while Redis confirmed the lease within its renewal period (`Tenure::is_fresh`):
    ///   a process that stalled past its lease, or lost touch with Redis, asks Redis
    ///   before anyone else relies on the lock;
    /// - at most `handoff_limit` times per tenure, and per turn of this client counted
    ///   on from the tenure's `turn_base`: then a release through Redis notices a lost
    ///   lock and lets a queued client have its turn.
    ///
    /// No `WAIT` (`wait_replicas`): nothing changes in Redis, and the tenure's
    /// acquisition was acknowledged by the replicas the waiter asks for (acquisitions
    /// alike ask for the same).
    ///
    /// With fencing, the k-th handoff gets the tenure's fencing token + k, from the
    /// block its acquisition took (see `fence_span`). `false` when it did not hand over
    /// (the caller then releases through Redis).
    pub(super) fn hand_over_locally(&self, tenure: &Arc<Tenure>) -> bool {
        let turn = tenure.turn_base.saturating_add(tenure.local_handoffs());
        if !tenure.may_pass_on(turn, self.settings.handoff_limit, Stamp::now()) {
            return false;
        }
        let Some(claim) = self.registry.claim_first(&tenure.keys.name) else { return false };
        let t = claim.target();
        if t.fencing != tenure.fence_base.is_some()
            || !t.auto_renew
            || t.lease_ms != tenure.lease_ms()
            || t.replicas != tenure.replicas
        {
            return false;
        }
        let k = tenure.count_local_handoff();
        let fence = tenure.fence_base.map_or(0, |base| base + u64::from(k));
        claim.grant_tenure(tenure.clone(), fence);
        bump(&self.stats.releases);
        bump(&self.stats.handoffs);
        bump(&self.stats.local_handoffs);
        log::trace!("redis-mutex: handed {} to a waiting thread, keeping the tenure", tenure.keys.key);
        true
    }

    /// Releases the lock a guard holds: the whole release decision. A waiting thread of
    /// this client takes over the tenure in memory when it may (`hand_over_locally`);
    /// otherwise the tenure ends here (its renewal stops before the release is sent)
    /// and the backend hands the lock to a waiting thread, passes it to the next
    /// waiting client, or deletes it.
    ///
    /// # Errors
    ///
    /// `LockLost` when the tenure was found lost or Redis no longer lists its token;
    /// Redis failures (the lock then ends with its lease).
    pub fn release(&self, tenure: &Arc<Tenure>) -> Result<()> {
        if self.hand_over_locally(tenure) {
            return Ok(());
        }
        // No renewal may start once the release is on its way.
        self.watchdog.deregister(tenure);
        let lost = || Error::LockLost { key: tenure.keys.key.clone() };
        if tenure.is_lost() {
            return Err(lost());
        }
        let args = ReleaseArgs {
            token: &tenure.token,
            lease_ms: tenure.lease_ms(),
            local_handoffs: tenure.local_handoffs(),
            limit: self.settings.handoff_limit,
            fence_span: self.fence_span(true),
            handoff: None,
            mark: 0,
            replicas: tenure.replicas,
        };
        match self.release_through_backend(&tenure.keys, args) {
            Ok(()) => {
                bump(&self.stats.releases);
                Ok(())
            }
            Err(e) if e.is_lock_lost() => {
                tenure.mark_lost(&self.stats, &self.registry, "the release found another owner or no lock");
                Err(lost())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the release: with the first waiting thread of this client as the one to
    /// hand the lock to, when the backend grants. (If the client's turn is over, the
    /// release queues it again behind the others, so it counts as queueing.)
    pub(super) fn release_through_backend(&self, keys: &LockKeys, args: ReleaseArgs<'_>) -> Result<()> {
        let claim = if self.backend.grants() { self.registry.claim_first(&keys.name) } else { None };
        let sent = Stamp::now();
        let epoch = self.registry.server_changes();
        let mark = if claim.is_some() { self.registry.queueing(&keys.name, sent) } else { 0 };
        let args = ReleaseArgs { handoff: claim.as_ref().map(|c| c.target()), mark, ..args };
        let outcome = self.backend.release(keys, args);
        let queued = match &outcome {
            // This client holds it, or nobody waits.
            Ok(Released::Handed { .. } | Released::Deleted) => false,
            // Passed on: queued again behind the others only with a waiter of its own.
            Ok(Released::Passed) => claim.is_some(),
            Ok(Released::NotOwner | Released::Unacknowledged) | Err(_) => true,
        };
        if !queued {
            self.registry.dequeued(&keys.name);
        }
        match outcome {
            Ok(Released::Handed { fence, turn }) => {
                bump(&self.stats.handoffs);
                if let Some(claim) = claim {
                    claim.grant(Grant { fence, at: sent, turn, epoch, from_another_client: None });
                }
                log::debug!("redis-mutex: handed {} to a waiting thread", keys.key);
                Ok(())
            }
            Ok(Released::Passed) => {
                // The next client in the queue was told to take it. With a claim, the
                // script queued this client behind the others: its turn is announced the
                // same way. Without one, a waiter that registered after `claim_first`
                // (expecting a handoff, so not queued) must attempt, to queue.
                if claim.is_none() {
                    self.registry.wake_first(&keys.name);
                }
                log::debug!("redis-mutex: passed {} to the next waiting client", keys.key);
                Ok(())
            }
            Ok(Released::Deleted) => {
                drop(claim);
                // Nobody was claimed (or the backend does not grant): the first waiter,
                // if any, attempts now.
                self.registry.wake_first(&keys.name);
                log::debug!("redis-mutex: released {}", keys.key);
                Ok(())
            }
            Ok(Released::NotOwner) => {
                drop(claim);
                self.registry.wake_first(&keys.name);
                Err(Error::LockLost { key: keys.key.clone() })
            }
            Ok(Released::Unacknowledged) => {
                // Handed to the claimed waiter, but too few of the replicas it asks for
                // acknowledged that, so the backend released it again: the waiter
                // attempts itself (waiting for the replicas too, and reporting their
                // shortfall to its caller). This release is done.
                drop(claim);
                self.registry.wake_first(&keys.name);
                log::debug!("redis-mutex: released {}; its handoff was not acknowledged by the replicas", keys.key);
                Ok(())
            }
            Err(e) => {
                if let Some(claim) = claim {
                    // Redis may have handed it the lock all the same: if it gives up
                    // without asking Redis again, its token is released as an orphan.
                    claim.maybe_handed();
                }
                self.registry.wake_first(&keys.name);
                Err(e)
            }
        }
    }

    /// Sets `tenure`'s lease to `lease_ms` from now, if its token still owns the lock.
    /// One request at a time per tenure (a renewal in flight is waited for), so that no
    /// late reply can make the client believe in a longer lease than Redis was last
    /// told.
    pub fn extend(&self, tenure: &Tenure, lease_ms: u64) -> Result<()> {
        let _one_at_a_time = tenure.requests();
        let lost = |why: &str| {
            tenure.mark_lost(&self.stats, &self.registry, why);
            Err(Error::LockLost { key: tenure.keys.key.clone() })
        };
        if tenure.is_lost() {
            return Err(Error::LockLost { key: tenure.keys.key.clone() });
        }
        let sent = Stamp::now();
        match self.extend_once(&tenure.keys, &tenure.token, lease_ms, tenure.replicas) {
            Ok(true) => {
                tenure.set_lease_ms(lease_ms);
                tenure.confirmed(sent, self.backend.vouched_ms(lease_ms));
                Ok(())
            }
            Ok(false) => lost("extend found another owner or no lock"),
            Err(Error::WrongType { .. }) => lost("extend found a value of another type where the lock was"),
            // Also too few replicas: the master may have the new lease, the replicas
            // the old one; the client counts the shorter.
            Err(e) => {
                tenure.maybe_applied(sent, self.backend.vouched_ms(lease_ms));
                Err(e)
            }
        }
    }

    /// Sets the lease of `token`'s lock to `lease_ms` if it still owns it (`false`
    /// when not); with `replicas`, acknowledged by them in the same round trip, else
    /// `Error::ReplicasNotAcknowledged`.
    pub(super) fn extend_once(
        &self,
        keys: &LockKeys,
        token: &str,
        lease_ms: u64,
        replicas: Option<Replicas>,
    ) -> Result<bool> {
        match replicas {
            Some(r) => self.backend.extend_acknowledged(keys, token, lease_ms, r),
            None => self.backend.extend(&[(keys, token, lease_ms)])?.into_iter().next().unwrap_or(Ok(false)),
        }
    }

    /// Releases, owner-checked and without a handoff, a lock `token` was given but
    /// must not rely on (too few replicas acknowledged it); a failure leaves it to the
    /// watchdog as an orphan. The first waiting thread of the lock looks again.
    pub(super) fn give_back(&self, keys: &LockKeys, token: &str, lease_ms: u64) {
        if let Err(e) = self.backend.release(keys, ReleaseArgs::plain(token, lease_ms)) {
            log::debug!("redis-mutex: could not release {} after too few replicas acknowledged it: {e}", keys.key);
            self.orphans.add(keys, token, lease_ms);
        }
        self.registry.wake_first(&keys.name);
    }

    /// Asks Redis whether `tenure`'s token still owns the lock; marks it lost if not.
    pub fn is_held(&self, tenure: &Tenure) -> Result<bool> {
        let held = if tenure.keys.is_shared() {
            super::shared::still_holds(&*self.backend, tenure)?
        } else {
            self.backend.holder(&tenure.keys)?.is_some_and(|h| h.token == tenure.token)
        };
        if !held {
            tenure.mark_lost(&self.stats, &self.registry, "Redis no longer lists this guard as the owner");
        }
        Ok(held)
    }
}
