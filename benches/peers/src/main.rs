//! Side-by-side performance of redis-mutex and what a Rust user would pick instead
//! (rlock 0.2 sync, redisson 0.1 sync, redlock 2, and the naive `SET NX PX` + 1 ms sleep
//! loop), on one loopback redis-server this program starts, beside an in-memory FIFO
//! lock as the machine's floor for a fair lock; on request, redis-mutex over TLS on a
//! TLS server beside it, and on a 3-master Redis Cluster. See README.md.
//!
//! `cargo run --release -- [--secs S] [--only W1,W2,W3,W4,curves,W5,fleet] [--impls a,b] [--quick]`

mod cluster;
mod output;
mod peers;
mod report;
mod shared;
mod w4;
mod w5;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use peers::{ALL, Impl, Names, Shared};
use redis_mutex_harness::RedisServer;
use redis_mutex_harness::bench::{self, Measured};
use w4::W4Row;
use w5::NaRow;

/// Runs redis-mutex and its peers through the same workloads on one loopback
/// redis-server, and prints a table, the target checks and where it wrote the
/// CSV and plots. See README.md for the workloads and columns.
#[derive(Parser)]
#[command(name = "bench-peers")]
struct Args {
    /// Length of each W1/W2/W3/curve/W5/fleet run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// W4's measuring window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    w4_secs: f64,
    /// Short runs: --secs 2 --w4-secs 3 (whatever those say).
    #[arg(long)]
    quick: bool,
    /// Workloads to run.
    #[arg(long, value_enum, value_delimiter = ',', ignore_case = true, default_values_t = Workload::all())]
    only: Vec<Workload>,
    /// Implementations to run (`redis-mutex-tls`, redis-mutex over TLS on a TLS server
    /// of its own, and `redis-mutex-cluster`, redis-mutex on a 3-master cluster for W2
    /// and W5 with the spread W2s/W5s beside redis-mutex on one server, only when named).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = ALL)]
    impls: Vec<Impl>,
    /// Independent masters (odd, at least 3; 1: one server). With more than one,
    /// redis-mutex runs as a Redlock client over all of them (`build_redlock`, its
    /// defaults) and redlock 2 with all of them; the other implementations, which take
    /// one server, are left out. Redis's counters and CPU are summed over the masters.
    #[arg(long, default_value_t = 1)]
    masters: usize,
    /// Runs of the W1/W2/W3/curve/W5/fleet plan, interleaved (every implementation
    /// and workload once per run); with more than one, the tables, checks, CSV and
    /// plots use each (workload, implementation)'s median run by acq/s.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Where to write results.csv and the plots [default: benches/peers/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Accepted and ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
    /// Accepted and ignored (`cargo bench -- --list`).
    #[arg(long, hide = true)]
    list: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    #[value(name = "W1")]
    W1,
    #[value(name = "W2")]
    W2,
    #[value(name = "W3")]
    W3,
    /// W2 at 1, 4, 16 and 64 threads.
    Curves,
    #[value(name = "W4")]
    W4,
    /// 8 single-threaded processes, with and without the sleep.
    #[value(name = "W5")]
    W5,
    /// W5 (with the sleep) at 2, 8, 32 and 64 processes.
    Fleet,
    /// Read-write locks: 90% reads, 8 threads and 4 processes × 4 threads.
    #[value(name = "RW")]
    Rw,
    /// Semaphores: 4 permits, 16 threads.
    #[value(name = "SEM")]
    Sem,
}

impl Workload {
    fn all() -> Vec<Workload> {
        <Workload as ValueEnum>::value_variants().to_vec()
    }
}

const CURVE_THREADS: [u32; 4] = [1, 4, 16, 64];

/// Where an implementation's runs go: the plain server, `redis-mutex-tls`'s TLS one, or
/// `redis-mutex-cluster`'s cluster.
struct Target {
    /// What the implementation connects to (a cluster: its nodes, comma-separated).
    url: String,
    /// The PEM file of the CA of a TLS server.
    tls_ca: Option<String>,
    /// What the harness PINGs during a run (the same server and transport; a cluster's
    /// first node).
    ping_url: String,
    /// The benchmark's own connection to each server (a TLS server's Unix socket; every
    /// node of a cluster, the PINGed one first): Redis's counters are summed over them.
    admins: Vec<redis::Connection>,
}

/// One W1/W2/W3/W5 run of one implementation.
pub struct Row {
    pub workload: &'static str,
    pub imp: Impl,
    pub procs: u32,
    pub threads: u32,
    pub secs: f64,
    pub m: Measured,
}

/// A row reads as the run it measured.
impl std::ops::Deref for Row {
    type Target = Measured;

    fn deref(&self) -> &Measured {
        &self.m
    }
}

impl Row {
    pub fn label(&self) -> String {
        if self.procs == 1 { format!("{} thr", self.threads) } else { format!("{}p×{}t", self.procs, self.threads) }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}; load average {}", loadavg())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child")
        && let Some(imp) = args.get(2).and_then(|a| shared::PrimImpl::from_name(a))
    {
        // An RW worker process: `--child rw:IMPL URL` and the run's parameters.
        bench::child_main(&args[2..], |own, _| shared::Prim::new(imp, &own[1]));
        return;
    }
    if args.get(1).map(String::as_str) == Some("--child") {
        // A W3 or W5 worker process: `--child IMPL URL NAMES [TLS_CA]` and the run's parameters.
        bench::child_main(&args[2..], |own, threads| {
            Shared::new(
                Impl::from_str(&own[0], false).expect("implementation"),
                &own[1],
                own.get(3).map(String::as_str),
                threads,
                Names::parse(&own[2]).expect("NAMES"),
            )
        });
        return;
    }
    let mut o = Args::parse();
    if o.quick {
        (o.secs, o.w4_secs) = (2.0, 3.0);
    }
    let wants = |w: Workload| o.only.contains(&w);
    let started = Instant::now();
    // 64 waiters with redisson's pool, plus rlock/redlock connection churn.
    let server = RedisServer::start_with(&["--maxclients", "10000"]);
    let url = server.url();
    let mut plain = Target { url: url.clone(), tls_ca: None, ping_url: url.clone(), admins: vec![server.admin_conn()] };
    println!(
        "bench-peers: redis-server {} on loopback ({url}), --save \"\"",
        bench::server_version(&mut plain.admins[0])
    );
    let masters = (o.masters > 1).then(|| {
        let masters = redis_mutex_harness::Masters::start_with(
            o.masters,
            &RedisServer::builder().args(&["--maxclients", "10000"]),
        );
        o.impls.retain(|i| matches!(i, Impl::RedisMutex | Impl::Redlock));
        plain = Target {
            url: masters.urls().join(","),
            tls_ca: None,
            ping_url: masters[0].url(),
            admins: masters.iter().map(RedisServer::admin_conn).collect(),
        };
        // redis-mutex counts a master only once it has been up for redlock_max_lease
        // (30 s): a master just started may have forgotten locks.
        let up = |m: &RedisServer| -> u64 {
            let info = m.info("server");
            info.lines().find_map(|l| l.strip_prefix("uptime_in_seconds:")).map_or(0, |v| v.trim().parse().unwrap_or(0))
        };
        println!("{} independent masters ({}); waiting until they have been up 32 s", o.masters, plain.url);
        while masters.iter().any(|m| up(m) < 32) {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        masters
    });
    // redis-mutex-tls runs on a TLS-only server of its own, started only when asked for.
    let tls_server = o
        .impls
        .contains(&Impl::RedisMutexTls)
        .then(|| RedisServer::builder().tls().args(&["--maxclients", "10000"]).start());
    let mut tls = tls_server.as_ref().map(|s| {
        let ca = s.tls().expect("a TLS server").ca_cert.to_string_lossy().into_owned();
        // Also installs the crypto provider in this process (for the PING connection).
        let check = redis_mutex::LockClient::builder().tls_root_cert(std::fs::read(&ca).expect("CA certificate"));
        check.build(&s.url()).expect("the TLS server answers redis-mutex");
        println!(
            "redis-mutex-tls: the same client with tls_root_cert, on a TLS-only redis-server ({}), P-256 certificates",
            s.url()
        );
        // The harness's PING connection cannot be given the CA: it skips the check.
        Target {
            url: s.url(),
            tls_ca: Some(ca),
            ping_url: format!("{}#insecure", s.url()),
            admins: vec![s.admin_conn()],
        }
    });
    if masters.is_some() {
        println!(
            "Redlock: redis-mutex build_redlock (defaults: redlock_master_timeout 50 ms, redlock_max_lease 30 s); \
             redlock 2 RedLock::new(all masters) (3 tries, 0..200 ms random delay); rslock: not run, it has no \
             synchronous API (async-std or tokio only)"
        );
    }
    // redis-mutex-cluster runs on a 3-master cluster of its own, started only when asked for.
    let (_cluster, mut clustered) = if o.impls.contains(&Impl::RedisMutexCluster) {
        let (c, target) = cluster::start();
        println!(
            "redis-mutex-cluster: the same client with build_cluster, on a Redis Cluster of {} masters without replicas \
                 ({}); its counters and CPU summed over the nodes",
            cluster::MASTERS,
            target.url
        );
        (Some(c), Some(target))
    } else {
        (None, None)
    };
    println!("machine: {}", machine());
    println!(
        "{} s per run (W4: {} s window after {} s settle); hold 100 µs busy; W2/W3/curves/W5/fleet: 0.5–1.5 ms sleep outside the lock (W5t: none)",
        o.secs,
        o.w4_secs,
        w4::W4_SETTLE.as_secs()
    );
    println!(
        "redis-mutex: LockClient defaults (pool_max_size 8, lease 30 s renewed); rlock: AcquireOptions default (TTL 10 s, \
         retry 100 ms, auto-renew); redisson: RLock lease 30 s, pool_size threads+2 (min 10); redlock: acquire(ttl 30 s), \
         1 server; naive: SET NX PX 30000, 1 ms sleep, Lua GET==token→DEL"
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut w4rows: Vec<W4Row> = Vec::new();
    let mut plan: Vec<(&'static str, u32, u32, bool)> = Vec::new();
    let with_cluster = clustered.is_some();
    let mut na: Vec<NaRow> = Vec::new();
    if wants(Workload::W1) {
        plan.push(("W1", 1, 8, false));
    }
    if wants(Workload::W2) {
        plan.push(("W2", 1, 8, true));
    }
    if wants(Workload::W3) {
        plan.push(("W3", 4, 4, true));
    }
    if wants(Workload::Curves) {
        for n in CURVE_THREADS {
            plan.push(("W2", 1, n, true));
        }
    }
    plan.extend(w5::plan(wants(Workload::W5), wants(Workload::Fleet)));
    // The spread workloads, for the cluster's comparison: threads (processes) over 3 lock
    // names, one per master there; on one server and on the cluster.
    if with_cluster && wants(Workload::W2) {
        plan.push(("W2s", 1, 8, true));
    }
    if with_cluster && wants(Workload::W5) {
        plan.push(("W5s", w5::PROCS, 1, true));
    }
    let mut last_wl = "";
    let mut w5_secs = 0.0;
    let runs = o.runs.max(1);
    for (run, (wl, procs, threads, think)) in (1..=runs).flat_map(|run| plan.iter().map(move |&p| (run, p))) {
        if runs > 1 && last_wl.is_empty() {
            println!("\n== run {run} of {runs}");
        }
        let is_w5 = wl.starts_with("W5");
        if wl != last_wl || threads != 8 || is_w5 {
            println!("\n{}", if is_w5 { w5::header() } else { report::row_header() });
            last_wl = wl;
        }
        let t0 = Instant::now();
        let spread = matches!(wl, "W2s" | "W5s");
        for &imp in o.impls.iter().filter(|i| i.runs(wl, procs, threads)) {
            // On the cluster, one lock on a master other than the one every client's
            // notifier subscribes on (the owner of slot 0): a grant crosses the bus, as
            // it does for 2 locks in 3.
            let names = match (spread, imp) {
                (true, _) => Names { first: 0, count: 3 },
                (false, Impl::RedisMutexCluster) => Names { first: 1, count: 1 },
                (false, _) => Names::ONE,
            };
            let target = match imp {
                Impl::RedisMutexTls => tls.as_mut().expect("the TLS server"),
                Impl::RedisMutexCluster => clustered.as_mut().expect("the cluster"),
                _ => &mut plain,
            };
            // A key is deleted only on its slot's node: a cluster is emptied instead.
            let keys = if imp == Impl::RedisMutexCluster {
                cluster::flush(target);
                Vec::new()
            } else {
                imp.keys()
            };
            let mut child_args = vec![imp.name().to_owned(), target.url.clone(), names.arg()];
            child_args.extend(target.tls_ca.clone());
            let locks = names.count;
            let run =
                bench::Run { url: &target.ping_url, keys, procs, threads, secs: o.secs, think, child_args, locks };
            let local = || Shared::new(imp, &target.url, target.tls_ca.as_deref(), threads, names);
            let m = match bench::try_measure_all(&run, &mut target.admins, local) {
                Ok(m) => m,
                Err(reason) => {
                    let n = NaRow { workload: wl, imp, procs, threads, secs: o.secs, reason };
                    println!("{}", w5::na_line(&n));
                    na.push(n);
                    continue;
                }
            };
            let r = Row { workload: wl, imp, procs, threads, secs: o.secs, m };
            println!("{}", if is_w5 { w5::line(&r) } else { report::row_line(&r) });
            if let Some(e) = &r.first_error {
                println!("     first error: {e}");
            }
            rows.push(r);
        }
        if is_w5 {
            w5_secs += t0.elapsed().as_secs_f64();
        }
        if plan.last() == Some(&(wl, procs, threads, think)) {
            last_wl = "";
        }
    }
    if runs > 1 {
        rows = report::median_runs(rows);
        println!("\nmedian run of {runs} by acq/s, each workload and implementation:");
        for r in &rows {
            println!("{}", if r.workload.starts_with("W5") { w5::line(r) } else { report::row_line(r) });
        }
    }
    if wants(Workload::W4) {
        println!("\nW4: {} threads wait on a lock another client holds (60 s lease, no renewal)", w4::W4_WAITERS);
        println!("{}", report::w4_header());
        for &imp in o.impls.iter().filter(|i| i.is_distributed() && i.runs("W4", 2, w4::W4_WAITERS)) {
            let target = match imp {
                Impl::RedisMutexTls => tls.as_mut().expect("the TLS server"),
                _ => &mut plain,
            };
            let r = w4::w4(imp, &target.url, target.tls_ca.as_deref(), &mut target.admins[0], o.w4_secs);
            println!("{}", report::w4_line(&r));
            if let Some(e) = &r.first_error {
                println!("     first error: {e}");
            }
            w4rows.push(r);
        }
    }
    let prim_plan = shared::plan(wants(Workload::Rw), wants(Workload::Sem));
    let mut prim_rows = Vec::new();
    if !prim_plan.is_empty() {
        println!(
            "\nRW: redis-mutex RwLock vs rlock's read-write lock (90% reads); SEM: redis-mutex Semaphore vs a naive \
             INCR/DECR + 1 ms polling semaphore ({} permits); 100 µs busy hold; RW1, SEM1: tight loop; RW2, RW3, SEM2: \
             0.5–1.5 ms asleep outside the lock",
            shared::PERMITS
        );
        println!("{}", shared::header());
        for (wl, procs, threads, think, imps) in prim_plan {
            for imp in imps {
                match shared::run(imp, &url, &mut plain.admins[0], (procs, threads, think), o.secs) {
                    Ok(m) => {
                        let r = shared::PrimRow { workload: wl, imp, procs, threads, m };
                        println!("{}", shared::line(&r));
                        if let Some(e) = &r.m.first_error {
                            println!("     first error: {e}");
                        }
                        prim_rows.push(r);
                    }
                    Err(reason) => println!("{wl} {} {procs}p×{threads}t: n/a: {reason}", imp.name()),
                }
            }
        }
        println!(
            "  min/max sh: smallest and largest thread's share of acquisitions × threads (1.00 = even); cmd/a: commands \
             Redis received per acquisition; rt/a: client round trips per acquisition; grants: acquisitions a release \
             granted (no request of the waiter's own) per acquisition; local: acquisitions passed in memory or joining \
             a read share of the same client, per acquisition; -rt: redis-mutex with handoff_limit(0), no in-process \
             fast path (every acquisition and release a round trip, as before it)"
        );
        println!("\ntarget checks (issue 18):");
        for l in shared::targets(&prim_rows) {
            println!("  {l}");
        }
    }
    report::print_legend();
    if [Workload::W1, Workload::W2, Workload::W4].into_iter().any(wants) {
        println!("\ntarget checks (issue 6):");
        for l in report::targets(&rows, &w4rows) {
            println!("  {l}");
        }
    }
    if wants(Workload::W5) || wants(Workload::Fleet) {
        w5::print_legend();
        println!("\ntarget checks (W5, the cross-process issue):");
        for l in w5::targets(&rows, &na) {
            println!("  {l}");
        }
        println!("W5 and fleet runs took {w5_secs:.0} s");
    }
    if with_cluster {
        cluster::print(&rows);
    }

    let dir = o.out.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&dir).unwrap();
    output::write_csv(&dir.join("results.csv"), &rows, &w4rows, &na).expect("results.csv");
    shared::write_csv(&dir.join("shared.csv"), &prim_rows).expect("shared.csv");
    w5::plots(&dir, &rows, &o.impls).expect("W5 fleet plots");
    // W2 throughput against threads (the 8-thread W2 run is a point of the curve).
    let series: Vec<(&str, Vec<(f64, f64)>)> = o
        .impls
        .iter()
        .map(|&imp| {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.workload == "W2" && r.procs == 1 && r.imp == imp)
                .map(|r| (f64::from(r.threads), r.acq_per_s))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (imp.name(), pts)
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    let chart = dir.join("w2_throughput_vs_threads.svg");
    if series.is_empty() {
        let _ = std::fs::remove_file(chart); // no stale figure
    } else {
        output::throughput_chart(&chart, &series).expect("W2 throughput plot");
    }
    let cdf: Vec<(&str, Vec<f64>)> = rows
        .iter()
        .filter(|r| r.workload == "W2" && r.procs == 1 && r.threads == 8)
        .map(|r| (r.imp.name(), r.handoff_ns.iter().map(|&n| n as f64 / 1e3).collect()))
        .collect();
    let chart = dir.join("handoff_latency.svg");
    if cdf.is_empty() {
        let _ = std::fs::remove_file(chart);
    } else {
        output::handoff_cdf(&chart, &cdf).expect("handoff latency plot");
    }
    println!(
        "\nwrote {}/{{results.csv, shared.csv, w2_throughput_vs_threads.svg, handoff_latency.svg, {}}}; total {:.0} s; \
         load average now {}",
        dir.display(),
        w5::PLOTS.join(", "),
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
