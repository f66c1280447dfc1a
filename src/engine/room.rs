//! One open room in memory: members with their read counts, seq/ts counters, the
//! recent-message cache, the window of recent `client_msg_id`s, and what was assigned but is
//! not durable yet (messages in flight, the targets of changes).
//!
//! Everything mutable sits behind the room's one mutex, held only for short, synchronous
//! steps (never across an `.await`). Two counters matter: `assigned` is the last seq handed
//! out; `committed` is the last one durable, and the only one anybody can see.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;
use crate::protocol::{Message, RoomId, RoomKind, RoomView, UserId};
use crate::sync::lock;

/// A seq and the ts that goes with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub ts: u64,
}

impl Stamp {
    /// The stamp after this one: ts is `max(now, previous + 1)` so it strictly increases.
    pub fn next(self, now: u64) -> Stamp {
        Stamp {
            seq: self.seq + 1,
            ts: now.max(self.ts + 1),
        }
    }
}

/// A member's read marker and counts, as stored ([`crate::storage::ReadRecord`]): their
/// unread count is the room's `content` minus `own` minus `base`, with no message read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Member {
    /// Last seq the member has read; unread counts what comes after it.
    pub read_seq: u64,
    /// `text` and `system` messages the member sent.
    pub own: u64,
    /// `text` and `system` messages others sent up to `read_seq`.
    pub base: u64,
}

pub struct Room {
    pub id: RoomId,
    /// Prefix of the room's message keys on disk.
    pub number: u64,
    pub kind: RoomKind,
    pub owner: Option<UserId>,
    pub created_ts: u64,
    /// Moves when a failed write rolls this room back; writes built before it are refused.
    pub generation: Arc<AtomicU64>,
    /// When the room was last used, in seconds of the resident set's clock: which rooms
    /// to unload first.
    pub touched: AtomicU64,
    state: Mutex<RoomState>,
}

/// Who a sender is, for dedup: a user, or RouteAPI (`None`).
pub type DedupKey = (Option<UserId>, String);

pub struct RoomState {
    pub closed: bool,
    pub members: BTreeMap<UserId, Member>,
    /// The members when the last membership change was made, shared by every message
    /// assigned since: a message goes to exactly the members it was sent to.
    pub audience: Arc<[UserId]>,
    pub assigned: Stamp,
    pub committed: Stamp,
    /// Oldest seq still stored.
    pub first_seq: u64,
    /// `text` and `system` messages assigned so far, ever (what unread counts are made of).
    pub content: u64,
    /// Messages assigned but not yet committed, ascending by seq.
    inflight: VecDeque<Arc<Message>>,
    /// The newest committed messages, ascending by seq, at most `cache_limit`.
    pub recent: VecDeque<Arc<Message>>,
    cache_limit: usize,
    /// Recent `client_msg_id`s and what they were answered with, oldest first.
    dedup: HashMap<DedupKey, Stamp>,
    dedup_order: VecDeque<(DedupKey, u64)>,
    /// Bumped each time a committed entry leaves the dedup window; a sender that checked
    /// disk compares it to know whether the window lost an entry meanwhile.
    pub dedup_evictions: u64,
    /// Whether the window holds every `client_msg_id` the room ever had (a room created by
    /// this process that never evicted one), so a miss needs no disk read.
    pub dedup_complete: bool,
    /// Targets of changes assigned but not yet committed: their state after those changes,
    /// and the seq of the latest such change. Decisions read them before the cache or disk.
    pending_targets: HashMap<u64, (Arc<Message>, u64)>,
    /// Bumped each time a change to a target commits; a decision that read a target from
    /// disk compares it to know whether the target changed meanwhile.
    pub target_commits: u64,
    /// When a member last joined or left, or the room was created.
    pub membership_changed_ts: u64,
    /// The highest seq each member's app said it received (`received`), since the room was
    /// loaded: who a `notify` leaves out.
    pub received: HashMap<UserId, u64>,
}

/// Where a target's current state is, as far as the room's memory knows.
pub enum Target {
    Found(Arc<Message>),
    /// Not a message of this room (never sent, or deleted by retention).
    Missing,
    /// On disk only: read it there, then ask again with what was read.
    OnDisk,
}

impl Room {
    pub fn new(
        id: RoomId,
        number: u64,
        kind: RoomKind,
        owner: Option<UserId>,
        created_ts: u64,
        state: RoomState,
    ) -> Room {
        Room {
            id,
            number,
            kind,
            owner,
            created_ts,
            generation: Arc::new(AtomicU64::new(0)),
            touched: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, RoomState> {
        lock(&self.state)
    }

    /// A room closed while the caller waited for its lock is gone: `not_found`.
    pub fn ensure_open(&self, state: &RoomState) -> Result<(), Error> {
        if state.closed {
            return Err(Error::room_not_found(self.id.as_str()));
        }
        Ok(())
    }

    /// Notes a use at `now` on the resident set's clock.
    pub fn touch(&self, now: u64) {
        if self.touched.load(Ordering::Relaxed) != now {
            self.touched.store(now, Ordering::Relaxed);
        }
    }

    /// The room as clients see it under history epoch `epoch`; `unread` only for `rooms`
    /// replies.
    pub fn view(&self, state: &RoomState, unread: Option<u64>, epoch: Arc<str>) -> RoomView {
        RoomView {
            room_id: self.id.clone(),
            kind: self.kind,
            owner_id: self.owner.clone(),
            members: state.members.keys().cloned().collect(),
            created_ts: self.created_ts,
            last_seq: state.committed.seq,
            last_ts: state.committed.ts,
            unread,
            epoch,
        }
    }
}

impl RoomState {
    pub fn new(
        members: BTreeMap<UserId, Member>,
        last: Stamp,
        first_seq: u64,
        content: u64,
        recent: VecDeque<Arc<Message>>,
        cache_limit: usize,
        brand_new: bool,
    ) -> RoomState {
        let mut state = RoomState {
            closed: false,
            members,
            audience: Arc::from(Vec::new()),
            assigned: last,
            committed: last,
            first_seq,
            content,
            inflight: VecDeque::new(),
            recent,
            cache_limit,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            dedup_evictions: 0,
            dedup_complete: brand_new,
            pending_targets: HashMap::new(),
            target_commits: 0,
            membership_changed_ts: 0,
            received: HashMap::new(),
        };
        state.refresh_audience();
        state
    }

    /// When anything last happened in the room (a message, a change, a member joining or
    /// leaving), or its creation: what `rooms.close_after_idle_days` counts from.
    pub fn last_activity(&self) -> u64 {
        self.committed.ts.max(self.membership_changed_ts)
    }

    /// Call after every membership change.
    pub fn refresh_audience(&mut self) {
        self.audience = self.members.keys().cloned().collect();
    }

    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.contains_key(user)
    }

    /// Whether `user`'s app acknowledged message `seq`: received it, or read past it.
    pub fn acknowledged(&self, user: &UserId, seq: u64) -> bool {
        let read = self.members.get(user).is_some_and(|m| m.read_seq >= seq);
        read || self.received.get(user).is_some_and(|r| *r >= seq)
    }

    /// Whether nothing assigned here waits for the disk: the room is as it is stored.
    pub fn is_settled(&self) -> bool {
        self.inflight.is_empty() && self.pending_targets.is_empty()
    }

    /// `user`'s unread count as readers see it: committed `text` and `system` messages by
    /// others after their marker. Messages retention deleted stop counting: the count is at
    /// most the messages still stored after the marker (exact when every message retention
    /// cut from the unread ones was content from others, as it is in most rooms).
    pub fn unread(&self, user: &UserId) -> Option<u64> {
        let member = self.members.get(user)?;
        let assigned = self.content.saturating_sub(member.own + member.base);
        let committed = assigned.saturating_sub(self.others_in_flight(user, member.read_seq));
        let stored = self
            .committed
            .seq
            .saturating_sub(member.read_seq.max(self.first_seq.saturating_sub(1)));
        Some(committed.min(stored))
    }

    /// Content messages by others in flight after seq `after`.
    fn others_in_flight(&self, user: &UserId, after: u64) -> u64 {
        let counts = |m: &&Arc<Message>| m.seq > after && counts_for(m, user);
        self.inflight.iter().filter(counts).count() as u64
    }

    /// Content messages by others with seq in `(after, assigned]`, if memory holds all of
    /// them (the cache and the messages in flight).
    pub fn others_after(&self, user: &UserId, after: u64) -> Option<u64> {
        let in_cache = self.cached(after + 1, self.committed.seq)?;
        let committed = in_cache.iter().filter(|m| counts_for(m, user)).count() as u64;
        Some(committed + self.others_in_flight(user, after))
    }

    /// A message assigned now; it is in flight until it commits.
    pub fn assign(&mut self, message: Arc<Message>) {
        self.assigned = Stamp {
            seq: message.seq,
            ts: message.ts,
        };
        if message.kind.is_content() {
            self.content += 1;
        }
        self.inflight.push_back(message);
    }

    pub fn dedup_lookup(&self, key: &DedupKey) -> Option<Stamp> {
        self.dedup.get(key).copied()
    }

    pub fn dedup_insert(&mut self, key: DedupKey, stamp: Stamp) {
        self.dedup_order.push_back((key.clone(), stamp.seq));
        self.dedup.insert(key, stamp);
    }

    /// The current state of message `seq`, as a change decided now sees it. `read` is what an
    /// earlier call sent to disk found, with the `target_commits` of that time.
    pub fn target(&self, seq: u64, read: Option<&(u64, Option<Arc<Message>>)>) -> Target {
        if seq == 0 || seq < self.first_seq || seq > self.committed.seq {
            return Target::Missing;
        }
        if let Some((state, _)) = self.pending_targets.get(&seq) {
            return Target::Found(state.clone());
        }
        if let Some(cached) = self.cached(seq, seq).and_then(|mut m| m.pop()) {
            return Target::Found(cached);
        }
        match read {
            Some((commits, found)) if *commits == self.target_commits => match found {
                Some(message) => Target::Found(message.clone()),
                None => Target::Missing,
            },
            _ => Target::OnDisk,
        }
    }

    /// Records the state `target` will have once change `change_seq` commits.
    pub fn target_changing(&mut self, target: Arc<Message>, change_seq: u64) {
        self.pending_targets
            .insert(target.seq, (target, change_seq));
    }

    /// Makes a committed message visible: cache it and trim the cache and dedup window. With
    /// a change, `target` is the changed message's new state.
    pub fn commit(&mut self, message: Arc<Message>, target: Option<Arc<Message>>) {
        if let Some(target) = target {
            self.target_commits += 1;
            if let Some(first) = self.recent.front().map(|m| m.seq) {
                if let Some(slot) = target
                    .seq
                    .checked_sub(first)
                    .and_then(|i| self.recent.get_mut(i as usize))
                {
                    *slot = target.clone();
                }
            }
            if self
                .pending_targets
                .get(&target.seq)
                .is_some_and(|(_, latest)| *latest == message.seq)
            {
                self.pending_targets.remove(&target.seq);
            }
        }
        self.committed = Stamp {
            seq: message.seq,
            ts: message.ts,
        };
        while self.inflight.front().is_some_and(|m| m.seq <= message.seq) {
            self.inflight.pop_front();
        }
        self.recent.push_back(message);
        while self.recent.len() > self.cache_limit {
            self.recent.pop_front();
        }
        // Only committed entries leave the window: they are on disk for later lookups.
        while self.dedup_order.len() > self.cache_limit {
            match self.dedup_order.front() {
                Some((_, seq)) if *seq <= self.committed.seq => {
                    if let Some((key, _)) = self.dedup_order.pop_front() {
                        self.dedup.remove(&key);
                        self.dedup_evictions += 1;
                        self.dedup_complete = false;
                    }
                }
                _ => break,
            }
        }
    }

    /// Forgets the messages before `first_kept`, which retention deleted, and their
    /// `client_msg_id`s: an id is remembered as long as its message is kept.
    pub fn purge_before(&mut self, first_kept: u64) {
        self.first_seq = self.first_seq.max(first_kept);
        while self.recent.front().is_some_and(|m| m.seq < first_kept) {
            self.recent.pop_front();
        }
        while self
            .dedup_order
            .front()
            .is_some_and(|(_, seq)| *seq < first_kept)
        {
            if let Some((key, _)) = self.dedup_order.pop_front() {
                self.dedup.remove(&key);
            }
        }
    }

    /// Forgets everything assigned but not committed (after a failed write).
    /// Members' counts are the caller's to reload from disk.
    pub fn roll_back_uncommitted(&mut self) {
        let committed = self.committed.seq;
        self.assigned = self.committed;
        for message in self.inflight.drain(..) {
            if message.kind.is_content() {
                self.content -= 1;
            }
        }
        self.dedup_order.retain(|(_, seq)| *seq <= committed);
        self.dedup.retain(|_, stamp| stamp.seq <= committed);
        // Every pending change was assigned after the last commit.
        self.pending_targets.clear();
    }

    /// Messages `from..=to` if the cache holds all of them.
    pub fn cached(&self, from: u64, to: u64) -> Option<Vec<Arc<Message>>> {
        if from > to {
            return Some(Vec::new());
        }
        let first = self
            .recent
            .front()
            .map_or(self.committed.seq + 1, |m| m.seq);
        if from < first || to > self.committed.seq {
            return None;
        }
        let start = (from - first) as usize;
        let end = (to - first) as usize;
        Some(self.recent.range(start..=end).cloned().collect())
    }

    /// The first seq with ts > `ts`, if the cache can tell (it holds every message newer
    /// than `ts`).
    pub fn cached_seq_after_ts(&self, ts: u64) -> Option<u64> {
        let oldest = self.recent.front();
        let covers = match oldest {
            Some(oldest) => oldest.ts <= ts || oldest.seq <= self.first_seq,
            None => self.committed.seq < self.first_seq,
        };
        if !covers {
            return None;
        }
        let index = self.recent.partition_point(|m| m.ts <= ts);
        Some(
            self.recent
                .get(index)
                .map_or(self.committed.seq + 1, |m| m.seq),
        )
    }
}

/// Whether `message` counts as unread for `user`: content someone else sent.
fn counts_for(message: &Message, user: &UserId) -> bool {
    message.kind.is_content() && message.sender.as_ref() != Some(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageKind;

    fn message(seq: u64, ts: u64) -> Arc<Message> {
        Arc::new(Message::new(
            RoomId::parse("r").unwrap(),
            seq,
            ts,
            None,
            MessageKind::System,
            String::new(),
        ))
    }

    fn state(cache_limit: usize) -> RoomState {
        RoomState::new(
            BTreeMap::new(),
            Stamp::default(),
            1,
            0,
            VecDeque::new(),
            cache_limit,
            true,
        )
    }

    #[test]
    fn stamps_strictly_increase_even_when_the_clock_does_not() {
        let first = Stamp::default().next(1000);
        assert_eq!(first, Stamp { seq: 1, ts: 1000 });
        assert_eq!(first.next(900), Stamp { seq: 2, ts: 1001 });
        assert_eq!(first.next(5000), Stamp { seq: 2, ts: 5000 });
    }

    #[test]
    fn cache_serves_only_what_it_holds() {
        let mut state = state(3);
        for seq in 1..=5 {
            state.commit(message(seq, seq * 10), None);
        }
        assert_eq!(state.recent.len(), 3);
        assert!(state.cached(3, 5).is_some());
        assert!(state.cached(2, 5).is_none(), "2 was evicted");
        assert!(state.cached(4, 6).is_none(), "6 not committed");
        assert_eq!(state.cached_seq_after_ts(35), Some(4));
        assert_eq!(state.cached_seq_after_ts(50), Some(6));
        assert_eq!(state.cached_seq_after_ts(15), None, "seq 2 may be newer");
    }

    #[test]
    fn dedup_window_keeps_uncommitted_entries_and_counts_evictions() {
        let mut state = state(1);
        let key = |n: &str| (None, n.to_string());
        state.dedup_insert(key("a"), Stamp { seq: 1, ts: 1 });
        state.dedup_insert(key("b"), Stamp { seq: 2, ts: 2 });
        state.commit(message(1, 1), None);
        assert_eq!(state.dedup_lookup(&key("a")), None);
        assert_eq!(state.dedup_evictions, 1);
        assert!(!state.dedup_complete);
        state.dedup_insert(key("c"), Stamp { seq: 3, ts: 3 });
        state.roll_back_uncommitted();
        assert_eq!(state.dedup_lookup(&key("b")), None);
        assert_eq!(state.dedup_lookup(&key("c")), None);
        assert_eq!(state.assigned, state.committed);
    }

    #[test]
    fn purged_messages_take_their_client_msg_ids_with_them() {
        let mut state = state(10);
        let key = |n: &str| (None, n.to_string());
        for (seq, id) in [(1, "a"), (2, "b"), (3, "c")] {
            state.dedup_insert(key(id), Stamp { seq, ts: seq });
            state.commit(message(seq, seq), None);
        }
        state.purge_before(3);
        assert_eq!(state.dedup_lookup(&key("a")), None);
        assert_eq!(state.dedup_lookup(&key("b")), None);
        assert_eq!(state.dedup_lookup(&key("c")), Some(Stamp { seq: 3, ts: 3 }));
        assert_eq!(state.dedup_evictions, 0, "nothing left for disk to answer");
    }

    #[test]
    fn targets_come_from_pending_changes_then_the_cache_then_disk() {
        let mut state = state(2);
        for seq in 1..=3 {
            state.commit(message(seq, seq), None);
        }
        assert!(matches!(state.target(0, None), Target::Missing));
        assert!(
            matches!(state.target(4, None), Target::Missing),
            "not committed"
        );
        assert!(
            matches!(state.target(1, None), Target::OnDisk),
            "evicted from the cache"
        );
        let read = (state.target_commits, Some(message(1, 1)));
        assert!(matches!(state.target(1, Some(&read)), Target::Found(_)));
        let mut changed = (*message(3, 3)).clone();
        changed.deleted = true;
        state.target_changing(Arc::new(changed.clone()), 4);
        assert!(matches!(state.target(3, None), Target::Found(m) if m.deleted));
        // The change commits: the cache holds the new state, and a disk read made before is
        // stale.
        state.commit(message(4, 4), Some(Arc::new(changed)));
        assert!(matches!(state.target(3, None), Target::Found(m) if m.deleted));
        assert!(matches!(state.target(1, Some(&read)), Target::OnDisk));
    }
}
