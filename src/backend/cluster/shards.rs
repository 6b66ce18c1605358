//! Sharded wake-ups on a cluster: which lock channels this client is subscribed to, on
//! which master, and the subscribing itself.
//!
//! A lock's messages to this client go to `<prefix>:{<name>}:c:<client id>`, in the
//! lock's slot, by `SPUBLISH` from its scripts: only the slot's master (and its
//! replicas) carry them, where a classic `PUBLISH` crosses the cluster bus to every
//! node. The price is a subscription per (lock, client), on the master that owns the
//! slot: [`Shards::ensure`] makes it before any attempt that can fail (an attempt that
//! will wait, a release that may queue this client again), so no message about it is
//! missed; it is kept while a thread of the client waits for the lock and for
//! [`LINGER`] after the last one left (a client that locks the same name over and over
//! subscribes once); at most one subscriber connection per node (`node.rs`, one
//! thread each, opened while it has subscriptions). When a slot leaves a node (Redis
//! sends `sunsubscribe`; a `MOVED` reply to `SSUBSCRIBE`; a failover found by the
//! slot map) the channel is subscribed on the new owner and the lock's waiters look
//! again, as after a notifier reconnect.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::RedisError;

use super::link::Writer;
use super::nodes::Nodes;
use super::slots::Addr;
use crate::backend::single::ConnectSettings;
use crate::backend::single::notifier::Shared;
use crate::error::{Error, Result};
use crate::keys::Channels;
use crate::sync::lock;

/// How long a lock's channel stays subscribed after the last thread of this client that
/// waited for it stopped (then one `SUNSUBSCRIBE`): a worker that locks a name in a
/// loop subscribes once, and a client that touched many names once does not keep them.
pub(crate) const LINGER: Duration = Duration::from_secs(10);

/// What the subscribers need besides the nodes.
pub(crate) struct ShardConfig {
    pub channels: Channels,
    /// The client's connection settings: the subscriber connections' timeouts, and their
    /// name (`CLIENT SETNAME`, with `:notifier` appended).
    pub connect: ConnectSettings,
    pub grant_ms: u64,
    pub ping_after: Duration,
}

/// This client's sharded subscriptions (see the module docs).
pub(crate) struct Shards {
    pub(super) nodes: Arc<Nodes>,
    pub(super) cfg: ShardConfig,
    pub(super) shared: Shared,
    /// Disconnected when the client is dropped: the node threads exit.
    pub(super) stop: Receiver<()>,
    pub(super) state: Mutex<State>,
    /// Signalled whenever a subscription's status changes.
    pub(super) changed: Condvar,
}

#[derive(Default)]
pub(super) struct State {
    /// By lock name.
    pub subs: HashMap<String, Sub>,
    /// One per node with a subscriber thread.
    pub links: HashMap<Addr, Link>,
}

pub(super) struct Sub {
    /// The master it is (to be) subscribed on: the slot's owner as last known.
    pub node: Addr,
    pub status: Status,
    /// When a thread last asked for it ([`Shards::ensure`]).
    pub wanted_at: Instant,
    /// Since when no thread of the client waits for the lock.
    pub idle_since: Option<Instant>,
    /// Messages may have been missed (a slot move, a reconnect): once subscribed again,
    /// the lock's waiters look again.
    pub recheck: bool,
}

pub(super) enum Status {
    /// To be sent when its node's connection is up.
    Unsent,
    /// `SSUBSCRIBE` sent, not confirmed yet.
    Sent,
    Active,
    /// The node refused it, or could not be reached; sent again on the next `ensure`.
    Failed(RedisError),
}

/// A node's subscriber connection, as the other threads see it.
#[derive(Default)]
pub(super) struct Link {
    /// The writing half while connected.
    pub writer: Option<Writer>,
    /// Commands sent and not answered yet, oldest first, with when they were sent.
    pub pending: VecDeque<(Pending, Instant)>,
    /// It had subscriptions when its connection broke: their waiters poll meanwhile.
    pub down: bool,
}

pub(super) enum Pending {
    Subscribe(String),
    Unsubscribe(String),
    Ping,
}

impl Shards {
    pub fn new(nodes: Arc<Nodes>, cfg: ShardConfig, shared: Shared, stop: Receiver<()>) -> Arc<Shards> {
        // Nothing to hear until a thread waits: the notifier counts as up.
        shared.sink.set_listening(true);
        Arc::new(Shards { nodes, cfg, shared, stop, state: Mutex::default(), changed: Condvar::new() })
    }

    /// This client's channel for lock `name`.
    pub(super) fn channel(&self, name: &str) -> String {
        self.cfg.channels.mine_of(name).into_owned()
    }

    /// Whether lock `name`'s channel is subscribed (and so stays subscribed a while:
    /// this counts as a thread asking for it).
    pub fn is_subscribed(&self, name: &str) -> bool {
        let mut st = lock(&self.state);
        st.subs.get_mut(name).is_some_and(|sub| {
            sub.wanted_at = Instant::now();
            matches!(sub.status, Status::Active)
        })
    }

    /// Subscribes to lock `name`'s channel (`key` is its lock key) on the master of its
    /// slot, unless it is already, and returns once the master confirmed it: a message
    /// about the lock sent after this returns reaches the client. Gives up at `deadline`
    /// (then the caller's attempt goes ahead: it will not sleep) or when the node does
    /// not answer within the connect and read timeouts (a transient error).
    pub fn ensure(self: &Arc<Self>, name: &str, key: &str, deadline: Option<Instant>) -> Result<()> {
        let now = Instant::now();
        {
            let mut st = lock(&self.state);
            if let Some(sub) = st.subs.get_mut(name) {
                sub.wanted_at = now;
                sub.idle_since = None;
                if matches!(sub.status, Status::Active) {
                    return Ok(());
                }
            }
        }
        let owner = self.nodes.owner_of(key, deadline)?;
        let bound = now + self.cfg.connect.connect_timeout + self.cfg.connect.read_timeout;
        let until = deadline.map_or(bound, |d| d.min(bound));
        let mut st = lock(&self.state);
        match st.subs.get_mut(name) {
            None => {
                let sub = Sub { node: owner, status: Status::Unsent, wanted_at: now, idle_since: None, recheck: false };
                st.subs.insert(name.to_owned(), sub);
                self.subscribe(&mut st, name);
            }
            Some(sub) if matches!(sub.status, Status::Failed(_)) => {
                sub.node = owner;
                self.subscribe(&mut st, name);
            }
            Some(_) => {}
        }
        loop {
            match st.subs.get(name).map(|s| &s.status) {
                Some(Status::Active) => return Ok(()),
                Some(Status::Failed(e)) => return Err(Error::from_redis(e.clone(), None)),
                // Dropped meanwhile (its node's thread gave it up): ask again.
                None => return Err(unconfirmed(name, "the subscription was dropped")),
                Some(_) => {}
            }
            let now = Instant::now();
            if now >= until {
                if deadline.is_some_and(|d| d <= now) {
                    return Ok(());
                }
                return Err(unconfirmed(name, "the node did not confirm SSUBSCRIBE in time"));
            }
            st = self.changed.wait_timeout(st, until - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Sends `SSUBSCRIBE` for `name` on its node's connection, or leaves it for that
    /// node's thread to send once connected (starting the thread if there is none).
    pub(super) fn subscribe(self: &Arc<Self>, st: &mut State, name: &str) {
        let Some(sub) = st.subs.get_mut(name) else { return };
        let addr = sub.node.clone();
        sub.status = Status::Unsent;
        if !st.links.contains_key(&addr) {
            if let Err(e) = super::node::spawn(self.clone(), addr.clone()) {
                sub.status = Status::Failed(RedisError::from(e));
                self.changed.notify_all();
                return;
            }
            st.links.insert(addr.clone(), Link::default());
        }
        let Some(link) = st.links.get_mut(&addr) else { return };
        if let Some(writer) = &mut link.writer {
            let channel = self.channel(name);
            match writer.send(&[b"SSUBSCRIBE", channel.as_bytes()]) {
                Ok(()) => {
                    link.pending.push_back((Pending::Subscribe(name.to_owned()), Instant::now()));
                    sub.status = Status::Sent;
                }
                // The reader finds the connection broken and subscribes again.
                Err(_) => writer.shutdown(),
            }
        }
    }

    /// The slot of `name` is served by `addr` now: subscribe there (and no longer where
    /// it was), and let its waiters look again once subscribed.
    pub(super) fn move_to(self: &Arc<Self>, st: &mut State, name: &str, addr: Addr) {
        let Some(sub) = st.subs.get_mut(name) else { return };
        let from = std::mem::replace(&mut sub.node, addr);
        sub.recheck = true;
        let was_active = matches!(sub.status, Status::Active);
        if from != sub.node
            && was_active
            && let Some(link) = st.links.get_mut(&from)
            && let Some(writer) = &mut link.writer
            && writer.send(&[b"SUNSUBSCRIBE", self.channel(name).as_bytes()]).is_ok()
        {
            link.pending.push_back((Pending::Unsubscribe(name.to_owned()), Instant::now()));
        }
        log::debug!("redis-mutex: the slot of {name} moved: subscribing on {}", st.subs[name].node);
        self.subscribe(st, name);
    }

    /// Tells the waiters whether every subscription's node is connected.
    pub(super) fn update_listening(&self, st: &State) {
        self.shared.sink.set_listening(!st.links.values().any(|l| l.down));
    }
}

fn unconfirmed(name: &str, why: &str) -> Error {
    Error::Connection(RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("could not subscribe to the channel of lock {name:?}: {why}"),
    )))
}
