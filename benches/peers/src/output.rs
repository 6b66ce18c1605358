//! The files a run writes: `results.csv` (csv crate) and two SVG plots (plotters).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::Row;
use crate::w4::W4Row;
use crate::w5::{self, NaRow};

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x7f, 0x7f, 0x7f),
];
const SIZE: (u32, u32) = (760, 460);
const TITLE: (&str, u32) = ("sans-serif", 20);
const TEXT: (&str, u32) = ("sans-serif", 15);

/// One line of `results.csv`: a W1–W3/W5 run, a W4 run (its own columns), or a run
/// that could not be measured (only `note`).
#[derive(Serialize, Default)]
struct CsvRow<'a> {
    workload: &'a str,
    #[serde(rename = "impl")]
    imp: &'a str,
    procs: u32,
    threads: u32,
    secs: f64,
    acquisitions: Option<u64>,
    acq_per_s: Option<f64>,
    handoffs: Option<usize>,
    handoff_p50_us: Option<f64>,
    handoff_p99_us: Option<f64>,
    wait_p50_us: Option<f64>,
    wait_p99_us: Option<f64>,
    wait_max_us: Option<f64>,
    min_share: Option<f64>,
    round_trips_per_acq: Option<f64>,
    round_trips_source: Option<&'a str>,
    redis_cmds_per_acq: Option<f64>,
    redis_calls_per_acq: Option<f64>,
    new_conns_per_acq: Option<f64>,
    redis_cpu_us_per_acq: Option<f64>,
    proc_cpu_us_per_acq: Option<f64>,
    ping_p50_us: Option<f64>,
    errors: u64,
    w4_window_s: Option<f64>,
    w4_calls_per_s: Option<f64>,
    w4_cmds_per_s: Option<f64>,
    w4_pings_per_s: Option<f64>,
    w4_conns_per_s: Option<f64>,
    w4_redis_cpu_ms_per_s: Option<f64>,
    w4_proc_cpu_ms_per_s: Option<f64>,
    w4_acquired_before_release: Option<usize>,
    w4_drain_s: Option<f64>,
    max_share: Option<f64>,
    msgs_per_release: Option<f64>,
    msgs_per_release_max_proc: Option<f64>,
    grants_per_acq: Option<f64>,
    note: Option<&'a str>,
}

/// Every run, one line each, figures unrounded.
pub fn write_csv(path: &Path, rows: &[Row], w4: &[W4Row], na: &[NaRow]) -> Result<(), Box<dyn Error>> {
    let mut out = csv::Writer::from_path(path)?;
    for r in rows {
        out.serialize(CsvRow {
            workload: r.workload,
            imp: r.imp.name(),
            procs: r.procs,
            threads: r.threads,
            secs: r.secs,
            acquisitions: Some(r.acquisitions),
            acq_per_s: Some(r.acq_per_s),
            handoffs: Some(r.handoffs),
            handoff_p50_us: Some(r.handoff.0),
            handoff_p99_us: Some(r.handoff.1),
            wait_p50_us: Some(r.wait.0),
            wait_p99_us: Some(r.wait.1),
            wait_max_us: Some(r.wait.2),
            min_share: Some(r.min_share),
            round_trips_per_acq: Some(r.rt_per_acq),
            round_trips_source: Some(r.rt_source),
            redis_cmds_per_acq: Some(r.cmds_per_acq),
            redis_calls_per_acq: Some(r.calls_per_acq),
            new_conns_per_acq: Some(r.conns_per_acq),
            redis_cpu_us_per_acq: Some(r.rcpu_us),
            proc_cpu_us_per_acq: Some(r.pcpu_us),
            ping_p50_us: Some(r.ping_us),
            errors: r.errors,
            max_share: Some(r.max_share),
            msgs_per_release: w5::msgs_per_release(r),
            msgs_per_release_max_proc: w5::msgs_per_release_max_proc(r),
            grants_per_acq: w5::grants_per_acq(r),
            ..CsvRow::default()
        })?;
    }
    for n in na {
        out.serialize(CsvRow {
            workload: n.workload,
            imp: n.imp.name(),
            procs: n.procs,
            threads: n.threads,
            secs: n.secs,
            note: Some(&n.reason),
            ..CsvRow::default()
        })?;
    }
    for r in w4 {
        out.serialize(CsvRow {
            workload: "W4",
            imp: r.imp.name(),
            procs: 1,
            threads: r.waiters,
            secs: r.window_s,
            errors: r.errors,
            w4_window_s: Some(r.window_s),
            w4_calls_per_s: Some(r.calls_per_s),
            w4_cmds_per_s: Some(r.cmds_per_s),
            w4_pings_per_s: Some(r.pings_per_s),
            w4_conns_per_s: Some(r.conns_per_s),
            w4_redis_cpu_ms_per_s: Some(r.rcpu_ms_per_s),
            w4_proc_cpu_ms_per_s: Some(r.pcpu_ms_per_s),
            w4_acquired_before_release: Some(r.acquired_early),
            w4_drain_s: Some(r.drain_s),
            ..CsvRow::default()
        })?;
    }
    out.flush()?;
    Ok(())
}

/// Whole decades around the positive, finite `values` (1..10 when there are none).
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| *v > 0.0 && v.is_finite()).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
    (10f64.powf(lo), 10f64.powf(hi.max(lo + 1.0)))
}

/// `1.5k`, `20k`, `2M`.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

/// Acquisitions/s against thread count, one line per implementation, both axes log.
pub fn throughput_chart(path: &Path, series: &[(&str, Vec<(f64, f64)>)]) -> Result<(), Box<dyn Error>> {
    let axes = Axes {
        caption: "W2 worker pool: throughput vs threads",
        x_desc: "threads (one process; 100 µs hold, 0.5–1.5 ms work outside the lock)",
        x_keys: &[1.0, 4.0, 8.0, 16.0, 64.0],
        y_desc: "acquisitions / s",
        legend: SeriesLabelPosition::LowerRight,
    };
    line_chart(path, &axes, series)
}

/// What a [`line_chart`] shows: its title, the x axis's description and labelled
/// points, the y axis's description, where the legend goes.
pub struct Axes<'a> {
    pub caption: &'a str,
    pub x_desc: &'a str,
    pub x_keys: &'a [f64],
    pub y_desc: &'a str,
    pub legend: SeriesLabelPosition,
}

/// One line per implementation, both axes log; the x axis spans `axes.x_keys`.
pub fn line_chart(path: &Path, axes: &Axes, series: &[(&str, Vec<(f64, f64)>)]) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = decades(series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1)));
    let (x_lo, x_hi) = (axes.x_keys[0] * 0.9, axes.x_keys[axes.x_keys.len() - 1] * 1.1);
    let mut chart = ChartBuilder::on(&root)
        .caption(axes.caption, TITLE)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo..x_hi).log_scale().with_key_points(axes.x_keys.to_vec()), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .label_style(TEXT)
        .axis_desc_style(TEXT)
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| short(*v))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1 > 0.0 && p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(axes.legend.clone())
        .label_font(TEXT)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Empirical CDFs of handoff latencies (µs, log x axis), one step line per
/// implementation.
pub fn handoff_cdf(path: &Path, samples: &[(&str, Vec<f64>)]) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = decades(samples.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut chart = ChartBuilder::on(&root)
        .caption("W2 (8 threads): handoff latency, CDF", TITLE)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .label_style(TEXT)
        .axis_desc_style(TEXT)
        .x_desc("next holder's return − release start")
        .y_desc("fraction of handoffs ≤ x")
        .x_label_formatter(&|v| match *v {
            v if v >= 1e6 => format!("{} s", v / 1e6),
            v if v >= 1e3 => format!("{} ms", v / 1e3),
            v => format!("{v} µs"),
        })
        .draw()?;
    for (i, (name, v)) in samples.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let label = if v.is_empty() { format!("{name} (no handoffs)") } else { format!("{name} (n={})", v.len()) };
        // At most ~600 steps per curve.
        let (n, step) = (v.len() as f64, (v.len() / 600).max(1));
        let mut steps = Vec::new();
        for (k, &x) in v.iter().enumerate().step_by(step) {
            let x = x.max(lo);
            steps.push((x, steps.last().map_or(0.0, |p: &(f64, f64)| p.1)));
            steps.push((x, (k + 1) as f64 / n));
        }
        if let Some(&last) = v.last() {
            steps.push((last.max(lo), 1.0));
        }
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(TEXT)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
