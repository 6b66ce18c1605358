//! Two hand-written SVG charts: a line chart on log-log axes and a CDF on a log x axis.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

pub const COLORS: [&str; 6] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#7f7f7f"];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn header(title: &str, x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>
"##,
        (LEFT + W - RIGHT) / 2.0,
        esc(title),
        (LEFT + W - RIGHT) / 2.0,
        H - 14.0,
        esc(x_label),
        (TOP + H - BOTTOM) / 2.0,
        esc(y_label)
    );
    s
}

fn frame(s: &mut String) {
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
}

fn legend(s: &mut String, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 20.0;
        let x = W - RIGHT + 14.0;
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="2.5"/><text x="{}" y="{}">{}</text>"##,
            x + 22.0,
            x + 28.0,
            y + 4.0,
            esc(n)
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

/// Decade ticks between `lo` and `hi` (both > 0), with 2× and 5× minor ticks.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, bool)> {
    let mut t = Vec::new();
    let mut d = 10f64.powf(lo.log10().floor());
    while d <= hi * 1.0001 {
        for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let v = d * m;
            if v >= lo * 0.9999 && v <= hi * 1.0001 {
                t.push((v, major));
            }
        }
        d *= 10.0;
    }
    t
}

/// Acquisitions/s against thread count, both on log axes.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], x_ticks: &[f64]) -> String {
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.1 > 0.0 && p.1.is_finite());
    let (mut ymin, mut ymax) = (f64::MAX, f64::MIN);
    for p in pts {
        ymin = ymin.min(p.1);
        ymax = ymax.max(p.1);
    }
    if ymin > ymax {
        (ymin, ymax) = (1.0, 10.0);
    }
    let (ylo, yhi) =
        (10f64.powf(ymin.log10().floor()), 10f64.powf(ymax.log10().ceil().max(ymin.log10().floor() + 1.0)));
    let (xlo, xhi) =
        (x_ticks.iter().cloned().fold(f64::MAX, f64::min), x_ticks.iter().cloned().fold(f64::MIN, f64::max));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + 10.0 + (pw - 20.0) * (x.log2() - xlo.log2()) / (xhi.log2() - xlo.log2()).max(1e-9);
    let py = |y: f64| TOP + ph - ph * (y.log10() - ylo.log10()) / (yhi.log10() - ylo.log10());
    let mut s = header(title, x_label, y_label);
    for (v, major) in log_ticks(ylo, yhi) {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="{}"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            if major { "#ccc" } else { "#eee" },
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    for &v in x_ticks {
        let x = px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0,
            fmt_num(v)
        );
    }
    frame(&mut s);
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> =
            se.points.iter().filter(|p| p.1 > 0.0 && p.1.is_finite()).map(|&(x, y)| (px(x), py(y))).collect();
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(s, r##"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2.5"/>"##, path.join(" "));
        for (x, y) in pts {
            let _ = writeln!(s, r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{c}"/>"##);
        }
    }
    legend(&mut s, &series.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    s.push_str("</svg>\n");
    s
}

/// Empirical CDFs of latencies (µs, log x axis).
pub fn cdf_chart(title: &str, x_label: &str, samples: &[(String, Vec<f64>)]) -> String {
    let all = samples.iter().flat_map(|(_, v)| v.iter()).filter(|v| **v > 0.0);
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for &v in all {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (lo, hi) = (1.0, 1000.0);
    }
    let (xlo, xhi) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + pw * (x.max(xlo).log10() - xlo.log10()) / (xhi.log10() - xlo.log10());
    let py = |y: f64| TOP + ph - ph * y;
    let mut s = header(title, x_label, "fraction of handoffs ≤ x");
    for i in 0..=10 {
        let f = i as f64 / 10.0;
        let y = py(f);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="{}"/><text x="{}" y="{}" text-anchor="end">{f:.1}</text>"##,
            W - RIGHT,
            if i % 5 == 0 { "#ccc" } else { "#eee" },
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (v, major) in log_ticks(xlo, xhi) {
        let x = px(v);
        let label = if v >= 1e6 {
            format!("{} s", v / 1e6)
        } else if v >= 1e3 {
            format!("{} ms", v / 1e3)
        } else {
            format!("{v} µs")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="{}"/>{}"##,
            H - BOTTOM,
            if major { "#ccc" } else { "#eee" },
            if major {
                format!(r##"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"##, H - BOTTOM + 18.0)
            } else {
                String::new()
            }
        );
    }
    frame(&mut s);
    let mut names = Vec::new();
    for (i, (name, v)) in samples.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        names.push(if v.is_empty() { format!("{name} (no handoffs)") } else { format!("{name} (n={})", v.len()) });
        if v.is_empty() {
            continue;
        }
        // At most ~600 steps per curve.
        let step = (v.len() / 600).max(1);
        let mut pts = Vec::new();
        let n = v.len() as f64;
        let mut prev_y = py(0.0);
        for (k, &x) in v.iter().enumerate().step_by(step) {
            let (xx, yy) = (px(x), py((k + 1) as f64 / n));
            pts.push(format!("{xx:.1},{prev_y:.1} {xx:.1},{yy:.1}"));
            prev_y = yy;
        }
        let last = px(*v.last().unwrap());
        pts.push(format!("{last:.1},{prev_y:.1} {last:.1},{:.1}", py(1.0)));
        let _ = writeln!(s, r##"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"##, pts.join(" "));
    }
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}
