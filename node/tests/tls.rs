//! TLS termination: SNI picks the certificate, ALPN offers h2, requests are
//! proxied over TLS, and replaced certificate files are served without a restart.
//! TLS to upstreams: the certificate is verified against the service's CA and
//! name, and an upstream that fails verification gets no request.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, ServerName};
use tollgate_node::Node;
use tollgate_node::config::ProxyTls;
use tollgate_node::proxy::tls::CertFiles;
use tollgate_proto::config::v1::*;

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
}

/// Writes a leaf certificate for `host` and returns its DER.
fn leaf(ca: &Ca, host: &str, dir: &std::path::Path) -> (CertFiles, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap().signed_by(&key, &ca.issuer).unwrap();
    let files = CertFiles { cert_file: dir.join(format!("{host}.crt")), key_file: dir.join(format!("{host}.key")) };
    // Key first: the reloader sees the pair change when the certificate lands.
    std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
    std::fs::write(&files.cert_file, cert.pem()).unwrap();
    (files, cert.der().clone())
}

fn connector(ca: &Ca) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    sni: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector.connect(ServerName::try_from(sni.to_string()).unwrap(), tcp).await.expect("handshake verifies")
}

#[tokio::test]
async fn sni_selects_the_certificate_and_reload_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (a_files, a_der) = leaf(&ca, "a.test", dir.path());
    let (b_files, b_der) = leaf(&ca, "b.test", dir.path());
    let mut config = test_config(dir.path());
    config.proxy.tls = Some(ProxyTls {
        listen: "127.0.0.1:0".parse().unwrap(),
        certificates: vec![a_files, b_files],
        reload_interval_ms: 50,
    });
    let node = Node::start(config).await.unwrap();
    let tls_addr = node.proxy_tls_addr.expect("TLS listener bound");
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let upstream = Upstream::start("u").await;
    let svc = Service {
        name: "svc".into(),
        targets: vec![Target { host: "127.0.0.1".into(), port: upstream.addr.port().into(), weight: 1 }],
        ..Default::default()
    };
    admin.create_service(svc).await.unwrap();
    let route = Route {
        name: "r".into(),
        service_id: "svc".into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/".into() }],
        auth: AuthMode::None as i32,
        ..Default::default()
    };
    admin.create_route(route).await.unwrap();

    let connector = connector(&ca);
    let a = handshake(&connector, tls_addr, "a.test").await;
    assert_eq!(a.get_ref().1.peer_certificates().unwrap()[0], a_der, "SNI a.test gets a's certificate");
    assert_eq!(a.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN negotiates h2");
    let b = handshake(&connector, tls_addr, "b.test").await;
    assert_eq!(b.get_ref().1.peer_certificates().unwrap()[0], b_der, "SNI b.test gets b's certificate");

    // A request over TLS + h2 reaches the upstream, which learns the client spoke https.
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(a))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("https://a.test/hello").body(full("")).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    // Replace a.test's files; new handshakes get the new certificate.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, new_der) = leaf(&ca, "a.test", dir.path());
    let mut served = None;
    for _ in 0..200 {
        let s = handshake(&connector, tls_addr, "a.test").await;
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        if der == new_der {
            served = Some(der);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, Some(new_der), "the reloaded certificate is served without a restart");
    node.shutdown().await;
}

/// An HTTPS upstream with `cert` for its name: answers 200 "secure <path>",
/// and accepts an upgrade with a 101, then echoes bytes.
async fn tls_upstream(files: &CertFiles, cert: CertificateDer<'static>) -> std::net::SocketAddr {
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake here.
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service =
                    hyper::service::service_fn(|mut request: http::Request<hyper::body::Incoming>| async move {
                        let response = accept_echo_upgrade(&mut request).unwrap_or_else(http::Response::builder);
                        let body = format!("secure {}", request.uri().path());
                        Ok::<_, std::convert::Infallible>(
                            response.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap(),
                        )
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_is_verified_against_the_given_ca_and_name() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (ca(), ca());
    let (files, cert) = leaf(&ca, "api.internal", dir.path());
    let upstream = tls_upstream(&files, cert).await;

    let node = start_node(&dir.path().join("node")).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let cases = [
        ("good", ca.pem.as_str(), "api.internal"),
        ("wrong-name", ca.pem.as_str(), "other.internal"),
        ("untrusted-ca", other_ca.pem.as_str(), "api.internal"),
        // Without a name the target's address is verified, and the certificate does not cover it.
        ("address-only", ca.pem.as_str(), ""),
    ];
    for (name, ca_pem, server_name) in cases {
        let service = Service {
            name: name.into(),
            targets: vec![Target { host: "127.0.0.1".into(), port: upstream.port().into(), weight: 1 }],
            tls: Some(UpstreamTls { enabled: true, ca_pem: ca_pem.into(), server_name: server_name.into() }),
            ..Default::default()
        };
        admin.create_service(service).await.unwrap();
        let path = format!("/{name}");
        admin
            .create_route(Route {
                name: name.into(),
                service_id: name.into(),
                paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path }],
                auth: AuthMode::None as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let reply = get(node.proxy_addr, "/good/x", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body, "secure /good/x");
    for refused in ["/wrong-name", "/untrusted-ca", "/address-only"] {
        let reply = get(node.proxy_addr, refused, &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{refused}: an unverified upstream gets no request");
        assert_eq!(reply.json()["error"]["code"], "upstream_unavailable");
    }

    // Upgrades work over a TLS upstream too.
    let mut tunnel = tokio::net::TcpStream::connect(node.proxy_addr).await.unwrap();
    let head =
        raw_head(&mut tunnel, "GET /good/ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    tunnel.write_all(b"over tls").await.unwrap();
    let mut echoed = [0u8; 8];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"over tls");
    node.shutdown().await;
}
