//! Which exec holds a conversation: at most one runs (or waits for an approval) at a time.
//!
//! [`ExecClaims`] is the seam: on one node the claims live in memory ([`LocalClaims`]); when
//! execs move between nodes they become leases in the store, with the same compare-and-set
//! contract.

use std::collections::HashMap;
use std::sync::Mutex;

/// What holds a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This exec runs in it (or waits in it for an approval).
    Exec(String),
    /// It is being deleted: no exec may start meanwhile.
    Deleting,
}

/// The claims of conversations, with compare-and-set semantics so that two callers racing for
/// one conversation cannot both win.
#[async_trait::async_trait]
pub trait ExecClaims: Send + Sync + 'static {
    /// What holds `conversation` now, if anything.
    async fn holder(&self, conversation: &str) -> Option<Claim>;
    /// Makes `claim` the holder of `conversation` if its holder is still `expected`; returns
    /// whether it did.
    async fn take(&self, conversation: &str, expected: Option<&Claim>, claim: Claim) -> bool;
    /// Lets `conversation` go if `claim` still holds it (another claim may have taken its
    /// place meanwhile).
    async fn release(&self, conversation: &str, claim: &Claim);
}

/// Claims held in this process's memory: right for a node that is the only one running execs.
#[derive(Default)]
pub struct LocalClaims {
    held: Mutex<HashMap<String, Claim>>,
}

#[async_trait::async_trait]
impl ExecClaims for LocalClaims {
    async fn holder(&self, conversation: &str) -> Option<Claim> {
        self.held.lock().expect("claims").get(conversation).cloned()
    }

    async fn take(&self, conversation: &str, expected: Option<&Claim>, claim: Claim) -> bool {
        let mut held = self.held.lock().expect("claims");
        if held.get(conversation) != expected {
            return false;
        }
        held.insert(conversation.to_string(), claim);
        true
    }

    async fn release(&self, conversation: &str, claim: &Claim) {
        let mut held = self.held.lock().expect("claims");
        if held.get(conversation) == Some(claim) {
            held.remove(conversation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_claim_is_taken_only_from_the_expected_holder_and_released_only_by_itself() {
        let claims = LocalClaims::default();
        let a = Claim::Exec("a".into());
        let b = Claim::Exec("b".into());
        assert!(claims.take("c", None, a.clone()).await);
        assert!(!claims.take("c", None, b.clone()).await, "held by a");
        assert!(claims.take("c", Some(&a), b.clone()).await);
        claims.release("c", &a).await;
        assert_eq!(
            claims.holder("c").await,
            Some(b.clone()),
            "a no longer holds it"
        );
        claims.release("c", &b).await;
        assert_eq!(claims.holder("c").await, None);
    }
}
