//! Shared helpers for integration tests.
//!
//! Each integration-test binary includes this module with `mod support;` and
//! uses only a subset of it, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod server;

pub use server::RedisServer;

use std::time::{Duration, Instant};

/// Polls `cond` every few milliseconds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client built from `builder` whose notifier is subscribed, so that waiters start on
/// the pub/sub path.
pub fn connected_with(server: &RedisServer, builder: redis_mutex::LockClientBuilder) -> redis_mutex::LockClient {
    let client = builder.build(&server.url()).expect("client connects");
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    client
}
