//! Side-by-side performance of redis-mutex and what a Rust user would pick instead
//! (rlock 0.2 sync, redisson 0.1 sync, redlock 2, and the naive `SET NX PX` + 1 ms sleep
//! loop), on one loopback redis-server this program starts, beside an in-memory FIFO
//! lock as the machine's floor for a fair lock. See README.md.
//!
//! `cargo run --release -- [--secs S] [--only W1,W2,W3,W4,curves] [--impls a,b] [--quick]`

mod peers;
mod svg;
mod w4;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use peers::{ALL, Impl, Shared};
use redis_mutex_harness::RedisServer;
use redis_mutex_harness::bench::{self, Measured};
use w4::W4Row;

/// One W1/W2/W3 run of one implementation.
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

struct Opts {
    secs: f64,
    w4_secs: f64,
    only: Vec<String>,
    impls: Vec<Impl>,
    out: Option<PathBuf>,
}

const WORKLOADS: [&str; 5] = ["W1", "W2", "W3", "curves", "W4"];
const CURVE_THREADS: [u32; 4] = [1, 4, 16, 64];

fn usage() -> ! {
    eprintln!(
        "usage: bench-peers [--secs S (default 10)] [--w4-secs S (default 10)] [--quick (= --secs 2 --w4-secs 3)]\n\
         \x20                  [--only W1,W2,W3,curves,W4] [--impls redis-mutex,rlock,redisson,redlock,naive,local-fifo]\n\
         \x20                  [--out DIR (default benches/peers/results)]"
    );
    std::process::exit(2)
}

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts {
        secs: 10.0,
        w4_secs: 10.0,
        only: WORKLOADS.iter().map(|s| s.to_string()).collect(),
        impls: ALL.to_vec(),
        out: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--secs" => o.secs = val().parse().unwrap_or_else(|_| usage()),
            "--w4-secs" => o.w4_secs = val().parse().unwrap_or_else(|_| usage()),
            "--quick" => {
                o.secs = 2.0;
                o.w4_secs = 3.0;
            }
            "--only" => {
                o.only = val().split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = o.only.iter().find(|w| !WORKLOADS.iter().any(|k| k.eq_ignore_ascii_case(w))) {
                    eprintln!("unknown workload {bad}");
                    usage();
                }
            }
            "--impls" => {
                o.impls = val()
                    .split(',')
                    .map(|s| {
                        Impl::parse(s.trim()).unwrap_or_else(|| {
                            eprintln!("unknown implementation {s}");
                            usage()
                        })
                    })
                    .collect()
            }
            "--out" => o.out = Some(PathBuf::from(val())),
            "--bench" | "--list" => {} // cargo bench compatibility
            _ => usage(),
        }
    }
    o
}

fn wants(o: &Opts, w: &str) -> bool {
    o.only.iter().any(|x| x.eq_ignore_ascii_case(w))
}

/// µs → a short human figure.
fn t(us: f64) -> String {
    if !us.is_finite() {
        "-".into()
    } else if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1e6 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

fn row_header() -> String {
    format!(
        "{:<4} {:<12} {:>7} {:>8} {:>15} {:>24} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {:>4}",
        "wl",
        "impl",
        "thr",
        "acq/s",
        "handoff p50/p99",
        "wait p50/p99/max",
        "share",
        "RT/acq",
        "cmds",
        "calls",
        "conns",
        "rCPU/acq",
        "pCPU/acq",
        "PING",
        "err"
    )
}

fn row_line(r: &Row) -> String {
    format!(
        "{:<4} {:<12} {:>7} {:>8.0} {:>15} {:>24} {:>6.2} {:>6.2}{} {:>6.2} {:>6.2} {:>6.3} {:>8} {:>8} {:>6} {:>4}",
        r.workload,
        r.imp.name(),
        r.label(),
        r.acq_per_s,
        format!("{}/{}", t(r.handoff.0), t(r.handoff.1)),
        format!("{}/{}/{}", t(r.wait.0), t(r.wait.1), t(r.wait.2)),
        r.min_share,
        r.rt_per_acq,
        if r.rt_source == "server" { "*" } else { " " },
        r.cmds_per_acq,
        r.calls_per_acq,
        r.conns_per_acq,
        t(r.rcpu_us),
        t(r.pcpu_us),
        t(r.ping_us),
        r.errors
    )
}

fn w4_header() -> String {
    format!(
        "{:<12} {:>9} {:>9} {:>7} {:>8} {:>11} {:>11} {:>6} {:>8} {:>4}",
        "impl", "calls/s", "cmds/s", "PING/s", "conns/s", "rCPU ms/s", "pCPU ms/s", "early", "drain", "err"
    )
}

fn w4_line(r: &W4Row) -> String {
    format!(
        "{:<12} {:>9.1} {:>9.1} {:>7.2} {:>8.1} {:>11.1} {:>11.1} {:>6} {:>7.2}s {:>4}",
        r.imp.name(),
        r.calls_per_s,
        r.cmds_per_s,
        r.pings_per_s,
        r.conns_per_s,
        r.rcpu_ms_per_s,
        r.pcpu_ms_per_s,
        r.acquired_early,
        r.drain_s,
        r.errors
    )
}

fn csv(rows: &[Row], w4: &[W4Row]) -> String {
    let mut s = String::from(
        "workload,impl,procs,threads,secs,acquisitions,acq_per_s,handoffs,handoff_p50_us,handoff_p99_us,\
         wait_p50_us,wait_p99_us,wait_max_us,min_share,round_trips_per_acq,round_trips_source,\
         redis_cmds_per_acq,redis_calls_per_acq,new_conns_per_acq,redis_cpu_us_per_acq,proc_cpu_us_per_acq,\
         ping_p50_us,errors,w4_window_s,w4_calls_per_s,w4_cmds_per_s,w4_pings_per_s,w4_conns_per_s,\
         w4_redis_cpu_ms_per_s,w4_proc_cpu_ms_per_s,w4_acquired_before_release,w4_drain_s\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.1},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.3},{:.3},{},{:.3},{:.3},{:.4},{:.2},{:.2},{:.1},{},,,,,,,,,",
            r.workload,
            r.imp.name(),
            r.procs,
            r.threads,
            r.secs,
            r.acquisitions,
            r.acq_per_s,
            r.handoffs,
            r.handoff.0,
            r.handoff.1,
            r.wait.0,
            r.wait.1,
            r.wait.2,
            r.min_share,
            r.rt_per_acq,
            r.rt_source,
            r.cmds_per_acq,
            r.calls_per_acq,
            r.conns_per_acq,
            r.rcpu_us,
            r.pcpu_us,
            r.ping_us,
            r.errors
        );
    }
    for r in w4 {
        let _ = writeln!(
            s,
            "W4,{},1,{},{:.1},,,,,,,,,,,,,,,,,,{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{},{:.3}",
            r.imp.name(),
            r.waiters,
            r.window_s,
            r.errors,
            r.window_s,
            r.calls_per_s,
            r.cmds_per_s,
            r.pings_per_s,
            r.conns_per_s,
            r.rcpu_ms_per_s,
            r.pcpu_ms_per_s,
            r.acquired_early,
            r.drain_s
        );
    }
    s
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

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn targets(rows: &[Row], w4: &[W4Row]) -> Vec<String> {
    let mut out = Vec::new();
    let find = |wl: &str, imp: Impl, threads: u32| {
        rows.iter().find(|r| r.workload == wl && r.imp == imp && r.threads == threads && r.procs == 1)
    };
    let ours_w2 = find("W2", Impl::RedisMutex, 8);
    let ours_w1 = find("W1", Impl::RedisMutex, 8);
    let others: Vec<Impl> = ALL.into_iter().filter(|i| *i != Impl::RedisMutex).collect();
    match ours_w2 {
        Some(o) => {
            for p in others.iter().filter(|p| p.is_crate_peer()) {
                if let Some(r) = find("W2", *p, 8) {
                    out.push(format!(
                        "{} W2 acq/s ≥ 3× {}: {:.0} vs 3 × {:.0} = {:.0} ({:.1}×)",
                        verdict(o.acq_per_s >= 3.0 * r.acq_per_s),
                        p.name(),
                        o.acq_per_s,
                        r.acq_per_s,
                        3.0 * r.acq_per_s,
                        o.acq_per_s / r.acq_per_s
                    ));
                }
            }
            if let Some(n) = find("W2", Impl::Naive, 8) {
                out.push(format!(
                    "{} W2 acq/s ≥ naive: {:.0} vs {:.0} ({:.2}×)",
                    verdict(o.acq_per_s >= n.acq_per_s),
                    o.acq_per_s,
                    n.acq_per_s,
                    o.acq_per_s / n.acq_per_s
                ));
                out.push(format!(
                    "{} W2 wait p99 ≤ half the naive's: {} vs {} / 2 = {}",
                    verdict(o.wait.1 <= n.wait.1 / 2.0),
                    t(o.wait.1),
                    t(n.wait.1),
                    t(n.wait.1 / 2.0)
                ));
            }
            out.push(format!(
                "{} W2 handoff p50 ≤ 2× PING p50 (same run): {} vs 2 × {} = {}",
                verdict(o.handoff.0 <= 2.0 * o.ping_us),
                t(o.handoff.0),
                t(o.ping_us),
                t(2.0 * o.ping_us)
            ));
        }
        None => out.push("skip W2 targets: no redis-mutex W2 row".into()),
    }
    match ours_w1 {
        Some(o) => {
            // "Peer" as in the W2 target: the peer crates. The naive loop gets the same
            // comparisons as "(ref)" lines: with 8 threads in FIFO order a waiter waits for
            // the 7 ahead of it (~7 × (hold + handoff) ≈ 2–3 ms), which bounds how far below
            // the naive loop's max wait redis-mutex's can go.
            let peers: Vec<&Row> =
                others.iter().filter(|p| p.is_crate_peer()).filter_map(|p| find("W1", *p, 8)).collect();
            let naive = find("W1", Impl::Naive, 8);
            let throughput = |r: &Row, tag: &str| {
                format!(
                    "{} W1 acq/s ≥ 0.8× {tag} ({}): {:.0} vs 0.8 × {:.0} = {:.0}",
                    verdict(o.acq_per_s >= 0.8 * r.acq_per_s),
                    r.imp.name(),
                    o.acq_per_s,
                    r.acq_per_s,
                    0.8 * r.acq_per_s
                )
            };
            if let Some(best) = peers.iter().max_by(|a, b| a.acq_per_s.total_cmp(&b.acq_per_s)) {
                out.push(throughput(best, "best peer crate"));
            }
            if let Some(n) = naive {
                out.push(format!("(ref) {}", throughput(n, "the naive loop")));
            }
            // Every peer here polls with SET NX: the releasing thread can take the lock
            // again at once, ahead of the waiters (barging).
            let max_wait = |p: &Row| {
                format!(
                    "{} W1 max wait ≤ 1/20 of barging {}'s: {} vs {} / 20 = {}",
                    verdict(o.wait.2 <= p.wait.2 / 20.0),
                    p.imp.name(),
                    t(o.wait.2),
                    t(p.wait.2),
                    t(p.wait.2 / 20.0)
                )
            };
            for p in &peers {
                out.push(max_wait(p));
            }
            if let Some(n) = naive {
                out.push(format!("(ref) {}", max_wait(n)));
            }
            // What a fair lock can reach here at all: the same workload on an in-memory
            // FIFO lock, where a handoff is only a thread wake-up.
            if let Some(f) = find("W1", Impl::LocalFifo, 8) {
                out.push(format!(
                    "(floor) W1 in-memory FIFO lock (no Redis): max wait {}, p99 {}, {:.0} acq/s; redis-mutex: max {} \
                     ({:.2}× the floor), {:.0} acq/s ({:.2}×)",
                    t(f.wait.2),
                    t(f.wait.1),
                    f.acq_per_s,
                    t(o.wait.2),
                    o.wait.2 / f.wait.2,
                    o.acq_per_s,
                    o.acq_per_s / f.acq_per_s
                ));
            }
            out.push(format!(
                "{} W1 every thread ≥ half its fair share: smallest share × threads = {:.2} (≥ 0.50)",
                verdict(o.min_share >= 0.5),
                o.min_share
            ));
        }
        None => out.push("skip W1 targets: no redis-mutex W1 row".into()),
    }
    match w4.iter().find(|r| r.imp == Impl::RedisMutex) {
        Some(o) => {
            let naive = w4
                .iter()
                .find(|r| r.imp == Impl::Naive)
                .map_or(String::new(), |n| format!("; naive: {:.0}/s", n.calls_per_s));
            out.push(format!(
                "{} W4 ≤ 1 Redis call/s in total while {} threads wait: {:.2} calls/s (commands received {:.2}/s){naive}",
                verdict(o.calls_per_s <= 1.0),
                o.waiters,
                o.calls_per_s,
                o.cmds_per_s
            ));
        }
        None => out.push("skip W4 target: no redis-mutex W4 row".into()),
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        // A W3 worker process: `--child IMPL URL` and the run's parameters.
        bench::child_main(&args[2..], |own, threads| {
            Shared::new(Impl::parse(&own[0]).expect("implementation"), &own[1], threads)
        });
        return;
    }
    let o = parse_opts(&args[1..]);
    let started = Instant::now();
    // 64 waiters with redisson's pool, plus rlock/redlock connection churn.
    let server = RedisServer::start_with(&["--maxclients", "10000"]);
    let url = server.url();
    let mut admin = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    println!("bench-peers: redis-server {} on loopback ({url}), --save \"\"", bench::server_version(&mut admin));
    println!("machine: {}", machine());
    println!(
        "{} s per run (W4: {} s window after {} s settle); hold 100 µs busy; W2/W3/curves: 0.5–1.5 ms sleep outside the lock",
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
    if wants(&o, "W1") {
        plan.push(("W1", 1, 8, false));
    }
    if wants(&o, "W2") {
        plan.push(("W2", 1, 8, true));
    }
    if wants(&o, "W3") {
        plan.push(("W3", 4, 4, true));
    }
    if wants(&o, "curves") {
        for n in CURVE_THREADS {
            plan.push(("W2", 1, n, true));
        }
    }
    let mut last_wl = "";
    for (wl, procs, threads, think) in plan {
        if wl != last_wl || threads != 8 {
            println!("\n{}", row_header());
            last_wl = wl;
        }
        for &imp in o.impls.iter().filter(|i| procs == 1 || i.is_distributed()) {
            let run = bench::Run {
                url: &url,
                keys: imp.keys(),
                procs,
                threads,
                secs: o.secs,
                think,
                child_args: vec![imp.name().to_owned(), url.clone()],
            };
            let m = bench::measure(&run, &mut admin, || Shared::new(imp, &url, threads));
            let r = Row { workload: wl, imp, procs, threads, secs: o.secs, m };
            println!("{}", row_line(&r));
            if let Some(e) = &r.first_error {
                println!("     first error: {e}");
            }
            rows.push(r);
        }
    }
    if wants(&o, "W4") {
        println!("\nW4: {} threads wait on a lock another client holds (60 s lease, no renewal)", w4::W4_WAITERS);
        println!("{}", w4_header());
        for &imp in o.impls.iter().filter(|i| i.is_distributed()) {
            let r = w4::w4(imp, &url, &mut admin, o.w4_secs);
            println!("{}", w4_line(&r));
            if let Some(e) = &r.first_error {
                println!("     first error: {e}");
            }
            w4rows.push(r);
        }
    }

    println!(
        "\nwl: W1 tight loop 8 thr; W2 worker pool (8 thr, and the 1/4/16/64 thr curve); W3 = W2 as 4 processes × 4 threads\n\
         acq/s: acquisitions per second, all threads\n\
         handoff: next holder's return from lock() − previous holder's release start, when the next was already waiting\n\
         wait: lock() call → return, every acquisition; share: smallest per-thread share of acquisitions × threads (1.00 = even)\n\
         RT/acq: client round trips per acquisition (redis-mutex: its stats; naive: counted; * = the commands Redis received,\n\
         \x20 these crates send one command per round trip); cmds: commands Redis received per acquisition (script-internal\n\
         \x20 calls left out); calls: every INFO commandstats call per acquisition, script-internal included;\n\
         \x20 conns: new TCP connections accepted per acquisition; rCPU / pCPU: Redis server / worker process CPU per\n\
         \x20 acquisition; PING: loopback PING round trip p50 measured during the same run; err: errors returned\n\
         W4: calls/s all commandstats calls per second in the window (both clients), cmds/s commands received, PING/s of\n\
         \x20 them PINGs, conns/s new connections; CPU in ms per second (1000 = a core); early: waiters that got the lock\n\
         \x20 before the holder released (should be 0); drain: holder's release → last waiter's acquisition"
    );
    println!("\ntarget checks (issue 6):");
    for l in targets(&rows, &w4rows) {
        println!("  {l}");
    }

    let dir = o.out.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("results.csv"), csv(&rows, &w4rows)).unwrap();
    // W2 throughput against threads (the 8-thread W2 run is a point of the curve).
    let mut series = Vec::new();
    for &imp in &o.impls {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.workload == "W2" && r.procs == 1 && r.imp == imp)
            .map(|r| (r.threads as f64, r.acq_per_s))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !pts.is_empty() {
            series.push(svg::Series { name: imp.name().into(), points: pts });
        }
    }
    if !series.is_empty() {
        let chart = svg::line_chart(
            "W2 worker pool: throughput vs threads",
            "threads (one process; 100 µs hold, 0.5–1.5 ms work outside the lock)",
            "acquisitions / s",
            &series,
            &[1.0, 4.0, 8.0, 16.0, 64.0],
        );
        std::fs::write(dir.join("w2_throughput_vs_threads.svg"), chart).unwrap();
    } else {
        let _ = std::fs::remove_file(dir.join("w2_throughput_vs_threads.svg")); // no stale figure
    }
    let cdf: Vec<(String, Vec<f64>)> = rows
        .iter()
        .filter(|r| r.workload == "W2" && r.procs == 1 && r.threads == 8)
        .map(|r| (r.imp.name().to_string(), r.handoff_ns.iter().map(|&n| n as f64 / 1e3).collect()))
        .collect();
    if !cdf.is_empty() {
        let chart =
            svg::cdf_chart("W2 (8 threads): handoff latency, CDF", "next holder's return − release start", &cdf);
        std::fs::write(dir.join("handoff_latency.svg"), chart).unwrap();
    } else {
        let _ = std::fs::remove_file(dir.join("handoff_latency.svg"));
    }
    println!(
        "\nwrote {}/{{results.csv, w2_throughput_vs_threads.svg, handoff_latency.svg}}; total {:.0} s; load average now {}",
        dir.display(),
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
