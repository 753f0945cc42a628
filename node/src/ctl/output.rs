//! Rendering entities as human tables or as JSON for scripts. The JSON shape
//! is stable: field names follow the protobuf names.

use serde_json::{Value, json};
use tollgate_proto::config::v1::{
    ApiKey, AuthMode, Consumer, Cors, HashOn, HeaderTransform, JwtAuth, LbPolicy, Meta, PathMatch, ResponseCache,
    Route, Service,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// A list's rows as CSV (RFC 4180); the usage commands write ids and
    /// plain numbers. Other results print as for `table`.
    Csv,
}

fn meta(m: &Option<Meta>) -> Value {
    let m = m.clone().unwrap_or_default();
    json!({ "id": m.id, "created_at_ms": m.created_at_ms, "updated_at_ms": m.updated_at_ms, "revision": m.revision })
}

fn id(m: &Option<Meta>) -> String {
    m.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

pub fn service_json(s: &Service) -> Value {
    json!({
        "meta": meta(&s.meta),
        "name": s.name,
        "version": s.version,
        "targets": s.targets.iter().map(|t| json!({"host": t.host, "port": t.port, "weight": t.weight})).collect::<Vec<_>>(),
        "connect_timeout_ms": s.connect_timeout_ms,
        "request_timeout_ms": s.request_timeout_ms,
        "description": s.description,
        "lb_policy": lb_name(s.lb_policy),
        "hash_on": hash_on_name(s.hash_on),
        "hash_header": s.hash_header,
        "health_check": s.health_check.as_ref().map(|h| json!({
            "path": h.path, "interval_ms": h.interval_ms, "timeout_ms": h.timeout_ms,
            "healthy_threshold": h.healthy_threshold, "unhealthy_threshold": h.unhealthy_threshold,
        })),
        "outlier_detection": s.outlier_detection.as_ref().map(|o| json!({
            "consecutive_failures": o.consecutive_failures, "ejection_ms": o.ejection_ms,
        })),
        "retry": s.retry.as_ref().map(|r| json!({
            "attempts": r.attempts, "budget_percent": r.budget_percent, "on_statuses": r.on_statuses,
        })),
        "circuit_breaker": s.circuit_breaker.as_ref().map(|c| json!({
            "failure_threshold": c.failure_threshold, "open_ms": c.open_ms,
        })),
        "tls": s.tls.as_ref().map(|t| json!({
            "enabled": t.enabled, "server_name": t.server_name, "custom_ca": !t.ca_pem.is_empty(),
        })),
    })
}

pub fn lb_name(policy: i32) -> &'static str {
    match LbPolicy::try_from(policy) {
        Ok(LbPolicy::LeastConnections) => "least-connections",
        Ok(LbPolicy::ConsistentHash) => "consistent-hash",
        // Unspecified means weighted round robin (entities.proto).
        _ => "round-robin",
    }
}

fn hash_on_name(on: i32) -> &'static str {
    match HashOn::try_from(on) {
        Ok(HashOn::ClientIp) => "client-ip",
        Ok(HashOn::Header) => "header",
        Ok(HashOn::Consumer) => "consumer",
        _ => "",
    }
}

pub fn path_kind(kind: i32) -> &'static str {
    match PathMatch::try_from(kind) {
        Ok(PathMatch::Exact) => "exact",
        Ok(PathMatch::Template) => "template",
        Ok(PathMatch::Prefix) => "prefix",
        _ => "unspecified",
    }
}

/// The names `--auth` takes, so what is printed can be typed back.
pub fn auth_name(auth: i32) -> &'static str {
    match AuthMode::try_from(auth) {
        Ok(AuthMode::None) => "none",
        Ok(AuthMode::ApiKey) => "api-key",
        Ok(AuthMode::Jwt) => "jwt",
        Ok(AuthMode::ApiKeyOrJwt) => "api-key-or-jwt",
        _ => "unspecified",
    }
}

/// JWT settings without the secret: the admin API never returns it, and
/// this never prints it even if a server did.
fn jwt_json(j: &JwtAuth) -> Value {
    json!({
        "algorithms": j.algorithms,
        "issuer": j.issuer,
        "audiences": j.audiences,
        "jwks_url": j.jwks_url,
        "public_keys": j.public_keys_pem.len(),
        "consumer_claim": j.consumer_claim,
        "require_consumer": j.require_consumer,
        "leeway_s": j.leeway_s,
        "jwks_refresh_ms": j.jwks_refresh_ms,
    })
}

fn cors_json(c: &Cors) -> Value {
    json!({
        "allow_origins": c.allow_origins, "allow_methods": c.allow_methods, "allow_headers": c.allow_headers,
        "expose_headers": c.expose_headers, "max_age_s": c.max_age_s, "allow_credentials": c.allow_credentials,
    })
}

fn transform_json(t: &HeaderTransform) -> Value {
    let pairs = |list: &[tollgate_proto::config::v1::HeaderPair]| {
        list.iter().map(|p| json!({"name": p.name, "value": p.value})).collect::<Vec<_>>()
    };
    json!({ "add": pairs(&t.add), "set": pairs(&t.set), "remove": t.remove })
}

fn cache_json(c: &ResponseCache) -> Value {
    json!({
        "enabled": c.enabled, "ttl_ms": c.ttl_ms, "vary_headers": c.vary_headers, "max_body_bytes": c.max_body_bytes,
        "allow_cookies": c.allow_cookies,
    })
}

/// A route as this version reads it: one from a node of the previous
/// version (during a rolling upgrade) names its backend only in the legacy
/// fields.
fn current_form(r: &Route) -> std::borrow::Cow<'_, Route> {
    if r.backend.is_some() {
        return std::borrow::Cow::Borrowed(r);
    }
    let mut current = r.clone();
    // A stored route never names two backends; if one did, show it as stored.
    let _ = current.adopt_legacy_backend();
    std::borrow::Cow::Owned(current)
}

pub fn route_json(r: &Route) -> Value {
    let r = &*current_form(r);
    json!({
        "meta": meta(&r.meta),
        "name": r.name,
        "hosts": r.hosts,
        "methods": r.methods,
        "paths": r.paths.iter().map(|p| json!({"kind": path_kind(p.kind), "path": p.path})).collect::<Vec<_>>(),
        "priority": r.priority,
        "strip_prefix": r.strip_prefix,
        "rewrite_path": r.rewrite_path,
        "backend": if r.is_ai_backend() { "ai" } else { "service" },
        "service_id": r.backend_service_id().unwrap_or_default(),
        "ai_gateway": r.is_ai_backend(),
        "auth": auth_name(r.auth),
        "jwt": r.jwt.as_ref().map(jwt_json),
        "ip_allow": r.ip_allow,
        "ip_deny": r.ip_deny,
        "cors": r.cors.as_ref().map(cors_json),
        "request_headers": r.request_headers.as_ref().map(transform_json),
        "response_headers": r.response_headers.as_ref().map(transform_json),
        "cache": r.cache.as_ref().map(cache_json),
        "connect_timeout_ms": r.connect_timeout_ms,
        "request_timeout_ms": r.request_timeout_ms,
        "idle_timeout_ms": r.idle_timeout_ms,
    })
}

pub fn consumer_json(c: &Consumer) -> Value {
    json!({ "meta": meta(&c.meta), "name": c.name, "description": c.description })
}

pub fn api_key_json(k: &ApiKey) -> Value {
    json!({
        "meta": meta(&k.meta),
        "consumer_id": k.consumer_id,
        "name": k.name,
        "display_prefix": k.display_prefix,
        "expires_at_ms": k.expires_at_ms,
        "disabled": k.disabled,
        "allowed_models": k.allowed_models,
    })
}

/// Rows for the table view; the first row is the header.
pub fn service_rows(items: &[Service]) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["ID", "NAME", "VERSION", "TARGETS", "REVISION"].into_iter().map(String::from).collect()];
    for s in items {
        let targets: Vec<String> = s
            .targets
            .iter()
            .map(|t| {
                if t.weight > 1 {
                    format!("{}:{}*{}", t.host, t.port, t.weight)
                } else {
                    format!("{}:{}", t.host, t.port)
                }
            })
            .collect();
        rows.push(vec![id(&s.meta), s.name.clone(), s.version.clone(), targets.join(","), revision(&s.meta)]);
    }
    rows
}

/// Names by id, so tables show what people typed (`route list` the service
/// name, `key list` the consumer name). An id with no name (deleted since,
/// or not looked up) prints as the id.
pub type Names = std::collections::HashMap<String, String>;

fn name_of(names: &Names, id: &str) -> String {
    names.get(id).cloned().unwrap_or_else(|| id.to_string())
}

/// A Unix millisecond time as RFC 3339 UTC to the second
/// (`2026-05-01T12:00:00Z`), as a person reads it; `-` for 0 (unset).
pub fn date(unix_ms: i64) -> String {
    match u64::try_from(unix_ms) {
        Ok(0) | Err(_) => "-".into(),
        Ok(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
        }
    }
}

pub fn route_rows(items: &[Route], services: &Names) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = vec![
        ["ID", "NAME", "HOSTS", "METHODS", "PATHS", "PRIORITY", "AUTH", "SERVICE"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    for r in items {
        let r = &*current_form(r);
        let paths: Vec<String> = r.paths.iter().map(|p| format!("{}:{}", path_kind(p.kind), p.path)).collect();
        rows.push(vec![
            id(&r.meta),
            r.name.clone(),
            or_any(r.hosts.join(",")),
            or_any(r.methods.join(",")),
            paths.join(","),
            r.priority.to_string(),
            auth_name(r.auth).to_string(),
            match r.backend_service_id() {
                Some(service_id) => name_of(services, service_id),
                None => "(ai gateway)".into(),
            },
        ]);
    }
    rows
}

/// What `route get` prints under the route's row: every policy that is set,
/// one `field  value` line each. Never the JWT secret.
pub fn route_detail_rows(r: &Route) -> Vec<Vec<String>> {
    let r = &*current_form(r);
    let mut d = Details::default();
    d.add("strip_prefix", r.strip_prefix.to_string());
    d.add("rewrite_path", r.rewrite_path.clone());
    if r.is_ai_backend() {
        d.add("ai_gateway", "true".into());
    }
    if let Some(j) = &r.jwt {
        d.add("jwt.algorithms", j.algorithms.join(","));
        d.add("jwt.issuer", j.issuer.clone());
        d.add("jwt.audiences", j.audiences.join(","));
        d.add("jwt.jwks_url", j.jwks_url.clone());
        if !j.public_keys_pem.is_empty() {
            d.add("jwt.public_keys", format!("{} PEM key(s)", j.public_keys_pem.len()));
        }
        d.add("jwt.consumer_claim", j.consumer_claim.clone());
        if j.require_consumer {
            d.add("jwt.require_consumer", "true".into());
        }
        d.number("jwt.leeway_s", j.leeway_s);
        d.number("jwt.jwks_refresh_ms", j.jwks_refresh_ms);
    }
    d.add("ip_allow", r.ip_allow.join(","));
    d.add("ip_deny", r.ip_deny.join(","));
    if let Some(c) = &r.cors {
        d.add("cors.allow_origins", c.allow_origins.join(","));
        d.add("cors.allow_methods", c.allow_methods.join(","));
        d.add("cors.allow_headers", c.allow_headers.join(","));
        d.add("cors.expose_headers", c.expose_headers.join(","));
        d.number("cors.max_age_s", c.max_age_s);
        if c.allow_credentials {
            d.add("cors.allow_credentials", "true".into());
        }
    }
    for (field, t) in [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)] {
        let Some(t) = t else { continue };
        let pairs = |list: &[tollgate_proto::config::v1::HeaderPair]| {
            list.iter().map(|p| format!("{}:{}", p.name, p.value)).collect::<Vec<_>>().join(" ")
        };
        d.add(&format!("{field}.add"), pairs(&t.add));
        d.add(&format!("{field}.set"), pairs(&t.set));
        d.add(&format!("{field}.remove"), t.remove.join(","));
    }
    if let Some(c) = &r.cache {
        d.add("cache.enabled", c.enabled.to_string());
        d.number("cache.ttl_ms", c.ttl_ms);
        d.add("cache.vary_headers", c.vary_headers.join(","));
        d.number("cache.max_body_bytes", c.max_body_bytes);
        if c.allow_cookies {
            d.add("cache.allow_cookies", "true".into());
        }
    }
    d.number("connect_timeout_ms", r.connect_timeout_ms);
    d.number("request_timeout_ms", r.request_timeout_ms);
    d.number("idle_timeout_ms", r.idle_timeout_ms);
    d.0
}

/// What `service get` prints under the service's row.
pub fn service_detail_rows(s: &Service) -> Vec<Vec<String>> {
    let mut d = Details::default();
    d.add("lb_policy", lb_name(s.lb_policy).into());
    if HashOn::try_from(s.hash_on) == Ok(HashOn::Header) {
        d.add("hash_on", format!("header:{}", s.hash_header));
    } else {
        d.add("hash_on", hash_on_name(s.hash_on).into());
    }
    d.number("connect_timeout_ms", s.connect_timeout_ms);
    d.number("request_timeout_ms", s.request_timeout_ms);
    if let Some(h) = &s.health_check {
        d.add("health_check.path", h.path.clone());
        d.number("health_check.interval_ms", h.interval_ms);
        d.number("health_check.timeout_ms", h.timeout_ms);
        d.number("health_check.healthy_threshold", h.healthy_threshold);
        d.number("health_check.unhealthy_threshold", h.unhealthy_threshold);
    }
    if let Some(o) = &s.outlier_detection {
        d.number("outlier_detection.consecutive_failures", o.consecutive_failures);
        d.number("outlier_detection.ejection_ms", o.ejection_ms);
    }
    if let Some(r) = &s.retry {
        d.number("retry.attempts", r.attempts);
        d.number("retry.budget_percent", r.budget_percent);
        d.add("retry.on_statuses", r.on_statuses.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
    }
    if let Some(c) = &s.circuit_breaker {
        d.number("circuit_breaker.failure_threshold", c.failure_threshold);
        d.number("circuit_breaker.open_ms", c.open_ms);
    }
    if let Some(t) = &s.tls {
        d.add("tls.enabled", t.enabled.to_string());
        d.add("tls.server_name", t.server_name.clone());
        if !t.ca_pem.is_empty() {
            d.add("tls.ca", "custom PEM bundle".into());
        }
    }
    d.add("description", s.description.clone());
    d.0
}

/// `field  value` rows, leaving out fields that are not set (empty or 0).
#[derive(Default)]
struct Details(Vec<Vec<String>>);

impl Details {
    fn add(&mut self, field: &str, value: String) {
        if !value.is_empty() {
            self.0.push(vec![format!("{field}:"), value]);
        }
    }

    fn number(&mut self, field: &str, value: u32) {
        if value != 0 {
            self.add(field, value.to_string());
        }
    }
}

pub fn consumer_rows(items: &[Consumer]) -> Vec<Vec<String>> {
    let mut rows = vec![["ID", "NAME", "DESCRIPTION"].into_iter().map(String::from).collect::<Vec<_>>()];
    for c in items {
        rows.push(vec![id(&c.meta), c.name.clone(), c.description.clone()]);
    }
    rows
}

pub fn api_key_rows(items: &[ApiKey], consumers: &Names) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["ID", "CONSUMER", "NAME", "PREFIX", "CREATED", "EXPIRES", "STATUS"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    for k in items {
        rows.push(vec![
            id(&k.meta),
            name_of(consumers, &k.consumer_id),
            k.name.clone(),
            k.display_prefix.clone(),
            date(k.meta.as_ref().map_or(0, |m| m.created_at_ms)),
            if k.expires_at_ms == 0 { "never".into() } else { date(k.expires_at_ms) },
            if k.disabled { "disabled".into() } else { "enabled".into() },
        ]);
    }
    rows
}

fn or_any(s: String) -> String {
    if s.is_empty() { "*".into() } else { s }
}

fn revision(m: &Option<Meta>) -> String {
    m.as_ref().map_or(0, |m| m.revision).to_string()
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| if i + 1 == row.len() { cell.clone() } else { format!("{cell:<w$}", w = widths[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Rows as CSV (RFC 4180): a field with a comma, quote or line break is
/// quoted, its quotes doubled; lines end with CRLF.
/// A field a spreadsheet would run as a formula (`=`, `+`, `@`, a tab or
/// carriage return first; `-` before anything but a number) gets a leading
/// `'` (OWASP's advice on CSV injection): usage records carry what clients
/// chose, such as a model name, and these files are opened in spreadsheets.
fn spreadsheet_safe(field: &str) -> std::borrow::Cow<'_, str> {
    let formula = match field.as_bytes().first() {
        Some(b'=' | b'+' | b'@' | b'\t' | b'\r') => true,
        // A lone `-` is how tables and CSV say "none".
        Some(b'-') => field != "-" && field.parse::<f64>().is_err(),
        _ => false,
    };
    if formula { std::borrow::Cow::Owned(format!("'{field}")) } else { std::borrow::Cow::Borrowed(field) }
}

pub fn csv(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for row in rows {
        let fields: Vec<String> = row
            .iter()
            .map(|f| {
                let f = spreadsheet_safe(f);
                if f.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", f.replace('"', "\"\""))
                } else {
                    f.into_owned()
                }
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let rows = vec![vec!["a".to_string(), "b,c".into()], vec!["say \"hi\"".into(), "line\nbreak".into()]];
        assert_eq!(csv(&rows), "a,\"b,c\"\r\n\"say \"\"hi\"\"\",\"line\nbreak\"\r\n");
    }

    #[test]
    fn csv_fields_a_spreadsheet_would_run_are_defused() {
        let rows = vec![vec![
            "=HYPERLINK(\"x\")".to_string(),
            "-12".into(),
            "-cmd".into(),
            "@SUM(A1)".into(),
            "gpt-4o".into(),
        ]];
        assert_eq!(csv(&rows), "\"'=HYPERLINK(\"\"x\"\")\",-12,'-cmd,'@SUM(A1),gpt-4o\r\n");
    }

    use tollgate_proto::config::v1::{HeaderPair, RetryPolicy};

    #[test]
    fn a_route_from_a_node_of_the_previous_version_shows_its_backend() {
        let ai = Route { name: "llm".into(), ai_gateway: true, ..Default::default() };
        assert_eq!(route_json(&ai)["backend"], "ai");
        let svc = Route { name: "orders".into(), service_id: "svc_01".into(), ..Default::default() };
        let json = route_json(&svc);
        assert_eq!((json["backend"].as_str(), json["service_id"].as_str()), (Some("service"), Some("svc_01")));
    }

    fn jwt_route() -> Route {
        Route {
            name: "r".into(),
            auth: AuthMode::Jwt as i32,
            strip_prefix: true,
            rewrite_path: "/v2".into(),
            jwt: Some(JwtAuth {
                algorithms: vec!["HS256".into(), "RS256".into()],
                hs_secret: "super-secret-hmac-key-0123".into(),
                sealed_hs_secret: b"sealed-bytes-0123".to_vec(),
                issuer: "https://idp.example.com".into(),
                jwks_url: "https://idp.example.com/jwks".into(),
                ..Default::default()
            }),
            ip_allow: vec!["10.0.0.0/8".into()],
            ip_deny: vec!["10.0.0.7".into()],
            cors: Some(Cors { allow_origins: vec!["https://app.example.com".into()], ..Default::default() }),
            request_headers: Some(HeaderTransform {
                set: vec![HeaderPair { name: "x-env".into(), value: "prod".into() }],
                ..Default::default()
            }),
            cache: Some(ResponseCache { enabled: true, ttl_ms: 30_000, ..Default::default() }),
            connect_timeout_ms: 250,
            request_timeout_ms: 5000,
            idle_timeout_ms: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn every_auth_mode_prints_by_the_name_auth_takes() {
        let names: Vec<&str> = [AuthMode::None, AuthMode::ApiKey, AuthMode::Jwt, AuthMode::ApiKeyOrJwt]
            .into_iter()
            .map(|m| auth_name(m as i32))
            .collect();
        assert_eq!(names, ["none", "api-key", "jwt", "api-key-or-jwt"]);
    }

    #[test]
    fn route_json_and_get_show_policies_but_never_the_jwt_secret() {
        let r = jwt_route();
        let v = route_json(&r);
        assert_eq!(v["auth"], "jwt");
        assert_eq!(v["strip_prefix"], true);
        assert_eq!(v["rewrite_path"], "/v2");
        assert_eq!(v["jwt"]["issuer"], "https://idp.example.com");
        assert_eq!(v["jwt"]["algorithms"], json!(["HS256", "RS256"]));
        assert_eq!(v["ip_allow"], json!(["10.0.0.0/8"]));
        assert_eq!(v["ip_deny"], json!(["10.0.0.7"]));
        assert_eq!(v["cors"]["allow_origins"], json!(["https://app.example.com"]));
        assert_eq!(v["request_headers"]["set"][0]["name"], "x-env");
        assert_eq!(v["cache"]["ttl_ms"], 30_000);
        assert_eq!((v["connect_timeout_ms"].as_u64(), v["idle_timeout_ms"].as_u64()), (Some(250), Some(1000)));
        let text = v.to_string();
        assert!(!text.contains("super-secret") && !text.contains("sealed-bytes"), "{text}");

        let details = table(&route_detail_rows(&r));
        for expected in [
            "strip_prefix:",
            "rewrite_path:",
            "/v2",
            "jwt.algorithms:",
            "HS256,RS256",
            "jwt.issuer:",
            "jwt.jwks_url:",
            "ip_allow:",
            "10.0.0.0/8",
            "ip_deny:",
            "cors.allow_origins:",
            "request_headers.set:",
            "x-env:prod",
            "cache.ttl_ms:",
            "30000",
            "connect_timeout_ms:",
            "request_timeout_ms:",
            "idle_timeout_ms:",
        ] {
            assert!(details.contains(expected), "{expected:?} missing from\n{details}");
        }
        assert!(!details.contains("super-secret") && !details.contains("sealed"), "{details}");
        assert!(table(&route_rows(&[r], &Names::new())).contains("jwt"), "the list shows the auth mode's name");
    }

    #[test]
    fn service_json_and_get_show_policies() {
        let s = Service {
            name: "s".into(),
            lb_policy: LbPolicy::ConsistentHash as i32,
            hash_on: HashOn::Header as i32,
            hash_header: "x-user".into(),
            retry: Some(RetryPolicy { attempts: 2, ..Default::default() }),
            ..Default::default()
        };
        let v = service_json(&s);
        assert_eq!((v["lb_policy"].as_str(), v["hash_on"].as_str()), (Some("consistent-hash"), Some("header")));
        assert_eq!(v["retry"]["attempts"], 2);
        let details = table(&service_detail_rows(&s));
        assert!(details.contains("hash_on:") && details.contains("header:x-user"), "{details}");
        assert!(details.contains("retry.attempts:"), "{details}");
    }

    #[test]
    fn tables_show_names_and_dates_not_ids_and_milliseconds() {
        let mut route = Route { name: "r".into(), ..Default::default() };
        route.set_service_backend("svc_01".into());
        let names = Names::from([("svc_01".to_string(), "orders".to_string())]);
        let text = table(&route_rows(std::slice::from_ref(&route), &names));
        assert!(text.contains("orders") && !text.contains("svc_01"), "{text}");
        let text = table(&route_rows(&[route], &Names::new()));
        assert!(text.contains("svc_01"), "an unknown id still prints: {text}");

        let key = ApiKey {
            meta: Some(Meta { id: "k1".into(), created_at_ms: 1_777_636_800_000, ..Default::default() }),
            consumer_id: "con_01".into(),
            expires_at_ms: 1_777_723_200_123,
            ..Default::default()
        };
        let names = Names::from([("con_01".to_string(), "acme".to_string())]);
        let text = table(&api_key_rows(&[key], &names));
        assert!(text.contains("acme") && !text.contains("con_01"), "{text}");
        assert!(text.contains("2026-05-01T12:00:00Z") && text.contains("2026-05-02T12:00:00Z"), "{text}");
        assert!(!text.contains("1777"), "no epoch milliseconds: {text}");
        assert_eq!(date(0), "-");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![vec!["A".to_string(), "BB".to_string()], vec!["long".to_string(), "x".to_string()]];
        assert_eq!(table(&rows), "A     BB\nlong  x\n");
    }
}
