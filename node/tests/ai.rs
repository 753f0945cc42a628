//! The AI gateway end to end: a real node, real mock providers speaking each
//! provider's wire format on loopback, requests through the proxy, usage read
//! back from the node's ledger through the admin API.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{Bearer, TOKEN, full, http_client, send};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_loadtest::mock::MockHandle;
use tollgate_loadtest::mock::anthropic::MockAnthropic;
use tollgate_loadtest::mock::gemini::MockGemini;
use tollgate_loadtest::mock::llm::LlmMockConfig;
use tollgate_loadtest::mock::openai::MockOpenAi;
use tollgate_node::Node;
use tollgate_proto::admin::v1::ai_service_client::AiServiceClient;
use tollgate_proto::admin::v1::{CreateApiKeyRequest, GetUsageRequest, UsageRow};
use tollgate_proto::config::v1::{
    AliasTarget, AuthMode, Consumer, ModelAlias, ModelPrice, PathMatch, Provider, ProviderCredential, ProviderKind,
    Route, RoutePath,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Ai = AiServiceClient<InterceptedService<Channel, Bearer>>;

struct Gateway {
    node: Node,
    ai: Ai,
    key: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// A node with an AI route at /v1 behind API keys, and one key.
    async fn start() -> Gateway {
        Gateway::start_with_models(vec![]).await
    }

    async fn start_with_models(allowed_models: Vec<String>) -> Gateway {
        Gateway::start_with(allowed_models, |_| {}).await
    }

    async fn start_with(allowed_models: Vec<String>, configure: impl FnOnce(&mut tollgate_node::Config)) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::test_config(dir.path());
        configure(&mut config);
        let node = Node::start(config).await.expect("node starts");
        let mut admin = common::admin_client(node.admin_addr, TOKEN).await;
        admin.create_consumer(Consumer { name: "app".into(), ..Default::default() }).await.unwrap();
        let key = admin
            .create_api_key(CreateApiKeyRequest { consumer: "app".into(), allowed_models, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        admin
            .create_route(Route {
                name: "llm".into(),
                paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/v1".into() }],
                auth: AuthMode::ApiKey as i32,
                ai_gateway: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let channel = Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap();
        let ai = AiServiceClient::with_interceptor(channel, Bearer(TOKEN.into()));
        Gateway { node, ai, key, _dir: dir }
    }

    async fn provider(&mut self, name: &str, kind: ProviderKind, base_url: String, keys: &[&str]) -> String {
        let credentials = keys
            .iter()
            .map(|k| ProviderCredential { id: k.to_string(), secret: format!("sk-{k}"), ..Default::default() })
            .collect();
        let created = self
            .ai
            .create_provider(Provider {
                name: name.into(),
                kind: kind as i32,
                base_url,
                credentials,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        created.meta.unwrap().id
    }

    async fn alias(&mut self, name: &str, targets: &[(&str, &str, i32)], retries: u32) {
        let targets = targets
            .iter()
            .map(|(p, m, priority)| AliasTarget {
                provider_id: p.to_string(),
                model: m.to_string(),
                weight: 1,
                priority: *priority,
            })
            .collect();
        self.ai
            .create_model_alias(ModelAlias { name: name.into(), targets, retries, backoff_ms: 1, ..Default::default() })
            .await
            .unwrap();
    }

    async fn price(&mut self, name: &str, input: u64, output: u64, cached: u64) {
        self.ai
            .put_model_price(ModelPrice {
                name: name.into(),
                mode: "chat".into(),
                input_micros_per_mtok: input,
                output_micros_per_mtok: output,
                cached_input_micros_per_mtok: cached,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn usage(&mut self, group_by: &[&str]) -> Vec<UsageRow> {
        let group_by = group_by.iter().map(|s| s.to_string()).collect();
        self.ai.get_usage(GetUsageRequest { group_by, ..Default::default() }).await.unwrap().into_inner().rows
    }

    /// Usage of one provider/model, waiting (bounded) for a stream's
    /// accounting, which happens when its body is finished or dropped.
    async fn usage_of(&mut self, model: &str, requests: u64) -> UsageRow {
        for _ in 0..200 {
            if let Some(row) = self.usage(&["model"]).await.into_iter().find(|r| r.group[0] == model)
                && row.requests >= requests
            {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no usage for {model}: {:?}", self.usage(&["model"]).await);
    }

    async fn post(&self, path: &str, body: Value) -> common::Reply {
        post(self.node.proxy_addr, path, &self.key, body).await
    }
}

async fn post(proxy: SocketAddr, path: &str, key: &str, body: Value) -> common::Reply {
    let request = Request::post(format!("http://{proxy}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(full(Bytes::from(body.to_string())))
        .unwrap();
    send(&http_client(), request).await
}

/// The JSON payloads of an SSE body's `data:` lines (without `[DONE]`), and whether `[DONE]` came.
fn sse_data(body: &[u8]) -> (Vec<Value>, bool) {
    let text = String::from_utf8_lossy(body);
    let mut done = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if data == "[DONE]" {
                done = true;
            } else {
                out.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("bad SSE JSON {data}: {e}")));
            }
        }
    }
    (out, done)
}

fn sse_events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body).lines().filter_map(|l| l.strip_prefix("event: ")).map(str::to_string).collect()
}

async fn mock_openai(cfg: LlmMockConfig) -> MockHandle {
    MockOpenAi::spawn(cfg).await.unwrap()
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something about foxes."}
    ]})
}

/// tokens x micro-dollars per million = picodollars.
fn expected_cost(row: &UsageRow, input: u64, output: u64, cached: u64) -> u64 {
    (row.input_tokens - row.cached_input_tokens) * input + row.cached_input_tokens * cached + row.output_tokens * output
}

#[tokio::test]
async fn openai_chat_streaming_and_not_is_accounted_at_the_price_it_names() {
    let mock = mock_openai(LlmMockConfig { tokens: 12, cached_tokens: 4, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.price("openai/gpt-4o", 2_500_000, 10_000_000, 1_250_000).await;

    let reply = gw.post("/v1/chat/completions", chat("openai/gpt-4o", false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().contains("quick"));
    assert_eq!(body["usage"]["completion_tokens"], 12);

    let seen = mock.last_request().unwrap();
    assert_eq!(seen.credential.as_deref(), Some("sk-k1"), "the sealed key is opened and sent upstream");
    assert_eq!(seen.body.as_ref().unwrap()["model"], "gpt-4o");
    assert!(
        seen.headers.iter().all(|(n, v)| !v.contains(&gw.key) || n == "x-never"),
        "the caller's key never goes upstream"
    );

    let reply = gw.post("/v1/chat/completions", chat("openai/gpt-4o", true)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let (chunks, done) = sse_data(&reply.body);
    assert!(done, "the stream ends with [DONE]");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c.get("usage").is_none_or(Value::is_null)), "no usage chunk unless asked");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.contains("quick brown fox"), "{text}");
    let upstream = mock.last_request().unwrap().body.unwrap();
    assert_eq!(upstream["stream_options"]["include_usage"], true, "usage is always requested upstream");

    let row = gw.usage_of("openai/gpt-4o", 2).await;
    assert_eq!((row.requests, row.errors, row.estimated), (2, 0, 0));
    assert_eq!(row.output_tokens, 24);
    assert_eq!(row.cached_input_tokens, 8);
    assert!(row.input_tokens > row.cached_input_tokens);
    assert_eq!(row.cost_picodollars, expected_cost(&row, 2_500_000, 10_000_000, 1_250_000));

    // The caller asked for usage: one usage chunk before [DONE].
    let mut body = chat("openai/gpt-4o", true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, _) = sse_data(&gw.post("/v1/chat/completions", body).await.body);
    let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
    assert_eq!(usage_chunks.len(), 1);
    assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], 12);
    assert_eq!(usage_chunks[0]["choices"], json!([]));

    // A model name no configuration knows does not mint metric series of its own.
    let reply = gw.post("/v1/chat/completions", chat("openai/made-up-7f3a", false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&common::get(gw.node.ops_addr, "/metrics", &[]).await.body).to_string();
    assert!(text.contains("model=\"gpt-4o\""), "priced models keep their name");
    assert!(text.contains("model=\"other\""), "{text}");
    assert!(!text.contains("made-up-7f3a"), "client-chosen names stay out of the labels");
    assert_eq!(gw.usage_of("openai/made-up-7f3a", 1).await.requests, 1, "the ledger still has the real name");
}

#[tokio::test]
async fn anthropic_provider_serves_openai_callers_with_tools_and_streams() {
    let mock = MockAnthropic::spawn(LlmMockConfig { tokens: 10, ..Default::default() }).await.unwrap();
    let mut gw = Gateway::start().await;
    gw.provider("claude", ProviderKind::Anthropic, mock.url(), &["a1"]).await;
    gw.alias("sonnet", &[("claude", "claude-sonnet-4-5", 0)], 0).await;
    gw.price("anthropic/claude-sonnet-4-5", 3_000_000, 15_000_000, 300_000).await;

    let reply = gw.post("/v1/chat/completions", chat("sonnet", false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 10);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.credential.as_deref(), Some("sk-a1"));
    let upstream = seen.body.unwrap();
    assert_eq!(upstream["system"], "You are terse.", "system messages move to Anthropic's system field");
    assert_eq!(upstream["model"], "claude-sonnet-4-5");

    let mut tools = chat("sonnet", false);
    tools["tools"] = json!([{"type": "function", "function": {"name": "search", "description": "Search",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]);
    let body = gw.post("/v1/chat/completions", tools.clone()).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "search");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["query"].is_string());

    tools["stream"] = json!(true);
    let (chunks, done) = sse_data(&gw.post("/v1/chat/completions", tools).await.body);
    assert!(done);
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!(serde_json::from_str::<Value>(&arguments).unwrap()["query"].is_string(), "{arguments}");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    let row = gw.usage_of("claude/claude-sonnet-4-5", 3).await;
    assert_eq!((row.errors, row.estimated), (0, 0));
    assert!(row.output_tokens > 0 && row.input_tokens > 0);
    assert_eq!(row.cost_picodollars, expected_cost(&row, 3_000_000, 15_000_000, 300_000));
}

#[tokio::test]
async fn gemini_provider_answers_streams_and_is_priced() {
    let mock = MockGemini::spawn(LlmMockConfig { tokens: 8, ..Default::default() }).await.unwrap();
    let mut gw = Gateway::start().await;
    gw.provider("google", ProviderKind::Gemini, mock.url(), &["g1"]).await;
    gw.price("gemini/gemini-2.0-flash", 100_000, 400_000, 25_000).await;

    let body = gw.post("/v1/chat/completions", chat("google/gemini-2.0-flash", false)).await.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let seen = mock.last_request().unwrap();
    assert!(seen.path.starts_with("/v1beta/models/gemini-2.0-flash:generateContent"), "{}", seen.path);
    assert_eq!(seen.credential.as_deref(), Some("sk-g1"));

    let reply = gw.post("/v1/chat/completions", chat("google/gemini-2.0-flash", true)).await;
    let (chunks, done) = sse_data(&reply.body);
    assert!(done);
    assert!(!chunks.is_empty());
    assert!(mock.last_request().unwrap().path.contains(":streamGenerateContent"));

    let row = gw.usage_of("google/gemini-2.0-flash", 2).await;
    assert_eq!((row.errors, row.estimated, row.output_tokens), (0, 0, 16));
    assert_eq!(row.cost_picodollars, expected_cost(&row, 100_000, 400_000, 25_000));
}

#[tokio::test]
async fn azure_deployments_and_openai_compatible_servers_without_usage() {
    let azure = mock_openai(LlmMockConfig {
        tokens: 5,
        azure_deployments: vec![("prod-4o".into(), "gpt-4o".into())],
        ..Default::default()
    })
    .await;
    let local =
        mock_openai(LlmMockConfig { tokens: 7, omit_usage: true, require_auth: false, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("azure", ProviderKind::AzureOpenai, azure.url(), &["z1"]).await;
    gw.ai
        .create_provider(Provider {
            name: "vllm".into(),
            kind: ProviderKind::OpenaiCompatible as i32,
            base_url: format!("{}/v1", local.url()),
            ..Default::default()
        })
        .await
        .unwrap();
    gw.price("azure/prod-4o", 2_500_000, 10_000_000, 0).await;
    gw.price("vllm/llama-3", 100_000, 100_000, 0).await;

    let body = gw.post("/v1/chat/completions", chat("azure/prod-4o", false)).await.json();
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let seen = azure.last_request().unwrap();
    assert!(seen.path.starts_with("/openai/deployments/prod-4o/chat/completions?api-version="), "{}", seen.path);
    assert_eq!(seen.credential.as_deref(), Some("sk-z1"));

    // No usage from the server: the gateway counts with its tokenizer and says so.
    let body = gw.post("/v1/chat/completions", chat("vllm/llama-3", false)).await.json();
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0, "the estimate is reported: {body}");
    let (_, done) = sse_data(&gw.post("/v1/chat/completions", chat("vllm/llama-3", true)).await.body);
    assert!(done);
    assert_eq!(local.last_request().unwrap().credential, None, "a keyless provider sends no key");

    let row = gw.usage_of("vllm/llama-3", 2).await;
    assert_eq!(row.estimated, 2, "both records are marked estimated");
    assert!(row.input_tokens > 0 && row.output_tokens > 0);
    assert_eq!(row.cost_picodollars, expected_cost(&row, 100_000, 100_000, 0));
    let row = gw.usage_of("azure/prod-4o", 1).await;
    assert_eq!((row.estimated, row.output_tokens), (0, 5));
}

/// A gateway whose alias `smart` tries an OpenAI provider that always
/// answers 500 (`retries` more times), then an Anthropic one that works.
async fn broken_primary_healthy_backup(retries: u32) -> (Gateway, MockHandle, MockHandle) {
    let broken = mock_openai(LlmMockConfig { fail_500: 1.0, ..Default::default() }).await;
    let healthy = MockAnthropic::spawn(LlmMockConfig::default()).await.unwrap();
    let mut gw = Gateway::start().await;
    gw.provider("primary", ProviderKind::Openai, format!("{}/v1", broken.url()), &["p1"]).await;
    gw.provider("backup", ProviderKind::Anthropic, healthy.url(), &["b1"]).await;
    gw.alias("smart", &[("primary", "gpt-4o", 10), ("backup", "claude-haiku-4-5", 0)], retries).await;
    (gw, broken, healthy)
}

#[tokio::test]
async fn a_failing_provider_falls_back_to_the_next_target() {
    let (mut gw, broken, healthy) = broken_primary_healthy_backup(1).await;

    for _ in 0..3 {
        let reply = gw.post("/v1/chat/completions", chat("smart", false)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    // Priority first, one retry on the same target, then the fallback.
    assert_eq!(broken.requests().len(), 6);
    assert_eq!(healthy.requests().len(), 3);
    let row = gw.usage_of("backup/claude-haiku-4-5", 3).await;
    assert_eq!(row.errors, 0);

    // When every target fails, the caller gets the last error in its format.
    gw.alias("doomed", &[("primary", "gpt-4o", 0)], 0).await;
    let reply = gw.post("/v1/chat/completions", chat("doomed", false)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("every target of doomed failed"));
    let row = gw.usage_of("primary/gpt-4o", 1).await;
    assert_eq!(row.errors, 1);

    let metrics = common::get(gw.node.ops_addr, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(text.contains("tollgate_ai_attempt_errors_total{provider=\"primary\""), "{text}");
    assert!(text.contains("tollgate_ai_fallbacks_total{provider=\"backup\",model=\"claude-haiku-4-5\"} 3"), "{text}");
    assert!(text.contains("tollgate_ai_tokens_total{provider=\"backup\""), "{text}");
}

#[tokio::test]
async fn a_body_that_only_its_own_format_reads_fails_over_without_a_false_400() {
    // The OpenAI target takes the caller's bytes as they are (an unknown
    // role is its business); the Anthropic fallback would need them
    // translated, and they do not translate.
    let (mut gw, broken, backup) = broken_primary_healthy_backup(0).await;

    let body = serde_json::json!({"model": "smart", "messages": [{"role": "wizard", "content": "hi"}]});
    let reply = gw.post("/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "the primary's failure, not a 400: {:?}", reply.body);
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("every target of smart failed"), "{message}");
    assert_eq!(broken.requests().len(), 1, "the primary got the caller's bytes");
    assert_eq!(backup.requests().len(), 0, "nothing reached the fallback");

    // With no target able to take it as it is, it is the caller's bad request.
    gw.alias("only-backup", &[("backup", "claude-haiku-4-5", 0)], 0).await;
    let body = serde_json::json!({"model": "only-backup", "messages": [{"role": "wizard", "content": "hi"}]});
    let reply = gw.post("/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(backup.requests().len(), 0);
}

#[tokio::test]
async fn a_429_rests_the_key_and_later_requests_use_another() {
    let mock = mock_openai(LlmMockConfig {
        rate_limited_keys: vec!["sk-hot".into()],
        retry_after_secs: 3600,
        ..Default::default()
    })
    .await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["hot", "cool"]).await;
    gw.alias("gpt", &[("openai", "gpt-4o", 0)], 2).await;

    for _ in 0..20 {
        let reply = gw.post("/v1/chat/completions", chat("gpt", false)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let used: Vec<String> = mock.requests().into_iter().filter_map(|r| r.credential).collect();
    assert_eq!(used.iter().filter(|k| *k == "sk-hot").count(), 1, "after its 429 the key rests: {used:?}");
    assert_eq!(used.iter().filter(|k| *k == "sk-cool").count(), 20);
    let text = String::from_utf8_lossy(&common::get(gw.node.ops_addr, "/metrics", &[]).await.body).to_string();
    assert!(
        text.contains("tollgate_ai_credential_cooldowns_total{provider=\"openai\",credential=\"hot\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_still_billed() {
    // 400 tokens at 100/s: the stream lasts seconds; the client leaves after the first chunks.
    let mock = mock_openai(LlmMockConfig { tokens: 400, tokens_per_second: 100.0, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.price("openai/gpt-4o-mini", 150_000, 600_000, 0).await;

    let request = Request::post(format!("http://{}/v1/chat/completions", gw.node.proxy_addr))
        .header("authorization", format!("Bearer {}", gw.key))
        .body(full(Bytes::from(chat("openai/gpt-4o-mini", true).to_string())))
        .unwrap();
    let client = http_client();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = 0;
    while seen < 3 {
        let frame = body.frame().await.expect("stream continues").unwrap();
        if frame.is_data() {
            seen += 1;
        }
    }
    drop(body);
    drop(client);

    let row = gw.usage_of("openai/gpt-4o-mini", 1).await;
    assert_eq!(row.cancelled, 1, "{row:?}");
    assert!(row.output_tokens > 0 && row.output_tokens < 400, "billed for what was produced: {row:?}");
    assert!(row.input_tokens > 0);
    assert_eq!(row.cost_picodollars, expected_cost(&row, 150_000, 600_000, 0));
}

#[tokio::test]
async fn messages_ingress_round_trips_to_an_openai_provider() {
    let mock = mock_openai(LlmMockConfig { tokens: 6, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.alias("claude-proxy", &[("openai", "gpt-4o", 0)], 0).await;

    let request = json!({
        "model": "claude-proxy", "max_tokens": 256, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}]
    });
    // Anthropic SDKs authenticate with x-api-key.
    let send_messages = |body: Value| {
        let request = Request::post(format!("http://{}/v1/messages", gw.node.proxy_addr))
            .header("x-api-key", gw.key.clone())
            .header("anthropic-version", "2023-06-01")
            .body(full(Bytes::from(body.to_string())))
            .unwrap();
        async move { send(&http_client(), request).await }
    };
    let reply = send_messages(request.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-proxy");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["usage"]["output_tokens"], 6);
    let upstream = mock.last_request().unwrap().body.unwrap();
    assert_eq!(upstream["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(upstream["model"], "gpt-4o");

    let mut streaming = request;
    streaming["stream"] = json!(true);
    let reply = send_messages(streaming).await;
    let events = sse_events(&reply.body);
    assert_eq!(events.first().map(String::as_str), Some("message_start"));
    assert_eq!(events.last().map(String::as_str), Some("message_stop"));
    assert!(events.contains(&"content_block_delta".to_string()));
    let delta_at = events.iter().position(|e| e == "message_delta").unwrap();
    assert_eq!(events[delta_at + 1], "message_stop");

    // Errors come back in Anthropic's format.
    let reply =
        send_messages(json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "not_found_error");

    let row = gw.usage_of("openai/gpt-4o", 2).await;
    assert_eq!(row.output_tokens, 12);
}

#[tokio::test]
async fn keys_see_and_use_only_their_models_and_bad_input_gets_openai_errors() {
    let mock = mock_openai(LlmMockConfig::default()).await;
    let mut gw = Gateway::start_with_models(vec!["cheap".into(), "openai/gpt-4o-mini*".into()]).await;
    let provider_url = format!("{}/v1", mock.url());
    gw.ai
        .create_provider(Provider {
            name: "openai".into(),
            kind: ProviderKind::Openai as i32,
            base_url: provider_url,
            credentials: vec![ProviderCredential { id: "k".into(), secret: "sk-k".into(), ..Default::default() }],
            models: vec!["gpt-4o".into(), "gpt-4o-mini".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    gw.alias("cheap", &[("openai", "gpt-4o-mini", 0)], 0).await;
    gw.alias("premium", &[("openai", "gpt-4o", 0)], 0).await;

    let models =
        common::get(gw.node.proxy_addr, "/v1/models", &[("authorization", &format!("Bearer {}", gw.key))]).await;
    let ids: Vec<String> =
        models.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["cheap", "openai/gpt-4o-mini"]);

    assert_eq!(gw.post("/v1/chat/completions", chat("cheap", false)).await.status, StatusCode::OK);
    let refused = gw.post("/v1/chat/completions", chat("premium", false)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["error"]["type"], "permission_error");
    let unknown = gw.post("/v1/chat/completions", chat("openai/gpt-4o-mini-2024", false)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "allowed by pattern but not offered by the provider");

    let malformed = post(gw.node.proxy_addr, "/v1/chat/completions", &gw.key, json!({"messages": "nope"})).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["error"]["type"], "invalid_request_error");
    let unauthenticated = post(gw.node.proxy_addr, "/v1/chat/completions", "tg_bad_key", chat("cheap", false)).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated.json()["error"]["type"], "authentication_error", "OpenAI's error shape");
    let anthropic = post(gw.node.proxy_addr, "/v1/messages", "tg_bad_key", json!({})).await;
    assert_eq!(anthropic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anthropic.json()["type"], "error", "Anthropic's error shape on /messages");
    assert_eq!(anthropic.json()["error"]["type"], "authentication_error");
    assert_eq!(mock.requests().len(), 1, "only the allowed request reached the provider");

    // Secrets never come back from the admin API.
    let listed =
        gw.ai.list_providers(tollgate_proto::admin::v1::ListRequest { stale: false }).await.unwrap().into_inner();
    let credential = &listed.providers[0].credentials[0];
    assert!(credential.sealed_secret.is_empty() && credential.secret.is_empty());
}

#[tokio::test]
async fn embeddings_are_forwarded_and_counted() {
    let mock = mock_openai(LlmMockConfig { embedding_dimensions: 4, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.price("openai/text-embedding-3-small", 20_000, 0, 0).await;
    let reply = gw
        .post("/v1/embeddings", json!({"model": "openai/text-embedding-3-small", "input": ["one fox", "two foxes"]}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let row = gw.usage_of("openai/text-embedding-3-small", 1).await;
    assert!(row.input_tokens > 0);
    assert_eq!(row.output_tokens, 0);
    assert_eq!(row.cost_picodollars, row.input_tokens * 20_000);
}

async fn post_raw(gw: &Gateway, path: &str, body: &'static str) -> common::Reply {
    let request = Request::post(format!("http://{}{path}", gw.node.proxy_addr))
        .header("authorization", format!("Bearer {}", gw.key))
        .header("content-type", "application/json")
        .body(full(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(&http_client(), request).await
}

/// Members a re-encoding gateway would change: a number's spelling, an
/// integer too large for f64, key order, a `model` nested where only the
/// provider reads it.
const ANSWER_EXTRA: &str = r#""x_score":1.50,"x_big":123456789012345678901234567890,"x_obj":{"b":1,"a":2}"#;

#[tokio::test]
async fn openai_callers_bodies_and_answers_pass_through_byte_for_byte() {
    let cfg = LlmMockConfig { tokens: 6, answer_extra: Some(ANSWER_EXTRA.into()), ..Default::default() };
    let mock = mock_openai(cfg).await;
    let mut gw = Gateway::start().await;
    let openai = gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.alias("fast", &[(&openai, "gpt-4o-mini", 0)], 0).await;

    // Spacing, key order, number spellings, escapes and fields the gateway
    // has never heard of, top level and nested.
    const ASKED: &str = r#"{ "temperature" : 0.70, "messages":[{"role":"user","content":"caf\u00e9 \"fox\"","x_msg":1e2}],
 "model" : "fast", "metadata":{"model":"not-this-one"}, "x_top":[1.0,{"z":null,"a":true}], "seed":12345678901234567890123 }"#;
    let reply = post_raw(&gw, "/v1/chat/completions", ASKED).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&reply.body));
    let seen = mock.last_request().unwrap();
    let expected = ASKED.replace(r#""model" : "fast""#, r#""model" : "gpt-4o-mini""#);
    assert_eq!(String::from_utf8_lossy(&seen.raw_body), expected, "only the model's value changes");
    let answer = String::from_utf8_lossy(&reply.body).to_string();
    assert!(answer.starts_with(&format!("{{{ANSWER_EXTRA},")), "the provider's answer as it sent it: {answer}");
    let row = gw.usage_of("openai/gpt-4o-mini", 1).await;
    assert_eq!((row.output_tokens, row.estimated), (6, 0), "billed by the usage in the answer");

    // A stream: usage is asked for upstream with the least change, and the
    // provider's events reach the caller as they were.
    const STREAMED: &str = r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}],"x_top":1.50}"#;
    let reply = post_raw(&gw, "/v1/chat/completions", STREAMED).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = mock.last_request().unwrap();
    let expected = STREAMED
        .replace(r#""model":"fast""#, r#""model":"gpt-4o-mini""#)
        .replace(r#""x_top":1.50}"#, r#""x_top":1.50,"stream_options":{"include_usage":true}}"#);
    assert_eq!(String::from_utf8_lossy(&seen.raw_body), expected);
    let body = String::from_utf8_lossy(&reply.body).to_string();
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() > 6, "{body}");
    assert!(events[..events.len() - 1].iter().all(|e| e.starts_with(&format!("data: {{{ANSWER_EXTRA},"))), "{body}");
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let (chunks, _) = sse_data(&reply.body);
    assert!(chunks.iter().all(|c| !c["usage"].is_object()), "no usage chunk unless the caller asked");
    let row = gw.usage_of("openai/gpt-4o-mini", 2).await;
    assert_eq!((row.output_tokens, row.estimated), (12, 0), "billed by the provider's usage chunk");

    // Embeddings: the body goes as it came, the model edited.
    const EMBED: &str =
        r#"{"input":["one fox"],"model":"openai/text-embedding-3-small","x_dims":4,"encoding_format":"float"}"#;
    let reply = post_raw(&gw, "/v1/embeddings", EMBED).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&reply.body));
    let seen = mock.last_request().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.raw_body),
        EMBED.replace("openai/text-embedding-3-small", "text-embedding-3-small")
    );
    assert!(gw.usage_of("openai/text-embedding-3-small", 1).await.input_tokens > 0);
}

#[tokio::test]
async fn embeddings_from_a_provider_of_another_format_are_translated_not_passed_through() {
    let mock = MockGemini::spawn(LlmMockConfig { embedding_dimensions: 4, ..Default::default() }).await.unwrap();
    let mut gw = Gateway::start().await;
    gw.provider("google", ProviderKind::Gemini, mock.url(), &["g1"]).await;
    let reply =
        gw.post("/v1/embeddings", json!({"model": "google/text-embedding-004", "input": ["one fox", "two"]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["object"], "list", "OpenAI's format: {body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let seen = mock.last_request().unwrap();
    assert!(seen.path.contains(":batchEmbedContents"), "{}", seen.path);
    assert!(gw.usage_of("google/text-embedding-004", 1).await.input_tokens > 0);
}

#[tokio::test]
async fn a_stream_request_answered_with_json_sends_the_caller_none_of_it() {
    let mut gw = Gateway::start().await;
    // A server that ignores `stream` answers JSON (this one describes the
    // request it got, headers and all).
    let upstream = common::Upstream::start("odd").await;
    gw.provider("odd", ProviderKind::OpenaiCompatible, format!("http://{}/v1", upstream.addr), &["k1"]).await;
    let reply = gw.post("/v1/chat/completions", chat("odd/m", true)).await;
    let text = String::from_utf8_lossy(&reply.body).to_string();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("text/event-stream") && !text.contains("sk-k1") && !text.contains("body_sha256"), "{text}");
    assert_eq!(gw.usage_of("odd/m", 1).await.errors, 1, "accounted as a failed call");
}

#[tokio::test]
async fn a_second_model_key_or_a_body_that_is_not_an_object_never_reaches_a_provider() {
    let mock = mock_openai(LlmMockConfig::default()).await;
    let mut gw = Gateway::start_with_models(vec!["cheap".into()]).await;
    let openai = gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.alias("cheap", &[(&openai, "gpt-4o-mini", 0)], 0).await;
    gw.alias("dear", &[(&openai, "gpt-4o", 0)], 0).await;
    // Authorised as one model, served as another by a provider that reads
    // the first key: refused, whichever key a reader keeps.
    for body in [
        r#"{"model":"cheap","model":"dear","messages":[]}"#,
        r#"{"model":"dear","mod\u0065l":"cheap","messages":[]}"#,
        r#"[{"model":"cheap","messages":[]}]"#,
        r#"{"model":"cheap","messages":{}}"#,
        r#"{"model":"cheap","messages":[],"stream_options":{"include_usage":true,"include_usage":false}}"#,
        r#"{"model":"cheap","messages":[] "#,
    ] {
        let reply = post_raw(&gw, "/v1/chat/completions", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error", "{body}");
    }
    assert!(mock.last_request().is_none(), "no provider saw any of them");
    // An escaped key is the key it decodes to, for the gateway and the provider alike.
    let reply = post_raw(&gw, "/v1/chat/completions", r#"{"mod\u0065l":"cheap","messages":[]}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&reply.body));
    let seen = mock.last_request().unwrap();
    assert_eq!(String::from_utf8_lossy(&seen.raw_body), r#"{"mod\u0065l":"gpt-4o-mini","messages":[]}"#);
}

/// Whether `python3` can import every module named.
async fn python_has(modules: &[&str]) -> bool {
    let check = format!("import {}", modules.join(", "));
    tokio::process::Command::new("python3")
        .args(["-c", &check])
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A Python SDK a test drives is missing. Under CI (`CI` set) or with
/// `TOLLGATE_REQUIRE_SDKS=1` the test fails, naming the pip command;
/// otherwise it skips, saying so on stdout and stderr.
fn missing_sdk(packages: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let required = ci || std::env::var("TOLLGATE_REQUIRE_SDKS").as_deref() == Ok("1");
    let message = format!(
        "python3 with the {packages} package(s) is not available; install them with \
         `python3 -m pip install -r scripts/python-sdks.txt` (or `pip install {packages}`)"
    );
    assert!(!required, "{message}; the SDK tests are required here (CI or TOLLGATE_REQUIRE_SDKS=1 is set)");
    println!("SKIPPED: {message}");
    eprintln!("SKIPPED: {message}");
}

/// Runs a Python SDK script against the gateway (its URL and key in
/// `TOLLGATE_URL` and `TOLLGATE_KEY`); it must end printing "SDK OK".
async fn run_sdk_script(gw: &Gateway, script: &str) {
    let output = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("TOLLGATE_URL", format!("http://{}", gw.node.proxy_addr))
        .env("TOLLGATE_KEY", &gw.key)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output).await.expect("the SDK script ends").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stdout.contains("SDK OK"), "stdout:\n{stdout}\nstderr:\n{stderr}");
}

const SDK_SCRIPT: &str = r#"
import os, sys
import openai, anthropic

base, key = os.environ["TOLLGATE_URL"], os.environ["TOLLGATE_KEY"]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
reply = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
assert reply.choices[0].message.content, reply
assert reply.usage.completion_tokens == 9, reply.usage

text, usage = "", None
stream = client.chat.completions.create(
    model="fast", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert "fox" in text, text
assert usage is not None and usage.completion_tokens == 9, usage

tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
called = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "find"}], tools=tools)
assert called.choices[0].message.tool_calls[0].function.name == "lookup", called

emb = client.embeddings.create(model="openai/text-embedding-3-small", input="hello")
assert len(emb.data) == 1 and len(emb.data[0].embedding) > 0

ids = [m.id for m in client.models.list()]
assert "fast" in ids, ids

try:
    client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    sys.exit("expected NotFoundError")
except openai.NotFoundError as e:
    assert "missing" in str(e)

claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
message = claude.messages.create(model="fast", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
assert message.content[0].type == "text" and message.content[0].text, message
assert message.usage.output_tokens == 9, message.usage
with claude.messages.stream(model="fast", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
    final = s.get_final_message()
assert final.stop_reason == "end_turn" and "fox" in final.content[0].text, final
print("SDK OK")
"#;

#[tokio::test]
async fn the_official_openai_and_anthropic_python_sdks_work_through_the_gateway() {
    if !python_has(&["openai", "anthropic"]).await {
        missing_sdk("openai anthropic");
        return;
    }
    let mock = mock_openai(LlmMockConfig { tokens: 9, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.alias("fast", &[("openai", "gpt-4o-mini", 0)], 0).await;

    run_sdk_script(&gw, SDK_SCRIPT).await;
    let row = gw.usage_of("openai/gpt-4o-mini", 5).await;
    assert_eq!(row.errors, 0);
}

mod otlp {
    //! A minimal OTLP/gRPC trace collector on loopback that keeps what it receives.
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[derive(Clone, Default)]
    pub struct Collector(pub Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans =
                request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
            self.0.lock().unwrap().extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    pub async fn start() -> (std::net::SocketAddr, Collector) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (addr, collector)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_requests_export_genai_spans() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;

    let (collector_addr, collector) = otlp::start().await;
    let mock = mock_openai(LlmMockConfig { tokens: 7, ..Default::default() }).await;
    let endpoint = format!("http://{collector_addr}");
    let mut gw = Gateway::start_with(vec![], |config| config.telemetry.otlp_endpoint = Some(endpoint)).await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k"]).await;
    let Gateway { node, key, .. } = gw;
    let reply = post(node.proxy_addr, "/v1/chat/completions", &key, chat("openai/gpt-4o", false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    node.shutdown().await; // flushes the span exporter

    let mut span = None;
    for _ in 0..200 {
        span = collector.0.lock().unwrap().iter().find(|s| s.name == "chat openai/gpt-4o").cloned();
        if span.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let span = span.unwrap_or_else(|| {
        panic!(
            "no GenAI span; got {:?}",
            collector.0.lock().unwrap().iter().map(|s| s.name.clone()).collect::<Vec<_>>()
        )
    });
    let attribute =
        |key: &str| span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()).and_then(|v| v.value);
    assert_eq!(attribute("gen_ai.system"), Some(Any::StringValue("openai".into())));
    assert_eq!(attribute("gen_ai.request.model"), Some(Any::StringValue("openai/gpt-4o".into())));
    assert_eq!(attribute("gen_ai.response.model"), Some(Any::StringValue("gpt-4o".into())));
    assert_eq!(attribute("gen_ai.usage.output_tokens"), Some(Any::IntValue(7)));
    assert!(matches!(attribute("gen_ai.usage.input_tokens"), Some(Any::IntValue(n)) if n > 0));
    assert!(matches!(attribute("gen_ai.response.finish_reasons"), Some(Any::ArrayValue(_))));
    let server_span = collector.0.lock().unwrap().iter().find(|s| s.name == "proxy").cloned().expect("the proxy span");
    assert_eq!(span.parent_span_id, server_span.span_id, "the GenAI span is a child of the request's span");
    assert_eq!(span.trace_id, server_span.trace_id);
}

#[tokio::test]
async fn a_provider_that_stalls_mid_stream_ends_the_stream_with_an_error_and_is_accounted() {
    // Two tokens a second: half a second of silence between tokens, against a 150 ms allowance.
    let mock = mock_openai(LlmMockConfig { tokens: 20, tokens_per_second: 2.0, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    let credentials = vec![ProviderCredential { id: "k".into(), secret: "sk-k".into(), ..Default::default() }];
    gw.ai
        .create_provider(Provider {
            name: "slow".into(),
            kind: ProviderKind::Openai as i32,
            base_url: format!("{}/v1", mock.url()),
            credentials,
            request_timeout_ms: 150,
            ..Default::default()
        })
        .await
        .unwrap();
    let reply = gw.post("/v1/chat/completions", chat("slow/gpt-4o", true)).await;
    assert_eq!(reply.status, StatusCode::OK, "headers came in time");
    let (chunks, done) = sse_data(&reply.body);
    assert!(!done, "a broken stream does not claim to be complete");
    let error = chunks.last().expect("an error event ends the stream");
    assert!(error["error"]["message"].as_str().unwrap().contains("sent nothing"), "{error}");
    let row = gw.usage_of("slow/gpt-4o", 1).await;
    assert_eq!((row.errors, row.requests), (1, 1));
}

#[tokio::test]
async fn messages_to_an_anthropic_provider_pass_through_untranslated() {
    let mock = MockAnthropic::spawn(LlmMockConfig { tokens: 5, ..Default::default() }).await.unwrap();
    let mut gw = Gateway::start().await;
    gw.provider("claude", ProviderKind::Anthropic, mock.url(), &["a1"]).await;
    gw.alias("sonnet", &[("claude", "claude-sonnet-4-5", 0)], 0).await;
    // Fields the OpenAI form has no place for must reach Anthropic unchanged.
    let request = json!({
        "model": "sonnet", "max_tokens": 128, "metadata": {"user_id": "u-1"},
        "system": [{"type": "text", "text": "Long shared context.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}]}]
    });
    let send_messages = |body: Value| {
        let request = Request::post(format!("http://{}/v1/messages", gw.node.proxy_addr))
            .header("x-api-key", gw.key.clone())
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "prompt-caching-2024-07-31")
            .body(full(Bytes::from(body.to_string())))
            .unwrap();
        async move { send(&http_client(), request).await }
    };
    let reply = send_messages(request.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "claude-sonnet-4-5", "the provider's own answer, untranslated");
    let seen = mock.last_request().unwrap();
    let upstream = seen.body.clone().unwrap();
    assert_eq!(upstream["model"], "claude-sonnet-4-5");
    assert_eq!(upstream["system"], request["system"], "cache_control survives");
    assert_eq!(upstream["messages"], request["messages"]);
    assert_eq!(upstream["metadata"], request["metadata"]);
    assert_eq!(seen.header("anthropic-beta"), Some("prompt-caching-2024-07-31"));
    assert_eq!(seen.credential.as_deref(), Some("sk-a1"));

    let mut streaming = request;
    streaming["stream"] = json!(true);
    let reply = send_messages(streaming).await;
    let events = sse_events(&reply.body);
    assert_eq!(events.first().map(String::as_str), Some("message_start"));
    assert_eq!(events.last().map(String::as_str), Some("message_stop"));
    let row = gw.usage_of("claude/claude-sonnet-4-5", 2).await;
    assert_eq!((row.errors, row.estimated, row.output_tokens), (0, 0, 10), "accounted from the passed-through stream");
}

// === §7: streams cut or cancelled, refused models, provider auth, the Gemini ingress ===

/// A provider family, with the mock that speaks its wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    OpenAi,
    /// Shares OpenAI's stream decoder (and drops Azure's empty prompt-filter chunk).
    Azure,
    /// Shares OpenAI's adapter whole.
    Compatible,
    Anthropic,
    Gemini,
}

impl Family {
    async fn spawn(self, cfg: LlmMockConfig) -> MockHandle {
        match self {
            Family::Anthropic => MockAnthropic::spawn(cfg).await.unwrap(),
            Family::Gemini => MockGemini::spawn(cfg).await.unwrap(),
            Family::OpenAi | Family::Azure | Family::Compatible => MockOpenAi::spawn(cfg).await.unwrap(),
        }
    }

    fn kind(self) -> ProviderKind {
        match self {
            Family::OpenAi => ProviderKind::Openai,
            Family::Azure => ProviderKind::AzureOpenai,
            Family::Compatible => ProviderKind::OpenaiCompatible,
            Family::Anthropic => ProviderKind::Anthropic,
            Family::Gemini => ProviderKind::Gemini,
        }
    }

    fn base_url(self, mock: &MockHandle) -> String {
        match self {
            Family::OpenAi | Family::Compatible => format!("{}/v1", mock.url()),
            _ => mock.url(),
        }
    }
}

/// The text of OpenAI-format chunks.
fn chunk_text(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

/// Reads a streamed body until the complete events so far carry at least `words` words; their text.
async fn read_words(body: &mut hyper::body::Incoming, words: usize) -> String {
    let mut buf = Vec::new();
    loop {
        let frame = body.frame().await.expect("the stream continues").unwrap();
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") else { continue };
        let text = chunk_text(&sse_data(&buf[..end + 2]).0);
        if text.split_whitespace().count() >= words {
            return text;
        }
    }
}

/// Tokens the gateway's tokenizer counts in a text, as it bills estimates.
fn tokens_in(text: &str) -> u64 {
    tollgate_llm::tokens::count_tokens(text)
}

/// A stream the provider cuts, and one the client abandons, are billed for the
/// text they delivered, by the tokenizer, and marked estimated — or for the
/// provider's running output count when that is larger (Gemini's, which
/// counts thinking tokens too); Anthropic's placeholder `output_tokens: 1` in
/// `message_start` is smaller than any text.
async fn cut_and_cancelled_streams_bill_the_delivered_text(family: Family) {
    let cut = family
        .spawn(LlmMockConfig { tokens: 40, tokens_per_second: 400.0, cut_stream: 1.0, ..Default::default() })
        .await;
    let slow = family.spawn(LlmMockConfig { tokens: 400, tokens_per_second: 100.0, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("cut", family.kind(), family.base_url(&cut), &["k1"]).await;
    gw.provider("slow", family.kind(), family.base_url(&slow), &["k2"]).await;

    // The provider drops the connection half-way through.
    let reply = gw.post("/v1/chat/completions", chat("cut/model-a", true)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (chunks, done) = sse_data(&reply.body);
    assert!(!done, "{family:?}: a cut stream does not claim to be complete");
    let delivered = chunk_text(&chunks);
    assert!(delivered.split_whitespace().count() >= 2, "{family:?}: some text came before the cut: {delivered:?}");
    let row = gw.usage_of("cut/model-a", 1).await;
    assert_eq!((row.requests, row.errors, row.estimated), (1, 1, 1), "{family:?}: {row:?}");
    if family == Family::Gemini {
        // Gemini's running candidatesTokenCount may count a little more than the tokenizer.
        let whole = tokens_in(&tollgate_loadtest::mock::llm::full_text(40));
        assert!(
            (tokens_in(&delivered)..=whole).contains(&row.output_tokens),
            "{family:?}: billed for {delivered:?}: {row:?}"
        );
    } else {
        assert_eq!(row.output_tokens, tokens_in(&delivered), "{family:?}: billed for {delivered:?}: {row:?}");
    }
    assert!(row.input_tokens > 0, "{family:?}: {row:?}");

    // The client goes away mid-stream.
    let request = Request::post(format!("http://{}/v1/chat/completions", gw.node.proxy_addr))
        .header("authorization", format!("Bearer {}", gw.key))
        .body(full(Bytes::from(chat("slow/model-b", true).to_string())))
        .unwrap();
    let client = http_client();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let seen = read_words(&mut body, 5).await;
    drop(body);
    drop(client);
    let row = gw.usage_of("slow/model-b", 1).await;
    assert_eq!((row.requests, row.cancelled, row.estimated), (1, 1, 1), "{family:?}: {row:?}");
    let whole = tokens_in(&tollgate_loadtest::mock::llm::full_text(400));
    assert!(
        row.output_tokens >= tokens_in(&seen) && row.output_tokens < whole,
        "{family:?}: billed {} tokens; the client saw {} ({seen:?}) of {whole}",
        row.output_tokens,
        tokens_in(&seen)
    );
    assert!(row.input_tokens > 0, "{family:?}: {row:?}");
}

#[tokio::test]
async fn cut_and_cancelled_openai_streams_bill_the_delivered_text() {
    cut_and_cancelled_streams_bill_the_delivered_text(Family::OpenAi).await;
}

#[tokio::test]
async fn cut_and_cancelled_azure_streams_bill_the_delivered_text() {
    cut_and_cancelled_streams_bill_the_delivered_text(Family::Azure).await;
}

#[tokio::test]
async fn cut_and_cancelled_openai_compatible_streams_bill_the_delivered_text() {
    cut_and_cancelled_streams_bill_the_delivered_text(Family::Compatible).await;
}

#[tokio::test]
async fn cut_and_cancelled_anthropic_streams_bill_the_delivered_text() {
    cut_and_cancelled_streams_bill_the_delivered_text(Family::Anthropic).await;
}

#[tokio::test]
async fn cut_and_cancelled_gemini_streams_bill_the_delivered_text() {
    cut_and_cancelled_streams_bill_the_delivered_text(Family::Gemini).await;
}

#[tokio::test]
async fn a_provider_name_without_a_model_is_refused_before_any_upstream_call() {
    let mock = mock_openai(LlmMockConfig::default()).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;

    for model in ["openai/", "openai/ ", "", " "] {
        let reply = gw.post("/v1/chat/completions", chat(model, false)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{model:?}: {:?}", reply.body);
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error", "{model:?}");
        let reply = gw.post("/v1/chat/completions", chat(model, true)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{model:?} streamed");
    }
    let reply = gw.post("/v1/chat/completions", chat("openai/", false)).await;
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("names a provider but no model"), "{message}");
    let reply = gw.post("/v1/embeddings", json!({"model": "openai/", "input": "fox"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = gw
        .post(
            "/v1/messages",
            json!({"model": "openai/", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request_error"))
    );
    let reply = gw.post("/v1/models/openai/:generateContent", json!({"contents": [{"parts": [{"text": "hi"}]}]})).await;
    assert_eq!(
        (reply.status, reply.json()["error"]["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT"))
    );
    assert!(mock.requests().is_empty(), "no upstream call: {:?}", mock.requests());
}

#[tokio::test]
async fn a_provider_refusing_the_gateway_key_is_a_bad_gateway_that_names_it() {
    let good = || LlmMockConfig { accepted_keys: vec!["sk-good".into()], ..Default::default() };
    let openai = mock_openai(good()).await;
    let claude = MockAnthropic::spawn(good()).await.unwrap();
    let google = MockGemini::spawn(good()).await.unwrap();
    let mut gw = Gateway::start().await;
    // Keys the providers do not (or no longer) accept.
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", openai.url()), &["revoked"]).await;
    gw.provider("claude", ProviderKind::Anthropic, claude.url(), &["revoked"]).await;
    // Gemini answers a bad key with 400 API_KEY_INVALID.
    gw.provider("google", ProviderKind::Gemini, google.url(), &["revoked"]).await;

    for (model, provider) in
        [("openai/gpt-4o", "openai"), ("claude/claude-haiku-4-5", "claude"), ("google/gemini-2.0-flash", "google")]
    {
        for stream in [false, true] {
            let reply = gw.post("/v1/chat/completions", chat(model, stream)).await;
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{model}: {:?}", reply.body);
            assert!(!reply.headers.contains_key("www-authenticate"), "the caller is not asked to authenticate");
            let error = &reply.json()["error"];
            assert_eq!(
                (error["type"].as_str(), error["code"].as_str()),
                (Some("server_error"), Some("provider_auth_failed"))
            );
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(&format!("provider {provider} refused the gateway's credential")), "{message}");
            // The provider's own text (which may quote the key) stays in the gateway's log.
            for raw in ["Incorrect API key", "invalid x-api-key", "API key not valid"] {
                assert!(!message.contains(raw), "{message}");
            }
        }
    }
    // Anthropic and Gemini callers get it in their own formats.
    let reply = gw
        .post(
            "/v1/messages",
            json!({"model": "openai/gpt-4o", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!((reply.status, reply.json()["error"]["type"].as_str()), (StatusCode::BAD_GATEWAY, Some("api_error")));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("provider openai"));
    let reply =
        gw.post("/v1/models/openai/gpt-4o:generateContent", json!({"contents": [{"parts": [{"text": "hi"}]}]})).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["error"]["details"][0]["reason"], "PROVIDER_AUTH_FAILED");

    // A bad caller key is still the caller's own 401.
    let reply = post(gw.node.proxy_addr, "/v1/chat/completions", "tg_bad_key", chat("openai/gpt-4o", false)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");

    let row = gw.usage_of("openai/gpt-4o", 4).await;
    assert_eq!(row.errors, 4);
    let text = String::from_utf8_lossy(&common::get(gw.node.ops_addr, "/metrics", &[]).await.body).to_string();
    assert!(text.contains("kind=\"authentication\""), "the attempt metric keeps the provider's answer: {text}");
}

// --- the Gemini ingress ---

fn gemini_request(text: &str) -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 64, "temperature": 0.1}
    })
}

/// POST as Google's clients do: the key in `x-goog-api-key`, or none (then it is in the query).
async fn gemini_post(proxy: SocketAddr, path_and_query: &str, key: Option<&str>, body: &Value) -> common::Reply {
    let mut request =
        Request::post(format!("http://{proxy}{path_and_query}")).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("x-goog-api-key", key);
    }
    send(&http_client(), request.body(full(Bytes::from(body.to_string()))).unwrap()).await
}

/// The `GenerateContentResponse`s of an `alt=sse` body.
fn gemini_events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d}: {e}")))
        .collect()
}

fn gemini_text(responses: &[Value]) -> String {
    responses
        .iter()
        .flat_map(|r| r["candidates"][0]["content"]["parts"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn gemini_ingress_serves_google_clients_from_any_provider() {
    let openai = mock_openai(LlmMockConfig { tokens: 6, ..Default::default() }).await;
    let claude = MockAnthropic::spawn(LlmMockConfig { tokens: 7, ..Default::default() }).await.unwrap();
    let google = MockGemini::spawn(LlmMockConfig { tokens: 5, ..Default::default() }).await.unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_path = log.path().to_string_lossy().to_string();
    let mut gw = Gateway::start_with(vec![], |config| config.proxy.access_log = log_path).await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", openai.url()), &["o1"]).await;
    gw.provider("claude", ProviderKind::Anthropic, claude.url(), &["a1"]).await;
    gw.provider("google", ProviderKind::Gemini, google.url(), &["g1"]).await;
    gw.alias("fast", &[("openai", "gpt-4o-mini", 0)], 0).await;
    let (proxy, key) = (gw.node.proxy_addr, gw.key.clone());

    // Not streamed, the key in x-goog-api-key, to an OpenAI provider.
    let reply = gemini_post(proxy, "/v1/models/fast:generateContent", Some(&key), &gemini_request("Hello")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert!(candidate["content"]["parts"][0]["text"].as_str().unwrap().contains("quick"), "{body}");
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 6);
    assert_eq!(body["modelVersion"], "fast");
    let upstream = openai.last_request().unwrap().body.unwrap();
    assert_eq!(upstream["model"], "gpt-4o-mini");
    assert_eq!(upstream["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!((upstream["max_tokens"].as_u64(), upstream["temperature"].as_f64()), (Some(64), Some(0.1)));

    // Streamed as SSE, the key in the query, to an Anthropic provider.
    let path = format!("/v1/models/claude/claude-haiku-4-5:streamGenerateContent?alt=sse&key={key}");
    let reply = gemini_post(proxy, &path, None, &gemini_request("Hello")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let events = gemini_events(&reply.body);
    assert!(gemini_text(&events).starts_with("The quick brown"), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 7);
    let seen = claude.last_request().unwrap();
    assert_eq!((seen.path.as_str(), seen.credential.as_deref()), ("/v1/messages", Some("sk-a1")));
    assert_eq!(seen.body.unwrap()["system"], "Be brief.");

    // Streamed as one JSON array (the default), to an OpenAI provider.
    let reply = gemini_post(proxy, "/v1/models/fast:streamGenerateContent", Some(&key), &gemini_request("Hi")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/json");
    let array: Vec<Value> = serde_json::from_slice(&reply.body).expect("one JSON array");
    assert!(array.len() > 2);
    assert!(gemini_text(&array).starts_with("The quick brown"));
    assert_eq!(array.last().unwrap()["usageMetadata"]["candidatesTokenCount"], 6);

    // A Gemini provider gets the caller's body as it is, and its answer comes back as it is.
    let mut request = gemini_request("Hello");
    request["safetySettings"] = json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]);
    let path = format!("/v1/models/google/gemini-2.0-flash:generateContent?key={key}");
    let reply = gemini_post(proxy, &path, None, &request).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["modelVersion"], "gemini-2.0-flash", "the provider's own answer");
    let seen = google.last_request().unwrap();
    assert_eq!(seen.body.as_ref(), Some(&request), "safetySettings and all");
    assert_eq!(seen.path, "/v1beta/models/gemini-2.0-flash:generateContent", "the caller's key stays behind");
    assert_eq!(seen.credential.as_deref(), Some("sk-g1"));
    for format in ["?alt=sse", ""] {
        let path = format!("/v1/models/google/gemini-2.0-flash:streamGenerateContent{format}");
        let reply = gemini_post(proxy, &path, Some(&key), &request).await;
        assert_eq!(reply.status, StatusCode::OK, "{format}: {:?}", reply.body);
        let responses =
            if format.is_empty() { serde_json::from_slice(&reply.body).unwrap() } else { gemini_events(&reply.body) };
        assert_eq!(gemini_text(&responses), "The quick brown fox jumps", "{format}");
        assert_eq!(responses.last().unwrap()["candidates"][0]["finishReason"], "STOP", "{format}");
        assert!(google.last_request().unwrap().path.ends_with(":streamGenerateContent?alt=sse"));
    }
    for seen in openai.requests().iter().chain(&claude.requests()).chain(&google.requests()) {
        assert!(!seen.path.contains(&key) && seen.headers.iter().all(|(_, v)| !v.contains(&key)), "{seen:?}");
    }

    // Errors in Google's format.
    let reply = gemini_post(proxy, "/v1/models/fast:generateContent?key=tg_bad_key", None, &gemini_request("x")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (reply.json()["error"]["code"].as_u64(), reply.json()["error"]["status"].as_str()),
        (Some(401), Some("UNAUTHENTICATED"))
    );
    let reply = gemini_post(proxy, "/v1/models/fast:generateContent", None, &gemini_request("x")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = gemini_post(proxy, "/v1/models/missing:generateContent", Some(&key), &gemini_request("x")).await;
    assert_eq!((reply.status, reply.json()["error"]["status"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let reply = gemini_post(proxy, "/v1/models/fast:generateContent", Some(&key), &json!({"contents": []})).await;
    assert_eq!(
        (reply.status, reply.json()["error"]["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT"))
    );

    let row = gw.usage_of("openai/gpt-4o-mini", 2).await;
    assert_eq!((row.errors, row.estimated, row.output_tokens), (0, 0, 12));
    let row = gw.usage_of("google/gemini-2.0-flash", 3).await;
    assert_eq!((row.errors, row.estimated), (0, 0));

    // The access log has the path, never the query and its key.
    let mut logged = String::new();
    for _ in 0..200 {
        logged = std::fs::read_to_string(log.path()).unwrap();
        if logged.matches(":generateContent").count() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(logged.contains("\"path\":\"/v1/models/google/gemini-2.0-flash:generateContent\""), "{logged}");
    assert!(!logged.contains(&key) && !logged.contains("key="), "{logged}");
}

#[tokio::test]
async fn google_style_keys_are_read_on_ai_routes_only() {
    let upstream = common::Upstream::start("u").await;
    let gw = Gateway::start().await;
    let mut admin = common::admin_client(gw.node.admin_addr, TOKEN).await;
    admin
        .create_service(tollgate_proto::config::v1::Service {
            name: "rest".into(),
            targets: vec![tollgate_proto::config::v1::Target {
                host: "127.0.0.1".into(),
                port: upstream.addr.port().into(),
                weight: 1,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_route(common::route(
            "rest",
            "rest",
            PathMatch::Prefix,
            "/rest",
            tollgate_proto::config::v1::AuthMode::ApiKey,
        ))
        .await
        .unwrap();
    let key = gw.key.clone();
    let reply = common::get(gw.node.proxy_addr, &format!("/rest/x?key={key}"), &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "?key= is not a REST credential");
    let reply = common::get(gw.node.proxy_addr, "/rest/x", &[("x-goog-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "nor is x-goog-api-key");
    let reply = common::get(gw.node.proxy_addr, "/rest/x", &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK);
}

const GENAI_SDK_SCRIPT: &str = r#"
import os, sys
from google import genai
from google.genai import errors, types

base, key = os.environ["TOLLGATE_URL"], os.environ["TOLLGATE_KEY"]
client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))

reply = client.models.generate_content(model="fast", contents="hi")
assert "fox" in reply.text, reply
assert reply.usage_metadata.candidates_token_count == 9, reply.usage_metadata
assert reply.candidates[0].finish_reason == types.FinishReason.STOP, reply

text, usage = "", None
for chunk in client.models.generate_content_stream(model="fast", contents="hi"):
    text += chunk.text or ""
    if chunk.usage_metadata:
        usage = chunk.usage_metadata
assert "fox" in text, text
assert usage is not None and usage.candidates_token_count == 9, usage

config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64, temperature=0.2)
reply = client.models.generate_content(model="openai/gpt-4o-mini", contents="hi", config=config)
assert reply.text, reply

lookup = types.FunctionDeclaration(
    name="lookup", description="Look something up",
    parameters=types.Schema(type="OBJECT", properties={"query": types.Schema(type="STRING")}, required=["query"]))
tools = types.GenerateContentConfig(
    tools=[types.Tool(function_declarations=[lookup])],
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
called = client.models.generate_content(model="fast", contents="find foxes", config=tools)
call = called.function_calls[0]
assert call.name == "lookup" and call.args["query"], called
history = [
    types.Content(role="user", parts=[types.Part(text="find foxes")]),
    called.candidates[0].content,
    types.Content(role="user", parts=[types.Part.from_function_response(name="lookup", response={"result": "red"})]),
]
answered = client.models.generate_content(model="fast", contents=history, config=tools)
assert "fox" in answered.text, answered

chat = client.chats.create(model="fast")
assert "fox" in chat.send_message("hi").text
assert "fox" in chat.send_message("again").text

try:
    client.models.generate_content(model="missing", contents="hi")
    sys.exit("expected a 404")
except errors.ClientError as e:
    assert e.code == 404 and e.status == "NOT_FOUND", e
stranger = genai.Client(api_key="tg_bad_key", http_options=types.HttpOptions(base_url=base))
try:
    stranger.models.generate_content(model="fast", contents="hi")
    sys.exit("expected a 401")
except errors.ClientError as e:
    assert e.code == 401 and e.status == "UNAUTHENTICATED", e
print("SDK OK")
"#;

#[tokio::test]
async fn the_official_google_genai_python_sdk_works_through_the_gateway() {
    if !python_has(&["google.genai"]).await {
        missing_sdk("google-genai");
        return;
    }
    let mock = mock_openai(LlmMockConfig { tokens: 9, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    gw.alias("fast", &[("openai", "gpt-4o-mini", 0)], 0).await;
    // The SDK's default path: {base_url}/v1beta/models/{model}:generateContent.
    let mut admin = common::admin_client(gw.node.admin_addr, TOKEN).await;
    admin
        .create_route(Route {
            name: "gemini".into(),
            paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/v1beta".into() }],
            auth: AuthMode::ApiKey as i32,
            ai_gateway: true,
            ..Default::default()
        })
        .await
        .unwrap();

    run_sdk_script(&gw, GENAI_SDK_SCRIPT).await;
    let row = gw.usage_of("openai/gpt-4o-mini", 7).await;
    assert_eq!(row.errors, 0);
}

// === Token limits and budgets (issue 14) ===

/// Attaches a limit to the AI route; day windows, so none rolls during a test
/// (unless it runs right at midnight UTC: then it waits for the new day).
async fn limit_ai_route(gw: &Gateway, limit: tollgate_proto::config::v1::Limit) {
    let in_day = tollgate_node::clock::unix_ms().rem_euclid(86_400_000);
    if in_day > 86_400_000 - 30_000 {
        tokio::time::sleep(Duration::from_millis((86_400_000 - in_day + 1_000) as u64)).await;
    }
    let mut admin = common::admin_client(gw.node.admin_addr, TOKEN).await;
    let route = admin.get_route(tollgate_proto::admin::v1::GetRequest { id_or_name: "llm".into(), stale: false });
    let route_id = route.await.unwrap().into_inner().meta.unwrap().id;
    let limit = tollgate_proto::config::v1::Limit { route_ids: vec![route_id], ..limit };
    let request = tollgate_proto::admin::v1::PutEntityRequest {
        kind: "limit".into(),
        entity: prost::Message::encode_to_vec(&limit),
        create: true,
        id_or_name: String::new(),
    };
    admin.put_entity(request).await.unwrap();
}

fn per_key_per_day(
    name: &str,
    unit: tollgate_proto::config::v1::LimitUnit,
    amount: u64,
) -> tollgate_proto::config::v1::Limit {
    use tollgate_proto::config::v1::{Limit, LimitScope, LimitWindow};
    Limit {
        name: name.into(),
        unit: unit.into(),
        amount,
        window: LimitWindow::Day.into(),
        scope: LimitScope::ApiKey.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_token_limit_reserves_max_tokens_reconciles_with_usage_and_refuses_in_each_callers_format() {
    use tollgate_proto::config::v1::LimitUnit;
    // The provider answers 5 tokens whatever max_tokens says.
    let mock = mock_openai(LlmMockConfig { tokens: 5, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    limit_ai_route(&gw, per_key_per_day("tokens-per-key", LimitUnit::TotalTokens, 400)).await;
    let mut body = chat("openai/gpt-4o-mini", false);
    body["max_tokens"] = json!(100);

    let mut used = 0;
    let mut admitted = 0;
    let mut per_call = 0;
    let refused = loop {
        let reply = gw.post("/v1/chat/completions", body.clone()).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert!(reply.headers.contains_key("ratelimit-policy"));
        per_call = reply.json()["usage"]["total_tokens"].as_u64().unwrap();
        used += per_call;
        admitted += 1;
        assert!(admitted < 100, "never refused");
    };
    // Each call reserved its prompt + 100 and was reconciled to prompt + 5:
    // without reconciliation 400 tokens would hold 3 calls; with it, calls
    // stop only once what is left cannot hold one more reservation.
    assert!(used <= 400, "used {used} of 400");
    assert!(
        used + per_call + 95 >= 400,
        "only {used} of 400 used in {admitted} calls: reservations were not reconciled"
    );
    assert!(admitted > 3, "{admitted} calls");
    assert_eq!(mock.requests().len(), admitted as usize, "a refused call never reaches the provider");
    let error = refused.json();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("tokens-per-key"));
    assert!(refused.headers.contains_key("retry-after"));
    assert!(!refused.headers.contains_key("x-should-retry"), "a spent window is worth retrying once it resets");
    assert_eq!(refused.headers["ratelimit-policy"], "\"tokens-per-key\";q=400;w=86400");

    // An Anthropic SDK caller gets Anthropic's error type.
    let messages = json!({"model": "openai/gpt-4o-mini", "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say something about foxes."}]});
    let refused = gw.post("/v1/messages", messages).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error", "{:?}", refused.body);
}

/// `max_tokens` is the client's to set, up to 2^64 - 1: a reservation of
/// more than the limit's whole amount is refused at once (400), reaches no
/// provider, and leaves the limit as it was. (Cast to a signed number, 2^64
/// - 1 units were once a take of -1: admitted, and one more unit left.)
#[tokio::test]
async fn a_max_tokens_beyond_the_limit_is_refused_and_takes_nothing() {
    use tollgate_proto::config::v1::LimitUnit;
    let mock = mock_openai(LlmMockConfig { tokens: 5, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    limit_ai_route(&gw, per_key_per_day("output-per-key", LimitUnit::OutputTokens, 100)).await;
    limit_ai_route(&gw, per_key_per_day("total-per-key", LimitUnit::TotalTokens, 1_000)).await;
    // A request limit too, whose headers (admitted_headers is on) must not
    // stand in for the refusing limit's.
    limit_ai_route(&gw, per_key_per_day("requests-per-key", LimitUnit::Requests, 1_000)).await;
    for max_tokens in [json!(u64::MAX), json!(1_u64 << 63), json!(101), json!(u64::MAX - 3)] {
        let mut body = chat("openai/gpt-4o-mini", false);
        body["max_tokens"] = max_tokens.clone();
        let reply = gw.post("/v1/chat/completions", body).await;
        // The client's to change, not to wait for: a 400, which no retry
        // policy retries, told so in words and as the SDKs read it.
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "max_tokens {max_tokens}: {:?}", reply.body);
        let error = reply.json();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("can never be admitted") && message.contains("fewer output tokens"), "{message}");
        assert_eq!(reply.headers["x-should-retry"], "false");
        assert!(!reply.headers.contains_key("retry-after"), "no wait admits it");
        assert!(!reply.headers.contains_key("ratelimit"), "nor is what is left told");
        // The refusing limit's policy (either token limit refuses 2^64 - 1),
        // the one the message names, not the request limit's.
        let policy = reply.headers["ratelimit-policy"].to_str().unwrap();
        let refusing = policy.split('"').nth(1).unwrap();
        assert!(["output-per-key", "total-per-key"].contains(&refusing), "{policy}");
        assert!(message.contains(&format!("{refusing:?}")), "{policy} / {message}");
    }
    // In Anthropic's and Gemini's formats too.
    let messages = json!({"model": "openai/gpt-4o-mini", "max_tokens": 5_000,
        "messages": [{"role": "user", "content": "hi"}]});
    let anthropic = gw.post("/v1/messages", messages).await;
    assert_eq!(anthropic.json()["error"]["type"], "invalid_request_error", "{:?}", anthropic.body);
    let gemini = json!({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 5_000}});
    let gemini = gw.post("/v1/models/openai/gpt-4o-mini:generateContent", gemini).await;
    assert_eq!(gemini.json()["error"]["status"], "INVALID_ARGUMENT", "{:?}", gemini.body);
    for reply in [anthropic, gemini] {
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
        assert_eq!(reply.headers["x-should-retry"], "false");
        assert!(!reply.headers.contains_key("retry-after") && !reply.headers.contains_key("ratelimit"));
        let policy = reply.headers["ratelimit-policy"].to_str().unwrap();
        assert!(policy.contains("-per-key\";q=") && !policy.contains("requests-per-key"), "{policy}");
    }
    assert!(mock.requests().is_empty(), "no refused call reached the provider");
    // The whole amount is still there: 100 output tokens, 5 used by each call.
    let mut body = chat("openai/gpt-4o-mini", false);
    body["max_tokens"] = json!(100);
    let reply = gw.post("/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(mock.requests().len(), 1);
}

const TOO_LARGE_SCRIPT: &str = r#"
import os
import openai, anthropic

base, key = os.environ["TOLLGATE_URL"], os.environ["TOLLGATE_KEY"]
# The SDKs' own retries are on (two each, as by default).
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=2)
try:
    client.chat.completions.create(
        model="openai/gpt-4o-mini", max_tokens=5000, messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert "fewer output tokens" in str(e), e
claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=2)
try:
    claude.messages.create(model="openai/gpt-4o-mini", max_tokens=5000, messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("expected BadRequestError")
except anthropic.BadRequestError as e:
    assert "fewer output tokens" in str(e), e
print("SDK OK")
"#;

/// The OpenAI and Anthropic SDKs retry a 429 twice by default (and so do
/// most clients' retry policies): a request that no window could ever
/// admit is a 400, with `x-should-retry: false`, so each SDK call is
/// refused once, not three times, and counted apart from rate limiting.
#[tokio::test]
async fn the_sdks_do_not_retry_a_request_too_large_for_its_limit() {
    use tollgate_proto::config::v1::LimitUnit;
    if !python_has(&["openai", "anthropic"]).await {
        missing_sdk("openai anthropic");
        return;
    }
    let mock = mock_openai(LlmMockConfig { tokens: 5, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    limit_ai_route(&gw, per_key_per_day("output-per-key", LimitUnit::OutputTokens, 100)).await;
    run_sdk_script(&gw, TOO_LARGE_SCRIPT).await;
    let text = String::from_utf8_lossy(&common::get(gw.node.ops_addr, "/metrics", &[]).await.body).to_string();
    let counted = |series: &str| {
        let prefix = format!("{series}{{limit=\"output-per-key\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_string)
    };
    assert_eq!(
        counted("tollgate_limit_too_large_total").as_deref(),
        Some("2"),
        "two SDK calls, each refused once, not retried:\n{text}"
    );
    let refused = counted("tollgate_limit_refused_total");
    assert!(matches!(refused.as_deref(), None | Some("0")), "not counted as rate limiting: {refused:?}");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn a_stream_cut_short_reconciles_with_what_was_delivered() {
    use tollgate_proto::config::v1::LimitUnit;
    // Every stream is cut half way through its 40 tokens.
    let mock = mock_openai(LlmMockConfig { tokens: 40, cut_stream: 1.0, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    limit_ai_route(&gw, per_key_per_day("output-per-key", LimitUnit::OutputTokens, 100)).await;
    let mut body = chat("openai/gpt-4o-mini", true);
    body["max_tokens"] = json!(40);
    let mut admitted = 0;
    for _ in 0..20 {
        let reply = gw.post("/v1/chat/completions", body.clone()).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(reply.status, StatusCode::OK);
        admitted += 1;
        // The stream's accounting (and reconciliation) runs when it ends.
        gw.usage_of("openai/gpt-4o-mini", admitted).await;
    }
    let row = gw.usage_of("openai/gpt-4o-mini", admitted).await;
    assert!(row.output_tokens <= 100, "{row:?}");
    // 40 reserved per stream, about 20 delivered: with reconciliation more
    // than 100 / 40 streams fit.
    assert!(admitted >= 3, "only {admitted} streams: a cut stream kept its whole reservation ({row:?})");
}

#[tokio::test]
async fn a_budget_warns_past_its_threshold_and_then_refuses_naming_itself_and_its_reset() {
    use tollgate_proto::config::v1::LimitUnit;
    let mock = mock_openai(LlmMockConfig { tokens: 50, ..Default::default() }).await;
    let mut gw = Gateway::start().await;
    gw.provider("openai", ProviderKind::Openai, format!("{}/v1", mock.url()), &["k1"]).await;
    // 10 $ per million tokens either way: a call of ~70 tokens costs ~700 micro-dollars.
    gw.price("openai/gpt-4o-mini", 10_000_000, 10_000_000, 10_000_000).await;
    let budget = tollgate_proto::config::v1::Limit {
        warn_at_percent: 50,
        ..per_key_per_day("daily-spend", LimitUnit::CostMicros, 5_000)
    };
    limit_ai_route(&gw, budget).await;
    let mut body = chat("openai/gpt-4o-mini", false);
    body["max_tokens"] = json!(50);
    let mut warned = false;
    let mut calls = 0;
    let refused = loop {
        calls += 1;
        assert!(calls < 100, "the budget never refused");
        let reply = gw.post("/v1/chat/completions", body.clone()).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        warned |= reply
            .headers
            .get("x-tollgate-budget-warning")
            .is_some_and(|v| v.to_str().unwrap().starts_with("budget \"daily-spend\" is "));
    };
    assert!(warned, "the soft threshold warned before the budget ran out");
    let message = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("budget \"daily-spend\"") && message.contains("resets at"), "{message}");
    let row = gw.usage_of("openai/gpt-4o-mini", 1).await;
    assert!(
        row.cost_picodollars <= 5_000 * 1_000_000,
        "spent {} of 5000 micro-dollars",
        row.cost_picodollars / 1_000_000
    );
}
