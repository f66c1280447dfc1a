//! Sending messages (seq/ts, dedup, durability, fan-out), read markers, typing, and the
//! user's room list with unread counts.

use std::sync::Arc;

use super::room::{DedupKey, Room, Stamp};
use super::{Completion, Engine, Priority};
use crate::error::Error;
use crate::protocol::{
    encode, now_ms, Message, MessageKind, NewMessage, RoomId, RoomView, ServerFrame, UserId,
};
use crate::storage::{keys, Cf, KeyWrite, MessageRecord, StampRecord};

/// What a send produced.
pub struct Sent {
    pub stamp: Stamp,
    /// False when a repeated `client_msg_id` returned the first send's result.
    pub created: bool,
}

/// A send with its seq assigned and its write queued, not yet durable.
pub struct Accepted {
    sent: Sent,
    /// The commit to wait for; none when the answer came from disk (already durable).
    completion: Option<Completion>,
}

impl Accepted {
    /// Waits until the message is durable (and so visible and pushed).
    pub async fn durable(self) -> Result<Sent, Error> {
        if let Some(completion) = self.completion {
            completion.wait().await?;
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
                        text: text.clone(),
                        data: data.clone(),
                        client_msg_id: client_msg_id.clone(),
                    });
                    let mut writes = vec![KeyWrite::put(
                        Cf::Messages,
                        &keys::message(room.number, stamp.seq),
                        &record_of(&message),
                    )];
                    if let Some(key) = &dedup_key {
                        let dedup = StampRecord {
                            seq: stamp.seq,
                            ts: stamp.ts,
                        };
                        writes.push(KeyWrite::put(
                            Cf::Dedup,
                            &keys::dedup(room.number, sender.map(UserId::as_str), &key.1),
                            &dedup,
                        ));
                        state.dedup_insert(key.clone(), stamp);
                    }
                    let audience = state.audience.clone();
                    let committed_room = room.clone();
                    let completion = self.submit_with(slot, &room, writes, move |engine| {
                        committed_room.state().commit(message.clone());
                        engine.inner.metrics.messages_stored.inc();
                        let frame = encode(&ServerFrame::Message { message: &message });
                        engine
                            .inner
                            .connections
                            .deliver(&audience, None, &frame, Priority::Keep);
                    });
                    SendStep::New(stamp, completion)
                }
            };
            let accepted = |stamp, created, completion| Accepted {
                sent: Sent { stamp, created },
                completion,
            };
            match step {
                SendStep::Repeat(stamp, barrier) => {
                    return Ok(accepted(stamp, false, Some(barrier)));
                }
                SendStep::CheckDisk => {
                    if let Some(key) = &dedup_key {
                        if let Some(stamp) = self.stored_dedup(&room, key).await? {
                            return Ok(accepted(stamp, false, None));
                        }
                    }
                }
                SendStep::New(stamp, completion) => {
                    return Ok(accepted(stamp, true, Some(completion)));
                }
            }
        }
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
        let slot = self.inner.writer.reserve().await;
        let completion = {
            let mut state = room.state();
            let committed = state.committed.seq;
            let member = state
                .members
                .get_mut(user)
                .ok_or_else(|| Error::NotMember(room_id.to_string()))?;
            member.read_seq = member.read_seq.max(seq.min(committed));
            let write = KeyWrite::put(
                Cf::Reads,
                &keys::pair(user.as_str(), room_id.as_str()),
                &member.read_seq,
            );
            self.submit(slot, &room, vec![write], Vec::new())
        };
        completion.wait().await
    }

    /// `typing`: tells the room's other members, best effort (never stored).
    pub fn typing(&self, user: &UserId, room_id: &RoomId) -> Result<(), Error> {
        let room = self.open_room(room_id)?;
        let audience = {
            let state = room.state();
            if !state.is_member(user) {
                return Err(Error::NotMember(room_id.to_string()));
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
        Ok(())
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
