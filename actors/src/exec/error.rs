//! Why an exec operation was refused or failed. The API maps each kind to its status code.

use crate::event_log::{AppendError, DeleteError, SubscribeError};
use crate::store::StoreError;

/// Why an exec operation was refused or failed; nothing was changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (write to a conversation of the node).
    #[error("{0}")]
    PermissionDenied(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The conversation is not in a state that allows it (an exec runs, none waits, …).
    #[error("{0}")]
    Conflict(String),
    /// A seq past the conversation's end.
    #[error("{0}")]
    OutOfRange(String),
    /// The node cannot run the exec right now (its agents supervisor is down, …).
    #[error("{0}")]
    Unavailable(String),
    /// The event log refused or failed an append.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// A subscription could not start or ended.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The event log refused or failed a delete.
    #[error(transparent)]
    Delete(#[from] DeleteError),
    /// The event log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}
