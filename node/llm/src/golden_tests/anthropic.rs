//! Anthropic Messages goldens.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::*;
use crate::error::{AdapterError, ErrorKind};
use crate::provider::{ProviderKind, adapter};
use crate::types::{EmbeddingsRequest, Usage};

const BASE: &str = "https://api.anthropic.com";
const MODEL: &str = "claude-sonnet-4-20250514";

fn response_json(body: &str) -> Value {
    let mut resp = adapter(ProviderKind::Anthropic).chat_response(body.as_bytes()).unwrap();
    resp.created = 0;
    serde_json::to_value(resp).unwrap()
}

#[test]
fn requests_translate_to_messages_api() {
    let t = target(BASE, MODEL, &[]);
    let cases =
        assert_request_goldens(adapter(ProviderKind::Anthropic), &t, fixture!("anthropic/requests_expected.json"));
    for (name, req) in &cases {
        assert_eq!(req.uri(), "https://api.anthropic.com/v1/messages", "{name}");
        assert_eq!(header(req, "x-api-key"), Some("test-key"));
        assert_eq!(header(req, "anthropic-version"), Some("2023-06-01"));
        assert_eq!(header(req, "authorization"), None);
        assert_eq!(header(req, "accept"), (name == "tools").then_some("text/event-stream"), "{name}");
    }
    let extra = [("anthropic-beta".to_owned(), "prompt-caching-2024-07-31".to_owned())];
    let t = UpstreamTarget { api_version: Some("2024-01-01"), ..target(BASE, MODEL, &extra) };
    let mut req: ChatRequest = serde_json::from_value(json(CANONICAL_REQUESTS)["plain"].clone()).unwrap();
    req.anthropic_extra.insert("top_k".into(), 5.into());
    let upstream = adapter(ProviderKind::Anthropic).chat_request(&req, &t).unwrap();
    assert_eq!(header(&upstream, "anthropic-version"), Some("2024-01-01"));
    assert_eq!(header(&upstream, "anthropic-beta"), Some("prompt-caching-2024-07-31"));
    assert_eq!(body_json(&upstream)["top_k"], 5);
}

#[test]
fn untranslatable_requests_say_why() {
    let a = adapter(ProviderKind::Anthropic);
    let t = target(BASE, MODEL, &[]);
    let mut req: ChatRequest = serde_json::from_value(json(CANONICAL_REQUESTS)["plain"].clone()).unwrap();
    req.n = Some(2);
    let err = a.chat_request(&req, &t).unwrap_err();
    assert!(matches!(err, AdapterError::Unsupported { .. }));
    assert_eq!(err.to_string(), "n > 1 is not supported by anthropic; send one request per completion");
    let req: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
    ]})).unwrap();
    assert!(matches!(a.chat_request(&req, &t), Err(AdapterError::InvalidRequest(m)) if m.contains("{oops")));
    let emb: EmbeddingsRequest = serde_json::from_value(json!({"model": "x", "input": "hi"})).unwrap();
    let err = a.embeddings_request(&emb, &t).unwrap_err();
    assert!(err.to_string().contains("Anthropic has no embeddings API"), "{err}");
}

#[test]
fn responses_translate_to_chat_completions() {
    assert_eq!(response_json(fixture!("anthropic/response.json")), json(fixture!("anthropic/response_expected.json")));
    assert_eq!(
        response_json(fixture!("anthropic/response_tool_use.json")),
        json(fixture!("anthropic/response_tool_use_expected.json"))
    );
}

#[test]
fn streams_translate_identically_at_any_split() {
    let a = adapter(ProviderKind::Anthropic);
    let text = fixture!("anthropic/stream.sse");
    assert_stream_golden(a, text, fixture!("anthropic/stream_expected.json"), true);
    // The same transcript with CRLF line endings.
    assert_stream_golden(a, &text.replace('\n', "\r\n"), fixture!("anthropic/stream_expected.json"), true);
    let tools = fixture!("anthropic/stream_tool_use.sse");
    assert_stream_golden(a, tools, fixture!("anthropic/stream_tool_use_expected.json"), true);
    let d = decode(a, tools.as_bytes(), &[]);
    assert_eq!(d.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(d.usage, Some(Usage::new(472, 89, None)));
}

#[test]
fn cut_stream_keeps_input_usage_and_partial_text() {
    let a = adapter(ProviderKind::Anthropic);
    let d = cut_stream(a, fixture!("anthropic/stream_tool_use.sse"), "event: message_delta");
    assert_eq!(d.usage, Some(Usage::new(472, 2, None)), "message_start usage counts even when cut");
    assert!(!d.usage_final, "message_start's output_tokens is a placeholder, not a count to bill");
    assert_eq!(
        d.text,
        "Okay, let's check the weather for San Francisco, CA:{\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}"
    );
    assert_eq!(d.finish_reason, None);
}

#[test]
fn stream_error_event_is_surfaced_with_partial_usage() {
    let mut decoder = adapter(ProviderKind::Anthropic).stream_decoder();
    let start = fixture!("anthropic/stream.sse").split("event: content_block_start").next().unwrap();
    assert_eq!(decoder.feed(start.as_bytes()).unwrap().len(), 1);
    let err = decoder
        .feed(b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n")
        .unwrap_err();
    match err {
        AdapterError::UpstreamStream { error, .. } => {
            assert_eq!((error.kind, error.message.as_str()), (ErrorKind::Overloaded, "Overloaded"));
            assert!(error.retryable());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(decoder.usage().map(|u| u.prompt_tokens), Some(25));
}

#[test]
fn errors_are_classified_by_anthropic_type() {
    let a = adapter(ProviderKind::Anthropic);
    let e = a.error(
        StatusCode::from_u16(529).unwrap(),
        &HeaderMap::new(),
        fixture!("anthropic/error_overloaded.json").as_bytes(),
    );
    assert_eq!((e.status, e.kind, e.message.as_str()), (529, ErrorKind::Overloaded, "Overloaded"));
    assert!(e.retryable());
    let e = a.error(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "30")]),
        fixture!("anthropic/error_rate_limit.json").as_bytes(),
    );
    assert_eq!((e.kind, e.retry_after), (ErrorKind::RateLimited, Some(Duration::from_secs(30))));
    let e = a.error(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
    );
    assert_eq!((e.kind, e.retryable()), (ErrorKind::InvalidRequest, false));
}
