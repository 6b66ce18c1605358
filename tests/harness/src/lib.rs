//! The one `redis-server` launcher of redis-mutex's tests, benchmarks and examples,
//! and the small helpers they share.
//!
//! Modelled on redis-rs's `redis-test` crate: every server is its own `redis-server`
//! child process on a free port of 127.0.0.1, with its working directory and log file
//! in a private temporary directory; startup waits (retrying on connection refusal)
//! until the server answers `PING` *and* is our own child (its `process_id` is checked,
//! so another process that won the port race is never mistaken for ours); the log is
//! printed when a server is dropped during a panic; the process is killed and reaped
//! on drop. No `redis-server` on `PATH` is an error that says how to install it.
//!
//! - [`RedisServer`]: one server; [`RedisServer::builder`] for extra arguments, a
//!   given directory, or TLS ([`ServerBuilder::tls`]: certificates made with
//!   `openssl`, TLS port only).
//! - [`Masters`]: independent masters (for Redlock).
//! - [`Replicated`]: a master and its replicas (for `wait_replicas`).
//! - [`SentinelGroup`]: a master, its replicas and the Sentinels that watch it.
//! - [`Cluster`]: a Redis Cluster of masters with replicas, every slot assigned
//!   (over TLS with [`Cluster::start_with`] and [`ServerBuilder::tls_with`]).
//! - [`XorShift`]: the deterministic generator of tests and benchmarks;
//!   [`process_cpu`] and [`wall_clock_ns`]: what a measurement asks the host.
//! - [`bench`](mod@bench): the contention measurement shared by `benches/handoff.rs` and the
//!   peer benchmark (`benches/peers`).
//!
//! Groups of servers panic when they cannot start (they serve tests); a single server
//! has [`ServerBuilder::try_start`] for programs that report errors themselves.

#![warn(missing_docs)]

pub mod bench;
mod builder;
mod cluster;
mod group;
mod launch;
mod masters;
mod ports;
mod replicated;
mod rng;
mod sentinel;
mod server;
mod sys;
mod tls;

pub use builder::{ServerBuilder, StartError};
pub use cluster::Cluster;
pub use masters::Masters;
pub use replicated::Replicated;
pub use rng::XorShift;
pub use sentinel::SentinelGroup;
pub use server::RedisServer;
pub use sys::{process_cpu, process_stopped, wall_clock_ns};
pub use tls::TlsFiles;
