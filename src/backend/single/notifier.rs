//! The notifier: one pub/sub connection per client (per master on Redlock), outside
//! the pool, owned by a `redis-mutex-notifier` thread. It `SUBSCRIBE`s the client's
//! channel and the broadcast channel once per connection and turns each release
//! message into a wake-up of one local waiter. Waiters never talk to it; it only delivers to the client's
//! [`ReleaseSink`] (the waiter registry, which it does not otherwise know).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::connection::ConnectSettings;
use crate::backend::Granted;
use crate::backend::ReleaseSink;
use crate::backoff::{Backoff, jitter};
use crate::clock::later;
use crate::keys::Channels;
use crate::stats::{Counters, bump};
use crate::sync::panic_message;

/// How often the thread looks up from a quiet connection (to see whether the client
/// was dropped).
const TICK: Duration = Duration::from_millis(250);

pub(crate) struct NotifierConfig {
    pub connect: ConnectSettings,
    /// This client's channel and the broadcast channel, both subscribed.
    pub channels: Channels,
    /// The key prefix, for the ACL rule a refusal asks for.
    pub prefix: String,
    /// Silence after which the connection is probed with PING.
    pub ping_after: Duration,
    /// How long a lock granted to a waiting client is its before it takes it.
    pub grant_ms: u64,
}

/// Releases a grant nobody of this client takes any more: `(lock name, owner token)`.
pub(crate) type Unclaimed = Box<dyn Fn(&str, &str) + Send>;

pub(crate) struct Shared {
    pub sink: Arc<dyn ReleaseSink>,
    pub stats: Arc<Counters>,
    /// Called with a lock name and owner token granted to this client while none of its
    /// threads waits for it any more: releases it (to the next waiting client).
    pub unclaimed: Unclaimed,
}

/// A message on this client's channel or the broadcast channel.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    /// `!<token> <fence> <mark> <acks> <name>`: a release granted `name` to this
    /// client, and `acks` replicas acknowledged the grant before it was announced.
    Granted { name: &'a str, token: &'a str, fence: u64, mark: u64, acks: u32 },
    /// `@<ms> <name>`: a release granted `name` to the client ahead of this one; if
    /// nothing more is heard, look again after `ms` (that client may never come).
    LookAgain { name: &'a str, after: Duration },
    /// `*<name>`: look at `name` again now. Broadcast when it was force-unlocked; sent
    /// to this client alone when a grant to it was revoked before it was announced
    /// (too few replicas acknowledged it, see `settle.lua`).
    Forced { name: &'a str },
    /// `-<token> <name>`: the holder under `token` released `name` (Redlock: each
    /// master where this client waited says so, hence the token, by which the copies
    /// are told apart from another release).
    Released { name: &'a str, token: &'a str },
    /// `^<token>,<token>... <name>`: a release (or an attempt) granted the read-write
    /// lock or semaphore `name` to this client's waiting threads with these tokens.
    Admitted { name: &'a str, tokens: &'a str },
    /// `~<ms> <token> <name>`: grants were made to the waiters ahead of the waiting
    /// thread `token`; if nothing more is heard, it looks again after `ms` (a grantee
    /// may never come).
    Recheck { name: &'a str, token: &'a str, after: Duration },
}

impl<'a> Message<'a> {
    /// `None` for anything else (a message of another version, or not ours).
    fn parse(payload: &'a str) -> Option<Message<'a>> {
        let (kind, rest) = payload.split_at_checked(1)?;
        match kind {
            "!" => {
                let (token, rest) = rest.split_once(' ')?;
                let (fence, rest) = rest.split_once(' ')?;
                let (mark, rest) = rest.split_once(' ')?;
                let (acks, name) = rest.split_once(' ')?;
                let (fence, mark, acks) = (fence.parse().ok()?, mark.parse().ok()?, acks.parse().ok()?);
                Some(Message::Granted { name, token, fence, mark, acks })
            }
            "@" => {
                let (ms, name) = rest.split_once(' ')?;
                Some(Message::LookAgain { name, after: Duration::from_millis(ms.parse().ok()?) })
            }
            "*" => Some(Message::Forced { name: rest }),
            "-" => {
                let (token, name) = rest.split_once(' ')?;
                Some(Message::Released { name, token })
            }
            "^" => {
                let (tokens, name) = rest.split_once(' ')?;
                Some(Message::Admitted { name, tokens })
            }
            "~" => {
                let (ms, rest) = rest.split_once(' ')?;
                let (token, name) = rest.split_once(' ')?;
                Some(Message::Recheck { name, token, after: Duration::from_millis(ms.parse().ok()?) })
            }
            _ => None,
        }
    }
}

/// Starts the notifier thread. It exits soon after `shutdown`'s sender is dropped.
pub(crate) fn spawn(cfg: NotifierConfig, shared: Shared, shutdown: Receiver<()>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("redis-mutex-notifier".into()).spawn(move || run(cfg, shared, shutdown))
}

fn stopped(shutdown: &Receiver<()>) -> bool {
    matches!(shutdown.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected))
}

fn run(cfg: NotifierConfig, shared: Shared, shutdown: Receiver<()>) {
    supervise(&shared, &shutdown, |memory| serve(&cfg, &shared, &shutdown, memory));
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
fn serve(
    cfg: &NotifierConfig,
    shared: &Shared,
    shutdown: &Receiver<()>,
    memory: &mut Memory,
) -> redis::RedisResult<()> {
    let channels = [cfg.channels.mine.as_str(), cfg.channels.all.as_str()];
    let tagged = cfg.connect.connect_tagged(":notifier")?;
    let generation = tagged.generation;
    let mut con = tagged.con;
    let run_id = run_id(&mut con);
    // The `PubSub` lives as long as the connection: dropping it unsubscribes.
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe(&channels[..])?;
    confirm_subscribed(cfg, &mut pubsub)?;
    pubsub.set_read_timeout(Some(TICK))?;
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
    // Releases may have gone unheard while disconnected: everyone re-checks.
    shared.sink.wake_all();
    let broke = listen(cfg, shared, &mut pubsub, shutdown, generation);
    shared.sink.set_listening(false);
    broke.map_or(Ok(()), Err)
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
fn listen(
    cfg: &NotifierConfig,
    shared: &Shared,
    pubsub: &mut redis::PubSub<'_>,
    shutdown: &Receiver<()>,
    generation: u64,
) -> Option<redis::RedisError> {
    let mut last_heard = Instant::now();
    // Locks granted to the client ahead of this one, and when our first waiter should
    // look again if nothing more is heard: a client that crashed (or stopped) after
    // joining the queue never takes its grant, and nothing announces that. Under
    // contention each grant re-arms the check, so it only fires after a quiet spell.
    let mut checks: HashMap<String, Instant> = HashMap::new();
    // The same for the waiting threads of read-write locks and semaphores, by token.
    let mut ticket_checks: HashMap<String, Instant> = HashMap::new();
    loop {
        if stopped(shutdown) {
            return None;
        }
        if cfg.connect.target.generation() != generation {
            // A failover moved the master: subscribe there (releases are published
            // where the scripts run).
            return Some(redis::RedisError::from(std::io::Error::other("the master moved (failover)")));
        }
        if !checks.is_empty() {
            let now = Instant::now();
            checks.retain(|name, due| {
                if *due > now {
                    return true;
                }
                let woke = shared.sink.wake_first(name);
                log::debug!("redis-mutex: nothing heard of {name} since the grant ahead; waiter looks again: {woke}");
                false
            });
        }
        if !ticket_checks.is_empty() {
            let now = Instant::now();
            ticket_checks.retain(|token, due| {
                if *due > now {
                    return true;
                }
                let woke = shared.sink.wake_ticket(token);
                log::debug!(
                    "redis-mutex: nothing heard for waiter {token} since the grants ahead; looks again: {woke}"
                );
                false
            });
        }
        match pubsub.get_message() {
            Ok(msg) => {
                last_heard = Instant::now();
                bump(&shared.stats.messages_received);
                let payload = msg.get_payload_bytes();
                match std::str::from_utf8(payload).ok().and_then(Message::parse) {
                    Some(Message::Granted { name, token, fence, mark, acks }) => {
                        checks.remove(name);
                        let grant = Granted { token: token.to_owned(), fence, lease_ms: cfg.grant_ms, mark, acks };
                        if !shared.sink.granted(name, grant) {
                            // Its last waiter left after it queued.
                            (shared.unclaimed)(name, token);
                        }
                        log::trace!("redis-mutex: {name} granted to this client");
                    }
                    Some(Message::LookAgain { name, after }) => {
                        if shared.sink.has_waiters(name) {
                            let wait = after.saturating_add(TICK).saturating_add(jitter(after / 4));
                            checks.insert(name.to_owned(), later(Instant::now(), wait));
                        }
                    }
                    Some(Message::Forced { name }) => {
                        checks.remove(name);
                        let woke = shared.sink.wake_first(name);
                        log::trace!(
                            "redis-mutex: look again at {name} (forced, or a grant revoked); woke a waiter: {woke}"
                        );
                    }
                    Some(Message::Released { name, token }) => {
                        let woke = shared.sink.released(name, token);
                        log::trace!("redis-mutex: {name} released; woke a waiter: {woke}");
                    }
                    Some(Message::Admitted { name, tokens }) => {
                        for token in tokens.split(',') {
                            ticket_checks.remove(token);
                            // No such waiter: it left (and its leaving released the
                            // grant) or acquired by its own attempt.
                            let taken = shared.sink.granted_ticket(token, cfg.grant_ms);
                            log::trace!("redis-mutex: {name} granted to waiter {token} of this client: {taken}");
                        }
                    }
                    Some(Message::Recheck { name, token, after }) => {
                        if shared.sink.has_ticket(token) {
                            let wait = after.saturating_add(TICK).saturating_add(jitter(after / 4));
                            ticket_checks.insert(token.to_owned(), later(Instant::now(), wait));
                            log::trace!("redis-mutex: waiter {token} looks again at {name} unless granted first");
                        }
                    }
                    None => log::debug!("redis-mutex: ignored a message the notifier does not know: {payload:?}"),
                }
            }
            // A read a signal interrupted (EINTR: the process was stopped, then
            // continued) read nothing: the connection and the messages waiting on it
            // are fine. Reconnecting would lose those messages (a grant among them).
            Err(e) if e.is_timeout() || interrupted(&e) => {
                if last_heard.elapsed() >= cfg.ping_after {
                    // A quiet connection may be a dead one: PING must answer within the
                    // read timeout.
                    let probe = pubsub
                        .set_read_timeout(Some(cfg.connect.read_timeout))
                        .and_then(|()| pubsub.ping::<()>())
                        .and_then(|()| pubsub.set_read_timeout(Some(TICK)));
                    if let Err(e) = probe {
                        return Some(e);
                    }
                    last_heard = Instant::now();
                }
            }
            Err(e) => return Some(e),
        }
    }
}

/// The server's `run_id` (`INFO server`), which changes when it restarts; `None` when
/// it does not say (an ACL without `+info`): then a restart is found by renewals only.
fn run_id(con: &mut redis::Connection) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("server").query(con).ok()?;
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|id| id.trim().to_owned())
}

/// Whether `e` is a read interrupted by a signal.
fn interrupted(e: &redis::RedisError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
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

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn messages_parse_and_names_may_hold_spaces() {
        assert_eq!(
            Message::parse("!tok 17 3 1 job 42"),
            Some(Message::Granted { name: "job 42", token: "tok", fence: 17, mark: 3, acks: 1 })
        );
        assert_eq!(
            Message::parse("@1000 a:b"),
            Some(Message::LookAgain { name: "a:b", after: Duration::from_millis(1000) })
        );
        assert_eq!(Message::parse("*é x"), Some(Message::Forced { name: "é x" }));
        assert_eq!(Message::parse("-tok job 7"), Some(Message::Released { name: "job 7", token: "tok" }));
        assert_eq!(Message::parse("^a,b job 7"), Some(Message::Admitted { name: "job 7", tokens: "a,b" }));
        assert_eq!(
            Message::parse("~1000 tok job 7"),
            Some(Message::Recheck { name: "job 7", token: "tok", after: Duration::from_millis(1000) })
        );
        for bad in [
            "",
            ">x",
            "!tok",
            "!tok x 1 0 job",
            "!tok 1 job",
            "!tok 1 2 x job",
            "@x job",
            "@1000",
            "^a",
            "~x t j",
            "-tok",
        ] {
            assert_eq!(Message::parse(bad), None, "{bad:?}");
        }
    }
}
