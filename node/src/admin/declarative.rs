//! The declarative configuration (DESIGN §7): the whole configuration as
//! one YAML document (`tollgate ctl export`), and a document turned into the
//! operations that make the cluster match it (`ctl diff`, `ctl apply`),
//! proposed as one command that applies all or nothing.
//!
//! The document has one section per kind (`SECTIONS`), in the order a new
//! cluster needs them; each entity is its protobuf message in JSON with
//! proto field names, defaults left out, `meta` replaced by its `id`.
//! Secrets are references, never values: a provider credential's `secret`,
//! a provider header's `value` and a route's JWT `hs_secret` read
//! `env:NAME` or `file:PATH` (resolved by `ctl apply` on the operator's
//! machine and sealed here before anything is replicated) or `keep` (the
//! value the cluster already holds). API keys, admin and join tokens are
//! credentials the cluster generates: they are not part of the document.
//!
//! References to other entities are ids in an export (so export → apply →
//! export is exact); a hand-written document may name them instead.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};
use tollgate_proto::admin::v1::ConfigChange;
use tollgate_proto::config::v1::{Meta, Provider, Route, Service};
use tollgate_proto::raft::v1::command::Op;
use tollgate_proto::raft::v1::{Command, ConfigBundle};
use tollgate_raft::secrets::SecretBox;
use tollgate_raft::{Action, AnyEntity, EntityKind, GatewayState};
use tonic::Status;

use super::ai::{seal_credentials, seal_headers};
use super::service::{fresh_meta, normalize_route, normalize_service, seal_jwt_secret};

/// The format of the document; a later format may read this one.
pub const FORMAT_VERSION: u64 = 1;

/// Each kind the document holds, under its section, in the order a new
/// cluster needs them (what an entity refers to comes before it).
pub const SECTIONS: &[(EntityKind, &str)] = &[
    (EntityKind::Team, "teams"),
    (EntityKind::Service, "services"),
    (EntityKind::ApiVersion, "api_versions"),
    (EntityKind::Consumer, "consumers"),
    (EntityKind::Provider, "providers"),
    (EntityKind::ModelAlias, "model_aliases"),
    (EntityKind::ModelPrice, "model_prices"),
    (EntityKind::Route, "routes"),
    (EntityKind::Limit, "limits"),
    (EntityKind::PublishPolicy, "publish_policies"),
    (EntityKind::Subscription, "subscriptions"),
];

/// A secret the cluster already holds: the document does not say it again.
const KEEP: &str = "keep";

/// Every Tollgate message, from the descriptors compiled into the binary,
/// decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(tollgate_proto::FILE_DESCRIPTOR_SET).expect("the compiled-in descriptors decode")
    })
}

pub fn descriptor(kind: EntityKind) -> MessageDescriptor {
    pool().get_message_by_name(kind.message_name()).expect("every registered kind has a descriptor")
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The whole configuration of `state` as a document.
pub fn export(state: &GatewayState) -> Result<String, Status> {
    let mut document = Map::new();
    document.insert("version".into(), FORMAT_VERSION.into());
    for (kind, section) in SECTIONS {
        let mut entities = state.entities(*kind);
        entities.sort_by(|a, b| (a.name(), a.id()).cmp(&(b.name(), b.id())));
        let items = entities.iter().map(exported).collect::<Result<Vec<_>, _>>()?;
        if !items.is_empty() {
            document.insert(section.to_string(), Value::Array(items));
        }
    }
    serde_yaml_ng::to_string(&Value::Object(document)).map_err(internal)
}

/// An entity as the document shows it: its id first, then its fields.
fn exported(entity: &AnyEntity) -> Result<Value, Status> {
    let mut fields = to_json(entity.kind(), &entity.encode_to_vec())?;
    let mut item = Map::new();
    item.insert("id".into(), entity.id().into());
    item.append(&mut fields);
    Ok(Value::Object(item))
}

/// The fields of an encoded entity in the document's form, without `meta`.
fn to_json(kind: EntityKind, bytes: &[u8]) -> Result<Map<String, Value>, Status> {
    let message = DynamicMessage::decode(descriptor(kind), bytes).map_err(internal)?;
    let options =
        SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true).stringify_64_bit_integers(false);
    let value = message.serialize_with_options(serde_json::value::Serializer, &options).map_err(internal)?;
    let Value::Object(mut fields) = value else { return Err(internal("an entity did not serialize to an object")) };
    fields.remove("meta");
    secrets_as_references(kind, &mut fields);
    Ok(fields)
}

/// Sealed secrets become the references they came from (or `keep`);
/// mirrored fields of an earlier format go.
fn secrets_as_references(kind: EntityKind, fields: &mut Map<String, Value>) {
    let each = |fields: &mut Map<String, Value>, list: &str, f: &dyn Fn(&mut Map<String, Value>)| {
        if let Some(Value::Array(items)) = fields.get_mut(list) {
            items.iter_mut().filter_map(Value::as_object_mut).for_each(f);
        }
    };
    match kind {
        EntityKind::Provider => {
            each(fields, "credentials", &|c| reference(c, "secret", "secret_ref", &["sealed_secret", "hint"]));
            each(fields, "headers", &|h| reference(h, "value", "value_ref", &["sealed_value", "hint"]));
        }
        EntityKind::Route => {
            fields.remove("service_id");
            fields.remove("ai_gateway");
            if let Some(Value::Object(jwt)) = fields.get_mut("jwt") {
                let hmac = jwt
                    .get("algorithms")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|alg| alg.as_str().is_some_and(|s| s.starts_with("HS"))));
                if hmac {
                    reference(jwt, "hs_secret", "hs_secret_ref", &["sealed_hs_secret"]);
                } else {
                    for key in ["hs_secret", "hs_secret_ref", "sealed_hs_secret"] {
                        jwt.remove(key);
                    }
                }
            }
        }
        _ => {}
    }
}

/// `field` becomes the stored reference, or `keep`.
fn reference(object: &mut Map<String, Value>, field: &str, reference_field: &str, sealed: &[&str]) {
    for key in sealed {
        object.remove(*key);
    }
    let reference = object.remove(reference_field).and_then(|v| v.as_str().map(str::to_string));
    object.insert(field.into(), reference.filter(|r| !r.is_empty()).unwrap_or_else(|| KEEP.into()).into());
}

/// What applying a document would do.
pub struct Plan {
    pub ops: Vec<Command>,
    pub changes: Vec<ConfigChange>,
}

impl Plan {
    /// The one command that makes every change, and the changes it makes.
    pub fn into_parts(self) -> (Op, Vec<ConfigChange>) {
        (Op::ApplyConfig(ConfigBundle { ops: self.ops }), self.changes)
    }

    fn push(&mut self, op: Op, change: ConfigChange) {
        self.ops.push(Command { op: Some(op), ..Default::default() });
        self.changes.push(change);
    }
}

/// The operations that make `state` match `document`. `resolved` holds the
/// values of its secret references; None for a dry run, whose operations
/// carry placeholders (they are only checked, never proposed).
pub fn plan(
    state: &GatewayState,
    document: &str,
    resolved: Option<&HashMap<String, String>>,
    prune: bool,
    secrets: &SecretBox,
) -> Result<Plan, Status> {
    let document: Value = serde_yaml_ng::from_str(document)
        .map_err(|e| Status::invalid_argument(format!("the document is neither YAML nor JSON: {e}")))?;
    let Value::Object(mut sections) = document else {
        return Err(Status::invalid_argument("the document must be a mapping of sections (teams, services, …)"));
    };
    check_header(&mut sections)?;
    let mut plan = Plan { ops: Vec::new(), changes: Vec::new() };
    let mut ids = Ids::default();
    for (kind, section) in SECTIONS {
        let Some(items) = sections.remove(*section) else { continue };
        let Value::Array(items) = items else {
            return Err(Status::invalid_argument(format!("{section} must be a list")));
        };
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("{section}[{i}]");
            let Value::Object(fields) = item else {
                return Err(Status::invalid_argument(format!("{at} must be a mapping of fields")));
            };
            let item = Item::read(state, *kind, fields, &mut ids)
                .map_err(|m| Status::invalid_argument(format!("{at}: {m}")))?;
            item.plan(resolved, secrets, &mut plan).map_err(|s| prefixed(&at, s))?;
        }
    }
    if prune {
        for (kind, _) in SECTIONS.iter().rev() {
            for entity in state.entities(*kind).iter().filter(|e| !ids.named(*kind, e.id())) {
                let op = kind.delete_op(entity.id().to_string()).ok_or_else(|| internal("a kind with no delete"))?;
                plan.push(op, change("delete", *kind, entity, Vec::new()));
            }
        }
    }
    Ok(plan)
}

fn prefixed(at: &str, status: Status) -> Status {
    Status::new(status.code(), format!("{at}: {}", status.message()))
}

fn check_header(sections: &mut Map<String, Value>) -> Result<(), Status> {
    match sections.remove("version") {
        None => {}
        Some(v) if v.as_u64() == Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(Status::invalid_argument(format!(
                "version {v} is not a format this node reads (it reads {FORMAT_VERSION})"
            )));
        }
    }
    let known: Vec<&str> = SECTIONS.iter().map(|(_, s)| *s).collect();
    if let Some(unknown) = sections.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Status::invalid_argument(format!(
            "unknown section {unknown:?}; sections are version, {}",
            known.join(", ")
        )));
    }
    Ok(())
}

fn change(action: &str, kind: EntityKind, entity: &AnyEntity, fields: Vec<String>) -> ConfigChange {
    ConfigChange {
        action: action.into(),
        kind: kind.shown().into(),
        name: entity.name().unwrap_or(entity.id()).to_string(),
        fields,
    }
}

/// The ids the document names, and its names, by kind.
#[derive(Default)]
struct Ids {
    ids: HashMap<EntityKind, BTreeSet<String>>,
    names: HashMap<(EntityKind, String), String>,
    /// An id of the document (another cluster's) -> the id of the entity of
    /// the same name here.
    aliases: HashMap<(EntityKind, String), String>,
}

impl Ids {
    fn named(&self, kind: EntityKind, id: &str) -> bool {
        self.ids.get(&kind).is_some_and(|ids| ids.contains(id))
    }

    /// The id a reference means: an id of the document or the state, else a
    /// name of either.
    fn resolve(&self, state: &GatewayState, kind: EntityKind, reference: &str) -> Option<String> {
        if let Some(id) = self.aliases.get(&(kind, reference.to_string())) {
            return Some(id.clone());
        }
        if self.named(kind, reference) || state.entity(kind, reference).is_some_and(|e| e.id() == reference) {
            return None;
        }
        self.names
            .get(&(kind, reference.to_string()))
            .cloned()
            .or_else(|| state.entity(kind, reference).map(|e| e.id().to_string()))
    }
}

/// Where each kind refers to others: a path of fields ("*": each element).
fn references(kind: EntityKind) -> &'static [(&'static [&'static str], EntityKind)] {
    match kind {
        EntityKind::Service | EntityKind::Consumer => &[(&["team_id"], EntityKind::Team)],
        EntityKind::Route => &[(&["team_id"], EntityKind::Team), (&["service", "service_id"], EntityKind::Service)],
        EntityKind::Limit => &[
            (&["team_id"], EntityKind::Team),
            (&["service_ids", "*"], EntityKind::Service),
            (&["route_ids", "*"], EntityKind::Route),
            (&["consumer_ids", "*"], EntityKind::Consumer),
        ],
        EntityKind::ApiVersion => &[(&["service_id"], EntityKind::Service)],
        EntityKind::Subscription => &[(&["service_id"], EntityKind::Service), (&["consumer_id"], EntityKind::Consumer)],
        EntityKind::ModelAlias => &[(&["targets", "*", "provider_id"], EntityKind::Provider)],
        _ => &[],
    }
}

fn resolve_at(value: &mut Value, path: &[&str], resolve: &dyn Fn(&str) -> Option<String>) {
    match (path.split_first(), value) {
        (None, Value::String(s)) => {
            if let Some(id) = resolve(s) {
                *s = id;
            }
        }
        (Some((&"*", rest)), Value::Array(items)) => items.iter_mut().for_each(|v| resolve_at(v, rest, resolve)),
        (Some((field, rest)), Value::Object(fields)) => {
            if let Some(v) = fields.get_mut(*field) {
                resolve_at(v, rest, resolve);
            }
        }
        _ => {}
    }
}

/// One entity of the document, its references resolved, matched with the
/// entity it replaces.
struct Item {
    kind: EntityKind,
    id: String,
    fields: Map<String, Value>,
    existing: Option<AnyEntity>,
}

impl Item {
    fn read(
        state: &GatewayState,
        kind: EntityKind,
        mut fields: Map<String, Value>,
        ids: &mut Ids,
    ) -> Result<Item, String> {
        let id = match fields.remove("id") {
            None => None,
            Some(Value::String(id)) if !id.is_empty() => Some(id),
            Some(other) => return Err(format!("id must be a non-empty string, not {other}")),
        };
        let mut value = Value::Object(fields);
        for (path, target) in references(kind) {
            resolve_at(&mut value, path, &|r| ids.resolve(state, *target, r));
        }
        let Value::Object(fields) = value else { unreachable!("an object stays an object") };
        let name = fields.get("name").and_then(Value::as_str).map(str::to_string);
        // By id; else (a document from another cluster, or hand-written) by
        // name, or by what identifies a version or a subscription.
        let by_id = id.as_ref().and_then(|id| state.entity(kind, id).filter(|e| e.id() == id));
        let existing = by_id.or_else(|| match &name {
            Some(name) => state.entity(kind, name).filter(|e| e.name() == Some(name.as_str())),
            None => natural_match(state, kind, &fields),
        });
        let id = match (id, &existing) {
            (Some(given), Some(e)) if given != e.id() => {
                ids.aliases.insert((kind, given), e.id().to_string());
                e.id().to_string()
            }
            (Some(given), _) => given,
            (None, Some(e)) => e.id().to_string(),
            (None, None) => fresh_meta().map(|m| m.id).unwrap_or_default(),
        };
        if !ids.ids.entry(kind).or_default().insert(id.clone()) {
            return Err(format!("id {id:?} is given twice"));
        }
        if let Some(name) = name {
            ids.names.insert((kind, name), id.clone());
        }
        Ok(Item { kind, id, fields, existing })
    }

    /// Adds the operation this item needs, if any.
    fn plan(
        self,
        resolved: Option<&HashMap<String, String>>,
        secrets: &SecretBox,
        plan: &mut Plan,
    ) -> Result<(), Status> {
        let desired = self.canonical()?;
        let action = match &self.existing {
            Some(existing) => {
                let current = to_json(self.kind, &existing.encode_to_vec())?;
                if current == desired {
                    return Ok(());
                }
                let differing: BTreeSet<&String> =
                    desired.keys().chain(current.keys()).filter(|k| desired.get(*k) != current.get(*k)).collect();
                Some(differing.into_iter().cloned().collect::<Vec<_>>())
            }
            None => None,
        };
        let entity = self.build(resolved, secrets)?;
        let kind = self.kind;
        let (verb, op_action) = match (&action, kind.supports(Action::Create)) {
            (_, false) => (if action.is_some() { "update" } else { "create" }, Action::Upsert),
            (Some(_), true) => ("update", Action::Update),
            (None, true) => ("create", Action::Create),
        };
        let record = change(verb, kind, &entity, action.unwrap_or_default());
        let op = entity.into_op(op_action).ok_or_else(|| internal(format!("{kind} has no {verb}")))?;
        plan.push(op, record);
        Ok(())
    }

    /// The fields as an export of the stored result would show them, to
    /// compare with the entity it replaces.
    fn canonical(&self) -> Result<Map<String, Value>, Status> {
        let mut fields = self.fields.clone();
        references_into_fields(self.kind, &mut fields, Resolve::Compare, None)?;
        let bytes = normalized(self.kind, self.message(fields)?.encode_to_vec())?;
        to_json(self.kind, &bytes)
    }

    fn message(&self, fields: Map<String, Value>) -> Result<DynamicMessage, Status> {
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        DynamicMessage::deserialize_with_options(descriptor(self.kind), Value::Object(fields), &options)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// The entity to propose: the document's fields, its id, and its
    /// secrets sealed (kept from `existing` where the reference is unchanged).
    fn build(&self, resolved: Option<&HashMap<String, String>>, secrets: &SecretBox) -> Result<AnyEntity, Status> {
        let mut fields = self.fields.clone();
        let existing_json = match &self.existing {
            Some(e) => Some(to_json(self.kind, &e.encode_to_vec())?),
            None => None,
        };
        let resolve = resolved.map_or(Resolve::Placeholder, Resolve::Values);
        references_into_fields(self.kind, &mut fields, resolve, existing_json.as_ref())?;
        let bytes = normalized(self.kind, self.message(fields)?.encode_to_vec())?;
        let meta = Meta { id: self.id.clone(), ..Default::default() };
        match self.kind {
            EntityKind::Provider => {
                let mut provider = Provider::decode(bytes.as_slice()).map_err(internal)?;
                provider.meta = Some(meta);
                let existing = match &self.existing {
                    Some(AnyEntity::Provider(p)) => Some(p.as_ref()),
                    _ => None,
                };
                seal_credentials(secrets, &mut provider, existing)?;
                seal_headers(secrets, &mut provider, existing)?;
                Ok(AnyEntity::Provider(provider.into()))
            }
            EntityKind::Route => {
                let mut route = Route::decode(bytes.as_slice()).map_err(internal)?;
                route.meta = Some(meta);
                let existing = match &self.existing {
                    Some(AnyEntity::Route(r)) => r.jwt.as_ref(),
                    _ => None,
                };
                seal_jwt_secret(secrets, &mut route, existing)?;
                Ok(AnyEntity::Route(route.into()))
            }
            EntityKind::Service => {
                let mut service = Service::decode(bytes.as_slice()).map_err(internal)?;
                service.meta = Some(meta);
                Ok(AnyEntity::Service(service.into()))
            }
            kind => {
                let mut entity = kind.decode(&bytes).map_err(internal)?;
                entity.set_meta(meta);
                Ok(entity)
            }
        }
    }
}

/// The message as the typed RPCs would store it (host names lower-cased, a
/// route's defaults filled in), so a document compares equal to its export.
fn normalized(kind: EntityKind, bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
    match kind {
        EntityKind::Route => {
            let mut route = Route::decode(bytes.as_slice()).map_err(internal)?;
            normalize_route(&mut route)?;
            Ok(route.encode_to_vec())
        }
        EntityKind::Service => {
            let mut service = Service::decode(bytes.as_slice()).map_err(internal)?;
            normalize_service(&mut service);
            Ok(service.encode_to_vec())
        }
        _ => Ok(bytes),
    }
}

/// How secret references become values.
#[derive(Clone, Copy)]
enum Resolve<'a> {
    /// Comparing with the stored form: no value is needed.
    Compare,
    /// A dry run: a placeholder stands for each value to be sealed.
    Placeholder,
    /// The values the client resolved.
    Values(&'a HashMap<String, String>),
}

/// An api version or a subscription without an id: the one of the same
/// service and version, or of the same service and consumer.
fn natural_match(state: &GatewayState, kind: EntityKind, fields: &Map<String, Value>) -> Option<AnyEntity> {
    let field = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or("");
    match kind {
        EntityKind::ApiVersion => state
            .api_versions()
            .find(|v| v.service_id == field("service_id") && v.version == field("version"))
            .map(|v| AnyEntity::ApiVersion(v.clone())),
        EntityKind::Subscription => state
            .subscriptions()
            .find(|s| s.service_id == field("service_id") && s.consumer_id == field("consumer_id"))
            .map(|s| AnyEntity::Subscription(s.clone())),
        _ => None,
    }
}

/// Turns the document's secret references into the message's fields: the
/// reference into its `*_ref` field, and the secret itself into the input
/// field when it must be sealed anew (a new or changed reference, whose
/// value the client resolved). `keep`, or a reference the cluster already
/// sealed (`existing` in export form), sends no value: the sealed one stays.
fn references_into_fields(
    kind: EntityKind,
    fields: &mut Map<String, Value>,
    resolved: Resolve,
    existing: Option<&Map<String, Value>>,
) -> Result<(), Status> {
    let list = |fields: &mut Map<String, Value>,
                name: &str,
                key: &str,
                field: &str,
                reference_field: &str|
     -> Result<(), Status> {
        let Some(Value::Array(items)) = fields.get_mut(name) else { return Ok(()) };
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            let key_value = item.get(key).cloned();
            let before = existing
                .and_then(|e| e.get(name))
                .and_then(Value::as_array)
                .and_then(|old| old.iter().find(|o| o.get(key) == key_value.as_ref()))
                .and_then(|o| o.get(field))
                .and_then(Value::as_str);
            secret_field(item, field, reference_field, before, resolved)?;
        }
        Ok(())
    };
    match kind {
        EntityKind::Provider => {
            list(fields, "credentials", "id", "secret", "secret_ref")?;
            list(fields, "headers", "name", "value", "value_ref")?;
        }
        EntityKind::Route => {
            if let Some(Value::Object(jwt)) = fields.get_mut("jwt") {
                let before =
                    existing.and_then(|e| e.get("jwt")).and_then(|j| j.get("hs_secret")).and_then(Value::as_str);
                if jwt.contains_key("hs_secret") {
                    secret_field(jwt, "hs_secret", "hs_secret_ref", before, resolved)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn secret_field(
    item: &mut Map<String, Value>,
    field: &str,
    reference_field: &str,
    before: Option<&str>,
    resolved: Resolve,
) -> Result<(), Status> {
    let reference = match item.remove(field) {
        None => return Ok(()),
        Some(Value::String(r)) => r,
        Some(_) => return Err(Status::invalid_argument(format!("{field} must be a reference string"))),
    };
    if reference == KEEP {
        return Ok(());
    }
    if !is_reference(&reference) {
        return Err(Status::invalid_argument(format!(
            "{field} holds a value: write secrets as references (env:NAME or file:PATH), or `keep` for the one the cluster holds"
        )));
    }
    item.insert(reference_field.into(), reference.clone().into());
    if before == Some(reference.as_str()) {
        return Ok(());
    }
    let resolved = match resolved {
        Resolve::Compare => return Ok(()),
        Resolve::Placeholder => {
            item.insert(field.into(), "placeholder-of-a-dry-run".into());
            return Ok(());
        }
        Resolve::Values(values) => values,
    };
    match resolved.get(&reference) {
        Some(value) => {
            item.insert(field.into(), value.clone().into());
            Ok(())
        }
        None => Err(Status::invalid_argument(format!(
            "{field}: the reference {reference:?} was not resolved by the client; run `tollgate ctl apply` where it is set"
        ))),
    }
}

/// Whether `text` is a secret reference a client resolves.
pub fn is_reference(text: &str) -> bool {
    text.strip_prefix("env:").is_some_and(|name| !name.is_empty())
        || text.strip_prefix("file:").is_some_and(|path| !path.is_empty())
}

/// The references a document names, for the client to resolve.
pub fn references_in(document: &str) -> Result<BTreeSet<String>, String> {
    let value: Value =
        serde_yaml_ng::from_str(document).map_err(|e| format!("the document is neither YAML nor JSON: {e}"))?;
    let mut found = BTreeSet::new();
    collect(&value, &mut found);
    Ok(found)
}

fn collect(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(fields) => {
            for (key, v) in fields {
                match (key.as_str(), v) {
                    ("secret" | "value" | "hs_secret", Value::String(s)) if is_reference(s) => {
                        found.insert(s.clone());
                    }
                    _ => collect(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, found)),
        _ => {}
    }
}
