//! Public-key app tokens (PROTOCOL.md "Auth, v1.1"): RS256, ES256 and EdDSA tokens verified
//! with `auth.jwt_public_keys`, beside HS256, and the classic attacks refused. The keys are
//! test fixtures (`tests/fixtures/*.pem`, made with openssl).

mod common;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::{Client, ConnectError, TestServer};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}.pem")).unwrap()
}

fn now() -> u64 {
    chat_engine::protocol::now_ms() / 1000
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iat": now()})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa-private").as_bytes()).unwrap()
}

fn server(configure: impl FnOnce(&mut chat_engine::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth.jwt_public_keys = vec![
            fixture("rsa-public"),
            fixture("ec-public"),
            fixture("ed-public"),
        ];
        configure(c);
    })
}

/// The HTTP status of an upgrade with `token`, or 101.
fn upgrade(server: &TestServer, token: &str) -> u16 {
    match Client::connect(server.addr, &server.ws_url(Some(token)), None) {
        Ok(mut client) => {
            client.request_ok(json!({"type": "rooms"}), "rooms");
            101
        }
        Err(ConnectError::Http(status)) => status,
        Err(ConnectError::Other(e)) => panic!("connect failed: {e}"),
    }
}

#[test]
fn rs256_es256_and_eddsa_tokens_are_accepted_beside_hs256() {
    let server = server(|_| {});
    let ec = EncodingKey::from_ec_pem(fixture("ec-private").as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(fixture("ed-private").as_bytes()).unwrap();
    for (alg, key) in [
        (Algorithm::RS256, rsa()),
        (Algorithm::ES256, ec),
        (Algorithm::EdDSA, ed),
    ] {
        assert_eq!(
            upgrade(&server, &sign(alg, &key, &claims("rider"))),
            101,
            "{alg:?}"
        );
    }
    assert_eq!(upgrade(&server, &server.token("rider")), 101, "HS256 stays");
}

#[test]
fn the_classic_attacks_are_refused() {
    let server = server(|_| {});
    // `{"alg":"none","typ":"JWT"}` over a real token's claims, with no signature.
    let signed = sign(Algorithm::RS256, &rsa(), &claims("rider"));
    let payload = signed.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    // The public key's PEM used as an HS256 secret (algorithm confusion).
    let confused = EncodingKey::from_secret(fixture("rsa-public").as_bytes());
    let other_ec = fixture("ec-other-private");
    let expired = json!({"sub": "rider", "exp": now() - 120});
    let refused = [
        ("alg none", none),
        (
            "HS256 keyed with the public key",
            sign(Algorithm::HS256, &confused, &claims("rider")),
        ),
        (
            "RS384: no key is for it",
            sign(Algorithm::RS384, &rsa(), &claims("rider")),
        ),
        (
            "ES256 from a key not configured",
            sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(other_ec.as_bytes()).unwrap(),
                &claims("rider"),
            ),
        ),
        (
            "a sub that breaks the id rules",
            sign(Algorithm::RS256, &rsa(), &claims("bad id")),
        ),
        (
            "expired beyond the leeway",
            sign(Algorithm::RS256, &rsa(), &expired),
        ),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in refused {
        assert_eq!(upgrade(&server, &token), 401, "{what}");
    }
    let within_leeway = json!({"sub": "rider", "exp": now() - 30});
    assert_eq!(
        upgrade(&server, &sign(Algorithm::RS256, &rsa(), &within_leeway)),
        101
    );
}

#[test]
fn issuer_and_audience_must_match_when_set() {
    let server = server(|c| {
        c.auth.issuer = Some("https://id.example".into());
        c.auth.audience = Some("chat".into());
    });
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut claims = claims("rider");
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = json!(aud);
        }
        upgrade(&server, &sign(Algorithm::RS256, &rsa(), &claims))
    };
    assert_eq!(with(Some("https://id.example"), Some("chat")), 101);
    assert_eq!(with(Some("https://evil.example"), Some("chat")), 401);
    assert_eq!(with(Some("https://id.example"), Some("other")), 401);
    assert_eq!(with(None, Some("chat")), 401);
    assert_eq!(with(Some("https://id.example"), None), 401);
}

#[test]
fn a_public_key_that_is_not_one_is_refused_at_start_up() {
    let mut config = chat_engine::Config::default();
    config.auth.jwt_public_keys =
        vec!["-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n".into()];
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("auth.jwt_public_keys[0]"), "{error}");
    config.auth.jwt_public_keys = vec![fixture("rsa-private")];
    assert!(
        config.validate().is_err(),
        "a private key is not a public key"
    );
}
