//! `resume`: the app's start-up in one round trip. Every room of the user with its unread
//! count; for each room the app has cached under the current epoch, what came after its
//! seq; for the others, the latest messages and a `reset` so the app replaces its cache; and
//! the cached rooms the user is no longer in.
//!
//! Nothing holds pushes back while the reply is built: a message committed meanwhile is in
//! the reply, or pushed, or both, and the app drops what it has by seq.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::history::Page;
use super::{Engine, Scope};
use crate::error::Error;
use crate::protocol::{HistoryQuery, Message, Resume, RoomId, RoomView, RoomsPage, UserId};

/// The `resumed` reply.
pub struct Resumed {
    pub rooms: Vec<RoomView>,
    pub messages: BTreeMap<RoomId, Vec<Arc<Message>>>,
    pub has_more: BTreeMap<RoomId, bool>,
    /// Listed rooms whose cache the app must replace.
    pub reset: Vec<RoomId>,
    /// Listed rooms the user is not a member of.
    pub left: Vec<RoomId>,
}

impl Engine {
    pub async fn resume(&self, user: &UserId, request: &Resume) -> Result<Resumed, Error> {
        let max = self.inner.config.limits.max_resume_rooms;
        if request.rooms.len() > max {
            return Err(Error::BadRequest(format!(
                "resume lists {} rooms; at most {max} (limits.max_resume_rooms)",
                request.rooms.len()
            )));
        }
        let limit = request.limit;
        let epoch = self.epoch();
        // Once for every room, not once per room.
        self.caught_up(Scope::Everything).await?;
        let listed = self.rooms_here(user, &RoomsPage::default()).await?.rooms;
        let mut resumed = Resumed {
            rooms: Vec::with_capacity(listed.len()),
            messages: BTreeMap::new(),
            has_more: BTreeMap::new(),
            reset: Vec::new(),
            left: Vec::new(),
        };
        for room in listed {
            let cached = request.rooms.get(&room.room_id);
            // A seq beyond the room's last is history from another epoch too.
            let since = cached
                .filter(|c| *c.epoch == *epoch && c.seq <= room.last_seq)
                .map(|c| c.seq);
            // Without a seq to go on from: the latest `history.default_last`.
            let query = HistoryQuery {
                since_seq: since,
                limit: since.and(limit),
                ..HistoryQuery::default()
            };
            let page = match self.history_here(&room.room_id, &query, Some(user)).await {
                Ok(page) => page,
                // Left or closed since the list was read.
                Err(Error::NotFound(_) | Error::NotMember(_)) => continue,
                Err(e) => return Err(e),
            };
            let page = match since {
                Some(seq) if cut_behind(&page, seq, room.last_seq) => {
                    let latest = HistoryQuery::default();
                    match self.history_here(&room.room_id, &latest, Some(user)).await {
                        Ok(page) => (page, true),
                        Err(Error::NotFound(_) | Error::NotMember(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Some(_) => (page, false),
                None => (page, cached.is_some()),
            };
            let (Page { messages, has_more }, reset) = page;
            if reset {
                resumed.reset.push(room.room_id.clone());
            }
            resumed.messages.insert(room.room_id.clone(), messages);
            resumed.has_more.insert(room.room_id.clone(), has_more);
            resumed.rooms.push(room);
        }
        resumed.left = request
            .rooms
            .keys()
            .filter(|id| !resumed.messages.contains_key(*id))
            .cloned()
            .collect();
        Ok(resumed)
    }
}

/// Whether retention deleted messages right after `seq` (the page, which starts after it,
/// does not start at `seq + 1`), so the app's cache cannot be continued.
fn cut_behind(page: &Page, seq: u64, last_seq: u64) -> bool {
    match page.messages.first() {
        Some(first) => first.seq > seq + 1,
        None => seq < last_seq,
    }
}
