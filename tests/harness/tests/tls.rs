//! Proves a TLS server comes up: it serves TLS only, with a certificate that a client
//! verifies against the generated CA (for 127.0.0.1), and with mutual TLS it refuses a
//! client without a certificate. The client here is `openssl s_client`, which the
//! harness needs for TLS anyway (it makes the certificates). A TLS cluster forms with
//! its bus and replication over TLS, and asks clients for a certificate when told to.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use redis_mutex_harness::{Cluster, RedisServer, TlsFiles};

/// Sends `PING` and `QUIT` over TLS to 127.0.0.1:`port`, verifying the server against
/// the CA (and its address), optionally with a client certificate. Returns what came
/// back and whether `s_client` succeeded.
fn ping_over_tls(server: &RedisServer, with_client_cert: bool) -> (String, bool) {
    let tls = server.tls().expect("a TLS server");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-verify_return_error", "-verify_ip", "127.0.0.1"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", server.port()))
        .arg("-CAfile")
        .arg(&tls.ca_cert);
    if with_client_cert {
        cmd.arg("-cert").arg(&tls.client_cert).arg("-key").arg(&tls.client_key);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("openssl runs");
    child.stdin.take().unwrap().write_all(b"PING\r\nQUIT\r\n").unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr), out.status.success())
}

#[test]
fn a_tls_server_answers_over_tls_with_a_certificate_the_ca_verifies() {
    let server = RedisServer::builder().tls().start();
    assert_eq!(server.url(), format!("rediss://127.0.0.1:{}/", server.port()));
    let (out, ok) = ping_over_tls(&server, false);
    assert!(ok && out.contains("+PONG"), "{out}");
    // No plaintext: the port speaks TLS only (the harness came in through the Unix socket).
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port())).unwrap();
    let answer = plain.get_connection_with_timeout(Duration::from_secs(5)).and_then(|mut con| {
        con.set_read_timeout(Some(Duration::from_secs(5)))?;
        redis::cmd("PING").query::<String>(&mut con)
    });
    assert!(answer.is_err(), "plaintext must not be served: {answer:?}");
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let server = RedisServer::builder().mutual_tls().start();
    let (out, ok) = ping_over_tls(&server, true);
    assert!(ok && out.contains("+PONG"), "with the client certificate: {out}");
    let (out, _) = ping_over_tls(&server, false);
    assert!(!out.contains("+PONG"), "without a client certificate: {out}");
}

#[test]
fn a_mutual_tls_cluster_forms_over_tls_and_serves_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::generate(dir.path()).unwrap();
    // Formed (slots, MEET, REPLICATE over the TLS bus), replicas in sync over TLS.
    let cluster = Cluster::start_with(2, 1, &RedisServer::builder().tls_with(files).mutual_tls());
    assert_eq!(cluster.nodes().len(), 4);
    for node in cluster.nodes() {
        assert!(node.port() < 55536, "the bus port (+10000) must fit: {}", node.port());
        assert_eq!(node.url(), format!("rediss://127.0.0.1:{}/", node.port()));
        let tls: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("tls-*").query(&mut node.conn()).unwrap();
        for setting in ["tls-cluster", "tls-replication", "tls-auth-clients"] {
            let at = tls.iter().position(|k| k == setting).unwrap_or_else(|| panic!("{setting}: {tls:?}"));
            assert_eq!(tls[at + 1], "yes", "{setting}");
        }
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut node.conn()).unwrap();
        assert!(info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:4"), "{info}");
    }
    // What the cluster tells clients (CLUSTER SLOTS) is the TLS port, and it speaks TLS only.
    let shards: Vec<Vec<redis::Value>> =
        redis::cmd("CLUSTER").arg("SLOTS").query(&mut cluster.nodes()[0].conn()).unwrap();
    assert_eq!(shards.len(), 2, "two masters, each with a range of slots: {shards:?}");
    for shard in shards {
        let master: Vec<redis::Value> = redis::from_redis_value(shard[2].clone()).unwrap();
        let port: u16 = redis::from_redis_value(master[1].clone()).unwrap();
        let node = cluster.nodes().iter().find(|n| n.port() == port).expect("a master's TLS port");
        let (out, ok) = ping_over_tls(node, true);
        assert!(ok && out.contains("+PONG"), "with the client certificate: {out}");
        let (out, _) = ping_over_tls(node, false);
        assert!(!out.contains("+PONG"), "without a client certificate: {out}");
    }
}
