//! WebSocket frames: parsing client requests, and the server frames (replies and pushes),
//! with the schemas the AsyncAPI document is built from ([`RequestKind`] for client frames,
//! [`ServerFrame`]'s own for server frames).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{Schema, Type};
use utoipa::openapi::{ObjectBuilder, OneOfBuilder, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::{Message, NewChange, NewMessage, RoomId, RoomView, UserId, MAX_SYNC_LIMIT};
use crate::error::{Error, ErrorCode};

/// A request's `id`: any JSON string or number, echoed in the reply.
pub type RequestId = Value;

/// The schema of a request's `id` in the documents: a string or a number.
pub struct AnyRequestId;

impl PartialSchema for AnyRequestId {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .description(Some(
                "Any string or number; the reply carries the same `id`",
            ))
            .into()
    }
}

impl ToSchema for AnyRequestId {
    fn name() -> std::borrow::Cow<'static, str> {
        "RequestId".into()
    }
}

/// The component schemas a schema refers to, by name.
pub type Components = Vec<(String, RefOr<Schema>)>;

/// Declares [`RequestKind`] from one table: each client frame `type` with the fields it
/// parses into (their schema is the frame's), the `type`s of the frames that answer it
/// (`error` answers any), and a summary. [`parse_request`] matches on the kind, so a frame
/// the server parses has a schema, and one line here plus its parse arm adds a frame.
macro_rules! request_kinds {
    ($($kind:ident = $name:literal, $fields:ty, [$($reply:literal),*], $summary:literal;)*) => {
        /// Every client frame `type`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RequestKind {
            $($kind),*
        }

        impl RequestKind {
            pub const ALL: &'static [RequestKind] = &[$(RequestKind::$kind),*];

            /// The frame's `type`.
            pub fn name(self) -> &'static str {
                match self {
                    $(RequestKind::$kind => $name),*
                }
            }

            /// The `type`s of the frames that answer it besides `error` (none: no reply).
            pub fn replies(self) -> &'static [&'static str] {
                match self {
                    $(RequestKind::$kind => &[$($reply),*]),*
                }
            }

            pub fn summary(self) -> &'static str {
                match self {
                    $(RequestKind::$kind => $summary),*
                }
            }

            /// The schema of the frame's fields (all but `type` and `id`), adding the
            /// schemas it refers to to `components`.
            pub fn fields_schema(self, components: &mut Components) -> RefOr<Schema> {
                match self {
                    $(RequestKind::$kind => {
                        <$fields as ToSchema>::schemas(components);
                        <$fields as PartialSchema>::schema()
                    }),*
                }
            }
        }
    };
}

request_kinds! {
    Rooms = "rooms", RoomsPage, ["rooms"], "Lists the user's rooms, most recently active first";
    Sync = "sync", SyncFields, ["messages"], "Reads a room's history";
    Send = "send", SendFields, ["sent"], "Sends a message";
    Edit = "edit", EditFields, ["sent", "ok"], "Edits one of the user's messages";
    Delete = "delete", DeleteFields, ["sent", "ok"], "Deletes one of the user's messages";
    React = "react", ReactFields, ["sent", "ok"], "Adds or takes away a reaction";
    Direct = "direct", DirectFields, ["room"], "Opens the 1:1 room with another user";
    Read = "read", ReadFields, ["ok"], "Moves the user's read marker";
    Typing = "typing", RoomOnly, [], "Tells the room's other members the user is typing";
    Ping = "ping", NoFields, ["pong"], "Asks for a pong";
    Resume = "resume", Resume, ["resumed"], "Catches up on every room in one round trip";
    Received = "received", ReadFields, [], "Says the app has the room's messages up to seq";
    Auth = "auth", AuthFields, ["ok"], "Puts a fresh token of the same user in force";
}

impl RequestKind {
    pub fn from_name(name: &str) -> Option<RequestKind> {
        RequestKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.name() == name)
    }
}

/// The fields of a frame that has none besides `type` and `id`.
#[derive(ToSchema)]
pub struct NoFields {}

/// A parsed client frame.
#[derive(Debug)]
pub struct Request {
    pub id: Option<RequestId>,
    pub body: RequestBody,
}

impl Request {
    /// Checks what a message or change says on its own (`data` an object, `client_msg_id`
    /// and reaction lengths, size), so a bad one is a bad frame and costs no send.
    pub fn validated(
        self,
        max_message_bytes: usize,
    ) -> Result<Request, (Option<RequestId>, Error)> {
        let checked = match &self.body {
            RequestBody::Send { message, .. } => message.validate(max_message_bytes),
            RequestBody::Change { change, .. } => change.validate(max_message_bytes),
            _ => Ok(()),
        };
        match checked {
            Ok(()) => Ok(self),
            Err(error) => Err((self.id, error)),
        }
    }
}

#[derive(Debug)]
pub enum RequestBody {
    Rooms(RoomsPage),
    Sync {
        room_id: RoomId,
        query: HistoryQuery,
    },
    Send {
        room_id: RoomId,
        message: NewMessage,
    },
    /// `edit`, `delete` and `react`.
    Change {
        room_id: RoomId,
        change: NewChange,
    },
    Direct {
        user_id: UserId,
    },
    Read {
        room_id: RoomId,
        seq: u64,
    },
    Typing {
        room_id: RoomId,
    },
    Resume(Resume),
    /// A fresh token for the connection, before the one in force expires.
    Auth {
        token: String,
    },
    /// The app has shown the room's messages up to `seq` (no reply).
    Received {
        room_id: RoomId,
        seq: u64,
    },
    Ping,
}

/// `resume`: the rooms the app has cached, each with the last seq it holds and the epoch it
/// was cached under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub struct Resume {
    /// Room id -> what the app holds of it (at most `limits.max_resume_rooms`, 1000).
    #[serde(default)]
    pub rooms: BTreeMap<RoomId, Cached>,
    /// Messages per room at most (default 100; above 500 is taken as 500).
    #[schema(minimum = 1)]
    pub limit: Option<usize>,
}

/// What the app holds of one room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
pub struct Cached {
    /// The last seq the app holds.
    pub seq: u64,
    /// The epoch the app cached the room under.
    pub epoch: String,
}

/// Messages per room a `resume` with no `limit` returns.
pub const DEFAULT_RESUME_LIMIT: usize = 100;

impl Resume {
    /// Refuses a zero limit; caps it at [`MAX_SYNC_LIMIT`].
    fn validated(mut self) -> Result<Self, Error> {
        self.limit = Some(match self.limit {
            Some(0) => return Err(Error::BadRequest("limit must be at least 1".into())),
            Some(limit) => limit.min(MAX_SYNC_LIMIT),
            None => DEFAULT_RESUME_LIMIT,
        });
        Ok(self)
    }
}

/// Which of the user's rooms a `rooms` request wants: all of them (v1), or a page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub struct RoomsPage {
    /// At most this many (above 500 is taken as 500), with `has_more` in the reply; none:
    /// every room.
    #[schema(minimum = 1)]
    pub limit: Option<usize>,
    /// Only rooms whose activity (`last_ts`, or `created_ts` with no messages) is older.
    pub before_ts: Option<u64>,
}

/// Most rooms one `rooms` page holds.
pub const MAX_ROOMS_LIMIT: usize = 500;

impl RoomsPage {
    /// Refuses a zero limit; caps it at [`MAX_ROOMS_LIMIT`].
    fn validated(mut self) -> Result<Self, Error> {
        match self.limit {
            Some(0) => Err(Error::BadRequest("limit must be at least 1".into())),
            Some(limit) => {
                self.limit = Some(limit.min(MAX_ROOMS_LIMIT));
                Ok(self)
            }
            None => Ok(self),
        }
    }
}

/// Where a history read starts; at most one cursor may be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Messages with a greater `ts`, oldest first.
    pub since_ts: Option<u64>,
    /// Messages with a greater `seq`, oldest first.
    pub since_seq: Option<u64>,
    /// The messages just before this `seq`.
    pub before_seq: Option<u64>,
    pub limit: Option<usize>,
}

impl HistoryQuery {
    /// The cursors' names, of which a request gives at most one.
    pub const CURSORS: [&'static str; 3] = ["since_ts", "since_seq", "before_seq"];

    /// The JSON Schema a query must not match: two of the cursors at once. Put under `not`.
    pub fn two_cursors() -> Value {
        let cursors = Self::CURSORS;
        let pairs: Vec<Value> = cursors
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                cursors[i + 1..]
                    .iter()
                    .map(move |b| serde_json::json!({ "required": [a, b] }))
            })
            .collect();
        serde_json::json!({ "anyOf": pairs })
    }

    /// Refuses two cursors at once and a zero limit; caps the limit at [`MAX_SYNC_LIMIT`].
    pub fn validated(mut self) -> Result<Self, Error> {
        let cursors = [self.since_ts, self.since_seq, self.before_seq];
        if cursors.iter().flatten().count() > 1 {
            return Err(Error::BadRequest(
                "give at most one of since_ts, since_seq and before_seq".into(),
            ));
        }
        match self.limit {
            Some(0) => return Err(Error::BadRequest("limit must be at least 1".into())),
            Some(limit) => self.limit = Some(limit.min(MAX_SYNC_LIMIT)),
            None => {}
        }
        Ok(self)
    }

    /// Parses a REST query string (`since_ts=1&limit=5`); empty values count as absent.
    pub fn from_query_string(query: &str) -> Result<Self, Error> {
        let mut parsed = HistoryQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if value.is_empty() {
                continue;
            }
            let number = |name: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| Error::BadRequest(format!("{name} must be a whole number")))
            };
            match key {
                "since_ts" => parsed.since_ts = Some(number(key)?),
                "since_seq" => parsed.since_seq = Some(number(key)?),
                "before_seq" => parsed.before_seq = Some(number(key)?),
                "limit" => parsed.limit = Some(number(key)? as usize),
                _ => {}
            }
        }
        parsed.validated()
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<Value>,
    id: Option<Value>,
}

/// A room: the user must be a member (else `not_member`).
#[derive(Deserialize, ToSchema)]
pub struct RoomOnly {
    room_id: RoomId,
}

// No `#[serde(flatten)]` below: it buffers the input, which `RawValue` cannot come through.
// The length limits in `#[schema]` are bytes in the protocol and characters in JSON Schema:
// the same for ASCII.

/// At most one of `since_ts`, `since_seq` and `before_seq`; none: the last
/// `history.default_last` messages.
#[derive(Deserialize, ToSchema)]
pub struct SyncFields {
    room_id: RoomId,
    /// Messages with a greater `ts`, oldest first.
    since_ts: Option<u64>,
    /// Messages with a greater `seq`, oldest first.
    since_seq: Option<u64>,
    /// The messages just before this `seq`.
    before_seq: Option<u64>,
    /// At most this many (default 50 with no cursor or `before_seq`, 100 with `since_*`;
    /// above 500 is taken as 500).
    #[schema(minimum = 1)]
    limit: Option<usize>,
}

/// `text` plus `data` (as JSON) at most `limits.max_message_bytes` (16384) bytes, else
/// `too_large`.
#[derive(Deserialize, ToSchema)]
pub struct SendFields {
    room_id: RoomId,
    text: String,
    /// Any JSON object, stored and returned verbatim (`null`: none).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    data: Option<Box<serde_json::value::RawValue>>,
    /// 1..=64 bytes; a repeat from the same sender in the room answers the first `sent`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    client_msg_id: Option<String>,
}

/// An edit of message `seq`: its new `text` and `data` (without `data`, the data is removed).
#[derive(Deserialize, ToSchema)]
pub struct EditFields {
    room_id: RoomId,
    seq: u64,
    text: String,
    /// Any JSON object (`null`: none).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    data: Option<Box<serde_json::value::RawValue>>,
    /// 1..=64 bytes.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    client_msg_id: Option<String>,
}

/// A deletion of message `seq`.
#[derive(Deserialize, ToSchema)]
pub struct DeleteFields {
    room_id: RoomId,
    seq: u64,
    /// 1..=64 bytes.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    client_msg_id: Option<String>,
}

/// A reaction to message `seq`, or with `removed: true` its removal.
#[derive(Deserialize, ToSchema)]
pub struct ReactFields {
    room_id: RoomId,
    seq: u64,
    /// 1..=32 bytes.
    #[schema(min_length = 1, max_length = 32)]
    reaction: String,
    #[serde(default)]
    removed: bool,
    /// 1..=64 bytes.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    client_msg_id: Option<String>,
}

/// The other user of a 1:1 room (`direct.policy` decides who may open one).
#[derive(Deserialize, ToSchema)]
pub struct DirectFields {
    user_id: UserId,
}

/// A fresh token for this connection.
#[derive(Deserialize, ToSchema)]
pub struct AuthFields {
    token: String,
}

/// A room and a seq in it.
#[derive(Deserialize, ToSchema)]
pub struct ReadFields {
    room_id: RoomId,
    seq: u64,
}

/// Parses one text frame. On failure the error carries the request's `id` when it could be
/// read, so the client can match the `error` to its request.
/// Whether a frame is a `resume`: the one frame that may be larger than
/// `limits.max_frame_bytes`, since it lists up to `limits.max_resume_rooms` rooms.
pub fn is_resume(text: &str) -> bool {
    serde_json::from_str::<Head>(text).is_ok_and(
        |head| matches!(head.kind, Some(Value::String(kind)) if kind == RequestKind::Resume.name()),
    )
}

pub fn parse_request(text: &str) -> Result<Request, (Option<RequestId>, Error)> {
    // serde would read a struct from a JSON array too; frames are objects only.
    if !text.trim_start().starts_with('{') {
        return Err((
            None,
            Error::BadRequest("a frame must be a JSON object".into()),
        ));
    }
    let head: Head = serde_json::from_str(text).map_err(|e| {
        (
            None,
            Error::BadRequest(format!("not a JSON object frame: {e}")),
        )
    })?;
    let id = match head.id {
        None | Some(Value::Null) => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => {
            return Err((
                None,
                Error::BadRequest("id must be a string or a number".into()),
            ))
        }
    };
    let fail = |error: Error| Err((id.clone(), error));
    let kind = match head.kind {
        Some(Value::String(kind)) => kind,
        _ => return fail(Error::BadRequest("frame has no string `type`".into())),
    };
    let Some(request_kind) = RequestKind::from_name(&kind) else {
        return fail(Error::BadRequest(format!("unknown frame type {kind:?}")));
    };
    let body = match request_kind {
        RequestKind::Rooms => fields::<RoomsPage>(text, &kind)
            .and_then(RoomsPage::validated)
            .map(RequestBody::Rooms),
        RequestKind::Ping => Ok(RequestBody::Ping),
        RequestKind::Sync => fields::<SyncFields>(text, &kind).and_then(|f| {
            let query = HistoryQuery {
                since_ts: f.since_ts,
                since_seq: f.since_seq,
                before_seq: f.before_seq,
                limit: f.limit,
            };
            Ok(RequestBody::Sync {
                room_id: f.room_id,
                query: query.validated()?,
            })
        }),
        RequestKind::Send => fields::<SendFields>(text, &kind).map(|f| RequestBody::Send {
            room_id: f.room_id,
            message: NewMessage {
                text: f.text,
                data: f.data,
                client_msg_id: f.client_msg_id,
            },
        }),
        RequestKind::Edit => fields::<EditFields>(text, &kind).map(|f| RequestBody::Change {
            room_id: f.room_id,
            change: NewChange::Edit {
                seq: f.seq,
                message: NewMessage {
                    text: f.text,
                    data: f.data,
                    client_msg_id: f.client_msg_id,
                },
            },
        }),
        RequestKind::Delete => fields::<DeleteFields>(text, &kind).map(|f| RequestBody::Change {
            room_id: f.room_id,
            change: NewChange::Delete {
                seq: f.seq,
                client_msg_id: f.client_msg_id,
            },
        }),
        RequestKind::React => fields::<ReactFields>(text, &kind).map(|f| RequestBody::Change {
            room_id: f.room_id,
            change: NewChange::React {
                seq: f.seq,
                reaction: f.reaction,
                removed: f.removed,
                client_msg_id: f.client_msg_id,
            },
        }),
        RequestKind::Direct => {
            fields::<DirectFields>(text, &kind).map(|f| RequestBody::Direct { user_id: f.user_id })
        }
        RequestKind::Read => fields::<ReadFields>(text, &kind).map(|f| RequestBody::Read {
            room_id: f.room_id,
            seq: f.seq,
        }),
        RequestKind::Typing => {
            fields::<RoomOnly>(text, &kind).map(|f| RequestBody::Typing { room_id: f.room_id })
        }
        RequestKind::Received => fields::<ReadFields>(text, &kind).map(|f| RequestBody::Received {
            room_id: f.room_id,
            seq: f.seq,
        }),
        RequestKind::Auth => {
            fields::<AuthFields>(text, &kind).map(|f| RequestBody::Auth { token: f.token })
        }
        RequestKind::Resume => fields::<Resume>(text, &kind)
            .and_then(Resume::validated)
            .map(RequestBody::Resume),
    };
    match body {
        Ok(body) => Ok(Request { id, body }),
        Err(error) => fail(error),
    }
}

fn fields<T: for<'de> Deserialize<'de>>(text: &str, kind: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::BadRequest(format!("{kind}: {e}")))
}

/// Every frame the server sends. Replies echo the request's `id` when it had one; pushes
/// have no `id`. Its schema (one per variant) is the AsyncAPI document's.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// Reply to `rooms`: the user's rooms, most recently active first, with `unread`.
    Rooms {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<AnyRequestId>)]
        id: Option<&'a RequestId>,
        #[schema(value_type = Vec<RoomView>)]
        rooms: &'a [RoomView],
        /// Only for a request with a `limit`: whether older rooms remain.
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
    },
    /// Reply to `sync`: messages in ascending seq, in their current state.
    Messages {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<AnyRequestId>)]
        id: Option<&'a RequestId>,
        #[schema(value_type = RoomId)]
        room_id: &'a RoomId,
        #[schema(value_type = Vec<Message>)]
        messages: &'a [Arc<Message>],
        /// With `since_*`: more follow, repeat from the last one; otherwise: older ones exist.
        has_more: bool,
        #[schema(value_type = String)]
        epoch: &'a str,
    },
    /// Reply to `resume`.
    Resumed {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<AnyRequestId>)]
        id: Option<&'a RequestId>,
        /// Every room of the user, with `unread` and `epoch`.
        #[schema(value_type = Vec<RoomView>)]
        rooms: &'a [RoomView],
        /// Room id -> its messages for the app, oldest first.
        #[schema(value_type = BTreeMap<String, Vec<Message>>)]
        messages: &'a BTreeMap<RoomId, Vec<Arc<Message>>>,
        /// Room id -> whether more messages follow (fetch them with `sync` `since_seq`).
        #[schema(value_type = BTreeMap<String, bool>)]
        has_more: &'a BTreeMap<RoomId, bool>,
        /// Listed rooms whose cache the app replaces.
        #[schema(value_type = Vec<RoomId>)]
        reset: &'a [RoomId],
        /// Listed rooms the user is not a member of.
        #[schema(value_type = Vec<RoomId>)]
        left: &'a [RoomId],
    },
    /// Reply to `send`, `edit`, `delete` and `react`: the new message's seq and ts, once it
    /// is durable.
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<AnyRequestId>)]
        id: Option<&'a RequestId>,
        #[schema(value_type = RoomId)]
        room_id: &'a RoomId,
        seq: u64,
        ts: u64,
    },
    /// Reply to `direct`: the 1:1 room.
    Room {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<AnyRequestId>)]
        id: Option<&'a RequestId>,
        #[schema(value_type = RoomView)]
        room: &'a RoomView,
    },
    /// Reply to `read`, and to a change that changes nothing.
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<AnyRequestId>)]
        id: Option<&'a RequestId>,
    },
    /// Reply to `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<AnyRequestId>)]
        id: Option<&'a RequestId>,
    },
    /// A request failed; `id` is null when it had none or could not be read.
    Error {
        #[schema(value_type = Option<AnyRequestId>, required)]
        id: Option<&'a RequestId>,
        #[schema(value_type = ErrorCode)]
        code: &'static str,
        message: String,
    },
    /// Push: a message or a change in one of the user's rooms, the user's own included.
    Message {
        #[schema(value_type = Message)]
        message: &'a Message,
    },
    /// Push: the user was added to a room (it comes before the room's first `message`).
    Joined {
        #[schema(value_type = RoomView)]
        room: &'a RoomView,
    },
    /// Push: the user left or was removed, or the room was closed.
    Left {
        #[schema(value_type = RoomId)]
        room_id: &'a RoomId,
    },
    /// Push: another user joined one of the user's rooms.
    MemberJoined {
        #[schema(value_type = RoomId)]
        room_id: &'a RoomId,
        #[schema(value_type = UserId)]
        user_id: &'a UserId,
    },
    /// Push: another user left one of the user's rooms.
    MemberLeft {
        #[schema(value_type = RoomId)]
        room_id: &'a RoomId,
        #[schema(value_type = UserId)]
        user_id: &'a UserId,
    },
    /// Push: another member is typing (best effort).
    Typing {
        #[schema(value_type = RoomId)]
        room_id: &'a RoomId,
        #[schema(value_type = UserId)]
        user_id: &'a UserId,
    },
    /// The token in force expires at `exp` (Unix seconds): send `auth` with a fresh one.
    TokenExpiring { exp: u64 },
}

impl<'a> ServerFrame<'a> {
    pub fn error(id: Option<&'a RequestId>, error: &Error) -> Self {
        ServerFrame::Error {
            id,
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// An encoded server frame. Cloning it shares the bytes, so a push is encoded once and the
/// same bytes go to every recipient.
pub type Frame = async_tungstenite::tungstenite::Utf8Bytes;

/// Encodes a frame once; the result is shared by every recipient.
pub fn encode(frame: &ServerFrame<'_>) -> Frame {
    // Server frames hold only strings, numbers and JSON that was already parsed, so encoding
    // cannot fail.
    serde_json::to_string(frame)
        .expect("server frames always encode")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageKind;

    fn code_of(text: &str) -> (Option<RequestId>, &'static str) {
        let (id, error) = parse_request(text).unwrap_err();
        (id, error.code())
    }

    #[test]
    fn parses_every_request_type() {
        let cases = [
            r#"{"type":"rooms","id":1}"#,
            r#"{"type":"rooms","id":1,"limit":20,"before_ts":1764000000000}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"sync","room_id":"r","since_ts":5,"limit":10}"#,
            r#"{"type":"send","room_id":"r","text":"hi","data":{"a":[1]},"client_msg_id":"c"}"#,
            r#"{"type":"direct","user_id":"u"}"#,
            r#"{"type":"read","room_id":"r","seq":3}"#,
            r#"{"type":"typing","room_id":"r","extra":"ignored"}"#,
            r#"{"type":"edit","room_id":"r","seq":3,"text":"new","data":{"a":1}}"#,
            r#"{"type":"delete","room_id":"r","seq":3}"#,
            r#"{"type":"react","room_id":"r","seq":3,"reaction":"👍","removed":true}"#,
            r#"{"type":"resume","rooms":{"r":{"seq":3,"epoch":"e"}},"limit":1000}"#,
            r#"{"type":"resume"}"#,
            r#"{"type":"received","room_id":"r","seq":3}"#,
            r#"{"type":"auth","id":9,"token":"a.b.c"}"#,
        ];
        for text in cases {
            assert!(parse_request(text).is_ok(), "{text}");
        }
        let Request { id, body } =
            parse_request(r#"{"type":"send","id":"a","room_id":"r","text":"x","data":{"k":1}}"#)
                .unwrap();
        assert_eq!(id, Some(Value::String("a".into())));
        let RequestBody::Send { message, .. } = body else {
            panic!("not a send")
        };
        assert_eq!(message.data.unwrap().get(), r#"{"k":1}"#);
        let limit_of = |text: &str| match parse_request(text).map(|r| r.body) {
            Ok(RequestBody::Resume(resume)) => resume.limit,
            _ => None,
        };
        assert_eq!(
            limit_of(r#"{"type":"resume","limit":1000}"#),
            Some(MAX_SYNC_LIMIT)
        );
        assert_eq!(limit_of(r#"{"type":"resume"}"#), Some(DEFAULT_RESUME_LIMIT));
    }

    #[test]
    fn bad_frames_are_bad_requests_with_their_id() {
        assert_eq!(code_of("not json"), (None, "bad_request"));
        assert_eq!(code_of("[1,2]"), (None, "bad_request"));
        assert_eq!(code_of(r#"{"id":7}"#), (Some(7.into()), "bad_request"));
        assert_eq!(
            code_of(r#"{"type":"fly","id":7}"#),
            (Some(7.into()), "bad_request")
        );
        assert_eq!(
            code_of(r#"{"type":"send","id":"x","room_id":"r"}"#).1,
            "bad_request"
        );
        assert_eq!(
            code_of(r#"{"type":"read","room_id":"r","seq":"3"}"#).1,
            "bad_request"
        );
        assert_eq!(
            code_of(r#"{"type":"sync","room_id":"bad id"}"#).1,
            "bad_request"
        );
        assert_eq!(code_of(r#"{"type":"ping","id":{"a":1}}"#).1, "bad_request");
        assert_eq!(
            code_of(r#"{"type":"auth","id":2,"token":5}"#),
            (Some(2.into()), "bad_request")
        );
        assert_eq!(code_of(r#"{"type":"auth"}"#).1, "bad_request");
        assert_eq!(
            code_of(r#"{"type":"edit","room_id":"r","seq":1}"#).1,
            "bad_request"
        );
        assert_eq!(
            code_of(r#"{"type":"react","room_id":"r","seq":-1,"reaction":"x"}"#).1,
            "bad_request"
        );
        assert_eq!(
            code_of(r#"{"type":"react","room_id":"r","seq":1,"reaction":"x","removed":"yes"}"#).1,
            "bad_request"
        );
        assert_eq!(
            code_of(r#"{"type":"sync","room_id":"r","since_ts":1,"since_seq":1}"#).1,
            "bad_request"
        );
        assert_eq!(
            code_of(r#"{"type":"sync","room_id":"r","limit":0}"#).1,
            "bad_request"
        );
        for bad in [
            r#"{"type":"rooms","limit":0}"#,
            r#"{"type":"rooms","limit":"5"}"#,
            r#"{"type":"rooms","before_ts":-1}"#,
        ] {
            assert_eq!(code_of(bad).1, "bad_request", "{bad}");
        }
    }

    #[test]
    fn limits_are_capped_and_query_strings_parse() {
        let query = HistoryQuery::from_query_string("since_ts=&since_seq=4&limit=9999").unwrap();
        assert_eq!(query.since_seq, Some(4));
        assert_eq!(query.since_ts, None);
        assert_eq!(query.limit, Some(MAX_SYNC_LIMIT));
        assert!(HistoryQuery::from_query_string("limit=abc").is_err());
    }

    #[test]
    fn frames_encode_as_the_protocol_says() {
        let data = serde_json::value::RawValue::from_string(r#"{"eta_min":4}"#.into()).unwrap();
        let mut message = Message::new(
            RoomId::parse("route-42").unwrap(),
            17,
            1_764_000_000_123,
            Some(UserId::parse("driver-7").unwrap()),
            MessageKind::Text,
            "On my way".into(),
        );
        message.data = Some(data);
        message.client_msg_id = Some("c-91".into());
        assert_eq!(
            encode(&ServerFrame::Message { message: &message }).as_str(),
            r#"{"type":"message","message":{"room_id":"route-42","seq":17,"ts":1764000000123,"sender":"driver-7","kind":"text","text":"On my way","data":{"eta_min":4},"client_msg_id":"c-91"}}"#
        );
        let id = Value::from("q");
        assert_eq!(
            encode(&ServerFrame::Pong { id: Some(&id) }).as_str(),
            r#"{"type":"pong","id":"q"}"#
        );
        assert_eq!(
            encode(&ServerFrame::Ok { id: None }).as_str(),
            r#"{"type":"ok"}"#
        );
    }
}
