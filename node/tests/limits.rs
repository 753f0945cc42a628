//! Every wait is bounded and every resource capped (DESIGN §8, issue 11 §6),
//! over raw sockets against a real node: AI request bodies are read under
//! the route's request timeout, the proxy's connections are capped (idle ones
//! make room, the admin API and ops keep answering), and clients that stall
//! on the ops or proxy listener are cut off.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TOKEN, admin_client, ai_route, consumer_with_key};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};
use tollgate_loadtest::mock::llm::LlmMockConfig;
use tollgate_loadtest::mock::openai::MockOpenAi;
use tollgate_node::{Config, Node};
use tollgate_proto::admin::v1::ListRequest;
use tollgate_proto::admin::v1::ai_service_client::AiServiceClient;
use tollgate_proto::config::v1::{
    AuthMode, PathMatch, Provider, ProviderCredential, ProviderKind, Route, Service, Target,
};
use tonic::transport::Channel;

/// The longest any test waits for something that should happen (much) sooner.
const PATIENCE: Duration = Duration::from_secs(20);

async fn start(configure: impl FnOnce(&mut Config)) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    configure(&mut config);
    (Node::start(config).await.expect("node starts"), dir)
}

/// An open route at `/` to a test upstream.
async fn proxy_to(node: &Node, upstream: &common::Upstream) {
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let target = Target { host: "127.0.0.1".into(), port: upstream.addr.port().into(), weight: 1 };
    admin.create_service(Service { name: "svc".into(), targets: vec![target], ..Default::default() }).await.unwrap();
    admin.create_route(common::route("all", "svc", PathMatch::Prefix, "/", AuthMode::None)).await.unwrap();
}

struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await.expect("reads a response");
        assert!(n > 0, "connection closed before a response head: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    let mut body = got[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.expect("reads the body");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    RawResponse { status, head, body }
}

/// Reads until the peer closes (EOF or reset) and returns what came, or
/// panics if it is still open after [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("{what}: the connection is still open after {PATIENCE:?}"),
        }
    }
}

async fn metrics(ops: SocketAddr) -> String {
    String::from_utf8_lossy(&common::get(ops, "/metrics", &[]).await.body).into_owned()
}

/// The value of the first sample whose name and labels start with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{', '}', ',']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits (bounded) until a metric satisfies `ok`; returns the scrape.
async fn wait_for_metric(ops: SocketAddr, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = metrics(ops).await;
        if sample(&text, series).is_some_and(&ok) {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never reached the expected value:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(node: &Node) -> u16 {
    common::get(node.ops_addr, "/readyz", &[]).await.status.as_u16()
}

async fn admin_answers(node: &Node) {
    // A new connection, as an operator arriving to investigate would open.
    let mut admin = timeout(PATIENCE, admin_client(node.admin_addr, TOKEN)).await.expect("admin accepts");
    let routes = timeout(PATIENCE, admin.list_routes(ListRequest::default())).await.expect("admin answers");
    routes.expect("admin API answers");
}

#[tokio::test]
async fn a_stalled_ai_request_body_gets_408_in_the_callers_format_and_never_reaches_the_provider() {
    let mock = MockOpenAi::spawn(LlmMockConfig::default()).await.unwrap();
    let (node, _dir) = start(|_| {}).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let (_, key) = consumer_with_key(&mut admin, "app").await;
    // The body, like a REST body held for retries, must arrive within this.
    admin.create_route(Route { request_timeout_ms: 500, ..ai_route() }).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap();
    let mut ai = AiServiceClient::with_interceptor(channel, common::Bearer(TOKEN.into()));
    ai.create_provider(Provider {
        name: "openai".into(),
        kind: ProviderKind::Openai as i32,
        base_url: format!("{}/v1", mock.url()),
        credentials: vec![ProviderCredential { id: "k1".into(), secret: "sk-k1".into(), ..Default::default() }],
        ..Default::default()
    })
    .await
    .unwrap();

    for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let mut stream = TcpStream::connect(node.proxy_addr).await.unwrap();
        // Promises a 1 KiB chunk, sends 40 bytes of it, then stalls (and keeps the connection open).
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n\
             anthropic-version: 2023-06-01\r\ntransfer-encoding: chunked\r\n\r\n400\r\n{{\"model\": \"openai/gpt-4o\", \"max_tokens\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let response = timeout(PATIENCE, read_response(&mut stream)).await.expect("answered while the body stalls");
        assert_eq!(response.status, 408, "{}", response.head);
        let body: Value = serde_json::from_slice(&response.body).unwrap();
        let message = if anthropic {
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["error"]["type"], "timeout_error", "{body}");
            body["error"]["message"].as_str().unwrap().to_string()
        } else {
            assert_eq!(body["error"]["code"], "timeout", "{body}");
            body["error"]["message"].as_str().unwrap().to_string()
        };
        assert!(message.contains("did not arrive within 500 ms"), "{message}");
        assert_eq!(mock.requests_served(), 0, "the provider is never called for a body that never came");
    }
}

#[tokio::test]
async fn at_max_connections_idle_connections_make_room_and_admin_and_ops_keep_answering() {
    let upstream = common::Upstream::start("u").await;
    let (node, _dir) = start(|c| c.proxy.max_connections = 8).await;
    proxy_to(&node, &upstream).await;
    let get = "GET /x HTTP/1.1\r\nhost: t\r\n\r\n";

    // Eight keep-alive clients fill the proxy; each has been served once.
    let mut kept = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(node.proxy_addr).await.unwrap();
        stream.write_all(get.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
        kept.push(stream);
    }
    wait_for_metric(node.ops_addr, "tollgate_proxy_connections", |v| v == 8.0).await;

    // Idle newcomers that send nothing: the first takes the place of the
    // oldest keep-alive connection, each later one that of the newcomer
    // before it (connections that never sent a request go first), so the
    // established clients keep theirs.
    let mut newcomers = Vec::new();
    for k in 1..=4 {
        newcomers.push(TcpStream::connect(node.proxy_addr).await.unwrap());
        wait_for_metric(node.ops_addr, "tollgate_proxy_connections_evicted_total", |v| v >= f64::from(k)).await;
    }
    read_until_closed(&mut kept[0], "the oldest idle keep-alive connection").await;
    for (i, stream) in newcomers.iter_mut().take(3).enumerate() {
        read_until_closed(stream, &format!("newcomer {i}")).await;
    }
    for stream in &mut kept[1..] {
        stream.write_all(get.as_bytes()).await.unwrap();
        assert_eq!(read_response(stream).await.status, 200, "an established client keeps its connection");
    }

    // The rest of the node is unaffected.
    admin_answers(&node).await;
    assert_eq!(readyz(&node).await, 200);

    // A new proxy client is served: the idle newcomer makes room for it.
    let reply = common::get(node.proxy_addr, "/fresh", &[]).await;
    assert_eq!(reply.status, 200);
    read_until_closed(&mut newcomers[3], "the last idle newcomer").await;
    let text = metrics(node.ops_addr).await;
    assert!(sample(&text, "tollgate_proxy_connections").unwrap() <= 8.0, "{text}");
    assert_eq!(sample(&text, "tollgate_proxy_connections_refused_total"), Some(0.0), "{text}");
}

#[tokio::test]
async fn at_max_connections_with_none_idle_new_connections_are_closed_at_once() {
    let upstream = common::Upstream::start("u").await;
    let (node, _dir) = start(|c| {
        c.proxy.max_connections = 4;
        c.proxy.drain_timeout_ms = 200;
    })
    .await;
    proxy_to(&node, &upstream).await;

    // Four clients, each with a request the upstream never answers.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(node.proxy_addr).await.unwrap();
        stream.write_all(b"GET /hang HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
        busy.push(stream);
    }
    let deadline = Instant::now() + PATIENCE;
    while upstream.hits.load(std::sync::atomic::Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "the requests never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut refused = TcpStream::connect(node.proxy_addr).await.unwrap();
    let got = read_until_closed(&mut refused, "a connection beyond the cap").await;
    assert!(got.is_empty(), "closed without a response: {:?}", String::from_utf8_lossy(&got));
    wait_for_metric(node.ops_addr, "tollgate_proxy_connections_refused_total", |v| v >= 1.0).await;
    admin_answers(&node).await;
    assert_eq!(readyz(&node).await, 200);

    // Shutdown ends the hung requests after the drain timeout instead of waiting for them.
    timeout(PATIENCE, node.shutdown()).await.expect("shutdown is bounded by the drain timeout");
    for (i, stream) in busy.iter_mut().enumerate() {
        read_until_closed(stream, &format!("busy client {i} after shutdown")).await;
    }
}

#[tokio::test]
async fn a_proxy_client_that_stops_reading_is_cut_off_and_the_upstream_released() {
    let upstream = common::Upstream::start("u").await;
    let (node, _dir) = start(|c| c.proxy.client_send_timeout_ms = 300).await;
    proxy_to(&node, &upstream).await;

    // 64 MiB through a small receive window that is never read: far more
    // than the socket buffers on both sides hold.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(node.proxy_addr).await.unwrap();
    stream.write_all(b"GET /big/67108864 HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();

    wait_for_metric(node.ops_addr, "tollgate_client_send_timeouts_total{listener=\"proxy\"", |v| v >= 1.0).await;
    // The upstream response was dropped with the client connection.
    wait_for_metric(node.ops_addr, "tollgate_upstream_in_flight", |v| v == 0.0).await;
    let got = read_until_closed(&mut stream, "the stalled client").await;
    assert!(got.len() < 64 << 20, "cut off before the whole response");
}

#[tokio::test]
async fn ops_closes_clients_that_send_nothing_half_a_head_or_idle_after_a_request() {
    let (node, _dir) = start(|c| c.ops.client_idle_timeout_ms = 300).await;

    let mut silent = TcpStream::connect(node.ops_addr).await.unwrap();
    let mut half = TcpStream::connect(node.ops_addr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nhost: ops\r\n").await.unwrap();
    let mut idle = TcpStream::connect(node.ops_addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: ops\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);

    assert!(read_until_closed(&mut silent, "a client that sent nothing").await.is_empty());
    let got = read_until_closed(&mut half, "a client that sent half a head").await;
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "no answer to half a request");
    assert!(read_until_closed(&mut idle, "an idle keep-alive client").await.is_empty());
    assert_eq!(readyz(&node).await, 200, "ops still answers others");
}

#[tokio::test]
async fn ops_cuts_off_a_client_that_stops_reading_metrics() {
    let (node, _dir) = start(|c| {
        c.ops.client_send_timeout_ms = 300;
        // Long enough that only the send timeout can close the connection.
        c.ops.client_idle_timeout_ms = 600_000;
    })
    .await;

    // Thousands of pipelined scrapes through a tiny receive window that is
    // never read: their answers fill both sides' socket buffers.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.ops_addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    const SCRAPES: usize = 4000;
    let writer = tokio::spawn(async move {
        let request = b"GET /metrics HTTP/1.1\r\nhost: ops\r\n\r\n".repeat(SCRAPES);
        // Fails once the server cuts the connection; that is expected.
        let _ = write.write_all(&request).await;
        write
    });

    wait_for_metric(node.ops_addr, "tollgate_client_send_timeouts_total{listener=\"ops\"", |v| v >= 1.0).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the stalled scraper's connection is still open"),
        }
    }
    let answered = got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert!(answered < SCRAPES, "cut off before all {SCRAPES} answers ({answered})");
    writer.abort();
    assert_eq!(readyz(&node).await, 200);
}

#[tokio::test]
async fn ops_closes_connections_beyond_its_cap() {
    let (node, _dir) = start(|c| {
        c.ops.max_connections = 2;
        // Long enough that only the cap can close the third connection.
        c.ops.client_idle_timeout_ms = 600_000;
    })
    .await;
    let held = [TcpStream::connect(node.ops_addr).await.unwrap(), TcpStream::connect(node.ops_addr).await.unwrap()];
    // Both are accepted before the third: the listener takes them in order.
    let mut third = TcpStream::connect(node.ops_addr).await.unwrap();
    assert!(read_until_closed(&mut third, "a connection beyond ops.max_connections").await.is_empty());
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        // The held connections' places come back once the server sees them close.
        let mut probe = TcpStream::connect(node.ops_addr).await.unwrap();
        probe.write_all(b"GET /healthz HTTP/1.1\r\nhost: ops\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = probe.read(&mut buf).await
            && n > 0
        {
            assert!(buf.starts_with(b"HTTP/1.1 200"));
            break;
        }
        assert!(Instant::now() < deadline, "ops never accepted again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 client multiplies its requests over one connection; each may
/// hold an upstream connection for as long as the upstream (or the client's
/// flow-control window) keeps it, so upstream requests in flight share the
/// cap: past it they get 503 `overloaded`, and the upstream never sees them.
#[tokio::test]
async fn upstream_requests_in_flight_are_capped_like_connections() {
    let upstream = common::Upstream::start("u").await;
    let (node, _dir) = start(|c| c.proxy.max_connections = 2).await;
    proxy_to(&node, &upstream).await;
    let client = common::h2c_client();
    let proxy = node.proxy_addr;
    // Five requests on one HTTP/2 connection to a path the upstream never answers.
    let mut hanging = Vec::new();
    for _ in 0..5 {
        let client = client.clone();
        hanging.push(tokio::spawn(async move {
            let request = http::Request::get(format!("http://{proxy}/hang")).body(common::full("")).unwrap();
            common::send(&client, request).await
        }));
    }
    // Three come back refused; two stay with the upstream.
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        refused = hanging.iter().filter(|task| task.is_finished()).count();
    }
    assert_eq!(refused, 3, "three of five requests should have been refused");
    for task in hanging.iter_mut().filter(|task| task.is_finished()) {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, http::StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
        assert_eq!(reply.json()["error"]["code"], "overloaded");
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 2, "the refused ones never reached it");
    for task in hanging {
        task.abort();
    }
}
