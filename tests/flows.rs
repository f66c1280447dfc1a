//! End-to-end flows: the four seed flows, ordering under concurrency, reconnect and resync.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// App init: list rooms, sync each room from the last ts the app has, then live pushes.
#[test]
fn app_init_lists_rooms_syncs_from_last_ts_then_gets_pushes() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 10_000);
    server.create_room("r1", "d1");
    server.add_member("r1", "u1");
    server.create_room("r2", "d2");
    server.add_member("r2", "u1");

    // A first session: the app stores what it saw.
    let mut local: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    {
        let mut u1 = server.ws("u1");
        let mut d1 = server.ws("d1");
        d1.send_msg("r1", "r1-a");
        d1.send_msg("r1", "r1-b");
        server.post_message("r2", json!({"text": "r2-a"}));
        for _ in 0..3 {
            let m = u1.expect_push("message")["message"].clone();
            local
                .entry(m["room_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(m);
        }
        u1.close();
    }
    // While the app is away.
    let mut d1 = server.ws("d1");
    let mut d2 = server.ws("d2");
    for i in 0..5 {
        d1.send_msg("r1", &format!("r1-away-{i}"));
    }
    for i in 0..3 {
        d2.send_msg("r2", &format!("r2-away-{i}"));
    }

    // App init.
    let mut u1 = server.ws("u1");
    let rooms = u1.rooms();
    let ids: BTreeSet<&str> = rooms
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["r1", "r2"]));
    assert_eq!(find_room(&rooms, "r1").unwrap()["last_seq"], 7);
    assert_eq!(find_room(&rooms, "r1").unwrap()["unread"], 7);
    assert_eq!(find_room(&rooms, "r2").unwrap()["last_seq"], 4);
    assert_eq!(find_room(&rooms, "r2").unwrap()["unread"], 4);

    // Something arrives between connecting and syncing: it must not be lost.
    d1.send_msg("r1", "r1-during-init");

    for room in &rooms {
        let room_id = room["room_id"].as_str().unwrap().to_owned();
        let have = local.entry(room_id.clone()).or_default();
        let mut since = have.last().map(|m| m["ts"].as_u64().unwrap()).unwrap_or(0);
        loop {
            let reply = u1.sync(json!({"room_id": room_id, "since_ts": since, "limit": 2}));
            let page = reply["messages"].as_array().unwrap().clone();
            if let Some(last) = page.last() {
                since = last["ts"].as_u64().unwrap();
            }
            have.extend(page);
            if !reply["has_more"].as_bool().unwrap() {
                break;
            }
        }
    }
    // Merge pushes received meanwhile, dropping by seq what the app already has.
    let merge = |m: Value, local: &mut BTreeMap<String, Vec<Value>>| {
        let have = local.get_mut(m["room_id"].as_str().unwrap()).unwrap();
        if !have.iter().any(|h| h["seq"] == m["seq"]) {
            have.push(m);
            have.sort_by_key(|h| h["seq"].as_u64().unwrap());
        }
    };
    for f in u1.take_buffer() {
        if f["type"] == "message" {
            merge(f["message"].clone(), &mut local);
        }
    }
    // Live push after init.
    d2.send_msg("r2", "r2-live");
    let live = u1.expect_push("message");
    assert_eq!(live["message"]["text"], "r2-live");
    merge(live["message"].clone(), &mut local);
    for f in u1.take_buffer() {
        if f["type"] == "message" {
            merge(f["message"].clone(), &mut local);
        }
    }

    let r1: Vec<u64> = seqs(&local["r1"]);
    assert_eq!(
        r1,
        (1..=8).collect::<Vec<_>>(),
        "r1 complete, no duplicates"
    );
    let r2: Vec<u64> = seqs(&local["r2"]);
    assert_eq!(
        r2,
        (1..=5).collect::<Vec<_>>(),
        "r2 complete, no duplicates"
    );
    assert_eq!(local["r1"][7]["text"], "r1-during-init");
    assert_eq!(local["r2"][4]["text"], "r2-live");
}

/// The driver creates a route: `joined`, listed, usable.
#[test]
fn driver_creates_route() {
    let server = TestServer::start();
    let mut driver = server.ws("driver-7");
    let body = server.create_room("route-42", "driver-7");

    let joined = driver.expect_push("joined");
    let room = &joined["room"];
    assert_eq!(room["room_id"], "route-42");
    assert_eq!(room["kind"], "route");
    assert_eq!(room["owner_id"], "driver-7");
    assert_eq!(members(room), vec!["driver-7"]);
    assert_eq!(room["last_seq"], 0);
    assert_eq!(room["created_ts"], body["created_ts"]);

    let rooms = driver.rooms();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["room_id"], "route-42");
    assert_eq!(rooms[0]["unread"], 0);

    let sent = driver.send_msg("route-42", "Starting the route");
    assert_eq!(sent["seq"], 1);
    assert_eq!(
        driver.expect_push("message")["message"]["text"],
        "Starting the route"
    );
}

/// A rider joins: `joined` to them (before any message of the room), `member_joined` to the
/// others; then they send and everyone gets it.
#[test]
fn user_joins_route() {
    let server = TestServer::start();
    server.create_room("route-1", "driver");
    server.add_member("route-1", "rider-1");
    server.post_message("route-1", json!({"text": "route created"}));
    let mut driver = server.ws("driver");
    let mut rider1 = server.ws("rider-1");
    let mut rider2 = server.ws("rider-2");

    server.add_member("route-1", "rider-2");
    server.post_message("route-1", json!({"text": "rider-2 is on board"}));

    // rider-2's first frames, in order: joined, then the message.
    let first = rider2.recv_json();
    assert_eq!(
        first["type"], "joined",
        "joined comes before the room's first message: {first}"
    );
    assert_eq!(first["room"]["room_id"], "route-1");
    assert_eq!(
        members(&first["room"]),
        vec!["driver", "rider-1", "rider-2"]
    );
    assert_eq!(first["room"]["last_seq"], 1, "room as of the join");
    let second = rider2.recv_json();
    assert_eq!(second["type"], "message", "{second}");
    assert_eq!(second["message"]["seq"], 2);

    for c in [&mut driver, &mut rider1] {
        let mj = c.expect_push("member_joined");
        assert_eq!(mj["room_id"], "route-1");
        assert_eq!(mj["user_id"], "rider-2");
        assert_eq!(c.expect_push("message")["message"]["seq"], 2);
    }
    let rooms = rider2.rooms();
    assert_eq!(
        find_room(&rooms, "route-1").unwrap()["unread"],
        1,
        "the message after joining"
    );

    let sent = rider2.send_msg("route-1", "Waiting at the corner");
    assert_eq!(sent["seq"], 3);
    for c in [&mut driver, &mut rider1, &mut rider2] {
        let m = c.expect_push("message");
        assert_eq!(m["message"]["seq"], 3);
        assert_eq!(m["message"]["sender"], "rider-2");
        assert_eq!(m["message"]["text"], "Waiting at the corner");
        c.expect_no("message", Duration::from_millis(100));
    }
}

/// A rider leaves: `left` to them, `member_left` to the others, their sends get `not_member`,
/// they receive nothing more from the room.
#[test]
fn user_leaves_route() {
    let server = TestServer::start();
    server.create_room("route-1", "driver");
    server.add_member("route-1", "rider-1");
    server.add_member("route-1", "rider-2");
    let mut driver = server.ws("driver");
    let mut rider1 = server.ws("rider-1");
    let mut rider2 = server.ws("rider-2");

    server.remove_member("route-1", "rider-1");
    let left = rider1.expect_push("left");
    assert_eq!(left["room_id"], "route-1");
    for c in [&mut driver, &mut rider2] {
        let ml = c.expect_push("member_left");
        assert_eq!(ml["room_id"], "route-1");
        assert_eq!(ml["user_id"], "rider-1");
    }
    rider1.request_err(
        json!({"type": "send", "room_id": "route-1", "text": "hello?"}),
        "not_member",
    );
    rider1.request_err(json!({"type": "sync", "room_id": "route-1"}), "not_member");
    assert!(find_room(&rider1.rooms(), "route-1").is_none());
    let (_, room) = server.rest("GET", "/v1/rooms/route-1", None);
    assert_eq!(members(&room), vec!["driver", "rider-2"]);

    driver.send_msg("route-1", "Next stop");
    server.post_message("route-1", json!({"text": "system"}));
    driver.send_json(&json!({"type": "typing", "room_id": "route-1"}));
    assert_eq!(
        rider2.expect_push("message")["message"]["text"],
        "Next stop"
    );
    assert_eq!(rider2.expect_push("message")["message"]["text"], "system");
    rider1.expect_silence(SILENCE);
    let history = driver.sync(json!({"room_id": "route-1"}));
    assert_eq!(
        seqs_of(&history),
        vec![1, 2],
        "the refused send stored nothing"
    );
}

/// 20 senders and 10 listeners on one room: every listener gets every message once, in seq
/// order without gaps, with strictly increasing ts.
#[test]
fn concurrent_senders_are_seen_in_one_order_by_every_listener() {
    const SENDERS: usize = 20;
    const PER_SENDER: usize = 25;
    const LISTENERS: usize = 10;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let server = TestServer::start_with(|c| c.limits.send_rate = 100_000);
    server.create_room("busy", "owner");
    for s in 0..SENDERS {
        server.add_member("busy", &format!("sender-{s}"));
    }
    for l in 0..LISTENERS {
        server.add_member("busy", &format!("listener-{l}"));
    }
    let listeners: Vec<Client> = (0..LISTENERS)
        .map(|l| server.ws(&format!("listener-{l}")))
        .collect();
    let senders: Vec<Client> = (0..SENDERS)
        .map(|s| server.ws(&format!("sender-{s}")))
        .collect();

    let listener_threads: Vec<_> = listeners
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut got = Vec::with_capacity(TOTAL);
                let deadline = Instant::now() + Duration::from_secs(60);
                while got.len() < TOTAL {
                    assert!(
                        Instant::now() < deadline,
                        "{}: only {} messages",
                        c.user,
                        got.len()
                    );
                    let f = c.recv_json();
                    if f["type"] == "message" {
                        got.push(f["message"].clone());
                    }
                }
                c.expect_no("message", SILENCE);
                (c.user.clone(), got)
            })
        })
        .collect();

    let barrier = Arc::new(Barrier::new(SENDERS + 1));
    let sender_threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut c)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut acks = Vec::new();
                for i in 0..PER_SENDER {
                    let sent = c.send_msg("busy", &format!("s{s}-{i}"));
                    acks.push((sent["seq"].as_u64().unwrap(), format!("s{s}-{i}")));
                }
                acks
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut acks: BTreeMap<u64, String> = BTreeMap::new();
    for t in sender_threads {
        for (seq, text) in t.join().expect("sender thread") {
            assert!(
                acks.insert(seq, text).is_none(),
                "seq {seq} acknowledged twice"
            );
        }
    }
    let send_elapsed = start.elapsed();
    assert_eq!(
        acks.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "acknowledged seqs are 1..={TOTAL}"
    );
    for t in listener_threads {
        let (user, got) = t.join().expect("listener thread");
        let seqs = seqs(&got);
        assert_eq!(
            seqs,
            (1..=TOTAL as u64).collect::<Vec<_>>(),
            "{user}: seq order, no gaps"
        );
        for w in got.windows(2) {
            assert!(
                w[1]["ts"].as_u64().unwrap() > w[0]["ts"].as_u64().unwrap(),
                "{user}: ts strictly increasing at seq {}",
                w[1]["seq"]
            );
        }
        for m in &got {
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(
                m["text"].as_str().unwrap(),
                acks[&seq],
                "{user}: text of seq {seq}"
            );
        }
        // Each sender's messages appear in the order it sent them.
        let mut last_per_sender: BTreeMap<String, usize> = BTreeMap::new();
        for m in &got {
            let text = m["text"].as_str().unwrap();
            let (who, i) = text.split_once('-').unwrap();
            let i: usize = i.parse().unwrap();
            if let Some(prev) = last_per_sender.insert(who.to_owned(), i) {
                assert_eq!(i, prev + 1, "{user}: {who}'s messages in send order");
            }
        }
    }
    let all_elapsed = start.elapsed();
    println!(
        "ordering: {TOTAL} messages from {SENDERS} senders in {send_elapsed:?} ({:.0} msg/s acked); \
         fan-out to {LISTENERS} listeners done in {all_elapsed:?} ({:.0} deliveries/s)",
        TOTAL as f64 / send_elapsed.as_secs_f64(),
        (TOTAL * (LISTENERS + SENDERS)) as f64 / all_elapsed.as_secs_f64(),
    );
}

/// Reconnect: the client syncs from its last ts, pages with has_more, and merges live pushes
/// that arrive meanwhile; it ends with exactly the full set.
#[test]
fn reconnect_and_sync_from_last_ts_loses_nothing() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 100_000);
    server.create_room("r1", "writer");
    server.add_member("r1", "reader");
    let mut writer = server.ws("writer");

    let mut have: BTreeMap<u64, Value> = BTreeMap::new();
    let mut reader = server.ws("reader");
    for i in 0..10 {
        writer.send_msg("r1", &format!("first-{i}"));
    }
    for _ in 0..10 {
        let m = reader.expect_push("message")["message"].clone();
        have.insert(m["seq"].as_u64().unwrap(), m);
    }
    let last_ts = have.values().last().unwrap()["ts"].as_u64().unwrap();
    reader.close();

    // While it is away.
    for i in 0..237 {
        writer.send_json(
            &json!({"type": "send", "room_id": "r1", "text": format!("away-{i}"), "id": i}),
        );
    }
    for i in 0..237 {
        assert_eq!(writer.wait_reply(&json!(i))["type"], "sent");
    }
    writer.discard("message");

    // Others keep sending while it reconnects and syncs.
    let mut writer2 = server.ws("writer");
    let background = std::thread::spawn(move || {
        for i in 0..100 {
            writer2.send_msg("r1", &format!("during-{i}"));
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let mut reader = server.ws("reader");
    let mut since = last_ts;
    let mut pages = 0;
    let mut synced = 0;
    loop {
        let reply = reader.sync(json!({"room_id": "r1", "since_ts": since, "limit": 50}));
        pages += 1;
        let page = reply["messages"].as_array().unwrap().clone();
        for m in &page {
            assert!(
                m["ts"].as_u64().unwrap() > since,
                "since_ts is strictly greater"
            );
            let seq = m["seq"].as_u64().unwrap();
            assert!(
                have.insert(seq, m.clone()).is_none(),
                "sync returned seq {seq} twice"
            );
            synced += 1;
        }
        if let Some(last) = page.last() {
            since = last["ts"].as_u64().unwrap();
        }
        if !reply["has_more"].as_bool().unwrap() {
            break;
        }
        assert!(pages < 100, "paging never ends");
    }
    assert!(
        pages >= 5,
        "237+ messages in pages of 50 take several pages ({pages})"
    );
    assert!(synced >= 237);
    background.join().expect("background writer");
    // Pushes since the connection opened, then drop what sync already gave.
    let total = 10 + 237 + 100;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pushed = Vec::new();
    for f in reader.take_buffer() {
        if f["type"] == "message" {
            pushed.push(f["message"].clone());
        }
    }
    while (have.len() as u64) < total {
        for m in pushed.drain(..) {
            have.entry(m["seq"].as_u64().unwrap()).or_insert(m);
        }
        if (have.len() as u64) >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {total} messages",
            have.len()
        );
        if let Some(f) = reader.try_recv_json(Duration::from_millis(500)) {
            if f["type"] == "message" {
                pushed.push(f["message"].clone());
            }
        }
    }
    assert_eq!(
        have.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for (seq, m) in &have {
        let text = m["text"].as_str().unwrap();
        let expected = match seq {
            1..=10 => format!("first-{}", seq - 1),
            11..=247 => format!("away-{}", seq - 11),
            _ => format!("during-{}", seq - 248),
        };
        assert_eq!(text, expected, "seq {seq}");
    }
    // And a final sync agrees with what the client has.
    let all = reader.sync_all_since_seq("r1", 0, 100);
    assert_eq!(all.len() as u64, total);
    for m in &all {
        assert_eq!(m, &have[&m["seq"].as_u64().unwrap()], "sync and push agree");
    }
}
