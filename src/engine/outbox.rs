//! The webhook events a change leaves in the outbox, written in the change's own batch: a
//! crash loses none, and no event exists for a change that was not stored. Each event's
//! `id` names its change and the history epoch it was made in (ids and epochs never hold
//! `/`), so a retried delivery repeats the same ids, and the seqs handed out again after a
//! restore make new ones.

use serde_json::json;

use crate::config::EventType;
use crate::protocol::{now_ms, Message, RoomId, UserId};
use crate::storage::Batch;

use super::Engine;

/// The event stream and seq of a stored event, from its `id`
/// (`<kind>/<epoch>/<about>.../<seq>`): every node writes a stream's events in the same
/// order, so how far one node delivered it says which copies the others may drop.
pub(super) fn stream_of(json: &[u8]) -> Option<(&str, u64)> {
    let rest = json.strip_prefix(br#"{"id":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let id = std::str::from_utf8(&rest[..end]).ok()?;
    let (stream, seq) = id.rsplit_once('/')?;
    Some((stream, seq.parse().ok()?))
}

impl Engine {
    /// An event's `id`: its type first (the sender tells `read` and `notify` events by it),
    /// then the history epoch, then what it is about.
    pub(super) fn event_id(&self, kind: &str, about: std::fmt::Arguments<'_>) -> String {
        format!("{kind}/{}/{about}", self.epoch())
    }

    /// A `message` event for a stored message or change, if events of that type are sent.
    pub(super) fn message_event(&self, batch: &mut Batch, message: &Message) {
        if !self.inner.config.webhooks.sends(EventType::Message) {
            return;
        }
        // Written straight from the message (this is on the send path); `id` comes first,
        // which is how the sender tells the events it must fill in from those it must not.
        #[derive(serde::Serialize)]
        struct MessageEvent<'a> {
            id: String,
            #[serde(rename = "type")]
            kind: &'static str,
            ts: u64,
            room_id: &'a RoomId,
            message: &'a Message,
        }
        let event = MessageEvent {
            id: self.event_id(
                "message",
                format_args!("{}/{}", message.room_id, message.seq),
            ),
            kind: "message",
            ts: message.ts,
            room_id: &message.room_id,
            message,
        };
        // Messages hold only strings, numbers and JSON already parsed: encoding cannot fail.
        let json = serde_json::to_vec(&event).expect("events always encode");
        batch.event(json);
    }

    /// For a `text` or `system` message: its pending `notify`, due `webhooks.notify_delay_ms`
    /// after now, naming the members but the sender. Resolved by the webhook sender.
    pub(super) fn pending_notify(&self, batch: &mut Batch, message: &Message, audience: &[UserId]) {
        let hooks = &self.inner.config.webhooks;
        if !hooks.sends(EventType::Notify) || !message.kind.is_content() {
            return;
        }
        let users: Vec<&UserId> = audience
            .iter()
            .filter(|user| message.sender.as_ref() != Some(*user))
            .collect();
        if users.is_empty() {
            return;
        }
        let pending = json!({"room_id": message.room_id, "seq": message.seq, "users": users, "message": message});
        let due = now_ms() + hooks.notify_delay_ms;
        let json = pending.to_string().into_bytes();
        batch.pending_notify(due, message.room_id.as_str(), message.seq, json);
    }

    /// A `read` event for a read marker that moved to `seq`. The user's total unread count
    /// is added when it is sent, so it is current then.
    pub(super) fn read_event(&self, batch: &mut Batch, room_id: &RoomId, user: &UserId, seq: u64) {
        if !self.inner.config.webhooks.sends(EventType::Read) {
            return;
        }
        let event = json!({
            "id": self.event_id("read", format_args!("{room_id}/{user}/{seq}")),
            "type": "read",
            "ts": now_ms(),
            "room_id": room_id,
            "user_id": user,
            "seq": seq,
        });
        batch.event(event.to_string().into_bytes());
    }
}
