//! Input rules for the data-plane policies of services and routes: balancing,
//! health checks, retries, circuit breaking, upstream TLS, JWT, IP lists, CORS,
//! transforms, caching and timeouts. Pure functions of the entity, so every
//! replica accepts or rejects the same command.

use std::net::IpAddr;

use tollgate_proto::config::v1::{
    AuthMode, Cors, HashOn, HeaderTransform, JwtAuth, LbPolicy, PathMatch, ResponseCache, Route, Service,
};

use crate::error::ApplyError;
use crate::validate;

const MAX_MS: u32 = 3_600_000;
const MAX_LIST: usize = 256;
const JWT_ALGORITHMS: [&str; 10] =
    ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384"];
/// Headers a transform may not touch: framing and routing belong to the proxy.
const PROTECTED_HEADERS: [&str; 6] = ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te"];

pub(crate) fn service(s: &Service) -> Result<(), ApplyError> {
    if LbPolicy::try_from(s.lb_policy).is_err() {
        return Err(ApplyError::invalid("lb_policy", "must be round-robin, least-connections or consistent-hash"));
    }
    let hash_on = HashOn::try_from(s.hash_on)
        .map_err(|_| ApplyError::invalid("hash_on", "must be client-ip, header or consumer"))?;
    if hash_on == HashOn::Header {
        header_name("hash_header", &s.hash_header)?;
    }
    if let Some(h) = &s.health_check {
        if !h.path.starts_with('/') || h.path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(ApplyError::invalid("health_check.path", "must start with '/' and contain no spaces"));
        }
        if h.interval_ms != 0 && !(100..=MAX_MS).contains(&h.interval_ms) {
            return Err(ApplyError::invalid("health_check.interval_ms", "must be 0 (5 s) or 100..=3600000"));
        }
        millis("health_check.timeout_ms", h.timeout_ms)?;
        at_most("health_check.healthy_threshold", h.healthy_threshold, 100)?;
        at_most("health_check.unhealthy_threshold", h.unhealthy_threshold, 100)?;
    }
    if let Some(o) = &s.outlier_detection {
        at_most("outlier_detection.consecutive_failures", o.consecutive_failures, 1000)?;
        millis("outlier_detection.ejection_ms", o.ejection_ms)?;
    }
    if let Some(r) = &s.retry {
        at_most("retry.attempts", r.attempts, 10)?;
        at_most("retry.budget_percent", r.budget_percent, 100)?;
        if let Some(bad) = r.on_statuses.iter().find(|s| !(400..=599).contains(*s)) {
            return Err(ApplyError::invalid("retry.on_statuses", format!("{bad} is not a 4xx or 5xx status")));
        }
    }
    if let Some(c) = &s.circuit_breaker {
        at_most("circuit_breaker.failure_threshold", c.failure_threshold, 10_000)?;
        millis("circuit_breaker.open_ms", c.open_ms)?;
    }
    if let Some(t) = &s.tls {
        if !t.ca_pem.is_empty() && !t.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ApplyError::invalid("tls.ca_pem", "must be PEM certificates (-----BEGIN CERTIFICATE-----)"));
        }
        if !t.server_name.is_empty() {
            validate::hostname("tls.server_name", &t.server_name)?;
        }
    }
    Ok(())
}

pub(crate) fn route(r: &Route) -> Result<(), ApplyError> {
    let auth = AuthMode::try_from(r.auth).unwrap_or(AuthMode::Unspecified);
    if matches!(auth, AuthMode::Jwt | AuthMode::ApiKeyOrJwt) {
        jwt(r.jwt.as_ref().ok_or_else(|| {
            ApplyError::invalid("jwt", "JWT auth needs jwt settings (algorithms and a secret, keys or a JWKS URL)")
        })?)?;
    } else if let Some(j) = &r.jwt {
        jwt(j)?;
    }
    cidrs("ip_allow", &r.ip_allow)?;
    cidrs("ip_deny", &r.ip_deny)?;
    if let Some(c) = &r.cors {
        cors(c)?;
    }
    if !r.rewrite_path.is_empty() {
        rewrite(r)?;
    }
    for (field, t) in [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)] {
        if let Some(t) = t {
            transform(field, t)?;
        }
    }
    if let Some(c) = &r.cache {
        cache(c)?;
    }
    millis("connect_timeout_ms", r.connect_timeout_ms)?;
    millis("request_timeout_ms", r.request_timeout_ms)?;
    millis("idle_timeout_ms", r.idle_timeout_ms)?;
    Ok(())
}

fn jwt(j: &JwtAuth) -> Result<(), ApplyError> {
    if j.algorithms.is_empty() {
        return Err(ApplyError::invalid("jwt.algorithms", "name at least one, e.g. RS256"));
    }
    for a in &j.algorithms {
        if !JWT_ALGORITHMS.contains(&a.as_str()) {
            return Err(ApplyError::invalid(
                "jwt.algorithms",
                format!("{a:?} is not one of {}", JWT_ALGORITHMS.join(", ")),
            ));
        }
    }
    let wants_hmac = j.algorithms.iter().any(|a| a.starts_with("HS"));
    let wants_public = j.algorithms.iter().any(|a| !a.starts_with("HS"));
    // Sealing keeps the length; a plaintext secret is accepted as written by
    // earlier versions, whose log entries must still apply.
    let secret_len = match (j.sealed_hs_secret.len(), j.hs_secret.len()) {
        (0, plain) => plain,
        (sealed, _) => sealed.saturating_sub(crate::secrets::SEAL_OVERHEAD),
    };
    if wants_hmac && secret_len < 16 {
        return Err(ApplyError::invalid("jwt.hs_secret", "HS* algorithms need a secret of at least 16 bytes"));
    }
    if wants_public && j.public_keys_pem.is_empty() && j.jwks_url.is_empty() {
        return Err(ApplyError::invalid("jwt", "RS*/ES*/PS* algorithms need public_keys_pem or a jwks_url"));
    }
    if let Some(bad) = j.public_keys_pem.iter().find(|p| !p.contains("-----BEGIN")) {
        return Err(ApplyError::invalid(
            "jwt.public_keys_pem",
            format!("not PEM: {:?}", bad.chars().take(20).collect::<String>()),
        ));
    }
    let jwks_url_ok = j.jwks_url.is_empty() || j.jwks_url.starts_with("http://") || j.jwks_url.starts_with("https://");
    if !jwks_url_ok {
        return Err(ApplyError::invalid("jwt.jwks_url", "must be an http:// or https:// URL"));
    }
    if j.consumer_claim.len() > validate::MAX_NAME_LEN {
        return Err(ApplyError::invalid("jwt.consumer_claim", "must be at most 64 characters"));
    }
    at_most("jwt.leeway_s", j.leeway_s, 3600)?;
    if j.jwks_refresh_ms != 0 && !(1000..=86_400_000).contains(&j.jwks_refresh_ms) {
        return Err(ApplyError::invalid("jwt.jwks_refresh_ms", "must be 0 (5 min) or 1000..=86400000"));
    }
    Ok(())
}

/// Parses "10.0.0.0/8", "::1" or "192.168.1.7" into (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((addr, len))
}

fn cidrs(field: &str, list: &[String]) -> Result<(), ApplyError> {
    if list.len() > MAX_LIST {
        return Err(ApplyError::invalid(field, format!("at most {MAX_LIST} entries")));
    }
    for (i, c) in list.iter().enumerate() {
        if parse_cidr(c).is_none() {
            return Err(ApplyError::invalid(
                format!("{field}[{i}]"),
                format!("{c:?} is not an IP address or CIDR such as 10.0.0.0/8"),
            ));
        }
    }
    Ok(())
}

fn cors(c: &Cors) -> Result<(), ApplyError> {
    if c.allow_origins.is_empty() {
        return Err(ApplyError::invalid("cors.allow_origins", "name at least one origin, or \"*\""));
    }
    for o in &c.allow_origins {
        let ok = o == "*"
            || ((o.starts_with("http://") || o.starts_with("https://"))
                && !o.ends_with('/')
                && o.chars().all(|c| c.is_ascii_graphic()));
        if !ok {
            return Err(ApplyError::invalid(
                "cors.allow_origins",
                format!("{o:?} must be \"*\" or scheme://host[:port] without a trailing slash"),
            ));
        }
    }
    if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
        return Err(ApplyError::invalid(
            "cors.allow_credentials",
            "browsers refuse credentials with origin \"*\"; list the origins explicitly",
        ));
    }
    validate::methods(&c.allow_methods)?;
    for h in c.allow_headers.iter().chain(&c.expose_headers) {
        header_name("cors headers", h)?;
    }
    at_most("cors.max_age_s", c.max_age_s, 86_400)
}

fn rewrite(r: &Route) -> Result<(), ApplyError> {
    let p = &r.rewrite_path;
    if !p.starts_with('/') || p.chars().any(|c| c.is_ascii_control() || c == ' ' || c == '#') {
        return Err(ApplyError::invalid("rewrite_path", "must start with '/' and contain no spaces or '#'"));
    }
    // Every {param} must be bound by every template path, or some requests would have no value for it.
    let mut rest = p.as_str();
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| ApplyError::invalid("rewrite_path", "an opening '{' has no closing '}'"))?;
        let param = &rest[start..start + end + 1];
        let bound = r.paths.iter().all(|rp| rp.kind == PathMatch::Template as i32 && rp.path.contains(param));
        if !bound {
            return Err(ApplyError::invalid(
                "rewrite_path",
                format!("{param} must appear in every path of the route, and all of them must be templates"),
            ));
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

fn transform(field: &str, t: &HeaderTransform) -> Result<(), ApplyError> {
    let names = t.add.iter().chain(&t.set).map(|p| &p.name).chain(&t.remove);
    for name in names {
        header_name(field, name)?;
        if PROTECTED_HEADERS.contains(&name.as_str()) {
            return Err(ApplyError::invalid(field, format!("{name:?} is managed by the proxy and cannot be changed")));
        }
    }
    for p in t.add.iter().chain(&t.set) {
        if p.value.len() > 4096 || p.value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ApplyError::invalid(
                field,
                format!("value of {:?} must be at most 4096 visible characters", p.name),
            ));
        }
    }
    if t.add.len() + t.set.len() + t.remove.len() > 64 {
        return Err(ApplyError::invalid(field, "at most 64 header operations"));
    }
    Ok(())
}

fn cache(c: &ResponseCache) -> Result<(), ApplyError> {
    if c.ttl_ms > 86_400_000 {
        return Err(ApplyError::invalid("cache.ttl_ms", "must be at most one day (86400000)"));
    }
    for h in &c.vary_headers {
        header_name("cache.vary_headers", h)?;
    }
    at_most("cache.max_body_bytes", c.max_body_bytes, 64 << 20)
}

fn header_name(field: &str, name: &str) -> Result<(), ApplyError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b));
    if !ok {
        return Err(ApplyError::invalid(field, format!("{name:?} is not a lower-case header name")));
    }
    Ok(())
}

fn millis(field: &str, v: u32) -> Result<(), ApplyError> {
    at_most(field, v, MAX_MS)
}

fn at_most(field: &str, v: u32, max: u32) -> Result<(), ApplyError> {
    if v > max {
        return Err(ApplyError::invalid(field, format!("must be at most {max}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tollgate_proto::config::v1::{HeaderPair, RetryPolicy, RoutePath};

    use super::*;

    fn template_route(path: &str, rewrite: &str) -> Route {
        Route {
            paths: vec![RoutePath { kind: PathMatch::Template as i32, path: path.into() }],
            rewrite_path: rewrite.into(),
            ..Default::default()
        }
    }

    #[test]
    fn jwt_needs_matching_key_material() {
        let mut r = Route { auth: AuthMode::Jwt as i32, ..Default::default() };
        assert!(route(&r).is_err(), "jwt auth without settings");
        r.jwt = Some(JwtAuth { algorithms: vec!["HS256".into()], hs_secret: "short".into(), ..Default::default() });
        assert!(route(&r).is_err(), "short secret");
        r.jwt.as_mut().unwrap().hs_secret = "0123456789abcdef0123".into();
        assert!(route(&r).is_ok());
        // Sealed, the secret's length is still checked: sealing keeps it.
        let sealed = crate::secrets::SecretBox::from_key_material(b"k");
        r.jwt.as_mut().unwrap().hs_secret.clear();
        r.jwt.as_mut().unwrap().sealed_hs_secret = sealed.seal("c", "short").unwrap();
        assert!(route(&r).is_err(), "short sealed secret");
        r.jwt.as_mut().unwrap().sealed_hs_secret = sealed.seal("c", "0123456789abcdef").unwrap();
        assert!(route(&r).is_ok());
        r.jwt.as_mut().unwrap().algorithms.push("RS256".into());
        assert!(route(&r).is_err(), "RS256 without keys");
        r.jwt.as_mut().unwrap().jwks_url = "http://127.0.0.1:1/jwks".into();
        assert!(route(&r).is_ok());
        r.jwt.as_mut().unwrap().algorithms.push("none".into());
        assert!(route(&r).is_err(), "alg none is never accepted");
    }

    #[test]
    fn cidrs_cors_and_transforms_are_checked() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Some(("10.0.0.0".parse().unwrap(), 8)));
        assert_eq!(parse_cidr("::1"), Some(("::1".parse().unwrap(), 128)));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(route(&Route { ip_deny: vec!["nope".into()], ..Default::default() }).is_err());
        let cors = Cors { allow_origins: vec!["*".into()], allow_credentials: true, ..Default::default() };
        assert!(route(&Route { cors: Some(cors), ..Default::default() }).is_err());
        let t =
            HeaderTransform { set: vec![HeaderPair { name: "host".into(), value: "x".into() }], ..Default::default() };
        assert!(route(&Route { request_headers: Some(t), ..Default::default() }).is_err());
        let t = HeaderTransform {
            add: vec![HeaderPair { name: "X-Upper".into(), value: "x".into() }],
            ..Default::default()
        };
        assert!(route(&Route { response_headers: Some(t), ..Default::default() }).is_err());
    }

    #[test]
    fn rewrite_params_must_be_bound_by_every_path() {
        assert!(route(&template_route("/users/{id}", "/v2/people/{id}")).is_ok());
        assert!(route(&template_route("/users/{id}", "/v2/people/{name}")).is_err());
        assert!(route(&template_route("/users/{id}", "v2")).is_err());
    }

    #[test]
    fn apply_rejects_a_bad_policy_with_invalid_argument_and_no_changes() {
        use tollgate_proto::config::v1::{Meta, Target};
        use tollgate_proto::raft::v1::command::Op;
        let s = Service {
            meta: Some(Meta { id: "s1".into(), ..Default::default() }),
            name: "s".into(),
            targets: vec![Target { host: "127.0.0.1".into(), port: 80, weight: 1 }],
            retry: Some(RetryPolicy { attempts: 99, ..Default::default() }),
            ..Default::default()
        };
        let state = crate::GatewayState::default();
        let command = crate::Command::new(Op::CreateService(s), 1, "test");
        let error = crate::apply(&state, &command.0, 1).unwrap_err();
        assert!(matches!(&error, ApplyError::InvalidArgument { field, .. } if field == "retry.attempts"), "{error}");
    }

    #[test]
    fn service_policies_are_bounded() {
        let mut s = Service { hash_on: HashOn::Header as i32, ..Default::default() };
        assert!(service(&s).is_err(), "header hashing needs a header");
        s.hash_header = "x-user".into();
        assert!(service(&s).is_ok());
        s.retry = Some(RetryPolicy { attempts: 11, ..Default::default() });
        assert!(service(&s).is_err());
        s.retry = Some(RetryPolicy { attempts: 2, on_statuses: vec![200], ..Default::default() });
        assert!(service(&s).is_err());
        s.lb_policy = 99;
        s.retry = None;
        assert!(service(&s).is_err());
    }
}
