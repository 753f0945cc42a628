//! Prometheus metrics, served on the ops port. Per-request updates touch
//! handles resolved when the snapshot is compiled (a histogram per route, a
//! lazily created counter per common status), so the hot path does no label
//! hashing for ordinary traffic.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub service: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub service: String,
    pub target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub route: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RouteLabels>,
    cache: Family<CacheLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    circuit_rejections: Family<ServiceLabels, Counter>,
    pub upstream_healthy: Family<TargetLabels, Gauge>,
    pub upstream_in_flight: Family<TargetLabels, Gauge>,
    pub raft_term: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub data_plane_revision: Gauge,
    /// Open client connections of the proxy listeners (plain and TLS together).
    pub proxy_connections: Gauge,
    /// Connections closed at accept: the proxy was at `proxy.max_connections`
    /// and no idle connection could make room.
    pub proxy_connections_refused: Counter,
    /// Idle keep-alive connections closed to make room for a new one.
    pub proxy_connections_evicted: Counter,
    /// Connections cut because the client read nothing for the send timeout.
    send_timeouts: Family<ListenerLabels, Counter>,
    pub ai: super::ai_metrics::AiMetrics,
    pub limits: super::limit_metrics::LimitMetrics,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        let cache = Family::<CacheLabels, Counter>::default();
        let retries = Family::<ServiceLabels, Counter>::default();
        let circuit_rejections = Family::<ServiceLabels, Counter>::default();
        let upstream_healthy = Family::<TargetLabels, Gauge>::default();
        let upstream_in_flight = Family::<TargetLabels, Gauge>::default();
        let (raft_term, raft_commit_index, raft_applied_index, data_plane_revision) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("http_requests", "Proxied requests by route, service and status", requests.clone());
        registry.register("http_request_duration_seconds", "Time from request to response headers", latency.clone());
        registry.register("cache_requests", "Response cache lookups by route and result (hit, miss)", cache.clone());
        registry.register("upstream_retries", "Retries sent to another target", retries.clone());
        registry.register("circuit_rejections", "Requests refused by an open circuit", circuit_rejections.clone());
        registry.register("upstream_healthy", "1 when a target is healthy and not ejected", upstream_healthy.clone());
        registry.register("upstream_in_flight", "Requests in flight per target", upstream_in_flight.clone());
        registry.register("raft_term", "Current Raft term", raft_term.clone());
        registry.register("raft_commit_index", "Highest committed Raft log index", raft_commit_index.clone());
        registry.register("raft_applied_index", "Highest applied Raft log index", raft_applied_index.clone());
        registry.register(
            "data_plane_revision",
            "Raft index of the state the proxy serves",
            data_plane_revision.clone(),
        );
        let proxy_connections = Gauge::default();
        let proxy_connections_refused = Counter::default();
        let proxy_connections_evicted = Counter::default();
        let send_timeouts = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "proxy_connections",
            "Open client connections to the proxy listeners",
            proxy_connections.clone(),
        );
        registry.register(
            "proxy_connections_refused",
            "Client connections closed at accept because the proxy was at proxy.max_connections",
            proxy_connections_refused.clone(),
        );
        registry.register(
            "proxy_connections_evicted",
            "Idle keep-alive client connections closed to make room for new ones",
            proxy_connections_evicted.clone(),
        );
        registry.register(
            "client_send_timeouts",
            "Client connections closed because the client stopped reading a response",
            send_timeouts.clone(),
        );
        let ai = super::ai_metrics::AiMetrics::register(&mut registry);
        let limits = super::limit_metrics::LimitMetrics::register(&mut registry);
        Metrics {
            proxy_connections,
            proxy_connections_refused,
            proxy_connections_evicted,
            send_timeouts,
            ai,
            limits,
            registry,
            requests,
            latency,
            cache,
            retries,
            circuit_rejections,
            upstream_healthy,
            upstream_in_flight,
            raft_term,
            raft_commit_index,
            raft_applied_index,
            data_plane_revision,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one route, resolved at compile time.
    pub fn route(&self, route: &str, service: &str) -> RouteMetrics {
        let labels = RouteLabels { route: route.to_string(), service: service.to_string() };
        RouteMetrics {
            latency: self.latency.get_or_create_owned(&labels),
            hit: self.cache.get_or_create_owned(&CacheLabels { route: route.to_string(), result: "hit" }),
            miss: self.cache.get_or_create_owned(&CacheLabels { route: route.to_string(), result: "miss" }),
            by_status: Default::default(),
            route: labels.route,
            service: labels.service,
        }
    }

    pub fn service(&self, service: &str) -> ServiceMetrics {
        let labels = ServiceLabels { service: service.to_string() };
        ServiceMetrics {
            retries: self.retries.get_or_create_owned(&labels),
            circuit_rejections: self.circuit_rejections.get_or_create_owned(&labels),
        }
    }

    /// The send-timeout counter of one listener ("proxy" or "ops").
    pub fn send_timeouts(&self, listener: &'static str) -> Counter {
        self.send_timeouts.get_or_create_owned(&ListenerLabels { listener })
    }

    /// Requests that matched no route.
    pub fn unrouted(&self, status: u16) {
        self.requests.get_or_create(&RequestLabels { route: String::new(), service: String::new(), status }).inc();
    }
}

const COMMON_STATUSES: [u16; 14] = [200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 500, 502, 503, 504];

pub struct RouteMetrics {
    latency: Histogram,
    pub hit: Counter,
    pub miss: Counter,
    by_status: [OnceLock<Counter>; COMMON_STATUSES.len()],
    route: String,
    service: String,
}

impl RouteMetrics {
    pub fn record(&self, metrics: &Metrics, status: u16, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
        let labels = || RequestLabels { route: self.route.clone(), service: self.service.clone(), status };
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.by_status[i].get_or_init(|| metrics.requests.get_or_create_owned(&labels())).inc(),
            None => metrics.requests.get_or_create(&labels()).inc(),
        };
    }
}

pub struct ServiceMetrics {
    pub retries: Counter,
    pub circuit_rejections: Counter,
}
