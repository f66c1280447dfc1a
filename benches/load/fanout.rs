//! Fan-out: rooms of members, each member a real WebSocket connection, one sender per room.
//! Every message carries its number in the room and its send time (and, for a shape that
//! says so, a `client_msg_id`); every receiver checks
//! order, loss and duplicates and records the send-to-delivery latency.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use smol::net::TcpStream;

use crate::target::{Kind, Target};

#[derive(Clone, Copy)]
pub struct Shape {
    pub rooms: usize,
    pub members: usize,
    /// Every chat-engine send carries a `client_msg_id`, as a real app's do, so each is
    /// checked for a repeat.
    pub client_msg_ids: bool,
}

#[derive(Clone, Copy)]
pub enum Load {
    /// Messages per second offered across all rooms.
    Rate(u64),
    /// As fast as it goes, with at most this many messages of a room in flight (sent but
    /// not yet back at their sender).
    Saturation { window: usize },
}

pub struct Outcome {
    pub sent_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency_us: Histogram<u64>,
    /// Deliveries to members on another node than the sender's (cluster targets only).
    pub cross_node_latency_us: Histogram<u64>,
    pub lost: u64,
    pub duplicated: u64,
    /// CPU used during the measurement, in cores (1.0 = one core busy all the time): the
    /// server's (every node's, in cluster mode), and Redis's.
    pub server_cpu: f64,
    pub redis_cpu: f64,
    /// `error` replies, and the first one.
    pub errors: u64,
    pub first_error: Option<String>,
}

/// What every receiver adds to.
struct Tally {
    measuring: Cell<bool>,
    deliveries: Cell<u64>,
    latency_us: RefCell<Histogram<u64>>,
    cross_node_latency_us: RefCell<Histogram<u64>>,
    duplicated: Cell<u64>,
    gaps: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

pub type Socket = WebSocketStream<TcpStream>;

/// tungstenite zero-fills its whole read buffer before every read: at the default 128 KiB
/// that memset was most of the load generator's CPU at moderate rates (a read then carries
/// one small frame), and queued deliveries for 40 ms. The baseline server takes chat-engine's
/// sizes (1 KiB reads, 64 KiB of writes per flush); the load generator reads 8 KiB at a time.
pub fn socket_config(read_buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .write_buffer_size(64 * 1024)
}

pub async fn connect(url: &str, addr: std::net::SocketAddr) -> Socket {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (socket, _) =
        async_tungstenite::client_async_with_config(url, stream, Some(socket_config(8 * 1024)))
            .await
            .expect("WebSocket handshake");
    socket
}

/// The message number and send time in a frame carrying `"text":"<n>|<micros>"`.
fn stamp_of(frame: &str) -> Option<(u64, u64)> {
    let start = frame.find("\"text\":\"")? + 8;
    let rest = &frame[start..];
    let text = &rest[..rest.find('"')?];
    let (number, micros) = text.split_once('|')?;
    Some((number.parse().ok()?, micros.parse().ok()?))
}

fn send_frame(kind: Kind, ids: bool, room: &str, number: u64, micros: u64) -> String {
    match kind {
        Kind::ChatEngine if ids => format!(
            r#"{{"type":"send","room_id":"{room}","text":"{number}|{micros}","client_msg_id":"m{number}"}}"#
        ),
        Kind::ChatEngine => {
            format!(r#"{{"type":"send","room_id":"{room}","text":"{number}|{micros}"}}"#)
        }
        // The baseline forwards frames verbatim; the same shape keeps the bytes comparable.
        Kind::Baseline => {
            format!(r#"{{"type":"message","room_id":"{room}","text":"{number}|{micros}"}}"#)
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn run(target: &Target, shape: Shape, load: Load, measure: Duration) -> Outcome {
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rooms: Vec<(String, Vec<String>)> = (0..shape.rooms)
        .map(|r| {
            let room = format!("f{run}-r{r}");
            let members = (0..shape.members).map(|m| format!("{room}-m{m}")).collect();
            (room, members)
        })
        .collect();
    let agent = ureq::Agent::new_with_defaults();
    for (room, members) in &rooms {
        target.create_room(&agent, room, members);
    }
    let executor = smol::LocalExecutor::new();
    smol::block_on(executor.run(drive(
        &executor,
        target,
        rooms,
        shape.client_msg_ids,
        load,
        measure,
    )))
}

async fn drive(
    executor: &smol::LocalExecutor<'_>,
    target: &Target,
    rooms: Vec<(String, Vec<String>)>,
    ids: bool,
    load: Load,
    measure: Duration,
) -> Outcome {
    let origin = Instant::now();
    let micros = move || origin.elapsed().as_micros() as u64;
    let tally = Rc::new(Tally {
        measuring: Cell::new(false),
        deliveries: Cell::new(0),
        latency_us: RefCell::new(histogram()),
        cross_node_latency_us: RefCell::new(histogram()),
        duplicated: Cell::new(0),
        gaps: Cell::new(0),
        errors: Cell::new(0),
        first_error: RefCell::new(None),
    });
    let stop = Rc::new(Cell::new(false));
    // Senders start once every member is connected, so nobody misses the first messages:
    // `recv` on this channel returns when its sender is dropped.
    let (go_tx, go) = async_channel::bounded::<()>(1);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut sinks = Vec::new();
    let mut room_sent = Vec::new();
    let mut paced = Vec::new();
    for (room, members) in &rooms {
        // Tokens: one per message the sender may still have in flight.
        let window = match load {
            Load::Saturation { window } => window,
            Load::Rate(_) => 1,
        };
        let (token_tx, token_rx) = async_channel::bounded::<()>(window);
        for _ in 0..window {
            let _ = token_tx.try_send(());
        }
        let sent = Rc::new(Cell::new(0u64));
        room_sent.push(sent.clone());
        for (m, member) in members.iter().enumerate() {
            // Members take the nodes in turn; each room's sender is on the first.
            let node = m % target.nodes();
            let url = target.ws_url_on(member, room, node);
            let socket = connect(&url, target.node_addr(node)).await;
            let (sink, mut stream) = socket.split();
            let tally = tally.clone();
            let is_sender = m == 0;
            let tokens = token_tx.clone();
            let expected = Rc::new(Cell::new(0u64));
            let expected_out = expected.clone();
            receivers.push((
                executor.spawn(async move {
                    while let Some(Ok(message)) = stream.next().await {
                        let Message::Text(frame) = message else {
                            continue;
                        };
                        let Some((number, sent_at)) = stamp_of(frame.as_str()) else {
                            continue;
                        };
                        let next = expected.get();
                        if number < next {
                            tally.duplicated.set(tally.duplicated.get() + 1);
                            continue;
                        }
                        tally.gaps.set(tally.gaps.get() + (number - next));
                        expected.set(number + 1);
                        if tally.measuring.get() {
                            tally.deliveries.set(tally.deliveries.get() + 1);
                            let latency = micros().saturating_sub(sent_at).max(1);
                            let _ = tally.latency_us.borrow_mut().record(latency);
                            if node != 0 {
                                let _ = tally.cross_node_latency_us.borrow_mut().record(latency);
                            }
                        }
                        if is_sender {
                            let _ = tokens.try_send(());
                        }
                    }
                }),
                expected_out,
                sent.clone(),
            ));
            if !is_sender {
                sinks.push(sink);
            } else if let Load::Saturation { .. } = load {
                // One task per room, sending whenever a token (a free place in the window)
                // comes back.
                let go = go.clone();
                let (kind, room, stop, sent, tokens) = (
                    target.kind,
                    room.clone(),
                    stop.clone(),
                    sent.clone(),
                    token_rx.clone(),
                );
                senders.push(executor.spawn(async move {
                    let _ = go.recv().await;
                    let mut sink = sink;
                    while !stop.get() && tokens.recv().await.is_ok() {
                        let frame = send_frame(kind, ids, &room, sent.get(), micros());
                        if sink.send(Message::text(frame)).await.is_err() {
                            return;
                        }
                        sent.set(sent.get() + 1);
                    }
                }));
            } else {
                paced.push((sink, room.clone(), sent.clone()));
            }
        }
    }
    if let Load::Rate(per_second) = load {
        // One pacer for every room: a single timer, and sends spread evenly over the rooms
        // (one timer per room made the load generator itself the source of latency).
        let (kind, stop, go) = (target.kind, stop.clone(), go.clone());
        senders.push(executor.spawn(async move {
            let _ = go.recv().await;
            let mut credit = 0.0;
            let mut last = Instant::now();
            let mut next_room = 0;
            while !stop.get() {
                smol::Timer::after(Duration::from_millis(1)).await;
                let now = Instant::now();
                credit += per_second as f64 * now.duration_since(last).as_secs_f64();
                last = now;
                let mut touched = Vec::new();
                while credit >= 1.0 {
                    credit -= 1.0;
                    let (sink, room, sent) = &mut paced[next_room];
                    let frame = send_frame(kind, ids, room, sent.get(), micros());
                    if sink.feed(Message::text(frame)).await.is_err() {
                        return;
                    }
                    sent.set(sent.get() + 1);
                    touched.push(next_room);
                    next_room = (next_room + 1) % paced.len();
                }
                touched.dedup();
                for index in touched {
                    if paced[index].0.flush().await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(go_tx);
    let total_sent = || room_sent.iter().map(|sent| sent.get()).sum::<u64>();
    smol::Timer::after(Duration::from_secs(1)).await;
    tally.measuring.set(true);
    let (sent_before, started, cpu_before) = (total_sent(), Instant::now(), target.cpu_seconds());
    smol::Timer::after(measure).await;
    tally.measuring.set(false);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = target.cpu_seconds();
    let deliveries = tally.deliveries.get();
    let sent_in_window = total_sent() - sent_before;
    stop.set(true);
    // Drain: wait until every receiver has everything its room sent, or 5 s.
    let drained_by = Instant::now() + Duration::from_secs(5);
    while Instant::now() < drained_by
        && receivers
            .iter()
            .any(|(_, expected, sent)| expected.get() < sent.get())
    {
        smol::Timer::after(Duration::from_millis(20)).await;
    }
    let lost = tally.gaps.get()
        + receivers
            .iter()
            .map(|(_, expected, sent)| sent.get().saturating_sub(expected.get()))
            .sum::<u64>();
    drop(senders);
    drop(receivers);
    drop(sinks);
    let latency_us = tally.latency_us.borrow().clone();
    let cross_node_latency_us = tally.cross_node_latency_us.borrow().clone();
    let first_error = tally.first_error.borrow().clone();
    Outcome {
        sent_per_s: sent_in_window as f64 / elapsed,
        deliveries_per_s: deliveries as f64 / elapsed,
        latency_us,
        cross_node_latency_us,
        lost,
        duplicated: tally.duplicated.get(),
        server_cpu: (cpu_after.0 - cpu_before.0) / elapsed,
        redis_cpu: (cpu_after.1 - cpu_before.1) / elapsed,
        errors: tally.errors.get(),
        first_error,
    }
}
