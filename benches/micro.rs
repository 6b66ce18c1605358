//! Micro-benchmarks: the crate's uncontended `lock` + drop and `try_lock` on a held lock,
//! each beside its floor — the same Lua scripts sent by hand over one held connection —
//! and the loopback PING round trip, all against one throwaway loopback redis-server.
//!
//! `cargo bench --bench micro`. Target: each crate figure ≤ 1.15× its floor.
//!
//! Criterion measures each function in turn, and on a shared VM sequential runs drift by
//! ±15%; so after criterion, each pair is also measured *interleaved* (alternating
//! blocks of crate and floor iterations) and the median of the per-pair ratios is
//! printed: drift then affects both sides of each ratio alike.

use criterion::{Criterion, criterion_group};
use redis_mutex::LockClient;
use redis_mutex_harness::RedisServer;

use std::time::{Duration, Instant};

const ACQUIRE: &str = concat!(
    include_str!("../src/lua/queue.lua"),
    include_str!("../src/lua/fence.lua"),
    include_str!("../src/lua/acquire.lua")
);
const RELEASE: &str = concat!(
    include_str!("../src/lua/queue.lua"),
    include_str!("../src/lua/fence.lua"),
    include_str!("../src/lua/release.lua")
);

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
    let (acquire, release) = (redis::Script::new(ACQUIRE), redis::Script::new(RELEASE));
    let (key, fence) = ("redis-mutex:{floor}", "redis-mutex:{floor}:fence");

    let mut g = c.benchmark_group("uncontended");
    g.bench_function("PING round trip", |b| b.iter(|| redis::cmd("PING").query::<()>(&mut con).unwrap()));
    g.bench_function("floor: acquire + release scripts by hand", |b| {
        b.iter(|| {
            let token = uuid::Uuid::new_v4().to_string();
            let _: (i64, i64) = acquire
                .key(key)
                .key(fence)
                .arg(&token)
                .arg(30_000)
                .arg("0")
                .arg("bench")
                .arg("1")
                .invoke(&mut con)
                .unwrap();
            let _: (i64, i64) = release
                .key(key)
                .key(fence)
                .arg(&token)
                .arg("bench")
                .arg("")
                .arg(0)
                .arg("0")
                .arg(8)
                .arg(1000)
                .arg(30_000)
                .arg(0)
                .invoke(&mut con)
                .unwrap();
        })
    });
    let m = client.mutex("crate");
    g.bench_function("redis-mutex: lock + drop", |b| b.iter(|| drop(m.lock().unwrap())));
    g.finish();

    let mut g = c.benchmark_group("held");
    let _held = client.mutex("busy").lock().unwrap();
    let busy_key = "redis-mutex:{busy}";
    g.bench_function("floor: acquire script on a held lock by hand", |b| {
        b.iter(|| {
            let r: (i64, i64) = acquire
                .key(busy_key)
                .key("redis-mutex:{busy}:fence")
                .arg("someone-else")
                .arg(30_000)
                .arg("0")
                .arg("bench")
                .arg("0")
                .invoke(&mut con)
                .unwrap();
            assert_eq!(r.0, 0);
        })
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
    let (acquire, release) = (redis::Script::new(ACQUIRE), redis::Script::new(RELEASE));
    let (key, fence) = ("redis-mutex:{floor}", "redis-mutex:{floor}:fence");
    let pairs = std::env::var("MICRO_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let m = client.mutex("crate");
    let con = std::cell::RefCell::new(&mut con);
    let floor = || {
        let token = uuid::Uuid::new_v4().to_string();
        let mut con = con.borrow_mut();
        let acquired: (i64, i64) = acquire
            .key(key)
            .key(fence)
            .arg(&token)
            .arg(30_000)
            .arg("0")
            .arg("bench")
            .arg("1")
            .invoke(&mut **con)
            .unwrap();
        assert_eq!(acquired.0, 1);
        let released: (i64, i64) = release
            .key(key)
            .key(fence)
            .arg(&token)
            .arg("bench")
            .arg("")
            .arg(0)
            .arg("0")
            .arg(8)
            .arg(1000)
            .arg(30_000)
            .arg(0)
            .invoke(&mut **con)
            .unwrap();
        assert_eq!(released.0, 1);
    };
    let (ratio, ours, by_hand) = interleaved(pairs, 20, || drop(m.lock().unwrap()), floor);
    println!(
        "interleaved, {pairs} pairs of 20: lock + drop {ours:?} vs floor {by_hand:?} per iteration (medians); \
         median ratio {ratio:.3} (target ≤ 1.15)"
    );

    let _held = client.mutex("busy").lock().unwrap();
    let busy = client.mutex("busy");
    let floor = || {
        let r: (i64, i64) = acquire
            .key("redis-mutex:{busy}")
            .key("redis-mutex:{busy}:fence")
            .arg("someone-else")
            .arg(30_000)
            .arg("0")
            .arg("bench")
            .arg("0")
            .invoke(&mut **con.borrow_mut())
            .unwrap();
        assert_eq!(r.0, 0);
    };
    let (ratio, ours, by_hand) = interleaved(pairs, 20, || assert!(busy.try_lock().unwrap().is_none()), floor);
    println!(
        "interleaved, {pairs} pairs of 20: try_lock on a held lock {ours:?} vs floor {by_hand:?} per iteration \
         (medians); median ratio {ratio:.3} (target ≤ 1.15)"
    );
    let ping = || redis::cmd("PING").query::<()>(&mut **con.borrow_mut()).unwrap();
    let (_, p, _) = interleaved(pairs / 4, 20, ping, || {});
    println!("PING round trip in the same run: {p:?}");
}

criterion_group!(benches, micro);

fn main() {
    if std::env::var_os("MICRO_ONLY_INTERLEAVED").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    interleaved_pairs();
}
