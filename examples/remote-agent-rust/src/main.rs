//! An example remote cadre agent in Rust: serves `cadre.v1.AgentService` with tonic.
//!
//! `remote-agent-rust [--listen 127.0.0.1:50051]` prints `listening on ADDR` once it serves.
//! Name it in the node's config as `agent: { remote: "http://ADDR", tools: [...] }`.
//!
//! What it does, deterministically: on an exec's first step it says what it is working on and
//! asks the node to call its tool (`$AGENT_TOOL`, default `skills.list_skills`, with
//! `$AGENT_ARGS`, default `{}`); once the result is in the history, it answers with it and the
//! exec completes. It keeps no state: everything it needs is in the history the node sends.

use std::pin::Pin;

use cadre_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use cadre_proto::v1::{StepReply, StepRequest, ToolCallRequest, event, step_reply, tool_returned};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

struct Agent {
    tool: String,
    arguments: String,
}

type Replies = Pin<Box<dyn Stream<Item = Result<StepReply, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Agent {
    type StepStream = Replies;

    async fn step(&self, request: Request<StepRequest>) -> Result<Response<Replies>, Status> {
        let r = request.into_inner();
        let mine = r.history.iter().filter(|e| e.exec_id == r.exec_id);
        let mut input = String::new();
        let mut result = None;
        for e in mine {
            match &e.kind {
                Some(event::Kind::InputReceived(i)) => input = i.text.clone(),
                Some(event::Kind::ToolReturned(t)) => {
                    result = Some(match &t.outcome {
                        Some(tool_returned::Outcome::ResultJson(j)) => j.clone(),
                        Some(tool_returned::Outcome::Error(e)) => format!("error: {e}"),
                        None => String::new(),
                    })
                }
                _ => {}
            }
        }
        let output = |text: String| StepReply {
            kind: Some(step_reply::Kind::Output(text)),
        };
        let replies = match result {
            None => {
                if !r.tools.iter().any(|t| t.name == self.tool) {
                    let fail = format!("tool `{}` is not offered to this agent", self.tool);
                    vec![StepReply {
                        kind: Some(step_reply::Kind::Fail(fail)),
                    }]
                } else {
                    vec![
                        output(format!("rust agent: working on {input:?}")),
                        StepReply {
                            kind: Some(step_reply::Kind::ToolCall(ToolCallRequest {
                                tool: self.tool.clone(),
                                arguments_json: self.arguments.clone(),
                            })),
                        },
                    ]
                }
            }
            Some(result) => vec![output(format!(
                "rust agent: {} returned {result}",
                self.tool
            ))],
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            replies.into_iter().map(Ok),
        ))))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:50051".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            other => return Err(format!("unknown argument `{other}` (use --listen ADDR)").into()),
        }
    }
    let agent = Agent {
        tool: std::env::var("AGENT_TOOL").unwrap_or_else(|_| "skills.list_skills".into()),
        arguments: std::env::var("AGENT_ARGS").unwrap_or_else(|_| "{}".into()),
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    // Nagle's algorithm off: a step's small HTTP/2 frames would otherwise wait for the node's
    // delayed ACK, about 40 ms a step.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            let conn = conn?;
            conn.set_nodelay(true)?;
            Ok::<_, std::io::Error>(conn)
        },
    );
    tonic::transport::Server::builder()
        .add_service(AgentServiceServer::new(agent))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
