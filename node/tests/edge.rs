//! The request path's edge policies end to end: JWT, CORS, IP lists,
//! transforms, the response cache, metrics and the access log, trace context,
//! TLS with SNI and reload, and configuration changes under load.

mod common;
#[path = "dataplane/flex.rs"]
mod flex;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use flex::Flex;
use http::{Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tollgate_node::Node;
use tollgate_proto::config::v1::*;

fn target(port: u32) -> Target {
    Target { host: "127.0.0.1".into(), port, weight: 1 }
}

fn open_route(name: &str, service: &str, path: &str) -> Route {
    Route {
        name: name.into(),
        service_id: service.into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: path.into() }],
        auth: AuthMode::None as i32,
        ..Default::default()
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Serves one fixed JSON document on every path (a JWKS endpoint).
async fn serve_json(body: String) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(full(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[tokio::test]
async fn jwt_is_accepted_or_rejected_for_each_claim() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Flex::start("u").await;

    // An ES256 key published in a JWKS document.
    let es_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = es_key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": "k1", "alg": "ES256", "use": "sig"
    }]});
    let (jwks_addr, _jwks_task) = serve_json(jwks.to_string()).await;

    admin
        .create_service(Service { name: "svc".into(), targets: vec![target(upstream.port())], ..Default::default() })
        .await
        .unwrap();
    admin.create_consumer(Consumer { name: "alice".into(), ..Default::default() }).await.unwrap();
    let mut route = open_route("jwt", "svc", "/");
    route.auth = AuthMode::Jwt as i32;
    route.jwt = Some(JwtAuth {
        algorithms: vec!["HS256".into(), "ES256".into()],
        hs_secret: SECRET.into(),
        jwks_url: format!("http://{jwks_addr}/.well-known/jwks.json"),
        issuer: "https://issuer.test".into(),
        audiences: vec!["tollgate".into()],
        require_consumer: true,
        ..Default::default()
    });
    admin.create_route(route).await.unwrap();

    // The HMAC secret is replicated only sealed, and never comes back from the API.
    let sealed = |node: &Node| node.raft().local_state().find_route("jwt").unwrap().jwt.clone().unwrap();
    let stored = sealed(&node);
    assert!(stored.hs_secret.is_empty(), "no plaintext secret in the replicated state");
    assert!(!stored.sealed_hs_secret.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    let get_jwt = tollgate_proto::admin::v1::GetRequest { id_or_name: "jwt".into(), ..Default::default() };
    let mut returned = admin.get_route(get_jwt.clone()).await.unwrap().into_inner();
    let returned_jwt = returned.jwt.clone().unwrap();
    assert!(returned_jwt.hs_secret.is_empty() && returned_jwt.sealed_hs_secret.is_empty());
    // Updating the route without resending the secret keeps it (checked by the HS256 calls below).
    returned.jwt.as_mut().unwrap().leeway_s = 1;
    admin.update_route(returned).await.unwrap();
    assert_eq!(sealed(&node).leeway_s, 1);
    assert!(!sealed(&node).sealed_hs_secret.is_empty(), "the update kept the sealed secret");

    let good = || serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "tollgate", "exp": now() + 600, "nbf": now() - 10});
    let call = async |token: &str| get(node.proxy_addr, "/", &[("authorization", &format!("Bearer {token}"))]).await;

    let reply = call(&hs256(good(), SECRET)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let seen = &reply.json()["headers"];
    assert_eq!(seen["x-consumer-name"], "alice", "the sub claim names the consumer");
    assert!(seen.get("authorization").is_none(), "the token never reaches the upstream");

    let mut cases = vec![];
    let mut claims = good();
    claims["exp"] = (now() - 120).into();
    cases.push(("expired", hs256(claims, SECRET), "expired"));
    let mut claims = good();
    claims["nbf"] = (now() + 3600).into();
    cases.push(("not yet valid", hs256(claims, SECRET), "not valid yet"));
    let mut claims = good();
    claims["aud"] = "someone-else".into();
    cases.push(("audience", hs256(claims, SECRET), "audience"));
    let mut claims = good();
    claims["iss"] = "https://evil.test".into();
    cases.push(("issuer", hs256(claims, SECRET), "issuer"));
    let mut claims = good();
    claims.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", hs256(claims, SECRET), "exp"));
    cases.push(("signature", hs256(good(), "another-secret-of-32-bytes-......"), "signature"));
    let mut claims = good();
    claims["sub"] = "mallory".into();
    cases.push(("unknown consumer", hs256(claims, SECRET), "consumer"));
    let hs512 =
        jsonwebtoken::encode(&Header::new(Algorithm::HS512), &good(), &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap();
    cases.push(("algorithm", hs512, "algorithm"));
    cases.push(("garbage", "not.a.jwt".to_string(), "malformed"));
    for (case, token, message) in cases {
        let reply = call(&token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}");
        let text = reply.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(text.contains(message), "{case}: {text}");
    }
    assert_eq!(get(node.proxy_addr, "/", &[]).await.status, StatusCode::UNAUTHORIZED, "no token");

    // ES256 through the JWKS document (fetched in the background).
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let es =
        jsonwebtoken::encode(&header, &good(), &EncodingKey::from_ec_pem(es_key.serialize_pem().as_bytes()).unwrap())
            .unwrap();
    eventually("the JWKS key verifies an ES256 token", async || call(&es).await.status == StatusCode::OK).await;

    // RS256 against an inline PEM key, on a route that lets tokens without a
    // known consumer through as `anonymous`. (The key pair is a test fixture.)
    let mut route = open_route("rs", "svc", "/rs");
    route.auth = AuthMode::Jwt as i32;
    route.jwt = Some(JwtAuth {
        algorithms: vec!["RS256".into()],
        public_keys_pem: vec![include_str!("fixtures/jwt/rs256-test-key.pub.pem").into()],
        ..Default::default()
    });
    admin.create_route(route).await.unwrap();
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt/rs256-test-key.pem")).unwrap();
    let rs256 =
        |claims: serde_json::Value| jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &rsa).unwrap();
    let call_rs =
        async |token: &str| get(node.proxy_addr, "/rs", &[("authorization", &format!("Bearer {token}"))]).await;

    let reply = call_rs(&rs256(good())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["headers"]["x-consumer-name"], "alice");
    let reply = call_rs(&rs256(serde_json::json!({"sub": "nobody-we-know", "exp": now() + 600}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let seen = &reply.json()["headers"];
    assert_eq!(seen["x-anonymous-consumer"], "true");
    assert!(seen.get("x-consumer-id").is_none() && seen.get("x-consumer-name").is_none(), "{seen}");
    let mut expired = good();
    expired["exp"] = (now() - 120).into();
    assert_eq!(call_rs(&rs256(expired)).await.status, StatusCode::UNAUTHORIZED, "exp is checked for RS256 too");
    // An HS256 token on an RS256-only route is refused, whatever its secret.
    assert_eq!(call_rs(&hs256(good(), SECRET)).await.status, StatusCode::UNAUTHORIZED, "algorithm confusion");
    let mut tampered = rs256(good());
    tampered.insert_str(tampered.rfind('.').unwrap() + 1, "AAAA");
    assert_eq!(call_rs(&tampered).await.status, StatusCode::UNAUTHORIZED, "bad signature");
    node.shutdown().await;
}

#[tokio::test]
async fn cors_ip_lists_and_transforms() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Flex::start("u").await;
    admin
        .create_service(Service { name: "svc".into(), targets: vec![target(upstream.port())], ..Default::default() })
        .await
        .unwrap();

    let mut cors = open_route("cors", "svc", "/cors");
    cors.cors = Some(Cors { allow_origins: vec!["https://app.test".into()], max_age_s: 600, ..Default::default() });
    admin.create_route(cors).await.unwrap();
    let hits = upstream.hits();
    let preflight = Request::options(format!("http://{}/cors/x", node.proxy_addr))
        .header("origin", "https://app.test")
        .header("access-control-request-method", "POST")
        .body(full(""))
        .unwrap();
    let reply = send(&http_client(), preflight).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.headers["access-control-allow-origin"], "https://app.test");
    assert_eq!(reply.headers["access-control-max-age"], "600");
    assert_eq!(upstream.hits(), hits, "preflights are answered by the gateway");
    let reply = get(node.proxy_addr, "/cors/x", &[("origin", "https://app.test")]).await;
    assert_eq!(reply.headers["access-control-allow-origin"], "https://app.test");
    let reply = get(node.proxy_addr, "/cors/x", &[("origin", "https://evil.test")]).await;
    assert!(!reply.headers.contains_key("access-control-allow-origin"));

    let mut denied = open_route("denied", "svc", "/denied");
    denied.ip_deny = vec!["127.0.0.0/8".into()];
    admin.create_route(denied).await.unwrap();
    let mut elsewhere = open_route("elsewhere", "svc", "/elsewhere");
    elsewhere.ip_allow = vec!["10.0.0.0/8".into()];
    admin.create_route(elsewhere).await.unwrap();
    let mut local = open_route("local", "svc", "/local");
    local.ip_allow = vec!["127.0.0.1/32".into()];
    admin.create_route(local).await.unwrap();
    let reply = get(node.proxy_addr, "/denied", &[]).await;
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    assert_eq!(get(node.proxy_addr, "/elsewhere", &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(node.proxy_addr, "/local", &[]).await.status, StatusCode::OK);

    let pair = |n: &str, v: &str| HeaderPair { name: n.into(), value: v.into() };
    let transformed = Route {
        name: "people".into(),
        service_id: "svc".into(),
        paths: vec![RoutePath { kind: PathMatch::Template as i32, path: "/users/{id}".into() }],
        auth: AuthMode::None as i32,
        rewrite_path: "/v2/people/{id}".into(),
        request_headers: Some(HeaderTransform {
            set: vec![pair("x-env", "prod")],
            remove: vec!["x-secret".into()],
            ..Default::default()
        }),
        response_headers: Some(HeaderTransform {
            add: vec![pair("x-served-by", "tollgate")],
            remove: vec!["x-upstream".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    admin.create_route(transformed).await.unwrap();
    let mut strip = open_route("strip", "svc", "/api");
    strip.strip_prefix = true;
    strip.rewrite_path = "/internal".into();
    admin.create_route(strip).await.unwrap();
    let reply = get(node.proxy_addr, "/users/42?full=1", &[("x-secret", "s"), ("x-env", "dev")]).await;
    let seen = reply.json();
    assert_eq!(seen["path"], "/v2/people/42");
    assert_eq!(seen["query"], "full=1");
    assert_eq!(seen["headers"]["x-env"], "prod");
    assert!(seen["headers"].get("x-secret").is_none());
    assert_eq!(reply.headers["x-served-by"], "tollgate");
    assert!(!reply.headers.contains_key("x-upstream"));
    assert_eq!(get(node.proxy_addr, "/api/orders/7", &[]).await.json()["path"], "/internal/orders/7");
    // The upstream's Host names the target, whatever the client sent, and
    // no route's header changes may decide it.
    assert_eq!(seen["headers"]["host"], format!("127.0.0.1:{}", upstream.port()));
    let seen = get(node.proxy_addr, "/users/1", &[("host", "client.example")]).await.json();
    assert_eq!(seen["headers"]["host"], format!("127.0.0.1:{}", upstream.port()));
    assert_eq!(seen["headers"]["x-forwarded-host"], "client.example");
    let mut vhost = open_route("vhost", "svc", "/vhost");
    vhost.request_headers = Some(HeaderTransform { set: vec![pair("host", "internal.example")], ..Default::default() });
    let refused = admin.create_route(vhost).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn cache_hits_honour_no_store_and_metrics_and_access_log_record_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let log_path = dir.path().join("access.log");
    config.proxy.access_log = log_path.display().to_string();
    let node = Node::start(config).await.unwrap();
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Flex::start("u").await;
    admin
        .create_service(Service { name: "svc".into(), targets: vec![target(upstream.port())], ..Default::default() })
        .await
        .unwrap();
    let mut cached = open_route("cached", "svc", "/cached");
    cached.cache = Some(ResponseCache { enabled: true, ttl_ms: 600_000, ..Default::default() });
    admin.create_route(cached).await.unwrap();

    let first = get(node.proxy_addr, "/cached/a?x=1", &[]).await;
    assert_eq!(first.headers["x-cache"], "MISS");
    let hits = upstream.hits();
    let second = get(node.proxy_addr, "/cached/a?x=1", &[]).await;
    assert_eq!(second.headers["x-cache"], "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(upstream.hits(), hits, "a hit does not reach the upstream");
    assert_eq!(
        get(node.proxy_addr, "/cached/a?x=2", &[]).await.headers["x-cache"],
        "MISS",
        "the query is part of the key"
    );

    let bypass = get(node.proxy_addr, "/cached/a?x=1", &[("cache-control", "no-store")]).await;
    assert_eq!(bypass.headers["x-cache"], "MISS");
    assert_eq!(upstream.hits(), hits + 2, "a no-store request goes upstream");
    for _ in 0..2 {
        let reply = get(node.proxy_addr, "/cached/b?cc=no-store", &[]).await;
        assert_eq!(reply.headers["x-cache"], "MISS", "a no-store response is never stored");
    }
    assert_eq!(upstream.hits(), hits + 4);
    let post =
        send(&http_client(), Request::post(format!("http://{}/cached/a?x=1", node.proxy_addr)).body(full("")).unwrap())
            .await;
    assert_ne!(
        post.headers.get("x-cache").map(|v| v.to_str().unwrap()),
        Some("HIT"),
        "POST is never served from cache"
    );

    let ops = node.ops_addr;
    let metrics = get(ops, "/metrics", &[]).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    let line = |prefix: &str| {
        text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}")).to_string()
    };
    assert!(line(r#"tollgate_http_requests_total{route="cached",service="svc",status="200"}"#).ends_with(" 7"));
    assert!(line(r#"tollgate_cache_requests_total{route="cached",result="hit"}"#).ends_with(" 1"));
    assert!(line(r#"tollgate_http_request_duration_seconds_count{route="cached",service="svc"}"#).ends_with(" 7"));
    assert!(line(r#"tollgate_upstream_healthy{service="svc""#).ends_with(" 1"));
    assert!(!line("tollgate_raft_term ").ends_with(" 0"));
    assert!(!line("tollgate_raft_applied_index ").ends_with(" 0"));
    assert_eq!(get(ops, "/healthz", &[]).await.status, StatusCode::OK);
    assert_eq!(get(ops, "/readyz", &[]).await.status, StatusCode::OK);

    eventually("seven access-log lines", async || {
        std::fs::read_to_string(&log_path).map(|t| t.lines().count() >= 7).unwrap_or(false)
    })
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let entries: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(entries[1]["route"], "cached");
    assert_eq!(entries[1]["cache"], "HIT");
    assert_eq!(entries[1]["status"], 200);
    assert_eq!(entries[1]["service"], "svc");
    assert!(entries[1]["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    node.shutdown().await;
}

#[tokio::test]
async fn traceparent_is_continued_upstream_when_tracing_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Nothing listens there: spans are dropped after a failed export, which is fine here.
    config.telemetry.otlp_endpoint = Some(format!("http://127.0.0.1:{}", dead_port().await));
    let node = Node::start(config).await.unwrap();
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Flex::start("u").await;
    admin
        .create_service(Service { name: "svc".into(), targets: vec![target(upstream.port())], ..Default::default() })
        .await
        .unwrap();
    admin.create_route(open_route("r", "svc", "/")).await.unwrap();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = get(node.proxy_addr, "/", &[("traceparent", incoming)]).await;
    let forwarded = reply.json()["headers"]["traceparent"].as_str().unwrap().to_string();
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the gateway's span is the upstream's parent");
    let fresh = get(node.proxy_addr, "/", &[]).await.json()["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(fresh.len(), 55, "a request without one starts a trace: {fresh}");
    node.shutdown().await;
}

#[tokio::test]
async fn hundred_route_changes_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let (a, b) = (Flex::start("a").await, Flex::start("b").await);
    admin
        .create_service(Service { name: "a".into(), targets: vec![target(a.port())], ..Default::default() })
        .await
        .unwrap();
    admin
        .create_service(Service { name: "b".into(), targets: vec![target(b.port())], ..Default::default() })
        .await
        .unwrap();
    admin.create_route(open_route("live", "a", "/live")).await.unwrap();
    admin.create_consumer(Consumer { name: "c".into(), ..Default::default() }).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, proxy) = (stop.clone(), ok.clone(), failed.clone(), node.proxy_addr);
        workers.push(tokio::spawn(async move {
            let client = http_client();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(format!("http://{proxy}/live/x")).body(full("")).unwrap();
                match client.request(request).await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for i in 0..100 {
        let mut route = admin
            .get_route(tollgate_proto::admin::v1::GetRequest { id_or_name: "live".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        route.service_id = if i % 2 == 0 { "b".into() } else { "a".into() };
        route.strip_prefix = i % 3 == 0;
        route.request_headers = Some(HeaderTransform {
            set: vec![HeaderPair { name: "x-rev".into(), value: i.to_string() }],
            ..Default::default()
        });
        admin.update_route(route).await.unwrap();
        // Key and service changes ride along.
        if i % 10 == 0 {
            admin
                .create_api_key(tollgate_proto::admin::v1::CreateApiKeyRequest {
                    consumer: "c".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 100, "the load actually ran");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed during 100 route changes");
    assert!(a.hits() > 0 && b.hits() > 0, "both services served traffic");
    node.shutdown().await;
}
