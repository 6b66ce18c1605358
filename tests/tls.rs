//! Proves `rediss://` works end to end on real TLS servers: lock and unlock, a waiter of
//! another client woken by a message its notifier hears over TLS, renewals over TLS,
//! mutual TLS, `#insecure`; that every connection of a client is TLS; and that a wrong
//! CA, a missing or untrusted client certificate, a plain-TCP server behind a
//! `rediss://` URL and invalid PEM are each a clear error, within the connect timeout.
//! Without the `tls` feature, a `rediss://` URL is an error saying to enable it.

#![cfg_attr(not(feature = "tls"), allow(unused))]

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{Error, LockClient, LockClientBuilder, MutexOptions};
use support::{RedisServer, connected_with, wait_until};

/// The connect timeout of the clients that must fail: errors come within it.
const CONNECT: Duration = Duration::from_secs(1);
/// What a failing build may take beyond the connect timeout (thread scheduling, the
/// certificate store redis-rs loads per connection).
const SLACK: Duration = Duration::from_millis(500);

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A builder that trusts `server`'s CA.
fn trusting(server: &RedisServer) -> LockClientBuilder {
    LockClient::builder().tls_root_cert(read(&server.tls().expect("a TLS server").ca_cert))
}

/// A builder that trusts `server`'s CA and presents its client certificate.
fn with_client_cert(server: &RedisServer) -> LockClientBuilder {
    let files = server.tls().expect("a TLS server");
    trusting(server).tls_client_cert(read(&files.client_cert), read(&files.client_key))
}

/// `(addr, name)` of every connection the server has.
fn connections(server: &RedisServer) -> Vec<(String, String)> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut server.conn()).unwrap();
    list.lines()
        .map(|line| {
            let field =
                |f: &str| line.split(' ').find_map(|kv| kv.strip_prefix(f)?.strip_prefix('=')).unwrap_or("").to_owned();
            (field("addr"), field("name"))
        })
        .collect()
}

/// Every connection of `client` came over TCP: a TLS server of the harness serves no
/// plain TCP (`--port 0`; the harness itself uses a Unix socket), so each one is TLS.
/// Returns their names.
fn assert_all_tls(server: &RedisServer, client: &LockClient) -> Vec<String> {
    let ours: Vec<_> = connections(server)
        .into_iter()
        .filter(|(_, name)| name.starts_with(&format!("redis-mutex:{}", client.id())))
        .collect();
    assert!(!ours.is_empty(), "no connection of the client");
    for (addr, name) in &ours {
        assert!(addr.starts_with("127.0.0.1:"), "{name} is not a TCP (so TLS) connection: {addr}");
    }
    ours.into_iter().map(|(_, name)| name).collect()
}

/// Runs `build`, expecting an error within the connect timeout.
fn fails_in_time(build: impl FnOnce() -> redis_mutex::Result<LockClient>) -> Error {
    let t = Instant::now();
    let err = build().expect_err("the client must not connect");
    let took = t.elapsed();
    println!("{took:?}: {err}");
    assert!(took <= CONNECT + SLACK, "took {took:?} (connect timeout {CONNECT:?}): {err}");
    err
}

#[cfg(feature = "tls")]
#[test]
fn a_lock_is_taken_and_released_over_tls_and_every_connection_is_tls() {
    let server = RedisServer::builder().tls().start();
    let client = connected_with(&server, trusting(&server));
    let m = client.mutex("job");
    let g = m.lock().unwrap();
    let key: Option<String> = redis::cmd("HGET").arg("redis-mutex:{job}").arg("o").query(&mut server.conn()).unwrap();
    assert_eq!(key.as_deref(), Some(g.token()), "Redis holds the lock for the guard");
    assert!(m.try_lock().unwrap().is_none());
    g.unlock().unwrap();
    assert!(!m.is_locked().unwrap());
    let names = assert_all_tls(&server, &client);
    assert!(names.iter().any(|n| n.ends_with(":notifier")), "the notifier's connection: {names:?}");
}

#[cfg(feature = "tls")]
#[test]
fn a_waiter_of_another_client_is_granted_the_lock_by_a_message_heard_over_tls() {
    let server = RedisServer::builder().tls().start();
    let (a, b) = (connected_with(&server, trusting(&server)), connected_with(&server, trusting(&server)));
    let held = a.mutex("job").lock().unwrap();
    let m = b.mutex("job");
    let waiter = thread::spawn(move || {
        let t = Instant::now();
        let g = m.lock().unwrap();
        (t.elapsed(), g.unlock())
    });
    // Queued in Redis (its attempt is counted before it is sent).
    let mut con = server.conn();
    wait_until(Duration::from_secs(10), "b to queue", || {
        let q: Option<String> = redis::cmd("HGET").arg("redis-mutex:{job}").arg("q").query(&mut con).unwrap();
        q.is_some_and(|q| q.contains(b.id()))
    });
    let before = b.stats();
    drop(held);
    let (waited, unlocked) = waiter.join().unwrap();
    unlocked.unwrap();
    let s = b.stats().since(&before);
    println!("b waited {waited:?}; its stats meanwhile: {s:#?}");
    // The lease is 30 s and the recheck interval 60 s: a wake-up by timeout would come
    // no sooner, and would be counted.
    assert_eq!(s.wakeups_timeout, 0, "{s:#?}");
    assert_eq!((s.grants, s.attempts), (1, 0), "granted by a's release, without an attempt of its own: {s:#?}");
    assert!(s.messages_received >= 1, "{s:#?}");
    assert!(b.is_notifier_connected());
    let names = assert_all_tls(&server, &b);
    assert!(names.iter().any(|n| n.ends_with(":notifier")), "{names:?}");
}

#[cfg(feature = "tls")]
#[test]
fn the_watchdog_renews_over_tls() {
    let server = RedisServer::builder().tls().start();
    let client = connected_with(&server, trusting(&server));
    let g = client.mutex_with("job", MutexOptions::default().lease(Duration::from_millis(600))).lock().unwrap();
    wait_until(Duration::from_secs(10), "two renewals", || client.stats().renewals >= 2);
    assert!(g.is_held().unwrap() && !g.is_lost());
    g.unlock().unwrap();
}

#[cfg(feature = "tls")]
#[test]
fn mutual_tls_works_with_the_client_certificate_and_says_what_is_missing_without() {
    let server = RedisServer::builder().mutual_tls().start();
    let client = connected_with(&server, with_client_cert(&server));
    client.mutex("job").lock().unwrap().unlock().unwrap();
    assert_all_tls(&server, &client);

    let err = fails_in_time(|| trusting(&server).connect_timeout(CONNECT).build(&server.url()));
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("requires a client certificate") && err.to_string().contains("tls_client_cert"));
    assert!(!err.is_transient());

    // A client certificate the server's CA did not sign.
    let other = RedisServer::builder().tls().start();
    let files = other.tls().unwrap();
    let err = fails_in_time(|| {
        trusting(&server)
            .tls_client_cert(read(&files.client_cert), read(&files.client_key))
            .connect_timeout(CONNECT)
            .build(&server.url())
    });
    assert!(matches!(err, Error::Tls(_)) && err.to_string().contains("refused this client's certificate"), "{err}");
}

#[cfg(feature = "tls")]
#[test]
fn a_server_signed_by_another_ca_is_a_clear_error_in_time() {
    let server = RedisServer::builder().tls().start();
    let other = RedisServer::builder().tls().start();
    let err = fails_in_time(|| trusting(&other).connect_timeout(CONNECT).build(&server.url()));
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("not signed by a CA this client trusts"), "{err}");
    assert!(!err.is_transient());
    // Nor the system's roots.
    let err = fails_in_time(|| LockClient::builder().connect_timeout(CONNECT).build(&server.url()));
    assert!(err.to_string().contains("not signed by a CA"), "{err}");

    // Unchecked, the first lock says the same at once: it is not retried as an outage.
    let client = trusting(&other).connect_timeout(CONNECT).outage_tolerance(Duration::from_secs(30));
    let client = client.build_unchecked(&server.url()).unwrap();
    let err = fails_in_time(|| client.mutex("job").lock().map(|_| unreachable!()));
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

#[cfg(feature = "tls")]
#[test]
fn a_plain_tcp_server_behind_rediss_is_named_as_such_in_time() {
    let tls = RedisServer::builder().tls().start();
    let plain = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}/", plain.port());
    for _ in 0..3 {
        let err = fails_in_time(|| trusting(&tls).connect_timeout(CONNECT).build(&url));
        assert!(matches!(err, Error::Tls(_)), "{err:?}");
        assert!(err.to_string().contains("plain-TCP port"), "{err}");
    }
    // Unchecked: the lock's error says the same, and is not retried as an outage.
    let client = trusting(&tls).connect_timeout(CONNECT).build_unchecked(&url).unwrap();
    let err = fails_in_time(|| client.mutex("job").lock().map(|_| unreachable!()));
    assert!(err.to_string().contains("plain-TCP port"), "{err}");
}

#[cfg(feature = "tls")]
#[test]
fn a_server_that_never_answers_the_handshake_times_out_in_time() {
    let tls = RedisServer::builder().tls().start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("rediss://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    let err = fails_in_time(|| trusting(&tls).connect_timeout(CONNECT).build(&url));
    // Maybe a paused server: transient, and says what may be wrong.
    assert!(matches!(err, Error::Connection(_)) && err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("no TLS answer"), "{err}");
    drop(listener);
}

#[cfg(feature = "tls")]
#[test]
fn insecure_urls_skip_the_certificate_check() {
    let server = RedisServer::builder().tls().start();
    let url = format!("{}#insecure", server.url());
    let client = LockClient::builder().build(&url).expect("no CA needed with #insecure");
    client.mutex("job").lock().unwrap().unlock().unwrap();
    assert_all_tls(&server, &client);
}

#[cfg(feature = "tls")]
#[test]
fn invalid_pem_is_an_option_error_before_any_io() {
    let server = RedisServer::builder().tls().start();
    let files = server.tls().unwrap();
    // Port 1: nothing listens, so only a check before I/O can explain these errors.
    let url = "rediss://127.0.0.1:1/";
    let option = |builder: LockClientBuilder| match builder.build(url) {
        Err(Error::InvalidOption { option, reason }) => format!("{option}: {reason}"),
        other => panic!("expected an option error: {other:?}"),
    };
    let not_pem = option(LockClient::builder().tls_root_cert(&b"not a certificate"[..]));
    assert!(not_pem.starts_with("tls_root_cert: no certificate found"), "{not_pem}");
    let broken = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    assert!(option(LockClient::builder().tls_root_cert(&broken[..])).starts_with("tls_root_cert:"));
    let key_as_cert = option(LockClient::builder().tls_root_cert(read(&files.client_key)));
    assert!(key_as_cert.starts_with("tls_root_cert: no certificate found"), "{key_as_cert}");

    let cert = read(&files.client_cert);
    let no_key = option(trusting(&server).tls_client_cert(cert.clone(), &b"garbage"[..]));
    assert!(no_key.starts_with("tls_client_cert: no private key found"), "{no_key}");
    let no_cert = option(trusting(&server).tls_client_cert(&b"garbage"[..], read(&files.client_key)));
    assert!(no_cert.starts_with("tls_client_cert: no certificate found"), "{no_cert}");
    // Another key than the certificate's.
    let mismatch = option(trusting(&server).tls_client_cert(cert, read(&files.server_key)));
    assert!(mismatch.starts_with("tls_client_cert: the key cannot be used with the certificate"), "{mismatch}");

    // TLS options with a plain URL would silently not be used, nor with plain Sentinels.
    let err = trusting(&server).build(&format!("redis://127.0.0.1:{}/", server.port())).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { option: "tls_root_cert", .. }), "{err:?}");
    let err = trusting(&server).build_sentinel("mymaster", &["redis://127.0.0.1:1/"]).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { option: "tls_root_cert", .. }), "{err:?}");
}

#[cfg(not(feature = "tls"))]
#[test]
fn without_the_tls_feature_rediss_urls_and_tls_options_say_to_enable_it() {
    let err = LockClient::builder().build_unchecked("rediss://127.0.0.1:1/").unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }) && err.to_string().contains("`tls` feature"), "{err}");
    let err = LockClient::builder().tls_root_cert(&b"pem"[..]).build_unchecked("rediss://127.0.0.1:1/").unwrap_err();
    assert!(matches!(err, Error::InvalidOption { option: "tls_root_cert", .. }), "{err:?}");
    assert!(err.to_string().contains("`tls` feature"), "{err}");
}
