//! Every mapping from a domain error to a gRPC status, in one place.

use cadre_actors::SupervisorError;
use cadre_actors::event_log::{AppendError, DeleteError, SubscribeError};
use cadre_actors::exec::ExecError;
use cadre_actors::tools::ToolError;
use cadre_sandbox::PlacementError;
use tonic::Status;

/// Rewrites tonic's answer to a request over the message limit (OUT_OF_RANGE, "decoded message
/// length too large") as gRPC prescribes it, RESOURCE_EXHAUSTED, naming the node's limit and
/// the setting that raises it. Such a request never reaches a service: its answer is
/// trailers-only, so the status is in the response headers.
pub fn message_limit_layer(
    limit: usize,
) -> tower::util::MapResponseLayer<
    impl Fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> + Clone,
> {
    let message = http::HeaderValue::try_from(format!(
        "the request is larger than this node's message limit of {limit} bytes \
         (api.max_message_bytes)"
    ))
    .expect("an ASCII header value");
    tower::util::MapResponseLayer::new(move |mut response: http::Response<tonic::body::Body>| {
        let headers = response.headers_mut();
        let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
            && headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                // tonic percent-encodes the message's spaces.
                .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
        if too_large {
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            headers.insert("grpc-message", message.clone());
        }
        response
    })
}

/// The status of a refused or failed exec operation.
pub fn exec_status(e: ExecError) -> Status {
    match e {
        ExecError::Invalid(m) => Status::invalid_argument(m),
        ExecError::PermissionDenied(m) => Status::permission_denied(m),
        ExecError::NotFound(m) => Status::not_found(m),
        ExecError::Conflict(m) => Status::failed_precondition(m),
        ExecError::OutOfRange(m) => Status::out_of_range(m),
        ExecError::Unavailable(m) => Status::unavailable(m),
        ExecError::Append(e) => append_status(e),
        ExecError::Subscribe(e) => subscribe_status(e),
        ExecError::Delete(e) => delete_status(e),
        ExecError::Store(e) => Status::unavailable(e.to_string()),
    }
}

/// The status of a subscription that could not start or was cut off.
pub fn subscribe_status(e: SubscribeError) -> Status {
    match e {
        SubscribeError::NotFound(_) => Status::not_found(e.to_string()),
        SubscribeError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        SubscribeError::TooSlow { .. } => Status::aborted(e.to_string()),
        SubscribeError::Deleted(_) => Status::not_found(e.to_string()),
        SubscribeError::Store(_) => Status::unavailable(e.to_string()),
    }
}

/// The status of a refused or failed delete.
pub fn delete_status(e: DeleteError) -> Status {
    match e {
        DeleteError::Invalid(_) => Status::invalid_argument(e.to_string()),
        DeleteError::NotFound(_) => Status::not_found(e.to_string()),
        DeleteError::Store(_) | DeleteError::Unavailable => Status::unavailable(e.to_string()),
    }
}

/// The status of a refused or failed append.
pub fn append_status(e: AppendError) -> Status {
    match e {
        AppendError::Invalid(_) => Status::invalid_argument(e.to_string()),
        AppendError::HistoryLimit { .. } => Status::resource_exhausted(e.to_string()),
        AppendError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        AppendError::ExecFinished { .. }
        | AppendError::ExecRunning { .. }
        | AppendError::ExecMoved { .. } => Status::failed_precondition(e.to_string()),
        AppendError::Store(_) | AppendError::Unavailable => Status::unavailable(e.to_string()),
    }
}

/// The status of a refused supervisor operation.
pub fn supervisor_status(e: SupervisorError) -> Status {
    match &e {
        SupervisorError::NotFound(_) => Status::not_found(e.to_string()),
        SupervisorError::Running(_) | SupervisorError::AlreadyPresent(_) => {
            Status::already_exists(e.to_string())
        }
        SupervisorError::Restarting(_) => Status::failed_precondition(e.to_string()),
        SupervisorError::MaxChildren(_) => Status::resource_exhausted(e.to_string()),
        SupervisorError::InvalidSpec { .. } => Status::invalid_argument(e.to_string()),
        SupervisorError::StartFailed { .. } => Status::failed_precondition(e.to_string()),
        SupervisorError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

/// The gRPC status for a tool error.
pub fn tool_status(e: &ToolError) -> Status {
    let message = e.to_string();
    match e {
        ToolError::NotFound(_) => Status::not_found(message),
        ToolError::InvalidArguments { .. } => Status::invalid_argument(message),
        ToolError::Timeout { .. } => Status::deadline_exceeded(message),
        ToolError::Unavailable { .. } => Status::unavailable(message),
        ToolError::Taken { .. } => Status::internal(message),
    }
}

/// The status of a message placement could not deliver.
pub fn placement_status(e: PlacementError) -> Status {
    match &e {
        PlacementError::QueueFull { .. } => Status::resource_exhausted(e.to_string()),
        PlacementError::Refused(_) => Status::failed_precondition(e.to_string()),
        PlacementError::Lease { .. } | PlacementError::Worker { .. } | PlacementError::Closed => {
            Status::unavailable(e.to_string())
        }
    }
}
