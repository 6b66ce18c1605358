//! [`Masters`]: independent masters, as Redlock uses them.

use std::ops::{Deref, DerefMut};

use crate::{RedisServer, ServerBuilder};

/// `n` independent `redis-server`s (no replication between them), each on its own
/// port and directory. Derefs to `[RedisServer]`: stop, pause or restart any one.
///
/// ```no_run
/// let mut masters = redis_mutex_harness::Masters::start(5);
/// let urls = masters.urls(); // for a client over all of them
/// masters[0].stop();         // one master down, a majority left
/// ```
pub struct Masters {
    servers: Vec<RedisServer>,
}

impl Masters {
    /// Starts `n` servers with the default settings. Panics as
    /// [`RedisServer::start`] does.
    pub fn start(n: usize) -> Masters {
        Self::start_with(n, &ServerBuilder::default())
    }

    /// Starts `n` servers from `builder` (e.g. with AOF, or TLS), each in its own
    /// temporary directory; when `builder` names a directory, master `i` runs in its
    /// subdirectory `master-i`, which stays after the masters are dropped (with its
    /// log): a program's post-mortem keeps every log, as
    /// [`Cluster::start_with`](crate::Cluster::start_with) does. Panics as
    /// [`ServerBuilder::start`] does, or when a subdirectory cannot be created.
    pub fn start_with(n: usize, builder: &ServerBuilder) -> Masters {
        Masters { servers: (0..n).map(|i| builder.in_subdir(&format!("master-{i}")).start()).collect() }
    }

    /// Every server's [`url`](RedisServer::url), in order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }
}

impl Deref for Masters {
    type Target = [RedisServer];

    fn deref(&self) -> &[RedisServer] {
        &self.servers
    }
}

impl DerefMut for Masters {
    fn deref_mut(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }
}
