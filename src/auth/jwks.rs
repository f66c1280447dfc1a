//! The keys at `auth.jwks_url`: a JWKS document, fetched at start and every
//! `auth.jwks_refresh_s`, and early, at most every [`MIN_REFETCH`], when a token names a
//! `kid` no key has (the identity provider rotated its keys).
//!
//! A failed fetch keeps the keys held, is logged and counted. Only signing keys of the
//! algorithms the server supports are taken: RSA (RS256), P-256 (ES256) and Ed25519
//! (EdDSA). Symmetric keys are never taken from a URL, so a published document cannot turn
//! an HS256 token valid.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::sync::lock;

/// The least time between two fetches that a token's unknown `kid` asks for.
const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read: a few keys take a few KiB.
const MAX_DOCUMENT_BYTES: u64 = 1 << 20;

/// One usable key of the document.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct Jwks {
    url: String,
    refresh: Duration,
    keys: Mutex<Arc<Vec<Key>>>,
    /// When the last early fetch (for an unknown `kid`) started; held across every fetch,
    /// so fetches never overlap and a token waiting on one sees its result. Only early
    /// fetches count towards [`MIN_REFETCH`]: a key rotated in just after a periodic fetch
    /// is still picked up at once.
    last_early_fetch: async_lock::Mutex<Option<Instant>>,
    agent: ureq::Agent,
    metrics: Arc<Metrics>,
}

/// A JWKS document, each key read on its own: one key of a kind this server does not take
/// must not hide the others.
#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    pub fn new(url: String, refresh: Duration, metrics: Arc<Metrics>) -> Jwks {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(FETCH_TIMEOUT))
                .build(),
        );
        Jwks {
            url,
            refresh,
            keys: Mutex::default(),
            last_early_fetch: async_lock::Mutex::new(None),
            agent,
            metrics,
        }
    }

    /// The keys for `alg`, whatever their id (for tokens that name none).
    pub fn keys_for(&self, alg: Algorithm) -> Vec<DecodingKey> {
        self.matching(|key| key.alg == alg)
            .into_iter()
            .map(|(_, key)| key)
            .collect()
    }

    /// The keys with id `kid` for `alg`. With no key of that id, fetches the document again
    /// first, unless the last early fetch began less than [`MIN_REFETCH`] ago.
    pub async fn keys_of(&self, kid: &str, alg: Algorithm) -> Result<Vec<DecodingKey>, Error> {
        let named = |key: &Key| key.kid.as_deref() == Some(kid);
        let mut found = self.matching(named);
        if found.is_empty() {
            self.refetch(named).await;
            found = self.matching(named);
        }
        if found.is_empty() {
            return Err(Error::Unauthorized(format!(
                "no key {kid:?} at auth.jwks_url"
            )));
        }
        let keys: Vec<_> = found
            .into_iter()
            .filter(|(key_alg, _)| *key_alg == alg)
            .map(|(_, key)| key)
            .collect();
        if keys.is_empty() {
            return Err(Error::Unauthorized(format!(
                "key {kid:?} is not for {alg:?} tokens"
            )));
        }
        Ok(keys)
    }

    /// The held keys `wanted` picks, each with its algorithm.
    fn matching(&self, wanted: impl Fn(&Key) -> bool) -> Vec<(Algorithm, DecodingKey)> {
        let keys = lock(&self.keys).clone();
        keys.iter()
            .filter(|key| wanted(key))
            .map(|key| (key.alg, key.key.clone()))
            .collect()
    }

    /// Fetches again unless an early fetch began in the last [`MIN_REFETCH`], or a fetch
    /// this waited for (it holds the lock) brought a key `wanted` picks.
    async fn refetch(&self, wanted: impl Fn(&Key) -> bool) {
        let mut last = self.last_early_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) || !self.matching(wanted).is_empty() {
            return;
        }
        *last = Some(Instant::now());
        self.fetch().await;
    }

    /// Fetches at once, then every `auth.jwks_refresh_s` (every [`MIN_REFETCH`] while
    /// fetches fail and no key is held); never returns.
    pub async fn refresh_forever(&self) {
        loop {
            let held = {
                let _fetching = self.last_early_fetch.lock().await;
                self.fetch().await
            };
            let wait = if held == 0 {
                MIN_REFETCH.min(self.refresh)
            } else {
                self.refresh
            };
            smol::Timer::after(wait).await;
        }
    }

    /// One fetch; on success its keys replace those held. Returns how many keys are held.
    async fn fetch(&self) -> usize {
        let (agent, url) = (self.agent.clone(), self.url.clone());
        let fetched = smol::unblock(move || -> Result<Vec<Key>, String> {
            let mut response = agent.get(&url).call().map_err(|e| e.to_string())?;
            let text = response
                .body_mut()
                .with_config()
                .limit(MAX_DOCUMENT_BYTES)
                .read_to_string()
                .map_err(|e| e.to_string())?;
            parse(&text)
        })
        .await;
        match fetched {
            Ok(keys) => {
                log::debug!("auth: {} keys from {}", keys.len(), self.url);
                self.metrics.jwks_fetches.inc();
                self.metrics.jwks_keys.set(keys.len() as i64);
                let held = keys.len();
                *lock(&self.keys) = Arc::new(keys);
                held
            }
            Err(why) => {
                self.metrics.jwks_fetch_failures.inc();
                let held = lock(&self.keys).len();
                log::warn!(
                    "auth: fetching {} failed ({why}); keeping the {held} keys held",
                    self.url
                );
                held
            }
        }
    }
}

/// The usable keys of a JWKS document; keys of other kinds are skipped, and logged.
fn parse(text: &str) -> Result<Vec<Key>, String> {
    let document: Document =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for value in document.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        match serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| usable(&jwk).map(|(alg, key)| Key { kid, alg, key }))
        {
            Ok(key) => keys.push(key),
            Err(why) => log::info!("auth: skipping a JWKS key: {why}"),
        }
    }
    Ok(keys)
}

/// The algorithm a key verifies, by its kind, and the key; refuses kinds not supported and
/// keys whose `alg` or `use` says they are for something else.
fn usable(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), String> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("not a signing key (use)".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not taken".into()),
        _ => return Err("not an RSA, P-256 or Ed25519 key".into()),
    };
    let stated = jwk.common.key_algorithm;
    let agrees = match stated {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    if !agrees {
        return Err(format!(
            "its alg {stated:?} is not supported for its key type"
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok((alg, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_signing_keys_it_supports_and_skips_the_rest() {
        let document = r#"{"keys":[
            {"kty":"oct","kid":"s","k":"c2VjcmV0"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"Ed25519","kid":"rs","alg":"RS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"XYZ","kid":"odd"}
        ]}"#;
        let keys = parse(document).unwrap();
        let found: Vec<_> = keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(found, [(Some("ed"), Algorithm::EdDSA)]);
        assert!(parse("[]").is_err());
    }
}
