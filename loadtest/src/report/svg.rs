//! Hand-written SVG chart (no font or rendering dependencies): latency percentiles per
//! second on top, throughput and errors per second (with the target rate, ramps drawn as
//! ramps) below, and for LLM streaming runs time to first token and output tokens per
//! second. Every y axis ends above its highest value, so a peak never sits on the frame.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use super::{ReportError, write_file};
use crate::stats::TimelinePoint;
use crate::summary::RunSummary;

const W: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
/// Top of the first panel, height of a panel, and the distance between panel tops.
const FIRST_TOP: f64 = 70.0;
const PANEL_H: f64 = 220.0;
const PANEL_STEP: f64 = 280.0;

/// A round axis maximum (1, 2 or 5 times a power of ten) at or above `v`.
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|c| *c >= v).unwrap_or(10.0 * mag)
}

/// The y-axis maximum for data peaking at `v`: a round value (1, 1.2, 1.5, 2, 2.5, 3, 4,
/// 5, 6 or 8 times a power of ten) at least 10% above `v`, so the peak is never the frame.
pub fn axis_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let want = v * 1.1;
    let mag = 10f64.powf(want.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= want * (1.0 - 1e-12))
        .unwrap_or(10.0 * mag)
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
    fn new(index: usize, y_max: f64, x_max: f64) -> Panel {
        Panel { top: FIRST_TOP + PANEL_STEP * index as f64, height: PANEL_H, y_max, x_max }
    }

    fn x(&self, sec: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * sec.min(self.x_max) / self.x_max
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

    /// One series, a point per second (seconds without a value are skipped).
    fn line(&self, out: &mut String, pts: &[TimelinePoint], f: impl Fn(&TimelinePoint) -> Option<f64>, color: &str) {
        let path: Vec<(f64, f64)> = pts.iter().filter_map(|p| Some((p.second as f64 + 0.5, f(p)?))).collect();
        self.polyline(out, &path, color, "");
    }

    fn polyline(&self, out: &mut String, points: &[(f64, f64)], color: &str, extra: &str) {
        let path: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v))).collect();
        if !path.is_empty() {
            let _ = writeln!(
                out,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2"{extra} points="{}"/>"##,
                path.join(" ")
            );
        }
    }
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
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

fn peak(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, f64::max)
}

pub fn render(s: &RunSummary) -> String {
    let pts = &s.timeline;
    let x_max = (pts.len() as f64).max(s.elapsed_s.ceil()).max(1.0);
    let panels = if s.llm.is_some() { 4 } else { 2 };
    let height = FIRST_TOP + PANEL_STEP * panels as f64 - 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif">"##
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
    if let Some(schedule) = s.schedule.as_ref().filter(|sc| !sc.is_constant()) {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="40" font-size="12" text-anchor="middle" fill="#555">schedule: {}</text>"##,
            W / 2.0,
            esc(&schedule.describe())
        );
    }

    let lat = Panel::new(0, axis_max(peak(pts.iter().map(|p| p.p99_ms))), x_max);
    let _ = writeln!(out, r##"<g id="latency">"##);
    lat.axes(&mut out, "Latency per second", "ms");
    lat.line(&mut out, pts, |p| Some(p.p50_ms), "#1f77b4");
    lat.line(&mut out, pts, |p| Some(p.p90_ms), "#ff7f0e");
    lat.line(&mut out, pts, |p| Some(p.p99_ms), "#d62728");
    legend(&mut out, W - 260.0, lat.top - 8.0, &[("p50", "#1f77b4"), ("p90", "#ff7f0e"), ("p99", "#d62728")]);
    let _ = writeln!(out, "</g>");

    // The target line: the schedule's rate at each moment (a ramp rises), or a flat line
    // for reports written before schedules were recorded.
    let target: Vec<(f64, f64)> = match (&s.schedule, s.target_rate) {
        (Some(schedule), _) => schedule.rate_line(Duration::from_secs_f64(x_max)),
        (None, Some(r)) => vec![(0.0, r), (x_max, r)],
        (None, None) => Vec::new(),
    };
    let rps_peak = peak(pts.iter().map(|p| p.requests as f64).chain(target.iter().map(|(_, r)| *r)));
    let thr = Panel::new(1, axis_max(rps_peak), x_max);
    let _ = writeln!(out, r##"<g id="throughput">"##);
    thr.axes(&mut out, "Throughput per second", "/s");
    thr.polyline(&mut out, &target, "#999", r##" stroke-dasharray="6 4" class="target""##);
    thr.line(&mut out, pts, |p| Some(p.requests as f64), "#2ca02c");
    thr.line(&mut out, pts, |p| Some(p.errors as f64), "#d62728");
    legend(&mut out, W - 260.0, thr.top - 8.0, &[("requests", "#2ca02c"), ("errors", "#d62728"), ("target", "#999")]);
    let _ = writeln!(out, "</g>");

    if let Some(llm) = &s.llm {
        let ttft_peak = peak(pts.iter().filter_map(|p| p.ttft_p99_ms));
        let ttft = Panel::new(2, axis_max(ttft_peak), x_max);
        let _ = writeln!(out, r##"<g id="ttft">"##);
        ttft.axes(&mut out, "Time to first token per second", "ms");
        ttft.line(&mut out, pts, |p| p.ttft_p50_ms, "#1f77b4");
        ttft.line(&mut out, pts, |p| p.ttft_p99_ms, "#d62728");
        legend(&mut out, W - 260.0, ttft.top - 8.0, &[("p50", "#1f77b4"), ("p99", "#d62728")]);
        let _ = writeln!(out, "</g>");

        let tokens_peak = peak(pts.iter().map(|p| p.tokens as f64).chain([llm.output_tokens_per_second]));
        let tokens = Panel::new(3, axis_max(tokens_peak), x_max);
        let _ = writeln!(out, r##"<g id="tokens">"##);
        tokens.axes(&mut out, "Output tokens per second", "/s");
        let mean = llm.output_tokens_per_second;
        tokens.polyline(&mut out, &[(0.0, mean), (x_max, mean)], "#999", r##" stroke-dasharray="6 4""##);
        tokens.line(&mut out, pts, |p| Some(p.tokens as f64), "#9467bd");
        legend(&mut out, W - 260.0, tokens.top - 8.0, &[("tokens", "#9467bd"), ("run mean", "#999")]);
        let _ = writeln!(out, "</g>");
    }
    let _ = writeln!(out, "</svg>");
    out
}

pub fn write(path: &Path, s: &RunSummary) -> Result<(), ReportError> {
    write_file(path, &render(s))
}
