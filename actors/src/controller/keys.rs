//! The event log's keyspace (tuple-encoded):
//!
//! | key | value |
//! |---|---|
//! | `("log", lsn)` | a [`LogBatch`]: one group commit, not yet materialized (with [`super::StoreLog`]) |
//! | `("log", lsn, chunk)` | the same, split into values of at most [`MAX_VALUE_BYTES`] |
//! | `("conv", conversation_id, seq)` | a `cadre.v1.Event`, or the head of one split into chunks |
//! | `("conv", conversation_id, seq, chunk)` | a chunk of a split event (see [`set_event`]) |
//! | `("meta", conversation_id)` | last seq (u64, big-endian) |
//! | `("idem", conversation_id, key)` | first and last seq of the original append |
//! | `("exec", conversation_id, exec_id)` | open exec: state (i32), a recovering flag, the node that runs it |
//!
//! A group commit writes one [`LogBatch`] record holding the whole batch to the commit log:
//! the `log` prefix here, or a commit log of its own (segment files on the embedded node). The
//! materializer moves entries into the other prefixes in large transactions, then releases the
//! records it has fully materialized.
//!
//! The actor registry and leader leases get their own prefixes when they arrive.

use cadre_proto::v1::{Event, ExecState, event};
use prost::Message;

use crate::store::tuple::{Elem, Value, pack, range, unpack};
use crate::store::{MAX_VALUE_BYTES, Store, StoreError, Txn};

use super::OpenExec;

pub(super) const LOG: &str = "log";
pub(super) const EVENTS: &str = "conv";
pub(super) const META: &str = "meta";
pub(super) const IDEM: &str = "idem";
pub(super) const EXEC: &str = "exec";

/// One committed event in the log, with the idempotency record of its append (carried by the
/// append's first event).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LogEntry {
    #[prost(message, optional, tag = "1")]
    pub event: Option<Event>,
    #[prost(string, tag = "2")]
    pub idempotency_key: String,
    /// Last seq of the append, when `idempotency_key` is set.
    #[prost(uint64, tag = "3")]
    pub append_last_seq: u64,
}

/// The record of one group commit: its entries in commit order.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LogBatch {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<LogEntry>,
}

/// Appends one element of [`LogBatch::entries`] to an encoded batch, without copying the event.
pub(super) fn encode_log_entry(
    batch: &mut Vec<u8>,
    event: &Event,
    idempotency_key: &str,
    append_last_seq: u64,
) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let event_len = event.encoded_len();
    let mut len = key_len(1) + encoded_len_varint(event_len as u64) + event_len;
    if !idempotency_key.is_empty() {
        len +=
            key_len(2) + encoded_len_varint(idempotency_key.len() as u64) + idempotency_key.len();
    }
    if append_last_seq != 0 {
        len += key_len(3) + encoded_len_varint(append_last_seq);
    }
    encode_key(1, WireType::LengthDelimited, batch);
    encode_varint(len as u64, batch);
    encode_key(1, WireType::LengthDelimited, batch);
    encode_varint(event_len as u64, batch);
    event.encode_raw(batch);
    if !idempotency_key.is_empty() {
        encode_key(2, WireType::LengthDelimited, batch);
        encode_varint(idempotency_key.len() as u64, batch);
        batch.extend_from_slice(idempotency_key.as_bytes());
    }
    if append_last_seq != 0 {
        encode_key(3, WireType::Varint, batch);
        encode_varint(append_last_seq, batch);
    }
}

/// Clears everything stored for a conversation.
pub(super) fn clear_conversation(t: &mut dyn Txn, conversation_id: &str) -> Result<(), StoreError> {
    for prefix in [EVENTS, IDEM, EXEC] {
        let (begin, end) = range(&[Elem::Str(prefix), Elem::Str(conversation_id)]);
        t.clear_range(&begin, &end)?;
    }
    t.clear(&meta(conversation_id))
}

pub(super) fn log(lsn: u64) -> Vec<u8> {
    pack(&[Elem::Str(LOG), Elem::Int(lsn)])
}

pub(super) fn event(conversation_id: &str, seq: u64) -> Vec<u8> {
    pack(&[
        Elem::Str(EVENTS),
        Elem::Str(conversation_id),
        Elem::Int(seq),
    ])
}

/// Key of one chunk of a commit log record.
pub(super) fn log_chunk(lsn: u64, chunk: usize) -> Vec<u8> {
    pack(&[Elem::Str(LOG), Elem::Int(lsn), Elem::Int(chunk as u64)])
}

/// First byte of the head of an event split into chunks. Protobuf has no field 0, so no
/// encoded event starts with it (and events written whole before chunks read as before).
const CHUNKED: u8 = 0;

/// Writes `event` at its key: whole when it fits in one value, else a head ([`CHUNKED`], the
/// chunk count as u32) and the chunks at `(…, seq, i)`, which sort right after it.
pub(super) fn set_event(t: &mut dyn Txn, event: &Event) -> Result<(), StoreError> {
    let key = self::event(&event.conversation_id, event.seq);
    let bytes = event.encode_to_vec();
    if bytes.len() <= MAX_VALUE_BYTES {
        return t.set(&key, &bytes);
    }
    let chunks: Vec<&[u8]> = bytes.chunks(MAX_VALUE_BYTES).collect();
    let mut head = vec![CHUNKED];
    head.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
    t.set(&key, &head)?;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut chunk_key = key.clone();
        crate::store::tuple::pack_into(&mut chunk_key, &Elem::Int(i as u64));
        t.set(&chunk_key, chunk)?;
    }
    Ok(())
}

/// Whether `value`, stored at an event's key, is the head of an event split into chunks.
pub(super) fn is_chunked_head(value: &[u8]) -> bool {
    value.first() == Some(&CHUNKED)
}

/// Up to `limit` events with keys in `[begin, end)`, in order, with split events put together.
pub(super) fn read_events(
    t: &mut dyn Txn,
    begin: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    let mut from = begin.to_vec();
    'pages: while out.len() < limit {
        let want = limit - out.len();
        let kvs = t.range(&from, end, want, false)?;
        let exhausted = kvs.len() < want;
        for (key, value) in &kvs {
            if value.first() == Some(&CHUNKED) {
                out.push(decode_event(&read_chunks(t, key, value)?)?);
                // Go on after its chunks, without reading the rest of this page (more chunks,
                // perhaps) again.
                from = key.clone();
                from.push(0xff);
                continue 'pages;
            }
            out.push(decode_event(value)?);
        }
        match kvs.last() {
            Some((last, _)) if !exhausted => {
                from = last.clone();
                from.push(0x00);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// The bytes of the event split into chunks whose head is `key`, `head`.
fn read_chunks(t: &mut dyn Txn, key: &[u8], head: &[u8]) -> Result<Vec<u8>, StoreError> {
    let count = head
        .get(1..5)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| StoreError::Io("corrupt head of a chunked event".into()))?;
    let mut begin = key.to_vec();
    begin.push(0x00);
    let mut end = key.to_vec();
    end.push(0xff);
    let chunks = t.range(&begin, &end, count, false)?;
    if chunks.len() != count {
        return Err(StoreError::Io(format!(
            "a chunked event has {} of its {count} chunks",
            chunks.len()
        )));
    }
    Ok(chunks.into_iter().flat_map(|(_, v)| v).collect())
}

pub(super) fn decode_event(bytes: &[u8]) -> Result<Event, StoreError> {
    Event::decode(bytes).map_err(|e| StoreError::Io(format!("corrupt event in the log: {e}")))
}

pub(super) fn meta(conversation_id: &str) -> Vec<u8> {
    pack(&[Elem::Str(META), Elem::Str(conversation_id)])
}

pub(super) fn idempotency(conversation_id: &str, key: &str) -> Vec<u8> {
    pack(&[Elem::Str(IDEM), Elem::Str(conversation_id), Elem::Str(key)])
}

pub(super) fn exec(conversation_id: &str, exec_id: &str) -> Vec<u8> {
    pack(&[
        Elem::Str(EXEC),
        Elem::Str(conversation_id),
        Elem::Str(exec_id),
    ])
}

pub(super) fn encode_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn decode_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(buf)
}

pub(super) fn encode_span(first: u64, last: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&first.to_be_bytes());
    out[8..].copy_from_slice(&last.to_be_bytes());
    out
}

pub(super) fn decode_span(bytes: &[u8]) -> (u64, u64) {
    (
        decode_u64(&bytes[..8.min(bytes.len())]),
        decode_u64(bytes.get(8..).unwrap_or(&[])),
    )
}

/// The flag byte's bit that says an epoch follows it (values written before leases had
/// epochs have a flag byte of 0 or 1, and the node right after it).
const HAS_EPOCH: u8 = 2;

/// An exec index value: its state (4 bytes), a flag byte (recovering, and [`HAS_EPOCH`]), its
/// lease's epoch (8 bytes), then its node.
pub(super) fn encode_exec(state: ExecState, recovering: bool, node: &str, epoch: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + node.len());
    out.extend_from_slice(&(state as i32).to_be_bytes());
    out.push(recovering as u8 | HAS_EPOCH);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(node.as_bytes());
    out
}

/// An exec index value: its state, its node (empty in values written before clusters) and its
/// lease's epoch (0 in values written before epochs).
fn decode_exec(bytes: &[u8]) -> (ExecState, String, u64) {
    let n = bytes
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or_default();
    let flags = bytes.get(4).copied().unwrap_or_default();
    let (epoch, node) = if flags & HAS_EPOCH != 0 {
        (
            decode_u64(bytes.get(5..13).unwrap_or_default()),
            bytes.get(13..).unwrap_or_default(),
        )
    } else {
        (0, bytes.get(5..).unwrap_or_default())
    };
    (
        ExecState::try_from(n).unwrap_or(ExecState::Unspecified),
        String::from_utf8_lossy(node).into_owned(),
        epoch,
    )
}

/// The change an event makes to the index of open execs that startup recovery scans: the
/// exec's key, and its new value (`None`: it is finished and leaves the index).
pub(super) fn exec_index_change(event: &Event) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let Some(event::Kind::ExecStateChanged(change)) = &event.kind else {
        return None;
    };
    let key = exec(&event.conversation_id, &event.exec_id);
    let state = ExecState::try_from(change.state).unwrap_or(ExecState::Unspecified);
    let value =
        (!state.is_terminal()).then(|| encode_exec(state, false, &change.node, change.epoch));
    Some((key, value))
}

/// Startup recovery: every exec not in a terminal state, marked as recovering.
pub(super) fn mark_open_execs(store: &dyn Store) -> Result<Vec<OpenExec>, StoreError> {
    let (begin, end) = range(&[Elem::Str(EXEC)]);
    let mut open = Vec::new();
    store.transact(&mut |t| {
        open.clear();
        for (key, value) in t.range(&begin, &end, usize::MAX, false)? {
            let parts = unpack(&key).map_err(|e| StoreError::Io(e.to_string()))?;
            let (Some(Value::Str(conv)), Some(Value::Str(exec))) = (parts.get(1), parts.get(2))
            else {
                return Err(StoreError::Io("corrupt exec index key".into()));
            };
            let (state, node, epoch) = decode_exec(&value);
            t.set(&key, &encode_exec(state, true, &node, epoch))?;
            open.push(OpenExec {
                conversation_id: conv.clone(),
                exec_id: exec.clone(),
                state,
                node,
                epoch,
            });
        }
        Ok(())
    })?;
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_proto::v1::OutputEmitted;

    #[test]
    fn exec_index_values_keep_node_and_epoch_and_read_older_ones() {
        let value = encode_exec(ExecState::Running, true, "node-1", 3);
        assert_eq!(
            decode_exec(&value),
            (ExecState::Running, "node-1".into(), 3)
        );
        // Written before epochs: state, the recovering byte, the node.
        let mut old = (ExecState::Running as i32).to_be_bytes().to_vec();
        old.push(1);
        old.extend_from_slice(b"node-1");
        assert_eq!(decode_exec(&old), (ExecState::Running, "node-1".into(), 0));
        // Written before clusters: no node either.
        assert_eq!(
            decode_exec(&old[..5]),
            (ExecState::Running, String::new(), 0)
        );
    }

    #[test]
    fn log_entries_encode_as_a_log_batch() {
        let event = |seq| Event {
            conversation_id: "c".into(),
            seq,
            exec_id: "e".into(),
            time_unix_micros: 7,
            kind: Some(event::Kind::OutputEmitted(OutputEmitted {
                text: "hi".repeat(100),
            })),
        };
        let mut encoded = Vec::new();
        encode_log_entry(&mut encoded, &event(1), "key", 2);
        encode_log_entry(&mut encoded, &event(2), "", 0);
        let batch = LogBatch::decode(encoded.as_slice()).unwrap();
        assert_eq!(
            batch.entries,
            vec![
                LogEntry {
                    event: Some(event(1)),
                    idempotency_key: "key".into(),
                    append_last_seq: 2
                },
                LogEntry {
                    event: Some(event(2)),
                    idempotency_key: String::new(),
                    append_last_seq: 0
                },
            ]
        );
    }
}
