//! Provider mocks over real sockets on 127.0.0.1: tool calls, embeddings, Azure paths, auth
//! and per-key behaviour, usage reporting and the request log.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tollgate_loadtest::mock::MockHandle;
use tollgate_loadtest::mock::anthropic::MockAnthropic;
use tollgate_loadtest::mock::gemini::MockGemini;
use tollgate_loadtest::mock::llm::{LlmMockConfig, ToolCall, embedding, tool_arguments};
use tollgate_loadtest::mock::openai::MockOpenAi;

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// JSON payloads of the `data:` lines, without OpenAI's `[DONE]`.
    fn data(&self) -> Vec<Value> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d.trim_end()).unwrap())
            .collect()
    }

    /// Anthropic's `event:` names, in order.
    fn events(&self) -> Vec<&str> {
        self.body.lines().filter_map(|l| l.strip_prefix("event: ")).collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let resp = client.request(req.body(Full::new(payload)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Resp { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

const BEARER: (&str, &str) = ("authorization", "Bearer sk-test");
const ANTHROPIC: [(&str, &str); 2] = [("x-api-key", "sk-ant-test"), ("anthropic-version", "2023-06-01")];
const GOOG: (&str, &str) = ("x-goog-api-key", "goog-test");

async fn openai(cfg: LlmMockConfig) -> MockHandle {
    MockOpenAi::spawn(cfg).await.unwrap()
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "search_docs", "description": "search",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object", "properties": {}}}}])
}

fn openai_tool_request(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "stream_options": {"include_usage": true},
        "tools": weather_tool_openai(),
        "messages": [{"role": "user", "content": "find the gateway docs please"}]})
}

#[test]
fn tool_arguments_follow_the_schema() {
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "string", "enum": ["c", "f"]},
        "verbose": {"type": "boolean"}}, "required": ["city", "days", "unit"]});
    assert_eq!(tool_arguments(Some(&schema), "paris now"), json!({"city": "paris now", "days": 1, "unit": "c"}));
    // Gemini's upper-case types; no `required`: the first property.
    let gemini = json!({"type": "OBJECT", "properties": {"count": {"type": "INTEGER"}}});
    assert_eq!(tool_arguments(Some(&gemini), "x"), json!({"count": 1}));
    assert_eq!(tool_arguments(None, "a b"), json!({"query": "a b"}));
    let call = ToolCall { id: "c".into(), name: "f".into(), arguments: json!({"query": "quick brown fox"}) };
    let pieces = call.pieces();
    assert!(pieces.len() >= 2, "{pieces:?}");
    assert_eq!(pieces.concat(), call.arguments.to_string());
}

#[test]
fn embeddings_are_deterministic_unit_vectors() {
    let a = embedding("hello", 16);
    assert_eq!(a, embedding("hello", 16));
    assert_ne!(a, embedding("hello!", 16));
    assert_eq!(a.len(), 16);
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
}

#[tokio::test]
async fn openai_calls_the_first_tool_and_answers_tool_results_in_text() {
    let mock = openai(LlmMockConfig::default()).await;
    let url = format!("{}/v1/chat/completions", mock.url());

    let r = send("POST", &url, &[BEARER], Some(&openai_tool_request(false))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    let call = &msg["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "search_docs");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"query": "find the gateway docs please"}));

    // A named tool_choice wins over the first tool; "none" gets text.
    let mut forced = openai_tool_request(false);
    forced["tool_choice"] = json!({"type": "function", "function": {"name": "other"}});
    let v = send("POST", &url, &[BEARER], Some(&forced)).await.json();
    assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "other");
    forced["tool_choice"] = json!("none");
    let v = send("POST", &url, &[BEARER], Some(&forced)).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let mut followup = openai_tool_request(false);
    followup["messages"] = json!([
        {"role": "user", "content": "find the docs"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "search_docs", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"}]);
    let v = send("POST", &url, &[BEARER], Some(&followup)).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(!v["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn openai_streams_tool_call_arguments_over_several_chunks() {
    let mock = openai(LlmMockConfig::default()).await;
    let r =
        send("POST", &format!("{}/v1/chat/completions", mock.url()), &[BEARER], Some(&openai_tool_request(true))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.body.trim_end().ends_with("data: [DONE]"));
    let chunks = r.data();
    let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!((first["index"].as_u64(), first["function"]["name"].as_str()), (Some(0), Some("search_docs")));
    assert!(first["id"].as_str().is_some());
    let pieces: Vec<&str> = chunks[1..]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!(pieces.len() >= 2, "{pieces:?}");
    let args: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(args["query"], "find the gateway docs please");
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str()).unwrap();
    assert_eq!(finish, "tool_calls");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"].as_u64(), Some(pieces.len() as u64));
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
}

#[tokio::test]
async fn anthropic_tool_use_plain_and_streamed() {
    let mock = MockAnthropic::spawn(LlmMockConfig::default()).await.unwrap();
    let url = format!("{}/v1/messages", mock.url());
    let mut body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 100,
        "tools": [{"name": "get_weather", "description": "weather",
                   "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                    "required": ["location"]}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "weather in Paris"}]}]});

    let v = send("POST", &url, &ANTHROPIC, Some(&body)).await.json();
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!((block["type"].as_str(), block["name"].as_str()), (Some("tool_use"), Some("get_weather")));
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["input"], json!({"location": "weather in Paris"}));

    body["stream"] = json!(true);
    let r = send("POST", &url, &ANTHROPIC, Some(&body)).await;
    assert_eq!(r.events()[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(r.events()[r.events().len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    let data = r.data();
    assert_eq!(data[1]["content_block"]["type"], "tool_use");
    assert_eq!(data[1]["content_block"]["input"], json!({}));
    let partial: Vec<&str> = data
        .iter()
        .filter(|d| d["delta"]["type"] == "input_json_delta")
        .map(|d| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert!(partial.len() >= 2);
    assert_eq!(serde_json::from_str::<Value>(&partial.concat()).unwrap(), json!({"location": "weather in Paris"}));
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"].as_u64(), Some(partial.len() as u64));

    body["stream"] = json!(false);
    body["messages"] = json!([
        {"role": "user", "content": "weather in Paris"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]);
    let v = send("POST", &url, &ANTHROPIC, Some(&body)).await.json();
    assert_eq!((v["stop_reason"].as_str(), v["content"][0]["type"].as_str()), (Some("end_turn"), Some("text")));
}

#[tokio::test]
async fn gemini_function_calls_plain_and_streamed() {
    let mock = MockGemini::spawn(LlmMockConfig::default()).await.unwrap();
    let mut body = json!({
        "contents": [{"role": "user", "parts": [{"text": "lights off"}]}],
        "tools": [{"functionDeclarations": [{"name": "set_light", "parameters": {"type": "OBJECT",
            "properties": {"on": {"type": "BOOLEAN"}}, "required": ["on"]}}]}]});
    let url = |m: &str| format!("{}/v1beta/models/gemini-2.5-flash:{m}", mock.url());

    let v = send("POST", &url("generateContent"), &[GOOG], Some(&body)).await.json();
    let cand = &v["candidates"][0];
    assert_eq!(cand["content"]["parts"][0]["functionCall"], json!({"name": "set_light", "args": {"on": true}}));
    assert_eq!(cand["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");

    let r = send("POST", &url("streamGenerateContent?alt=sse"), &[GOOG], Some(&body)).await;
    let chunks = r.data();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"], "set_light");

    body["contents"] = json!([
        {"role": "user", "parts": [{"text": "lights off"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "set_light", "args": {"on": false}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "set_light", "response": {"ok": true}}}]}]);
    let v = send("POST", &url("generateContent"), &[GOOG], Some(&body)).await.json();
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].as_str().is_some());
}

#[tokio::test]
async fn openai_embeddings_for_strings_arrays_and_base64() {
    let mock = openai(LlmMockConfig { embedding_dimensions: 4, ..Default::default() }).await;
    let url = format!("{}/v1/embeddings", mock.url());
    let one = send("POST", &url, &[BEARER], Some(&json!({"model": "text-embedding-3-small", "input": "hello world"})))
        .await
        .json();
    assert_eq!((one["object"].as_str(), one["model"].as_str()), (Some("list"), Some("text-embedding-3-small")));
    let vec_one = one["data"][0]["embedding"].as_array().unwrap().clone();
    assert_eq!(vec_one.len(), 4);
    assert_eq!(one["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

    let many =
        send("POST", &url, &[BEARER], Some(&json!({"model": "m", "input": ["hello world", "bye"]}))).await.json();
    let data = many["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!((data[1]["index"].as_u64(), data[1]["object"].as_str()), (Some(1), Some("embedding")));
    assert_eq!(data[0]["embedding"].as_array().unwrap(), &vec_one, "same input, same vector");
    assert_ne!(data[1]["embedding"], data[0]["embedding"]);

    let sized = send("POST", &url, &[BEARER], Some(&json!({"model": "m", "input": "x", "dimensions": 12}))).await;
    assert_eq!(sized.json()["data"][0]["embedding"].as_array().unwrap().len(), 12);

    let b64 = send(
        "POST",
        &url,
        &[BEARER],
        Some(&json!({"model": "m", "input": "hello world", "encoding_format": "base64"})),
    )
    .await
    .json();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let floats: Vec<f32> = raw.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(floats, embedding("hello world", 4));

    let bad = send("POST", &url, &[BEARER], Some(&json!({"model": "m", "input": []}))).await;
    assert_eq!((bad.status, bad.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")));
}

#[tokio::test]
async fn gemini_embed_and_batch_embed() {
    let mock = MockGemini::spawn(LlmMockConfig::default()).await.unwrap();
    let base = format!("{}/v1beta/models/text-embedding-004", mock.url());
    let content = json!({"parts": [{"text": "hello"}]});
    let single = send("POST", &format!("{base}:embedContent"), &[GOOG], Some(&json!({"content": content}))).await;
    assert_eq!(single.status, 200, "{}", single.body);
    let values = single.json()["embedding"]["values"].clone();
    assert_eq!(values.as_array().unwrap().len(), 8);

    let batch = json!({"requests": [
        {"model": "models/text-embedding-004", "content": content},
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "other"}]}, "outputDimensionality": 3}]});
    let v = send("POST", &format!("{base}:batchEmbedContents"), &[GOOG], Some(&batch)).await.json();
    let embeddings = v["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    assert_eq!(embeddings[0]["values"], values);
    assert_eq!(embeddings[1]["values"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn azure_paths_need_api_version_and_api_key_and_report_the_deployments_model() {
    let cfg =
        LlmMockConfig { azure_deployments: vec![("prod-4o".into(), "gpt-4o-2024-08-06".into())], ..Default::default() };
    let mock = openai(cfg).await;
    let chat = |q: &str| format!("{}/openai/deployments/prod-4o/chat/completions{q}", mock.url());
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let key = ("api-key", "azure-key-1");

    let r = send("POST", &chat("?api-version=2024-10-21"), &[key], Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["model"], "gpt-4o-2024-08-06");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["prompt_filter_results"].is_array());

    let r = send("POST", &chat(""), &[key], Some(&body)).await;
    assert_eq!((r.status, r.json()), (404, json!({"error": {"code": "404", "message": "Resource not found"}})));
    let r = send("POST", &chat("?api-version=2024-10-21"), &[], Some(&body)).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("401")));
    let other = format!("{}/openai/deployments/nope/chat/completions?api-version=2024-10-21", mock.url());
    let r = send("POST", &other, &[key], Some(&body)).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("DeploymentNotFound")));

    // Azure opens streams with a choice-less chunk carrying prompt filter results.
    let stream = json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let chunks = send("POST", &chat("?api-version=2024-10-21"), &[key], Some(&stream)).await.data();
    assert_eq!(chunks[0]["choices"], json!([]));
    assert!(chunks[0]["prompt_filter_results"].is_array());
    assert_eq!(chunks[1]["model"], "gpt-4o-2024-08-06");

    let emb = format!("{}/openai/deployments/prod-4o/embeddings?api-version=2024-10-21", mock.url());
    let v = send("POST", &emb, &[key], Some(&json!({"input": "hi"}))).await.json();
    assert_eq!(
        (v["model"].as_str(), v["data"][0]["embedding"].as_array().map(Vec::len)),
        (Some("gpt-4o-2024-08-06"), Some(8))
    );

    let seen = mock.requests();
    assert_eq!(seen[0].credential.as_deref(), Some("azure-key-1"));
    assert_eq!(seen[0].path, "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21");
    assert_eq!(seen[0].model(), Some("prod-4o"));
}

#[tokio::test]
async fn missing_and_unknown_keys_get_each_providers_auth_error() {
    let cfg = LlmMockConfig { accepted_keys: vec!["good".into()], ..Default::default() };
    let chat = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});

    let oa = openai(cfg.clone()).await;
    let url = format!("{}/v1/chat/completions", oa.url());
    let r = send("POST", &url, &[], Some(&chat)).await;
    assert_eq!((r.status, r.json()["error"]["type"].as_str()), (401, Some("invalid_request_error")));
    let r = send("POST", &url, &[("authorization", "Bearer bad")], Some(&chat)).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    assert_eq!(send("POST", &url, &[("authorization", "Bearer good")], Some(&chat)).await.status, 200);
    assert_eq!(send("GET", &format!("{}/v1/models", oa.url()), &[], None).await.status, 401);

    let an = MockAnthropic::spawn(cfg.clone()).await.unwrap();
    let url = format!("{}/v1/messages", an.url());
    let r = send("POST", &url, &[("anthropic-version", "2023-06-01")], Some(&chat)).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "authentication_error", "message": "x-api-key header is required"}})
    );
    let r = send("POST", &url, &[("x-api-key", "good")], Some(&chat)).await;
    assert_eq!((r.status, r.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    let r = send("POST", &url, &[("x-api-key", "good"), ("anthropic-version", "2023-06-01")], Some(&chat)).await;
    assert_eq!(r.status, 200);

    let ge = MockGemini::spawn(cfg).await.unwrap();
    let url = format!("{}/v1beta/models/gemini-2.0-flash:generateContent", ge.url());
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let r = send("POST", &url, &[], Some(&body)).await;
    assert_eq!((r.status, r.json()["error"]["status"].as_str()), (403, Some("PERMISSION_DENIED")));
    let r = send("POST", &url, &[("x-goog-api-key", "bad")], Some(&body)).await;
    assert_eq!((r.status, r.json()["error"]["details"][0]["reason"].as_str()), (400, Some("API_KEY_INVALID")));
    assert_eq!(send("POST", &format!("{url}?key=good"), &[], Some(&body)).await.status, 200);
    let last = ge.last_request().unwrap();
    assert_eq!((last.credential.as_deref(), last.model()), (Some("good"), Some("gemini-2.0-flash")));
}

#[tokio::test]
async fn rate_limited_and_failing_keys_get_provider_errors_with_retry_after() {
    let cfg = LlmMockConfig {
        rate_limited_keys: vec!["slow".into()],
        fail_status_keys: vec![("broken".into(), 529), ("down".into(), 503)],
        retry_after_secs: 7,
        ..Default::default()
    };
    let chat = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});

    let oa = openai(cfg.clone()).await;
    let url = format!("{}/v1/chat/completions", oa.url());
    let r = send("POST", &url, &[("authorization", "Bearer slow")], Some(&chat)).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    let e = &r.json()["error"];
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("requests"), Some("rate_limit_exceeded")));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let r = send("POST", &url, &[("authorization", "Bearer down")], Some(&chat)).await;
    assert_eq!((r.status, r.json()["error"]["type"].as_str()), (503, Some("server_error")));
    assert_eq!(send("POST", &url, &[("authorization", "Bearer fine")], Some(&chat)).await.status, 200);

    let an = MockAnthropic::spawn(cfg.clone()).await.unwrap();
    let url = format!("{}/v1/messages", an.url());
    let r = send("POST", &url, &[("x-api-key", "slow"), ("anthropic-version", "2023-06-01")], Some(&chat)).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("anthropic-ratelimit-requests-reset").is_some());
    let r = send("POST", &url, &[("x-api-key", "broken"), ("anthropic-version", "2023-06-01")], Some(&chat)).await;
    assert_eq!((r.status, r.json()["error"]["type"].as_str()), (529, Some("overloaded_error")));

    let ge = MockGemini::spawn(cfg).await.unwrap();
    let url = format!("{}/v1beta/models/gemini-2.0-flash:generateContent?key=slow", ge.url());
    let r = send("POST", &url, &[], Some(&json!({"contents": []}))).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(r.json()["error"]["details"][0]["retryDelay"], "7s");
}

#[tokio::test]
async fn without_require_auth_keyless_requests_are_served() {
    let cfg = LlmMockConfig { require_auth: false, rate_limited_keys: vec!["slow".into()], ..Default::default() };
    let an = MockAnthropic::spawn(cfg).await.unwrap();
    let body = json!({"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/v1/messages", an.url());
    assert_eq!(send("POST", &url, &[], Some(&body)).await.status, 200);
    assert_eq!(send("POST", &url, &[("x-api-key", "slow")], Some(&body)).await.status, 429);
}

#[tokio::test]
async fn request_log_records_credentials_models_and_bodies() {
    let mock = openai(LlmMockConfig { request_log_limit: 3, ..Default::default() }).await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    send("POST", &url, &[("authorization", "Bearer key-a"), ("x-trace", "t1")], Some(&body)).await;
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(r.credential.as_deref(), Some("key-a"));
    assert_eq!(r.model(), Some("gpt-4o-mini"));
    assert_eq!(r.header("X-Trace"), Some("t1"));
    assert_eq!(r.body.as_ref().unwrap().pointer("/stream_options/include_usage"), Some(&json!(true)));

    // Failed requests are logged too, and the log keeps only the most recent entries.
    for key in ["key-b", "key-c", "key-d"] {
        send("GET", &format!("{}/nowhere?x=1", mock.url()), &[("authorization", &format!("Bearer {key}"))], None).await;
    }
    let seen = mock.requests();
    let creds: Vec<_> = seen.iter().map(|r| r.credential.as_deref().unwrap()).collect();
    assert_eq!(creds, ["key-b", "key-c", "key-d"]);
    assert_eq!(seen[2].path, "/nowhere?x=1");
    assert_eq!(seen[2].body, None);
    mock.clear_requests();
    assert!(mock.requests().is_empty());
    assert_eq!(mock.requests_served(), 4);
}

#[tokio::test]
async fn usage_is_reported_the_providers_way_including_cached_tokens() {
    let cfg = LlmMockConfig { tokens: 4, cached_tokens: 2, ..Default::default() };
    let messages = json!([{"role": "user", "content": "a prompt long enough for several tokens"}]);

    let oa = openai(cfg.clone()).await;
    let body = json!({"model": "m", "messages": messages});
    let v = send("POST", &format!("{}/v1/chat/completions", oa.url()), &[BEARER], Some(&body)).await.json();
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 4);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + 4));
    // Without include_usage a stream carries no usage at all.
    let stream = json!({"model": "m", "stream": true, "messages": messages});
    let chunks = send("POST", &format!("{}/v1/chat/completions", oa.url()), &[BEARER], Some(&stream)).await.data();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    let an = MockAnthropic::spawn(cfg.clone()).await.unwrap();
    let body = json!({"model": "m", "max_tokens": 10, "stream": true, "messages": messages});
    let data = send("POST", &format!("{}/v1/messages", an.url()), &ANTHROPIC, Some(&body)).await.data();
    let start = &data[0]["message"]["usage"];
    assert_eq!(start["cache_read_input_tokens"], 2);
    assert!(start["input_tokens"].as_u64().unwrap() > 0);
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 4);

    let ge = MockGemini::spawn(cfg).await.unwrap();
    let url = format!("{}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", ge.url());
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "a prompt"}]}]});
    let chunks = send("POST", &url, &[GOOG], Some(&body)).await.data();
    let counts: Vec<u64> =
        chunks.iter().map(|c| c["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3, 4], "cumulative, the last one is the total");
    let last = &chunks[3]["usageMetadata"];
    assert_eq!(last["cachedContentTokenCount"], 2);
    assert_eq!(last["totalTokenCount"].as_u64(), Some(last["promptTokenCount"].as_u64().unwrap() + 4));
}

#[tokio::test]
async fn omit_usage_sends_no_token_counts_even_when_asked() {
    let cfg = LlmMockConfig { omit_usage: true, ..Default::default() };
    let oa = openai(cfg.clone()).await;
    let url = format!("{}/v1/chat/completions", oa.url());
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let r = send("POST", &url, &[BEARER], Some(&body)).await;
    assert!(r.data().iter().all(|c| c.get("usage").is_none()), "{}", r.body);
    assert!(r.data().iter().all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())));
    let v = send("POST", &url, &[BEARER], Some(&json!({"model": "m", "messages": []}))).await.json();
    assert!(v.get("usage").is_none());
    let v = send("POST", &format!("{}/v1/embeddings", oa.url()), &[BEARER], Some(&json!({"input": "x"}))).await.json();
    assert!(v.get("usage").is_none());

    let an = MockAnthropic::spawn(cfg.clone()).await.unwrap();
    let body = json!({"model": "m", "max_tokens": 3, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let data = send("POST", &format!("{}/v1/messages", an.url()), &ANTHROPIC, Some(&body)).await.data();
    assert!(data.iter().all(|d| d.get("usage").is_none() && d["message"].get("usage").is_none()));

    let ge = MockGemini::spawn(cfg).await.unwrap();
    let url = format!("{}/v1beta/models/g:generateContent", ge.url());
    let v = send("POST", &url, &[GOOG], Some(&json!({"contents": []}))).await.json();
    assert!(v.get("usageMetadata").is_none());
}

#[test]
fn cli_mock_takes_per_key_flags() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_tollgate-load");
    let mut child = Command::new(bin)
        .args(["mock", "openai", "--exit-after", "60s", "--rate-limited-key", "slow", "--fail-status-key"])
        .args(["down=503", "--retry-after", "3", "--azure-deployment", "d1=gpt-4o", "--omit-usage"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = rt.block_on(async {
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let url = format!("http://{addr}/v1/chat/completions");
        let slow = send("POST", &url, &[("authorization", "Bearer slow")], Some(&chat)).await;
        let down = send("POST", &url, &[("authorization", "Bearer down")], Some(&chat)).await;
        let none = send("POST", &url, &[], Some(&chat)).await;
        let azure = format!("http://{addr}/openai/deployments/d1/chat/completions?api-version=2024-10-21");
        let ok = send("POST", &azure, &[("api-key", "k")], Some(&chat)).await;
        (slow, down, none, ok)
    });
    let _ = child.kill();
    let _ = child.wait();
    let (slow, down, none, ok) = results;
    assert_eq!((slow.status, slow.header("retry-after")), (429, Some("3")));
    assert_eq!((down.status, none.status, ok.status), (503, 401, 200));
    let v = ok.json();
    assert_eq!(v["model"], "gpt-4o");
    assert!(v.get("usage").is_none());
}

#[test]
fn cli_rejects_malformed_key_status() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-load"))
        .args(["mock", "anthropic", "--fail-status-key", "k=200"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=STATUS"));
}
