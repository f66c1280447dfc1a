//! Sending messages, read markers, typing, and the user's room list with unread counts.

use super::change::{Decided, Decision, Made, Post, Proposal};
use super::commit::Durable;
use super::local::check_can_post;
use super::records::stored_id;
use super::room::{DedupKey, Room, Stamp};
use super::{Engine, Priority, Scope};
use crate::error::Error;
use crate::protocol::{encode, NewMessage, RoomId, RoomView, RoomsPage, ServerFrame, UserId};

/// What a send produced.
pub struct Sent {
    pub stamp: Stamp,
    /// False when a repeated `client_msg_id` returned the first send's result.
    pub created: bool,
}

/// A send (or change) decided, or queued for its decision in order, not yet durable.
pub struct Accepted(Decision);

impl Accepted {
    /// Waits until the message is decided and durable (and so visible and pushed); `None`
    /// for a change that changes nothing (answered `ok`).
    pub async fn durable(self) -> Result<Option<Sent>, Error> {
        let Decided {
            made,
            stamp,
            durable,
        } = self.0.decided().await?;
        let sent = match (made, stamp) {
            (Made::Nothing, _) => None,
            (made, Some(stamp)) => Some(Sent {
                stamp,
                created: made == Made::Now,
            }),
            (_, None) => return Err(Error::Internal("a post was decided with no seq".into())),
        };
        durable.wait().await?;
        Ok(sent)
    }
}

/// A repeated `client_msg_id` answered with the first send's `stamp`.
pub(super) fn repeat(stamp: Stamp, durable: Durable) -> Decided {
    Decided {
        made: Made::Before,
        stamp: Some(stamp),
        durable,
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

    /// The first half of [`Engine::send`]: assigns the seq and queues the write (or, in
    /// cluster mode, queues the send for Redis to decide), without waiting for either, so
    /// one connection can have many sends in flight. Sends accepted one after another from
    /// one caller get increasing seqs.
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
        Ok(Accepted(
            self.queue(Proposal::Post { room_id, post }).await?,
        ))
    }

    /// A repeat of a `client_msg_id` this node has already applied, found in the room's
    /// dedup window or on disk: made before, with the first send's stamp, durable once the
    /// first send is. `None` when this node has no such send, or when it finds that the
    /// sender may no longer post (the authority decides then). In cluster mode Redis keeps
    /// only two recent generations of `client_msg_id`s, and this answers for the rest.
    pub async fn known_repeat(
        &self,
        room_id: &RoomId,
        post: &Post,
    ) -> Result<Option<Decided>, Error> {
        let Some(id) = &post.client_msg_id else {
            return Ok(None);
        };
        let Some(room) = self.room(room_id).await? else {
            return Ok(None);
        };
        let key: DedupKey = (post.sender.clone(), id.clone());
        let may_post = |room: &Room| {
            let state = room.state();
            check_can_post(room, &state, post.sender.as_ref()).is_ok()
        };
        loop {
            let (in_window, complete, evictions) = {
                let state = room.state();
                let in_window = state.dedup_lookup(&key);
                (in_window, state.dedup_complete, state.dedup_evictions)
            };
            if let Some(stamp) = in_window {
                if !may_post(&room) {
                    return Ok(None);
                }
                // Submitted after the first send's write, so it commits after it.
                let slot = self.inner.writer.reserve().await;
                let barrier = self.barrier(slot, &room);
                return Ok(Some(repeat(stamp, Durable::Commit(barrier))));
            }
            // The filter check spares a new id the hop to a blocking thread, which costs
            // more than its send.
            if complete || !self.dedup_may_be_stored(&room, &key) {
                return Ok(None);
            }
            if let Some(stamp) = self.stored_dedup(&room, &key).await? {
                return Ok(may_post(&room).then(|| repeat(stamp, Durable::Now)));
            }
            // Nothing left the window while disk was read: what it now misses is not here.
            if room.state().dedup_evictions == evictions {
                return Ok(None);
            }
        }
    }

    /// Whether a repeated `client_msg_id` may be on disk: `false` means it is not. Reads no
    /// disk, so it is cheap enough under the room's lock, and rules out nearly every new id.
    pub(super) fn dedup_may_be_stored(&self, room: &Room, key: &DedupKey) -> bool {
        let sender = key.0.as_ref().map(UserId::as_str);
        self.inner
            .storage
            .dedup_may_exist(room.number, sender, &key.1)
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
        // The user may have seen `seq` pushed by another node than this one.
        self.caught_up(Scope::Room(room_id)).await?;
        let room = self.open_room(room_id).await?;
        let seq = seq.min(room.state().committed.seq);
        let proposal = Proposal::Read {
            room_id: room_id.clone(),
            user_id: user.clone(),
            seq,
        };
        self.propose(proposal).await?.durable.wait().await
    }

    /// `received`: the user's app has the room's messages up to `seq` (no reply; members
    /// only). Kept in memory with the room: it only spares the user a `notify`.
    pub async fn received(&self, user: &UserId, room_id: &RoomId, seq: u64) -> Result<(), Error> {
        self.caught_up(Scope::Room(room_id)).await?;
        let room = self.open_room(room_id).await?;
        let seq = {
            let state = room.state();
            if !state.is_member(user) {
                return Err(Error::not_member(room_id.as_str()));
            }
            seq.min(state.committed.seq)
        };
        // In cluster mode it reaches every node, this one included.
        self.inner.authority.received(self, room_id, user, seq);
        Ok(())
    }

    /// Records a `received` (from this node or another) in the room, if it is in memory.
    pub fn note_received(&self, room_id: &RoomId, user: &UserId, seq: u64) {
        let Some(room) = self.resident_room(room_id) else {
            return;
        };
        let mut state = room.state();
        if state.is_member(user) {
            let acked = state.received.entry(user.clone()).or_default();
            *acked = (*acked).max(seq);
        }
    }

    /// `typing`: tells the room's other members, best effort (never stored).
    pub async fn typing(&self, user: &UserId, room_id: &RoomId) -> Result<(), Error> {
        let room = self.open_room(room_id).await?;
        if !room.state().is_member(user) {
            return Err(Error::not_member(room_id.as_str()));
        }
        // In cluster mode it reaches every node's members through Redis, this node's too.
        self.inner.authority.typing(self, room_id, user);
        Ok(())
    }

    /// Pushes `typing` to the members of `room_id` other than `user`, if `user` is one.
    /// Best effort: a room not in memory here is not loaded for it (in cluster mode, a room
    /// in use on any node is loaded on every node by the changes they apply).
    pub fn push_typing(&self, room_id: &RoomId, user: &UserId) {
        let Some(room) = self.resident_room(room_id) else {
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
    ///
    /// The rooms come from the disk's index of the user's rooms. A room in memory answers
    /// from memory (it may be ahead of the disk); the others are read from disk without being
    /// loaded, so listing many rooms does not push the rooms in use out of memory. Unread
    /// counts are differences of counters either way, never a count of messages.
    pub async fn rooms_of(&self, user: &UserId, page: &RoomsPage) -> Result<RoomsList, Error> {
        self.caught_up(Scope::Everything).await?;
        self.rooms_here(user, page).await
    }

    /// [`Engine::rooms_of`] as this node has it now, for callers that caught up already.
    pub(super) async fn rooms_here(
        &self,
        user: &UserId,
        page: &RoomsPage,
    ) -> Result<RoomsList, Error> {
        let engine = self.clone();
        let (user, page) = (user.clone(), page.clone());
        smol::unblock(move || engine.rooms_of_blocking(&user, &page)).await
    }

    pub(super) fn rooms_of_blocking(
        &self,
        user: &UserId,
        page: &RoomsPage,
    ) -> Result<RoomsList, Error> {
        let storage = &self.inner.storage;
        let mut rooms: Vec<(u64, RoomView)> = Vec::new();
        for id in storage.rooms_of_user(user.as_str())? {
            let room_id: RoomId = stored_id("user_rooms", &id)?;
            let Some(room) = self.room_now(&room_id)? else {
                continue;
            };
            let state = room.state();
            let Some(unread) = state.unread(user) else {
                continue;
            };
            let active = if state.committed.seq == 0 {
                room.created_ts
            } else {
                state.committed.ts
            };
            if page.before_ts.is_none_or(|before| active < before) {
                rooms.push((active, room.view(&state, Some(unread), self.epoch())));
            }
        }
        rooms
            .sort_by(|(a_ts, a), (b_ts, b)| b_ts.cmp(a_ts).then_with(|| a.room_id.cmp(&b.room_id)));
        let has_more = page.limit.is_some_and(|limit| rooms.len() > limit);
        if let Some(limit) = page.limit {
            rooms.truncate(limit);
        }
        Ok(RoomsList {
            rooms: rooms.into_iter().map(|(_, view)| view).collect(),
            has_more,
        })
    }
}

/// One page of a user's rooms.
pub struct RoomsList {
    pub rooms: Vec<RoomView>,
    /// Whether rooms older than the last one on the page remain (only with a `limit`).
    pub has_more: bool,
}
