//! Target health, shared by every snapshot: active HTTP probes (a task per
//! probed target, reconciled after each state change) and passive outlier
//! ejection (consecutive failed requests). Also the in-flight count that the
//! least-connections balancer reads. State is keyed by service and target, so
//! it survives configuration changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use tokio::task::JoinHandle;
use tollgate_proto::config::v1::HealthCheck;

use crate::plumbing::UpstreamClient;

/// Milliseconds since the process started; ejection deadlines use it so they
/// never depend on the wall clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[derive(Debug, Default)]
pub struct TargetState {
    /// Set by active probes; targets without probes stay healthy.
    unhealthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// `now_ms()` until which passive checks keep the target out; 0 = not ejected.
    ejected_until: AtomicU64,
    pub in_flight: AtomicUsize,
}

impl TargetState {
    pub fn available(&self) -> bool {
        if self.unhealthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    pub fn actively_healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Records a request's outcome for passive checks; `eject` is (threshold, duration).
    pub fn record(&self, ok: bool, eject: Option<(u32, u64)>) {
        if ok {
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some((threshold, ejection_ms)) = eject
            && failures >= threshold
        {
            self.ejected_until.store(now_ms() + ejection_ms, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(failures, ejection_ms, "target ejected after consecutive failures");
        }
    }
}

/// Counts a request in flight on a target until dropped (when the response
/// body ends or the request fails).
pub struct InFlight(Arc<TargetState>);

impl InFlight {
    pub fn new(state: &Arc<TargetState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identifies a probe task: one per (service, target, probe settings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    service_id: String,
    authority: String,
    settings: String,
}

/// What a probe needs to run; built while compiling a snapshot.
pub struct ProbeSpec {
    pub service_id: String,
    pub service_name: String,
    pub scheme: &'static str,
    pub authority: String,
    pub check: HealthCheck,
    pub client: UpstreamClient,
    pub state: Arc<TargetState>,
}

#[derive(Default)]
pub struct HealthRegistry {
    targets: Mutex<HashMap<(String, String), Arc<TargetState>>>,
    probes: Mutex<HashMap<ProbeKey, JoinHandle<()>>>,
}

impl HealthRegistry {
    /// The shared state of one target; created on first use. Compile time only.
    pub fn target(&self, service_id: &str, authority: &str) -> Arc<TargetState> {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets.entry((service_id.to_string(), authority.to_string())).or_default().clone()
    }

    /// Starts probes that are new, stops those no longer configured, and forgets
    /// targets that left the configuration.
    pub fn reconcile(&self, specs: Vec<ProbeSpec>, live_targets: &[(String, String)]) {
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted = HashMap::new();
        for spec in specs {
            let key = ProbeKey {
                service_id: spec.service_id.clone(),
                authority: spec.authority.clone(),
                settings: format!("{}{:?}", spec.scheme, spec.check),
            };
            wanted.insert(key, spec);
        }
        probes.retain(|key, task| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, spec) in wanted {
            probes.entry(key).or_insert_with(|| tokio::spawn(probe_loop(spec)));
        }
        drop(probes);
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets.retain(|k, state| {
            let live = live_targets.contains(k);
            if !live {
                // A removed target must not keep an old verdict if it comes back.
                state.unhealthy.store(false, Ordering::Relaxed);
            }
            live
        });
    }
}

impl Drop for HealthRegistry {
    fn drop(&mut self) {
        let probes = self.probes.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, task) in probes.drain() {
            task.abort();
        }
    }
}

async fn probe_loop(spec: ProbeSpec) {
    let interval =
        Duration::from_millis(u64::from(if spec.check.interval_ms == 0 { 5000 } else { spec.check.interval_ms }));
    let timeout =
        Duration::from_millis(u64::from(if spec.check.timeout_ms == 0 { 2000 } else { spec.check.timeout_ms }));
    let healthy_after = if spec.check.healthy_threshold == 0 { 2 } else { spec.check.healthy_threshold };
    let unhealthy_after = if spec.check.unhealthy_threshold == 0 { 3 } else { spec.check.unhealthy_threshold };
    let uri = format!("{}://{}{}", spec.scheme, spec.authority, spec.check.path);
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ok = probe(&spec.client, &uri, timeout).await;
        if ok {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let was_unhealthy = spec.state.unhealthy.load(Ordering::Relaxed);
        if was_unhealthy && successes >= healthy_after {
            spec.state.unhealthy.store(false, Ordering::Relaxed);
            tracing::info!(service = %spec.service_name, target = %spec.authority, "target is healthy again");
        } else if !was_unhealthy && failures >= unhealthy_after {
            spec.state.unhealthy.store(true, Ordering::Relaxed);
            tracing::warn!(service = %spec.service_name, target = %spec.authority, failures, "target marked unhealthy");
        }
    }
}

async fn probe(client: &UpstreamClient, uri: &str, timeout: Duration) -> bool {
    let Ok(request) = Request::get(uri)
        .header(http::header::USER_AGENT, "tollgate-health-check")
        .body(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync())
    else {
        return false;
    };
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => {
            let ok = response.status().is_success() || response.status().is_redirection();
            // Drain so the connection can be reused.
            let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
            ok
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_and_success_resets() {
        let t = TargetState::default();
        t.record(false, Some((3, 60_000)));
        t.record(false, Some((3, 60_000)));
        t.record(true, Some((3, 60_000)));
        t.record(false, Some((3, 60_000)));
        t.record(false, Some((3, 60_000)));
        assert!(t.available(), "a success in between resets the count");
        t.record(false, Some((3, 60_000)));
        assert!(!t.available(), "third consecutive failure ejects");
        let passive_off = TargetState::default();
        for _ in 0..10 {
            passive_off.record(false, None);
        }
        assert!(passive_off.available());
    }

    #[test]
    fn ejection_expires() {
        let t = TargetState::default();
        t.record(false, Some((1, 0)));
        assert!(t.available(), "a zero-length ejection is over at once");
    }
}
