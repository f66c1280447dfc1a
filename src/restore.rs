//! `chat-engine restore --from DIR`: puts a backup in place of a stopped server's data
//! directory, with a new history epoch, so apps drop the history they cached from the data
//! that is being replaced.
//!
//! The backup is copied, never moved or linked (RocksDB appends to some of its files), so it
//! can be restored again. The data directory it replaces is kept beside it, renamed, for the
//! operator to delete. The copy is made and checked beside the data directory before the
//! data directory is touched, so a refused restore leaves it as it was.

use std::path::{Path, PathBuf};

use crate::config::{Config, StorageConfig};
use crate::storage::Storage;

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The data directory's new history epoch.
    pub epoch: String,
    /// Where the data directory that was replaced went, if there was one.
    pub replaced: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} is not a chat-engine data directory or backup (it has no CURRENT file)")]
    NotData(PathBuf),
    #[error("{0} is the data directory itself; restore from a backup elsewhere")]
    Same(PathBuf),
    #[error("{0} is in use by a running server; stop it first")]
    InUse(PathBuf),
    #[error("cannot resolve {path}: {error}")]
    Path {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the backup in {from} cannot be opened: {reason}")]
    Backup { from: PathBuf, reason: String },
    #[error("cannot {what}: {error}")]
    Io { what: String, error: std::io::Error },
}

/// Replaces `config.storage.path` with a copy of the backup in `from`.
pub fn restore(config: &Config, from: &Path) -> Result<Restored, RestoreError> {
    let absolute = |path: &Path| {
        std::path::absolute(path).map_err(|error| RestoreError::Path {
            path: path.to_owned(),
            error,
        })
    };
    let (from, data) = (absolute(from)?, absolute(&config.storage.path)?);
    if from == data {
        return Err(RestoreError::Same(data));
    }
    if !is_data_directory(&from) {
        return Err(RestoreError::NotData(from));
    }
    let staging = sibling(&data, "restoring");
    let io = |what: String| move |error| RestoreError::Io { what, error };
    if staging.exists() {
        // What a restore that was cut off left behind.
        std::fs::remove_dir_all(&staging).map_err(io(format!("remove {}", staging.display())))?;
    }
    copy_dir(&from, &staging)?;
    let epoch = match new_epoch(config, &staging) {
        Ok(epoch) => epoch,
        Err(reason) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(RestoreError::Backup { from, reason });
        }
    };
    let exists = data.exists();
    if exists && in_use(&config.storage, &data) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(RestoreError::InUse(data));
    }
    let replaced = if exists {
        let stamp = crate::protocol::now_ms();
        let aside = (0..)
            .map(|n| sibling(&data, &format!("replaced-{stamp}-{n}")))
            .find(|aside| !aside.exists())
            .unwrap_or_else(|| sibling(&data, "replaced"));
        std::fs::rename(&data, &aside).map_err(io(format!("move {} aside", data.display())))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&staging, &data).map_err(io(format!(
        "move {} to {}",
        staging.display(),
        data.display()
    )))?;
    Ok(Restored { epoch, replaced })
}

fn is_data_directory(dir: &Path) -> bool {
    dir.join("CURRENT").is_file()
}

/// Whether a server holds `data` (RocksDB's lock on it). A directory that is not a
/// database, or a damaged one, is not in use: restoring is how it gets replaced.
fn in_use(storage: &StorageConfig, data: &Path) -> bool {
    if !is_data_directory(data) {
        return false;
    }
    let config = StorageConfig {
        path: data.to_owned(),
        ..storage.clone()
    };
    match Storage::open(&config) {
        Ok(_) => false,
        Err(e) => e.to_string().contains("lock"),
    }
}

/// `data` with `.suffix` added to its name, beside it.
fn sibling(data: &Path, suffix: &str) -> PathBuf {
    let name = data
        .file_name()
        .map_or_else(|| "data".into(), |name| name.to_string_lossy().into_owned());
    data.with_file_name(format!("{name}.{suffix}"))
}

/// Opens the copy (which brings its schema up to date) and gives it a new epoch.
fn new_epoch(config: &Config, staging: &Path) -> Result<String, String> {
    let storage_config = StorageConfig {
        path: staging.to_owned(),
        ..config.storage.clone()
    };
    let storage = Storage::open(&storage_config).map_err(|e| e.to_string())?;
    storage.renew_epoch().map_err(|e| e.to_string())
}

/// Copies the files of `from` (a RocksDB directory: flat) into the new directory `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<(), RestoreError> {
    let io = |what: String| move |error| RestoreError::Io { what, error };
    std::fs::create_dir_all(to).map_err(io(format!("create {}", to.display())))?;
    let entries = std::fs::read_dir(from).map_err(io(format!("read {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("read {}", from.display())))?;
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(io(format!("read {}", entry.path().display())))?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .map_err(io(format!("copy {}", entry.path().display())))?;
        }
    }
    Ok(())
}
