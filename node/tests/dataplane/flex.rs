//! A controllable upstream for data-plane tests: it can be told to fail its
//! health endpoint, to answer every request with an error, or to hold
//! requests open; it counts hits per method.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::common::{Body, full};

#[derive(Default)]
pub struct FlexState {
    pub hits: AtomicUsize,
    pub posts: AtomicUsize,
    pub health_probes: AtomicUsize,
    pub unhealthy: AtomicBool,
    /// Non-zero: every non-health request gets this status.
    pub fail_with: AtomicU16,
    pub holding: AtomicUsize,
    pub release: Notify,
}

pub struct Flex {
    pub addr: SocketAddr,
    pub state: Arc<FlexState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Flex {
    fn drop(&mut self) {
        self.state.release.notify_waiters();
        self.task.abort();
    }
}

impl Flex {
    pub async fn start(name: &'static str) -> Flex {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FlexState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(name, state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Flex { addr, state, task }
    }

    pub fn port(&self) -> u32 {
        u32::from(self.addr.port())
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn respond(
    name: &'static str,
    state: Arc<FlexState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        state.health_probes.fetch_add(1, Ordering::SeqCst);
        let status = if state.unhealthy.load(Ordering::SeqCst) { 503 } else { 200 };
        return Ok(Response::builder().status(status).body(full("")).unwrap());
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    if req.method() == http::Method::POST {
        state.posts.fetch_add(1, Ordering::SeqCst);
    }
    if path.contains("/hold") {
        state.holding.fetch_add(1, Ordering::SeqCst);
        state.release.notified().await;
        state.holding.fetch_sub(1, Ordering::SeqCst);
    }
    let fail = state.fail_with.load(Ordering::SeqCst);
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("").to_string())))
        .collect();
    let method = req.method().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    let json = serde_json::json!({ "upstream": name, "method": method, "path": path, "query": query, "headers": headers, "body": body });
    let mut builder = Response::builder()
        .status(if fail != 0 { fail } else { 200 })
        .header("x-upstream", name)
        .header("content-type", "application/json");
    // `?cc=...` sets the response's Cache-Control, for cache tests.
    if let Some(cc) = query.split('&').find_map(|kv| kv.strip_prefix("cc=")) {
        builder = builder.header("cache-control", cc.replace("%20", " "));
    }
    Ok(builder.body(full(json.to_string())).unwrap())
}
