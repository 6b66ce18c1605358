//! The seam between the waiting protocol and a Redis deployment.
//!
//! A backend supplies the scripted operations on one lock (attempt, release, leave,
//! batched extend) plus two reads (holder, force-unlock), and delivers what its
//! subscriber hears about releases to a [`ReleaseSink`] (the waiter registry, which it
//! does not otherwise know). The waiting protocol in `crate::wait` is written against
//! this trait only; `mem` is an in-memory backend for its unit tests.
//!
//! One module per deployment, each with everything it needs (connections, scripts,
//! subscriber), and one place, [`open`], that picks it:
//! - `single/`: one Redis server (TCP, or TLS: `crate::tls` makes its `redis::Client`).
//! - next to it, as they come: `sentinel` (a master found through Sentinel, followed
//!   on failover), `cluster` (scripts on each slot's owner, renewals batched per node),
//!   `redlock` (a quorum of independent masters: each master is a `single` pool with
//!   scripts of its own; it cannot grant, see [`Backend::grants`]).
//!
//! Nothing here imports `crate::wait` or the public API modules: imports point from
//! `wait` down to `backend`, never back (`tests/layout.rs` checks it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::holder::Holder;
use crate::keys::LockKeys;
pub(crate) use crate::options::Replicas;
use crate::stats::Counters;
use crate::tls::TlsOptions;

pub(crate) mod cluster;
#[cfg(test)]
pub(crate) mod mem;
pub(crate) mod redlock;
pub(crate) mod sentinel;
pub(crate) mod shared;
pub(crate) mod single;

pub(crate) use self::shared::{LocalGrants, SharedArgs, SharedAttempt, SharedBackend, SharedLeave, Side};

/// What a releaser needs to hand the lock to a waiting thread of its client.
#[derive(Debug, Clone)]
pub(crate) struct HandoffTarget {
    pub token: String,
    pub lease_ms: u64,
    pub fencing: bool,
    pub auto_renew: bool,
    /// Replicas that must acknowledge a handoff to it (`wait_replicas`).
    pub replicas: Option<Replicas>,
}

/// One acquire attempt's request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptArgs<'a> {
    pub token: &'a str,
    pub lease_ms: u64,
    /// With fencing, the fencing tokens one acquisition takes (the first is its own,
    /// the rest go to in-process handoffs, see `wait::Core::hand_over_locally`); 0
    /// without fencing.
    pub fence_span: u64,
    /// Queue the caller's client for the lock if it is held. `try_lock` doesn't.
    pub will_wait: bool,
    /// The client's mark for this queueing, echoed in a grant (see `Granted::mark`).
    pub mark: u64,
    /// The caller's deadline: no wait for a pooled connection outlasts it.
    pub deadline: Option<Instant>,
    /// Replicas that must acknowledge an acquisition (`wait_replicas`), waited for in
    /// the same round trip. Too few: the backend releases it again and returns
    /// `Error::ReplicasNotAcknowledged`.
    pub replicas: Option<Replicas>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Acquired; the fence value is 0 without fencing.
    Acquired { fence: u64 },
    /// Someone else holds it (or it was granted to a client that has not taken it
    /// yet), for at most this much longer (`None`: no expiry set).
    Held { remaining: Option<Duration> },
}

/// One release's request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReleaseArgs<'a> {
    pub token: &'a str,
    /// The releasing tenure's lease: a lock passed to another client keeps its queue
    /// that long.
    pub lease_ms: u64,
    /// In-process handoffs the releasing tenure made: they count towards this client's
    /// turn (see `handoff_limit`).
    pub local_handoffs: u32,
    /// A client's turn while others wait: at most this many handoffs after its first
    /// acquisition, then the lock passes to the client that has waited longest.
    pub limit: u32,
    /// With fencing, the fencing tokens a handoff takes (see `AttemptArgs::fence_span`).
    pub fence_span: u64,
    /// A waiting thread of this client to hand the lock to (only to a backend that
    /// [`grants`](Backend::grants)).
    pub handoff: Option<&'a HandoffTarget>,
    /// With a handoff target, the client's mark for queueing again behind the others
    /// when its turn is over (see `Granted::mark`).
    pub mark: u64,
    /// A grant to another client is announced only once this many replicas
    /// acknowledged it, and revoked (its client told to look again) when fewer did
    /// (`wait_replicas` of the releasing tenure; `None`: announced at once).
    pub replicas: Option<Replicas>,
}

impl<'a> ReleaseArgs<'a> {
    /// An owner-checked release of what `token` holds, handed to no waiter of this
    /// client and announced at once if it passes to another client.
    pub fn plain(token: &'a str, lease_ms: u64) -> ReleaseArgs<'a> {
        ReleaseArgs {
            token,
            lease_ms,
            local_handoffs: 0,
            limit: 0,
            fence_span: 0,
            handoff: None,
            mark: 0,
            replicas: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Deleted: no other client was queued for it.
    Deleted,
    /// Ownership passed to the handoff target. `turn`: the acquisitions of this
    /// client's turn before it (0 when no other client waits).
    Handed { fence: u64, turn: u32 },
    /// Granted to the client that has waited longest, which was told so; this client
    /// queues behind the others if it was given a handoff target.
    Passed,
    /// The caller was not the owner (lease ran out, force-unlocked, handed on).
    NotOwner,
    /// Handed to the handoff target, but fewer replicas than it asks for
    /// (`HandoffTarget::replicas`) acknowledged it, so the backend released it again
    /// (deleted or passed on): the target does not hold it.
    Unacknowledged,
}

/// One renewal of a batch: the lock, its owner token, the lease to set. The keys'
/// `kind` says which primitive, so which script renews it.
pub(crate) type Renewal<'a> = (&'a LockKeys, &'a str, u64);

pub(crate) trait Backend: Send + Sync + 'static {
    /// Whether a release can make a waiting thread the owner in the same step
    /// (`ReleaseArgs::handoff`). A backend that cannot (Redlock: each master would
    /// grant to its own queue head, and no thread would reach a quorum) only deletes
    /// and notifies (Redlock names one waiting client, whose attempt the masters
    /// favour for a moment); the in-process handoff, which
    /// never asks the backend, applies either way.
    fn grants(&self) -> bool;
    fn attempt(&self, keys: &LockKeys, args: AttemptArgs<'_>) -> Result<Attempt>;
    /// Releases the caller's lock: hands it to `handoff` (a waiter of this client)
    /// unless another client is queued and this client's turn is over, else passes it
    /// to the first queued client, else deletes it. With replicas asked for (by the
    /// handoff target, or `ReleaseArgs::replicas`), nothing is relied on before they
    /// acknowledged it: a handoff they did not is undone (`Released::Unacknowledged`),
    /// a grant is announced only after they did, and revoked otherwise.
    fn release(&self, keys: &LockKeys, args: ReleaseArgs<'_>) -> Result<Released>;
    /// This client has no waiter left for the lock: take it out of the lock's queue of
    /// waiting clients, passing on a reservation made for it.
    fn leave(&self, keys: &LockKeys) -> Result<()>;
    /// Extends every `(keys, token, lease_ms)` whose token still owns its lock, in as
    /// few round trips as the backend allows. The outer error fails the whole batch
    /// (connection); per item, `true` when still owned and extended, `false` when not
    /// owned, or that item's own error (e.g. `WrongType`: its key was overwritten),
    /// which leaves the other items unharmed.
    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>>;
    /// Extends one lease as `extend` does, then waits in the same round trip until
    /// `replicas` acknowledged it: `true` extended and acknowledged, `false` not owned.
    /// Too few replicas: `Error::ReplicasNotAcknowledged` (the lease may be extended on
    /// the master all the same; the lock stays held).
    fn extend_acknowledged(&self, keys: &LockKeys, token: &str, lease_ms: u64, replicas: Replicas) -> Result<bool>;
    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>>;
    /// Deletes the lock whoever holds it and wakes every client's waiters.
    fn force_unlock(&self, keys: &LockKeys) -> Result<bool>;
    /// How much of a lease of `lease_ms`, timed from when the request that set it was
    /// sent, the backend vouches for: all of it on one server (whose clock times it);
    /// on Redlock, the lease less the allowance for the masters' clocks drifting
    /// apart. The client counts a lease as confirmed for this long. The default: all.
    fn vouched_ms(&self, lease_ms: u64) -> u64 {
        // The server's clock times the lease from when it ran the request, which is
        // no earlier than it was sent.
        lease_ms
    }
    /// The longest lease the deployment accepts (`redlock_max_lease` on Redlock); `None`:
    /// [`MAX_LEASE`](crate::options::MAX_LEASE), checked by the options (the default).
    fn max_lease(&self) -> Option<Duration> {
        None
    }
    /// Why the deployment cannot offer `capability`, or `None` when it can. Checked
    /// before any I/O, so that what a deployment cannot keep is refused up front
    /// (`Error::InvalidOption`) rather than weakened. (Read-write locks and semaphores
    /// are refused through [`shared`](Self::shared).) The default: none.
    fn refuses(&self, capability: Capability) -> Option<&'static str> {
        let _ = capability;
        None
    }
    /// The subscriber connection a waiting thread may read itself, on a backend with
    /// one (one server, Sentinel: see [`Listen`]). The default: none.
    fn line(&self) -> Option<&dyn Listen> {
        None
    }
    /// Read-write locks and semaphores, on a backend that can bound them: one master
    /// holds all of a lock's state (one server, TLS, Sentinel, Cluster). `Err` says
    /// why not; the default, for a backend that does not override it: a quorum of
    /// independent masters (Redlock) cannot bound a semaphore (with 2 permits and 5
    /// masters, three holders can each own a different majority), nor keep a writer
    /// out of every majority readers hold.
    fn shared(&self) -> std::result::Result<&dyn SharedBackend, &'static str> {
        Err("a quorum of independent masters cannot bound them (with 2 permits and 5 masters, three holders \
             can each own a different majority); use a single server, Sentinel or Cluster")
    }
}

/// What a deployment may not be able to offer (see [`Backend::refuses`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capability {
    /// `MutexOptions::wait_replicas`: a `WAIT` for replicas of the server that holds
    /// the lock.
    WaitReplicas,
}

/// A lock another client's release granted to this client: it is this client's in
/// Redis under `token`, with a short lease (`lease_ms`, the `reservation_timeout`)
/// until the thread that takes it extends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Granted {
    pub token: String,
    /// The fencing token the grant took (0 when the client queued without fencing).
    pub fence: u64,
    pub lease_ms: u64,
    /// The client's mark of the request that queued it (`AttemptArgs::mark`,
    /// `ReleaseArgs::mark`): a grant of an earlier queueing, heard late, cannot be
    /// timed from this one's request.
    pub mark: u64,
    /// Replicas that acknowledged the grant before it was announced (0: not waited
    /// for). A grantee that wants more confirms it with a `WAIT` of its own.
    pub acks: u32,
}

/// Where a backend delivers what it hears about releases: the client's waiter
/// registry. The backend knows lock names, not waiters.
pub(crate) trait ReleaseSink: Send + Sync + 'static {
    /// Another client's release granted `name` to this client: the first waiting
    /// thread takes it. `false` when none waits (the backend then releases it).
    fn granted(&self, name: &str, grant: Granted) -> bool;
    /// A release of `name` concerns this client (forced, or a look-again notice fell
    /// due): wake its first waiting thread. `false` when none waits.
    fn wake_first(&self, name: &str) -> bool;
    /// Messages may have gone unheard (the subscriber reconnected): every waiting
    /// thread looks again.
    fn wake_all(&self);
    /// The holder under `token` released `name`, and this client waited for it (a
    /// backend that does not grant says so this way; Redlock once per master). Wakes
    /// the first waiting thread, as `wake_first` does; `false` when none waits (or,
    /// in a sink that tells copies of one release apart, when this one was heard).
    fn released(&self, name: &str, token: &str) -> bool {
        let _ = token;
        self.wake_first(name)
    }
    /// Whether a thread of this client waits for `name`.
    fn has_waiters(&self, name: &str) -> bool;
    /// Whether a thread of this client waits for a lock named `name` of any kind (mutex,
    /// read-write lock, semaphore: their keys share the name's hash tag, and so a
    /// cluster's sharded channel). The default: the mutex's waiters.
    fn waits_for(&self, name: &str) -> bool {
        self.has_waiters(name)
    }
    /// Messages about the locks named `name` may have gone unheard (a cluster moved their
    /// slot, or the subscriber of its node reconnected): the first mutex waiter and every
    /// read-write lock or semaphore waiter of that name look again. The default: the
    /// mutex's first waiter.
    fn recheck(&self, name: &str) {
        self.wake_first(name);
    }
    /// How many threads of this client wait now (for locks of any kind). The default:
    /// none counted.
    fn waiting_threads(&self) -> usize {
        0
    }
    /// Whether release messages are being heard: while not, waiters poll.
    fn set_listening(&self, up: bool);
    /// The server is not the one that confirmed this client's leases any more (a
    /// failover moved the master, or it restarted: its `run_id` changed). Every lock
    /// this client holds is checked at once, and none is handed on in memory until
    /// Redis confirmed it again.
    fn server_changed(&self);
    /// A release (or an attempt) granted a read-write lock or semaphore to this
    /// client's waiting thread whose token is `token`: it holds it now, for `lease_ms`
    /// until it extends it. `false` when no thread waits under that token (it left, and
    /// its leaving released the grant, or it acquired by an attempt of its own).
    fn granted_ticket(&self, token: &str, lease_ms: u64) -> bool {
        let _ = (token, lease_ms);
        false
    }
    /// The waiting thread `token` (read-write lock or semaphore) looks again now.
    /// `false` when none waits under that token.
    fn wake_ticket(&self, token: &str) -> bool {
        let _ = token;
        false
    }
    /// Whether a thread of this client waits under `token` (read-write lock or
    /// semaphore).
    fn has_ticket(&self, token: &str) -> bool {
        let _ = token;
        false
    }
}

/// A subscriber connection that a waiting thread may read itself, instead of sleeping
/// until the subscriber's thread hears a message and wakes it: one thread wake-up less
/// between a release and the next holder (see `single::line`).
pub(crate) trait Listen: Send + Sync {
    /// If nobody else reads the connection now: reads it, delivering every message to
    /// the client's [`ReleaseSink`] as the subscriber thread would, until `woken()`
    /// (the caller's own wake-up came) or `until`, and returns `true`; it may return
    /// earlier (the connection broke or must be probed), then the caller sleeps as
    /// usual for the rest. `false`: someone else reads it, or it is down.
    fn listen_until(&self, until: Instant, woken: &dyn Fn() -> bool) -> bool;
}

/// Where the locks live.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deployment<'a> {
    /// One Redis server at this URL.
    Single { url: &'a str },
    /// The master that Sentinels monitor under `master_name`, followed on failover.
    Sentinel { master_name: &'a str, sentinels: &'a [String], master: &'a MasterLogin },
    /// A Redis Cluster, found from any of these nodes.
    Cluster { seeds: &'a [String] },
    /// Redlock: a lock is held while a majority of these independent masters hold it.
    Redlock { masters: &'a [String], settings: redlock::Settings },
}

/// A client for the server at `host:port`, with everything else (credentials,
/// database, protocol, TLS and its certificates) from `template`.
pub(crate) fn client_at(template: &redis::ConnectionInfo, host: &str, port: u16) -> redis::Client {
    let addr = match template.addr() {
        redis::ConnectionAddr::TcpTls { insecure, tls_params, .. } => redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
    };
    // A client from a complete `ConnectionInfo` parses nothing: opening it cannot fail
    // (redis-rs's `IntoConnectionInfo` for `ConnectionInfo` is the identity).
    match redis::Client::open(template.clone().set_addr(addr)) {
        Ok(client) => client,
        Err(e) => unreachable!("a client from a ConnectionInfo: {e}"),
    }
}

/// How to log in to a master found through Sentinel: the Sentinels' URLs carry their
/// own credentials, the master's come from the builder. TLS to the master when the
/// Sentinels are reached over TLS.
#[derive(Clone, Default)]
pub(crate) struct MasterLogin {
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

impl std::fmt::Debug for MasterLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterLogin")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

/// What every backend is built from, besides where the locks live.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Names this client's connections and its place in lock queues.
    pub client_id: String,
    pub prefix: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub pool_max_size: u32,
    pub pool_timeout: Duration,
    /// How long a lock granted to a waiting client is its before that client takes it
    /// (`reservation_timeout`).
    pub reservation: Duration,
    /// Silence after which the subscriber probes its connection.
    pub ping_interval: Duration,
    /// Certificates for `rediss://` URLs, already checked.
    pub tls: TlsOptions,
}

/// Opens the backend for `deployment`; with `check`, first makes sure the server
/// answers and accepts the credentials. Its subscriber (started here) delivers to
/// `sink`. The URL is checked before any I/O.
pub(crate) fn open(
    deployment: Deployment<'_>,
    options: Options,
    sink: Arc<dyn ReleaseSink>,
    stats: Arc<Counters>,
    check: bool,
) -> Result<Arc<dyn Backend>> {
    if let Deployment::Redlock { masters, settings } = deployment {
        return Ok(Arc::new(redlock::Redlock::open(masters, settings, options, sink, stats, check)?));
    }
    let (target, shown) = match deployment {
        Deployment::Single { url } => {
            // A TLS client for a `rediss://` URL, with the builder's certificates.
            (single::Target::Fixed(Box::new(options.tls.client(url)?)), crate::keys::redact_url(url))
        }
        Deployment::Sentinel { master_name, sentinels, master } => {
            let master = sentinel::Master::open(master_name, sentinels, master, &options)?;
            let shown = format!("master {master_name:?} of Sentinels {}", master.shown_sentinels());
            (single::Target::Sentinel(Arc::new(master)), shown)
        }
        Deployment::Cluster { seeds } => {
            let nodes = cluster::open(seeds, &options)?;
            let shown = format!(
                "cluster ({})",
                seeds.iter().map(|s| crate::keys::redact_url(s)).collect::<Vec<_>>().join(", ")
            );
            (single::Target::Cluster(Arc::new(nodes)), shown)
        }
        Deployment::Redlock { .. } => unreachable!("opened above"),
    };
    Ok(Arc::new(single::SingleServer::open(target, &shown, options, sink, stats, check)?))
}
