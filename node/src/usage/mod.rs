//! The usage ledger (DESIGN §5): one `UsageRecord` per request that got a
//! response, REST and AI alike, journaled on the node that served it, then
//! folded into counters the whole cluster shares.
//!
//! - `ledger`: the request path's side: a response waits until its record
//!   is journaled; the requests in flight write their records together, one
//!   RocksDB batch per group (a group commit).
//! - `journal`: where and how records are kept in the node-local `local`
//!   column family (never replicated).
//! - `flush`: a task that sums the records after this node's watermark into
//!   one `Op::Usage` batch at a time and proposes it; the state machine
//!   folds a batch only if it starts right after the watermark, so a retry
//!   never counts twice (raft `apply/usage.rs`). It also deletes folded
//!   records past the retention.
//!
//! The `account` phase only queues a record and returns its [`Ticket`];
//! the request's handler awaits it after the phases, and the write is made
//! so that it never waits for RocksDB (see `ledger`).

pub mod flush;
mod journal;
pub mod ledger;
#[cfg(test)]
mod tests;

use tollgate_storage::StorageError;

pub use journal::RecordFilter;
pub use ledger::{Ticket, UsageLedger};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("usage record {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("unknown group {0:?}; use any of key, consumer, model, provider, credential, route, service, kind, day")]
    UnknownGroup(String),
    #[error("the usage ledger is closed: {0}")]
    Closed(String),
}

/// Whether a backend journaled a request's record itself, which the
/// `account` phase needs to know so that every request counts once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recorded {
    /// Not yet: `account` journals it.
    #[default]
    No,
    /// Queued by the backend; the response waits for the ticket.
    Queued(Ticket),
    /// Queued by the response's body when it ends (an AI stream, whose
    /// tokens are known only then), which waits for it before its last frame.
    AtBodyEnd,
}
