//! The deterministic heart of the state machine: a pure function from
//! (state, command, log index) to a list of changes or a typed rejection.
//! No clocks, no randomness, no I/O: ids and times come inside the command.

use prost::Message;
use tollgate_proto::config::v1::route::Backend;
use tollgate_proto::config::v1::{ApiKey, Consumer, JoinToken, Meta, ModelAlias, ModelPrice, Provider, Route, Service};
use tollgate_proto::raft::v1::{Command, command::Op};

use crate::error::{ApplyError, EntityKind};
use crate::state::GatewayState;
use crate::{validate, validate_ai};

/// One write to the replicated state.
// Changes live only for one apply; boxing the big entities would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutService(Service),
    DeleteService(String),
    PutRoute(Route),
    DeleteRoute(String),
    PutConsumer(Consumer),
    DeleteConsumer(String),
    PutApiKey(ApiKey),
    DeleteApiKey(String),
    PutJoinToken(JoinToken),
    DeleteJoinToken(String),
    PutProvider(Provider),
    DeleteProvider(String),
    PutModelAlias(ModelAlias),
    DeleteModelAlias(String),
    PutModelPrice(ModelPrice),
    DeleteModelPrice(String),
}

/// What a successful command did: its changes, and the created or updated
/// entity (encoded) to hand back to the caller.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: Vec<Change>,
    pub entity: Option<Vec<u8>>,
}

/// Validates `cmd` against `state` and returns the changes it makes at log
/// position `index`. A rejected command returns an error and no changes.
pub fn apply(state: &GatewayState, cmd: &Command, index: u64) -> Result<Outcome, ApplyError> {
    let now = cmd.proposed_at_ms;
    let op = cmd.op.as_ref().ok_or_else(|| ApplyError::invalid("op", "the command carries no operation"))?;
    match op {
        Op::CreateService(s) => {
            let mut s = s.clone();
            s.meta = Some(create_meta(s.meta.as_ref(), now, index)?);
            check_service(&s)?;
            unique_id(state.service(id_of(&s.meta)).is_some(), EntityKind::Service, id_of(&s.meta))?;
            unique_name(state.service_id_named(&s.name), None, EntityKind::Service, &s.name)?;
            Ok(put(Change::PutService(s.clone()), &s))
        }
        Op::UpdateService(s) => {
            let existing = state
                .service(id_of(&s.meta))
                .ok_or_else(|| ApplyError::not_found(EntityKind::Service, id_of(&s.meta)))?;
            let mut s = s.clone();
            s.meta = Some(update_meta(existing.meta.as_ref(), now, index));
            check_service(&s)?;
            unique_name(state.service_id_named(&s.name), Some(id_of(&s.meta)), EntityKind::Service, &s.name)?;
            Ok(put(Change::PutService(s.clone()), &s))
        }
        Op::DeleteService(id) => {
            state.service(id).ok_or_else(|| ApplyError::not_found(EntityKind::Service, id))?;
            let users: Vec<&str> = state
                .routes()
                .filter(|r| r.backend_service_id() == Some(id.as_str()))
                .map(|r| r.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(ApplyError::FailedPrecondition(format!(
                    "service {id} is used by route(s) {}; delete or re-point them first",
                    users.join(", ")
                )));
            }
            Ok(Outcome { changes: vec![Change::DeleteService(id.clone())], entity: None })
        }

        Op::CreateRoute(r) => {
            let mut r = r.clone();
            adopt_legacy_backend(&mut r)?;
            r.meta = Some(create_meta(r.meta.as_ref(), now, index)?);
            check_route(state, &r)?;
            unique_id(state.route(id_of(&r.meta)).is_some(), EntityKind::Route, id_of(&r.meta))?;
            unique_name(state.route_id_named(&r.name), None, EntityKind::Route, &r.name)?;
            Ok(put(Change::PutRoute(r.clone()), &r))
        }
        Op::UpdateRoute(r) => {
            let existing =
                state.route(id_of(&r.meta)).ok_or_else(|| ApplyError::not_found(EntityKind::Route, id_of(&r.meta)))?;
            let mut r = r.clone();
            adopt_legacy_backend(&mut r)?;
            r.meta = Some(update_meta(existing.meta.as_ref(), now, index));
            check_route(state, &r)?;
            unique_name(state.route_id_named(&r.name), Some(id_of(&r.meta)), EntityKind::Route, &r.name)?;
            Ok(put(Change::PutRoute(r.clone()), &r))
        }
        Op::DeleteRoute(id) => {
            state.route(id).ok_or_else(|| ApplyError::not_found(EntityKind::Route, id))?;
            Ok(Outcome { changes: vec![Change::DeleteRoute(id.clone())], entity: None })
        }

        Op::CreateConsumer(c) => {
            let mut c = c.clone();
            c.meta = Some(create_meta(c.meta.as_ref(), now, index)?);
            validate::name("name", &c.name)?;
            unique_id(state.consumer(id_of(&c.meta)).is_some(), EntityKind::Consumer, id_of(&c.meta))?;
            unique_name(state.consumer_id_named(&c.name), None, EntityKind::Consumer, &c.name)?;
            Ok(put(Change::PutConsumer(c.clone()), &c))
        }
        Op::UpdateConsumer(c) => {
            let existing = state
                .consumer(id_of(&c.meta))
                .ok_or_else(|| ApplyError::not_found(EntityKind::Consumer, id_of(&c.meta)))?;
            let mut c = c.clone();
            c.meta = Some(update_meta(existing.meta.as_ref(), now, index));
            validate::name("name", &c.name)?;
            unique_name(state.consumer_id_named(&c.name), Some(id_of(&c.meta)), EntityKind::Consumer, &c.name)?;
            Ok(put(Change::PutConsumer(c.clone()), &c))
        }
        Op::DeleteConsumer(id) => {
            state.consumer(id).ok_or_else(|| ApplyError::not_found(EntityKind::Consumer, id))?;
            // Keys cannot outlive their consumer: delete them in the same command.
            let mut changes: Vec<Change> = state
                .api_keys()
                .filter(|k| &k.consumer_id == id)
                .map(|k| Change::DeleteApiKey(id_of(&k.meta).to_string()))
                .collect();
            changes.push(Change::DeleteConsumer(id.clone()));
            Ok(Outcome { changes, entity: None })
        }

        Op::CreateApiKey(k) => {
            let mut k = k.clone();
            k.meta = Some(create_meta(k.meta.as_ref(), now, index)?);
            check_api_key(state, &k)?;
            unique_id(state.api_key(id_of(&k.meta)).is_some(), EntityKind::ApiKey, id_of(&k.meta))?;
            Ok(put(Change::PutApiKey(k.clone()), &k))
        }
        Op::UpdateApiKey(k) => {
            let existing = state
                .api_key(id_of(&k.meta))
                .ok_or_else(|| ApplyError::not_found(EntityKind::ApiKey, id_of(&k.meta)))?;
            let mut k = k.clone();
            k.meta = Some(update_meta(existing.meta.as_ref(), now, index));
            if k.secret_sha256 != existing.secret_sha256 || k.consumer_id != existing.consumer_id {
                return Err(ApplyError::invalid(
                    "api_key",
                    "the secret and the owning consumer of a key cannot change; create a new key instead",
                ));
            }
            check_api_key(state, &k)?;
            Ok(put(Change::PutApiKey(k.clone()), &k))
        }
        Op::DeleteApiKey(id) => {
            state.api_key(id).ok_or_else(|| ApplyError::not_found(EntityKind::ApiKey, id))?;
            Ok(Outcome { changes: vec![Change::DeleteApiKey(id.clone())], entity: None })
        }

        Op::CreateJoinToken(t) => {
            let mut t = t.clone();
            t.meta = Some(create_meta(t.meta.as_ref(), now, index)?);
            unique_id(state.join_token(id_of(&t.meta)).is_some(), EntityKind::JoinToken, id_of(&t.meta))?;
            if t.secret_sha256.len() != 32 {
                return Err(ApplyError::invalid("secret_sha256", "must be a 32-byte SHA-256 digest"));
            }
            if t.expires_at_ms <= now {
                return Err(ApplyError::invalid("expires_at_ms", "a join token must expire in the future"));
            }
            Ok(put(Change::PutJoinToken(t.clone()), &t))
        }
        Op::DeleteJoinToken(id) => {
            state.join_token(id).ok_or_else(|| ApplyError::not_found(EntityKind::JoinToken, id))?;
            Ok(Outcome { changes: vec![Change::DeleteJoinToken(id.clone())], entity: None })
        }

        Op::CreateProvider(p) => {
            let mut p = p.clone();
            p.meta = Some(create_meta(p.meta.as_ref(), now, index)?);
            validate_ai::provider(&p)?;
            unique_id(state.provider(id_of(&p.meta)).is_some(), EntityKind::Provider, id_of(&p.meta))?;
            unique_name(state.provider_id_named(&p.name), None, EntityKind::Provider, &p.name)?;
            Ok(put(Change::PutProvider(p.clone()), &p))
        }
        Op::UpdateProvider(p) => {
            let existing = state
                .provider(id_of(&p.meta))
                .ok_or_else(|| ApplyError::not_found(EntityKind::Provider, id_of(&p.meta)))?;
            let mut p = p.clone();
            p.meta = Some(update_meta(existing.meta.as_ref(), now, index));
            validate_ai::provider(&p)?;
            unique_name(state.provider_id_named(&p.name), Some(id_of(&p.meta)), EntityKind::Provider, &p.name)?;
            Ok(put(Change::PutProvider(p.clone()), &p))
        }
        Op::DeleteProvider(id) => {
            state.provider(id).ok_or_else(|| ApplyError::not_found(EntityKind::Provider, id))?;
            let users: Vec<&str> = state
                .model_aliases()
                .filter(|a| a.targets.iter().any(|t| &t.provider_id == id))
                .map(|a| a.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(ApplyError::FailedPrecondition(format!(
                    "provider {id} is used by model alias(es) {}; delete or re-point them first",
                    users.join(", ")
                )));
            }
            Ok(Outcome { changes: vec![Change::DeleteProvider(id.clone())], entity: None })
        }

        Op::CreateModelAlias(a) => {
            let mut a = a.clone();
            a.meta = Some(create_meta(a.meta.as_ref(), now, index)?);
            validate_ai::model_alias(state, &a)?;
            unique_id(state.model_alias(id_of(&a.meta)).is_some(), EntityKind::ModelAlias, id_of(&a.meta))?;
            unique_name(state.model_alias_id_named(&a.name), None, EntityKind::ModelAlias, &a.name)?;
            Ok(put(Change::PutModelAlias(a.clone()), &a))
        }
        Op::UpdateModelAlias(a) => {
            let existing = state
                .model_alias(id_of(&a.meta))
                .ok_or_else(|| ApplyError::not_found(EntityKind::ModelAlias, id_of(&a.meta)))?;
            let mut a = a.clone();
            a.meta = Some(update_meta(existing.meta.as_ref(), now, index));
            validate_ai::model_alias(state, &a)?;
            unique_name(state.model_alias_id_named(&a.name), Some(id_of(&a.meta)), EntityKind::ModelAlias, &a.name)?;
            Ok(put(Change::PutModelAlias(a.clone()), &a))
        }
        Op::DeleteModelAlias(id) => {
            state.model_alias(id).ok_or_else(|| ApplyError::not_found(EntityKind::ModelAlias, id))?;
            Ok(Outcome { changes: vec![Change::DeleteModelAlias(id.clone())], entity: None })
        }

        Op::PutModelPrice(p) => {
            validate_ai::model_price(p)?;
            // Upsert by name: an existing entry keeps its id and creation time.
            let mut p = p.clone();
            p.meta = Some(match state.model_price_id_named(&p.name).and_then(|id| state.model_price(id)) {
                Some(existing) => update_meta(existing.meta.as_ref(), now, index),
                None => {
                    let meta = create_meta(p.meta.as_ref(), now, index)?;
                    unique_id(state.model_price(&meta.id).is_some(), EntityKind::ModelPrice, &meta.id)?;
                    meta
                }
            });
            Ok(put(Change::PutModelPrice(p.clone()), &p))
        }
        Op::DeleteModelPrice(id) => {
            state.model_price(id).ok_or_else(|| ApplyError::not_found(EntityKind::ModelPrice, id))?;
            Ok(Outcome { changes: vec![Change::DeleteModelPrice(id.clone())], entity: None })
        }
    }
}

fn put<M: Message>(change: Change, entity: &M) -> Outcome {
    Outcome { changes: vec![change], entity: Some(entity.encode_to_vec()) }
}

fn id_of(meta: &Option<Meta>) -> &str {
    meta.as_ref().map_or("", |m| m.id.as_str())
}

fn create_meta(meta: Option<&Meta>, now: i64, index: u64) -> Result<Meta, ApplyError> {
    let id = meta.map(|m| m.id.clone()).unwrap_or_default();
    validate::id("meta.id", &id)?;
    Ok(Meta { id, created_at_ms: now, updated_at_ms: now, revision: index })
}

/// Keeps identity and creation time from the stored entity, whatever the caller sent.
fn update_meta(existing: Option<&Meta>, now: i64, index: u64) -> Meta {
    let existing = existing.cloned().unwrap_or_default();
    Meta { updated_at_ms: now, revision: index, ..existing }
}

fn unique_id(taken: bool, kind: EntityKind, id: &str) -> Result<(), ApplyError> {
    if taken {
        return Err(ApplyError::AlreadyExists { kind, name: id.to_string() });
    }
    Ok(())
}

fn unique_name(holder: Option<&str>, me: Option<&str>, kind: EntityKind, name: &str) -> Result<(), ApplyError> {
    match holder {
        Some(holder) if Some(holder) != me => Err(ApplyError::AlreadyExists { kind, name: name.to_string() }),
        _ => Ok(()),
    }
}

fn check_service(s: &Service) -> Result<(), ApplyError> {
    validate::name("name", &s.name)?;
    if s.version.len() > validate::MAX_NAME_LEN {
        return Err(ApplyError::invalid("version", "must be at most 64 characters"));
    }
    validate::targets(&s.targets)?;
    crate::validate_policy::service(s)
}

fn check_route(state: &GatewayState, r: &Route) -> Result<(), ApplyError> {
    validate::name("name", &r.name)?;
    validate::route_hosts(&r.hosts)?;
    validate::methods(&r.methods)?;
    validate::route_paths(&r.paths)?;
    validate::auth(r.auth)?;
    crate::validate_policy::route(r)?;
    match &r.backend {
        Some(Backend::Ai(_)) => Ok(()),
        Some(Backend::Service(s)) if s.service_id.is_empty() => {
            Err(ApplyError::invalid("backend.service.service_id", "a route must name the service it forwards to"))
        }
        Some(Backend::Service(s)) => match state.service(&s.service_id) {
            Some(_) => Ok(()),
            None => Err(ApplyError::not_found(EntityKind::Service, &s.service_id)),
        },
        None => Err(ApplyError::invalid("backend", "a route must name its backend: a service, or the AI gateway")),
    }
}

/// Routes from clients and log entries of the previous format name their
/// backend in `service_id`/`ai_gateway`; they apply exactly as they did.
fn adopt_legacy_backend(r: &mut Route) -> Result<(), ApplyError> {
    r.adopt_legacy_backend().map_err(|reason| ApplyError::invalid("service_id", reason))
}

fn check_api_key(state: &GatewayState, k: &ApiKey) -> Result<(), ApplyError> {
    if state.consumer(&k.consumer_id).is_none() {
        return Err(ApplyError::not_found(EntityKind::Consumer, &k.consumer_id));
    }
    if k.secret_sha256.len() != 32 {
        return Err(ApplyError::invalid("secret_sha256", "must be a 32-byte SHA-256 digest"));
    }
    if k.expires_at_ms < 0 {
        return Err(ApplyError::invalid("expires_at_ms", "must be 0 (never) or a Unix time in milliseconds"));
    }
    if k.name.len() > validate::MAX_NAME_LEN {
        return Err(ApplyError::invalid("name", "must be at most 64 characters"));
    }
    validate_ai::allowed_models(&k.allowed_models)
}
