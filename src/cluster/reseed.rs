//! `chat-engine reseed`: after Redis lost its data (it ran without AOF, or was flushed), fills
//! the empty Redis from one stopped node's data directory, so the cluster decides on from
//! where that node's history ends: every room's state, kind, owner, last seq and ts, and
//! members. The dedup generations are not carried: a retry older than the reseed is
//! recognised from the nodes' own storage, as for any retry older than both generations.
//!
//! The reseeded data set has a new name, which is the new history epoch: apps drop what they
//! cached, since the seqs the old data set handed out after this node's last may be handed
//! out again. The node follows the new, empty logs from their start. The other nodes' data
//! directories still follow the old data set (they stay not ready): replace them with a
//! backup of this one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use redis::{AsyncCommands, Value};

use super::link::Link;
use super::scripts::{shard_of, RoomKeys, IDENTITY_KEY};
use crate::config::Config;
use crate::protocol::RoomId;
use crate::storage::{Batch, Storage, StoredRoomKind};

/// Rooms read and written to Redis at a time.
const PAGE: usize = 256;

/// What a reseed did.
#[derive(Debug)]
pub struct Reseeded {
    /// The new data set's name: the cluster's new history epoch.
    pub epoch: String,
    pub rooms: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReseedError {
    #[error("cluster.redis_url is not set: reseed fills a cluster's Redis")]
    NotCluster,
    #[error("{0} is in use by a running server; stop it first")]
    InUse(PathBuf),
    #[error("cannot read the data directory {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    #[error("Redis at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "Redis holds a data set already ({0}); reseed only fills a Redis that lost its data \
         (stop every node first, so none names a new one)"
    )]
    NotEmpty(String),
    #[error("a Redis call failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Fills the empty Redis of `config.cluster` from `config.storage.path`.
pub fn reseed(config: &Config) -> Result<Reseeded, ReseedError> {
    let url = config
        .cluster
        .redis_url
        .clone()
        .ok_or(ReseedError::NotCluster)?;
    let path = config.storage.path.clone();
    let storage = Storage::open(&config.storage).map_err(|e| {
        let reason = e.to_string();
        if reason.contains("lock") {
            ReseedError::InUse(path.clone())
        } else {
            ReseedError::Storage {
                path: path.clone(),
                reason,
            }
        }
    })?;
    let unreachable = |e: redis::RedisError| ReseedError::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    };
    let failed = |e: crate::error::StorageError| ReseedError::Storage {
        path: path.clone(),
        reason: e.to_string(),
    };
    let shards = config.cluster.shards;
    smol::block_on(async {
        let link = Link::new(&url, config.cluster.redis_cluster).map_err(unreachable)?;
        let mut conn = link.open().await.map_err(unreachable)?;
        if let Some(identity) = conn.get::<_, Option<String>>(IDENTITY_KEY).await? {
            return Err(ReseedError::NotEmpty(identity));
        }
        let mut rooms = 0;
        let mut after = String::new();
        loop {
            let page = storage.rooms_after(&after, PAGE).map_err(failed)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            // One pipeline per shard: on a Redis Cluster a shard's keys share a slot.
            let mut pipes: BTreeMap<u16, redis::Pipeline> = BTreeMap::new();
            for (id, record) in &page {
                let room_id = RoomId::parse(id).map_err(|e| ReseedError::Storage {
                    path: path.clone(),
                    reason: format!("room id {id:?}: {e}"),
                })?;
                let shard = shard_of(id, shards);
                let keys = RoomKeys::new(&room_id, shard);
                let stamp = storage.last_stamp(record.number).map_err(failed)?;
                let (seq, ts) = stamp.map_or((0, 0), |s| (s.seq, s.ts));
                let open = record.closed_ts.is_none();
                let kind = match record.kind {
                    StoredRoomKind::Route => "route",
                    StoredRoomKind::Direct => "direct",
                };
                let fields = [
                    ("state", if open { "open" } else { "closed" }.to_owned()),
                    ("kind", kind.to_owned()),
                    ("owner", record.owner.clone().unwrap_or_default()),
                    ("seq", seq.to_string()),
                    ("ts", ts.to_string()),
                ];
                let pipe = pipes.entry(shard).or_default();
                pipe.hset_multiple(&keys.room, &fields).ignore();
                let members = storage.members(id).map_err(failed)?;
                if open && !members.is_empty() {
                    let users: Vec<&String> = members.iter().map(|(user, _)| user).collect();
                    pipe.sadd(&keys.members, users).ignore();
                }
            }
            for pipe in pipes.values() {
                pipe.query_async::<()>(&mut conn).await?;
            }
            rooms += page.len();
            after = last.clone();
        }
        // Named last: a node that connected meanwhile found no data set and named its own,
        // and this reseed then fails rather than mixing two.
        let epoch = format!("{:016x}", fastrand::u64(..));
        let named: Value = redis::cmd("SET")
            .arg(IDENTITY_KEY)
            .arg(format!("{epoch} {shards}"))
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        if named == Value::Nil {
            let identity: String = conn.get(IDENTITY_KEY).await?;
            return Err(ReseedError::NotEmpty(identity));
        }
        let mut batch = Batch::new();
        batch.cluster_epoch(&epoch);
        for shard in 0..shards {
            batch.cluster_position(shard, (0, 0));
        }
        storage.write(batch.writes(), true).map_err(failed)?;
        Ok(Reseeded { epoch, rooms })
    })
}
