//! Behaviour shared by the LLM provider mocks: pacing, token text and injected failures.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use rand::Rng;
use serde_json::Value;

use super::{LatencyDist, MockBody};

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
        }
    }
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
