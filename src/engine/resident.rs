//! The rooms in memory: a room is loaded from disk on its first use (one load however many
//! ask at once), kept while it is used, and unloaded when it is idle (`rooms.unload_idle_s`)
//! or the budget (`rooms.max_in_memory`) is full. Memory and start-up grow with the rooms in
//! use, not with every room that exists.
//!
//! One rule makes unloading safe: a room leaves memory only when nothing but this set holds
//! it. Every operation on a room, and every write in flight for it, holds its `Arc`, so a
//! room that nobody holds is exactly as it is stored, and loading it again gives the same
//! room. Closing keeps a room here (closed) until the close is durable, so a load can never
//! read it open from disk meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::room::Room;
use super::{load, Engine};
use crate::error::{Error, StorageError};
use crate::protocol::RoomId;
use crate::sync::lock;

/// The set of rooms in memory. Its clock counts seconds since start-up.
pub struct Resident {
    rooms: RwLock<HashMap<RoomId, Arc<Room>>>,
    /// Rooms being loaded: a second caller waits on `loaded` instead of loading again.
    loading: Mutex<HashSet<RoomId>>,
    loaded: Condvar,
    /// Bumped by writes that change a stored room without going through its `Room`
    /// (retention): a load that read the disk before one reads it again.
    disk_changes: AtomicU64,
    started: Instant,
}

impl Resident {
    pub fn new() -> Resident {
        Resident {
            rooms: RwLock::new(HashMap::new()),
            loading: Mutex::new(HashSet::new()),
            loaded: Condvar::new(),
            disk_changes: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<RoomId, Arc<Room>>> {
        self.rooms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RoomId, Arc<Room>>> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The room if it is in memory, noting the use.
    pub fn get(&self, room_id: &RoomId) -> Option<Arc<Room>> {
        let room = self.read().get(room_id).cloned()?;
        room.touch(self.now());
        Some(room)
    }

    pub fn count(&self) -> usize {
        self.read().len()
    }

    /// Adds a room just created.
    pub fn insert(&self, room: Arc<Room>) {
        room.touch(self.now());
        self.write().insert(room.id.clone(), room);
    }

    /// Drops `room` (closed, or never stored after all), unless another took its place.
    pub fn remove(&self, room: &Arc<Room>) {
        let mut rooms = self.write();
        if rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.id);
        }
    }

    /// Call before making a write that changed stored rooms behind their back visible.
    pub fn disk_changed(&self) {
        self.disk_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Unloads idle rooms: all those unused since `idle_before` (on this set's clock), then
    /// the least recently used until at most `keep` remain. Returns how many left.
    fn unload(&self, keep: usize, idle_before: Option<u64>) -> usize {
        let mut rooms = self.write();
        // Nobody else holds these, so nobody can be changing them (see the module comment).
        let mut idle: Vec<(u64, RoomId)> = rooms
            .values()
            .filter(|room| Arc::strong_count(room) == 1 && room.state().is_settled())
            .map(|room| (room.touched.load(Ordering::Relaxed), room.id.clone()))
            .collect();
        idle.sort_unstable();
        let over = rooms.len().saturating_sub(keep);
        let stale = idle_before.map_or(0, |before| idle.partition_point(|(t, _)| *t < before));
        let unloading = over.max(stale).min(idle.len());
        for (_, room_id) in &idle[..unloading] {
            rooms.remove(room_id);
        }
        unloading
    }
}

/// Ends a load: the room is no longer loading, and those waiting for it look again.
struct Loading<'a> {
    resident: &'a Resident,
    room_id: RoomId,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        lock(&self.resident.loading).remove(&self.room_id);
        self.resident.loaded.notify_all();
    }
}

impl Engine {
    /// The open room `room_id`, loaded from disk on its first use; `None` when it was never
    /// created or is closed (or closing: the close is decided, not yet durable).
    pub(super) async fn room(&self, room_id: &RoomId) -> Result<Option<Arc<Room>>, Error> {
        let room = match self.inner.resident.get(room_id) {
            Some(room) => room,
            None => {
                let (engine, room_id) = (self.clone(), room_id.clone());
                match smol::unblock(move || engine.room_blocking(&room_id)).await? {
                    Some(room) => room,
                    None => return Ok(None),
                }
            }
        };
        let open = !room.state().closed;
        Ok(open.then_some(room))
    }

    /// [`Engine::room`], or `not_found`.
    pub(super) async fn open_room(&self, room_id: &RoomId) -> Result<Arc<Room>, Error> {
        self.room(room_id)
            .await?
            .ok_or_else(|| Error::room_not_found(room_id.as_str()))
    }

    /// The room as [`Engine::room`] finds it, closing rooms included, for code that runs
    /// off the executor (the lifecycle's decisions, `unblock`).
    pub(super) fn room_blocking(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<Arc<Room>>, StorageError> {
        let resident = &self.inner.resident;
        {
            let mut loading = lock(&resident.loading);
            loop {
                if let Some(room) = resident.get(room_id) {
                    return Ok(Some(room));
                }
                if !loading.contains(room_id) {
                    break;
                }
                loading = resident
                    .loaded
                    .wait(loading)
                    .unwrap_or_else(|e| e.into_inner());
            }
            loading.insert(room_id.clone());
        }
        let _loading = Loading {
            resident,
            room_id: room_id.clone(),
        };
        let started = Instant::now();
        let cache = self.inner.config.history.cache_per_room;
        let room = loop {
            let changes = resident.disk_changes.load(Ordering::Acquire);
            let Some(room) = load::room(&self.inner.storage, room_id, cache)? else {
                return Ok(None);
            };
            let mut rooms = resident.write();
            if resident.disk_changes.load(Ordering::Acquire) != changes {
                continue;
            }
            room.touch(resident.now());
            // A room created meanwhile is the one to keep: it is what the disk will hold.
            break rooms
                .entry(room_id.clone())
                .or_insert_with(|| Arc::new(room))
                .clone();
        };
        let metrics = &self.inner.metrics;
        metrics.room_loads.inc();
        metrics
            .room_load_seconds
            .observe(started.elapsed().as_secs_f64());
        self.keep_within_budget();
        Ok(Some(room))
    }

    /// The room as it is now, without loading it: from memory if it is there (it may be
    /// ahead of the disk), else read from disk with no cache and left out of memory. For
    /// reads over many rooms (`rooms`, sweeps, notifies) that must not push the rooms in
    /// use out. Call off the executor. `None` when it is not open.
    pub(super) fn room_now(&self, room_id: &RoomId) -> Result<Option<Arc<Room>>, StorageError> {
        if let Some(room) = self.resident_room(room_id) {
            let open = !room.state().closed;
            return Ok(open.then_some(room));
        }
        Ok(load::room(&self.inner.storage, room_id, 0)?.map(Arc::new))
    }

    /// The room if it is in memory; never loads. For what only matters to a room in use.
    pub(super) fn resident_room(&self, room_id: &RoomId) -> Option<Arc<Room>> {
        self.inner.resident.get(room_id)
    }

    /// Unloads the least recently used idle rooms once over `rooms.max_in_memory`, down to
    /// seven eighths of it, so the scan runs once per many loads.
    pub(super) fn keep_within_budget(&self) {
        let resident = &self.inner.resident;
        let max = self.inner.config.rooms.max_in_memory;
        let unloaded = if resident.count() > max {
            resident.unload(max - max / 8, None)
        } else {
            0
        };
        self.count_unloaded(unloaded);
    }

    fn count_unloaded(&self, unloaded: usize) {
        let metrics = &self.inner.metrics;
        metrics.room_unloads.inc_by(unloaded as u64);
        metrics
            .rooms_in_memory
            .set(self.inner.resident.count() as i64);
    }

    /// Unloads rooms unused for `rooms.unload_idle_s`, checking every few seconds (never if
    /// it is 0), and keeps the rooms-in-memory gauge current. Never returns.
    pub async fn unload_idle_rooms(&self) {
        let idle_s = self.inner.config.rooms.unload_idle_s;
        let every = Duration::from_secs(idle_s.div_ceil(4).clamp(1, 10));
        loop {
            smol::Timer::after(every).await;
            let resident = &self.inner.resident;
            let before = (idle_s > 0).then(|| resident.now().saturating_sub(idle_s));
            let unloaded = match before {
                Some(before) if before > 0 => resident.unload(usize::MAX, Some(before)),
                _ => 0,
            };
            self.count_unloaded(unloaded);
        }
    }
}
