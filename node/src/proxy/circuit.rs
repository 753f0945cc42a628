//! A per-service circuit breaker: after `failure_threshold` consecutive failed
//! requests the circuit opens and requests fail fast with 503 for `open_ms`;
//! then one trial request goes through (half-open). Its success closes the
//! circuit, its failure opens it again. State is shared by every snapshot.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::health::now_ms;

#[derive(Debug, Default)]
pub struct Circuit {
    failures: AtomicU32,
    /// `now_ms()` when the circuit opened; 0 = closed.
    opened_at: AtomicU64,
    trial_in_flight: AtomicBool,
}

/// What the breaker decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The single half-open trial; its outcome decides the circuit.
    Trial,
    No,
}

/// The breaker's decision for one request, to be given its outcome. A
/// half-open trial dropped without one (the client went away, its body could
/// not be read) hands the trial back rather than leaving the circuit stuck.
pub struct Admission<'a> {
    circuit: &'a Circuit,
    pub admit: Admit,
    threshold: u32,
    decided: bool,
}

impl Admission<'_> {
    pub fn record(mut self, ok: bool) {
        self.decided = true;
        self.circuit.record(self.admit, ok, self.threshold);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.decided && self.admit == Admit::Trial {
            self.circuit.trial_in_flight.store(false, Ordering::Release);
        }
    }
}

impl Circuit {
    pub fn admission(&self, open_ms: u64, threshold: u32) -> Admission<'_> {
        Admission { circuit: self, admit: self.admit(open_ms), threshold, decided: false }
    }

    pub fn admit(&self, open_ms: u64) -> Admit {
        let opened = self.opened_at.load(Ordering::Relaxed);
        if opened == 0 {
            return Admit::Yes;
        }
        if now_ms().saturating_sub(opened) < open_ms {
            return Admit::No;
        }
        if self.trial_in_flight.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            Admit::Trial
        } else {
            Admit::No
        }
    }

    pub fn record(&self, admit: Admit, ok: bool, threshold: u32) {
        if admit == Admit::Trial {
            if ok {
                self.failures.store(0, Ordering::Relaxed);
                self.opened_at.store(0, Ordering::Relaxed);
                tracing::info!("circuit closed after a successful trial");
            } else {
                self.opened_at.store(now_ms().max(1), Ordering::Relaxed);
            }
            self.trial_in_flight.store(false, Ordering::Release);
            return;
        }
        if ok {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= threshold && self.opened_at.load(Ordering::Relaxed) == 0 {
            self.opened_at.store(now_ms().max(1), Ordering::Relaxed);
            tracing::warn!(failures, "circuit opened");
        }
    }

    pub fn is_open(&self) -> bool {
        self.opened_at.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_a_successful_trial_closes_it() {
        let c = Circuit::default();
        for _ in 0..3 {
            assert_eq!(c.admit(60_000), Admit::Yes);
            c.record(Admit::Yes, false, 3);
        }
        assert_eq!(c.admit(60_000), Admit::No, "open: fail fast");
        // With a zero open time the next request is the trial, and only one at a time.
        assert_eq!(c.admit(0), Admit::Trial);
        assert_eq!(c.admit(0), Admit::No);
        c.record(Admit::Trial, false, 3);
        assert!(c.is_open(), "failed trial re-opens");
        assert_eq!(c.admit(0), Admit::Trial);
        c.record(Admit::Trial, true, 3);
        assert!(!c.is_open());
        assert_eq!(c.admit(60_000), Admit::Yes);
    }

    #[test]
    fn a_trial_that_ends_without_an_outcome_is_handed_back() {
        let c = Circuit::default();
        for _ in 0..3 {
            c.admission(60_000, 3).record(false);
        }
        let trial = c.admission(0, 3);
        assert_eq!(trial.admit, Admit::Trial);
        assert_eq!(c.admission(0, 3).admit, Admit::No, "one trial at a time");
        drop(trial);
        assert!(c.is_open(), "no outcome: the circuit stays as it was");
        let trial = c.admission(0, 3);
        assert_eq!(trial.admit, Admit::Trial, "and the next request may try");
        trial.record(true);
        assert!(!c.is_open());
    }
}
