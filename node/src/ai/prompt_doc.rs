//! The OpenAPI 3.1 document of a prompt API, generated from its spec: one
//! `POST` taking the variables as a JSON object and answering with the
//! output schema (or `{"output": string}`), or a stream of events. The
//! portal shows it where a version has no document of its own, and MCP
//! lists it as a tool.

use serde_json::{Map, Value, json};
use tollgate_proto::config::v1::{PromptSpec, PromptVariableType};

/// The JSON Schema of a request's body: the declared variables.
pub fn input_schema(spec: &PromptSpec) -> Value {
    let mut properties = Map::new();
    for v in &spec.variables {
        let kind = PromptVariableType::try_from(v.r#type).unwrap_or_default();
        let mut schema = json!({"type": super::prompt::type_name(kind)});
        if !v.description.is_empty() {
            schema["description"] = json!(v.description);
        }
        if !v.allowed.is_empty() {
            schema["enum"] = json!(v.allowed);
        }
        if matches!(kind, PromptVariableType::Unspecified | PromptVariableType::String) {
            schema["maxLength"] = json!(if v.max_length == 0 { 32 << 10 } else { v.max_length });
        }
        properties.insert(v.name.clone(), schema);
    }
    let required: Vec<&str> = spec.variables.iter().filter(|v| v.required).map(|v| v.name.as_str()).collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// The JSON Schema of a successful answer.
pub fn output_schema(spec: &PromptSpec) -> Value {
    serde_json::from_str(&spec.output_schema).unwrap_or_else(
        |_| json!({"type": "object", "properties": {"output": {"type": "string"}}, "required": ["output"]}),
    )
}

pub fn openapi(name: &str, description: &str, version: &str, path: &str, spec: &PromptSpec) -> Value {
    let error = json!({"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "variable": {"type": "string"}}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": name, "version": version, "description": description},
        "paths": {path: {"post": {
            "operationId": name,
            "summary": format!("Ask {} (model {})", name, spec.model),
            "description": "Send the variables as a JSON object. With `Accept: text/event-stream` the answer \
                            streams: `delta` events with the text, then `output` (or `error`), then `done`.",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Variables"}}}},
            "responses": {
                "200": {"description": "The model's answer", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Output"}},
                    "text/event-stream": {"schema": {"type": "string"}}}},
                "400": {"description": "A variable is missing, unknown or of the wrong type", "content": {"application/json": {"schema": error}}},
                "502": {"description": "The model's output did not meet the output schema, asked twice", "content": {"application/json": {"schema": error}}},
            },
        }}},
        "components": {"schemas": {"Variables": input_schema(spec), "Output": output_schema(spec)}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_the_api_its_path_and_both_schemas() {
        let spec = PromptSpec { model: "m".into(), ..Default::default() };
        let doc = openapi("sentiment", "d", "v1", "/apis/sentiment", &spec);
        assert_eq!(doc["info"]["title"], "sentiment");
        assert!(doc["paths"]["/apis/sentiment"]["post"].is_object(), "{doc}");
        assert_eq!(doc["components"]["schemas"]["Output"]["required"][0], "output");
    }
}
