//! The admin API's contract: status codes that mean what they say, rejected
//! writes that change nothing, and a token on every call.

mod common;

use common::*;
use tollgate_proto::admin::v1::{CreateApiKeyRequest, DeleteRequest, GetRequest, ListRequest};
use tollgate_proto::config::v1::{AuthMode, Consumer, PathMatch, Route, RoutePath, Service, Target};
use tonic::Code;

fn service(name: &str) -> Service {
    Service {
        name: name.into(),
        targets: vec![Target { host: "127.0.0.1".into(), port: 9, weight: 1 }],
        ..Default::default()
    }
}

fn route(name: &str, service: &str) -> Route {
    Route {
        name: name.into(),
        service_id: service.into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/x".into() }],
        auth: AuthMode::ApiKey as i32,
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.expect_err("the write must be rejected").code()
}

async fn snapshot(admin: &mut Admin) -> (Vec<Service>, Vec<Route>, Vec<Consumer>) {
    (
        admin.list_services(ListRequest::default()).await.unwrap().into_inner().services,
        admin.list_routes(ListRequest::default()).await.unwrap().into_inner().routes,
        admin.list_consumers(ListRequest::default()).await.unwrap().into_inner().consumers,
    )
}

#[tokio::test]
async fn invalid_writes_get_precise_codes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    admin.create_service(service("orders")).await.unwrap();
    admin.create_route(route("orders", "orders")).await.unwrap();
    admin.create_consumer(Consumer { name: "acme".into(), ..Default::default() }).await.unwrap();
    let before = snapshot(&mut admin).await;

    assert_eq!(code(admin.create_service(service("")).await), Code::InvalidArgument, "empty name");
    assert_eq!(code(admin.create_service(service("has space")).await), Code::InvalidArgument);
    assert_eq!(
        code(admin.create_service(Service { name: "no-targets".into(), ..Default::default() }).await),
        Code::InvalidArgument
    );
    let mut bad_host = service("bad-host");
    bad_host.targets[0].host = "not a host!".into();
    assert_eq!(code(admin.create_service(bad_host).await), Code::InvalidArgument, "malformed upstream host");
    assert_eq!(code(admin.create_service(service("orders")).await), Code::AlreadyExists, "duplicate name");

    assert_eq!(code(admin.create_route(route("r2", "ghost")).await), Code::NotFound, "route to unknown service");
    let mut malformed = route("r3", "orders");
    malformed.hosts = vec!["bad host..com".into()];
    assert_eq!(code(admin.create_route(malformed).await), Code::InvalidArgument, "malformed route host");
    let mut bad_method = route("r4", "orders");
    bad_method.methods = vec!["FETCH".into()];
    assert_eq!(code(admin.create_route(bad_method).await), Code::InvalidArgument);
    assert_eq!(code(admin.create_route(route("orders", "orders")).await), Code::AlreadyExists);

    assert_eq!(
        code(admin.create_consumer(Consumer { name: "acme".into(), ..Default::default() }).await),
        Code::AlreadyExists
    );
    let key_for_ghost = CreateApiKeyRequest { consumer: "ghost".into(), ..Default::default() };
    assert_eq!(code(admin.create_api_key(key_for_ghost).await), Code::NotFound, "key for a missing consumer");

    assert_eq!(
        code(admin.get_service(GetRequest { id_or_name: "ghost".into(), ..Default::default() }).await),
        Code::NotFound
    );
    assert_eq!(code(admin.delete_route(DeleteRequest { id_or_name: "ghost".into() }).await), Code::NotFound);
    assert_eq!(
        code(admin.delete_service(DeleteRequest { id_or_name: "orders".into() }).await),
        Code::FailedPrecondition,
        "a service with routes cannot be deleted"
    );

    assert_eq!(snapshot(&mut admin).await, before, "no rejected write changed anything");
    node.shutdown().await;
}

#[tokio::test]
async fn the_admin_token_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;

    let mut anonymous = admin_client(node.admin_addr, "").await;
    let err = anonymous.list_services(ListRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("admin token"), "{}", err.message());
    let err = anonymous.create_service(service("sneaky")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut wrong = admin_client(node.admin_addr, "wrong-token-wrong-token").await;
    assert_eq!(wrong.list_services(ListRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);

    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    assert!(
        admin.list_services(ListRequest::default()).await.unwrap().into_inner().services.is_empty(),
        "nothing was written"
    );

    // Health stays open for probes.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "tollgate.admin.v1.AdminService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    node.shutdown().await;
}

#[tokio::test]
async fn crud_round_trip_and_generated_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.admin.token = None;
    let node = tollgate_node::Node::start(config).await.unwrap();
    assert!(node.admin_token_generated);
    let on_disk = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    assert_eq!(on_disk.trim(), node.admin_token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin-token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "token file is private");
    }
    let mut admin = admin_client(node.admin_addr, &node.admin_token).await;

    let created = admin.create_service(service("orders")).await.unwrap().into_inner();
    let meta = created.meta.clone().unwrap();
    assert!(!meta.id.is_empty() && meta.revision > 0 && meta.created_at_ms > 0);
    let by_name =
        admin.get_service(GetRequest { id_or_name: "orders".into(), ..Default::default() }).await.unwrap().into_inner();
    let by_id =
        admin.get_service(GetRequest { id_or_name: meta.id.clone(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(by_name, created);
    assert_eq!(by_id, created);

    let mut renamed = created.clone();
    renamed.name = "orders-v2".into();
    let updated = admin.update_service(renamed).await.unwrap().into_inner();
    let updated_meta = updated.meta.unwrap();
    assert_eq!(updated_meta.id, meta.id);
    assert_eq!(updated_meta.created_at_ms, meta.created_at_ms, "creation time is kept");
    assert!(updated_meta.revision > meta.revision);
    assert_eq!(
        admin.get_service(GetRequest { id_or_name: "orders".into(), ..Default::default() }).await.unwrap_err().code(),
        Code::NotFound
    );

    admin.create_consumer(Consumer { name: "acme".into(), ..Default::default() }).await.unwrap();
    let key = admin
        .create_api_key(CreateApiKeyRequest { consumer: "acme".into(), name: "ci".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(key.plaintext.starts_with("tg_"));
    let stored = key.api_key.unwrap();
    assert!(stored.secret_sha256.is_empty(), "the key's hash is never returned");
    let secret = key.plaintext.rsplit('_').next().unwrap().to_string();
    assert!(!stored.display_prefix.contains(&secret[8..]), "the display prefix does not reveal the secret");
    // Deleting the consumer takes its keys with it.
    admin.delete_consumer(DeleteRequest { id_or_name: "acme".into() }).await.unwrap();
    let id = stored.meta.unwrap().id;
    assert_eq!(
        admin.get_api_key(GetRequest { id_or_name: id, ..Default::default() }).await.unwrap_err().code(),
        Code::NotFound
    );

    let revision =
        admin.delete_service(DeleteRequest { id_or_name: "orders-v2".into() }).await.unwrap().into_inner().revision;
    assert!(revision > updated_meta.revision);
    assert!(admin.list_services(ListRequest::default()).await.unwrap().into_inner().services.is_empty());
    node.shutdown().await;

    // The plaintext secret was never written: not in the Raft log, the state or a snapshot.
    for file in walk(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the key's secret appears in {}",
            file.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
