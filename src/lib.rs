//! A distributed mutex for threaded, synchronous Rust, backed by Redis.
//!
//! `lock()` blocks the calling thread until the lock is free anywhere in the fleet,
//! without spinning on Redis: waiting threads sleep until the client's single pub/sub
//! subscriber hears the holder release, and a release inside the same process hands
//! the lock straight to the next waiting thread, without a round trip to Redis.
//!
//! # Quick start
//!
//! ```no_run
//! use redis_mutex::{LockClient, MutexOptions};
//! use std::time::Duration;
//!
//! let client = LockClient::open("redis://127.0.0.1:6379/")?;
//! let invoices = client.mutex("invoice:42");
//!
//! let guard = invoices.lock()?;          // waits while another process holds it
//! // ... exclusive work ...
//! drop(guard);                           // or guard.unlock()? to see release errors
//!
//! // Bounded waits, and fencing tokens for resources that can check them:
//! let fenced = client.mutex_with("ledger", MutexOptions::default().fencing(true));
//! if let Some(g) = fenced.try_lock_for(Duration::from_secs(2))? {
//!     println!("holding ledger with fencing token {:?}", g.fencing_token());
//! }
//! # Ok::<(), redis_mutex::Error>(())
//! ```
//!
//! # Guarantees
//!
//! - **Owner-checked release and renewal**: every acquisition through Redis gets a
//!   fresh UUID v4 token; release and extend act only if Redis still stores that token.
//! - **In-process handoff without a round trip**: a release that has a waiting thread
//!   of the same client passes it the lock in memory: the lock stays this client's in
//!   Redis (same token, lease renewed by the watchdog) and the next thread runs at
//!   once. Only while Redis confirmed the lease within its renewal period (a third of
//!   the lease), and at most `handoff_limit` times in a row; then the release goes
//!   through Redis, which checks ownership and lets other clients have their turn.
//!   With fencing, each handoff still gets a higher fencing token.
//! - **Leases that look after themselves**: each acquisition has a lease (30 s by
//!   default); with `auto_renew` (default on) one watchdog thread per client renews
//!   every live guard at a third of its lease. A renewal that finds the lock gone marks
//!   the guard lost ([`MutexGuard::is_lost`]).
//! - **No lost wake-ups**: a thread registers as a waiter before its attempt; a failed
//!   attempt queues its client in the lock itself, and a release grants the lock to
//!   the first queued client (it is the owner at once) with a message to that client
//!   only; its waiting thread returns without asking Redis. Only the first waiter of a
//!   lock in each client asks Redis, and its sleep is never longer than the holder's
//!   remaining lease; the threads queued behind it get the lock by handoff, and are
//!   woken to ask Redis themselves whenever the first stops watching (it leaves, or
//!   holds the lock on a lease that is not renewed and may just run out).
//! - **Fair**: a release hands the lock to the longest-waiting thread of the same
//!   client (a thread that releases and locks again queues behind it); while other
//!   clients wait, after at most `handoff_limit` handoffs the lock goes to the client
//!   that has waited longest, so processes take turns in the order they queued. The
//!   bound holds whatever options the client's threads lock with.
//! - **No lock held by a lost reply**: a request that acquired a lock but whose reply
//!   was lost (the caller got an error) is remembered, and the lock released as soon
//!   as Redis answers again, instead of blocking everyone for a lease.
//!
//! # Limits
//!
//! - **Leases and pauses.** A holder that stalls past its lease (GC pause, SIGSTOP,
//!   partition) loses the lock while it still runs. The crate cannot prevent that;
//!   it reports it ([`MutexGuard::is_lost`], [`Error::LockLost`]), and fencing tokens
//!   ([`MutexOptions::fencing`]) let the protected resource refuse the stale holder.
//! - **Clocks.** Leases are measured by the Redis server's clock; client clocks do not
//!   matter, but a server whose clock jumps shortens or stretches leases. The client
//!   decides whether a lease is fresh enough to hand on without asking Redis by the
//!   larger of its monotonic and its wall clock, so a suspended machine (whose
//!   monotonic clock stops) does not keep a lease looking fresh; this assumes the wall
//!   clock is not stepped backwards (NTP slews it). Fencing tokens follow the server's
//!   clock (`max(counter, clock in µs) + block`), so that they never go backwards even
//!   when their counter is lost: that holds as long as the server clock moves forward
//!   and tokens are taken slower than one per µs on average (see
//!   [`MutexOptions::fencing`]).
//! - **Redis settings.** `maxmemory-policy noeviction`: under any other policy Redis
//!   may evict a held lock, and another client then acquires while the holder learns
//!   it only at its next renewal. AOF (`appendonly yes`) to keep locks across a
//!   restart: without persistence a restart forgets every lock (see below); fencing
//!   tokens stay safe either way. [`LockClientBuilder::build`] reads both (`INFO`)
//!   and logs a warning for an eviction policy, a note for no AOF, and "could not
//!   check" when the server refuses to say; it never fails because of them.
//! - **A waiting process that crashes** can hold up the others once, by the grant it
//!   never takes (`reservation_timeout`, 1 s by default), when its turn comes.
//! - **One Redis.** Locks live on one server. Without persistence, a Redis restart
//!   forgets every lock; guards notice at their next renewal. So do the threads the
//!   lock was handed to in the meantime inside the process (at most `handoff_limit`
//!   of them, within a third of the lease): a lock lost unseen is lost for them too.
//!   `handoff_limit(0)` sends every release through Redis.
//! - **Replication is asynchronous.** A lock on the master can be lost in a failover
//!   to a replica it had not reached. [`MutexOptions::wait_replicas`] returns a lock
//!   only once that many replicas acknowledged it (Redis's `WAIT`): it then survives a
//!   failover to one of them. It is not consensus: a failover to a replica that did
//!   not acknowledge, or renewals that had not reached it yet, can still lose it.
//!
//! # Read-write locks and semaphores
//!
//! [`LockClient::rw_lock`] (many readers or one writer, with writer preference) and
//! [`LockClient::semaphore`] (at most `n` holders) run on the same machinery: a lease
//! per reader, writer and permit renewed by the watchdog, lost-lease detection, waiters
//! asleep until a release grants them the lock, a FIFO queue of waiting threads across
//! the fleet. See [`RwLock`] and [`Semaphore`] for their guarantees and limits.
//!
//! ```no_run
//! let client = redis_mutex::LockClient::open("redis://127.0.0.1:6379/")?;
//! let partner = client.semaphore("partner-api", 10);
//! let permit = partner.acquire()?;   // at most 10 holders at once, fleet-wide
//! drop(permit);
//! let catalog = client.rw_lock("catalog");
//! let reading = catalog.read()?;     // shared with other readers, never with a writer
//! drop(reading);
//! # Ok::<(), redis_mutex::Error>(())
//! ```
//!
//! # TLS
//!
//! `rediss://` URLs need the `tls` feature, on by default (rustls with the `ring`
//! crypto provider, which the crate installs as the process default only when the
//! application installed none). Trust a CA with
//! [`tls_root_cert`](LockClientBuilder::tls_root_cert) (else the system's roots), and
//! for mutual TLS present [`tls_client_cert`](LockClientBuilder::tls_client_cert).
//! Every connection of the client is TLS; a refused certificate or a plain-TCP port is
//! [`Error::Tls`]. `default-features = false` builds without rustls: `rediss://` and
//! the TLS options are then errors that say to enable `tls`.
//!
//! ```no_run
//! let client = redis_mutex::LockClient::builder()
//!     .tls_root_cert(std::fs::read("ca.crt")?)
//!     .build("rediss://redis.internal:6380/")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//! # Redlock
//!
//! Where one Redis, even with Sentinel, is a single point of failure and replication
//! cannot be trusted, [`LockClientBuilder::build_redlock`] spreads each lock over N
//! independent masters (N odd, at least 3): a lock is held while a majority of them
//! hold it for its owner. Mutexes, guards, options and stats are the same.
//!
//! ```no_run
//! use redis_mutex::{LockClient, MutexOptions};
//!
//! let client = LockClient::builder()
//!     .build_redlock(&["redis://a:6379/", "redis://b:6379/", "redis://c:6379/", "redis://d:6379/", "redis://e:6379/"])?;
//! let guard = client.mutex_with("report", MutexOptions::default().fencing(true)).lock()?;
//! # Ok::<(), redis_mutex::Error>(())
//! ```
//!
//! What it guarantees: an acquisition is returned only while a majority of masters
//! granted it and its *validity* (lease − time the request took − drift, drift = 1% of
//! the lease + 2 ms) is positive, and the guard counts its lease as that; up to N/2
//! masters may be down, slow or restarted without locks being lost or doubled; a
//! master that restarted sits out for `redlock_max_lease`; fencing tokens never go
//! backwards (each master's `max(counter, clock) + block`, the maximum over the
//! majority written back to it before the guard is returned).
//!
//! **The known critique** (Martin Kleppmann, "How to do distributed locking", 2016)
//! holds here too: Redlock's safety rests on timing. A holder paused longer than its
//! validity (a GC pause, `SIGSTOP`, swapping, a suspended VM) keeps working after its
//! lock expired on the masters and went to someone else, and nothing the lock service
//! does can stop it; a master whose clock jumps forward expires locks early. The
//! remedy is fencing: the protected resource accepts a write only with a token higher
//! than any it has seen, which makes the paused holder harmless whatever the timing.
//! Without fencing, use Redlock (like any lease-based lock) to avoid doing work twice,
//! not where a double holder corrupts data. This implementation assumes: the masters'
//! and the client's clocks advance at nearly the same rate (within the drift) and are
//! not stepped (NTP slews them); a master that lost its data (a restart without AOF)
//! is found by its `INFO` uptime, which needs `+info` in the ACL; the fencing
//! assumptions of [`MutexOptions::fencing`] on every master. A release names the next
//! waiting client (the next in the order of client ids) and wakes it; for a short
//! while only it may take a master's vote (no grant as on one server: the quorum
//! still decides), so waiting clients take turns.
//! `wait_replicas` is refused: the masters have no replicas; so are read-write locks
//! and semaphores ([`Error::Unsupported`]): a quorum cannot bound N permits.
//!
//! # From the shell
//!
//! With the `cli` feature the crate also builds the `redis-mutex` command, which runs a
//! command while holding a lock (cron jobs, shell scripts): `redis-mutex run NAME --
//! CMD`, `status NAME`, `unlock --force NAME`; see `redis-mutex --help` and the README.
//!
//! See `ARCHITECTURE.md` for the Redis data layout, the Lua scripts and the waiting
//! protocol.
#![warn(missing_docs)]

mod backend;
mod backoff;
#[doc(hidden)]
pub mod bench_support;
mod client;
mod clock;
mod error;
mod guard;
mod held;
pub mod holder;
mod keys;
mod mutex;
mod options;
mod reentrant;
mod rwlock;
mod semaphore;
mod stats;
mod sync;
mod tls;
mod wait;

pub use client::{LockClient, LockClientBuilder};
pub use error::{Error, Result};
pub use guard::MutexGuard;
pub use holder::Holder;
pub use mutex::Mutex;
pub use options::{MAX_LEASE, MutexOptions};
pub use reentrant::{ReentrantMutex, ReentrantMutexGuard};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use semaphore::{Semaphore, SemaphorePermit};
pub use stats::Stats;
