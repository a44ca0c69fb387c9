//! The node's probes, as services of its gRPC health service (`cadre health startup|live|ready`
//! asks them; `deploy/` runs that as Kubernetes' three probes, each with its own meaning):
//!
//! - [`STARTUP`]: serving once the supervision trees have started, every child's init done (an
//!   MCP server's tools listed and validated).
//! - [`LIVE`]: serving while the node runs. An answer at all means its event loop answers; a
//!   restart is the cure only when it does not.
//! - [`READY`]: serving while the node can take work: its event log answers (on a cluster, the
//!   controller is reachable), its sandbox pool has room, and it is not stopping. Failing it
//!   takes the node out of a Service without a restart.

use std::sync::Arc;
use std::time::Duration;

use cadre_actors::event_log::EventLog;
use cadre_sandbox::WarmPool;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The startup probe's service name.
pub const STARTUP: &str = "cadre.startup";
/// The liveness probe's service name.
pub const LIVE: &str = "cadre.live";
/// The readiness probe's service name.
pub const READY: &str = "cadre.ready";

/// How often readiness is checked, and how long the log may take to answer.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const LOG_TIMEOUT: Duration = Duration::from_secs(2);

/// Marks the node started and live, and keeps [`READY`] up to date until the node stops.
pub(crate) async fn serve(
    health: HealthReporter,
    log: Arc<dyn EventLog>,
    pool: Option<(WarmPool, usize)>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    health
        .set_service_status(STARTUP, ServingStatus::Serving)
        .await;
    health
        .set_service_status(LIVE, ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let why_not = if *stopping.borrow() {
                Some("stopping".to_string())
            } else {
                not_ready(log.as_ref(), pool.as_ref()).await
            };
            if last.as_ref() != Some(&why_not) {
                let status = match &why_not {
                    None => ServingStatus::Serving,
                    Some(why) => {
                        tracing::info!(why = %why, "not ready for work");
                        ServingStatus::NotServing
                    }
                };
                health.set_service_status(READY, status).await;
                last = Some(why_not);
            }
            if *stopping.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stopping.changed() => {}
            }
        }
    })
}

/// Why the node cannot take work now, if it cannot.
async fn not_ready(log: &dyn EventLog, pool: Option<&(WarmPool, usize)>) -> Option<String> {
    match tokio::time::timeout(LOG_TIMEOUT, log.last_seq("")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Some(format!("the event log: {e}")),
        Err(_) => return Some("the event log does not answer".into()),
    }
    if let Some((pool, max)) = pool {
        let sandboxes = pool.list();
        let warm = sandboxes.iter().any(|s| s.tenant.is_none());
        if !warm && sandboxes.len() >= *max {
            return Some(format!("all {max} sandboxes are in use"));
        }
    }
    None
}
