//! The JSON Schema (draft 2020-12) of the declarative configuration file
//! (`declarative.rs`), generated from the protobuf descriptors compiled into
//! the binary, so it cannot drift from what `ctl apply` reads. It ships as
//! `docs/gateway.schema.json` (a test keeps the file current) for editors
//! and CI checks of configuration repositories.

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::declarative::{FORMAT_VERSION, SECTIONS, descriptor};

/// Fields the document never holds: sealed secrets and hints (set by the
/// cluster), the `*_ref` fields (written as the secret field itself), and
/// mirrors of an earlier format.
const HIDDEN: &[&str] =
    &["meta", "sealed_secret", "sealed_value", "sealed_hs_secret", "hint", "secret_ref", "value_ref", "hs_secret_ref"];
const HIDDEN_ROUTE: &[&str] = &["service_id", "ai_gateway"];
const SECRET_FIELDS: &[&str] = &["secret", "value", "hs_secret"];

pub fn document_schema() -> Value {
    let mut properties = Map::new();
    properties.insert("version".into(), json!({"const": FORMAT_VERSION, "description": "The file format."}));
    let mut defs = Map::new();
    for (kind, section) in SECTIONS {
        let message = descriptor(*kind);
        let mut entity = object_schema(&message, &mut defs, true);
        if let Some(Value::Object(props)) = entity.get_mut("properties") {
            props.insert("id".into(), json!({"type": "string", "description": "The entity's id; omit to let the cluster pick one (or to match by name)."}));
            if kind.shown() == "route" {
                HIDDEN_ROUTE.iter().for_each(|f| {
                    props.remove(*f);
                });
            }
        }
        properties.insert(
            section.to_string(),
            json!({"type": "array", "description": format!("{}s", kind.shown()), "items": entity}),
        );
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tollgate.dev/schemas/gateway.schema.json",
        "title": "Tollgate gateway configuration",
        "description": "What `tollgate ctl export` writes and `tollgate ctl apply -f` reads. Secrets are references: env:NAME, file:PATH, or keep.",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "$defs": defs,
    })
}

fn object_schema(message: &MessageDescriptor, defs: &mut Map<String, Value>, top: bool) -> Value {
    let mut properties = Map::new();
    for field in message.fields() {
        if HIDDEN.contains(&field.name()) && (top || field.name() != "meta") {
            continue;
        }
        properties.insert(field.name().to_string(), field_schema(&field, defs));
    }
    json!({"type": "object", "additionalProperties": false, "properties": properties})
}

fn field_schema(field: &FieldDescriptor, defs: &mut Map<String, Value>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { unreachable!("a map field is a message of entries") };
        let value = entry.map_entry_value_field();
        return json!({"type": "object", "additionalProperties": kind_schema(&value, defs)});
    }
    let single = if SECRET_FIELDS.contains(&field.name()) && field.kind() == Kind::String {
        json!({
            "type": "string",
            "pattern": "^(env:.+|file:.+|keep)$",
            "description": "A reference, never the value: env:NAME, file:PATH, or keep (the secret the cluster holds)."
        })
    } else {
        kind_schema(field, defs)
    };
    if field.cardinality() == Cardinality::Repeated { json!({"type": "array", "items": single}) } else { single }
}

fn kind_schema(field: &FieldDescriptor, defs: &mut Map<String, Value>) -> Value {
    match field.kind() {
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "integer"})
        }
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => json!({"type": "integer", "minimum": 0}),
        Kind::Enum(e) => {
            let names: Vec<Value> = e.values().map(|v| Value::String(v.name().to_string())).collect();
            json!({"enum": names})
        }
        Kind::Message(m) => {
            let name = m.full_name().to_string();
            if !defs.contains_key(&name) {
                // Placeholder first: messages may refer to themselves.
                defs.insert(name.clone(), Value::Null);
                let schema = object_schema(&m, defs, false);
                defs.insert(name.clone(), schema);
            }
            json!({"$ref": format!("#/$defs/{name}")})
        }
    }
}
