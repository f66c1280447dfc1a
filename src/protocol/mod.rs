//! The wire contract (PROTOCOL.md) as types: ids, messages, rooms, and the WebSocket frames,
//! with the parsing and validation every request passes before it reaches the engine.

mod frames;
mod ids;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use frames::{
    encode, is_resume, parse_request, AnyRequestId, Cached, Components, Frame, HistoryQuery,
    Request, RequestBody, RequestId, RequestKind, Resume, RoomsPage, ServerFrame,
    DEFAULT_RESUME_LIMIT, MAX_ROOMS_LIMIT,
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
    /// Replaces the `text` and `data` of message `target_seq`.
    Edit,
    /// Deletes message `target_seq`.
    Delete,
    /// Adds the sender's reaction `text` to message `target_seq` (or, with `removed`, takes
    /// it away).
    Reaction,
}

impl MessageKind {
    /// Whether messages of this kind can be changed, and count as unread: `text`, `system`.
    pub fn is_content(self) -> bool {
        matches!(self, MessageKind::Text | MessageKind::System)
    }
}

/// A message's reactions: each reaction with the users who reacted with it, in the order they
/// did, and the reactions in the order they first appeared. Encoded as a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reactions(pub Vec<(String, Vec<UserId>)>);

impl Reactions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, reaction: &str, user: &UserId) -> bool {
        self.0
            .iter()
            .any(|(r, users)| r == reaction && users.contains(user))
    }

    /// Adds `user` last under `reaction`; adding one they have changes nothing.
    pub fn add(&mut self, reaction: &str, user: &UserId) {
        if self.has(reaction, user) {
            return;
        }
        match self.0.iter_mut().find(|(r, _)| r == reaction) {
            Some((_, users)) => users.push(user.clone()),
            None => self.0.push((reaction.to_owned(), vec![user.clone()])),
        }
    }

    /// Takes `user` out of `reaction`; a reaction nobody has any more disappears.
    pub fn remove(&mut self, reaction: &str, user: &UserId) {
        for (r, users) in &mut self.0 {
            if r == reaction {
                users.retain(|u| u != user);
            }
        }
        self.0.retain(|(_, users)| !users.is_empty());
    }
}

impl Serialize for Reactions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (reaction, users) in &self.0 {
            map.serialize_entry(reaction, users)?;
        }
        map.end()
    }
}

fn is_false(value: &bool) -> bool {
    !value
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
    #[schema(required)]
    pub sender: Option<UserId>,
    pub kind: MessageKind,
    pub text: String,
    /// The client's JSON object, kept verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The message a change (`edit`, `delete`, `reaction`) changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<u64>,
    /// On a `reaction` change: the reaction is taken away.
    #[serde(skip_serializing_if = "is_false")]
    pub removed: bool,
    /// The ts of the latest edit, once edited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    #[serde(skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Reaction -> the users who reacted with it, in the order they did.
    #[serde(skip_serializing_if = "Reactions::is_empty")]
    #[schema(value_type = std::collections::BTreeMap<String, Vec<UserId>>)]
    pub reactions: Reactions,
    /// The seq of the latest edit (REST answers a repeated edit with it).
    #[serde(skip)]
    pub edit_seq: Option<u64>,
    /// How many changes were applied to this message: cluster mode's version of it.
    #[serde(skip)]
    pub changes: u32,
}

impl Message {
    /// A message with no change state.
    pub fn new(
        room_id: RoomId,
        seq: u64,
        ts: u64,
        sender: Option<UserId>,
        kind: MessageKind,
        text: String,
    ) -> Message {
        Message {
            room_id,
            seq,
            ts,
            sender,
            kind,
            text,
            data: None,
            client_msg_id: None,
            target_seq: None,
            removed: false,
            edited_ts: None,
            deleted: false,
            reactions: Reactions::default(),
            edit_seq: None,
            changes: 0,
        }
    }
}

/// The `Room` object of `rooms`, `room`, `joined` and the REST room calls.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomView {
    pub room_id: RoomId,
    pub kind: RoomKind,
    /// The driver of a route room; null for a direct room.
    #[schema(required)]
    pub owner_id: Option<UserId>,
    pub members: Vec<UserId>,
    pub created_ts: u64,
    pub last_seq: u64,
    pub last_ts: u64,
    /// In the WebSocket's Room objects (`rooms`, `room`, `joined`, `resumed`), not in REST
    /// bodies: messages after the user's read marker not sent by the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    /// The history epoch: a client that cached the room's history under another one drops
    /// that cache.
    #[schema(value_type = String)]
    pub epoch: Arc<str>,
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
    #[schema(min_length = 1, max_length = 64)]
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
        validate_client_msg_id(self.client_msg_id.as_deref())?;
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

/// `client_msg_id`, when given, is 1..=64 bytes.
pub fn validate_client_msg_id(id: Option<&str>) -> Result<(), Error> {
    match id {
        Some(id) if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES => Err(Error::BadRequest(
            format!("client_msg_id must be 1..={MAX_CLIENT_MSG_ID_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Longest reaction in bytes.
pub const MAX_REACTION_BYTES: usize = 32;

/// A change to message `seq`, as a user (WebSocket) or RouteAPI (REST) asks for it.
#[derive(Debug)]
pub enum NewChange {
    /// `text` and `data` replace the target's (an edit without `data` removes it).
    Edit { seq: u64, message: NewMessage },
    Delete {
        seq: u64,
        client_msg_id: Option<String>,
    },
    React {
        seq: u64,
        reaction: String,
        removed: bool,
        client_msg_id: Option<String>,
    },
}

impl NewChange {
    /// The target's seq.
    pub fn seq(&self) -> u64 {
        match self {
            NewChange::Edit { seq, .. }
            | NewChange::Delete { seq, .. }
            | NewChange::React { seq, .. } => *seq,
        }
    }

    /// The limits of `send` and the reaction's length (1..=32 bytes).
    pub fn validate(&self, max_message_bytes: usize) -> Result<(), Error> {
        match self {
            NewChange::Edit { message, .. } => message.validate(max_message_bytes),
            NewChange::Delete { client_msg_id, .. } => {
                validate_client_msg_id(client_msg_id.as_deref())
            }
            NewChange::React {
                reaction,
                client_msg_id,
                ..
            } => {
                if reaction.is_empty() || reaction.len() > MAX_REACTION_BYTES {
                    return Err(Error::BadRequest(format!(
                        "a reaction is 1..={MAX_REACTION_BYTES} bytes"
                    )));
                }
                validate_client_msg_id(client_msg_id.as_deref())
            }
        }
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
        let message = Message::new(
            RoomId::parse("r").unwrap(),
            1,
            2,
            None,
            MessageKind::System,
            "t".into(),
        );
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"room_id":"r","seq":1,"ts":2,"sender":null,"kind":"system","text":"t"}"#
        );
    }

    #[test]
    fn change_state_is_encoded_as_the_protocol_says() {
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let mut message = Message::new(
            RoomId::parse("r").unwrap(),
            1,
            2,
            Some(a.clone()),
            MessageKind::Text,
            "t".into(),
        );
        message.edited_ts = Some(9);
        message.reactions.add("+1", &a);
        message.reactions.add("+1", &b);
        message.reactions.add("<3", &b);
        message.reactions.add("+1", &a);
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"room_id":"r","seq":1,"ts":2,"sender":"a","kind":"text","text":"t","edited_ts":9,"reactions":{"+1":["a","b"],"<3":["b"]}}"#
        );
        message.reactions.remove("<3", &b);
        assert!(!message.reactions.has("<3", &b));
        message.reactions.remove("+1", &a);
        message.reactions.add("+1", &a);
        assert_eq!(
            message.reactions.0[0].1,
            [b.clone(), a.clone()],
            "again puts them last"
        );
        assert_eq!(message.reactions.0.len(), 1, "an empty reaction disappears");
    }

    #[test]
    fn reactions_are_1_to_32_bytes() {
        let react = |reaction: &str| NewChange::React {
            seq: 1,
            reaction: reaction.into(),
            removed: false,
            client_msg_id: None,
        };
        assert!(react("👍").validate(100).is_ok());
        assert!(react(&"x".repeat(32)).validate(100).is_ok());
        assert_eq!(react("").validate(100).unwrap_err().code(), "bad_request");
        assert_eq!(
            react(&"x".repeat(33)).validate(100).unwrap_err().code(),
            "bad_request"
        );
    }
}
