//! `/v1/messages` ingress goldens: Anthropic requests in, Anthropic answers and events out.

use serde_json::json;

use super::*;
use crate::anthropic_ingress::{MessagesStreamEncoder, chat_response_to_messages, messages_request_to_chat};
use crate::error::AdapterError;
use crate::provider::{ProviderKind, adapter};
use crate::types::wants_usage_chunk;

/// `event: X\ndata: Y\n\n` frames → `{"event": X, "data": Y}`.
fn events(frames: &[Bytes]) -> Value {
    frames
        .iter()
        .map(|f| {
            let text = std::str::from_utf8(f).unwrap();
            let body = text.strip_suffix("\n\n").expect("frame ends with a blank line");
            let (event, data) = body.split_once('\n').unwrap();
            json!({"event": event.strip_prefix("event: ").unwrap(), "data": json(data.strip_prefix("data: ").unwrap())})
        })
        .collect()
}

fn reencode(provider: ProviderKind, transcript: &str, input_tokens: u64) -> Value {
    let d = decode(adapter(provider), transcript.as_bytes(), &[]);
    d.finish.expect("complete transcript");
    let mut enc = MessagesStreamEncoder::new("claude-alias", input_tokens);
    let mut frames: Vec<Bytes> = d.chunks.iter().flat_map(|c| enc.encode(c)).collect();
    frames.extend(enc.finish(None, None));
    assert!(enc.finish(None, None).is_empty(), "finish is idempotent");
    events(&frames)
}

#[test]
fn messages_request_translates_to_chat() {
    let req = messages_request_to_chat(fixture!("ingress/messages_request.json").as_bytes()).unwrap();
    assert_eq!(serde_json::to_value(&req).unwrap(), json(fixture!("ingress/chat_expected.json")));
    assert!(wants_usage_chunk(&req));
    assert_eq!(Value::Object(req.anthropic_extra.clone()), json!({"top_k": 40, "metadata": {"user_id": "user-42"}}));
    // Routed back to Anthropic, the request is what the caller sent (system blocks joined).
    let upstream = adapter(ProviderKind::Anthropic)
        .chat_request(&req, &target("https://api.anthropic.com", "claude-sonnet-4-20250514", &[]))
        .unwrap();
    assert_eq!(body_json(&upstream), json(fixture!("ingress/anthropic_roundtrip_expected.json")));
}

#[test]
fn malformed_messages_requests_say_what_is_wrong() {
    let err = messages_request_to_chat(b"{\"model\": 1}").unwrap_err();
    assert!(matches!(err, AdapterError::MalformedRequest(_)), "{err}");
    let err = messages_request_to_chat(br#"{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#)
        .unwrap_err();
    assert!(err.to_string().contains("top-level system field"), "{err}");
    let err = messages_request_to_chat(
        br#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#,
    )
    .unwrap_err();
    assert!(matches!(err, AdapterError::Unsupported { .. }), "{err}");
}

#[test]
fn chat_responses_translate_to_messages() {
    let a = adapter(ProviderKind::OpenAi);
    let resp = a.chat_response(fixture!("openai/chat_response_tool_calls.json").as_bytes()).unwrap();
    assert_eq!(
        chat_response_to_messages(&resp, "claude-alias"),
        json(fixture!("ingress/messages_response_tool_calls.json"))
    );
    let resp = a.chat_response(fixture!("openai/chat_response.json").as_bytes()).unwrap();
    assert_eq!(chat_response_to_messages(&resp, "claude-alias"), json(fixture!("ingress/messages_response_text.json")));
}

#[test]
fn stream_encoder_produces_anthropic_event_sequence() {
    // Anthropic → canonical → Anthropic gives back the documented sequence (pings and empty
    // input fragments aside).
    assert_eq!(
        reencode(ProviderKind::Anthropic, fixture!("anthropic/stream_tool_use.sse"), 470),
        json(fixture!("ingress/stream_tool_use_events.json"))
    );
    assert_eq!(
        reencode(ProviderKind::OpenAi, fixture!("openai/stream.sse"), 8),
        json(fixture!("ingress/stream_openai_text_events.json"))
    );
}

#[test]
fn stream_encoder_closes_cleanly_without_content() {
    let mut enc = MessagesStreamEncoder::new("claude-alias", 3);
    let ev = events(&enc.finish(None, Some("length")));
    let names: Vec<&str> = ev.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
    assert_eq!(ev[1]["data"]["delta"]["stop_reason"], "max_tokens");
}
