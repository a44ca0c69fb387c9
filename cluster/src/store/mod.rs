//! Store backends.

mod lock;
mod sqlite;

pub use lock::DataDirLock;
pub use sqlite::SqliteStore;
