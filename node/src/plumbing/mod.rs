//! HTTP plumbing that the data path and every backend share: the body type
//! of responses, the upstream clients and their connection pool, and the
//! one request-path error type.
//!
//! It knows no phase, route or provider. `proxy` (the phases and the REST
//! service backend) and `ai` (the AI backend) both build on it; neither
//! imports the other's internals through it.

pub mod body;
pub mod client;
pub mod error;
mod pool;
pub mod provider_client;
mod self_wake;
#[cfg(test)]
mod test_support;

pub use body::{GatewayBody, empty, full};
pub use client::{BoxError, Upstream, UpstreamClient, UpstreamClients, UpstreamResponseBody};
pub use error::{GatewayError, LimitRefusal, RefusalCause};
pub use pool::PoolError;
pub use provider_client::{PooledTarget, ProviderClientError, ProviderClients};
