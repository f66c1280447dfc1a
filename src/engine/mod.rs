//! The engine: rooms, membership, seq/ts assignment, history and fan-out, behind one
//! cheap-to-clone handle shared by the HTTP and WebSocket layers.
//!
//! Every change follows one path: decide under the room's lock, submit the writes to the
//! group-commit writer (still under the lock, so a room's writes queue in decision order),
//! release the lock, and wait for the commit. Once durable, the writer thread makes the
//! change visible and pushes it, in commit order. So nothing is seen before it is on disk,
//! and a room's pushes leave in seq order.

pub mod connections;
mod history;
pub mod membership;
mod messages;
#[cfg(feature = "redis")]
pub mod replica;
mod retention;
mod room;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use connections::{close_code, Connection, ConnectionQueues, Priority};
use connections::{lock, QueueLimits, Registry};
pub use room::Stamp;
use room::{Member, Room, RoomState};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::protocol::{Frame, Message, RoomId, UserId};
use crate::storage::writer::Slot;
use crate::storage::{KeyWrite, MessageRecord, SeqRange, Storage, StorageError, WriteOp, Writer};

/// The shared handle. Clones share one engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Shared>,
}

struct Shared {
    config: Config,
    auth: Authenticator,
    storage: Arc<Storage>,
    writer: Writer,
    /// Every open room.
    rooms: RwLock<HashMap<RoomId, Arc<Room>>>,
    /// Each user's open rooms: the index behind `rooms` and the direct-room policy.
    user_rooms: Mutex<HashMap<UserId, HashSet<RoomId>>>,
    connections: Registry,
    metrics: Arc<Metrics>,
    /// Serialises creating and closing rooms, which consult disk tombstones and allocate
    /// room numbers. Taken only off the executor (writer thread, `unblock`).
    lifecycle: Mutex<()>,
    next_room_number: AtomicU64,
    /// False after a failed write until one succeeds again (`/readyz`).
    storage_ok: AtomicBool,
    /// Cluster mode: Redis decides changes, and this node applies them from its logs.
    #[cfg(feature = "redis")]
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Pushes to make once a write is durable.
pub struct Delivery {
    pub users: Arc<[UserId]>,
    pub skip: Option<UserId>,
    pub frame: Frame,
}

impl Delivery {
    pub fn to(user: &UserId, frame: Frame) -> Delivery {
        Delivery {
            users: Arc::from(vec![user.clone()]),
            skip: None,
            frame,
        }
    }
}

/// Resolves when a submitted write has committed (or failed).
pub struct Completion(async_channel::Receiver<Result<(), StorageError>>);

impl Completion {
    pub async fn wait(self) -> Result<(), Error> {
        match self.0.recv().await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(StorageError::Closed.into()),
        }
    }
}

impl Engine {
    /// Opens storage and loads every open room into memory.
    pub fn open(config: Config) -> Result<Engine, StorageError> {
        let storage = Arc::new(Storage::open(&config.storage)?);
        let next_room_number = storage.next_room_number()?;
        let cache_limit = config.history.cache_per_room;
        let mut rooms = HashMap::new();
        let mut user_rooms: HashMap<UserId, HashSet<RoomId>> = HashMap::new();
        for (id, record) in storage.open_rooms()? {
            let room_id: RoomId = parse_stored_id(&id)?;
            let members = load_members(&storage, &room_id)?;
            let committed = storage
                .last_stamp(record.number)?
                .map_or(Stamp::default(), |last| Stamp {
                    seq: last.seq,
                    ts: last.ts,
                });
            let first_seq = storage
                .first_seq(record.number)?
                .unwrap_or(committed.seq + 1);
            let recent = storage
                .messages(record.number, SeqRange::Before(u64::MAX), cache_limit)?
                .into_iter()
                .map(|(seq, m)| message_from_record(&room_id, seq, m).map(Arc::new))
                .collect::<Result<_, _>>()?;
            for user in members.keys() {
                user_rooms
                    .entry(user.clone())
                    .or_default()
                    .insert(room_id.clone());
            }
            let state = RoomState::new(members, committed, first_seq, recent, cache_limit, false);
            let owner = record.owner.as_deref().map(parse_stored_id).transpose()?;
            let room = Room::new(
                room_id.clone(),
                record.number,
                record.kind,
                owner,
                record.created_ts,
                state,
            );
            rooms.insert(room_id, Arc::new(room));
        }
        log::info!(
            "loaded {} open rooms from {}",
            rooms.len(),
            config.storage.path.display()
        );
        #[cfg(feature = "redis")]
        let cluster = match config.cluster.redis_url {
            Some(_) => Some(Arc::new(crate::cluster::Cluster::new(
                &config.cluster,
                &storage,
            )?)),
            None => None,
        };
        let metrics = Metrics::new();
        let writer = Writer::start(
            storage.clone(),
            config.storage.write_queue,
            config.storage.max_batch,
            metrics.clone(),
        );
        Ok(Engine {
            inner: Arc::new(Shared {
                auth: Authenticator::new(&config.auth),
                config,
                storage,
                writer,
                rooms: RwLock::new(rooms),
                user_rooms: Mutex::new(user_rooms),
                connections: Registry::new(metrics.clone()),
                metrics,
                lifecycle: Mutex::new(()),
                next_room_number: AtomicU64::new(next_room_number),
                storage_ok: AtomicBool::new(true),
                #[cfg(feature = "redis")]
                cluster,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether storage is taking writes and, in cluster mode, Redis is reachable and this
    /// node is caught up (`/readyz`).
    pub fn is_ready(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.inner.cluster {
            if !cluster.is_ready() {
                return false;
            }
        }
        self.inner.storage_ok.load(Ordering::Relaxed)
    }

    /// The cluster, in cluster mode.
    #[cfg(feature = "redis")]
    fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.inner.cluster.as_ref()
    }

    /// Cluster mode's background duties: keeping the Redis connection up and applying
    /// every shard's log. Never ends; pending forever on a single node.
    pub async fn cluster_duties(&self) {
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.cluster() {
            let followers = (0..self.inner.config.cluster.shards)
                .map(|shard| {
                    smol::spawn({
                        let (cluster, engine) = (cluster.clone(), self.clone());
                        async move { cluster.follow(&engine, shard).await }
                    })
                })
                .collect::<Vec<_>>();
            cluster.keep_up(self).await;
            drop(followers);
        }
        std::future::pending::<()>().await
    }

    /// Writes `meta` keys and waits until they are durable (cluster positions and epoch).
    #[cfg(feature = "redis")]
    pub(crate) async fn write_meta(&self, writes: Vec<KeyWrite>) -> Result<(), Error> {
        let slot = self.inner.writer.reserve().await;
        self.submit_unbound(slot, writes, || {}).wait().await
    }

    /// Registers a WebSocket connection; pushes for the user's rooms start at once.
    pub fn connect(&self, user: &UserId) -> Result<(Arc<Connection>, ConnectionQueues), Error> {
        let limits = &self.inner.config.limits;
        let queue = QueueLimits {
            frames: limits.outbound_queue,
            bytes: limits.outbound_queue_bytes,
        };
        let registered =
            self.inner
                .connections
                .register(user, queue, limits.max_connections_per_user);
        match &registered {
            Ok(_) => {
                self.inner.metrics.connections.inc();
            }
            Err(error) => self.inner.metrics.count_error(error.code()),
        }
        registered
    }

    pub fn disconnect(&self, connection: &Connection) {
        self.inner.connections.unregister(connection);
        self.inner.metrics.connections.dec();
    }

    /// Closes every connection with 1001, waits (bounded) for them to go, then lets the
    /// writer commit what is queued and stops it.
    pub async fn shutdown(&self) {
        let connections = &self.inner.connections;
        connections.close_all(close_code::GOING_AWAY);
        let grace = Duration::from_millis(self.inner.config.server.shutdown_grace_ms);
        let deadline = std::time::Instant::now() + grace;
        while connections.count() > 0 && std::time::Instant::now() < deadline {
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        let engine = self.clone();
        smol::unblock(move || engine.inner.writer.close()).await;
        log::info!("storage writer stopped; all acknowledged writes are durable");
    }

    fn room(&self, room_id: &RoomId) -> Option<Arc<Room>> {
        let rooms = self.inner.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(room_id).cloned()
    }

    fn open_room(&self, room_id: &RoomId) -> Result<Arc<Room>, Error> {
        self.room(room_id)
            .ok_or_else(|| Error::room_not_found(room_id.as_str()))
    }

    /// Submits writes for `room` (call under its lock, with a slot reserved before it was
    /// taken). After the commit the deliveries go out, in commit order.
    fn submit(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        writes: Vec<KeyWrite>,
        deliveries: Vec<Delivery>,
    ) -> Completion {
        let engine = self.clone();
        self.submit_with(slot, room, writes, move |_| {
            for delivery in deliveries {
                engine.inner.connections.deliver(
                    &delivery.users,
                    delivery.skip.as_ref(),
                    &delivery.frame,
                    Priority::Keep,
                );
            }
        })
    }

    /// [`Engine::submit`] with a custom step to make the change visible once committed.
    fn submit_with(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        writes: Vec<KeyWrite>,
        on_commit: impl FnOnce(&Engine) + Send + 'static,
    ) -> Completion {
        let (tx, rx) = async_channel::bounded(1);
        let engine = self.clone();
        let failed_room = room.clone();
        let generation = room.generation.load(Ordering::Acquire);
        let op = WriteOp {
            writes,
            built_on: Some((room.generation.clone(), generation)),
            done: Box::new(move |result| {
                match &result {
                    Ok(()) => {
                        if !engine.inner.storage_ok.swap(true, Ordering::Relaxed) {
                            log::info!("storage takes writes again; ready");
                        }
                        on_commit(&engine);
                    }
                    Err(StorageError::Superseded) => {}
                    Err(_) => {
                        engine.inner.storage_ok.store(false, Ordering::Relaxed);
                        engine.roll_back(&failed_room);
                    }
                }
                let _ = tx.try_send(result);
            }),
        };
        self.inner.writer.submit(slot, op);
        Completion(rx)
    }

    /// After a failed write: forget what was assigned but not committed, and reload the
    /// room's membership and open/closed state from disk, which the failed write did not
    /// change. Runs on the writer thread.
    fn roll_back(&self, room: &Arc<Room>) {
        let _lifecycle = lock(&self.inner.lifecycle);
        let storage = &self.inner.storage;
        let on_disk = storage
            .room(room.id.as_str())
            .and_then(|record| match record {
                Some(record) if record.closed_ts.is_none() => {
                    load_members(storage, &room.id).map(Some)
                }
                _ => Ok(None),
            });
        let mut state = room.state();
        // Under the room's lock, so every op built from here on carries the new generation
        // and sees the rolled-back state.
        room.generation.fetch_add(1, Ordering::AcqRel);
        state.roll_back_uncommitted();
        let disk_members = match on_disk {
            Ok(members) => members,
            Err(e) => {
                log::error!("cannot reload room {} after a failed write: {e}", room.id);
                return;
            }
        };
        let before: Vec<UserId> = state.members.keys().cloned().collect();
        match disk_members {
            Some(mut members) => {
                for (user, member) in members.iter_mut() {
                    if let Some(known) = state.members.get(user) {
                        member.read_seq = known.read_seq;
                    }
                }
                state.members = members;
                state.closed = false;
                let mut rooms = self.inner.rooms.write().unwrap_or_else(|e| e.into_inner());
                rooms.insert(room.id.clone(), room.clone());
            }
            None => {
                state.members.clear();
                state.closed = true;
                let mut rooms = self.inner.rooms.write().unwrap_or_else(|e| e.into_inner());
                rooms.remove(&room.id);
            }
        }
        state.refresh_audience();
        let mut index = lock(&self.inner.user_rooms);
        for user in &before {
            if !state.is_member(user) {
                unindex(&mut index, user, &room.id);
            }
        }
        for user in state.members.keys() {
            index
                .entry(user.clone())
                .or_default()
                .insert(room.id.clone());
        }
    }

    /// A write of nothing that commits after everything submitted before it.
    fn barrier(&self, slot: Slot) -> Completion {
        self.submit_unbound(slot, Vec::new(), || {})
    }

    /// Submits writes that no room's in-memory state was built on (barriers, retention);
    /// `on_commit` runs on the writer thread once they are durable.
    fn submit_unbound(
        &self,
        slot: Slot,
        writes: Vec<KeyWrite>,
        on_commit: impl FnOnce() + Send + 'static,
    ) -> Completion {
        let (tx, rx) = async_channel::bounded(1);
        let op = WriteOp {
            writes,
            built_on: None,
            done: Box::new(move |result| {
                if result.is_ok() {
                    on_commit();
                }
                let _ = tx.try_send(result);
            }),
        };
        self.inner.writer.submit(slot, op);
        Completion(rx)
    }

    /// Writes a consistent copy of the data directory to `dir` while serving (`chat-engine
    /// backup`). `dir` must be absolute and must not exist.
    pub async fn backup(&self, dir: std::path::PathBuf) -> Result<(), Error> {
        if !dir.is_absolute() {
            return Err(Error::BadRequest(format!(
                "backup directory {} is not an absolute path",
                dir.display()
            )));
        }
        if dir.exists() {
            return Err(Error::Conflict(format!("{} already exists", dir.display())));
        }
        let storage = self.inner.storage.clone();
        smol::unblock(move || {
            let failed =
                |e: String| Error::Internal(format!("backup to {} failed: {e}", dir.display()));
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| failed(e.to_string()))?;
            }
            storage
                .checkpoint(&dir)
                .map_err(|e| failed(e.to_string()))?;
            log::info!("backup written to {}", dir.display());
            Ok(())
        })
        .await
    }

    /// Whether the storage writer still takes work: a barrier through it completes. The
    /// systemd watchdog is fed only while it does.
    pub async fn writer_responds(&self) -> bool {
        let slot = self.inner.writer.reserve().await;
        self.barrier(slot).wait().await.is_ok()
    }

    /// Runs a blocking storage read off the executor.
    async fn read_storage<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, Error> {
        let storage = self.inner.storage.clone();
        smol::unblock(move || read(&storage))
            .await
            .map_err(Error::from)
    }
}

fn unindex(index: &mut HashMap<UserId, HashSet<RoomId>>, user: &UserId, room_id: &RoomId) {
    if let Some(rooms) = index.get_mut(user) {
        rooms.remove(room_id);
        if rooms.is_empty() {
            index.remove(user);
        }
    }
}

fn parse_stored_id<K>(text: &str) -> Result<crate::protocol::Id<K>, StorageError> {
    crate::protocol::Id::parse(text).map_err(|e| StorageError::Corrupt {
        cf: "rooms",
        reason: e.to_string(),
    })
}

fn load_members(
    storage: &Storage,
    room_id: &RoomId,
) -> Result<BTreeMap<UserId, Member>, StorageError> {
    let mut members = BTreeMap::new();
    for (user, _record) in storage.members(room_id.as_str())? {
        let read_seq = storage.read_marker(&user, room_id.as_str())?.unwrap_or(0);
        members.insert(parse_stored_id(&user)?, Member { read_seq });
    }
    Ok(members)
}

fn message_from_record(
    room_id: &RoomId,
    seq: u64,
    record: MessageRecord,
) -> Result<Message, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        cf: "messages",
        reason,
    };
    let data = record
        .data
        .map(serde_json::value::RawValue::from_string)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    let sender = record
        .sender
        .as_deref()
        .map(UserId::parse)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Message {
        room_id: room_id.clone(),
        seq,
        ts: record.ts,
        sender,
        kind: record.kind,
        text: record.text,
        data,
        client_msg_id: record.client_msg_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NewMessage;

    fn text(body: &str) -> NewMessage {
        NewMessage {
            text: body.into(),
            data: None,
            client_msg_id: None,
        }
    }

    #[test]
    fn a_failed_write_answers_unavailable_leaves_no_gap_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.path = dir.path().to_owned();
        let engine = Engine::open(config).unwrap();
        let (room, driver) = (RoomId::parse("r").unwrap(), UserId::parse("d").unwrap());
        smol::block_on(async {
            engine
                .create_route_room(room.clone(), driver.clone())
                .await
                .unwrap();
            let first = engine
                .send(&room, Some(&driver), text("one"))
                .await
                .unwrap();
            assert_eq!(first.stamp.seq, 1);

            engine
                .inner
                .storage
                .fail_writes
                .store(true, Ordering::Relaxed);
            let failed = engine.send(&room, Some(&driver), text("lost")).await;
            assert_eq!(failed.err().map(|e| e.code()), Some("unavailable"));
            assert!(!engine.is_ready(), "readyz reports the failure");
            let failed_join = engine.join(&room, &UserId::parse("u").unwrap()).await;
            assert_eq!(failed_join.err().map(|e| e.code()), Some("unavailable"));

            engine
                .inner
                .storage
                .fail_writes
                .store(false, Ordering::Relaxed);
            let next = engine
                .send(&room, Some(&driver), text("two"))
                .await
                .unwrap();
            assert_eq!(next.stamp.seq, 2, "the failed message left no gap");
            assert!(engine.is_ready());
            let view = engine.room_view(&room).unwrap();
            assert_eq!(view.members.len(), 1, "the failed join was rolled back");
            let page = engine
                .history(&room, &Default::default(), None)
                .await
                .unwrap();
            let texts: Vec<_> = page.messages.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["one", "two"]);
        });
    }
}
