//! How the AI gateway reaches providers: plain-HTTP providers (a local vLLM,
//! Ollama, a compatible server on the LAN) through the same request-driven
//! pool as the REST path's targets, https providers through hyper-util's
//! client with the system's roots.
//!
//! The request-driven pool matters most for streams: hyper-util's client
//! hands a response body over through a channel that holds one chunk at a
//! time, so every SSE event the provider sends became one flushed write to
//! the caller. Polled by the request's own task, the pool's body yields
//! everything that has arrived in one turn.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};

use super::client::{BoxError, Upstream, UpstreamBody, UpstreamClient, UpstreamResponseBody};

/// Where a plain-HTTP provider listens: the `host:port` to connect to and the
/// `Host` header its requests carry. Worked out once per snapshot.
#[derive(Debug, Clone)]
pub struct PlainTarget {
    authority: Arc<str>,
    host: HeaderValue,
    /// The base URL's authority as written: only requests to it use the pool.
    written: Box<str>,
}

impl PlainTarget {
    /// `Some` for an `http://` base URL with a host; `None` for https and
    /// anything unparsable, which then goes to the hyper-util client.
    pub fn from_base_url(base_url: &str) -> Option<PlainTarget> {
        let uri: http::Uri = base_url.parse().ok()?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let authority = uri.authority()?;
        // Host and port only: user information in a URL is never sent as `Host`.
        let host = authority.host();
        // As hyper-util's client writes it: the default port is left out.
        let host_header = match authority.port_u16() {
            Some(port) if port != 80 => HeaderValue::from_str(&format!("{host}:{port}")).ok()?,
            _ => HeaderValue::from_str(host).ok()?,
        };
        let port = authority.port_u16().unwrap_or(80);
        Some(PlainTarget {
            authority: format!("{host}:{port}").into(),
            host: host_header,
            written: authority.as_str().into(),
        })
    }

    /// The request goes where this target is: plain http to the base URL's
    /// authority. An adapter that built any other URL does not get the pool.
    fn serves(&self, uri: &http::Uri) -> bool {
        uri.scheme() == Some(&http::uri::Scheme::HTTP) && uri.authority().is_some_and(|a| a.as_str() == &*self.written)
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
    tls: Option<UpstreamClient>,
}

impl ProviderClients {
    /// `plain` must be a pooled upstream (see `UpstreamClients::upstream`).
    pub fn new(plain: Option<Upstream>, tls: Option<UpstreamClient>) -> ProviderClients {
        ProviderClients { plain, tls }
    }

    /// Reaches no provider: for tests that never call one.
    pub fn none() -> ProviderClients {
        ProviderClients { plain: None, tls: None }
    }

    /// Sends `request` (an absolute URI) to the provider. `plain` is the
    /// provider's [`PlainTarget`] when its base URL is http.
    pub async fn request(
        &self,
        plain: Option<&PlainTarget>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamResponseBody>, ProviderClientError> {
        match (plain.filter(|t| t.serves(request.uri())), &self.plain) {
            (Some(target), Some(pool)) => pool
                .request(&target.authority, &target.host, request, false)
                .await
                .map_err(ProviderClientError::Transport),
            // Without a pool (tests) a plain provider goes through the
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
    use super::*;

    #[test]
    fn plain_targets_connect_to_host_and_port_and_send_host_as_written() {
        let target = PlainTarget::from_base_url("http://127.0.0.1:8000/v1").unwrap();
        assert_eq!(&*target.authority, "127.0.0.1:8000");
        assert_eq!(target.host, "127.0.0.1:8000");

        let target = PlainTarget::from_base_url("http://ollama.lan").unwrap();
        assert_eq!(&*target.authority, "ollama.lan:80");
        assert_eq!(target.host, "ollama.lan");
        let target = PlainTarget::from_base_url("http://ollama.lan:80/v1").unwrap();
        assert_eq!(target.host, "ollama.lan", "the default port is left out, as hyper-util's client does");

        let target = PlainTarget::from_base_url("http://[::1]:11434").unwrap();
        assert_eq!(&*target.authority, "[::1]:11434");
        assert_eq!(target.host, "[::1]:11434");
    }

    #[test]
    fn user_information_never_reaches_the_host_header() {
        let target = PlainTarget::from_base_url("http://user:secret@10.0.0.5:8080/").unwrap();
        assert_eq!(&*target.authority, "10.0.0.5:8080");
        assert_eq!(target.host, "10.0.0.5:8080");
    }

    /// A plain provider that answers one streamed request with `events` SSE
    /// events, all in one write, chunked as OpenAI's servers send them.
    async fn provider_writing_at_once(events: usize) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the gateway hung up before sending its request");
                seen.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&seen).to_string();
            assert!(head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"), "origin form: {head}");
            assert!(head.to_ascii_lowercase().contains(&format!("\r\nhost: {addr}\r\n")), "host: {head}");
            let mut answer = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for n in 0..events {
                let event = format!("data: {{\"n\":{n}}}\n\n");
                answer.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
            }
            answer.push_str("0\r\n\r\n");
            socket.write_all(answer.as_bytes()).await.unwrap();
            // Held open: the gateway, not the provider, ends the exchange.
            let _ = socket.read(&mut buf).await;
        });
        addr
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
        let providers = ProviderClients::new(clients.upstream(std::time::Duration::from_secs(1), None), None);
        let target = PlainTarget::from_base_url(&format!("http://{addr}/")).unwrap();
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
        let target = PlainTarget::from_base_url("http://127.0.0.1:8000/v1").unwrap();
        assert!(target.serves(&"http://127.0.0.1:8000/v1/chat/completions".parse().unwrap()));
        assert!(!target.serves(&"https://127.0.0.1:8000/v1/chat/completions".parse().unwrap()));
        assert!(!target.serves(&"http://10.0.0.9:8000/token".parse().unwrap()));
        assert!(!target.serves(&"/v1/chat/completions".parse().unwrap()));
    }

    #[test]
    fn https_and_garbage_are_not_plain_targets() {
        assert!(PlainTarget::from_base_url("https://api.openai.com/v1").is_none());
        assert!(PlainTarget::from_base_url("not a url").is_none());
        assert!(PlainTarget::from_base_url("").is_none());
    }
}
