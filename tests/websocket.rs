//! WebSocket `GET /v1/ws` (PROTOCOL.md, "WebSocket"): auth, every request frame, every push,
//! errors and limits.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[track_caller]
fn http_status(result: Result<Client, ConnectError>) -> u16 {
    match result {
        Ok(_) => panic!("connection was accepted, expected a refusal"),
        Err(ConnectError::Http(status)) => status,
        Err(ConnectError::Other(e)) => panic!("connection failed without an HTTP status: {e}"),
    }
}

#[test]
fn unauthenticated_upgrade_is_401() {
    let server = TestServer::start();
    let url = server.ws_url(None);
    assert_eq!(
        http_status(Client::connect(server.addr, &url, None)),
        401,
        "no token"
    );

    let forged = token_with_secret("some-other-secret", "u1");
    let url = server.ws_url(Some(&forged));
    assert_eq!(
        http_status(Client::connect(server.addr, &url, None)),
        401,
        "wrong secret (query)"
    );
    let url = server.ws_url(None);
    assert_eq!(
        http_status(Client::connect(server.addr, &url, Some(&forged))),
        401,
        "wrong secret (header)"
    );
    let url = server.ws_url(Some("not.a.jwt"));
    assert_eq!(
        http_status(Client::connect(server.addr, &url, None)),
        401,
        "garbage token"
    );
    // The API key is not an app token.
    let url = server.ws_url(Some(TEST_API_KEY));
    assert_eq!(
        http_status(Client::connect(server.addr, &url, None)),
        401,
        "API key"
    );
}

#[test]
fn token_in_query_or_bearer_header_names_the_user() {
    let server = TestServer::start();
    server.create_room("r1", "u1");
    let token = server.token("u1");

    let url = server.ws_url(Some(&token));
    let mut by_query = Client::connect(server.addr, &url, None).expect("token in query");
    by_query.user = "u1(query)".into();
    let url = server.ws_url(None);
    let mut by_header = Client::connect(server.addr, &url, Some(&token)).expect("bearer header");
    by_header.user = "u1(header)".into();
    for c in [&mut by_query, &mut by_header] {
        let rooms = c.rooms();
        assert_eq!(rooms.len(), 1, "{rooms:?}");
        assert_eq!(rooms[0]["room_id"], "r1");
        // The user id is the token's `sub`: sends are attributed to u1.
        let sent = c.send_msg("r1", "hi");
        let push = loop {
            // The other connection's earlier message reaches this device too.
            let push = c.expect_push("message");
            if push["message"]["seq"] == sent["seq"] {
                break push;
            }
        };
        assert_eq!(push["message"]["sender"], "u1");
    }
}

#[test]
fn ping_pong_and_request_ids_echoed_in_order() {
    let server = TestServer::start();
    let mut c = server.ws("u1");
    let pong = c.request(json!({"type": "ping", "id": "abc"}));
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], "abc");
    let pong = c.request(json!({"type": "ping", "id": 42}));
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], 42, "numeric id echoed as a number");
    let pong = c.request(json!({"type": "ping", "id": 1.5}));
    assert_eq!(pong["id"], 1.5);
    c.send_json(&json!({"type": "ping"}));
    let pong = c.recv_json();
    assert_eq!(pong["type"], "pong", "ping without id still gets pong");

    // Replies come in the order the requests were sent, across request types.
    server.create_room("r1", "u1");
    c.expect_push("joined");
    let frames = [
        json!({"type": "ping", "id": 1}),
        json!({"type": "send", "room_id": "r1", "text": "a", "id": 2}),
        json!({"type": "rooms", "id": 3}),
        json!({"type": "sync", "room_id": "r1", "id": 4}),
        json!({"type": "nonsense", "id": 5}),
        json!({"type": "read", "room_id": "r1", "seq": 1, "id": 6}),
        json!({"type": "ping", "id": "7"}),
    ];
    for f in &frames {
        c.send_json(f);
    }
    let mut replies = Vec::new();
    while replies.len() < frames.len() {
        let f = c.recv_json();
        if f.get("id").is_some() && f["type"] != "message" {
            replies.push(f);
        }
    }
    let ids: Vec<Value> = replies.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(
        ids,
        vec![
            json!(1),
            json!(2),
            json!(3),
            json!(4),
            json!(5),
            json!(6),
            json!("7")
        ]
    );
    let types: Vec<&str> = replies
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["pong", "sent", "rooms", "messages", "error", "ok", "pong"]
    );
}

#[test]
fn rooms_lists_the_users_rooms_with_unread() {
    let server = TestServer::start();
    server.create_room("r1", "u1");
    server.create_room("r2", "d2");
    server.add_member("r2", "u1");
    server.create_room("r3", "d3");
    server.post_message("r2", json!({"text": "before u1 joined? no, after"}));

    let mut c = server.ws("u1");
    let rooms = c.rooms();
    let ids: BTreeSet<&str> = rooms
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["r1", "r2"]), "only the user's rooms");
    let r1 = find_room(&rooms, "r1").unwrap();
    assert_eq!(r1["kind"], "route");
    assert_eq!(r1["owner_id"], "u1");
    assert_eq!(members(r1), vec!["u1"]);
    assert_eq!(r1["last_seq"], 0);
    assert_eq!(r1["last_ts"], 0);
    assert_eq!(r1["unread"], 0);
    assert!(r1["created_ts"].as_u64().unwrap() > 0);
    let r2 = find_room(&rooms, "r2").unwrap();
    assert_eq!(r2["owner_id"], "d2");
    assert_eq!(members(r2), vec!["d2", "u1"]);
    assert_eq!(r2["last_seq"], 1);
    assert!(r2["last_ts"].as_u64().unwrap() > 0);
    assert_eq!(r2["unread"], 1, "a system message after joining is unread");

    let empty = server.ws("nobody").rooms();
    assert!(empty.is_empty(), "{empty:?}");
}

#[track_caller]
#[test]
fn rooms_pages_most_recently_active_first() {
    let server = TestServer::start();
    for i in 1..=5 {
        server.create_room(&format!("pg-{i}"), "driver");
        server.add_member(&format!("pg-{i}"), "rider");
        // Distinct creation times, so the order below is the only one.
        std::thread::sleep(Duration::from_millis(3));
    }
    server.post_message("pg-2", json!({"text": "older"}));
    std::thread::sleep(Duration::from_millis(3));
    server.post_message("pg-4", json!({"text": "newest"}));
    let mut rider = server.ws("rider");
    let page = |c: &mut Client, frame: Value| {
        let reply = c.request_ok(frame, "rooms");
        let ids: Vec<String> = reply["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room_id"].as_str().unwrap().to_owned())
            .collect();
        (ids, reply)
    };
    // Rooms with messages by their last message, the others by their creation.
    let (ids, first) = page(&mut rider, json!({"type": "rooms", "limit": 2}));
    assert_eq!(ids, ["pg-4", "pg-2"]);
    assert_eq!(first["has_more"], true);
    let before = first["rooms"][1]["last_ts"].clone();
    let (ids, second) = page(
        &mut rider,
        json!({"type": "rooms", "limit": 2, "before_ts": before}),
    );
    assert_eq!(ids, ["pg-5", "pg-3"]);
    assert_eq!(second["has_more"], true);
    assert_eq!(second["rooms"][0]["unread"], 0, "pages carry unread counts");
    let before = second["rooms"][1]["created_ts"].clone();
    let (ids, third) = page(
        &mut rider,
        json!({"type": "rooms", "limit": 2, "before_ts": before}),
    );
    assert_eq!(
        (ids, third["has_more"].clone()),
        (vec!["pg-1".to_owned()], json!(false))
    );
    // Without a limit: every room, as in v1, and no has_more.
    let (ids, all) = page(&mut rider, json!({"type": "rooms"}));
    assert_eq!(ids, ["pg-4", "pg-2", "pg-5", "pg-3", "pg-1"]);
    assert!(all.get("has_more").is_none(), "{all}");
    // A limit over 500 is capped; 0 and a mistyped one are bad_request.
    let (ids, capped) = page(&mut rider, json!({"type": "rooms", "limit": 100000}));
    assert_eq!((ids.len(), capped["has_more"].clone()), (5, json!(false)));
    rider.request_err(json!({"type": "rooms", "limit": 0}), "bad_request");
    rider.request_err(json!({"type": "rooms", "limit": "2"}), "bad_request");
}

fn unread(c: &mut Client, room: &str) -> u64 {
    let rooms = c.rooms();
    find_room(&rooms, room).unwrap_or_else(|| panic!("{room} not listed: {rooms:?}"))["unread"]
        .as_u64()
        .expect("unread number")
}

#[test]
fn unread_counts_and_read_marker() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    server.post_message("r1", json!({"text": "s1"}));
    server.post_message("r1", json!({"text": "s2"}));
    let mut d1 = server.ws("d1");
    assert_eq!(unread(&mut d1, "r1"), 2, "the owner's marker started at 0");

    // A member's marker starts at last_seq when they join.
    server.add_member("r1", "u1");
    let mut u1 = server.ws("u1");
    assert_eq!(unread(&mut u1, "r1"), 0);

    d1.send_msg("r1", "d-a"); // 3
    d1.send_msg("r1", "d-b"); // 4
    server.post_message("r1", json!({"text": "s3"})); // 5
    u1.send_msg("r1", "u-a"); // 6
    assert_eq!(
        unread(&mut u1, "r1"),
        3,
        "others' texts and system messages, not own"
    );
    assert_eq!(unread(&mut d1, "r1"), 4, "s1, s2, s3, u-a");

    let ok = u1.request(json!({"type": "read", "room_id": "r1", "seq": 4, "id": "rd"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ok["id"], "rd");
    assert_eq!(unread(&mut u1, "r1"), 1, "only s3 after seq 4");
    u1.request_ok(json!({"type": "read", "room_id": "r1", "seq": 6}), "ok");
    assert_eq!(unread(&mut u1, "r1"), 0);
    d1.request_ok(json!({"type": "read", "room_id": "r1", "seq": 6}), "ok");
    assert_eq!(unread(&mut d1, "r1"), 0);

    // New messages count again.
    d1.send_msg("r1", "d-c");
    assert_eq!(unread(&mut u1, "r1"), 1);
    // The marker is per user, shared by the user's devices.
    let mut u1b = server.ws("u1");
    assert_eq!(unread(&mut u1b, "r1"), 1);

    // Mistyped read: bad_request.
    u1.request_err(
        json!({"type": "read", "room_id": "r1", "seq": "x"}),
        "bad_request",
    );
    u1.request_err(json!({"type": "read", "room_id": "r1"}), "bad_request");
}

#[test]
fn sync_cursors_limits_and_paging() {
    let server = TestServer::start_with(|c| c.history.default_last = 3);
    server.create_room("r1", "d1");
    let mut c = server.ws("d1");
    let mut sent = Vec::new();
    for i in 1..=10 {
        sent.push(c.send_msg("r1", &format!("m{i}")));
    }
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(s["seq"], i as u64 + 1, "seq 1, 2, 3, ...");
    }
    for w in sent.windows(2) {
        assert!(
            w[1]["ts"].as_u64().unwrap() > w[0]["ts"].as_u64().unwrap(),
            "ts strictly increasing"
        );
    }
    let ts = |seq: usize| sent[seq - 1]["ts"].as_u64().unwrap();
    let mut q = |extra: Value| {
        let mut frame = json!({"room_id": "r1"});
        for (k, v) in extra.as_object().unwrap() {
            frame[k] = v.clone();
        }
        let reply = c.sync(frame);
        (seqs_of(&reply), reply["has_more"].as_bool().unwrap())
    };

    assert_eq!(
        q(json!({})),
        (vec![8, 9, 10], true),
        "no cursor: last default_last"
    );
    assert_eq!(q(json!({"limit": 5})), (vec![6, 7, 8, 9, 10], true));
    assert_eq!(q(json!({"limit": 10})), ((1..=10).collect(), false));
    assert_eq!(
        q(json!({"since_seq": 4, "limit": 3})),
        (vec![5, 6, 7], true)
    );
    assert_eq!(
        q(json!({"since_seq": 7, "limit": 3})),
        (vec![8, 9, 10], false)
    );
    assert_eq!(q(json!({"since_seq": 10})), (vec![], false));
    assert_eq!(
        q(json!({"since_seq": 0})),
        ((1..=10).collect(), false),
        "since default limit 100"
    );
    assert_eq!(q(json!({"since_ts": ts(6)})), (vec![7, 8, 9, 10], false));
    assert_eq!(
        q(json!({"since_ts": ts(6) - 1})),
        (vec![6, 7, 8, 9, 10], false)
    );
    assert_eq!(
        q(json!({"since_ts": ts(2), "limit": 2})),
        (vec![3, 4], true)
    );
    assert_eq!(q(json!({"since_ts": 0})), ((1..=10).collect(), false));
    assert_eq!(q(json!({"before_seq": 6, "limit": 2})), (vec![4, 5], true));
    assert_eq!(
        q(json!({"before_seq": 4, "limit": 5})),
        (vec![1, 2, 3], false)
    );
    assert_eq!(
        q(json!({"before_seq": 4, "limit": 3})),
        (vec![1, 2, 3], false)
    );
    assert_eq!(q(json!({"before_seq": 1})), (vec![], false));

    // Paging with since_ts from 0 ends exactly.
    let mut pages = Vec::new();
    let mut cursor = 0u64;
    loop {
        let reply = c.sync(json!({"room_id": "r1", "since_ts": cursor, "limit": 3}));
        let page = reply["messages"].as_array().unwrap().clone();
        let more = reply["has_more"].as_bool().unwrap();
        pages.push((seqs(&page), more));
        if !more {
            break;
        }
        cursor = page.last().unwrap()["ts"].as_u64().unwrap();
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    assert_eq!(
        pages,
        vec![
            (vec![1, 2, 3], true),
            (vec![4, 5, 6], true),
            (vec![7, 8, 9], true),
            (vec![10], false)
        ]
    );
    // Scrolling back with before_seq.
    let mut back = Vec::new();
    let mut before = 11u64;
    loop {
        let reply = c.sync(json!({"room_id": "r1", "before_seq": before, "limit": 4}));
        let page = seqs_of(&reply);
        let more = reply["has_more"].as_bool().unwrap();
        back.push((page.clone(), more));
        if !more {
            break;
        }
        before = page[0];
        assert!(back.len() < 10, "scrolling does not end: {back:?}");
    }
    assert_eq!(
        back,
        vec![
            (vec![7, 8, 9, 10], true),
            (vec![3, 4, 5, 6], true),
            (vec![1, 2], false)
        ]
    );

    // Message objects as sent.
    let reply = c.sync(json!({"room_id": "r1", "since_seq": 9}));
    let m = &reply["messages"][0];
    assert_eq!(m["room_id"], "r1");
    assert_eq!(m["seq"], 10);
    assert_eq!(m["ts"], sent[9]["ts"]);
    assert_eq!(m["sender"], "d1");
    assert_eq!(m["kind"], "text");
    assert_eq!(m["text"], "m10");
    assert!(
        m.get("data").is_none() && m.get("client_msg_id").is_none(),
        "{m}"
    );

    // Mistyped fields: bad_request.
    c.request_err(
        json!({"type": "sync", "room_id": "r1", "limit": "ten"}),
        "bad_request",
    );
    c.request_err(
        json!({"type": "sync", "room_id": "r1", "since_seq": -1}),
        "bad_request",
    );
    c.request_err(json!({"type": "sync"}), "bad_request");
    c.request_err(json!({"type": "sync", "room_id": "bad id"}), "bad_request");
}

#[test]
fn sync_limit_is_capped_at_500() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 100_000);
    server.create_room("r1", "d1");
    let mut c = server.ws("d1");
    for chunk in 0..11u64 {
        for i in 0..50 {
            let n = chunk * 50 + i;
            c.send_json(
                &json!({"type": "send", "room_id": "r1", "text": format!("m{n}"), "id": n}),
            );
        }
        for i in 0..50 {
            let reply = c.wait_reply(&json!(chunk * 50 + i));
            assert_eq!(reply["type"], "sent", "{reply}");
        }
        c.discard("message");
    }
    let reply = c.sync(json!({"room_id": "r1", "since_seq": 0, "limit": 10_000}));
    assert_eq!(seqs_of(&reply), (1..=500).collect::<Vec<_>>());
    assert_eq!(reply["has_more"], true);
    let reply = c.sync(json!({"room_id": "r1", "since_seq": 0}));
    assert_eq!(
        seqs_of(&reply),
        (1..=100).collect::<Vec<_>>(),
        "since default limit 100"
    );
    let reply = c.sync(json!({"room_id": "r1", "before_seq": 500}));
    assert_eq!(
        seqs_of(&reply),
        (450..=499).collect::<Vec<_>>(),
        "before default limit 50"
    );
    assert_eq!(reply["has_more"], true);
    let reply = c.sync(json!({"room_id": "r1"}));
    assert_eq!(
        seqs_of(&reply),
        (501..=550).collect::<Vec<_>>(),
        "default_last 50"
    );
    assert_eq!(reply["has_more"], true);
}

#[test]
fn send_replies_sent_and_pushes_to_all_members_including_sender() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    server.add_member("r1", "u1");
    let mut d1 = server.ws("d1");
    let mut u1 = server.ws("u1");

    let sent = u1.request(json!({
        "type": "send", "id": 7, "room_id": "r1", "text": "On my way",
        "data": {"eta_min": 4}, "client_msg_id": "c-91"
    }));
    assert_eq!(sent["type"], "sent", "{sent}");
    assert_eq!(sent["id"], 7);
    assert_eq!(sent["room_id"], "r1");
    assert_eq!(sent["seq"], 1);
    let ts = sent["ts"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        ts <= now + 1000 && ts + 60_000 > now,
        "ts is ms since the epoch"
    );

    let expected = json!({
        "room_id": "r1", "seq": 1, "ts": ts, "sender": "u1", "kind": "text",
        "text": "On my way", "data": {"eta_min": 4}, "client_msg_id": "c-91"
    });
    for c in [&mut u1, &mut d1] {
        let push = c.expect_push("message");
        assert_eq!(push["message"], expected, "push to {}", c.user);
        assert!(
            push.get("id").is_none() || push["id"].is_null(),
            "pushes carry no id: {push}"
        );
        c.expect_no("message", SILENCE);
    }
    let reply = d1.sync(json!({"room_id": "r1"}));
    assert_eq!(reply["messages"], json!([expected]));
}

#[test]
fn repeated_client_msg_id_returns_first_sent_and_stores_nothing() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    server.add_member("r1", "u1");
    let mut d1 = server.ws("d1");
    let mut u1 = server.ws("u1");

    let first = u1.request_ok(
        json!({"type": "send", "room_id": "r1", "text": "hello", "client_msg_id": "c1"}),
        "sent",
    );
    d1.expect_push("message");
    u1.expect_push("message");
    for text in ["hello", "changed text"] {
        let again = u1.request_ok(
            json!({"type": "send", "room_id": "r1", "text": text, "client_msg_id": "c1"}),
            "sent",
        );
        assert_eq!(again["seq"], first["seq"], "{again} vs {first}");
        assert_eq!(again["ts"], first["ts"]);
        assert_eq!(again["room_id"], "r1");
    }
    // Also from another connection of the same user (retry after reconnect).
    let mut u1b = server.ws("u1");
    let again = u1b.request_ok(
        json!({"type": "send", "room_id": "r1", "text": "hello", "client_msg_id": "c1"}),
        "sent",
    );
    assert_eq!(
        (again["seq"].clone(), again["ts"].clone()),
        (first["seq"].clone(), first["ts"].clone())
    );
    d1.expect_no("message", SILENCE);
    u1.expect_no("message", Duration::from_millis(50));

    let history = d1.sync(json!({"room_id": "r1"}));
    assert_eq!(seqs_of(&history), vec![1]);
    assert_eq!(history["messages"][0]["text"], "hello");

    // Dedup is per sender: another user's c1 is a new message.
    let other = d1.request_ok(
        json!({"type": "send", "room_id": "r1", "text": "mine", "client_msg_id": "c1"}),
        "sent",
    );
    assert_eq!(other["seq"], 2);
    // And per room.
    server.create_room("r2", "u1");
    let r2 = u1.request_ok(
        json!({"type": "send", "room_id": "r2", "text": "hello", "client_msg_id": "c1"}),
        "sent",
    );
    assert_eq!(r2["seq"], 1);
    assert_eq!(r2["room_id"], "r2");

    // client_msg_id length: 1..=64 bytes.
    u1.request_err(
        json!({"type": "send", "room_id": "r1", "text": "x", "client_msg_id": "c".repeat(65)}),
        "bad_request",
    );
    u1.request_err(
        json!({"type": "send", "room_id": "r1", "text": "x", "client_msg_id": ""}),
        "bad_request",
    );
    u1.request_ok(
        json!({"type": "send", "room_id": "r1", "text": "x", "client_msg_id": "c".repeat(64)}),
        "sent",
    );
}

/// With room for four messages of a room in memory, a retry of any earlier send is still
/// answered with its first seq (found on disk), and new ids are never taken for repeats.
#[test]
fn retries_of_ids_that_left_memory_are_found_on_disk() {
    let server = TestServer::start_with(|c| {
        c.history.cache_per_room = 4;
        c.limits.send_rate = 10_000;
    });
    server.create_room("r1", "d1");
    let mut d1 = server.ws("d1");
    let send = |c: &mut Client, n: usize| {
        c.request_ok(
            json!({"type": "send", "room_id": "r1", "text": format!("m{n}"),
                   "client_msg_id": format!("c{n}")}),
            "sent",
        )["seq"]
            .as_u64()
            .unwrap()
    };
    for n in 0..40 {
        assert_eq!(send(&mut d1, n), n as u64 + 1, "new id c{n}");
    }
    for n in [0, 20, 35, 39] {
        assert_eq!(send(&mut d1, n), n as u64 + 1, "retry of c{n}");
    }
    for n in 40..80 {
        assert_eq!(send(&mut d1, n), n as u64 + 1, "new id c{n}");
    }
    let history = d1.sync(json!({"room_id": "r1", "since_seq": 0, "limit": 100}));
    assert_eq!(seqs_of(&history), (1..=80).collect::<Vec<_>>());
}

#[track_caller]
fn assert_direct_room(room: &Value, a: &str, b: &str) {
    assert_eq!(room["kind"], "direct", "{room}");
    assert!(
        room["owner_id"].is_null(),
        "direct owner_id is null: {room}"
    );
    assert!(
        room.get("owner_id").is_some(),
        "owner_id present as null: {room}"
    );
    let mut want = vec![a.to_owned(), b.to_owned()];
    want.sort();
    assert_eq!(members(room), want);
    assert!(room["room_id"].is_string());
    assert!(room["unread"].is_u64(), "a Room object has unread: {room}");
}

#[test]
fn direct_with_shared_room_policy() {
    let server = TestServer::start();
    let mut u1 = server.ws("u1");
    let mut u2 = server.ws("u2");

    u1.request_err(json!({"type": "direct", "user_id": "u2"}), "forbidden");
    u1.expect_no("joined", SILENCE);
    u2.expect_no("joined", Duration::from_millis(50));

    server.create_room("route", "u1");
    server.add_member("route", "u2");
    u1.expect_push("joined");
    let joined = u2.expect_push("joined");
    assert_eq!(joined["room"]["unread"], 0, "{joined}");
    u1.expect_push("member_joined");

    let reply = u1.request_ok(
        json!({"type": "direct", "user_id": "u2", "id": "d"}),
        "room",
    );
    assert_eq!(reply["id"], "d");
    let room = reply["room"].clone();
    assert_direct_room(&room, "u1", "u2");
    assert_eq!(room["last_seq"], 0);
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    for c in [&mut u1, &mut u2] {
        let joined = c.expect_push("joined");
        assert_eq!(joined["room"]["room_id"], room_id.as_str(), "{joined}");
        assert_direct_room(&joined["room"], "u1", "u2");
    }

    // Same room whichever asks; no second `joined`.
    let again = u2.request_ok(json!({"type": "direct", "user_id": "u1"}), "room");
    assert_eq!(again["room"]["room_id"], room_id.as_str());
    let again = u1.request_ok(json!({"type": "direct", "user_id": "u2"}), "room");
    assert_eq!(again["room"]["room_id"], room_id.as_str());
    u1.expect_no("joined", SILENCE);
    u2.expect_no("joined", Duration::from_millis(50));

    // It is listed and usable.
    let rooms = u2.rooms();
    let listed = find_room(&rooms, &room_id).expect("direct room listed");
    assert_direct_room(listed, "u1", "u2");
    let sent = u2.send_msg(&room_id, "psst");
    for c in [&mut u1, &mut u2] {
        let push = c.expect_push("message");
        assert_eq!(push["message"]["room_id"], room_id.as_str());
        assert_eq!(push["message"]["seq"], sent["seq"]);
        assert_eq!(push["message"]["sender"], "u2");
    }
    // The `room` reply counts what its asker has not read.
    let unread = |c: &mut Client, other: &str| {
        c.request_ok(json!({"type": "direct", "user_id": other}), "room")["room"]["unread"].clone()
    };
    assert_eq!(unread(&mut u1, "u2"), 1);
    assert_eq!(unread(&mut u2, "u1"), 0, "their own message");

    // Once created it stays usable, even when they no longer share a route room.
    server.remove_member("route", "u2");
    let again = u2.request_ok(json!({"type": "direct", "user_id": "u1"}), "room");
    assert_eq!(again["room"]["room_id"], room_id.as_str());
    u2.send_msg(&room_id, "still here");
    u1.request_ok(
        json!({"type": "sync", "room_id": room_id.as_str()}),
        "messages",
    );

    // Still forbidden for others; bad ids are bad_request.
    let mut u3 = server.ws("u3");
    u3.request_err(json!({"type": "direct", "user_id": "u1"}), "forbidden");
    u3.request_err(
        json!({"type": "direct", "user_id": "bad id"}),
        "bad_request",
    );
    u3.request_err(json!({"type": "direct"}), "bad_request");
    // A third user cannot post into the direct room.
    u3.request_err(
        json!({"type": "send", "room_id": room_id.as_str(), "text": "hi"}),
        "not_member",
    );
}

#[test]
fn direct_with_any_policy() {
    let server =
        TestServer::start_with(|c| c.direct.policy = chat_engine::config::DirectPolicy::Any);
    let mut a = server.ws("alice");
    let mut b = server.ws("bob");
    let room = a.request_ok(json!({"type": "direct", "user_id": "bob"}), "room")["room"].clone();
    assert_direct_room(&room, "alice", "bob");
    let id = room["room_id"].as_str().unwrap().to_owned();
    assert_eq!(a.expect_push("joined")["room"]["room_id"], id.as_str());
    assert_eq!(b.expect_push("joined")["room"]["room_id"], id.as_str());
    let same = b.request_ok(json!({"type": "direct", "user_id": "alice"}), "room");
    assert_eq!(same["room"]["room_id"], id.as_str());
    b.send_msg(&id, "hi alice");
    assert_eq!(a.expect_push("message")["message"]["text"], "hi alice");
    // Different pairs get different rooms.
    let other = a.request_ok(json!({"type": "direct", "user_id": "carol"}), "room");
    assert_ne!(other["room"]["room_id"], id.as_str());
}

#[test]
fn typing_reaches_other_members_only() {
    let server = TestServer::start();
    server.create_room("r1", "u1");
    server.add_member("r1", "u2");
    server.add_member("r1", "u3");
    server.create_room("other", "u4");
    let mut u1 = server.ws("u1");
    let mut u2 = server.ws("u2");
    let mut u3 = server.ws("u3");
    let mut u4 = server.ws("u4");

    u1.send_json(&json!({"type": "typing", "room_id": "r1"}));
    for c in [&mut u2, &mut u3] {
        let t = c.expect_push("typing");
        assert_eq!(t["room_id"], "r1");
        assert_eq!(t["user_id"], "u1");
    }
    u1.expect_no("typing", SILENCE);
    u4.expect_no("typing", Duration::from_millis(50));
    // typing has no reply: the next reply is the pong.
    let pong = u1.request(json!({"type": "ping", "id": "after-typing"}));
    assert_eq!(pong["type"], "pong");
    u1.expect_silence(Duration::from_millis(50));
}

#[test]
fn membership_pushes() {
    let server = TestServer::start();
    let mut d1 = server.ws("d1");
    server.create_room("r1", "d1");
    let joined = d1.expect_push("joined");
    assert_eq!(joined["room"]["room_id"], "r1");
    assert_eq!(joined["room"]["kind"], "route");
    assert_eq!(joined["room"]["owner_id"], "d1");
    assert_eq!(members(&joined["room"]), vec!["d1"]);

    let mut u1 = server.ws("u1");
    server.add_member("r1", "u1");
    let joined = u1.expect_push("joined");
    assert_eq!(joined["room"]["room_id"], "r1");
    assert_eq!(members(&joined["room"]), vec!["d1", "u1"]);
    let mj = d1.expect_push("member_joined");
    assert_eq!(
        (mj["room_id"].clone(), mj["user_id"].clone()),
        (json!("r1"), json!("u1"))
    );
    u1.expect_no("member_joined", SILENCE);

    server.remove_member("r1", "u1");
    let left = u1.expect_push("left");
    assert_eq!(left["room_id"], "r1");
    let ml = d1.expect_push("member_left");
    assert_eq!(
        (ml["room_id"].clone(), ml["user_id"].clone()),
        (json!("r1"), json!("u1"))
    );
    u1.expect_no("member_left", SILENCE);

    // After leaving: no messages, no typing.
    d1.send_msg("r1", "not for u1");
    d1.send_json(&json!({"type": "typing", "room_id": "r1"}));
    u1.expect_silence(SILENCE);

    // Room close: `left` to every member.
    server.add_member("r1", "u1");
    u1.expect_push("joined");
    d1.expect_push("member_joined");
    let (status, _) = server.rest("DELETE", "/v1/rooms/r1", None);
    assert_eq!(status, 204);
    assert_eq!(u1.expect_push("left")["room_id"], "r1");
    assert_eq!(d1.expect_push("left")["room_id"], "r1");
}

#[test]
fn bad_frames_get_bad_request_and_keep_the_connection() {
    let server = TestServer::start();
    server.create_room("r1", "u1");
    let mut c = server.ws("u1");

    c.send_text("{not json");
    let e = c.recv_json();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].is_string());

    c.send_binary(vec![1, 2, 3]);
    let e = c.recv_json();
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!("bad_request")),
        "{e}"
    );

    c.request_err(json!({"type": "no_such_type"}), "bad_request");
    c.request_err(json!({"no_type": 1}), "bad_request");
    c.request_err(json!({"type": 5}), "bad_request");
    c.request_err(json!({"type": "send", "room_id": "r1"}), "bad_request");
    c.request_err(json!({"type": "send", "text": "x"}), "bad_request");
    c.request_err(
        json!({"type": "send", "room_id": "r1", "text": 5}),
        "bad_request",
    );
    c.request_err(
        json!({"type": "send", "room_id": 5, "text": "x"}),
        "bad_request",
    );
    c.request_err(
        json!({"type": "send", "room_id": "r1", "text": "x", "data": [1]}),
        "bad_request",
    );
    c.request_err(json!({"type": "typing"}), "bad_request");
    c.request_err(json!({"type": "direct", "user_id": 3}), "bad_request");
    c.send_text("[1,2,3]");
    assert_eq!(c.recv_json()["code"], "bad_request");
    c.send_text("\"just a string\"");
    assert_eq!(c.recv_json()["code"], "bad_request");

    // The connection is still open and works.
    let pong = c.request(json!({"type": "ping"}));
    assert_eq!(pong["type"], "pong");
    c.send_msg("r1", "still works");
    let history = c.sync(json!({"room_id": "r1"}));
    assert_eq!(seqs_of(&history), vec![1], "no bad frame stored anything");
}

#[test]
fn not_member_and_not_found() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    server.post_message("r1", json!({"text": "private"}));
    let mut c = server.ws("u1");
    c.request_err(
        json!({"type": "send", "room_id": "r1", "text": "x"}),
        "not_member",
    );
    c.request_err(json!({"type": "sync", "room_id": "r1"}), "not_member");
    c.request_err(
        json!({"type": "sync", "room_id": "r1", "since_seq": 0}),
        "not_member",
    );
    c.request_err(
        json!({"type": "sync", "room_id": "no-such-room"}),
        "not_found",
    );
    let history = server.rest("GET", "/v1/rooms/r1/messages", None).1;
    assert_eq!(
        seqs_of(&history),
        vec![1],
        "the non-member's send was not stored"
    );
    // Closed room: sync as a former member answers not_found, send is refused.
    server.add_member("r1", "u1");
    server.rest("DELETE", "/v1/rooms/r1", None);
    let e = c.request(json!({"type": "send", "room_id": "r1", "text": "x"}));
    assert_eq!(e["type"], "error", "send into a closed room: {e}");
}

#[test]
fn too_large_message_is_refused_and_not_stored() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 100);
    server.create_room("r1", "u1");
    let mut c = server.ws("u1");
    c.request_err(
        json!({"type": "send", "room_id": "r1", "text": "x".repeat(101)}),
        "too_large",
    );
    // text plus data (as JSON) counts.
    c.request_err(
        json!({"type": "send", "room_id": "r1", "text": "x".repeat(60), "data": {"k": "v".repeat(50)}}),
        "too_large",
    );
    // Multi-byte characters count in bytes: 51 × 2 bytes.
    c.request_err(
        json!({"type": "send", "room_id": "r1", "text": "é".repeat(51)}),
        "too_large",
    );
    let ok = c.send_msg("r1", &"x".repeat(100));
    assert_eq!(ok["seq"], 1);
    let history = c.sync(json!({"room_id": "r1"}));
    assert_eq!(seqs_of(&history), vec![1]);
    assert_eq!(
        c.request(json!({"type": "ping"}))["type"],
        "pong",
        "connection stays open"
    );
}

#[test]
fn frame_over_max_frame_bytes_closes_with_1009() {
    let server = TestServer::start_with(|c| {
        c.limits.max_frame_bytes = 2048;
        c.limits.max_message_bytes = 16384;
    });
    server.create_room("r1", "u1");
    let mut c = server.ws("u1");
    // Under the limit is fine.
    c.send_msg("r1", &"a".repeat(1500));
    c.send_json(&json!({"type": "send", "room_id": "r1", "text": "b".repeat(4000)}));
    assert_eq!(c.expect_close(RECV_TIMEOUT), Some(1009));
    let history = server.rest("GET", "/v1/rooms/r1/messages", None).1;
    assert_eq!(
        seqs_of(&history),
        vec![1],
        "the oversized frame stored nothing"
    );

    // Only `resume` may be larger than max_frame_bytes, up to its own bound; a frame over
    // that is cut off while it is read.
    let mut c = server.ws("u1");
    let padding = "x".repeat(4000);
    c.send_json(&json!({"type": "rooms", "padding": padding}));
    assert_eq!(c.expect_close(RECV_TIMEOUT), Some(1009));
    let mut c = server.ws("u1");
    let listed = json!({"r1": {"seq": 0, "epoch": "e"}});
    let reply = c.request(json!({"type": "resume", "rooms": listed, "padding": padding}));
    assert_eq!(reply["type"], "resumed");
    let huge = "x".repeat(server.config.limits.max_resume_frame_bytes() + 1);
    c.send_json(&json!({"type": "resume", "rooms": {}, "padding": huge}));
    assert_eq!(c.expect_close(RECV_TIMEOUT), Some(1009));
}

#[test]
fn bad_frames_in_a_row_close_with_1008() {
    let server = TestServer::start_with(|c| c.limits.max_bad_frames = 3);
    let mut c = server.ws("u1");
    // Two bad, one good: the count restarts.
    for _ in 0..2 {
        c.send_text("nope");
        assert_eq!(c.recv_json()["code"], "bad_request");
    }
    assert_eq!(c.request(json!({"type": "ping"}))["type"], "pong");
    for _ in 0..2 {
        c.send_text("nope");
        assert_eq!(c.recv_json()["code"], "bad_request");
    }
    assert_eq!(
        c.request(json!({"type": "ping"}))["type"],
        "pong",
        "still open"
    );
    // Three in a row: closed with 1008, after the error of each.
    for _ in 0..3 {
        c.send_text("nope");
    }
    assert_eq!(c.expect_close(RECV_TIMEOUT), Some(1008));
    let errors = c.take_buffer();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().all(|e| e["code"] == "bad_request"));
    // Other connections of the user are unaffected; one at a time, the third bad frame is
    // answered too, and then the connection closes.
    let mut other = server.ws("u1");
    assert_eq!(other.request(json!({"type": "ping"}))["type"], "pong");
    for _ in 0..3 {
        other.send_text("nope");
        assert_eq!(other.recv_json()["code"], "bad_request");
    }
    assert_eq!(other.expect_close(RECV_TIMEOUT), Some(1008));
}

#[test]
fn the_default_is_100_bad_frames_each_answered_before_the_1008() {
    let server = TestServer::start();
    let mut c = server.ws("u1");
    for _ in 0..99 {
        c.send_text("{");
    }
    assert_eq!(c.request(json!({"type": "ping"}))["type"], "pong");
    c.take_buffer();
    for _ in 0..100 {
        c.send_text("{");
    }
    assert_eq!(c.expect_close(RECV_TIMEOUT), Some(1008));
    let errors = c.take_buffer();
    assert_eq!(errors.len(), 100);
    assert!(errors.iter().all(|e| e["code"] == "bad_request"));
}

#[test]
fn invalid_sends_are_bad_frames_and_cost_no_send() {
    let server = TestServer::start_with(|c| {
        c.limits.send_rate = 2;
        c.limits.max_bad_frames = 8;
    });
    server.create_room("r1", "u1");
    let mut c = server.ws("u1");
    let long_id = "x".repeat(65);
    let invalid = [
        json!({"type": "send", "room_id": "r1", "text": "a", "data": [1]}),
        json!({"type": "send", "room_id": "r1", "text": "a", "data": "x"}),
        json!({"type": "send", "room_id": "r1", "text": "a", "client_msg_id": ""}),
        json!({"type": "send", "room_id": "r1", "text": "a", "client_msg_id": long_id}),
        json!({"type": "react", "room_id": "r1", "seq": 1, "reaction": ""}),
        json!({"type": "edit", "room_id": "r1", "seq": 1, "text": "a", "data": 5}),
    ];
    for frame in &invalid {
        c.request_err(frame.clone(), "bad_request");
    }
    // None took one of the burst of 4: all four sends are accepted.
    for i in 0..4 {
        c.request_ok(
            json!({"type": "send", "room_id": "r1", "text": format!("m{i}")}),
            "sent",
        );
    }
    // And they count as bad frames: eight in a row close the connection.
    for frame in invalid.iter().chain(&invalid[..2]) {
        c.send_json(frame);
    }
    assert_eq!(c.expect_close(RECV_TIMEOUT), Some(1008));
}

#[test]
fn sends_faster_than_send_rate_are_rate_limited() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 2);
    server.create_room("r1", "u1");
    let mut c = server.ws("u1");
    for i in 0..5 {
        c.send_json(&json!({"type": "send", "room_id": "r1", "text": format!("m{i}"), "id": i}));
    }
    for i in 0..4 {
        let reply = c.wait_reply(&json!(i));
        assert_eq!(
            reply["type"], "sent",
            "send {i} of a burst of 4 (2x send_rate): {reply}"
        );
    }
    let fifth = c.wait_reply(&json!(4));
    assert_eq!(fifth["type"], "error", "5th immediate send: {fifth}");
    assert_eq!(fifth["code"], "rate_limited");
    let history = c.sync(json!({"room_id": "r1", "since_seq": 0}));
    assert_eq!(
        seqs_of(&history),
        vec![1, 2, 3, 4],
        "the rate-limited send stored nothing"
    );
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["m0", "m1", "m2", "m3"]);
    // The bucket refills at send_rate per second.
    std::thread::sleep(Duration::from_millis(1100));
    c.send_msg("r1", "after a pause");
    // Non-send requests are not rate limited.
    for _ in 0..20 {
        assert_eq!(c.request(json!({"type": "ping"}))["type"], "pong");
    }
}

#[test]
fn connections_beyond_the_per_user_limit_get_429() {
    let server = TestServer::start_with(|c| c.limits.max_connections_per_user = 2);
    let a = server.ws("u1");
    let mut b = server.ws("u1");
    assert_eq!(http_status(server.try_ws("u1")), 429);
    // Other users are not affected.
    let _other = server.ws("u2");
    // After one closes, a new one is accepted (the server may take a moment to notice).
    a.close();
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut c = loop {
        match server.try_ws("u1") {
            Ok(c) => break c,
            Err(ConnectError::Http(429)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("reconnect after a close: {e:?}"),
        }
    };
    assert_eq!(c.request(json!({"type": "ping"}))["type"], "pong");
    assert_eq!(b.request(json!({"type": "ping"}))["type"], "pong");
    assert_eq!(http_status(server.try_ws("u1")), 429);
}

#[test]
fn every_device_of_a_user_gets_every_push() {
    let server = TestServer::start();
    server.create_room("r1", "d1");
    let mut phone = server.ws("u1");
    let mut tablet = server.ws("u1");
    phone.user = "u1-phone".into();
    tablet.user = "u1-tablet".into();
    let mut d1 = server.ws("d1");

    server.add_member("r1", "u1");
    for c in [&mut phone, &mut tablet] {
        assert_eq!(c.expect_push("joined")["room"]["room_id"], "r1");
    }
    d1.send_msg("r1", "from d1");
    let sent = phone.send_msg("r1", "from my phone");
    d1.send_json(&json!({"type": "typing", "room_id": "r1"}));
    for c in [&mut phone, &mut tablet] {
        let m1 = c.expect_push("message");
        assert_eq!(m1["message"]["text"], "from d1");
        let m2 = c.expect_push("message");
        assert_eq!(m2["message"]["text"], "from my phone");
        assert_eq!(m2["message"]["seq"], sent["seq"]);
        assert_eq!(c.expect_push("typing")["user_id"], "d1");
    }
    // A typing from one device is not echoed to the user's other device.
    phone.send_json(&json!({"type": "typing", "room_id": "r1"}));
    assert_eq!(d1.expect_push("typing")["user_id"], "u1");
    tablet.expect_no("typing", SILENCE);

    server.remove_member("r1", "u1");
    for c in [&mut phone, &mut tablet] {
        assert_eq!(c.expect_push("left")["room_id"], "r1");
    }
}

#[test]
fn shutdown_closes_connections_with_1001() {
    let server = TestServer::start();
    server.create_room("r1", "u1");
    let mut a = server.ws("u1");
    let mut b = server.ws("u2");
    let stopper = std::thread::spawn(move || server.stop());
    assert_eq!(a.expect_close(Duration::from_secs(15)), Some(1001));
    assert_eq!(b.expect_close(Duration::from_secs(15)), Some(1001));
    stopper.join().expect("server stopped cleanly");
}

/// A client that keeps sending but never reads fills its socket, and the server's write to
/// it stalls: once it has stalled for `limits.idle_timeout_ms` (checked at the ping ticks)
/// the server drops the connection, whatever the client sends, and serves everyone else.
#[test]
fn a_write_stalled_past_the_idle_timeout_drops_the_connection() {
    let server = TestServer::start_with(|c| {
        c.limits.ping_interval_ms = 200;
        c.limits.idle_timeout_ms = 1_500;
        c.limits.max_message_bytes = 60_000;
    });
    server.create_room("r1", "owner");
    server.add_member("r1", "stuck");
    let mut stuck = server.ws("stuck");
    // Far more than the socket buffers hold; the queue (16 MiB) takes the rest.
    let big = "s".repeat(50_000);
    server.post_in_parallel("r1", "t", 4, 100, move |_, _| big.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.metric("chat_engine_connections") > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a connection whose writes stalled was never dropped"
        );
        // Never silent: only the writes stall.
        stuck.send_json(&json!({"type": "ping"}));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut other = server.ws("other");
    other.request_ok(json!({"type": "ping"}), "pong");
}

#[test]
fn full_outbound_queue_closes_with_1013_and_sync_recovers() {
    let server = TestServer::start_with(|c| {
        c.limits.outbound_queue = 4;
        c.limits.max_message_bytes = 60_000;
    });
    server.create_room("r1", "owner");
    server.add_member("r1", "slow");
    let mut slow = server.ws("slow");
    // Post far more than the socket buffers hold while `slow` reads nothing (REST, 8 threads).
    let total = 1600u64;
    let big = "z".repeat(50_000);
    server.post_in_parallel("r1", "t", 8, total as usize / 8, move |_, _| big.clone());
    // `slow` gets some messages in order, then 1013.
    let mut got = Vec::new();
    let code = loop {
        match slow.read_socket(RECV_TIMEOUT) {
            Incoming::Frame(f) => {
                if f["type"] == "message" {
                    got.push(f["message"]["seq"].as_u64().unwrap());
                }
            }
            Incoming::Closed(code) => break code,
            Incoming::Timeout => {
                panic!(
                    "slow consumer was never closed ({} messages read)",
                    got.len()
                )
            }
        }
    };
    assert_eq!(code, Some(1013), "slow consumer close code");
    assert!(
        (got.len() as u64) < total,
        "it was closed before getting everything"
    );
    for w in got.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "pushes before the close are in order without gaps"
        );
    }
    // Reconnect and sync: nothing lost.
    let mut again = server.ws("slow");
    let from = got.last().copied().unwrap_or(0);
    let rest = again.sync_all_since_seq("r1", from, 100);
    assert_eq!(seqs(&rest), (from + 1..=total).collect::<Vec<_>>());
}

/// Sends pipelined without waiting for `sent`: the replies come back in request order with
/// increasing seqs, a ping in between is answered in its place, and nothing is lost.
#[test]
fn pipelined_sends_are_answered_in_order() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 100_000);
    server.create_room("r1", "u1");
    let mut c = server.ws("u1");
    const SENDS: u64 = 300;
    for i in 0..SENDS {
        c.send_json(&json!({"type": "send", "id": i, "room_id": "r1", "text": format!("m{i}")}));
        if i == SENDS / 2 {
            c.send_json(&json!({"type": "ping", "id": "in-between"}));
        }
    }
    let mut replies = Vec::new();
    while replies.len() < SENDS as usize + 1 {
        let frame = c.recv_json();
        if frame["type"] != "message" {
            replies.push(frame);
        }
    }
    let ids: Vec<Value> = replies.iter().map(|r| r["id"].clone()).collect();
    let mut want: Vec<Value> = (0..SENDS).map(|i| json!(i)).collect();
    want.insert(SENDS as usize / 2 + 1, json!("in-between"));
    assert_eq!(ids, want, "replies in request order");
    let sent: Vec<u64> = replies
        .iter()
        .filter(|r| r["type"] == "sent")
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(sent, (1..=SENDS).collect::<Vec<_>>());
}

/// A plain GET of `/v1/ws` with a good token: 426 Upgrade Required, saying which upgrade,
/// with the error body every refusal has.
#[test]
fn a_plain_get_of_the_websocket_path_is_426_with_the_upgrade_named() {
    let server = TestServer::start();
    let url = server
        .ws_url(Some(&server.token("u1")))
        .replacen("ws://", "http://", 1);
    let mut response = common::agent().get(&url).call().expect("GET /v1/ws");
    assert_eq!(response.status().as_u16(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["code"], "bad_request", "{body}");
    assert!(body["message"].is_string());
}
