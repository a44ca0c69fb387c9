//! gRPC services of a node.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cadre_actors::Services;
use cadre_actors::config::{ActorConfig, ChildConfig};
use cadre_actors::spawned::{SpawnedActors, SpawnedSpec};
use cadre_actors::tree::LogLine;
use cadre_actors::{LifecycleEvent, Tree, TreeNode};
use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::actors_server::Actors;
use cadre_proto::v1::{
    ActorNode, ActorRequest, ListActorsRequest, ListActorsResponse, LogsRequest, NodeTree,
    SpawnRequest, TreeEvent, TreeRequest, TreeResponse, WatchTreeRequest,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::actor_spec::child_entry;
use super::auth::{is_peer_call, note_target};
use super::status::{append_status, supervisor_status};
use crate::member_trees::MemberTrees;

/// `cadre.v1.Actors`: the live supervision tree (in a cluster, every member's).
pub struct ActorsService {
    tree: Tree,
    root: String,
    /// The root of the node's own tree.
    system_root: String,
    /// Paths of the actors the node runs for itself (and their descendants): the API may
    /// read them but not stop, restart or spawn under them.
    system: Vec<String>,
    /// What spawned children start on (sandboxes, the tool registry).
    services: Services,
    /// The record of spawned children.
    spawned: SpawnedActors,
    /// Becomes true when the node starts to stop: watches end then.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The other members' trees, in a cluster.
    members: Option<MemberTrees>,
}

impl ActorsService {
    /// The service over `tree`: the config's tree at `root`, the node's own at `system_root`
    /// with its protected actors at `system`; spawned children start on `services` and are
    /// recorded in `spawned`.
    pub fn new(
        tree: Tree,
        root: impl Into<String>,
        system_root: impl Into<String>,
        system: Vec<String>,
        services: Services,
        spawned: SpawnedActors,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            tree,
            root: root.into(),
            system_root: system_root.into(),
            system,
            services,
            spawned,
            stopping,
            members: None,
        }
    }

    /// In a cluster: shows the other members' trees too, and passes calls about their actors
    /// on to them.
    pub fn in_cluster(mut self, members: MemberTrees) -> Self {
        self.members = Some(members);
        self
    }
}

type TreeEvents = Pin<Box<dyn Stream<Item = Result<TreeEvent, Status>> + Send>>;
type LogLines = Pin<Box<dyn Stream<Item = Result<cadre_proto::v1::LogLine, Status>> + Send>>;

/// A node-qualified path `NODE:PATH` as (node, path); ("", path) for a plain path.
fn split_path(path: &str) -> (&str, &str) {
    match path.split_once(':') {
        Some((node, path)) if !node.contains('/') => (node, path),
        _ => ("", path),
    }
}

impl ActorsService {
    /// This node's name in its cluster ("" outside one).
    fn me(&self) -> String {
        self.members
            .as_ref()
            .map(MemberTrees::me)
            .unwrap_or_default()
    }

    /// A client of the member `node` (and the cluster's trees), when a call names another
    /// node than this one. A call another node passed on (`peer`) is not passed on again.
    fn route(
        &self,
        node: &str,
        peer: bool,
    ) -> Result<Option<(ActorsClient<Channel>, &MemberTrees)>, Status> {
        match &self.members {
            _ if node.is_empty() => Ok(None),
            Some(members) if members.is_me(node) => Ok(None),
            Some(members) if peer => Err(Status::failed_precondition(format!(
                "this is node `{}`, not `{node}`: a call passed on by another node is not \
                 passed on again",
                members.me()
            ))),
            Some(members) => Ok(Some((members.client(node)?, members))),
            None => Err(Status::not_found(format!(
                "no node `{node}`: this node is not in a cluster (name its actors without \
                 `{node}:`)"
            ))),
        }
    }

    /// `node` as the API shows it: labelled with this node's name.
    fn actor_node(&self, node: &TreeNode) -> ActorNode {
        actor_node(node, &self.me())
    }

    /// This node's two trees, as read now.
    fn local_trees(&self) -> Result<NodeTree, Status> {
        Ok(NodeTree {
            node: self.me(),
            state: "up".into(),
            root: Some(self.actor_node(&self.node(&self.root)?)),
            system: Some(self.actor_node(&self.node(&self.system_root)?)),
            read_at_unix_ms: unix_ms(SystemTime::now()),
            error: String::new(),
        })
    }

    /// The trees of `node` ("": of every member, this node first). A call passed on by
    /// another node (`peer`) gets this node's alone.
    async fn trees(&self, node: &str, peer: bool) -> Result<Vec<NodeTree>, Status> {
        if peer {
            self.route(node, peer)?;
            return Ok(vec![self.local_trees()?]);
        }
        match &self.members {
            Some(members) if node.is_empty() => {
                let mut trees = vec![self.local_trees()?];
                trees.extend(members.trees(None).await?);
                Ok(trees)
            }
            Some(members) if !members.is_me(node) => members.trees(Some(node)).await,
            _ => {
                self.route(node, false)?;
                Ok(vec![self.local_trees()?])
            }
        }
    }

    fn node(&self, path: &str) -> Result<TreeNode, Status> {
        self.tree
            .snapshot(path)
            .ok_or_else(|| Status::not_found(format!("no actor `{path}`")))
    }

    /// Refuses a change to `path` if the node runs it for itself. With `subtree`, what is
    /// below a system actor is refused too (spawning under `system/agents`); without, only the
    /// system actor itself (an exec's agent under `system/agents` may be restarted, as OTP's
    /// `restart_child` would).
    fn not_system(&self, path: &str, what: &str, subtree: bool) -> Result<(), Status> {
        let system = self.system.iter().find(|s| {
            path == s.as_str()
                || (subtree
                    && path
                        .strip_prefix(s.as_str())
                        .is_some_and(|rest| rest.starts_with('/')))
        });
        match system {
            Some(s) => Err(Status::failed_precondition(format!(
                "`{path}` is a system actor (the node runs `{s}` for itself); it cannot be \
                 {what} through the API"
            ))),
            None => Ok(()),
        }
    }

    /// The supervisor above `path` and the child's id in it.
    fn parent_of(&self, path: &str) -> Result<(cadre_actors::SupervisorRef, String), Status> {
        let (parent, id) = match path.rsplit_once('/') {
            Some(split) => split,
            None if path == self.root => {
                return Err(Status::failed_precondition(
                    "the root supervisor cannot be stopped or restarted through the API; stop or \
                     restart the node instead",
                ));
            }
            None => return Err(Status::not_found(format!("no actor `{path}`"))),
        };
        self.node(path)?;
        let (sup, _) = self
            .tree
            .supervisor(parent)
            .ok_or_else(|| Status::unavailable(format!("supervisor `{parent}` is not running")))?;
        Ok((sup, id.to_string()))
    }
}

#[tonic::async_trait]
impl Actors for ActorsService {
    type WatchTreeStream = TreeEvents;
    type LogsStream = LogLines;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogLines>, Status> {
        let peer = is_peer_call(&request);
        let mut r = request.into_inner();
        let (node, path) = split_path(&r.path);
        if let Some((mut client, members)) = self.route(node, peer)? {
            let started = tokio::time::timeout(
                members.start_timeout(),
                client.logs(members.stream_request(r.clone())),
            )
            .await
            .map_err(|_| Status::unavailable(format!("node `{node}` did not answer in time")))?;
            // Ends, like a follow of this node's own, when this node stops.
            let mut stopping = self.stopping.clone();
            let stopped = async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            };
            let lines = futures_util::StreamExt::take_until(started?.into_inner(), stopped);
            return Ok(Response::new(Box::pin(lines)));
        }
        r.path = path.to_string();
        // Subscribed before the tail is read, so that no line falls between the two; a line
        // in both is sent once.
        let mut rx = r.follow.then(|| self.tree.subscribe_logs());
        let tail = self
            .tree
            .log_tail(&r.path, r.tail.map(|n| n as usize))
            .ok_or_else(|| Status::not_found(format!("no actor `{}`", r.path)))?;
        let mut stopping = self.stopping.clone();
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            for line in &tail {
                if tx.send(Ok(log_line(line))).await.is_err() {
                    return;
                }
            }
            let Some(rx) = &mut rx else { return };
            loop {
                let received = tokio::select! {
                    received = rx.recv() => received,
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                };
                let item = match received {
                    Ok(line) if line.path != r.path => continue,
                    Ok(line) if tail.iter().any(|t| Arc::ptr_eq(t, &line)) => continue,
                    Ok(line) => Ok(log_line(&line)),
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "the follower fell behind and missed {n} lines; follow again"
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

    async fn spawn(&self, request: Request<SpawnRequest>) -> Result<Response<ActorNode>, Status> {
        let parent = match request.get_ref().parent.as_str() {
            "" => self.root.as_str(),
            parent => parent,
        };
        let on = match request.get_ref().node.as_str() {
            "" => String::new(),
            node => format!("{node}:"),
        };
        note_target(&request, format!("a child of {on}{parent}"));
        let peer = is_peer_call(&request);
        if let Some((mut client, members)) = self.route(&request.get_ref().node, peer)? {
            return client.spawn(members.forward(request.into_inner())).await;
        }
        let r = request.into_inner();
        let parent = if r.parent.is_empty() {
            self.root.clone()
        } else {
            r.parent
        };
        self.not_system(&parent, "given children", true)?;
        let (sup, flags) = self.tree.supervisor(&parent).ok_or_else(|| {
            Status::not_found(format!("no running supervisor `{parent}` (parent)"))
        })?;
        // A typed spec is read by the same parser as the YAML, as the child entry it stands
        // for; its errors name its fields (`spec.process.command: …`).
        let (source, spec_yaml) = match (r.spec_yaml.is_empty(), &r.spec) {
            (false, None) => ("spec_yaml", r.spec_yaml),
            (true, Some(spec)) => ("spec", child_entry(spec).to_string()),
            (true, None) => {
                return Err(Status::invalid_argument(
                    "spec: missing; give the child as `spec` (typed) or `spec_yaml`",
                ));
            }
            (false, Some(_)) => {
                return Err(Status::invalid_argument(
                    "spec: give the child as `spec` or as `spec_yaml`, not both",
                ));
            }
        };
        let child = ChildConfig::parse(source, &spec_yaml, &flags).map_err(|e| {
            Status::invalid_argument(match source {
                "spec" => typed_error(&e.message),
                _ => e.to_string(),
            })
        })?;
        // The config file checks agents' models against `models:`; a spawned spec is checked
        // against the node's.
        if let ActorConfig::Agent(agent) = &child.actor
            && agent.remote.is_none()
            && agent.command.is_none()
            && !self.services.models.contains_key(&agent.model)
        {
            let known: Vec<&str> = self.services.models.keys().map(String::as_str).collect();
            let field = match source {
                "spec" => "spec.agent.model",
                _ => "spec_yaml: agent.model",
            };
            return Err(Status::invalid_argument(format!(
                "{field}: unknown model `{}` (the node's models: {})",
                agent.model,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let info = sup
            .start_child(child.child_spec(&self.services))
            .await
            .map_err(supervisor_status)?;
        // Acknowledged only once on record; else it does not stay either.
        let spec = SpawnedSpec {
            parent: parent.clone(),
            id: info.id.clone(),
            spec_yaml,
        };
        if let Err(e) = self.spawned.record(spec).await {
            let _ = sup.terminate_child(&info.id).await;
            let _ = sup.delete_child(&info.id).await;
            return Err(append_status(e));
        }
        Ok(Response::new(
            self.actor_node(&self.node(&format!("{parent}/{}", info.id))?),
        ))
    }

    async fn stop(&self, request: Request<ActorRequest>) -> Result<Response<ActorNode>, Status> {
        note_target(&request, request.get_ref().path.clone());
        let (node, path) = split_path(&request.get_ref().path);
        if let Some((mut client, members)) = self.route(node, is_peer_call(&request))? {
            return client.stop(members.forward(request.into_inner())).await;
        }
        let path = path.to_string();
        self.not_system(&path, "stopped", false)?;
        let (sup, id) = self.parent_of(&path)?;
        sup.terminate_child(&id).await.map_err(supervisor_status)?;
        // A spawned child is stopped for good: its spec goes, and its record.
        if self.spawned.contains(&path) {
            let _ = sup.delete_child(&id).await;
            self.spawned.remove(&path).await.map_err(append_status)?;
        }
        // A temporary child is gone once stopped; report what it was.
        let node = self
            .tree
            .snapshot(&path)
            .map(|n| self.actor_node(&n))
            .unwrap_or(ActorNode {
                path,
                node: self.me(),
                status: "deleted".into(),
                ..Default::default()
            });
        Ok(Response::new(node))
    }

    async fn restart(&self, request: Request<ActorRequest>) -> Result<Response<ActorNode>, Status> {
        note_target(&request, request.get_ref().path.clone());
        let (node, path) = split_path(&request.get_ref().path);
        if let Some((mut client, members)) = self.route(node, is_peer_call(&request))? {
            return client.restart(members.forward(request.into_inner())).await;
        }
        let path = path.to_string();
        self.not_system(&path, "restarted", false)?;
        let (sup, id) = self.parent_of(&path)?;
        if self.node(&path)?.status == cadre_actors::ChildStatus::Running {
            sup.terminate_child(&id).await.map_err(supervisor_status)?;
        }
        sup.restart_child(&id).await.map_err(supervisor_status)?;
        Ok(Response::new(self.actor_node(&self.node(&path)?)))
    }

    async fn get(&self, request: Request<ActorRequest>) -> Result<Response<ActorNode>, Status> {
        let (node, path) = split_path(&request.get_ref().path);
        if let Some((mut client, members)) = self.route(node, is_peer_call(&request))? {
            return client.get(members.forward(request.into_inner())).await;
        }
        Ok(Response::new(self.actor_node(&self.node(path)?)))
    }

    async fn list(
        &self,
        request: Request<ListActorsRequest>,
    ) -> Result<Response<ListActorsResponse>, Status> {
        let peer = is_peer_call(&request);
        let mut actors = Vec::new();
        // What answered: a member's last known trees are for `tree`, which says how old.
        let answered = self
            .trees(&request.into_inner().node, peer)
            .await?
            .into_iter()
            .filter(|t| t.error.is_empty());
        for trees in answered {
            let mut pending: Vec<ActorNode> =
                [trees.system, trees.root].into_iter().flatten().collect();
            while let Some(mut n) = pending.pop() {
                let children = std::mem::take(&mut n.children);
                actors.push(n);
                pending.extend(children.into_iter().rev());
            }
        }
        Ok(Response::new(ListActorsResponse { actors }))
    }

    async fn watch_tree(
        &self,
        request: Request<WatchTreeRequest>,
    ) -> Result<Response<TreeEvents>, Status> {
        let peer = is_peer_call(&request);
        let node = request.into_inner().node;
        if peer {
            // Another node watches this one: its own changes alone.
            self.route(&node, peer)?;
        }
        let only = match node.is_empty() {
            true if peer => Some(self.me()),
            true => None,
            false => Some(node),
        };
        let local = match (&self.members, &only) {
            (_, None) => true,
            (Some(members), Some(node)) => members.is_me(node),
            (None, Some(node)) => self.route(node, false)?.is_none(),
        };
        let (tx, out) = mpsc::channel(256);
        // Subscribed before this call returns, so that a tree read after it misses nothing.
        let mut rx = self.tree.subscribe();
        if let Some(members) = &self.members
            && !(local && only.is_some())
        {
            members
                .watch(only, tx.clone(), self.stopping.clone())
                .await?;
        }
        if !local {
            return Ok(Response::new(Box::pin(ReceiverStream::new(out))));
        }
        let mut stopping = self.stopping.clone();
        let me = self.me();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    received = rx.recv() => received,
                    // The node is stopping: the watch ends cleanly (OK).
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                };
                let item = match received {
                    Ok(ev) => Ok(tree_event(&ev, &me)),
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

    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeResponse>, Status> {
        let peer = is_peer_call(&request);
        let nodes = self.trees(&request.into_inner().node, peer).await?;
        let (root, system) = nodes
            .first()
            .map(|t| (t.root.clone(), t.system.clone()))
            .unwrap_or_default();
        Ok(Response::new(TreeResponse {
            root,
            system,
            nodes,
        }))
    }
}

fn tree_event(ev: &LifecycleEvent, node: &str) -> TreeEvent {
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
        node: node.to_string(),
    }
}

/// `node`, on the cluster's node `on` ("" outside a cluster).
fn actor_node(node: &TreeNode, on: &str) -> ActorNode {
    ActorNode {
        path: node.path.clone(),
        kind: node.kind.as_str().to_string(),
        status: node.status.as_str().to_string(),
        restarts: node.restarts,
        pid: node.pid,
        strategy: node.strategy.map(|s| s.as_str().to_string()),
        placement: node.placement.clone(),
        started_at_unix_ms: node.started_at.map(unix_ms),
        children: node.children.iter().map(|c| actor_node(c, on)).collect(),
        restart: node
            .supervision
            .map(|s| s.restart.as_str().to_string())
            .unwrap_or_default(),
        shutdown: node
            .supervision
            .map(|s| s.shutdown.to_string())
            .unwrap_or_default(),
        significant: node.supervision.is_some_and(|s| s.significant),
        last_exit_reason: node.last_exit.as_ref().map(|e| e.reason.clone()),
        last_exit_unix_ms: node.last_exit.as_ref().map(|e| unix_ms(e.at)),
        node: on.to_string(),
    }
}

/// A parser message about a typed spec (`FIELD.PATH: message`, or a message of the whole
/// entry) with its fields named from the request: `spec.FIELD.PATH: message`.
fn typed_error(message: &str) -> String {
    let named = message.split_once(": ").filter(|(path, _)| {
        !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c))
    });
    match named {
        Some((path, rest)) => format!("spec.{path}: {rest}"),
        None => format!("spec: {message}"),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn log_line(l: &LogLine) -> cadre_proto::v1::LogLine {
    cadre_proto::v1::LogLine {
        time_unix_micros: l
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default(),
        path: l.path.clone(),
        stream: l.stream.into(),
        line: l.line.clone(),
    }
}
