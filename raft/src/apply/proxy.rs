//! Rules of the proxy's entities: services and the routes that lead to them.

use tollgate_proto::config::v1::route::Backend;
use tollgate_proto::config::v1::{AuthMode, Route, Service};

use super::{Change, Rules};
use crate::entities::EntityKind;
use crate::error::ApplyError;
use crate::state::GatewayState;
use crate::{validate, validate_policy};

impl Rules for Service {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        validate::name("name", &self.name)?;
        if self.version.len() > validate::MAX_NAME_LEN {
            return Err(ApplyError::invalid("version", "must be at most 64 characters"));
        }
        match &self.prompt {
            // A model answers a prompt API: it has no targets.
            Some(_) if !self.targets.is_empty() => {
                return Err(ApplyError::invalid("targets", "a prompt API has no targets: a model answers it"));
            }
            Some(prompt) => crate::validate_prompt::prompt(prompt)?,
            None => validate::targets(&self.targets)?,
        }
        super::governance::team_ref(state, &self.team_id)?;
        match &self.versioning {
            Some(versioning) => validate_versioning(versioning)?,
            None if state
                .api_versions()
                .any(|v| Some(v.service_id.as_str()) == self.meta.as_ref().map(|m| m.id.as_str())) =>
            {
                return Err(ApplyError::FailedPrecondition(format!(
                    "service {:?} has versions: it keeps its versioning (delete the versions first)",
                    self.name
                )));
            }
            None => {}
        }
        validate_policy::service(self)
    }

    /// A route may not lead to a missing service. Scanning the routes is
    /// O(routes), which a rare delete can afford.
    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        super::limits::refuse_if_limited(state, EntityKind::Service, &[id])?;
        let users: Vec<&str> =
            state.routes().filter(|r| r.backend_service_id() == Some(id)).map(|r| r.name.as_str()).collect();
        if !users.is_empty() {
            return Err(ApplyError::FailedPrecondition(format!(
                "service {id} is used by route(s) {}; delete or re-point them first",
                users.join(", ")
            )));
        }
        super::governance::service_dependents(state, id)
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;
        use tollgate_proto::config::v1::Target;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name(), any::<bool>())
            .prop_map(|(id, name, has_target)| Service {
                meta: meta(&id),
                name,
                targets: if has_target {
                    vec![Target { host: "127.0.0.1".into(), port: 8000, weight: 1 }]
                } else {
                    vec![]
                },
                ..Default::default()
            })
            .boxed()
    }
}

fn validate_versioning(versioning: &tollgate_proto::config::v1::Versioning) -> Result<(), ApplyError> {
    let header = &versioning.header;
    if !header.is_empty()
        && (header.len() > 128 || !header.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        return Err(ApplyError::invalid(
            "versioning.header",
            "must be a lower-case header name of letters, digits and '-', e.g. \"api-version\"",
        ));
    }
    // The gateway sets this header on the request it forwards: never one
    // that frames or routes the request, or that carries credentials or
    // the identity the gateway vouches for. Apply's own list, frozen:
    // every replica must decide a committed entry as it was decided (the
    // admission list `FRAMING_HEADERS` may grow).
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "forwarded",
        "traceparent",
        "tracestate",
        "x-request-id",
    ];
    if RESERVED.contains(&header.as_str()) || header.starts_with("x-consumer-") || header.starts_with("x-forwarded-") {
        return Err(ApplyError::invalid(
            "versioning.header",
            format!(
                "{header:?} belongs to the request's framing, credentials or identity; pick another, e.g. \"api-version\""
            ),
        ));
    }
    if header.is_empty() && !versioning.by_path && versioning.default_version.is_empty() {
        return Err(ApplyError::invalid(
            "versioning",
            "say how a request picks a version: a header, by path, and/or a default version",
        ));
    }
    if !versioning.default_version.is_empty() {
        validate::name("versioning.default_version", &versioning.default_version)?;
    }
    Ok(())
}

impl Rules for Route {
    /// Routes from clients and log entries of the previous format name their
    /// backend in `service_id`/`ai_gateway`; they apply exactly as they did.
    fn upgrade(&mut self) -> Result<(), ApplyError> {
        self.adopt_legacy_backend().map_err(|reason| ApplyError::invalid("service_id", reason))
    }

    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        validate::name("name", &self.name)?;
        validate::route_hosts(&self.hosts)?;
        validate::methods(&self.methods)?;
        validate::route_paths(&self.paths)?;
        validate::auth(self.auth)?;
        validate_policy::route(self)?;
        super::governance::team_ref(state, &self.team_id)?;
        match &self.backend {
            Some(Backend::Ai(_)) => Ok(()),
            Some(Backend::Mcp(m)) => {
                // Its tools are the caller's subscriptions: it must know the caller.
                if self.auth == AuthMode::None as i32 {
                    return Err(ApplyError::invalid(
                        "auth",
                        "an MCP route lists the caller's own APIs: it needs an API key or JWT",
                    ));
                }
                super::governance::team_ref(state, &m.team_id)
            }
            Some(Backend::Service(s)) if s.service_id.is_empty() => {
                Err(ApplyError::invalid("backend.service.service_id", "a route must name the service it forwards to"))
            }
            Some(Backend::Service(s)) => match state.service(&s.service_id) {
                Some(_) => Ok(()),
                None => Err(ApplyError::not_found(EntityKind::Service, &s.service_id)),
            },
            None => Err(ApplyError::invalid(
                "backend",
                "a route must name its backend: a service, the AI gateway or an MCP server",
            )),
        }
    }

    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        super::limits::refuse_if_limited(state, EntityKind::Route, &[id])?;
        Ok(Vec::new())
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;
        use tollgate_proto::config::v1::{AiBackend, AuthMode, PathMatch, RoutePath, ServiceBackend};

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        // The backend in each form a command may carry: the oneof, or the
        // previous format's fields (both at once is refused).
        let backend = prop_oneof![
            arbitrary_id().prop_map(|id| (
                Some(Backend::Service(ServiceBackend { service_id: id })),
                String::new(),
                false
            )),
            arbitrary_id().prop_map(|id| (None, id, false)),
            Just((Some(Backend::Ai(AiBackend {})), String::new(), false)),
            Just((None, String::new(), true)),
            arbitrary_id().prop_map(|id| (None, id, true)),
            Just((None, String::new(), false)),
        ];
        (arbitrary_id(), arbitrary_name(), backend, any::<bool>())
            .prop_map(|(id, name, (backend, service_id, ai_gateway), good_path)| Route {
                meta: meta(&id),
                name,
                backend,
                service_id,
                ai_gateway,
                paths: vec![RoutePath {
                    kind: PathMatch::Prefix as i32,
                    path: if good_path { "/api".into() } else { "api".into() },
                }],
                auth: AuthMode::ApiKey as i32,
                ..Default::default()
            })
            .boxed()
    }
}
