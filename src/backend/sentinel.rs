//! A master found through Sentinel and followed across failovers.
//!
//! The single-server protocol (`single/`) runs unchanged on whichever server is the
//! master now: this module only says which one that is. [`Master`] asks the Sentinels
//! (any that answers, with the client's own connect and read timeouts: redis-rs's sync
//! Sentinel client has none, and a stopped Sentinel would hang it), checks with `ROLE`
//! that the server it names is a master, and remembers it until a connection to it
//! fails, it answers `READONLY` (demoted), or the `redis-mutex-sentinel` thread hears
//! `+switch-master`. Each new master address starts a new *generation*: pooled
//! connections of an older one are dropped, and the notifier subscribes again on the
//! new master (where it finds a new `run_id`, so every held lock is checked, see
//! `ReleaseSink::server_changed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{ConnectionAddr, ConnectionInfo, RedisError, RedisResult};

use super::{MasterLogin, Options};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::keys::redact_url;
use crate::sync::lock;

/// How often the watcher looks up from a quiet Sentinel connection (to see whether
/// the client was dropped).
const TICK: Duration = Duration::from_millis(250);

/// A Sentinel as configured: a client for it and its URL without credentials, for
/// messages.
#[derive(Clone)]
pub(crate) struct SentinelNode {
    pub client: redis::Client,
    pub shown: String,
}

impl SentinelNode {
    pub fn new(client: redis::Client, url: &str) -> SentinelNode {
        SentinelNode { client, shown: redact_url(url) }
    }
}

/// Where the master is, as far as this client knows.
pub(crate) struct Master {
    name: String,
    sentinels: Vec<SentinelNode>,
    /// How to reach and log in to the master, at no address yet: credentials,
    /// database, protocol and TLS; the address comes from the Sentinels.
    template: ConnectionInfo,
    connect_timeout: Duration,
    read_timeout: Duration,
    current: std::sync::Mutex<Current>,
    /// Bumped whenever the master's address changes.
    generation: AtomicU64,
    /// Called whenever the master's address changes (see [`on_move`](Self::on_move)).
    on_move: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct Current {
    /// The master's address and a client for it; `None` until discovered, and again
    /// after it failed (rediscovered on the next connection).
    master: Option<((String, u16), redis::Client)>,
    /// The last address known, kept while `master` is cleared: a rediscovery that
    /// finds another one starts a new generation.
    last: Option<(String, u16)>,
    /// The Sentinel that answered last: asked first next time.
    first: usize,
}

impl Master {
    /// The master monitored as `name` by the Sentinels at `urls`, logged in to with
    /// `login`. Checks the URLs, no I/O.
    pub fn open(name: &str, urls: &[String], login: &MasterLogin, options: &Options) -> Result<Master> {
        if name.is_empty() {
            return Err(Error::InvalidOption { option: "master_name", reason: "must not be empty".into() });
        }
        if urls.is_empty() {
            return Err(Error::InvalidOption {
                option: "sentinels",
                reason: "at least one Sentinel URL is needed".into(),
            });
        }
        let mut sentinels = Vec::with_capacity(urls.len());
        for url in urls {
            // `rediss://` Sentinels with the builder's certificates; the master's
            // connections take the first one's TLS settings (see below).
            let client = options.tls.client(url)?;
            if matches!(client.get_connection_info().addr(), ConnectionAddr::Unix(_)) {
                return Err(Error::InvalidUrl {
                    url: redact_url(url),
                    reason: "a Sentinel is reached over TCP (redis:// or rediss://)".into(),
                });
            }
            sentinels.push(SentinelNode::new(client, url));
        }
        // The master's settings: the first Sentinel's protocol and TLS, the builder's
        // credentials and database (never the Sentinel's password).
        let first = sentinels[0].client.get_connection_info();
        let mut redis = redis::RedisConnectionInfo::default().set_db(login.db);
        redis = redis.set_protocol(first.redis_settings().protocol());
        if let Some(user) = &login.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &login.password {
            redis = redis.set_password(password);
        }
        let template = first.clone().set_redis_settings(redis);
        Ok(Master::new(name.to_owned(), sentinels, template, options.connect_timeout, options.read_timeout))
    }

    /// The Sentinels' URLs without credentials, for messages.
    pub fn shown_sentinels(&self) -> String {
        self.sentinels.iter().map(|s| s.shown.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn new(
        name: String,
        sentinels: Vec<SentinelNode>,
        template: ConnectionInfo,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Master {
        Master {
            name,
            sentinels,
            template,
            connect_timeout,
            read_timeout,
            current: std::sync::Mutex::default(),
            generation: AtomicU64::new(0),
            on_move: OnceLock::new(),
        }
    }

    /// From now on, `f` runs whenever the master moves to another address (a new
    /// generation), in the thread that learned it (the `+switch-master` listener, or an
    /// operation that looked the master up again). Set once; later calls are ignored.
    pub fn on_move(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_move.set(Box::new(f));
    }

    /// The name the Sentinels monitor the master under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings every connection to the master is opened with (its database, for
    /// one).
    pub fn template(&self) -> &ConnectionInfo {
        &self.template
    }

    /// The current generation: it changes with the master's address.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A client for the master and the generation it belongs to; asks the Sentinels
    /// when the master is not known (first use, or after a failure).
    pub fn client(&self) -> RedisResult<(redis::Client, u64)> {
        if let Some((_, client)) = &lock(&self.current).master {
            return Ok((client.clone(), self.generation()));
        }
        let addr = self.discover()?;
        Ok(self.set(addr))
    }

    /// A connection to the master of `generation` failed or found it demoted: ask the
    /// Sentinels again before the next connection.
    pub fn suspect(&self, generation: u64) {
        if generation == self.generation() {
            lock(&self.current).master = None;
        }
    }

    /// A Sentinel announced that the master is at `addr` now.
    pub fn switch_to(&self, addr: (String, u16)) {
        let known = lock(&self.current).last.clone();
        if known.as_ref() != Some(&addr) {
            log::warn!("redis-mutex: Sentinel announced master {} at {}:{}", self.name, addr.0, addr.1);
            self.set(addr);
        }
    }

    /// Makes `addr` the master; a new generation if it moved. A rediscovery after a
    /// dropped connection that finds the same master keeps the generation (and so the
    /// pooled connections).
    fn set(&self, addr: (String, u16)) -> (redis::Client, u64) {
        let client = self.client_for(&addr);
        let (moved, generation) = {
            let mut current = lock(&self.current);
            let moved = current.last.as_ref().is_some_and(|last| *last != addr);
            current.last = Some(addr.clone());
            current.master = Some((addr, client.clone()));
            (moved, if moved { self.generation.fetch_add(1, Ordering::AcqRel) + 1 } else { self.generation() })
        };
        if moved && let Some(f) = self.on_move.get() {
            f();
        }
        (client, generation)
    }

    fn client_for(&self, (host, port): &(String, u16)) -> redis::Client {
        super::client_at(&self.template, host, *port)
    }

    /// Asks the Sentinels, the one that answered last first, for the master's address,
    /// and checks with `ROLE` that the server there is a master (a Sentinel may not
    /// know of a failover yet).
    pub fn discover(&self) -> RedisResult<(String, u16)> {
        let first = lock(&self.current).first;
        let n = self.sentinels.len();
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let sentinel = &self.sentinels[i];
            let addr = match self.ask(sentinel) {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    failures.push(format!("{} does not monitor a master named {:?}", sentinel.shown, self.name));
                    continue;
                }
                Err(e) if is_auth(&e) => return Err(e),
                Err(e) => {
                    failures.push(format!("{}: {e}", sentinel.shown));
                    continue;
                }
            };
            match self.check_role(&addr) {
                Ok(()) => {
                    lock(&self.current).first = i;
                    return Ok(addr);
                }
                Err(e) if is_auth(&e) => return Err(e),
                Err(e) => failures.push(format!("{} names {}:{}, which {e}", sentinel.shown, addr.0, addr.1)),
            }
        }
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("no Sentinel named a reachable master {:?}: {}", self.name, failures.join("; ")),
        )))
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one Sentinel, within the timeouts.
    fn ask(&self, sentinel: &SentinelNode) -> RedisResult<Option<(String, u16)>> {
        let mut con = self.connect(&sentinel.client)?;
        redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&self.name).query(&mut con)
    }

    fn check_role(&self, addr: &(String, u16)) -> RedisResult<()> {
        let mut con = self.connect(&self.client_for(addr))?;
        let role: Vec<redis::Value> = match redis::cmd("ROLE").query(&mut con) {
            Ok(role) => role,
            // An ACL without `+role`: take the Sentinel's word; a demoted master
            // answers `READONLY` to the first script, which looks again.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => return Ok(()),
            Err(e) => return Err(e),
        };
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => Ok(()),
            other => Err(RedisError::from(std::io::Error::other(format!("is not a master (ROLE: {other:?})")))),
        }
    }

    fn connect(&self, client: &redis::Client) -> RedisResult<redis::Connection> {
        let con = client.get_connection_with_timeout(self.connect_timeout)?;
        con.set_read_timeout(Some(self.read_timeout))?;
        con.set_write_timeout(Some(self.read_timeout))?;
        Ok(con)
    }
}

/// A refusal of the credentials: no other Sentinel or master would take them either.
fn is_auth(e: &RedisError) -> bool {
    matches!(Error::from_redis(e.clone(), None), Error::Auth(_))
}

/// Starts the `redis-mutex-sentinel` thread: subscribed to `+switch-master` on one
/// Sentinel at a time (the next one when it fails), it moves `master` to the address a
/// failover announces. It exits soon after `shutdown`'s sender is dropped.
pub(crate) fn spawn_watcher(
    master: Arc<Master>,
    ping_after: Duration,
    shutdown: Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("redis-mutex-sentinel".into()).spawn(move || {
        let mut backoff = Backoff::new();
        let mut next = 0;
        let mut last_error: Option<String> = None;
        loop {
            let sentinel = &master.sentinels[next % master.sentinels.len()];
            match watch(&master, sentinel, ping_after, &shutdown, &mut backoff) {
                Ok(()) => return,
                Err(e) => {
                    let msg = format!("{}: {e}", sentinel.shown);
                    if last_error.as_deref() != Some(msg.as_str()) {
                        log::info!("redis-mutex: not hearing Sentinel announcements ({msg}); trying the next one");
                        last_error = Some(msg);
                    }
                }
            }
            next += 1;
            match shutdown.recv_timeout(backoff.next_delay().max(Duration::from_millis(50))) {
                Err(RecvTimeoutError::Timeout) | Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    })
}

/// Listens on one Sentinel: `Ok` when the client was dropped, else why it broke.
fn watch(
    master: &Master,
    sentinel: &SentinelNode,
    ping_after: Duration,
    shutdown: &Receiver<()>,
    backoff: &mut Backoff,
) -> RedisResult<()> {
    let mut con = master.connect(&sentinel.client)?;
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe("+switch-master")?;
    // A failover while nobody listened: ask once now (on another connection: this
    // one only listens).
    if let Some(addr) = master.ask(sentinel)?
        && lock(&master.current).last.is_some()
    {
        master.switch_to(addr);
    }
    pubsub.set_read_timeout(Some(TICK))?;
    *backoff = Backoff::new();
    let mut last_heard = Instant::now();
    loop {
        if matches!(shutdown.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected)) {
            return Ok(());
        }
        match pubsub.get_message() {
            Ok(msg) => {
                last_heard = Instant::now();
                let payload: String = msg.get_payload().unwrap_or_default();
                if let Some(addr) = parse_switch(&payload, &master.name) {
                    master.switch_to(addr);
                }
            }
            Err(e) if e.is_timeout() => {
                if last_heard.elapsed() >= ping_after {
                    pubsub.set_read_timeout(Some(master.read_timeout))?;
                    pubsub.ping::<()>()?;
                    pubsub.set_read_timeout(Some(TICK))?;
                    last_heard = Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// `<master name> <old ip> <old port> <new ip> <new port>`: the new address, if the
/// message is about `name`.
fn parse_switch(payload: &str, name: &str) -> Option<(String, u16)> {
    let mut words = payload.rsplitn(5, ' ');
    let port = words.next()?.parse().ok()?;
    let ip = words.next()?.to_owned();
    let (_old_port, _old_ip, master) = (words.next()?, words.next()?, words.next()?);
    (master == name).then_some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_messages_name_the_new_master_of_ours_only() {
        let m = "mymaster 127.0.0.1 6379 127.0.0.1 6380";
        assert_eq!(parse_switch(m, "mymaster"), Some(("127.0.0.1".into(), 6380)));
        assert_eq!(parse_switch(m, "other"), None);
        // Master names may hold spaces: the address is the last four words.
        assert_eq!(parse_switch("my master 10.0.0.1 1 10.0.0.2 2", "my master"), Some(("10.0.0.2".into(), 2)));
        for bad in ["", "mymaster", "mymaster 1 2 3 x"] {
            assert_eq!(parse_switch(bad, "mymaster"), None, "{bad:?}");
        }
    }

    #[test]
    fn a_master_that_moves_is_announced_once_per_move() {
        use redis::IntoConnectionInfo;
        let template = "redis://127.0.0.1/".into_connection_info().unwrap();
        let master = Master::new("m".into(), Vec::new(), template, Duration::from_secs(1), Duration::from_secs(1));
        let moves = Arc::new(AtomicU64::new(0));
        let counted = moves.clone();
        master.on_move(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let addr = |port| ("127.0.0.1".to_owned(), port);
        master.switch_to(addr(1)); // the first address known: no move
        master.switch_to(addr(1));
        assert_eq!((moves.load(Ordering::Relaxed), master.generation()), (0, 0));
        master.switch_to(addr(2));
        master.switch_to(addr(2));
        assert_eq!((moves.load(Ordering::Relaxed), master.generation()), (1, 1));
        master.suspect(1);
        master.set(addr(2)); // found again where it was: the same generation
        master.set(addr(1));
        assert_eq!((moves.load(Ordering::Relaxed), master.generation()), (2, 2));
    }
}
