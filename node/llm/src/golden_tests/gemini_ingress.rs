//! Gemini-format ingress goldens: `generateContent` requests in, `GenerateContentResponse`s
//! (whole, as SSE events and as a JSON array) out.

use serde_json::json;

use super::*;
use crate::error::{AdapterError, ErrorKind};
use crate::gemini_ingress::{
    GeminiCall, GenerateContentStreamEncoder, StreamFormat, chat_response_to_gemini, generate_content_to_chat,
    parse_call, presented_key,
};
use crate::provider::{ProviderKind, adapter};
use crate::types::wants_usage_chunk;

fn translate(body: &Value) -> Result<ChatRequest, AdapterError> {
    generate_content_to_chat(body.to_string().as_bytes(), "m", false)
}

/// `data: X\r\n\r\n` events → X.
fn sse_values(frames: &[Bytes]) -> Vec<Value> {
    let text: String = frames.iter().map(|f| std::str::from_utf8(f).unwrap()).collect();
    text.split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| json(e.strip_prefix("data: ").expect("every event is one data line")))
        .collect()
}

/// Decodes a provider transcript and encodes it for a Gemini caller.
fn reencode(provider: ProviderKind, transcript: &str, format: StreamFormat) -> Vec<Bytes> {
    let d = decode(adapter(provider), transcript.as_bytes(), &[]);
    d.finish.expect("complete transcript");
    let mut enc = GenerateContentStreamEncoder::new(format, "gemini-proxy");
    let mut frames: Vec<Bytes> = d.chunks.iter().flat_map(|c| enc.encode(c)).collect();
    frames.extend(enc.finish(d.usage.as_ref(), d.finish_reason.as_deref()));
    assert!(enc.finish(None, None).is_empty(), "finish is idempotent");
    frames
}

#[test]
fn paths_name_the_model_and_the_stream_framing() {
    let call = |path: &str, query: Option<&str>| parse_call(path, query);
    let gemini = |model: &str, stream| Some(GeminiCall { model: model.into(), stream });
    assert_eq!(call("/v1beta/models/gemini-2.0-flash:generateContent", None), gemini("gemini-2.0-flash", None));
    assert_eq!(
        call("/v1beta/models/fast:streamGenerateContent", Some("alt=sse")),
        gemini("fast", Some(StreamFormat::Sse))
    );
    assert_eq!(
        call("/v1beta/models/fast:streamGenerateContent", Some("key=tg_x&alt=json")),
        gemini("fast", Some(StreamFormat::JsonArray)),
        "without alt=sse the stream is a JSON array"
    );
    // The SDKs send `provider/model` names as they are.
    assert_eq!(call("/v1beta/models/openai/gpt-4o:generateContent", None), gemini("openai/gpt-4o", None));
    assert_eq!(call("/llm/v1beta/models/openai%2Fgpt-4o:generateContent", None), gemini("openai/gpt-4o", None));
    assert_eq!(call("/v1beta/models/fast:countTokens", None), None);
    assert_eq!(call("/v1/chat/completions", None), None);
    assert_eq!(call("/v1beta/models", None), None);
}

#[test]
fn the_key_comes_from_the_header_or_the_query() {
    let with = |pairs: &[(&'static str, &'static str)]| headers(pairs);
    assert_eq!(presented_key(&with(&[("x-goog-api-key", "tg_h")]), Some("key=tg_q")), Some("tg_h"));
    assert_eq!(presented_key(&with(&[]), Some("alt=sse&key=tg_q")), Some("tg_q"));
    assert_eq!(presented_key(&with(&[]), Some("key=")), None);
    assert_eq!(presented_key(&with(&[]), Some("monkey=x")), None);
    assert_eq!(presented_key(&with(&[]), None), None);
}

#[test]
fn generate_content_request_translates_to_chat() {
    let body = fixture!("ingress/gemini_request.json");
    let req = generate_content_to_chat(body.as_bytes(), "openai/gpt-4o", false).unwrap();
    assert_eq!(serde_json::to_value(&req).unwrap(), json(fixture!("ingress/gemini_chat_expected.json")));
    assert_eq!(Value::Object(req.anthropic_extra.clone()), json!({"top_k": 40}), "top_k is for Anthropic only");
    let streamed = generate_content_to_chat(body.as_bytes(), "m", true).unwrap();
    assert!(streamed.is_stream() && wants_usage_chunk(&streamed), "the last event needs the final usage");

    // Routed to Anthropic: the function response answers the call it was matched to.
    let upstream = adapter(ProviderKind::Anthropic)
        .chat_request(&req, &target("https://api.anthropic.com", "claude-sonnet-4-5", &[]))
        .unwrap();
    let messages = body_json(&upstream)["messages"].clone();
    assert_eq!(messages[1]["content"][1]["id"], "call_1_0");
    assert_eq!(messages[2]["content"][0]["tool_use_id"], "call_1_0");
    assert_eq!(body_json(&upstream)["top_k"], 40);
    // And to Gemini, the call and its response are paired by name again.
    let upstream = adapter(ProviderKind::Gemini)
        .chat_request(&req, &target("https://generativelanguage.googleapis.com", "gemini-2.0-flash", &[]))
        .unwrap();
    let contents = body_json(&upstream)["contents"].clone();
    assert_eq!(contents[1]["parts"][1]["functionCall"]["name"], "get_weather");
    assert_eq!(contents[2]["parts"][0]["functionResponse"]["name"], "get_weather");
    assert_eq!(contents[2]["parts"][0]["functionResponse"]["response"], json!({"temperature": 22, "unit": "celsius"}));
}

#[test]
fn json_output_snake_case_fields_and_call_ids() {
    let req = translate(&json!({
        "contents": [
            {"parts": [{"text": "List two colours"}]},
            {"role": "model", "parts": [{"function_call": {"id": "c-7", "name": "f", "args": {}}}, {"functionCall": {"name": "f"}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": "b"}}},
                                       {"functionResponse": {"id": "c-7", "name": "f", "response": {"output": "a"}}}]}
        ],
        "system_instruction": {"parts": [{"text": "Terse."}]},
        "generation_config": {"response_mime_type": "application/json",
                              "response_schema": {"type": "ARRAY", "items": {"type": "STRING"}}},
        "tool_config": {"function_calling_config": {"mode": "NONE"}}
    }))
    .unwrap();
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(v["messages"][0], json!({"role": "system", "content": "Terse."}));
    assert_eq!(v["messages"][1], json!({"role": "user", "content": "List two colours"}), "the role defaults to user");
    let calls = &v["messages"][2]["tool_calls"];
    assert_eq!((calls[0]["id"].as_str(), calls[1]["id"].as_str()), (Some("c-7"), Some("call_1_1")));
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    // By id when the response has one, else the first unanswered call of that name.
    assert_eq!(v["messages"][3]["tool_call_id"], "call_1_1");
    assert_eq!(v["messages"][4]["tool_call_id"], "c-7");
    assert_eq!(
        v["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "array", "items": {"type": "string"}}}})
    );
    assert_eq!(v["tool_choice"], "none");

    let req = translate(&json!({"contents": [{"parts": [{"text": "x"}]}],
        "generationConfig": {"responseMimeType": "application/json"}, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}))
    .unwrap();
    assert_eq!(serde_json::to_value(&req.response_format).unwrap(), json!({"type": "json_object"}));
    assert_eq!(serde_json::to_value(&req.tool_choice).unwrap(), json!("required"));
}

#[test]
fn malformed_generate_content_requests_say_what_is_wrong() {
    let err = |body: Value| translate(&body).unwrap_err().to_string();
    assert!(matches!(translate(&json!({"contents": "hi"})), Err(AdapterError::MalformedRequest(_))));
    assert!(err(json!({"contents": []})).contains("`contents` is required"));
    assert!(err(json!({"contents": [{"role": "system", "parts": [{"text": "x"}]}]})).contains("systemInstruction"));
    let search = err(json!({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]}));
    assert!(search.contains("\"googleSearch\"") && search.contains("functionDeclarations"), "{search}");
    let orphan = err(json!({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}));
    assert!(orphan.contains("answers no functionCall"), "{orphan}");
    let audio = err(json!({"contents": [{"parts": [{"inlineData": {"mimeType": "audio/mp3", "data": "AA=="}}]}]}));
    assert!(audio.contains("audio/mp3"), "{audio}");
}

#[test]
fn chat_responses_translate_to_generate_content_responses() {
    let a = adapter(ProviderKind::OpenAi);
    let resp = a.chat_response(fixture!("openai/chat_response.json").as_bytes()).unwrap();
    assert_eq!(
        chat_response_to_gemini(&resp, "gemini-proxy"),
        json!({
            "candidates": [{"content": {"parts": [{"text": "Hello! How can I assist you today?"}], "role": "model"},
                            "index": 0, "finishReason": "STOP"}],
            "modelVersion": "gemini-proxy",
            "responseId": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "usageMetadata": {"promptTokenCount": 19, "candidatesTokenCount": 10, "totalTokenCount": 29,
                              "cachedContentTokenCount": 0}
        })
    );
    let resp = a.chat_response(fixture!("openai/chat_response_tool_calls.json").as_bytes()).unwrap();
    assert_eq!(
        chat_response_to_gemini(&resp, "gemini-proxy"),
        json!({
            "candidates": [{"content": {"parts": [{"functionCall": {"name": "get_current_weather",
                                                                     "args": {"location": "Boston, MA"},
                                                                     "id": "call_abc123"}}],
                                        "role": "model"},
                            "index": 0, "finishReason": "STOP"}],
            "modelVersion": "gemini-proxy",
            "responseId": "chatcmpl-abc123",
            "usageMetadata": {"promptTokenCount": 82, "candidatesTokenCount": 17, "totalTokenCount": 99}
        })
    );
}

#[test]
fn stream_encoder_sends_text_as_it_comes_and_calls_whole_at_the_end() {
    let text = |t: &str| {
        json!({"candidates": [{"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}],
               "modelVersion": "gemini-proxy", "responseId": "chatcmpl-123"})
    };
    let events = sse_values(&reencode(ProviderKind::OpenAi, fixture!("openai/stream.sse"), StreamFormat::Sse));
    assert_eq!(
        events,
        vec![
            text("Hello"),
            text("!"),
            json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "index": 0,
                                   "finishReason": "STOP"}],
                   "modelVersion": "gemini-proxy", "responseId": "chatcmpl-123",
                   "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "totalTokenCount": 11,
                                     "cachedContentTokenCount": 0}}),
        ]
    );
    let events =
        sse_values(&reencode(ProviderKind::OpenAi, fixture!("openai/stream_tool_calls.sse"), StreamFormat::Sse));
    assert_eq!(
        events,
        vec![json!({
            "candidates": [{"content": {"parts": [{"functionCall": {"name": "get_current_weather",
                                                                     "args": {"location": "Paris, France"},
                                                                     "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA"}}],
                                        "role": "model"},
                            "index": 0, "finishReason": "STOP"}],
            "modelVersion": "gemini-proxy", "responseId": "chatcmpl-AB1",
            "usageMetadata": {"promptTokenCount": 85, "candidatesTokenCount": 17, "totalTokenCount": 102}
        })]
    );
}

#[test]
fn json_array_streams_are_one_valid_array_even_when_they_break() {
    // The same responses as the SSE events, framed as one JSON array.
    for (provider, transcript) in [
        (ProviderKind::OpenAi, fixture!("openai/stream.sse")),
        (ProviderKind::Anthropic, fixture!("anthropic/stream_tool_use.sse")),
        (ProviderKind::Gemini, fixture!("gemini/stream.sse")),
    ] {
        let array: Vec<u8> = reencode(provider, transcript, StreamFormat::JsonArray).concat();
        let sse = sse_values(&reencode(provider, transcript, StreamFormat::Sse));
        assert_eq!(serde_json::from_slice::<Value>(&array).unwrap(), Value::Array(sse), "{provider:?}");
    }
    let d = decode(adapter(ProviderKind::Gemini), fixture!("gemini/stream.sse").as_bytes(), &[]);
    let mut enc = GenerateContentStreamEncoder::new(StreamFormat::JsonArray, "m");
    let mut frames: Vec<Bytes> = d.chunks.iter().take(2).flat_map(|c| enc.encode(c)).collect();
    frames.push(enc.error(ErrorKind::Timeout, "the provider sent nothing for 150 ms mid-stream"));
    assert!(enc.finish(None, None).is_empty(), "nothing follows the error");
    let array: Value = serde_json::from_slice(&frames.concat()).expect("a broken stream is still a JSON array");
    let last = array.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["error"]["status"], "DEADLINE_EXCEEDED");
    assert_eq!(last["error"]["code"], 504);
    let mut enc = GenerateContentStreamEncoder::new(StreamFormat::JsonArray, "m");
    let only = enc.error(ErrorKind::Server, "broken");
    assert_eq!(json(std::str::from_utf8(&only).unwrap())[0]["error"]["status"], "INTERNAL");
}

#[test]
fn gemini_error_bodies_carry_the_gateway_code() {
    let (status, body) = crate::error::gemini_error_body(
        http::StatusCode::BAD_GATEWAY,
        ErrorKind::ProviderAuth,
        "provider google refused the gateway's credential",
    );
    assert_eq!(status, 502);
    assert_eq!(
        json(std::str::from_utf8(&body).unwrap()),
        json!({"error": {"code": 502, "message": "provider google refused the gateway's credential",
                         "status": "INTERNAL",
                         "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                      "reason": "PROVIDER_AUTH_FAILED", "domain": "tollgate"}]}})
    );
}

#[test]
fn requests_above_the_part_cap_are_refused_with_the_limit() {
    use crate::gemini_ingress::{MAX_CONTENTS, MAX_PARTS};
    let parts: Vec<Value> = (0..=MAX_PARTS).map(|_| json!({"text": "x"})).collect();
    let err = translate(&json!({"contents": [{"parts": parts}]})).unwrap_err();
    assert!(matches!(err, AdapterError::InvalidRequest(_)), "{err}");
    assert!(err.to_string().contains(&format!("at most {MAX_PARTS} parts")), "{err}");
    let contents: Vec<Value> = (0..=MAX_CONTENTS).map(|_| json!({"parts": [{"text": "x"}]})).collect();
    let err = translate(&json!({ "contents": contents })).unwrap_err().to_string();
    assert!(err.contains(&format!("at most {MAX_CONTENTS}")), "{err}");
    // Rendered for a Gemini caller: a 400 in Google's error format.
    let (status, body) =
        crate::error::gemini_error_body(http::StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, &err);
    assert_eq!(status, 400);
    assert_eq!(json(std::str::from_utf8(&body).unwrap())["error"]["status"], "INVALID_ARGUMENT");
}

#[test]
fn ten_thousand_calls_and_responses_translate() {
    const N: usize = 10_000;
    let calls: Vec<Value> =
        (0..N).map(|i| json!({"functionCall": {"name": format!("f{}", i % 7), "args": {}}})).collect();
    // Half answer by id (in reverse), half by name only.
    let responses: Vec<Value> = (0..N)
        .rev()
        .map(|i| {
            let name = format!("f{}", i % 7);
            if i % 2 == 0 {
                json!({"functionResponse": {"id": format!("call_1_{i}"), "name": name, "response": {"i": i}}})
            } else {
                json!({"functionResponse": {"name": name, "response": {"i": i}}})
            }
        })
        .collect();
    let req = translate(&json!({"contents": [
        {"parts": [{"text": "go"}]},
        {"role": "model", "parts": calls},
        {"role": "user", "parts": responses}
    ]}))
    .unwrap();
    assert_eq!(req.messages.len(), 2 + N);
    let mut answered: Vec<String> = req.messages[2..].iter().map(|m| m.tool_call_id.clone().unwrap()).collect();
    // By id where given.
    assert_eq!(answered[1], format!("call_1_{}", N - 2));
    answered.sort();
    answered.dedup();
    assert_eq!(answered.len(), N, "every call answered exactly once");
}

#[test]
fn candidate_count_out_of_range_is_refused() {
    let with = |count: Value| {
        translate(&json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": count}}))
    };
    assert_eq!(with(json!(3)).unwrap().n, Some(3));
    for bad in [json!(0), json!(9), json!(4294967297u64), json!(-1), json!(1.5), json!("2")] {
        let err = with(bad.clone()).unwrap_err().to_string();
        assert!(err.contains("candidateCount") && err.contains("from 1 to 8"), "{bad}: {err}");
    }
}
