//! The request path's phases end to end (DESIGN §2): which phases each
//! request went through, in order, as the access log records them. Shows
//! where `lifecycle` and `limit` run, and that `account` runs exactly once
//! for every request, refused, cached, REST or AI.

mod common;

use common::*;
use http::{Request, StatusCode};
use prost::Message;
use tollgate_node::Node;
use tollgate_proto::admin::v1::PutEntityRequest;
use tollgate_proto::config::v1::*;

fn open_route(name: &str, service: &str, path: &str) -> Route {
    Route {
        name: name.into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: path.into() }],
        auth: AuthMode::None as i32,
        backend: Some(route::Backend::Service(ServiceBackend { service_id: service.into() })),
        ..Default::default()
    }
}

const ALL: [&str; 8] = ["match", "lifecycle", "authenticate", "authorize", "limit", "cache", "backend", "account"];

#[tokio::test]
async fn every_request_goes_through_the_phases_in_order_and_is_accounted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let log_path = dir.path().join("access.log");
    config.proxy.access_log = log_path.display().to_string();
    let node = Node::start(config).await.unwrap();
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Upstream::start("u").await;
    let target = Target { host: "127.0.0.1".into(), port: upstream.addr.port().into(), weight: 1 };
    admin
        .create_service(Service { name: "svc".into(), targets: vec![target.clone()], ..Default::default() })
        .await
        .unwrap();
    let mut cached = open_route("cached", "svc", "/cached");
    cached.cache = Some(ResponseCache { enabled: true, ttl_ms: 600_000, ..Default::default() });
    cached.cors = Some(Cors { allow_origins: vec!["https://app.test".into()], ..Default::default() });
    admin.create_route(cached).await.unwrap();
    let mut keyed = open_route("keyed", "svc", "/keyed");
    keyed.auth = AuthMode::ApiKey as i32;
    admin.create_route(keyed).await.unwrap();
    let mut denied = open_route("denied", "svc", "/denied");
    denied.ip_deny = vec!["127.0.0.0/8".into()];
    admin.create_route(denied).await.unwrap();
    admin.create_route(ai_route()).await.unwrap();
    // A service whose only version is retired (lifecycle answers), and one
    // that needs a subscription nobody has (authorize refuses).
    let versioning = Versioning { default_version: "v1".into(), ..Default::default() };
    let retired = Service {
        name: "old".into(),
        targets: vec![target.clone()],
        versioning: Some(versioning),
        ..Default::default()
    };
    let retired = admin.create_service(retired).await.unwrap().into_inner();
    let version = ApiVersion {
        service_id: retired.meta.unwrap().id,
        version: "v1".into(),
        state: VersionState::Retired as i32,
        deprecated_at_ms: 1,
        ..Default::default()
    };
    let request = PutEntityRequest {
        kind: "api version".into(),
        entity: version.encode_to_vec(),
        create: true,
        id_or_name: String::new(),
    };
    admin.put_entity(request).await.unwrap();
    admin.create_route(open_route("retired", "old", "/retired")).await.unwrap();
    let gated = Service {
        name: "gated".into(),
        targets: vec![target],
        subscription: SubscriptionMode::Approval as i32,
        ..Default::default()
    };
    admin.create_service(gated).await.unwrap();
    let mut gated = open_route("gated", "gated", "/gated");
    gated.auth = AuthMode::ApiKey as i32;
    admin.create_route(gated).await.unwrap();
    let (_, key) = consumer_with_key(&mut admin, "acme").await;

    let proxy = node.proxy_addr;
    let bearer = format!("Bearer {key}");
    let preflight = Request::options(format!("http://{proxy}/cached/x"))
        .header("origin", "https://app.test")
        .header("access-control-request-method", "GET")
        .body(full(""))
        .unwrap();
    let requests: Vec<(Reply, Vec<&str>)> = vec![
        (get(proxy, "/nowhere", &[]).await, vec!["match", "account"]),
        (send(&http_client(), preflight).await, vec!["match", "account"]),
        (get(proxy, "/keyed/x", &[]).await, vec!["match", "lifecycle", "authenticate", "account"]),
        (get(proxy, "/denied/x", &[]).await, vec!["match", "lifecycle", "authenticate", "authorize", "account"]),
        (get(proxy, "/cached/x", &[]).await, ALL.to_vec()),
        // The same again is a hit: the backend is not called.
        (get(proxy, "/cached/x", &[]).await, ALL.iter().copied().filter(|p| *p != "backend").collect()),
        (get(proxy, "/keyed/x", &[("authorization", &bearer)]).await, ALL.to_vec()),
        // The AI backend goes through the same phases, and is accounted once.
        (get(proxy, "/v1/models", &[("authorization", &bearer)]).await, ALL.to_vec()),
        (get(proxy, "/v1/models", &[]).await, vec!["match", "lifecycle", "authenticate", "account"]),
        (get(proxy, "/retired/x", &[]).await, vec!["match", "lifecycle", "account"]),
        (
            get(proxy, "/gated/x", &[("authorization", &bearer)]).await,
            vec!["match", "lifecycle", "authenticate", "authorize", "account"],
        ),
    ];
    let statuses: Vec<u16> = requests.iter().map(|(reply, _)| reply.status.as_u16()).collect();
    assert_eq!(statuses, [404, 204, 401, 403, 200, 200, 200, 200, 401, 410, 403]);
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::Relaxed), 2, "one miss and the keyed call");

    let expected = requests.len();
    eventually("one access-log line per request", async || {
        std::fs::read_to_string(&log_path).map(|t| t.lines().count() >= expected).unwrap_or(false)
    })
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let entries: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries.len(), expected, "account runs once per request, never twice: {log}");
    for ((reply, phases), entry) in requests.iter().zip(&entries) {
        let id = reply.headers["x-request-id"].to_str().unwrap();
        assert_eq!(entry["request_id"], id, "the log is in request order");
        assert_eq!(entry["phases"], serde_json::json!(phases), "{entry}");
        let last = phases.iter().rev().find(|p| **p != "account").copied();
        assert_eq!(entry["phase"], serde_json::json!(last), "{entry}");
    }
    assert_eq!(entries[7]["route"], "llm");
    assert_eq!(requests[8].0.status, StatusCode::UNAUTHORIZED);
    node.shutdown().await;
}
