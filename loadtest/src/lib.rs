//! `tollgate-load`: an open/closed-loop HTTP load generator that understands LLM streaming,
//! plus the mock upstreams used to benchmark and test the Tollgate gateway.

pub mod client;
pub mod compare;
pub mod mock;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod spec;
pub mod sse;
pub mod stats;
pub mod summary;
pub mod target;
pub mod template;
pub mod tls;
