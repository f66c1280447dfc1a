//! One WebSocket connection after the upgrade: the reader turns frames into engine calls and
//! queues their replies; the writer drains the connection's queue to the socket, batching
//! frames into one flush, pings the client, and writes the close frame when the connection
//! must end, whether the engine asked or the client went quiet for `limits.idle_timeout_ms`.

mod rate;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{self, Message as WsMessage};
use async_tungstenite::{WebSocketReceiver, WebSocketSender, WebSocketStream};
use futures_channel::mpsc::UnboundedReceiver;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use smol::io::{AsyncRead, AsyncWrite};

use crate::engine::{
    close_code, Accepted, Connection, ConnectionQueues, Engine, Outbound, Priority,
};
use crate::error::Error;
use crate::protocol::{
    encode, is_resume, now_ms, parse_request, Frame, Request, RequestBody, RequestId, RoomId,
    ServerFrame,
};
use rate::TokenBucket;

/// Bytes of frames collected before they are written (a flush writes them sooner).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Frames written before one flush: enough to batch a burst, few enough to keep latency low.
const MAX_FRAMES_PER_FLUSH: usize = 64;
/// Replies one connection may have pending (sends waiting for their commit) before the
/// reader stops reading: enough to fill a group commit, few enough to bound the memory.
const MAX_REPLIES_IN_FLIGHT: usize = 256;
/// How long the server waits, after its close frame, for the client's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs a connection until either side ends it, then unregisters it.
pub async fn serve<S>(
    engine: Engine,
    connection: Arc<Connection>,
    queues: ConnectionQueues,
    socket: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &engine.config().limits;
    // Frames are read up to the size of the largest `resume`; any other frame over
    // `max_frame_bytes` is refused once read (`read_loop`).
    let config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_resume_frame_bytes()))
        .max_frame_size(Some(limits.max_resume_frame_bytes()))
        // Client frames are small; a larger frame is read in several chunks.
        .read_buffer_size(1024)
        // Frames fed before a flush collect here and leave in one write: with 0 every frame
        // was its own send(2), and those syscalls were most of the server's CPU time.
        .write_buffer_size(WRITE_BUFFER_BYTES);
    let socket = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
    let (sink, stream) = socket.split();
    let shared = Shared {
        engine: &engine,
        connection: &connection,
        closing: AtomicBool::new(false),
        heard: Heard::new(),
    };
    let reader = read_loop(&shared, stream);
    let writer = write_loop(&shared, sink, queues);
    smol::future::or(reader, writer).await;
    engine.disconnect(&connection);
}

/// What the reader and the writer of one connection share.
struct Shared<'a> {
    engine: &'a Engine,
    connection: &'a Connection,
    /// Set once the close frame is out: the reader then only drains until the client's close
    /// reply, because dropping a socket with unread input makes the kernel reset it, and a
    /// reset can destroy the close frame before the client reads it.
    closing: AtomicBool,
    /// When the client last sent anything, pongs included.
    heard: Heard,
}

/// The time of the last frame from the client, in milliseconds since the connection opened.
struct Heard {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Heard {
    fn new() -> Heard {
        Heard {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn silent_for_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

/// An `error` frame, counted under its code.
fn error_frame(engine: &Engine, id: Option<&RequestId>, error: &Error) -> Frame {
    engine.metrics().count_error(error.code());
    encode(&ServerFrame::error(id, error))
}

async fn read_loop<S>(shared: &Shared<'_>, mut stream: WebSocketReceiver<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Shared {
        engine, connection, ..
    } = *shared;
    let limits = &engine.config().limits;
    let mut bad_in_a_row = 0;
    // Set once too many bad frames came in a row; `true` once the close is queued.
    let mut closed_for_bad_frames = None;
    let mut sends = TokenBucket::new(limits.send_rate, 2 * limits.send_rate);
    let mut replies = FuturesOrdered::<Reply>::new();
    loop {
        enum Next {
            Frame(Option<Result<WsMessage, tungstenite::Error>>),
            Reply(Option<Option<Frame>>),
        }
        if closed_for_bad_frames == Some(false) && replies.is_empty() {
            // After the reply to the last bad frame: the client gets every error.
            connection.close_after_queued(close_code::POLICY_VIOLATION);
            closed_for_bad_frames = Some(true);
        }
        // Read on while replies complete, up to MAX_REPLIES_IN_FLIGHT waiting.
        let next = if replies.is_empty() {
            Next::Frame(stream.next().await)
        } else if replies.len() >= MAX_REPLIES_IN_FLIGHT {
            Next::Reply(replies.next().await)
        } else {
            smol::future::or(async { Next::Reply(replies.next().await) }, async {
                Next::Frame(stream.next().await)
            })
            .await
        };
        let incoming = match next {
            Next::Reply(Some(Some(frame))) => {
                connection.deliver(&frame, Priority::Keep);
                continue;
            }
            Next::Reply(_) => continue,
            Next::Frame(None) => return,
            Next::Frame(Some(incoming)) => incoming,
        };
        shared.heard.touch();
        engine.metrics().frames_in.inc();
        // Once a close is under way, frames are only drained, never acted on.
        let closing = closed_for_bad_frames.is_some() || shared.closing.load(Ordering::Acquire);
        if closing && !matches!(incoming, Ok(WsMessage::Close(_)) | Err(_)) {
            continue;
        }
        let reply = match incoming {
            Ok(WsMessage::Text(text))
                if text.len() > limits.max_frame_bytes && !is_resume(text.as_str()) =>
            {
                let why = format!(
                    "a frame of {} bytes, over limits.max_frame_bytes",
                    text.len()
                );
                return fail(shared, close_code::TOO_BIG, "too_large", why).await;
            }
            Ok(WsMessage::Text(text)) => match parse_request(text.as_str())
                .and_then(|request| request.validated(limits.max_message_bytes))
            {
                Ok(request) => {
                    bad_in_a_row = 0;
                    Box::pin(handle(engine, connection, request, &mut sends)).await
                }
                Err((id, error)) => {
                    // Too large is a message to shorten, not a frame that makes no sense.
                    if matches!(error, Error::BadRequest(_)) {
                        bad_in_a_row += 1;
                    }
                    ready(Some(error_frame(engine, id.as_ref(), &error)))
                }
            },
            Ok(WsMessage::Binary(_)) => {
                bad_in_a_row += 1;
                let error =
                    Error::BadRequest("binary frames are not supported; send JSON text".into());
                ready(Some(error_frame(engine, None, &error)))
            }
            Ok(WsMessage::Close(_)) => return,
            // Pings are answered by tungstenite itself; pongs only prove the client is alive.
            Ok(_) => continue,
            // A frame too large, or text that is not UTF-8: the connection fails with its
            // close code, and reads stop.
            Err(e @ tungstenite::Error::Capacity(_)) => {
                return fail(shared, close_code::TOO_BIG, "too_large", e.to_string()).await;
            }
            Err(e @ tungstenite::Error::Utf8(_)) => {
                return fail(
                    shared,
                    close_code::INVALID_PAYLOAD,
                    "bad_request",
                    e.to_string(),
                )
                .await;
            }
            Err(_) => return,
        };
        replies.push_back(reply);
        if bad_in_a_row >= limits.max_bad_frames && closed_for_bad_frames.is_none() {
            log::info!(
                "closing connection {} of {}: {bad_in_a_row} bad frames in a row",
                connection.id,
                connection.user
            );
            closed_for_bad_frames = Some(false);
        }
    }
}

/// Fails the connection with its close code, counting the error, and stops reading.
async fn fail(shared: &Shared<'_>, code: u16, counted: &str, why: String) {
    let connection = shared.connection;
    log::info!(
        "closing connection {} of {}: {why}",
        connection.id,
        connection.user
    );
    shared.engine.metrics().count_error(counted);
    connection.close(code);
    std::future::pending().await
}

/// A reply on its way, in request order: ready at once, or once a send is durable.
type Reply<'a> = Pin<Box<dyn Future<Output = Option<Frame>> + Send + 'a>>;

fn ready<'a>(frame: Option<Frame>) -> Reply<'a> {
    Box::pin(std::future::ready(frame))
}

/// Runs one request. A send returns as soon as its seq is assigned and its write queued; its
/// reply follows when the write is durable, so a connection can have many sends in flight.
async fn handle<'a>(
    engine: &'a Engine,
    connection: &'a Connection,
    request: Request,
    sends: &mut TokenBucket,
) -> Reply<'a> {
    let Request { id, body } = request;
    let user = &connection.user;
    let result = match body {
        RequestBody::Send { room_id, message } => {
            if !sends.try_take() {
                return ready(Some(rate_limited(engine, id.as_ref())));
            }
            let accepted = engine.accept_send(&room_id, Some(user), message).await;
            return answer_post(engine, id, room_id, accepted);
        }
        RequestBody::Change { room_id, change } => {
            // Changes count as sends.
            if !sends.try_take() {
                return ready(Some(rate_limited(engine, id.as_ref())));
            }
            let accepted = engine.accept_change(&room_id, Some(user), change).await;
            return answer_post(engine, id, room_id, accepted);
        }
        RequestBody::Ping => Ok(encode(&ServerFrame::Pong { id: id.as_ref() })),
        RequestBody::Rooms(page) => engine.rooms_of(user, &page).await.map(|list| {
            encode(&ServerFrame::Rooms {
                id: id.as_ref(),
                rooms: &list.rooms,
                has_more: page.limit.map(|_| list.has_more),
            })
        }),
        RequestBody::Sync { room_id, query } => engine
            .history(&room_id, &query, Some(user))
            .await
            .map(|page| {
                encode(&ServerFrame::Messages {
                    id: id.as_ref(),
                    room_id: &room_id,
                    messages: &page.messages,
                    has_more: page.has_more,
                    epoch: &engine.epoch(),
                })
            }),
        RequestBody::Direct { user_id } => engine.open_direct(user, &user_id).await.map(|room| {
            encode(&ServerFrame::Room {
                id: id.as_ref(),
                room: &room,
            })
        }),
        RequestBody::Read { room_id, seq } => engine
            .mark_read(user, &room_id, seq)
            .await
            .map(|()| encode(&ServerFrame::Ok { id: id.as_ref() })),
        RequestBody::Resume(resume) => engine.resume(user, &resume).await.map(|resumed| {
            encode(&ServerFrame::Resumed {
                id: id.as_ref(),
                rooms: &resumed.rooms,
                messages: &resumed.messages,
                has_more: &resumed.has_more,
                reset: &resumed.reset,
                left: &resumed.left,
            })
        }),
        RequestBody::Auth { token } => match engine.authenticate(&token).await {
            Ok(token) if token.user != *user => Err(Error::Forbidden(format!(
                "the token is for {}, and this connection is {user}'s",
                token.user
            ))),
            Ok(token) => {
                connection.refresh(&token);
                Ok(encode(&ServerFrame::Ok { id: id.as_ref() }))
            }
            Err(error) => Err(error),
        },
        RequestBody::Received { room_id, seq } => {
            match engine.received(user, &room_id, seq).await {
                Ok(()) => return ready(None),
                Err(error) => Err(error),
            }
        }
        RequestBody::Typing { room_id } => match engine.typing(user, &room_id).await {
            Ok(()) => return ready(None),
            Err(error) => Err(error),
        },
    };
    ready(Some(result.unwrap_or_else(|error| {
        error_frame(engine, id.as_ref(), &error)
    })))
}

fn rate_limited(engine: &Engine, id: Option<&RequestId>) -> Frame {
    let error = Error::RateLimited(format!(
        "more than {} sends per second",
        engine.config().limits.send_rate
    ));
    error_frame(engine, id, &error)
}

/// The reply to a send or a change, once it is durable: `sent`, or `ok` for a change that
/// changed nothing.
fn answer_post<'a>(
    engine: &'a Engine,
    id: Option<RequestId>,
    room_id: RoomId,
    accepted: Result<Accepted, Error>,
) -> Reply<'a> {
    match accepted {
        Ok(accepted) => Box::pin(async move {
            let id = id.as_ref();
            Some(match accepted.durable().await {
                Ok(Some(sent)) => encode(&ServerFrame::Sent {
                    id,
                    room_id: &room_id,
                    seq: sent.stamp.seq,
                    ts: sent.stamp.ts,
                }),
                Ok(None) => encode(&ServerFrame::Ok { id }),
                Err(error) => error_frame(engine, id, &error),
            })
        }),
        Err(error) => ready(Some(error_frame(engine, id.as_ref(), &error))),
    }
}

async fn write_loop<S>(
    shared: &Shared<'_>,
    mut sink: WebSocketSender<S>,
    mut queues: ConnectionQueues,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    enum Next {
        Frame(Frame),
        Closing,
        CloseAfterQueued(u16),
        Tick,
        Expiry,
        Gone,
    }
    let limits = &shared.engine.config().limits;
    let metrics = shared.engine.metrics();
    let mut ticks = smol::Timer::interval(Duration::from_millis(limits.ping_interval_ms));
    let mut expiry = TokenExpiry::new(shared.engine.auth().leeway_s());
    let mut armed_exp = shared.connection.token_exp();
    let mut expiry_timer = expiry.timer(armed_exp);
    // A write may wait for the client as long as the client may stay silent.
    let stall_limit = Duration::from_millis(limits.idle_timeout_ms);
    let code = loop {
        // A close asked for goes first, so a 1013 is not stuck behind the full queue it is for.
        if let Some(code) = shared.connection.close_requested() {
            break code;
        }
        // An `auth` frame put another token in force (its `ok` wakes this loop): the next
        // warning and close follow the new token's `exp`, sooner or later than the old one's.
        let exp = shared.connection.token_exp();
        if exp != armed_exp {
            armed_exp = exp;
            expiry_timer = expiry.timer(exp);
        }
        let next = smol::future::or(
            async {
                match queues.queue.next().await {
                    Some(Outbound::Frame(frame)) => {
                        shared.connection.dequeued(&frame);
                        Next::Frame(frame)
                    }
                    Some(Outbound::Closing) => Next::Closing,
                    Some(Outbound::CloseAfterQueued(code)) => Next::CloseAfterQueued(code),
                    None => Next::Gone,
                }
            },
            smol::future::or(
                async {
                    ticks.next().await;
                    Next::Tick
                },
                async {
                    (&mut expiry_timer).await;
                    Next::Expiry
                },
            ),
        )
        .await;
        let written = match next {
            Next::Frame(frame) => {
                let mut close_after = None;
                let batch = write_batch(
                    &mut sink,
                    frame,
                    &mut queues.queue,
                    shared.connection,
                    &mut close_after,
                );
                let written = within(stall_limit, &mut ticks, batch).await;
                if let Some(frames) = written {
                    metrics.frames_out.inc_by(frames);
                }
                if let (Some(_), Some(code)) = (written, close_after) {
                    break code;
                }
                written.map(|_| ())
            }
            Next::CloseAfterQueued(code) => break code,
            Next::Tick if shared.heard.silent_for_ms() < limits.idle_timeout_ms => {
                let ping = sink.send(WsMessage::Ping(Default::default()));
                within(stall_limit, &mut ticks, ping).await
            }
            Next::Tick => {
                log::info!(
                    "closing connection {} of {}: silent for over {} ms",
                    shared.connection.id,
                    shared.connection.user,
                    limits.idle_timeout_ms
                );
                break close_code::IDLE;
            }
            Next::Expiry => {
                match expiry.due(exp) {
                    Some(Due::Warning) => {
                        let warning = encode(&ServerFrame::TokenExpiring { exp });
                        shared.connection.deliver(&warning, Priority::Keep);
                    }
                    Some(Due::Close) => {
                        log::info!(
                            "closing connection {} of {}: its token expired at {exp}",
                            shared.connection.id,
                            shared.connection.user,
                        );
                        break close_code::TOKEN_EXPIRED;
                    }
                    None => {}
                }
                expiry_timer = expiry.timer(exp);
                Some(())
            }
            Next::Closing => Some(()),
            Next::Gone => return,
        };
        if written.is_none() {
            return;
        }
    };
    metrics.count_close(code);
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: close_reason(code).into(),
    };
    shared.closing.store(true, Ordering::Release);
    // Written, or timed out; then give the reader the rest of the time to see the client's
    // close reply, which ends the connection.
    let _ = smol::future::or(
        async { sink.send(WsMessage::Close(Some(frame))).await.is_ok() },
        async {
            smol::Timer::after(CLOSE_TIMEOUT).await;
            false
        },
    )
    .await;
    smol::Timer::after(CLOSE_TIMEOUT).await;
}

/// Writes `first` and whatever else is queued, up to [`MAX_FRAMES_PER_FLUSH`], with one
/// flush. Returns how many frames it wrote; a queued close ends the batch, into
/// `close_after`.
async fn write_batch<S>(
    sink: &mut WebSocketSender<S>,
    first: Frame,
    queued: &mut UnboundedReceiver<Outbound>,
    connection: &Connection,
    close_after: &mut Option<u16>,
) -> Result<u64, tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    sink.feed(WsMessage::Text(first)).await?;
    let mut written = 1;
    while written < MAX_FRAMES_PER_FLUSH {
        // A close ends the batch; the writer then sees it asked for.
        let frame = match queued.try_recv() {
            Ok(Outbound::Frame(frame)) => frame,
            Ok(Outbound::CloseAfterQueued(code)) => {
                *close_after = Some(code);
                break;
            }
            _ => break,
        };
        connection.dequeued(&frame);
        sink.feed(WsMessage::Text(frame)).await?;
        written += 1;
    }
    sink.flush().await?;
    Ok(written as u64)
}

/// Runs one socket write, giving up at the first of the connection's ping `ticks` after
/// `limit`: a client that stops reading fills its socket buffer, and the write would
/// otherwise wait forever, holding the connection (and the close frame meant for it) open.
/// The ticks are the connection's own timer because a timer armed per write made every
/// write wake the reactor thread (async-io notifies it of each new timer): one wake-up and
/// context switch per delivery. A tick during a write sends no ping; data went out instead.
async fn within<T>(
    limit: Duration,
    ticks: &mut smol::Timer,
    write: impl Future<Output = Result<T, tungstenite::Error>>,
) -> Option<T> {
    let started = Instant::now();
    let mut write = std::pin::pin!(write);
    loop {
        let written = smol::future::or(async { Some(write.as_mut().await.ok()) }, async {
            ticks.next().await;
            None
        })
        .await;
        match written {
            Some(written) => return written,
            None if started.elapsed() >= limit => return None,
            None => {}
        }
    }
}

/// Seconds before a token's `exp` that the server asks for a fresh one (PROTOCOL.md).
const TOKEN_EXPIRING_LEAD_S: u64 = 60;

/// What the token in force asks of a connection as it nears its end: a `token_expiring`
/// warning [`TOKEN_EXPIRING_LEAD_S`] before `exp`, once per token, then, unless an `auth`
/// frame put a later token in force, a 4001 close at `exp` plus the leeway.
struct TokenExpiry {
    leeway_s: u64,
    /// The `exp` already warned about.
    warned: Option<u64>,
}

enum Due {
    Warning,
    Close,
}

impl TokenExpiry {
    fn new(leeway_s: u64) -> TokenExpiry {
        TokenExpiry {
            leeway_s,
            warned: None,
        }
    }

    /// What is due now for a token expiring at `exp`.
    fn due(&mut self, exp: u64) -> Option<Due> {
        let now_s = now_ms() / 1000;
        if now_s >= exp.saturating_add(self.leeway_s) {
            Some(Due::Close)
        } else if self.warned != Some(exp) && now_s + TOKEN_EXPIRING_LEAD_S >= exp {
            self.warned = Some(exp);
            Some(Due::Warning)
        } else {
            None
        }
    }

    /// A timer for the next thing due for a token expiring at `exp`; a refreshed token
    /// moves it later, so firing early only re-arms it.
    fn timer(&self, exp: u64) -> smol::Timer {
        let due_s = if self.warned == Some(exp) {
            exp.saturating_add(self.leeway_s)
        } else {
            exp.saturating_sub(TOKEN_EXPIRING_LEAD_S)
        };
        let wait = Duration::from_millis(due_s.saturating_mul(1000).saturating_sub(now_ms()));
        // A token expiring centuries from now would overflow an Instant.
        Instant::now()
            .checked_add(wait)
            .map_or_else(smol::Timer::never, smol::Timer::at)
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close_code::GOING_AWAY => "server shutting down",
        close_code::IDLE => "idle timeout: no pong",
        close_code::INVALID_PAYLOAD => "a text frame that is not UTF-8",
        close_code::POLICY_VIOLATION => "too many bad frames",
        close_code::TOO_BIG => "frame too large",
        close_code::TRY_AGAIN_LATER => "too slow: reconnect and sync",
        close_code::TOKEN_EXPIRED => "token expired",
        close_code::DISCONNECTED => "disconnected by the service",
        _ => "closing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_warned_about_once_and_closes_past_the_leeway() {
        let mut expiry = TokenExpiry::new(5);
        let now = now_ms() / 1000;
        assert!(expiry.due(now + 3_600).is_none(), "far from its end");
        assert!(matches!(expiry.due(now + 30), Some(Due::Warning)));
        assert!(expiry.due(now + 30).is_none(), "warned once");
        assert!(expiry
            .due(now - 4)
            .is_some_and(|d| matches!(d, Due::Warning)));
        assert!(expiry.due(now - 4).is_none(), "within the leeway");
        assert!(matches!(expiry.due(now - 5), Some(Due::Close)));
        let far = TokenExpiry::new(60).timer(u64::MAX);
        drop(far);
    }
}
