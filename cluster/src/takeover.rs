//! Execs that outlive their node. The controller node gives each open exec of a `down` node
//! to a live node by appending a `RUNNING` state change that names it (fenced on the exec
//! being open); a node that stops hands its own open execs over the same way at once
//! ([`hand_over`]) rather than leaving them until it is seen down; every node adopts the open execs the log gives it and resumes them from the
//! log, so nothing journaled is done again. Each move starts a new lease (its epoch one more),
//! so the old node, if it comes back, can no longer write to the exec: its agent appends with
//! its node and lease as owner, the writer refuses (`ExecMoved`), and the agent stops; even if
//! the exec has come back to that node meanwhile, under a later lease. (The built-in echo's
//! one reply and the FAILED record of an agent that could not start fence on the node alone.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cadre_actors::event_log::{AppendError, AppendRequest, EventLog, NewEvent, Owner};
use cadre_actors::exec::Execs;
use cadre_actors::membership::MemberState;
use cadre_proto::v1::{ExecState, ExecStateChanged, event};
use tokio::task::JoinHandle;

use crate::membership::Membership;

/// While `acting` (this node is the controller): every `every`, gives the open execs of `down`
/// nodes to live ones.
pub fn reassign(
    membership: Membership,
    log: Arc<dyn EventLog>,
    every: Duration,
    acting: Arc<dyn Fn() -> bool + Send + Sync>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !acting() {
                continue;
            }
            if let Err(e) = reassign_once(&membership, log.as_ref()).await {
                tracing::warn!(error = %e, "cannot give the execs of a down node to a live one");
            }
        }
    })
}

/// On every node of a cluster: every `every`, resumes the execs the log gives this node.
pub fn adopt(execs: Execs, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = execs.adopt().await {
                tracing::debug!(error = %e, "cannot look for execs to take over");
            }
        }
    })
}

/// On a node that stops, after its agents stopped: gives its open execs to the live members
/// at once, trying for up to `within` while the log cannot be reached (a lease that moves on).
/// How many it moved.
pub async fn hand_over(
    membership: &Membership,
    log: &dyn EventLog,
    within: Duration,
) -> Result<usize, AppendError> {
    let me = membership.name();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let nodes = membership.nodes();
        let live: Vec<&str> = nodes
            .iter()
            .filter(|n| n.state == MemberState::Up.as_str() && n.name != me)
            .map(|n| n.name.as_str())
            .collect();
        let from = BTreeSet::from([me.as_str()]);
        let moved = move_execs(log, &from, &live, |node, to| {
            format!("node `{node}` is stopping: handed over to `{to}`")
        })
        .await;
        match moved {
            Err(AppendError::Store(_) | AppendError::Unavailable)
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

async fn reassign_once(membership: &Membership, log: &dyn EventLog) -> Result<(), AppendError> {
    let nodes = membership.nodes();
    let down: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.state == MemberState::Down.as_str())
        .map(|n| n.name.as_str())
        .collect();
    if down.is_empty() {
        return Ok(());
    }
    let live: Vec<&str> = nodes
        .iter()
        .filter(|n| n.state == MemberState::Up.as_str())
        .map(|n| n.name.as_str())
        .collect();
    move_execs(log, &down, &live, |node, to| {
        format!("node `{node}` is down: taken over by `{to}`")
    })
    .await
    .map(|_| ())
}

/// Gives each open exec of a node in `from` (but those waiting for an approval) to a node of
/// `live`, `why(node, successor)` saying why; how many moved.
async fn move_execs(
    log: &dyn EventLog,
    from: &BTreeSet<&str>,
    live: &[&str],
    why: impl Fn(&str, &str) -> String,
) -> Result<usize, AppendError> {
    let open = log.open_execs().await.map_err(AppendError::Store)?;
    let mut moved_count = 0;
    for exec in open {
        if !from.contains(exec.node.as_str()) || exec.state == ExecState::WaitingApproval {
            continue;
        }
        let Some(to) = successor(&exec.conversation_id, live) else {
            return Ok(moved_count);
        };
        let reason = why(&exec.node, to);
        let moved = log
            .append(AppendRequest {
                conversation_id: exec.conversation_id.clone(),
                events: vec![NewEvent {
                    exec_id: exec.exec_id.clone(),
                    kind: event::Kind::ExecStateChanged(ExecStateChanged {
                        state: ExecState::Running as i32,
                        reason: reason.clone(),
                        node: to.to_string(),
                        // The controller makes it the next epoch.
                        epoch: 0,
                    }),
                }],
                idempotency_key: None,
                open_exec: Some(exec.exec_id.clone()),
                // Only while the down node still has the lease it was read with: a node that
                // came back meanwhile and moved it keeps it.
                owner: Some(Owner {
                    node: exec.node.clone(),
                    epoch: exec.epoch,
                }),
            })
            .await;
        match moved {
            Ok(_) => {
                moved_count += 1;
                tracing::warn!(
                    conversation = %exec.conversation_id,
                    exec = %exec.exec_id,
                    "{reason}"
                );
            }
            Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(moved_count)
}

/// The live node that takes a conversation's exec: spread by the conversation's id, the same
/// choice on every call.
fn successor<'a>(conversation: &str, live: &[&'a str]) -> Option<&'a str> {
    if live.is_empty() {
        return None;
    }
    let hash = conversation
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    Some(live[(hash % live.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_is_a_live_node_and_the_same_each_time() {
        let live = ["a", "b", "c"];
        let picks: BTreeSet<&str> = (0..100)
            .map(|i| successor(&format!("c-{i}"), &live).expect("one"))
            .collect();
        assert_eq!(picks.len(), 3, "execs spread over the live nodes");
        assert_eq!(successor("x", &live), successor("x", &live));
        assert_eq!(successor("x", &[]), None);
    }
}
