//! The web console (`console.listen`): a page at `/ui` (its files are compiled into the
//! binary) and the small JSON API it reads under `/api/v1/`.
//!
//! The API is a client of the node's gRPC API, in process: every call goes through the same
//! layers as one over the network (the caller's bearer token, its role, the audit log), and
//! answers in the JSON of `cadre … -o json` (`cadre_proto::json`). Nothing of cadre's logic is
//! in the browser; the exec timelines are folded here (`cadre_actors::exec::timeline`).

use std::convert::Infallible;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cadre_proto::json;
use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::cluster_client::ClusterClient;
use cadre_proto::v1::conversations_client::ConversationsClient;
use cadre_proto::v1::{
    ApproveRequest, Event, ForkRequest, GetConversationRequest, ListConversationsRequest,
    PlacementRequest, SandboxesRequest, SubscribeRequest, TreeRequest, WatchTreeRequest,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tower::util::BoxCloneSyncService;

/// The node's gRPC API as a service in this process.
#[derive(Clone)]
pub struct InProcessApi {
    service: ApiService,
    /// The API's message limit (`api.max_message_bytes`), for the answers read here too.
    limit: usize,
}

type ApiService = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

impl InProcessApi {
    /// Wraps the API's routes with their layers; `limit` is `api.max_message_bytes`.
    pub fn new<S>(service: S, limit: usize) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self {
            service: BoxCloneSyncService::new(service),
            limit,
        }
    }

    fn actors(&self) -> ActorsClient<ApiService> {
        ActorsClient::new(self.service.clone()).max_decoding_message_size(self.limit)
    }

    fn conversations(&self) -> ConversationsClient<ApiService> {
        ConversationsClient::new(self.service.clone()).max_decoding_message_size(self.limit)
    }

    fn cluster(&self) -> ClusterClient<ApiService> {
        ClusterClient::new(self.service.clone()).max_decoding_message_size(self.limit)
    }
}

/// The console's routes. Without API tokens (`authenticated` false) only requests for a
/// loopback or IP address are served: a web page elsewhere cannot then reach an open console
/// on this machine by pointing a name of its own at 127.0.0.1 (DNS rebinding).
pub fn app(api: InProcessApi, authenticated: bool) -> Router {
    let router = Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui") }))
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/api/v1/tree", get(tree))
        .route("/api/v1/tree/watch", get(watch_tree))
        .route("/api/v1/conversations", get(conversations))
        .route("/api/v1/conversations/{id}", get(conversation))
        .route("/api/v1/conversations/{id}/approve", post(approve))
        .route("/api/v1/conversations/{id}/fork", post(fork))
        .route("/api/v1/sandboxes", get(sandboxes))
        .with_state(api);
    if authenticated {
        router
    } else {
        router.layer(axum::middleware::from_fn(addressed_by_ip))
    }
}

/// Refuses a request whose `Host` is a name other than `localhost` (421).
async fn addressed_by_ip(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let by_address = name == "localhost"
        || name.parse::<std::net::IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    if by_address {
        return next.run(request).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        Json(json!({
            "code": "PERMISSION_DENIED",
            "error": format!(
                "this console has no API tokens, so it answers only at an IP address or \
                 localhost, not `{name}`; set api.tokens to serve it under a name"
            ),
        })),
    )
        .into_response()
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("index.html"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
}

/// A gRPC refusal as an HTTP one: `{"code": "PERMISSION_DENIED", "error": "…"}`.
struct ApiError(tonic::Status);

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self(status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use tonic::Code;
        let status = match self.0.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = format!("{:?}", self.0.code());
        let body = json!({"code": screaming(&code), "error": self.0.message()});
        (status, Json(body)).into_response()
    }
}

/// `PermissionDenied` → `PERMISSION_DENIED`, gRPC's own spelling.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A request to the API carrying the browser's `authorization` header.
fn call<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Every member's trees: `{"trees": [{"node","state","root","system",…}]}`.
async fn tree(State(api): State<InProcessApi>, headers: HeaderMap) -> ApiResult {
    let trees = api
        .actors()
        .tree(call(&headers, TreeRequest::default()))
        .await?
        .into_inner();
    let list: Vec<Value> = if trees.nodes.is_empty() {
        let mut one = serde_json::Map::new();
        one.insert("node".into(), json!(""));
        one.insert("state".into(), json!("up"));
        if let Some(root) = &trees.root {
            one.insert("root".into(), json::actor_node(root));
        }
        if let Some(system) = &trees.system {
            one.insert("system".into(), json::actor_node(system));
        }
        vec![Value::Object(one)]
    } else {
        trees.nodes.iter().map(json::node_trees).collect()
    };
    Ok(Json(json!({ "trees": list })))
}

/// Every lifecycle change from now on, one JSON object a line (`cadre tree --watch -o json`).
async fn watch_tree(
    State(api): State<InProcessApi>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let changes = api
        .actors()
        .watch_tree(call(&headers, WatchTreeRequest::default()))
        .await?
        .into_inner();
    let lines = changes.map(|change| match change {
        Ok(e) => Ok::<_, Infallible>(format!("{}\n", json::tree_event(&e))),
        Err(status) => Ok(format!("{}\n", json!({"error": status.message()}))),
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}

/// `{"conversations": [...]}`, the first 1000.
async fn conversations(State(api): State<InProcessApi>, headers: HeaderMap) -> ApiResult {
    let list = api
        .conversations()
        .list(call(
            &headers,
            ListConversationsRequest {
                after: String::new(),
                limit: 1000,
            },
        ))
        .await?
        .into_inner();
    let items: Vec<Value> = list.conversations.iter().map(json::conversation).collect();
    Ok(Json(json!({ "conversations": items })))
}

/// `{"conversation", "events", "execs"}`: the summary, every event (with a one-line
/// `detail`), and each exec's timeline.
async fn conversation(
    State(api): State<InProcessApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let mut client = api.conversations();
    let summary = client
        .get(call(
            &headers,
            GetConversationRequest {
                conversation_id: id.clone(),
            },
        ))
        .await?
        .into_inner();
    let mut events: Vec<Event> = Vec::new();
    if summary.last_seq > 0 {
        let mut stream = client
            .subscribe(call(
                &headers,
                SubscribeRequest {
                    conversation_id: id,
                    after_seq: 0,
                },
            ))
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            let last = event.seq >= summary.last_seq;
            events.push(event);
            if last {
                break;
            }
        }
    }
    let listed: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut value = json::event(e);
            value["detail"] = json!(json::describe(e).1);
            value
        })
        .collect();
    let execs = cadre_actors::exec::timeline::timelines(&events);
    Ok(Json(json!({
        "conversation": json::conversation(&summary),
        "events": listed,
        "execs": execs,
    })))
}

/// An approver's answer: `{"approved": bool, "reason"?, "call_id"?}`.
#[derive(Deserialize)]
struct Decision {
    approved: bool,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    call_id: String,
}

async fn approve(
    State(api): State<InProcessApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(decision): Json<Decision>,
) -> ApiResult {
    let reason = if decision.reason.is_empty() {
        "from the web console".to_string()
    } else {
        decision.reason
    };
    let c = api
        .conversations()
        .approve(call(
            &headers,
            ApproveRequest {
                conversation_id: id,
                call_id: decision.call_id,
                approved: decision.approved,
                reason,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(json::conversation(&c)))
}

/// `{"at_seq": N, "dest_conversation_id"?}`.
#[derive(Deserialize)]
struct ForkAt {
    at_seq: u64,
    #[serde(default)]
    dest_conversation_id: String,
}

async fn fork(
    State(api): State<InProcessApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(at): Json<ForkAt>,
) -> ApiResult {
    let c = api
        .conversations()
        .fork(call(
            &headers,
            ForkRequest {
                src_conversation_id: id,
                at_seq: at.at_seq,
                dest_conversation_id: at.dest_conversation_id,
                patch: None,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(json::conversation(&c)))
}

/// `{"provider","isolated","min","max","sandboxes": [...],"actors": [...]}`.
async fn sandboxes(State(api): State<InProcessApi>, headers: HeaderMap) -> ApiResult {
    let mut client = api.cluster();
    let list = client
        .sandboxes(call(&headers, SandboxesRequest {}))
        .await?
        .into_inner();
    let placed = client
        .placement(call(&headers, PlacementRequest { all: true }))
        .await?
        .into_inner();
    let sandboxes: Vec<Value> = list
        .sandboxes
        .iter()
        .map(|s| json::sandbox(&list, s))
        .collect();
    let actors: Vec<Value> = placed.actors.iter().map(json::placed_actor).collect();
    Ok(Json(json!({
        "provider": list.provider,
        "isolated": list.isolated,
        "min": list.min,
        "max": list.max,
        "sandboxes": sandboxes,
        "actors": actors,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// The console over an API that answers nothing: enough for what is decided before it.
    fn console(authenticated: bool) -> Router {
        let api = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        app(InProcessApi::new(api, 1024), authenticated)
    }

    async fn status(router: Router, host: &str) -> StatusCode {
        let request = http::Request::get("/ui")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn an_open_console_answers_only_at_an_address_or_localhost() {
        for host in [
            "127.0.0.1:7480",
            "localhost:7480",
            "[::1]:7480",
            "10.1.2.3",
            "localhost",
        ] {
            assert_eq!(status(console(false), host).await, StatusCode::OK, "{host}");
        }
        for host in [
            "evil.example:7480",
            "evil.example",
            "127.0.0.1.nip.io:7480",
            "",
        ] {
            assert_eq!(
                status(console(false), host).await,
                StatusCode::MISDIRECTED_REQUEST,
                "{host}"
            );
        }
        // With tokens a name is fine: a page elsewhere has no token to send.
        assert_eq!(
            status(console(true), "cadre.example:443").await,
            StatusCode::OK
        );
    }
}
