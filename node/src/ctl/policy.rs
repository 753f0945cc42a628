//! `tollgate ctl` flags for the data-plane policies of services and routes.
//! Flags not given leave the stored value as it is.

use clap::Args;
use tollgate_proto::config::v1::{
    CircuitBreaker, Cors, HashOn, HeaderPair, HeaderTransform, HealthCheck, JwtAuth, LbPolicy, OutlierDetection,
    ResponseCache, RetryPolicy, Route, Service, UpstreamTls,
};

use super::CtlError;
use super::secret::read_secret;

#[derive(Debug, Args)]
pub struct ServicePolicyFlags {
    /// Balancing: round-robin (weighted by target weights), least-connections or consistent-hash.
    #[arg(long, value_parser = ["round-robin", "least-connections", "consistent-hash"])]
    lb: Option<String>,
    /// Consistent-hash key: client-ip, consumer, or header:<name> [default: client-ip].
    #[arg(long)]
    hash_on: Option<String>,
    /// Active health check path probed on every target, e.g. /healthz.
    #[arg(long)]
    health_path: Option<String>,
    /// Time between two probes of a target [default: 5000].
    #[arg(long)]
    health_interval_ms: Option<u32>,
    /// Probes failing in a row before a target is marked unhealthy [default: 3].
    #[arg(long)]
    health_unhealthy_after: Option<u32>,
    /// Probes succeeding in a row before it is healthy again [default: 2].
    #[arg(long)]
    health_healthy_after: Option<u32>,
    /// Passive checks: eject a target after this many consecutive failures [default: 5 once enabled].
    #[arg(long)]
    eject_after: Option<u32>,
    /// How long an ejected target gets no traffic [default: 30000].
    #[arg(long)]
    ejection_ms: Option<u32>,
    /// Extra attempts on another target for idempotent requests (never POST/PATCH); a body is held for
    /// resending up to 64 KiB [default: 0, no retries].
    #[arg(long)]
    retries: Option<u32>,
    /// Retries may add at most this % of requests [default: 20].
    #[arg(long)]
    retry_budget_percent: Option<u32>,
    /// Open the circuit after this many consecutive failed requests [default: 5 once enabled].
    #[arg(long)]
    circuit_failures: Option<u32>,
    /// How long an open circuit answers 503 before one trial request [default: 10000].
    #[arg(long)]
    circuit_open_ms: Option<u32>,
    /// Speak TLS to the targets (verified against the system roots or --upstream-ca-file).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    upstream_tls: Option<bool>,
    /// PEM CA bundle to verify the targets' certificates with [default: the system roots].
    #[arg(long)]
    upstream_ca_file: Option<std::path::PathBuf>,
    /// Name the targets' certificates must carry (and the SNI sent) [default: each target's host].
    #[arg(long)]
    upstream_server_name: Option<String>,
}

impl ServicePolicyFlags {
    pub fn apply_to(&self, s: &mut Service) -> Result<(), CtlError> {
        if let Some(lb) = &self.lb {
            s.lb_policy = match lb.as_str() {
                "least-connections" => LbPolicy::LeastConnections,
                "consistent-hash" => LbPolicy::ConsistentHash,
                _ => LbPolicy::RoundRobin,
            } as i32;
        }
        if let Some(on) = &self.hash_on {
            match on.as_str() {
                "client-ip" => s.hash_on = HashOn::ClientIp as i32,
                "consumer" => s.hash_on = HashOn::Consumer as i32,
                h => match h.strip_prefix("header:") {
                    Some(name) => {
                        s.hash_on = HashOn::Header as i32;
                        s.hash_header = name.to_ascii_lowercase();
                    }
                    None => {
                        return Err(CtlError::Usage(format!(
                            "--hash-on {h:?}: use client-ip, consumer or header:<name>"
                        )));
                    }
                },
            }
        }
        if self.health_path.is_some() || self.health_interval_ms.is_some() {
            let h = s.health_check.get_or_insert_with(HealthCheck::default);
            set(&mut h.path, &self.health_path);
            set(&mut h.interval_ms, &self.health_interval_ms);
            set(&mut h.unhealthy_threshold, &self.health_unhealthy_after);
            set(&mut h.healthy_threshold, &self.health_healthy_after);
        }
        if self.eject_after.is_some() || self.ejection_ms.is_some() {
            let o = s.outlier_detection.get_or_insert_with(OutlierDetection::default);
            set(&mut o.consecutive_failures, &self.eject_after);
            set(&mut o.ejection_ms, &self.ejection_ms);
        }
        if self.retries.is_some() || self.retry_budget_percent.is_some() {
            let r = s.retry.get_or_insert_with(RetryPolicy::default);
            set(&mut r.attempts, &self.retries);
            set(&mut r.budget_percent, &self.retry_budget_percent);
        }
        if self.circuit_failures.is_some() || self.circuit_open_ms.is_some() {
            let c = s.circuit_breaker.get_or_insert_with(CircuitBreaker::default);
            set(&mut c.failure_threshold, &self.circuit_failures);
            set(&mut c.open_ms, &self.circuit_open_ms);
        }
        if self.upstream_tls.is_some() || self.upstream_ca_file.is_some() || self.upstream_server_name.is_some() {
            let t = s.tls.get_or_insert_with(|| UpstreamTls { enabled: true, ..Default::default() });
            set(&mut t.enabled, &self.upstream_tls);
            if let Some(path) = &self.upstream_ca_file {
                t.ca_pem = read(path)?;
            }
            set(&mut t.server_name, &self.upstream_server_name);
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct RoutePolicyFlags {
    /// JWT algorithm accepted (HS256, RS256, ES256, ...). Repeatable.
    #[arg(long = "jwt-alg")]
    jwt_algorithms: Vec<String>,
    /// HMAC secret for HS* tokens; env:VAR or file:PATH keeps it out of shell history and `ps`.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// PEM public key file for RS*/ES* tokens. Repeatable.
    #[arg(long = "jwt-public-key-file")]
    jwt_public_keys: Vec<std::path::PathBuf>,
    /// JWKS URL for RS*/ES* keys, fetched by every node, refreshed every 5 minutes and when a token
    /// names an unknown kid.
    #[arg(long)]
    jwks_url: Option<String>,
    /// Required iss claim [default: any issuer].
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Accepted audience. Repeatable [default: any audience].
    #[arg(long = "jwt-audience")]
    jwt_audiences: Vec<String>,
    /// Claim naming the consumer, by name or id [default: sub].
    #[arg(long)]
    jwt_consumer_claim: Option<String>,
    /// Reject tokens whose claim names no consumer.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    jwt_require_consumer: Option<bool>,
    /// Allowed client IP or CIDR. Repeatable; replaces the list.
    #[arg(long = "ip-allow")]
    ip_allow: Vec<String>,
    /// Denied client IP or CIDR. Repeatable; replaces the list.
    #[arg(long = "ip-deny")]
    ip_deny: Vec<String>,
    /// CORS allowed origin, or *. Repeatable; replaces the list.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Path sent upstream instead of the matched prefix or path; {param} inserts a template parameter.
    #[arg(long)]
    rewrite_path: Option<String>,
    /// Request header to set, name:value. Repeatable; replaces the list.
    #[arg(long = "set-request-header")]
    set_request_headers: Vec<String>,
    /// Request header removed before forwarding. Repeatable; replaces the list.
    #[arg(long = "remove-request-header")]
    remove_request_headers: Vec<String>,
    /// Response header to set, name:value. Repeatable; replaces the list.
    #[arg(long = "set-response-header")]
    set_response_headers: Vec<String>,
    /// Response header removed before answering the client. Repeatable; replaces the list.
    #[arg(long = "remove-response-header")]
    remove_response_headers: Vec<String>,
    /// Cache responses of this route for this long unless Cache-Control says otherwise; 0 turns the cache off
    /// [default: off].
    #[arg(long)]
    cache_ttl_ms: Option<u32>,
    /// Request header that is part of the cache key. Repeatable.
    #[arg(long = "cache-vary")]
    cache_vary: Vec<String>,
    /// Also cache for requests that carry a Cookie (off by default: a cookie
    /// usually means a per-user page). Only for routes whose responses do not
    /// depend on cookies.
    #[arg(long)]
    cache_cookies: Option<bool>,
    /// Connect timeout for this route's requests [default: the service's --connect-timeout-ms].
    #[arg(long)]
    route_connect_timeout_ms: Option<u32>,
    /// Longest wait for the response headers on this route [default: the service's --request-timeout-ms].
    #[arg(long)]
    route_request_timeout_ms: Option<u32>,
    /// Longest pause between chunks of the upstream's response body [default: none].
    #[arg(long)]
    idle_timeout_ms: Option<u32>,
}

impl RoutePolicyFlags {
    pub fn apply_to(&self, r: &mut Route) -> Result<(), CtlError> {
        let jwt_given = !self.jwt_algorithms.is_empty()
            || self.jwt_secret.is_some()
            || !self.jwt_public_keys.is_empty()
            || self.jwks_url.is_some()
            || self.jwt_issuer.is_some()
            || !self.jwt_audiences.is_empty()
            || self.jwt_consumer_claim.is_some()
            || self.jwt_require_consumer.is_some();
        if jwt_given {
            let j = r.jwt.get_or_insert_with(JwtAuth::default);
            replace(&mut j.algorithms, &self.jwt_algorithms);
            if let Some(spec) = &self.jwt_secret {
                j.hs_secret = read_secret(spec, "--jwt-secret")?;
            }
            if !self.jwt_public_keys.is_empty() {
                j.public_keys_pem = self.jwt_public_keys.iter().map(|p| read(p)).collect::<Result<_, _>>()?;
            }
            set(&mut j.jwks_url, &self.jwks_url);
            set(&mut j.issuer, &self.jwt_issuer);
            replace(&mut j.audiences, &self.jwt_audiences);
            set(&mut j.consumer_claim, &self.jwt_consumer_claim);
            set(&mut j.require_consumer, &self.jwt_require_consumer);
        }
        replace(&mut r.ip_allow, &self.ip_allow);
        replace(&mut r.ip_deny, &self.ip_deny);
        if !self.cors_origins.is_empty() {
            r.cors.get_or_insert_with(Cors::default).allow_origins = self.cors_origins.clone();
        }
        set(&mut r.rewrite_path, &self.rewrite_path);
        headers(&mut r.request_headers, &self.set_request_headers, &self.remove_request_headers)?;
        headers(&mut r.response_headers, &self.set_response_headers, &self.remove_response_headers)?;
        match self.cache_ttl_ms {
            Some(0) => r.cache = None,
            Some(ttl) => {
                let c = r.cache.get_or_insert_with(ResponseCache::default);
                c.enabled = true;
                c.ttl_ms = ttl;
            }
            None => {}
        }
        if !self.cache_vary.is_empty() {
            r.cache.get_or_insert_with(|| ResponseCache { enabled: true, ..Default::default() }).vary_headers =
                self.cache_vary.iter().map(|h| h.to_ascii_lowercase()).collect();
        }
        if let Some(allow) = self.cache_cookies {
            r.cache.get_or_insert_with(|| ResponseCache { enabled: true, ..Default::default() }).allow_cookies = allow;
        }
        set(&mut r.connect_timeout_ms, &self.route_connect_timeout_ms);
        set(&mut r.request_timeout_ms, &self.route_request_timeout_ms);
        set(&mut r.idle_timeout_ms, &self.idle_timeout_ms);
        Ok(())
    }
}

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *field = v.clone();
    }
}

fn replace(field: &mut Vec<String>, values: &[String]) {
    if !values.is_empty() {
        *field = values.to_vec();
    }
}

fn headers(field: &mut Option<HeaderTransform>, set: &[String], remove: &[String]) -> Result<(), CtlError> {
    if set.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let t = field.get_or_insert_with(HeaderTransform::default);
    if !set.is_empty() {
        t.set = set
            .iter()
            .map(|s| {
                let (name, value) =
                    s.split_once(':').ok_or_else(|| CtlError::Usage(format!("header {s:?} must be name:value")))?;
                Ok(HeaderPair { name: name.trim().to_ascii_lowercase(), value: value.trim().to_string() })
            })
            .collect::<Result<_, CtlError>>()?;
    }
    if !remove.is_empty() {
        t.remove = remove.iter().map(|h| h.to_ascii_lowercase()).collect();
    }
    Ok(())
}

fn read(path: &std::path::Path) -> Result<String, CtlError> {
    std::fs::read_to_string(path).map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", path.display())))
}
