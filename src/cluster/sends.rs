//! Message sends on their way to Redis. Each group of shards (all of them on a single
//! Redis, one shard on a Redis Cluster, whose script calls must keep to one slot) has a
//! queue and one task that empties it: while one call of the send script is out, the sends
//! that arrive meanwhile queue up, and the next call decides them all. So at low rates a
//! send goes out at once, and under load Redis pays its per-call cost once for many.

use futures_channel::oneshot;

use super::scripts::SendArgs;
use super::Cluster;
use crate::error::Error;

/// What the send script answered for one send: a word, then what goes with it.
pub type Answer = Result<Vec<String>, Error>;

struct Queued {
    send: SendArgs,
    answer: oneshot::Sender<Answer>,
}

/// One group's sends waiting for a script call.
pub struct SendQueue {
    tx: async_channel::Sender<Queued>,
    rx: async_channel::Receiver<Queued>,
}

/// Sends a queue holds per send a call may carry, before a sender waits for room.
const QUEUED_PER_CALL: usize = 8;

impl SendQueue {
    pub fn new(per_call: usize) -> SendQueue {
        let (tx, rx) = async_channel::bounded(per_call * QUEUED_PER_CALL);
        SendQueue { tx, rx }
    }

    /// Queues `send`, behind every send queued before it; resolves once it is queued.
    pub async fn queue(&self, send: SendArgs) -> Result<Answering, Error> {
        let (answer, answered) = oneshot::channel();
        self.tx
            .send(Queued { send, answer })
            .await
            .map_err(|_| Error::Unavailable("the cluster's send queue is closed".into()))?;
        Ok(Answering(answered))
    }
}

/// Redis's answer to a queued send, on its way.
pub struct Answering(oneshot::Receiver<Answer>);

impl Answering {
    pub async fn answer(self) -> Answer {
        self.0
            .await
            .map_err(|_| Error::Unavailable("the send was dropped before Redis answered".into()))?
    }
}

impl Cluster {
    /// Empties `queue` for as long as the server runs: each call of the send script takes
    /// everything queued, up to `cluster.sends_per_call`.
    pub(super) async fn send_queued(&self, queue: &SendQueue) {
        let per_call = self.config.sends_per_call;
        let mut batch = Vec::with_capacity(per_call);
        while next_batch(&queue.rx, per_call, &mut batch).await {
            let (sends, answers): (Vec<SendArgs>, Vec<_>) =
                batch.drain(..).map(|q| (q.send, q.answer)).unzip();
            match self.call_send(&sends).await {
                Ok(replies) => {
                    for (answer, reply) in answers.into_iter().zip(replies) {
                        let _ = answer.send(Ok(reply));
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// One script call deciding `sends`; an answer for each, in order.
    async fn call_send(&self, sends: &[SendArgs]) -> Result<Vec<Vec<String>>, Error> {
        let mut conn = self.conn()?;
        let replies: Vec<Vec<String>> = self
            .scripts
            .send(sends, &self.append_spec, &self.dedup_window)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        if replies.len() != sends.len() {
            return Err(Error::Internal(format!(
                "Redis answered {} of {} sends",
                replies.len(),
                sends.len()
            )));
        }
        Ok(replies)
    }
}

/// Waits for the next item of `rx`, then takes what else is queued, up to `max` in all, into
/// the empty `batch`: what one Redis call serves. `false` once `rx` is closed.
pub(super) async fn next_batch<T>(
    rx: &async_channel::Receiver<T>,
    max: usize,
    batch: &mut Vec<T>,
) -> bool {
    let Ok(first) = rx.recv().await else {
        return false;
    };
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    true
}
