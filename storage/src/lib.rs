//! Tollgate's storage engine: one RocksDB database with a fixed set of column
//! families, atomic multi-family write batches, prefix scans and checkpoints.
//!
//! This crate knows nothing about Raft or about what the bytes mean; the layers
//! above decide keys and encodings. Keeping RocksDB behind this one crate also
//! keeps most of the workspace from having to know its API.
//!
//! [`KvEngine`] is what the state machine needs of an engine (`engine.rs`).
//! [`Engine`] (RocksDB, `rocks.rs`) is the one nodes run on; [`MemEngine`]
//! (`mem.rs`) keeps everything in memory for tests.
#![forbid(unsafe_code)]

#[cfg(test)]
mod conformance;
mod engine;
mod error;
mod mem;
pub mod private;
mod rocks;

pub use engine::{Batch, Durability, KeyValue, KvEngine};
pub use error::StorageError;
pub use mem::MemEngine;
pub use rocks::{Engine, MemoryBudget};

/// The column families of DESIGN §3. Each has one job, so that a snapshot can
/// stream exactly the replicated state and a log purge touches nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Raft log entries keyed by big-endian index.
    RaftLog,
    /// Vote, committed index, purge marker, state-machine bookkeeping.
    RaftMeta,
    /// The replicated gateway state. Snapshots are this family.
    State,
    /// Node-local data that is never replicated (identity, usage journal).
    Local,
}

impl Cf {
    pub const ALL: [Cf; 4] = [Cf::RaftLog, Cf::RaftMeta, Cf::State, Cf::Local];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::State => "state",
            Cf::Local => "local",
        }
    }
}
