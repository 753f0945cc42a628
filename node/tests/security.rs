//! The data path attacked as issue 11 describes, over raw sockets, asserting
//! what the upstream actually received (DESIGN §8's invariants):
//! 1. a request never leaves the route that authorized it (paths);
//! 2. only the gateway speaks for a consumer (identity headers);
//! 3. the cache never serves one caller's private response to another;
//! 4. one validated authority per request;
//! 5. a client's own bad request never counts against an upstream.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_proto::config::v1::*;

// === a raw upstream ===

/// One request as the upstream's socket received it.
#[derive(Debug, Clone)]
struct Received {
    /// The request line and header lines, exactly as sent (no normalisation).
    head: String,
}

impl Received {
    fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    /// Every value of header `name` (compared exactly, case-insensitively;
    /// `x_consumer_id` is not `x-consumer-id`).
    fn values(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// Header names that, read as CGI/WSGI reads them (`_` = `-`), are `name`.
    fn any_spelling(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().replace('_', "-").eq_ignore_ascii_case(name))
            .map(|(n, v)| format!("{}: {}", n.trim(), v.trim()))
            .collect()
    }
}

/// What the raw upstream answers: a status line's code and reason, and
/// headers added to its own content-length and `connection: close`.
#[derive(Clone)]
struct CannedResponse {
    status: String,
    headers: Vec<(String, String)>,
}

/// An HTTP/1.1 upstream that records each request head verbatim and answers
/// `n=<count>` with the status and response headers the test sets, closing
/// every connection after one exchange.
struct RawUpstream {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    response: Arc<Mutex<CannedResponse>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let response = Arc::new(Mutex::new(CannedResponse { status: "200 OK".into(), headers: Vec::new() }));
        let (log, canned) = (received.clone(), response.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(Self::exchange(stream, log.clone(), canned.clone()));
            }
        });
        RawUpstream { port, received, response, task }
    }

    async fn exchange(mut stream: TcpStream, log: Arc<Mutex<Vec<Received>>>, canned: Arc<Mutex<CannedResponse>>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let received = Received { head };
        let length: usize = received.values("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
        let chunked = received.values("transfer-encoding").iter().any(|v| v.contains("chunked"));
        let mut body = buf[head_end + 4..].to_vec();
        // Read the whole body first: a request whose body never completes is never answered.
        loop {
            let complete = if chunked { body.ends_with(b"0\r\n\r\n") } else { body.len() >= length };
            if complete {
                break;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let count = {
            let mut log = log.lock().unwrap();
            log.push(received);
            log.len()
        };
        let body = format!("n={count}");
        let canned = canned.lock().unwrap().clone();
        let mut response =
            format!("HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n", canned.status, body.len());
        for (name, value) in &canned.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&body);
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn last(&self) -> Received {
        self.received.lock().unwrap().last().cloned().expect("the upstream received a request")
    }

    fn respond_with(&self, headers: &[(&str, &str)]) {
        self.respond_as("200 OK", headers);
    }

    /// Answers from now on with `status` (code and reason) and `headers`.
    fn respond_as(&self, status: &str, headers: &[(&str, &str)]) {
        *self.response.lock().unwrap() = CannedResponse {
            status: status.into(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        };
    }
}

// === a raw client ===

struct RawReply {
    status: u16,
    head: String,
    body: String,
}

impl RawReply {
    /// Every value of header `name`, in order.
    fn values(&self, name: &str) -> Vec<String> {
        let lines = self.head.lines().skip(1).filter_map(|l| l.split_once(':'));
        lines.filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()).collect()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }
}

/// Writes `request` byte for byte and reads the reply until the proxy
/// closes (every request here says `Connection: close`, or is refused).
async fn raw(proxy: std::net::SocketAddr, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the proxy neither answered nor closed: {:?}", String::from_utf8_lossy(&got));
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    RawReply { status, head: head.to_string(), body: body.to_string() }
}

async fn get_raw(proxy: std::net::SocketAddr, target: &str, extra: &str) -> RawReply {
    raw(proxy, format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{extra}\r\n").as_bytes()).await
}

// === set-up ===

/// A node, its admin client, and for each name a raw upstream that is the
/// only target of a service of that name.
async fn node_with_services<const N: usize>(
    dir: &std::path::Path,
    names: [&str; N],
) -> (tollgate_node::Node, Admin, [RawUpstream; N]) {
    let node = start_node(dir).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut upstreams = Vec::with_capacity(N);
    for name in names {
        let upstream = RawUpstream::start().await;
        service(&mut admin, name, upstream.port).await;
        upstreams.push(upstream);
    }
    let Ok(upstreams) = upstreams.try_into() else { unreachable!("one upstream per name") };
    (node, admin, upstreams)
}

async fn service(admin: &mut Admin, name: &str, port: u16) {
    let target = Target { host: "127.0.0.1".into(), port: u32::from(port), weight: 1 };
    admin.create_service(Service { name: name.into(), targets: vec![target], ..Default::default() }).await.unwrap();
}

// === 1. paths ===

#[tokio::test]
async fn a_request_never_leaves_the_route_that_authorized_it() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut admin, [public, private]) = node_with_services(dir.path(), ["public", "private"]).await;
    admin.create_route(route("pub", "public", PathMatch::Prefix, "/pub", AuthMode::None)).await.unwrap();
    let mut stripped = route("stripped", "public", PathMatch::Prefix, "/s", AuthMode::None);
    stripped.strip_prefix = true;
    admin.create_route(stripped).await.unwrap();
    let mut item = route("item", "public", PathMatch::Template, "/t/{id}", AuthMode::None);
    item.rewrite_path = "/items/{id}".into();
    admin.create_route(item).await.unwrap();
    admin.create_route(route("admin", "private", PathMatch::Prefix, "/admin", AuthMode::ApiKey)).await.unwrap();
    admin.create_route(route("billing", "private", PathMatch::Exact, "/billing", AuthMode::ApiKey)).await.unwrap();
    admin.create_route(route("root", "public", PathMatch::Prefix, "/", AuthMode::None)).await.unwrap();

    // Every spelling of "up and into /admin" is the /admin route's: it needs a key.
    for target in [
        "/pub/../admin/secret.txt",
        "/pub/%2e%2e/admin/secret.txt",
        "/pub/%2E%2e/admin/secret.txt",
        "/pub/.%2e/admin/secret.txt",
        "/pub/./../admin/secret.txt",
        "/s/../admin/secret.txt",
        "/pub/x/../../admin/secret.txt",
        "/pub/../%61dmin/secret.txt",
        "/admin;x/secret.txt",
        "//admin/secret.txt",
        "/billing/",
        "/x/../billing",
    ] {
        let reply = get_raw(node.proxy_addr, target, "").await;
        assert_eq!(reply.status, 401, "{target}: {}", reply.body);
    }
    assert_eq!(public.count() + private.count(), 0, "no traversal reached any upstream");

    // Encoded separators, NUL, backslashes and servlet dot segments are refused outright.
    for target in [
        "/t/..%2f..%2fadmin%2fsecret.txt",
        "/t/..%2F..%2Fadmin",
        "/pub/..%5cadmin",
        "/pub/%00/x",
        "/pub/..;/admin/secret.txt",
        "/pub/%zz",
    ] {
        let reply = get_raw(node.proxy_addr, target, "").await;
        assert_eq!(reply.status, 400, "{target}: {}", reply.body);
        assert!(reply.body.contains("invalid_path"), "{target}: {}", reply.body);
    }
    assert_eq!(public.count(), 0);

    // What was matched is what is forwarded: normalised, then stripped or rewritten.
    let cases = [
        ("/pub/a/./b/../c?q=%2e%2e", "/pub/a/c?q=%2e%2e"),
        ("/pub/%7euser/caf%c3%a9", "/pub/~user/caf%C3%A9"),
        ("/pub//a//b", "/pub/a/b"),
        ("/s/x/../y", "/y"),
        ("/s/../s/z", "/z"),
        ("/t/%34%32", "/items/42"),
    ];
    for (sent, received) in cases {
        let reply = get_raw(node.proxy_addr, sent, "").await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.body);
        assert_eq!(public.last().target(), received, "{sent}");
    }
    assert_eq!(private.count(), 0);
    node.shutdown().await;
}

/// Hop-by-hop headers of the upstream's answer stop at the gateway (RFC 9110
/// §7.6.1), the ones its Connection names included. A 426 must carry an
/// Upgrade (§15.5.22): the client gets the gateway's own offer, WebSocket
/// if the upstream offered it (the one upgrade the gateway carries), with
/// the `upgrade` connection option (§7.8).
#[tokio::test]
async fn the_upstreams_hop_by_hop_headers_stop_at_the_gateway_and_a_426_offers_what_it_can_carry() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut admin, [upstream]) = node_with_services(dir.path(), ["svc"]).await;
    admin.create_route(route("open", "svc", PathMatch::Prefix, "/open", AuthMode::None)).await.unwrap();
    let hop_by_hop = [
        ("keep-alive", "timeout=5"),
        ("upgrade", "h2c"),
        ("proxy-connection", "keep-alive"),
        ("trailer", "x-checksum"),
        ("connection", "x-upstream-private"),
        ("x-upstream-private", "internal"),
    ];

    upstream.respond_as("200 OK", &hop_by_hop);
    let reply = get_raw(node.proxy_addr, "/open/x", "").await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    for name in ["keep-alive", "upgrade", "proxy-connection", "trailer", "x-upstream-private"] {
        assert!(reply.values(name).is_empty(), "{name} reached the client: {}", reply.head);
    }
    assert!(reply.values("connection").iter().all(|v| v == "close"), "{}", reply.head);

    // A 426 offers the client what the gateway can carry (WebSocket), with
    // the `upgrade` connection option; an offer of anything else is dropped.
    let offering = |upgrade: &'static str| {
        let mut headers = hop_by_hop.to_vec();
        headers.retain(|(name, _)| *name != "upgrade");
        headers.push(("upgrade", upgrade));
        headers
    };
    upstream.respond_as("426 Upgrade Required", &offering("h2c, websocket"));
    let reply = get_raw(node.proxy_addr, "/open/x", "").await;
    assert_eq!(reply.status, 426, "{}", reply.head);
    assert_eq!(reply.values("upgrade"), ["websocket"], "{}", reply.head);
    let options: Vec<String> =
        reply.values("connection").iter().flat_map(|v| v.split(',')).map(|t| t.trim().to_ascii_lowercase()).collect();
    assert!(options.contains(&"upgrade".to_string()), "{}", reply.head);
    for name in ["keep-alive", "proxy-connection", "trailer", "x-upstream-private"] {
        assert!(reply.values(name).is_empty(), "{name} reached the client: {}", reply.head);
    }
    upstream.respond_as("426 Upgrade Required", &offering("TLS/1.2, HTTP/1.1"));
    let reply = get_raw(node.proxy_addr, "/open/x", "").await;
    assert_eq!(reply.status, 426, "{}", reply.head);
    assert!(reply.values("upgrade").is_empty(), "{}", reply.head);
    assert!(reply.values("connection").iter().all(|v| v == "close"), "{}", reply.head);
    node.shutdown().await;
}

// === 2. identity ===

#[tokio::test]
async fn only_the_gateway_speaks_for_a_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut admin, [upstream]) = node_with_services(dir.path(), ["svc"]).await;
    admin.create_route(route("open", "svc", PathMatch::Prefix, "/open", AuthMode::None)).await.unwrap();
    admin.create_route(route("keyed", "svc", PathMatch::Prefix, "/keyed", AuthMode::ApiKey)).await.unwrap();
    let (alice_id, _) = consumer_with_key(&mut admin, "alice").await;
    let (bob_id, bob_key) = consumer_with_key(&mut admin, "bob").await;

    let forged = format!(
        "X_Consumer_Id: {alice_id}\r\nx-consumer_name: alice\r\nX-Consumer-Id: {alice_id}\r\n\
         X-Consumer-Groups: admins\r\nX_Anonymous_Consumer: false\r\nX_Forwarded_For: 10.0.0.1\r\n\
         X-Forwarded-Prefix: /evil\r\nX_Request_Id: forged\r\n"
    );
    let forged = format!(
        "{forged}Forwarded: for=10.0.0.1;host=internal.example;proto=https\r\nX-Real-IP: 10.0.0.1\r\n\
         X-Original-URL: /admin/secret.txt\r\nX-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\n"
    );
    let owned = [
        "x-consumer-id",
        "x-consumer-name",
        "x-consumer-groups",
        "x-anonymous-consumer",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
    ];

    // An open route: no consumer at all reaches the upstream, in any spelling.
    let reply = get_raw(node.proxy_addr, "/open/x", &forged).await;
    assert_eq!(reply.status, 200);
    let seen = upstream.last();
    for name in owned {
        assert!(seen.any_spelling(name).is_empty(), "{name} reached the upstream: {}", seen.head);
    }
    assert_eq!(seen.any_spelling("x-forwarded-for"), ["x-forwarded-for: 127.0.0.1"], "{}", seen.head);
    assert_eq!(seen.any_spelling("x-request-id").len(), 1);

    // Bob, naming the gateway's headers in Connection: the upstream sees bob, once.
    let as_bob = format!(
        "Authorization: Bearer {bob_key}\r\nConnection: close, x-consumer-id, x-consumer-name, x-anonymous-consumer, \
         x-forwarded-for, x-request-id\r\n{forged}"
    );
    let request = format!("GET /keyed/x HTTP/1.1\r\nHost: gw.test\r\n{as_bob}\r\n");
    let reply = raw(node.proxy_addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = upstream.last();
    assert_eq!(seen.any_spelling("x-consumer-id"), [format!("x-consumer-id: {bob_id}")], "{}", seen.head);
    assert_eq!(seen.any_spelling("x-consumer-name"), ["x-consumer-name: bob"], "{}", seen.head);
    assert!(seen.any_spelling("x-anonymous-consumer").is_empty());
    assert!(seen.any_spelling("x-consumer-groups").is_empty());
    assert_eq!(seen.any_spelling("x-forwarded-for"), ["x-forwarded-for: 127.0.0.1"]);
    assert_eq!(seen.any_spelling("x-request-id").len(), 1, "{}", seen.head);
    assert!(seen.values("authorization").is_empty(), "the gateway's credential is not passed on");
    assert!(seen.values("connection").iter().all(|v| !v.contains("x-consumer")), "{}", seen.head);

    // An anonymous JWT caller keeps its marker whatever Connection names.
    let secret = "0123456789abcdef0123456789abcdef";
    let mut jwt = route("jwt", "svc", PathMatch::Prefix, "/jwt", AuthMode::Jwt);
    jwt.jwt = Some(JwtAuth { algorithms: vec!["HS256".into()], hs_secret: secret.into(), ..Default::default() });
    admin.create_route(jwt).await.unwrap();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "nobody-we-know", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let request = format!(
        "GET /jwt/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\
         Connection: close, x-anonymous-consumer\r\nX-Consumer-Id: {alice_id}\r\n\r\n"
    );
    let reply = raw(node.proxy_addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = upstream.last();
    assert_eq!(seen.any_spelling("x-anonymous-consumer"), ["x-anonymous-consumer: true"], "{}", seen.head);
    assert!(seen.any_spelling("x-consumer-id").is_empty(), "{}", seen.head);
    node.shutdown().await;
}

// === 3. cache ===

#[tokio::test]
async fn the_cache_never_serves_a_private_response_to_another_caller() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut admin, [upstream]) = node_with_services(dir.path(), ["svc"]).await;
    let mut cached = route("cached", "svc", PathMatch::Prefix, "/c", AuthMode::None);
    cached.cache = Some(ResponseCache { enabled: true, ttl_ms: 600_000, ..Default::default() });
    admin.create_route(cached).await.unwrap();
    let mut with_cookies = route("cookies", "svc", PathMatch::Prefix, "/cookies", AuthMode::None);
    with_cookies.cache =
        Some(ResponseCache { enabled: true, ttl_ms: 600_000, allow_cookies: true, ..Default::default() });
    admin.create_route(with_cookies).await.unwrap();
    let alice = "Authorization: Bearer alice-session\r\n";
    let mallory = "Authorization: Bearer mallory\r\n";

    // A credential went upstream and the response did not say it may be
    // shared (and has no Vary to key it by): never stored (RFC 9111 §3.5).
    upstream.respond_with(&[("cache-control", "max-age=600")]);
    for (path, credential) in [("/c/a", alice), ("/c/k", "X-Api-Key: alice-upstream-key\r\n")] {
        let private = get_raw(node.proxy_addr, path, credential).await;
        for caller in ["", mallory] {
            let reply = get_raw(node.proxy_addr, path, caller).await;
            assert_ne!(reply.body, private.body, "{path}: alice's response went to {caller:?}");
        }
    }

    // Shareable, and Vary: Authorization: each caller gets their own variant.
    upstream.respond_with(&[("cache-control", "public, max-age=600"), ("vary", "Authorization")]);
    let alices = get_raw(node.proxy_addr, "/c/b", alice).await;
    assert_eq!(get_raw(node.proxy_addr, "/c/b", alice).await.body, alices.body, "alice's own variant is a hit");
    for caller in ["", mallory] {
        let reply = get_raw(node.proxy_addr, "/c/b", caller).await;
        assert_ne!(reply.body, alices.body, "alice's variant went to {caller:?}");
    }
    let anonymous = get_raw(node.proxy_addr, "/c/b", "").await;
    assert_eq!(anonymous.header("x-cache").as_deref(), Some("HIT"), "the anonymous variant was stored too");

    // Vary on any other header splits the same way.
    upstream.respond_with(&[("cache-control", "max-age=600"), ("vary", "accept-language")]);
    let english = get_raw(node.proxy_addr, "/c/lang", "Accept-Language: en\r\n").await;
    assert_ne!(get_raw(node.proxy_addr, "/c/lang", "Accept-Language: de\r\n").await.body, english.body);
    assert_eq!(get_raw(node.proxy_addr, "/c/lang", "Accept-Language: en\r\n").await.body, english.body);

    // A Cookie neither reads nor fills the cache, unless the route opts in.
    upstream.respond_with(&[("cache-control", "max-age=600")]);
    let with_cookie = get_raw(node.proxy_addr, "/c/page", "Cookie: session=alice\r\n").await;
    let without = get_raw(node.proxy_addr, "/c/page", "").await;
    assert_ne!(with_cookie.body, without.body, "a request with a cookie filled the cache");
    let before = upstream.count();
    let again = get_raw(node.proxy_addr, "/c/page", "Cookie: session=mallory\r\n").await;
    assert_ne!(again.body, without.body, "a request with a cookie was served from the cache");
    assert_eq!(upstream.count(), before + 1);
    let opted_in = get_raw(node.proxy_addr, "/cookies/x", "Cookie: theme=dark\r\n").await;
    assert_eq!(get_raw(node.proxy_addr, "/cookies/x", "Cookie: theme=dark\r\n").await.body, opted_in.body);
    node.shutdown().await;
}

// === 4. authority ===

#[tokio::test]
async fn one_validated_authority_routes_keys_and_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut admin, [a, b]) = node_with_services(dir.path(), ["a", "b"]).await;
    let mut for_a = route("for-a", "a", PathMatch::Prefix, "/t", AuthMode::None);
    for_a.hosts = vec!["a.example".into()];
    admin.create_route(for_a).await.unwrap();
    let mut for_b = route("for-b", "b", PathMatch::Prefix, "/t", AuthMode::ApiKey);
    for_b.hosts = vec!["b.example".into()];
    admin.create_route(for_b).await.unwrap();
    let mut victim = route("victim", "a", PathMatch::Prefix, "/v", AuthMode::None);
    victim.cache = Some(ResponseCache { enabled: true, ttl_ms: 600_000, ..Default::default() });
    admin.create_route(victim).await.unwrap();
    let send = |head: String| {
        let proxy = node.proxy_addr;
        async move { raw(proxy, head.as_bytes()).await }
    };

    // The absolute form names the authority; routing and X-Forwarded-Host agree on it.
    let reply = send("GET http://a.example/t/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(a.last().values("x-forwarded-host"), ["a.example"]);
    let a_host = format!("127.0.0.1:{}", a.port);
    assert_eq!(a.last().values("host"), [a_host.as_str()], "the upstream's Host is its own, not a URI's or a header's");
    let reply = send("GET http://b.example/t/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(reply.status, 401, "b.example's route needs a key whatever Host says");
    assert_eq!(b.count(), 0);

    // Canonical: case, a trailing dot and the default port do not make another host.
    let reply = send("GET /t/x HTTP/1.1\r\nHost: A.Example.:80\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(a.last().values("x-forwarded-host"), ["a.example"]);
    assert_eq!(a.last().values("host"), [a_host.as_str()], "the upstream gets one Host, its own");

    // Refused: no Host, two Hosts, and anything but host[:port].
    for head in [
        "GET /t/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET /t/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n".into(),
        "GET /v/x HTTP/1.1\r\nHost: victim.example:x@attacker.example\r\nConnection: close\r\n\r\n".into(),
        "GET /v/x HTTP/1.1\r\nHost: victim.example/evil\r\nConnection: close\r\n\r\n".into(),
        "GET /v/x HTTP/1.1\r\nHost: victim.example:99999\r\nConnection: close\r\n\r\n".into(),
        "GET http://u:p@a.example/t/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n".into(),
    ] {
        let reply = send(head.clone()).await;
        assert_eq!(reply.status, 400, "{head:?}: {}", reply.body);
    }
    // HTTP/1.0 may omit Host, and then no X-Forwarded-Host is the client's to set.
    let reply = send("GET /v/x HTTP/1.0\r\nX-Forwarded-Host: forged.example\r\n\r\n".into()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(a.last().values("x-forwarded-host").is_empty(), "{}", a.last().head);
    assert_eq!(a.last().values("host"), [a_host.as_str()], "an HTTP/1.0 request without Host still sends one");

    // A retried attempt names its own target, not the first one's. The first
    // target of two refuses connections (a bound socket that never listens:
    // refused, and no other test can take the port), and round robin starts
    // there, so the first request at least is retried.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let refusing_port = refusing.local_addr().unwrap().port();
    let targets = [refusing_port, a.port]
        .map(|port| Target { host: "127.0.0.1".into(), port: u32::from(port), weight: 1 })
        .to_vec();
    let retry = Some(RetryPolicy { attempts: 2, budget_percent: 100, ..Default::default() });
    admin.create_service(Service { name: "retried".into(), targets, retry, ..Default::default() }).await.unwrap();
    admin.create_route(route("retried", "retried", PathMatch::Prefix, "/r", AuthMode::None)).await.unwrap();
    let before = a.count();
    for _ in 0..2 {
        let reply = send("GET /r/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(a.last().values("host"), [a_host.as_str()], "{}", a.last().head);
    }
    assert_eq!(a.count(), before + 2, "both requests reached the target that answers");
    let metrics = String::from_utf8_lossy(&get(node.ops_addr, "/metrics", &[]).await.body).to_string();
    let retried = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_upstream_retries_total{") && l.contains("service=\"retried\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retried >= 1.0, "a retry happened: {retried}");
    drop(refusing);

    // Another port is another cache entry, and X-Forwarded-Host carries it.
    let poisoned = send("GET /v/p HTTP/1.1\r\nHost: victim.example:1337\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(a.last().values("x-forwarded-host"), ["victim.example:1337"]);
    let plain = send("GET /v/p HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n".into()).await;
    assert_ne!(plain.body, poisoned.body, "the :1337 entry was served for plain victim.example");
    assert_eq!(a.last().values("x-forwarded-host"), ["victim.example"]);
    node.shutdown().await;
}

// === 5. client faults ===

#[tokio::test]
async fn a_clients_bad_request_never_counts_against_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = RawUpstream::start().await;
    let target = Target { host: "127.0.0.1".into(), port: u32::from(upstream.port), weight: 1 };
    admin
        .create_service(Service {
            name: "fragile".into(),
            targets: vec![target],
            circuit_breaker: Some(CircuitBreaker { failure_threshold: 2, open_ms: 600_000 }),
            // Short, so a client that stalls its body runs into it.
            request_timeout_ms: 500,
            outlier_detection: Some(OutlierDetection { consecutive_failures: 2, ejection_ms: 600_000 }),
            ..Default::default()
        })
        .await
        .unwrap();
    admin.create_route(route("r", "fragile", PathMatch::Prefix, "/", AuthMode::None)).await.unwrap();

    // A bad chunk size, three times: the client's fault, a 400 that names no upstream.
    for _ in 0..3 {
        let reply = raw(
            node.proxy_addr,
            b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz\r\n",
        )
        .await;
        assert!(reply.status == 400 || reply.status == 0, "status {}: {}", reply.status, reply.body);
        assert!(!reply.body.contains("127.0.0.1"), "an error names the upstream: {}", reply.body);
    }
    // Clients that go away in the middle of their bodies.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(node.proxy_addr).await.unwrap();
        stream
            .write_all(b"PUT /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100000\r\n\r\npartial")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
    }
    // Clients that stall in the middle of their bodies (and stay connected)
    // run out the request timeout: their 408, not the upstream's 504.
    for _ in 0..3 {
        let reply = raw(
            node.proxy_addr,
            b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\nConnection: close\r\n\r\npartial",
        )
        .await;
        assert_eq!(reply.status, 408, "{}", reply.body);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The service is still in service for everyone else.
    for _ in 0..3 {
        let reply = get_raw(node.proxy_addr, "/fine", "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    // And when the upstream really is gone, the client is not told where it was.
    let dead = dead_port().await;
    let target = Target { host: "127.0.0.1".into(), port: u32::from(dead), weight: 1 };
    admin.create_service(Service { name: "gone".into(), targets: vec![target], ..Default::default() }).await.unwrap();
    admin.create_route(route("gone", "gone", PathMatch::Prefix, "/gone", AuthMode::None)).await.unwrap();
    let reply = get_raw(node.proxy_addr, "/gone", "").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(!reply.body.contains(&dead.to_string()) && !reply.body.contains("127.0.0.1"), "{}", reply.body);
    assert!(reply.body.contains("request_id"), "{}", reply.body);
    node.shutdown().await;
}

// === governance: versions and subscriptions ===

/// A draft version is reached by no spelling of its name, the version the
/// upstream is told is the one the gateway checked, and a subscription is
/// checked for the consumer the key proves, not one a header claims.
#[tokio::test]
async fn no_spelling_of_a_request_reaches_a_draft_or_another_version_than_the_one_checked() {
    use prost::Message;
    use tollgate_proto::admin::v1::{CreateApiKeyRequest, PutEntityRequest};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = RawUpstream::start().await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let target = Target { host: "127.0.0.1".into(), port: u32::from(upstream.port), weight: 1 };
    let versioning = Versioning { header: "api-version".into(), by_path: true, default_version: "v1".into() };
    let orders =
        Service { name: "orders".into(), targets: vec![target], versioning: Some(versioning), ..Default::default() };
    let orders = admin.create_service(orders).await.unwrap().into_inner();
    for (version, state) in [("v1", VersionState::Published), ("v2", VersionState::Draft)] {
        let v = ApiVersion {
            service_id: orders.meta.clone().unwrap().id,
            version: version.into(),
            state: state as i32,
            ..Default::default()
        };
        let request = PutEntityRequest {
            kind: "api version".into(),
            entity: v.encode_to_vec(),
            create: true,
            id_or_name: String::new(),
        };
        admin.put_entity(request).await.unwrap();
    }
    let mut route = common::route("orders", "orders", PathMatch::Prefix, "/orders", AuthMode::ApiKey);
    route.strip_prefix = false;
    admin.create_route(route).await.unwrap();
    admin.create_consumer(Consumer { name: "shop".into(), ..Default::default() }).await.unwrap();
    let key =
        admin.create_api_key(CreateApiKeyRequest { consumer: "shop".into(), ..Default::default() }).await.unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", key.into_inner().plaintext);

    // Spellings of the draft's path segment: all 404, none forwarded.
    for target in ["/orders/v2/x", "/orders/%76%32/x", "/orders/v1/../v2/x", "/orders/v2;a=b/x", "/orders//v2/x"] {
        let reply = get_raw(node.proxy_addr, target, &auth).await;
        assert_eq!(reply.status, 404, "{target}: {}", reply.head);
        assert!(reply.body.contains("api_version_not_found"), "{target}: {}", reply.body);
    }
    for extra in ["api-version: v2\r\n", "API-Version:  v2 \r\n"] {
        let reply = get_raw(node.proxy_addr, "/orders/x", &format!("{auth}{extra}")).await;
        assert_eq!(reply.status, 404, "{extra:?}");
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");

    // Two version headers: which one an upstream reads is its choice, so none is served.
    let reply = get_raw(node.proxy_addr, "/orders/x", &format!("{auth}api-version: v1\r\napi-version: v2\r\n")).await;
    assert_eq!(reply.status, 400, "{}", reply.head);
    // The path names v1, a header v2: the upstream is told v1, the version checked.
    let reply = get_raw(node.proxy_addr, "/orders/v1/x", &format!("{auth}api-version: v2\r\n")).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    let received = upstream.last();
    assert_eq!(received.target(), "/orders/v1/x");
    assert_eq!(received.values("api-version"), ["v1"]);
    // Named by nothing: the default, and the upstream is told which.
    get_raw(node.proxy_addr, "/orders/x", &auth).await;
    assert_eq!(upstream.last().values("api-version"), ["v1"]);

    // Subscriptions: the consumer is the key's, whatever the headers say.
    let gated = Service {
        name: "gated".into(),
        targets: vec![Target { host: "127.0.0.1".into(), port: u32::from(upstream.port), weight: 1 }],
        subscription: SubscriptionMode::Approval as i32,
        ..Default::default()
    };
    admin.create_service(gated).await.unwrap();
    admin.create_route(common::route("gated", "gated", PathMatch::Prefix, "/gated", AuthMode::ApiKey)).await.unwrap();
    let before = upstream.count();
    for extra in ["", "X-Consumer-Id: shop\r\n", "X-Consumer-Name: shop\r\nX-Anonymous-Consumer: false\r\n"] {
        let reply = get_raw(node.proxy_addr, "/gated/x", &format!("{auth}{extra}")).await;
        assert_eq!(reply.status, 403, "{extra:?}: {}", reply.head);
        assert!(reply.body.contains("subscription_required"));
    }
    assert_eq!(upstream.count(), before, "no refused request was forwarded");
    node.shutdown().await;
}
