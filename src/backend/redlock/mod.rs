//! Redlock: a lock is held while a majority of N independent masters (N odd, at least
//! 3) hold it for its owner, within its validity (lease − time taken − clock drift).
//!
//! Each master is the single-server machinery: a `single::Pool` (timeouts, retries on
//! dropped connections), the single-server scripts where they fit (`extend`, `leave`,
//! `force_unlock`, the holder read) and a single-server notifier. What differs lives
//! here: requests go to every master at once, on per-master workers (`master`), and a
//! round collects the replies within `redlock_master_timeout` (`round`); the replies
//! are counted (`tally`); the acquire and release scripts of its own (`scripts`, `lua/`)
//! grant nothing (each master would grant to its own first waiter: nobody would reach
//! a quorum); a release names the next waiting client instead (the same rule on every
//! master: the next client id after the releaser's), which alone is told and for a
//! short while alone may take a master's vote; the notifiers' messages reach the
//! registry through `listen`. A master that restarted less than `redlock_max_lease`
//! ago counts for no quorum (`master::Boot`).
//!
//! ARCHITECTURE.md ("Redlock") has the reasons.

mod acquire;
mod listen;
mod master;
mod round;
mod scripts;
mod tally;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use self::listen::Listeners;
use self::master::{Boot, Master};
use self::round::Reply;
use self::scripts::RedlockScripts;
use super::single::line::Line;
use super::single::notifier::{self, NotifierConfig};
use super::single::scripts::{HolderFields, Scripts};
use super::single::{ConnectSettings, Pool, Target};
use super::{
    Attempt, AttemptArgs, Backend, Capability, Options, ReleaseArgs, ReleaseSink, Released, Renewal, Replicas,
};
use crate::clock::later;
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::keys::{Channels, LockKeys, redact_url};
use crate::stats::Counters;
use crate::sync::lock;

/// The Redlock options of the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// The longest lease; a master up for less sits out (`redlock_max_lease`).
    pub max_lease: Duration,
    /// How long a round waits for each master (`redlock_master_timeout`).
    pub master_timeout: Duration,
}

/// The clock drift allowed for on a lease of `lease_ms`: 1% of it plus 2 ms (the
/// masters' clocks, which expire the keys, may run a little faster than the client's,
/// which times the validity).
pub(crate) fn drift_ms(lease_ms: u64) -> u64 {
    lease_ms / 100 + 2
}

pub(crate) struct Redlock {
    masters: Vec<Arc<Master>>,
    /// Each master's channels (the database, part of their names, may differ).
    channels: Vec<Channels>,
    scripts: Arc<Scripts>,
    lua: Arc<RedlockScripts>,
    listeners: Arc<Listeners>,
    quorum: usize,
    client_id: Arc<str>,
    settings: Settings,
    /// Numbers the acquisition rounds (see `acquire.lua`'s round).
    rounds: AtomicU64,
    /// Won rounds with votes still to come, by owner token: their release tells the
    /// late votes' jobs (`round::Phase::Released`).
    unsettled: StdMutex<HashMap<String, Arc<round::Ballot>>>,
    /// Dropping it stops the notifiers.
    _stop: Sender<()>,
}

impl Redlock {
    /// Checks the URLs (before any I/O), and with `check` that a quorum of masters
    /// answers and accepts the credentials, then starts a notifier per master.
    pub fn open(
        urls: &[String],
        settings: Settings,
        options: Options,
        sink: Arc<dyn ReleaseSink>,
        stats: Arc<Counters>,
        check: bool,
    ) -> Result<Redlock> {
        let n = urls.len();
        if n < 3 || n.is_multiple_of(2) {
            return Err(Error::InvalidOption {
                option: "masters",
                reason: format!(
                    "Redlock needs an odd number of masters, at least 3 (got {n}): a majority of an even number \
                     tolerates no more failures than of one fewer"
                ),
            });
        }
        let quorum = n / 2 + 1;
        let mut masters = Vec::with_capacity(n);
        let mut channels = Vec::with_capacity(n);
        let mut seen = std::collections::HashSet::new();
        for url in urls {
            let client = options.tls.client(url)?;
            let shown = redact_url(url);
            let info = client.get_connection_info();
            if !seen.insert((format!("{:?}", info.addr()), info.redis_settings().db())) {
                return Err(Error::InvalidOption {
                    option: "masters",
                    reason: format!("{shown} is named twice: it would vote twice"),
                });
            }
            let boot = Arc::new(Boot::new(shown.clone(), settings.max_lease));
            let connect = ConnectSettings {
                target: Target::Fixed(Box::new(client)),
                name: format!("redis-mutex:{}", options.client_id),
                connect_timeout: options.connect_timeout,
                read_timeout: options.read_timeout,
                write_timeout: options.write_timeout,
                on_connect: Some(boot.on_connect()),
            };
            channels.push(Channels::new(&options.prefix, connect.target.redis_settings().db(), &options.client_id));
            masters.push(Arc::new(Master::new(connect, shown, boot, options.pool_max_size, options.pool_timeout)));
        }
        if check {
            check_quorum(&masters, quorum)?;
        }
        let lua = Arc::new(RedlockScripts::new());
        let pass_on: listen::PassOn = {
            let (masters, lua, prefix) = (masters.clone(), lua.clone(), options.prefix.clone());
            let prefixes: Vec<String> = channels.iter().map(|c| c.clients.clone()).collect();
            let me: Arc<str> = options.client_id.clone().into();
            Box::new(move |i: usize, name: &str| {
                let Ok(keys) = LockKeys::new(&prefix, name) else { return };
                let (lua, tell, me) = (lua.clone(), prefixes[i].clone(), me.clone());
                masters[i].submit(Box::new(move |pool: &Pool| {
                    if let Err(e) = pool.with_conn(Some(&keys.key), None, |c| lua.leave(c, &keys, &me, &tell)) {
                        // The name then lapses (`NAMED_MS`).
                        log::debug!("redis-mutex: could not pass on a name for {}: {e}", keys.key);
                    }
                }));
            })
        };
        let listeners = Listeners::new(sink, n, quorum, pass_on);
        let (stop, stopped) = crossbeam_channel::bounded(0);
        for (i, master) in masters.iter().enumerate() {
            let shared = notifier::Shared {
                sink: listeners.for_master(i),
                stats: stats.clone(),
                unclaimed: Box::new(|_, _| {}),
            };
            // Each master's messages are counted per master (`Listeners`): only its
            // notifier thread reads them.
            let line = Line::new(shared, 0, options.ping_interval, master.settings().target.clone(), false);
            notifier::spawn(
                NotifierConfig {
                    connect: master.settings().clone(),
                    channels: channels[i].clone(),
                    prefix: options.prefix.clone(),
                    ping_after: options.ping_interval,
                },
                line,
                stopped.clone(),
            )
            .map_err(|e| Error::spawn("redis-mutex-notifier", e))?;
        }
        Ok(Redlock {
            masters,
            channels,
            scripts: Arc::new(Scripts::new()),
            lua,
            listeners,
            quorum,
            client_id: options.client_id.into(),
            settings,
            rounds: AtomicU64::new(0),
            unsettled: StdMutex::default(),
            _stop: stop,
        })
    }

    /// Which masters count for a quorum now.
    pub(super) fn counting(&self) -> Vec<bool> {
        let now = Instant::now();
        self.masters.iter().map(|m| m.boot.counts(now)).collect()
    }

    /// Runs `op` on every master at once (see `round`), each reply `Err` on the
    /// master's failure.
    fn on_all<T: Send + 'static>(
        &self,
        op: impl Fn(usize, &mut redis::Connection) -> redis::RedisResult<T> + Send + Sync + 'static,
        key: Option<&str>,
        settles: impl Fn(&T) -> bool,
        direct: Option<&dyn round::Direct<T>>,
    ) -> round::Replies<T> {
        let all: Vec<usize> = (0..self.masters.len()).collect();
        self.on_some(&all, op, key, settles, direct)
    }

    /// [`on_all`](Self::on_all) on the masters `which` (indexes), the replies in
    /// that order; `op` is given each master's index. `settles`: which replies can make
    /// up the quorum (see `round::run`). `direct`: the same request, for the caller to
    /// send itself (indexed as `which`).
    fn on_some<T: Send + 'static>(
        &self,
        which: &[usize],
        op: impl Fn(usize, &mut redis::Connection) -> redis::RedisResult<T> + Send + Sync + 'static,
        key: Option<&str>,
        settles: impl Fn(&T) -> bool,
        direct: Option<&dyn round::Direct<T>>,
    ) -> round::Replies<T> {
        let op = Arc::new(op);
        let key: Option<Arc<str>> = key.map(Into::into);
        let deadline = later(Instant::now(), self.settings.master_timeout);
        let masters: Vec<Arc<Master>> = which.iter().map(|&i| self.masters[i].clone()).collect();
        let counting = self.counting();
        let count: Vec<bool> = which.iter().map(|&i| counting[i]).collect();
        let quorum = self.quorum.min(which.len());
        round::run(&masters, &count, self.settings.master_timeout, quorum, settles, direct, |k, tx: Reply<T>| {
            let (op, key, i) = (op.clone(), key.clone(), which[k]);
            Box::new(move |pool: &Pool| {
                let r = pool.with_conn(key.as_deref(), Some(deadline), |c| op(i, c));
                let _ = tx.send((k, r));
            })
        })
    }

    /// Releases `token`'s lock everywhere, telling the waiting clients, without
    /// waiting for the replies (a lock found lost: what is left of it).
    fn forget(&self, keys: &LockKeys, token: &str) {
        for (i, master) in self.masters.iter().enumerate() {
            let (lua, keys, token, me) = (self.lua.clone(), keys.clone(), token.to_owned(), self.client_id.clone());
            let prefix = self.channels[i].clients.clone();
            master.submit(Box::new(move |pool: &Pool| {
                // `true`: this client's queue entries stay (whether a thread of it
                // still waits is not asked here; an entry too many costs a name passed
                // on).
                let _ =
                    pool.with_conn(Some(&keys.key), None, |c| lua.release(c, &keys, &token, &me, None, &prefix, true));
            }));
        }
    }

    /// `token`'s round won with votes still to come: its release must reach them.
    fn unsettled(&self, token: &str, ballot: Arc<round::Ballot>) {
        let mut unsettled = lock(&self.unsettled);
        if unsettled.len() >= 4096 {
            // Tenures that ended without a release (lost); their late votes, if any,
            // end with their lease.
            unsettled.clear();
        }
        unsettled.insert(token.to_owned(), ballot);
    }

    /// Releases `token`'s lock on every master where it is held, telling the clients
    /// that wait there: per master, how many it told (`None`: not held there).
    fn release_all(&self, keys: &LockKeys, token: &str) -> round::Replies<Option<u32>> {
        let (lua, keys2, token, me) = (self.lua.clone(), keys.clone(), token.to_owned(), self.client_id.clone());
        let prefixes: Vec<String> = self.channels.iter().map(|c| c.clients.clone()).collect();
        let released = |told: &Option<u32>| told.is_some();
        // Where another owner holds it, an attempt of this client that won elsewhere
        // queued it: it leaves those queues unless a thread of it waits.
        let queued = self.listeners.has_waiters(&keys.name);
        let direct = round::Packed {
            packed: prefixes
                .iter()
                .map(|p| lua.release_cmd(keys, &token, &me, None, p, queued).get_packed_command())
                .collect(),
            key: &keys.key,
            parse: |v| Ok(RedlockScripts::released(redis::from_redis_value(v)?)),
        };
        self.on_all(
            move |i, c| lua.release(c, &keys2, &token, &me, None, &prefixes[i], queued),
            Some(&keys.key),
            released,
            Some(&direct),
        )
    }
}

/// Checks, on every master at once, that a quorum answers `PING` with the credentials
/// (and says how long it has been up: see `Boot`).
fn check_quorum(masters: &[Arc<Master>], quorum: usize) -> Result<()> {
    let replies: round::Replies<()> = std::thread::scope(|s| {
        let checks: Vec<_> =
            masters.iter().map(|m| s.spawn(move || super::single::check_server(m.settings(), &m.shown))).collect();
        checks
            .into_iter()
            .map(|c| {
                Some(c.join().unwrap_or_else(|_| Err(Error::Connection(std::io::Error::other("panicked").into()))))
            })
            .collect()
    });
    let counts = vec![true; masters.len()];
    let turnout = tally::Turnout::of(&replies, &counts, quorum);
    for (m, r) in masters.iter().zip(&replies) {
        if let Some(Err(e)) = r {
            log::warn!("redis-mutex: Redlock master {} does not answer: {e}", m.shown);
        }
    }
    if turnout.counted() >= quorum { Ok(()) } else { Err(turnout.error()) }
}

impl Backend for Redlock {
    fn grants(&self) -> bool {
        false
    }

    fn attempt(&self, keys: &LockKeys, a: AttemptArgs<'_>) -> Result<Attempt> {
        acquire::attempt(self, keys, &a)
    }

    fn release(&self, keys: &LockKeys, a: ReleaseArgs<'_>) -> Result<Released> {
        if let Some(ballot) = lock(&self.unsettled).remove(a.token) {
            ballot.released();
        }
        let replies = self.release_all(keys, a.token);
        let released: round::Replies<bool> = replies.into_iter().map(|r| r.map(|r| r.map(|t| t.is_some()))).collect();
        tally::release(&released, &self.counting(), self.quorum)
    }

    fn leave(&self, keys: &LockKeys) -> Result<()> {
        let (lua, keys2, me) = (self.lua.clone(), keys.clone(), self.client_id.clone());
        let prefixes: Vec<String> = self.channels.iter().map(|c| c.clients.clone()).collect();
        let replies = self.on_all(move |i, c| lua.leave(c, &keys2, &me, &prefixes[i]), Some(&keys.key), |_| true, None);
        match replies.into_iter().flatten().find_map(|r| r.err()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn extend(&self, items: &[Renewal<'_>]) -> Result<Vec<Result<bool>>> {
        acquire::extend(self, items)
    }

    fn extend_acknowledged(&self, _: &LockKeys, _: &str, _: u64, _: Replicas) -> Result<bool> {
        Err(Error::InvalidOption { option: "wait_replicas", reason: REPLICAS.into() })
    }

    fn holder(&self, keys: &LockKeys) -> Result<Option<Holder>> {
        let keys2 = keys.clone();
        let replies = self.on_all(
            move |_, c| {
                let (fields, pttl) = Scripts::holder(&keys2).query::<(HolderFields, i64)>(c)?;
                Ok(Scripts::holder_reply(fields, pttl))
            },
            Some(&keys.key),
            |_| true,
            None,
        );
        tally::holder(&replies, &self.counting(), self.quorum)
    }

    fn force_unlock(&self, keys: &LockKeys) -> Result<bool> {
        let (scripts, keys2) = (self.scripts.clone(), keys.clone());
        let channels = self.channels.clone();
        let replies = self.on_all(
            move |i, c| scripts.force_unlock(&keys2, &channels[i]).invoke::<i64>(c),
            Some(&keys.key),
            |_| true,
            None,
        );
        if replies.iter().any(|r| matches!(r, Some(Ok(1)))) {
            return Ok(true);
        }
        let turnout = tally::Turnout::of(&replies, &self.counting(), self.quorum);
        if turnout.counted() >= self.quorum { Ok(false) } else { Err(turnout.error()) }
    }

    fn vouched_ms(&self, lease_ms: u64) -> u64 {
        lease_ms.saturating_sub(drift_ms(lease_ms))
    }

    fn max_lease(&self) -> Option<Duration> {
        Some(self.settings.max_lease)
    }

    fn refuses(&self, capability: Capability) -> Option<&'static str> {
        match capability {
            Capability::WaitReplicas => Some(REPLICAS),
        }
    }
    // `shared` is left to the default: read-write locks and semaphores are refused
    // (`Error::Unsupported`), a quorum cannot bound them.
}

const REPLICAS: &str = "not on Redlock: its masters are independent servers with no replicas to wait for; the \
                        quorum of masters is what keeps a lock through the loss of one";
