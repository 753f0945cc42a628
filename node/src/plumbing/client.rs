//! Pooled connections to upstream targets, HTTP/1.1 over TCP or TLS. Pools are
//! shared by every snapshot, so connections survive configuration changes.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tollgate_proto::config::v1::UpstreamTls;

use super::pool::{Http1Pool, PooledBody};

pub type BoxError = Box<dyn StdError + Send + Sync>;
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_timeout: Duration,
    /// (CA bundle, server name) for TLS pools.
    tls: Option<(String, String)>,
}

/// One keep-alive pool per (connect timeout, TLS settings).
pub struct UpstreamClients {
    idle_timeout: Duration,
    /// hyper-util's clients: health probes, JWKS, and AI providers the pools
    /// cannot take.
    pools: Mutex<HashMap<PoolKey, UpstreamClient>>,
    /// The data path's request-driven pools, plain and TLS.
    http1: Arc<Mutex<HashMap<PoolKey, Arc<Http1Pool>>>>,
}

/// How the proxy reaches a service's targets (and AI providers their
/// endpoints): a pool of connections, plain or TLS, that each request drives
/// itself. It writes the request line in origin form and takes the target
/// from its own argument, so callers need not build an absolute URI.
#[derive(Clone)]
pub struct Upstream(Arc<Http1Pool>);

impl Upstream {
    #[cfg(test)]
    pub(crate) fn new(pool: Http1Pool) -> Upstream {
        Upstream(Arc::new(pool))
    }

    /// Sends `request` to the target at `authority` (`host:port`), whose
    /// `Host` header is `host`. `upgrade`: the request asks for a protocol
    /// upgrade, so its connection must be one that can be handed over (never
    /// a pooled one).
    pub async fn request(
        &self,
        authority: &Arc<str>,
        host: &http::HeaderValue,
        request: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<UpstreamResponseBody>, BoxError> {
        if upgrade {
            // Boxed: upgrades are rare, and their future would otherwise
            // size every request's.
            let response = Box::pin(self.0.send_upgrade(authority, host, request)).await?;
            return Ok(response.map(UpstreamResponseBody::Client));
        }
        let response = self.0.send(authority, host, request).await?;
        Ok(response.map(UpstreamResponseBody::Pooled))
    }
}

pub enum UpstreamResponseBody {
    Pooled(PooledBody),
    Client(Incoming),
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamResponseBody::Pooled(body) => Pin::new(body).poll_frame(cx),
            UpstreamResponseBody::Client(body) => {
                Pin::new(body).poll_frame(cx).map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamResponseBody::Pooled(body) => body.is_end_stream(),
            UpstreamResponseBody::Client(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamResponseBody::Pooled(body) => body.size_hint(),
            UpstreamResponseBody::Client(body) => body.size_hint(),
        }
    }
}

impl UpstreamClients {
    pub fn new(idle_timeout: Duration) -> UpstreamClients {
        UpstreamClients { idle_timeout, pools: Mutex::new(HashMap::new()), http1: Default::default() }
    }

    /// Runs for as long as these clients live: every half idle timeout,
    /// closes the pools' idle connections that are past it, whatever the
    /// target (see `Http1Pool::close_expired`). hyper-util's client does
    /// the same for its own pools.
    pub fn idle_sweeper(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pools = Arc::downgrade(&self.http1);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pools) = pools.upgrade() else { return };
                let pools: Vec<Arc<Http1Pool>> =
                    pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                for pool in pools {
                    pool.close_expired();
                }
            }
        }
    }

    /// The data path's way to a service: the request-driven pool, over TLS
    /// when the service asks for it, so that a streamed answer's chunks that
    /// arrived together leave in one write either way. Pools are shared by
    /// services with the same settings. An error says why the TLS settings
    /// are unusable (the caller names the service; it then answers 503).
    pub fn upstream(&self, connect_timeout: Duration, tls: Option<&UpstreamTls>) -> Result<Upstream, String> {
        let tls = tls.filter(|t| t.enabled);
        let key = PoolKey { connect_timeout, tls: tls.map(|t| (t.ca_pem.clone(), t.server_name.clone())) };
        let mut pools = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            return Ok(Upstream(pool.clone()));
        }
        let pool = match tls {
            None => Http1Pool::new(connect_timeout, self.idle_timeout),
            Some(t) => {
                let pool = Http1Pool::with_tls(connect_timeout, self.idle_timeout, client_config(t)?);
                match t.server_name.as_str() {
                    "" => pool,
                    name => pool.with_server_name(
                        ServerName::try_from(name.to_string())
                            .map_err(|_| format!("tls.server_name {name:?} is not a host name or IP address"))?,
                    ),
                }
            }
        };
        let pool = Arc::new(pool);
        pools.insert(key, pool.clone());
        Ok(Upstream(pool))
    }

    /// A request-driven pool of TLS connections verified against the
    /// system's roots, for https AI providers. None when the system has no
    /// usable CA store (providers then go through `get`'s client, if any).
    pub fn provider_tls_pool(&self, connect_timeout: Duration) -> Option<Upstream> {
        let system_roots = UpstreamTls { enabled: true, ..Default::default() };
        self.upstream(connect_timeout, Some(&system_roots))
            .map_err(|error| tracing::warn!(%error, "no TLS pool for https AI providers"))
            .ok()
    }

    /// Called while compiling a snapshot, never per request. A TLS setting
    /// that cannot be used (bad CA PEM) yields None: the service answers 503
    /// instead of silently dropping verification.
    pub fn get(&self, connect_timeout: Duration, tls: Option<&UpstreamTls>) -> Option<UpstreamClient> {
        let tls = tls.filter(|t| t.enabled);
        let key = PoolKey { connect_timeout, tls: tls.map(|t| (t.ca_pem.clone(), t.server_name.clone())) };
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = pools.get(&key) {
            return Some(client.clone());
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        // https:// URIs are only produced for TLS services, so the plain pool's empty trust store is never used.
        http.enforce_http(false);
        let config = match tls {
            Some(t) => match client_config(t) {
                Ok(c) => c,
                Err(error) => {
                    tracing::error!(%error, "upstream TLS settings are unusable; the service will answer 503");
                    return None;
                }
            },
            None => rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .ok()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
        let connector = match tls.filter(|t| !t.server_name.is_empty()) {
            Some(t) => match ServerName::try_from(t.server_name.clone()) {
                Ok(name) => builder
                    .with_server_name_resolver(FixedServerNameResolver::new(name))
                    .enable_http1()
                    .wrap_connector(http),
                Err(_) => return None,
            },
            None => builder.enable_http1().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(1024)
            .build(connector);
        pools.insert(key, client.clone());
        Some(client)
    }
}

/// The system's CA certificates, read once per process: the provider
/// clients (hyper-util's and the TLS pool) and every service that trusts
/// the system share one store instead of each reading and parsing it.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            // An unreadable SSL_CERT_FILE or a bad certificate in the store
            // would otherwise surface only as "no trusted CA" much later.
            for error in &found.errors {
                tracing::warn!(%error, "reading the system's CA certificates (SSL_CERT_FILE / SSL_CERT_DIR if set)");
            }
            let (_, unusable) = roots.add_parsable_certificates(found.certs);
            if unusable > 0 {
                tracing::warn!(unusable, "system CA certificates that could not be used were skipped");
            }
            if roots.is_empty() {
                tracing::warn!("no system CA certificates found: https providers and TLS services without a CA of their own cannot be verified (install ca-certificates or set SSL_CERT_FILE)");
            }
            Arc::new(roots)
        })
        .clone()
}

fn client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, String> {
    let roots = if tls.ca_pem.is_empty() {
        system_roots()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("tls.ca_pem: {e}"))?;
            roots.add(cert).map_err(|e| format!("tls.ca_pem: {e}"))?;
        }
        Arc::new(roots)
    };
    if roots.is_empty() {
        return Err("no trusted CA certificates (tls.ca_pem is empty and the system store has none)".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use http_body_util::{BodyExt, Empty};

    use super::super::test_support::{frames_ready_now, tls_server, upstream_writing_at_once};
    use super::*;

    fn pem(der: &[u8]) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
    }

    fn tls(ca_pem: &str, server_name: &str) -> UpstreamTls {
        UpstreamTls { enabled: true, ca_pem: ca_pem.into(), server_name: server_name.into() }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_tls_service_goes_through_the_request_driven_pool_verified_for_its_server_name() {
        let (ca, acceptor) = tls_server("api.internal");
        let (addr, asked) = upstream_writing_at_once(20, Some(acceptor)).await;
        let timeout = Duration::from_secs(2);
        let clients = UpstreamClients::new(timeout);
        let settings = tls(&pem(&ca), "api.internal");
        let upstream = clients.upstream(timeout, Some(&settings)).expect("usable settings");
        let again = clients.upstream(timeout, Some(&settings)).unwrap();
        assert!(Arc::ptr_eq(&upstream.0, &again.0), "services with the same settings share one pool");
        let plain = clients.upstream(timeout, None).unwrap();
        let other_name = clients.upstream(timeout, Some(&tls(&pem(&ca), "other.internal"))).unwrap();
        let other_timeout = clients.upstream(Duration::from_secs(3), Some(&settings)).unwrap();
        for (other, why) in [(plain, "plain"), (other_name, "another server name"), (other_timeout, "another timeout")]
        {
            assert!(!Arc::ptr_eq(&upstream.0, &other.0), "{why} gets a pool of its own");
        }

        // Addressed by IP, verified for the service's server name.
        let authority: Arc<str> = Arc::from(addr.to_string());
        let host = http::HeaderValue::from_str(&addr.to_string()).unwrap();
        let request = Request::post("/v1/chat/completions")
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let response = upstream.request(&authority, &host, request, false).await.expect("verified for api.internal");
        assert!(asked.await.unwrap());
        let mut body = response.into_body();
        // The request's task drives the connection: every event that had
        // arrived is taken in one turn, not one per turn of a connection task.
        assert_eq!(frames_ready_now(&mut body), (20, true));
    }

    #[tokio::test]
    async fn a_tls_service_with_unusable_settings_gets_no_pool() {
        let (ca, _) = tls_server("api.internal");
        let timeout = Duration::from_secs(2);
        let clients = UpstreamClients::new(timeout);
        let error = clients.upstream(timeout, Some(&tls("not a certificate", "api.internal"))).err().unwrap();
        assert!(error.contains("tls.ca_pem") || error.contains("no trusted CA"), "{error}");
        let error = clients.upstream(timeout, Some(&tls(&pem(&ca), "not a host name!"))).err().unwrap();
        assert_eq!(error, "tls.server_name \"not a host name!\" is not a host name or IP address");
        let off = UpstreamTls { enabled: false, ..tls("not a certificate", "") };
        let plain = clients.upstream(timeout, None).unwrap();
        assert!(Arc::ptr_eq(&clients.upstream(timeout, Some(&off)).unwrap().0, &plain.0), "TLS off: the plain pool");
    }

    #[tokio::test]
    async fn a_tls_service_whose_certificate_names_another_host_gets_no_request() {
        let (ca, acceptor) = tls_server("api.internal");
        let (addr, asked) = upstream_writing_at_once(1, Some(acceptor)).await;
        let timeout = Duration::from_secs(2);
        let clients = UpstreamClients::new(timeout);
        let upstream = clients.upstream(timeout, Some(&tls(&pem(&ca), "other.internal"))).unwrap();
        let request = Request::post("/v1/chat/completions")
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let host = http::HeaderValue::from_str(&addr.to_string()).unwrap();
        let error = upstream.request(&Arc::from(addr.to_string()), &host, request, false).await.err().unwrap();
        assert!(error.to_string().contains("TLS with"), "{error}");
        assert!(!asked.await.unwrap(), "the upstream never got a request");
    }
}
