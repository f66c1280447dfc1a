//! The webhook sender: one thread that delivers the outbox to `webhooks.url`, oldest first
//! (so in commit order, per room and overall), in batches of at most `webhooks.batch_size`,
//! each signed with HMAC-SHA256 of its body. Any 2xx acknowledges the batch, which is then
//! deleted; anything else, or no answer within `webhooks.timeout_ms`, is retried with
//! exponential backoff and jitter (100 ms doubling, capped at 30 s).
//!
//! It runs beside the chat, never in its way: the send path only adds the events to its
//! batch, and a dead endpoint costs the outbox space, bounded by `webhooks.max_pending`
//! (beyond it the oldest events are dropped and counted).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::events::{Event, Subscriber};
use super::outbox::stream_of;
use super::Delivered;
use super::Engine;
use crate::error::Error;
use crate::protocol::{now_ms, RoomId, RoomsPage, UserId};
use crate::storage::Batch;
use crate::sync::lock;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Chat-Engine-Signature";

/// Longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Wakes the sender when a commit may have added events, and tells it to stop.
#[derive(Default)]
pub struct Signal {
    woken: Mutex<bool>,
    wake: Condvar,
    stopping: AtomicBool,
    /// The sender's thread, joined at shutdown.
    pub thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Signal {
    fn notify(&self) {
        *lock(&self.woken) = true;
        self.wake.notify_one();
    }

    /// Waits until woken or `timeout` passed.
    fn wait(&self, timeout: Duration) {
        self.wait_while(timeout, |woken| !woken);
    }

    /// Waits until told to stop or `timeout` passed: a retry's backoff, which new events do
    /// not cut short.
    fn pause(&self, timeout: Duration) {
        self.wait_while(timeout, |_| !self.stopping());
    }

    fn wait_while(&self, timeout: Duration, waiting: impl Fn(bool) -> bool) {
        let woken = lock(&self.woken);
        let (mut woken, _) = self
            .wake
            .wait_timeout_while(woken, timeout, |woken| waiting(*woken))
            .unwrap_or_else(|e| e.into_inner());
        *woken = false;
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.notify();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl Subscriber for Signal {
    fn publish(&self, _events: &[Event]) {
        self.notify();
    }
}

impl Engine {
    /// Delivers the outbox until [`Signal::stop`]; runs on its own thread. While another
    /// node sends ([`super::Authority::sends_webhooks`]), it drops instead the events that
    /// node's endpoint acknowledged, and keeps the others for when it sends itself.
    pub fn deliver_webhooks(&self, signal: Arc<Signal>) {
        let config = &self.inner.config.webhooks;
        let Some(url) = config.url.clone() else {
            return;
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                // A redirect is not an acknowledgement: followed, a POST becomes a GET
                // without the body, whose 2xx would acknowledge events never delivered.
                .max_redirects(0)
                .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
                .build(),
        );
        let mut failures: u32 = 0;
        // The number the oldest undelivered event has at least.
        let mut cursor = 0;
        // How far this node got in each stream, not yet told to the other nodes.
        let mut untold = BTreeMap::new();
        while !signal.stopping() {
            if !self.inner.authority.sends_webhooks() {
                match self.drop_delivered_elsewhere(&mut cursor) {
                    Ok(true) => {}
                    Ok(false) => signal.pause(Duration::from_millis(200)),
                    Err(reason) => {
                        log::debug!("webhooks: cannot learn what was delivered: {reason}");
                        signal.pause(Duration::from_secs(1));
                    }
                }
                continue;
            }
            match self.deliver_once(&agent, &url, &mut cursor, &mut untold) {
                Ok(true) => failures = 0,
                // Pending notifies fall due without a commit to wake the sender.
                Ok(false) => signal.wait(Duration::from_millis(100)),
                Err(reason) => {
                    self.inner.metrics.webhook_failures.inc();
                    log::warn!("webhooks: delivery to {url} failed (will retry): {reason}");
                    signal.pause(backoff(failures));
                    failures = failures.saturating_add(1);
                }
            }
        }
    }

    /// Sends the oldest batch, from `cursor` on, and moves `cursor` past it. `Ok(false)`
    /// when the outbox is empty.
    fn deliver_once(
        &self,
        agent: &ureq::Agent,
        url: &str,
        cursor: &mut u64,
        untold: &mut BTreeMap<String, u64>,
    ) -> Result<bool, String> {
        let config = &self.inner.config.webhooks;
        let storage = &self.inner.storage;
        self.tend_outbox(cursor).map_err(|e| e.to_string())?;
        let events = storage
            .events(*cursor, config.batch_size)
            .map_err(|e| e.to_string())?;
        let Some(&(last, _)) = events.last() else {
            self.inner.metrics.webhook_pending.set(0);
            return Ok(false);
        };
        let mut body = br#"{"events":["#.to_vec();
        let mut sent = 0;
        for (_, json) in &events {
            let Some(event) = self.as_sent(json).map_err(|e| e.to_string())? else {
                continue;
            };
            if sent > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&event);
            sent += 1;
        }
        body.extend_from_slice(b"]}");
        // The lease may have run out while the batch was read.
        if !self.inner.authority.sends_webhooks() {
            return Ok(false);
        }
        if sent > 0 {
            let signature = sign(&config.secret, &body);
            let response = agent
                .post(url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, &format!("sha256={signature}"))
                .send(&body[..])
                .map_err(|e| e.to_string())?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("the endpoint answered {status}"));
            }
        }
        let mut done = Batch::new();
        done.events_delivered(events.iter().map(|(number, _)| *number));
        storage
            .write(done.writes(), false)
            .map_err(|e| e.to_string())?;
        *cursor = last + 1;
        for (stream, seq) in events.iter().filter_map(|(_, json)| stream_of(json)) {
            let told = untold.entry(stream.to_owned()).or_default();
            *told = (*told).max(seq);
        }
        self.tell_delivered(untold);
        let metrics = &self.inner.metrics;
        metrics.webhook_delivered.inc_by(sent);
        let oldest = events.iter().find_map(|(_, json)| {
            let sent: Stamped = serde_json::from_slice(json).ok()?;
            Some(sent.ts)
        });
        if let Some(ts) = oldest {
            let lag = now_ms().saturating_sub(ts);
            metrics.webhook_lag_seconds.observe(lag as f64 / 1000.0);
        }
        Ok(true)
    }

    /// Tells the other nodes how far the endpoint acknowledged each stream, so they drop
    /// their copies; what cannot be told now is told after the next batch. Untold, those
    /// copies stay, and would only be sent again if this node stopped sending.
    fn tell_delivered(&self, untold: &mut BTreeMap<String, u64>) {
        let delivered: Vec<Delivered> = untold
            .iter()
            .map(|(stream, &seq)| Delivered {
                stream: stream.clone(),
                seq,
            })
            .collect();
        match smol::block_on(self.inner.authority.webhooks_delivered(&delivered)) {
            Ok(()) => untold.clear(),
            Err(e) => log::debug!("webhooks: cannot tell the other nodes what was sent: {e}"),
        }
    }

    /// For a node that does not send: drops the events from `cursor` on that the sending
    /// node's endpoint acknowledged. `Ok(true)` when it dropped any.
    fn drop_delivered_elsewhere(&self, cursor: &mut u64) -> Result<bool, String> {
        let storage = &self.inner.storage;
        self.tend_outbox(cursor).map_err(|e| e.to_string())?;
        // More than one batch: the sender's batches interleave streams in its own order.
        let window = self.inner.config.webhooks.batch_size.saturating_mul(10);
        let events = storage.events(*cursor, window).map_err(|e| e.to_string())?;
        let positions: Vec<Option<(&str, u64)>> =
            events.iter().map(|(_, json)| stream_of(json)).collect();
        let mut streams: Vec<&str> = positions.iter().flatten().map(|(s, _)| *s).collect();
        streams.sort_unstable();
        streams.dedup();
        let marks = smol::block_on(self.inner.authority.webhooks_delivered_elsewhere(&streams))
            .map_err(|e| e.to_string())?;
        let delivered: Vec<bool> = positions
            .iter()
            .map(|position| {
                let Some((stream, seq)) = position else {
                    return false;
                };
                let at = streams.binary_search(stream).ok();
                at.and_then(|i| marks.get(i).copied().flatten())
                    .is_some_and(|mark| mark >= *seq)
            })
            .collect();
        let numbers = events.iter().map(|(number, _)| *number);
        let dropped: Vec<u64> = numbers
            .clone()
            .zip(&delivered)
            .filter_map(|(number, &delivered)| delivered.then_some(number))
            .collect();
        let Some(&last_dropped) = dropped.last() else {
            return Ok(false);
        };
        // The cursor moves past the leading run of dropped events only.
        let kept = numbers.zip(&delivered).find(|(_, &delivered)| !delivered);
        *cursor = kept.map_or(last_dropped + 1, |(number, _)| number);
        let mut done = Batch::new();
        done.events_delivered(dropped.iter().copied());
        storage
            .write(done.writes(), false)
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// An event as sent, or `None` for the record of a `notify` that had nobody left to
    /// tell (kept in order so that every node learns it was dealt with). `read` and
    /// `notify` events get the users' total unread counts now; the others go as they were
    /// stored, byte for byte.
    fn as_sent(&self, json: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let filled = [&br#"{"id":"read/"#[..], &br#"{"id":"notify/"#[..]];
        if !filled.iter().any(|prefix| json.starts_with(prefix)) {
            return Ok(Some(json.to_vec()));
        }
        let mut event: Value = serde_json::from_slice(json)
            .map_err(|e| Error::Internal(format!("an outbox event is not JSON: {e}")))?;
        if event.get("silent").is_some() {
            return Ok(None);
        }
        if event["type"] == "read" {
            event["unread"] = self.total_unread(&event["user_id"])?.into();
        }
        if let Some(users) = event.get_mut("users").and_then(Value::as_array_mut) {
            for user in users {
                user["unread"] = self.total_unread(&user["user_id"])?.into();
            }
        }
        Ok(Some(event.to_string().into_bytes()))
    }

    /// What every pass over the outbox does first, sending or not: the notifies that fell
    /// due go in, and the oldest events over `webhooks.max_pending` go out.
    fn tend_outbox(&self, cursor: &mut u64) -> Result<(), Error> {
        self.resolve_notifies()?;
        self.drop_over_max_pending(cursor)
    }

    /// Turns the pending notifies that are due into `notify` events, naming the members who
    /// are still members and whose apps have not acknowledged the message (`received` or
    /// `read`); one with nobody left to tell leaves a silent record, never sent. Each is
    /// resolved in one write: the event in, the pending notify out.
    fn resolve_notifies(&self) -> Result<(), Error> {
        let storage = &self.inner.storage;
        for (key, json) in storage.due_notifies(now_ms(), 100)? {
            let pending: Value = serde_json::from_slice(&json)
                .map_err(|e| Error::Internal(format!("a pending notify is not JSON: {e}")))?;
            let seq = pending["seq"].as_u64().unwrap_or_default();
            let users = pending["users"].as_array().cloned().unwrap_or_default();
            let users: Vec<UserId> = users
                .iter()
                .filter_map(|u| UserId::parse(u.as_str().unwrap_or_default()).ok())
                .collect();
            let room_id = RoomId::parse(pending["room_id"].as_str().unwrap_or_default())?;
            let room = self.room_now(&room_id)?;
            let to_tell: Vec<Value> = match room {
                Some(room) => {
                    let state = room.state();
                    let untold =
                        |user: &&UserId| state.is_member(user) && !state.acknowledged(user, seq);
                    users
                        .iter()
                        .filter(untold)
                        .map(|user| json!({ "user_id": user }))
                        .collect()
                }
                // Closed meanwhile: its members left, nobody to tell.
                None => Vec::new(),
            };
            let id = self.event_id("notify", format_args!("{room_id}/{seq}"));
            let event = if to_tell.is_empty() {
                json!({"id": id, "silent": true})
            } else {
                json!({
                    "id": id,
                    "type": "notify",
                    "ts": now_ms(),
                    "room_id": room_id,
                    "message": pending["message"],
                    "users": to_tell,
                })
            };
            let mut batch = Batch::new();
            batch.event(event.to_string().into_bytes());
            batch.notify_resolved(key);
            storage.write(batch.writes(), true)?;
        }
        Ok(())
    }

    /// Drops the oldest events beyond `webhooks.max_pending`, counting them.
    fn drop_over_max_pending(&self, cursor: &mut u64) -> Result<(), Error> {
        let (pending, oldest) = self.inner.storage.events_pending(*cursor)?;
        let max = self.inner.config.webhooks.max_pending;
        self.inner.metrics.webhook_pending.set(pending as i64);
        if pending <= max {
            return Ok(());
        }
        let over = pending - max;
        let mut dropped = Batch::new();
        dropped.events_dropped_through(oldest + over - 1);
        self.inner.storage.write(dropped.writes(), false)?;
        *cursor = oldest + over;
        self.inner.metrics.webhook_dropped.inc_by(over);
        log::warn!("webhooks: {over} events dropped, over webhooks.max_pending ({max})");
        Ok(())
    }

    /// `user`'s unread count over all their rooms, for `read` events.
    fn total_unread(&self, user: &Value) -> Result<u64, Error> {
        let user = UserId::parse(user.as_str().unwrap_or_default())?;
        let rooms = self.rooms_of_blocking(&user, &RoomsPage::default())?;
        Ok(rooms.rooms.iter().filter_map(|room| room.unread).sum())
    }
}

/// The one field of an event the sender reads itself.
#[derive(serde::Deserialize)]
struct Stamped {
    ts: u64,
}

/// Hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The wait before retry `failures + 1`: 100 ms doubling up to 30 s, the upper half of it
/// random so that many servers do not retry in step.
fn backoff(failures: u32) -> Duration {
    let full = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(16))
        .min(MAX_BACKOFF);
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        let signature = sign("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            signature,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds_with_jitter() {
        assert!((50..=100).contains(&backoff(0).as_millis()));
        assert!((400..=800).contains(&backoff(3).as_millis()));
        assert!((15_000..=30_000).contains(&backoff(12).as_millis()));
        assert!(backoff(u32::MAX) <= MAX_BACKOFF);
    }
}
