//! What happened, once it is durable: each applied change yields [`Event`]s, and once its
//! batch commits they go to every [`Subscriber`], in commit order, on the writer thread.
//! Today the subscribers are the connection fan-out and the metrics; the durable outbox for
//! webhooks will be another. A subscriber must never block: it runs on the writer thread.

use std::sync::Arc;

use super::connections::{Priority, Registry};
use crate::metrics::Metrics;
use crate::protocol::{encode, Message, RoomId, RoomView, ServerFrame, UserId};

/// One durable change, as its consumers see it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message, or a change to one, stored in a room; `audience` are the members it went
    /// to.
    Message {
        audience: Arc<[UserId]>,
        message: Arc<Message>,
    },
    /// `users` joined `room` (a member added, a room created or a direct room opened).
    Joined {
        users: Arc<[UserId]>,
        room: RoomView,
    },
    /// `user_id` joined; `audience` are the room's members, the new one included.
    MemberJoined {
        audience: Arc<[UserId]>,
        room_id: RoomId,
        user_id: UserId,
    },
    /// `users` are no longer members of `room_id` (they left, were removed, or it closed).
    Left {
        users: Arc<[UserId]>,
        room_id: RoomId,
    },
    /// `user_id` left; `audience` are the members who remain.
    MemberLeft {
        audience: Arc<[UserId]>,
        room_id: RoomId,
        user_id: UserId,
    },
    /// `user_id`'s read marker in `room_id` moved to `seq`.
    Read {
        room_id: RoomId,
        user_id: UserId,
        seq: u64,
    },
}

/// A consumer of durable events.
pub trait Subscriber: Send + Sync {
    /// Called on the writer thread after each commit with its events, in commit order.
    fn publish(&self, events: &[Event]);
}

/// Pushes events to the members' live connections: each frame encoded once, queued without
/// waiting (a full queue closes that connection with 1013).
pub struct Fanout {
    pub connections: Arc<Registry>,
}

impl Subscriber for Fanout {
    fn publish(&self, events: &[Event]) {
        let deliver = |users: &[UserId], skip: Option<&UserId>, frame: ServerFrame<'_>| {
            self.connections
                .deliver(users, skip, &encode(&frame), Priority::Keep)
        };
        for event in events {
            match event {
                Event::Message { audience, message } => {
                    deliver(audience, None, ServerFrame::Message { message })
                }
                Event::Joined { users, room } => deliver(users, None, ServerFrame::Joined { room }),
                Event::MemberJoined {
                    audience,
                    room_id,
                    user_id,
                } => deliver(
                    audience,
                    Some(user_id),
                    ServerFrame::MemberJoined { room_id, user_id },
                ),
                Event::Left { users, room_id } => {
                    deliver(users, None, ServerFrame::Left { room_id })
                }
                Event::MemberLeft {
                    audience,
                    room_id,
                    user_id,
                } => deliver(audience, None, ServerFrame::MemberLeft { room_id, user_id }),
                Event::Read { .. } => {}
            }
        }
    }
}

impl Subscriber for Metrics {
    fn publish(&self, events: &[Event]) {
        let stored = events
            .iter()
            .filter(|e| matches!(e, Event::Message { .. }))
            .count();
        self.messages_stored.inc_by(stored as u64);
    }
}
