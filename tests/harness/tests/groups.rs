//! Proves the launchers of server groups bring them up: independent masters (kept in
//! subdirectories of a given directory), a master
//! whose replicas acknowledge its writes, a Sentinel group that names its master (and,
//! started from a builder, keeps its files and tells when it is whole again after a
//! failover), a cluster in state `ok`.

use std::time::{Duration, Instant};

use redis_mutex_harness::{Cluster, Masters, RedisServer, Replicated, SentinelGroup};

fn ping(con: &mut redis::Connection) -> String {
    redis::cmd("PING").query(con).unwrap()
}

#[test]
fn independent_masters_answer_on_their_own_ports_and_share_nothing() {
    let masters = Masters::start(3);
    let urls = masters.urls();
    assert_eq!(urls.len(), 3);
    let mut ports: Vec<u16> = masters.iter().map(|m| m.port()).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3, "{urls:?}");
    redis::cmd("SET").arg("k").arg("first").query::<()>(&mut masters[0].conn()).unwrap();
    for m in &masters[1..] {
        assert_eq!(ping(&mut m.conn()), "PONG");
        let info = m.info("replication");
        assert!(info.contains("role:master") && info.contains("connected_slaves:0"), "{info}");
        let value: Option<String> = redis::cmd("GET").arg("k").query(&mut m.conn()).unwrap();
        assert_eq!(value, None, "a write to one master must not reach another");
    }
}

#[test]
fn independent_masters_from_a_builder_run_and_stay_in_subdirectories_of_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let masters = Masters::start_with(3, &RedisServer::builder().dir(dir.path()).args(&["--appendonly", "yes"]));
    for (i, m) in masters.iter().enumerate() {
        assert_eq!(m.dir(), dir.path().join(format!("master-{i}")), "master {i}");
        assert!(m.info("persistence").contains("aof_enabled:1"), "the builder's arguments");
    }
    drop(masters);
    assert!(dir.path().join("master-2").join("redis.log").is_file(), "a given directory stays");
}

#[test]
fn a_replicated_master_s_writes_reach_its_replicas_and_are_acknowledged() {
    let group = Replicated::start(2);
    let mut con = group.master().conn();
    redis::cmd("SET").arg("k").arg("v").query::<()>(&mut con).unwrap();
    let acks: u32 = redis::cmd("WAIT").arg(2).arg(5000).query(&mut con).unwrap();
    assert_eq!(acks, 2);
    for r in group.replicas() {
        let value: Option<String> = redis::cmd("GET").arg("k").query(&mut r.conn()).unwrap();
        assert_eq!(value.as_deref(), Some("v"), "replica on port {}", r.port());
    }
    group.replicas()[0].pause();
    redis::cmd("SET").arg("k").arg("w").query::<()>(&mut con).unwrap();
    let acks: u32 = redis::cmd("WAIT").arg(2).arg(200).query(&mut con).unwrap();
    assert_eq!(acks, 1, "a paused replica does not acknowledge");
    group.replicas()[0].resume();
    group.wait_until_in_sync();
}

#[test]
fn a_sentinel_group_names_its_master() {
    let group = SentinelGroup::start("harness-master", 1, 3);
    assert_eq!(group.sentinels().len(), 3);
    for sentinel in group.sentinels() {
        let addr: (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("harness-master")
            .query(&mut sentinel.conn())
            .unwrap();
        assert_eq!(addr, ("127.0.0.1".to_owned(), group.master().port()));
    }
    assert_eq!(group.master_addr(), Some(("127.0.0.1".to_owned(), group.master().port())));
    let info = group.replicas()[0].info("replication");
    assert!(info.contains(&format!("master_port:{}", group.master().port())), "{info}");
}

#[test]
fn a_sentinel_group_from_a_builder_keeps_its_files_and_is_whole_again_after_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let builder = RedisServer::builder().dir(dir.path()).args(&["--appendonly", "yes"]);
    let group = SentinelGroup::start_with("harness-master", 1, 3, &builder);
    for server in ["master", "replica-1", "sentinel-1", "sentinel-2", "sentinel-3"] {
        assert!(dir.path().join(server).join("redis.log").is_file(), "{server} logs in its subdirectory");
    }
    assert!(group.replicas()[0].info("persistence").contains("aof_enabled:1"), "the builder's arguments");
    let old = group.master().port();
    assert_eq!(group.formed(), Ok(old));
    assert_eq!(group.current_master().map(RedisServer::port), Some(old));

    redis::cmd("SENTINEL").arg("FAILOVER").arg("harness-master").query::<()>(&mut group.sentinels()[0].conn()).unwrap();
    // The Sentinels name the replica within a second or so, but the old master is made
    // its replica only about 10 s later: until then the group is not whole.
    let t = Instant::now();
    let new = loop {
        match group.formed() {
            Ok(port) if port != old => break port,
            _ if t.elapsed() > Duration::from_secs(60) => panic!("not whole again: {:?}", group.formed()),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(new, group.replicas()[0].port());
    assert_eq!(group.current_master().map(RedisServer::port), Some(new));
    assert!(group.master().info("replication").contains(&format!("master_port:{new}")));
    drop(group);
    assert!(dir.path().join("master").join("redis.log").is_file(), "a given directory stays");
}

#[test]
fn a_cluster_answers_cluster_info_with_state_ok() {
    let cluster = Cluster::start(3, 1);
    assert_eq!(cluster.nodes().len(), 6);
    for node in cluster.nodes() {
        assert!(node.port() < 55536, "the bus port (+10000) must fit: {}", node.port());
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut node.conn()).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:6"), "{info}");
    }
    let shards: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut cluster.nodes()[0].conn()).unwrap();
    assert_eq!(shards.len(), 3, "three masters, each with a range of slots");
}
