//! The event log's seam: what the runtime asks of the log, whoever holds it.
//!
//! The agent loop, the tools service and the exec lifecycle ([`crate::exec`]) use the log only
//! through [`EventLog`]. On a single node it is the local [`Controller`](crate::controller::Controller),
//! the single writer; on a node of a cluster without the log it is a client that forwards each
//! call to the controller node. Every implementation keeps the same promises: an append is
//! acknowledged only after it is durable, seqs of a conversation are 1, 2, 3, … with no gap, an
//! idempotency key makes a retried append a no-op, and a subscription hands out every event
//! after its start exactly once, in order.

use std::pin::Pin;
use std::sync::Arc;

use cadre_proto::v1::{Event, ExecState, event};
use futures_util::{Stream, StreamExt};

use crate::store::StoreError;

/// The operations of the event log that the runtime uses; a trait object (`Arc<dyn EventLog>`)
/// so that where the log lives is chosen when the node starts.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends atomically; returns after the events are durable.
    async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError>;
    /// Appends the first events of a new conversation; [`AppendError::AlreadyExists`] (and
    /// nothing written) if it has any events already.
    async fn create(&self, request: AppendRequest) -> Result<Appended, AppendError>;
    /// Deletes a conversation, in order with appends; returns how many events it had.
    async fn delete(&self, conversation_id: &str) -> Result<u64, DeleteError>;
    /// Up to `limit` events of a conversation after `after_seq`, in order.
    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// The last seq of a conversation, or `None` if it has no events.
    async fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError>;
    /// Conversations in id order after `after` (exclusive), at most `limit`, with their last seq.
    async fn list(&self, after: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError>;
    /// Events of a conversation after `after_seq`, then live ones, with no gap and no duplicate.
    async fn subscribe(
        &self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Subscription, SubscribeError>;
    /// The execs open now (their last state change was not terminal), with the node that
    /// runs each; startup recovery resumes a node's own.
    async fn open_execs(&self) -> Result<Vec<OpenExec>, StoreError>;
}

/// Reads a conversation from its start, page by page, handing each event to `visit` until it
/// returns false; the seq of the last event visited (0 if none).
pub async fn scan(
    log: &dyn EventLog,
    conversation: &str,
    mut visit: impl FnMut(&Event) -> bool,
) -> Result<u64, StoreError> {
    let mut after = 0;
    loop {
        let page = log.read(conversation, after, 4096).await?;
        let Some(last) = page.last() else {
            return Ok(after);
        };
        after = last.seq;
        for e in &page {
            if !visit(e) {
                return Ok(e.seq);
            }
        }
    }
}

/// One event to append; the log fills in conversation, seq and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The exec the event belongs to (empty for events outside an exec).
    pub exec_id: String,
    /// What happened.
    pub kind: event::Kind,
}

/// An atomic append of one or more events to one conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    /// The conversation appended to.
    pub conversation_id: String,
    /// The events, in order.
    pub events: Vec<NewEvent>,
    /// A retried request with the same key (per conversation) is not written twice.
    pub idempotency_key: Option<String>,
    /// Refuse ([`AppendError::ExecFinished`]) unless this exec of the conversation is open
    /// (its last state change was not terminal). Agents append with it, so once an exec is
    /// cancelled its agent cannot add to it.
    pub open_exec: Option<String>,
    /// With `open_exec`: refuse ([`AppendError::ExecMoved`]) unless that exec runs on this
    /// cluster node, under this lease. Agents set it, so an exec given to another node (its
    /// node went down) can no longer be written by the old one when it comes back, even if the
    /// exec came back to it meanwhile (a new lease).
    pub owner: Option<Owner>,
}

/// The node an exec must run on to be written, and its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The cluster node.
    pub node: String,
    /// The epoch of its lease on the exec; 0: any (a writer that does not know it, such as
    /// the one that gives the exec to another node).
    pub epoch: u64,
}

impl Owner {
    /// `node`, under any of its leases.
    pub fn node(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            epoch: 0,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The seq of the first event appended.
    pub first_seq: u64,
    /// The seq of the last event appended.
    pub last_seq: u64,
    /// True when the idempotency key was seen before: nothing was written.
    pub duplicate: bool,
}

/// Why an append was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The request itself is malformed.
    #[error("invalid append: {0}")]
    Invalid(String),
    /// The conversation would grow past its cap.
    #[error(
        "conversation `{conversation_id}` is at its history limit of {limit} events; \
         fork it or raise store.max_events_per_conversation"
    )]
    HistoryLimit {
        /// The conversation.
        conversation_id: String,
        /// Its cap.
        limit: u64,
    },
    /// A create found events already there.
    #[error("conversation `{0}` already exists")]
    AlreadyExists(String),
    /// Another exec of the conversation is open: at most one is, in the whole cluster.
    #[error(
        "conversation `{conversation_id}` already has an unfinished exec `{exec_id}`; follow, \
         resume or cancel it first"
    )]
    ExecRunning {
        /// The conversation.
        conversation_id: String,
        /// The exec that is open.
        exec_id: String,
    },
    /// The exec runs on another node now (`owner` refused the append).
    #[error(
        "exec `{exec_id}` of conversation `{conversation_id}` runs on node `{node}` now; this \
         node lost it"
    )]
    ExecMoved {
        /// The conversation.
        conversation_id: String,
        /// The exec.
        exec_id: String,
        /// The node that runs it now.
        node: String,
    },
    /// The fence (`open_exec`) refused the append.
    #[error(
        "exec `{exec_id}` of conversation `{conversation_id}` is not open (it has finished or never started)"
    )]
    ExecFinished {
        /// The conversation.
        conversation_id: String,
        /// The exec that is not open.
        exec_id: String,
    },
    /// The commit failed; nothing of the batch is visible.
    #[error("the event log could not commit: {0}")]
    Store(StoreError),
    /// No writer runs right now.
    #[error("the controller is not running (it may be restarting); retry")]
    Unavailable,
}

/// Why a conversation was not deleted. Nothing was removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteError {
    /// The request itself is malformed (or names the audit log).
    #[error("invalid delete: {0}")]
    Invalid(String),
    /// No such conversation.
    #[error("no conversation `{0}`")]
    NotFound(String),
    /// The store failed.
    #[error("the event log could not delete: {0}")]
    Store(StoreError),
    /// No writer runs right now.
    #[error("the controller is not running (it may be restarting); retry")]
    Unavailable,
}

/// Why a subscription could not start or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// No such conversation.
    #[error("no conversation `{0}`")]
    NotFound(String),
    /// The start is past the conversation's end.
    #[error(
        "after_seq {after_seq} is beyond the end of conversation `{conversation_id}` (last seq {last_seq})"
    )]
    OutOfRange {
        /// The conversation.
        conversation_id: String,
        /// Where the subscriber asked to start.
        after_seq: u64,
        /// Its last seq.
        last_seq: u64,
    },
    /// The subscriber fell too far behind the live feed.
    #[error(
        "subscriber fell more than {buffer} events behind and was cut off after seq {last_seq}; \
         subscribe again with after_seq {last_seq}"
    )]
    TooSlow {
        /// How far behind a subscriber may fall.
        buffer: usize,
        /// The last seq it was handed.
        last_seq: u64,
    },
    /// The conversation was deleted.
    #[error("conversation `{0}` was deleted")]
    Deleted(String),
    /// The store failed.
    #[error("the event log could not be read: {0}")]
    Store(StoreError),
}

/// An exec whose last state change was not terminal: it runs (or waits) somewhere, or its
/// node stopped and recovery resumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenExec {
    /// Its conversation.
    pub conversation_id: String,
    /// The exec.
    pub exec_id: String,
    /// Its last state.
    pub state: ExecState,
    /// The cluster node that runs it (empty: a node outside any cluster).
    pub node: String,
    /// The epoch of that node's lease on it (0: written before leases had epochs).
    pub epoch: u64,
}

/// The events a subscription hands out.
pub type EventFeed = Pin<Box<dyn Stream<Item = Result<Arc<Event>, SubscribeError>> + Send>>;

/// A stream of one conversation's events after some seq: in order, no gap, no duplicate; an
/// `Err` once if it was cut off, then the end.
pub struct Subscription {
    last: u64,
    events: EventFeed,
}

impl Subscription {
    /// A subscription that starts after `after_seq` and hands out `events`.
    pub fn new(after_seq: u64, events: EventFeed) -> Self {
        Self {
            last: after_seq,
            events,
        }
    }

    /// The seq of the last event handed out (resume from here after an error).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The next event, in seq order; `Err` once if the subscriber was cut off, then `None`.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, SubscribeError>> {
        let next = self.events.next().await;
        if let Some(Ok(event)) = &next {
            self.last = event.seq;
        }
        next
    }
}
