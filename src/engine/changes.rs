//! Message changes as requests see them: edits, deletions and reactions, from a user over
//! WebSocket or from RouteAPI over REST. Each is validated here, then decided like a send
//! (local.rs or the cluster) with the rules of rules.rs, and stored as a message of its own
//! kind in the room's seq.

use super::change::{Amendment, Post};
use super::local::check_can_post;
use super::messages::Accepted;
use super::room::Target;
use super::rules::{self, Verdict};
use super::Engine;
use crate::error::Error;
use crate::protocol::{NewChange, RoomId, UserId};

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
        let post = match change {
            NewChange::Edit { seq, message } => {
                let (text, data, client_msg_id) = message.into_parts();
                Post {
                    sender: sender.cloned(),
                    change: Some(Amendment::Edit { target_seq: seq }),
                    text,
                    data,
                    client_msg_id,
                }
            }
            NewChange::Delete { seq, client_msg_id } => Post {
                sender: sender.cloned(),
                change: Some(Amendment::Delete { target_seq: seq }),
                text: String::new(),
                data: None,
                client_msg_id,
            },
            NewChange::React {
                seq,
                reaction,
                removed,
                client_msg_id,
            } => Post {
                sender: sender.cloned(),
                change: Some(Amendment::Reaction {
                    target_seq: seq,
                    removed,
                }),
                text: reaction,
                data: None,
                client_msg_id,
            },
        };
        self.accept_post(room_id, post).await
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
        let room = self.open_room(room_id)?;
        let mut read = None;
        loop {
            let found = {
                let state = room.state();
                check_can_post(&room, &state, post.sender.as_ref())?;
                if target_seq > state.committed.seq {
                    return Ok(Some(Judged {
                        target_seq,
                        version: None,
                        verdict: Verdict::Changes,
                    }));
                }
                (
                    state.target(target_seq, read.as_ref()),
                    state.target_commits,
                )
            };
            let target = match found {
                (Target::Found(target), _) => target,
                (Target::Missing, _) => {
                    return Err(Error::message_not_found(room_id.as_str(), target_seq))
                }
                (Target::OnDisk, commits) => {
                    read = Some((commits, self.stored_message(&room, target_seq).await?));
                    continue;
                }
            };
            return Ok(Some(Judged {
                target_seq,
                version: Some(target.changes),
                verdict: rules::judge(amendment, post, &target)?,
            }));
        }
    }
}
