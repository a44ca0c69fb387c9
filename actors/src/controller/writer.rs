//! The writer thread: drains the controller's queue into group commits of log entries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cadre_proto::v1::{Event, ExecState, event};
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};

use super::commit_log::MAX_RECORD_BYTES;
use super::keys;
use super::materializer::{MAX_TAIL, Pending};
use super::{
    AppendError, AppendRequest, Appended, Controller, ControllerMsg, DeleteError, OpenExec,
    now_micros,
};
use crate::store::StoreError;

/// Most events and bytes in one group commit (well under the store's 10 MB transaction limit).
const MAX_BATCH_EVENTS: usize = 16_384;
const MAX_BATCH_BYTES: usize = 4 << 20;

pub(super) enum Command {
    Append {
        request: AppendRequest,
        /// Refuse unless the conversation has no events yet.
        only_new: bool,
        reply: oneshot::Sender<Result<Appended, AppendError>>,
    },
    Delete {
        conversation_id: String,
        reply: oneshot::Sender<Result<u64, DeleteError>>,
    },
}

type Reply = oneshot::Sender<Result<Appended, AppendError>>;

/// Longest a delete waits for the materializer to catch up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a commit waits for more appends to join it.
const MAX_LINGER: Duration = Duration::from_micros(500);

/// Lets appenders wake a writer that waits for more of them ([`Linger::notify`]).
#[derive(Default)]
pub(super) struct Linger {
    thread: OnceLock<std::thread::Thread>,
    lingering: AtomicBool,
}

impl Linger {
    /// Called after queueing an append.
    pub(super) fn notify(&self) {
        // Pairs with the writer's store of `lingering` before it looks at the queue: either it
        // sees this append or this sees it lingering.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.lingering.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }
}

/// Requests taken from the queue for the next commit, and a delete queued after them.
#[derive(Default)]
struct Batch {
    requests: Vec<(AppendRequest, bool, Reply)>,
    events: usize,
    bytes: usize,
    delete: Option<(String, oneshot::Sender<Result<u64, DeleteError>>)>,
}

impl Batch {
    fn push(&mut self, command: Command) {
        let (request, only_new, reply) = match command {
            Command::Append {
                request,
                only_new,
                reply,
            } => (request, only_new, reply),
            Command::Delete {
                conversation_id,
                reply,
            } => {
                self.delete = Some((conversation_id, reply));
                return;
            }
        };
        self.events += request.events.len();
        self.bytes += request
            .events
            .iter()
            .map(|e| e.kind.encoded_len())
            .sum::<usize>();
        self.requests.push((request, only_new, reply));
    }

    /// Whether to stop taking from the queue: appends after a delete wait for it.
    fn full(&self) -> bool {
        self.events >= MAX_BATCH_EVENTS || self.bytes >= MAX_BATCH_BYTES || self.delete.is_some()
    }

    /// Takes what is waiting in the queue, up to the batch limits.
    fn fill(&mut self, rx: &mut mpsc::Receiver<Command>) {
        while !self.full() {
            match rx.try_recv() {
                Ok(command) => self.push(command),
                Err(_) => return,
            }
        }
    }
}

/// What one request of a batch came to.
enum Outcome {
    Written(Appended, Vec<Pending>),
    Duplicate(Appended),
    Refused(AppendError),
}

/// Runs the writer; when its queue closes, it closes the tail and waits for `materializer` to
/// drain it.
pub(super) fn spawn(
    controller: Controller,
    rx: mpsc::Receiver<Command>,
    next_lsn: u64,
    linger: Arc<Linger>,
    actor: ActorRef<ControllerMsg>,
    materializer: std::thread::JoinHandle<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cadre-log-write".into())
        .spawn(move || {
            let tail = controller.shared.tail.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Writer::new(controller, next_lsn, linger).run(rx)
            }));
            tail.tail.lock().expect("tail lock").closed = true;
            tail.changed.notify_all();
            let _ = materializer.join();
            if let Err(panic) = result {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                let _ = actor.cast(ControllerMsg::WriterExited(why));
            }
        })
}

/// A node's lease on an exec: the node, and the lease's epoch.
type Lease = (String, u64);

struct Writer {
    controller: Controller,
    /// Last committed seq per conversation (loaded on first use).
    last_seq: HashMap<String, u64>,
    warned: HashSet<String>,
    /// Open execs per conversation (the last state change of each was not terminal), with
    /// the lease of the node that runs each.
    open_execs: HashMap<String, HashMap<String, Lease>>,
    /// Lsn of the next commit log record.
    next_lsn: u64,
    linger: Arc<Linger>,
}

impl Writer {
    fn new(controller: Controller, next_lsn: u64, linger: Arc<Linger>) -> Self {
        let mut open_execs: HashMap<String, HashMap<String, Lease>> = HashMap::new();
        for open in controller.open_execs() {
            open_execs
                .entry(open.conversation_id)
                .or_default()
                .insert(open.exec_id, (open.node, open.epoch));
        }
        Self {
            open_execs,
            controller,
            linger,
            last_seq: HashMap::new(),
            warned: HashSet::new(),
            next_lsn,
        }
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let _ = self.linger.thread.set(std::thread::current());
        let mut batch = Batch::default();
        // Callers answered by the last commit plus those already queued then: most of them
        // append again at once, and a commit that waits a moment for them halves the number of
        // fsyncs (otherwise the callers settle into two cohorts that alternate).
        let mut expected = 0;
        let mut last_commit = Duration::ZERO;
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            batch.fill(&mut rx);
            if batch.requests.len() < expected && !batch.full() {
                let deadline = Instant::now() + (last_commit / 2).min(MAX_LINGER);
                self.linger.lingering.store(true, Ordering::SeqCst);
                loop {
                    batch.fill(&mut rx);
                    let now = Instant::now();
                    if batch.requests.len() >= expected || batch.full() || now >= deadline {
                        break;
                    }
                    std::thread::park_timeout(deadline - now);
                }
                self.linger.lingering.store(false, Ordering::SeqCst);
            }
            let answered = batch.requests.len();
            if answered > 0 {
                let started = Instant::now();
                self.commit(&mut batch.requests);
                last_commit = started.elapsed();
                crate::metrics::metrics().log_committed(last_commit, answered);
            }
            if let Some((conversation, reply)) = batch.delete.take() {
                let _ = reply.send(self.delete(&conversation));
            }
            batch.events = 0;
            batch.bytes = 0;
            expected = answered + rx.len();
        }
    }

    /// Commits a batch in one transaction; a batch that is too large as a whole is committed
    /// request by request, so one oversized request fails alone.
    fn commit(&mut self, batch: &mut Vec<(AppendRequest, bool, Reply)>) {
        self.wait_for_materializer();
        let requests: Vec<(&AppendRequest, bool)> = batch.iter().map(|(r, n, _)| (r, *n)).collect();
        match self.transact(&requests) {
            Ok(outcomes) => {
                let replies = batch.drain(..).map(|(_, _, reply)| reply);
                self.finish(outcomes, replies);
            }
            Err(StoreError::TooLarge { .. }) if batch.len() > 1 => {
                for one in std::mem::take(batch) {
                    self.commit(&mut vec![one]);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "event log commit failed");
                for (_, _, reply) in batch.drain(..) {
                    let _ = reply.send(Err(AppendError::Store(e.clone())));
                }
            }
        }
    }

    /// Backpressure: wait while the materializer is far behind.
    fn wait_for_materializer(&self) {
        let shared = &self.controller.shared.tail;
        let mut tail = shared.tail.lock().expect("tail lock");
        while tail.entries.len() >= MAX_TAIL {
            tail = shared.changed.wait(tail).expect("tail lock");
        }
    }

    fn finish(&mut self, outcomes: Vec<Outcome>, replies: impl Iterator<Item = Reply>) {
        let controller = self.controller.clone();
        let shared = &controller.shared;
        // Every event is in the tail before anyone hears of it.
        {
            let mut tail = shared.tail.tail.lock().expect("tail lock");
            for outcome in &outcomes {
                if let Outcome::Written(_, pending) = outcome {
                    tail.push(pending.clone());
                }
            }
        }
        shared.tail.changed.notify_all();
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            match outcome {
                Outcome::Written(appended, pending) => {
                    let conversation = pending[0].event.conversation_id.clone();
                    self.last_seq
                        .insert(conversation.clone(), appended.last_seq);
                    self.warn_near_limit(&conversation, appended.last_seq);
                    let _ = reply.send(Ok(appended));
                    shared.hub.publish(
                        &conversation,
                        pending.into_iter().map(|p| p.event).collect(),
                    );
                }
                Outcome::Duplicate(appended) => {
                    let _ = reply.send(Ok(appended));
                }
                Outcome::Refused(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Deletes a conversation once everything committed before is materialized (and its
    /// commit log records released, so a replay cannot bring the events back), in one store
    /// transaction.
    fn delete(&mut self, conv: &str) -> Result<u64, DeleteError> {
        let shared = self.controller.shared.clone();
        let last = self.last_seq_of(conv).map_err(DeleteError::Store)?;
        if last == 0 {
            return Err(DeleteError::NotFound(conv.to_string()));
        }
        self.drain_tail()?;
        shared
            .log
            .release(self.next_lsn)
            .map_err(DeleteError::Store)?;
        shared
            .store
            .transact(&mut |t| keys::clear_conversation(t, conv))
            .map_err(DeleteError::Store)?;
        self.last_seq.remove(conv);
        self.warned.remove(conv);
        self.open_execs.remove(conv);
        shared
            .open_execs
            .lock()
            .expect("open execs")
            .retain(|(c, _), _| c != conv);
        shared.hub.close(conv);
        tracing::info!(conversation = conv, events = last, "conversation deleted");
        Ok(last)
    }

    /// Waits until the materializer has written everything committed so far.
    fn drain_tail(&self) -> Result<(), DeleteError> {
        let shared = &self.controller.shared.tail;
        let mut tail = shared.tail.lock().expect("tail lock");
        tail.flush = true;
        shared.changed.notify_all();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !tail.entries.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                tail.flush = false;
                return Err(DeleteError::Store(StoreError::Io(format!(
                    "committed events were not materialized within {DRAIN_TIMEOUT:?}"
                ))));
            }
            tail = shared
                .changed
                .wait_timeout(tail, deadline - now)
                .expect("tail lock")
                .0;
        }
        tail.flush = false;
        Ok(())
    }

    fn warn_near_limit(&mut self, conversation: &str, last: u64) {
        let limits = self.controller.shared.limits;
        let threshold = limits.max_events_per_conversation / 100 * limits.warn_percent as u64;
        if last >= threshold && !self.warned.contains(conversation) {
            self.warned.insert(conversation.to_string());
            tracing::warn!(
                conversation,
                events = last,
                limit = limits.max_events_per_conversation,
                "conversation is near its history limit; appends past it will be refused"
            );
        }
    }

    /// One commit log record for the whole batch. Tentative seqs live in `pending` until it is
    /// durable.
    fn transact(
        &mut self,
        requests: &[(&AppendRequest, bool)],
    ) -> Result<Vec<Outcome>, StoreError> {
        self.load_last_seqs(requests)?;
        let shared = self.controller.shared.clone();
        let limit = shared.limits.max_events_per_conversation;
        let time = now_micros();
        let mut outcomes = Vec::with_capacity(requests.len());
        let lsn = self.next_lsn;
        let mut record = Vec::new();
        let mut pending: HashMap<&str, u64> = HashMap::new();
        let mut seen_keys: HashMap<(&str, &str), Appended> = HashMap::new();
        // Execs opened or finished by this batch: the state and lease of each still open.
        let mut exec_states: HashMap<(&str, &str), Option<(ExecState, Lease)>> = HashMap::new();
        for &(request, only_new) in requests {
            let conv = request.conversation_id.as_str();
            if let Some(key) = &request.idempotency_key {
                if let Some(first) = seen_keys.get(&(conv, key.as_str())) {
                    outcomes.push(Outcome::Duplicate(Appended {
                        duplicate: true,
                        ..*first
                    }));
                    continue;
                }
                if let Some((first_seq, last_seq)) = self.committed_key(conv, key)? {
                    outcomes.push(Outcome::Duplicate(Appended {
                        first_seq,
                        last_seq,
                        duplicate: true,
                    }));
                    continue;
                }
            }
            let last = pending
                .get(conv)
                .or_else(|| self.last_seq.get(conv))
                .copied()
                .unwrap_or(0);
            let n = request.events.len() as u64;
            if let Some(exec) = &request.open_exec {
                let open = match exec_states.get(&(conv, exec.as_str())) {
                    Some(open) => open.is_some(),
                    None => self.is_open(conv, exec),
                };
                if !open {
                    outcomes.push(Outcome::Refused(AppendError::ExecFinished {
                        conversation_id: conv.to_string(),
                        exec_id: exec.clone(),
                    }));
                    continue;
                }
                if let Some(owner) = &request.owner {
                    let lease = match exec_states.get(&(conv, exec.as_str())) {
                        Some(Some((_, lease))) => Some(lease.clone()),
                        _ => self.lease(conv, exec),
                    };
                    // Another node's lease, or a later lease of the same node: the writer
                    // lost the exec meanwhile.
                    let moved = lease.filter(|(node, epoch)| {
                        *node != owner.node || (owner.epoch != 0 && *epoch != owner.epoch)
                    });
                    if let Some((node, _)) = moved {
                        outcomes.push(Outcome::Refused(AppendError::ExecMoved {
                            conversation_id: conv.to_string(),
                            exec_id: exec.clone(),
                            node,
                        }));
                        continue;
                    }
                }
            }
            if only_new && last > 0 {
                outcomes.push(Outcome::Refused(AppendError::AlreadyExists(
                    conv.to_string(),
                )));
                continue;
            }
            if last + n > limit {
                outcomes.push(Outcome::Refused(AppendError::HistoryLimit {
                    conversation_id: conv.to_string(),
                    limit,
                }));
                continue;
            }
            if let Some(running) = self.other_open_exec(conv, request, &exec_states) {
                outcomes.push(Outcome::Refused(AppendError::ExecRunning {
                    conversation_id: conv.to_string(),
                    exec_id: running,
                }));
                continue;
            }
            let mut entries = Vec::with_capacity(request.events.len());
            for (i, new) in request.events.iter().enumerate() {
                let mut kind = new.kind.clone();
                if let event::Kind::ExecStateChanged(change) = &mut kind {
                    let state = ExecState::try_from(change.state).unwrap_or(ExecState::Unspecified);
                    let exec = (conv, new.exec_id.as_str());
                    let current = match exec_states.get(&exec) {
                        Some(Some((_, lease))) => Some(lease.clone()),
                        Some(None) => None,
                        None => self.lease(conv, &new.exec_id),
                    };
                    if !state.is_terminal() {
                        match current {
                            // A state change that does not name the exec's node keeps its
                            // lease.
                            Some((node, epoch)) if change.node.is_empty() => {
                                change.node = node;
                                change.epoch = epoch;
                            }
                            _ if change.node.is_empty() => {}
                            Some((node, epoch)) if node == change.node => change.epoch = epoch,
                            // The exec moves to another node: a new lease.
                            Some((_, epoch)) => change.epoch = epoch + 1,
                            None => change.epoch = 1,
                        }
                    }
                    let open = (!state.is_terminal())
                        .then(|| (state, (change.node.clone(), change.epoch)));
                    exec_states.insert(exec, open);
                }
                let event = Event {
                    conversation_id: conv.to_string(),
                    seq: last + 1 + i as u64,
                    exec_id: new.exec_id.clone(),
                    time_unix_micros: time,
                    kind: Some(kind),
                };
                let idempotency = match (&request.idempotency_key, i) {
                    (Some(key), 0) => Some((key.clone(), last + 1, last + n)),
                    _ => None,
                };
                let event = Arc::new(event);
                let (key, last_seq) = match &idempotency {
                    Some((key, _, last_seq)) => (key.as_str(), *last_seq),
                    None => ("", 0),
                };
                keys::encode_log_entry(&mut record, &event, key, last_seq);
                entries.push(Pending {
                    lsn,
                    batch_end: false,
                    event,
                    idempotency,
                });
            }
            let appended = Appended {
                first_seq: last + 1,
                last_seq: last + n,
                duplicate: false,
            };
            if let Some(key) = &request.idempotency_key {
                seen_keys.insert((conv, key.as_str()), appended);
            }
            pending.insert(conv, last + n);
            outcomes.push(Outcome::Written(appended, entries));
        }
        if record.len() > MAX_RECORD_BYTES {
            return Err(StoreError::TooLarge {
                bytes: record.len(),
            });
        }
        if !record.is_empty() {
            shared.log.append(lsn, &record)?;
        }
        if !exec_states.is_empty() {
            let mut current = shared.open_execs.lock().expect("open execs");
            for ((conv, exec), open) in exec_states {
                let key = (conv.to_string(), exec.to_string());
                let execs = self.open_execs.entry(conv.to_string()).or_default();
                match open {
                    Some((state, (node, epoch))) => {
                        execs.insert(exec.to_string(), (node.clone(), epoch));
                        current.insert(
                            key,
                            OpenExec {
                                conversation_id: conv.to_string(),
                                exec_id: exec.to_string(),
                                state,
                                node,
                                epoch,
                            },
                        );
                    }
                    None => {
                        execs.remove(exec);
                        if execs.is_empty() {
                            self.open_execs.remove(conv);
                        }
                        current.remove(&key);
                    }
                }
            }
        }
        if let Some(last) = outcomes.iter_mut().rev().find_map(|o| match o {
            Outcome::Written(_, entries) => entries.last_mut(),
            _ => None,
        }) {
            last.batch_end = true;
            self.next_lsn += 1;
        }
        Ok(outcomes)
    }

    fn is_open(&self, conv: &str, exec: &str) -> bool {
        self.open_execs
            .get(conv)
            .is_some_and(|execs| execs.contains_key(exec))
    }

    /// The lease of the node that runs an open exec.
    fn lease(&self, conv: &str, exec: &str) -> Option<Lease> {
        self.open_execs.get(conv)?.get(exec).cloned()
    }

    /// An exec other than the one `request` opens that is open in `conv` (counting this
    /// batch): a conversation has at most one, in the whole cluster. Only a request that
    /// opens an exec without the fence (a new exec starting) is checked.
    fn other_open_exec(
        &self,
        conv: &str,
        request: &AppendRequest,
        batch: &HashMap<(&str, &str), Option<(ExecState, Lease)>>,
    ) -> Option<String> {
        if request.open_exec.is_some() {
            return None;
        }
        let opens = request.events.iter().find_map(|e| match &e.kind {
            event::Kind::ExecStateChanged(c)
                if !ExecState::try_from(c.state)
                    .unwrap_or(ExecState::Unspecified)
                    .is_terminal() =>
            {
                Some(e.exec_id.as_str())
            }
            _ => None,
        })?;
        let mut open: Vec<&str> = self
            .open_execs
            .get(conv)
            .map(|execs| execs.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for ((c, exec), state) in batch {
            if *c == conv {
                open.retain(|e| e != exec);
                if state.is_some() {
                    open.push(exec);
                }
            }
        }
        open.into_iter().find(|e| *e != opens).map(str::to_string)
    }

    /// The span of an earlier append with this key: in the tail, or materialized. An entry
    /// leaves the tail only once materialized, so looking in this order misses nothing.
    fn committed_key(&self, conv: &str, key: &str) -> Result<Option<(u64, u64)>, StoreError> {
        {
            let tail = self.controller.shared.tail.tail.lock().expect("tail lock");
            if let Some(span) = tail.idempotency.get(&(conv.to_string(), key.to_string())) {
                return Ok(Some(*span));
            }
        }
        let mut span = None;
        self.controller.shared.store.read(&mut |t| {
            span = t
                .get(&keys::idempotency(conv, key))?
                .map(|v| keys::decode_span(&v));
            Ok(())
        })?;
        Ok(span)
    }

    /// Loads the last seq of conversations this writer has not seen yet.
    fn load_last_seqs(&mut self, requests: &[(&AppendRequest, bool)]) -> Result<(), StoreError> {
        for (request, _) in requests {
            self.last_seq_of(&request.conversation_id)?;
        }
        Ok(())
    }

    /// A conversation's last committed seq (0 if it has none), loaded on first use.
    fn last_seq_of(&mut self, conv: &str) -> Result<u64, StoreError> {
        if let Some(last) = self.last_seq.get(conv) {
            return Ok(*last);
        }
        let last = super::last_committed(&self.controller.shared, conv)?.unwrap_or(0);
        self.last_seq.insert(conv.to_string(), last);
        Ok(last)
    }
}
