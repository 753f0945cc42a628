//! The cluster's certificate authority and node certificates (mutual TLS for
//! peer traffic). The first node creates the CA; a node that joins with a
//! valid token receives a certificate signed by it, plus the CA itself, so
//! that every member can admit the next one.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every node certificate carries this DNS name, and peers verify it; node
/// identity is the Raft id, not the address, which may be a relay or NAT.
pub const PEER_SERVER_NAME: &str = "tollgate.cluster";
const CA_NAME: &str = "Tollgate cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write TLS material in {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS material in {dir} is invalid ({what}); restore it or re-join the node")]
    Invalid { dir: PathBuf, what: String },
}

/// PEM texts of the CA and of one node's certificate and key.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterTls {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub node_cert_pem: String,
    pub node_key_pem: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").field("ca_fingerprint", &self.ca_fingerprint()).finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

fn node_params(node_id: u64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(vec![PEER_SERVER_NAME.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("tollgate node {node_id}"));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

impl ClusterTls {
    /// A new CA and the first node's certificate.
    pub fn create(node_id: u64) -> Result<ClusterTls, PkiError> {
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params().self_signed(&ca_key)?;
        let ca_key_pem = ca_key.serialize_pem();
        let mut tls = ClusterTls {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem,
            node_cert_pem: String::new(),
            node_key_pem: String::new(),
        };
        let (cert, key) = tls.issue(node_id)?;
        tls.node_cert_pem = cert;
        tls.node_key_pem = key;
        Ok(tls)
    }

    /// A certificate and key for another node, signed by this cluster's CA.
    pub fn issue(&self, node_id: u64) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let node_key = KeyPair::generate()?;
        let cert = node_params(node_id)?.signed_by(&node_key, &issuer)?;
        Ok((cert.pem(), node_key.serialize_pem()))
    }

    /// The TLS material for a joining node: our CA, its own certificate.
    pub fn for_joiner(&self, node_id: u64) -> Result<ClusterTls, PkiError> {
        let (node_cert_pem, node_key_pem) = self.issue(node_id)?;
        Ok(ClusterTls { node_cert_pem, node_key_pem, ..self.clone() })
    }

    /// SHA-256 of the CA certificate (DER), hex: what a join token pins.
    pub fn ca_fingerprint(&self) -> String {
        CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes())
            .map(|der| hex::encode(Sha256::digest(der.as_ref())))
            .unwrap_or_default()
    }

    pub fn ca_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid { dir: PathBuf::new(), what: format!("CA certificate: {e}") })
    }

    /// The node's certificate chain (node, CA) and private key, for rustls.
    pub fn node_identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let invalid = |what: String| PkiError::Invalid { dir: PathBuf::new(), what };
        let cert = CertificateDer::from_pem_slice(self.node_cert_pem.as_bytes())
            .map_err(|e| invalid(format!("node certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.node_key_pem.as_bytes())
            .map_err(|e| invalid(format!("node key: {e}")))?;
        Ok((vec![cert, self.ca_der()?], key))
    }

    pub fn load(dir: &Path) -> Result<Option<ClusterTls>, PkiError> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        let io = |source| PkiError::Io { dir: dir.to_path_buf(), source };
        if !dir.join("ca.pem").exists() {
            return Ok(None);
        }
        Ok(Some(ClusterTls {
            ca_cert_pem: read("ca.pem").map_err(io)?,
            ca_key_pem: read("ca.key").map_err(io)?,
            node_cert_pem: read("node.pem").map_err(io)?,
            node_key_pem: read("node.key").map_err(io)?,
        }))
    }

    /// Writes the files (keys readable by the owner only); `ca.pem` last, so
    /// its presence means the set is complete.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let io = |source| PkiError::Io { dir: dir.to_path_buf(), source };
        // 0700: it holds the CA key, from which the cluster's secret key is derived.
        tollgate_storage::private::private_dir(dir).map_err(io)?;
        for (name, text) in [
            ("ca.key", &self.ca_key_pem),
            ("node.pem", &self.node_cert_pem),
            ("node.key", &self.node_key_pem),
            ("ca.pem", &self.ca_cert_pem),
        ] {
            write_private(&dir.join(name), text).map_err(io)?;
        }
        Ok(())
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    // A mode only applies when the file is created: a leftover tmp file
    // (from a crash) is removed so that it is.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = tollgate_storage::private::private_file_options().write(true).create_new(true).open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}
