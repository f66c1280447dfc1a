//! Prometheus metrics: every counter, gauge and histogram the server exports at `/metrics`,
//! in one registry, behind one handle the other modules update.
//!
//! Updates are atomic adds (histograms take a short mutex), so they are cheap enough for the
//! hot path; nothing here allocates per message except the first use of a new label set.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of [`Metrics::encode_classic`]'s output.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route pattern, never the raw path, so ids do not explode the series count.
    pub route: &'static str,
    pub status: u16,
}

/// Every metric, registered once. Share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// WebSocket frames read from clients, of any kind.
    pub frames_in: Counter,
    /// WebSocket text frames written to clients (replies and pushes).
    pub frames_out: Counter,
    /// Messages committed to storage.
    pub messages_stored: Counter,
    /// Pushes queued to a connection (one per recipient connection).
    pub deliveries: Counter,
    /// Close frames the server sent, by close code (1013 is a slow consumer).
    pub closes: Family<CodeLabel, Counter>,
    /// `error` frames sent and upgrades refused, by protocol error code (`rate_limited`,
    /// `too_large`, `bad_request`, ...).
    pub errors: Family<CodeLabel, Counter>,
    /// Writes (key changes) in one group commit.
    pub commit_batch_writes: Histogram,
    /// Time one group commit took, WAL sync included.
    pub commit_seconds: Histogram,
    /// Group commits that failed (disk full, I/O error).
    pub commit_failures: Counter,
    /// Messages deleted because they were older than `history.retention_days`.
    pub retention_deleted: Counter,
    /// REST and operations requests, by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Rooms held in memory (`rooms.max_in_memory` bounds it).
    pub rooms_in_memory: Gauge,
    /// Rooms loaded from disk on their first use.
    pub room_loads: Counter,
    /// Rooms unloaded from memory, idle or over the budget.
    pub room_unloads: Counter,
    /// Time loading one room from disk took.
    pub room_load_seconds: Histogram,
    /// Webhook events in the outbox, not delivered yet.
    pub webhook_pending: Gauge,
    /// Webhook events delivered (acknowledged with a 2xx).
    pub webhook_delivered: Counter,
    /// Webhook requests that failed (non-2xx, timeout, no connection); each is retried.
    pub webhook_failures: Counter,
    /// Webhook events dropped over `webhooks.max_pending`.
    pub webhook_dropped: Counter,
    /// How old the oldest event of a delivered batch was.
    pub webhook_lag_seconds: Histogram,
    /// Fetches of `auth.jwks_url` that succeeded, and those that failed (the keys it had
    /// stay in use).
    pub jwks_fetches: Counter,
    pub jwks_fetch_failures: Counter,
    /// Keys the last good JWKS fetch gave.
    pub jwks_keys: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut metrics = Metrics {
            connections: Gauge::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            messages_stored: Counter::default(),
            deliveries: Counter::default(),
            closes: Family::default(),
            errors: Family::default(),
            commit_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 50 µs to about 1.6 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            commit_failures: Counter::default(),
            retention_deleted: Counter::default(),
            http_requests: Family::default(),
            rooms_in_memory: Gauge::default(),
            room_loads: Counter::default(),
            room_unloads: Counter::default(),
            // 10 µs to about 0.3 s.
            room_load_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
            webhook_pending: Gauge::default(),
            webhook_delivered: Counter::default(),
            webhook_failures: Counter::default(),
            webhook_dropped: Counter::default(),
            // 1 ms to about 9 hours.
            webhook_lag_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 25)),
            jwks_fetches: Counter::default(),
            jwks_fetch_failures: Counter::default(),
            jwks_keys: Gauge::default(),
            registry: Registry::with_prefix("chat_engine"),
        };
        let m = &mut metrics;
        let r = &mut m.registry;
        r.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "ws_frames_received",
            "WebSocket frames read from clients",
            m.frames_in.clone(),
        );
        r.register(
            "ws_frames_sent",
            "WebSocket text frames written to clients",
            m.frames_out.clone(),
        );
        r.register(
            "messages_stored",
            "Messages committed to storage",
            m.messages_stored.clone(),
        );
        r.register(
            "deliveries",
            "Pushes queued to connections, one per recipient connection",
            m.deliveries.clone(),
        );
        r.register(
            "ws_closes",
            "Close frames sent by the server, by close code (1013: slow consumer)",
            m.closes.clone(),
        );
        r.register(
            "errors",
            "Error frames sent and upgrades refused, by protocol error code",
            m.errors.clone(),
        );
        r.register(
            "commit_batch_writes",
            "Key writes per group commit",
            m.commit_batch_writes.clone(),
        );
        r.register_with_unit(
            "commit",
            "Group commit latency, WAL sync included",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register(
            "commit_failures",
            "Group commits that failed",
            m.commit_failures.clone(),
        );
        r.register(
            "retention_deleted_messages",
            "Messages deleted by history.retention_days",
            m.retention_deleted.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            m.http_requests.clone(),
        );
        r.register(
            "rooms_in_memory",
            "Rooms held in memory",
            m.rooms_in_memory.clone(),
        );
        r.register(
            "room_loads",
            "Rooms loaded from disk on first use",
            m.room_loads.clone(),
        );
        r.register(
            "room_unloads",
            "Rooms unloaded from memory (idle, or over rooms.max_in_memory)",
            m.room_unloads.clone(),
        );
        r.register(
            "webhook_events_pending",
            "Webhook events in the outbox, not delivered yet",
            m.webhook_pending.clone(),
        );
        r.register(
            "webhook_events_delivered",
            "Webhook events delivered (acknowledged with a 2xx)",
            m.webhook_delivered.clone(),
        );
        r.register(
            "webhook_request_failures",
            "Webhook requests that failed and will be retried",
            m.webhook_failures.clone(),
        );
        r.register(
            "jwks_fetches",
            "Fetches of auth.jwks_url that succeeded",
            m.jwks_fetches.clone(),
        );
        r.register(
            "jwks_fetch_failures",
            "Fetches of auth.jwks_url that failed (the keys held stay in use)",
            m.jwks_fetch_failures.clone(),
        );
        r.register(
            "jwks_keys",
            "Keys the last good fetch of auth.jwks_url gave",
            m.jwks_keys.clone(),
        );
        r.register(
            "webhook_events_dropped",
            "Webhook events dropped over webhooks.max_pending",
            m.webhook_dropped.clone(),
        );
        r.register_with_unit(
            "webhook_delivery_lag",
            "Age of the oldest event of each delivered batch",
            Unit::Seconds,
            m.webhook_lag_seconds.clone(),
        );
        r.register_with_unit(
            "room_load",
            "Time loading a room from disk took",
            Unit::Seconds,
            m.room_load_seconds.clone(),
        );
        Arc::new(metrics)
    }

    /// Counts an error sent to a client under its protocol code.
    pub fn count_error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }

    /// Counts a close frame the server sent.
    pub fn count_close(&self, code: u16) {
        self.closes
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// The Prometheus (OpenMetrics) text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            log::error!("cannot encode metrics: {e}");
        }
        text
    }

    /// The same in the classic Prometheus text format (0.0.4), for scrapers and tools that
    /// do not ask for OpenMetrics: a counter's family is named with its `_total` (OpenMetrics
    /// names it without), and the `# UNIT` and `# EOF` lines, which it lacks, are left out.
    pub fn encode_classic(&self) -> String {
        let open = self.encode();
        let mut text = String::with_capacity(open.len());
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.strip_suffix(" counter"))
            .collect();
        for line in open.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let described = ["# HELP ", "# TYPE "]
                .into_iter()
                .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
            match described {
                Some((prefix, rest)) => {
                    let name = rest.split(' ').next().unwrap_or_default();
                    text.push_str(prefix);
                    text.push_str(name);
                    if counters.contains(name) {
                        text.push_str("_total");
                    }
                    text.push_str(&rest[name.len()..]);
                }
                None => text.push_str(line),
            }
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.messages_stored.inc();
        metrics.count_close(1013);
        metrics.count_error("rate_limited");
        metrics.commit_seconds.observe(0.0002);
        let text = metrics.encode();
        for line in [
            "chat_engine_messages_stored_total 1",
            "chat_engine_ws_closes_total{code=\"1013\"} 1",
            "chat_engine_errors_total{code=\"rate_limited\"} 1",
            "chat_engine_commit_seconds_count 1",
            "chat_engine_connections 0",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_classic_format_names_counters_with_total_and_has_no_eof() {
        let metrics = Metrics::new();
        metrics.messages_stored.inc();
        metrics.commit_seconds.observe(0.0002);
        let text = metrics.encode_classic();
        for line in [
            "# TYPE chat_engine_messages_stored_total counter",
            "chat_engine_messages_stored_total 1",
            "# TYPE chat_engine_commit_seconds histogram",
            "chat_engine_commit_seconds_count 1",
            "# TYPE chat_engine_connections gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text
            .lines()
            .any(|l| l.starts_with("# HELP chat_engine_messages_stored_total ")));
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every sample belongs to a family of that name (histograms' own suffixes aside).
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| families.contains(base))
                .unwrap_or(name);
            assert!(families.contains(&family), "{sample} has no family");
        }
    }
}
