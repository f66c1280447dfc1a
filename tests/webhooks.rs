//! Events for RouteAPI (PROTOCOL.md "Events for RouteAPI and push notifications"): the
//! durable outbox and its sender, against a real HTTP receiver on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use chat_engine::config::EventType;
use common::receiver::{Answer, Receiver};
use common::{config_toml, Process, TestServer};

const SECRET: &str = "webhook-test-secret";

fn hooks(url: String, c: &mut chat_engine::Config) {
    c.webhooks.url = Some(url);
    c.webhooks.secret = SECRET.into();
}

/// The message events' seqs per room, each id once, in the order they arrived.
fn messages_by_room(events: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut rooms: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in events.iter().filter(|e| e["type"] == "message") {
        if seen.insert(event["id"].to_string()) {
            let room = event["room_id"].as_str().unwrap().to_owned();
            rooms
                .entry(room)
                .or_default()
                .push(event["message"]["seq"].as_u64().unwrap());
        }
    }
    rooms
}

fn count_messages(events: &[Value]) -> usize {
    messages_by_room(events).values().map(Vec::len).sum()
}

/// A loopback port nothing listens on (yet).
fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn events_arrive_signed_in_batches_and_in_commit_order() {
    let receiver = Receiver::start();
    let server = TestServer::start_with(|c| {
        hooks(receiver.url(), c);
        c.webhooks.batch_size = 3;
        c.webhooks.events = vec![EventType::Message, EventType::Read];
    });
    for room in ["a", "b"] {
        server.create_room(room, "driver");
        server.add_member(room, "rider");
    }
    for i in 1..=5 {
        for room in ["a", "b"] {
            server.post_message(room, json!({"text": format!("{room} {i}")}));
        }
    }
    let mut rider = server.ws("rider");
    rider.request_ok(json!({"type": "read", "room_id": "a", "seq": 4}), "ok");
    let events = receiver.wait_for("10 messages and a read", |events| {
        count_messages(events) == 10 && events.iter().any(|e| e["type"] == "read")
    });
    for request in receiver.requests() {
        let signature = format!(
            "sha256={}",
            chat_engine::engine::sign(SECRET, &request.body)
        );
        assert_eq!(request.signature.as_deref(), Some(signature.as_str()));
        assert!(
            (1..=3).contains(&request.events().len()),
            "batches of at most 3"
        );
    }
    let rooms = messages_by_room(&events);
    assert_eq!(rooms["a"], [1, 2, 3, 4, 5], "in commit order per room");
    assert_eq!(rooms["b"], [1, 2, 3, 4, 5]);
    let epoch = server.epoch("a");
    let message = events.iter().find(|e| e["type"] == "message").unwrap();
    assert_eq!(
        message["id"],
        format!("message/{epoch}/{}/1", message["room_id"].as_str().unwrap())
    );
    assert!(message["ts"].as_u64().unwrap() > 0);
    assert_eq!(message["message"]["kind"], "system");
    let read = events.iter().find(|e| e["type"] == "read").unwrap();
    assert_eq!(
        (
            read["room_id"].clone(),
            read["user_id"].clone(),
            read["seq"].clone()
        ),
        (json!("a"), json!("rider"), json!(4))
    );
    assert_eq!(
        read["unread"], 6,
        "1 left in a, 5 in b: the total over all rooms"
    );
    assert_eq!(read["id"], format!("read/{epoch}/a/rider/4"));
    assert!(read.get("users").is_none(), "{read}");
    assert_eq!(
        server.metric("chat_engine_webhook_events_delivered_total"),
        11.0
    );
}

#[test]
fn a_failing_or_hanging_endpoint_is_retried_and_the_chat_goes_on() {
    let receiver = Receiver::start();
    receiver.answer(Answer::Status(500));
    let server = TestServer::start_with(|c| {
        hooks(receiver.url(), c);
        c.webhooks.timeout_ms = 300;
        c.webhooks.events = vec![EventType::Message];
    });
    server.create_room("r", "driver");
    for i in 1..=3 {
        server.post_message("r", json!({"text": format!("m{i}")}));
    }
    assert_eq!(
        server.rest("GET", "/readyz", None).0,
        200,
        "the endpoint is not the chat"
    );
    let retried = || receiver.requests().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while retried() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "500s were not retried"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    receiver.answer(Answer::Hang);
    let hung = retried();
    while retried() == hung {
        assert!(
            std::time::Instant::now() < deadline,
            "no retry after the 500s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The chat is served while the endpoint hangs.
    assert_eq!(server.post_message("r", json!({"text": "m4"}))["seq"], 4);
    receiver.answer(Answer::Status(204));
    let events = receiver.wait_for("4 messages after the endpoint recovered", |events| {
        count_messages(events) == 4
    });
    assert_eq!(messages_by_room(&events)["r"], [1, 2, 3, 4]);
    assert!(server.metric("chat_engine_webhook_request_failures_total") >= 4.0);
    assert_eq!(server.metric("chat_engine_webhook_events_pending"), 0.0);
}

#[test]
fn a_redirect_is_not_an_acknowledgement() {
    let receiver = Receiver::start();
    receiver.answer(Answer::Redirect);
    let server = TestServer::start_with(|c| {
        hooks(receiver.url(), c);
        c.webhooks.events = vec![EventType::Message];
    });
    server.create_room("r", "driver");
    server.post_message("r", json!({"text": "m1"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.requests().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "a 303 was not retried"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(receiver.followed(), 0, "the redirect was followed");
    assert_eq!(server.metric("chat_engine_webhook_events_pending"), 1.0);
    receiver.answer(Answer::Status(200));
    let events = receiver.wait_for("the event after the redirects stopped", |events| {
        count_messages(events) == 1
    });
    assert_eq!(messages_by_room(&events)["r"], [1]);
}

/// A failing endpoint is retried on the backoff (about 100 ms, doubling), also while new
/// events keep coming: they do not cut a wait short.
#[test]
fn new_events_do_not_cut_a_retry_backoff_short() {
    let receiver = Receiver::start();
    receiver.answer(Answer::Status(500));
    let server = TestServer::start_with(|c| {
        hooks(receiver.url(), c);
        c.webhooks.events = vec![EventType::Message];
    });
    server.create_room("r", "driver");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1_500) {
        server.post_message("r", json!({"text": "again"}));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Waits of at least 50, 100, 200, 400 and 800 ms fit at most six tries in 1.5 s.
    let tries = receiver.requests().len();
    assert!(
        (2..=7).contains(&tries),
        "{tries} requests in 1.5 s to a failing endpoint"
    );
}

/// Events wait in the outbox while the endpoint is down, and a kill -9 loses none.
#[test]
fn events_wait_for_a_dead_endpoint_and_survive_kill_9() {
    let addr = free_port();
    let data = tempfile::tempdir().unwrap();
    let config = config_toml(&format!(
        "[webhooks]\nurl = \"http://{addr}/events\"\nsecret = \"{SECRET}\"\nnotify_delay_ms = 200\n"
    ));
    let mut p = Process::start(data.path(), &config);
    p.create_room("r", "driver");
    for i in 1..=4 {
        p.post_message("r", json!({"text": format!("m{i}")}));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.metric("chat_engine_webhook_events_pending") >= 4.0);
    p.kill_9();
    p.wait();
    drop(p);
    let receiver = Receiver::start_on(addr);
    let p = Process::start(data.path(), &config);
    let events = receiver.wait_for("the 4 messages after the restart", |events| {
        count_messages(events) == 4
    });
    assert_eq!(messages_by_room(&events)["r"], [1, 2, 3, 4]);
    // The offline driver's notifies were decided before the kill, or after the restart.
    let epoch = p.epoch("r");
    receiver.wait_for("a notify for each message", |events| {
        (1..=4).all(|seq| {
            let id = format!("notify/{epoch}/r/{seq}");
            events.iter().any(|e| e["id"] == id)
        })
    });
    assert_eq!(p.post_message("r", json!({"text": "m5"}))["seq"], 5);
    receiver.wait_for("the next one too", |events| count_messages(events) == 5);
}

#[test]
fn only_the_chosen_events_are_sent_and_the_oldest_go_over_max_pending() {
    let receiver = Receiver::start();
    let server = TestServer::start_with(|c| {
        hooks(receiver.url(), c);
        c.webhooks.events = vec![EventType::Read];
    });
    server.create_room("r", "driver");
    server.add_member("r", "rider");
    server.post_message("r", json!({"text": "not sent"}));
    let mut rider = server.ws("rider");
    rider.request_ok(json!({"type": "read", "room_id": "r", "seq": 1}), "ok");
    let events = receiver.wait_for("the read", |events| !events.is_empty());
    std::thread::sleep(Duration::from_millis(200));
    let types: Vec<_> = receiver
        .acknowledged()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, [json!("read")], "{events:?}");

    let addr = free_port();
    let capped = TestServer::start_with(|c| {
        hooks(format!("http://{addr}/events"), c);
        c.webhooks.max_pending = 2;
        c.webhooks.events = vec![EventType::Message];
    });
    capped.create_room("r", "driver");
    for i in 1..=5 {
        capped.post_message("r", json!({"text": format!("m{i}")}));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while capped.metric("chat_engine_webhook_events_dropped_total") < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing dropped over max_pending"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = Receiver::start_on(addr);
    let events = back.wait_for("the newest 2", |events| count_messages(events) == 2);
    assert_eq!(messages_by_room(&events)["r"], [4, 5]);
}

/// `notify` names every member but the sender who has not acknowledged the message within
/// `webhooks.notify_delay_ms`: online and acknowledging (`received` or `read`): not named;
/// online but frozen, or offline: named, each with their total unread; the sender never.
#[test]
fn notify_names_the_members_whose_apps_did_not_acknowledge() {
    let receiver = Receiver::start();
    let server = TestServer::start_with(|c| {
        hooks(receiver.url(), c);
        c.webhooks.notify_delay_ms = 300;
    });
    server.create_room("r", "driver");
    let epoch = server.epoch("r");
    for rider in ["acking", "frozen", "offline", "reading"] {
        server.add_member("r", rider);
    }
    let mut clients: BTreeMap<&str, common::Client> = ["driver", "acking", "frozen", "reading"]
        .into_iter()
        .map(|user| (user, server.ws(user)))
        .collect();
    let sent = clients
        .get_mut("driver")
        .unwrap()
        .send_msg("r", "at the pickup point");
    assert_eq!(sent["seq"], 1);
    for user in ["acking", "frozen", "reading"] {
        clients.get_mut(user).unwrap().expect_push("message");
    }
    let acking = clients.get_mut("acking").unwrap();
    acking.send_json(&json!({"type": "received", "room_id": "r", "seq": 1}));
    let reading = clients.get_mut("reading").unwrap();
    reading.request_ok(json!({"type": "read", "room_id": "r", "seq": 1}), "ok");
    let events = receiver.wait_for("the notify", |events| {
        events.iter().any(|e| e["type"] == "notify")
    });
    let notifies: Vec<&Value> = events.iter().filter(|e| e["type"] == "notify").collect();
    assert_eq!(notifies.len(), 1, "one notify per message: {notifies:?}");
    let notify = notifies[0];
    assert_eq!(notify["id"], format!("notify/{epoch}/r/1"));
    assert_eq!(notify["room_id"], "r");
    assert_eq!(notify["message"]["text"], "at the pickup point");
    assert_eq!(
        notify["users"],
        json!([{"user_id": "frozen", "unread": 1}, {"user_id": "offline", "unread": 1}]),
        "the frozen app and the offline member; not the sender, not those who acknowledged"
    );
    // A message everyone acknowledged in time makes no notify at all.
    let clients_seq = clients
        .get_mut("driver")
        .unwrap()
        .send_msg("r", "leaving now")["seq"]
        .clone();
    for user in ["acking", "frozen", "reading"] {
        let client = clients.get_mut(user).unwrap();
        client.expect_push("message");
        client.send_json(&json!({"type": "received", "room_id": "r", "seq": clients_seq}));
    }
    let mut offline = server.ws("offline");
    offline.send_json(&json!({"type": "received", "room_id": "r", "seq": clients_seq}));
    std::thread::sleep(Duration::from_millis(900));
    let late = receiver.acknowledged();
    assert!(
        !late
            .iter()
            .any(|e| e["id"] == format!("notify/{epoch}/r/2")),
        "everyone acknowledged seq 2: {late:?}"
    );
    assert_eq!(count_messages(&late), 2);
    // `received` is for members only.
    let mut stranger = server.ws("stranger");
    let error = stranger.request_err(
        json!({"type": "received", "room_id": "r", "seq": 1, "id": 7}),
        "not_member",
    );
    assert_eq!(error["id"], 7);
}
