//! Arrival schedules for open-loop load and the ticket dispatcher shared by all workers.
//!
//! Send times are a pure function of the request index, so the schedule can be checked
//! without a clock, and latency is measured from the *scheduled* send time (as wrk2 does):
//! when the system under test stalls, the requests that should have been sent during the
//! stall are charged for the wait instead of silently disappearing (coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub from: f64,
    pub to: f64,
    #[serde(with = "secs")]
    pub duration: Duration,
}

mod secs {
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        std::time::Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// `12`, `12.5`: rates and seconds as people write them.
fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `2s`, `1m30s`, `1.5s`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    } else {
        format!("{}s", num(d.as_secs_f64()))
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

    /// The rate `t` seconds into the phase.
    fn rate_at(&self, t: f64) -> f64 {
        let d = self.duration.as_secs_f64();
        if d == 0.0 { self.to } else { self.from + (self.to - self.from) * (t / d).clamp(0.0, 1.0) }
    }

    /// Arrivals in the first `t` seconds of the phase.
    fn arrivals_until(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, self.duration.as_secs_f64());
        (self.from + self.rate_at(t)) / 2.0 * t
    }

    fn describe(&self) -> String {
        if self.from == self.to {
            format!("{}/s for {}", num(self.from), human(self.duration))
        } else {
            format!("{}→{}/s over {}", num(self.from), num(self.to), human(self.duration))
        }
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

    /// The rate the schedule was configured for: `--rate` (whatever ramp leads up to it),
    /// or the highest rate of explicit phases. This is the "target" of reports; a ramp is
    /// shown as a ramp, never averaged into it.
    pub fn configured_rate(&self) -> f64 {
        self.phases.iter().flat_map(|p| [p.from, p.to]).chain(self.then).fold(0.0, f64::max)
    }

    /// The target rate `t` into the run (0 once a bounded schedule has ended).
    pub fn rate_at(&self, t: Duration) -> f64 {
        let mut t = t.as_secs_f64();
        for phase in &self.phases {
            let d = phase.duration.as_secs_f64();
            if t < d {
                return phase.rate_at(t);
            }
            t -= d;
        }
        self.then.unwrap_or(0.0)
    }

    /// Arrivals the schedule plans in the first `t` seconds of the run.
    pub fn arrivals_until(&self, t: Duration) -> f64 {
        let mut t = t.as_secs_f64();
        let mut total = 0.0;
        for phase in &self.phases {
            total += phase.arrivals_until(t);
            t -= phase.duration.as_secs_f64();
            if t <= 0.0 {
                return total;
            }
        }
        total + self.then.unwrap_or(0.0) * t
    }

    /// Arrivals the schedule plans between `from` and `to` into the run.
    pub fn arrivals_between(&self, from: Duration, to: Duration) -> f64 {
        (self.arrivals_until(to) - self.arrivals_until(from)).max(0.0)
    }

    /// The (time, rate) corners of the target rate line up to `end`, for charts: a ramp is
    /// a slope, a step is a vertical jump.
    pub fn rate_line(&self, end: Duration) -> Vec<(f64, f64)> {
        let end = end.as_secs_f64();
        let mut points = Vec::new();
        let mut t = 0.0;
        for phase in &self.phases {
            if t >= end {
                return points;
            }
            let d = phase.duration.as_secs_f64();
            points.push((t, phase.from));
            if t + d > end {
                points.push((end, phase.rate_at(end - t)));
                return points;
            }
            points.push((t + d, phase.to));
            t += d;
        }
        if let Some(rate) = self.then
            && t < end
        {
            points.push((t, rate));
            points.push((end, rate));
        }
        points
    }

    /// True when the target is one constant rate from the start (nothing to explain).
    pub fn is_constant(&self) -> bool {
        let mut rates = self.phases.iter().flat_map(|p| [p.from, p.to]).chain(self.then);
        let first = self.configured_rate();
        rates.all(|r| r == first)
    }

    /// The schedule in words: `0→200/s over 2s, 200/s for 8s`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> =
            self.phases.iter().filter(|p| !p.duration.is_zero()).map(Phase::describe).collect();
        if let Some(rate) = self.then {
            parts.push(if parts.is_empty() { format!("{}/s", num(rate)) } else { format!("then {}/s", num(rate)) });
        }
        parts.join(", ")
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
