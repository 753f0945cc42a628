//! Subscriptions gate keys on every node (issue 15): three real nodes, a
//! service that needs approved subscriptions. An approval made through one
//! node and a revocation made through another apply everywhere by the time
//! the call returns: the first request after it, to each node, sees it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_cluster::harness::{Cluster, ClusterOptions};
use tollgate_proto::admin::v1::{CreateApiKeyRequest, DecideSubscriptionRequest, SubscribeRequest};
use tollgate_proto::config::v1::{
    AuthMode, Consumer, PathMatch, Route, RoutePath, Service, SubscriptionMode, SubscriptionState, Target,
};

async fn status_of(proxy: SocketAddr, key: &str) -> u16 {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let request = http::Request::get(format!("http://{proxy}/billing/invoices"))
        .header("authorization", format!("Bearer {key}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.expect("the proxy answers");
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_and_a_revocation_apply_on_every_node_by_the_time_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(ClusterOptions::new(3, dir.path())).await.expect("cluster starts");
    cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
    let upstream = common::upstream().await;

    let mut admin = cluster.admin(1).await.unwrap();
    let target = Target { host: "127.0.0.1".into(), port: upstream.port().into(), weight: 1 };
    let service = Service {
        name: "billing".into(),
        targets: vec![target],
        subscription: SubscriptionMode::Approval as i32,
        ..Default::default()
    };
    admin.create_service(service).await.unwrap();
    let route = Route {
        name: "billing".into(),
        service_id: "billing".into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/billing".into() }],
        auth: AuthMode::ApiKey as i32,
        ..Default::default()
    };
    admin.create_route(route).await.unwrap();
    admin.create_consumer(Consumer { name: "shop".into(), ..Default::default() }).await.unwrap();
    let key = admin
        .create_api_key(CreateApiKeyRequest { consumer: "shop".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    let proxies: Vec<(u64, SocketAddr)> = cluster.nodes().iter().map(|n| (n.id, n.proxy)).collect();

    // Pending: refused everywhere (once every node has the key at all).
    let mut gov1 = cluster.governance(1).await.unwrap();
    let subscription = gov1
        .subscribe(SubscribeRequest { consumer: "shop".into(), service: "billing".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(subscription.state, SubscriptionState::Pending as i32);
    for (node, proxy) in &proxies {
        assert_eq!(status_of(*proxy, &key).await, 403, "node {node}: pending is not approved");
    }
    let id = subscription.meta.unwrap().id;
    let decide = |state: SubscriptionState| DecideSubscriptionRequest {
        id: id.clone(),
        state: state as i32,
        reason: String::new(),
    };

    // Approved through node 2: the first request to each node goes through.
    let mut gov2 = cluster.governance(2).await.unwrap();
    gov2.decide_subscription(decide(SubscriptionState::Approved)).await.unwrap();
    for (node, proxy) in &proxies {
        assert_eq!(status_of(*proxy, &key).await, 200, "node {node}: the first request after the approval");
    }

    // Revoked through node 3: the first request to each node is refused.
    let mut gov3 = cluster.governance(3).await.unwrap();
    gov3.decide_subscription(decide(SubscriptionState::Revoked)).await.unwrap();
    for (node, proxy) in &proxies {
        assert_eq!(status_of(*proxy, &key).await, 403, "node {node}: the first request after the revocation");
    }
    cluster.down().await;
}
