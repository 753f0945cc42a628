//! Markdown reports, ready to paste into docs/benchmarks.md.

use std::fmt::Write;
use std::path::Path;

use super::{ReportError, fmt_ms, write_file};
use crate::compare::CompareSummary;
use crate::stats::Percentiles;
use crate::summary::RunSummary;

fn pct_row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} |",
        fmt_ms(p.p50_ms),
        fmt_ms(p.p90_ms),
        fmt_ms(p.p99_ms),
        fmt_ms(p.p999_ms),
        fmt_ms(p.max_ms),
        p.count
    );
}

pub fn render(s: &RunSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", s.label);
    let _ = writeln!(out, "| setting | value |\n|---|---|");
    let _ = writeln!(out, "| targets | {} |", s.targets.join(", "));
    let _ = writeln!(out, "| mode | {}-loop |", s.mode);
    let _ = writeln!(out, "| connections | {} |", s.connections);
    let _ = writeln!(
        out,
        "| protocol | {}{} |",
        if s.http2 { "HTTP/2" } else { "HTTP/1.1" },
        if s.keepalive { "" } else { ", no keep-alive" }
    );
    if let Some(r) = s.target_rate {
        let _ = writeln!(out, "| target rate | {r:.1} req/s |");
    }
    if let Some(schedule) = s.schedule.as_ref().filter(|sc| !sc.is_constant()) {
        let _ = writeln!(out, "| schedule | {} |", schedule.describe());
    }
    let _ = writeln!(out, "| achieved rate | {:.1} req/s |", s.achieved_rate);
    match s.scheduled_requests {
        Some(planned) => {
            let _ = writeln!(out, "| requests | {} of {planned} scheduled, in {:.2}s |", s.requests, s.elapsed_s);
        }
        None => {
            let _ = writeln!(out, "| requests | {} in {:.2}s |", s.requests, s.elapsed_s);
        }
    }
    let _ = writeln!(out, "| failed | {} ({}) |", s.failed, crate::summary::percent(s.error_rate()));
    let _ = writeln!(out, "\n| latency | p50 | p90 | p99 | p99.9 | max | n |\n|---|---|---|---|---|---|---|");
    pct_row(&mut out, "request", &s.latency);
    if let Some(l) = &s.llm {
        pct_row(&mut out, "TTFT", &l.ttft);
        pct_row(&mut out, "inter-token", &l.inter_token);
        let _ = writeln!(
            out,
            "\nLLM ({}): {} streams, {} incomplete, {} output tokens, {:.1} tokens/s overall, decode p50 {:.1} tokens/s.",
            l.format, l.streams, l.incomplete_streams, l.output_tokens, l.output_tokens_per_second, l.decode_tps_p50
        );
    }
    let _ = writeln!(out, "\n| status | count |\n|---|---|");
    for (k, v) in &s.status_codes {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    for (k, v) in &s.errors {
        let _ = writeln!(out, "| error: {k} | {v} |");
    }
    out
}

pub fn render_compare(c: &CompareSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Compare: A = {}, B = {}\n", c.label_a, c.label_b);
    let _ = writeln!(out, "Rounds alternate the order (A B, B A, ...). Ratios are B / A.\n");
    let _ = writeln!(
        out,
        "| round | first | A req/s | B req/s | A p50 | B p50 | A p99 | B p99 | B/A rate | B/A p50 | B/A p99 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &c.rounds {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            r.round,
            r.first,
            r.a.achieved_rate,
            r.b.achieved_rate,
            fmt_ms(r.a.latency.p50_ms),
            fmt_ms(r.b.latency.p50_ms),
            fmt_ms(r.a.latency.p99_ms),
            fmt_ms(r.b.latency.p99_ms),
            r.ratios.achieved_rate,
            r.ratios.p50,
            r.ratios.p99
        );
    }
    let m = &c.median;
    let _ = writeln!(
        out,
        "\n**Median B/A**: rate {:.3}, mean latency {:.3}, p50 {:.3}, p90 {:.3}, p99 {:.3}.",
        m.achieved_rate, m.mean, m.p50, m.p90, m.p99
    );
    out
}

pub fn write(path: &Path, s: &RunSummary) -> Result<(), ReportError> {
    write_file(path, &render(s))
}

pub fn write_compare(path: &Path, c: &CompareSummary) -> Result<(), ReportError> {
    write_file(path, &render_compare(c))
}
