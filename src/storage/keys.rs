//! Every RocksDB key: the column-family catalog with each family's key layout, and the one
//! place keys are encoded and decoded.
//!
//! Ids are ASCII (`[A-Za-z0-9._:@-]`) and `client_msg_id` is UTF-8, so neither ever holds the
//! byte 0xFF: it separates the parts of a compound key, and a prefix ending in it matches
//! exactly one id. Numbers are big-endian so that byte order is numeric order.

/// The column families. The layout of each family's keys and values is written beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// room id -> `RoomRecord` (kind, owner, number, created, closed). Closed rooms stay as
    /// tombstones so a closed id is never reused.
    Rooms,
    /// room id 0xFF user id -> `MemberRecord` (joined at).
    Members,
    /// user id 0xFF room id -> empty: the reverse index behind `rooms`.
    UserRooms,
    /// room number (u64 BE) seq (u64 BE) -> `MessageRecord`.
    Messages,
    /// room number (u64 BE) sender 0xFF client_msg_id -> `StampRecord` (seq, ts). System
    /// messages have an empty sender, which no user id can be.
    Dedup,
    /// user id 0xFF room id -> `ReadRecord` (last read seq and the member's counts).
    Reads,
    /// `META_*` keys: schema version (u32), room-number counter (u64), history epoch
    /// (string); and
    /// `purged` 0xFF room number (u64 BE) -> `StampRecord`, the newest message retention
    /// deleted, so a room whose every message expired still knows its last seq and ts;
    /// `membership` 0xFF room number (u64 BE) -> u64, when a member last joined or left
    /// (`rooms.close_after_idle_days` counts it as activity);
    /// `content` 0xFF room number (u64 BE) -> u64, the `text` and `system` messages the room
    /// ever had (unread counts are differences of it);
    /// `revoked` 0xFF user id -> u64, the moment (Unix seconds) at or before which every
    /// token of that user was revoked.
    /// Cluster mode adds `cluster_position` 0xFF shard (u16 BE) -> (u64, u64), the id of
    /// the last entry of that shard's log applied here; and `cluster_epoch` -> the string
    /// naming the Redis data set those positions belong to.
    Meta,
    /// ts (u64 BE) room id -> empty: one entry per open route room, whose ts is at most the
    /// room's last activity. The idle-room sweep reads the entries older than its cutoff
    /// and either closes the room or moves the entry to the room's real last activity, so
    /// nothing is written per message.
    Activity,
    /// outbox number (u64 BE, in commit order) -> an event's JSON: the webhook events not
    /// delivered yet.
    Outbox,
    /// due ts (u64 BE), room id, 0xFF, seq (u64 BE) -> a message's pending `notify` (JSON):
    /// resolved into a `notify` event in the outbox once due.
    Notify,
}

impl Cf {
    pub const ALL: [Cf; 10] = [
        Cf::Rooms,
        Cf::Members,
        Cf::UserRooms,
        Cf::Messages,
        Cf::Dedup,
        Cf::Reads,
        Cf::Meta,
        Cf::Activity,
        Cf::Outbox,
        Cf::Notify,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Rooms => "rooms",
            Cf::Members => "members",
            Cf::UserRooms => "user_rooms",
            Cf::Messages => "messages",
            Cf::Dedup => "dedup",
            Cf::Reads => "reads",
            Cf::Meta => "meta",
            Cf::Activity => "activity",
            Cf::Outbox => "outbox",
            Cf::Notify => "notify",
        }
    }
}

/// Separates the parts of compound keys; never part of an id or a UTF-8 string.
pub const SEP: u8 = 0xFF;

/// `meta`: schema version (u32) of the data directory.
pub const META_SCHEMA_VERSION: &[u8] = b"schema_version";
/// `meta`: the number the next new room gets (u64).
pub const META_NEXT_ROOM_NUMBER: &[u8] = b"next_room_number";

/// `meta`: the history epoch (a string), new after a restore.
pub const META_EPOCH: &[u8] = b"epoch";

/// `meta`: which Redis data set the cluster positions belong to (a string).
pub const META_CLUSTER_EPOCH: &[u8] = b"cluster_epoch";

/// `meta` key of the last applied entry of one shard's cluster log.
pub fn cluster_position(shard: u16) -> Vec<u8> {
    let mut key = b"cluster_position".to_vec();
    key.push(SEP);
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

/// `meta` key of a room's [`crate::storage::StampRecord`] of purged history.
pub fn purged(room_number: u64) -> Vec<u8> {
    per_room(b"purged", room_number)
}

/// `meta` key of when a room's membership last changed.
pub fn membership_changed(room_number: u64) -> Vec<u8> {
    per_room(b"membership", room_number)
}

/// `meta` key of a room's content count.
pub fn content_count(room_number: u64) -> Vec<u8> {
    per_room(b"content", room_number)
}

/// `meta` key of a user's token revocation.
pub fn revoked(user_id: &str) -> Vec<u8> {
    let mut key = b"revoked".to_vec();
    key.push(SEP);
    key.extend_from_slice(user_id.as_bytes());
    key
}

/// `activity` key: `ts` (u64 BE) then the room id.
pub fn activity(ts: u64, room_id: &str) -> Vec<u8> {
    let mut key = ts.to_be_bytes().to_vec();
    key.extend_from_slice(room_id.as_bytes());
    key
}

/// Splits an `activity` key into its ts and room id.
pub fn split_activity(key: &[u8]) -> Option<(u64, &str)> {
    let (ts, room_id) = key.split_at_checked(8)?;
    let ts = u64::from_be_bytes(ts.try_into().ok()?);
    Some((ts, std::str::from_utf8(room_id).ok()?))
}

/// A per-room `meta` key: `name` 0xFF room number (u64 BE).
fn per_room(name: &[u8], room_number: u64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(SEP);
    key.extend_from_slice(&room_number.to_be_bytes());
    key
}

/// `rooms` key.
pub fn room(room_id: &str) -> Vec<u8> {
    room_id.as_bytes().to_vec()
}

/// `first` 0xFF `second`: the key of `members` (room, user), `user_rooms` and `reads`
/// (user, room).
pub fn pair(first: &str, second: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(first.len() + 1 + second.len());
    key.extend_from_slice(first.as_bytes());
    key.push(SEP);
    key.extend_from_slice(second.as_bytes());
    key
}

/// The prefix shared by every [`pair`] key whose first part is `first`.
pub fn pair_prefix(first: &str) -> Vec<u8> {
    let mut key = first.as_bytes().to_vec();
    key.push(SEP);
    key
}

/// Splits a [`pair`] key back into its parts.
pub fn split_pair(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|&b| b == SEP)?;
    let first = std::str::from_utf8(&key[..at]).ok()?;
    let second = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((first, second))
}

/// `outbox` key.
pub fn outbox(number: u64) -> [u8; 8] {
    number.to_be_bytes()
}

/// `notify` key: when it is due, then the message's room and seq.
pub fn notify(due: u64, room_id: &str, seq: u64) -> Vec<u8> {
    let mut key = due.to_be_bytes().to_vec();
    key.extend_from_slice(room_id.as_bytes());
    key.push(SEP);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The due ts of a `notify` key.
pub fn notify_due(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

/// `messages` key.
pub fn message(room_number: u64, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&room_number.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Splits a `messages` key into room number and seq.
pub fn split_message(key: &[u8]) -> Option<(u64, u64)> {
    let key: &[u8; 16] = key.try_into().ok()?;
    let (number, seq) = key.split_at(8);
    Some((
        u64::from_be_bytes(number.try_into().ok()?),
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// `dedup` key.
pub fn dedup(room_number: u64, sender: Option<&str>, client_msg_id: &str) -> Vec<u8> {
    let sender = sender.unwrap_or("");
    let mut key = Vec::with_capacity(8 + sender.len() + 1 + client_msg_id.len());
    key.extend_from_slice(&room_number.to_be_bytes());
    key.extend_from_slice(sender.as_bytes());
    key.push(SEP);
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_round_trip_and_sort_by_room_then_seq() {
        let keys = [
            (0, 0),
            (0, 1),
            (0, 255),
            (0, 256),
            (1, 0),
            (1, u64::MAX),
            (u64::MAX, 2),
        ];
        for pair in keys.windows(2) {
            let (a, b) = (message(pair[0].0, pair[0].1), message(pair[1].0, pair[1].1));
            assert!(a < b, "{:?} should sort before {:?}", pair[0], pair[1]);
        }
        for (number, seq) in keys {
            assert_eq!(split_message(&message(number, seq)), Some((number, seq)));
        }
        assert_eq!(split_message(b"short"), None);
    }

    #[test]
    fn pair_keys_round_trip_and_prefixes_match_one_id() {
        let key = pair("route-42", "rider@x.com");
        assert_eq!(split_pair(&key), Some(("route-42", "rider@x.com")));
        assert!(key.starts_with(&pair_prefix("route-42")));
        // "a" must not match the members of "ab": the separator ends the id.
        assert!(!pair("ab", "u").starts_with(&pair_prefix("a")));
        assert_eq!(split_pair(b"no-separator"), None);
    }

    #[test]
    fn pair_keys_of_one_room_are_contiguous_and_sorted_by_member() {
        let mut keys = [
            pair("a", "z"),
            pair("ab", "a"),
            pair("a", "b"),
            pair("a.", "a"),
            pair("a", "b-"),
        ];
        keys.sort();
        let parts: Vec<_> = keys.iter().map(|k| split_pair(k).unwrap()).collect();
        // 0xFF sorts after every id byte, so room "a" comes after "a." and "ab", but its
        // members stay together and in order.
        assert_eq!(
            parts,
            [
                ("a.", "a"),
                ("ab", "a"),
                ("a", "b"),
                ("a", "b-"),
                ("a", "z")
            ]
        );
    }

    #[test]
    fn dedup_keys_separate_senders_and_rooms() {
        assert_ne!(dedup(1, Some("u"), "c1"), dedup(1, None, "c1"));
        assert_ne!(dedup(1, Some("u"), "c1"), dedup(2, Some("u"), "c1"));
        // "u" + "x:c" and "ux" + ":c" must not collide.
        assert_ne!(dedup(1, Some("u"), "x:c"), dedup(1, Some("ux"), ":c"));
        assert!(dedup(1, Some("zz"), "c") < dedup(2, None, "c"));
    }

    #[test]
    fn purged_keys_are_one_per_room_and_apart_from_other_meta_keys() {
        assert_ne!(purged(1), purged(256));
        assert!(purged(1) < purged(256), "numbers are big-endian");
        assert_ne!(purged(1), membership_changed(1));
        assert_ne!(content_count(1), membership_changed(1));
        assert!(!content_count(1).starts_with(b"purged"));
        assert!(!membership_changed(1).starts_with(b"purged"));
        assert!(!revoked("purged").starts_with(&purged(0)));
        for other in [META_SCHEMA_VERSION, META_NEXT_ROOM_NUMBER] {
            assert!(!purged(0).starts_with(other) && !other.starts_with(&purged(0)));
            let membership = membership_changed(0);
            assert!(!membership.starts_with(other) && !other.starts_with(&membership));
        }
    }

    #[test]
    fn activity_keys_sort_by_ts_and_round_trip() {
        assert!(activity(1, "zz") < activity(2, "a"));
        assert!(activity(255, "a") < activity(256, "a"), "ts is big-endian");
        assert_eq!(
            split_activity(&activity(7, "route-1")),
            Some((7, "route-1"))
        );
        assert_eq!(split_activity(b"short"), None);
    }

    #[test]
    fn cluster_meta_keys_are_one_per_shard_and_apart_from_the_others() {
        assert_ne!(cluster_position(1), cluster_position(256));
        assert!(cluster_position(1) < cluster_position(256));
        let singles = [
            META_SCHEMA_VERSION,
            META_NEXT_ROOM_NUMBER,
            META_CLUSTER_EPOCH,
            META_EPOCH,
        ];
        for key in [cluster_position(0), purged(0)] {
            for other in singles {
                assert!(!key.starts_with(other) && !other.starts_with(&key));
            }
        }
    }
}
