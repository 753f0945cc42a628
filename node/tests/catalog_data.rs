//! The shipped model catalog (`llm/src/catalog.toml`) parses and holds sane data: prices are
//! what cost records are computed from, so a typo there is a billing bug.

use std::collections::HashSet;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalog {
    version: String,
    model: Vec<Model>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Model {
    provider: String,
    model: String,
    mode: String,
    context_window: u64,
    max_output_tokens: Option<u64>,
    input_per_mtok: f64,
    output_per_mtok: Option<f64>,
    cached_input_per_mtok: Option<f64>,
}

fn catalog() -> Catalog {
    toml::from_str(include_str!("../llm/src/catalog.toml")).expect("catalog.toml parses")
}

/// A list price in USD per million tokens: finite, not negative, at most 6 decimals (a
/// millionth of a dollar per million tokens is below any real price step).
fn check_price(what: &str, p: f64) {
    assert!(p.is_finite() && p >= 0.0, "{what}: price {p} must be finite and >= 0");
    let scaled = p * 1_000_000.0;
    assert!(
        (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0),
        "{what}: price {p} has more than 6 decimals"
    );
}

#[test]
fn catalog_entries_are_unique_and_well_formed() {
    let c = catalog();
    assert!(!c.version.is_empty());
    assert!(c.model.len() >= 100, "only {} models", c.model.len());
    let mut seen = HashSet::new();
    for m in &c.model {
        let what = format!("{}/{}", m.provider, m.model);
        assert!(seen.insert((m.provider.as_str(), m.model.as_str())), "{what} listed twice");
        assert!(!m.provider.is_empty() && !m.model.is_empty(), "{what}: empty name");
        assert!(m.context_window > 0, "{what}: context_window must be > 0");
        if let Some(max) = m.max_output_tokens {
            assert!(max > 0, "{what}: max_output_tokens must be > 0");
        }
        check_price(&what, m.input_per_mtok);
        for p in [m.output_per_mtok, m.cached_input_per_mtok].into_iter().flatten() {
            check_price(&what, p);
        }
        if let Some(cached) = m.cached_input_per_mtok {
            assert!(cached <= m.input_per_mtok, "{what}: cached input dearer than input");
        }
        match m.mode.as_str() {
            "chat" => assert!(m.output_per_mtok.is_some(), "{what}: chat models need output_per_mtok"),
            "embedding" => {}
            other => panic!("{what}: unknown mode {other}"),
        }
    }
}

#[test]
fn catalog_covers_the_providers_the_gateway_speaks() {
    let c = catalog();
    let providers: HashSet<&str> = c.model.iter().map(|m| m.provider.as_str()).collect();
    for p in ["openai", "anthropic", "gemini", "azure", "mistral", "groq", "deepseek"] {
        assert!(providers.contains(p), "no {p} models");
    }
    let has = |p: &str, m: &str| c.model.iter().any(|e| e.provider == p && e.model == m);
    for (p, m) in [
        ("openai", "gpt-4o"),
        ("openai", "text-embedding-3-small"),
        ("anthropic", "claude-sonnet-4-20250514"),
        ("gemini", "gemini-2.5-flash"),
        ("azure", "gpt-4o"),
    ] {
        assert!(has(p, m), "missing {p}/{m}");
    }
}
