//! APIs as MCP tools, driven by the official MCP Python SDK (`mcp` from
//! PyPI, pinned in scripts/python-sdks.txt): connect (the current
//! 2026-07-28 revision, and the 2025-11-25 handshake), list the caller's
//! tools, call a REST tool and a prompt tool, and see an auth failure and a
//! rate-limit failure as MCP errors. Raw HTTP checks the envelope rules
//! and hostile arguments.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::scripted_llm::ScriptedModel;
use common::web::{Api, governance};
use common::*;
use http::Request;
use serde_json::{Value, json};
use tollgate_proto::admin::v1::{DecideSubscriptionRequest, PutEntityRequest, SubscribeRequest};
use tollgate_proto::config::v1::route::Backend;
use tollgate_proto::config::v1::{
    AuthMode, Limit, LimitScope, LimitUnit, LimitWindow, McpBackend, PathMatch, PromptMessage, PromptSpec,
    PromptVariable, Route, Service, SubscriptionMode, SubscriptionState,
};

const ORDERS: &str = r#"openapi: 3.0.3
info: {title: Orders, version: '1'}
paths:
  /orders/{id}:
    get:
      operationId: getOrder
      summary: Fetch one order
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}}
        - {name: expand, in: query, schema: {type: boolean}}
        - {name: x-trace, in: header, schema: {type: string}}
        - {name: authorization, in: header, schema: {type: string}}
      responses: {'200': {description: the order}}
  /orders:
    post:
      operationId: createOrder
      requestBody:
        required: true
        content: {application/json: {schema: {$ref: '#/components/schemas/Order'}}}
      responses: {'201': {description: placed}}
components:
  schemas:
    Order: {type: object, properties: {item: {type: string}}}
"#;

struct Setup {
    node: tollgate_node::Node,
    key: String,
    upstream: Upstream,
    _model: ScriptedModel,
    _dir: tempfile::TempDir,
}

/// `orders` (approval needed; shop is approved, `per_minute` calls a minute) and
/// `internal` (approval needed, shop not subscribed) of team-less REST
/// APIs; the prompt API `sentiment`; an MCP route on `/mcp`.
async fn setup(per_minute: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("orders").await;
    let model = ScriptedModel::start(&["positive"]).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut gov = governance(node.admin_addr, TOKEN).await;
    for (name, path) in [("orders", "/orders"), ("internal", "/internal")] {
        let api = Api {
            name,
            path,
            upstream: upstream.addr,
            mode: SubscriptionMode::Approval,
            openapi: ORDERS,
            publish: true,
        };
        api.create(&mut admin, &mut gov).await;
    }
    model.register(node.admin_addr).await;
    let spec = PromptSpec {
        model: "mock/m1".into(),
        messages: vec![PromptMessage { role: "user".into(), content: "Sentiment of: {{text}}".into() }],
        variables: vec![PromptVariable { name: "text".into(), required: true, ..Default::default() }],
        ..Default::default()
    };
    let sentiment = Service {
        name: "sentiment".into(),
        description: "The sentiment of a text".into(),
        prompt: Some(spec),
        versioning: Some(tollgate_proto::config::v1::Versioning { default_version: "v1".into(), ..Default::default() }),
        ..Default::default()
    };
    admin.create_service(sentiment).await.unwrap();
    admin
        .create_route(route("sentiment", "sentiment", PathMatch::Exact, "/apis/sentiment", AuthMode::ApiKey))
        .await
        .unwrap();
    let version = tollgate_proto::admin::v1::PutApiVersionRequest {
        service: "sentiment".into(),
        version: "v1".into(),
        ..Default::default()
    };
    gov.put_api_version(version).await.unwrap();
    let publish = tollgate_proto::admin::v1::SetApiVersionStateRequest {
        service: "sentiment".into(),
        version: "v1".into(),
        state: tollgate_proto::config::v1::VersionState::Published as i32,
        ..Default::default()
    };
    gov.set_api_version_state(publish).await.unwrap();
    let mcp = Route {
        name: "mcp".into(),
        paths: vec![tollgate_proto::config::v1::RoutePath { kind: PathMatch::Exact as i32, path: "/mcp".into() }],
        auth: AuthMode::ApiKey as i32,
        backend: Some(Backend::Mcp(McpBackend::default())),
        ..Default::default()
    };
    admin.create_route(mcp).await.unwrap();
    let (_, key) = consumer_with_key(&mut admin, "shop").await;
    let sub = gov.subscribe(SubscribeRequest { consumer: "shop".into(), service: "orders".into() }).await.unwrap();
    let decide = DecideSubscriptionRequest {
        id: sub.into_inner().meta.unwrap().id,
        state: SubscriptionState::Approved as i32,
        reason: String::new(),
    };
    gov.decide_subscription(decide).await.unwrap();
    let limit = Limit {
        name: "orders-per-minute".into(),
        unit: LimitUnit::Requests as i32,
        amount: per_minute,
        window: LimitWindow::Minute as i32,
        scope: LimitScope::Consumer as i32,
        route_ids: vec![
            admin
                .get_route(tollgate_proto::admin::v1::GetRequest { id_or_name: "orders".into(), stale: false })
                .await
                .unwrap()
                .into_inner()
                .meta
                .unwrap()
                .id,
        ],
        ..Default::default()
    };
    let put = PutEntityRequest {
        kind: "limit".into(),
        entity: prost::Message::encode_to_vec(&limit),
        create: true,
        id_or_name: String::new(),
    };
    admin.put_entity(put).await.unwrap();
    Setup { node, key, upstream, _model: model, _dir: dir }
}

async fn post(proxy: SocketAddr, key: &str, headers: &[(&str, &str)], body: Value) -> Reply {
    let mut request = Request::post(format!("http://{proxy}/mcp"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    send(&http_client(), request.body(full(Bytes::from(body.to_string()))).unwrap()).await
}

const SDK_SCRIPT: &str = r#"
import asyncio, json, os
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

URL, KEY = os.environ["MCP_URL"], os.environ["MCP_KEY"]

def leaves(error):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error

async def main():
    out = {}
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with Client(streamable_http_client(URL, http_client=http)) as client:
            out["protocol"] = client.protocol_version
            tools = (await client.list_tools()).tools
            out["tools"] = {t.name: t.input_schema for t in tools}
            r = await client.call_tool("orders.getOrder", {"id": "o-1", "expand": True, "x-trace": "t1"})
            out["rest"] = {"error": r.is_error, "structured": r.structured_content}
            r = await client.call_tool("sentiment.ask", {"text": "I love it"})
            out["prompt"] = {"error": r.is_error, "structured": r.structured_content}
            r = await client.call_tool("sentiment.ask", {"text": 5})
            out["bad_variable"] = {"error": r.is_error, "text": r.content[0].text}
            for i in range(5):
                try:
                    await client.call_tool("orders.getOrder", {"id": f"n{i}"})
                except MCPError as e:
                    out["limited"] = {"code": e.code, "message": str(e), "after": i}
                    break
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with Client(streamable_http_client(URL, http_client=http), mode="legacy") as client:
            out["legacy_protocol"] = client.protocol_version
            out["legacy_tools"] = sorted(t.name for t in (await client.list_tools()).tools)
    try:
        async with create_mcp_http_client(headers={"Authorization": "Bearer tg_not_a_key"}) as http:
            async with Client(streamable_http_client(URL, http_client=http)) as client:
                out["auth"] = "connected"
    except BaseException as error:
        for leaf in leaves(error):
            if isinstance(leaf, MCPError):
                out["auth"] = {"code": leaf.code, "message": str(leaf)}
    print(json.dumps(out))

asyncio.run(main())
"#;

/// Whether python3 can import the MCP SDK; if not, skip (or fail under CI).
async fn sdk_available() -> bool {
    let found = tokio::process::Command::new("python3")
        .args(["-c", "import mcp.client.streamable_http"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let required = ci || std::env::var("TOLLGATE_REQUIRE_SDKS").as_deref() == Ok("1");
    let message = "python3 with the `mcp` package is not available; install it with \
                   `python3 -m pip install -r scripts/python-sdks.txt`";
    assert!(!required, "{message}; the SDK tests are required here (CI or TOLLGATE_REQUIRE_SDKS=1 is set)");
    println!("SKIPPED: {message}");
    false
}

#[tokio::test]
async fn the_official_mcp_sdk_lists_and_calls_a_callers_apis_as_tools() {
    if !sdk_available().await {
        return;
    }
    let Setup { node, key, upstream, _model, _dir } = setup(3).await;
    let output = tokio::process::Command::new("python3")
        .args(["-c", SDK_SCRIPT])
        .env("MCP_URL", format!("http://{}/mcp", node.proxy_addr))
        .env("MCP_KEY", &key)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK script failed: {stderr}");
    let out: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    assert_eq!(out["protocol"], "2026-07-28", "the current revision: {out}");
    let tools = out["tools"].as_object().unwrap();
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["orders.createOrder", "orders.getOrder", "sentiment.ask"], "internal is not subscribed");
    let get_order = &tools["orders.getOrder"];
    assert_eq!(get_order["required"], json!(["id"]));
    assert!(get_order["properties"]["x-trace"].is_object());
    assert!(get_order["properties"].get("authorization").is_none(), "a tool never sets credentials");
    assert_eq!(tools["orders.createOrder"]["properties"]["body"]["$ref"], "#/$defs/Order");
    assert_eq!(tools["sentiment.ask"]["required"], json!(["text"]));

    // The REST tool went through the proxy: the upstream saw the path,
    // query, header and the caller's identity, set by the gateway.
    assert_eq!(out["rest"]["error"], false, "{out}");
    let seen = &out["rest"]["structured"];
    assert_eq!(seen["path"], "/orders/o-1", "{seen}");
    assert_eq!(seen["query"], "expand=true", "{seen}");
    assert_eq!(seen["headers"]["x-trace"], "t1", "{seen}");
    assert_eq!(seen["headers"]["x-consumer-name"], "shop", "{seen}");
    assert_eq!(out["prompt"], json!({"error": false, "structured": {"output": "positive"}}));
    assert_eq!(out["bad_variable"]["error"], true);
    assert!(out["bad_variable"]["text"].as_str().unwrap().contains("HTTP 400"), "{out}");
    // The limit of three a minute on orders: getOrder was called once, so two more pass.
    assert_eq!(out["limited"]["code"], -32029, "{out}");
    assert_eq!(out["limited"]["after"], 2, "{out}");
    assert_eq!(out["legacy_protocol"], "2025-11-25");
    assert_eq!(out["legacy_tools"].as_array().unwrap().len(), 3);
    assert_eq!(out["auth"]["code"], -32001, "{out}");
    assert!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    node.shutdown().await;
}

#[tokio::test]
async fn hostile_arguments_and_envelopes_stay_inside_the_tools_route() {
    let Setup { node, key, upstream: _upstream, _model, _dir } = setup(100).await;
    let proxy = node.proxy_addr;
    let call = |id: &str| json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "orders.getOrder", "arguments": {"id": id}}});
    // A path argument cannot climb out of its segment, nor lead to another route.
    for id in ["../internal/x", "..", ".", "...", "a/../../internal", "%2e%2e", "x?admin=1", "x#y"] {
        let reply = post(proxy, &key, &[], call(id)).await;
        let answer = reply.json();
        match answer.get("result") {
            Some(result) if result["isError"] == false => {
                let path = result["structuredContent"]["path"].as_str().unwrap();
                assert!(path.starts_with("/orders/") && !path.contains("internal"), "{id} reached {path}");
                assert!(result["structuredContent"]["query"].as_str().unwrap_or_default().is_empty(), "{id}");
            }
            Some(result) => assert_eq!(result["isError"], true, "{id}: {answer}"),
            None => assert_eq!(answer["error"]["code"], -32602, "{id}: {answer}"),
        }
    }
    for id in ["..", ".", "..."] {
        assert_eq!(post(proxy, &key, &[], call(id)).await.json()["error"]["code"], -32602, "{id}");
    }
    // Reserved characters arrive escaped, in the one segment.
    let reply = post(proxy, &key, &[], call("x?admin=1")).await;
    assert_eq!(reply.json()["result"]["structuredContent"]["path"], "/orders/x%3Fadmin%3D1");
    // An unknown argument, an unknown tool, a tool of an API not subscribed.
    let bad = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "orders.getOrder", "arguments": {"id": "1", "host": "evil"}}});
    assert_eq!(post(proxy, &key, &[], bad).await.json()["error"]["code"], -32602);
    let other = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "internal.getOrder", "arguments": {"id": "1"}}});
    assert_eq!(post(proxy, &key, &[], other).await.json()["error"]["code"], -32602);
    // The modern envelope: headers must agree with the message.
    let list = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let mismatch =
        post(proxy, &key, &[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call")], list.clone()).await;
    assert_eq!((mismatch.status.as_u16(), mismatch.json()["error"]["code"].as_i64()), (400, Some(-32020)));
    let unknown = post(proxy, &key, &[("mcp-protocol-version", "2099-01-01")], list).await;
    assert_eq!(unknown.json()["error"]["code"], -32022);
    assert!(unknown.json()["error"]["data"]["supported"].as_array().unwrap().contains(&json!("2026-07-28")));
    // Notifications are accepted and answered with nothing; GET is not served.
    let note = post(proxy, &key, &[], json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert_eq!((note.status.as_u16(), note.body.len()), (202, 0));
    let reply = get(proxy, "/mcp", &[("authorization", &format!("Bearer {key}"))]).await;
    assert_eq!(reply.status, 405);
    // Without a key: a JSON-RPC error an MCP client raises, with 401.
    let reply = post(proxy, "tg_nope", &[], json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    assert_eq!((reply.status.as_u16(), reply.json()["error"]["code"].as_i64()), (401, Some(-32001)));
    // Junk.
    for body in ["not json", "[1]", "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"nope\"}"] {
        let request = Request::post(format!("http://{proxy}/mcp"))
            .header("authorization", format!("Bearer {key}"))
            .body(full(Bytes::from(body)))
            .unwrap();
        let reply = send(&http_client(), request).await;
        assert!(reply.status.is_client_error(), "{body}: {}", reply.status);
        assert!(reply.json()["error"]["code"].is_i64(), "{body}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_tool_of_an_open_route_never_receives_the_callers_credential() {
    let Setup { node, key, upstream, _model, _dir } = setup(100).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut gov = governance(node.admin_addr, TOKEN).await;
    let api = Api {
        name: "weather",
        path: "/weather",
        upstream: upstream.addr,
        mode: SubscriptionMode::Unspecified,
        openapi: "openapi: 3.0.3\ninfo: {title: W, version: '1'}\npaths:\n  /weather:\n    get:\n      operationId: now\n      responses: {'200': {description: ok}}\n",
        publish: true,
    };
    api.create(&mut admin, &mut gov).await;
    let mut open = admin
        .get_route(tollgate_proto::admin::v1::GetRequest { id_or_name: "weather".into(), stale: false })
        .await
        .unwrap()
        .into_inner();
    open.auth = AuthMode::None as i32;
    admin.update_route(open).await.unwrap();
    let call =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "weather.now", "arguments": {}}});
    let reply = post(node.proxy_addr, &key, &[("x-api-key", &key)], call).await;
    let seen = &reply.json()["result"]["structuredContent"];
    assert_eq!(seen["path"], "/weather", "{}", reply.json());
    assert!(seen["headers"].get("authorization").is_none() && seen["headers"].get("x-api-key").is_none(), "{seen}");
    node.shutdown().await;
}

#[tokio::test]
async fn an_mcp_route_needs_authentication_and_an_operators_serves_only_its_team() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let open = Route {
        name: "mcp".into(),
        paths: vec![tollgate_proto::config::v1::RoutePath { kind: PathMatch::Exact as i32, path: "/mcp".into() }],
        auth: AuthMode::None as i32,
        backend: Some(Backend::Mcp(McpBackend::default())),
        ..Default::default()
    };
    let refused = admin.create_route(open.clone()).await.unwrap_err();
    assert!(refused.message().contains("API key or JWT"), "{}", refused.message());

    // An operator's MCP route lists its own team's APIs only.
    let team = tollgate_proto::config::v1::Team { name: "payments".into(), ..Default::default() };
    let put = PutEntityRequest {
        kind: "team".into(),
        entity: prost::Message::encode_to_vec(&team),
        create: true,
        id_or_name: String::new(),
    };
    let team_id = admin.put_entity(put).await.unwrap().into_inner().entity;
    let team_id =
        <tollgate_proto::config::v1::Team as prost::Message>::decode(team_id.as_slice()).unwrap().meta.unwrap().id;
    let mut gov = governance(node.admin_addr, TOKEN).await;
    let request = tollgate_proto::admin::v1::CreateAdminTokenRequest {
        name: "ops".into(),
        role: tollgate_proto::config::v1::AdminRole::Operator as i32,
        team: "payments".into(),
        ttl_seconds: 0,
    };
    let operator = gov.create_admin_token(request).await.unwrap().into_inner().plaintext;
    let mut as_operator = admin_client(node.admin_addr, &operator).await;
    let keyed = Route { auth: AuthMode::ApiKey as i32, team_id: team_id.clone(), ..open };
    let every_team = as_operator.create_route(keyed.clone()).await.unwrap_err();
    assert_eq!(every_team.code(), tonic::Code::PermissionDenied, "{}", every_team.message());
    let own = Route { backend: Some(Backend::Mcp(McpBackend { team_id: team_id.clone() })), ..keyed };
    as_operator.create_route(own).await.unwrap();
    node.shutdown().await;
}
