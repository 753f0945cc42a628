//! gRPC status codes that mean what they say, from the typed errors below.

use tollgate_raft::{ApplyError, ProposeError, RaftNodeError};
use tonic::Status;

pub fn from_apply(error: ApplyError) -> Status {
    let message = error.to_string();
    match error {
        ApplyError::InvalidArgument { .. } => Status::invalid_argument(message),
        ApplyError::NotFound { .. } => Status::not_found(message),
        ApplyError::AlreadyExists { .. } => Status::already_exists(message),
        ApplyError::FailedPrecondition(_) => Status::failed_precondition(message),
        ApplyError::PermissionDenied(_) => Status::permission_denied(message),
    }
}

pub fn from_node(error: RaftNodeError) -> Status {
    let message = error.to_string();
    match error {
        RaftNodeError::NotLeader { .. } | RaftNodeError::Unavailable(_) => Status::unavailable(message),
        RaftNodeError::Fatal(_) => Status::unavailable(message),
        RaftNodeError::InvalidMembership(_) => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

pub fn from_propose(error: ProposeError) -> Status {
    match error {
        ProposeError::Rejected(e) => from_apply(e),
        ProposeError::Node(e) => from_node(e),
    }
}
