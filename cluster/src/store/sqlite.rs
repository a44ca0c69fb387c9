//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, one
//! `WITHOUT ROWID` table of (key, value) blobs. A commit returns after the WAL is fsynced.
//! Checkpoints (copying the WAL into the database file) run on a background thread, not inside
//! commits. Under a steady write load a passive checkpoint never catches up and the WAL grows
//! without end, which makes every fsync slower; so once the WAL passes [`RESTART_FRAMES`] the
//! next commit, already holding the write lock, restarts it from the beginning.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::store::{Kv, Store, StoreError, Txn, WriteBudget};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::DataDirLock;

/// The SQLite-backed [`Store`]. One connection writes; another serves reads, which WAL lets
/// run beside a write.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    checkpointer: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    /// Set by the checkpointer when the WAL has grown past [`RESTART_FRAMES`] (never for a
    /// shared file: a restart waits for the other processes' readers).
    restart_wal: Arc<AtomicBool>,
    _lock: Option<Arc<DataDirLock>>,
}

/// The node's main store file.
pub const MAIN_FILE: &str = "cadre.db";
/// How often the background thread checkpoints the WAL (fewer, larger checkpoints disturb the
/// log's fsyncs less).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);
/// WAL frames (pages; 64 MiB) past which the next commit restarts the WAL.
const RESTART_FRAMES: i64 = 16_384;
/// Page cache per connection (KiB, as SQLite's negative cache_size).
const CACHE_KIB: i64 = 8_192;

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`, refusing a dir held by another node.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let lock = Arc::new(DataDirLock::acquire(data_dir)?);
        Self::open_file(data_dir, MAIN_FILE, lock)
    }

    /// Opens (creating if needed) the SQLite file `path` that the nodes of one machine share
    /// (`store.shared_sqlite`); `lock`, if any, holds this node's own data dir. SQLite's file
    /// locks make each write transaction serializable across the processes.
    pub fn open_shared(path: &Path, lock: Option<Arc<DataDirLock>>) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        Self::open_path(path, lock, true)
    }

    pub(super) fn open_file(
        data_dir: &Path,
        file: &str,
        lock: Arc<DataDirLock>,
    ) -> Result<Self, StoreError> {
        Self::open_path(&data_dir.join(file), Some(lock), false)
    }

    fn open_path(
        path: &Path,
        lock: Option<Arc<DataDirLock>>,
        shared: bool,
    ) -> Result<Self, StoreError> {
        let writer = Connection::open(path).map_err(io)?;
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=FULL;
                 PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
            )
            .map_err(io)?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(io)?;
        for conn in [&writer, &reader] {
            conn.pragma_update(None, "cache_size", -CACHE_KIB)
                .map_err(io)?;
        }
        writer.busy_timeout(Duration::from_secs(5)).map_err(io)?;
        reader.busy_timeout(Duration::from_secs(5)).map_err(io)?;
        let checkpointer = Connection::open(path).map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let restart_wal = Arc::new(AtomicBool::new(false));
        let restart = restart_wal.clone();
        let handle = std::thread::Builder::new()
            .name("cadre-sqlite-ckp".into())
            .spawn(move || {
                cadre_actors::store::background_priority();
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                    // PASSIVE never blocks writers; what it cannot copy now it copies next time.
                    let frames =
                        checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                            r.get::<_, i64>(1)
                        });
                    match frames {
                        Ok(frames) if frames > RESTART_FRAMES && !shared => {
                            restart.store(true, Ordering::Relaxed)
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            checkpointer: Some((stop, handle)),
            restart_wal,
            _lock: lock,
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.checkpointer.take() {
            stop.store(true, Ordering::Relaxed);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Store for SqliteStore {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().map_err(|_| poisoned())?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(io)?;
        let mut txn = SqliteTxn {
            conn: &tx,
            budget: WriteBudget::default(),
        };
        f(&mut txn)?;
        tx.commit().map_err(io)?;
        if self.restart_wal.swap(false, Ordering::Relaxed) {
            // Most frames are copied already; this copies the rest and restarts the WAL.
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(RESTART);") {
                tracing::warn!(error = %e, "WAL restart failed");
            }
        }
        Ok(())
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let conn = self.reader.lock().map_err(|_| poisoned())?;
        // Cached statements rather than rusqlite's `transaction()`, which parses BEGIN and
        // ROLLBACK again for every read (most reads here are one point lookup).
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        run("BEGIN").map_err(io)?;
        let mut txn = SqliteTxn {
            conn: &conn,
            budget: WriteBudget::read_only(),
        };
        let result = f(&mut txn);
        // Ends the snapshot, so the WAL can be checkpointed past it.
        run("ROLLBACK").map_err(io)?;
        result
    }
}

struct SqliteTxn<'a> {
    conn: &'a Connection,
    budget: WriteBudget,
}

impl Txn for SqliteTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")
            .map_err(io)?;
        let mut rows = stmt.query(params![key]).map_err(io)?;
        match rows.next().map_err(io)? {
            Some(row) => Ok(Some(row.get(0).map_err(io)?)),
            None => Ok(None),
        }
    }

    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Kv>, StoreError> {
        let sql = if reverse {
            "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key DESC LIMIT ?3"
        } else {
            "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3"
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(io)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![begin, end, limit], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(io)?;
        rows.collect::<Result<Vec<Kv>, _>>().map_err(io)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.budget.set(key, value)?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
            .map_err(io)?
            .execute(params![key, value])
            .map_err(io)?;
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.budget.clear(key)?;
        self.conn
            .prepare_cached("DELETE FROM kv WHERE key = ?1")
            .map_err(io)?
            .execute(params![key])
            .map_err(io)?;
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.budget.clear_range(begin, end)?;
        self.conn
            .prepare_cached("DELETE FROM kv WHERE key >= ?1 AND key < ?2")
            .map_err(io)?
            .execute(params![begin, end])
            .map_err(io)?;
        Ok(())
    }
}

fn io(e: rusqlite::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn poisoned() -> StoreError {
    StoreError::Io("store lock poisoned by an earlier panic".into())
}
