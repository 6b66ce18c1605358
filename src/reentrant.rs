use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard as StdGuard, Weak};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::guard::MutexGuard;
use crate::mutex::Mutex;
use crate::sync::lock;

/// A [`Mutex`] that the thread holding it may lock again without waiting.
///
/// Made by [`LockClient::reentrant_mutex`](crate::LockClient::reentrant_mutex). The
/// holding thread's nested `lock()` calls cost no round trip and count holds; the lock
/// is released in Redis when the last guard is dropped. Other threads and processes
/// wait as for a [`Mutex`]. Guards are `!Send`: the hold belongs to the thread.
///
/// ```no_run
/// # let client = redis_mutex::LockClient::open("redis://127.0.0.1:6379/")?;
/// let m = client.reentrant_mutex("ledger");
/// let outer = m.lock()?;
/// let inner = m.lock()?; // same thread: no wait, no round trip
/// assert_eq!(outer.hold_count(), 2);
/// drop(inner);
/// drop(outer); // released in Redis here
/// # Ok::<(), redis_mutex::Error>(())
/// ```
#[derive(Clone)]
pub struct ReentrantMutex {
    state: Arc<ReentrantState>,
}

pub(crate) struct ReentrantState {
    mutex: Mutex,
    held: StdMutex<Option<Held>>,
}

struct Held {
    thread: ThreadId,
    count: usize,
    guard: MutexGuard,
}

impl fmt::Debug for ReentrantMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReentrantMutex").field("mutex", &self.state.mutex).finish()
    }
}

/// A hold on a [`ReentrantMutex`]; the lock is released when the thread's last hold
/// is dropped.
#[must_use = "if unused the ReentrantMutex will immediately unlock"]
pub struct ReentrantMutexGuard {
    state: Arc<ReentrantState>,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for ReentrantMutexGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReentrantMutexGuard").field("name", &self.state.mutex.name()).finish()
    }
}

impl ReentrantState {
    fn held(&self) -> StdGuard<'_, Option<Held>> {
        lock(&self.held)
    }
}

impl ReentrantMutex {
    pub(crate) fn new(mutex: Mutex) -> Self {
        ReentrantMutex { state: Arc::new(ReentrantState { mutex, held: StdMutex::new(None) }) }
    }

    pub(crate) fn from_state(state: Arc<ReentrantState>) -> Self {
        ReentrantMutex { state }
    }

    pub(crate) fn downgrade(&self) -> Weak<ReentrantState> {
        Arc::downgrade(&self.state)
    }

    /// The underlying lock.
    pub fn mutex(&self) -> &Mutex {
        &self.state.mutex
    }

    /// Blocks until this thread holds the lock; at once if it already does.
    ///
    /// # Errors
    ///
    /// As [`Mutex::lock`].
    pub fn lock(&self) -> Result<ReentrantMutexGuard> {
        self.acquire(|m| m.lock().map(Some)).map(|g| g.expect("lock returns a guard"))
    }

    /// One attempt; at once if this thread already holds the lock.
    ///
    /// # Errors
    ///
    /// As [`Mutex::try_lock`].
    pub fn try_lock(&self) -> Result<Option<ReentrantMutexGuard>> {
        self.acquire(Mutex::try_lock)
    }

    /// Waits at most `timeout`; at once if this thread already holds the lock.
    ///
    /// # Errors
    ///
    /// As [`Mutex::try_lock_for`].
    pub fn try_lock_for(&self, timeout: Duration) -> Result<Option<ReentrantMutexGuard>> {
        let deadline = Instant::now().checked_add(timeout);
        self.acquire(|m| match deadline {
            Some(d) => m.try_lock_until(d),
            None => m.lock().map(Some),
        })
    }

    /// Whether the calling thread holds the lock.
    pub fn is_held_by_current_thread(&self) -> bool {
        self.state.held().as_ref().is_some_and(|h| h.thread == thread::current().id())
    }

    fn acquire(&self, take: impl FnOnce(&Mutex) -> Result<Option<MutexGuard>>) -> Result<Option<ReentrantMutexGuard>> {
        let me = thread::current().id();
        {
            let mut held = self.state.held();
            if let Some(h) = held.as_mut().filter(|h| h.thread == me) {
                h.count += 1;
                return Ok(Some(self.new_guard()));
            }
        }
        // Other threads of this process wait in Redis like any other client.
        let Some(guard) = take(&self.state.mutex)? else { return Ok(None) };
        *self.state.held() = Some(Held { thread: me, count: 1, guard });
        Ok(Some(self.new_guard()))
    }

    fn new_guard(&self) -> ReentrantMutexGuard {
        ReentrantMutexGuard { state: self.state.clone(), _not_send: PhantomData }
    }
}

impl ReentrantMutexGuard {
    /// How many holds this thread has on the lock, this one included.
    pub fn hold_count(&self) -> usize {
        self.state.held().as_ref().map_or(0, |h| h.count)
    }

    /// The fencing token of the acquisition this hold belongs to (see
    /// [`MutexGuard::fencing_token`]).
    pub fn fencing_token(&self) -> Option<u64> {
        self.state.held().as_ref().and_then(|h| h.guard.fencing_token())
    }

    /// Whether the lease was found lost (see [`MutexGuard::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.state.held().as_ref().is_some_and(|h| h.guard.is_lost())
    }
}

impl Drop for ReentrantMutexGuard {
    fn drop(&mut self) {
        let last = {
            let mut held = self.state.held();
            match held.as_mut() {
                Some(h) if h.count > 1 => {
                    h.count -= 1;
                    None
                }
                _ => held.take(),
            }
        };
        // Released outside the state lock: the release may hand the lock to a waiter.
        drop(last);
    }
}
