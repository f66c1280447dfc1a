//! Message changes as requests see them: edits, deletions and reactions, from a user over
//! WebSocket or from RouteAPI over REST. Each is validated here, then decided like a send
//! (local.rs or the cluster) with the rules of rules.rs, and stored as a message of its own
//! kind in the room's seq.

use std::sync::Arc;

use super::change::{Amendment, Post};
use super::local::check_can_post;
use super::messages::Accepted;
use super::room::{Room, RoomState, Target};
use super::rules::{self, Verdict};
use super::Engine;
use crate::error::Error;
use crate::protocol::{Message, NewChange, RoomId, UserId};

impl Engine {
    /// Decides a change to message `change.seq()` of `room_id` by `sender` (`None`:
    /// RouteAPI) and queues it; the result resolves once it is durable, to `None` when it
    /// changed nothing.
    pub async fn accept_change(
        &self,
        room_id: &RoomId,
        sender: Option<&UserId>,
        change: NewChange,
    ) -> Result<Accepted, Error> {
        change.validate(self.inner.config.limits.max_message_bytes)?;
        let (amendment, text, data, client_msg_id) = match change {
            NewChange::Edit { seq, message } => {
                let (text, data, client_msg_id) = message.into_parts();
                (
                    Amendment::Edit { target_seq: seq },
                    text,
                    data,
                    client_msg_id,
                )
            }
            NewChange::Delete { seq, client_msg_id } => (
                Amendment::Delete { target_seq: seq },
                String::new(),
                None,
                client_msg_id,
            ),
            NewChange::React {
                seq,
                reaction,
                removed,
                client_msg_id,
            } => (
                Amendment::Reaction {
                    target_seq: seq,
                    removed,
                },
                reaction,
                None,
                client_msg_id,
            ),
        };
        let post = Post {
            sender: sender.cloned(),
            change: Some(amendment),
            text,
            data,
            client_msg_id,
        };
        self.accept_post(room_id, post).await
    }
}

/// What a change would do to its target, as a room's state has it now.
pub(super) enum Judging {
    /// The target in its current state, and the rules' verdict on the change.
    Judged(Arc<Message>, Verdict),
    /// The target is on disk only: read it (noting the room's `target_commits` given here)
    /// and judge again with what was read.
    OnDisk(u64),
}

/// Judges `post`, a change of `amendment`'s target, against `state` (call under the room's
/// lock, once the sender may post). `read` is what an earlier pass read from disk.
pub(super) fn judge_in_room(
    room: &Room,
    state: &RoomState,
    post: &Post,
    amendment: Amendment,
    read: Option<&(u64, Option<Arc<Message>>)>,
) -> Result<Judging, Error> {
    let seq = amendment.target_seq();
    match state.target(seq, read) {
        Target::Found(target) => {
            let verdict = rules::judge(amendment, post, &target)?;
            Ok(Judging::Judged(target, verdict))
        }
        Target::Missing => Err(Error::message_not_found(room.id.as_str(), seq)),
        Target::OnDisk => Ok(Judging::OnDisk(state.target_commits)),
    }
}

/// A change judged against this node's applied state (cluster mode; see rules.rs).
#[derive(Debug)]
pub struct Judged {
    pub target_seq: u64,
    /// How many changes the target has had here; `None` when this node has not applied the
    /// target yet (Redis then tells whether it exists).
    pub version: Option<u32>,
    pub verdict: Verdict,
    /// Whether the change deletes its target, which every other change's verdict depends on.
    pub deletes: bool,
}

impl Engine {
    /// Judges `post`, if it is a change, against the target as this node has it: the
    /// rules' errors, whether it would change anything, and the target's version. `None`
    /// for a new message.
    pub async fn judge_change(
        &self,
        room_id: &RoomId,
        post: &Post,
    ) -> Result<Option<Judged>, Error> {
        let Some(amendment) = post.change else {
            return Ok(None);
        };
        let target_seq = amendment.target_seq();
        let deletes = matches!(amendment, Amendment::Delete { .. });
        let room = self.open_room(room_id).await?;
        let mut read = None;
        loop {
            let judging = {
                let state = room.state();
                check_can_post(&room, &state, post.sender.as_ref())?;
                if target_seq > state.committed.seq {
                    return Ok(Some(Judged {
                        target_seq,
                        version: None,
                        verdict: Verdict::Changes,
                        deletes,
                    }));
                }
                judge_in_room(&room, &state, post, amendment, read.as_ref())?
            };
            match judging {
                Judging::Judged(target, verdict) => {
                    return Ok(Some(Judged {
                        target_seq,
                        version: Some(target.changes),
                        verdict,
                        deletes,
                    }))
                }
                Judging::OnDisk(commits) => {
                    read = Some((commits, self.stored_message(&room, target_seq).await?));
                }
            }
        }
    }
}
