//! A [`Store`] that fails the way FoundationDB does, for testing everything above the store
//! seam (the controller's appends, retries and idempotency, the controller lease) without a
//! FoundationDB server: wrap the embedded store in CI, or the FoundationDB store itself.
//!
//! FoundationDB's client retries a transaction that conflicted (`not_committed`), whose commit
//! outcome is unknown (`commit_unknown_result`) or that lasted too long
//! (`transaction_too_old`), by running the transaction's closure again, until a retry limit;
//! `FdbStore` does the same. So a fault here is what a caller of [`Store::transact`] can see:
//!
//! - a **conflict** or an **unknown result with nothing committed**: `f` ran, its writes are
//!   discarded, and `f` runs again;
//! - an **unknown result after a real commit**: `f`'s writes are committed, and `f` runs again
//!   over them (so every transaction must be idempotent);
//! - **giving up** after such a fault: [`StoreError::CommitUnknown`] (after a commit, or not)
//!   or [`StoreError::Unavailable`] (conflicts), as when the retry limit runs out;
//! - **too old**: `f` took longer than [`MAX_TRANSACTION_TIME`] (or [`FaultyStore::with_max_time`]);
//! - **too large**: keys, values and transactions over FoundationDB's limits are refused, as
//!   FoundationDB refuses them (`key_too_large`, `value_too_large`, `transaction_too_large`).
//!
//! Faults are drawn from a seeded generator, so a failing run names its seed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Kv, MAX_TRANSACTION_TIME, Store, StoreError, Txn, WriteBudget};

/// How often each fault happens, per transaction (each a probability in `[0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultRates {
    /// A conflict: the attempt is discarded and retried.
    pub conflict: f64,
    /// The commit's outcome is unknown and it did commit; the closure runs again.
    pub unknown_committed: f64,
    /// The commit's outcome is unknown and it did not commit; the closure runs again.
    pub unknown_not_committed: f64,
    /// After a fault, the retries run out and the caller gets the error.
    pub give_up: f64,
}

impl FaultRates {
    /// No faults: the wrapper only enforces FoundationDB's limits.
    pub const NONE: Self = Self {
        conflict: 0.0,
        unknown_committed: 0.0,
        unknown_not_committed: 0.0,
        give_up: 0.0,
    };

    /// Every fault often: a fifth of the transactions meet one, and a quarter of those fail.
    pub const HARSH: Self = Self {
        conflict: 0.08,
        unknown_committed: 0.06,
        unknown_not_committed: 0.06,
        give_up: 0.25,
    };
}

/// How many faults of each kind a [`FaultyStore`] injected.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Conflicts.
    pub conflicts: AtomicU64,
    /// Unknown results after a commit.
    pub unknown_committed: AtomicU64,
    /// Unknown results with nothing committed.
    pub unknown_not_committed: AtomicU64,
    /// Errors returned to the caller (retries given up).
    pub given_up: AtomicU64,
}

/// A store whose transactions meet FoundationDB's faults at [`FaultRates`].
pub struct FaultyStore<S: ?Sized> {
    rates: FaultRates,
    /// How long a transaction may take ([`MAX_TRANSACTION_TIME`] unless a test shortens it).
    max_time: std::time::Duration,
    rng: Mutex<StdRng>,
    /// What was injected so far.
    pub counts: FaultCounts,
    inner: std::sync::Arc<S>,
}

/// The most attempts of one transaction before it gives up, as a retry limit does.
const MAX_ATTEMPTS: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Conflict,
    UnknownCommitted,
    UnknownNotCommitted,
}

impl<S: Store + ?Sized> FaultyStore<S> {
    /// Wraps `inner`; `seed` fixes the sequence of faults.
    pub fn new(inner: std::sync::Arc<S>, rates: FaultRates, seed: u64) -> Self {
        Self {
            rates,
            max_time: MAX_TRANSACTION_TIME,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counts: FaultCounts::default(),
            inner,
        }
    }

    /// Transactions longer than `max_time` fail with [`StoreError::TooOld`] (FoundationDB's
    /// 5 s, unless a test wants it sooner).
    pub fn with_max_time(mut self, max_time: std::time::Duration) -> Self {
        self.max_time = max_time;
        self
    }

    /// The next attempt's fault, if any, and whether the retries give up after it.
    fn draw(&self) -> (Option<Fault>, bool) {
        let mut rng = self.rng.lock().expect("fault generator");
        let r = &self.rates;
        let x: f64 = rng.random();
        let fault = if x < r.conflict {
            Some(Fault::Conflict)
        } else if x < r.conflict + r.unknown_committed {
            Some(Fault::UnknownCommitted)
        } else if x < r.conflict + r.unknown_committed + r.unknown_not_committed {
            Some(Fault::UnknownNotCommitted)
        } else {
            None
        };
        let give_up = fault.is_some() && rng.random::<f64>() < r.give_up;
        (fault, give_up)
    }

    /// Runs `f` on `t` held to FoundationDB's limits: its writes, and its time since `started`.
    fn limited(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
        t: &mut dyn Txn,
        started: Instant,
    ) -> Result<(), StoreError> {
        f(&mut Limited {
            inner: t,
            budget: WriteBudget::default(),
        })?;
        if started.elapsed() > self.max_time {
            return Err(StoreError::TooOld);
        }
        Ok(())
    }

    fn count(&self, fault: Fault) {
        let counter = match fault {
            Fault::Conflict => &self.counts.conflicts,
            Fault::UnknownCommitted => &self.counts.unknown_committed,
            Fault::UnknownNotCommitted => &self.counts.unknown_not_committed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why an attempt was rolled back on purpose.
const INJECTED: &str = "injected fault: attempt discarded";

impl<S: Store + ?Sized> Store for FaultyStore<S> {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Once an attempt may have committed, a later failure is no proof that nothing was
        // written: it is reported as an unknown result, as FdbStore does.
        let mut maybe_committed = false;
        let unknown = |e: StoreError, maybe_committed: bool| match e {
            e @ StoreError::CommitUnknown(_) => e,
            e if maybe_committed => StoreError::CommitUnknown(format!(
                "an earlier attempt's commit may have landed, then: {e}"
            )),
            e => e,
        };
        for _ in 0..MAX_ATTEMPTS {
            let (fault, give_up) = self.draw();
            let started = Instant::now();
            let mut attempt = |t: &mut dyn Txn| self.limited(f, t, started);
            match fault {
                None => {
                    return self
                        .inner
                        .transact(&mut attempt)
                        .map_err(|e| unknown(e, maybe_committed));
                }
                Some(Fault::UnknownCommitted) => self
                    .inner
                    .transact(&mut attempt)
                    .map_err(|e| unknown(e, maybe_committed))?,
                Some(Fault::Conflict | Fault::UnknownNotCommitted) => {
                    match self.inner.transact(&mut |t| {
                        attempt(t)?;
                        Err(StoreError::Aborted(INJECTED.into()))
                    }) {
                        Err(StoreError::Aborted(why)) if why == INJECTED => {}
                        // The closure's own error ends the transaction, as on FoundationDB.
                        Err(e) => return Err(unknown(e, maybe_committed)),
                        Ok(()) => unreachable!("an injected abort always aborts"),
                    }
                }
            }
            let fault = fault.expect("a fault was injected");
            self.count(fault);
            maybe_committed |= fault != Fault::Conflict;
            if give_up {
                self.counts.given_up.fetch_add(1, Ordering::Relaxed);
                return Err(match fault {
                    Fault::Conflict => unknown(
                        StoreError::Unavailable(
                            "not_committed: the transaction conflicted and its retries ran out"
                                .into(),
                        ),
                        maybe_committed,
                    ),
                    Fault::UnknownCommitted | Fault::UnknownNotCommitted => {
                        StoreError::CommitUnknown("injected commit_unknown_result".into())
                    }
                });
            }
        }
        Err(unknown(
            StoreError::Unavailable(format!(
                "the transaction met a fault in each of its {MAX_ATTEMPTS} attempts"
            )),
            maybe_committed,
        ))
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        self.inner.read(&mut |t| self.limited(f, t, started))
    }
}

/// A transaction held to FoundationDB's limits on keys, values and transaction size.
struct Limited<'a> {
    inner: &'a mut dyn Txn,
    budget: WriteBudget,
}

impl Txn for Limited<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Kv>, StoreError> {
        self.inner.range(begin, end, limit, reverse)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.budget.set(key, value)?;
        self.inner.set(key, value)
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.budget.clear(key)?;
        self.inner.clear(key)
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.budget.clear_range(begin, end)?;
        self.inner.clear_range(begin, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_VALUE_BYTES;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// An in-memory store with transactions (a copy of the map, swapped in on commit).
    #[derive(Default)]
    struct Memory(Mutex<BTreeMap<Vec<u8>, Vec<u8>>>);

    struct MemoryTxn<'a>(&'a mut BTreeMap<Vec<u8>, Vec<u8>>);

    impl Txn for MemoryTxn<'_> {
        fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.get(key).cloned())
        }
        fn range(
            &mut self,
            begin: &[u8],
            end: &[u8],
            limit: usize,
            reverse: bool,
        ) -> Result<Vec<Kv>, StoreError> {
            let it = self.0.range(begin.to_vec()..end.to_vec());
            let kvs: Vec<Kv> = if reverse {
                it.rev()
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                it.take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            Ok(kvs)
        }
        fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
            self.0.insert(key.to_vec(), value.to_vec());
            Ok(())
        }
        fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
            self.0.remove(key);
            Ok(())
        }
        fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
            self.0
                .retain(|k, _| k.as_slice() < begin || k.as_slice() >= end);
            Ok(())
        }
    }

    impl Store for Memory {
        fn transact(
            &self,
            f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            let mut map = self.0.lock().unwrap();
            let mut copy = map.clone();
            f(&mut MemoryTxn(&mut copy))?;
            *map = copy;
            Ok(())
        }
        fn read(
            &self,
            f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            let mut copy = self.0.lock().unwrap().clone();
            f(&mut MemoryTxn(&mut copy))
        }
    }

    fn counter(store: &dyn Store) -> u64 {
        let mut n = 0;
        store
            .read(&mut |t| {
                n = t.get(b"n")?.map_or(0, |v| v[0] as u64);
                Ok(())
            })
            .unwrap();
        n
    }

    #[test]
    fn an_unknown_result_after_a_commit_runs_the_closure_again_over_its_own_writes() {
        let rates = FaultRates {
            unknown_committed: 1.0,
            give_up: 1.0,
            ..FaultRates::NONE
        };
        let store = FaultyStore::new(Arc::new(Memory::default()), rates, 1);
        // Not idempotent on purpose: the fault shows.
        let err = store
            .transact(&mut |t| {
                let n = t.get(b"n")?.map_or(0, |v| v[0]);
                t.set(b"n", &[n + 1])
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::CommitUnknown(_)), "{err}");
        assert_eq!(
            counter(&store),
            1,
            "it committed although the caller was told it is unknown"
        );
    }

    #[test]
    fn conflicts_discard_the_attempt_and_retry() {
        let rates = FaultRates {
            conflict: 0.5,
            ..FaultRates::NONE
        };
        let store = FaultyStore::new(Arc::new(Memory::default()), rates, 7);
        let mut runs = 0;
        store
            .transact(&mut |t| {
                runs += 1;
                let n = t.get(b"n")?.map_or(0, |v| v[0]);
                t.set(b"n", &[n + 1])
            })
            .unwrap();
        assert_eq!(counter(&store), 1, "only the last attempt is committed");
        assert_eq!(
            runs as u64,
            1 + store.counts.conflicts.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn a_transaction_past_its_time_is_too_old_and_writes_nothing() {
        let store = FaultyStore::new(Arc::new(Memory::default()), FaultRates::NONE, 0)
            .with_max_time(std::time::Duration::from_millis(20));
        let err = store
            .transact(&mut |t| {
                t.set(b"n", &[1])?;
                std::thread::sleep(std::time::Duration::from_millis(40));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err, StoreError::TooOld);
        assert_eq!(counter(&store), 0);
        let err = store
            .read(&mut |t| {
                t.get(b"n")?;
                std::thread::sleep(std::time::Duration::from_millis(40));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err, StoreError::TooOld);
    }

    #[test]
    fn writes_over_foundationdbs_limits_are_refused_and_leave_nothing() {
        let store = FaultyStore::new(Arc::new(Memory::default()), FaultRates::NONE, 0);
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        let err = store
            .transact(&mut |t| {
                t.set(b"n", &[1])?;
                t.set(b"big", &big)
            })
            .unwrap_err();
        assert_eq!(err, StoreError::ValueTooLarge { bytes: big.len() });
        assert_eq!(counter(&store), 0);
        let err = store
            .transact(&mut |t| t.set(&vec![b'k'; 10_001], b"v"))
            .unwrap_err();
        assert_eq!(err, StoreError::KeyTooLarge { bytes: 10_001 });
        let chunk = vec![0u8; MAX_VALUE_BYTES];
        let err = store
            .transact(&mut |t| {
                for i in 0..101u32 {
                    t.set(&i.to_be_bytes(), &chunk)?;
                }
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    }
}
