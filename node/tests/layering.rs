//! The node's modules depend one way (docs/architecture.md): `proxy` may use
//! `ai`, `plumbing` and `telemetry`; `ai` may use `plumbing` and `telemetry`
//! but never the proxy's internals; `telemetry` and `plumbing` use neither.
//! `tollgate-llm` is a crate of its own, so cargo already keeps it pure.
//! This test reads the sources, so a stray `use crate::proxy::…` in the AI
//! backend fails CI instead of growing back into a cycle.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn offenders(module: &str, forbidden: &[&str]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(module);
    let mut found = Vec::new();
    for file in sources(&dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for path in forbidden {
                if code.contains(path) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn the_ai_backend_never_imports_the_proxy() {
    assert_eq!(offenders("ai", &["crate::proxy", "super::super::proxy"]), Vec::<String>::new());
}

#[test]
fn telemetry_and_plumbing_import_neither_the_proxy_nor_the_ai_backend() {
    for module in ["telemetry", "plumbing"] {
        assert_eq!(offenders(module, &["crate::proxy", "crate::ai"]), Vec::<String>::new(), "{module}");
    }
}
