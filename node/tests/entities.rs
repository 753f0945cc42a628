//! The generic entity surface: `tollgate ctl get|list|create|update|delete
//! <kind>` (the real binary) and the `PutEntity`, `GetEntity`,
//! `ListEntities` and `DeleteEntity` RPCs behind it, against a running node.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;
use tollgate_proto::admin::v1::{
    DeleteEntityRequest, GetEntityRequest, ListConsumersResponse, ListEntitiesRequest, ListRequest, PutEntityRequest,
};
use tollgate_proto::config::v1::Consumer;
use tonic::Code;

/// Runs `tollgate ctl <args>` with `stdin` on its standard input.
fn ctl_with_stdin(admin: SocketAddr, token: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("ctl")
        .args(["--admin", &admin.to_string(), "--token", token])
        .args(args)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate binary runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

async fn ctl(admin: SocketAddr, args: &[&str]) -> Output {
    ctl_in(admin, args, "").await
}

async fn ctl_in(admin: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_with_stdin(admin, TOKEN, &args, &stdin)
    })
    .await
    .unwrap()
}

fn ok_json(output: &Output) -> Value {
    assert!(output.status.success(), "ctl failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_and_prices_round_trip_through_the_generic_commands() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let admin = node.admin_addr;

    // --- 1. create from a file and from stdin, under any spelling of the kind
    let file = dir.path().join("acme.json");
    std::fs::write(&file, r#"{"name": "acme", "description": "Acme Corp", "meta": {"id": "ignored"}}"#).unwrap();
    let acme = ok_json(&ctl(admin, &["-o", "json", "create", "consumer", "-f", file.to_str().unwrap()]).await);
    assert_eq!((acme["name"].as_str(), acme["description"].as_str()), (Some("acme"), Some("Acme Corp")));
    let acme_id = acme["meta"]["id"].as_str().unwrap().to_string();
    assert_eq!(acme_id.len(), 16, "a fresh id, as the typed create gives: {acme_id}");
    assert!(acme["meta"]["revision"].as_u64().unwrap() > 0);

    // Normalised as the typed RPC normalises it: target hosts are case-insensitive.
    let service = r#"{"name": "api", "targets": [{"host": "API.Example.Test", "port": 8080, "weight": 1}]}"#;
    let api = ok_json(&ctl_in(admin, &["-o", "json", "create", "service", "-f", "-"], service).await);
    assert_eq!(api["targets"][0]["host"], "api.example.test");

    let price = r#"{"name": "openai/gpt-x", "mode": "chat", "inputMicrosPerMtok": 2500000,
                    "output_micros_per_mtok": "10000000"}"#;
    let created = ok_json(&ctl_in(admin, &["-o", "json", "create", "model-price", "-f", "-"], price).await);
    assert_eq!(created["name"], "openai/gpt-x");
    assert_eq!(created["input_micros_per_mtok"], 2_500_000);
    assert_eq!(created["output_micros_per_mtok"], 10_000_000);
    let again = ctl_in(admin, &["create", "model_price", "-f", "-"], price).await;
    assert_eq!(again.status.code(), Some(4), "a create does not replace: {}", stderr(&again));
    assert!(stderr(&again).contains("tollgate ctl update model-price openai/gpt-x"), "{}", stderr(&again));

    // The typed API sees what the generic one wrote.
    let mut client = admin_client(admin, TOKEN).await;
    let ListConsumersResponse { consumers } = client.list_consumers(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(consumers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["acme"]);

    // --- 2. get by name and by id, list
    let by_name = ok_json(&ctl(admin, &["-o", "json", "get", "consumer", "acme"]).await);
    assert_eq!(by_name, acme);
    assert_eq!(ok_json(&ctl(admin, &["-o", "json", "get", "consumer", &acme_id]).await), acme);
    ok_json(&ctl_in(admin, &["-o", "json", "create", "consumer", "-f", "-"], r#"{"name": "beta"}"#).await);
    let list = ok_json(&ctl(admin, &["-o", "json", "list", "consumer"]).await);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "beta"], "sorted by name");
    let prices = ok_json(&ctl(admin, &["-o", "json", "--stale", "list", "model price"]).await);
    assert_eq!(prices.as_array().unwrap().len(), 1);
    assert_eq!(prices[0]["mode"], "chat");

    // Tables for people: a field/value listing, and one row per entity.
    let table = String::from_utf8(ctl(admin, &["get", "consumer", "acme"]).await.stdout).unwrap();
    assert!(table.starts_with("FIELD") && table.contains("Acme Corp"), "{table}");
    let table = String::from_utf8(ctl(admin, &["list", "consumer"]).await.stdout).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    // One column per scalar field of the message.
    assert_eq!(header, ["ID", "NAME", "DESCRIPTION", "TEAM_ID"], "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    // --- 3. update: the file's top-level fields replace, the rest stays
    let patch = r#"{"description": "Acme Corporation"}"#;
    let updated = ok_json(&ctl_in(admin, &["-o", "json", "update", "consumer", "acme", "-f", "-"], patch).await);
    assert_eq!(updated["description"], "Acme Corporation");
    assert_eq!(updated["name"], "acme");
    assert_eq!(updated["meta"]["id"], acme_id.as_str(), "an update keeps the id");
    assert!(updated["meta"]["revision"].as_u64() > acme["meta"]["revision"].as_u64());
    let renamed = ok_json(
        &ctl_in(admin, &["-o", "json", "update", "consumer", &acme_id, "-f", "-"], r#"{"name": "acme-corp"}"#).await,
    );
    assert_eq!(
        (renamed["name"].as_str(), renamed["description"].as_str()),
        (Some("acme-corp"), Some("Acme Corporation"))
    );
    let repriced = ok_json(
        &ctl_in(admin, &["-o", "json", "update", "model-price", "openai/gpt-x", "-f", "-"], r#"{"mode": "embedding"}"#)
            .await,
    );
    assert_eq!(
        (repriced["mode"].as_str(), repriced["input_micros_per_mtok"].as_u64()),
        (Some("embedding"), Some(2_500_000))
    );
    assert_eq!(repriced["meta"]["id"], created["meta"]["id"], "an upsert by name keeps the id");
    let bad = ctl_in(admin, &["update", "consumer", "acme-corp", "-f", "-"], r#"{"nmae": "x"}"#).await;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("nmae") && stderr(&bad).contains("tollgate.config.v1.Consumer"), "{}", stderr(&bad));

    // --- 4. delete, then it is gone
    let deleted = ok_json(&ctl(admin, &["-o", "json", "delete", "model-price", "openai/gpt-x"]).await);
    assert!(deleted["revision"].as_u64().unwrap() > 0);
    let gone = ctl(admin, &["get", "model-price", "openai/gpt-x"]).await;
    assert_eq!(gone.status.code(), Some(3), "not found: {}", stderr(&gone));
    assert!(stderr(&gone).contains("tollgate ctl list model-price"), "{}", stderr(&gone));
    let error = client
        .get_entity(GetEntityRequest { kind: "model price".into(), id_or_name: "openai/gpt-x".into(), stale: false })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(ctl(admin, &["delete", "consumer", "ghost"]).await.status.code(), Some(3));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kinds_with_secrets_are_refused_and_named_by_their_typed_command() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let admin = node.admin_addr;

    let route =
        r#"{"name": "sneaky", "paths": [{"kind": "PATH_MATCH_PREFIX", "path": "/x"}], "auth": "AUTH_MODE_NONE"}"#;
    let refused = ctl_in(admin, &["create", "route", "-f", "-"], route).await;
    assert_eq!(refused.status.code(), Some(5), "failed precondition: {}", stderr(&refused));
    assert!(stderr(&refused).contains("tollgate ctl route"), "{}", stderr(&refused));
    for kind in ["route", "provider", "api-key", "join-token"] {
        let listed = ctl(admin, &["list", kind]).await;
        assert_eq!(listed.status.code(), Some(5), "{kind}: reads are refused too: {}", stderr(&listed));
    }
    let mut client = admin_client(admin, TOKEN).await;
    let error = client
        .put_entity(PutEntityRequest { kind: "provider".into(), entity: vec![], create: true, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("tollgate ctl provider"), "{}", error.message());
    assert!(client.list_routes(ListRequest::default()).await.unwrap().into_inner().routes.is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kind_or_undecodable_entity_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let admin = node.admin_addr;

    let unknown = ctl(admin, &["list", "gizmo"]).await;
    assert_eq!(unknown.status.code(), Some(2), "a usage error: {}", stderr(&unknown));
    for kind in ["\"gizmo\"", "consumer", "service", "model-alias", "model-price", "route"] {
        assert!(stderr(&unknown).contains(kind), "{kind} missing: {}", stderr(&unknown));
    }

    let mut client = admin_client(admin, TOKEN).await;
    let error = client.list_entities(ListEntitiesRequest { kind: "gizmo".into(), stale: false }).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("consumer") && error.message().contains("model-price"), "{}", error.message());

    let error = client
        .put_entity(PutEntityRequest {
            kind: "consumer".into(),
            entity: vec![0x12, 0x40, b'x'],
            create: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("tollgate.config.v1.Consumer"), "{}", error.message());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generic_rpcs_require_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let consumer = prost::Message::encode_to_vec(&Consumer { name: "sneaky".into(), ..Default::default() });

    for token in ["", "wrong-token-wrong-token"] {
        let mut anonymous = admin_client(node.admin_addr, token).await;
        let codes = [
            anonymous
                .put_entity(PutEntityRequest {
                    kind: "consumer".into(),
                    entity: consumer.clone(),
                    create: true,
                    ..Default::default()
                })
                .await
                .map(drop),
            anonymous
                .get_entity(GetEntityRequest { kind: "consumer".into(), id_or_name: "sneaky".into(), stale: true })
                .await
                .map(drop),
            anonymous.list_entities(ListEntitiesRequest { kind: "consumer".into(), stale: true }).await.map(drop),
            anonymous
                .delete_entity(DeleteEntityRequest { kind: "consumer".into(), id_or_name: "sneaky".into() })
                .await
                .map(drop),
        ]
        .map(|r| r.unwrap_err().code());
        assert_eq!(codes, [Code::Unauthenticated; 4], "token {token:?}");
    }
    let wrong = ctl_with_stdin(node.admin_addr, "wrong-token-wrong-token", &["list", "consumer"], "");
    assert_eq!(wrong.status.code(), Some(6), "{}", stderr(&wrong));

    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let listed = admin.list_entities(ListEntitiesRequest { kind: "consumer".into(), stale: false }).await.unwrap();
    assert!(listed.into_inner().entities.is_empty(), "nothing was written");
    node.shutdown().await;
}
