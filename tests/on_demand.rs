//! Rooms on demand: rooms load on first use and leave memory when idle or over
//! `rooms.max_in_memory`, and a room that left and came back behaves exactly as if it had
//! stayed.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::room_script::{self, Seen};
use common::{config_toml, find_room, Process, TestServer};

fn one_room_budget(c: &mut chat_engine::Config) {
    c.rooms.max_in_memory = 1;
}

#[test]
fn a_room_unloaded_and_loaded_again_behaves_as_if_it_had_stayed() {
    let small = TestServer::start_with(one_room_budget);
    let unloading: Seen = room_script::run(&small, &small);
    let unloads = small.metric("chat_engine_room_unloads_total");
    assert!(unloads >= 20.0, "rooms left memory {unloads} times");
    assert!(small.metric("chat_engine_rooms_in_memory") <= 2.0);

    let roomy = TestServer::start();
    let staying = room_script::run(&roomy, &roomy);
    assert_eq!(roomy.metric("chat_engine_room_unloads_total"), 0.0);
    unloading.assert_same_as(&staying);
    room_script::assert_expected(&unloading);
}

#[test]
fn concurrent_first_uses_load_a_room_once() {
    let server = TestServer::start_with(one_room_budget);
    server.create_room("cold", "d");
    server.post_message("cold", json!({"text": "hello"}));
    server.create_room("other", "d");
    server.rest("GET", "/v1/rooms/other/messages", None);
    let loads = server.metric("chat_engine_room_loads_total");
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let endpoint = (*server).clone();
            std::thread::spawn(move || endpoint.rest("GET", "/v1/rooms/cold/messages", None))
        })
        .collect();
    for thread in threads {
        let (code, page) = thread.join().unwrap();
        assert_eq!(
            (code, page["messages"][0]["text"].clone()),
            (200, json!("hello"))
        );
    }
    assert_eq!(
        server.metric("chat_engine_room_loads_total") - loads,
        1.0,
        "sixteen first uses at once, one load"
    );
    assert!(server.metric("chat_engine_room_load_seconds_count") >= 1.0);
}

#[test]
fn idle_rooms_leave_memory_after_unload_idle_s() {
    let server = TestServer::start_with(|c| c.rooms.unload_idle_s = 1);
    for room in ["one", "two", "three"] {
        server.create_room(room, "d");
    }
    assert_eq!(server.metric("chat_engine_rooms_in_memory"), 3.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("chat_engine_rooms_in_memory") > 0.0 {
        assert!(Instant::now() < deadline, "idle rooms stayed in memory");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.metric("chat_engine_room_unloads_total"), 3.0);
    let mut d = server.ws("d");
    let rooms = d.rooms();
    assert_eq!(rooms.len(), 3, "listed from disk: {rooms:?}");
    assert_eq!(
        server.metric("chat_engine_rooms_in_memory"),
        0.0,
        "listing rooms does not load them"
    );
    assert_eq!(d.send_msg("two", "back")["seq"], 1);
    assert_eq!(server.metric("chat_engine_rooms_in_memory"), 1.0);
}

/// Start-up reads no room, and what a restart keeps (seqs, unread counts, read markers,
/// dedup) comes from disk when each room is first used.
#[test]
fn a_restart_loads_nothing_until_a_room_is_used() {
    let data = tempfile::tempdir().unwrap();
    let config = config_toml("");
    let p = Process::start(data.path(), &config);
    for room in ["a", "b"] {
        p.create_room(room, "d");
        p.add_member(room, "r");
    }
    let body = json!({"text": "one", "client_msg_id": "k"});
    p.post_message("a", body.clone());
    p.post_message("a", json!({"text": "two"}));
    let mut r = p.ws("r");
    r.request_ok(json!({"type": "read", "room_id": "a", "seq": 1}), "ok");
    drop(r);
    drop(p);

    let p = Process::start(data.path(), &config);
    assert_eq!(p.metric("chat_engine_rooms_in_memory"), 0.0);
    let mut r = p.ws("r");
    let rooms = r.rooms();
    assert_eq!(find_room(&rooms, "a").unwrap()["unread"], 1, "{rooms:?}");
    assert_eq!(find_room(&rooms, "b").unwrap()["unread"], 0, "{rooms:?}");
    assert_eq!(p.metric("chat_engine_room_loads_total"), 0.0);
    let (code, repeat) = p.rest("POST", "/v1/rooms/a/messages", Some(body));
    assert_eq!((code, repeat["message"]["seq"].clone()), (200, json!(1)));
    assert_eq!(p.post_message("a", json!({"text": "three"}))["seq"], 3);
    assert_eq!(p.metric("chat_engine_room_loads_total"), 1.0);
}
