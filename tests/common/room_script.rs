//! One script of everything a room goes through (REST and WebSocket, every kind of change),
//! that records what clients see. Run on a server whose rooms leave memory between steps
//! and on one whose rooms stay, it must record the same thing: a room unloaded and loaded
//! again behaves exactly as if it had stayed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{find_room, Endpoint};

/// What the script saw, timestamps and epochs removed (two servers never agree on them).
pub struct Seen(pub Vec<Value>);

/// Runs the script: RouteAPI calls go to `rest`, the apps connect to `ws` (in cluster mode,
/// two nodes). Before each step the room's users touch other rooms on both, which pushes the
/// script's room out of a small `rooms.max_in_memory`.
pub fn run(rest: &Endpoint, ws: &Endpoint) -> Seen {
    let mut seen = Vec::new();
    let mut note = |value: Value| seen.push(comparable(value));
    let churn = || {
        for endpoint in [rest, ws] {
            for room in ["elsewhere-1", "elsewhere-2"] {
                let path = format!("/v1/rooms/{room}/messages");
                assert_eq!(endpoint.rest("GET", &path, None).0, 200);
            }
        }
    };
    for room in ["elsewhere-1", "elsewhere-2"] {
        rest.create_room(room, "someone");
        wait_until_open(ws, room);
    }

    note(rest.create_room("a", "d"));
    wait_until_open(ws, "a");
    let mut d = ws.ws("d");
    rest.add_member("a", "r");
    d.expect_push("member_joined");
    let mut r = ws.ws("r");
    churn();

    // RouteAPI's system message, then its repeat: the same seq, from the dedup record.
    let system = json!({"text": "pickup at 9", "client_msg_id": "c1"});
    note(json!(rest.rest(
        "POST",
        "/v1/rooms/a/messages",
        Some(system.clone())
    )));
    note(d.expect_push("message"));
    note(r.expect_push("message"));
    churn();
    note(json!(rest.rest(
        "POST",
        "/v1/rooms/a/messages",
        Some(system)
    )));

    // Sends over WebSocket, with a repeated client_msg_id after the room left memory.
    churn();
    let send = json!({"type": "send", "room_id": "a", "text": "on my way", "client_msg_id": "w1"});
    note(d.request_ok(send.clone(), "sent"));
    note(r.expect_push("message"));
    churn();
    note(d.request_ok(send, "sent"));
    churn();
    note(json!(r.rooms()));

    // Read markers and unread counts: the rider's own messages never count for them.
    r.request_ok(json!({"type": "read", "room_id": "a", "seq": 1}), "ok");
    churn();
    note(json!(r.rooms()));
    note(r.send_msg("a", "waiting at the corner"));
    note(d.expect_push("message"));
    churn();
    note(json!(r.rooms()));
    note(json!(d.rooms()));

    // A change to a message, and history showing the target as it is now.
    churn();
    let edit = json!({"type": "edit", "room_id": "a", "seq": 2, "text": "5 min away"});
    note(d.request_ok(edit, "sent"));
    note(r.expect_push("message"));
    churn();
    let react = json!({"type": "react", "room_id": "a", "seq": 2, "reaction": "👍"});
    note(r.request_ok(react, "sent"));
    note(d.expect_push("message"));
    churn();
    note(r.sync(json!({"room_id": "a", "since_seq": 0})));

    // The direct-room policy reads who shares a route room.
    churn();
    note(r.request_ok(json!({"type": "direct", "user_id": "d"}), "room"));
    note(d.expect_push("joined"));
    let mut x = ws.ws("x");
    note(x.request_err(json!({"type": "direct", "user_id": "d"}), "forbidden"));

    // Membership: a new member starts with nothing unread; one who leaves is told.
    churn();
    rest.add_member("a", "s");
    note(d.expect_push("member_joined"));
    churn();
    let mut s = ws.ws("s");
    note(json!(s.rooms()));
    churn();
    rest.remove_member("a", "r");
    note(r.expect_push("left"));
    note(d.expect_push("member_left"));
    churn();
    note(json!(r.rooms()));
    note(r.request_err(
        json!({"type": "send", "room_id": "a", "text": "hi"}),
        "not_member",
    ));

    // A message for a member connected meanwhile, while the room was out of memory.
    churn();
    note(rest.post_message("a", json!({"text": "arrived"})));
    note(d.expect_push("message"));
    note(s.expect_push("message"));
    churn();
    note(json!(find_room(&s.rooms(), "a").cloned()));

    // Closing: everyone is told, the id is spent, history stays readable for RouteAPI.
    churn();
    note(json!(rest.rest("DELETE", "/v1/rooms/a", None)));
    note(d.expect_push("left"));
    note(s.expect_push("left"));
    churn();
    note(json!(rest.rest("GET", "/v1/rooms/a", None)));
    note(json!(rest.rest("GET", "/v1/rooms/a/messages", None)));
    note(json!(rest.rest(
        "PUT",
        "/v1/rooms/a",
        Some(json!({"owner_id": "d"}))
    )));
    for client in [d, r, s, x] {
        client.close();
    }
    Seen(seen)
}

/// Waits until `endpoint` has room `room` (in cluster mode, once it applied the creation).
fn wait_until_open(endpoint: &Endpoint, room: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint.rest("GET", &format!("/v1/rooms/{room}"), None).0 != 200 {
        assert!(Instant::now() < deadline, "room {room} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `value` with every `ts`, `*_ts` and `epoch` field removed, at any depth.
fn comparable(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(key, _)| key != "ts" && key != "epoch" && !key.ends_with("_ts"))
                .map(|(key, value)| (key, comparable(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(comparable).collect()),
        other => other,
    }
}

impl Seen {
    /// Asserts the two runs saw the same, step by step, naming the first difference.
    #[track_caller]
    pub fn assert_same_as(&self, other: &Seen) {
        for (step, (a, b)) in self.0.iter().zip(&other.0).enumerate() {
            assert_eq!(a, b, "step {step} differs");
        }
        assert_eq!(self.0.len(), other.0.len());
    }
}

/// Checks a few of the script's answers outright, so that two servers agreeing on a wrong
/// answer still fail.
#[track_caller]
pub fn assert_expected(seen: &Seen) {
    let text = |v: &Value| v.to_string();
    let all: Vec<String> = seen.0.iter().map(text).collect();
    // The repeated system message and send answer with the first seq.
    assert_eq!(seen.0[1][1]["message"]["seq"], 1, "{}", all[1]);
    assert_eq!(seen.0[1][0], 201);
    assert_eq!(seen.0[4][1]["message"]["seq"], 1, "{}", all[4]);
    assert_eq!(seen.0[4][0], 200, "a repeat is 200: {}", all[4]);
    assert_eq!(
        (seen.0[5]["seq"].clone(), seen.0[7]["seq"].clone()),
        (json!(2), json!(2))
    );
    let unread = |i: usize, room: &str| {
        let rooms = seen.0[i].as_array().cloned().unwrap_or_default();
        find_room(&rooms, room).map(|r| r["unread"].clone())
    };
    assert_eq!(unread(8, "a"), Some(json!(2)), "{}", all[8]);
    assert_eq!(
        unread(9, "a"),
        Some(json!(1)),
        "after reading seq 1: {}",
        all[9]
    );
    assert_eq!(
        unread(12, "a"),
        Some(json!(1)),
        "own messages never count: {}",
        all[12]
    );
    assert_eq!(
        unread(13, "a"),
        Some(json!(2)),
        "the driver: seq 1 and 3: {}",
        all[13]
    );
}
