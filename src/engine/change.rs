//! What the engine decides and applies: a [`Proposal`] is what a request asks for; the
//! authority turns it into a decided [`Change`], and `apply` makes that change durable,
//! visible and pushed. Both types are always compiled: the same change is decided under a
//! room's lock on one node, or by Redis in cluster mode, whose logs carry it (as JSON) to
//! every node.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::room::Stamp;
use crate::error::Error;
use crate::protocol::{MessageKind, RoomId, RoomKind, UserId};

/// A change a request asks for, not yet decided.
#[derive(Debug)]
pub enum Proposal {
    Create {
        room_id: RoomId,
        kind: RoomKind,
        owner: Option<UserId>,
        members: Vec<UserId>,
    },
    Close {
        room_id: RoomId,
    },
    Join {
        room_id: RoomId,
        user_id: UserId,
    },
    Leave {
        room_id: RoomId,
        user_id: UserId,
    },
    /// Moves a read marker forward to `seq`, already capped at the room's last message.
    Read {
        room_id: RoomId,
        user_id: UserId,
        seq: u64,
    },
    /// A new message, or a change to one.
    Post {
        room_id: RoomId,
        post: Post,
    },
}

/// A decided change to a room: what every node applies, in the same order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    Created {
        room_id: RoomId,
        kind: RoomKind,
        owner: Option<UserId>,
        members: Vec<UserId>,
        ts: u64,
    },
    Joined {
        room_id: RoomId,
        user_id: UserId,
    },
    Left {
        room_id: RoomId,
        user_id: UserId,
    },
    Closed {
        room_id: RoomId,
        ts: u64,
    },
    Read {
        room_id: RoomId,
        user_id: UserId,
        seq: u64,
    },
    /// A message with its seq and ts.
    Posted {
        room_id: RoomId,
        seq: u64,
        ts: u64,
        post: Post,
    },
}

impl Change {
    pub fn room_id(&self) -> &RoomId {
        match self {
            Change::Created { room_id, .. }
            | Change::Joined { room_id, .. }
            | Change::Left { room_id, .. }
            | Change::Closed { room_id, .. }
            | Change::Read { room_id, .. }
            | Change::Posted { room_id, .. } => room_id,
        }
    }
}

/// A message as its sender wrote it; the authority adds the seq and ts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Post {
    /// The user; `None` for RouteAPI.
    pub sender: Option<UserId>,
    /// Set for an edit, a deletion or a reaction; `None` for a new `text` or `system`
    /// message. (Absent in logs written before message changes existed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Amendment>,
    /// The new text of an edit, the reaction of a reaction, "" for a deletion.
    pub text: String,
    pub data: Option<Box<RawValue>>,
    pub client_msg_id: Option<String>,
}

/// What a change message does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Amendment {
    Edit { target_seq: u64 },
    Delete { target_seq: u64 },
    Reaction { target_seq: u64, removed: bool },
}

impl Amendment {
    pub fn target_seq(self) -> u64 {
        match self {
            Amendment::Edit { target_seq }
            | Amendment::Delete { target_seq }
            | Amendment::Reaction { target_seq, .. } => target_seq,
        }
    }
}

impl Post {
    pub fn kind(&self) -> MessageKind {
        match (self.change, &self.sender) {
            (Some(Amendment::Edit { .. }), _) => MessageKind::Edit,
            (Some(Amendment::Delete { .. }), _) => MessageKind::Delete,
            (Some(Amendment::Reaction { .. }), _) => MessageKind::Reaction,
            (None, Some(_)) => MessageKind::Text,
            (None, None) => MessageKind::System,
        }
    }

    pub fn target_seq(&self) -> Option<u64> {
        self.change.map(Amendment::target_seq)
    }
}

/// Whether a proposal changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// It was made now (REST answers 201, a send `sent`).
    Now,
    /// It had been made before: the same room or member, or a repeated `client_msg_id`
    /// (answered with the first message's stamp).
    Before,
    /// A message change that would change nothing: nothing is stored (`ok`).
    Nothing,
}

/// What the authority decided; [`Decided::durable`] resolves once the change is durable and
/// visible on this node.
pub struct Decided {
    pub made: Made,
    /// The message's seq and ts, for a post that was made now or before.
    pub stamp: Option<Stamp>,
    pub durable: super::Durable,
}

/// How an authority takes a proposal: decided at once, or queued behind the proposals
/// its caller made before, with the decision to follow. Queuing lets one connection have
/// many sends under way where deciding takes a round trip (cluster mode's script calls).
pub enum Decision {
    Made(Decided),
    Queued(BoxFuture<'static, Result<Decided, Error>>),
}

impl Decision {
    pub async fn decided(self) -> Result<Decided, Error> {
        match self {
            Decision::Made(decided) => Ok(decided),
            Decision::Queued(decision) => decision.await,
        }
    }
}
