//! Between the wire types and storage's records: storage owns its enums and strings, the
//! engine its typed ids and wire enums, and this is the one place they meet.

use serde_json::value::RawValue;

use super::room::Member;
use crate::error::StorageError;
use crate::protocol::{Id, Message, MessageKind, Reactions, RoomId, RoomKind};
use crate::storage::{MessageRecord, ReadRecord, StampRecord, StoredMessageKind, StoredRoomKind};

pub fn stored_room_kind(kind: RoomKind) -> StoredRoomKind {
    match kind {
        RoomKind::Route => StoredRoomKind::Route,
        RoomKind::Direct => StoredRoomKind::Direct,
    }
}

pub fn room_kind(kind: StoredRoomKind) -> RoomKind {
    match kind {
        StoredRoomKind::Route => RoomKind::Route,
        StoredRoomKind::Direct => RoomKind::Direct,
    }
}

fn stored_message_kind(kind: MessageKind) -> StoredMessageKind {
    match kind {
        MessageKind::Text => StoredMessageKind::Text,
        MessageKind::System => StoredMessageKind::System,
        MessageKind::Edit => StoredMessageKind::Edit,
        MessageKind::Delete => StoredMessageKind::Delete,
        MessageKind::Reaction => StoredMessageKind::Reaction,
    }
}

fn message_kind(kind: StoredMessageKind) -> MessageKind {
    match kind {
        StoredMessageKind::Text => MessageKind::Text,
        StoredMessageKind::System => MessageKind::System,
        StoredMessageKind::Edit => MessageKind::Edit,
        StoredMessageKind::Delete => MessageKind::Delete,
        StoredMessageKind::Reaction => MessageKind::Reaction,
    }
}

/// An id read back from disk; it was valid when written, so a bad one is corruption.
pub fn stored_id<K>(cf: &'static str, text: &str) -> Result<Id<K>, StorageError> {
    Id::parse(text).map_err(|e| StorageError::Corrupt {
        cf,
        reason: e.to_string(),
    })
}

pub fn record_of(message: &Message) -> MessageRecord {
    MessageRecord {
        ts: message.ts,
        sender: message.sender.as_ref().map(|s| s.to_string()),
        kind: stored_message_kind(message.kind),
        text: message.text.clone(),
        data: message.data.as_ref().map(|d| d.get().to_owned()),
        client_msg_id: message.client_msg_id.clone(),
        target_seq: message.target_seq,
        removed: message.removed,
        edited: message
            .edited_ts
            .zip(message.edit_seq)
            .map(|(ts, seq)| StampRecord { seq, ts }),
        deleted: message.deleted,
        reactions: message
            .reactions
            .0
            .iter()
            .map(|(reaction, users)| {
                let users = users.iter().map(|u| u.to_string()).collect();
                (reaction.clone(), users)
            })
            .collect(),
        changes: message.changes,
    }
}

pub fn message_from_record(
    room_id: &RoomId,
    seq: u64,
    record: MessageRecord,
) -> Result<Message, StorageError> {
    const CF: &str = "messages";
    let data = record
        .data
        .map(RawValue::from_string)
        .transpose()
        .map_err(|e| StorageError::Corrupt {
            cf: CF,
            reason: e.to_string(),
        })?;
    let sender = record
        .sender
        .as_deref()
        .map(|s| stored_id(CF, s))
        .transpose()?;
    let reactions = record
        .reactions
        .into_iter()
        .map(|(reaction, users)| {
            let users = users
                .iter()
                .map(|u| stored_id(CF, u))
                .collect::<Result<_, _>>()?;
            Ok((reaction, users))
        })
        .collect::<Result<_, StorageError>>()?;
    let mut message = Message::new(
        room_id.clone(),
        seq,
        record.ts,
        sender,
        message_kind(record.kind),
        record.text,
    );
    message.data = data;
    message.client_msg_id = record.client_msg_id;
    message.target_seq = record.target_seq;
    message.removed = record.removed;
    message.edited_ts = record.edited.map(|e| e.ts);
    message.edit_seq = record.edited.map(|e| e.seq);
    message.deleted = record.deleted;
    message.reactions = Reactions(reactions);
    message.changes = record.changes;
    Ok(message)
}

/// A member's read marker and counts as stored.
pub fn read_record(member: Member) -> ReadRecord {
    ReadRecord {
        seq: member.read_seq,
        own: member.own,
        base: member.base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UserId;

    #[test]
    fn messages_survive_the_trip_to_disk() {
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let room = RoomId::parse("r").unwrap();
        let mut message = Message::new(
            room.clone(),
            3,
            30,
            Some(a.clone()),
            MessageKind::Text,
            "x".into(),
        );
        message.data = Some(RawValue::from_string(r#"{"k":1}"#.into()).unwrap());
        message.edited_ts = Some(40);
        message.edit_seq = Some(4);
        message.reactions.add("+1", &b);
        message.changes = 2;
        let back = message_from_record(&room, 3, record_of(&message)).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&message).unwrap()
        );
        assert_eq!((back.edit_seq, back.changes), (Some(4), 2));
        for kind in [
            MessageKind::Edit,
            MessageKind::Delete,
            MessageKind::Reaction,
            MessageKind::System,
        ] {
            assert_eq!(message_kind(stored_message_kind(kind)), kind);
        }
    }
}
