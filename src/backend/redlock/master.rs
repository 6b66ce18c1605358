//! One Redlock master: its pool (the single-server [`Pool`], with its timeouts and
//! retries on connections the server dropped), what the server said about its uptime
//! when each connection to it opened ([`Boot`]), and the worker threads that run
//! requests on it while the other masters run theirs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redis::{Connection, RedisError};

use crate::backend::single::{ConnectSettings, OnConnect, Pool};
use crate::sync::{lock, panic_message};

/// A request for one master, run by one of its workers on a pooled connection.
pub(super) type Job = Box<dyn FnOnce(&Pool) + Send>;

/// What the master said about itself on the latest connection to it.
#[derive(Debug, Clone)]
struct Seen {
    /// When it was asked (before the answer: uptime is then underestimated, never
    /// over).
    at: Instant,
    /// `uptime_in_seconds`, less 1 s: Redis gives the difference between two wall
    /// clock readings in whole seconds (now and its start), which can exceed the time
    /// it has been up by almost a second.
    uptime: Duration,
    run_id: String,
}

/// The uptime of the server a master's connections reach. Every new connection asks
/// (`INFO server`, see `OnConnect`) before its first request, and a server that
/// restarted breaks every connection to it: so the reply to any request comes from the
/// server last seen here, and whether it counts is decided from its uptime.
#[derive(Debug)]
pub(super) struct Boot {
    shown: String,
    /// The client's `redlock_max_lease`: a server up for less sits out.
    max_lease: Duration,
    seen: Mutex<Option<Seen>>,
}

impl Boot {
    pub fn new(shown: String, max_lease: Duration) -> Boot {
        Boot { shown, max_lease, seen: Mutex::new(None) }
    }

    /// Whether the master counts for a quorum at `now`: it has been up for at least
    /// `redlock_max_lease`, so every lock it may have forgotten by restarting (without
    /// persistence) has run out since. Not before it was first reached.
    pub fn counts(&self, now: Instant) -> bool {
        lock(&self.seen)
            .as_ref()
            .is_some_and(|s| s.uptime.saturating_add(now.saturating_duration_since(s.at)) >= self.max_lease)
    }

    /// Records what `INFO server`, asked at `at`, said. `None` when it names no uptime.
    fn record(&self, at: Instant, info: &str) -> Option<()> {
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
        let uptime = Duration::from_secs(field("uptime_in_seconds")?.parse::<u64>().ok()?.saturating_sub(1));
        let run_id = field("run_id").unwrap_or_default().to_owned();
        let mut seen = lock(&self.seen);
        let new_server = seen.as_ref().is_none_or(|s| s.run_id != run_id);
        if let Some(old) = seen.as_ref().filter(|_| !new_server)
            && old.uptime.saturating_add(at.saturating_duration_since(old.at)) >= uptime
        {
            // The same server, which said more before (in whole seconds, a second
            // reading can say less): each reading is a lower bound, keep the best.
            return Some(());
        }
        if new_server && uptime < self.max_lease {
            log::warn!(
                "redis-mutex: Redlock master {} has been up for {uptime:?} only: it counts for no quorum until \
                 it has been up for redlock_max_lease ({:?}), since it may have forgotten held locks",
                self.shown,
                self.max_lease
            );
        }
        *seen = Some(Seen { at, uptime, run_id });
        Some(())
    }

    /// The hook every connection to the master runs once it is open: `INFO server`,
    /// recorded. A server that refuses `INFO` (an ACL without `+info`) fails the
    /// connection: without its uptime no reply from it could count.
    pub fn on_connect(self: &Arc<Self>) -> OnConnect {
        let boot = self.clone();
        OnConnect(Arc::new(move |con: &mut Connection| {
            let at = Instant::now();
            let info: String = redis::cmd("INFO").arg("server").query(con)?;
            boot.record(at, &info).ok_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::Parse,
                    "INFO server names no uptime_in_seconds",
                    "a Redlock master must say how long it has been up".to_owned(),
                ))
            })
        }))
    }
}

/// One master of a Redlock client.
pub(super) struct Master {
    /// Its URL, without credentials.
    pub shown: String,
    pub boot: Arc<Boot>,
    /// How its connections are made (the notifier's too).
    settings: ConnectSettings,
    pool: Arc<Pool>,
    jobs: Sender<Job>,
    queue: Receiver<Job>,
    /// Workers waiting for a job.
    idle: Arc<AtomicUsize>,
    workers: AtomicUsize,
    /// At most one worker per pooled connection: a worker holds one while it runs.
    max_workers: usize,
    /// A round's caller gave up waiting for it on a connection of its own: rounds go
    /// through its workers until it answers one in time again (see `round`).
    slow: AtomicBool,
}

impl Master {
    pub fn new(
        settings: ConnectSettings,
        shown: String,
        boot: Arc<Boot>,
        pool_size: u32,
        pool_timeout: Duration,
    ) -> Master {
        let (jobs, queue) = crossbeam_channel::unbounded();
        Master {
            shown,
            boot,
            pool: Arc::new(Pool::new(settings.clone(), pool_size, pool_timeout)),
            settings,
            jobs,
            queue,
            idle: Arc::new(AtomicUsize::new(0)),
            workers: AtomicUsize::new(0),
            max_workers: pool_size as usize,
            slow: AtomicBool::new(false),
        }
    }

    /// Its pool, for a request the caller sends itself (`Pool::try_idle`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether the last round that waited for it on a connection of its own gave up.
    pub fn slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Records whether it answered a round in time.
    pub fn set_slow(&self, slow: bool) {
        if self.slow() != slow {
            self.slow.store(slow, Ordering::Relaxed);
        }
    }

    pub fn settings(&self) -> &ConnectSettings {
        &self.settings
    }

    /// Runs `job` on one of the master's workers, starting one if none is idle (up to
    /// the pool's size; beyond that, jobs wait their turn). A master that does not
    /// answer holds its workers for up to the read timeout; the caller does not wait
    /// for them (see `round`).
    pub fn submit(&self, job: Job) {
        if self.idle.load(Ordering::Acquire) == 0 {
            self.grow();
        }
        // The receiving end lives as long as `self`: sending cannot fail.
        let _ = self.jobs.send(job);
    }

    fn grow(&self) {
        let n = self.workers.load(Ordering::Acquire);
        if n >= self.max_workers
            || self.workers.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return;
        }
        let (queue, idle, pool) = (self.queue.clone(), self.idle.clone(), self.pool.clone());
        let spawned =
            std::thread::Builder::new().name("redis-mutex-redlock".into()).spawn(move || work(&queue, &idle, &pool));
        if let Err(e) = spawned {
            self.workers.fetch_sub(1, Ordering::AcqRel);
            // The jobs wait for a worker that exists, or go unanswered: the round then
            // reports the master as not answering.
            log::warn!("redis-mutex: cannot start a worker for Redlock master {}: {e}", self.shown);
        }
    }
}

/// A worker: runs jobs until the master is dropped (its sender with it).
fn work(queue: &Receiver<Job>, idle: &AtomicUsize, pool: &Pool) {
    loop {
        idle.fetch_add(1, Ordering::AcqRel);
        let job = queue.recv();
        idle.fetch_sub(1, Ordering::AcqRel);
        let Ok(job) = job else { return };
        // A panic in a job (a bug) loses that reply only: the round counts the master
        // as not answering.
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(pool))) {
            log::error!("redis-mutex: a Redlock request panicked: {}", panic_message(&panic));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_counts_once_it_has_been_up_for_the_longest_lease() {
        let boot = Boot::new("m".into(), Duration::from_secs(30));
        let t = Instant::now();
        assert!(!boot.counts(t), "never reached: unknown");
        // 10 s as Redis counts: whole seconds of the wall clock, so at least 9 s.
        boot.record(t, "# Server\r\nrun_id:abc\r\nuptime_in_seconds:10\r\n").unwrap();
        assert!(!boot.counts(t + Duration::from_secs(20)));
        assert!(boot.counts(t + Duration::from_secs(21)));
        // Restarted: a new server, up for 2 s (at least 1).
        boot.record(t + Duration::from_secs(25), "run_id:def\r\nuptime_in_seconds:2\r\n").unwrap();
        assert!(!boot.counts(t + Duration::from_secs(53)));
        assert!(boot.counts(t + Duration::from_secs(54)));
        // The same server read again within the same wall-clock second says less: the
        // earlier reading stands.
        boot.record(t + Duration::from_secs(54), "run_id:def\r\nuptime_in_seconds:30\r\n").unwrap();
        boot.record(t + Duration::from_secs(55), "run_id:def\r\nuptime_in_seconds:30\r\n").unwrap();
        assert!(boot.counts(t + Duration::from_secs(55)));
        assert!(boot.record(t, "run_id:x\r\n").is_none(), "no uptime");
    }
}
