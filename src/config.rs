//! Typed configuration: every key of PROTOCOL.md's config file, its default, and validation.
//!
//! A key's doc comment says why it exists; `config/chat-engine.toml` repeats them for operators.
//! Unknown keys are refused, so a typo in a key name fails at start-up instead of silently
//! falling back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// HS256 secret used when no config sets one. Anyone can mint tokens with it.
pub const DEV_JWT_SECRET: &str = "chat-engine-dev-secret-change-me";
/// RouteAPI key used when no config sets one. Anyone can call REST with it.
pub const DEV_API_KEY: &str = "chat-engine-dev-api-key";
/// Overrides `auth.jwt_secret`, so the secret can stay out of the config file.
pub const ENV_JWT_SECRET: &str = "CHAT_ENGINE_JWT_SECRET";
/// Overrides `auth.api_keys`: keys separated by commas.
pub const ENV_API_KEYS: &str = "CHAT_ENGINE_API_KEYS";
/// Webhook signing key used when no config sets one. Anyone can forge events with it.
pub const DEV_WEBHOOK_SECRET: &str = "chat-engine-dev-webhook-secret";
/// Overrides `webhooks.secret`.
pub const ENV_WEBHOOK_SECRET: &str = "CHAT_ENGINE_WEBHOOK_SECRET";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub history: HistoryConfig,
    pub rooms: RoomsConfig,
    pub limits: LimitsConfig,
    pub direct: DirectConfig,
    pub cluster: ClusterConfig,
    pub webhooks: WebhooksConfig,
}

/// Events for RouteAPI: where to POST them and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// The endpoint events are POSTed to; unset or empty: no events are kept or sent.
    #[serde(deserialize_with = "empty_is_none")]
    pub url: Option<String>,
    /// HMAC-SHA256 key of the `X-Chat-Engine-Signature` header.
    pub secret: String,
    /// Most events in one request.
    pub batch_size: usize,
    /// A request not answered within this is retried.
    pub timeout_ms: u64,
    /// Most events kept waiting for delivery; beyond it the oldest are dropped (counted).
    pub max_pending: u64,
    /// The event types sent: `message`, `notify`, `read`.
    pub events: Vec<EventType>,
    /// A member who has not acknowledged a message this long after its commit is named in
    /// its `notify` event.
    pub notify_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Message,
    Notify,
    Read,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: None,
            secret: DEV_WEBHOOK_SECRET.into(),
            batch_size: 100,
            timeout_ms: 5_000,
            max_pending: 1_000_000,
            events: vec![EventType::Message, EventType::Notify, EventType::Read],
            notify_delay_ms: 3_000,
        }
    }
}

impl WebhooksConfig {
    /// Whether events of `kind` are kept and sent.
    pub fn sends(&self, kind: EventType) -> bool {
        self.url.is_some() && self.events.contains(&kind)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP and WebSocket listener binds.
    pub listen: String,
    /// How long shutdown waits for connections to take their close frame before dropping them.
    pub shutdown_grace_ms: u64,
    /// Threads that serve connections (HTTP and WebSocket) and run the engine's tasks; 0 is
    /// one per CPU core the process may use.
    pub threads: usize,
}

/// More threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;
/// A script call longer than this would hold Redis up for milliseconds.
const MAX_SENDS_PER_CALL: usize = 1024;

impl ServerConfig {
    /// [`ServerConfig::threads`], with 0 resolved to the cores available to this process.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// RocksDB directory.
    pub path: PathBuf,
    /// Writes waiting for the group-commit writer; senders wait for a slot beyond it.
    pub write_queue: usize,
    /// Most writes one group commit (one WriteBatch, one WAL sync) takes.
    pub max_batch: usize,
    /// Memory RocksDB may use for writes not yet flushed to table files (all column families
    /// together). The largest share of the server's memory under a write load.
    pub write_buffer_bytes: usize,
    /// Memory RocksDB may use for blocks read from its table files (all column families
    /// together, index and filter blocks included): the other large share of its memory.
    pub block_cache_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret that app tokens are signed with. Empty turns HS256 off, which only a
    /// server with public keys (below) may do.
    pub jwt_secret: String,
    /// Public keys (PEM) that app tokens may be signed for instead: RSA (RS256), P-256
    /// (ES256) or Ed25519 (EdDSA), as an identity provider publishes them.
    pub jwt_public_keys: Vec<String>,
    /// A JWKS document whose keys verify tokens too, fetched at start and every
    /// `jwks_refresh_s`; a token naming an unknown `kid` makes one early refetch.
    #[serde(deserialize_with = "empty_is_none")]
    pub jwks_url: Option<String>,
    pub jwks_refresh_s: u64,
    /// Clock skew tolerated on `exp`: a token is accepted, and a connection stays open,
    /// until `exp` plus this.
    pub leeway_s: u64,
    /// When set (not empty), a token's `iss` must be this.
    #[serde(deserialize_with = "empty_is_none")]
    pub issuer: Option<String>,
    /// When set (not empty), a token's `aud` must name this.
    #[serde(deserialize_with = "empty_is_none")]
    pub audience: Option<String>,
    /// Bearer keys RouteAPI may use.
    pub api_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Days after which a route room in which nothing happened (no message, no change, no
    /// member joining or leaving) closes by itself, as a `DELETE` would; 0 never. Fractions
    /// are allowed (0.5 is 12 hours). Direct rooms never close.
    pub close_after_idle_days: f64,
    /// Rooms kept in memory at most; beyond it the least recently used idle ones are
    /// unloaded (they stay on disk and load again on their next use).
    pub max_in_memory: usize,
    /// Seconds after its last use that an idle room is unloaded even under the budget; 0
    /// unloads only over `max_in_memory`.
    pub unload_idle_s: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            close_after_idle_days: 0.0,
            max_in_memory: 10_000,
            unload_idle_s: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Messages a `sync` with no cursor returns when it gives no `limit`.
    pub default_last: usize,
    /// Days history is kept; 0 keeps it forever. Fractions are allowed (0.5 is 12 hours).
    pub retention_days: f64,
    /// Committed messages kept in memory per room, so the common `sync` never reads disk.
    pub cache_per_room: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `text` plus `data` (as JSON) of one message.
    pub max_message_bytes: usize,
    /// One WebSocket frame; a larger one closes the connection with 1009. A `resume` frame
    /// may be larger: see `max_resume_frame_bytes`.
    pub max_frame_bytes: usize,
    /// One REST request body; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Frames waiting to be written to one connection; full closes it with 1013.
    pub outbound_queue: usize,
    /// Bytes of the frames waiting for one connection; over it closes with 1013 as well.
    pub outbound_queue_bytes: usize,
    /// Bad frames in a row before the connection is closed with 1008.
    pub max_bad_frames: u32,
    /// Sends per second per connection (token bucket, bursts of twice this).
    pub send_rate: u32,
    /// Live WebSocket connections one user may hold; one more gets HTTP 429.
    pub max_connections_per_user: usize,
    /// Rooms one `resume` may list; more is `bad_request`.
    pub max_resume_rooms: usize,
    /// How often the server pings each connection.
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is dropped as dead.
    pub idle_timeout_ms: u64,
}

/// What one listed room may take of a `resume` frame: a 128-byte id, its seq and epoch, and
/// room for the spacing a JSON encoder adds.
const RESUME_BYTES_PER_ROOM: usize = 256;

impl LimitsConfig {
    /// The largest `resume` frame: `max_resume_rooms` rooms with the longest ids fit (direct
    /// rooms alone would not fit in `max_frame_bytes`), with `max_frame_bytes` to spare, so
    /// that listing too many rooms is answered `bad_request` rather than closing with 1009.
    pub fn max_resume_frame_bytes(&self) -> usize {
        self.max_resume_rooms
            .saturating_mul(RESUME_BYTES_PER_ROOM)
            .saturating_add(self.max_frame_bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectPolicy {
    /// Only users who share a route room may open a direct room.
    SharedRoom,
    /// Any two users may.
    Any,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectConfig {
    pub policy: DirectPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis for cluster mode (cargo feature `redis`); unset runs a single node.
    pub redis_url: Option<String>,
    /// `redis_url` is one node of a Redis Cluster (the others are discovered from it).
    pub redis_cluster: bool,
    /// Rooms are spread over this many logs (and Redis Cluster slots); every node of a
    /// cluster must use the same number, which the first node records in Redis.
    pub shards: u16,
    /// Entries each shard's log keeps (trimmed approximately): how far behind a node that
    /// was down or cut off may fall and still catch up by itself.
    pub log_max_len: u64,
    /// How long a change waits for this node to apply it from the log before the caller
    /// gets `unavailable`.
    pub apply_timeout_ms: u64,
    /// Message sends one script call decides at most: those that queued up while the
    /// previous call was out go together.
    pub sends_per_call: usize,
    /// Fields the current generation of a room's dedup hash in Redis takes before a new one
    /// starts: Redis keeps only the current and the previous generation of `client_msg_id`s
    /// and change counts, and the nodes' own storage answers for the rest.
    pub dedup_max_fields: u64,
    /// How long a generation stays current (ms); a previous one lives twice this long more,
    /// so a room that goes quiet costs Redis nothing.
    pub dedup_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster: false,
            shards: 16,
            log_max_len: 1_000_000,
            apply_timeout_ms: 5_000,
            sends_per_call: 64,
            dedup_max_fields: 1_000,
            dedup_ttl_ms: 3_600_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            shutdown_grace_ms: 2_000,
            threads: 0,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./data"),
            write_queue: 16_384,
            max_batch: 1_024,
            write_buffer_bytes: 64 << 20,
            block_cache_bytes: 32 << 20,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: DEV_JWT_SECRET.into(),
            jwt_public_keys: Vec::new(),
            jwks_url: None,
            jwks_refresh_s: 300,
            leeway_s: 60,
            issuer: None,
            audience: None,
            api_keys: vec![DEV_API_KEY.into()],
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            default_last: 50,
            retention_days: 0.0,
            cache_per_room: 200,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 16_384,
            max_frame_bytes: 65_536,
            max_body_bytes: 65_536,
            outbound_queue: 1_024,
            outbound_queue_bytes: 16 << 20,
            max_bad_frames: 100,
            send_rate: 20,
            max_connections_per_user: 16,
            max_resume_rooms: 1_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
        }
    }
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            policy: DirectPolicy::SharedRoom,
        }
    }
}

/// Why a config could not be used; printed as the one-line reason before exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The binary prints the source after this message (anyhow's `{:#}`).
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML config file. Validate it once overrides (flags, environment) are applied.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml's message spans several lines (it quotes the source); the reason must be one.
            reason: e.message().replace('\n', " "),
        })?;
        Ok(config)
    }

    /// Takes the secrets from the environment where it sets them ([`ENV_JWT_SECRET`],
    /// [`ENV_API_KEYS`]); `var` looks a variable up.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(secret) = var(ENV_JWT_SECRET) {
            self.auth.jwt_secret = secret;
        }
        if let Some(secret) = var(ENV_WEBHOOK_SECRET) {
            self.webhooks.secret = secret;
        }
        if let Some(keys) = var(ENV_API_KEYS) {
            self.auth.api_keys = keys
                .split(',')
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(String::from)
                .collect();
        }
    }

    /// Checks what serde cannot: addresses, non-zero limits, non-empty secrets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if self.listen_addr().is_none() {
            return invalid(format!(
                "server.listen {:?} is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if self.server.threads > MAX_THREADS {
            return invalid(format!(
                "server.threads {} is more than {MAX_THREADS}",
                self.server.threads
            ));
        }
        let public = !self.auth.jwt_public_keys.is_empty() || self.auth.jwks_url.is_some();
        if self.auth.jwt_secret.is_empty() && !public {
            return invalid(
                "auth.jwt_secret is empty, and no auth.jwt_public_keys or auth.jwks_url \
                 verifies tokens instead"
                    .into(),
            );
        }
        for (i, pem) in self.auth.jwt_public_keys.iter().enumerate() {
            if let Err(why) = crate::auth::public_key(pem) {
                return invalid(format!("auth.jwt_public_keys[{i}]: {why}"));
            }
        }
        if let Some(url) = &self.auth.jwks_url {
            if !is_http_url(url) {
                return invalid(format!(
                    "auth.jwks_url {url:?} is not an http:// or https:// URL"
                ));
            }
            if self.auth.jwks_refresh_s == 0 {
                return invalid("auth.jwks_refresh_s must be at least 1".into());
            }
        }
        if self.auth.api_keys.is_empty() {
            return invalid("auth.api_keys is empty: RouteAPI could not call REST".into());
        }
        if self.auth.api_keys.iter().any(String::is_empty) {
            return invalid("auth.api_keys holds an empty key".into());
        }
        let limits = &self.limits;
        for (name, value) in [
            ("limits.max_message_bytes", limits.max_message_bytes),
            ("limits.max_frame_bytes", limits.max_frame_bytes),
            ("limits.max_body_bytes", limits.max_body_bytes),
            ("limits.outbound_queue", limits.outbound_queue),
            ("limits.outbound_queue_bytes", limits.outbound_queue_bytes),
            ("limits.max_bad_frames", limits.max_bad_frames as usize),
            ("limits.send_rate", limits.send_rate as usize),
            (
                "limits.max_connections_per_user",
                limits.max_connections_per_user,
            ),
            ("limits.max_resume_rooms", limits.max_resume_rooms),
            ("history.default_last", self.history.default_last),
            ("rooms.max_in_memory", self.rooms.max_in_memory),
            ("storage.write_queue", self.storage.write_queue),
            ("storage.max_batch", self.storage.max_batch),
            (
                "storage.write_buffer_bytes",
                self.storage.write_buffer_bytes,
            ),
            ("storage.block_cache_bytes", self.storage.block_cache_bytes),
            ("limits.ping_interval_ms", limits.ping_interval_ms as usize),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        for (name, days) in [
            ("history.retention_days", self.history.retention_days),
            (
                "rooms.close_after_idle_days",
                self.rooms.close_after_idle_days,
            ),
        ] {
            if !(days.is_finite() && days >= 0.0) {
                return invalid(format!(
                    "{name} must be 0 (never) or a positive number of days, not {days}"
                ));
            }
        }
        if limits.idle_timeout_ms <= limits.ping_interval_ms {
            return invalid(
                "limits.idle_timeout_ms must be longer than limits.ping_interval_ms".into(),
            );
        }
        if self.history.default_last > crate::protocol::MAX_SYNC_LIMIT {
            return invalid(format!(
                "history.default_last must be at most {}",
                crate::protocol::MAX_SYNC_LIMIT
            ));
        }
        if self.cluster.redis_url.is_some() && !cfg!(feature = "redis") {
            return invalid(
                "cluster.redis_url is set but this build has no `redis` feature".into(),
            );
        }
        #[cfg(feature = "redis")]
        if let Some(url) = &self.cluster.redis_url {
            if redis::parse_redis_url(url).is_none() {
                return invalid(format!(
                    "cluster.redis_url {url:?} is not a Redis URL like redis://127.0.0.1:6379"
                ));
            }
        }
        if let Some(url) = &self.webhooks.url {
            if !is_http_url(url) {
                return invalid(format!(
                    "webhooks.url {url:?} is not an http:// or https:// URL"
                ));
            }
            let hooks = &self.webhooks;
            if hooks.secret.is_empty() || hooks.batch_size == 0 || hooks.timeout_ms == 0 {
                return invalid(
                    "webhooks.secret must be set, webhooks.batch_size and timeout_ms at least 1"
                        .into(),
                );
            }
        }
        if self.cluster.shards == 0 || self.cluster.log_max_len < 1_000 {
            return invalid(
                "cluster.shards must be at least 1 and cluster.log_max_len at least 1000".into(),
            );
        }
        if self.cluster.dedup_max_fields < 16 || self.cluster.dedup_ttl_ms < 1_000 {
            return invalid(
                "cluster.dedup_max_fields must be at least 16 and cluster.dedup_ttl_ms at least 1000"
                    .into(),
            );
        }
        if !(1..=MAX_SENDS_PER_CALL).contains(&self.cluster.sends_per_call) {
            return invalid(format!(
                "cluster.sends_per_call must be 1 to {MAX_SENDS_PER_CALL}"
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.server.listen.parse().ok()
    }

    /// The built-in development secrets in use, for the start-up warning.
    pub fn development_secrets(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        if self.auth.jwt_secret == DEV_JWT_SECRET {
            found.push("auth.jwt_secret");
        }
        if self.auth.api_keys.iter().any(|k| k == DEV_API_KEY) {
            found.push("auth.api_keys");
        }
        if self.webhooks.url.is_some() && self.webhooks.secret == DEV_WEBHOOK_SECRET {
            found.push("webhooks.secret");
        }
        found
    }
}

/// Whether `url` is one the HTTP client can call (webhooks, JWKS).
fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Reads an optional string where an empty one means unset, as the documented defaults
/// (`url = ""`) write it.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text: Option<String> = Deserialize::deserialize(d)?;
    Ok(text.filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn webhooks_need_an_http_url_a_secret_and_limits() {
        let hooks = |extra: &str| parse(&format!("[webhooks]\nurl = \"http://x/e\"\n{extra}"));
        let config = hooks("events = [\"read\"]").unwrap();
        assert!(config.webhooks.sends(EventType::Read));
        assert!(!config.webhooks.sends(EventType::Message));
        assert!(config.development_secrets().contains(&"webhooks.secret"));
        assert!(
            !Config::default().webhooks.sends(EventType::Message),
            "off without a url"
        );
        let refused = [
            parse("[webhooks]\nurl = \"ftp://x\"\n"),
            hooks("batch_size = 0"),
            hooks("events = [\"shout\"]"),
        ];
        for refusal in refused {
            assert!(refusal.is_err(), "{refusal:?}");
        }
    }

    #[test]
    fn empty_strings_in_the_documented_config_mean_unset() {
        let config = parse(
            "[webhooks]\nurl = \"\"\n[auth]\njwt_public_keys = []\njwks_url = \"\"\n\
             jwks_refresh_s = 300\nissuer = \"\"\naudience = \"\"\n",
        )
        .unwrap();
        assert_eq!(config.webhooks.url, None);
        assert_eq!(config.auth.jwks_url, None);
        assert_eq!((config.auth.issuer, config.auth.audience), (None, None));
        assert!(parse("[auth]\njwks_url = \"file:///keys\"\n").is_err());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080");
        assert_eq!(config.limits.max_message_bytes, 16_384);
        assert_eq!(config.direct.policy, DirectPolicy::SharedRoom);
        assert_eq!(
            config.development_secrets(),
            ["auth.jwt_secret", "auth.api_keys"]
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(parse("[limits]\nmax_frame_bytes = \"big\"").is_err());
        assert!(parse("[direct]\npolicy = \"everyone\"").is_err());
        assert!(parse("[server]\nlisten = \"nowhere\"").is_err());
        assert!(parse("[limits]\noutbound_queue = 0").is_err());
        assert!(parse("[limits]\nmax_frame_byte = 10").is_err());
        assert!(parse("[limits]\nping_interval_ms = 5000\nidle_timeout_ms = 5000").is_err());
        assert!(parse("not toml [").is_err());
        let error = parse("[server]\nthreads = 5000").unwrap_err().to_string();
        assert!(error.contains("server.threads 5000"), "{error}");
        for sends in [0, 1025] {
            let error = parse(&format!("[cluster]\nsends_per_call = {sends}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("cluster.sends_per_call"), "{error}");
        }
        assert!(parse("[cluster]\nsends_per_call = 1024").is_ok());
        for window in ["dedup_max_fields = 15", "dedup_ttl_ms = 999"] {
            let error = parse(&format!("[cluster]\n{window}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("cluster.dedup_"), "{error}");
        }
    }

    #[test]
    fn zero_threads_means_one_per_core() {
        let config = parse("[server]\nthreads = 3").unwrap();
        assert_eq!(config.server.worker_threads(), 3);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(Config::default().server.worker_threads(), cores);
    }

    #[test]
    fn secrets_from_the_environment_override_the_file() {
        let mut config = parse("[auth]\njwt_secret = \"file\"\napi_keys = [\"file-key\"]").unwrap();
        config.apply_env(|name| match name {
            ENV_JWT_SECRET => Some("from-env".into()),
            ENV_API_KEYS => Some(" k1, k2 ,".into()),
            _ => None,
        });
        assert_eq!(config.auth.jwt_secret, "from-env");
        assert_eq!(config.auth.api_keys, ["k1", "k2"]);
        config.apply_env(|_| None);
        assert_eq!(
            config.auth.jwt_secret, "from-env",
            "unset variables change nothing"
        );
        config.apply_env(|name| (name == ENV_API_KEYS).then(|| ",".into()));
        assert!(config.validate().is_err(), "no API key left");
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../config/chat-engine.toml");
        let config = parse(text).unwrap();
        assert!(config.development_secrets().is_empty());
    }
}
