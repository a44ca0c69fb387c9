//! The writer thread: drains the controller's queue into group commits.

use std::collections::{HashMap, HashSet};

use cadre_proto::v1::{Event, ExecState, event};
use prost::Message;
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};

use super::keys;
use super::{AppendError, AppendRequest, Appended, Controller, ControllerMsg, now_micros};
use crate::store::{StoreError, Txn};

/// Most events and bytes in one group commit (well under the store's 10 MB transaction limit).
const MAX_BATCH_EVENTS: usize = 16_384;
const MAX_BATCH_BYTES: usize = 4 << 20;

pub enum Command {
    Append {
        request: AppendRequest,
        reply: oneshot::Sender<Result<Appended, AppendError>>,
    },
}

/// What one request of a batch came to.
enum Outcome {
    Written(Appended, Vec<Event>),
    Duplicate(Appended),
    Refused(AppendError),
}

pub fn spawn(
    controller: Controller,
    rx: mpsc::Receiver<Command>,
    actor: ActorRef<ControllerMsg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cadre-eventlog-writer".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Writer::new(controller).run(rx)
            }));
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

struct Writer {
    controller: Controller,
    /// Last committed seq per conversation (loaded from the store on first use).
    last_seq: HashMap<String, u64>,
    warned: HashSet<String>,
}

impl Writer {
    fn new(controller: Controller) -> Self {
        Self {
            controller,
            last_seq: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut events = 0;
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(Command::Append { request, reply }) = next {
                events += request.events.len();
                bytes += request
                    .events
                    .iter()
                    .map(|e| e.kind.encoded_len())
                    .sum::<usize>();
                batch.push((request, reply));
                next = if events < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(&mut batch);
        }
    }

    /// Commits a batch in one transaction; a batch that is too large as a whole is committed
    /// request by request, so one oversized request fails alone.
    fn commit(
        &mut self,
        batch: &mut Vec<(
            AppendRequest,
            oneshot::Sender<Result<Appended, AppendError>>,
        )>,
    ) {
        let requests: Vec<&AppendRequest> = batch.iter().map(|(r, _)| r).collect();
        match self.transact(&requests) {
            Ok(outcomes) => {
                let replies = batch.drain(..).map(|(_, reply)| reply);
                self.finish(outcomes, replies);
            }
            Err(StoreError::TooLarge { .. }) if batch.len() > 1 => {
                for one in std::mem::take(batch) {
                    let mut single = vec![one];
                    self.commit(&mut single);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "event log commit failed");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(AppendError::Store(e.clone())));
                }
            }
        }
    }

    fn finish(
        &mut self,
        outcomes: Vec<Outcome>,
        replies: impl Iterator<Item = oneshot::Sender<Result<Appended, AppendError>>>,
    ) {
        let controller = self.controller.clone();
        let hub = &controller.shared.hub;
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            match outcome {
                Outcome::Written(appended, events) => {
                    let conversation = events[0].conversation_id.clone();
                    self.last_seq
                        .insert(conversation.clone(), appended.last_seq);
                    self.warn_near_limit(&conversation, appended.last_seq);
                    let _ = reply.send(Ok(appended));
                    hub.publish(&conversation, events);
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

    /// One transaction for the whole batch. Tentative seqs live in `pending` until it commits.
    fn transact(&self, requests: &[&AppendRequest]) -> Result<Vec<Outcome>, StoreError> {
        let shared = &self.controller.shared;
        let limit = shared.limits.max_events_per_conversation;
        let time = now_micros();
        let mut outcomes = Vec::with_capacity(requests.len());
        shared.store.transact(&mut |t| {
            outcomes.clear();
            let mut pending: HashMap<&str, u64> = HashMap::new();
            let mut seen_keys: HashMap<(&str, &str), Appended> = HashMap::new();
            for request in requests {
                let conv = request.conversation_id.as_str();
                if let Some(key) = &request.idempotency_key {
                    if let Some(first) = seen_keys.get(&(conv, key.as_str())) {
                        outcomes.push(Outcome::Duplicate(Appended {
                            duplicate: true,
                            ..*first
                        }));
                        continue;
                    }
                    if let Some(span) = t.get(&keys::idempotency(conv, key))? {
                        let (first_seq, last_seq) = keys::decode_span(&span);
                        outcomes.push(Outcome::Duplicate(Appended {
                            first_seq,
                            last_seq,
                            duplicate: true,
                        }));
                        continue;
                    }
                }
                let last = match pending.get(conv).or_else(|| self.last_seq.get(conv)) {
                    Some(&last) => last,
                    None => t
                        .get(&keys::meta(conv))?
                        .map_or(0, |v| keys::decode_u64(&v)),
                };
                let n = request.events.len() as u64;
                if last + n > limit {
                    outcomes.push(Outcome::Refused(AppendError::HistoryLimit {
                        conversation_id: conv.to_string(),
                        limit,
                    }));
                    continue;
                }
                let mut events = Vec::with_capacity(request.events.len());
                for (i, new) in request.events.iter().enumerate() {
                    let event = Event {
                        conversation_id: conv.to_string(),
                        seq: last + 1 + i as u64,
                        exec_id: new.exec_id.clone(),
                        time_unix_micros: time,
                        kind: Some(new.kind.clone()),
                    };
                    t.set(&keys::event(conv, event.seq), &event.encode_to_vec())?;
                    index_exec(t, &event)?;
                    events.push(event);
                }
                let appended = Appended {
                    first_seq: last + 1,
                    last_seq: last + n,
                    duplicate: false,
                };
                if let Some(key) = &request.idempotency_key {
                    t.set(
                        &keys::idempotency(conv, key),
                        &keys::encode_span(last + 1, last + n),
                    )?;
                    seen_keys.insert((conv, key.as_str()), appended);
                }
                pending.insert(conv, last + n);
                outcomes.push(Outcome::Written(appended, events));
            }
            for (conv, last) in &pending {
                t.set(&keys::meta(conv), &keys::encode_u64(*last))?;
            }
            Ok(())
        })?;
        Ok(outcomes)
    }
}

/// Keeps the index of open execs that startup recovery scans.
fn index_exec(t: &mut dyn Txn, event: &Event) -> Result<(), StoreError> {
    if let Some(event::Kind::ExecStateChanged(change)) = &event.kind {
        let key = keys::exec(&event.conversation_id, &event.exec_id);
        let state = ExecState::try_from(change.state).unwrap_or(ExecState::Unspecified);
        if keys::is_terminal(state) {
            t.clear(&key)?;
        } else {
            t.set(&key, &keys::encode_exec(state, false))?;
        }
    }
    Ok(())
}
