//! Cluster mode (cargo feature `redis`): Redis decides every change (seq and ts, membership,
//! dedup) in Lua scripts that append it to a per-shard log; every node, the asking one
//! included, reads the logs and applies them in order to its own storage and memory.
//!
//! A change is acknowledged once Redis has logged it and this node has applied it, so a
//! client reads its own writes on its node, and every node ends up with the same history.
//! Each node stores how far it has applied every log, beside the data, and so resumes
//! where it stopped after a restart or a lost Redis connection. Redis must persist its
//! data (AOF) for a Redis restart to lose nothing: see docs/cluster.md.

mod link;
mod probes;
pub mod reseed;
mod scripts;
mod sends;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisError, Value};

use crate::config::ClusterConfig;
use crate::engine::{
    Applied, Authority, Change, Completion, Decided, Decision, Delivered, Disconnect, Durable,
    Engine, Made, Post, Proposal, Scope, Stamp,
};
use crate::error::{Error, StartError, StorageError};
use crate::protocol::{now_ms, RoomId, RoomKind, UserId};
use crate::storage::{Batch, Storage};
use crate::sync::lock;
use link::{backoff, Conn, Link};
use probes::ProbeQueue;
use scripts::{
    dedup_field, log_key, shard_of, typing_key, RoomKeys, Scripts, SendArgs, IDENTITY_KEY,
    TYPING_LOG_LEN,
};
use sends::{Answering, SendQueue};

/// Entries one log read takes at most.
const READ_COUNT: usize = 512;
/// How often the supervisor checks a healthy connection.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Typing indicators on their way to Redis at once; more are dropped, as typing may be.
const MAX_TYPING_IN_FLIGHT: usize = 256;
/// Times a message change is decided again after Redis found its target changed meanwhile.
const MAX_STALE_DECISIONS: usize = 8;

/// The position of an entry in a shard's log: Redis stream id `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition(u64, u64);

impl LogPosition {
    fn parse(id: &str) -> Option<LogPosition> {
        let (ms, seq) = id.split_once('-')?;
        Some(LogPosition(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// How far this node has applied one shard's log.
struct ShardProgress {
    applied: Mutex<AppliedUpTo>,
    /// Whether a read has found the log's end since start-up.
    caught_up: AtomicBool,
}

/// A shard's applied position and the callers waiting for it to pass theirs.
struct AppliedUpTo {
    position: LogPosition,
    /// Each waiter is woken once, when the position reaches its key.
    waiting: BTreeMap<LogPosition, Vec<async_channel::Sender<()>>>,
}

/// Waiters at which [`ShardProgress::wait_for`] drops those that gave up.
const PRUNE_WAITERS_AT: usize = 4096;

impl ShardProgress {
    fn new(position: LogPosition) -> ShardProgress {
        ShardProgress {
            applied: Mutex::new(AppliedUpTo {
                position,
                waiting: BTreeMap::new(),
            }),
            caught_up: AtomicBool::new(false),
        }
    }

    fn position(&self) -> LogPosition {
        lock(&self.applied).position
    }

    /// `None` when `target` is applied already; else what resolves once it is.
    fn wait_for(&self, target: LogPosition) -> Option<async_channel::Receiver<()>> {
        let mut applied = lock(&self.applied);
        if applied.position >= target {
            return None;
        }
        if applied.waiting.len() >= PRUNE_WAITERS_AT {
            applied.waiting.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
        }
        let (tx, rx) = async_channel::bounded(1);
        applied.waiting.entry(target).or_default().push(tx);
        Some(rx)
    }

    /// Moves the position to `to` and wakes everyone waiting for it or earlier.
    fn advance(&self, to: LogPosition) {
        let ready = {
            let mut applied = lock(&self.applied);
            applied.position = to;
            let later = applied.waiting.split_off(&LogPosition(to.0, to.1 + 1));
            std::mem::replace(&mut applied.waiting, later)
        };
        for sender in ready.into_values().flatten() {
            let _ = sender.try_send(());
        }
    }
}

/// The cluster handle the engine holds.
pub struct Cluster {
    config: ClusterConfig,
    link: Link,
    scripts: Scripts,
    shards: Vec<ShardProgress>,
    /// Each shard group's message sends waiting for a script call ([`Cluster::shard_groups`]).
    sends: Vec<SendQueue>,
    /// Each shard group's reads waiting to learn where the logs end ([`Cluster::catch_up`]).
    probes: Vec<ProbeQueue>,
    /// The data set this node's positions belong to, once known.
    epoch: Mutex<Option<String>>,
    /// Why this node cannot serve as a faithful replica (missed changes, Redis lost its
    /// data, shard count differs): it stays not ready until an operator acts.
    broken: Mutex<Option<String>>,
    typing_in_flight: AtomicUsize,
    /// Until when (ms after `started`) this node holds the webhook sender lease; 0 when it
    /// does not.
    sends_webhooks_until: AtomicU64,
    /// What `sends_webhooks_until` counts from: a clock that never steps back.
    started: std::time::Instant,
    /// The name it holds the lease under: its own per process, since a node seeded from a
    /// backup of another has that node's name.
    lease_name: String,
    /// The log cap and this node's name (its data directory's epoch), as every script's
    /// `<max_len>:<node>` argument: a logged change names the node that asked for it.
    append_spec: String,
    /// `<max fields> <ttl ms>` of each room's dedup generations, for the send script.
    dedup_window: String,
}

/// A message, or a change to one, on its way to the send script.
struct Posting {
    shard: u16,
    room_id: RoomId,
    post: Post,
    dedup: String,
    body: Arc<str>,
}

/// How a post was taken: answered from this node's own storage, or queued for Redis.
enum Asked {
    Known(Decided),
    Redis(Answering),
}

/// A change Redis has logged, not yet applied here.
struct Pending {
    cluster: Arc<Cluster>,
    shard: u16,
    position: LogPosition,
}

impl Pending {
    /// Waits until this node has applied the change (and so made it durable and visible).
    async fn applied(self) -> Result<(), Error> {
        self.cluster.wait_applied(self.shard, self.position).await
    }

    fn durable(self) -> Durable {
        Durable::Later(Box::pin(self.applied()))
    }
}

impl Cluster {
    /// Reads this node's log positions; connects later, in [`Cluster::keep_up`].
    pub fn new(config: &ClusterConfig, storage: &Storage) -> Result<Cluster, StartError> {
        let node = storage.epoch()?;
        let url = config.redis_url.as_deref().unwrap_or_default();
        let link = Link::new(url, config.redis_cluster)
            .map_err(|e| StartError::Redis(format!("cluster.redis_url {url:?}: {e}")))?;
        let shards = (0..config.shards)
            .map(|shard| {
                let stored = storage.cluster_position(shard)?;
                Ok(ShardProgress::new(
                    stored.map_or_else(LogPosition::default, |(ms, seq)| LogPosition(ms, seq)),
                ))
            })
            .collect::<Result<_, StorageError>>()?;
        let groups = shard_groups(config).len();
        Ok(Cluster {
            config: config.clone(),
            link,
            scripts: Scripts::new(),
            shards,
            sends: (0..groups)
                .map(|_| SendQueue::new(config.sends_per_call))
                .collect(),
            probes: (0..groups).map(|_| ProbeQueue::default()).collect(),
            epoch: Mutex::new(storage.cluster_epoch()?),
            broken: Mutex::new(None),
            typing_in_flight: AtomicUsize::new(0),
            sends_webhooks_until: AtomicU64::new(0),
            started: std::time::Instant::now(),
            lease_name: format!("{node}/{:016x}", fastrand::u64(..)),
            append_spec: format!("{}:{node}", config.log_max_len),
            dedup_window: format!("{} {}", config.dedup_max_fields, config.dedup_ttl_ms),
        })
    }

    /// Redis is reachable, every log has been read to its end once, and nothing was missed.
    fn is_ready(&self) -> bool {
        self.link.current().is_some()
            && self.broken().is_none()
            && self
                .shards
                .iter()
                .all(|shard| shard.caught_up.load(Ordering::Acquire))
    }

    fn broken(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    fn set_broken(&self, why: String) {
        log::error!("cluster: {why}; this node reports not ready until it is repaired");
        *lock(&self.broken) = Some(why);
    }

    /// The command connection, or `unavailable`.
    fn conn(&self) -> Result<Conn, Error> {
        if let Some(why) = self.broken() {
            return Err(Error::Unavailable(format!(
                "this node is out of sync: {why}"
            )));
        }
        self.link
            .current()
            .ok_or_else(|| Error::Unavailable("Redis is unreachable".into()))
    }

    /// A failed Redis call: the caller gets `unavailable`, and the connection is re-opened.
    fn failed(&self, e: RedisError) -> Error {
        log::warn!("cluster: Redis call failed: {e}");
        self.link.broke();
        Error::Unavailable(format!("Redis call failed: {e}"))
    }

    /// How far this node has applied `shard`'s log.
    fn progress(&self, shard: u16) -> &ShardProgress {
        &self.shards[usize::from(shard)]
    }

    fn shard(&self, room_id: &RoomId) -> u16 {
        shard_of(room_id.as_str(), self.config.shards)
    }

    async fn wait_applied(&self, shard: u16, position: LogPosition) -> Result<(), Error> {
        let Some(applied) = self.progress(shard).wait_for(position) else {
            return Ok(());
        };
        let deadline = Duration::from_millis(self.config.apply_timeout_ms);
        let waited = smol::future::or(async { applied.recv().await.is_ok() }, async {
            smol::Timer::after(deadline).await;
            false
        })
        .await;
        if waited {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "the change was logged but this node has not applied it within {deadline:?}; \
                 it will be applied when the node catches up"
            )))
        }
    }

    /// Waits until this node has applied each of `shards`' logs up to the entry that is
    /// last now: whatever any node acknowledged before is then visible here. Without Redis
    /// it answers at once, and reads go on from what this node has.
    async fn catch_up(&self, shards: impl IntoIterator<Item = u16>) -> Result<(), Error> {
        if self.conn().is_err() {
            return Ok(());
        }
        let mut by_group: BTreeMap<usize, Vec<u16>> = BTreeMap::new();
        for shard in shards {
            by_group
                .entry(group_of(&self.config, shard))
                .or_default()
                .push(shard);
        }
        let asks = by_group.into_iter().map(|(group, shards)| async move {
            let Some(ends) = self.probes[group].ends(shards.clone()).await else {
                return Ok(());
            };
            let waits = shards.into_iter().filter_map(|shard| {
                let end = *ends.get(&shard)?;
                Some(self.wait_applied(shard, end))
            });
            futures_util::future::try_join_all(waits).await.map(drop)
        });
        futures_util::future::try_join_all(asks).await.map(drop)
    }

    fn pending(self: &Arc<Self>, shard: u16, id: &str) -> Result<Pending, Error> {
        let position = LogPosition::parse(id)
            .ok_or_else(|| Error::Internal(format!("Redis answered a bad log id {id:?}")))?;
        Ok(Pending {
            cluster: self.clone(),
            shard,
            position,
        })
    }

    /// Queues a message, or a change to one, for the send script: resolves once it is
    /// queued behind the caller's earlier sends, with its decision to follow. A change's
    /// rules are judged here, against this node's applied state; the script accepts the
    /// decision only if the target has had as many changes in Redis as here, and otherwise
    /// this node catches up and judges (and queues) again.
    async fn post(
        self: &Arc<Self>,
        engine: &Engine,
        room_id: RoomId,
        post: Post,
    ) -> Result<Decision, Error> {
        let dedup = post
            .client_msg_id
            .as_deref()
            .map(|id| dedup_field(post.sender.as_ref().map(UserId::as_str), id))
            .unwrap_or_default();
        let body: Arc<str> = serde_json::to_string(&post)
            .map_err(|e| Error::Internal(e.to_string()))?
            .into();
        let posting = Posting {
            shard: self.shard(&room_id),
            room_id,
            post,
            dedup,
            body,
        };
        let first = match self.queue_post(engine, &posting).await? {
            Asked::Known(decided) => return Ok(Decision::Made(decided)),
            Asked::Redis(answering) => answering,
        };
        let (cluster, engine) = (self.clone(), engine.clone());
        Ok(Decision::Queued(Box::pin(async move {
            let mut answering = first;
            for _ in 1..MAX_STALE_DECISIONS {
                match cluster.decided(&posting, answering.answer().await?)? {
                    Ok(decided) => return Ok(decided),
                    Err(stale) => stale.applied().await?,
                }
                answering = match cluster.queue_post(&engine, &posting).await? {
                    Asked::Known(decided) => return Ok(decided),
                    Asked::Redis(answering) => answering,
                };
            }
            Err(Error::Unavailable(format!(
                "message {} of room {} kept changing while this change was decided; retry",
                posting.post.target_seq().unwrap_or_default(),
                posting.room_id
            )))
        })))
    }

    /// Answers `posting` from this node's storage when it repeats a send applied here;
    /// otherwise judges it against this node's state and queues it for the send script.
    async fn queue_post(&self, engine: &Engine, posting: &Posting) -> Result<Asked, Error> {
        let Posting {
            shard,
            room_id,
            post,
            dedup,
            body,
        } = posting;
        // Taken before looking and judging: the script trusts what this node found here only
        // for what it had applied up to this stamp, and never goes below it.
        let floor = engine.last_stamp(room_id).await?.unwrap_or_default();
        if let Some(decided) = engine.known_repeat(room_id, post).await? {
            return Ok(Asked::Known(decided));
        }
        let change = match engine.judge_change(room_id, post).await {
            Ok(change) => change,
            // Refused against what this node has: the room, or its membership, may have
            // changed on another node that this one has not applied yet.
            Err(_) => {
                self.catch_up([*shard]).await?;
                engine.judge_change(room_id, post).await?
            }
        };
        let send = SendArgs {
            keys: RoomKeys::new(room_id, *shard),
            room_id: room_id.clone(),
            sender: post.sender.clone(),
            dedup: dedup.clone(),
            floor: (floor.seq, floor.ts),
            body: body.clone(),
            change,
        };
        let queue = &self.sends[group_of(&self.config, *shard)];
        Ok(Asked::Redis(queue.queue(send).await?))
    }

    /// What the send script's `answer` to `posting` decided; `Err` with what to wait for
    /// when the target had changed meanwhile.
    fn decided(
        self: &Arc<Self>,
        posting: &Posting,
        answer: Vec<String>,
    ) -> Result<Result<Decided, Pending>, Error> {
        let shard = posting.shard;
        let number = |text: &str| {
            text.parse::<u64>()
                .map_err(|_| Error::Internal(format!("Redis answered a bad number {text:?}")))
        };
        Ok(Ok(match answer.as_slice() {
            [word, seq, ts, id] if word == "new" || word == "repeat" => Decided {
                made: if word == "new" {
                    Made::Now
                } else {
                    Made::Before
                },
                stamp: Some(Stamp {
                    seq: number(seq)?,
                    ts: number(ts)?,
                }),
                durable: self.pending(shard, id)?.durable(),
            },
            [word, id] if word == "nothing" => Decided {
                made: Made::Nothing,
                stamp: None,
                durable: self.pending(shard, id)?.durable(),
            },
            [word, id] if word == "stale" => return Ok(Err(self.pending(shard, id)?)),
            other => return Err(refusal(&posting.room_id, other)),
        }))
    }

    /// Decides a room's creation, close, membership change or read marker.
    async fn room_change(self: &Arc<Self>, proposal: Proposal) -> Result<Decided, Error> {
        let (script, change, args, members) = match proposal {
            Proposal::Create {
                room_id,
                kind,
                owner,
                members,
            } => {
                let kind_word = match kind {
                    RoomKind::Route => "route",
                    RoomKind::Direct => "direct",
                };
                let args = vec![
                    kind_word.to_owned(),
                    owner.as_ref().map(UserId::to_string).unwrap_or_default(),
                ];
                let member_args = members.iter().map(UserId::to_string).collect();
                let change = Change::Created {
                    room_id,
                    kind,
                    owner,
                    members,
                    ts: now_ms(),
                };
                (&self.scripts.create, change, args, member_args)
            }
            Proposal::Close { room_id } => {
                let change = Change::Closed {
                    room_id,
                    ts: now_ms(),
                };
                (&self.scripts.close, change, Vec::new(), Vec::new())
            }
            Proposal::Join { room_id, user_id } => (
                &self.scripts.join,
                Change::Joined {
                    room_id,
                    user_id: user_id.clone(),
                },
                vec![user_id.to_string()],
                Vec::new(),
            ),
            Proposal::Leave { room_id, user_id } => (
                &self.scripts.leave,
                Change::Left {
                    room_id,
                    user_id: user_id.clone(),
                },
                vec![user_id.to_string()],
                Vec::new(),
            ),
            Proposal::Read {
                room_id,
                user_id,
                seq,
            } => (
                &self.scripts.read,
                Change::Read {
                    room_id,
                    user_id: user_id.clone(),
                    seq,
                },
                vec![user_id.to_string()],
                Vec::new(),
            ),
            Proposal::Post { .. } => {
                return Err(Error::Internal(
                    "posts are decided by the send script".into(),
                ))
            }
        };
        let room_id = change.room_id();
        let shard = self.shard(room_id);
        let keys = RoomKeys::new(room_id, shard);
        let encoded = serde_json::to_string(&change).map_err(|e| Error::Internal(e.to_string()))?;
        let mut invocation = keys.invoke(script, room_id);
        for arg in &args {
            invocation.arg(arg);
        }
        invocation.arg(&self.append_spec).arg(encoded);
        for member in &members {
            invocation.arg(member);
        }
        let mut conn = self.conn()?;
        let answer: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        // A change made before waits for everything logged until now, so the answer holds.
        let (made, id) = match answer.as_slice() {
            [word, id] if word == "changed" => (Made::Now, id),
            [word, id] if word == "unchanged" => (Made::Before, id),
            other => return Err(refusal(room_id, other)),
        };
        Ok(Decided {
            made,
            stamp: None,
            durable: self.pending(shard, id)?.durable(),
        })
    }

    /// Logs a disconnect in the user's shard, stamped with Redis's clock; resolves once this
    /// node has applied it.
    async fn disconnect(self: &Arc<Self>, user: &UserId, revoke: bool) -> Result<(), Error> {
        let shard = shard_of(user.as_str(), self.config.shards);
        let mut conn = self.conn()?;
        let id: String = self
            .scripts
            .disconnect
            .key(log_key(shard))
            .arg(user.as_str())
            .arg(&self.append_spec)
            .arg(if revoke { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        self.pending(shard, &id)?.applied().await
    }

    /// Sends a typing indicator, or with `seq` a `received`, to every node (this one
    /// included), best effort: dropped while Redis is unreachable or too many are on their
    /// way.
    fn broadcast(self: &Arc<Self>, room_id: &RoomId, user: &UserId, seq: Option<u64>) {
        let Ok(mut conn) = self.conn() else {
            return;
        };
        if self.typing_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_TYPING_IN_FLIGHT {
            self.typing_in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let mut xadd = redis::cmd("XADD");
        xadd.arg(typing_key(self.shard(room_id)))
            .arg("MAXLEN")
            .arg("~")
            .arg(TYPING_LOG_LEN)
            .arg("*")
            .arg("room")
            .arg(room_id.as_str())
            .arg("user")
            .arg(user.as_str());
        if let Some(seq) = seq {
            xadd.arg("seq").arg(seq);
        }
        let cluster = self.clone();
        smol::spawn(async move {
            let added: Result<Value, _> = xadd.query_async(&mut conn).await;
            if let Err(e) = added {
                log::debug!("cluster: typing indicator dropped: {e}");
            }
            cluster.typing_in_flight.fetch_sub(1, Ordering::AcqRel);
        })
        .detach();
    }

    /// Keeps the command connection open: reconnects with backoff and jitter while Redis
    /// is unreachable, checks the data set's identity on every connect, and pings.
    async fn keep_up(&self, engine: &Engine) {
        let mut attempt = 0;
        loop {
            let Some(mut conn) = self.link.current() else {
                match self.link.open().await {
                    Ok(conn) => {
                        attempt = 0;
                        log::info!("cluster: connected to Redis");
                        // Not used before its identity is checked: sends to a Redis that
                        // lost its data would find no room.
                        match self.check_identity(conn.clone(), engine).await {
                            Ok(()) => self.link.publish(conn),
                            Err(why) => {
                                log::warn!("cluster: cannot check Redis's identity: {why}");
                                smol::Timer::after(backoff(attempt)).await;
                            }
                        }
                    }
                    Err(e) => {
                        if attempt == 0 {
                            log::warn!("cluster: Redis is unreachable ({e}); retrying");
                        }
                        smol::Timer::after(backoff(attempt)).await;
                        attempt += 1;
                    }
                }
                continue;
            };
            // The ping reads the data set's name: a Redis flushed under a live connection
            // answers none, and its empty rooms must not be served as if they never existed.
            let identity: Result<Option<String>, _> = conn.get(IDENTITY_KEY).await;
            match identity {
                Err(e) => {
                    log::warn!("cluster: lost Redis ({e}); reconnecting");
                    self.link.broke();
                    continue;
                }
                Ok(None) if self.broken().is_none() => self.set_broken(
                    "Redis lost its data while this node was connected (was it flushed?)".into(),
                ),
                Ok(_) => {}
            }
            if engine.config().webhooks.url.is_some() {
                // Only a node that applies the logs writes the events to send.
                if self.is_ready() {
                    self.renew_lease(conn).await;
                } else {
                    self.give_up_lease();
                }
            }
            self.link.until_broken(PING_EVERY).await;
        }
    }

    /// Compares Redis's `<epoch> <shards>` with this node's; the first node to connect to
    /// an empty Redis names the data set.
    async fn check_identity(&self, mut conn: Conn, engine: &Engine) -> Result<(), RedisError> {
        let proposal = format!("{:016x} {}", fastrand::u64(..), self.config.shards);
        let _: Value = redis::cmd("SET")
            .arg(IDENTITY_KEY)
            .arg(&proposal)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let identity: String = conn.get(IDENTITY_KEY).await?;
        let (epoch, shards) = identity.split_once(' ').unwrap_or((&identity, ""));
        if shards != self.config.shards.to_string() {
            self.set_broken(format!(
                "Redis's data set has {shards:?} shards and this node's cluster.shards is {}",
                self.config.shards
            ));
            return Ok(());
        }
        let known = lock(&self.epoch).clone();
        match known {
            Some(known) if known == epoch => Ok(()),
            Some(known) => {
                self.set_broken(format!(
                    "Redis's data set is {epoch} but this node's data follows {known}: Redis \
                     lost its data (was it persisted?), or this data directory belongs to \
                     another cluster"
                ));
                Ok(())
            }
            None => {
                let mut batch = Batch::new();
                batch.cluster_epoch(epoch);
                if let Err(e) = engine.persist(batch).await {
                    log::warn!("cluster: cannot record the data set's name: {e}");
                    return Ok(());
                }
                *lock(&self.epoch) = Some(epoch.to_owned());
                Ok(())
            }
        }
    }

    /// Reads the logs of `shards` from this node's positions and applies them, forever;
    /// reconnects with backoff when a read fails.
    async fn follow(&self, engine: &Engine, shards: &[u16]) {
        let logs: Vec<String> = shards.iter().map(|&shard| log_key(shard)).collect();
        let typings: Vec<String> = shards.iter().map(|&shard| typing_key(shard)).collect();
        // A shard's log and typing stream share its hash tag, so one read serves both.
        let keys: Vec<&str> = logs.iter().chain(&typings).map(String::as_str).collect();
        let at_once = StreamReadOptions::default().count(READ_COUNT);
        let blocking = StreamReadOptions::default()
            .count(READ_COUNT)
            .block(link::READ_BLOCK.as_millis() as usize);
        let mut attempt = 0;
        'connect: loop {
            if self.broken().is_some() {
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
            // Positions mean nothing until they are known to belong to this Redis, which
            // the identity check tells within a round trip or two of connecting.
            if lock(&self.epoch).is_none() {
                smol::Timer::after(Duration::from_millis(5)).await;
                continue;
            }
            let mut conn = match self.link.dedicated().await {
                Ok(conn) => conn,
                Err(_) => {
                    smol::Timer::after(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            // Typing is read from wherever its stream ends now: never replayed.
            let mut typing_from = Vec::with_capacity(typings.len());
            for typing in &typings {
                let newest: Result<redis::streams::StreamRangeReply, _> =
                    conn.xrevrange_count(typing, "+", "-", 1).await;
                match newest {
                    Ok(reply) => typing_from
                        .push(reply.ids.first().map_or("0-0".to_owned(), |e| e.id.clone())),
                    Err(e) => {
                        log::warn!("cluster: reading {typing} failed: {e}");
                        smol::Timer::after(backoff(attempt)).await;
                        attempt += 1;
                        continue 'connect;
                    }
                }
            }
            // A node out of sync stops applying until an operator repairs it.
            while self.broken().is_none() {
                let mut from: Vec<String> = shards
                    .iter()
                    .map(|&shard| self.progress(shard).position().to_string())
                    .collect();
                from.extend(typing_from.iter().cloned());
                // Until every log has been read to its end, reads do not wait for new
                // entries: a node on an empty or short log is ready at once, not after a block.
                let caught_up = shards
                    .iter()
                    .all(|&shard| self.progress(shard).caught_up.load(Ordering::Acquire));
                let options = if caught_up { &blocking } else { &at_once };
                let read: Result<Option<StreamReadReply>, _> =
                    conn.xread_options(&keys, &from, options).await;
                let streams = match read {
                    Ok(reply) => reply.map(|r| r.keys).unwrap_or_default(),
                    Err(e) => {
                        log::warn!("cluster: reading the logs of shards {shards:?} failed: {e}");
                        // Not ready until a read after reconnecting reaches the end again.
                        for &shard in shards {
                            self.progress(shard)
                                .caught_up
                                .store(false, Ordering::Release);
                        }
                        break;
                    }
                };
                attempt = 0;
                let mut batches: Vec<(u16, Vec<redis::streams::StreamId>)> =
                    shards.iter().map(|&shard| (shard, Vec::new())).collect();
                for stream in streams {
                    if let Some(i) = typings.iter().position(|key| *key == stream.key) {
                        if let Some(last) = stream.ids.last() {
                            typing_from[i] = last.id.clone();
                        }
                        stream
                            .ids
                            .iter()
                            .for_each(|entry| note_typing(engine, entry));
                    } else if let Some(i) = logs.iter().position(|key| *key == stream.key) {
                        batches[i].1 = stream.ids;
                    }
                }
                if let Err(e) = self.apply_batches(engine, batches).await {
                    log::warn!(
                        "cluster: applying the logs of shards {shards:?} failed, retrying: {e}"
                    );
                    smol::Timer::after(backoff(3)).await;
                }
            }
            smol::Timer::after(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Applies each shard's `entries` in order, waits until they are durable, then records
    /// how far every shard got, in one commit.
    async fn apply_batches(
        &self,
        engine: &Engine,
        batches: Vec<(u16, Vec<redis::streams::StreamId>)>,
    ) -> Result<(), Error> {
        let mut completions = Vec::new();
        let mut reached = Vec::new();
        let mut read_to_end = Vec::new();
        for (shard, entries) in batches {
            if entries.len() < READ_COUNT {
                read_to_end.push(shard);
            }
            let Some(last) = entries.last().and_then(|e| LogPosition::parse(&e.id)) else {
                continue;
            };
            self.apply_entries(engine, shard, &entries, &mut completions)
                .await?;
            reached.push((shard, last));
        }
        for completion in completions {
            completion.wait().await?;
        }
        if !reached.is_empty() {
            let mut batch = Batch::new();
            for &(shard, last) in &reached {
                batch.cluster_position(shard, (last.0, last.1));
            }
            engine.persist(batch).await?;
            for (shard, last) in reached {
                self.progress(shard).advance(last);
            }
        }
        for shard in read_to_end {
            self.progress(shard)
                .caught_up
                .store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Applies one shard's `entries` in order, collecting what to wait for.
    async fn apply_entries(
        &self,
        engine: &Engine,
        shard: u16,
        entries: &[redis::streams::StreamId],
        completions: &mut Vec<Completion>,
    ) -> Result<(), Error> {
        for entry in entries {
            let change = match logged(entry) {
                Ok(Logged::Change(change)) => change,
                Ok(Logged::Disconnect(disconnect)) => {
                    engine.apply_disconnect(&disconnect).await?;
                    continue;
                }
                Err(why) => {
                    // Only a newer node's entry could fail to parse: skip it, loudly.
                    log::error!("cluster: skipping log {shard} entry {}: {why}", entry.id);
                    continue;
                }
            };
            let Applied { completion, gap } = engine.apply(change).await?;
            if let Some(missing) = gap {
                // A commit that failed meanwhile rolled its room back to disk, which looks
                // like a gap to the entries after it: only a gap behind durable entries is
                // one.
                for completion in completions.drain(..) {
                    completion.wait().await?;
                }
                self.set_broken(format!(
                    "log {shard} no longer holds {missing} (the node was away longer than \
                     cluster.log_max_len entries)"
                ));
            }
            completions.extend(completion);
        }
        Ok(())
    }
}

/// The shards that share one log reader and one send queue. On a single Redis one read or
/// script call may name every shard's keys, so one group serves them all and a quiet shard
/// costs no round trip; on a Redis Cluster a call's keys must share a slot, so each shard
/// is a group of its own.
fn shard_groups(config: &ClusterConfig) -> Vec<Vec<u16>> {
    let mut groups: Vec<Vec<u16>> = Vec::new();
    for shard in 0..config.shards {
        let group = group_of(config, shard);
        if groups.len() <= group {
            groups.resize_with(group + 1, Vec::new);
        }
        groups[group].push(shard);
    }
    groups
}

/// Which of [`shard_groups`] `shard` is in.
fn group_of(config: &ClusterConfig, shard: u16) -> usize {
    if config.redis_cluster {
        usize::from(shard)
    } else {
        0
    }
}

/// Shows a typing indicator, or with `seq` notes a `received`, from another node's entry.
fn note_typing(engine: &Engine, entry: &redis::streams::StreamId) {
    let room = entry
        .get::<String>("room")
        .and_then(|r| RoomId::parse(&r).ok());
    let user = entry
        .get::<String>("user")
        .and_then(|u| UserId::parse(&u).ok());
    if let (Some(room), Some(user)) = (room, user) {
        match entry.get::<u64>("seq") {
            Some(seq) => engine.note_received(&room, &user, seq),
            None => engine.push_typing(&room, &user),
        }
    }
}

/// What one log entry carries.
enum Logged {
    Change(Change),
    Disconnect(Disconnect),
}

fn logged(entry: &redis::streams::StreamId) -> Result<Logged, String> {
    let field = |name: &str| -> Result<String, String> {
        entry
            .get::<String>(name)
            .ok_or_else(|| format!("no {name} field"))
    };
    let number = |name: &str| -> Result<u64, String> {
        field(name)?.parse().map_err(|_| format!("bad {name}"))
    };
    if let Ok(user) = field("user") {
        return Ok(Logged::Disconnect(Disconnect {
            user_id: UserId::parse(&user).map_err(|e| e.to_string())?,
            at_ms: number("at")?,
            revoke: field("revoke")? == "1",
        }));
    }
    if let Ok(change) = field("change") {
        return serde_json::from_str(&change)
            .map(Logged::Change)
            .map_err(|e| e.to_string());
    }
    let room_id = RoomId::parse(&field("room")?).map_err(|e| e.to_string())?;
    Ok(Logged::Change(Change::Posted {
        room_id,
        seq: number("seq")?,
        ts: number("ts")?,
        post: serde_json::from_str(&field("message")?).map_err(|e| e.to_string())?,
    }))
}

/// The error for a script's refusal.
fn refusal(room_id: &RoomId, answer: &[String]) -> Error {
    match answer.first().map(String::as_str) {
        Some("not_found") => Error::room_not_found(room_id.as_str()),
        Some("no_message") => Error::message_not_found(
            room_id.as_str(),
            answer
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
        ),
        Some("not_member") => Error::not_member(room_id.as_str()),
        Some("conflict") => Error::owner_conflict(room_id.as_str()),
        Some("closed") => Error::closed_id_reused(room_id.as_str()),
        Some("forbidden") => Error::direct_unchangeable(),
        _ => Error::Internal(format!("Redis answered {answer:?}")),
    }
}

impl Authority for Arc<Cluster> {
    fn decide<'a>(
        &'a self,
        engine: &'a Engine,
        proposal: Proposal,
    ) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(async move {
            match proposal {
                Proposal::Post { room_id, post } => self.post(engine, room_id, post).await,
                other => self.room_change(other).await.map(Decision::Made),
            }
        })
    }

    fn disconnect<'a>(
        &'a self,
        _engine: &'a Engine,
        user: &'a UserId,
        revoke: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Cluster::disconnect(self, user, revoke))
    }

    fn typing(&self, _engine: &Engine, room_id: &RoomId, user: &UserId) {
        self.broadcast(room_id, user, None);
    }

    fn received(&self, _engine: &Engine, room_id: &RoomId, user: &UserId, seq: u64) {
        self.broadcast(room_id, user, Some(seq));
    }

    fn caught_up<'a>(
        &'a self,
        _engine: &'a Engine,
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let shards = match scope {
            Scope::Room(room) => vec![self.shard(room)],
            Scope::User(user) => vec![shard_of(user.as_str(), self.config.shards)],
            Scope::Everything => (0..self.config.shards).collect(),
        };
        Box::pin(self.catch_up(shards))
    }

    fn is_ready(&self) -> bool {
        Cluster::is_ready(self)
    }

    fn sends_webhooks(&self) -> bool {
        Cluster::sends_webhooks(self)
    }

    fn webhooks_delivered<'a>(
        &'a self,
        delivered: &'a [Delivered],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.record_delivered(delivered))
    }

    fn webhooks_delivered_elsewhere<'a>(
        &'a self,
        streams: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, Error>> {
        Box::pin(self.delivered(streams))
    }

    /// Keeps the Redis connection up and applies every shard's log.
    fn epoch(&self) -> Option<Arc<str>> {
        lock(&self.epoch).as_deref().map(Arc::from)
    }

    fn duties<'a>(&'a self, engine: &'a Engine) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut tasks = Vec::new();
            for (group, shards) in shard_groups(&self.config).into_iter().enumerate() {
                let (cluster, engine) = (self.clone(), engine.clone());
                tasks.push(smol::spawn(async move {
                    cluster.follow(&engine, &shards).await
                }));
                let cluster = self.clone();
                tasks.push(smol::spawn(async move {
                    cluster.send_queued(&cluster.sends[group]).await
                }));
                let cluster = self.clone();
                tasks.push(smol::spawn(async move {
                    cluster.probe_queued(&cluster.probes[group]).await
                }));
            }
            self.keep_up(engine).await;
            drop(tasks);
            std::future::pending::<()>().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_positions_order_by_time_then_sequence() {
        let p = |s| LogPosition::parse(s).unwrap();
        assert!(p("5-0") < p("5-1"));
        assert!(p("5-9") < p("10-0"), "numeric, not text, order");
        assert_eq!(p("1700000000000-3").to_string(), "1700000000000-3");
        assert_eq!(LogPosition::parse("nope"), None);
        assert_eq!(LogPosition::default(), p("0-0"));
    }

    #[test]
    fn one_group_on_a_single_redis_one_per_shard_on_a_redis_cluster() {
        let mut config = ClusterConfig {
            shards: 4,
            ..ClusterConfig::default()
        };
        assert_eq!(shard_groups(&config), [vec![0, 1, 2, 3]]);
        config.redis_cluster = true;
        assert_eq!(shard_groups(&config), [[0], [1], [2], [3]]);
        assert_eq!(group_of(&config, 2), 2);
    }
}
