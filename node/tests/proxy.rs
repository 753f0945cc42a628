//! The proxy end to end: a real node (RocksDB in a temp dir, run-time ports),
//! real upstreams, real HTTP clients.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tollgate_proto::admin::v1::{CreateApiKeyRequest, UpdateApiKeyRequest};
use tollgate_proto::config::v1::{AuthMode, Consumer, PathMatch, Service, Target};

fn service(name: &str, port: u16) -> Service {
    Service {
        name: name.into(),
        targets: vec![Target { host: "127.0.0.1".into(), port: port.into(), weight: 1 }],
        ..Default::default()
    }
}

#[tokio::test]
async fn routing_precedence_and_request_rewriting() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    admin.create_service(service("svc-a", a.addr.port())).await.unwrap();
    admin.create_service(service("svc-b", b.addr.port())).await.unwrap();
    admin.create_service(service("svc-c", c.addr.port())).await.unwrap();

    let open = AuthMode::None;
    admin.create_route(route("catch-all", "svc-a", PathMatch::Prefix, "/", open)).await.unwrap();
    let mut api = route("api", "svc-b", PathMatch::Prefix, "/api", open);
    api.strip_prefix = true;
    admin.create_route(api).await.unwrap();
    admin.create_route(route("user", "svc-c", PathMatch::Template, "/api/users/{id}", open)).await.unwrap();
    let mut hosted = route("hosted", "svc-c", PathMatch::Prefix, "/", open);
    hosted.hosts = vec!["*.example.com".into()];
    admin.create_route(hosted).await.unwrap();
    let mut low = route("tie-low", "svc-a", PathMatch::Prefix, "/tie", open);
    low.priority = 1;
    admin.create_route(low).await.unwrap();
    let mut high = route("tie-high", "svc-b", PathMatch::Prefix, "/tie", open);
    high.priority = 9;
    admin.create_route(high).await.unwrap();

    let upstream_of = |reply: &Reply| reply.headers["x-upstream"].to_str().unwrap().to_string();
    let reply = get(node.proxy_addr, "/anything", &[]).await;
    assert_eq!((reply.status, upstream_of(&reply)), (StatusCode::OK, "a".into()));

    let reply = get(node.proxy_addr, "/api/orders?limit=5", &[]).await;
    assert_eq!(upstream_of(&reply), "b");
    assert_eq!(reply.json()["path"], "/orders", "prefix stripped");
    assert_eq!(reply.json()["query"], "limit=5", "query kept");

    let reply = get(node.proxy_addr, "/api/users/42", &[]).await;
    assert_eq!(upstream_of(&reply), "c", "template beats a shorter prefix");
    assert_eq!(reply.json()["path"], "/api/users/42", "no strip on this route");

    let reply = get(node.proxy_addr, "/api/orders", &[("host", "shop.example.com")]).await;
    assert_eq!(upstream_of(&reply), "c", "a host match beats any path-only route");

    let reply = get(node.proxy_addr, "/tie/x", &[]).await;
    assert_eq!(upstream_of(&reply), "b", "equal specificity: higher priority wins");

    // Request rewriting: forwarded-for, request id, hop-by-hop removal.
    let reply = get(
        node.proxy_addr,
        "/headers",
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("x-end", "kept"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    let seen = &reply.json()["headers"];
    assert_eq!(seen["x-end"], "kept");
    assert!(seen.get("x-hop").is_none(), "headers named by Connection are hop-by-hop");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    let generated = reply.headers["x-request-id"].to_str().unwrap();
    assert_eq!(seen["x-request-id"], generated, "the generated request id reaches the upstream");
    assert_eq!(generated.len(), 32);
    // X-Forwarded-Host is the authority the client asked for.
    assert_eq!(seen["x-forwarded-host"], node.proxy_addr.to_string());
    assert_eq!(seen["x-forwarded-proto"], "http");
    // The gateway checked no credentials on an open route, so the upstream's own pass through.
    // Its identity headers, though, come only from the gateway: a client cannot pose as a consumer.
    let reply = get(
        node.proxy_addr,
        "/headers",
        &[("authorization", "Bearer upstream-token"), ("x-consumer-id", "c-admin"), ("x-consumer-name", "admin")],
    )
    .await;
    let seen = &reply.json()["headers"];
    assert_eq!(seen["authorization"], "Bearer upstream-token");
    assert!(seen.get("x-consumer-id").is_none() && seen.get("x-consumer-name").is_none(), "{seen}");
    let reply = get(node.proxy_addr, "/headers", &[("x-request-id", "trace-me-1")]).await;
    assert_eq!(reply.headers["x-request-id"], "trace-me-1");
    assert_eq!(reply.json()["headers"]["x-request-id"], "trace-me-1");

    // HTTP/2 without TLS (prior knowledge) is served too.
    let h2 =
        send(&h2c_client(), Request::get(format!("http://{}/api/x", node.proxy_addr)).body(full("")).unwrap()).await;
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(h2.json()["path"], "/x");

    node.shutdown().await;
}

#[tokio::test]
async fn api_key_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Upstream::start("u").await;
    admin.create_service(service("svc", upstream.addr.port())).await.unwrap();
    admin.create_route(route("private", "svc", PathMatch::Prefix, "/private", AuthMode::ApiKey)).await.unwrap();
    admin.create_consumer(Consumer { name: "acme".into(), ..Default::default() }).await.unwrap();
    let created = admin
        .create_api_key(CreateApiKeyRequest { consumer: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let key = created.plaintext.clone();
    let key_id = created.api_key.unwrap().meta.unwrap().id;

    let reply = get(node.proxy_addr, "/private", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"]["code"], "unauthorized");
    assert!(reply.headers.contains_key("www-authenticate"));

    let bearer = format!("Bearer {key}");
    let reply = get(node.proxy_addr, "/private", &[("authorization", &bearer), ("x-consumer-name", "root")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = &reply.json()["headers"];
    assert_eq!(seen["x-consumer-name"], "acme", "the gateway's value replaces the client's");
    assert!(seen["x-consumer-id"].as_str().is_some_and(|id| !id.is_empty()), "{seen}");
    assert!(seen.get("authorization").is_none(), "the key never reaches the upstream");

    let reply = get(node.proxy_addr, "/private", &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK);

    let mut wrong_secret = key.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    for bad in [wrong_secret.as_str(), "tg_nonsense", "Bearer"] {
        let reply = get(node.proxy_addr, "/private", &[("x-api-key", bad)]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{bad}");
    }

    admin
        .update_api_key(UpdateApiKeyRequest { id: key_id.clone(), disabled: Some(true), ..Default::default() })
        .await
        .unwrap();
    let reply = get(node.proxy_addr, "/private", &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "a disabled key is refused at once");

    let past = 1_000;
    admin
        .update_api_key(UpdateApiKeyRequest {
            id: key_id,
            disabled: Some(false),
            expires_at_ms: Some(past),
            ..Default::default()
        })
        .await
        .unwrap();
    let reply = get(node.proxy_addr, "/private", &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "an expired key is refused");
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 2, "refused requests never reach the upstream");

    node.shutdown().await;
}

#[tokio::test]
async fn multi_megabyte_bodies_stream_through_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Upstream::start("u").await;
    admin.create_service(service("svc", upstream.addr.port())).await.unwrap();
    admin.create_route(route("all", "svc", PathMatch::Prefix, "/", AuthMode::None)).await.unwrap();
    let client = http_client();

    // 12 MiB up, checksummed by the upstream.
    let payload: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
    let request = Request::post(format!("http://{}/upload", node.proxy_addr)).body(full(payload.clone())).unwrap();
    let reply = send(&client, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["body_len"], payload.len());
    assert_eq!(reply.json()["body_sha256"], hex::encode(Sha256::digest(&payload)));

    // 8 MiB down.
    let reply = get(node.proxy_addr, &format!("/big/{}", 8 << 20), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 8 << 20);

    // Ping-pong: each chunk must come back before the next is sent. A proxy
    // that buffered either body whole would never answer the first chunk.
    let (tx, body) = channel_body();
    let request = Request::post(format!("http://{}/stream-echo", node.proxy_addr)).body(body).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), async {
        let pending = client.request(request);
        tx.send(Bytes::from(vec![1u8; 256 * 1024])).await.unwrap();
        pending.await.unwrap()
    })
    .await
    .expect("the response starts before the request body ends");
    let mut body = response.into_body();
    for round in 1..=16u8 {
        let mut received = 0;
        while received < 256 * 1024 {
            let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
                .await
                .expect("chunk echoed while the request is still open")
                .unwrap()
                .unwrap();
            let data = frame.into_data().unwrap();
            assert!(data.iter().all(|b| *b == round));
            received += data.len();
        }
        if round < 16 {
            tx.send(Bytes::from(vec![round + 1; 256 * 1024])).await.unwrap();
        }
    }
    drop(tx);
    assert!(body.frame().await.is_none(), "stream ends when the request body ends");

    node.shutdown().await;
}

#[tokio::test]
async fn failures_have_the_right_status_and_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.proxy.max_body_bytes = 1 << 20;
    let node = tollgate_node::Node::start(config).await.unwrap();
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Upstream::start("u").await;
    admin.create_service(service("ok", upstream.addr.port())).await.unwrap();
    admin.create_service(service("refused", dead_port().await)).await.unwrap();
    let mut slow = service("slow", upstream.addr.port());
    slow.request_timeout_ms = 300;
    admin.create_service(slow).await.unwrap();
    admin.create_route(route("ok", "ok", PathMatch::Prefix, "/ok", AuthMode::None)).await.unwrap();
    admin.create_route(route("refused", "refused", PathMatch::Prefix, "/refused", AuthMode::None)).await.unwrap();
    admin.create_route(route("slow", "slow", PathMatch::Prefix, "/hang", AuthMode::None)).await.unwrap();

    let expect = |reply: &Reply, status: StatusCode, code: &str| {
        assert_eq!(reply.status, status, "{:?}", reply.body);
        assert_eq!(reply.headers["content-type"], "application/json");
        let json = reply.json();
        assert_eq!(json["error"]["code"], code);
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(json["error"]["request_id"], reply.headers["x-request-id"].to_str().unwrap());
    };

    expect(&get(node.proxy_addr, "/nowhere", &[]).await, StatusCode::NOT_FOUND, "route_not_found");
    expect(&get(node.proxy_addr, "/refused", &[]).await, StatusCode::BAD_GATEWAY, "upstream_unavailable");
    expect(&get(node.proxy_addr, "/hang", &[]).await, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");

    let client = http_client();
    // Declared too large: refused before anything is forwarded.
    let hits_before = upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
    let big = vec![0u8; (1 << 20) + 1];
    let reply = send(&client, Request::post(format!("http://{}/ok", node.proxy_addr)).body(full(big)).unwrap()).await;
    expect(&reply, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), hits_before);

    // Chunked, no length: cut off once the limit is crossed.
    let (tx, body) = channel_body();
    let request = Request::post(format!("http://{}/ok", node.proxy_addr)).body(body).unwrap();
    let feeder = tokio::spawn(async move {
        for _ in 0..40 {
            if tx.send(Bytes::from(vec![0u8; 64 * 1024])).await.is_err() {
                break;
            }
        }
    });
    let reply = send(&client, request).await;
    expect(&reply, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    feeder.abort();

    // A body under the limit still passes.
    let ok =
        send(&client, Request::post(format!("http://{}/ok", node.proxy_addr)).body(full(vec![0u8; 1000])).unwrap())
            .await;
    assert_eq!(ok.status, StatusCode::OK);

    node.shutdown().await;
}

#[tokio::test]
async fn round_robin_and_live_changes_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut svc = service("pool", a.addr.port());
    svc.targets.push(Target { host: "127.0.0.1".into(), port: b.addr.port().into(), weight: 1 });
    let svc = admin.create_service(svc).await.unwrap().into_inner();

    // Visible at once: the admin call returns after the proxy serves the change.
    assert_eq!(get(node.proxy_addr, "/x", &[]).await.status, StatusCode::NOT_FOUND);
    admin.create_route(route("r", "pool", PathMatch::Prefix, "/", AuthMode::None)).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let reply = get(node.proxy_addr, "/x", &[]).await;
        seen.push(reply.headers["x-upstream"].to_str().unwrap().to_string());
    }
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 3, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 3, "{seen:?}");

    let mut only_b = svc.clone();
    only_b.targets.remove(0);
    admin.update_service(only_b).await.unwrap();
    for _ in 0..4 {
        assert_eq!(get(node.proxy_addr, "/x", &[]).await.headers["x-upstream"], "b");
    }
    admin.delete_route(tollgate_proto::admin::v1::DeleteRequest { id_or_name: "r".into() }).await.unwrap();
    assert_eq!(get(node.proxy_addr, "/x", &[]).await.status, StatusCode::NOT_FOUND);
    node.shutdown().await;
}

/// A lenient upstream that accepts any upgrade it is asked for with a 101
/// (saying which path, consumer and upgrade it saw) and then echoes every
/// byte back; it answers any other request, and any under `/decline`, with 200.
async fn echo_upgrade_upstream() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|mut request: Request<hyper::body::Incoming>| async move {
                    let seen = format!(
                        "{} {:?} {:?}",
                        request.uri().path(),
                        request.headers().get("x-consumer-name"),
                        request.headers().get("upgrade")
                    );
                    let asked = request.headers().get("connection").is_some_and(|v| v == "upgrade");
                    let response = match asked && !request.uri().path().contains("/decline") {
                        true => accept_echo_upgrade(&mut request).unwrap(),
                        false => http::Response::builder(),
                    };
                    Ok::<_, std::convert::Infallible>(
                        response.header("x-seen", seen).body(http_body_util::Empty::<Bytes>::new()).unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_style_upgrades_are_tunnelled_after_auth() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = echo_upgrade_upstream().await;
    admin.create_service(service("echo", upstream.port())).await.unwrap();
    admin.create_route(route("ws", "echo", PathMatch::Prefix, "/ws", AuthMode::ApiKey)).await.unwrap();
    admin.create_consumer(Consumer { name: "acme".into(), ..Default::default() }).await.unwrap();
    let key = admin
        .create_api_key(CreateApiKeyRequest { consumer: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    let upgrade_head = |auth: &str| {
        format!(
            "GET /ws/chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n{auth}\r\n"
        )
    };

    // The upgrade request passes the phases: without a key it is refused.
    let mut refused = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    let head = raw_head(&mut refused, &upgrade_head("")).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");

    // With one, the target's 101 comes back and the connection becomes a tunnel.
    let mut tunnel = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    let head = raw_head(&mut tunnel, &upgrade_head(&format!("Authorization: Bearer {key}\r\n"))).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("connection: upgrade"), "{head}");
    assert!(head.contains(r#"x-seen: /ws/chat some("acme") some("websocket")"#), "the target saw the consumer: {head}");
    for message in [&b"hello"[..], &[0u8, 159, 146, 150, 255][..], &[7u8; 100_000][..]] {
        tunnel.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tunnel.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message, "bytes pass both ways unchanged");
    }

    // With a route idle timeout, a tunnel that goes quiet is closed.
    let mut quiet = route("ws-idle", "echo", PathMatch::Prefix, "/quiet", AuthMode::None);
    quiet.idle_timeout_ms = 300;
    admin.create_route(quiet).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    let head =
        raw_head(&mut idle, "GET /quiet HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    idle.write_all(b"once").await.unwrap();
    let mut echoed = [0u8; 4];
    idle.read_exact(&mut echoed).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), idle.read_to_end(&mut rest))
        .await
        .expect("the gateway closes an idle tunnel")
        .unwrap();
    assert!(rest.is_empty());

    // A target that declines the upgrade gives an ordinary response.
    admin.create_route(route("plain", "echo", PathMatch::Prefix, "/", AuthMode::None)).await.unwrap();
    let ask = |path: &str, protocol: &str, connection: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\nUpgrade: {protocol}\r\n\r\n")
    };
    let mut declined = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    let head = raw_head(&mut declined, &ask("/decline", "websocket", "Upgrade")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // Any other protocol, h2c above all, never reaches the target as an
    // upgrade: it would let the client talk past the gateway (h2c smuggling).
    for (protocol, connection) in [("h2c", "Upgrade, HTTP2-Settings"), ("tls/1.3", "Upgrade")] {
        let mut smuggler = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
        let head = raw_head(&mut smuggler, &ask("/sneak", protocol, connection)).await;
        assert!(head.starts_with("http/1.1 200"), "{protocol}: {head}");
        assert!(head.contains("x-seen: /sneak none none"), "{protocol}: the target saw no upgrade: {head}");
    }
    // A tunnel cannot be drained: stopping the node cuts it rather than
    // waiting out the drain timeout (30 s) for it.
    tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await.expect("shutdown does not wait on tunnels");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut rest))
        .await
        .expect("the open tunnel was closed when the node stopped");
}
