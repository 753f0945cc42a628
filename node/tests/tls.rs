//! TLS termination: SNI picks the certificate, ALPN offers h2, requests are
//! proxied over TLS, and replaced certificate files are served without a restart.

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
