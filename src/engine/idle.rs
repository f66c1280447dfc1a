//! `rooms.close_after_idle_days`: route rooms in which nothing happened for that long close
//! by themselves, through the same proposal as `DELETE /v1/rooms/{id}`, so members get `left`
//! and, in cluster mode, the close is decided once whichever nodes notice it.

use std::time::Duration;

use super::Engine;
use crate::protocol::{now_ms, RoomId, RoomKind};

/// Longest wait between two checks: a room closes within this of its deadline.
const MAX_CHECK_EVERY: Duration = Duration::from_secs(30);

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
            for room_id in self.rooms_idle_since(cutoff) {
                match self.close_room(room_id.clone()).await {
                    Ok(()) => log::info!("closed room {room_id}: idle for {days} days"),
                    Err(e) => log::warn!("closing idle room {room_id} failed (will retry): {e}"),
                }
            }
        }
    }

    /// The open route rooms whose last activity is at or before `cutoff`.
    fn rooms_idle_since(&self, cutoff: u64) -> Vec<RoomId> {
        let rooms = self.inner.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms
            .values()
            .filter(|room| room.kind == RoomKind::Route && room.state().last_activity() <= cutoff)
            .map(|room| room.id.clone())
            .collect()
    }
}
