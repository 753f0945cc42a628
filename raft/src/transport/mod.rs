//! Peer traffic over QUIC with mutual TLS: Raft RPCs, streamed snapshots,
//! forwarded admin writes and reads, membership changes, and the join protocol.

mod endpoint;
pub(crate) mod handler;
mod network;
pub(crate) mod tls;
pub mod wire;

pub use endpoint::{CallError, JoinError, JoinToken, Transport, TransportError, join};
pub use network::PeerNetwork;
pub use wire::{MembershipOp, PeerStatus};
