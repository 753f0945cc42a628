//! Rendering entities as human tables or as JSON for scripts. The JSON shape
//! is stable: field names follow the protobuf names.

use serde_json::{Value, json};
use tollgate_proto::config::v1::{ApiKey, AuthMode, Consumer, Meta, PathMatch, Route, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

fn meta(m: &Option<Meta>) -> Value {
    let m = m.clone().unwrap_or_default();
    json!({ "id": m.id, "created_at_ms": m.created_at_ms, "updated_at_ms": m.updated_at_ms, "revision": m.revision })
}

fn id(m: &Option<Meta>) -> String {
    m.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

pub fn service_json(s: &Service) -> Value {
    json!({
        "meta": meta(&s.meta),
        "name": s.name,
        "version": s.version,
        "targets": s.targets.iter().map(|t| json!({"host": t.host, "port": t.port, "weight": t.weight})).collect::<Vec<_>>(),
        "connect_timeout_ms": s.connect_timeout_ms,
        "request_timeout_ms": s.request_timeout_ms,
        "description": s.description,
    })
}

pub fn path_kind(kind: i32) -> &'static str {
    match PathMatch::try_from(kind) {
        Ok(PathMatch::Exact) => "exact",
        Ok(PathMatch::Template) => "template",
        Ok(PathMatch::Prefix) => "prefix",
        _ => "unspecified",
    }
}

pub fn auth_name(auth: i32) -> &'static str {
    match AuthMode::try_from(auth) {
        Ok(AuthMode::None) => "none",
        Ok(AuthMode::ApiKey) => "api-key",
        _ => "unspecified",
    }
}

pub fn route_json(r: &Route) -> Value {
    json!({
        "meta": meta(&r.meta),
        "name": r.name,
        "hosts": r.hosts,
        "methods": r.methods,
        "paths": r.paths.iter().map(|p| json!({"kind": path_kind(p.kind), "path": p.path})).collect::<Vec<_>>(),
        "priority": r.priority,
        "strip_prefix": r.strip_prefix,
        "service_id": r.service_id,
        "ai_gateway": r.ai_gateway,
        "auth": auth_name(r.auth),
    })
}

pub fn consumer_json(c: &Consumer) -> Value {
    json!({ "meta": meta(&c.meta), "name": c.name, "description": c.description })
}

pub fn api_key_json(k: &ApiKey) -> Value {
    json!({
        "meta": meta(&k.meta),
        "consumer_id": k.consumer_id,
        "name": k.name,
        "display_prefix": k.display_prefix,
        "expires_at_ms": k.expires_at_ms,
        "disabled": k.disabled,
        "allowed_models": k.allowed_models,
    })
}

/// Rows for the table view; the first row is the header.
pub fn service_rows(items: &[Service]) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["ID", "NAME", "VERSION", "TARGETS", "REVISION"].into_iter().map(String::from).collect()];
    for s in items {
        let targets: Vec<String> = s
            .targets
            .iter()
            .map(|t| {
                if t.weight > 1 {
                    format!("{}:{}*{}", t.host, t.port, t.weight)
                } else {
                    format!("{}:{}", t.host, t.port)
                }
            })
            .collect();
        rows.push(vec![id(&s.meta), s.name.clone(), s.version.clone(), targets.join(","), revision(&s.meta)]);
    }
    rows
}

pub fn route_rows(items: &[Route]) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = vec![
        ["ID", "NAME", "HOSTS", "METHODS", "PATHS", "PRIORITY", "AUTH", "SERVICE"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    for r in items {
        let paths: Vec<String> = r.paths.iter().map(|p| format!("{}:{}", path_kind(p.kind), p.path)).collect();
        rows.push(vec![
            id(&r.meta),
            r.name.clone(),
            or_any(r.hosts.join(",")),
            or_any(r.methods.join(",")),
            paths.join(","),
            r.priority.to_string(),
            auth_name(r.auth).to_string(),
            r.service_id.clone(),
        ]);
    }
    rows
}

pub fn consumer_rows(items: &[Consumer]) -> Vec<Vec<String>> {
    let mut rows = vec![["ID", "NAME", "DESCRIPTION"].into_iter().map(String::from).collect::<Vec<_>>()];
    for c in items {
        rows.push(vec![id(&c.meta), c.name.clone(), c.description.clone()]);
    }
    rows
}

pub fn api_key_rows(items: &[ApiKey]) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["ID", "CONSUMER", "NAME", "PREFIX", "EXPIRES_AT_MS", "STATUS"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    for k in items {
        rows.push(vec![
            id(&k.meta),
            k.consumer_id.clone(),
            k.name.clone(),
            k.display_prefix.clone(),
            if k.expires_at_ms == 0 { "never".into() } else { k.expires_at_ms.to_string() },
            if k.disabled { "disabled".into() } else { "enabled".into() },
        ]);
    }
    rows
}

fn or_any(s: String) -> String {
    if s.is_empty() { "*".into() } else { s }
}

fn revision(m: &Option<Meta>) -> String {
    m.as_ref().map_or(0, |m| m.revision).to_string()
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| if i + 1 == row.len() { cell.clone() } else { format!("{cell:<w$}", w = widths[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![vec!["A".to_string(), "BB".to_string()], vec!["long".to_string(), "x".to_string()]];
        assert_eq!(table(&rows), "A     BB\nlong  x\n");
    }
}
