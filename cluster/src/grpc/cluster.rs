//! `cadre.v1.Cluster`: the cluster's nodes (this one alone outside a cluster), this node's
//! sandboxes and placement.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use cadre_actors::placement::{ActorState, Isolation};
use cadre_proto::v1::cluster_server::Cluster;
use cadre_proto::v1::{
    NodeInfo, NodesRequest, NodesResponse, PlacedActor, PlacementRequest, PlacementResponse,
    SandboxInfo, SandboxesRequest, SandboxesResponse, SendRequest, SendResponse,
};
use cadre_sandbox::{Placement, WarmPool};
use tonic::{Request, Response, Status};

use crate::activations::Activations;
use crate::grpc::auth::is_peer_call;
use crate::leased_log::LeasedLog;
use crate::membership::{CONTROLLER, MEMBER, Membership};

/// The node's sandboxes: a pool, or why there is none.
#[derive(Clone)]
pub enum Sandboxes {
    /// The node has a warm pool.
    Pool {
        /// The warm pool.
        pool: WarmPool,
        /// Placement of logical actors on the pool.
        placement: Placement,
        /// The sandbox provider's name (`gvisor`, `process`).
        provider: &'static str,
        /// Whether the provider isolates sandboxes from the host.
        isolated: bool,
        /// Warm sandboxes kept ready.
        min: usize,
        /// Most sandboxes in all.
        max: usize,
    },
    /// The node has no sandboxes, for this reason.
    Unavailable(String),
}

impl Sandboxes {
    /// Fills in `node`'s sandboxes and its room for activations: the sandboxes it may still
    /// start, and the free slots of its shared sandboxes by tenant.
    pub fn fill_in(&self, node: &mut NodeInfo) {
        let Sandboxes::Pool {
            pool,
            placement,
            max,
            ..
        } = self
        else {
            return;
        };
        node.sandboxes = pool.list().len() as u32;
        let leased = placement.sandboxes();
        node.free_sandboxes = max.saturating_sub(leased.len()) as u32;
        node.free_slots.clear();
        for sandbox in leased.iter().filter(|s| !s.exclusive) {
            *node.free_slots.entry(sandbox.tenant.clone()).or_default() +=
                sandbox.slots.saturating_sub(sandbox.used) as u32;
        }
    }
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ClusterService {
    /// This node's facts (outside a cluster, the only node).
    me: NodeInfo,
    sandboxes: Sandboxes,
    membership: Option<Membership>,
    activations: Activations,
    /// On a shared store: the controller lease, which says which node is the controller.
    lease: Option<LeasedLog>,
}

impl ClusterService {
    /// The service of the node described by `me`, a member of `membership`'s cluster if any,
    /// delivering messages to logical actors through `activations`.
    pub fn new(
        me: NodeInfo,
        sandboxes: Sandboxes,
        membership: Option<Membership>,
        activations: Activations,
    ) -> Self {
        Self {
            me,
            sandboxes,
            membership,
            activations,
            lease: None,
        }
    }

    /// The controller is the holder of `log`'s lease.
    pub fn with_lease(mut self, log: LeasedLog) -> Self {
        self.lease = Some(log);
        self
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn nodes(&self, _: Request<NodesRequest>) -> Result<Response<NodesResponse>, Status> {
        let mut nodes = match &self.membership {
            Some(membership) => membership.nodes(),
            None => {
                let mut me = self.me.clone();
                me.state = "up".into();
                self.sandboxes.fill_in(&mut me);
                vec![me]
            }
        };
        if let Some(log) = &self.lease {
            let lease = log
                .lease()
                .filter(|l| l.expires_unix_ms > unix_ms(SystemTime::now()));
            for node in &mut nodes {
                match &lease {
                    Some(l) if l.node == node.name => {
                        node.role = CONTROLLER.into();
                        node.controller_epoch = l.epoch;
                    }
                    _ => node.role = MEMBER.into(),
                }
            }
        }
        Ok(Response::new(NodesResponse { nodes }))
    }

    async fn sandboxes(
        &self,
        _: Request<SandboxesRequest>,
    ) -> Result<Response<SandboxesResponse>, Status> {
        let Sandboxes::Pool {
            pool,
            placement,
            provider,
            isolated,
            min,
            max,
        } = &self.sandboxes
        else {
            return Err(self.unavailable());
        };
        let mut slots: HashMap<String, _> = placement
            .sandboxes()
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mut sandboxes: Vec<SandboxInfo> = pool
            .list()
            .into_iter()
            .map(|s| {
                let placed = slots.remove(&s.id);
                SandboxInfo {
                    state: if s.tenant.is_some() { "leased" } else { "warm" }.into(),
                    id: s.id,
                    tenant: s.tenant.unwrap_or_default(),
                    pid: s.pid.unwrap_or_default(),
                    started_unix_ms: unix_ms(s.started),
                    slots: placed.as_ref().map_or(0, |p| p.slots as u32),
                    exclusive: placed.as_ref().is_some_and(|p| p.exclusive),
                    actors: placed.map(|p| p.actors).unwrap_or_default(),
                    ended: String::new(),
                }
            })
            .collect();
        let tenants: HashMap<String, String> = placement
            .actors(true)
            .into_iter()
            .map(|a| (a.id, a.tenant))
            .collect();
        for (sandbox, actor) in placement.suspended() {
            let state = if pool.has_image(&sandbox) {
                "suspended"
            } else {
                "stopped"
            };
            sandboxes.push(SandboxInfo {
                id: sandbox,
                tenant: tenants.get(&actor).cloned().unwrap_or_default(),
                state: state.into(),
                slots: 1,
                exclusive: true,
                actors: vec![actor],
                ..Default::default()
            });
        }
        for ended in pool.ended() {
            sandboxes.push(SandboxInfo {
                id: ended.info.id,
                tenant: ended.info.tenant.unwrap_or_default(),
                state: "ended".into(),
                started_unix_ms: unix_ms(ended.info.started),
                ended: ended.status,
                ..Default::default()
            });
        }
        Ok(Response::new(SandboxesResponse {
            provider: provider.to_string(),
            isolated: *isolated,
            min: *min as u32,
            max: *max as u32,
            sandboxes,
        }))
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let peer = is_peer_call(&request);
        self.activations
            .send(request.into_inner(), peer)
            .await
            .map(Response::new)
    }

    async fn placement(
        &self,
        request: Request<PlacementRequest>,
    ) -> Result<Response<PlacementResponse>, Status> {
        let Sandboxes::Pool { placement, .. } = &self.sandboxes else {
            return Err(self.unavailable());
        };
        let suspended: HashMap<String, String> = placement
            .suspended()
            .into_iter()
            .map(|(sandbox, actor)| (actor, sandbox))
            .collect();
        let all = request.into_inner().all;
        let actors = placement
            .actors(true)
            .into_iter()
            .filter(|a| all || a.state != ActorState::Passive || suspended.contains_key(&a.id))
            .map(|a| {
                let (state, sandbox) = match (&a.state, suspended.get(&a.id)) {
                    (ActorState::Passive, Some(sandbox)) => ("suspended", sandbox.clone()),
                    (ActorState::Passive, None) => ("passive", String::new()),
                    (ActorState::Leasing, _) => ("leasing", String::new()),
                    (ActorState::Activating { sandbox }, _) => ("activating", sandbox.clone()),
                    (ActorState::Active { sandbox, .. }, _) => ("active", sandbox.clone()),
                    (ActorState::Passivating { sandbox }, _) => ("passivating", sandbox.clone()),
                };
                PlacedActor {
                    isolation: match a.isolation {
                        Isolation::Shared => "shared",
                        Isolation::Exclusive => "exclusive",
                        Isolation::ExclusiveWithEgress => "exclusive+egress",
                    }
                    .into(),
                    state: state.into(),
                    sandbox,
                    state_bytes: a.state_bytes as u64,
                    tenant: a.tenant,
                    id: a.id,
                }
            })
            .collect();
        Ok(Response::new(PlacementResponse { actors }))
    }
}

impl ClusterService {
    fn unavailable(&self) -> Status {
        match &self.sandboxes {
            Sandboxes::Unavailable(why) => {
                Status::failed_precondition(format!("this node has no sandboxes: {why}"))
            }
            Sandboxes::Pool { .. } => Status::internal("sandboxes are available"),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
