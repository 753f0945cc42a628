//! The generic entity RPCs of `AdminService` (`PutEntity`, `GetEntity`,
//! `ListEntities`, `DeleteEntity`): any kind the registry declares
//! (`raft/src/entities.rs`), named by kind and carried as protobuf bytes,
//! so that a new entity needs no admin code of its own.
//!
//! A write stores what it is sent, as the typed RPCs of the kinds without
//! secrets do: a fresh id on create, the target's id on update, and the
//! rules of `apply` for everything else. Kinds the registry marks `typed`
//! (their RPCs seal, generate or redact secrets) are refused, reads
//! included: a generic read cannot know what to redact.

use tollgate_proto::admin::v1::{
    DeleteEntityRequest, DeleteResponse, GetEntityRequest, ListEntitiesRequest, ListEntitiesResponse, PutEntityRequest,
    StoredEntity,
};
use tollgate_proto::config::v1::Meta;
use tollgate_raft::{Action, AnyEntity, EntityKind, RaftNode};
use tonic::{Response, Status};

use super::propose;
use super::service::{fresh_meta, required, update_target};
use crate::proxy::ProxyContext;

/// What the typed RPCs normalise on the way in (service target hosts are
/// lower-cased), done the same here. The typed RPCs also resolve names to
/// ids in places (a model alias's providers); the generic path takes ids
/// only, and `apply` refuses a name where an id belongs.
fn normalize(entity: &mut AnyEntity) {
    if let AnyEntity::Service(service) = entity {
        super::service::normalize_service(std::sync::Arc::make_mut(service));
    }
}

/// Creates or replaces an entity; returns it as stored.
pub(super) async fn put(
    raft: &RaftNode,
    proxy: &ProxyContext,
    request: PutEntityRequest,
) -> Result<StoredEntity, Status> {
    let kind = generic_kind(&request.kind)?;
    let mut entity = kind
        .decode(&request.entity)
        .map_err(|e| Status::invalid_argument(format!("the entity is not a {kind} ({}): {e}", kind.message_name())))?;
    normalize(&mut entity);
    let action = if request.create {
        entity.set_meta(fresh_meta().unwrap_or_default());
        create_action(raft, kind, &entity).await?
    } else {
        let key = match request.id_or_name {
            key if !key.is_empty() => key,
            _ => update_target(&entity.meta().cloned(), entity.name().unwrap_or_default())?,
        };
        let state = propose::read(raft, false).await?;
        let existing = state.entity(kind, &key).ok_or_else(|| not_found(kind, &key))?;
        entity.set_meta(Meta { id: existing.id().to_string(), ..Default::default() });
        update_action(kind, &entity, &existing)?
    };
    let op = entity.into_op(action).ok_or_else(|| Status::internal(format!("no {action:?} command for {kind}")))?;
    let applied = propose::commit(raft, proxy, op).await?;
    let bytes = applied.entity.ok_or_else(|| Status::internal("the state machine returned no entity"))?;
    Ok(stored(kind, bytes))
}

pub(super) async fn get(raft: &RaftNode, request: GetEntityRequest) -> Result<StoredEntity, Status> {
    let GetEntityRequest { kind, id_or_name, stale } = request;
    let kind = generic_kind(&kind)?;
    required("id_or_name", &id_or_name)?;
    let state = propose::read(raft, stale).await?;
    let entity = state.entity(kind, &id_or_name).ok_or_else(|| not_found(kind, &id_or_name))?;
    Ok(stored(kind, entity.encode_to_vec()))
}

pub(super) async fn list(raft: &RaftNode, request: ListEntitiesRequest) -> Result<ListEntitiesResponse, Status> {
    let kind = generic_kind(&request.kind)?;
    let state = propose::read(raft, request.stale).await?;
    let mut entities = state.entities(kind);
    // Stable: kinds without names stay in id order.
    entities.sort_by(|a, b| a.name().cmp(&b.name()));
    Ok(ListEntitiesResponse {
        kind: kind.shown().to_string(),
        type_name: kind.message_name().to_string(),
        entities: entities.iter().map(AnyEntity::encode_to_vec).collect(),
    })
}

pub(super) async fn delete(
    raft: &RaftNode,
    proxy: &ProxyContext,
    request: DeleteEntityRequest,
) -> Result<Response<DeleteResponse>, Status> {
    let DeleteEntityRequest { kind, id_or_name } = request;
    let kind = generic_kind(&kind)?;
    required("id_or_name", &id_or_name)?;
    let state = propose::read(raft, false).await?;
    let id = state.entity(kind, &id_or_name).ok_or_else(|| not_found(kind, &id_or_name))?.id().to_string();
    let op = kind.delete_op(id).ok_or_else(|| Status::failed_precondition(format!("a {kind} cannot be deleted")))?;
    propose::delete(raft, proxy, op).await
}

/// The kind a request names, if the generic surface serves it.
fn generic_kind(name: &str) -> Result<EntityKind, Status> {
    let kind = EntityKind::from_name(name).ok_or_else(|| Status::invalid_argument(EntityKind::unknown(name)))?;
    match kind.typed_command() {
        None => Ok(kind),
        Some(command) => Err(Status::failed_precondition(format!(
            "{kind}s are read and written with `tollgate ctl {command}` (its RPCs seal, generate or redact \
             their secrets); the generic entity commands do not serve them"
        ))),
    }
}

/// A create of a kind with a create command is that; of a kind whose only
/// write is an upsert (model prices), an upsert that must not replace.
async fn create_action(raft: &RaftNode, kind: EntityKind, entity: &AnyEntity) -> Result<Action, Status> {
    if kind.supports(Action::Create) {
        return Ok(Action::Create);
    }
    if !kind.supports(Action::Upsert) {
        return Err(Status::failed_precondition(format!("a {kind} cannot be created through this API")));
    }
    // Checked against a linearizable read; a create racing another create
    // of the same name may still replace it, as the typed Put RPC always does.
    if let Some(name) = entity.name() {
        required("name", name)?;
        let state = propose::read(raft, false).await?;
        if state.entity(kind, name).is_some_and(|e| e.name() == Some(name)) {
            return Err(Status::already_exists(format!(
                "a {kind} named {name:?} already exists; replace it with `tollgate ctl update {} {name} -f <file>`",
                kind.arg_name()
            )));
        }
    }
    Ok(Action::Upsert)
}

fn update_action(kind: EntityKind, entity: &AnyEntity, existing: &AnyEntity) -> Result<Action, Status> {
    if kind.supports(Action::Update) {
        return Ok(Action::Update);
    }
    if !kind.supports(Action::Upsert) {
        return Err(Status::failed_precondition(format!("a {kind} cannot be changed, only created and deleted")));
    }
    // An upsert finds its target by name: another name would create another entity.
    if entity.name() != existing.name() {
        return Err(Status::invalid_argument(format!(
            "a {kind} is replaced by its name, which cannot change: send name {:?}, or create a new one",
            existing.name().unwrap_or_default()
        )));
    }
    Ok(Action::Upsert)
}

fn stored(kind: EntityKind, entity: Vec<u8>) -> StoredEntity {
    StoredEntity { kind: kind.shown().to_string(), type_name: kind.message_name().to_string(), entity }
}

fn not_found(kind: EntityKind, key: &str) -> Status {
    Status::not_found(format!("{kind} {key:?} does not exist; list them with `tollgate ctl list {}`", kind.arg_name()))
}
