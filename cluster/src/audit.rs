//! Writes every supervision lifecycle event to the node's audit conversation.

use cadre_actors::controller::{
    AUDIT_CONVERSATION, AppendError, AppendRequest, Controller, NewEvent,
};
use cadre_actors::{Change, LifecycleEvent, Tree};
use cadre_proto::v1::{ActorLifecycle, event};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinHandle;

/// Most lifecycle events written in one append.
const BATCH: usize = 512;

/// Forwards lifecycle events from `tree` to `controller`, batching what is waiting.
pub fn spawn(tree: &Tree, controller: Controller) -> JoinHandle<()> {
    let mut rx = tree.subscribe();
    tokio::spawn(async move {
        loop {
            let first = match rx.recv().await {
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
            let mut events = vec![record(&first)];
            while events.len() < BATCH {
                match rx.try_recv() {
                    Ok(ev) => events.push(record(&ev)),
                    Err(TryRecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "audit log fell behind and missed lifecycle events"
                        );
                    }
                    Err(_) => break,
                }
            }
            let request = AppendRequest {
                conversation_id: AUDIT_CONVERSATION.into(),
                events,
                idempotency_key: None,
            };
            match controller.append(request).await {
                Ok(_) => {}
                Err(AppendError::Unavailable) => {
                    tracing::debug!("controller unavailable; lifecycle events not audited")
                }
                Err(e) => tracing::warn!(error = %e, "cannot write the audit log"),
            }
        }
    })
}

fn record(ev: &LifecycleEvent) -> NewEvent {
    let (change, reason, pid, restarts) = match &ev.change {
        Change::Started { pid, restarts } => ("started", String::new(), *pid, *restarts),
        Change::Exited { reason } => ("exited", reason.to_string(), None, 0),
        Change::Restarting => ("restarting", String::new(), None, 0),
        Change::Terminated => ("terminated", String::new(), None, 0),
        Change::Escalated { reason } => ("escalated", reason.clone(), None, 0),
        Change::Deleted => ("deleted", String::new(), None, 0),
    };
    NewEvent {
        exec_id: String::new(),
        kind: event::Kind::ActorLifecycle(ActorLifecycle {
            path: ev.path.clone(),
            kind: ev.kind.as_str().into(),
            change: change.into(),
            reason,
            pid,
            restarts,
        }),
    }
}
