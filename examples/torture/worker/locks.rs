//! The kinds of lock a worker takes, behind one handle and one guard: a mutex (fencing
//! on), a read-write lock's read share or write lock, a semaphore's permit.

use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexGuard, MutexOptions, RwLockReadGuard, RwLockWriteGuard, SemaphorePermit};

use super::super::config::LockKind;
use super::super::record::Role;

/// One lock name, of the run's kind.
pub enum Handle {
    Mutex(redis_mutex::Mutex),
    RwLock(redis_mutex::RwLock),
    Semaphore(redis_mutex::Semaphore),
}

impl Handle {
    /// `name` of `kind` on `client`, every acquisition with `lease` and `auto_renew`
    /// (and fencing, for a mutex: the read-write lock and the semaphore refuse it).
    pub fn new(client: &LockClient, kind: LockKind, name: &str, lease: Duration, permits: u32) -> Handle {
        let options = MutexOptions::default().lease(lease).auto_renew(true);
        match kind {
            LockKind::Mutex => Handle::Mutex(client.mutex_with(name, options.fencing(true))),
            LockKind::RwLock => Handle::RwLock(client.rw_lock_with(name, options)),
            LockKind::Semaphore => Handle::Semaphore(client.semaphore_with(name, permits, options)),
        }
    }

    /// One acquisition as `role` (a read-write lock's `Reader` or `Writer`; the other
    /// kinds have one role each), waiting until `deadline`.
    pub fn acquire_until(&self, role: Role, deadline: Instant) -> redis_mutex::Result<Option<Guard>> {
        Ok(match (self, role) {
            (Handle::Mutex(m), _) => m.try_lock_until(deadline)?.map(Guard::Mutex),
            (Handle::RwLock(rw), Role::Writer) => rw.try_write_until(deadline)?.map(Guard::Writer),
            (Handle::RwLock(rw), _) => rw.try_read_until(deadline)?.map(Guard::Reader),
            (Handle::Semaphore(s), _) => s.try_acquire_until(deadline)?.map(Guard::Permit),
        })
    }
}

/// What a critical section holds.
pub enum Guard {
    Mutex(MutexGuard),
    Reader(RwLockReadGuard),
    Writer(RwLockWriteGuard),
    Permit(SemaphorePermit),
}

impl Guard {
    pub fn role(&self) -> Role {
        match self {
            Guard::Mutex(_) => Role::Mutex,
            Guard::Reader(_) => Role::Reader,
            Guard::Writer(_) => Role::Writer,
            Guard::Permit(_) => Role::Permit,
        }
    }

    /// The fencing token (0 for the kinds without one).
    pub fn fencing_token(&self) -> u64 {
        match self {
            Guard::Mutex(g) => g.fencing_token().unwrap_or(0),
            _ => 0,
        }
    }

    /// The owner token (each reader and permit has its own).
    pub fn token(&self) -> &str {
        match self {
            Guard::Mutex(g) => g.token(),
            Guard::Reader(g) => g.token(),
            Guard::Writer(g) => g.token(),
            Guard::Permit(g) => g.token(),
        }
    }

    pub fn is_lost(&self) -> bool {
        match self {
            Guard::Mutex(g) => g.is_lost(),
            Guard::Reader(g) => g.is_lost(),
            Guard::Writer(g) => g.is_lost(),
            Guard::Permit(g) => g.is_lost(),
        }
    }

    pub fn is_held(&self) -> redis_mutex::Result<bool> {
        match self {
            Guard::Mutex(g) => g.is_held(),
            Guard::Reader(g) => g.is_held(),
            Guard::Writer(g) => g.is_held(),
            Guard::Permit(g) => g.is_held(),
        }
    }

    pub fn unlock(self) -> redis_mutex::Result<()> {
        match self {
            Guard::Mutex(g) => g.unlock(),
            Guard::Reader(g) => g.unlock(),
            Guard::Writer(g) => g.unlock(),
            Guard::Permit(g) => g.unlock(),
        }
    }
}
