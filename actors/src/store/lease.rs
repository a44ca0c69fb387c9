//! The controller lease: which node may write the event log, until when, under which epoch.
//!
//! The lease is one key in the store, `("lease", "controller")`, holding the node, the epoch
//! and the expiry. The rules:
//!
//! - A candidate takes the lease only when there is none, when it has expired, or when it
//!   names the candidate itself (a restarted node need not wait out its last run's lease), and
//!   then always with the epoch + 1.
//! - The holder renews it (the same epoch, a later expiry) well before it expires
//!   ([`RENEW_EVERY`] of the TTL).
//! - Every write of the controller goes through a [`FencedStore`], whose transactions read the
//!   lease key first and refuse to write unless it still names the holder's node and epoch.
//!   On FoundationDB that read is a read conflict: a transaction in flight while another node
//!   takes the lease fails to commit, runs again, sees the new lease and is refused with
//!   [`StoreError::Fenced`]. So no write of a deposed controller lands, whatever the clocks say.
//!
//! Clocks only decide *when* a candidate may take an expired lease (liveness); the epoch check
//! decides *whether* a write lands (safety). Each claim writes a random token (a renewal keeps
//! it), so that a claim whose commit had an unknown result and runs again recognises its own
//! write instead of taking the lease a second time.

use std::time::Duration;

use super::tuple::{Elem, pack};
use super::{Store, StoreError, Txn};

/// The share of the TTL after which the holder renews: a third, so two renewals can fail
/// before the lease expires.
pub const RENEW_EVERY: f64 = 1.0 / 3.0;

/// The controller lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node that holds it.
    pub node: String,
    /// Its epoch: one more with every change of holder (or restart of the holder).
    pub epoch: u64,
    /// When it expires unless renewed (Unix time, milliseconds).
    pub expires_unix_ms: u64,
    /// A random token of the claim that took it.
    token: u64,
}

/// What [`claim`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The candidate holds the lease now, under a new epoch.
    Took(Lease),
    /// Another node holds it and it has not expired.
    Held(Lease),
}

/// What [`renew`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still the holder, until the new expiry.
    Renewed(Lease),
    /// Another node (or a later run of this one) took the lease: the holder is deposed.
    Lost(Lease),
}

/// The key of the lease.
pub fn key() -> Vec<u8> {
    pack(&[Elem::Str("lease"), Elem::Str("controller")])
}

/// The lease as it is now, if any node ever took it.
pub fn current(store: &dyn Store) -> Result<Option<Lease>, StoreError> {
    let mut lease = None;
    store.read(&mut |t| {
        lease = read(t)?;
        Ok(())
    })?;
    Ok(lease)
}

/// `node` tries to take the lease for `ttl` from `now_unix_ms` on.
pub fn claim(
    store: &dyn Store,
    node: &str,
    ttl: Duration,
    now_unix_ms: u64,
) -> Result<Claim, StoreError> {
    let token = rand::random::<u64>();
    let mut claim = None;
    store.transact(&mut |t| {
        let current = read(t)?;
        claim = Some(match current {
            // This claim's own write, read again after an unknown commit result.
            Some(lease) if lease.token == token => Claim::Took(lease),
            Some(lease) if lease.node != node && lease.expires_unix_ms > now_unix_ms => {
                Claim::Held(lease)
            }
            current => {
                let lease = Lease {
                    node: node.to_string(),
                    epoch: current.map_or(0, |l| l.epoch) + 1,
                    expires_unix_ms: now_unix_ms + ttl.as_millis() as u64,
                    token,
                };
                write(t, &lease)?;
                Claim::Took(lease)
            }
        });
        Ok(())
    })?;
    Ok(claim.expect("the claim's transaction ran"))
}

/// The holder of `held` extends it to `ttl` from `now_unix_ms`, if it still holds it.
pub fn renew(
    store: &dyn Store,
    held: &Lease,
    ttl: Duration,
    now_unix_ms: u64,
) -> Result<Renewal, StoreError> {
    let mut renewal = None;
    store.transact(&mut |t| {
        renewal = Some(match read(t)? {
            Some(lease) if lease.node == held.node && lease.epoch == held.epoch => {
                let lease = Lease {
                    expires_unix_ms: now_unix_ms + ttl.as_millis() as u64,
                    ..lease
                };
                write(t, &lease)?;
                Renewal::Renewed(lease)
            }
            Some(lease) => Renewal::Lost(lease),
            None => Renewal::Lost(Lease {
                node: String::new(),
                epoch: 0,
                expires_unix_ms: 0,
                token: 0,
            }),
        });
        Ok(())
    })?;
    Ok(renewal.expect("the renewal's transaction ran"))
}

/// The holder gives the lease up (a node stopping cleanly): it expires now, so a candidate
/// takes it at its next try instead of after the TTL. Nothing happens if it is not held.
pub fn release(store: &dyn Store, held: &Lease) -> Result<(), StoreError> {
    store.transact(&mut |t| match read(t)? {
        Some(lease) if lease.node == held.node && lease.epoch == held.epoch => write(
            t,
            &Lease {
                expires_unix_ms: 0,
                ..lease
            },
        ),
        _ => Ok(()),
    })
}

/// A store whose writes land only while `lease` is still the one in the store (see the
/// module's docs); reads pass through.
pub struct FencedStore {
    inner: std::sync::Arc<dyn Store>,
    node: String,
    epoch: u64,
}

impl FencedStore {
    /// The controller's writes under `lease` (node and epoch; the expiry is not checked).
    pub fn new(inner: std::sync::Arc<dyn Store>, lease: &Lease) -> Self {
        Self {
            inner,
            node: lease.node.clone(),
            epoch: lease.epoch,
        }
    }
}

impl Store for FencedStore {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.transact(&mut |t| {
            match read(t)? {
                Some(lease) if lease.node == self.node && lease.epoch == self.epoch => {}
                Some(lease) => {
                    return Err(StoreError::Fenced {
                        controller: lease.node,
                        epoch: lease.epoch,
                    });
                }
                None => {
                    return Err(StoreError::Fenced {
                        controller: String::new(),
                        epoch: 0,
                    });
                }
            }
            f(t)
        })
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.read(f)
    }
}

/// The lease in `t`, if any.
fn read(t: &mut dyn Txn) -> Result<Option<Lease>, StoreError> {
    t.get(&key())?.map(|v| decode(&v)).transpose()
}

fn write(t: &mut dyn Txn, lease: &Lease) -> Result<(), StoreError> {
    t.set(&key(), &encode(lease))
}

/// Epoch, expiry and token (u64 each, big-endian), then the node's name.
fn encode(lease: &Lease) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + lease.node.len());
    out.extend_from_slice(&lease.epoch.to_be_bytes());
    out.extend_from_slice(&lease.expires_unix_ms.to_be_bytes());
    out.extend_from_slice(&lease.token.to_be_bytes());
    out.extend_from_slice(lease.node.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<Lease, StoreError> {
    let u64_at = |i: usize| {
        bytes
            .get(i..i + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| StoreError::Io("corrupt controller lease".into()))
    };
    Ok(Lease {
        epoch: u64_at(0)?,
        expires_unix_ms: u64_at(8)?,
        token: u64_at(16)?,
        node: String::from_utf8_lossy(&bytes[24..]).into_owned(),
    })
}
