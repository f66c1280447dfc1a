//! `/asyncapi.json` against the official parser and a real session: `@asyncapi/parser` (npm,
//! run by node in tests/e2e/asyncapi.cjs) must find no error in the document, every frame
//! the server sends in a session that makes it send every kind of frame must match its
//! message's schema (ajv, no property the schema does not name), and so must every client
//! frame the session sends. The session covers exactly the frames the document lists.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::{node_path, tool_available, Client, TestServer};

/// The client frames sent, to be checked against their schemas.
#[derive(Default)]
struct Sent(Vec<Value>);

impl Sent {
    /// A request with a reply; returns the reply.
    #[track_caller]
    fn ask(&mut self, client: &mut Client, frame: Value) -> Value {
        self.0.push(frame.clone());
        client.request(frame)
    }

    /// A frame with no reply.
    #[track_caller]
    fn tell(&mut self, client: &mut Client, frame: Value) {
        self.0.push(frame.clone());
        client.send_json(&frame);
    }
}

/// The `type`s of the document's messages sent by `from` (`client` or `server`).
fn documented(document: &Value, from: &str) -> BTreeSet<String> {
    let prefix = format!("{from}.");
    document["channels"]["ws"]["messages"]
        .as_object()
        .expect("the channel's messages")
        .keys()
        .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

fn types(frames: &[Value]) -> BTreeSet<String> {
    frames
        .iter()
        .map(|frame| frame["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Makes the server send every kind of frame; returns what the clients sent and received.
fn session(server: &TestServer) -> (Vec<Value>, Vec<Value>) {
    server.create_room("route-42", "alice");
    server.add_member("route-42", "bob");
    let mut alice = server.ws("alice");
    let mut bob = server.ws("bob");
    alice.record();
    bob.record();
    let mut sent = Sent::default();
    let room = |extra: Value| {
        let mut frame = json!({"room_id": "route-42"});
        for (key, value) in extra.as_object().unwrap() {
            frame[key] = value.clone();
        }
        frame
    };
    sent.ask(&mut alice, json!({"type": "rooms"}));
    sent.ask(&mut alice, json!({"type": "rooms", "limit": 1}));
    // At most four sends or changes per user (bursts of twice `send_rate`) before the flood.
    let target = sent.ask(
        &mut alice,
        room(json!({"type": "send", "text": "Pickup in 5", "client_msg_id": "a-1", "data": {"eta_min": 5}})),
    )["seq"]
        .clone();
    sent.ask(&mut bob, room(json!({"type": "send", "text": "On my way"})));
    let on_target = |extra: Value| {
        let mut frame = room(extra);
        frame["seq"] = target.clone();
        frame
    };
    // Before the direct room exists: resume's maps are keyed by room id.
    sent.ask(
        &mut bob,
        json!({"type": "resume", "rooms": {"route-42": {"seq": 1, "epoch": "old"}, "route-9": {"seq": 4, "epoch": "old"}}, "limit": 10}),
    );
    sent.ask(
        &mut alice,
        on_target(json!({"type": "edit", "text": "Pickup in 10"})),
    );
    sent.ask(
        &mut bob,
        on_target(json!({"type": "react", "reaction": "👍"})),
    );
    // The same reaction again changes nothing: `ok`.
    sent.ask(
        &mut bob,
        on_target(json!({"type": "react", "reaction": "👍"})),
    );
    for cursor in [
        json!({}),
        json!({"since_seq": 0, "limit": 2}),
        json!({"since_ts": 0}),
        json!({"before_seq": 3}),
    ] {
        let mut frame = room(cursor);
        frame["type"] = json!("sync");
        sent.ask(&mut alice, frame);
    }
    sent.ask(
        &mut bob,
        on_target(json!({"type": "react", "reaction": "👍", "removed": true})),
    );
    sent.ask(
        &mut alice,
        on_target(json!({"type": "delete", "client_msg_id": "d-1"})),
    );
    sent.ask(&mut bob, json!({"type": "direct", "user_id": "alice"}));
    sent.ask(&mut bob, room(json!({"type": "read", "seq": 2})));
    sent.tell(&mut bob, room(json!({"type": "typing"})));
    alice.expect_push("typing");
    sent.tell(&mut bob, room(json!({"type": "received", "seq": 2})));
    sent.ask(&mut bob, json!({"type": "ping", "id": 7}));
    // Errors: a frame that is not JSON (no id), a room that does not exist, a flood.
    bob.send_text("not json");
    bob.expect_push("error");
    sent.ask(&mut bob, json!({"type": "sync", "room_id": "no-such-room"}));
    let flood = (0..10)
        .map(|i| {
            sent.ask(
                &mut alice,
                room(json!({"type": "send", "text": format!("x{i}")})),
            )
        })
        .collect::<Vec<_>>();
    assert!(
        flood.iter().any(|reply| reply["code"] == "rate_limited"),
        "the flood is limited: {flood:?}"
    );
    // Pushes of membership.
    alice.expect_push("joined");
    server.add_member("route-42", "carol");
    alice.expect_push("member_joined");
    server.remove_member("route-42", "carol");
    alice.expect_push("member_left");
    server.remove_member("route-42", "bob");
    bob.expect_push("left");
    // A token ending within 60 s is warned of at once, and refreshed.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ending = server.token_with(&json!({"sub": "dave", "exp": now + 30}));
    let mut dave = server.try_ws_token(&ending).expect("connect dave");
    dave.record();
    dave.expect_push("token_expiring");
    sent.ask(
        &mut dave,
        json!({"type": "auth", "token": server.token("dave")}),
    );
    let received = [alice.recorded(), bob.recorded(), dave.recorded()].concat();
    (sent.0, received)
}

#[test]
fn the_asyncapi_document_passes_the_parser_and_describes_every_frame_of_a_session() {
    let mut probe = Command::new("node");
    probe
        .args(["-e", "require('@asyncapi/parser'); require('ajv')"])
        .env("NODE_PATH", node_path());
    if !tool_available(
        "the_asyncapi_document_passes_the_parser_and_describes_every_frame_of_a_session",
        "node with @asyncapi/parser and ajv",
        probe,
    ) {
        return;
    }
    let server = TestServer::start_with(|config| config.limits.send_rate = 2);
    let (status, document) = server.rest("GET", "/asyncapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(document["asyncapi"], "3.0.0");

    let (sent, received) = session(&server);
    // The session covers the document: a frame added to the protocol is added here too.
    assert_eq!(
        types(&sent),
        documented(&document, "client"),
        "client frames"
    );
    assert_eq!(
        types(&received),
        documented(&document, "server"),
        "server frames"
    );

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let document_path = dir.join("asyncapi.json");
    let frames_path = dir.join("asyncapi-frames.json");
    std::fs::write(&document_path, document.to_string()).unwrap();
    let frames: Vec<Value> = sent
        .iter()
        .map(|frame| json!({"from": "client", "frame": frame}))
        .chain(
            received
                .iter()
                .map(|frame| json!({"from": "server", "frame": frame})),
        )
        .collect();
    std::fs::write(&frames_path, Value::from(frames).to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/asyncapi.cjs");
    let out = Command::new("node")
        .arg(script)
        .arg(&document_path)
        .arg(&frames_path)
        .env("NODE_PATH", node_path())
        .output()
        .expect("run node");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("0 problem(s)"), "{report}");
}
