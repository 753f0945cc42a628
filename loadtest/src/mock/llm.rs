//! Behaviour shared by the LLM provider mocks: pacing, token text, injected failures,
//! per-key behaviour, tool calls, embeddings and the request log.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Response};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::{LatencyDist, MockBody, RequestLog, SeenRequest};

#[derive(Debug, Clone)]
pub struct LlmMockConfig {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Delay before the first token (and before a non-streaming answer starts).
    pub ttft: LatencyDist,
    /// Output tokens per response, capped by the request's max tokens.
    pub tokens: u32,
    /// Output pace; 0 sends all tokens at once.
    pub tokens_per_second: f64,
    /// Fraction of requests answered with 429.
    pub fail_429: f64,
    /// Fraction of requests answered with 500.
    pub fail_500: f64,
    /// Fraction of streams cut half-way (the connection is aborted mid-body).
    pub cut_stream: f64,
    /// Answer requests without the provider's credential (or Anthropic's `anthropic-version`)
    /// with its auth error. Off, keys are still read and logged, and the per-key lists below
    /// still apply.
    pub require_auth: bool,
    /// Keys that authenticate; empty accepts any non-empty key.
    pub accepted_keys: Vec<String>,
    /// Keys whose requests always get 429 with `retry-after` and the provider's rate-limit body.
    pub rate_limited_keys: Vec<String>,
    /// Keys whose requests always get this status with the provider's error body.
    pub fail_status_keys: Vec<(String, u16)>,
    /// `retry-after` seconds sent with every 429.
    pub retry_after_secs: u32,
    /// Send no usage at all, like OpenAI-compatible servers that never report it.
    pub omit_usage: bool,
    /// Prompt tokens reported as served from the provider's prompt cache (capped by the
    /// prompt): OpenAI `cached_tokens`, Anthropic `cache_read_input_tokens`, Gemini
    /// `cachedContentTokenCount`.
    pub cached_tokens: u32,
    /// Embedding length when the request does not ask for one.
    pub embedding_dimensions: usize,
    /// Azure OpenAI deployments as (deployment, model). Empty accepts any deployment and
    /// reports its name as the model.
    pub azure_deployments: Vec<(String, String)>,
    /// Received requests kept for [`super::MockHandle::requests`] (the most recent ones).
    pub request_log_limit: usize,
    /// Raw JSON members (`"x_fp":1.50`) written first into every OpenAI chat
    /// answer and stream chunk, spelled as given: what a gateway passing
    /// answers through must deliver byte for byte.
    pub answer_extra: Option<String>,
}

impl Default for LlmMockConfig {
    fn default() -> Self {
        LlmMockConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            ttft: LatencyDist::Zero,
            tokens: 16,
            tokens_per_second: 0.0,
            fail_429: 0.0,
            fail_500: 0.0,
            cut_stream: 0.0,
            require_auth: true,
            accepted_keys: Vec::new(),
            rate_limited_keys: Vec::new(),
            fail_status_keys: Vec::new(),
            retry_after_secs: 1,
            omit_usage: false,
            cached_tokens: 0,
            embedding_dimensions: 8,
            azure_deployments: Vec::new(),
            request_log_limit: 10_000,
            answer_extra: None,
        }
    }
}

/// How a request's credential is treated, before any random failure is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    Accepted,
    Missing,
    Invalid,
    RateLimited,
    Status(u16),
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    Ok,
    RateLimited,
    ServerError,
    /// Stream cut after this many token events.
    Cut(usize),
}

impl LlmMockConfig {
    pub fn draw_fate(&self, stream: bool, tokens: usize) -> Fate {
        let mut rng = rand::rng();
        let u: f64 = rng.random();
        if u < self.fail_429 {
            Fate::RateLimited
        } else if u < self.fail_429 + self.fail_500 {
            Fate::ServerError
        } else if stream && self.cut_stream > 0.0 && rng.random::<f64>() < self.cut_stream {
            Fate::Cut(tokens / 2)
        } else {
            Fate::Ok
        }
    }

    pub fn judge_key(&self, key: Option<&str>) -> KeyVerdict {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return if self.require_auth { KeyVerdict::Missing } else { KeyVerdict::Accepted };
        };
        // Per-key failures win over the accepted list: a test naming a key as rate-limited
        // wants the 429 whatever else it configured.
        if self.rate_limited_keys.iter().any(|k| k == key) {
            return KeyVerdict::RateLimited;
        }
        if let Some((_, status)) = self.fail_status_keys.iter().find(|(k, _)| k == key) {
            return KeyVerdict::Status(*status);
        }
        if self.require_auth && !self.accepted_keys.is_empty() && !self.accepted_keys.iter().any(|k| k == key) {
            return KeyVerdict::Invalid;
        }
        KeyVerdict::Accepted
    }

    /// Adds `retry-after` to a 429.
    pub fn with_retry_after(&self, mut resp: Response<MockBody>) -> Response<MockBody> {
        resp.headers_mut().insert("retry-after", HeaderValue::from(self.retry_after_secs));
        resp
    }

    /// Prompt tokens served from cache for a prompt of `prompt` tokens.
    pub fn cached_of(&self, prompt: u64) -> u64 {
        u64::from(self.cached_tokens).min(prompt)
    }

    /// The model behind an Azure deployment, or `None` when the deployment is unknown.
    pub fn azure_model(&self, deployment: &str) -> Option<String> {
        if self.azure_deployments.is_empty() {
            return Some(deployment.to_string());
        }
        self.azure_deployments.iter().find(|(d, _)| d == deployment).map(|(_, m)| m.clone())
    }

    pub fn token_gap(&self) -> Duration {
        if self.tokens_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / self.tokens_per_second)
        } else {
            Duration::ZERO
        }
    }

    /// Output tokens for a request that asked for at most `max` (if it said).
    pub fn output_tokens(&self, max: Option<u64>) -> usize {
        let n = self.tokens.max(1) as u64;
        max.map_or(n, |m| n.min(m.max(1))) as usize
    }

    /// Time a non-streaming answer takes: first token plus the remaining tokens at pace.
    pub fn total_delay(&self, tokens: usize) -> Duration {
        self.ttft.sample(&mut rand::rng()) + self.token_gap() * tokens.saturating_sub(1) as u32
    }
}

const WORDS: [&str; 16] = [
    "The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ",", " and", " the", " gateway",
    " keeps", " up", ".",
];

/// Text of token `i` of a mock answer.
pub fn token(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

pub fn full_text(tokens: usize) -> String {
    (0..tokens).map(token).collect()
}

/// Rough prompt-size estimate (4 bytes per token), enough for usage accounting in tests.
pub fn estimate_tokens(v: &Value) -> u64 {
    (v.to_string().len() as u64 / 4).max(1)
}

/// Token estimate of one text (4 bytes per token).
pub fn text_tokens(s: &str) -> u64 {
    (s.len() as u64).div_ceil(4).max(1)
}

/// An incoming request read whole (LLM requests are small).
pub struct LlmRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Option<Value>,
    pub raw_body: Bytes,
}

impl LlmRequest {
    pub async fn read(req: Request<Incoming>) -> LlmRequest {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        LlmRequest {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).ok(),
            raw_body: bytes,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The token of `Authorization: Bearer <token>`.
    pub fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// Value of query parameter `name` (keys and versions need no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    pub fn record(&self, log: &RequestLog, credential: Option<&str>) {
        log.push(SeenRequest {
            method: self.method.to_string(),
            path: match &self.query {
                Some(q) => format!("{}?{q}", self.path),
                None => self.path.clone(),
            },
            credential: credential.map(str::to_string),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body: self.body.clone(),
            raw_body: self.raw_body.clone(),
        });
    }
}

/// A tool call the mock answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    /// The arguments as JSON text in pieces for streaming; each piece counts as one output
    /// token. Always at least two pieces so clients must reassemble them.
    pub fn pieces(&self) -> Vec<String> {
        let text = self.arguments.to_string();
        let chars: Vec<char> = text.chars().collect();
        let size = chars.len().div_ceil(2).clamp(1, 8);
        chars.chunks(size).map(|c| c.iter().collect()).collect()
    }
}

/// A tool declared by a request: its name and its parameters' JSON schema.
pub struct DeclaredTool<'a> {
    pub name: &'a str,
    pub schema: Option<&'a Value>,
}

/// The call to make: to `forced` when the request named a tool, else to the first tool.
pub fn call_tool(tools: &[DeclaredTool<'_>], forced: Option<&str>, id: String, words: &str) -> Option<ToolCall> {
    let tool = match forced {
        Some(name) => tools.iter().find(|t| t.name == name)?,
        None => tools.first()?,
    };
    Some(ToolCall { id, name: tool.name.to_string(), arguments: tool_arguments(tool.schema, words) })
}

/// Arguments valid enough for a schema: `query` (or the first required, else first
/// listed property) plus every required property, each with a value of its type.
/// Without properties: `{"query": words}`.
pub fn tool_arguments(schema: Option<&Value>, words: &str) -> Value {
    let props = schema.and_then(|s| s.get("properties")).and_then(Value::as_object).filter(|p| !p.is_empty());
    let Some(props) = props else {
        return json!({ "query": words });
    };
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).filter(|n| props.contains_key(*n)).collect())
        .unwrap_or_default();
    let first = if props.contains_key("query") {
        "query"
    } else {
        required.first().copied().or_else(|| props.keys().next().map(String::as_str)).unwrap_or("query")
    };
    let mut out = Map::new();
    for name in std::iter::once(first).chain(required) {
        if let Some(prop) = props.get(name) {
            out.insert(name.to_string(), sample_value(prop, words));
        }
    }
    Value::Object(out)
}

fn sample_value(prop: &Value, words: &str) -> Value {
    if let Some(first) = prop.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    // Gemini schemas spell types in upper case; JSON Schema allows a list like ["string", "null"].
    let ty = match prop.get("type") {
        Some(Value::String(t)) => t.to_ascii_lowercase(),
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string").to_ascii_lowercase()
        }
        _ => "string".into(),
    };
    match ty.as_str() {
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "array" => json!([]),
        "object" => json!({}),
        _ => json!(words),
    }
}

/// A few words of the user's text for tool arguments, so tests can tell prompts apart.
pub fn words_of(text: Option<&str>) -> String {
    let words: Vec<&str> = text.unwrap_or_default().split_whitespace().take(5).collect();
    if words.is_empty() { "quick brown fox".to_string() } else { words.join(" ") }
}

/// A unit-length embedding of `dims` values derived only from `text` (FNV-1a seed,
/// SplitMix64 stream), so equal inputs embed equally across runs and processes.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut state =
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let raw: Vec<f64> = (0..dims).map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

pub async fn read_json(req: Request<Incoming>) -> Option<Value> {
    let bytes = req.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One body frame and when to send it, relative to the start of the body. Absolute
/// offsets keep the token pace exact; sleeping a gap per token would accumulate timer
/// rounding and drift below the configured rate.
pub struct Paced {
    pub at: Duration,
    pub data: Bytes,
}

/// A streamed body sending `frames` on time; with `cut_after`, the body fails after that
/// many frames so the server aborts the connection mid-stream.
pub fn paced_body(frames: Vec<Paced>, cut_after: Option<usize>) -> MockBody {
    let state = (VecDeque::from(frames), cut_after, 0usize, tokio::time::Instant::now());
    let stream = futures::stream::unfold(state, |(mut frames, cut, sent, start)| async move {
        if cut.is_some_and(|c| sent >= c) {
            let err = io::Error::new(io::ErrorKind::ConnectionAborted, "mock: stream cut");
            return Some((Err(err), (VecDeque::new(), None, usize::MAX, start)));
        }
        let next = frames.pop_front()?;
        if !next.at.is_zero() {
            tokio::time::sleep_until(start + next.at).await;
        }
        Some((Ok(Frame::data(next.data)), (frames, cut, sent + 1, start)))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

pub fn sse_response(body: MockBody) -> Response<MockBody> {
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .expect("static response parts are valid")
}

/// Builds frames for a stream: `head` frames go out at once, then each token frame after
/// its pause (the first after the time-to-first-token), then the `tail` frames.
pub fn pace(cfg: &LlmMockConfig, head: Vec<Bytes>, tokens: Vec<Bytes>, tail: Vec<Bytes>) -> Vec<Paced> {
    let ttft = cfg.ttft.sample(&mut rand::rng());
    let gap = cfg.token_gap();
    let mut out: Vec<Paced> = head.into_iter().map(|data| Paced { at: Duration::ZERO, data }).collect();
    let mut last = Duration::ZERO;
    for (i, data) in tokens.into_iter().enumerate() {
        last = ttft + gap * i as u32;
        out.push(Paced { at: last, data });
    }
    out.extend(tail.into_iter().map(|data| Paced { at: last, data }));
    out
}
