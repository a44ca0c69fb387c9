//! Where a logical actor lives in a cluster: its home node, kept in the event log so that two
//! nodes never activate the same actor, and the choice of a home for an actor that has none.
//!
//! Each actor's homes are the conversation `cadre.placement.ACTOR`, one `ActivationClaimed`
//! event per epoch. A node claims epoch N + 1 after reading epoch N, with the idempotency key
//! `epoch-{N+1}`: the controller writes the first claim of an epoch and answers every later
//! one as a duplicate, so of two nodes claiming at once exactly one wins, and the other reads
//! who did. An actor keeps its home while that node is up (its passive state is kept there);
//! it moves only when its home is down, on its next use.

use std::collections::HashMap;
use std::sync::Arc;

use cadre_proto::v1::{ActivationClaimed, Event, event};

use crate::event_log::{AppendError, AppendRequest, EventLog, NewEvent};
use crate::placement::{Isolation, LogicalActor};
use crate::store::StoreError;

/// The conversations of actors' homes start with this.
pub const HOMES_PREFIX: &str = "cadre.placement.";

/// An actor's home from an epoch on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The node that activates it.
    pub node: String,
    /// Grows by one with each move.
    pub epoch: u64,
    /// The actor's tenant, as its first claim gave it: it never changes.
    pub tenant: String,
}

/// The log's record of actors' homes.
#[derive(Clone)]
pub struct Homes {
    log: Arc<dyn EventLog>,
}

/// How much room a node has for new activations, as its heartbeats tell it.
#[derive(Debug, Clone, Copy)]
pub struct Room<'a> {
    /// The node's name.
    pub node: &'a str,
    /// Sandboxes it may still start.
    pub free_sandboxes: u32,
    /// Free slots in its shared sandboxes, by tenant.
    pub free_slots: &'a HashMap<String, u32>,
}

impl Homes {
    /// Homes recorded in `log`.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log }
    }

    /// The conversation of `actor_id`'s homes.
    pub fn conversation(actor_id: &str) -> String {
        format!("{HOMES_PREFIX}{actor_id}")
    }

    /// `actor_id`'s home now, if it has one.
    pub async fn home(&self, actor_id: &str) -> Result<Option<Home>, StoreError> {
        let conversation = Self::conversation(actor_id);
        let Some(last) = self.log.last_seq(&conversation).await? else {
            return Ok(None);
        };
        self.home_at(&conversation, last).await
    }

    /// The home recorded at `seq` of `conversation`.
    async fn home_at(&self, conversation: &str, seq: u64) -> Result<Option<Home>, StoreError> {
        let events = self
            .log
            .read(conversation, seq.saturating_sub(1), 1)
            .await?;
        Ok(events.first().and_then(home_of))
    }

    /// Makes `node` the home of `actor` after `seen` (the home it replaces; `None` for an
    /// actor without one), giving `reason`. Returns the home the actor has then: `node`'s, or
    /// that of a node that claimed the same epoch first.
    pub async fn claim(
        &self,
        actor: &LogicalActor,
        node: &str,
        seen: Option<&Home>,
        reason: &str,
    ) -> Result<Home, AppendError> {
        let epoch = seen.map_or(0, |h| h.epoch) + 1;
        let conversation = Self::conversation(&actor.id);
        let request = AppendRequest {
            conversation_id: conversation.clone(),
            events: vec![NewEvent {
                exec_id: String::new(),
                kind: event::Kind::ActivationClaimed(ActivationClaimed {
                    actor_id: actor.id.clone(),
                    tenant: actor.tenant.clone(),
                    node: node.to_string(),
                    epoch,
                    reason: reason.to_string(),
                }),
            }],
            idempotency_key: Some(format!("epoch-{epoch}")),
            open_exec: None,
            owner: None,
        };
        let appended = self.log.append(request).await?;
        if !appended.duplicate {
            return Ok(Home {
                node: node.to_string(),
                epoch,
                tenant: actor.tenant.clone(),
            });
        }
        let won = self
            .home_at(&conversation, appended.first_seq)
            .await
            .map_err(AppendError::Store)?;
        won.ok_or_else(|| {
            AppendError::Store(StoreError::Io(format!(
                "{conversation}: seq {} holds no home",
                appended.first_seq
            )))
        })
    }
}

/// The home an event records, if it records one.
fn home_of(event: &Event) -> Option<Home> {
    match &event.kind {
        Some(event::Kind::ActivationClaimed(c)) => Some(Home {
            node: c.node.clone(),
            epoch: c.epoch,
            tenant: c.tenant.clone(),
        }),
        _ => None,
    }
}

/// The node a new activation of `actor` goes to, of `nodes` (the node choosing first): the
/// first with a free slot in one of the tenant's shared sandboxes (for a shared actor), else
/// the one that may start the most sandboxes, else the node choosing (the activation waits
/// for room there, as on one node).
pub fn home_for<'a>(actor: &LogicalActor, nodes: &[Room<'a>]) -> Option<&'a str> {
    let shared = actor.isolation == Isolation::Shared;
    let slot = nodes.iter().find(|room| {
        shared
            && room
                .free_slots
                .get(&actor.tenant)
                .is_some_and(|free| *free > 0)
    });
    let sandbox = || {
        nodes
            .iter()
            .filter(|room| room.free_sandboxes > 0)
            .max_by_key(|room| room.free_sandboxes)
    };
    slot.or_else(sandbox)
        .or(nodes.first())
        .map(|room| room.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(tenant: &str, isolation: Isolation) -> LogicalActor {
        LogicalActor {
            id: "a".into(),
            tenant: tenant.into(),
            isolation,
        }
    }

    #[test]
    fn a_new_home_has_a_slot_for_the_tenant_else_room_for_a_sandbox_else_is_the_chooser() {
        let none = HashMap::new();
        let t1: HashMap<String, u32> = [("t1".to_string(), 3)].into();
        let full: HashMap<String, u32> = [("t1".to_string(), 0)].into();
        let room = |node, free_sandboxes, free_slots| Room {
            node,
            free_sandboxes,
            free_slots,
        };
        let shared = actor("t1", Isolation::Shared);
        // The chooser first when it has a slot.
        let nodes = [room("me", 0, &t1), room("b", 5, &t1)];
        assert_eq!(home_for(&shared, &nodes), Some("me"));
        // Another node's slot before any new sandbox.
        let nodes = [room("me", 2, &full), room("b", 0, &t1), room("c", 4, &none)];
        assert_eq!(home_for(&shared, &nodes), Some("b"));
        // No slot anywhere: the node that may start the most sandboxes.
        let nodes = [
            room("me", 1, &none),
            room("b", 0, &none),
            room("c", 4, &none),
        ];
        assert_eq!(home_for(&shared, &nodes), Some("c"));
        // An exclusive actor needs a sandbox of its own: slots do not count.
        let exclusive = actor("t1", Isolation::Exclusive);
        let nodes = [room("me", 0, &t1), room("b", 1, &none)];
        assert_eq!(home_for(&exclusive, &nodes), Some("b"));
        // No room anywhere: the chooser, whose placement queues it.
        let nodes = [room("me", 0, &full), room("b", 0, &none)];
        assert_eq!(home_for(&shared, &nodes), Some("me"));
        assert_eq!(home_for(&shared, &[]), None);
    }
}
