//! TLS termination for the proxy listener: certificates from PEM files, the
//! one matching the client's SNI chosen per handshake (the first listed is
//! the default), ALPN h2 and http/1.1, and reload without restart: the files'
//! modification times are polled and a changed set is loaded and swapped in
//! atomically. A broken file keeps the previous certificates serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("proxy.tls needs at least one certificate")]
    Empty,
    #[error("cannot build the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

struct Loaded {
    key: Arc<CertifiedKey>,
}

/// Resolves the certificate per handshake from the current set.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.load();
        if let Some(sni) = hello.server_name().and_then(|n| ServerName::try_from(n.to_string()).ok()) {
            for key in certs.iter() {
                let Some(leaf) = key.cert.first() else { continue };
                if let Ok(ee) = webpki::EndEntityCert::try_from(leaf)
                    && ee.verify_is_valid_for_subject_name(&sni).is_ok()
                {
                    return Some(key.clone());
                }
            }
        }
        certs.first().cloned()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_one(files: &CertFiles, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let read = |path: &PathBuf| std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source });
    let cert_pem = read(&files.cert_file)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: files.cert_file.clone() });
    }
    let key_pem = read(&files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::BadKey { path: files.key_file.clone(), reason: e.to_string() })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey { path: files.key_file.clone(), reason: e.to_string() })?;
    Ok(Loaded { key: Arc::new(CertifiedKey::new(chain, signing)) })
}

fn load_all(files: &[CertFiles]) -> Result<Vec<Arc<CertifiedKey>>, TlsError> {
    if files.is_empty() {
        return Err(TlsError::Empty);
    }
    let provider = provider();
    files.iter().map(|f| load_one(f, &provider).map(|l| l.key)).collect()
}

/// The listener's TLS settings plus the resolver the reload task updates.
pub struct TlsTerminator {
    pub acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<CertResolver>,
    files: Vec<CertFiles>,
}

impl TlsTerminator {
    pub fn new(files: Vec<CertFiles>) -> Result<TlsTerminator, TlsError> {
        let resolver = Arc::new(CertResolver { current: ArcSwap::from_pointee(load_all(&files)?) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsTerminator { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), resolver, files })
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        self.files
            .iter()
            .flat_map(|f| [&f.cert_file, &f.key_file])
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Polls the files every `interval` and swaps in a changed set. Runs until aborted.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut seen = self.mtimes();
        loop {
            tokio::time::sleep(interval).await;
            let now = self.mtimes();
            if now == seen {
                continue;
            }
            match load_all(&self.files) {
                Ok(certs) => {
                    self.resolver.current.store(Arc::new(certs));
                    seen = now;
                    tracing::info!(certificates = self.files.len(), "reloaded TLS certificates");
                }
                // Files are often replaced one at a time; try again next tick.
                Err(error) => tracing::warn!(%error, "cannot reload TLS certificates; still serving the previous ones"),
            }
        }
    }
}
