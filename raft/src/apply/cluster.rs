//! Rules of the cluster's own entities: join tokens.

use tollgate_proto::config::v1::JoinToken;

use super::{Rules, unique_id};
use crate::error::ApplyError;
use crate::registry::Entity;
use crate::state::GatewayState;

impl Rules for JoinToken {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        // A taken id has always been reported before a bad field, for tokens.
        unique_id(state.join_token(self.id()).is_some(), Self::KIND, self.id())?;
        if self.secret_sha256.len() != 32 {
            return Err(ApplyError::invalid("secret_sha256", "must be a 32-byte SHA-256 digest"));
        }
        // Tokens are only created, so the creation time is the command's.
        let now = self.meta().map_or(0, |m| m.created_at_ms);
        if self.expires_at_ms <= now {
            return Err(ApplyError::invalid("expires_at_ms", "a join token must expire in the future"));
        }
        Ok(())
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{COMMAND_TIME_MS, arbitrary_id, meta};
        (arbitrary_id(), any::<bool>(), any::<bool>())
            .prop_map(|(id, good_hash, expires_later)| JoinToken {
                meta: meta(&id),
                secret_sha256: if good_hash { vec![9; 32] } else { vec![9; 31] },
                expires_at_ms: if expires_later { COMMAND_TIME_MS + 3_600_000 } else { COMMAND_TIME_MS },
            })
            .boxed()
    }
}
