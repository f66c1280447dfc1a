//! The wire contract (PROTOCOL.md) as types: ids, messages, rooms, and the WebSocket frames,
//! with the parsing and validation every request passes before it reaches the engine.

mod frames;
mod ids;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use frames::{
    encode, parse_request, Frame, HistoryQuery, Request, RequestBody, RequestId, ServerFrame,
};
pub use ids::{Id, RoomId, UserId, MAX_ID_BYTES};

use crate::error::Error;

/// Most messages one `sync` or history request returns.
pub const MAX_SYNC_LIMIT: usize = 500;
/// `limit` of a `since_*` sync that gives none.
pub const DEFAULT_SINCE_LIMIT: usize = 100;
/// `limit` of a `before_seq` sync that gives none.
pub const DEFAULT_BEFORE_LIMIT: usize = 50;
/// Longest `client_msg_id` in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Sent by a user over WebSocket.
    Text,
    /// Posted by RouteAPI over REST.
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Route,
    Direct,
}

/// A stored message as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Message {
    pub room_id: RoomId,
    /// Position in the room: 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch; strictly increasing within a room.
    pub ts: u64,
    /// The sending user; null for system messages.
    pub sender: Option<UserId>,
    pub kind: MessageKind,
    pub text: String,
    /// The client's JSON object, kept verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// The `Room` object of `rooms`, `room`, `joined` and the REST room calls.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomView {
    pub room_id: RoomId,
    pub kind: RoomKind,
    pub owner_id: Option<UserId>,
    pub members: Vec<UserId>,
    pub created_ts: u64,
    pub last_seq: u64,
    pub last_ts: u64,
    /// Only in `rooms` replies: messages after the user's read marker not sent by the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

/// What a user or RouteAPI asks to post; validated by [`NewMessage::validate`].
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewMessage {
    pub text: String,
    /// Any JSON object, stored and returned verbatim.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Box<RawValue>>,
    /// Makes retries safe: a repeat returns the first message (1..=64 bytes).
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

impl NewMessage {
    /// Applies the contract's rules: `data` is an object, `client_msg_id` is 1..=64 bytes,
    /// and `text` plus `data` fit in `max_message_bytes`.
    pub fn validate(&self, max_message_bytes: usize) -> Result<(), Error> {
        if let Some(data) = &self.data {
            let json = data.get();
            // `null` is how some clients spell "absent"; anything else must be an object.
            if !json.trim_start().starts_with('{') && json.trim() != "null" {
                return Err(Error::BadRequest("data must be a JSON object".into()));
            }
        }
        if let Some(id) = &self.client_msg_id {
            if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES {
                return Err(Error::BadRequest(format!(
                    "client_msg_id must be 1..={MAX_CLIENT_MSG_ID_BYTES} bytes"
                )));
            }
        }
        let size = self.text.len() + self.data.as_ref().map_or(0, |d| d.get().len());
        if size > max_message_bytes {
            return Err(Error::TooLarge(format!(
                "message is {size} bytes; the limit is {max_message_bytes}"
            )));
        }
        Ok(())
    }

    /// `data: null` means no data.
    pub fn into_parts(self) -> (String, Option<Box<RawValue>>, Option<String>) {
        let data = self.data.filter(|d| d.get().trim() != "null");
        (self.text, data, self.client_msg_id)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_message(json: &str) -> NewMessage {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn message_rules() {
        assert!(new_message(r#"{"text":"hi","data":{"a":1}}"#)
            .validate(100)
            .is_ok());
        assert!(new_message(r#"{"text":"hi","data":null}"#)
            .validate(100)
            .is_ok());
        assert_eq!(
            new_message(r#"{"text":"hi","data":[1]}"#)
                .validate(100)
                .unwrap_err()
                .code(),
            "bad_request"
        );
        let long_id = format!(r#"{{"text":"x","client_msg_id":"{}"}}"#, "c".repeat(65));
        assert_eq!(
            new_message(&long_id).validate(100).unwrap_err().code(),
            "bad_request"
        );
        let big = new_message(r#"{"text":"0123456789","data":{"k":"0123456789"}}"#);
        // 10 bytes of text + 18 of data.
        assert_eq!(big.validate(27).unwrap_err().code(), "too_large");
        assert!(big.validate(28).is_ok());
    }

    #[test]
    fn absent_fields_are_left_out() {
        let message = Message {
            room_id: RoomId::parse("r").unwrap(),
            seq: 1,
            ts: 2,
            sender: None,
            kind: MessageKind::System,
            text: "t".into(),
            data: None,
            client_msg_id: None,
        };
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"room_id":"r","seq":1,"ts":2,"sender":null,"kind":"system","text":"t"}"#
        );
    }
}
