//! Rate limits and budgets on the data path (DESIGN §5): which limits apply
//! to a request (`compiled`), this node's quota leases (`lease`), admission
//! across all of a request's limits (`limiter`), the task that asks the
//! cluster for leases (`client`), and the response headers (`headers`).

pub mod client;
mod compiled;
pub mod headers;
mod lease;
mod limiter;

pub use compiled::{Bucketed, CompiledLimits, Who};
pub use lease::LeaseView;
pub use limiter::{Limiter, Taken};
