//! The FoundationDB store (`store: {foundationdb: {cluster_file, prefix}}`, cargo feature
//! `foundationdb`): the [`Store`] trait over a FoundationDB cluster, so that every node of a
//! cadre cluster can reach the event log and any of them can be its controller.
//!
//! Keys are the event log's own tuple-encoded keys under the prefix of a directory (the
//! directory layer's `[prefix, cluster name]`), so several cadre clusters share one
//! FoundationDB. Transactions run in the crate's retry loop ([`Database::run`]): conflicts,
//! `transaction_too_old` and `commit_unknown_result` run the closure again, which is safe
//! because every transaction cadre makes is idempotent (commit log records are written at
//! their lsn, materialized events at their seq, the lease with a token). A retry limit and a
//! timeout bound each transaction; what is left is mapped to a [`StoreError`] that says what
//! happened. FoundationDB's limits (keys ≤ 10 kB, values ≤ 100 kB, 10 MB per transaction) are
//! checked before the write, with the same errors as every backend.
//!
//! The store's calls block (as the [`Store`] trait says): each FoundationDB future is waited
//! on by the calling thread, which FoundationDB's network thread wakes.

use std::sync::{Mutex, OnceLock};

use cadre_actors::store::{Kv, Store, StoreError, Txn, WriteBudget};
use foundationdb::directory::{Directory, DirectoryLayer, DirectoryOutput};
use foundationdb::options::{StreamingMode, TransactionOption};
use foundationdb::{
    Database, FdbBindingError, FdbError, KeySelector, RangeOption, RetryableTransaction,
};

/// Attempts of one transaction before its last error is returned.
const RETRY_LIMIT: i32 = 20;

/// The longest one transaction may take with its retries, in milliseconds.
const TIMEOUT_MS: i32 = 10_000;

/// FoundationDB's client network: started once per process, before the first database.
static NETWORK: OnceLock<Result<foundationdb::api::NetworkAutoStop, String>> = OnceLock::new();

/// A FoundationDB cluster, under one directory.
pub struct FdbStore {
    db: Database,
    /// The directory's key prefix.
    prefix: Vec<u8>,
}

impl FdbStore {
    /// Opens the cluster `cluster_file` names and the directory `[prefix, cluster]` in it
    /// (created if new).
    pub fn open(
        cluster_file: &std::path::Path,
        prefix: &str,
        cluster: &str,
    ) -> Result<Self, StoreError> {
        let network = NETWORK.get_or_init(|| {
            // SAFETY: called once per process (the OnceLock), before any other FoundationDB
            // call; the guard lives in a static, so the network is never stopped and restarted.
            foundationdb::api::FdbApiBuilder::default()
                .build()
                .and_then(|builder| unsafe { builder.boot() })
                .map_err(|e| e.to_string())
        });
        if let Err(e) = network {
            return Err(StoreError::Unavailable(format!(
                "cannot start FoundationDB's client (is libfdb_c 7.3 installed?): {e}"
            )));
        }
        let path = cluster_file.to_str().ok_or_else(|| {
            StoreError::Io(format!("{}: not a UTF-8 path", cluster_file.display()))
        })?;
        if !cluster_file.exists() {
            return Err(StoreError::Unavailable(format!(
                "store.foundationdb.cluster_file {path}: no such file"
            )));
        }
        let db = Database::from_path(path).map_err(|e| fdb_error(&format!("open {path}"), e))?;
        let directory = DirectoryLayer::default();
        let names = vec![prefix.to_string(), cluster.to_string()];
        let opened = pollster::block_on(db.run(|trx, _| {
            let directory = &directory;
            let names = &names;
            async move {
                limit(&trx)?;
                match directory.create_or_open(&trx, names, None, None).await {
                    Ok(DirectoryOutput::DirectorySubspace(d)) => Ok(d.bytes().to_vec()),
                    Ok(DirectoryOutput::DirectoryPartition(_)) => Err(
                        FdbBindingError::CustomError("the directory is a partition".into()),
                    ),
                    Err(e) => Err(FdbBindingError::from(e)),
                }
            }
        }))
        .map_err(|e| {
            binding_error(
                &format!("open the directory {prefix}/{cluster} in {path}"),
                e,
            )
        })?;
        Ok(Self { db, prefix: opened })
    }

    /// Runs `f` in the retry loop, writable or not.
    fn run(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
        read_only: bool,
    ) -> Result<(), StoreError> {
        // The loop's closure is `Fn`; `f` is called by one attempt at a time.
        let f = Mutex::new(f);
        // Set once an attempt's commit may have landed: a later failure is then no proof that
        // nothing was written.
        let maybe_committed = std::sync::atomic::AtomicBool::new(false);
        let result = pollster::block_on(self.db.run(|trx, maybe| {
            let (f, maybe_committed) = (&f, &maybe_committed);
            async move {
                if bool::from(maybe) {
                    maybe_committed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                limit(&trx)?;
                let mut txn = FdbTxn {
                    trx: &trx,
                    prefix: &self.prefix,
                    budget: match read_only {
                        true => WriteBudget::read_only(),
                        false => WriteBudget::default(),
                    },
                    failed: None,
                };
                let result = (f.lock().expect("one attempt at a time"))(&mut txn);
                // A FoundationDB error goes to the loop, which retries what can be retried.
                if let Some(e) = txn.failed {
                    return Err(FdbBindingError::from(e));
                }
                result.map_err(|e| FdbBindingError::CustomError(Box::new(e)))
            }
        }));
        result.map_err(|e| match binding_error("transaction", e) {
            e @ StoreError::CommitUnknown(_) => e,
            e if maybe_committed.load(std::sync::atomic::Ordering::Relaxed) => {
                StoreError::CommitUnknown(format!(
                    "an earlier attempt's commit may have landed, then: {e}"
                ))
            }
            e => e,
        })
    }
}

impl Store for FdbStore {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.run(f, false)
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.run(f, true)
    }
}

/// Bounds an attempt: the loop stops after [`RETRY_LIMIT`] attempts or [`TIMEOUT_MS`].
fn limit(trx: &RetryableTransaction) -> Result<(), FdbBindingError> {
    trx.set_option(TransactionOption::RetryLimit(RETRY_LIMIT))?;
    trx.set_option(TransactionOption::Timeout(TIMEOUT_MS))?;
    Ok(())
}

/// One attempt's operations, with keys under the directory's prefix.
struct FdbTxn<'a> {
    trx: &'a RetryableTransaction,
    prefix: &'a [u8],
    budget: WriteBudget,
    /// The FoundationDB error an operation met: the attempt ends with it.
    failed: Option<FdbError>,
}

impl FdbTxn<'_> {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + key.len());
        out.extend_from_slice(self.prefix);
        out.extend_from_slice(key);
        out
    }

    /// Keeps a FoundationDB error for the retry loop, and stops the closure.
    fn fail(&mut self, e: FdbError) -> StoreError {
        self.failed = Some(e);
        StoreError::Io(format!("FoundationDB error {}: {e}", e.code()))
    }
}

impl Txn for FdbTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(key);
        match pollster::block_on(self.trx.get(&key, false)) {
            Ok(value) => Ok(value.map(|v| v.to_vec())),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Kv>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let begin = self.key(begin);
        let end = self.key(end);
        let mut out: Vec<Kv> = Vec::new();
        let mut option = Some(RangeOption {
            limit: (limit < usize::MAX).then_some(limit),
            mode: StreamingMode::WantAll,
            reverse,
            ..RangeOption::from((
                KeySelector::first_greater_or_equal(begin),
                KeySelector::first_greater_or_equal(end),
            ))
        });
        while let Some(opt) = option.take() {
            let values = match pollster::block_on(self.trx.get_range(&opt, 1, false)) {
                Ok(values) => values,
                Err(e) => return Err(self.fail(e)),
            };
            for kv in values.iter() {
                out.push((kv.key()[self.prefix.len()..].to_vec(), kv.value().to_vec()));
            }
            if out.len() < limit {
                option = opt.next_range(&values);
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.budget.set(key, value)?;
        let key = self.key(key);
        self.trx.set(&key, value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.budget.clear(key)?;
        let key = self.key(key);
        self.trx.clear(&key);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.budget.clear_range(begin, end)?;
        let (begin, end) = (self.key(begin), self.key(end));
        self.trx.clear_range(&begin, &end);
        Ok(())
    }
}

/// What an error of the retry loop means for cadre: the closure's own error as it was, and
/// FoundationDB's by what it says about the commit.
fn binding_error(doing: &str, e: FdbBindingError) -> StoreError {
    match e {
        FdbBindingError::CustomError(inner) => match inner.downcast::<StoreError>() {
            Ok(store) => *store,
            Err(other) => StoreError::Io(format!("FoundationDB: {doing}: {other}")),
        },
        other => match other.get_fdb_error() {
            Some(fdb) => fdb_error(doing, fdb),
            None => StoreError::Io(format!("FoundationDB: {doing}: {other}")),
        },
    }
}

/// FoundationDB's error codes (fdbclient's error_definitions.h) that cadre tells apart.
const TRANSACTION_TOO_OLD: i32 = 1007;
const COMMIT_UNKNOWN_RESULT: i32 = 1021;
const TRANSACTION_TIMED_OUT: i32 = 1031;
const KEY_TOO_LARGE: i32 = 2102;
const VALUE_TOO_LARGE: i32 = 2103;
const TRANSACTION_TOO_LARGE: i32 = 2101;

fn fdb_error(doing: &str, e: FdbError) -> StoreError {
    let said = format!("FoundationDB: {doing}: {e} (error {})", e.code());
    match e.code() {
        TRANSACTION_TOO_OLD => StoreError::TooOld,
        COMMIT_UNKNOWN_RESULT => StoreError::CommitUnknown(said),
        TRANSACTION_TOO_LARGE => StoreError::TooLarge { bytes: 0 },
        KEY_TOO_LARGE | VALUE_TOO_LARGE => StoreError::Io(said),
        // A commit cut off by the timeout may still land.
        TRANSACTION_TIMED_OUT => StoreError::CommitUnknown(format!(
            "{said}: FoundationDB did not answer within {TIMEOUT_MS} ms"
        )),
        _ if e.is_retryable() => {
            StoreError::Unavailable(format!("{said}, after {RETRY_LIMIT} attempts"))
        }
        _ => StoreError::Io(said),
    }
}
