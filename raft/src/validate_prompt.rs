//! Rules of a prompt API's spec (`Service.prompt`), checked by `apply`:
//! a model, a conversation whose placeholders name declared variables,
//! typed variables, and an output schema that is a JSON object. That the
//! schema is a valid JSON Schema is this version's admission rule
//! (`admit.rs`), as the validator may change between versions.

use std::collections::HashSet;

use tollgate_proto::config::v1::{PromptSpec, PromptVariableType};
use tollgate_proto::prompt::{Segment, is_variable_name, segments};

use crate::error::ApplyError;

const MAX_MESSAGES: usize = 32;
const MAX_CONTENT_BYTES: usize = 64 << 10;
const MAX_VARIABLES: usize = 64;
const MAX_ALLOWED: usize = 256;
pub(crate) const MAX_SCHEMA_BYTES: usize = 64 << 10;

pub(crate) fn prompt(p: &PromptSpec) -> Result<(), ApplyError> {
    if p.model.trim().is_empty() || p.model.len() > 256 {
        return Err(ApplyError::invalid("prompt.model", "name a model alias or provider/model (at most 256 bytes)"));
    }
    let declared = variables(p)?;
    if p.messages.is_empty() || p.messages.len() > MAX_MESSAGES {
        return Err(ApplyError::invalid("prompt.messages", format!("1 to {MAX_MESSAGES} messages")));
    }
    for (i, m) in p.messages.iter().enumerate() {
        let field = format!("prompt.messages[{i}]");
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApplyError::invalid(field, "role must be system, user or assistant"));
        }
        if m.content.len() > MAX_CONTENT_BYTES {
            return Err(ApplyError::invalid(field, format!("content is at most {MAX_CONTENT_BYTES} bytes")));
        }
        for segment in segments(&m.content).map_err(|reason| ApplyError::invalid(&field, reason))? {
            if let Segment::Variable(name) = segment
                && !declared.contains(name)
            {
                return Err(ApplyError::invalid(field, format!("{{{{{name}}}}} names no declared variable")));
            }
        }
    }
    if !p.output_schema.is_empty() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&p.output_schema);
        if p.output_schema.len() > MAX_SCHEMA_BYTES || !matches!(parsed, Ok(serde_json::Value::Object(_))) {
            return Err(ApplyError::invalid(
                "prompt.output_schema",
                format!("must be a JSON Schema object as JSON text, at most {MAX_SCHEMA_BYTES} bytes"),
            ));
        }
    }
    let ranged = |field: &str, value: Option<f64>, max: f64| match value {
        Some(v) if !(0.0..=max).contains(&v) => Err(ApplyError::invalid(field, format!("must be 0 to {max}"))),
        _ => Ok(()),
    };
    ranged("prompt.temperature", p.temperature, 2.0)?;
    ranged("prompt.top_p", p.top_p, 1.0)?;
    if p.max_tokens.is_some_and(|n| n == 0 || n > 1_000_000) {
        return Err(ApplyError::invalid("prompt.max_tokens", "must be 1 to 1000000"));
    }
    Ok(())
}

fn variables(p: &PromptSpec) -> Result<HashSet<&str>, ApplyError> {
    if p.variables.len() > MAX_VARIABLES {
        return Err(ApplyError::invalid("prompt.variables", format!("at most {MAX_VARIABLES}")));
    }
    let mut names = HashSet::new();
    for (i, v) in p.variables.iter().enumerate() {
        let field = format!("prompt.variables[{i}]");
        if !is_variable_name(&v.name) {
            return Err(ApplyError::invalid(field, format!("{:?} is not a name ([A-Za-z_][A-Za-z0-9_]*)", v.name)));
        }
        if !names.insert(v.name.as_str()) {
            return Err(ApplyError::invalid(field, format!("{:?} is declared twice", v.name)));
        }
        let kind = PromptVariableType::try_from(v.r#type)
            .map_err(|_| ApplyError::invalid(&field, "type must be string, number, integer or boolean"))?;
        let string = matches!(kind, PromptVariableType::Unspecified | PromptVariableType::String);
        if !v.allowed.is_empty() && (!string || v.allowed.len() > MAX_ALLOWED) {
            return Err(ApplyError::invalid(field, format!("only a string has allowed values, at most {MAX_ALLOWED}")));
        }
    }
    Ok(names)
}
