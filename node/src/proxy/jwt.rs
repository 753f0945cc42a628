//! JWT authentication: HS256/384/512 with a shared secret, RS*/PS*/ES* with
//! PEM keys or keys from a JWKS URL. exp (required), nbf, iss and aud are
//! checked; a configured claim names the consumer. Everything but the
//! signature check is precompiled per route; JWKS documents are fetched and
//! refreshed in the background by [`JwksStore`], never on the request path.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tollgate_proto::config::v1::JwtAuth;

use crate::plumbing::GatewayError;
use crate::plumbing::UpstreamClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        _ => Family::Rsa,
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// How many verified tokens a route remembers, and for how long at most. A
/// signature check (HS256 ≈ 2.5 µs, RS256 far more) then happens once per
/// token per minute instead of once per request; exp and nbf are still
/// checked on every request. A key removed from a JWKS document stops
/// accepting its tokens within `VERIFIED_TTL`; any configuration change
/// rebuilds the verifier and so empties the cache.
const VERIFIED_CAPACITY: u64 = 10_000;
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// A route's JWT rules, compiled.
pub struct JwtVerifier {
    validations: Vec<(Algorithm, Validation)>,
    keys: Vec<Key>,
    jwks: Option<Arc<JwksEntry>>,
    consumer_claim: String,
    pub require_consumer: bool,
    leeway_s: u64,
    verified: moka::sync::Cache<String, Arc<Verified>>,
}

/// A verified token: the claim that names the consumer, if present, and the
/// time window it is valid in (Unix seconds).
pub struct Verified {
    pub subject: Option<String>,
    expires_at: u64,
    not_before: Option<u64>,
}

impl JwtVerifier {
    /// `hs_secret` is the route's HMAC secret, already unsealed.
    pub fn compile(config: &JwtAuth, hs_secret: Option<&str>, jwks: &JwksStore) -> JwtVerifier {
        let mut validations = Vec::new();
        for name in &config.algorithms {
            let Ok(alg) = name.parse::<Algorithm>() else { continue };
            let mut v = Validation::new(alg);
            v.leeway = u64::from(config.leeway_s);
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp"]);
            if !config.issuer.is_empty() {
                v.set_issuer(&[config.issuer.as_str()]);
            }
            if config.audiences.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&config.audiences);
            }
            validations.push((alg, v));
        }
        let mut keys = Vec::new();
        if let Some(secret) = hs_secret.filter(|s| !s.is_empty()) {
            keys.push(Key { kid: None, family: Family::Hmac, key: DecodingKey::from_secret(secret.as_bytes()) });
        }
        for pem in &config.public_keys_pem {
            if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                keys.push(Key { kid: None, family: Family::Rsa, key });
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                keys.push(Key { kid: None, family: Family::Ec, key });
            } else {
                tracing::warn!("a JWT public key is neither an RSA nor an EC PEM key; ignoring it");
            }
        }
        let refresh = Duration::from_millis(u64::from(if config.jwks_refresh_ms == 0 {
            300_000
        } else {
            config.jwks_refresh_ms
        }));
        let jwks = (!config.jwks_url.is_empty()).then(|| jwks.entry(&config.jwks_url, refresh));
        JwtVerifier {
            validations,
            keys,
            jwks,
            consumer_claim: if config.consumer_claim.is_empty() { "sub".into() } else { config.consumer_claim.clone() },
            require_consumer: config.require_consumer,
            leeway_s: u64::from(config.leeway_s),
            verified: moka::sync::Cache::builder().max_capacity(VERIFIED_CAPACITY).time_to_live(VERIFIED_TTL).build(),
        }
    }

    /// Checks the token, from the cache of verified tokens when it is there.
    pub fn verify(&self, token: &str) -> Result<Arc<Verified>, GatewayError> {
        if let Some(verified) = self.verified.get(token) {
            let now = u64::try_from(crate::clock::unix_ms() / 1000).unwrap_or(0);
            if now > verified.expires_at.saturating_add(self.leeway_s) {
                self.verified.invalidate(token);
                return Err(classify(&ErrorKind::ExpiredSignature));
            }
            if verified.not_before.is_some_and(|nbf| now.saturating_add(self.leeway_s) < nbf) {
                return Err(classify(&ErrorKind::ImmatureSignature));
            }
            return Ok(verified);
        }
        let verified = Arc::new(self.verify_signature_and_claims(token)?);
        self.verified.insert(token.to_string(), verified.clone());
        Ok(verified)
    }

    fn verify_signature_and_claims(&self, token: &str) -> Result<Verified, GatewayError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| GatewayError::Unauthorized("the JWT is malformed"))?;
        let (alg, validation) = self
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or(GatewayError::Unauthorized("the JWT's algorithm is not accepted on this route"))?;
        let fam = family(*alg);
        let matches_kid = |k: &Key| k.family == fam && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
        let jwks_keys = self.jwks.as_ref().map(|j| j.keys.load_full());
        let candidates = self.keys.iter().chain(jwks_keys.iter().flat_map(|k| k.iter())).filter(|k| matches_kid(k));
        let mut last = GatewayError::Unauthorized("no key on this route can verify the JWT");
        let mut any = false;
        for key in candidates {
            any = true;
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, validation) {
                Ok(data) => {
                    let subject = match data.claims.get(&self.consumer_claim) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(v @ serde_json::Value::Number(_)) => Some(v.to_string()),
                        _ => None,
                    };
                    let seconds =
                        |claim: &str| data.claims.get(claim).and_then(serde_json::Value::as_f64).map(|s| s as u64);
                    // exp is a required claim, so validation has seen it.
                    let expires_at = seconds("exp").unwrap_or(0);
                    return Ok(Verified { subject, expires_at, not_before: seconds("nbf") });
                }
                Err(e) => {
                    last = classify(e.kind());
                    // Claims errors mean the signature was fine: no other key will do better.
                    if !matches!(
                        e.kind(),
                        ErrorKind::InvalidSignature | ErrorKind::InvalidKeyFormat | ErrorKind::InvalidAlgorithm
                    ) {
                        return Err(last);
                    }
                }
            }
        }
        if !any && let Some(jwks) = &self.jwks {
            // A key we have not seen (rotation): ask the refresher to look now.
            jwks.refresh_now.notify_one();
        }
        Err(last)
    }
}

fn classify(kind: &ErrorKind) -> GatewayError {
    GatewayError::Unauthorized(match kind {
        ErrorKind::ExpiredSignature => "the JWT has expired",
        ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the JWT's audience is not accepted",
        ErrorKind::InvalidIssuer => "the JWT's issuer is not accepted",
        ErrorKind::MissingRequiredClaim(_) => "the JWT lacks a required claim (exp)",
        ErrorKind::InvalidSignature => "the JWT's signature is invalid",
        _ => "the JWT is invalid",
    })
}

/// One JWKS document, refreshed in the background.
pub struct JwksEntry {
    keys: ArcSwap<Vec<Key>>,
    refresh_now: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for JwksEntry {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Every JWKS URL in use on this node, shared by all snapshots.
pub struct JwksStore {
    client: UpstreamClient,
    entries: Mutex<HashMap<(String, Duration), Arc<JwksEntry>>>,
}

impl JwksStore {
    pub fn new(client: UpstreamClient) -> JwksStore {
        JwksStore { client, entries: Mutex::new(HashMap::new()) }
    }

    fn entry(&self, url: &str, refresh: Duration) -> Arc<JwksEntry> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .entry((url.to_string(), refresh))
            .or_insert_with(|| {
                let entry = Arc::new(JwksEntry {
                    keys: ArcSwap::from_pointee(Vec::new()),
                    refresh_now: Notify::new(),
                    task: Mutex::new(None),
                });
                let task =
                    tokio::spawn(refresh_loop(Arc::downgrade(&entry), self.client.clone(), url.to_string(), refresh));
                *entry.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
                entry
            })
            .clone()
    }

    /// Drops documents no route uses any more (called after each compile).
    pub fn retain_used(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| Arc::strong_count(e) > 1);
    }
}

async fn refresh_loop(entry: std::sync::Weak<JwksEntry>, client: UpstreamClient, url: String, refresh: Duration) {
    // Retry quickly until the first document arrives, then at the refresh interval.
    let mut loaded = false;
    loop {
        let Some(strong) = entry.upgrade() else { return };
        match fetch(&client, &url).await {
            Ok(keys) => {
                tracing::debug!(%url, keys = keys.len(), "JWKS loaded");
                strong.keys.store(Arc::new(keys));
                loaded = true;
            }
            Err(error) => tracing::warn!(%url, %error, "cannot fetch the JWKS; keeping the previous keys"),
        }
        let wait = if loaded { refresh } else { Duration::from_millis(500) };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = strong.refresh_now.notified() => {
                // Unknown kids must not turn into a fetch per request.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn fetch(client: &UpstreamClient, url: &str) -> Result<Vec<Key>, String> {
    let request = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for jwk in &set.keys {
        let fam = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKey(_) => Family::Hmac,
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            let kid = jwk.common.key_id.clone();
            if seen.insert((kid.clone(), fam as u8)) {
                keys.push(Key { kid, family: fam, key });
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> JwtVerifier {
        let config = JwtAuth { algorithms: vec!["HS256".into()], ..Default::default() };
        let client =
            crate::plumbing::UpstreamClients::new(Duration::from_secs(60)).get(Duration::from_secs(1), None).unwrap();
        JwtVerifier::compile(&config, Some("s3cret"), &JwksStore::new(client))
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn in_an_hour() -> u64 {
        u64::try_from(crate::clock::unix_ms() / 1000).unwrap() + 3600
    }

    #[tokio::test]
    async fn a_verified_token_is_served_from_the_cache_and_a_forged_one_never_is() {
        let verifier = verifier();
        let good = token(serde_json::json!({"sub": "alice", "exp": in_an_hour()}), "s3cret");
        let first = verifier.verify(&good).unwrap();
        let second = verifier.verify(&good).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the second check comes from the cache");
        assert_eq!(second.subject.as_deref(), Some("alice"));

        let forged = token(serde_json::json!({"sub": "alice", "exp": in_an_hour()}), "guess");
        assert!(verifier.verify(&forged).is_err());
        assert!(verifier.verify(&forged).is_err(), "failures are never cached as successes");
    }

    #[tokio::test]
    async fn exp_and_nbf_are_checked_on_every_use_of_a_cached_token() {
        let verifier = verifier();
        let stale = token(serde_json::json!({"sub": "bob", "exp": in_an_hour()}), "s3cret");
        // As if the token had been verified an hour ago and has expired since.
        verifier.verified.insert(stale.clone(), Arc::new(Verified { subject: None, expires_at: 1, not_before: None }));
        match verifier.verify(&stale) {
            Err(GatewayError::Unauthorized(reason)) => assert_eq!(reason, "the JWT has expired"),
            other => panic!("expected expiry, got {:?}", other.map(|v| v.subject.clone())),
        }
        let early = token(serde_json::json!({"sub": "bob", "exp": in_an_hour(), "nbf": in_an_hour()}), "s3cret");
        verifier.verified.insert(
            early.clone(),
            Arc::new(Verified { subject: None, expires_at: in_an_hour(), not_before: Some(in_an_hour()) }),
        );
        match verifier.verify(&early) {
            Err(GatewayError::Unauthorized(reason)) => assert_eq!(reason, "the JWT is not valid yet (nbf)"),
            other => panic!("expected nbf, got {:?}", other.map(|v| v.subject.clone())),
        }
    }
}
