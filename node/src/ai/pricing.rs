//! Prices as the node resolves them: an override replicated through the admin
//! API (`ModelPrice`) wins over the catalog compiled into the binary
//! (`tollgate_llm::catalog`), and a usage record cites the price it was
//! costed at (`PriceRef`). The catalog and the cost arithmetic know nothing of
//! the replicated entities; this module converts between the two.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_llm::catalog::{self, Catalog, ListPrice, Rates};
use tollgate_proto::config::v1::{ModelPrice, PriceRef};

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
        let rates = Rates {
            input_micros_per_mtok: p.input_micros_per_mtok,
            output_micros_per_mtok: p.output_micros_per_mtok,
            cached_input_micros_per_mtok: p.cached_input_micros_per_mtok,
        };
        return price_ref(format!("override {revision}"), &p.name, rates);
    }
    if let Some(p) = catalog.get(&name) {
        return price_ref(format!("catalog {}", catalog.revision), &p.name, p.rates);
    }
    PriceRef { source: "none".into(), name, ..Default::default() }
}

fn price_ref(source: String, name: &str, rates: Rates) -> PriceRef {
    PriceRef {
        source,
        name: name.to_owned(),
        input_micros_per_mtok: rates.input_micros_per_mtok,
        output_micros_per_mtok: rates.output_micros_per_mtok,
        cached_input_micros_per_mtok: rates.cached_input_micros_per_mtok,
    }
}

/// A catalog entry in the admin API's shape. It has no `meta`: it was never
/// written through the API.
pub fn model_price(p: &ListPrice) -> ModelPrice {
    ModelPrice {
        meta: None,
        name: p.name.clone(),
        mode: p.mode.clone(),
        context_window: p.context_window,
        input_micros_per_mtok: p.rates.input_micros_per_mtok,
        output_micros_per_mtok: p.rates.output_micros_per_mtok,
        cached_input_micros_per_mtok: p.rates.cached_input_micros_per_mtok,
    }
}

/// Exact cost in picodollars of a usage at the price its record cites
/// ([`catalog::cost_picodollars`]).
pub fn cost_picodollars(price: &PriceRef, input: u64, cached_input: u64, output: u64) -> u64 {
    let rates = Rates {
        input_micros_per_mtok: price.input_micros_per_mtok,
        output_micros_per_mtok: price.output_micros_per_mtok,
        cached_input_micros_per_mtok: price.cached_input_micros_per_mtok,
    };
    catalog::cost_picodollars(rates, input, cached_input, output)
}

#[cfg(test)]
mod tests {
    use tollgate_proto::config::v1::Meta;

    use super::*;

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
        let meta = Meta { revision: 42, ..Default::default() };
        let custom =
            ModelPrice { meta: Some(meta), name: "openai/m".into(), output_micros_per_mtok: 5, ..Default::default() };
        overrides.insert("openai/m".to_string(), Arc::new(custom));
        let found = price_for(&overrides, &catalog, "openai", "m");
        assert_eq!((found.source.as_str(), found.output_micros_per_mtok), ("override 42", 5));
        let missing = price_for(&overrides, &catalog, "openai", "other");
        assert_eq!(missing.source, "none");
        assert_eq!(cost_picodollars(&missing, 10, 0, 10), 0);
    }

    #[test]
    fn a_cited_price_costs_what_the_catalog_arithmetic_says() {
        let price = PriceRef {
            input_micros_per_mtok: 2_500_000,
            output_micros_per_mtok: 10_000_000,
            cached_input_micros_per_mtok: 1_250_000,
            ..Default::default()
        };
        assert_eq!(cost_picodollars(&price, 1000, 200, 500), 7_250_000_000);
    }

    #[test]
    fn catalog_entries_list_in_the_admin_shape() {
        let p = Catalog::builtin().get("openai/gpt-4o").expect("gpt-4o is in the catalog");
        let listed = model_price(p);
        assert_eq!((listed.name.as_str(), listed.mode.as_str(), listed.meta), ("openai/gpt-4o", "chat", None));
        assert_eq!((listed.input_micros_per_mtok, listed.output_micros_per_mtok), (2_500_000, 10_000_000));
        assert_eq!(listed.context_window, p.context_window);
    }
}
