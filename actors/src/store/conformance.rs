//! The conformance suite every [`Store`] backend must pass (embedded SQLite here; the
//! FoundationDB backend runs the same checks). Each check panics with what went wrong.

use std::sync::Arc;

use super::tuple::{Elem, pack, range};
use super::{MAX_KEY_BYTES, MAX_TRANSACTION_BYTES, MAX_VALUE_BYTES, Store, StoreError, Txn};

/// A backend under test.
pub trait Backend {
    /// A new, empty store.
    fn fresh(&mut self) -> Arc<dyn Store>;
    /// Opens again the store last returned by [`Backend::fresh`], after the caller dropped it.
    fn reopen(&mut self) -> Arc<dyn Store>;
}

/// Runs every check.
pub fn run_all(backend: &mut dyn Backend) {
    set_get_clear(backend.fresh().as_ref());
    range_reads_are_ordered(backend.fresh().as_ref());
    clear_range_clears_exactly_the_range(backend.fresh().as_ref());
    reads_see_own_writes(backend.fresh().as_ref());
    failed_transactions_write_nothing(backend.fresh().as_ref());
    oversized_transactions_are_refused(backend.fresh().as_ref());
    oversized_keys_and_values_are_refused(backend.fresh().as_ref());
    reads_cannot_write(backend.fresh().as_ref());
    committed_data_survives_reopen(backend);
}

fn key(conv: &str, seq: u64) -> Vec<u8> {
    pack(&[Elem::Str("conv"), Elem::Str(conv), Elem::Int(seq)])
}

fn write(store: &dyn Store, f: impl Fn(&mut dyn Txn) -> Result<(), StoreError>) {
    store.transact(&mut |t| f(t)).expect("transaction commits");
}

fn get(store: &dyn Store, k: &[u8]) -> Option<Vec<u8>> {
    let mut out = None;
    store
        .read(&mut |t| {
            out = t.get(k)?;
            Ok(())
        })
        .expect("read");
    out
}

fn scan(store: &dyn Store, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    store
        .read(&mut |t| {
            out = t
                .range(begin, end, limit, reverse)?
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            Ok(())
        })
        .expect("range read");
    out
}

/// `set` then `get` reads the value back, `set` overwrites, `clear` removes, and an empty
/// value is a value.
pub fn set_get_clear(store: &dyn Store) {
    write(store, |t| t.set(b"k", b"v1"));
    assert_eq!(
        get(store, b"k").as_deref(),
        Some(&b"v1"[..]),
        "get after set"
    );
    write(store, |t| t.set(b"k", b"v2"));
    assert_eq!(
        get(store, b"k").as_deref(),
        Some(&b"v2"[..]),
        "set overwrites"
    );
    write(store, |t| t.clear(b"k"));
    assert_eq!(get(store, b"k"), None, "clear removes");
    write(store, |t| t.set(b"empty", b""));
    assert_eq!(
        get(store, b"empty").as_deref(),
        Some(&b""[..]),
        "empty values are values"
    );
}

/// Range reads follow tuple order (integers numerically), with a limit, in reverse, begin
/// inclusive and end exclusive.
pub fn range_reads_are_ordered(store: &dyn Store) {
    // Insert out of order; integers must sort numerically, conversations must not mix.
    write(store, |t| {
        for seq in [3u64, 1, 300, 2, 70_000] {
            t.set(&key("a", seq), seq.to_string().as_bytes())?;
        }
        t.set(&key("ab", 1), b"other")?;
        t.set(&key("", 5), b"before")
    });
    let (b, e) = range(&[Elem::Str("conv"), Elem::Str("a")]);
    assert_eq!(
        scan(store, &b, &e, 100, false),
        [&b"1"[..], b"2", b"3", b"300", b"70000"],
        "ascending range in tuple order"
    );
    assert_eq!(scan(store, &b, &e, 2, false), [&b"1"[..], b"2"], "limit");
    assert_eq!(
        scan(store, &b, &e, 2, true),
        [&b"70000"[..], b"300"],
        "reverse with limit"
    );
    assert_eq!(
        scan(store, &key("a", 2), &key("a", 300), 100, false),
        [&b"2"[..], b"3"],
        "begin inclusive, end exclusive"
    );
    assert!(
        scan(store, &key("zz", 0), &key("zz", 9), 100, false).is_empty(),
        "empty range"
    );
}

/// `clear_range` clears the keys in `[begin, end)` and nothing else.
pub fn clear_range_clears_exactly_the_range(store: &dyn Store) {
    write(store, |t| {
        for seq in 1..=5 {
            t.set(&key("c", seq), b"x")?;
        }
        t.set(&key("d", 1), b"y")
    });
    write(store, |t| t.clear_range(&key("c", 2), &key("c", 4)));
    let (b, e) = range(&[Elem::Str("conv"), Elem::Str("c")]);
    assert_eq!(
        scan(store, &b, &e, 100, false).len(),
        3,
        "2 and 3 cleared, 1, 4, 5 kept"
    );
    assert_eq!(
        get(store, &key("d", 1)).as_deref(),
        Some(&b"y"[..]),
        "outside the range kept"
    );
}

/// A transaction reads its own sets and clears.
pub fn reads_see_own_writes(store: &dyn Store) {
    write(store, |t| t.set(b"base", b"1"));
    store
        .transact(&mut |t| {
            t.set(b"mine", b"2")?;
            assert_eq!(
                t.get(b"mine")?.as_deref(),
                Some(&b"2"[..]),
                "own write visible"
            );
            t.clear(b"base")?;
            assert_eq!(t.get(b"base")?, None, "own clear visible");
            Ok(())
        })
        .unwrap();
}

/// A transaction whose closure fails writes nothing.
pub fn failed_transactions_write_nothing(store: &dyn Store) {
    let err = store.transact(&mut |t| {
        t.set(b"half", b"written")?;
        t.set(&key("e", 1), b"x")?;
        Err(StoreError::Aborted("caller gave up".into()))
    });
    assert_eq!(err, Err(StoreError::Aborted("caller gave up".into())));
    assert_eq!(
        get(store, b"half"),
        None,
        "an aborted transaction leaves nothing"
    );
    assert_eq!(
        get(store, &key("e", 1)),
        None,
        "an aborted transaction leaves nothing"
    );
}

/// A transaction over `MAX_TRANSACTION_BYTES` fails with `TooLarge` and writes nothing.
pub fn oversized_transactions_are_refused(store: &dyn Store) {
    let chunk = vec![7u8; MAX_VALUE_BYTES];
    let result = store.transact(&mut |t| {
        for i in 0..(MAX_TRANSACTION_BYTES / chunk.len() + 2) as u64 {
            t.set(&key("big", i), &chunk)?;
        }
        Ok(())
    });
    assert!(
        matches!(result, Err(StoreError::TooLarge { .. })),
        "a transaction over {MAX_TRANSACTION_BYTES} bytes is refused, got {result:?}"
    );
    assert_eq!(
        get(store, &key("big", 0)),
        None,
        "and none of it is written"
    );
}

/// A write in a read fails with `ReadOnly` and writes nothing.
pub fn reads_cannot_write(store: &dyn Store) {
    let result = store.read(&mut |t| t.set(b"sneaky", b"x"));
    assert_eq!(result, Err(StoreError::ReadOnly));
    assert_eq!(get(store, b"sneaky"), None);
}

/// Committed keys are all there after the store is dropped and opened again.
pub fn committed_data_survives_reopen(backend: &mut dyn Backend) {
    let store = backend.fresh();
    write(store.as_ref(), |t| {
        for seq in 1..=100 {
            t.set(&key("durable", seq), &seq.to_be_bytes())?;
        }
        Ok(())
    });
    drop(store);
    let store = backend.reopen();
    let (b, e) = range(&[Elem::Str("conv"), Elem::Str("durable")]);
    assert_eq!(
        scan(store.as_ref(), &b, &e, 1000, false).len(),
        100,
        "all committed keys after reopen"
    );
}

/// Keys over [`MAX_KEY_BYTES`] and values over [`MAX_VALUE_BYTES`] are refused with errors
/// that give their size, and their transaction writes nothing; values of exactly the limit
/// are stored.
pub fn oversized_keys_and_values_are_refused(store: &dyn Store) {
    let at_limit = vec![1u8; MAX_VALUE_BYTES];
    write(store, |t| t.set(&key("limit", 1), &at_limit));
    assert_eq!(
        get(store, &key("limit", 1)).map(|v| v.len()),
        Some(MAX_VALUE_BYTES)
    );
    let result = store.transact(&mut |t| {
        t.set(&key("limit", 2), b"x")?;
        t.set(&key("limit", 3), &vec![1u8; MAX_VALUE_BYTES + 1])
    });
    assert_eq!(
        result,
        Err(StoreError::ValueTooLarge {
            bytes: MAX_VALUE_BYTES + 1
        })
    );
    assert_eq!(
        get(store, &key("limit", 2)),
        None,
        "nothing of it is written"
    );
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let result = store.transact(&mut |t| t.set(&long_key, b"v"));
    assert_eq!(
        result,
        Err(StoreError::KeyTooLarge {
            bytes: MAX_KEY_BYTES + 1
        })
    );
}
