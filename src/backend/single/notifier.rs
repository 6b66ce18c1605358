//! The notifier: one pub/sub connection per client, outside the pool, owned by the
//! `redis-mutex-notifier` thread. It `PSUBSCRIBE`s every release channel of the
//! client's prefix once per connection and turns each release message into a wake-up
//! of one local waiter. Waiters never talk to it; it only delivers to the client's
//! [`ReleaseSink`] (the waiter registry, which it does not otherwise know).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::connection::ConnectSettings;
use crate::backend::ReleaseSink;
use crate::backoff::{Backoff, jitter};
use crate::clock::later;
use crate::keys::{channel_pattern, name_from_channel};
use crate::stats::{Counters, bump};
use crate::sync::panic_message;

/// How often the thread looks up from a quiet connection (to see whether the client
/// was dropped).
const TICK: Duration = Duration::from_millis(250);

pub(crate) struct NotifierConfig {
    pub connect: ConnectSettings,
    pub prefix: String,
    pub client_id: String,
    /// Silence after which the connection is probed with PING.
    pub ping_after: Duration,
    /// How long a lock passed to a client stays reserved for it.
    pub reservation: Duration,
}

pub(crate) struct Shared {
    pub sink: Arc<dyn ReleaseSink>,
    pub stats: Arc<Counters>,
    /// Called with a lock name passed to this client while none of its threads waits
    /// for it any more: leaves the lock's queue, passing the reservation on.
    pub unclaimed: Box<dyn Fn(&str) + Send>,
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
}

/// Runs `session` (one subscribed connection) until the client is dropped: after it
/// breaks, backs off and runs it again. A panic in it (a bug) is caught and handled
/// like a broken connection: logged, the notifier marked down (waiters poll), and a
/// new session started, so that no wake-up is lost for good.
fn supervise(shared: &Shared, shutdown: &Receiver<()>, mut session: impl FnMut(&mut Memory) -> redis::RedisResult<()>) {
    let mut memory = Memory { backoff: Backoff::new(), connected_before: false, last_error: None };
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
    let pattern = channel_pattern(&cfg.prefix);
    let mut con = cfg.connect.connect(":notifier")?;
    // The `PubSub` lives as long as the connection: dropping it unsubscribes.
    let mut pubsub = con.as_pubsub();
    pubsub.psubscribe(&pattern)?;
    confirm_subscribed(cfg, &mut pubsub, &pattern)?;
    pubsub.set_read_timeout(Some(TICK))?;
    memory.backoff = Backoff::new();
    memory.last_error = None;
    if memory.connected_before {
        bump(&shared.stats.notifier_reconnects);
        log::warn!("redis-mutex: notifier subscribed again to {pattern}");
    } else {
        log::debug!("redis-mutex: notifier subscribed to {pattern}");
    }
    memory.connected_before = true;
    shared.sink.set_listening(true);
    // Releases may have gone unheard while disconnected: everyone re-checks.
    shared.sink.wake_all();
    let broke = listen(cfg, shared, &mut pubsub, shutdown);
    shared.sink.set_listening(false);
    broke.map_or(Ok(()), Err)
}

/// redis-rs discards the reply to `PSUBSCRIBE`, so a refusal (`NOPERM`: the user's ACL
/// does not list the pattern itself among its channels) would go unnoticed: the notifier
/// would count as up and waiters would sleep without ever being woken. Subscribed, a
/// RESP2 connection answers `PING` with `["pong", ""]`; a plain `PONG` means nothing was
/// subscribed. (RESP3 answers `PONG` either way; it is not checked.)
fn confirm_subscribed(cfg: &NotifierConfig, pubsub: &mut redis::PubSub<'_>, pattern: &str) -> redis::RedisResult<()> {
    if cfg.connect.client.get_connection_info().redis_settings().protocol() != redis::ProtocolVersion::RESP2 {
        return Ok(());
    }
    match pubsub.ping::<redis::Value>()? {
        redis::Value::SimpleString(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "PSUBSCRIBE refused",
            format!(
                "not subscribed to {pattern}: the user's ACL must allow this channel pattern \
                 literally, e.g. `&{pattern}`"
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
) -> Option<redis::RedisError> {
    let mut last_heard = Instant::now();
    // Locks passed to another client while ours waited, and when our first waiter
    // should look again if no later pass is heard: a client that crashed (or stopped)
    // after joining the queue never takes its reservation, and nothing announces that.
    // Under contention each pass re-arms the check, so it only fires after a quiet
    // spell: one attempt per waiting client, not one per pass.
    let mut checks: HashMap<String, Instant> = HashMap::new();
    loop {
        if stopped(shutdown) {
            return None;
        }
        if !checks.is_empty() {
            let now = Instant::now();
            checks.retain(|name, due| {
                if *due > now {
                    return true;
                }
                let woke = shared.sink.wake_first(name);
                log::debug!("redis-mutex: no pass of {name} heard since the last one; waiter re-checks: {woke}");
                false
            });
        }
        match pubsub.get_message() {
            Ok(msg) => {
                last_heard = Instant::now();
                bump(&shared.stats.messages_received);
                let payload = msg.get_payload_bytes();
                // `>id`: the lock was passed to client `id`, which alone acts on it.
                // Anything else (`*`: forced unlock) wakes every client's first waiter.
                let mine = cfg.client_id.as_bytes();
                let Some(name) = name_from_channel(&cfg.prefix, msg.get_channel_name()) else { continue };
                let for_me = match payload.strip_prefix(b">") {
                    Some(target) if target == mine => true,
                    Some(_) => {
                        if shared.sink.has_waiters(name) {
                            let wait = cfg.reservation.saturating_add(TICK).saturating_add(jitter(cfg.reservation / 4));
                            let due = later(Instant::now(), wait);
                            checks.insert(name.to_owned(), due);
                        }
                        continue;
                    }
                    None => false,
                };
                checks.remove(name);
                let woke = shared.sink.wake_first(name);
                log::trace!("redis-mutex: release of {name} heard; woke a waiter: {woke}");
                if for_me && !woke {
                    // Its last waiter left after the releaser chose this client.
                    (shared.unclaimed)(name);
                }
            }
            Err(e) if e.is_timeout() => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that only remembers whether the notifier says it listens.
    #[derive(Default)]
    struct Listening(AtomicBool);

    impl ReleaseSink for Listening {
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
    }

    #[test]
    fn a_session_that_panics_is_marked_down_and_started_again() {
        let sink = Arc::new(Listening::default());
        let shared = Shared { sink: sink.clone(), stats: Arc::new(Counters::default()), unclaimed: Box::new(|_| {}) };
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
