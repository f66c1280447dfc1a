//! WebSocket frames: parsing client requests, and the server frames (replies and pushes).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Message, NewChange, NewMessage, RoomId, RoomView, UserId, MAX_SYNC_LIMIT};
use crate::error::Error;

/// A request's `id`: any JSON string or number, echoed in the reply.
pub type RequestId = Value;

/// A parsed client frame.
#[derive(Debug)]
pub struct Request {
    pub id: Option<RequestId>,
    pub body: RequestBody,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Resume {
    #[serde(default)]
    pub rooms: BTreeMap<RoomId, Cached>,
    /// Messages per room at most (default [`DEFAULT_RESUME_LIMIT`], capped at
    /// [`MAX_SYNC_LIMIT`]).
    pub limit: Option<usize>,
}

/// What the app holds of one room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cached {
    pub seq: u64,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RoomsPage {
    /// At most this many (capped at [`MAX_ROOMS_LIMIT`]); none: every room.
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
    pub since_ts: Option<u64>,
    pub since_seq: Option<u64>,
    pub before_seq: Option<u64>,
    pub limit: Option<usize>,
}

impl HistoryQuery {
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

#[derive(Deserialize)]
struct RoomOnly {
    room_id: RoomId,
}

// No `#[serde(flatten)]` below: it buffers the input, which `RawValue` cannot come through.
#[derive(Deserialize)]
struct SyncFields {
    room_id: RoomId,
    since_ts: Option<u64>,
    since_seq: Option<u64>,
    before_seq: Option<u64>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct SendFields {
    room_id: RoomId,
    text: String,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct EditFields {
    room_id: RoomId,
    seq: u64,
    text: String,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct DeleteFields {
    room_id: RoomId,
    seq: u64,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct ReactFields {
    room_id: RoomId,
    seq: u64,
    reaction: String,
    #[serde(default)]
    removed: bool,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct DirectFields {
    user_id: UserId,
}

#[derive(Deserialize)]
struct AuthFields {
    token: String,
}

#[derive(Deserialize)]
struct ReadFields {
    room_id: RoomId,
    seq: u64,
}

/// Parses one text frame. On failure the error carries the request's `id` when it could be
/// read, so the client can match the `error` to its request.
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
    let body = match kind.as_str() {
        "rooms" => fields::<RoomsPage>(text, &kind)
            .and_then(RoomsPage::validated)
            .map(RequestBody::Rooms),
        "ping" => Ok(RequestBody::Ping),
        "sync" => fields::<SyncFields>(text, &kind).and_then(|f| {
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
        "send" => fields::<SendFields>(text, &kind).map(|f| RequestBody::Send {
            room_id: f.room_id,
            message: NewMessage {
                text: f.text,
                data: f.data,
                client_msg_id: f.client_msg_id,
            },
        }),
        "edit" => fields::<EditFields>(text, &kind).map(|f| RequestBody::Change {
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
        "delete" => fields::<DeleteFields>(text, &kind).map(|f| RequestBody::Change {
            room_id: f.room_id,
            change: NewChange::Delete {
                seq: f.seq,
                client_msg_id: f.client_msg_id,
            },
        }),
        "react" => fields::<ReactFields>(text, &kind).map(|f| RequestBody::Change {
            room_id: f.room_id,
            change: NewChange::React {
                seq: f.seq,
                reaction: f.reaction,
                removed: f.removed,
                client_msg_id: f.client_msg_id,
            },
        }),
        "direct" => {
            fields::<DirectFields>(text, &kind).map(|f| RequestBody::Direct { user_id: f.user_id })
        }
        "read" => fields::<ReadFields>(text, &kind).map(|f| RequestBody::Read {
            room_id: f.room_id,
            seq: f.seq,
        }),
        "typing" => {
            fields::<RoomOnly>(text, &kind).map(|f| RequestBody::Typing { room_id: f.room_id })
        }
        "received" => fields::<ReadFields>(text, &kind).map(|f| RequestBody::Received {
            room_id: f.room_id,
            seq: f.seq,
        }),
        "auth" => fields::<AuthFields>(text, &kind).map(|f| RequestBody::Auth { token: f.token }),
        "resume" => fields::<Resume>(text, &kind)
            .and_then(Resume::validated)
            .map(RequestBody::Resume),
        other => Err(Error::BadRequest(format!("unknown frame type {other:?}"))),
    };
    match body {
        Ok(body) => Ok(Request { id, body }),
        Err(error) => fail(error),
    }
}

fn fields<T: for<'de> Deserialize<'de>>(text: &str, kind: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::BadRequest(format!("{kind}: {e}")))
}

/// Every frame the server sends. Replies echo the request's `id` when it had one.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Rooms {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        rooms: &'a [RoomView],
        /// Only for a request with a `limit`: whether older rooms remain.
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
    },
    Messages {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        room_id: &'a RoomId,
        messages: &'a [Arc<Message>],
        has_more: bool,
        epoch: &'a str,
    },
    Resumed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        rooms: &'a [RoomView],
        messages: &'a BTreeMap<RoomId, Vec<Arc<Message>>>,
        has_more: &'a BTreeMap<RoomId, bool>,
        reset: &'a [RoomId],
        left: &'a [RoomId],
    },
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        room_id: &'a RoomId,
        seq: u64,
        ts: u64,
    },
    Room {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        room: &'a RoomView,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Error {
        id: Option<&'a RequestId>,
        code: &'static str,
        message: String,
    },
    Message {
        message: &'a Message,
    },
    Joined {
        room: &'a RoomView,
    },
    Left {
        room_id: &'a RoomId,
    },
    MemberJoined {
        room_id: &'a RoomId,
        user_id: &'a UserId,
    },
    MemberLeft {
        room_id: &'a RoomId,
        user_id: &'a UserId,
    },
    Typing {
        room_id: &'a RoomId,
        user_id: &'a UserId,
    },
    /// The token in force expires at `exp` (Unix seconds): send `auth` with a fresh one.
    TokenExpiring {
        exp: u64,
    },
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
