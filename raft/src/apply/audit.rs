//! The audit trail (DESIGN §7): every applied admin change is recorded by
//! `apply` itself, in the same command, so the record and the change commit
//! together on every replica; refused attempts come as `RecordDenied`.
//! Images are the entities with their secrets (hashes and sealed values)
//! removed.

use std::sync::Arc;

use tollgate_proto::config::v1::{AuditChange, AuditEntry, AuditImage, Meta};
use tollgate_proto::raft::v1::Command;
use tollgate_proto::raft::v1::command::Op;

use super::{Change, Outcome};
use crate::entities::AnyEntity;
use crate::error::ApplyError;
use crate::registry::Entity;
use crate::state::GatewayState;

/// Entries one prune command deletes at most, so that it stays small.
const PRUNE_BATCH: usize = 10_000;

/// Whether `op` is an admin change the trail records (the cluster's own
/// records are not, and a refused attempt is its own entry).
pub(crate) fn is_audited(op: &Op) -> bool {
    !matches!(op, Op::Lease(_) | Op::Usage(_) | Op::RecordDenied(_) | Op::PruneAudit(_))
}

pub(crate) fn id_of(index: u64) -> String {
    format!("{index:020}")
}

/// The entry for `cmd`, which made `changes` to `before` at `index`.
pub(crate) fn entry(
    before: &GatewayState,
    cmd: &Command,
    actor: &super::access::Actor,
    changes: &[Change],
    index: u64,
) -> AuditEntry {
    let summary = match &cmd.op {
        Some(Op::ApplyConfig(bundle)) => format!("apply configuration ({} operations)", bundle.ops.len()),
        Some(op) => crate::entities::summarize(op),
        None => String::new(),
    };
    AuditEntry {
        meta: Some(meta(cmd.proposed_at_ms, index)),
        at_ms: cmd.proposed_at_ms,
        actor: actor.name.to_string(),
        actor_role: actor.role as i32,
        actor_team: actor.team.to_string(),
        rpc: cmd.rpc.clone(),
        summary,
        changes: changes.iter().map(|c| change(before, c)).collect(),
        denied: false,
        reason: String::new(),
    }
}

fn meta(now: i64, index: u64) -> Meta {
    Meta { id: id_of(index), created_at_ms: now, updated_at_ms: now, revision: index }
}

fn change(before: &GatewayState, change: &Change) -> AuditChange {
    let (kind, id, after) = match change {
        Change::Put(entity) => (entity.kind(), entity.id().to_string(), Some(entity)),
        Change::Delete(kind, id) => (*kind, id.to_string(), None),
    };
    let previous = before.entity(kind, &id).filter(|e| e.id() == id);
    let name = after.and_then(|e| e.name()).or_else(|| previous.as_ref().and_then(|e| e.name())).unwrap_or("");
    AuditChange {
        kind: kind.shown().to_string(),
        entity_id: id.clone(),
        entity_name: name.to_string(),
        before: previous.as_ref().map(image),
        after: after.map(image),
    }
}

fn image(entity: &AnyEntity) -> AuditImage {
    AuditImage { type_name: entity.kind().message_name().to_string(), entity: redacted(entity).encode_to_vec() }
}

/// The entity without its secrets: key and token hashes, sealed values and
/// any plaintext a command may still carry. Every kind is named, so a new
/// kind says what it hides.
pub fn redacted(entity: &AnyEntity) -> AnyEntity {
    match entity {
        AnyEntity::ApiKey(k) => AnyEntity::ApiKey(Arc::new(tollgate_proto::config::v1::ApiKey {
            secret_sha256: Vec::new(),
            ..(**k).clone()
        })),
        AnyEntity::AdminToken(t) => AnyEntity::AdminToken(Arc::new(tollgate_proto::config::v1::AdminToken {
            secret_sha256: Vec::new(),
            ..(**t).clone()
        })),
        AnyEntity::JoinToken(t) => AnyEntity::JoinToken(Arc::new(tollgate_proto::config::v1::JoinToken {
            secret_sha256: Vec::new(),
            ..(**t).clone()
        })),
        AnyEntity::Provider(p) => {
            let mut p = (**p).clone();
            for c in &mut p.credentials {
                c.sealed_secret.clear();
                c.secret.clear();
            }
            for h in &mut p.headers {
                h.sealed_value.clear();
                h.value.clear();
            }
            AnyEntity::Provider(Arc::new(p))
        }
        AnyEntity::Route(r) => {
            let mut r = (**r).clone();
            if let Some(jwt) = &mut r.jwt {
                jwt.sealed_hs_secret.clear();
                jwt.hs_secret.clear();
            }
            AnyEntity::Route(Arc::new(r))
        }
        // An OpenAPI document may be a megabyte: the trail says which one
        // it was (its digest), not the whole document twice per change.
        AnyEntity::ApiVersion(v) if !v.openapi.is_empty() => {
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(v.openapi.as_bytes()));
            let openapi = format!("sha256:{digest} ({} bytes)", v.openapi.len());
            AnyEntity::ApiVersion(Arc::new(tollgate_proto::config::v1::ApiVersion { openapi, ..(**v).clone() }))
        }
        AnyEntity::Service(_)
        | AnyEntity::Consumer(_)
        | AnyEntity::ModelAlias(_)
        | AnyEntity::ModelPrice(_)
        | AnyEntity::Limit(_)
        | AnyEntity::QuotaWindow(_)
        | AnyEntity::UsageCounter(_)
        | AnyEntity::UsageWatermark(_)
        | AnyEntity::Team(_)
        | AnyEntity::ApiVersion(_)
        | AnyEntity::Subscription(_)
        | AnyEntity::PublishPolicy(_)
        | AnyEntity::AuditEntry(_) => entity.clone(),
    }
}

/// A refused attempt, as the node that refused it described it.
pub(crate) fn record_denied(input: &AuditEntry, now: i64, index: u64) -> Result<Outcome, ApplyError> {
    if !input.changes.is_empty() {
        return Err(ApplyError::invalid("record_denied.changes", "a refused attempt changed nothing"));
    }
    for (field, text) in [("actor", &input.actor), ("rpc", &input.rpc), ("summary", &input.summary)] {
        if text.len() > 256 {
            return Err(ApplyError::invalid(format!("record_denied.{field}"), "must be at most 256 bytes"));
        }
    }
    if input.reason.len() > 2048 {
        return Err(ApplyError::invalid("record_denied.reason", "must be at most 2048 bytes"));
    }
    let entry = AuditEntry { meta: Some(meta(now, index)), at_ms: now, denied: true, ..input.clone() };
    Ok(Outcome { changes: vec![Change::put(entry)], entity: None })
}

/// Deletes the oldest entries written before `before_ms`. Ids are log
/// indexes, so the table is in write order; it stops at the first entry
/// that is new enough (proposers' clocks may disagree a little, which only
/// keeps a few entries one prune longer).
pub(crate) fn prune(state: &GatewayState, before_ms: i64) -> Result<Outcome, ApplyError> {
    let changes = state
        .audit_entries()
        .take_while(|e| e.at_ms < before_ms)
        .take(PRUNE_BATCH)
        .map(|e| Change::delete::<AuditEntry>(e.id()))
        .collect();
    Ok(Outcome { changes, entity: None })
}
