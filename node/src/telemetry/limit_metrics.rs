//! Prometheus series of rate limits and budgets, labelled by limit name
//! (bounded by configuration, never by client input: a bucket such as a
//! client address is not a label).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
}

#[derive(Clone, Default)]
pub struct LimitMetrics {
    admitted: Family<LimitLabels, Counter>,
    refused: Family<LimitLabels, Counter>,
    too_large: Family<LimitLabels, Counter>,
    granted_units: Family<LimitLabels, Counter>,
    stranded_units: Family<LimitLabels, Counter>,
    returned_units: Family<LimitLabels, Counter>,
    budget_warnings: Family<LimitLabels, Counter>,
    /// Lease commands this node proposed, and those that failed.
    pub lease_asks: Counter,
    pub lease_ask_failures: Counter,
}

/// One limit's counters, looked up once per lease, not per request.
#[derive(Clone)]
pub struct LimitCounters {
    pub admitted: Counter,
    pub refused: Counter,
    pub granted_units: Counter,
    pub stranded_units: Counter,
    pub returned_units: Counter,
    pub budget_warnings: Counter,
}

impl LimitMetrics {
    pub fn register(registry: &mut Registry) -> LimitMetrics {
        let metrics = LimitMetrics::default();
        let families = [
            ("limit_admitted", "Requests a limit admitted on this node", &metrics.admitted),
            ("limit_refused", "Requests a limit refused on this node (429)", &metrics.refused),
            (
                "limit_too_large",
                "Requests refused on this node because they alone need more than a limit's whole amount (400): \
                 a client's max_tokens, or a default reservation larger than a small budget",
                &metrics.too_large,
            ),
            ("limit_granted_units", "Units leased to this node", &metrics.granted_units),
            (
                "limit_stranded_units",
                "Units leased to this node that became void unspent (their window passed, or a grant came late)",
                &metrics.stranded_units,
            ),
            ("limit_returned_units", "Units this node gave back unspent", &metrics.returned_units),
            ("budget_warnings", "Responses that carried a budget's soft-threshold warning", &metrics.budget_warnings),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        registry.register("limit_lease_asks", "Lease commands this node proposed", metrics.lease_asks.clone());
        registry.register(
            "limit_lease_ask_failures",
            "Lease commands that failed (no quorum, timeout)",
            metrics.lease_ask_failures.clone(),
        );
        metrics
    }

    /// The too-large refusals' counter of `limit` alone (a refused request
    /// may have no lease, and so no `LimitCounters`, to count it on).
    pub fn too_large_of(&self, limit: &str) -> Counter {
        self.too_large.get_or_create(&LimitLabels { limit: limit.to_string() }).clone()
    }

    pub fn of(&self, limit: &str) -> LimitCounters {
        let labels = LimitLabels { limit: limit.to_string() };
        // Counted through `too_large_of` (a too-large request takes no
        // lease); created here so that the series shows 0 beside the others.
        drop(self.too_large.get_or_create(&labels));
        LimitCounters {
            admitted: self.admitted.get_or_create(&labels).clone(),
            refused: self.refused.get_or_create(&labels).clone(),
            granted_units: self.granted_units.get_or_create(&labels).clone(),
            stranded_units: self.stranded_units.get_or_create(&labels).clone(),
            returned_units: self.returned_units.get_or_create(&labels).clone(),
            budget_warnings: self.budget_warnings.get_or_create(&labels).clone(),
        }
    }
}
