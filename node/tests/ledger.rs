//! The usage ledger end to end on one real node: REST and AI requests
//! (answered, refused, failed, streamed) are journaled, folded into the
//! cluster's counters, and read back with `tollgate ctl usage` as a user
//! runs it, in JSON, CSV and table form.

mod common;

use std::process::{Command, Output};

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tollgate_loadtest::mock::MockHandle;
use tollgate_loadtest::mock::llm::LlmMockConfig;
use tollgate_loadtest::mock::openai::MockOpenAi;
use tollgate_node::Node;

fn ctl(admin: std::net::SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("ctl")
        .args(["--admin", &admin.to_string(), "--token", TOKEN])
        .args(args)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .output()
        .expect("tollgate binary runs")
}

async fn run(admin: std::net::SocketAddr, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || ctl(admin, &args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "ctl failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

async fn json_of(admin: std::net::SocketAddr, args: &[&str]) -> Value {
    let mut full = vec!["-o", "json"];
    full.extend_from_slice(args);
    let text = stdout(&run(admin, &full).await);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// CSV rows as maps from the header's names.
async fn csv_of(admin: std::net::SocketAddr, args: &[&str]) -> Vec<std::collections::HashMap<String, String>> {
    let mut full = vec!["-o", "csv"];
    full.extend_from_slice(args);
    let text = stdout(&run(admin, &full).await);
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let head: Vec<String> = lines.next().expect("a header line").split(',').map(String::from).collect();
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), head.len(), "one field per column: {line}");
            head.iter().cloned().zip(fields.into_iter().map(String::from)).collect()
        })
        .collect()
}

/// `value`'s row of a `usage --by` answer.
fn row<'a>(rows: &'a Value, by: &str, value: &str) -> &'a Value {
    rows.as_array().unwrap().iter().find(|r| r[by] == value).unwrap_or_else(|| panic!("no {by} {value}: {rows}"))
}

async fn setup(node: &Node, mock: &MockHandle, upstream: &Upstream, dead: u16) -> String {
    let admin = node.admin_addr;
    let target = format!("127.0.0.1:{}", upstream.addr.port());
    let dead = format!("127.0.0.1:{dead}");
    let base_url = format!("{}/v1", mock.url());
    for args in [
        vec!["service", "create", "orders", "--target", &target],
        vec!["service", "create", "gone", "--target", &dead],
        vec!["route", "create", "orders", "--service", "orders", "--path", "/orders"],
        vec!["route", "create", "broken", "--service", "gone", "--path", "/broken", "--auth", "none"],
        vec!["provider", "create", "openai", "--kind", "openai", "--base-url", &base_url, "--key", "main=sk-test-0001"],
        vec!["alias", "create", "fast", "--target", "openai/gpt-4o-mini"],
        vec!["route", "create", "llm", "--ai", "--path", "/v1"],
        vec!["consumer", "create", "acme"],
    ] {
        stdout(&run(admin, &args).await);
    }
    let key = json_of(admin, &["key", "create", "--consumer", "acme"]).await;
    key["plaintext"].as_str().unwrap().to_string()
}

async fn call(node: &Node, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, String) {
    let mut request = http::Request::builder().method(method).uri(format!("http://{}{path}", node.proxy_addr));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let body = body.map_or_else(String::new, |b| b.to_string());
    let reply = send(&http_client(), request.body(full(body)).unwrap()).await;
    (reply.status, String::from_utf8_lossy(&reply.body).to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_counters_and_records_match_the_requests_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.usage.flush_interval_ms = 100;
    let node = Node::start(config).await.expect("node starts");
    let mock = MockOpenAi::spawn(LlmMockConfig { tokens: 4, ..Default::default() }).await.unwrap();
    let upstream = Upstream::start("ledger").await;
    let key = setup(&node, &mock, &upstream, dead_port().await).await;
    let admin = node.admin_addr;

    // --- 1. 15 requests: 5 answered and 2 refused REST calls, 3 failed
    // ones, 3 chat completions (one streamed), one AI call refused before
    // the gateway and one the gateway refused (a token limit).
    for _ in 0..5 {
        assert_eq!(call(&node, "GET", "/orders/1", Some(&key), None).await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(call(&node, "GET", "/orders/1", None, None).await.0, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..3 {
        assert!(call(&node, "GET", "/broken", None, None).await.0.is_server_error());
    }
    let chat = |stream| json!({"model": "fast", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    for stream in [false, false, true] {
        let (status, body) = call(&node, "POST", "/v1/chat/completions", Some(&key), Some(chat(stream))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(call(&node, "POST", "/v1/chat/completions", None, Some(chat(false))).await.0, StatusCode::UNAUTHORIZED);
    let limit = ["limit", "create", "tokens", "--tokens", "100", "--per", "minute", "--scope", "key", "--route", "llm"];
    stdout(&run(admin, &limit).await);
    // More than the limit's whole amount: refused at once, as a bad request.
    let greedy = json!({"model": "fast", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]});
    eventually("the token limit refuses", async || {
        call(&node, "POST", "/v1/chat/completions", Some(&key), Some(greedy.clone())).await.0 == StatusCode::BAD_REQUEST
    })
    .await;

    // --- 2. The cluster's counters hold every one once flushed.
    eventually("the counters hold all 15 requests", async || {
        let rows = json_of(admin, &["usage"]).await;
        rows.as_array().unwrap().first().is_some_and(|r| r["requests"] == 15)
    })
    .await;
    let all = json_of(admin, &["usage"]).await;
    assert_eq!(all.as_array().unwrap().len(), 1, "one day: {all}");
    // The gateway's refusal counts as an error, once (its record is the AI
    // backend's; the `account` phase adds none).
    assert_eq!((all[0]["errors"].as_u64(), all[0]["output_tokens"].as_u64()), (Some(4), Some(12)), "{all}");
    let routes = json_of(admin, &["usage", "--by", "route"]).await;
    for (route, requests) in [("orders", 7), ("broken", 3), ("llm", 5)] {
        assert_eq!(row(&routes, "route", route)["requests"], requests, "{routes}");
    }
    let models = json_of(admin, &["usage", "--by", "model", "--period", "hour", "--since", "2h"]).await;
    let mini = row(&models, "model", "openai/gpt-4o-mini");
    assert_eq!((mini["requests"].as_u64(), mini["output_tokens"].as_u64()), (Some(3), Some(12)));
    assert!(mini["cost_picodollars"].as_u64().unwrap() > 0, "priced from the catalog: {mini}");
    assert_eq!(models.as_array().unwrap().len(), 1, "a model no provider served is not a counter: {models}");
    let services = json_of(admin, &["usage", "--by", "service"]).await;
    assert_eq!(row(&services, "service", "orders")["requests"], 7, "refused calls still name the service");

    // CSV: ids, not names, and the same numbers.
    let consumers = csv_of(admin, &["usage", "--by", "consumer"]).await;
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    assert!(!consumers[0]["CONSUMER"].is_empty() && consumers[0]["CONSUMER"] != "acme", "CSV keeps ids");
    assert_eq!(consumers[0]["REQUESTS"], "9", "5 REST calls and 4 chats with acme's key");
    let table = stdout(&run(admin, &["usage", "--by", "consumer"]).await);
    assert!(table.contains("CONSUMER") && table.contains("acme"), "tables show names: {table}");

    // --- 3. Per-request records, from every member (one here).
    let records = json_of(admin, &["usage", "records", "--since", "1h", "--limit", "100"]).await;
    assert_eq!(records["records"].as_array().unwrap().len(), 15, "{records}");
    assert_eq!(records["members"][0]["answered"], true);
    let failed = json_of(admin, &["usage", "records", "--status", "502"]).await;
    let failed_count = failed["records"].as_array().unwrap().len();
    let unavailable = json_of(admin, &["usage", "records", "--status", "503"]).await;
    assert_eq!(failed_count + unavailable["records"].as_array().unwrap().len(), 3);
    let refused = csv_of(admin, &["usage", "records", "--route", "orders", "--status", "401"]).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|r| r["kind"] == "rest" && r["api_key_id"].is_empty()));
    let acme = json_of(admin, &["usage", "records", "--consumer", "acme", "--model", "fast"]).await;
    assert_eq!(acme["records"].as_array().unwrap().len(), 4, "{acme}");
    let limited = json_of(admin, &["usage", "records", "--limit", "4"]).await;
    assert_eq!((limited["records"].as_array().unwrap().len(), &limited["truncated"]), (4, &json!(true)));

    // --- 4. The node's own journal, by kind (the per-node report).
    let kinds = json_of(admin, &["usage", "--node", "1", "--by", "kind"]).await;
    assert_eq!(
        (row(&kinds, "kind", "rest")["requests"].as_u64(), row(&kinds, "kind", "ai")["requests"].as_u64()),
        (Some(10), Some(5))
    );
    let bad = run(admin, &["usage", "--by", "key,model"]).await;
    assert_eq!(bad.status.code(), Some(2), "several dimensions only with --node");
    let missing = run(admin, &["usage", "--node", "9"]).await;
    assert_eq!(missing.status.code(), Some(3), "{}", String::from_utf8_lossy(&missing.stderr));
    node.shutdown().await;
}
