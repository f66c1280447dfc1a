//! `rooms.close_after_idle_days`: route rooms in which nothing happened for that long close
//! by themselves, through the same proposal as `DELETE /v1/rooms/{id}`, so members get `left`
//! and, in cluster mode, the close is decided once whichever nodes notice it.
//!
//! Most rooms are not in memory, so the sweep reads storage's activity index: one entry per
//! open route room, at or before its last activity (written when the room is created). An
//! entry older than the cutoff either closes its room or moves to the room's real last
//! activity, so each room costs the sweep one look per idle period and nothing per message.

use std::time::Duration;

use super::Engine;
use crate::error::Error;
use crate::protocol::{now_ms, RoomId};
use crate::storage::Batch;

/// Longest wait between two checks: a room closes within this of its deadline.
const MAX_CHECK_EVERY: Duration = Duration::from_secs(30);

/// Index entries one read takes; a check reads on while entries are older than its cutoff.
const ENTRIES_PER_READ: usize = 1000;

impl Engine {
    /// Closes idle route rooms, checking every quarter of the idle period (at least every
    /// 30 s), or never if `rooms.close_after_idle_days` is 0. Never returns.
    pub async fn close_idle_rooms(&self) {
        let days = self.inner.config.rooms.close_after_idle_days;
        if days <= 0.0 {
            return std::future::pending().await;
        }
        let (idle, every) = super::sweep_schedule(days, 4, MAX_CHECK_EVERY);
        log::info!("closing route rooms idle for {days} days, checking every {every:?}");
        loop {
            smol::Timer::after(every).await;
            let cutoff = now_ms().saturating_sub(idle.as_millis() as u64);
            if let Err(e) = self.close_rooms_idle_since(cutoff, days).await {
                log::warn!("idle-room sweep failed (will retry): {e}");
            }
        }
    }

    /// Closes the open route rooms whose last activity is at or before `cutoff`, and moves
    /// the index entries of the others to their last activity.
    async fn close_rooms_idle_since(&self, cutoff: u64, days: f64) -> Result<(), Error> {
        loop {
            let entries = self
                .read_storage(move |s| s.idle_candidates(cutoff, ENTRIES_PER_READ))
                .await?;
            let more = entries.len() == ENTRIES_PER_READ;
            let mut settled = Batch::new();
            for (ts, id) in entries {
                let last = match RoomId::parse(&id) {
                    Ok(room_id) => self.last_activity(&room_id).await?.map(|l| (room_id, l)),
                    Err(_) => None,
                };
                match last {
                    Some((room_id, last)) if last <= cutoff => {
                        match self.close_room(room_id.clone()).await {
                            Ok(()) => {
                                log::info!("closed room {room_id}: idle for {days} days");
                                settled.activity_removed(ts, &id);
                            }
                            Err(e) => log::warn!("closing idle room {room_id} failed: {e}"),
                        }
                    }
                    Some((_, last)) => {
                        settled.activity_removed(ts, &id);
                        settled.activity(last, &id);
                    }
                    None => settled.activity_removed(ts, &id),
                }
            }
            let progress = !settled.is_empty();
            self.persist(settled).await?;
            if !(more && progress) {
                return Ok(());
            }
        }
    }

    /// When anything last happened in open room `room_id`: from memory if it is there, else
    /// from disk (without loading it). `None` when it is not open.
    async fn last_activity(&self, room_id: &RoomId) -> Result<Option<u64>, Error> {
        let (engine, room_id) = (self.clone(), room_id.clone());
        let room = smol::unblock(move || engine.room_now(&room_id)).await?;
        Ok(room.map(|room| room.state().last_activity()))
    }
}
