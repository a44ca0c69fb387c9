//! The ordered key-value store under the event log, shaped like FoundationDB: byte keys in
//! lexicographic order (built with [`tuple`](mod@tuple) encoding), range reads, and atomic transactions
//! kept under FoundationDB's limits (10 MB, 5 s), so a FoundationDB backend is a drop-in.
//!
//! Calls block; async callers run them on a blocking thread.

pub mod conformance;
pub mod faults;
pub mod lease;
pub mod tuple;

/// A key and its value.
pub type Kv = (Vec<u8>, Vec<u8>);

/// The most bytes (keys + values written) one transaction may carry, as in FoundationDB.
pub const MAX_TRANSACTION_BYTES: usize = 10_000_000;

/// The longest key, as in FoundationDB.
pub const MAX_KEY_BYTES: usize = 10_000;

/// The longest value, as in FoundationDB; larger things are split into chunks by their writers.
pub const MAX_VALUE_BYTES: usize = 100_000;

/// The longest a transaction may last, as in FoundationDB (`transaction_too_old` after it).
pub const MAX_TRANSACTION_TIME: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// A key longer than [`MAX_KEY_BYTES`].
    #[error("key too large: {bytes} bytes (limit {MAX_KEY_BYTES})")]
    KeyTooLarge {
        /// The key's length.
        bytes: usize,
    },
    /// A value longer than [`MAX_VALUE_BYTES`].
    #[error("value too large: {bytes} bytes (limit {MAX_VALUE_BYTES})")]
    ValueTooLarge {
        /// The value's length.
        bytes: usize,
    },
    /// The transaction lasted longer than [`MAX_TRANSACTION_TIME`] and every retry did too.
    #[error("transaction too old: it lasted longer than {MAX_TRANSACTION_TIME:?}")]
    TooOld,
    /// The commit's outcome is unknown (the connection to the store was lost as it committed)
    /// and retrying did not settle it: it may or may not have been written. Writes that carry
    /// an idempotency key can be retried safely.
    #[error("commit result unknown: {0}")]
    CommitUnknown(String),
    /// This node's lease as the cluster's controller was taken by another node: its writes
    /// are refused, and callers go to the node named here.
    #[error(
        "this node is no longer the cluster's controller: node {controller} holds the lease (epoch {epoch})"
    )]
    Fenced {
        /// The node that holds the lease now.
        controller: String,
        /// Its lease's epoch.
        epoch: u64,
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

/// What one transaction has written, held to FoundationDB's limits (keys, values, the
/// transaction's size): every backend's [`Txn`] asks it before each write, so that every
/// backend refuses the same writes (and what works on the embedded store works on
/// FoundationDB).
#[derive(Debug, Default)]
pub struct WriteBudget {
    written: usize,
    read_only: bool,
}

impl WriteBudget {
    /// The budget of a read-only transaction: every write is refused.
    pub fn read_only() -> Self {
        Self {
            written: 0,
            read_only: true,
        }
    }

    /// Before setting `key` to `value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if value.len() > MAX_VALUE_BYTES {
            self.writable()?;
            return Err(StoreError::ValueTooLarge { bytes: value.len() });
        }
        self.clear(key)?;
        self.charge(value.len())
    }

    /// Before clearing `key`.
    pub fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        if key.len() > MAX_KEY_BYTES {
            return Err(StoreError::KeyTooLarge { bytes: key.len() });
        }
        self.charge(key.len())
    }

    /// Before clearing `[begin, end)`.
    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.charge(begin.len() + end.len())
    }

    fn writable(&self) -> Result<(), StoreError> {
        match self.read_only {
            true => Err(StoreError::ReadOnly),
            false => Ok(()),
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<(), StoreError> {
        self.written += bytes;
        if self.written > MAX_TRANSACTION_BYTES {
            return Err(StoreError::TooLarge {
                bytes: self.written,
            });
        }
        Ok(())
    }
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

    /// Runs `f` against a consistent snapshot; writes fail with [`StoreError::ReadOnly`]. As
    /// with [`Store::transact`], `f` may run more than once: it must start afresh each time.
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
