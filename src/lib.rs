//! chat-engine: a self-hosted chat server for rooms with durable, ordered history.
//!
//! A message flows through the modules in this order (DESIGN.md, "Data flow"):
//!
//! - [`http`] accepts connections: REST for RouteAPI, operations endpoints, and the WebSocket
//!   upgrade, which hands the socket to [`ws`];
//! - [`ws`] runs one connection: reads frames, parses them with [`protocol`], asks the
//!   [`engine`], and writes replies and pushes from the connection's bounded queue;
//! - [`engine`] owns rooms, membership, seq/ts assignment and fan-out to connections;
//! - [`storage`] makes everything durable in RocksDB through one group-commit writer.
//!
//! In cluster mode (feature `redis`), `cluster` lets Redis decide each change and applies
//! every node's changes from Redis's logs through the engine.
//!
//! [`auth`] checks tokens and API keys, [`config`] holds every setting, and [`error`] maps
//! failures to protocol codes. [`run`] wires them together; `main.rs` and the tests share it.

pub mod auth;
pub mod backup;
#[cfg(feature = "redis")]
mod cluster;
pub mod config;
pub mod engine;
pub mod error;
mod http;
pub mod metrics;
pub mod protocol;
mod service;
pub mod storage;
mod ws;

use std::future::Future;

pub use config::Config;
pub use error::Error;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Serves chat-engine on `listener` until `shutdown` completes, then closes every connection
/// with 1001, finishes the writes in flight, and returns.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let engine = engine::Engine::open(config)?;
    // The background duties never end; they only run while the server does.
    let background = smol::future::zip(
        smol::future::zip(
            service::feed_watchdog(engine.clone()),
            engine.enforce_retention(),
        ),
        engine.cluster_duties(),
    );
    let served = smol::future::or(http::serve(listener, engine.clone()), async {
        background.await;
        Ok(())
    });
    service::ready();
    let outcome = smol::future::or(async { Some(served.await) }, async {
        shutdown.await;
        None
    })
    .await;
    service::stopping();
    engine.shutdown().await;
    match outcome {
        Some(result) => result.map_err(StartError::from),
        None => Ok(()),
    }
}
