//! `resume` (every room in one frame) and history epochs (PROTOCOL.md "Resume: every room in
//! one frame" and "History epochs"), including `chat-engine restore` and its refusals.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use common::receiver::Receiver;
use common::{config_toml, find_room, run_bin, seqs, Process, TestServer};

fn resume(client: &mut common::Client, rooms: Value, limit: Option<u64>) -> Value {
    let mut frame = json!({"type": "resume", "rooms": rooms});
    if let Some(limit) = limit {
        frame["limit"] = json!(limit);
    }
    client.request_ok(frame, "resumed")
}

fn seqs_in(reply: &Value, room: &str) -> Vec<u64> {
    let messages = reply["messages"][room]
        .as_array()
        .cloned()
        .unwrap_or_default();
    seqs(&messages)
}

fn ids(value: &Value) -> BTreeSet<String> {
    let items = value.as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn resume_catches_up_resets_and_names_the_rooms_left() {
    let server = TestServer::start_with(|c| c.history.default_last = 3);
    for room in ["caught", "stale", "new", "beyond", "gone"] {
        server.create_room(room, "driver");
        server.add_member(room, "rider");
    }
    for i in 1..=5 {
        for room in ["caught", "stale", "new", "beyond"] {
            server.post_message(room, json!({"text": format!("{room} {i}")}));
        }
    }
    server.remove_member("gone", "rider");
    let mut rider = server.ws("rider");
    let epoch = rider.rooms()[0]["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());

    let cached = json!({
        "caught": {"seq": 2, "epoch": epoch},
        "stale": {"seq": 2, "epoch": "another"},
        "beyond": {"seq": 9, "epoch": epoch},
        "gone": {"seq": 1, "epoch": epoch},
        "never-was": {"seq": 1, "epoch": epoch},
    });
    let reply = resume(&mut rider, cached.clone(), None);
    // Every room the user is in, as `rooms` lists them, unread and epoch included.
    let rooms = reply["rooms"].as_array().unwrap();
    let listed = rider.rooms();
    assert_eq!(rooms.len(), 4, "{reply}");
    for room in rooms {
        let same = find_room(&listed, room["room_id"].as_str().unwrap()).unwrap();
        assert_eq!(room, same, "resume's Room objects are the `rooms` reply's");
        assert_eq!(room["epoch"], epoch);
        assert_eq!(room["unread"], 5);
    }
    assert_eq!(seqs_in(&reply, "caught"), [3, 4, 5], "after the cached seq");
    assert_eq!(reply["has_more"]["caught"], false);
    // Another epoch, a seq beyond the last, and a room not listed: the latest
    // `history.default_last`; the listed ones are reset.
    for room in ["stale", "beyond", "new"] {
        assert_eq!(seqs_in(&reply, room), [3, 4, 5], "{room}: {reply}");
        assert_eq!(reply["has_more"][room], true, "{room}");
    }
    assert_eq!(
        ids(&reply["reset"]),
        ["beyond", "stale"].map(String::from).into()
    );
    assert_eq!(
        ids(&reply["left"]),
        ["gone", "never-was"].map(String::from).into()
    );

    let limited = resume(
        &mut rider,
        json!({"caught": {"seq": 0, "epoch": epoch}}),
        Some(2),
    );
    assert_eq!(seqs_in(&limited, "caught"), [1, 2]);
    assert_eq!(
        limited["has_more"]["caught"], true,
        "fetch the rest with sync"
    );
    let fresh = resume(&mut rider, json!({}), None);
    assert_eq!(
        ids(&fresh["reset"]),
        BTreeSet::new(),
        "nothing listed, nothing reset"
    );

    // The epoch is on every Room object and sync reply.
    let sync = rider.sync(json!({"room_id": "caught"}));
    assert_eq!(sync["epoch"], epoch);
    let (_, room) = server.rest("GET", "/v1/rooms/caught", None);
    assert_eq!(room["epoch"], epoch);
}

#[test]
fn resume_refuses_too_many_rooms_and_bad_limits() {
    let server = TestServer::start_with(|c| c.limits.max_resume_rooms = 2);
    let mut rider = server.ws("rider");
    let three = json!({
        "a": {"seq": 0, "epoch": "e"}, "b": {"seq": 0, "epoch": "e"}, "c": {"seq": 0, "epoch": "e"}
    });
    let error = rider.request_err(json!({"type": "resume", "rooms": three}), "bad_request");
    assert!(
        error["message"].as_str().unwrap().contains("at most 2"),
        "{error}"
    );
    for bad in [
        json!({"type": "resume", "rooms": {}, "limit": 0}),
        json!({"type": "resume", "rooms": {"a": {"seq": -1, "epoch": "e"}}}),
        json!({"type": "resume", "rooms": {"a": {"seq": 1}}}),
        json!({"type": "resume", "rooms": {"bad room": {"seq": 1, "epoch": "e"}}}),
        json!({"type": "resume", "rooms": []}),
    ] {
        rider.request_err(bad, "bad_request");
    }
    let two = json!({"a": {"seq": 0, "epoch": "e"}, "b": {"seq": 0, "epoch": "e"}});
    let reply = resume(&mut rider, two, None);
    assert_eq!(ids(&reply["left"]), ["a", "b"].map(String::from).into());
}

#[test]
fn a_resume_of_as_many_rooms_as_allowed_fits_however_long_their_ids() {
    // Default limits: 1,000 rooms of 128-byte ids make a frame far over max_frame_bytes.
    let server = TestServer::start();
    let long = |i: usize| format!("{i:04}-{}", "r".repeat(123));
    server.create_room(&long(0), "driver");
    server.add_member(&long(0), "rider");
    let mut rider = server.ws("rider");
    let epoch = rider.rooms()[0]["epoch"].clone();
    let listing = |n: usize| -> Value {
        (0..n)
            .map(|i| (long(i), json!({"seq": 0, "epoch": epoch})))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let all = listing(1000);
    assert!(all.to_string().len() > 65_536);
    let reply = resume(&mut rider, all, None);
    assert_eq!(reply["left"].as_array().map(Vec::len), Some(999));
    assert_eq!(reply["rooms"][0]["room_id"], json!(long(0)));

    // One more is refused as the contract says, and the connection stays open.
    let error = rider.request_err(
        json!({"type": "resume", "rooms": listing(1001)}),
        "bad_request",
    );
    assert!(
        error["message"].as_str().unwrap().contains("at most 1000"),
        "{error}"
    );
    assert_eq!(rider.request(json!({"type": "ping"}))["type"], "pong");
}

#[test]
fn resume_pages_by_100_at_most_500_and_names_closed_rooms_left() {
    let server = TestServer::start();
    server.create_room("long", "driver");
    server.add_member("long", "rider");
    for i in 1..=510 {
        server.post_message("long", json!({"text": format!("m{i}")}));
    }
    server.create_room("closed", "driver");
    server.add_member("closed", "rider");
    assert_eq!(server.rest("DELETE", "/v1/rooms/closed", None).0, 204);
    let mut rider = server.ws("rider");
    let epoch = rider.rooms()[0]["epoch"].as_str().unwrap().to_owned();
    let cached = json!({
        "long": {"seq": 0, "epoch": epoch},
        "closed": {"seq": 0, "epoch": epoch},
    });
    let reply = resume(&mut rider, cached.clone(), None);
    assert_eq!(
        seqs_in(&reply, "long"),
        (1..=100).collect::<Vec<_>>(),
        "100 by default"
    );
    assert_eq!(reply["has_more"]["long"], true);
    assert_eq!(ids(&reply["left"]), ["closed"].map(String::from).into());
    for limit in [501, 10_000] {
        let reply = resume(&mut rider, cached.clone(), Some(limit));
        assert_eq!(
            seqs_in(&reply, "long"),
            (1..=500).collect::<Vec<_>>(),
            "capped at 500"
        );
        assert_eq!(reply["has_more"]["long"], true);
    }
    let caught_up = json!({"long": {"seq": 510, "epoch": epoch}});
    let reply = resume(&mut rider, caught_up, None);
    assert_eq!(
        seqs_in(&reply, "long"),
        Vec::<u64>::new(),
        "a seq equal to the last"
    );
    assert_eq!(reply["has_more"]["long"], false);
    assert_eq!(ids(&reply["reset"]), BTreeSet::new());
}

/// Messages sent while the reply is built are in the reply, or pushed, or both: with what it
/// holds, the app has every seq.
#[test]
fn nothing_is_lost_between_the_reply_and_the_pushes() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 10_000);
    server.create_room("busy", "driver");
    server.add_member("busy", "rider");
    let mut rider = server.ws("rider");
    let epoch = rider.rooms()[0]["epoch"].clone();
    let mut driver = server.ws("driver");
    let sender = std::thread::spawn(move || {
        for i in 0..200 {
            driver.send_msg("busy", &format!("m{i}"));
        }
    });
    let mut have = BTreeSet::new();
    for _ in 0..20 {
        let cached = json!({"busy": {"seq": have.len(), "epoch": epoch}});
        let reply = resume(&mut rider, cached, Some(500));
        have.extend(seqs_in(&reply, "busy"));
    }
    sender.join().unwrap();
    for frame in rider.take_buffer() {
        if frame["type"] == "message" {
            have.insert(frame["message"]["seq"].as_u64().unwrap());
        }
    }
    while have.len() < 200 {
        let push = rider.expect_push("message");
        have.insert(push["message"]["seq"].as_u64().unwrap());
    }
    assert_eq!(have, (1..=200).collect::<BTreeSet<u64>>());
}

#[test]
fn a_room_whose_history_retention_cut_behind_the_cache_is_reset() {
    const RETENTION: Duration = Duration::from_secs(3);
    let days = RETENTION.as_secs_f64() / 86_400.0;
    let server = TestServer::start_with(|c| c.history.retention_days = days);
    server.create_room("r", "driver");
    server.add_member("r", "rider");
    for i in 1..=3 {
        server.post_message("r", json!({"text": format!("old {i}")}));
    }
    std::thread::sleep(RETENTION / 2);
    server.post_message("r", json!({"text": "new"}));
    let mut rider = server.ws("rider");
    let epoch = rider.rooms()[0]["epoch"].clone();
    let deadline = std::time::Instant::now() + RETENTION * 2;
    loop {
        let page = rider.sync(json!({"room_id": "r", "since_seq": 0}));
        if common::seqs_of(&page) == [4] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut = resume(&mut rider, json!({"r": {"seq": 1, "epoch": epoch}}), None);
    assert_eq!(
        ids(&cut["reset"]),
        ["r".to_owned()].into(),
        "2 and 3 are gone: {cut}"
    );
    assert_eq!(seqs_in(&cut, "r"), [4]);
    let whole = resume(&mut rider, json!({"r": {"seq": 3, "epoch": epoch}}), None);
    assert_eq!(
        ids(&whole["reset"]),
        BTreeSet::new(),
        "nothing after 3 is missing"
    );
    assert_eq!(seqs_in(&whole, "r"), [4]);
}

/// The epoch stays across restarts; `chat-engine restore` gives a new one, and refuses while
/// a server runs on the directory, from something that is not a backup, and onto itself.
/// The webhook event of a seq handed out again after the restore has a new `id`.
#[test]
fn restore_gives_a_new_epoch_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backup) = (dir.path().join("data"), dir.path().join("backup"));
    let receiver = Receiver::start();
    let config = config_toml(&format!(
        "[webhooks]\nurl = \"{}\"\nsecret = \"s\"\nevents = [\"message\"]\n",
        receiver.url()
    ));
    let config_file = dir.path().join("chat-engine.toml");
    std::fs::write(&config_file, &config).unwrap();
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let restore = |from: &std::path::Path| {
        let args = [
            "restore",
            "--from",
            &arg(from),
            "--config",
            &arg(&config_file),
            "--data",
            &arg(&data),
        ];
        run_bin(&args, Duration::from_secs(60))
    };

    let mut p = Process::start(&data, &config);
    p.create_room("r", "driver");
    p.post_message("r", json!({"text": "before the backup"}));
    let first = p.epoch("r");
    let (status, out, err) = run_bin(
        &[
            "backup",
            "--to",
            &arg(&backup),
            "--server",
            &p.addr.to_string(),
            "--config",
            &arg(&config_file),
        ],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{out} {err}");
    p.post_message("r", json!({"text": "after the backup"}));

    let (status, _, err) = restore(&backup);
    assert_eq!(status.code(), Some(1));
    let reason = err.lines().last().unwrap_or_default();
    assert!(reason.contains("in use by a running server"), "{err}");
    assert_eq!(
        p.post_message("r", json!({"text": "still served"}))["seq"],
        3
    );

    p.terminate();
    p.wait();
    drop(p);
    let p = Process::start(&data, &config);
    assert_eq!(p.epoch("r"), first, "a restart keeps the epoch");
    drop(p);

    for (from, why) in [
        (
            dir.path().join("nothing-here"),
            "not a chat-engine data directory",
        ),
        (data.clone(), "is the data directory itself"),
    ] {
        let (status, _, err) = restore(&from);
        assert_eq!(status.code(), Some(1), "{err}");
        let reason = err.lines().last().unwrap_or_default();
        assert!(
            reason.starts_with("chat-engine: ") && reason.contains(why),
            "{err}"
        );
    }

    let (status, out, err) = restore(&backup);
    assert!(status.success(), "{out} {err}");
    assert!(out.contains("the data it replaced is in"), "{out}");
    let p = Process::start(&data, &config);
    let restored = p.epoch("r");
    assert_ne!(restored, first, "a restore names a new epoch");
    let (_, page) = p.rest("GET", "/v1/rooms/r/messages", None);
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        1,
        "the backup's history"
    );
    // The seq handed out again after the restore would silently diverge from a cache: the
    // new epoch makes resume reset it.
    p.post_message("r", json!({"text": "a new second message"}));
    let mut driver = p.ws("driver");
    let cached = json!({"r": {"seq": 2, "epoch": first}});
    let reply = resume(&mut driver, cached, None);
    assert_eq!(ids(&reply["reset"]), ["r".to_owned()].into());
    assert_eq!(seqs_in(&reply, "r"), [1, 2]);
    let events = receiver.wait_for("both second messages", |events| {
        events.iter().filter(|e| e["message"]["seq"] == 2).count() == 2
    });
    let second: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["message"]["seq"] == 2)
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(second.len(), 2, "a new id for the new seq 2: {second:?}");
    drop(driver);
    drop(p);
    let again = restore(&backup);
    assert!(
        again.0.success(),
        "the backup can be restored again: {}",
        again.2
    );
}
