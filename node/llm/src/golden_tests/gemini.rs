//! Gemini goldens.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::*;
use crate::error::{AdapterError, ErrorKind};
use crate::provider::{ProviderKind, adapter};
use crate::types::{EmbeddingsRequest, Usage};

const BASE: &str = "https://generativelanguage.googleapis.com";

fn response_json(body: &str) -> Value {
    let mut resp = adapter(ProviderKind::Gemini).chat_response(body.as_bytes()).unwrap();
    resp.created = 0;
    serde_json::to_value(resp).unwrap()
}

#[test]
fn requests_translate_to_generate_content() {
    let t = target(BASE, "models/gemini-2.0-flash", &[]);
    let cases = assert_request_goldens(adapter(ProviderKind::Gemini), &t, fixture!("gemini/requests_expected.json"));
    for (name, req) in &cases {
        let expected = if name == "tools" {
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        } else {
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        };
        assert_eq!(req.uri(), expected, "{name}");
        assert_eq!(header(req, "x-goog-api-key"), Some("test-key"));
        assert_eq!(header(req, "authorization"), None);
    }
    let orphan: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
        {"role": "tool", "tool_call_id": "call_x", "content": "42"}
    ]}))
    .unwrap();
    let err = adapter(ProviderKind::Gemini).chat_request(&orphan, &t).unwrap_err();
    assert!(matches!(err, AdapterError::InvalidRequest(_)), "{err}");
}

#[test]
fn responses_translate_to_chat_completions() {
    assert_eq!(response_json(fixture!("gemini/response.json")), json(fixture!("gemini/response_expected.json")));
    assert_eq!(
        response_json(fixture!("gemini/response_function_call.json")),
        json(fixture!("gemini/response_function_call_expected.json"))
    );
    let blocked = response_json(r#"{"promptFeedback": {"blockReason": "SAFETY"}, "responseId": "b1"}"#);
    assert_eq!(blocked["choices"][0]["finish_reason"], "content_filter");
}

#[test]
fn streams_translate_identically_at_any_split() {
    let a = adapter(ProviderKind::Gemini);
    assert_stream_golden(a, fixture!("gemini/stream.sse"), fixture!("gemini/stream_expected.json"), true);
    assert_stream_golden(
        a,
        fixture!("gemini/stream_function_call.sse"),
        fixture!("gemini/stream_function_call_expected.json"),
        true,
    );
    let d = decode(a, fixture!("gemini/stream.sse").as_bytes(), &[]);
    assert_eq!(d.text, "The sky is blue because of Rayleigh scattering.");
    assert_eq!(d.usage, Some(Usage::new(9, 11, None)));
    assert_eq!(d.finish_reason.as_deref(), Some("stop"));
}

#[test]
fn cut_stream_keeps_usage_so_far_and_partial_text() {
    let text = fixture!("gemini/stream.sse");
    let last = text.rfind("data: ").unwrap();
    let d = cut_stream(adapter(ProviderKind::Gemini), text, &text[last..]);
    assert_eq!(d.text, "The sky is blue because of Rayleigh");
    assert!(!d.usage_final, "a running candidatesTokenCount is not final");
    assert_eq!(d.usage.map(|u| u.prompt_tokens), Some(9));
    assert_eq!(d.finish_reason, None);
}

#[test]
fn cut_thinking_stream_keeps_the_running_thought_tokens() {
    // Thinking tokens never appear as visible text; the running usageMetadata counts them, and
    // the node bills a cut stream from that running count (`ai::stream::billed_usage`).
    let transcript = concat!(
        r#"data: {"candidates":[{"content":{"parts":[{"text":"Thinking hard","thought":true}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9,"thoughtsTokenCount":3000,"totalTokenCount":3009}}"#,
        "\r\n\r\n",
        r#"data: {"candidates":[{"content":{"parts":[{"text":"The answer"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,"thoughtsTokenCount":3000,"totalTokenCount":3011}}"#,
        "\r\n\r\n",
        r#"data: {"candidates":[{"content":{"parts":[{"text":" is 42."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":5,"thoughtsTokenCount":3000,"totalTokenCount":3014}}"#,
        "\r\n\r\n",
    );
    let d = cut_stream(
        adapter(ProviderKind::Gemini),
        transcript,
        r#"data: {"candidates":[{"content":{"parts":[{"text":" is 42."#,
    );
    assert_eq!(d.text, "The answer");
    assert!(!d.usage_final, "a cut stream's usage is a running count");
    let usage = d.usage.expect("the running usageMetadata is kept");
    assert_eq!(usage.prompt_tokens, 9, "the provider's input count");
    assert!(usage.completion_tokens >= 3000, "thinking tokens are counted: {usage:?}");
}

#[test]
fn errors_read_status_and_retry_info() {
    let a = adapter(ProviderKind::Gemini);
    let e = a.error(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), fixture!("gemini/error_quota.json").as_bytes());
    assert_eq!((e.kind, e.retry_after), (ErrorKind::RateLimited, Some(Duration::from_secs(36))));
    assert!(e.retryable());
    let e = a.error(StatusCode::BAD_REQUEST, &HeaderMap::new(), fixture!("gemini/error_api_key.json").as_bytes());
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Authentication, "API key not valid. Please pass a valid API key.")
    );
    assert!(!e.retryable());
    let e = a.error(
        StatusCode::SERVICE_UNAVAILABLE,
        &HeaderMap::new(),
        br#"[{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}]"#,
    );
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Unavailable, "The model is overloaded. Please try again later.")
    );
}

#[test]
fn embeddings_use_batch_embed_contents() {
    let a = adapter(ProviderKind::Gemini);
    let req: EmbeddingsRequest = serde_json::from_value(
        json!({"model": "emb", "input": ["What is the meaning of life?", "How much wood?"], "dimensions": 256}),
    )
    .unwrap();
    let upstream = a.embeddings_request(&req, &target(BASE, "text-embedding-004", &[])).unwrap();
    assert_eq!(
        upstream.uri(),
        "https://generativelanguage.googleapis.com/v1beta/models/text-embedding-004:batchEmbedContents"
    );
    assert_eq!(
        body_json(&upstream),
        json!({"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "What is the meaning of life?"}]}, "outputDimensionality": 256},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "How much wood?"}]}, "outputDimensionality": 256}
        ]})
    );
    let resp = a.embeddings_response(fixture!("gemini/embeddings_response.json").as_bytes()).unwrap();
    assert_eq!(
        serde_json::to_value(&resp).unwrap(),
        json!({"object": "list", "model": "", "data": [
            {"object": "embedding", "index": 0, "embedding": [0.013168523, -0.008711934, -0.046782676]},
            {"object": "embedding", "index": 1, "embedding": [0.0017530043, 0.02171219, -0.03514087]}
        ]})
    );
    let tokens: EmbeddingsRequest = serde_json::from_value(json!({"model": "emb", "input": [1, 2, 3]})).unwrap();
    assert!(matches!(a.embeddings_request(&tokens, &target(BASE, "e", &[])), Err(AdapterError::Unsupported { .. })));
}
