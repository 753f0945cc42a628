//! Test upstreams that speak the real wire format, shared by the pool's,
//! the REST client's and the provider clients' tests.

use std::sync::Arc;

use super::client::UpstreamResponseBody;

/// An upstream that answers one `POST /v1/chat/completions` with `events`
/// SSE events, all in one write, chunked as OpenAI's servers send them; over
/// TLS with `acceptor`. The receiver says whether an HTTP request arrived
/// (false: the client gave up during the handshake).
pub async fn upstream_writing_at_once(
    events: usize,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (asked, asked_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut socket: Box<dyn Io> = match acceptor {
            None => Box::new(tcp),
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(tls) => Box::new(tls),
                Err(_) => {
                    let _ = asked.send(false);
                    return;
                }
            },
        };
        let _ = asked.send(true);
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
        let mut answer =
            String::from("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        for n in 0..events {
            let event = format!("data: {{\"n\":{n}}}\n\n");
            answer.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
        }
        answer.push_str("0\r\n\r\n");
        socket.write_all(answer.as_bytes()).await.unwrap();
        // Held open: the gateway, not the provider, ends the exchange.
        let _ = socket.read(&mut buf).await;
    });
    (addr, asked_rx)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A CA, and a server certificate it signed for `name`, as a TLS acceptor.
pub fn tls_server(name: &str) -> (rustls::pki_types::CertificateDer<'static>, tokio_rustls::TlsAcceptor) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    (ca_cert.der().clone(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Takes every frame the body has ready without waiting: (data frames, ended).
pub fn frames_ready_now(body: &mut UpstreamResponseBody) -> (usize, bool) {
    use http_body::Body;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut events = 0;
    while let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut *body).poll_frame(&mut cx) {
        match frame {
            Some(frame) => events += usize::from(frame.unwrap().is_data()),
            None => return (events, true),
        }
    }
    (events, false)
}
