//! W5: single-threaded processes, each with its own client of the implementation (the
//! W3 machinery: `bench::measure` re-runs this program with `--child`). 8 processes
//! with the sleep (`W5`) and without (`W5t`), and the fleet curve: W5 at 2 / 8 / 32 /
//! 64 processes. This module adds what W5 prints beyond W3's columns (redis-mutex's
//! pub/sub messages per release and grants per acquisition), the runs that could not
//! be measured, the target checks and the fleet plots.

use std::error::Error;
use std::path::Path;

use plotters::prelude::SeriesLabelPosition;

use crate::Row;
use crate::output::{Axes, line_chart};
use crate::peers::{ALL, GRANTS, Impl, MESSAGES};
use crate::report::{row_header, row_line, t, times_check, verdict};

/// Processes of the W5 rows (with and without the sleep).
pub const PROCS: u32 = 8;
/// Processes of the fleet curve (with the sleep); the 8-process point is W5's row.
pub const FLEET: [u32; 4] = [2, 8, 32, 64];
/// The files [`plots`] writes.
pub const PLOTS: [&str; 2] = ["w5_fleet_throughput.svg", "w5_fleet_redis_cpu.svg"];

/// A run that could not be measured: a worker process failed, or did not get ready or
/// finish in time. Printed and written as n/a with the reason.
pub struct NaRow {
    pub workload: &'static str,
    pub imp: Impl,
    pub procs: u32,
    pub threads: u32,
    pub secs: f64,
    pub reason: String,
}

/// The runs `(workload, processes, threads, think)`: W5 with the sleep and without
/// (`W5t`), then the fleet's other points (its 8-process point is W5's when both run).
pub fn plan(w5: bool, fleet: bool) -> Vec<(&'static str, u32, u32, bool)> {
    let mut plan = Vec::new();
    if w5 {
        plan.extend([("W5", PROCS, 1, true), ("W5t", PROCS, 1, false)]);
    }
    if fleet {
        plan.extend(FLEET.into_iter().filter(|&n| !(w5 && n == PROCS)).map(|n| ("W5", n, 1, true)));
    }
    plan
}

/// Pub/sub messages received by all the run's clients, per release (= acquisition).
pub fn msgs_per_release(r: &Row) -> Option<f64> {
    r.counter(MESSAGES).map(|m| m as f64 / r.acquisitions as f64)
}

/// The most one process received, per release of the whole run.
pub fn msgs_per_release_max_proc(r: &Row) -> Option<f64> {
    let most = r.counters.iter().filter_map(|c| c.get(MESSAGES)).max()?;
    Some(*most as f64 / r.acquisitions as f64)
}

/// Acquisitions granted by another client's release, per acquisition.
pub fn grants_per_acq(r: &Row) -> Option<f64> {
    r.counter(GRANTS).map(|g| g as f64 / r.acquisitions as f64)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

pub fn header() -> String {
    format!("{} {:>7} {:>7} {:>9}", row_header(), "msg/rel", "max/p", "grant/acq")
}

/// W3's columns, then messages per release (all clients; the most of one process) and
/// grants per acquisition.
pub fn line(r: &Row) -> String {
    format!(
        "{} {:>7} {:>7} {:>9}",
        row_line(r),
        opt(msgs_per_release(r)),
        opt(msgs_per_release_max_proc(r)),
        opt(grants_per_acq(r))
    )
}

pub fn na_line(n: &NaRow) -> String {
    let label = if n.procs == 1 { format!("{} thr", n.threads) } else { format!("{}p×{}t", n.procs, n.threads) };
    format!("{:<4} {:<15} {:>7}      n/a: {}", n.workload, n.imp.name(), label, n.reason)
}

pub fn print_legend() {
    println!(
        "\nW5: 8 processes × 1 thread, each its own client, with the 0.5–1.5 ms sleep; W5t: the same, tight loop;\n\
         \x20 the fleet curve is W5 at 2 / 8 / 32 / 64 processes. share: smallest per-process share (the target also\n\
         \x20 needs the largest, printed there); msg/rel: pub/sub messages received by all clients (redis-mutex's\n\
         \x20 Stats::messages_received, summed) / releases in the run; max/p: the most one process received / releases;\n\
         \x20 grant/acq: Stats::grants (acquisitions granted by another client's release) / acquisitions"
    );
}

/// The cross-process issue's targets, against the same run.
pub fn targets(rows: &[Row], na: &[NaRow]) -> Vec<String> {
    let mut out = Vec::new();
    let find =
        |wl: &str, imp: Impl, procs: u32| rows.iter().find(|r| r.workload == wl && r.imp == imp && r.procs == procs);
    // A missing comparison says why: not run, or n/a.
    let missing = |wl: &str, imp: Impl, procs: u32| {
        na.iter().find(|n| n.workload == wl && n.imp == imp && n.procs == procs).map_or_else(
            || format!("skip: no {} {wl} {procs}-process row", imp.name()),
            |n| format!("n/a: {} {wl} {procs} processes: {}", imp.name(), n.reason),
        )
    };
    let fair = |o: &Row| {
        format!(
            "{} {} {} processes: every process within 10% of its fair share: shares × processes {:.2}..{:.2}",
            verdict(o.min_share >= 0.9 && o.max_share <= 1.1),
            o.workload,
            o.procs,
            o.min_share,
            o.max_share
        )
    };
    match find("W5", Impl::RedisMutex, PROCS) {
        Some(o) => {
            match find("W5", Impl::Naive, PROCS) {
                Some(n) => {
                    out.push(format!(
                        "{} W5 acq/s ≥ 1.3× naive: {:.0} vs 1.3 × {:.0} = {:.0} ({:.2}×)",
                        verdict(o.acq_per_s >= 1.3 * n.acq_per_s),
                        o.acq_per_s,
                        n.acq_per_s,
                        1.3 * n.acq_per_s,
                        o.acq_per_s / n.acq_per_s
                    ));
                    out.push(format!(
                        "{} W5 Redis CPU per acquisition ≤ naive's: {} vs {}",
                        verdict(o.rcpu_us <= n.rcpu_us),
                        t(o.rcpu_us),
                        t(n.rcpu_us)
                    ));
                }
                None => out.push(missing("W5", Impl::Naive, PROCS)),
            }
            for p in ALL.into_iter().filter(|p| p.is_crate_peer()) {
                match find("W5", p, PROCS) {
                    Some(r) => out.push(times_check("W5", 3.0, p.name(), o.acq_per_s, r.acq_per_s)),
                    None => out.push(missing("W5", p, PROCS)),
                }
            }
            out.push(format!(
                "{} W5 handoff p50 ≤ 1.6× PING p50 (same run): {} vs 1.6 × {} = {}",
                verdict(o.handoff.0 <= 1.6 * o.ping_us),
                t(o.handoff.0),
                t(o.ping_us),
                t(1.6 * o.ping_us)
            ));
            out.push(format!(
                "{} W5 ≤ 2 client round trips per acquisition: {:.2}",
                verdict(o.rt_per_acq <= 2.0),
                o.rt_per_acq
            ));
            out.push(fair(o));
        }
        None => out.push(missing("W5", Impl::RedisMutex, PROCS)),
    }
    // TLS beside plain TCP (issue 14): at most 1.3× the cost, so at least 1/1.3 the rate.
    for wl in ["W5", "W5t"] {
        if let (Some(plain), Some(tls)) = (find(wl, Impl::RedisMutex, PROCS), find(wl, Impl::RedisMutexTls, PROCS)) {
            out.push(format!(
                "{} {wl} acq/s over TLS ≥ plain TCP's / 1.3: {:.0} vs {:.0} / 1.3 = {:.0} (TLS costs {:.2}× plain)",
                verdict(1.3 * tls.acq_per_s >= plain.acq_per_s),
                tls.acq_per_s,
                plain.acq_per_s,
                plain.acq_per_s / 1.3,
                plain.acq_per_s / tls.acq_per_s
            ));
        }
    }
    match (find("W5t", Impl::RedisMutex, PROCS), find("W5t", Impl::Naive, PROCS)) {
        (Some(o), n) => {
            match n {
                Some(n) => out.push(format!(
                    "{} W5t (tight loop) acq/s ≥ 0.8× naive: {:.0} vs 0.8 × {:.0} = {:.0}",
                    verdict(o.acq_per_s >= 0.8 * n.acq_per_s),
                    o.acq_per_s,
                    n.acq_per_s,
                    0.8 * n.acq_per_s
                )),
                None => out.push(missing("W5t", Impl::Naive, PROCS)),
            }
            out.push(fair(o));
        }
        (None, _) => out.push(missing("W5t", Impl::RedisMutex, PROCS)),
    }
    fleet_targets(&find, &missing, &mut out);
    out
}

fn fleet_targets<'a>(
    find: &dyn Fn(&str, Impl, u32) -> Option<&'a Row>,
    missing: &dyn Fn(&str, Impl, u32) -> String,
    out: &mut Vec<String>,
) {
    // Only when the fleet ran (a point besides the 8-process one).
    if !FLEET.iter().any(|&n| n != PROCS && find("W5", Impl::RedisMutex, n).is_some()) {
        return;
    }
    let at8 = find("W5", Impl::RedisMutex, PROCS);
    for n in FLEET {
        let Some(o) = find("W5", Impl::RedisMutex, n) else {
            out.push(missing("W5", Impl::RedisMutex, n));
            continue;
        };
        let naive = find("W5", Impl::Naive, n);
        if n > PROCS {
            if let Some(e) = at8 {
                out.push(format!(
                    "{} fleet {n} processes: Redis CPU per acquisition ≤ 1.35× that at 8: {} vs 1.35 × {} = {}",
                    verdict(o.rcpu_us <= 1.35 * e.rcpu_us),
                    t(o.rcpu_us),
                    t(e.rcpu_us),
                    t(1.35 * e.rcpu_us)
                ));
            }
            match naive {
                Some(v) => out.push(format!(
                    "{} fleet {n} processes: Redis CPU per acquisition ≤ 0.75× naive's: {} vs 0.75 × {} = {}",
                    verdict(o.rcpu_us <= 0.75 * v.rcpu_us),
                    t(o.rcpu_us),
                    t(v.rcpu_us),
                    t(0.75 * v.rcpu_us)
                )),
                None => out.push(missing("W5", Impl::Naive, n)),
            }
        }
        if let Some(v) = naive {
            out.push(format!(
                "{} fleet {n} processes: acq/s ≥ naive: {:.0} vs {:.0} ({:.2}×)",
                verdict(o.acq_per_s >= v.acq_per_s),
                o.acq_per_s,
                v.acq_per_s,
                o.acq_per_s / v.acq_per_s
            ));
        } else if n <= PROCS {
            out.push(missing("W5", Impl::Naive, n));
        }
        let grants = grants_per_acq(o).map_or(String::new(), |g| format!(", grants per acquisition {g:.2}"));
        match msgs_per_release(o) {
            Some(m) => out.push(format!(
                "{} fleet {n} processes: messages received per release ≤ 2.05: {m:.2}{grants}",
                verdict(m <= 2.05)
            )),
            None => out.push(format!("skip fleet {n} processes: redis-mutex reported no messages_received")),
        }
    }
}

/// The fleet plots: acquisitions/s and Redis CPU per acquisition against processes,
/// one line per implementation (W5 with the sleep). A plot with nothing to show is
/// removed, so no stale figure stays.
pub fn plots(dir: &Path, rows: &[Row], impls: &[Impl]) -> Result<(), Box<dyn Error>> {
    let series = |y: &dyn Fn(&Row) -> f64| -> Vec<(&'static str, Vec<(f64, f64)>)> {
        impls
            .iter()
            .map(|&imp| {
                let mut pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.workload == "W5" && r.imp == imp && FLEET.contains(&r.procs))
                    .map(|r| (f64::from(r.procs), y(r)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (imp.name(), pts)
            })
            .filter(|(_, pts)| pts.len() > 1)
            .collect()
    };
    let x_desc = "single-threaded processes (100 µs hold, 0.5–1.5 ms work outside the lock)";
    let charts = [
        (
            Axes {
                caption: "W5 fleet: throughput vs processes",
                x_desc,
                x_keys: &FLEET.map(f64::from),
                y_desc: "acquisitions / s",
                legend: SeriesLabelPosition::LowerLeft,
            },
            series(&|r| r.acq_per_s),
        ),
        (
            Axes {
                caption: "W5 fleet: Redis CPU per acquisition vs processes",
                x_desc,
                x_keys: &FLEET.map(f64::from),
                y_desc: "Redis CPU µs / acquisition",
                legend: SeriesLabelPosition::UpperLeft,
            },
            series(&|r| r.rcpu_us),
        ),
    ];
    for (name, (axes, series)) in PLOTS.iter().zip(charts) {
        let path = dir.join(name);
        if series.is_empty() {
            let _ = std::fs::remove_file(path);
        } else {
            line_chart(&path, &axes, &series)?;
        }
    }
    Ok(())
}
