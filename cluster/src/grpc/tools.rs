//! `cadre.v1.Tools`: the node's tool registry over gRPC. A call is journaled like an agent's:
//! `ToolCalled` (with the idempotency key passed to the tool) before it is made and
//! `ToolReturned` after, in the caller's conversation or in `cadre.tools`.

use std::sync::Arc;

use cadre_actors::access::Action;
use cadre_actors::event_log::{AppendRequest, EventLog, NewEvent};
use cadre_actors::exec::check_writable;
use cadre_actors::tools::{CallContext, ToolRegistry};
use cadre_proto::v1::tools_server::Tools;
use cadre_proto::v1::{
    CallToolRequest, CallToolResponse, ListToolsRequest, ListToolsResponse, ToolCalled, ToolInfo,
    ToolReturned, event, tool_returned,
};
use tonic::{Request, Response, Status};

use super::auth::{check_action, check_conversation, note_target};
use super::status::{append_status, exec_status, tool_status};

/// Where calls made through the API are journaled when the caller names no conversation.
pub const TOOLS_CONVERSATION: &str = "cadre.tools";

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ToolsService {
    tools: ToolRegistry,
    log: Arc<dyn EventLog>,
}

impl ToolsService {
    /// Calls tools from `tools` and journals each call in `log`.
    pub fn new(tools: ToolRegistry, log: Arc<dyn EventLog>) -> Self {
        Self { tools, log }
    }

    async fn journal(
        &self,
        conversation: &str,
        key: String,
        kind: event::Kind,
    ) -> Result<u64, Status> {
        let appended = self
            .log
            .append(AppendRequest {
                conversation_id: conversation.to_string(),
                events: vec![NewEvent {
                    exec_id: String::new(),
                    kind,
                }],
                idempotency_key: Some(key),
                open_exec: None,
                owner: None,
            })
            .await
            .map_err(append_status)?;
        Ok(appended.first_seq)
    }
}

#[tonic::async_trait]
impl Tools for ToolsService {
    async fn list(
        &self,
        _request: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        let tools = self
            .tools
            .list()
            .into_iter()
            .map(|t| ToolInfo {
                name: t.name,
                server: t.server,
                description: t.description,
                input_schema_json: t.input_schema.to_string(),
                requires_approval: t.requires_approval,
            })
            .collect();
        Ok(Response::new(ListToolsResponse { tools }))
    }

    async fn call(
        &self,
        request: Request<CallToolRequest>,
    ) -> Result<Response<CallToolResponse>, Status> {
        let (name, conversation) = (&request.get_ref().name, &request.get_ref().conversation_id);
        note_target(
            &request,
            match conversation.is_empty() {
                true => name.clone(),
                false => format!("{name} in {conversation}"),
            },
        );
        check_conversation(&request, conversation)?;
        if request.get_ref().approved {
            check_action(&request, Action::Approve, "approve a tool call")?;
        }
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument(
                "name: give a tool name (`cadre tools ls`)",
            ));
        }
        let arguments: serde_json::Value = if r.arguments_json.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&r.arguments_json)
                .map_err(|e| Status::invalid_argument(format!("arguments_json: not JSON: {e}")))?
        };
        // The node journals calls that name no conversation in its own; a caller may not
        // write to the node's conversations.
        let conversation = if r.conversation_id.is_empty() {
            TOOLS_CONVERSATION.to_string()
        } else {
            check_writable("conversation_id", &r.conversation_id).map_err(exec_status)?;
            r.conversation_id
        };
        let prepared = self
            .tools
            .prepare(&r.name, &arguments)
            .map_err(|e| tool_status(&e))?;
        if prepared.requires_approval && !r.approved {
            return Err(Status::failed_precondition(format!(
                "tool `{}` requires approval: call again with approved set (`cadre tools call \
                 --approve`)",
                r.name
            )));
        }
        let call_id = uuid::Uuid::new_v4().simple().to_string();
        let key = format!("{conversation}/call-{call_id}/1");
        let called_seq = self
            .journal(
                &conversation,
                format!("{key}/called"),
                event::Kind::ToolCalled(ToolCalled {
                    call_id: call_id.clone(),
                    tool: r.name.clone(),
                    arguments_json: arguments.to_string(),
                    idempotency_key: key.clone(),
                }),
            )
            .await?;
        let outcome = prepared
            .call(&CallContext {
                conversation: conversation.clone(),
                idempotency_key: key.clone(),
                traceparent: None,
            })
            .await;
        let returned = ToolReturned {
            call_id: call_id.clone(),
            outcome: Some(match &outcome {
                Ok(o) => tool_returned::Outcome::ResultJson(o.result.to_string()),
                Err(e) => tool_returned::Outcome::Error(e.to_string()),
            }),
            is_error: outcome.as_ref().is_ok_and(|o| o.is_error),
        };
        let returned_seq = self
            .journal(
                &conversation,
                format!("{key}/returned"),
                event::Kind::ToolReturned(returned),
            )
            .await?;
        let outcome = outcome.map_err(|e| tool_status(&e))?;
        Ok(Response::new(CallToolResponse {
            result_json: outcome.result.to_string(),
            is_error: outcome.is_error,
            conversation_id: conversation,
            called_seq,
            returned_seq,
            idempotency_key: key,
            call_id,
        }))
    }
}
