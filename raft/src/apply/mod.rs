//! The deterministic heart of the state machine: a pure function from
//! (state, command, log index) to a list of changes or a typed rejection.
//! No clocks, no randomness, no I/O: ids and times come inside the command.
//!
//! Every entity goes through the same create, update, upsert and delete
//! paths below (which the registry in `entities.rs` picks for each command);
//! what is particular to one entity is its [`Rules`], one file per family.

mod access;
mod ai;
mod audit;
mod cluster;
mod consumers;
mod governance;
mod limits;
mod overlap;
mod proxy;
mod publish;
mod quota;
mod self_service;
mod usage;

pub use access::Actor;
pub use audit::redacted;
pub use governance::{
    MAX_OPENAPI_BYTES, is_live as version_is_live, service_is_published, state_name as version_state_name,
};

pub use self_service::{MAX_SELF_SERVICE_KEYS, consumer_actor};
pub use usage::{DIMENSIONS as USAGE_DIMENSIONS, counter_id as usage_counter_id};

use std::sync::Arc;

use tollgate_proto::config::v1::Meta;
use tollgate_proto::raft::v1::Command;
use tollgate_proto::raft::v1::command::Op;
use tollgate_storage::{Batch, Cf};

use crate::entities::{AnyEntity, EntityKind};
use crate::error::{ApplyError, RaftNodeError};
use crate::keys;
use crate::registry::Entity;
use crate::state::GatewayState;
use crate::{entities, validate};

/// One write to the replicated state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put(AnyEntity),
    Delete(EntityKind, Arc<str>),
}

impl Change {
    fn put<E: Entity>(entity: E) -> Change {
        Change::Put(E::wrap(Arc::new(entity)))
    }

    pub(crate) fn delete<E: Entity>(id: &str) -> Change {
        Change::Delete(E::KIND, Arc::from(id))
    }

    /// Adds this change to the `state` family writes of `batch`.
    pub(crate) fn stage(&self, batch: &mut Batch) {
        match self {
            Change::Put(entity) => {
                batch.put(Cf::State, &keys::entity_key(entity.kind(), entity.id()), &entity.encode_to_vec())
            }
            Change::Delete(kind, id) => batch.delete(Cf::State, &keys::entity_key(*kind, id)),
        }
    }
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
    let op = cmd.op.as_ref().ok_or_else(|| ApplyError::invalid("op", "the command carries no operation"))?;
    let actor = Actor::resolve(cmd, state)?;
    let now = cmd.proposed_at_ms;
    let mut outcome = match op {
        Op::ApplyConfig(bundle) => apply_bundle(state, bundle, &actor, now, index)?,
        _ => {
            access::check(state, &actor, op)?;
            let outcome = entities::dispatch(state, op, now, index)?;
            if touches_governed(&outcome.changes) {
                publish::check(state, &state.staged(&outcome.changes, index), &outcome.changes)?;
            }
            outcome
        }
    };
    if audit::is_audited(op) {
        let entry = audit::entry(state, cmd, &actor, &outcome.changes, index);
        outcome.changes.push(Change::put(entry));
    }
    Ok(outcome)
}

/// What proposing `cmd` would do, without proposing it: this version's
/// admission rules, then `apply` on `state` as the next entry.
pub fn dry_run(state: &GatewayState, cmd: &Command) -> Result<Outcome, ApplyError> {
    if let Some(op) = &cmd.op {
        crate::admit::admit(op)?;
    }
    apply(state, cmd, state.applied_index() + 1)
}

/// Whether publish policies may care about `changes` (lease and usage
/// commands, most of the log, never do).
fn touches_governed(changes: &[Change]) -> bool {
    changes.iter().any(|c| {
        let kind = match c {
            Change::Put(e) => e.kind(),
            Change::Delete(kind, _) => *kind,
        };
        matches!(kind, EntityKind::Service | EntityKind::Route | EntityKind::Limit | EntityKind::ApiVersion)
    })
}

/// A declarative configuration: every operation in order on the state the
/// earlier ones left, all or nothing; publish policies are checked once, on
/// the end result, so the order within the document does not matter to them.
fn apply_bundle(
    state: &GatewayState,
    bundle: &tollgate_proto::raft::v1::ConfigBundle,
    actor: &Actor,
    now: i64,
    index: u64,
) -> Result<Outcome, ApplyError> {
    access::check(state, actor, &Op::ApplyConfig(Default::default()))?;
    let mut staged = state.clone();
    let mut changes = Vec::new();
    for (i, inner) in bundle.ops.iter().enumerate() {
        let op = inner.op.as_ref().ok_or_else(|| ApplyError::invalid(format!("ops[{i}]"), "carries no operation"))?;
        if !bundle_may_carry(op) {
            return Err(ApplyError::invalid(format!("ops[{i}]"), "a configuration changes only configured entities"));
        }
        let outcome = entities::dispatch(&staged, op, now, index).map_err(|e| in_bundle(i, op, e))?;
        for change in &outcome.changes {
            staged.commit(change, index);
        }
        changes.extend(outcome.changes);
    }
    publish::check(state, &staged, &changes)?;
    Ok(Outcome { changes, entity: None })
}

fn bundle_may_carry(op: &Op) -> bool {
    !matches!(
        op,
        Op::ApplyConfig(_)
            | Op::Lease(_)
            | Op::Usage(_)
            | Op::RecordDenied(_)
            | Op::PruneAudit(_)
            | Op::CreateJoinToken(_)
            | Op::DeleteJoinToken(_)
            | Op::CreateAdminToken(_)
            | Op::UpdateAdminToken(_)
            | Op::DeleteAdminToken(_)
            | Op::CreateApiKey(_)
            | Op::UpdateApiKey(_)
            | Op::DeleteApiKey(_)
    )
}

/// Names the operation of the bundle that failed.
fn in_bundle(i: usize, op: &Op, error: ApplyError) -> ApplyError {
    let context = format!("operation {} ({})", i + 1, entities::summarize(op));
    match error {
        ApplyError::InvalidArgument { field, reason } => {
            ApplyError::InvalidArgument { field, reason: format!("{reason} (in {context})") }
        }
        ApplyError::FailedPrecondition(m) => ApplyError::FailedPrecondition(format!("{context}: {m}")),
        ApplyError::PermissionDenied(m) => ApplyError::PermissionDenied(format!("{context}: {m}")),
        // Within a document, a missing or taken name is the document's error.
        other @ (ApplyError::NotFound { .. } | ApplyError::AlreadyExists { .. }) => {
            ApplyError::invalid(format!("ops[{i}]"), format!("{other} (in {context})"))
        }
    }
}

/// Commands that change no admin-declared entity: quota leases and usage
/// batches (the registry sends every other `Op` to its entity's path).
pub(crate) fn apply_system_op(
    state: &GatewayState,
    op: &tollgate_proto::raft::v1::command::Op,
    now: i64,
    index: u64,
) -> Result<Outcome, ApplyError> {
    use tollgate_proto::raft::v1::command::Op;
    match op {
        Op::Lease(request) => quota::lease(state, request, now, index),
        Op::Usage(batch) => usage::fold(state, batch, now, index),
        Op::RecordDenied(entry) => audit::record_denied(entry, now, index),
        Op::PruneAudit(before_ms) => audit::prune(state, *before_ms),
        _ => Err(ApplyError::invalid("op", "an entity operation the registry does not know")),
    }
}

pub(crate) fn summarize_system_op(op: &tollgate_proto::raft::v1::command::Op) -> String {
    use tollgate_proto::raft::v1::command::Op;
    match op {
        Op::Lease(request) => format!("lease for node {} ({} asks)", request.node_id, request.asks.len()),
        Op::Usage(batch) => format!("usage of node {} records {}..={}", batch.node_id, batch.first_seq, batch.last_seq),
        Op::RecordDenied(entry) => format!("refused {} by {}", entry.rpc, entry.actor),
        Op::PruneAudit(before_ms) => format!("prune audit entries before {before_ms}"),
        Op::ApplyConfig(bundle) => format!("apply configuration ({} operations)", bundle.ops.len()),
        _ => "unknown operation".to_string(),
    }
}

/// The kinds of change a command can make to one entity (a delete aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    /// Create, or replace the entity with the same unique name.
    Upsert,
}

impl Action {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Upsert => "set",
        }
    }
}

/// What is particular to one entity in the generic paths. Each check runs on
/// the entity as it will be stored (meta already set), and a failed check
/// rejects the whole command.
pub(crate) trait Rules: Entity {
    /// Brings a message of a previous format into the current one: applied
    /// to every create and update, and to every stored record as it loads.
    fn upgrade(&mut self) -> Result<(), ApplyError> {
        Ok(())
    }

    /// The fields, and the entities this one refers to. Ids and unique
    /// names are checked by the generic path, after this.
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError>;

    /// What an update may not change, compared with the stored entity;
    /// checked before `validate`.
    fn check_update(&self, _existing: &Self) -> Result<(), ApplyError> {
        Ok(())
    }

    /// The changes a delete of `id` makes besides removing the entity
    /// (first), or why it is refused. Runs once `id` is known to exist.
    fn on_delete(_state: &GatewayState, _id: &str) -> Result<Vec<Change>, ApplyError> {
        Ok(Vec::new())
    }

    /// How a command summary names the entity: its name, else its id.
    fn label(&self, _action: Action) -> String {
        self.name().unwrap_or(self.id()).to_string()
    }

    /// Values, valid and not, that the property test builds commands from
    /// (`tests.rs`): ids from `tests::arbitrary_id`, names from
    /// `tests::arbitrary_name`, so that commands collide.
    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self>;
}

pub(crate) fn create<E: Rules>(state: &GatewayState, input: &E, now: i64, index: u64) -> Result<Outcome, ApplyError> {
    let mut entity = input.clone();
    entity.upgrade()?;
    *entity.meta_mut() = Some(create_meta(entity.meta(), now, index)?);
    entity.validate(state)?;
    let table = state.table::<E>();
    unique_id(table.get(entity.id()).is_some(), E::KIND, entity.id())?;
    if let Some(name) = entity.name() {
        unique_name(table.id_of_name(name), None, E::KIND, name)?;
    }
    Ok(put(entity))
}

pub(crate) fn update<E: Rules>(state: &GatewayState, input: &E, now: i64, index: u64) -> Result<Outcome, ApplyError> {
    let table = state.table::<E>();
    let existing = table.get(input.id()).ok_or_else(|| ApplyError::not_found(E::KIND, input.id()))?;
    let mut entity = input.clone();
    entity.upgrade()?;
    *entity.meta_mut() = Some(update_meta(existing.meta(), now, index));
    entity.check_update(existing)?;
    entity.validate(state)?;
    if let Some(name) = entity.name() {
        unique_name(table.id_of_name(name), Some(entity.id()), E::KIND, name)?;
    }
    Ok(put(entity))
}

/// Creates the entity, or updates the one with the same unique name, which
/// keeps its id and creation time whatever the command says.
pub(crate) fn upsert<E: Rules>(state: &GatewayState, input: &E, now: i64, index: u64) -> Result<Outcome, ApplyError> {
    let mut entity = input.clone();
    entity.upgrade()?;
    entity.validate(state)?;
    let table = state.table::<E>();
    let existing = entity.name().and_then(|name| table.id_of_name(name)).and_then(|id| table.get(id));
    let meta = match existing {
        Some(existing) => update_meta(existing.meta(), now, index),
        None => {
            let meta = create_meta(entity.meta(), now, index)?;
            unique_id(table.get(&meta.id).is_some(), E::KIND, &meta.id)?;
            meta
        }
    };
    *entity.meta_mut() = Some(meta);
    Ok(put(entity))
}

pub(crate) fn delete<E: Rules>(state: &GatewayState, id: &str) -> Result<Outcome, ApplyError> {
    state.table::<E>().get(id).ok_or_else(|| ApplyError::not_found(E::KIND, id))?;
    let mut changes = E::on_delete(state, id)?;
    changes.push(Change::delete::<E>(id));
    Ok(Outcome { changes, entity: None })
}

/// Decodes a `state` family record of `E` into the current form. It was
/// valid when stored, so an upgrade that fails means the data is corrupt.
pub(crate) fn load<E: Rules>(value: &[u8]) -> Result<E, RaftNodeError> {
    let mut entity = E::decode(value).map_err(|e| RaftNodeError::Corrupt { what: "entity", detail: e.to_string() })?;
    entity.upgrade().map_err(|e| RaftNodeError::Corrupt { what: E::KIND.shown(), detail: e.to_string() })?;
    Ok(entity)
}

fn put<E: Entity>(entity: E) -> Outcome {
    let encoded = entity.encode_to_vec();
    Outcome { changes: vec![Change::put(entity)], entity: Some(encoded) }
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

pub(crate) fn unique_id(taken: bool, kind: EntityKind, id: &str) -> Result<(), ApplyError> {
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
