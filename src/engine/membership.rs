//! Room lifecycle and membership: creating route and direct rooms, joining, leaving and
//! closing, each idempotent and durable before it answers.
//!
//! A repeat of a change already made submits a barrier (a write with nothing in it): it
//! commits after the original, so even a repeat that races the original answers only once
//! the change is on disk.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::connections::lock;
use super::room::{Member, Room, RoomState, Stamp};
use super::{Completion, Delivery, Engine};
use crate::config::DirectPolicy;
use crate::error::Error;
use crate::protocol::{encode, now_ms, RoomId, RoomKind, RoomView, ServerFrame, UserId};
use crate::storage::writer::Slot;
use crate::storage::{keys, Cf, KeyWrite, MemberRecord, RoomRecord};

#[cfg(feature = "redis")]
use super::replica::RoomChange;

#[cfg(feature = "redis")]
impl From<crate::cluster::Made> for Outcome {
    fn from(made: crate::cluster::Made) -> Outcome {
        match made {
            crate::cluster::Made::Now => Outcome::Created,
            crate::cluster::Made::Before => Outcome::Unchanged,
        }
    }
}

/// Whether a call changed anything (REST answers 201) or repeated a done change (200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
}

/// Room ids starting with this are direct rooms' (see [`direct_room_id`]).
pub const DIRECT_PREFIX: &str = "dm:";

/// The id of the direct room of two users: the same whichever of them asks, and within the
/// id rules however long the user ids are.
pub fn direct_room_id(a: &UserId, b: &UserId) -> RoomId {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut hash = Sha256::new();
    hash.update(first.as_str().as_bytes());
    hash.update([0xFF]);
    hash.update(second.as_str().as_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    RoomId::parse(&format!("{DIRECT_PREFIX}{hex}")).expect("hex ids are valid")
}

impl Engine {
    /// `PUT /v1/rooms/{id}`: creates a route room owned by `owner` (who joins it), or
    /// confirms it exists with that owner.
    pub async fn create_route_room(
        &self,
        room_id: RoomId,
        owner: UserId,
    ) -> Result<(Outcome, RoomView), Error> {
        if room_id.as_str().starts_with(DIRECT_PREFIX) {
            return Err(Error::BadRequest(format!(
                "room ids starting with {DIRECT_PREFIX:?} are reserved for direct rooms"
            )));
        }
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            let change = RoomChange::Created {
                room_id: room_id.clone(),
                kind: RoomKind::Route,
                owner: Some(owner.clone()),
                members: vec![owner],
                ts: now_ms(),
            };
            let made = cluster.create(&change).await?;
            return Ok((made.into(), self.room_view(&room_id)?));
        }
        let slot = self.inner.writer.reserve().await;
        let engine = self.clone();
        let (outcome, view, completion) = smol::unblock(move || {
            let _lifecycle = lock(&engine.inner.lifecycle);
            if let Some(room) = engine.room(&room_id) {
                let state = room.state();
                if room.kind != RoomKind::Route || room.owner.as_ref() != Some(&owner) {
                    return Err(owner_conflict(&room_id));
                }
                let view = room.view(&state, None);
                let barrier = engine.submit(slot, &room, Vec::new(), Vec::new());
                return Ok((Outcome::Unchanged, view, barrier));
            }
            // Every open room is in memory; one on disk but not in memory was closed.
            if engine.inner.storage.room(room_id.as_str())?.is_some() {
                return Err(closed_id_reused(&room_id));
            }
            let (view, completion) = engine.create_room_locked(
                slot,
                room_id,
                RoomKind::Route,
                Some(owner.clone()),
                &[owner],
                now_ms(),
            );
            Ok((Outcome::Created, view, completion))
        })
        .await?;
        completion.wait().await?;
        Ok((outcome, view))
    }

    /// Creates a room and joins `members`; each gets `joined`. Call holding the lifecycle
    /// lock, which orders room numbers and the counter's writes.
    pub(super) fn create_room_locked(
        &self,
        slot: Slot,
        room_id: RoomId,
        kind: RoomKind,
        owner: Option<UserId>,
        members: &[UserId],
        now: u64,
    ) -> (RoomView, Completion) {
        let number = self
            .inner
            .next_room_number
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = RoomRecord {
            number,
            kind,
            owner: owner.as_ref().map(|o| o.to_string()),
            created_ts: now,
            closed_ts: None,
        };
        let member_map: BTreeMap<UserId, Member> = members
            .iter()
            .map(|user| (user.clone(), Member { read_seq: 0 }))
            .collect();
        let limit = self.inner.config.history.cache_per_room;
        let state = RoomState::new(
            member_map,
            Stamp::default(),
            1,
            VecDeque::new(),
            limit,
            true,
        );
        let room = Arc::new(Room::new(room_id.clone(), number, kind, owner, now, state));
        let mut writes = vec![
            KeyWrite::put(Cf::Rooms, &keys::room(room_id.as_str()), &record),
            KeyWrite::put(Cf::Meta, keys::META_NEXT_ROOM_NUMBER, &(number + 1)),
        ];
        for user in members {
            writes.extend(member_writes(&room_id, user, 0, now));
        }
        let state = room.state();
        let view = room.view(&state, None);
        let joined = encode(&ServerFrame::Joined { room: &view });
        let delivery = Delivery {
            users: state.audience.clone(),
            skip: None,
            frame: joined,
        };
        {
            let mut rooms = self.inner.rooms.write().unwrap_or_else(|e| e.into_inner());
            rooms.insert(room_id.clone(), room.clone());
        }
        {
            let mut index = lock(&self.inner.user_rooms);
            for user in members {
                index
                    .entry(user.clone())
                    .or_default()
                    .insert(room_id.clone());
            }
        }
        let completion = self.submit(slot, &room, writes, vec![delivery]);
        drop(state);
        (view, completion)
    }

    /// `GET /v1/rooms/{id}`.
    pub fn room_view(&self, room_id: &RoomId) -> Result<RoomView, Error> {
        let room = self.open_room(room_id)?;
        let state = room.state();
        Ok(room.view(&state, None))
    }

    /// `DELETE /v1/rooms/{id}`: closes a route room; every member gets `left`. Closing a
    /// room that is closed or never existed succeeds too.
    pub async fn close_room(&self, room_id: RoomId) -> Result<(), Error> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            let change = RoomChange::Closed {
                room_id,
                ts: now_ms(),
            };
            return cluster.update(&change).await.map(|_| ());
        }
        let slot = self.inner.writer.reserve().await;
        let engine = self.clone();
        let completion = smol::unblock(move || {
            let _lifecycle = lock(&engine.inner.lifecycle);
            let Some(room) = engine.room(&room_id) else {
                // Already closed, or closing in a write still in flight: wait for it.
                return Ok(engine.barrier(slot));
            };
            if room.kind == RoomKind::Direct {
                return Err(direct_unchangeable());
            }
            Ok(engine.close_locked(slot, &room, now_ms()))
        })
        .await?;
        completion.wait().await
    }

    /// Closes `room`: its members leave (each gets `left`) and its record becomes a
    /// tombstone. Call holding the lifecycle lock.
    pub(super) fn close_locked(&self, slot: Slot, room: &Arc<Room>, closed_ts: u64) -> Completion {
        let mut state = room.state();
        let record = RoomRecord {
            number: room.number,
            kind: room.kind,
            owner: room.owner.as_ref().map(|o| o.to_string()),
            created_ts: room.created_ts,
            closed_ts: Some(closed_ts),
        };
        let mut writes = vec![KeyWrite::put(
            Cf::Rooms,
            &keys::room(room.id.as_str()),
            &record,
        )];
        let members: Vec<UserId> = std::mem::take(&mut state.members).into_keys().collect();
        for user in &members {
            writes.extend(member_deletes(&room.id, user));
        }
        state.closed = true;
        state.refresh_audience();
        self.inner
            .rooms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&room.id);
        {
            let mut index = lock(&self.inner.user_rooms);
            for user in &members {
                super::unindex(&mut index, user, &room.id);
            }
        }
        let left = Delivery {
            users: members.into(),
            skip: None,
            frame: encode(&ServerFrame::Left { room_id: &room.id }),
        };
        self.submit(slot, room, writes, vec![left])
    }

    /// `PUT /v1/rooms/{id}/members/{user}`: joins `user` (who gets `joined`; the others get
    /// `member_joined`).
    pub async fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(Outcome, RoomView), Error> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            let change = RoomChange::Joined {
                room_id: room_id.clone(),
                user_id: user.clone(),
            };
            let made = cluster.update(&change).await?;
            return Ok((made.into(), self.room_view(room_id)?));
        }
        let room = self.open_room(room_id)?;
        forbid_direct(&room)?;
        let slot = self.inner.writer.reserve().await;
        let (outcome, view, completion) = {
            let mut state = room.state();
            room.ensure_open(&state)?;
            if state.is_member(user) {
                let view = room.view(&state, None);
                (
                    Outcome::Unchanged,
                    view,
                    self.submit(slot, &room, Vec::new(), Vec::new()),
                )
            } else {
                let (view, completion) = self.add_member(slot, &room, &mut state, user);
                (Outcome::Created, view, completion)
            }
        };
        completion.wait().await?;
        Ok((outcome, view))
    }

    /// `DELETE /v1/rooms/{id}/members/{user}`: removes `user` (who gets `left`; the others
    /// get `member_left`). Removing a non-member succeeds; a room that is not open is 404.
    pub async fn leave(&self, room_id: &RoomId, user: &UserId) -> Result<(), Error> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            let change = RoomChange::Left {
                room_id: room_id.clone(),
                user_id: user.clone(),
            };
            return cluster.update(&change).await.map(|_| ());
        }
        let room = self.open_room(room_id)?;
        forbid_direct(&room)?;
        let slot = self.inner.writer.reserve().await;
        let completion = {
            let mut state = room.state();
            room.ensure_open(&state)?;
            self.remove_member(slot, &room, &mut state, user)
        };
        completion.wait().await
    }

    /// Makes `user` a member of `room` (who gets `joined`; the others get `member_joined`).
    /// The new member has read everything sent before they joined.
    pub(super) fn add_member(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        state: &mut RoomState,
        user: &UserId,
    ) -> (RoomView, Completion) {
        let room_id = &room.id;
        let read_seq = state.assigned.seq;
        state.members.insert(user.clone(), Member { read_seq });
        state.refresh_audience();
        lock(&self.inner.user_rooms)
            .entry(user.clone())
            .or_default()
            .insert(room_id.clone());
        let view = room.view(state, None);
        let writes = member_writes(room_id, user, read_seq, now_ms());
        let deliveries = vec![
            Delivery::to(user, encode(&ServerFrame::Joined { room: &view })),
            Delivery {
                users: state.audience.clone(),
                skip: Some(user.clone()),
                frame: encode(&ServerFrame::MemberJoined {
                    room_id,
                    user_id: user,
                }),
            },
        ];
        let completion = self.submit(slot, room, writes, deliveries);
        (view, completion)
    }

    /// Removes `user` from `room` if a member (who gets `left`; the others get
    /// `member_left`); otherwise a barrier.
    pub(super) fn remove_member(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        state: &mut RoomState,
        user: &UserId,
    ) -> Completion {
        let room_id = &room.id;
        if state.members.remove(user).is_none() {
            return self.submit(slot, room, Vec::new(), Vec::new());
        }
        state.refresh_audience();
        super::unindex(&mut lock(&self.inner.user_rooms), user, room_id);
        let deliveries = vec![
            Delivery::to(user, encode(&ServerFrame::Left { room_id })),
            Delivery {
                users: state.audience.clone(),
                skip: None,
                frame: encode(&ServerFrame::MemberLeft {
                    room_id,
                    user_id: user,
                }),
            },
        ];
        self.submit(slot, room, member_deletes(room_id, user), deliveries)
    }

    /// `direct`: the 1:1 room of `user` and `other`, created (both get `joined`) on first
    /// use if `direct.policy` allows it.
    pub async fn open_direct(&self, user: &UserId, other: &UserId) -> Result<RoomView, Error> {
        if user == other {
            return Err(Error::BadRequest(
                "a direct room needs two different users".into(),
            ));
        }
        let room_id = direct_room_id(user, other);
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            if self.room(&room_id).is_none()
                && self.inner.config.direct.policy == DirectPolicy::SharedRoom
                && !self.share_route_room(user, other)
            {
                return Err(no_shared_room(user, other));
            }
            let change = RoomChange::Created {
                room_id: room_id.clone(),
                kind: RoomKind::Direct,
                owner: None,
                members: vec![user.clone(), other.clone()],
                ts: now_ms(),
            };
            cluster.create(&change).await?;
            return self.room_view(&room_id);
        }
        let slot = self.inner.writer.reserve().await;
        let engine = self.clone();
        let (user, other) = (user.clone(), other.clone());
        let (view, completion) = smol::unblock(move || {
            let _lifecycle = lock(&engine.inner.lifecycle);
            if let Some(room) = engine.room(&room_id) {
                let view = room.view(&room.state(), None);
                return Ok((view, engine.submit(slot, &room, Vec::new(), Vec::new())));
            }
            if engine.inner.config.direct.policy == DirectPolicy::SharedRoom
                && !engine.share_route_room(&user, &other)
            {
                return Err(no_shared_room(&user, &other));
            }
            Ok(engine.create_room_locked(
                slot,
                room_id,
                RoomKind::Direct,
                None,
                &[user, other],
                now_ms(),
            ))
        })
        .await?;
        completion.wait().await?;
        Ok(view)
    }

    fn share_route_room(&self, a: &UserId, b: &UserId) -> bool {
        let shared: Vec<RoomId> = {
            let index = lock(&self.inner.user_rooms);
            match (index.get(a), index.get(b)) {
                (Some(a_rooms), Some(b_rooms)) => a_rooms.intersection(b_rooms).cloned().collect(),
                _ => return false,
            }
        };
        shared
            .iter()
            .filter_map(|id| self.room(id))
            .any(|room| room.kind == RoomKind::Route)
    }
}

fn forbid_direct(room: &Room) -> Result<(), Error> {
    if room.kind == RoomKind::Direct {
        return Err(direct_unchangeable());
    }
    Ok(())
}

/// A direct room refused by `direct.policy = "shared_room"`.
fn no_shared_room(user: &UserId, other: &UserId) -> Error {
    Error::Forbidden(format!("{user} and {other} share no route room"))
}

/// A create of an existing room with another owner (or kind).
pub(crate) fn owner_conflict(room_id: &RoomId) -> Error {
    Error::Conflict(format!("room {room_id} exists with another owner"))
}

/// A create of a room that was closed.
pub(crate) fn closed_id_reused(room_id: &RoomId) -> Error {
    Error::Conflict(format!(
        "room {room_id} was closed; closed room ids are not reused"
    ))
}

/// A close of, or a membership change in, a direct room.
pub(crate) fn direct_unchangeable() -> Error {
    Error::Forbidden("direct rooms cannot be closed, and their members cannot change".into())
}

/// The writes that make `user` a member of `room_id`.
fn member_writes(room_id: &RoomId, user: &UserId, read_seq: u64, now: u64) -> Vec<KeyWrite> {
    let (room, user) = (room_id.as_str(), user.as_str());
    vec![
        KeyWrite::put(
            Cf::Members,
            &keys::pair(room, user),
            &MemberRecord { joined_ts: now },
        ),
        KeyWrite::Put(Cf::UserRooms, keys::pair(user, room), Vec::new()),
        KeyWrite::put(Cf::Reads, &keys::pair(user, room), &read_seq),
    ]
}

/// The writes that remove `user` from `room_id`.
fn member_deletes(room_id: &RoomId, user: &UserId) -> Vec<KeyWrite> {
    let (room, user) = (room_id.as_str(), user.as_str());
    vec![
        KeyWrite::Delete(Cf::Members, keys::pair(room, user)),
        KeyWrite::Delete(Cf::UserRooms, keys::pair(user, room)),
        KeyWrite::Delete(Cf::Reads, keys::pair(user, room)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_symmetric_distinct_and_valid() {
        let (a, b, c) = (
            UserId::parse("alice").unwrap(),
            UserId::parse("bob").unwrap(),
            UserId::parse(&"c".repeat(128)).unwrap(),
        );
        assert_eq!(direct_room_id(&a, &b), direct_room_id(&b, &a));
        assert_ne!(direct_room_id(&a, &b), direct_room_id(&a, &c));
        assert!(direct_room_id(&a, &c).as_str().starts_with(DIRECT_PREFIX));
    }
}
