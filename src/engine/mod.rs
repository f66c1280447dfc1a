//! The engine: rooms, membership, seq/ts assignment, history and fan-out, behind one
//! cheap-to-clone handle shared by the HTTP and WebSocket layers.
//!
//! Every change follows one path (docs/architecture.md): an operation (membership.rs,
//! messages.rs, changes.rs) validates a request and makes a [`Proposal`]; the [`Authority`]
//! decides it ([`Local`] under the room's lock, or the cluster through Redis); apply.rs turns
//! the decided [`Change`] into writes, the room's transition and [`Event`]s; commit.rs hands
//! the writes to the group-commit writer and, once they are durable, makes the change visible
//! and publishes its events, in commit order. So nothing is seen before it is on disk, and a
//! room's pushes leave in seq order.

mod apply;
mod authority;
mod change;
mod changes;
mod commit;
pub mod connections;
mod events;
mod history;
mod idle;
mod load;
mod local;
pub mod membership;
mod messages;
mod outbox;
mod records;
mod resident;
mod resume;
mod retention;
mod room;
mod rules;
mod sessions;
mod webhooks;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use apply::Applied;
pub use authority::{Authority, Delivered, Scope};
pub use change::{Amendment, Change, Decided, Decision, Made, Post, Proposal};
pub use changes::Judged;
pub use commit::{Completion, Durable};
pub use connections::{close_code, Connection, ConnectionQueues, Outbound, Priority};
use connections::{QueueLimits, Registry};
pub use events::{Event, Subscriber};
pub use local::Local;
pub use messages::{Accepted, RoomsList, Sent};
use resident::Resident;
pub use resume::Resumed;
pub use room::Stamp;
pub use rules::Verdict;
pub use sessions::Disconnect;
pub use webhooks::{sign, SIGNATURE_HEADER};

use crate::auth::{Authenticator, Token};
use crate::config::Config;
use crate::error::{Error, StorageError};
use crate::metrics::Metrics;
use crate::protocol::RoomId;
use crate::storage::{Storage, Writer};

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
    /// Who decides changes: this node, or the cluster.
    authority: Arc<dyn Authority>,
    /// Who hears of every durable change, in commit order.
    subscribers: Vec<Arc<dyn Subscriber>>,
    /// The rooms in use; the others are on disk only.
    resident: Resident,
    /// The data directory's history epoch.
    epoch: Arc<str>,
    /// With `webhooks.url`: wakes and stops the webhook sender, and its thread.
    webhooks: Option<Arc<webhooks::Signal>>,
    connections: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Serialises creating and closing rooms, which consult disk tombstones and allocate
    /// room numbers. Taken only off the executor (writer thread, `unblock`).
    lifecycle: Mutex<()>,
    next_room_number: AtomicU64,
    /// False after a failed write until one succeeds again (`/readyz`).
    storage_ok: AtomicBool,
}

impl Engine {
    /// Starts the writer on `storage`; `authority` decides every change from then on. No
    /// room is read: each loads on its first use.
    pub fn open(
        config: Config,
        storage: Arc<Storage>,
        authority: Arc<dyn Authority>,
    ) -> Result<Engine, StorageError> {
        let next_room_number = storage.next_room_number()?;
        let epoch = storage.epoch()?.into();
        let metrics = Metrics::new();
        let writer = Writer::start(
            storage.clone(),
            config.storage.write_queue,
            config.storage.max_batch,
            metrics.clone(),
        );
        let connections = Arc::new(Registry::new(metrics.clone()));
        let mut subscribers: Vec<Arc<dyn Subscriber>> = vec![
            Arc::new(events::Fanout {
                connections: connections.clone(),
            }),
            metrics.clone(),
        ];
        let signal = config.webhooks.url.is_some().then(|| {
            let signal = Arc::new(webhooks::Signal::default());
            subscribers.push(signal.clone());
            signal
        });
        Ok(Engine {
            inner: Arc::new(Shared {
                auth: Authenticator::new(&config.auth, metrics.clone()),
                config,
                storage,
                writer,
                authority,
                subscribers,
                resident: Resident::new(),
                epoch,
                webhooks: signal,
                connections,
                metrics,
                lifecycle: Mutex::new(()),
                next_room_number: AtomicU64::new(next_room_number),
                storage_ok: AtomicBool::new(true),
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

    /// Whether storage is taking writes and the authority can decide (in cluster mode: Redis
    /// is reachable and this node is caught up) (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.inner.authority.is_ready() && self.inner.storage_ok.load(Ordering::Relaxed)
    }

    /// The history epoch every Room object and `sync` reply carries.
    pub fn epoch(&self) -> Arc<str> {
        let named = self.inner.authority.epoch();
        named.unwrap_or_else(|| self.inner.epoch.clone())
    }

    /// The authority's background duties (cluster mode: keeping Redis connected and
    /// applying the logs). Never ends.
    pub async fn authority_duties(&self) {
        self.inner.authority.duties(self).await
    }

    /// Waits until this node shows what any node acknowledged in `scope` (see
    /// [`Authority::caught_up`]). Every read a client makes calls it first.
    pub async fn caught_up(&self, scope: Scope<'_>) -> Result<(), Error> {
        self.inner.authority.caught_up(self, scope).await
    }

    async fn propose(&self, proposal: Proposal) -> Result<Decided, Error> {
        self.queue(proposal).await?.decided().await
    }

    /// Has `proposal` decided, or queued behind this caller's earlier ones.
    async fn queue(&self, proposal: Proposal) -> Result<Decision, Error> {
        self.inner.authority.decide(self, proposal).await
    }

    /// The last seq and ts this node assigned (or applied) in `room_id`, if it is open here.
    pub async fn last_stamp(&self, room_id: &RoomId) -> Result<Option<Stamp>, Error> {
        let room = self.room(room_id).await?;
        Ok(room.map(|room| room.state().assigned))
    }

    /// Registers a WebSocket connection for a verified token; pushes for the user's rooms
    /// start at once.
    pub fn connect(&self, token: &Token) -> Result<(Arc<Connection>, ConnectionQueues), Error> {
        let limits = &self.inner.config.limits;
        let queue = QueueLimits {
            frames: limits.outbound_queue,
            bytes: limits.outbound_queue_bytes,
        };
        let registered =
            self.inner
                .connections
                .register(token, queue, limits.max_connections_per_user);
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

    /// Starts the webhook sender's thread, with `webhooks.url` set.
    pub fn start_webhooks(&self) {
        let Some(signal) = &self.inner.webhooks else {
            return;
        };
        let (engine, sender) = (self.clone(), signal.clone());
        let spawned = std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || engine.deliver_webhooks(sender));
        match spawned {
            Ok(handle) => *crate::sync::lock(&signal.thread) = Some(handle),
            Err(e) => log::error!("cannot start the webhook sender: {e}"),
        }
    }

    /// Closes every connection with 1001, waits (bounded) for them to go, then lets the
    /// writer commit what is queued and stops it. The webhook sender stops first; what it
    /// has not delivered stays in the outbox for the next start.
    pub async fn shutdown(&self) {
        if let Some(signal) = &self.inner.webhooks {
            signal.stop();
            let thread = crate::sync::lock(&signal.thread).take();
            // A request in flight ends within webhooks.timeout_ms.
            if let Some(thread) = thread {
                let _ = smol::unblock(move || thread.join()).await;
            }
        }
        let connections = &self.inner.connections;
        connections.close_all(close_code::GOING_AWAY);
        let grace = Duration::from_millis(self.inner.config.server.shutdown_grace_ms);
        let deadline = std::time::Instant::now() + grace;
        while connections.count() > 0 && std::time::Instant::now() < deadline {
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        let engine = self.clone();
        smol::unblock(move || {
            engine.inner.writer.close();
            engine.inner.storage.stop_background_work();
        })
        .await;
        log::info!("storage writer stopped; all acknowledged writes are durable");
    }

    /// Writes a consistent copy of the data directory to `dir` while serving (`chat-engine
    /// backup`). `dir` must be absolute, hold no NUL byte, and must not exist.
    pub async fn backup(&self, dir: std::path::PathBuf) -> Result<(), Error> {
        if !dir.is_absolute() {
            return Err(Error::BadRequest(format!(
                "backup directory {} is not an absolute path",
                dir.display()
            )));
        }
        // The file system would refuse it (an internal error); it is the caller's mistake.
        if dir.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(Error::BadRequest(
                "backup directory holds a NUL byte".into(),
            ));
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
        self.persist(Default::default()).await.is_ok()
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

/// The schedule of a periodic sweep over a period of `days` (retention, idle rooms): the
/// period, and how often to check: `1/parts` of it, between 50 ms and `at_most`.
fn sweep_schedule(days: f64, parts: u32, at_most: Duration) -> (Duration, Duration) {
    let period = Duration::from_secs_f64(days * 24.0 * 60.0 * 60.0);
    let every = (period / parts).clamp(Duration::from_millis(50), at_most);
    (period, every)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{NewChange, NewMessage, UserId};

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
        let storage = Arc::new(Storage::open(&config.storage).unwrap());
        let engine = Engine::open(config, storage, Arc::new(Local)).unwrap();
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

            let fail = |on: bool| {
                engine
                    .inner
                    .storage
                    .fail_writes
                    .store(on, Ordering::Relaxed)
            };
            fail(true);
            let failed = engine.send(&room, Some(&driver), text("lost")).await;
            assert_eq!(failed.err().map(|e| e.code()), Some("unavailable"));
            assert!(!engine.is_ready(), "readyz reports the failure");
            let failed_join = engine.join(&room, &UserId::parse("u").unwrap()).await;
            assert_eq!(failed_join.err().map(|e| e.code()), Some("unavailable"));

            fail(false);
            let next = engine
                .send(&room, Some(&driver), text("two"))
                .await
                .unwrap();
            assert_eq!(next.stamp.seq, 2, "the failed message left no gap");
            assert!(engine.is_ready());
            let view = engine.room_view(&room).await.unwrap();
            assert_eq!(view.members.len(), 1, "the failed join was rolled back");
            let page = engine
                .history(&room, &Default::default(), None)
                .await
                .unwrap();
            let texts: Vec<_> = page.messages.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["one", "two"]);

            // A change whose write fails leaves its target as it was, and takes no seq.
            let edit = |text: &str| NewChange::Edit {
                seq: 1,
                message: self::text(text),
            };
            fail(true);
            let failed = engine
                .accept_change(&room, Some(&driver), edit("lost"))
                .await;
            let failed = match failed {
                Ok(accepted) => accepted.durable().await.err(),
                Err(e) => Some(e),
            };
            assert_eq!(failed.map(|e| e.code()), Some("unavailable"));
            fail(false);
            let target = engine.message_at(&room, 1).await.unwrap();
            assert_eq!((target.text.as_str(), target.edited_ts), ("one", None));
            let sent = engine
                .accept_change(&room, Some(&driver), edit("one!"))
                .await;
            let sent = sent.unwrap().durable().await.unwrap().unwrap();
            assert_eq!(sent.stamp.seq, 3, "the failed edit left no gap");
            let target = engine.message_at(&room, 1).await.unwrap();
            assert_eq!(target.text, "one!");
            engine.shutdown().await;
        });
    }
}
