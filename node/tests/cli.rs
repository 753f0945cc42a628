//! `tollgate ctl` as a user runs it: the real binary against a running node.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

fn ctl(admin: std::net::SocketAddr, token: &str, args: &[&str]) -> Output {
    ctl_with_env(admin, token, args, &[])
}

/// `ctl_with_env` off the runtime's threads (the node under test runs on them).
async fn ctl_with_env_async(
    admin: std::net::SocketAddr,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_with_env(admin, TOKEN, &args, &env)
    })
    .await
    .unwrap()
}

/// `ctl` with extra environment variables, for the child only.
fn ctl_with_env(admin: std::net::SocketAddr, token: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("ctl")
        .args(["--admin", &admin.to_string(), "--token", token])
        .args(args)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("tollgate binary runs")
}

async fn ctl_async(admin: std::net::SocketAddr, token: &'static str, args: Vec<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || ctl(admin, token, &args)).await.unwrap()
}

fn ok_json(output: &Output) -> Value {
    assert!(output.status.success(), "ctl failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn create_list_use_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("cli").await;
    let admin = node.admin_addr;
    let target: &'static str = Box::leak(format!("127.0.0.1:{}", upstream.addr.port()).into_boxed_str());

    let svc =
        ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "service", "create", "echo", "--target", target]).await);
    assert_eq!(svc["name"], "echo");
    assert_eq!(svc["targets"][0]["port"], upstream.addr.port());

    let route = ok_json(
        &ctl_async(
            admin,
            TOKEN,
            vec!["-o", "json", "route", "create", "echo", "--service", "echo", "--path", "/echo", "--strip-prefix"],
        )
        .await,
    );
    assert_eq!(route["auth"], "api-key", "routes require a key unless told otherwise");
    assert_eq!(route["service_id"], svc["meta"]["id"]);
    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "consumer", "create", "acme"]).await);
    let key = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "key", "create", "--consumer", "acme"]).await);
    let plaintext = key["plaintext"].as_str().unwrap().to_string();

    let services = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "service", "list"]).await);
    assert_eq!(services.as_array().unwrap().len(), 1);
    let keys = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "key", "list", "--consumer", "acme"]).await);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert!(keys[0].get("plaintext").is_none(), "a listed key never shows its plaintext");

    // The table view is for people: a header and one row.
    let table = ctl_async(admin, TOKEN, vec!["route", "list"]).await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.lines().next().unwrap().starts_with("ID"), "{text}");
    assert!(text.contains("prefix:/echo"), "{text}");

    let reply = get(node.proxy_addr, "/echo/hello", &[("authorization", &format!("Bearer {plaintext}"))]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["path"], "/hello");

    let key_id: &'static str = Box::leak(key["meta"]["id"].as_str().unwrap().to_string().into_boxed_str());
    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "key", "disable", key_id]).await);
    let reply = get(node.proxy_addr, "/echo/hello", &[("authorization", &format!("Bearer {plaintext}"))]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let status = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "status"]).await);
    assert_eq!(status["role"], "leader");
    assert_eq!(status["applied_index"], status["data_plane_index"]);

    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "route", "delete", "echo"]).await);
    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "service", "delete", "echo"]).await);
    let services = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "service", "list"]).await);
    assert!(services.as_array().unwrap().is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_scripts_can_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let admin = node.admin_addr;
    let code = |o: Output| o.status.code().unwrap();

    assert_eq!(code(ctl_async(admin, TOKEN, vec!["service", "get", "ghost"]).await), 3, "not found");
    assert_eq!(code(ctl_async(admin, TOKEN, vec!["consumer", "create", "acme"]).await), 0);
    assert_eq!(code(ctl_async(admin, TOKEN, vec!["consumer", "create", "acme"]).await), 4, "already exists");
    assert_eq!(
        code(ctl_async(admin, TOKEN, vec!["service", "create", "x", "--target", "bad host:80"]).await),
        5,
        "invalid"
    );
    assert_eq!(code(ctl_async(admin, TOKEN, vec!["service", "create", "x", "--target", "no-port"]).await), 2, "usage");
    let wrong = ctl_async(admin, "not-the-token", vec!["service", "list"]).await;
    assert_eq!(wrong.status.code(), Some(6), "bad token");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("admin token"));

    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", dead_port().await).parse().unwrap();
    let unreachable = ctl_async(dead, TOKEN, vec!["service", "list"]).await;
    assert_eq!(unreachable.status.code(), Some(7), "unreachable");
    let text = String::from_utf8_lossy(&unreachable.stderr);
    assert!(text.starts_with(&format!("error: {dead}: ")) && text.contains("Is `tollgate` running there?"), "{text}");
    node.shutdown().await;
}

fn hs256_token(secret: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"sub": "someone", "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

/// A JWT secret on the command line is readable by every local user (`ps`)
/// and stays in shell history: `--jwt-secret` takes `file:PATH` and
/// `env:VAR` as provider keys do, and the route then checks tokens with the
/// secret read, never with the reference's text.
#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_secret_named_by_a_file_or_a_variable_is_read_not_taken_literally() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("jwt").await;
    let admin = node.admin_addr;
    let target = format!("127.0.0.1:{}", upstream.addr.port());
    let bearer = |secret: &str| format!("Bearer {}", hs256_token(secret));
    let status = |reply: Reply| reply.status;
    let strings = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    ok_json(
        &ctl_with_env_async(admin, strings(&["-o", "json", "service", "create", "s", "--target", &target]), vec![])
            .await,
    );

    let from_file = "a-shared-secret-kept-in-a-file-0123456789";
    let path = dir.path().join("jwt-secret");
    std::fs::write(&path, format!("{from_file}\n")).unwrap();
    let reference = format!("file:{}", path.display());
    let create =
        ["route", "create", "guarded", "--service", "s", "--path", "/g", "--auth", "jwt", "--jwt-alg", "HS256"];
    let args = strings(&[&["-o", "json"], &create[..], &["--jwt-secret", &reference]].concat());
    let created = ok_json(&ctl_with_env_async(admin, args, vec![]).await);
    assert!(!created.to_string().contains(from_file), "{created}");
    let call =
        async |authorization: String| status(get(node.proxy_addr, "/g", &[("authorization", &authorization)]).await);
    assert_eq!(call(bearer(from_file)).await, StatusCode::OK, "signed with the file's secret");
    assert_eq!(call(bearer(&reference)).await, StatusCode::UNAUTHORIZED, "signed with the reference's text");

    let from_env = "a-shared-secret-from-the-environment-987654";
    let variable = "TOLLGATE_TEST_JWT_SECRET";
    let update = ["-o", "json", "route", "update", "guarded", "--jwt-secret", "env:TOLLGATE_TEST_JWT_SECRET"];
    ok_json(&ctl_with_env_async(admin, strings(&update), vec![(variable, from_env)]).await);
    assert_eq!(call(bearer(from_env)).await, StatusCode::OK, "signed with the variable's secret");
    assert_eq!(call(bearer(from_file)).await, StatusCode::UNAUTHORIZED, "the file's secret was replaced");

    // A reference that does not resolve is a usage error and changes nothing.
    let unset = ctl_with_env_async(admin, strings(&update), vec![]).await;
    assert_eq!(unset.status.code(), Some(2), "{}", String::from_utf8_lossy(&unset.stderr));
    assert!(String::from_utf8_lossy(&unset.stderr).contains(variable), "{}", String::from_utf8_lossy(&unset.stderr));
    assert_eq!(call(bearer(from_env)).await, StatusCode::OK);
    node.shutdown().await;
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_gateway_set_up_and_usage_report_from_the_command_line() {
    use tollgate_loadtest::mock::llm::LlmMockConfig;
    use tollgate_loadtest::mock::openai::MockOpenAi;

    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mock = MockOpenAi::spawn(LlmMockConfig { tokens: 4, ..Default::default() }).await.unwrap();
    let admin = node.admin_addr;
    let base_url = leak(format!("{}/v1", mock.url()));
    let key_file = dir.path().join("openai.key");
    std::fs::write(&key_file, "sk-from-a-file-0001\n").unwrap();
    let key_spec = leak(format!("main*2=file:{}", key_file.display()));

    let provider = ok_json(
        &ctl_async(
            admin,
            TOKEN,
            vec![
                "-o",
                "json",
                "provider",
                "create",
                "openai",
                "--kind",
                "openai",
                "--base-url",
                base_url,
                "--key",
                key_spec,
            ],
        )
        .await,
    );
    assert_eq!(provider["credentials"][0]["id"], "main");
    assert_eq!(provider["credentials"][0]["weight"], 2);
    assert_eq!(provider["credentials"][0]["hint"], "…0001");
    let listed = ctl_async(admin, TOKEN, vec!["provider", "list"]).await;
    let table = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(table.contains("openai") && !table.contains("sk-from-a-file"), "secrets never print: {table}");

    let alias = ok_json(
        &ctl_async(admin, TOKEN, vec!["-o", "json", "alias", "create", "fast", "--target", "openai/gpt-4o-mini"]).await,
    );
    assert_eq!(alias["targets"][0]["provider"], "openai");
    assert_eq!(alias["targets"][0]["provider_id"], provider["id"]);
    let price = ok_json(
        &ctl_async(
            admin,
            TOKEN,
            vec![
                "-o",
                "json",
                "price",
                "set",
                "openai/gpt-4o-mini",
                "--input-per-mtok",
                "0.15",
                "--output-per-mtok",
                "0.6",
            ],
        )
        .await,
    );
    assert_eq!(price["input_per_mtok"], 0.15);
    let prices = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "price", "list", "--pricing", "openai"]).await);
    let prices = prices.as_array().unwrap();
    assert!(prices.len() > 20, "the built-in catalog is listed");
    let mini = prices.iter().find(|p| p["name"] == "openai/gpt-4o-mini").unwrap();
    assert!(mini["source"].as_str().unwrap().starts_with("override"), "{mini}");

    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "route", "create", "llm", "--ai", "--path", "/v1"]).await);
    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "consumer", "create", "team"]).await);
    let key = ok_json(
        &ctl_async(admin, TOKEN, vec!["-o", "json", "key", "create", "--consumer", "team", "--model", "fast"]).await,
    );
    assert_eq!(key["allowed_models"], serde_json::json!(["fast"]));
    let plaintext = key["plaintext"].as_str().unwrap().to_string();

    let body = serde_json::json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for _ in 0..2 {
        let request = http::Request::post(format!("http://{}/v1/chat/completions", node.proxy_addr))
            .header("authorization", format!("Bearer {plaintext}"))
            .body(full(body.clone()))
            .unwrap();
        assert_eq!(send(&http_client(), request).await.status, StatusCode::OK);
    }
    assert_eq!(mock.last_request().unwrap().credential.as_deref(), Some("sk-from-a-file-0001"));

    // This node's own journal (the cluster's counters are tested in ledger.rs).
    let usage = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "usage", "--node", "1", "--by", "model"]).await);
    let rows = usage.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{usage}");
    assert_eq!(rows[0]["model"], "openai/gpt-4o-mini");
    assert_eq!(rows[0]["requests"], 2);
    assert_eq!(rows[0]["output_tokens"], 8);
    let input = rows[0]["input_tokens"].as_u64().unwrap();
    assert_eq!(rows[0]["cost_picodollars"], input * 150_000 + 8 * 600_000);
    let table =
        String::from_utf8_lossy(&ctl_async(admin, TOKEN, vec!["usage", "--node", "1"]).await.stdout).to_string();
    assert!(
        table.contains("KEY") && table.contains("MODEL") && table.contains("DAY") && table.contains("COST_USD"),
        "{table}"
    );

    let in_use = ctl_async(admin, TOKEN, vec!["provider", "delete", "openai"]).await;
    assert_eq!(in_use.status.code(), Some(5), "a provider used by an alias cannot be deleted");
    let missing = ctl_async(admin, TOKEN, vec!["alias", "get", "nope"]).await;
    assert_eq!(missing.status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn route_get_names_every_auth_mode_and_shows_policies_but_no_secrets() {
    const JWT_SECRET: &str = "jwt-hmac-secret-0123456789";
    const HEADER_SECRET: &str = "header-secret-abcdef-9876";
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let admin = node.admin_addr;
    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "service", "create", "s", "--target", "127.0.0.1:1"]).await);
    let created = ctl_async(
        admin,
        TOKEN,
        vec![
            "-o",
            "json",
            "route",
            "create",
            "guarded",
            "--service",
            "s",
            "--path",
            "/g",
            "--strip-prefix",
            "--auth",
            "jwt",
            "--jwt-alg",
            "HS256",
            "--jwt-secret",
            JWT_SECRET,
            "--jwt-issuer",
            "https://idp.example.com",
            "--ip-allow",
            "10.0.0.0/8",
            "--ip-deny",
            "10.0.0.7",
            "--cors-origin",
            "https://app.example.com",
            "--rewrite-path",
            "/v2",
            "--cache-ttl-ms",
            "30000",
            "--route-request-timeout-ms",
            "5000",
        ],
    )
    .await;
    ok_json(&created);
    ok_json(
        &ctl_async(
            admin,
            TOKEN,
            vec![
                "-o",
                "json",
                "route",
                "create",
                "either",
                "--service",
                "s",
                "--path",
                "/e",
                "--auth",
                "api-key-or-jwt",
                "--jwt-alg",
                "HS256",
                "--jwt-secret",
                JWT_SECRET,
            ],
        )
        .await,
    );

    let route = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "route", "get", "guarded"]).await);
    assert_eq!(route["auth"], "jwt");
    assert_eq!(route["strip_prefix"], true);
    assert_eq!(route["rewrite_path"], "/v2");
    assert_eq!(route["jwt"]["issuer"], "https://idp.example.com");
    assert_eq!(route["jwt"]["algorithms"], serde_json::json!(["HS256"]));
    assert_eq!(route["ip_allow"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(route["ip_deny"], serde_json::json!(["10.0.0.7"]));
    assert_eq!(route["cors"]["allow_origins"], serde_json::json!(["https://app.example.com"]));
    assert_eq!(route["cache"]["ttl_ms"], 30000);
    assert_eq!(route["request_timeout_ms"], 5000);
    assert!(!route.to_string().contains(JWT_SECRET), "{route}");

    let table = String::from_utf8(ctl_async(admin, TOKEN, vec!["route", "get", "guarded"]).await.stdout).unwrap();
    for expected in [
        "jwt",
        "strip_prefix:",
        "rewrite_path:",
        "jwt.algorithms:",
        "jwt.issuer:",
        "https://idp.example.com",
        "ip_allow:",
        "10.0.0.0/8",
        "ip_deny:",
        "cors.allow_origins:",
        "cache.ttl_ms:",
        "request_timeout_ms:",
    ] {
        assert!(table.contains(expected), "{expected:?} missing from:\n{table}");
    }
    assert!(!table.contains(JWT_SECRET), "{table}");
    let list = String::from_utf8(ctl_async(admin, TOKEN, vec!["route", "list"]).await.stdout).unwrap();
    assert!(list.contains("api-key-or-jwt") && !list.contains("unspecified"), "{list}");

    // Provider header values are sealed: shown as a hint, never printed.
    let header = leak(format!("x-auth:{HEADER_SECRET}"));
    let provider = ok_json(
        &ctl_async(
            admin,
            TOKEN,
            vec![
                "-o",
                "json",
                "provider",
                "create",
                "local",
                "--kind",
                "openai-compatible",
                "--base-url",
                "http://127.0.0.1:1/v1",
                "--header",
                header,
            ],
        )
        .await,
    );
    assert_eq!(provider["headers"], serde_json::json!([{"name": "x-auth", "hint": "…9876"}]));
    let listed = String::from_utf8(ctl_async(admin, TOKEN, vec!["provider", "list"]).await.stdout).unwrap();
    assert!(listed.contains("x-auth:…9876") && !listed.contains(HEADER_SECRET), "{listed}");
    // An update that does not give --header keeps the sealed value.
    ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "provider", "update", "local", "--cooldown-ms", "5"]).await);
    let got = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "provider", "get", "local"]).await);
    assert_eq!(got["headers"][0]["hint"], "…9876");

    let refused = ctl_async(
        admin,
        TOKEN,
        vec!["provider", "create", "leaky", "--kind", "openai-compatible", "--base-url", "https://u:pw@h.example/v1"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(5), "invalid argument");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("put credentials in the provider's key or headers, not in the URL"), "{stderr}");
    node.shutdown().await;
}

#[test]
fn every_ctl_argument_has_help_and_defaults_and_global_flags_are_grouped() {
    use clap::Args;
    let command = tollgate_node::ctl::CtlArgs::augment_args(clap::Command::new("ctl"));
    let mut missing = Vec::new();
    let mut helps = std::collections::HashMap::new();
    fn walk(
        command: &clap::Command,
        path: &str,
        missing: &mut Vec<String>,
        helps: &mut std::collections::HashMap<String, String>,
    ) {
        for arg in command.get_arguments() {
            let name =
                format!("{path} {}", arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}")));
            match arg.get_long_help().or(arg.get_help()) {
                Some(help) => {
                    helps.insert(name, help.to_string());
                }
                None => missing.push(name),
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(format!("{path} {} (the command)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing, helps);
        }
    }
    walk(&command, "ctl", &mut missing, &mut helps);
    assert!(missing.is_empty(), "without help text: {missing:#?}");

    for flag in [
        "ctl service create --connect-timeout-ms",
        "ctl service create --request-timeout-ms",
        "ctl service create --retries",
        "ctl service create --retry-budget-percent",
        "ctl service create --health-interval-ms",
        "ctl route create --priority",
        "ctl route create --route-connect-timeout-ms",
        "ctl route create --route-request-timeout-ms",
        "ctl alias create --retries",
        "ctl alias create --backoff-ms",
        "ctl provider create --request-timeout-ms",
        "ctl provider create --cooldown-ms",
        "ctl --timeout",
    ] {
        let help = helps.get(flag).unwrap_or_else(|| panic!("no flag {flag}"));
        let shown = help.contains("[default: ") || command_default_shown(&command, flag);
        assert!(shown, "{flag} does not say its default: {help:?}");
    }
    for global in ["admin", "token", "data-dir", "output", "stale", "timeout"] {
        let arg = command.get_arguments().find(|a| a.get_long() == Some(global)).unwrap();
        assert_eq!(arg.get_help_heading(), Some("Global options"), "--{global}");
    }

    let help = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["ctl", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Global options:") && help.contains("Exit codes:"), "{help}");
    assert!(help.contains("--timeout <TIMEOUT>") && help.contains("[default: 15s]"), "{help}");
}

/// Whether clap prints a default for the flag itself (`default_value`).
fn command_default_shown(command: &clap::Command, flag: &str) -> bool {
    let long = flag.rsplit("--").next().unwrap();
    command.get_arguments().any(|a| a.get_long() == Some(long) && !a.get_default_values().is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn service_create_without_a_target_is_a_usage_error() {
    let dead: SocketAddr = format!("127.0.0.1:{}", dead_port().await).parse().unwrap();
    let output = ctl_async(dead, TOKEN, vec!["service", "create", "foo"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--target"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_is_a_quiet_exit_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let admin = node.admin_addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["ctl", "--admin", &admin, "--token", TOKEN, "-o", "json", "price", "list"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // As `| head` does once it has its lines: the reader goes away.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked") && stderr.is_empty(), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "ripgrep's convention: a closed pipe is a clean end");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_show_names_and_dates_where_people_want_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let admin = node.admin_addr;
    let svc = ok_json(
        &ctl_async(admin, TOKEN, vec!["-o", "json", "service", "create", "orders", "--target", "127.0.0.1:1"]).await,
    );
    let service_id = svc["meta"]["id"].as_str().unwrap().to_string();
    ok_json(
        &ctl_async(admin, TOKEN, vec!["-o", "json", "route", "create", "r", "--service", "orders", "--path", "/o"])
            .await,
    );
    let consumer = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "consumer", "create", "acme"]).await);
    let consumer_id = consumer["meta"]["id"].as_str().unwrap().to_string();
    ok_json(
        &ctl_async(admin, TOKEN, vec!["-o", "json", "key", "create", "--consumer", "acme", "--expires-in", "1d"]).await,
    );

    let routes = String::from_utf8(ctl_async(admin, TOKEN, vec!["route", "list"]).await.stdout).unwrap();
    assert!(routes.contains("orders") && !routes.contains(&service_id), "the service's name, not its id:\n{routes}");
    let keys = String::from_utf8(ctl_async(admin, TOKEN, vec!["key", "list"]).await.stdout).unwrap();
    assert!(keys.contains("acme") && !keys.contains(&consumer_id), "the consumer's name, not its id:\n{keys}");
    let year = keys.lines().nth(1).unwrap().split_whitespace().find(|w| w.ends_with('Z') && w.contains('T'));
    assert!(year.is_some_and(|d| d.len() == "2026-05-01T12:00:00Z".len()), "RFC 3339 dates:\n{keys}");
    assert!(!keys.contains("EXPIRES_AT_MS"), "{keys}");
    // Scripts keep the ids.
    let json = ok_json(&ctl_async(admin, TOKEN, vec!["-o", "json", "route", "list"]).await);
    assert_eq!(json[0]["service_id"], service_id.as_str());
    node.shutdown().await;
}

/// A stand-in admin API (h2c): `Answer` gives every call that gRPC status;
/// `Vanish` closes the connection as soon as a call arrives, as a node that
/// dies mid-request does.
enum Fake {
    Answer(u16, &'static str),
    Vanish,
}

async fn fake_admin(mode: Fake) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mode = Arc::new(mode);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let mode = mode.clone();
            tokio::spawn(async move {
                let arrived = Arc::new(tokio::sync::Notify::new());
                let signal = arrived.clone();
                let service = service_fn(move |_request| {
                    let (mode, signal) = (mode.clone(), signal.clone());
                    async move {
                        match &*mode {
                            Fake::Answer(code, message) => Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", code.to_string())
                                    .header("grpc-message", *message)
                                    .body(http_body_util::Empty::<Bytes>::new())
                                    .unwrap(),
                            ),
                            Fake::Vanish => {
                                signal.notify_one();
                                std::future::pending().await
                            }
                        }
                    }
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = arrived.notified() => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_drops_the_call_is_unreachable_and_named() {
    let addr = fake_admin(Fake::Vanish).await;
    let output = ctl_async(addr, TOKEN, vec!["service", "list"]).await;
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "exit 7, not 1: {text}");
    assert!(text.starts_with(&format!("error: {addr}: ")), "{text}");
    assert_ne!(text.trim(), "error: transport error");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_read_fails_does_not_suggest_stale() {
    const NO_QUORUM: &str = "no linearizable read point within 10 s: this node cannot reach a leader with a \
                             majority. Use --stale to read this node's possibly outdated state";
    let addr = fake_admin(Fake::Answer(14, NO_QUORUM)).await;

    let read = ctl_async(addr, TOKEN, vec!["service", "get", "orders"]).await;
    assert_eq!(read.status.code(), Some(7));
    let text = String::from_utf8_lossy(&read.stderr);
    assert!(text.contains("--stale"), "a read may be retried with --stale: {text}");

    for update in [
        vec!["service", "update", "orders", "--target", "10.0.0.1:80"],
        vec!["route", "update", "orders", "--priority", "2"],
        vec!["provider", "update", "orders", "--base-url", "http://127.0.0.1:1"],
        vec!["alias", "update", "orders", "--retries", "1"],
    ] {
        let write = ctl_async(addr, TOKEN, update).await;
        assert_eq!(write.status.code(), Some(7));
        let text = String::from_utf8_lossy(&write.stderr);
        assert!(!text.contains("--stale"), "--stale means nothing for a write: {text}");
        assert!(text.starts_with(&format!("error: {addr}: ")) && text.contains("majority"), "{text}");
    }
}

/// An HTTP server that is not the admin API (the proxy port, say): 404 for
/// everything, over HTTP/1.1 or h2c.
async fn plain_http() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .header("content-type", "text/plain")
                            .body(http_body_util::Full::new(Bytes::from_static(b"no route matched\n")))
                            .unwrap(),
                    )
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_against_a_plain_http_server_says_it_is_not_the_admin_api() {
    let addr = plain_http().await;
    let output = ctl_async(addr, TOKEN, vec!["status"]).await;
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "{text}");
    assert!(text.starts_with(&format!("error: {addr}: ")), "{text}");
    assert!(text.contains("does not look like a Tollgate admin API"), "{text}");
    assert!(!text.contains("grpc-status") && !text.contains("compression flag"), "{text}");
}
