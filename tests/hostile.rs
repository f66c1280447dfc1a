//! Hostile input: every kind of bad frame, token and key gets its specific error, and the
//! server goes on serving everyone else.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with these claims, signed with the test secret by `algorithm`.
fn signed(claims: Value, algorithm: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn upgrade_status(server: &TestServer, token: &str) -> u16 {
    match Client::connect(server.addr, &server.ws_url(Some(token)), None) {
        Ok(_) => 101,
        Err(ConnectError::Http(status)) => status,
        Err(ConnectError::Other(e)) => panic!("upgrade failed: {e}"),
    }
}

#[test]
fn expired_and_malformed_tokens_are_refused_before_the_upgrade() {
    use jsonwebtoken::Algorithm::{HS256, HS512};
    let server = TestServer::start();
    let now = unix_now();
    let cases = [
        (
            "expired beyond the 60 s leeway",
            json!({"sub": "u1", "exp": now - 120}),
            HS256,
        ),
        ("no exp", json!({"sub": "u1"}), HS256),
        ("no sub", json!({"exp": now + 600}), HS256),
        (
            "sub breaks the id rules",
            json!({"sub": "u 1", "exp": now + 600}),
            HS256,
        ),
        (
            "another algorithm",
            json!({"sub": "u1", "exp": now + 600}),
            HS512,
        ),
    ];
    let refused = cases.len() as f64;
    for (what, claims, algorithm) in cases {
        assert_eq!(
            upgrade_status(&server, &signed(claims, algorithm)),
            401,
            "{what}"
        );
    }
    // Inside the leeway still works, and so does a fresh token.
    let recent = signed(json!({"sub": "u1", "exp": now - 10}), HS256);
    assert_eq!(
        upgrade_status(&server, &recent),
        101,
        "expired within the leeway"
    );
    assert_eq!(
        server.metric("chat_engine_errors_total{code=\"unauthorized\"}"),
        refused
    );
}

#[test]
fn api_key_guessing_is_refused_every_time_and_counted() {
    let server = TestServer::start();
    const GUESSES: usize = 300;
    for i in 0..GUESSES {
        // Guesses sharing ever longer prefixes with the real key.
        let guess = format!("{}{i}", &TEST_API_KEY[..i % TEST_API_KEY.len()]);
        let (status, body) = server.rest_text(
            "GET",
            "/v1/rooms/r1",
            Some(&format!("Bearer {guess}")),
            None,
        );
        assert_eq!(status, 401, "{guess}: {body}");
    }
    let refused = "chat_engine_http_requests_total{method=\"GET\",route=\"/v1/rooms/:room_id\",status=\"401\"}";
    assert_eq!(server.metric(refused), GUESSES as f64);
    // The real key still works at once: guessing locks nobody out.
    server.create_room("r1", "d1");
    assert_eq!(server.rest("GET", "/v1/rooms/r1", None).0, 200);
}

#[test]
fn ids_breaking_the_rules_are_bad_request_over_websocket() {
    let server = TestServer::start();
    server.create_room("r1", "u1");
    let mut c = server.ws("u1");
    let long = "a".repeat(129);
    for bad in [
        "",
        "has space",
        "semi;colon",
        "slash/x",
        "ünïcode",
        long.as_str(),
    ] {
        for frame in [
            json!({"type": "sync", "room_id": bad}),
            json!({"type": "send", "room_id": bad, "text": "x"}),
            json!({"type": "read", "room_id": bad, "seq": 1}),
            json!({"type": "typing", "room_id": bad}),
            json!({"type": "direct", "user_id": bad}),
        ] {
            let error = c.request_err(frame.clone(), "bad_request");
            assert!(
                error["message"].as_str().unwrap().contains("id"),
                "{frame} -> {error}"
            );
        }
    }
    c.send_msg("r1", "still served");
}

/// 1,000 bad frames of every kind from one connection close it with 1008; an enormous frame
/// from another closes that one with 1009; a member of a busy room notices nothing.
#[test]
fn floods_of_bad_frames_close_the_offender_and_spare_everyone_else() {
    // Default limits (100 bad frames in a row), but the victim may send fast.
    let server = TestServer::start_with(|c| c.limits.send_rate = 1_000);
    server.create_room("r1", "victim");
    server.add_member("r1", "friend");
    let mut victim = server.ws("victim");
    let mut friend = server.ws("friend");

    let attacker = std::thread::spawn({
        let endpoint = (*server).clone();
        move || {
            let mut attacker = endpoint.ws("attacker");
            let bad: [&str; 5] = [
                "{not json",
                r#"{"type":"no_such_type"}"#,
                r#"{"type":"send","room_id":"r1","text":5}"#,
                r#"{"type":"sync","room_id":"bad id"}"#,
                "[]",
            ];
            for i in 0..1_000 {
                let frame = if i % 7 == 0 {
                    tungstenite::Message::binary(vec![0xde, 0xad])
                } else {
                    tungstenite::Message::text(bad[i % 5])
                };
                if !attacker.try_send(frame) {
                    break;
                }
            }
            attacker.expect_close(RECV_TIMEOUT)
        }
    });
    let giant = std::thread::spawn({
        let endpoint = (*server).clone();
        move || {
            let mut giant = endpoint.ws("giant");
            // 8 MiB, far over the 64 KiB frame limit. The server stops reading at the frame
            // header, so the client may see a reset instead of the close frame.
            let _ = giant.try_send(tungstenite::Message::text("g".repeat(8 << 20)));
            let _ = giant.expect_close(RECV_TIMEOUT);
        }
    });
    for i in 0..50 {
        victim.send_msg("r1", &format!("m{i}"));
        let push = friend.expect_push("message");
        assert_eq!(push["message"]["text"], format!("m{i}"));
    }
    assert_eq!(attacker.join().unwrap(), Some(1008));
    giant.join().unwrap();
    assert_eq!(
        server.metric("chat_engine_ws_closes_total{code=\"1008\"}"),
        1.0
    );
    assert_eq!(
        server.metric("chat_engine_ws_closes_total{code=\"1009\"}"),
        1.0
    );
    let history = victim.sync(json!({"room_id": "r1", "limit": 100}));
    assert_eq!(seqs_of(&history), (1..=50).collect::<Vec<_>>());
    friend.expect_silence(Duration::from_millis(100));
}

/// RFC 6455 has a text frame that is not UTF-8 fail the connection: 1007, and the other
/// connections of the user go on.
#[test]
fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;
    let server = TestServer::start();
    let mut bad = server.ws("u1");
    let mut other = server.ws("u1");
    let invalid = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    assert!(bad.try_send(tungstenite::Message::Frame(invalid)));
    assert_eq!(bad.expect_close(RECV_TIMEOUT), Some(1007));
    assert_eq!(other.request(json!({"type": "ping"}))["type"], "pong");
}
