//! Who is calling: app users by JWT, RouteAPI by static API key.
//!
//! App tokens are HS256 with the shared secret, or RS256, ES256 and EdDSA with the public
//! keys of `auth.jwt_public_keys` (PEM) and `auth.jwks_url` ([`jwks`]). A token is checked
//! only with a key made for its `alg`: the secret for HS256, a public key of the matching
//! kind otherwise. So `alg: none`, a public key used as an HS256 secret, and an algorithm no
//! key is for are all refused. A public-key token that names a `kid` is checked with the
//! JWKS key of that id, then with the PEM keys of its `alg` (which have no id).
//!
//! Whether a user's tokens were revoked is the engine's to say (it is stored); this module
//! only reads what a token claims.

mod jwks;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::protocol::UserId;
use jwks::Jwks;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// The claims [`issue_token`] signs: [`Claims`], and the `iss` and `aud` the config asks for
/// (`Validation` checks those, and `nbf`, on the way in).
#[derive(Serialize)]
struct Issued<'a> {
    #[serde(flatten)]
    claims: Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// What a verified app token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub user: UserId,
    /// When it expires (Unix seconds); it is accepted until `exp` plus the leeway.
    pub exp: u64,
    /// When it was issued (Unix seconds), if it says.
    pub iat: Option<u64>,
}

/// Checks app tokens and RouteAPI keys; built once from config and shared.
pub struct Authenticator {
    /// The secret for HS256, then the PEM public keys, each with the one algorithm it
    /// verifies.
    keys: Vec<(Algorithm, DecodingKey)>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    api_keys: Vec<Vec<u8>>,
}

/// A public key in PEM and the algorithm it verifies (config validation refuses any other).
pub fn public_key(pem: &str) -> Result<(Algorithm, DecodingKey), String> {
    // A private key would verify too, but it has no business in this server's config. RSA
    // keys also come as PKCS#1 (`openssl rsa -RSAPublicKey_out`).
    if ![
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN RSA PUBLIC KEY-----",
    ]
    .iter()
    .any(|header| pem.contains(header))
    {
        return Err("not a public key in PEM (-----BEGIN PUBLIC KEY-----)".into());
    }
    let pem = pem.as_bytes();
    DecodingKey::from_rsa_pem(pem)
        .map(|key| (Algorithm::RS256, key))
        .or_else(|_| DecodingKey::from_ec_pem(pem).map(|key| (Algorithm::ES256, key)))
        .or_else(|_| DecodingKey::from_ed_pem(pem).map(|key| (Algorithm::EdDSA, key)))
        .map_err(|_| "not an RSA, P-256 or Ed25519 public key in PEM".to_owned())
}

impl Authenticator {
    pub fn new(config: &AuthConfig, metrics: Arc<Metrics>) -> Self {
        // An empty secret turns HS256 off (config validation allows it only beside public
        // keys): an empty HMAC key would let anyone sign.
        let secret = (!config.jwt_secret.is_empty()).then(|| {
            (
                Algorithm::HS256,
                DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            )
        });
        // Config validation has parsed each of them already.
        let public = config
            .jwt_public_keys
            .iter()
            .filter_map(|pem| public_key(pem).ok());
        Self {
            keys: secret.into_iter().chain(public).collect(),
            jwks: config.jwks_url.as_ref().map(|url| {
                Jwks::new(
                    url.clone(),
                    Duration::from_secs(config.jwks_refresh_s),
                    metrics,
                )
            }),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            api_keys: config
                .api_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Seconds a token stays good past its `exp`.
    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// What a token says, if a key made for its algorithm verifies it, it is unexpired
    /// (within the leeway), `iss` and `aud` match when configured, and its `sub` is a
    /// valid user id.
    pub async fn verify(&self, token: &str) -> Result<Token, Error> {
        let invalid =
            |e: jsonwebtoken::errors::Error| Error::Unauthorized(format!("invalid token: {e}"));
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let alg = header.alg;
        let keys = match (&header.kid, &self.jwks) {
            // The secret has no id: an HS256 token's `kid` says nothing about it.
            (_, _) if alg == Algorithm::HS256 => self.fixed_keys(alg),
            // PEM keys have no id either: identity providers name a `kid` even when the key
            // is configured by hand, so they are tried after the JWKS's keys of that id.
            (Some(kid), Some(jwks)) => {
                let fixed = self.fixed_keys(alg);
                match jwks.keys_of(kid, alg).await {
                    Ok(mut keys) => {
                        keys.extend(fixed);
                        keys
                    }
                    Err(e) if fixed.is_empty() => return Err(e),
                    Err(_) => fixed,
                }
            }
            (None, jwks) | (Some(_), jwks @ None) => {
                let mut keys = self.fixed_keys(alg);
                if let Some(jwks) = jwks {
                    keys.extend(jwks.keys_for(alg));
                }
                keys
            }
        };
        let validation = self.validation(alg);
        let mut refused = None;
        for key in &keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let user = UserId::parse(&data.claims.sub).map_err(|_| {
                        Error::Unauthorized("token's sub is not a valid user id".into())
                    })?;
                    return Ok(Token {
                        user,
                        exp: data.claims.exp,
                        iat: data.claims.iat,
                    });
                }
                Err(e) => refused = Some(e),
            }
        }
        Err(match refused {
            Some(e) => invalid(e),
            None => Error::Unauthorized(format!("no key is configured for {alg:?} tokens")),
        })
    }

    fn fixed_keys(&self, alg: Algorithm) -> Vec<DecodingKey> {
        self.keys
            .iter()
            .filter(|(key_alg, _)| *key_alg == alg)
            .map(|(_, key)| key.clone())
            .collect()
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Keeps the JWKS keys fresh, with `auth.jwks_url` set; never returns.
    pub async fn refresh_keys(&self) {
        match &self.jwks {
            Some(jwks) => jwks.refresh_forever().await,
            None => std::future::pending().await,
        }
    }

    /// Whether `key` is one of the configured API keys. Every key is compared in full, in
    /// constant time, so the timing tells an attacker nothing about how close a guess was.
    pub fn is_api_key(&self, key: &str) -> bool {
        self.api_keys.iter().fold(false, |found, k| {
            found | bool::from(k.as_slice().ct_eq(key.as_bytes()))
        })
    }
}

/// Signs a token for `user` valid for `ttl` with `auth.jwt_secret`, carrying the `iss` and
/// `aud` that `auth` requires, so this server accepts it (the `token` subcommand, tests,
/// demos).
pub fn issue_token(auth: &AuthConfig, user: &UserId, ttl: Duration) -> Result<String, Error> {
    if auth.jwt_secret.is_empty() {
        return Err(Error::BadRequest(
            "auth.jwt_secret is empty (HS256 is off): tokens come from the identity provider"
                .into(),
        ));
    }
    let now = crate::protocol::now_ms() / 1000;
    let claims = Issued {
        claims: Claims {
            sub: user.to_string(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
        },
        iss: auth.issuer.as_deref(),
        aud: auth.audience.as_deref(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(auth.jwt_secret.as_bytes()),
    )
    .map_err(|e| Error::Internal(format!("cannot sign token: {e}")))
}

/// Parses a TTL like `90s`, `30m`, `1h`, `7d`, or plain seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid ttl {text:?}: expected e.g. 30m, 1h, 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("invalid ttl unit {unit:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(number * unit_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: "s3cret".into(),
            api_keys: vec!["key-1".into(), "key-2".into()],
            ..AuthConfig::default()
        }
    }

    #[test]
    fn tokens_round_trip_and_wrong_secrets_fail() {
        let auth = Authenticator::new(&config(), Metrics::new());
        let user = UserId::parse("rider-1").unwrap();
        let token = issue_token(&config(), &user, Duration::from_secs(60)).unwrap();
        assert_eq!(smol::block_on(auth.verify(&token)).unwrap().user, user);
        let other = AuthConfig {
            jwt_secret: "other".into(),
            ..config()
        };
        let forged = issue_token(&other, &user, Duration::from_secs(60)).unwrap();
        assert_eq!(
            smol::block_on(auth.verify(&forged)).unwrap_err().code(),
            "unauthorized"
        );
        assert!(smol::block_on(auth.verify("garbage")).is_err());
    }

    #[test]
    fn expired_tokens_fail_past_the_leeway() {
        let auth = Authenticator::new(&config(), Metrics::new());
        let now = crate::protocol::now_ms() / 1000;
        let sign = |exp: u64| {
            let claims = Claims {
                sub: "u".into(),
                exp,
                iat: None,
            };
            let key = EncodingKey::from_secret(b"s3cret");
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let verify = |token: String| smol::block_on(auth.verify(&token));
        assert!(verify(sign(now - 30)).is_ok(), "within leeway");
        assert!(verify(sign(now - 120)).is_err(), "past leeway");
    }

    #[test]
    fn issued_tokens_carry_the_issuer_and_audience_asked_for() {
        let strict = AuthConfig {
            issuer: Some("https://id.example".into()),
            audience: Some("chat".into()),
            ..config()
        };
        let auth = Authenticator::new(&strict, Metrics::new());
        let user = UserId::parse("rider-1").unwrap();
        let token = issue_token(&strict, &user, Duration::from_secs(60)).unwrap();
        assert_eq!(smol::block_on(auth.verify(&token)).unwrap().user, user);
        let plain = issue_token(&config(), &user, Duration::from_secs(60)).unwrap();
        assert!(
            smol::block_on(auth.verify(&plain)).is_err(),
            "no iss, no aud"
        );
    }

    #[test]
    fn tokens_not_yet_valid_fail_beyond_the_leeway() {
        let auth = Authenticator::new(&config(), Metrics::new());
        let now = crate::protocol::now_ms() / 1000;
        let sign = |nbf: u64| {
            let claims = serde_json::json!({"sub": "u", "exp": now + 3600, "nbf": nbf});
            let key = EncodingKey::from_secret(b"s3cret");
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let verify = |token: String| smol::block_on(auth.verify(&token));
        assert!(verify(sign(now + 30)).is_ok(), "within leeway");
        assert!(
            verify(sign(now + 600)).is_err(),
            "not valid for ten minutes"
        );
    }

    #[test]
    fn api_keys() {
        let auth = Authenticator::new(&config(), Metrics::new());
        assert!(auth.is_api_key("key-2"));
        assert!(!auth.is_api_key("key-"));
        assert!(!auth.is_api_key(""));
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
