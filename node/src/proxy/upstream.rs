//! Pooled HTTP/1.1 connections to upstream targets.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type BoxError = Box<dyn StdError + Send + Sync>;
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// One keep-alive pool per connect timeout, shared by every snapshot, so
/// connections survive configuration changes.
pub struct UpstreamClients {
    idle_timeout: Duration,
    by_connect_timeout: Mutex<HashMap<Duration, UpstreamClient>>,
}

impl UpstreamClients {
    pub fn new(idle_timeout: Duration) -> UpstreamClients {
        UpstreamClients { idle_timeout, by_connect_timeout: Mutex::new(HashMap::new()) }
    }

    /// Called while compiling a snapshot, never per request.
    pub fn get(&self, connect_timeout: Duration) -> UpstreamClient {
        let mut clients = self.by_connect_timeout.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_keepalive(Some(Duration::from_secs(60)));
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(self.idle_timeout)
                    .pool_max_idle_per_host(1024)
                    .build(connector)
            })
            .clone()
    }
}
