//! The commit pipeline: applied changes go to the group-commit writer (in the order they were
//! decided, because they are submitted under the room's lock); once a batch is durable the
//! room's committed view moves and the events are published, on the writer thread, in commit
//! order. A failed write rolls the room back to what is on disk.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::events::Event;
use super::room::Room;
use super::Engine;
use crate::error::{Error, StorageError};
use crate::protocol::Message;
use crate::storage::writer::Slot;
use crate::storage::{Batch, WriteOp};
use crate::sync::lock;

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

/// What a decided change still waits for before it is durable and visible on this node.
pub enum Durable {
    /// Nothing: it was answered from disk.
    Now,
    /// This node's commit.
    Commit(Completion),
    /// Something the authority waits for (in cluster mode: this node applying the change
    /// from the log).
    Later(Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>),
}

impl Durable {
    pub async fn wait(self) -> Result<(), Error> {
        match self {
            Durable::Now => Ok(()),
            Durable::Commit(completion) => completion.wait().await,
            Durable::Later(future) => future.await,
        }
    }
}

/// What becomes visible once an applied change is durable.
#[derive(Default)]
pub struct Committed {
    /// A new message, which joins the room's cache.
    pub message: Option<Arc<Message>>,
    /// With a change message: its target's new state.
    pub target: Option<Arc<Message>>,
    /// The room closed: it leaves memory now that the disk says so.
    pub closed: bool,
    pub events: Vec<Event>,
}

impl Engine {
    /// Submits `batch` for `room` (call under its lock, with a slot reserved before it was
    /// taken). Once durable, `committed` becomes visible and its events are published.
    pub(super) fn submit(
        &self,
        slot: Slot,
        room: &Arc<Room>,
        batch: Batch,
        committed: Committed,
    ) -> Completion {
        let (tx, rx) = async_channel::bounded(1);
        let engine = self.clone();
        let committed_room = room.clone();
        let generation = room.generation.load(Ordering::Acquire);
        let op = WriteOp {
            batch,
            built_on: Some((room.generation.clone(), generation)),
            done: Box::new(move |result| {
                match &result {
                    Ok(()) => {
                        if !engine.inner.storage_ok.swap(true, Ordering::Relaxed) {
                            log::info!("storage takes writes again; ready");
                        }
                        let Committed {
                            message,
                            target,
                            closed,
                            events,
                        } = committed;
                        if let Some(message) = message {
                            committed_room.state().commit(message, target);
                        }
                        if closed {
                            engine.inner.resident.remove(&committed_room);
                        }
                        engine.publish(&events);
                    }
                    Err(StorageError::Superseded) => {}
                    Err(_) => {
                        engine.inner.storage_ok.store(false, Ordering::Relaxed);
                        engine.roll_back(&committed_room);
                    }
                }
                let _ = tx.try_send(result);
            }),
        };
        self.inner.writer.submit(slot, op);
        Completion(rx)
    }

    /// A write of nothing for `room`: it commits after everything submitted before it, so a
    /// repeat answers only once the original is durable.
    pub(super) fn barrier(&self, slot: Slot, room: &Arc<Room>) -> Completion {
        self.submit(slot, room, Batch::new(), Committed::default())
    }

    /// Submits writes that no room's in-memory state was built on (barriers, retention,
    /// cluster positions); `on_commit` runs on the writer thread once they are durable.
    pub(super) fn submit_unbound(
        &self,
        slot: Slot,
        batch: Batch,
        on_commit: impl FnOnce() + Send + 'static,
    ) -> Completion {
        let (tx, rx) = async_channel::bounded(1);
        let op = WriteOp {
            batch,
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

    /// Writes `batch` (no room's state is built on it) and waits until it is durable.
    pub async fn persist(&self, batch: Batch) -> Result<(), Error> {
        let slot = self.inner.writer.reserve().await;
        self.submit_unbound(slot, batch, || {}).wait().await
    }

    /// Gives `events` to every subscriber, in order.
    fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        for subscriber in &self.inner.subscribers {
            subscriber.publish(events);
        }
    }

    /// After a failed write: forget what was assigned but not committed, and reload the
    /// room from disk, which the failed write did not change: membership, read counts, and
    /// whether it is open. Runs on the writer thread.
    fn roll_back(&self, room: &Arc<Room>) {
        let _lifecycle = lock(&self.inner.lifecycle);
        let storage = &self.inner.storage;
        let cache = self.inner.config.history.cache_per_room;
        let on_disk = storage
            .room(room.id.as_str())
            .and_then(|record| match record {
                Some(record) if record.closed_ts.is_none() => {
                    super::load::state(storage, &room.id, room.number, room.created_ts, cache)
                        .map(Some)
                }
                _ => Ok(None),
            });
        let mut state = room.state();
        // Under the room's lock, so every op built from here on carries the new generation
        // and sees the rolled-back state.
        room.generation.fetch_add(1, Ordering::AcqRel);
        state.roll_back_uncommitted();
        match on_disk {
            Ok(Some(mut stored)) => {
                // Disk reads made before the failure must be made again.
                stored.dedup_evictions = state.dedup_evictions + 1;
                stored.target_commits = state.target_commits + 1;
                *state = stored;
            }
            Ok(None) => {
                state.members.clear();
                state.closed = true;
                state.refresh_audience();
                self.inner.resident.remove(room);
            }
            Err(e) => log::error!("cannot reload room {} after a failed write: {e}", room.id),
        }
    }
}
