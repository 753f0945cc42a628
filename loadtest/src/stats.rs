//! Latency histograms, counters and per-second timelines.
//!
//! Each worker owns a `Recorder` (no locking on the hot path); the per-second bucket is
//! flushed into the shared `Timeline` once a second, and recorders are merged at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms can hold; larger values are clamped, not dropped.
const MAX_MICROS: u64 = 3_600_000_000;

pub fn new_histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig).expect("static histogram bounds are valid")
}

/// Records a duration in microseconds (values below 1µs count as 1µs).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_MICROS);
    h.saturating_record(us);
}

/// Summary of a latency histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn us_to_ms(v: f64) -> f64 {
    v / 1000.0
}

impl Percentiles {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |p: f64| us_to_ms(h.value_at_quantile(p) as f64);
        Percentiles {
            count: h.len(),
            min_ms: us_to_ms(h.min() as f64),
            mean_ms: us_to_ms(h.mean()),
            stdev_ms: us_to_ms(h.stdev()),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: us_to_ms(h.max() as f64),
        }
    }
}

/// Counters read by the live progress line while the run is going.
#[derive(Debug, Default)]
pub struct Live {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Live {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.completed.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        )
    }
}

/// One second of the run.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub latency: Histogram<u64>,
    /// Time to first token of the streams that completed in this second.
    pub ttft: Histogram<u64>,
}

impl Bucket {
    fn new() -> Self {
        // Two significant figures keep per-second buckets small; they only feed charts.
        Bucket { requests: 0, errors: 0, tokens: 0, latency: new_histogram(2), ttft: new_histogram(2) }
    }

    fn merge(&mut self, other: &Bucket) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.tokens += other.tokens;
        let _ = self.latency.add(&other.latency);
        let _ = self.ttft.add(&other.ttft);
    }
}

/// Per-second aggregates shared by all workers.
#[derive(Debug, Default)]
pub struct Timeline {
    buckets: Mutex<Vec<Bucket>>,
}

/// A point of the per-second series as it appears in reports.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Time to first token of the streams that completed in this second (SSE runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p99_ms: Option<f64>,
}

impl Timeline {
    fn flush(&self, second: u64, bucket: &Bucket) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        while buckets.len() <= second as usize {
            buckets.push(Bucket::new());
        }
        buckets[second as usize].merge(bucket);
    }

    pub fn points(&self) -> Vec<TimelinePoint> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let p = Percentiles::from_histogram(&b.latency);
                let ttft = (!b.ttft.is_empty()).then(|| Percentiles::from_histogram(&b.ttft));
                TimelinePoint {
                    second: i as u64,
                    requests: b.requests,
                    errors: b.errors,
                    tokens: b.tokens,
                    p50_ms: p.p50_ms,
                    p90_ms: p.p90_ms,
                    p99_ms: p.p99_ms,
                    max_ms: p.max_ms,
                    ttft_p50_ms: ttft.as_ref().map(|t| t.p50_ms),
                    ttft_p99_ms: ttft.as_ref().map(|t| t.p99_ms),
                }
            })
            .collect()
    }
}

/// What one request produced, as seen by the recorder.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// HTTP status, if a response head arrived.
    pub status: Option<u16>,
    /// Transport or protocol failure class (e.g. `connect`, `timeout`, `stream_incomplete`).
    pub error: Option<String>,
    pub bytes: u64,
    pub stream: Option<crate::sse::StreamSummary>,
}

impl Outcome {
    pub fn is_error(&self) -> bool {
        self.error.is_some() || self.status.is_none_or(|s| s >= 400)
    }
}

/// LLM streaming aggregates.
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub streams: u64,
    pub incomplete: u64,
    pub output_tokens: u64,
    pub input_tokens: u64,
    pub ttft: Histogram<u64>,
    pub itl: Histogram<u64>,
    /// Per-stream decode speed in tokens/s, stored x1000 to keep 3 decimals in an integer histogram.
    pub decode_tps_milli: Histogram<u64>,
}

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats {
            streams: 0,
            incomplete: 0,
            output_tokens: 0,
            input_tokens: 0,
            ttft: new_histogram(3),
            itl: new_histogram(3),
            decode_tps_milli: Histogram::new_with_bounds(1, u64::MAX / 2, 3).expect("valid bounds"),
        }
    }
}

/// Per-worker results; merged into one at the end of the run.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub latency: Histogram<u64>,
    /// How late requests were sent relative to their schedule: shows generator saturation.
    pub send_lag: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub requests: u64,
    pub failed: u64,
    pub bytes: u64,
    pub stream: StreamStats,
    current_second: u64,
    current: Bucket,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: new_histogram(3),
            send_lag: new_histogram(3),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            requests: 0,
            failed: 0,
            bytes: 0,
            stream: StreamStats::default(),
            current_second: 0,
            current: Bucket::new(),
        }
    }
}

impl Recorder {
    /// Records one finished request. `finished_at` (time since the run start) places it on
    /// the timeline.
    pub fn record(
        &mut self,
        outcome: &Outcome,
        latency: Duration,
        send_lag: Duration,
        finished_at: Duration,
        timeline: &Timeline,
        live: &Live,
    ) {
        let second = finished_at.as_secs();
        if second != self.current_second {
            self.flush(timeline);
            self.current_second = second;
        }
        let error = outcome.is_error();
        self.requests += 1;
        self.bytes += outcome.bytes;
        record(&mut self.latency, latency);
        record(&mut self.send_lag, send_lag);
        record(&mut self.current.latency, latency);
        self.current.requests += 1;
        if let Some(s) = outcome.status {
            *self.statuses.entry(s).or_default() += 1;
        }
        if let Some(e) = &outcome.error {
            *self.errors.entry(e.clone()).or_default() += 1;
        }
        if error {
            self.failed += 1;
            self.current.errors += 1;
            live.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(s) = &outcome.stream {
            self.record_stream(s);
            self.current.tokens += s.output_tokens;
            if let Some(t) = s.ttft {
                record(&mut self.current.ttft, t);
            }
        }
        live.completed.fetch_add(1, Ordering::Relaxed);
    }

    fn record_stream(&mut self, s: &crate::sse::StreamSummary) {
        let st = &mut self.stream;
        st.streams += 1;
        if !s.complete {
            st.incomplete += 1;
        }
        st.output_tokens += s.output_tokens;
        st.input_tokens += s.input_tokens;
        if let Some(t) = s.ttft {
            record(&mut st.ttft, t);
        }
        for gap in &s.inter_token {
            record(&mut st.itl, *gap);
        }
        if let Some(tps) = s.decode_tokens_per_second() {
            st.decode_tps_milli.saturating_record(((tps * 1000.0) as u64).max(1));
        }
    }

    /// Pushes the current second's bucket to the shared timeline.
    pub fn flush(&mut self, timeline: &Timeline) {
        if self.current.requests > 0 {
            timeline.flush(self.current_second, &self.current);
            self.current = Bucket::new();
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        let _ = self.send_lag.add(&other.send_lag);
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.requests += other.requests;
        self.failed += other.failed;
        self.bytes += other.bytes;
        let (a, b) = (&mut self.stream, &other.stream);
        a.streams += b.streams;
        a.incomplete += b.incomplete;
        a.output_tokens += b.output_tokens;
        a.input_tokens += b.input_tokens;
        let _ = a.ttft.add(&b.ttft);
        let _ = a.itl.add(&b.itl);
        let _ = a.decode_tps_milli.add(&b.decode_tps_milli);
    }
}
