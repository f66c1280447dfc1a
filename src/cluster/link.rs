//! The node's connections to Redis, a single server or a Redis Cluster alike: the shared
//! connection that commands go through, which the cluster's supervisor re-opens when it
//! breaks, and dedicated connections for the log readers' blocking reads.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::sync::lock;

/// How long a command may take before the connection counts as broken.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a log read blocks in Redis waiting for new entries.
pub const READ_BLOCK: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection, to a single Redis or to a Redis Cluster (which routes by key).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Opens connections with a given response timeout.
enum Connector {
    Single(redis::Client, AsyncConnectionConfig),
    Cluster(ClusterClient),
}

impl Connector {
    fn new(url: &str, cluster: bool, response_timeout: Duration) -> RedisResult<Connector> {
        Ok(if cluster {
            Connector::Cluster(
                ClusterClient::builder(vec![url])
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout)
                    .retries(2)
                    .build()?,
            )
        } else {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response_timeout));
            Connector::Single(redis::Client::open(url)?, config)
        })
    }

    async fn connect(&self) -> RedisResult<Conn> {
        Ok(match self {
            Connector::Single(client, config) => Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?,
            ),
            Connector::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        })
    }
}

/// The node's way to Redis.
pub struct Link {
    commands: Connector,
    readers: Connector,
    /// The shared command connection; `None` while Redis is unreachable. Cloned out for each
    /// use, never held across an await.
    current: Mutex<Option<Conn>>,
    /// Woken when a command fails, so the supervisor re-opens at once.
    broken: event_listener::Event,
}

impl Link {
    pub fn new(url: &str, cluster: bool) -> RedisResult<Link> {
        Ok(Link {
            commands: Connector::new(url, cluster, COMMAND_TIMEOUT)?,
            readers: Connector::new(url, cluster, READ_BLOCK + COMMAND_TIMEOUT)?,
            current: Mutex::new(None),
            broken: event_listener::Event::new(),
        })
    }

    /// The command connection, if Redis is reachable.
    pub fn current(&self) -> Option<Conn> {
        lock(&self.current).clone()
    }

    /// Opens a command connection; the supervisor calls it until it succeeds, and
    /// [`Link::publish`]es it once it knows the Redis behind it is the cluster's.
    pub async fn open(&self) -> RedisResult<Conn> {
        self.commands.connect().await
    }

    /// Makes `conn` the command connection.
    pub fn publish(&self, conn: Conn) {
        *lock(&self.current) = Some(conn);
    }

    /// A fresh connection for one log reader, whose reads block.
    pub async fn dedicated(&self) -> RedisResult<Conn> {
        self.readers.connect().await
    }

    /// Drops the command connection after a failure and wakes the supervisor.
    pub fn broke(&self) {
        lock(&self.current).take();
        self.broken.notify(usize::MAX);
    }

    /// Resolves when [`Link::broke`] is called, or after `at_most`.
    pub async fn until_broken(&self, at_most: Duration) {
        let listener = self.broken.listen();
        if self.current().is_none() {
            return;
        }
        smol::future::or(listener, async {
            smol::Timer::after(at_most).await;
        })
        .await;
    }
}

/// The wait before reconnect attempt `attempt` (0-based): doubling from 100 ms up to 5 s,
/// half of it random, so nodes that lost Redis together do not all return at once.
pub fn backoff(attempt: u32) -> Duration {
    let full = (100u64 << attempt.min(6)).min(5_000);
    Duration::from_millis(full / 2 + fastrand::u64(0..=full / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter() {
        for attempt in 0..20 {
            let full = (100u64 << attempt.min(6)).min(5_000);
            let wait = backoff(attempt).as_millis() as u64;
            assert!((full / 2..=full).contains(&wait), "{attempt}: {wait}");
        }
        let waits: std::collections::HashSet<_> = (0..50).map(|_| backoff(10)).collect();
        assert!(waits.len() > 1, "jittered");
    }
}
