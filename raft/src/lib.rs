//! Tollgate's consensus layer: the openraft type configuration, a durable log
//! store and state machine on `tollgate-storage`, the deterministic `apply` of
//! gateway commands, and publication of an immutable view of the gateway state
//! for the data plane after every applied batch.
#![forbid(unsafe_code)]

mod admit;
mod apply;
mod entities;
mod error;
mod journal;
mod keys;
mod leader;
mod log_store;
mod node;
pub mod openapi;
mod outcomes;
pub mod pki;
mod quorum;
mod registry;
pub mod secrets;
mod snapshot_file;
mod state;
mod state_machine;
mod table;
pub mod transport;
mod types;
mod validate;
mod validate_ai;
mod validate_policy;
mod validate_prompt;

pub use apply::{
    Action, Actor, Change, MAX_OPENAPI_BYTES, MAX_SELF_SERVICE_KEYS, USAGE_DIMENSIONS, apply, consumer_actor, dry_run,
    redacted, service_is_published, usage_counter_id, version_is_live, version_state_name,
};
pub use entities::{AnyEntity, EntityKind};
pub use error::{ApplyError, RaftNodeError};
pub use journal::Touched;
pub use log_store::LogStore;
pub use node::{ClusterSetup, MemberStatus, NodeStatus, ProposeError, RaftConfig, RaftNode, Role};
pub use quorum::{QuorumLoss, Reach, Voter};
pub use state::GatewayState;
pub use state_machine::StateMachine;
pub use types::{Applied, Command, CommandResponse, Raft, TypeConfig};
pub use validate::{is_framing_header, port_number, written_port};
pub use validate_ai::provider_header_value;
pub use validate_policy::parse_cidr;

#[cfg(test)]
mod tests;
