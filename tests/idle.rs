//! Proves idle waiters are quiet: 100 threads waiting on a held lock send Redis next
//! to nothing while they sleep (each one's first attempt, then nothing until the
//! release) and use next to no CPU.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use redis_mutex::{LockClient, MutexOptions};
use support::{RedisServer, connected_with, wait_until};

fn connected(server: &RedisServer) -> LockClient {
    connected_with(server, LockClient::builder())
}

/// CPU time (user + system) this process has used, all threads, dead ones included.
fn process_cpu_time() -> Duration {
    redis_mutex_harness::process_cpu().expect("read /proc/self/stat")
}

/// Set in a test binary re-executed to run one test alone (see [`run_isolated`]).
const ISOLATED_ENV: &str = "REDIS_MUTEX_ISOLATED";

/// Runs test `name` in a fresh process of this test binary, alone, so that
/// process-wide measurements (CPU time) see no other test. Forwards its output and
/// fails if it fails or did not run.
fn run_isolated(name: &str) {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ISOLATED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary");
    let pipe = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the isolated test") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the isolated run of {name} did not finish within 120 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    println!("---- isolated {name}: stdout ----\n{out}");
    eprintln!("---- isolated {name}: stderr ----\n{err}");
    assert!(status.success(), "the isolated run of {name} failed ({status}); see its output above");
    assert!(out.contains("test result: ok. 1 passed"), "the isolated run did not run {name}: {out}");
}

/// One command as Redis's slow log recorded it.
struct Logged {
    id: i64,
    /// Lower-case command name.
    command: String,
    /// `CLIENT SETNAME` of the connection that sent it ("" for commands a Lua script ran).
    client: String,
}

/// The server's whole slow log. With `slowlog-log-slower-than 0` it records every
/// command a connection sends, with that connection's name; commands run inside a
/// Lua script are logged as coming from the script client (address `?:0`, no name).
fn slowlog(con: &mut redis::Connection) -> Vec<Logged> {
    // Arguments as bytes: the log cuts each at 128 bytes, which may split a UTF-8
    // character (a script's text names "µs" near its start).
    type Entry = (i64, i64, i64, Vec<Vec<u8>>, String, String);
    let entries: Vec<Entry> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query(con).expect("SLOWLOG GET");
    entries
        .into_iter()
        .map(|(id, _, _, args, _, client)| Logged {
            id,
            command: args.first().map(|c| String::from_utf8_lossy(c).to_ascii_lowercase()).unwrap_or_default(),
            client,
        })
        .collect()
}

/// Id of the latest slow-log entry: entries logged after this call have larger ids.
fn slowlog_mark(con: &mut redis::Connection) -> i64 {
    slowlog(con).iter().map(|e| e.id).max().unwrap_or(-1)
}

/// Commands the pooled connections of `client` sent in slow-log ids `(after, upto]`,
/// by command name.
fn sent_by_pool(log: &[Logged], client: &LockClient, after: i64, upto: i64) -> BTreeMap<String, u64> {
    let pooled = format!("redis-mutex:{}", client.id());
    let mut sent = BTreeMap::new();
    for e in log.iter().filter(|e| e.id > after && e.id <= upto && e.client == pooled) {
        *sent.entry(e.command.clone()).or_default() += 1;
    }
    sent
}

/// Runs alone in its own process (see `run_isolated`): the CPU check reads the whole
/// process's CPU time, which other tests running in parallel would inflate.
///
/// What counts as a waiter's Redis calls: the commands the waiting client's pooled
/// connections send (waiters use nothing else), counted from before the waiters start
/// (so each one's first attempt counts) to after all returned. `INFO commandstats`
/// cannot be used as is: it also counts every command our Lua scripts run (three or
/// four per attempt), which are part of one call. It is printed and cross-checked.
/// `CLIENT` commands (a pooled connection's handshake, per connection, not per
/// waiter) are reported separately.
#[test]
fn idle_waiters_are_quiet() {
    if std::env::var_os(ISOLATED_ENV).is_none() {
        return run_isolated("idle_waiters_are_quiet");
    }
    const WAITERS: usize = 100;
    const WAIT: Duration = Duration::from_secs(3);
    const POOL: u32 = 8;
    let server = RedisServer::start_with(&["--slowlog-log-slower-than", "0", "--slowlog-max-len", "1000000"]);
    let holder = connected(&server);
    let client = connected_with(&server, LockClient::builder().pool_max_size(POOL));
    let mut admin = server.admin_conn();
    let _held = holder
        .mutex_with("idle", MutexOptions::default().lease(Duration::from_secs(60)))
        .try_lock()
        .unwrap()
        .expect("free lock");
    let m = client.mutex("idle");
    // Warm up: load the scripts and open pooled connections, so what is measured below
    // is what waiting costs (try_lock does not mark the holder as waited for).
    thread::scope(|s| {
        for _ in 0..2 * POOL {
            s.spawn(|| {
                for _ in 0..10 {
                    assert!(m.try_lock().unwrap().is_none());
                }
            });
        }
    });

    let before = client.stats();
    let stats0 = server.command_stats();
    let mark0 = slowlog_mark(&mut admin);
    let cpu0 = process_cpu_time();
    let start = Barrier::new(WAITERS + 1);
    let (mark1, cpu1, cpu_idle, mark_idle, waits) = thread::scope(|s| {
        let handles: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (m, start) = (&m, &start);
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    let got = m.try_lock_for(WAIT);
                    let waited = t.elapsed();
                    assert!(got.expect("try_lock_for").is_none(), "the lock is held for 60 s");
                    waited
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        // Counted where it lands: the stats count an attempt before it is sent. Only the
        // first waiter asks Redis; the others queue behind it in the client.
        wait_until(Duration::from_secs(10), "every waiter queued, the first having attempted", || {
            let log = slowlog(&mut admin);
            m.waiting_threads() == WAITERS
                && sent_by_pool(&log, &client, mark0, i64::MAX).get("evalsha").copied().unwrap_or(0) >= 1
        });
        // All are registered and asleep now: nothing should reach Redis before their
        // deadlines.
        let mark1 = slowlog_mark(&mut admin);
        let cpu1 = process_cpu_time();
        let idle_end = t0 + WAIT - Duration::from_millis(500);
        assert!(Instant::now() < idle_end, "the first attempts took {:?}", t0.elapsed());
        thread::sleep(idle_end - Instant::now());
        let cpu_idle = process_cpu_time();
        let mark_idle = slowlog_mark(&mut admin);
        let waits: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (mark1, cpu1, cpu_idle, mark_idle, waits)
    });
    let cpu2 = process_cpu_time();
    let stats2 = server.command_stats();
    let log = slowlog(&mut admin);
    let d = client.stats().since(&before);
    let whole = sent_by_pool(&log, &client, mark0, i64::MAX);
    let asleep = sent_by_pool(&log, &client, mark1, mark_idle);
    let commandstats: BTreeMap<&String, u64> = stats2
        .iter()
        .map(|(name, n)| (name, n - stats0.get(name).copied().unwrap_or(0)))
        .filter(|(name, n)| *n > 0 && !["info", "config|resetstat", "slowlog"].contains(&name.as_str()))
        .collect();
    let (cpu_waiting, cpu_all) = (cpu2 - cpu1, cpu2 - cpu0);
    println!("sent by the waiting client while {WAITERS} waiters lived: {whole:?}");
    println!("sent while they slept: {asleep:?}");
    println!("INFO commandstats delta (script-internal commands included): {commandstats:?}");
    println!(
        "CPU: {:?} while all slept, {cpu_waiting:?} from all asleep to all returned, {cpu_all:?} in all",
        cpu_idle - cpu1
    );
    println!("waits: {:?} ..= {:?}; stats {d:#?}", waits.iter().min().unwrap(), waits.iter().max().unwrap());

    for w in &waits {
        assert!(*w >= WAIT && *w < WAIT + Duration::from_secs(2), "try_lock_for(3 s) returned after {w:?}");
    }
    assert!(asleep.is_empty(), "sleeping waiters talked to Redis: {asleep:?}");
    let calls: u64 = whole.iter().filter(|(c, _)| *c != "client").map(|(_, n)| n).sum();
    assert!(calls <= 2 * WAITERS as u64, "{calls} calls for {WAITERS} waiters (limit 2 each): {whole:?}");
    let handshakes = whole.get("client").copied().unwrap_or(0);
    assert!(handshakes <= 3 * POOL as u64, "{handshakes} CLIENT commands: more than a pool's worth of connections");
    // The slow log saw the same attempts as the command statistics.
    assert_eq!(
        whole.get("evalsha").copied().unwrap_or(0),
        commandstats.get(&"evalsha".to_owned()).copied().unwrap_or(0)
    );
    assert!(d.attempts >= 2, "the first waiter attempts on arrival and at its deadline: {d:#?}");
    assert!(d.attempts <= 2 * WAITERS as u64, "{d:#?}");
    assert!(cpu_waiting < Duration::from_millis(300), "{WAITERS} idle waiters used {cpu_waiting:?} of CPU");
}
