//! The live WebSocket connections of every user, each with its bounded outbound queue.
//!
//! Pushes never wait: a frame goes into the queue with `try_send`, and a connection whose
//! queue is full is closed with 1013 so its client reconnects and resyncs. The server never
//! buffers without bound for a client that does not read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::protocol::{Frame, UserId};

/// WebSocket close codes the server uses.
pub mod close_code {
    /// Normal closure, used when a client went silent past `limits.idle_timeout_ms`.
    pub const IDLE: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Too many bad frames in a row.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over `limits.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Outbound queue full: reconnect and resync.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

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
    frames: async_channel::Sender<Frame>,
    kick: async_channel::Sender<u16>,
    capacity: usize,
}

/// The connection task's ends of the two queues.
pub struct ConnectionQueues {
    /// Frames to write, in order.
    pub frames: async_channel::Receiver<Frame>,
    /// A close code: write a close frame with it and end the connection.
    pub kick: async_channel::Receiver<u16>,
}

impl Connection {
    /// Queues a frame for this connection without waiting.
    pub fn deliver(&self, frame: &Frame, priority: Priority) {
        if priority == Priority::Droppable && self.frames.len() * 2 >= self.capacity {
            return;
        }
        if let Err(async_channel::TrySendError::Full(_)) = self.frames.try_send(frame.clone()) {
            log::warn!(
                "closing connection {} of {}: outbound queue full (slow consumer)",
                self.id,
                self.user
            );
            self.close(close_code::TRY_AGAIN_LATER);
        }
    }

    /// Asks the connection task to close with `code`. The first code asked for wins.
    pub fn close(&self, code: u16) {
        let _ = self.kick.try_send(code);
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

    /// Registers a new connection for `user`, refused with `rate_limited` past `max_per_user`.
    pub fn register(
        &self,
        user: &UserId,
        queue_capacity: usize,
        max_per_user: usize,
    ) -> Result<(Arc<Connection>, ConnectionQueues), Error> {
        let (frames_tx, frames) = async_channel::bounded(queue_capacity);
        let (kick_tx, kick) = async_channel::bounded(1);
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            frames: frames_tx,
            kick: kick_tx,
            capacity: queue_capacity,
        });
        let mut by_user = lock(&self.by_user);
        let mine = by_user.entry(user.clone()).or_default();
        if mine.len() >= max_per_user {
            return Err(Error::RateLimited(format!(
                "user {user} already has {max_per_user} connections"
            )));
        }
        mine.push(connection.clone());
        Ok((connection, ConnectionQueues { frames, kick }))
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

/// Locks a mutex, carrying on if a panicking thread poisoned it: every critical section
/// here leaves the data consistent at each step, so the data is still good.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn full_queue_closes_with_1013_and_typing_is_dropped_first() {
        let registry = Registry::new(Metrics::new());
        let (_conn, queues) = registry.register(&user("u"), 4, 16).unwrap();
        let frame = Frame::from("x");
        let users = [user("u")];
        registry.deliver(&users, None, &frame, Priority::Keep);
        registry.deliver(&users, None, &frame, Priority::Keep);
        registry.deliver(&users, None, &frame, Priority::Droppable);
        assert_eq!(queues.frames.len(), 2, "typing dropped at half full");
        for _ in 0..3 {
            registry.deliver(&users, None, &frame, Priority::Keep);
        }
        assert_eq!(queues.frames.len(), 4);
        assert_eq!(queues.kick.try_recv(), Ok(close_code::TRY_AGAIN_LATER));
    }

    #[test]
    fn connection_limit_per_user() {
        let registry = Registry::new(Metrics::new());
        let (first, _q1) = registry.register(&user("u"), 4, 1).unwrap();
        assert_eq!(
            registry.register(&user("u"), 4, 1).err().map(|e| e.code()),
            Some("rate_limited")
        );
        registry.unregister(&first);
        assert!(registry.register(&user("u"), 4, 1).is_ok());
        assert_eq!(registry.count(), 1);
    }
}
