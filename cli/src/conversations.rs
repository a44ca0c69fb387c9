//! `cadre exec`, `cadre fork` and `cadre conversations …`.

use crate::client::Api;
use cadre_proto::v1::conversations_client::ConversationsClient;
use cadre_proto::v1::{
    CancelRequest, Conversation, DeleteConversationRequest, Event, ExecRequest, ExecState,
    ForkRequest, GetConversationRequest, ListConversationsRequest, SubscribeRequest, event,
    tool_returned,
};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use tonic::Streaming;

use crate::client::{ServerArgs, connect};
use crate::tree::rfc3339;
use crate::{Failure, Output};

#[derive(Args)]
pub struct ExecArgs {
    /// The agent to run (`echo` until model agents arrive).
    #[arg(long)]
    agent: Option<String>,
    /// The input. Leave it out to reconnect to a conversation's exec (with --last-seq).
    #[arg(long)]
    input: Option<String>,
    /// Continue this conversation (default: a new one).
    #[arg(long)]
    conversation: Option<String>,
    /// Continue the conversation's unfinished exec.
    #[arg(long)]
    resume: bool,
    /// Reconnecting: the last seq already seen; only later events are printed.
    #[arg(long, default_value_t = 0)]
    last_seq: u64,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct ForkArgs {
    /// The conversation to branch.
    #[arg(long)]
    conversation: String,
    /// Keep events 1..N (default: all of them).
    #[arg(long)]
    at_seq: Option<u64>,
    /// The new conversation's id (default: generated).
    #[arg(long)]
    to: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct CancelArgs {
    /// The conversation whose unfinished exec to cancel.
    #[arg(long)]
    conversation: String,
    /// Only if this is the unfinished exec (refused otherwise).
    #[arg(long)]
    exec: Option<String>,
    /// Recorded in the exec's CANCELLED state change.
    #[arg(long, default_value = "")]
    reason: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
pub enum ConversationsCommand {
    /// List conversations with their last seq.
    Ls {
        /// Show conversations after this id (paging).
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One conversation: last seq, latest exec and its state, fork origin.
    Show {
        id: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The conversation's events (JSON lines with -o json).
    Log {
        id: String,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// Keep streaming new events until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a conversation and all its events (refused while an exec runs in it; forks stay).
    #[command(alias = "rm")]
    Delete {
        id: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn status(call: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call} failed: {:?}: {}", s.code(), s.message())
}

/// Usage errors the server found (bad or missing fields) exit 2; everything else exits 1.
pub(crate) fn failure(call: &str, s: tonic::Status) -> Failure {
    match s.code() {
        tonic::Code::InvalidArgument => Failure::Usage(format!("cadre: {call}: {}", s.message())),
        _ => Failure::Runtime(status(call, s)),
    }
}

async fn client(server: &ServerArgs) -> Result<ConversationsClient<Api>, Failure> {
    Ok(ConversationsClient::new(connect(server).await?))
}

pub async fn exec(args: ExecArgs) -> Result<(), Failure> {
    if args.input.is_none() && args.conversation.is_none() {
        return Err(Failure::Usage(
            "cadre exec: give --input to start an exec, or --conversation (with --last-seq or \
             --resume) to reconnect"
                .into(),
        ));
    }
    if args.input.is_some() && args.agent.is_none() {
        return Err(Failure::Usage(
            "cadre exec: --agent is required with --input".into(),
        ));
    }
    let mut client = client(&args.server).await?;
    let request = ExecRequest {
        conversation_id: args.conversation.clone().unwrap_or_default(),
        agent_id: args.agent.unwrap_or_default(),
        input: args.input.unwrap_or_default(),
        last_seq: args.last_seq,
        resume: args.resume,
    };
    let stream = client
        .exec(request)
        .await
        .map_err(|s| failure("Exec", s))?
        .into_inner();
    let (conversation, last) = print_stream(stream, args.output, true).await?;
    let conversation = conversation.or(args.conversation).unwrap_or_default();
    eprintln!(
        "conversation={conversation} seq={}",
        last.unwrap_or(args.last_seq)
    );
    Ok(())
}

pub async fn fork(args: ForkArgs) -> Result<(), Failure> {
    let mut client = client(&args.server).await?;
    let c = client
        .fork(ForkRequest {
            src_conversation_id: args.conversation,
            at_seq: args.at_seq.unwrap_or(0),
            dest_conversation_id: args.to.unwrap_or_default(),
        })
        .await
        .map_err(|s| failure("Fork", s))?
        .into_inner();
    print_conversation(&c, args.output);
    Ok(())
}

pub async fn cancel(args: CancelArgs) -> Result<(), Failure> {
    let mut client = client(&args.server).await?;
    let c = client
        .cancel(CancelRequest {
            conversation_id: args.conversation,
            exec_id: args.exec.unwrap_or_default(),
            reason: args.reason,
        })
        .await
        .map_err(|s| failure("Cancel", s))?
        .into_inner();
    print_conversation(&c, args.output);
    Ok(())
}

pub async fn run(command: ConversationsCommand) -> Result<(), Failure> {
    match command {
        ConversationsCommand::Ls {
            after,
            limit,
            output,
            server,
        } => {
            let list = client(&server)
                .await?
                .list(ListConversationsRequest { after, limit })
                .await
                .map_err(|s| failure("List", s))?
                .into_inner();
            match output {
                Output::Json => {
                    for c in &list.conversations {
                        println!("{}", conversation_json(c));
                    }
                }
                Output::Text => {
                    println!("{:<40}  {:>8}", "CONVERSATION", "LAST SEQ");
                    for c in &list.conversations {
                        println!("{:<40}  {:>8}", c.conversation_id, c.last_seq);
                    }
                }
            }
        }
        ConversationsCommand::Delete { id, output, server } => {
            let deleted = client(&server)
                .await?
                .delete(DeleteConversationRequest {
                    conversation_id: id,
                })
                .await
                .map_err(|s| failure("Delete", s))?
                .into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"conversation_id": deleted.conversation_id, "events": deleted.events})
                ),
                Output::Text => println!(
                    "conversation {} deleted ({} events)",
                    deleted.conversation_id, deleted.events
                ),
            }
        }
        ConversationsCommand::Show { id, output, server } => {
            let c = client(&server)
                .await?
                .get(GetConversationRequest {
                    conversation_id: id,
                })
                .await
                .map_err(|s| failure("Get", s))?
                .into_inner();
            print_conversation(&c, output);
        }
        ConversationsCommand::Log {
            id,
            after_seq,
            follow,
            output,
            server,
        } => {
            let mut client = client(&server).await?;
            let end = if follow {
                None
            } else {
                Some(
                    client
                        .get(GetConversationRequest {
                            conversation_id: id.clone(),
                        })
                        .await
                        .map_err(|s| failure("Get", s))?
                        .into_inner()
                        .last_seq,
                )
            };
            // Nothing after the end to print; past the end, Subscribe says OUT_OF_RANGE.
            if end == Some(after_seq) {
                return Ok(());
            }
            let mut stream = client
                .subscribe(SubscribeRequest {
                    conversation_id: id,
                    after_seq,
                })
                .await
                .map_err(|s| failure("Subscribe", s))?
                .into_inner();
            while let Some(e) = stream.message().await.map_err(|s| status("Subscribe", s))? {
                print_event(&e, output, false);
                if end.is_some_and(|end| e.seq >= end) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Prints a stream of events; returns the conversation id and the last seq seen.
async fn print_stream(
    mut stream: Streaming<Event>,
    output: Output,
    outputs_only: bool,
) -> Result<(Option<String>, Option<u64>), Failure> {
    let mut conversation = None;
    let mut last = None;
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                conversation.get_or_insert_with(|| e.conversation_id.clone());
                last = Some(e.seq);
                print_event(&e, output, outputs_only);
            }
            Ok(None) => return Ok((conversation, last)),
            Err(s) => {
                if let (Some(c), Some(seq)) = (&conversation, last) {
                    eprintln!("conversation={c} seq={seq}");
                }
                return Err(Failure::Runtime(status("Exec", s)));
            }
        }
    }
}

fn print_event(e: &Event, output: Output, outputs_only: bool) {
    use std::io::Write;
    match output {
        Output::Json => println!("{}", event_json(e)),
        Output::Text if outputs_only => {
            if let Some(event::Kind::OutputEmitted(o)) = &e.kind {
                println!("{}", o.text);
            }
        }
        Output::Text => {
            let (kind, detail) = describe(e);
            println!(
                "{:>6}  {}  {:<14}  {:<18}  {}",
                e.seq,
                rfc3339(e.time_unix_micros),
                short(&e.exec_id),
                kind,
                detail
            );
        }
    }
    let _ = std::io::stdout().flush();
}

fn short(id: &str) -> &str {
    &id[..id.len().min(14)]
}

fn state_name(state: i32) -> &'static str {
    match ExecState::try_from(state).unwrap_or(ExecState::Unspecified) {
        ExecState::Unspecified => "unspecified",
        ExecState::Pending => "pending",
        ExecState::Running => "running",
        ExecState::WaitingApproval => "waiting_approval",
        ExecState::Completed => "completed",
        ExecState::Failed => "failed",
        ExecState::Cancelled => "cancelled",
    }
}

/// (type, one-line detail) of an event.
fn describe(e: &Event) -> (&'static str, String) {
    match &e.kind {
        Some(event::Kind::InputReceived(i)) => {
            ("input_received", format!("{}: {}", i.agent_id, i.text))
        }
        Some(event::Kind::ModelCalled(m)) => (
            "model_called",
            format!(
                "{} ({}+{} tokens)",
                m.model, m.prompt_tokens, m.completion_tokens
            ),
        ),
        Some(event::Kind::ToolCalled(t)) => {
            ("tool_called", format!("{} {}", t.tool, t.arguments_json))
        }
        Some(event::Kind::ToolReturned(t)) => (
            "tool_returned",
            match &t.outcome {
                Some(tool_returned::Outcome::Error(e)) => format!("{} error: {e}", t.call_id),
                _ => format!("{} ok", t.call_id),
            },
        ),
        Some(event::Kind::OutputEmitted(o)) => ("output_emitted", o.text.clone()),
        Some(event::Kind::ExecStateChanged(s)) => (
            "exec_state_changed",
            format!("{} {}", state_name(s.state), s.reason)
                .trim()
                .to_string(),
        ),
        Some(event::Kind::Forked(f)) => (
            "forked",
            format!("from {} at seq {}", f.src_conversation_id, f.at_seq),
        ),
        Some(event::Kind::ActorLifecycle(l)) => (
            "actor_lifecycle",
            format!("{} {} {}", l.path, l.change, l.reason)
                .trim()
                .to_string(),
        ),
        None => ("unknown", String::new()),
    }
}

/// `{"conversation_id","seq","exec_id","time","type",…payload}`
pub fn event_json(e: &Event) -> Value {
    let mut obj = Map::new();
    obj.insert("conversation_id".into(), json!(e.conversation_id));
    obj.insert("seq".into(), json!(e.seq));
    obj.insert("exec_id".into(), json!(e.exec_id));
    obj.insert("time".into(), json!(rfc3339(e.time_unix_micros)));
    let (kind, _) = describe(e);
    obj.insert("type".into(), json!(kind));
    match &e.kind {
        Some(event::Kind::InputReceived(i)) => {
            obj.insert("agent_id".into(), json!(i.agent_id));
            obj.insert("text".into(), json!(i.text));
        }
        Some(event::Kind::OutputEmitted(o)) => {
            obj.insert("text".into(), json!(o.text));
        }
        Some(event::Kind::ExecStateChanged(s)) => {
            obj.insert("state".into(), json!(state_name(s.state)));
            obj.insert("reason".into(), json!(s.reason));
        }
        Some(event::Kind::Forked(f)) => {
            obj.insert("src_conversation_id".into(), json!(f.src_conversation_id));
            obj.insert("at_seq".into(), json!(f.at_seq));
        }
        Some(event::Kind::ModelCalled(m)) => {
            obj.insert("model".into(), json!(m.model));
            obj.insert("response_json".into(), json!(m.response_json));
            obj.insert("prompt_tokens".into(), json!(m.prompt_tokens));
            obj.insert("completion_tokens".into(), json!(m.completion_tokens));
        }
        Some(event::Kind::ToolCalled(t)) => {
            obj.insert("call_id".into(), json!(t.call_id));
            obj.insert("tool".into(), json!(t.tool));
            obj.insert("arguments_json".into(), json!(t.arguments_json));
            obj.insert("idempotency_key".into(), json!(t.idempotency_key));
        }
        Some(event::Kind::ToolReturned(t)) => {
            obj.insert("call_id".into(), json!(t.call_id));
            match &t.outcome {
                Some(tool_returned::Outcome::ResultJson(r)) => {
                    obj.insert("result_json".into(), json!(r));
                }
                Some(tool_returned::Outcome::Error(e)) => {
                    obj.insert("error".into(), json!(e));
                }
                None => {}
            }
        }
        Some(event::Kind::ActorLifecycle(l)) => {
            obj.insert("path".into(), json!(l.path));
            obj.insert("change".into(), json!(l.change));
            obj.insert("reason".into(), json!(l.reason));
        }
        None => {}
    }
    Value::Object(obj)
}

fn conversation_json(c: &Conversation) -> Value {
    let mut obj = Map::new();
    obj.insert("conversation_id".into(), json!(c.conversation_id));
    obj.insert("last_seq".into(), json!(c.last_seq));
    if !c.exec_id.is_empty() {
        obj.insert("exec_id".into(), json!(c.exec_id));
        obj.insert("exec_state".into(), json!(state_name(c.exec_state)));
        obj.insert("agent_id".into(), json!(c.agent_id));
    }
    if !c.forked_from.is_empty() {
        obj.insert("forked_from".into(), json!(c.forked_from));
        obj.insert("forked_at_seq".into(), json!(c.forked_at_seq));
    }
    Value::Object(obj)
}

fn print_conversation(c: &Conversation, output: Output) {
    match output {
        Output::Json => println!("{}", conversation_json(c)),
        Output::Text => {
            println!("conversation:  {}", c.conversation_id);
            println!("last seq:      {}", c.last_seq);
            if !c.exec_id.is_empty() {
                println!(
                    "latest exec:   {} ({}, agent {})",
                    c.exec_id,
                    state_name(c.exec_state),
                    c.agent_id
                );
            }
            if !c.forked_from.is_empty() {
                println!(
                    "forked from:   {} at seq {}",
                    c.forked_from, c.forked_at_seq
                );
            }
        }
    }
}
