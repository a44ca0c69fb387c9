//! gRPC services of a node.

use std::time::UNIX_EPOCH;

use cadre_actors::{Tree, TreeNode};
use cadre_proto::v1::actors_server::Actors;
use cadre_proto::v1::{ActorNode, TreeRequest, TreeResponse};
use tonic::{Request, Response, Status};

/// `cadre.v1.Actors`: the live supervision tree.
pub struct ActorsService {
    tree: Tree,
    root: String,
}

impl ActorsService {
    pub fn new(tree: Tree, root: impl Into<String>) -> Self {
        Self {
            tree,
            root: root.into(),
        }
    }
}

#[tonic::async_trait]
impl Actors for ActorsService {
    async fn tree(&self, _request: Request<TreeRequest>) -> Result<Response<TreeResponse>, Status> {
        let root = self
            .tree
            .snapshot(&self.root)
            .ok_or_else(|| Status::unavailable("the root supervisor is not running"))?;
        Ok(Response::new(TreeResponse {
            root: Some(actor_node(&root)),
        }))
    }
}

fn actor_node(node: &TreeNode) -> ActorNode {
    ActorNode {
        path: node.path.clone(),
        kind: node.kind.as_str().to_string(),
        status: node.status.as_str().to_string(),
        restarts: node.restarts,
        pid: node.pid,
        strategy: node.strategy.map(|s| s.as_str().to_string()),
        placement: None,
        started_at_unix_ms: node
            .started_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64),
        children: node.children.iter().map(actor_node).collect(),
    }
}
