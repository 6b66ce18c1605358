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
    /// temporary directory. Panics if the builder names a directory (they cannot
    /// share one), or as [`ServerBuilder::start`] does.
    pub fn start_with(n: usize, builder: &ServerBuilder) -> Masters {
        assert!(!builder.has_dir(), "independent masters need a directory each: do not set ServerBuilder::dir");
        Masters { servers: (0..n).map(|_| builder.start()).collect() }
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
