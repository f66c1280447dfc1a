//! `history.retention_days`: a periodic sweep that deletes every message older than the
//! retention period, in open and closed rooms alike, through the group-commit writer.
//!
//! Each room's newest deleted seq and ts are kept in `meta` (`purged`), so a room whose every
//! message expired goes on from the same seq, even after a restart.

use std::time::Duration;

use super::Engine;
use crate::protocol::{now_ms, RoomId};
use crate::storage::{Batch, Expired};

/// Rooms one read of the sweep looks at.
const ROOMS_PER_READ: usize = 1000;

impl Engine {
    /// Runs the sweep every twenty-fourth of the retention period (at least every hour), or
    /// never if retention is 0. Never returns.
    pub async fn enforce_retention(&self) {
        let days = self.inner.config.history.retention_days;
        if days <= 0.0 {
            return std::future::pending().await;
        }
        let (period, every) = super::sweep_schedule(days, 24, Duration::from_secs(3600));
        log::info!("deleting messages older than {days} days, checking every {every:?}");
        loop {
            smol::Timer::after(every).await;
            let cutoff = now_ms().saturating_sub(period.as_millis() as u64);
            match self.delete_older_than(cutoff).await {
                // Only once their messages are gone: a retry must find its first send for
                // as long as that is kept.
                Ok(()) => self.inner.storage.expire_dedup_before(cutoff),
                Err(e) => log::error!("retention sweep failed (will retry): {e}"),
            }
        }
    }

    /// Deletes every message with ts < `cutoff_ts`, a page of rooms at a time so that memory
    /// stays bounded however many rooms there are.
    async fn delete_older_than(&self, cutoff_ts: u64) -> Result<(), crate::Error> {
        let mut after = String::new();
        loop {
            let from = after.clone();
            let (last, expired) = self
                .read_storage(move |storage| {
                    let rooms = storage.rooms_after(&from, ROOMS_PER_READ)?;
                    let last = rooms.last().map(|(id, _)| id.clone());
                    let mut expired = Vec::new();
                    for (id, record) in rooms {
                        if let Some(found) = storage.expired(record.number, cutoff_ts)? {
                            expired.push((id, record.number, found));
                        }
                    }
                    Ok((last, expired))
                })
                .await?;
            self.purge(expired).await?;
            match last {
                Some(last) => after = last,
                None => return Ok(()),
            }
        }
    }

    /// Deletes what [`crate::storage::Storage::expired`] found, room by room.
    async fn purge(&self, expired: Vec<(String, u64, Expired)>) -> Result<(), crate::Error> {
        for (id, number, found) in expired {
            let slot = self.inner.writer.reserve().await;
            let engine = self.clone();
            let room_id = RoomId::parse(&id).ok();
            let mut batch = Batch::new();
            batch.purge(number, found.first_seq, found.newest);
            self.submit_unbound(slot, batch, move || {
                engine.forget_purged(room_id.as_ref(), &found)
            })
            .wait()
            .await?;
        }
        Ok(())
    }

    /// After the commit: the room's cache and first seq no longer hold what was deleted.
    fn forget_purged(&self, room_id: Option<&RoomId>, found: &Expired) {
        self.inner.metrics.retention_deleted.inc_by(found.count);
        let resident = &self.inner.resident;
        resident.disk_changed();
        if let Some(room) = room_id.and_then(|id| resident.get(id)) {
            room.state().purge_before(found.newest.seq + 1);
        }
    }
}
