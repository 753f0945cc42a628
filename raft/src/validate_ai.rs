//! `apply`-time rules for the AI gateway's entities: providers, model aliases
//! and price overrides. Pure functions, like the rest of validation.

use std::collections::HashSet;

use tollgate_proto::config::v1::{ModelAlias, ModelPrice, Provider, ProviderKind};

use crate::entities::EntityKind;
use crate::error::ApplyError;
use crate::state::GatewayState;
use crate::validate;

const MAX_MODEL_LEN: usize = 128;
const MAX_URL_LEN: usize = 2048;
const MAX_HEADER_VALUE_LEN: usize = 4096;
/// What to do instead, said wherever a provider URL with user info is refused.
pub(crate) const CREDENTIALS_GO: &str = "put credentials in the provider's key or headers";
const MAX_CREDENTIALS: usize = 64;
const MAX_ALIAS_TARGETS: usize = 32;
const MAX_ALLOWED_MODELS: usize = 256;
const MAX_RETRIES: u32 = 10;
const MAX_WEIGHT: u32 = 10_000;
/// One hour: longer waits belong to a circuit breaker, not a request.
const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// A sealed secret is a version byte, a nonce, the ciphertext and a tag;
/// anything shorter cannot have come from the admin server.
const MIN_SEALED_LEN: usize = crate::secrets::SEAL_OVERHEAD;

/// Model ids are the providers' own ("gpt-4o-2024-08-06",
/// "llama3.1:8b", "meta-llama/Llama-3.3-70B-Instruct-Turbo"): printable
/// ASCII without spaces.
pub(crate) fn model_id(field: &str, value: &str) -> Result<(), ApplyError> {
    if value.is_empty() || value.len() > MAX_MODEL_LEN {
        return Err(ApplyError::invalid(field, format!("must be 1 to {MAX_MODEL_LEN} characters")));
    }
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApplyError::invalid(field, "must be printable ASCII without spaces"));
    }
    Ok(())
}

pub(crate) fn provider(p: &Provider) -> Result<(), ApplyError> {
    validate::name("name", &p.name)?;
    let kind = ProviderKind::try_from(p.kind).unwrap_or(ProviderKind::Unspecified);
    if kind == ProviderKind::Unspecified {
        return Err(ApplyError::invalid(
            "kind",
            "must be one of openai, openai-compatible, anthropic, gemini, azure-openai",
        ));
    }
    base_url(&p.base_url)?;
    if p.api_version.len() > validate::MAX_NAME_LEN {
        return Err(ApplyError::invalid("api_version", "must be at most 64 characters"));
    }
    // Self-hosted OpenAI-compatible servers (vLLM, Ollama) often take no key.
    if p.credentials.is_empty() && kind != ProviderKind::OpenaiCompatible {
        return Err(ApplyError::invalid("credentials", "this kind of provider needs at least one API key"));
    }
    if p.credentials.len() > MAX_CREDENTIALS {
        return Err(ApplyError::invalid("credentials", format!("at most {MAX_CREDENTIALS} per provider")));
    }
    let mut ids = HashSet::new();
    for (i, c) in p.credentials.iter().enumerate() {
        validate::name(&format!("credentials[{i}].id"), &c.id)?;
        if !ids.insert(c.id.as_str()) {
            return Err(ApplyError::invalid(format!("credentials[{i}].id"), format!("{:?} is used twice", c.id)));
        }
        if !c.secret.is_empty() {
            return Err(ApplyError::invalid(
                format!("credentials[{i}].secret"),
                "plaintext secrets are never replicated; send them through the admin API, which seals them",
            ));
        }
        if c.sealed_secret.len() < MIN_SEALED_LEN {
            return Err(ApplyError::invalid(format!("credentials[{i}].sealed_secret"), "missing or truncated"));
        }
        if c.weight > MAX_WEIGHT {
            return Err(ApplyError::invalid(format!("credentials[{i}].weight"), format!("at most {MAX_WEIGHT}")));
        }
        if c.hint.len() > 16 {
            return Err(ApplyError::invalid(format!("credentials[{i}].hint"), "at most 16 characters"));
        }
    }
    for (field, ms) in [("request_timeout_ms", p.request_timeout_ms), ("cooldown_ms", p.cooldown_ms)] {
        if ms > MAX_TIMEOUT_MS {
            return Err(ApplyError::invalid(field, format!("at most {MAX_TIMEOUT_MS} ms")));
        }
    }
    for (i, h) in p.headers.iter().enumerate() {
        let field = format!("headers[{i}]");
        // The rules earlier versions applied, unchanged: their log entries
        // must apply the same way here. This version's own limits (count,
        // lengths, duplicates) are admission rules (admit.rs).
        let valid_name = !h.name.is_empty() && h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_name || h.value.chars().any(|c| c.is_control()) {
            return Err(ApplyError::invalid(field, "must be a token name and a printable value"));
        }
        if h.sealed_value.is_empty() {
            // Plain text: written by an earlier version (the admin server
            // seals every value it is sent).
            continue;
        }
        if !h.value.is_empty() {
            return Err(ApplyError::invalid(
                format!("{field}.value"),
                "plaintext header values are never replicated beside a sealed one; send them through the admin API, which seals them",
            ));
        }
        // Sealing keeps the length, so the plaintext's bound holds for the ciphertext too.
        let len = h.sealed_value.len();
        if !(MIN_SEALED_LEN..=MIN_SEALED_LEN + MAX_HEADER_VALUE_LEN).contains(&len) {
            return Err(ApplyError::invalid(format!("{field}.sealed_value"), "truncated or too long"));
        }
        if h.hint.chars().count() > 16 {
            return Err(ApplyError::invalid(format!("{field}.hint"), "at most 16 characters"));
        }
    }
    if !p.pricing.is_empty() {
        validate::name("pricing", &p.pricing)?;
    }
    for (i, m) in p.models.iter().enumerate() {
        model_id(&format!("models[{i}]"), m)?;
    }
    Ok(())
}

/// A provider header's plaintext value: what the admin server checks before
/// sealing it, since apply only ever sees the ciphertext.
pub fn provider_header_value(field: &str, value: &str) -> Result<(), ApplyError> {
    if value.len() > MAX_HEADER_VALUE_LEN || value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ApplyError::invalid(
            field,
            format!("the value must be at most {MAX_HEADER_VALUE_LEN} bytes of visible characters"),
        ));
    }
    Ok(())
}

/// Accepts exactly what earlier versions accepted (see `provider`'s
/// headers); admit.rs adds this version's stricter URL rules.
fn base_url(url: &str) -> Result<(), ApplyError> {
    let invalid = |reason: &str| ApplyError::invalid("base_url", reason.to_string());
    if url.len() > MAX_URL_LEN {
        return Err(invalid("is too long"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(validate::credentials_in_url("base_url", CREDENTIALS_GO));
    }
    if authority.is_empty() {
        return Err(invalid("must name a host, e.g. https://api.openai.com/v1"));
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not carry a query, a fragment or spaces"));
    }
    Ok(())
}

pub(crate) fn model_alias(state: &GatewayState, a: &ModelAlias) -> Result<(), ApplyError> {
    model_id("name", &a.name)?;
    if a.targets.is_empty() {
        return Err(ApplyError::invalid("targets", "an alias needs at least one provider/model target"));
    }
    if a.targets.len() > MAX_ALIAS_TARGETS {
        return Err(ApplyError::invalid("targets", format!("at most {MAX_ALIAS_TARGETS}")));
    }
    for (i, t) in a.targets.iter().enumerate() {
        if state.provider(&t.provider_id).is_none() {
            return Err(ApplyError::not_found(EntityKind::Provider, &t.provider_id));
        }
        model_id(&format!("targets[{i}].model"), &t.model)?;
        if t.weight > MAX_WEIGHT {
            return Err(ApplyError::invalid(format!("targets[{i}].weight"), format!("at most {MAX_WEIGHT}")));
        }
    }
    if a.retries > MAX_RETRIES {
        return Err(ApplyError::invalid("retries", format!("at most {MAX_RETRIES}")));
    }
    if a.backoff_ms > MAX_TIMEOUT_MS {
        return Err(ApplyError::invalid("backoff_ms", format!("at most {MAX_TIMEOUT_MS} ms")));
    }
    Ok(())
}

pub(crate) fn model_price(p: &ModelPrice) -> Result<(), ApplyError> {
    let (namespace, model) = p
        .name
        .split_once('/')
        .ok_or_else(|| ApplyError::invalid("name", "must be <pricing namespace>/<model>, e.g. openai/gpt-4o"))?;
    validate::name("name", namespace)?;
    model_id("name", model)?;
    if !matches!(p.mode.as_str(), "" | "chat" | "embedding") {
        return Err(ApplyError::invalid("mode", "must be chat or embedding"));
    }
    // A million dollars per million tokens is far beyond any list price; it
    // guards the picodollar arithmetic against overflow.
    for (field, v) in [
        ("input_micros_per_mtok", p.input_micros_per_mtok),
        ("output_micros_per_mtok", p.output_micros_per_mtok),
        ("cached_input_micros_per_mtok", p.cached_input_micros_per_mtok),
    ] {
        if v > 1_000_000_000_000 {
            return Err(ApplyError::invalid(field, "is implausibly high (over 1,000,000 USD per million tokens)"));
        }
    }
    Ok(())
}

pub(crate) fn allowed_models(patterns: &[String]) -> Result<(), ApplyError> {
    if patterns.len() > MAX_ALLOWED_MODELS {
        return Err(ApplyError::invalid("allowed_models", format!("at most {MAX_ALLOWED_MODELS} entries")));
    }
    for (i, p) in patterns.iter().enumerate() {
        let field = format!("allowed_models[{i}]");
        let literal = p.strip_suffix('*').unwrap_or(p);
        if literal.contains('*') {
            return Err(ApplyError::invalid(field, "only a trailing * is supported"));
        }
        if !literal.is_empty() {
            model_id(&field, literal)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::config::v1::{AliasTarget, ProviderCredential, ProviderHeader};

    fn provider_with(kind: ProviderKind, url: &str) -> Provider {
        Provider {
            name: "openai".into(),
            kind: kind as i32,
            base_url: url.into(),
            credentials: vec![ProviderCredential { id: "k1".into(), sealed_secret: vec![1; 40], ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn providers_need_a_kind_a_url_and_sealed_keys() {
        assert!(provider(&provider_with(ProviderKind::Openai, "https://api.openai.com/v1")).is_ok());
        assert!(provider(&provider_with(ProviderKind::Unspecified, "https://api.openai.com/v1")).is_err());
        assert!(provider(&provider_with(ProviderKind::Openai, "ftp://x")).is_err());
        let error = provider(&provider_with(ProviderKind::Openai, "https://u:p@x/v1")).unwrap_err().to_string();
        assert!(error.contains("put credentials in the provider's key or headers, not in the URL"), "{error}");
        assert!(provider(&provider_with(ProviderKind::Openai, "https://x/v1?key=1")).is_err());

        let mut plaintext = provider_with(ProviderKind::Openai, "https://api.openai.com/v1");
        plaintext.credentials[0].secret = "sk-live".into();
        let err = provider(&plaintext).unwrap_err();
        assert!(err.to_string().contains("never replicated"), "{err}");

        let mut keyless = provider_with(ProviderKind::Anthropic, "https://api.anthropic.com");
        keyless.credentials.clear();
        assert!(provider(&keyless).is_err());
        keyless.kind = ProviderKind::OpenaiCompatible as i32;
        assert!(provider(&keyless).is_ok(), "a local vLLM/Ollama needs no key");

        let mut twice = provider_with(ProviderKind::Openai, "https://api.openai.com/v1");
        twice.credentials.push(twice.credentials[0].clone());
        assert!(provider(&twice).is_err());
    }

    #[test]
    fn header_values_are_sealed_or_legacy_plain_text_never_both() {
        let with =
            |h: ProviderHeader| Provider { headers: vec![h], ..provider_with(ProviderKind::Openai, "https://x") };
        let sealed = crate::secrets::SecretBox::from_key_material(b"k").seal("c", "Bearer abc").unwrap();
        let header = ProviderHeader { name: "x-auth".into(), sealed_value: sealed.clone(), ..Default::default() };
        assert!(provider(&with(header.clone())).is_ok());
        // Written by an earlier version: still applies (its log must replay).
        let legacy = ProviderHeader { name: "x-auth".into(), value: "Bearer abc".into(), ..Default::default() };
        assert!(provider(&with(legacy.clone())).is_ok());
        let both = ProviderHeader { value: "Bearer abc".into(), ..header.clone() };
        assert!(provider(&with(both)).unwrap_err().to_string().contains("never replicated"));
        let truncated = ProviderHeader { sealed_value: vec![1, 2, 3], ..header.clone() };
        assert!(provider(&with(truncated)).is_err());
        let control = ProviderHeader { value: "a\nb".into(), ..legacy.clone() };
        assert!(provider(&with(control)).is_err());
        let mut twice = with(header.clone());
        twice.headers.push(ProviderHeader { name: "X-Auth".into(), ..header });
        assert!(provider(&twice).is_ok(), "earlier versions accepted it: apply still does (admission does not)");
    }

    #[test]
    fn aliases_must_point_at_existing_providers() {
        let state = GatewayState::default();
        let alias = ModelAlias {
            name: "gpt-4o".into(),
            targets: vec![AliasTarget { provider_id: "missing".into(), model: "gpt-4o".into(), ..Default::default() }],
            ..Default::default()
        };
        assert!(matches!(model_alias(&state, &alias), Err(ApplyError::NotFound { .. })));
        let empty = ModelAlias { name: "x".into(), ..Default::default() };
        assert!(matches!(model_alias(&state, &empty), Err(ApplyError::InvalidArgument { .. })));
    }

    #[test]
    fn prices_and_model_patterns_are_checked() {
        let ok = ModelPrice { name: "openai/gpt-4o".into(), mode: "chat".into(), ..Default::default() };
        assert!(model_price(&ok).is_ok());
        assert!(model_price(&ModelPrice { name: "gpt-4o".into(), ..Default::default() }).is_err());
        assert!(model_price(&ModelPrice { input_micros_per_mtok: u64::MAX, ..ok.clone() }).is_err());
        assert!(allowed_models(&["gpt-4o".into(), "openai/*".into(), "*".into()]).is_ok());
        assert!(allowed_models(&["g*t".into()]).is_err());
        assert!(model_id("m", "llama3.1:8b").is_ok());
        assert!(model_id("m", "has space").is_err());
    }
}
