//! The AI gateway's part of the data-plane snapshot: providers with their
//! keys opened, aliases resolved to providers, price overrides; and the
//! node-lifetime parts (ledger, cooldowns, HTTP client) in [`AiShared`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tollgate_llm::catalog::Catalog;
use tollgate_llm::provider::{self, ProviderAdapter, ProviderKind};
use tollgate_proto::config::v1::{ModelPrice, PriceRef, Provider, ProviderKind as ProtoKind};
use tollgate_raft::GatewayState;
use tollgate_raft::secrets::{SecretBox, credential_context, provider_header_context};

use super::cooldown::Cooldowns;
use super::pricing;
use crate::plumbing::{PooledTarget, ProviderClients};
use crate::usage::UsageLedger;

/// Lives as long as the node.
pub struct AiShared {
    pub ledger: Arc<UsageLedger>,
    pub cooldowns: Cooldowns,
    /// Plain-HTTP providers through the request-driven pool, https ones with the system's roots.
    pub clients: ProviderClients,
    pub catalog: &'static Arc<Catalog>,
}

pub struct CompiledCredential {
    pub id: String,
    pub secret: String,
    pub weight: u32,
}

pub struct CompiledProvider {
    pub id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub adapter: &'static dyn ProviderAdapter,
    pub base_url: String,
    /// Where the request-driven pool connects for this provider.
    pub pooled: Option<PooledTarget>,
    pub api_version: Option<String>,
    /// Enabled keys whose secret opened.
    pub credentials: Vec<CompiledCredential>,
    /// Configured without keys (a local vLLM or Ollama): requests carry none.
    pub keyless: bool,
    pub request_timeout: Duration,
    pub cooldown: Duration,
    pub headers: Vec<(String, String)>,
    pub pricing: String,
    pub models: Vec<String>,
}

pub struct CompiledTarget {
    pub provider: Arc<CompiledProvider>,
    pub model: String,
    pub weight: u32,
    pub priority: i32,
}

pub struct CompiledAlias {
    pub name: String,
    pub targets: Vec<CompiledTarget>,
    pub retries: u32,
    pub backoff: Duration,
}

#[derive(Default)]
pub struct AiSnapshot {
    /// By id.
    pub providers: HashMap<String, Arc<CompiledProvider>>,
    /// The same providers by name, for direct `provider/model` requests.
    pub providers_by_name: HashMap<String, Arc<CompiledProvider>>,
    pub aliases: HashMap<String, Arc<CompiledAlias>>,
    pub prices: HashMap<String, Arc<ModelPrice>>,
}

/// One place to send the request, in the order they are tried.
#[derive(Clone)]
pub struct Candidate {
    pub provider: Arc<CompiledProvider>,
    pub model: String,
}

pub struct Plan {
    pub candidates: Vec<Candidate>,
    pub retries: u32,
    pub backoff: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error(
        "the model `{0}` does not exist or you do not have access to it; GET /v1/models lists the models you may use"
    )]
    UnknownModel(String),
    #[error("your API key may not use the model `{0}`; ask an operator to add it to the key's allowed models")]
    NotAllowed(String),
    #[error("the model `{0}` names a provider but no model; send `provider/model`, e.g. `openai/gpt-4o-mini`")]
    NoModel(String),
}

fn kind_of(p: &Provider) -> ProviderKind {
    match ProtoKind::try_from(p.kind).unwrap_or(ProtoKind::Unspecified) {
        ProtoKind::Anthropic => ProviderKind::Anthropic,
        ProtoKind::Gemini => ProviderKind::Gemini,
        ProtoKind::AzureOpenai => ProviderKind::AzureOpenAi,
        ProtoKind::OpenaiCompatible => ProviderKind::OpenAiCompatible,
        _ => ProviderKind::OpenAi,
    }
}

fn default_pricing(p: &Provider, kind: ProviderKind) -> String {
    if !p.pricing.is_empty() {
        return p.pricing.clone();
    }
    match kind {
        ProviderKind::OpenAi => "openai".into(),
        ProviderKind::Anthropic => "anthropic".into(),
        ProviderKind::Gemini => "gemini".into(),
        ProviderKind::AzureOpenAi => "azure".into(),
        ProviderKind::OpenAiCompatible => p.name.clone(),
    }
}

fn millis_or(ms: u32, default_ms: u64) -> Duration {
    Duration::from_millis(if ms == 0 { default_ms } else { u64::from(ms) })
}

impl AiSnapshot {
    /// `secrets` opens the provider credentials and header values sealed at rest.
    pub fn compile(state: &GatewayState, secrets: &SecretBox) -> AiSnapshot {
        let providers: HashMap<String, Arc<CompiledProvider>> = state
            .providers()
            .map(|p| {
                let id = p.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                let kind = kind_of(p);
                let credentials = p
                    .credentials
                    .iter()
                    .filter(|c| !c.disabled)
                    .filter_map(|c| match secrets.open(&credential_context(&id, &c.id), &c.sealed_secret) {
                        Ok(secret) => Some(CompiledCredential { id: c.id.clone(), secret, weight: c.weight.max(1) }),
                        Err(error) => {
                            tracing::error!(provider = %p.name, credential = %c.id, %error, "provider key unusable");
                            None
                        }
                    })
                    .collect();
                let compiled = CompiledProvider {
                    id: id.clone(),
                    name: p.name.clone(),
                    kind,
                    adapter: provider::adapter(kind),
                    base_url: p.base_url.trim_end_matches('/').to_string(),
                    pooled: PooledTarget::from_base_url(&p.base_url),
                    api_version: Some(p.api_version.clone()).filter(|v| !v.is_empty()),
                    credentials,
                    keyless: p.credentials.is_empty(),
                    // Long completions and reasoning models can take minutes before answering.
                    request_timeout: millis_or(p.request_timeout_ms, 600_000),
                    cooldown: millis_or(p.cooldown_ms, 30_000),
                    headers: open_headers(p, &id, secrets),
                    pricing: default_pricing(p, kind),
                    models: p.models.clone(),
                };
                (id, Arc::new(compiled))
            })
            .collect();
        let aliases = state
            .model_aliases()
            .map(|a| {
                let targets = a
                    .targets
                    .iter()
                    .filter_map(|t| {
                        Some(CompiledTarget {
                            provider: providers.get(&t.provider_id)?.clone(),
                            model: t.model.clone(),
                            weight: t.weight.max(1),
                            priority: t.priority,
                        })
                    })
                    .collect();
                let alias = CompiledAlias {
                    name: a.name.clone(),
                    targets,
                    retries: a.retries,
                    backoff: millis_or(a.backoff_ms, 200),
                };
                (a.name.clone(), Arc::new(alias))
            })
            .collect();
        let prices = state.model_prices().map(|p| (p.name.clone(), p.clone())).collect();
        let providers_by_name = providers.values().map(|p| (p.name.clone(), p.clone())).collect();
        AiSnapshot { providers, providers_by_name, aliases, prices }
    }

    pub fn provider_named(&self, name: &str) -> Option<&Arc<CompiledProvider>> {
        self.providers_by_name.get(name)
    }

    /// Where a request for `requested` goes: an alias's targets (higher
    /// priority first, weighted order within a priority), or `provider/model`.
    pub fn plan(&self, requested: &str, allowed: &[String]) -> Result<Plan, PlanError> {
        if !model_allowed(allowed, requested) {
            return Err(PlanError::NotAllowed(requested.to_string()));
        }
        if let Some(alias) = self.aliases.get(requested).filter(|a| !a.targets.is_empty()) {
            return Ok(Plan {
                candidates: order_targets(&alias.targets),
                retries: alias.retries,
                backoff: alias.backoff,
            });
        }
        let (provider, model) =
            requested.split_once('/').ok_or_else(|| PlanError::UnknownModel(requested.to_string()))?;
        // `openai/` is a mistake of the caller's, answered before any provider is asked.
        if model.trim().is_empty() {
            return Err(PlanError::NoModel(requested.to_string()));
        }
        let provider = self.provider_named(provider).ok_or_else(|| PlanError::UnknownModel(requested.to_string()))?;
        if !provider.models.is_empty() && !provider.models.iter().any(|m| m == model) {
            return Err(PlanError::UnknownModel(requested.to_string()));
        }
        Ok(Plan {
            candidates: vec![Candidate { provider: provider.clone(), model: model.to_string() }],
            retries: 0,
            backoff: Duration::from_millis(200),
        })
    }

    /// Model names a key may use: aliases and the providers' listed models.
    pub fn visible_models(&self, allowed: &[String]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .aliases
            .values()
            .map(|a| (a.name.clone(), "tollgate".to_string()))
            .chain(
                self.providers
                    .values()
                    .flat_map(|p| p.models.iter().map(|m| (format!("{}/{m}", p.name), p.name.clone()))),
            )
            .filter(|(name, _)| model_allowed(allowed, name))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn price(&self, catalog: &Catalog, provider: &CompiledProvider, model: &str) -> PriceRef {
        pricing::price_for(&self.prices, catalog, &provider.pricing, model)
    }
}

/// A provider's extra headers with their values opened. A value an earlier
/// version stored in plain text is used as it is; one that does not open
/// (sealed by another cluster, or corrupt) is left out and logged, never
/// sent as ciphertext.
fn open_headers(p: &Provider, provider_id: &str, secrets: &SecretBox) -> Vec<(String, String)> {
    p.headers
        .iter()
        .filter_map(|h| {
            // Refused at admission; one an earlier version stored is left
            // out: framing, connection and Host are the gateway's own.
            if tollgate_raft::is_framing_header(&h.name) {
                tracing::warn!(
                    provider = %p.name, header = %h.name,
                    "provider header not sent: the gateway sets it; give the provider's headers again without it (`tollgate ctl provider update --header ...`)"
                );
                return None;
            }
            if h.sealed_value.is_empty() {
                return Some((h.name.clone(), h.value.clone()));
            }
            match secrets.open(&provider_header_context(provider_id, &h.name), &h.sealed_value) {
                Ok(value) => Some((h.name.clone(), value)),
                Err(error) => {
                    tracing::error!(
                        provider = %p.name, header = %h.name, %error,
                        "provider header unusable; set it again with `tollgate ctl provider update`"
                    );
                    None
                }
            }
        })
        .collect()
}

/// Empty = every model; a trailing `*` matches a prefix.
pub fn model_allowed(allowed: &[String], model: &str) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => p == model,
        })
}

/// Priority tiers, highest first; inside a tier a weighted random order, so
/// weights split traffic and the rest of the tier are fallbacks.
fn order_targets(targets: &[CompiledTarget]) -> Vec<Candidate> {
    let mut rng = rand::rng();
    let mut priorities: Vec<i32> = targets.iter().map(|t| t.priority).collect();
    priorities.sort_unstable_by(|a, b| b.cmp(a));
    priorities.dedup();
    let mut out = Vec::with_capacity(targets.len());
    for priority in priorities {
        let mut tier: Vec<&CompiledTarget> = targets.iter().filter(|t| t.priority == priority).collect();
        while !tier.is_empty() {
            let total: u64 = tier.iter().map(|t| u64::from(t.weight)).sum();
            let mut pick = rng.random_range(0..total);
            let index = tier
                .iter()
                .position(|t| {
                    let w = u64::from(t.weight);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap_or(0);
            let t = tier.remove(index);
            out.push(Candidate { provider: t.provider.clone(), model: t.model.clone() });
        }
    }
    out
}

/// A usable key of `provider`, weighted, skipping resting ones. None when
/// every key rests (or the provider needs none: then an empty secret).
pub fn pick_credential<'p>(provider: &'p CompiledProvider, cooldowns: &Cooldowns) -> Option<&'p CompiledCredential> {
    let ready: Vec<&CompiledCredential> =
        provider.credentials.iter().filter(|c| !cooldowns.is_resting(&provider.id, &c.id)).collect();
    let total: u64 = ready.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut pick = rand::rng().random_range(0..total);
    ready.into_iter().find(|c| {
        let w = u64::from(c.weight);
        if pick < w {
            true
        } else {
            pick -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(id: &str, keys: &[(&str, u32)]) -> Arc<CompiledProvider> {
        Arc::new(CompiledProvider {
            id: id.into(),
            name: id.into(),
            kind: ProviderKind::OpenAi,
            adapter: provider::adapter(ProviderKind::OpenAi),
            base_url: "http://127.0.0.1:1".into(),
            pooled: None,
            api_version: None,
            keyless: keys.is_empty(),
            credentials: keys
                .iter()
                .map(|(k, w)| CompiledCredential { id: k.to_string(), secret: format!("sk-{k}"), weight: *w })
                .collect(),
            request_timeout: Duration::from_secs(1),
            cooldown: Duration::from_secs(1),
            headers: vec![],
            pricing: "openai".into(),
            models: vec!["listed".into()],
        })
    }

    #[test]
    fn higher_priorities_come_first_and_weights_split_a_tier() {
        let (a, b, c) = (provider("a", &[]), provider("b", &[]), provider("c", &[]));
        let targets = vec![
            CompiledTarget { provider: c.clone(), model: "m".into(), weight: 1, priority: -1 },
            CompiledTarget { provider: a.clone(), model: "m".into(), weight: 3, priority: 0 },
            CompiledTarget { provider: b.clone(), model: "m".into(), weight: 1, priority: 0 },
        ];
        let mut first_a = 0;
        for _ in 0..4000 {
            let order = order_targets(&targets);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2].provider.id, "c", "the fallback tier is last");
            first_a += usize::from(order[0].provider.id == "a");
        }
        // 3:1 weights: a leads ~75% of the time (generous bounds, 4000 draws).
        assert!((2700..3300).contains(&first_a), "a first {first_a} times of 4000");
    }

    #[test]
    fn direct_models_need_a_known_provider_and_a_listed_model() {
        let mut snap = AiSnapshot::default();
        let a = provider("a", &[("k", 1)]);
        snap.providers.insert("a".into(), a.clone());
        snap.providers_by_name.insert("a".into(), a);
        assert_eq!(snap.plan("a/listed", &[]).unwrap().candidates[0].model, "listed");
        assert!(matches!(snap.plan("a/other", &[]), Err(PlanError::UnknownModel(_))));
        assert!(matches!(snap.plan("nobody/listed", &[]), Err(PlanError::UnknownModel(_))));
        assert!(matches!(snap.plan("gpt-4o", &[]), Err(PlanError::UnknownModel(_))));
        assert!(matches!(snap.plan("a/listed", &["b/*".into()]), Err(PlanError::NotAllowed(_))));
        assert_eq!(snap.plan("a/", &[]).err(), Some(PlanError::NoModel("a/".into())));
        assert_eq!(snap.plan("a/ ", &[]).err(), Some(PlanError::NoModel("a/ ".into())));
        assert!(snap.plan("a/listed", &["a/*".into()]).is_ok());
        assert_eq!(snap.visible_models(&[]), vec![("a/listed".to_string(), "a".to_string())]);
        assert!(snap.visible_models(&["gpt-*".into()]).is_empty());
    }

    #[test]
    fn sealed_header_values_are_opened_and_legacy_plain_text_still_works() {
        use tollgate_proto::config::v1::ProviderHeader;
        let secrets = SecretBox::from_key_material(b"cluster");
        let sealed = secrets.seal(&provider_header_context("p1", "x-auth"), "Bearer live-1").unwrap();
        let other_cluster = SecretBox::from_key_material(b"other").seal("x", "y").unwrap();
        let p = Provider {
            name: "p".into(),
            headers: vec![
                ProviderHeader { name: "x-auth".into(), sealed_value: sealed, ..Default::default() },
                ProviderHeader { name: "x-legacy".into(), value: "plain".into(), ..Default::default() },
                ProviderHeader { name: "x-broken".into(), sealed_value: other_cluster, ..Default::default() },
                // Stored by an earlier version; admission now refuses them.
                ProviderHeader { name: "Host".into(), value: "evil.example".into(), ..Default::default() },
                ProviderHeader { name: "transfer-encoding".into(), value: "chunked".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        assert_eq!(
            open_headers(&p, "p1", &secrets),
            vec![("x-auth".to_string(), "Bearer live-1".to_string()), ("x-legacy".to_string(), "plain".to_string())],
            "a value that does not open is left out, never sent sealed; nor is a framing or Host header"
        );
    }

    #[test]
    fn resting_keys_are_skipped_and_weights_are_honoured() {
        let p = provider("p", &[("k1", 1), ("k2", 1)]);
        let cooldowns = Cooldowns::default();
        cooldowns.rest("p", "k1", Duration::from_secs(3600));
        for _ in 0..50 {
            assert_eq!(pick_credential(&p, &cooldowns).unwrap().id, "k2");
        }
        cooldowns.rest("p", "k2", Duration::from_secs(3600));
        assert!(pick_credential(&p, &cooldowns).is_none());
    }
}
