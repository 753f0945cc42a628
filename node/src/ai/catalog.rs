//! Model prices: the catalog compiled into the binary (`catalog.toml`),
//! overridden by `ModelPrice` entries replicated through the admin API.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use tollgate_proto::config::v1::{ModelPrice, PriceRef};

const CATALOG_TOML: &str = include_str!("catalog.toml");

#[derive(Debug, Deserialize)]
struct CatalogFile {
    version: String,
    model: Vec<CatalogEntry>,
}

#[derive(Debug, Deserialize)]
struct CatalogEntry {
    provider: String,
    model: String,
    #[serde(default)]
    mode: Option<String>,
    context_window: u64,
    #[serde(default)]
    input_per_mtok: f64,
    #[serde(default)]
    output_per_mtok: f64,
    #[serde(default)]
    cached_input_per_mtok: Option<f64>,
}

/// The built-in price list, keyed by "<namespace>/<model>".
#[derive(Debug)]
pub struct Catalog {
    pub revision: String,
    entries: HashMap<String, ModelPrice>,
}

/// USD per million tokens, as written in the catalog, to integer micro-dollars.
fn micros(usd: f64) -> u64 {
    (usd * 1_000_000.0).round().max(0.0) as u64
}

impl Catalog {
    /// The catalog compiled into this binary. It is checked by a test, so a
    /// parse failure here is a build defect, not an operator error.
    pub fn builtin() -> &'static Arc<Catalog> {
        static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
        CATALOG.get_or_init(|| Arc::new(Catalog::parse(CATALOG_TOML).expect("the built-in model catalog parses")))
    }

    pub fn parse(text: &str) -> Result<Catalog, toml::de::Error> {
        let file: CatalogFile = toml::from_str(text)?;
        let entries = file
            .model
            .into_iter()
            .map(|m| {
                let name = format!("{}/{}", m.provider, m.model);
                let price = ModelPrice {
                    meta: None,
                    name: name.clone(),
                    mode: m.mode.unwrap_or_else(|| "chat".into()),
                    context_window: m.context_window,
                    input_micros_per_mtok: micros(m.input_per_mtok),
                    output_micros_per_mtok: micros(m.output_per_mtok),
                    cached_input_micros_per_mtok: m.cached_input_per_mtok.map(micros).unwrap_or(0),
                };
                (name, price)
            })
            .collect();
        Ok(Catalog { revision: file.version, entries })
    }

    pub fn get(&self, name: &str) -> Option<&ModelPrice> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &ModelPrice> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Finds the price for `namespace/model`: a replicated override first, then
/// the catalog. Returns the reference a usage record cites.
pub fn price_for(
    overrides: &HashMap<String, Arc<ModelPrice>>,
    catalog: &Catalog,
    namespace: &str,
    model: &str,
) -> PriceRef {
    let name = format!("{namespace}/{model}");
    if let Some(p) = overrides.get(&name) {
        let revision = p.meta.as_ref().map_or(0, |m| m.revision);
        return price_ref(format!("override {revision}"), p);
    }
    if let Some(p) = catalog.get(&name) {
        return price_ref(format!("catalog {}", catalog.revision), p);
    }
    PriceRef { source: "none".into(), name, ..Default::default() }
}

fn price_ref(source: String, p: &ModelPrice) -> PriceRef {
    PriceRef {
        source,
        name: p.name.clone(),
        input_micros_per_mtok: p.input_micros_per_mtok,
        output_micros_per_mtok: p.output_micros_per_mtok,
        cached_input_micros_per_mtok: p.cached_input_micros_per_mtok,
    }
}

/// Exact cost in 10^-12 USD: a token at one micro-dollar per million tokens
/// costs one picodollar, so integer prices give integer costs. Cached input
/// tokens are part of `input` and billed at the cached price when there is one.
pub fn cost_picodollars(price: &PriceRef, input: u64, cached_input: u64, output: u64) -> u64 {
    let cached = cached_input.min(input);
    let cached_price = if price.cached_input_micros_per_mtok > 0 {
        price.cached_input_micros_per_mtok
    } else {
        price.input_micros_per_mtok
    };
    let total = u128::from(input - cached) * u128::from(price.input_micros_per_mtok)
        + u128::from(cached) * u128::from(cached_price)
        + u128::from(output) * u128::from(price.output_micros_per_mtok);
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// Picodollars as a dollar amount for humans and Prometheus.
pub fn dollars(picodollars: u64) -> f64 {
    picodollars as f64 / 1e12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_parses_and_converts_prices_exactly() {
        let catalog = Catalog::builtin();
        assert!(!catalog.is_empty());
        let p = catalog.get("openai/gpt-4o").expect("gpt-4o is in the catalog");
        assert_eq!(p.input_micros_per_mtok, 2_500_000);
        assert_eq!(p.output_micros_per_mtok, 10_000_000);
    }

    #[test]
    fn cost_is_usage_times_price_with_cached_tokens_at_their_own_price() {
        let price = PriceRef {
            input_micros_per_mtok: 2_500_000,
            output_micros_per_mtok: 10_000_000,
            cached_input_micros_per_mtok: 1_250_000,
            ..Default::default()
        };
        // 1000 input (200 cached) + 500 output:
        // 800 x 2.5 + 200 x 1.25 + 500 x 10 = 2000 + 250 + 5000 micro-dollars per million = 7250 / 1e6 USD
        assert_eq!(cost_picodollars(&price, 1000, 200, 500), 7_250_000_000);
        assert!((dollars(7_250_000_000) - 0.00725).abs() < 1e-12);
        let no_cache_price = PriceRef { cached_input_micros_per_mtok: 0, ..price };
        assert_eq!(cost_picodollars(&no_cache_price, 1000, 200, 0), 2_500_000_000);
    }

    #[test]
    fn overrides_win_over_the_catalog_and_unknown_models_cost_nothing() {
        let catalog = Catalog::parse(
            "version = \"t1\"\n[[model]]\nprovider = \"openai\"\nmodel = \"m\"\ncontext_window = 1\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n",
        )
        .unwrap();
        let mut overrides = HashMap::new();
        let found = price_for(&overrides, &catalog, "openai", "m");
        assert_eq!(found.source, "catalog t1");
        assert_eq!(found.output_micros_per_mtok, 2_000_000);
        let meta = tollgate_proto::config::v1::Meta { revision: 42, ..Default::default() };
        let custom =
            ModelPrice { meta: Some(meta), name: "openai/m".into(), output_micros_per_mtok: 5, ..Default::default() };
        overrides.insert("openai/m".to_string(), Arc::new(custom));
        let found = price_for(&overrides, &catalog, "openai", "m");
        assert_eq!((found.source.as_str(), found.output_micros_per_mtok), ("override 42", 5));
        let missing = price_for(&overrides, &catalog, "openai", "other");
        assert_eq!(missing.source, "none");
        assert_eq!(cost_picodollars(&missing, 10, 0, 10), 0);
    }
}
