//! The supervision trees of the cluster's other members, as the `cadre.v1.Actors` service of
//! any node shows them: each member's trees read from it when it answers, its last known
//! trees when it does not (kept up to date by watching it, as a kube-rs reflector does), and
//! its lifecycle changes merged into one watch.
//!
//! A call about another member's actor is made on that member, through its API with the
//! cluster's cookie ([`Peers`]); the member checks nothing more (the node called checked the
//! caller's token, so every node should have the same `api.tokens`) and answers about itself
//! alone: it refuses a call passed on to it that names another node, so calls never travel
//! further.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::{ActorNode, NodeInfo, NodeTree, TreeEvent, TreeRequest, WatchTreeRequest};
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use cadre_actors::membership::MemberState;

use crate::membership::Membership;
use crate::peers::Peers;

/// The other members' trees; cheap to clone.
#[derive(Clone)]
pub struct MemberTrees {
    membership: Membership,
    peers: Peers,
    /// Each member's trees as last read from it (or changed by its events since), and when:
    /// a read that started before the stored trees were made does not replace them.
    known: Arc<Mutex<HashMap<String, (NodeTree, Instant)>>>,
}

/// What a watch sends: lifecycle changes, or why it ended.
pub type TreeEvents = mpsc::Sender<Result<TreeEvent, Status>>;

/// How long a member's trees are left to settle after a change before they are read again:
/// a burst of changes (a supervisor restarting its children) costs one read.
const SETTLE: Duration = Duration::from_millis(100);

impl MemberTrees {
    /// The trees of `membership`'s members, read through `peers`.
    pub fn new(membership: Membership, peers: Peers) -> Self {
        Self {
            membership,
            peers,
            known: Arc::default(),
        }
    }

    /// This node's name.
    pub fn me(&self) -> String {
        self.membership.name()
    }

    /// Whether `node` names this node.
    pub fn is_me(&self, node: &str) -> bool {
        node == self.membership.name()
    }

    /// The member `name`, or NOT_FOUND naming the members.
    fn member(&self, name: &str) -> Result<NodeInfo, Status> {
        let nodes = self.membership.nodes();
        match nodes.iter().find(|n| n.name == name) {
            Some(node) => Ok(node.clone()),
            None => Err(Status::not_found(format!(
                "no node `{name}` in cluster `{}` (its nodes: {})",
                self.membership.cluster(),
                nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The other members (or `only`), in membership's order.
    fn others(&self, only: Option<&str>) -> Vec<NodeInfo> {
        self.membership
            .nodes()
            .into_iter()
            .skip(1)
            .filter(|n| only.is_none_or(|name| n.name == name))
            .collect()
    }

    /// A client of member `name`'s actors, if it is not down (UNAVAILABLE if it is).
    pub fn client(&self, name: &str) -> Result<ActorsClient<Channel>, Status> {
        let node = self.member(name)?;
        if node.state == MemberState::Down.as_str() {
            return Err(Status::unavailable(format!(
                "node `{name}` is down (no heartbeat for {} ms)",
                self.membership.failure_timeout().as_millis()
            )));
        }
        let channel = self.peers.channel(&node).map_err(Status::unavailable)?;
        Ok(ActorsClient::new(channel))
    }

    /// `message` as a read of a member (bounded by the failure timeout).
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.peers.request(message)
    }

    /// `message` as a call on a caller's behalf (as long as the work takes).
    pub fn forward<T>(&self, message: T) -> tonic::Request<T> {
        self.peers.forward(message)
    }

    /// `message` as the start of a stream from a member (bound its start by
    /// [`MemberTrees::start_timeout`]).
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        self.peers.stream_request(message)
    }

    /// How long a stream from a member may take to start.
    pub fn start_timeout(&self) -> Duration {
        self.peers.timeout()
    }

    /// The trees of every other member (or of `only`), in membership's order: read now from
    /// those that answer, the last known of the others with why they are not current.
    pub async fn trees(&self, only: Option<&str>) -> Result<Vec<NodeTree>, Status> {
        if let Some(name) = only {
            self.member(name)?;
        }
        let members = self.others(only);
        let reads = members.iter().map(|node| async move {
            match self.read(node).await {
                Ok(tree) => tree,
                Err(why) => self.last_known(node, why),
            }
        });
        Ok(futures_util::future::join_all(reads).await)
    }

    /// Reads `node`'s trees from it, and keeps them as its last known.
    async fn read(&self, node: &NodeInfo) -> Result<NodeTree, String> {
        if node.state == MemberState::Down.as_str() {
            return Err(format!(
                "the node is down (no heartbeat for {} ms)",
                self.membership.failure_timeout().as_millis()
            ));
        }
        let channel = self.peers.channel(node)?;
        let started = Instant::now();
        let response = ActorsClient::new(channel)
            .tree(self.request(TreeRequest {
                node: node.name.clone(),
            }))
            .await
            .map_err(|s| format!("the node did not answer: {}", s.message()))?
            .into_inner();
        let tree = NodeTree {
            node: node.name.clone(),
            state: node.state.clone(),
            root: response.root,
            system: response.system,
            read_at_unix_ms: now_ms(),
            error: String::new(),
        };
        let mut known = self.known.lock().expect("known trees");
        if known
            .get(&node.name)
            .is_none_or(|(_, made)| *made < started)
        {
            known.insert(node.name.clone(), (tree.clone(), started));
        }
        Ok(tree)
    }

    /// `node`'s last known trees, marked with why they are not current.
    fn last_known(&self, node: &NodeInfo, why: String) -> NodeTree {
        let known = self.known.lock().expect("known trees");
        match known.get(&node.name) {
            Some((tree, _)) => NodeTree {
                state: node.state.clone(),
                error: format!("{why}; its last known trees"),
                ..tree.clone()
            },
            None => NodeTree {
                node: node.name.clone(),
                state: node.state.clone(),
                error: format!("{why}; no trees of it are known here"),
                ..NodeTree::default()
            },
        }
    }

    /// Keeps every member's last known trees current until `stopping`: watches each member
    /// that is up and reads its trees again after its changes settle, so that a member that
    /// goes down leaves the trees it had.
    pub fn reflect(&self, mut stopping: watch::Receiver<bool>) -> JoinHandle<()> {
        let trees = self.clone();
        tokio::spawn(async move {
            let mut changes = trees.membership.changes();
            // Dropped with this task (ended or aborted), which aborts every member's watch.
            let mut tasks = tokio::task::JoinSet::new();
            let mut watching: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
            loop {
                for node in trees.others(None) {
                    let running = watching.get(&node.name).is_some_and(|t| !t.is_finished());
                    if node.state != MemberState::Down.as_str() && !running {
                        let reflector = trees.clone();
                        let name = node.name.clone();
                        let task = tasks.spawn(async move { reflector.reflect_one(node).await });
                        watching.insert(name, task);
                    }
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(trees.membership.failure_timeout() / 2) => {}
                    _ = stopping.wait_for(|stopping| *stopping) => break,
                    // Reaps the finished ones.
                    Some(_) = tasks.join_next() => {}
                }
            }
        })
    }

    /// Follows one member's changes, reading its trees after each burst, until its stream
    /// ends.
    async fn reflect_one(&self, node: NodeInfo) {
        let Some(mut changes) = self.open_watch(&node).await else {
            return;
        };
        if self.read(&node).await.is_err() {
            return;
        }
        while let Ok(Some(change)) = changes.message().await {
            // Each change is applied as it comes, so that the trees are current up to the
            // member's last word; a read once the burst settles fills in the rest.
            self.apply(&change);
            tokio::time::sleep(SETTLE).await;
            while let Some(Ok(Some(change))) = changes.message().now_or_never() {
                self.apply(&change);
            }
            if self.read(&node).await.is_err() {
                return;
            }
        }
    }

    /// Applies a member's lifecycle change to its last known trees.
    fn apply(&self, change: &TreeEvent) {
        if let Some((trees, made)) = self
            .known
            .lock()
            .expect("known trees")
            .get_mut(&change.node)
        {
            apply(trees, change);
            trees.read_at_unix_ms = change.time_unix_micros / 1000;
            *made = Instant::now();
        }
    }

    /// The stream of `node`'s own changes, if it answers in time.
    async fn open_watch(&self, node: &NodeInfo) -> Option<Streaming<TreeEvent>> {
        let channel = self.peers.channel(node).ok()?;
        let request = self.stream_request(WatchTreeRequest {
            node: node.name.clone(),
        });
        let started = tokio::time::timeout(
            self.start_timeout(),
            ActorsClient::new(channel).watch_tree(request),
        )
        .await;
        match started {
            Ok(Ok(response)) => Some(response.into_inner()),
            _ => None,
        }
    }

    /// Sends every other member's lifecycle changes (or `only`'s) and their changes of state
    /// to `tx` until `stopping` or the receiver goes. The members up now are watched before
    /// this returns, so that a tree read after it misses no change.
    pub async fn watch(
        &self,
        only: Option<String>,
        tx: TreeEvents,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<(), Status> {
        if let Some(name) = &only {
            self.member(name)?;
        }
        let mut forwarding: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut states: HashMap<String, String> = HashMap::new();
        let opened = self
            .others(only.as_deref())
            .into_iter()
            .map(|node| async move {
                let stream = match node.state.as_str() {
                    "down" => None,
                    _ => self.open_watch(&node).await,
                };
                (node, stream)
            });
        for (node, stream) in futures_util::future::join_all(opened).await {
            if let Some(stream) = stream {
                forwarding.insert(node.name.clone(), forward(stream, tx.clone()));
            }
            states.insert(node.name, node.state);
        }
        let trees = self.clone();
        tokio::spawn(async move {
            let mut changes = trees.membership.changes();
            loop {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(trees.membership.failure_timeout() / 2) => {}
                    _ = stopping.wait_for(|stopping| *stopping) => break,
                    _ = tx.closed() => break,
                }
                for node in trees.others(only.as_deref()) {
                    if states.get(&node.name) != Some(&node.state) {
                        let change = TreeEvent {
                            time_unix_micros: now_ms() * 1000,
                            kind: "node".into(),
                            change: node.state.clone(),
                            node: node.name.clone(),
                            ..TreeEvent::default()
                        };
                        if tx.send(Ok(change)).await.is_err() {
                            break;
                        }
                        states.insert(node.name.clone(), node.state.clone());
                    }
                    let running = forwarding.get(&node.name).is_some_and(|t| !t.is_finished());
                    if node.state != MemberState::Down.as_str()
                        && !running
                        && let Some(stream) = trees.open_watch(&node).await
                    {
                        forwarding.insert(node.name.clone(), forward(stream, tx.clone()));
                    }
                }
            }
            for (_, task) in forwarding {
                task.abort();
            }
        });
        Ok(())
    }
}

/// Forwards a member's changes to `tx`. A member that drops its watcher for falling behind
/// ends the whole watch (the caller must watch again); one that goes away ends only its part
/// (membership reports it).
fn forward(mut stream: Streaming<TreeEvent>, tx: TreeEvents) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                Err(_) => return,
            }
        }
    })
}

/// `trees` as they are after `change`: a lifecycle event of the member's (`started`,
/// `exited`, `restarting`, `terminated`, `escalated`, `deleted`) on the actor at its path.
fn apply(trees: &mut NodeTree, change: &TreeEvent) {
    let top = change.path.split('/').next().unwrap_or_default();
    let tree = [&mut trees.root, &mut trees.system]
        .into_iter()
        .flatten()
        .find(|t| t.path == top);
    let Some(tree) = tree else { return };
    let Some((parent, _)) = change.path.rsplit_once('/') else {
        set_state(tree, change);
        return;
    };
    let Some(parent) = find_mut(tree, parent) else {
        return;
    };
    let at = parent.children.iter().position(|c| c.path == change.path);
    match (at, change.change.as_str()) {
        (Some(i), "deleted") => {
            parent.children.remove(i);
        }
        (Some(i), _) => set_state(&mut parent.children[i], change),
        (None, "started") => {
            let mut child = ActorNode {
                path: change.path.clone(),
                kind: change.kind.clone(),
                node: change.node.clone(),
                ..ActorNode::default()
            };
            set_state(&mut child, change);
            parent.children.push(child);
        }
        (None, _) => {}
    }
}

/// An actor's status, pid and last exit after `change`.
fn set_state(actor: &mut ActorNode, change: &TreeEvent) {
    let at_ms = change.time_unix_micros / 1000;
    match change.change.as_str() {
        "started" => {
            actor.status = "running".into();
            actor.pid = change.pid;
            actor.restarts = change.restarts;
            actor.started_at_unix_ms = Some(at_ms);
        }
        "restarting" => {
            actor.status = "restarting".into();
            actor.pid = None;
        }
        "exited" | "terminated" | "escalated" => {
            actor.status = "stopped".into();
            actor.pid = None;
            actor.started_at_unix_ms = None;
            if !change.reason.is_empty() {
                actor.last_exit_reason = Some(change.reason.clone());
                actor.last_exit_unix_ms = Some(at_ms);
            }
        }
        _ => {}
    }
}

fn find_mut<'a>(actor: &'a mut ActorNode, path: &str) -> Option<&'a mut ActorNode> {
    if actor.path == path {
        return Some(actor);
    }
    actor
        .children
        .iter_mut()
        .find(|c| path.starts_with(&format!("{}/", c.path)) || c.path == path)
        .and_then(|c| find_mut(c, path))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(path: &str, children: Vec<ActorNode>) -> ActorNode {
        ActorNode {
            path: path.into(),
            status: "running".into(),
            pid: Some(7),
            children,
            ..ActorNode::default()
        }
    }

    fn change(path: &str, what: &str, pid: Option<u32>) -> TreeEvent {
        TreeEvent {
            time_unix_micros: 5_000_000,
            path: path.into(),
            kind: "process".into(),
            change: what.into(),
            reason: if what == "exited" {
                "killed".into()
            } else {
                String::new()
            },
            pid,
            restarts: 1,
            node: "n".into(),
        }
    }

    #[test]
    fn changes_update_the_last_known_trees_as_the_member_reported_them() {
        let mut trees = NodeTree {
            node: "n".into(),
            root: Some(actor(
                "root",
                vec![actor("root/g", vec![actor("root/g/a", vec![])])],
            )),
            system: Some(actor("system", vec![])),
            ..NodeTree::default()
        };
        let a = |t: &NodeTree| t.root.as_ref().unwrap().children[0].children.clone();
        apply(&mut trees, &change("root/g/a", "exited", None));
        assert_eq!(a(&trees)[0].status, "stopped");
        assert_eq!(a(&trees)[0].pid, None);
        assert_eq!(a(&trees)[0].last_exit_reason.as_deref(), Some("killed"));
        apply(&mut trees, &change("root/g/a", "started", Some(9)));
        assert_eq!(
            (a(&trees)[0].status.as_str(), a(&trees)[0].pid),
            ("running", Some(9))
        );
        apply(&mut trees, &change("root/g/b", "started", Some(10)));
        assert_eq!(a(&trees)[1].path, "root/g/b");
        assert_eq!(a(&trees)[1].node, "n");
        apply(&mut trees, &change("root/g/a", "deleted", None));
        assert_eq!(a(&trees).len(), 1);
        apply(&mut trees, &change("system/agents", "started", Some(1)));
        assert_eq!(
            trees.system.as_ref().unwrap().children[0].path,
            "system/agents"
        );
        // A change under an actor the trees do not hold is left out.
        apply(&mut trees, &change("root/x/y", "started", Some(2)));
        assert_eq!(trees.root.as_ref().unwrap().children.len(), 1);
    }
}
