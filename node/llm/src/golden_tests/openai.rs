//! OpenAI, OpenAI-compatible and Azure OpenAI goldens.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::error::{AdapterError, ErrorKind, anthropic_error_body, openai_error_body};
use crate::provider::{ProviderKind, adapter};
use crate::types::{ChatResponse, EmbeddingsRequest, Usage, wants_usage_chunk};

const OPENAI_BASE: &str = "https://api.openai.com/v1";
const AZURE_BASE: &str = "https://res.openai.azure.com";

/// An OpenAI-format stream passes through: the expected chunks are the transcript's own.
fn data_lines(transcript: &str) -> Vec<Value> {
    transcript.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]").map(json).collect()
}

#[test]
fn openai_requests_pass_through_with_model_and_usage_forced() {
    let extra = [("OpenAI-Organization".to_owned(), "org-123".to_owned())];
    let t = target(OPENAI_BASE, "gpt-4o-2024-08-06", &extra);
    let cases = assert_request_goldens(adapter(ProviderKind::OpenAi), &t, fixture!("openai/requests_expected.json"));
    for (name, req) in &cases {
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri(), "https://api.openai.com/v1/chat/completions", "{name}");
        assert_eq!(header(req, "authorization"), Some("Bearer test-key"));
        assert_eq!(header(req, "content-type"), Some("application/json"));
        assert_eq!(header(req, "openai-organization"), Some("org-123"));
        let streaming = name == "tools";
        assert_eq!(header(req, "accept"), streaming.then_some("text/event-stream"), "{name}");
    }
    // A compatible server (trailing slash in its configured base URL) gets the same request.
    let t = target("http://127.0.0.1:4321/v1/", "llama3", &[]);
    let req: ChatRequest = serde_json::from_value(json(CANONICAL_REQUESTS)["plain"].clone()).unwrap();
    let upstream = adapter(ProviderKind::OpenAiCompatible).chat_request(&req, &t).unwrap();
    assert_eq!(upstream.uri(), "http://127.0.0.1:4321/v1/chat/completions");
    assert_eq!(body_json(&upstream), json!({"model": "llama3", "messages": [{"role": "user", "content": "Hello!"}]}));
}

#[test]
fn openai_unknown_fields_survive_pass_through() {
    let input = json!({
        "model": "my-alias",
        "messages": [{"role": "user", "content": "Hi", "name": "alice", "cache_hint": {"x": 1}}],
        "logprobs": true,
        "top_logprobs": 2,
        "reasoning_effort": "low",
        "metadata": {"team": "search"},
        "stream": true,
        "stream_options": {"include_usage": false, "include_obfuscation": false},
        "modalities": ["text"]
    });
    let req: ChatRequest = serde_json::from_value(input.clone()).unwrap();
    assert!(!wants_usage_chunk(&req), "the caller declined the usage chunk");
    let upstream = adapter(ProviderKind::OpenAi).chat_request(&req, &target(OPENAI_BASE, "gpt-4o", &[])).unwrap();
    let mut expected = input;
    expected["model"] = "gpt-4o".into();
    expected["stream_options"]["include_usage"] = true.into();
    assert_eq!(body_json(&upstream), expected);
}

#[test]
fn openai_responses_round_trip_exactly() {
    let a = adapter(ProviderKind::OpenAi);
    for body in [fixture!("openai/chat_response.json"), fixture!("openai/chat_response_tool_calls.json")] {
        let resp = a.chat_response(body.as_bytes()).unwrap();
        assert_eq!(serde_json::to_value(&resp).unwrap(), json(body));
    }
    let resp = a.chat_response(fixture!("openai/chat_response.json").as_bytes()).unwrap();
    let usage = resp.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens()), (19, 10, 0));
    let calls = a.chat_response(fixture!("openai/chat_response_tool_calls.json").as_bytes()).unwrap();
    let call = &calls.choices[0].message.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.function.arguments, "{\n\"location\": \"Boston, MA\"\n}");
    assert!(matches!(a.chat_response(b"{\"id\":"), Err(AdapterError::BadUpstreamPayload { .. })));
}

#[test]
fn openai_streams_decode_identically_at_any_split() {
    let a = adapter(ProviderKind::OpenAi);
    let text = fixture!("openai/stream.sse");
    assert_stream_golden(a, text, &Value::Array(data_lines(text)).to_string(), false);
    let d = decode(a, text.as_bytes(), &[]);
    assert_eq!(d.text, "Hello!");
    assert_eq!(d.finish_reason.as_deref(), Some("stop"));
    assert_eq!(d.usage.map(|u| u.total_tokens), Some(11));

    let tools = fixture!("openai/stream_tool_calls.sse");
    let mut expected = data_lines(tools);
    // `"content": null` carries nothing and is not re-emitted.
    expected[0]["choices"][0]["delta"].as_object_mut().unwrap().remove("content");
    assert_stream_golden(a, tools, &Value::Array(expected).to_string(), false);
    let d = decode(a, tools.as_bytes(), &[]);
    assert_eq!(d.text, "{\"location\":\"Paris, France\"}");
    assert_eq!(d.finish_reason.as_deref(), Some("tool_calls"));
}

#[test]
fn openai_stream_cut_reports_truncation_and_keeps_partial_state() {
    let a = adapter(ProviderKind::OpenAi);
    let d = cut_stream(a, fixture!("openai/stream.sse"), "data: [DONE]");
    assert_eq!(d.usage.map(|u| u.prompt_tokens), Some(9));
    assert!(d.usage_final, "the usage-only chunk came: its counts are final even without [DONE]");
    let d = cut_stream(
        a,
        fixture!("openai/stream.sse"),
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}",
    );
    assert_eq!((d.text.as_str(), d.usage, d.finish_reason), ("Hello", None, None));
    assert!(!d.usage_final);
}

#[test]
fn openai_stream_error_event_is_surfaced() {
    let mut decoder = adapter(ProviderKind::OpenAi).stream_decoder();
    let err = decoder
        .feed(
            b"data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"code\":null}}\n\n",
        )
        .unwrap_err();
    match err {
        AdapterError::UpstreamStream { error, .. } => {
            assert_eq!(error.message, "The server had an error");
            assert!(error.retryable());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn openai_errors_are_classified() {
    let a = adapter(ProviderKind::OpenAi);
    let body = fixture!("openai/error_rate_limit.json").as_bytes();
    let e = a.error(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after-ms", "2000"), ("retry-after", "3")]), body);
    assert_eq!((e.status, e.kind, e.retry_after), (429, ErrorKind::RateLimited, Some(Duration::from_secs(2))));
    assert!(e.message.starts_with("Rate limit reached for gpt-4o"));
    assert!(e.retryable());
    let e = a.error(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after", "3")]), body);
    assert_eq!(e.retry_after, Some(Duration::from_secs(3)));

    let e = a.error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), fixture!("openai/error_invalid_key.json").as_bytes());
    assert_eq!((e.kind, e.retryable(), e.retry_after), (ErrorKind::Authentication, false, None));

    let e = a.error(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"<html>upstream connect error</html>");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Unavailable, "<html>upstream connect error</html>"));
    assert!(e.retryable());
    let e = a.error(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        br#"{"object":"error","message":"max_tokens is too large","type":"BadRequestError","code":400}"#,
    );
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::InvalidRequest, "max_tokens is too large"));
    let e = a.error(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Server, "Bad Gateway"));
}

#[test]
fn error_bodies_render_in_the_callers_format() {
    let (status, body) = openai_error_body(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited, "slow down");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        json(std::str::from_utf8(&body).unwrap()),
        json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
    );
    let (_, body) = anthropic_error_body(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Overloaded, "Overloaded");
    assert_eq!(
        json(std::str::from_utf8(&body).unwrap()),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

#[test]
fn openai_embeddings_pass_through() {
    let a = adapter(ProviderKind::OpenAi);
    let req: EmbeddingsRequest = serde_json::from_str(fixture!("openai/embeddings_request.json")).unwrap();
    let upstream = a.embeddings_request(&req, &target(OPENAI_BASE, "text-embedding-3-large", &[])).unwrap();
    assert_eq!(upstream.uri(), "https://api.openai.com/v1/embeddings");
    let mut expected = json(fixture!("openai/embeddings_request.json"));
    expected["model"] = "text-embedding-3-large".into();
    assert_eq!(body_json(&upstream), expected);
    let body = fixture!("openai/embeddings_response.json");
    let resp = a.embeddings_response(body.as_bytes()).unwrap();
    assert_eq!(serde_json::to_value(&resp).unwrap(), json(body));
}

// === Azure OpenAI ===

#[test]
fn azure_requests_use_deployment_urls_and_api_key() {
    let t = target(AZURE_BASE, "gpt-4o-prod", &[]);
    let cases =
        assert_request_goldens(adapter(ProviderKind::AzureOpenAi), &t, fixture!("azure/requests_expected.json"));
    for (name, req) in &cases {
        assert_eq!(
            req.uri(),
            "https://res.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
            "{name}"
        );
        assert_eq!(header(req, "api-key"), Some("test-key"));
        assert_eq!(header(req, "authorization"), None);
    }
    let t = UpstreamTarget { api_version: Some("2025-01-01-preview"), ..target(AZURE_BASE, "emb", &[]) };
    let req: EmbeddingsRequest = serde_json::from_str(fixture!("openai/embeddings_request.json")).unwrap();
    let upstream = adapter(ProviderKind::AzureOpenAi).embeddings_request(&req, &t).unwrap();
    assert_eq!(
        upstream.uri(),
        "https://res.openai.azure.com/openai/deployments/emb/embeddings?api-version=2025-01-01-preview"
    );
    let bad = target(AZURE_BASE, "a/b", &[]);
    let plain: ChatRequest = serde_json::from_value(json(CANONICAL_REQUESTS)["plain"].clone()).unwrap();
    assert!(matches!(
        adapter(ProviderKind::AzureOpenAi).chat_request(&plain, &bad),
        Err(AdapterError::InvalidTarget(_))
    ));
}

#[test]
fn azure_responses_keep_content_filter_results() {
    let body = fixture!("azure/response.json");
    let resp: ChatResponse = adapter(ProviderKind::AzureOpenAi).chat_response(body.as_bytes()).unwrap();
    assert_eq!(serde_json::to_value(&resp).unwrap(), json(body));
    assert_eq!(resp.usage, Some(Usage::new(23, 15, None)));
}

#[test]
fn azure_stream_drops_the_prompt_filter_chunk() {
    let a = adapter(ProviderKind::AzureOpenAi);
    let text = fixture!("azure/stream.sse");
    let expected: Vec<Value> = data_lines(text).into_iter().skip(1).collect();
    assert_stream_golden(a, text, &Value::Array(expected).to_string(), false);
    let d = decode(a, text.as_bytes(), &[]);
    assert_eq!((d.text.as_str(), d.usage.map(|u| u.total_tokens)), ("Hi", Some(14)));
}

#[test]
fn azure_errors_read_retry_after() {
    let e = adapter(ProviderKind::AzureOpenAi).error(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "6")]),
        fixture!("azure/error_rate_limit.json").as_bytes(),
    );
    assert_eq!((e.kind, e.retry_after), (ErrorKind::RateLimited, Some(Duration::from_secs(6))));
    assert!(e.message.contains("exceeded token rate limit"));
}
