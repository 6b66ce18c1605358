//! Passwords never appear in `Debug` output, error messages or log records: not the
//! server's (in a URL, a unix-socket `pass=` parameter, a wrong one), whatever odd
//! characters a password holds and whatever shape its URL has, and a URL that does
//! not parse is never quoted with a password's tail. Nor do TLS private keys, whatever
//! is wrong with them or with the connection.

mod support;
use support::RedisServer;
use support::logs::{capture_logs, captured};

use std::thread;
use std::time::Duration;

use redis_mutex::{Error, LockClient};
use redis_mutex_harness::XorShift;

/// Distinctive, so that any leak is found by a plain substring search.
const PASSWORD: &str = "s3cr3t-Pa55";

#[test]
fn passwords_never_appear_in_debug_output_errors_or_logs() {
    capture_logs();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("redis.sock");
    let sock_str = sock.to_str().unwrap();
    let mut server =
        RedisServer::start_with(&["--requirepass", PASSWORD, "--unixsocket", sock_str, "--unixsocketperm", "700"]);
    let url = server.url_with_password(PASSWORD);
    let mut shown: Vec<String> = Vec::new();

    let a = LockClient::open(&url).unwrap();
    let b = LockClient::builder().key_prefix("redis-mutex").build(&url).unwrap();
    let unix = LockClient::open(&format!("redis+unix://{sock_str}?pass={PASSWORD}")).unwrap();
    assert!(support::poll_until(Duration::from_secs(5), || a.is_notifier_connected() && b.is_notifier_connected()));
    shown.extend([format!("{a:?}"), format!("{b:?}"), format!("{unix:?}"), format!("{:?}", LockClient::builder())]);

    // Lock, contend across clients, unlock; then the same over the unix socket.
    let (ma, mb) = (a.mutex("job"), b.mutex("job"));
    let g = ma.lock().unwrap();
    shown.extend([format!("{ma:?}"), format!("{g:?}"), format!("{:?}", ma.holder().unwrap())]);
    thread::scope(|s| {
        let waiter = s.spawn(|| mb.try_lock_for(Duration::from_secs(10)).unwrap().map(|g| g.unlock()));
        thread::sleep(Duration::from_millis(200));
        g.unlock().unwrap();
        waiter.join().unwrap().expect("the waiter got the lock").unwrap();
    });
    unix.mutex("job").lock().unwrap().unlock().unwrap();

    // Kill every connection: pooled ones fail on use and are replaced, the notifiers
    // reconnect (and log it).
    let mut admin = server.admin_conn();
    for kind in ["normal", "pubsub"] {
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind).query::<i64>(&mut admin).unwrap();
    }
    assert!(
        support::poll_until(Duration::from_secs(5), || a.stats().notifier_reconnects >= 1 && a.is_notifier_connected())
    );
    ma.lock().unwrap().unlock().unwrap();
    shown.push(format!("{:?}", a.stats()));

    // Errors: a wrong password, a URL that does not parse, a server that is gone.
    let wrong = format!("Wr0ng-{PASSWORD}");
    let err = LockClient::open(&server.url_with_password(&wrong)).expect_err("wrong password");
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    shown.extend([err.to_string(), format!("{err:?}")]);
    let err = LockClient::open(&format!("redis://:{PASSWORD}@127.0.0.1:notaport/")).expect_err("bad URL");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    shown.extend([err.to_string(), format!("{err:?}")]);
    let held = ma.lock().unwrap();
    server.stop();
    let err = mb.try_lock_for(Duration::from_millis(500)).expect_err("the server is gone");
    shown.extend([err.to_string(), format!("{err:?}")]);
    drop(held); // its release fails, and is logged
    assert!(support::poll_until(Duration::from_secs(5), || !a.is_notifier_connected()));
    drop((a, b, unix));

    for s in &shown {
        assert!(!s.contains(PASSWORD), "a password leaked: {s}");
        assert!(!s.contains(&wrong), "a password leaked: {s}");
    }
    let logs = captured();
    assert!(logs.iter().any(|l| l.contains("notifier subscribed again")), "the reconnect must be logged: {logs:#?}");
    assert!(logs.iter().any(|l| l.contains("redis://***@127.0.0.1")), "URLs are logged, redacted: {logs:#?}");
    let leaked: Vec<&String> = logs.iter().filter(|l| l.contains(PASSWORD) || l.contains(&wrong)).collect();
    assert!(leaked.is_empty(), "passwords in log records: {leaked:#?}");
}

// ---- odd passwords in every URL shape -------------------------------------------

/// The mark every generated password carries between its odd characters: whatever
/// fragment of a password leaks, a case-insensitive search for it finds the leak (the
/// `url` crate lowercases host names, where a misread password can land).
const MARK: &str = "Zq9";

/// Passwords that break naive URL handling: each character that ends or splits a URL
/// part (`/ ? # @ : & = ;`), `%` (valid and invalid escapes), spaces, non-ASCII, and
/// text that reads as a query parameter once the authority ends early. Hand-picked
/// cases first, then a deterministic generator (xorshift) over the same atoms.
fn odd_passwords() -> Vec<String> {
    let m = MARK;
    let mut out: Vec<String> = [
        m.to_owned(),
        format!("se/cret{m}"),
        format!("pa#ss{m}"),
        format!("pa?ss{m}"),
        format!("{m}@{m}"),
        format!(":{m}:{m}"),
        format!("{m}%{m}%zz"),
        format!("{m} {m}"),
        format!("{m}é🔑{m}"),
        format!("{m}&pass={m}"),
        format!("{m}?db=1#{m}"),
        format!("1/{m}"),
        format!("1#{m}"),
        format!("{m}//{m}://{m}"),
        format!("%40{m}%2F{m}"),
    ]
    .into();
    const ATOMS: &[&str] = &[
        "/", "?", "#", "@", ":", "%", "&", "=", " ", "é", "🔑", "%2F", "%40", "%zz", "+", ";", "//", "pass=", "[", "\\",
    ];
    let mut rng = XorShift::new(1);
    let mut next = move |n: usize| rng.below(n as u64) as usize;
    for _ in 0..40 {
        let mut pw = String::new();
        if next(2) == 0 {
            pw.push_str(m);
        }
        for _ in 0..1 + next(4) {
            pw.push_str(ATOMS[next(ATOMS.len())]);
            pw.push_str(m);
        }
        out.push(pw);
    }
    out
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded: how a careful
/// user writes a password into a URL.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every place `pw` appears in `shown`, as written or percent-encoded, or any fragment
/// of it (through the mark).
fn leaks(shown: &str, pw: &str) -> bool {
    shown.contains(pw) || shown.contains(&percent_encoded(pw)) || shown.to_lowercase().contains(&MARK.to_lowercase())
}

/// Builds a client (checked, and unchecked then locking) for each password in every
/// URL shape, written as is and percent-encoded, and returns how many outputs (Display
/// and Debug of each error, Debug of each client) it looked at, and those that leak.
fn outputs_leaking(passwords: &[String]) -> (usize, Vec<String>) {
    // `{pw}` is replaced by the password; `{host}` by an address with nothing behind it
    // (port 1), or one without a port (only built unchecked: 6379 may have a server).
    let shapes = [
        "redis://:{pw}@{host}/",
        "redis://user:{pw}@{host}/",
        "redis://{pw}@{host}/",
        "redis://user:{pw}@{host}/3",
        "redis://user:{pw}@{host}",
        "rediss://user:{pw}@{host}/",
        "redis+unix:///tmp/redis-mutex-nowhere.sock?pass={pw}",
        "redis+unix:///tmp/redis-mutex-nowhere.sock?db=1&pass={pw}",
        "unix:///tmp/redis-mutex-nowhere.sock?pass={pw}&db=1",
        "redis+unix:///tmp/redis-mutex-nowhere.sock?user=u&password={pw}",
    ];
    let builder =
        || LockClient::builder().connect_timeout(Duration::from_millis(500)).pool_timeout(Duration::from_millis(10));
    let mut checked = 0;
    let mut found: Vec<String> = Vec::new();
    for pw in passwords {
        for written in [pw.clone(), percent_encoded(pw)] {
            for shape in shapes {
                for (host, connect) in [("127.0.0.1:1", true), ("127.0.0.1", false)] {
                    if !shape.contains("{host}") && !connect {
                        continue;
                    }
                    let url = shape.replace("{host}", host).replace("{pw}", &written);
                    let mut shown: Vec<String> = Vec::new();
                    match builder().build_unchecked(&url) {
                        Ok(client) => {
                            shown.push(format!("{client:?}"));
                            if connect {
                                let err = client.mutex("job").try_lock().expect_err("nothing listens");
                                shown.extend([err.to_string(), format!("{err:?}")]);
                            }
                        }
                        Err(err) => shown.extend([err.to_string(), format!("{err:?}")]),
                    }
                    if connect {
                        let err = builder().build(&url).expect_err("nothing listens");
                        shown.extend([err.to_string(), format!("{err:?}")]);
                    }
                    for s in shown {
                        checked += 1;
                        if leaks(&s, pw) {
                            found.push(format!("password {pw:?} in {url:?}: {s}"));
                        }
                    }
                }
            }
        }
    }
    (checked, found)
}

#[test]
fn odd_passwords_in_any_url_shape_never_appear_in_errors_debug_or_logs() {
    capture_logs();
    let logs_before = captured().len();
    let (checked, found) = outputs_leaking(&odd_passwords());
    // The notifiers of the clients built unchecked log their failures in the background.
    thread::sleep(Duration::from_millis(300));
    let logs = captured();
    let leaked: Vec<&String> = logs[logs_before..].iter().filter(|l| l.to_lowercase().contains("zq9")).collect();
    assert!(found.is_empty(), "{} of {checked} outputs leak a password:\n{}", found.len(), found.join("\n"));
    assert!(leaked.is_empty(), "passwords in log records: {leaked:#?}");
}

/// A password holding `?` ends the authority early for the URL parser, which then
/// reads the password's tail as the query and quotes an invalid `protocol=` value in
/// its error (`Error::InvalidUrl::reason`). `Error::invalid_url` withholds those details
/// (unit-tested in `src/error.rs`).
#[test]
fn a_parse_error_never_quotes_the_tail_of_a_password() {
    let passwords = [format!("1?protocol={MARK}"), format!("1?protocol={MARK}&db=1")];
    let (checked, found) = outputs_leaking(&passwords);
    assert!(found.is_empty(), "{} of {checked} outputs leak a password:\n{}", found.len(), found.join("\n"));
}

// ---- TLS: key material ------------------------------------------------------------

#[cfg(feature = "tls")]
mod tls_keys {
    use super::*;

    /// The base64 lines of a PEM: any one of them in an output is a leak of its key.
    fn pem_body_lines(pem: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(pem)
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect()
    }

    fn read(path: &std::path::Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn tls_keys_and_passwords_never_appear_in_debug_output_errors_or_logs() {
        capture_logs();
        let mut server = RedisServer::builder().mutual_tls().args(&["--requirepass", PASSWORD]).start();
        let other = RedisServer::builder().tls().start();
        let (files, others) = (server.tls().unwrap().clone(), other.tls().unwrap());
        let (ca, cert, key) = (read(&files.ca_cert), read(&files.client_cert), read(&files.client_key));
        let (server_key, other_key) = (read(&files.server_key), read(&others.client_key));
        let secrets: Vec<String> =
            [&key, &server_key, &other_key].into_iter().flat_map(|k| pem_body_lines(k)).collect();
        assert!(secrets.len() >= 6, "{secrets:?}");
        let url = server.url_with_password(PASSWORD);
        let builder = || {
            LockClient::builder()
                .tls_root_cert(ca.clone())
                .tls_client_cert(cert.clone(), key.clone())
                .connect_timeout(Duration::from_secs(1))
        };
        let mut shown = vec![format!("{:?}", builder())];

        let (a, b) = (builder().build(&url).unwrap(), builder().build(&url).unwrap());
        assert!(support::poll_until(Duration::from_secs(5), || a.is_notifier_connected() && b.is_notifier_connected()));
        let (ma, mb) = (a.mutex("job"), b.mutex("job"));
        let g = ma.lock().unwrap();
        shown.extend([format!("{a:?}"), format!("{ma:?}"), format!("{g:?}")]);
        thread::scope(|s| {
            let waiter = s.spawn(|| mb.try_lock_for(Duration::from_secs(10)).unwrap().map(|g| g.unlock()));
            g.unlock().unwrap();
            waiter.join().unwrap().expect("the waiter got the lock").unwrap();
        });
        shown.push(format!("{:?}", b.stats()));

        // Errors, each from a builder that holds the key.
        let mut errors = vec![
            builder().build(&server.url_with_password("wrong")).expect_err("wrong password"),
            LockClient::builder()
                .tls_root_cert(read(&others.ca_cert))
                .tls_client_cert(cert.clone(), key.clone())
                .build(&url)
                .expect_err("another CA"),
            builder().tls_client_cert(cert.clone(), server_key.clone()).build(&url).expect_err("another key"),
            builder().tls_root_cert(key.clone()).build(&url).expect_err("a key as the CA"),
            builder().tls_client_cert(key.clone(), key.clone()).build(&url).expect_err("a key as the certificate"),
        ];
        // A key with one character broken in each of its lines.
        let broken: String = String::from_utf8_lossy(&key)
            .lines()
            .map(|l| if l.starts_with("-----") { format!("{l}\n") } else { format!("!{}\n", &l[1..]) })
            .collect();
        errors.push(builder().tls_client_cert(cert.clone(), broken).build(&url).expect_err("a broken key"));
        let held = ma.lock().unwrap();
        server.stop();
        errors.push(mb.try_lock_for(Duration::from_millis(500)).expect_err("the server is gone"));
        drop(held); // its release fails, and is logged
        assert!(support::poll_until(Duration::from_secs(5), || !a.is_notifier_connected()));
        drop((a, b));
        for err in &errors {
            shown.extend([err.to_string(), format!("{err:?}")]);
        }

        let logs = captured();
        for s in shown.iter().chain(&logs) {
            assert!(!s.contains(PASSWORD), "a password leaked: {s}");
            assert!(!s.contains("PRIVATE KEY"), "key material leaked: {s}");
            for line in &secrets {
                assert!(!s.contains(line.as_str()), "key material leaked: {s}");
            }
        }
    }
}
