//! The event log of a node that does not hold it (`store: {cluster: {}}`): every call goes to
//! the cluster's controller node over gRPC (`cadre.v1.Log`, served by
//! [`LogService`](crate::grpc::log::LogService)).
//!
//! gRPC rather than ractor_cluster messages: an append needs a deadline, a status the caller
//! can act on (UNAVAILABLE), and a subscription needs a stream with flow control; the API
//! already has all three, with TLS. Nothing is buffered here: while the controller node is
//! down (membership says so, or the connection fails) a call fails at once with an error that
//! names it, and an append that got no answer within the failure timeout is reported as not
//! acknowledged (it may have committed; an idempotency key makes the retry safe).

use std::sync::Arc;

use cadre_actors::event_log::{
    AppendError, AppendRequest, Appended, DeleteError, EventLog, OpenExec, SubscribeError,
    Subscription,
};
use cadre_actors::store::StoreError;
use cadre_proto::v1::log_client::LogClient;
use cadre_proto::v1::{
    LogAppendBatch, LogDeleteRequest, LogLastSeqRequest, LogListRequest, LogOpenExecsRequest,
    LogReadRequest, LogSubscribeRequest, NodeInfo,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::transport::Channel;

use crate::grpc::log::{
    append_error, appended, batch_result, delete_error, open_exec, store_error, subscribe_error,
    wire_append,
};
use crate::membership::Membership;
use crate::peers::Peers;

/// Which node is the controller now (`None`: none is up): membership answers it, or the lease
/// on a shared store ([`crate::leased_log`]).
pub type ControllerFinder = Arc<dyn Fn() -> Option<NodeInfo> + Send + Sync>;

/// The log, reached through the cluster's controller node.
pub struct RemoteLog {
    calls: ControllerCalls,
    /// Appends for the batcher (see [`batch_appends`]).
    appends: mpsc::UnboundedSender<WaitingAppend>,
}

/// Calls to the controller node; cheap to clone.
#[derive(Clone)]
struct ControllerCalls {
    controller: ControllerFinder,
    cluster: String,
    peers: Peers,
}

/// An append waiting for its batch, and where its answer goes.
type WaitingAppend = (
    cadre_proto::v1::LogAppendRequest,
    oneshot::Sender<Result<Appended, AppendError>>,
);

/// Append batches in flight at once: more keep the controller's group commit fed; each
/// takes every append that waited for it.
const BATCHES_IN_FLIGHT: usize = 4;

/// Most appends in one batch: its call has one deadline, and the controller's group commit
/// takes about this many at once.
const MAX_BATCH: usize = 256;

impl RemoteLog {
    /// Calls the controller node `membership` names, through `peers` (which bound each call
    /// by the failure timeout). Must be made within a Tokio runtime (it starts the batcher).
    pub fn new(membership: &Membership, peers: Peers) -> Self {
        let finder = membership.clone();
        Self::to(
            Arc::new(move || finder.controller()),
            membership.cluster(),
            peers,
        )
    }

    /// Calls the controller node `controller` names, of the cluster named `cluster`.
    pub fn to(controller: ControllerFinder, cluster: &str, peers: Peers) -> Self {
        let calls = ControllerCalls {
            controller,
            cluster: cluster.to_string(),
            peers,
        };
        let (appends, waiting) = mpsc::unbounded_channel();
        tokio::spawn(batch_appends(calls.clone(), waiting));
        Self { calls, appends }
    }
}

/// Sends the appends of `waiting` in batches, up to [`BATCHES_IN_FLIGHT`] at once, until the
/// log is dropped. Each batch takes every append that waited for it, so under load a node
/// makes one call for many appends, as the controller makes one commit for them.
async fn batch_appends(
    calls: ControllerCalls,
    mut waiting: mpsc::UnboundedReceiver<WaitingAppend>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = waiting.try_recv()
        {
            batch.push(next);
        }
        let calls = calls.clone();
        tokio::spawn(async move {
            calls.append_batch(batch).await;
            drop(permit);
        });
    }
}

impl ControllerCalls {
    /// Sends `batch` in one call and answers each of its appends.
    async fn append_batch(&self, batch: Vec<WaitingAppend>) {
        let (appends, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let (mut client, controller) = match self.client() {
            Ok(found) => found,
            Err(why) => {
                for answer in answers {
                    let _ = answer.send(Err(AppendError::Store(StoreError::Unavailable(
                        why.clone(),
                    ))));
                }
                return;
            }
        };
        let request = self.request(LogAppendBatch { appends });
        match client.append_batch(request).await {
            Ok(results) => {
                let mut results = results.into_inner().results.into_iter();
                for answer in answers {
                    let result = match results.next() {
                        Some(result) => batch_result(result, || {
                            format!("the controller node `{}` gave no answer", controller.name)
                        }),
                        None => Err(AppendError::Store(StoreError::Unavailable(format!(
                            "the controller node `{}` answered fewer appends than it was sent",
                            controller.name
                        )))),
                    };
                    let _ = answer.send(result);
                }
            }
            Err(status) => {
                for answer in answers {
                    let _ = answer.send(Err(append_error(&status, || {
                        self.unreachable(&controller, &status)
                    })));
                }
            }
        }
    }

    /// A client of the controller node, and the node; or why there is none.
    fn client(&self) -> Result<(LogClient<Channel>, NodeInfo), String> {
        let controller = (self.controller)().ok_or_else(|| {
            format!(
                "no controller node of cluster `{}` is up (the node with store.embedded, or \
                 the holder of the lease on store.foundationdb); the call was not made, retry \
                 once it is back",
                self.cluster
            )
        })?;
        let channel = self.peers.channel(&controller)?;
        Ok((client(channel), controller))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.peers.request(message)
    }

    /// Why a call to `controller` failed in transport, for the caller.
    fn unreachable(&self, controller: &NodeInfo, status: &Status) -> String {
        let what = if status.code() == tonic::Code::DeadlineExceeded {
            format!(
                "did not answer within {} ms (an append may have committed: retry with its \
                 idempotency key)",
                self.peers.timeout().as_millis()
            )
        } else {
            format!("cannot be reached ({})", status.message())
        };
        format!(
            "the controller node `{}` at {} {what}",
            controller.name, controller.address
        )
    }
}

impl RemoteLog {
    /// The first events of a new conversation, through the controller.
    async fn send_create(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        let (mut client, controller) = self
            .calls
            .client()
            .map_err(|why| AppendError::Store(StoreError::Unavailable(why)))?;
        let request = self.calls.request(wire_append(request));
        match client.create(request).await {
            Ok(r) => Ok(appended(r.into_inner())),
            Err(status) => Err(append_error(&status, || {
                self.calls.unreachable(&controller, &status)
            })),
        }
    }
}

fn client(channel: Channel) -> LogClient<Channel> {
    LogClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

#[async_trait::async_trait]
impl EventLog for RemoteLog {
    async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        let (answer, answered) = oneshot::channel();
        self.appends
            .send((wire_append(request), answer))
            .map_err(|_| AppendError::Unavailable)?;
        answered.await.map_err(|_| AppendError::Unavailable)?
    }

    async fn create(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        self.send_create(request).await
    }

    async fn delete(&self, conversation_id: &str) -> Result<u64, DeleteError> {
        let (mut client, controller) = self
            .calls
            .client()
            .map_err(|why| DeleteError::Store(StoreError::Unavailable(why)))?;
        let request = LogDeleteRequest {
            conversation_id: conversation_id.to_string(),
        };
        match client.delete(self.calls.request(request)).await {
            Ok(r) => Ok(r.into_inner().events),
            Err(status) => Err(delete_error(&status, || {
                self.calls.unreachable(&controller, &status)
            })),
        }
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<cadre_proto::v1::Event>, StoreError> {
        let (mut client, controller) = self.calls.client().map_err(StoreError::Unavailable)?;
        let request = LogReadRequest {
            conversation_id: conversation_id.to_string(),
            after_seq,
            limit: limit.min(u32::MAX as usize) as u32,
        };
        match client.read(self.calls.request(request)).await {
            Ok(r) => Ok(r.into_inner().events),
            Err(status) => Err(store_error(&status, || {
                self.calls.unreachable(&controller, &status)
            })),
        }
    }

    async fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError> {
        let (mut client, controller) = self.calls.client().map_err(StoreError::Unavailable)?;
        let request = LogLastSeqRequest {
            conversation_id: conversation_id.to_string(),
        };
        match client.last_seq(self.calls.request(request)).await {
            Ok(r) => Ok(r.into_inner().last_seq),
            Err(status) => Err(store_error(&status, || {
                self.calls.unreachable(&controller, &status)
            })),
        }
    }

    async fn list(&self, after: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let (mut client, controller) = self.calls.client().map_err(StoreError::Unavailable)?;
        let request = LogListRequest {
            after: after.to_string(),
            limit: limit.min(u32::MAX as usize) as u32,
        };
        match client.list(self.calls.request(request)).await {
            Ok(r) => Ok(r
                .into_inner()
                .conversations
                .into_iter()
                .map(|c| (c.conversation_id, c.last_seq))
                .collect()),
            Err(status) => Err(store_error(&status, || {
                self.calls.unreachable(&controller, &status)
            })),
        }
    }

    async fn subscribe(
        &self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Subscription, SubscribeError> {
        let (mut client, controller) = self
            .calls
            .client()
            .map_err(|why| SubscribeError::Store(StoreError::Unavailable(why)))?;
        // A deadline on the call would end the stream: only its start is bounded.
        let request = self.calls.peers.stream_request(LogSubscribeRequest {
            conversation_id: conversation_id.to_string(),
            after_seq,
        });
        let started =
            tokio::time::timeout(self.calls.peers.timeout(), client.subscribe(request)).await;
        let stream = match started {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                return Err(subscribe_error(&status, || {
                    self.calls.unreachable(&controller, &status)
                }));
            }
            Err(_) => {
                let status = Status::deadline_exceeded("no answer");
                return Err(SubscribeError::Store(StoreError::Unavailable(
                    self.calls.unreachable(&controller, &status),
                )));
            }
        };
        let controller = Arc::new(controller);
        let events = stream.map(move |item| match item {
            Ok(event) => Ok(Arc::new(event)),
            Err(status) => Err(subscribe_error(&status, || {
                format!(
                    "the subscription to the controller node `{}` broke ({}); subscribe again",
                    controller.name,
                    status.message()
                )
            })),
        });
        Ok(Subscription::new(after_seq, Box::pin(events)))
    }

    async fn open_execs(&self) -> Result<Vec<OpenExec>, StoreError> {
        let (mut client, controller) = self.calls.client().map_err(StoreError::Unavailable)?;
        match client
            .open_execs(self.calls.request(LogOpenExecsRequest {}))
            .await
        {
            Ok(r) => Ok(r.into_inner().execs.into_iter().map(open_exec).collect()),
            Err(status) => Err(store_error(&status, || {
                self.calls.unreachable(&controller, &status)
            })),
        }
    }
}
