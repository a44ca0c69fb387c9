//! The commit log: where a group commit becomes durable before the materializer moves its
//! events into the store's keyspace.
//!
//! A backend only has to append records durably, replay the ones not yet released, and drop
//! released ones. [`StoreLog`] keeps them in a [`Store`] (the `log` keyspace, so on
//! FoundationDB a commit is one transaction); the embedded node uses an append-only segment
//! file (`cadre_cluster::store::SegmentLog`), which needs one `fdatasync` and no B-tree work.

use super::keys;
use crate::store::tuple::{Elem, Value, range, unpack};
use crate::store::{MAX_TRANSACTION_BYTES, MAX_VALUE_BYTES, Store, StoreError};

/// The most bytes one record may hold (one group commit; the writer splits larger batches).
pub const MAX_RECORD_BYTES: usize = MAX_TRANSACTION_BYTES / 2;

/// What [`CommitLog::replay`] calls with each record's lsn and bytes.
pub type RecordFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// An append-only sequence of records numbered by log sequence number (lsn).
pub trait CommitLog: Send + Sync + 'static {
    /// The lsn the next appended record must carry: above every record not yet released.
    fn next_lsn(&self) -> Result<u64, StoreError>;

    /// Appends `record` as `lsn` (from [`CommitLog::next_lsn`], then one more each time) and makes it durable before
    /// returning `Ok`. On an error nothing of it is replayed later.
    fn append(&self, lsn: u64, record: &[u8]) -> Result<(), StoreError>;

    /// Calls `f` with every record not yet released, in lsn order.
    fn replay(&self, f: &mut RecordFn<'_>) -> Result<(), StoreError>;

    /// Records below `lsn` are materialized: once this returns they are never replayed again
    /// (a conversation deleted since must not come back), and their space may be reused.
    fn release(&self, lsn: u64) -> Result<(), StoreError>;
}

/// A commit log kept in a [`Store`]: each record under `("log", lsn, chunk)` keys, split into
/// values of at most [`MAX_VALUE_BYTES`] (records of earlier versions, whole under `("log",
/// lsn)`, are read too). Appending a record again at the same lsn replaces it, so a commit
/// retried after an unknown result leaves one record.
pub struct StoreLog<S: ?Sized>(pub std::sync::Arc<S>);

impl<S: Store + ?Sized> CommitLog for StoreLog<S> {
    fn next_lsn(&self) -> Result<u64, StoreError> {
        let (begin, end) = range(&[Elem::Str(keys::LOG)]);
        let mut last = 0;
        self.0.read(&mut |t| {
            if let Some((key, _)) = t.range(&begin, &end, 1, true)?.pop() {
                last = lsn_of(&key)?;
            }
            Ok(())
        })?;
        Ok(last + 1)
    }

    fn append(&self, lsn: u64, record: &[u8]) -> Result<(), StoreError> {
        self.0.transact(&mut |t| {
            t.clear_range(&keys::log(lsn), &keys::log(lsn + 1))?;
            for (i, chunk) in record.chunks(MAX_VALUE_BYTES).enumerate() {
                t.set(&keys::log_chunk(lsn, i), chunk)?;
            }
            Ok(())
        })
    }

    fn replay(&self, f: &mut RecordFn<'_>) -> Result<(), StoreError> {
        let (mut begin, end) = range(&[Elem::Str(keys::LOG)]);
        loop {
            // One record at a time: a record is a whole group commit, up to a few MB.
            let mut record = None;
            self.0.read(&mut |t| {
                record = match t.range(&begin, &end, 1, false)?.pop() {
                    Some((key, _)) if is_chunk(&key)? => {
                        let lsn = lsn_of(&key)?;
                        let chunks =
                            t.range(&keys::log(lsn), &keys::log(lsn + 1), usize::MAX, false)?;
                        Some((lsn, chunks.into_iter().flat_map(|(_, v)| v).collect()))
                    }
                    Some((key, value)) => Some((lsn_of(&key)?, value)),
                    None => None,
                };
                Ok(())
            })?;
            let Some((lsn, value)) = record else {
                return Ok(());
            };
            f(lsn, &value)?;
            begin = keys::log(lsn + 1);
        }
    }

    fn release(&self, lsn: u64) -> Result<(), StoreError> {
        self.0
            .transact(&mut |t| t.clear_range(&keys::log(0), &keys::log(lsn)))
    }
}

/// Whether `key` is a chunk of a record (`("log", lsn, chunk)`) rather than a whole one.
fn is_chunk(key: &[u8]) -> Result<bool, StoreError> {
    Ok(unpack(key)
        .map_err(|e| StoreError::Io(format!("corrupt event log key: {e}")))?
        .len()
        == 3)
}

fn lsn_of(key: &[u8]) -> Result<u64, StoreError> {
    match unpack(key)
        .map_err(|e| StoreError::Io(format!("corrupt event log key: {e}")))?
        .get(1)
    {
        Some(Value::Int(n)) => Ok(*n),
        _ => Err(StoreError::Io("corrupt event log key".into())),
    }
}
