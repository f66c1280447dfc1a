//! The read barrier's question to Redis: where do these shards' logs end now? Each group of
//! shards (as for sends) has a queue and one task that empties it: while one question is
//! out, the reads that arrive meanwhile queue up, and the next question, asked after every
//! one of them began, answers them all. So a read waits one Redis round trip at low load,
//! two at most under load, and Redis answers once for many reads instead of once per read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_channel::oneshot;
use redis::streams::StreamRangeReply;

use super::scripts::log_key;
use super::sends::next_batch;
use super::{Cluster, LogPosition};
use crate::error::Error;

/// The last entry of each asked shard's log; a shard whose log is empty is not named.
/// `None` when Redis could not answer: reads then go on from what this node has.
pub type Ends = Option<Arc<HashMap<u16, LogPosition>>>;

struct Asked {
    shards: Vec<u16>,
    answer: oneshot::Sender<Ends>,
}

/// One group's reads waiting for a question to Redis.
pub struct ProbeQueue {
    tx: async_channel::Sender<Asked>,
    rx: async_channel::Receiver<Asked>,
}

/// Reads a queue holds before a reader waits for room; one question answers them all.
const QUEUED: usize = 1024;

impl Default for ProbeQueue {
    fn default() -> ProbeQueue {
        let (tx, rx) = async_channel::bounded(QUEUED);
        ProbeQueue { tx, rx }
    }
}

impl ProbeQueue {
    /// Where `shards`' logs end, as Redis answers a question asked after this call began.
    pub async fn ends(&self, shards: Vec<u16>) -> Ends {
        let (answer, answered) = oneshot::channel();
        self.tx.send(Asked { shards, answer }).await.ok()?;
        answered.await.ok().flatten()
    }
}

impl Cluster {
    /// Empties `queue` for as long as the server runs: each question covers every shard the
    /// queued reads asked about.
    pub(super) async fn probe_queued(&self, queue: &ProbeQueue) {
        let mut batch = Vec::new();
        while next_batch(&queue.rx, QUEUED, &mut batch).await {
            let shards: BTreeSet<u16> = batch.iter().flat_map(|a| a.shards.clone()).collect();
            let ends = self.log_ends(&shards).await.ok().map(Arc::new);
            for asked in batch.drain(..) {
                let _ = asked.answer.send(ends.clone());
            }
        }
    }

    /// One round trip: the last entry of each of `shards`' logs.
    async fn log_ends(&self, shards: &BTreeSet<u16>) -> Result<HashMap<u16, LogPosition>, Error> {
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        for &shard in shards {
            pipe.xrevrange_count(log_key(shard), "+", "-", 1);
        }
        let replies: Vec<StreamRangeReply> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(shards
            .iter()
            .zip(replies)
            .filter_map(|(&shard, reply)| {
                let last = reply.ids.first()?;
                Some((shard, LogPosition::parse(&last.id)?))
            })
            .collect())
    }
}
