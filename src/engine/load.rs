//! Loading the open rooms from disk at start-up: members with their read markers, the last
//! stamp, the oldest seq kept, and the recent messages for the cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::records::{message_from_record, room_kind, stored_id};
use super::room::{Member, Room, RoomState, Stamp};
use crate::error::StorageError;
use crate::protocol::{RoomId, UserId};
use crate::storage::{SeqRange, Storage};

/// Every open room, and each user's open rooms.
pub struct Loaded {
    pub rooms: HashMap<RoomId, Arc<Room>>,
    pub user_rooms: HashMap<UserId, HashSet<RoomId>>,
}

pub fn open_rooms(storage: &Storage, cache_limit: usize) -> Result<Loaded, StorageError> {
    let mut rooms = HashMap::new();
    let mut user_rooms: HashMap<UserId, HashSet<RoomId>> = HashMap::new();
    for (id, record) in storage.open_rooms()? {
        let room_id: RoomId = stored_id("rooms", &id)?;
        let members = members(storage, &room_id)?;
        let committed = storage
            .last_stamp(record.number)?
            .map_or(Stamp::default(), |last| Stamp {
                seq: last.seq,
                ts: last.ts,
            });
        let first_seq = storage
            .first_seq(record.number)?
            .unwrap_or(committed.seq + 1);
        let recent = storage
            .messages(record.number, SeqRange::Before(u64::MAX), cache_limit)?
            .into_iter()
            .map(|(seq, m)| message_from_record(&room_id, seq, m).map(Arc::new))
            .collect::<Result<_, _>>()?;
        for user in members.keys() {
            user_rooms
                .entry(user.clone())
                .or_default()
                .insert(room_id.clone());
        }
        let mut state = RoomState::new(members, committed, first_seq, recent, cache_limit, false);
        let membership_changed = storage.membership_changed(record.number)?.unwrap_or(0);
        state.membership_changed_ts = record.created_ts.max(membership_changed);
        let owner = record
            .owner
            .as_deref()
            .map(|o| stored_id("rooms", o))
            .transpose()?;
        let room = Room::new(
            room_id.clone(),
            record.number,
            room_kind(record.kind),
            owner,
            record.created_ts,
            state,
        );
        rooms.insert(room_id, Arc::new(room));
    }
    Ok(Loaded { rooms, user_rooms })
}

/// A room's members with their read markers, from disk.
pub fn members(
    storage: &Storage,
    room_id: &RoomId,
) -> Result<BTreeMap<UserId, Member>, StorageError> {
    let mut members = BTreeMap::new();
    for (user, _record) in storage.members(room_id.as_str())? {
        let read_seq = storage.read_marker(&user, room_id.as_str())?.unwrap_or(0);
        members.insert(stored_id("members", &user)?, Member { read_seq });
    }
    Ok(members)
}
