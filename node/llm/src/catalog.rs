//! Model prices: the catalog compiled into the binary (`catalog.toml`) and the
//! arithmetic that turns a usage into an exact cost.
//!
//! Overrides replicated through the admin API are the node's business: it
//! looks a model up there first and falls back to [`Catalog::get`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

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

/// Prices in integer micro-dollars per million tokens (2.50 USD = 2_500_000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
    /// 0 = same as input.
    pub cached_input_micros_per_mtok: u64,
}

/// One model's list price, as the catalog ships it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPrice {
    /// `<pricing namespace>/<model>`, e.g. `openai/gpt-4o`.
    pub name: String,
    /// "chat" or "embedding".
    pub mode: String,
    pub context_window: u64,
    pub rates: Rates,
}

/// The built-in price list, keyed by `<namespace>/<model>`.
#[derive(Debug)]
pub struct Catalog {
    pub revision: String,
    entries: HashMap<String, ListPrice>,
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
                let price = ListPrice {
                    name: name.clone(),
                    mode: m.mode.unwrap_or_else(|| "chat".into()),
                    context_window: m.context_window,
                    rates: Rates {
                        input_micros_per_mtok: micros(m.input_per_mtok),
                        output_micros_per_mtok: micros(m.output_per_mtok),
                        cached_input_micros_per_mtok: m.cached_input_per_mtok.map(micros).unwrap_or(0),
                    },
                };
                (name, price)
            })
            .collect();
        Ok(Catalog { revision: file.version, entries })
    }

    pub fn get(&self, name: &str) -> Option<&ListPrice> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &ListPrice> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Exact cost in 10^-12 USD: a token at one micro-dollar per million tokens
/// costs one picodollar, so integer prices give integer costs. Cached input
/// tokens are part of `input` and billed at the cached price when there is one.
pub fn cost_picodollars(rates: Rates, input: u64, cached_input: u64, output: u64) -> u64 {
    let cached = cached_input.min(input);
    let cached_price = if rates.cached_input_micros_per_mtok > 0 {
        rates.cached_input_micros_per_mtok
    } else {
        rates.input_micros_per_mtok
    };
    let total = u128::from(input - cached) * u128::from(rates.input_micros_per_mtok)
        + u128::from(cached) * u128::from(cached_price)
        + u128::from(output) * u128::from(rates.output_micros_per_mtok);
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
        assert_eq!(p.rates.input_micros_per_mtok, 2_500_000);
        assert_eq!(p.rates.output_micros_per_mtok, 10_000_000);
    }

    #[test]
    fn entries_default_to_chat_and_a_missing_cached_price_is_zero() {
        let catalog = Catalog::parse(
            "version = \"t1\"\n[[model]]\nprovider = \"openai\"\nmodel = \"m\"\ncontext_window = 1\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n",
        )
        .unwrap();
        assert_eq!(catalog.revision, "t1");
        let p = catalog.get("openai/m").expect("keyed by namespace/model");
        assert_eq!((p.mode.as_str(), p.context_window), ("chat", 1));
        let rates = Rates { input_micros_per_mtok: 1_000_000, output_micros_per_mtok: 2_000_000, ..Default::default() };
        assert_eq!(p.rates, rates);
        assert!(catalog.get("openai/other").is_none());
    }

    #[test]
    fn cost_is_usage_times_price_with_cached_tokens_at_their_own_price() {
        let rates = Rates {
            input_micros_per_mtok: 2_500_000,
            output_micros_per_mtok: 10_000_000,
            cached_input_micros_per_mtok: 1_250_000,
        };
        // 1000 input (200 cached) + 500 output:
        // 800 x 2.5 + 200 x 1.25 + 500 x 10 = 2000 + 250 + 5000 micro-dollars per million = 7250 / 1e6 USD
        assert_eq!(cost_picodollars(rates, 1000, 200, 500), 7_250_000_000);
        assert!((dollars(7_250_000_000) - 0.00725).abs() < 1e-12);
        let no_cache_rates = Rates { cached_input_micros_per_mtok: 0, ..rates };
        assert_eq!(cost_picodollars(no_cache_rates, 1000, 200, 0), 2_500_000_000);
        assert_eq!(cost_picodollars(Rates::default(), 10, 0, 10), 0);
    }
}
