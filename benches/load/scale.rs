//! Scale: rooms on demand with a million rooms on disk. The data directory is filled offline
//! through the storage library (creating a million rooms over REST would take hours), then
//! chat-engine starts on it. Measured: the time to the first `/readyz` 200, memory with no
//! room in use and with 1,000 rooms in use, the first `sync` of a room that is not in memory
//! against one that is, `rooms` for a user in 1,000 rooms, memory as ever more distinct
//! rooms are touched (past `rooms.max_in_memory`), and scenario 1's fan-out at saturation on
//! this server beside one with an empty directory.
//!
//! `LOAD_SCALE=1 cargo bench --bench load` (1,000,000 rooms); `LOAD_SCALE=20000` for a
//! quick run with that many rooms.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use hdrhistogram::Histogram;

use chat_engine::config::StorageConfig;
use chat_engine::storage::{
    Batch, MessageRecord, ReadRecord, RoomRecord, Storage, StoredMessageKind, StoredRoomKind,
};

use crate::fanout::{self, connect, Load, Shape};
use crate::target::{Target, API_KEY};

/// Rooms written per `Storage::write`: one WriteBatch of about 11,000 keys.
const CHUNK: usize = 1_000;
/// `frequent` is a member of this many rooms (the first ones), which are also the ones made
/// active; the cold `sync` sample is as many rooms spread over the rest.
const SAMPLE: usize = 1_000;
/// Sends per second per active room.
const ACTIVE_RATE: u64 = 2;
/// `rooms` requests timed.
const ROOMS_REQUESTS: u64 = 200;
/// Distinct rooms touched over REST to see where memory goes beyond the active set: twice
/// the default `rooms.max_in_memory`, so the budget's unloading is reached; RSS is sampled
/// every [`TOUCH_STEP`].
const TOUCH: usize = 20_000;
const TOUCH_STEP: usize = 2_500;
/// Rounds of scenario 1 at saturation on each server, alternating.
const SATURATION_ROUNDS: usize = 5;

type Socket = async_tungstenite::WebSocketStream<smol::net::TcpStream>;

fn room_id(i: usize) -> String {
    format!("scale-{i}")
}

fn driver(i: usize) -> String {
    format!("d{i}")
}

fn rider(i: usize) -> String {
    format!("r{i}")
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Writes `rooms` route rooms into a new data directory at `path`: each with its driver and
/// rider (each sent one message and read both), two messages, its content count and its
/// activity entry; `frequent` in the first [`SAMPLE`] rooms with both messages unread.
/// Returns the time it took.
fn seed(path: &Path, rooms: usize) -> Duration {
    let started = Instant::now();
    let storage = Storage::open(&StorageConfig {
        path: path.to_owned(),
        ..Default::default()
    })
    .expect("open the data directory");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // A day ago, 3 ms per room: room i's activity is older than room i+1's, as if created in
    // that order.
    let base = now_ms - 86_400_000 - 3 * rooms as u64;
    for first in (0..rooms).step_by(CHUNK) {
        let mut batch = Batch::new();
        for i in first..(first + CHUNK).min(rooms) {
            let (id, number, created_ts) = (room_id(i), i as u64 + 1, base + 3 * i as u64);
            let (driver, rider) = (driver(i), rider(i));
            batch.room(
                &id,
                &RoomRecord {
                    number,
                    kind: StoredRoomKind::Route,
                    owner: Some(driver.clone()),
                    created_ts,
                    closed_ts: None,
                },
            );
            // Each has sent one message and read both: nothing unread.
            let read = ReadRecord {
                seq: 2,
                own: 1,
                base: 1,
            };
            batch.member_added(&id, &driver, read, created_ts);
            batch.member_added(&id, &rider, read, created_ts);
            for (seq, sender) in [(1, &driver), (2, &rider)] {
                batch.message(
                    number,
                    seq,
                    &MessageRecord {
                        ts: created_ts + seq,
                        sender: Some(sender.clone()),
                        kind: StoredMessageKind::Text,
                        text: format!("scale message {seq} from {sender}"),
                        ..Default::default()
                    },
                );
            }
            batch.content_count(number, 2);
            batch.activity(created_ts + 2, &id);
            if i < SAMPLE {
                batch.member_added(&id, "frequent", ReadRecord::default(), created_ts);
            }
        }
        storage
            .write(batch.writes(), false)
            .expect("write seeded rooms");
    }
    let mut batch = Batch::new();
    batch.next_room_number(rooms as u64 + 1);
    storage.write(batch.writes(), true).expect("write meta");
    // As a server's shutdown does: flush the memtables, so the first start replays no WAL.
    storage.stop_background_work();
    drop(storage);
    started.elapsed()
}

/// Bytes the files under `dir` take on disk.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read data dir").flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// The server's memory at one moment.
#[derive(Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
    /// The process's threads: smol's blocking pool (room loads, `rooms`) grows under load,
    /// and each thread's allocator heap keeps memory of its own.
    threads: u64,
}

impl Rss {
    fn of(target: &Target) -> Rss {
        Rss {
            total: target.rss_kib(),
            anon: target.status_number("RssAnon"),
            file: target.status_number("RssFile"),
            threads: target.status_number("Threads"),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:.1} MiB (anonymous {:.1}, file {:.1}; {} threads)",
            mib(self.total),
            mib(self.anon),
            mib(self.file),
            self.threads
        )
    }
}

/// A start: time to ready, memory right then and 2 s later (RocksDB may still be compacting
/// what the previous process left).
struct Start {
    ready: Duration,
    at_ready: Rss,
    settled: Rss,
}

fn started(target: &Target) -> Start {
    let ready = target.ready_after();
    let at_ready = Rss::of(target);
    std::thread::sleep(Duration::from_secs(2));
    Start {
        ready,
        at_ready,
        settled: Rss::of(target),
    }
}

/// Sends `frame` and waits for the reply with `id`, skipping pushes. Returns the reply and
/// the time until it arrived (before it is parsed, so a large reply's parsing here does
/// not count).
async fn request(socket: &mut Socket, frame: String, id: u64) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    socket.send(Message::text(frame)).await.expect("request");
    loop {
        let Some(Ok(message)) = socket.next().await else {
            panic!("connection ended during a request");
        };
        let elapsed = started.elapsed();
        let Message::Text(text) = message else {
            continue;
        };
        let reply: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON reply");
        if reply["id"] == id {
            assert_ne!(reply["type"], "error", "{reply}");
            return (reply, elapsed);
        }
    }
}

/// `sync` without a cursor of each room in `rooms` from its rider's connection, one at a
/// time; the latency of each.
async fn sync_each(sockets: &mut [(usize, Socket)], next_id: &mut u64) -> Histogram<u64> {
    let mut latency = histogram();
    for (i, socket) in sockets.iter_mut() {
        *next_id += 1;
        let frame = format!(
            r#"{{"type":"sync","id":{next_id},"room_id":"{}"}}"#,
            room_id(*i)
        );
        let (reply, elapsed) = request(socket, frame, *next_id).await;
        assert_eq!(
            reply["messages"].as_array().map(Vec::len),
            Some(2),
            "{reply}"
        );
        let _ = latency.record((elapsed.as_micros() as u64).max(1));
    }
    latency
}

/// The cold `sync` sample: what it measured, and what the server said about it.
struct Cold {
    cold: Histogram<u64>,
    hot: Histogram<u64>,
    /// Rooms in memory once the sample's riders had connected, before any `sync`.
    in_memory_before: f64,
    loads: f64,
    /// The server's mean room load time (`chat_engine_room_load_seconds`), in ms.
    load_mean_ms: f64,
    connected: Rss,
    loaded: Rss,
}

/// The first `sync` of [`SAMPLE`] rooms never used since start (spread over the whole
/// directory beyond the first [`SAMPLE`], so their keys share no table block), each from its
/// rider's connection, one at a time; then the same rooms again, now in memory.
fn cold_and_hot(target: &Target, rooms: usize) -> Cold {
    let agent = ureq::Agent::new_with_defaults();
    let metric = |series| target.metric(&agent, series);
    let sample: Vec<usize> = (0..SAMPLE)
        .map(|k| SAMPLE + k * (rooms - SAMPLE) / SAMPLE)
        .collect();
    smol::block_on(async {
        let mut sockets = Vec::new();
        for &i in &sample {
            let url = target.ws_url(&rider(i), &room_id(i));
            sockets.push((i, connect(&url, target.addr).await));
        }
        smol::Timer::after(Duration::from_millis(500)).await;
        let connected = Rss::of(target);
        // Connecting must not load the rooms: they stay cold until their `sync`.
        let in_memory_before = metric("chat_engine_rooms_in_memory");
        let loads = metric("chat_engine_room_loads_total");
        let load_count = metric("chat_engine_room_load_seconds_count");
        let load_sum = metric("chat_engine_room_load_seconds_sum");
        let mut next_id = 0;
        let cold = sync_each(&mut sockets, &mut next_id).await;
        let loads = metric("chat_engine_room_loads_total") - loads;
        let load_mean_ms = 1000.0 * (metric("chat_engine_room_load_seconds_sum") - load_sum)
            / (metric("chat_engine_room_load_seconds_count") - load_count).max(1.0);
        let hot = sync_each(&mut sockets, &mut next_id).await;
        let loaded = Rss::of(target);
        Cold {
            cold,
            hot,
            in_memory_before,
            loads,
            load_mean_ms,
            connected,
            loaded,
        }
    })
}

/// One sample of [`touch_many`]: rooms touched so far, rooms in memory, RSS.
struct Touched {
    rooms: usize,
    in_memory: f64,
    rss: Rss,
}

/// `GET /v1/rooms/{id}/messages` (RouteAPI) of up to [`TOUCH`] distinct rooms beyond the
/// first [`SAMPLE`], spread over the directory, one at a time: each loads its room. What
/// memory does as the rooms touched pass the in-memory budget.
fn touch_many(target: &Target, rooms: usize) -> Vec<Touched> {
    let agent = ureq::Agent::new_with_defaults();
    let count = TOUCH.min(rooms - SAMPLE);
    let step = (rooms - SAMPLE) / count;
    let mut samples = Vec::new();
    for k in 0..count {
        // Half a step in, so as not to repeat the cold sample's rooms.
        let i = SAMPLE + k * step + step / 2;
        let mut response = agent
            .get(format!(
                "http://{}/v1/rooms/{}/messages",
                target.addr,
                room_id(i)
            ))
            .header("Authorization", format!("Bearer {API_KEY}"))
            .call()
            .expect("GET messages");
        // Read to the end, so the connection is reused.
        let _ = response.body_mut().read_to_string();
        if (k + 1) % TOUCH_STEP == 0 || k + 1 == count {
            samples.push(Touched {
                rooms: k + 1,
                in_memory: target.metric(&agent, "chat_engine_rooms_in_memory"),
                rss: Rss::of(target),
            });
        }
    }
    samples
}

/// `rooms` (no limit) for `frequent`, [`ROOMS_REQUESTS`] times in a row on one connection.
/// Returns the latencies and the rooms and unread messages of the last reply.
fn rooms_of_frequent(target: &Target) -> (Histogram<u64>, usize, u64) {
    smol::block_on(async {
        let mut socket = connect(&target.ws_url("frequent", ""), target.addr).await;
        let mut latency = histogram();
        let (mut rooms, mut unread) = (0, 0);
        for id in 1..=ROOMS_REQUESTS {
            let frame = format!(r#"{{"type":"rooms","id":{id}}}"#);
            let (reply, elapsed) = request(&mut socket, frame, id).await;
            let _ = latency.record((elapsed.as_micros() as u64).max(1));
            let list = reply["rooms"].as_array().expect("rooms list");
            rooms = list.len();
            unread = list.iter().filter_map(|r| r["unread"].as_u64()).sum();
        }
        (latency, rooms, unread)
    })
}

/// What the 1,000 active rooms showed.
struct Active {
    before: Rss,
    connected: Rss,
    /// The highest RSS sampled while messages flowed, and the last sample.
    peak: Rss,
    rooms_in_memory: f64,
    loads: f64,
    sent: u64,
    delivered: u64,
    latency_us: Histogram<u64>,
}

/// A connection for the driver and the rider of each of the first [`SAMPLE`] rooms; each
/// driver sends [`ACTIVE_RATE`] messages a second for `measure`, its rider receives them.
fn active(target: &Target, measure: Duration) -> Active {
    let agent = ureq::Agent::new_with_defaults();
    let executor = smol::LocalExecutor::new();
    smol::block_on(executor.run(async {
        let before = Rss::of(target);
        let origin = Instant::now();
        let micros = move || origin.elapsed().as_micros() as u64;
        let delivered = Rc::new(Cell::new(0u64));
        let latency = Rc::new(RefCell::new(histogram()));
        let mut sinks = Vec::new();
        // The riders' halves that write: kept open, so each connection stays whole.
        let mut rider_sinks = Vec::new();
        let mut readers = Vec::new();
        for i in 0..SAMPLE {
            let room = room_id(i);
            let (sink, mut stream) = connect(&target.ws_url(&driver(i), &room), target.addr)
                .await
                .split();
            sinks.push((sink, room.clone()));
            // The driver's replies and its own pushes: read so they never back up.
            readers.push(executor.spawn(async move { while stream.next().await.is_some() {} }));
            let (rider_sink, mut stream) = connect(&target.ws_url(&rider(i), &room), target.addr)
                .await
                .split();
            rider_sinks.push(rider_sink);
            let (delivered, latency) = (delivered.clone(), latency.clone());
            readers.push(executor.spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(frame) = message else {
                        continue;
                    };
                    let Some(sent_at) = sent_at(frame.as_str()) else {
                        continue;
                    };
                    delivered.set(delivered.get() + 1);
                    let _ = latency
                        .borrow_mut()
                        .record(micros().saturating_sub(sent_at).max(1));
                }
            }));
        }
        smol::Timer::after(Duration::from_secs(1)).await;
        let connected = Rss::of(target);
        let loads_before = target.metric(&agent, "chat_engine_room_loads_total");
        // One pacer for every room, spreading the sends evenly (as fanout.rs does).
        let rate = ACTIVE_RATE * SAMPLE as u64;
        let sent = Rc::new(Cell::new(0u64));
        let pacer = {
            let sent = sent.clone();
            executor.spawn(async move {
                let (started, mut last, mut credit, mut next) =
                    (Instant::now(), Instant::now(), 0.0, 0);
                while started.elapsed() < measure {
                    smol::Timer::after(Duration::from_millis(5)).await;
                    let now = Instant::now();
                    credit += rate as f64 * now.duration_since(last).as_secs_f64();
                    last = now;
                    while credit >= 1.0 {
                        credit -= 1.0;
                        let (sink, room) = &mut sinks[next];
                        let frame = format!(
                            r#"{{"type":"send","room_id":"{room}","text":"{}|{}"}}"#,
                            sent.get(),
                            micros()
                        );
                        sink.send(Message::text(frame)).await.expect("send");
                        sent.set(sent.get() + 1);
                        next = (next + 1) % sinks.len();
                    }
                }
                sinks
            })
        };
        let mut peak = connected;
        let sampling_until = Instant::now() + measure;
        while Instant::now() < sampling_until {
            smol::Timer::after(Duration::from_millis(250)).await;
            let now = Rss::of(target);
            if now.total > peak.total {
                peak = now;
            }
        }
        let rooms_in_memory = target.metric(&agent, "chat_engine_rooms_in_memory");
        let loads = target.metric(&agent, "chat_engine_room_loads_total") - loads_before;
        let sinks = pacer.await;
        let drained_by = Instant::now() + Duration::from_secs(5);
        while delivered.get() < sent.get() && Instant::now() < drained_by {
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        drop(sinks);
        drop(rider_sinks);
        drop(readers);
        let latency_us = latency.borrow().clone();
        Active {
            before,
            connected,
            peak,
            rooms_in_memory,
            loads,
            sent: sent.get(),
            delivered: delivered.get(),
            latency_us,
        }
    }))
}

/// The send time in a pushed message whose text is `"<n>|<micros>"`.
fn sent_at(frame: &str) -> Option<u64> {
    if !frame.starts_with(r#"{"type":"message""#) {
        return None;
    }
    let start = frame.find("\"text\":\"")? + 8;
    let rest = &frame[start..];
    let (_, micros) = rest[..rest.find('"')?].split_once('|')?;
    micros.parse().ok()
}

pub fn run(rooms: usize, measure: Duration) {
    assert!(
        rooms >= 2 * SAMPLE,
        "LOAD_SCALE needs at least {} rooms",
        2 * SAMPLE
    );
    println!("scale: seeding {rooms} rooms offline");
    let mut seeded = None;
    let mut engine = Target::chat_engine_seeded(|data| seeded = Some(seed(data, rooms)));
    let seeded = seeded.expect("seeded");
    let disk = disk_bytes(&engine.data_dir());
    println!(
        "seeded in {:.1} s, {:.0} MiB on disk",
        seeded.as_secs_f64(),
        disk as f64 / (1 << 20) as f64
    );
    // The first start replays the WAL the seeding left (its last memtables); the restart
    // after it is the one a server that ran on this directory would see.
    let first = started(&engine);
    engine.restart();
    let restart = started(&engine);
    let agent = ureq::Agent::new_with_defaults();
    let in_memory_at_start = engine.metric(&agent, "chat_engine_rooms_in_memory");
    // Active first, on the fresh restart: what it adds is then the 1,000 rooms and their
    // connections alone, on no memory freed by an earlier phase.
    let active = active(&engine, measure);
    let cold = cold_and_hot(&engine, rooms);
    let (rooms_in_memory_list, _, _) = rooms_of_frequent(&engine);
    let touched = touch_many(&engine, rooms);
    // `frequent`'s rooms are the active ones, in memory until unload_idle_s: a restart makes
    // `rooms` read every one of them from disk.
    engine.restart();
    let after_activity = started(&engine);
    let (rooms_from_disk, listed, unread) = rooms_of_frequent(&engine);
    assert_eq!(listed, SAMPLE, "frequent's rooms");
    // Two seeded messages in each, and every message the active phase sent.
    assert_eq!(
        unread,
        2 * SAMPLE as u64 + active.sent,
        "frequent's unread messages"
    );

    // Scenario 1 at saturation, on this server and on one with an empty directory in turn:
    // runs vary by about ±25%, so alternating is what makes them comparable.
    let empty = Target::chat_engine();
    let shape = Shape {
        rooms: 100,
        members: 10,
        client_msg_ids: false,
    };
    let saturate = Load::Saturation { window: 32 };
    let (mut on_empty, mut on_scale) = (Vec::new(), Vec::new());
    for _ in 0..SATURATION_ROUNDS {
        on_empty.push(fanout::run(&empty, shape, saturate, measure).deliveries_per_s);
        on_scale.push(fanout::run(&engine, shape, saturate, measure).deliveries_per_s);
    }
    drop(empty);
    let median = |runs: &mut Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        let n = runs.len();
        (runs[(n - 1) / 2] + runs[n / 2]) / 2.0
    };
    let list = |runs: &[f64]| {
        runs.iter()
            .map(|r| format!("{:.0}k", r / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (empty_runs, scale_runs) = (list(&on_empty), list(&on_scale));
    let ratio = median(&mut on_scale) / median(&mut on_empty);

    let connections = 2 * SAMPLE as u64;
    let per_connection = active.connected.total.saturating_sub(active.before.total);
    let aside = active.peak.total.saturating_sub(per_connection);
    let met = |ok: bool| if ok { "met" } else { "not met" };
    println!();
    println!(
        "rooms in memory: {in_memory_at_start} after the restart, {:.0} while active, {:.0} (the \
         active ones, not idle for unload_idle_s yet) once the cold sample's riders connected; \
         the cold syncs loaded {:.0} rooms (server-side load {:.3} ms mean)",
        active.rooms_in_memory, cold.in_memory_before, cold.loads, cold.load_mean_ms
    );
    for (name, start) in [
        ("first start", &first),
        ("restart", &restart),
        ("restart after the activity", &after_activity),
    ] {
        println!(
            "{name}: ready after {:.0} ms; RSS {} at ready, {} 2 s later",
            start.ready.as_secs_f64() * 1000.0,
            start.at_ready.describe(),
            start.settled.describe()
        );
    }
    println!(
        "active: RSS {} before connecting, {} with {connections} idle connections, peak {} \
         while sending",
        active.before.describe(),
        active.connected.describe(),
        active.peak.describe()
    );
    println!(
        "active: {} sent, {} delivered to riders, delivery p50 {:.1} ms p99 {:.1} ms, {:.0} \
         room loads",
        active.sent,
        active.delivered,
        ms(&active.latency_us, 0.5),
        ms(&active.latency_us, 0.99),
        active.loads
    );
    println!(
        "cold sample: RSS {} with its {SAMPLE} riders connected, {} once their rooms loaded",
        cold.connected.describe(),
        cold.loaded.describe()
    );
    println!(
        "touching distinct rooms over REST (rooms.max_in_memory 10000): {}",
        touched
            .iter()
            .map(|t| format!(
                "{} rooms: {:.0} in memory, RSS {:.1} MiB (anonymous {:.1}; {} threads)",
                t.rooms,
                t.in_memory,
                mib(t.rss.total),
                mib(t.rss.anon),
                t.rss.threads
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!();
    println!("| {rooms} rooms | measured | target | status |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| seeding (offline, storage library) | {:.1} s, {:.0} MiB on disk | - | - |",
        seeded.as_secs_f64(),
        disk as f64 / (1 << 20) as f64
    );
    for (name, start) in [
        ("first start on the seeded directory", &first),
        ("restart", &restart),
        ("restart after the activity", &after_activity),
    ] {
        println!(
            "| {name}: spawn to `/readyz` 200 | {:.0} ms | ≤ 1 s | {} |",
            start.ready.as_secs_f64() * 1000.0,
            met(start.ready <= Duration::from_secs(1))
        );
    }
    println!(
        "| RSS after the restart, no room in memory | {:.1} MiB | - | - |",
        mib(restart.settled.total)
    );
    println!(
        "| RSS, {SAMPLE} rooms active, {connections} connections | {:.1} MiB | - | - |",
        mib(active.peak.total)
    );
    println!(
        "| RSS, {SAMPLE} rooms active, connections aside | {:.1} MiB (minus {:.1} KiB per \
         connection, measured as they opened) | ≤ 100 MB (95.4 MiB) | {} |",
        mib(aside),
        per_connection as f64 / connections as f64,
        met(aside * 1024 <= 100_000_000)
    );
    if let Some(last) = touched.last() {
        println!(
            "| RSS after {} more distinct rooms touched ({:.0} in memory) | {:.1} MiB | - | - |",
            last.rooms,
            last.in_memory,
            mib(last.rss.total)
        );
    }
    println!(
        "| rooms in memory while active | {:.0} | - | - |",
        active.rooms_in_memory
    );
    println!(
        "| first `sync` of a cold room, p50 / p99 | {:.2} / {:.2} ms | p99 ≤ 5 ms | {} |",
        ms(&cold.cold, 0.5),
        ms(&cold.cold, 0.99),
        met(ms(&cold.cold, 0.99) <= 5.0)
    );
    println!(
        "| `sync` of the same rooms hot, p50 / p99 | {:.2} / {:.2} ms | - | - |",
        ms(&cold.hot, 0.5),
        ms(&cold.hot, 0.99)
    );
    println!(
        "| `rooms` for a user in {SAMPLE} rooms, none in memory, p50 / p99 | {:.2} / {:.2} ms \
         | - | - |",
        ms(&rooms_from_disk, 0.5),
        ms(&rooms_from_disk, 0.99)
    );
    println!(
        "| `rooms` for the same user, its rooms in memory, p50 / p99 | {:.2} / {:.2} ms | - \
         | - |",
        ms(&rooms_in_memory_list, 0.5),
        ms(&rooms_in_memory_list, 0.99)
    );
    println!(
        "| scenario 1 saturation, deliveries/s: empty directory / {rooms} rooms, alternating \
         | {empty_runs} / {scale_runs} (ratio of medians {ratio:.2}) | ≥ 0.90x | {} |",
        met(ratio >= 0.90)
    );
}
