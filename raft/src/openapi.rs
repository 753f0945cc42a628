//! OpenAPI documents of API versions (DESIGN §7): parsed as JSON or YAML
//! and checked against the OpenAPI 3.0 or 3.1 object model when a version is
//! written, so the catalog and the portal can rely on them.

/// Why a document is not a valid OpenAPI 3.x document, with where.
pub fn validate(document: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_yaml_ng::from_str(document).map_err(|e| format!("the document is neither JSON nor YAML: {e}"))?;
    let version = value.get("openapi").and_then(|v| v.as_str()).ok_or_else(|| {
        "the document has no `openapi` version string (an OpenAPI 3 document starts with `openapi: 3.0.3` or \
         `openapi: 3.1.0`; Swagger 2.0 documents must be converted)"
            .to_string()
    })?;
    if version.starts_with("3.0.") {
        serde_path_to_error::deserialize::<_, openapiv3::OpenAPI>(value.clone()).map_err(located)?;
    } else if version.starts_with("3.1.") {
        serde_path_to_error::deserialize::<_, oas3::Spec>(value.clone()).map_err(located)?;
    } else {
        return Err(format!("OpenAPI {version:?} is not supported: use 3.0.x or 3.1.x"));
    }
    // The parsers skip keys they do not understand; a path that is not one
    // would vanish from the catalog silently.
    let paths = value.get("paths").and_then(|p| p.as_object()).into_iter().flat_map(|p| p.keys());
    paths_are_absolute(paths.filter(|p| !p.starts_with("x-")))
}

fn located(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." {
        format!("not a valid OpenAPI document: {}", e.inner())
    } else {
        format!("at {path}: {}", e.inner())
    }
}

fn paths_are_absolute<'a>(mut paths: impl Iterator<Item = &'a String>) -> Result<(), String> {
    match paths.find(|p| !p.starts_with('/')) {
        Some(p) => Err(format!("at paths.{p}: a path must start with '/'")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn valid_documents_of_both_versions_pass() {
        let v30 = "openapi: 3.0.3\ninfo: {title: Orders, version: '1'}\npaths:\n  /orders:\n    get:\n      responses:\n        '200': {description: ok}\n";
        validate(v30).unwrap();
        let v31 = r#"{"openapi":"3.1.0","info":{"title":"Orders","version":"2"},"paths":{"/orders/{id}":{"get":{"parameters":[{"name":"id","in":"path","required":true,"schema":{"type":"string"}}],"responses":{"200":{"description":"ok"}}}}}}"#;
        validate(v31).unwrap();
    }

    #[test]
    fn invalid_documents_say_what_and_where() {
        assert!(validate("{not yaml: [").unwrap_err().contains("neither JSON nor YAML"));
        assert!(validate("swagger: '2.0'").unwrap_err().contains("no `openapi`"));
        assert!(validate("openapi: 2.5.0").unwrap_err().contains("not supported"));
        let no_info = validate("openapi: 3.0.3\npaths: {}\n").unwrap_err();
        assert!(no_info.contains("info"), "{no_info}");
        let bad_param = validate(
            "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get:\n      parameters:\n        - {name: x, in: nowhere}\n      responses: {'200': {description: ok}}\n",
        )
        .unwrap_err();
        assert!(bad_param.contains("paths"), "{bad_param}");
        let relative = validate("openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  orders: {}\n").unwrap_err();
        assert!(relative.contains("must start with '/'"), "{relative}");
    }
}
