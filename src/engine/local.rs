//! [`Local`]: the authority of a single node. It decides each change under the room's lock
//! (seq and ts, dedup, membership, the rules of message changes), applies it at once under
//! that same lock, and so hands the writer a room's changes in the order they were decided.
//!
//! A repeat of a change already made submits a barrier (a write with nothing in it): it
//! commits after the original, so even a repeat that races the original answers only once
//! the change is on disk.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::authority::Authority;
use super::change::{Change, Decided, Decision, Made, Post, Proposal};
use super::changes::{judge_in_room, Judging};
use super::commit::Durable;
use super::messages::repeat;
use super::room::{DedupKey, Room, RoomState};
use super::rules::Verdict;
use super::sessions::Disconnect;
use super::Engine;
use crate::error::Error;
use crate::protocol::{now_ms, Message, RoomId, RoomKind, UserId};
use crate::sync::lock;

/// Decides on this node; the default authority.
pub struct Local;

impl Authority for Local {
    fn decide<'a>(
        &'a self,
        engine: &'a Engine,
        proposal: Proposal,
    ) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(async move { engine.decide_locally(proposal).await.map(Decision::Made) })
    }

    fn disconnect<'a>(
        &'a self,
        engine: &'a Engine,
        user: &'a UserId,
        revoke: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let disconnect = Disconnect {
                user_id: user.clone(),
                at_ms: now_ms(),
                revoke,
            };
            engine.apply_disconnect(&disconnect).await
        })
    }

    fn typing(&self, engine: &Engine, room_id: &RoomId, user: &UserId) {
        engine.push_typing(room_id, user);
    }

    fn received(&self, engine: &Engine, room_id: &RoomId, user: &UserId, seq: u64) {
        engine.note_received(room_id, user, seq);
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn duties<'a>(&'a self, _engine: &'a Engine) -> BoxFuture<'a, ()> {
        Box::pin(std::future::pending())
    }
}

fn decided(made: Made, durable: Durable) -> Decided {
    Decided {
        made,
        stamp: None,
        durable,
    }
}

impl Engine {
    async fn decide_locally(&self, proposal: Proposal) -> Result<Decided, Error> {
        match proposal {
            Proposal::Create {
                room_id,
                kind,
                owner,
                members,
            } => self.create_locally(room_id, kind, owner, members).await,
            Proposal::Close { room_id } => self.close_locally(room_id).await,
            Proposal::Join { room_id, user_id } => {
                self.membership_change(Change::Joined { room_id, user_id })
                    .await
            }
            Proposal::Leave { room_id, user_id } => {
                self.membership_change(Change::Left { room_id, user_id })
                    .await
            }
            Proposal::Read {
                room_id,
                user_id,
                seq,
            } => {
                self.in_room(&room_id, |(_, state)| {
                    if !state.is_member(&user_id) {
                        return Err(Error::not_member(room_id.as_str()));
                    }
                    Ok(Change::Read {
                        room_id: room_id.clone(),
                        user_id,
                        seq,
                    })
                })
                .await
            }
            Proposal::Post { room_id, post } => self.post_locally(room_id, post).await,
        }
    }

    /// A member joining or leaving; the members of a direct room never change.
    async fn membership_change(&self, change: Change) -> Result<Decided, Error> {
        let room_id = change.room_id().clone();
        self.in_room(&room_id, |(room, _)| {
            forbid_direct_change(room)?;
            Ok(change)
        })
        .await
    }

    /// Decides a change inside an open room with `decide`, under the room's lock, and
    /// applies it; a change made already is answered once it is durable.
    async fn in_room(
        &self,
        room_id: &RoomId,
        decide: impl FnOnce((&Room, &RoomState)) -> Result<Change, Error>,
    ) -> Result<Decided, Error> {
        let room = self.open_room(room_id).await?;
        let slot = self.inner.writer.reserve().await;
        let mut state = room.state();
        room.ensure_open(&state)?;
        let change = decide((&room, &state))?;
        let (made, completion) = self.apply_to_room(slot, &room, &mut state, change, None);
        Ok(decided(made, Durable::Commit(completion)))
    }
}

/// Membership of a direct room never changes.
fn forbid_direct_change(room: &Room) -> Result<(), Error> {
    if room.kind == RoomKind::Direct {
        return Err(Error::direct_unchangeable());
    }
    Ok(())
}

/// What a post's decision still needs from disk before it can be made; the post comes back
/// with it.
enum Needs {
    /// The dedup window may have lost this `client_msg_id` to disk: look there.
    Dedup(Post),
    /// The target is on disk only: read it, noting `target_commits` of now.
    Target(Post, u64),
}

/// What a post's reads from disk found so far.
#[derive(Default)]
struct Looked {
    /// The room's dedup evictions when the window last missed, so disk was checked.
    evictions: Option<u64>,
    /// The target as read from disk, with the room's `target_commits` then.
    target: Option<(u64, Option<Arc<Message>>)>,
}

impl Engine {
    async fn create_locally(
        &self,
        room_id: RoomId,
        kind: RoomKind,
        owner: Option<UserId>,
        members: Vec<UserId>,
    ) -> Result<Decided, Error> {
        let slot = self.inner.writer.reserve().await;
        let engine = self.clone();
        smol::unblock(move || {
            let _lifecycle = lock(&engine.inner.lifecycle);
            if let Some(room) = engine.room_blocking(&room_id)? {
                if room.state().closed {
                    return Err(Error::closed_id_reused(room_id.as_str()));
                }
                if room.kind != kind || room.owner != owner {
                    return Err(Error::owner_conflict(room_id.as_str()));
                }
                let barrier = engine.barrier(slot, &room);
                return Ok(decided(Made::Before, Durable::Commit(barrier)));
            }
            // Not open, but on disk: it was closed.
            if engine.inner.storage.room(room_id.as_str())?.is_some() {
                return Err(Error::closed_id_reused(room_id.as_str()));
            }
            let (_view, completion) =
                engine.create_room(slot, room_id, kind, owner, &members, now_ms());
            Ok(decided(Made::Now, Durable::Commit(completion)))
        })
        .await
    }

    async fn close_locally(&self, room_id: RoomId) -> Result<Decided, Error> {
        let slot = self.inner.writer.reserve().await;
        let engine = self.clone();
        smol::unblock(move || {
            let _lifecycle = lock(&engine.inner.lifecycle);
            let Some(room) = engine.room_blocking(&room_id)? else {
                let barrier = engine.submit_unbound(slot, Default::default(), || {});
                return Ok(decided(Made::Before, Durable::Commit(barrier)));
            };
            if room.state().closed {
                // Closing in a write still in flight: answer once it is durable.
                let barrier = engine.barrier(slot, &room);
                return Ok(decided(Made::Before, Durable::Commit(barrier)));
            }
            forbid_direct_change(&room)?;
            let completion = engine.close_room_locked(slot, &room, now_ms());
            Ok(decided(Made::Now, Durable::Commit(completion)))
        })
        .await
    }

    /// Decides a message or a change to one: dedup first (a repeat answers with the first
    /// send's stamp), then the rules against the target's current state, then a seq and ts.
    /// Whatever the decision needs from disk is read with the lock released, and the
    /// decision is taken again with it.
    async fn post_locally(&self, room_id: RoomId, post: Post) -> Result<Decided, Error> {
        let room = self.open_room(&room_id).await?;
        let mut looked = Looked::default();
        let mut post = post;
        loop {
            let slot = self.inner.writer.reserve().await;
            match self.decide_post(slot, &room, post, &mut looked)? {
                Ok(decided) => return Ok(decided),
                Err(Needs::Dedup(back)) => {
                    if let Some(id) = &back.client_msg_id {
                        let key = (back.sender.clone(), id.clone());
                        if let Some(stamp) = self.stored_dedup(&room, &key).await? {
                            return Ok(repeat(stamp, Durable::Now));
                        }
                    }
                    post = back;
                }
                Err(Needs::Target(back, commits)) => {
                    let seq = back.target_seq().unwrap_or_default();
                    looked.target = Some((commits, self.stored_message(&room, seq).await?));
                    post = back;
                }
            }
        }
    }

    /// One pass of [`Engine::post_locally`] under the room's lock: decided and applied, or
    /// the post back with what to read from disk first.
    fn decide_post(
        &self,
        slot: crate::storage::writer::Slot,
        room: &Arc<Room>,
        post: Post,
        looked: &mut Looked,
    ) -> Result<Result<Decided, Needs>, Error> {
        let mut state = room.state();
        check_can_post(room, &state, post.sender.as_ref())?;
        if let Some(id) = &post.client_msg_id {
            let key: DedupKey = (post.sender.clone(), id.clone());
            if let Some(stamp) = state.dedup_lookup(&key) {
                let barrier = self.barrier(slot, room);
                return Ok(Ok(repeat(stamp, Durable::Commit(barrier))));
            }
            // What left the window is on disk; the filter check reads no disk, so a new id
            // is decided in this pass.
            if !state.dedup_complete
                && looked.evictions != Some(state.dedup_evictions)
                && self.dedup_may_be_stored(room, &key)
            {
                // Unchanged evictions on the next pass mean nothing left the window since.
                looked.evictions = Some(state.dedup_evictions);
                return Ok(Err(Needs::Dedup(post)));
            }
        }
        let target = match post.change {
            None => None,
            Some(amendment) => {
                match judge_in_room(room, &state, &post, amendment, looked.target.as_ref())? {
                    Judging::OnDisk(commits) => return Ok(Err(Needs::Target(post, commits))),
                    Judging::Judged(_, Verdict::Nothing) => {
                        let barrier = self.barrier(slot, room);
                        return Ok(Ok(decided(Made::Nothing, Durable::Commit(barrier))));
                    }
                    Judging::Judged(target, Verdict::Changes) => Some(target),
                }
            }
        };
        let stamp = state.assigned.next(now_ms());
        let change = Change::Posted {
            room_id: room.id.clone(),
            seq: stamp.seq,
            ts: stamp.ts,
            post,
        };
        let (_, completion) = self.apply_to_room(slot, room, &mut state, change, target);
        Ok(Ok(Decided {
            made: Made::Now,
            stamp: Some(stamp),
            durable: Durable::Commit(completion),
        }))
    }
}

/// Whether `sender` (None: RouteAPI, which needs no membership) may post in `room` now.
pub(super) fn check_can_post(
    room: &Room,
    state: &RoomState,
    sender: Option<&UserId>,
) -> Result<(), Error> {
    room.ensure_open(state)?;
    match sender {
        Some(user) if !state.is_member(user) => Err(Error::not_member(room.id.as_str())),
        _ => Ok(()),
    }
}
