//! The five implementations, each driven through its own public synchronous API the
//! way its documentation shows, and a reference that is no Redis lock at all: an
//! in-memory FIFO lock, the floor a fair lock can reach on this machine. One `Shared`
//! per process (the crate's client or manager object), one `Worker` per thread.

use std::collections::VecDeque;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex as StdMutex};
use std::thread;
use std::time::Duration;

use redis_mutex::{LockClient, MutexGuard, MutexOptions};
use redis_mutex_harness::bench::{Contender, Subject};

/// Lock name used by redis-mutex (its key is `redis-mutex:{bench}`); the peers use
/// their own key each, so a leftover of one can never be mistaken by another.
pub const LOCK: &str = "bench";

/// redis-mutex's lock names on a cluster and in the spread workloads (`W2s`, `W5s`).
/// Their slots (2933, 8154, 12217) fall one in each third of the 16384, which the
/// harness's 3-master cluster gives one master each (checked when the cluster starts).
pub const SPREAD: [&str; 3] = [LOCK, "bench-3", "bench-0"];

/// Which of [`SPREAD`]'s names a run's threads lock: thread `id` locks
/// `SPREAD[(first + id % count) % 3]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names {
    pub first: u32,
    pub count: u32,
}

impl Names {
    /// Every thread on [`LOCK`].
    pub const ONE: Names = Names { first: 0, count: 1 };

    /// The lock of thread `id`.
    pub fn of(self, id: u32) -> &'static str {
        SPREAD[((self.first + id % self.count.max(1)) % SPREAD.len() as u32) as usize]
    }

    /// As a worker process's argument: `FIRST+COUNT`.
    pub fn arg(self) -> String {
        format!("{}+{}", self.first, self.count)
    }

    /// [`arg`](Self::arg) read back.
    pub fn parse(s: &str) -> Option<Names> {
        let (first, count) = s.split_once('+')?;
        Some(Names { first: first.parse().ok()?, count: count.parse().ok()? })
    }
}

/// The implementations, named on the command line as [`Impl::name`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Impl {
    RedisMutex,
    /// redis-mutex over TLS (`rediss://`), on a TLS-only redis-server of its own beside
    /// the plain one: not in the default set (`--impls redis-mutex,redis-mutex-tls`).
    RedisMutexTls,
    /// redis-mutex on a Redis Cluster of 3 masters (no replicas) started beside the
    /// plain server (`build_cluster`): not in the default set; W2 and W5 only (and the
    /// spread `W2s`, `W5s`, beside `redis-mutex` on one server).
    RedisMutexCluster,
    Rlock,
    Redisson,
    Redlock,
    Naive,
    /// Not a Redis lock: threads of one process only (no W3, no W4).
    LocalFifo,
}

pub const ALL: [Impl; 6] = [Impl::RedisMutex, Impl::Rlock, Impl::Redisson, Impl::Redlock, Impl::Naive, Impl::LocalFifo];

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::RedisMutex => "redis-mutex",
            Impl::RedisMutexTls => "redis-mutex-tls",
            Impl::RedisMutexCluster => "redis-mutex-cluster",
            Impl::Rlock => "rlock",
            Impl::Redisson => "redisson",
            Impl::Redlock => "redlock",
            Impl::Naive => "naive",
            Impl::LocalFifo => "local-fifo",
        }
    }

    /// The Redis keys this implementation writes for the benchmark lock (redis-mutex:
    /// [`LOCK`]'s first, then the spread names').
    pub fn keys(self) -> Vec<String> {
        match self {
            Impl::RedisMutex | Impl::RedisMutexTls | Impl::RedisMutexCluster => SPREAD
                .iter()
                .flat_map(|n| [format!("redis-mutex:{{{n}}}"), format!("redis-mutex:{{{n}}}:fence")])
                .collect(),
            other => vec![format!("{LOCK}:{}", other.name())],
        }
    }

    /// A peer crate (not redis-mutex, not the hand-written loop).
    pub fn is_crate_peer(self) -> bool {
        matches!(self, Impl::Rlock | Impl::Redisson | Impl::Redlock)
    }

    /// Whether it can lock across processes (and so run W3 and W4).
    pub fn is_distributed(self) -> bool {
        self != Impl::LocalFifo
    }

    /// Whether it runs workload `wl` at `procs` × `threads`: the cluster W2 (8 threads)
    /// and W5/W5t (8 processes) only; the spread workloads (`W2s`, `W5s`) redis-mutex on
    /// one server and on the cluster only.
    pub fn runs(self, wl: &str, procs: u32, threads: u32) -> bool {
        match self {
            Impl::RedisMutexCluster => {
                matches!((wl, procs, threads), ("W2" | "W2s", 1, 8) | ("W5" | "W5t" | "W5s", 8, _))
            }
            Impl::RedisMutex => true,
            _ => !matches!(wl, "W2s" | "W5s") && (procs == 1 || self.is_distributed()),
        }
    }
}

/// The per-process object of each implementation.
#[derive(Clone)]
pub enum Shared {
    /// The client, and the lock names its threads lock.
    RedisMutex(LockClient, Names),
    Rlock(rlock::sync_lock::RLock),
    Redisson(Box<redisson::RedissonClient>),
    /// `RedLockGuard<'a>` borrows its manager: one leaked manager per process and run.
    Redlock(&'static redlock::RedLock),
    Naive(String),
    LocalFifo(Arc<Fifo>),
}

/// A FIFO lock in memory: a release hands the lock to the longest waiter and wakes it
/// (a `sync_channel(1)` per waiter, as redis-mutex's registry does). What is left of a
/// handoff here is a thread wake-up, so its waits show this machine's scheduling floor
/// for a fair lock.
#[derive(Default)]
pub struct Fifo {
    state: StdMutex<(bool, VecDeque<SyncSender<()>>)>,
}

impl Fifo {
    fn lock(&self) {
        let rx = {
            let mut st = self.state.lock().unwrap();
            if !st.0 {
                st.0 = true;
                return;
            }
            let (tx, rx) = sync_channel(1);
            st.1.push_back(tx);
            rx
        };
        // Woken only by a release handing the lock over.
        rx.recv().unwrap();
    }

    fn unlock(&self) {
        let mut st = self.state.lock().unwrap();
        match st.1.pop_front() {
            Some(next) => next.send(()).unwrap(),
            None => st.0 = false,
        }
    }
}

/// redisson's pool size for `threads` threads: a waiting thread keeps its pooled
/// connection through its 100 ms sleep (the connection is dropped at the end of each
/// loop iteration). With the default 10, W2 at 16 threads got pool errors ("no
/// connection available", "timed out waiting for connection"), then redisson's circuit
/// breaker refused every request for 30 s (0 acquisitions, 30 s waits). Threads + 2
/// keeps it working; `REDISSON_POOL=n` overrides it to see that for yourself.
pub fn redisson_pool_size(threads: u32) -> u32 {
    std::env::var("REDISSON_POOL").ok().and_then(|v| v.parse().ok()).unwrap_or((threads + 2).max(10))
}

impl Shared {
    /// The per-process object of `imp` for the Redis at `url` (the cluster's: its nodes'
    /// URLs, comma-separated); `tls_ca`, the PEM file of the CA that signed a TLS
    /// server's certificate (`redis-mutex-tls` only); redis-mutex's threads lock `names`.
    pub fn new(imp: Impl, url: &str, tls_ca: Option<&str>, threads: u32, names: Names) -> Shared {
        match imp {
            // Default settings (pool_max_size 8): waiters hold no connection while asleep.
            // `REDIS_MUTEX_HANDOFF_LIMIT=n` overrides handoff_limit (default 8) to study W3.
            Impl::RedisMutex | Impl::RedisMutexTls | Impl::RedisMutexCluster => {
                let mut b = LockClient::builder();
                if let Some(ca) = tls_ca {
                    b = b.tls_root_cert(std::fs::read(ca).expect("the TLS server's CA certificate"));
                }
                if let Some(n) = std::env::var("REDIS_MUTEX_HANDOFF_LIMIT").ok().and_then(|v| v.parse().ok()) {
                    b = b.handoff_limit(n);
                }
                let urls = || url.split(',').collect::<Vec<_>>();
                let client = if imp == Impl::RedisMutexCluster {
                    b.build_cluster(&urls())
                } else if url.contains(',') {
                    // Several URLs (`--masters`): a Redlock client over them.
                    b.build_redlock(&urls())
                } else {
                    b.build(url)
                };
                Shared::RedisMutex(client.expect("redis-mutex client"), names)
            }
            // Default PoolOptions (8 idle connections kept, checkout never blocks).
            Impl::Rlock => Shared::Rlock(rlock::sync_lock::RLock::new(url).expect("rlock manager")),
            Impl::Redisson => {
                let config = redisson::RedissonConfig::single_server(url).with_pool_size(redisson_pool_size(threads));
                Shared::Redisson(Box::new(redisson::RedissonClient::new(config).expect("redisson client")))
            }
            // Default retry settings (3 tries, 0..200 ms random delay), on one server or
            // on every master (`--masters`).
            Impl::Redlock => {
                let urls = url.split(',').map(str::to_owned).collect();
                Shared::Redlock(Box::leak(Box::new(redlock::RedLock::new(urls))))
            }
            Impl::Naive => Shared::Naive(url.to_owned()),
            Impl::LocalFifo => Shared::LocalFifo(Arc::default()),
        }
    }

    /// The implementation, as far as its keys go (redis-mutex's are the same over TLS).
    fn imp(&self) -> Impl {
        match self {
            Shared::RedisMutex(..) => Impl::RedisMutex,
            Shared::Rlock(_) => Impl::Rlock,
            Shared::Redisson(_) => Impl::Redisson,
            Shared::Redlock(_) => Impl::Redlock,
            Shared::Naive(_) => Impl::Naive,
            Shared::LocalFifo(_) => Impl::LocalFifo,
        }
    }

    /// Thread `id`'s handle; `token` names it where the implementation asks for one.
    pub fn worker(&self, id: u32, token: String) -> Worker {
        let key = self.imp().keys().remove(0);
        match self {
            Shared::RedisMutex(c, names) => Worker::RedisMutex { m: c.mutex(names.of(id)), g: None },
            Shared::Rlock(r) => Worker::Rlock { r: r.clone(), key, g: None },
            Shared::Redisson(c) => Worker::Redisson { l: c.get_lock(&key), held: false },
            Shared::Redlock(r) => Worker::Redlock { r, key, g: None },
            Shared::Naive(url) => Worker::Naive {
                con: redis::Client::open(url.as_str()).unwrap().get_connection().expect("naive connection"),
                script: redis::Script::new(NAIVE_RELEASE),
                key,
                token,
                held: false,
                sent: 0,
            },
            Shared::LocalFifo(f) => Worker::LocalFifo { f: f.clone(), held: false },
        }
    }
}

impl Subject for Shared {
    type Contender = Worker;

    fn contender(&self, id: u32) -> Worker {
        self.worker(id, format!("{}-{id}", std::process::id()))
    }

    /// Client-side round trips, where the implementation tells: redis-mutex's stats
    /// (attempts + releases sent to Redis + renewals). `None` elsewhere (the naive loop
    /// counts its own).
    fn round_trips(&self) -> Option<u64> {
        match self {
            Shared::RedisMutex(c, _) => {
                let s = c.stats();
                Some(s.attempts + s.releases - s.local_handoffs + s.renewals)
            }
            _ => None,
        }
    }

    /// redis-mutex's pub/sub messages received (release notices, broadcasts) and
    /// grants (acquisitions another client's release made), for W5.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        match self {
            Shared::RedisMutex(c, _) => {
                let s = c.stats();
                vec![(MESSAGES, s.messages_received), (GRANTS, s.grants)]
            }
            _ => Vec::new(),
        }
    }
}

/// Names of the counters [`Shared`] reports (redis-mutex's `Stats` fields).
pub const MESSAGES: &str = "messages_received";
pub const GRANTS: &str = "grants";

/// The owner-checked release the blog posts show.
const NAIVE_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

pub enum Worker {
    RedisMutex { m: redis_mutex::Mutex, g: Option<MutexGuard> },
    Rlock { r: rlock::sync_lock::RLock, key: String, g: Option<rlock::sync_lock::RLockGuard> },
    Redisson { l: redisson::RLock, held: bool },
    Redlock { r: &'static redlock::RedLock, key: String, g: Option<redlock::RedLockGuard<'static>> },
    Naive { con: redis::Connection, script: redis::Script, key: String, token: String, held: bool, sent: u64 },
    LocalFifo { f: Arc<Fifo>, held: bool },
}

/// How a lock is taken: as a user of the implementation would by default, or the W4
/// holder's 60 s lease with no renewal (so it sends nothing while the waiters wait).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Default,
    Fixed60s,
}

impl Worker {
    /// Blocks until the lock is held, with `lease`.
    pub fn acquire_with(&mut self, lease: Lease) -> Result<(), String> {
        let fixed = lease == Lease::Fixed60s;
        match self {
            Worker::RedisMutex { m, g } => {
                // Default: lease 30 s, renewed by the client's watchdog while held.
                let guard = if fixed {
                    let held = m
                        .client()
                        .mutex_with(m.name(), MutexOptions::default().lease(Duration::from_secs(60)).auto_renew(false));
                    held.lock()
                } else {
                    m.lock()
                };
                *g = Some(guard.map_err(|e| e.to_string())?);
            }
            Worker::Rlock { r, key, g } => {
                // Default AcquireOptions: TTL 10 s, retry every 100 ms, auto renewal
                // (a renewal thread per guard), no acquisition timeout.
                let guard = if fixed {
                    let opts = rlock::AcquireOptions::builder()
                        .ttl(Duration::from_secs(60))
                        .renewal_mode(rlock::RenewalMode::Disabled)
                        .build()
                        .unwrap();
                    r.acquire_mutex_with_options(key.as_str(), opts)
                } else {
                    r.acquire_mutex(key.as_str())
                };
                *g = Some(guard.map_err(|e| e.to_string())?);
            }
            Worker::Redisson { l, held } => {
                // Default: lease = watchdog_timeout 30 s (non-zero: no watchdog),
                // retries every 100 ms.
                if fixed { l.lock_with_lease_time(Duration::from_secs(60)) } else { l.lock() }
                    .map_err(|e| e.to_string())?;
                *held = true;
            }
            Worker::Redlock { r, key, g } => {
                // acquire() loops lock() (3 tries with 0..200 ms random delays each)
                // until it gets the lock; the guard unlocks on drop.
                let ttl = if fixed { 60_000 } else { 30_000 };
                let manager: &'static redlock::RedLock = r;
                *g = Some(manager.acquire(key.as_bytes(), ttl).map_err(|e| e.to_string())?);
            }
            Worker::Naive { con, key, token, held, sent, .. } => {
                let px = if fixed { 60_000 } else { 30_000 };
                loop {
                    *sent += 1;
                    let ok: Option<String> = redis::cmd("SET")
                        .arg(&*key)
                        .arg(&*token)
                        .arg("NX")
                        .arg("PX")
                        .arg(px)
                        .query(con)
                        .map_err(|e| e.to_string())?;
                    if ok.is_some() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                *held = true;
            }
            Worker::LocalFifo { f, held } => {
                f.lock();
                *held = true;
            }
        }
        Ok(())
    }
}

impl Contender for Worker {
    fn acquire(&mut self) -> Result<(), String> {
        self.acquire_with(Lease::Default)
    }

    fn release(&mut self) -> Result<(), String> {
        match self {
            Worker::RedisMutex { g, .. } => g.take().map_or(Ok(()), |g| g.unlock().map_err(|e| e.to_string())),
            // Explicit release(): dropping the guard would queue the release to
            // rlock's background thread instead.
            Worker::Rlock { g, .. } => g.take().map_or(Ok(()), |mut g| g.release().map_err(|e| e.to_string())),
            Worker::Redisson { l, held } => {
                if std::mem::take(held) {
                    l.unlock().map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Worker::Redlock { g, .. } => {
                drop(g.take());
                Ok(())
            }
            Worker::Naive { con, script, key, token, held, sent } => {
                if std::mem::take(held) {
                    *sent += 1;
                    let _: i64 = script.key(&*key).arg(&*token).invoke(con).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Worker::LocalFifo { f, held } => {
                if std::mem::take(held) {
                    f.unlock();
                }
                Ok(())
            }
        }
    }

    /// Round trips this worker counted itself (the naive loop; the local lock has none).
    fn sent(&self) -> Option<u64> {
        match self {
            Worker::Naive { sent, .. } => Some(*sent),
            Worker::LocalFifo { .. } => Some(0),
            _ => None,
        }
    }
}
