//! Webhooks: durable writes with events on, delivered to a receiver in this process, against
//! the same load with them off; and how long events take to arrive at a moderate rate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::fanout::{self, Load, Outcome, Shape};
use crate::target::Target;

pub struct Results {
    /// What served the load: "one node" or "cluster, 2 nodes".
    pub served_by: &'static str,
    pub without: Outcome,
    pub with: Outcome,
    /// Events the receiver got during the rate run, and their lag (event `ts` to arrival).
    pub delivered: u64,
    pub lag_us: Histogram<u64>,
    pub rate: u64,
}

/// Scenario 5's shape (100 rooms, the sender alone in each: durable writes).
const SHAPE: Shape = Shape {
    rooms: 100,
    members: 1,
    client_msg_ids: false,
};

/// On one node, and (with the `redis` feature and redis-server) on a two-node cluster,
/// where every node writes every event and one sends them.
pub fn run(measure: Duration) -> Vec<Results> {
    let one = |config: &str| Some(Target::chat_engine_with(config));
    let mut results: Vec<Results> = run_on("one node", one, measure).into_iter().collect();
    if cfg!(feature = "redis") {
        let cluster = |config: &str| Target::chat_engine_cluster_with(2, config);
        results.extend(run_on("cluster, 2 nodes", cluster, measure));
    }
    results
}

/// `None` when `target` cannot be started (no redis-server).
fn run_on(
    served_by: &'static str,
    target: impl Fn(&str) -> Option<Target>,
    measure: Duration,
) -> Option<Results> {
    let saturate = Load::Saturation { window: 32 };
    let plain = target("")?;
    let without = fanout::run(&plain, SHAPE, saturate, measure);
    drop(plain);
    let receiver = Receiver::start();
    let config = format!(
        "[webhooks]\nurl = \"http://{}/events\"\nsecret = \"bench\"\nevents = [\"message\"]\n",
        receiver.addr
    );
    let engine = target(&config)?;
    let with = fanout::run(&engine, SHAPE, saturate, measure);
    // Let the outbox drain, then measure the lag at a moderate rate.
    std::thread::sleep(Duration::from_secs(3));
    receiver.reset();
    let rate = 1_000;
    fanout::run(&engine, SHAPE, Load::Rate(rate), measure);
    std::thread::sleep(Duration::from_millis(500));
    let (delivered, lag_us) = receiver.take();
    Some(Results {
        served_by,
        without,
        with,
        delivered,
        lag_us,
        rate,
    })
}

/// An HTTP/1.1 receiver that answers 204 and records each event's lag.
struct Receiver {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<(u64, Histogram<u64>)>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new((0, histogram())));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Receiver { addr, seen }
    }

    fn reset(&self) {
        *self.seen.lock().unwrap() = (0, histogram());
    }

    fn take(&self) -> (u64, Histogram<u64>) {
        std::mem::replace(&mut *self.seen.lock().unwrap(), (0, histogram()))
    }
}

fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_micros() as u64
}

fn serve(stream: TcpStream, seen: &Mutex<(u64, Histogram<u64>)>) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        let mut length = 0;
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let arrived = now_us();
        if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) {
            let mut seen = seen.lock().unwrap();
            for event in body["events"].as_array().into_iter().flatten() {
                seen.0 += 1;
                let ts_us = event["ts"].as_u64().unwrap_or(0) * 1000;
                seen.1
                    .saturating_record(arrived.saturating_sub(ts_us).max(1));
            }
        }
        if writer
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
