//! rustls configurations for peer traffic. Raft connections are mutually
//! authenticated by the cluster CA. A joining node has no certificate yet: it
//! connects with the join ALPN and authenticates the server by the CA
//! fingerprint in its token instead.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::pki::{ClusterTls, PkiError};

pub const ALPN_RAFT: &[u8] = b"tollgate-peer/1";
pub const ALPN_JOIN: &[u8] = b"tollgate-join/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC does not accept this TLS configuration: {0}")]
    Quic(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(tls: &ClusterTls) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add(tls.ca_der()?)?;
    Ok(Arc::new(roots))
}

/// Accepts peers with a CA-signed certificate, and certificate-less joiners
/// (who may then only speak the join protocol: checked per connection).
pub fn server_config(tls: &ClusterTls) -> Result<quinn::ServerConfig, TlsSetupError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(tls)?, provider())
        .allow_unauthenticated()
        .build()?;
    let (chain, key) = tls.node_identity()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_RAFT.to_vec(), ALPN_JOIN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config());
    Ok(server)
}

pub fn client_config(tls: &ClusterTls) -> Result<quinn::ClientConfig, TlsSetupError> {
    let (chain, key) = tls.node_identity()?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(tls)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_RAFT.to_vec()];
    quic_client(config)
}

/// For a node that is joining: no client certificate, server pinned by the
/// SHA-256 of the cluster CA found in the join token.
pub fn join_client_config(ca_fingerprint: &str) -> Result<quinn::ClientConfig, TlsSetupError> {
    let verifier = Arc::new(PinnedCa { fingerprint: ca_fingerprint.to_ascii_lowercase(), provider: provider() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    quic_client(config)
}

fn quic_client(config: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsSetupError> {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(|e| TlsSetupError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport_config());
    Ok(client)
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // Dead peers must be noticed well within an election timeout's order of magnitude.
    transport.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
    transport.max_idle_timeout(Some(std::time::Duration::from_secs(5).try_into().expect("5 s fits a VarInt")));
    transport.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(transport)
}

/// Verifies the server's chain against the one CA whose fingerprint the
/// operator handed over in the join token (like kubeadm's CA cert hash).
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca =
            intermediates.iter().find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint).ok_or_else(
                || rustls::Error::General("the peer's CA does not match the fingerprint in the join token".into()),
            )?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
