//! The tail (committed events not yet materialized, served from memory) and the materializer
//! thread that writes them into the per-conversation keyspace in large transactions.
//!
//! Invariant: an event leaves the tail only after the transaction that materialized it has
//! committed, so every committed event is always in the tail, in the materialized keyspace, or
//! both. Readers take the tail first and the store second.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cadre_proto::v1::Event;
use prost::Message;

use super::commit_log::CommitLog;
use super::keys::{self, LogBatch};
use crate::store::{Store, StoreError, Txn};

/// One committed entry waiting to be materialized.
#[derive(Clone)]
pub(super) struct Pending {
    /// The log record (group commit) that holds it.
    pub lsn: u64,
    /// Whether it is the last entry of its record.
    pub batch_end: bool,
    pub event: Arc<Event>,
    /// (key, first seq, last seq) of the append this event starts, if it had a key.
    pub idempotency: Option<(String, u64, u64)>,
}

/// Committed but not yet materialized, shared by the writer, the materializer and readers.
#[derive(Default)]
pub(super) struct Tail {
    pub entries: VecDeque<Pending>,
    pub by_conversation: HashMap<String, VecDeque<Arc<Event>>>,
    pub idempotency: HashMap<(String, String), (u64, u64)>,
    /// Set when the writer is gone: the materializer drains what is left and exits.
    pub closed: bool,
    /// Set while the writer waits for the tail to drain: the materializer does not linger.
    pub flush: bool,
}

/// The tail with its condition variable (signalled on every change).
#[derive(Default)]
pub(super) struct SharedTail {
    pub tail: Mutex<Tail>,
    pub changed: Condvar,
    /// Materializer threads still running (a restarted controller waits for the old one).
    pub materializers: std::sync::atomic::AtomicUsize,
}

/// The writer waits while the tail holds this many events (the materializer is behind).
pub(super) const MAX_TAIL: usize = 262_144;
/// Most entries and bytes per materializing transaction. Large transactions write each
/// conversation's pages once for many events: the materializer's I/O competes with the
/// writer's fsyncs, and with 1,024 entries per transaction it halved the log's throughput.
const MAX_MATERIALIZE: usize = 16_384;
const MAX_MATERIALIZE_BYTES: usize = 6 << 20;
/// How long the materializer lets entries accumulate when there are few.
const LINGER: Duration = Duration::from_millis(200);
const LINGER_BELOW: usize = 16_384;

impl Tail {
    /// Records a commit: its entries become visible to readers.
    pub(super) fn push(&mut self, committed: Vec<Pending>) {
        for p in committed {
            // Look up before inserting: the key is allocated only for a new conversation.
            let conv = &p.event.conversation_id;
            match self.by_conversation.get_mut(conv) {
                Some(q) => q.push_back(p.event.clone()),
                None => {
                    self.by_conversation
                        .insert(conv.clone(), VecDeque::from([p.event.clone()]));
                }
            }
            if let Some((key, first, last)) = &p.idempotency {
                self.idempotency.insert(
                    (p.event.conversation_id.clone(), key.clone()),
                    (*first, *last),
                );
            }
            self.entries.push_back(p);
        }
    }

    /// Forgets the first `n` entries, now materialized.
    fn pop(&mut self, n: usize) {
        for p in self.entries.drain(..n) {
            let conv = &p.event.conversation_id;
            if let Some(q) = self.by_conversation.get_mut(conv) {
                q.pop_front();
                if q.is_empty() {
                    self.by_conversation.remove(conv);
                }
            }
            if let Some((key, _, _)) = p.idempotency {
                self.idempotency.remove(&(conv.clone(), key));
            }
        }
    }
}

/// Runs the materializer until the tail is closed and drained.
pub(super) fn spawn(
    store: Arc<dyn Store>,
    log: Arc<dyn CommitLog>,
    shared: Arc<SharedTail>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    shared.materializers.fetch_add(1, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("cadre-log-index".into())
        .spawn(move || {
            crate::store::background_priority();
            run(store.as_ref(), log.as_ref(), &shared);
            shared.materializers.fetch_sub(1, Ordering::SeqCst);
            shared.changed.notify_all();
        })
}

fn run(store: &dyn Store, log: &dyn CommitLog, shared: &SharedTail) {
    loop {
        let batch: Vec<Pending> = {
            let mut tail = shared.tail.lock().expect("tail lock");
            while tail.entries.is_empty() && !tail.closed {
                tail = shared.changed.wait(tail).expect("tail lock");
            }
            if tail.entries.is_empty() {
                return;
            }
            // Let entries accumulate: one materializing transaction then writes each
            // conversation's pages once for many events.
            let deadline = std::time::Instant::now() + LINGER;
            while tail.entries.len() < LINGER_BELOW && !tail.closed && !tail.flush {
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                tail = shared
                    .changed
                    .wait_timeout(tail, deadline - now)
                    .expect("tail lock")
                    .0;
            }
            let mut bytes = 0;
            tail.entries
                .iter()
                .take(MAX_MATERIALIZE)
                .take_while(|p| {
                    bytes += p.event.encoded_len();
                    bytes < MAX_MATERIALIZE_BYTES
                })
                .cloned()
                .collect()
        };
        if batch.is_empty() {
            continue;
        }
        match store.transact(&mut |t| materialize(t, &batch)) {
            Ok(()) => {
                shared.tail.lock().expect("tail lock").pop(batch.len());
                shared.changed.notify_all();
                release(log, &batch);
            }
            Err(e) if shared.tail.lock().expect("tail lock").closed => {
                // Stopping: the entries stay in the log and the next start replays them.
                tracing::error!(error = %e, "event log materialization failed; left for replay");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "event log materialization failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Releases materialized records: every record before the batch's last entry, and that one too
/// if the batch ends it, so an earlier release that failed is made good too. What stays is
/// replayed at the next start, which re-materializes the same values (materializing is
/// idempotent).
fn release(log: &dyn CommitLog, batch: &[Pending]) {
    let end = batch.last().map_or(0, |p| p.lsn + p.batch_end as u64);
    if let Err(e) = log.release(end) {
        tracing::warn!(error = %e, "cannot clear materialized log entries; they will be replayed");
    }
}

/// Writes entries into the per-conversation keyspace. Applying the same entries again, in
/// order, leaves the same result.
fn materialize(t: &mut dyn Txn, batch: &[Pending]) -> Result<(), StoreError> {
    let mut last: HashMap<&str, u64> = HashMap::new();
    // Only each exec's last state is written: most execs start and end within one batch, and
    // then their key is cleared without having been set.
    let mut exec_index: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    for p in batch {
        let e = &p.event;
        keys::set_event(t, e)?;
        if let Some((key, value)) = keys::exec_index_change(e) {
            exec_index.insert(key, value);
        }
        if let Some((key, first, last_seq)) = &p.idempotency {
            t.set(
                &keys::idempotency(&e.conversation_id, key),
                &keys::encode_span(*first, *last_seq),
            )?;
        }
        last.insert(&e.conversation_id, e.seq);
    }
    for (key, value) in exec_index {
        match value {
            Some(value) => t.set(&key, &value)?,
            None => t.clear(&key)?,
        }
    }
    for (conv, seq) in last {
        t.set(&keys::meta(conv), &keys::encode_u64(seq))?;
    }
    Ok(())
}

/// Startup: materializes every entry a previous run committed but did not materialize, in
/// transactions as large as the materializer's. Returns how many there were.
pub(super) fn replay(store: &dyn Store, log: &dyn CommitLog) -> Result<usize, StoreError> {
    let mut total = 0;
    let mut batch: Vec<Pending> = Vec::new();
    let mut bytes = 0;
    let flush = |batch: &mut Vec<Pending>| -> Result<(), StoreError> {
        if let Some(last) = batch.last() {
            let end = last.lsn + 1;
            store.transact(&mut |t| materialize(t, batch))?;
            log.release(end)?;
            batch.clear();
        }
        Ok(())
    };
    log.replay(&mut |lsn, record| {
        let entries = decode(lsn, record)?;
        // Flushed first if this record would take the transaction past the budget (a record
        // is at most half the store's transaction limit).
        if bytes + record.len() > MAX_MATERIALIZE_BYTES {
            flush(&mut batch)?;
            bytes = 0;
        }
        total += entries.len();
        bytes += record.len();
        batch.extend(entries);
        if batch.len() >= MAX_MATERIALIZE || bytes >= MAX_MATERIALIZE_BYTES {
            flush(&mut batch)?;
            bytes = 0;
        }
        Ok(())
    })?;
    flush(&mut batch)?;
    Ok(total)
}

fn decode(lsn: u64, value: &[u8]) -> Result<Vec<Pending>, StoreError> {
    let corrupt = |what: &str| StoreError::Io(format!("corrupt event log record {lsn}: {what}"));
    let record = LogBatch::decode(value).map_err(|e| corrupt(&e.to_string()))?;
    let n = record.entries.len();
    record
        .entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let event = entry.event.ok_or_else(|| corrupt("no event"))?;
            let idempotency = (!entry.idempotency_key.is_empty()).then_some((
                entry.idempotency_key,
                event.seq,
                entry.append_last_seq,
            ));
            Ok(Pending {
                lsn,
                batch_end: i + 1 == n,
                event: Arc::new(event),
                idempotency,
            })
        })
        .collect()
}
