//! Webhooks across nodes. Every node writes every change's events to its own outbox, in the
//! order of the logs, and one node sends: the holder of a lease in Redis, renewed every
//! second. So the endpoint gets each room's events in commit order, whichever nodes the
//! changes came through, and each event once while that node stays. After each batch the
//! endpoint acknowledged, the sender records in Redis how far it got in each event stream;
//! the others drop their copies up to there and keep the rest. When the sender stops
//! renewing (it died, or lost Redis), another node takes the lease within
//! [`LEASE_TTL_MS`] and sends what it kept: some events twice, none lost, each stream still
//! in order.

use std::sync::atomic::Ordering;

use redis::Value;

use super::scripts::{DELIVERED_KEY, SENDER_KEY};
use super::{Cluster, Conn};
use crate::engine::Delivered;
use crate::error::Error;

/// How long the lease lasts unless renewed.
pub const LEASE_TTL_MS: u64 = 5_000;
/// How much sooner than Redis the holder deems its lease gone, for the time a renewal
/// takes and clocks that run at slightly different rates. (A request already out when the
/// lease runs out may still be answered after another node started sending: that costs
/// duplicates, never order, since each node sends every stream in order.)
const LEASE_MARGIN_MS: u64 = 1_000;

impl Cluster {
    /// Takes or renews the sender lease; called every second while Redis is reachable and
    /// this node is ready.
    pub(super) async fn renew_lease(&self, mut conn: Conn) {
        let asked = self.elapsed_ms();
        let held: Result<u8, _> = self
            .scripts
            .lease
            .key(SENDER_KEY)
            .arg(&self.lease_name)
            .arg(LEASE_TTL_MS)
            .invoke_async(&mut conn)
            .await;
        let until = match held {
            Ok(1) => asked + LEASE_TTL_MS - LEASE_MARGIN_MS,
            Ok(_) => 0,
            Err(e) => {
                log::warn!("cluster: cannot renew the webhook sender lease: {e}");
                0
            }
        };
        self.hold_lease_until(until);
    }

    /// Stops sending at once (the node is not ready); another node takes the lease once it
    /// runs out.
    pub(super) fn give_up_lease(&self) {
        self.hold_lease_until(0);
    }

    fn hold_lease_until(&self, until: u64) {
        let was = self.sends_webhooks_until.swap(until, Ordering::AcqRel);
        if (was == 0) != (until == 0) {
            let now = if until == 0 {
                "no longer sends"
            } else {
                "sends"
            };
            log::info!("cluster: this node {now} the webhook events");
        }
    }

    /// Milliseconds since start-up, on a clock that never steps back.
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) fn sends_webhooks(&self) -> bool {
        self.elapsed_ms() < self.sends_webhooks_until.load(Ordering::Acquire)
    }

    pub(super) async fn record_delivered(&self, delivered: &[Delivered]) -> Result<(), Error> {
        if delivered.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        let mut call = self.scripts.delivered.key(DELIVERED_KEY);
        for mark in delivered {
            call.arg(&mark.stream).arg(mark.seq);
        }
        let _: Value = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    pub(super) async fn delivered(&self, streams: &[&str]) -> Result<Vec<Option<u64>>, Error> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        redis::cmd("HMGET")
            .arg(DELIVERED_KEY)
            .arg(streams)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }
}
