//! Applying a decided [`Change`]: the one place each kind of change becomes storage writes,
//! the room's in-memory transition, and events. Both modes come through here: one node right
//! after deciding, under the same lock; cluster mode for every change read from Redis's logs,
//! through [`Engine::apply`], which makes applying idempotent.
//!
//! The in-memory transition happens at once, under the room's lock, so the next decision
//! sees it (seq counters, members, dedup window, pending target states); what readers see
//! (the cache, the committed stamp) moves only once the batch is durable.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::change::{Change, Made, Post};
use super::commit::{Committed, Completion};
use super::events::Event;
use super::records::{read_record, record_of, stored_room_kind};
use super::room::{Member, Room, RoomState, Stamp, Target};
use super::{rules, Engine};
use crate::error::Error;
use crate::protocol::{now_ms, Message, RoomId, RoomKind, RoomView, UserId};
use crate::storage::writer::Slot;
use crate::storage::{Batch, ReadRecord, RoomRecord, StampRecord};
use crate::sync::lock;

/// What applying one change from a cluster log did.
#[derive(Default)]
pub struct Applied {
    /// The write it queued, if any; the change is durable here once it completes.
    pub completion: Option<Completion>,
    /// Set when the change shows that this node missed earlier ones (the log was trimmed
    /// past its position): what is missing.
    pub gap: Option<String>,
}

impl Engine {
    /// Applies a change that another authority decided (cluster mode's log followers),
    /// queueing its writes behind every change applied before it. Applying again what was
    /// applied already changes nothing, because a node that stops between applying and
    /// recording its log position applies it again.
    pub async fn apply(&self, change: Change) -> Result<Applied, Error> {
        let room_id = change.room_id().clone();
        match change {
            Change::Created { .. } | Change::Closed { .. } => {
                let engine = self.clone();
                let slot = self.inner.writer.reserve().await;
                // Creating and closing consult disk tombstones under the lifecycle lock.
                Ok(smol::unblock(move || {
                    let _lifecycle = lock(&engine.inner.lifecycle);
                    engine.apply_lifecycle(slot, change)
                })
                .await)
            }
            _ => {
                let Some(room) = self.room(&room_id).await? else {
                    return Ok(self.apply_to_absent_room(&room_id, &change).await);
                };
                let mut read = None;
                let mut change = change;
                loop {
                    let slot = self.inner.writer.reserve().await;
                    match self.apply_in_room(slot, &room, change, read.as_ref()) {
                        Ok(applied) => return Ok(applied),
                        Err(OnDisk {
                            change: back,
                            commits,
                            seq,
                        }) => {
                            read = Some((commits, self.stored_message(&room, seq).await?));
                            change = *back;
                        }
                    }
                }
            }
        }
    }

    /// [`Engine::apply`] inside an open room, under its lock: skips what was applied,
    /// detects what was missed, and hands a change whose target is on disk back to be read.
    fn apply_in_room(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        change: Change,
        read: Option<&(u64, Option<Arc<Message>>)>,
    ) -> Result<Applied, OnDisk> {
        let mut state = room.state();
        let mut target = None;
        if let Change::Posted { seq, post, .. } = &change {
            let last = state.assigned.seq;
            if *seq <= last {
                return Ok(Applied::default());
            }
            if *seq != last + 1 {
                let missing = format!("messages {}..{seq} of room {}", last + 1, room.id);
                return Ok(gap(missing));
            }
            if let Some(target_seq) = post.target_seq() {
                match state.target(target_seq, read) {
                    Target::Found(found) => target = Some(found),
                    Target::Missing => {}
                    Target::OnDisk => {
                        return Err(OnDisk {
                            commits: state.target_commits,
                            seq: target_seq,
                            change: Box::new(change),
                        })
                    }
                }
            }
        }
        let (_, completion) = self.apply_to_room(slot, room, &mut state, change, target);
        Ok(Applied {
            completion: Some(completion),
            gap: None,
        })
    }

    /// A membership change or message for a room that is not open here: closed already (a
    /// replay), or never created here (this node missed its creation).
    async fn apply_to_absent_room(&self, room_id: &RoomId, change: &Change) -> Applied {
        let id = room_id.to_string();
        let closed_here = matches!(self.read_storage(move |s| s.room(&id)).await, Ok(Some(_)));
        match change {
            _ if closed_here => Applied::default(),
            Change::Joined { .. } => gap(format!("the creation of room {room_id}")),
            Change::Posted { .. } => gap(format!("room {room_id} (a message for it arrived)")),
            _ => Applied::default(),
        }
    }

    /// Applies a creation or a close; runs holding the lifecycle lock.
    fn apply_lifecycle(&self, slot: Slot, change: Change) -> Applied {
        let completion = match change {
            Change::Created {
                room_id,
                kind,
                owner,
                members,
                ts,
            } => {
                // Open or closed, a room with a record was created here already.
                let stored = matches!(self.inner.storage.room(room_id.as_str()), Ok(Some(_)));
                (self.resident_room(&room_id).is_none() && !stored)
                    .then(|| self.create_room(slot, room_id, kind, owner, &members, ts).1)
            }
            Change::Closed { room_id, ts } => match self.room_blocking(&room_id) {
                Ok(room) => room.map(|room| self.close_room_locked(slot, &room, ts)),
                Err(e) => {
                    log::error!("cannot load room {room_id} to close it: {e}");
                    None
                }
            },
            _ => None,
        };
        Applied {
            completion,
            gap: None,
        }
    }

    /// Creates a room and joins `members`; they get `joined`. Call holding the lifecycle
    /// lock, which orders room numbers and the counter's writes.
    pub(super) fn create_room(
        &self,
        slot: Slot,
        room_id: RoomId,
        kind: RoomKind,
        owner: Option<UserId>,
        members: &[UserId],
        ts: u64,
    ) -> (RoomView, Completion) {
        let number = self
            .inner
            .next_room_number
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = RoomRecord {
            number,
            kind: stored_room_kind(kind),
            owner: owner.as_ref().map(|o| o.to_string()),
            created_ts: ts,
            closed_ts: None,
        };
        let member_map: BTreeMap<UserId, Member> = members
            .iter()
            .map(|user| (user.clone(), Member::default()))
            .collect();
        let limit = self.inner.config.history.cache_per_room;
        let mut state = RoomState::new(
            member_map,
            Stamp::default(),
            1,
            0,
            VecDeque::new(),
            limit,
            true,
        );
        state.membership_changed_ts = ts;
        let room = Arc::new(Room::new(room_id.clone(), number, kind, owner, ts, state));
        let mut batch = Batch::new();
        batch.room(room_id.as_str(), &record);
        batch.next_room_number(number + 1);
        for user in members {
            batch.member_added(room_id.as_str(), user.as_str(), ReadRecord::default(), ts);
        }
        if kind == RoomKind::Route {
            batch.activity(ts, room_id.as_str());
        }
        let state = room.state();
        // Every member starts with nothing unread (their marker is the room's last seq).
        let view = room.view(&state, Some(0), self.epoch());
        let joined = Event::Joined {
            users: state.audience.clone(),
            room: view.clone(),
        };
        self.inner.resident.insert(room.clone());
        let committed = Committed {
            events: vec![joined],
            ..Committed::default()
        };
        let completion = self.submit(slot, &room, batch, committed);
        drop(state);
        self.keep_within_budget();
        (view, completion)
    }

    /// Closes `room`: its members leave (each gets `left`) and its record becomes a
    /// tombstone. It stays in memory, closed, until that is durable. Call holding the
    /// lifecycle lock.
    pub(super) fn close_room_locked(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        closed_ts: u64,
    ) -> Completion {
        let mut state = room.state();
        let record = RoomRecord {
            number: room.number,
            kind: stored_room_kind(room.kind),
            owner: room.owner.as_ref().map(|o| o.to_string()),
            created_ts: room.created_ts,
            closed_ts: Some(closed_ts),
        };
        let mut batch = Batch::new();
        batch.room(room.id.as_str(), &record);
        let members: Vec<UserId> = std::mem::take(&mut state.members).into_keys().collect();
        for user in &members {
            batch.member_removed(room.id.as_str(), user.as_str());
        }
        state.closed = true;
        state.refresh_audience();
        let left = Event::Left {
            users: members.into(),
            room_id: room.id.clone(),
        };
        let committed = Committed {
            events: vec![left],
            closed: true,
            ..Committed::default()
        };
        self.submit(slot, room, batch, committed)
    }

    /// Applies a change inside an open room, under its lock. `target` is the current state
    /// of a change message's target (`None` when it is gone). A change that was made already
    /// (a member who is one, a marker already there) submits a barrier and answers
    /// [`Made::Before`]. The change's webhook events go in its batch.
    pub(super) fn apply_to_room(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        state: &mut RoomState,
        change: Change,
        target: Option<Arc<Message>>,
    ) -> (Made, Completion) {
        match self.transition(room, state, change, target) {
            Some((batch, committed)) => (Made::Now, self.submit(slot, room, batch, committed)),
            None => (Made::Before, self.barrier(slot, room)),
        }
    }

    /// The room's transition for `change`, with its writes and what becomes visible once
    /// they are durable; `None` when it was made already.
    fn transition(
        &self,
        room: &Room,
        state: &mut RoomState,
        change: Change,
        target: Option<Arc<Message>>,
    ) -> Option<(Batch, Committed)> {
        let room_id = &room.id;
        let mut batch = Batch::new();
        let committed = match change {
            Change::Joined { user_id, .. } => {
                if state.is_member(&user_id) {
                    return None;
                }
                // The new member has read everything sent before they joined.
                let member = Member {
                    read_seq: state.assigned.seq,
                    own: 0,
                    base: state.content,
                };
                state.members.insert(user_id.clone(), member);
                state.refresh_audience();
                let now = membership_moved(room, state, &mut batch);
                batch.member_added(room_id.as_str(), user_id.as_str(), read_record(member), now);
                let view = room.view(state, Some(0), self.epoch());
                Committed {
                    events: vec![
                        Event::Joined {
                            users: Arc::from(vec![user_id.clone()]),
                            room: view,
                        },
                        Event::MemberJoined {
                            audience: state.audience.clone(),
                            room_id: room_id.clone(),
                            user_id,
                        },
                    ],
                    ..Committed::default()
                }
            }
            Change::Left { user_id, .. } => {
                state.members.remove(&user_id)?;
                state.refresh_audience();
                batch.member_removed(room_id.as_str(), user_id.as_str());
                membership_moved(room, state, &mut batch);
                Committed {
                    events: vec![
                        Event::Left {
                            users: Arc::from(vec![user_id.clone()]),
                            room_id: room_id.clone(),
                        },
                        Event::MemberLeft {
                            audience: state.audience.clone(),
                            room_id: room_id.clone(),
                            user_id,
                        },
                    ],
                    ..Committed::default()
                }
            }
            Change::Read { user_id, seq, .. } => {
                let member = *state.members.get(&user_id)?;
                let read_seq = member.read_seq.max(seq.min(state.assigned.seq));
                let base = if read_seq == member.read_seq {
                    member.base
                } else {
                    let after = self.others_after(room, state, &user_id, read_seq);
                    (state.content - member.own).saturating_sub(after)
                };
                let moved = Member {
                    read_seq,
                    base,
                    ..member
                };
                state.members.insert(user_id.clone(), moved);
                batch.read_record(user_id.as_str(), room_id.as_str(), read_record(moved));
                if read_seq > member.read_seq {
                    self.read_event(&mut batch, room_id, &user_id, read_seq);
                }
                Committed {
                    events: vec![Event::Read {
                        room_id: room_id.clone(),
                        user_id,
                        seq: read_seq,
                    }],
                    ..Committed::default()
                }
            }
            Change::Posted { seq, ts, post, .. } => {
                let stamp = Stamp { seq, ts };
                let committed = self.apply_post(room, state, &mut batch, stamp, post, target);
                if let Some(message) = committed.message.as_deref() {
                    self.message_event(&mut batch, message);
                    self.pending_notify(&mut batch, message, &state.audience);
                }
                committed
            }
            Change::Created { .. } | Change::Closed { .. } => return None,
        };
        Some((batch, committed))
    }

    /// A new message (or change) at `stamp`: stored, remembered for dedup, and its target
    /// rewritten in its new state.
    fn apply_post(
        &self,
        room: &Room,
        state: &mut RoomState,
        batch: &mut Batch,
        stamp: Stamp,
        post: Post,
        target: Option<Arc<Message>>,
    ) -> Committed {
        let kind = post.kind();
        let mut message = Message::new(
            room.id.clone(),
            stamp.seq,
            stamp.ts,
            post.sender,
            kind,
            post.text,
        );
        message.data = post.data;
        message.client_msg_id = post.client_msg_id;
        if let Some(amendment) = post.change {
            message.target_seq = Some(amendment.target_seq());
            message.removed = matches!(
                amendment,
                super::change::Amendment::Reaction { removed: true, .. }
            );
        }
        batch.message(room.number, stamp.seq, &record_of(&message));
        if let Some(id) = &message.client_msg_id {
            let sender = message.sender.clone();
            let record = StampRecord {
                seq: stamp.seq,
                ts: stamp.ts,
            };
            batch.dedup(room.number, sender.as_ref().map(UserId::as_str), id, record);
            state.dedup_insert((sender, id.clone()), stamp);
        }
        let target = post.change.zip(target).map(|(amendment, target)| {
            let next = Arc::new(rules::changed(&target, &message, amendment));
            batch.message(room.number, next.seq, &record_of(&next));
            state.target_changing(next.clone(), stamp.seq);
            next
        });
        let message = Arc::new(message);
        state.assign(message.clone());
        if kind.is_content() {
            batch.content_count(room.number, state.content);
            if let Some(user) = &message.sender {
                if let Some(member) = state.members.get_mut(user) {
                    member.own += 1;
                    batch.read_record(user.as_str(), room.id.as_str(), read_record(*member));
                }
            }
        }
        Committed {
            events: vec![Event::Message {
                audience: state.audience.clone(),
                message: message.clone(),
            }],
            message: Some(message),
            target,
            ..Committed::default()
        }
    }
}

impl Engine {
    /// Content messages by others than `user` after seq `after`, up to the last assigned:
    /// from memory, or from disk for what the cache no longer holds. That disk read happens
    /// under the room's lock, but only for a marker that moves to a seq older than the whole
    /// cache, which a client reading what it was shown never does.
    fn others_after(&self, room: &Room, state: &RoomState, user: &UserId, after: u64) -> u64 {
        if let Some(count) = state.others_after(user, after) {
            return count;
        }
        let upto = state
            .recent
            .front()
            .map_or(state.committed.seq, |m| m.seq - 1);
        let stored = self
            .inner
            .storage
            .count_unread(room.number, after, upto, user.as_str())
            .unwrap_or_else(|e| {
                log::error!("cannot count unread messages in room {}: {e}", room.id);
                0
            });
        let newer = state.others_after(user, upto).unwrap_or(0);
        stored + newer
    }
}

/// Records that `room`'s membership changed now (activity, for rooms that close themselves),
/// in memory and in `batch`; returns now.
fn membership_moved(room: &Room, state: &mut RoomState, batch: &mut Batch) -> u64 {
    let now = now_ms();
    state.membership_changed_ts = state.membership_changed_ts.max(now);
    batch.membership_changed(room.number, now);
    now
}

/// A change whose target must be read from disk (message `seq`, read while the room had
/// `commits` target commits) before it can be applied.
struct OnDisk {
    change: Box<Change>,
    commits: u64,
    seq: u64,
}

fn gap(what: String) -> Applied {
    Applied {
        completion: None,
        gap: Some(what),
    }
}
