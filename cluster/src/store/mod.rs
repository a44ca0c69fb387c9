//! Store backends.

#[cfg(feature = "foundationdb")]
mod foundationdb;
mod lock;
mod segment_log;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

use cadre_actors::config::{FoundationdbStore, StoreConfig, StoreKind};
use cadre_actors::controller::{CommitLog, StoreLog};
use cadre_actors::store::{Store, StoreError};

#[cfg(feature = "foundationdb")]
pub use foundationdb::FdbStore;
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
    /// In a store every node reaches (FoundationDB, or a SQLite file the nodes of one machine
    /// share): the node that holds the controller lease writes it (see [`crate::leased_log`]).
    Shared {
        /// The store.
        store: Arc<dyn Store>,
        /// The controller lease's TTL.
        lease_ttl: std::time::Duration,
        /// Holds this node's data dir (workspaces, sandbox images).
        lock: Arc<DataDirLock>,
    },
}

/// The storage of the kind the config names (the store factory), for a node of the cluster
/// named `cluster`. Kinds this build does not have are refused when the config is read.
pub fn open(config: &StoreConfig, data_dir: &Path, cluster: &str) -> Result<LogHome, StoreError> {
    match &config.kind {
        StoreKind::Embedded => {
            let (store, log) = open_embedded(data_dir)?;
            Ok(LogHome::Local(Storage {
                store: Arc::new(store),
                log: Arc::new(log),
            }))
        }
        StoreKind::Cluster => Ok(LogHome::Cluster(Arc::new(DataDirLock::acquire(data_dir)?))),
        StoreKind::SharedSqlite(shared) => {
            let lock = Arc::new(DataDirLock::acquire(data_dir)?);
            Ok(LogHome::Shared {
                store: Arc::new(SqliteStore::open_shared(&shared.path, Some(lock.clone()))?),
                lease_ttl: shared.lease_ttl,
                lock,
            })
        }
        StoreKind::Foundationdb(fdb) => {
            let lock = Arc::new(DataDirLock::acquire(data_dir)?);
            Ok(LogHome::Shared {
                store: open_foundationdb(fdb, cluster)?,
                lease_ttl: fdb.lease_ttl,
                lock,
            })
        }
    }
}

/// The FoundationDB store of `store.foundationdb`, for the cluster named `cluster`.
#[cfg(feature = "foundationdb")]
pub fn open_foundationdb(
    config: &FoundationdbStore,
    cluster: &str,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(FdbStore::open(
        &config.cluster_file,
        &config.prefix,
        cluster,
    )?))
}

/// Without the `foundationdb` feature there is no FoundationDB store (and the config refuses
/// `store.foundationdb` before this is reached).
#[cfg(not(feature = "foundationdb"))]
pub fn open_foundationdb(
    _config: &FoundationdbStore,
    _cluster: &str,
) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Unavailable(
        "this build of cadre has no FoundationDB store (build it with `--features foundationdb`)"
            .into(),
    ))
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
