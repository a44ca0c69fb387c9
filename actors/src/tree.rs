//! The live view of a node's supervision trees, and the stream of lifecycle events.
//!
//! Supervisors write here synchronously as they start, restart and terminate children, so a
//! snapshot is never behind the supervisors by more than the change in progress. The same
//! changes are broadcast as [`LifecycleEvent`]s for `cadre tree --watch` and the audit log.

use ractor::ActorCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::spec::{
    ActorKind, ChildStatus, ExitReason, Restart, Shutdown, Strategy, SupervisorFlags,
};

/// One lifecycle change of one actor.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    /// When it happened.
    pub at: SystemTime,
    /// The actor's path, e.g. `root/tools/time`.
    pub path: String,
    /// What kind of actor it is.
    pub kind: ActorKind,
    /// What happened.
    pub change: Change,
}

/// What happened to the actor.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new instance is running (first start or a restart).
    Started {
        /// The OS pid of the instance's process, if it has one.
        pid: Option<u32>,
        /// How many times the child has been restarted (0 on its first start).
        restarts: u32,
    },
    /// The instance exited by itself.
    Exited {
        /// Why it exited.
        reason: ExitReason,
    },
    /// Its supervisor is about to start it again.
    Restarting,
    /// Its supervisor terminated it (shutdown order, group restart, `terminate_child`).
    Terminated,
    /// A supervisor exceeded its restart intensity and gave up, failing to its parent.
    Escalated {
        /// The supervisor's exit reason (`reached_max_restart_intensity`).
        reason: String,
    },
    /// Removed from its supervisor (`delete_child`, or a temporary child that exited).
    Deleted,
}

/// A snapshot of one actor and its descendants.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeNode {
    /// Its path, e.g. `root/tools/time`.
    pub path: String,
    /// What kind of actor it is.
    pub kind: ActorKind,
    /// Running, restarting or stopped.
    pub status: ChildStatus,
    /// How many times it has been restarted.
    pub restarts: u32,
    /// The OS pid of its process (local or in a sandbox), if it has one.
    pub pid: Option<u32>,
    /// The restart strategy, for supervisors.
    pub strategy: Option<Strategy>,
    /// The sandbox the actor's work runs in, for hosted actors.
    pub placement: Option<String>,
    /// When the running instance started; `None` while it is not running.
    pub started_at: Option<SystemTime>,
    /// How its supervisor treats it; `None` for a root.
    pub supervision: Option<Supervision>,
    /// How and when its last instance ended, if one has.
    pub last_exit: Option<LastExit>,
    /// Its children, in start order.
    pub children: Vec<TreeNode>,
}

/// The terms of a child's supervision, from its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// When it is restarted.
    pub restart: Restart,
    /// How it is stopped.
    pub shutdown: Shutdown,
    /// Whether its exit may shut its supervisor down.
    pub significant: bool,
}

/// How an actor's last instance ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LastExit {
    /// `normal`, `shutdown`, `killed` or the error (`reached_max_restart_intensity` for a
    /// supervisor that gave up).
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

/// One line an actor's process wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When the node read it.
    pub at: SystemTime,
    /// The actor's path.
    pub path: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line, without its newline.
    pub line: String,
}

/// Where one actor's output lines go: the node's log (tracing) and the actor's bounded buffer
/// in the tree, which `cadre actors logs` reads and follows. Cheap to clone.
#[derive(Clone)]
pub struct ActorLog {
    tree: Tree,
    path: String,
}

/// Lines kept per actor; older ones are dropped.
pub const LOG_LINES_KEPT: usize = 1000;

/// Longest line kept, in bytes; the rest is cut.
const LOG_LINE_BYTES: usize = 4096;

/// Shared handle to the live tree of one node. Cheap to clone.
#[derive(Clone)]
pub struct Tree {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    events: broadcast::Sender<LifecycleEvent>,
    /// Every actor's output lines as they come, for followers.
    lines: broadcast::Sender<Arc<LogLine>>,
}

struct Entry {
    kind: ActorKind,
    status: ChildStatus,
    restarts: u32,
    pid: Option<u32>,
    strategy: Option<Strategy>,
    placement: Option<String>,
    started_at: Option<SystemTime>,
    /// Child paths in start order.
    children: Vec<String>,
    /// The running instance, for supervisors (to start and stop children by path).
    supervisor: Option<(ActorCell, SupervisorFlags)>,
    supervision: Option<Supervision>,
    last_exit: Option<LastExit>,
    /// Its latest output lines, oldest first.
    log: std::collections::VecDeque<Arc<LogLine>>,
}

/// Capacity of the lifecycle broadcast; a subscriber that falls further behind gets `Lagged`.
const EVENT_BUFFER: usize = 4096;

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(HashMap::new())),
            events: broadcast::channel(EVENT_BUFFER).0,
            lines: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// Receives every lifecycle event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.events.subscribe()
    }

    /// The subtree at `path` (`root` for the whole node), or `None` if there is no such actor.
    pub fn snapshot(&self, path: &str) -> Option<TreeNode> {
        let map = self.inner.lock().expect("tree lock");
        snapshot_of(&map, path)
    }

    /// Registers a root actor (a supervisor with no parent).
    pub fn add_root(&self, path: &str, kind: ActorKind) {
        let mut map = self.inner.lock().expect("tree lock");
        map.entry(path.to_string())
            .or_insert_with(|| Entry::new(kind));
    }

    /// Adds a child (not started yet) at the end of its parent's start order.
    pub fn added(&self, parent: &str, path: &str, kind: ActorKind, supervision: Supervision) {
        let mut map = self.inner.lock().expect("tree lock");
        if let Some(p) = map.get_mut(parent) {
            p.children.push(path.to_string());
        }
        let mut entry = Entry::new(kind);
        entry.status = ChildStatus::Stopped;
        entry.started_at = None;
        entry.supervision = Some(supervision);
        map.insert(path.to_string(), entry);
    }

    /// Where the output of the actor at `path` goes.
    pub fn log(&self, path: &str) -> ActorLog {
        ActorLog {
            tree: self.clone(),
            path: path.to_string(),
        }
    }

    /// The last `tail` output lines of the actor at `path` (all it keeps if `None`), oldest
    /// first; `None` if there is no such actor.
    pub fn log_tail(&self, path: &str, tail: Option<usize>) -> Option<Vec<Arc<LogLine>>> {
        let map = self.inner.lock().expect("tree lock");
        let log = &map.get(path)?.log;
        let skip = log.len().saturating_sub(tail.unwrap_or(log.len()));
        Some(log.iter().skip(skip).cloned().collect())
    }

    /// Every actor's output lines from now on.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.lines.subscribe()
    }

    /// Records that a new instance of the child at `path` is running (in `placement`, a
    /// sandbox, if it is hosted).
    pub fn started(
        &self,
        path: &str,
        kind: ActorKind,
        pid: Option<u32>,
        restarts: u32,
        placement: Option<String>,
    ) {
        {
            let mut map = self.inner.lock().expect("tree lock");
            let entry = map
                .entry(path.to_string())
                .or_insert_with(|| Entry::new(kind));
            entry.status = ChildStatus::Running;
            entry.restarts = restarts;
            entry.pid = pid;
            entry.placement = placement;
            entry.started_at = Some(SystemTime::now());
        }
        self.emit(path, kind, Change::Started { pid, restarts });
    }

    /// Records a status change of the child at `path` (exit, termination, restart pending).
    pub fn status(&self, path: &str, kind: ActorKind, status: ChildStatus, change: Change) {
        {
            let mut map = self.inner.lock().expect("tree lock");
            if let Some(entry) = map.get_mut(path) {
                let ended = match &change {
                    Change::Exited { reason } => Some(reason.to_string()),
                    Change::Escalated { reason } => Some(reason.clone()),
                    Change::Terminated => Some(ExitReason::Shutdown.to_string()),
                    _ => None,
                };
                if let Some(reason) = ended {
                    entry.last_exit = Some(LastExit {
                        reason,
                        at: SystemTime::now(),
                    });
                }
                entry.status = status;
                if status != ChildStatus::Running {
                    entry.pid = None;
                    entry.placement = None;
                    entry.started_at = None;
                    entry.supervisor = None;
                }
            }
        }
        self.emit(path, kind, change);
    }

    /// A supervisor instance announces itself and forgets the children of any previous
    /// instance at the same path (they are started afresh).
    pub fn supervisor_init(&self, path: &str, flags: &SupervisorFlags, handle: ActorCell) {
        let mut map = self.inner.lock().expect("tree lock");
        let entry = map
            .entry(path.to_string())
            .or_insert_with(|| Entry::new(ActorKind::Supervisor));
        entry.strategy = Some(flags.strategy);
        entry.supervisor = Some((handle, flags.clone()));
        let old = std::mem::take(&mut entry.children);
        for child in old {
            remove_subtree(&mut map, &child);
        }
    }

    /// The actor of the running supervisor at `path` and its flags (see
    /// [`Tree::supervisor`](crate::supervisor) for its handle).
    pub(crate) fn supervisor_cell(&self, path: &str) -> Option<(ActorCell, SupervisorFlags)> {
        let map = self.inner.lock().expect("tree lock");
        map.get(path).and_then(|e| e.supervisor.clone())
    }

    /// Removes the child at `path` and its descendants.
    pub fn deleted(&self, parent: &str, path: &str, kind: ActorKind) {
        {
            let mut map = self.inner.lock().expect("tree lock");
            if let Some(p) = map.get_mut(parent) {
                p.children.retain(|c| c != path);
            }
            remove_subtree(&mut map, path);
        }
        self.emit(path, kind, Change::Deleted);
    }

    /// Publishes an event that changes nothing in the snapshot (e.g. an escalation).
    pub fn emit(&self, path: &str, kind: ActorKind, change: Change) {
        // No subscriber is not an error: events are also reflected in the snapshot.
        let _ = self.events.send(LifecycleEvent {
            at: SystemTime::now(),
            path: path.to_string(),
            kind,
            change,
        });
    }
}

impl Change {
    /// `started`, `exited`, `restarting`, `terminated`, `escalated` or `deleted`.
    pub fn name(&self) -> &'static str {
        match self {
            Change::Started { .. } => "started",
            Change::Exited { .. } => "exited",
            Change::Restarting => "restarting",
            Change::Terminated => "terminated",
            Change::Escalated { .. } => "escalated",
            Change::Deleted => "deleted",
        }
    }

    /// The exit or escalation reason, if the change has one.
    pub fn reason(&self) -> Option<String> {
        match self {
            Change::Exited { reason } => Some(reason.to_string()),
            Change::Escalated { reason } => Some(reason.clone()),
            _ => None,
        }
    }

    /// The new instance's pid and restart count, for `Started`.
    pub fn started(&self) -> (Option<u32>, u32) {
        match self {
            Change::Started { pid, restarts } => (*pid, *restarts),
            _ => (None, 0),
        }
    }
}

impl Entry {
    fn new(kind: ActorKind) -> Self {
        Self {
            kind,
            status: ChildStatus::Running,
            restarts: 0,
            pid: None,
            strategy: None,
            placement: None,
            started_at: Some(SystemTime::now()),
            children: Vec::new(),
            supervisor: None,
            supervision: None,
            last_exit: None,
            log: std::collections::VecDeque::new(),
        }
    }
}

impl std::fmt::Debug for ActorLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorLog")
            .field("path", &self.path)
            .finish()
    }
}

/// Two logs are the same when they are of the same actor of the same tree.
impl PartialEq for ActorLog {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && Arc::ptr_eq(&self.tree.inner, &other.tree.inner)
    }
}

impl ActorLog {
    /// Records one line the actor's process wrote on `stream` (`stdout` or `stderr`).
    pub fn line(&self, stream: &'static str, line: &str) {
        tracing::info!(target: "cadre::process", actor = %self.path, stream, "{line}");
        let mut cut = line.len().min(LOG_LINE_BYTES);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let line = Arc::new(LogLine {
            at: SystemTime::now(),
            path: self.path.clone(),
            stream,
            line: line[..cut].to_string(),
        });
        {
            let mut map = self.tree.inner.lock().expect("tree lock");
            if let Some(entry) = map.get_mut(&self.path) {
                if entry.log.len() == LOG_LINES_KEPT {
                    entry.log.pop_front();
                }
                entry.log.push_back(line.clone());
            }
        }
        let _ = self.tree.lines.send(line);
    }
}

fn remove_subtree(map: &mut HashMap<String, Entry>, path: &str) {
    let mut pending = vec![path.to_string()];
    while let Some(p) = pending.pop() {
        if let Some(entry) = map.remove(&p) {
            pending.extend(entry.children);
        }
    }
}

fn snapshot_of(map: &HashMap<String, Entry>, path: &str) -> Option<TreeNode> {
    let entry = map.get(path)?;
    Some(TreeNode {
        path: path.to_string(),
        kind: entry.kind,
        status: entry.status,
        restarts: entry.restarts,
        pid: entry.pid,
        strategy: entry.strategy,
        placement: entry.placement.clone(),
        started_at: entry.started_at,
        supervision: entry.supervision,
        last_exit: entry.last_exit.clone(),
        children: entry
            .children
            .iter()
            .filter_map(|c| snapshot_of(map, c))
            .collect(),
    })
}
