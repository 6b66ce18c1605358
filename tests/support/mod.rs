//! Shared helpers for integration tests.
//!
//! Each integration-test binary includes this module with `mod support;` and
//! uses only a subset of it, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod server;

pub use server::RedisServer;
