//! An API version's reference, rendered from its OpenAPI document (3.0 or
//! 3.1, JSON or YAML; `admit` validated it when it was stored): the
//! operations with their parameters, request bodies, responses and
//! examples, then the schemas. Read as plain JSON values, so both
//! revisions render the same way; `$ref`s become links to the schema.

use maud::{Markup, html};
use serde_json::Value;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The document as a JSON value, whichever syntax it was written in; None
/// for no document (YAML reads an empty one as an empty mapping).
pub fn parse(document: &str) -> Option<Value> {
    let trimmed = document.trim_start();
    if trimmed.is_empty() {
        return None;
    }
    let parsed: Option<Value> = if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).ok()
    } else {
        serde_yaml_ng::from_str(document).ok()
    };
    parsed.filter(Value::is_object)
}

pub fn render(document: &Value) -> Markup {
    let info = &document["info"];
    let paths = document["paths"].as_object();
    let schemas = document["components"]["schemas"].as_object();
    html! {
        section.card {
            h2 { (text(&info["title"])) " " span.muted { (text(&info["version"])) } }
            @if let Some(description) = info["description"].as_str() { p { (description) } }
            @if let Some(servers) = document["servers"].as_array() {
                p.muted { "Servers: " @for s in servers { code { (text(&s["url"])) } " " } }
            }
        }
        h2 { "Operations" }
        @match paths {
            Some(paths) if !paths.is_empty() => {
                @for (path, item) in paths {
                    @for method in METHODS {
                        @if let Some(op) = item.get(method) { (operation(method, path, op, item)) }
                    }
                }
            }
            _ => { p.muted { "The document describes no operations." } }
        }
        @if let Some(schemas) = schemas {
            h2 { "Schemas" }
            @for (name, schema) in schemas {
                section.card id={ "schema-" (name) } {
                    h3 { code { (name) } }
                    (schema_view(schema))
                }
            }
        }
    }
}

fn operation(method: &str, path: &str, op: &Value, item: &Value) -> Markup {
    let parameters = parameters(item, op);
    html! {
        section.card.op {
            h3 { span.method { (method) } code { (path) } }
            @if let Some(summary) = op["summary"].as_str() { p { strong { (summary) } } }
            @if let Some(description) = op["description"].as_str() { p { (description) } }
            @if !parameters.is_empty() {
                table {
                    thead { tr { th { "Parameter" } th { "In" } th { "Type" } th { "Required" } th { "Description" } } }
                    tbody {
                        @for p in &parameters {
                            tr {
                                td { code { (text(&p["name"])) } (ref_link(p)) }
                                td { (text(&p["in"])) }
                                td { (type_of(&p["schema"])) }
                                td { @if p["required"].as_bool() == Some(true) { "yes" } @else { "no" } }
                                td { (text(&p["description"])) }
                            }
                        }
                    }
                }
            }
            @if let Some(content) = op["requestBody"]["content"].as_object() {
                h4 { "Request body" }
                @for (media, body) in content { (media_view(media, body)) }
            }
            @if let Some(responses) = op["responses"].as_object() {
                h4 { "Responses" }
                @for (code, response) in responses {
                    p { code { (code) } " " (text(&response["description"])) (ref_link(response)) }
                    @if let Some(content) = response["content"].as_object() {
                        @for (media, body) in content { (media_view(media, body)) }
                    }
                }
            }
        }
    }
}

/// An operation's parameters: the path item's (which apply to each of its
/// operations), then its own.
pub fn parameters<'a>(item: &'a Value, op: &'a Value) -> Vec<&'a Value> {
    item["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(op["parameters"].as_array().into_iter().flatten())
        .collect()
}

fn media_view(media: &str, body: &Value) -> Markup {
    let examples = body["examples"].as_object();
    html! {
        p.muted { code { (media) } " " (type_of(&body["schema"])) }
        @if let Some(example) = body.get("example") { pre { (pretty(example)) } }
        @if let Some(examples) = examples {
            @for (name, example) in examples {
                p.muted { "Example " (name) }
                pre { (pretty(example.get("value").unwrap_or(example))) }
            }
        }
    }
}

fn schema_view(schema: &Value) -> Markup {
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    html! {
        p { (type_of(schema)) }
        @if let Some(description) = schema["description"].as_str() { p { (description) } }
        @if let Some(properties) = schema["properties"].as_object() {
            table {
                thead { tr { th { "Property" } th { "Type" } th { "Required" } th { "Description" } } }
                tbody {
                    @for (name, property) in properties {
                        tr {
                            td { code { (name) } }
                            td { (type_of(property)) }
                            td { @if required.contains(&name.as_str()) { "yes" } @else { "no" } }
                            td { (text(&property["description"])) }
                        }
                    }
                }
            }
        }
        @if let Some(example) = schema.get("example") { p.muted { "Example" } pre { (pretty(example)) } }
    }
}

/// A schema's type in a few words: a `$ref` as a link, arrays by their
/// items, enums by their values.
fn type_of(schema: &Value) -> Markup {
    if let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        return html! { a href={ "#schema-" (name) } { (name) } };
    }
    let kind = match &schema["type"] {
        Value::String(s) => s.clone(),
        Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
        _ => String::new(),
    };
    html! {
        @if kind == "array" { "array of " (type_of(&schema["items"])) }
        @else { code { (if kind.is_empty() { "any" } else { &kind }) } }
        @if let Some(format) = schema["format"].as_str() { " (" (format) ")" }
        @if let Some(values) = schema["enum"].as_array() {
            " one of " @for v in values { code { (pretty(v)) } " " }
        }
    }
}

/// A `$ref` to a shared parameter or response, named.
fn ref_link(value: &Value) -> Markup {
    html! { @if let Some(r) = value["$ref"].as_str() { " " span.muted { (r) } } }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}
