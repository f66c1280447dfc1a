//! Room lifecycle and membership as requests see them: creating route and direct rooms,
//! joining, leaving and closing, each idempotent and durable before it answers. Each is
//! validated here and decided by the authority (local.rs, or the cluster).

use sha2::{Digest, Sha256};

use super::change::{Made, Proposal};
use super::{Engine, Scope};
use crate::config::DirectPolicy;
use crate::error::Error;
use crate::protocol::{RoomId, RoomKind, RoomView, UserId};

/// Whether a call changed anything (REST answers 201) or repeated a done change (200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
}

impl From<Made> for Outcome {
    fn from(made: Made) -> Outcome {
        match made {
            Made::Now => Outcome::Created,
            Made::Before | Made::Nothing => Outcome::Unchanged,
        }
    }
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
        let proposal = Proposal::Create {
            room_id: room_id.clone(),
            kind: RoomKind::Route,
            owner: Some(owner.clone()),
            members: vec![owner],
        };
        let outcome = self.settle(proposal).await?;
        Ok((outcome, self.room_view_here(&room_id).await?))
    }

    /// `GET /v1/rooms/{id}`.
    pub async fn room_view(&self, room_id: &RoomId) -> Result<RoomView, Error> {
        self.caught_up(Scope::Room(room_id)).await?;
        self.room_view_here(room_id).await
    }

    /// [`Engine::room_view`] as this node has it now: after a change it has applied.
    async fn room_view_here(&self, room_id: &RoomId) -> Result<RoomView, Error> {
        let room = self.open_room(room_id).await?;
        let state = room.state();
        Ok(room.view(&state, None, self.epoch()))
    }

    /// `DELETE /v1/rooms/{id}`: closes a route room; every member gets `left`. Closing a
    /// room that is closed or never existed succeeds too.
    pub async fn close_room(&self, room_id: RoomId) -> Result<(), Error> {
        self.settle(Proposal::Close { room_id }).await.map(|_| ())
    }

    /// `PUT /v1/rooms/{id}/members/{user}`: joins `user` (who gets `joined`; the others get
    /// `member_joined`).
    pub async fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(Outcome, RoomView), Error> {
        let proposal = Proposal::Join {
            room_id: room_id.clone(),
            user_id: user.clone(),
        };
        let outcome = self.settle(proposal).await?;
        Ok((outcome, self.room_view_here(room_id).await?))
    }

    /// `DELETE /v1/rooms/{id}/members/{user}`: removes `user` (who gets `left`; the others
    /// get `member_left`). Removing a non-member succeeds; a room that is not open is 404.
    pub async fn leave(&self, room_id: &RoomId, user: &UserId) -> Result<(), Error> {
        let proposal = Proposal::Leave {
            room_id: room_id.clone(),
            user_id: user.clone(),
        };
        self.settle(proposal).await.map(|_| ())
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
        if self.inner.config.direct.policy == DirectPolicy::SharedRoom {
            // Whether the room exists, and which rooms the two share, as any node has it.
            self.caught_up(Scope::Room(&room_id)).await?;
            if self.room(&room_id).await?.is_none() {
                self.caught_up(Scope::Everything).await?;
                if !self.share_route_room(user, other).await? {
                    return Err(Error::no_shared_room(user.as_str(), other.as_str()));
                }
            }
        }
        let proposal = Proposal::Create {
            room_id: room_id.clone(),
            kind: RoomKind::Direct,
            owner: None,
            members: vec![user.clone(), other.clone()],
        };
        self.settle(proposal).await?;
        let room = self.open_room(&room_id).await?;
        let state = room.state();
        Ok(room.view(&state, state.unread(user), self.epoch()))
    }

    /// Has `proposal` decided and waits until it is durable here.
    async fn settle(&self, proposal: Proposal) -> Result<Outcome, Error> {
        let decided = self.propose(proposal).await?;
        decided.durable.wait().await?;
        Ok(decided.made.into())
    }

    /// Whether `a` and `b` are both members of a route room, from the disk's index of each
    /// user's rooms (both lists are in id order). Route room ids never have the direct
    /// prefix.
    async fn share_route_room(&self, a: &UserId, b: &UserId) -> Result<bool, Error> {
        let (a, b) = (a.clone(), b.clone());
        self.read_storage(move |s| {
            let a_rooms = s.rooms_of_user(a.as_str())?;
            let b_rooms = s.rooms_of_user(b.as_str())?;
            let route = |id: &&String| !id.starts_with(DIRECT_PREFIX);
            Ok(a_rooms
                .iter()
                .filter(route)
                .any(|id| b_rooms.binary_search(id).is_ok()))
        })
        .await
    }
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
