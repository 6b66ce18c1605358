//! Micro-benchmarks: the crate's uncontended `lock` + drop and `try_lock` on a held lock,
//! each beside its floor — the same Lua scripts sent by hand over one held connection —
//! and the loopback PING round trip, all against one throwaway loopback redis-server.
//!
//! `cargo bench --bench micro`. Target: each crate figure ≤ 1.15× its floor.

use criterion::{Criterion, criterion_group, criterion_main};
use redis_mutex::LockClient;

mod common;

const ACQUIRE: &str = include_str!("../src/lua/acquire.lua");
const RELEASE: &str = include_str!("../src/lua/release.lua");

fn micro(c: &mut Criterion) {
    let server = common::start_server();
    let client = LockClient::open(&server.url).unwrap();
    let mut con = redis::Client::open(server.url.as_str()).unwrap().get_connection().unwrap();
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

criterion_group!(benches, micro);
criterion_main!(benches);
