//! Mock upstreams: a generic HTTP server and LLM provider mocks speaking the real wire
//! formats. Usable from the CLI and as a library (the gateway's tests spawn them).

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod llm;
pub mod openai;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::schedule::parse_duration;

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot listen on {addr}: {source}; pick a free port or use 127.0.0.1:0")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot load TLS certificate/key: {0}; pass PEM files with --tls-cert and --tls-key")]
    Tls(String),
    #[error(
        "invalid latency `{0}`: use 0, 10ms, fixed:10ms, uniform:5ms..20ms, exp:10ms (mean) or normal:10ms,2ms (mean,stdev)"
    )]
    Latency(String),
}

pub type MockBody = BoxBody<Bytes, io::Error>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<MockBody>> + Send>>;

/// A mock's request handler.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture;
}

pub fn full(body: impl Into<Bytes>) -> MockBody {
    Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed()
}

pub fn json_response(status: u16, value: &serde_json::Value) -> Response<MockBody> {
    json_text_response(status, value.to_string())
}

/// A JSON answer already written out (spelled as the test wants it).
pub fn json_text_response(status: u16, json: String) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(json))
        .expect("static response parts are valid")
}

/// Latency distribution of a mock's responses.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LatencyDist {
    #[default]
    Zero,
    Fixed(Duration),
    Uniform(Duration, Duration),
    /// Exponential with the given mean (a long tail, like real upstreams).
    Exponential(Duration),
    Normal {
        mean: Duration,
        stdev: Duration,
    },
}

impl FromStr for LatencyDist {
    type Err = MockError;
    fn from_str(s: &str) -> Result<Self, MockError> {
        let bad = || MockError::Latency(s.to_string());
        let d = |x: &str| parse_duration(x).map_err(|_| bad());
        let s = s.trim();
        if s == "0" || s.is_empty() {
            return Ok(LatencyDist::Zero);
        }
        let dist = match s.split_once(':') {
            None => LatencyDist::Fixed(d(s)?),
            Some(("fixed", v)) => LatencyDist::Fixed(d(v)?),
            Some(("uniform", v)) => {
                let (a, b) = v.split_once("..").ok_or_else(bad)?;
                let (a, b) = (d(a)?, d(b)?);
                if a > b {
                    return Err(bad());
                }
                LatencyDist::Uniform(a, b)
            }
            Some(("exp", v)) => LatencyDist::Exponential(d(v)?),
            Some(("normal", v)) => {
                let (m, sd) = v.split_once(',').ok_or_else(bad)?;
                LatencyDist::Normal { mean: d(m)?, stdev: d(sd)? }
            }
            _ => return Err(bad()),
        };
        Ok(dist)
    }
}

impl LatencyDist {
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        match self {
            LatencyDist::Zero => Duration::ZERO,
            LatencyDist::Fixed(d) => *d,
            LatencyDist::Uniform(a, b) => {
                if a == b {
                    *a
                } else {
                    Duration::from_secs_f64(rng.random_range(a.as_secs_f64()..=b.as_secs_f64()))
                }
            }
            LatencyDist::Exponential(mean) => {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
            }
            LatencyDist::Normal { mean, stdev } => {
                // Box-Muller; negative draws are clamped to zero.
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                Duration::from_secs_f64((mean.as_secs_f64() + z * stdev.as_secs_f64()).max(0.0))
            }
        }
    }

    pub async fn wait(&self) {
        if *self != LatencyDist::Zero {
            let d = self.sample(&mut rand::rng());
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Loads a PEM certificate chain and private key into a server config (HTTP/2 and 1.1 via ALPN).
pub fn tls_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, MockError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| MockError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| MockError::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MockError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| MockError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub fn tls_config_from_files(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, MockError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| MockError::Tls(format!("{}: {e}", p.display())));
    tls_config_from_pem(&read(cert)?, &read(key)?)
}

/// A request as a mock received it, so a gateway test can assert what went upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, e.g. `/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse`.
    pub path: String,
    /// The key or token carried by the provider's auth scheme (`Authorization: Bearer`,
    /// `api-key`, `x-api-key`, `x-goog-api-key` or `?key=`), if any.
    pub credential: Option<String>,
    /// Headers with lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, when it was JSON.
    pub body: Option<serde_json::Value>,
    /// The body as it arrived, byte for byte.
    pub raw_body: bytes::Bytes,
}

impl SeenRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The model asked for: the body's `model`, else the one named in the path (Gemini
    /// `models/{model}:method`, Azure `deployments/{deployment}/`).
    pub fn model(&self) -> Option<&str> {
        if let Some(m) = self.body.as_ref().and_then(|b| b.get("model")).and_then(serde_json::Value::as_str) {
            return Some(m);
        }
        let path = self.path.split('?').next().unwrap_or_default();
        if let Some((_, rest)) = path.split_once("/models/") {
            return rest.split(':').next();
        }
        path.split_once("/deployments/").and_then(|(_, rest)| rest.split('/').next())
    }
}

/// Bounded log of received requests, shared by a mock's handler and its handle. Oldest
/// entries are dropped past the limit so a mock under a long load test does not grow
/// without bound.
#[derive(Debug, Clone)]
pub struct RequestLog {
    entries: Arc<Mutex<VecDeque<SeenRequest>>>,
    limit: usize,
}

impl RequestLog {
    /// A log keeping the last `limit` requests; 0 keeps none.
    pub fn new(limit: usize) -> Self {
        RequestLog { entries: Arc::new(Mutex::new(VecDeque::new())), limit }
    }

    // A panic while holding the lock cannot leave a VecDeque half-updated in a way that
    // matters to readers, so poisoning is ignored rather than spreading the panic.
    fn lock(&self) -> MutexGuard<'_, VecDeque<SeenRequest>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn push(&self, req: SeenRequest) {
        if self.limit == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.limit {
            entries.pop_front();
        }
        entries.push_back(req);
    }

    pub fn snapshot(&self) -> Vec<SeenRequest> {
        self.lock().iter().cloned().collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// A running mock. Dropping it stops accepting new connections.
pub struct MockHandle {
    addr: SocketAddr,
    tls: bool,
    served: Arc<AtomicU64>,
    log: RequestLog,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Requests received so far.
    pub fn requests_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Requests received so far, oldest first (LLM mocks only; at most the configured
    /// `request_log_limit` most recent).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.log.snapshot()
    }

    pub fn last_request(&self) -> Option<SeenRequest> {
        self.log.lock().back().cloned()
    }

    pub fn clear_requests(&self) {
        self.log.clear();
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Runs until Ctrl-C (for the CLI).
    pub async fn wait_for_ctrl_c(self) {
        let _ = tokio::signal::ctrl_c().await;
        self.shutdown().await;
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds `listen` and serves `handler` over HTTP/1.1 and HTTP/2 (cleartext h2 by prior
/// knowledge, or ALPN with TLS).
pub async fn serve(
    listen: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<dyn Handler>,
) -> Result<MockHandle, MockError> {
    serve_logged(listen, tls, handler, RequestLog::new(0)).await
}

/// Like [`serve`], with `log` (which the handler fills) exposed through the handle.
pub async fn serve_logged(
    listen: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<dyn Handler>,
    log: RequestLog,
) -> Result<MockHandle, MockError> {
    let listener = TcpListener::bind(listen).await.map_err(|source| MockError::Bind { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| MockError::Bind { addr: listen, source })?;
    let served = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = oneshot::channel::<()>();
    let counter = served.clone();
    let is_tls = tls.is_some();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = &mut rx => break,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(_) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let counter = counter.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let fut = handler.handle(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acc) => {
                        if let Ok(tls) = acc.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    Ok(MockHandle { addr, tls: is_tls, served, log, shutdown: Some(tx), task: Some(task) })
}
