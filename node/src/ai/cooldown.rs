//! Provider keys resting after a 429. Node-local and outlives snapshots, so a
//! configuration change does not wake a key the provider just throttled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Cooldowns {
    until: Mutex<HashMap<(String, String), Instant>>,
}

impl Cooldowns {
    /// Rests `credential` of `provider` for `rest` from now (never shortens a longer rest).
    pub fn rest(&self, provider: &str, credential: &str, rest: Duration) {
        let until = Instant::now() + rest;
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry((provider.to_string(), credential.to_string())).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    pub fn is_resting(&self, provider: &str, credential: &str) -> bool {
        let now = Instant::now();
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries are dropped as they are seen, so the map stays as small as the set of resting keys.
        map.retain(|_, until| *until > now);
        map.contains_key(&(provider.to_string(), credential.to_string()))
    }

    /// Resting keys of a provider and when each wakes, for status output.
    pub fn resting(&self, provider: &str) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((p, _), until)| p == provider && **until > now)
            .map(|((_, c), until)| (c.clone(), *until - now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rested_key_is_skipped_until_its_rest_ends() {
        let c = Cooldowns::default();
        assert!(!c.is_resting("p", "k1"));
        c.rest("p", "k1", Duration::from_secs(3600));
        assert!(c.is_resting("p", "k1"));
        assert!(!c.is_resting("p", "k2"));
        assert!(!c.is_resting("q", "k1"));
        c.rest("p", "k1", Duration::ZERO);
        assert!(c.is_resting("p", "k1"), "a shorter rest never cuts a longer one");
        c.rest("p", "k3", Duration::ZERO);
        assert!(!c.is_resting("p", "k3"), "a zero rest has already ended");
        assert_eq!(c.resting("p").len(), 1);
    }
}
