//! Free ports on 127.0.0.1.

use std::io;
use std::net::TcpListener;

/// Cluster nodes listen on `port + 10000` too (the cluster bus), so their ports stay
/// below `65536 - 10000`.
pub(crate) const CLUSTER_PORT_LIMIT: u16 = 55536;

/// A port that was free on 127.0.0.1 a moment ago.
pub(crate) fn free_port() -> io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?.local_addr().map(|a| a.port())
}

/// A port below [`CLUSTER_PORT_LIMIT`] that was free a moment ago, and whose bus port
/// (`+ 10000`) was free too.
pub(crate) fn free_cluster_port() -> io::Result<u16> {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if port < CLUSTER_PORT_LIMIT && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, "no free port below 55536 with a free bus port (+10000)"))
}
