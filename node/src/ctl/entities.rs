//! `tollgate ctl get|list|create|update|delete <kind>`: every entity kind the
//! registry declares, through the generic entity RPCs, as JSON in and out.
//! JSON is converted to and from protobuf with the descriptors compiled into
//! the binary (`tollgate_proto::FILE_DESCRIPTOR_SET`), so a new kind needs no
//! code here. Field names are the protobuf ones (`created_at_ms`); input
//! also takes the JSON (camelCase) names.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::Args;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Value, json};
use tollgate_proto::admin::v1::{
    DeleteEntityRequest, GetEntityRequest, ListEntitiesRequest, PutEntityRequest, StoredEntity,
};
use tollgate_raft::EntityKind;

use super::{CtlError, Printer, client, pre_read_failed};

const KIND_HELP: &str = "Entity kind, e.g. consumer, service, model-alias or model-price (a name it does not \
                         know gets the list of kinds)";

#[derive(Debug, Args)]
pub struct GetArgs {
    #[arg(value_parser = parse_kind, help = KIND_HELP)]
    pub(super) kind: EntityKind,
    /// Name or id.
    pub(super) id_or_name: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(value_parser = parse_kind, help = KIND_HELP)]
    pub(super) kind: EntityKind,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(value_parser = parse_kind, help = KIND_HELP)]
    pub(super) kind: EntityKind,
    /// JSON file with the entity, as `get -o json` prints it (`-` reads stdin);
    /// its id is new, whatever `meta` says.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[arg(value_parser = parse_kind, help = KIND_HELP)]
    pub(super) kind: EntityKind,
    /// Name or id of the entity to change.
    pub(super) id_or_name: String,
    /// JSON file (`-` reads stdin) whose top-level fields replace the
    /// entity's; fields it leaves out keep their value.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(value_parser = parse_kind, help = KIND_HELP)]
    pub(super) kind: EntityKind,
    /// Name or id.
    pub(super) id_or_name: String,
}

fn parse_kind(name: &str) -> Result<EntityKind, String> {
    EntityKind::from_name(name).ok_or_else(|| EntityKind::unknown(name))
}

pub(super) async fn get(args: GetArgs, mut admin: client::Admin, out: &Printer, stale: bool) -> Result<(), CtlError> {
    let request = GetEntityRequest { kind: args.kind.shown().into(), id_or_name: args.id_or_name, stale };
    let stored = admin.get_entity(request).await?.into_inner();
    let descriptor = descriptor(&stored.type_name)?;
    let value = to_json(&decode_as(&descriptor, &stored.entity)?)?;
    let rows = field_rows(&descriptor, &value);
    out.list_one(value, rows);
    Ok(())
}

pub(super) async fn list(args: ListArgs, mut admin: client::Admin, out: &Printer, stale: bool) -> Result<(), CtlError> {
    let request = ListEntitiesRequest { kind: args.kind.shown().into(), stale };
    let listed = admin.list_entities(request).await?.into_inner();
    let descriptor = descriptor(&listed.type_name)?;
    let values =
        listed.entities.iter().map(|bytes| to_json(&decode_as(&descriptor, bytes)?)).collect::<Result<Vec<_>, _>>()?;
    let rows = list_rows(&descriptor, &values);
    out.list(values, rows);
    Ok(())
}

pub(super) async fn create(args: CreateArgs, mut admin: client::Admin, out: &Printer) -> Result<(), CtlError> {
    let descriptor = descriptor(args.kind.message_name())?;
    let (message, _) = read_message(&descriptor, &args.file)?;
    let request = PutEntityRequest {
        kind: args.kind.shown().into(),
        entity: prost::Message::encode_to_vec(&message),
        create: true,
        id_or_name: String::new(),
    };
    let stored = admin.put_entity(request).await?.into_inner();
    written(&stored, "created", out)
}

pub(super) async fn update(args: UpdateArgs, mut admin: client::Admin, out: &Printer) -> Result<(), CtlError> {
    let descriptor = descriptor(args.kind.message_name())?;
    let (patch, fields) = read_message(&descriptor, &args.file)?;
    // Read through the leader, as the write will be.
    let request =
        GetEntityRequest { kind: args.kind.shown().into(), id_or_name: args.id_or_name.clone(), stale: false };
    let current = admin
        .get_entity(request)
        .await
        .map_err(|e| pre_read_failed(e, args.kind.shown(), &args.id_or_name))?
        .into_inner();
    let mut message = decode_as(&descriptor, &current.entity)?;
    for field in fields {
        if patch.has_field(&field) {
            message.set_field(&field, patch.get_field(&field).into_owned());
        } else {
            message.clear_field(&field);
        }
    }
    let request = PutEntityRequest {
        kind: args.kind.shown().into(),
        entity: prost::Message::encode_to_vec(&message),
        create: false,
        id_or_name: args.id_or_name,
    };
    let stored = admin.put_entity(request).await?.into_inner();
    written(&stored, "updated", out)
}

pub(super) async fn delete(args: DeleteArgs, mut admin: client::Admin, out: &Printer) -> Result<(), CtlError> {
    let request = DeleteEntityRequest { kind: args.kind.shown().into(), id_or_name: args.id_or_name.clone() };
    let revision = admin.delete_entity(request).await?.into_inner().revision;
    let (kind, key) = (args.kind, args.id_or_name);
    out.one(json!({"deleted": key, "revision": revision}), || format!("deleted {kind} {key}"));
    Ok(())
}

/// The id of a stored entity of any kind.
pub(super) fn entity_id(stored: &StoredEntity) -> Result<String, CtlError> {
    let value = to_json(&decode(&stored.type_name, &stored.entity)?)?;
    Ok(value["meta"]["id"].as_str().unwrap_or_default().to_string())
}

pub(super) fn written_entity(stored: &StoredEntity, verb: &str, out: &Printer) -> Result<(), CtlError> {
    written(stored, verb, out)
}

fn written(stored: &StoredEntity, verb: &str, out: &Printer) -> Result<(), CtlError> {
    let value = to_json(&decode(&stored.type_name, &stored.entity)?)?;
    let id = value["meta"]["id"].as_str().unwrap_or_default().to_string();
    let label = match value.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => format!("{name} ({id})"),
        _ => id,
    };
    out.one(value, || format!("{verb} {} {label}", stored.kind));
    Ok(())
}

fn descriptor(type_name: &str) -> Result<MessageDescriptor, CtlError> {
    crate::admin::declarative::pool().get_message_by_name(type_name).ok_or_else(|| {
        CtlError::Usage(format!(
            "this ctl does not know the message {type_name:?} the node sent; use a ctl of the node's version"
        ))
    })
}

/// An encoded message of a type the node names, as `-o json` shows it.
pub(super) fn message_json(type_name: &str, bytes: &[u8]) -> Result<Value, CtlError> {
    to_json(&decode(type_name, bytes)?)
}

fn decode(type_name: &str, bytes: &[u8]) -> Result<DynamicMessage, CtlError> {
    decode_as(&descriptor(type_name)?, bytes)
}

fn decode_as(descriptor: &MessageDescriptor, bytes: &[u8]) -> Result<DynamicMessage, CtlError> {
    DynamicMessage::decode(descriptor.clone(), bytes).map_err(|e| {
        CtlError::Status(tonic::Status::internal(format!(
            "the node sent a {} this ctl cannot decode: {e}",
            descriptor.full_name()
        )))
    })
}

/// Every field with its value, defaults included, under its protobuf name;
/// 64-bit numbers as numbers, as the rest of `ctl -o json`.
fn to_json(message: &DynamicMessage) -> Result<Value, CtlError> {
    let options =
        SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false).stringify_64_bit_integers(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| CtlError::Output(std::io::Error::other(e)))
}

/// The message in `file` (`-`: stdin), and the top-level fields it names.
fn read_message(
    descriptor: &MessageDescriptor,
    file: &Path,
) -> Result<(DynamicMessage, Vec<prost_reflect::FieldDescriptor>), CtlError> {
    let shown = file.display();
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Usage(format!("cannot read the entity from stdin: {e}")))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| CtlError::Usage(format!("{shown}: cannot read it: {e}")))?
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        CtlError::Usage(format!(
            "{shown}: not JSON ({e}); write the entity as `tollgate ctl get <kind> <name> -o json` prints it"
        ))
    })?;
    let Value::Object(object) = &value else {
        return Err(CtlError::Usage(format!("{shown}: expected a JSON object with the entity's fields")));
    };
    let fields = object
        .keys()
        .filter_map(|key| descriptor.get_field_by_name(key).or_else(|| descriptor.get_field_by_json_name(key)))
        .collect();
    let message = DynamicMessage::deserialize(descriptor.clone(), value).map_err(|e| {
        CtlError::Usage(format!(
            "{shown}: not a {} ({e}); see the fields with `tollgate ctl get <kind> <name> -o json`",
            descriptor.full_name()
        ))
    })?;
    Ok((message, fields))
}

/// `get` as a table: each top-level field and its value, in message order.
fn field_rows(descriptor: &MessageDescriptor, value: &Value) -> Vec<Vec<String>> {
    std::iter::once(vec!["FIELD".to_string(), "VALUE".to_string()])
        .chain(descriptor.fields().map(|f| vec![f.name().to_string(), cell(&value[f.name()])]))
        .collect()
}

/// `list` as a table: the id, then every top-level field that fits a cell
/// (no messages, lists or maps).
fn list_rows(descriptor: &MessageDescriptor, values: &[Value]) -> Vec<Vec<String>> {
    let columns: Vec<String> = descriptor
        .fields()
        .filter(|f| !f.is_list() && !f.is_map() && f.kind().as_message().is_none())
        .map(|f| f.name().to_string())
        .collect();
    let header = std::iter::once("ID".to_string()).chain(columns.iter().map(|c| c.to_ascii_uppercase()));
    std::iter::once(header.collect())
        .chain(values.iter().map(|v| {
            let id = v["meta"]["id"].as_str().unwrap_or_default().to_string();
            std::iter::once(id).chain(columns.iter().map(|c| cell(&v[c.as_str()]))).collect()
        }))
        .collect()
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_message_in_the_compiled_descriptors() {
        let pool = crate::admin::declarative::pool();
        for kind in EntityKind::ALL {
            let message = pool.get_message_by_name(kind.message_name());
            assert!(message.is_some(), "{kind}: no message {}", kind.message_name());
            assert!(message.unwrap().get_field_by_name("meta").is_some(), "{kind} has a meta");
        }
    }

    #[test]
    fn json_round_trips_through_the_descriptor() {
        let descriptor = descriptor(EntityKind::ModelPrice.message_name()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("price.json");
        std::fs::write(
            &file,
            r#"{"name": "openai/gpt-x", "inputMicrosPerMtok": "2500", "output_micros_per_mtok": 10000}"#,
        )
        .unwrap();
        let (message, fields) = read_message(&descriptor, &file).unwrap();
        let mut names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        names.sort();
        assert_eq!(names, ["input_micros_per_mtok", "name", "output_micros_per_mtok"]);
        let value = to_json(&message).unwrap();
        assert_eq!(value["input_micros_per_mtok"], 2500, "64-bit numbers print as numbers");
        assert_eq!(value["cached_input_micros_per_mtok"], 0, "defaults are shown");
        let rows = field_rows(&descriptor, &value);
        assert_eq!(rows[1..4], [["meta", ""], ["name", "openai/gpt-x"], ["mode", ""]]);
        let rows = list_rows(&descriptor, &[value]);
        assert_eq!(rows[0][..3], ["ID", "NAME", "MODE"]);
        assert_eq!(rows[1][1], "openai/gpt-x");

        std::fs::write(&file, r#"{"nmae": "x"}"#).unwrap();
        let error = read_message(&descriptor, &file).unwrap_err().to_string();
        assert!(error.contains("nmae") && error.contains("tollgate.config.v1.ModelPrice"), "{error}");
    }
}
