//! The declarative configuration through the real `tollgate ctl`: export →
//! apply on an empty cluster → export is the same file, applying it twice
//! changes nothing, diff and prune, all or nothing, secrets only as
//! references, and the shipped JSON Schema.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use tollgate_proto::admin::v1::{
    ApplyConfigRequest, GetNodeStatusRequest, governance_service_client::GovernanceServiceClient,
};
use tonic::transport::Channel;

const SECRET: &str = "sk-test-very-secret-value-0123456789";

fn ctl(admin: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.arg("ctl").args(["--admin", &admin.to_string(), "--token", TOKEN]).args(args);
    command.env_remove("TOLLGATE_ADMIN_TOKEN").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("tollgate binary runs")
}

async fn run(admin: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ctl(admin, &args, &env)
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "ctl failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A hand-written configuration: references by name, a secret by reference.
fn handwritten(upstream: SocketAddr) -> String {
    format!(
        r#"
version: 1
teams:
  - name: payments
    description: Payments team
services:
  - name: orders
    team_id: payments
    subscription: SUBSCRIPTION_MODE_APPROVAL
    versioning: {{header: api-version, default_version: v1}}
    targets: [{{host: 127.0.0.1, port: {port}, weight: 1}}]
api_versions:
  - service_id: orders
    version: v1
    state: VERSION_STATE_PUBLISHED
    openapi: "openapi: 3.0.3\ninfo: {{title: Orders, version: '1'}}\npaths: {{}}\n"
  - service_id: orders
    version: v2
    state: VERSION_STATE_DRAFT
consumers:
  - name: shop
    team_id: payments
providers:
  - name: openai
    kind: PROVIDER_KIND_OPENAI
    base_url: http://127.0.0.1:9/v1
    credentials:
      - id: main
        secret: env:TG_TEST_OPENAI_KEY
model_aliases:
  - name: fast
    targets: [{{provider_id: openai, model: gpt-4o-mini}}]
routes:
  - name: orders
    team_id: payments
    paths: [{{kind: PATH_MATCH_PREFIX, path: /orders}}]
    auth: AUTH_MODE_API_KEY
    service: {{service_id: orders}}
limits:
  - name: orders-per-minute
    team_id: payments
    unit: LIMIT_UNIT_REQUESTS
    amount: 100
    window: LIMIT_WINDOW_MINUTE
    scope: LIMIT_SCOPE_API_KEY
    route_ids: [orders]
publish_policies:
  - name: authenticated
    require_auth: true
    require_openapi: true
subscriptions:
  - service_id: orders
    consumer_id: shop
    state: SUBSCRIPTION_STATE_APPROVED
"#,
        port = upstream.port()
    )
}

async fn applied_index(admin: SocketAddr) -> u64 {
    let mut client = admin_client(admin, TOKEN).await;
    client.get_node_status(GetNodeStatusRequest {}).await.unwrap().into_inner().applied_index
}

#[tokio::test]
async fn export_apply_export_is_the_same_file_and_a_second_apply_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("orders").await;
    let a = start_node(&dir.path().join("a")).await;
    let env = [("TG_TEST_OPENAI_KEY", SECRET)];

    // A hand-written file: names resolve, the secret is read from the
    // environment by ctl, and everything applies as one command.
    let file = write(dir.path(), "hand.yaml", &handwritten(upstream.addr));
    let before = applied_index(a.admin_addr).await;
    let applied = stdout(&run(a.admin_addr, &["apply", "-f", &file], &env).await);
    assert!(applied.contains("+ service orders") && applied.contains("+ subscription"), "{applied}");
    // The node may commit commands of its own meanwhile (start-up, usage),
    // so "one command" is read from the entities: all carry one revision.
    let mut admin = admin_client(a.admin_addr, TOKEN).await;
    let by_name = |id: &str| tollgate_proto::admin::v1::GetRequest { id_or_name: id.into(), ..Default::default() };
    let revisions = [
        admin.get_service(by_name("orders")).await.unwrap().into_inner().meta.unwrap().revision,
        admin.get_route(by_name("orders")).await.unwrap().into_inner().meta.unwrap().revision,
        admin.get_consumer(by_name("shop")).await.unwrap().into_inner().meta.unwrap().revision,
    ];
    assert!(
        revisions[0] > before && revisions.iter().all(|r| *r == revisions[0]),
        "one Raft command for the whole file: {revisions:?}"
    );

    // The export: ids, no secret, the reference instead.
    let exported = stdout(&run(a.admin_addr, &["export"], &[]).await);
    assert!(!exported.contains(SECRET), "{exported}");
    assert!(exported.contains("secret: env:TG_TEST_OPENAI_KEY"), "{exported}");
    assert!(!exported.contains("sealed"), "{exported}");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/gateway.schema.json")).unwrap(),
    )
    .unwrap();
    let instance: serde_json::Value = serde_yaml_ng::from_str(&exported).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(&instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "the export does not match docs/gateway.schema.json: {errors:#?}");

    // An empty cluster takes the file and exports it back, byte for byte.
    let b = start_node(&dir.path().join("b")).await;
    let export_file = write(dir.path(), "exported.yaml", &exported);
    stdout(&run(b.admin_addr, &["apply", "-f", &export_file], &env).await);
    let again = stdout(&run(b.admin_addr, &["export"], &[]).await);
    assert_eq!(again, exported);

    // The same file again: nothing to do, nothing proposed (revision 0; the
    // node's own commands may move the applied index meanwhile).
    let output = run(b.admin_addr, &["apply", "-f", &export_file, "-o", "json"], &env).await;
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(answer["changes"], serde_json::json!([]));
    assert_eq!(answer["revision"], 0);
    assert_eq!(stdout(&run(b.admin_addr, &["export"], &[]).await), exported, "the second apply changed nothing");
    // Nor does the hand-written form of the same configuration change it.
    let output = run(a.admin_addr, &["diff", "-f", &file], &[]).await;
    assert_eq!(stdout(&output).trim(), "no changes");

    // The keys work: the data plane serves what the file said.
    let mut admin = admin_client(b.admin_addr, TOKEN).await;
    let key = admin
        .create_api_key(tollgate_proto::admin::v1::CreateApiKeyRequest {
            consumer: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    let reply = get(b.proxy_addr, "/orders/x", &[("authorization", &format!("Bearer {key}"))]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn diff_shows_changes_without_making_them_and_prune_deletes_what_the_file_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("orders").await;
    let node = start_node(dir.path()).await;
    let env = [("TG_TEST_OPENAI_KEY", SECRET)];
    let file = write(dir.path(), "hand.yaml", &handwritten(upstream.addr));
    stdout(&run(node.admin_addr, &["apply", "-f", &file], &env).await);
    let exported = stdout(&run(node.admin_addr, &["export"], &[]).await);

    let edited = handwritten(upstream.addr)
        .replace("description: Payments team", "description: The payments team")
        .replace("  - name: orders-per-minute", "  - name: orders-per-second")
        .replace("LIMIT_WINDOW_MINUTE", "LIMIT_WINDOW_SECOND");
    let edited_file = write(dir.path(), "edited.yaml", &edited);
    let diff = stdout(&run(node.admin_addr, &["diff", "-f", &edited_file, "--prune"], &[]).await);
    assert!(diff.contains("~ team payments (description)"), "{diff}");
    assert!(diff.contains("+ limit orders-per-second"), "{diff}");
    assert!(diff.contains("- limit orders-per-minute"), "{diff}");
    assert!(diff.contains("would be made"), "{diff}");
    assert_eq!(stdout(&run(node.admin_addr, &["export"], &[]).await), exported, "diff changes nothing");

    // Without --prune the old limit stays; with it, it goes.
    stdout(&run(node.admin_addr, &["apply", "-f", &edited_file], &env).await);
    let after = stdout(&run(node.admin_addr, &["export"], &[]).await);
    assert!(after.contains("orders-per-minute") && after.contains("orders-per-second"), "{after}");
    stdout(&run(node.admin_addr, &["apply", "-f", &edited_file, "--prune"], &env).await);
    let pruned = stdout(&run(node.admin_addr, &["export"], &[]).await);
    assert!(!pruned.contains("orders-per-minute") && pruned.contains("orders-per-second"), "{pruned}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_file_applies_all_or_nothing_and_never_takes_a_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let empty = stdout(&run(node.admin_addr, &["export"], &[]).await);

    // The consumer is fine; the route names a service that does not exist.
    let broken = "consumers:\n  - name: shop\nroutes:\n  - name: r\n    auth: AUTH_MODE_API_KEY\n    paths: [{kind: PATH_MATCH_PREFIX, path: /r}]\n    service: {service_id: nowhere}\n";
    let file = write(dir.path(), "broken.yaml", broken);
    let output = run(node.admin_addr, &["apply", "-f", &file], &[]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nowhere") && stderr(&output).contains("route r"), "{}", stderr(&output));
    assert_eq!(stdout(&run(node.admin_addr, &["export"], &[]).await), empty, "the consumer was not created either");

    // A value where a reference belongs is refused, and not repeated back.
    let literal = format!(
        "providers:\n  - name: openai\n    kind: PROVIDER_KIND_OPENAI\n    base_url: http://127.0.0.1:9/v1\n    credentials: [{{id: main, secret: {SECRET}}}]\n"
    );
    let file = write(dir.path(), "literal.yaml", &literal);
    let output = run(node.admin_addr, &["apply", "-f", &file], &[]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("references"), "{}", stderr(&output));
    assert!(!stderr(&output).contains(SECRET));

    // A reference whose variable is unset is the operator's to fix.
    let unset = literal.replace(SECRET, "env:TG_TEST_UNSET_VARIABLE");
    let file = write(dir.path(), "unset.yaml", &unset);
    let output = run(node.admin_addr, &["apply", "-f", &file], &[]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("TG_TEST_UNSET_VARIABLE"));

    // Unknown sections and fields are errors, not silently dropped.
    for (text, expect) in [("servicez: []\n", "unknown section"), ("teams:\n  - name: t\n    colour: red\n", "colour")]
    {
        let file = write(dir.path(), "unknown.yaml", text);
        let output = run(node.admin_addr, &["apply", "-f", &file], &[]).await;
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expect), "{}", stderr(&output));
    }

    // The RPC refuses a reference the client did not resolve.
    let channel = Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap();
    let mut gov = GovernanceServiceClient::with_interceptor(channel, Bearer(TOKEN.to_string()));
    let request = ApplyConfigRequest { document: unset, ..Default::default() };
    let status = gov.apply_config(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn diff_checks_what_apply_would_and_a_file_from_another_cluster_matches_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("orders").await;
    let a = start_node(&dir.path().join("a")).await;
    let b = start_node(&dir.path().join("b")).await;
    let env = [("TG_TEST_OPENAI_KEY", SECRET)];
    let file = write(dir.path(), "hand.yaml", &handwritten(upstream.addr));

    // A dry run needs no secret values, and checks everything apply does.
    let diff = stdout(&run(b.admin_addr, &["diff", "-f", &file], &[]).await);
    assert!(diff.contains("+ provider openai") && diff.contains("would be made"), "{diff}");
    let broken = handwritten(upstream.addr).replace("auth: AUTH_MODE_API_KEY", "auth: AUTH_MODE_NONE");
    let broken_file = write(dir.path(), "broken.yaml", &broken);
    let output = run(b.admin_addr, &["diff", "-f", &broken_file], &[]).await;
    assert!(!output.status.success(), "the publish policy refuses an open route");
    assert!(stderr(&output).contains("authentication required"), "{}", stderr(&output));
    assert!(stderr(&output).contains("env:TG_TEST_OPENAI_KEY"), "ctl says which references it reads");

    // Both clusters take the hand-written file: same names, different ids.
    stdout(&run(a.admin_addr, &["apply", "-f", &file], &env).await);
    stdout(&run(b.admin_addr, &["apply", "-f", &file], &env).await);
    let exported_a = stdout(&run(a.admin_addr, &["export"], &[]).await);
    let exported_b = stdout(&run(b.admin_addr, &["export"], &[]).await);
    assert_ne!(exported_a, exported_b, "the ids differ");
    // A's export applied to B matches B's entities by name: nothing changes.
    let from_a = write(dir.path(), "from-a.yaml", &exported_a);
    let diff = stdout(&run(b.admin_addr, &["diff", "-f", &from_a, "--prune"], &[]).await);
    assert_eq!(diff.trim(), "no changes", "{diff}");
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn the_shipped_schema_is_what_the_binary_generates() {
    let output = ctl("127.0.0.1:1".parse().unwrap(), &["schema"], &[]);
    let generated = stdout(&output);
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/gateway.schema.json")).unwrap();
    assert_eq!(
        shipped, generated,
        "docs/gateway.schema.json is stale: run `cargo run -p tollgate-node -- ctl schema > docs/gateway.schema.json`"
    );
}
