//! Writes every supervision lifecycle event to the audit conversation.
//!
//! The controller runs this forwarder for its node's tree; when the controller stops (last, in
//! reverse start order) it flushes every lifecycle event already emitted before it closes its
//! queue, so a clean shutdown is audited completely. A cluster's other nodes run one each,
//! through their log, and flush it when they stop.

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use std::sync::Arc;

use super::{AUDIT_CONVERSATION, AppendError, AppendRequest, NewEvent};
use crate::event_log::EventLog;
use crate::tree::LifecycleEvent;
use cadre_proto::v1::{ActorLifecycle, event};

/// Most lifecycle events written in one append.
const BATCH: usize = 512;

/// A running forwarder.
pub struct Audit {
    flush: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Audit {
    /// Writes what `rx` receives to `log`'s audit conversation, each event marked with
    /// `node` (the node's name in its cluster, else empty).
    pub fn spawn(
        mut rx: broadcast::Receiver<LifecycleEvent>,
        log: Arc<dyn EventLog>,
        node: String,
    ) -> Self {
        let (flush, mut flushed) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    biased;
                    _ = &mut flushed => {
                        // Stopping: write what is already waiting, then end.
                        let rest = drain(&mut rx, usize::MAX, &node);
                        if !rest.is_empty() {
                            write(log.as_ref(), rest).await;
                        }
                        return;
                    }
                    ev = rx.recv() => ev,
                };
                let first = match first {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "audit log fell behind and missed lifecycle events"
                        );
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let mut events = vec![record(&first, &node)];
                events.extend(drain(&mut rx, BATCH - 1, &node));
                write(log.as_ref(), events).await;
            }
        });
        Self { flush, task }
    }

    /// Stops at once, writing nothing more (the controller was killed).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Writes every event emitted so far, then stops.
    pub async fn flush(self) {
        let _ = self.flush.send(());
        let _ = self.task.await;
    }
}

fn drain(rx: &mut broadcast::Receiver<LifecycleEvent>, most: usize, node: &str) -> Vec<NewEvent> {
    let mut out = Vec::new();
    while out.len() < most {
        match rx.try_recv() {
            Ok(ev) => out.push(record(&ev, node)),
            Err(TryRecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "audit log fell behind and missed lifecycle events"
                );
            }
            Err(_) => break,
        }
    }
    out
}

async fn write(log: &dyn EventLog, events: Vec<NewEvent>) {
    let request = AppendRequest {
        conversation_id: AUDIT_CONVERSATION.into(),
        events,
        idempotency_key: None,
        open_exec: None,
        owner: None,
    };
    match log.append(request).await {
        Ok(_) => {}
        Err(AppendError::Unavailable) => {
            tracing::debug!("controller unavailable; lifecycle events not audited")
        }
        Err(e) => tracing::warn!(error = %e, "cannot write the audit log"),
    }
}

fn record(ev: &LifecycleEvent, node: &str) -> NewEvent {
    let (pid, restarts) = ev.change.started();
    NewEvent {
        exec_id: String::new(),
        kind: event::Kind::ActorLifecycle(ActorLifecycle {
            path: ev.path.clone(),
            kind: ev.kind.as_str().into(),
            change: ev.change.name().into(),
            reason: ev.change.reason().unwrap_or_default(),
            pid,
            restarts,
            node: node.to_string(),
        }),
    }
}
