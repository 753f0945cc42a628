//! Hand-written SVG chart (no font or rendering dependencies): latency percentiles per
//! second on top, throughput and errors per second below.

use std::fmt::Write;
use std::path::Path;

use super::{ReportError, write_file};
use crate::stats::TimelinePoint;
use crate::summary::RunSummary;

const W: f64 = 900.0;
const H: f64 = 600.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// A round axis maximum (1, 2 or 5 times a power of ten) at or above `v`.
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|c| *c >= v).unwrap_or(10.0 * mag)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

struct Panel {
    top: f64,
    height: f64,
    y_max: f64,
    x_max: f64,
}

impl Panel {
    fn x(&self, sec: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * sec / self.x_max
    }
    fn y(&self, v: f64) -> f64 {
        self.top + self.height - self.height * (v / self.y_max).min(1.0)
    }

    fn axes(&self, out: &mut String, title: &str, unit: &str) {
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"##,
            self.top - 8.0,
            esc(title)
        );
        for i in 0..=4 {
            let v = self.y_max * i as f64 / 4.0;
            let y = self.y(v);
            let _ =
                writeln!(out, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, W - RIGHT);
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{} {unit}</text>"##,
                LEFT - 6.0,
                y + 4.0,
                trim(v)
            );
        }
        let bottom = self.top + self.height;
        let _ =
            writeln!(out, r##"<line x1="{LEFT}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#333"/>"##, W - RIGHT);
        let _ = writeln!(out, r##"<line x1="{LEFT}" y1="{}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>"##, self.top);
        let step = nice_max(self.x_max / 10.0).max(1.0);
        let mut t = 0.0;
        while t <= self.x_max + 1e-9 {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}s</text>"##,
                self.x(t),
                bottom + 14.0,
                trim(t)
            );
            t += step;
        }
    }

    fn line(&self, out: &mut String, pts: &[TimelinePoint], f: impl Fn(&TimelinePoint) -> f64, color: &str) {
        let path: Vec<String> =
            pts.iter().map(|p| format!("{:.1},{:.1}", self.x(p.second as f64 + 0.5), self.y(f(p)))).collect();
        if !path.is_empty() {
            let _ = writeln!(
                out,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
                path.join(" ")
            );
        }
    }
}

fn trim(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn legend(out: &mut String, x: f64, y: f64, items: &[(&str, &str)]) {
    let mut cx = x;
    for (name, color) in items {
        let _ = writeln!(
            out,
            r##"<rect x="{cx:.1}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{:.1}" y="{y:.1}" font-size="11">{name}</text>"##,
            y - 5.0,
            cx + 16.0
        );
        cx += 28.0 + 7.0 * name.len() as f64;
    }
}

pub fn render(s: &RunSummary) -> String {
    let pts = &s.timeline;
    let x_max = (pts.len() as f64).max(s.elapsed_s.ceil()).max(1.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"##
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let rate = s.target_rate.map(|r| format!(", target {r:.0}/s")).unwrap_or_default();
    let _ = writeln!(
        out,
        r##"<text x="{}" y="22" font-size="16" text-anchor="middle">{} ({}-loop, {} connections{rate})</text>"##,
        W / 2.0,
        esc(&s.label),
        s.mode,
        s.connections
    );

    let lat_max = nice_max(pts.iter().map(|p| p.p99_ms).fold(0.0, f64::max));
    let lat = Panel { top: 60.0, height: 220.0, y_max: lat_max, x_max };
    lat.axes(&mut out, "Latency per second", "ms");
    lat.line(&mut out, pts, |p| p.p50_ms, "#1f77b4");
    lat.line(&mut out, pts, |p| p.p90_ms, "#ff7f0e");
    lat.line(&mut out, pts, |p| p.p99_ms, "#d62728");
    legend(&mut out, W - 260.0, 52.0, &[("p50", "#1f77b4"), ("p90", "#ff7f0e"), ("p99", "#d62728")]);

    let rps_max = nice_max(pts.iter().map(|p| p.requests as f64).fold(s.target_rate.unwrap_or(0.0), f64::max));
    let thr = Panel { top: 340.0, height: 220.0, y_max: rps_max, x_max };
    thr.axes(&mut out, "Throughput per second", "/s");
    if let Some(r) = s.target_rate {
        let y = thr.y(r);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#999" stroke-dasharray="6 4"/>"##,
            W - RIGHT
        );
    }
    thr.line(&mut out, pts, |p| p.requests as f64, "#2ca02c");
    thr.line(&mut out, pts, |p| p.errors as f64, "#d62728");
    legend(&mut out, W - 260.0, 332.0, &[("requests", "#2ca02c"), ("errors", "#d62728"), ("target", "#999")]);
    let _ = writeln!(out, "</svg>");
    out
}

pub fn write(path: &Path, s: &RunSummary) -> Result<(), ReportError> {
    write_file(path, &render(s))
}
