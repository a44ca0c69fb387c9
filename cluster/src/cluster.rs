//! `cadre.v1.Cluster`: this node and its sandboxes.

use std::time::{SystemTime, UNIX_EPOCH};

use cadre_proto::v1::cluster_server::Cluster;
use cadre_proto::v1::{
    NodeInfo, NodesRequest, NodesResponse, SandboxInfo, SandboxesRequest, SandboxesResponse,
};
use cadre_sandbox::WarmPool;
use tonic::{Request, Response, Status};

/// The node's sandboxes: a pool, or why there is none.
#[derive(Clone)]
pub enum Sandboxes {
    Pool {
        pool: WarmPool,
        provider: &'static str,
        isolated: bool,
        min: usize,
        max: usize,
    },
    Unavailable(String),
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ClusterService {
    address: String,
    started: SystemTime,
    sandboxes: Sandboxes,
}

impl ClusterService {
    pub fn new(address: String, sandboxes: Sandboxes) -> Self {
        Self {
            address,
            started: SystemTime::now(),
            sandboxes,
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn nodes(&self, _: Request<NodesRequest>) -> Result<Response<NodesResponse>, Status> {
        let (provider, isolated, status) = match &self.sandboxes {
            Sandboxes::Pool {
                provider, isolated, ..
            } => (provider.to_string(), *isolated, "ready".to_string()),
            Sandboxes::Unavailable(why) => (String::new(), false, why.clone()),
        };
        Ok(Response::new(NodesResponse {
            nodes: vec![NodeInfo {
                address: self.address.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_unix_ms: unix_ms(self.started),
                sandbox_provider: provider,
                isolated,
                sandbox_status: status,
            }],
        }))
    }

    async fn sandboxes(
        &self,
        _: Request<SandboxesRequest>,
    ) -> Result<Response<SandboxesResponse>, Status> {
        let (pool, provider, isolated, min, max) = match &self.sandboxes {
            Sandboxes::Pool {
                pool,
                provider,
                isolated,
                min,
                max,
            } => (pool, provider, isolated, min, max),
            Sandboxes::Unavailable(why) => {
                return Err(Status::failed_precondition(format!(
                    "this node has no sandboxes: {why}"
                )));
            }
        };
        let sandboxes = pool
            .list()
            .into_iter()
            .map(|s| SandboxInfo {
                state: if s.tenant.is_some() { "leased" } else { "warm" }.into(),
                id: s.id,
                tenant: s.tenant.unwrap_or_default(),
                pid: s.pid.unwrap_or_default(),
                started_unix_ms: unix_ms(s.started),
            })
            .collect();
        Ok(Response::new(SandboxesResponse {
            provider: provider.to_string(),
            isolated: *isolated,
            min: *min as u32,
            max: *max as u32,
            sandboxes,
        }))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
