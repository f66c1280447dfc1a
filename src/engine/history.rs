//! History reads (`sync`, REST `GET .../messages`): which seqs a query wants, served from the
//! room's cache when it holds them, from disk otherwise.
//!
//! Because ts strictly increases with seq, "after timestamp T" is a seq range too: its start
//! is found in the cache, or by binary search over seq on disk, with no ts index.

use std::sync::Arc;

use super::records::message_from_record;
use super::room::Room;
use super::{Engine, Scope};
use crate::error::{Error, StorageError};
use crate::protocol::{
    HistoryQuery, Message, RoomId, UserId, DEFAULT_BEFORE_LIMIT, DEFAULT_SINCE_LIMIT,
};
use crate::storage::{SeqRange, Storage};

/// A page of history, oldest first.
pub struct Page {
    pub messages: Vec<Arc<Message>>,
    pub has_more: bool,
}

/// What a room's history spans when a query starts.
#[derive(Debug, Clone, Copy)]
struct Span {
    number: u64,
    first_seq: u64,
    last_seq: u64,
}

/// Which seqs a query wants: `from..=to` (empty when `from > to`), and `has_more`.
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    from: u64,
    to: u64,
    has_more: bool,
}

/// Resolves a query against a span. `seq_after_ts` is the first seq with ts > `since_ts`
/// (`last_seq + 1` when there is none), needed only for `since_ts` queries.
fn resolve(query: &HistoryQuery, span: Span, default_last: usize, seq_after_ts: u64) -> Wanted {
    let Span {
        first_seq,
        last_seq,
        ..
    } = span;
    let forward = |from: u64, limit: usize| {
        let from = from.max(first_seq);
        let to = last_seq.min(from.saturating_add(limit as u64 - 1));
        Wanted {
            from,
            to,
            has_more: to < last_seq,
        }
    };
    let backward = |end: u64, limit: usize| {
        let to = end.min(last_seq);
        let from = (to + 1).saturating_sub(limit as u64).max(first_seq);
        Wanted {
            from,
            to,
            has_more: from <= to && from > first_seq,
        }
    };
    let limit = query.limit;
    if let Some(seq) = query.since_seq {
        forward(seq.saturating_add(1), limit.unwrap_or(DEFAULT_SINCE_LIMIT))
    } else if query.since_ts.is_some() {
        forward(seq_after_ts, limit.unwrap_or(DEFAULT_SINCE_LIMIT))
    } else if let Some(before) = query.before_seq {
        backward(
            before.saturating_sub(1),
            limit.unwrap_or(DEFAULT_BEFORE_LIMIT),
        )
    } else {
        backward(last_seq, limit.unwrap_or(default_last))
    }
}

impl Engine {
    /// A page of a room's history. With a `reader`, they must be a member; without one
    /// (RouteAPI), closed rooms' kept history can be read too.
    pub async fn history(
        &self,
        room_id: &RoomId,
        query: &HistoryQuery,
        reader: Option<&UserId>,
    ) -> Result<Page, Error> {
        self.caught_up(Scope::Room(room_id)).await?;
        self.history_here(room_id, query, reader).await
    }

    /// [`Engine::history`] as this node has it now, for callers that caught up already.
    pub(super) async fn history_here(
        &self,
        room_id: &RoomId,
        query: &HistoryQuery,
        reader: Option<&UserId>,
    ) -> Result<Page, Error> {
        let room = self.room(room_id).await?;
        let (span, cached_seq_after_ts) = match &room {
            Some(room) => {
                let state = room.state();
                if let Some(user) = reader {
                    if !state.is_member(user) {
                        return Err(Error::not_member(room_id.as_str()));
                    }
                }
                let span = Span {
                    number: room.number,
                    first_seq: state.first_seq,
                    last_seq: state.committed.seq,
                };
                (
                    span,
                    query.since_ts.and_then(|ts| state.cached_seq_after_ts(ts)),
                )
            }
            None if reader.is_none() => (self.closed_room_span(room_id).await?, None),
            None => return Err(Error::room_not_found(room_id.as_str())),
        };
        let seq_after_ts = match (query.since_ts, cached_seq_after_ts) {
            (Some(ts), None) => {
                self.read_storage(move |s| first_seq_after_ts(s, span, ts))
                    .await?
            }
            (_, cached) => cached.unwrap_or(span.last_seq + 1),
        };
        let wanted = resolve(
            query,
            span,
            self.inner.config.history.default_last,
            seq_after_ts,
        );
        if wanted.from > wanted.to {
            return Ok(Page {
                messages: Vec::new(),
                has_more: wanted.has_more,
            });
        }
        let cached = room.and_then(|room| room.state().cached(wanted.from, wanted.to));
        let messages = match cached {
            Some(messages) => messages,
            None => {
                let room_id = room_id.clone();
                let count = (wanted.to - wanted.from + 1) as usize;
                self.read_storage(move |s| {
                    s.messages(span.number, SeqRange::After(wanted.from - 1), count)?
                        .into_iter()
                        .map(|(seq, record)| {
                            message_from_record(&room_id, seq, record).map(Arc::new)
                        })
                        .collect()
                })
                .await?
            }
        };
        Ok(Page {
            messages,
            has_more: wanted.has_more,
        })
    }

    /// Message `seq` of a room in its current state (`GET .../messages/{seq}`, and REST's
    /// answers with a stored message). Closed rooms' kept history can be read too.
    pub async fn message_at(&self, room_id: &RoomId, seq: u64) -> Result<Arc<Message>, Error> {
        let query = HistoryQuery {
            since_seq: Some(seq.saturating_sub(1)),
            limit: Some(1),
            ..HistoryQuery::default()
        };
        let page = self.history(room_id, &query, None).await?;
        page.messages
            .into_iter()
            .find(|m| m.seq == seq)
            .ok_or_else(|| Error::message_not_found(room_id.as_str(), seq))
    }

    /// Message `seq` of `room` as stored, read off the executor.
    pub(super) async fn stored_message(
        &self,
        room: &Room,
        seq: u64,
    ) -> Result<Option<Arc<Message>>, Error> {
        let (number, room_id) = (room.number, room.id.clone());
        self.read_storage(move |s| {
            s.message(number, seq)?
                .map(|record| message_from_record(&room_id, seq, record).map(Arc::new))
                .transpose()
        })
        .await
    }

    async fn closed_room_span(&self, room_id: &RoomId) -> Result<Span, Error> {
        let id = room_id.to_string();
        let span = self
            .read_storage(move |s| {
                let Some(record) = s.room(&id)? else {
                    return Ok(None);
                };
                let last_seq = s.last_stamp(record.number)?.map_or(0, |last| last.seq);
                let first_seq = s.first_seq(record.number)?.unwrap_or(last_seq + 1);
                Ok(Some(Span {
                    number: record.number,
                    first_seq,
                    last_seq,
                }))
            })
            .await?;
        span.ok_or_else(|| Error::room_not_found(room_id.as_str()))
    }
}

/// Binary search over seq for the first message with ts > `ts` (ts grows with seq).
fn first_seq_after_ts(storage: &Storage, span: Span, ts: u64) -> Result<u64, StorageError> {
    let (mut low, mut high) = (span.first_seq, span.last_seq + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        match storage.message(span.number, middle)? {
            Some(message) if message.ts > ts => high = middle,
            _ => low = middle + 1,
        }
    }
    Ok(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(first_seq: u64, last_seq: u64) -> Span {
        Span {
            number: 1,
            first_seq,
            last_seq,
        }
    }

    fn query(f: impl FnOnce(&mut HistoryQuery)) -> HistoryQuery {
        let mut query = HistoryQuery::default();
        f(&mut query);
        query
    }

    fn wanted(from: u64, to: u64, has_more: bool) -> Wanted {
        Wanted { from, to, has_more }
    }

    #[test]
    fn no_cursor_takes_the_last_n() {
        let q = query(|_| {});
        assert_eq!(resolve(&q, span(1, 120), 50, 0), wanted(71, 120, true));
        assert_eq!(resolve(&q, span(1, 30), 50, 0), wanted(1, 30, false));
        assert!(resolve(&q, span(1, 0), 50, 0).from > 0, "empty room");
        assert!(!resolve(&q, span(1, 0), 50, 0).has_more);
    }

    #[test]
    fn since_seq_pages_forward_until_the_end() {
        let q = query(|q| {
            q.since_seq = Some(10);
            q.limit = Some(5);
        });
        assert_eq!(resolve(&q, span(1, 30), 50, 0), wanted(11, 15, true));
        assert_eq!(resolve(&q, span(1, 15), 50, 0), wanted(11, 15, false));
        let past_end = resolve(&q, span(1, 10), 50, 0);
        assert!(past_end.from > past_end.to && !past_end.has_more);
    }

    #[test]
    fn since_ts_starts_at_the_resolved_seq() {
        let q = query(|q| q.since_ts = Some(999));
        assert_eq!(resolve(&q, span(1, 300), 50, 7), wanted(7, 106, true));
    }

    #[test]
    fn before_seq_scrolls_back() {
        let q = query(|q| {
            q.before_seq = Some(20);
            q.limit = Some(5);
        });
        assert_eq!(resolve(&q, span(1, 30), 50, 0), wanted(15, 19, true));
        let near_start = query(|q| q.before_seq = Some(3));
        assert_eq!(
            resolve(&near_start, span(1, 30), 50, 0),
            wanted(1, 2, false)
        );
        let at_start = resolve(&query(|q| q.before_seq = Some(1)), span(1, 30), 50, 0);
        assert!(at_start.from > at_start.to && !at_start.has_more);
    }
}
