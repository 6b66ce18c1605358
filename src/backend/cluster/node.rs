//! One cluster node's subscriber: a `redis-mutex-notifier` thread that owns the reading
//! half of this client's one subscriber connection to that node (`link`), delivers the
//! `smessage`s it reads (`single::dispatch`), confirms subscriptions, follows the
//! slots that leave the node, drops channels nobody waits on (after `LINGER`), probes a
//! quiet connection, and reconnects. It exits, closing the connection, when the node
//! has no subscription left or the client is dropped.

use std::time::Instant;

use redis::RedisError;

use super::link::{self, Dial, Frame, Reader};
use super::shards::{LINGER, Pending, Shards, State, Status};
use super::slots::{Addr, split_addr};
use crate::backend::single::dispatch::Dispatch;
use crate::backend::single::notifier::TICK;
use crate::backoff::Backoff;
use crate::keys::hash_tag;
use crate::stats::bump;
use crate::sync::lock;
use std::sync::Arc;

/// Starts the thread of node `addr`.
pub(super) fn spawn(shards: Arc<Shards>, addr: Addr) -> std::io::Result<()> {
    std::thread::Builder::new().name("redis-mutex-notifier".into()).spawn(move || run(&shards, &addr)).map(drop)
}

fn stopped(shards: &Shards) -> bool {
    matches!(shards.stop.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected))
}

/// Whether any subscription is on `addr`; if none (and nothing is pending), the link is
/// removed, under the same lock, so that a new subscription starts a new thread.
fn retire_if_idle(st: &mut State, addr: &Addr) -> bool {
    let busy = st.subs.values().any(|s| s.node == *addr);
    if !busy {
        st.links.remove(addr);
    }
    !busy
}

fn run(shards: &Arc<Shards>, addr: &Addr) {
    let mut backoff = Backoff::new();
    let mut connected_before = false;
    let mut last_error: Option<String> = None;
    let mut dispatch = Dispatch::default();
    loop {
        if stopped(shards) || retire_if_idle(&mut lock(&shards.state), addr) {
            let mut st = lock(&shards.state);
            st.links.remove(addr);
            shards.update_listening(&st);
            return;
        }
        let outcome = connect(shards, addr).and_then(|reader| {
            backoff = Backoff::new();
            last_error = None;
            if connected_before {
                bump(&shards.shared.stats.notifier_reconnects);
                log::warn!("redis-mutex: subscribed again on cluster node {addr}");
            }
            connected_before = true;
            serve(shards, addr, reader, &mut dispatch)
        });
        let mut st = lock(&shards.state);
        // Whatever was subscribed on the connection may have missed messages.
        if let Some(link) = st.links.get_mut(addr) {
            link.writer = None;
            link.pending.clear();
        }
        let mut had = false;
        for sub in st.subs.values_mut().filter(|s| s.node == *addr) {
            had = true;
            if matches!(sub.status, Status::Active) {
                sub.recheck = true;
            }
            sub.status = match &outcome {
                Err(e) => Status::Failed(e.clone()),
                Ok(()) => Status::Unsent,
            };
        }
        if let Some(link) = st.links.get_mut(addr) {
            link.down = had && outcome.is_err();
        }
        shards.update_listening(&st);
        shards.changed.notify_all();
        drop(st);
        if let Err(e) = outcome {
            let msg = e.to_string();
            if last_error.as_deref() != Some(msg.as_str()) {
                log::warn!("redis-mutex: subscriber of cluster node {addr} disconnected ({msg}); its waiters poll");
                last_error = Some(msg);
            }
            // The node may have failed over: its slots' channels go to their new owner.
            shards.nodes.mark_stale();
            follow_the_map(shards, addr, true);
            // Channels nobody waits on go, even while the node is unreachable: a node
            // that never comes back keeps no thread once its waiters gave up.
            linger(shards, addr);
            // Back off, but stop at once if the client goes away (checked above).
            let _ = shards.stop.recv_timeout(backoff.next_delay().max(std::time::Duration::from_millis(50)));
        }
    }
}

/// Moves the subscriptions of `addr` whose slot the map says another master serves
/// (`refresh`: ask the cluster first, at most once per 100 ms).
fn follow_the_map(shards: &Arc<Shards>, addr: &Addr, refresh: bool) {
    if refresh && let Err(e) = shards.nodes.refresh(None, false) {
        log::debug!("redis-mutex: could not refresh the cluster's slot map: {e}");
    }
    let mut st = lock(&shards.state);
    let moved: Vec<(String, Addr)> = st
        .subs
        .iter()
        .filter(|(_, s)| s.node == *addr)
        .filter_map(|(name, _)| {
            let owner = shards.nodes.known_owner(&shards.cfg.channels.clients_of(name))?;
            (owner != *addr).then(|| (name.clone(), owner))
        })
        .collect();
    for (name, owner) in moved {
        shards.move_to(&mut st, &name, owner);
    }
}

/// Connects and subscribes every channel of this node.
fn connect(shards: &Arc<Shards>, addr: &Addr) -> Result<Reader, RedisError> {
    let (host, port) = split_addr(addr)
        .ok_or_else(|| RedisError::from(std::io::Error::other(format!("not a node address: {addr}"))))?;
    let cfg = &shards.cfg;
    let (reader, writer) = link::connect(&Dial {
        host,
        port,
        login: shards.nodes.template().redis_settings(),
        name: &format!("{}:notifier", cfg.connect.name),
        connect_timeout: cfg.connect.connect_timeout,
        read_timeout: cfg.connect.read_timeout,
        write_timeout: cfg.connect.write_timeout,
    })?;
    reader.set_timeout(TICK)?;
    let mut st = lock(&shards.state);
    let link = st.links.entry(addr.clone()).or_default();
    link.writer = Some(writer);
    link.pending.clear();
    link.down = false;
    let names: Vec<String> = st.subs.iter().filter(|(_, s)| s.node == *addr).map(|(n, _)| n.clone()).collect();
    for name in names {
        shards.subscribe(&mut st, &name);
    }
    shards.update_listening(&st);
    Ok(reader)
}

/// Reads the connection until it breaks (`Err`), the client is dropped or the node has
/// no subscription left (`Ok`).
fn serve(shards: &Arc<Shards>, addr: &Addr, mut reader: Reader, dispatch: &mut Dispatch) -> Result<(), RedisError> {
    let mut last_heard = Instant::now();
    let mut last_tick = Instant::now();
    loop {
        if stopped(shards) {
            return Ok(());
        }
        dispatch.tick(&shards.shared);
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            if linger(shards, addr) {
                return Ok(());
            }
            follow_the_map(shards, addr, false);
        }
        match reader.next()? {
            Some(frame) => {
                last_heard = Instant::now();
                on_frame(shards, addr, frame, dispatch);
            }
            None => {
                let mut st = lock(&shards.state);
                let Some(link) = st.links.get_mut(addr) else { return Ok(()) };
                if link.pending.front().is_some_and(|(_, at)| at.elapsed() >= shards.cfg.connect.read_timeout) {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the node stopped answering").into());
                }
                if last_heard.elapsed() >= shards.cfg.ping_after && link.pending.is_empty() {
                    // A quiet connection may be a dead one: PING must answer within the
                    // read timeout.
                    if let Some(w) = &mut link.writer {
                        w.send(&[b"PING"])?;
                        link.pending.push_back((Pending::Ping, Instant::now()));
                    }
                }
            }
        }
    }
}

/// Drops the channels of locks no thread of the client has waited for during `LINGER`
/// (one `SUNSUBSCRIBE` each). `true` when the node has none left.
fn linger(shards: &Arc<Shards>, addr: &Addr) -> bool {
    let names: Vec<String> = {
        let st = lock(&shards.state);
        st.subs.iter().filter(|(_, s)| s.node == *addr).map(|(n, _)| n.clone()).collect()
    };
    // Asked without holding the state: the registry has a lock of its own.
    let waited: Vec<bool> = names.iter().map(|n| shards.shared.sink.waits_for(n)).collect();
    let now = Instant::now();
    let mut st = lock(&shards.state);
    let st = &mut *st;
    for (name, waited) in names.iter().zip(waited) {
        let Some(sub) = st.subs.get_mut(name) else { continue };
        if waited || sub.node != *addr {
            sub.idle_since = None;
            continue;
        }
        let idle = *sub.idle_since.get_or_insert(now);
        if now.duration_since(idle) < LINGER || now.duration_since(sub.wanted_at) < LINGER {
            continue;
        }
        let active = matches!(sub.status, Status::Active);
        st.subs.remove(name);
        if active
            && let Some(link) = st.links.get_mut(addr)
            && let Some(w) = &mut link.writer
            && w.send(&[b"SUNSUBSCRIBE", shards.channel(name).as_bytes()]).is_ok()
        {
            link.pending.push_back((Pending::Unsubscribe(name.clone()), now));
        }
        log::debug!("redis-mutex: nobody waited for {name} for {LINGER:?}: unsubscribed");
    }
    let idle = !st.subs.values().any(|s| s.node == *addr);
    idle && st.links.get(addr).is_none_or(|l| l.pending.is_empty())
}

/// One frame of the connection: a message, a confirmation, a notice or an error.
fn on_frame(shards: &Arc<Shards>, addr: &Addr, frame: Frame, dispatch: &mut Dispatch) {
    let items = match frame {
        Frame::Array(items) => items,
        Frame::Error(text) => return refused(shards, addr, &text),
        // `+PONG`: a PING while no channel was subscribed.
        _ => return answered(shards, addr),
    };
    let kind = items.first().and_then(Frame::text).unwrap_or_default();
    let channel = items.get(1).and_then(Frame::text).map(String::from_utf8_lossy).unwrap_or_default();
    match kind {
        b"smessage" => {
            if let Some(payload) = items.get(2).and_then(Frame::text) {
                dispatch.deliver(&shards.shared, shards.cfg.grant_ms, payload);
            }
        }
        b"ssubscribe" => {
            let mut st = lock(&shards.state);
            answered_locked(&mut st, addr);
            let name = hash_tag(&channel).unwrap_or_default();
            let mut recheck = false;
            if let Some(sub) = st.subs.get_mut(name).filter(|s| s.node == *addr) {
                sub.status = Status::Active;
                recheck = std::mem::take(&mut sub.recheck);
            }
            shards.changed.notify_all();
            drop(st);
            if recheck {
                log::debug!("redis-mutex: subscribed again to {channel}: its waiters look again");
                shards.shared.sink.recheck(name);
            }
        }
        b"sunsubscribe" => {
            let mut st = lock(&shards.state);
            let asked = st
                .links
                .get(addr)
                .and_then(|l| l.pending.front())
                .is_some_and(|(p, _)| matches!(p, Pending::Unsubscribe(n) if shards.channel(n) == channel));
            if asked {
                answered_locked(&mut st, addr);
                return;
            }
            // The node gave the slot away (a resharding or a failover): subscribe on
            // its new owner, whom the map is asked for.
            let Some(name) = hash_tag(&channel).map(str::to_owned) else { return };
            if let Some(sub) = st.subs.get_mut(&name).filter(|s| s.node == *addr) {
                sub.status = Status::Unsent;
                sub.recheck = true;
            }
            drop(st);
            log::debug!("redis-mutex: cluster node {addr} dropped {channel} (its slot moved)");
            shards.nodes.mark_stale();
            if let Err(e) = shards.nodes.refresh(None, true) {
                log::debug!("redis-mutex: could not refresh the cluster's slot map: {e}");
            }
            let owner = shards.nodes.known_owner(&shards.cfg.channels.clients_of(&name));
            let mut st = lock(&shards.state);
            match owner {
                Some(owner) => shards.move_to(&mut st, &name, owner),
                None => shards.subscribe(&mut st, &name),
            }
        }
        // `["pong", ""]`: a PING while subscribed.
        _ => answered(shards, addr),
    }
}

/// The oldest command sent got its answer.
fn answered(shards: &Shards, addr: &Addr) {
    answered_locked(&mut lock(&shards.state), addr);
}

fn answered_locked(st: &mut State, addr: &Addr) -> Option<Pending> {
    st.links.get_mut(addr).and_then(|l| l.pending.pop_front()).map(|(p, _)| p)
}

/// An error reply to the oldest command: a `MOVED` for a subscription follows it; any
/// other fails the subscription (the waiter gets the error, and asks again).
fn refused(shards: &Arc<Shards>, addr: &Addr, text: &str) {
    let mut st = lock(&shards.state);
    let Some(Pending::Subscribe(name)) = answered_locked(&mut st, addr) else { return };
    let e = Frame::server_error(text);
    match e.redirect_node().filter(|_| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved)) {
        Some((to, slot)) => {
            let to = Addr::from(to);
            shards.nodes.moved(slot, to.clone());
            shards.move_to(&mut st, &name, to);
        }
        None => {
            if let Some(sub) = st.subs.get_mut(&name) {
                log::debug!("redis-mutex: cluster node {addr} refused to subscribe to {name}'s channel: {text}");
                sub.status = Status::Failed(e);
            }
            shards.changed.notify_all();
        }
    }
}
