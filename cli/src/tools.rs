//! `cadre tools …`.

use cadre_proto::v1::tools_client::ToolsClient;
use cadre_proto::v1::{CallToolRequest, ListToolsRequest};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{ServerArgs, connect};
use crate::conversations::failure;
use crate::{Failure, Output};

#[derive(Subcommand)]
pub enum ToolsCommand {
    /// The node's tools: name (`server.tool`), the actor that serves it, description
    /// (`-o json`: one object a line, with the argument schema).
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Call a tool, journaled like an agent's call (ToolCalled and ToolReturned in the log).
    ///
    /// Arguments are checked against the tool's schema first: bad ones exit 2 and no call is
    /// made. A tool that reports an error itself prints it and exits 1.
    Call {
        /// The tool, e.g. `time.get_current_time`.
        name: String,
        /// The arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// The conversation the call is journaled in, whose workspace the built-in tools use
        /// [default: cadre.tools].
        #[arg(long)]
        conversation: Option<String>,
        /// Approve a tool that requires approval (`workspace.run`).
        #[arg(long)]
        approve: bool,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(command: ToolsCommand) -> Result<(), Failure> {
    match command {
        ToolsCommand::Ls { output, server } => {
            let tools = ToolsClient::new(connect(&server).await?)
                .list(ListToolsRequest {})
                .await
                .map_err(|s| failure("Tools.List", s))?
                .into_inner()
                .tools;
            match output {
                Output::Json | Output::Yaml => {
                    for t in &tools {
                        let schema: Value =
                            serde_json::from_str(&t.input_schema_json).unwrap_or(Value::Null);
                        crate::emit(
                            output,
                            &json!({"name": t.name, "server": t.server,
                                   "description": t.description, "input_schema": schema,
                                   "requires_approval": t.requires_approval}),
                        );
                    }
                }
                Output::Text => {
                    let width = tools.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
                    let swidth = tools
                        .iter()
                        .map(|t| t.server.len())
                        .max()
                        .unwrap_or(6)
                        .max(6);
                    println!("{:<width$}  {:<swidth$}  DESCRIPTION", "TOOL", "SERVER");
                    for t in &tools {
                        let description = t.description.lines().next().unwrap_or("");
                        println!("{:<width$}  {:<swidth$}  {description}", t.name, t.server);
                    }
                }
            }
            Ok(())
        }
        ToolsCommand::Call {
            name,
            args,
            conversation,
            approve,
            output,
            server,
        } => {
            if let Err(e) = serde_json::from_str::<Value>(&args) {
                return Err(Failure::Usage(format!(
                    "cadre tools call: --args is not JSON: {e}"
                )));
            }
            let r = ToolsClient::new(connect(&server).await?)
                .max_decoding_message_size(server.max_message_bytes)
                .max_encoding_message_size(server.max_message_bytes)
                .call(CallToolRequest {
                    name,
                    arguments_json: args,
                    conversation_id: conversation.unwrap_or_default(),
                    approved: approve,
                })
                .await
                .map_err(|s| failure("Tools.Call", s))?
                .into_inner();
            let result: Value = serde_json::from_str(&r.result_json).unwrap_or(Value::Null);
            match output {
                Output::Json | Output::Yaml => crate::emit(
                    output,
                    &json!({"result": result, "is_error": r.is_error,
                           "conversation_id": r.conversation_id, "call_id": r.call_id,
                           "called_seq": r.called_seq, "returned_seq": r.returned_seq,
                           "idempotency_key": r.idempotency_key}),
                ),
                Output::Text => println!("{}", text_of(&result)),
            }
            eprintln!("conversation={} seq={}", r.conversation_id, r.returned_seq);
            if r.is_error {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "the tool reported an error"
                )));
            }
            Ok(())
        }
    }
}

/// An MCP result's text content, one block a line; other results as JSON.
fn text_of(result: &Value) -> String {
    let texts: Vec<&str> = result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect();
    if texts.is_empty() {
        match result.get("error") {
            Some(e) => e["message"].as_str().unwrap_or_default().to_string(),
            None => result.to_string(),
        }
    } else {
        texts.join("\n")
    }
}
