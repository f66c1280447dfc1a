//! History: `sync` requests per second and their latency, served from a room's cache (no
//! cursor: the last 50 messages) and from disk (`since_seq` far behind, after a restart).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;

use crate::fanout::connect;
use crate::target::Target;

const ROOM: &str = "history";
const MESSAGES: u64 = 5_000;
/// Concurrent clients, each with one `sync` in flight.
pub const CLIENTS: usize = 16;

pub struct Outcome {
    pub per_s: f64,
    pub latency_us: Histogram<u64>,
}

/// Fills the room with [`MESSAGES`] messages (pipelined sends from one connection).
pub fn fill(target: &Target) {
    let agent = ureq::Agent::new_with_defaults();
    let members: Vec<String> = (0..CLIENTS).map(|c| format!("reader{c}")).collect();
    target.create_room(&agent, ROOM, &members);
    smol::block_on(async {
        let mut socket = connect(&target.ws_url(&members[0], ROOM), target.addr).await;
        for n in 0..MESSAGES {
            let text = format!("history message {n} with a little text in it");
            let frame = format!(r#"{{"type":"send","room_id":"{ROOM}","text":"{text}"}}"#);
            socket.feed(Message::text(frame)).await.expect("send");
        }
        socket.flush().await.expect("flush");
        let mut acked = 0;
        while acked < MESSAGES {
            let Some(Ok(Message::Text(frame))) = socket.next().await else {
                panic!("connection ended while filling the room");
            };
            if frame.as_str().contains(r#""type":"sent""#) {
                acked += 1;
            }
        }
    });
}

/// Runs `sync` requests built by `query(n)` from [`CLIENTS`] clients for `measure`.
pub fn run(target: &Target, measure: Duration, query: fn(u64) -> String) -> Outcome {
    let executor = smol::LocalExecutor::new();
    smol::block_on(executor.run(async {
        let latency = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        ));
        let done = Rc::new(RefCell::new(0u64));
        let deadline = Instant::now() + measure;
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let mut socket =
                connect(&target.ws_url(&format!("reader{c}"), ROOM), target.addr).await;
            let (latency, done) = (latency.clone(), done.clone());
            tasks.push(executor.spawn(async move {
                let mut n = c as u64;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let frame = format!(r#"{{"type":"sync","room_id":"{ROOM}"{}}}"#, query(n));
                    socket.send(Message::text(frame)).await.expect("sync");
                    loop {
                        let Some(Ok(Message::Text(reply))) = socket.next().await else {
                            panic!("connection ended during sync");
                        };
                        if reply.as_str().contains(r#""type":"messages""#) {
                            break;
                        }
                        assert!(!reply.as_str().contains(r#""type":"error""#), "{reply}");
                    }
                    let micros = started.elapsed().as_micros() as u64;
                    let _ = latency.borrow_mut().record(micros.max(1));
                    *done.borrow_mut() += 1;
                    n += CLIENTS as u64;
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let latency_us = latency.borrow().clone();
        let per_s = *done.borrow() as f64 / measure.as_secs_f64();
        Outcome { per_s, latency_us }
    }))
}

/// No cursor: the last 50 messages, from the room's cache.
pub fn cached(_: u64) -> String {
    String::new()
}

/// 50 messages after a seq spread over the oldest 4,000, far behind the cache (the last 200).
pub fn from_disk(n: u64) -> String {
    format!(r#","since_seq":{},"limit":50"#, (n * 7_919) % 4_000)
}
