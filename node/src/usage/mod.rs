//! The usage ledger (DESIGN §5): one `UsageRecord` per request that got a
//! response, REST and AI alike, journaled on the node that served it, then
//! folded into counters the whole cluster shares.
//!
//! - `ledger`: the request path appends each record to this node's journal
//!   (`tollgate_journal`, memory-mapped: safe from a killed process once
//!   appended, at no system call) before the response goes out; reads list
//!   and sum records.
//! - `record`: the record as the request path encodes it, without building
//!   a `UsageRecord`; the filters listings apply.
//! - `flush`: a task that sums the records after this node's watermark into
//!   one `Op::Usage` batch at a time and proposes it; the state machine
//!   folds a batch only if it starts right after the watermark, so a retry
//!   never counts twice (raft `apply/usage.rs`). It also deletes folded
//!   records past the retention.

pub mod flush;
pub mod ledger;
pub mod record;
#[cfg(test)]
mod tests;

use tollgate_storage::StorageError;

pub use ledger::UsageLedger;
pub use record::{RecordFilter, RequestUsage};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("usage {0}")]
    Journal(#[from] tollgate_journal::JournalError),
    #[error("usage record {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("unknown group {0:?}; use any of key, consumer, model, provider, credential, route, service, kind, day")]
    UnknownGroup(String),
}
