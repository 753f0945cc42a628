//! Rules of the AI gateway's entities: providers, model aliases and prices.

use tollgate_proto::config::v1::{ModelAlias, ModelPrice, Provider};

use super::{Change, Rules};
use crate::error::ApplyError;
use crate::state::GatewayState;
use crate::validate_ai;

impl Rules for Provider {
    fn validate(&self, _state: &GatewayState) -> Result<(), ApplyError> {
        validate_ai::provider(self)
    }

    /// An alias may not lead to a missing provider. Scanning the aliases is
    /// O(aliases), which a rare delete can afford.
    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        let users: Vec<&str> = state
            .model_aliases()
            .filter(|a| a.targets.iter().any(|t| t.provider_id == id))
            .map(|a| a.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApplyError::FailedPrecondition(format!(
                "provider {id} is used by model alias(es) {}; delete or re-point them first",
                users.join(", ")
            )));
        }
        Ok(Vec::new())
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;
        use tollgate_proto::config::v1::{ProviderCredential, ProviderKind};

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name(), any::<bool>(), any::<bool>())
            .prop_map(|(id, name, sealed, plaintext)| Provider {
                meta: meta(&id),
                name,
                kind: ProviderKind::Openai as i32,
                base_url: "https://api.openai.com/v1".into(),
                credentials: vec![ProviderCredential {
                    id: "k1".into(),
                    sealed_secret: if sealed { vec![1; 40] } else { vec![] },
                    secret: if plaintext { "sk-live".into() } else { String::new() },
                    ..Default::default()
                }],
                ..Default::default()
            })
            .boxed()
    }
}

impl Rules for ModelAlias {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        validate_ai::model_alias(state, self)
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;
        use tollgate_proto::config::v1::AliasTarget;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name(), arbitrary_id())
            .prop_map(|(id, name, provider_id)| ModelAlias {
                meta: meta(&id),
                name,
                targets: vec![AliasTarget { provider_id, model: "gpt-4o".into(), weight: 1, priority: 0 }],
                ..Default::default()
            })
            .boxed()
    }
}

impl Rules for ModelPrice {
    fn validate(&self, _state: &GatewayState) -> Result<(), ApplyError> {
        validate_ai::model_price(self)
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, meta};
        let name = prop::sample::select(vec!["openai/gpt-4o", "openai/gpt-4o-mini", "no-namespace"]);
        (arbitrary_id(), name, 0u64..10_000_000)
            .prop_map(|(id, name, input)| ModelPrice {
                meta: meta(&id),
                name: name.to_string(),
                input_micros_per_mtok: input,
                ..Default::default()
            })
            .boxed()
    }
}
