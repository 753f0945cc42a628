//! Data-plane policies end to end: a real node (RocksDB in a temp dir,
//! run-time ports), real upstreams, real clients. Where a test waits for a
//! background effect (a health probe, a certificate reload) it polls with a
//! bound; nothing asserts on durations.

mod common;
#[path = "dataplane/flex.rs"]
mod flex;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use flex::Flex;
use http::{Request, StatusCode};
use tollgate_proto::config::v1::*;

fn target(port: u32, weight: u32) -> Target {
    Target { host: "127.0.0.1".into(), port, weight }
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

fn upstream_of(reply: &Reply) -> String {
    reply.headers.get("x-upstream").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// A consistent-hash service named `name` over `ports`, keyed by the request
/// header `header`, with an open route on `/name`.
async fn hashed_service(admin: &mut common::Admin, name: &str, header: &str, ports: &[u32]) {
    let service = Service {
        name: name.into(),
        targets: ports.iter().map(|port| target(*port, 1)).collect(),
        lb_policy: LbPolicy::ConsistentHash as i32,
        hash_on: HashOn::Header as i32,
        hash_header: header.into(),
        ..Default::default()
    };
    admin.create_service(service).await.unwrap();
    admin.create_route(open_route(name, name, &format!("/{name}"))).await.unwrap();
}

/// For 30 keys, sends each spelling `spellings(key)` gives in `header`
/// `times` times: all of one key's requests must reach one target, and the
/// keys must spread over all three.
async fn assert_sticky_and_spread(
    proxy: std::net::SocketAddr,
    path: &str,
    header: &str,
    times: usize,
    spellings: impl Fn(usize) -> Vec<String>,
) {
    let mut owners = HashMap::new();
    for key in 0..30 {
        let mut counts = HashMap::new();
        for spelling in spellings(key) {
            for (owner, n) in tally(proxy, path, times, &[(header, spelling.as_str())]).await {
                *counts.entry(owner).or_insert(0) += n;
            }
        }
        assert_eq!(counts.len(), 1, "every request of key {key} reaches one target: {counts:?}");
        *owners.entry(counts.into_keys().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(owners.len(), 3, "30 keys spread over all three targets: {owners:?}");
}

async fn tally(proxy: std::net::SocketAddr, path: &str, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = get(proxy, path, headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        *counts.entry(upstream_of(&reply)).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn each_balancing_policy_distributes_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let (a, b, c) = (Flex::start("a").await, Flex::start("b").await, Flex::start("c").await);

    // Round robin: equal shares, in turn.
    let rr = Service {
        name: "rr".into(),
        targets: vec![target(a.port(), 1), target(b.port(), 1), target(c.port(), 1)],
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    admin.create_service(rr).await.unwrap();
    admin.create_route(open_route("rr", "rr", "/rr")).await.unwrap();
    let counts = tally(node.proxy_addr, "/rr", 30, &[]).await;
    assert_eq!(counts, HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]));

    // Weighted: 3:1.
    let weighted = Service {
        name: "weighted".into(),
        targets: vec![target(a.port(), 3), target(b.port(), 1)],
        ..Default::default()
    };
    admin.create_service(weighted).await.unwrap();
    admin.create_route(open_route("weighted", "weighted", "/weighted")).await.unwrap();
    let counts = tally(node.proxy_addr, "/weighted", 40, &[]).await;
    assert_eq!(counts, HashMap::from([("a".into(), 30), ("b".into(), 10)]));

    // Consistent hash on a header: a key sticks to one target; keys spread.
    let three = [a.port(), b.port(), c.port()];
    hashed_service(&mut admin, "hashed", "x-user", &three).await;
    assert_sticky_and_spread(node.proxy_addr, "/hashed", "x-user", 3, |user| vec![format!("user-{user}")]).await;

    // Consistent hash on Host: the validated authority is the key, so the
    // spellings of one host (case, the default port) stick to one target.
    hashed_service(&mut admin, "by-host", "host", &three).await;
    assert_sticky_and_spread(node.proxy_addr, "/by-host", "host", 2, |tenant| {
        vec![
            format!("tenant-{tenant}.example"),
            format!("Tenant-{tenant}.EXAMPLE"),
            format!("tenant-{tenant}.example:80"),
        ]
    })
    .await;

    // Least connections: while one target holds a request, new ones go to the other.
    let least = Service {
        name: "least".into(),
        targets: vec![target(a.port(), 1), target(b.port(), 1)],
        lb_policy: LbPolicy::LeastConnections as i32,
        ..Default::default()
    };
    admin.create_service(least).await.unwrap();
    admin.create_route(open_route("least", "least", "/least")).await.unwrap();
    let proxy = node.proxy_addr;
    let held = tokio::spawn(async move { get(proxy, "/least/hold", &[]).await });
    eventually("a request is held", async || {
        a.state.holding.load(std::sync::atomic::Ordering::SeqCst)
            + b.state.holding.load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    let busy = if a.state.holding.load(std::sync::atomic::Ordering::SeqCst) == 1 { "a" } else { "b" };
    let counts = tally(node.proxy_addr, "/least", 10, &[]).await;
    assert_eq!(counts.len(), 1, "all to the idle target: {counts:?}");
    assert!(!counts.contains_key(busy), "the busy target {busy} got traffic: {counts:?}");
    a.state.release.notify_waiters();
    b.state.release.notify_waiters();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    node.shutdown().await;
}

#[tokio::test]
async fn unhealthy_targets_are_ejected_and_return_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let (a, b) = (Flex::start("a").await, Flex::start("b").await);

    // Active checks: probes every 50 ms, 2 failures to eject, 2 successes to return.
    let probed = Service {
        name: "probed".into(),
        targets: vec![target(a.port(), 1), target(b.port(), 1)],
        health_check: Some(HealthCheck {
            path: "/health".into(),
            interval_ms: 100,
            timeout_ms: 500,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }),
        ..Default::default()
    };
    admin.create_service(probed).await.unwrap();
    admin.create_route(open_route("probed", "probed", "/")).await.unwrap();
    b.state.unhealthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let proxy = node.proxy_addr;
    eventually("b is ejected", async || !tally(proxy, "/", 10, &[]).await.contains_key("b")).await;
    let before = b.hits();
    assert_eq!(tally(proxy, "/", 20, &[]).await.get("a"), Some(&20), "all traffic on the healthy target");
    assert_eq!(b.hits(), before, "the ejected target gets no requests");
    b.state.unhealthy.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("b returns", async || tally(proxy, "/", 10, &[]).await.get("b").is_some_and(|n| *n >= 4)).await;

    // Passive checks: three consecutive 5xx eject the target without any probe.
    let passive = Service {
        name: "passive".into(),
        targets: vec![target(a.port(), 1), target(b.port(), 1)],
        outlier_detection: Some(OutlierDetection { consecutive_failures: 3, ejection_ms: 600_000 }),
        ..Default::default()
    };
    admin.create_service(passive).await.unwrap();
    admin.create_route(open_route("passive", "passive", "/passive")).await.unwrap();
    b.state.fail_with.store(500, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..6 {
        get(proxy, "/passive", &[]).await;
    }
    let before = b.hits();
    assert_eq!(tally(proxy, "/passive", 20, &[]).await.get("a"), Some(&20));
    assert_eq!(b.hits(), before, "the ejected target gets no requests");
    node.shutdown().await;
}

#[tokio::test]
async fn retries_repeat_idempotent_requests_but_never_a_post() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let (bad, good) = (Flex::start("bad").await, Flex::start("good").await);
    bad.state.fail_with.store(503, std::sync::atomic::Ordering::SeqCst);
    let svc = Service {
        name: "retrying".into(),
        targets: vec![target(bad.port(), 1), target(good.port(), 1), target(u32::from(dead_port().await), 1)],
        // Every request may pay for a retry, so the budget never runs out here.
        retry: Some(RetryPolicy { attempts: 2, budget_percent: 100, ..Default::default() }),
        ..Default::default()
    };
    admin.create_service(svc).await.unwrap();
    admin.create_route(open_route("retrying", "retrying", "/")).await.unwrap();

    // Every GET succeeds: a 503 or a refused connection moves on to another target.
    for _ in 0..4 {
        let reply = get(node.proxy_addr, "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(upstream_of(&reply), "good");
    }
    // A PUT is idempotent: its body is held and sent again whole to the next target.
    let bad_before = bad.hits();
    for i in 0..3 {
        let request =
            Request::put(format!("http://{}/doc/{i}", node.proxy_addr)).body(full(format!("version={i}"))).unwrap();
        let reply = send(&http_client(), request).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(upstream_of(&reply), "good");
        assert_eq!(
            (reply.json()["method"].as_str(), reply.json()["body"].as_str()),
            (Some("PUT"), Some(&*format!("version={i}")))
        );
    }
    assert!(bad.hits() > bad_before, "some PUTs reached the failing target first and were retried");
    // One too large to hold streams to a single target and is not retried.
    let mut large_statuses = Vec::new();
    for _ in 0..6 {
        let body = "x".repeat(tollgate_node::proxy::RETRY_BUFFER_BYTES as usize + 1);
        let request = Request::put(format!("http://{}/big", node.proxy_addr)).body(full(body)).unwrap();
        large_statuses.push(send(&http_client(), request).await.status);
    }
    assert!(large_statuses.contains(&StatusCode::SERVICE_UNAVAILABLE), "{large_statuses:?}");

    // POSTs reach exactly one target, once each, whatever it answers.
    let (bad_before, good_before) = (bad.hits(), good.hits());
    let mut statuses = Vec::new();
    for _ in 0..9 {
        let request = Request::post(format!("http://{}/", node.proxy_addr)).body(full("order=1")).unwrap();
        statuses.push(send(&http_client(), request).await.status);
    }
    let posts = (bad.hits() - bad_before) + (good.hits() - good_before);
    let refused = statuses.iter().filter(|s| **s == StatusCode::BAD_GATEWAY).count();
    assert_eq!(posts + refused, 9, "each POST was sent once, or failed to connect: {statuses:?}");
    assert_eq!(
        bad.state.posts.load(std::sync::atomic::Ordering::SeqCst),
        statuses.iter().filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE).count()
    );
    assert!(statuses.contains(&StatusCode::SERVICE_UNAVAILABLE), "a failed POST is returned, not retried");
    node.shutdown().await;
}

#[tokio::test]
async fn timeouts_give_504_and_an_open_circuit_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let slow = Upstream::start("slow").await;
    admin
        .create_service(Service {
            name: "slow".into(),
            targets: vec![target(u32::from(slow.addr.port()), 1)],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut hang = open_route("hang", "slow", "/hang");
    hang.request_timeout_ms = 200;
    admin.create_route(hang).await.unwrap();
    let reply = get(node.proxy_addr, "/hang", &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("200 ms"), "the route's timeout applies");

    let failing = Flex::start("failing").await;
    failing.state.fail_with.store(500, std::sync::atomic::Ordering::SeqCst);
    let svc = Service {
        name: "breaker".into(),
        targets: vec![target(failing.port(), 1)],
        circuit_breaker: Some(CircuitBreaker { failure_threshold: 3, open_ms: 600_000 }),
        ..Default::default()
    };
    admin.create_service(svc).await.unwrap();
    admin.create_route(open_route("breaker", "breaker", "/breaker")).await.unwrap();
    for _ in 0..3 {
        assert_eq!(get(node.proxy_addr, "/breaker", &[]).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let hits = failing.hits();
    let reply = get(node.proxy_addr, "/breaker", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], "circuit_open");
    assert_eq!(failing.hits(), hits, "an open circuit does not call the upstream");
    node.shutdown().await;
}

/// Reads from a raw client connection until the server closes it, for at most 15 s.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read_all).await.expect("the server closes the connection");
    seen
}

#[tokio::test]
async fn idle_and_slow_header_client_connections_are_closed_but_slow_responses_are_not() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.proxy.client_idle_timeout_ms = 300;
    let node = tollgate_node::Node::start(config).await.unwrap();
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Flex::start("u").await;
    let svc = Service { name: "svc".into(), targets: vec![target(upstream.port(), 1)], ..Default::default() };
    admin.create_service(svc).await.unwrap();
    admin.create_route(open_route("all", "svc", "/")).await.unwrap();

    // A client that connects and sends nothing is cut off, on plain TCP
    // before hyper even knows HTTP/1 from HTTP/2.
    let mut silent = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    assert!(closed_by_server(&mut silent).await.is_empty());
    let mut trickle = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    trickle.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_by_server(&mut trickle).await.is_empty(), "half an HTTP/2 preface");

    // A client that never finishes its request head (slowloris) is cut off.
    let mut slow = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
    assert!(closed_by_server(&mut slow).await.is_empty(), "no response to a request never completed");

    // A keep-alive connection gets its answer, then is closed once idle.
    let mut idle = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let answered = String::from_utf8(closed_by_server(&mut idle).await).unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // A response slower than the idle timeout is not cut: the timeout only
    // runs while the gateway waits for a request head.
    let proxy = node.proxy_addr;
    let held = tokio::spawn(async move { get(proxy, "/hold", &[]).await });
    eventually("the request reaches the upstream", async || {
        upstream.state.holding.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    upstream.state.release.notify_waiters();
    let reply = held.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["path"], "/hold");
    node.shutdown().await;
}

#[tokio::test]
async fn per_route_connect_and_idle_timeouts() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;

    // A target whose accept queue is full: the kernel drops further
    // connection attempts, so connecting hangs (all on loopback).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(tokio::net::TcpStream::connect(full_addr).await.unwrap());
    }
    let svc = Service {
        name: "unreachable".into(),
        targets: vec![target(u32::from(full_addr.port()), 1)],
        ..Default::default()
    };
    admin.create_service(svc).await.unwrap();
    let mut quick = open_route("quick", "unreachable", "/quick");
    quick.connect_timeout_ms = 200;
    admin.create_route(quick).await.unwrap();
    let reply = get(node.proxy_addr, "/quick", &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("connecting") && message.contains("200 ms"), "the route's connect timeout: {message}");

    // The idle timeout cuts a response whose upstream goes quiet mid-body.
    let upstream = Upstream::start("u").await;
    let svc = Service {
        name: "streaming".into(),
        targets: vec![target(u32::from(upstream.addr.port()), 1)],
        ..Default::default()
    };
    admin.create_service(svc).await.unwrap();
    let mut idle = open_route("idle", "streaming", "/stream-echo");
    idle.idle_timeout_ms = 200;
    admin.create_route(idle).await.unwrap();
    let (tx, body) = channel_body();
    let request = Request::post(format!("http://{}/stream-echo", node.proxy_addr)).body(body).unwrap();
    tx.send(bytes::Bytes::from_static(b"first")).await.unwrap();
    let response = http_client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    // The client keeps its request open and sends nothing more: the upstream
    // echoes nothing more, and the gateway ends the response with an error.
    let rest = tokio::time::timeout(Duration::from_secs(15), body.collect()).await.expect("the response is cut");
    assert!(rest.is_err(), "an idle response ends in an error, not as if complete");
    drop(tx);

    // A retryable request's body is held before sending, within the request
    // timeout: a client that sends only part of it gets 408.
    let svc = Service {
        name: "retrying".into(),
        targets: vec![target(u32::from(upstream.addr.port()), 1)],
        retry: Some(RetryPolicy { attempts: 1, ..Default::default() }),
        ..Default::default()
    };
    admin.create_service(svc).await.unwrap();
    let mut slow_body = open_route("slow-body", "retrying", "/slow-body");
    slow_body.request_timeout_ms = 300;
    admin.create_route(slow_body).await.unwrap();
    let mut client = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client.write_all(b"PUT /slow-body HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf.").await.unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(15), client.read_exact(&mut head)).await.unwrap().unwrap();
        assert_eq!(&head, b"HTTP/1.1 408");
    }
    node.shutdown().await;
}
