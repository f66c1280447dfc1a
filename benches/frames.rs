//! Micro-benchmark of the per-message CPU work on the hot path: parsing a `send` frame and
//! encoding the `message` push (encoded once per message, shared by every recipient).
//!
//! `cargo bench --bench frames` prints operations per second for each.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chat_engine::protocol::{
    encode, parse_request, Message, MessageKind, RoomId, ServerFrame, UserId,
};

/// Runs `op` repeatedly for about `budget` and returns operations per second.
fn rate(budget: Duration, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1_000 {
            op();
        }
        count += 1_000;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let budget = Duration::from_secs(2);
    let send = r#"{"type":"send","id":17,"room_id":"route-42","text":"On my way, 4 minutes","data":{"eta_min":4},"client_msg_id":"c-91"}"#;
    let parse = rate(budget, || {
        black_box(parse_request(black_box(send)).is_ok());
    });
    let data = serde_json::value::RawValue::from_string(r#"{"eta_min":4}"#.into()).unwrap();
    let mut message = Message::new(
        RoomId::parse("route-42").unwrap(),
        17,
        1_764_000_000_123,
        Some(UserId::parse("driver-7").unwrap()),
        MessageKind::Text,
        "On my way, 4 minutes".into(),
    );
    message.data = Some(data);
    message.client_msg_id = Some("c-91".into());
    let push = rate(budget, || {
        black_box(encode(&ServerFrame::Message {
            message: black_box(&message),
        }));
    });
    println!("| benchmark | ops/s |");
    println!("| --- | --- |");
    println!("| parse `send` frame | {parse:.0} |");
    println!("| encode `message` push | {push:.0} |");
}
