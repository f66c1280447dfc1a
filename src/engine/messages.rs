//! Sending messages, read markers, typing, and the user's room list with unread counts.

use super::change::{Decided, Made, Post, Proposal};
use std::sync::Arc;

use super::room::{DedupKey, Room, Stamp};
use super::{Durable, Engine, Priority};
use crate::error::Error;
use crate::protocol::{encode, NewMessage, RoomId, RoomView, RoomsPage, ServerFrame, UserId};
use crate::sync::lock;

/// What a send produced.
pub struct Sent {
    pub stamp: Stamp,
    /// False when a repeated `client_msg_id` returned the first send's result.
    pub created: bool,
}

/// A send (or change) with its seq assigned and its write queued, not yet durable.
pub struct Accepted {
    /// `None` for a change that changes nothing (answered `ok`).
    sent: Option<Sent>,
    durable: Durable,
}

impl Accepted {
    /// Waits until the message is durable (and so visible and pushed).
    pub async fn durable(self) -> Result<Option<Sent>, Error> {
        self.durable.wait().await?;
        Ok(self.sent)
    }

    fn of(decided: Decided) -> Result<Accepted, Error> {
        let Decided {
            made,
            stamp,
            durable,
        } = decided;
        let sent = match (made, stamp) {
            (Made::Nothing, _) => None,
            (made, Some(stamp)) => Some(Sent {
                stamp,
                created: made == Made::Now,
            }),
            (_, None) => return Err(Error::Internal("a post was decided with no seq".into())),
        };
        Ok(Accepted { sent, durable })
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
        let sent = self
            .accept_send(room_id, sender, message)
            .await?
            .durable()
            .await?;
        sent.ok_or_else(|| Error::Internal("a send changed nothing".into()))
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
        let (text, data, client_msg_id) = message.into_parts();
        let post = Post {
            sender: sender.cloned(),
            change: None,
            text,
            data,
            client_msg_id,
        };
        self.accept_post(room_id, post).await
    }

    /// Has `post` decided: a send, or a change (changes.rs).
    pub(super) async fn accept_post(
        &self,
        room_id: &RoomId,
        post: Post,
    ) -> Result<Accepted, Error> {
        let room_id = room_id.clone();
        Accepted::of(self.propose(Proposal::Post { room_id, post }).await?)
    }

    /// The stamp a repeated `client_msg_id` was first answered with, from disk.
    pub(super) async fn stored_dedup(
        &self,
        room: &Room,
        key: &DedupKey,
    ) -> Result<Option<Stamp>, Error> {
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
        let seq = seq.min(room.state().committed.seq);
        let proposal = Proposal::Read {
            room_id: room_id.clone(),
            user_id: user.clone(),
            seq,
        };
        self.propose(proposal).await?.durable.wait().await
    }

    /// `typing`: tells the room's other members, best effort (never stored).
    pub fn typing(&self, user: &UserId, room_id: &RoomId) -> Result<(), Error> {
        let room = self.open_room(room_id)?;
        if !room.state().is_member(user) {
            return Err(Error::not_member(room_id.as_str()));
        }
        // In cluster mode it reaches every node's members through Redis, this node's too.
        self.inner.authority.typing(self, room_id, user);
        Ok(())
    }

    /// Pushes `typing` to the members of `room_id` other than `user`, if `user` is one.
    pub fn push_typing(&self, room_id: &RoomId, user: &UserId) {
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

    /// `rooms`: the user's rooms with their unread counts, most recently active first (by
    /// `last_ts`, or `created_ts` for a room with no messages), strictly older than
    /// `page.before_ts` and at most `page.limit` of them; and whether more are older.
    pub async fn rooms_of(&self, user: &UserId, page: &RoomsPage) -> Result<RoomsList, Error> {
        let ids: Vec<RoomId> = lock(&self.inner.user_rooms)
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default();
        let mut rooms: Vec<(u64, Arc<Room>)> = ids
            .iter()
            .filter_map(|id| self.room(id))
            .map(|room| {
                let active = activity(&room.state(), room.created_ts);
                (active, room)
            })
            .filter(|(active, _)| page.before_ts.is_none_or(|before| *active < before))
            .collect();
        rooms.sort_by(|(a_ts, a), (b_ts, b)| b_ts.cmp(a_ts).then_with(|| a.id.cmp(&b.id)));
        let has_more = page.limit.is_some_and(|limit| rooms.len() > limit);
        if let Some(limit) = page.limit {
            rooms.truncate(limit);
        }
        let ids: Vec<RoomId> = rooms.into_iter().map(|(_, room)| room.id.clone()).collect();
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
                .filter(|m| {
                    m.seq > marker && m.kind.is_content() && m.sender.as_ref() != Some(user)
                })
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
                            Ok((i, s.count_unread(number, after, upto, user.as_str())?))
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
        Ok(RoomsList {
            rooms: views,
            has_more,
        })
    }
}

/// A room's place in the `rooms` order: its last message's ts, or its creation.
fn activity(state: &super::room::RoomState, created_ts: u64) -> u64 {
    if state.committed.seq == 0 {
        created_ts
    } else {
        state.committed.ts
    }
}

/// One page of a user's rooms.
pub struct RoomsList {
    pub rooms: Vec<RoomView>,
    /// Whether rooms older than the last one on the page remain (only with a `limit`).
    pub has_more: bool,
}
