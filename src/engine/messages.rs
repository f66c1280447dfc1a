//! Sending messages (seq/ts, dedup, durability, fan-out), read markers, typing, and the
//! user's room list with unread counts.

use std::sync::Arc;

use super::room::{DedupKey, Room, RoomState, Stamp};
use super::{Completion, Engine, Priority};
use crate::error::Error;
use crate::protocol::{
    encode, now_ms, Message, MessageKind, NewMessage, RoomId, RoomView, ServerFrame, UserId,
};
use crate::storage::writer::Slot;
use crate::storage::{keys, Cf, KeyWrite, MessageRecord, StampRecord};

/// A new message's text, data and `client_msg_id`.
pub(super) type MessageParts = (
    String,
    Option<Box<serde_json::value::RawValue>>,
    Option<String>,
);

/// What a send produced.
pub struct Sent {
    pub stamp: Stamp,
    /// False when a repeated `client_msg_id` returned the first send's result.
    pub created: bool,
}

/// A send with its seq assigned and its write queued, not yet durable.
pub struct Accepted {
    sent: Sent,
    durability: Durability,
}

/// What an accepted send still waits for.
enum Durability {
    /// Nothing: the answer came from disk.
    Done,
    /// This node's commit.
    Commit(Completion),
    /// This node applying the message from the cluster log.
    #[cfg(feature = "redis")]
    Applied(crate::cluster::Pending),
}

impl Accepted {
    /// Waits until the message is durable (and so visible and pushed).
    pub async fn durable(self) -> Result<Sent, Error> {
        match self.durability {
            Durability::Done => {}
            Durability::Commit(completion) => completion.wait().await?,
            #[cfg(feature = "redis")]
            Durability::Applied(pending) => pending.applied().await?,
        }
        Ok(self.sent)
    }
}

impl Engine {
    /// Stores and pushes a message from `sender` (`None`: a system message from RouteAPI,
    /// which needs no membership). Returns once it is durable.
    pub async fn send(
        &self,
        room_id: &RoomId,
        sender: Option<&UserId>,
        message: NewMessage,
    ) -> Result<Sent, Error> {
        self.accept_send(room_id, sender, message)
            .await?
            .durable()
            .await
    }

    /// The first half of [`Engine::send`]: assigns the seq and queues the write, without
    /// waiting for the disk, so one connection can have many sends in flight. Sends accepted
    /// one after another from one caller get increasing seqs.
    pub async fn accept_send(
        &self,
        room_id: &RoomId,
        sender: Option<&UserId>,
        message: NewMessage,
    ) -> Result<Accepted, Error> {
        message.validate(self.inner.config.limits.max_message_bytes)?;
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            let (text, data, client_msg_id) = message.into_parts();
            let body = super::replica::MessageBody {
                sender: sender.cloned(),
                text,
                data,
                client_msg_id,
            };
            let floor = self.room(room_id).map(|room| room.state().assigned);
            let decided = cluster
                .send(room_id, &body, floor.unwrap_or_default())
                .await?;
            return Ok(Accepted {
                sent: Sent {
                    stamp: decided.stamp,
                    created: decided.created,
                },
                durability: Durability::Applied(decided.pending),
            });
        }
        let room = self.open_room(room_id)?;
        let (text, data, client_msg_id) = message.into_parts();
        let dedup_key: Option<DedupKey> = client_msg_id.clone().map(|id| (sender.cloned(), id));
        let mut known_evictions = None;
        loop {
            let slot = self.inner.writer.reserve().await;
            // Decide under the room's lock; every wait happens after it is released.
            let step = {
                let mut state = room.state();
                check_can_post(&room, &state, sender)?;
                let known = dedup_key.as_ref().and_then(|key| state.dedup_lookup(key));
                let window_may_miss = dedup_key.is_some()
                    && !state.dedup_complete
                    && known_evictions != Some(state.dedup_evictions);
                if let Some(stamp) = known {
                    // A repeat: answer with the first send's result once it is durable.
                    let barrier = self.submit(slot, &room, Vec::new(), Vec::new());
                    SendStep::Repeat(stamp, barrier)
                } else if window_may_miss {
                    // The window may have lost this id to disk: look there unlocked, then
                    // decide again. Unchanged evictions mean nothing left the window since.
                    known_evictions = Some(state.dedup_evictions);
                    SendStep::CheckDisk
                } else {
                    let stamp = state.assigned.next(now_ms());
                    let completion = self.store_message(
                        slot,
                        &room,
                        &mut state,
                        stamp,
                        sender,
                        (text.clone(), data.clone(), client_msg_id.clone()),
                    );
                    SendStep::New(stamp, completion)
                }
            };
            let accepted = |stamp, created, durability| Accepted {
                sent: Sent { stamp, created },
                durability,
            };
            match step {
                SendStep::Repeat(stamp, barrier) => {
                    return Ok(accepted(stamp, false, Durability::Commit(barrier)));
                }
                SendStep::CheckDisk => {
                    if let Some(key) = &dedup_key {
                        if let Some(stamp) = self.stored_dedup(&room, key).await? {
                            return Ok(accepted(stamp, false, Durability::Done));
                        }
                    }
                }
                SendStep::New(stamp, completion) => {
                    return Ok(accepted(stamp, true, Durability::Commit(completion)));
                }
            }
        }
    }

    /// Assigns `stamp` to a new message in `room` and queues its write; once durable it
    /// joins the cache and is pushed to the room's members.
    pub(super) fn store_message(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        state: &mut RoomState,
        stamp: Stamp,
        sender: Option<&UserId>,
        (text, data, client_msg_id): MessageParts,
    ) -> Completion {
        state.assigned = stamp;
        let message = Arc::new(Message {
            room_id: room.id.clone(),
            seq: stamp.seq,
            ts: stamp.ts,
            sender: sender.cloned(),
            kind: if sender.is_some() {
                MessageKind::Text
            } else {
                MessageKind::System
            },
            text,
            data,
            client_msg_id,
        });
        let mut writes = vec![KeyWrite::put(
            Cf::Messages,
            &keys::message(room.number, stamp.seq),
            &record_of(&message),
        )];
        if let Some(id) = &message.client_msg_id {
            let dedup = StampRecord {
                seq: stamp.seq,
                ts: stamp.ts,
            };
            writes.push(KeyWrite::put(
                Cf::Dedup,
                &keys::dedup(room.number, sender.map(UserId::as_str), id),
                &dedup,
            ));
            state.dedup_insert((sender.cloned(), id.clone()), stamp);
        }
        let audience = state.audience.clone();
        let committed_room = room.clone();
        self.submit_with(slot, room, writes, move |engine| {
            committed_room.state().commit(message.clone());
            engine.inner.metrics.messages_stored.inc();
            let frame = encode(&ServerFrame::Message { message: &message });
            engine
                .inner
                .connections
                .deliver(&audience, None, &frame, Priority::Keep);
        })
    }

    async fn stored_dedup(&self, room: &Room, key: &DedupKey) -> Result<Option<Stamp>, Error> {
        let (number, sender, id) = (room.number, key.0.clone(), key.1.clone());
        let found = self
            .read_storage(move |s| s.dedup(number, sender.as_ref().map(UserId::as_str), &id))
            .await?;
        Ok(found.map(|d| Stamp {
            seq: d.seq,
            ts: d.ts,
        }))
    }

    /// `read`: moves the user's read marker forward (never back, never past the last
    /// message).
    pub async fn mark_read(&self, user: &UserId, room_id: &RoomId, seq: u64) -> Result<(), Error> {
        let room = self.open_room(room_id)?;
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            let seq = {
                let state = room.state();
                if !state.is_member(user) {
                    return Err(Error::NotMember(room_id.to_string()));
                }
                seq.min(state.committed.seq)
            };
            let change = super::replica::RoomChange::Read {
                room_id: room_id.clone(),
                user_id: user.clone(),
                seq,
            };
            return cluster.update(&change).await.map(|_| ());
        }
        let slot = self.inner.writer.reserve().await;
        let completion = {
            let mut state = room.state();
            let committed = state.committed.seq;
            self.move_read_marker(slot, &room, &mut state, user, seq.min(committed))?
        };
        completion.wait().await
    }

    /// Moves `user`'s read marker in `room` forward to `seq` (never back) and queues its
    /// write. The caller caps `seq` at the last message.
    pub(super) fn move_read_marker(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        state: &mut RoomState,
        user: &UserId,
        seq: u64,
    ) -> Result<Completion, Error> {
        let member = state
            .members
            .get_mut(user)
            .ok_or_else(|| Error::NotMember(room.id.to_string()))?;
        member.read_seq = member.read_seq.max(seq);
        let write = KeyWrite::put(
            Cf::Reads,
            &keys::pair(user.as_str(), room.id.as_str()),
            &member.read_seq,
        );
        Ok(self.submit(slot, room, vec![write], Vec::new()))
    }

    /// `typing`: tells the room's other members, best effort (never stored).
    pub fn typing(&self, user: &UserId, room_id: &RoomId) -> Result<(), Error> {
        let room = self.open_room(room_id)?;
        if !room.state().is_member(user) {
            return Err(Error::NotMember(room_id.to_string()));
        }
        // In cluster mode it reaches every node's members through Redis, this node's too.
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            cluster.typing(room_id, user);
            return Ok(());
        }
        self.push_typing(room_id, user);
        Ok(())
    }

    /// Pushes `typing` to the members of `room_id` other than `user`, if `user` is one.
    pub(crate) fn push_typing(&self, room_id: &RoomId, user: &UserId) {
        let Some(room) = self.room(room_id) else {
            return;
        };
        let audience = {
            let state = room.state();
            if !state.is_member(user) {
                return;
            }
            state.audience.clone()
        };
        let frame = encode(&ServerFrame::Typing {
            room_id,
            user_id: user,
        });
        self.inner
            .connections
            .deliver(&audience, Some(user), &frame, Priority::Droppable);
    }

    /// `rooms`: every room of the user with its unread count, most recently active first.
    pub async fn rooms_of(&self, user: &UserId) -> Result<Vec<RoomView>, Error> {
        let ids: Vec<RoomId> = super::lock(&self.inner.user_rooms)
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default();
        let mut views = Vec::with_capacity(ids.len());
        // Unread counts the cache cannot give: (index in views, room number, after, upto).
        let mut from_disk = Vec::new();
        for id in ids {
            let Some(room) = self.room(&id) else { continue };
            let state = room.state();
            let Some(member) = state.members.get(user) else {
                continue;
            };
            let marker = member.read_seq;
            let committed = state.committed.seq;
            let cache_first = state.recent.front().map_or(committed + 1, |m| m.seq);
            let in_cache = state
                .recent
                .iter()
                .filter(|m| m.seq > marker && m.sender.as_ref() != Some(user))
                .count() as u64;
            if marker + 1 < cache_first {
                from_disk.push((views.len(), room.number, marker, cache_first - 1));
            }
            views.push(room.view(&state, Some(in_cache)));
        }
        if !from_disk.is_empty() {
            let user = user.clone();
            let counts = self
                .read_storage(move |s| {
                    from_disk
                        .into_iter()
                        .map(|(i, number, after, upto)| {
                            Ok((i, s.count_not_from(number, after, upto, user.as_str())?))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            for (i, count) in counts {
                if let Some(unread) = &mut views[i].unread {
                    *unread += count;
                }
            }
        }
        views.sort_by(|a, b| {
            b.last_ts
                .cmp(&a.last_ts)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });
        Ok(views)
    }
}

/// What a send does after deciding under the room's lock.
enum SendStep {
    /// A repeated `client_msg_id`, answered once the first send is durable.
    Repeat(Stamp, super::Completion),
    /// The id may be on disk only: look, then decide again.
    CheckDisk,
    /// A new message, durable when the completion resolves.
    New(Stamp, super::Completion),
}

/// Whether `sender` may post in `room` now.
fn check_can_post(
    room: &Room,
    state: &super::room::RoomState,
    sender: Option<&UserId>,
) -> Result<(), Error> {
    room.ensure_open(state)?;
    match sender {
        Some(user) if !state.is_member(user) => Err(Error::NotMember(room.id.to_string())),
        _ => Ok(()),
    }
}

fn record_of(message: &Message) -> MessageRecord {
    MessageRecord {
        ts: message.ts,
        sender: message.sender.as_ref().map(|s| s.to_string()),
        kind: message.kind,
        text: message.text.clone(),
        data: message.data.as_ref().map(|d| d.get().to_owned()),
        client_msg_id: message.client_msg_id.clone(),
    }
}
