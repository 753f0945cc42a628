//! Stacked bar charts as inline SVG, drawn on the server: no script, no
//! library, and each bar says its numbers in a `<title>` the browser shows
//! on hover.

use maud::{Markup, html};

use super::usage::{Breakdown, Series};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 12.0;
const COLOURS: [&str; 8] = ["#0b5cad", "#d9822b", "#1c6b33", "#a1261b", "#6b3fa0", "#00838f", "#8a5a00", "#5b6673"];

/// A chart of one measure of each series, stacked per period, with a legend
/// and a table of the totals after it.
pub fn stacked(
    id: &str,
    title: &str,
    data: &Breakdown,
    measure: fn(&Series) -> &[u64],
    format: fn(u64) -> String,
) -> Markup {
    let periods = data.periods.len().max(1);
    let tallest = (0..periods)
        .map(|i| data.series.iter().map(|s| measure(s).get(i).copied().unwrap_or(0)).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let bars = bars(data, measure, tallest, format);
    let slot = (WIDTH - LEFT) / periods as f64;
    html! {
        figure.chart id=(id) {
            figcaption { strong { (title) } }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) stroke="#d9dee4" {}
                line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) stroke="#d9dee4" {}
                text x=(LEFT - 6.0) y=(TOP + 10.0) text-anchor="end" font-size="11" { (format(tallest)) }
                text x=(LEFT - 6.0) y=(HEIGHT - BOTTOM) text-anchor="end" font-size="11" { "0" }
                @for bar in &bars {
                    rect class="bar" x=(bar.x) y=(bar.y) width=(bar.width) height=(bar.height) fill=(bar.colour) {
                        title { (bar.label) }
                    }
                }
                @for (i, start) in data.periods.iter().enumerate() {
                    @if let Some(anchor) = label_anchor(i, periods) {
                        text x=(LEFT + slot * (i as f64 + 0.5)) y=(HEIGHT - 8.0) font-size="11" text-anchor=(anchor) { (day_label(*start)) }
                    }
                }
            }
            p.legend {
                @for (n, series) in data.series.iter().enumerate() {
                    span { i class={ "c" (n % COLOURS.len()) } {} (series.name) }
                }
            }
            @if data.series.is_empty() { p.muted { "No usage in this period yet." } }
        }
    }
}

struct Bar {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    colour: &'static str,
    label: String,
}

/// Each series's bar segment per period, stacked from the axis up.
fn bars(data: &Breakdown, measure: fn(&Series) -> &[u64], tallest: u64, format: fn(u64) -> String) -> Vec<Bar> {
    let periods = data.periods.len().max(1);
    let plot_height = HEIGHT - BOTTOM - TOP;
    let slot = (WIDTH - LEFT) / periods as f64;
    let mut bars = Vec::new();
    for (i, start) in data.periods.iter().enumerate() {
        let mut base = HEIGHT - BOTTOM;
        for (n, series) in data.series.iter().enumerate() {
            let value = measure(series).get(i).copied().unwrap_or(0);
            if value == 0 {
                continue;
            }
            let height = value as f64 / tallest as f64 * plot_height;
            base -= height;
            bars.push(Bar {
                x: LEFT + slot * i as f64 + slot * 0.15,
                y: base,
                width: slot * 0.7,
                height,
                colour: COLOURS[n % COLOURS.len()],
                label: format!("{} · {}: {}", series.name, super::page::when(*start), format(value)),
            });
        }
    }
    bars
}

/// The first, middle and last periods are labelled, each kept inside the chart.
fn label_anchor(i: usize, periods: usize) -> Option<&'static str> {
    match i {
        0 => Some("start"),
        i if i + 1 == periods => Some("end"),
        i if i == periods / 2 => Some("middle"),
        _ => None,
    }
}

fn day_label(ms: i64) -> String {
    let full = super::page::when(ms);
    // "YYYY-MM-DD HH:MM:SS UTC" → "MM-DD HH:MM"
    full.get(5..16).unwrap_or(&full).to_string()
}
