//! The notifier's subscribed connection, which a waiting thread may read itself.
//!
//! When the notifier thread reads every message, a wake-up crosses two threads on the
//! way from a release to the next holder: the notifier wakes when the message arrives,
//! then wakes the waiter. On a loaded machine each wake-up is a trip through the
//! scheduler (tens of µs), so the second one is a large part of a cross-process
//! handoff. A [`Line`] is the subscribed connection behind a mutex: whoever holds the
//! mutex reads. A waiting thread that takes it (see [`Listen`]) reads and delivers
//! what arrives, its own grant included, and returns when its own wake-up has come:
//! one wake-up, the waiter's. The notifier thread reads while threads wait that do
//! not read (a second waiter, or one that came while another read), and otherwise
//! leaves the line to them, looking at it every `TICK` for messages nobody waits for
//! (a grant heard after the last waiter left) and to keep it alive.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::connection::Target;
use super::dispatch::Dispatch;
use super::notifier::{Shared, TICK, interrupted};
use crate::backend::Listen;
use crate::stats::bump;
use crate::sync::{lock, try_lock};

/// The longest a waiting thread reads before it looks at its own wake-up slot. A
/// reader cannot be interrupted (its thread is in a socket read), so a wake-up that
/// does not come as a message (a thread of its own client releasing the lock to it)
/// waits for this. Readers are chosen so that none should (see `Core::listen`); the
/// bound starts at `FIRST_LOOK` and doubles while nothing is heard.
const LAST_LOOK: Duration = Duration::from_millis(200);
const FIRST_LOOK: Duration = Duration::from_millis(10);

/// The subscribed connection, shared by the notifier thread and waiting threads.
pub(crate) struct Line {
    session: Mutex<Option<Session>>,
    pub(super) shared: Shared,
    /// How long a lock granted to a waiting client is its before it takes it.
    grant_ms: u64,
    /// Silence after which the connection is probed (by the notifier thread).
    ping_after: Duration,
    /// The server connections must belong to (a failover moves it).
    target: Target,
    /// Wakes the notifier thread to read: a reader left while other threads wait.
    kick_tx: Sender<()>,
    pub(super) kick_rx: Receiver<()>,
    /// Whether waiting threads may read it (else only the notifier thread reads, at
    /// all times: Redlock's per-master lines, whose messages are counted per master).
    pub(super) shared_with_waiters: bool,
}

/// One subscribed connection and what its reader needs between reads.
pub(super) struct Session {
    con: redis::Connection,
    pub dispatch: Dispatch,
    pub last_heard: Instant,
    /// When a read last ended.
    pub last_read: Instant,
    /// The target's generation when it connected.
    pub generation: u64,
    /// The read timeout set on the socket now.
    timeout: Option<Duration>,
    /// Why a waiting thread's read broke it: the notifier thread reconnects.
    pub broken: Option<redis::RedisError>,
}

/// What one read got.
pub(super) enum Read {
    Message(Vec<u8>),
    /// Nothing within the timeout (or a read a signal interrupted: the connection and
    /// what waits on it are fine).
    Nothing,
}

impl Session {
    /// `con` must be subscribed already.
    pub fn new(con: redis::Connection, generation: u64) -> Session {
        let now = Instant::now();
        Session {
            con,
            dispatch: Dispatch::default(),
            last_heard: now,
            last_read: now,
            generation,
            timeout: None,
            broken: None,
        }
    }

    /// Reads one message, waiting at most `timeout`.
    pub fn read(&mut self, timeout: Duration) -> redis::RedisResult<Read> {
        let timeout = timeout.max(Duration::from_millis(1));
        if self.timeout != Some(timeout) {
            self.con.set_read_timeout(Some(timeout))?;
            self.timeout = Some(timeout);
        }
        // redis-rs reads pub/sub messages only through a `PubSub`, whose drop would
        // unsubscribe the connection. Forgetting it leaks nothing: it holds the borrow
        // and a queue of messages heard during a command's reply, which `get_message`
        // never fills (it is empty: no command is sent through this one).
        let mut pubsub = self.con.as_pubsub();
        let got = pubsub.get_message();
        std::mem::forget(pubsub);
        self.last_read = Instant::now();
        match got {
            Ok(msg) => {
                self.last_heard = Instant::now();
                Ok(Read::Message(msg.get_payload_bytes().to_vec()))
            }
            Err(e) if e.is_timeout() || interrupted(&e) => Ok(Read::Nothing),
            Err(e) => Err(e),
        }
    }

    /// The connection, for the notifier thread's keep-alive.
    pub fn con(&mut self) -> &mut redis::Connection {
        self.timeout = None;
        &mut self.con
    }
}

impl Line {
    /// A line (not connected yet: the notifier thread connects it) whose messages go to
    /// `shared`; with `shared_with_waiters`, waiting threads may read it.
    pub fn new(
        shared: Shared,
        grant_ms: u64,
        ping_after: Duration,
        target: Target,
        shared_with_waiters: bool,
    ) -> Arc<Line> {
        let (kick_tx, kick_rx) = crossbeam_channel::bounded(1);
        Arc::new(Line {
            session: Mutex::new(None),
            shared,
            grant_ms,
            ping_after,
            target,
            kick_tx,
            kick_rx,
            shared_with_waiters,
        })
    }

    pub fn grant_ms(&self) -> u64 {
        self.grant_ms
    }

    /// Puts a newly subscribed session on the line (or takes it off, `None`). Waits
    /// for a reader to finish (at most `LAST_LOOK`).
    pub(super) fn set(&self, session: Option<Session>) {
        *lock(&self.session) = session;
    }

    /// The session, if nobody else reads it now.
    pub(super) fn try_take(&self) -> Option<std::sync::MutexGuard<'_, Option<Session>>> {
        try_lock(&self.session)
    }

    /// Tells the notifier thread to read now.
    fn kick(&self) {
        let _ = self.kick_tx.try_send(());
    }

    /// Whether the session may be read: connected, not broken, on the current server.
    fn usable(&self, s: &Session) -> bool {
        s.broken.is_none() && s.generation == self.target.generation()
    }
}

impl Listen for Line {
    fn listen_until(&self, until: Instant, woken: &dyn Fn() -> bool) -> bool {
        if !self.shared_with_waiters {
            return false;
        }
        let Some(mut guard) = self.try_take() else { return false };
        let Some(s) = guard.as_mut().filter(|s| self.usable(s)) else { return false };
        let mut look = FIRST_LOOK;
        loop {
            s.dispatch.tick(&self.shared);
            if woken() {
                break;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            if s.last_heard.elapsed() >= self.ping_after || s.generation != self.target.generation() {
                // The notifier thread probes the connection (or follows the master);
                // the caller sleeps on its slot meanwhile.
                self.kick();
                break;
            }
            let due = s.dispatch.next_due().map_or(look, |d| d.saturating_duration_since(now));
            let wait = (until - now).min(look).min(due);
            match s.read(wait) {
                Ok(Read::Message(payload)) => {
                    bump(&self.shared.stats.messages_read_by_waiters);
                    s.dispatch.deliver(&self.shared, self.grant_ms, &payload);
                    look = FIRST_LOOK;
                }
                Ok(Read::Nothing) => look = (look * 2).min(LAST_LOOK),
                Err(e) => {
                    s.broken = Some(e);
                    self.kick();
                    break;
                }
            }
        }
        drop(guard);
        // Threads that wait without reading rely on the notifier thread now. (The
        // caller still counts unless a grant took it out of the registry; counting it
        // when it was woken otherwise only costs the notifier a look.)
        if self.shared.sink.waiting_threads() > usize::from(!woken()) {
            self.kick();
        }
        true
    }
}

/// How long the notifier thread leaves the line unread while no thread waits, before
/// it looks at it.
pub(super) const IDLE_LOOK: Duration = TICK;
