//! Test workers and an event recorder for supervision tests.
//!
//! A [`Harness`] hands out in-process workers that can be told to exit with any reason, keeps a
//! handle to each child's current instance, and records every lifecycle event of the tree.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::{
    ActorKind, Change, ChildSpec, LifecycleEvent, Restart, StartContext, StartError, StartFuture,
    Started, Strategy, Tree,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// How a test worker exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Normal,
    Shutdown,
    Error,
    Panic,
    Killed,
}

pub const ALL_HOWS: [How; 5] = [
    How::Normal,
    How::Shutdown,
    How::Error,
    How::Panic,
    How::Killed,
];

/// Records lifecycle events and holds the current instance of every test worker.
#[derive(Clone)]
pub struct Harness {
    pub tree: Tree,
    events: Arc<Mutex<Vec<LifecycleEvent>>>,
    workers: Arc<Mutex<HashMap<String, ActorRef<WorkerMsg>>>>,
    /// `stop:<path>` is appended when a worker's graceful stop (post_stop) runs.
    pub log: Arc<Mutex<Vec<String>>>,
}

const SYNC: &str = "<sync>";

/// A compact event for comparisons: (path, change).
pub type Ev = (String, &'static str);

impl Harness {
    pub fn new() -> Self {
        let tree = Tree::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut rx = tree.subscribe();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Ok(ev) = rx.recv().await {
                sink.lock().unwrap().push(ev);
            }
        });
        Self {
            tree,
            events,
            workers: Arc::new(Mutex::new(HashMap::new())),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A permanent worker (5000 ms shutdown).
    pub fn worker(&self, id: &str) -> ChildSpec {
        self.worker_with(id, WorkerBehaviour::default())
    }

    pub fn worker_with(&self, id: &str, behaviour: WorkerBehaviour) -> ChildSpec {
        let h = self.clone();
        let start = move |ctx: StartContext| -> StartFuture {
            let h = h.clone();
            let behaviour = behaviour.clone();
            Box::pin(async move {
                if let Some(fail) = &behaviour.fail_starts {
                    let mut left = fail.lock().unwrap();
                    if *left > 0 {
                        *left -= 1;
                        return Err(StartError("refusing to start".into()));
                    }
                }
                let path = ctx.path.clone();
                let (actor, _) = Actor::spawn_linked(
                    None,
                    Worker,
                    (path.clone(), h.clone(), behaviour),
                    ctx.supervisor,
                )
                .await
                .map_err(|e| StartError(e.to_string()))?;
                h.workers.lock().unwrap().insert(path, actor.clone());
                Ok(Started::actor(actor.get_cell()))
            })
        };
        ChildSpec::worker(id, ActorKind::Tool, start)
    }

    /// The current instance of the worker at `path`.
    pub fn current(&self, path: &str) -> ActorRef<WorkerMsg> {
        self.workers
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_else(|| panic!("no worker at {path}"))
    }

    /// Makes the worker at `path` exit with `how`, and returns once it is dead (so its exit is
    /// already queued at its supervisor).
    pub async fn exit(&self, path: &str, how: How) {
        let w = self.current(path);
        match how {
            How::Killed => {
                let _ = w.kill_and_wait(None).await;
            }
            _ => {
                let _ = w.cast(WorkerMsg::Exit(how));
                let _ = w.wait(Some(Duration::from_secs(10))).await;
            }
        }
    }

    /// Every event so far, compacted.
    pub fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().iter().map(compact).collect()
    }

    pub fn raw_events(&self) -> Vec<LifecycleEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until every event emitted so far is recorded, then forgets them all.
    pub async fn clear(&self) {
        self.tree.emit(SYNC, ActorKind::System, Change::Deleted);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.events.lock().unwrap().iter().any(|e| e.path == SYNC) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "event recorder is stuck"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.events.lock().unwrap().clear();
        self.log.lock().unwrap().clear();
    }

    /// Waits until at least `n` events are recorded, then a little longer so that an unexpected
    /// extra event would be seen too.
    pub async fn settle(&self, n: usize) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.events.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.events()
    }

    /// Waits until `pred` holds for the events, or panics after 10 s.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let evs = self.events();
            if pred(&evs) {
                return evs;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; events: {evs:#?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

pub fn compact(ev: &LifecycleEvent) -> Ev {
    (ev.path.clone(), ev.change.name())
}

pub fn ev(path: &str, change: &'static str) -> Ev {
    (path.to_string(), change)
}

/// What a test worker does beyond exiting on request.
#[derive(Clone, Default)]
pub struct WorkerBehaviour {
    /// post_stop takes this long (a worker slow to shut down).
    pub stop_delay: Option<Duration>,
    /// The next N starts fail.
    pub fail_starts: Option<Arc<Mutex<u32>>>,
}

pub struct Worker;

pub enum WorkerMsg {
    Exit(How),
}

// Never sent to another node (ractor's `cluster` feature asks each message type).
impl ractor::Message for WorkerMsg {}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = (String, Harness, WorkerBehaviour);
    type Arguments = (String, Harness, WorkerBehaviour);

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Exit(how) = msg;
        match how {
            How::Normal => myself.stop(None),
            How::Shutdown => myself.stop(Some("shutdown".into())),
            How::Error => return Err("boom".into()),
            How::Panic => panic!("worker panicked"),
            How::Killed => myself.kill(),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerMsg>,
        (path, h, behaviour): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(d) = behaviour.stop_delay {
            tokio::time::sleep(d).await;
        }
        h.log.lock().unwrap().push(format!("stop:{path}"));
        Ok(())
    }
}

/// Whether OTP restarts a child of this restart type after this exit.
pub fn restarts(restart: Restart, how: How) -> bool {
    match restart {
        Restart::Permanent => true,
        Restart::Transient => matches!(how, How::Error | How::Panic | How::Killed),
        Restart::Temporary => false,
    }
}

/// The events OTP produces when `root/b` (of a, b, c) exits.
pub fn expected(strategy: Strategy, restart: Restart, how: How) -> Vec<Ev> {
    let mut out = vec![ev("root/b", "exited")];
    if !restarts(restart, how) {
        if restart == Restart::Temporary {
            out.push(ev("root/b", "deleted"));
        }
        return out;
    }
    let group: &[&str] = match strategy {
        Strategy::OneForOne => &["b"],
        Strategy::OneForAll => {
            out.extend([ev("root/c", "terminated"), ev("root/a", "terminated")]);
            &["a", "b", "c"]
        }
        Strategy::RestForOne => {
            out.push(ev("root/c", "terminated"));
            &["b", "c"]
        }
    };
    for g in group {
        out.push(ev(&format!("root/{g}"), "restarting"));
    }
    for g in group {
        out.push(ev(&format!("root/{g}"), "started"));
    }
    out
}
