//! Who is calling, and whether they may: bearer tokens with roles, and the audit of changes.
//!
//! With tokens configured, every call to a cadre service (and to reflection) must carry
//! `authorization: Bearer <token>`, or it fails with UNAUTHENTICATED. Each method is one
//! [`Action`]; a call whose token's role does not allow it fails with PERMISSION_DENIED before
//! it reaches the service, so it changes nothing. The [`Caller`] travels to the service in the
//! request's extensions, for the checks that depend on what a call names (an agent-user's
//! conversations). Health checks stay open, so that probes work without a secret.
//!
//! Every call that changes something is written to `cadre.audit` as an `ApiCall` once
//! answered: method, the token's name and role, what it named (services note it with
//! [`note_target`]) and the status. A refused call (PERMISSION_DENIED, by its role or by what
//! it named) changed nothing and is only logged. The record is appended in the background, so a change is
//! never slowed by its audit; a node killed at that moment can lose the record of the last
//! calls.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use cadre_actors::access::{Action, Caller};
use cadre_actors::config::ApiToken;
use cadre_actors::controller::{AUDIT_CONVERSATION, AppendRequest, NewEvent};
use cadre_actors::event_log::EventLog;
use cadre_proto::v1::{ApiCall, event};
use tonic::Status;
use tonic::body::Body;

/// The tokens this node accepts, and where changes are audited.
#[derive(Clone)]
pub struct Access {
    tokens: Arc<Vec<ApiToken>>,
    audit: Option<Arc<dyn EventLog>>,
    /// The cluster's cookie: the only credential `cadre.v1.Log` takes (the controller node's
    /// log, for the cluster's other nodes).
    cluster_cookie: Option<Arc<str>>,
}

/// The tower layer that puts [`Access`] in front of every service.
#[derive(Clone)]
pub struct AccessLayer(Access);

/// [`AccessLayer`]'s service.
#[derive(Clone)]
pub struct AccessService<S> {
    access: Access,
    inner: S,
}

/// What a service notes about a call for its audit record: what the call named.
#[derive(Clone, Default)]
struct AuditTarget(Arc<Mutex<String>>);

/// What a method does, and whether it changes something (and so is audited). `None`: open to
/// anyone (health checks).
fn action_of(path: &str) -> Option<(Action, bool)> {
    use Action::*;
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    Some(match (service, method) {
        ("grpc.health.v1.Health", _) => return None,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => {
            (ReadConversations, false)
        }
        ("cadre.v1.Actors", "Tree" | "WatchTree" | "Get" | "Logs" | "List") => (ReadNode, false),
        ("cadre.v1.Actors", "Stop" | "Restart") => (Operate, true),
        ("cadre.v1.Actors", "Spawn") => (Spawn, true),
        ("cadre.v1.Cluster", "Nodes" | "Sandboxes" | "Placement") => (ReadNode, false),
        // A message to an actor does work, as a tool call does: audited like one.
        ("cadre.v1.Cluster", "Send") => (Exec, true),
        ("cadre.v1.Conversations", "Subscribe" | "Get" | "List") => (ReadConversations, false),
        ("cadre.v1.Conversations", "Exec" | "Fork" | "Cancel") => (Exec, true),
        ("cadre.v1.Conversations", "Approve") => (Approve, true),
        ("cadre.v1.Conversations", "Delete") => (Operate, true),
        ("cadre.v1.Tools", "List") => (ReadConversations, false),
        ("cadre.v1.Tools", "Call") => (Exec, true),
        // A method this table does not know is an admin's until it is added here.
        _ => (Spawn, true),
    })
}

impl Access {
    /// Accepts `tokens`, and writes the audit records to `audit`. No tokens leaves the API
    /// open (every caller may do everything); changes are still audited.
    pub fn new(tokens: Vec<ApiToken>, audit: Option<Arc<dyn EventLog>>) -> Self {
        Self {
            tokens: Arc::new(tokens),
            audit,
            cluster_cookie: None,
        }
    }

    /// Lets the cluster's nodes call `cadre.v1.Log`, and each other's `cadre.v1.Actors` and
    /// `cadre.v1.Cluster/Send`, with
    /// `cookie` as their bearer token; no API token may call `cadre.v1.Log`. A node's call on
    /// behalf of a caller was checked, and is audited, where the caller called.
    pub fn with_cluster_cookie(mut self, cookie: Option<String>) -> Self {
        self.cluster_cookie = cookie.map(Arc::from);
        self
    }

    /// Whether a call carries the cluster's cookie (comes from one of its nodes).
    fn check_node(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        let given = headers
            .get("authorization")
            .and_then(|h| h.as_bytes().strip_prefix(b"Bearer "));
        match (&self.cluster_cookie, given) {
            (Some(cookie), Some(given)) if constant_time_eq(cookie.as_bytes(), given) => Ok(()),
            _ => Err(Status::unauthenticated(
                "cadre.v1.Log takes calls only from the nodes of this node's cluster (the \
                 cluster cookie)",
            )),
        }
    }

    /// Whether any token is configured, so that calls must carry one.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The layer to put on the server.
    pub fn layer(&self) -> AccessLayer {
        AccessLayer(self.clone())
    }

    /// Who calls with `authorization`, or why the call is refused. `None` on an open API.
    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        if !self.is_enabled() {
            return Ok(None);
        }
        let header = headers
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let given = header
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        // Every token is compared, each in constant time, so timing reveals nothing.
        let found = self.tokens.iter().fold(None, |found, t| {
            if constant_time_eq(t.secret.as_bytes(), given) {
                Some(t)
            } else {
                found
            }
        });
        found
            .map(|t| Some(t.caller()))
            .ok_or_else(|| Status::unauthenticated("invalid token"))
    }

    /// Whether `caller` may call `path`; PERMISSION_DENIED naming the role and the method.
    fn authorize(caller: Option<&Caller>, path: &str, action: Action) -> Result<(), Status> {
        match caller {
            Some(caller) if !caller.may(action) => Err(Status::permission_denied(format!(
                "token `{}` (role {}) may not call {}",
                caller.name,
                caller.role,
                path.trim_start_matches('/')
            ))),
            _ => Ok(()),
        }
    }

    fn record(&self, record: ApiCall) {
        let Some(log) = self.audit.clone() else {
            return;
        };
        tokio::spawn(async move {
            let request = AppendRequest {
                conversation_id: AUDIT_CONVERSATION.into(),
                events: vec![NewEvent {
                    exec_id: String::new(),
                    kind: event::Kind::ApiCall(record),
                }],
                idempotency_key: None,
                open_exec: None,
                owner: None,
            };
            if let Err(e) = log.append(request).await {
                tracing::warn!(error = %e, "cannot write an API call to the audit log");
            }
        });
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService {
            access: self.0.clone(),
            inner,
        }
    }
}

impl<S> tower::Service<http::Request<Body>> for AccessService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is ready only after its own poll_ready: serve with the one polled.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = self.access.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            // The cluster's log: its nodes only, and not audited (its appends are the record).
            if path.starts_with("/cadre.v1.Log/") {
                return match access.check_node(request.headers()) {
                    Ok(()) => inner.call(request).await,
                    Err(status) => Ok(status.into_http()),
                };
            }
            let peer_call =
                path.starts_with("/cadre.v1.Actors/") || path == "/cadre.v1.Cluster/Send";
            if peer_call && access.check_node(request.headers()).is_ok() {
                request.extensions_mut().insert(PeerCall);
                return inner.call(request).await;
            }
            let Some((action, changes)) = action_of(&path) else {
                return inner.call(request).await;
            };
            let caller = match access.authenticate(request.headers()) {
                Ok(caller) => caller,
                Err(status) => return Ok(status.into_http()),
            };
            if let Err(status) = Access::authorize(caller.as_ref(), &path, action) {
                tracing::warn!(
                    method = %path,
                    caller = caller.as_ref().map_or("", |c| c.name.as_str()),
                    "refused: {}",
                    status.message()
                );
                return Ok(status.into_http());
            }
            let target = AuditTarget::default();
            if let Some(caller) = &caller {
                request.extensions_mut().insert(caller.clone());
            }
            request.extensions_mut().insert(target.clone());
            let response = inner.call(request).await?;
            let refused = response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code == "7");
            if refused {
                tracing::warn!(
                    method = %path,
                    caller = caller.as_ref().map_or("", |c| c.name.as_str()),
                    "refused what the call named"
                );
            } else if changes {
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let code = header("grpc-status")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let message = header("grpc-message")
                    .map(|m| {
                        // gRPC percent-encodes the message.
                        percent_encoding::percent_decode_str(&m)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default();
                access.record(ApiCall {
                    method: path.trim_start_matches('/').to_string(),
                    caller: caller.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                    role: caller
                        .as_ref()
                        .map(|c| c.role.name().to_string())
                        .unwrap_or_default(),
                    target: target.0.lock().expect("audit target").clone(),
                    code,
                    message,
                });
            }
            Ok(response)
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AccessService<S> {
    const NAME: &'static str = S::NAME;
}

/// Marks a call another node of the cluster made on a caller's behalf (with the cluster's
/// cookie): the node called checked the caller; this node answers about itself alone and does
/// not pass the call on again.
#[derive(Clone, Copy, Debug)]
pub struct PeerCall;

/// Whether another node of the cluster made the call.
pub fn is_peer_call<T>(request: &tonic::Request<T>) -> bool {
    request.extensions().get::<PeerCall>().is_some()
}

/// The caller of a request, if the API has tokens.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}

/// Notes what a call names (a conversation, an actor, a tool) for its audit record.
pub fn note_target<T>(request: &tonic::Request<T>, target: impl Into<String>) {
    if let Some(slot) = request.extensions().get::<AuditTarget>() {
        *slot.0.lock().expect("audit target") = target.into();
    }
}

/// PERMISSION_DENIED unless the caller may use conversation `id` (only an agent-user is
/// limited).
pub fn check_conversation<T>(request: &tonic::Request<T>, id: &str) -> Result<(), Status> {
    match caller(request) {
        Some(caller) if !caller.may_use(id) => {
            Err(Status::permission_denied(caller.refusal_of(id)))
        }
        _ => Ok(()),
    }
}

/// PERMISSION_DENIED unless the caller's role allows `action` (for calls whose action depends
/// on what they ask, as a tool call that approves itself).
pub fn check_action<T>(
    request: &tonic::Request<T>,
    action: Action,
    what: &str,
) -> Result<(), Status> {
    match caller(request) {
        Some(caller) if !caller.may(action) => Err(Status::permission_denied(format!(
            "token `{}` (role {}) may not {what}",
            caller.name, caller.role
        ))),
        _ => Ok(()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_actors::access::Role;

    fn token(name: &str, role: Role) -> ApiToken {
        ApiToken {
            name: name.into(),
            secret: format!("{name}-secret"),
            role,
            conversation_prefix: (role == Role::AgentUser).then(|| "acme-".into()),
        }
    }

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = value {
            headers.insert("authorization", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn tokens_are_checked_only_when_configured() {
        let open = Access::new(Vec::new(), None);
        assert_eq!(open.authenticate(&headers(None)).unwrap(), None);
        let access = Access::new(
            vec![token("alpha", Role::Admin), token("beta", Role::Reader)],
            None,
        );
        let beta = access
            .authenticate(&headers(Some("Bearer beta-secret")))
            .unwrap()
            .unwrap();
        assert_eq!((beta.name.as_str(), beta.role), ("beta", Role::Reader));
        for bad in [
            None,
            Some("Bearer gamma"),
            Some("beta-secret"),
            Some("Bearer beta-secre"),
        ] {
            let e = access.authenticate(&headers(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_token_its_role_and_the_method() {
        let reader = token("ci", Role::Reader).caller();
        let path = "/cadre.v1.Conversations/Delete";
        let e = Access::authorize(Some(&reader), path, action_of(path).unwrap().0).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "token `ci` (role reader) may not call cadre.v1.Conversations/Delete"
        );
        assert!(Access::authorize(None, path, Action::Spawn).is_ok());
    }

    #[test]
    fn every_method_of_the_api_has_its_action() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(cadre_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let served = ["Actors", "Cluster", "Conversations", "Tools"];
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                if !served.contains(&service.name()) {
                    continue;
                }
                for method in &service.method {
                    let path = format!("/cadre.v1.{}/{}", service.name(), method.name());
                    let (action, changes) = action_of(&path).expect("not open");
                    assert!(
                        action != Action::Spawn || path.ends_with("/Spawn"),
                        "{path} falls to the admin-only default: give it its action"
                    );
                    let reads = matches!(action, Action::ReadNode | Action::ReadConversations);
                    assert_eq!(changes, !reads, "{path}");
                    methods += 1;
                }
            }
        }
        assert!(methods >= 20, "{methods} methods");
        assert!(action_of("/grpc.health.v1.Health/Check").is_none());
    }
}
