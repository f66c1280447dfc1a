//! Reading one room from disk: its record, members with their read counts, the last stamp,
//! the oldest seq kept, its content count, and the recent messages for the cache. What the
//! resident set loads on a room's first use, and what `rooms` reads for rooms not in memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::records::{message_from_record, room_kind, stored_id};
use super::room::{Member, Room, RoomState, Stamp};
use crate::error::StorageError;
use crate::protocol::{RoomId, UserId};
use crate::storage::{SeqRange, Storage};

/// `room_id` as stored, with up to `cache_limit` recent messages; `None` when it was never
/// created or is closed.
pub fn room(
    storage: &Storage,
    room_id: &RoomId,
    cache_limit: usize,
) -> Result<Option<Room>, StorageError> {
    let Some(record) = storage.room(room_id.as_str())? else {
        return Ok(None);
    };
    if record.closed_ts.is_some() {
        return Ok(None);
    }
    let owner = record
        .owner
        .as_deref()
        .map(|o| stored_id("rooms", o))
        .transpose()?;
    let state = state(
        storage,
        room_id,
        record.number,
        record.created_ts,
        cache_limit,
    )?;
    Ok(Some(Room::new(
        room_id.clone(),
        record.number,
        room_kind(record.kind),
        owner,
        record.created_ts,
        state,
    )))
}

/// The in-memory state of an open room, as stored.
pub fn state(
    storage: &Storage,
    room_id: &RoomId,
    number: u64,
    created_ts: u64,
    cache_limit: usize,
) -> Result<RoomState, StorageError> {
    let committed = storage
        .last_stamp(number)?
        .map_or(Stamp::default(), |last| Stamp {
            seq: last.seq,
            ts: last.ts,
        });
    let first_seq = storage.first_seq(number)?.unwrap_or(committed.seq + 1);
    let recent: VecDeque<_> = if cache_limit == 0 {
        VecDeque::new()
    } else {
        storage
            .messages(number, SeqRange::Before(u64::MAX), cache_limit)?
            .into_iter()
            .map(|(seq, m)| message_from_record(room_id, seq, m).map(Arc::new))
            .collect::<Result<_, _>>()?
    };
    let content = storage.content_count(number)?;
    let mut state = RoomState::new(
        members(storage, room_id)?,
        committed,
        first_seq,
        content,
        recent,
        cache_limit,
        false,
    );
    let membership_changed = storage.membership_changed(number)?.unwrap_or(0);
    state.membership_changed_ts = created_ts.max(membership_changed);
    Ok(state)
}

/// A room's members with their read markers and counts, from disk.
fn members(storage: &Storage, room_id: &RoomId) -> Result<BTreeMap<UserId, Member>, StorageError> {
    let mut members = BTreeMap::new();
    for (user, _record) in storage.members(room_id.as_str())? {
        let read = storage
            .read_record(&user, room_id.as_str())?
            .unwrap_or_default();
        let member = Member {
            read_seq: read.seq,
            own: read.own,
            base: read.base,
        };
        members.insert(stored_id("members", &user)?, member);
    }
    Ok(members)
}
