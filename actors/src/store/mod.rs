//! The ordered key-value store under the event log, shaped like FoundationDB: byte keys in
//! lexicographic order (built with [`tuple`](mod@tuple) encoding), range reads, and atomic transactions
//! kept under FoundationDB's limits (10 MB, 5 s), so a FoundationDB backend is a drop-in.
//!
//! Calls block; async callers run them on a blocking thread.

pub mod conformance;
pub mod tuple;

/// A key and its value.
pub type Kv = (Vec<u8>, Vec<u8>);

/// The most bytes (keys + values written) one transaction may carry, as in FoundationDB.
pub const MAX_TRANSACTION_BYTES: usize = 10_000_000;

/// Why a store operation failed. Nothing of a failed transaction is visible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, a corrupt record, a failed task).
    #[error("store I/O error: {0}")]
    Io(String),
    /// The transaction wrote more than [`MAX_TRANSACTION_BYTES`].
    #[error("transaction too large: {bytes} bytes written (limit {MAX_TRANSACTION_BYTES})")]
    TooLarge {
        /// The bytes it wrote (keys + values).
        bytes: usize,
    },
    /// A write was tried in a read-only transaction.
    #[error("read-only transaction cannot write")]
    ReadOnly,
    /// The transaction's closure gave up, with this reason.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// The store cannot be reached now (in a cluster: the controller node is down); the
    /// message says which and what to expect.
    #[error("{0}")]
    Unavailable(String),
}

/// Operations inside one transaction. Reads see the transaction's own writes.
pub trait Txn {
    /// The value at `key`, if any.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keys in `[begin, end)`, ascending (or descending when `reverse`), at most `limit`.
    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Kv>, StoreError>;
    /// Sets `key` to `value`.
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Clears `key`.
    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Clears every key in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError>;
}

/// A transactional ordered key-value store.
pub trait Store: Send + Sync + 'static {
    /// Runs `f` in one atomic transaction and makes it durable before returning `Ok`. If `f`
    /// (or the commit) fails, nothing it wrote is visible. `f` may run more than once on
    /// backends that retry conflicts, so it must have no effects outside the transaction.
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Runs `f` against a consistent snapshot; writes fail with [`StoreError::ReadOnly`].
    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

/// Lowers the calling thread's CPU priority (nice 10): for a store's background work
/// (materializing, checkpoints), which must not delay the commits whose callers are waiting.
/// On a machine with few cores it otherwise takes the CPU the committers need.
pub fn background_priority() {
    // SAFETY: plain syscalls on the calling thread; with PRIO_PROCESS, Linux takes a thread id.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower a background thread's priority"
        );
    }
}
