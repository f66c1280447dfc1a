//! Resume: an app coming back to 100 rooms, each with 10 messages it missed while away.
//! Times the one-frame `resume` against the v1 start-up (`rooms`, then one `sync` per room,
//! pipelined) on the same missed messages, in the same run.

use std::collections::BTreeMap;
use std::time::Instant;

use async_tungstenite::tungstenite::Message;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::fanout::{connect, Socket};
use crate::target::Target;

pub const ROOMS: usize = 100;
/// Messages each room gets while the app is away, unless `LOAD_RESUME` names another count.
pub const MISSED: usize = 10;

pub struct Outcome {
    pub missed: usize,
    pub resume_us: Histogram<u64>,
    pub v1_us: Histogram<u64>,
}

/// `reps` times: the driver sends `missed` messages to each of [`ROOMS`] rooms while the
/// app is away; the app then connects twice and catches up once each way.
pub fn run(target: &Target, reps: usize, missed: usize) -> Outcome {
    let agent = ureq::Agent::new_with_defaults();
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("resume-r{r}")).collect();
    let members = ["driver".to_owned(), "app".to_owned()];
    for room in &rooms {
        target.create_room(&agent, room, &members);
    }
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut resume_us, mut v1_us) = (histogram(), histogram());
    smol::block_on(async {
        let mut driver = connect(&target.ws_url("driver", &rooms[0]), target.addr).await;
        let mut cache: BTreeMap<String, u64> = rooms.iter().map(|r| (r.clone(), 0)).collect();
        let mut epoch = String::new();
        for _ in 0..reps {
            send_missed(&mut driver, &rooms, missed).await;
            let mut app = connect(&target.ws_url("app", &rooms[0]), target.addr).await;
            let started = Instant::now();
            let reply = resume(&mut app, &cache, &epoch).await;
            resume_us.saturating_record(started.elapsed().as_micros() as u64);
            let mut app_v1 = connect(&target.ws_url("app", &rooms[0]), target.addr).await;
            let started = Instant::now();
            let caught_up = v1_flow(&mut app_v1, &cache).await;
            v1_us.saturating_record(started.elapsed().as_micros() as u64);
            let resumed = update(&mut cache, &mut epoch, &reply);
            assert_eq!(
                resumed, caught_up,
                "both flows bring the same messages ({resumed} and {caught_up})"
            );
        }
    });
    Outcome {
        missed,
        resume_us,
        v1_us,
    }
}

/// Sends `missed` messages to every room, pipelined, and waits for every `sent`.
async fn send_missed(driver: &mut Socket, rooms: &[String], missed: usize) {
    for room in rooms {
        for n in 0..missed {
            let frame = json!({"type": "send", "room_id": room, "text": format!("missed {n}")});
            driver
                .feed(Message::text(frame.to_string()))
                .await
                .expect("send");
        }
    }
    driver.flush().await.expect("flush");
    let mut sent = 0;
    while sent < rooms.len() * missed {
        if next(driver).await["type"] == "sent" {
            sent += 1;
        }
    }
}

async fn next(socket: &mut Socket) -> Value {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).expect("JSON frame")
            }
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Reads until the reply with `id`, skipping pushes.
async fn reply(socket: &mut Socket, id: u64) -> Value {
    loop {
        let frame = next(socket).await;
        if frame["id"] == id {
            return frame;
        }
    }
}

async fn resume(app: &mut Socket, cache: &BTreeMap<String, u64>, epoch: &str) -> Value {
    let rooms: serde_json::Map<String, Value> = cache
        .iter()
        .map(|(room, seq)| (room.clone(), json!({"seq": seq, "epoch": epoch})))
        .collect();
    let frame = json!({"type": "resume", "id": 1, "rooms": rooms});
    app.send(Message::text(frame.to_string()))
        .await
        .expect("send");
    reply(app, 1).await
}

/// The v1 start-up: `rooms`, then a `sync` since the cached seq for every room, pipelined.
/// Returns how many messages it brought.
async fn v1_flow(app: &mut Socket, cache: &BTreeMap<String, u64>) -> usize {
    app.send(Message::text(r#"{"type":"rooms","id":0}"#))
        .await
        .expect("send");
    let rooms = reply(app, 0).await;
    let listed = rooms["rooms"].as_array().expect("rooms").len();
    for (i, (room, seq)) in cache.iter().enumerate() {
        let frame = json!({"type": "sync", "id": i + 1, "room_id": room, "since_seq": seq});
        app.feed(Message::text(frame.to_string()))
            .await
            .expect("send");
    }
    app.flush().await.expect("flush");
    let mut brought = 0;
    for i in 0..listed {
        let page = reply(app, i as u64 + 1).await;
        brought += page["messages"].as_array().map_or(0, Vec::len);
    }
    brought
}

/// Takes the resumed messages into the cache; returns how many there were.
fn update(cache: &mut BTreeMap<String, u64>, epoch: &mut String, reply: &Value) -> usize {
    if let Some(first) = reply["rooms"][0]["epoch"].as_str() {
        *epoch = first.to_owned();
    }
    let mut brought = 0;
    for (room, messages) in reply["messages"].as_object().expect("messages") {
        let messages = messages.as_array().expect("messages array");
        brought += messages.len();
        if let Some(last) = messages.last().and_then(|m| m["seq"].as_u64()) {
            cache.insert(room.clone(), last);
        }
    }
    brought
}
