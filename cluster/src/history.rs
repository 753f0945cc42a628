//! A history checker for the chaos tests. Clients add unique elements to a
//! replicated set (each write creates a uniquely named entity) and read the
//! whole set; the checker verifies the two properties a linearizable set must
//! have:
//!
//! 1. no acknowledged write is lost: it is in the final state;
//! 2. no stale read: a read contains every write acknowledged before the read
//!    was invoked;
//!
//! and that reads never invent elements nobody tried to write.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

#[derive(Debug, Clone)]
pub enum Outcome {
    /// The cluster acknowledged the write.
    Ok,
    /// The write failed or timed out: it may or may not have happened.
    Unknown,
}

#[derive(Debug, Clone)]
pub enum Op {
    Write { element: String, outcome: Outcome },
    Read { seen: Option<BTreeSet<String>> },
}

#[derive(Debug, Clone)]
pub struct Event {
    pub client: String,
    pub invoked: Instant,
    pub completed: Instant,
    pub op: Op,
}

#[derive(Debug, Default)]
pub struct History {
    events: Vec<Event>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Violation {
    LostWrite { element: String },
    StaleRead { client: String, missing: String },
    PhantomRead { client: String, element: String },
}

impl History {
    pub fn record(&mut self, event: Event) {
        self.events.push(event);
    }

    pub fn extend(&mut self, other: History) {
        self.events.extend(other.events);
    }

    pub fn acknowledged(&self) -> usize {
        self.events.iter().filter(|e| matches!(e.op, Op::Write { outcome: Outcome::Ok, .. })).count()
    }

    pub fn reads(&self) -> usize {
        self.events.iter().filter(|e| matches!(e.op, Op::Read { seen: Some(_) })).count()
    }

    /// Checks the history against the final state of the set.
    pub fn check(&self, final_state: &BTreeSet<String>) -> Vec<Violation> {
        let mut violations = Vec::new();
        let attempted: HashMap<&str, &Event> = self
            .events
            .iter()
            .filter_map(|e| match &e.op {
                Op::Write { element, .. } => Some((element.as_str(), e)),
                Op::Read { .. } => None,
            })
            .collect();
        let acked: Vec<(&str, Instant)> = self
            .events
            .iter()
            .filter_map(|e| match &e.op {
                Op::Write { element, outcome: Outcome::Ok } => Some((element.as_str(), e.completed)),
                _ => None,
            })
            .collect();
        for (element, _) in &acked {
            if !final_state.contains(*element) {
                violations.push(Violation::LostWrite { element: element.to_string() });
            }
        }
        for event in &self.events {
            let Op::Read { seen: Some(seen) } = &event.op else { continue };
            for (element, completed) in &acked {
                if *completed < event.invoked && !seen.contains(*element) {
                    violations
                        .push(Violation::StaleRead { client: event.client.clone(), missing: element.to_string() });
                }
            }
            for element in seen {
                // Only elements written by this workload are judged.
                if let Some(write) = attempted.get(element.as_str())
                    && write.invoked > event.completed
                {
                    violations.push(Violation::PhantomRead { client: event.client.clone(), element: element.clone() });
                }
            }
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn write(base: Instant, element: &str, from: u64, to: u64, outcome: Outcome) -> Event {
        Event {
            client: "w".into(),
            invoked: at(base, from),
            completed: at(base, to),
            op: Op::Write { element: element.into(), outcome },
        }
    }

    fn read(base: Instant, seen: &[&str], from: u64, to: u64) -> Event {
        Event {
            client: "r".into(),
            invoked: at(base, from),
            completed: at(base, to),
            op: Op::Read { seen: Some(seen.iter().map(|s| s.to_string()).collect()) },
        }
    }

    #[test]
    fn a_correct_history_passes() {
        let base = Instant::now();
        let mut h = History::default();
        h.record(write(base, "a", 0, 10, Outcome::Ok));
        h.record(read(base, &[], 5, 8)); // concurrent with the write: may miss it
        h.record(read(base, &["a"], 11, 12));
        h.record(write(base, "b", 20, 30, Outcome::Unknown)); // may or may not be there
        let final_state = ["a".to_string()].into_iter().collect();
        assert!(h.check(&final_state).is_empty());
    }

    #[test]
    fn lost_stale_and_phantom_are_caught() {
        let base = Instant::now();
        let mut h = History::default();
        h.record(write(base, "a", 0, 10, Outcome::Ok));
        h.record(read(base, &[], 11, 12));
        h.record(read(base, &["z"], 1, 2));
        h.record(write(base, "z", 50, 60, Outcome::Ok));
        let final_state = ["z".to_string()].into_iter().collect();
        let violations = h.check(&final_state);
        assert!(violations.contains(&Violation::LostWrite { element: "a".into() }));
        assert!(violations.contains(&Violation::StaleRead { client: "r".into(), missing: "a".into() }));
        assert!(violations.contains(&Violation::PhantomRead { client: "r".into(), element: "z".into() }));
    }
}
