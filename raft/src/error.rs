use serde::{Deserialize, Serialize};

use crate::entities::EntityKind;

/// Why `apply` rejected a command. Deterministic: every replica rejects the
/// same command with the same error, and a rejected command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} {id:?} does not exist; list them with `tollgate ctl {list_cmd}`", list_cmd = .kind.list_command())]
    NotFound { kind: EntityKind, id: String },
    #[error("a {kind} named {name:?} already exists; pick another name or update the existing one")]
    AlreadyExists { kind: EntityKind, name: String },
    #[error("{0}")]
    FailedPrecondition(String),
    /// The command's actor may not make this change (its role, or its team
    /// does not own what the change touches).
    #[error("{0}")]
    PermissionDenied(String),
}

impl ApplyError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApplyError {
        ApplyError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
    pub(crate) fn not_found(kind: EntityKind, id: impl Into<String>) -> ApplyError {
        ApplyError::NotFound { kind, id: id.into() }
    }
}

/// Errors of the Raft node as a whole (not of one command).
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    #[error(transparent)]
    Storage(#[from] tollgate_storage::StorageError),
    #[error("stored raft data is corrupt ({what}): {detail}. Restore the data directory from a backup")]
    Corrupt { what: &'static str, detail: String },
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("raft is shutting down or has stopped: {0}")]
    Fatal(String),
    #[error(
        "this node is not the leader{}; writes must go to the leader",
        .leader.map(|l| format!(" (leader is node {l})")).unwrap_or_else(|| " and no leader is known".into())
    )]
    NotLeader { leader: Option<u64> },
    #[error("raft error: {0}")]
    Raft(String),
    /// A membership change that would break the cluster (a node reusing
    /// another member's address or id); refused before it was proposed.
    #[error("{0}")]
    InvalidMembership(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}
