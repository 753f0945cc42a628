//! Rate limits on one real node (issue 14): the `limit` phase admits from
//! quota leases granted through Raft, refuses with 429 and the RateLimit
//! headers (REST JSON and the AI caller's format), counts each key in its
//! own bucket, follows updates and deletes at once, and the upstream sees
//! only what was admitted. Cluster-wide accuracy is in `cluster/tests/`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Admin, TOKEN, admin_client, consumer_with_key, get};
use tollgate_proto::admin::v1::{CreateApiKeyRequest, DeleteEntityRequest, GetEntityRequest, PutEntityRequest};
use tollgate_proto::config::v1::{AuthMode, Limit, LimitScope, LimitUnit, LimitWindow, PathMatch, Service, Target};

/// Day windows, so a window cannot roll during a test, unless it starts
/// right before midnight UTC: then wait for the new day first.
async fn away_from_midnight() {
    let in_day = tollgate_node::clock::unix_ms().rem_euclid(86_400_000);
    if in_day > 86_400_000 - 30_000 {
        tokio::time::sleep(Duration::from_millis((86_400_000 - in_day + 1_000) as u64)).await;
    }
}

async fn put_limit(admin: &mut Admin, limit: Limit, create: bool) -> Limit {
    let id_or_name = if create { String::new() } else { limit.name.clone() };
    let request =
        PutEntityRequest { kind: "limit".into(), entity: prost::Message::encode_to_vec(&limit), create, id_or_name };
    let stored = admin.put_entity(request).await.unwrap().into_inner();
    prost::Message::decode(stored.entity.as_slice()).unwrap()
}

fn per_key_per_day(name: &str, amount: u64, route_id: &str) -> Limit {
    Limit {
        name: name.into(),
        unit: LimitUnit::Requests.into(),
        amount,
        window: LimitWindow::Day.into(),
        scope: LimitScope::ApiKey.into(),
        route_ids: vec![route_id.into()],
        ..Default::default()
    }
}

async fn keyed_route(admin: &mut Admin, upstream: &common::Upstream) -> String {
    let target = Target { host: "127.0.0.1".into(), port: upstream.addr.port().into(), weight: 1 };
    admin.create_service(Service { name: "svc".into(), targets: vec![target], ..Default::default() }).await.unwrap();
    let route = common::route("orders", "svc", PathMatch::Prefix, "/orders", AuthMode::ApiKey);
    admin.create_route(route).await.unwrap().into_inner().meta.unwrap().id
}

#[tokio::test]
async fn a_request_limit_admits_its_amount_per_key_then_refuses_with_ratelimit_headers() {
    away_from_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path()).await;
    let upstream = common::Upstream::start("up").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let route_id = keyed_route(&mut admin, &upstream).await;
    let (_, key) = consumer_with_key(&mut admin, "acme").await;
    let other_key = admin
        .create_api_key(CreateApiKeyRequest { consumer: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    put_limit(&mut admin, per_key_per_day("per-key", 3, &route_id), true).await;
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    common::eventually("the limit reaches the data plane", async || {
        let reply = get(node.proxy_addr, "/orders/1", &headers).await;
        assert_eq!(reply.status, 200, "the first request of the limit is admitted");
        reply.headers.contains_key("ratelimit")
    })
    .await;
    // The probe above spent one unit (the first admitted request that
    // carried the headers; those before it were not limited yet).
    let mut admitted = 1;
    let mut refused = None;
    for _ in 0..5 {
        let reply = get(node.proxy_addr, "/orders/1", &headers).await;
        match reply.status.as_u16() {
            200 => {
                admitted += 1;
                assert_eq!(reply.headers["ratelimit-policy"], "\"per-key\";q=3;w=86400");
                assert_eq!(reply.headers["x-ratelimit-limit"], "3");
            }
            429 => refused = Some(reply),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(admitted, 3, "exactly the amount is admitted");
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 3, "the upstream sees only admitted requests");
    let refused = refused.expect("a refusal");
    let body = refused.json();
    assert_eq!(body["error"]["code"], "rate_limited");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("per-key") && message.contains("3 requests per day"), "{message}");
    assert_eq!(refused.headers["ratelimit"].to_str().unwrap().split(';').nth(1), Some("r=0"));
    assert_eq!(refused.headers["x-ratelimit-remaining"], "0");
    let retry_after: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after));
    let reset: i64 = refused.headers["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert_eq!(reset % 86_400, 0, "a day window resets at midnight UTC");

    // Another key of the same consumer has its own bucket.
    let other = format!("Bearer {other_key}");
    assert_eq!(get(node.proxy_addr, "/orders/1", &[("authorization", other.as_str())]).await.status, 200);

    // An update applies to live traffic at once: two more for the first key.
    let mut limit = per_key_per_day("per-key", 5, &route_id);
    limit.name = "per-key".into();
    put_limit(&mut admin, limit, false).await;
    common::eventually("the raised limit admits again", async || {
        get(node.proxy_addr, "/orders/1", &headers).await.status == 200
    })
    .await;

    // Deleting the limit lifts it; the route it was attached to could not be deleted before.
    let blocked = admin.delete_route(tollgate_proto::admin::v1::DeleteRequest { id_or_name: "orders".into() }).await;
    assert_eq!(blocked.unwrap_err().code(), tonic::Code::FailedPrecondition);
    admin.delete_entity(DeleteEntityRequest { kind: "limit".into(), id_or_name: "per-key".into() }).await.unwrap();
    common::eventually("no limit, no headers", async || {
        let reply = get(node.proxy_addr, "/orders/1", &headers).await;
        reply.status == 200 && !reply.headers.contains_key("ratelimit")
    })
    .await;
    let gone = admin.get_entity(GetEntityRequest { kind: "limit".into(), id_or_name: "per-key".into(), stale: false });
    assert_eq!(gone.await.unwrap_err().code(), tonic::Code::NotFound);
    node.shutdown().await;
}

#[tokio::test]
async fn an_invalid_limit_is_refused_with_the_reason_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let cases = [
        (Limit { name: "x".into(), amount: 1, ..Default::default() }, "unit"),
        (per_key_per_day("x", 0, "missing"), "amount"),
        (Limit { global: true, ..per_key_per_day("x", 1, "") }, "global"),
        (Limit { route_ids: vec![], ..per_key_per_day("x", 1, "") }, "attach"),
        (
            Limit { window: LimitWindow::Month.into(), global: true, route_ids: vec![], ..per_key_per_day("x", 1, "") },
            "month",
        ),
        (
            Limit {
                unit: LimitUnit::CostMicros.into(),
                scope: LimitScope::Route.into(),
                global: true,
                route_ids: vec![],
                ..per_key_per_day("x", 1, "")
            },
            "budget",
        ),
    ];
    for (limit, says) in cases {
        let request = PutEntityRequest {
            kind: "limit".into(),
            entity: prost::Message::encode_to_vec(&limit),
            create: true,
            id_or_name: String::new(),
        };
        let status = admin.put_entity(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{limit:?}: {status:?}");
        assert!(status.message().contains(says), "{says}: {}", status.message());
    }
    let missing_route = per_key_per_day("x", 1, "no-such-route");
    let request = PutEntityRequest {
        kind: "limit".into(),
        entity: prost::Message::encode_to_vec(&missing_route),
        create: true,
        id_or_name: String::new(),
    };
    assert_eq!(admin.put_entity(request).await.unwrap_err().code(), tonic::Code::NotFound);
    let listed = admin
        .list_entities(tollgate_proto::admin::v1::ListEntitiesRequest { kind: "limit".into(), stale: false })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entities.is_empty());
    node.shutdown().await;
}

/// A client-address limit counts the socket's peer, never what the client
/// says about itself: forged `X-Forwarded-For`, `X-Real-IP` and `Forwarded`
/// headers (raw, on fresh connections) do not buy a fresh bucket, and the
/// upstream sees only the admitted requests.
#[tokio::test]
async fn forged_forwarding_headers_do_not_escape_a_client_address_limit() {
    away_from_midnight().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path()).await;
    let upstream = common::Upstream::start("up").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let target = Target { host: "127.0.0.1".into(), port: upstream.addr.port().into(), weight: 1 };
    admin.create_service(Service { name: "svc".into(), targets: vec![target], ..Default::default() }).await.unwrap();
    let route = common::route("open", "svc", PathMatch::Prefix, "/open", AuthMode::None);
    let route_id = admin.create_route(route).await.unwrap().into_inner().meta.unwrap().id;
    let limit = Limit { scope: LimitScope::ClientIp.into(), ..per_key_per_day("per-client", 2, &route_id) };
    put_limit(&mut admin, limit, true).await;
    common::eventually("the limit reaches the data plane", async || {
        get(node.proxy_addr, "/open", &[]).await.headers.contains_key("ratelimit")
    })
    .await;
    let before = upstream.hits.load(Ordering::SeqCst);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
        let head = format!(
            "GET /open HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 203.0.113.{i}\r\nX-Real-IP: 198.51.100.{i}\r\n\
             Forwarded: for=192.0.2.{i}\r\nConnection: close\r\n\r\n"
        );
        let response = common::raw_head(&mut stream, &head).await;
        statuses.push(response.split(' ').nth(1).unwrap().to_string());
    }
    // The probe above spent one of the two units: one more is admitted,
    // whatever the forged addresses say. Which of the four it is depends on
    // when the lease grant commits, against how long a request may wait.
    statuses.sort();
    assert_eq!(statuses, ["200", "429", "429", "429"]);
    assert_eq!(upstream.hits.load(Ordering::SeqCst) - before, 1, "the upstream sees only the admitted request");
    node.shutdown().await;
}
