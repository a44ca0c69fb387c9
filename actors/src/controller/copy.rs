//! Copying a whole event log from one store to another (`cadre store copy`): a node's
//! embedded store into FoundationDB, say, when a single node becomes a cluster.
//!
//! The source must be at rest: its commit log replayed into its keyspace (start and stop a
//! controller on it first) and no controller writing it. The copy goes key by key in key
//! order, in transactions well under the limits; events stored whole by earlier versions that
//! are larger than a value may be on the destination are split into chunks. Then both sides
//! are counted and compared: the conversations, each one's last seq and a digest of its
//! events' bytes, the events, the idempotency records, the open execs.

use std::collections::BTreeMap;
use std::hash::Hasher;

use super::keys;
use crate::store::tuple::{Elem, Value, unpack};
use crate::store::{MAX_VALUE_BYTES, Store, StoreError};

/// What a copy wrote, as counted on both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Conversations and the last seq of each.
    pub conversations: BTreeMap<String, u64>,
    /// A digest of each conversation's events, in seq order (stored whole or in chunks alike).
    pub digests: BTreeMap<String, u64>,
    /// Events.
    pub events: u64,
    /// Idempotency records.
    pub idempotency_keys: u64,
    /// Open execs (the exec index).
    pub open_execs: u64,
}

/// Why a copy did not happen or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The destination holds an event log already (and the copy was not forced).
    #[error("the destination is not empty: it holds {0}")]
    NotEmpty(String),
    /// The source still has commit log records (it was not at rest).
    #[error("the source's commit log still has records: start and stop a node on it first")]
    SourceNotAtRest,
    /// A controller holds the destination's lease: a cluster is running on it.
    #[error("a controller holds the destination's lease (node `{0}`): stop the cluster first")]
    Leased(String),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The counts differ after the copy.
    #[error("the copy does not match its source: {0}")]
    Mismatch(String),
}

/// Keys per copy transaction (each value is at most 100 kB, and most are far smaller).
const KEYS_PER_TRANSACTION: usize = 200;

/// Bytes per copy transaction, well under the 10 MB limit.
const BYTES_PER_TRANSACTION: usize = 2 << 20;

/// Copies `from`'s event log into `to`, which must be empty unless `force` (then it is cleared
/// first), and checks the copy; `progress` hears the keys copied so far.
pub fn copy(
    from: &dyn Store,
    to: &dyn Store,
    force: bool,
    now_unix_ms: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Census, CopyError> {
    let all = (vec![0x00], vec![0xff]);
    if let Some(lease) = crate::store::lease::current(to)?
        && lease.expires_unix_ms > now_unix_ms
    {
        return Err(CopyError::Leased(lease.node));
    }
    if has_log_records(from)? {
        return Err(CopyError::SourceNotAtRest);
    }
    let existing = census(to)?;
    if !force && (!existing.conversations.is_empty() || any_key(to)?) {
        return Err(CopyError::NotEmpty(format!(
            "{} conversations and {} events (copy with --force to replace them)",
            existing.conversations.len(),
            existing.events
        )));
    }
    if force {
        // All but the lease, whose epoch must only ever rise.
        let lease = crate::store::lease::key();
        let mut after_lease = lease.clone();
        after_lease.push(0x00);
        to.transact(&mut |t| {
            t.clear_range(&all.0, &lease)?;
            t.clear_range(&after_lease, &all.1)
        })?;
    }
    let mut after: Option<Vec<u8>> = None;
    let mut copied = 0u64;
    loop {
        let mut page = Vec::new();
        from.read(&mut |t| {
            let begin = match &after {
                Some(k) => {
                    let mut b = k.clone();
                    b.push(0x00);
                    b
                }
                None => all.0.clone(),
            };
            page = t.range(&begin, &all.1, KEYS_PER_TRANSACTION, false)?;
            Ok(())
        })?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        // One transaction per page, split where it grows past the byte budget.
        let mut start = 0;
        while start < page.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < page.len() && (end == start || bytes < BYTES_PER_TRANSACTION) {
                bytes += page[end].0.len() + page[end].1.len();
                end += 1;
            }
            let part = &page[start..end];
            to.transact(&mut |t| {
                for (key, value) in part {
                    if value.len() > MAX_VALUE_BYTES && is_event_key(key) {
                        keys::set_event(t, &keys::decode_event(value)?)?;
                    } else {
                        t.set(key, value)?;
                    }
                }
                Ok(())
            })?;
            start = end;
        }
        copied += page.len() as u64;
        progress(copied);
    }
    let source = census(from)?;
    let copy = census(to)?;
    if source != copy {
        return Err(CopyError::Mismatch(describe_difference(&source, &copy)));
    }
    Ok(copy)
}

/// Counts what `store`'s event log holds.
pub fn census(store: &dyn Store) -> Result<Census, StoreError> {
    let mut census = Census::default();
    let mut after: Option<Vec<u8>> = None;
    let mut digest: Option<Digest> = None;
    loop {
        let mut page = Vec::new();
        store.read(&mut |t| {
            let begin = match &after {
                Some(k) => {
                    let mut b = k.clone();
                    b.push(0x00);
                    b
                }
                None => vec![0x00],
            };
            page = t.range(&begin, &[0xff], 1000, false)?;
            Ok(())
        })?;
        let Some((last, _)) = page.last() else {
            finish(&mut census, &mut digest);
            return Ok(census);
        };
        after = Some(last.clone());
        for (key, value) in &page {
            let Ok(parts) = unpack(key) else { continue };
            // An event's bytes (whole, or its chunks in order) go into its conversation's
            // digest; a chunked event's head does not.
            if let (Some(Value::Str(p)), Some(Value::Str(conv))) = (parts.first(), parts.get(1))
                && p == keys::EVENTS
            {
                if digest.as_ref().is_none_or(|(c, _)| c != conv) {
                    finish(&mut census, &mut digest);
                    digest = Some((conv.clone(), std::hash::DefaultHasher::new()));
                }
                if parts.len() == 4 || !keys::is_chunked_head(value) {
                    digest.as_mut().expect("set above").1.write(value);
                }
            }
            match (parts.first(), parts.len()) {
                (Some(Value::Str(p)), 3) if p == keys::EVENTS => census.events += 1,
                (Some(Value::Str(p)), 2) if p == keys::META => {
                    if let Some(Value::Str(conv)) = parts.get(1) {
                        census
                            .conversations
                            .insert(conv.clone(), keys::decode_u64(value));
                    }
                }
                (Some(Value::Str(p)), _) if p == keys::IDEM => census.idempotency_keys += 1,
                (Some(Value::Str(p)), _) if p == keys::EXEC => census.open_execs += 1,
                _ => {}
            }
        }
    }
}

/// A conversation's digest in the making.
type Digest = (String, std::hash::DefaultHasher);

/// Records the digest in the making, if any.
fn finish(census: &mut Census, digest: &mut Option<Digest>) {
    if let Some((conv, hasher)) = digest.take() {
        census.digests.insert(conv, hasher.finish());
    }
}

fn is_event_key(key: &[u8]) -> bool {
    matches!(unpack(key), Ok(parts) if parts.len() == 3 && parts[0] == Value::Str(keys::EVENTS.into()))
}

fn has_log_records(store: &dyn Store) -> Result<bool, StoreError> {
    let (begin, end) = crate::store::tuple::range(&[Elem::Str(keys::LOG)]);
    let mut any = false;
    store.read(&mut |t| {
        any = !t.range(&begin, &end, 1, false)?.is_empty();
        Ok(())
    })?;
    Ok(any)
}

/// Whether `store` holds any key but the controller lease.
fn any_key(store: &dyn Store) -> Result<bool, StoreError> {
    let lease = crate::store::lease::key();
    let mut any = false;
    store.read(&mut |t| {
        any = t
            .range(&[0x00], &[0xff], 2, false)?
            .iter()
            .any(|(k, _)| *k != lease);
        Ok(())
    })?;
    Ok(any)
}

fn describe_difference(source: &Census, copy: &Census) -> String {
    let mut out = Vec::new();
    for (conv, digest) in &source.digests {
        if copy.digests.get(conv) != Some(digest) {
            out.push(format!("{conv}: its events differ"));
        }
    }
    if source.events != copy.events {
        out.push(format!("events {} vs {}", source.events, copy.events));
    }
    if source.idempotency_keys != copy.idempotency_keys {
        out.push(format!(
            "idempotency records {} vs {}",
            source.idempotency_keys, copy.idempotency_keys
        ));
    }
    if source.open_execs != copy.open_execs {
        out.push(format!(
            "open execs {} vs {}",
            source.open_execs, copy.open_execs
        ));
    }
    for (conv, last) in &source.conversations {
        match copy.conversations.get(conv) {
            Some(l) if l == last => {}
            Some(l) => out.push(format!("{conv}: last seq {last} vs {l}")),
            None => out.push(format!("{conv}: missing")),
        }
    }
    if copy.conversations.len() > source.conversations.len() {
        out.push(format!(
            "{} conversations vs {}",
            source.conversations.len(),
            copy.conversations.len()
        ));
    }
    out.join("; ")
}
