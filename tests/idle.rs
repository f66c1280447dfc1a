//! Rooms that close themselves: `rooms.close_after_idle_days` closes a route room in which
//! nothing happened for that long, exactly as `DELETE /v1/rooms/{id}` would.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::TestServer;

/// Two seconds, in days.
const IDLE_DAYS: f64 = 2.0 / 86_400.0;

#[test]
fn idle_route_rooms_close_and_busy_joined_and_direct_rooms_stay_open() {
    let server = TestServer::start_with(|c| {
        c.rooms.close_after_idle_days = IDLE_DAYS;
        c.direct.policy = chat_engine::config::DirectPolicy::Any;
    });
    let started = Instant::now();
    let at = |seconds: f64| {
        let until = Duration::from_secs_f64(seconds);
        std::thread::sleep(until.saturating_sub(started.elapsed()));
    };
    for room in ["idle", "busy", "joined"] {
        server.create_room(room, "driver");
    }
    server.add_member("idle", "rider");
    server.post_message("idle", json!({"text": "last words"}));
    let mut rider = server.ws("rider");
    let mut driver = server.ws("driver");
    let direct = driver.request_ok(json!({"type": "direct", "user_id": "rider"}), "room");
    let direct_path = format!("/v1/rooms/{}", direct["room"]["room_id"].as_str().unwrap());
    let status = |room: &str| server.rest("GET", &format!("/v1/rooms/{room}"), None).0;

    // "busy" gets a message every 0.7 s; "joined" gets a member at 1.5 s, which counts.
    for (second, then) in [(0.7, "tick"), (1.4, "tick"), (1.5, "join"), (2.1, "tick")] {
        at(second);
        match then {
            "join" => server.add_member("joined", "late"),
            _ => drop(driver.send_msg("busy", "tick")),
        }
    }
    at(2.8);
    assert_eq!(status("idle"), 404, "idle for 2 s: closed");
    assert_eq!(status("joined"), 200, "a member joined 1.3 s ago");
    let left = rider.expect_push("left");
    assert_eq!(
        left["room_id"], "idle",
        "members get `left` as for a DELETE"
    );
    for second in [2.9, 3.6, 4.3] {
        at(second);
        driver.send_msg("busy", "tick");
    }
    at(4.7);
    assert_eq!(status("joined"), 404, "idle for 2 s since the join: closed");
    assert_eq!(status("busy"), 200);
    assert_eq!(
        server.rest("GET", &direct_path, None).0,
        200,
        "direct rooms never close"
    );
    // Closed as a DELETE would: history stays readable, the id is not reused.
    let (code, history) = server.rest("GET", "/v1/rooms/idle/messages", None);
    assert_eq!(
        (code, history["messages"][0]["text"].clone()),
        (200, json!("last words"))
    );
    let reuse = server.rest("PUT", "/v1/rooms/idle", Some(json!({"owner_id": "driver"})));
    assert_eq!(reuse.0, 409);
}

#[test]
fn a_restart_keeps_when_a_room_was_last_active() {
    let server = TestServer::start_with(|c| c.rooms.close_after_idle_days = IDLE_DAYS * 3.0);
    server.create_room("kept", "driver");
    std::thread::sleep(Duration::from_secs(3));
    // The join is the room's latest activity; after a restart it still counts.
    server.add_member("kept", "rider");
    let server = server.restart();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        server.rest("GET", "/v1/rooms/kept", None).0,
        200,
        "7 s after creation but 4 s after the join"
    );
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(server.rest("GET", "/v1/rooms/kept", None).0, 404);
}
