//! The live WebSocket connections of every user, each with its bounded outbound queue.
//!
//! Pushes never wait: a frame goes into the queue with `try_send`, and a connection whose
//! queue is full is closed with 1013 so its client reconnects and resyncs. The server never
//! buffers without bound for a client that does not read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::auth::Token;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::protocol::{now_ms, Frame, UserId};
use crate::sync::lock;

/// WebSocket close codes the server uses.
pub mod close_code {
    /// Normal closure, used when a client went silent past `limits.idle_timeout_ms`.
    pub const IDLE: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not UTF-8 (RFC 6455 requires failing the connection).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Too many bad frames in a row.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over `limits.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Outbound queue full: reconnect and resync.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token expired (past its `exp` plus the leeway) and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// RouteAPI disconnected the user (`POST /v1/users/{user_id}/disconnect`).
    pub const DISCONNECTED: u16 = 4003;
}

/// Connections opened up to this long after a disconnect's moment close with it: in
/// cluster mode the moment is Redis's clock, and a node's may lag it a little.
const DISCONNECT_CLOCK_SLACK_MS: u64 = 1_000;

/// How much a push matters when a queue fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Messages, membership changes, replies: never dropped; a full queue closes the
    /// connection instead.
    Keep,
    /// Typing indicators: dropped once the queue is half full, so they never push a
    /// connection into a 1013 close.
    Droppable,
}

/// One live connection as the rest of the engine sees it.
pub struct Connection {
    pub id: u64,
    pub user: UserId,
    /// When it opened (Unix ms).
    opened_ms: u64,
    /// The `exp` and `iat` (0 when it has none) of the token in force; an `auth` frame
    /// replaces them.
    exp: AtomicU64,
    iat: AtomicU64,
    queue: UnboundedSender<Outbound>,
    /// The close code asked for (0: none). Beside the queue rather than in it, so a close
    /// is seen at once and not behind the full queue a 1013 is for.
    close_code: AtomicU16,
    capacity: usize,
    /// Bytes of the frames waiting in `queue`, and their limit.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
}

/// How much one connection's outbound queue may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

/// What the connection's writer takes from its queue.
pub enum Outbound {
    /// A frame to write, in order.
    Frame(Frame),
    /// Wakes the writer to look at [`Connection::close_requested`]. One queue for both, not
    /// a second channel for closes: a channel is about 400 bytes (cache-padded), per
    /// connection, idle or not.
    Closing,
    /// Close with this code once the frames queued before it are written: the client
    /// gets every reply up to the one that ended the connection.
    CloseAfterQueued(u16),
}

/// The connection task's end of its queue.
pub struct ConnectionQueues {
    pub queue: UnboundedReceiver<Outbound>,
}

impl Connection {
    /// Queues a frame for this connection without waiting. A full queue, in frames or in
    /// bytes, closes the connection with 1013 instead; a frame always fits an empty queue,
    /// so one large reply never does.
    pub fn deliver(&self, frame: &Frame, priority: Priority) {
        if priority == Priority::Droppable && self.queue.len() * 2 >= self.capacity {
            return;
        }
        let bytes = frame.len();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let over_bytes = before > 0 && before + bytes > self.max_queued_bytes;
        let over_frames = self.queue.len() >= self.capacity;
        let refused = over_bytes
            || over_frames
            || self
                .queue
                .unbounded_send(Outbound::Frame(frame.clone()))
                .is_err();
        if refused {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            if !self.queue.is_closed() {
                log::warn!(
                    "closing connection {} of {}: outbound queue full (slow consumer)",
                    self.id,
                    self.user
                );
                self.close(close_code::TRY_AGAIN_LATER);
            }
        }
    }

    /// Called by the connection's writer for each frame it takes from the queue.
    pub fn dequeued(&self, frame: &Frame) {
        self.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
    }

    /// Asks the connection task to close with `code`. The first code asked for wins.
    pub fn close(&self, code: u16) {
        let first = self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // The queue is unbounded in type (bounded by `deliver`), so the wake-up fits.
            let _ = self.queue.unbounded_send(Outbound::Closing);
        }
    }

    /// Asks the connection task to close with `code` after writing what is queued now.
    pub fn close_after_queued(&self, code: u16) {
        // The queue is unbounded in type (bounded by `deliver`), so the marker fits.
        let _ = self.queue.unbounded_send(Outbound::CloseAfterQueued(code));
    }

    /// The close code asked for, if any.
    pub fn close_requested(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// When the token in force expires (Unix seconds).
    pub fn token_exp(&self) -> u64 {
        self.exp.load(Ordering::Acquire)
    }

    /// Puts a refreshed token of the same user in force.
    pub fn refresh(&self, token: &Token) {
        self.iat.store(token.iat.unwrap_or(0), Ordering::Release);
        self.exp.store(token.exp, Ordering::Release);
    }

    /// Whether a disconnect at `at_ms` ends this connection: it opened by then, or, with
    /// tokens revoked up to `revoked_s`, its token is one of them. (A token without `iat`
    /// holds 0, so it always is, as revocation refuses such tokens.)
    fn ended_by(&self, at_ms: u64, revoked_s: Option<u64>) -> bool {
        self.opened_ms <= at_ms.saturating_add(DISCONNECT_CLOCK_SLACK_MS)
            || revoked_s.is_some_and(|moment| self.iat.load(Ordering::Acquire) <= moment)
    }
}

/// Every user's live connections.
pub struct Registry {
    by_user: Mutex<HashMap<UserId, Vec<Arc<Connection>>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            by_user: Mutex::default(),
            next_id: AtomicU64::new(0),
            metrics,
        }
    }

    /// Registers a new connection for `token`'s user, refused with `rate_limited` past
    /// `max_per_user`.
    pub fn register(
        &self,
        token: &Token,
        queue: QueueLimits,
        max_per_user: usize,
    ) -> Result<(Arc<Connection>, ConnectionQueues), Error> {
        let user = &token.user;
        let queue_capacity = queue.frames;
        // Unbounded in type, bounded by `deliver`: a bounded channel allocates all its slots
        // up front (about 40 KiB per idle connection at the default 1024 frames), and
        // async-channel's unbounded one about 700 bytes (cache-padded ends, blocks of 31
        // slots); this one holds a frame per node and an idle connection's queue in ~100.
        let (sender, receiver) = futures_channel::mpsc::unbounded();
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            opened_ms: now_ms(),
            exp: AtomicU64::new(token.exp),
            iat: AtomicU64::new(token.iat.unwrap_or(0)),
            queue: sender,
            close_code: AtomicU16::new(0),
            capacity: queue_capacity,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: queue.bytes,
        });
        let mut by_user = lock(&self.by_user);
        let mine = by_user.entry(user.clone()).or_default();
        if mine.len() >= max_per_user {
            return Err(Error::RateLimited(format!(
                "user {user} already has {max_per_user} connections"
            )));
        }
        mine.push(connection.clone());
        Ok((connection, ConnectionQueues { queue: receiver }))
    }

    pub fn unregister(&self, connection: &Connection) {
        let mut by_user = lock(&self.by_user);
        if let Some(mine) = by_user.get_mut(&connection.user) {
            mine.retain(|c| c.id != connection.id);
            if mine.is_empty() {
                by_user.remove(&connection.user);
            }
        }
    }

    /// Queues `frame` on every connection of each user in `users`, except `skip`'s.
    pub fn deliver(
        &self,
        users: &[UserId],
        skip: Option<&UserId>,
        frame: &Frame,
        priority: Priority,
    ) {
        let by_user = lock(&self.by_user);
        let mut queued = 0;
        for user in users {
            if Some(user) == skip {
                continue;
            }
            for connection in by_user.get(user).into_iter().flatten() {
                connection.deliver(frame, priority);
                queued += 1;
            }
        }
        self.metrics.deliveries.inc_by(queued);
    }

    /// Closes `user`'s connections that a disconnect at `at_ms` ends (see
    /// [`Connection::ended_by`]) with 4003. Returns how many.
    pub fn disconnect(&self, user: &UserId, at_ms: u64, revoked_s: Option<u64>) -> usize {
        let by_user = lock(&self.by_user);
        let ended = by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter(|connection| connection.ended_by(at_ms, revoked_s));
        let mut count = 0;
        for connection in ended {
            connection.close(close_code::DISCONNECTED);
            count += 1;
        }
        count
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: u16) {
        for connection in lock(&self.by_user).values().flatten() {
            connection.close(code);
        }
    }

    pub fn count(&self) -> usize {
        lock(&self.by_user).values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn token(name: &str) -> Token {
        Token {
            user: user(name),
            exp: u64::MAX,
            iat: Some(100),
        }
    }

    fn queue(frames: usize) -> QueueLimits {
        QueueLimits {
            frames,
            bytes: 1 << 20,
        }
    }

    #[test]
    fn queued_bytes_past_the_limit_close_with_1013_but_one_frame_always_fits() {
        let registry = Registry::new(Metrics::new());
        let limits = QueueLimits {
            frames: 100,
            bytes: 10,
        };
        let (conn, mut queues) = registry.register(&token("u"), limits, 16).unwrap();
        let big = Frame::from("0123456789abcdef");
        conn.deliver(&big, Priority::Keep);
        assert_eq!(conn.queue.len(), 1, "an empty queue takes any frame");
        assert_eq!(conn.close_requested(), None);
        conn.deliver(&Frame::from("x"), Priority::Keep);
        assert_eq!(conn.close_requested(), Some(close_code::TRY_AGAIN_LATER));
        let Ok(Outbound::Frame(taken)) = queues.queue.try_recv() else {
            panic!("the frame first");
        };
        assert!(matches!(queues.queue.try_recv(), Ok(Outbound::Closing)));
        conn.dequeued(&taken);
        conn.deliver(&Frame::from("small"), Priority::Keep);
        assert_eq!(conn.queue.len(), 1, "room again once the writer took it");
    }

    #[test]
    fn full_queue_closes_with_1013_and_typing_is_dropped_first() {
        let registry = Registry::new(Metrics::new());
        let (conn, _queues) = registry.register(&token("u"), queue(4), 16).unwrap();
        let frame = Frame::from("x");
        let users = [user("u")];
        registry.deliver(&users, None, &frame, Priority::Keep);
        registry.deliver(&users, None, &frame, Priority::Keep);
        registry.deliver(&users, None, &frame, Priority::Droppable);
        assert_eq!(conn.queue.len(), 2, "typing dropped at half full");
        for _ in 0..3 {
            registry.deliver(&users, None, &frame, Priority::Keep);
        }
        assert_eq!(conn.queue.len(), 5, "four frames and the close's wake-up");
        assert_eq!(conn.close_requested(), Some(close_code::TRY_AGAIN_LATER));
        conn.close(close_code::GOING_AWAY);
        assert_eq!(
            conn.close_requested(),
            Some(close_code::TRY_AGAIN_LATER),
            "the first close wins"
        );
        assert_eq!(conn.queue.len(), 5, "and wakes the writer once");
    }

    #[test]
    fn a_disconnect_ends_connections_opened_by_then_and_those_of_revoked_tokens() {
        let registry = Registry::new(Metrics::new());
        let (first, _q1) = registry.register(&token("u"), queue(4), 16).unwrap();
        let (other, _q2) = registry.register(&token("v"), queue(4), 16).unwrap();
        assert_eq!(registry.disconnect(&user("u"), now_ms(), None), 1);
        assert_eq!(first.close_requested(), Some(close_code::DISCONNECTED));
        assert_eq!(other.close_requested(), None, "another user's stays");
        registry.unregister(&first);
        // Opened after the moment (and its slack): only its token can end it.
        let (second, _q3) = registry.register(&token("u"), queue(4), 16).unwrap();
        let long_ago = now_ms() - 60_000;
        assert_eq!(registry.disconnect(&user("u"), long_ago, None), 0);
        assert_eq!(registry.disconnect(&user("u"), long_ago, Some(99)), 0);
        assert_eq!(registry.disconnect(&user("u"), long_ago, Some(100)), 1);
        assert_eq!(second.close_requested(), Some(close_code::DISCONNECTED));
    }

    #[test]
    fn connection_limit_per_user() {
        let registry = Registry::new(Metrics::new());
        let (first, _q1) = registry.register(&token("u"), queue(4), 1).unwrap();
        assert_eq!(
            registry
                .register(&token("u"), queue(4), 1)
                .err()
                .map(|e| e.code()),
            Some("rate_limited")
        );
        registry.unregister(&first);
        assert!(registry.register(&token("u"), queue(4), 1).is_ok());
        assert_eq!(registry.count(), 1);
    }
}
