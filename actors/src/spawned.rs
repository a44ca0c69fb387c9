//! Actors added at run time (`cadre actors spawn`) as desired state: recorded durably in the
//! node's conversation [`SPAWNED_CONVERSATION`] through the event log, and started again,
//! under the same parent and in spawn order, whenever the node starts. Stopping one
//! (`cadre actors stop`) removes it for good, with whatever was spawned under it.

use std::sync::{Arc, Mutex};

use cadre_proto::v1::{ActorRemoved, ActorSpawned, Event, event};

use crate::config::ChildConfig;
use crate::event_log::{AppendError, AppendRequest, EventLog, NewEvent, scan};
use crate::services::Services;
use crate::store::StoreError;
use crate::tree::Tree;

/// The node's conversation of spawned actors (read-only for callers, like every `cadre.*`).
pub const SPAWNED_CONVERSATION: &str = "cadre.actors";

/// One spawned actor, as it was spawned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnedSpec {
    /// The supervisor it was added to.
    pub parent: String,
    /// Its id under the parent.
    pub id: String,
    /// The child entry, in cadre.yaml's schema.
    pub spec_yaml: String,
}

/// The spawned actors of a node; cheap to clone.
#[derive(Clone)]
pub struct SpawnedActors {
    log: Arc<dyn EventLog>,
    /// The live ones, in spawn order.
    live: Arc<Mutex<Vec<SpawnedSpec>>>,
    /// Where they are recorded.
    conversation: String,
}

impl SpawnedSpec {
    /// The actor's path.
    pub fn path(&self) -> String {
        format!("{}/{}", self.parent, self.id)
    }
}

impl SpawnedActors {
    /// The spawned actors recorded in `log`, read once ([`SpawnedActors::load`]) before use.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self {
            log,
            live: Arc::default(),
            conversation: SPAWNED_CONVERSATION.to_string(),
        }
    }

    /// Those of node `node` of a cluster, recorded in `cadre.actors.NODE`: the log is the
    /// cluster's, and each node starts its own again.
    pub fn of_node(log: Arc<dyn EventLog>, node: &str) -> Self {
        Self {
            conversation: format!("{SPAWNED_CONVERSATION}.{node}"),
            ..Self::new(log)
        }
    }

    /// Reads the record: the live spawned actors, in spawn order.
    pub async fn load(&self) -> Result<Vec<SpawnedSpec>, StoreError> {
        let mut events = Vec::new();
        scan(self.log.as_ref(), &self.conversation, |e| {
            events.push(e.clone());
            true
        })
        .await?;
        let live = fold(&events);
        *self.live.lock().expect("spawned") = live.clone();
        Ok(live)
    }

    /// Starts every recorded actor again under its parent, in spawn order. One that cannot be
    /// started (its parent is gone, its spec no longer valid) is logged and kept on record.
    pub async fn restore(&self, tree: &Tree, services: &Services) -> Result<usize, StoreError> {
        let mut started = 0;
        for spec in self.load().await? {
            let path = spec.path();
            let Some((parent, flags)) = tree.supervisor(&spec.parent) else {
                tracing::error!(actor = %path, "cannot start a spawned actor again: its parent supervisor is not running");
                continue;
            };
            let child = match ChildConfig::parse(&path, &spec.spec_yaml, &flags) {
                Ok(child) => child,
                Err(e) => {
                    tracing::error!(actor = %path, error = %e, "cannot start a spawned actor again");
                    continue;
                }
            };
            match parent.start_child(child.child_spec(services)).await {
                Ok(_) => started += 1,
                Err(e) => {
                    tracing::error!(actor = %path, error = %e, "cannot start a spawned actor again")
                }
            }
        }
        Ok(started)
    }

    /// Records a just-spawned actor; acknowledged once durable.
    pub async fn record(&self, spec: SpawnedSpec) -> Result<(), AppendError> {
        let kind = event::Kind::ActorSpawned(ActorSpawned {
            parent: spec.parent.clone(),
            id: spec.id.clone(),
            spec_yaml: spec.spec_yaml.clone(),
        });
        self.append(kind).await?;
        self.live.lock().expect("spawned").push(spec);
        Ok(())
    }

    /// Whether `path` is a spawned actor.
    pub fn contains(&self, path: &str) -> bool {
        let live = self.live.lock().expect("spawned");
        live.iter().any(|s| s.path() == path)
    }

    /// Removes a spawned actor (and what was spawned under it) from the record for good.
    pub async fn remove(&self, path: &str) -> Result<(), AppendError> {
        let kind = event::Kind::ActorRemoved(ActorRemoved {
            path: path.to_string(),
        });
        self.append(kind).await?;
        self.live
            .lock()
            .expect("spawned")
            .retain(|s| !within(&s.path(), path));
        Ok(())
    }

    async fn append(&self, kind: event::Kind) -> Result<(), AppendError> {
        self.log
            .append(AppendRequest {
                conversation_id: self.conversation.clone(),
                events: vec![NewEvent {
                    exec_id: String::new(),
                    kind,
                }],
                idempotency_key: None,
                open_exec: None,
                owner: None,
            })
            .await
            .map(|_| ())
    }
}

/// The live spawned actors after `events` of [`SPAWNED_CONVERSATION`], in spawn order.
pub fn fold(events: &[Event]) -> Vec<SpawnedSpec> {
    let mut live: Vec<SpawnedSpec> = Vec::new();
    for e in events {
        match &e.kind {
            Some(event::Kind::ActorSpawned(s)) => live.push(SpawnedSpec {
                parent: s.parent.clone(),
                id: s.id.clone(),
                spec_yaml: s.spec_yaml.clone(),
            }),
            Some(event::Kind::ActorRemoved(r)) => live.retain(|s| !within(&s.path(), &r.path)),
            _ => {}
        }
    }
    live
}

/// Whether `path` is `top` or below it.
fn within(path: &str, top: &str) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawned(parent: &str, id: &str) -> Event {
        Event {
            kind: Some(event::Kind::ActorSpawned(ActorSpawned {
                parent: parent.into(),
                id: id.into(),
                spec_yaml: format!("id: {id}"),
            })),
            ..Default::default()
        }
    }

    fn removed(path: &str) -> Event {
        Event {
            kind: Some(event::Kind::ActorRemoved(ActorRemoved {
                path: path.into(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn the_fold_keeps_spawn_order_and_a_removal_takes_what_is_below() {
        let events = [
            spawned("root", "a"),
            spawned("root", "group"),
            spawned("root/group", "b"),
            spawned("root", "groupie"),
            spawned("root", "c"),
            removed("root/group"),
            removed("root/a"),
            spawned("root", "a"),
        ];
        let paths: Vec<String> = fold(&events).iter().map(SpawnedSpec::path).collect();
        assert_eq!(paths, ["root/groupie", "root/c", "root/a"]);
    }
}
