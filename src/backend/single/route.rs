//! Where each lock's requests go: the one server's pool, or, on a cluster, the pool of
//! the master that serves the lock's slot (`backend::cluster`). The protocol above it
//! (`Server`) is the same either way: every request concerns one lock, whose keys
//! share a hash tag, so it runs on one server.

use std::sync::Arc;
use std::time::Instant;

use redis::{Connection, RedisError};

use super::connection::Pool;
use crate::backend::Renewal;
use crate::backend::cluster::Nodes;
use crate::error::Result;

pub(crate) enum Route {
    /// One server (alone, or the master Sentinel names).
    One(Box<Pool>),
    /// A cluster's masters, by slot.
    Cluster(Arc<Nodes>),
}

impl Route {
    /// Runs `op` on a connection to the server that holds `key` (`key` also names the
    /// lock in a `WrongType` error).
    pub fn on_key<T>(
        &self,
        key: &str,
        deadline: Option<Instant>,
        op: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        match self {
            Route::One(pool) => pool.with_conn(Some(key), deadline, op),
            Route::Cluster(nodes) => nodes.on_key(key, deadline, op),
        }
    }

    /// Runs a pipeline about several locks on the server that holds `key` (one of
    /// them). No redirect is followed for the whole: each item's error says whether it
    /// moved.
    pub fn on_batch<T>(
        &self,
        key: &str,
        op: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        match self {
            Route::One(pool) => pool.with_conn(None, None, op),
            Route::Cluster(nodes) => nodes.on_server_of(key, op),
        }
    }

    /// The indexes of `items`, grouped by the server that holds them.
    pub fn by_server(&self, items: &[Renewal<'_>]) -> Result<Vec<Vec<usize>>> {
        match self {
            Route::One(_) => Ok(if items.is_empty() { Vec::new() } else { vec![(0..items.len()).collect()] }),
            Route::Cluster(nodes) => {
                let keys: Vec<&str> = items.iter().map(|(k, ..)| k.key.as_str()).collect();
                nodes.by_master(&keys, None)
            }
        }
    }
}
