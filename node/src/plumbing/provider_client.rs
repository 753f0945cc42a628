//! How the AI gateway reaches providers: through the same request-driven
//! pool as the REST path's targets, plain HTTP (a local vLLM, Ollama, a
//! compatible server on the LAN) and https (the cloud APIs: rustls, the
//! system's roots, HTTP/1.1). hyper-util's client remains for what the
//! pools cannot take (a node without a CA store, or an unparsable URL).
//!
//! The request-driven pool matters most for streams: hyper-util's client
//! hands a response body over through a channel that holds one chunk at a
//! time, so every SSE event the provider sends became one flushed write to
//! the caller. Polled by the request's own task, the pool's body yields
//! everything that has arrived in one turn.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};

use super::client::{BoxError, Upstream, UpstreamBody, UpstreamClient, UpstreamResponseBody};

/// Where a provider listens: the `host:port` to connect to, the `Host`
/// header its requests carry, and whether the connection is TLS. Worked out
/// once per snapshot.
#[derive(Debug, Clone)]
pub struct PooledTarget {
    authority: Arc<str>,
    host: HeaderValue,
    tls: bool,
    /// The base URL's authority as written: only requests to it use the pool.
    written: Box<str>,
}

impl PooledTarget {
    /// `Some` for an `http://` or `https://` base URL with a host and a
    /// valid port; `None` otherwise (hyper-util's client then answers for it).
    pub fn from_base_url(base_url: &str) -> Option<PooledTarget> {
        let uri: http::Uri = base_url.parse().ok()?;
        let (tls, default_port) = match uri.scheme_str()? {
            "http" => (false, 80),
            "https" => (true, 443),
            _ => return None,
        };
        let authority = uri.authority()?;
        // The http crate reads a port that is not a u16 as no port at all,
        // which would send the request to the default one.
        if tollgate_raft::written_port(authority.as_str())
            .is_some_and(|port| tollgate_raft::port_number(port.as_bytes()).is_none())
        {
            return None;
        }
        // Host and port only: user information in a URL is never sent as `Host`.
        let host = authority.host();
        // As hyper-util's client writes it: the default port is left out.
        let host_header = match authority.port_u16() {
            Some(port) if port != default_port => HeaderValue::from_str(&format!("{host}:{port}")).ok()?,
            _ => HeaderValue::from_str(host).ok()?,
        };
        let port = authority.port_u16().unwrap_or(default_port);
        Some(PooledTarget {
            authority: format!("{host}:{port}").into(),
            host: host_header,
            tls,
            written: authority.as_str().into(),
        })
    }

    /// The request goes where this target is: the base URL's scheme and
    /// authority. An adapter that built any other URL does not get the pool.
    fn serves(&self, uri: &http::Uri) -> bool {
        let scheme = if self.tls { &http::uri::Scheme::HTTPS } else { &http::uri::Scheme::HTTP };
        uri.scheme() == Some(scheme) && uri.authority().is_some_and(|a| a.as_str() == &*self.written)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderClientError {
    #[error("this node has no HTTP client for https providers (no system CA certificates); install ca-certificates")]
    NoTlsClient,
    #[error(transparent)]
    Transport(BoxError),
}

/// Lives as long as the node; shared by every snapshot.
pub struct ProviderClients {
    plain: Option<Upstream>,
    tls_pool: Option<Upstream>,
    tls: Option<UpstreamClient>,
}

impl ProviderClients {
    /// `plain` and `tls_pool` must be pooled upstreams (see
    /// `UpstreamClients::upstream` and `UpstreamClients::provider_tls_pool`).
    pub fn new(plain: Option<Upstream>, tls_pool: Option<Upstream>, tls: Option<UpstreamClient>) -> ProviderClients {
        ProviderClients { plain, tls_pool, tls }
    }

    /// Reaches no provider: for tests that never call one.
    pub fn none() -> ProviderClients {
        ProviderClients { plain: None, tls_pool: None, tls: None }
    }

    /// Sends `request` (an absolute URI) to the provider. `target` is the
    /// provider's [`PooledTarget`], if its base URL has one.
    pub async fn request(
        &self,
        target: Option<&PooledTarget>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamResponseBody>, ProviderClientError> {
        let target = target.filter(|t| t.serves(request.uri()));
        let pool = target.and_then(|t| if t.tls { self.tls_pool.as_ref() } else { self.plain.as_ref() });
        match (target, pool) {
            (Some(target), Some(pool)) => pool
                .request(&target.authority, &target.host, request, false)
                .await
                .map_err(ProviderClientError::Transport),
            // Without a pool (a node without a CA store, tests) the
            // hyper-util client, which speaks http as well.
            _ => {
                let client = self.tls.as_ref().ok_or(ProviderClientError::NoTlsClient)?;
                let response = client.request(request).await.map_err(|e| ProviderClientError::Transport(e.into()))?;
                Ok(response.map(UpstreamResponseBody::Client))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{frames_ready_now, tls_server, upstream_writing_at_once};
    use super::*;

    #[test]
    fn plain_targets_connect_to_host_and_port_and_send_host_as_written() {
        let target = PooledTarget::from_base_url("http://127.0.0.1:8000/v1").unwrap();
        assert_eq!(&*target.authority, "127.0.0.1:8000");
        assert_eq!(target.host, "127.0.0.1:8000");

        let target = PooledTarget::from_base_url("http://ollama.lan").unwrap();
        assert_eq!(&*target.authority, "ollama.lan:80");
        assert_eq!(target.host, "ollama.lan");
        let target = PooledTarget::from_base_url("http://ollama.lan:80/v1").unwrap();
        assert_eq!(target.host, "ollama.lan", "the default port is left out, as hyper-util's client does");

        let target = PooledTarget::from_base_url("http://[::1]:11434").unwrap();
        assert_eq!(&*target.authority, "[::1]:11434");
        assert_eq!(target.host, "[::1]:11434");
    }

    #[test]
    fn user_information_never_reaches_the_host_header() {
        let target = PooledTarget::from_base_url("http://user:secret@10.0.0.5:8080/").unwrap();
        assert_eq!(&*target.authority, "10.0.0.5:8080");
        assert_eq!(target.host, "10.0.0.5:8080");
    }

    /// A plain provider that answers one streamed request with `events` SSE
    /// events, all in one write, chunked as OpenAI's servers send them.
    async fn provider_writing_at_once(events: usize) -> std::net::SocketAddr {
        upstream_writing_at_once(events, None).await.0
    }

    /// Provider clients whose TLS pool trusts only `ca`.
    fn trusting(ca: rustls::pki_types::CertificateDer<'static>) -> ProviderClients {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let timeout = std::time::Duration::from_secs(2);
        let pool = super::super::pool::Http1Pool::with_tls(timeout, timeout, config);
        ProviderClients::new(None, Some(Upstream::new(pool)), None)
    }

    fn stream_request(url: &str) -> Request<UpstreamBody> {
        use http_body_util::{BodyExt, Empty};
        Request::post(url).body(Empty::new().map_err(|never| match never {}).boxed_unsync()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_https_provider_is_verified_and_its_events_are_taken_in_one_turn() {
        let (ca, acceptor) = tls_server("127.0.0.1");
        let (addr, _) = upstream_writing_at_once(20, Some(acceptor)).await;
        let providers = trusting(ca);
        let url = format!("https://{addr}/v1");
        let target = PooledTarget::from_base_url(&url).unwrap();
        let response = providers.request(Some(&target), stream_request(&format!("{url}/chat/completions"))).await;
        let mut body = response.unwrap().into_body();
        assert!(matches!(body, UpstreamResponseBody::Pooled(_)), "through the request-driven pool");
        // The head and every event came in one TLS record, decrypted in one go.
        assert_eq!(frames_ready_now(&mut body), (20, true), "every event that had arrived, without waiting");
    }

    #[tokio::test]
    async fn an_https_provider_with_a_certificate_for_another_name_or_from_another_ca_gets_nothing() {
        // Signed by the trusted CA, but for another host.
        let (ca, acceptor) = tls_server("10.9.9.9");
        let (addr, asked) = upstream_writing_at_once(1, Some(acceptor)).await;
        let url = format!("https://{addr}/v1");
        let target = PooledTarget::from_base_url(&url).unwrap();
        let refused = trusting(ca).request(Some(&target), stream_request(&format!("{url}/chat/completions"))).await;
        let error = refused.err().expect("a certificate for another name is refused").to_string();
        assert!(error.contains("TLS with 127.0.0.1:"), "{error}");
        assert!(!asked.await.unwrap(), "the provider never got a request");

        // For the right host, but from a CA the pool does not trust.
        let (_, acceptor) = tls_server("127.0.0.1");
        let (other_ca, _) = tls_server("127.0.0.1");
        let (addr, asked) = upstream_writing_at_once(1, Some(acceptor)).await;
        let url = format!("https://{addr}/v1");
        let target = PooledTarget::from_base_url(&url).unwrap();
        let refused =
            trusting(other_ca).request(Some(&target), stream_request(&format!("{url}/chat/completions"))).await;
        let error = refused.err().expect("an untrusted issuer is refused").to_string();
        assert!(error.contains("TLS with 127.0.0.1:"), "{error}");
        assert!(!asked.await.unwrap(), "the provider never got a request");
    }

    /// The point of sending plain providers through the pool: a stream's
    /// events that arrived together are all taken in one turn of the caller's
    /// task, so they leave in one write. hyper-util's client hands over one
    /// event per turn of its connection task (this test then takes one).
    #[tokio::test(flavor = "current_thread")]
    async fn a_plain_providers_events_that_arrived_together_are_taken_in_one_turn() {
        use http_body::Body;
        use http_body_util::{BodyExt, Empty};
        let addr = provider_writing_at_once(20).await;
        let clients = super::super::UpstreamClients::new(std::time::Duration::from_secs(60));
        let providers =
            ProviderClients::new(clients.upstream(std::time::Duration::from_secs(1), None).ok(), None, None);
        let target = PooledTarget::from_base_url(&format!("http://{addr}/")).unwrap();
        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let response = providers.request(Some(&target), request).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        // The head and every event came in one segment, read in one go.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let (mut events, mut ended) = (0, false);
        while let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            match frame {
                Some(frame) => events += usize::from(frame.unwrap().is_data()),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        assert_eq!((events, ended), (20, true), "every event that had arrived, without waiting");
    }

    #[test]
    fn only_plain_requests_to_the_base_urls_authority_use_the_pool() {
        let target = PooledTarget::from_base_url("http://127.0.0.1:8000/v1").unwrap();
        assert!(target.serves(&"http://127.0.0.1:8000/v1/chat/completions".parse().unwrap()));
        assert!(!target.serves(&"https://127.0.0.1:8000/v1/chat/completions".parse().unwrap()));
        assert!(!target.serves(&"http://10.0.0.9:8000/token".parse().unwrap()));
        assert!(!target.serves(&"/v1/chat/completions".parse().unwrap()));
    }

    #[test]
    fn https_targets_verify_on_443_and_garbage_is_no_target() {
        let target = PooledTarget::from_base_url("https://api.openai.com/v1").unwrap();
        assert_eq!((&*target.authority, target.tls), ("api.openai.com:443", true));
        assert_eq!(target.host, "api.openai.com");
        assert!(target.serves(&"https://api.openai.com/v1/chat/completions".parse().unwrap()));
        assert!(!target.serves(&"http://api.openai.com/v1/chat/completions".parse().unwrap()), "never in cleartext");
        for url in ["not a url", "", "ftp://host/x", "http://host:99999/v1", "http://host:0/v1"] {
            assert!(PooledTarget::from_base_url(url).is_none(), "{url}");
        }
    }
}
