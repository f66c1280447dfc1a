//! Stored values: the record types, and their format (one version byte, then bincode).
//!
//! The version byte lets a later build change a record's layout and still read the old one;
//! a byte this build does not know is an error at start-up, never a silent misread.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::protocol::{MessageKind, RoomKind};

/// The format version this build writes.
const FORMAT_V1: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// Short number that prefixes the room's `messages` and `dedup` keys.
    pub number: u64,
    pub kind: RoomKind,
    pub owner: Option<String>,
    pub created_ts: u64,
    /// Set when the room was closed; the record stays so the id is never reused.
    pub closed_ts: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub joined_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub ts: u64,
    pub sender: Option<String>,
    pub kind: MessageKind,
    pub text: String,
    /// The client's JSON object as text.
    pub data: Option<String>,
    pub client_msg_id: Option<String>,
}

/// A message's seq and ts: what a repeated `client_msg_id` answers with (`dedup`), and the
/// newest message retention deleted (`meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampRecord {
    pub seq: u64,
    pub ts: u64,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_V1];
    // bincode writing into a Vec fails only for types serde cannot describe, and every
    // record type here is plain data.
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode::config::standard())
        .expect("records always encode");
    bytes
}

pub fn decode<T: DeserializeOwned>(cf: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => {
            let (value, read) =
                bincode::serde::decode_from_slice(body, bincode::config::standard()).map_err(
                    |e| StorageError::Corrupt {
                        cf,
                        reason: e.to_string(),
                    },
                )?;
            if read != body.len() {
                return Err(StorageError::Corrupt {
                    cf,
                    reason: format!("{} trailing bytes", body.len() - read),
                });
            }
            Ok(value)
        }
        Some((&version, _)) => Err(StorageError::UnknownFormat { cf, version }),
        None => Err(StorageError::Corrupt {
            cf,
            reason: "empty value".into(),
        }),
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
            kind: MessageKind::Text,
            text: "On my way".into(),
            data: Some(r#"{"eta_min":4}"#.into()),
            client_msg_id: None,
        };
        assert_eq!(
            decode::<MessageRecord>("t", &encode(&message)).unwrap(),
            message
        );
        let room = RoomRecord {
            number: 9,
            kind: RoomKind::Direct,
            owner: None,
            created_ts: 5,
            closed_ts: Some(6),
        };
        assert_eq!(decode::<RoomRecord>("t", &encode(&room)).unwrap(), room);
        assert_eq!(decode::<u64>("t", &encode(&77u64)).unwrap(), 77);
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let mut bytes = encode(&7u64);
        bytes[0] = 9;
        assert!(matches!(
            decode::<u64>("t", &bytes),
            Err(StorageError::UnknownFormat { version: 9, .. })
        ));
        assert!(decode::<u64>("t", &[]).is_err());
        assert!(decode::<RoomRecord>("t", &[FORMAT_V1, 200]).is_err());
        let mut long = encode(&7u64);
        long.push(0);
        assert!(decode::<u64>("t", &long).is_err(), "trailing bytes");
    }
}
