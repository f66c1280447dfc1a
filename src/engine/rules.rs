//! The rules of message changes (edit, delete, react), written once: [`judge`] decides
//! whether a change may be made and whether it would change anything, against the target's
//! current state; [`changed`] computes the target's next state. Both modes use them: one node
//! under the room's lock; in cluster mode the asking node, whose decision Redis accepts only
//! if nothing it depends on changed since (a delete, or the same sender's change; see the
//! cluster's send script), and then every node applying the change.

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
            let same_data =
                target.data.as_ref().map(|d| d.get()) == post.data.as_ref().map(|d| d.get());
            if target.text == post.text && same_data {
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
            if target.deleted {
                return Err(deleted(&target.room_id, target.seq));
            }
            let has = post
                .sender
                .as_ref()
                .is_some_and(|user| target.reactions.has(&post.text, user));
            if has == removed {
                Verdict::Changes
            } else {
                Verdict::Nothing
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
