//! REST for RouteAPI (PROTOCOL.md, "REST for RouteAPI" and "Operations").

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use common::*;
use serde_json::{json, Value};

#[track_caller]
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "status (body {body})");
    assert_eq!(body["code"], want_code, "error code in {body}");
    assert!(
        body["message"].is_string(),
        "error body needs a message string: {body}"
    );
}

#[track_caller]
fn assert_route_room(room: &Value, room_id: &str, owner: &str) {
    assert_eq!(room["room_id"], room_id, "{room}");
    assert_eq!(room["kind"], "route", "{room}");
    assert_eq!(room["owner_id"], owner, "{room}");
    assert!(room["created_ts"].as_u64().unwrap_or(0) > 0, "{room}");
    assert!(room["last_seq"].is_u64(), "{room}");
    assert!(room["last_ts"].is_u64(), "{room}");
    assert!(
        room.get("unread").is_none(),
        "REST room has no unread: {room}"
    );
}

#[test]
fn put_room_creates_then_repeats_then_conflicts() {
    let server = TestServer::start();
    let mut driver = server.ws("driver-7");

    let (status, created) = server.rest(
        "PUT",
        "/v1/rooms/route-42",
        Some(json!({"owner_id": "driver-7"})),
    );
    assert_eq!(status, 201, "{created}");
    assert_route_room(&created, "route-42", "driver-7");
    assert_eq!(members(&created), vec!["driver-7"]);
    assert_eq!(created["last_seq"], 0);
    assert_eq!(created["last_ts"], 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let created_ts = created["created_ts"].as_u64().unwrap();
    assert!(
        created_ts <= now && created_ts + 60_000 > now,
        "created_ts in ms: {created}"
    );

    let joined = driver.expect_push("joined");
    assert_eq!(joined["room"]["room_id"], "route-42");
    assert_eq!(joined["room"]["kind"], "route");
    assert_eq!(joined["room"]["owner_id"], "driver-7");

    let (status, repeat) = server.rest(
        "PUT",
        "/v1/rooms/route-42",
        Some(json!({"owner_id": "driver-7"})),
    );
    assert_eq!(status, 200, "repeat PUT: {repeat}");
    assert_route_room(&repeat, "route-42", "driver-7");
    assert_eq!(repeat["created_ts"], created["created_ts"]);
    assert_eq!(members(&repeat), vec!["driver-7"]);

    let (status, body) = server.rest(
        "PUT",
        "/v1/rooms/route-42",
        Some(json!({"owner_id": "driver-8"})),
    );
    assert_error(status, &body, 409, "conflict");

    // The repeat had the effect of one call: one `joined` only.
    driver.expect_no("joined", SILENCE);
}

#[test]
fn get_room_200_and_404() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    server.add_member("r1", "u1");
    server.post_message("r1", json!({"text": "hello", "client_msg_id": "x1"}));

    let (status, room) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(status, 200, "{room}");
    assert_route_room(&room, "r1", "d1");
    assert_eq!(members(&room), vec!["d1", "u1"]);
    assert_eq!(room["last_seq"], 1);
    assert!(room["last_ts"].as_u64().unwrap() > 0);

    let (status, body) = server.rest("GET", "/v1/rooms/nope", None);
    assert_error(status, &body, 404, "not_found");
}

#[test]
fn delete_room_closes_it_for_good() {
    let server = TestServer::start();
    let mut d1 = server.ws("d1");
    let mut u1 = server.ws("u1");

    let (status, body) = server.rest_text(
        "DELETE",
        "/v1/rooms/never-existed",
        Some(&format!("Bearer {TEST_API_KEY}")),
        None,
    );
    assert_eq!(status, 204, "DELETE of a room that never existed: {body}");
    assert!(body.is_empty(), "204 has no body: {body:?}");

    server.create_room("r1", "d1");
    server.add_member("r1", "u1");
    server.post_message("r1", json!({"text": "before close"}));
    d1.expect_push("joined");
    u1.expect_push("joined");

    let (status, body) = server.rest("DELETE", "/v1/rooms/r1", None);
    assert_eq!(status, 204, "{body}");
    for c in [&mut d1, &mut u1] {
        let left = c.expect_push("left");
        assert_eq!(left["room_id"], "r1", "{left}");
    }
    let (status, body) = server.rest("DELETE", "/v1/rooms/r1", None);
    assert_eq!(status, 204, "DELETE of an already closed room: {body}");

    let (status, body) = server.rest("GET", "/v1/rooms/r1", None);
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.rest("PUT", "/v1/rooms/r1/members/u2", None);
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.rest("DELETE", "/v1/rooms/r1/members/u1", None);
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.rest("PUT", "/v1/rooms/r1", Some(json!({"owner_id": "d1"})));
    assert_error(status, &body, 409, "conflict");

    // The closed room is no longer listed for its former members.
    assert!(find_room(&u1.rooms(), "r1").is_none());
    assert!(find_room(&d1.rooms(), "r1").is_none());
    d1.expect_no("left", SILENCE);
}

#[test]
fn member_put_and_delete_statuses() {
    let server = TestServer::start();
    server.create_room("r1", "d1");

    let (status, body) = server.rest("PUT", "/v1/rooms/r1/members/u1", None);
    assert_eq!(status, 201, "first join: {body}");
    let (status, body) = server.rest("PUT", "/v1/rooms/r1/members/u1", None);
    assert_eq!(status, 200, "repeat join: {body}");
    let (_, room) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(members(&room), vec!["d1", "u1"]);

    let (status, body) = server.rest("DELETE", "/v1/rooms/r1/members/u1", None);
    assert_eq!(status, 204, "leave: {body}");
    let (_, room) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(members(&room), vec!["d1"]);
    let (status, body) = server.rest("DELETE", "/v1/rooms/r1/members/u1", None);
    assert_eq!(status, 204, "leave when not a member: {body}");
    let (status, body) = server.rest("DELETE", "/v1/rooms/r1/members/never-member", None);
    assert_eq!(status, 204, "leave of a user never a member: {body}");

    let (status, body) = server.rest("PUT", "/v1/rooms/r1/members/u1", None);
    assert_eq!(status, 201, "re-join after leaving: {body}");
    let (_, room) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(members(&room), vec!["d1", "u1"]);

    let (status, body) = server.rest("PUT", "/v1/rooms/no-such-room/members/u1", None);
    assert_error(status, &body, 404, "not_found");
}

#[test]
fn post_message_and_client_msg_id_dedup() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    let mut d1 = server.ws("d1");

    let (status, first) = server.rest(
        "POST",
        "/v1/rooms/r1/messages",
        Some(json!({"text": "Driver is 5 min away", "client_msg_id": "api-1"})),
    );
    assert_eq!(status, 201, "{first}");
    let m = &first["message"];
    assert_eq!(m["room_id"], "r1");
    assert_eq!(m["seq"], 1);
    assert!(m["ts"].as_u64().unwrap() > 0);
    assert!(m["sender"].is_null(), "system message sender is null: {m}");
    assert!(m.get("sender").is_some(), "sender present as null: {m}");
    assert_eq!(m["kind"], "system");
    assert_eq!(m["text"], "Driver is 5 min away");
    assert_eq!(m["client_msg_id"], "api-1");
    assert!(m.get("data").is_none(), "absent data is left out: {m}");

    let push = d1.expect_push("message");
    assert_eq!(&push["message"], m, "pushed message equals the stored one");

    // Repeat (even with another text): the first message, 200, nothing new.
    for text in ["Driver is 5 min away", "something else"] {
        let (status, repeat) = server.rest(
            "POST",
            "/v1/rooms/r1/messages",
            Some(json!({"text": text, "client_msg_id": "api-1"})),
        );
        assert_eq!(status, 200, "repeat POST: {repeat}");
        assert_eq!(repeat, first, "repeat returns the first message");
    }
    d1.expect_no("message", SILENCE);

    let (status, second) = server.rest(
        "POST",
        "/v1/rooms/r1/messages",
        Some(json!({"text": "pin", "data": {"eta_min": 4, "pin": [1.5, 2.5]}})),
    );
    assert_eq!(status, 201, "{second}");
    let m2 = &second["message"];
    assert_eq!(m2["seq"], 2);
    assert!(m2["ts"].as_u64().unwrap() > m["ts"].as_u64().unwrap());
    assert_eq!(m2["data"], json!({"eta_min": 4, "pin": [1.5, 2.5]}));
    assert!(m2.get("client_msg_id").is_none(), "{m2}");

    let (status, history) = server.rest("GET", "/v1/rooms/r1/messages", None);
    assert_eq!(status, 200);
    assert_eq!(history["messages"], json!([m, m2]));
    assert_eq!(history["has_more"], false);
    let (_, room) = server.rest("GET", "/v1/rooms/r1", None);
    assert!(room["epoch"].is_string(), "{room}");
    assert_eq!(
        history["epoch"], room["epoch"],
        "history carries the epoch, as sync does"
    );

    let (status, body) = server.rest(
        "POST",
        "/v1/rooms/no-such-room/messages",
        Some(json!({"text": "x", "client_msg_id": "c"})),
    );
    assert_error(status, &body, 404, "not_found");
}

#[test]
fn get_messages_with_cursors() {
    let server = TestServer::start_with(|c| c.history.default_last = 4);
    server.create_room("r1", "d1");
    let mut all = Vec::new();
    for i in 1..=10 {
        all.push(server.post_message(
            "r1",
            json!({"text": format!("m{i}"), "client_msg_id": format!("c{i}")}),
        ));
    }
    for w in all.windows(2) {
        assert_eq!(
            w[1]["seq"].as_u64().unwrap(),
            w[0]["seq"].as_u64().unwrap() + 1
        );
        assert!(
            w[1]["ts"].as_u64().unwrap() > w[0]["ts"].as_u64().unwrap(),
            "ts strictly increasing"
        );
    }
    let get = |q: &str| {
        let (status, body) = server.rest("GET", &format!("/v1/rooms/r1/messages{q}"), None);
        assert_eq!(status, 200, "GET messages{q}: {body}");
        (
            seqs_of(&body),
            body["has_more"].as_bool().expect("has_more"),
        )
    };

    // No cursor: the last default_last (4), has_more = older exist.
    assert_eq!(get(""), (vec![7, 8, 9, 10], true));
    assert_eq!(get("?limit=3"), (vec![8, 9, 10], true));
    assert_eq!(get("?limit=10"), ((1..=10).collect(), false));
    assert_eq!(get("?limit=20"), ((1..=10).collect(), false));

    // since_seq / since_ts: strictly greater, oldest first.
    assert_eq!(get("?since_seq=3&limit=4"), (vec![4, 5, 6, 7], true));
    assert_eq!(get("?since_seq=6&limit=4"), (vec![7, 8, 9, 10], false));
    assert_eq!(get("?since_seq=7&limit=4"), (vec![8, 9, 10], false));
    assert_eq!(get("?since_seq=10"), (vec![], false));
    assert_eq!(get("?since_seq=0"), ((1..=10).collect(), false));
    let ts5 = all[4]["ts"].as_u64().unwrap();
    assert_eq!(
        get(&format!("?since_ts={ts5}")),
        ((6..=10).collect(), false)
    );
    assert_eq!(get(&format!("?since_ts={ts5}&limit=2")), (vec![6, 7], true));
    assert_eq!(get("?since_ts=0"), ((1..=10).collect(), false));

    // before_seq: the messages just before it.
    assert_eq!(get("?before_seq=5&limit=2"), (vec![3, 4], true));
    assert_eq!(get("?before_seq=3&limit=5"), (vec![1, 2], false));
    assert_eq!(get("?before_seq=3&limit=2"), (vec![1, 2], false));
    assert_eq!(get("?before_seq=1"), (vec![], false));
    assert_eq!(get("?before_seq=11"), ((1..=10).collect(), false));

    // The full message objects come back as posted.
    let (_, body) = server.rest("GET", "/v1/rooms/r1/messages?since_seq=0&limit=100", None);
    assert_eq!(body["messages"], Value::Array(all));

    let (status, body) = server.rest("GET", "/v1/rooms/nope/messages", None);
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.rest("GET", "/v1/rooms/r1/messages?limit=abc", None);
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server.rest("GET", "/v1/rooms/r1/messages?since_seq=-1", None);
    assert_error(status, &body, 400, "bad_request");
}

#[test]
fn get_messages_limit_default_and_cap_for_since() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 100_000);
    server.create_room("r1", "d1");
    // 520 messages over WebSocket (pipelined), so the REST cap of 500 can be observed.
    let mut d1 = server.ws("d1");
    for chunk in 0..13 {
        for i in 0..40 {
            let n = chunk * 40 + i;
            d1.send_json(
                &json!({"type": "send", "room_id": "r1", "text": format!("m{n}"), "id": n}),
            );
        }
        for i in 0..40 {
            let reply = d1.wait_reply(&json!(chunk * 40 + i));
            assert_eq!(reply["type"], "sent", "{reply}");
        }
        d1.discard("message");
    }
    let (status, body) = server.rest("GET", "/v1/rooms/r1/messages?since_seq=0", None);
    assert_eq!(status, 200);
    assert_eq!(
        seqs_of(&body),
        (1..=100).collect::<Vec<_>>(),
        "since default limit is 100"
    );
    assert_eq!(body["has_more"], true);
    let (_, body) = server.rest("GET", "/v1/rooms/r1/messages?since_seq=0&limit=1000", None);
    assert_eq!(
        seqs_of(&body),
        (1..=500).collect::<Vec<_>>(),
        "since limit capped at 500"
    );
    assert_eq!(body["has_more"], true);
    let (_, body) = server.rest("GET", "/v1/rooms/r1/messages?before_seq=400", None);
    assert_eq!(
        seqs_of(&body),
        (350..=399).collect::<Vec<_>>(),
        "before_seq default limit 50"
    );
    assert_eq!(body["has_more"], true);
    let (_, body) = server.rest("GET", "/v1/rooms/r1/messages", None);
    assert_eq!(
        seqs_of(&body),
        (471..=520).collect::<Vec<_>>(),
        "default_last 50"
    );
    assert_eq!(body["has_more"], true);
}

#[test]
fn unauthorized_without_or_with_wrong_api_key() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    let user_token = format!("Bearer {}", server.token("d1"));
    let calls: &[(&str, &str, Option<&str>)] = &[
        ("PUT", "/v1/rooms/r2", Some(r#"{"owner_id":"d1"}"#)),
        ("GET", "/v1/rooms/r1", None),
        ("DELETE", "/v1/rooms/r1", None),
        ("PUT", "/v1/rooms/r1/members/u1", None),
        ("DELETE", "/v1/rooms/r1/members/d1", None),
        ("POST", "/v1/rooms/r1/messages", Some(r#"{"text":"x"}"#)),
        ("GET", "/v1/rooms/r1/messages", None),
    ];
    for (method, path, body) in calls {
        for auth in [
            None,
            Some("Bearer wrong-key"),
            Some(user_token.as_str()),
            Some(TEST_API_KEY),
            Some("Basic aW50ZWdyYXRpb246dGVzdA=="),
        ] {
            let (status, reply) = server.rest_raw(method, path, auth, *body);
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {reply}");
            assert_eq!(reply["code"], "unauthorized", "{method} {path}: {reply}");
            assert!(reply["message"].is_string(), "{reply}");
        }
    }
    // Nothing happened.
    let (status, room) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(status, 200);
    assert_eq!(members(&room), vec!["d1"]);
    assert_eq!(room["last_seq"], 0);
    let (status, _) = server.rest("GET", "/v1/rooms/r2", None);
    assert_eq!(status, 404);
}

#[test]
fn bad_ids_are_bad_request() {
    let server = TestServer::start();
    let long = "a".repeat(129);
    let ok_long = "b".repeat(128);
    for path in [
        "/v1/rooms/bad%20id".to_owned(),
        "/v1/rooms/bad%24id".to_owned(),
        "/v1/rooms/caf%C3%A9".to_owned(),
        format!("/v1/rooms/{long}"),
    ] {
        let (status, body) = server.rest("PUT", &path, Some(json!({"owner_id": "d1"})));
        assert_error(status, &body, 400, "bad_request");
        let (status, body) = server.rest("GET", &path, None);
        assert_error(status, &body, 400, "bad_request");
    }
    // Every allowed character, and the maximum length.
    server.create_room("Az09._:@-", "d1");
    server.create_room(&ok_long, "d1");

    for owner in ["bad id", "", "x/y", long.as_str()] {
        let (status, body) =
            server.rest("PUT", "/v1/rooms/r-owner", Some(json!({"owner_id": owner})));
        assert_error(status, &body, 400, "bad_request");
    }
    server.create_room("r1", "d1");
    let (status, body) = server.rest("PUT", "/v1/rooms/r1/members/bad%20user", None);
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server.rest("PUT", &format!("/v1/rooms/r1/members/{long}"), None);
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = server.rest("DELETE", "/v1/rooms/r1/members/bad%20user", None);
    assert_error(status, &body, 400, "bad_request");
}

#[test]
fn malformed_and_mistyped_bodies_are_bad_request() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 1000);
    let bad_room_bodies = [
        "{not json",
        "",
        "[]",
        r#"{"owner_id": 5}"#,
        r#"{"owner_id": null}"#,
        r#"{}"#,
    ];
    for body in bad_room_bodies {
        let (status, reply) = server.rest_raw(
            "PUT",
            "/v1/rooms/r1",
            Some(&format!("Bearer {TEST_API_KEY}")),
            Some(body),
        );
        assert_error(status, &reply, 400, "bad_request");
    }
    let (status, _) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(status, 404, "no room was created by bad bodies");

    server.create_room("r1", "d1");
    let long_cmid = "c".repeat(65);
    let bad_message_bodies = [
        "{not json".to_owned(),
        r#"{"text": 5}"#.to_owned(),
        r#"{}"#.to_owned(),
        r#"{"text": "x", "data": [1, 2]}"#.to_owned(),
        r#"{"text": "x", "data": "str"}"#.to_owned(),
        r#"{"text": "x", "client_msg_id": 7}"#.to_owned(),
        r#"{"text": "x", "client_msg_id": ""}"#.to_owned(),
        format!(r#"{{"text": "x", "client_msg_id": "{long_cmid}"}}"#),
    ];
    for body in &bad_message_bodies {
        let (status, reply) = server.rest_raw(
            "POST",
            "/v1/rooms/r1/messages",
            Some(&format!("Bearer {TEST_API_KEY}")),
            Some(body),
        );
        assert_error(status, &reply, 400, "bad_request");
    }
    // A 64-byte client_msg_id is fine.
    server.post_message("r1", json!({"text": "x", "client_msg_id": "c".repeat(64)}));

    // text + data over max_message_bytes: too_large (413).
    let (status, reply) = server.rest(
        "POST",
        "/v1/rooms/r1/messages",
        Some(json!({"text": "t".repeat(1001)})),
    );
    assert_error(status, &reply, 413, "too_large");
    let (status, reply) = server.rest(
        "POST",
        "/v1/rooms/r1/messages",
        Some(json!({"text": "t".repeat(600), "data": {"k": "v".repeat(600)}})),
    );
    assert_error(status, &reply, 413, "too_large");
    server.post_message("r1", json!({"text": "t".repeat(1000)}));

    let (_, history) = server.rest("GET", "/v1/rooms/r1/messages", None);
    assert_eq!(
        seqs_of(&history),
        vec![1, 2],
        "rejected messages were not stored"
    );
}

#[test]
fn body_over_max_body_bytes_is_413() {
    let server = TestServer::start_with(|c| c.limits.max_body_bytes = 1024);
    let padded = format!(r#"{{"owner_id": "d1"{}}}"#, " ".repeat(2000));
    let (status, reply) = server.rest_raw(
        "PUT",
        "/v1/rooms/r1",
        Some(&format!("Bearer {TEST_API_KEY}")),
        Some(&padded),
    );
    assert_error(status, &reply, 413, "too_large");
    let (status, _) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(status, 404);

    server.create_room("r1", "d1");
    let (status, reply) = server.rest(
        "POST",
        "/v1/rooms/r1/messages",
        Some(json!({"text": "x".repeat(2000)})),
    );
    assert_error(status, &reply, 413, "too_large");
    // Just under the limit is fine.
    server.post_message("r1", json!({"text": "y".repeat(900)}));
    let (_, history) = server.rest("GET", "/v1/rooms/r1/messages", None);
    assert_eq!(seqs_of(&history), vec![1]);
}

/// Runs `f` on `n` threads released at once; returns the results.
fn concurrently<T: Send + 'static>(n: usize, f: impl Fn() -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let f = f.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                f()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn count_statuses(results: &[(u16, Value)]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for (s, _) in results {
        *m.entry(*s).or_insert(0) += 1;
    }
    m
}

#[test]
fn concurrent_repeated_calls_have_the_effect_of_one() {
    let server = TestServer::start();
    let mut d1 = server.ws("d1");
    let mut u1 = server.ws("u1");
    let mut u2 = server.ws("u2");

    // 20 concurrent PUT room: one 201, the rest 200, one `joined`.
    let ep = (*server).clone();
    let results = concurrently(20, move || {
        ep.rest("PUT", "/v1/rooms/r1", Some(json!({"owner_id": "d1"})))
    });
    let counts = count_statuses(&results);
    assert_eq!(
        counts,
        BTreeMap::from([(200, 19), (201, 1)]),
        "PUT room: {results:?}"
    );
    d1.expect_push("joined");
    server.add_member("r1", "u2");
    u2.expect_push("joined");
    d1.expect_push("member_joined");

    // 20 concurrent PUT member: one 201, one `joined`, one `member_joined` per other member.
    let ep = (*server).clone();
    let results = concurrently(20, move || ep.rest("PUT", "/v1/rooms/r1/members/u1", None));
    let counts = count_statuses(&results);
    assert_eq!(
        counts,
        BTreeMap::from([(200, 19), (201, 1)]),
        "PUT member: {results:?}"
    );
    let joined = u1.expect_push("joined");
    assert_eq!(joined["room"]["room_id"], "r1");
    assert_eq!(members(&joined["room"]), vec!["d1", "u1", "u2"]);
    for c in [&mut d1, &mut u2] {
        let mj = c.expect_push("member_joined");
        assert_eq!(mj["room_id"], "r1");
        assert_eq!(mj["user_id"], "u1");
    }
    u1.expect_no("joined", SILENCE);
    d1.expect_no("member_joined", SILENCE);
    u2.expect_no("member_joined", SILENCE);
    let (_, room) = server.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(members(&room), vec!["d1", "u1", "u2"]);

    // 20 concurrent POST with one client_msg_id: one message.
    let ep = (*server).clone();
    let results = concurrently(20, move || {
        ep.rest(
            "POST",
            "/v1/rooms/r1/messages",
            Some(json!({"text": "once", "client_msg_id": "dup-1"})),
        )
    });
    let counts = count_statuses(&results);
    assert_eq!(
        counts,
        BTreeMap::from([(200, 19), (201, 1)]),
        "POST: {results:?}"
    );
    let first = &results[0].1["message"];
    assert_eq!(first["seq"], 1);
    for (_, body) in &results {
        assert_eq!(
            &body["message"], first,
            "every repeat returns the same message"
        );
    }
    for c in [&mut d1, &mut u1, &mut u2] {
        let push = c.expect_push("message");
        assert_eq!(&push["message"], first);
        c.expect_no("message", SILENCE);
    }
    let (_, history) = server.rest("GET", "/v1/rooms/r1/messages", None);
    assert_eq!(seqs_of(&history), vec![1]);

    // 20 concurrent DELETE member: all 204, one `left`, one `member_left` per other member.
    let ep = (*server).clone();
    let results = concurrently(20, move || {
        ep.rest("DELETE", "/v1/rooms/r1/members/u1", None)
    });
    assert_eq!(count_statuses(&results), BTreeMap::from([(204, 20)]));
    assert_eq!(u1.expect_push("left")["room_id"], "r1");
    u1.expect_no("left", SILENCE);
    for c in [&mut d1, &mut u2] {
        let ml = c.expect_push("member_left");
        assert_eq!(ml["user_id"], "u1");
        c.expect_no("member_left", SILENCE);
    }
}

#[test]
fn operations_endpoints_need_no_credentials() {
    let server = TestServer::start();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = server.rest_text("GET", path, None, None);
        assert_eq!(status, 200, "{path}: {body}");
    }
    // /openapi.json and /docs come with issue 6, with their own tests.
}

/// Reads one HTTP/1.1 response (status line, headers, content-length body) from `stream`.
/// Returns None when the connection closes or nothing arrives within the read timeout.
fn read_response(stream: &mut std::net::TcpStream) -> Option<(u16, Vec<String>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<String> = lines.map(|l| l.to_ascii_lowercase()).collect();
    let length: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, headers))
}

/// An error reply sent before the request body was read (401, 400 on a bad id, 413) must not
/// break the keep-alive connection: either the next request on it is answered, or the reply
/// said `connection: close`. RouteAPI's HTTP client pools connections.
#[test]
fn keep_alive_survives_early_error_replies() {
    use std::io::Write;
    const ROUNDS: usize = 100;
    let server = TestServer::start_with(|c| c.limits.max_body_bytes = 1024);
    server.create_room("r1", "d1");
    let key = format!("Authorization: Bearer {TEST_API_KEY}\r\n");
    let small = r#"{"text":"hello there"}"#.to_owned();
    let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(1500));
    let cases: Vec<(&str, String, &str, String, u16)> = vec![
        (
            "unauthenticated POST",
            "POST /v1/rooms/r1/messages".into(),
            "",
            small.clone(),
            401,
        ),
        (
            "bad id PUT",
            "PUT /v1/rooms/bad%20id".into(),
            &key,
            r#"{"owner_id":"d1"}"#.into(),
            400,
        ),
        (
            "body too large",
            "POST /v1/rooms/r1/messages".into(),
            &key,
            big,
            413,
        ),
    ];
    let mut failures = Vec::new();
    for (name, request_line, auth, body, want) in &cases {
        let mut case_failures = 0;
        for i in 0..ROUNDS {
            if case_failures >= 3 {
                break;
            }
            let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            stream.set_nodelay(true).unwrap();
            // Head and body in separate writes, as HTTP clients do.
            let head = format!(
                "{request_line} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.flush().unwrap();
            if i % 2 == 1 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _ = stream.write_all(body.as_bytes());
            let (status, headers) = read_response(&mut stream)
                .unwrap_or_else(|| panic!("{name}: no reply to the first request"));
            assert_eq!(status, *want, "{name}");
            if headers
                .iter()
                .any(|h| h.starts_with("connection:") && h.contains("close"))
            {
                continue;
            }
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
            match read_response(&mut stream) {
                Some((200, _)) => {}
                other => {
                    case_failures += 1;
                    failures.push(format!("{name} #{i}: next request got {other:?}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "keep-alive connections lost the next request after an early error reply \
         (which had no `connection: close`; stopped after 3 per case): {failures:?}"
    );
}
