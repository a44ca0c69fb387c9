//! gRPC services of a node.

use std::pin::Pin;
use std::time::UNIX_EPOCH;

use cadre_actors::{LifecycleEvent, Tree, TreeNode};
use cadre_proto::v1::actors_server::Actors;
use cadre_proto::v1::{ActorNode, TreeEvent, TreeRequest, TreeResponse, WatchTreeRequest};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
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

type TreeEvents = Pin<Box<dyn Stream<Item = Result<TreeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Actors for ActorsService {
    type WatchTreeStream = TreeEvents;

    async fn watch_tree(
        &self,
        _request: Request<WatchTreeRequest>,
    ) -> Result<Response<TreeEvents>, Status> {
        let mut rx = self.tree.subscribe();
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(ev) => Ok(tree_event(&ev)),
                    // A watcher that falls a whole buffer behind is told so and ended.
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "watcher fell behind and missed {n} lifecycle events; watch again"
                    ))),
                    Err(RecvError::Closed) => return,
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

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

fn tree_event(ev: &LifecycleEvent) -> TreeEvent {
    let (pid, restarts) = ev.change.started();
    TreeEvent {
        time_unix_micros: ev
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default(),
        path: ev.path.clone(),
        kind: ev.kind.as_str().into(),
        change: ev.change.name().into(),
        reason: ev.change.reason().unwrap_or_default(),
        pid,
        restarts,
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
