//! `cadre.v1.Log`: the controller node's event log, served to the other nodes of its cluster.
//!
//! The other nodes hold a [`RemoteLog`](crate::remote_log::RemoteLog), which calls this
//! service for every append, read and subscription. The log's promises hold through it
//! unchanged: an append is answered only after it is durable (the answer is the controller's),
//! a refusal comes back as the very `AppendError` it was (a `LogFailure` in the status's
//! details), and a subscription streams the controller's own, without gap or duplicate. The
//! calls carry the cluster's cookie (checked by [`Access`](super::auth::Access)).

use std::pin::Pin;
use std::sync::Arc;

use cadre_actors::event_log::{
    AppendError, AppendRequest, Appended, DeleteError, EventLog, NewEvent, OpenExec, Owner,
    SubscribeError,
};
use cadre_actors::store::StoreError;
use cadre_proto::v1::log_failure::Kind;
use cadre_proto::v1::log_server::Log;
use cadre_proto::v1::{
    Event, ExecState, LogAppendBatch, LogAppendRequest, LogAppendResult, LogAppendResults,
    LogAppended, LogConversation, LogConversations, LogDeleteRequest, LogDeleted, LogEvents,
    LogFailure, LogLastSeq, LogLastSeqRequest, LogListRequest, LogOpenExec, LogOpenExecs,
    LogOpenExecsRequest, LogReadRequest, LogSubscribeRequest,
};
use futures_util::Stream;
use prost::Message;
use tonic::{Code, Request, Response, Status};

/// The most events one `Read` returns.
pub const MAX_READ: u32 = 4096;

/// The service over the node's own log; cheap to clone.
#[derive(Clone)]
pub struct LogService {
    log: Arc<dyn EventLog>,
}

impl LogService {
    /// Serves `log` (the controller) to the cluster.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Log for LogService {
    async fn append(
        &self,
        request: Request<LogAppendRequest>,
    ) -> Result<Response<LogAppended>, Status> {
        let request = append_request(request.into_inner()).map_err(append_failure)?;
        answer(self.log.append(request).await)
    }

    async fn append_batch(
        &self,
        request: Request<LogAppendBatch>,
    ) -> Result<Response<LogAppendResults>, Status> {
        // Each append goes to the controller at once, so they all join its next group commit.
        let appends = request
            .into_inner()
            .appends
            .into_iter()
            .map(|r| async move {
                let appended = match append_request(r) {
                    Ok(request) => self.log.append(request).await,
                    Err(e) => Err(e),
                };
                match appended {
                    Ok(a) => LogAppendResult {
                        appended: Some(wire_appended(a)),
                        ..Default::default()
                    },
                    Err(e) => batch_refusal(e),
                }
            });
        let results = futures_util::future::join_all(appends).await;
        Ok(Response::new(LogAppendResults { results }))
    }

    async fn create(
        &self,
        request: Request<LogAppendRequest>,
    ) -> Result<Response<LogAppended>, Status> {
        let request = append_request(request.into_inner()).map_err(append_failure)?;
        answer(self.log.create(request).await)
    }

    async fn delete(
        &self,
        request: Request<LogDeleteRequest>,
    ) -> Result<Response<LogDeleted>, Status> {
        let events = self
            .log
            .delete(&request.into_inner().conversation_id)
            .await
            .map_err(delete_failure)?;
        Ok(Response::new(LogDeleted { events }))
    }

    async fn read(&self, request: Request<LogReadRequest>) -> Result<Response<LogEvents>, Status> {
        let r = request.into_inner();
        let events = self
            .log
            .read(
                &r.conversation_id,
                r.after_seq,
                r.limit.clamp(1, MAX_READ) as usize,
            )
            .await
            .map_err(store_failure)?;
        Ok(Response::new(LogEvents { events }))
    }

    async fn last_seq(
        &self,
        request: Request<LogLastSeqRequest>,
    ) -> Result<Response<LogLastSeq>, Status> {
        let last_seq = self
            .log
            .last_seq(&request.into_inner().conversation_id)
            .await
            .map_err(store_failure)?;
        Ok(Response::new(LogLastSeq { last_seq }))
    }

    async fn list(
        &self,
        request: Request<LogListRequest>,
    ) -> Result<Response<LogConversations>, Status> {
        let r = request.into_inner();
        let conversations = self
            .log
            .list(&r.after, r.limit.clamp(1, MAX_READ) as usize)
            .await
            .map_err(store_failure)?
            .into_iter()
            .map(|(conversation_id, last_seq)| LogConversation {
                conversation_id,
                last_seq,
            })
            .collect();
        Ok(Response::new(LogConversations { conversations }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<LogSubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        let mut subscription = self
            .log
            .subscribe(&r.conversation_id, r.after_seq)
            .await
            .map_err(subscribe_failure)?;
        let stream = async_stream(move |tx| async move {
            while let Some(next) = subscription.next().await {
                let item = next.map(|e| (*e).clone()).map_err(subscribe_failure);
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn open_execs(
        &self,
        _: Request<LogOpenExecsRequest>,
    ) -> Result<Response<LogOpenExecs>, Status> {
        let execs = self
            .log
            .open_execs()
            .await
            .map_err(store_failure)?
            .into_iter()
            .map(|o| LogOpenExec {
                conversation_id: o.conversation_id,
                exec_id: o.exec_id,
                state: o.state as i32,
                node: o.node,
                epoch: o.epoch,
            })
            .collect();
        Ok(Response::new(LogOpenExecs { execs }))
    }
}

/// The answer to an append or a create.
fn answer(appended: Result<Appended, AppendError>) -> Result<Response<LogAppended>, Status> {
    Ok(Response::new(wire_appended(
        appended.map_err(append_failure)?,
    )))
}

/// Where an append landed, on the wire.
fn wire_appended(a: Appended) -> LogAppended {
    LogAppended {
        first_seq: a.first_seq,
        last_seq: a.last_seq,
        duplicate: a.duplicate,
    }
}

/// Where an append landed, from the wire.
pub(crate) fn appended(a: LogAppended) -> Appended {
    Appended {
        first_seq: a.first_seq,
        last_seq: a.last_seq,
        duplicate: a.duplicate,
    }
}

/// A stream fed by a task: ends when the task does or the client goes away.
fn async_stream<F, Fut>(feed: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(feed(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The request as the log takes it; `Invalid` if an event has no kind.
pub(crate) fn append_request(r: LogAppendRequest) -> Result<AppendRequest, AppendError> {
    let events = r
        .events
        .into_iter()
        .map(|e| {
            let kind = e.kind.ok_or_else(|| {
                AppendError::Invalid(format!("an event of exec `{}` has no kind", e.exec_id))
            })?;
            Ok(NewEvent {
                exec_id: e.exec_id,
                kind,
            })
        })
        .collect::<Result<_, AppendError>>()?;
    Ok(AppendRequest {
        conversation_id: r.conversation_id,
        events,
        idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
        open_exec: (!r.open_exec.is_empty()).then_some(r.open_exec),
        owner: (!r.owner.is_empty()).then_some(Owner {
            node: r.owner,
            epoch: r.owner_epoch,
        }),
    })
}

/// The wire form of an append.
pub(crate) fn wire_append(r: AppendRequest) -> LogAppendRequest {
    LogAppendRequest {
        events: r
            .events
            .into_iter()
            .map(|e| Event {
                exec_id: e.exec_id,
                kind: Some(e.kind),
                ..Default::default()
            })
            .collect(),
        conversation_id: r.conversation_id,
        idempotency_key: r.idempotency_key.unwrap_or_default(),
        open_exec: r.open_exec.unwrap_or_default(),
        owner_epoch: r.owner.as_ref().map_or(0, |o| o.epoch),
        owner: r.owner.map(|o| o.node).unwrap_or_default(),
    }
}

/// An open exec from the wire.
pub(crate) fn open_exec(o: LogOpenExec) -> OpenExec {
    OpenExec {
        state: ExecState::try_from(o.state).unwrap_or(ExecState::Unspecified),
        conversation_id: o.conversation_id,
        exec_id: o.exec_id,
        node: o.node,
        epoch: o.epoch,
    }
}

fn failure(code: Code, message: String, failure: LogFailure) -> Status {
    Status::with_details(code, message, failure.encode_to_vec().into())
}

fn append_failure(e: AppendError) -> Status {
    let message = e.to_string();
    let (code, f) = match e {
        AppendError::Invalid(m) => (Code::InvalidArgument, fail(Kind::Invalid).message(m)),
        AppendError::HistoryLimit {
            conversation_id,
            limit,
        } => (
            Code::ResourceExhausted,
            LogFailure {
                conversation_id,
                limit,
                ..fail(Kind::HistoryLimit)
            },
        ),
        AppendError::AlreadyExists(c) => (Code::AlreadyExists, fail(Kind::AlreadyExists).on(c)),
        AppendError::ExecFinished {
            conversation_id,
            exec_id,
        } => (
            Code::FailedPrecondition,
            LogFailure {
                exec_id,
                ..fail(Kind::ExecFinished).on(conversation_id)
            },
        ),
        AppendError::ExecRunning {
            conversation_id,
            exec_id,
        } => (
            Code::FailedPrecondition,
            LogFailure {
                exec_id,
                ..fail(Kind::ExecRunning).on(conversation_id)
            },
        ),
        AppendError::ExecMoved {
            conversation_id,
            exec_id,
            node,
        } => (
            Code::FailedPrecondition,
            LogFailure {
                exec_id,
                node,
                ..fail(Kind::ExecMoved).on(conversation_id)
            },
        ),
        AppendError::Store(e) => store_kind(e),
        AppendError::Unavailable => (Code::Unavailable, fail(Kind::Unavailable)),
    };
    failure(code, message, f)
}

fn delete_failure(e: DeleteError) -> Status {
    let message = e.to_string();
    let (code, f) = match e {
        DeleteError::Invalid(m) => (Code::InvalidArgument, fail(Kind::Invalid).message(m)),
        DeleteError::NotFound(c) => (Code::NotFound, fail(Kind::NotFound).on(c)),
        DeleteError::Store(e) => store_kind(e),
        DeleteError::Unavailable => (Code::Unavailable, fail(Kind::Unavailable)),
    };
    failure(code, message, f)
}

fn subscribe_failure(e: SubscribeError) -> Status {
    let message = e.to_string();
    let (code, f) = match e {
        SubscribeError::NotFound(c) => (Code::NotFound, fail(Kind::NotFound).on(c)),
        SubscribeError::OutOfRange {
            conversation_id,
            after_seq,
            last_seq,
        } => (
            Code::OutOfRange,
            LogFailure {
                after_seq,
                last_seq,
                ..fail(Kind::OutOfRange).on(conversation_id)
            },
        ),
        SubscribeError::TooSlow { buffer, last_seq } => (
            Code::Aborted,
            LogFailure {
                limit: buffer as u64,
                last_seq,
                ..fail(Kind::TooSlow)
            },
        ),
        SubscribeError::Deleted(c) => (Code::NotFound, fail(Kind::Deleted).on(c)),
        SubscribeError::Store(e) => store_kind(e),
    };
    failure(code, message, f)
}

fn store_failure(e: StoreError) -> Status {
    let message = e.to_string();
    let (code, f) = store_kind(e);
    failure(code, message, f)
}

fn store_kind(e: StoreError) -> (Code, LogFailure) {
    (Code::Unavailable, fail(Kind::Store).message(e.to_string()))
}

fn fail(kind: Kind) -> LogFailure {
    LogFailure {
        kind: kind as i32,
        ..Default::default()
    }
}

trait FailureExt {
    fn on(self, conversation_id: String) -> Self;
    fn message(self, message: String) -> Self;
}

impl FailureExt for LogFailure {
    fn on(mut self, conversation_id: String) -> Self {
        self.conversation_id = conversation_id;
        self
    }

    fn message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

/// What a refusal of the controller was, from its status: the `LogFailure` in its details, or
/// `None` when the status did not come from the log (the transport failed).
pub(crate) fn failure_of(status: &Status) -> Option<LogFailure> {
    LogFailure::decode(status.details())
        .ok()
        .filter(|f| f.kind != Kind::Unspecified as i32)
}

/// A refused append's answer in a batch: the status `Append` would have returned.
fn batch_refusal(e: AppendError) -> LogAppendResult {
    let status = append_failure(e);
    LogAppendResult {
        code: status.code() as i32,
        message: status.message().to_string(),
        failure: failure_of(&status),
        ..Default::default()
    }
}

/// An append's answer in a batch, as `Append` would have given it.
pub(crate) fn batch_result(
    result: LogAppendResult,
    unreachable: impl FnOnce() -> String,
) -> Result<Appended, AppendError> {
    match (result.code, result.appended) {
        (0, Some(a)) => Ok(appended(a)),
        (code, _) => {
            let status = Status::with_details(
                Code::from(code),
                result.message,
                result.failure.unwrap_or_default().encode_to_vec().into(),
            );
            Err(append_error(&status, unreachable))
        }
    }
}

/// The append error a refusal stands for; `unreachable` when the transport failed.
pub(crate) fn append_error(status: &Status, unreachable: impl FnOnce() -> String) -> AppendError {
    let Some(f) = failure_of(status) else {
        return AppendError::Store(StoreError::Unavailable(unreachable()));
    };
    match Kind::try_from(f.kind).unwrap_or(Kind::Unspecified) {
        Kind::Invalid => AppendError::Invalid(f.message),
        Kind::HistoryLimit => AppendError::HistoryLimit {
            conversation_id: f.conversation_id,
            limit: f.limit,
        },
        Kind::AlreadyExists => AppendError::AlreadyExists(f.conversation_id),
        Kind::ExecFinished => AppendError::ExecFinished {
            conversation_id: f.conversation_id,
            exec_id: f.exec_id,
        },
        Kind::ExecRunning => AppendError::ExecRunning {
            conversation_id: f.conversation_id,
            exec_id: f.exec_id,
        },
        Kind::ExecMoved => AppendError::ExecMoved {
            conversation_id: f.conversation_id,
            exec_id: f.exec_id,
            node: f.node,
        },
        Kind::Unavailable => AppendError::Unavailable,
        _ => AppendError::Store(StoreError::Io(f.message)),
    }
}

/// The delete error a refusal stands for.
pub(crate) fn delete_error(status: &Status, unreachable: impl FnOnce() -> String) -> DeleteError {
    let Some(f) = failure_of(status) else {
        return DeleteError::Store(StoreError::Unavailable(unreachable()));
    };
    match Kind::try_from(f.kind).unwrap_or(Kind::Unspecified) {
        Kind::Invalid => DeleteError::Invalid(f.message),
        Kind::NotFound => DeleteError::NotFound(f.conversation_id),
        Kind::Unavailable => DeleteError::Unavailable,
        _ => DeleteError::Store(StoreError::Io(f.message)),
    }
}

/// The subscription error a refusal stands for.
pub(crate) fn subscribe_error(
    status: &Status,
    unreachable: impl FnOnce() -> String,
) -> SubscribeError {
    let Some(f) = failure_of(status) else {
        return SubscribeError::Store(StoreError::Unavailable(unreachable()));
    };
    match Kind::try_from(f.kind).unwrap_or(Kind::Unspecified) {
        Kind::NotFound => SubscribeError::NotFound(f.conversation_id),
        Kind::OutOfRange => SubscribeError::OutOfRange {
            conversation_id: f.conversation_id,
            after_seq: f.after_seq,
            last_seq: f.last_seq,
        },
        Kind::TooSlow => SubscribeError::TooSlow {
            buffer: f.limit as usize,
            last_seq: f.last_seq,
        },
        Kind::Deleted => SubscribeError::Deleted(f.conversation_id),
        _ => SubscribeError::Store(StoreError::Io(f.message)),
    }
}

/// The store error a refusal stands for.
pub(crate) fn store_error(status: &Status, unreachable: impl FnOnce() -> String) -> StoreError {
    match failure_of(status) {
        Some(f) => StoreError::Io(f.message),
        None => StoreError::Unavailable(unreachable()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_append_refusal_comes_back_as_itself() {
        let refusals = [
            AppendError::Invalid("events: empty".into()),
            AppendError::HistoryLimit {
                conversation_id: "c".into(),
                limit: 7,
            },
            AppendError::AlreadyExists("c".into()),
            AppendError::ExecFinished {
                conversation_id: "c".into(),
                exec_id: "e".into(),
            },
            AppendError::ExecRunning {
                conversation_id: "c".into(),
                exec_id: "e".into(),
            },
            AppendError::ExecMoved {
                conversation_id: "c".into(),
                exec_id: "e".into(),
                node: "n".into(),
            },
            AppendError::Unavailable,
        ];
        for refusal in refusals {
            let status = append_failure(refusal.clone());
            assert_eq!(status.message(), refusal.to_string());
            assert_eq!(append_error(&status, || "transport".into()), refusal);
            let in_batch = batch_result(batch_refusal(refusal.clone()), || "transport".into());
            assert_eq!(in_batch, Err(refusal));
        }
    }

    #[test]
    fn every_subscription_refusal_comes_back_as_itself() {
        let refusals = [
            SubscribeError::NotFound("c".into()),
            SubscribeError::OutOfRange {
                conversation_id: "c".into(),
                after_seq: 9,
                last_seq: 3,
            },
            SubscribeError::TooSlow {
                buffer: 1024,
                last_seq: 5,
            },
            SubscribeError::Deleted("c".into()),
        ];
        for refusal in refusals {
            let status = subscribe_failure(refusal.clone());
            assert_eq!(subscribe_error(&status, || "transport".into()), refusal);
        }
    }

    #[test]
    fn a_status_without_a_failure_is_the_transport_failing() {
        let status = Status::unavailable("connection refused");
        assert_eq!(
            append_error(&status, || "the controller node `a` cannot be reached"
                .into()),
            AppendError::Store(StoreError::Unavailable(
                "the controller node `a` cannot be reached".into()
            ))
        );
    }
}
