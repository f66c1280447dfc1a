//! The bare baseline: a minimal WebSocket broadcast server (async-tungstenite on smol). A
//! client connects to `/room/<name>`; every text frame it sends is forwarded verbatim to every
//! connection in that room, itself included. No storage, no JSON, no auth: what is left is
//! the cost of WebSocket framing and fan-out, which chat-engine is measured against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_tungstenite::tungstenite::handshake::server::{Request, Response};
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use futures_util::{SinkExt, StreamExt};

use crate::fanout::socket_config;

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, async_channel::Sender<Utf8Bytes>)>>>>;

/// Frames queued per connection, and written per flush, as in chat-engine.
const QUEUE: usize = 1024;
const FRAMES_PER_FLUSH: usize = 64;

/// Serves until killed; prints `listening on ADDR` to stderr once bound.
pub fn serve() {
    smol::block_on(async {
        let listener = smol::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        eprintln!("listening on {}", listener.local_addr().expect("address"));
        let rooms = Rooms::default();
        let mut next_id = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            next_id += 1;
            smol::spawn(connection(stream, rooms.clone(), next_id)).detach();
        }
    });
}

async fn connection(stream: smol::net::TcpStream, rooms: Rooms, id: u64) {
    let mut room = String::new();
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        room = request.uri().path().trim_start_matches("/room/").to_owned();
        Ok(response)
    };
    let Ok(socket) = async_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(socket_config(1024)),
    )
    .await
    else {
        return;
    };
    let (tx, rx) = async_channel::bounded::<Utf8Bytes>(QUEUE);
    rooms
        .lock()
        .unwrap()
        .entry(room.clone())
        .or_default()
        .push((id, tx));
    let (mut sink, mut stream) = socket.split();
    let writer = async move {
        while let Ok(frame) = rx.recv().await {
            if sink.feed(Message::Text(frame)).await.is_err() {
                return;
            }
            for _ in 1..FRAMES_PER_FLUSH {
                let Ok(frame) = rx.try_recv() else { break };
                if sink.feed(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(frame) = message {
                let rooms = rooms.lock().unwrap();
                for (_, member) in rooms.get(&room).into_iter().flatten() {
                    let _ = member.try_send(frame.clone());
                }
            }
        }
    };
    smol::future::or(reader, writer).await;
    if let Some(members) = rooms.lock().unwrap().get_mut(&room) {
        members.retain(|(member, _)| *member != id);
    }
}
