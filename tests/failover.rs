//! A server that is another one now: a restart (its `run_id` changes), and a master
//! found through Sentinel that fails over (gracefully, and by `kill -9`), with clients
//! locking all the while. Each test starts its own servers.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use redis_mutex::{Error, LockClient, MutexOptions};
use redis_mutex_harness::SentinelGroup;
use support::{RedisServer, connected_with, poll_until, wait_until};

/// A restart without persistence forgets every lock. The notifier reconnects, finds
/// another `run_id`, and every held lock is checked at once: a guard whose lease is a
/// minute (next renewal in 20 s) and one that is not renewed at all are both marked
/// lost within seconds, not at their next renewal or use.
#[test]
fn a_restart_is_noticed_and_every_held_lock_checked_at_once() {
    let mut server = RedisServer::start();
    let client = connected_with(&server, LockClient::builder());
    let renewed = client.mutex_with("renewed", MutexOptions::default().lease(Duration::from_secs(60)));
    let unrenewed =
        client.mutex_with("unrenewed", MutexOptions::default().lease(Duration::from_secs(60)).auto_renew(false));
    let g1 = renewed.lock().unwrap();
    let g2 = unrenewed.lock().unwrap();
    let before = client.stats();
    server.restart();
    let t = Instant::now();
    let both_lost = poll_until(Duration::from_secs(10), || g1.is_lost() && g2.is_lost());
    assert!(
        both_lost,
        "after the restart: renewed lost {}, unrenewed lost {} (stats {:?})",
        g1.is_lost(),
        g2.is_lost(),
        client.stats().since(&before)
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    eprintln!("both guards marked lost {:?} after the restart", t.elapsed());
    assert!(matches!(g1.unlock(), Err(Error::LockLost { .. })));
    assert!(matches!(g2.unlock(), Err(Error::LockLost { .. })));
    // The locks are free for the taking.
    assert!(renewed.try_lock().unwrap().is_some());
}

/// A guard whose lock survives the restart (AOF) is confirmed at once, not lost.
#[test]
fn a_lock_that_survives_a_restart_is_confirmed_not_lost() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let client = connected_with(&server, LockClient::builder());
    let m = client.mutex_with("kept", MutexOptions::default().lease(Duration::from_secs(60)));
    let g = m.lock().unwrap();
    let before = client.stats();
    server.restart();
    let renewed = poll_until(Duration::from_secs(10), || client.stats().since(&before).renewals >= 1);
    assert!(renewed, "renewed at once after the restart: {:?}", client.stats().since(&before));
    assert!(!g.is_lost());
    g.unlock().unwrap();
}

fn sentinel_client(group: &SentinelGroup, builder: redis_mutex::LockClientBuilder) -> LockClient {
    let client = builder.build_sentinel(group.master_name(), &group.sentinel_urls()).expect("client connects");
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    client
}

#[test]
fn the_master_is_found_through_sentinel_and_the_lock_lives_there() {
    let group = SentinelGroup::start("locks", 1, 3);
    let client = sentinel_client(&group, LockClient::builder().key_prefix("s"));
    let m = client.mutex("job");
    let g = m.lock().unwrap();
    let mut master = group.master().conn();
    let owner: Option<String> = redis::cmd("HGET").arg("s:{job}").arg("o").query(&mut master).unwrap();
    assert_eq!(owner.as_deref(), Some(g.token()));
    g.unlock().unwrap();
    assert!(format!("{client:?}").contains("locks"), "{client:?}");
}

#[test]
fn a_stopped_sentinel_is_passed_over_within_the_timeouts() {
    let group = SentinelGroup::start("locks", 1, 3);
    group.sentinels()[0].pause();
    let t = Instant::now();
    let client = LockClient::builder()
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_millis(500))
        .build_sentinel(group.master_name(), &group.sentinel_urls());
    let took = t.elapsed();
    group.sentinels()[0].resume();
    let client = client.expect("the other Sentinels answer");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(client.mutex("x").try_lock().unwrap().is_some());
}

#[test]
fn no_sentinel_answering_is_a_connection_error_naming_each() {
    let group = SentinelGroup::start("locks", 0, 1);
    let urls = [group.sentinel_urls()[0].clone(), "redis://127.0.0.1:1/".to_owned()];
    let err = LockClient::builder().build_sentinel("no-such-master", &urls).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(text.contains("no-such-master") && text.contains("127.0.0.1:1"), "{text}");
    let err = LockClient::builder().build_sentinel::<&str>("locks", &[]).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { option: "sentinels", .. }), "{err:?}");
}

#[test]
fn the_master_password_never_shows() {
    let builder = LockClient::builder().master_password("hunter2-secret");
    assert!(!format!("{builder:?}").contains("hunter2"), "{builder:?}");
    let err = builder.build_sentinel("m", &["redis://:sentinel-secret@127.0.0.1:1/"]).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2") && !text.contains("sentinel-secret"), "{text}");
}

/// What one critical section of the load saw.
struct Section {
    start: Instant,
    end: Instant,
    /// The guard said it had lost the lock (marked lost, or `unlock` said so).
    lost: bool,
}

/// Clients × threads locking one lock in a loop until `stop`, each section checked
/// against the others in the end: sections that overlap must have been told lost.
struct Load {
    stop: Arc<AtomicBool>,
    sections: Arc<StdMutex<Vec<Section>>>,
    /// Bumped inside each section with a read, a pause and a write: a lost update
    /// shows overlapping sections.
    counter: Arc<AtomicU64>,
    errors: Arc<StdMutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(clients: &[LockClient], per_client: usize, options: MutexOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sections = Arc::new(StdMutex::new(Vec::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(StdMutex::new(Vec::new()));
        let mut threads = Vec::new();
        for client in clients {
            for _ in 0..per_client {
                let m = client.mutex_with("shared", options.clone());
                let (stop, sections, counter, errors) =
                    (stop.clone(), sections.clone(), counter.clone(), errors.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let g = match m.try_lock_for(Duration::from_secs(2)) {
                            Ok(Some(g)) => g,
                            Ok(None) => continue,
                            Err(e) => {
                                errors.lock().unwrap().push(e.to_string());
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        };
                        let start = Instant::now();
                        let seen = counter.load(Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(300));
                        counter.store(seen + 1, Ordering::SeqCst);
                        let end = Instant::now();
                        let lost = g.is_lost() | matches!(g.unlock(), Err(Error::LockLost { .. }));
                        sections.lock().unwrap().push(Section { start, end, lost });
                    }
                }));
            }
        }
        Load { stop, sections, counter, errors, threads }
    }

    fn acquisitions(&self) -> usize {
        self.sections.lock().unwrap().len()
    }

    /// Stops the threads; returns (sections, sections lost, overlaps of sections
    /// neither of which was told lost, errors).
    fn finish(self) -> (usize, usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let mut s = std::mem::take(&mut *self.sections.lock().unwrap());
        s.sort_by_key(|x| x.start);
        let mut overlaps = 0;
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                if s[j].start >= s[i].end {
                    break;
                }
                if !s[i].lost && !s[j].lost {
                    overlaps += 1;
                }
            }
        }
        let lost = s.iter().filter(|x| x.lost).count();
        // The counter rises by one per section unless two overlapped.
        let counted = self.counter.load(Ordering::SeqCst) as usize;
        assert!(counted <= s.len());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (s.len(), lost, overlaps + (s.len() - counted).saturating_sub(lost), errors)
    }
}

fn failover_under_load(kill: bool, options: MutexOptions) -> usize {
    let mut group = SentinelGroup::start("locks", 1, 3);
    let builder =
        || LockClient::builder().read_timeout(Duration::from_millis(500)).outage_tolerance(Duration::from_secs(30));
    let clients = [sentinel_client(&group, builder()), sentinel_client(&group, builder())];
    let fenced = clients[0].mutex_with("fenced", MutexOptions::default().fencing(true));
    let before_token = fenced.lock().unwrap().fencing_token().unwrap();
    let load = Load::start(&clients, 8, options.lease(Duration::from_secs(5)));
    wait_until(Duration::from_secs(10), "the load to start", || load.acquisitions() >= 50);
    let old = group.master_addr().unwrap();
    let at_fault = load.acquisitions();
    let at = Instant::now();
    if kill {
        group.master_mut().stop();
    } else {
        let mut sentinel = group.sentinels()[0].conn();
        redis::cmd("SENTINEL").arg("FAILOVER").arg("locks").query::<()>(&mut sentinel).unwrap();
    }
    // Sections that were running at the fault end (and are counted) first: the third
    // one after it was acquired after the fault.
    let mut resumed = None;
    let mut named = None;
    let limit = Duration::from_secs(30);
    while (resumed.is_none() || named.is_none()) && at.elapsed() < limit {
        if resumed.is_none() && load.acquisitions() >= at_fault + 3 {
            resumed = Some(at.elapsed());
        }
        if named.is_none() && group.master_addr().is_some_and(|a| a != old) {
            named = Some(at.elapsed());
            if kill {
                // Back, it is made a replica of the new master (acknowledgements need one).
                group.master_mut().restart();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (Some(resumed), Some(named)) = (resumed, named) else {
        panic!(
            "within {limit:?}: acquisitions resumed after {resumed:?}, the Sentinels named a new master after {named:?}"
        )
    };
    // Waiters go on on the new master, in this process, without a restart.
    let before = load.acquisitions();
    wait_until(Duration::from_secs(30), "acquisitions on the new master", || load.acquisitions() >= before + 50);
    eprintln!(
        "{}: the Sentinels named a new master {named:?} after it, acquisitions resumed {resumed:?} after it",
        if kill { "kill -9 of the master" } else { "SENTINEL FAILOVER" },
    );
    let (sections, lost, overlaps, errors) = load.finish();
    eprintln!("{sections} sections, {lost} told lost, {} errors (e.g. {:?})", errors.len(), errors.first());
    assert_eq!(overlaps, 0, "sections overlapped without being told lost");
    // The new master's counter is the replica's copy (stale, or gone): tokens still rise.
    let after_token = fenced.lock().unwrap().fencing_token().unwrap();
    assert!(after_token > before_token, "fencing token went from {before_token} to {after_token}");
    for c in &clients {
        assert!(c.is_notifier_connected() || poll_until(Duration::from_secs(10), || c.is_notifier_connected()));
    }
    lost
}

#[test]
fn a_graceful_failover_keeps_exclusion_and_waiters_resume() {
    failover_under_load(false, MutexOptions::default());
}

#[test]
fn a_killed_master_fails_over_and_waiters_resume() {
    failover_under_load(true, MutexOptions::default());
}

/// Acquisitions acknowledged by the replica survive the master's `kill -9`: no guard
/// is lost (without `wait_replicas` one may be: replication is asynchronous).
#[test]
fn with_wait_replicas_no_guard_is_lost_to_a_killed_master() {
    let lost = failover_under_load(true, MutexOptions::default().wait_replicas(1, Duration::from_millis(500)));
    assert_eq!(lost, 0, "guards acknowledged by the replica were lost in the failover");
}

/// The README's ACLs: a Sentinel user that may only ask for the master and hear of
/// switches, and the locker user (README "Redis permissions" plus `+role`) on every
/// data server (ACLs are not replicated). The client finds the master, locks, and
/// follows a failover with nothing more.
#[test]
fn sentinel_and_master_credentials_with_the_readme_acls() {
    const PW: &str = "acl-Pa55";
    let group = SentinelGroup::start("locks", 1, 3);
    let sentinel_rules =
        ["on", "resetchannels", "&+switch-master", "-@all", "+sentinel|get-master-addr-by-name", "+subscribe", "+ping"];
    for s in group.sentinels() {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("watcher").arg(format!(">{PW}")).arg(&sentinel_rules[..]);
        cmd.query::<()>(&mut s.admin_conn()).expect("Sentinel ACL");
    }
    let locker = "on resetkeys ~redis-mutex:* resetchannels &redis-mutex:* -@all +ping +select +client|setname +info \
                  +evalsha +script|load +subscribe +hmget +hset +del +pexpire +pttl +time \
                  +get +set +publish +type +role";
    for server in std::iter::once(group.master()).chain(group.replicas()) {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("locker").arg(format!(">{PW}")).arg(locker.split(' ').collect::<Vec<_>>());
        cmd.query::<()>(&mut server.admin_conn()).expect("master ACL");
    }
    let urls: Vec<String> =
        group.sentinels().iter().map(|s| format!("redis://watcher:{PW}@127.0.0.1:{}/", s.port())).collect();
    let client =
        LockClient::builder().master_username("locker").master_password(PW).build_sentinel("locks", &urls).unwrap();
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    let m = client.mutex("job");
    m.lock().unwrap().unlock().unwrap();
    let wrong = LockClient::builder().master_username("locker").master_password("nope").build_sentinel("locks", &urls);
    assert!(matches!(wrong, Err(Error::Auth(_))), "{wrong:?}");
    let old = group.master_addr().unwrap();
    let t = Instant::now();
    redis::cmd("SENTINEL").arg("FAILOVER").arg("locks").query::<()>(&mut group.sentinels()[0].conn()).unwrap();
    wait_until(Duration::from_secs(30), "the failover", || group.master_addr().is_some_and(|a| a != old));
    // Until the old master is told to replicate it still takes writes (Sentinel's
    // window, not this crate's): a lock taken there is lost and its guard told so.
    // (Demoting it drops its clients: a reset connection is "not yet".)
    wait_until(Duration::from_secs(30), "the old master to be demoted", || {
        let role = group
            .master()
            .try_admin_conn(Duration::from_secs(1))
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query::<String>(&mut c));
        role.is_ok_and(|info| info.contains("role:slave"))
    });
    eprintln!("failover done {:?} after SENTINEL FAILOVER", t.elapsed());
    let t = Instant::now();
    let g = m.try_lock_for(Duration::from_secs(20)).unwrap().expect("locks on the new master");
    eprintln!("locked on the new master {:?} after the old one was demoted", t.elapsed());
    let mut new_master = group.replicas()[0].conn();
    let owner: Option<String> = redis::cmd("HGET").arg("redis-mutex:{job}").arg("o").query(&mut new_master).unwrap();
    assert_eq!(owner.as_deref(), Some(g.token()), "held on the new master");
}

/// TLS to the Sentinels and to the master: `rediss://` Sentinel URLs and the CA, the
/// master reached over TLS too, and a failover followed.
#[test]
fn sentinels_and_master_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let files = redis_mutex_harness::TlsFiles::generate(certs.path()).unwrap_or_else(|e| panic!("{e}"));
    let data = redis_mutex_harness::ServerBuilder::default().tls_with(files.clone());
    let group = SentinelGroup::start_with("locks", 1, 3, &data);
    let urls = group.sentinel_urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")), "{urls:?}");
    let ca = std::fs::read(&files.ca_cert).unwrap();
    let client = LockClient::builder().tls_root_cert(ca.clone()).build_sentinel("locks", &urls).unwrap();
    wait_until(Duration::from_secs(10), "the notifier to subscribe", || client.is_notifier_connected());
    let m = client.mutex("job");
    m.lock().unwrap().unlock().unwrap();
    // Over TLS: the master serves no plain port at all.
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut group.master().admin_conn()).unwrap();
    assert!(list.lines().any(|l| l.contains(&format!("name=redis-mutex:{}", client.id()))), "{list}");
    // Without the CA the Sentinels' certificates are refused: a TLS error.
    let err = LockClient::builder().build_sentinel("locks", &urls).unwrap_err();
    assert!(matches!(err, Error::Connection(_) | Error::Tls { .. }), "{err:?}");
    let old = group.master_addr().unwrap();
    redis::cmd("SENTINEL").arg("FAILOVER").arg("locks").query::<()>(&mut group.sentinels()[0].admin_conn()).unwrap();
    wait_until(Duration::from_secs(30), "the failover", || group.master_addr().is_some_and(|a| a != old));
    let g = m.try_lock_for(Duration::from_secs(20)).unwrap().expect("locks after the failover");
    g.unlock().unwrap();
}
