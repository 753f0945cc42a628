//! The serialisable result of a run, shared by every report format.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runner::RunConfig;
use crate::stats::{Percentiles, Recorder, TimelinePoint};

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
    pub target_rate: Option<f64>,
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
            target_rate: cfg.schedule.as_ref().map(|s| s.mean_rate()),
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
}
