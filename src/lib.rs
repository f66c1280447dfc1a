//! chat-engine: a self-hosted chat server for rooms with durable, ordered history.
//!
//! A message flows through the modules in this order (DESIGN.md, "Data flow"):
//!
//! - [`http`] accepts connections: REST for RouteAPI, operations endpoints, and the WebSocket
//!   upgrade, which hands the socket to [`ws`];
//! - [`ws`] runs one connection: reads frames, parses them with [`protocol`], asks the
//!   [`engine`], and writes replies and pushes from the connection's bounded queue;
//! - [`engine`] owns rooms, membership, seq/ts assignment, history and fan-out: an
//!   authority decides each change, one apply path makes it durable, visible and pushed;
//! - [`storage`] makes everything durable in RocksDB through one group-commit writer.
//!
//! In cluster mode (feature `redis`), `cluster` is the engine's authority: Redis decides each
//! change, and every node applies every change from Redis's logs through the engine.
//!
//! [`auth`] checks tokens and API keys, [`config`] holds every setting, and [`error`] holds the
//! errors and their protocol codes. [`run`] wires them together; `main.rs` and the tests share
//! it.

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
pub mod restore;
mod service;
pub mod storage;
mod sync;
mod ws;

use std::future::Future;
use std::sync::Arc;

#[cfg(feature = "redis")]
pub use cluster::reseed;
pub use config::Config;
pub use error::{Error, StartError};

/// Who decides changes: the cluster when `cluster.redis_url` is set (feature `redis`), else
/// this node.
fn authority(
    config: &Config,
    storage: &storage::Storage,
) -> Result<Arc<dyn engine::Authority>, StartError> {
    #[cfg(feature = "redis")]
    if config.cluster.redis_url.is_some() {
        let cluster = cluster::Cluster::new(&config.cluster, storage)?;
        return Ok(Arc::new(Arc::new(cluster)));
    }
    let _ = (config, storage);
    Ok(Arc::new(engine::Local))
}

/// Serves chat-engine on `listener` until `shutdown` completes, then closes every connection
/// with 1001, finishes the writes in flight, and returns.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let storage = Arc::new(storage::Storage::open(&config.storage)?);
    let authority = authority(&config, &storage)?;
    let engine = engine::Engine::open(config, storage, authority)?;
    engine.start_webhooks();
    // The background duties never end; they only run while the server does.
    let keys = engine.clone();
    let background = smol::future::zip(
        smol::future::zip(
            service::feed_watchdog(engine.clone()),
            smol::future::zip(
                smol::future::zip(engine.enforce_retention(), engine.close_idle_rooms()),
                engine.unload_idle_rooms(),
            ),
        ),
        smol::future::zip(engine.authority_duties(), async move {
            keys.auth().refresh_keys().await
        }),
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
