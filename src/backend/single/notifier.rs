//! The notifier: one pub/sub connection per client (per master on Redlock), outside
//! the pool, owned by a `redis-mutex-notifier` thread. It `SUBSCRIBE`s the client's
//! channel and the broadcast channel once per connection and turns each release
//! message into a wake-up of one local waiter (`dispatch`). Waiters never talk to it;
//! it only delivers to the client's [`ReleaseSink`] (the waiter registry, which it does
//! not otherwise know). A cluster's sharded wake-ups have subscribers of their own, one
//! per node (`backend::cluster::shards`); there this notifier serves a TLS cluster only.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::connection::ConnectSettings;
use super::line::{IDLE_LOOK, Line, Read, Session};
use crate::backend::ReleaseSink;
use crate::backoff::Backoff;
use crate::keys::Channels;
use crate::stats::{Counters, bump};
use crate::sync::panic_message;

/// How often the thread looks up from a quiet connection (to see whether the client
/// was dropped).
pub(crate) const TICK: Duration = Duration::from_millis(250);

pub(crate) struct NotifierConfig {
    pub connect: ConnectSettings,
    /// This client's channel and the broadcast channel, both subscribed.
    pub channels: Channels,
    /// The key prefix, for the ACL rule a refusal asks for.
    pub prefix: String,
    /// Silence after which the connection is probed with PING.
    pub ping_after: Duration,
}

/// Releases a grant nobody of this client takes any more: `(lock name, owner token)`.
pub(crate) type Unclaimed = Box<dyn Fn(&str, &str) + Send + Sync>;

pub(crate) struct Shared {
    pub sink: Arc<dyn ReleaseSink>,
    pub stats: Arc<Counters>,
    /// Called with a lock name and owner token granted to this client while none of its
    /// threads waits for it any more: releases it (to the next waiting client).
    pub unclaimed: Unclaimed,
}

/// Starts the notifier thread, which serves `line`. It exits soon after `shutdown`'s
/// sender is dropped.
pub(crate) fn spawn(cfg: NotifierConfig, line: Arc<Line>, shutdown: Receiver<()>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("redis-mutex-notifier".into()).spawn(move || run(cfg, &line, shutdown))
}

fn stopped(shutdown: &Receiver<()>) -> bool {
    matches!(shutdown.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected))
}

fn run(cfg: NotifierConfig, line: &Line, shutdown: Receiver<()>) {
    supervise(&line.shared, &shutdown, |memory| serve(&cfg, line, &shutdown, memory));
    line.set(None);
}

/// What the notifier carries from one connection to the next.
struct Memory {
    backoff: Backoff,
    connected_before: bool,
    /// Logged once, not per retry.
    last_error: Option<String>,
    /// The `run_id` of the server of the last connection: another one (a failover, a
    /// restart) may lack locks this client holds.
    run_id: Option<String>,
}

/// Runs `session` (one subscribed connection) until the client is dropped: after it
/// breaks, backs off and runs it again. A panic in it (a bug) is caught and handled
/// like a broken connection: logged, the notifier marked down (waiters poll), and a
/// new session started, so that no wake-up is lost for good.
fn supervise(shared: &Shared, shutdown: &Receiver<()>, mut session: impl FnMut(&mut Memory) -> redis::RedisResult<()>) {
    let mut memory = Memory { backoff: Backoff::new(), connected_before: false, last_error: None, run_id: None };
    while !stopped(shutdown) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session(&mut memory)));
        let outcome = outcome.unwrap_or_else(|panic| {
            shared.sink.set_listening(false);
            let msg = panic_message(&panic).to_owned();
            log::error!("redis-mutex: notifier panicked ({msg}); subscribing again");
            Err(redis::RedisError::from((redis::ErrorKind::Client, "notifier panicked", msg)))
        });
        match outcome {
            Ok(()) => return,
            Err(e) => {
                let msg = e.to_string();
                if memory.last_error.as_deref() != Some(msg.as_str()) {
                    log::warn!("redis-mutex: notifier disconnected ({msg}); waiters poll Redis until it is back");
                    memory.last_error = Some(msg);
                }
            }
        }
        // Back off, but stop at once if the client goes away.
        match shutdown.recv_timeout(memory.backoff.next_delay().max(Duration::from_millis(50))) {
            Err(RecvTimeoutError::Timeout) | Ok(()) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One subscribed connection: `Ok` when the client was dropped, else why it broke.
fn serve(cfg: &NotifierConfig, line: &Line, shutdown: &Receiver<()>, memory: &mut Memory) -> redis::RedisResult<()> {
    let shared = &line.shared;
    let channels = [cfg.channels.mine.as_str(), cfg.channels.all.as_str()];
    let tagged = cfg.connect.connect_tagged(":notifier")?;
    let generation = tagged.generation;
    let mut con = tagged.con;
    let run_id = run_id(&mut con);
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe(&channels[..])?;
    confirm_subscribed(cfg, &mut pubsub)?;
    let early = drain(&mut pubsub)?;
    // Dropping the `PubSub` would unsubscribe; the session reads the connection (see
    // `line::Session::read`). Its queue is empty now.
    std::mem::forget(pubsub);
    let mut session = Session::new(con, generation);
    memory.backoff = Backoff::new();
    memory.last_error = None;
    if memory.connected_before {
        bump(&shared.stats.notifier_reconnects);
        log::warn!("redis-mutex: notifier subscribed again to {channels:?}");
    } else {
        log::debug!("redis-mutex: notifier subscribed to {channels:?}");
    }
    memory.connected_before = true;
    if let Some(id) = run_id {
        if memory.run_id.as_ref().is_some_and(|old| *old != id) {
            log::warn!(
                "redis-mutex: the server is another one now (its run_id changed: a failover or a restart); \
                 checking every lock this client holds"
            );
            shared.sink.server_changed();
        }
        memory.run_id = Some(id);
    }
    shared.sink.set_listening(true);
    for payload in early {
        session.dispatch.deliver(shared, line.grant_ms(), &payload);
    }
    // Releases may have gone unheard while disconnected: everyone re-checks.
    shared.sink.wake_all();
    line.set(Some(session));
    let broke = listen(cfg, line, shutdown);
    shared.sink.set_listening(false);
    line.set(None);
    broke.map_or(Ok(()), Err)
}

/// The messages a `PubSub` heard while it waited for a command's reply (it keeps them
/// for its next `get_message`), and any that came since.
fn drain(pubsub: &mut redis::PubSub<'_>) -> redis::RedisResult<Vec<Vec<u8>>> {
    pubsub.set_read_timeout(Some(Duration::from_millis(1)))?;
    let mut heard = Vec::new();
    loop {
        match pubsub.get_message() {
            Ok(msg) => heard.push(msg.get_payload_bytes().to_vec()),
            Err(e) if e.is_timeout() || interrupted(&e) => return Ok(heard),
            Err(e) => return Err(e),
        }
    }
}

/// redis-rs discards the reply to `SUBSCRIBE`, so a refusal (`NOPERM`: the user's ACL
/// does not allow the channels) would go unnoticed: the notifier would count as up and
/// waiters would sleep without ever being woken. Subscribed, a RESP2 connection answers
/// `PING` with `["pong", ""]`; a plain `PONG` means nothing was subscribed. (RESP3
/// answers `PONG` either way; it is not checked.)
fn confirm_subscribed(cfg: &NotifierConfig, pubsub: &mut redis::PubSub<'_>) -> redis::RedisResult<()> {
    if cfg.connect.target.redis_settings().protocol() != redis::ProtocolVersion::RESP2 {
        return Ok(());
    }
    match pubsub.ping::<redis::Value>()? {
        redis::Value::SimpleString(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "SUBSCRIBE refused",
            format!(
                "not subscribed to {} and {}: the user's ACL must allow the prefix's channels, `&{}:*`",
                cfg.channels.mine, cfg.channels.all, cfg.prefix
            ),
        ))),
        _ => Ok(()),
    }
}

/// Serves one connection. `None` when the client was dropped, else why it broke.
///
/// While threads of this client wait, and none of them reads the line, the thread reads
/// it for them. While none waits, it leaves the line to the next waiter (which reads
/// its own messages, see `line`), and looks at it every `IDLE_LOOK`: to read what came
/// while nobody read (a grant heard after the last waiter left must be passed on) and
/// to probe a quiet connection.
fn listen(cfg: &NotifierConfig, line: &Line, shutdown: &Receiver<()>) -> Option<redis::RedisError> {
    let shared = &line.shared;
    loop {
        if stopped(shutdown) {
            return None;
        }
        let waiting = !line.shared_with_waiters || shared.sink.waiting_threads() > 0;
        let Some(mut guard) = line.try_take() else {
            // A waiting thread reads; it kicks when it leaves others waiting.
            let _ = line.kick_rx.recv_timeout(TICK);
            continue;
        };
        let Some(s) = guard.as_mut() else {
            return Some(redis::RedisError::from(std::io::Error::other("the line was taken down")));
        };
        if let Some(e) = s.broken.take() {
            return Some(e);
        }
        if cfg.connect.target.generation() != s.generation {
            // A failover moved the master: subscribe there (releases are published
            // where the scripts run).
            return Some(redis::RedisError::from(std::io::Error::other("the master moved (failover)")));
        }
        s.dispatch.tick(shared);
        if s.last_heard.elapsed() >= cfg.ping_after {
            // A quiet connection may be a dead one: PING must answer within the read
            // timeout.
            match probe(cfg, s) {
                Ok(heard) => {
                    for payload in heard {
                        s.dispatch.deliver(shared, line.grant_ms(), &payload);
                    }
                }
                Err(e) => return Some(e),
            }
        }
        if waiting {
            match s.read(TICK) {
                Ok(Read::Message(payload)) => s.dispatch.deliver(shared, line.grant_ms(), &payload),
                Ok(Read::Nothing) => {}
                Err(e) => return Some(e),
            }
            continue;
        }
        if s.last_read.elapsed() >= IDLE_LOOK {
            loop {
                match s.read(Duration::from_millis(1)) {
                    Ok(Read::Message(payload)) => s.dispatch.deliver(shared, line.grant_ms(), &payload),
                    Ok(Read::Nothing) => break,
                    Err(e) => return Some(e),
                }
            }
        }
        drop(guard);
        if line.shared_with_waiters && shared.sink.waiting_threads() == 0 {
            let _ = line.kick_rx.recv_timeout(IDLE_LOOK);
        }
    }
}

/// PINGs the connection; the messages heard before the answer.
fn probe(cfg: &NotifierConfig, s: &mut Session) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut pubsub = s.con().as_pubsub();
    let answered = pubsub.set_read_timeout(Some(cfg.connect.read_timeout)).and_then(|()| pubsub.ping::<()>());
    let heard = answered.and_then(|()| drain(&mut pubsub));
    std::mem::forget(pubsub);
    s.last_heard = Instant::now();
    heard
}

/// The server's `run_id` (`INFO server`), which changes when it restarts; `None` when
/// it does not say (an ACL without `+info`): then a restart is found by renewals only.
fn run_id(con: &mut redis::Connection) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("server").query(con).ok()?;
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|id| id.trim().to_owned())
}

/// Whether `e` is a read interrupted by a signal.
pub(super) fn interrupted(e: &redis::RedisError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Granted;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that only remembers whether the notifier says it listens.
    #[derive(Default)]
    struct Listening(AtomicBool);

    impl ReleaseSink for Listening {
        fn granted(&self, _: &str, _: Granted) -> bool {
            false
        }
        fn wake_first(&self, _: &str) -> bool {
            false
        }
        fn wake_all(&self) {}
        fn has_waiters(&self, _: &str) -> bool {
            false
        }
        fn set_listening(&self, up: bool) {
            self.0.store(up, Ordering::SeqCst);
        }
        fn server_changed(&self) {}
    }

    #[test]
    fn an_interrupted_read_is_told_from_a_broken_connection() {
        let eintr = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::Interrupted));
        let reset = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(interrupted(&eintr));
        assert!(!interrupted(&reset));
    }

    #[test]
    fn a_session_that_panics_is_marked_down_and_started_again() {
        let sink = Arc::new(Listening::default());
        let shared =
            Shared { sink: sink.clone(), stats: Arc::new(Counters::default()), unclaimed: Box::new(|_, _| {}) };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let stop_tx = Mutex::new(Some(stop_tx));
        let mut sessions = 0;
        let mut up_after_panic = None;
        supervise(&shared, &stop_rx, |_| {
            sessions += 1;
            match sessions {
                1 => {
                    shared.sink.set_listening(true);
                    panic!("a bug in the loop");
                }
                2 => {
                    up_after_panic = Some(sink.0.load(Ordering::SeqCst));
                    // The client is dropped while this session serves.
                    drop(stop_tx.lock().unwrap().take());
                    Ok(())
                }
                _ => unreachable!("the client was dropped"),
            }
        });
        assert_eq!(sessions, 2, "a new session after the panic");
        assert_eq!(up_after_panic, Some(false), "marked down: waiters poll meanwhile");
    }
}
