//! Stored values: the record types, and their format (one version byte, then bincode).
//!
//! The version byte lets a later build change a record's layout and still read the old one;
//! a byte this build does not know is an error at start-up, never a silent misread. The enums
//! stored here are storage's own, with pinned numbers, so reordering a wire enum can never
//! change what is on disk.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::StorageError;

/// The format version of every record but messages.
const FORMAT_V1: u8 = 1;
/// The format version of message records since message changes (schema 2): V1 plus the
/// change's target and the target state (edit, deletion, reactions, change count).
const FORMAT_MESSAGE_V2: u8 = 2;

/// Declares a stored enum with a pinned number per variant, stored as one byte.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $number:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant = $number),+ }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_u8(*self as u8)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                match u8::deserialize(deserializer)? {
                    $($number => Ok($name::$variant),)+
                    other => Err(serde::de::Error::custom(format!(
                        concat!("unknown ", stringify!($name), " {}"), other
                    ))),
                }
            }
        }
    };
}

stored_enum!(
    /// A room's kind on disk. Schema 1 stored the wire enum's variant index, which bincode
    /// writes as the same single byte for these numbers.
    StoredRoomKind { Route = 0, Direct = 1 }
);

stored_enum!(
    /// A message's kind on disk (0 and 1 as in schema 1).
    StoredMessageKind { Text = 0, System = 1, Edit = 2, Delete = 3, Reaction = 4 }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// Short number that prefixes the room's `messages` and `dedup` keys.
    pub number: u64,
    pub kind: StoredRoomKind,
    pub owner: Option<String>,
    pub created_ts: u64,
    /// Set when the room was closed; the record stays so the id is never reused.
    pub closed_ts: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub joined_ts: u64,
}

/// A member's read marker and the two counts that give their unread count without reading
/// messages (schema 3; schema 2 stored the marker alone). With the room's content count `C`
/// (the `text` and `system` messages it ever had), the member's unread count is
/// `C - own - base`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRecord {
    /// The last seq the member has read.
    pub seq: u64,
    /// Content messages the member sent.
    pub own: u64,
    /// Content messages others sent up to `seq`.
    pub base: u64,
}

/// A stored message: what was sent, and, for a `text` or `system` message, its current state
/// after the changes made to it, rewritten by each change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub ts: u64,
    pub sender: Option<String>,
    pub kind: StoredMessageKind,
    pub text: String,
    /// The client's JSON object as text.
    pub data: Option<String>,
    pub client_msg_id: Option<String>,
    /// A change message's target.
    pub target_seq: Option<u64>,
    /// A reaction change that takes the reaction away.
    pub removed: bool,
    /// The latest edit's seq and ts.
    pub edited: Option<StampRecord>,
    pub deleted: bool,
    /// Reaction -> the users who reacted with it, in the order they did.
    pub reactions: Vec<(String, Vec<String>)>,
    /// Changes applied to this message: what cluster mode's scripts compare.
    pub changes: u32,
}

impl StoredMessageKind {
    /// `text` and `system`: what unread counts.
    pub fn is_content(self) -> bool {
        matches!(self, StoredMessageKind::Text | StoredMessageKind::System)
    }
}

/// So a [`MessageRecord`] can be built from the fields it needs.
impl Default for StoredMessageKind {
    fn default() -> Self {
        StoredMessageKind::Text
    }
}

/// A message record as schema 1 wrote it (format 1).
#[derive(Serialize, Deserialize)]
struct MessageRecordV1 {
    ts: u64,
    sender: Option<String>,
    kind: StoredMessageKind,
    text: String,
    data: Option<String>,
    client_msg_id: Option<String>,
}

/// A message's seq and ts: what a repeated `client_msg_id` answers with (`dedup`), the
/// newest message retention deleted (`meta`), and a target's latest edit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampRecord {
    pub seq: u64,
    pub ts: u64,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_as(FORMAT_V1, value)
}

pub fn encode_message(record: &MessageRecord) -> Vec<u8> {
    encode_as(FORMAT_MESSAGE_V2, record)
}

fn encode_as<T: Serialize>(format: u8, value: &T) -> Vec<u8> {
    let mut bytes = vec![format];
    // bincode writing into a Vec fails only for types serde cannot describe, and every
    // record type here is plain data.
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode::config::standard())
        .expect("records always encode");
    bytes
}

pub fn decode<T: DeserializeOwned>(cf: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => decode_body(cf, body),
        Some((&version, _)) => Err(StorageError::UnknownFormat { cf, version }),
        None => Err(empty(cf)),
    }
}

/// Decodes a message record of either format; a format 1 record has no change state.
pub fn decode_message(cf: &'static str, bytes: &[u8]) -> Result<MessageRecord, StorageError> {
    match bytes.split_first() {
        Some((&FORMAT_MESSAGE_V2, body)) => decode_body(cf, body),
        Some((&FORMAT_V1, body)) => {
            let old: MessageRecordV1 = decode_body(cf, body)?;
            Ok(MessageRecord {
                ts: old.ts,
                sender: old.sender,
                kind: old.kind,
                text: old.text,
                data: old.data,
                client_msg_id: old.client_msg_id,
                ..MessageRecord::default()
            })
        }
        Some((&version, _)) => Err(StorageError::UnknownFormat { cf, version }),
        None => Err(empty(cf)),
    }
}

fn decode_body<T: DeserializeOwned>(cf: &'static str, body: &[u8]) -> Result<T, StorageError> {
    let (value, read) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| StorageError::Corrupt {
            cf,
            reason: e.to_string(),
        })?;
    if read != body.len() {
        return Err(StorageError::Corrupt {
            cf,
            reason: format!("{} trailing bytes", body.len() - read),
        });
    }
    Ok(value)
}

fn empty(cf: &'static str) -> StorageError {
    StorageError::Corrupt {
        cf,
        reason: "empty value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let message = MessageRecord {
            ts: 1_764_000_000_123,
            sender: Some("driver-7".into()),
            text: "On my way".into(),
            data: Some(r#"{"eta_min":4}"#.into()),
            edited: Some(StampRecord { seq: 9, ts: 10 }),
            reactions: vec![("+1".into(), vec!["a".into(), "b".into()])],
            changes: 3,
            ..MessageRecord::default()
        };
        let bytes = encode_message(&message);
        assert_eq!(decode_message("t", &bytes).unwrap(), message);
        let room = RoomRecord {
            number: 9,
            kind: StoredRoomKind::Direct,
            owner: None,
            created_ts: 5,
            closed_ts: Some(6),
        };
        assert_eq!(decode::<RoomRecord>("t", &encode(&room)).unwrap(), room);
        assert_eq!(decode::<u64>("t", &encode(&77u64)).unwrap(), 77);
    }

    #[test]
    fn schema_1_records_still_read() {
        // Schema 1 stored the wire enums, which bincode wrote as their variant index.
        #[derive(Serialize)]
        enum WireKind {
            _Route,
            Direct,
        }
        #[derive(Serialize)]
        struct RoomV1 {
            number: u64,
            kind: WireKind,
            owner: Option<String>,
            created_ts: u64,
            closed_ts: Option<u64>,
        }
        let old_room = encode(&RoomV1 {
            number: 3,
            kind: WireKind::Direct,
            owner: None,
            created_ts: 1,
            closed_ts: None,
        });
        let room: RoomRecord = decode("rooms", &old_room).unwrap();
        assert_eq!(room.kind, StoredRoomKind::Direct);
        let old_message = encode(&MessageRecordV1 {
            ts: 5,
            sender: None,
            kind: StoredMessageKind::System,
            text: "hi".into(),
            data: None,
            client_msg_id: Some("c".into()),
        });
        let message = decode_message("messages", &old_message).unwrap();
        assert_eq!(message.kind, StoredMessageKind::System);
        assert_eq!(message.client_msg_id.as_deref(), Some("c"));
        assert!(!message.deleted && message.reactions.is_empty() && message.changes == 0);
    }

    #[test]
    fn stored_enum_numbers_are_pinned() {
        let byte = |kind: StoredMessageKind| encode(&kind)[1];
        assert_eq!(byte(StoredMessageKind::Text), 0);
        assert_eq!(byte(StoredMessageKind::System), 1);
        assert_eq!(byte(StoredMessageKind::Edit), 2);
        assert_eq!(byte(StoredMessageKind::Delete), 3);
        assert_eq!(byte(StoredMessageKind::Reaction), 4);
        assert_eq!(encode(&StoredRoomKind::Direct)[1], 1);
        assert!(decode::<StoredMessageKind>("t", &[FORMAT_V1, 9]).is_err());
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let mut bytes = encode(&7u64);
        bytes[0] = 9;
        assert!(matches!(
            decode::<u64>("t", &bytes),
            Err(StorageError::UnknownFormat { version: 9, .. })
        ));
        assert!(matches!(
            decode_message("t", &bytes),
            Err(StorageError::UnknownFormat { version: 9, .. })
        ));
        assert!(decode::<u64>("t", &[]).is_err());
        assert!(decode::<RoomRecord>("t", &[FORMAT_V1, 200]).is_err());
        let mut long = encode(&7u64);
        long.push(0);
        assert!(decode::<u64>("t", &long).is_err(), "trailing bytes");
    }
}
