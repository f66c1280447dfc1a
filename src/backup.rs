//! `chat-engine backup --to DIR`: asks the running server for an online, consistent copy of
//! its data directory (a RocksDB checkpoint), or, when no server answers, makes the copy
//! from the stopped data directory itself. Either way DIR is a complete data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::storage::Storage;

/// How the copy was made.
#[derive(Debug, PartialEq, Eq)]
pub enum Made {
    /// By the server listening at this address, while it kept serving.
    Online(String),
    /// From the data directory, with no server running.
    Offline,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists; a backup goes into a new directory")]
    Exists(PathBuf),
    #[error("cannot resolve {path}: {source}")]
    Path {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server at {server} answered {status}: {body}")]
    Refused {
        server: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("no server answered at {server} and {data} is not a data directory")]
    NoData { server: String, data: PathBuf },
    #[error("offline backup of {data} failed: {reason}")]
    Offline { data: PathBuf, reason: String },
}

/// Copies the data to `to`, through the server at `server` (default: `server.listen`) if one
/// answers there, else straight from `storage.path`.
pub fn backup(config: &Config, server: Option<&str>, to: &Path) -> Result<Made, BackupError> {
    let to = std::path::absolute(to).map_err(|source| BackupError::Path {
        path: to.to_owned(),
        source,
    })?;
    if to.exists() {
        return Err(BackupError::Exists(to));
    }
    let server = server.map_or_else(|| reachable_address(config), str::to_owned);
    match ask_server(config, &server, &to)? {
        true => Ok(Made::Online(server)),
        false => copy_stopped(config, &server, &to).map(|()| Made::Offline),
    }
}

/// `server.listen` as a client reaches it: a wildcard address means this machine.
fn reachable_address(config: &Config) -> String {
    match config.listen_addr() {
        Some(addr) if addr.ip().is_unspecified() => {
            let loopback = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port());
            loopback.to_string()
        }
        _ => config.server.listen.clone(),
    }
}

/// Asks the server for the copy. `Ok(false)` when nothing listens there.
fn ask_server(config: &Config, server: &str, to: &Path) -> Result<bool, BackupError> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A checkpoint of a large database copies files if `to` is on another disk.
            .timeout_global(Some(Duration::from_secs(3600)))
            .build(),
    );
    let key = config.auth.api_keys.first().map_or("", String::as_str);
    let sent = agent
        .post(format!("http://{server}/v1/admin/backup"))
        .header("Authorization", format!("Bearer {key}"))
        .send_json(serde_json::json!({ "to": to }));
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            if status == 201 {
                return Ok(true);
            }
            let body = response.body_mut().read_to_string().unwrap_or_default();
            Err(BackupError::Refused {
                server: server.to_owned(),
                status,
                body,
            })
        }
        Err(ureq::Error::ConnectionFailed) => Ok(false),
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(false),
        Err(e) => Err(BackupError::Unreachable {
            server: server.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Checkpoints the data directory of a stopped server.
fn copy_stopped(config: &Config, server: &str, to: &Path) -> Result<(), BackupError> {
    let data = &config.storage.path;
    // Opening creates a database where there is none; a typo must not back up nothing.
    if !data.join("CURRENT").is_file() {
        return Err(BackupError::NoData {
            server: server.to_owned(),
            data: data.clone(),
        });
    }
    let offline = |reason: String| BackupError::Offline {
        data: data.clone(),
        reason,
    };
    let storage = Storage::open(&config.storage).map_err(|e| offline(e.to_string()))?;
    storage.checkpoint(to).map_err(|e| offline(e.to_string()))
}
