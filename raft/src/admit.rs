//! Rules a command must also meet to enter the log, beyond `apply`'s.
//!
//! `apply` must accept every command an earlier version accepted: those log
//! entries replay on upgraded nodes, and during a rolling upgrade an old
//! leader's entries apply on new followers, so tightening `apply` would let
//! replicas disagree. Rules this version adds live here instead and are
//! checked where a command is proposed ([`crate::RaftNode::propose`]), so
//! they hold for everything written from now on.

use std::collections::HashSet;

use tollgate_proto::config::v1::{Provider, Route};
use tollgate_proto::raft::v1::command::Op;

use crate::error::ApplyError;
use crate::validate;
use crate::validate_ai::{CREDENTIALS_GO, provider_header_value};

const MAX_HEADERS: usize = 64;
const MAX_HEADER_NAME_LEN: usize = 128;

/// This version's rules for `op`, on top of what `apply` checks.
pub(crate) fn admit(op: &Op) -> Result<(), ApplyError> {
    match op {
        Op::CreateProvider(p) | Op::UpdateProvider(p) => provider(p),
        Op::CreateRoute(r) | Op::UpdateRoute(r) => route(r),
        Op::CreateApiVersion(v) | Op::UpdateApiVersion(v)
            if !v.openapi.is_empty() && v.openapi.len() <= crate::apply::MAX_OPENAPI_BYTES =>
        {
            crate::openapi::validate(&v.openapi).map_err(|reason| ApplyError::invalid("openapi", reason))
        }
        Op::CreateService(s) | Op::UpdateService(s) => match &s.prompt {
            Some(prompt) if !prompt.output_schema.is_empty() => output_schema(&prompt.output_schema),
            _ => Ok(()),
        },
        Op::ApplyConfig(bundle) => bundle.ops.iter().filter_map(|c| c.op.as_ref()).try_for_each(admit),
        _ => Ok(()),
    }
}

/// A prompt API's output schema compiles as a JSON Schema (draft 2020-12
/// unless it says `$schema`), so requests are never checked against one
/// that cannot be.
fn output_schema(text: &str) -> Result<(), ApplyError> {
    let invalid = |reason: String| ApplyError::invalid("prompt.output_schema", reason);
    if text.len() > crate::validate_prompt::MAX_SCHEMA_BYTES {
        return Err(invalid("too large".into()));
    }
    let schema: serde_json::Value = serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    jsonschema::validator_for(&schema).map(|_| ()).map_err(|e| invalid(format!("not a valid JSON Schema: {e}")))
}

fn provider(p: &Provider) -> Result<(), ApplyError> {
    // Stricter than apply's reading of the authority ('\\' ends it too, a
    // port needs a host), and says where credentials go.
    validate::http_url("base_url", &p.base_url, CREDENTIALS_GO)?;
    if p.headers.len() > MAX_HEADERS {
        return Err(ApplyError::invalid("headers", format!("at most {MAX_HEADERS} per provider")));
    }
    let mut names = HashSet::new();
    for (i, h) in p.headers.iter().enumerate() {
        let field = format!("headers[{i}]");
        if h.name.len() > MAX_HEADER_NAME_LEN {
            return Err(ApplyError::invalid(field, format!("the name must be at most {MAX_HEADER_NAME_LEN} bytes")));
        }
        let lower = h.name.to_ascii_lowercase();
        // A second Content-Length or a Transfer-Encoding would frame the body
        // differently from what is sent; Host is the provider's own.
        if validate::is_framing_header(&h.name) {
            return Err(ApplyError::invalid(
                field,
                format!("{:?} is set by the gateway itself (framing, connection, Host); remove it", h.name),
            ));
        }
        // Keeping a value on update goes by name: two of one name are ambiguous.
        if !names.insert(lower) {
            return Err(ApplyError::invalid(field, format!("{:?} is given twice", h.name)));
        }
        if h.sealed_value.is_empty() {
            provider_header_value(&field, &h.value)?;
        }
    }
    Ok(())
}

fn route(r: &Route) -> Result<(), ApplyError> {
    // Apply refuses the six names earlier versions refused; the hop-by-hop
    // rest (Keep-Alive, Proxy-Connection, Trailer) is refused from here on.
    for (field, t) in [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)] {
        let Some(t) = t else { continue };
        let names = t.add.iter().chain(&t.set).map(|p| &p.name).chain(&t.remove);
        if let Some(name) = names.into_iter().find(|n| validate::is_framing_header(n)) {
            return Err(ApplyError::invalid(field, format!("{name:?} is managed by the proxy and cannot be changed")));
        }
    }
    if let Some(j) = r.jwt.as_ref().filter(|j| !j.jwks_url.is_empty()) {
        validate::http_url(
            "jwt.jwks_url",
            &j.jwks_url,
            "a JWKS holds public keys: serve it without credentials, or give the keys as public_keys_pem",
        )?;
    }
    if let Some(c) = &r.cors {
        // An origin is scheme://host[:port]; user info in one can only be a mistake or a leak.
        for o in c.allow_origins.iter().filter(|o| o.as_str() != "*") {
            validate::http_url("cors.allow_origins", o, "an origin is scheme://host[:port] and names no user")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tollgate_proto::config::v1::{Cors, JwtAuth, Meta, ProviderHeader, ProviderKind};

    use super::*;
    use crate::GatewayState;

    fn openai(url: &str) -> Provider {
        Provider {
            meta: Some(Meta { id: "p1".into(), ..Default::default() }),
            name: "p".into(),
            kind: ProviderKind::OpenaiCompatible as i32,
            base_url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn credentialed_urls_are_refused_with_what_to_do() {
        let error = admit(&Op::CreateProvider(openai("https://u:pw@llm.internal/v1"))).unwrap_err().to_string();
        assert!(error.contains("put credentials in the provider's key or headers, not in the URL"), "{error}");
        assert!(admit(&Op::UpdateProvider(openai("https://u@llm.internal\\x/v1"))).is_err());
        assert!(admit(&Op::CreateProvider(openai("https://llm.internal/v1"))).is_ok());

        let jwks = |url: &str| Route {
            jwt: Some(JwtAuth { algorithms: vec!["RS256".into()], jwks_url: url.into(), ..Default::default() }),
            ..Default::default()
        };
        let error = admit(&Op::CreateRoute(jwks("https://idp:pw@idp.example.com/jwks"))).unwrap_err().to_string();
        assert!(error.contains("jwt.jwks_url") && error.contains("not in the URL"), "{error}");
        assert!(admit(&Op::UpdateRoute(jwks("https://idp.example.com/jwks"))).is_ok());
        let cors = |o: &str| Route {
            cors: Some(Cors { allow_origins: vec!["*".into(), o.into()], ..Default::default() }),
            ..Default::default()
        };
        assert!(admit(&Op::CreateRoute(cors("https://u:p@app.example.com"))).is_err());
        assert!(admit(&Op::CreateRoute(cors("https://app.example.com"))).is_ok());
    }

    #[test]
    fn a_base_url_port_outside_1_to_65535_is_refused() {
        for url in ["http://llm.lan:65536/v1", "http://llm.lan:abc", "http://llm.lan:0", "http://[::1]:99999/v1"] {
            let error = admit(&Op::CreateProvider(openai(url))).unwrap_err().to_string();
            assert!(error.contains("must be a number from 1 to 65535"), "{url}: {error}");
        }
        for url in ["http://llm.lan:8000/v1", "http://[::1]:11434", "http://[::1]/v1", "https://api.openai.com/v1"] {
            assert!(admit(&Op::CreateProvider(openai(url))).is_ok(), "{url}");
        }
    }

    #[test]
    fn provider_headers_cannot_set_framing_connection_or_host() {
        let with_header = |name: &str| Provider {
            headers: vec![tollgate_proto::config::v1::ProviderHeader {
                name: name.into(),
                value: "x".into(),
                ..Default::default()
            }],
            ..openai("https://llm.internal/v1")
        };
        for name in ["Host", "content-length", "Transfer-Encoding", "connection", "TE", "upgrade", "keep-alive"] {
            let error = admit(&Op::CreateProvider(with_header(name))).unwrap_err().to_string();
            assert!(error.contains("headers[0]") && error.contains("set by the gateway"), "{name}: {error}");
            assert!(admit(&Op::UpdateProvider(with_header(name))).is_err(), "{name}");
        }
        assert!(admit(&Op::CreateProvider(with_header("OpenAI-Organization"))).is_ok());
    }

    #[test]
    fn route_transforms_cannot_touch_hop_by_hop_headers() {
        use tollgate_proto::config::v1::{HeaderPair, HeaderTransform};
        for name in ["keep-alive", "proxy-connection", "trailer", "host"] {
            let set = HeaderTransform {
                set: vec![HeaderPair { name: name.into(), value: "x".into() }],
                ..Default::default()
            };
            let route = Route { request_headers: Some(set), ..Default::default() };
            let error = admit(&Op::CreateRoute(route)).unwrap_err().to_string();
            assert!(error.contains("request_headers") && error.contains("managed by the proxy"), "{name}: {error}");
            let removed = HeaderTransform { remove: vec![name.into()], ..Default::default() };
            assert!(admit(&Op::UpdateRoute(Route { response_headers: Some(removed), ..Default::default() })).is_err());
        }
        let fine = HeaderTransform {
            set: vec![HeaderPair { name: "x-team".into(), value: "a".into() }],
            ..Default::default()
        };
        assert!(admit(&Op::CreateRoute(Route { request_headers: Some(fine), ..Default::default() })).is_ok());
    }

    #[test]
    fn new_rules_do_not_change_what_apply_accepts_from_earlier_logs() {
        // An earlier version accepted this route; its log entry must still
        // apply after an upgrade. Only new proposals are refused.
        let route = Route {
            meta: Some(Meta { id: "r1".into(), ..Default::default() }),
            name: "r".into(),
            paths: vec![tollgate_proto::config::v1::RoutePath {
                kind: tollgate_proto::config::v1::PathMatch::Prefix as i32,
                path: "/".into(),
            }],
            auth: tollgate_proto::config::v1::AuthMode::Jwt as i32,
            ai_gateway: true,
            jwt: Some(JwtAuth {
                algorithms: vec!["RS256".into()],
                jwks_url: "https://idp:pw@idp.example.com/jwks".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let op = Op::CreateRoute(route);
        assert!(admit(&op).is_err());
        let command = crate::Command::new(op, 1, "test");
        assert!(crate::apply(&GatewayState::default(), &command.0, 1).is_ok());
    }

    #[test]
    fn provider_headers_are_bounded_and_named_once() {
        let mut p = openai("https://llm.internal/v1");
        p.headers = vec![
            ProviderHeader { name: "x-a".into(), sealed_value: vec![1; 40], ..Default::default() },
            ProviderHeader { name: "X-A".into(), sealed_value: vec![1; 40], ..Default::default() },
        ];
        assert!(admit(&Op::CreateProvider(p.clone())).unwrap_err().to_string().contains("twice"));
        p.headers.truncate(1);
        assert!(admit(&Op::CreateProvider(p.clone())).is_ok());
        p.headers = (0..65)
            .map(|i| ProviderHeader { name: format!("x-{i}"), sealed_value: vec![1; 40], ..Default::default() })
            .collect();
        assert!(admit(&Op::CreateProvider(p)).is_err());
    }
}
