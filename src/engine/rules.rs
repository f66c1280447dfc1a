//! The rules of message changes (edit, delete, react), written once: [`judge`] decides
//! whether a change may be made and whether it would change anything, against the target's
//! current state; [`changed`] computes the target's next state. Both modes use them: one node
//! under the room's lock; in cluster mode the asking node, whose decision Redis accepts only
//! if nothing it depends on changed since (a delete, or the same sender's change; see the
//! cluster's send script), and then every node applying the change.

use serde_json::value::RawValue;

use super::change::{Amendment, Post};
use crate::error::Error;
use crate::protocol::{Message, RoomId};

/// What a change would do to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It changes the target: store it.
    Changes,
    /// It would change nothing (a retry, or a reaction already there): store nothing.
    Nothing,
}

/// Whether `post` (a change) may change `target`, and whether it would.
pub fn judge(amendment: Amendment, post: &Post, target: &Message) -> Result<Verdict, Error> {
    if !target.kind.is_content() {
        return Err(Error::BadRequest(format!(
            "message {} of room {} is itself a change; only text and system messages change",
            target.seq, target.room_id
        )));
    }
    let own = target.sender == post.sender;
    let verdict = match amendment {
        Amendment::Edit { .. } => {
            if !own {
                return Err(not_theirs(&target.room_id, target.seq, "edit"));
            }
            if target.deleted {
                return Err(deleted(&target.room_id, target.seq));
            }
            if target.text == post.text && same_json(target.data.as_deref(), post.data.as_deref()) {
                Verdict::Nothing
            } else {
                Verdict::Changes
            }
        }
        Amendment::Delete { .. } => {
            // RouteAPI (no sender) moderates: it may delete any message.
            if post.sender.is_some() && !own {
                return Err(not_theirs(&target.room_id, target.seq, "delete"));
            }
            if target.deleted {
                Verdict::Nothing
            } else {
                Verdict::Changes
            }
        }
        Amendment::Reaction { removed, .. } => {
            let has = post
                .sender
                .as_ref()
                .is_some_and(|user| target.reactions.has(&post.text, user));
            // A reaction already there, or a removal of one that is not, changes nothing
            // even on a deleted message: a retry gets `ok`, whatever happened meanwhile.
            if has != removed {
                Verdict::Nothing
            } else if target.deleted {
                return Err(deleted(&target.room_id, target.seq));
            } else {
                Verdict::Changes
            }
        }
    };
    Ok(verdict)
}

/// The target after `change` (a stored change message) was applied to it. Every node computes
/// the same, from the same target and change.
pub fn changed(target: &Message, change: &Message, amendment: Amendment) -> Message {
    let mut next = target.clone();
    next.changes += 1;
    match amendment {
        Amendment::Edit { .. } if !target.deleted => {
            next.text = change.text.clone();
            next.data = change.data.clone();
            next.edited_ts = Some(change.ts);
            next.edit_seq = Some(change.seq);
        }
        Amendment::Delete { .. } => {
            next.deleted = true;
            next.text = String::new();
            next.data = None;
        }
        Amendment::Reaction { removed, .. } if !target.deleted => {
            if let Some(user) = &change.sender {
                if removed {
                    next.reactions.remove(&change.text, user);
                } else {
                    next.reactions.add(&change.text, user);
                }
            }
        }
        // A change decided against a state that a concurrent one overtook: the target keeps
        // its state (cluster mode's version check makes this unreachable).
        _ => {}
    }
    next
}

/// Whether two `data` objects are the same JSON, however spaced or ordered: a retried edit
/// from another client library changes nothing.
fn same_json(a: Option<&RawValue>, b: Option<&RawValue>) -> bool {
    let value = |raw: &RawValue| serde_json::from_str::<serde_json::Value>(raw.get()).ok();
    match (a, b) {
        (Some(a), Some(b)) => a.get() == b.get() || value(a).is_some_and(|a| Some(a) == value(b)),
        (a, b) => a.is_none() && b.is_none(),
    }
}

fn not_theirs(room_id: &RoomId, seq: u64, what: &str) -> Error {
    Error::Forbidden(format!(
        "message {seq} of room {room_id} is not yours to {what}"
    ))
}

fn deleted(room_id: &RoomId, seq: u64) -> Error {
    Error::Conflict(format!("message {seq} of room {room_id} was deleted"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageKind, UserId};

    fn user(name: &str) -> Option<UserId> {
        Some(UserId::parse(name).unwrap())
    }

    fn target(sender: Option<UserId>, kind: MessageKind) -> Message {
        Message::new(
            RoomId::parse("r").unwrap(),
            1,
            10,
            sender,
            kind,
            "hi".into(),
        )
    }

    fn post(sender: Option<UserId>, text: &str) -> Post {
        Post {
            sender,
            change: None,
            text: text.into(),
            data: None,
            client_msg_id: None,
        }
    }

    const EDIT: Amendment = Amendment::Edit { target_seq: 1 };
    const DELETE: Amendment = Amendment::Delete { target_seq: 1 };
    const REACT: Amendment = Amendment::Reaction {
        target_seq: 1,
        removed: false,
    };
    const UNREACT: Amendment = Amendment::Reaction {
        target_seq: 1,
        removed: true,
    };

    fn code(result: Result<Verdict, Error>) -> &'static str {
        result.unwrap_err().code()
    }

    #[test]
    fn only_the_sender_edits_and_routeapi_edits_system_messages() {
        let mine = target(user("a"), MessageKind::Text);
        assert_eq!(
            judge(EDIT, &post(user("a"), "new"), &mine).unwrap(),
            Verdict::Changes
        );
        assert_eq!(
            code(judge(EDIT, &post(user("b"), "new"), &mine)),
            "forbidden"
        );
        assert_eq!(code(judge(EDIT, &post(None, "new"), &mine)), "forbidden");
        let system = target(None, MessageKind::System);
        assert_eq!(
            judge(EDIT, &post(None, "new"), &system).unwrap(),
            Verdict::Changes
        );
        assert_eq!(
            code(judge(EDIT, &post(user("a"), "new"), &system)),
            "forbidden"
        );
        assert_eq!(
            judge(EDIT, &post(user("a"), "hi"), &mine).unwrap(),
            Verdict::Nothing,
            "the same text and data change nothing"
        );
    }

    #[test]
    fn routeapi_deletes_anything_users_their_own() {
        let theirs = target(user("a"), MessageKind::Text);
        assert_eq!(
            judge(DELETE, &post(None, ""), &theirs).unwrap(),
            Verdict::Changes
        );
        assert_eq!(
            code(judge(DELETE, &post(user("b"), ""), &theirs)),
            "forbidden"
        );
        let deleted = changed(&theirs, &target(None, MessageKind::Delete), DELETE);
        assert!(deleted.deleted && deleted.text.is_empty() && deleted.data.is_none());
        assert_eq!(
            judge(DELETE, &post(user("a"), ""), &deleted).unwrap(),
            Verdict::Nothing
        );
        assert_eq!(
            code(judge(EDIT, &post(user("a"), "x"), &deleted)),
            "conflict"
        );
        assert_eq!(
            code(judge(REACT, &post(user("b"), "+1"), &deleted)),
            "conflict"
        );
        assert_eq!(
            judge(UNREACT, &post(user("b"), "+1"), &deleted).unwrap(),
            Verdict::Nothing,
            "removing a reaction one does not have changes nothing, deleted or not"
        );
    }

    #[test]
    fn a_reaction_left_on_a_deleted_message_is_kept_and_a_retry_is_nothing() {
        let t = target(user("a"), MessageKind::Text);
        let mut change = target(user("b"), MessageKind::Reaction);
        change.text = "+1".into();
        let reacted = changed(&t, &change, REACT);
        let deleted = changed(&reacted, &target(None, MessageKind::Delete), DELETE);
        let react = post(user("b"), "+1");
        assert_eq!(judge(REACT, &react, &deleted).unwrap(), Verdict::Nothing);
        assert_eq!(code(judge(UNREACT, &react, &deleted)), "conflict");
    }

    #[test]
    fn an_edit_with_the_same_data_spelled_otherwise_changes_nothing() {
        let raw = |json: &str| Some(RawValue::from_string(json.to_owned()).unwrap());
        let mut mine = target(user("a"), MessageKind::Text);
        mine.data = raw(r#"{"k":1,"j":[true]}"#);
        let mut again = post(user("a"), "hi");
        again.data = raw(r#"{ "j": [ true ], "k": 1 }"#);
        assert_eq!(judge(EDIT, &again, &mine).unwrap(), Verdict::Nothing);
        again.data = raw(r#"{"k":2,"j":[true]}"#);
        assert_eq!(judge(EDIT, &again, &mine).unwrap(), Verdict::Changes);
        again.data = None;
        assert_eq!(judge(EDIT, &again, &mine).unwrap(), Verdict::Changes);
    }

    #[test]
    fn changes_are_not_targets() {
        for kind in [
            MessageKind::Edit,
            MessageKind::Delete,
            MessageKind::Reaction,
        ] {
            let change = target(user("a"), kind);
            assert_eq!(
                code(judge(REACT, &post(user("a"), "+1"), &change)),
                "bad_request"
            );
        }
    }

    #[test]
    fn reactions_toggle_and_repeats_change_nothing() {
        let t = target(user("a"), MessageKind::Text);
        let react = post(user("b"), "+1");
        assert_eq!(judge(UNREACT, &react, &t).unwrap(), Verdict::Nothing);
        assert_eq!(judge(REACT, &react, &t).unwrap(), Verdict::Changes);
        let mut change = target(user("b"), MessageKind::Reaction);
        change.text = "+1".into();
        let reacted = changed(&t, &change, REACT);
        assert!(reacted.reactions.has("+1", &user("b").unwrap()));
        assert_eq!(reacted.changes, 1);
        assert_eq!(judge(REACT, &react, &reacted).unwrap(), Verdict::Nothing);
        assert_eq!(judge(UNREACT, &react, &reacted).unwrap(), Verdict::Changes);
        let unreacted = changed(&reacted, &change, UNREACT);
        assert!(unreacted.reactions.is_empty());
    }

    #[test]
    fn an_edit_replaces_text_and_data_and_stamps_the_target() {
        let t = target(user("a"), MessageKind::Text);
        let mut edit = target(user("a"), MessageKind::Edit);
        edit.seq = 5;
        edit.ts = 50;
        edit.text = "new".into();
        let edited = changed(&t, &edit, EDIT);
        assert_eq!(
            (edited.text.as_str(), edited.edited_ts, edited.edit_seq),
            ("new", Some(50), Some(5))
        );
        assert!(edited.data.is_none());
    }
}
