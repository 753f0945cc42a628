//! Incremental Server-Sent Events parsing and LLM token accounting for OpenAI, Anthropic
//! and Gemini streaming formats.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    /// The `event:` field; empty means the default `message` type.
    pub event: String,
    pub data: String,
}

/// Byte-oriented SSE parser: accepts chunks split anywhere (mid-line, mid-UTF-8, between
/// `\r` and `\n`) because network reads do not respect event boundaries.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    skip_lf: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk and appends every event it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        for &b in chunk {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.skip_lf = true;
                    self.end_line(out);
                }
                _ => self.line.push(b),
            }
        }
    }

    /// True when bytes of an unfinished event are buffered (a stream cut mid-event).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        if self.line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                out.push(SseEvent { event: std::mem::take(&mut self.event), data });
            } else {
                self.event.clear();
            }
            self.has_data = false;
            return;
        }
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            _ => {}
        }
    }
}

/// Which provider's streaming format to read tokens from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SseFormat {
    Openai,
    Anthropic,
    Gemini,
}

/// Token timing of one streamed response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    /// Time to the first non-empty token delta, from the request's latency origin.
    pub ttft: Option<Duration>,
    /// Gaps between consecutive token deltas.
    pub inter_token: Vec<Duration>,
    /// Output tokens: the provider's usage figure when reported, else the count of deltas.
    pub output_tokens: u64,
    pub input_tokens: u64,
    /// Number of content deltas seen.
    pub deltas: u64,
    /// The stream reached its terminal marker (`[DONE]`, `message_stop`, a finish reason).
    pub complete: bool,
    /// An error event inside the stream.
    pub error: Option<String>,
    first_at: Option<Duration>,
    last_at: Option<Duration>,
}

impl StreamSummary {
    /// Decode speed after the first token; None with fewer than two deltas.
    pub fn decode_tokens_per_second(&self) -> Option<f64> {
        let (first, last) = (self.first_at?, self.last_at?);
        let span = last.checked_sub(first)?.as_secs_f64();
        if self.deltas < 2 || span <= 0.0 {
            return None;
        }
        let tokens = self.output_tokens.max(self.deltas) as f64;
        Some((tokens - 1.0) / span)
    }
}

/// Turns SSE events of one response into a `StreamSummary`.
#[derive(Debug)]
pub struct StreamTracker {
    format: SseFormat,
    parser: SseParser,
    summary: StreamSummary,
    usage_output: Option<u64>,
    events: Vec<SseEvent>,
}

impl StreamTracker {
    pub fn new(format: SseFormat) -> Self {
        StreamTracker {
            format,
            parser: SseParser::new(),
            summary: StreamSummary::default(),
            usage_output: None,
            events: Vec::new(),
        }
    }

    /// Feeds a body chunk received `at` (measured from the request's latency origin).
    pub fn feed(&mut self, chunk: &[u8], at: Duration) {
        let mut events = std::mem::take(&mut self.events);
        self.parser.feed(chunk, &mut events);
        for ev in events.drain(..) {
            self.on_event(&ev, at);
        }
        self.events = events;
    }

    fn on_token(&mut self, at: Duration) {
        let s = &mut self.summary;
        if s.ttft.is_none() {
            s.ttft = Some(at);
            s.first_at = Some(at);
        } else if let Some(last) = s.last_at {
            s.inter_token.push(at.saturating_sub(last));
        }
        s.last_at = Some(at);
        s.deltas += 1;
    }

    fn on_event(&mut self, ev: &SseEvent, at: Duration) {
        if self.format == SseFormat::Openai && ev.data.trim() == "[DONE]" {
            self.summary.complete = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        match self.format {
            SseFormat::Openai => self.on_openai(&v, at),
            SseFormat::Anthropic => self.on_anthropic(&v, at),
            SseFormat::Gemini => self.on_gemini(&v, at),
        }
    }

    fn on_openai(&mut self, v: &Value, at: Duration) {
        if let Some(e) = v.get("error") {
            self.summary.error = Some(error_text(e));
            return;
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            let has_text = choices
                .iter()
                .any(|c| c.pointer("/delta/content").and_then(Value::as_str).is_some_and(|t| !t.is_empty()));
            if has_text {
                self.on_token(at);
            }
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage_output = u.get("completion_tokens").and_then(Value::as_u64).or(self.usage_output);
            if let Some(p) = u.get("prompt_tokens").and_then(Value::as_u64) {
                self.summary.input_tokens = p;
            }
        }
    }

    fn on_anthropic(&mut self, v: &Value, at: Duration) {
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                if let Some(p) = v.pointer("/message/usage/input_tokens").and_then(Value::as_u64) {
                    self.summary.input_tokens = p;
                }
            }
            "content_block_delta" => {
                let text = v.pointer("/delta/text").or_else(|| v.pointer("/delta/thinking"));
                if text.and_then(Value::as_str).is_some_and(|t| !t.is_empty()) {
                    self.on_token(at);
                }
            }
            "message_delta" => {
                if let Some(n) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage_output = Some(n);
                }
            }
            "message_stop" => self.summary.complete = true,
            "error" => self.summary.error = Some(error_text(v.get("error").unwrap_or(v))),
            _ => {}
        }
    }

    fn on_gemini(&mut self, v: &Value, at: Duration) {
        if let Some(e) = v.get("error") {
            self.summary.error = Some(error_text(e));
            return;
        }
        let candidates = v.get("candidates").and_then(Value::as_array);
        let has_text = candidates.is_some_and(|cs| {
            cs.iter().any(|c| {
                c.pointer("/content/parts").and_then(Value::as_array).is_some_and(|parts| {
                    parts.iter().any(|p| p.get("text").and_then(Value::as_str).is_some_and(|t| !t.is_empty()))
                })
            })
        });
        if has_text {
            self.on_token(at);
        }
        if candidates.is_some_and(|cs| cs.iter().any(|c| c.get("finishReason").is_some_and(|f| !f.is_null()))) {
            self.summary.complete = true;
        }
        if let Some(u) = v.get("usageMetadata") {
            if let Some(n) = u.get("candidatesTokenCount").and_then(Value::as_u64) {
                self.usage_output = Some(n);
            }
            if let Some(n) = u.get("promptTokenCount").and_then(Value::as_u64) {
                self.summary.input_tokens = n;
            }
        }
    }

    /// Ends the stream. A stream without its terminal marker is reported incomplete even if
    /// the transport closed cleanly, because a cut stream is what the caller needs to see.
    pub fn finish(mut self) -> StreamSummary {
        self.summary.output_tokens = self.usage_output.unwrap_or(self.summary.deltas);
        self.summary
    }
}

fn error_text(e: &Value) -> String {
    e.get("type")
        .or_else(|| e.get("status"))
        .or_else(|| e.get("code"))
        .map(|t| t.as_str().map(str::to_string).unwrap_or_else(|| t.to_string()))
        .unwrap_or_else(|| "stream_error".to_string())
}
