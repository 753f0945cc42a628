//! Generic HTTP mock: fixed or echo responses with a configurable latency distribution.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::{Handler, HandlerFuture, LatencyDist, MockError, MockHandle, full, serve};

/// What the mock answers with.
#[derive(Debug, Clone, PartialEq)]
pub enum MockHttpBody {
    Fixed(Bytes),
    /// `n` bytes of filler.
    Size(usize),
    /// The request body (or `METHOD PATH` when it is empty).
    Echo,
}

#[derive(Debug, Clone)]
pub struct MockHttpConfig {
    pub listen: SocketAddr,
    pub status: u16,
    pub body: MockHttpBody,
    pub content_type: String,
    pub latency: LatencyDist,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for MockHttpConfig {
    fn default() -> Self {
        MockHttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            status: 200,
            body: MockHttpBody::Fixed(Bytes::from_static(b"ok\n")),
            content_type: "text/plain".into(),
            latency: LatencyDist::Zero,
            tls: None,
        }
    }
}

pub struct MockHttp;

struct HttpHandler {
    cfg: MockHttpConfig,
    fixed: Bytes,
}

impl MockHttp {
    pub async fn spawn(cfg: MockHttpConfig) -> Result<MockHandle, MockError> {
        let fixed = match &cfg.body {
            MockHttpBody::Fixed(b) => b.clone(),
            MockHttpBody::Size(n) => Bytes::from(vec![b'x'; *n]),
            MockHttpBody::Echo => Bytes::new(),
        };
        let (listen, tls) = (cfg.listen, cfg.tls.clone());
        serve(listen, tls, Arc::new(HttpHandler { cfg, fixed })).await
    }
}

impl Handler for HttpHandler {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture {
        let status = self.cfg.status;
        let content_type = self.cfg.content_type.clone();
        let latency = self.cfg.latency.clone();
        let echo = self.cfg.body == MockHttpBody::Echo;
        let fixed = self.fixed.clone();
        Box::pin(async move {
            let body = if echo {
                let head = format!("{} {}", req.method(), req.uri());
                let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                if bytes.is_empty() { Bytes::from(head) } else { bytes }
            } else {
                // Drain the request so keep-alive connections stay usable.
                let _ = req.into_body().collect().await;
                fixed
            };
            latency.wait().await;
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(full(body))
                .unwrap_or_else(|_| Response::new(full("bad mock status")))
        })
    }
}
