//! Micro-benchmarks: the crate's uncontended `lock` + drop and `try_lock` on a held lock,
//! each beside its floor — the same Lua scripts sent by hand over one held connection —
//! and the loopback PING round trip, all against one throwaway loopback redis-server.
//!
//! `cargo bench --bench micro`. Target: each crate figure ≤ 1.15× its floor.
//!
//! With the `tls` feature (default), the uncontended lock + drop also runs over TLS, on a
//! TLS-only server of its own beside the plain one, and is interleaved with the plain
//! TCP one (the PING round trips likewise). Target: TLS ≤ 1.3× plain TCP.
//!
//! Criterion measures each function in turn, and on a shared VM sequential runs drift by
//! ±15%; so after criterion, each pair is also measured *interleaved* (alternating
//! blocks of crate and floor iterations) and the median of the per-pair ratios is
//! printed: drift then affects both sides of each ratio alike.

use criterion::{Criterion, criterion_group};
use redis_mutex::LockClient;
use redis_mutex::bench_support::Floor;
use redis_mutex_harness::RedisServer;

use std::time::{Duration, Instant};

/// Runs `a` and `b` in alternating blocks of `block` iterations, `pairs` times; returns
/// the median ratio of a block of `a` to the adjacent block of `b`, and the medians of
/// their per-iteration times.
fn interleaved(pairs: usize, block: u32, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, Duration, Duration) {
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..block {
            f();
        }
        t.elapsed() / block
    };
    let (mut ratios, mut ta, mut tb) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        // Alternate which side goes first, so neither always follows the other.
        let (x, y) = if i % 2 == 0 { (time(&mut a), time(&mut b)) } else { (time(&mut b), time(&mut a)) };
        let (x, y) = if i % 2 == 0 { (x, y) } else { (y, x) };
        ratios.push(x.as_secs_f64() / y.as_secs_f64());
        ta.push(x);
        tb.push(y);
    }
    ratios.sort_by(f64::total_cmp);
    ta.sort();
    tb.sort();
    (ratios[pairs / 2], ta[pairs / 2], tb[pairs / 2])
}

fn micro(c: &mut Criterion) {
    let server = RedisServer::start();
    let client = LockClient::open(&server.url()).unwrap();
    let mut con = server.conn();
    let floor = Floor::new("redis-mutex", "floor", "bench");

    let mut g = c.benchmark_group("uncontended");
    g.bench_function("PING round trip", |b| b.iter(|| redis::cmd("PING").query::<()>(&mut con).unwrap()));
    g.bench_function("floor: acquire + release scripts by hand", |b| {
        b.iter(|| {
            let token = uuid::Uuid::new_v4().to_string();
            assert!(floor.attempt(&mut con, &token, true).unwrap());
            assert!(floor.release(&mut con, &token).unwrap());
        })
    });
    let m = client.mutex("crate");
    g.bench_function("redis-mutex: lock + drop", |b| b.iter(|| drop(m.lock().unwrap())));
    #[cfg(feature = "tls")]
    {
        let tls = Tls::start();
        let mut con = tls.ping_connection();
        g.bench_function("PING round trip over TLS", |b| b.iter(|| redis::cmd("PING").query::<()>(&mut con).unwrap()));
        let m = tls.client.mutex("crate");
        g.bench_function("redis-mutex over TLS: lock + drop", |b| b.iter(|| drop(m.lock().unwrap())));
    }
    g.finish();

    let mut g = c.benchmark_group("held");
    let _held = client.mutex("busy").lock().unwrap();
    let busy_floor = Floor::new("redis-mutex", "busy", "bench");
    g.bench_function("floor: acquire script on a held lock by hand", |b| {
        b.iter(|| assert!(!busy_floor.attempt(&mut con, "someone-else", false).unwrap()))
    });
    let busy = client.mutex("busy");
    g.bench_function("redis-mutex: try_lock on a held lock", |b| {
        b.iter(|| assert!(busy.try_lock().unwrap().is_none()))
    });
    g.finish();
}

/// The same pairs as [`micro`], interleaved.
fn interleaved_pairs() {
    let server = RedisServer::start();
    let client = LockClient::open(&server.url()).unwrap();
    let mut con = server.conn();
    let by_hand = Floor::new("redis-mutex", "floor", "bench");
    let pairs = std::env::var("MICRO_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let m = client.mutex("crate");
    let con = std::cell::RefCell::new(&mut con);
    let floor = || {
        let token = uuid::Uuid::new_v4().to_string();
        let mut con = con.borrow_mut();
        assert!(by_hand.attempt(&mut con, &token, true).unwrap());
        assert!(by_hand.release(&mut con, &token).unwrap());
    };
    let (ratio, ours, by_hand) = interleaved(pairs, 20, || drop(m.lock().unwrap()), floor);
    println!(
        "interleaved, {pairs} pairs of 20: lock + drop {ours:?} vs floor {by_hand:?} per iteration (medians); \
         median ratio {ratio:.3} (target ≤ 1.15)"
    );

    let _held = client.mutex("busy").lock().unwrap();
    let busy = client.mutex("busy");
    let busy_floor = Floor::new("redis-mutex", "busy", "bench");
    let floor = || assert!(!busy_floor.attempt(&mut con.borrow_mut(), "someone-else", false).unwrap());
    let (ratio, ours, by_hand) = interleaved(pairs, 20, || assert!(busy.try_lock().unwrap().is_none()), floor);
    println!(
        "interleaved, {pairs} pairs of 20: try_lock on a held lock {ours:?} vs floor {by_hand:?} per iteration \
         (medians); median ratio {ratio:.3} (target ≤ 1.15)"
    );
    let ping = || redis::cmd("PING").query::<()>(&mut **con.borrow_mut()).unwrap();
    let (_, p, _) = interleaved(pairs / 4, 20, ping, || {});
    println!("PING round trip in the same run: {p:?}");
}

/// A TLS-only server of its own and a client that trusts its CA.
#[cfg(feature = "tls")]
struct Tls {
    // Dropped before its server.
    client: LockClient,
    server: RedisServer,
}

#[cfg(feature = "tls")]
impl Tls {
    fn start() -> Tls {
        let server = RedisServer::builder().tls().start();
        let ca = std::fs::read(&server.tls().expect("a TLS server").ca_cert).unwrap();
        let client = LockClient::builder().tls_root_cert(ca).build(&server.url()).unwrap();
        Tls { client, server }
    }

    /// A connection of its own for PING, over TLS like the client's.
    fn ping_connection(&self) -> redis::Connection {
        let ca = std::fs::read(&self.server.tls().expect("a TLS server").ca_cert).unwrap();
        let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(ca) };
        redis::Client::build_with_tls(self.server.url(), certificates).unwrap().get_connection().unwrap()
    }
}

/// Uncontended lock + drop, and PING, over TLS against plain TCP, interleaved.
#[cfg(feature = "tls")]
fn tls_beside_plain(pairs: usize) {
    let plain = RedisServer::start();
    let client = LockClient::open(&plain.url()).unwrap();
    let tls = Tls::start();
    let (over_tcp, over_tls) = (client.mutex("crate"), tls.client.mutex("crate"));
    let (ratio, t, p) = interleaved(pairs, 20, || drop(over_tls.lock().unwrap()), || drop(over_tcp.lock().unwrap()));
    println!(
        "interleaved, {pairs} pairs of 20: lock + drop over TLS {t:?} vs plain TCP {p:?} per iteration (medians); \
         median ratio {ratio:.3} (target ≤ 1.3)"
    );
    let (mut tcp_con, mut tls_con) = (plain.client().get_connection().unwrap(), tls.ping_connection());
    let (ratio, t, p) = interleaved(
        pairs,
        20,
        || redis::cmd("PING").query::<()>(&mut tls_con).unwrap(),
        || redis::cmd("PING").query::<()>(&mut tcp_con).unwrap(),
    );
    println!("interleaved, {pairs} pairs of 20: PING over TLS {t:?} vs plain TCP {p:?}; median ratio {ratio:.3}");
}

criterion_group!(benches, micro);

fn main() {
    if std::env::var_os("MICRO_ONLY_INTERLEAVED").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    interleaved_pairs();
    #[cfg(feature = "tls")]
    tls_beside_plain(std::env::var("MICRO_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(200));
}
