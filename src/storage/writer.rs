//! The group-commit writer: one thread that owns all writes. It takes every write waiting,
//! applies them as one WriteBatch with one WAL sync, then tells each writer, in order.
//!
//! One thread and one queue give a total order: a write's `done` runs after every write
//! submitted before it committed, which is what makes pushes leave in seq order and lets a
//! no-op write serve as a barrier ("everything before me is durable").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use async_lock::{Semaphore, SemaphoreGuardArc};

use super::{Batch, Storage};
use crate::error::StorageError;
use crate::metrics::Metrics;

/// What the writer is asked to do: make `batch` durable, then call `done` with the outcome.
pub struct WriteOp {
    pub batch: Batch,
    /// A generation counter and the value it had when the op was built: if the counter has
    /// moved, an earlier write failed and rolled back the state this op was built on, so the
    /// op is refused with [`StorageError::Superseded`] instead of being written.
    pub built_on: Option<(Arc<AtomicU64>, u64)>,
    /// Runs on the writer thread, after the commit, in submission order. Keep it short.
    pub done: Box<dyn FnOnce(Result<(), StorageError>) + Send>,
}

/// A reserved place in the writer's bounded queue.
pub struct Slot {
    _held: SemaphoreGuardArc,
}

/// Handle to the writer thread.
pub struct Writer {
    queue: async_channel::Sender<(WriteOp, Slot)>,
    slots: Arc<Semaphore>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread. At most `queue_limit` ops wait; at most `max_batch` go in
    /// one commit.
    pub fn start(
        storage: Arc<Storage>,
        queue_limit: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Writer {
        // The queue itself is unbounded; the semaphore is what bounds it, because a sender
        // must hold a slot before it takes the locks under which it submits.
        let (queue, ops) = async_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("chat-engine-writer".into())
            .spawn(move || write_loop(&storage, &ops, max_batch, &metrics))
            .expect("spawn writer thread");
        Writer {
            queue,
            slots: Arc::new(Semaphore::new(queue_limit)),
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Waits for a place in the queue. Take it before any lock the submit happens under.
    pub async fn reserve(&self) -> Slot {
        Slot {
            _held: self.slots.acquire_arc().await,
        }
    }

    /// [`Writer::reserve`] for blocking contexts.
    pub fn reserve_blocking(&self) -> Slot {
        Slot {
            _held: self.slots.acquire_arc_blocking(),
        }
    }

    /// Queues `op`. Never blocks; after shutdown the op fails with [`StorageError::Closed`].
    pub fn submit(&self, slot: Slot, op: WriteOp) {
        if let Err(rejected) = self.queue.try_send((op, slot)) {
            let (op, _slot) = rejected.into_inner();
            (op.done)(Err(StorageError::Closed));
        }
    }

    /// Stops taking ops, lets the thread commit what is queued, and waits for it.
    pub fn close(&self) {
        self.queue.close();
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            if thread.join().is_err() {
                log::error!("storage writer thread panicked");
            }
        }
    }
}

fn write_loop(
    storage: &Storage,
    ops: &async_channel::Receiver<(WriteOp, Slot)>,
    max_batch: usize,
    metrics: &Metrics,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = ops.recv_blocking() {
        batch.push(first);
        while batch.len() < max_batch {
            match ops.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        commit(storage, &mut batch, metrics);
    }
}

fn commit(storage: &Storage, batch: &mut Vec<(WriteOp, Slot)>, metrics: &Metrics) {
    let mut current = Vec::with_capacity(batch.len());
    for (op, slot) in batch.drain(..) {
        let superseded = matches!(&op.built_on, Some((counter, seen)) if counter.load(Ordering::Acquire) != *seen);
        if superseded {
            (op.done)(Err(StorageError::Superseded));
        } else {
            current.push((op, slot));
        }
    }
    if current.is_empty() {
        return;
    }
    let writes = current.iter().map(|(op, _)| op.batch.len()).sum::<usize>();
    let result = if writes == 0 {
        // Only barriers: everything before them committed in earlier batches.
        Ok(())
    } else {
        let started = Instant::now();
        let result = storage.write(current.iter().flat_map(|(op, _)| &op.batch.writes), true);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.commit_batch_writes.observe(writes as f64);
        result
    };
    if let Err(e) = &result {
        metrics.commit_failures.inc();
        log::error!("group commit of {writes} writes failed: {e}");
    }
    for (op, _slot) in current {
        (op.done)(result.clone());
    }
}
