//! Plain-text summary printed at the end of a run.

use std::fmt::Write;

use super::fmt_ms;
use crate::compare::CompareSummary;
use crate::stats::Percentiles;
use crate::summary::RunSummary;

fn pct_line(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<14} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  (n={})",
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
    let _ = writeln!(
        out,
        "== {} ({}-loop, {} connections, {}{}) ==",
        s.label,
        s.mode,
        s.connections,
        if s.http2 { "HTTP/2" } else { "HTTP/1.1" },
        if s.keepalive { "" } else { ", no keep-alive" }
    );
    let _ = writeln!(out, "  targets        {}", s.targets.join(", "));
    let target = match (s.target_rate, s.scheduled_requests) {
        (Some(r), Some(planned)) => format!(
            " (target {r:.1}/s; {} of {planned} scheduled, {:.1}%)",
            s.requests,
            100.0 * s.requests as f64 / planned.max(1) as f64
        ),
        (Some(r), None) => format!(" (target {r:.1}/s, {:.1}%)", 100.0 * s.achieved_rate / r.max(1e-9)),
        _ => String::new(),
    };
    let _ = writeln!(out, "  requests       {} in {:.2}s = {:.1}/s{target}", s.requests, s.elapsed_s, s.achieved_rate);
    if let Some(schedule) = s.schedule.as_ref().filter(|sc| !sc.is_constant()) {
        let _ = writeln!(out, "  schedule       {}", schedule.describe());
    }
    let _ =
        writeln!(out, "  failed         {} ({:.2}%)", s.failed, 100.0 * s.failed as f64 / (s.requests.max(1)) as f64);
    let _ = writeln!(out, "  received       {:.2} MiB", s.bytes_received as f64 / (1024.0 * 1024.0));
    pct_line(&mut out, "latency", &s.latency);
    if s.mode == "open" {
        pct_line(&mut out, "send lag", &s.send_lag);
    }
    let codes: Vec<String> = s.status_codes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(out, "  status codes   {}", if codes.is_empty() { "-".into() } else { codes.join(", ") });
    if !s.errors.is_empty() {
        let errs: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(out, "  errors         {}", errs.join(", "));
    }
    if let Some(l) = &s.llm {
        let _ = writeln!(
            out,
            "  LLM ({})       {} streams ({} incomplete), {} output tokens, {:.1} tokens/s overall",
            l.format, l.streams, l.incomplete_streams, l.output_tokens, l.output_tokens_per_second
        );
        pct_line(&mut out, "TTFT", &l.ttft);
        pct_line(&mut out, "inter-token", &l.inter_token);
        let _ = writeln!(
            out,
            "  decode speed   p50 {:.1} tokens/s, p10 {:.1} tokens/s, mean {:.1} tokens/s",
            l.decode_tps_p50, l.decode_tps_p10, l.decode_tps_mean
        );
    }
    out
}

pub fn render_compare(c: &CompareSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== compare: A = {}, B = {} ({} rounds, alternating order) ==",
        c.label_a,
        c.label_b,
        c.rounds.len()
    );
    let _ = writeln!(
        out,
        "  round first  A req/s     B req/s     A p50      B p50      A p99      B p99      B/A rate  B/A p50  B/A p99"
    );
    for r in &c.rounds {
        let _ = writeln!(
            out,
            "  {:>5} {:>5}  {:>10.1}  {:>10.1}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8.3}  {:>7.3}  {:>7.3}",
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
        "  median B/A: rate {:.3}, mean latency {:.3}, p50 {:.3}, p90 {:.3}, p99 {:.3}",
        m.achieved_rate, m.mean, m.p50, m.p90, m.p99
    );
    out
}
