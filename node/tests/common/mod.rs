//! Shared pieces of the node's integration tests: a node on run-time ports in
//! a temp dir, a real HTTP upstream, an admin client and an HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tollgate_node::{Config, Node};
pub mod scripted_llm;
pub mod web;

use tollgate_proto::admin::v1::admin_service_client::AdminServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const TOKEN: &str = "test-admin-token-0123456789";

pub fn test_config(dir: &Path) -> Config {
    let mut config = Config { data_dir: dir.to_path_buf(), ..Default::default() };
    config.listen.proxy = "127.0.0.1:0".parse().unwrap();
    config.listen.admin = "127.0.0.1:0".parse().unwrap();
    config.listen.cluster = "127.0.0.1:0".parse().unwrap();
    config.listen.ops = "127.0.0.1:0".parse().unwrap();
    config.listen.console = "127.0.0.1:0".parse().unwrap();
    config.proxy.access_log = "off".into();
    config.admin.token = Some(TOKEN.to_string());
    config.raft.heartbeat_ms = 50;
    config.raft.election_timeout_min_ms = 150;
    config.raft.election_timeout_max_ms = 300;
    // Off by default; the tests see a limit reach the data plane by the
    // headers of the first request it admits.
    config.limits.admitted_headers = true;
    // A request that finds its lease empty waits for a grant a Raft commit
    // away: production waits 5 ms (250 ms for a bucket's first grant and
    // for an AI reservation). Two cores loaded by other tests can take
    // longer, and the test then sees a 429 that says nothing about what it
    // checks. A request waits only until its ask is answered (a grant, a
    // spent window, a failure), so while Raft answers the longer bound
    // slows no test; a test that stalls Raft would wait it out.
    config.limits.lease_wait_ms = 1_000;
    config.limits.first_lease_wait_ms = 5_000;
    config
}

/// A route to `service` with one path; `auth` as given.
pub fn route(
    name: &str,
    service: &str,
    kind: tollgate_proto::config::v1::PathMatch,
    path: &str,
    auth: tollgate_proto::config::v1::AuthMode,
) -> tollgate_proto::config::v1::Route {
    tollgate_proto::config::v1::Route {
        name: name.into(),
        service_id: service.into(),
        paths: vec![tollgate_proto::config::v1::RoutePath { kind: kind as i32, path: path.into() }],
        auth: auth as i32,
        ..Default::default()
    }
}

/// The AI gateway on `/v1`, behind API keys.
pub fn ai_route() -> tollgate_proto::config::v1::Route {
    use tollgate_proto::config::v1::{AuthMode, PathMatch};
    tollgate_proto::config::v1::Route {
        ai_gateway: true,
        ..route("llm", "", PathMatch::Prefix, "/v1", AuthMode::ApiKey)
    }
}

/// Creates consumer `name` and a key for it: (consumer id, plaintext key).
pub async fn consumer_with_key(admin: &mut Admin, name: &str) -> (String, String) {
    use tollgate_proto::admin::v1::CreateApiKeyRequest;
    use tollgate_proto::config::v1::Consumer;
    let created = admin.create_consumer(Consumer { name: name.into(), ..Default::default() }).await.unwrap();
    let id = created.into_inner().meta.map(|m| m.id).unwrap_or_default();
    let key = admin
        .create_api_key(CreateApiKeyRequest { consumer: name.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    (id, key)
}

/// Why a node process gave no endpoints.
#[derive(Debug)]
pub enum NotReady {
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Waits (at most 60 s) until the node process `child` has written its bound
/// addresses to `<data_dir>/endpoints.json`, and returns them.
pub async fn wait_for_endpoints(
    data_dir: &Path,
    child: &mut std::process::Child,
) -> Result<serde_json::Value, NotReady> {
    let endpoints = data_dir.join("endpoints.json");
    for _ in 0..1200 {
        if let Ok(text) = std::fs::read_to_string(&endpoints)
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
            && json["pid"] == child.id()
        {
            return Ok(json);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(NotReady::TimedOut)
}

pub async fn start_node(dir: &Path) -> Node {
    Node::start(test_config(dir)).await.expect("node starts")
}

pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.0.is_empty() {
            request.metadata_mut().insert("authorization", format!("Bearer {}", self.0).parse().unwrap());
        }
        Ok(request)
    }
}

pub async fn admin_client(addr: SocketAddr, token: &str) -> Admin {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("admin reachable");
    AdminServiceClient::with_interceptor(channel, Bearer(token.to_string()))
}

pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn http_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub async fn send(client: &Client<HttpConnector, Body>, request: Request<Body>) -> Reply {
    let response = client.request(request).await.expect("proxy answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body completes").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

pub async fn get(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(format!("http://{proxy}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(&http_client(), builder.body(full(Bytes::new())).unwrap()).await
}

/// A real HTTP/1.1 upstream on a run-time port. Each server has a name it
/// returns in `x-upstream`, so tests can see where a request went.
///
/// - `/hang...`: never answers.
/// - `/stream-echo...`: streams each request chunk straight back.
/// - `/big/<n>`: answers with n bytes.
/// - anything else: JSON describing the request it received.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        upstream_handle(name, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, hits, task }
    }
}

async fn upstream_handle(name: &'static str, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/hang") {
        std::future::pending::<()>().await;
    }
    if path.starts_with("/stream-echo") {
        let body = req
            .into_body()
            .into_data_stream()
            .map(|chunk| chunk.map(Frame::data).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>));
        let mut response = Response::new(StreamBody::new(body).boxed_unsync());
        response.headers_mut().insert("x-upstream", name.parse().unwrap());
        return Ok(response);
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len();
        let stream = futures::stream::iter((0..chunks).map(move |_| Ok(Frame::data(chunk.clone()))));
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        response.headers_mut().insert("x-upstream", name.parse().unwrap());
        return Ok(response);
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("").to_string())))
        .collect();
    let mut hasher = Sha256::new();
    let mut len = 0usize;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map(|f| f.into_data()) {
            if let Ok(data) = data {
                len += data.len();
                hasher.update(&data);
            }
        } else {
            break;
        }
    }
    let json = serde_json::json!({
        "upstream": name, "method": method, "path": path, "query": query, "headers": headers,
        "body_len": len, "body_sha256": hex::encode(hasher.finalize()),
    });
    let mut response = Response::new(full(json.to_string()));
    response.headers_mut().insert("x-upstream", name.parse().unwrap());
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// A request body fed chunk by chunk from the test.
pub fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// A port with nothing listening on it.
pub async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// For test upstreams: accepts any upgrade `request` asks for (as a lenient
/// backend might), echoing the upgraded connection's bytes back once hyper
/// hands it over, and returns the 101 response head to answer with.
#[allow(dead_code)] // not every test binary has an upgrading upstream
pub fn accept_echo_upgrade(request: &mut Request<Incoming>) -> Option<http::response::Builder> {
    let protocol = request.headers().get("upgrade")?.clone();
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut read, &mut write).await;
    });
    Some(Response::builder().status(101).header("connection", "upgrade").header("upgrade", protocol))
}

/// Sends a raw HTTP/1.1 request head and reads the response head, lower-cased.
#[allow(dead_code)] // not every test binary speaks raw HTTP
pub async fn raw_head(stream: &mut tokio::net::TcpStream, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "connection closed mid-head: {got:?}");
        got.push(byte[0]);
    }
    String::from_utf8(got).unwrap().to_ascii_lowercase()
}

/// Polls `check` until it holds (up to 15 s): for effects that land
/// asynchronously, such as access-log lines or replicated changes.
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for: {what}");
}
