//! Messages to logical actors (`cadre.v1.Cluster/Send`), and in a cluster the rule that keeps
//! each actor active on one node at a time: its home, recorded in the log
//! ([`Homes`]).
//!
//! A node delivers to an actor whose home it is; it passes a message for an actor at home
//! elsewhere on to that node; for an actor without a home, or whose home is `down`, it picks
//! the node with room for the actor's tenant ([`home_for`]) and that node claims the actor
//! before activating it. A node delivers on a home it read within half a failure timeout;
//! after that it reads it again, so a node that was paused while its actor moved delivers to
//! it no more, and deactivates it when the actor's next message reaches it (an actor it wins
//! back under a new epoch starts afresh too). A node without sandboxes is never a home.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cadre_actors::activation::{Home, Homes, Room, home_for};
use cadre_actors::event_log::EventLog;
use cadre_actors::exec::check_conversation_id;
use cadre_actors::membership::MemberState;
use cadre_actors::placement::{Isolation, LogicalActor};
use cadre_proto::v1::cluster_client::ClusterClient;
use cadre_proto::v1::{SendRequest, SendResponse};
use cadre_sandbox::Placement;
use tonic::Status;

use crate::grpc::status::{append_status, placement_status};
use crate::membership::Membership;
use crate::peers::Peers;

/// The longest actor id (its homes' conversation id, with its prefix, stays within the
/// longest conversation id).
pub const MAX_ACTOR_ID_LEN: usize = 180;

/// How often a node tries to give an actor a home before it gives up (each try loses only to
/// another node's claim of the same epoch).
const CLAIMS: usize = 3;

/// The node's logical actors; cheap to clone.
#[derive(Clone)]
pub struct Activations {
    /// The node's placement, if it has sandboxes.
    placement: Option<Placement>,
    cluster: Option<Arc<InCluster>>,
}

/// What a clustered node needs to keep actors at home.
struct InCluster {
    homes: Homes,
    membership: Membership,
    peers: Peers,
    /// The homes this node read last, and when: what it delivers on without reading again.
    read: Mutex<HashMap<String, (Home, Instant)>>,
}

impl Activations {
    /// Delivers on `placement` (`None`: the node has no sandboxes, and says so).
    pub fn new(placement: Option<Placement>) -> Self {
        Self {
            placement,
            cluster: None,
        }
    }

    /// In a cluster: actors' homes are kept in `log`, and messages for actors at home
    /// elsewhere go there through `peers`.
    pub fn in_cluster(
        mut self,
        log: Arc<dyn EventLog>,
        membership: Membership,
        peers: Peers,
    ) -> Self {
        self.cluster = Some(Arc::new(InCluster {
            homes: Homes::new(log),
            membership,
            peers,
            read: Mutex::default(),
        }));
        self
    }

    /// Delivers `request`'s message to its actor, where the actor lives.
    /// `peer`: another node of the cluster passed the message on to this one.
    pub async fn send(&self, request: SendRequest, peer: bool) -> Result<SendResponse, Status> {
        let actor = logical_actor(&request)?;
        let Some(cluster) = &self.cluster else {
            return self.deliver(&actor, request.payload, 0, "").await;
        };
        // Only a node passes a message on (an API caller's `forwarded` is ignored).
        let forwarded = request.forwarded && peer;
        let me = cluster.membership.name();
        if let Some(home) = cluster.recent(&actor.id)
            && home.node == me
        {
            return self.deliver(&actor, request.payload, home.epoch, &me).await;
        }
        for _ in 0..CLAIMS {
            let home = cluster
                .homes
                .home(&actor.id)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if let Some(home) = &home
                && home.tenant != actor.tenant
            {
                return Err(Status::failed_precondition(format!(
                    "actor `{}` belongs to tenant `{}`, not `{}` (an actor's tenant never \
                     changes)",
                    actor.id, home.tenant, actor.tenant
                )));
            }
            let home_state = home.as_ref().map(|h| cluster.state_of(&h.node));
            match (&home, home_state.as_deref()) {
                (Some(home), _) if home.node == me => {
                    cluster.remember(&actor.id, home);
                    return self.deliver(&actor, request.payload, home.epoch, &me).await;
                }
                (Some(home), Some("up" | "suspect")) => {
                    self.moved_away(&actor.id);
                    if forwarded {
                        return Err(Status::aborted(format!(
                            "actor `{}` lives on node `{}` (epoch {}); send it there",
                            actor.id, home.node, home.epoch
                        )));
                    }
                    return cluster.forward(&home.node, request).await;
                }
                _ => {}
            }
            // No home, or its home is down (or gone from the cluster): a node with room takes
            // it. A message passed on to this node makes this node the home.
            let target = if forwarded {
                Some(me.clone())
            } else {
                cluster.home_for(&actor)
            };
            let target = match target {
                Some(target) if target != me => return cluster.forward(&target, request).await,
                Some(_) if self.placement.is_some() => me.clone(),
                _ => {
                    return Err(Status::failed_precondition(format!(
                        "actor `{}`: no node of the cluster that is up has sandboxes to \
                         activate it in",
                        actor.id
                    )));
                }
            };
            let reason = match &home {
                Some(home) => format!("node `{}` is down", home.node),
                None => String::new(),
            };
            let won = cluster
                .homes
                .claim(&actor, &target, home.as_ref(), &reason)
                .await
                .map_err(append_status)?;
            if won.node == me {
                // Still active here from a home this node lost meanwhile: that activation
                // belongs to an earlier epoch.
                if home.is_some() {
                    self.moved_away(&actor.id);
                }
                if !reason.is_empty() {
                    tracing::info!(actor = %actor.id, epoch = won.epoch, reason, "an actor moved here");
                }
                cluster.remember(&actor.id, &won);
                return self.deliver(&actor, request.payload, won.epoch, &me).await;
            }
            // Another node claimed the epoch first: read its home again and go there.
        }
        Err(Status::aborted(format!(
            "actor `{}`: its home changed {CLAIMS} times while this message was being sent; \
             send it again",
            actor.id
        )))
    }

    /// Delivers to the actor here.
    async fn deliver(
        &self,
        actor: &LogicalActor,
        payload: Vec<u8>,
        epoch: u64,
        me: &str,
    ) -> Result<SendResponse, Status> {
        let placement = self.placement.as_ref().ok_or_else(|| {
            Status::failed_precondition("this node has no sandboxes to activate actors in")
        })?;
        let delivered = placement
            .send(actor, payload)
            .await
            .map_err(placement_status)?;
        Ok(SendResponse {
            node: me.to_string(),
            sandbox: delivered.sandbox,
            payload: delivered.payload,
            handled: delivered.handled,
            activated: delivered.activated,
            epoch,
        })
    }

    /// The actor's home is another node: it is no longer active here.
    fn moved_away(&self, actor: &str) {
        if let Some(placement) = &self.placement
            && placement.sandbox_of(actor).is_some()
        {
            tracing::warn!(
                actor,
                "the actor's home moved to another node; deactivating it here"
            );
            placement.remove(actor);
        }
    }
}

impl InCluster {
    /// `actor`'s home as this node read it within half a failure timeout.
    fn recent(&self, actor: &str) -> Option<Home> {
        let fresh = self.membership.failure_timeout() / 2;
        let read = self.read.lock().expect("homes read");
        read.get(actor)
            .filter(|(_, at)| at.elapsed() < fresh)
            .map(|(home, _)| home.clone())
    }

    fn remember(&self, actor: &str, home: &Home) {
        self.read
            .lock()
            .expect("homes read")
            .insert(actor.to_string(), (home.clone(), Instant::now()));
    }

    /// A member's state (`down` for a node membership does not know).
    fn state_of(&self, node: &str) -> String {
        self.membership
            .node(node)
            .map_or_else(|| MemberState::Down.as_str().to_string(), |n| n.state)
    }

    /// The node with room for `actor`, of the members that are up and have sandboxes (this
    /// node first).
    fn home_for(&self, actor: &LogicalActor) -> Option<String> {
        let nodes: Vec<_> = self
            .membership
            .nodes()
            .into_iter()
            .filter(|n| n.state == MemberState::Up.as_str() && !n.sandbox_provider.is_empty())
            .collect();
        let slots: Vec<HashMap<String, u32>> = nodes
            .iter()
            .map(|n| n.free_slots.clone().into_iter().collect())
            .collect();
        let rooms: Vec<Room> = nodes
            .iter()
            .zip(&slots)
            .map(|(n, free_slots)| Room {
                node: &n.name,
                free_sandboxes: n.free_sandboxes,
                free_slots,
            })
            .collect();
        home_for(actor, &rooms).map(str::to_string)
    }

    /// Passes `request` on to `node`, which delivers it without passing it on again.
    async fn forward(&self, node: &str, mut request: SendRequest) -> Result<SendResponse, Status> {
        let info = self
            .membership
            .node(node)
            .ok_or_else(|| Status::unavailable(format!("node `{node}` left the cluster")))?;
        let channel = self.peers.channel(&info).map_err(Status::unavailable)?;
        request.forwarded = true;
        let answer = ClusterClient::new(channel)
            .send(self.peers.forward(request))
            .await;
        answer.map(tonic::Response::into_inner).map_err(|status| {
            let again = match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => format!(
                    "; send again: once the node is down (after {} ms) the actor moves to a \
                     live node",
                    self.membership.failure_timeout().as_millis()
                ),
                _ => String::new(),
            };
            Status::new(
                status.code(),
                format!("the actor's node `{node}`: {}{again}", status.message()),
            )
        })
    }
}

/// The actor a request names, or INVALID_ARGUMENT naming the field.
fn logical_actor(request: &SendRequest) -> Result<LogicalActor, Status> {
    check_conversation_id("actor_id", &request.actor_id)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if request.actor_id.len() > MAX_ACTOR_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "actor_id: {} characters, at most {MAX_ACTOR_ID_LEN}",
            request.actor_id.len()
        )));
    }
    if request.tenant.is_empty() {
        return Err(Status::invalid_argument("tenant: missing"));
    }
    let isolation = match request.isolation.as_str() {
        "" | "shared" => Isolation::Shared,
        "exclusive" => Isolation::Exclusive,
        other => {
            return Err(Status::invalid_argument(format!(
                "isolation: `{other}` is not shared or exclusive"
            )));
        }
    };
    Ok(LogicalActor {
        id: request.actor_id.clone(),
        tenant: request.tenant.clone(),
        isolation,
    })
}
