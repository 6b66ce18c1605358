//! Redis Cluster: the single-server protocol (`single/`) on each lock's master. All of
//! one lock's keys share the hash tag `{name}`, so every script runs on one node: the
//! master of that slot, found in a slot map (`CLUSTER SLOTS`) kept per client and
//! corrected by `MOVED` (`nodes`); `ASK` during a migration is followed once. Renewals
//! go in one pipeline per master. Wake-ups are sharded (`shards`): the scripts
//! `SPUBLISH` to a per-lock client channel in the lock's slot, which the client
//! subscribes on that slot's master while it waits for the lock (`node`: a subscriber
//! thread and connection per node, `link`: its socket). Over TLS they stay classic:
//! `PUBLISH`, which a cluster delivers to every node, and the single server's notifier
//! subscribed on any one master (the next one when that fails).

mod link;
mod node;
mod nodes;
mod shards;
mod slots;

use self::nodes::NodeSettings;
pub(crate) use self::nodes::Nodes;
pub(crate) use self::shards::{ShardConfig, Shards};
use super::Options;
use crate::error::{Error, Result};
use crate::keys::redact_url;

/// The nodes of the cluster that `seeds` (URLs of any of its nodes) belong to. Checks
/// the URLs, no I/O: the slot map is asked for on first use (or by the build's check).
pub(crate) fn open(seeds: &[String], options: &Options) -> Result<Nodes> {
    let Some(first) = seeds.first() else {
        return Err(Error::InvalidOption { option: "seeds", reason: "at least one node URL is needed".into() });
    };
    let mut addrs = Vec::with_capacity(seeds.len());
    let mut template = None;
    for url in seeds {
        // With the builder's TLS certificates for `rediss://` seeds: every node inherits them.
        let client = options.tls.client(url)?;
        let info = client.get_connection_info();
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) | redis::ConnectionAddr::TcpTls { host: h, port: p, .. } => {
                (h.clone(), *p)
            }
            _ => {
                return Err(Error::InvalidUrl {
                    url: redact_url(url),
                    reason: "a cluster node is reached over TCP (redis:// or rediss://)".into(),
                });
            }
        };
        if info.redis_settings().db() != 0 {
            return Err(Error::InvalidUrl { url: redact_url(url), reason: "a cluster has database 0 only".into() });
        }
        addrs.push(addr);
        if url == first {
            template = Some(info.clone());
        }
    }
    let template = template.unwrap_or_else(|| unreachable!("the first seed was parsed"));
    Ok(Nodes::new(NodeSettings {
        template,
        seeds: addrs,
        name: format!("redis-mutex:{}", options.client_id),
        connect_timeout: options.connect_timeout,
        read_timeout: options.read_timeout,
        write_timeout: options.write_timeout,
        pool_max_size: options.pool_max_size,
        pool_timeout: options.pool_timeout,
    }))
}
