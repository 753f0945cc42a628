//! Sealing of provider secrets with the cluster key.
//!
//! The key is derived (HKDF-SHA256) from the cluster CA's private key, which
//! every member already holds and a joining node receives with its
//! certificate, so no second secret has to be distributed or rotated in step.
//! Secrets are sealed by the admin server before they are proposed: the Raft
//! log, snapshots and RocksDB only ever hold ciphertext.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::pki::ClusterTls;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes sealing adds to a plaintext: version, nonce and tag. Sealing keeps
/// the length, so validation can check a sealed secret's size.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
const SALT: &[u8] = b"tollgate secrets v1";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a sealed secret cannot be opened with this cluster's key (sealed by another cluster, or corrupt); set the credential's secret again"
    )]
    Open,
    #[error("the sealed secret has an unknown format version {0}; upgrade this node")]
    Version(u8),
    #[error("cannot seal a secret: the system random source failed")]
    Random,
}

/// Seals and opens secrets with the cluster key. Cheap to clone.
#[derive(Clone)]
pub struct SecretBox {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        CHACHA20_POLY1305.key_len()
    }
}

impl SecretBox {
    pub fn from_cluster(tls: &ClusterTls) -> SecretBox {
        SecretBox::from_key_material(tls.ca_key_pem.as_bytes())
    }

    pub fn from_key_material(ikm: &[u8]) -> SecretBox {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(ikm);
        let mut key = [0u8; 32];
        // Both calls only fail for output lengths HKDF cannot produce; 32 bytes is always valid.
        prk.expand(&[b"provider credentials"], KeyLen)
            .and_then(|okm| okm.fill(&mut key))
            .expect("HKDF-SHA256 yields 32 bytes");
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte ChaCha20-Poly1305 key");
        SecretBox { key: std::sync::Arc::new(LessSafeKey::new(unbound)) }
    }

    /// `context` (e.g. "provider/credential") is bound into the tag, so a
    /// sealed secret copied onto another credential does not open.
    pub fn seal(&self, context: &str, plaintext: &str) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<String, SecretError> {
        let (&version, rest) = sealed.split_first().ok_or(SecretError::Open)?;
        if version != VERSION {
            return Err(SecretError::Version(version));
        }
        if rest.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut buf = ciphertext.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf).map_err(|_| SecretError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Open)
    }
}

/// The context a route's JWT HMAC secret is sealed under.
pub fn jwt_secret_context(route_id: &str) -> String {
    format!("route/{route_id}/jwt-hs-secret")
}

/// The context a provider credential is sealed under.
pub fn credential_context(provider_id: &str, credential_id: &str) -> String {
    format!("provider/{provider_id}/credential/{credential_id}")
}

/// The context a provider's extra header value is sealed under. Header names
/// are case-insensitive, so the context uses the lower-case form.
pub fn provider_header_context(provider_id: &str, header_name: &str) -> String {
    format!("provider/{provider_id}/header/{}", header_name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let a = SecretBox::from_key_material(b"cluster a");
        let sealed = a.seal("p/k1", "sk-test-123").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"sk-test-123"), "ciphertext must not contain the plaintext");
        assert_eq!(a.open("p/k1", &sealed).unwrap(), "sk-test-123");
        assert!(matches!(a.open("p/k2", &sealed), Err(SecretError::Open)));
        let b = SecretBox::from_key_material(b"cluster b");
        assert!(matches!(b.open("p/k1", &sealed), Err(SecretError::Open)));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(a.open("p/k1", &tampered), Err(SecretError::Open)));
        assert!(matches!(a.open("p/k1", &[9, 1, 2]), Err(SecretError::Version(9))));
        assert_ne!(a.seal("p/k1", "x").unwrap(), a.seal("p/k1", "x").unwrap(), "nonces must differ");
    }
}
