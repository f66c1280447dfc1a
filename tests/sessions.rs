//! A connection lives as long as its token, and RouteAPI can end it (PROTOCOL.md "Auth,
//! v1.1"): `token_expiring` 60 s before `exp`, a refresh with the `auth` frame, a 4001 close
//! at `exp` plus the leeway; `POST /v1/users/{user_id}/disconnect` closing every connection
//! of the user with 4003, and with `revoke` refusing the user's older tokens, durably.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{Client, ConnectError, TestServer};

fn now() -> u64 {
    chat_engine::protocol::now_ms() / 1000
}

/// A token for `sub` that expires `ttl` seconds from now, issued now.
fn expiring(server: &TestServer, sub: &str, ttl: i64) -> String {
    let exp = now().saturating_add_signed(ttl);
    server.token_with(&json!({"sub": sub, "exp": exp, "iat": now()}))
}

#[track_caller]
fn connect(server: &TestServer, token: &str) -> Client {
    match server.try_ws_token(token) {
        Ok(client) => client,
        Err(e) => panic!("connect failed: {e:?}"),
    }
}

fn status_of(server: &TestServer, token: &str) -> u16 {
    match server.try_ws_token(token) {
        Ok(mut client) => {
            client.request_ok(json!({"type": "ping"}), "pong");
            101
        }
        Err(ConnectError::Http(status)) => status,
        Err(ConnectError::Other(e)) => panic!("connect failed: {e}"),
    }
}

fn disconnect(server: &TestServer, user: &str, body: Option<Value>) -> u16 {
    server
        .rest("POST", &format!("/v1/users/{user}/disconnect"), body)
        .0
}

#[test]
fn token_expiring_comes_60_s_before_exp_and_auth_refreshes_the_connection() {
    let server = TestServer::start_with(|c| c.auth.leeway_s = 2);
    // Far from its end: no warning.
    let mut calm = connect(&server, &expiring(&server, "calm", 3_600));
    calm.expect_no("token_expiring", Duration::from_millis(500));

    let exp = now() + 3;
    let mut rider = connect(
        &server,
        &server.token_with(&json!({"sub": "rider", "exp": exp})),
    );
    let warning = rider.expect_push("token_expiring");
    assert_eq!(warning, json!({"type": "token_expiring", "exp": exp}));

    // Another user's token: forbidden. Bad, expired and garbage tokens: unauthorized.
    // Each leaves the token in force as it was.
    let refusals = [
        (expiring(&server, "driver", 3_600), "forbidden"),
        (expiring(&server, "rider", -120), "unauthorized"),
        (common::token_with_secret("wrong", "rider"), "unauthorized"),
        ("garbage".to_owned(), "unauthorized"),
    ];
    for (token, code) in refusals {
        let error = rider.request_err(json!({"type": "auth", "token": token}), code);
        assert!(error["message"].is_string());
    }
    rider.request_err(json!({"type": "auth", "token": 7}), "bad_request");

    let fresh = expiring(&server, "rider", 3_600);
    rider.request_ok(json!({"type": "auth", "token": fresh}), "ok");
    // Past the first token's exp plus the leeway, the connection stays, and is served.
    std::thread::sleep(Duration::from_secs(6));
    rider.request_ok(json!({"type": "ping"}), "pong");
    rider.expect_no("token_expiring", Duration::from_millis(200));
}

#[test]
fn a_connection_that_does_not_refresh_closes_with_4001_at_exp_plus_leeway() {
    let server = TestServer::start_with(|c| c.auth.leeway_s = 2);
    let exp = now() + 2;
    let mut rider = connect(
        &server,
        &server.token_with(&json!({"sub": "rider", "exp": exp})),
    );
    rider.expect_push("token_expiring");
    // A failed refresh leaves the old token in force, and so its end.
    rider.request_err(json!({"type": "auth", "token": "nope"}), "unauthorized");
    let code = rider.expect_close(Duration::from_secs(8));
    assert_eq!(code, Some(4001));
    assert!(now() >= exp + 2, "closed at {} before exp + leeway", now());
    assert!(server
        .metrics()
        .contains("chat_engine_ws_closes_total{code=\"4001\"} 1"));
}

#[test]
fn a_shorter_lived_token_brings_the_end_of_the_connection_forward() {
    let server = TestServer::start_with(|c| c.auth.leeway_s = 2);
    let mut rider = connect(&server, &expiring(&server, "rider", 3_600));
    rider.expect_no("token_expiring", Duration::from_millis(300));
    let exp = now() + 2;
    let short = server.token_with(&json!({"sub": "rider", "exp": exp, "iat": now()}));
    rider.request_ok(json!({"type": "auth", "token": short}), "ok");
    assert_eq!(
        rider.expect_push("token_expiring"),
        json!({"type": "token_expiring", "exp": exp}),
        "warned at once about the token now in force"
    );
    assert_eq!(rider.expect_close(Duration::from_secs(8)), Some(4001));
    assert!(now() >= exp + 2, "closed at {} before exp + leeway", now());
}

#[test]
fn the_default_leeway_is_60_s() {
    let server = TestServer::start();
    // Expired 30 s ago: inside the leeway, so accepted, warned about, and left open.
    let exp = now() - 30;
    let mut late = connect(
        &server,
        &server.token_with(&json!({"sub": "late", "exp": exp})),
    );
    assert_eq!(late.expect_push("token_expiring")["exp"], exp);
    late.request_ok(json!({"type": "ping"}), "pong");
    assert_eq!(status_of(&server, &expiring(&server, "later", -61)), 401);
}

#[test]
fn disconnect_closes_every_connection_of_the_user_with_4003() {
    let server = TestServer::start();
    let mut phone = server.ws("rider");
    let mut tablet = server.ws("rider");
    let mut driver = server.ws("driver");
    assert_eq!(disconnect(&server, "rider", None), 204);
    assert_eq!(phone.expect_close(Duration::from_secs(5)), Some(4003));
    assert_eq!(tablet.expect_close(Duration::from_secs(5)), Some(4003));
    driver.request_ok(json!({"type": "ping"}), "pong");
    // Without revoke the same token connects again, and stays.
    let mut again = server.ws("rider");
    std::thread::sleep(Duration::from_millis(300));
    again.request_ok(json!({"type": "ping"}), "pong");
    // Repeats, and users with no connection, answer 204 too (RouteAPI retries).
    assert_eq!(disconnect(&server, "nobody", Some(json!({}))), 204);
    assert_eq!(disconnect(&server, "nobody", None), 204);
    // JSON null is no body, as the OpenAPI document's optional body allows.
    assert_eq!(disconnect(&server, "nobody", Some(Value::Null)), 204);
}

#[test]
fn disconnect_refuses_bad_input() {
    let server = TestServer::start();
    assert_eq!(disconnect(&server, "bad%20id", None), 400);
    assert_eq!(
        disconnect(&server, "rider", Some(json!({"revoke": "yes"}))),
        400
    );
    assert_eq!(
        disconnect(&server, "rider", Some(json!({"revok": true}))),
        400,
        "a misspelt revoke must not pass for a plain disconnect"
    );
    let (status, _) = server.rest_raw("POST", "/v1/users/rider/disconnect", None, Some("{}"));
    assert_eq!(status, 401);
    let (status, _) = server.rest_raw(
        "POST",
        "/v1/users/rider/disconnect",
        Some(&format!("Bearer {}", server.api_key)),
        Some("{not json"),
    );
    assert_eq!(status, 400);
}

#[test]
fn revoke_refuses_older_tokens_for_good_and_newer_ones_connect() {
    let server = TestServer::start();
    let old = server.token_with(&json!({"sub": "rider", "exp": now() + 3_600, "iat": now() - 10}));
    let without_iat = server.token_with(&json!({"sub": "rider", "exp": now() + 3_600}));
    let other =
        server.token_with(&json!({"sub": "driver", "exp": now() + 3_600, "iat": now() - 10}));
    let mut rider = connect(&server, &old);
    let mut driver = connect(&server, &other);
    assert_eq!(
        status_of(&server, &without_iat),
        101,
        "before any revocation"
    );

    assert_eq!(
        disconnect(&server, "rider", Some(json!({"revoke": true}))),
        204
    );
    assert_eq!(rider.expect_close(Duration::from_secs(5)), Some(4003));
    assert_eq!(status_of(&server, &old), 401);
    assert_eq!(status_of(&server, &without_iat), 401, "no iat: refused too");
    assert_eq!(
        status_of(&server, &other),
        101,
        "another user's tokens stay good"
    );
    driver.request_ok(json!({"type": "ping"}), "pong");

    // Issued after the moment (iat is in whole seconds): good, on connect and in `auth`.
    std::thread::sleep(Duration::from_millis(1_100));
    let newer = expiring(&server, "rider", 3_600);
    let mut rider = connect(&server, &newer);
    rider.request_err(json!({"type": "auth", "token": old}), "unauthorized");
    rider.request_ok(json!({"type": "auth", "token": newer}), "ok");

    let server = server.restart();
    assert_eq!(status_of(&server, &old), 401, "the revocation is durable");
    assert_eq!(status_of(&server, &newer), 101);
}
