//! What the run prints: the tables, their legend, and the target checks (issue 6).

use crate::Row;
use crate::peers::{ALL, Impl};
use crate::w4::W4Row;

/// µs → a short human figure.
pub fn t(us: f64) -> String {
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

pub fn row_header() -> String {
    format!(
        "{:<4} {:<15} {:>7} {:>8} {:>15} {:>24} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {:>4}",
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

pub fn row_line(r: &Row) -> String {
    format!(
        "{:<4} {:<15} {:>7} {:>8.0} {:>15} {:>24} {:>6.2} {:>6.2}{} {:>6.2} {:>6.2} {:>6.3} {:>8} {:>8} {:>6} {:>4}",
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

pub fn w4_header() -> String {
    format!(
        "{:<15} {:>9} {:>9} {:>7} {:>8} {:>11} {:>11} {:>6} {:>8} {:>4}",
        "impl", "calls/s", "cmds/s", "PING/s", "conns/s", "rCPU ms/s", "pCPU ms/s", "early", "drain", "err"
    )
}

pub fn w4_line(r: &W4Row) -> String {
    format!(
        "{:<15} {:>9.1} {:>9.1} {:>7.2} {:>8.1} {:>11.1} {:>11.1} {:>6} {:>7.2}s {:>4}",
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

/// What each column means, printed after the tables.
pub fn print_legend() {
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
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// The check that workload `wl` makes at least `factor` times `peer`'s acquisitions/s.
pub fn times_check(wl: &str, factor: f64, peer: &str, ours: f64, theirs: f64) -> String {
    format!(
        "{} {wl} acq/s ≥ {factor}× {peer}: {ours:.0} vs {factor} × {theirs:.0} = {:.0} ({:.1}×)",
        verdict(ours >= factor * theirs),
        factor * theirs,
        ours / theirs
    )
}

pub fn targets(rows: &[Row], w4: &[W4Row]) -> Vec<String> {
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
                    out.push(times_check("W2", 3.0, p.name(), o.acq_per_s, r.acq_per_s));
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

/// Of the rows of several runs, for each workload, implementation and shape, the run
/// whose acq/s is the median (the lower middle one of an even count), in first-seen
/// order.
pub fn median_runs(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for r in rows {
        match groups.iter_mut().find(|g| {
            let f = &g[0];
            (f.workload, f.imp, f.procs, f.threads) == (r.workload, r.imp, r.procs, r.threads)
        }) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            g.sort_by(|a, b| a.acq_per_s.total_cmp(&b.acq_per_s));
            let mid = (g.len() - 1) / 2;
            g.swap_remove(mid)
        })
        .collect()
}
