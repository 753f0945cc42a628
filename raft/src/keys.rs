//! Key layout. `state` holds one key per entity, `<kind>/<id>`, so a snapshot
//! is a plain scan and name indexes are rebuilt in memory instead of stored.
//! Raft log keys are big-endian indexes so RocksDB's order is log order.

use crate::entities::EntityKind;

/// `<kind prefix><id>`; the prefixes are declared with the entities.
pub(crate) fn entity_key(kind: EntityKind, id: &str) -> Vec<u8> {
    let mut key = kind.key_prefix().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

// raft_meta keys
pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const SM_APPLIED: &[u8] = b"sm/applied";
pub(crate) const SM_MEMBERSHIP: &[u8] = b"sm/membership";
