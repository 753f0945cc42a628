//! `tollgate-cluster`: local multi-process Tollgate clusters for operators and
//! for the fault tests: launcher, fault injection (kill, stop, pause,
//! partition through UDP relays), a history checker, and benchmarks.
#![forbid(unsafe_code)]

pub mod bench;
pub mod control;
pub mod harness;
pub mod history;
pub mod relay;
