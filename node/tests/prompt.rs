//! Prompt APIs (DESIGN §6) end to end: a template with typed variables,
//! answered by a mock OpenAI-format provider through the AI gateway, with
//! its output checked against a schema, streamed as SSE, limited and
//! billed to the service.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::scripted_llm::ScriptedModel;
use common::*;
use http::Request;
use serde_json::{Value, json};
use tollgate_proto::admin::v1::{CreateApiKeyRequest, GetUsageRequest};
use tollgate_proto::config::v1::{
    AuthMode, Consumer, Limit, LimitScope, LimitUnit, LimitWindow, ModelPrice, PathMatch, PromptMessage, PromptSpec,
    PromptVariable, PromptVariableType, Service,
};

fn sentiment_spec() -> PromptSpec {
    PromptSpec {
        model: "mock/m1".into(),
        messages: vec![
            PromptMessage { role: "system".into(), content: "You label sentiment as JSON.".into() },
            PromptMessage { role: "user".into(), content: "Text ({{lang}}): {{text}}".into() },
        ],
        variables: vec![
            PromptVariable { name: "text".into(), required: true, max_length: 200, ..Default::default() },
            PromptVariable {
                name: "lang".into(),
                r#type: PromptVariableType::String as i32,
                allowed: vec!["en".into(), "de".into()],
                ..Default::default()
            },
            PromptVariable { name: "strict".into(), r#type: PromptVariableType::Boolean as i32, ..Default::default() },
        ],
        output_schema: json!({"type": "object", "required": ["label", "score"], "properties": {
            "label": {"enum": ["positive", "negative", "neutral"]}, "score": {"type": "number"}}})
        .to_string(),
        temperature: Some(0.0),
        ..Default::default()
    }
}

struct Setup {
    node: tollgate_node::Node,
    admin: Admin,
    key: String,
    _dir: tempfile::TempDir,
}

/// A node with the mock provider, a price for its model, the prompt API
/// `sentiment` on `/apis/sentiment` behind keys, and a consumer's key.
async fn setup(model: &ScriptedModel) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    model.register(node.admin_addr).await;
    let mut ai = common::scripted_llm::ai_admin(node.admin_addr).await;
    let price = ModelPrice {
        name: "mock/m1".into(),
        mode: "chat".into(),
        input_micros_per_mtok: 1_000_000,
        output_micros_per_mtok: 2_000_000,
        ..Default::default()
    };
    ai.put_model_price(price).await.unwrap();
    let service = Service { name: "sentiment".into(), prompt: Some(sentiment_spec()), ..Default::default() };
    admin.create_service(service).await.unwrap();
    admin
        .create_route(route("sentiment", "sentiment", PathMatch::Exact, "/apis/sentiment", AuthMode::ApiKey))
        .await
        .unwrap();
    admin.create_consumer(Consumer { name: "app".into(), ..Default::default() }).await.unwrap();
    let key = admin
        .create_api_key(CreateApiKeyRequest { consumer: "app".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    Setup { node, admin, key, _dir: dir }
}

async fn call(proxy: SocketAddr, key: &str, body: &str, stream: bool) -> Reply {
    let mut request = Request::post(format!("http://{proxy}/apis/sentiment"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    if stream {
        request = request.header("accept", "text/event-stream");
    }
    send(&http_client(), request.body(full(Bytes::from(body.to_string()))).unwrap()).await
}

#[tokio::test]
async fn a_prompt_api_fills_its_template_and_answers_with_checked_json_billed_to_the_service() {
    let model = ScriptedModel::start(&[r#"{"label": "positive", "score": 0.93}"#]).await;
    let Setup { node, admin: _admin, key, _dir } = setup(&model).await;
    let reply = call(node.proxy_addr, &key, r#"{"text": "I love it <3", "lang": "en"}"#, false).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json(), json!({"label": "positive", "score": 0.93}));

    // What the provider was sent: the filled template, the parameters, JSON mode.
    let sent = &model.requests()[0];
    assert_eq!(sent["model"], "m1");
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "You label sentiment as JSON."}));
    assert_eq!(sent["messages"][1], json!({"role": "user", "content": "Text (en): I love it <3"}));
    assert_eq!(sent["temperature"], 0.0);
    assert_eq!(sent["response_format"]["type"], "json_object");

    // Accounted to the service and the consumer, at the model's price.
    let mut ai = common::scripted_llm::ai_admin(node.admin_addr).await;
    let mut row = None;
    for _ in 0..200 {
        let rows = ai
            .get_usage(GetUsageRequest { group_by: vec!["model".into()], ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .rows;
        row = rows.into_iter().find(|r| r.group[0] == "mock/m1");
        if row.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let row = row.expect("the call is in the ledger");
    assert_eq!((row.requests, row.input_tokens, row.output_tokens), (1, 20, 10));
    assert_eq!(row.cost_picodollars, 20 * 1_000_000 + 10 * 2_000_000);
    node.shutdown().await;
}

#[tokio::test]
async fn missing_unknown_and_mistyped_variables_are_400_naming_the_variable() {
    let model = ScriptedModel::start(&[r#"{"label": "neutral", "score": 0}"#]).await;
    let Setup { node, key, _dir, .. } = setup(&model).await;
    let too_long = format!(r#"{{"text": "{}"}}"#, "a".repeat(201));
    for (body, variable) in [
        (r#"{"lang": "en"}"#, "text"),
        (r#"{"text": 5}"#, "text"),
        (r#"{"text": "x", "lang": "fr"}"#, "lang"),
        (r#"{"text": "x", "strict": "yes"}"#, "strict"),
        (r#"{"text": "x", "extra": 1}"#, "extra"),
        (too_long.as_str(), "text"),
    ] {
        let reply = call(node.proxy_addr, &key, body, false).await;
        assert_eq!(reply.status, 400, "{body}: {:?}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(
            (error["code"].as_str(), error["variable"].as_str()),
            (Some("invalid_variable"), Some(variable)),
            "{body}"
        );
        assert!(error["message"].as_str().unwrap().contains(variable), "{error}");
    }
    for body in ["not json", "[1, 2]", ""] {
        let reply = call(node.proxy_addr, &key, body, false).await;
        assert_eq!(reply.status, 400, "{body}");
    }
    assert!(model.requests().is_empty(), "no bad request reached the model");
    // Only POST.
    let reply = get(node.proxy_addr, "/apis/sentiment", &[("authorization", &format!("Bearer {key}"))]).await;
    assert_eq!((reply.status.as_u16(), reply.headers["allow"].to_str().unwrap()), (405, "POST"));
    node.shutdown().await;
}

#[tokio::test]
async fn output_that_misses_the_schema_is_asked_for_once_more_then_is_a_502_with_the_reason() {
    // Not JSON, then JSON that misses the schema: 502 after two calls.
    let model = ScriptedModel::start(&["I think it is positive", r#"{"label": "great"}"#]).await;
    let Setup { node, key, _dir, .. } = setup(&model).await;
    let reply = call(node.proxy_addr, &key, r#"{"text": "fine"}"#, false).await;
    assert_eq!(reply.status, 502, "{:?}", reply.body);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "output_invalid");
    assert!(error["message"].as_str().unwrap().contains("schema"), "{error}");
    let requests = model.requests();
    assert_eq!(requests.len(), 2, "asked exactly once more");
    let retry = requests[1]["messages"].as_array().unwrap();
    assert_eq!(retry[2]["content"], "I think it is positive", "the retry shows the model its answer");
    assert!(retry[3]["content"].as_str().unwrap().contains("not JSON"), "{}", retry[3]);
    node.shutdown().await;

    // A wrong answer, then a right one (in a code fence): 200.
    let model =
        ScriptedModel::start(&[r#"{"label": 1}"#, "```json\n{\"label\": \"negative\", \"score\": 0.1}\n```"]).await;
    let Setup { node, key, _dir, .. } = setup(&model).await;
    let reply = call(node.proxy_addr, &key, r#"{"text": "meh"}"#, false).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["label"], "negative");
    node.shutdown().await;
}

#[tokio::test]
async fn a_prompt_api_streams_its_text_then_the_checked_output() {
    let model = ScriptedModel::start(&[r#"{"label": "positive", "score": 1}"#]).await;
    let Setup { node, key, _dir, .. } = setup(&model).await;
    let reply = call(node.proxy_addr, &key, r#"{"text": "great"}"#, true).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let body = String::from_utf8(reply.body.to_vec()).unwrap();
    let events: Vec<(&str, Value)> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            (name.strip_prefix("event: ").unwrap(), serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap())
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["delta", "delta", "delta", "output", "done"], "{body}");
    let text: String = events.iter().filter_map(|(_, d)| d["text"].as_str()).collect();
    assert_eq!(text, r#"{"label": "positive", "score": 1}"#);
    assert_eq!(events[3].1, json!({"label": "positive", "score": 1}));
    assert_eq!(model.requests()[0]["stream"], true);
    node.shutdown().await;
}

#[tokio::test]
async fn a_prompt_api_has_the_limits_of_any_api() {
    let model = ScriptedModel::start(&[r#"{"label": "neutral", "score": 0.5}"#]).await;
    let Setup { node, mut admin, key, _dir } = setup(&model).await;
    let limit = Limit {
        name: "two-a-minute".into(),
        unit: LimitUnit::Requests as i32,
        amount: 2,
        window: LimitWindow::Minute as i32,
        scope: LimitScope::Consumer as i32,
        global: true,
        ..Default::default()
    };
    let put = tollgate_proto::admin::v1::PutEntityRequest {
        kind: "limit".into(),
        entity: prost::Message::encode_to_vec(&limit),
        create: true,
        id_or_name: String::new(),
    };
    admin.put_entity(put).await.unwrap();
    let statuses: Vec<u16> = futures_statuses(node.proxy_addr, &key, 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(model.requests().len(), 2, "the refused call never reached the model");
    node.shutdown().await;
}

async fn futures_statuses(proxy: SocketAddr, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(call(proxy, key, r#"{"text": "x"}"#, false).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn a_prompt_spec_that_names_undeclared_variables_or_keeps_targets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut bad = sentiment_spec();
    bad.messages[1].content = "{{text}} and {{missing}}".into();
    let refused = admin.create_service(Service { name: "s1".into(), prompt: Some(bad), ..Default::default() }).await;
    let status = refused.unwrap_err();
    assert!(status.message().contains("missing"), "{}", status.message());
    let mut bad = sentiment_spec();
    bad.output_schema = r#"{"type": 12}"#.into();
    let refused = admin.create_service(Service { name: "s2".into(), prompt: Some(bad), ..Default::default() }).await;
    assert!(refused.unwrap_err().message().contains("output_schema"));
    let with_targets = Service {
        name: "s3".into(),
        prompt: Some(sentiment_spec()),
        targets: vec![tollgate_proto::config::v1::Target { host: "127.0.0.1".into(), port: 1, weight: 1 }],
        ..Default::default()
    };
    assert!(admin.create_service(with_targets).await.unwrap_err().message().contains("targets"));

    // A prompt API spends the cluster's provider keys: an operator may not make one.
    let team = tollgate_proto::config::v1::Team { name: "t1".into(), ..Default::default() };
    let put = tollgate_proto::admin::v1::PutEntityRequest {
        kind: "team".into(),
        entity: prost::Message::encode_to_vec(&team),
        create: true,
        id_or_name: String::new(),
    };
    let team = admin.put_entity(put).await.unwrap().into_inner().entity;
    let team_id =
        <tollgate_proto::config::v1::Team as prost::Message>::decode(team.as_slice()).unwrap().meta.unwrap().id;
    let mut gov = common::web::governance(node.admin_addr, TOKEN).await;
    let request = tollgate_proto::admin::v1::CreateAdminTokenRequest {
        name: "ops".into(),
        role: tollgate_proto::config::v1::AdminRole::Operator as i32,
        team: "t1".into(),
        ttl_seconds: 0,
    };
    let operator = gov.create_admin_token(request).await.unwrap().into_inner().plaintext;
    let mut as_operator = admin_client(node.admin_addr, &operator).await;
    let own = Service { name: "s4".into(), team_id, prompt: Some(sentiment_spec()), ..Default::default() };
    let refused = as_operator.create_service(own).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
    node.shutdown().await;
}

#[tokio::test]
async fn a_published_prompt_api_is_in_the_portal_with_a_generated_reference_and_counts_as_its_service() {
    use tollgate_proto::admin::v1::usage_service_client::UsageServiceClient;
    use tollgate_proto::admin::v1::{GetClusterUsageRequest, PutApiVersionRequest, SetApiVersionStateRequest};
    use tollgate_proto::config::v1::{VersionState, Versioning};
    let model = ScriptedModel::start(&[r#"{"label": "positive", "score": 0.7}"#]).await;
    let Setup { node, mut admin, key, _dir } = setup(&model).await;
    let mut service = admin
        .get_service(tollgate_proto::admin::v1::GetRequest { id_or_name: "sentiment".into(), stale: false })
        .await
        .unwrap()
        .into_inner();
    service.versioning = Some(Versioning { default_version: "v1".into(), ..Default::default() });
    admin.update_service(service).await.unwrap();
    let mut gov = common::web::governance(node.admin_addr, TOKEN).await;
    let version = PutApiVersionRequest { service: "sentiment".into(), version: "v1".into(), ..Default::default() };
    gov.put_api_version(version).await.unwrap();
    let publish = SetApiVersionStateRequest {
        service: "sentiment".into(),
        version: "v1".into(),
        state: VersionState::Published as i32,
        ..Default::default()
    };
    gov.set_api_version_state(publish).await.unwrap();

    let mut web = common::web::Web::new(node.console_addr);
    assert_eq!(web.post("/portal/signin", &[("secret", &key)]).await.status, 303);
    let (catalog, _) = web.page("/portal?q=sentiment").await;
    assert!(catalog.contains("/portal/apis/sentiment"), "{catalog}");
    let (reference, _) = web.page("/portal/apis/sentiment/versions/v1").await;
    for expected in
        ["/apis/sentiment", "Ask sentiment", "id=\"schema-Variables\"", "id=\"schema-Output\"", "lang", "positive"]
    {
        assert!(reference.contains(expected), "{expected:?} missing: {reference}");
    }

    // Its calls count as the service's, for the cluster and the consumer.
    let reply = call(node.proxy_addr, &key, r#"{"text": "ok"}"#, false).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap();
    let mut usage = UsageServiceClient::with_interceptor(channel.connect().await.unwrap(), Bearer(TOKEN.into()));
    eventually("the call counts for the service", async || {
        let request =
            GetClusterUsageRequest { period: "hour".into(), dimension: "service".into(), ..Default::default() };
        let rows = usage.get_cluster_usage(request).await.unwrap().into_inner().rows;
        rows.iter().any(|r| r.value == "sentiment" && r.requests == 1 && r.cost_picodollars > 0)
    })
    .await;
    node.shutdown().await;
}
