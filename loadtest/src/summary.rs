//! The serialisable result of a run, shared by every report format.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runner::RunConfig;
use crate::schedule::Schedule;
use crate::stats::{Percentiles, Recorder, TimelinePoint};

/// Exit code of `tollgate-load` when the run completed but more requests failed than
/// `--max-error-rate` allows (1 is any other error, 2 a usage error).
pub const EXIT_ERROR_RATE: u8 = 3;

/// `--max-error-rate` when none is given: 1% of requests may fail.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;

/// LLM streaming metrics (present when the run parsed SSE).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmSummary {
    pub format: String,
    pub streams: u64,
    pub incomplete_streams: u64,
    pub output_tokens: u64,
    pub input_tokens: u64,
    /// Output tokens of all streams divided by wall time.
    pub output_tokens_per_second: f64,
    pub ttft: Percentiles,
    pub inter_token: Percentiles,
    /// Per-stream decode speed (tokens/s after the first token).
    pub decode_tps_p50: f64,
    pub decode_tps_p10: f64,
    pub decode_tps_mean: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub label: String,
    pub targets: Vec<String>,
    /// `open` (constant arrival rate, latency from scheduled send) or `closed`.
    pub mode: String,
    pub connections: usize,
    pub http2: bool,
    pub keepalive: bool,
    /// The configured open-loop rate (`--rate`, or the highest rate of `--phase`s); a
    /// ramp leading up to it is in `schedule`, not averaged into this.
    pub target_rate: Option<f64>,
    /// The open-loop schedule (ramps and steps), for reports that draw the target line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// How many requests the schedule (and `-n`) planned to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_requests: Option<u64>,
    pub elapsed_s: f64,
    pub requests: u64,
    pub failed: u64,
    pub achieved_rate: f64,
    pub bytes_received: u64,
    pub latency: Percentiles,
    /// Delay between scheduled and actual send: large values mean the generator itself lagged.
    pub send_lag: Percentiles,
    pub status_codes: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub llm: Option<LlmSummary>,
    pub timeline: Vec<TimelinePoint>,
}

impl RunSummary {
    pub fn new(cfg: &RunConfig, rec: &Recorder, elapsed: Duration, timeline: Vec<TimelinePoint>) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let llm = cfg.sse.map(|f| {
            let st = &rec.stream;
            let tps = &st.decode_tps_milli;
            let tps_at = |q: f64| {
                if tps.is_empty() { 0.0 } else { tps.value_at_quantile(q) as f64 / 1000.0 }
            };
            LlmSummary {
                format: format!("{f:?}").to_lowercase(),
                streams: st.streams,
                incomplete_streams: st.incomplete,
                output_tokens: st.output_tokens,
                input_tokens: st.input_tokens,
                output_tokens_per_second: st.output_tokens as f64 / secs,
                ttft: Percentiles::from_histogram(&st.ttft),
                inter_token: Percentiles::from_histogram(&st.itl),
                decode_tps_p50: tps_at(0.5),
                decode_tps_p10: tps_at(0.1),
                decode_tps_mean: if tps.is_empty() { 0.0 } else { tps.mean() / 1000.0 },
            }
        });
        RunSummary {
            label: cfg.label.clone(),
            targets: cfg.targets.iter().map(|t| t.url.clone()).collect(),
            mode: if cfg.schedule.is_some() { "open" } else { "closed" }.to_string(),
            connections: cfg.connections,
            http2: cfg.client.http2,
            keepalive: cfg.keepalive,
            target_rate: cfg.schedule.as_ref().map(Schedule::configured_rate),
            schedule: cfg.schedule.clone(),
            scheduled_requests: scheduled_requests(cfg),
            elapsed_s: secs,
            requests: rec.requests,
            failed: rec.failed,
            achieved_rate: rec.requests as f64 / secs,
            bytes_received: rec.bytes,
            latency: Percentiles::from_histogram(&rec.latency),
            send_lag: Percentiles::from_histogram(&rec.send_lag),
            status_codes: rec.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            errors: rec.errors.clone(),
            llm,
            timeline,
        }
    }

    /// Successful requests per second.
    pub fn success_rate(&self) -> f64 {
        (self.requests - self.failed) as f64 / self.elapsed_s.max(1e-9)
    }

    /// Failed requests as a fraction of all requests (0 when none completed).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.failed as f64 / self.requests as f64 }
    }

    /// The CI gate: Err with a sentence when more than `max` of the requests failed, or
    /// when no request completed at all.
    pub fn check_error_rate(&self, max: f64) -> Result<(), String> {
        if self.requests == 0 {
            return Err(format!("{}: no request completed", self.label));
        }
        if self.error_rate() > max {
            let mut causes: Vec<(String, u64)> = self
                .status_codes
                .iter()
                .filter(|(code, _)| code.parse::<u16>().is_ok_and(|c| c >= 400))
                .map(|(code, n)| (format!("HTTP {code}"), *n))
                .chain(self.errors.iter().map(|(e, n)| (e.clone(), *n)))
                .collect();
            causes.sort_by_key(|c| std::cmp::Reverse(c.1));
            let causes: Vec<String> = causes.iter().take(3).map(|(c, n)| format!("{c}: {n}")).collect();
            return Err(format!(
                "{}: {} of {} requests failed ({}), above --max-error-rate {} ({})",
                self.label,
                self.failed,
                self.requests,
                percent(self.error_rate()),
                percent(max),
                causes.join(", ")
            ));
        }
        Ok(())
    }
}

/// `0.5%`, `12.34%`, `100%`.
pub fn percent(fraction: f64) -> String {
    let p = format!("{:.2}", fraction * 100.0);
    format!("{}%", p.trim_end_matches('0').trim_end_matches('.'))
}

/// Requests the schedule plans before the run's end, capped by `-n`.
fn scheduled_requests(cfg: &RunConfig) -> Option<u64> {
    let schedule = cfg.schedule.as_ref()?;
    let horizon =
        cfg.duration.or_else(|| Some(schedule.duration()).filter(|d| !d.is_zero() && schedule.then.is_none()));
    let by_time = horizon.map(|h| schedule.arrivals_until(h).ceil() as u64);
    match (by_time, cfg.requests) {
        (Some(t), Some(n)) => Some(t.min(n)),
        (t, n) => t.or(n),
    }
}
