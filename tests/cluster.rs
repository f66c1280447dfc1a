//! Cluster mode: real redis-server processes and two or three real chat-engine nodes on
//! loopback, each with its own data directory, behaving as one server.
#![cfg(feature = "redis")]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::redis_server::{available, RedisCluster, RedisServer};
use common::{config_toml, seqs_of, Process};

/// A node of a cluster on `redis_url`, with its own data directory.
struct Node {
    process: Process,
    data: tempfile::TempDir,
    config: String,
}

impl std::ops::Deref for Node {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl Node {
    fn start(redis_url: &str, redis_cluster: bool) -> Node {
        let config = config_toml(&format!(
            "[limits]\nsend_rate = 10000\n[cluster]\nredis_url = \"{redis_url}\"\n\
             redis_cluster = {redis_cluster}\nshards = 4\n"
        ));
        let data = tempfile::tempdir().unwrap();
        let process = Process::start(data.path(), &config);
        let node = Node {
            process,
            data,
            config,
        };
        node.wait_ready(true);
        node
    }

    /// Kills the node with SIGKILL and starts it again on its data directory.
    fn restart_after_kill(&mut self) {
        self.process.kill_9();
        self.process.wait();
        self.process = Process::start(self.data.path(), &self.config);
    }

    fn ready(&self) -> bool {
        self.rest("GET", "/readyz", None).0 == 200
    }

    /// Waits (up to 20 s) until `/readyz` says `ready`.
    #[track_caller]
    fn wait_ready(&self, ready: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ready() != ready {
            assert!(
                Instant::now() < deadline,
                "readyz did not become {ready} within 20 s; stderr: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every message of `room` this node holds, by seq.
    fn history(&self, room: &str) -> BTreeMap<u64, Value> {
        let mut found = BTreeMap::new();
        let mut since = 0;
        loop {
            let (status, page) = self.rest(
                "GET",
                &format!("/v1/rooms/{room}/messages?since_seq={since}&limit=100"),
                None,
            );
            assert_eq!(status, 200, "history of {room}: {page}");
            let messages = page["messages"].as_array().unwrap().clone();
            for message in &messages {
                let seq = message["seq"].as_u64().unwrap();
                assert!(
                    found.insert(seq, message.clone()).is_none(),
                    "seq {seq} twice"
                );
                since = seq;
            }
            if !page["has_more"].as_bool().unwrap() {
                return found;
            }
        }
    }

    /// Waits until this node holds `count` messages of `room`, and returns them.
    #[track_caller]
    fn history_of_size(&self, room: &str, count: usize) -> BTreeMap<u64, Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let history = self.history(room);
            if history.len() >= count || Instant::now() > deadline {
                return history;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn post(node: &Node, room: &str, body: Value) -> (u16, Value) {
    node.rest("POST", &format!("/v1/rooms/{room}/messages"), Some(body))
}

#[test]
fn rest_changes_and_messages_reach_every_node_once_in_order() {
    if !available("rest_changes_and_messages_reach_every_node_once_in_order") {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (
        Node::start(&redis.url(), false),
        Node::start(&redis.url(), false),
    );

    // REST on either node, retried on the other: one room, one membership.
    let put_room = |node: &Node| {
        node.rest(
            "PUT",
            "/v1/rooms/route-1",
            Some(json!({"owner_id": "driver"})),
        )
    };
    assert_eq!(put_room(&a).0, 201);
    assert_eq!(
        put_room(&b).0,
        200,
        "a retry through another node is a repeat"
    );
    let (status, _) = b.rest(
        "PUT",
        "/v1/rooms/route-1",
        Some(json!({"owner_id": "other"})),
    );
    assert_eq!(status, 409, "another owner conflicts on every node");
    let join = |node: &Node, user: &str| {
        node.rest("PUT", &format!("/v1/rooms/route-1/members/{user}"), None)
            .0
    };
    assert_eq!(join(&b, "rider"), 201);
    assert_eq!(join(&a, "rider"), 200);
    for node in [&a, &b] {
        let (status, room) = node.rest("GET", "/v1/rooms/route-1", None);
        assert_eq!(status, 200);
        assert_eq!(common::members(&room), ["driver", "rider"], "{room}");
    }

    // The driver on A, the rider on B (and on A with a second device).
    let mut driver = a.ws("driver");
    let mut rider = b.ws("rider");
    let mut rider_on_a = a.ws("rider");
    let sent = driver.send_msg("route-1", "hello from A");
    assert_eq!(sent["seq"], 1);
    for client in [&mut rider, &mut rider_on_a, &mut driver] {
        let push = client.expect_push("message");
        assert_eq!(
            (
                push["message"]["seq"].as_u64(),
                push["message"]["text"].as_str()
            ),
            (Some(1), Some("hello from A"))
        );
    }
    let reply = rider.send_msg("route-1", "hello from B");
    assert_eq!(reply["seq"], 2);
    assert_eq!(
        driver.expect_push("message")["message"]["text"],
        "hello from B"
    );

    // client_msg_id holds across nodes: the retry through B answers with the first seq.
    let first = post(
        &a,
        "route-1",
        json!({"text": "pickup at 8", "client_msg_id": "c-1"}),
    );
    assert_eq!(first.0, 201, "{}", first.1);
    let retry = post(
        &b,
        "route-1",
        json!({"text": "pickup at 8", "client_msg_id": "c-1"}),
    );
    assert_eq!(retry.0, 200, "{}", retry.1);
    assert_eq!(retry.1["message"]["seq"], first.1["message"]["seq"]);

    // sync on either node returns every acknowledged message, whichever node took it.
    for node in [&a, &b] {
        let history = node.history_of_size("route-1", 3);
        let texts: Vec<_> = history
            .values()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["hello from A", "hello from B", "pickup at 8"]);
    }
    let reply = rider.sync(json!({"room_id": "route-1"}));
    assert_eq!(seqs_of(&reply), [1, 2, 3]);

    // Leaving through A reaches the rider's devices on both nodes; the member's
    // read marker and rooms list follow on B.
    rider.discard("message");
    rider_on_a.discard("message");
    let (status, _) = a.rest("DELETE", "/v1/rooms/route-1/members/rider", None);
    assert_eq!(status, 204);
    assert_eq!(rider.expect_push("left")["room_id"], "route-1");
    assert_eq!(rider_on_a.expect_push("left")["room_id"], "route-1");
    assert!(rider.rooms().is_empty());

    // Closing through B closes it on A; a closed id is not reused anywhere.
    assert_eq!(b.rest("DELETE", "/v1/rooms/route-1", None).0, 204);
    assert_eq!(driver.expect_push("left")["room_id"], "route-1");
    assert_eq!(a.rest("GET", "/v1/rooms/route-1", None).0, 404);
    assert_eq!(put_room(&a).0, 409);
}

#[test]
fn concurrent_senders_on_two_nodes_share_one_gapless_order() {
    if !available("concurrent_senders_on_two_nodes_share_one_gapless_order") {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (
        Node::start(&redis.url(), false),
        Node::start(&redis.url(), false),
    );
    a.create_room("busy", "u1");
    b.add_member("busy", "u2");
    a.add_member("busy", "listener");
    let mut listeners = [a.ws("listener"), b.ws("listener")];
    const PER_SENDER: usize = 60;
    let senders: Vec<_> = [(a.ws("u1"), "u1"), (b.ws("u2"), "u2")]
        .into_iter()
        .map(|(mut client, name)| {
            std::thread::spawn(move || {
                (0..PER_SENDER)
                    .map(|i| {
                        client.send_msg("busy", &format!("{name}-{i}"))["seq"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = senders
        .into_iter()
        .flat_map(|sender| sender.join().unwrap())
        .collect();
    acked.sort_unstable();
    let total = 2 * PER_SENDER as u64;
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "no seq twice, none skipped"
    );
    let orders: Vec<Vec<(u64, String)>> = listeners
        .iter_mut()
        .map(|listener| {
            (0..total)
                .map(|_| {
                    let push = listener.expect_push("message");
                    let message = &push["message"];
                    (
                        message["seq"].as_u64().unwrap(),
                        message["text"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .collect();
    let seqs: Vec<u64> = orders[0].iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "pushes leave in seq order"
    );
    assert_eq!(
        orders[0], orders[1],
        "both nodes' listeners see the same order"
    );
    let texts: HashSet<&String> = orders[0].iter().map(|(_, text)| text).collect();
    assert_eq!(texts.len(), total as usize, "each message once");
}
