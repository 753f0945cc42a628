//! Golden translation tests against the providers' documented examples, kept as files under
//! `node/llm/tests/fixtures/<provider>/`.

mod anthropic;
mod gemini;
mod gemini_ingress;
mod ingress;
mod openai;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::error::AdapterError;
use crate::provider::{ProviderAdapter, UpstreamTarget};
use crate::types::{ChatChunk, ChatRequest};

macro_rules! fixture {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $path))
    };
}
pub(crate) use fixture;

pub(crate) const CANONICAL_REQUESTS: &str = fixture!("canonical_requests.json");

pub(crate) fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is valid JSON")
}

pub(crate) fn target<'a>(
    base_url: &'a str,
    model: &'a str,
    extra_headers: &'a [(String, String)],
) -> UpstreamTarget<'a> {
    UpstreamTarget { base_url, model, api_key: "test-key", api_version: None, extra_headers }
}

pub(crate) fn body_json(req: &Request<Bytes>) -> Value {
    serde_json::from_slice(req.body()).expect("request body is JSON")
}

pub(crate) fn header<'a>(req: &'a Request<Bytes>, name: &str) -> Option<&'a str> {
    req.headers().get(name).map(|v| v.to_str().expect("ASCII header"))
}

/// Translates every canonical request and compares each body with the provider's expected one.
pub(crate) fn assert_request_goldens(
    adapter: &dyn ProviderAdapter,
    target: &UpstreamTarget<'_>,
    expected: &str,
) -> Vec<(String, Request<Bytes>)> {
    let inputs = json(CANONICAL_REQUESTS);
    let expected = json(expected);
    let inputs = inputs.as_object().expect("object of named requests");
    assert_eq!(inputs.len(), expected.as_object().map_or(0, |o| o.len()), "every case has an expected body");
    let mut out = Vec::new();
    for (name, input) in inputs {
        let req: ChatRequest = serde_json::from_value(input.clone()).expect("canonical request parses");
        let upstream = adapter.chat_request(&req, target).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(body_json(&upstream), expected[name], "request case {name:?}");
        out.push((name.clone(), upstream));
    }
    out
}

pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.insert(*n, HeaderValue::from_static(v));
    }
    h
}

/// `created` is the decode time for providers that send none; pin it so goldens compare.
pub(crate) fn normalized(chunks: &[ChatChunk], pin_created: bool) -> Vec<Value> {
    chunks
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).expect("chunk serializes");
            if pin_created {
                v["created"] = 0.into();
            }
            v
        })
        .collect()
}

/// Result of decoding a whole transcript fed in the given pieces.
pub(crate) struct Decoded {
    pub chunks: Vec<ChatChunk>,
    pub finish: Result<(), AdapterError>,
    pub text: String,
    pub usage: Option<crate::types::Usage>,
    /// The decoder holds the provider's final counts (not a running or placeholder one).
    pub usage_final: bool,
    pub finish_reason: Option<String>,
}

pub(crate) fn decode(adapter: &dyn ProviderAdapter, transcript: &[u8], cuts: &[usize]) -> Decoded {
    let mut decoder = adapter.stream_decoder();
    let mut chunks = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&transcript.len())) {
        chunks.extend(decoder.feed(&transcript[start..cut]).expect("feed"));
        start = cut;
    }
    let finish = decoder.finish().map(|tail| chunks.extend(tail));
    Decoded {
        chunks,
        finish,
        text: decoder.output_text().to_owned(),
        usage: decoder.usage(),
        usage_final: decoder.usage_is_final(),
        finish_reason: decoder.finish_reason(),
    }
}

/// Decodes the transcript whole, split at every single byte boundary, fed one byte at a time,
/// and at random splits; every way must give the expected chunk sequence.
pub(crate) fn assert_stream_golden(adapter: &dyn ProviderAdapter, transcript: &str, expected: &str, pin_created: bool) {
    let bytes = transcript.as_bytes();
    let expected = json(expected);
    let whole = decode(adapter, bytes, &[]);
    whole.finish.as_ref().expect("complete transcript finishes cleanly");
    assert_eq!(whole.usage_final, whole.usage.is_some(), "a complete transcript's usage is final");
    assert_eq!(Value::Array(normalized(&whole.chunks, pin_created)), expected, "whole transcript");
    for i in 0..=bytes.len() {
        let d = decode(adapter, bytes, &[i]);
        assert!(d.finish.is_ok(), "split at {i}");
        assert_eq!(Value::Array(normalized(&d.chunks, pin_created)), expected, "split at byte {i}");
    }
    let every: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(Value::Array(normalized(&decode(adapter, bytes, &every).chunks, pin_created)), expected, "byte by byte");
    let mut rng = StdRng::seed_from_u64(0x7011_6a7e);
    for round in 0..50 {
        let mut cuts: Vec<usize> = (0..rng.random_range(1..12)).map(|_| rng.random_range(0..=bytes.len())).collect();
        cuts.sort_unstable();
        let d = decode(adapter, bytes, &cuts);
        assert_eq!(Value::Array(normalized(&d.chunks, pin_created)), expected, "random round {round}: {cuts:?}");
    }
}

/// The transcript cut at `at`: finish() reports truncation; what was decoded stays available.
pub(crate) fn cut_stream(adapter: &dyn ProviderAdapter, transcript: &str, at: &str) -> Decoded {
    let end = transcript.find(at).expect("cut marker is in the transcript");
    let d = decode(adapter, &transcript.as_bytes()[..end], &[]);
    assert!(
        matches!(d.finish, Err(AdapterError::Truncated { .. })),
        "cut stream must be reported: {:?}",
        d.finish.as_ref().err()
    );
    d
}
