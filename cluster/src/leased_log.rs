//! The event log of a cluster whose store every node reaches (`store.foundationdb`): any node
//! can be the controller, and the one that holds the controller lease is.
//!
//! Every node runs [`LeasedLog::keep`], a loop over the lease rules of
//! [`cadre_actors::store::lease`]:
//!
//! - A node that does not hold the lease tries to take it whenever the holder's lease has
//!   expired (it looks every third of the TTL, and right after the expiry it read). Taking it,
//!   it starts a [`Controller`] over a [`FencedStore`] as the child `controller` of its system
//!   supervisor: the controller recovers the commit log records the last one left, the open
//!   execs and their owners, and then accepts appends.
//! - The holder renews the lease every third of the TTL. When a renewal finds another holder,
//!   or it could not renew before its own lease ran out, it steps down: the controller child is
//!   stopped, and appends go to the new controller. Meanwhile, each write of the deposed
//!   controller is refused by the fence with the new holder's name, which callers get as
//!   UNAVAILABLE.
//! - A node that stops gives the lease up once its actors have stopped
//!   ([`LeasedLog::give_up`]), so another takes it at once.
//!
//! Calls to the log on a node that is not the controller go to the lease holder over gRPC
//! ([`RemoteLog`]); the holder answers them from its controller, and a node that is not the
//! controller refuses them ([`LeasedLog::served`]) rather than forwarding them again.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadre_actors::SupervisorRef;
use cadre_actors::controller::{Controller, HistoryLimits};
use cadre_actors::event_log::{
    AppendError, AppendRequest, Appended, DeleteError, EventLog, OpenExec, SubscribeError,
    Subscription,
};
use cadre_actors::store::lease::{self, Claim, FencedStore, Lease, RENEW_EVERY, Renewal};
use cadre_actors::store::{Store, StoreError};
use cadre_proto::v1::Event;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::membership::Membership;
use crate::peers::Peers;
use crate::remote_log::RemoteLog;

/// Id of the controller under the system supervisor while this node holds the lease.
const CONTROLLER: &str = crate::node::CONTROLLER;

/// The log through the lease: this node's controller while it holds the lease, else the
/// holder's. Cheap to clone.
#[derive(Clone)]
pub struct LeasedLog {
    shared: Arc<Shared>,
    remote: Arc<RemoteLog>,
    /// The holder of the lease, if it is another node this node knows.
    remote_finder: crate::remote_log::ControllerFinder,
}

struct Shared {
    node: String,
    store: Arc<dyn Store>,
    ttl: Duration,
    limits: HistoryLimits,
    /// The controller this node runs while it holds the lease.
    local: RwLock<Option<Controller>>,
    /// The lease as last read or written here.
    lease: watch::Sender<Option<Lease>>,
    /// The lease this node holds, as the loop last left it.
    held: std::sync::Mutex<Option<Lease>>,
}

impl LeasedLog {
    /// The log of node `membership.name()` over `store`, with a lease of `ttl`. Must be made
    /// within a Tokio runtime.
    pub fn new(
        store: Arc<dyn Store>,
        ttl: Duration,
        limits: HistoryLimits,
        membership: &Membership,
        peers: Peers,
    ) -> Self {
        let (lease, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            node: membership.name(),
            store,
            ttl,
            limits,
            local: RwLock::new(None),
            lease,
            held: std::sync::Mutex::new(None),
        });
        let finder = {
            let shared = shared.clone();
            let membership = membership.clone();
            // Never this node: while it is the controller its calls do not go out.
            Arc::new(move || {
                shared
                    .holder()
                    .filter(|l| l.node != shared.node)
                    .and_then(|l| membership.node(&l.node))
            }) as crate::remote_log::ControllerFinder
        };
        Self {
            remote: Arc::new(RemoteLog::to(finder.clone(), membership.cluster(), peers)),
            remote_finder: finder,
            shared,
        }
    }

    /// The lease as last seen here (`None` before the first look, or if no node ever held it).
    pub fn lease(&self) -> Option<Lease> {
        self.shared.lease.borrow().clone()
    }

    /// Whether this node is the controller now.
    pub fn is_controller(&self) -> bool {
        self.shared.controller().is_some()
    }

    /// Waits until calls to the log can be made: this node is the controller, or the lease
    /// holder is a member it knows.
    pub async fn wait_for_controller(&self) {
        let mut warned = false;
        let started = std::time::Instant::now();
        while !self.is_controller() && (self.remote_finder)().is_none() {
            if !warned && started.elapsed() > self.shared.ttl * 2 {
                tracing::warn!(
                    "waiting for the cluster's controller (the holder of the controller lease) \
                     to be reachable"
                );
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log as this node serves it to the others (`cadre.v1.Log`): its controller while it
    /// holds the lease, else a refusal naming the holder. A call is never passed on again.
    pub fn served(&self) -> Arc<dyn EventLog> {
        Arc::new(Served(self.shared.clone()))
    }

    /// Runs the lease loop (see the module's docs); the controller runs under `system`. Once
    /// `stopping`, it takes the lease no more but renews it while the node's actors stop (their
    /// last appends need the controller); the node then calls [`LeasedLog::give_up`].
    pub fn keep(&self, system: SupervisorRef, stopping: watch::Receiver<bool>) -> JoinHandle<()> {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut held: Option<Lease> = None;
            loop {
                let wait = match held.take() {
                    None if *stopping.borrow() => shared.renew_every(),
                    None => {
                        let (lease, wait) = shared.try_to_take(&system).await;
                        held = lease;
                        wait
                    }
                    Some(lease) => {
                        held = shared.renew(lease, &system).await;
                        shared.renew_every()
                    }
                };
                *shared.held.lock().expect("held lease") = held.clone();
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// Gives the lease up if this node holds it (a node stopping, once its actors and its
    /// controller have stopped and the lease loop was aborted), so that another node takes it
    /// at once rather than after the TTL.
    pub async fn give_up(&self) {
        let Some(lease) = self.shared.held.lock().expect("held lease").take() else {
            return;
        };
        if let Some(controller) = self.shared.local.write().expect("local controller").take() {
            controller.end_subscriptions(StoreError::Unavailable(
                "the controller node is stopping; subscribe again".into(),
            ));
        }
        let store = self.shared.store.clone();
        match blocking(move || lease::release(store.as_ref(), &lease)).await {
            Ok(()) => tracing::info!("controller lease given up"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot give the controller lease up; it expires by itself")
            }
        }
    }
}

impl Shared {
    fn controller(&self) -> Option<Controller> {
        self.local.read().expect("local controller").clone()
    }

    fn renew_every(&self) -> Duration {
        self.ttl.mul_f64(RENEW_EVERY)
    }

    /// The holder of the lease, if it has not expired (by this node's clock).
    fn holder(&self) -> Option<Lease> {
        self.lease
            .borrow()
            .clone()
            .filter(|l| l.expires_unix_ms > unix_ms())
    }

    fn publish(&self, lease: &Lease) {
        self.lease.send_if_modified(|seen| {
            let changed = seen.as_ref() != Some(lease);
            *seen = Some(lease.clone());
            changed
        });
    }

    /// One try to take the lease: the lease if this node took it and started its controller,
    /// and how long to wait before the next step.
    async fn try_to_take(&self, system: &SupervisorRef) -> (Option<Lease>, Duration) {
        let (store, node, ttl) = (self.store.clone(), self.node.clone(), self.ttl);
        match blocking(move || lease::claim(store.as_ref(), &node, ttl, unix_ms())).await {
            Ok(Claim::Took(lease)) => {
                // Published once the controller runs: until then no call should come here.
                match self.become_controller(&lease, system).await {
                    // Renewed at once: the controller's start (its replay) may have taken a
                    // while, and the lease may have gone meanwhile.
                    Ok(()) => {
                        self.publish(&lease);
                        (Some(lease), Duration::ZERO)
                    }
                    Err(why) => {
                        tracing::error!(epoch = lease.epoch, error = %why, "took the controller lease but cannot start the controller; giving the lease up");
                        let store = self.store.clone();
                        let _ = blocking(move || lease::release(store.as_ref(), &lease)).await;
                        (None, self.renew_every())
                    }
                }
            }
            Ok(Claim::Held(lease)) => {
                self.publish(&lease);
                // Look again right after it expires, if that comes first.
                let left = Duration::from_millis(lease.expires_unix_ms.saturating_sub(unix_ms()));
                (
                    None,
                    (left + Duration::from_millis(20)).min(self.renew_every()),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the controller lease");
                (None, self.renew_every())
            }
        }
    }

    /// Renews `lease`; the lease still held, or `None` once this node stepped down.
    async fn renew(&self, lease: Lease, system: &SupervisorRef) -> Option<Lease> {
        let (store, ttl, held) = (self.store.clone(), self.ttl, lease.clone());
        // A renewal that has not come back a sixth of the TTL before the lease expires is
        // given up on: the node steps down in time, whatever the store does meanwhile.
        let margin = self.ttl.as_millis() as u64 / 6;
        let left = lease.expires_unix_ms.saturating_sub(unix_ms() + margin);
        let renewal = tokio::time::timeout(
            Duration::from_millis(left),
            blocking(move || lease::renew(store.as_ref(), &held, ttl, unix_ms())),
        )
        .await;
        let Ok(renewal) = renewal else {
            let why = "the lease could not be renewed before it expires: the store did not answer";
            self.step_down(system, why).await;
            return None;
        };
        match renewal {
            Ok(Renewal::Renewed(renewed)) => {
                self.publish(&renewed);
                Some(renewed)
            }
            Ok(Renewal::Lost(now)) => {
                let why = format!("node `{}` took the lease (epoch {})", now.node, now.epoch);
                self.publish(&now);
                self.step_down(system, &why).await;
                None
            }
            Err(e)
                if unix_ms() + self.renew_every().as_millis() as u64 >= lease.expires_unix_ms =>
            {
                let why = format!("the lease could not be renewed before it expires: {e}");
                self.step_down(system, &why).await;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the controller lease; retrying");
                Some(lease)
            }
        }
    }

    async fn become_controller(&self, lease: &Lease, system: &SupervisorRef) -> Result<(), String> {
        let fenced: Arc<dyn Store> = Arc::new(FencedStore::new(self.store.clone(), lease));
        let controller = Controller::new(fenced, self.limits);
        system
            .start_child(controller.child_spec(CONTROLLER))
            .await
            .map_err(|e| e.to_string())?;
        *self.local.write().expect("local controller") = Some(controller);
        tracing::info!(
            epoch = lease.epoch,
            ttl_ms = self.ttl.as_millis() as u64,
            "this node is the cluster's controller"
        );
        Ok(())
    }

    async fn step_down(&self, system: &SupervisorRef, why: &str) {
        let Some(was) = self.local.write().expect("local controller").take() else {
            return;
        };
        was.end_subscriptions(StoreError::Unavailable(format!(
            "node `{}` is no longer the cluster's controller ({why}); subscribe again",
            self.node
        )));
        tracing::warn!(
            reason = why,
            "this node is no longer the cluster's controller"
        );
        if let Err(e) = system.terminate_child(CONTROLLER).await {
            tracing::warn!(error = %e, "cannot stop the controller");
        }
        let _ = system.delete_child(CONTROLLER).await;
    }

    /// Why this node does not answer a log call itself.
    fn not_controller(&self) -> StoreError {
        let holder = match self.holder() {
            Some(l) => format!("node `{}` holds the lease (epoch {})", l.node, l.epoch),
            None => "no node holds the lease now".into(),
        };
        StoreError::Unavailable(format!(
            "node `{}` is not the cluster's controller: {holder}",
            self.node
        ))
    }
}

#[async_trait::async_trait]
impl EventLog for LeasedLog {
    async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        match self.shared.controller() {
            Some(c) => c.append(request).await,
            None => self.remote.append(request).await,
        }
    }

    async fn create(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        match self.shared.controller() {
            Some(c) => c.create(request).await,
            None => self.remote.create(request).await,
        }
    }

    async fn delete(&self, conversation_id: &str) -> Result<u64, DeleteError> {
        match self.shared.controller() {
            Some(c) => c.delete(conversation_id).await,
            None => self.remote.delete(conversation_id).await,
        }
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        match self.shared.controller() {
            Some(c) => c.read(conversation_id, after_seq, limit).await,
            None => self.remote.read(conversation_id, after_seq, limit).await,
        }
    }

    async fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError> {
        match self.shared.controller() {
            Some(c) => c.last_seq(conversation_id).await,
            None => self.remote.last_seq(conversation_id).await,
        }
    }

    async fn list(&self, after: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        match self.shared.controller() {
            Some(c) => c.list(after, limit).await,
            None => self.remote.list(after, limit).await,
        }
    }

    async fn subscribe(
        &self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Subscription, SubscribeError> {
        match self.shared.controller() {
            Some(c) => EventLog::subscribe(&c, conversation_id, after_seq).await,
            None => self.remote.subscribe(conversation_id, after_seq).await,
        }
    }

    async fn open_execs(&self) -> Result<Vec<OpenExec>, StoreError> {
        match self.shared.controller() {
            Some(c) => EventLog::open_execs(&c).await,
            None => self.remote.open_execs().await,
        }
    }
}

/// The log as a node serves it to the others: see [`LeasedLog::served`].
struct Served(Arc<Shared>);

impl Served {
    fn controller(&self) -> Result<Controller, StoreError> {
        self.0.controller().ok_or_else(|| self.0.not_controller())
    }
}

#[async_trait::async_trait]
impl EventLog for Served {
    async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        self.controller()
            .map_err(AppendError::Store)?
            .append(request)
            .await
    }

    async fn create(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        self.controller()
            .map_err(AppendError::Store)?
            .create(request)
            .await
    }

    async fn delete(&self, conversation_id: &str) -> Result<u64, DeleteError> {
        self.controller()
            .map_err(DeleteError::Store)?
            .delete(conversation_id)
            .await
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.controller()?
            .read(conversation_id, after_seq, limit)
            .await
    }

    async fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError> {
        self.controller()?.last_seq(conversation_id).await
    }

    async fn list(&self, after: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        self.controller()?.list(after, limit).await
    }

    async fn subscribe(
        &self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Subscription, SubscribeError> {
        let controller = self.controller().map_err(SubscribeError::Store)?;
        EventLog::subscribe(&controller, conversation_id, after_seq).await
    }

    async fn open_execs(&self) -> Result<Vec<OpenExec>, StoreError> {
        EventLog::open_execs(&self.controller()?).await
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}
