//! Rules of consumers and the API keys they authenticate with.

use tollgate_proto::config::v1::{ApiKey, Consumer};

use super::{Action, Change, Rules};
use crate::entities::EntityKind;
use crate::error::ApplyError;
use crate::registry::Entity;
use crate::state::GatewayState;
use crate::{validate, validate_ai};

impl Rules for Consumer {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        validate::name("name", &self.name)?;
        super::governance::team_ref(state, &self.team_id)
    }

    /// Keys cannot outlive their consumer: they go in the same command.
    /// Scanning the keys is O(keys), which a rare delete can afford.
    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        super::limits::refuse_if_limited(state, EntityKind::Consumer, &[id])?;
        let keys: Vec<&str> = state.api_keys().filter(|k| k.consumer_id == id).map(|k| k.id()).collect();
        super::limits::refuse_if_limited(state, EntityKind::ApiKey, &keys)?;
        let mut changes: Vec<Change> = keys.into_iter().map(Change::delete::<ApiKey>).collect();
        changes.extend(super::governance::consumer_subscriptions(state, id));
        Ok(changes)
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name())
            .prop_map(|(id, name)| Consumer { meta: meta(&id), name, ..Default::default() })
            .boxed()
    }
}

impl Rules for ApiKey {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        if state.consumer(&self.consumer_id).is_none() {
            return Err(ApplyError::not_found(EntityKind::Consumer, &self.consumer_id));
        }
        if self.secret_sha256.len() != 32 {
            return Err(ApplyError::invalid("secret_sha256", "must be a 32-byte SHA-256 digest"));
        }
        if self.expires_at_ms < 0 {
            return Err(ApplyError::invalid("expires_at_ms", "must be 0 (never) or a Unix time in milliseconds"));
        }
        if self.name.len() > validate::MAX_NAME_LEN {
            return Err(ApplyError::invalid("name", "must be at most 64 characters"));
        }
        validate_ai::allowed_models(&self.allowed_models)
    }

    fn check_update(&self, existing: &ApiKey) -> Result<(), ApplyError> {
        if self.secret_sha256 != existing.secret_sha256 || self.consumer_id != existing.consumer_id {
            return Err(ApplyError::invalid(
                "api_key",
                "the secret and the owning consumer of a key cannot change; create a new key instead",
            ));
        }
        Ok(())
    }

    fn label(&self, action: Action) -> String {
        match action {
            Action::Create => format!("{} for {}", self.id(), self.consumer_id),
            Action::Update | Action::Upsert => self.id().to_string(),
        }
    }

    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        super::limits::refuse_if_limited(state, EntityKind::ApiKey, &[id])?;
        Ok(Vec::new())
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, meta};
        (arbitrary_id(), arbitrary_id(), any::<bool>(), any::<bool>())
            .prop_map(|(id, consumer_id, good_hash, disabled)| ApiKey {
                meta: meta(&id),
                consumer_id,
                secret_sha256: if good_hash { vec![7; 32] } else { vec![7; 3] },
                disabled,
                ..Default::default()
            })
            .boxed()
    }
}
