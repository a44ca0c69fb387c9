//! The controller: the only writer of the event log.
//!
//! Every append goes through its mailbox (a bounded queue drained by one writer thread). The
//! writer takes everything waiting in the queue, assigns each conversation's next `seq` values
//! (1, 2, 3, … with no gaps), writes the whole batch in one durable transaction (group commit),
//! and only then acknowledges each caller and publishes the events to subscribers.
//!
//! As in restate's design, the durable record is an append-only commit log ([`CommitLog`]): a
//! commit appends the batch as one record (on the embedded node, one `pwrite` and one
//! `fdatasync` to a segment file), and a materializer thread moves committed entries into the
//! store's per-conversation keyspace in large transactions, then releases the records. Until then they
//! are served from memory (the tail); after a crash, startup replays whatever the log still
//! holds before accepting appends. An append
//! may carry an idempotency key: a retry with the same key returns the original seqs and writes
//! nothing. If the store fails, every caller in the batch gets the error and nothing of the
//! batch is visible.
//!
//! The controller runs as a permanent child of the node's root supervisor
//! ([`Controller::child_spec`]); if its writer dies, the supervisor restarts it and the caches
//! are rebuilt from the store.

mod audit;
pub use audit::Audit;
mod commit_log;
pub mod copy;
mod keys;
mod materializer;
mod subscribe;
mod writer;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cadre_proto::v1::Event;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};

use crate::child::{ChildSpec, StartContext, StartError, StartFuture, Started};
use crate::event_log::EventLog;
pub use crate::event_log::{
    AppendError, AppendRequest, Appended, DeleteError, NewEvent, OpenExec, SubscribeError,
    Subscription,
};
use crate::spec::{ActorKind, ChildExit, ExitReason};
use crate::store::tuple::{Elem, range};
use crate::store::{Store, StoreError};
pub use commit_log::{CommitLog, MAX_RECORD_BYTES, RecordFn, StoreLog};

/// Conversation id of the node's audit log (supervision lifecycle events).
pub const AUDIT_CONVERSATION: &str = "cadre.audit";

/// Limits on what the log accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Appends that would take a conversation past this many events are refused.
    pub max_events_per_conversation: u64,
    /// A warning is logged once when a conversation reaches this share of the cap (percent).
    pub warn_percent: u8,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_events_per_conversation: 1_000_000,
            warn_percent: 80,
        }
    }
}

/// Handle to the controller; cheap to clone, valid across controller restarts.
#[derive(Clone)]
pub struct Controller {
    shared: Arc<Shared>,
}

struct Shared {
    /// Materialized events, metadata, idempotency records, the exec index.
    store: Arc<dyn Store>,
    /// Where commits become durable.
    log: Arc<dyn CommitLog>,
    limits: HistoryLimits,
    /// The current writer's queue; `None` while the controller is down.
    queue: RwLock<Option<(mpsc::Sender<writer::Command>, Arc<writer::Linger>)>>,
    tail: Arc<materializer::SharedTail>,
    hub: subscribe::Hub,
    /// The execs open now, by (conversation, exec): set when the controller starts, kept by
    /// the writer.
    open_execs: Mutex<std::collections::BTreeMap<(String, String), OpenExec>>,
    /// Lifecycle events of this tree are written to the audit conversation.
    audited: std::sync::OnceLock<(crate::tree::Tree, String)>,
}

/// Appends waiting for the writer beyond this make callers wait (backpressure).
const QUEUE_DEPTH: usize = 65_536;

impl Controller {
    /// A controller over `store`; it accepts appends once started by its supervisor (or
    /// [`Controller::start_detached`]).
    pub fn new(store: Arc<dyn Store>, limits: HistoryLimits) -> Self {
        Self::with_log(store.clone(), Arc::new(StoreLog(store)), limits)
    }

    /// Like [`Controller::new`], committing to `log` instead of the store's `log` keyspace (e.g.
    /// an append-only file, which commits with one `fdatasync` and no B-tree work).
    pub fn with_log(store: Arc<dyn Store>, log: Arc<dyn CommitLog>, limits: HistoryLimits) -> Self {
        let shared = Arc::new(Shared {
            store,
            log,
            limits,
            queue: RwLock::new(None),
            tail: Arc::default(),
            hub: subscribe::Hub::default(),
            open_execs: Mutex::default(),
            audited: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&shared);
        crate::metrics::metrics().sample_with(
            "event_log",
            Box::new(move |m| {
                let Some(shared) = weak.upgrade() else {
                    return false;
                };
                let queued = shared
                    .queue
                    .read()
                    .expect("queue lock")
                    .as_ref()
                    .map_or(0, |(q, _)| q.max_capacity() - q.capacity());
                m.log_queue_depth.set(queued as i64);
                m.log_subscriptions.set(shared.hub.live() as i64);
                true
            }),
        );
        Self { shared }
    }

    /// Writes `tree`'s lifecycle events to the audit conversation ([`AUDIT_CONVERSATION`])
    /// while the controller runs, marked with `node` (the node's name in its cluster, else
    /// empty). Call before starting it.
    pub fn audit(&self, tree: &crate::tree::Tree, node: &str) {
        let _ = self.shared.audited.set((tree.clone(), node.to_string()));
    }

    /// The controller as a permanent supervised child (kind `system`).
    pub fn child_spec(&self, id: &str) -> ChildSpec {
        let controller = self.clone();
        let start = move |ctx: StartContext| -> StartFuture {
            let controller = controller.clone();
            Box::pin(async move {
                let (actor, _) =
                    Actor::spawn_linked(None, ControllerActor, controller, ctx.supervisor)
                        .await
                        .map_err(|e| StartError(e.to_string()))?;
                Ok(Started::actor(actor.get_cell()))
            })
        };
        ChildSpec::worker(id, ActorKind::System, start)
    }

    /// Starts the controller without a supervisor (tools and benchmarks).
    pub async fn start_detached(&self) -> Result<ActorRef<ControllerMsg>, StartError> {
        let (actor, _) = Actor::spawn(None, ControllerActor, self.clone())
            .await
            .map_err(|e| StartError(e.to_string()))?;
        Ok(actor)
    }

    /// Ends every subscription it serves, now and later, with `why` (a controller that lost
    /// its lease: its subscribers go on with the next controller).
    pub fn end_subscriptions(&self, why: StoreError) {
        self.shared.hub.end_all(SubscribeError::Store(why));
    }

    /// The store the controller reads and writes.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Appends atomically; returns after the events are durable.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        self.submit(request, false).await
    }

    /// Appends the first events of a new conversation; [`AppendError::AlreadyExists`] (and
    /// nothing written) if it has any events already.
    pub async fn create(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        self.submit(request, true).await
    }

    /// Conversations in id order after `after` (exclusive), at most `limit`, with their last seq.
    pub async fn list(&self, after: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let shared = self.shared.clone();
        let after = after.to_string();
        blocking(move || {
            let (begin, end) = range(&[Elem::Str(keys::META)]);
            let begin = if after.is_empty() {
                begin
            } else {
                let mut k = keys::meta(&after);
                k.push(0xff);
                k
            };
            let mut out: std::collections::BTreeMap<String, u64> =
                std::collections::BTreeMap::new();
            shared.store.read(&mut |t| {
                // A read may run again (FoundationDB retries it): start afresh.
                out.clear();
                for (k, v) in t.range(&begin, &end, limit, false)? {
                    if let Some(crate::store::tuple::Value::Str(conv)) =
                        crate::store::tuple::unpack(&k)
                            .map_err(|e| StoreError::Io(e.to_string()))?
                            .get(1)
                    {
                        out.insert(conv.clone(), keys::decode_u64(&v));
                    }
                }
                Ok(())
            })?;
            // Conversations only in the tail so far.
            let tail = shared.tail.tail.lock().expect("tail lock");
            for (conv, q) in &tail.by_conversation {
                if conv.as_str() > after.as_str()
                    && let Some(last) = q.back()
                {
                    out.insert(conv.clone(), last.seq);
                }
            }
            Ok(out.into_iter().take(limit).collect())
        })
        .await
    }

    /// Deletes a conversation: its events, idempotency records and open execs, durably and in
    /// order with appends (an append queued after the delete starts a new conversation at
    /// seq 1). Live subscribers end with [`SubscribeError::Deleted`]. Returns how many events
    /// it had. The audit log cannot be deleted.
    pub async fn delete(&self, conversation_id: &str) -> Result<u64, DeleteError> {
        if conversation_id.is_empty() {
            return Err(DeleteError::Invalid("conversation_id is empty".into()));
        }
        if conversation_id == AUDIT_CONVERSATION {
            return Err(DeleteError::Invalid(format!(
                "the audit log `{AUDIT_CONVERSATION}` cannot be deleted"
            )));
        }
        self.command(|reply| writer::Command::Delete {
            conversation_id: conversation_id.to_string(),
            reply,
        })
        .await
        .ok_or(DeleteError::Unavailable)?
    }

    async fn submit(
        &self,
        request: AppendRequest,
        only_new: bool,
    ) -> Result<Appended, AppendError> {
        if request.conversation_id.is_empty() {
            return Err(AppendError::Invalid("conversation_id is empty".into()));
        }
        if request.events.is_empty() {
            return Err(AppendError::Invalid("no events to append".into()));
        }
        let started = std::time::Instant::now();
        let appended = self
            .command(|reply| writer::Command::Append {
                request,
                only_new,
                reply,
            })
            .await
            .ok_or(AppendError::Unavailable)?;
        crate::metrics::metrics().log_appended(started.elapsed());
        appended
    }

    /// Queues a command for the writer and waits for its answer; `None` if the writer is not
    /// running (or stopped before answering).
    async fn command<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> writer::Command,
    ) -> Option<T> {
        let (queue, linger) = self.shared.queue.read().expect("queue lock").clone()?;
        let (reply, answer) = oneshot::channel();
        queue.send(command(reply)).await.ok()?;
        linger.notify();
        answer.await.ok()
    }

    /// Events of a conversation after `after_seq` (backfill), then live ones, with no gap and
    /// no duplicate at the hand-over.
    pub async fn subscribe(
        &self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Subscription, SubscribeError> {
        let feed =
            subscribe::Feed::start(self.clone(), conversation_id.to_string(), after_seq).await?;
        Ok(Subscription::new(after_seq, feed.into_stream()))
    }

    /// The last seq of a conversation, or `None` if it has no events.
    pub async fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError> {
        // Most asks are about a conversation in use, whose last events are still in the tail.
        if let Some(last) = tail_last(&self.shared, conversation_id) {
            return Ok(Some(last));
        }
        let shared = self.shared.clone();
        let conversation = conversation_id.to_string();
        blocking(move || last_committed(&shared, &conversation)).await
    }

    /// Up to `limit` events of a conversation after `after_seq`, in order.
    pub async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        // The tail first: whatever leaves it afterwards is materialized by the time we read.
        let (tail, tail_first) = {
            let tail = self.shared.tail.tail.lock().expect("tail lock");
            match tail.by_conversation.get(conversation_id) {
                Some(q) => (
                    q.iter()
                        .filter(|e| e.seq > after_seq)
                        .take(limit)
                        .map(|e| Event::clone(e))
                        .collect::<Vec<_>>(),
                    q.front().map(|e| e.seq),
                ),
                None => (Vec::new(), None),
            }
        };
        let from = after_seq.saturating_add(1);
        let mut out = Vec::new();
        if tail_first.is_none_or(|first| from < first) {
            let store = self.shared.store.clone();
            let begin = keys::event(conversation_id, from);
            let end = match tail_first {
                Some(first) => keys::event(conversation_id, first),
                None => range(&[Elem::Str(keys::EVENTS), Elem::Str(conversation_id)]).1,
            };
            out = blocking(move || {
                let mut out = Vec::new();
                store.read(&mut |t| {
                    out = keys::read_events(t, &begin, &end, limit)?;
                    Ok(())
                })?;
                Ok(out)
            })
            .await?;
        }
        let room = limit - out.len();
        out.extend(tail.into_iter().take(room));
        Ok(out)
    }

    /// The execs open now (their last state change was not terminal), with the node that
    /// runs each: right after a start, those the last run left unfinished.
    pub fn open_execs(&self) -> Vec<OpenExec> {
        self.shared
            .open_execs
            .lock()
            .expect("open execs")
            .values()
            .cloned()
            .collect()
    }
}

#[async_trait::async_trait]
impl EventLog for Controller {
    async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        Controller::append(self, request).await
    }

    async fn create(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        Controller::create(self, request).await
    }

    async fn delete(&self, conversation_id: &str) -> Result<u64, DeleteError> {
        Controller::delete(self, conversation_id).await
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        Controller::read(self, conversation_id, after_seq, limit).await
    }

    async fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError> {
        Controller::last_seq(self, conversation_id).await
    }

    async fn list(&self, after: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        Controller::list(self, after, limit).await
    }

    async fn subscribe(
        &self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Subscription, SubscribeError> {
        Controller::subscribe(self, conversation_id, after_seq).await
    }

    async fn open_execs(&self) -> Result<Vec<OpenExec>, StoreError> {
        Ok(Controller::open_execs(self))
    }
}

/// Messages of the controller actor. Appends do not come here: they go to the writer queue.
pub enum ControllerMsg {
    /// The writer thread ended: fail so that the supervisor restarts the controller.
    WriterExited(String),
}

// Never sent to another node (ractor's `cluster` feature asks each message type).
impl ractor::Message for ControllerMsg {}

struct ControllerActor;

struct ControllerState {
    controller: Controller,
    writer: Option<std::thread::JoinHandle<()>>,
    audit: Option<audit::Audit>,
}

impl Actor for ControllerActor {
    type Msg = ControllerMsg;
    type State = ControllerState;
    type Arguments = Controller;

    async fn pre_start(
        &self,
        myself: ActorRef<ControllerMsg>,
        controller: Controller,
    ) -> Result<ControllerState, ActorProcessingErr> {
        let shared = &controller.shared;
        let store = shared.store.clone();
        let log = shared.log.clone();
        let tail = shared.tail.clone();
        let (open, next_lsn) = blocking(move || {
            // A previous instance's materializer may still be finishing its last batch.
            let mut guard = tail.tail.lock().expect("tail lock");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while tail.materializers.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                if std::time::Instant::now() > deadline {
                    return Err(StoreError::Io(
                        "the previous materializer did not stop".into(),
                    ));
                }
                guard = tail
                    .changed
                    .wait_timeout(guard, std::time::Duration::from_millis(50))
                    .expect("tail lock")
                    .0;
            }
            *guard = materializer::Tail::default();
            drop(guard);
            let replayed = materializer::replay(store.as_ref(), log.as_ref())?;
            if replayed > 0 {
                tracing::info!(entries = replayed, "event log replayed");
            }
            Ok((keys::mark_open_execs(store.as_ref())?, log.next_lsn()?))
        })
        .await?;
        if !open.is_empty() {
            tracing::warn!(
                count = open.len(),
                "execs left unfinished by the last run; marked for recovery"
            );
        }
        *shared.open_execs.lock().expect("open execs") = open
            .into_iter()
            .map(|o| ((o.conversation_id.clone(), o.exec_id.clone()), o))
            .collect();
        let materializer = materializer::spawn(
            shared.store.clone(),
            shared.log.clone(),
            shared.tail.clone(),
        )?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let linger = Arc::new(writer::Linger::default());
        let writer = writer::spawn(
            controller.clone(),
            rx,
            next_lsn,
            linger.clone(),
            myself,
            materializer,
        )?;
        *shared.queue.write().expect("queue lock") = Some((tx, linger));
        let audit = shared.audited.get().map(|(tree, node)| {
            audit::Audit::spawn(tree.subscribe(), Arc::new(controller.clone()), node.clone())
        });
        Ok(ControllerState {
            controller,
            writer: Some(writer),
            audit,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ControllerMsg>,
        msg: ControllerMsg,
        _state: &mut ControllerState,
    ) -> Result<(), ActorProcessingErr> {
        let ControllerMsg::WriterExited(why) = msg;
        Err(Box::new(ChildExit(ExitReason::Error(format!(
            "event log writer exited: {why}"
        )))))
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ControllerMsg>,
        state: &mut ControllerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(audit) = state.audit.take() {
            audit.flush().await;
        }
        // Closing the queue lets the writer finish what it has, then exit.
        state
            .controller
            .shared
            .queue
            .write()
            .expect("queue lock")
            .take();
        if let Some(writer) = state.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        Ok(())
    }
}

impl Drop for ControllerState {
    fn drop(&mut self) {
        if let Some(audit) = self.audit.take() {
            audit.abort();
        }
        // Killed without post_stop: still close the queue so no append waits forever.
        self.controller
            .shared
            .queue
            .write()
            .expect("queue lock")
            .take();
    }
}

/// The last committed seq of a conversation: from the tail, else the materialized keyspace.
fn last_committed(shared: &Shared, conversation_id: &str) -> Result<Option<u64>, StoreError> {
    if let Some(last) = tail_last(shared, conversation_id) {
        return Ok(Some(last));
    }
    let key = keys::meta(conversation_id);
    let mut out = None;
    shared.store.read(&mut |t| {
        out = t.get(&key)?.map(|v| keys::decode_u64(&v));
        Ok(())
    })?;
    Ok(out)
}

/// The seq of the conversation's last event in the tail, if it has one there.
fn tail_last(shared: &Shared, conversation_id: &str) -> Option<u64> {
    let tail = shared.tail.tail.lock().expect("tail lock");
    tail.by_conversation
        .get(conversation_id)
        .and_then(|q| q.back())
        .map(|e| e.seq)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}
