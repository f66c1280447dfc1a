//! Message changes (edit, delete, react) on one node, over real sockets: every rule of the
//! contract, over WebSocket and REST, with the pushes, history, unread counts and limits,
//! and that a restart keeps every target's state.

mod common;

use serde_json::{json, Value};

use common::{find_room, Client, TestServer};

/// A route room `room` owned by `driver`, with `riders` joined, and their connections.
fn room_with(server: &TestServer, room: &str, driver: &str, riders: &[&str]) -> Vec<Client> {
    server.create_room(room, driver);
    for rider in riders {
        server.add_member(room, rider);
    }
    std::iter::once(driver)
        .chain(riders.iter().copied())
        .map(|user| server.ws(user))
        .collect()
}

fn edit(room: &str, seq: u64, text: &str) -> Value {
    json!({"type": "edit", "room_id": room, "seq": seq, "text": text})
}

fn delete(room: &str, seq: u64) -> Value {
    json!({"type": "delete", "room_id": room, "seq": seq})
}

fn react(room: &str, seq: u64, reaction: &str) -> Value {
    json!({"type": "react", "room_id": room, "seq": seq, "reaction": reaction})
}

fn unreact(room: &str, seq: u64, reaction: &str) -> Value {
    json!({"type": "react", "room_id": room, "seq": seq, "reaction": reaction, "removed": true})
}

/// The message `seq` as `sync` returns it (after `seq - 1`, one message).
#[track_caller]
fn synced(client: &mut Client, room: &str, seq: u64) -> Value {
    let reply = client.sync(json!({"room_id": room, "since_seq": seq - 1, "limit": 1}));
    reply["messages"][0].clone()
}

/// The next `message` push, which must be seq `seq`.
#[track_caller]
fn pushed(client: &mut Client, seq: u64) -> Value {
    let push = client.expect_push("message");
    assert_eq!(push["message"]["seq"], seq, "push: {push}");
    push["message"].clone()
}

#[test]
fn edits_replace_text_and_data_and_everyone_sees_the_edit_and_the_target() {
    let server = TestServer::start();
    let mut clients = room_with(&server, "r-edit", "driver", &["rider"]);
    let [driver, rider] = &mut clients[..] else {
        unreachable!()
    };
    let first = driver.request_ok(
        json!({"type": "send", "room_id": "r-edit", "text": "eta 5", "data": {"eta": 5}}),
        "sent",
    );
    assert_eq!(first["seq"], 1);
    pushed(rider, 1);
    pushed(driver, 1);

    let sent = driver.request_ok(
        json!({"type": "edit", "room_id": "r-edit", "seq": 1, "text": "eta 3", "data": {"eta": 3},
               "client_msg_id": "e-1"}),
        "sent",
    );
    assert_eq!(sent["seq"], 2, "an edit is the next message of the room");
    for client in [&mut *rider, &mut *driver] {
        let change = pushed(client, 2);
        assert_eq!(change["kind"], "edit");
        assert_eq!(change["target_seq"], 1);
        assert_eq!(change["text"], "eta 3");
        assert_eq!(change["data"], json!({"eta": 3}));
        assert_eq!(change["sender"], "driver");
        assert_eq!(change["ts"], sent["ts"]);
    }
    let target = synced(rider, "r-edit", 1);
    assert_eq!(target["text"], "eta 3");
    assert_eq!(target["data"], json!({"eta": 3}));
    assert_eq!(target["edited_ts"], sent["ts"]);
    assert_eq!(target["kind"], "text", "the target keeps its kind");

    // An edit without data removes it; the same text and data again changes nothing.
    driver.request_ok(edit("r-edit", 1, "eta 2"), "sent");
    pushed(rider, 3);
    let target = synced(rider, "r-edit", 1);
    assert!(target.get("data").is_none(), "{target}");
    let repeat = driver.request_ok(edit("r-edit", 1, "eta 2"), "ok");
    assert!(repeat.get("seq").is_none());
    rider.expect_no("message", common::SILENCE);
    // A repeated client_msg_id answers with the first edit's sent.
    let again = driver.request_ok(
        json!({"type": "edit", "room_id": "r-edit", "seq": 1, "text": "eta 9", "client_msg_id": "e-1"}),
        "sent",
    );
    assert_eq!(
        (again["seq"].clone(), again["ts"].clone()),
        (json!(2), sent["ts"].clone())
    );
    let history = rider.sync(json!({"room_id": "r-edit"}));
    assert_eq!(
        common::seqs_of(&history),
        [1, 2, 3],
        "the change messages stay in history"
    );
    assert_eq!(history["messages"][0]["text"], "eta 2");

    // Only the sender edits a text message.
    rider.request_err(edit("r-edit", 1, "hijack"), "forbidden");
}

#[test]
fn change_rules_and_their_errors() {
    let server = TestServer::start();
    let mut clients = room_with(&server, "r-rules", "driver", &["rider"]);
    let [driver, rider] = &mut clients[..] else {
        unreachable!()
    };
    driver.send_msg("r-rules", "hello");
    let system = server.post_message("r-rules", json!({"text": "trip started"}));
    assert_eq!(system["seq"], 2);
    driver.request_ok(react("r-rules", 1, "👍"), "sent");

    // Targets that do not exist, and targets that are changes.
    for seq in [0, 99] {
        driver.request_err(edit("r-rules", seq, "x"), "not_found");
        driver.request_err(react("r-rules", seq, "x"), "not_found");
        driver.request_err(delete("r-rules", seq), "not_found");
    }
    driver.request_err(react("r-rules", 3, "x"), "bad_request");
    driver.request_err(delete("r-rules", 3), "bad_request");
    // Who may: users never edit or delete system messages, nor others' messages.
    rider.request_err(delete("r-rules", 1), "forbidden");
    driver.request_err(edit("r-rules", 2, "x"), "forbidden");
    driver.request_err(delete("r-rules", 2), "forbidden");
    // Any member reacts, to system messages too; a non-member is not_member.
    rider.request_ok(react("r-rules", 2, "🚗"), "sent");
    let mut stranger = server.ws("stranger");
    stranger.request_err(react("r-rules", 1, "x"), "not_member");
    stranger.request_err(edit("r-rules", 1, "x"), "not_member");
    stranger.request_err(delete("r-rules", 1), "not_member");
    // Reactions are 1..=32 bytes; edits obey max_message_bytes; bad frames are bad_request.
    rider.request_err(react("r-rules", 1, ""), "bad_request");
    rider.request_err(react("r-rules", 1, &"x".repeat(33)), "bad_request");
    rider.request_ok(react("r-rules", 1, &"x".repeat(32)), "sent");
    let big = "x".repeat(server.config.limits.max_message_bytes + 1);
    driver.request_err(edit("r-rules", 1, &big), "too_large");
    driver.request_err(
        json!({"type": "edit", "room_id": "r-rules", "seq": 1}),
        "bad_request",
    );
    driver.request_err(
        json!({"type": "react", "room_id": "r-rules", "seq": "1", "reaction": "x"}),
        "bad_request",
    );
    driver.request_err(
        json!({"type": "delete", "room_id": "no room!", "seq": 1}),
        "bad_request",
    );
    driver.request_err(delete("no-such-room", 1), "not_found");

    // Deleted: text "" and data gone; deleting again changes nothing; editing or reacting
    // is a conflict.
    let deleted = driver.request_ok(delete("r-rules", 1), "sent");
    let seq = deleted["seq"].as_u64().unwrap();
    let target = synced(rider, "r-rules", 1);
    assert_eq!(
        (target["deleted"].clone(), target["text"].clone()),
        (json!(true), json!(""))
    );
    let change = synced(rider, "r-rules", seq);
    assert_eq!(
        (
            change["kind"].clone(),
            change["text"].clone(),
            change["target_seq"].clone()
        ),
        (json!("delete"), json!(""), json!(1))
    );
    driver.request_ok(delete("r-rules", 1), "ok");
    driver.request_err(edit("r-rules", 1, "back"), "conflict");
    rider.request_err(react("r-rules", 1, "😮"), "conflict");
    // What would change nothing is `ok` on a deleted message too (a retry stays safe);
    // taking back a reaction left on it is a change to it, so a conflict.
    rider.request_ok(unreact("r-rules", 1, "😮"), "ok");
    rider.request_ok(react("r-rules", 1, &"x".repeat(32)), "ok");
    rider.request_err(unreact("r-rules", 1, &"x".repeat(32)), "conflict");
    // Nothing was stored for any refused or empty change.
    let last = rider.sync(json!({"room_id": "r-rules"}));
    assert_eq!(common::seqs_of(&last).last(), Some(&seq));

    // A delete removes `data` too; RouteAPI's has no sender.
    let sent = driver.request_ok(
        json!({"type": "send", "room_id": "r-rules", "text": "pin", "data": {"lat": 1.5}}),
        "sent",
    );
    let pin = sent["seq"].as_u64().unwrap();
    assert_eq!(synced(rider, "r-rules", pin)["data"], json!({"lat": 1.5}));
    let (status, _) = server.rest("DELETE", &format!("/v1/rooms/r-rules/messages/{pin}"), None);
    assert_eq!(status, 204);
    let target = synced(rider, "r-rules", pin);
    assert_eq!(
        (target["deleted"].clone(), target["text"].clone()),
        (json!(true), json!(""))
    );
    assert!(target.get("data").is_none(), "{target}");
    let change = synced(rider, "r-rules", pin + 1);
    assert_eq!(change["kind"], "delete");
    assert!(change["sender"].is_null(), "{change}");
    // The sender's own edit is now a conflict, their delete changes nothing.
    driver.request_err(edit("r-rules", pin, "again"), "conflict");
    driver.request_ok(delete("r-rules", pin), "ok");
}

#[test]
fn reactions_list_users_in_order_and_toggle() {
    let server = TestServer::start();
    let mut clients = room_with(&server, "r-react", "driver", &["ann", "bob"]);
    let [driver, ann, bob] = &mut clients[..] else {
        unreachable!()
    };
    driver.send_msg("r-react", "who is in?");
    ann.request_ok(react("r-react", 1, "👍"), "sent");
    bob.request_ok(react("r-react", 1, "👍"), "sent");
    bob.request_ok(react("r-react", 1, "❤️"), "sent");
    let target = synced(driver, "r-react", 1);
    assert_eq!(
        target["reactions"],
        json!({"👍": ["ann", "bob"], "❤️": ["bob"]})
    );
    // A reaction the user has already, or removing one they do not have: ok, nothing stored.
    ann.request_ok(react("r-react", 1, "👍"), "ok");
    ann.request_ok(unreact("r-react", 1, "❤️"), "ok");
    // Removing, then adding again, puts the user last.
    let removed = ann.request_ok(unreact("r-react", 1, "👍"), "sent");
    let change = synced(driver, "r-react", removed["seq"].as_u64().unwrap());
    assert_eq!(
        (change["kind"].clone(), change["removed"].clone()),
        (json!("reaction"), json!(true))
    );
    assert_eq!(change["text"], "👍");
    ann.request_ok(react("r-react", 1, "👍"), "sent");
    bob.request_ok(unreact("r-react", 1, "❤️"), "sent");
    let target = synced(driver, "r-react", 1);
    assert_eq!(
        target["reactions"],
        json!({"👍": ["bob", "ann"]}),
        "an empty reaction goes"
    );
    // Every change reached every member as a `message` push, in seq order.
    let seqs: Vec<u64> = (0..6)
        .map(|_| {
            driver.expect_push("message")["message"]["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let pushes: Vec<u64> = (0..6)
        .map(|_| {
            bob.expect_push("message")["message"]["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(pushes, seqs);
    // Reactions on a message with none left disappear from it entirely.
    bob.request_ok(unreact("r-react", 1, "👍"), "sent");
    ann.request_ok(unreact("r-react", 1, "👍"), "sent");
    assert!(synced(driver, "r-react", 1).get("reactions").is_none());
}

#[test]
fn unread_counts_only_text_and_system_messages() {
    let server = TestServer::start();
    let mut clients = room_with(&server, "r-unread", "driver", &["rider"]);
    let [driver, rider] = &mut clients[..] else {
        unreachable!()
    };
    driver.send_msg("r-unread", "one");
    server.post_message("r-unread", json!({"text": "two"}));
    driver.request_ok(edit("r-unread", 1, "one!"), "sent");
    driver.request_ok(react("r-unread", 2, "👍"), "sent");
    driver.request_ok(delete("r-unread", 1), "sent");
    let rooms = rider.rooms();
    let room = find_room(&rooms, "r-unread").unwrap();
    assert_eq!(room["last_seq"], 5);
    assert_eq!(room["unread"], 2, "two messages, three changes: {room}");
}

#[test]
fn changes_count_as_sends_for_the_rate_limit() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 2);
    let mut clients = room_with(&server, "r-rate", "driver", &[]);
    let driver = &mut clients[0];
    driver.send_msg("r-rate", "m");
    let mut limited = 0;
    for i in 0..10 {
        let reply = driver.request(react("r-rate", 1, &format!("r{i}")));
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            limited += 1;
        }
    }
    assert!(limited > 0, "changes are rate limited like sends");
}

#[test]
fn rest_edits_deletes_and_reads_single_messages() {
    let server = TestServer::start();
    let mut clients = room_with(&server, "r-rest", "driver", &["rider"]);
    let rider = &mut clients[1];
    rider.send_msg("r-rest", "from the rider");
    let system = server.post_message("r-rest", json!({"text": "pickup at 5", "data": {"at": 5}}));
    assert_eq!(system["seq"], 2);
    let path = |seq: u64| format!("/v1/rooms/r-rest/messages/{seq}");

    // GET one message, 404 beyond the end, 400 on a bad seq, 401 without a key.
    let (status, body) = server.rest("GET", &path(2), None);
    assert_eq!(
        (status, body["message"]["text"].clone()),
        (200, json!("pickup at 5"))
    );
    assert_eq!(server.rest("GET", &path(9), None).0, 404);
    assert_eq!(
        server.rest("GET", "/v1/rooms/r-rest/messages/x", None).0,
        400
    );
    assert_eq!(server.rest("GET", "/v1/rooms/nope/messages/1", None).0, 404);
    assert_eq!(server.rest_raw("GET", &path(1), None, None).0, 401);

    // PATCH edits a system message: 200 with the edit; a repeat stores nothing and answers
    // with the latest edit.
    let (status, body) = server.rest("PATCH", &path(2), Some(json!({"text": "pickup at 6"})));
    assert_eq!(status, 200, "{body}");
    let edit = body["message"].clone();
    assert_eq!(
        (
            edit["kind"].clone(),
            edit["target_seq"].clone(),
            edit["sender"].clone(),
            edit["seq"].clone()
        ),
        (json!("edit"), json!(2), Value::Null, json!(3))
    );
    let (status, again) = server.rest("PATCH", &path(2), Some(json!({"text": "pickup at 6"})));
    assert_eq!((status, again["message"].clone()), (200, edit.clone()));
    let (_, target) = server.rest("GET", &path(2), None);
    assert_eq!(target["message"]["edited_ts"], edit["ts"]);
    assert!(
        target["message"].get("data").is_none(),
        "an edit without data removes it"
    );
    // A never-edited system message: a no-op PATCH answers with the message itself.
    let fresh = server.post_message("r-rest", json!({"text": "same"}));
    let (status, body) = server.rest("PATCH", &path(4), Some(json!({"text": "same"})));
    assert_eq!((status, body["message"].clone()), (200, fresh));
    // A user's message is 403; a change is 400; no such message 404; too large 413.
    assert_eq!(
        server.rest("PATCH", &path(1), Some(json!({"text": "x"}))).0,
        403
    );
    assert_eq!(
        server.rest("PATCH", &path(3), Some(json!({"text": "x"}))).0,
        400
    );
    assert_eq!(
        server
            .rest("PATCH", &path(99), Some(json!({"text": "x"})))
            .0,
        404
    );
    assert_eq!(
        server.rest("PATCH", &path(2), Some(json!({"data": 1}))).0,
        400
    );
    let big = "x".repeat(server.config.limits.max_message_bytes + 1);
    assert_eq!(
        server.rest("PATCH", &path(2), Some(json!({"text": big}))).0,
        413
    );

    // DELETE any message (moderation): 204, 204 again with no second change, 404.
    assert_eq!(server.rest("DELETE", &path(1), None).0, 204);
    let (_, after) = server.rest("GET", "/v1/rooms/r-rest/messages", None);
    let last_seq = after["messages"].as_array().unwrap().last().unwrap()["seq"].clone();
    assert_eq!(server.rest("DELETE", &path(1), None).0, 204);
    let (_, again) = server.rest("GET", "/v1/rooms/r-rest/messages", None);
    assert_eq!(
        again["messages"].as_array().unwrap().last().unwrap()["seq"],
        last_seq
    );
    assert_eq!(server.rest("DELETE", &path(99), None).0, 404);
    assert_eq!(
        server.rest("DELETE", &path(3), None).0,
        400,
        "a change is no target"
    );
    let (_, deleted) = server.rest("GET", &path(1), None);
    assert_eq!(deleted["message"]["deleted"], true);
    assert_eq!(deleted["message"]["text"], "");
    // A deleted message cannot be edited.
    server.rest("DELETE", &path(2), None);
    assert_eq!(
        server.rest("PATCH", &path(2), Some(json!({"text": "y"}))).0,
        409
    );
    // The rider saw each change as a message push.
    let kinds: Vec<String> = rider
        .take_buffer()
        .into_iter()
        .chain(std::iter::from_fn(|| {
            rider.try_push("message", common::SILENCE)
        }))
        .filter(|f| f["type"] == "message")
        .map(|f| f["message"]["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        kinds.iter().filter(|k| *k == "delete").count() == 2 && kinds.iter().any(|k| k == "edit"),
        "{kinds:?}"
    );
}

#[test]
fn targets_keep_their_state_across_a_restart_and_beyond_the_cache() {
    let server = TestServer::start_with(|c| {
        c.history.cache_per_room = 4;
        c.limits.send_rate = 10_000;
    });
    {
        let mut clients = room_with(&server, "r-disk", "driver", &["rider"]);
        let [driver, rider] = &mut clients[..] else {
            unreachable!()
        };
        driver.send_msg("r-disk", "old");
        for i in 0..10 {
            driver.send_msg("r-disk", &format!("filler {i}"));
        }
        // Message 1 left the cache long ago: its state is read from disk, changed, and
        // rewritten there.
        driver.request_ok(edit("r-disk", 1, "old, edited"), "sent");
        rider.request_ok(react("r-disk", 1, "👍"), "sent");
        rider.request_ok(react("r-disk", 1, "👍"), "ok");
        driver.request_ok(react("r-disk", 11, "🔥"), "sent");
    }
    let server = server.restart();
    let mut rider = server.ws("rider");
    let target = synced(&mut rider, "r-disk", 1);
    assert_eq!(target["text"], "old, edited");
    assert_eq!(target["reactions"], json!({"👍": ["rider"]}));
    assert!(target["edited_ts"].is_u64());
    assert_eq!(
        synced(&mut rider, "r-disk", 11)["reactions"],
        json!({"🔥": ["driver"]})
    );
    // The rules still hold after the restart: the reaction is there, so again is ok.
    rider.request_ok(react("r-disk", 1, "👍"), "ok");
    rider.request_ok(unreact("r-disk", 1, "👍"), "sent");
    assert!(synced(&mut rider, "r-disk", 1).get("reactions").is_none());
}

#[test]
fn concurrent_reactions_from_many_members_all_land() {
    let server = TestServer::start_with(|c| c.limits.send_rate = 10_000);
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let riders: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut clients = room_with(&server, "r-many", "driver", &riders);
    clients[0].send_msg("r-many", "vote");
    let threads: Vec<_> = clients
        .drain(1..)
        .map(|mut client| {
            std::thread::spawn(move || {
                for reaction in ["a", "b", "c"] {
                    client.request_ok(react("r-many", 1, reaction), "sent");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let target = synced(&mut clients[0], "r-many", 1);
    for reaction in ["a", "b", "c"] {
        let mut who: Vec<String> = target["reactions"][reaction]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect();
        who.sort();
        assert_eq!(who, users, "{reaction}: {target}");
    }
}
