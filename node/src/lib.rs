//! The `tollgate` node: the proxy data plane, the admin gRPC API, and the
//! `tollgate ctl` client, on top of `tollgate-raft`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ai;
pub mod apikey;
pub mod clock;
pub mod cluster_events;
pub mod config;
pub mod ctl;
pub mod limits;
pub mod mcp;
pub mod net;
pub mod ops;
pub mod plumbing;
pub mod portal;
pub mod proxy;
pub mod server;
pub mod telemetry;
pub mod usage;

pub use config::Config;
pub use server::{Node, NodeError};
