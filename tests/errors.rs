//! Proves that bad input is refused with the exact error before any I/O, and that
//! server-side trouble (nothing listening, wrong password, a foreign key, a server
//! that does not speak Redis) gives a clear error quickly instead of a hang or panic.

mod support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{Error, LockClient, Mutex, MutexOptions};
use support::RedisServer;

/// Phrases from `src/error.rs` that tell the user what to do.
const CONNECTION_ADVICE: &str = "check that the server runs at the configured URL";
const AUTH_ADVICE: &str = "check the username and password";
const WRONG_TYPE_ADVICE: &str = "use another lock name or key prefix";

/// Commands a client sends in the background or while connecting (pool connections,
/// the notifier's subscription and liveness probes), whatever the caller does, and the
/// harness's own bookkeeping.
const BACKGROUND: &[&str] =
    &["ping", "subscribe", "client|setname", "client|setinfo", "hello", "auth", "select", "info", "config|resetstat"];

/// Calls of every other command: what locking operations send.
fn lock_commands(server: &RedisServer) -> u64 {
    server.command_stats().iter().filter(|(name, _)| !BACKGROUND.contains(&name.as_str())).map(|(_, n)| n).sum()
}

fn assert_displays(err: &Error) -> String {
    let shown = err.to_string();
    assert!(!shown.trim().is_empty(), "empty Display for {err:?}");
    shown
}

/// A URL whose port had a Redis a moment ago and has nothing listening now.
fn dead_url() -> String {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    url
}

/// A TCP server on 127.0.0.1 that accepts connections, optionally writes `reply` to
/// each, and otherwise never answers (it keeps the sockets open). Stops when dropped.
struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<usize>>,
}

impl FakeServer {
    fn start(reply: Option<&'static [u8]>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut socket, _)) => {
                        if let Some(reply) = reply {
                            let _ = socket.write_all(reply);
                        }
                        open.push(socket);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            open.len()
        });
        FakeServer { port, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops accepting and returns how many connections were accepted.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs every operation that takes a lock name and checks that each one refuses it
/// with `InvalidName`.
fn assert_name_refused(m: &Mutex) {
    let expect = |what: &str, err: Option<Error>| {
        let err = err.unwrap_or_else(|| panic!("{what} accepted the name {:?}", m.name()));
        assert!(matches!(err, Error::InvalidName { .. }), "{what} on {:?}: {err:?}", m.name());
        assert!(!err.is_transient());
        assert_displays(&err);
    };
    expect("lock", m.lock().err());
    expect("try_lock", m.try_lock().err());
    expect("try_lock_for", m.try_lock_for(Duration::from_secs(1)).err());
    expect("try_lock_until", m.try_lock_until(Instant::now() + Duration::from_secs(1)).err());
    expect("is_locked", m.is_locked().err());
    expect("holder", m.holder().err());
    expect("force_unlock", m.force_unlock().err());
    expect("key", m.key().err());
}

#[test]
fn invalid_lock_names_are_refused_before_any_command_is_sent() {
    let server = RedisServer::start();
    let client = LockClient::open(&server.url()).unwrap();
    let long = "x".repeat(513);
    let names = ["", long.as_str(), "a{b", "a}b", "{tagged}"];
    let before = lock_commands(&server);
    for name in names {
        assert_name_refused(&client.mutex(name));
        let r = client.reentrant_mutex(name);
        for err in [r.lock().err(), r.try_lock().err(), r.try_lock_for(Duration::from_secs(1)).err()] {
            assert!(matches!(err, Some(Error::InvalidName { .. })), "reentrant on {name:?}: {err:?}");
        }
    }
    assert_eq!(lock_commands(&server), before, "a command reached Redis for an invalid name");

    match client.mutex(&long).lock() {
        Err(Error::InvalidName { name, reason }) => {
            assert!(name.len() <= 64, "the error repeats a {}-byte name", name.len());
            assert!(reason.contains("512"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The count above can move: the longest valid name reaches Redis.
    let longest = "x".repeat(512);
    let guard = client.mutex(&longest).try_lock().unwrap().expect("a 512-byte name is valid");
    assert!(lock_commands(&server) > before);
    drop(guard);
}

#[test]
fn invalid_key_prefixes_are_refused_by_the_builder() {
    let fake = FakeServer::start(None);
    for c in ['*', '?', '[', ']', '\\', '{', '}'] {
        let prefix = format!("app{c}locks");
        match LockClient::builder().key_prefix(prefix.clone()).build(&fake.url()) {
            Err(Error::InvalidOption { option: "key_prefix", reason }) => {
                assert!(reason.contains(&prefix) || reason.contains(&format!("{prefix:?}")), "{reason}")
            }
            other => panic!("key_prefix {prefix:?}: {other:?}"),
        }
        let err = LockClient::builder().key_prefix(prefix.clone()).build_unchecked(&fake.url()).unwrap_err();
        assert!(matches!(err, Error::InvalidOption { option: "key_prefix", .. }), "{err:?}");
        assert_displays(&err);
    }
    assert!(matches!(
        LockClient::builder().key_prefix("").build(&fake.url()),
        Err(Error::InvalidOption { option: "key_prefix", .. })
    ));
    assert_eq!(fake.finish(), 0, "the builder connected before checking its options");
}

#[test]
fn invalid_leases_and_pool_size_are_refused_before_any_command_is_sent() {
    let server = RedisServer::start();
    let client = LockClient::open(&server.url()).unwrap();
    let before = lock_commands(&server);
    for lease in [Duration::ZERO, Duration::from_micros(500), Duration::MAX] {
        let m = client.mutex_with("job", MutexOptions::default().lease(lease));
        for (what, result) in [
            ("lock", m.lock().err()),
            ("try_lock", m.try_lock().err()),
            ("try_lock_for", m.try_lock_for(Duration::from_secs(1)).err()),
        ] {
            match result {
                Some(Error::InvalidOption { option: "lease", reason }) => assert!(!reason.is_empty()),
                other => panic!("{what} with lease {lease:?}: {other:?}"),
            }
        }
        let r = client.reentrant_mutex_with(&format!("re-{}", lease.as_nanos()), MutexOptions::default().lease(lease));
        assert!(matches!(r.lock().err(), Some(Error::InvalidOption { option: "lease", .. })));
    }
    assert_eq!(lock_commands(&server), before, "a command reached Redis for an invalid lease");

    // extend checks its lease too, and leaves the lock as it was.
    let guard = client.mutex("job").lock().unwrap();
    for lease in [Duration::ZERO, Duration::from_micros(500), Duration::MAX] {
        let err = guard.extend(lease).unwrap_err();
        assert!(matches!(err, Error::InvalidOption { option: "lease", .. }), "extend({lease:?}): {err:?}");
    }
    assert!(guard.is_held().unwrap());
    drop(guard);

    let fake = FakeServer::start(None);
    let err = LockClient::builder().pool_max_size(0).build(&fake.url()).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { option: "pool_max_size", .. }), "{err:?}");
    assert_displays(&err);
    assert_eq!(fake.finish(), 0, "the builder connected before checking its options");
}

#[test]
fn unparsable_urls_are_refused_and_passwords_never_shown() {
    for url in ["not a url", "http://x", "redis://127.0.0.1:notaport/", ""] {
        let err = LockClient::open(url).unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url:?}: {err:?}");
        assert!(!err.is_transient());
        assert_displays(&err);
        let err = LockClient::builder().build_unchecked(url).unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url:?}: {err:?}");
    }

    let secret = "Sup3rS3cretPw";
    let bad = format!("redis://admin:{secret}@127.0.0.1:notaport/");
    let err = LockClient::open(&bad).unwrap_err();
    let Error::InvalidUrl { url, .. } = &err else { panic!("{err:?}") };
    assert!(!url.contains(secret) && url.contains("***"), "{url}");
    assert!(!assert_displays(&err).contains(secret), "{err}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");

    let server = RedisServer::start_with(&["--requirepass", secret]);
    let client = LockClient::open(&server.url_with_password(secret)).expect("the right password works");
    let shown = format!("{client:?}");
    assert!(!shown.contains(secret) && shown.contains("***"), "{shown}");
    let guard = client.mutex("job").try_lock().unwrap().expect("a free lock");
    assert!(!format!("{guard:?} {:?}", guard.mutex()).contains(secret));
}

#[test]
fn nothing_listening_gives_a_connection_error_that_says_what_to_do() {
    let url = dead_url();
    let started = Instant::now();
    let err = LockClient::open(&url).unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(assert_displays(&err).contains(CONNECTION_ADVICE), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "refused connection took {:?}", started.elapsed());

    let client = LockClient::builder()
        .pool_timeout(Duration::from_secs(1))
        .build_unchecked(&url)
        .expect("build_unchecked does not connect");
    assert!(!client.is_notifier_connected());
    let started = Instant::now();
    let err = client.mutex("job").try_lock().unwrap_err();
    let took = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert_displays(&err);
    assert!(took < Duration::from_secs(3), "try_lock on a dead server took {took:?} (pool timeout 1 s)");
}

#[test]
fn try_lock_for_on_a_dead_server_gives_up_at_its_deadline() {
    let url = dead_url();
    // Default pool timeout (5 s): the caller's deadline must cut it short.
    let client = LockClient::builder().build_unchecked(&url).unwrap();
    let started = Instant::now();
    let err = client.mutex("job").try_lock_for(Duration::from_secs(1)).unwrap_err();
    let took = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert_displays(&err);
    assert!(took < Duration::from_secs(3), "try_lock_for(1 s) returned after {took:?}");
}

#[test]
fn wrong_or_missing_password_gives_an_auth_error() {
    let server = RedisServer::start_with(&["--requirepass", "pw"]);
    for url in [server.url_with_password("wrong-password"), server.url()] {
        let err = LockClient::open(&url).unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "{url}: {err:?}");
        assert!(!err.is_transient());
        let shown = assert_displays(&err);
        assert!(shown.contains(AUTH_ADVICE), "{shown}");
        assert!(!shown.contains("wrong-password"), "{shown}");

        // Without the up-front check, the refusal surfaces through the pool: still an
        // auth error (not "cannot reach"), and `lock()` does not retry it as an outage.
        let client = LockClient::builder().pool_timeout(Duration::from_secs(1)).build_unchecked(&url).unwrap();
        let err = client.mutex("job").try_lock().unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "{url}: {err:?}");
        assert!(!err.is_transient());
        let started = Instant::now();
        let err = client.mutex("job").lock().unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "{url}: {err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not retried for the outage tolerance: {:?}",
            started.elapsed()
        );
        let shown = assert_displays(&err);
        assert!(shown.contains("uthentication"), "{url}: the error does not say authentication failed: {err:?}");
        assert!(!shown.contains("wrong-password"), "{shown}");
    }
}

#[test]
fn a_foreign_key_where_the_lock_lives_gives_wrong_type_and_is_left_alone() {
    let server = RedisServer::start();
    let mut con = server.conn();
    redis::cmd("SET").arg("redis-mutex:{x}").arg("hello").query::<()>(&mut con).unwrap();
    let client = LockClient::open(&server.url()).unwrap();
    let m = client.mutex("x");

    let started = Instant::now();
    let mut errors = vec![
        m.lock().map(drop).unwrap_err(),
        m.try_lock().map(drop).unwrap_err(),
        m.try_lock_for(Duration::from_secs(5)).map(drop).unwrap_err(),
        m.force_unlock().map(drop).unwrap_err(),
        m.is_locked().map(drop).unwrap_err(),
        m.holder().map(drop).unwrap_err(),
    ];
    errors.push(client.mutex_with("x", MutexOptions::default().fencing(true)).try_lock().map(drop).unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(3), "WrongType is not retried: took {:?}", started.elapsed());
    for err in &errors {
        match err {
            Error::WrongType { key } => assert_eq!(key, "redis-mutex:{x}"),
            other => panic!("expected WrongType, got {other:?}"),
        }
        assert!(!err.is_transient());
        assert!(assert_displays(err).contains(WRONG_TYPE_ADVICE), "{err}");
    }
    let value: String = redis::cmd("GET").arg("redis-mutex:{x}").query(&mut con).unwrap();
    assert_eq!(value, "hello", "the foreign key was modified");
    assert_eq!(m.waiting_threads(), 0);
}

#[test]
fn a_server_that_never_answers_fails_within_the_timeouts() {
    let fake = FakeServer::start(None);
    let started = Instant::now();
    let err = LockClient::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .build(&fake.url())
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "build against a silent server took {took:?}");
    assert!(err.is_transient(), "{err:?}");
    assert!(assert_displays(&err).contains(CONNECTION_ADVICE), "{err}");
    assert!(fake.finish() >= 1, "the builder never connected, so this proved nothing");
}

#[test]
fn a_server_that_answers_garbage_gives_an_error() {
    let fake = FakeServer::start(Some(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
    let started = Instant::now();
    let err = LockClient::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .build(&fake.url())
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_displays(&err);

    let client = LockClient::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .pool_timeout(Duration::from_secs(1))
        .build_unchecked(&fake.url())
        .unwrap();
    let started = Instant::now();
    let err = client.mutex("job").try_lock().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    assert_displays(&err);
    drop(client);
    assert!(fake.finish() >= 1);
}

/// Durations no clock can add (`Duration::MAX`, as a caller writes "forever") are refused
/// by the builder with the limit in the message: once accepted, one would panic a
/// waiter, every `lock()` or the notifier thread the first time it is added to a clock.
#[test]
fn durations_too_long_for_a_clock_are_refused_with_the_limit() {
    type Setter = fn(redis_mutex::LockClientBuilder, Duration) -> redis_mutex::LockClientBuilder;
    let options: [(&str, Setter); 8] = [
        ("pool_timeout", |b, d| b.pool_timeout(d)),
        ("connect_timeout", |b, d| b.connect_timeout(d)),
        ("read_timeout", |b, d| b.read_timeout(d)),
        ("write_timeout", |b, d| b.write_timeout(d)),
        ("outage_tolerance", |b, d| b.outage_tolerance(d)),
        ("recheck_interval", |b, d| b.recheck_interval(d)),
        ("ping_interval", |b, d| b.ping_interval(d)),
        ("reservation_timeout", |b, d| b.reservation_timeout(d)),
    ];
    let fake = FakeServer::start(None);
    for (name, set) in options {
        for d in [Duration::MAX, Duration::from_secs(u64::MAX / 2), redis_mutex::MAX_LEASE + Duration::from_millis(1)] {
            match set(LockClient::builder(), d).build_unchecked(&fake.url()) {
                Err(Error::InvalidOption { option, reason }) => {
                    assert_eq!(option, name);
                    assert!(reason.contains(&format!("{:?}", redis_mutex::MAX_LEASE)), "{name}: {reason}");
                }
                other => panic!("{name}({d:?}) was accepted: {other:?}"),
            }
        }
    }
    assert_eq!(fake.finish(), 0, "the builder connected before checking its options");
    // The limit itself is accepted (such a client's notifier connects in the background,
    // so not to the server that counts connections).
    let url = dead_url();
    for (name, set) in options {
        let c = set(LockClient::builder(), redis_mutex::MAX_LEASE).build_unchecked(&url);
        assert!(c.is_ok(), "{name} at the limit: {c:?}");
    }
}

/// The longest accepted `recheck_interval` and `pool_timeout` do not panic a waiter.
#[test]
fn the_longest_accepted_durations_work() {
    let server = RedisServer::start();
    let client = support::connected_with(
        &server,
        LockClient::builder()
            .recheck_interval(redis_mutex::MAX_LEASE)
            .pool_timeout(redis_mutex::MAX_LEASE)
            .outage_tolerance(redis_mutex::MAX_LEASE)
            .reservation_timeout(redis_mutex::MAX_LEASE),
    );
    let m = client.mutex("long");
    let held = m.lock().unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || m.try_lock_for(Duration::MAX).map(|g| g.is_some()))
        })
        .collect();
    support::wait_until(Duration::from_secs(5), "both waiters to queue", || m.waiting_threads() == 2);
    thread::sleep(Duration::from_millis(100));
    drop(held);
    for w in waiters {
        assert!(w.join().expect("no waiter panics").unwrap());
    }
    assert!(client.is_notifier_connected());
}
