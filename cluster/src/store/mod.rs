//! Store backends.

mod lock;
mod segment_log;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

use cadre_actors::config::{StoreConfig, StoreKind};
use cadre_actors::controller::{CommitLog, StoreLog};
use cadre_actors::store::{Store, StoreError};

pub use lock::DataDirLock;
pub use segment_log::{LOG_DIR, SEGMENT_BYTES, SegmentLog};
pub use sqlite::{MAIN_FILE, SqliteStore};

/// A commit log kept in SQLite by earlier versions; [`open_embedded`] moves what it holds.
const LEGACY_LOG_FILE: &str = "log.db";

/// What the controller keeps the event log in.
pub struct Storage {
    /// Materialized events, metadata, idempotency records, the exec index.
    pub store: Arc<dyn Store>,
    /// Where commits become durable.
    pub log: Arc<dyn CommitLog>,
}

/// Where a node's event log is.
pub enum LogHome {
    /// In this node's data dir: it is the controller.
    Local(Storage),
    /// At the cluster's controller node; this node's data dir is held by the lock.
    Cluster(Arc<DataDirLock>),
}

/// The storage of the kind the config names (the store factory). Kinds this build does not
/// have are refused when the config is read.
pub fn open(config: &StoreConfig, data_dir: &Path) -> Result<LogHome, StoreError> {
    match config.kind {
        StoreKind::Embedded => {
            let (store, log) = open_embedded(data_dir)?;
            Ok(LogHome::Local(Storage {
                store: Arc::new(store),
                log: Arc::new(log),
            }))
        }
        StoreKind::Cluster => Ok(LogHome::Cluster(Arc::new(DataDirLock::acquire(data_dir)?))),
    }
}

/// The embedded node's storage in `data_dir`, held against other nodes: the SQLite store
/// (`cadre.db`) and the event log's commit log (`log/`, see [`SegmentLog`]).
pub fn open_embedded(data_dir: &Path) -> Result<(SqliteStore, SegmentLog), StoreError> {
    let lock = Arc::new(DataDirLock::acquire(data_dir)?);
    let store = SqliteStore::open_file(data_dir, MAIN_FILE, lock.clone())?;
    let log = SegmentLog::open_with(&data_dir.join(LOG_DIR), SEGMENT_BYTES, Some(lock.clone()))?;
    if data_dir.join(LEGACY_LOG_FILE).exists() {
        let legacy = Arc::new(SqliteStore::open_file(data_dir, LEGACY_LOG_FILE, lock)?);
        let mut moved = 0;
        StoreLog(legacy).replay(&mut |_, record| {
            moved += 1;
            log.append(log.next_lsn()?, record)
        })?;
        for suffix in ["", "-wal", "-shm"] {
            let path = data_dir.join(format!("{LEGACY_LOG_FILE}{suffix}"));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(StoreError::Io(format!(
                    "cannot remove {}: {e}",
                    path.display()
                )));
            }
        }
        tracing::info!(records = moved, "moved the commit log from log.db to log/");
    }
    Ok((store, log))
}
