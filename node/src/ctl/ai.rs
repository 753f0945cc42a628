//! `tollgate ctl provider|alias|price`: the AI gateway's configuration.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate_proto::admin::v1::ai_service_client::AiServiceClient;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{
    AliasTarget, ModelAlias, ModelPrice, Provider, ProviderCredential, ProviderHeader, ProviderKind,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::client::BearerToken;
use super::secret::read_secret;
use super::{CtlError, Printer, id};

pub type AiClient = AiServiceClient<InterceptedService<Channel, BearerToken>>;

#[derive(Debug, Subcommand)]
pub enum ProviderCmd {
    /// Add a provider: `provider create openai --kind openai --key main=env:OPENAI_API_KEY`.
    Create {
        /// Name used in alias targets and in provider/model.
        name: String,
        #[command(flatten)]
        fields: ProviderFields,
    },
    /// Every provider (key secrets are never shown, only a hint).
    List,
    /// One provider.
    Get {
        /// Name or id.
        provider: String,
    },
    /// Change a provider; --key flags replace the whole key list when given.
    Update {
        /// Name or id.
        provider: String,
        #[command(flatten)]
        fields: ProviderFields,
        /// Stop using this key (by id) without deleting it. Repeatable.
        #[arg(long = "disable-key")]
        disable_keys: Vec<String>,
        /// Use this key again. Repeatable.
        #[arg(long = "enable-key")]
        enable_keys: Vec<String>,
    },
    /// Fails while aliases still use the provider.
    Delete {
        /// Name or id.
        provider: String,
    },
}

#[derive(Debug, Args)]
pub struct ProviderFields {
    /// openai, openai-compatible, anthropic, gemini or azure-openai.
    #[arg(long, value_parser = ["openai", "openai-compatible", "anthropic", "gemini", "azure-openai"])]
    kind: Option<String>,
    /// Default for openai, anthropic and gemini: their public API.
    #[arg(long)]
    base_url: Option<String>,
    /// API key as ID[*WEIGHT]=SECRET, where SECRET may be env:VAR or file:PATH
    /// to keep it out of shell history. Repeatable (a pool of keys).
    #[arg(long = "key", value_name = "ID[*WEIGHT]=SECRET")]
    keys: Vec<String>,
    /// Azure api-version or anthropic-version sent to the provider
    /// [default: 2024-10-21 for azure-openai, 2023-06-01 for anthropic].
    #[arg(long)]
    api_version: Option<String>,
    /// Price catalog namespace (default: by kind, or the provider name).
    #[arg(long)]
    pricing: Option<String>,
    /// Model offered for direct "provider/model" use and listed by /v1/models. Repeatable.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Longest wait for the provider's answer (the whole stream included) [default: 600000].
    #[arg(long)]
    request_timeout_ms: Option<u32>,
    /// Rest for a key after a 429 without Retry-After [default: 30000].
    #[arg(long)]
    cooldown_ms: Option<u32>,
    /// Extra request header NAME:VALUE, where VALUE may be env:VAR or file:PATH.
    /// Values are sealed like keys and shown only as a hint. Repeatable; replaces
    /// the whole list when given.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AliasCmd {
    /// Map a model name to targets: `alias create gpt-4o --target openai/gpt-4o --target azure/gpt-4o@-1`.
    Create {
        /// The model name clients send, e.g. gpt-4o or fast.
        name: String,
        #[command(flatten)]
        fields: AliasFields,
    },
    /// Every alias, with its targets' provider names.
    List,
    /// One alias.
    Get {
        /// Name or id.
        alias: String,
    },
    /// --target flags replace the whole target list when given.
    Update {
        /// Name or id.
        alias: String,
        #[command(flatten)]
        fields: AliasFields,
    },
    /// Clients asking for the alias get 404 model_not_found.
    Delete {
        /// Name or id.
        alias: String,
    },
}

#[derive(Debug, Args)]
pub struct AliasFields {
    /// PROVIDER/MODEL[*WEIGHT][@PRIORITY]: higher priorities first, lower ones are
    /// fallbacks; weights split traffic within a priority. Repeatable.
    #[arg(long = "target", value_name = "PROVIDER/MODEL[*W][@P]")]
    targets: Vec<String>,
    /// Extra attempts on a target after a 429/5xx/timeout before falling back [default: 0].
    #[arg(long)]
    retries: Option<u32>,
    /// First wait before a retry, doubled each time [default: 200].
    #[arg(long)]
    backoff_ms: Option<u32>,
    /// Free-form note for people.
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PriceCmd {
    /// The effective price list: built-in catalog plus overrides.
    List {
        /// Only this namespace, e.g. openai.
        #[arg(long, default_value = "")]
        pricing: String,
        /// Only models whose id contains this text.
        #[arg(long, default_value = "")]
        contains: String,
    },
    /// Set (override) a price:
    /// `price set openai/gpt-4o --input-per-mtok 2.5 --output-per-mtok 10 --cached-input-per-mtok 1.25`.
    Set {
        /// NAMESPACE/MODEL.
        name: String,
        /// USD per million input tokens.
        #[arg(long)]
        input_per_mtok: f64,
        /// USD per million output tokens.
        #[arg(long, default_value_t = 0.0)]
        output_per_mtok: f64,
        /// USD per million cached input tokens (default: the input price).
        #[arg(long)]
        cached_input_per_mtok: Option<f64>,
        /// Context window in tokens, for reference (0 = unknown).
        #[arg(long, default_value_t = 0)]
        context_window: u64,
        /// What the model is priced for.
        #[arg(long, default_value = "chat", value_parser = ["chat", "embedding"])]
        mode: String,
    },
    /// Remove an override; the built-in price applies again.
    Delete {
        /// NAMESPACE/MODEL.
        name: String,
    },
}

fn parse_key(spec: &str) -> Result<ProviderCredential, CtlError> {
    let (head, secret) =
        // Not echoed: without the `=`, the value may be the secret itself.
        spec.split_once('=').ok_or_else(|| CtlError::Usage("--key: expected ID=SECRET (the value is not shown)".into()))?;
    let (id, weight) = match head.split_once('*') {
        Some((id, w)) => {
            (id, w.parse().map_err(|_| CtlError::Usage(format!("--key {head:?}: weight must be a number")))?)
        }
        None => (head, 1),
    };
    // A bare secret with `=` in it (base64 padding) would put its first part
    // in the ID, which is stored and listed in clear: refused unshown unless
    // it looks like an ID.
    let looks_like_id = id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !looks_like_id {
        return Err(CtlError::Usage(
            "--key: the ID before `=` must be a short name (letters, digits, '.', '_', '-'); the value is not shown"
                .into(),
        ));
    }
    Ok(ProviderCredential { id: id.to_string(), secret: read_secret(secret, "--key")?, weight, ..Default::default() })
}

fn parse_kind(kind: &str) -> ProviderKind {
    match kind {
        "openai" => ProviderKind::Openai,
        "openai-compatible" => ProviderKind::OpenaiCompatible,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        "azure-openai" => ProviderKind::AzureOpenai,
        _ => ProviderKind::Unspecified,
    }
}

pub fn kind_name(kind: i32) -> &'static str {
    match ProviderKind::try_from(kind) {
        Ok(ProviderKind::Openai) => "openai",
        Ok(ProviderKind::OpenaiCompatible) => "openai-compatible",
        Ok(ProviderKind::Anthropic) => "anthropic",
        Ok(ProviderKind::Gemini) => "gemini",
        Ok(ProviderKind::AzureOpenai) => "azure-openai",
        _ => "unspecified",
    }
}

fn default_base_url(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Openai => Some("https://api.openai.com/v1"),
        ProviderKind::Anthropic => Some("https://api.anthropic.com"),
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
        _ => None,
    }
}

impl ProviderFields {
    fn apply_to(&self, p: &mut Provider) -> Result<(), CtlError> {
        if let Some(kind) = &self.kind {
            p.kind = parse_kind(kind) as i32;
        }
        if let Some(url) = &self.base_url {
            p.base_url = url.trim_end_matches('/').to_string();
        } else if p.base_url.is_empty() {
            let kind = ProviderKind::try_from(p.kind).unwrap_or(ProviderKind::Unspecified);
            p.base_url = default_base_url(kind)
                .ok_or_else(|| CtlError::Usage("--base-url is required for this kind of provider".into()))?
                .to_string();
        }
        if !self.keys.is_empty() {
            p.credentials = self.keys.iter().map(|k| parse_key(k)).collect::<Result<_, _>>()?;
        }
        if let Some(v) = &self.api_version {
            p.api_version = v.clone();
        }
        if let Some(v) = &self.pricing {
            p.pricing = v.clone();
        }
        if !self.models.is_empty() {
            p.models = self.models.clone();
        }
        if let Some(v) = self.request_timeout_ms {
            p.request_timeout_ms = v;
        }
        if let Some(v) = self.cooldown_ms {
            p.cooldown_ms = v;
        }
        if !self.headers.is_empty() {
            p.headers = self
                .headers
                .iter()
                .map(|h| {
                    let (name, value) = h
                        .split_once(':')
                        // Not echoed: the value may be a secret.
                        .ok_or_else(|| {
                            CtlError::Usage("--header: expected NAME:VALUE (the value is not shown)".into())
                        })?;
                    Ok(ProviderHeader {
                        name: name.trim().to_ascii_lowercase(),
                        value: read_secret(value.trim(), "--header")?,
                        ..Default::default()
                    })
                })
                .collect::<Result<_, CtlError>>()?;
        }
        Ok(())
    }
}

fn parse_target(spec: &str) -> Result<AliasTarget, CtlError> {
    let usage = |why: &str| CtlError::Usage(format!("--target {spec:?}: {why}"));
    let (rest, priority) = match spec.rsplit_once('@') {
        Some((rest, p)) => (rest, p.parse().map_err(|_| usage("priority after @ must be a number"))?),
        None => (spec, 0),
    };
    let (rest, weight) = match rest.rsplit_once('*') {
        Some((rest, w)) => (rest, w.parse().map_err(|_| usage("weight after * must be a number"))?),
        None => (rest, 1),
    };
    let (provider, model) = rest.split_once('/').ok_or_else(|| usage("expected PROVIDER/MODEL"))?;
    Ok(AliasTarget { provider_id: provider.to_string(), model: model.to_string(), weight, priority })
}

impl AliasFields {
    fn apply_to(&self, a: &mut ModelAlias) -> Result<(), CtlError> {
        if !self.targets.is_empty() {
            a.targets = self.targets.iter().map(|t| parse_target(t)).collect::<Result<_, _>>()?;
        }
        if let Some(v) = self.retries {
            a.retries = v;
        }
        if let Some(v) = self.backoff_ms {
            a.backoff_ms = v;
        }
        if let Some(v) = &self.description {
            a.description = v.clone();
        }
        Ok(())
    }
}

fn provider_json(p: &Provider) -> Value {
    json!({
        "id": id(&p.meta), "name": p.name, "kind": kind_name(p.kind), "base_url": p.base_url,
        "api_version": p.api_version, "pricing": p.pricing, "models": p.models,
        "request_timeout_ms": p.request_timeout_ms, "cooldown_ms": p.cooldown_ms,
        "credentials": p.credentials.iter().map(|c| json!({"id": c.id, "weight": c.weight, "disabled": c.disabled, "hint": c.hint})).collect::<Vec<_>>(),
        "headers": p.headers.iter().map(|h| json!({"name": h.name, "hint": h.hint})).collect::<Vec<_>>(),
    })
}

fn provider_rows(items: &[Provider]) -> Vec<Vec<String>> {
    let mut rows = vec![["NAME", "KIND", "BASE_URL", "KEYS", "HEADERS", "ID"].map(String::from).to_vec()];
    for p in items {
        let keys: Vec<String> = p
            .credentials
            .iter()
            .map(|c| format!("{}{}{}", c.id, c.hint, if c.disabled { " (disabled)" } else { "" }))
            .collect();
        let headers: Vec<String> = p.headers.iter().map(|h| format!("{}:{}", h.name, h.hint)).collect();
        rows.push(vec![
            p.name.clone(),
            kind_name(p.kind).into(),
            p.base_url.clone(),
            keys.join(" "),
            or_dash(headers.join(" ")),
            id(&p.meta),
        ]);
    }
    rows
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// Provider names by id, so aliases print the names operators typed.
type ProviderNames = std::collections::HashMap<String, String>;

async fn provider_names(ai: &mut AiClient, stale: bool) -> Result<ProviderNames, CtlError> {
    let providers = ai.list_providers(ListRequest { stale }).await?.into_inner().providers;
    Ok(providers.into_iter().map(|p| (id(&p.meta), p.name)).collect())
}

fn provider_name<'a>(names: &'a ProviderNames, provider_id: &'a str) -> &'a str {
    names.get(provider_id).map_or(provider_id, String::as_str)
}

fn alias_json(a: &ModelAlias, names: &ProviderNames) -> Value {
    json!({
        "id": id(&a.meta), "name": a.name, "retries": a.retries, "backoff_ms": a.backoff_ms, "description": a.description,
        "targets": a.targets.iter().map(|t| json!({
            "provider_id": t.provider_id, "provider": provider_name(names, &t.provider_id),
            "model": t.model, "weight": t.weight, "priority": t.priority,
        })).collect::<Vec<_>>(),
    })
}

fn alias_rows(items: &[ModelAlias], names: &ProviderNames) -> Vec<Vec<String>> {
    let mut rows = vec![["NAME", "TARGETS", "RETRIES", "ID"].map(String::from).to_vec()];
    for a in items {
        let targets: Vec<String> = a
            .targets
            .iter()
            .map(|t| format!("{}/{}*{}@{}", provider_name(names, &t.provider_id), t.model, t.weight.max(1), t.priority))
            .collect();
        rows.push(vec![a.name.clone(), targets.join(" "), a.retries.to_string(), id(&a.meta)]);
    }
    rows
}

fn usd_per_mtok(micros: u64) -> String {
    format!("{:.4}", micros as f64 / 1e6)
}

fn price_json(p: &ModelPrice, source: &str) -> Value {
    json!({
        "name": p.name, "mode": p.mode, "context_window": p.context_window,
        "input_per_mtok": p.input_micros_per_mtok as f64 / 1e6, "output_per_mtok": p.output_micros_per_mtok as f64 / 1e6,
        "cached_input_per_mtok": p.cached_input_micros_per_mtok as f64 / 1e6, "source": source,
    })
}

pub async fn provider_command(cmd: ProviderCmd, mut ai: AiClient, out: &Printer, stale: bool) -> Result<(), CtlError> {
    match cmd {
        ProviderCmd::Create { name, fields } => {
            if fields.kind.is_none() {
                return Err(CtlError::Usage("--kind is required".into()));
            }
            let mut p = Provider { name, ..Default::default() };
            fields.apply_to(&mut p)?;
            let created = ai.create_provider(p).await?.into_inner();
            out.one(provider_json(&created), || format!("created provider {} ({})", created.name, id(&created.meta)));
        }
        ProviderCmd::List => {
            let list = ai.list_providers(ListRequest { stale }).await?.into_inner().providers;
            out.list(list.iter().map(provider_json).collect(), provider_rows(&list));
        }
        ProviderCmd::Get { provider } => {
            let p = ai.get_provider(GetRequest { id_or_name: provider, stale }).await?.into_inner();
            out.list_one(provider_json(&p), provider_rows(std::slice::from_ref(&p)));
        }
        ProviderCmd::Update { provider, fields, disable_keys, enable_keys } => {
            let mut p = ai
                .get_provider(GetRequest { id_or_name: provider.clone(), stale: false })
                .await
                .map_err(|e| super::pre_read_failed(e, "provider", &provider))?
                .into_inner();
            fields.apply_to(&mut p)?;
            for c in &mut p.credentials {
                if disable_keys.contains(&c.id) {
                    c.disabled = true;
                }
                if enable_keys.contains(&c.id) {
                    c.disabled = false;
                }
            }
            let updated = ai.update_provider(p).await?.into_inner();
            out.one(provider_json(&updated), || format!("updated provider {}", updated.name));
        }
        ProviderCmd::Delete { provider } => {
            let r = ai.delete_provider(DeleteRequest { id_or_name: provider.clone() }).await?.into_inner();
            out.one(json!({"deleted": provider, "revision": r.revision}), || format!("deleted provider {provider}"));
        }
    }
    Ok(())
}

pub async fn alias_command(cmd: AliasCmd, mut ai: AiClient, out: &Printer, stale: bool) -> Result<(), CtlError> {
    match cmd {
        AliasCmd::Create { name, fields } => {
            let mut a = ModelAlias { name, ..Default::default() };
            fields.apply_to(&mut a)?;
            let created = ai.create_model_alias(a).await?.into_inner();
            let names = provider_names(&mut ai, false).await?;
            out.one(alias_json(&created, &names), || format!("created alias {} ({})", created.name, id(&created.meta)));
        }
        AliasCmd::List => {
            let list = ai.list_model_aliases(ListRequest { stale }).await?.into_inner().aliases;
            let names = provider_names(&mut ai, stale).await?;
            out.list(list.iter().map(|a| alias_json(a, &names)).collect(), alias_rows(&list, &names));
        }
        AliasCmd::Get { alias } => {
            let a = ai.get_model_alias(GetRequest { id_or_name: alias, stale }).await?.into_inner();
            let names = provider_names(&mut ai, stale).await?;
            out.list_one(alias_json(&a, &names), alias_rows(std::slice::from_ref(&a), &names));
        }
        AliasCmd::Update { alias, fields } => {
            let mut a = ai
                .get_model_alias(GetRequest { id_or_name: alias.clone(), stale: false })
                .await
                .map_err(|e| super::pre_read_failed(e, "alias", &alias))?
                .into_inner();
            fields.apply_to(&mut a)?;
            let updated = ai.update_model_alias(a).await?.into_inner();
            let names = provider_names(&mut ai, false).await?;
            out.one(alias_json(&updated, &names), || format!("updated alias {}", updated.name));
        }
        AliasCmd::Delete { alias } => {
            let r = ai.delete_model_alias(DeleteRequest { id_or_name: alias.clone() }).await?.into_inner();
            out.one(json!({"deleted": alias, "revision": r.revision}), || format!("deleted alias {alias}"));
        }
    }
    Ok(())
}

pub async fn price_command(cmd: PriceCmd, mut ai: AiClient, out: &Printer) -> Result<(), CtlError> {
    let micros = |usd: f64| -> Result<u64, CtlError> {
        if !usd.is_finite() || usd < 0.0 {
            return Err(CtlError::Usage(format!("price {usd} must be a non-negative number of USD")));
        }
        Ok((usd * 1e6).round() as u64)
    };
    match cmd {
        PriceCmd::List { pricing, contains } => {
            let r = ai.list_model_prices(ListModelPricesRequest { pricing, contains }).await?.into_inner();
            let mut rows = vec![
                ["MODEL", "MODE", "CONTEXT", "INPUT/M", "OUTPUT/M", "CACHED/M", "SOURCE"].map(String::from).to_vec(),
            ];
            let mut values = Vec::new();
            for m in &r.models {
                let p = m.price.clone().unwrap_or_default();
                values.push(price_json(&p, &m.source));
                rows.push(vec![
                    p.name.clone(),
                    p.mode.clone(),
                    p.context_window.to_string(),
                    usd_per_mtok(p.input_micros_per_mtok),
                    usd_per_mtok(p.output_micros_per_mtok),
                    usd_per_mtok(p.cached_input_micros_per_mtok),
                    m.source.clone(),
                ]);
            }
            out.list(values, rows);
        }
        PriceCmd::Set { name, input_per_mtok, output_per_mtok, cached_input_per_mtok, context_window, mode } => {
            let price = ModelPrice {
                meta: None,
                name,
                mode,
                context_window,
                input_micros_per_mtok: micros(input_per_mtok)?,
                output_micros_per_mtok: micros(output_per_mtok)?,
                cached_input_micros_per_mtok: cached_input_per_mtok.map(micros).transpose()?.unwrap_or(0),
            };
            let set = ai.put_model_price(price).await?.into_inner();
            let revision = set.meta.as_ref().map_or(0, |m| m.revision);
            out.one(price_json(&set, &format!("override {revision}")), || format!("price of {} set", set.name));
        }
        PriceCmd::Delete { name } => {
            let r = ai.delete_model_price(DeleteRequest { id_or_name: name.clone() }).await?.into_inner();
            out.one(json!({"deleted": name, "revision": r.revision}), || format!("price override {name} removed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_without_an_id_is_refused_without_echoing_it() {
        let error = parse_key("sk-live-0123456789abcdef").unwrap_err().to_string();
        assert!(!error.contains("sk-live"), "{error}");
        assert!(error.contains("ID=SECRET"), "{error}");
        let padded = parse_key("c2stbGl2ZS0wMTIz+/9=").unwrap_err().to_string();
        assert!(!padded.contains("c2stbGl2"), "{padded}");
        let kept = parse_key("main=").unwrap();
        assert_eq!((kept.id.as_str(), kept.secret.as_str()), ("main", ""), "an empty secret keeps the stored one");
    }
}
