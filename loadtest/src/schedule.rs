//! Arrival schedules for open-loop load and the ticket dispatcher shared by all workers.
//!
//! Send times are a pure function of the request index, so the schedule can be checked
//! without a clock, and latency is measured from the *scheduled* send time (as wrk2 does):
//! when the system under test stalls, the requests that should have been sent during the
//! stall are charged for the wait instead of silently disappearing (coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("invalid phase `{0}`: write RATE@DURATION (e.g. `500@30s`) or FROM..TO@DURATION (e.g. `0..1000@1m`)")]
    BadPhase(String),
    #[error("invalid duration `{0}`: use a unit such as 500ms, 10s, 2m or 1h")]
    BadDuration(String),
    #[error("rates must be finite and >= 0, got {0}")]
    BadRate(f64),
}

/// Parses human durations such as `250ms`, `10s`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, ScheduleError> {
    humantime::parse_duration(s.trim()).map_err(|_| ScheduleError::BadDuration(s.to_string()))
}

/// A span of time whose arrival rate moves linearly from `from` to `to` (requests/second).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Phase {
    pub from: f64,
    pub to: f64,
    #[serde(with = "secs")]
    pub duration: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Phase {
    pub fn constant(rate: f64, duration: Duration) -> Self {
        Phase { from: rate, to: rate, duration }
    }

    pub fn ramp(from: f64, to: f64, duration: Duration) -> Self {
        Phase { from, to, duration }
    }

    /// `500@30s` or `0..1000@1m`.
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        let bad = || ScheduleError::BadPhase(s.to_string());
        let (rates, dur) = s.trim().split_once('@').ok_or_else(bad)?;
        let duration = parse_duration(dur)?;
        let num = |x: &str| x.trim().parse::<f64>().map_err(|_| bad());
        let (from, to) = match rates.split_once("..") {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let r = num(rates)?;
                (r, r)
            }
        };
        for r in [from, to] {
            if !r.is_finite() || r < 0.0 {
                return Err(ScheduleError::BadRate(r));
            }
        }
        Ok(Phase { from, to, duration })
    }

    /// Expected number of arrivals in the whole phase (area under the rate line).
    fn arrivals(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.duration.as_secs_f64()
    }

    /// Offset into the phase at which the `m`-th arrival (counted from the phase start) falls.
    fn time_of(&self, m: f64) -> f64 {
        let a = self.from;
        let d = self.duration.as_secs_f64();
        if d == 0.0 {
            return 0.0;
        }
        let b = (self.to - self.from) / d;
        // Solves a*t + b*t^2/2 = m. This form avoids cancellation when b is ~0 and
        // reduces to m/a for constant rate.
        let denom = a + (a * a + 2.0 * b * m).max(0.0).sqrt();
        if denom <= 0.0 { 0.0 } else { (2.0 * m / denom).min(d) }
    }
}

/// Open-loop arrival schedule: a sequence of phases, optionally followed by an endless
/// constant rate (used when the run is bounded by a request count instead of time).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    pub phases: Vec<Phase>,
    pub then: Option<f64>,
}

impl Schedule {
    pub fn constant(rate: f64, duration: Duration) -> Self {
        Schedule { phases: vec![Phase::constant(rate, duration)], then: None }
    }

    pub fn unbounded(rate: f64) -> Self {
        Schedule { phases: vec![], then: Some(rate) }
    }

    /// Total length of the phases (the endless tail is not counted).
    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Mean target rate over the phases, or the tail rate when there are no phases.
    pub fn mean_rate(&self) -> f64 {
        let d = self.duration().as_secs_f64();
        if d > 0.0 { self.phases.iter().map(Phase::arrivals).sum::<f64>() / d } else { self.then.unwrap_or(0.0) }
    }

    /// Expected number of requests the schedule sends in total (None if endless).
    pub fn total_requests(&self) -> Option<u64> {
        if self.then.is_some_and(|r| r > 0.0) {
            return None;
        }
        Some(self.phases.iter().map(Phase::arrivals).sum::<f64>().ceil() as u64)
    }

    /// Scheduled send time of request `index` (0-based) relative to the run start, or
    /// None when the schedule has ended before that request.
    pub fn time_of(&self, index: u64) -> Option<Duration> {
        let mut remaining = index as f64;
        let mut offset = 0.0;
        for phase in &self.phases {
            let n = phase.arrivals();
            if remaining < n {
                return Some(Duration::from_secs_f64(offset + phase.time_of(remaining)));
            }
            remaining -= n;
            offset += phase.duration.as_secs_f64();
        }
        match self.then {
            Some(rate) if rate > 0.0 => Some(Duration::from_secs_f64(offset + remaining / rate)),
            _ => None,
        }
    }
}

/// One unit of work handed to a worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ticket {
    pub seq: u64,
    /// Intended send time relative to the run start; None in closed-loop mode (send now).
    pub scheduled: Option<Duration>,
}

/// Hands out tickets to all workers; the only state shared on the hot path is one counter.
#[derive(Debug)]
pub struct Dispatcher {
    schedule: Option<Schedule>,
    max_requests: Option<u64>,
    deadline: Option<Duration>,
    next: AtomicU64,
    stopped: AtomicBool,
}

impl Dispatcher {
    pub fn new(schedule: Option<Schedule>, max_requests: Option<u64>, deadline: Option<Duration>) -> Self {
        Dispatcher { schedule, max_requests, deadline, next: AtomicU64::new(0), stopped: AtomicBool::new(false) }
    }

    /// Next ticket, or None once the run is over. `elapsed` is the caller's clock reading,
    /// which bounds closed-loop runs (open-loop runs are bounded by their scheduled times).
    pub fn next(&self, elapsed: Duration) -> Option<Ticket> {
        if self.deadline.is_some_and(|d| elapsed >= d) || self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if self.max_requests.is_some_and(|max| seq >= max) {
            return None;
        }
        let scheduled = match &self.schedule {
            None => None,
            Some(s) => {
                let t = s.time_of(seq)?;
                if self.deadline.is_some_and(|d| t >= d) {
                    return None;
                }
                Some(t)
            }
        };
        Some(Ticket { seq, scheduled })
    }

    /// Ends the run early (Ctrl-C); workers finish their in-flight request and stop.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// How many tickets have been handed out (including the ones that ended the run).
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// Latency charged to a request: from its scheduled send time when it has one (so queueing
/// behind a stall is counted), otherwise from when it was actually sent.
pub fn charged_latency(scheduled: Option<Duration>, started: Duration, finished: Duration) -> Duration {
    finished.saturating_sub(scheduled.unwrap_or(started))
}
