//! `tollgate ctl` as a user runs it: the real binary against a running node.

mod common;

use std::process::{Command, Output};

use common::*;
use http::StatusCode;
use serde_json::Value;

fn ctl(admin: std::net::SocketAddr, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("ctl")
        .args(["--admin", &admin.to_string(), "--token", token])
        .args(args)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
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
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("Is `tollgate` running?"));
    node.shutdown().await;
}
