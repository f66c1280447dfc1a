//! Typed writes: every change the engine makes to disk, built here so the engine never names
//! a column family or a key. A [`Batch`] is what one change (or a barrier: an empty batch)
//! hands the group-commit writer; it commits atomically with the others of its group.

use super::codec::{self, MemberRecord, MessageRecord, ReadRecord, RoomRecord, StampRecord};
use super::keys::{self, Cf};

/// One key change.
#[derive(Debug)]
pub enum KeyWrite {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Every key in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
    /// A webhook event for the outbox; its key, the next outbox number, is given when the
    /// write commits, so the outbox is in commit order.
    Event(Vec<u8>),
}

impl KeyWrite {
    /// A put of `value` in the stored record format.
    pub fn put<T: serde::Serialize>(cf: Cf, key: &[u8], value: &T) -> KeyWrite {
        KeyWrite::Put(cf, key.to_vec(), codec::encode(value))
    }
}

/// The writes of one change, applied atomically.
#[derive(Debug, Default)]
pub struct Batch {
    pub(super) writes: Vec<KeyWrite>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// The key changes, for [`super::Storage::write`] (tools that fill a data directory
    /// offline, such as the scale benchmark).
    pub fn writes(&self) -> &[KeyWrite] {
        &self.writes
    }

    /// A room's record: new, or its tombstone once closed.
    pub fn room(&mut self, room_id: &str, record: &RoomRecord) {
        self.writes
            .push(KeyWrite::put(Cf::Rooms, &keys::room(room_id), record));
    }

    /// The number the next new room gets.
    pub fn next_room_number(&mut self, next: u64) {
        self.writes
            .push(KeyWrite::put(Cf::Meta, keys::META_NEXT_ROOM_NUMBER, &next));
    }

    /// Makes `user` a member of `room_id` with read marker `read`.
    pub fn member_added(&mut self, room_id: &str, user: &str, read: ReadRecord, joined_ts: u64) {
        self.writes.push(KeyWrite::put(
            Cf::Members,
            &keys::pair(room_id, user),
            &MemberRecord { joined_ts },
        ));
        self.writes.push(KeyWrite::Put(
            Cf::UserRooms,
            keys::pair(user, room_id),
            Vec::new(),
        ));
        self.read_record(user, room_id, read);
    }

    /// When `room_number`'s membership last changed (activity, for rooms that close
    /// themselves).
    pub fn membership_changed(&mut self, room_number: u64, ts: u64) {
        self.writes.push(KeyWrite::put(
            Cf::Meta,
            &keys::membership_changed(room_number),
            &ts,
        ));
    }

    /// Removes `user` from `room_id`: membership, the reverse index and the read marker.
    pub fn member_removed(&mut self, room_id: &str, user: &str) {
        self.writes
            .push(KeyWrite::Delete(Cf::Members, keys::pair(room_id, user)));
        self.writes
            .push(KeyWrite::Delete(Cf::UserRooms, keys::pair(user, room_id)));
        self.writes
            .push(KeyWrite::Delete(Cf::Reads, keys::pair(user, room_id)));
    }

    /// A member's read marker and counts, after they read or sent.
    pub fn read_record(&mut self, user: &str, room_id: &str, read: ReadRecord) {
        self.writes
            .push(KeyWrite::put(Cf::Reads, &keys::pair(user, room_id), &read));
    }

    /// The `text` and `system` messages `room_number` has had, after a new one.
    pub fn content_count(&mut self, room_number: u64, count: u64) {
        self.writes.push(KeyWrite::put(
            Cf::Meta,
            &keys::content_count(room_number),
            &count,
        ));
    }

    /// Every token of `user` issued at or before `moment_s` (Unix seconds) is refused.
    pub fn revoke(&mut self, user: &str, moment_s: u64) {
        self.writes
            .push(KeyWrite::put(Cf::Meta, &keys::revoked(user), &moment_s));
    }

    /// An `activity` entry: route room `room_id` was last active at or after `ts`.
    pub fn activity(&mut self, ts: u64, room_id: &str) {
        self.writes.push(KeyWrite::Put(
            Cf::Activity,
            keys::activity(ts, room_id),
            Vec::new(),
        ));
    }

    /// Drops the `activity` entry at `ts` of `room_id` (the room closed, or the entry
    /// moves to a later ts).
    pub fn activity_removed(&mut self, ts: u64, room_id: &str) {
        self.writes
            .push(KeyWrite::Delete(Cf::Activity, keys::activity(ts, room_id)));
    }

    /// A message, new or rewritten (a target after a change).
    pub fn message(&mut self, room_number: u64, seq: u64, record: &MessageRecord) {
        self.writes.push(KeyWrite::Put(
            Cf::Messages,
            keys::message(room_number, seq).to_vec(),
            codec::encode_message(record),
        ));
    }

    /// What a repeat of `client_msg_id` from `sender` (None: RouteAPI) answers with.
    pub fn dedup(
        &mut self,
        room_number: u64,
        sender: Option<&str>,
        client_msg_id: &str,
        stamp: StampRecord,
    ) {
        self.writes.push(KeyWrite::put(
            Cf::Dedup,
            &keys::dedup(room_number, sender, client_msg_id),
            &stamp,
        ));
    }

    /// Deletes a room's messages `first_seq..=newest.seq` (retention) and remembers the
    /// newest one's stamp, so the room goes on from it.
    pub fn purge(&mut self, room_number: u64, first_seq: u64, newest: StampRecord) {
        self.writes.push(KeyWrite::DeleteRange(
            Cf::Messages,
            keys::message(room_number, first_seq).to_vec(),
            keys::message(room_number, newest.seq + 1).to_vec(),
        ));
        self.writes
            .push(KeyWrite::put(Cf::Meta, &keys::purged(room_number), &newest));
    }

    /// A webhook event (its JSON), delivered once this batch commits.
    pub fn event(&mut self, json: Vec<u8>) {
        self.writes.push(KeyWrite::Event(json));
    }

    /// A message's pending `notify` (its JSON), due at `due`.
    pub fn pending_notify(&mut self, due: u64, room_id: &str, seq: u64, json: Vec<u8>) {
        self.writes.push(KeyWrite::Put(
            Cf::Notify,
            keys::notify(due, room_id, seq),
            json,
        ));
    }

    /// Drops a pending `notify` (by its key, as [`super::Storage::due_notifies`] gave it).
    pub fn notify_resolved(&mut self, key: Vec<u8>) {
        self.writes.push(KeyWrite::Delete(Cf::Notify, key));
    }

    /// Drops delivered events, by number.
    pub fn events_delivered(&mut self, numbers: impl IntoIterator<Item = u64>) {
        for number in numbers {
            self.writes
                .push(KeyWrite::Delete(Cf::Outbox, keys::outbox(number).to_vec()));
        }
    }

    /// Drops the outbox's events up to number `last` (over `webhooks.max_pending`).
    pub fn events_dropped_through(&mut self, last: u64) {
        self.writes.push(KeyWrite::DeleteRange(
            Cf::Outbox,
            keys::outbox(0).to_vec(),
            keys::outbox(last.saturating_add(1)).to_vec(),
        ));
    }

    /// Cluster mode: the id of the last entry of `shard`'s log applied here.
    pub fn cluster_position(&mut self, shard: u16, position: (u64, u64)) {
        self.writes.push(KeyWrite::put(
            Cf::Meta,
            &keys::cluster_position(shard),
            &position,
        ));
    }

    /// Cluster mode: the Redis data set this node follows.
    pub fn cluster_epoch(&mut self, epoch: &str) {
        self.writes.push(KeyWrite::put(
            Cf::Meta,
            keys::META_CLUSTER_EPOCH,
            &epoch.to_owned(),
        ));
    }
}
