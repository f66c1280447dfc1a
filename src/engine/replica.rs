//! Cluster mode's second half: applying a change that Redis decided, read from the cluster
//! log, to this node's storage and memory. Every node applies every change, the node that
//! asked for it included, each shard's changes in log order.
//!
//! Applying is idempotent, because a node that stops between applying a change and
//! recording its log position applies it again: a message whose seq is already here, a
//! member who already joined, a room already created or closed are each skipped.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::connections::lock;
use super::room::Stamp;
use super::{Completion, Engine};
use crate::protocol::{RoomId, RoomKind, UserId};

/// A change to a room, as the cluster log carries it.
#[derive(Debug)]
pub enum Change {
    /// A message, with the seq and ts Redis assigned.
    Message {
        room_id: RoomId,
        stamp: Stamp,
        body: MessageBody,
    },
    Room(RoomChange),
}

/// What a message's node writes to the log; Redis adds the seq and ts beside it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageBody {
    pub sender: Option<UserId>,
    pub text: String,
    pub data: Option<Box<RawValue>>,
    pub client_msg_id: Option<String>,
}

/// A change to a room's life or membership, decided in Redis.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RoomChange {
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
}

impl RoomChange {
    pub fn room_id(&self) -> &RoomId {
        match self {
            RoomChange::Created { room_id, .. }
            | RoomChange::Joined { room_id, .. }
            | RoomChange::Left { room_id, .. }
            | RoomChange::Closed { room_id, .. }
            | RoomChange::Read { room_id, .. } => room_id,
        }
    }
}

/// What applying one change did.
#[derive(Default)]
pub struct Applied {
    /// The write it queued, if any; the change is durable here once it completes.
    pub completion: Option<Completion>,
    /// Set when the change shows that this node missed earlier ones (the log was trimmed
    /// past its position): what is missing.
    pub gap: Option<String>,
}

impl Applied {
    fn queued(completion: Completion) -> Applied {
        Applied {
            completion: Some(completion),
            gap: None,
        }
    }

    fn gap(what: String) -> Applied {
        Applied {
            completion: None,
            gap: Some(what),
        }
    }
}

impl Engine {
    /// Applies `change`, queueing its writes behind every change applied before it.
    pub async fn apply(&self, change: Change) -> Applied {
        let slot = self.inner.writer.reserve().await;
        match change {
            Change::Message {
                room_id,
                stamp,
                body,
            } => {
                let Some(room) = self.room(&room_id) else {
                    return Applied::gap(format!("room {room_id} (a message for it arrived)"));
                };
                let mut state = room.state();
                let last = state.assigned.seq;
                if stamp.seq <= last {
                    return Applied::default();
                }
                let gap = (stamp.seq != last + 1)
                    .then(|| format!("messages {}..{} of room {room_id}", last + 1, stamp.seq));
                let parts = (body.text, body.data, body.client_msg_id);
                let completion =
                    self.store_message(slot, &room, &mut state, stamp, body.sender.as_ref(), parts);
                Applied {
                    completion: Some(completion),
                    gap,
                }
            }
            Change::Room(change) => {
                let engine = self.clone();
                // Creating and closing consult disk tombstones under the lifecycle lock.
                smol::unblock(move || {
                    let _lifecycle = lock(&engine.inner.lifecycle);
                    engine.apply_room_change(slot, change)
                })
                .await
            }
        }
    }

    /// [`Engine::apply`] for room changes; runs holding the lifecycle lock.
    fn apply_room_change(&self, slot: crate::storage::writer::Slot, change: RoomChange) -> Applied {
        let room_id = change.room_id().clone();
        let Some(room) = self.room(&room_id) else {
            // Not open here: created and closed already, or never created here.
            let closed_here = matches!(self.inner.storage.room(room_id.as_str()), Ok(Some(_)));
            return match change {
                RoomChange::Created {
                    kind,
                    owner,
                    members,
                    ts,
                    ..
                } if !closed_here => {
                    let (_view, completion) =
                        self.create_room_locked(slot, room_id, kind, owner, &members, ts);
                    Applied::queued(completion)
                }
                RoomChange::Joined { .. } if !closed_here => {
                    Applied::gap(format!("the creation of room {room_id}"))
                }
                _ => Applied::default(),
            };
        };
        let completion = match change {
            RoomChange::Created { .. } => None,
            RoomChange::Joined { user_id, .. } => {
                let mut state = room.state();
                (!state.is_member(&user_id))
                    .then(|| self.add_member(slot, &room, &mut state, &user_id).1)
            }
            RoomChange::Left { user_id, .. } => {
                Some(self.remove_member(slot, &room, &mut room.state(), &user_id))
            }
            RoomChange::Closed { ts, .. } => Some(self.close_locked(slot, &room, ts)),
            RoomChange::Read { user_id, seq, .. } => {
                // Capped by the node that asked; messages before it are applied already.
                let mut state = room.state();
                self.move_read_marker(slot, &room, &mut state, &user_id, seq)
                    .ok()
            }
        };
        Applied {
            completion,
            gap: None,
        }
    }
}
