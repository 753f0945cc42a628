//! API key (and admin token) format and verification.
//!
//! A key reads `tg_<id>_<secret>`, an admin token `tgadm_<id>_<secret>`: the
//! id finds the stored record without a scan, and only a SHA-256 of the
//! 256-bit random secret is stored. A fast hash is enough here (unlike for
//! passwords) because the secret is high-entropy.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "tg_";
/// Admin tokens (`crate::admin::access`): a prefix of their own, so a
/// consumer's key is never mistaken for one, nor the reverse.
pub const ADMIN_PREFIX: &str = "tgadm_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A newly minted key: the plaintext for the caller, and what gets stored.
pub struct NewKey {
    pub id: String,
    pub plaintext: String,
    pub secret_sha256: Vec<u8>,
    pub display_prefix: String,
}

pub fn generate() -> NewKey {
    generate_with(PREFIX)
}

pub fn generate_with(prefix: &str) -> NewKey {
    let mut rng = rand::rng();
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    let plaintext = format!("{prefix}{id}_{secret}");
    NewKey {
        display_prefix: format!("{prefix}{id}_{}…", &secret[..4]),
        secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
        id,
        plaintext,
    }
}

/// The parts of a presented key, not yet verified.
pub struct Presented<'a> {
    pub id: &'a str,
    secret: &'a str,
}

pub fn parse(presented: &str) -> Option<Presented<'_>> {
    parse_with(PREFIX, presented)
}

pub fn parse_with<'a>(prefix: &str, presented: &'a str) -> Option<Presented<'a>> {
    const ID_HEX: usize = ID_BYTES * 2;
    let rest = presented.strip_prefix(prefix)?;
    let bytes = rest.as_bytes();
    // A fixed layout, `<id hex>_<secret hex>`, checked by position. Every
    // request with a key runs this: the digit test is branch-free so that
    // it vectorizes (a byte-by-byte `is_ascii_hexdigit` was ~9 instructions
    // a byte).
    if bytes.len() != ID_HEX + 1 + SECRET_BYTES * 2 || bytes[ID_HEX] != b'_' {
        return None;
    }
    let all_hex = |part: &[u8]| part.iter().fold(true, |ok, &b| ok & is_hex_digit(b));
    // All ASCII once checked, so the slices below fall on character boundaries.
    (all_hex(&bytes[..ID_HEX]) && all_hex(&bytes[ID_HEX + 1..]))
        .then(|| Presented { id: &rest[..ID_HEX], secret: &rest[ID_HEX + 1..] })
}

#[inline]
fn is_hex_digit(b: u8) -> bool {
    // `| 0x20` folds A-F onto a-f (and maps no other byte there).
    (b.wrapping_sub(b'0') < 10) | ((b | 0x20).wrapping_sub(b'a') < 6)
}

impl Presented<'_> {
    /// Constant-time comparison, so response timing reveals nothing about the stored hash.
    pub fn matches(&self, stored_sha256: &[u8]) -> bool {
        let digest = Sha256::digest(self.secret.as_bytes());
        digest.as_slice().ct_eq(stored_sha256).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_parses_and_verifies_only_against_its_own_hash() {
        let key = generate();
        let other = generate();
        let presented = parse(&key.plaintext).expect("well-formed");
        assert_eq!(presented.id, key.id);
        assert!(presented.matches(&key.secret_sha256));
        assert!(!presented.matches(&other.secret_sha256));
        assert!(!key.display_prefix.contains(&key.plaintext[20..]), "prefix must not reveal the secret");
    }

    #[test]
    fn hex_digits_are_exactly_the_ascii_ones() {
        for b in 0..=u8::MAX {
            assert_eq!(is_hex_digit(b), b.is_ascii_hexdigit(), "byte {b:#04x}");
        }
    }

    #[test]
    fn malformed_keys_are_rejected_before_lookup() {
        let id = "0".repeat(16);
        let secret = "a".repeat(64);
        for bad in [
            "",
            "tg_",
            "tg_abc_def",
            "sk-123",
            &format!("tg_{}_{}", "z".repeat(16), "0".repeat(64)),
            &format!("tg_{id}_{}G", &secret[1..]),
            &format!("tg_{id}-{secret}"),
            &format!("tg_{id}__{}", &secret[1..]),
            &format!("tg_{id}_{secret}0"),
            // Multi-byte characters where the separator or a digit belongs: refused, no panic.
            &format!("tg_{}é_{}", &id[..15], &secret[..63]),
            &format!("tg_{id}_{}é", &secret[..62]),
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
