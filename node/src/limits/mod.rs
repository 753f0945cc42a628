//! Rate limits and budgets on the data path (DESIGN §5): which limits apply
//! to a request, and admission from this node's quota leases.

mod compiled;

pub use compiled::{Bucketed, CompiledLimits, Who};
