//! Cluster mode: real redis-server processes and two or three real chat-engine nodes on
//! loopback, each with its own data directory, behaving as one server.
#![cfg(feature = "redis")]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::redis_server::{
    available, command_calls, command_reply, script_calls, RedisCluster, RedisServer,
};
use common::tmpfs::Tmpfs;
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
        Self::start_with(redis_url, redis_cluster, "")
    }

    /// [`Node::start`] with more `[cluster]` keys.
    fn start_with(redis_url: &str, redis_cluster: bool, cluster_keys: &str) -> Node {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            redis_url,
            redis_cluster,
            cluster_keys,
        )
    }

    /// [`Node::start_with`] on the data directory `data`.
    fn start_in(
        data: tempfile::TempDir,
        redis_url: &str,
        redis_cluster: bool,
        cluster_keys: &str,
    ) -> Node {
        let config = config_toml(&format!(
            "[limits]\nsend_rate = 10000\n[cluster]\nredis_url = \"{redis_url}\"\n\
             redis_cluster = {redis_cluster}\nshards = 4\n{cluster_keys}\n"
        ));
        let process = Process::start(data.path(), &config);
        let node = Node {
            process,
            data,
            config,
        };
        node.wait_ready(true);
        node
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self) {
        self.process.kill_9();
        self.process.wait();
    }

    /// Starts the node again on its data directory and config.
    fn start_again(&mut self) {
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

    /// Waits until this node knows `room` with `count` members.
    #[track_caller]
    fn wait_for_members(&self, room: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.rest("GET", &format!("/v1/rooms/{room}"), None).1["members"]
            .as_array()
            .map(Vec::len)
            != Some(count)
        {
            assert!(
                Instant::now() < deadline,
                "{room} never had {count} members here"
            );
            std::thread::sleep(Duration::from_millis(20));
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

/// A Redis and two nodes on it, which most tests start with. The caller keeps the Redis
/// alive by holding it.
fn redis_and_two_nodes() -> (RedisServer, Node, Node) {
    redis_and_two_nodes_with("")
}

/// [`redis_and_two_nodes`] with more `[cluster]` keys.
fn redis_and_two_nodes_with(cluster_keys: &str) -> (RedisServer, Node, Node) {
    let redis = RedisServer::start();
    let (a, b) = (
        Node::start_with(&redis.url(), false, cluster_keys),
        Node::start_with(&redis.url(), false, cluster_keys),
    );
    (redis, a, b)
}

fn post(node: &Node, room: &str, body: Value) -> (u16, Value) {
    node.rest("POST", &format!("/v1/rooms/{room}/messages"), Some(body))
}

#[test]
fn rest_changes_and_messages_reach_every_node_once_in_order() {
    if !available("rest_changes_and_messages_reach_every_node_once_in_order") {
        return;
    }
    let (_redis, a, b) = redis_and_two_nodes();

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
    let (_redis, a, b) = redis_and_two_nodes();
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

/// Posts to `room` through `node` from a thread until `stop`, each message with its own
/// `client_msg_id`; returns the acknowledged (seq, text) pairs and how many were refused.
fn post_until(
    node: &Node,
    room: &'static str,
    tag: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<(u64, String)>, usize)> {
    let endpoint = (*node.process).clone();
    std::thread::spawn(move || {
        let (mut acked, mut refused) = (Vec::new(), 0);
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let text = format!("{tag}-{i}");
            let (status, reply) = endpoint.rest(
                "POST",
                &format!("/v1/rooms/{room}/messages"),
                Some(json!({"text": text, "client_msg_id": text})),
            );
            match status {
                201 => acked.push((reply["message"]["seq"].as_u64().unwrap(), text)),
                503 => {
                    assert_eq!(reply["code"], "unavailable", "{reply}");
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("POST answered {other}: {reply}"),
            }
            i += 1;
        }
        (acked, refused)
    })
}

/// Asserts that `node` holds every acknowledged message, each once, under its seq.
#[track_caller]
fn assert_holds(node: &Node, room: &str, acked: &[(u64, String)]) {
    let history = node.history_of_size(room, acked.len());
    for (seq, text) in acked {
        assert_eq!(
            history.get(seq).and_then(|m| m["text"].as_str()),
            Some(text.as_str()),
            "acknowledged message {seq} ({text}) is missing or different"
        );
    }
    let texts: HashSet<&str> = history
        .values()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), history.len(), "no message stored twice");
}

#[test]
fn redis_killed_and_restarted_under_load_loses_no_acknowledged_message() {
    if !available("redis_killed_and_restarted_under_load_loses_no_acknowledged_message") {
        return;
    }
    let (mut redis, a, b) = redis_and_two_nodes();
    a.create_room("load", "driver");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders = [
        post_until(&a, "load", "via-a", stop.clone()),
        post_until(&b, "load", "via-b", stop.clone()),
    ];
    std::thread::sleep(Duration::from_millis(700));
    redis.kill_9();
    // While Redis is away: not ready, and sends answer `unavailable`, never a false 201.
    a.wait_ready(false);
    b.wait_ready(false);
    let (status, reply) = post(&a, "load", json!({"text": "while down"}));
    assert_eq!(
        (status, reply["code"].as_str()),
        (503, Some("unavailable")),
        "{reply}"
    );
    std::thread::sleep(Duration::from_millis(500));
    redis.restart();
    // Both nodes find Redis again by themselves, and once ready they serve at once: ready
    // means their log readers are back too, not only their command connections.
    a.wait_ready(true);
    b.wait_ready(true);
    for (node, text) in [(&a, "a once ready"), (&b, "b once ready")] {
        let (status, reply) = post(node, "load", json!({"text": text}));
        assert_eq!(status, 201, "{text}: {reply}");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut refused = 0;
    for sender in senders {
        let (ok, no) = sender.join().unwrap();
        acked.extend(ok);
        refused += no;
    }
    assert!(refused > 0, "the outage was seen by the senders");
    assert!(
        acked.len() > 20,
        "messages were acknowledged: {}",
        acked.len()
    );
    let seqs: HashSet<u64> = acked.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs.len(), acked.len(), "no seq acknowledged twice");
    for node in [&a, &b] {
        assert_holds(node, "load", &acked);
    }
    let last = a.post_message("load", json!({"text": "after"}))["seq"]
        .as_u64()
        .unwrap();
    assert!(
        seqs.iter().all(|seq| *seq < last),
        "seqs go on from the last one"
    );
}

#[test]
fn a_redis_flushed_under_live_nodes_makes_them_not_ready() {
    if !available("a_redis_flushed_under_live_nodes_makes_them_not_ready") {
        return;
    }
    let receiver = common::receiver::Receiver::start();
    let hooks = format!("[webhooks]\nurl = \"{}\"\nsecret = \"s\"\n", receiver.url());
    let (redis, a, b) = redis_and_two_nodes_with(&hooks);
    a.create_room("trip", "driver");
    a.post_message("trip", json!({"text": "before"}));
    assert_eq!(b.history("trip").len(), 1, "b applied it before the flush");
    let sender = || command_reply(redis.port, "GET ce:webhooks:sender");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sender().as_deref() == Some("$-1") {
        assert!(Instant::now() < deadline, "a node takes the webhook lease");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        command_reply(redis.port, "FLUSHALL").as_deref(),
        Some("+OK")
    );
    // Redis no longer knows the room: serving it as never created would be wrong.
    a.wait_ready(false);
    b.wait_ready(false);
    // Nor does a node that cannot apply the logs send webhooks: neither takes the lease.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(sender().as_deref(), Some("$-1"), "nobody holds the lease");
    for node in [&a, &b] {
        let (status, reply) = post(node, "trip", json!({"text": "after"}));
        assert_eq!(
            (status, reply["code"].as_str()),
            (503, Some("unavailable")),
            "{reply}"
        );
        let (status, history) = node.rest("GET", "/v1/rooms/trip/messages", None);
        assert_eq!(
            (status, seqs_of(&history)),
            (200, vec![1]),
            "what it held stays readable"
        );
    }
}

#[test]
fn a_node_killed_and_restarted_catches_up_by_itself() {
    if !available("a_node_killed_and_restarted_catches_up_by_itself") {
        return;
    }
    let (_redis, a, mut b) = redis_and_two_nodes();
    a.create_room("trip", "driver");
    a.post_message("trip", json!({"text": "before"}));
    b.history_of_size("trip", 1);
    b.kill();
    let acked: Vec<(u64, String)> = (0..30)
        .map(|i| {
            let text = format!("while B was down {i}");
            let message = a.post_message("trip", json!({"text": text}));
            (message["seq"].as_u64().unwrap(), text)
        })
        .collect();
    a.add_member("trip", "late-rider");
    b.start_again();
    b.wait_ready(true);
    assert_holds(&b, "trip", &acked);
    let (_, room) = b.rest("GET", "/v1/rooms/trip", None);
    assert_eq!(common::members(&room), ["driver", "late-rider"]);
    // And it takes part again at once: its own send is seen on A.
    let mut rider = b.ws("late-rider");
    assert_eq!(rider.send_msg("trip", "back")["seq"], 32);
    assert_eq!(a.history_of_size("trip", 32)[&32]["text"], "back");
}

/// A node whose disk fills cannot apply the logs: it turns not ready and skips nothing.
/// Once space returns it applies every entry it could not, in order, by itself, while the
/// rest of the cluster went on serving. Runs on a real, small tmpfs.
#[test]
fn a_node_whose_disk_fills_catches_up_once_space_returns() {
    if !available("a_node_whose_disk_fills_catches_up_once_space_returns") {
        return;
    }
    // RocksDB resumes after a full disk once the free space exceeds its write buffer.
    let Some(disk) = Tmpfs::mount(128) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), false);
    let b = Node::start_in(
        tempfile::tempdir_in(disk.path()).unwrap(),
        &redis.url(),
        false,
        "",
    );
    a.create_room("trip", "driver");
    b.wait_for_members("trip", 1);
    let filler = disk.fill_leaving(512 * 1024);
    // 2 MB of messages, four times what B's disk has left.
    let text = |i: usize| format!("{i:04}-{}", "x".repeat(10_000));
    let acked: Vec<(u64, String)> = (0..200)
        .map(|i| {
            let message = a.post_message("trip", json!({"text": text(i)}));
            (message["seq"].as_u64().unwrap(), text(i))
        })
        .collect();
    b.wait_ready(false);
    // B cannot apply what A acknowledged: its reads say so rather than answer short.
    let (status, body) = b.rest("GET", "/v1/rooms/trip/messages", None);
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(a.ready(), "the node with space serves on");
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.ready() {
        assert!(
            Instant::now() < deadline,
            "B did not recover within 60 s of freeing space: {}",
            b.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_holds(&b, "trip", &acked);
    let mut rider = b.ws("driver");
    assert_eq!(rider.send_msg("trip", "after")["seq"], 201);
    assert_eq!(a.history_of_size("trip", 201)[&201]["text"], "after");
}

#[test]
fn a_node_away_longer_than_the_log_keeps_says_so_and_stays_not_ready() {
    if !available("a_node_away_longer_than_the_log_keeps_says_so_and_stays_not_ready") {
        return;
    }
    let redis = RedisServer::start();
    let short = "log_max_len = 1000";
    let a = Node::start_with(&redis.url(), false, short);
    let mut b = Node::start_with(&redis.url(), false, short);
    a.create_room("long", "driver");
    b.kill();
    // 3,000 messages in one room trim its shard's log past B's position.
    a.post_in_parallel("long", "m", 6, 500, |t, i| format!("{t}-{i}"));
    b.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.stderr_text().contains("no longer holds") {
        assert!(
            Instant::now() < deadline,
            "no gap reported: {}",
            b.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !b.ready(),
        "a node with a gap stays out of the load balancer"
    );
    let (status, reply) = post(&b, "long", json!({"text": "x"}));
    assert_eq!((status, reply["code"].as_str()), (503, Some("unavailable")));
}

#[test]
fn a_redis_cluster_of_three_masters_serves_rooms_on_every_slot() {
    if !available("a_redis_cluster_of_three_masters_serves_rooms_on_every_slot") {
        return;
    }
    let redis = RedisCluster::start(3);
    let (a, b) = (
        Node::start(&redis.url(), true),
        Node::start(&redis.url(), true),
    );
    // Sixteen rooms cover the four shards, which the three masters share.
    let rooms: Vec<String> = (0..16).map(|i| format!("spread-{i}")).collect();
    for room in &rooms {
        a.create_room(room, "driver");
        b.add_member(room, "rider");
    }
    let mut rider = b.ws("rider");
    for room in &rooms {
        a.post_message(room, json!({"text": format!("to {room}")}));
        let push = rider.expect_push("message");
        assert_eq!(push["message"]["text"], format!("to {room}"));
        let reply = rider.send_msg(room, "ok");
        assert_eq!(reply["seq"], 2);
        assert_eq!(rider.expect_push("message")["message"]["text"], "ok");
    }
    for room in &rooms {
        let history = a.history_of_size(room, 2);
        assert_eq!(history.len(), 2, "{room} on A");
        assert_eq!(history[&2]["text"], "ok");
    }
}

#[test]
fn message_changes_are_decided_once_and_reach_every_node() {
    if !available("message_changes_are_decided_once_and_reach_every_node") {
        return;
    }
    let (_redis, a, b) = redis_and_two_nodes();
    assert_eq!(
        a.rest("PUT", "/v1/rooms/r-ch", Some(json!({"owner_id": "driver"})))
            .0,
        201
    );
    assert_eq!(a.rest("PUT", "/v1/rooms/r-ch/members/rider", None).0, 201);
    let mut driver = a.ws("driver");
    let mut rider = b.ws("rider");
    let sent = driver.send_msg("r-ch", "eta 5");
    assert_eq!(sent["seq"], 1);
    rider.expect_push("message");

    // An edit through A reaches B's member as a push, and B's history shows the target
    // edited; a repeat that changes nothing is `ok` on either node.
    driver.request_ok(
        json!({"type": "edit", "room_id": "r-ch", "seq": 1, "text": "eta 3"}),
        "sent",
    );
    let push = rider.expect_push("message");
    assert_eq!(
        (
            push["message"]["kind"].clone(),
            push["message"]["target_seq"].clone()
        ),
        (json!("edit"), json!(1))
    );
    let mut driver_on_b = b.ws("driver");
    driver_on_b.request_ok(
        json!({"type": "edit", "room_id": "r-ch", "seq": 1, "text": "eta 3"}),
        "ok",
    );
    driver_on_b.request_err(
        json!({"type": "edit", "room_id": "r-ch", "seq": 1, "text": "x", "data": 1}),
        "bad_request",
    );
    // A change's client_msg_id holds across nodes: the retry through B answers with A's seq.
    let edit = json!({"type": "edit", "room_id": "r-ch", "seq": 1, "text": "eta 2",
                      "client_msg_id": "e-1"});
    let first = driver.request_ok(edit.clone(), "sent");
    let retry = driver_on_b.request_ok(edit, "sent");
    assert_eq!(
        (first["seq"].clone(), first["ts"].clone()),
        (retry["seq"].clone(), retry["ts"].clone())
    );
    rider.request_err(
        json!({"type": "delete", "room_id": "r-ch", "seq": 1}),
        "forbidden",
    );
    rider.request_err(
        json!({"type": "react", "room_id": "r-ch", "seq": 2, "reaction": "x"}),
        "bad_request",
    );
    rider.request_err(
        json!({"type": "react", "room_id": "r-ch", "seq": 50, "reaction": "x"}),
        "not_found",
    );

    // The same reaction raced through both nodes at once is stored once: each node judges
    // against its own state, and Redis accepts only a decision made on the current one.
    let mut rider_on_a = a.ws("rider");
    let react = json!({"type": "react", "room_id": "r-ch", "seq": 1, "reaction": "👍"});
    for _ in 0..5 {
        let (first, second) = std::thread::scope(|s| {
            let one = s.spawn(|| rider.request(react.clone()));
            let two = s.spawn(|| rider_on_a.request(react.clone()));
            (one.join().unwrap(), two.join().unwrap())
        });
        let mut types = [first["type"].clone(), second["type"].clone()];
        types.sort_by_key(|t| t.to_string());
        assert_eq!(types, [json!("ok"), json!("sent")], "{first} {second}");
        let unreact = json!({"type": "react", "room_id": "r-ch", "seq": 1, "reaction": "👍",
                             "removed": true});
        rider.request_ok(unreact, "sent");
    }
    rider.request_ok(react.clone(), "sent");

    // RouteAPI moderates through B: a delete decided once, repeated as 204 with no change.
    let path = "/v1/rooms/r-ch/messages/1";
    assert_eq!(b.rest("DELETE", path, None).0, 204);
    assert_eq!(a.rest("DELETE", path, None).0, 204);
    driver.request_err(
        json!({"type": "edit", "room_id": "r-ch", "seq": 1, "text": "back"}),
        "conflict",
    );
    // The message, two edits, five reactions and their removals, one more reaction, the
    // delete.
    let count = 3 + 10 + 1 + 1;
    let (on_a, on_b) = (
        a.history_of_size("r-ch", count),
        b.history_of_size("r-ch", count),
    );
    assert_eq!(on_a.len(), count, "{on_a:?}");
    assert_eq!(
        serde_json::to_string(&on_a).unwrap(),
        serde_json::to_string(&on_b).unwrap(),
        "both nodes hold the same history"
    );
    let kinds: Vec<&str> = on_a.values().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "delete").count(),
        1,
        "{kinds:?}"
    );
    for node in [&a, &b] {
        let (status, target) = node.rest("GET", path, None);
        assert_eq!(status, 200);
        assert_eq!(target["message"]["deleted"], true, "{target}");
        assert_eq!(target["message"]["reactions"], json!({"👍": ["rider"]}));
    }

    // RouteAPI edits its system message through B; A shows the edit, and a repeat through
    // A changes nothing and answers with the same edit. A stranger is not a member anywhere.
    let (status, system) = post(&a, "r-ch", json!({"text": "pickup at 5"}));
    assert_eq!(status, 201, "{system}");
    let path = format!("/v1/rooms/r-ch/messages/{}", system["message"]["seq"]);
    let (status, edit) = b.rest("PATCH", &path, Some(json!({"text": "pickup at 6"})));
    assert_eq!(status, 200, "{edit}");
    let (status, again) = a.rest("PATCH", &path, Some(json!({"text": "pickup at 6"})));
    assert_eq!((status, &again["message"]), (200, &edit["message"]));
    let edited = a.rest("GET", &path, None).1;
    assert_eq!(edited["message"]["text"], "pickup at 6");
    assert_eq!(edited["message"]["edited_ts"], edit["message"]["ts"]);
    assert_eq!(
        b.rest(
            "PATCH",
            "/v1/rooms/r-ch/messages/2",
            Some(json!({"text": "x"}))
        )
        .0,
        400
    );
    let mut stranger = b.ws("stranger");
    stranger.request_err(
        json!({"type": "react", "room_id": "r-ch", "seq": 1, "reaction": "x"}),
        "not_member",
    );
}

/// Reactions to one message through both nodes at once: each member's lands on the first
/// decision (another member's change does not make it stale), while one member's same
/// reaction sent through both nodes at once is stored once and answered `ok` the second
/// time (their own change does).
#[test]
fn concurrent_reactions_through_two_nodes_are_each_decided_once() {
    if !available("concurrent_reactions_through_two_nodes_are_each_decided_once") {
        return;
    }
    concurrent_reactions("");
}

/// The same with generations of 16 fields in Redis, which turn over several times during
/// the burst: the change counts they drop are taken from the nodes' own.
#[test]
fn concurrent_reactions_are_decided_once_while_the_dedup_generations_turn_over() {
    if !available("concurrent_reactions_are_decided_once_while_the_dedup_generations_turn_over") {
        return;
    }
    concurrent_reactions("dedup_max_fields = 16");
}

fn concurrent_reactions(cluster_keys: &str) {
    let (_redis, a, b) = redis_and_two_nodes_with(cluster_keys);
    let riders: Vec<String> = (0..16).map(|i| format!("rider{i:02}")).collect();
    a.create_room("r-react", "driver");
    for rider in &riders {
        a.add_member("r-react", rider);
    }
    b.wait_for_members("r-react", riders.len() + 1);
    let mut driver = a.ws("driver");
    assert_eq!(driver.send_msg("r-react", "pickup at 5")["seq"], 1);
    b.history_of_size("r-react", 1);
    let react = |reaction: &str| json!({"type": "react", "room_id": "r-react", "seq": 1, "reaction": reaction});

    // Every rider's frame is written before any reply is read.
    let mut clients: Vec<_> = riders
        .iter()
        .enumerate()
        .map(|(i, rider)| if i % 2 == 0 { a.ws(rider) } else { b.ws(rider) })
        .collect();
    let ids: Vec<Value> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, client)| {
            let id = json!(format!("r{i}"));
            let mut frame = react("👍");
            frame["id"] = id.clone();
            client.send_json(&frame);
            id
        })
        .collect();
    for (client, id) in clients.iter_mut().zip(&ids) {
        let reply = client.wait_reply(id);
        assert_eq!(reply["type"], "sent", "{reply}");
    }

    // One rider, the same reaction through both nodes at once, ten times over.
    let mut on_a = a.ws("rider00");
    let mut on_b = b.ws("rider00");
    for round in 0..10 {
        let reaction = format!("r{round}");
        let (mut via_a, mut via_b) = (react(&reaction), react(&reaction));
        via_a["id"] = json!(format!("a{round}"));
        via_b["id"] = json!(format!("b{round}"));
        on_a.send_json(&via_a);
        on_b.send_json(&via_b);
        let mut types = [
            on_a.wait_reply(&via_a["id"])["type"].clone(),
            on_b.wait_reply(&via_b["id"])["type"].clone(),
        ];
        types.sort_by_key(|t| t.to_string());
        assert_eq!(types, [json!("ok"), json!("sent")], "round {round}");
    }

    let expected: Vec<&str> = riders.iter().map(String::as_str).collect();
    for node in [&a, &b] {
        let history = node.history_of_size("r-react", 1 + riders.len() + 10);
        assert_eq!(
            history.len(),
            1 + riders.len() + 10,
            "each change stored once"
        );
        let mut reactors: Vec<String> = history[&1]["reactions"]["👍"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect();
        reactors.sort();
        assert_eq!(reactors, expected);
    }
}

/// The fields of `room`'s dedup hash `generation` (`dedup` or `dedup-prev`) in Redis (0
/// when it has none), whichever of the four shards holds it.
fn dedup_fields(redis: &RedisServer, generation: &str, room: &str) -> u64 {
    (0..4)
        .map(|shard| {
            let command = format!("HLEN ce:{{ce:{shard}}}:{generation}:{room}");
            let reply = command_reply(redis.port, &command).unwrap_or_default();
            reply
                .trim_start_matches(':')
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("HLEN: {reply}"))
        })
        .sum()
}

/// Redis keeps only two generations of each room's `client_msg_id`s (here of 16 fields, each
/// current for 1 s), yet a retry is recognised on every node however old its first send,
/// and a system message whose change count left both is still edited once.
#[test]
fn retries_older_than_both_dedup_generations_are_recognised_on_every_node() {
    if !available("retries_older_than_both_dedup_generations_are_recognised_on_every_node") {
        return;
    }
    let (redis, a, b) = redis_and_two_nodes_with("dedup_max_fields = 16\ndedup_ttl_ms = 1000");
    a.create_room("r-window", "driver");
    let system = |n: usize| json!({"text": format!("stop {n}"), "client_msg_id": format!("c{n}")});
    for n in 0..40 {
        let (status, body) = post(&a, "r-window", system(n));
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["message"]["seq"], n + 1);
    }
    for generation in ["dedup", "dedup-prev"] {
        let fields = dedup_fields(&redis, generation, "r-window");
        assert!(
            (1..=16).contains(&fields),
            "Redis holds {fields} fields in {generation}"
        );
    }
    b.history_of_size("r-window", 40);

    for node in [&a, &b] {
        for n in [0, 20, 39] {
            let (status, body) = post(node, "r-window", system(n));
            assert_eq!(status, 200, "retry of c{n}: {body}");
            assert_eq!(body["message"]["seq"], n + 1, "retry of c{n}");
        }
    }
    // Edits of a message whose count left the window: each decided once, in order.
    let edit = |node: &Node, text: &str| {
        node.rest(
            "PATCH",
            "/v1/rooms/r-window/messages/1",
            Some(json!({"text": text})),
        )
    };
    assert_eq!(edit(&a, "moved").0, 200);
    for n in 40..60 {
        assert_eq!(post(&a, "r-window", system(n)).0, 201);
    }
    b.history_of_size("r-window", 61);
    let (status, body) = edit(&b, "moved again");
    assert_eq!(status, 200, "{body}");
    let (status, body) = edit(&a, "moved again");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["seq"], 62, "the repeat stores nothing");

    // A quiet room's generations expire in Redis (the current one two ttls after it
    // started); its retries are still recognised.
    std::thread::sleep(Duration::from_millis(2_200));
    for generation in ["dedup", "dedup-prev"] {
        let fields = dedup_fields(&redis, generation, "r-window");
        assert_eq!(fields, 0, "{generation} expired");
    }
    for node in [&b, &a] {
        let (status, body) = post(node, "r-window", system(5));
        assert_eq!(
            (status, body["message"]["seq"].clone()),
            (200, json!(6)),
            "{body}"
        );
    }
    for node in [&a, &b] {
        let history = node.history_of_size("r-window", 62);
        assert_eq!(history.len(), 62, "nothing stored twice");
        assert_eq!(history[&1]["text"], "moved again");
    }
}

/// Sends in flight while Redis's dedup generation turns over are decided in the order sent:
/// only a node a whole generation behind is told to catch up and decide again.
#[test]
fn sends_in_flight_while_the_dedup_generation_turns_over_keep_their_order() {
    if !available("sends_in_flight_while_the_dedup_generation_turns_over_keep_their_order") {
        return;
    }
    let (_redis, a, _b) = redis_and_two_nodes_with("dedup_max_fields = 256");
    a.create_room("r-turnover", "driver");
    let mut driver = a.ws("driver");
    const SENDS: usize = 1_000;
    for i in 0..SENDS {
        driver.send_json(&json!({"type": "send", "id": format!("s{i}"),
                                 "room_id": "r-turnover", "text": format!("m{i}"),
                                 "client_msg_id": format!("c{i}")}));
    }
    let seqs: Vec<u64> = (0..SENDS)
        .map(|i| {
            let reply = driver.wait_reply(&json!(format!("s{i}")));
            assert_eq!(reply["type"], "sent", "{reply}");
            reply["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=SENDS as u64).collect::<Vec<_>>(),
        "seqs in the order sent across three turnovers"
    );
}

/// Rooms on demand across nodes: with room for one room in memory, every node unloads the
/// script's room between steps and loads it again to apply or decide the next change, and
/// the clients see exactly what they see when rooms stay (REST on one node, apps on the
/// other).
#[test]
fn a_room_unloaded_on_every_node_behaves_as_if_it_had_stayed() {
    if !available("a_room_unloaded_on_every_node_behaves_as_if_it_had_stayed") {
        return;
    }
    let run = |extra: &str| {
        let redis = RedisServer::start();
        let (a, b) = (
            Node::start_with(&redis.url(), false, extra),
            Node::start_with(&redis.url(), false, extra),
        );
        let seen = common::room_script::run(&a, &b);
        let unloads = [&a, &b].map(|n| n.metric("chat_engine_room_unloads_total"));
        (seen, unloads)
    };
    let (unloading, unloads) = run("[rooms]\nmax_in_memory = 1");
    assert!(unloads.iter().all(|u| *u >= 20.0), "unloads: {unloads:?}");
    let (staying, unloads) = run("");
    assert_eq!(unloads, [0.0, 0.0]);
    unloading.assert_same_as(&staying);
    common::room_script::assert_expected(&unloading);
}

/// History epochs in cluster mode: every node names the cluster's epoch (each data
/// directory has its own, unused here), `resume` on one node catches up what another took,
/// and a cluster re-seeded after Redis lost its data has a new epoch.
#[test]
fn every_node_names_the_cluster_epoch_and_resumes_what_another_took() {
    if !available("every_node_names_the_cluster_epoch_and_resumes_what_another_took") {
        return;
    }
    let (_redis, a, b) = redis_and_two_nodes();
    a.create_room("r-ep", "driver");
    a.add_member("r-ep", "rider");
    for i in 1..=3 {
        a.post_message("r-ep", json!({"text": format!("m{i}")}));
    }
    let epoch = a.epoch("r-ep");
    assert!(!epoch.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rider = b.ws("rider");
    let resumed = loop {
        let frame = json!({"type": "resume", "rooms": {"r-ep": {"seq": 1, "epoch": epoch}}});
        let reply = rider.request_ok(frame, "resumed");
        if reply["rooms"][0]["last_seq"] == 3 {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "node b never applied the messages"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        resumed["rooms"][0]["epoch"], epoch,
        "the same epoch on every node"
    );
    assert_eq!(
        seqs_of(&json!({"messages": resumed["messages"]["r-ep"]})),
        [2, 3]
    );
    assert_eq!(resumed["reset"], json!([]));
    drop(rider);

    // Redis lost its data: the cluster is re-seeded with new nodes, and a new epoch.
    let reseeded = RedisServer::start();
    let c = Node::start(&reseeded.url(), false);
    c.create_room("r-ep", "driver");
    let fresh = c.epoch("r-ep");
    assert_ne!(fresh, epoch);
    let mut driver = c.ws("driver");
    let frame = json!({"type": "resume", "rooms": {"r-ep": {"seq": 3, "epoch": epoch}}});
    let reply = driver.request_ok(frame, "resumed");
    assert_eq!(reply["reset"], json!(["r-ep"]), "{reply}");
}

/// On one Redis a node reads every shard's log and typing stream in one read: rooms on
/// every shard still get their messages and typing indicators to the other node, and a
/// typing indicator never comes back to its sender.
#[test]
fn messages_and_typing_of_rooms_on_every_shard_reach_the_other_node() {
    if !available("messages_and_typing_of_rooms_on_every_shard_reach_the_other_node") {
        return;
    }
    let (_redis, a, b) = redis_and_two_nodes();
    // Twelve rooms over the tests' four shards: every shard has some.
    let rooms: Vec<String> = (0..12).map(|i| format!("r-shard-{i}")).collect();
    for room in &rooms {
        a.create_room(room, "driver");
        a.add_member(room, "rider");
        a.post_message(room, json!({"text": format!("hello {room}")}));
    }
    for room in &rooms {
        b.wait_for_members(room, 2);
        let history = b.history_of_size(room, 1);
        assert_eq!(
            history[&1]["text"],
            json!(format!("hello {room}")),
            "{room}"
        );
    }
    let mut driver = a.ws("driver");
    let mut rider = b.ws("rider");
    for room in &rooms {
        driver.send_json(&json!({"type": "typing", "room_id": room}));
    }
    let mut seen = HashSet::new();
    for _ in &rooms {
        let typing = rider.expect_push("typing");
        assert_eq!(typing["user_id"], "driver", "{typing}");
        seen.insert(typing["room_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        seen.len(),
        rooms.len(),
        "one typing push per room: {seen:?}"
    );
    driver.expect_no("typing", Duration::from_millis(300));
}

/// Sends that queue up while a script call is out go to Redis together, and each is still
/// decided on its own: its seq, its dedup (a retry in the same call answers the first's
/// seq), its refusal.
#[test]
fn sends_queued_together_are_each_decided_once_and_answered() {
    if !available("sends_queued_together_are_each_decided_once_and_answered") {
        return;
    }
    let (redis, a, b) = redis_and_two_nodes();
    // Eight senders, each in a room of its own, so a script call carries sends of several
    // connections and several of each.
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 30;
    for i in 0..SENDERS {
        a.create_room(&format!("queued-{i}"), &format!("s{i}"));
    }
    a.create_room("elsewhere", "someone");
    b.wait_for_members(&format!("queued-{}", SENDERS - 1), 1);
    let mut senders: Vec<_> = (0..SENDERS).map(|i| a.ws(&format!("s{i}"))).collect();
    assert_eq!(
        command_reply(redis.port, "CONFIG RESETSTAT").as_deref(),
        Some("+OK")
    );
    // Every sender writes all its sends at once, without waiting: every sixth repeats the
    // one before it (same client_msg_id), and one of s0's is to a room s0 is not in.
    let frame = |sender: usize, i: usize| {
        let key = if i % 6 == 5 { i - 1 } else { i };
        let room = if (sender, i) == (0, 9) {
            "elsewhere".to_owned()
        } else {
            format!("queued-{sender}")
        };
        json!({"type": "send", "id": format!("s{i}"), "room_id": room,
               "text": format!("m{key}"), "client_msg_id": format!("c{key}")})
    };
    for i in 0..PER_SENDER {
        for (sender, client) in senders.iter_mut().enumerate() {
            client.send_json(&frame(sender, i));
        }
    }
    for (sender, client) in senders.iter_mut().enumerate() {
        let room = format!("queued-{sender}");
        let mut seq_of = BTreeMap::new();
        let mut seqs = Vec::new();
        for i in 0..PER_SENDER {
            let reply = client.wait_reply(&json!(format!("s{i}")));
            if (sender, i) == (0, 9) {
                assert_eq!(reply["code"], "not_member", "{reply}");
                continue;
            }
            assert_eq!(reply["type"], "sent", "{} got {reply}", frame(sender, i));
            let seq = reply["seq"].as_u64().unwrap();
            if i % 6 == 5 {
                assert_eq!(
                    seq_of.get(&(i - 1)),
                    Some(&seq),
                    "a repeat answers the first's seq"
                );
                continue;
            }
            seq_of.insert(i, seq);
            seqs.push(seq);
        }
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{room}: seqs in the order sent, none twice, none skipped"
        );
        let history = b.history_of_size(&room, seqs.len());
        assert_eq!(history.len(), seqs.len(), "{room} on the other node");
    }
    let (sends, calls) = ((SENDERS * PER_SENDER) as u64, script_calls(redis.port));
    assert!(
        calls * 2 <= sends,
        "{sends} sends written at once took {calls} script calls"
    );
    // One connection's sends are queued as they come, not decided one after another.
    assert_eq!(
        command_reply(redis.port, "CONFIG RESETSTAT").as_deref(),
        Some("+OK")
    );
    let one = &mut senders[1];
    for i in 0..60 {
        one.send_json(
            &json!({"type": "send", "id": format!("p{i}"), "room_id": "queued-1",
                              "text": format!("p{i}")}),
        );
    }
    let burst: Vec<u64> = (0..60)
        .filter_map(|i| one.wait_reply(&json!(format!("p{i}")))["seq"].as_u64())
        .collect();
    assert_eq!(burst.len(), 60, "every send answered `sent`");
    assert!(
        burst.windows(2).all(|w| w[1] == w[0] + 1),
        "in order: {burst:?}"
    );
    let calls = script_calls(redis.port);
    assert!(
        calls <= 30,
        "60 sends of one connection took {calls} script calls"
    );
}

/// Webhooks in cluster mode: every event is sent once for the whole cluster, with one id,
/// whichever node took the change; a `received` on one node spares a `notify` that the
/// sending node decides.
#[test]
fn each_event_is_sent_once_for_the_cluster_and_acks_count_on_any_node() {
    if !available("each_event_is_sent_once_for_the_cluster_and_acks_count_on_any_node") {
        return;
    }
    let redis = RedisServer::start();
    let receiver = common::receiver::Receiver::start();
    let hooks = format!(
        "[webhooks]\nurl = \"{}\"\nsecret = \"cluster-secret\"\nnotify_delay_ms = 700\n",
        receiver.url()
    );
    let (a, b) = (
        Node::start_with(&redis.url(), false, &hooks),
        Node::start_with(&redis.url(), false, &hooks),
    );
    a.create_room("r-wh", "driver");
    let epoch = a.epoch("r-wh");
    a.add_member("r-wh", "rider");
    a.add_member("r-wh", "away");
    b.wait_for_members("r-wh", 3);
    let mut driver = a.ws("driver");
    let mut rider = b.ws("rider");
    for i in 1..=3 {
        driver.send_msg("r-wh", &format!("m{i}"));
    }
    b.post_message("r-wh", json!({"text": "from node b"}));
    for _ in 0..4 {
        let push = rider.expect_push("message");
        let seq = push["message"]["seq"].clone();
        rider.send_json(&json!({"type": "received", "room_id": "r-wh", "seq": seq}));
    }
    let events = receiver.wait_for("4 messages and 4 notifies", |events| {
        let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
        count("message") >= 4 && count("notify") >= 4
    });
    std::thread::sleep(Duration::from_millis(1000));
    let events = receiver
        .acknowledged()
        .into_iter()
        .chain(events)
        .collect::<Vec<_>>();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for event in receiver.acknowledged() {
        *ids.entry(event["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "every event once: {ids:?}");
    for seq in 1..=4 {
        let id = format!("message/{epoch}/r-wh/{seq}");
        assert!(ids.contains_key(&id), "{ids:?}");
    }
    let notify = |seq: u64| {
        let id = format!("notify/{epoch}/r-wh/{seq}");
        let found = events.iter().find(|e| e["id"] == id);
        found.map(|e| e["users"].clone()).unwrap_or_default()
    };
    for seq in 1..=3 {
        // Decided on node a; the rider acknowledged on node b; the driver sent it.
        assert_eq!(
            notify(seq),
            json!([{"user_id": "away", "unread": 4}]),
            "seq {seq}"
        );
    }
    // Decided on node b, from RouteAPI: the driver's app (on node a) never acknowledged.
    let users = notify(4);
    let named: Vec<_> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].clone())
        .collect();
    assert_eq!(named, [json!("away"), json!("driver")], "{users}");
}

/// After Redis lost its data, `chat-engine reseed` fills it from a stopped node's data
/// directory, with a new history epoch: rooms, members, closed rooms and seqs go on from
/// where that node's history ends, and a node started from its backup joins. It refuses
/// while the node runs, and once Redis holds a data set.
#[test]
fn reseed_fills_an_emptied_redis_from_a_node_with_a_new_epoch() {
    if !available("reseed_fills_an_emptied_redis_from_a_node_with_a_new_epoch") {
        return;
    }
    let redis = RedisServer::start();
    let mut a = Node::start(&redis.url(), false);
    a.create_room("kept", "driver");
    a.add_member("kept", "rider");
    for i in 1..=3 {
        a.post_message("kept", json!({"text": format!("m{i}")}));
    }
    a.create_room("shut", "driver");
    assert_eq!(a.rest("DELETE", "/v1/rooms/shut", None).0, 204);
    let old_epoch = a.epoch("kept");
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("node.toml");
    std::fs::write(&config_file, &a.config).unwrap();
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let reseed = |data: &std::path::Path| {
        let args = [
            "reseed",
            "--config",
            &arg(&config_file),
            "--data",
            &arg(data),
        ];
        let (status, out, err) = common::run_bin(&args, Duration::from_secs(60));
        (
            status.code(),
            out,
            err.lines().last().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(
        command_reply(redis.port, "FLUSHALL").as_deref(),
        Some("+OK")
    );
    let (code, _, why) = reseed(a.data.path());
    assert_eq!(code, Some(1));
    assert!(why.contains("in use by a running server"), "{why}");
    a.kill();
    let (code, out, why) = reseed(a.data.path());
    assert_eq!(code, Some(0), "{why}");
    assert!(
        out.contains("reseeded Redis") && out.contains("2 rooms"),
        "{out}"
    );
    let (code, _, why) = reseed(a.data.path());
    assert_eq!(code, Some(1));
    assert!(why.contains("holds a data set already"), "{why}");

    a.start_again();
    a.wait_ready(true);
    let epoch = a.epoch("kept");
    assert_ne!(
        epoch, old_epoch,
        "a reseeded cluster has a new history epoch"
    );
    assert_eq!(
        a.history("kept").keys().copied().collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(a.ws("rider").send_msg("kept", "after")["seq"], 4);
    let (status, body) = a.rest("PUT", "/v1/rooms/shut", Some(json!({"owner_id": "driver"})));
    assert_eq!(status, 409, "a closed room stays closed: {body}");

    // A node started from a backup of the reseeded one joins the new data set.
    let seeded = tempfile::tempdir().unwrap();
    std::fs::remove_dir(seeded.path()).unwrap();
    let args = [
        "backup",
        "--to",
        &arg(seeded.path()),
        "--server",
        &a.addr.to_string(),
        "--config",
        &arg(&config_file),
    ];
    let (status, out, err) = common::run_bin(&args, Duration::from_secs(60));
    assert!(status.success(), "{out} {err}");
    let b = Node::start_in(seeded, &redis.url(), false, "");
    assert_eq!(b.epoch("kept"), epoch);
    assert_eq!(b.ws("driver").send_msg("kept", "from b")["seq"], 5);
    assert_eq!(a.history_of_size("kept", 5).len(), 5);
}

/// The seqs of `room`'s `message` events in the order the endpoint first saw each.
fn first_seen_seqs(events: &[Value], room: &str) -> Vec<u64> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|e| e["type"] == "message" && e["room_id"] == room)
        .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
        .map(|e| e["message"]["seq"].as_u64().unwrap())
        .collect()
}

/// Webhooks in cluster mode: one node sends every event, so a room whose messages come
/// through two nodes at once reaches the endpoint in commit order, each event once; when
/// that node dies with events unsent, the other takes over and sends them, none lost.
#[test]
fn one_node_sends_webhooks_in_commit_order_and_another_takes_over_when_it_dies() {
    if !available("one_node_sends_webhooks_in_commit_order_and_another_takes_over_when_it_dies") {
        return;
    }
    let redis = RedisServer::start();
    let receiver = common::receiver::Receiver::start();
    let hooks = format!(
        "[webhooks]\nurl = \"{}\"\nsecret = \"cluster-secret\"\nevents = [\"message\"]\n",
        receiver.url()
    );
    let mut nodes = [
        Node::start_with(&redis.url(), false, &hooks),
        Node::start_with(&redis.url(), false, &hooks),
    ];
    nodes[0].create_room("both", "u0");
    nodes[0].add_member("both", "u1");
    nodes[1].wait_for_members("both", 2);
    let mut clients = [nodes[0].ws("u0"), nodes[1].ws("u1")];
    // Both nodes take sends at once, neither client waiting for its answers.
    let mut burst = |round: usize| {
        for i in 0..20 {
            for client in &mut clients {
                client.send_json(&json!({"type": "send", "id": format!("{round}-{i}"),
                                         "room_id": "both", "text": format!("{round}-{i}")}));
            }
        }
        for client in &mut clients {
            for i in 0..20 {
                let reply = client.wait_reply(&json!(format!("{round}-{i}")));
                assert_eq!(reply["type"], "sent", "{reply}");
            }
        }
    };
    burst(1);
    let events = receiver.wait_for("40 messages", |events| {
        first_seen_seqs(events, "both").len() >= 40
    });
    assert_eq!(
        first_seen_seqs(&events, "both"),
        (1..=40).collect::<Vec<_>>(),
        "the endpoint's first sight of each event is in commit order"
    );
    let delivered = |node: &Node| node.metric("chat_engine_webhook_events_delivered_total");
    // A sender counts a batch once it has recorded it, a moment after the endpoint answered.
    let counted = |enough: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !enough() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    counted(&|| delivered(&nodes[0]) + delivered(&nodes[1]) >= 40.0);
    let senders: Vec<usize> = (0..2).filter(|&n| delivered(&nodes[n]) > 0.0).collect();
    assert_eq!(senders.len(), 1, "one node sends");
    assert_eq!(events.len(), 40, "each event once: {events:?}");
    // The sender dies while the endpoint fails: the other node still has every event.
    receiver.answer(common::receiver::Answer::Status(500));
    burst(2);
    nodes[senders[0]].kill();
    receiver.answer(common::receiver::Answer::Status(200));
    let events = receiver.wait_for("80 messages after the takeover", |events| {
        first_seen_seqs(events, "both").len() >= 80
    });
    assert_eq!(
        first_seen_seqs(&events, "both"),
        (1..=80).collect::<Vec<_>>()
    );
    let survivor = &nodes[1 - senders[0]];
    counted(&|| delivered(survivor) >= 40.0);
    assert!(delivered(survivor) >= 40.0, "the other node took over");
}

/// The HTTP status of an upgrade with `token` on `node`, or 101 (after a ping answered).
/// "`sync` on any node returns every acknowledged message": each read waits until its node
/// has applied what the logs held when it came, so no read has to poll.
#[test]
fn reads_on_any_node_see_at_once_what_another_acknowledged() {
    if !available("reads_on_any_node_see_at_once_what_another_acknowledged") {
        return;
    }
    let (_redis, a, b) = redis_and_two_nodes();
    let mut driver = a.ws("driver");
    let mut rider = b.ws("rider");
    for i in 0..30 {
        let room = format!("r{i}");
        a.create_room(&room, "driver");
        let (status, body) = b.rest("GET", &format!("/v1/rooms/{room}"), None);
        assert_eq!(status, 200, "{room} on b: {body}");
        a.add_member(&room, "rider");
        let listed = rider.rooms();
        assert!(
            common::find_room(&listed, &room).is_some(),
            "{room} in the rider's rooms on b"
        );
        let sent = driver.send_msg(&room, &format!("m{i}"));
        let seq = sent["seq"].as_u64().unwrap();
        let synced = rider.sync(json!({"room_id": room.as_str(), "since_seq": 0}));
        assert_eq!(seqs_of(&synced), [seq], "{room}: sync on b");
        let (_, history) = b.rest("GET", &format!("/v1/rooms/{room}/messages"), None);
        assert_eq!(seqs_of(&history), [seq], "{room}: REST history on b");
        rider.request_ok(
            json!({"type": "react", "room_id": room.as_str(), "seq": seq, "reaction": "+1"}),
            "sent",
        );
        // The marker is not held back to what b had: a sees it read.
        rider.request_ok(
            json!({"type": "read", "room_id": room.as_str(), "seq": seq}),
            "ok",
        );
        let rooms = a.ws("rider").rooms();
        let on_a = common::find_room(&rooms, &room).unwrap();
        assert_eq!(
            on_a["unread"], 0,
            "{room} read through b, listed on a: {on_a}"
        );
    }
}

/// Reads that wait on the same logs at once share one question to Redis (where the logs
/// end), and each still sees every message acknowledged before it began.
#[test]
fn reads_waiting_together_share_one_question_to_redis() {
    if !available("reads_waiting_together_share_one_question_to_redis") {
        return;
    }
    let (redis, a, b) = redis_and_two_nodes();
    const READERS: usize = 16;
    const PER_READER: usize = 20;
    a.create_room("busy", "driver");
    for i in 0..READERS {
        a.add_member("busy", &format!("r{i}"));
    }
    let sent = b.ws("driver").send_msg("busy", "hello");
    let mut readers: Vec<_> = (0..READERS).map(|i| a.ws(&format!("r{i}"))).collect();
    assert_eq!(
        command_reply(redis.port, "CONFIG RESETSTAT").as_deref(),
        Some("+OK")
    );
    for client in &mut readers {
        for i in 0..PER_READER {
            client.send_json(&json!({"type": "sync", "id": i, "room_id": "busy", "since_seq": 0}));
        }
    }
    for client in &mut readers {
        for i in 0..PER_READER {
            let reply = client.wait_reply(&json!(i));
            assert_eq!(seqs_of(&reply), [sent["seq"].as_u64().unwrap()], "{reply}");
        }
    }
    let reads = (READERS * PER_READER) as u64;
    let questions = command_calls(redis.port, &["xrevrange"]);
    assert!(
        (1..reads / 2).contains(&questions),
        "{reads} reads asked Redis {questions} times"
    );
}

fn upgrade_status(node: &Node, token: &str) -> u16 {
    match node.try_ws_token(token) {
        Ok(mut client) => {
            client.request_ok(json!({"type": "ping"}), "pong");
            101
        }
        Err(common::ConnectError::Http(status)) => status,
        Err(e) => panic!("connect failed: {e:?}"),
    }
}

/// `POST /v1/users/{user_id}/disconnect` asked of one node closes the user's connections on
/// every node with 4003; with `revoke`, every node refuses the older tokens from then on,
/// also after a restart.
#[test]
fn disconnect_and_revoke_reach_every_node() {
    if !available("disconnect_and_revoke_reach_every_node") {
        return;
    }
    let (_redis, a, mut b) = redis_and_two_nodes();
    let now = chat_engine::protocol::now_ms() / 1000;
    let old = a.token_with(&json!({"sub": "rider", "exp": now + 3_600, "iat": now - 10}));
    let mut on_a = a.try_ws_token(&old).unwrap();
    let mut on_b = b.try_ws_token(&old).unwrap();
    let mut driver = b.ws("driver");
    let disconnect = "/v1/users/rider/disconnect";
    assert_eq!(a.rest("POST", disconnect, None).0, 204);
    assert_eq!(on_a.expect_close(Duration::from_secs(5)), Some(4003));
    assert_eq!(on_b.expect_close(Duration::from_secs(5)), Some(4003));
    driver.request_ok(json!({"type": "ping"}), "pong");
    assert_eq!(
        upgrade_status(&a, &old),
        101,
        "no revoke: the token stays good"
    );

    let mut on_a = a.try_ws_token(&old).unwrap();
    assert_eq!(
        b.rest("POST", disconnect, Some(json!({"revoke": true}))).0,
        204
    );
    assert_eq!(on_a.expect_close(Duration::from_secs(5)), Some(4003));
    assert_eq!(upgrade_status(&b, &old), 401, "refused where it was asked");
    assert_eq!(
        upgrade_status(&a, &old),
        401,
        "and at once on the other node"
    );
    driver.request_ok(json!({"type": "ping"}), "pong");

    b.kill();
    b.start_again();
    b.wait_ready(true);
    assert_eq!(upgrade_status(&b, &old), 401, "durable across a restart");
    std::thread::sleep(Duration::from_millis(1_100));
    let now = chat_engine::protocol::now_ms() / 1000;
    let newer = a.token_with(&json!({"sub": "rider", "exp": now + 3_600, "iat": now}));
    assert_eq!(upgrade_status(&a, &newer), 101);
    assert_eq!(upgrade_status(&b, &newer), 101);
}
