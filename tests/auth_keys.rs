//! Public-key app tokens (PROTOCOL.md "Auth, v1.1"): RS256, ES256 and EdDSA tokens verified
//! with `auth.jwt_public_keys` or the keys at `auth.jwks_url`, beside HS256, and the classic
//! attacks refused. The keys are test fixtures (`tests/fixtures/*.pem`, made with openssl,
//! and the same keys as a JWKS document in `tests/fixtures/jwks.json`).

mod common;

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::receiver::{Answer, Receiver};
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
fn an_empty_jwt_secret_turns_hs256_off_beside_public_keys() {
    let server = server(|c| c.auth.jwt_secret = String::new());
    let rider = claims("rider");
    assert_eq!(
        upgrade(&server, &sign(Algorithm::RS256, &rsa(), &rider)),
        101
    );
    for secret in [
        "",
        chat_engine::config::DEV_JWT_SECRET,
        common::TEST_JWT_SECRET,
    ] {
        let hs = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            &rider,
        );
        assert_eq!(upgrade(&server, &hs), 401, "HS256 with {secret:?}");
    }
    let mut alone = chat_engine::Config::default();
    alone.auth.jwt_secret = String::new();
    let error = alone.validate().unwrap_err().to_string();
    assert!(error.contains("auth.jwt_secret"), "{error}");
}

#[test]
fn an_rsa_key_in_pkcs1_pem_verifies_too() {
    let server = TestServer::start_with(|c| {
        c.auth.jwt_public_keys = vec![fixture("rsa-public-pkcs1")];
    });
    let token = sign(Algorithm::RS256, &rsa(), &claims("rider"));
    assert_eq!(upgrade(&server, &token), 101);
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

// ---------------------------------------------------------------------------------------------
// Keys from `auth.jwks_url`, served by a real HTTP server on loopback.
// ---------------------------------------------------------------------------------------------

/// The JWKS document of `kids`, from the fixture of every test key (`tests/fixtures/jwks.json`:
/// rsa-1, ec-1, ed-1, and ec-2, the key of `ec-other-private`).
fn jwks(kids: &[&str]) -> String {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap())
            .unwrap();
    let keys: Vec<&Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .collect();
    json!({ "keys": keys }).to_string()
}

fn sign_kid(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn ec(name: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(fixture(name).as_bytes()).unwrap()
}

/// A server whose only public keys are the JWKS at `jwks`.
fn jwks_server(jwks: &Receiver, refresh_s: u64) -> TestServer {
    let url = format!("http://{}/jwks.json", jwks.addr);
    TestServer::start_with(|c| {
        c.auth.jwks_url = Some(url);
        c.auth.jwks_refresh_s = refresh_s;
    })
}

#[track_caller]
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn jwks_keys_verify_tokens_by_kid_and_an_unknown_kid_fetches_early_at_most_every_10_s() {
    let endpoint = Receiver::start();
    endpoint.reply_with(&jwks(&["rsa-1", "ec-1", "ed-1"]));
    let server = jwks_server(&endpoint, 300);
    wait_until("the first fetch", || endpoint.requests().len() == 1);
    let ed = EncodingKey::from_ed_pem(fixture("ed-private").as_bytes()).unwrap();
    let rider = claims("rider");
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", rsa()),
        (Algorithm::ES256, "ec-1", ec("ec-private")),
        (Algorithm::EdDSA, "ed-1", ed),
    ] {
        assert_eq!(
            upgrade(&server, &sign_kid(alg, kid, &key, &rider)),
            101,
            "{kid}"
        );
    }
    assert_eq!(
        upgrade(&server, &sign(Algorithm::RS256, &rsa(), &rider)),
        101,
        "a token naming no kid is checked with every key of its alg"
    );
    let refused = [
        (
            "a kid naming a key of another alg",
            sign_kid(Algorithm::RS256, "ec-1", &rsa(), &rider),
        ),
        (
            "the right kid, signed by another key",
            sign_kid(Algorithm::ES256, "ec-1", &ec("ec-other-private"), &rider),
        ),
        (
            "HS256 naming a JWKS kid, keyed with its public PEM",
            sign_kid(
                Algorithm::HS256,
                "rsa-1",
                &EncodingKey::from_secret(fixture("rsa-public").as_bytes()),
                &rider,
            ),
        ),
    ];
    for (what, token) in refused {
        assert_eq!(upgrade(&server, &token), 401, "{what}");
    }

    // The provider rotates in ec-2 just after the fetch at start. A token naming it fetches
    // early at once (only early fetches are spaced 10 s apart) and is accepted.
    endpoint.reply_with(&jwks(&["rsa-1", "ec-1", "ed-1", "ec-2"]));
    let rotated = sign_kid(Algorithm::ES256, "ec-2", &ec("ec-other-private"), &rider);
    assert_eq!(upgrade(&server, &rotated), 101, "after one early fetch");
    assert_eq!(endpoint.requests().len(), 2);
    let unknown = sign_kid(Algorithm::ES256, "ec-3", &ec("ec-other-private"), &rider);
    assert_eq!(upgrade(&server, &unknown), 401, "a kid naming no key");
    assert_eq!(
        endpoint.requests().len(),
        2,
        "the next early fetch waits 10 s"
    );
    // ec-3 (ec-2's key under another id) is rotated in: taken only 10 s after the last
    // early fetch.
    let mut document: Value =
        serde_json::from_str(&jwks(&["rsa-1", "ec-1", "ed-1", "ec-2"])).unwrap();
    let mut ec_3 = document["keys"][3].clone();
    ec_3["kid"] = json!("ec-3");
    document["keys"].as_array_mut().unwrap().push(ec_3);
    endpoint.reply_with(&document.to_string());
    assert_eq!(
        upgrade(&server, &unknown),
        401,
        "within 10 s of the last early fetch"
    );
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(upgrade(&server, &unknown), 101, "10 s later, one more");
    assert_eq!(endpoint.requests().len(), 3);
    assert_eq!(server.metric("chat_engine_jwks_keys"), 5.0);
    assert_eq!(server.metric("chat_engine_jwks_fetches_total"), 3.0);
}

#[test]
fn a_failed_jwks_fetch_keeps_the_keys_held_and_a_late_endpoint_is_fetched_again() {
    let endpoint = Receiver::start();
    endpoint.answer(Answer::Status(503));
    let server = jwks_server(&endpoint, 1);
    let token = sign_kid(Algorithm::RS256, "rsa-1", &rsa(), &claims("rider"));
    wait_until("a failed fetch", || {
        server.metric("chat_engine_jwks_fetch_failures_total") >= 1.0
    });
    assert_eq!(upgrade(&server, &token), 401, "no keys yet");

    endpoint.reply_with(&jwks(&["rsa-1"]));
    endpoint.answer(Answer::Status(200));
    wait_until("keys once the endpoint answers", || {
        server.metric("chat_engine_jwks_keys") == 1.0
    });
    assert_eq!(upgrade(&server, &token), 101);

    // Down again, then answering garbage: the key held stays in use.
    endpoint.answer(Answer::Status(500));
    let failures = server.metric("chat_engine_jwks_fetch_failures_total");
    wait_until("a failed refresh", || {
        server.metric("chat_engine_jwks_fetch_failures_total") > failures
    });
    endpoint.reply_with("{\"not\": \"a jwks\"}");
    endpoint.answer(Answer::Status(200));
    let failures = server.metric("chat_engine_jwks_fetch_failures_total");
    wait_until("a refresh that is not a JWKS", || {
        server.metric("chat_engine_jwks_fetch_failures_total") > failures
    });
    assert_eq!(upgrade(&server, &token), 101, "the key held stays");
}

#[test]
fn a_token_naming_a_kid_is_checked_with_the_pem_keys() {
    let server = server(|_| {});
    let rider = claims("rider");
    assert_eq!(
        upgrade(
            &server,
            &sign_kid(Algorithm::RS256, "rsa-1", &rsa(), &rider)
        ),
        101,
        "PEM keys have no kid: a token naming one is checked with them"
    );
    assert_eq!(
        upgrade(
            &server,
            &sign_kid(Algorithm::ES256, "ec-1", &ec("ec-other-private"), &rider)
        ),
        401,
        "signed by a key that is not configured"
    );
}

#[test]
fn symmetric_keys_in_a_jwks_are_not_taken() {
    let endpoint = Receiver::start();
    // The secret "s3cret" as an `oct` key, beside a real one.
    let document = json!({"keys": [
        {"kty": "oct", "kid": "hs", "k": "czNjcmV0"},
        serde_json::from_str::<Value>(&jwks(&["ed-1"])).unwrap()["keys"][0],
    ]});
    endpoint.reply_with(&document.to_string());
    let server = jwks_server(&endpoint, 300);
    wait_until("the first fetch", || {
        server.metric("chat_engine_jwks_keys") == 1.0
    });
    let forged = sign_kid(
        Algorithm::HS256,
        "hs",
        &EncodingKey::from_secret(b"s3cret"),
        &claims("rider"),
    );
    assert_eq!(upgrade(&server, &forged), 401);
}
